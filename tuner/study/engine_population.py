"""The engine's population path: ask Optuna for N trials at once, train them in one vectorized pass, tell each.

``engine.optimize`` calls ``optimize_population`` when ``RunOptions.population > 1``. Every member stays an
ordinary trial: the same user attrs ("recipe", "seed", "reason", "duration_s", "total_steps"), the same MLflow
child run through the Tracker, the same pruner (each member reports to its own trial at each evaluation and
leaves the population when its trial should be pruned; the median rule also compares it with its peers, see
``tuner.study.pruning``), the same outcome rules (``engine.outcome``).
``duration_s`` is the wall time of the shared pass until that member finished; user attr ``population`` is the
number of members it was stacked with (1: it trained sequentially, see ``tuner.train.population``).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tuner.study.engine import PARENT_RUN_ATTR, Objective, Prepared, RunOptions, finished_count, outcome
from tuner.train.population import fit_population
from tuner.study.population_study import reads_from_one_snapshot
from tuner.study.pruning import Pruning
from tuner.recipe import Recipe
from tuner.tracking import Tracker, TrialRun
from tuner.train.fit import FitResult


@dataclass
class _Member:
    trial: Any
    recipe: Recipe
    seed: int
    run: TrialRun


def optimize_population(study: Any, prepared: Prepared, tracker: Tracker, options: RunOptions,
                        on_trial: Optional[Callable[[Any], None]] = None) -> None:
    """Run populations of up to ``options.population`` trials until the study holds ``n_trials`` finished trials,
    ``timeout`` passes, or as many trials as were missing at the start have been asked."""
    objective = Objective(prepared, tracker, study.user_attrs.get(PARENT_RUN_ATTR))
    started, asked = time.monotonic(), 0
    budget = options.n_trials - finished_count(study)
    while asked < budget and finished_count(study) < options.n_trials:
        if options.timeout is not None and time.monotonic() - started > options.timeout:
            break
        size = min(options.population, budget - asked, options.n_trials - finished_count(study))
        asked += size
        _run_population(study, objective, size)
        if on_trial is not None:
            on_trial(study)


def _run_population(study: Any, objective: Objective, size: int) -> None:
    import optuna
    from optuna.storages._heartbeat import get_heartbeat_thread

    optuna.storages.fail_stale_trials(study)  # what study.optimize does before each trial
    with warnings.catch_warnings(), reads_from_one_snapshot(study) as asked:
        warnings.filterwarnings("ignore", message="Heartbeat of storage")  # ask/tell run the threads optimize would
        members = []
        for _ in range(size):
            asked.append(study.ask())
            members.append(_start_member(asked[-1], objective))
    heartbeats = [get_heartbeat_thread(m.trial._trial_id, study._storage) for m in members]
    for heartbeat in heartbeats:
        heartbeat.start()
    try:
        _train(study, objective, members)
    finally:
        for heartbeat in heartbeats:
            heartbeat.join()


def _train(study: Any, objective: Objective, members: list[_Member]) -> None:
    started = time.perf_counter()
    try:
        results = _fit_members(objective, members)
    except KeyboardInterrupt:
        _fail_all(study, objective, members, "interrupted", time.perf_counter() - started)
        raise
    except Exception as error:  # the sequential path marks such a trial FAIL and goes on; so do we, for each member
        _fail_all(study, objective, members, f"error: {type(error).__name__}: {error}", time.perf_counter() - started)
        return
    for member, result in zip(members, results):
        _finish_member(study, objective, member, result)


def _fit_members(objective: Objective, members: list[_Member]) -> list[FitResult]:
    """Train the population, each member reporting to its own trial; every report is written before this returns."""
    prepared = objective.prepared
    pruning = Pruning(members[0].trial.study, [m.trial for m in members])
    numbers = [m.trial.number for m in members]

    def on_evaluated(step: int, metrics: dict[int, dict[str, float]]) -> None:
        pruning.record(step, {numbers[i]: values[prepared.metric] for i, values in metrics.items()})

    try:
        results = fit_population(
            prepared.task, [m.recipe for m in members], objective.budget, seeds=[m.seed for m in members],
            on_eval=[objective.reporter(m.trial, m.run, pruning) for m in members],
            on_evaluated=on_evaluated, metric=prepared.metric, direction=prepared.direction, device=prepared.device,
            deterministic=prepared.spec.deterministic,
        )
    except BaseException:
        with contextlib.suppress(Exception):  # what was reported is kept if it can be; the original error goes on
            pruning.flush()
        raise
    pruning.flush()
    return results


def _start_member(trial: Any, objective: Objective) -> _Member:
    return _Member(trial, *objective.start(trial))


def _finish_member(study: Any, objective: Objective, member: _Member, result: FitResult) -> None:
    from optuna.trial import TrialState

    state, reason, value = outcome(result, objective.prepared.metric)
    trial = member.trial
    attrs = {"total_steps": result.total_steps, "population": int(result.extras.get("population", 1))}
    objective.end(trial, member.run, state, reason, result.seconds, result.lr_curve, value, attrs=attrs)
    if state == "PRUNED":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, value)


def _fail_all(study: Any, objective: Objective, members: list[_Member], reason: str, seconds: float) -> None:
    from optuna.trial import TrialState

    for member in members:
        objective.end(member.trial, member.run, "FAIL", reason, seconds, [], None)
        study.tell(member.trial, state=TrialState.FAIL)
