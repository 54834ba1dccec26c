"""``TunerStorage``: Optuna's ``RDBStorage`` that survives a database restart and can be asked from one snapshot.

Reconnecting calls. Every storage call (the public ones and those Optuna's cache layer makes) is retried for up to
``reconnect_seconds`` (``TUNER_RECONNECT_SECONDS``, default 120) when the database connection is lost; SQLAlchemy's
``pool_pre_ping`` then hands out a fresh connection once the server is back. Any other error (a read-only file, a
constraint) is raised at once.

Asking from one snapshot. A population keeps N trials RUNNING at once. Optuna re-reads every running trial from the
database on each ``study.get_trials`` (its cache keeps finished trials only), and its TPE sampler (constant liar, the
default since Optuna 5) reads the study at every suggestion: asking 32 members took 2.95 s, against 1.02 s without
the reads of running trials. Inside ``with storage.snapshot(study_id):`` the cache layer's reads of that study are
answered from one read at the start, kept up to date with every write made through this storage meanwhile (new
trials, params, attributes, states): the sampler draws exactly what it would have drawn
(tests/study/storage/test_snapshot.py, every sampler of the table, with enqueued trials). Trials other workers
change meanwhile are seen from the next read after the snapshot.

Queued trials only. Inside ``with storage.queued_only(study_id):`` creating a trial of that study that is not
enqueued (what ``study.ask()`` does when no trial waits in the queue) raises ``QueueEmpty`` before anything is
written; enqueuing (a trial made from a template) goes on. A grid study runs this way: its points are the queue, and a
worker that finds it empty stops instead of running an extra trial.

A subclass, not methods patched onto an instance: it pickles (when its heartbeat callback does: one that closes MLflow
runs through a live tracker does not), and passes Optuna's own storage conformance suite
(``optuna.testing.pytest_storages.StorageTestCase``, tests/study/storage/test_conformance.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional

from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from tuner.errors import TunerError
from tuner.study.storage import _optuna
from tuner.study.storage._optuna import HookedRDBStorage, frozen_id
from tuner.study.storage.redact import mask_text, mask_url

_log = logging.getLogger(__name__)
_retrying = threading.local()  # set while a call is being retried: the calls it makes are not retried again


class QueueEmpty(Exception):
    """No trial waits in the queue of a study that runs queued trials only (``TunerStorage.queued_only``)."""


class TunerStorage(HookedRDBStorage):
    """``RDBStorage`` with reconnecting calls and population snapshots (see the module docstring).

    Args:
        url: the database URL.
        engine_kwargs: passed to ``sqlalchemy.create_engine``.
        reconnect_seconds: how long a call is retried while the database connection is lost.
        **options: ``RDBStorage``'s own keyword options (heartbeat interval, grace period, stale-trial callback).
    """

    def __init__(
        self,
        url: str,
        engine_kwargs: Optional[dict[str, Any]] = None,
        *,
        reconnect_seconds: float = 120.0,
        **options: Any,
    ) -> None:
        self.reconnect_seconds = reconnect_seconds
        self._snapshot: Optional[_Snapshot] = None
        self._queued_only: set[int] = set()
        super().__init__(url, engine_kwargs=engine_kwargs, **options)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["_snapshot"], state["_queued_only"] = None, set()
        return state

    # -- reconnecting calls --------------------------------------------------------------------------------------------

    def around_call(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one storage call: retried while the connection is lost, mirrored into a snapshot when one is held."""
        if self._queued_only and _creates_unqueued_trial(call, args, kwargs, self._queued_only):
            raise QueueEmpty(f"no trial is queued in study id {args[0] if args else kwargs.get('study_id')}")
        if getattr(_retrying, "active", False):  # an outer call already retries
            result = call(*args, **kwargs)
        else:
            _retrying.active = True
            try:
                result = self._with_retries(call, args, kwargs)
            finally:
                _retrying.active = False
        snapshot = self._snapshot
        if snapshot is not None:
            snapshot.after(self, call, args, kwargs, result)
        return result

    def _with_retries(self, call: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        deadline, wait = time.monotonic() + self.reconnect_seconds, 0.25
        while True:
            try:
                return call(*args, **kwargs)
            except Exception as error:
                if not is_connection_error(error):
                    raise as_storage_error(error, self.url) from error
                if time.monotonic() + wait > deadline:
                    raise
                name = getattr(call, "__name__", None) or getattr(getattr(call, "func", None), "__name__", "call")
                _log.warning("storage: %s failed (%s); retrying in %.1f s", name, short_error(error), wait)
                self.scoped_session.remove()  # drop the broken session; the pool pre-pings the next connection
                time.sleep(wait)
                wait = min(2 * wait, 5.0)

    def retrying(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """``call`` retried as this storage's own calls are (for writes made with the storage's session itself)."""

        def retried(*args: Any, **kwargs: Any) -> Any:
            return self.around_call(call, *args, **kwargs)

        return retried

    # -- queued trials only -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def queued_only(self, study_id: int) -> Iterator[None]:
        """While inside, a new trial of ``study_id`` that is not enqueued raises ``QueueEmpty`` (nothing is written)."""
        if study_id in self._queued_only:  # nested: the outer block goes on
            yield
            return
        self._queued_only.add(study_id)
        try:
            yield
        finally:
            self._queued_only.discard(study_id)

    # -- snapshots ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def snapshot(self, study_id: int) -> Iterator[None]:
        """While inside, answer the cache layer's reads of ``study_id`` from one read plus this storage's writes."""
        if self._snapshot is not None:  # nested: the outer snapshot goes on
            yield
            return
        self._snapshot = _Snapshot(study_id, self.read_all_trials(study_id))
        try:
            yield
        finally:
            self._snapshot = None

    def read_trials(
        self, study_id: int, states: Any, included_trial_ids: set[int], trial_id_greater_than: int
    ) -> list[FrozenTrial]:
        """The cache layer's read of a study's trials, from the snapshot while one is held for that study."""
        snapshot = self._snapshot
        if snapshot is None or snapshot.study_id != study_id:
            return super().read_trials(study_id, states, included_trial_ids, trial_id_greater_than)
        return snapshot.trials(states, included_trial_ids, trial_id_greater_than)


class _Snapshot:
    """One study's trials as last read, with the writes made through the storage since (by trial id)."""

    def __init__(self, study_id: int, trials: list[FrozenTrial]) -> None:
        self.study_id = study_id
        self.by_id = {frozen_id(trial): trial for trial in trials}
        self.lock = threading.Lock()

    def trials(self, states: Any, included: set[int], greater_than: int) -> list[FrozenTrial]:
        with self.lock:
            return [
                trial
                for key, trial in sorted(self.by_id.items())
                if (key in included or key > greater_than) and (states is None or trial.state in states)
            ]

    def after(self, storage: TunerStorage, call: Callable[..., Any], args: tuple, kwargs: dict, result: Any) -> None:
        """Mirror a write that just succeeded."""
        name = getattr(getattr(call, "func", call), "__name__", "")
        handler = _MIRRORS.get(name)
        if handler is not None:
            with self.lock:
                handler(self, storage, args, kwargs, result)


def _new_trial(snapshot: _Snapshot, storage: TunerStorage, args: tuple, kwargs: dict, result: Any) -> None:
    study_id = args[0] if args else kwargs.get("study_id")
    if isinstance(result, FrozenTrial) and study_id == snapshot.study_id:
        snapshot.by_id[frozen_id(result)] = result


def _param(snapshot: _Snapshot, storage: TunerStorage, args: tuple, kwargs: dict, result: Any) -> None:
    trial_id, name, internal, distribution = args[:4]
    trial = snapshot.by_id.get(trial_id)
    if trial is not None and isinstance(distribution, BaseDistribution):
        changed = copy.copy(trial)  # a new object: a reader may be iterating the old one's dicts
        changed.params = {**trial.params, name: distribution.to_external_repr(internal)}
        changed.distributions = {**trial.distributions, name: distribution}
        snapshot.by_id[trial_id] = changed


def _attr(kind: str) -> Callable[..., None]:
    def mirror(snapshot: _Snapshot, storage: TunerStorage, args: tuple, kwargs: dict, result: Any) -> None:
        trial_id, key, value = (list(args) + [kwargs.get("key"), kwargs.get("value")])[:3]
        trial = snapshot.by_id.get(trial_id)
        if trial is not None:
            changed = copy.copy(trial)
            setattr(changed, kind, {**getattr(trial, kind), key: value})
            snapshot.by_id[trial_id] = changed

    return mirror


def _reread(snapshot: _Snapshot, storage: TunerStorage, args: tuple, kwargs: dict, result: Any) -> None:
    trial_id = args[0]
    if trial_id not in snapshot.by_id:  # a waiting trial popped by ask, a state or a reported value: read it again
        return
    trial = HookedRDBStorage.get_trial(storage, trial_id)
    if trial.state.is_finished():  # Optuna's cache must read a finished trial itself, after the snapshot: it keeps
        del snapshot.by_id[trial_id]  # the highest finished id it has seen and never reads older ids again
    else:
        snapshot.by_id[trial_id] = trial


_MIRRORS: dict[str, Callable[..., None]] = {
    "_create_new_trial": _new_trial,
    "_set_trial_param": _param,
    "set_trial_system_attr": _attr("system_attrs"),
    "set_trial_user_attr": _attr("user_attrs"),
    "set_trial_state_values": _reread,
    "set_trial_intermediate_value": _reread,
}


class StorageError(TunerError):
    """The study's database refused an operation for good (a read-only file, a full disk): no retry can help."""


def as_storage_error(error: Exception, url: str) -> Exception:
    """A database's own lasting failure as a ``StorageError`` naming the storage (masked); anything else unchanged
    (Optuna's errors, integrity errors Optuna itself handles)."""
    from sqlalchemy import exc

    seen: Optional[BaseException] = error  # Optuna wraps a failed commit in its StorageInternalError
    while seen is not None and not isinstance(seen, exc.OperationalError):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return error
    return StorageError(f"storage {mask_url(url)}: {short_error(getattr(seen, 'orig', None) or seen)}")


def _creates_unqueued_trial(call: Callable[..., Any], args: tuple, kwargs: dict, studies: set[int]) -> bool:
    """Whether a storage call creates a trial of one of ``studies`` from no template (``ask`` with nothing queued)."""
    name = getattr(getattr(call, "func", call), "__name__", "")
    if name not in ("create_new_trial", "_create_new_trial"):
        return False
    study_id = args[0] if args else kwargs.get("study_id")
    template = args[1] if len(args) > 1 else kwargs.get("template_trial")
    return template is None and study_id in studies


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) is a lost or refused database connection, worth a retry."""
    from sqlalchemy import exc

    seen: Optional[BaseException] = error
    while seen is not None:
        if isinstance(seen, exc.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, (exc.OperationalError, exc.InterfaceError)) and not _is_local_sqlite_error(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


SQLITE_TRANSIENT = ("locked", "locking protocol", "disk i/o error")
"""SQLite errors worth a retry (another process holds the file; WAL contention; a network filesystem's hiccup)."""


def _is_local_sqlite_error(error: BaseException) -> bool:
    """SQLite's own lasting failures (a read-only or missing file, a full disk) are no lost connection: no retry
    helps, so they are raised at once."""
    original = getattr(error, "orig", None)
    message = str(original).lower()
    return type(original).__module__ == "sqlite3" and not any(text in message for text in SQLITE_TRANSIENT)


def short_error(error: BaseException) -> str:
    """``Type: first line of the message``, any URL in it masked."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {mask_text(text[0]) if text else ''}"


@contextlib.contextmanager
def asking_from_one_snapshot(study: Any) -> Iterator[None]:
    """While inside, the study's reads of its trials come from one read plus this process's writes (see the module
    docstring); a storage that cannot (not a ``TunerStorage``, another Optuna) reads as usual."""
    storage = _optuna.study_storage(study)
    backend = _optuna.rdb_backend(storage)
    if not isinstance(backend, TunerStorage) or not _optuna.snapshot_supported(storage):
        yield
        return
    with backend.snapshot(_optuna.study_id(study)):
        yield


@contextlib.contextmanager
def only_queued_trials(study: Any) -> Iterator[None]:
    """While inside, ``study.ask()`` pops a queued trial or raises ``QueueEmpty``: it never creates one (see the module
    docstring). A storage that cannot (not a ``TunerStorage``) creates trials as usual."""
    backend = _optuna.rdb_backend(_optuna.study_storage(study))
    if not isinstance(backend, TunerStorage):
        yield
        return
    with backend.queued_only(_optuna.study_id(study)):
        yield
