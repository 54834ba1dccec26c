"""What a trial's writes and the finished-trial count cost on SQLite: Optuna's API against tuner.study.storage.sql,
one run.

Per trial of a study on a file SQLite storage (WAL, as the engine opens it): the end-of-trial writes (``--values``
intermediate values and 3 user attrs) made with ``trial.report``/``trial.set_user_attr``, one transaction each,
against ``write_trial`` (one transaction); and the count of finished trials by ``study.get_trials`` against
``count_trials``. The two ways alternate trial by trial, so they share the machine's noise; medians are printed.

    .venv/bin/python bench/study_sql.py [--trials 40] [--values 12]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings

import optuna
from optuna.trial import TrialState

from tuner.study.records import FINISHED
from tuner.study.storage import open_storage
from tuner.study.storage.sql import count_trials, write_trial


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return 1000 * (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--values", type=int, default=12)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
    attrs = {"total_steps": 1000, "reason": "completed", "duration_s": 1.234}
    values = {step: 0.9 - step / 100 for step in range(args.values)}

    def by_api(trial: optuna.Trial) -> None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        for step, value in values.items():
            trial.report(value, step)

    times: dict[str, list[float]] = {"api writes": [], "write_trial": [], "get_trials count": [], "count_trials": []}
    with tempfile.TemporaryDirectory() as directory:
        study = optuna.create_study(study_name="bench", storage=open_storage(f"sqlite:///{directory}/tuner.db"))
        for number in range(2 * args.trials):
            trial = study.ask()
            if number % 2:
                times["api writes"].append(timed(lambda trial=trial: by_api(trial)))
            else:
                times["write_trial"].append(timed(lambda trial=trial: write_trial(trial, attrs, values)))
            study.tell(trial, 1.0 if number % 3 else None, state=None if number % 3 else TrialState.PRUNED)
            times["get_trials count"].append(timed(lambda: len(study.get_trials(deepcopy=False, states=FINISHED))))
            times["count_trials"].append(timed(lambda: count_trials(study, FINISHED)))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"{args.trials} trials each way; {args.values} intermediate values + {len(attrs)} user attrs per trial")
    print(f"{'per trial':<22}{'Optuna API ms':>14}{'study_sql ms':>14}{'ratio':>8}")
    for what, api, ours in (
        ("end-of-trial writes", "api writes", "write_trial"),
        ("finished count", "get_trials count", "count_trials"),
    ):
        print(f"{what:<22}{median[api]:>14.2f}{median[ours]:>14.2f}{median[api] / median[ours]:>7.1f}x")


if __name__ == "__main__":
    main()
