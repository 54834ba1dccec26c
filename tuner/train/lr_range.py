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
``[suggestion / 10, max(valley exit, 3 * suggestion)]``, the valley exit being the highest LR where ``s`` is within
that band: past it, training gets worse. Where the bottom is flat and noisy (a noisy loss, a
sweep too short to separate LRs whose full runs differ) the minimum's position is chance, and full runs with a
decaying schedule often do best near the valley's far end: the ill-conditioned noisy quadratic's sweeps put momentum's
minimum at lr 0.028 in a valley reaching 0.45, random search's best runs had lr 0.36-0.42 (docs/benchmarks.md,
"Efficiency"). Own training's probe sweep reads its range's high the same way (``suggest_probes``).

When the sweep stopped on divergence at LR ``d``, nothing at or above ``d`` is proposed: the range's high and the
suggestion are capped at the last LR of the sweep before ``d`` (and the low at the suggestion), and the note says so.
A sweep that diverged at its very first LR suggests a tenth of it.

**Own training** (a ``train:`` function or a ``command:``, ``OwnTraining``) gives tuner its metrics only when it
reports (typically once per epoch), not a loss per step, so one exponential sweep cannot be observed. ``probe_sweep``
runs instead ``probes`` short runs of the user's own code per optimizer, one per LR, log-spaced over the sweep's
range (by default the optimizer's catalog LR range): constant schedule, no warmup, the study's seed, one epoch (or
at most ``steps`` optimizer steps for a budget in steps); each probe's value is the study's metric it ended with. A
probe whose metric is not finite, that the trial's divergence rule stopped, that raised, or whose loss ended above
``divergence_factor`` times the lowest loss of the probes at lower LRs (``_probe_values``) counts as diverged.
``suggest_probes``: the best probe's LR, the range ``[min(lr / 10, the lowest probe next to it within KNEE of the
spread of the probes' scores), max(3 * lr, the next probe above it, the highest probe within KNEE)]`` -- and, by the
same rule as the sweep, nothing at or above the lowest diverged probe above the best. The next probe above the best
is in the range because a short run favours a lower LR than the full budget (``bench/lr_probes.py``: sgd's best of 7
one-epoch probes on digits was 0.32, its best 5-epoch run 1.0, the next probe).
Probes are not trials: nothing of them is written anywhere.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Optional, Union

from tuner.errors import TunerError, UserCodeError
from tuner.recipe import Recipe
from tuner.train.progress import FitResult, TrainBudget

if TYPE_CHECKING:
    from tuner.train.command import OwnTraining

KNEE = 0.1  # the valley starts where the smoothed loss is within 10% of the total drop from its minimum
SAME_SWEEP = {"adamw": "adam"}
"""Optimizers whose range test would repeat another's, step for step: the sweep trains at weight decay 0, where AdamW
is Adam (the quickstart's two sweeps gave the same suggestion and diverged at the same step). One sweep serves both,
its steps counted once."""
MEDIAN_WINDOW = 5
MEAN_WINDOW = 5
DIVERGENCE_FACTOR = 4.0
SWEEP_SPAN = (1e-6, 10.0)  # the exponential sweep's default LR range
PROBES = 7  # short runs per optimizer of a probe sweep (own training)


@dataclass(frozen=True)
class SweepConfig:
    """The sweep: ``steps`` optimizer steps from ``lr_start`` to ``lr_end`` (geometric); own training: ``probes``
    short runs at LRs log-spaced over that range, each at most ``steps`` steps when the study's budget is in steps.

    ``lr_start`` / ``lr_end`` left None: 1e-6 / 10 for the sweep, the optimizer's catalog LR range for probes.
    """

    lr_start: Optional[float] = None
    lr_end: Optional[float] = None
    steps: int = 100
    divergence_factor: float = DIVERGENCE_FACTOR
    probes: int = PROBES

    def __post_init__(self) -> None:
        if self.lr_start is not None and self.lr_end is not None:
            _check_span(self.lr_start, self.lr_end)
        if self.steps < 10:
            raise ValueError(f"steps must be >= 10, got steps={self.steps}")
        if not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1, got divergence_factor={self.divergence_factor}")
        if self.probes < 2:
            raise ValueError(f"probes must be >= 2, got probes={self.probes}")

    def span(self, optimizer: Optional[str] = None) -> tuple[float, float]:
        """The LR range: the one given, else the sweep's default, or (``optimizer``) that optimizer's catalog range."""
        low, high = SWEEP_SPAN
        if optimizer is not None:
            from tuner.optim import OPTIMIZERS

            low, high = OPTIMIZERS[optimizer].lr.low, OPTIMIZERS[optimizer].lr.high
        start = low if self.lr_start is None else self.lr_start
        end = high if self.lr_end is None else self.lr_end
        _check_span(start, end)
        return start, end

    def lrs(self) -> list[float]:
        """The sweep's LR at each step: geometric from ``lr_start`` to ``lr_end``."""
        return geometric(*self.span(), self.steps)

    def probe_lrs(self, optimizer: str) -> list[float]:
        """The LRs of ``optimizer``'s probes: ``probes`` of them, geometric over ``span(optimizer)``."""
        return geometric(*self.span(optimizer), self.probes)


def _check_span(start: float, end: float) -> None:
    if not 0 < start < end:
        raise ValueError(f"need 0 < lr_start < lr_end, got lr_start={start}, lr_end={end}")


def geometric(start: float, end: float, n: int) -> list[float]:
    """``n`` LRs from ``start`` to ``end``, evenly spaced on a log scale."""
    ratio = end / start
    return [start * ratio ** (i / (n - 1)) for i in range(n)]


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
    steps: Optional[int] = None  # optimizer steps trained (None: one per loss, the sweep's); a probe sweep's: summed

    def summary(self) -> dict[str, Any]:
        """The suggestion as plain data (for study user attrs and MLflow), with what the sweep cost: its optimizer
        steps and seconds (a study's compute counts them)."""
        return {
            "optimizer": self.optimizer,
            "batch_size": self.batch_size,
            **asdict(self.suggestion),
            "stopped": self.stopped,
            "steps": len(self.losses) if self.steps is None else self.steps,
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
    band = s[i_min] + KNEE * drop
    knee = next(i for i in range(i_min + 1) if s[i] <= band)
    valley_exit = max(i for i in range(i_min, len(s)) if s[i] <= band)
    lr = lrs[knee]
    return Suggestion(
        lr=lr,
        low=lr / 10,
        high=max(lrs[valley_exit], 3 * lr),
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
    lr_end = lrs[-1]
    recipe = Recipe(optimizer=optimizer, lr=lr_end, batch_size=batch_size, schedule="constant")
    trainer = Trainer(task, recipe, TrainBudget(steps=config.steps), device=device, seed=seed)
    losses: list[float] = []
    stopped = f"completed {config.steps} steps"
    diverged_at: Optional[float] = None
    started = time.perf_counter()
    for step, micro_batches in enumerate(trainer.batches()):
        losses.append(trainer.train_step(step, micro_batches, lr_multiplier=lrs[step] / lr_end))
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


def sweeps_of(optimizers: Sequence[str]) -> int:
    """How many range tests ``find_lrs`` runs for ``optimizers`` of a task (a shared sweep once: ``SAME_SWEEP``)."""
    return sum(SAME_SWEEP.get(name) not in optimizers for name in optimizers)


def find_lrs(
    trains: Union[Any, OwnTraining],
    optimizers: Sequence[str],
    *,
    batch_size: Optional[int] = None,
    config: SweepConfig = SweepConfig(),
    seed: int = 0,
    device: str = "auto",
) -> dict[str, LRFinding]:
    """Per optimizer, what a study trains says about its LR: ``range_test`` of a task, ``probe_sweep`` of the user's
    own training (``OwnTraining``). Same seed for each, so every optimizer sees the same initial model and batches."""
    from tuner.train.command import OwnTraining

    if isinstance(trains, OwnTraining):  # the user's code may tell optimizers apart: every probe sweep runs
        return {
            name: probe_sweep(trains, name, batch_size=batch_size, config=config, seed=seed, device=device)
            for name in optimizers
        }
    found: dict[str, LRFinding] = {}
    for name in sorted(optimizers, key=lambda name: name in SAME_SWEEP):  # the sweeps others share first
        twin = SAME_SWEEP.get(name)
        if twin in found:
            note = f"{found[twin].stopped}; {twin}'s sweep: the same update at the sweep's weight decay 0"
            found[name] = replace(found[twin], optimizer=name, stopped=note, steps=0, seconds=0.0)
        else:
            found[name] = range_test(trains, name, batch_size=batch_size, config=config, seed=seed, device=device)
    return {name: found[name] for name in optimizers}


# -- own training: the probe sweep --------------------------------------------------------------------------------


def suggest_probes(lrs: Sequence[float], values: Sequence[float], direction: str) -> Suggestion:
    """The suggested LR and safe range from probes (``values``: the metric each ended with, NaN when it diverged);
    never empty, never at or above the lowest diverged probe above the best (module docstring)."""
    sign = 1.0 if direction == "maximize" else -1.0
    scores = {i: sign * value for i, value in enumerate(values) if math.isfinite(value)}
    if not scores:
        note = "every probe diverged; the sweep started too high"
        return _below_divergence(_fallback(lrs[0] / 10, lrs[0] / 10, note), lrs, lrs[0])
    best = max(scores, key=lambda i: (scores[i], -i))  # a tie goes to the lower LR
    tolerance = KNEE * (scores[best] - min(scores.values()))
    near = [i for i in scores if scores[i] >= scores[best] - tolerance]
    lo, hi = best, best
    while lo - 1 in near:
        lo -= 1
    while hi + 1 in near:
        hi += 1
    lr = lrs[best]
    edge = {0: "; the lowest LR probed", len(lrs) - 1: "; the highest LR probed"}.get(best, "")
    above_best = lrs[best + 1] if best + 1 in scores else lr  # the untried gap up to a finite neighbour stays open
    found = Suggestion(
        lr=lr,
        low=min(lr / 10, lrs[lo]),
        high=max(3 * lr, above_best, lrs[hi]),
        lr_min_loss=lr,
        note=f"best of {len(lrs)} probes{edge}",
    )
    above = [lrs[i] for i in range(best + 1, len(lrs)) if i not in scores]
    return _below_divergence(found, lrs, min(above) if above else None)


def probe_budget(budget: TrainBudget, steps: int) -> TrainBudget:
    """A probe's budget: one epoch, or at most ``steps`` optimizer steps when the study's budget is in steps."""
    if budget.steps is not None:
        return replace(budget, epochs=None, steps=min(budget.steps, steps), eval_every=None, patience=None)
    return replace(budget, epochs=1, eval_every=None, patience=None)


def probe_sweep(
    own: OwnTraining,
    optimizer: str,
    *,
    batch_size: Optional[int] = None,
    config: SweepConfig = SweepConfig(),
    seed: int = 0,
    device: str = "auto",
) -> LRFinding:
    """Probe ``optimizer`` (catalog defaults, constant schedule) with ``config.probes`` short runs of the user's own
    training, one per LR, and suggest an LR (module docstring). ``TunerError`` when every probe raised or failed."""
    from tuner.train.command import CommandFailed
    from tuner.train.compute import resolve_device

    lrs = config.probe_lrs(optimizer)
    budget = probe_budget(own.budget, config.steps)
    where = str(resolve_device(device))
    ended: list[Optional[dict[str, float]]] = []
    errors: dict[float, str] = {}
    steps, started = 0, time.perf_counter()
    for i, lr in enumerate(lrs):
        recipe = Recipe(optimizer=optimizer, lr=lr, batch_size=batch_size, schedule="constant")
        info = own.info(-1 - i, recipe, seed, where, budget=budget)  # negative numbers: probes, not trials
        try:
            result = own.run(info, lambda evaluation: False)
            steps += result.steps_done  # a probe that raised: its steps are not known, not counted
            ended.append(_ended_with(result))
        except (UserCodeError, CommandFailed) as error:  # it raised or failed: diverged (or broken: below)
            ended.append(None)
            errors[lr] = str(error)
    if len(errors) == len(lrs):  # not a divergence: the code is broken
        raise TunerError(f"every probe of {optimizer}'s LR sweep failed; at lr {lrs[0]:.3g}: {errors[lrs[0]]}")
    values = _probe_values(ended, own.metric, config.divergence_factor)
    diverged_lrs = [lr for lr, value in zip(lrs, values) if not math.isfinite(value)]
    length = f"{budget.steps} steps" if budget.steps is not None else "1 epoch"
    stopped = f"{len(lrs)} probes of {length}, " + (
        f"{len(diverged_lrs)} diverged (from lr {min(diverged_lrs):.3g})" if diverged_lrs else "none diverged"
    )
    extras = {"probes": len(lrs), "metric": own.metric, "direction": own.direction, "errors": errors}
    suggestion = suggest_probes(lrs, values, own.direction)
    seconds = time.perf_counter() - started  # the probes' whole runs (a command's start-up included)
    smoothed = _finite_prefix(values)
    return LRFinding(optimizer, batch_size, lrs, values, smoothed, stopped, suggestion, extras, seconds, steps)


def _ended_with(result: FitResult) -> Optional[dict[str, float]]:
    """The metrics a probe ended with; None when the trial's rules stopped it (diverged) or it never said any."""
    return result.counted if result.status in ("completed", "early_stopped") else None


def _probe_values(ended: Sequence[Optional[dict[str, float]]], metric: str, factor: float) -> list[float]:
    """Each probe's metric, NaN where it diverged: no metrics, a non-finite one, or a loss (the one the trial's
    divergence rule follows) above ``factor`` times the lowest loss of the probes at lower LRs -- the sweep's rule
    across probes: a short run at too high an LR often ends with a finite but useless loss."""
    from tuner.train.trial import LOSS_KEYS

    values, lowest = [], math.inf
    for metrics in ended:
        value = (metrics or {}).get(metric, math.nan)
        loss = next((metrics[key] for key in LOSS_KEYS if key in metrics), None) if metrics else None
        if loss is not None and math.isfinite(loss):
            value = math.nan if loss > factor * lowest else value
            lowest = min(lowest, loss)
        values.append(float(value) if math.isfinite(value) else math.nan)
    return values


def describe(row: dict[str, Any]) -> str:
    """One line: optimizer, suggested LR, safe range, batch size, rule."""
    return (
        f"{row['optimizer']:<12} suggested lr {row['lr']:.3g}   safe range [{row['low']:.3g}, {row['high']:.3g}]   "
        f"(batch {row['batch_size']}; {row['note']}; {row['stopped']})"
    )
