"""Population size on a GPU: the quickstart's space trained as one vectorized population of P trials on ``cuda``,
for several P, side by side with sequential trials on ``cuda``: trials/s, peak GPU memory, best value.

Each row is a real study (``bench/gpu.py``'s ``run_arm``: SQLite in a fresh folder, tracking off) of P trials with
``--population P`` (one pass); the sequential row runs 16 trials one at a time. It informs the population size a
study file should get on a GPU (issue 18).

    python bench/gpu_population.py [--sizes 8,32,128,512] [--dry-run-on-cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpu import run_arm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,32,128,512", help="population sizes, comma-separated")
    parser.add_argument("--dry-run-on-cpu", action="store_true", help="run on the CPU (checks the script)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available() and not args.dry_run_on_cpu:
        raise SystemExit("bench/gpu_population.py needs a CUDA device")
    device = "cpu" if args.dry_run_on_cpu else "cuda"
    print(f"{torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU (dry run)'}, torch {torch.__version__}")
    quickstart = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        os.chdir(directory)
        spec = {**quickstart, "name": "warm", "device": device}
        run_arm(spec, directory, 2)  # imports, CUDA's context and kernels, before anything is timed
        sequential = run_arm({**spec, "name": "sequential"}, directory, 16)
        rows = [("sequential", 16, sequential)]
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append((f"population {size}", size, run_arm({**spec, "name": f"p{size}"}, directory, size, size)))
    base = sequential["trials/s"]
    for name, trials, row in rows:
        best = "-" if row["best"] is None else f"{row['best']:.4f}"
        print(
            f"{name:<16} {trials:5d} trials {row['trials/s']:8.2f} trials/s ({row['trials/s'] / base:6.2f}x)  "
            f"{row['seconds']:6.1f} s  {row['MiB']:8.1f} MiB  best {best}  {row['states']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
