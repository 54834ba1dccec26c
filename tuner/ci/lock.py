"""``tuner lock``: re-train a study's best recipes over fixed seeds at full budget and write a lock file.

``build_lock`` locks any recipes for a task (no study needed); ``lock_study`` picks the best ``top_k`` distinct
recipes of an Optuna study and calls it. The file format is in ``tuner.ci.lockfile``, the pass rule in
``tuner.ci.rule``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tuner.ci.lockfile import LOCK_VERSION, LockBudget, LockedRecipe, LockFile, PassRule, check_recipe
from tuner.ci.rule import DEFAULT_ALPHA, DEFAULT_MIN_EFFECT, default_floor, mean_std, tolerance_for
from tuner.ci.runner import FitJob, created_now, derive_seeds, environment, run_jobs
from tuner.errors import TunerError
from tuner.recipe import Recipe
from tuner.spec import TaskRef, parse_study
from tuner.study.keys import StudyKeys
from tuner.study.prepare import quiet_libraries
from tuner.study.records import TrialRecord, top_records
from tuner.study.storage import load_existing_study
from tuner.tasks import is_task_file, load_task, resolve_task_file

if TYPE_CHECKING:
    import optuna


def build_lock(
    study: str,
    task: TaskRef,
    recipes: Sequence[Recipe],
    budget: LockBudget,
    *,
    metric: str,
    direction: str,
    lock_path: str | Path,
    spec_dir: Optional[str] = None,
    seeds: int = 5,
    seed_base: int = 0,
    device: str = "auto",
    deterministic: bool = True,
    alpha: float = DEFAULT_ALPHA,
    min_effect: float = DEFAULT_MIN_EFFECT,
    floor: Optional[float] = None,
    processes: int = 1,
    trials: Sequence[tuple[Optional[int], Optional[float]]] = (),
) -> LockFile:
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
    jobs = [
        FitJob(
            task.name,
            dict(task.options),
            base_dir,
            recipe.to_dict(),
            budget.model_dump(),
            metric,
            direction,
            device,
            seed,
            deterministic,
        )
        for recipe in recipes
        for seed in seed_list
    ]
    results = run_jobs(jobs, processes)
    entries = []
    for rank, recipe in enumerate(recipes, start=1):
        runs = results[(rank - 1) * seeds : rank * seeds]
        broken = [r for r in runs if r.value is None or r.status == "diverged"]
        if broken:
            raise TunerError(
                f"recipe #{rank} ({recipe.optimizer} lr={recipe.lr:.3g}) cannot be locked: seed {broken[0].seed}: "
                f"{broken[0].reason or 'no evaluation'}"
            )
        values = [float(r.value) for r in runs]
        mean, std = mean_std(values)
        trial, study_value = trials[rank - 1] if rank - 1 < len(trials) else (None, None)
        entries.append(
            dict(
                rank=rank,
                trial=trial,
                study_value=study_value,
                recipe=recipe.to_dict(),
                seeds=seed_list,
                values=values,
                mean=mean,
                std=std,
            )
        )
    rule = PassRule(
        alpha=alpha, min_effect=min_effect, floor=default_floor(entries[0]["mean"]) if floor is None else floor
    )
    locked = [LockedRecipe(**entry, tolerance=tolerance_for(entry["std"], rule.floor, min_effect)) for entry in entries]
    return LockFile(
        lock_version=LOCK_VERSION,
        study=study,
        created=created_now(),
        task=task_ref,
        metric=metric,
        direction=direction,
        budget=budget,
        deterministic=deterministic,
        device=device,
        rule=rule,
        environment=environment(device),
        recipes=locked,
    )


def portable_task(task: TaskRef, spec_dir: str, lock_dir: Path) -> TaskRef:
    """A built-in or module task unchanged; a task file's path rewritten relative to the lock file's folder."""
    target, _, function = task.name.rpartition(":")
    if not (target and function.isidentifier()):
        target, function = task.name, ""
    if not is_task_file(target):
        return task
    path = resolve_task_file(target, spec_dir)
    relative = os.path.relpath(path, lock_dir)
    return TaskRef(name=f"{relative}:{function}" if function else relative, options=task.options)


def lock_study(
    study_name: str,
    storage_url: str,
    lock_path: str | Path,
    *,
    top_k: int = 1,
    seeds: int = 5,
    device: Optional[str] = None,
    **options: Any,
) -> LockFile:
    """Lock the best ``top_k`` distinct recipes of a study (its spec and spec dir are read from the study)."""
    quiet_libraries()
    study = load_existing_study(study_name, storage_url)
    if StudyKeys.SPEC not in study.user_attrs:
        raise TunerError(
            f"study {study_name!r} has no stored study file (user attr {StudyKeys.SPEC!r}); was it made by `tuner run`?"
        )
    spec = parse_study(study.user_attrs[StudyKeys.SPEC], source=f"study {study_name!r}")
    spec_dir = study.user_attrs.get(StudyKeys.SPEC_DIR) or os.getcwd()
    task = load_task(spec.task.name, spec.task.options, base_dir=spec_dir)
    metric = study.user_attrs.get(StudyKeys.METRIC) or spec.metric or task.metric
    direction = study.direction.name.lower()
    best = best_distinct(study, top_k)
    budget = spec.budget
    return build_lock(
        study_name,
        spec.task,
        [record.to_recipe() for record in best],
        LockBudget(
            epochs=budget.epochs,
            steps=budget.steps,
            eval_every=budget.eval_every,
            patience=budget.patience,
            divergence_factor=budget.divergence_factor,
        ),
        metric=metric,
        direction=direction,
        lock_path=lock_path,
        spec_dir=spec_dir,
        seeds=seeds,
        seed_base=spec.seed,
        device=device or spec.device,
        trials=[(r.number, r.value) for r in best],
        **options,
    )


def best_distinct(study: optuna.Study, top_k: int) -> list[TrialRecord]:
    """The ``top_k`` best complete trials with distinct recipes, best first."""
    if top_k < 1:
        raise TunerError(f"top-k must be >= 1, got top_k={top_k}")
    complete = top_records(study, len(study.trials))
    if not complete:
        raise TunerError(f"study {study.study_name!r} has no complete trial to lock")
    chosen, seen = [], set()
    for record in complete:
        key = repr(sorted(record.to_recipe().flat().items()))
        if key not in seen:
            seen.add(key)
            chosen.append(record)
    return chosen[:top_k]
