"""The LR range test: an exponential LR sweep over a short run, a smoothed loss curve, and a suggestion.

One run per optimizer (its catalog defaults, constant schedule, no weight decay): the LR grows
geometrically from ``lr_start`` to ``lr_end`` over ``steps`` optimizer steps while the training loss is
recorded, and the sweep stops early when the loss diverges. Training uses the trainer's own run (same
model building, ``build_optimizer``, mini-batching and seeding as ``tuner.train.fit``); the LR is driven
through the ``ManagedOptimizer``'s multiplier, so companions (muon's AdamW part) follow it too.

The suggestion is made to survive the two known failures of LR finders:

* **an early spike** (a few huge losses in the first steps) fools the steepest-slope rule and a
  divergence check relative to the first loss. Here every curve is median-filtered before anything
  is read from it, the divergence check waits for ``min_steps``, and the reference level is the median
  of the first tenth of the sweep, not the first value;
* **returning nothing** when the loss never decreases or is flat. Here there is always an answer:
  the knee of the valley when the loss fell clearly, the LR of the lowest loss otherwise, each with a
  ``note`` saying which rule applied.

Rule: with ``s`` the smoothed loss, ``s_min`` its minimum at ``lr_min_loss`` and ``drop`` the fall from the
start level, the suggestion is the first LR where ``s`` is within ``KNEE`` of ``drop`` above ``s_min`` — the
entrance of the valley, stable under noise in its flat bottom — and the safe range is
``[suggestion / 10, max(lr_min_loss, 3 * suggestion)]``: past the lowest loss, training gets worse.

When the sweep stopped on divergence at LR ``d``, nothing at or above ``d`` is proposed: the range's high and the
suggestion are capped at the last LR of the sweep before ``d`` (and the low at the suggestion), and the note says so.
A sweep that diverged at its very first LR suggests a tenth of it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

from tuner.recipe import Recipe
from tuner.train.progress import TrainBudget

KNEE = 0.1  # the valley starts where the smoothed loss is within 10% of the total drop from its minimum
MEDIAN_WINDOW = 5
MEAN_WINDOW = 5
DIVERGENCE_FACTOR = 4.0


@dataclass(frozen=True)
class SweepConfig:
    """The sweep: ``steps`` optimizer steps from ``lr_start`` to ``lr_end`` (geometric)."""

    lr_start: float = 1e-6
    lr_end: float = 10.0
    steps: int = 100
    divergence_factor: float = DIVERGENCE_FACTOR

    def __post_init__(self) -> None:
        if not 0 < self.lr_start < self.lr_end:
            raise ValueError(f"need 0 < lr_start < lr_end, got lr_start={self.lr_start}, lr_end={self.lr_end}")
        if self.steps < 10:
            raise ValueError(f"steps must be >= 10, got steps={self.steps}")
        if not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1, got divergence_factor={self.divergence_factor}")

    def lrs(self) -> list[float]:
        """The sweep's LR at each step: geometric from ``lr_start`` to ``lr_end``."""
        ratio = self.lr_end / self.lr_start
        return [self.lr_start * ratio ** (i / (self.steps - 1)) for i in range(self.steps)]


@dataclass(frozen=True)
class Suggestion:
    """The suggested LR, the safe range around it and which rule produced it."""

    lr: float
    low: float
    high: float
    lr_min_loss: float
    note: str


@dataclass(frozen=True)
class LRFinding:
    """The result of one optimizer's range test."""

    optimizer: str
    batch_size: Optional[int]
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stopped: str
    suggestion: Suggestion
    extras: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # of the sweep's training

    def summary(self) -> dict[str, Any]:
        """The suggestion as plain data (for study user attrs and MLflow), with what the sweep cost: its optimizer
        steps and seconds (a study's compute counts them)."""
        return {
            "optimizer": self.optimizer,
            "batch_size": self.batch_size,
            **asdict(self.suggestion),
            "stopped": self.stopped,
            "steps": len(self.losses),
            "seconds": round(self.seconds, 3),
        }


# -- the suggestion (pure) ------------------------------------------------------------------------


def smooth(losses: Sequence[float]) -> list[float]:
    """A centered running median (kills isolated spikes) followed by a centered running mean (noise); no lag."""
    medians = _centered(losses, MEDIAN_WINDOW, statistics.median)
    return _centered(medians, MEAN_WINDOW, statistics.fmean)


def _centered(values: Sequence[float], window: int, reduce) -> list[float]:
    half = window // 2
    return [reduce(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def suggest(lrs: Sequence[float], losses: Sequence[float], diverged_at: Optional[float] = None) -> Suggestion:
    """The suggested LR and safe range from a sweep's (lr, loss) points; never empty.

    ``losses`` may be shorter than ``lrs`` (a sweep stopped early) and may end with non-finite values.
    ``diverged_at``: the LR at which the sweep stopped on divergence (a non-finite loss counts as divergence at its
    LR without it); the suggestion and the whole range then lie strictly below it (module docstring).
    """
    finite = _finite_prefix(losses)
    if len(finite) < len(losses):
        first_bad = lrs[len(finite)]
        diverged_at = first_bad if diverged_at is None else min(diverged_at, first_bad)
    return _below_divergence(_suggest(lrs, finite), lrs, diverged_at)


def _suggest(lrs: Sequence[float], finite: list[float]) -> Suggestion:
    if not finite:
        return _fallback(
            lrs[0] / 10, lrs[0] / 10, "the loss was not finite at the first step; the sweep started too high"
        )
    s = smooth(finite)
    i_min = min(range(len(s)), key=s.__getitem__)
    start = statistics.median(finite[: max(1, len(finite) // 10)])
    drop = start - s[i_min]
    noise = _noise(finite)
    if i_min == 0 or drop <= max(3 * noise, 1e-3 * abs(start)):
        return _fallback(lrs[i_min] / 10, lrs[i_min], "the loss barely fell; suggestion = LR of the lowest loss / 10")
    knee = next(i for i in range(i_min + 1) if s[i] <= s[i_min] + KNEE * drop)
    lr = lrs[knee]
    return Suggestion(
        lr=lr,
        low=lr / 10,
        high=max(lrs[i_min], 3 * lr),
        lr_min_loss=lrs[i_min],
        note="valley entrance of the smoothed loss",
    )


def _below_divergence(found: Suggestion, lrs: Sequence[float], diverged_at: Optional[float]) -> Suggestion:
    """``found`` with its high and LR capped at the sweep's last LR below ``diverged_at`` (and its low at the LR)."""
    if diverged_at is None:
        return found
    below = [lr for lr in lrs if lr < diverged_at]
    if not below or found.high <= max(below):  # diverged at the first LR: the fallback lies below it already
        return found
    cap = max(below)
    lr = min(found.lr, cap)
    return replace(
        found,
        lr=lr,
        low=min(found.low, lr),
        high=cap,
        note=f"{found.note}; capped at lr {cap:.3g}, below lr {diverged_at:.3g} where the sweep diverged",
    )


def _finite_prefix(losses: Sequence[float]) -> list[float]:
    out = []
    for loss in losses:
        if not math.isfinite(loss):
            break
        out.append(float(loss))
    return out


def _noise(losses: Sequence[float]) -> float:
    """A robust step-to-step noise level: the median absolute first difference."""
    if len(losses) < 3:
        return 0.0
    return statistics.median(abs(b - a) for a, b in zip(losses, losses[1:]))


def _fallback(lr: float, lr_min_loss: float, note: str) -> Suggestion:
    return Suggestion(lr=lr, low=lr / 10, high=max(lr_min_loss, 3 * lr), lr_min_loss=lr_min_loss, note=note)


def diverged(losses: Sequence[float], min_steps: int, factor: float) -> bool:
    """True when the last loss is not finite, or (after ``min_steps``) the running median of the last
    ``MEDIAN_WINDOW`` losses exceeds ``factor`` times the lowest such median so far."""
    if not math.isfinite(losses[-1]):
        return True
    if len(losses) < max(min_steps, MEDIAN_WINDOW):
        return False
    medians = [
        statistics.median(losses[max(0, i - MEDIAN_WINDOW + 1) : i + 1]) for i in range(MEDIAN_WINDOW - 1, len(losses))
    ]
    return medians[-1] > factor * min(medians)


# -- the sweep (torch) --------------------------------------------------------------------------------


def range_test(
    task: Any,
    optimizer: str,
    *,
    batch_size: Optional[int] = None,
    config: SweepConfig = SweepConfig(),
    seed: int = 0,
    device: str = "auto",
) -> LRFinding:
    """Run the LR range test of ``optimizer`` (catalog defaults) on ``task`` and suggest an LR."""
    from tuner.train.trainer import Trainer

    lrs = config.lrs()
    recipe = Recipe(optimizer=optimizer, lr=config.lr_end, batch_size=batch_size, schedule="constant")
    trainer = Trainer(task, recipe, TrainBudget(steps=config.steps), device=device, seed=seed)
    losses: list[float] = []
    stopped = f"completed {config.steps} steps"
    diverged_at: Optional[float] = None
    started = time.perf_counter()
    for step, micro_batches in enumerate(trainer.batches()):
        losses.append(trainer.train_step(step, micro_batches, lr_multiplier=lrs[step] / config.lr_end))
        if diverged(losses, config.steps // 10, config.divergence_factor):
            stopped, diverged_at = f"diverged at lr {lrs[step]:.3g} (step {step + 1})", lrs[step]
            break
    finite = _finite_prefix(losses)
    return LRFinding(
        optimizer,
        batch_size,
        lrs[: len(losses)],
        losses,
        smooth(finite) if finite else [],
        stopped,
        suggest(lrs, losses, diverged_at),
        seconds=time.perf_counter() - started,
    )


def find_lrs(
    task: Any,
    optimizers: Sequence[str],
    *,
    batch_size: Optional[int] = None,
    config: SweepConfig = SweepConfig(),
    seed: int = 0,
    device: str = "auto",
) -> dict[str, LRFinding]:
    """``range_test`` for each optimizer (same seed, so every optimizer sees the same initial model and batches)."""
    return {
        name: range_test(task, name, batch_size=batch_size, config=config, seed=seed, device=device)
        for name in optimizers
    }


def describe(row: dict[str, Any]) -> str:
    """One line: optimizer, suggested LR, safe range, batch size, rule."""
    return (
        f"{row['optimizer']:<12} suggested lr {row['lr']:.3g}   safe range [{row['low']:.3g}, {row['high']:.3g}]   "
        f"(batch {row['batch_size']}; {row['note']}; {row['stopped']})"
    )
