"""Where the engine uses Optuna's SQL tables directly: Optuna's API costs a transaction per value, or a full read.

Writes. Optuna writes every ``trial.set_user_attr`` and every ``trial.report`` in a transaction of its own (~0.5 ms
each on SQLite in WAL mode, bench/study_sql.py), and a sequential trial made ~20 of them (recipe, seed, worker, run id,
10-12 reports, total steps, reason, duration).
``write_trial`` makes them one transaction on Optuna's SQL storage with Optuna's own table models: the trial's
"still running" check once, then one insert-or-update statement per table, of the kind ``RDBStorage`` uses for a
user attribute on SQLite, PostgreSQL and MySQL (12 values and 3 attrs: 0.9 ms against 7.3 ms). It then updates the
trial's in-memory copy as ``set_user_attr`` and ``report`` do. On that path a write is all or nothing: a failed one
leaves neither the study nor the trial's copy changed (the fallback below writes value by value).

Counts. ``count_trials`` counts a study's trials in given states with one ``COUNT`` query (0.3 ms); Optuna's
``get_trials`` reads every trial changed since its last read, with its params, attributes and reports (1.7 ms).

Any other storage (in memory, a journal file, another SQL dialect), or an Optuna whose internals moved, gets the
public calls. A lost database connection is retried as the storage's own calls are (``tuner.study.storage.resilience``).
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, Optional

if TYPE_CHECKING:  # optuna is imported by the functions that use it (tests/test_architecture.py)
    import optuna
    from optuna.trial import TrialState


def write_trial(trial: optuna.Trial, user_attrs: Optional[Mapping[str, Any]] = None,
                intermediate_values: Optional[Mapping[int, float]] = None) -> None:
    """Set ``user_attrs`` and report ``intermediate_values`` ({step: value}) on the running ``trial`` at once.

    As with ``trial.report``, a step already reported keeps its first value. Attributes must be JSON, values
    convert to float and steps to non-negative ints: ``TypeError``/``ValueError`` before anything is written."""
    attrs = dict(user_attrs or {})
    encoded = {key: json.dumps(value) for key, value in attrs.items()}  # not JSON: TypeError, nothing written
    values = _new_values(trial, intermediate_values or {})
    if not attrs and not values:
        return
    if values and len(trial.study.directions) > 1:
        raise NotImplementedError("intermediate values are not supported for multi-objective studies (as trial.report)")
    backend = _sql_backend(trial.storage)
    if backend is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        for step, value in values.items():
            trial.report(value, step)
        return
    _retried(backend, _write_rows)(backend, trial._trial_id, encoded, values)
    trial._cached_frozen_trial.user_attrs.update(attrs)
    trial._cached_frozen_trial.intermediate_values.update(values)


def count_trials(study: optuna.Study, states: Collection[TrialState]) -> int:
    """How many of ``study``'s trials are in one of ``states``."""
    backend = _sql_backend(study._storage)
    if backend is None:
        return len(study.get_trials(deepcopy=False, states=tuple(states)))  # type: ignore[arg-type]
    return _retried(backend, _count_rows)(backend, study._study_id, list(states))


def _new_values(trial: optuna.Trial, values: Mapping[int, float]) -> dict[int, float]:
    """``values`` checked and converted as ``trial.report`` does, less the steps the trial already reported (a step
    given twice, e.g. 1 and "1", keeps its first value)."""
    converted: dict[int, float] = {}
    for step, value in values.items():
        try:
            converted.setdefault(int(step), float(value))
        except (TypeError, ValueError):
            raise TypeError(f"intermediate value at step {step!r}: expected a float and an int step, "
                            f"got {value!r} ({type(value).__name__})") from None
        if int(step) < 0:  # int(step) worked just above
            raise ValueError(f"step must be non-negative, got {step}")
    reported = trial._cached_frozen_trial.intermediate_values
    return {step: value for step, value in converted.items() if step not in reported}


def _sql_backend(storage: Any) -> Any:
    """``storage``'s ``RDBStorage`` (Optuna wraps it in its cache layer) when this module can write to it, else None."""
    try:
        from optuna.storages import RDBStorage
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session  # noqa: F401
    except ImportError:  # Optuna's internals moved: the public calls
        return None
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage) or _upsert(backend.engine.name) is None:
        return None
    used = [(backend, "check_trial_is_updatable"), (backend, "scoped_session"), (models.TrialModel, "find_or_raise_by_id"),
            (models.TrialIntermediateValueModel, "intermediate_value_to_stored_repr"),
            (models.TrialUserAttributeModel, "value_json")]
    return backend if all(hasattr(owner, name) for owner, name in used) else None


def _retried(backend: Any, call: Callable[..., Any]) -> Callable[..., Any]:
    from tuner.study.storage.resilience import retrying_lost_connections

    return retrying_lost_connections(backend, call)


def _write_rows(backend: Any, trial_id: int, attrs: dict[str, str], values: dict[int, float]) -> None:
    """``attrs`` (JSON-encoded) and ``values`` of one running trial, in one transaction."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    upsert = _upsert(backend.engine.name)
    # integrity errors are raised, not ignored as Optuna does for one row: a batch must not vanish silently
    with _create_scoped_session(backend.scoped_session) as session:
        backend.check_trial_is_updatable(trial_id, models.TrialModel.find_or_raise_by_id(trial_id, session).state)
        if attrs:
            rows = [{"trial_id": trial_id, "key": key, "value_json": value} for key, value in attrs.items()]
            session.execute(upsert(models.TrialUserAttributeModel, ("trial_id", "key"), ("value_json",)), rows)
        if values:
            stored = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr
            columns = ("intermediate_value", "intermediate_value_type")
            rows = [{"trial_id": trial_id, "step": step, **dict(zip(columns, stored(value)))} for step, value in values.items()]
            session.execute(upsert(models.TrialIntermediateValueModel, ("trial_id", "step"), columns), rows)


def _count_rows(backend: Any, study_id: int, states: list[TrialState]) -> int:
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy import func, select

    trial = models.TrialModel
    query = select(func.count(trial.trial_id)).where(trial.study_id == study_id, trial.state.in_(states))
    with _create_scoped_session(backend.scoped_session) as session:
        return int(session.execute(query).scalar_one())


@functools.lru_cache(maxsize=None)  # asked at every write: the answer depends on the dialect only
def _upsert(dialect: str) -> Optional[Callable[[Any, tuple[str, ...], tuple[str, ...]], Any]]:
    """``upsert(model, unique_columns, updated_columns)``: an INSERT that updates the row a unique key already holds,
    for the dialects Optuna itself upserts on (SQLite >= 3.24, PostgreSQL, MySQL); None for any other."""
    import sqlite3

    if dialect == "mysql":
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        def on_duplicate_key(model: Any, unique: tuple[str, ...], updated: tuple[str, ...]) -> Any:
            statement = mysql_insert(model)
            return statement.on_duplicate_key_update({column: statement.inserted[column] for column in updated})

        return on_duplicate_key
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert
    else:
        return None

    def on_conflict(model: Any, unique: tuple[str, ...], updated: tuple[str, ...]) -> Any:
        statement = insert(model)
        return statement.on_conflict_do_update(index_elements=list(unique),
                                               set_={column: statement.excluded[column] for column in updated})

    return on_conflict
