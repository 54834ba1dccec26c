"""One trial life cycle: ask, start, train, report, finish or fail -- for one trial or a population of N.

Every trial tuner runs goes through ``TrialLifecycle``, whether it trains alone (``fit``) or stacked with others
(``fit_population``). This is the one place that decides a trial's state, reason and value (``outcome_of``), writes
its end to the study in one transaction, closes its MLflow run with the same outcome, and tells Optuna:

* ``start``: sample the recipe, fix the seed (a retry keeps the lost trial's), record both and this worker on the
  trial in one write -- before the MLflow run exists, so a worker lost from here on leaves its seed for the retry --
  then queue the MLflow run (the trial records its id once it exists, ``tuner.study.runs``);
* ``reporter``: each evaluation goes to the trial's MLflow run and to the pruner (``tuner.study.pruning``);
* ``finish`` / ``fail`` -> ``end``: reason, duration, steps, tracking errors and the reports not written yet in one
  write; then the MLflow run's end; then ``tell``. Nothing here waits for MLflow: its calls are queued. A trial
  another worker already failed as lost (this worker was paused past the grace period) refuses the write: its
  result is discarded with a warning, its run is closed as the lost trial it is, and the worker goes on.

Checkpoints (``tuner.study.checkpoints``): ``start`` gives each trial its checkpoint plan -- a retry that trains alone
resumes from the checkpoint of the trial it repeats, and its MLflow run is tagged with it -- and ``end`` keeps or
removes folders once the trial is told.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import optuna
from optuna.trial import TrialState

from tuner.errors import UserCodeError
from tuner.recipe import Recipe
from tuner.study.checkpoints import StudyCheckpoints, TrialCheckpoints
from tuner.study.keys import StudyKeys, TrialKeys
from tuner.study.pbt import lineage_record, pbt_config
from tuner.study.prepare import Prepared, train_budget
from tuner.study.pruning import Pruning
from tuner.study.runs import run_link
from tuner.study.storage import QueueEmpty, optimize_loop, trial_id
from tuner.study.storage.heartbeat import Heartbeats, fail_stale_trials
from tuner.study.storage.rdb import asking_from_one_snapshot
from tuner.study.storage.redact import mask_text
from tuner.study.storage.sql import write_trial
from tuner.tracking import LOST_REASON, Tracker, TrialOutcome, TrialRun
from tuner.train import Evaluation, FitResult, OnEval, fit, fit_population, resolve_device
from tuner.train.command import CommandFailed


class TrialResultDiscarded(UserWarning):
    """A trial's result could not be recorded: another worker had already ended it (failed as lost)."""


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed derived from the study seed and the trial number (stable across processes)."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def outcome_of(result: FitResult, metric: str, attrs: Optional[dict] = None) -> TrialOutcome:
    """How a finished run counts: COMPLETE when it ran to the end (or stopped early for patience), its value the
    study's objective -- its final metrics, or its best evaluation (``budget.objective``); PRUNED otherwise -- stopped
    by the pruner, or diverged -- with its last finite value."""
    attrs = {TrialKeys.TOTAL_STEPS: result.total_steps, TrialKeys.STEPS_DONE: result.steps_done, **(attrs or {})}
    common: dict[str, Any] = dict(seconds=result.seconds, lr_curve=result.lr_curve, attrs=attrs)
    counted = result.counted
    if result.status in ("completed", "early_stopped") and counted is not None:
        if metric not in counted:
            return TrialOutcome(
                "FAIL",
                f"error: the run ended without the study's metric {metric!r} (it reported {sorted(counted)})",
                **common,
            )
        reason = "completed" if result.status == "completed" else f"early stopped: {result.reason}"
        return TrialOutcome("COMPLETE", reason, counted[metric], **common)
    last = result.last.metrics[metric] if result.last is not None else None
    if result.status == "stopped":
        return TrialOutcome("PRUNED", f"pruned at step {result.steps_done}", last, **common)
    return TrialOutcome("PRUNED", result.reason or "no evaluation", last, **common)


@dataclass
class StartedTrial:
    """A trial that has been asked and started: its recipe, seed and MLflow run."""

    trial: optuna.Trial
    recipe: Recipe
    seed: int
    run: TrialRun
    checkpoints: TrialCheckpoints


class TrialLifecycle:
    """Runs the trials of one study in this process (see the module docstring).

    Args:
        study: the Optuna study (its sampler and pruner set).
        prepared: the validated study file.
        tracker: where trials are logged.
    """

    def __init__(self, study: optuna.Study, prepared: Prepared, tracker: Tracker) -> None:
        self.study, self.prepared, self.tracker = study, prepared, tracker
        self.parent_run_id = study.user_attrs.get(StudyKeys.PARENT_RUN)
        self.budget = train_budget(prepared.spec.budget)
        self.stop_requested: Callable[[], bool] = lambda: False
        self.checkpoints = StudyCheckpoints(study, prepared, tracker, self.parent_run_id)

    @contextlib.contextmanager
    def optimize_loop(self) -> Iterator[None]:
        """Inside, a sampler's ``study.stop()`` (an exhausted grid) sets ``stop_requested``."""
        with optimize_loop(self.study) as stop_requested:
            self.stop_requested = stop_requested
            try:
                yield
            finally:
                self.stop_requested = lambda: False

    # -- a batch of trials --------------------------------------------------------------------------------------------

    def run(self, size: int, *, stacked: bool = False) -> None:
        """Ask ``size`` trials and train them together, ending each: with ``fit``, or with ``fit_population`` when
        ``stacked`` (a population run, even a batch of one) or ``size > 1``."""
        stacked = stacked or self.prepared.spec.strategy == "pbt"  # a lone PBT member (a retry) is a population of 1
        fail_stale_trials(self.study)  # what study.optimize does before each trial
        with Heartbeats(self.study) as heartbeats:  # from the moment a trial is asked: a lost start is retried
            members = self._ask(size, heartbeats, resumable=size == 1 and not stacked)
            if members:
                self._train(members, Pruning(self.study, [m.trial for m in members]), stacked or size > 1)

    def _ask(self, size: int, heartbeats: Heartbeats, *, resumable: bool) -> list[StartedTrial]:
        """``size`` started trials, asked from one snapshot of the study (a sampler would re-read every running
        trial at each suggestion). A trial whose start fails is failed (after the snapshot: what it read must not
        move on with a trial that finished meanwhile); Ctrl-C fails every trial asked so far, and goes on.
        ``resumable``: the trials train alone, so a retry resumes from a checkpoint."""
        members: list[StartedTrial] = []
        failed: list[tuple[optuna.Trial, str]] = []
        asked: list[optuna.Trial] = []
        try:
            with asking_from_one_snapshot(self.study) if size > 1 else contextlib.nullcontext():
                for _ in range(size):
                    try:
                        asked.append(self.study.ask())
                    except QueueEmpty:  # a grid study whose every point is taken: this batch is what is left
                        self.stop_requested = lambda: True
                        break
                    heartbeats.add(asked[-1])
                    try:
                        members.append(self.start(asked[-1], resumable=resumable))
                    except Exception as error:
                        failed.append((asked[-1], failure_reason(error)))
        except BaseException:
            for trial in asked[len(members) + len(failed) :]:
                failed.append((trial, "interrupted"))
            self._fail_all(members, "interrupted", 0.0, None)
            raise
        finally:
            for trial, reason in failed:
                self._fail_unstarted(trial, reason)
        return members

    def _fail_unstarted(self, trial: optuna.Trial, reason: str) -> None:
        """Fail a trial whose start failed (it has no MLflow run): its reason on the trial, then tell Optuna."""
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # failed as lost meanwhile: _tell says so
            write_trial(trial, {TrialKeys.REASON: reason})
        self._tell(trial, TrialOutcome("FAIL", reason))

    def _train(self, members: list[StartedTrial], pruning: Pruning, stacked: bool) -> None:
        started = time.perf_counter()
        try:
            results = self._fit(members, pruning, stacked)
        except KeyboardInterrupt:
            self._fail_all(members, "interrupted", time.perf_counter() - started, pruning)
            raise
        except Exception as error:  # the trials fail; the study goes on
            self._fail_all(members, failure_reason(error), time.perf_counter() - started, pruning)
            return
        numbers = [m.trial.number for m in members]
        for member, result in zip(members, results):
            extra = {TrialKeys.POPULATION: int(result.extras.get("population", 1))} if stacked else {}
            extra.update(self.checkpoints.finished(member.checkpoints, result))
            tags: dict[str, str] = {}
            if "pbt" in result.extras:  # the recipe and seed that replay it, its lineage in trial numbers
                attrs, tags = lineage_record(result.extras["pbt"], numbers)
                extra.update(attrs)
            self._report_resumed(member, result, pruning)
            outcome = dataclasses.replace(outcome_of(result, self.prepared.metric, extra), tags=tags)
            self._end_safely(member, outcome, pruning)

    def _report_resumed(self, member: StartedTrial, result: FitResult, pruning: Pruning) -> None:
        """The evaluations a resumed trial took over from its checkpoint, logged and recorded like its own (already
        judged: the pruner's answer does not count), so its curve is whole."""
        resumed = result.extras.get("resumed_step")
        if resumed is not None:
            on_eval = self.reporter(member, pruning)
            for evaluation in result.evaluations:
                if evaluation.step <= resumed:
                    on_eval(evaluation)

    def _fit(self, members: list[StartedTrial], pruning: Pruning, stacked: bool) -> list[FitResult]:
        prepared = self.prepared
        pbt = prepared.spec.strategy == "pbt"
        on_eval = [self.reporter(m, pruning, prune=not pbt) for m in members]
        common: dict[str, Any] = dict(
            metric=prepared.metric,
            direction=prepared.direction,
            device=prepared.device,
            deterministic=prepared.spec.deterministic,
        )
        if prepared.task is None:  # the user's own code trains: one trial at a time
            (member,) = members
            return [self._run_own_code(member, on_eval[0])]
        if not stacked:
            (member,) = members
            checkpoints = member.checkpoints.checkpointer
            return [
                fit(
                    prepared.task,
                    member.recipe,
                    self.budget,
                    on_eval=on_eval[0],
                    seed=member.seed,
                    checkpoints=checkpoints,
                    **common,
                )
            ]
        numbers = [m.trial.number for m in members]

        def on_evaluated(step: int, metrics: dict[int, dict[str, float]]) -> None:
            pruning.record(step, {numbers[i]: values[prepared.metric] for i, values in metrics.items()})

        return fit_population(
            prepared.task,
            [m.recipe for m in members],
            self.budget,
            seeds=[m.seed for m in members],
            on_eval=on_eval,
            on_evaluated=on_evaluated,
            keep_params=self.checkpoints.save_model,
            pbt=pbt_config(prepared.spec, prepared.space, trial_seed(prepared.spec.seed, numbers[0])) if pbt else None,
            **common,
        )

    def _run_own_code(self, member: StartedTrial, on_eval: OnEval) -> FitResult:
        """A ``train:`` function called with a ``tuner.Trial`` here, or a ``command:`` run with one in its process."""
        own, trial, checkpointer = self.prepared.own, member.trial, member.checkpoints.checkpointer
        assert own is not None
        device = str(resolve_device(self.prepared.device))
        info = own.info(
            trial.number, member.recipe, member.seed, device, params=dict(trial.params), checkpoint=checkpointer.plan
        )
        return own.run(info, on_eval, checkpointer)

    def _fail_all(
        self, members: Sequence[StartedTrial], reason: str, seconds: float, pruning: Optional[Pruning]
    ) -> None:
        for member in members:
            self._end_safely(member, TrialOutcome("FAIL", reason, seconds=seconds), pruning)

    def _end_safely(self, member: StartedTrial, outcome: TrialOutcome, pruning: Optional[Pruning]) -> None:
        """``end``; a failure to record one trial's end is warned and the others still end (the trial stays
        RUNNING, and is failed as lost once its heartbeat stops)."""
        try:
            self.end(member, outcome, pruning)
        except Exception as error:
            warnings.warn(
                f"could not record the end of trial {member.trial.number} ({outcome.state}): "
                f"{type(error).__name__}: {error}",
                RuntimeWarning,
                stacklevel=2,
            )

    # -- one trial ----------------------------------------------------------------------------------------------------

    def start(self, trial: optuna.Trial, *, resumable: bool = True) -> StartedTrial:
        """Sample the trial's recipe, fix its seed, record both and this worker on the trial (one write, before the
        MLflow run exists), find the checkpoint it resumes from (``resumable``: it trains alone), then queue its
        MLflow run."""
        recipe = self.prepared.space.sample(trial)
        check_queued_values(trial)
        seed = trial.user_attrs.get(TrialKeys.SEED, trial_seed(self.prepared.spec.seed, trial.number))
        attrs = {
            TrialKeys.RECIPE: recipe.to_dict(),
            TrialKeys.SEED: seed,
            TrialKeys.WORKER: f"{socket.gethostname()}:{os.getpid()}",
        }
        if TrialKeys.RUN_ID in trial.user_attrs:  # a retry must not keep the lost trial's run id
            attrs[TrialKeys.RUN_ID] = ""
        write_trial(trial, attrs)
        checkpoints = self.checkpoints.start(trial, recipe, seed, resumable=resumable)
        tags = {
            "tuner.seed": str(seed),
            "optuna.trial_id": str(trial_id(trial)),
            "tuner.objective": f"{self.budget.objective} {self.prepared.metric}",
            **checkpoints.tags,
        }
        run = self.tracker.start_trial(
            self.parent_run_id,
            self.prepared.spec.name,
            trial.number,
            recipe,
            tags,
            link=run_link(trial),
        )
        return StartedTrial(trial, recipe, seed, run, checkpoints)

    def reporter(self, member: StartedTrial, pruning: Pruning, *, prune: bool = True) -> OnEval:
        """The ``on_eval`` of one trial: metrics to its MLflow run, the objective to the pruner; True: prune it.
        Without ``prune`` (a PBT member: the population replaces its worst members itself) the pruner only hears it."""
        metric = self.prepared.metric

        def on_eval(evaluation: Evaluation) -> bool:
            losses = {} if evaluation.train_loss is None else {"train_loss": evaluation.train_loss}
            self.tracker.log_metrics(member.run, {**evaluation.metrics, **losses}, evaluation.step)
            decided = pruning.report(member.trial, evaluation.step, evaluation.metrics[metric])
            return decided and prune

        return on_eval

    def end(self, member: StartedTrial, outcome: TrialOutcome, pruning: Optional[Pruning] = None) -> None:
        """Record how the trial ended in one write (reason, duration, MLflow errors, ``outcome.attrs`` and the reports
        not written yet), close its MLflow run with the same outcome, and tell Optuna."""
        trial, run = member.trial, member.run
        unwritten = pruning.take_unwritten(trial) if pruning is not None else {}
        attrs = {**outcome.attrs, TrialKeys.REASON: outcome.reason, TrialKeys.DURATION: round(outcome.seconds, 3)}
        errors = list(run.errors)  # so far: the tracking thread may add more
        if errors:
            attrs[TrialKeys.TRACKING_ERRORS] = errors[:5]
        try:  # written before tell: a pruned trial's value is its last written one
            write_trial(trial, attrs, unwritten)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._discarded(trial, outcome, run)  # another worker failed it as lost meanwhile
            return
        self.tracker.end_trial(run, outcome)
        if self._tell(trial, outcome, run):
            self.checkpoints.ended(trial.number, member.checkpoints, outcome)

    def _tell(self, trial: optuna.Trial, outcome: TrialOutcome, run: Optional[TrialRun] = None) -> bool:
        """Tell Optuna how the trial ended; whether it took it (False: discarded, with a warning)."""
        state = TrialState[outcome.state]
        value = outcome.value if state == TrialState.COMPLETE else None
        try:
            told = self.study.tell(trial, value, state=state, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as lost by another worker a moment ago
            told = None
        except RuntimeError as error:  # an Optuna without the loop flag: a sampler's study.stop() outside optimize
            if "Study.stop" not in str(error):
                raise
            self.stop_requested = lambda: True
            return True
        if told is None or told.state != state:
            self._discarded(trial, outcome, run)
            return False
        return True

    def _discarded(self, trial: optuna.Trial, outcome: TrialOutcome, run: Optional[TrialRun]) -> None:
        """The trial was failed as lost by another worker: say so, and end its run as that (the other worker may
        not have found it: its creation may have waited for MLflow)."""
        if run is not None:
            self.tracker.end_trial(run, TrialOutcome("FAIL", LOST_REASON, seconds=outcome.seconds))
        retry = _retry_number(trial)
        warnings.warn(
            f"trial {trial.number} was failed as lost by another worker (this one was paused past the "
            f"grace period); its retry{'' if retry is None else f' is trial {retry}, which'} repeats the recipe; "
            f"this result ({outcome.state}: {outcome.reason}) is discarded",
            TrialResultDiscarded,
            stacklevel=3,
        )


class QueuedOutsideSpace(Exception):
    """A queued trial holds values the study's space no longer has (it changed since: ``--allow-change``)."""


def check_queued_values(trial: optuna.Trial) -> None:
    """Raise ``QueuedOutsideSpace`` when a trial taken from the queue (a first trial at the suggested LR, a warm
    start's, a retry) holds a value outside the space it was sampled in: Optuna only warns and trains it. Sampled
    values are always inside, so only queued ones can be outside."""
    outside = [
        f"{name} = {_shown(trial.params[name])} is outside {_described(dist)}"
        for name, dist in trial.distributions.items()
        if not _holds(dist, trial.params[name])
    ]
    if outside:
        raise QueuedOutsideSpace(
            f"queued with values outside the study's space, which changed since: {'; '.join(outside)} (not trained)"
        )


def _holds(distribution: optuna.distributions.BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution)):
        slack = 1e-9 * max(abs(distribution.low), abs(distribution.high))
        return distribution.low - slack <= value <= distribution.high + slack
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return value in distribution.choices
    return True


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def _described(distribution: optuna.distributions.BaseDistribution) -> str:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return f"the choices {list(distribution.choices)}"
    low, high = getattr(distribution, "low", None), getattr(distribution, "high", None)
    return f"[{low:.4g}, {high:.4g}]"


def failure_reason(error: BaseException) -> str:
    """A failed trial's reason: ``error: Type: message`` (the user's code: ``... (at file:line in fn)``), any URL in it
    masked (the study and MLflow keep it)."""
    if isinstance(error, (UserCodeError, CommandFailed)):
        return mask_text(f"error: {error}")
    return mask_text(f"error: {type(error).__name__}: {error}")


def _retry_number(trial: optuna.Trial) -> Optional[int]:
    """The number of the trial that retries ``trial`` (failed as lost by another worker), if it can be read."""
    try:
        for other in trial.study.get_trials(deepcopy=False):
            if optuna.storages.RetryFailedTrialCallback.retried_trial_number(other) == trial.number:
                return other.number
    except Exception:  # only a message depends on it: a storage hiccup here must not end the worker
        return None
    return None
