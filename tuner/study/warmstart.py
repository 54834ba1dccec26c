"""Warm start: enqueue the top-K recipes of an earlier study as the first trials of this one.

``tuner run STUDY_FILE --warm-start OTHER[:K]`` (K defaults to 3). Each of OTHER's best complete trials is
mapped onto this study's space by replaying its recipe through ``SearchSpace.sample`` with a trial that
answers from the recipe: the Optuna parameters that this space asks for get the recipe's values (β's as
``1 - β``), and a recipe that does not fit (an optimizer or schedule not offered here, a value outside a
range, a fixed value that differs) is skipped with the reason. The parameters are enqueued with
``study.enqueue_trial`` so the sampler evaluates them first and learns from them like any other trial.

Batch size: when OTHER's batch size is not available here, the nearest one is taken and the peak LR rescaled
by the optimizer family's rule (``OptimizerSpec.family``): **linear** for the SGD family
(``lr * new / old``, Goyal et al. 2017), **square root** for the Adam and other adaptive families
(``lr * sqrt(new / old)``, Malladi et al. 2022). Families without a rule (muon, L-BFGS) keep the LR.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import optuna

from tuner.errors import TunerError
from tuner.optim import OPTIMIZERS
from tuner.recipe import Recipe
from tuner.schedules import SCHEDULES
from tuner.space import Choice, Dimension, Fixed, Float, Int
from tuner.study.keys import TrialKeys
from tuner.study.prepare import Prepared
from tuner.study.records import top_records
from tuner.study.search import SearchSpace
from tuner.study.storage import load_existing_study

DEFAULT_K = 3
SHARED = ("batch_size", "weight_decay", "weight_decay_mode", "clip_norm", "clip_value", "warmup", "warmup_kind")

# family -> (rule name, LR factor as a function of new_batch / old_batch)
RESCALE_RULES: dict[str, tuple[str, Callable[[float], float]]] = {
    "sgd": ("linear", lambda ratio: ratio),
    "adam": ("square-root", math.sqrt),
    "adaptive": ("square-root", math.sqrt),
}


class OutsideSpace(Exception):
    """A recipe that this study's space cannot express."""


def parse_source(text: str) -> tuple[str, int]:
    """``NAME`` or ``NAME:K`` -> (name, K)."""
    name, _, k = text.rpartition(":") if ":" in text else (text, "", str(DEFAULT_K))
    if not name or not k.isdigit() or int(k) < 1:
        raise TunerError(f"--warm-start: expected STUDY or STUDY:K with K >= 1, got {text!r}")
    return name, int(k)


def warm_start(
    study: optuna.Study, prepared: Prepared, source: str, say: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Enqueue the top-K complete trials of study ``source`` (``NAME[:K]``, same storage) into ``study``.

    Returns the enqueued parameter dicts; every skip and every LR rescaling is reported through ``say``.
    """
    other, k = check_source(source, prepared)
    name = other.study_name
    enqueued = []
    for record in top_records(other, k):
        where = f"{name}#{record.number}"
        try:
            params, note = map_recipe(prepared.space, record.to_recipe())
        except (OutsideSpace, KeyError, TypeError, ValueError) as error:
            say(f"warm start: skipped {where}: outside this study's space: {error}")
            continue
        study.enqueue_trial(params, user_attrs={TrialKeys.WARM_START: where}, skip_if_exists=True)
        enqueued.append(params)
        say(f"warm start: enqueued {where} (value {record.value:.4g})" + (f"; {note}" if note else ""))
    if not enqueued:
        say(f"warm start: nothing enqueued from {name!r}")
    return enqueued


def check_source(source: str, prepared: Prepared) -> tuple[optuna.Study, int]:
    """(the earlier study, K) for ``NAME[:K]``; ``TunerError`` for a bad form, this same study or an unknown name."""
    name, k = parse_source(source)
    if name == prepared.spec.name:
        raise TunerError(f"--warm-start: {name!r} is the study being run; name an earlier study")
    return load_existing_study(name, prepared.storage_url), k


def map_recipe(space: SearchSpace, recipe: Recipe) -> tuple[dict[str, Any], str]:
    """The Optuna params that make ``space.sample`` produce ``recipe`` (LR rescaled to this space's batch size),
    and a note on the rescaling (empty when none applied). Raises ``OutsideSpace`` naming what does not fit."""
    for kind, name, offered in (
        ("optimizer", recipe.optimizer, space.optimizers),
        ("schedule", recipe.schedule, space.schedules),
    ):
        if name not in offered:
            raise OutsideSpace(f"{kind} {name!r} is not offered here (this study: {', '.join(offered)})")
    batch = nearest_batch(space.shared["batch_size"], recipe.batch_size)
    lr, note = rescale_lr(recipe, batch)
    replay = _Replay(_recipe_values(recipe, lr, batch))
    sampled = space.sample(replay)
    _check_same(sampled, recipe, lr, batch)
    return replay.params, note


def nearest_batch(dim: Dimension, batch: Optional[int]) -> Optional[int]:
    """The batch size this space would use for a recipe trained at ``batch``: it, or the nearest on a log scale."""
    if isinstance(dim, Fixed):
        return dim.value
    if isinstance(dim, Choice):
        options = list(dim.options)
        if batch in options or batch is None:
            return batch
        sized = [o for o in options if o is not None]
        return min(sized, key=lambda o: abs(math.log(o / batch))) if sized else None
    if isinstance(dim, (Int, Float)) and batch is not None:
        return int(min(max(batch, dim.low), dim.high))
    return batch


def rescale_lr(recipe: Recipe, new_batch: Optional[int]) -> tuple[float, str]:
    """(LR for ``new_batch``, note) by the optimizer family's rule; unchanged when the batch size is the same."""
    old = recipe.batch_size
    if old == new_batch:
        return recipe.lr, ""
    if old is None or new_batch is None:
        return recipe.lr, f"batch {old} -> {new_batch} (full batch): LR kept"
    family = OPTIMIZERS[recipe.optimizer].family
    rule = RESCALE_RULES.get(family)
    if rule is None:
        return recipe.lr, f"batch {old} -> {new_batch}: no rescaling rule for the {family} family, LR kept"
    rule_name, factor = rule[0], rule[1](new_batch / old)
    lr = recipe.lr * factor
    return (
        lr,
        f"batch {old} -> {new_batch}: {rule_name} rule ({family} family): lr {recipe.lr:.4g} x {factor:.4g} = {lr:.4g}",
    )


def _recipe_values(recipe: Recipe, lr: float, batch: Optional[int]) -> dict[str, Any]:
    """Every Optuna parameter name this recipe could answer, with its value (catalog defaults filled in)."""
    opt, schedule = recipe.optimizer, recipe.schedule
    values: dict[str, Any] = {"optimizer": opt, "schedule": schedule, f"{opt}.lr": lr}
    spec = OPTIMIZERS.get(opt)
    companion = OPTIMIZERS[spec.companion].defaults if spec is not None and spec.companion else {}
    optimizer_params = {**{spec.companion_prefix + k: v for k, v in companion.items()}, **spec.defaults} if spec else {}
    for key, value in {**optimizer_params, **recipe.optimizer_params}.items():
        values[f"{opt}.{key}"] = value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[f"{opt}.{key}.one_minus"] = 1.0 - value
    schedule_defaults = SCHEDULES[schedule].defaults if schedule in SCHEDULES else {}
    for key, value in {**schedule_defaults, **recipe.schedule_params}.items():
        values[f"{schedule}.{key}"] = value
    values.update({name: getattr(recipe, name) for name in SHARED})
    values["batch_size"] = batch
    return values


class _Replay:
    """A trial that answers every ``suggest_*`` from a recipe's values and records what it answered."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values: dict[str, Any] = values
        self.params: dict[str, Any] = {}

    def _value(self, name: str) -> Any:
        if name not in self.values:
            raise OutsideSpace(f"{name}: the recipe has no value for it")
        return self.values[name]

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        value = float(self._value(name))
        tolerance = 1e-9 * max(abs(low), abs(high))
        if not low - tolerance <= value <= high + tolerance:
            raise OutsideSpace(f"{name} = {value:.4g} is outside [{low:.4g}, {high:.4g}]")
        self.params[name] = min(max(value, low), high)
        return self.params[name]

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        value = self._value(name)
        if value is None or int(value) != value or not low <= value <= high:
            raise OutsideSpace(f"{name} = {value!r} is not an integer in [{low}, {high}]")
        self.params[name] = int(value)
        return int(value)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        value = self._value(name)
        if value not in list(choices):
            raise OutsideSpace(f"{name} = {value!r} is not one of {list(choices)}")
        self.params[name] = value
        return value


def _check_same(sampled: Recipe, recipe: Recipe, lr: float, batch: Optional[int]) -> None:
    """The replayed recipe must be the source recipe (with the rescaled LR): fixed values of this space may differ."""
    expected = {**recipe.to_dict(), "lr": lr, "batch_size": batch}
    got = sampled.to_dict()
    for key, value in expected.items():
        if key in ("optimizer_params", "schedule_params"):
            for param in set(value) & set(got[key]):
                _same(f"{key}.{param}", value[param], got[key][param])
        else:
            _same(key, value, got[key])


def _same(name: str, want: Any, got: Any) -> None:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (want, got))
    if (numbers and not math.isclose(want, got, rel_tol=1e-6, abs_tol=1e-12)) or (not numbers and want != got):
        raise OutsideSpace(f"{name}: the recipe has {want!r}, this study fixes {got!r}")
