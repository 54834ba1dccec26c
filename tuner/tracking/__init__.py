"""Tracking: a small Tracker protocol, its MLflow implementation and a NullTracker.

MLflow layout: one experiment per study, one parent run per study (its id is stored on the Optuna study so every
process nests under it), one child run per trial. Runs are addressed by explicit ids through ``MlflowClient`` -- no
global active run -- and a trial's metrics go out in one ``log_batch`` at its end (per-call logging to SQL stores
costs a third of a short trial).

MLflow never blocks training (``calls.py``, ``spool.py``): every call about a trial's run goes through one ordered
queue -- on a background thread for a server, inline for a local store (``sqlite:``, a directory), whose cost is
Python CPU time that a thread would take from training anyway (bench/overhead.py). ``start_trial`` and ``end_trial``
only queue. When the server is away, what could not be sent is kept, in order, in a bounded spool on disk and sent
when it answers; a run created late is still linked to its trial (``on_run_created``), and runs that a dead process
left open are closed FAILED by the process that sends what it left. A failure is recorded where it happens: the
trial's ``tracking_errors`` say when its calls had to wait, or what MLflow refused.

The LR curve is logged with the points MLflow needs to draw it (it joins points with straight lines) within
``LR_CURVE_TOLERANCE`` of its peak: a constant LR is 2 points, a cosine a few dozen (``curve.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

from tuner.recipe import Recipe
from tuner.tracking.curve import simplify_curve

__all__ = [
    "LOST_REASON",
    "STUDY_COUNTS",
    "NullTracker",
    "StudySummary",
    "Tracker",
    "TrialOutcome",
    "TrialRun",
    "make_tracker",
    "simplify_curve",
    "store_exists",
]

LOST_REASON = "worker lost"
"""Why a trial whose worker stopped (killed, paused past the grace period) failed: in the study and on its run."""

STUDY_COUNTS = ("trials", "complete", "pruned", "fail", "running", "waiting")
"""The counts a study's summary always carries on its parent run (zeros included)."""

StudySummary = Callable[[], tuple[Optional[dict[str, Any]], dict[str, Any]]]
"""Reads the study when called: (its best recipe or None, its counts by state and best value)."""

OnRunCreated = Callable[[str, dict[str, Any]], None]
"""``link(run_id, link)``: record a trial's new run id on the trial that ``link`` (from ``start_trial``) names."""


@dataclass
class TrialRun:
    """A trial's run: a key of its own (its calls name the run by it until MLflow gives it an id), the id once the
    run exists, the metrics buffered for it and what could not be logged."""

    key: str
    run_id: Optional[str] = None
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # (key, value, step, time in ms)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended, decided once (``tuner.study.lifecycle``) and recorded alike in the study and in MLflow.

    ``state`` is COMPLETE, PRUNED or FAIL; ``value`` the objective (None for a failed trial, or a pruned one that
    never evaluated); ``seconds`` of training; ``lr_curve`` the (step, LR) points the run kept; ``attrs`` what the
    study records besides (total steps, population size); ``tags`` what its run is tagged with besides (a PBT
    member's lineage)."""

    state: str
    reason: str
    value: Optional[float] = None
    seconds: float = 0.0
    lr_curve: list[tuple[int, float]] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class Tracker(Protocol):
    """Where trials are logged: one study (experiment + parent run), one run per trial.

    ``on_run_created`` (set by the study's side) is called with each trial run's id once it exists -- when
    ``start_trial`` queued it, or later, or in another process that sent what a dead one left."""

    on_run_created: Optional[OnRunCreated]

    def start_study(self, study_name: str, spec: dict[str, Any]) -> Optional[str]:
        """Create the study's experiment and parent run; returns the parent run id (None when not tracked)."""

    def start_trial(
        self,
        parent_run_id: Optional[str],
        study_name: str,
        number: int,
        recipe: Recipe,
        tags: dict[str, str],
        link: Optional[dict[str, Any]] = None,
    ) -> TrialRun:
        """Queue a trial's run under the parent with the recipe as params; ``link`` goes to ``on_run_created``."""

    def log_metrics(self, run: TrialRun, metrics: dict[str, float], step: int) -> None:
        """An evaluation's metrics at ``step`` (buffered until the trial ends)."""

    def end_trial(self, run: TrialRun, outcome: TrialOutcome) -> list[str]:
        """Queue the end of a trial's run with its outcome; returns what could not be logged so far."""

    def fail_lost_trial(self, study_name: str, number: int, run_id: Optional[str], reason: str) -> None:
        """Close the run of a trial whose worker was lost as FAILED with ``reason``: the run ``run_id``, or when the
        trial never recorded it, the study's RUNNING run(s) tagged with the trial's number."""

    def end_study(self, parent_run_id: Optional[str], summary: StudySummary) -> None:
        """Put the best recipe and the counts, read from the study when they are sent, on the parent run; it is
        FINISHED when no trial is running any more, RUNNING while other workers are on it."""

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

    def flush(self) -> bool:
        """Send what is queued: True once all is sent, False when MLflow did not answer (it stays in the spool)."""


class NullTracker:
    """Tracks nothing (``tracking_uri: none``)."""

    on_run_created: Optional[OnRunCreated] = None

    def start_study(self, study_name: str, spec: dict[str, Any]) -> Optional[str]:
        """No parent run: None."""
        return None

    def start_trial(self, parent_run_id, study_name, number, recipe, tags, link=None) -> TrialRun:
        """A run that never gets an id."""
        return TrialRun(key="")

    def log_metrics(self, run: TrialRun, metrics: dict[str, float], step: int) -> None:
        """Nothing is logged."""

    def end_trial(self, run: TrialRun, outcome: TrialOutcome) -> list[str]:
        """Nothing is logged; no errors."""
        return []

    def fail_lost_trial(self, study_name: str, number: int, run_id: Optional[str], reason: str) -> None:
        """No run to close."""

    def end_study(self, parent_run_id: Optional[str], summary: StudySummary) -> None:
        """Nothing is logged."""

    def resume_study(self, parent_run_id: Optional[str]) -> None:
        """Nothing is logged."""

    def delete_study(self, study_name: str) -> bool:
        """Nothing is tracked: nothing to delete."""
        return False

    def log_to_study(self, parent_run_id, params=None, tags=None, files=()) -> bool:
        """Nothing is logged."""
        return False

    def flush(self) -> bool:
        """Nothing is queued."""
        return True


def make_tracker(tracking_uri: str) -> Tracker:
    """``none`` disables tracking; anything else is an MLflow tracking URI."""
    if tracking_uri.lower() == "none":
        return NullTracker()
    from tuner.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker(tracking_uri)


def store_exists(tracking_uri: str) -> bool:
    """Whether writing to ``tracking_uri`` creates no store: a ``sqlite:///`` file or a local directory that is there,
    or a server or database (taken to be there)."""
    lowered = tracking_uri.lower()
    if lowered.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0]).is_file()
    if lowered.startswith("file:"):
        return Path(tracking_uri[len("file:") :].removeprefix("//")).is_dir()
    return "://" in tracking_uri or Path(tracking_uri).is_dir()
