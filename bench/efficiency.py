"""Efficiency: how much training compute does each way of tuning need? Every arm side by side, in one run.

Tasks where the optimizer and schedule matter: ``digits-cnn``, ``charlm``, an ill-conditioned noisy ``quadratic``
(condition number 10^4, label noise 1.0) and an MLP on ``tabular-mlp`` (scikit-learn's breast-cancer set). Arms:

* ``random``      random search over the catalog space (the five-line study file's, with the catalog's LR ranges:
                  ``space.lr: catalog``), no pruning;
* ``naive``       hand-written Optuna: ``TPESampler`` over optimizer choice + a log-uniform LR, nothing else, no
                  pruning, each trial ``tuner.fit`` (what a user writes first);
* ``defaults``    the five-line study file as it is: tuner's default sampler, pruner and LR ranges (``lr: auto``
                  when its range tests cost at most a fifth of the planned study, as in every setup here);
* ``catalog-lr``  the same file with ``space.lr: catalog`` (the defaults before ``lr: auto`` became one);
* ``lr-auto``     the same file with ``space.lr: auto`` (its LR range test's steps are counted; not run unless named);
* ``population``  the same file run with ``--population P``;
* ``pbt``         ``strategy: pbt`` with ``budget.population: P``, when this tuner's study file accepts it.

Compute is counted in optimizer steps actually trained: a pruned or diverged trial counts the steps it ran, a
population counts every member's steps, ``lr: auto`` adds its range test's steps in front. Every arm runs until it
has spent the same compute C (the random arm's ``trials x steps``). Per task and arm: the median (over seeds) best
value at C, and the compute to first reach the target, the median final value of random search (trials ordered by
completion, their steps accumulated). Efficiency of a run = random search's median compute to the target / the run's
(0 when it never gets there within C); the last line is the median over tasks x seeds for tuner's defaults, the
line before it a 90% bootstrap interval of that median (each task's seeds drawn again, random search's with them):
with 5 seeds per task it is wide, and sets of 5 seeds differ by as much (docs/benchmarks.md).

    python bench/efficiency.py [--quick] [--seeds 5] [--tasks digits-cnn charlm] [--arms random defaults] [--jobs 2]
        [--variant NAME='{"pruner": {"name": "median", "options": {"n_warmup_steps": 20}}}'] [--save runs.json]

``--quick`` runs only the arms of the last lines (random, naive, defaults) and stops naive and defaults as soon as a
trial reaches the target (``--stop-at-target`` does that for any arms): random search runs every seed to C first
(it sets the target), and the others' compute to the target -- all the last lines need -- is what the full run
gives, because every arm is seeded and deterministic; only the "best at C" column is lost. Same tasks, same study
sizes, same 5 seeds, in a fraction of the time.

``--variant`` adds an arm: the five-line file updated with that JSON (a candidate default), ``population`` and
``strategy`` included. Training runs on the CPU, one thread per run, ``--jobs`` runs at once (default 2) in
worker processes. Arms are deterministic on one CPU, not across CPUs (float32 rounding differs by vector unit), so
the machine line names the CPU.

A candidate is judged on several seed sets, each with its own target: run each set with ``--first-seed S --save``
(``--random-from`` a saved set's random search to skip it), then ``--combine`` the files of every set: the table has
one row group per task and set, and the medians, the interval and the last line pool every task-seed::

    python bench/efficiency.py --quick --first-seed 5 --save set5.json          # and 0, 10, 15
    python bench/efficiency.py --stop-at-target --arms random defaults --first-seed 5 --random-from set5.json \
        --save candidate5.json                                                  # from the candidate's checkout
    python bench/efficiency.py --combine set0.json set5.json ... candidate0.json candidate5.json ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OPTIMIZERS = ["adam", "adamw", "sgd", "momentum"]
SCHEDULES = ["constant", "cosine", "one_cycle"]
NAIVE_LR = (1e-5, 1e-1)  # the log-uniform range a user writes first
POPULATION = 4  # members per pass on the CPU
FULL_ARMS = ["random", "naive", "defaults", "catalog-lr", "population", "pbt"]
QUICK_ARMS = ["random", "naive", "defaults"]  # the arms of the last lines
MAX_TRIALS_FACTOR = 8  # an arm stops at C, or after this many times the random arm's trials
BOOTSTRAP_ROUNDS = 1000  # redraws of the seeds behind the interval printed before the last line


@dataclass(frozen=True)
class TaskSetup:
    """One task of the suite: its study-file ``task`` and ``metric``, a trial's length, the random arm's trials."""

    task: dict[str, Any]
    steps: int
    eval_every: int
    trials: int
    metric: Optional[str] = None
    direction: str = "maximize"

    @property
    def compute(self) -> int:
        """C: the compute every arm gets (random search's trials x steps)."""
        return self.trials * self.steps


SETUPS = {  # studies of 64-96 trials: the quickstart's 50 and more (at 16-24 trials: docs/benchmarks.md)
    "digits-cnn": TaskSetup({"name": "digits-cnn", "options": {"channels": [8, 16]}}, 120, 20, 80),
    "charlm": TaskSetup(
        {"name": "charlm", "options": {"context": 32, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_chars": 60000}},
        150,
        25,
        64,
        direction="minimize",
    ),
    "quadratic": TaskSetup(
        {"name": "quadratic", "options": {"dim": 50, "min_eig": 1e-4, "max_eig": 1.0, "noise": 1.0}},
        200,
        25,
        96,
        "excess_loss",
        "minimize",
    ),
    "tabular-mlp": TaskSetup(
        {"name": "tabular-mlp", "options": {"dataset": "breast-cancer"}}, 100, 20, 96, "loss", "minimize"
    ),
}


@dataclass
class Run:
    """One arm on one task with one seed: (steps, value) per finished trial in completion order, steps spent
    before the first trial (the LR range test), or why the arm is not available."""

    trials: list[tuple[int, Optional[float]]] = field(default_factory=list)
    upfront: int = 0
    unavailable: Optional[str] = None
    seconds: float = 0.0
    stopped_at: Optional[float] = None  # the target it stopped at (--quick), None: it ran until it had spent C


def five_line_file(name: str, setup: TaskSetup, seed: int, directory: Path) -> dict[str, Any]:
    """The study file a user writes first (name, task, budget, space) plus the bench's storage and seed; its
    ``n_trials`` is the random arm's (the study the user plans; an arm runs on past it until it has spent C)."""
    spec: dict[str, Any] = {
        "name": name,
        "task": setup.task,
        "budget": {"steps": setup.steps, "eval_every": setup.eval_every, "n_trials": setup.trials},
        "space": {"optimizers": list(OPTIMIZERS), "schedules": list(SCHEDULES)},
        "seed": seed,
        "device": "cpu",
        "storage": f"sqlite:///{directory / 'bench.db'}",
        "tracking_uri": "none",
    }
    if setup.metric:
        spec.update(metric=setup.metric, direction=setup.direction)
    return spec


def merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in (nested mappings merged, anything else replaced)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def trial_rows(study: Any) -> list[tuple[int, Optional[float]]]:
    """(steps trained, value if COMPLETE) of each finished trial, in completion order."""
    from tuner.study.keys import TrialKeys

    finished = [t for t in study.trials if t.state.is_finished() and t.datetime_complete is not None]
    finished.sort(key=lambda t: (t.datetime_complete, t.number))
    return [
        (int(t.user_attrs.get(TrialKeys.STEPS_DONE) or 0), t.value if t.state.name == "COMPLETE" else None)
        for t in finished
    ]


def range_test_steps(study: Any) -> int:
    """The optimizer steps the study's LR range tests trained (``lr: auto``)."""
    from tuner.study.keys import StudyKeys

    return sum(int(row.get("steps", 0)) for row in study.user_attrs.get(StudyKeys.LR_AUTO, {}).values())


def run_tuner(
    spec: dict[str, Any], setup: TaskSetup, directory: Path, population: int = 1, target: Optional[float] = None
) -> Run:
    """A real study (prepare + run_study) until it has spent C steps (or hit the trial cap), or until a trial
    reaches ``target`` when one is given."""
    from tuner.errors import TunerError
    from tuner.spec import parse_study
    from tuner.study.prepare import prepare
    from tuner.study.runner import RunOptions, run_study

    try:
        prepared = prepare(parse_study(spec), spec_dir=str(ROOT))
    except TunerError as error:
        return Run(unavailable=str(error).splitlines()[0][:80])

    def stop_at_compute(study: Any) -> None:
        rows = trial_rows(study)
        if range_test_steps(study) + sum(steps for steps, _ in rows) >= setup.compute or hit(rows, target, setup):
            study.stop()

    started = time.perf_counter()
    options = RunOptions(n_trials=setup.trials * MAX_TRIALS_FACTOR, population=population)
    study = run_study(prepared, options, on_trial=stop_at_compute)
    return Run(trial_rows(study), range_test_steps(study), seconds=time.perf_counter() - started, stopped_at=target)


def hit(rows: list[tuple[int, Optional[float]]], target: Optional[float], setup: TaskSetup) -> bool:
    """Whether a run told to stop at ``target`` has a trial that reached it (its compute to the target is known)."""
    return target is not None and any(reached(value, target, setup.direction) for _, value in rows)


def run_naive(setup: TaskSetup, seed: int, target: Optional[float] = None) -> Run:
    """Hand-written Optuna: TPE over optimizer + log-uniform LR, no pruning, each trial ``tuner.fit``; until it has
    spent C, or until a trial reaches ``target`` when one is given."""
    import optuna

    from tuner.recipe import Recipe
    from tuner.tasks import load_task
    from tuner.train.progress import TrainBudget
    from tuner.train.trainer import fit

    task = load_task(setup.task["name"], setup.task.get("options", {}))
    metric = setup.metric or task.metric
    budget = TrainBudget(steps=setup.steps, eval_every=setup.eval_every)
    rows: list[tuple[int, Optional[float]]] = []

    def objective(trial: optuna.Trial) -> float:
        recipe = Recipe(
            optimizer=trial.suggest_categorical("optimizer", OPTIMIZERS),
            lr=trial.suggest_float("lr", *NAIVE_LR, log=True),
        )
        result = fit(task, recipe, budget, metric=metric, device="cpu", seed=seed * 1000 + trial.number)
        counted = result.counted
        value = counted[metric] if counted and math.isfinite(counted[metric]) else None
        rows.append((result.steps_done, value))
        if sum(steps for steps, _ in rows) >= setup.compute or hit(rows, target, setup):
            trial.study.stop()
        return math.nan if value is None else value  # NaN: Optuna marks the trial FAIL, as a user's would be

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction=setup.direction, sampler=optuna.samplers.TPESampler(seed=seed))
    started = time.perf_counter()
    study.optimize(objective, n_trials=setup.trials * MAX_TRIALS_FACTOR)
    return Run(rows, seconds=time.perf_counter() - started, stopped_at=target)


def pbt_available() -> bool:
    """Whether this tuner's study file has ``strategy`` (an older checkout has no PBT)."""
    from tuner.spec import StudySpec

    return "strategy" in StudySpec.model_fields


Arm = Callable[[TaskSetup, int, Path, Optional[float]], Run]
"""How to run one arm: (task setup, seed, a fresh directory, the target to stop at or None) -> its Run."""


def arm_table(variants: dict[str, dict[str, Any]]) -> dict[str, Arm]:
    """Arm name -> how to run it."""

    def tuner_arm(update: dict[str, Any], population: int = 1) -> Arm:
        def run(setup: TaskSetup, seed: int, directory: Path, target: Optional[float] = None) -> Run:
            spec = merged(five_line_file("bench", setup, seed, directory), update)
            budget = spec["budget"]  # PBT keeps budget.population (it checks it); others take it as the option
            members = budget.get("population") if "strategy" in spec else budget.pop("population", None)
            return run_tuner(spec, setup, directory, members or population, target)

        return run

    def pbt(setup: TaskSetup, seed: int, directory: Path, target: Optional[float] = None) -> Run:
        if not pbt_available():
            return Run(unavailable="not available")
        # PBT owns the LR (one optimizer, a constant schedule it reshapes): adam, the catalog's first choice
        update = {
            "strategy": "pbt",
            "budget": {"population": POPULATION},
            "space": {"optimizers": ["adam"], "schedules": ["constant"]},
            "pbt": {"interval": 1, "quantile": 0.25},
        }
        return tuner_arm(update)(setup, seed, directory, target)

    arms: dict[str, Arm] = {
        "random": tuner_arm({"sampler": "random", "pruner": "none", "space": {"lr": "catalog"}}),
        "naive": lambda setup, seed, directory, target=None: run_naive(setup, seed, target),
        "defaults": tuner_arm({}),
        "catalog-lr": tuner_arm({"space": {"lr": "catalog"}}),
        "lr-auto": tuner_arm({"space": {"lr": "auto"}}),
        "population": tuner_arm({}, POPULATION),
        "pbt": pbt,
    }
    arms.update({name: tuner_arm(update) for name, update in variants.items()})
    return arms


# -- the analysis (pure) -----------------------------------------------------------------------------------------


def reached(value: Optional[float], target: float, direction: str) -> bool:
    return value is not None and (value >= target if direction == "maximize" else value <= target)


def best_at(run: Run, compute: int, direction: str) -> Optional[float]:
    """The best value among trials that finished within ``compute`` steps (range test included)."""
    spent, values = run.upfront, []
    for steps, value in run.trials:
        spent += steps
        if spent > compute:
            break
        if value is not None:
            values.append(value)
    if not values:
        return None
    return max(values) if direction == "maximize" else min(values)


def compute_to(run: Run, target: float, direction: str, compute: int) -> float:
    """Steps spent when a trial first reaches ``target`` (inf: not within ``compute``)."""
    spent = run.upfront
    for steps, value in run.trials:
        spent += steps
        if spent > compute:
            break
        if reached(value, target, direction):
            return float(spent)
    return math.inf


def median_or_none(values: list[Optional[float]], direction: str) -> Optional[float]:
    """The median, a missing value counting as the worst."""
    worst = -math.inf if direction == "maximize" else math.inf
    finite = [worst if v is None else v for v in values]
    middle = statistics.median_low(sorted(finite)) if len(finite) % 2 == 0 else statistics.median(finite)
    return None if math.isinf(middle) else middle


def target_of(random_runs: list[Run], setup: TaskSetup) -> Optional[float]:
    """The target: random search's median (over seeds) best value at C."""
    return median_or_none([best_at(r, setup.compute, setup.direction) for r in random_runs], setup.direction)


def summarize(runs: dict[str, list[Run]], setup: TaskSetup) -> tuple[float, dict[str, dict[str, Any]]]:
    """The target (random search's median best at C) and, per arm, median best, median compute to the target,
    how many seeds reached it, and each seed's efficiency against random search."""
    compute, direction = setup.compute, setup.direction
    target = target_of(runs["random"], setup)
    if target is None:
        return math.nan, {}
    random_to = statistics.median(compute_to(r, target, direction, compute) for r in runs["random"])
    rows = {}
    for arm, arm_runs in runs.items():
        if any(r.unavailable for r in arm_runs):
            rows[arm] = {"unavailable": arm_runs[0].unavailable}
            continue
        to_target = [compute_to(r, target, direction, compute) for r in arm_runs]
        stopped = any(r.stopped_at is not None for r in arm_runs)  # stopped at the target: no best at C
        rows[arm] = {
            "best": None if stopped else median_or_none([best_at(r, compute, direction) for r in arm_runs], direction),
            "stopped": stopped,
            "to_target": statistics.median(to_target),
            "reached": sum(math.isfinite(t) for t in to_target),
            "ratios": [random_to / t for t in to_target],  # inf steps: ratio 0
            "censored": [min(t, compute) for t in to_target],  # not reached: counted as C (see head_to_head)
            "seconds": statistics.median(r.seconds for r in arm_runs),
        }
    return target, rows


def fmt_steps(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "not reached"


def print_table(results: dict[str, tuple[float, dict[str, dict[str, Any]]]], setups: dict[str, TaskSetup]) -> None:
    print(
        "\n| task | arm | best at C (median) | steps to target (median) | reached | efficiency (median) | per seed "
        "| s/run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for task, (target, rows) in results.items():
        setup = setups[task]
        for arm, row in rows.items():
            if "unavailable" in row:
                print(f"| {task} | {arm} | n/a ({row['unavailable']}) | | | | | |")
                continue
            best = (
                "not measured (stops at target)"
                if row["stopped"]
                else "none"
                if row["best"] is None
                else f"{row['best']:.4f}"
            )
            print(
                f"| {task} (C={setup.compute:,}, target {target:.4f}) | {arm} | {best} | {fmt_steps(row['to_target'])}"
                f" | {row['reached']}/{len(row['ratios'])} | {statistics.median(row['ratios']):.2f}x"
                f" | {' '.join(f'{r:.1f}' for r in row['ratios'])} | {row['seconds']:.1f} |"
            )


def head_to_head(results: dict[str, tuple[float, dict[str, dict[str, Any]]]], arm: str, other: str) -> float:
    """The median over tasks x seeds of ``other``'s compute to the target / ``arm``'s, a run that never reached it
    counted as C: a lower bound of the ratio where only ``other`` missed, an upper bound where only ``arm`` did."""
    ratios = [
        theirs / ours
        for _, rows in results.values()
        if arm in rows and other in rows and "censored" in rows[arm] and "censored" in rows[other]
        for ours, theirs in zip(rows[arm]["censored"], rows[other]["censored"])
    ]
    return statistics.median(ratios) if ratios else math.nan


def overall(results: dict[str, tuple[float, dict[str, dict[str, Any]]]], arm: str) -> tuple[float, int]:
    """The median efficiency of ``arm`` over tasks x seeds, and how many (task, seed) pairs it covers."""
    ratios = [r for _, rows in results.values() if arm in rows for r in rows[arm].get("ratios", [])]
    return (statistics.median(ratios) if ratios else math.nan), len(ratios)


def bootstrap_interval(
    runs: dict[str, dict[str, list[Run]]], setups: dict[str, TaskSetup], arm: str, rounds: int = BOOTSTRAP_ROUNDS
) -> Optional[tuple[float, float]]:
    """A 90% interval of ``arm``'s median efficiency: each task's seeds drawn again with replacement ``rounds`` times
    (random search's runs with them, so the target moves too), the 5th and 95th percentiles of the medians."""
    draw = random.Random(0)
    medians = []
    for _ in range(rounds):
        ratios = []
        for task, by_arm in runs.items():
            if arm not in by_arm or "random" not in by_arm:
                continue
            picks = [draw.randrange(len(by_arm["random"])) for _ in by_arm["random"]]
            _, rows = summarize({a: [by_arm[a][i] for i in picks] for a in ("random", arm)}, setups[task])
            ratios += rows.get(arm, {}).get("ratios", [])
        if ratios:
            medians.append(statistics.median(ratios))
    if not medians:
        return None
    medians.sort()
    return medians[int(0.05 * len(medians))], medians[math.ceil(0.95 * len(medians)) - 1]


# -- the run ---------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"only the arms of the last lines ({QUICK_ARMS}), each stopped at the target",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds per arm (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed + 1, ... (default 0)")
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--arms", nargs="+", default=None, help=f"default {FULL_ARMS}; with --quick {QUICK_ARMS}")
    parser.add_argument("--variant", action="append", default=[], help="NAME=JSON: an extra arm (a candidate default)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at once (processes)")
    parser.add_argument(
        "--stop-at-target",
        action="store_true",
        help="every arm but random stops once a trial reaches the target (as --quick does): no best at C",
    )
    parser.add_argument("--save", type=Path, default=None, help="also write every run to this JSON file")
    parser.add_argument(
        "--random-from",
        type=Path,
        default=None,
        help="take random search's runs from this --save file instead of running them again (they are deterministic)",
    )
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        default=None,
        help="print the table of runs saved by --save (no training); a later file's arm replaces an earlier one's; "
        "files of several --first-seed sets pool, each set against its own target",
    )
    args = parser.parse_args()
    if args.combine:
        return combine([json.loads(path.read_text()) for path in args.combine])

    import torch

    setups = {name: SETUPS[name] for name in (args.tasks or SETUPS)}
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    variants = {name: json.loads(text) for name, text in (item.split("=", 1) for item in args.variant)}
    arms = args.arms or (QUICK_ARMS if args.quick else FULL_ARMS) + list(variants)
    unknown = set(arms) - arm_table(variants).keys()
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}; known: {sorted(arm_table(variants))}")
    stop = args.quick or args.stop_at_target
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__} (1 thread per run, {args.jobs} runs at once); {'quick' if args.quick else 'full'}: "
        f"{len(seeds)} seeds; space {OPTIMIZERS} x {SCHEDULES}; PBT {'' if pbt_available() else 'not '}available"
        + ("; arms but random stop at the target" if stop else ""),
        flush=True,
    )
    started = time.perf_counter()
    known = saved_random(args.random_from, setups, seeds) if args.random_from else {}
    runs = run_all(arms, variants, setups, seeds, args.jobs, stop, known)
    if args.save:
        data = {
            "seeds": len(seeds),
            "first_seed": seeds[0],
            "runs": {t: {a: [asdict(r) for r in rs] for a, rs in by_arm.items()} for t, by_arm in runs.items()},
        }
        args.save.write_text(json.dumps(data))
    report(runs, setups, len(seeds), time.perf_counter() - started)


def cpu_model() -> str:
    """The CPU's model and widest vector unit (runs are deterministic on one CPU, not across CPUs: float32 rounding
    in a vector unit can move a trial's value and so the search after it; docs/benchmarks.md, seventh session)."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    vector = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    parts = [model or platform.processor() or platform.machine(), vector]
    return ", ".join(part for part in parts if part)


def combine(saved: list[dict[str, Any]]) -> None:
    """The table of runs saved by ``--save``. Files of one seed set (``--first-seed``) merge, a later file's arm of a
    task replacing an earlier one's (a rerun of that arm); files of several seed sets pool: each set's runs are
    measured against that set's own target, and the medians and the last line are over every task-seed of them."""
    sets: dict[int, dict[str, dict[str, list[Run]]]] = {}
    seeds: dict[int, int] = {}
    for data in saved:
        first = data.get("first_seed", 0)
        seeds[first] = max(seeds.get(first, 0), data["seeds"])
        for task, by_arm in data["runs"].items():
            by_set = sets.setdefault(first, {}).setdefault(task, {})
            by_set.update({arm: [Run(**run) for run in rs] for arm, rs in by_arm.items()})
    if len(sets) == 1:
        return report(next(iter(sets.values())), SETUPS, next(iter(seeds.values())), 0.0)
    labelled = {  # one row group per task and seed set, each with its own target
        f"{task} seeds {first}-{first + seeds[first] - 1}": (task, by_arm)
        for first, runs in sorted(sets.items())
        for task, by_arm in runs.items()
    }
    tasks = {task for task, _ in labelled.values()}
    scope = f"{len(tasks)} tasks x {sum(seeds.values())} seeds, {len(sets)} seed sets, each against its own target"
    report(
        {label: by_arm for label, (_, by_arm) in labelled.items()},
        {label: SETUPS[task] for label, (task, _) in labelled.items()},
        sum(seeds.values()),
        0.0,
        scope,
    )


def saved_random(path: Path, setups: dict[str, TaskSetup], seeds: list[int]) -> dict[tuple[str, str, int], Run]:
    """Random search's runs of these tasks and seeds from a ``--save`` file."""
    data = json.loads(path.read_text())
    first = data.get("first_seed", 0)
    return {
        (task, "random", seed): Run(**data["runs"][task]["random"][seed - first])
        for task in setups
        if "random" in data["runs"].get(task, {})
        for seed in seeds
        if 0 <= seed - first < len(data["runs"][task]["random"])
    }


def run_one(arm: str, variants: dict[str, dict[str, Any]], setup: TaskSetup, seed: int, target: Optional[float]) -> Run:
    """One arm on one task with one seed, in a fresh directory, torch on one thread (a worker process's job)."""
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as directory:
        return arm_table(variants)[arm](setup, seed, Path(directory), target)


def run_all(
    arms: list[str],
    variants: dict[str, dict[str, Any]],
    setups: dict[str, TaskSetup],
    seeds: list[int],
    jobs: int,
    stop_at_target: bool,
    known: Optional[dict[tuple[str, str, int], Run]] = None,
) -> dict[str, dict[str, list[Run]]]:
    """Every arm on every task and seed, ``jobs`` runs at once, with a line per run (``known`` runs are not run
    again). With ``stop_at_target`` a task's other arms start once its random search has run every seed (that sets
    the target they stop at)."""
    done: dict[tuple[str, str, int], Run] = dict(known or {})
    others = [arm for arm in arms if arm != "random"]
    waiting = dict.fromkeys(setups, "random" in arms and stop_at_target)
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) if jobs > 1 else ThreadPoolExecutor(1)
    with pool:
        pending = {
            pool.submit(run_one, arm, variants, setups[task], seed, None): (task, arm, seed)
            for task in setups
            for arm in (["random"] if waiting[task] else arms)
            for seed in seeds
            if (task, arm, seed) not in done
        }

        def start_others(task: str) -> None:
            if waiting[task] and all((task, "random", s) in done for s in seeds):
                waiting[task] = False
                target = target_of([done[task, "random", s] for s in seeds], setups[task])
                for other in others:
                    for s in seeds:
                        pending[pool.submit(run_one, other, variants, setups[task], s, target)] = (task, other, s)

        for task in setups:
            start_others(task)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                task, arm, seed = pending.pop(future)
                run = done[task, arm, seed] = future.result()
                spent = run.upfront + sum(s for s, _ in run.trials)
                shown = f"n/a ({run.unavailable})" if run.unavailable else f"{len(run.trials)} trials, {spent:,} steps"
                print(f"  {task} seed {seed} {arm}: {shown}, {run.seconds:.1f}s", flush=True)
                start_others(task)
    return {task: {arm: [done[task, arm, s] for s in seeds] for arm in arms} for task in setups}


def report(
    runs: dict[str, dict[str, list[Run]]],
    setups: dict[str, TaskSetup],
    seeds: int,
    wall: float,
    scope: Optional[str] = None,
) -> None:
    """The table, each arm's median efficiency and head-to-head against naive, and the last line (``scope``: what it
    is the median over; by default the tasks x seeds of the runs)."""
    results = {task: summarize(by_arm, setups[task]) for task, by_arm in runs.items() if "random" in by_arm}
    for task in runs.keys() - results.keys():
        print(f"{task}: no random arm, so no target (--combine these runs with a file that has it)")
    arms = list(dict.fromkeys(arm for by_arm in runs.values() for arm in by_arm))
    print_table(results, setups)
    if wall:
        print(f"\nwall: {wall:.0f} s")
    for arm in arms:
        ratio, count = overall(results, arm)
        if count:
            print(f"{arm:>12}: median efficiency vs random search {ratio:.2f}x over {count} task-seeds")
    for arm in arms:
        if arm not in ("naive", "random") and "naive" in arms and overall(results, arm)[1]:
            versus = head_to_head(results, arm, "naive")
            print(f"{arm:>12}: vs hand-written naive Optuna {versus:.2f}x (steps to the target; not reached = C)")
    ratio, count = overall(results, "defaults")
    interval = bootstrap_interval(runs, setups, "defaults") if count else None
    if interval:
        print(
            f"    defaults: 90% bootstrap interval of that median {interval[0]:.2f}x - {interval[1]:.2f}x (each task's "
            f"seeds drawn again {BOOTSTRAP_ROUNDS} times)"
        )
    shown = f"{ratio:.2f}x" if count else "n/a (the defaults arm did not run)"
    print(f"efficiency vs random search: {shown} ({scope or f'{len(results)} tasks x {seeds} seeds'})")


if __name__ == "__main__":
    main()
