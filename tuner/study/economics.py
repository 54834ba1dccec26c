"""What a study's compute bought: its best value so far against the compute it spent, trial by trial in the order
the trials ended. ``tuner report`` plots it for one study, ``tuner compare`` for several, from this one function.

Counted (``COUNTED`` says it on the pages):

* **steps**: the optimizer steps each ended trial trained itself (``records.steps_trained``): a complete trial its
  run, a pruned or diverged one up to where it stopped, a failed one up to its last report (0 when it reported
  nothing), a trial resumed from a checkpoint only the steps after it; plus the LR range test's sweep of ``lr: auto``,
  which ran before the first trial. Running and waiting trials are not counted.
* **training seconds**: the trials' recorded durations summed (and the range test's). Population members train in
  one shared pass and each records the pass's time until it finished, so this overstates the device time of a
  population study.
* **wall clock**: from the first trial's start to each trial's end (plus the range test before it). With parallel
  workers it is less than the summed seconds; it includes any pause between runs of a resumed study.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

import optuna

from tuner.study.keys import StudyKeys
from tuner.study.records import TrialRecord, records, steps_trained, study_metric
from tuner.study.records import compare as compare_rows

FRACTIONS = (0.9, 0.99, 1.0)
"""The milestones the report gives: the compute to go this far from the first complete trial's value to the best."""

COUNTED = (
    "steps: optimizer steps trained by complete, pruned (up to where they stopped) and failed (up to their last "
    "report) trials, in the order they ended, plus the LR range test of lr: auto; training seconds: their recorded "
    "durations summed (population members share one pass, so this overstates a population's device time); wall "
    "clock: from the first trial's start to each trial's end"
)


@dataclass(frozen=True)
class Spent:
    """Compute spent: optimizer steps, summed training seconds, wall-clock seconds."""

    steps: int = 0
    seconds: float = 0.0
    wall_s: float = 0.0


@dataclass(frozen=True)
class CurvePoint:
    """One ended trial on the curve: the compute spent when it ended (cumulative), and the best value so far (None
    until a trial completes)."""

    trial: int
    state: str
    spent: Spent
    best: Optional[float]


@dataclass(frozen=True)
class Economics:
    """A study's best value so far against its compute (see the module docstring for what is counted)."""

    study: str
    metric: str
    direction: str  # maximize / minimize
    points: tuple[CurvePoint, ...]
    range_test: Spent  # the LR range test's sweep (zero without one), spent before the first trial
    notes: tuple[str, ...]  # what this study's records could not say

    @property
    def total(self) -> Spent:
        """All the compute counted."""
        return self.points[-1].spent if self.points else self.range_test

    @property
    def best(self) -> Optional[float]:
        """The final best value (None: no trial completed)."""
        return self.points[-1].best if self.points else None

    @property
    def first(self) -> Optional[float]:
        """The first complete trial's value, in the order the trials ended."""
        return next((p.best for p in self.points if p.best is not None), None)

    def reach(self, target: float) -> Optional[CurvePoint]:
        """The first point whose best so far is at least as good as ``target`` (None: never reached)."""
        reached = (p for p in self.points if p.best is not None and at_least_as_good(p.best, target, self.direction))
        return next(reached, None)

    def target(self, fraction: float) -> Optional[float]:
        """The value ``fraction`` of the way from the first complete trial's value to the final best."""
        first, best = self.first, self.best
        if first is None or best is None:
            return None
        return best if fraction >= 1 else first + fraction * (best - first)

    def milestones(self) -> list[tuple[float, float, CurvePoint]]:
        """(fraction, target value, the point that reached it) for each of ``FRACTIONS``; empty without a best."""
        found = []
        for fraction in FRACTIONS:
            target = self.target(fraction)
            point = self.reach(target) if target is not None else None
            if target is not None and point is not None:
                found.append((fraction, target, point))
        return found


def economics(study: optuna.Study) -> Economics:
    """The study's best value so far against its compute, one point per ended trial in the order they ended."""
    ended = sorted(
        (r for r in records(study) if r.state not in ("RUNNING", "WAITING")),
        key=lambda r: (_ended_at(r) or datetime.max, r.number),
    )
    range_test, notes = _range_test(study)
    direction = study.direction.name.lower()
    starts = [r.started or r.completed for r in ended]
    origin = min((start for start in starts if start is not None), default=None)
    points: list[CurvePoint] = []
    steps, seconds, wall, best = range_test.steps, range_test.seconds, range_test.wall_s, None
    for record in ended:
        steps += steps_trained(record) or 0
        seconds += record.duration_s or 0.0
        ended_at = _ended_at(record)
        if ended_at is not None and origin is not None:
            wall = max(wall, range_test.wall_s + (ended_at - origin).total_seconds())
        value = record.value if record.state == "COMPLETE" else None
        if value is not None and (best is None or not at_least_as_good(best, value, direction)):
            best = value
        spent = Spent(int(steps), round(seconds, 3), round(wall, 3))
        points.append(CurvePoint(record.number, record.state, spent, best))
    notes += _record_notes(ended)
    return Economics(study.study_name, study_metric(study), direction, tuple(points), range_test, tuple(notes))


def at_least_as_good(value: float, target: float, direction: str) -> bool:
    """Whether ``value`` is at least as good as ``target`` in the direction (``maximize`` / ``minimize``)."""
    return value >= target if direction == "maximize" else value <= target


def _ended_at(record: TrialRecord) -> Optional[datetime]:
    return record.completed or record.started


def _range_test(study: optuna.Study) -> tuple[Spent, list[str]]:
    """The LR range test's steps and seconds, as recorded on the study by ``lr: auto``."""
    found = study.user_attrs.get(StudyKeys.LR_AUTO) or {}
    if not found:
        return Spent(), []
    if not all("steps" in row for row in found.values()):
        return Spent(), ["the LR range test's steps were not recorded (a study of an older tuner): not counted"]
    seconds = round(sum(float(row.get("seconds", 0.0)) for row in found.values()), 3)
    return Spent(sum(int(row["steps"]) for row in found.values()), seconds, seconds), []


def _record_notes(ended: Sequence[TrialRecord]) -> list[str]:
    notes = []
    unknown = [r.number for r in ended if steps_trained(r) is None]
    if unknown:
        notes.append(f"{len(unknown)} ended trials recorded no steps (counted as 0): {_numbers(unknown)}")
    if any((r.population or 1) > 1 for r in ended):
        notes.append("population members shared training passes: summed training seconds overstate the device time")
    return notes


def _numbers(numbers: list[int], shown: int = 10) -> str:
    text = ", ".join(f"#{n}" for n in numbers[:shown])
    return text + (f" and {len(numbers) - shown} more" if len(numbers) > shown else "")


# -- several studies --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """``tuner compare``: one row per study (``records.compare``'s columns and the economics ones), and the curves."""

    rows: list[dict[str, Any]]
    curves: list[Economics]
    reach_value: Optional[float]  # the best value every study reached: the worst of their bests
    reach_note: str  # why there is none, when there is none


def compare(studies: Sequence[optuna.Study]) -> Comparison:
    """Studies side by side: ``records.compare``'s row of each, plus its wall clock, its LR range test's cost and
    the compute it took to reach the best value common to all (``steps_to_reach``, ``seconds_to_reach``,
    ``wall_s_to_reach``, ``trial_to_reach``)."""
    rows = compare_rows(studies)
    curves = [economics(study) for study in studies]
    target, note = common_target(curves)
    for row, curve in zip(rows, curves):
        point = curve.reach(target) if target is not None else None
        row.update(
            wall_s=round(curve.total.wall_s, 1),
            range_test_steps=curve.range_test.steps,
            range_test_seconds=round(curve.range_test.seconds, 1),
            reach_value=target,
            steps_to_reach=point.spent.steps if point else None,
            seconds_to_reach=round(point.spent.seconds, 1) if point else None,
            wall_s_to_reach=round(point.spent.wall_s, 1) if point else None,
            trial_to_reach=point.trial if point else None,
        )
    return Comparison(rows, curves, target, note)


def common_target(curves: Sequence[Economics]) -> tuple[Optional[float], str]:
    """The best value every study reached (the worst of their bests), or None and why."""
    missing = [c.study for c in curves if c.best is None]
    if missing or not curves:
        return None, f"no complete trial yet in {', '.join(missing)}: no common value to reach"
    if len({(c.metric, c.direction) for c in curves}) > 1:
        return None, "the studies optimize different metrics or directions: no common value to reach"
    bests = [c.best for c in curves if c.best is not None]
    worst = min(bests) if curves[0].direction == "maximize" else max(bests)
    return worst, ""
