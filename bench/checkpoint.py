"""What checkpoints cost and what they save, side by side, in one run.

1. **Overhead at the default cadence** (a checkpoint after every 10 minutes of training) on a ~1-s and a ~60-s trial
   (digits-mlp 128x128, Adam + cosine, batch 32): ``fit`` without checkpoints against ``fit`` with a ``Checkpointer``
   of the study's default plan, back to back in each round. Neither trial is long enough to write one, so what they
   pay is the bookkeeping: a clock read per step, the RNG states at each epoch's start, the plan. The difference of
   two arms' wall times is noise-bound on a shared machine, so the checkpoint code is also timed directly (its calls
   wrapped with a clock) and put against the trial's wall time. Target (issue #17): <= 1% of the 60-s trial.
2. **One checkpoint write** of that model (atomic: temporary file, fsync, rename, fsync of the folder): ms and bytes,
   so any cadence's cost can be read off (``write ms / cadence``).
3. **Resume vs restart** of the 60-s trial killed at 80%: a run that wrote a checkpoint at each tenth of the run is
   lost right after the one at 80% (an exception at the next evaluation: a lost worker; tests/study/test_checkpoints.py
   kills a real process); its retry resumes from that checkpoint, against retraining from step 0.

    .venv/bin/python bench/checkpoint.py [--rounds 3] [--quick]   # --quick: a ~10-s trial instead of ~60 s
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tuner.train.trainer as trainer
from tuner.recipe import Recipe
from tuner.tasks import load_task
from tuner.train import TrainBudget, fit
from tuner.train.checkpoint import CHECKPOINT_FILE, Checkpointer, CheckpointEvery, CheckpointPlan

TASK = load_task("digits-mlp", {"hidden": [128, 128]})
RECIPE = Recipe(optimizer="adam", lr=0.003, schedule="cosine", schedule_params={"min_factor": 0.0}, batch_size=32)
IDENTITY = {"format": 1, "tuner": "bench", "study": "bench", "kind": "trainer", "recipe": RECIPE.to_dict(), "seed": 0}


class Clock:
    """Sums the time spent in the functions ``wrap`` puts it around."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        return timed


def timed_checkpoint_code(clock: Clock) -> Callable[[], None]:
    """Wrap every piece of checkpoint code ``fit`` runs with ``clock``; returns the undo."""
    originals = [(Checkpointer, name, getattr(Checkpointer, name)) for name in ("due", "evaluated", "resume_state")]
    originals += [(Checkpointer, "save", Checkpointer.save), (Checkpointer, "save_model", Checkpointer.save_model)]
    originals += [(trainer, name, getattr(trainer, name)) for name in ("rng_states", "set_rng_states")]
    for owner, name, function in originals:
        setattr(owner, name, clock.wrap(function))

    def undo() -> None:
        for owner, name, function in originals:
            setattr(owner, name, function)

    return undo


def calibrate_steps(target_seconds: float) -> int:
    """Optimizer steps of the recipe (a multiple of 10) that take about ``target_seconds``."""
    fit(TASK, RECIPE, TrainBudget(steps=50))  # warm-up: the first optimizer imports torch._dynamo
    result = fit(TASK, RECIPE, TrainBudget(steps=200))
    return max(10, 10 * round(target_seconds / (result.seconds / 200) / 10))


def budget_of(steps: int) -> TrainBudget:
    """``steps`` optimizer steps, evaluated (and, with a cadence by evaluations, checkpointed) at every tenth."""
    return TrainBudget(steps=steps, eval_every=steps // 10)


def one_trial(budget: TrainBudget, folder: Path | None) -> tuple[float, float]:
    """Wall time of one ``fit`` (with the default checkpoint plan when ``folder`` is given) and the part of it the
    checkpoint code took."""
    clock = Clock()
    undo = timed_checkpoint_code(clock)
    try:
        checkpoints = Checkpointer(CheckpointPlan(str(folder), IDENTITY)) if folder is not None else None
        started = time.perf_counter()
        fit(TASK, RECIPE, budget, checkpoints=checkpoints)
        return time.perf_counter() - started, clock.seconds
    finally:
        undo()


def overhead(steps: int, rounds: int, directory: Path) -> dict[str, float]:
    """Paired rounds of a trial of ``steps`` without and with checkpoints at the default cadence."""
    budget = budget_of(steps)
    bare, with_plan, direct = [], [], []
    for round_ in range(rounds):
        bare.append(one_trial(budget, None)[0])
        wall, inside = one_trial(budget, directory / f"default-{steps}-{round_}")
        with_plan.append(wall)
        direct.append(inside / wall)
        assert not (directory / f"default-{steps}-{round_}").exists(), "the default cadence wrote a checkpoint"
    paired = [(w - b) / b for b, w in zip(bare, with_plan)]
    return {
        "bare": statistics.median(bare),
        "with": statistics.median(with_plan),
        "paired": statistics.median(paired),
        "direct": statistics.median(direct),
        "direct_ms": 1000 * statistics.median(direct) * statistics.median(with_plan),
    }


class Lost(Exception):
    pass


def resume_vs_restart(steps: int, directory: Path) -> dict[str, float]:
    """The trial killed right after its checkpoint at 80%: its retry's wall time against a restart's; and what one
    checkpoint write cost."""
    budget = budget_of(steps)
    every = CheckpointEvery(evaluations=1)
    lost_at = [0]

    def lose_after_80_percent(evaluation: Any) -> bool:
        lost_at[0] += 1
        if lost_at[0] > 8:
            raise Lost
        return False

    clock = Clock()
    lost = Checkpointer(CheckpointPlan(str(directory / "lost"), IDENTITY, every))
    lost.save = clock.wrap(lost.save)  # type: ignore[method-assign]
    with contextlib.suppress(Lost):
        fit(TASK, RECIPE, budget, on_eval=lose_after_80_percent, checkpoints=lost)
    path = directory / "lost" / CHECKPOINT_FILE
    started = time.perf_counter()
    retry = Checkpointer(CheckpointPlan(str(directory / "retry"), IDENTITY, CheckpointEvery(), resume=str(path)))
    resumed = fit(TASK, RECIPE, budget, checkpoints=retry)
    resume_wall = time.perf_counter() - started
    started = time.perf_counter()
    fit(TASK, RECIPE, budget)
    restart_wall = time.perf_counter() - started
    return {
        "resumed_step": resumed.extras["resumed_step"],
        "total_steps": resumed.total_steps,
        "resume": resume_wall,
        "restart": restart_wall,
        "write_ms": 1000 * clock.seconds / max(clock.calls, 1),
        "bytes": path.stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a ~10-s long trial instead of ~60 s")
    args = parser.parse_args()
    long_seconds = 10.0 if args.quick else 60.0
    short_steps, long_steps = calibrate_steps(1.0), calibrate_steps(long_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        short = overhead(short_steps, args.rounds, Path(tmp))
        long = overhead(long_steps, args.rounds, Path(tmp))
        resume = resume_vs_restart(long_steps, Path(tmp))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU used, "
        f"{platform.platform()}, load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"recipe: digits-mlp 128x128, adam + cosine, batch 32; {args.rounds} rounds; medians")
    print(f"{'trial':<22}{'no checkpoints':>16}{'default cadence':>17}{'paired':>9}{'direct':>9}{'direct ms':>11}")
    for name, row, steps in (("~1 s", short, short_steps), (f"~{long_seconds:.0f} s", long, long_steps)):
        print(
            f"{name + f' ({steps} steps)':<22}{row['bare']:>15.2f}s{row['with']:>16.2f}s"
            f"{100 * row['paired']:>8.2f}%{100 * row['direct']:>8.3f}%{row['direct_ms']:>11.1f}"
        )
    print(f"one checkpoint write: {resume['write_ms']:.1f} ms, {resume['bytes'] / 1e6:.2f} MB")
    fraction = resume["resumed_step"] / resume["total_steps"]
    saved = 1 - resume["resume"] / resume["restart"]
    print(
        f"killed at {100 * fraction:.0f}% (step {resume['resumed_step']} of {resume['total_steps']}): "
        f"resume {resume['resume']:.2f} s vs restart {resume['restart']:.2f} s -> {100 * saved:.0f}% of the "
        f"retry's wall time saved ({resume['restart'] / resume['resume']:.1f}x faster)"
    )
    print(f"overhead at the default cadence, ~{long_seconds:.0f}-s trial: {100 * long['direct']:.3f}% (target <= 1%)")


if __name__ == "__main__":
    main()
