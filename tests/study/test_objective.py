"""The value says what it is: ``budget.objective: final`` (the default: the last evaluation, what a rerun of the
recipe ends with) or ``best`` (the best evaluation, with those weights restored), recorded and shown."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import mlflow_runs, write_study
from tuner.recipe import Recipe
from tuner.study.prepare import prepare
from tuner.study.runner import RunOptions, run_study
from tuner.tasks import load_task
from tuner.train import TrainBudget, Trainer, fit, fit_population

# a noisy task and a high LR: evaluations go up and down, so final and best differ
NOISY = Recipe(optimizer="sgd", lr=0.9, batch_size=16, schedule="constant")


@pytest.fixture(scope="module")
def task():
    return load_task("digits-mlp", {"hidden": [16]})


def _evaluate(task, model) -> float:
    data = task.load_data()
    with torch.no_grad():
        return task.metrics(model(data.val_inputs), data.val_targets)["accuracy"]


def test_final_is_the_last_evaluation_and_best_restores_the_best_weights(task) -> None:
    budget = TrainBudget(epochs=6)
    final = fit(task, NOISY, budget, seed=1, device="cpu")
    assert final.objective == "final" and final.counted == final.last.metrics
    best_budget = TrainBudget(epochs=6, objective="best")
    trainer = Trainer(task, NOISY, best_budget, seed=1, device="cpu")
    best = trainer.run()
    assert best.counted == best.best.metrics
    assert final.last.metrics["accuracy"] != best.best.metrics["accuracy"]  # the case the issue is about
    trainer.model.eval()
    assert _evaluate(task, trainer.model) == pytest.approx(best.best.metrics["accuracy"])  # the model agrees


def test_a_population_member_counts_and_keeps_the_same(task) -> None:
    budget = TrainBudget(epochs=4, objective="best")
    members = fit_population(task, [NOISY, NOISY], budget, seeds=[1, 2], device="cpu", keep_params=True)
    for member in members:
        assert member.objective == "best" and member.counted == member.best.metrics
        model = task.build_model()
        model.load_state_dict(member.extras["params"])  # the weights kept are the best evaluation's
        model.eval()
        assert _evaluate(task, model) == pytest.approx(member.best.metrics["accuracy"], abs=1e-6)


@pytest.mark.parametrize("objective", ["final", "best"])
def test_the_study_value_is_the_objective_and_says_so(workdir: Path, cli, objective: str) -> None:
    path = write_study(
        workdir,
        budget={"epochs": 5, "n_trials": 2, "objective": objective},
        space={"optimizers": {"sgd": {"lr": 0.9}}, "schedules": ["constant"], "batch_size": [16]},
    )
    study = run_study(prepare(path), RunOptions(n_trials=2))
    for trial in study.trials:
        values = [v for _, v in sorted(trial.intermediate_values.items())]
        assert trial.value == pytest.approx(values[-1] if objective == "final" else max(values))
    assert study.user_attrs["objective"] == objective
    runs = [
        r for r in mlflow_runs(f"sqlite:///{workdir}/mlflow.db", "tiny") if r.data.tags.get("tuner.role") == "trial"
    ]
    assert {r.data.tags["tuner.objective"] for r in runs} == {f"{objective} accuracy"}
    assert f"objective: {objective}" in cli("best", "tiny").output
    assert f"accuracy ({objective})" in cli("show", "tiny").output
