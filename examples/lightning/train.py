"""Tune the optimizer and LR schedule of a LightningModule (an MLP on scikit-learn's 8x8 digits).

    tuner run examples/lightning/study.yaml

``train(trial)`` is an ordinary Lightning script with two additions: ``configure_optimizers`` returns the recipe's
optimizer and scheduler (``tuner.integrations.lightning.configure_optimizers``) and the Trainer gets a
``TunerCallback``, which reports every validation to the study and stops the fit when the trial is pruned.
"""

from __future__ import annotations

import logging
import warnings

import lightning
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import tuner
from tuner.integrations.lightning import TunerCallback, configure_optimizers

logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available: ..." banner per trial
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")  # a tensor dataset needs none
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)  # lightning


class DigitsClassifier(lightning.LightningModule):
    """An MLP over the 64 pixels; logs ``train_loss``, ``val_loss`` and ``val_accuracy``."""

    def __init__(self, trial: tuner.Trial, hidden: int = 64) -> None:
        super().__init__()
        self.trial = trial
        self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        # the recipe's optimizer (clipping and weight decay inside its step) and its schedule, stepped every step
        return configure_optimizers(self.trial, self)


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train y, validation x, validation y): 1400 and 397 images scaled to [0, 1]."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def train(trial: tuner.Trial) -> dict[str, float]:
    """One trial: fit for the study's epochs, validating every ``budget.eval_every`` epochs (default 1)."""
    x, y, val_x, val_y = digits()
    train_loader = DataLoader(
        TensorDataset(x, y),
        batch_size=trial.recipe.batch_size or len(x),
        shuffle=True,
        generator=torch.Generator().manual_seed(trial.seed),
    )
    val_loader = DataLoader(TensorDataset(val_x, val_y), batch_size=len(val_x))
    callback = TunerCallback(trial)
    trainer = lightning.Trainer(
        max_epochs=trial.budget.epochs or 10,
        check_val_every_n_epoch=trial.budget.eval_every or 1,
        accelerator="gpu" if trial.device.type == "cuda" else "cpu",
        devices=1,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(DigitsClassifier(trial), train_loader, val_loader)
    return callback.named(trainer.callback_metrics)  # accuracy, loss, train_loss
