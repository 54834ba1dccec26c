"""Queued trials only (how a grid study runs): ``ask`` pops a queued trial or raises ``QueueEmpty`` without writing;
and the last worker out runs the retries of lost trials, not the rest of a queue."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner.study.storage import QueueEmpty, only_queued_trials, open_storage
from tuner.study.storage.heartbeat import settle_lost_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(study_name="q", storage=open_storage(f"sqlite:///{tmp_path / 'q.db'}"))


def test_asking_pops_queued_trials_then_raises_without_writing(tmp_path: Path) -> None:
    study = _study(tmp_path)
    with only_queued_trials(study):
        study.enqueue_trial({"x": 1.0})  # enqueuing goes on inside
        trial = study.ask()
        assert trial.suggest_float("x", 0, 2) == 1.0
        study.tell(trial, 0.0)
        with pytest.raises(QueueEmpty):
            study.ask()
        assert len(study.get_trials()) == 1  # nothing was created
    study.ask()  # outside, asking creates a trial as usual
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.RUNNING]


def test_other_studies_of_the_storage_ask_as_usual(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'q.db'}")
    grid, other = (optuna.create_study(study_name=name, storage=storage) for name in ("grid", "other"))
    with only_queued_trials(grid):
        other.ask()
        with pytest.raises(QueueEmpty):
            grid.ask()
    assert (len(grid.trials), len(other.trials)) == (0, 1)


def test_the_last_worker_out_runs_retries_not_the_queue(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNER_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("TUNER_GRACE_PERIOD", "2")
    study = _study(tmp_path)
    for x in range(3):  # queued for later runs (a partial grid's points)
        study.enqueue_trial({"x": float(x)})
    ran: list[int] = []

    def run_trials(count: int) -> None:
        ran.append(count)
        for _ in range(count):
            study.tell(study.ask(), 0.0)

    settle_lost_trials(study, run_trials)
    assert ran == []
    retry = optuna.trial.create_trial(
        state=TrialState.WAITING, system_attrs={"failed_trial": 0, "retry_history": [0]}, user_attrs={"retry": 1}
    )
    study.add_trial(retry)  # the retry of a lost trial, as the heartbeat callback queues it
    settle_lost_trials(study, run_trials)
    assert ran == [1]
