"""RunProgress, the one run bookkeeping: cadence, divergence, best and patience, reasons, LR-curve sampling."""

from __future__ import annotations

import math

import pytest

from tuner.train.progress import RunProgress, TrainBudget, divergence_limit, plan_steps, plan_steps_per_epoch


def _progress(**kwargs) -> RunProgress:
    options = dict(total_steps=100, per_epoch=10, eval_every=10)
    budget = kwargs.pop("budget", TrainBudget(epochs=10))
    options.update(kwargs)
    return RunProgress(budget, "accuracy", "maximize", **options)


def test_evaluations_fall_on_the_cadence_and_at_the_last_step() -> None:
    progress = _progress(total_steps=25, eval_every=10)
    assert [s for s in range(1, 26) if progress.is_eval_step(s)] == [10, 20, 25]


def test_a_loss_past_the_factor_of_the_first_diverges_with_its_reason() -> None:
    progress = _progress(budget=TrainBudget(epochs=10, divergence_factor=10.0))
    assert not progress.check_loss(0, 2.0)
    assert not progress.check_loss(1, 20.0)  # exactly the limit is not past it
    assert progress.check_loss(2, 20.5)
    assert (progress.status, progress.reason) == ("diverged", "diverged at step 3: training loss 20.5 (first loss 2)")


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_diverges(loss: float) -> None:
    progress = _progress()
    progress.check_loss(0, 1.0)
    assert progress.check_loss(1, loss) and progress.status == "diverged"


def test_the_limit_of_a_zero_first_loss_is_not_zero() -> None:
    assert divergence_limit(0.0, 1e3) == pytest.approx(1e-9)
    assert divergence_limit(-2.0, 10.0) == 20.0


def test_best_patience_and_the_caller_stop_the_run_with_their_reasons() -> None:
    progress = _progress(budget=TrainBudget(epochs=10, patience=2))
    values = [0.5, 0.7, 0.6, 0.65]
    stops = [
        progress.evaluated(progress.evaluation(10 * (i + 1), {"accuracy": v, "loss": 1 - v}, 0.1, 0.01))
        for i, v in enumerate(values)
    ]
    assert stops == [False, False, False, True]
    assert progress.best.metrics["accuracy"] == 0.7 and progress.best.step == 20
    assert (progress.status, progress.reason) == ("early_stopped", "no improvement in 2 evaluations (step 40)")

    stopper = _progress(on_eval=lambda evaluation: evaluation.step == 20)
    assert not stopper.evaluated(stopper.evaluation(10, {"accuracy": 0.1}, 0.0, 0.1))
    assert stopper.evaluated(stopper.evaluation(20, {"accuracy": 0.2}, 0.0, 0.1))
    assert (stopper.status, stopper.reason) == ("stopped", "stopped by the caller at step 20")


def test_non_finite_validation_metrics_diverge_and_are_not_recorded() -> None:
    progress = _progress()
    assert progress.evaluated(progress.evaluation(10, {"accuracy": 0.5, "loss": math.nan}, 0.1, 0.1))
    assert progress.status == "diverged" and progress.evaluations == [] and progress.best is None


def test_a_metric_driven_schedule_hears_the_validation_loss_first() -> None:
    heard = []

    class Plateau:
        def report(self, loss: float) -> None:
            heard.append(loss)

    progress = _progress(schedule=Plateau())
    progress.evaluated(progress.evaluation(10, {"accuracy": 0.5, "loss": 0.25}, 0.1, 0.1))
    progress.evaluated(progress.evaluation(20, {"accuracy": 0.5, "loss": math.inf}, 0.1, 0.1))
    assert heard == [0.25, math.inf]


def test_the_lr_curve_keeps_about_200_points_and_the_last_step() -> None:
    progress = _progress(total_steps=1000)
    for step in range(1000):
        progress.record_lr(step, 0.1)
    steps = [s for s, _ in progress.lr_curve]
    assert steps[:3] == [0, 5, 10] and steps[-1] == 999 and len(steps) == 201


def test_plan_steps() -> None:
    assert plan_steps(100, 32, TrainBudget(epochs=2)) == (4, 8, 4)
    assert plan_steps(100, None, TrainBudget(epochs=3)) == (1, 3, 1)
    assert plan_steps_per_epoch(7, TrainBudget(steps=50, eval_every=80)) == (7, 50, 50)


def test_the_result_carries_what_was_decided() -> None:
    progress = _progress()
    progress.record_lr(0, 0.1)
    progress.evaluated(progress.evaluation(10, {"accuracy": 0.5}, 0.3, 0.1))
    result = progress.result(10, 1.5, {"population": 4})
    assert (result.status, result.steps_done, result.total_steps, result.seconds) == ("completed", 10, 100, 1.5)
    assert result.last is result.best and result.lr_curve == [(0, 0.1)] and result.extras == {"population": 4}
