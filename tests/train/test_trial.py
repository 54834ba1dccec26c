"""tuner.Trial: the recipe as a real torch optimizer and scheduler (equal to tuner's own trainer, step by step),
``report`` deciding as RunProgress decides, and user functions run with a seeded trial."""

from __future__ import annotations

import math

import pytest
import torch

from tuner.errors import TrialPruned, TunerError, UserCodeError
from tuner.optim.torch_api import RecipeOptimizer, RecipeScheduler, build
from tuner.recipe import Recipe, Switch
from tuner.schedules import recipe_schedule
from tuner.tasks import load_task
from tuner.train import TrainBudget, Trainer
from tuner.train.trial import Trial, TrialInfo, check_train_function, run_function

RECIPES = {
    "adam+cosine+warmup": Recipe(optimizer="adam", lr=3e-3, schedule="cosine", warmup=5, batch_size=64),
    "adamw decoupled + clip": Recipe(
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.05,
        weight_decay_mode="decoupled",
        clip_norm=0.5,
        schedule="step",
        batch_size=32,
    ),
    "sgd coupled L2 + clip_value": Recipe(
        optimizer="momentum", lr=0.05, weight_decay=1e-3, clip_value=0.01, schedule="linear", batch_size=64
    ),
    "adam -> sgd switch": Recipe(
        optimizer="adam",
        lr=3e-3,
        schedule="cosine",
        batch_size=64,
        switch=Switch(optimizer="sgd", at_fraction=0.5, lr=0.05),
    ),
    "schedule-free": Recipe(optimizer="schedulefree_adamw", lr=3e-3, batch_size=64),
    "schedule-free -> sgd switch": Recipe(
        optimizer="schedulefree_adamw",
        lr=3e-3,
        batch_size=64,
        switch=Switch(optimizer="sgd", at_fraction=0.5, lr=0.05),
    ),
}


@pytest.fixture(scope="module")
def task():
    return load_task("digits-mlp", {"hidden": [16]})


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_user_loop_with_the_built_optimizer_equals_tuners_trainer(task, name: str) -> None:
    """The same batches through ``Trainer.train_step`` and through ``optimizer.step(); scheduler.step()`` in a
    user's loop end at the same parameters: clipping, decay, warmup, switch and schedule-free modes all inside."""
    recipe, budget = RECIPES[name], TrainBudget(steps=40)
    ours = Trainer(task, recipe, budget, seed=3, device="cpu")
    batches = list(ours.batches())
    for step, micro_batches in enumerate(batches):
        ours.train_step(step, micro_batches)
    ours.optimizer.eval()

    theirs = Trainer(task, recipe, budget, seed=3, device="cpu")  # the same initial model
    model = theirs.model
    optimizer, scheduler = build(model, recipe, ours.total_steps)
    for ((inputs, targets),) in batches:  # one micro-batch a step
        loss = task.loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    optimizer.eval()
    for a, b in zip(ours.model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_the_optimizer_and_scheduler_are_torch_ones_and_plateau_takes_a_metric() -> None:
    model = torch.nn.Linear(3, 1)
    recipe = Recipe(
        optimizer="sgd",
        lr=0.1,
        schedule="plateau",
        warmup=2,
        schedule_params={"patience": 0, "factor": 0.5, "threshold": 0.0},
    )
    optimizer, scheduler = build(model, recipe, total_steps=10)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    warmup = recipe_schedule(recipe, 10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * warmup(0)) and warmup(0) < 1  # warming up
    for _ in range(3):
        scheduler.step()
    assert scheduler.get_last_lr() == [pytest.approx(0.1)]
    scheduler.step(1.0)
    scheduler.step(2.0)  # no improvement: the plateau factor halves the LR, and no step was counted
    assert scheduler.get_last_lr() == [pytest.approx(0.05)] and scheduler.last_epoch == 3
    with pytest.raises(ValueError, match="does not take a metric"):
        build(model, Recipe(optimizer="sgd", lr=0.1), total_steps=5)[1].step(1.0)


def test_the_state_round_trips(task) -> None:
    recipe = RECIPES["adam -> sgd switch"]
    model = Trainer(task, recipe, TrainBudget(steps=4), seed=0, device="cpu").model
    optimizer, _ = build(model, recipe, total_steps=4)
    inputs, targets = task.load_data().train_inputs[:8], task.load_data().train_targets[:8]
    for _ in range(3):
        optimizer.zero_grad()
        task.loss(model(inputs), targets).backward()
        optimizer.step()
    state = optimizer.state_dict()
    again = RecipeOptimizer(model, recipe, total_steps=4)
    again.load_state_dict(state)
    assert again.steps_taken == 3 and again.managed.phase.name == "sgd"  # the switch is at step 2 of 4
    assert isinstance(RecipeScheduler(again), RecipeScheduler)


def _info(**changes) -> TrialInfo:
    fields = dict(
        number=0,
        study_name="s",
        recipe=Recipe(optimizer="adam", lr=1e-3),
        params={},
        seed=1,
        device="cpu",
        budget=TrainBudget(epochs=2),
        metric="accuracy",
        direction="maximize",
    )
    fields.update(changes)
    return TrialInfo(**fields)


def test_report_prunes_on_the_pruners_word_and_on_divergence() -> None:
    trial = Trial(_info(), reporter=lambda evaluation: evaluation.step >= 3)
    trial.report(1, {"accuracy": 0.2, "loss": 2.0})
    with pytest.raises(TrialPruned, match="pruned at step 3"):
        trial.report(3, {"accuracy": 0.3, "loss": 1.5})
    assert trial.should_prune()

    diverging = Trial(_info(budget=TrainBudget(epochs=2, divergence_factor=10.0)))
    diverging.report(1, {"accuracy": 0.2, "loss": 2.0})
    with pytest.raises(TrialPruned, match="diverged at step 2: training loss 30"):
        diverging.report(2, {"accuracy": 0.2, "loss": 30.0})
    nan = Trial(_info())
    with pytest.raises(TrialPruned, match="diverged at step 1"):
        nan.report(1, {"accuracy": math.nan})
    with pytest.raises(ValueError, match="the study optimizes 'accuracy'"):
        Trial(_info()).report(1, {"loss": 1.0})
    result = Trial(_info())
    result.report(5, torch.tensor(0.75))  # a bare number (a tensor too) is the study's metric
    assert result.result().final == {"accuracy": 0.75}


def test_a_user_function_runs_seeded_and_its_failures_say_where() -> None:
    seen = []

    def train(trial: Trial) -> float:
        seen.append(torch.rand(1).item())
        trial.report(1, 0.5)
        return 0.9

    first = run_function(train, Trial(_info()))
    run_function(train, Trial(_info()))
    assert seen[0] == seen[1] and first.final == {"accuracy": 0.9} and first.status == "completed"

    def broken(trial: Trial) -> None:
        raise KeyError("column 'label'")

    with pytest.raises(UserCodeError, match=r"KeyError: \"column 'label'\" \(at test_trial.py:\d+ in broken\)"):
        run_function(broken, Trial(_info()))

    def gives_up(trial: Trial) -> None:
        trial.report(4, 0.1)
        raise TrialPruned("no better than the baseline")

    pruned = run_function(gives_up, Trial(_info()))
    assert (pruned.status, pruned.reason, pruned.final) == ("stopped", "no better than the baseline", None)


def test_a_train_function_takes_one_argument() -> None:
    check_train_function(lambda trial: None, "train: f.py:ok")
    check_train_function(lambda trial, extra=1: None, "train: f.py:ok")
    with pytest.raises(TunerError, match=r"train: f.py:two: <lambda>\(a, b\) must take one argument, the tuner.Trial"):
        check_train_function(lambda a, b: None, "train: f.py:two")
