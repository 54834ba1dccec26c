"""Tracking: a small Tracker protocol, its MLflow implementation and a NullTracker.

MLflow layout: one experiment per study, one parent run per study (its id is stored on the Optuna
study so every process nests under it), one child run per trial. Runs are addressed by explicit
ids through ``MlflowClient`` — no global active run — and a trial's metrics go out in one
``log_batch`` at its end (per-call logging to SQL stores costs a third of a short trial).

With a remote server (``http://``, ``https://``) a trial's MLflow calls run on one background
thread, in order, so training does not wait for network round trips: ``start_trial`` returns at
once and hands the run id to ``on_started`` when the run exists; ``end_trial`` waits only for the
run to exist (usually long done), queues the final batch and the state, and returns. ``flush``
waits for everything queued (the engine calls it before a process ends its share of a study).
Local stores (``sqlite:``, a directory, a database URL) run the same calls inline: their cost is
Python CPU time, which a thread would take from training anyway -- under the GIL, more than it
saves (bench/overhead.py).

The LR curve is logged with the points MLflow needs to draw it (it joins points with straight
lines) within ``LR_CURVE_TOLERANCE`` of its peak: a constant LR is 2 points, a cosine a few dozen.

An MLflow failure never fails a trial: each call is retried once, then a warning is printed and
the gap is returned to the caller so it can be recorded on the trial (failures of the queued end
of a trial come too late for that: they are warned only).
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import yaml

from tuner.recipe import Recipe

MAX_PARAM_LENGTH = 500
LR_CURVE_TOLERANCE = 0.002
REMOTE_SCHEMES = ("http://", "https://")
_log = logging.getLogger(__name__)


@dataclass
class TrialRun:
    """A trial's run: its id (None when it could not be created) and what is buffered for it."""

    run_id: Optional[str]
    metrics: list[tuple[str, float, int]] = field(default_factory=list)  # (key, value, step)
    errors: list[str] = field(default_factory=list)
    created: Optional[Future] = None  # the queued creation of the run; run_id is set when it is done

    def wait_created(self) -> None:
        """Block until the run exists (or its creation failed: ``run_id`` stays None, ``errors`` say why)."""
        if self.created is not None:
            self.created.result()


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended, decided once (``tuner.study.lifecycle``) and recorded alike in the study and in MLflow.

    ``state`` is COMPLETE, PRUNED or FAIL; ``value`` the objective (None for a failed trial, or a pruned one that
    never evaluated); ``seconds`` of training; ``lr_curve`` the (step, LR) points the run kept; ``attrs`` what the
    study records besides (total steps, population size)."""

    state: str
    reason: str
    value: Optional[float] = None
    seconds: float = 0.0
    lr_curve: list[tuple[int, float]] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)


class Tracker(Protocol):
    """Where trials are logged: one study (experiment + parent run), one run per trial."""

    def start_study(self, study_name: str, spec: dict[str, Any]) -> Optional[str]:
        """Create the study's experiment and parent run; returns the parent run id (None when not tracked)."""

    def start_trial(
        self,
        parent_run_id: Optional[str],
        study_name: str,
        number: int,
        recipe: Recipe,
        tags: dict[str, str],
        on_started: Optional[Callable[[Optional[str]], None]] = None,
    ) -> TrialRun:
        """Open a trial's run under the parent with the recipe as params; ``on_started(run_id)`` once it exists."""

    def log_metrics(self, run: TrialRun, metrics: dict[str, float], step: int) -> None:
        """An evaluation's metrics at ``step`` (buffered until the trial ends)."""

    def end_trial(self, run: TrialRun, outcome: TrialOutcome) -> list[str]:
        """Close a trial's run with its outcome; returns what could not be logged so far."""

    def end_study(self, parent_run_id: Optional[str], best: Optional[dict[str, Any]], summary: dict[str, Any]) -> None:
        """Put the best recipe and the summary on the parent run; it is FINISHED when no trial is running any more,
        RUNNING while other workers are on it."""

    def resume_study(self, parent_run_id: Optional[str]) -> None:
        """The parent run is RUNNING again (a run or a worker starts on the study)."""

    def delete_study(self, study_name: str) -> bool:
        """Delete the study's experiment (MLflow keeps it as deleted, restorable); whether there was one."""

    def log_to_study(
        self,
        parent_run_id: Optional[str],
        params: Optional[dict[str, Any]] = None,
        tags: Optional[dict[str, str]] = None,
        files: tuple[str, ...] = (),
    ) -> bool:
        """Add params, tags and files to the parent run; whether all of it was logged."""

    def flush(self) -> None:
        """Wait until everything queued has been sent."""


class NullTracker:
    """Tracks nothing (``tracking_uri: none``)."""

    def start_study(self, study_name: str, spec: dict[str, Any]) -> Optional[str]:
        """No parent run: None."""
        return None

    def start_trial(self, parent_run_id, study_name, number, recipe, tags, on_started=None) -> TrialRun:
        """A run without an id (``on_started`` is not called)."""
        return TrialRun(run_id=None)

    def log_metrics(self, run: TrialRun, metrics: dict[str, float], step: int) -> None:
        """Nothing is logged."""
        pass

    def end_trial(self, run: TrialRun, outcome: TrialOutcome) -> list[str]:
        """Nothing is logged; no errors."""
        return []

    def end_study(self, parent_run_id, best, summary) -> None:
        """Nothing is logged."""
        pass

    def resume_study(self, parent_run_id: Optional[str]) -> None:
        """Nothing is logged."""
        pass

    def delete_study(self, study_name: str) -> bool:
        """Nothing is tracked: nothing to delete."""
        return False

    def log_to_study(self, parent_run_id, params=None, tags=None, files=()) -> bool:
        """Nothing is logged."""
        return False

    def flush(self) -> None:
        """Nothing is queued."""
        pass


_RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}

STUDY_COUNTS = ("trials", "complete", "pruned", "fail", "running", "waiting")
"""The counts a study's summary always carries on its parent run (zeros included)."""


class MlflowTracker:
    """Logs a study to MLflow at ``tracking_uri`` (``sqlite:///mlflow.db``, ``http://host:5000``, ``postgresql://...``)."""

    def __init__(self, tracking_uri: str, retries: int = 1, retry_wait: float = 0.5) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self._experiment_ids: dict[str, str] = {}
        self.retries, self.retry_wait = retries, retry_wait
        remote = tracking_uri.lower().startswith(REMOTE_SCHEMES)
        # one thread: the calls stay in order
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuner-mlflow") if remote else _Inline()

    def flush(self) -> None:
        """Wait until every queued MLflow call is done."""
        self._queue.submit(lambda: None).result()

    # -- study -------------------------------------------------------------------------------
    def start_study(self, study_name: str, spec: dict[str, Any]) -> Optional[str]:
        """Create the study's experiment and parent run; returns the parent run id."""
        experiment_id = self._experiment_id(study_name)
        run = self.client.create_run(
            experiment_id, run_name=study_name, tags={"tuner.role": "study", "tuner.study": study_name}
        )
        self.client.log_text(run.info.run_id, yaml.safe_dump(spec, sort_keys=False), "study.yaml")
        return run.info.run_id

    def end_study(self, parent_run_id: Optional[str], best: Optional[dict[str, Any]], summary: dict[str, Any]) -> None:
        """Put the summary and the best recipe on the parent run, and end it (FINISHED) unless trials are still
        running (other workers: it stays RUNNING, and the last one out ends it).

        Every count is written, zeros included, so no count of an earlier summary is left standing. The best recipe
        goes into tags ``tuner.best.<key>`` (flat, as the trials' params) and ``best_recipe.yaml``: MLflow refuses to
        change a param once written, and the best recipe changes as the study goes on."""
        self.flush()
        if parent_run_id is None:
            return
        from mlflow.entities import Metric, RunTag

        now = _now_ms()
        counts = {**dict.fromkeys(STUDY_COUNTS, 0), **summary}
        metrics = [
            Metric(f"study.{key}", float(value), now, 0)
            for key, value in counts.items()
            if isinstance(value, (int, float))
        ]
        tags = [RunTag(f"tuner.summary.{key}", str(value)) for key, value in counts.items()]
        if best is not None:
            tags += [
                RunTag(f"tuner.best.{key}", str(value)[:MAX_PARAM_LENGTH])
                for key, value in Recipe.from_dict(best).flat().items()
            ]
        self._safe("log study summary", self.client.log_batch, parent_run_id, metrics=metrics, tags=tags)
        if best is not None:
            self._safe(
                "log best recipe",
                self.client.log_text,
                parent_run_id,
                yaml.safe_dump(best, sort_keys=False),
                "best_recipe.yaml",
            )
        if counts["running"]:
            self.resume_study(parent_run_id)
        else:
            self._safe("end study run", self.client.set_terminated, parent_run_id, "FINISHED")

    def resume_study(self, parent_run_id: Optional[str]) -> None:
        """The parent run is RUNNING again (a run or a worker starts on the study)."""
        if parent_run_id is not None:
            self._safe("mark study run running", self.client.update_run, parent_run_id, "RUNNING")

    def delete_study(self, study_name: str) -> bool:
        """Delete the study's experiment (MLflow keeps it as deleted, restorable); whether there was one."""
        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            return False
        self.client.delete_experiment(experiment.experiment_id)
        return True

    def log_to_study(
        self,
        parent_run_id: Optional[str],
        params: Optional[dict[str, Any]] = None,
        tags: Optional[dict[str, str]] = None,
        files: tuple[str, ...] = (),
    ) -> bool:
        """Add params, tags and files (artifacts) to the study's parent run (LR ranges of ``lr: auto``, the report);
        whether all of it was logged (a failure is warned)."""
        if parent_run_id is None:
            return False
        from mlflow.entities import Param, RunTag

        errors: list[str] = []

        params_list = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in (params or {}).items()]
        tags_list = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
        if params_list or tags_list:
            self._safe(
                "log study params",
                self.client.log_batch,
                parent_run_id,
                params=params_list,
                tags=tags_list,
                errors=errors,
            )
        for path in files:
            self._safe(f"log {path}", self.client.log_artifact, parent_run_id, path, errors=errors)
        return not errors

    def _trial_experiment_id(self, name: str) -> str:
        """The study's experiment id, looked up once per process (one query less per trial)."""
        if name not in self._experiment_ids:
            self._experiment_ids[name] = self._experiment_id(name)
        return self._experiment_ids[name]

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another worker created it first
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    # -- trials --------------------------------------------------------------------------------
    def start_trial(
        self,
        parent_run_id: Optional[str],
        study_name: str,
        number: int,
        recipe: Recipe,
        tags: dict[str, str],
        on_started: Optional[Callable[[Optional[str]], None]] = None,
    ) -> TrialRun:
        """Queue the creation of the trial's child run, with the recipe as flat params and as ``recipe.yaml``; returns
        at once. ``on_started(run_id)`` is called on the tracking thread when the run exists (None: it failed)."""
        run = TrialRun(run_id=None)

        def create() -> None:
            run.run_id = self._safe(
                "create trial run",
                self._create_trial_run,
                parent_run_id,
                study_name,
                number,
                recipe,
                tags,
                errors=run.errors,
            )
            if on_started is not None:
                try:
                    on_started(run.run_id)
                except Exception as error:  # the trial goes on; only the link from trial to run is missing
                    warnings.warn(
                        f"could not record MLflow run id {run.run_id}: {type(error).__name__}: {error}",
                        RuntimeWarning,
                        stacklevel=2,
                    )

        run.created = self._queue.submit(create)
        return run

    def _create_trial_run(self, parent_run_id, study_name, number, recipe, tags) -> str:
        from mlflow.entities import Param

        all_tags = {"tuner.role": "trial", "tuner.study": study_name, "tuner.trial_number": str(number), **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self._trial_experiment_id(study_name), run_name=f"trial-{number}", tags=all_tags)
        params = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in recipe.flat().items()]
        self.client.log_batch(run.info.run_id, params=params)
        _log_text(
            run.info.artifact_uri, self.tracking_uri, yaml.safe_dump(recipe.to_dict(), sort_keys=False), "recipe.yaml"
        )
        return run.info.run_id

    def log_metrics(self, run: TrialRun, metrics: dict[str, float], step: int) -> None:
        """Buffer an evaluation's metrics; they are sent in one batch by ``end_trial``."""
        run.metrics.extend((key, float(value), step) for key, value in metrics.items())

    def end_trial(self, run: TrialRun, outcome: TrialOutcome) -> list[str]:
        """Queue the metrics, the LR curve, the final state and reason, and the run's end. Returns the errors seen so
        far (creating the run); later ones are warned."""
        run.wait_created()
        errors = list(run.errors)
        if run.run_id is not None:
            self._queue.submit(self._end_trial_run, run, outcome)
        return errors

    def _end_trial_run(self, run: TrialRun, outcome: TrialOutcome) -> None:
        from mlflow.entities import Metric, RunTag

        now = _now_ms()
        metrics = [Metric(key, v, now, step) for key, v, step in run.metrics]
        metrics += [Metric("lr", lr, now, step) for step, lr in simplify_curve(outcome.lr_curve, LR_CURVE_TOLERANCE)]
        if outcome.value is not None:
            metrics.append(Metric("objective", float(outcome.value), now, 0))
        tags = [
            RunTag("tuner.state", outcome.state),
            RunTag("tuner.reason", outcome.reason[:5000]),
            RunTag("tuner.duration_s", f"{outcome.seconds:.3f}"),
        ]
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow caps a batch at 1000 metrics
            self._safe(
                "log trial metrics",
                self.client.log_batch,
                run.run_id,
                metrics=metrics[start : start + 1000],
                tags=tags if start == 0 else [],
                errors=run.errors,
            )
        self._safe(
            "end trial run",
            self.client.set_terminated,
            run.run_id,
            _RUN_STATUS.get(outcome.state, "KILLED"),
            errors=run.errors,
        )

    # -- resilience ------------------------------------------------------------------------------
    def _safe(
        self, what: str, call: Callable[..., Any], *args: Any, errors: Optional[list[str]] = None, **kwargs: Any
    ) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return call(*args, **kwargs)
            except Exception as error:  # tracking must never fail a trial
                if attempt < self.retries:
                    time.sleep(self.retry_wait)
                    continue
                message = f"MLflow: could not {what}: {type(error).__name__}: {error}"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                if errors is not None:
                    errors.append(message)
        return None


def _log_text(artifact_uri: str, tracking_uri: str, text: str, name: str) -> None:
    """``MlflowClient.log_text`` for a run whose artifact URI is known: the client would first read the whole run
    back to learn it (2.9 ms against 0.8 ms per trial on SQLite). A repository that takes a stream (a local
    directory) gets the text written in place, not copied from a temporary directory (0.4 against 1.4 ms)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repository = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    if hasattr(repository, "log_artifact_from_stream"):
        repository.log_artifact_from_stream(io.BytesIO(text.encode()), name)
        return
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_text(text)
        repository.log_artifact(str(path))


class _Inline:
    """An executor that runs each call at once, in the caller's thread (local MLflow stores)."""

    def submit(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(call(*args, **kwargs))
        except Exception as error:  # as a thread pool would: the caller sees it in .result()
            future.set_exception(error)
        return future  # a KeyboardInterrupt goes on at once: Ctrl-C must not wait for the trial's end


def simplify_curve(points: list[tuple[int, float]], tolerance: float) -> list[tuple[int, float]]:
    """The subset of ``points`` (step, value) whose straight-line joins stay within ``tolerance`` times the curve's
    largest magnitude of every dropped point (Ramer-Douglas-Peucker on the value axis); first and last are kept."""
    if len(points) <= 2:
        return list(points)
    import numpy as np

    steps = np.array([step for step, _ in points], dtype=float)
    values = np.array([value for _, value in points], dtype=float)
    if not np.all(np.isfinite(values)):
        return list(points)
    limit = tolerance * float(np.max(np.abs(values)))
    keep = np.zeros(len(points), dtype=bool)
    keep[[0, -1]] = True
    segments = [(0, len(points) - 1)]
    while segments:
        first, last = segments.pop()
        if last - first < 2:
            continue
        inside = slice(first + 1, last)
        line = values[first] + (values[last] - values[first]) * (steps[inside] - steps[first]) / (
            steps[last] - steps[first]
        )
        errors = np.abs(values[inside] - line)
        worst = int(np.argmax(errors))
        if errors[worst] > limit:
            middle = first + 1 + worst
            keep[middle] = True
            segments += [(first, middle), (middle, last)]
    return [point for point, kept in zip(points, keep) if kept]


def make_tracker(tracking_uri: str) -> Tracker:
    """``none`` disables tracking; anything else is an MLflow tracking URI."""
    if tracking_uri.lower() == "none":
        return NullTracker()
    return MlflowTracker(tracking_uri)


def _now_ms() -> int:
    return int(time.time() * 1000)
