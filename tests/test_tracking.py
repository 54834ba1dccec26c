"""The MLflow tracker on real stores: inline calls for local stores, a background queue for servers, the LR curve."""

from __future__ import annotations

import math
import socket
import warnings

import pytest

from tests.helpers import mlflow_runs
from tuner.recipe import Recipe
from tuner.schedules import build_schedule
from tuner.tracking import MlflowTracker, TrialOutcome, simplify_curve

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


def test_a_local_store_logs_inline_and_the_run_id_arrives_before_start_trial_returns(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri)
    parent = tracker.start_study("inline", {"name": "inline"})
    seen: list[str] = []
    run = tracker.start_trial(parent, "inline", 0, RECIPE, {}, on_started=seen.append)
    assert run.run_id is not None and seen == [run.run_id]
    tracker.log_metrics(run, {"accuracy": 0.5}, 10)
    curve = [(step, 0.01 * build_schedule("cosine", 100, {})(step)) for step in range(100)]
    assert tracker.end_trial(run, TrialOutcome("COMPLETE", "completed", 0.5, 1.0, curve)) == []
    child = tracker.client.get_run(run.run_id)  # inline: already finished, no flush needed
    assert child.info.status == "FINISHED" and child.data.tags["tuner.state"] == "COMPLETE"
    lr_history = tracker.client.get_metric_history(run.run_id, "lr")
    assert 2 < len(lr_history) < len(curve) and lr_history[0].value == pytest.approx(0.01)
    assert {r.info.run_id for r in mlflow_runs(uri, "inline")} == {parent, run.run_id}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_is_called_from_the_background_and_its_failures_reach_the_trial(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracker = MlflowTracker(f"http://127.0.0.1:{_free_port()}", retries=1, retry_wait=0.5)
    seen: list[object] = []
    run = tracker.start_trial(None, "remote", 0, RECIPE, {}, on_started=seen.append)
    assert not run.created.done()  # the first attempt failed; the retry waits 0.5 s on the tracking thread
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        errors = tracker.end_trial(run, TrialOutcome("COMPLETE", "completed", 0.5, 1.0))
        tracker.flush()
    assert run.run_id is None and seen == [None]
    assert len(errors) == 1 and errors[0].startswith("MLflow: could not create trial run")
