"""``strategy: pbt`` against a plain population search of the same size and budget, side by side, and the PBT winner
replayed with plain ``fit``.

Each round runs ``tuner run`` twice in fresh directories on one study definition (digits-mlp, one optimizer, a held LR
searched over the catalog's range): ``strategy: search`` (the sampler draws N recipes, trained in one vectorized pass)
and ``strategy: pbt`` (the same N, exploiting and exploring every ``--interval`` evaluations), with the study seed of
the round. It prints each arm's best final value and wall time, and for PBT the winner's exploits and the difference
between its recorded value and a replay of its exported recipe with ``tuner.train.fit`` on CPU.

    PYTHONPATH=$PWD .venv/bin/python bench/pbt.py [--population 16] [--steps 400] [--interval 1] [--rounds 3]
        [--metric loss]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

TASK = {"name": "digits-mlp", "options": {"hidden": [32]}}


def study(strategy: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The study file of one arm."""
    data: dict[str, Any] = {
        "name": f"bench-{strategy}",
        "task": TASK,
        "budget": {
            "steps": args.steps,
            "eval_every": args.steps // 10,
            "n_trials": args.population,
            "population": args.population,
        },
        "space": {"optimizers": ["adam"], "schedules": ["constant"], "batch_size": [64]},
        "metric": args.metric,
        "sampler": "random",
        "pruner": "none",
        "seed": seed,
        "device": "cpu",
    }
    if strategy == "pbt":
        data["strategy"] = "pbt"
        data["pbt"] = {"interval": args.interval, "quantile": 0.25}
    return data


def run_arm(strategy: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Run one arm in a fresh directory: wall seconds, best value, and for PBT the winner's replay."""
    import optuna

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "study.yaml"
        path.write_text(yaml.safe_dump(study(strategy, args, seed)))
        command = [sys.executable, "-m", "tuner", "run", str(path), "--tracking-uri", "none"]
        started = time.perf_counter()
        subprocess.run(command, cwd=directory, check=True, capture_output=True)
        wall = time.perf_counter() - started
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        loaded = optuna.load_study(study_name=f"bench-{strategy}", storage=f"sqlite:///{directory}/tuner.db")
        best = loaded.best_trial
        row: dict[str, Any] = {"wall": wall, "best": best.value, "trial": best.number}
        if strategy == "pbt":
            row["exploits"] = sum(len(t.user_attrs["pbt_lineage"]["exploits"]) for t in loaded.trials)
            row["replay_delta"] = replay(best, args) - best.value
        return row


def replay(trial: Any, args: argparse.Namespace) -> float:
    """The final value of the trial's exported recipe and seed trained with plain ``fit``."""
    from tuner.recipe import Recipe
    from tuner.tasks import load_task
    from tuner.train import TrainBudget, fit

    result = fit(
        load_task(TASK["name"], TASK["options"]),
        Recipe.from_dict(trial.user_attrs["recipe"]),
        TrainBudget(steps=args.steps, eval_every=args.steps // 10),
        seed=trial.user_attrs["seed"],
        device="cpu",
    )
    return float(result.last.metrics[args.metric])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--interval", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--metric", default="loss", choices=("loss", "accuracy"))
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}; {vars(args)}")
    rows: dict[str, list[dict[str, Any]]] = {"search": [], "pbt": []}
    for seed in range(args.rounds):
        for strategy in rows:
            rows[strategy].append(run_arm(strategy, args, seed))
            print(f"seed {seed} {strategy:6s} {rows[strategy][-1]}", flush=True)
    for strategy, arm in rows.items():
        bests = [r["best"] for r in arm]
        walls = [r["wall"] for r in arm]
        print(
            f"{strategy:6s} best {args.metric} mean {statistics.mean(bests):.4f} "
            f"(min {min(bests):.4f}, max {max(bests):.4f})  wall median {statistics.median(walls):.1f} s"
        )
    deltas = [abs(r["replay_delta"]) for r in rows["pbt"]]
    print(f"pbt winners replayed with fit: max |value - replay| = {max(deltas):.2e}")


if __name__ == "__main__":
    main()
