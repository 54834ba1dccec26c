"""What the pruner hears and decides, in memory: reports written in batches, the median rule without database reads.

Optuna's ``MedianPruner`` reads every completed trial at each ``trial.should_prune()``, and Optuna re-reads every
running trial from the database on each such read (its cache keeps finished trials only): 2-3 ms per decision for
a sequential trial, 22 ms with the 32 running members of a population (quickstart with ``--population 32``: 411
decisions, 9 s of 21). ``Pruning`` reads the completed trials once, again only when the last read is more than
``REFRESH_SECONDS`` old (trials other workers complete meanwhile are seen from then on), keeps each trial's
intermediate values in memory as they are reported, and asks the pruner's own ``prune`` with that view: the same
rule and settings (percentile, ``n_startup_trials``, warm-up, interval, ``n_min_trials``).

Peers. Sequentially the median rule compares a trial with the completed trials at the same step; the first
``n_startup_trials`` trials always run to the end, and so would every member of a first population (nothing has
completed yet). Trials decided by one ``Pruning`` (a population's members) are also compared with each other, as
if they were completed trials: the pool at step ``s`` is the completed trials plus every peer that reported at ``s``
(one pruned at ``s`` or later included; one pruned before ``s`` has no value there).

Other pruners (ASHA, Hyperband, custom) are asked through ``trial.should_prune()`` as usual: ASHA already compares
a trial with every trial that reached its rung, running ones included. ``pruner: none`` answers without a read.

Reports. Where the decision is made in memory (the median rule, ``none``), a trial's intermediate values are written
to the study in one transaction (``tuner.study.storage.sql``): when the trial ends (``flush`` or ``take_unwritten``,
before
it is told; the engine writes them with the trial's last user attrs), or at the next evaluation once the oldest
unwritten value is ``FLUSH_SECONDS`` old, so dashboards still follow long trials. Written one by one, between bursts
of training, 11 reports took ~25 ms of a 1-s trial. ASHA and Hyperband read the trial's values from the study, so
their reports are written at once. A worker killed outright (SIGKILL, power loss) loses the values it had not
written; its trial fails as lost anyway. A step reported twice keeps its first value, as Optuna does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from tuner.study.storage.sql import write_trial

if TYPE_CHECKING:  # optuna is imported by the functions that use it (tests/test_architecture.py)
    import optuna
    from optuna.trial import FrozenTrial, TrialState

REFRESH_SECONDS = 2.0
"""How old the read of the completed trials may be before a decision reads them again."""

FLUSH_SECONDS = 10.0
"""How old an unwritten intermediate value may be before the next report writes the trial's values."""


@dataclass
class _Unwritten:
    """A trial's reported values not yet written to the study, and since when the oldest has waited."""

    trial: optuna.Trial
    since: float
    values: dict[int, float] = field(default_factory=dict)


class _PoolView:
    """What ``PercentilePruner.prune`` reads from a study: its direction and its completed trials."""

    def __init__(self, direction: optuna.study.StudyDirection, completed: list[FrozenTrial]) -> None:
        self.direction, self._completed = direction, completed

    def get_trials(self, deepcopy: bool = True, states: Optional[Sequence[TrialState]] = None) -> list[FrozenTrial]:
        return self._completed


class Pruning:
    """The pruning decisions for ``trials`` (asked and started): one trial, or the members of a population.

    ``record(step, values)`` makes members' values at ``step`` visible to their peers before any of them is
    decided; ``report(trial, step, value)`` reports one trial's value and decides whether to prune it;
    before a trial is told, either ``flush(trial)`` writes what it reported and was not written yet, or
    ``take_unwritten(trial)`` hands those values over and the caller writes them (they are no longer kept here).
    """

    def __init__(self, study: optuna.Study, trials: Sequence[optuna.Trial]) -> None:
        from optuna.pruners import NopPruner, PercentilePruner

        self.pruner = study.pruner
        single_objective = len(study.directions) == 1  # Optuna prunes single-objective studies only
        self.never = isinstance(self.pruner, NopPruner) and single_objective  # pruner "none": no read at all
        # the percentile rule as Optuna writes it (a subclass with its own prune may read more of the study)
        self.in_memory = type(self.pruner).prune is PercentilePruner.prune and single_objective
        self.unwritten: dict[int, _Unwritten] = {}  # by trial number
        if not self.in_memory:
            return
        self.study, self.direction = study, study.direction
        self._read_completed()
        self.members = {trial.number: _intermediate_values_only() for trial in trials}

    def _read_completed(self) -> None:
        from optuna.trial import TrialState

        self.completed = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        self.read_at = time.monotonic()

    def record(self, step: int, values: Mapping[int, float]) -> None:
        """Members' values (by trial number) at ``step``, before any of them is decided."""
        if self.in_memory:
            for number, value in values.items():
                self.members[number].intermediate_values.setdefault(step, value)

    def report(self, trial: optuna.Trial, step: int, value: float) -> bool:
        """Report ``trial``'s ``value`` at ``step``; whether the pruner stops it now."""
        if not (self.never or self.in_memory):
            trial.report(value, step)
            return trial.should_prune()
        self._keep_unwritten(trial, step, value)
        return False if self.never else self._decide(trial, step, value)

    def flush(self, trial: Optional[optuna.Trial] = None) -> None:
        """Write the unwritten intermediate values of ``trial`` (default: of every trial), one transaction a trial."""
        for number in list(self.unwritten) if trial is None else [trial.number]:
            unwritten = self.unwritten.pop(number, None)
            if unwritten is not None:
                write_trial(unwritten.trial, intermediate_values=unwritten.values)

    def take_unwritten(self, trial: optuna.Trial) -> dict[int, float]:
        """The values of ``trial`` not written yet, which the caller now writes (with the trial's last attributes)."""
        unwritten = self.unwritten.pop(trial.number, None)
        return unwritten.values if unwritten is not None else {}

    def _keep_unwritten(self, trial: optuna.Trial, step: int, value: float) -> None:
        now = time.monotonic()
        self.unwritten.setdefault(trial.number, _Unwritten(trial, now)).values.setdefault(step, value)
        if any(now - unwritten.since > FLUSH_SECONDS for unwritten in self.unwritten.values()):
            self.flush()

    def _decide(self, trial: optuna.Trial, step: int, value: float) -> bool:
        if time.monotonic() - self.read_at > REFRESH_SECONDS:
            self._read_completed()
        member = self.members[trial.number]
        member.intermediate_values.setdefault(step, value)
        peers = [m for number, m in self.members.items() if number != trial.number and step in m.intermediate_values]
        return bool(self.pruner.prune(_PoolView(self.direction, self.completed + peers), member))  # type: ignore[arg-type]


def _intermediate_values_only() -> FrozenTrial:
    """A running trial as the pruner reads it: only its intermediate values, kept in memory from now on. Marked
    COMPLETE (value unused) so that, as a peer, the percentile rule counts it like a completed trial."""
    import optuna
    from optuna.trial import TrialState

    return optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=0.0, params={}, distributions={}, intermediate_values={}
    )
