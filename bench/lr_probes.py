"""Does the probe sweep of own training (`tuner lr-find` / `lr: auto` on a `train:` study) suggest good LRs?

    .venv/bin/python bench/lr_probes.py [--optimizers adam sgd momentum] [--epochs 5] [--grid 9]

The user's loop is the README's (tests/fixtures/user_train.py: an MLP on digits through a DataLoader, batch 64). Per
optimizer: the probe sweep as `lr-find` runs it (7 probes of 1 epoch over the catalog's LR range), timed; then the
"truth": full runs of ``--epochs`` epochs (constant schedule, seed 0) at ``--grid`` LRs log-spaced over the same range,
and one at the suggested LR. Printed: the suggestion and range, the grid's best LR and accuracy, the accuracy at the
suggestion, and whether the grid's best LR lies inside the suggested range.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--optimizers", nargs="+", default=["adam", "sgd", "momentum"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--grid", type=int, default=9)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from user_train import train

    from tuner.recipe import Recipe
    from tuner.train import TrainBudget
    from tuner.train.command import OwnTraining
    from tuner.train.lr_range import SweepConfig, find_lrs, geometric

    own = OwnTraining("bench", "accuracy", "maximize", TrainBudget(epochs=args.epochs), function=train)
    config = SweepConfig()

    def accuracy(optimizer: str, lr: float) -> float:
        info = own.info(0, Recipe(optimizer, lr, batch_size=64, schedule="constant"), 0, "cpu")
        counted = own.run(info, lambda evaluation: False).counted
        return float(counted["accuracy"]) if counted else float("nan")

    print("| optimizer | probes (s) | suggested | range | grid best lr | grid best acc | at suggestion | in range |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.optimizers:
        started = time.perf_counter()
        (finding,) = find_lrs(own, [name], batch_size=64, config=config, device="cpu").values()
        seconds = time.perf_counter() - started
        s = finding.suggestion
        grid = {lr: accuracy(name, lr) for lr in geometric(*config.span(name), args.grid)}
        best = max(grid, key=lambda lr: grid[lr])
        at = accuracy(name, s.lr)
        inside = s.low <= best <= s.high
        print(
            f"| {name} | {seconds:.1f} | {s.lr:.3g} | [{s.low:.3g}, {s.high:.3g}] | {best:.3g} | {grid[best]:.4f} | "
            f"{at:.4f} | {'yes' if inside else 'no'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
