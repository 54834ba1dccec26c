"""Running a study: create or resume it, then run trials until it holds ``n_trials`` finished ones.

``run_study`` creates or resumes the study (and its MLflow parent run), applies ``lr: auto`` and warm start, starts
``jobs - 1`` local worker processes and works on the study itself; ``optimize`` is what every process runs (``tuner
worker`` too): trials one at a time, or ``population`` at once, through the one trial life cycle
(``tuner.study.lifecycle``), until the study holds ``n_trials`` finished (complete or pruned) trials, ``timeout``
passes or the sampler has nothing left (an exhausted grid: ``tuner.study.grid``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import optuna

from tuner.errors import TunerError
from tuner.spec import PBT_MIN_POPULATION, parse_study
from tuner.study.definition import check_unchanged, definition, storable
from tuner.study.grid import check_grid_run, enqueue_grid, grid_of, grid_trials_only, is_grid
from tuner.study.keys import StudyKeys, TrialKeys
from tuner.study.lifecycle import TrialLifecycle, trial_seed
from tuner.study.lr_auto import apply_auto_lr, enqueue_suggested_lrs, with_lr_ranges
from tuner.study.prepare import Prepared, prepare, quiet_libraries
from tuner.study.records import finished_count
from tuner.study.runs import LostRunCloser, RunLinker, end_study
from tuner.study.storage import open_storage, study_names
from tuner.study.storage.heartbeat import settle_lost_trials
from tuner.study.storage.sqlite import speed_up_sqlite
from tuner.study.tables import make_pruner, make_sampler
from tuner.tracking import Tracker, make_tracker

OnTrial = Callable[[optuna.Study], None]


@dataclass(frozen=True)
class RunOptions:
    """How a process works on a study.

    Args:
        n_trials: the number of finished trials the study should hold.
        timeout: stop starting trials after this many seconds.
        jobs: local processes working on the study (``run_study`` only).
        warm_start: ``OTHER_STUDY[:K]``: enqueue its top-K recipes first (``tuner.study.warmstart``).
        population: > 1: train this many trials at once in one vectorized pass.
        allow_change: resume a study whose definition the file changes (``tuner.study.definition``).
        allow_partial_grid: a grid study may have more points than ``n_trials`` (a random ``n_trials`` of them run).
    """

    n_trials: int
    timeout: Optional[float] = None
    jobs: int = 1
    warm_start: Optional[str] = None
    population: int = 1
    allow_change: bool = False
    allow_partial_grid: bool = False


def run_study(
    prepared: Prepared,
    options: RunOptions,
    on_trial: Optional[OnTrial] = None,
    on_message: Callable[[str], None] = lambda message: None,
) -> optuna.Study:
    """Create or resume the study and run it to ``n_trials`` finished trials, with ``jobs`` local processes."""
    from tuner.study.warmstart import warm_start

    quiet_libraries()
    check_population(prepared, options.population)
    grid = grid_of(prepared.space, prepared.spec.sampler)
    check_grid_run(grid, options.n_trials, options.allow_partial_grid, options.warm_start)
    closer = LostRunCloser()
    storage = open_storage(prepared.storage_url, on_lost=closer)  # first: an unreachable storage creates nothing
    changes = check_resume(storage, prepared, options.allow_change)
    tracker = open_tracker(prepared.tracking_uri)
    closer.tracker = tracker
    study = open_study(prepared, tracker, storage, changes)
    requeue_interrupted(study, on_message)
    prepared = apply_auto_lr(study, prepared, tracker, on_message)
    if options.warm_start:
        warm_start(study, prepared, options.warm_start, on_message)
    enqueue_suggested_lrs(study, prepared, on_message)
    if is_grid(prepared.spec.sampler):  # the grid's points are the queue every worker takes trials from
        enqueue_grid(study, prepared.space, prepared.spec.sampler, prepared.spec.seed, options.n_trials, on_message)
    workers = _start_workers(prepared, options) if options.jobs > 1 else []
    share_cpu_threads(options.jobs)
    try:
        optimize(study, prepared, tracker, options, worker_index=0, on_trial=on_trial)
    except KeyboardInterrupt:
        for worker in workers:  # they got the same SIGINT from the terminal; give them a moment to mark their trials
            worker.join(timeout=10)
            worker.terminate()
        raise
    finally:
        for worker in workers:
            worker.join()
        end_study(study, tracker)
    return study


def check_population(prepared: Prepared, population: int) -> None:
    """``strategy: pbt`` runs populations of at least ``PBT_MIN_POPULATION`` (``--population`` overrides the file's)."""
    if prepared.spec.strategy == "pbt" and population < PBT_MIN_POPULATION:
        raise TunerError(
            f"strategy: pbt needs a population of at least {PBT_MIN_POPULATION} members, got --population {population}"
        )


def open_tracker(tracking_uri: str) -> Tracker:
    """The study's tracker (the embedded SQLite files tuned first)."""
    speed_up_sqlite()
    return make_tracker(tracking_uri)


def check_resume(storage: Any, prepared: Prepared, allow_change: bool = False) -> list[str]:
    """When a study of that name exists: the differences between its definition and the file's (``TunerError``
    unless ``allow_change``; a change of direction always is). Nothing is written."""
    spec = prepared.spec
    if spec.name not in study_names(storage):
        return []
    study = optuna.load_study(study_name=spec.name, storage=storage)
    if study.direction.name.lower() != prepared.direction:
        raise TunerError(
            f"study {spec.name!r} exists with direction {study.direction.name.lower()}, "
            f"but the study file asks for {prepared.direction}"
        )
    wanted = definition(spec, prepared.metric, prepared.direction)
    return check_unchanged(spec.name, stored_definition(study), wanted, allow_change)


def stored_definition(study: optuna.Study) -> Optional[dict[str, Any]]:
    """The definition stored on a study (computed from its stored study file for a study made before it was kept)."""
    stored = study.user_attrs.get(StudyKeys.DEFINITION)
    if stored is not None:
        return dict(stored)
    spec = study.user_attrs.get(StudyKeys.SPEC)
    if spec is None:
        return None
    metric = study.user_attrs.get(StudyKeys.METRIC) or parse_study(spec).metric
    return definition(parse_study(spec), metric, study.direction.name.lower()) if metric else None


def open_study(prepared: Prepared, tracker: Tracker, storage: Any = None, changes: Sequence[str] = ()) -> optuna.Study:
    """Create the study (and its MLflow parent run) or resume it when one of that name exists (``check_resume``
    first: ``changes`` are the differences it allowed, recorded on the study)."""
    quiet_libraries()
    spec = prepared.spec
    storage = storage if storage is not None else open_storage(prepared.storage_url, on_lost=LostRunCloser(tracker))
    tracker.on_run_created = RunLinker(storage)
    direction: Any = prepared.direction  # "maximize" or "minimize", checked by prepare
    study = optuna.create_study(study_name=spec.name, storage=storage, direction=direction, load_if_exists=True)
    if changes:
        log = list(study.user_attrs.get(StudyKeys.CHANGES, []))
        study.set_user_attr(
            StudyKeys.CHANGES, [*log, {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "changed": list(changes)}]
        )
    study.set_user_attr(StudyKeys.DEFINITION, definition(spec, prepared.metric, prepared.direction))
    study.set_user_attr(StudyKeys.SPEC, storable(spec))
    study.set_user_attr(StudyKeys.SPEC_DIR, prepared.spec_dir)
    study.set_user_attr(StudyKeys.METRIC, prepared.metric)
    study.set_user_attr(StudyKeys.OBJECTIVE, prepared.spec.budget.objective)
    study.set_metric_names([prepared.metric])  # optuna-dashboard shows "accuracy", not "Objective 0"
    if not study.user_attrs.get(StudyKeys.PARENT_RUN):  # None: MLflow was away when the study was made
        study.set_user_attr(StudyKeys.PARENT_RUN, tracker.start_study(spec.name, storable(spec)))
    else:
        tracker.resume_study(study.user_attrs[StudyKeys.PARENT_RUN])
    return study


def requeue_interrupted(study: optuna.Study, say: Callable[[str], None] = lambda message: None) -> list[int]:
    """Queue again, once, every trial a Ctrl-C interrupted (FAIL, reason ``interrupted``): same parameters, same seed;
    the retry carries ``retry_of``. Returns the numbers re-queued."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(TrialKeys.RETRY_OF) for t in trials}
    requeued = []
    for trial in trials:
        if (
            trial.state == optuna.trial.TrialState.FAIL
            and trial.user_attrs.get(TrialKeys.REASON) == "interrupted"
            and trial.number not in retried
            and trial.params
        ):
            attrs = {
                TrialKeys.RETRY_OF: trial.number,
                TrialKeys.SEED: trial.user_attrs.get(TrialKeys.SEED),
                TrialKeys.GRID_POINT: trial.user_attrs.get(TrialKeys.GRID_POINT),
            }
            study.enqueue_trial(trial.params, user_attrs={k: v for k, v in attrs.items() if v is not None})
            requeued.append(trial.number)
    if requeued:
        say(f"re-queued {len(requeued)} interrupted trial(s): {', '.join(f'#{n}' for n in requeued)}")
    return requeued


def join_study(study_name: str, storage_url: str, tracker: Tracker) -> optuna.Study:
    """An existing study, opened for a worker (lost trials' MLflow runs closed through ``tracker``)."""
    storage = open_storage(storage_url, on_lost=LostRunCloser(tracker))
    tracker.on_run_created = RunLinker(storage)
    study = optuna.load_study(study_name=study_name, storage=storage)
    tracker.resume_study(study.user_attrs.get(StudyKeys.PARENT_RUN))
    requeue_interrupted(study)
    return study


def optimize(
    study: optuna.Study,
    prepared: Prepared,
    tracker: Tracker,
    options: RunOptions,
    worker_index: int,
    on_trial: Optional[OnTrial] = None,
) -> None:
    """Run trials in this process until the study holds ``n_trials`` finished trials or ``timeout`` passes; then, as
    the last worker out, run the retries of trials whose workers were lost."""
    check_population(prepared, options.population)
    remaining = options.n_trials - finished_count(study)
    if remaining <= 0:
        return
    prepared = with_lr_ranges(prepared, study.user_attrs)  # `lr: auto` ranges recorded on the study
    seed = trial_seed(prepared.spec.seed, 1_000_003 * worker_index + len(study.trials))  # no replay of the draws
    study.sampler = make_sampler(prepared.spec.sampler, seed, prepared.space)
    study.pruner = make_pruner(prepared.spec.pruner)
    # torch, optuna, mlflow and sqlalchemy leave ~10^6 long-lived objects; one full collection scanning them cost 0.37 s
    # in a 5-trial round (docs/benchmarks.md). Frozen, they are skipped; what trials allocate is still collected.
    gc.freeze()
    lifecycle = TrialLifecycle(study, prepared, tracker)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with lifecycle.optimize_loop(), grid_trials_only(study, prepared.spec.sampler):
            run_trials(
                lifecycle,
                size=options.population,
                trials=remaining,
                target=options.n_trials,
                timeout=options.timeout,
                on_trial=on_trial,
            )
        # a fresh loop: a sampler's stop (the grid's) does not skip the retries
        with lifecycle.optimize_loop(), grid_trials_only(study, prepared.spec.sampler):
            settle_lost_trials(study, lambda waiting: run_trials(lifecycle, size=1, trials=waiting))
    finally:
        tracker.flush()  # the last trials' MLflow runs are closed before this process moves on or exits


def run_trials(
    lifecycle: TrialLifecycle,
    *,
    size: int,
    trials: int,
    target: Optional[int] = None,
    timeout: Optional[float] = None,
    on_trial: Optional[OnTrial] = None,
) -> None:
    """Ask up to ``trials`` trials, ``size`` at a time, while the study holds fewer than ``target`` finished ones
    (None: no target), ``timeout`` has not passed and the sampler has not asked to stop."""
    study, started, asked = lifecycle.study, time.monotonic(), 0
    while asked < trials and not lifecycle.stop_requested():
        if timeout is not None and time.monotonic() - started > timeout:
            return
        missing = trials - asked if target is None else min(trials - asked, target - finished_count(study))
        if missing <= 0:
            return
        batch = min(max(1, size), missing)
        asked += batch
        lifecycle.run(batch, stacked=size > 1)
        if on_trial is not None:
            on_trial(study)


def busy_cpu_hint(
    device: str, jobs: int = 1, load: Optional[float] = None, cores: Optional[int] = None
) -> Optional[str]:
    """A line for the user when CPU trials would run several torch threads each on a machine that other processes
    already keep busy (load average at or above the cores): intra-op threads that wait for each other's cores made
    the quickstart 6-7x slower here (docs/benchmarks.md); one thread each avoids it. None when there is no cause."""
    import torch

    from tuner.train import resolve_device

    if resolve_device(device).type != "cpu":
        return None
    cores = cores or os.cpu_count() or 1
    load = os.getloadavg()[0] if load is None else load
    threads = torch.get_num_threads() if jobs <= 1 else max(1, cores // jobs)
    if threads <= 1 or load < cores:
        return None
    return (
        f"this machine is busy (load {load:.1f} on {cores} cores) and each training process would use {threads} "
        f"torch threads, which can make small models many times slower; OMP_NUM_THREADS=1 gives each one thread"
    )


def share_cpu_threads(processes: int) -> None:
    """Give each of ``processes`` local training processes its share of the CPU cores (oversubscribed intra-op
    threads make small models many times slower)."""
    if processes > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))


def _start_workers(prepared: Prepared, options: RunOptions) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    args = (
        prepared.spec.model_dump(mode="json"),
        prepared.spec_dir,
        prepared.storage_url,
        prepared.tracking_uri,
        prepared.device,
        options,
    )
    workers = [
        context.Process(target=_worker_main, args=(*args, index), daemon=False) for index in range(1, options.jobs)
    ]
    for worker in workers:
        worker.start()
    return workers


def _worker_main(
    spec: dict[str, Any],
    spec_dir: str,
    storage_url: str,
    tracking_uri: str,
    device: str,
    options: RunOptions,
    worker_index: int,
) -> None:
    """Entry point of a local worker process started by ``run_study(jobs=K)``."""
    logging.disable(logging.WARNING)
    share_cpu_threads(options.jobs)
    prepared = prepare(
        parse_study(spec), storage=storage_url, tracking_uri=tracking_uri, device=device, spec_dir=spec_dir
    )
    tracker = open_tracker(tracking_uri)
    study = join_study(prepared.spec.name, storage_url, tracker)
    with contextlib.suppress(KeyboardInterrupt):  # the parent tells the user; this worker's trial is marked FAIL
        optimize(study, prepared, tracker, options, worker_index)
