"""Does `lr: auto` find a good recipe in fewer trials? The quickstart study with and without it, side by side.

    .venv/bin/python bench/lr_auto.py [--trials 30] [--seeds 0 1]

For each seed both variants run the same study (TPE, median pruner, digits-mlp, 10 epochs) in a fresh SQLite
storage with tracking off; printed: the best accuracy after k trials and the trials needed to reach a target.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (0.97, 0.975, 0.98)
CHECKPOINTS = (5, 10, 20, 30)


def run(seed: int, auto: bool, trials: int, directory: Path) -> tuple[list[float], float]:
    from tuner.spec import parse_study
    from tuner.study.prepare import prepare
    from tuner.study.runner import RunOptions, run_study

    spec = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    spec.update(
        name=f"q{seed}{'auto' if auto else ''}",
        seed=seed,
        tracking_uri="none",
        storage=f"sqlite:///{directory / 'bench.db'}",
    )
    spec["budget"]["n_trials"] = trials
    if auto:
        spec["space"]["lr"] = "auto"
    prepared = prepare(parse_study(spec), spec_dir=str(ROOT))
    started = time.perf_counter()
    study = run_study(prepared, RunOptions(n_trials=trials))
    seconds = time.perf_counter() - started
    best, curve = 0.0, []
    for trial in sorted(study.trials, key=lambda t: t.number):
        if trial.value is not None and trial.state.name == "COMPLETE":
            best = max(best, trial.value)
        curve.append(best)
    return curve, seconds


def first_reaching(curve: list[float], target: float) -> str:
    return next((str(i + 1) for i, value in enumerate(curve) if value >= target), f">{len(curve)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for seed in args.seeds:
            for auto in (False, True):
                curve, seconds = run(seed, auto, args.trials, Path(directory))
                rows.append((seed, auto, curve, seconds))
                print(
                    f"seed {seed} {'lr: auto' if auto else 'catalog'}: {seconds:.0f}s, best {curve[-1]:.4f}", flush=True
                )
    header = (
        ["seed", "LR ranges", "s"]
        + [f"best@{k}" for k in CHECKPOINTS if k <= args.trials]
        + [f"trials to {t}" for t in TARGETS]
    )
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for seed, auto, curve, seconds in rows:
        cells = [str(seed), "lr: auto" if auto else "catalog", f"{seconds:.0f}"]
        cells += [f"{curve[k - 1]:.4f}" for k in CHECKPOINTS if k <= args.trials]
        cells += [first_reaching(curve, t) for t in TARGETS]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
