"""The conditional search space: the study file's ``space`` resolved against the catalog tables,
and sampling one Recipe from a trial.

An optimizer's own hyperparameters are sampled only when that optimizer is chosen, and a
schedule's only with that schedule. Parameter names in Optuna are ``optimizer``, ``schedule``,
``<optimizer>.lr``, ``<optimizer>.<param>``, ``<schedule>.<param>``, ``batch_size``, ``weight_decay``
... (β's appear as ``<optimizer>.beta2.one_minus``: see ``tuner.space.Beta``).
This module never imports Optuna: a trial is anything with ``suggest_*`` methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from tuner.errors import TunerError, UnknownNameError
from tuner.optim import OPTIMIZERS
from tuner.recipe import Recipe
from tuner.schedules import SCHEDULES
from tuner.space import Beta, Choice, Dimension, Fixed, Float, Int, TrialLike, optuna_param_names
from tuner.spec import SpaceSpec

_LOG_BY_DEFAULT = ("weight_decay", "clip_norm", "clip_value")


@dataclass(frozen=True)
class EntrySpace:
    """One optimizer's (or schedule's) searched dimensions, after the study file's overrides."""

    name: str
    params: Mapping[str, Dimension]


@dataclass(frozen=True)
class SearchSpace:
    optimizers: Mapping[str, EntrySpace]  # each has an "lr" dimension
    schedules: Mapping[str, EntrySpace]
    shared: Mapping[str, Dimension]  # batch_size, weight_decay, weight_decay_mode, clip_norm, clip_value, warmup, warmup_kind

    def sample(self, trial: TrialLike) -> Recipe:
        """Sample one Recipe; only the chosen optimizer's and schedule's parameters are suggested."""
        optimizer = _choose(trial, "optimizer", list(self.optimizers))
        optimizer_params = _suggest_all(trial, self.optimizers[optimizer])
        lr = optimizer_params.pop("lr")
        schedule = _choose(trial, "schedule", list(self.schedules))
        schedule_params = _suggest_all(trial, self.schedules[schedule])
        shared = {name: dim.suggest(trial, name) for name, dim in self.shared.items()}
        return Recipe(
            optimizer=optimizer,
            lr=lr,
            optimizer_params=optimizer_params,
            schedule=schedule,
            schedule_params=schedule_params,
            **shared,
        )

    def grid(self, points_per_range: int = 3) -> dict[str, list[Any]]:
        """Every Optuna parameter with its grid values (for the grid sampler)."""
        grid: dict[str, list[Any]] = {}
        if len(self.optimizers) > 1:
            grid["optimizer"] = list(self.optimizers)
        if len(self.schedules) > 1:
            grid["schedule"] = list(self.schedules)
        entries = [(e.name, e.params) for e in [*self.optimizers.values(), *self.schedules.values()]]
        for prefix, params in [*entries, ("", self.shared)]:
            for name, dim in params.items():
                full = f"{prefix}.{name}" if prefix else name
                for optuna_name in optuna_param_names(dim, full):
                    values = dim.grid(points_per_range)
                    grid[optuna_name] = [1.0 - v for v in values] if isinstance(dim, Beta) else values
        return grid


def _choose(trial: TrialLike, name: str, options: list[str]) -> str:
    return options[0] if len(options) == 1 else trial.suggest_categorical(name, options)


def _suggest_all(trial: TrialLike, entry: EntrySpace) -> dict[str, Any]:
    return {name: dim.suggest(trial, f"{entry.name}.{name}") for name, dim in entry.params.items()}


def resolve_space(space: SpaceSpec, default_batch_size: Optional[int]) -> SearchSpace:
    """Check every name against the catalog and turn the file's ranges into dimensions.

    Raises ``TunerError`` naming the field (``space.optimizers.adam.beta2``), the value and the valid options.
    """
    optimizers = {
        name: _resolve_entry("optimizer", name, overrides, _optimizer_base(name))
        for name, overrides in _entries(space.optimizers).items()
    }
    schedules = {
        name: _resolve_entry("schedule", name, overrides, _schedule_base(name))
        for name, overrides in _entries(space.schedules).items()
    }
    batch = space.batch_size if space.batch_size is not None else default_batch_size
    shared_values = {
        "batch_size": batch,
        "weight_decay": space.weight_decay,
        "weight_decay_mode": space.weight_decay_mode,
        "clip_norm": space.clip_norm,
        "clip_value": space.clip_value,
        "warmup": space.warmup,
        "warmup_kind": space.warmup_kind,
    }
    shared = {name: _dimension(f"space.{name}", value, None, log=name in _LOG_BY_DEFAULT) for name, value in shared_values.items()}
    _check_choice("space.weight_decay_mode", shared["weight_decay_mode"], ("coupled", "decoupled"))
    _check_choice("space.warmup_kind", shared["warmup_kind"], ("linear", "exponential"))
    return SearchSpace(optimizers=optimizers, schedules=schedules, shared=shared)


def _entries(value: Any) -> dict[str, dict[str, Any]]:
    return {name: {} for name in value} if isinstance(value, list) else dict(value)


def _optimizer_base(name: str) -> dict[str, Any]:
    try:
        spec = OPTIMIZERS[name]
    except KeyError:
        raise UnknownNameError("optimizer", name, list(OPTIMIZERS)) from None
    fixed = {key: Fixed(value) for key, value in spec.defaults.items()}
    if spec.companion:  # muon's AdamW part, sparse_adam's Adam part: adamw_beta2 ...
        companion = OPTIMIZERS[spec.companion]
        fixed.update({spec.companion_prefix + key: Fixed(value) for key, value in companion.defaults.items()})
    return {"lr": spec.lr, **fixed, **spec.space}


def _schedule_base(name: str) -> dict[str, Any]:
    try:
        spec = SCHEDULES[name]
    except KeyError:
        raise UnknownNameError("schedule", name, list(SCHEDULES)) from None
    return {**{key: Fixed(value) for key, value in spec.defaults.items()}, **spec.space}


def _resolve_entry(kind: str, name: str, overrides: Mapping[str, Any], base: Mapping[str, Dimension]) -> EntrySpace:
    """The entry's default search space with the file's overrides applied (fixed defaults are not searched)."""
    where = f"space.{kind}s.{name}"
    unknown = sorted(set(overrides or {}) - set(base))
    if unknown:
        raise TunerError(f"{where}: unknown parameter {unknown[0]!r}; valid parameters: {', '.join(sorted(base))}")
    params = {key: dim for key, dim in base.items() if not isinstance(dim, Fixed)}
    for key, value in (overrides or {}).items():
        params[key] = _dimension(f"{where}.{key}", value, base[key])
    return EntrySpace(name=name, params=params)


def _dimension(where: str, value: Any, base: Optional[Dimension], log: bool = False) -> Dimension:
    """A file value as a dimension: a {low, high, log} range keeps the catalog's type (Beta stays Beta)."""
    try:
        if isinstance(value, list):
            return Choice(tuple(value))
        if not isinstance(value, dict):
            return Fixed(value)
        return _range(value, base, log)
    except (TypeError, ValueError) as error:
        raise TunerError(f"{where}: {error} (got {value!r})") from None


def _range(value: dict[str, Any], base: Optional[Dimension], log: bool) -> Dimension:
    unknown = sorted(set(value) - {"low", "high", "log"})
    if unknown or "low" not in value or "high" not in value:
        raise ValueError("a range is {low: ..., high: ..., log: true|false}" + (f"; unknown key {unknown[0]!r}" if unknown else ""))
    low, high = value["low"], value["high"]
    if isinstance(base, Beta):
        return Beta(float(low), float(high))
    if isinstance(base, Int) or (base is None and isinstance(low, int) and isinstance(high, int) and not log):
        return Int(int(low), int(high), log=bool(value.get("log", getattr(base, "log", False))))
    default_log = base.log if isinstance(base, Float) else (log and float(low) > 0)
    return Float(float(low), float(high), log=bool(value.get("log", default_log)))


def _check_choice(where: str, dim: Dimension, valid: tuple[str, ...]) -> None:
    values = dim.options if isinstance(dim, Choice) else (getattr(dim, "value", None),)
    bad = [v for v in values if v not in valid]
    if bad:
        raise TunerError(f"{where}: unknown value {bad[0]!r}; valid values: {', '.join(valid)}")
