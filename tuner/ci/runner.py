"""Running locked recipes: one training run per (recipe, seed), here or in worker processes, and ``regress``.

``regress`` validates every lock, re-runs every locked recipe on its seeds and judges each with the pass rule
(``tuner.ci.rule``): paired over the locked seeds that were re-run (``compare``); fresh seeds beyond the lock are
reported apart. Imports no Optuna or MLflow; torch is imported by the functions that train.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

from tuner.ci.lockfile import LockedRecipe, LockFile, read_lock, tuner_version
from tuner.ci.rule import Verdict, judge
from tuner.errors import TunerError
from tuner.recipe import Recipe


def derive_seeds(base: int, count: int, start: int = 0) -> list[int]:
    """``count`` fixed per-run seeds derived from ``base`` (seeds ``start .. start+count-1`` of one stable stream)."""
    seeds = []
    for index in range(start, start + count):
        digest = hashlib.sha256(f"tuner-lock:{base}:{index}".encode()).digest()
        seeds.append(int.from_bytes(digest[:4], "little") & 0x7FFFFFFF)
    return seeds


def environment(device: str) -> dict[str, Any]:
    """Versions, device and platform of this process (informational; differences are reported, not refused)."""
    import importlib.metadata

    import torch

    from tuner.train import resolve_device

    resolved = resolve_device(device)
    env: dict[str, Any] = {"tuner": tuner_version(), "torch": torch.__version__}
    for package in ("optuna", "scipy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            env[package] = importlib.metadata.version(package)
    env.update(
        python=platform.python_version(),
        platform=platform.platform(),
        machine=platform.machine(),
        device=str(resolved),
        threads=torch.get_num_threads(),
    )
    if resolved.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(resolved)
    return env


@dataclass(frozen=True)
class FitJob:
    """One training run of a locked recipe on one seed (picklable: it crosses to worker processes).

    It trains a task (``task_name``, ``task_options``), or calls the user's ``train`` function, or runs the user's
    ``command`` (in ``base_dir``); task files and train files are found in ``base_dir`` too."""

    task_name: Optional[str]
    task_options: dict[str, Any]
    base_dir: str
    recipe: dict[str, Any]
    budget: dict[str, Any]
    metric: str
    direction: str
    device: str
    seed: int
    deterministic: bool
    train: Optional[str] = None
    command: Optional[Union[str, list[str]]] = None


@dataclass(frozen=True)
class SeedResult:
    """One locked recipe trained on one seed: its value (None: no finite evaluation), status, reason, seconds."""

    seed: int
    value: Optional[float]  # best evaluation of the metric; None when the run produced no finite evaluation
    status: str
    reason: str
    seconds: float


_TASKS: dict[str, Any] = {}


def _task_for(job: FitJob) -> Any:
    from tuner.tasks import load_task

    key = json.dumps([job.task_name, job.task_options, job.base_dir], sort_keys=True, default=str)
    if key not in _TASKS:
        _TASKS[key] = load_task(job.task_name, job.task_options, base_dir=job.base_dir)
    return _TASKS[key]


def fit_job(job: FitJob) -> SeedResult:
    """Train one locked recipe on one seed; the value is what the study counted: the best evaluation of a task's run,
    the final metrics of the user's own code."""
    from tuner.train import TrainBudget, fit

    if job.task_name is None:
        with _deterministic_restored():
            return _own_code_job(job)
    budget = {key: value for key, value in job.budget.items() if key != "trial_timeout"}
    with _deterministic_restored():
        result = fit(
            _task_for(job),
            Recipe.from_dict(job.recipe),
            TrainBudget(**budget),
            metric=job.metric,
            direction=job.direction,
            device=job.device,
            seed=job.seed,
            deterministic=job.deterministic,
        )
    counted = result.counted
    value = counted.get(job.metric) if counted is not None and result.status != "diverged" else None
    return SeedResult(job.seed, value, result.status, result.reason, result.seconds)


def _own_code_job(job: FitJob) -> SeedResult:
    """A locked recipe trained by the user's train function or command (no reports reach a study)."""
    from tuner.errors import UserCodeError
    from tuner.tasks import load_function
    from tuner.train import TrainBudget, resolve_device
    from tuner.train.command import CommandFailed, command_argv, run_command
    from tuner.train.trial import Trial, TrialInfo, run_function

    budget = TrainBudget(**{key: value for key, value in job.budget.items() if key != "trial_timeout"})
    info = TrialInfo(
        0,
        "lock",
        Recipe.from_dict(job.recipe),
        {},
        job.seed,
        str(resolve_device(job.device)),
        budget,
        job.metric,
        job.direction,
        job.deterministic,
        dict(job.task_options),
    )
    try:
        if job.train is not None:
            function, _, _ = load_function(job.train, base_dir=job.base_dir, kind="train")
            result = run_function(function, Trial(info))
        else:
            assert job.command is not None
            result = run_command(
                command_argv(job.command, job.base_dir),
                info,
                lambda evaluation: False,
                cwd=job.base_dir,
                timeout=job.budget.get("trial_timeout"),
            )
    except (UserCodeError, CommandFailed) as error:
        return SeedResult(job.seed, None, "failed", f"error: {error}", 0.0)
    counted = result.counted if result.status != "stopped" else None
    value = counted.get(job.metric) if counted is not None else None
    return SeedResult(job.seed, value, result.status, result.reason, result.seconds)


@contextlib.contextmanager
def _deterministic_restored() -> Iterator[None]:
    """``fit(deterministic=True)`` switches torch's deterministic algorithms on process-wide; switch them back."""
    import torch

    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def run_jobs(jobs: Sequence[FitJob], processes: int = 1) -> list[SeedResult]:
    """Run ``jobs`` here (``processes == 1``) or in that many spawned processes sharing the CPU cores; same order."""
    if processes <= 1 or len(jobs) <= 1:
        return [fit_job(job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = min(processes, len(jobs))
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(threads,)
    ) as pool:
        return list(pool.map(fit_job, jobs))


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Comparison:
    """What the pass rule compares for one locked recipe (``compare``).

    ``locked`` and ``new`` are the values on the seeds both sides have, seed by seed (``paired``); when no locked seed
    was re-run they are all the locked and all the new values (Welch's test, ``paired`` False). ``fresh`` are the
    new values on seeds the lock does not hold: reported, not tested, whenever a paired test is possible."""

    locked: list[float]
    new: list[float]
    paired: bool
    fresh: list[float] = field(default_factory=list)

    def describe(self) -> str:
        """How the test was made, and the fresh seeds' mean, for the verdict's reason."""
        if self.paired:
            scope = f"over the {len(self.new)} locked seed{'s' * (len(self.new) != 1)} re-run"
            if self.fresh:
                scope += (
                    f"; {len(self.fresh)} fresh seed{'s' * (len(self.fresh) != 1)} beyond the lock: "
                    f"mean {statistics.fmean(self.fresh):.4g} (reported, not in the test)"
                )
            return scope
        return "(no locked seed was re-run: Welch's test of the new values against the locked ones)"


def compare(entry: LockedRecipe, new: Sequence[SeedResult]) -> Comparison:
    """Pair ``new`` with the locked values on the seeds both sides have; the other new seeds are fresh. A run without
    a value is left out (``verdict_for`` fails the recipe on it before comparing)."""
    locked = dict(zip(entry.seeds, entry.values))
    values = {r.seed: float(r.value) for r in new if r.value is not None}
    common = [seed for seed in values if seed in locked]
    fresh = [value for seed, value in values.items() if seed not in locked]
    if not common:
        return Comparison(list(entry.values), fresh, paired=False)
    return Comparison([locked[seed] for seed in common], [values[seed] for seed in common], True, fresh)


@dataclass(frozen=True)
class CaseResult:
    """The check of one locked recipe: locked and new values, the verdict."""

    lock_path: str
    lock: LockFile
    entry: LockedRecipe
    seeds: list[int]
    new: list[SeedResult]
    verdict: Verdict
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``lock_path#rank``: how the summaries name this locked recipe."""
        return f"{self.lock_path}#{self.entry.rank}"

    @property
    def compared(self) -> Comparison:
        """The locked and new values the pass rule compared (``compare``)."""
        return compare(self.entry, self.new)


def plan_seeds(entry: LockedRecipe, count: Optional[int], study_seed_base: int = 0) -> list[int]:
    """The seeds ``tuner regress --seeds count`` runs: the locked seeds (``count`` None or their number), the first
    ``count`` of them (fewer), or all of them plus fresh ones derived after them (more). The test is paired over the
    locked ones either way (``compare``)."""
    if count is None or count == len(entry.seeds):
        return list(entry.seeds)
    if count < len(entry.seeds):
        return list(entry.seeds[:count])
    fresh = [s for s in derive_seeds(study_seed_base + entry.rank, count * 2, start=10_000) if s not in entry.seeds]
    return list(entry.seeds) + fresh[: count - len(entry.seeds)]


def jobs_for(
    lock: LockFile, lock_path: str | Path, entry: LockedRecipe, seeds: Sequence[int], device: Optional[str] = None
) -> list[FitJob]:
    """One ``FitJob`` per seed for a locked recipe; relative task and train files are found next to the lock file, a
    command runs in its ``workdir``."""
    base_dir = source_dir(lock, lock_path)
    return [
        FitJob(
            lock.task.name if lock.task is not None else None,
            dict(source.options) if (source := lock.task or lock.train) is not None else {},
            base_dir,
            dict(entry.recipe),
            lock.budget.model_dump(),
            lock.metric,
            lock.direction,
            device or lock.device,
            seed,
            lock.deterministic,
            lock.train.name if lock.train is not None else None,
            lock.command,
        )
        for seed in seeds
    ]


def source_dir(lock: LockFile, lock_path: str | Path) -> str:
    """Where a lock's task or train file is found, or its command runs: next to the lock (or its ``workdir``)."""
    folder = Path(lock_path).resolve().parent
    return str((folder / lock.workdir).resolve() if lock.workdir else folder)


def check_tasks(locks: Sequence[tuple[str, LockFile]]) -> None:
    """Load every lock's task (or train function, or check its command) once before anything trains: an unknown
    task, a broken file or a missing program is a ``TunerError``."""
    from tuner.tasks import load_function, load_task
    from tuner.train.command import command_argv

    for path, lock in locks:
        base_dir = source_dir(lock, path)
        try:
            if lock.train is not None:
                load_function(lock.train.name, base_dir=base_dir, kind="train")
                continue
            if lock.command is not None:
                command_argv(lock.command, base_dir)
                continue
            assert lock.task is not None
            task = load_task(lock.task.name, lock.task.options, base_dir=base_dir)
        except TunerError as error:
            key = "train" if lock.train is not None else "command" if lock.command is not None else "task"
            raise TunerError(f"{path}: {key}: {error}") from None
        if lock.metric not in task.directions:
            raise TunerError(
                f"{path}: metric: unknown metric {lock.metric!r} for task {lock.source!r}; "
                f"valid metrics: {', '.join(sorted(task.directions))}"
            )


def regress(
    paths: Sequence[str | Path], *, seeds: Optional[int] = None, jobs: int = 1, device: Optional[str] = None
) -> list[CaseResult]:
    """Validate every lock, re-run every locked recipe on its seeds, and judge each one with the pass rule."""
    locks = [(str(path), read_lock(path)) for path in paths]
    check_tasks(locks)
    planned = []
    for path, lock in locks:
        for entry in lock.recipes:
            chosen = plan_seeds(entry, seeds)
            planned.append((path, lock, entry, chosen, jobs_for(lock, path, entry, chosen, device)))
    results = run_jobs([job for *_, case_jobs in planned for job in case_jobs], jobs)
    cases, offset = [], 0
    here = environment(device or "auto")
    for path, lock, entry, chosen, case_jobs in planned:
        new = results[offset : offset + len(case_jobs)]
        offset += len(case_jobs)
        cases.append(
            CaseResult(
                path,
                lock,
                entry,
                chosen,
                new,
                verdict_for(lock, entry, new),
                sum(r.seconds for r in new),
                environment_notes(lock.environment, here),
            )
        )
    return cases


def verdict_for(lock: LockFile, entry: LockedRecipe, new: Sequence[SeedResult]) -> Verdict:
    """The pass rule for one locked recipe over what ``compare`` pairs; a diverged or evaluation-less run fails on
    its own."""
    broken = [r for r in new if r.value is None or r.status == "diverged"]
    if broken:
        first = broken[0]
        return Verdict(
            False,
            math.inf,
            entry.tolerance,
            0.0,
            "diverged",
            f"seed {first.seed}: {first.reason or first.status or 'no evaluation'}",
        )
    compared = compare(entry, new)
    verdict = judge(
        compared.locked, compared.new, lock.direction, entry.tolerance, lock.rule.alpha, paired=compared.paired
    )
    return replace(verdict, reason=f"{verdict.reason} {compared.describe()}")


def environment_notes(locked: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """'torch: locked 2.13.0, now 2.14.0' for each version, device or platform that differs."""
    keys = ("tuner", "torch", "device", "platform", "machine", "device_name")
    return [
        f"{key}: locked {locked.get(key)}, now {here.get(key)}"
        for key in keys
        if key in locked and locked.get(key) != here.get(key)
    ]


def created_now() -> str:
    """The current UTC time, to the second, in ISO format (a lock's ``created``)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
