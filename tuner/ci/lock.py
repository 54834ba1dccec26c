"""``tuner lock``: re-train a study's best recipes over fixed seeds at full budget and write a lock file.

``build_lock`` locks any recipes for a task (no study needed); ``lock_study`` picks the best ``top_k`` distinct
recipes of an Optuna study, or one trial's recipe (``trial``), and calls it. The file format is in
``tuner.ci.lockfile``, the pass rule in ``tuner.ci.rule``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from tuner.ci.lockfile import LOCK_VERSION, LockBudget, LockedRecipe, LockFile, PassRule, check_recipe
from tuner.ci.rule import DEFAULT_ALPHA, DEFAULT_MIN_EFFECT, default_floor, mean_std, tolerance_for
from tuner.ci.runner import FitJob, created_now, derive_seeds, environment, run_jobs
from tuner.errors import TunerError
from tuner.recipe import Recipe
from tuner.spec import TaskRef
from tuner.study.keys import StudyKeys
from tuner.study.prepare import quiet_libraries
from tuner.study.records import TrialRecord, top_records, trial_record
from tuner.study.storage import load_existing_study
from tuner.study.trust import prepare_own
from tuner.tasks import is_task_file, resolve_task_file, split_ref

if TYPE_CHECKING:
    import optuna


def build_lock(
    study: str,
    task: Optional[TaskRef],
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
    train: Optional[TaskRef] = None,
    command: Optional[Union[str, list[str]]] = None,
) -> LockFile:
    """Train each recipe on ``seeds`` fixed seeds and return the lock. What trains them is ``task``, or the user's
    ``train`` function or ``command`` (run in ``spec_dir``); file paths are made relative to the lock file's folder.
    A recipe that diverges, fails or never evaluates cannot be locked: ``TunerError``."""
    if seeds < 1:
        raise TunerError(f"seeds must be >= 1, got seeds={seeds}")
    for recipe in recipes:
        check_recipe(recipe)
    lock_dir = Path(lock_path).resolve().parent
    base_dir = spec_dir or os.getcwd()
    stored = portable_source(task, train, command, base_dir, lock_dir)  # what the lock stores; runs use the study's
    seed_list = derive_seeds(seed_base, seeds)
    jobs = [
        FitJob(
            task.name if task is not None else None,
            dict(source.options) if (source := task or train) is not None else {},
            base_dir,
            recipe.to_dict(),
            budget.model_dump(),
            metric,
            direction,
            device,
            seed,
            deterministic,
            train.name if train is not None else None,
            command,
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
        **stored,
        metric=metric,
        direction=direction,
        budget=budget,
        deterministic=deterministic,
        device=device,
        rule=rule,
        environment=environment(device),
        recipes=locked,
    )


def portable_source(
    task: Optional[TaskRef],
    train: Optional[TaskRef],
    command: Optional[Union[str, list[str]]],
    spec_dir: str,
    lock_dir: Path,
) -> dict[str, Any]:
    """What a lock stores of what trains it: a task or train file's path relative to the lock file's folder, a
    command with the folder it runs in (``workdir``) relative to it; built-ins and modules unchanged."""
    if task is not None:
        return {"task": TaskRef(name=portable_ref(task.name, spec_dir, lock_dir), options=task.options)}
    if train is not None:
        return {"train": TaskRef(name=portable_ref(train.name, spec_dir, lock_dir), options=train.options)}
    return {"command": command, "workdir": os.path.relpath(spec_dir, lock_dir)}


def portable_ref(ref: str, spec_dir: str, lock_dir: Path) -> str:
    """``file.py:function`` with the file's path made relative to ``lock_dir``; anything else unchanged."""
    target, function = split_ref(ref)
    if not is_task_file(target):
        return ref
    relative = os.path.relpath(resolve_task_file(target, spec_dir), lock_dir)
    return f"{relative}:{function}" if function else relative


def lock_study(
    study_name: str,
    storage_url: str,
    lock_path: str | Path,
    *,
    top_k: int = 1,
    seeds: int = 5,
    device: Optional[str] = None,
    trial: Optional[int] = None,
    study_file: Optional[str | Path] = None,
    **options: Any,
) -> LockFile:
    """Lock the best ``top_k`` distinct recipes of a study, or trial ``trial``'s recipe. What trains them comes from
    ``study_file`` (checked to define the study), else from the spec stored with the study, refused unless it is
    allowed here (``tuner.study.trust``)."""
    if trial is not None and top_k > 1:
        raise TunerError(f"--trial {trial} locks one trial's recipe; it cannot be combined with --top-k {top_k}")
    quiet_libraries()
    study = load_existing_study(study_name, storage_url)
    prepared = prepare_own(study, study_file, storage=storage_url, tracking_uri="none", device=device)
    spec, spec_dir = prepared.spec, prepared.spec_dir
    metric = study.user_attrs.get(StudyKeys.METRIC) or prepared.metric
    direction = study.direction.name.lower()
    best = best_distinct(study, top_k) if trial is None else [trial_record(study, trial)]
    budget = spec.budget
    return build_lock(
        study_name,
        spec.task,
        [record.to_recipe() for record in best],
        LockBudget(**{key: getattr(budget, key) for key in LockBudget.model_fields}),
        metric=metric,
        direction=direction,
        lock_path=lock_path,
        spec_dir=spec_dir,
        seeds=seeds,
        seed_base=spec.seed,
        device=device or spec.device,
        trials=[(r.number, r.value) for r in best],
        train=spec.train,
        command=spec.command,
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
