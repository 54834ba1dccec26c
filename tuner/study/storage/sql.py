"""A trial's writes in one transaction, and counts in one query: Optuna's API costs a transaction per value.

Writes. Optuna writes every ``trial.set_user_attr`` and every ``trial.report`` in a transaction of its own (~0.5 ms
each on SQLite in WAL mode, bench/study_sql.py), and a sequential trial made ~20 of them (recipe, seed, worker, run id,
10-12 reports, total steps, reason, duration). ``write_trial`` makes them one transaction on Optuna's SQL storage with
Optuna's own table models: the trial's "still running" check once, then one insert-or-update statement per table, of
the kind ``RDBStorage`` uses for a user attribute on SQLite, PostgreSQL and MySQL (12 values and 3 attrs: 0.9 ms
against 7.3 ms). It then updates the trial's in-memory copy as ``set_user_attr`` and ``report`` do. On that path a
write is all or nothing: a failed one leaves neither the study nor the trial's copy changed (the fallback below writes
value by value).

Counts. ``count_trials`` counts a study's trials in given states with one ``COUNT`` query (0.3 ms); Optuna's
``get_trials`` reads every trial changed since its last read, with its params, attributes and reports (1.7 ms).

Any other storage (in memory, a journal file, another SQL dialect), or an Optuna whose internals moved, gets the public
calls (``tuner.study.storage._optuna`` holds the internals). A lost database connection is retried as the storage's
own calls are.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Collection, Mapping
from typing import Any, Optional

import optuna
from optuna.trial import TrialState

from tuner.study.storage import _optuna
from tuner.study.storage.redact import redact


def write_trial(
    trial: optuna.Trial,
    user_attrs: Optional[Mapping[str, Any]] = None,
    intermediate_values: Optional[Mapping[int, float]] = None,
) -> None:
    """Set ``user_attrs`` and report ``intermediate_values`` ({step: value}) on the running ``trial`` at once.

    As with ``trial.report``, a step already reported keeps its first value. Attributes must be JSON, values
    convert to float and steps to non-negative ints: ``TypeError``/``ValueError`` before anything is written.
    Raises Optuna's ``UpdateFinishedTrialError`` when the trial has finished (another worker failed it as lost).
    Any URL in an attribute (an MLflow error in ``tracking_errors``) is stored with its credentials masked.
    """
    attrs = redact(dict(user_attrs or {}))
    encoded = {key: json.dumps(value) for key, value in attrs.items()}  # not JSON: TypeError, nothing written
    values = _new_values(trial, intermediate_values or {})
    if not attrs and not values:
        return
    if values and len(trial.study.directions) > 1:
        raise NotImplementedError("intermediate values are not supported for multi-objective studies (as trial.report)")
    backend = _sql_backend(trial)
    if backend is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        for step, value in values.items():
            trial.report(value, step)
        return
    upsert = _upsert(backend.engine.name)
    _retried(backend, _optuna.write_rows)(backend, trial, encoded, values, upsert)
    _optuna.update_cached_copy(trial, attrs, values)


def count_trials(study: optuna.Study, states: Collection[TrialState]) -> int:
    """How many of ``study``'s trials are in one of ``states``."""
    backend = _optuna.rdb_backend(_optuna.study_storage(study)) if _optuna.SUPPORTED else None
    if backend is None:
        return len(study.get_trials(deepcopy=False, states=tuple(states)))
    return _retried(backend, _optuna.count_rows)(backend, study, list(states))


def force_user_attr(backend: Any, trial_id: int, key: str, value: Any) -> bool:
    """Set a user attribute on a trial that has already finished (Optuna's API refuses them); False when this
    Optuna offers no way."""
    return bool(_retried(backend, _optuna.force_user_attr)(backend, trial_id, key, value))


def record_user_attr(storage: Any, trial_id: int, key: str, value: Any) -> None:
    """Set a user attribute on a trial whether it is running or has finished (an MLflow run created late, for a
    trial that ended meanwhile)."""
    try:
        storage.set_trial_user_attr(trial_id, key, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        backend = _optuna.rdb_backend(storage)
        if backend is not None:
            force_user_attr(backend, trial_id, key, value)


def _new_values(trial: optuna.Trial, values: Mapping[int, float]) -> dict[int, float]:
    """``values`` checked and converted as ``trial.report`` does, less the steps the trial already reported (a step
    given twice, e.g. 1 and "1", keeps its first value)."""
    converted: dict[int, float] = {}
    for step, value in values.items():
        try:
            converted.setdefault(int(step), float(value))
        except (TypeError, ValueError):
            raise TypeError(
                f"intermediate value at step {step!r}: expected a float and an int step, "
                f"got {value!r} ({type(value).__name__})"
            ) from None
        if int(step) < 0:  # int(step) worked just above
            raise ValueError(f"step must be non-negative, got {step}")
    reported = _optuna.reported_values(trial)
    return {step: value for step, value in converted.items() if step not in reported}


def _sql_backend(trial: optuna.Trial) -> Any:
    """The trial's ``RDBStorage`` when this module can write to it in one transaction, else None."""
    if not _optuna.can_write_rows(trial):
        return None
    backend = _optuna.rdb_backend(trial.storage)
    return backend if backend is not None and _upsert(backend.engine.name) is not None else None


def _retried(backend: Any, call: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` retried on a lost connection as the storage's own calls are (a plain ``RDBStorage``: not retried)."""
    retrying = getattr(backend, "retrying", None)
    return retrying(call) if retrying is not None else call


@functools.cache  # asked at every write: the answer depends on the dialect only
def _upsert(dialect: str) -> Optional[Callable[[Any, tuple[str, ...], tuple[str, ...]], Any]]:
    """``upsert(model, unique_columns, updated_columns)``: an INSERT that updates the row a unique key already holds,
    for the dialects Optuna itself upserts on (SQLite >= 3.24, PostgreSQL, MySQL); None for any other."""
    if dialect == "mysql":
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        def on_duplicate_key(model: Any, unique: tuple[str, ...], updated: tuple[str, ...]) -> Any:
            statement = mysql_insert(model)
            return statement.on_duplicate_key_update({column: statement.inserted[column] for column in updated})

        return on_duplicate_key
    insert: Any
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert
    else:
        return None

    def on_conflict(model: Any, unique: tuple[str, ...], updated: tuple[str, ...]) -> Any:
        statement = insert(model)
        return statement.on_conflict_do_update(
            index_elements=list(unique), set_={column: statement.excluded[column] for column in updated}
        )

    return on_conflict
