"""The study's MLflow parent run: FINISHED when a run ends, RUNNING while trials are still running; the best recipe
in its tags and the best value as a metric; every count written, zeros included (no stale summary)."""

from __future__ import annotations

from pathlib import Path

import optuna

from tests.helpers import mlflow_runs, write_study
from tuner.study.prepare import prepare
from tuner.study.records import best_recipe_or_none, summarize
from tuner.study.runner import RunOptions, open_tracker, run_study


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
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    other = study.ask()  # another worker's trial, still training
    tracker.end_study(parent_id, best_recipe_or_none(study), summarize(study))
    parent = _parent(workdir)
    assert parent.info.status == "RUNNING" and parent.data.tags["tuner.summary.running"] == "1"
    study.tell(other, state=optuna.trial.TrialState.FAIL)  # it ends; the last one out writes the summary
    tracker.end_study(parent_id, best_recipe_or_none(study), summarize(study))
    parent = _parent(workdir)
    assert parent.info.status == "FINISHED"
    assert (parent.data.tags["tuner.summary.running"], parent.data.tags["tuner.summary.fail"]) == ("0", "1")
    counts = [int(parent.data.tags[f"tuner.summary.{key}"]) for key in ("complete", "pruned", "fail", "running")]
    assert sum(counts) == int(parent.data.tags["tuner.summary.trials"]) == len(study.trials)
