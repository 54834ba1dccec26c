"""Population training: per-member stopping and divergence, grouping, fallbacks, and the engine path end to end."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch

import tuner.train.population as population
from tests.helpers import RTOL, RecordingTask, mlflow_runs, write_study
from tuner.recipe import Recipe
from tuner.tasks import SimpleTask, load_task
from tuner.train import TrainBudget, fit
from tuner.train.population import PopulationFallbackWarning, fit_population, population_cap, vmap_blocker

BUDGET = TrainBudget(steps=30, eval_every=10)


@pytest.fixture(scope="module")
def task():
    return load_task("digits-mlp", {"hidden": [16]})


def _same_run(got, want) -> None:
    assert (got.status, got.reason, got.steps_done) == (want.status, want.reason, want.steps_done)
    assert [e.step for e in got.evaluations] == [e.step for e in want.evaluations]
    for a, b in zip(got.evaluations, want.evaluations):
        assert a.metrics["accuracy"] == pytest.approx(b.metrics["accuracy"], abs=1e-6)
        assert a.metrics["loss"] == pytest.approx(b.metrics["loss"], rel=1e-4)


def test_stopped_and_diverged_members_leave_without_touching_the_others(task) -> None:
    recipes = [Recipe("sgd", 0.05), Recipe("sgd", 1e4), Recipe("sgd", 0.1), Recipe("sgd", 0.02)]
    seeds = [1, 2, 3, 4]
    calls: list[int] = []

    def stop_first(evaluation) -> bool:  # the "pruner" stops member 0 at its first evaluation
        calls.append(evaluation.step)
        return True

    results = fit_population(task, recipes, BUDGET, seeds=seeds, on_eval=[stop_first, None, None, None], device="cpu")
    assert calls == [10]
    assert results[0].status == "stopped" and results[0].steps_done == 10
    assert results[1].status == "diverged" and "training loss" in results[1].reason
    assert all(math.isfinite(e.metrics["loss"]) for r in results for e in r.evaluations)
    for index in (1, 2, 3):  # the NaN/inf member and the stopped member changed nothing for the rest
        _same_run(results[index], fit(task, recipes[index], BUDGET, seed=seeds[index], device="cpu"))
    assert results[2].status == results[3].status == "completed"


def test_stacks_keep_order_mix_rules_and_unbatched_optimizers_fall_back_with_one_warning(task) -> None:
    recipes = [
        Recipe("adam", 1e-3),
        Recipe("sgd", 0.05),
        Recipe("adafactor", 1e-2),
        Recipe("adam", 3e-3, batch_size=32),
    ]
    with pytest.warns(PopulationFallbackWarning, match="adafactor") as record:
        results = fit_population(task, recipes, BUDGET, seeds=[5, 6, 7, 8], device="cpu")
    assert len([w for w in record if issubclass(w.category, PopulationFallbackWarning)]) == 1
    # adam and sgd (full batch) share one stack, each rule its block; adafactor trains alone; batch 32 stacks alone
    assert [r.extras.get("population", 1) for r in results] == [2, 2, 1, 1]
    for recipe, seed, result in zip(recipes, [5, 6, 7, 8], results):
        _same_run(result, fit(task, recipe, BUDGET, seed=seed, device="cpu"))


def test_chunks_of_max_members_give_the_same_results(task) -> None:
    recipes = [Recipe("adam", lr) for lr in (1e-3, 2e-3, 4e-3)]
    whole = fit_population(task, recipes, BUDGET, seeds=[1, 2, 3], device="cpu")
    chunked = fit_population(task, recipes, BUDGET, seeds=[1, 2, 3], device="cpu", max_members=2)
    assert [r.extras["population"] for r in whole] == [3, 3, 3]
    assert [r.extras["population"] for r in chunked] == [2, 2, 1]
    for a, b in zip(whole, chunked):
        _same_run(a, b)


def _batchnorm_task() -> SimpleTask:
    digits = load_task("digits-mlp", {})

    def model():
        return torch.nn.Sequential(
            torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
        )

    return SimpleTask(
        name="digits-bn",
        model_fn=model,
        data_fn=digits.load_data,
        loss_fn=digits.loss,
        metrics_fn=digits.metrics_fn,
        metric="accuracy",
        direction="maximize",
    )


def test_batchnorm_falls_back_to_sequential_training() -> None:
    bn = _batchnorm_task()
    assert "BatchNorm1d" in vmap_blocker(bn.build_model())
    assert vmap_blocker(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.0))) is None
    assert "Dropout" in vmap_blocker(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)))
    recipes = [Recipe("adam", 1e-3), Recipe("adam", 1e-2)]
    with pytest.warns(PopulationFallbackWarning, match="BatchNorm1d"):
        results = fit_population(bn, recipes, BUDGET, seeds=[1, 2], device="cpu")
    for recipe, seed, result in zip(recipes, [1, 2], results):
        _same_run(result, fit(bn, recipe, BUDGET, seed=seed, device="cpu"))


# -- the ways members compute: stacked by hand (known layers), vmap (any other model); stock or user losses ------


def _members_equal_training_alone(task, recipes: list[Recipe], seeds: list[int]) -> None:
    results = fit_population(task, recipes, BUDGET, seeds=seeds, keep_params=True, device="cpu")
    for recipe, seed, result in zip(recipes, seeds, results):
        assert result.extras["population"] == len(recipes)
        alone = RecordingTask(task)
        expected = fit(alone, recipe, BUDGET, seed=seed, device="cpu")
        assert (result.status, result.steps_done) == (expected.status, expected.steps_done)
        for got, want in zip(result.evaluations, expected.evaluations, strict=True):
            assert got.metrics == pytest.approx(want.metrics, rel=1e-4, abs=1e-6)
        for name, param in alone.model.named_parameters():
            error = float((result.extras["params"][name] - param.detach()).norm() / param.detach().norm())
            assert error <= RTOL, f"{recipe.optimizer}: {name} differs by {error:.2e} (relative)"


MIXED_RECIPES = [
    Recipe("adam", 3e-3, weight_decay=1e-2, clip_norm=1.0),
    Recipe("adamw", 1e-2, schedule="cosine"),
    Recipe("adam", 1e-3, {"beta1": 0.8}, warmup=5),
]


@pytest.fixture
def no_vmap(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the vmap path ran")

    monkeypatch.setattr(population._Vmapped, "grads", fail)


def test_stacked_path_runs_known_models_and_equals_training_alone(task, no_vmap) -> None:
    _members_equal_training_alone(task, MIXED_RECIPES, [1, 2, 3])


def test_vmap_path_equals_training_alone(task, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(population.StackedNet, "of", classmethod(lambda cls, model: None))
    _members_equal_training_alone(task, MIXED_RECIPES, [1, 2, 3])


def test_layers_the_stacked_path_does_not_know_go_through_vmap() -> None:
    digits = load_task("digits-mlp", {})

    def model():
        return torch.nn.Sequential(
            torch.nn.Linear(64, 16), torch.nn.LayerNorm(16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
        )

    layer_norm = SimpleTask(
        name="digits-ln",
        model_fn=model,
        data_fn=digits.load_data,
        loss_fn=digits.loss_fn,
        metrics_fn=digits.metrics_fn,
        metric="accuracy",
        direction="maximize",
    )
    assert population.StackedNet.of(model()) is None
    _members_equal_training_alone(layer_norm, MIXED_RECIPES[:2], [5, 6])


def test_cnn_members_equal_training_alone(no_vmap) -> None:
    _members_equal_training_alone(load_task("digits-cnn", {"channels": [4, 8]}), MIXED_RECIPES[:2], [7, 8])


def test_a_user_loss_is_differentiated_by_autograd_on_the_stacked_path(no_vmap) -> None:
    digits = load_task("digits-mlp", {"hidden": [16]})

    def smoothed(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)

    def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict:
        return {"accuracy": (outputs.argmax(1) == targets).float().mean()}

    user = SimpleTask(
        name="digits-smooth",
        model_fn=digits.model_fn,
        data_fn=digits.load_data,
        loss_fn=smoothed,
        metrics_fn=metrics,
        metric="accuracy",
        direction="maximize",
    )
    assert user.population_loss is None and user.population_metrics is None
    _members_equal_training_alone(user, MIXED_RECIPES[:2], [9, 10])


def test_full_batch_members_equal_training_alone(no_vmap) -> None:
    quadratic = load_task("quadratic", {"full_batch": True, "dim": 8, "n": 256, "val_n": 64})
    recipes = [Recipe("adam", 1e-2, batch_size=None), Recipe("adam", 3e-2, batch_size=None)]
    _members_equal_training_alone(quadratic, recipes, [3, 4])


def test_population_cap_follows_free_memory(task, monkeypatch: pytest.MonkeyPatch) -> None:
    model, inputs = task.build_model(), task.load_data().train_inputs
    monkeypatch.setattr(population, "free_memory", lambda device: 1 << 40)
    large = population_cap(model, inputs, 64, torch.device("cpu"))
    monkeypatch.setattr(population, "free_memory", lambda device: 1 << 20)
    small = population_cap(model, inputs, 64, torch.device("cpu"))
    assert large > 1000 and 1 <= small < 10
    assert population_cap(model, inputs, 64, torch.device("cpu")) == small


def test_bad_arguments_name_the_counts(task) -> None:
    with pytest.raises(ValueError, match="one seed per recipe, got 2 recipes and 1 seeds"):
        fit_population(task, [Recipe("adam", 1e-3)] * 2, BUDGET, seeds=[1])


# -- the engine ------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::tuner.train.population.PopulationFallbackWarning")  # adafactor trains sequentially
def test_run_with_population_makes_ordinary_trials(workdir: Path, cli) -> None:
    path = write_study(
        workdir,
        budget={"epochs": 2, "n_trials": 6, "population": 4},
        space={"optimizers": ["adam", "sgd", "adafactor"], "schedules": ["constant", "plateau"], "batch_size": [64]},
    )
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}")
    assert len(study.trials) == 6  # 4 + 2: the second population is only as large as what is missing
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert all(t.state in finished for t in study.trials)
    for trial in study.trials:
        assert {"recipe", "seed", "reason", "duration_s", "total_steps", "population"} <= set(trial.user_attrs)
        assert trial.intermediate_values, trial.number
    assert max(t.user_attrs["population"] for t in study.trials) >= 2
    runs = [
        r for r in mlflow_runs(f"sqlite:///{workdir / 'mlflow.db'}", "tiny") if r.data.tags.get("tuner.role") == "trial"
    ]
    assert len(runs) == 6
    assert all(r.info.status == "FINISHED" and "accuracy" in r.data.metrics and "lr" in r.data.metrics for r in runs)

    result = cli("run", path, "--n-trials", "7", "--population", "3")  # resume: one more trial
    assert result.exit_code == 0, result.output
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}").trials) == 7


def test_a_first_population_prunes_among_peers_and_pruned_members_keep_their_last_value(workdir: Path, cli) -> None:
    path = write_study(
        workdir,
        budget={"epochs": 3, "n_trials": 8, "population": 8},
        pruner="median",
        space={"optimizers": ["adam", "sgd"], "schedules": ["constant"], "batch_size": [64]},
    )
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}").trials
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "nothing had completed, yet members below their peers' median stop"
    for trial in trials:  # every report (one per epoch) was written before the trial was told
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert len(trial.intermediate_values) == 3, trial.number
        assert trial.intermediate_values, trial.number
    for trial in pruned:
        assert trial.value == trial.intermediate_values[max(trial.intermediate_values)]


def test_bad_population_exits_2_naming_the_field(workdir: Path, cli) -> None:
    path = write_study(workdir, budget={"epochs": 1, "n_trials": 2, "population": 0})
    result = cli("run", path)
    assert result.exit_code == 2
    assert "budget.population" in result.output and "0" in result.output
    assert not (workdir / "tuner.db").exists()
