"""Tracking + storage overhead of a study, side by side with bare training, in one run.

Each trial trains the same recipe for about ``--trial-seconds`` (digits-mlp, fixed Adam recipe), so
the only difference between the arms is what the engine adds: the Optuna SQLite storage (ask,
report at every evaluation, tell, user attrs, heartbeat) -- the "no tracking" arm -- and then MLflow
on SQLite (a child run, params, a ``recipe.yaml`` artifact, one metrics batch, tags). The arms run
back to back in each round to share the machine's noise; the result is the median of the rounds'
overheads. Target (issue #2): overhead <= 5% of wall time for a 1-second trial.

On a noisy machine the difference of two arms swings by +-20% between rounds, so the study arms also measure
the overhead directly: the wall time of the study minus the time ``fit`` spent training (its own wall time less
the engine's ``on_eval`` callbacks), in the same run, so the machine's speed at that moment cancels out.

    .venv/bin/python bench/overhead.py [--trials 6] [--rounds 5] [--trial-seconds 1.0] [--evals 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tuner.recipe import Recipe
from tuner.spec import parse_study
from tuner.study import lifecycle
from tuner.study.prepare import prepare
from tuner.study.runner import RunOptions, run_study
from tuner.tasks import load_task
from tuner.train import TrainBudget, fit

TASK = {"name": "digits-mlp", "options": {"hidden": [128, 128]}}
SPACE = {"optimizers": {"adam": {"lr": 0.003}}, "schedules": {"cosine": {"min_factor": 0.0}}, "batch_size": [32]}


def calibrate_epochs(target_seconds: float) -> int:
    """Epochs of the fixed recipe that take about ``target_seconds``."""
    task = load_task(TASK["name"], TASK["options"])
    recipe = Recipe(optimizer="adam", lr=0.003, schedule="cosine", schedule_params={"min_factor": 0.0}, batch_size=32)
    fit(task, recipe, TrainBudget(epochs=1))  # warm-up: first optimizer imports torch._dynamo
    seconds = fit(task, recipe, TrainBudget(epochs=4)).seconds / 4
    return max(1, round(target_seconds / seconds))


def bare_seconds(epochs: int, eval_every: int, trials: int) -> float:
    """Wall time of ``trials`` plain fit() calls of the fixed recipe."""
    task = load_task(TASK["name"], TASK["options"])
    recipe = Recipe(optimizer="adam", lr=0.003, schedule="cosine", schedule_params={"min_factor": 0.0}, batch_size=32)
    started = time.perf_counter()
    for seed in range(trials):
        fit(task, recipe, TrainBudget(epochs=epochs, eval_every=eval_every), seed=seed)
    return time.perf_counter() - started


class TrainingClock:
    """Stands in for ``tuner.study.lifecycle.fit`` and sums the time ``fit`` spends training: its wall time less the
    time
    spent in the engine's ``on_eval`` (reporting to Optuna, pruning, buffering metrics)."""

    def __init__(self) -> None:
        self.training = 0.0

    def fit(self, *args: Any, on_eval: Any = None, **kwargs: Any) -> Any:
        in_callbacks = [0.0]

        def timed(evaluation: Any) -> bool:
            started = time.perf_counter()
            try:
                return on_eval(evaluation)
            finally:
                in_callbacks[0] += time.perf_counter() - started

        started = time.perf_counter()
        result = fit(*args, on_eval=timed if on_eval else None, **kwargs)
        self.training += time.perf_counter() - started - in_callbacks[0]
        return result


def study_seconds(
    epochs: int, eval_every: int, trials: int, directory: Path, name: str, tracking: bool = True
) -> tuple[float, float]:
    """Wall time of a ``trials``-trial study on SQLite storage with MLflow on SQLite (``tracking=False``: no MLflow),
    study creation excluded, and the part of it ``fit`` spent training."""
    spec = parse_study(
        {
            "name": name,
            "task": TASK,
            "budget": {"epochs": epochs, "eval_every": eval_every, "n_trials": trials + 1},
            "space": SPACE,
            "pruner": "none",
            "sampler": "random",
        }
    )
    storage = f"sqlite:///{directory / 'tuner.db'}"
    tracking = f"sqlite:///{directory / 'mlflow.db'}" if tracking else "none"
    prepared = prepare(spec, storage=storage, tracking_uri=tracking, spec_dir=str(directory))
    run_study(prepared, RunOptions(n_trials=1))  # creates schema, experiment, parent run; warms caches
    clock = TrainingClock()
    lifecycle.fit = clock.fit
    try:
        started = time.perf_counter()
        run_study(prepared, RunOptions(n_trials=trials + 1))
        return time.perf_counter() - started, clock.training
    finally:
        lifecycle.fit = fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--trial-seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--evals", type=int, default=10, help="evaluations (pruner reports) per trial")
    args = parser.parse_args()

    epochs = calibrate_epochs(args.trial_seconds)
    eval_every = max(1, epochs // args.evals)
    bare, storage_only, study = [], [], []
    direct_storage, direct_study = [], []  # per round: (wall - training) / wall
    direct_ms = []  # per round: (wall - training) per trial, ms (storage + MLflow)
    training_vs_bare = []  # per round: training time inside the study / bare fit time
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            bare.append(bare_seconds(epochs, eval_every, args.trials))
            wall, training = study_seconds(
                epochs, eval_every, args.trials, Path(tmp), f"storage-{round_}", tracking=False
            )
            storage_only.append(wall)
            direct_storage.append((wall - training) / wall)
            wall, training = study_seconds(epochs, eval_every, args.trials, Path(tmp), f"overhead-{round_}")
            study.append(wall)
            direct_study.append((wall - training) / wall)
            direct_ms.append(1000 * (wall - training) / args.trials)
            training_vs_bare.append(training / bare[-1])
    per_trial_bare = statistics.median(bare) / args.trials
    per_trial_storage = statistics.median(storage_only) / args.trials
    per_trial_study = statistics.median(study) / args.trials
    # each round's arms ran back to back, so a round's ratio shares that moment's load; the median ratio is the result
    ratios = sorted((s - b) / s for b, s in zip(bare, study))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"recipe: digits-mlp 128x128, adam + cosine, batch 32, {epochs} epochs per trial, "
        f"evaluated every {eval_every} epochs; {args.trials} trials x {args.rounds} rounds"
    )
    print(f"{'arm':<34}{'s/trial (median)':>18}")
    print(f"{'bare fit() loop':<34}{per_trial_bare:>18.3f}")
    print(
        f"{'study: SQLite, no tracking':<34}{per_trial_storage:>18.3f}   "
        f"(+{1000 * (per_trial_storage - per_trial_bare):.1f} ms: storage)"
    )
    print(
        f"{'study: SQLite + MLflow(SQLite)':<34}{per_trial_study:>18.3f}   "
        f"(+{1000 * (per_trial_study - per_trial_storage):.1f} ms: MLflow)"
    )
    print(f"overhead by round: {' '.join(f'{100 * r:.1f}%' for r in ratios)}")
    print(
        f"overhead per trial: {1000 * (per_trial_study - per_trial_bare):.1f} ms; median of rounds "
        f"{100 * statistics.median(ratios):.1f}% of wall time (target <= 5%)"
    )
    print(f"direct, storage only, by round: {' '.join(f'{100 * r:.1f}%' for r in sorted(direct_storage))}")
    print(f"direct, storage + MLflow, by round: {' '.join(f'{100 * r:.1f}%' for r in sorted(direct_study))}")
    print(f"training inside the study / bare fit, by round: {' '.join(f'{r:.3f}' for r in sorted(training_vs_bare))}")
    print(
        f"direct overhead (study wall - training inside fit): "
        f"{100 * statistics.median(direct_study):.1f}% of wall time "
        f"at {statistics.median(bare) / args.trials:.2f} s of training per trial (median of rounds)"
    )
    # the calibration aims at 1 s of training but the machine's speed drifts (0.8-1.25 s seen): the overhead in ms per
    # trial is what the engine adds, and the target is stated for a 1-second trial
    overhead_ms = statistics.median(direct_ms)
    print(f"direct overhead per trial, by round: {' '.join(f'{ms:.0f}' for ms in sorted(direct_ms))} ms")
    print(
        f"direct overhead: {overhead_ms:.0f} ms per trial = {100 * overhead_ms / (1000 + overhead_ms):.1f}% of a trial "
        f"with 1.0 s of training (target <= 5%)"
    )


if __name__ == "__main__":
    main()
