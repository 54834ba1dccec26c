"""Population training vs the plain sequential torch.optim loop, side by side, from one run.

    .venv/bin/python bench/population.py [--epochs 5] [--sizes 8 32 128] [--threads 1 2]

Workload (the prototype's): Adam at N learning rates log-spaced in [1e-4, 1e-1], batch 64, ``--epochs`` epochs,
evaluation every epoch, on digits-mlp and digits-cnn. Sequential = ``tuner.train.fit`` one trial after the other
(torch.optim, ``ManagedOptimizer``); population = ``tuner.train.population.fit_population`` (one vectorized pass).
Each configuration runs in a fresh process at each thread count; the best thread count counts. Peak memory per
member = (peak RSS after the run - RSS before it) / N, in that process. The last line is
``population speedup N=32: <ratio>x`` for digits-mlp (trials/s of population N=32 over sequential, best threads).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time

SEQUENTIAL_TRIALS = {"digits-mlp": 8, "digits-cnn": 4}


def _recipes(n: int):
    from tuner.recipe import Recipe

    return [Recipe("adam", 10 ** (-4 + 3 * i / max(n - 1, 1)), batch_size=64) for i in range(n)]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(task_name: str, mode: str, n: int, threads: int, epochs: int, queue) -> None:
    import torch

    from tuner.tasks import load_task
    from tuner.train import TrainBudget, fit
    from tuner.train.population import fit_population

    torch.set_num_threads(threads)
    task = load_task(task_name, {})
    budget = TrainBudget(epochs=epochs)
    recipes = _recipes(n)
    fit(task, recipes[0], TrainBudget(steps=3), device="cpu")  # warm-up: data, first optimizer, torch._dynamo import
    if mode == "population":
        fit_population(task, recipes[:2], TrainBudget(steps=3), seeds=[0, 1], device="cpu")
    before = _rss_bytes()
    started = time.perf_counter()
    if mode == "population":
        results = fit_population(task, recipes, budget, seeds=list(range(n)), device="cpu")
    else:
        results = [fit(task, recipe, budget, seed=i, device="cpu") for i, recipe in enumerate(recipes)]
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    best = max(r.best.metrics["accuracy"] for r in results if r.best is not None)
    queue.put((n / seconds, max(peak - before, 0) / n / 2**20, best))


def run_one(task_name: str, mode: str, n: int, threads: int, epochs: int) -> tuple[float, float, float]:
    """(trials/s, peak MiB per member, best accuracy) of one configuration, in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(task_name, mode, n, threads, epochs, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="thread counts to try (default: 1 and 2 on a quiet machine, 1 when the load average is >= 1.5: "
        "2 intra-op threads on 2 busy cores run 10-100x slower and would take minutes)",
    )
    parser.add_argument("--tasks", nargs="+", default=["digits-mlp", "digits-cnn"])
    args = parser.parse_args()
    args.threads = args.threads or ([1, 2] if os.getloadavg()[0] < 1.5 else [1])
    print(
        f"cores: {os.cpu_count()}  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  "
        f"epochs: {args.epochs}  "
        f"threads tried: {args.threads}"
    )
    header = (
        f"{'task':<11} {'mode':<11} {'N':>4} {'threads':>7} {'trials/s':>9} {'vs seq':>7} {'MiB/member':>10} "
        f"{'best acc':>8}"
    )
    print(header)
    print("-" * len(header))
    speedups: dict[tuple[str, int], float] = {}
    for task_name in args.tasks:
        rows = [("sequential", SEQUENTIAL_TRIALS.get(task_name, 4))] + [("population", n) for n in args.sizes]
        baseline = None
        for mode, n in rows:
            measured = {threads: run_one(task_name, mode, n, threads, args.epochs) for threads in args.threads}
            threads, (rate, mib, best) = max(measured.items(), key=lambda item: item[1][0])
            baseline = baseline or rate
            speedups[(task_name, n if mode == "population" else 0)] = rate / baseline
            label = "/".join(f"{t}:{measured[t][0]:.1f}" for t in args.threads)
            print(
                f"{task_name:<11} {mode:<11} {n:>4} {threads:>7} {rate:>9.2f} {rate / baseline:>6.1f}x {mib:>10.2f} "
                f"{best:>8.3f}   (trials/s by threads {label})"
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if ("digits-mlp", 32) in speedups:
        print(f"population speedup N=32: {speedups[('digits-mlp', 32)]:.1f}x")


if __name__ == "__main__":
    main()
