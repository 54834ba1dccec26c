"""optuna-dashboard behind a guard: read-only unless writes are allowed, HTTP basic auth against a bcrypt hash.

optuna-dashboard itself has no auth and accepts writes (``POST /api/studies`` creates a study), so ``tuner dashboard``
serves its public ``optuna_dashboard.wsgi(storage)`` app wrapped in ``DashboardGuard``, and refuses to bind beyond
loopback without credentials. The same guarded app runs under any WSGI server (``dashboard_app``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from tuner.errors import TunerError

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""The methods a read-only dashboard passes on; every other one (POST, PUT, PATCH, DELETE ...) is refused."""

BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
BCRYPT_ROUNDS = 12
BCRYPT_MAX_BYTES = 72
AUTH_HELP = "USER:HASH with a bcrypt hash (make one with `tuner dashboard --hash-password`, or Caddy's hash-password)"
_CACHE_SIZE = 64


def _bcrypt() -> Any:
    try:
        import bcrypt
    except ImportError:
        raise TunerError("dashboard auth needs bcrypt: pip install 'tuner[dashboard]'") from None
    return bcrypt


def hash_password(password: str) -> str:
    """A bcrypt hash of ``password`` for ``--auth USER:HASH`` / ``TUNER_DASHBOARD_AUTH`` (Caddy accepts it too)."""
    secret = password.encode()
    if not secret:
        raise TunerError("the password is empty")
    if len(secret) > BCRYPT_MAX_BYTES:
        raise TunerError(f"bcrypt takes at most {BCRYPT_MAX_BYTES} bytes of password, got {len(secret)}")
    bcrypt = _bcrypt()
    return bcrypt.hashpw(secret, bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()


@dataclass(frozen=True)
class BasicAuth:
    """One user and the bcrypt hash of their password; ``accepts`` checks an ``Authorization`` header.

    bcrypt is slow on purpose, so a header that passed once is remembered (by its SHA-256, in memory only)."""

    user: str
    password_hash: str = field(repr=False)
    _passed: set[bytes] = field(default_factory=set, init=False, repr=False, compare=False)

    def accepts(self, header: Optional[str]) -> bool:
        """Whether ``header`` (``Basic base64(user:password)``) names this user with the right password."""
        if not header:
            return False
        digest = hashlib.sha256(header.encode("utf-8", "surrogateescape")).digest()
        if digest in self._passed:
            return True
        credentials = _basic_credentials(header)
        if credentials is None or not self._matches(*credentials):
            return False
        if len(self._passed) >= _CACHE_SIZE:
            self._passed.clear()
        self._passed.add(digest)
        return True

    def _matches(self, user: str, password: str) -> bool:
        same_user = hmac.compare_digest(user.encode(), self.user.encode())
        try:
            same_password = _bcrypt().checkpw(password.encode(), self.password_hash.encode())
        except ValueError:  # longer than bcrypt takes: never the password
            same_password = False
        return same_user and same_password


def _basic_credentials(header: str) -> Optional[tuple[str, str]]:
    """(user, password) of a ``Basic`` Authorization header, or None when it is not one."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def parse_auth(spec: str, source: str = "--auth (or TUNER_DASHBOARD_AUTH)") -> BasicAuth:
    """``USER:HASH`` (from ``--auth`` or ``TUNER_DASHBOARD_AUTH``) as a ``BasicAuth``; a hash that is not bcrypt
    (a plain password, the ``CHANGE-ME`` placeholder) is refused without being echoed."""
    user, colon, password_hash = spec.strip().partition(":")
    if not colon or not user:
        raise TunerError(f"{source} must be {AUTH_HELP}; got no 'USER:' part")
    if not BCRYPT_HASH.fullmatch(password_hash):
        raise TunerError(f"{source} must be {AUTH_HELP}; the hash given for user {user!r} is not a bcrypt hash")
    _bcrypt()
    return BasicAuth(user, password_hash)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_auth_beyond_loopback(host: str, auth: Optional[BasicAuth]) -> None:
    """Refuse to serve ``host`` beyond loopback without credentials: anyone who reaches it could read every study."""
    if auth is None and not is_loopback(host):
        raise TunerError(
            f"refusing to serve the dashboard on {host} without auth: anyone who can reach it could read every study. "
            f"Give --auth or TUNER_DASHBOARD_AUTH as {AUTH_HELP}, or bind --host 127.0.0.1"
        )


class DashboardGuard:
    """WSGI middleware: 401 without the right basic-auth credentials (when ``auth`` is set), then 403 for any
    method but GET/HEAD/OPTIONS unless ``allow_writes``; everything else goes to ``app`` unchanged."""

    def __init__(self, app: WSGIApp, auth: Optional[BasicAuth] = None, allow_writes: bool = False) -> None:
        self.app, self.auth, self.allow_writes = app, auth, allow_writes

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.auth is not None and not self.auth.accepts(environ.get("HTTP_AUTHORIZATION")):
            challenge = ("WWW-Authenticate", 'Basic realm="tuner dashboard", charset="UTF-8"')
            return _plain(start_response, "401 Unauthorized", "authentication required", [challenge])
        if not self.allow_writes and environ.get("REQUEST_METHOD", "GET").upper() not in READ_METHODS:
            message = "this dashboard is read-only: start it with `tuner dashboard --allow-writes` to change studies"
            return _plain(start_response, "403 Forbidden", message)
        return self.app(environ, start_response)


def _plain(start_response: Callable, status: str, text: str, headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    body = f"{text}\n".encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *headers]
    )
    return [body]


def dashboard_app(url: str, auth: Optional[BasicAuth] = None, allow_writes: bool = False) -> DashboardGuard:
    """optuna-dashboard's WSGI app on the storage at ``url`` (opened as ``open_storage`` does), behind
    ``DashboardGuard``: read-only unless ``allow_writes``, basic auth when ``auth`` is given."""
    try:
        import optuna_dashboard
    except ImportError:
        raise TunerError("optuna-dashboard is not installed: pip install 'tuner[dashboard]'") from None
    from tuner.study.storage import open_storage

    return DashboardGuard(optuna_dashboard.wsgi(open_storage(url)), auth, allow_writes)


def serve(app: WSGIApp, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` with wsgiref (as ``optuna_dashboard.run_server`` does) until interrupted."""
    from wsgiref.simple_server import make_server

    try:
        server = make_server(host, port, app)
    except OSError as error:
        raise TunerError(f"cannot serve on {host}:{port}: {error.strerror or error}") from None
    with server:
        server.serve_forever()
