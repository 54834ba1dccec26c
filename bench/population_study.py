"""A whole study with and without ``--population``, run the way a user runs it, side by side in one run.

Each round runs ``tuner run STUDY`` (sequential trials) and ``tuner run STUDY --population N`` back to back, each
in a fresh directory (new SQLite study and MLflow store, as on a first run), and reads two times for each: the
wall time of the command (start-up included: imports, creating the MLflow store, loading the data) and the
tuning time (first trial started to last trial finished, from the study's own timestamps). It prints the
medians and their ratios, and what each found. Issue #6: "``tuner run --population 32 studies/quickstart.yaml``
finishes much faster than without, with the same kind of results in MLflow".

    .venv/bin/python bench/population_study.py [--study studies/quickstart.yaml] [--population 32] [--rounds 3]
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


def run_once(study: Path, population: int) -> dict[str, float]:
    """Run the study in a fresh directory; wall and tuning seconds, and what the study found."""
    import optuna

    with tempfile.TemporaryDirectory() as directory:
        command = [sys.executable, "-m", "tuner", "run", str(study.resolve())]
        if population > 1:
            command += ["--population", str(population)]
        started = time.perf_counter()
        subprocess.run(command, cwd=directory, check=True, capture_output=True)
        wall = time.perf_counter() - started
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        (summary,) = optuna.get_all_study_summaries(f"sqlite:///{directory}/tuner.db")
        loaded = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{directory}/tuner.db")
        trials = loaded.trials
        tuning = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
        states = [t.state.name for t in trials]
        return {
            "wall": wall,
            "tuning": tuning.total_seconds(),
            "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"),
            "best": loaded.best_value,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--study", type=Path, default=Path(__file__).resolve().parent.parent / "studies" / "quickstart.yaml"
    )
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; study {args.study.name}; "
        f"{args.rounds} rounds, each arm in a fresh directory"
    )
    arms = {"sequential": 1, f"population {args.population}": args.population}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    for round_number in range(args.rounds):
        for name, population in arms.items():
            results[name].append(run_once(args.study, population))
            last = results[name][-1]
            print(
                f"  round {round_number + 1} {name:>14}: wall {last['wall']:5.2f} s, tuning {last['tuning']:5.2f} s, "
                f"{last['complete']:.0f} complete, {last['pruned']:.0f} pruned, best {last['best']:.4f}",
                flush=True,
            )
    medians = {
        name: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for name, rows in results.items()
    }
    print(f"\n{'arm':>16} {'wall s':>8} {'tuning s':>9} {'complete':>9} {'pruned':>7} {'best':>7}")
    for name, m in medians.items():
        print(
            f"{name:>16} {m['wall']:8.2f} {m['tuning']:9.2f} {m['complete']:9.0f} {m['pruned']:7.0f} {m['best']:7.4f}"
        )
    sequential, population = medians["sequential"], medians[f"population {args.population}"]
    print(f"tuning speedup: {sequential['tuning'] / population['tuning']:.2f}x")
    print(f"wall speedup: {sequential['wall'] / population['wall']:.2f}x")


if __name__ == "__main__":
    main()
