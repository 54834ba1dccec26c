"""The economics of a study: its best value so far against the compute it spent (steps, training seconds, wall clock),
trial by trial in the order the trials ended -- from a real `tuner run`, and from trials carrying the attributes the
engine writes where a case (parallel workers, a resumed trial, a lost one) is not cheap to produce for real."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import write_study
from tuner.study.economics import common_target, compare, economics

T0 = datetime(2026, 11, 30, 12, 0, 0)


def _trial(
    study: optuna.Study,
    state: TrialState,
    start_s: float,
    end_s: float,
    value: Optional[float] = None,
    reports: Optional[dict[int, float]] = None,
    **attrs: Any,
) -> None:
    """A trial as the engine leaves it: its state, value, reports, user attributes, start and end times."""
    trial = optuna.trial.create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        user_attrs=attrs,
        intermediate_values=reports or {},
    )
    trial.datetime_start = T0 + timedelta(seconds=start_s)
    trial.datetime_complete = T0 + timedelta(seconds=end_s)
    study.add_trial(trial)


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tuner.db'}"


def test_a_real_study_curve_is_monotone_counts_pruned_steps_in_completion_order(workdir: Path, cli) -> None:
    """sgd with LRs of 5..100 diverges: pruned trials, which count the steps they trained before they stopped."""
    path = write_study(
        workdir,
        budget={"epochs": 1, "n_trials": 8},
        sampler={"name": "random"},
        space={
            "optimizers": {"adam": {}, "sgd": {"lr": {"low": 5.0, "high": 100.0}}},
            "schedules": ["constant"],
            "batch_size": 64,
        },
        tracking_uri="none",
    )
    assert cli("run", path).exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}")
    curve = economics(study)
    trials = {t.number: t for t in study.trials}
    ended_order = sorted(trials, key=lambda n: (trials[n].datetime_complete, n))
    assert [p.trial for p in curve.points] == ended_order

    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.user_attrs["steps_done"] < t.user_attrs["total_steps"] for t in pruned)
    previous_steps = 0
    for point in curve.points:  # each point adds exactly the steps its trial trained, pruned ones included
        assert point.spent.steps - previous_steps == trials[point.trial].user_attrs["steps_done"]
        previous_steps = point.spent.steps
    assert curve.total.steps == sum(t.user_attrs["steps_done"] for t in study.trials)
    assert curve.total.seconds == pytest.approx(sum(t.user_attrs["duration_s"] for t in study.trials), abs=1e-2)

    for before, after in zip(curve.points, curve.points[1:]):
        assert after.spent.steps >= before.spent.steps and after.spent.seconds >= before.spent.seconds
        assert after.spent.wall_s >= before.spent.wall_s
        if before.best is not None:
            assert after.best is not None and after.best >= before.best
    assert curve.best == study.best_value and curve.notes == () and curve.range_test.steps == 0
    first_start = min(t.datetime_start for t in study.trials)
    last_end = max(t.datetime_complete for t in study.trials)
    assert curve.total.wall_s == pytest.approx((last_end - first_start).total_seconds(), abs=1e-2)
    fraction, target, reached = curve.milestones()[-1]
    assert fraction == 1.0 and target == study.best_value and reached.trial == study.best_trial.number


def test_completion_order_parallel_workers_pruned_failed_and_resumed_trials(storage: str) -> None:
    """Two workers: trial 1 ends before trial 0 (it comes first), wall clock is less than the summed seconds; a pruned
    trial counts its steps, a failed one its last report, a lost one nothing (noted), a resumed one only the steps
    after its checkpoint."""
    study = optuna.create_study(study_name="hand", storage=storage, direction="minimize")
    _trial(study, TrialState.COMPLETE, 0, 10, 0.5, steps_done=100, duration_s=10.0)
    _trial(study, TrialState.COMPLETE, 0, 6, 0.8, steps_done=100, duration_s=6.0)
    _trial(study, TrialState.PRUNED, 6, 9, reports={20: 1.0, 40: 0.9}, steps_done=40, duration_s=3.0)
    _trial(study, TrialState.FAIL, 9, 12, reports={20: 1.1, 60: 0.7}, duration_s=3.0)  # its steps: the last report
    _trial(study, TrialState.FAIL, 10, 14)  # lost: nothing recorded
    _trial(
        study, TrialState.COMPLETE, 14, 20, 0.3, steps_done=100, duration_s=6.0, resumed_from={"trial": 4, "step": 60}
    )
    study.enqueue_trial({})  # waiting: not counted
    curve = economics(study)

    assert [p.trial for p in curve.points] == [1, 2, 0, 3, 4, 5]
    assert [p.spent.steps for p in curve.points] == [100, 140, 240, 300, 300, 340]
    assert [p.spent.seconds for p in curve.points] == [6.0, 9.0, 19.0, 22.0, 22.0, 28.0]
    assert [p.spent.wall_s for p in curve.points] == [6.0, 9.0, 10.0, 12.0, 14.0, 20.0]
    assert [p.best for p in curve.points] == [0.8, 0.8, 0.5, 0.5, 0.5, 0.3]  # minimize: pruned values do not count
    assert curve.notes == ("1 ended trials recorded no steps (counted as 0): #4",)
    # 0.8 -> 0.3: 90% of the way is 0.35, reached by trial 5 only; 0.5 is reached by trial 0
    assert [(f, round(t, 9), p.trial) for f, t, p in curve.milestones()] == [
        (0.9, 0.35, 5),
        (0.99, 0.305, 5),
        (1.0, 0.3, 5),
    ]
    assert curve.reach(0.5) is curve.points[2] and curve.reach(0.1) is None


def test_the_lr_range_test_is_counted_first_and_an_unrecorded_one_is_said(storage: str) -> None:
    study = optuna.create_study(study_name="auto", storage=storage, direction="maximize")
    study.set_user_attr(
        "lr_auto", {"adam": {"lr": 0.01, "steps": 80, "seconds": 2.5}, "sgd": {"lr": 0.1, "steps": 20, "seconds": 0.5}}
    )
    _trial(study, TrialState.COMPLETE, 0, 4, 0.9, steps_done=50, duration_s=4.0, population=1)
    curve = economics(study)
    (point,) = curve.points
    assert (curve.range_test.steps, curve.range_test.seconds) == (100, 3.0)
    assert (point.spent.steps, point.spent.seconds, point.spent.wall_s) == (150, 7.0, 7.0)

    older = optuna.create_study(study_name="older", storage=storage)
    older.set_user_attr("lr_auto", {"adam": {"lr": 0.01}})
    _trial(older, TrialState.COMPLETE, 0, 4, 0.9, steps_done=50, duration_s=4.0, population=8)
    notes = economics(older).notes
    assert economics(older).total.steps == 50 and "range test's steps were not recorded" in notes[0]
    assert "population members shared training passes" in notes[1]


def test_a_study_without_an_ended_trial_has_an_empty_curve(storage: str) -> None:
    study = optuna.create_study(study_name="empty", storage=storage)
    curve = economics(study)
    assert curve.points == () and curve.best is None and curve.milestones() == [] and curve.total.steps == 0


def test_compare_reaches_the_worst_best_and_refuses_mixed_metrics(storage: str) -> None:
    fast = optuna.create_study(study_name="fast", storage=storage, direction="maximize")
    _trial(fast, TrialState.COMPLETE, 0, 2, 0.7, steps_done=10, duration_s=2.0)
    _trial(fast, TrialState.COMPLETE, 2, 4, 0.9, steps_done=10, duration_s=2.0)
    slow = optuna.create_study(study_name="slow", storage=storage, direction="maximize")
    _trial(slow, TrialState.COMPLETE, 0, 5, 0.8, steps_done=100, duration_s=5.0)
    _trial(slow, TrialState.COMPLETE, 5, 9, 0.85, steps_done=100, duration_s=4.0)
    comparison = compare([fast, slow])
    assert comparison.reach_value == 0.85
    fast_row, slow_row = comparison.rows
    assert (fast_row["steps_to_reach"], fast_row["trial_to_reach"], fast_row["seconds_to_reach"]) == (20, 1, 4.0)
    assert (slow_row["steps_to_reach"], slow_row["trial_to_reach"], slow_row["wall_s_to_reach"]) == (200, 1, 9.0)

    minimize = optuna.create_study(study_name="loss", storage=storage, direction="minimize")
    _trial(minimize, TrialState.COMPLETE, 0, 1, 0.1, steps_done=1)
    assert common_target([economics(fast), economics(minimize)]) == (
        None,
        "the studies optimize different metrics or directions: no common value to reach",
    )
    empty = optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    mixed = compare([fast, empty])
    assert mixed.reach_value is None and "no complete trial yet in empty" in mixed.reach_note
    assert mixed.rows[1]["steps_to_reach"] is None and mixed.rows[1]["steps"] == 0
