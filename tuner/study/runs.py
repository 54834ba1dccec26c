"""The study's side of its MLflow runs: a trial's link to its run, a lost trial's run closed, the parent's summary.

* A trial's run may be created late -- after an MLflow outage, or by another process sending what a dead one left in
  the spool -- so the trial records its run id whenever the run exists (``RunLinker``), even on a trial that has
  ended meanwhile. Where the trial never recorded it, the lost-trial path finds the run by its tags.
* The parent run's summary is read from the study when it is sent (``study_summary``): whichever process writes it
  last writes the study as it is then, not as one worker saw it. ``tuner show`` writes it again
  (``refresh_summary``), which repairs what a process that died left.
"""

from __future__ import annotations

from typing import Any, Optional

import optuna

from tuner.spec import parse_study
from tuner.study.keys import StudyKeys, TrialKeys
from tuner.study.records import best_recipe_or_none, summarize
from tuner.study.storage import LostTrial, storage_key, trial_id
from tuner.study.storage.sql import record_user_attr
from tuner.study.storage.sqlite import speed_up_sqlite
from tuner.tracking import StudySummary, Tracker, make_tracker, store_exists


def run_link(trial: optuna.Trial) -> dict[str, Any]:
    """What ``RunLinker`` needs to find ``trial`` again from any process: its storage's name and its id there."""
    return {"storage": storage_key(trial.storage), "trial_id": trial_id(trial)}


class RunLinker:
    """``tracker.on_run_created``: records a new run's id on its trial when the trial is in ``storage``."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self.storage, self.key = storage, storage_key(storage)

    def __call__(self, run_id: str, link: dict[str, Any]) -> None:
        if link.get("storage") == self.key:
            record_user_attr(self.storage, int(link["trial_id"]), TrialKeys.RUN_ID, run_id)


class LostRunCloser:
    """Closes the MLflow run of a trial whose worker was lost (FAILED with the reason), through ``tracker`` once it
    is set (the storage is opened before the tracker)."""

    def __init__(self, tracker: Optional[Tracker] = None) -> None:
        self.tracker = tracker

    def __call__(self, lost: LostTrial) -> None:
        if self.tracker is not None:
            self.tracker.fail_lost_trial(lost.study, lost.number, lost.run_id, lost.reason)


def study_summary(study: optuna.Study) -> StudySummary:
    """The study's best recipe and counts, read when called."""
    return lambda: (best_recipe_or_none(study), summarize(study))


def end_study(study: optuna.Study, tracker: Tracker) -> None:
    """Write the parent run's summary, read from the study when it is sent, and end the run unless trials run."""
    tracker.end_study(study.user_attrs.get(StudyKeys.PARENT_RUN), study_summary(study))


def refresh_summary(study: optuna.Study, tracking_uri: Optional[str] = None) -> bool:
    """Write the parent run's summary from the study as it is now (``tuner show``), to the study's MLflow store (or
    ``tracking_uri``) when it exists; whether there was one to write to."""
    parent = study.user_attrs.get(StudyKeys.PARENT_RUN)
    spec = study.user_attrs.get(StudyKeys.SPEC)
    uri = tracking_uri or (parse_study(spec).resolved_tracking_uri() if spec is not None else None)
    if not parent or uri is None or uri.lower() == "none" or not store_exists(uri):
        return False
    speed_up_sqlite()
    end_study(study, make_tracker(uri))
    return True
