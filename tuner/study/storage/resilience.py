"""Storage that survives a database restart, heartbeats, and what happens to a trial whose worker died.

``make_storage`` builds Optuna's ``RDBStorage`` with heartbeats on (``TUNER_HEARTBEAT_INTERVAL`` seconds,
default 10; ``TUNER_GRACE_PERIOD`` seconds, default 60; an interval of 0 turns heartbeats off) and every
storage call retried for up to ``TUNER_RECONNECT_SECONDS`` (default 120) when the database connection is lost:
SQLAlchemy's ``pool_pre_ping`` then hands out a fresh connection once the server is back.

A running trial whose heartbeat stops (its worker was killed, its machine died) is failed by the next worker
that starts a trial, after the grace period. ``WorkerLost`` is then called in that worker: it records
``reason: worker lost`` on the trial, closes its MLflow run as FAILED, and re-queues the same parameters
once (Optuna's ``RetryHeartbeatStaleTrialCallback``). The retry carries the lost trial's ``seed`` user
attribute, so it repeats the same recipe with the same seed.

Optuna is imported inside the functions: its module-level home is ``tuner.study.engine``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
import warnings
from typing import Any, Callable, Optional

LOST_REASON = "worker lost"
RETRIED_METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id", "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials", "get_best_trial",
    "record_heartbeat", "_get_stale_trial_ids",
    "_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param",  # what Optuna's cache layer calls
)
_log = logging.getLogger(__name__)
_retrying = threading.local()


def env_seconds(name: str, default: float) -> float:
    """A non-negative number of seconds from the environment variable ``name``; bad values are a ``ValueError``."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected seconds, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"environment variable {name}: must be >= 0, got {raw!r}")
    return value


def heartbeat_settings() -> tuple[Optional[int], Optional[int]]:
    """(heartbeat_interval, grace_period) in whole seconds from the environment; (None, None) when turned off."""
    interval = int(env_seconds("TUNER_HEARTBEAT_INTERVAL", 10))
    if interval == 0:
        return None, None
    grace = int(env_seconds("TUNER_GRACE_PERIOD", max(60, 2 * interval)))
    if grace <= interval:
        raise ValueError(f"TUNER_GRACE_PERIOD must be > TUNER_HEARTBEAT_INTERVAL, got {grace=}, {interval=}")
    return interval, grace


def make_storage(url: str, engine_kwargs: dict[str, Any], on_lost: Optional[Callable[[str, str], None]] = None):
    """Optuna's ``RDBStorage`` for ``url`` with heartbeats and reconnecting calls (see the module docstring).

    ``on_lost(mlflow_run_id, reason)`` is called for a lost trial that had an MLflow run (to close it)."""
    import optuna

    interval, grace = heartbeat_settings()
    callback = WorkerLost(on_lost) if interval else None
    with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=interval,
                                             grace_period=grace, heartbeat_stale_trial_callback=callback)
    reconnect_seconds = env_seconds("TUNER_RECONNECT_SECONDS", 120)
    for name in RETRIED_METHODS:
        method = getattr(storage, name, None)
        if method is not None:  # instance attributes shadow the class's methods, for Optuna's cache layer too
            setattr(storage, name, _reconnecting(method, storage, reconnect_seconds))
    return storage


def retrying_lost_connections(storage: Any, call: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` retried as ``storage``'s own calls are when the database connection is lost (for writes the engine
    makes with the storage's session itself, see ``tuner.study.storage.sql``)."""
    return _reconnecting(call, storage, env_seconds("TUNER_RECONNECT_SECONDS", 120))


def _reconnecting(method: Callable[..., Any], storage: Any, seconds: float) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if getattr(_retrying, "active", False):  # an outer call already retries
            return method(*args, **kwargs)
        _retrying.active = True
        try:
            return _with_retries(method, storage, seconds, args, kwargs)
        finally:
            _retrying.active = False

    return call


def _with_retries(method: Callable[..., Any], storage: Any, seconds: float, args: tuple, kwargs: dict) -> Any:
    deadline, wait = time.monotonic() + seconds, 0.25
    while True:
        try:
            return method(*args, **kwargs)
        except Exception as error:
            if not is_connection_error(error) or time.monotonic() + wait > deadline:
                raise
            _log.warning("storage: %s failed (%s); retrying in %.1f s", method.__name__, _short(error), wait)
            storage.scoped_session.remove()  # drop the broken session; the pool pre-pings the next connection
            time.sleep(wait)
            wait = min(2 * wait, 5.0)


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) is a lost or refused database connection, worth a retry."""
    from sqlalchemy import exc

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (exc.OperationalError, exc.InterfaceError)):
            return True
        if isinstance(seen, exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


class WorkerLost:
    """Heartbeat-stale callback: reason ``worker lost`` on the failed trial, its MLflow run closed, one retry."""

    def __init__(self, on_lost: Optional[Callable[[str, str], None]] = None, max_retry: int = 1) -> None:
        self.on_lost, self.max_retry = on_lost, max_retry

    def __call__(self, study: Any, trial: Any) -> None:
        import optuna

        _force_user_attr(study, trial, "reason", LOST_REASON)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and self.on_lost is not None:
            self.on_lost(run_id, LOST_REASON)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, trial)


def _force_user_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    """Set a user attribute on a trial that is already FAIL (Optuna's API refuses finished trials): the one
    process that failed the stale trial writes the row directly in Optuna's own table."""
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models

    storage = getattr(study._storage, "_backend", study._storage)
    if not isinstance(storage, RDBStorage):
        return
    session = storage.scoped_session()
    try:
        model = models.TrialUserAttributeModel
        session.query(model).filter(model.trial_id == trial._trial_id, model.key == key).delete()
        session.add(model(trial_id=trial._trial_id, key=key, value_json=json.dumps(value)))
        session.commit()
    except Exception as error:  # the trial is FAIL and retried either way; the reason is a courtesy
        session.rollback()
        _log.warning("could not record reason %r on trial %d: %s", value, trial.number, _short(error))
    finally:
        storage.scoped_session.remove()


def settle_lost_trials(study: Any, run_trials: Callable[[int], None]) -> None:
    """The last worker out fails the trials of dead workers and runs their retries.

    Stale trials are normally failed (and re-queued once) when a worker starts its next trial; when the study reaches
    its target before a dead worker's grace period has passed, nobody would start one. So before a worker leaves it
    waits, while other trials are RUNNING, up to one grace period: lost ones become FAIL ("worker lost") and the
    re-queued copies are run here. Trials of live workers simply finish meanwhile.
    """
    import optuna

    storage = getattr(study._storage, "_backend", study._storage)
    interval, grace = getattr(storage, "heartbeat_interval", None), getattr(storage, "grace_period", None)
    if not interval or not grace:
        return
    deadline = time.monotonic() + grace + 2 * interval
    while time.monotonic() < deadline:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        waiting = states.count(optuna.trial.TrialState.WAITING)
        if waiting:
            run_trials(waiting)
        elif optuna.trial.TrialState.RUNNING not in states:
            return
        time.sleep(interval)
