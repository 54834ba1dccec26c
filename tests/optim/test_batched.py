"""Exactness of the batched optimizers: every population member ends where training it alone with torch.optim
(``tuner.train.trainer``, same recipe, seed and data order) ends -- final parameters within 1e-5 relative, float32.

One population per optimizer holds every schedule of the test (constant, step, cosine with warmup,
cosine_restarts, plateau) in two hyperparameter variants with weight decay of both kinds and clipping of both
kinds, so members with different schedules, LRs, betas/momenta, decay and clipping share the stacks.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from tests.helpers import RTOL, RecordingTask
from tuner.optim.batched import BATCHED, population_key
from tuner.recipe import Recipe
from tuner.tasks import load_task
from tuner.train import TrainBudget, fit
from tuner.train.population import fit_population

BUDGET = TrainBudget(steps=50, eval_every=10)  # > 2 epochs at batch 64: reshuffles included

SCHEDULES: dict[str, dict[str, Any]] = {
    "constant": {"schedule": "constant"},
    "step": {"schedule": "step", "schedule_params": {"gamma": 0.5, "step_size": 0.3}},
    "cosine+warmup": {"schedule": "cosine", "warmup": 10},
    "cosine_restarts": {"schedule": "cosine_restarts", "schedule_params": {"T_0": 0.25, "T_mult": 2}},
    # patience 0 and a 50% threshold: the plateau factor drops at the second evaluation (checked below)
    "plateau": {"schedule": "plateau", "schedule_params": {"patience": 0, "factor": 0.5, "threshold": 0.5}},
}
VARIANTS: list[dict[str, Any]] = [
    {"weight_decay": 1e-3, "weight_decay_mode": "coupled", "clip_norm": 0.5},
    {"weight_decay": 1e-2, "weight_decay_mode": "decoupled", "clip_value": 0.02, "lr_factor": 0.5},
]
# optimizer case -> (name, lr, optimizer_params of the two variants)
CASES: dict[str, tuple[str, float, list[dict[str, Any]]]] = {
    "sgd": ("sgd", 0.05, [{}, {}]),
    "momentum": ("momentum", 0.02, [{"momentum": 0.9}, {"momentum": 0.7, "dampening": 0.1}]),
    "nesterov": ("nesterov", 0.02, [{"momentum": 0.9}, {"momentum": 0.8}]),
    "adagrad": ("adagrad", 0.05, [{"initial_accumulator_value": 0.1, "lr_decay": 0.01}, {}]),
    "rmsprop": ("rmsprop", 1e-3, [{"alpha": 0.95}, {"alpha": 0.99, "eps": 1e-6}]),
    "rmsprop_momentum_centered": (
        "rmsprop",
        1e-3,
        [{"centered": True, "momentum": 0.5}, {"centered": True, "momentum": 0.9}],
    ),
    "adadelta": ("adadelta", 1.0, [{"rho": 0.9}, {"rho": 0.95, "eps": 1e-5}]),
    "adam": ("adam", 1e-3, [{"beta1": 0.85}, {"beta2": 0.99}]),
    "adam_amsgrad": ("adam", 1e-3, [{"amsgrad": True}, {"amsgrad": True, "beta1": 0.8}]),
    "adamw": ("adamw", 1e-3, [{}, {"eps": 1e-6}]),
    "nadam": ("nadam", 1e-3, [{"momentum_decay": 0.01}, {"beta1": 0.85}]),
    "radam": ("radam", 1e-3, [{"beta2": 0.99}, {}]),
    "adamax": ("adamax", 2e-3, [{"beta2": 0.99}, {"beta1": 0.8}]),
}


@pytest.fixture(scope="module")
def task():
    return load_task("digits-mlp", {"hidden": [24]})


def _members(case: str) -> list[tuple[str, Recipe]]:
    name, lr, params = CASES[case]
    members = []
    for schedule_label, schedule in SCHEDULES.items():
        for index, variant in enumerate(VARIANTS):
            variant = dict(variant)
            factor = variant.pop("lr_factor", 1.0)
            recipe = Recipe(name, lr * factor, dict(params[index]), batch_size=64, **schedule, **variant)
            members.append((f"{case}/{schedule_label}/variant{index}", recipe))
    return members


def test_every_batched_optimizer_is_tested() -> None:
    assert {name for name, _, _ in CASES.values()} == set(BATCHED)


@pytest.mark.parametrize("case", sorted(CASES))
def test_member_equals_training_alone(task, case: str) -> None:
    members = _members(case)
    recipes = [recipe for _, recipe in members]
    assert len({population_key(r) for r in recipes}) == 1, "the case must be one population"
    seeds = [100 + i for i in range(len(recipes))]
    results = fit_population(task, recipes, BUDGET, seeds=seeds, keep_params=True, device="cpu")
    for (label, recipe), seed, result in zip(members, seeds, results):
        assert result.extras["population"] == len(recipes), label
        alone = RecordingTask(task)
        expected = fit(alone, recipe, BUDGET, seed=seed, device="cpu")
        assert (result.status, result.steps_done) == (expected.status, expected.steps_done), label
        for param_name, param in alone.model.named_parameters():
            got, want = result.extras["params"][param_name], param.detach()
            error = float((got - want).norm() / want.norm())
            assert error <= RTOL, f"{label}: {param_name} differs by {error:.2e} (relative)"
        assert [e.step for e in result.evaluations] == [e.step for e in expected.evaluations], label
        for got, want in zip(result.evaluations, expected.evaluations):
            assert got.metrics["loss"] == pytest.approx(want.metrics["loss"], rel=1e-4), label
            assert got.lr == pytest.approx(want.lr, rel=1e-12), label
        assert [step for step, _ in result.lr_curve] == [step for step, _ in expected.lr_curve], label
        assert [lr for _, lr in result.lr_curve] == pytest.approx([lr for _, lr in expected.lr_curve], rel=1e-12), label


MIXED: dict[
    str, list[Recipe]
] = {  # catalog entries that share one population, each with its own branch of torch's code
    "sgd": [
        Recipe("sgd", 0.05),
        Recipe("momentum", 0.02, {"momentum": 0.8, "dampening": 0.2}),
        Recipe("nesterov", 0.02, {"momentum": 0.9}, clip_norm=0.5),
        Recipe("momentum", 0.05, {"momentum": 0.0, "dampening": 0.5}),
    ],
    "adam": [
        Recipe("adam", 1e-3, weight_decay=1e-2, weight_decay_mode="decoupled"),
        Recipe("adamw", 2e-3, weight_decay=1e-2),
        Recipe("adamw", 1e-3, weight_decay=1e-3, weight_decay_mode="coupled"),
    ],
    "rmsprop": [
        Recipe("rmsprop", 1e-3),
        Recipe("rmsprop", 1e-3, {"centered": True}),
        Recipe("rmsprop", 5e-4, {"momentum": 0.9}),
        Recipe("rmsprop", 5e-4, {"momentum": 0.5, "centered": True}),
    ],
}


def _final_params_equal_training_alone(task, recipes: list[Recipe], seeds: list[int]) -> None:
    results = fit_population(task, recipes, BUDGET, seeds=seeds, keep_params=True, device="cpu")
    for recipe, seed, result in zip(recipes, seeds, results):
        assert result.extras["population"] == len(recipes)
        alone = RecordingTask(task)
        fit(alone, recipe, BUDGET, seed=seed, device="cpu")
        for param_name, param in alone.model.named_parameters():
            error = float((result.extras["params"][param_name] - param.detach()).norm() / param.detach().norm())
            assert error <= RTOL, f"{recipe.optimizer} {recipe.optimizer_params}: {param_name} differs by {error:.2e}"


@pytest.mark.parametrize("group", sorted(MIXED))
def test_mixed_catalog_entries_share_one_population_exactly(task, group: str) -> None:
    recipes = [replace(r, schedule="cosine", batch_size=64) for r in MIXED[group]]
    _final_params_equal_training_alone(task, recipes, [7 + i for i in range(len(recipes))])


def test_every_update_rule_shares_one_stack_exactly_and_members_leave_across_blocks(task) -> None:
    """One stack per batch size: each rule updates its own block of rows; a member leaving shifts the blocks."""
    recipes = [
        replace(Recipe(name, lr, dict(params[0])), batch_size=64, schedule="cosine")
        for name, lr, params in CASES.values()
    ]
    recipes = recipes[1::2] + recipes[::2]  # interleaved: the population orders them into blocks itself
    seeds = [40 + i for i in range(len(recipes))]
    leaving = {1: 20, 6: 10, len(recipes) - 1: 30}  # member -> the step whose evaluation stops it

    def stop_at(step: int):
        return lambda evaluation: evaluation.step >= step

    callbacks = [stop_at(leaving[i]) if i in leaving else None for i in range(len(recipes))]
    results = fit_population(task, recipes, BUDGET, seeds=seeds, on_eval=callbacks, keep_params=True, device="cpu")
    assert results[6].extras["population"] == len(recipes)  # everyone trained in one pass
    for index, (recipe, seed, result) in enumerate(zip(recipes, seeds, results)):
        alone = RecordingTask(task)
        expected = fit(alone, recipe, BUDGET, seed=seed, on_eval=callbacks[index], device="cpu")
        assert (result.status, result.steps_done) == (expected.status, expected.steps_done), recipe.optimizer
        for param_name, param in alone.model.named_parameters():
            error = float((result.extras["params"][param_name] - param.detach()).norm() / param.detach().norm())
            assert error <= RTOL, f"{recipe.optimizer} {recipe.optimizer_params}: {param_name} differs by {error:.2e}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_members_sharing_all_but_the_lr_equal_training_alone(task, case: str) -> None:
    """Hyperparameters every member shares are Python floats: torch's own scalar calls (Adam: its fused kernel).
    (Seeds matter here as everywhere: a ReLU input within an ulp of 0 may flip between two summation orders and
    jump a member by 1e-4; these seeds, like the ones above, meet none.)"""
    name, lr, params = CASES[case]
    recipes = [
        Recipe(name, lr * factor, dict(params[0]), batch_size=64, schedule="cosine", weight_decay=1e-3)
        for factor in (0.5, 1.0, 2.0)
    ]
    _final_params_equal_training_alone(task, recipes, [21, 22, 23])


def test_plateau_members_really_reduce_their_lr(task) -> None:
    recipe = Recipe("adam", 1e-3, batch_size=64, **SCHEDULES["plateau"])
    (result,) = fit_population(task, [recipe], BUDGET, seeds=[1], device="cpu")
    assert min(lr for _, lr in result.lr_curve) < recipe.lr / 1.9


def test_unbatched_recipes_have_no_population_key() -> None:
    assert population_key(Recipe("adafactor", 1e-2)) is None
    assert population_key(Recipe("lbfgs", 0.1, batch_size=None)) is None
    from tuner.recipe import Switch

    assert population_key(Recipe("adam", 1e-3, switch=Switch("sgd", 0.5, 0.1))) is None
    adam = Recipe("adam", 1e-3)
    assert population_key(adam) == population_key(replace(adam, lr=0.1, weight_decay=0.1, schedule="cosine"))
    assert population_key(adam) != population_key(replace(adam, batch_size=32))
    assert population_key(adam) != population_key(replace(adam, optimizer_params={"amsgrad": True}))
    assert population_key(adam) == population_key(replace(adam, optimizer="adamw"))
    assert population_key(Recipe("sgd", 0.1)) == population_key(Recipe("nesterov", 0.1))
    assert population_key(adam) != population_key(replace(adam, optimizer="nadam"))


def test_clipping_is_per_member() -> None:
    from tuner.optim.batched import BatchedOptimizer

    recipes = [Recipe("sgd", 1.0, clip_norm=1.0), Recipe("sgd", 1.0), Recipe("sgd", 1.0, clip_value=0.5)]
    params = {"w": torch.zeros(3, 2)}
    grads = {"w": torch.tensor([[3.0, 4.0], [3.0, 4.0], [3.0, -0.25]])}
    BatchedOptimizer(recipes, params).step(params, grads, torch.ones(3, dtype=torch.float64))
    expected = -torch.tensor([[0.6, 0.8], [3.0, 4.0], [0.5, -0.25]])
    torch.testing.assert_close(params["w"], expected, rtol=1e-5, atol=1e-6)
