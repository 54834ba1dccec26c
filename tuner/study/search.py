"""The conditional search space: the study file's ``space`` resolved against the catalog tables,
and sampling one Recipe from a trial.

An optimizer's own hyperparameters are sampled only when that optimizer is chosen, and a
schedule's only with that schedule. Parameter names in Optuna are ``optimizer``, ``schedule``,
``<optimizer>.lr``, ``<optimizer>.<param>``, ``<schedule>.<param>``, ``batch_size``, ``weight_decay``
... (β's appear as ``<optimizer>.beta2.one_minus``: see ``tuner.space.Beta``).
This module never imports Optuna: a trial is anything with ``suggest_*`` methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from tuner.errors import TunerError, UnknownNameError
from tuner.optim import OPTIMIZERS
from tuner.recipe import Recipe, Switch
from tuner.schedules import SCHEDULES
from tuner.space import Beta, Choice, Dimension, Fixed, Float, Int, TrialLike
from tuner.spec import SpaceSpec

_LOG_BY_DEFAULT = ("weight_decay", "clip_norm", "clip_value")


@dataclass(frozen=True)
class EntrySpace:
    """One optimizer's (or schedule's) searched dimensions, after the study file's overrides."""

    name: str
    params: Mapping[str, Dimension]


@dataclass(frozen=True)
class SearchSpace:
    """The study's search space: each optimizer's and schedule's dimensions, the shared ones, ``lr: auto``
    optimizers and the optional switch. ``sample(trial)`` draws one ``Recipe``."""

    optimizers: Mapping[str, EntrySpace]  # each has an "lr" dimension
    schedules: Mapping[str, EntrySpace]
    shared: Mapping[
        str, Dimension
    ]  # batch_size, weight_decay, weight_decay_mode, clip_norm, clip_value, warmup, warmup_kind
    auto_lr: tuple[str, ...] = ()  # optimizers whose LR range comes from an LR range test (`lr: auto`)
    auto_lr_by_default: bool = False  # `space.lr` unset and the study cheap enough to test (tuner.study.lr_auto)
    switch: Optional[SwitchSearch] = None

    def sample(self, trial: TrialLike) -> Recipe:
        """Sample one Recipe; only the chosen optimizer's and schedule's parameters are suggested."""
        optimizer = _choose(trial, "optimizer", list(self.optimizers))
        optimizer_params = _suggest_all(trial, self.optimizers[optimizer])
        lr = optimizer_params.pop("lr")
        schedule = _choose(trial, "schedule", list(self.schedules))
        schedule_params = _suggest_all(trial, self.schedules[schedule])
        shared: dict[str, Any] = {name: dim.suggest(trial, name) for name, dim in self.shared.items()}
        if self.switch is not None:
            shared["switch"] = self.switch.sample(trial)
        return Recipe(
            optimizer=optimizer,
            lr=lr,
            optimizer_params=optimizer_params,
            schedule=schedule,
            schedule_params=schedule_params,
            **shared,
        )


@dataclass(frozen=True)
class SwitchSearch:
    """Which optimizer to switch to (or none), when, and at what peak LR (per target: ``switch.<name>.lr``)."""

    targets: Mapping[str, Dimension]  # target optimizer -> its LR dimension
    at_fraction: Dimension
    optional: bool

    def sample(self, trial: TrialLike) -> Optional[Switch]:
        """The switch a trial draws (None: no switch)."""
        options = (["none"] if self.optional else []) + list(self.targets)
        target = _choose(trial, "switch", options)
        if target == "none":
            return None
        at_fraction = self.at_fraction.suggest(trial, "switch.at_fraction")
        return Switch(
            optimizer=target, at_fraction=at_fraction, lr=self.targets[target].suggest(trial, f"switch.{target}.lr")
        )


def _resolve_switch(space: SpaceSpec) -> Optional[SwitchSearch]:
    if space.switch is None:
        return None
    targets = {}
    for name in space.switch.to:
        base_lr = _optimizer_base(name)["lr"]
        lr = base_lr if space.switch.lr is None else _dimension("space.switch.lr", space.switch.lr, base_lr)
        targets[name] = lr
    at_fraction = _dimension("space.switch.at_fraction", space.switch.at_fraction, Float(0.3, 0.8))
    if not all(isinstance(v, (int, float)) and 0 < v < 1 for v in _extremes(at_fraction)):
        raise TunerError(f"space.switch.at_fraction: must lie in (0, 1), got {space.switch.at_fraction!r}")
    return SwitchSearch(targets=targets, at_fraction=at_fraction, optional=space.switch.optional)


def _extremes(dimension: Dimension) -> list[Any]:
    """The values a dimension can take at its ends (all options of a choice)."""
    if isinstance(dimension, Choice):
        return list(dimension.options)
    if isinstance(dimension, Fixed):
        return [dimension.value]
    return [dimension.low, dimension.high]


def _choose(trial: TrialLike, name: str, options: list[str]) -> str:
    return options[0] if len(options) == 1 else trial.suggest_categorical(name, options)


def _suggest_all(trial: TrialLike, entry: EntrySpace) -> dict[str, Any]:
    return {name: dim.suggest(trial, f"{entry.name}.{name}") for name, dim in entry.params.items()}


def resolve_space(
    space: SpaceSpec,
    default_batch_size: Optional[int],
    lr_ranges: Optional[Mapping[str, tuple[float, float]]] = None,
    lr_auto_default: bool = False,
) -> SearchSpace:
    """Check every name against the catalog and turn the file's ranges into dimensions.

    ``lr_ranges`` (optimizer -> (low, high)) replaces the LR range of the optimizers with ``lr: auto``; without it they
    keep the catalog's range until the range test has run (see ``tuner.train.lr_range``). ``lr_auto_default``: an
    unset ``space.lr`` means ``auto`` (every optimizer without an LR of its own gets a range test).
    Raises ``TunerError`` naming the field (``space.optimizers.adam.beta2``), the value and the valid options.
    """
    entries = _entries(space.optimizers)
    auto = tuple(name for name, overrides in entries.items() if _is_auto_lr(space, overrides, lr_auto_default))
    optimizers = {
        name: _resolve_entry(
            "optimizer",
            name,
            _with_lr_range(overrides, name in auto, (lr_ranges or {}).get(name)),
            _optimizer_base(name),
        )
        for name, overrides in entries.items()
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
    shared = {
        name: _dimension(f"space.{name}", value, None, log=name in _LOG_BY_DEFAULT)
        for name, value in shared_values.items()
    }
    _check_choice("space.weight_decay_mode", shared["weight_decay_mode"], ("coupled", "decoupled"))
    _check_choice("space.warmup_kind", shared["warmup_kind"], ("linear", "exponential"))
    return SearchSpace(
        optimizers=optimizers,
        schedules=schedules,
        shared=shared,
        auto_lr=auto,
        auto_lr_by_default=lr_auto_default and space.lr is None and bool(auto),
        switch=_resolve_switch(space),
    )


def _is_auto_lr(space: SpaceSpec, overrides: Mapping[str, Any], by_default: bool = False) -> bool:
    """``lr: auto`` on the optimizer, or a top-level ``space.lr: auto`` (or, ``by_default``, none) that the
    optimizer does not override."""
    lr = (overrides or {}).get("lr")
    top = space.lr if space.lr is not None else ("auto" if by_default else None)
    return lr == "auto" or (top == "auto" and lr is None)


def _with_lr_range(overrides: Mapping[str, Any], auto: bool, lr_range: Optional[tuple[float, float]]) -> dict[str, Any]:
    rest = {key: value for key, value in (overrides or {}).items() if not (auto and key == "lr")}
    if auto and lr_range is not None:
        rest["lr"] = {"low": float(lr_range[0]), "high": float(lr_range[1]), "log": True}
    return rest


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
    params: dict[str, Dimension] = {key: dim for key, dim in base.items() if not isinstance(dim, Fixed)}
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
        raise ValueError(
            "a range is {low: ..., high: ..., log: true|false}" + (f"; unknown key {unknown[0]!r}" if unknown else "")
        )
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
