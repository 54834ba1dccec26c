"""Reading a study's results: typed trial records, the best trial and recipe, counts by state.

Every reader (``tuner show``/``best``/``export``, lock files, the report, warm start, the MLflow summary) goes through
these, so the user attributes tuner writes on a trial (``tuner.study.keys``) are read in one place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import TunerError
from tuner.recipe import Recipe
from tuner.study.keys import StudyKeys, TrialKeys
from tuner.study.storage.sql import count_trials

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
"""What ``n_trials`` counts: complete and pruned trials."""


@dataclass(frozen=True)
class TrialRecord:
    """One trial as tuner wrote it: Optuna's state and value, and tuner's user attributes, typed."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: Optional[float]
    recipe: Optional[dict[str, Any]]
    seed: Optional[int] = None
    reason: str = ""
    duration_s: Optional[float] = None
    total_steps: Optional[int] = None
    steps_done: Optional[int] = None
    population: Optional[int] = None
    worker: Optional[str] = None
    run_id: Optional[str] = None
    warm_start: Optional[str] = None
    tracking_errors: list[str] = field(default_factory=list)
    intermediate_values: dict[int, float] = field(default_factory=dict)
    model: Optional[str] = None  # the file of its final weights (save_model)
    resumed_from: Optional[dict[str, int]] = None  # {"trial": N, "step": S}: resumed from trial N's checkpoint
    started: Optional[datetime] = None
    completed: Optional[datetime] = None

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        """The record of a trial read from a study."""
        attrs = trial.user_attrs
        return cls(
            trial.number,
            trial.state.name,
            trial.value,
            attrs.get(TrialKeys.RECIPE),
            attrs.get(TrialKeys.SEED),
            str(attrs.get(TrialKeys.REASON, "")),
            attrs.get(TrialKeys.DURATION),
            attrs.get(TrialKeys.TOTAL_STEPS),
            attrs.get(TrialKeys.STEPS_DONE),
            attrs.get(TrialKeys.POPULATION),
            attrs.get(TrialKeys.WORKER),
            attrs.get(TrialKeys.RUN_ID) or None,
            attrs.get(TrialKeys.WARM_START),
            list(attrs.get(TrialKeys.TRACKING_ERRORS, [])),
            dict(trial.intermediate_values),
            attrs.get(TrialKeys.MODEL),
            attrs.get(TrialKeys.RESUMED),
            trial.datetime_start,
            trial.datetime_complete,
        )

    def to_recipe(self) -> Recipe:
        """The trial's ``Recipe`` (``TunerError`` when the trial has none: it was not made by tuner)."""
        if self.recipe is None:
            raise TunerError(f"trial {self.number} has no recipe (it was not made by `tuner run`)")
        return Recipe.from_dict(self.recipe)


def records(study: optuna.Study, states: Optional[tuple[TrialState, ...]] = None) -> list[TrialRecord]:
    """Every trial of the study (in ``states``) as a ``TrialRecord``, by number."""
    return [TrialRecord.of(trial) for trial in study.get_trials(deepcopy=False, states=states)]


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The study's best complete trial (``TunerError`` when there is none yet)."""
    try:
        return study.best_trial
    except ValueError:
        raise TunerError(f"study {study.study_name!r} has no complete trial yet") from None


def best_record(study: optuna.Study) -> TrialRecord:
    """The best complete trial's record."""
    return TrialRecord.of(best_trial(study))


def trial_record(study: optuna.Study, number: int) -> TrialRecord:
    """Trial ``number``'s record, whatever its state (``TunerError`` when the study has no such trial)."""
    trials = study.get_trials(deepcopy=False)
    found = [trial for trial in trials if trial.number == number]
    if not found:
        numbers = f"trials 0..{len(trials) - 1}" if trials else "no trials yet"
        raise TunerError(f"study {study.study_name!r} has no trial {number} ({numbers})")
    return TrialRecord.of(found[0])


def best_recipe(study: optuna.Study) -> Recipe:
    """The best complete trial's recipe."""
    return best_record(study).to_recipe()


def best_recipe_or_none(study: optuna.Study) -> Optional[dict[str, Any]]:
    """The best recipe as a dict, or None when no trial has completed."""
    try:
        return best_record(study).recipe
    except TunerError:
        return None


def top_records(study: optuna.Study, k: int, *, with_recipe: bool = True) -> list[TrialRecord]:
    """The ``k`` best complete trials (with a recipe, unless ``with_recipe`` is False), best first; ties by number."""
    complete = [r for r in records(study, (TrialState.COMPLETE,)) if r.recipe is not None or not with_recipe]
    maximize = study.direction.name == "MAXIMIZE"
    complete.sort(key=lambda r: (-r.value if maximize else r.value, r.number))  # type: ignore[operator]
    return complete[:k]


def finished_count(study: optuna.Study) -> int:
    """Complete and pruned trials: what ``n_trials`` counts."""
    return count_trials(study, FINISHED)


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, best value and best trial number."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    summary: dict[str, Any] = {"trials": len(trials), **{k: v for k, v in counts.items() if v}}
    if any(t.state == TrialState.COMPLETE for t in trials):
        trial = study.best_trial
        summary.update(best_value=trial.value, best_trial=trial.number)
    return summary


def study_summaries(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """Every study in ``storage``: name, direction and ``summarize``'s counts."""
    rows = []
    for summary in optuna.study.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        rows.append({"name": summary.study_name, "direction": study.direction.name.lower(), **summarize(study)})
    return rows


def steps_trained(record: TrialRecord) -> Optional[int]:
    """The optimizer steps a trial trained itself: its ``steps_done``, less the steps of the checkpoint it resumed
    from (the interrupted trial counts those); without ``steps_done`` (a failed or lost trial, a study of an older
    tuner), the planned steps of a complete trial, else the step of its last report; None when nothing says."""
    done = record.steps_done
    if done is None:
        last = max(record.intermediate_values, default=None)
        done = record.total_steps if record.state == "COMPLETE" and record.total_steps else last
    if done is None:
        return None
    return max(int(done) - int((record.resumed_from or {}).get("step", 0)), 0)


def compute(study: optuna.Study) -> dict[str, Any]:
    """What a study cost: optimizer steps trained (all its finished and failed trials, ``steps_trained``) and seconds
    of training, summed."""
    ended = [record for record in records(study) if record.state not in ("RUNNING", "WAITING")]
    steps = sum(steps_trained(record) or 0 for record in ended)
    seconds = sum(record.duration_s or 0.0 for record in ended)
    return {"steps": int(steps), "seconds": round(seconds, 1)}


def compare(studies: Sequence[optuna.Study]) -> list[dict[str, Any]]:
    """One row per study, side by side: metric and direction, best value, best recipe, trials by state, compute."""
    rows = []
    for study in studies:
        summary = summarize(study)
        recipe = best_recipe_or_none(study) or {}
        rows.append(
            {
                "study": study.study_name,
                "metric": study_metric(study),
                "objective": study_objective(study),
                "direction": study.direction.name.lower(),
                "best_value": summary.get("best_value"),
                "best_trial": summary.get("best_trial"),
                "optimizer": recipe.get("optimizer"),
                "lr": recipe.get("lr"),
                "schedule": recipe.get("schedule"),
                "trials": summary["trials"],
                "complete": summary.get("complete", 0),
                "pruned": summary.get("pruned", 0),
                "fail": summary.get("fail", 0),
                **compute(study),
            }
        )
    return rows


def failure_reasons(study: optuna.Study, top: int = 3) -> list[tuple[str, int, str]]:
    """The most frequent reasons the study's failed trials give: (kind -- the reason without its numbers, how many,
    one full example), most frequent first."""
    failed = [
        str(t.user_attrs.get(TrialKeys.REASON, "") or "(no reason recorded)")
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    ]
    groups: dict[str, list[str]] = {}
    for reason in failed:
        groups.setdefault(reason_kind(reason), []).append(reason)
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))[:top]
    return [(kind, len(reasons), reasons[0]) for kind, reasons in ranked]


def reason_kind(reason: str) -> str:
    """A reason without its numbers, so that alike reasons count together (``diverged at step N``)."""
    return re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "N", reason.split(":")[0]).strip() or "(none)"


def study_objective(study: optuna.Study) -> str:
    """What a trial's value is in this study: "final" (its last evaluation) or "best" (studies made before tuner
    recorded it counted the best evaluation)."""
    return str(study.user_attrs.get(StudyKeys.OBJECTIVE, "best"))


def study_metric(study: optuna.Study) -> str:
    """The metric the study optimizes (``value`` for a study tuner did not make)."""
    return str(study.user_attrs.get(StudyKeys.METRIC, "value"))
