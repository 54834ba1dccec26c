"""Learning-rate schedules: pure functions of the optimizer step that return a multiplier of the peak LR.

A ``Schedule`` maps the optimizer step (0-based) to a multiplier of the peak learning rate, optax
style: ``lr(t) = peak_lr * schedule(t)``. Schedules hold no state, so they can be evaluated in any
order (``LambdaLR`` is the only bridge to torch). ``plateau`` is the one stateful exception: it
also has ``report(value)`` and follows the validation loss (see ``MetricDriven``).

Conventions
-----------
* ``SCHEDULES`` is a table of frozen ``ScheduleSpec`` entries; ``build_schedule`` is the entry point.
* Durations in params (step sizes, milestones, periods, warmup ...) are an int number of steps or a
  float in [0, 1) meaning a fraction of the schedule's length (``tuner.recipe.resolve_duration``);
  a positive fraction always gives at least one step.
* Warmup is composed in front (``warmup``/``join``): the schedule itself runs on its own clock over
  the ``total_steps - warmup_steps`` steps after warmup, so its fractions and step counts are
  relative to that part, and a schedule that decays over the run (cosine, linear, polynomial ...)
  reaches its final value at the last step of the run.
* Decays "over the run" span ``total_steps - 1`` steps, so the final value is reached at the last
  step ``total_steps - 1``; after the run they hold their last value.

This module is pure Python (``math`` only): it must stay cheap to import.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Optional, Protocol, runtime_checkable

from tuner.errors import lookup
from tuner.recipe import Recipe, resolve_duration
from tuner.space import Choice, Dimension, Float, Int

Schedule = Callable[[int], float]

EXPONENTIAL_WARMUP_START = 1e-3
"""Where the exponential warmup starts, as a fraction of the schedule's first value."""

PLATEAU_EPS = 1e-8
"""A reduction smaller than this is ignored (torch ``ReduceLROnPlateau(eps=1e-8)``, with lr = 1)."""


@runtime_checkable
class MetricDriven(Protocol):
    """A schedule that also follows a metric: ``plateau`` and any wrapper around it."""

    def __call__(self, step: int) -> float: ...

    def report(self, value: float) -> None:
        """Feed the validation loss (lower is better) at each evaluation."""
        ...


@dataclass(frozen=True)
class ScheduleSpec:
    """One entry of the schedule catalog.

    ``build(total_steps, **params)`` takes every key of ``defaults``; use ``build_schedule``, which
    merges the user's params over the defaults, checks the keys and composes the warmup.
    """

    name: str
    description: str
    build: Callable[..., Schedule]
    defaults: Mapping[str, Any]
    space: Mapping[str, Dimension]
    metric_driven: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.space) - set(self.defaults))
        if unknown:
            raise ValueError(f"space of schedule {self.name!r} names unknown params {unknown}")
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(self, "space", MappingProxyType(dict(self.space)))


# --------------------------------------------------------------------------- validation helpers


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {name}={value!r}")
    return value


def _real(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float, or a ValueError naming the interval, the parameter and the value."""
    _number(name, value)
    if (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
        if high == math.inf:
            interval = f"{'>' if low_open else '>='} {low:g}"
        else:
            interval = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {interval}, got {name}={value!r}")
    return float(value)


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {name}={value!r}")
    return value


def _choice(name: str, value: Any, options: Mapping[str, Any]) -> Any:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}, got {name}={value!r}")
    return options[value]


def _steps(name: str, value: Any, total: int, low: int = 1) -> int:
    """A duration (int steps or fraction of ``total``) in steps; a positive fraction gives >= 1 step."""
    steps = resolve_duration(_number(name, value), total, name)
    if isinstance(value, float) and 0 < value < 1:
        steps = max(steps, 1)
    if steps < low:
        raise ValueError(f"{name} must be at least {low} step(s), got {name}={value!r} ({steps} steps)")
    return steps


def _span(name: str, value: Any, total: int) -> int:
    """A decay length: ``None`` means the whole schedule, reaching its end at step ``total - 1``."""
    return max(total - 1, 1) if value is None else _steps(name, value, total)


def _sequence(name: str, value: Any) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list, got {name}={value!r}")
    return value


# --------------------------------------------------------------------------- composition


class _Joined:
    """``schedules[i]`` runs from ``boundaries[i-1]`` on, called with ``step - boundaries[i-1]``."""

    __slots__ = ("_pieces", "_boundaries", "_offsets")

    def __init__(self, pieces: tuple[Schedule, ...], boundaries: tuple[int, ...]) -> None:
        self._pieces, self._boundaries, self._offsets = pieces, boundaries, (0, *boundaries)

    def _piece(self, step: int) -> int:
        return bisect_right(self._boundaries, step)

    def __call__(self, step: int) -> float:
        index = self._piece(step)
        return self._pieces[index](step - self._offsets[index])


class _MetricJoined(_Joined):
    """A join with a metric-driven piece: ``report`` goes to the piece of the last step asked for
    (so a plateau behind a warmup only starts counting evaluations once the warmup is over)."""

    __slots__ = ("_active",)

    def __init__(self, pieces: tuple[Schedule, ...], boundaries: tuple[int, ...]) -> None:
        super().__init__(pieces, boundaries)
        self._active = 0

    def __call__(self, step: int) -> float:
        self._active = self._piece(step)
        return self._pieces[self._active](step - self._offsets[self._active])

    def report(self, value: float) -> None:
        piece = self._pieces[self._active]
        if isinstance(piece, MetricDriven):
            piece.report(value)

    def state_dict(self) -> dict[str, Any]:
        """The piece in use and each metric-driven piece's state (``schedule_state``)."""
        return {"active": self._active, "pieces": [schedule_state(piece) for piece in self._pieces]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what ``state_dict`` returned."""
        self._active = int(state["active"])
        for piece, piece_state in zip(self._pieces, state["pieces"]):
            load_schedule_state(piece, piece_state)


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules`` one after the other (``optax.join_schedules``).

    Schedule ``i`` runs from ``boundaries[i-1]`` (0 for the first) and is called with
    ``step - boundaries[i-1]``, so each piece starts at its own step 0. ``boundaries`` are strictly
    increasing ints >= 1, one fewer than ``schedules``. If a piece is metric driven, the result is
    too and forwards ``report`` to the piece running at the last step it was asked for.
    """
    pieces, bounds = tuple(schedules), tuple(boundaries)
    if len(pieces) != len(bounds) + 1:
        raise ValueError(
            f"join needs one boundary fewer than schedules, got {len(pieces)} schedules and boundaries={list(bounds)}"
        )
    for index, bound in enumerate(bounds):
        _int(f"boundaries[{index}]", bound, bounds[index - 1] + 1 if index else 1)
    metric = any(isinstance(piece, MetricDriven) for piece in pieces)
    return (_MetricJoined if metric else _Joined)(pieces, bounds)


@dataclass(frozen=True)
class WarmupSpec:
    """A warmup shape: ``shape(u)`` for ``u = (t + 1) / (warmup_steps + 1)`` in (0, 1)."""

    name: str
    description: str
    shape: Callable[[float], float]


WARMUPS: dict[str, WarmupSpec] = {
    spec.name: spec
    for spec in (
        WarmupSpec("linear", "m(t) = m0 * (t + 1) / (w + 1): a straight ramp from ~0", lambda u: u),
        WarmupSpec(
            "exponential",
            f"m(t) = m0 * {EXPONENTIAL_WARMUP_START:g}^(1 - (t + 1) / (w + 1)): "
            f"a geometric ramp from {EXPONENTIAL_WARMUP_START:g}",
            lambda u: EXPONENTIAL_WARMUP_START ** (1.0 - u),
        ),
    )
}


class _Ramp:
    __slots__ = ("_shape", "_steps", "_then")

    def __init__(self, shape: Callable[[float], float], steps: int, then: Schedule) -> None:
        self._shape, self._steps, self._then = shape, steps, then

    def __call__(self, step: int) -> float:
        return self._shape((step + 1) / (self._steps + 1)) * self._then(0)


def warmup(kind: str, warmup_steps: int, then: Schedule) -> Schedule:
    """Put a warmup of ``warmup_steps`` steps in front of ``then``.

    During step ``t < w`` the multiplier ramps from ~0 towards ``m0 = then(0)`` (the schedule's
    first value, so the curve is continuous): ``linear``: ``m0 * (t + 1) / (w + 1)``;
    ``exponential``: ``m0 * 1e-3^(1 - (t + 1) / (w + 1))``. From step ``w`` on it is
    ``then(t - w)``. Wrapping a metric-driven schedule keeps ``report`` (``join``).
    """
    spec = lookup(WARMUPS, "warmup kind", kind)
    steps = _int("warmup_steps", warmup_steps, 0)
    if steps == 0:
        return then
    return join([_Ramp(spec.shape, steps, then), then], [steps])


# --------------------------------------------------------------------------- the schedules


def _one(step: int) -> float:
    return 1.0


def _constant(total: int) -> Schedule:
    """``m(t) = 1``."""
    return _one


def _step(total: int, *, gamma: float, step_size: Any) -> Schedule:
    """``m(t) = gamma^floor(t / step_size)`` (torch ``StepLR``)."""
    gamma = _real("gamma", gamma, 0, 1, low_open=True)
    size = _steps("step_size", step_size, total)
    return lambda step: gamma ** (step // size)


def _multistep(total: int, *, milestones: Any, gamma: float) -> Schedule:
    """``m(t) = gamma^(number of milestones <= t)`` (torch ``MultiStepLR``)."""
    gamma = _real("gamma", gamma, 0, 1, low_open=True)
    marks = sorted(_steps(f"milestones[{i}]", m, total) for i, m in enumerate(_sequence("milestones", milestones)))
    return lambda step: gamma ** bisect_right(marks, step)


def _decay_power(total: int, decay_steps: Any, staircase: Any) -> Callable[[int], float]:
    """``p(t) = t / decay_steps``, floored with ``staircase`` (the TF decay convention)."""
    span = _span("decay_steps", decay_steps, total)
    if _flag("staircase", staircase):
        return lambda step: float(step // span)
    return lambda step: step / span


def _exponential(total: int, *, gamma: float, decay_steps: Any, staircase: bool) -> Schedule:
    """``m(t) = gamma^p``, ``p = t / decay_steps`` (TF ``ExponentialDecay``; torch ``ExponentialLR``
    when ``decay_steps=1``)."""
    gamma = _real("gamma", gamma, 0, 1, low_open=True)
    power = _decay_power(total, decay_steps, staircase)
    return lambda step: gamma ** power(step)


def _natural_exp(total: int, *, decay_rate: float, decay_steps: Any, staircase: bool) -> Schedule:
    """``m(t) = exp(-decay_rate * p)``, ``p = t / decay_steps`` (TF ``natural_exp_decay``)."""
    rate = _real("decay_rate", decay_rate, 0)
    power = _decay_power(total, decay_steps, staircase)
    return lambda step: math.exp(-rate * power(step))


def _inverse_time(total: int, *, decay_rate: float, decay_steps: Any, staircase: bool) -> Schedule:
    """``m(t) = 1 / (1 + decay_rate * p)``, ``p = t / decay_steps`` (TF ``InverseTimeDecay``)."""
    rate = _real("decay_rate", decay_rate, 0)
    power = _decay_power(total, decay_steps, staircase)
    return lambda step: 1.0 / (1.0 + rate * power(step))


def _polynomial(total: int, *, power: float, end_factor: float, decay_steps: Any, cycle: bool) -> Schedule:
    """``m(t) = (1 - end) * (1 - t / D)^power + end`` with ``t`` capped at ``D = decay_steps``; with
    ``cycle``, ``D`` grows to ``decay_steps * ceil(t / decay_steps)`` instead (TF ``PolynomialDecay``;
    torch ``PolynomialLR`` when ``end_factor=0``)."""
    exponent = _real("power", power, 0, low_open=True)
    end = _real("end_factor", end_factor, 0, 1)
    span = _span("decay_steps", decay_steps, total)
    cyclic = _flag("cycle", cycle)

    def schedule(step: int) -> float:
        length = span * max(1, math.ceil(step / span)) if cyclic else span
        fraction = min(step, length) / length
        return (1.0 - end) * (1.0 - fraction) ** exponent + end

    return schedule


def _linear(total: int, *, start_factor: float, end_factor: float, total_iters: Any) -> Schedule:
    """``m(t) = start + (end - start) * min(t, total_iters) / total_iters`` (torch ``LinearLR``)."""
    start = _real("start_factor", start_factor, 0, 1)
    end = _real("end_factor", end_factor, 0, 1)
    span = _span("total_iters", total_iters, total)
    return lambda step: start + (end - start) * min(step, span) / span


def _cosine(total: int, *, min_factor: float) -> Schedule:
    """``m(t) = min + (1 - min) * (1 + cos(pi * t / (T - 1))) / 2`` (torch ``CosineAnnealingLR``
    with ``T_max = T - 1``; SGDR without restarts)."""
    floor = _real("min_factor", min_factor, 0, 1)
    span = max(total - 1, 1)
    return lambda step: floor + (1.0 - floor) * (1.0 + math.cos(math.pi * min(step, span) / span)) / 2.0


def _cosine_restarts(total: int, *, T_0: Any, T_mult: int, min_factor: float, decay: float) -> Schedule:
    """SGDR (Loshchilov & Hutter 2017, arXiv:1608.03983), torch ``CosineAnnealingWarmRestarts``:
    cycle ``i`` lasts ``T_i = T_0 * T_mult^i`` steps and
    ``m(t) = min + (decay^i - min) * (1 + cos(pi * t_cur / T_i)) / 2`` (``decay`` lowers each restart's
    peak, as timm's ``cycle_decay``)."""
    period = _steps("T_0", T_0, total)
    mult = _int("T_mult", T_mult, 1)
    floor = _real("min_factor", min_factor, 0, 1)
    shrink = _real("decay", decay, 0, 1, low_open=True)

    def schedule(step: int) -> float:
        cycle, t_cur, length = _sgdr_position(step, period, mult)
        return floor + (shrink**cycle - floor) * (1.0 + math.cos(math.pi * t_cur / length)) / 2.0

    return schedule


def _sgdr_position(step: int, period: int, mult: int) -> tuple[int, int, int]:
    """(cycle index, steps into the cycle, cycle length) of ``step``."""
    if mult == 1:
        cycle, t_cur = divmod(step, period)
        return cycle, t_cur, period
    cycle, start, length = 0, 0, period
    while step >= start + length:
        start, length, cycle = start + length, length * mult, cycle + 1
    return cycle, step - start, length


def _linear_cosine_parts(total: int, alpha: float, beta: float, num_periods: float, decay_steps: Any):
    alpha = _real("alpha", alpha, 0)
    beta = _real("beta", beta, 0)
    periods = _real("num_periods", num_periods, 0)
    span = _span("decay_steps", decay_steps, total)

    def parts(step: int) -> tuple[int, float, float]:
        t = min(step, span)
        return t, (span - t) / span, 0.5 * (1.0 + math.cos(math.pi * 2.0 * periods * t / span))

    return alpha, beta, parts


def _linear_cosine(total: int, *, alpha: float, beta: float, num_periods: float, decay_steps: Any) -> Schedule:
    """``m(t) = (alpha + (D - t) / D) * (1 + cos(2 pi num_periods t / D)) / 2 + beta``, ``t`` capped at
    ``D = decay_steps`` (TF ``linear_cosine_decay``; Bello et al. 2017, "Neural Optimizer Search with
    Reinforcement Learning", arXiv:1709.07417)."""
    alpha, beta, parts = _linear_cosine_parts(total, alpha, beta, num_periods, decay_steps)

    def schedule(step: int) -> float:
        _, linear, cosine = parts(step)
        return (alpha + linear) * cosine + beta

    return schedule


def _noisy_linear_cosine(
    total: int,
    *,
    alpha: float,
    beta: float,
    num_periods: float,
    decay_steps: Any,
    initial_variance: float,
    variance_decay: float,
    seed: int,
) -> Schedule:
    """``linear_cosine`` with ``N(0, initial_variance / (1 + t)^variance_decay)`` noise added to the
    linear term (TF ``noisy_linear_cosine_decay``; Bello et al. 2017), clipped at 0. The noise is a
    function of ``(seed, t)``: the same seed gives the same values in any order."""
    alpha, beta, parts = _linear_cosine_parts(total, alpha, beta, num_periods, decay_steps)
    variance0 = _real("initial_variance", initial_variance, 0)
    variance_power = _real("variance_decay", variance_decay, 0)
    seed = _int("seed", seed, 0)

    def schedule(step: int) -> float:
        t, linear, cosine = parts(step)
        std = math.sqrt(variance0 / (1.0 + t) ** variance_power)
        noise = random.Random(f"{seed}:{step}").gauss(0.0, std)
        return max(0.0, (alpha + linear + noise) * cosine + beta)

    return schedule


ONE_CYCLE_ANNEAL: dict[str, Callable[[float, float, float], float]] = {
    "cos": lambda start, end, pct: end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1),
    "linear": lambda start, end, pct: (end - start) * pct + start,
}


def _one_cycle(
    total: int, *, pct_start: float, div_factor: float, final_div_factor: float, anneal: str, three_phase: bool
) -> Schedule:
    """1cycle (Smith & Topin 2018, "Super-Convergence", arXiv:1708.07120), torch ``OneCycleLR`` as a
    multiplier of ``max_lr``: from ``1/div_factor`` up to 1 over ``pct_start`` of the steps, then down
    to ``1/(div_factor * final_div_factor)`` at the last step (``three_phase``: back to
    ``1/div_factor`` symmetrically first, then down to the floor)."""
    pct = _real("pct_start", pct_start, 0, 1, low_open=True, high_open=True)
    initial = 1.0 / _real("div_factor", div_factor, 1)
    floor = initial / _real("final_div_factor", final_div_factor, 1)
    curve = _choice("anneal", anneal, ONE_CYCLE_ANNEAL)
    phases = _one_cycle_phases(total, pct, initial, floor, _flag("three_phase", three_phase))

    def schedule(step: int) -> float:
        step = min(step, total - 1)
        start = 0.0
        for end, low, high in phases[:-1]:
            if step <= end:
                return curve(low, high, (step - start) / (end - start))
            start = end
        end, low, high = phases[-1]
        return curve(low, high, (step - start) / (end - start))

    return schedule


def _one_cycle_phases(total: int, pct: float, initial: float, floor: float, three_phase: bool):
    """(end step, start value, end value) per phase, exactly as torch ``OneCycleLR``."""
    up = float(pct * total) - 1
    if up <= 0:
        raise ValueError(
            f"pct_start * total_steps must be > 1 so that the rise lasts at least one step, "
            f"got pct_start={pct}, total_steps={total}"
        )
    if not three_phase:
        return ((up, initial, 1.0), (total - 1, 1.0, floor))
    down = float(2 * pct * total) - 2
    if down >= total - 1:
        raise ValueError(
            f"three_phase needs 2 * pct_start * total_steps - 2 < total_steps - 1, "
            f"got pct_start={pct}, total_steps={total}"
        )
    return ((up, initial, 1.0), (down, 1.0, initial), (total - 1, initial, floor))


CYCLIC_SCALES: dict[str, Callable[[int, int, float], float]] = {
    "triangular": lambda cycle, step, gamma: 1.0,
    "triangular2": lambda cycle, step, gamma: 1 / (2.0 ** (cycle - 1)),
    "exp_range": lambda cycle, step, gamma: gamma**step,
}


def _cyclic(
    total: int, *, base_factor: float, step_size_up: Any, step_size_down: Any, mode: str, gamma: float
) -> Schedule:
    """Cyclical LR (Smith 2017, arXiv:1506.01186), torch ``CyclicLR`` with ``max_lr = 1``: a triangle
    from ``base_factor`` up to 1 in ``step_size_up`` steps and back in ``step_size_down``;
    ``triangular2`` halves the amplitude each cycle, ``exp_range`` scales it by ``gamma^t``."""
    base = _real("base_factor", base_factor, 0, 1, high_open=True)
    up = _steps("step_size_up", step_size_up, total)
    down = up if step_size_down is None else _steps("step_size_down", step_size_down, total)
    scale = _choice("mode", mode, CYCLIC_SCALES)
    gamma = _real("gamma", gamma, 0, 1, low_open=True)
    size = float(up + down)
    ratio = up / size

    def schedule(step: int) -> float:
        cycle = math.floor(1 + step / size)
        x = 1.0 + step / size - cycle
        height = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        return base + (1.0 - base) * height * scale(cycle, step, gamma)

    return schedule


def _piecewise_constant(steps: list[int], values: list[float], step: int) -> float:
    return values[bisect_right(steps, step) - 1]


def _piecewise_linear(steps: list[int], values: list[float], step: int) -> float:
    index = bisect_right(steps, step)
    if index == len(steps):
        return values[-1]
    (s0, v0), (s1, v1) = (steps[index - 1], values[index - 1]), (steps[index], values[index])
    return v0 + (v1 - v0) * (step - s0) / (s1 - s0)


PIECEWISE_INTERPOLATIONS: dict[str, Callable[[list[int], list[float], int], float]] = {
    "constant": _piecewise_constant,
    "linear": _piecewise_linear,
}


def _piecewise(total: int, *, points: Any, interpolation: str) -> Schedule:
    """Hand-set multipliers: ``points = [[step, multiplier], ...]`` (steps may be fractions, strictly
    increasing), held (``constant``) or interpolated (``linear``) between points; 1 at step 0 unless a
    point says otherwise; the last value is held to the end."""
    pairs = _sequence("points", points)
    steps, values = _piecewise_points(pairs, total)
    between = _choice("interpolation", interpolation, PIECEWISE_INTERPOLATIONS)
    return lambda step: between(steps, values, step)


def _piecewise_points(pairs: Sequence[Any], total: int) -> tuple[list[int], list[float]]:
    steps, values = [0], [1.0]
    for index, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"points[{index}] must be a [step, multiplier] pair, got points[{index}]={pair!r}")
        step = resolve_duration(_number(f"points[{index}] step", pair[0]), total, f"points[{index}] step")
        value = _real(f"points[{index}] multiplier", pair[1], 0)
        if index == 0 and step == 0:
            steps, values = [], []
        if steps and step <= steps[-1]:
            raise ValueError(
                f"points steps must be strictly increasing, got points[{index}]={list(pair)!r} "
                f"at step {step} after step {steps[-1]} (total_steps={total})"
            )
        steps.append(step)
        values.append(value)
    return steps, values


class Plateau:
    """Reduce on plateau (torch ``ReduceLROnPlateau(mode="min", threshold_mode="rel")``): after more than
    ``patience`` reports without a new best (``value < best * (1 - threshold)``), multiply the factor by
    ``factor`` (not below ``min_factor``), then ignore ``cooldown`` reports. ``patience`` and
    ``cooldown`` count ``report`` calls (evaluations), not steps. The step argument is ignored."""

    def __init__(self, *, factor: float, patience: int, cooldown: int, min_factor: float, threshold: float) -> None:
        self.factor = _real("factor", factor, 0, 1, low_open=True, high_open=True)
        self.patience = _int("patience", patience, 0)
        self.cooldown = _int("cooldown", cooldown, 0)
        self.min_factor = _real("min_factor", min_factor, 0, 1)
        self.threshold = _real("threshold", threshold, 0, 1, high_open=True)
        self.current, self.best, self.bad, self.cooldown_left = 1.0, math.inf, 0, 0

    def __call__(self, step: int) -> float:
        return self.current

    def report(self, value: float) -> None:
        """Feed the validation loss (lower is better) of one evaluation."""
        value = float(value)
        if value < self.best * (1.0 - self.threshold):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left, self.bad = self.cooldown_left - 1, 0
        if self.bad > self.patience:
            reduced = max(self.current * self.factor, self.min_factor)
            if self.current - reduced > PLATEAU_EPS:
                self.current = reduced
            self.cooldown_left, self.bad = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        """Its counters: the factor now, the best value, the bad reports, the cooldown left."""
        return {"current": self.current, "best": self.best, "bad": self.bad, "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what ``state_dict`` returned."""
        self.current, self.best = float(state["current"]), float(state["best"])
        self.bad, self.cooldown_left = int(state["bad"]), int(state["cooldown_left"])


def schedule_state(schedule: Schedule) -> Optional[dict[str, Any]]:
    """What a checkpoint keeps of a schedule: a metric-driven one's state (plateau's counters), None for a pure
    function of the step (nothing to keep)."""
    state_dict = getattr(schedule, "state_dict", None)
    return state_dict() if state_dict is not None else None


def load_schedule_state(schedule: Schedule, state: Optional[dict[str, Any]]) -> None:
    """Put back what ``schedule_state`` returned for a schedule built from the same recipe and length."""
    if state is not None:
        schedule.load_state_dict(state)  # type: ignore[attr-defined]


def _plateau(total: int, **params: Any) -> Plateau:
    """See ``Plateau``."""
    return Plateau(**params)


# --------------------------------------------------------------------------- the table

_DECAY_STEPS_NOTE = "decay_steps null = the whole run"

SCHEDULES: dict[str, ScheduleSpec] = {
    spec.name: spec
    for spec in (
        ScheduleSpec("constant", "m(t) = 1", _constant, {}, {}),
        ScheduleSpec(
            "step",
            "m(t) = gamma^floor(t / step_size)  [torch StepLR]",
            _step,
            {"gamma": 0.1, "step_size": 0.4},
            {"gamma": Float(0.1, 0.9), "step_size": Float(0.1, 0.5)},
        ),
        ScheduleSpec(
            "multistep",
            "m(t) = gamma^(number of milestones <= t)  [torch MultiStepLR]",
            _multistep,
            {"milestones": (0.5, 0.75), "gamma": 0.1},
            {"gamma": Float(0.05, 0.5, log=True)},
        ),
        ScheduleSpec(
            "exponential",
            f"m(t) = gamma^(t / decay_steps), floored if staircase; {_DECAY_STEPS_NOTE}",
            _exponential,
            {"gamma": 0.1, "decay_steps": None, "staircase": False},
            {"gamma": Float(1e-3, 0.5, log=True)},
        ),
        ScheduleSpec(
            "natural_exp",
            f"m(t) = exp(-decay_rate * t / decay_steps), floored if staircase; {_DECAY_STEPS_NOTE}",
            _natural_exp,
            {"decay_rate": 3.0, "decay_steps": None, "staircase": False},
            {"decay_rate": Float(0.5, 7.0)},
        ),
        ScheduleSpec(
            "inverse_time",
            f"m(t) = 1 / (1 + decay_rate * t / decay_steps), floored if staircase; {_DECAY_STEPS_NOTE}",
            _inverse_time,
            {"decay_rate": 9.0, "decay_steps": None, "staircase": False},
            {"decay_rate": Float(1.0, 100.0, log=True)},
        ),
        ScheduleSpec(
            "polynomial",
            f"m(t) = (1 - end_factor) * (1 - t / decay_steps)^power + end_factor "
            f"[TF PolynomialDecay, cycle optional]; {_DECAY_STEPS_NOTE}",
            _polynomial,
            {"power": 1.0, "end_factor": 0.0, "decay_steps": None, "cycle": False},
            {"power": Float(0.5, 3.0), "end_factor": Float(0.0, 0.1)},
        ),
        ScheduleSpec(
            "linear",
            "m(t) = start_factor + (end_factor - start_factor) * min(t, total_iters) / total_iters "
            "[torch LinearLR]; total_iters null = the whole run",
            _linear,
            {"start_factor": 1.0, "end_factor": 0.0, "total_iters": None},
            {"end_factor": Float(0.0, 0.1)},
        ),
        ScheduleSpec(
            "cosine",
            "m(t) = min_factor + (1 - min_factor) * (1 + cos(pi t / (T - 1))) / 2 [torch CosineAnnealingLR]",
            _cosine,
            {"min_factor": 0.0},
            {"min_factor": Float(0.0, 0.1)},
        ),
        ScheduleSpec(
            "cosine_restarts",
            "SGDR: cycle i of T_0 * T_mult^i steps, "
            "m = min_factor + (decay^i - min_factor) * (1 + cos(pi t_cur / T_i)) / 2 "
            "[torch CosineAnnealingWarmRestarts]",
            _cosine_restarts,
            {"T_0": 0.25, "T_mult": 1, "min_factor": 0.0, "decay": 1.0},
            {"T_0": Float(0.05, 0.5), "T_mult": Int(1, 3), "min_factor": Float(0.0, 0.1), "decay": Float(0.5, 1.0)},
        ),
        ScheduleSpec(
            "linear_cosine",
            "m(t) = (alpha + (D - t) / D) * (1 + cos(2 pi num_periods t / D)) / 2 + beta, "
            f"D = decay_steps [TF linear_cosine_decay]; {_DECAY_STEPS_NOTE}",
            _linear_cosine,
            {"alpha": 0.0, "beta": 0.001, "num_periods": 0.5, "decay_steps": None},
            {"alpha": Float(0.0, 0.1), "beta": Float(0.0, 0.01), "num_periods": Float(0.5, 4.0)},
        ),
        ScheduleSpec(
            "noisy_linear_cosine",
            "linear_cosine with N(0, initial_variance / (1 + t)^variance_decay) "
            "added to the linear term, seeded, clipped at 0 [TF noisy_linear_cosine_decay]",
            _noisy_linear_cosine,
            {
                "alpha": 0.0,
                "beta": 0.001,
                "num_periods": 0.5,
                "decay_steps": None,
                "initial_variance": 0.1,
                "variance_decay": 0.55,
                "seed": 0,
            },
            {
                "num_periods": Float(0.5, 4.0),
                "initial_variance": Float(0.01, 1.0, log=True),
                "variance_decay": Float(0.3, 1.0),
            },
        ),
        ScheduleSpec(
            "one_cycle",
            "1cycle: 1/div_factor -> 1 over pct_start of the run, then -> "
            "1/(div_factor * final_div_factor) at the last step [torch OneCycleLR]",
            _one_cycle,
            {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4, "anneal": "cos", "three_phase": False},
            {
                "pct_start": Float(0.15, 0.45),
                "div_factor": Float(5.0, 100.0, log=True),
                "final_div_factor": Float(1e2, 1e5, log=True),
                "anneal": Choice(("cos", "linear")),
                "three_phase": Choice((False, True)),
            },
        ),
        ScheduleSpec(
            "cyclic",
            "cyclical LR: triangles between base_factor and 1 (step_size_up, step_size_down), "
            "amplitude x scale(mode) [torch CyclicLR]",
            _cyclic,
            {"base_factor": 0.1, "step_size_up": 0.1, "step_size_down": None, "mode": "triangular", "gamma": 1.0},
            {
                "base_factor": Float(0.01, 0.5, log=True),
                "step_size_up": Float(0.05, 0.25),
                "mode": Choice(("triangular", "triangular2")),
            },
        ),
        ScheduleSpec(
            "piecewise",
            "hand-set points [[step, m], ...] (1 at step 0 unless given), held (constant) "
            "or interpolated (linear); steps may be fractions",
            _piecewise,
            {"points": ((0.5, 0.1), (0.75, 0.01)), "interpolation": "constant"},
            {"interpolation": Choice(("constant", "linear"))},
        ),
        ScheduleSpec(
            "plateau",
            "m *= factor (>= min_factor) after more than patience reports without a "
            "relative improvement > threshold; report(val_loss) [torch ReduceLROnPlateau]",
            _plateau,
            {"factor": 0.1, "patience": 10, "cooldown": 0, "min_factor": 0.0, "threshold": 1e-4},
            {"factor": Float(0.1, 0.7), "patience": Int(1, 10), "cooldown": Int(0, 3)},
            metric_driven=True,
        ),
    )
}


def schedule_params(name: str, params: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """``params`` merged over the defaults of schedule ``name``; an unknown key is a ValueError."""
    spec = lookup(SCHEDULES, "schedule", name)
    given = dict(params or {})
    unknown = sorted(set(given) - set(spec.defaults))
    if unknown:
        valid = ", ".join(spec.defaults) or "none"
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for schedule {name!r}; valid parameters: {valid}"
        )
    return {**spec.defaults, **given}


def build_schedule(
    name: str,
    total_steps: int,
    params: Optional[Mapping[str, Any]] = None,
    *,
    warmup_steps: float = 0,
    warmup_kind: str = "linear",
) -> Schedule:
    """Build schedule ``name`` for a run of ``total_steps`` optimizer steps.

    ``params`` are merged over the spec's defaults. ``warmup_steps`` (int steps or a fraction of
    ``total_steps``) of ``warmup_kind`` ramp go in front; the schedule then runs over the remaining
    ``total_steps - warmup_steps`` steps on its own clock. Raises ``UnknownNameError`` for an unknown
    name and ``ValueError`` (naming the parameter and value) for an unknown key or a bad value.
    The result is metric driven (has ``report``) exactly when the schedule is.
    """
    spec = lookup(SCHEDULES, "schedule", name)
    merged = schedule_params(name, params)
    total = _int("total_steps", total_steps, 1)
    lookup(WARMUPS, "warmup kind", warmup_kind)
    warm = resolve_duration(_number("warmup_steps", warmup_steps), total, "warmup_steps")
    if warm >= total:
        raise ValueError(
            f"warmup_steps must be < total_steps, got warmup_steps={warmup_steps!r} ({warm} steps), total_steps={total}"
        )
    return warmup(warmup_kind, warm, spec.build(total - warm, **merged))


def recipe_schedule(recipe: Recipe, total_steps: int) -> Schedule:
    """The LR schedule of ``recipe`` (its schedule, parameters and warmup) for a run of ``total_steps`` steps."""
    return build_schedule(
        recipe.schedule,
        total_steps,
        recipe.schedule_params,
        warmup_steps=recipe.warmup_steps(total_steps),
        warmup_kind=recipe.warmup_kind,
    )


def recipe_lr_curve(recipe: Recipe, total_steps: int, points: int = 200) -> tuple[list[int], list[float]]:
    """(steps, LR) of ``recipe`` over a run of ``total_steps``, about ``points`` of them and the last: the peak LR
    (the switch's after the switch) times the schedule; a plateau schedule is drawn never reduced."""
    schedule = recipe_schedule(recipe, total_steps)
    switch_step = round(recipe.switch.at_fraction * total_steps) if recipe.switch else None
    every = max(1, total_steps // points)
    steps = sorted({*range(0, total_steps, every), total_steps - 1})
    peaks = [
        recipe.switch.lr if recipe.switch and switch_step is not None and s >= switch_step else recipe.lr for s in steps
    ]
    return steps, [peak * schedule(step) for peak, step in zip(peaks, steps)]
