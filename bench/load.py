"""Load benchmark: 8 worker processes x 250 trivial trials on one PostgreSQL study.

Starts a throw-away PostgreSQL 15 (tests/service_fixtures.py), then runs the same load twice, side by side:
``tuner`` storage (heartbeats on, reconnecting calls; tuner.study.storage.open_storage) and Optuna's plain
``RDBStorage``.
The objective is trivial (x**2), so the time per trial is the storage's (and the random sampler's) overhead.
Prints trials/s, overhead per trial in ms, and lost/duplicated trials (must be 0).

    .venv/bin/python bench/load.py [--workers 8] [--trials 250]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _worker(kind: str, url: str, study: str, trials: int, queue) -> None:
    import optuna

    from tuner.study.prepare import quiet_libraries
    from tuner.study.storage import open_storage

    quiet_libraries()
    storage = open_storage(url) if kind == "tuner" else optuna.storages.RDBStorage(url)
    loaded = optuna.load_study(study_name=study, storage=storage, sampler=optuna.samplers.RandomSampler())
    numbers: list[int] = []
    started = time.perf_counter()
    loaded.optimize(
        lambda t: t.suggest_float("x", -10, 10) ** 2, n_trials=trials, callbacks=[lambda s, t: numbers.append(t.number)]
    )
    queue.put((numbers, time.perf_counter() - started))


def run(kind: str, url: str, workers: int, trials: int) -> dict:
    import optuna

    name = f"load-{kind}"
    optuna.create_study(study_name=name, storage=url)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_worker, args=(kind, url, name, trials, queue)) for _ in range(workers)]
    started = time.perf_counter()
    for process in processes:
        process.start()
    results = [queue.get() for _ in processes]
    wall = time.perf_counter() - started
    for process in processes:
        process.join()
    stored = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    reported = Counter(number for numbers, _ in results for number in numbers)
    complete = {t.number for t in stored if t.state.name == "COMPLETE"}
    busy = sum(seconds for _, seconds in results)
    return {
        "kind": kind,
        "wall_s": wall,
        "trials": len(stored),
        "complete": len(complete),
        "trials_per_s": len(complete) / max(busy / workers, 1e-9),
        "ms_per_trial": 1000 * busy / max(sum(reported.values()), 1),
        "lost": len(set(reported) - complete) + workers * trials - len(complete),
        "duplicated": sum(count - 1 for count in reported.values() if count > 1)
        + len(stored)
        - len({t.number for t in stored}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=250)
    args = parser.parse_args()
    from service_fixtures import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        rows = [
            run(kind, server.create_database(f"load_{kind}"), args.workers, args.trials) for kind in ("tuner", "plain")
        ]
    finally:
        server.close()
    print(f"{args.workers} workers x {args.trials} trivial trials on PostgreSQL (random sampler)")
    print(
        f"{'storage':8} {'trials':>7} {'complete':>8} {'trials/s':>9} {'ms/trial/worker':>16} "
        f"{'lost':>5} {'dup':>4} {'wall s':>7}"
    )
    for row in rows:
        print(
            f"{row['kind']:8} {row['trials']:7d} {row['complete']:8d} {row['trials_per_s']:9.1f} "
            f"{row['ms_per_trial']:16.1f} "
            f"{row['lost']:5d} {row['duplicated']:4d} {row['wall_s']:7.1f}"
        )
    ours, plain = rows
    print(
        f"ratio tuner/plain: ms per trial x{ours['ms_per_trial'] / plain['ms_per_trial']:.2f}, "
        f"trials/s x{ours['trials_per_s'] / plain['trials_per_s']:.2f}"
    )
    assert all(row["lost"] == 0 and row["duplicated"] == 0 for row in rows), "lost or duplicated trials"


if __name__ == "__main__":
    main()
