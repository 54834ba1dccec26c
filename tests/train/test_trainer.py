"""The trainer on real tasks: learning, determinism, divergence, early stopping, pruning hook, LR curve."""

from __future__ import annotations

import math

import pytest

from tuner.recipe import Recipe
from tuner.tasks import load_task
from tuner.train import TrainBudget, fit, plan_steps


@pytest.fixture(scope="module")
def digits():
    return load_task("digits-mlp", {"hidden": [32]})


def test_adam_with_cosine_learns_digits(digits) -> None:
    recipe = Recipe(optimizer="adam", lr=1e-2, schedule="cosine", batch_size=64)
    result = fit(digits, recipe, TrainBudget(epochs=6), seed=0)
    assert result.status == "completed"
    assert result.best.metrics["accuracy"] >= 0.93
    assert len(result.evaluations) == 6 and result.evaluations[-1].step == result.total_steps


def test_deterministic_mode_is_bit_identical_for_a_seed(digits) -> None:
    recipe = Recipe(optimizer="momentum", lr=0.05, schedule="step", batch_size=32, clip_norm=1.0)
    runs = [fit(digits, recipe, TrainBudget(epochs=2), seed=7, deterministic=True) for _ in range(2)]
    assert runs[0].evaluations[-1].metrics == runs[1].evaluations[-1].metrics
    other = fit(digits, recipe, TrainBudget(epochs=2), seed=8, deterministic=True)
    assert other.evaluations[-1].metrics["loss"] != runs[0].evaluations[-1].metrics["loss"]


def test_divergence_stops_with_reason_and_keeps_finite_metrics(digits) -> None:
    recipe = Recipe(optimizer="sgd", lr=1e4, batch_size=64)
    result = fit(digits, recipe, TrainBudget(epochs=3), seed=0)
    assert result.status == "diverged" and "diverged at step" in result.reason
    assert all(math.isfinite(v) for e in result.evaluations for v in e.metrics.values())


def test_patience_stops_early(digits) -> None:
    recipe = Recipe(optimizer="sgd", lr=1e-7, batch_size=64)  # far too small: nothing improves
    result = fit(digits, recipe, TrainBudget(steps=200, eval_every=10, patience=2), metric="loss", seed=0)
    assert result.status in ("early_stopped", "completed")
    assert result.steps_done < 200 or result.status == "completed"
    budget = TrainBudget(steps=200, eval_every=10, patience=1)
    frozen = fit(digits, Recipe(optimizer="sgd", lr=1e-12, batch_size=64), budget, metric="accuracy", seed=0)
    assert frozen.status == "early_stopped" and frozen.steps_done == 20


def test_on_eval_can_stop_the_run(digits) -> None:
    seen = []
    result = fit(
        digits,
        Recipe(optimizer="adam", lr=1e-3),
        TrainBudget(epochs=5),
        on_eval=lambda e: seen.append(e.step) or len(seen) == 2,
        seed=0,
    )
    assert result.status == "stopped" and len(result.evaluations) == 2


def test_lr_curve_follows_the_schedule_with_warmup(digits) -> None:
    recipe = Recipe(optimizer="sgd", lr=0.1, schedule="cosine", warmup=0.1, batch_size=64)
    result = fit(digits, recipe, TrainBudget(epochs=3), seed=0)
    steps, lrs = zip(*result.lr_curve)
    warm = recipe.warmup_steps(result.total_steps)
    peak = max(lrs)
    assert peak == pytest.approx(0.1, rel=0.05)
    assert lrs[0] < 0.1 * 0.5 and lrs.index(peak) <= warm + 1
    assert lrs[-1] < 0.01


def test_full_batch_lbfgs_on_quadratic() -> None:
    task = load_task("quadratic", {"dim": 10, "n": 256})
    result = fit(task, Recipe(optimizer="lbfgs", lr=0.5, batch_size=None), TrainBudget(steps=20, eval_every=5), seed=0)
    assert result.status in ("completed", "early_stopped")
    assert (
        result.evaluations[-1].metrics["loss"] < result.evaluations[0].metrics["loss"]
        or result.evaluations[0].metrics["loss"] < 0.05
    )


def test_plan_steps() -> None:
    assert plan_steps(100, 32, TrainBudget(epochs=2)) == (4, 8, 4)
    assert plan_steps(100, None, TrainBudget(epochs=3)) == (1, 3, 1)
    assert plan_steps(100, 10, TrainBudget(steps=50)) == (10, 50, 5)
    assert plan_steps(100, 10, TrainBudget(steps=50, eval_every=20)) == (10, 50, 20)


def test_device_data_is_never_served_to_a_later_task_that_reuses_a_freed_tasks_id() -> None:
    import gc

    import torch

    from tuner.train import data_on_device

    for i in range(20):  # freed objects' ids are reused at once by CPython; each task must get its own split
        val_fraction = 0.1 if i % 2 else 0.3
        task = load_task("digits-mlp", {"val_fraction": val_fraction})
        expected = len(task.load_data().val_inputs)
        assert len(data_on_device(task, torch.device("cpu")).val_inputs) == expected, i
        del task
        gc.collect()
