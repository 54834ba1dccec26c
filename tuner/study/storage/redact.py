"""Credentials kept out of what is stored and what is printed: the one place URLs are masked.

A storage URL or tracking URI may carry a password (``postgresql://user:PASS@host/db``, ``https://user:PASS@host``)
or a secret in its query string (``?password=...``, ``?token=...``). ``mask_url`` replaces them with ``***``;
``mask_text`` does it to every URL inside a message; ``redact`` to every string inside data (a study file as it is
stored on the study and logged to MLflow). ``mask_output`` puts ``mask_text`` in front of the warnings and log
records of this process, so that a library's message naming a URL does not print its password either.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any, Optional, TextIO, Union

MASK = "***"

SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "secret", "token", "key", "sig", "auth", "credential")
"""A query parameter whose name contains one of these (any case) holds a secret."""

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^\s/?#]*@")


def mask_url(url: str) -> str:
    """``url`` with its password and the values of secret query parameters replaced by ``***``
    (``postgresql://user:***@host/db``); a URL without them, or text that is no URL, comes back unchanged."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy reads (a path, "none", a bad port): mask a user:password@ still
        return _USERINFO.sub(rf"\g<head>{MASK}@", url)
    secret = [key for key in parsed.query if _is_secret_key(key)]
    if parsed.password is None and not secret:
        return url
    if secret:
        parsed = parsed.set(query={key: MASK if key in secret else value for key, value in parsed.query.items()})
    shown = parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)
    return _USERINFO.sub(rf"\g<head>{MASK}@", shown)  # a raw '@' in the password: make_url ends it there


def mask_text(text: str) -> str:
    """``text`` with every URL in it masked by ``mask_url``."""
    return _URL.sub(_mask_match, text) if "://" in text else text


def _mask_match(match: re.Match) -> str:
    """A URL found in text, masked; punctuation after it (``... at http://host/api: refused``) is the text's."""
    found = match.group(0)
    url = found.rstrip(".,;:!?)]}")
    return mask_url(url) + found[len(url) :]


def redact(data: Any) -> Any:
    """``data`` (JSON-like: dicts, lists, strings ...) with every URL in its strings masked: what may be stored."""
    if isinstance(data, str):
        return mask_text(data)
    if isinstance(data, dict):
        return {key: redact(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(value) for value in data]
    return data


def is_masked(text: str) -> bool:
    """Whether ``text`` had a credential masked out of it (it cannot be used as it is)."""
    return MASK in text


def mask_output() -> None:
    """Mask URLs in every warning and log record this process prints from now on (idempotent)."""
    show = warnings.showwarning
    if not getattr(show, "masks_urls", False):

        def masked_warning(
            message: Union[Warning, str],
            category: type[Warning],
            filename: str,
            lineno: int,
            file: Optional[TextIO] = None,
            line: Optional[str] = None,
        ) -> None:
            show(mask_text(str(message)), category, filename, lineno, file, line)

        masked_warning.masks_urls = True  # type: ignore[attr-defined]
        warnings.showwarning = masked_warning
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "masks_urls", False):

        def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = factory(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a bad format: left for the handler to report, as without masking
                return record
            if "://" in message:
                record.msg, record.args = mask_text(message), ()
            return record

        masked_record.masks_urls = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(masked_record)


def _is_secret_key(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_QUERY_KEYS)
