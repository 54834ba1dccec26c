"""Population-based training in the vectorized pass: exploits copy rows exactly, perturbations stay in the catalog's
ranges, a seed fixes every decision, and the exported lineage replays with plain ``fit``."""

from __future__ import annotations

import random

import pytest
import torch

from tests.helpers import RTOL, RecordingTask
from tests.train.test_population import _batchnorm_task
from tuner.errors import TunerError
from tuner.optim.batched import BlockOptimizer
from tuner.recipe import Recipe
from tuner.tasks import SimpleTask, load_task
from tuner.train import TrainBudget, fit, fit_population
from tuner.train.pbt import FACTORS, Explorer, Lineage, PBTConfig, Range

BUDGET = TrainBudget(steps=40, eval_every=10)
LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 2e-1)
RANGES = {"lr": Range(1e-4, 1.0, log=True), "beta1": Range(0.8, 0.95), "beta2": Range(0.99, 0.9999)}


@pytest.fixture(scope="module")
def task():
    return load_task("digits-mlp", {"hidden": [16]})


def _population(task, config: PBTConfig, optimizer: str = "adam", keep_params: bool = False):
    recipes = [Recipe(optimizer, lr, batch_size=128) for lr in LRS]
    seeds = list(range(11, 11 + len(recipes)))
    return fit_population(task, recipes, BUDGET, seeds=seeds, device="cpu", pbt=config, keep_params=keep_params)


def test_an_exploit_copies_parameters_optimizer_state_and_data_order_exactly(task) -> None:
    # no perturbation, one exploit round (the 2nd of 4 evaluations): each child is a clone of its parent from step
    # 20 on -- same rows, same optimizer state, same batches, same LR -- so the two end bit for bit equal
    config = PBTConfig(interval=2, quantile=1 / 3, perturb=(), ranges=RANGES, seed=0)
    results = _population(task, config, keep_params=True)
    children = [(i, r.extras["pbt"]["exploits"]) for i, r in enumerate(results) if r.extras["pbt"]["exploits"]]
    assert len(children) == 2  # a third of 6, each way
    for child, exploits in children:
        ((exploit),) = exploits
        assert exploit["step"] == 20
        parent = results[exploit["parent"]]
        assert not parent.extras["pbt"]["exploits"]  # a top member is never replaced
        for name, value in parent.extras["params"].items():
            assert torch.equal(results[child].extras["params"][name], value), name
        assert results[child].last.metrics == parent.last.metrics
        assert results[child].extras["pbt"]["seed"] == parent.extras["pbt"]["seed"]
        assert exploit["lr"] == LRS[exploit["parent"]]


def test_block_optimizer_copy_row_takes_every_state_slot_and_the_new_hyperparameters() -> None:
    torch.manual_seed(0)
    params = {"w": torch.randn(3, 4, 2)}
    recipes = [Recipe("adam", 1e-2), Recipe("adam", 2e-2), Recipe("adam", 3e-2)]
    optimizer = BlockOptimizer(recipes, params)
    for _ in range(3):
        optimizer.step(params, {"w": torch.randn(3, 4, 2)}, torch.ones(3, dtype=torch.float64))
    (_, _, block) = optimizer.blocks[0]
    new = Recipe("adam", 5e-2, optimizer_params={"beta1": 0.85}, weight_decay=1e-3)
    optimizer.copy_row(2, 0, new)
    for slot, tensor in block.state["w"].items():
        assert torch.equal(tensor[2], tensor[0]), slot
    assert float(block.peak[2]) == 5e-2 and float(block.hypers["beta1"][2]) == 0.85
    assert float(block.coupled[2]) == 1e-3 and float(block.hypers["beta1"][0]) == 0.9
    with pytest.raises(TunerError, match="sgd"):
        optimizer.copy_row(1, 0, Recipe("sgd", 0.1))


def test_perturbations_stay_in_the_catalogs_ranges() -> None:
    ranges = {**RANGES, "weight_decay": Range(1e-5, 1e-2, log=True)}
    config = PBTConfig(interval=1, perturb=("lr", "betas", "weight_decay"), ranges=ranges, seed=1)
    explorer = Explorer(config)
    base = Recipe("adam", 0.5, optimizer_params={"beta1": 0.94, "beta2": 0.991}, weight_decay=9e-3)
    lineages = [Lineage.root(i, base, i) for i in range(8)]
    scaled = 0
    for step in range(1, 200):
        scores = [random.Random(step * 8 + i).random() for i in range(8)]
        for exploit in explorer.decide(step, scores, lineages, list(range(8)), maximize=True):
            parent, child = lineages[exploit.parent], exploit.lineage
            record = child.exploits[-1]
            assert ranges["lr"].low <= record["lr"] <= ranges["lr"].high
            for name in ("beta1", "beta2"):
                assert ranges[name].low <= child.recipe.optimizer_params[name] <= ranges[name].high
            assert ranges["weight_decay"].low <= child.recipe.weight_decay <= ranges["weight_decay"].high
            ratio = record["lr"] / (parent.recipe.lr * _multiplier(parent, step))
            scaled += any(abs(ratio - f) < 1e-12 for f in FACTORS)
            assert not child.exact  # betas and weight decay changed: fit replays the final values only
            lineages[exploit.child] = child
    assert scaled > 0


def _multiplier(lineage: Lineage, step: int) -> float:
    points = lineage.recipe.schedule_params.get("points", []) if lineage.recipe.schedule == "piecewise" else []
    return ([1.0] + [v for s, v in points if s <= step])[-1]


def test_a_seed_fixes_every_decision(task) -> None:
    config = PBTConfig(interval=1, quantile=0.25, ranges=RANGES, seed=7)
    first, second = _population(task, config), _population(task, config)
    other = _population(task, PBTConfig(interval=1, quantile=0.25, ranges=RANGES, seed=8))
    assert [r.extras["pbt"] for r in first] == [r.extras["pbt"] for r in second]
    assert [r.last.metrics for r in first] == [r.last.metrics for r in second]
    assert [r.extras["pbt"]["exploits"] for r in first] != [r.extras["pbt"]["exploits"] for r in other]


def _layer_norm_task() -> SimpleTask:
    digits = load_task("digits-mlp", {})
    return SimpleTask(
        name="digits-ln",
        model_fn=lambda: torch.nn.Sequential(
            torch.nn.Linear(64, 16), torch.nn.LayerNorm(16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
        ),
        data_fn=digits.load_data,
        loss_fn=digits.loss_fn,
        metrics_fn=digits.metrics_fn,
        metric="accuracy",
        direction="maximize",
    )


@pytest.mark.parametrize(
    "make_task",
    [
        lambda: load_task("digits-mlp", {"hidden": [16]}),  # the stacked path, by hand
        lambda: load_task("digits-cnn", {"channels": [4, 8]}),  # the stacked path's convolutions
        _layer_norm_task,  # a layer the stacked path does not know: vmap
    ],
    ids=["mlp", "cnn", "vmap"],
)
def test_the_exported_lineage_replays_with_plain_fit(make_task) -> None:
    task = make_task()
    config = PBTConfig(interval=1, quantile=0.25, ranges=RANGES, seed=3)
    results = _population(task, config, keep_params=True)
    member = max(results, key=lambda r: len(r.extras["pbt"]["ancestry"]))
    lineage = member.extras["pbt"]
    assert len(lineage["ancestry"]) > 1, lineage  # its weights passed through 2 members or more
    recipe = Recipe.from_dict(lineage["recipe"])
    assert recipe.schedule == "piecewise" and lineage["exact"]
    alone = RecordingTask(task)
    replay = fit(alone, recipe, BUDGET, seed=lineage["seed"], device="cpu")
    # the LR the replay applies at every step is, bit for bit, the LR of the member that owned the weights then
    curves = {i: dict(r.lr_curve) for i, r in enumerate(results)}
    ancestry = lineage["ancestry"]
    for segment, following in zip(ancestry, [*ancestry[1:], {"from_step": BUDGET.steps}]):
        owner = curves[segment["member"]]
        for step in range(segment["from_step"], following["from_step"]):
            assert dict(replay.lr_curve)[step] == owner[step], (segment, step)
    # so the weights and the final value are the member's, as close as any member is to training alone
    for name, param in alone.model.named_parameters():
        error = float((member.extras["params"][name] - param.detach()).norm() / param.detach().norm())
        assert error <= RTOL, f"{name} differs by {error:.2e}"
    assert replay.last.metrics == pytest.approx(member.last.metrics, rel=1e-5)
    # not by chance: the member's own seed, or the history without its points, ends elsewhere
    own_seed = fit(task, recipe, BUDGET, seed=lineage["ancestry"][-1]["member"] + 11, device="cpu")
    flat = fit(task, Recipe("adam", recipe.lr, batch_size=128), BUDGET, seed=lineage["seed"], device="cpu")
    for wrong in (own_seed, flat):
        assert wrong.last.metrics["loss"] != pytest.approx(member.last.metrics["loss"], rel=1e-3)


def test_what_cannot_share_the_pass_is_a_clear_error(task) -> None:
    config = PBTConfig(interval=1, ranges=RANGES)
    seeds = [1, 2, 3, 4]
    with pytest.raises(TunerError, match="BatchNorm1d"):
        fit_population(_batchnorm_task(), [Recipe("adam", 1e-3)] * 4, BUDGET, seeds=seeds, device="cpu", pbt=config)
    mixed = [Recipe("adam", 1e-3), Recipe("sgd", 0.1)] * 2
    with pytest.raises(TunerError, match="one batched update rule"):
        fit_population(task, mixed, BUDGET, seeds=seeds, device="cpu", pbt=config)
    with pytest.raises(TunerError, match="adafactor"):
        fit_population(task, [Recipe("adafactor", 1e-2)] * 4, BUDGET, seeds=seeds, device="cpu", pbt=config)
    with pytest.raises(TunerError, match="schedule='cosine'"):
        fit_population(task, [Recipe("adam", 1e-3, schedule="cosine")] * 4, BUDGET, seeds=seeds, pbt=config)
    best = TrainBudget(steps=40, eval_every=10, objective="best")
    with pytest.raises(TunerError, match="final evaluation"):
        fit_population(task, [Recipe("adam", 1e-3)] * 4, best, seeds=seeds, pbt=config)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="quantile"):
        PBTConfig(interval=1, quantile=0.6)
    with pytest.raises(ValueError, match="interval"):
        PBTConfig(interval=0)
    with pytest.raises(ValueError, match="perturb"):
        PBTConfig(interval=1, perturb=("momentum",))
