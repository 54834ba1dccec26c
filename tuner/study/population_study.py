"""Asking a population's N trials from one read of the study.

A population keeps N trials RUNNING at once. Optuna re-reads every running trial from the database on each
``study.get_trials`` (its cache keeps finished trials only), and its TPE sampler (constant liar, the default since
Optuna 5) reads the study at every suggestion: asking 32 members took 2.95 s, against 1.02 s without the reads of
running trials. ``reads_from_one_snapshot`` serves those reads from one read at the start plus the trials asked
since, whose params and sampler notes (system attrs, some written inside ``ask`` itself, e.g. the grid sampler's
grid point) it mirrors as they are written: the sampler draws exactly what it would have drawn
(tests/test_population_study.py, every sampler of the engine's table, with enqueued trials). Trials other workers finish meanwhile are seen from the next population on; a waiting
(enqueued) trial another ask already took is skipped as Optuna skips it (its state change is refused).
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Any, Callable, Container, Iterator, Optional

if TYPE_CHECKING:  # optuna is imported by the functions that use it (tests/test_architecture.py)
    import optuna
    from optuna.trial import FrozenTrial, TrialState


@contextlib.contextmanager
def reads_from_one_snapshot(study: optuna.Study) -> Iterator[list[optuna.Trial]]:
    """While a population is asked, serve the study's reads of all trials from one read at the start plus the
    trials asked since, which the caller appends to the list it gets (see the module docstring)."""
    storage = study._storage
    snapshot = storage.get_all_trials(study._study_id, deepcopy=False)
    asked: list[optuna.Trial] = []
    notes: dict[int, dict[str, Any]] = {}  # trial id -> system attrs written meanwhile (samplers write some in ask())
    shadowed = {name: storage.__dict__.get(name) for name in ("get_all_trials", "set_trial_system_attr")}
    read_all, write_attr = storage.get_all_trials, storage.set_trial_system_attr

    def get_all_trials(study_id: int, deepcopy: bool = True, states: Optional[Container[TrialState]] = None) -> list[FrozenTrial]:
        if study_id != study._study_id:
            return read_all(study_id, deepcopy, states)
        current = {trial._trial_id: trial._cached_frozen_trial for trial in asked}  # a popped waiting trial: as now
        for trial_id, frozen in current.items():
            frozen.system_attrs.update(notes.get(trial_id, {}))
        trials = sorted([t for t in snapshot if t._trial_id not in current] + list(current.values()), key=lambda t: t.number)
        trials = [t for t in trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def set_trial_system_attr(trial_id: int, key: str, value: Any) -> None:
        write_attr(trial_id, key, value)
        notes.setdefault(trial_id, {})[key] = value

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
