"""Every private Optuna name tuner uses, behind one version check, each with the public-API fallback where one exists.

Nothing else in tuner touches an Optuna name that starts with an underscore (``tests/test_architecture.py`` holds
that). Why each one is here, and what happens without it:

* ``Trial._trial_id``, ``Study._study_id``, ``Study._storage`` -- the ids and the storage Optuna keeps on a trial
  and a study; tuner's one-transaction writes, heartbeats and MLflow tags need them. Fallbacks: the public
  ``trial.storage`` and ``storage.get_study_id_from_name`` / ``get_trial_id_from_study_id_trial_number`` (one
  query each).
* ``Trial._cached_frozen_trial`` -- the trial's in-memory copy, which ``tuner.study.storage.sql`` updates after
  writing rows itself (as ``set_user_attr``/``report`` do). Without it those writes go through the public calls.
* ``optuna.storages._rdb.models`` and ``_create_scoped_session`` -- Optuna's own table models and session helper,
  for the one-transaction writes, the ``COUNT`` query and the reason written on a trial already failed
  (``write_rows``, ``count_rows``, ``force_user_attr``). Without them: the public calls (or, for the last, nothing).
* ``RDBStorage``'s private methods that Optuna's cache layer calls (``CACHE_LAYER_CALLS``) -- tuner's storage
  retries them on a lost connection like the public ones, and answers ``_get_trials`` from a snapshot while a
  population is asked (``HookedRDBStorage``). Without them only the public methods are retried and a population
  is asked without the snapshot (slower, same draws).
* ``Study._thread_local.in_optimize_loop`` and ``Study._stop_flag`` -- tuner runs trials with ask/tell; inside
  ``optimize_loop`` a sampler's ``study.stop()`` (the grid sampler's, when the grid is exhausted) ends the run as
  it would end ``study.optimize``, and ``ask`` does not warn that heartbeats are meant for ``optimize``. Without
  them the stop is read from the ``RuntimeError`` ``study.stop()`` raises outside that loop.

``SUPPORTED`` is the version check: Optuna 4.x or 5.x with every name above where it was. Any other version runs
on the fallbacks.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Optional

import optuna
from optuna.storages import RDBStorage

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial, TrialState

models: Any
_create_scoped_session: Any
try:  # the module and helper are private: their absence only switches tuner to the public calls
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
except ImportError:  # pragma: no cover - an Optuna whose internals moved
    models, _create_scoped_session = None, None

CACHE_LAYER_CALLS = (
    "_create_new_trial",
    "_set_trial_param",
    "_get_best_trial_id",
    "_get_trials",
    "_get_stale_trial_ids",
)
"""``RDBStorage``'s private methods that Optuna's cache layer (``_CachedStorage``) calls on it."""


def _supported() -> bool:
    major = int(optuna.__version__.split(".")[0])
    if major not in (4, 5) or models is None:
        return False
    names: list[tuple[Any, str]] = [(RDBStorage, name) for name in CACHE_LAYER_CALLS]
    names += [
        (models.TrialModel, "find_or_raise_by_id"),
        (models.TrialIntermediateValueModel, "intermediate_value_to_stored_repr"),
        (models.TrialUserAttributeModel, "value_json"),
        (RDBStorage, "check_trial_is_updatable"),
        (optuna.Study, "stop"),
    ]
    return all(hasattr(owner, name) for owner, name in names)


SUPPORTED = _supported()


# -- ids and the storage of trials and studies ------------------------------------------------------------------------


def study_storage(study: optuna.Study) -> Any:
    """The storage a study reads and writes (Optuna's cache layer around an ``RDBStorage``)."""
    storage = getattr(study, "_storage", None)
    if storage is None:  # pragma: no cover - no public accessor exists; a study made elsewhere
        raise RuntimeError(f"optuna {optuna.__version__}: cannot find the storage of study {study.study_name!r}")
    return storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage."""
    found = getattr(study, "_study_id", None)
    return found if found is not None else study_storage(study).get_study_id_from_name(study.study_name)


def trial_id(trial: optuna.Trial) -> int:
    """The trial's id in its storage."""
    found = getattr(trial, "_trial_id", None)
    if found is not None:
        return found
    storage = trial.storage
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(trial.study.study_name), trial.number
    )


def frozen_id(trial: FrozenTrial) -> int:
    """The id of a trial read from a storage (a ``FrozenTrial``; Optuna offers no public accessor)."""
    return trial._trial_id


def reported_values(trial: optuna.Trial) -> Mapping[int, float]:
    """The intermediate values the trial has reported, from its in-memory copy (no read)."""
    cached = getattr(trial, "_cached_frozen_trial", None)
    return (
        cached.intermediate_values
        if cached is not None
        else trial.storage.get_trial(trial_id(trial)).intermediate_values
    )


def rdb_backend(storage: Any) -> Optional[RDBStorage]:
    """The ``RDBStorage`` under Optuna's cache layer (or ``storage`` itself), None for any other storage."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


# -- one-transaction writes on Optuna's own tables -------------------------------------------------------------------


def can_write_rows(trial: optuna.Trial) -> bool:
    """Whether ``write_rows`` can write to this trial's storage (else: the public calls)."""
    return SUPPORTED and hasattr(trial, "_cached_frozen_trial") and rdb_backend(trial.storage) is not None


def write_rows(
    backend: RDBStorage,
    trial: optuna.Trial,
    attrs: Mapping[str, str],
    values: Mapping[int, float],
    upsert: Callable[[Any, tuple[str, ...], tuple[str, ...]], Any],
) -> None:
    """``attrs`` (JSON-encoded) and ``values`` of one running trial in one transaction; then its in-memory copy."""
    assert models is not None and _create_scoped_session is not None
    key = trial_id(trial)
    # integrity errors are raised, not ignored as Optuna does for one row: a batch must not vanish silently
    with _create_scoped_session(backend.scoped_session) as session:
        state: Any = models.TrialModel.find_or_raise_by_id(key, session).state
        backend.check_trial_is_updatable(key, state)
        if attrs:
            rows = [{"trial_id": key, "key": name, "value_json": value} for name, value in attrs.items()]
            session.execute(upsert(models.TrialUserAttributeModel, ("trial_id", "key"), ("value_json",)), rows)
        if values:
            stored = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr
            columns = ("intermediate_value", "intermediate_value_type")
            rows = [
                {"trial_id": key, "step": step, **dict(zip(columns, stored(value)))} for step, value in values.items()
            ]
            session.execute(upsert(models.TrialIntermediateValueModel, ("trial_id", "step"), columns), rows)


def update_cached_copy(trial: optuna.Trial, attrs: Mapping[str, Any], values: Mapping[int, float]) -> None:
    """Bring the trial's in-memory copy up to what ``write_rows`` wrote (as ``set_user_attr`` and ``report`` do)."""
    cached = trial._cached_frozen_trial
    cached.user_attrs.update(attrs)
    cached.intermediate_values.update(values)


def count_rows(backend: RDBStorage, study: optuna.Study, states: list[TrialState]) -> int:
    """How many of the study's trials are in one of ``states``: one ``COUNT`` query."""
    from sqlalchemy import func, select

    assert models is not None and _create_scoped_session is not None
    trial = models.TrialModel
    query = select(func.count(trial.trial_id)).where(trial.study_id == study_id(study), trial.state.in_(states))
    with _create_scoped_session(backend.scoped_session) as session:
        return int(session.execute(query).scalar_one())


def force_user_attr(backend: RDBStorage, key_trial_id: int, key: str, value: Any) -> bool:
    """Set a user attribute on a trial that is already finished (Optuna's API refuses them), in Optuna's own table.
    False when this Optuna offers no way (the attribute is then simply not written)."""
    if not SUPPORTED or models is None:
        return False
    session = backend.scoped_session()
    try:
        model = models.TrialUserAttributeModel
        session.query(model).filter(model.trial_id == key_trial_id, model.key == key).delete()
        session.add(model(trial_id=key_trial_id, key=key, value_json=json.dumps(value)))
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        backend.scoped_session.remove()
    return True


# -- a storage class with hooks on every backend call ----------------------------------------------------------------


class HookedRDBStorage(RDBStorage):
    """``RDBStorage`` whose every storage call (the public ones and ``CACHE_LAYER_CALLS``) goes through
    ``around_call(call, *args, **kwargs)``, and whose reads of a study's trials for the cache layer go through
    ``read_trials``. Subclasses override those two (``tuner.study.storage.rdb.TunerStorage``)."""

    def around_call(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one storage call (subclasses add retries and snapshot bookkeeping)."""
        return call(*args, **kwargs)

    def read_trials(
        self, study_id: int, states: Any, included_trial_ids: set[int], trial_id_greater_than: int
    ) -> list[FrozenTrial]:
        """What the cache layer asks for: the study's trials in ``states`` with an id in ``included_trial_ids`` or
        above ``trial_id_greater_than``."""
        return RDBStorage._get_trials(self, study_id, states, included_trial_ids, trial_id_greater_than)

    def read_all_trials(self, study_id: int) -> list[FrozenTrial]:
        """Every trial of the study, straight from the database."""
        return RDBStorage._get_trials(self, study_id, None, set(), -1)


def _routed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: HookedRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self.around_call(functools.partial(method, self), *args, **kwargs)

    return call


def _route_calls(names: tuple[str, ...]) -> None:
    for name in names:
        method = getattr(RDBStorage, name, None)
        if method is not None:
            setattr(HookedRDBStorage, name, _routed(name, method))
    if SUPPORTED:

        def _get_trials(
            self: HookedRDBStorage, study_id: int, states: Any, included_trial_ids: set[int], trial_id_greater_than: int
        ) -> list[FrozenTrial]:
            return self.around_call(self.read_trials, study_id, states, included_trial_ids, trial_id_greater_than)

        HookedRDBStorage._get_trials = _get_trials  # type: ignore[method-assign,assignment]


PUBLIC_CALLS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "get_n_trials",
    "get_best_trial",
    "record_heartbeat",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
)
_route_calls(PUBLIC_CALLS + (tuple(n for n in CACHE_LAYER_CALLS if n != "_get_trials") if SUPPORTED else ()))


def snapshot_supported(storage: Any) -> bool:
    """Whether ``storage`` (a study's) can answer the cache layer's reads from a snapshot."""
    return SUPPORTED and isinstance(rdb_backend(storage), HookedRDBStorage) and hasattr(storage, "_backend")


# -- ask/tell as inside study.optimize -------------------------------------------------------------------------------


@contextlib.contextmanager
def optimize_loop(study: optuna.Study) -> Iterator[Callable[[], bool]]:
    """Run ask/tell as ``study.optimize`` runs them: a sampler's ``study.stop()`` is taken, and ask does not warn
    about heartbeats. Yields ``stop_requested()``."""
    local = getattr(study, "_thread_local", None)
    if not SUPPORTED or local is None or not hasattr(study, "_stop_flag") or getattr(local, "in_optimize_loop", False):
        yield lambda: False
        return
    local.in_optimize_loop, study._stop_flag = True, False
    try:
        yield lambda: bool(study._stop_flag)
    finally:
        local.in_optimize_loop, study._stop_flag = False, False
