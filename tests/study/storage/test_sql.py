"""tuner.study.storage.sql against Optuna's own API, on real SQLite and PostgreSQL storages and on the in-memory
fallback:
what ``write_trial`` writes reads back exactly as ``set_user_attr``/``report`` would have, all or nothing, and
``count_trials`` counts as ``get_trials`` does."""

from __future__ import annotations

import math
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from tuner.study.storage import open_storage
from tuner.study.storage.sql import _sql_backend, count_trials, write_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)

ATTRS = {"recipe": {"optimizer": "adam", "lr": 0.003}, "seed": 7, "worker": "host:1", "reason": "completed"}
VALUES = {0: 0.5, 1: 0.25, 2: float("inf"), 3: float("-inf"), 4: float("nan"), 10: 1e-12}


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def storage(request, tmp_path):
    if request.param == "memory":
        yield optuna.storages.InMemoryStorage()
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'study.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database(f"sql_{uuid.uuid4().hex[:12]}")
    storage = open_storage(url)  # as tuner opens it
    yield storage
    storage.engine.dispose()


def _study(storage) -> optuna.Study:
    return optuna.create_study(study_name=f"s-{uuid.uuid4().hex[:8]}", storage=storage)


def _reread(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The trial as a fresh process would read it (no cache of this process)."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, optuna.storages.RDBStorage):
        fresh = optuna.storages.RDBStorage(backend.url)
        try:
            return fresh.get_trial(trial._trial_id)
        finally:
            fresh.engine.dispose()  # no idle connection left on the session's PostgreSQL server
    return storage.get_trial(trial._trial_id)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)) for x, y in ((a[k], b[k]) for k in a)
    )


def test_the_sql_path_is_taken_for_sql_storages(storage):
    study = _study(storage)
    assert (_sql_backend(study.ask()) is None) == isinstance(storage, optuna.storages.InMemoryStorage)


def test_write_trial_reads_back_as_the_public_calls_write(storage):
    study = _study(storage)
    by_api, by_batch = study.ask(), study.ask()
    for key, value in ATTRS.items():
        by_api.set_user_attr(key, value)
    for step, value in VALUES.items():
        by_api.report(value, step)
    write_trial(by_batch, ATTRS, VALUES)

    expected, written = _reread(study, by_api), _reread(study, by_batch)
    assert written.user_attrs == expected.user_attrs == ATTRS
    assert _same(written.intermediate_values, expected.intermediate_values)
    assert _same(written.intermediate_values, VALUES)
    assert by_batch.user_attrs == ATTRS  # the trial's own copy, as set_user_attr keeps it
    assert _same(by_batch._cached_frozen_trial.intermediate_values, VALUES)
    study.tell(by_batch, 1.0)  # still an ordinary running trial
    assert study.trials[-1].state == TrialState.COMPLETE


def test_an_attribute_written_again_is_replaced_and_a_step_keeps_its_first_value(storage):
    study = _study(storage)
    trial = study.ask()
    trial.report(0.9, 3)
    write_trial(trial, {"mlflow_run_id": "old"}, {1: 0.1})
    write_trial(trial, {"mlflow_run_id": "", "seed": 1}, {1: 0.7, 3: 0.2, 5: 0.3})
    frozen = _reread(study, trial)
    assert frozen.user_attrs == {"mlflow_run_id": "", "seed": 1}
    assert frozen.intermediate_values == {1: 0.1, 3: 0.9, 5: 0.3}


def test_a_failed_write_writes_nothing(storage):
    study = _study(storage)
    trial = study.ask()
    with pytest.raises(TypeError):
        write_trial(trial, {"fine": 1, "not json": object()}, {0: 0.5})
    with pytest.raises(TypeError):
        write_trial(trial, {"fine": 1}, {0: "not a number"})
    with pytest.raises(ValueError):
        write_trial(trial, {"fine": 1}, {-1: 0.5})
    frozen = _reread(study, trial)
    assert frozen.user_attrs == {} and frozen.intermediate_values == {}
    assert trial.user_attrs == {} and trial._cached_frozen_trial.intermediate_values == {}


def test_a_finished_trial_refuses_the_write(storage):
    study = _study(storage)
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        write_trial(trial, {"late": True}, {0: 0.5})
    assert _reread(study, trial).user_attrs == {} and trial.user_attrs == {}


def test_a_step_given_twice_keeps_its_first_value(storage):
    study = _study(storage)
    trial = study.ask()
    write_trial(trial, intermediate_values={1: 0.1, "1": 0.2, "2": 0.3})
    assert _reread(study, trial).intermediate_values == {1: 0.1, 2: 0.3}


def test_reports_of_a_multi_objective_study_are_refused_as_optuna_refuses_them(storage):
    study = optuna.create_study(study_name=f"m-{uuid.uuid4().hex[:8]}", storage=storage, directions=["minimize"] * 2)
    trial = study.ask()
    with pytest.raises(NotImplementedError):
        write_trial(trial, {"fine": 1}, {0: 0.5})
    write_trial(trial, {"fine": 1})  # attributes alone are fine
    assert _reread(study, trial).user_attrs == {"fine": 1}


def test_count_trials_counts_as_get_trials(storage):
    study = _study(storage)
    other = _study(storage)  # trials of another study in the same storage are not counted
    study.enqueue_trial({"x": 1.0})
    for tell in (1.0, 2.0, TrialState.PRUNED, TrialState.FAIL, None):
        for current in (study, other):
            trial = current.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
            if tell is None:
                continue
            if isinstance(tell, TrialState):
                current.tell(trial, state=tell)
            else:
                current.tell(trial, tell)
    study.enqueue_trial({"x": 2.0})
    for states in [
        (TrialState.COMPLETE, TrialState.PRUNED),
        (TrialState.RUNNING,),
        (TrialState.WAITING,),
        tuple(TrialState),
        (),
    ]:
        assert count_trials(study, states) == len(study.get_trials(deepcopy=False, states=states)), states
    assert count_trials(study, (TrialState.COMPLETE, TrialState.PRUNED)) == 3
