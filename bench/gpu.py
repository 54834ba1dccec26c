"""GPU readiness, one command on a CUDA machine: the quickstart, a population, a loader task in bf16 and a command
trial on ``cuda``, side by side with the quickstart on the CPU, in one table.

Each arm is a real study (``tuner.prepare`` + ``tuner.run_study``, SQLite in a fresh folder, tracking off) run in this
process; a command trial's training runs in its own process on the same GPU. Columns: trials per second, the peak GPU
memory this process allocated in the arm (the command's child is not counted), the best value, and the speedup
against the arm named in the last column. The loader arm trains the examples/cifar10 ResNet on a generated
CIFAR-10 directory (random pixels: it measures speed, not accuracy) with ``precision: bf16`` and ``channels_last``.

    python bench/gpu.py [--trials 16] [--population 32] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_arm(spec: dict[str, Any], directory: Path, trials: int, population: int = 1) -> dict[str, Any]:
    """Run one study; trials/s, peak CUDA memory (MiB), best value, states."""
    import torch

    from tuner.study.prepare import prepare
    from tuner.study.runner import RunOptions, run_study

    spec = {**spec, "tracking_uri": "none", "storage": f"sqlite:///{directory}/{spec['name']}.db"}
    path = directory / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    prepared = prepare(path)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    study = run_study(prepared, RunOptions(n_trials=trials, population=population))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    states = [t.state.name for t in study.trials]
    values = [t.value for t in study.trials if t.state.name == "COMPLETE" and t.value is not None]
    best = (max(values) if spec.get("direction", "maximize") == "maximize" else min(values)) if values else None
    memory = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    return {
        "trials/s": len(states) / seconds,
        "seconds": seconds,
        "MiB": memory,
        "best": best,
        "states": {s: states.count(s) for s in sorted(set(states))},
        "reasons": sorted({str(t.user_attrs.get("reason", ""))[:80] for t in study.trials if t.state.name == "FAIL"}),
    }


def arms(directory: Path, args: argparse.Namespace) -> list[tuple[str, dict[str, Any], int, int, Optional[str]]]:
    """(name, study spec, trials, population, baseline arm) for every arm."""
    from tests.helpers import write_cifar

    quickstart = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    quickstart["task"] = "digits-mlp"
    cifar = write_cifar(directory / "cifar-10-batches-py", images_per_batch=512 if not args.quick else 128)
    example = ROOT / "examples" / "cifar10"
    loader = {
        "name": "loader-bf16",
        "task": {"name": str(example / "task.py:make_task"), "options": {"root": str(cifar), "width": 16}},
        "budget": {"epochs": 2, "n_trials": args.trials, "precision": "bf16", "channels_last": True},
        "space": {"optimizers": ["momentum", "adamw"], "schedules": ["cosine"], "batch_size": [128]},
        "pruner": "none",
    }
    for name in ("user_train.py", "user_command.py"):
        shutil.copy(ROOT / "tests" / "fixtures" / name, directory / name)
    command = {
        "name": "command",
        "command": f"{sys.executable} user_command.py",
        "metric": "accuracy",
        "direction": "maximize",
        "budget": {"epochs": 3, "n_trials": 4},
        "space": {"optimizers": ["adam", "momentum"], "schedules": ["cosine"], "batch_size": [64]},
        "pruner": "none",
    }
    command_fn = {**command, "name": "train-fn", "train": "user_train.py:train"}
    command_fn.pop("command")
    n, pop = args.trials, args.population
    return [
        ("quickstart cpu", {**quickstart, "name": "q-cpu", "device": "cpu"}, n, 1, None),
        ("quickstart cuda", {**quickstart, "name": "q-cuda", "device": "cuda"}, n, 1, "quickstart cpu"),
        (f"population {pop} cuda", {**quickstart, "name": "p-cuda", "device": "cuda"}, pop, pop, "quickstart cuda"),
        ("loader bf16 cuda", {**loader, "device": "cuda"}, n // 2, 1, None),
        (
            "loader fp32 cuda",
            {
                **loader,
                "name": "loader-fp32",
                "device": "cuda",
                "budget": {**loader["budget"], "precision": "fp32", "channels_last": False},
            },
            n // 2,
            1,
            None,
        ),
        ("train: fn cuda", {**command_fn, "device": "cuda"}, 4, 1, None),
        ("command: cuda", {**command, "device": "cuda"}, 4, 1, "train: fn cuda"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="a smaller loader dataset")
    parser.add_argument("--dry-run-on-cpu", action="store_true", help="run every arm on the CPU (checks the script)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available() and not args.dry_run_on_cpu:
        raise SystemExit("bench/gpu.py needs a CUDA device (torch.cuda.is_available() is False)")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (dry run on the CPU)"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        plan = arms(directory, args)
        for _, spec, _, _, _ in plan[:2]:  # imports, CUDA's context and kernels warmed before anything is timed
            os.chdir(directory)
            device = "cpu" if args.dry_run_on_cpu else spec["device"]
            run_arm({**spec, "name": f"warm-{spec['name']}", "device": device}, directory, 2)
        for name, spec, trials, population, baseline in plan:
            os.chdir(directory)
            if args.dry_run_on_cpu:
                spec = {**spec, "device": "cpu", "budget": {**spec["budget"], "precision": "fp32"}}
            results[name] = run_arm(spec, directory, trials, population)
            base = results.get(baseline) if baseline else None
            speedup = f"{results[name]['trials/s'] / base['trials/s']:.2f}x vs {baseline}" if base else ""
            row = results[name]
            best = "-" if row["best"] is None else f"{row['best']:.4f}"
            print(
                f"{name:<22} {row['trials/s']:8.2f} trials/s  {row['seconds']:7.1f} s  {row['MiB']:8.1f} MiB  "
                f"best {best:>7}  {row['states']}  {speedup}",
                flush=True,
            )
            for reason in row["reasons"]:
                print(f"{'':<22} failed: {reason}")
    fn, command = results["train: fn cuda"], results["command: cuda"]
    overhead = command["seconds"] / 4 - fn["seconds"] / 4
    print(f"command trial overhead on this machine: {1000 * overhead:.0f} ms per trial")


if __name__ == "__main__":
    main()
