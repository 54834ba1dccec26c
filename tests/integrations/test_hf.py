"""tuner.integrations.hf, through examples/hf: the study runs the example's train function for real (a tiny BERT,
a Hugging Face Trainer over accelerate, the recipe's optimizer and scheduler, TunerCallback reporting)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.integrations import example_module, make_trial, require
from tuner.errors import TrialPruned
from tuner.optim.torch_api import RecipeOptimizer, RecipeScheduler
from tuner.recipe import Recipe
from tuner.schedules import recipe_schedule
from tuner.study.prepare import prepare
from tuner.study.runner import RunOptions, run_study
from tuner.train.trial import run_function

transformers = require("transformers", "hf")
require("accelerate", "hf")
from tuner.integrations.hf import TunerCallback, optimizers  # noqa: E402 - after the extra is known to be there


def _trials(study):
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def _run(path: Path, n_trials: int, enqueue: tuple[dict, ...] = ()):
    prepared = prepare(path, tracking_uri="none")
    if enqueue:
        study = run_study(prepared, RunOptions(n_trials=0))  # creates the study, trains nothing
        for params in enqueue:
            study.enqueue_trial(params)
    return run_study(prepared, RunOptions(n_trials=n_trials))


def test_the_example_study_completes_its_trials_with_a_report_at_each_evaluation(example_study) -> None:
    space = {"optimizers": ["adam", "momentum"], "schedules": ["constant", "linear"], "batch_size": [64]}
    study = _run(example_study("hf", budget={"steps": 60, "eval_every": 30, "n_trials": 2}, space=space), 2)
    trials = _trials(study)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        assert sorted(trial.intermediate_values) == [30, 60]  # state.global_step at each evaluation
        assert trial.value == pytest.approx(trial.intermediate_values[60])  # trainer.evaluate() after training
        assert trial.user_attrs["reason"] == "completed" and trial.user_attrs["total_steps"] == 60
        assert 0.0 <= trial.value <= 1.0


def test_a_pruned_trial_stops_training_and_is_recorded_as_pruned(example_study) -> None:
    space = {"optimizers": {"adam": {"lr": 0.01}, "sgd": {"lr": 1.0e-5}}, "schedules": ["constant"], "batch_size": [64]}
    path = example_study(
        "hf",
        budget={"steps": 60, "eval_every": 30, "n_trials": 2},
        space=space,
        pruner={"name": "median", "options": {"n_startup_trials": 1}},
    )
    study = _run(path, 2, enqueue=({"optimizer": "adam"}, {"optimizer": "sgd"}))  # a good recipe, then a hopeless one
    good, bad = _trials(study)
    assert good.state.name == "COMPLETE" and sorted(good.intermediate_values) == [30, 60]
    assert bad.state.name == "PRUNED" and bad.user_attrs["reason"] == "pruned at step 30"
    assert list(bad.intermediate_values) == [30]  # training stopped at its first evaluation
    assert bad.value < good.value


def _trainer(trial, steps: int, **arguments):
    example = example_module("hf")
    tokenizer = example.WordTokenizer(example.PRAISE + example.COMPLAINT + example.FILLER)
    model = example.tiny_bert(len(tokenizer.vocab))
    args = transformers.TrainingArguments(
        output_dir=str(Path.cwd() / "out"),
        max_steps=steps,
        per_device_train_batch_size=64,
        eval_strategy="steps",
        eval_steps=30,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=trial.seed,
        **arguments,
    )
    callback = TunerCallback(trial)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=example.ReviewDataset(example.reviews(512, seed=0), tokenizer),
        eval_dataset=example.ReviewDataset(example.reviews(128, seed=1), tokenizer),
        compute_metrics=example.accuracy,
        optimizers=optimizers(trial, model, steps),
        callbacks=[callback],
    )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    return trainer, callback


def test_trial_pruned_raised_by_the_callback_propagates_out_of_train_under_accelerate(workdir) -> None:
    """What the study relies on: the Trainer calls callbacks without catching what they raise; and the recipe's
    optimizer works inside accelerate's AcceleratedOptimizer, stepped by the Trainer with its scheduler."""
    heard = []
    recipe = Recipe(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=10, clip_norm=1.0, batch_size=64)
    trial = make_trial(recipe, lambda e: heard.append(e) or e.step >= 60, steps=120)
    trainer, callback = _trainer(trial, steps=120)  # max_grad_norm left at its default, 1.0
    clipping = pytest.warns(UserWarning, match=r"TrainingArguments\(max_grad_norm=1.0\) clips the gradients before")
    with clipping, pytest.raises(TrialPruned, match="pruned at step 60"):
        trainer.train()
    assert [e.step for e in heard] == [30, 60] and trainer.state.global_step == 60
    assert set(heard[0].metrics) == {"accuracy", "loss", "epoch"}  # eval_ dropped, the timing statistics left out
    wrapped = trainer.optimizer
    assert type(wrapped).__name__ == "AcceleratedOptimizer" and isinstance(wrapped.optimizer, RecipeOptimizer)
    assert wrapped.optimizer.steps_taken == 60
    assert isinstance(trainer.lr_scheduler, RecipeScheduler) and trainer.lr_scheduler.last_epoch == 60
    peak_times_schedule = recipe.lr * recipe_schedule(recipe, 120)(60)
    assert math.isclose(wrapped.param_groups[0]["lr"], peak_times_schedule, rel_tol=1e-9)
    assert heard[1].lr == pytest.approx(peak_times_schedule)  # the LR the trial recorded is the one that trained
    # an evaluation after train() is the function's to return, not a report
    assert callback.named(trainer.evaluate()).keys() == {"accuracy", "loss", "epoch"} and len(heard) == 2


def test_a_plateau_schedule_hears_every_evaluation_loss(monkeypatch) -> None:
    heard: list[float] = []
    report = RecipeScheduler.report
    monkeypatch.setattr(RecipeScheduler, "report", lambda self, metric: (heard.append(metric), report(self, metric)))
    params = {"factor": 0.5, "patience": 0, "cooldown": 0, "min_factor": 0.0, "threshold": 0.99}
    recipe = Recipe(optimizer="adam", lr=3e-3, schedule="plateau", schedule_params=params, batch_size=64)
    result = run_function(example_module("hf").train, make_trial(recipe, steps=90, eval_every=30))
    assert result.status == "completed" and [e.step for e in result.evaluations] == [30, 60, 90]
    assert heard == pytest.approx([e.metrics["loss"] for e in result.evaluations])  # eval_loss, each evaluation
    # the first loss is the best so far; the one at 60 did not fall 100-fold: the LR of the last 30 steps is halved
    assert result.lr_curve[-1][1] == pytest.approx(3e-3 * 0.5)
