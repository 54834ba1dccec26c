"""The study's MLflow parent run: FINISHED when a run ends, RUNNING while trials are still running; the best recipe
in its tags and the best value as a metric; every count written, zeros included (no stale summary)."""

from __future__ import annotations

from pathlib import Path

import optuna

from tests.helpers import mlflow_runs, write_study
from tuner.study.prepare import prepare
from tuner.study.runner import RunOptions, open_tracker, run_study
from tuner.study.runs import end_study


def _parent(workdir: Path):
    (parent,) = [
        r for r in mlflow_runs(f"sqlite:///{workdir}/mlflow.db", "tiny") if r.data.tags["tuner.role"] == "study"
    ]
    return parent


def test_the_parent_run_ends_with_the_study_and_carries_the_best(workdir: Path) -> None:
    path = write_study(workdir)
    study = run_study(prepare(path), RunOptions(n_trials=4))
    parent = _parent(workdir)
    assert parent.info.status == "FINISHED"
    best = study.best_trial.user_attrs["recipe"]
    assert parent.data.tags["tuner.best.optimizer"] == best["optimizer"]
    assert float(parent.data.tags["tuner.best.lr"]) == best["lr"]
    assert parent.data.metrics["study.best_value"] == study.best_value
    assert parent.data.tags["tuner.summary.running"] == "0" and parent.data.tags["tuner.summary.fail"] == "0"


def test_while_trials_run_the_parent_stays_running_and_no_count_goes_stale(workdir: Path) -> None:
    prepared = prepare(write_study(workdir))
    study = run_study(prepared, RunOptions(n_trials=2))
    tracker = open_tracker(prepared.tracking_uri)
    other = study.ask()  # another worker's trial, still training
    end_study(study, tracker)
    parent = _parent(workdir)
    assert parent.info.status == "RUNNING" and parent.data.tags["tuner.summary.running"] == "1"
    study.tell(other, state=optuna.trial.TrialState.FAIL)  # it ends; the last one out writes the summary
    end_study(study, tracker)
    parent = _parent(workdir)
    assert parent.info.status == "FINISHED"
    assert (parent.data.tags["tuner.summary.running"], parent.data.tags["tuner.summary.fail"]) == ("0", "1")
    counts = [int(parent.data.tags[f"tuner.summary.{key}"]) for key in ("complete", "pruned", "fail", "running")]
    assert sum(counts) == int(parent.data.tags["tuner.summary.trials"]) == len(study.trials)


def test_tuner_show_rewrites_a_summary_a_dead_worker_left_from_the_study(workdir: Path, cli) -> None:
    prepared = prepare(write_study(workdir))
    study = run_study(prepared, RunOptions(n_trials=2))
    tracker = open_tracker(prepared.tracking_uri)
    other = study.ask()  # a worker's trial, running when that worker wrote the summary and died
    end_study(study, tracker)
    assert _parent(workdir).data.tags["tuner.summary.running"] == "1"
    study.tell(other, state=optuna.trial.TrialState.FAIL)  # failed as lost; nobody wrote the summary since
    result = cli("show", "tiny")
    assert result.exit_code == 0, result.output
    parent = _parent(workdir)
    assert parent.info.status == "FINISHED"
    assert (parent.data.tags["tuner.summary.running"], parent.data.tags["tuner.summary.fail"]) == ("0", "1")


def test_a_trial_that_ends_while_the_summary_is_written_is_in_the_summary_written_last(workdir: Path) -> None:
    prepared = prepare(write_study(workdir))
    study = run_study(prepared, RunOptions(n_trials=2))
    tracker = open_tracker(prepared.tracking_uri)
    # the study as read before, while and after this worker writes: another worker's trial fails meanwhile
    views = iter([{"trials": 3, "complete": 2, "running": 1}] + [{"trials": 3, "complete": 2, "fail": 1}] * 2)
    tracker.end_study(study.user_attrs["mlflow_parent_run_id"], lambda: (None, next(views)))
    parent = _parent(workdir)
    assert parent.info.status == "FINISHED"
    assert (parent.data.tags["tuner.summary.running"], parent.data.tags["tuner.summary.fail"]) == ("0", "1")
