"""The MLflow tracker on real stores: inline calls for local stores, a background queue for servers, a spool on disk
while the server is away (a real ``mlflow server`` stopped and started again), the LR curve."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest

from tests.helpers import ROOT, mlflow_runs
from tuner.recipe import Recipe
from tuner.schedules import build_schedule
from tuner.tracking import TrialOutcome, simplify_curve
from tuner.tracking.calls import UNREACHABLE
from tuner.tracking.mlflow_tracker import MlflowTracker

RECIPE = Recipe("adam", 0.01, schedule="cosine", batch_size=32)


def _interpolate(points: list[tuple[int, float]], step: int) -> float:
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if s0 <= step <= s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    raise AssertionError(f"step {step} outside the curve")


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step", "cosine_restarts", "exponential", "one_cycle"])
def test_a_simplified_lr_curve_draws_the_full_curve_within_tolerance(schedule: str) -> None:
    multiplier = build_schedule(schedule, 1000, {})
    points = [(step, 0.1 * multiplier(step)) for step in range(0, 1000, 5)]
    kept = simplify_curve(points, 0.002)
    assert kept[0] == points[0] and kept[-1] == points[-1]
    assert set(kept) <= set(points) and kept == sorted(kept)
    for step, value in points:
        assert abs(_interpolate(kept, step) - value) <= 0.002 * 0.1 + 1e-15, (schedule, step)
    if schedule == "constant":
        assert len(kept) == 2
    else:
        assert len(kept) < len(points)


def test_a_curve_with_a_nan_is_kept_whole() -> None:
    points = [(0, 0.1), (1, math.nan), (2, 0.1)]
    assert simplify_curve(points, 0.01) == points


@pytest.fixture(scope="module")
def local_uri(tmp_path_factory) -> str:
    """One SQLite store for the module's local tests (creating one takes seconds); each test its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('local') / 'mlflow.db'}"


def test_a_local_store_logs_inline_and_links_the_run_before_start_trial_returns(local_uri, tmp_path) -> None:
    uri = local_uri
    tracker = MlflowTracker(uri, spool_dir=tmp_path / "spool")
    linked: list[tuple[str, dict]] = []
    tracker.on_run_created = lambda run_id, link: linked.append((run_id, link))
    parent = tracker.start_study("inline", {"name": "inline"})
    run = tracker.start_trial(parent, "inline", 0, RECIPE, {}, link={"trial_id": 7})
    assert run.run_id is not None and linked == [(run.run_id, {"trial_id": 7})]
    tracker.log_metrics(run, {"accuracy": 0.5}, 10)
    curve = [(step, 0.01 * build_schedule("cosine", 100, {})(step)) for step in range(100)]
    assert tracker.end_trial(run, TrialOutcome("COMPLETE", "completed", 0.5, 1.0, curve)) == []
    child = tracker.client.get_run(run.run_id)  # inline: already finished, no flush needed
    assert child.info.status == "FINISHED" and child.data.tags["tuner.state"] == "COMPLETE"
    lr_history = tracker.client.get_metric_history(run.run_id, "lr")
    assert 2 < len(lr_history) < len(curve) and lr_history[0].value == pytest.approx(0.01)
    assert {r.info.run_id for r in mlflow_runs(uri, "inline")} == {parent, run.run_id}


def _trial(tracker: MlflowTracker, parent, number: int, study: str = "outage"):
    run = tracker.start_trial(parent, study, number, RECIPE, {"tuner.seed": str(number)})
    tracker.log_metrics(run, {"accuracy": number / 10}, 10)
    tracker.end_trial(run, TrialOutcome("COMPLETE", "completed", number / 10, 1.0))
    return run


def _check_runs(uri: str, study: str, numbers: dict[int, tuple[str, str]]) -> None:
    """One run per trial, each with its params, metrics and end state: ``numbers`` {trial number: (status,
    tuner.state)}."""
    trial_runs = [r for r in mlflow_runs(uri, study) if r.data.tags["tuner.role"] == "trial"]
    runs = {int(r.data.tags["tuner.trial_number"]): r for r in trial_runs}
    assert sorted(int(r.data.tags["tuner.trial_number"]) for r in trial_runs) == sorted(numbers)
    for number, run in runs.items():
        assert (run.info.status, run.data.tags["tuner.state"]) == numbers[number], number
        assert run.data.params["optimizer"] == "adam" and run.data.params["lr"] == "0.01"
        if numbers[number][1] == "COMPLETE":
            assert run.data.metrics["accuracy"] == run.data.metrics["objective"] == number / 10


def test_while_the_server_is_down_calls_wait_on_disk_and_arrive_in_order_when_it_is_back(mlflow_server, tmp_path):
    spool = tmp_path / "spool"
    tracker = MlflowTracker(mlflow_server.uri, spool_dir=spool, retry=(0.2, 1.0))
    parent = tracker.start_study("outage", {"name": "outage"})
    first = _trial(tracker, parent, 0)
    assert tracker.flush() and first.errors == []
    mlflow_server.stop()  # connections refused
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        during = [_trial(tracker, parent, number) for number in (1, 2, 3)]  # none of them waits for the server
        assert not tracker.flush()  # one more try failed: the calls wait in the spool
    assert list(spool.glob("*.jsonl")) and all(run.run_id is None for run in during)
    assert all(run.errors[0].startswith(UNREACHABLE) for run in during)
    mlflow_server.start()
    assert tracker.flush()
    assert not list(spool.glob("*.jsonl"))
    _check_runs(mlflow_server.uri, "outage", dict.fromkeys(range(4), ("FINISHED", "COMPLETE")))
    assert all(run.run_id is not None for run in during)


LEFT_BEHIND = """
import os, sys
from tuner.recipe import Recipe
from tuner.tracking import TrialOutcome
from tuner.tracking.mlflow_tracker import MlflowTracker

tracker = MlflowTracker(sys.argv[1], spool_dir=sys.argv[2], retry=(0.2, 1.0))
recipe = Recipe("adam", 0.01, schedule="cosine", batch_size=32)
ended = tracker.start_trial(None, "left", 0, recipe, {})
tracker.log_metrics(ended, {"accuracy": 0.0}, 10)
tracker.end_trial(ended, TrialOutcome("COMPLETE", "completed", 0.0, 1.0))
tracker.start_trial(None, "left", 1, recipe, {})  # and the process dies in the middle of this trial
assert not tracker.flush()
os._exit(0)
"""


def test_what_a_dead_process_left_in_the_spool_is_sent_by_the_next_one_and_its_open_runs_fail(
    mlflow_server, tmp_path, monkeypatch
):
    spool = tmp_path / "spool"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    mlflow_server.pause()  # requests time out; the server may still carry out those it got once it resumes
    try:
        subprocess.run([sys.executable, "-c", LEFT_BEHIND, mlflow_server.uri, str(spool)], check=True, cwd=ROOT)
    finally:
        mlflow_server.resume()
    assert len(list(spool.glob("*.jsonl"))) == 1
    tracker = MlflowTracker(mlflow_server.uri, spool_dir=spool)
    _trial(tracker, None, 2, study="left")  # this process's own work; what the dead one left goes with it
    assert tracker.flush() and not list(spool.glob("*.jsonl"))
    _check_runs(
        mlflow_server.uri, "left", {0: ("FINISHED", "COMPLETE"), 1: ("FAILED", "FAIL"), 2: ("FINISHED", "COMPLETE")}
    )
    (lost,) = [r for r in mlflow_runs(mlflow_server.uri, "left") if r.data.tags["tuner.trial_number"] == "1"]
    assert lost.data.tags["tuner.reason"] == "worker lost"


def test_a_lost_trial_run_whose_id_was_never_recorded_is_found_by_its_tags(local_uri, tmp_path) -> None:
    tracker = MlflowTracker(local_uri, spool_dir=tmp_path / "spool")
    parent = tracker.start_study("lost", {"name": "lost"})
    orphan = tracker.start_trial(parent, "lost", 3, RECIPE, {})
    other = _trial(tracker, parent, 4, study="lost")
    tracker.fail_lost_trial("lost", 3, None, "worker lost")
    assert tracker.client.get_run(orphan.run_id).info.status == "FAILED"
    assert tracker.client.get_run(orphan.run_id).data.tags["tuner.reason"] == "worker lost"
    assert tracker.client.get_run(other.run_id).info.status == "FINISHED"


def test_mlflow_refusing_a_call_is_recorded_on_the_trial(local_uri, tmp_path) -> None:
    tracker = MlflowTracker(local_uri, spool_dir=tmp_path / "spool")
    run = tracker.start_trial(None, "refused", 0, RECIPE, {})
    tracker.client.delete_run(run.run_id)  # MLflow refuses to log to a deleted run
    with pytest.warns(RuntimeWarning, match="could not log trial metrics"):
        errors = tracker.end_trial(run, TrialOutcome("COMPLETE", "completed", 0.5, 1.0))
    assert errors and errors[0].startswith("MLflow: could not log trial metrics")
