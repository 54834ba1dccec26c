"""How a population uses its study: asking N trials from one read, and pruning members among their peers.

A population keeps N trials RUNNING at once. Optuna re-reads every running trial from the database on each
``study.get_trials`` (its cache only keeps finished trials), and both its TPE sampler (constant liar, the default
since Optuna 5: at every suggestion) and its percentile pruner (at every decision) read the study. With 32 running
members one pruning decision took 22 ms, more than the member's training between two evaluations (quickstart:
411 decisions, 9 s of 21), and asking 32 members took 2.95 s against 1.02 s without the reads of running trials.

Asking. ``reads_from_one_snapshot`` serves the sampler's reads from one read at the start plus the trials asked
since, whose params and sampler notes (system attrs) it mirrors as they are written: the sampler draws exactly
what it would have drawn. Trials other workers finish meanwhile are seen from the next population on; a waiting
(enqueued) trial another ask already took is skipped as Optuna skips it (its state change is refused).

Pruning. Members are told only when their population ends, so in this process the study's completed trials cannot
change during a population: ``PopulationPruning`` reads them once and decides in memory.

Peers. Sequentially, the median rule compares a trial with the completed trials at the same step; the first
``n_startup_trials`` trials always run to the end, and so would every member of a first population (nothing has
completed yet). Here a member is also compared with the other members that reported at the same step, as if they
were completed trials: the pool at step ``s`` is the completed trials plus the peers with a value at ``s`` (a
peer pruned earlier has none). The pruner's own settings (percentile, ``n_startup_trials``, warm-up, interval,
``n_min_trials``) apply to that pool unchanged.

Other pruners (ASHA, Hyperband, custom) are asked through ``trial.should_prune()`` as in sequential runs: ASHA
already compares a trial with every trial that reached its rung, running ones included.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Any, Callable, Container, Iterator, Mapping, Optional, Sequence

if TYPE_CHECKING:  # optuna is imported by the functions that use it (tests/test_architecture.py)
    import optuna
    from optuna.trial import FrozenTrial, TrialState


class _PoolView:
    """What ``PercentilePruner.prune`` reads from a study: its direction and its completed trials."""

    def __init__(self, direction: optuna.study.StudyDirection, completed: list[FrozenTrial]) -> None:
        self.direction, self._completed = direction, completed

    def get_trials(self, deepcopy: bool = True, states: Optional[Sequence[TrialState]] = None) -> list[FrozenTrial]:
        return self._completed


class PopulationPruning:
    """The pruning decisions for the members of one population (``trials``, asked and started).

    ``record(step, values)`` makes members' values at ``step`` visible to their peers before any of them is
    decided; ``should_prune(trial, step, value)`` decides one member (its value already reported to Optuna).
    """

    def __init__(self, study: optuna.Study, trials: Sequence[optuna.Trial]) -> None:
        from optuna.pruners import PercentilePruner
        from optuna.trial import TrialState

        self.pruner = study.pruner
        self.in_memory = isinstance(self.pruner, PercentilePruner) and len(study.directions) == 1
        if not self.in_memory:
            return
        self.direction = study.direction
        self.completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        self.members = {trial.number: _intermediate_values_only() for trial in trials}

    def record(self, step: int, values: Mapping[int, float]) -> None:
        """Members' values (by trial number) at ``step``, before any of them is decided."""
        if self.in_memory:
            for number, value in values.items():
                self.members[number].intermediate_values[step] = value

    def should_prune(self, trial: optuna.Trial, step: int, value: float) -> bool:
        """Whether the pruner stops ``trial`` now, its ``value`` at ``step`` reported."""
        if not self.in_memory:
            return trial.should_prune()
        member = self.members[trial.number]
        member.intermediate_values[step] = value
        peers = [m for number, m in self.members.items() if number != trial.number and step in m.intermediate_values]
        return bool(self.pruner.prune(_PoolView(self.direction, self.completed + peers), member))  # type: ignore[arg-type]


def _intermediate_values_only() -> FrozenTrial:
    """A running member as the pruner reads it: only its intermediate values, kept in memory from now on."""
    import optuna
    from optuna.trial import TrialState

    return optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.0, params={}, distributions={},
                                     intermediate_values={})



@contextlib.contextmanager
def reads_from_one_snapshot(study: optuna.Study) -> Iterator[list[optuna.Trial]]:
    """While a population is asked, serve the study's reads of all trials from one read at the start plus the
    trials asked since, which the caller appends to the list it gets (see the module docstring)."""
    storage = study._storage
    snapshot = storage.get_all_trials(study._study_id, deepcopy=False)
    asked: list[optuna.Trial] = []
    shadowed = {name: storage.__dict__.get(name) for name in ("get_all_trials", "set_trial_system_attr")}
    read_all, write_attr = storage.get_all_trials, storage.set_trial_system_attr

    def get_all_trials(study_id: int, deepcopy: bool = True, states: Optional[Container[TrialState]] = None) -> list[FrozenTrial]:
        if study_id != study._study_id:
            return read_all(study_id, deepcopy, states)
        trials = [t for t in snapshot + [a._cached_frozen_trial for a in asked] if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def set_trial_system_attr(trial_id: int, key: str, value: Any) -> None:
        write_attr(trial_id, key, value)
        for trial in asked:
            if trial._trial_id == trial_id:
                trial._cached_frozen_trial.system_attrs[key] = value

    storage.get_all_trials, storage.set_trial_system_attr = get_all_trials, set_trial_system_attr
    try:
        yield asked
    finally:
        for name, method in shadowed.items():
            _restore(storage, name, method)


def _restore(storage: Any, name: str, method: Optional[Callable[..., Any]]) -> None:
    if method is None:
        delattr(storage, name)
    else:
        setattr(storage, name, method)
