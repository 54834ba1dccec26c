"""Per-trial overhead of command trials against in-process ``train:`` functions, side by side in one run.

The same training loop (tests/fixtures/user_train.py: an MLP on digits through a DataLoader, one fixed recipe) is
tuned as ``train: user_train.py:train`` (called in the worker's process) and as ``command: python user_command.py``
(a fresh Python process per trial, reporting over a Unix socket), in alternating rounds, each arm a fresh study on
SQLite with tracking off. The command arm pays a process start, ``import torch`` and ``import tuner`` per trial,
plus a socket round trip per report. Prints seconds per trial for each arm, by round, and the difference.

    .venv/bin/python bench/command_trials.py [--trials 4] [--rounds 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def study_seconds(door: dict, trials: int, epochs: int) -> float:
    """Seconds per trial of a ``trials``-trial study whose trials train through ``door``."""
    from tuner.study.prepare import prepare
    from tuner.study.runner import RunOptions, run_study

    with tempfile.TemporaryDirectory() as directory:
        for name in ("user_train.py", "user_command.py"):
            shutil.copy(FIXTURES / name, Path(directory) / name)
        spec = {
            "name": "bench",
            **door,
            "metric": "accuracy",
            "direction": "maximize",
            "budget": {"epochs": epochs, "n_trials": trials},
            "space": {"optimizers": {"adam": {"lr": 0.003}}, "schedules": ["cosine"], "batch_size": [64]},
            "pruner": "none",
            "sampler": "random",
            "tracking_uri": "none",
            "storage": f"sqlite:///{directory}/tuner.db",
        }
        path = Path(directory) / "study.yaml"
        path.write_text(yaml.safe_dump(spec))
        prepared = prepare(path)
        started = time.perf_counter()
        study = run_study(prepared, RunOptions(n_trials=trials))
        seconds = time.perf_counter() - started
        assert all(t.state.name == "COMPLETE" for t in study.trials), [t.user_attrs.get("reason") for t in study.trials]
        return seconds / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    arms = {
        "train: (in process)": {"train": "user_train.py:train"},
        "command: (a process each)": {"command": "python user_command.py"},
    }
    study_seconds(arms["train: (in process)"], 1, 1)  # imports and caches warmed once, for both arms
    results: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, door in arms.items():
            results[name].append(study_seconds(door, args.trials, args.epochs))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.trials} trials x {args.rounds} rounds, "
        f"{args.epochs} epochs of digits per trial"
    )
    for name, values in results.items():
        rounds = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:<28} s/trial by round: {rounds}  median {statistics.median(values):.2f}")
    inside, outside = (statistics.median(v) for v in results.values())
    print(
        f"command trial overhead: {1000 * (outside - inside):.0f} ms per trial ({outside / inside:.2f}x the "
        f"in-process trial)"
    )


if __name__ == "__main__":
    main()
