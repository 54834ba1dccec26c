"""Tracking: a small Tracker protocol, its MLflow implementation and a NullTracker.

MLflow layout: one experiment per study, one parent run per study (its id is stored on the Optuna
study so every process nests under it), one child run per trial. Runs are addressed by explicit
ids through ``MlflowClient`` — no global active run — and a trial's metrics go out in one
``log_batch`` at its end (per-call logging to SQL stores costs a third of a short trial).

An MLflow failure never fails a trial: each call is retried once, then a warning is printed and
the gap is returned to the caller so it can be recorded on the trial.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import yaml

from tuner.recipe import Recipe

MAX_PARAM_LENGTH = 500
_log = logging.getLogger(__name__)


@dataclass
class TrialRun:
    """A trial's run: its id (None when it could not be created) and what is buffered for it."""

    run_id: Optional[str]
    metrics: list[tuple[str, float, int]] = field(default_factory=list)  # (key, value, step)
    errors: list[str] = field(default_factory=list)


class Tracker(Protocol):
    def start_study(self, study_name: str, spec: dict[str, Any]) -> Optional[str]: ...

    def start_trial(self, parent_run_id: Optional[str], study_name: str, number: int, recipe: Recipe,
                    tags: dict[str, str]) -> TrialRun: ...

    def log_metrics(self, run: TrialRun, metrics: dict[str, float], step: int) -> None: ...

    def end_trial(self, run: TrialRun, state: str, reason: str, duration: float, lr_curve: list[tuple[int, float]],
                  value: Optional[float]) -> list[str]: ...

    def end_study(self, parent_run_id: Optional[str], best: Optional[dict[str, Any]], summary: dict[str, Any]) -> None: ...

    def log_to_study(self, parent_run_id: Optional[str], params: Optional[dict[str, Any]] = None,
                     tags: Optional[dict[str, str]] = None, files: tuple[str, ...] = ()) -> None: ...


class NullTracker:
    """Tracks nothing (``tracking_uri: none``)."""

    def start_study(self, study_name: str, spec: dict[str, Any]) -> Optional[str]:
        return None

    def start_trial(self, parent_run_id, study_name, number, recipe, tags) -> TrialRun:
        return TrialRun(run_id=None)

    def log_metrics(self, run: TrialRun, metrics: dict[str, float], step: int) -> None:
        pass

    def end_trial(self, run, state, reason, duration, lr_curve, value) -> list[str]:
        return []

    def end_study(self, parent_run_id, best, summary) -> None:
        pass

    def log_to_study(self, parent_run_id, params=None, tags=None, files=()) -> None:
        pass


_RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


class MlflowTracker:
    """Logs a study to MLflow at ``tracking_uri`` (``sqlite:///mlflow.db``, ``http://host:5000``, ``postgresql://...``)."""

    def __init__(self, tracking_uri: str, retries: int = 1, retry_wait: float = 0.5) -> None:
        from mlflow.tracking import MlflowClient

        from tuner.sqlite_tuning import speed_up_sqlite

        speed_up_sqlite()
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self._experiment_ids: dict[str, str] = {}
        self.retries, self.retry_wait = retries, retry_wait

    # -- study -------------------------------------------------------------------------------
    def start_study(self, study_name: str, spec: dict[str, Any]) -> Optional[str]:
        """Create the study's experiment and parent run; returns the parent run id."""
        experiment_id = self._experiment_id(study_name)
        run = self.client.create_run(experiment_id, run_name=study_name, tags={"tuner.role": "study", "tuner.study": study_name})
        self.client.log_text(run.info.run_id, yaml.safe_dump(spec, sort_keys=False), "study.yaml")
        return run.info.run_id

    def end_study(self, parent_run_id: Optional[str], best: Optional[dict[str, Any]], summary: dict[str, Any]) -> None:
        """Put the best recipe and the summary on the parent run (it stays open for later workers to nest under)."""
        if parent_run_id is None:
            return
        from mlflow.entities import Metric, RunTag

        now = _now_ms()
        metrics = [Metric(f"study.{key}", float(value), now, 0) for key, value in summary.items() if isinstance(value, (int, float))]
        tags = [RunTag(f"tuner.summary.{key}", str(value)) for key, value in summary.items()]
        self._safe("log study summary", self.client.log_batch, parent_run_id, metrics=metrics, tags=tags)
        if best is not None:
            self._safe("log best recipe", self.client.log_text, parent_run_id, yaml.safe_dump(best, sort_keys=False), "best_recipe.yaml")

    def log_to_study(self, parent_run_id: Optional[str], params: Optional[dict[str, Any]] = None,
                     tags: Optional[dict[str, str]] = None, files: tuple[str, ...] = ()) -> None:
        """Add params, tags and files (artifacts) to the study's parent run (LR ranges of ``lr: auto``, the report)."""
        if parent_run_id is None:
            return
        from mlflow.entities import Param, RunTag

        params_list = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in (params or {}).items()]
        tags_list = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
        if params_list or tags_list:
            self._safe("log study params", self.client.log_batch, parent_run_id, params=params_list, tags=tags_list)
        for path in files:
            self._safe(f"log {path}", self.client.log_artifact, parent_run_id, path)

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
    def start_trial(self, parent_run_id: Optional[str], study_name: str, number: int, recipe: Recipe,
                    tags: dict[str, str]) -> TrialRun:
        """Create the trial's child run with the recipe as flat params and as ``recipe.yaml``."""
        errors: list[str] = []
        run = self._safe("create trial run", self._create_trial_run, parent_run_id, study_name, number, recipe, tags, errors=errors)
        return TrialRun(run_id=run, errors=errors)

    def _create_trial_run(self, parent_run_id, study_name, number, recipe, tags) -> str:
        from mlflow.entities import Param

        all_tags = {"tuner.role": "trial", "tuner.study": study_name, "tuner.trial_number": str(number), **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self._trial_experiment_id(study_name), run_name=f"trial-{number}", tags=all_tags)
        params = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in recipe.flat().items()]
        self.client.log_batch(run.info.run_id, params=params)
        self.client.log_text(run.info.run_id, yaml.safe_dump(recipe.to_dict(), sort_keys=False), "recipe.yaml")
        return run.info.run_id

    def log_metrics(self, run: TrialRun, metrics: dict[str, float], step: int) -> None:
        """Buffer an evaluation's metrics; they are sent in one batch by ``end_trial``."""
        run.metrics.extend((key, float(value), step) for key, value in metrics.items())

    def end_trial(self, run: TrialRun, state: str, reason: str, duration: float, lr_curve: list[tuple[int, float]],
                  value: Optional[float]) -> list[str]:
        """Flush metrics and the LR curve, tag the final state and reason, close the run. Returns the errors seen."""
        if run.run_id is None:
            return run.errors
        from mlflow.entities import Metric, RunTag

        now = _now_ms()
        metrics = [Metric(key, v, now, step) for key, v, step in run.metrics]
        metrics += [Metric("lr", lr, now, step) for step, lr in lr_curve]
        if value is not None:
            metrics.append(Metric("objective", float(value), now, 0))
        tags = [RunTag("tuner.state", state), RunTag("tuner.reason", reason[:5000]), RunTag("tuner.duration_s", f"{duration:.3f}")]
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow caps a batch at 1000 metrics
            self._safe("log trial metrics", self.client.log_batch, run.run_id, metrics=metrics[start:start + 1000],
                       tags=tags if start == 0 else [], errors=run.errors)
        self._safe("end trial run", self.client.set_terminated, run.run_id, _RUN_STATUS.get(state, "KILLED"), errors=run.errors)
        return run.errors

    # -- resilience ------------------------------------------------------------------------------
    def _safe(self, what: str, call: Callable[..., Any], *args: Any, errors: Optional[list[str]] = None, **kwargs: Any) -> Any:
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


def make_tracker(tracking_uri: str) -> Tracker:
    """``none`` disables tracking; anything else is an MLflow tracking URI."""
    if tracking_uri.lower() == "none":
        return NullTracker()
    return MlflowTracker(tracking_uri)


def _now_ms() -> int:
    return int(time.time() * 1000)
