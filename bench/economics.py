"""What each way of running the quickstart spends to reach the same accuracy: `tuner compare`'s economics.

    .venv/bin/python bench/economics.py [--trials 50]

The quickstart study (digits-mlp, 10 epochs, 6 optimizers x 4 schedules, TPE + median pruner) run four ways in one
fresh SQLite storage with tracking off -- sequential, `--jobs 2`, `--population 32`, and `space.lr: auto` -- each
through the real `tuner run` command; then `tuner compare --json` of the four, printed as a table: each arm's
totals (steps, summed training seconds, wall clock) and the compute its best took to reach the value all four
reached (the worst of their bests).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "sequential": ([], {}),
    "jobs2": (["--jobs", "2"], {}),
    "population32": (["--population", "32"], {}),
    "lr_auto": ([], {"lr": "auto"}),
}


def tuner(*args: str, directory: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tuner", *args], cwd=directory, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        for arm, (flags, space) in ARMS.items():
            spec = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
            spec.update(name=arm, tracking_uri="none")
            spec["budget"]["n_trials"] = args.trials
            spec["space"].update(space)
            (directory / f"{arm}.yaml").write_text(yaml.safe_dump(spec))
            tuner("run", f"{arm}.yaml", *flags, directory=directory)
        rows = json.loads(tuner("compare", *ARMS, "--json", directory=directory))
    print(f"reach value (the worst of the bests): {rows[0]['reach_value']:.4f}")
    print(
        "| arm | best | complete / pruned | steps | training s | wall s | steps to reach | training s to reach "
        "| wall s to reach | range test steps |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['study']} | {row['best_value']:.4f} | {row['complete']} / {row['pruned']} | {row['steps']} "
            f"| {row['seconds']} | {row['wall_s']} | {row['steps_to_reach']} (trial {row['trial_to_reach']}) "
            f"| {row['seconds_to_reach']} | {row['wall_s_to_reach']} | {row['range_test_steps']} |"
        )


if __name__ == "__main__":
    main()
