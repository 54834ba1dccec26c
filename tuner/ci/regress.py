"""Lock files and the regression check behind ``tuner lock`` and ``tuner regress``.

A lock file (``studies/NAME.lock.yaml``) holds the best recipe(s) of a study re-trained over fixed seeds at full
budget: task reference and options, recipe, budget, metric and direction, per-seed values, mean and std, the pass
rule and its tolerance, versions, device and platform. ``tuner regress`` re-runs every locked recipe on the locked
seeds and applies the pass rule.

The pass rule
-------------
Let ``worse`` be how much the new mean is worse than the locked mean, in metric units (locked − new for a metric
to maximize, new − locked for one to minimize). Each locked recipe carries a ``tolerance``, fixed when it is locked::

    tolerance = max(floor, min_effect * locked_std)

``floor`` is an absolute floor in metric units (default: 1% of the locked mean's magnitude) below which a change
never fails, whatever the seeds say; ``min_effect`` (default 0.5) is the minimum effect size, in units of the
locked seed-to-seed standard deviation. The check is a one-sided t-test with that tolerance as its margin::

    H0: true worse <= tolerance        H1: true worse > tolerance        REGRESSED when p < alpha (default 0.05)

* On the locked seeds (the default) the test is **paired** (``scipy.stats.ttest_1samp`` of the per-seed
  differences against the tolerance): same seed, same initialisation and data order, so the seed noise cancels.
* On other seeds (``--seeds`` more or fewer than the lock holds) it is **Welch's** t-test
  (``scipy.stats.ttest_ind(equal_var=False)``) of the new values against the locked ones.
* When both sides have zero spread (a bit-identical rerun) or a side has a single seed, no test is possible and
  the rule is the plain threshold ``worse > tolerance``.
* A run that diverges, or ends without an evaluation, is a regression by itself.

Since the test's margin is at least the floor, an unchanged recipe on fresh seeds fails far less often than
``alpha`` (measured: ``bench/regress_rates.py``), and a rerun on the same CPU with the same seeds is bit-identical
(``deterministic: true``), so ``worse`` is exactly 0. On another device or platform the per-seed differences are
float noise; the paired test over the seeds, with the tolerance as margin, absorbs them (see README).

This module imports no Optuna or MLflow; torch and scipy are imported inside the functions that train or test.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuner.errors import TunerError
from tuner.recipe import Recipe
from tuner.spec import TaskRef, format_validation_error, read_yaml_mapping

LOCK_VERSION = 1
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_EFFECT = 0.5
DEFAULT_FLOOR_FRACTION = 0.01  # the default floor: this fraction of |locked mean|
MIN_FLOOR = 1e-9
TEST_NAME = "one-sided t-test: REGRESSED when p(worse > tolerance) < alpha; paired on the locked seeds, Welch otherwise"


# -- the lock file ------------------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LockBudget(_Strict):
    """The training budget every locked run uses (``tuner.train.fit.TrainBudget``)."""

    epochs: Optional[int] = Field(None, gt=0)
    steps: Optional[int] = Field(None, gt=0)
    eval_every: Optional[int] = Field(None, gt=0)
    patience: Optional[int] = Field(None, gt=0)
    divergence_factor: float = Field(1e3, gt=1)


class PassRule(_Strict):
    """How ``tolerance`` was derived and the test's significance level (see the module docstring)."""

    test: str = TEST_NAME
    alpha: float = Field(DEFAULT_ALPHA, gt=0, lt=1)
    min_effect: float = Field(DEFAULT_MIN_EFFECT, ge=0)
    floor: float = Field(ge=0, description="absolute floor of the tolerance, in metric units")


class LockedRecipe(_Strict):
    """One locked recipe: its per-seed values at lock time and the tolerance the check allows."""

    rank: int = Field(ge=1)
    trial: Optional[int] = None
    study_value: Optional[float] = None
    recipe: dict[str, Any]
    seeds: list[int] = Field(min_length=1)
    values: list[float] = Field(min_length=1)
    mean: float
    std: float = Field(ge=0)
    tolerance: float = Field(ge=0)


class LockFile(_Strict):
    """A whole lock file; keys are written in this order."""

    lock_version: int
    study: str
    created: str = ""
    task: TaskRef
    metric: str
    direction: Literal["maximize", "minimize"]
    budget: LockBudget
    deterministic: bool = True
    device: str = "auto"
    rule: PassRule
    environment: dict[str, Any] = Field(default_factory=dict)
    recipes: list[LockedRecipe] = Field(min_length=1)


def read_lock(path: str | Path) -> LockFile:
    """Read and validate a lock file: a ``TunerError`` names the file, the field and the value (exit code 2)."""
    path = Path(path)
    data = read_yaml_mapping(path, "lock file", "lock_version, task, recipes ...")
    version = data.get("lock_version")
    if version != LOCK_VERSION:
        raise TunerError(f"{path}: lock_version: this tuner ({tuner_version()}) reads lock files of version {LOCK_VERSION}, "
                         f"got {version!r}; re-create the lock with `tuner lock`")
    try:
        lock = LockFile.model_validate(data)
    except ValidationError as error:
        raise TunerError(f"{path}: invalid lock file:\n{format_validation_error(error)}") from None
    for index, entry in enumerate(lock.recipes):
        _check_entry(path, index, entry)
    return lock


def _check_entry(path: Path, index: int, entry: LockedRecipe) -> None:
    where = f"{path}: recipes.{index}"
    if len(entry.values) != len(entry.seeds):
        raise TunerError(f"{where}: values and seeds must have the same length, got {len(entry.values)} and {len(entry.seeds)}")
    try:
        check_recipe(recipe_of(entry))
    except (TunerError, ValueError, TypeError) as error:
        raise TunerError(f"{where}.recipe: {error}") from None


def recipe_of(entry: LockedRecipe) -> Recipe:
    return Recipe.from_dict(entry.recipe)


def check_recipe(recipe: Recipe) -> None:
    """Names and values of the recipe's optimizer and schedule, checked against the catalog before anything trains."""
    from tuner.errors import lookup
    from tuner.optim import OPTIMIZERS
    from tuner.optim.build import resolve_params
    from tuner.schedules import build_schedule

    resolve_params(lookup(OPTIMIZERS, "optimizer", recipe.optimizer), recipe.optimizer_params)
    build_schedule(recipe.schedule, 1000, recipe.schedule_params)


def dump_lock(lock: LockFile) -> str:
    """The lock as YAML: keys in a fixed order, floats written exactly (they read back bit-identical)."""
    header = (f"# tuner lock file of study {lock.study!r}: re-run it with `tuner regress <this file>`.\n"
              f"# Pass rule: see `tolerance` below and the README section 'CI regression of best configs'.\n")
    return header + yaml.safe_dump(lock.model_dump(mode="json"), sort_keys=False, default_flow_style=False, width=120)


def write_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


# -- seeds, environment, tolerance ---------------------------------------------------------------------------------

def derive_seeds(base: int, count: int, start: int = 0) -> list[int]:
    """``count`` fixed per-run seeds derived from ``base`` (seeds ``start .. start+count-1`` of one stable stream)."""
    seeds = []
    for index in range(start, start + count):
        digest = hashlib.sha256(f"tuner-lock:{base}:{index}".encode()).digest()
        seeds.append(int.from_bytes(digest[:4], "little") & 0x7FFFFFFF)
    return seeds


def tuner_version() -> str:
    from tuner import __version__

    return __version__


def environment(device: str) -> dict[str, Any]:
    """Versions, device and platform of this process (informational; differences are reported, not refused)."""
    import importlib.metadata

    import torch

    from tuner.train.fit import resolve_device

    resolved = resolve_device(device)
    env: dict[str, Any] = {"tuner": tuner_version(), "torch": torch.__version__}
    for package in ("optuna", "scipy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            env[package] = importlib.metadata.version(package)
    env.update(python=platform.python_version(), platform=platform.platform(), machine=platform.machine(),
               device=str(resolved), threads=torch.get_num_threads())
    if resolved.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(resolved)
    return env


def tolerance_for(std: float, floor: float, min_effect: float) -> float:
    """``max(floor, min_effect * std)``: the margin of the pass rule."""
    return max(floor, min_effect * std)


def default_floor(mean: float) -> float:
    """1% of the locked mean's magnitude, to two significant digits (never 0)."""
    return max(float(f"{DEFAULT_FLOOR_FRACTION * abs(mean):.2g}"), MIN_FLOOR)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# -- the pass rule ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """The outcome of the pass rule for one locked recipe."""

    passed: bool
    worse: float  # how much the new mean is worse than the locked mean (metric units; negative = better)
    tolerance: float
    p_value: float
    test: str  # "paired t", "Welch t", "threshold", "diverged"
    reason: str


def judge(locked: Sequence[float], new: Sequence[float], direction: str, tolerance: float, alpha: float = DEFAULT_ALPHA,
          paired: bool = False) -> Verdict:
    """Apply the pass rule (module docstring) to locked and new per-seed values."""
    sign = 1.0 if direction == "maximize" else -1.0
    good_locked, good_new = [sign * v for v in locked], [sign * v for v in new]
    worse = statistics.fmean(good_locked) - statistics.fmean(good_new)
    test, p_value = _one_sided_p(good_locked, good_new, tolerance, paired)
    passed = not p_value < alpha
    relation = "within" if worse <= tolerance else "beyond"
    reason = (f"worse by {worse:.4g} ({relation} tolerance {tolerance:.4g}); {test} p={p_value:.3g} "
              f"{'>=' if passed else '<'} alpha={alpha:g}")
    return Verdict(passed, worse, tolerance, p_value, test, reason)


def _one_sided_p(good_locked: list[float], good_new: list[float], tolerance: float, paired: bool) -> tuple[str, float]:
    """p-value of H0 'true worse <= tolerance' against H1 'true worse > tolerance'."""
    from scipy import stats

    if paired and len(good_locked) == len(good_new) and len(good_new) > 1:
        diffs = [a - b for a, b in zip(good_locked, good_new)]
        if _spread(diffs) <= 1e-12 * max(1.0, *(abs(d) for d in diffs)):  # constant: no test (and no t-statistic)
            return "threshold", _threshold_p(diffs[0], tolerance)
        return "paired t", float(stats.ttest_1samp(diffs, tolerance, alternative="greater").pvalue)
    worse = statistics.fmean(good_locked) - statistics.fmean(good_new)
    if min(len(good_locked), len(good_new)) < 2 or (_spread(good_locked) == 0 and _spread(good_new) == 0):
        return "threshold", _threshold_p(worse, tolerance)
    shifted = [value + tolerance for value in good_new]
    return "Welch t", float(stats.ttest_ind(good_locked, shifted, equal_var=False, alternative="greater").pvalue)


def _threshold_p(worse: float, tolerance: float) -> float:
    return 0.0 if worse > tolerance else 1.0


def _spread(values: list[float]) -> float:
    return max(values) - min(values)


# -- running locked recipes ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitJob:
    """One training run of a locked recipe on one seed (picklable: it crosses to worker processes)."""

    task_name: str
    task_options: dict[str, Any]
    base_dir: str
    recipe: dict[str, Any]
    budget: dict[str, Any]
    metric: str
    direction: str
    device: str
    seed: int
    deterministic: bool


@dataclass(frozen=True)
class SeedResult:
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
    """Train one locked recipe on one seed; the value is the best evaluation of the metric (as in tuning)."""
    from tuner.train.fit import TrainBudget, fit

    with _deterministic_restored():
        result = fit(_task_for(job), Recipe.from_dict(job.recipe), TrainBudget(**job.budget), metric=job.metric,
                     direction=job.direction, device=job.device, seed=job.seed, deterministic=job.deterministic)
    value = result.best.metrics[job.metric] if result.best is not None else None
    return SeedResult(job.seed, value, result.status, result.reason, result.seconds)


@contextlib.contextmanager
def _deterministic_restored() -> Iterator[None]:
    """``fit(deterministic=True)`` switches torch's deterministic algorithms on process-wide; switch them back."""
    import torch

    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
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
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        return list(pool.map(fit_job, jobs))


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# -- regress ------------------------------------------------------------------------------------------------------

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
        return f"{self.lock_path}#{self.entry.rank}"


def plan_seeds(entry: LockedRecipe, count: Optional[int], study_seed_base: int = 0) -> list[int]:
    """The locked seeds, or the first ``count`` of them, or all of them plus fresh ones derived after them."""
    if count is None or count == len(entry.seeds):
        return list(entry.seeds)
    if count < len(entry.seeds):
        return list(entry.seeds[:count])
    fresh = [s for s in derive_seeds(study_seed_base + entry.rank, count * 2, start=10_000) if s not in entry.seeds]
    return list(entry.seeds) + fresh[:count - len(entry.seeds)]


def jobs_for(lock: LockFile, lock_path: str | Path, entry: LockedRecipe, seeds: Sequence[int],
             device: Optional[str] = None) -> list[FitJob]:
    """One ``FitJob`` per seed for a locked recipe; relative task files are found next to the lock file."""
    base_dir = str(Path(lock_path).resolve().parent)
    return [FitJob(lock.task.name, dict(lock.task.options), base_dir, dict(entry.recipe), lock.budget.model_dump(),
                   lock.metric, lock.direction, device or lock.device, seed, lock.deterministic) for seed in seeds]


def check_tasks(locks: Sequence[tuple[str, LockFile]]) -> None:
    """Load every lock's task once before anything trains: an unknown task or a broken task file is a ``TunerError``."""
    from tuner.tasks import load_task

    for path, lock in locks:
        try:
            task = load_task(lock.task.name, lock.task.options, base_dir=str(Path(path).resolve().parent))
        except TunerError as error:
            raise TunerError(f"{path}: task: {error}") from None
        if lock.metric not in task.directions:
            raise TunerError(f"{path}: metric: unknown metric {lock.metric!r} for task {lock.task.name!r}; "
                             f"valid metrics: {', '.join(sorted(task.directions))}")


def regress(paths: Sequence[str | Path], *, seeds: Optional[int] = None, jobs: int = 1,
            device: Optional[str] = None) -> list[CaseResult]:
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
        new = results[offset:offset + len(case_jobs)]
        offset += len(case_jobs)
        cases.append(CaseResult(path, lock, entry, chosen, new, verdict_for(lock, entry, chosen, new),
                                sum(r.seconds for r in new), environment_notes(lock.environment, here)))
    return cases


def verdict_for(lock: LockFile, entry: LockedRecipe, seeds: Sequence[int], new: Sequence[SeedResult]) -> Verdict:
    """The pass rule for one locked recipe; a diverged or evaluation-less run fails on its own."""
    broken = [r for r in new if r.value is None or r.status == "diverged"]
    if broken:
        first = broken[0]
        return Verdict(False, math.inf, entry.tolerance, 0.0, "diverged",
                       f"seed {first.seed}: {first.reason or first.status or 'no evaluation'}")
    return judge(entry.values, [r.value for r in new], lock.direction, entry.tolerance, lock.rule.alpha,
                 paired=list(seeds) == list(entry.seeds))


def environment_notes(locked: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """'torch: locked 2.13.0, now 2.14.0' for each version, device or platform that differs."""
    keys = ("tuner", "torch", "device", "platform", "machine", "device_name")
    return [f"{key}: locked {locked.get(key)}, now {here.get(key)}" for key in keys
            if key in locked and locked.get(key) != here.get(key)]


def created_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# -- reports ------------------------------------------------------------------------------------------------------

def fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def table_rows(cases: Sequence[CaseResult]) -> list[dict[str, str]]:
    """One row per locked recipe: lock, metric, locked mean±std, new mean±std, delta, tolerance, verdict."""
    rows = []
    for case in cases:
        values = [r.value for r in case.new if r.value is not None]
        new = f"{fmt(mean_std(values)[0])} ± {fmt(mean_std(values)[1])}" if values else "-"
        delta = mean_std(values)[0] - case.entry.mean if values else math.nan
        rows.append({
            "lock": case.name, "metric": f"{case.lock.metric} ({'max' if case.lock.direction == 'maximize' else 'min'})",
            "locked": f"{fmt(case.entry.mean)} ± {fmt(case.entry.std)}", "new": new, "delta": _signed(delta),
            "tolerance": fmt(case.verdict.tolerance), "p": fmt(case.verdict.p_value),
            "verdict": "PASS" if case.verdict.passed else "REGRESSED",
        })
    return rows


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.4g}"


COLUMNS = ("lock", "metric", "locked", "new", "delta", "tolerance", "p", "verdict")
HEADERS = ("lock", "metric", "locked mean ± std", "new mean ± std", "delta", "tolerance", "p", "verdict")


def markdown_summary(cases: Sequence[CaseResult]) -> str:
    """A markdown report for a CI step summary: the table, then each recipe's reason and per-seed values."""
    failed = sum(not case.verdict.passed for case in cases)
    title = "all locked recipes pass" if not failed else f"{failed} of {len(cases)} locked recipes REGRESSED"
    lines = [f"## tuner regress: {title}", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in table_rows(cases):
        verdict = "✅ PASS" if row["verdict"] == "PASS" else "❌ REGRESSED"
        lines.append("| " + " | ".join([f"`{row['lock']}`", *(row[c] for c in COLUMNS[1:-1]), verdict]) + " |")
    lines.append("")
    for case in cases:
        recipe = case.entry.recipe
        lines.append(f"- `{case.name}` ({recipe.get('optimizer')} lr={fmt(recipe.get('lr'))} schedule={recipe.get('schedule')}): "
                     f"{case.verdict.reason}")
        lines.append(f"  - seeds {case.seeds}: new {[fmt(r.value) for r in case.new]}, locked {[fmt(v) for v in case.entry.values]}")
        lines.extend(f"  - note: {note}" for note in case.notes)
    lines.append("")
    lines.append("Rule: REGRESSED when a one-sided t-test (paired on the locked seeds) finds the new mean worse than the "
                 "locked mean by more than the tolerance, `max(floor, min_effect × locked std)`, at p < alpha.")
    return "\n".join(lines) + "\n"


def junit_xml(cases: Sequence[CaseResult]) -> str:
    """JUnit XML: a testsuite ``tuner regress`` with one testcase per locked recipe; a regression is a failure."""
    from xml.etree import ElementTree as ET

    failures = sum(not case.verdict.passed for case in cases)
    suite = ET.Element("testsuite", name="tuner regress", tests=str(len(cases)), failures=str(failures), errors="0",
                       skipped="0", time=f"{sum(c.seconds for c in cases):.3f}")
    for case, row in zip(cases, table_rows(cases)):
        testcase = ET.SubElement(suite, "testcase", classname=f"tuner.regress.{Path(case.lock_path).name}",
                                 name=case.name, time=f"{case.seconds:.3f}")
        detail = (f"{case.lock.metric}: locked {row['locked']}, new {row['new']}, delta {row['delta']}; {case.verdict.reason}\n"
                  f"seeds {case.seeds}\nnew values {[r.value for r in case.new]}\nlocked values {case.entry.values}")
        if case.verdict.passed:
            ET.SubElement(testcase, "system-out").text = detail
        else:
            ET.SubElement(testcase, "failure", message=f"REGRESSED: {case.verdict.reason}", type="regression").text = detail
    root = ET.Element("testsuites", name="tuner regress", tests=str(len(cases)), failures=str(failures))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
