"""Where studies live: opening storages, listing and loading studies; masking URLs (``redact.py``).

``TunerStorage`` (``rdb.py``) is Optuna's ``RDBStorage`` with reconnecting calls and population snapshots;
``heartbeat.py`` keeps running trials alive and retries those of dead workers; ``sql.py`` writes a trial's values in
one transaction; ``sqlite.py`` tunes the embedded SQLite files; ``_optuna.py`` holds every private Optuna name
(``trial_id`` and ``optimize_loop`` are the two the rest of ``tuner.study`` needs).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import optuna

from tuner.errors import TunerError
from tuner.study.storage._optuna import optimize_loop, rdb_backend, trial_id
from tuner.study.storage.heartbeat import LostTrial, WorkerLost, env_seconds, heartbeat_settings
from tuner.study.storage.rdb import QueueEmpty, TunerStorage, only_queued_trials, short_error
from tuner.study.storage.redact import mask_text, mask_url, redact
from tuner.study.storage.sqlite import speed_up_sqlite

__all__ = [
    "LostTrial",
    "QueueEmpty",
    "TunerStorage",
    "delete_study",
    "load_existing_study",
    "storage_exists",
    "mask_text",
    "mask_url",
    "only_queued_trials",
    "open_storage",
    "optimize_loop",
    "redact",
    "storage_key",
    "study_names",
    "trial_id",
]


def open_storage(
    url: str, attempts: int = 3, wait: float = 1.0, on_lost: Optional[Callable[[LostTrial], None]] = None
) -> TunerStorage:
    """A ``TunerStorage`` for ``url`` with heartbeats (``TUNER_HEARTBEAT_INTERVAL``, ``TUNER_GRACE_PERIOD``) and
    reconnecting calls (``TUNER_RECONNECT_SECONDS``), opened with a few tries (a database restarting, two processes
    creating the schema at once); still unreachable, it is a ``TunerError`` naming the URL with its password masked.

    Args:
        on_lost: ``on_lost(LostTrial)`` closes the MLflow run of a trial whose worker was lost.
    """
    speed_up_sqlite()
    interval, grace = heartbeat_settings()
    options = dict(
        heartbeat_interval=interval,
        grace_period=grace,
        heartbeat_stale_trial_callback=WorkerLost(on_lost) if interval else None,
    )
    reconnect = env_seconds("TUNER_RECONNECT_SECONDS", 120)
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return TunerStorage(url, _engine_kwargs(url), reconnect_seconds=reconnect, **options)
        except Exception as error:
            if attempt == attempts - 1:
                raise TunerError(f"cannot open storage {mask_url(url)}: {short_error(error)}") from None
            time.sleep(wait * (attempt + 1))
    raise AssertionError("unreachable")


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def storage_key(storage: optuna.storages.BaseStorage) -> str:
    """A name of the database behind ``storage`` that every process opening it agrees on (a hash of its URL without
    the password); a storage without a URL gets a name for this process only."""
    backend = rdb_backend(storage)
    name = mask_url(backend.url) if backend is not None else f"{os.getpid()}:{id(storage)}"
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """The names of the studies in ``storage``."""
    return [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]


def sqlite_file(url: str) -> Optional[Path]:
    """The file of a ``sqlite:///`` URL (None for another database, or SQLite in memory)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix + ":memory:":
        return None
    return Path(url[len(prefix) :].split("?", 1)[0])


def storage_exists(url: str) -> bool:
    """Whether there is a storage at ``url`` to read (a SQLite file that is not there has no study; reading it must
    not create it). Other databases: assumed there (opening them says otherwise)."""
    path = sqlite_file(url)
    return path is None or path.is_file()


def load_existing_study(name: str, url: str, storage: Optional[optuna.storages.BaseStorage] = None) -> optuna.Study:
    """An existing study, or ``TunerError`` listing the studies that exist. Never creates a storage."""
    if storage is None and not storage_exists(url):
        raise TunerError(
            f"no study named {name!r}: there is no study storage at {mask_url(url)} (run a study "
            f"first with `tuner run`, or name the storage with --storage or $TUNER_STORAGE)"
        )
    storage = storage or open_storage(url)
    names = study_names(storage)
    if name not in names:
        listing = ", ".join(sorted(names)) or "(none)"
        raise TunerError(f"no study named {name!r} in {mask_url(url)}; studies: {listing}")
    return optuna.load_study(study_name=name, storage=storage)


def delete_study(name: str, url: str) -> None:
    """Delete study ``name`` and its trials from the storage at ``url``."""
    optuna.delete_study(study_name=name, storage=open_storage(url))
