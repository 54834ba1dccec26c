"""The Optuna side: study create-or-resume, sampler and pruner tables, the objective, local workers.

``prepare`` validates a study file completely (names, ranges, task, metric) and writes nothing;
``run_study`` then creates or resumes the study in its storage and runs trials until the study
holds ``n_trials`` finished trials (complete or pruned) or ``timeout`` passes.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import multiprocessing
import os
import socket
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import optuna
from optuna.trial import TrialState

from tuner.train import lr_range as lrfind
from tuner.study import warmstart
from tuner.errors import TunerError, lookup
from tuner.study.pruning import Pruning
from tuner.recipe import Recipe
from tuner.study.storage.resilience import make_storage, settle_lost_trials
from tuner.study.search import SearchSpace, resolve_space
from tuner.study.storage.sqlite import speed_up_sqlite
from tuner.spec import StudySpec, load_study, parse_study
from tuner.study.storage.sql import count_trials, write_trial
from tuner.tasks import Task, load_task
from tuner.tracking import Tracker, TrialRun, make_tracker
from tuner.train.fit import Evaluation, FitResult, TrainBudget, fit

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SPEC_ATTR, SPEC_DIR_ATTR, PARENT_RUN_ATTR = "spec", "spec_dir", "mlflow_parent_run_id"

SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, space, **o: optuna.samplers.TPESampler(seed=seed, **{"multivariate": True, "group": True, **o}),
    "random": lambda seed, space, **o: optuna.samplers.RandomSampler(seed=seed, **o),
    "grid": lambda seed, space, points=3, **o: optuna.samplers.GridSampler(space.grid(points), seed=seed, **o),
    "gp": lambda seed, space, **o: optuna.samplers.GPSampler(seed=seed, **o),
    "cmaes": lambda seed, space, **o: optuna.samplers.CmaEsSampler(seed=seed, **o),
    "qmc": lambda seed, space, **o: optuna.samplers.QMCSampler(seed=seed, **o),
}

PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": lambda **o: optuna.pruners.MedianPruner(**{"n_startup_trials": 5, "n_warmup_steps": 0, **o}),
    "asha": lambda **o: optuna.pruners.SuccessiveHalvingPruner(**o),
    "hyperband": lambda **o: optuna.pruners.HyperbandPruner(**o),
    "none": lambda **o: optuna.pruners.NopPruner(),
}


@dataclass(frozen=True)
class Prepared:
    """A validated study: everything needed to run trials, nothing written yet."""

    spec: StudySpec
    spec_dir: str
    task: Task
    space: SearchSpace
    metric: str
    direction: str
    storage_url: str
    tracking_uri: str
    device: str


def prepare(source: str | Path | StudySpec, *, storage: Optional[str] = None, tracking_uri: Optional[str] = None,
            device: Optional[str] = None, spec_dir: Optional[str] = None) -> Prepared:
    """Load and check a study (file path or spec): names, ranges, task and metric. Raises ``TunerError``."""
    if isinstance(source, StudySpec):
        spec, where = source, source.name
    else:
        spec, where = load_study(source), str(source)
        spec_dir = spec_dir or str(Path(source).resolve().parent)
    spec_dir = spec_dir or os.getcwd()
    try:
        task = load_task(spec.task.name, spec.task.options, base_dir=spec_dir)
        space = resolve_space(spec.space, task.default_batch_size)
    except TunerError as error:
        raise TunerError(f"{where}: {error}") from None
    metric = spec.metric or task.metric
    if metric not in task.directions:
        raise TunerError(f"{where}: metric: unknown metric {metric!r} for task {spec.task.name!r}; "
                         f"valid metrics: {', '.join(sorted(task.directions))}")
    direction = spec.direction or task.directions[metric]
    return Prepared(spec, spec_dir, task, space, metric, direction, spec.resolved_storage(storage),
                    spec.resolved_tracking_uri(tracking_uri), device or spec.device)


def quiet_libraries() -> None:
    """Keep Optuna's and MLflow's INFO chatter and experimental-feature warnings off the user's terminal."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported (it resets its logger)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*noload.*")


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed derived from the study seed and the trial number (stable across processes)."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# -- storage ---------------------------------------------------------------------------------------

def open_storage(url: str, attempts: int = 3, wait: float = 1.0,
                 on_lost: Optional[Callable[[str, str], None]] = None) -> optuna.storages.BaseStorage:
    """An RDB storage for ``url``, retried a few times (a database restarting, two processes creating the schema at
    once); still unreachable, it is a ``TunerError`` naming the URL with its password masked. Heartbeats and
    reconnecting calls: see ``tuner.study.storage.resilience`` (``on_lost`` closes a lost trial's MLflow run)."""
    speed_up_sqlite()
    for attempt in range(attempts):
        try:
            return make_storage(url, _engine_kwargs(url), on_lost)
        except Exception as error:
            if attempt == attempts - 1:
                raise TunerError(f"cannot open storage {mask_url(url)}: {type(error).__name__}: {_first_line(error)}") from None
            time.sleep(wait * (attempt + 1))
    raise AssertionError("unreachable")


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]


def load_existing_study(name: str, storage_url: str) -> optuna.Study:
    """An existing study, or ``TunerError`` listing the studies that exist."""
    storage = open_storage(storage_url)
    names = study_names(storage)
    if name not in names:
        listing = ", ".join(sorted(names)) or "(none)"
        raise TunerError(f"no study named {name!r} in {mask_url(storage_url)}; studies: {listing}")
    return optuna.load_study(study_name=name, storage=storage)


def open_study(prepared: Prepared, tracker: Tracker) -> optuna.Study:
    """Create the study (and its MLflow parent run) or resume it when one of that name exists."""
    quiet_libraries()
    spec = prepared.spec
    storage = open_storage(prepared.storage_url, on_lost=lost_run_closer(tracker))
    exists = spec.name in study_names(storage)
    study = optuna.create_study(study_name=spec.name, storage=storage, direction=prepared.direction, load_if_exists=True)
    if exists and study.direction.name.lower() != prepared.direction:
        raise TunerError(f"study {spec.name!r} exists with direction {study.direction.name.lower()}, "
                         f"but the study file asks for {prepared.direction}")
    study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
    study.set_user_attr(SPEC_DIR_ATTR, prepared.spec_dir)
    study.set_user_attr("metric", prepared.metric)
    if PARENT_RUN_ATTR not in study.user_attrs:
        parent = tracker.start_study(spec.name, spec.model_dump(mode="json"))
        study.set_user_attr(PARENT_RUN_ATTR, parent)
    return study


def lost_run_closer(tracker: Tracker) -> Callable[[str, str], None]:
    """Closes the MLflow run of a trial whose worker was lost (FAIL with the reason)."""
    def close(run_id: str, reason: str) -> None:
        tracker.end_trial(TrialRun(run_id), "FAIL", reason, 0.0, [], None)

    return close


def finished_count(study: optuna.Study) -> int:
    """Complete and pruned trials: what ``n_trials`` counts."""
    return count_trials(study, FINISHED)


# -- the objective ----------------------------------------------------------------------------------

class Objective:
    """Sample a recipe, train it, report every evaluation to the pruner, log the trial to the tracker."""

    def __init__(self, prepared: Prepared, tracker: Tracker, parent_run_id: Optional[str]) -> None:
        self.prepared, self.tracker, self.parent_run_id = prepared, tracker, parent_run_id
        budget = prepared.spec.budget
        self.budget = TrainBudget(budget.epochs, budget.steps, budget.eval_every, budget.patience, budget.divergence_factor)

    def start(self, trial: optuna.Trial) -> tuple[Recipe, int, TrialRun]:
        """Sample the trial's recipe, fix its seed, record both and this worker on the trial (one write, before the
        MLflow run exists: a worker lost from here on leaves its seed for the retry), then open its MLflow run."""
        recipe = self.prepared.space.sample(trial)
        seed = trial.user_attrs.get("seed", trial_seed(self.prepared.spec.seed, trial.number))  # a retry keeps its seed
        attrs: dict[str, Any] = {"recipe": recipe.to_dict(), "seed": seed, "worker": f"{socket.gethostname()}:{os.getpid()}"}
        if "mlflow_run_id" in trial.user_attrs:  # a retry must not keep the lost trial's run id
            attrs["mlflow_run_id"] = ""
        write_trial(trial, attrs)
        run = self.tracker.start_trial(self.parent_run_id, self.prepared.spec.name, trial.number, recipe,
                                       {"tuner.seed": str(seed), "optuna.trial_id": str(trial._trial_id)},
                                       on_started=partial(_record_run_id, trial))
        return recipe, seed, run

    def __call__(self, trial: optuna.Trial) -> float:
        recipe, seed, run = self.start(trial)
        started = time.perf_counter()
        state, reason, value, curve, end_attrs = "FAIL", "error", None, [], {}
        pruning: Optional[Pruning] = None
        try:
            pruning = Pruning(trial.study, [trial])
            result = self._fit(trial, recipe, seed, run, pruning)
            curve, end_attrs = result.lr_curve, {"total_steps": result.total_steps}
            state, reason, value = outcome(result, self.prepared.metric)
        except KeyboardInterrupt:
            reason = "interrupted"
            raise
        except Exception as error:
            reason = f"error: {type(error).__name__}: {error}"
            raise
        finally:
            # written before tell: a pruned trial's value is its last written one
            unwritten = pruning.take_unwritten(trial) if pruning is not None else {}
            self.end(trial, run, state, reason, time.perf_counter() - started, curve, value, attrs=end_attrs,
                     intermediate_values=unwritten)
        if state == "PRUNED":
            raise optuna.TrialPruned(reason)
        return value

    def end(self, trial: optuna.Trial, run: TrialRun, state: str, reason: str, seconds: float,
            curve: list[tuple[int, float]], value: Optional[float], attrs: Optional[dict[str, Any]] = None,
            intermediate_values: Optional[dict[int, float]] = None) -> None:
        """Record on the trial in one write how it ended (reason, duration, MLflow errors), the other ``attrs`` and
        the ``intermediate_values`` not written yet; then close its MLflow run with the same outcome."""
        run.wait_created()
        attrs = {**(attrs or {}), "reason": reason, "duration_s": round(seconds, 3)}
        if run.errors:
            attrs["tracking_errors"] = run.errors[:5]
        failed_elsewhere = False
        try:
            write_trial(trial, attrs, intermediate_values)
        except optuna.exceptions.UpdateFinishedTrialError:
            failed_elsewhere = True  # another worker found it stale: it failed the trial and closed its MLflow run
            raise
        finally:
            if not failed_elsewhere:
                self.tracker.end_trial(run, state, reason, seconds, curve, value)

    def _fit(self, trial: optuna.Trial, recipe: Recipe, seed: int, run: TrialRun, pruning: Pruning) -> FitResult:
        prepared = self.prepared
        return fit(prepared.task, recipe, self.budget, metric=prepared.metric, direction=prepared.direction,
                   on_eval=self.reporter(trial, run, pruning), device=prepared.device, seed=seed,
                   deterministic=prepared.spec.deterministic)

    def reporter(self, trial: optuna.Trial, run: TrialRun, pruning: Pruning) -> Callable[[Evaluation], bool]:
        """The ``on_eval`` of one trial: metrics to its MLflow run, the objective to the pruner; True: prune it."""
        metric = self.prepared.metric

        def on_eval(evaluation: Evaluation) -> bool:
            self.tracker.log_metrics(run, {**evaluation.metrics, "train_loss": evaluation.train_loss}, evaluation.step)
            return pruning.report(trial, evaluation.step, evaluation.metrics[metric])

        return on_eval


def _record_run_id(trial: optuna.Trial, run_id: Optional[str]) -> None:
    """Called once the trial's MLflow run exists (on the tracking thread for a server): lost-trial handling closes the
    run by this id."""
    if run_id:
        trial.set_user_attr("mlflow_run_id", run_id)


def outcome(result: FitResult, metric: str) -> tuple[str, str, Optional[float]]:
    """(state, reason, value) of a finished fit: best evaluation for complete runs; pruned otherwise."""
    if result.status in ("completed", "early_stopped") and result.best is not None:
        reason = "completed" if result.status == "completed" else f"early stopped: {result.reason}"
        return "COMPLETE", reason, result.best.metrics[metric]
    last = result.evaluations[-1].metrics[metric] if result.evaluations else None
    if result.status == "stopped":
        return "PRUNED", f"pruned at step {result.steps_done}", last
    return "PRUNED", result.reason or "no evaluation", last


# -- running ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunOptions:
    n_trials: int
    timeout: Optional[float] = None
    jobs: int = 1
    warm_start: Optional[str] = None  # "OTHER_STUDY[:K]": enqueue its top-K recipes first (tuner.study.warmstart)
    population: int = 1  # > 1: train this many trials at once in one vectorized pass (tuner.study.engine_population)


def run_study(prepared: Prepared, options: RunOptions, on_trial: Optional[Callable[[optuna.Study], None]] = None,
              on_message: Callable[[str], None] = lambda message: None) -> optuna.Study:
    """Create or resume the study and run it to ``n_trials`` finished trials, with ``jobs`` local processes."""
    quiet_libraries()
    tracker = make_tracker(prepared.tracking_uri)
    study = open_study(prepared, tracker)
    prepared = lrfind.apply_auto_lr(study, prepared, tracker, on_message)  # `lr: auto` (issue 7)
    if options.warm_start:
        warmstart.warm_start(study, prepared, options.warm_start, on_message)
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
        tracker.end_study(study.user_attrs.get(PARENT_RUN_ATTR), _best_recipe_or_none(study), summarize(study))
    return study


def optimize(study: optuna.Study, prepared: Prepared, tracker: Tracker, options: RunOptions, worker_index: int,
             on_trial: Optional[Callable[[optuna.Study], None]] = None) -> None:
    """Run trials in this process until the study holds ``n_trials`` finished trials or ``timeout`` passes."""
    remaining = options.n_trials - finished_count(study)
    if remaining <= 0:
        return
    prepared = lrfind.with_lr_ranges(prepared, study.user_attrs)  # `lr: auto` ranges recorded on the study
    study.sampler = make_sampler(prepared, worker_index, len(study.trials))
    study.pruner = make_pruner(prepared)
    # torch, optuna, mlflow and sqlalchemy leave ~10^6 long-lived objects; one full collection scanning them cost 0.37 s
    # in a 5-trial round (docs/benchmarks.md). Frozen, they are skipped; what trials allocate is still collected.
    gc.freeze()
    try:
        _run_trials(study, prepared, tracker, options, remaining, on_trial)
    finally:
        tracker.flush()  # the last trials' MLflow runs are closed before this process moves on or exits


def _run_trials(study: optuna.Study, prepared: Prepared, tracker: Tracker, options: RunOptions, remaining: int,
                on_trial: Optional[Callable[[optuna.Study], None]]) -> None:
    """Up to ``remaining`` trials: in populations, or one at a time through ``study.optimize``."""
    if options.population > 1:
        from tuner.study.engine_population import optimize_population

        return optimize_population(study, prepared, tracker, options, on_trial)

    def stop_when_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_trial is not None:
            on_trial(study)
        if finished_count(study) >= options.n_trials:
            study.stop()

    objective = Objective(prepared, tracker, study.user_attrs.get(PARENT_RUN_ATTR))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(objective, n_trials=remaining, timeout=options.timeout, catch=(Exception,), callbacks=[stop_when_done])
    settle_lost_trials(study, lambda n: study.optimize(objective, n_trials=n, catch=(Exception,)))


def make_sampler(prepared: Prepared, worker_index: int, trials_so_far: int) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded from the study seed, this worker and how far the study is (so a resume or a second
    worker does not replay the same random draws)."""
    spec = prepared.spec.sampler
    factory = lookup(SAMPLERS, "sampler", spec.name)
    seed = trial_seed(prepared.spec.seed, 1_000_003 * worker_index + trials_so_far)
    try:
        return factory(seed, prepared.space, **spec.options)
    except TypeError as error:
        raise TunerError(f"sampler {spec.name!r}: bad options {spec.options}: {error}") from None


def make_pruner(prepared: Prepared) -> optuna.pruners.BasePruner:
    spec = prepared.spec.pruner
    factory = lookup(PRUNERS, "pruner", spec.name)
    try:
        return factory(**spec.options)
    except TypeError as error:
        raise TunerError(f"pruner {spec.name!r}: bad options {spec.options}: {error}") from None


def share_cpu_threads(processes: int) -> None:
    """Give each of ``processes`` local training processes its share of the CPU cores (oversubscribed intra-op
    threads make small models many times slower)."""
    if processes > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))


def _start_workers(prepared: Prepared, options: RunOptions) -> list[multiprocessing.Process]:
    context = multiprocessing.get_context("spawn")
    args = (prepared.spec.model_dump(mode="json"), prepared.spec_dir, prepared.storage_url, prepared.tracking_uri,
            prepared.device, options)
    workers = [context.Process(target=_worker_main, args=(*args, index), daemon=False) for index in range(1, options.jobs)]
    for worker in workers:
        worker.start()
    return workers


def _worker_main(spec: dict, spec_dir: str, storage_url: str, tracking_uri: str, device: str, options: RunOptions,
                 worker_index: int) -> None:
    """Entry point of a local worker process started by ``run_study(jobs=K)``."""
    logging.disable(logging.WARNING)
    share_cpu_threads(options.jobs)
    prepared = prepare(parse_study(spec), storage=storage_url, tracking_uri=tracking_uri, device=device, spec_dir=spec_dir)
    tracker = make_tracker(tracking_uri)
    study = optuna.load_study(study_name=prepared.spec.name, storage=open_storage(storage_url, on_lost=lost_run_closer(tracker)))
    try:
        optimize(study, prepared, tracker, options, worker_index)
    except KeyboardInterrupt:
        pass


# -- results --------------------------------------------------------------------------------------------

def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        raise TunerError(f"study {study.study_name!r} has no complete trial yet") from None


def best_recipe(study: optuna.Study) -> Recipe:
    return Recipe.from_dict(best_trial(study).user_attrs["recipe"])


def _best_recipe_or_none(study: optuna.Study) -> Optional[dict[str, Any]]:
    try:
        return best_trial(study).user_attrs.get("recipe")
    except TunerError:
        return None


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, best value and best trial number."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    summary: dict[str, Any] = {"trials": len(trials), **{k: v for k, v in counts.items() if v}}
    best = [t for t in trials if t.state == TrialState.COMPLETE]
    if best:
        trial = study.best_trial
        summary.update(best_value=trial.value, best_trial=trial.number)
    return summary
