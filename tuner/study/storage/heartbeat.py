"""Heartbeats, and what happens to a trial whose worker died.

Every running trial gets a heartbeat every ``TUNER_HEARTBEAT_INTERVAL`` seconds (default 10; 0 turns heartbeats off)
from ``Heartbeats``, one thread for all the trials a worker trains at once. A running trial whose heartbeat stops for
``TUNER_GRACE_PERIOD`` seconds (default 60) -- its worker was killed, its machine died -- is failed by the next
worker that starts a trial (``optuna.storages.fail_stale_trials``), which then calls ``WorkerLost``: reason
``worker lost`` on the trial, its MLflow run closed as FAILED (by its recorded id, or found by its tags when the trial
never recorded one), and the same parameters re-queued once (Optuna's ``RetryHeartbeatStaleTrialCallback``). The
retry carries the lost trial's ``seed`` user attribute, so it repeats the same recipe with the same seed.
``settle_lost_trials`` makes the last worker out wait for lost trials and run their retries.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import optuna

from tuner.study.keys import TrialKeys
from tuner.study.storage import _optuna
from tuner.study.storage.sql import force_user_attr
from tuner.tracking import LOST_REASON

_log = logging.getLogger(__name__)


def env_seconds(name: str, default: float) -> float:
    """A non-negative number of seconds from the environment variable ``name``; bad values are a ``ValueError``."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected seconds, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"environment variable {name}: must be a finite number >= 0, got {raw!r}")
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


@dataclass(frozen=True)
class LostTrial:
    """A trial failed because its worker stopped: its study, number, MLflow run id (None when the trial never
    recorded one) and the reason."""

    study: str
    number: int
    run_id: Optional[str]
    reason: str = LOST_REASON


class WorkerLost:
    """Heartbeat-stale callback: reason ``worker lost`` on the failed trial, its MLflow run closed, one retry.

    Args:
        on_lost: ``on_lost(LostTrial)`` closes the lost trial's MLflow run.
        max_retry: how many times a lost trial's parameters are re-queued.
    """

    def __init__(self, on_lost: Optional[Callable[[LostTrial], None]] = None, max_retry: int = 1) -> None:
        self.on_lost, self.max_retry = on_lost, max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        backend = _optuna.rdb_backend(_optuna.study_storage(study))
        if backend is not None:
            try:  # the trial is FAIL and retried either way; the reason is a courtesy
                force_user_attr(backend, _optuna.frozen_id(trial), TrialKeys.REASON, LOST_REASON)
            except Exception as error:
                _log.warning("could not record reason %r on trial %d: %s", LOST_REASON, trial.number, error)
        if self.on_lost is not None:
            self.on_lost(LostTrial(study.study_name, trial.number, trial.user_attrs.get(TrialKeys.RUN_ID) or None))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, trial)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the running trials whose heartbeat stopped (``WorkerLost`` runs for each), as ``study.optimize`` does
    before each trial."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def heartbeat_interval(study: optuna.Study) -> Optional[int]:
    """The study storage's heartbeat interval in seconds (None: heartbeats are off)."""
    get = getattr(_optuna.study_storage(study), "get_heartbeat_interval", None)
    return get() if get is not None else None


class Heartbeats:
    """``with Heartbeats(study) as beats:`` records a heartbeat for each trial ``beats.add(trial)`` names -- at once,
    then every heartbeat interval until the block ends -- on one thread (a no-op when heartbeats are off)."""

    def __init__(self, study: optuna.Study) -> None:
        self.storage = _optuna.study_storage(study)
        self.interval = heartbeat_interval(study)
        self.trial_ids: list[int] = []
        self.stopped = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def add(self, trial: optuna.Trial) -> None:
        """Keep ``trial`` alive from now on (its first heartbeat is recorded at once)."""
        if not self.interval:
            return
        self.trial_ids.append(_optuna.trial_id(trial))
        self._beat(self.trial_ids[-1:])
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="tuner-heartbeat", daemon=True)
            self.thread.start()

    def __enter__(self) -> Heartbeats:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()

    def _run(self) -> None:
        assert self.interval is not None
        while not self.stopped.wait(self.interval):
            self._beat(list(self.trial_ids))

    def _beat(self, trial_ids: list[int]) -> None:
        for trial_id in trial_ids:
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as error:  # a database outage: the calls are retried; past that, the next beat tries again
                _log.warning("heartbeat of trial id %d failed: %s", trial_id, error)


def settle_lost_trials(study: optuna.Study, run_trials: Callable[[int], None]) -> None:
    """The last worker out fails the trials of dead workers and runs their retries.

    Stale trials are normally failed (and re-queued once) when a worker starts its next trial; when the study reaches
    its target before a dead worker's grace period has passed, nobody would start one. So before a worker leaves it
    waits, while other trials are RUNNING, up to one grace period: lost ones become FAIL ("worker lost") and the
    re-queued copies are run here (``run_trials(n)``): one trial for each retry, taken from the queue in its order (a
    grid's point queued before the retry goes first; the retry, a point of the same grid, then waits for the next
    run). Trials of live workers simply finish meanwhile; other queued trials (a grid's points past ``n_trials``, a
    warm start's recipes) wait for a later run.
    """
    backend: Any = _optuna.rdb_backend(_optuna.study_storage(study))
    interval, grace = getattr(backend, "heartbeat_interval", None), getattr(backend, "grace_period", None)
    if not interval or not grace:
        return
    deadline = time.monotonic() + grace + 2 * interval
    counted: set[int] = set()  # retries already answered with a trial run here (it may have popped another)
    while time.monotonic() < deadline:
        fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        retries = {t.number for t in trials if t.state == optuna.trial.TrialState.WAITING and _is_retry(t)} - counted
        if retries:
            counted |= retries
            run_trials(len(retries))
        elif optuna.trial.TrialState.RUNNING not in states:
            return
        time.sleep(interval)


def _is_retry(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a queued trial is the retry of a trial whose worker was lost."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryFailedTrialCallback.retried_trial_number(trial) is not None
