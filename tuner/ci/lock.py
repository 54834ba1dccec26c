"""``tuner lock``: re-train a study's best recipes over fixed seeds at full budget and write a lock file.

``build_lock`` locks any recipes for a task (no study needed); ``lock_study`` picks the best ``top_k`` distinct
recipes of an Optuna study and calls it. The file format and the pass rule are in ``tuner.ci.regress``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

from tuner.errors import TunerError
from tuner.recipe import Recipe
from tuner.ci.regress import (
    DEFAULT_ALPHA, DEFAULT_MIN_EFFECT, LOCK_VERSION, FitJob, LockBudget, LockedRecipe, LockFile, PassRule,
    check_recipe, created_now, default_floor, derive_seeds, environment, mean_std, run_jobs, tolerance_for,
)
from tuner.spec import TaskRef


def build_lock(study: str, task: TaskRef, recipes: Sequence[Recipe], budget: LockBudget, *, metric: str, direction: str,
               lock_path: str | Path, spec_dir: Optional[str] = None, seeds: int = 5, seed_base: int = 0,
               device: str = "auto", deterministic: bool = True, alpha: float = DEFAULT_ALPHA,
               min_effect: float = DEFAULT_MIN_EFFECT, floor: Optional[float] = None, processes: int = 1,
               trials: Sequence[tuple[Optional[int], Optional[float]]] = ()) -> LockFile:
    """Train each recipe on ``seeds`` fixed seeds and return the lock (a user task path is made relative to the lock
    file's folder). A recipe that diverges or never evaluates cannot be locked: ``TunerError``."""
    if seeds < 1:
        raise TunerError(f"seeds must be >= 1, got seeds={seeds}")
    for recipe in recipes:
        check_recipe(recipe)
    lock_dir = Path(lock_path).resolve().parent
    task_ref = portable_task(task, spec_dir or os.getcwd(), lock_dir)  # what the lock stores; runs use the study's
    seed_list = derive_seeds(seed_base, seeds)
    base_dir = spec_dir or os.getcwd()
    jobs = [FitJob(task.name, dict(task.options), base_dir, recipe.to_dict(), budget.model_dump(), metric,
                   direction, device, seed, deterministic) for recipe in recipes for seed in seed_list]
    results = run_jobs(jobs, processes)
    entries = []
    for rank, recipe in enumerate(recipes, start=1):
        runs = results[(rank - 1) * seeds:rank * seeds]
        broken = [r for r in runs if r.value is None or r.status == "diverged"]
        if broken:
            raise TunerError(f"recipe #{rank} ({recipe.optimizer} lr={recipe.lr:.3g}) cannot be locked: seed {broken[0].seed}: "
                             f"{broken[0].reason or 'no evaluation'}")
        values = [float(r.value) for r in runs]
        mean, std = mean_std(values)
        trial, study_value = trials[rank - 1] if rank - 1 < len(trials) else (None, None)
        entries.append(dict(rank=rank, trial=trial, study_value=study_value, recipe=recipe.to_dict(), seeds=seed_list,
                            values=values, mean=mean, std=std))
    rule = PassRule(alpha=alpha, min_effect=min_effect, floor=default_floor(entries[0]["mean"]) if floor is None else floor)
    locked = [LockedRecipe(**entry, tolerance=tolerance_for(entry["std"], rule.floor, min_effect)) for entry in entries]
    return LockFile(lock_version=LOCK_VERSION, study=study, created=created_now(), task=task_ref, metric=metric,
                    direction=direction, budget=budget, deterministic=deterministic, device=device, rule=rule,
                    environment=environment(device), recipes=locked)


def portable_task(task: TaskRef, spec_dir: str, lock_dir: Path) -> TaskRef:
    """A built-in or module task unchanged; a task file's path rewritten relative to the lock file's folder."""
    from tuner.tasks.loader import _looks_like_file, resolve_task_file

    target, _, function = task.name.rpartition(":")
    if not (target and function.isidentifier()):
        target, function = task.name, ""
    if not _looks_like_file(target):
        return task
    path = resolve_task_file(target, spec_dir)
    relative = os.path.relpath(path, lock_dir)
    return TaskRef(name=f"{relative}:{function}" if function else relative, options=task.options)


def lock_study(study_name: str, storage_url: str, lock_path: str | Path, *, top_k: int = 1, seeds: int = 5,
               device: Optional[str] = None, **options: Any) -> LockFile:
    """Lock the best ``top_k`` distinct recipes of a study (its spec and spec dir are read from the study)."""
    from tuner.study.engine import SPEC_ATTR, SPEC_DIR_ATTR, load_existing_study, quiet_libraries
    from tuner.spec import parse_study
    from tuner.tasks import load_task

    quiet_libraries()
    study = load_existing_study(study_name, storage_url)
    if SPEC_ATTR not in study.user_attrs:
        raise TunerError(f"study {study_name!r} has no stored study file (user attr {SPEC_ATTR!r}); was it made by `tuner run`?")
    spec = parse_study(study.user_attrs[SPEC_ATTR], source=f"study {study_name!r}")
    spec_dir = study.user_attrs.get(SPEC_DIR_ATTR) or os.getcwd()
    task = load_task(spec.task.name, spec.task.options, base_dir=spec_dir)
    metric = study.user_attrs.get("metric") or spec.metric or task.metric
    direction = study.direction.name.lower()
    best = best_trials(study, top_k)
    budget = spec.budget
    return build_lock(study_name, spec.task, [Recipe.from_dict(t.user_attrs["recipe"]) for t in best],
                      LockBudget(epochs=budget.epochs, steps=budget.steps, eval_every=budget.eval_every,
                                 patience=budget.patience, divergence_factor=budget.divergence_factor),
                      metric=metric, direction=direction, lock_path=lock_path, spec_dir=spec_dir, seeds=seeds,
                      seed_base=spec.seed, device=device or spec.device, trials=[(t.number, t.value) for t in best],
                      **options)


def best_trials(study: Any, top_k: int) -> list[Any]:
    """The ``top_k`` best complete trials with distinct recipes, best first."""
    from optuna.trial import TrialState

    if top_k < 1:
        raise TunerError(f"top-k must be >= 1, got top_k={top_k}")
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "recipe" in t.user_attrs]
    if not complete:
        raise TunerError(f"study {study.study_name!r} has no complete trial to lock")
    maximize = study.direction.name.lower() == "maximize"
    complete.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
    chosen, seen = [], set()
    for trial in complete:
        key = repr(sorted(Recipe.from_dict(trial.user_attrs["recipe"]).flat().items()))
        if key not in seen:
            seen.add(key)
            chosen.append(trial)
    return chosen[:top_k]
