"""tuner.integrations.lightning, through examples/lightning: the study runs the example's train function for real
(Lightning's Trainer, the recipe's optimizer and scheduler from configure_optimizers, TunerCallback reporting)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.data import DataLoader, TensorDataset

from tests.integrations import example_module, make_trial, require
from tuner.errors import TrialPruned
from tuner.optim.torch_api import RecipeOptimizer, RecipeScheduler
from tuner.recipe import Recipe
from tuner.study.prepare import prepare
from tuner.study.runner import RunOptions, run_study
from tuner.train.trial import run_function

lightning = require("lightning", "lightning")
pytestmark = pytest.mark.filterwarnings(r"ignore:.*isinstance\(treespec, LeafSpec\):FutureWarning")  # lightning 2.6
from tuner.integrations.lightning import TunerCallback  # noqa: E402 - after the extra is known to be there

STEPS_PER_EPOCH = 22  # 1400 training images in batches of 64


def _trials(study):
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def _run(path: Path, n_trials: int, enqueue: tuple[dict, ...] = ()):
    prepared = prepare(path, tracking_uri="none")
    if enqueue:
        study = run_study(prepared, RunOptions(n_trials=0))  # creates the study, trains nothing
        for params in enqueue:
            study.enqueue_trial(params)
    return run_study(prepared, RunOptions(n_trials=n_trials))


def test_the_example_study_completes_its_trials_with_a_report_at_each_validation(example_study) -> None:
    space = {"optimizers": ["adam", "momentum"], "schedules": ["constant", "cosine"], "batch_size": [64]}
    study = _run(example_study("lightning", budget={"epochs": 2, "n_trials": 2}, space=space), 2)
    trials = _trials(study)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        assert sorted(trial.intermediate_values) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]  # trainer.global_step
        assert trial.value == pytest.approx(trial.intermediate_values[2 * STEPS_PER_EPOCH])  # the returned accuracy
        assert trial.user_attrs["reason"] == "completed"
        assert trial.user_attrs["total_steps"] == 2 * STEPS_PER_EPOCH  # trainer.estimated_stepping_batches
        assert 0.0 <= trial.value <= 1.0


def test_a_pruned_trial_stops_the_fit_and_is_recorded_as_pruned(example_study) -> None:
    space = {"optimizers": {"adam": {"lr": 0.01}, "sgd": {"lr": 1.0e-5}}, "schedules": ["constant"], "batch_size": [64]}
    path = example_study(
        "lightning",
        budget={"epochs": 2, "n_trials": 2},
        space=space,
        pruner={"name": "median", "options": {"n_startup_trials": 1}},
    )
    study = _run(path, 2, enqueue=({"optimizer": "adam"}, {"optimizer": "sgd"}))  # a good recipe, then a hopeless one
    good, bad = _trials(study)
    assert good.state.name == "COMPLETE" and len(good.intermediate_values) == 2
    assert bad.state.name == "PRUNED" and bad.user_attrs["reason"] == f"pruned at step {STEPS_PER_EPOCH}"
    assert list(bad.intermediate_values) == [STEPS_PER_EPOCH]  # the fit stopped at its first validation
    assert bad.value == pytest.approx(bad.intermediate_values[STEPS_PER_EPOCH]) and bad.value < good.value


def _fit_parts(trial, epochs: int, **trainer_options):
    example = example_module("lightning")
    x, y, val_x, val_y = example.digits()
    loaders = DataLoader(TensorDataset(x, y), batch_size=64), DataLoader(TensorDataset(val_x, val_y), batch_size=397)
    callback = TunerCallback(trial)
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_options,
    )
    return trainer, example.DigitsClassifier(trial), loaders


def test_trial_pruned_raised_by_the_callback_propagates_out_of_fit() -> None:
    """What the study relies on: Lightning's fit calls on_exception and re-raises whatever a callback raised."""
    heard = []
    trial = make_trial(Recipe(optimizer="adam", lr=3e-3, batch_size=64), lambda e: heard.append(e) or e.step >= 44)
    trainer, model, loaders = _fit_parts(trial, epochs=4, num_sanity_val_steps=1, gradient_clip_val=1.0)
    clipping = pytest.warns(UserWarning, match=r"Trainer\(gradient_clip_val=1.0\) clips the gradients before")
    with clipping, pytest.raises(TrialPruned, match="pruned at step 44"):
        trainer.fit(model, *loaders)
    assert [e.step for e in heard] == [22, 44]  # the sanity check is not reported
    assert set(heard[0].metrics) == {"accuracy", "loss", "train_loss"}  # val_ dropped; train_loss kept
    assert trainer.global_step == 44 and trainer.state.status == "interrupted" and trainer.current_epoch == 1
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, RecipeOptimizer) and optimizer.steps_taken == 44
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, RecipeScheduler)
    assert trainer.lr_scheduler_configs[0].interval == "step"


def test_a_plateau_schedule_hears_every_validation_loss(monkeypatch) -> None:
    heard: list[float] = []
    report = RecipeScheduler.report
    monkeypatch.setattr(RecipeScheduler, "report", lambda self, metric: (heard.append(metric), report(self, metric)))
    params = {"factor": 0.5, "patience": 0, "cooldown": 0, "min_factor": 0.0, "threshold": 0.99}
    recipe = Recipe(optimizer="momentum", lr=0.05, schedule="plateau", schedule_params=params, batch_size=64)
    trial = make_trial(recipe, epochs=3)
    result = run_function(example_module("lightning").train, trial)
    assert result.status == "completed" and len(result.evaluations) == 3
    assert heard == pytest.approx([e.metrics["loss"] for e in result.evaluations])  # val_loss, each validation
    assert result.lr_curve[-1][1] < 0.05  # the loss never falls 100-fold: cut after each validation


def test_a_schedule_free_recipe_trains_on_its_training_weights_and_validates_on_its_averaged_ones() -> None:
    modes: list[tuple[str, bool]] = []

    class Modes(lightning.Callback):
        def on_train_batch_end(self, trainer, *args):
            modes.append(("train", _train_mode(trainer)))

        def on_validation_epoch_start(self, trainer, *args):
            modes.append(("validate", _train_mode(trainer)))

    def _train_mode(trainer) -> bool:
        (inner,) = trainer.optimizers[0].managed.torch_optimizers
        return inner.param_groups[0]["train_mode"]

    trial = make_trial(Recipe(optimizer="schedulefree_adamw", lr=3e-3, batch_size=64), epochs=2)
    trainer, model, loaders = _fit_parts(trial, epochs=2, num_sanity_val_steps=0)
    trainer.callbacks.append(Modes())
    trainer.fit(model, *loaders)
    assert sorted(set(modes)) == [("train", True), ("validate", False)]  # eval() before each validation only
    assert [m for m, _ in modes].count("validate") == 2 and modes[STEPS_PER_EPOCH + 1] == ("train", True)
    assert _train_mode(trainer) is False  # the fit ends on the averaged weights
    assert all(e.metrics["accuracy"] > 0.5 for e in trial.result().evaluations)
