"""Hugging Face: a ``train(trial)`` function that tunes a ``transformers.Trainer`` (``pip install 'tuner[hf]'``)::

    from tuner.integrations.hf import TunerCallback, optimizers

    def train(trial):
        model = ...to(trial.device)
        args = TrainingArguments(
            output_dir=..., max_steps=trial.budget.steps, eval_strategy="steps", eval_steps=...,
            max_grad_norm=0, seed=trial.seed, use_cpu=trial.device.type != "cuda", report_to=[], save_strategy="no",
        )
        callback = TunerCallback(trial)
        trainer = Trainer(
            model=model, args=args, train_dataset=..., eval_dataset=..., compute_metrics=...,
            optimizers=optimizers(trial, model, args.max_steps), callbacks=[callback],
        )
        trainer.train()
        return callback.named(trainer.evaluate())  # eval_accuracy as accuracy, eval_loss as loss, ...

Each evaluation during ``trainer.train()`` reaches ``on_evaluate``, which reports the metrics at
``state.global_step`` through ``trial.report`` (numbers only, ``eval_`` dropped: ``eval_accuracy`` is reported as
``accuracy``, ``eval_loss`` as ``loss``; ``monitor=`` names the metric that is the study's when the names differ;
the timing statistics ``eval_runtime``, ``eval_*_per_second`` are left out),
feeds the validation loss to a plateau schedule, and lets ``tuner.TrialPruned`` propagate out of
``trainer.train()`` when the pruner stops the trial (the Trainer calls callbacks without catching what they raise),
so the study records the trial as pruned.

``optimizers`` builds the recipe's ``RecipeOptimizer`` and ``RecipeScheduler`` for ``Trainer(optimizers=...)``; the
Trainer's own ``learning_rate``, ``weight_decay``, ``lr_scheduler_type``, ``warmup_*`` and ``optim`` are then unused.
accelerate wraps the optimizer (``AcceleratedOptimizer`` forwards ``step``, ``zero_grad``, ``param_groups`` and
``state_dict``); the Trainer steps the scheduler after every optimizer step. Gradient clipping is the recipe's,
inside ``optimizer.step()``: set ``TrainingArguments(max_grad_norm=0)`` (its default, 1.0, clips every run before the
recipe's optimizer sees the gradients; the callback warns). Pass ``seed=trial.seed``: the Trainer seeds torch with
``args.seed`` (42 by default) when it is created.

Imports ``transformers``; without it, importing this module raises ``MissingExtraError`` naming the extra.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

import torch

from tuner.errors import TrialPruned
from tuner.integrations._common import as_report, feed_plateau, missing_extra, validation_loss
from tuner.optim.torch_api import RecipeOptimizer

try:
    import transformers
except ImportError as error:  # pragma: no cover - exercised where the extra is missing
    raise missing_extra("hf", "transformers", error) from error

if TYPE_CHECKING:
    from tuner.train.trial import Trial

WHERE = "TunerCallback (tuner.integrations.hf)"

PREFIXES = ("eval_",)
"""The evaluation prefix dropped from metric names (``eval_accuracy`` is reported as ``accuracy``)."""

SPEED_SUFFIXES = ("_runtime", "_per_second", "_preparation_time")
"""The Trainer's timing statistics (``eval_runtime``, ``eval_samples_per_second``, ...): not reported."""


class TunerCallback(transformers.TrainerCallback):
    """Reports each evaluation of ``trainer.train()`` to ``trial`` and stops training when the trial is pruned.

    Args:
        trial: the ``tuner.Trial`` the train function received.
        monitor: the metric that is the study's metric when its name is neither the study's metric nor it behind
            ``eval_`` (e.g. ``"eval_acc"`` for a study of ``accuracy``).
        loss_monitor: the metric a plateau schedule follows (default: ``eval_loss``, else the reported ``loss``).

    Reports only during ``trainer.train()`` (a ``trainer.evaluate()`` after it is not reported). With several
    processes, process 0 reports and its decision is broadcast (accelerate), so every process stops together.
    """

    def __init__(self, trial: Trial, monitor: Optional[str] = None, loss_monitor: Optional[str] = None) -> None:
        self.trial, self.monitor, self.loss_monitor = trial, monitor, loss_monitor
        self.training = False
        self.reports = 0

    def named(self, logged: Mapping[str, Any]) -> dict[str, float]:
        """``logged`` metrics named as this callback reports them (numbers only, ``eval_`` dropped, ``monitor``
        under the study's metric, the timing statistics left out): what the train function can return."""
        model_metrics = {name: value for name, value in logged.items() if not name.endswith(SPEED_SUFFIXES)}
        return as_report(model_metrics, self.trial.metric, PREFIXES, self.monitor, WHERE)

    def on_train_begin(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Start reporting; warn when the Trainer clips gradients itself (the recipe clips in its optimizer)."""
        self.training = True
        optimizer = kwargs.get("optimizer")
        recipe_optimizer = isinstance(optimizer, RecipeOptimizer) or isinstance(
            getattr(optimizer, "optimizer", None), RecipeOptimizer
        )
        if recipe_optimizer and args.max_grad_norm and args.max_grad_norm > 0:
            warnings.warn(
                f"TrainingArguments(max_grad_norm={args.max_grad_norm}) clips the gradients before the recipe's "
                f"optimizer, which clips them as the recipe says: set max_grad_norm=0 when tuning",
                UserWarning,
                stacklevel=2,
            )

    def on_train_end(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Stop reporting (evaluations after training are the train function's to return)."""
        self.training = False

    def on_evaluate(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        metrics: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        """Report ``metrics`` at ``state.global_step``; raise ``TrialPruned`` when the trial is pruned."""
        if not self.training or metrics is None:
            return
        report = self.named(metrics)
        loss = validation_loss(metrics, report, PREFIXES, self.loss_monitor)
        feed_plateau([kwargs.get("lr_scheduler")], self.trial.recipe.schedule, loss, WHERE)
        pruned: Optional[TrialPruned] = None
        if state.is_world_process_zero:
            try:
                self.trial.report(state.global_step, report)
            except TrialPruned as stop:
                pruned = stop
            self.reports += 1
        reason = None if pruned is None else str(pruned)
        if args.world_size > 1:
            from accelerate.utils import broadcast_object_list

            reason = broadcast_object_list([reason], from_process=0)[0]
        if reason is not None:
            self.training = False  # the Trainer does not call on_train_end when a callback raises
            raise pruned or TrialPruned(reason)


def optimizers(
    trial: Trial, model: torch.nn.Module, total_steps: int
) -> tuple[RecipeOptimizer, torch.optim.lr_scheduler.LRScheduler]:
    """``(optimizer, scheduler)`` for ``Trainer(optimizers=...)``: ``trial.build(model, total_steps)``, the recipe's
    ``RecipeOptimizer`` and ``RecipeScheduler`` (the Trainer steps it after every optimizer step).

    Args:
        trial: the trial.
        model: the model, already on its device (``model.to(trial.device)``), as the Trainer requires.
        total_steps: the run's length in optimizer steps (``args.max_steps``, or epochs times the optimizer steps
            per epoch).
    """
    optimizer, scheduler = trial.build(model, total_steps)
    return optimizer, scheduler
