"""Population-based training (Jaderberg et al. 2017, arXiv:1711.09846): the exploit/explore decisions of a
population that ``fit_population(..., pbt=PBTConfig(...))`` trains in one vectorized pass.

Every ``interval`` evaluations the members are ranked by the metric; each member of the bottom ``quantile`` copies
a random member of the top ``quantile`` -- its rows of the stacked parameters and optimizer state, its data order
(generator state) and its recipe -- then perturbs the hyperparameters named in ``perturb`` within the catalog's
``ranges`` (given by the caller as plain data): the LR x0.8 or x1.25 (or, with ``resample_probability``, drawn
anew, log-uniform), each beta on its ``1 - beta`` scale (x0.8 or x1.25), the weight decay x0.8 or x1.25.

Exact replay. A member's LR is never rewritten in place: its recipe keeps the peak ``lr`` of the member its weights
started from (the root of its lineage) and its schedule becomes ``piecewise`` (held constant) with one
``[step, multiplier]`` point per exploit along the lineage. The population applies ``lr * schedule(step)`` as
``fit`` does, so the member's final recipe, trained with plain ``fit`` from the root's seed (``Lineage.seed``), sees
the same initial weights, the same data order and the same LR at every step as the member's weights did: copying
a parent's weights, optimizer state and data order at step ``k`` is continuing the parent's trajectory. The replay
is therefore as exact as any member equals training alone (``tuner.train.population``: same kernels up to float32
rounding of the stacked matrix products). Perturbed betas or weight decay are recorded (``Lineage.exact`` turns
False): a recipe holds one value of each for the whole run, so a replay trains with the final values throughout.

Members must start from a piecewise-constant LR (schedule ``constant``, or ``piecewise`` held constant) without
warmup or optimizer switch, so that the exported history is an ordinary ``piecewise`` schedule of the catalog.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tuner.errors import TunerError
from tuner.recipe import Recipe

PERTURBABLE = ("lr", "betas", "weight_decay")
"""What ``PBTConfig.perturb`` may name."""

FACTORS = (0.8, 1.25)
"""A perturbed value is multiplied by one of these (for a beta: its ``1 - beta``)."""


@dataclass(frozen=True)
class Range:
    """A hyperparameter's catalog range (for a beta: the range of beta itself)."""

    low: float
    high: float
    log: bool = False

    def clamp(self, value: float) -> float:
        """``value`` within [low, high]."""
        return min(max(value, self.low), self.high)

    def draw(self, rng: random.Random) -> float:
        """A value drawn uniformly (log-uniformly when ``log``) in the range."""
        if self.log and self.low > 0:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class PBTConfig:
    """How a population exploits and explores.

    Args:
        interval: evaluations between two exploit/explore rounds (none at the last evaluation).
        quantile: the bottom ``quantile`` of the ranked members copies the top ``quantile`` (0 < quantile <= 0.5;
            at least one member each way).
        perturb: which hyperparameters explore after a copy: of ``PERTURBABLE``.
        ranges: the catalog's ranges: ``lr``, ``beta1``, ``beta2``, ``weight_decay`` (a missing one is not
            perturbed: a fixed value in the study's space).
        resample_probability: the chance that a perturbed LR is drawn anew in its range instead of scaled.
        seed: the seed of the decisions (which parent, which factor).
    """

    interval: int
    quantile: float = 0.25
    perturb: tuple[str, ...] = ("lr",)
    ranges: Mapping[str, Range] = field(default_factory=dict)
    resample_probability: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"interval must be an integer >= 1 (evaluations), got interval={self.interval!r}")
        if not 0 < self.quantile <= 0.5:
            raise ValueError(f"quantile must be in (0, 0.5], got quantile={self.quantile!r}")
        unknown = sorted(set(self.perturb) - set(PERTURBABLE))
        if unknown:
            raise ValueError(f"perturb may name {', '.join(PERTURBABLE)}, got {unknown}")
        if not 0 <= self.resample_probability <= 1:
            raise ValueError(f"resample_probability must be in [0, 1], got {self.resample_probability!r}")


@dataclass
class Lineage:
    """Where a member's weights come from, and how to replay them with ``fit``.

    ``recipe``: what its weights trained with (the piecewise LR history along the lineage); ``seed``: the seed of the
    root member (its initial weights and data order); ``exploits``: this member's own copies, each
    ``{"step", "parent", "lr", ...}`` (``parent``: the member index it copied; the perturbed values after it);
    ``ancestry``: the members whose training its weights carry, ``{"member", "from_step"}`` from the root on;
    ``exact``: only the LR changed along the lineage, so ``fit(recipe, seed=seed)`` replays it."""

    recipe: Recipe
    seed: int
    exploits: list[dict[str, Any]]
    ancestry: list[dict[str, int]]
    exact: bool = True

    @classmethod
    def root(cls, member: int, recipe: Recipe, seed: int) -> Lineage:
        """A member at the start: its own recipe and seed."""
        return cls(recipe, seed, [], [{"member": member, "from_step": 0}])

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what a study records)."""
        return {
            "recipe": self.recipe.to_dict(),
            "seed": self.seed,
            "exploits": [dict(e) for e in self.exploits],
            "ancestry": [dict(a) for a in self.ancestry],
            "exact": self.exact,
        }


@dataclass(frozen=True)
class Exploit:
    """One copy decided at an exploit round: row ``child`` takes row ``parent``'s state, then trains with
    ``lineage.recipe``."""

    child: int
    parent: int
    lineage: Lineage


def check_pbt_recipe(recipe: Recipe) -> None:
    """``TunerError`` when a member's recipe cannot carry a PBT LR history as an ordinary piecewise schedule."""
    held = recipe.schedule == "constant" or (
        recipe.schedule == "piecewise"
        and recipe.schedule_params.get("interpolation") == "constant"
        and all(isinstance(s, int) for s, _ in recipe.schedule_params.get("points", [[0.5, 0]]))
    )
    if not held or recipe.warmup or recipe.switch is not None:
        raise TunerError(
            "PBT sets each member's LR itself (piecewise constant, changed at exploits): members need schedule "
            f"'constant', no warmup and no optimizer switch, got schedule={recipe.schedule!r}, "
            f"warmup={recipe.warmup!r}, switch={'yes' if recipe.switch else 'none'}"
        )


class Explorer:
    """The decisions of one PBT run (seeded): which rows copy which, and the perturbed recipes."""

    def __init__(self, config: PBTConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)

    def due(self, evaluations: int, step: int, total_steps: int) -> bool:
        """Whether the ``evaluations``-th evaluation, at ``step``, is an exploit round."""
        return evaluations % self.config.interval == 0 and step < total_steps

    def decide(
        self, step: int, scores: Sequence[float], lineages: Sequence[Lineage], members: Sequence[int], maximize: bool
    ) -> list[Exploit]:
        """The copies of one round: ``scores[row]`` ranks the rows (NaN: worst), ``lineages[row]`` is what each row
        trains with, ``members[row]`` its member index."""
        ranked = sorted(range(len(scores)), key=lambda row: _rank_key(scores[row], maximize))  # best first
        count = max(1, int(self.config.quantile * len(ranked)))
        if 2 * count > len(ranked):
            return []
        top, bottom = ranked[:count], ranked[-count:]
        exploits = []
        for child in bottom:
            parent = self.rng.choice(top)
            lineage = self._explore(step, lineages[parent], lineages[child], members[parent], members[child])
            exploits.append(Exploit(child, parent, lineage))
        return exploits

    def _explore(self, step: int, parent: Lineage, child: Lineage, parent_member: int, child_member: int) -> Lineage:
        """The child's lineage: the parent's, with its hyperparameters perturbed from ``step`` on (and the child's
        own exploits so far, with this one)."""
        recipe, changes = parent.recipe, dict[str, float]()
        multiplier = current_multiplier(recipe, step)
        if "lr" in self.config.perturb and "lr" in self.config.ranges:
            lr = self._perturb_lr(recipe.lr * multiplier)
            multiplier = lr / recipe.lr
        if "betas" in self.config.perturb:
            params = dict(recipe.optimizer_params)
            for name in ("beta1", "beta2"):
                if name in self.config.ranges and name in params:
                    params[name] = changes[name] = self._perturb_beta(float(params[name]), self.config.ranges[name])
            recipe = replace(recipe, optimizer_params=params)
        if "weight_decay" in self.config.perturb and "weight_decay" in self.config.ranges:
            wd = self.config.ranges["weight_decay"].clamp(recipe.weight_decay * self.rng.choice(FACTORS))
            recipe = replace(recipe, weight_decay=wd)
            changes["weight_decay"] = wd
        recipe = with_multiplier(recipe, step, multiplier)
        record = {"step": step, "parent": parent_member, "lr": recipe.lr * multiplier, **changes}
        return Lineage(
            recipe,
            parent.seed,
            [*child.exploits, record],
            [*parent.ancestry, {"member": child_member, "from_step": step}],
            parent.exact and not changes,
        )

    def _perturb_lr(self, lr: float) -> float:
        bounds = self.config.ranges["lr"]
        if self.rng.random() < self.config.resample_probability:
            return bounds.draw(self.rng)
        return bounds.clamp(lr * self.rng.choice(FACTORS))

    def _perturb_beta(self, beta: float, bounds: Range) -> float:
        one_minus = (1.0 - beta) * self.rng.choice(FACTORS)
        return bounds.clamp(1.0 - one_minus)


def _rank_key(score: float, maximize: bool) -> float:
    if not math.isfinite(score):
        return math.inf
    return -score if maximize else score


def current_multiplier(recipe: Recipe, step: int) -> float:
    """The LR multiplier a PBT member's recipe holds at ``step`` (1 before its first point)."""
    value = 1.0
    if recipe.schedule == "piecewise":
        for point_step, point_value in recipe.schedule_params.get("points", ()):
            if point_step <= step:
                value = float(point_value)
    return value


def with_multiplier(recipe: Recipe, step: int, multiplier: float) -> Recipe:
    """``recipe`` with its LR multiplier set to ``multiplier`` from ``step`` on: a ``piecewise`` schedule, held
    constant, whose points are the history."""
    points: list[list[Any]] = []
    if recipe.schedule == "piecewise":
        points = [[int(s), float(v)] for s, v in recipe.schedule_params.get("points", ()) if s < step]
    return replace(
        recipe,
        schedule="piecewise",
        schedule_params={"points": [*points, [int(step), float(multiplier)]], "interpolation": "constant"},
    )
