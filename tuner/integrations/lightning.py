"""Lightning: a ``train(trial)`` function that tunes a ``LightningModule`` (``pip install 'tuner[lightning]'``).

In the module, build the recipe's optimizer and scheduler::

    from tuner.integrations.lightning import TunerCallback, configure_optimizers

    class Model(lightning.LightningModule):
        def __init__(self, trial):
            super().__init__()
            self.trial = trial
            ...

        def validation_step(self, batch, batch_idx):
            ...
            self.log("val_loss", loss)
            self.log("val_accuracy", accuracy)

        def configure_optimizers(self):
            return configure_optimizers(self.trial, self)

and in the train function, hand the Trainer the callback::

    def train(trial):
        callback = TunerCallback(trial)
        trainer = lightning.Trainer(max_epochs=trial.budget.epochs, callbacks=[callback], ...)
        trainer.fit(Model(trial), train_loader, val_loader)
        return callback.named(trainer.callback_metrics)  # val_accuracy as accuracy, val_loss as loss, ...

After each validation of ``trainer.fit`` the callback reports ``trainer.callback_metrics`` at
``trainer.global_step`` through ``trial.report`` (named by the rule of ``tuner.integrations._common``: numbers only,
``val_`` / ``val/`` dropped -- ``val_accuracy`` is reported as ``accuracy``; ``monitor=`` names the logged metric
that is the study's when the names differ), feeds the validation loss to a plateau schedule, and lets
``tuner.TrialPruned`` propagate out of ``trainer.fit`` when the pruner stops the trial (Lightning's ``fit`` calls the
callbacks' ``on_exception`` and re-raises it), so the study records the trial as pruned.

Gradient clipping is the recipe's, inside ``optimizer.step()``: leave the Trainer's ``gradient_clip_val`` unset (the
callback warns when it is set: the gradients would be clipped twice, and the trial would not train the recipe).
A schedule-free recipe validates its averaged weights: the callback switches the optimizer to ``eval()`` before each
validation and at the end of the fit, and back to ``train()`` before each training batch.

Imports ``lightning`` (the ``lightning`` package, not the older ``pytorch_lightning``, whose Trainer does not take
``lightning`` callbacks); without it, importing this module raises ``MissingExtraError`` naming the extra.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

from tuner.errors import TrialPruned, TunerError
from tuner.integrations._common import as_report, feed_plateau, missing_extra, validation_loss
from tuner.optim.torch_api import RecipeOptimizer

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - exercised where the extra is missing
    raise missing_extra("lightning", "lightning", error) from error

if TYPE_CHECKING:
    from tuner.train.trial import Trial

WHERE = "TunerCallback (tuner.integrations.lightning)"

PREFIXES = ("val_", "val/")
"""The validation prefixes dropped from logged names (``val_accuracy`` is reported as ``accuracy``)."""


class TunerCallback(pl.Callback):
    """Reports each validation of ``trainer.fit`` to ``trial`` and stops the fit when the trial is pruned.

    Args:
        trial: the ``tuner.Trial`` the train function received.
        monitor: the logged metric that is the study's metric, when its name is neither the study's metric nor it
            behind ``val_`` / ``val/`` (e.g. ``"val_acc"`` for a study of ``accuracy``).
        loss_monitor: the logged validation loss a plateau schedule follows (default: ``val_loss``, ``val/loss``,
            else the reported ``loss``).

    Reports only during ``trainer.fit`` (not its sanity check, not ``trainer.validate``). With several processes
    (DDP), rank 0 reports and its decision is broadcast, so every rank stops together.
    """

    def __init__(self, trial: Trial, monitor: Optional[str] = None, loss_monitor: Optional[str] = None) -> None:
        super().__init__()
        self.trial, self.monitor, self.loss_monitor = trial, monitor, loss_monitor
        self.reports = 0

    def named(self, logged: Mapping[str, Any]) -> dict[str, float]:
        """``logged`` metrics named as this callback reports them (numbers only, the prefix dropped, ``monitor``
        under the study's metric): what the train function can return."""
        return as_report(logged, self.trial.metric, PREFIXES, self.monitor, WHERE)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Warn when the Trainer clips gradients itself (the recipe clips inside ``optimizer.step()``)."""
        if trainer.gradient_clip_val:
            warnings.warn(
                f"Trainer(gradient_clip_val={trainer.gradient_clip_val}) clips the gradients before the recipe's "
                f"optimizer, which clips them as the recipe says: leave gradient_clip_val unset when tuning",
                UserWarning,
                stacklevel=2,
            )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Train a schedule-free optimizer's training weights (every other recipe: nothing to do). Switched here,
        not at the end of a validation, so a checkpoint saved then holds the averaged weights."""
        _optimizers_to(trainer, "train")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validate a schedule-free optimizer's averaged weights (as tuner's trainer and the HF Trainer do)."""
        _optimizers_to(trainer, "eval")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Leave a schedule-free optimizer's averaged weights in the model (what is saved and tested)."""
        _optimizers_to(trainer, "eval")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report ``trainer.callback_metrics`` at ``trainer.global_step``; raise ``TrialPruned`` when pruned."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        logged = dict(trainer.callback_metrics)
        report = self.named(logged)
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        loss = validation_loss(logged, report, PREFIXES, self.loss_monitor)
        feed_plateau(schedulers, self.trial.recipe.schedule, loss, WHERE)
        pruned: Optional[TrialPruned] = None
        if trainer.is_global_zero:
            try:
                self.trial.report(trainer.global_step, report)
            except TrialPruned as stop:
                pruned = stop
            self.reports += 1
        reason = trainer.strategy.broadcast(None if pruned is None else str(pruned), src=0)
        if reason is not None:
            raise pruned or TrialPruned(reason)


def _optimizers_to(trainer: pl.Trainer, mode: str) -> None:
    """``train()`` or ``eval()`` on the Trainer's recipe optimizers (schedule-free ones move the weights)."""
    for optimizer in trainer.optimizers:
        if isinstance(optimizer, RecipeOptimizer):
            getattr(optimizer, mode)()


def configure_optimizers(trial: Trial, module: pl.LightningModule, total_steps: Optional[int] = None) -> dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns for the recipe: its ``RecipeOptimizer`` and its
    ``RecipeScheduler`` stepped after every optimizer step (``trial.build(module, total_steps)``).

    Args:
        trial: the trial.
        module: the LightningModule (its parameters are optimized).
        total_steps: the run's length in optimizer steps; default: ``trainer.estimated_stepping_batches``.
    """
    if total_steps is None:
        estimated = module.trainer.estimated_stepping_batches
        if estimated == float("inf"):
            raise TunerError(
                "configure_optimizers: the Trainer has no max_steps or max_epochs, so the run's length is unknown: "
                "set one, or pass total_steps"
            )
        total_steps = int(estimated)
    optimizer, scheduler = trial.build(module, total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
