"""The schedule catalog: pinned values, torch agreement, warmup, validation. Written once, over the tables."""

from __future__ import annotations

import itertools
import math
import random
import subprocess
import sys

import pytest
import torch

from tuner.errors import UnknownNameError
from tuner.schedules import (
    EXPONENTIAL_WARMUP_START,
    SCHEDULES,
    MetricDriven,
    build_schedule,
    join,
    schedule_params,
    warmup,
)

NAMES = list(SCHEDULES)
PURE_NAMES = [name for name, spec in SCHEDULES.items() if not spec.metric_driven]
TOTALS = (10, 11, 37, 1000)
cos, exp, pi = math.cos, math.exp, math.pi

# --------------------------------------------------------------------------- pinned closed forms
# (id, name, params, total_steps, {step: closed-form value})
PINNED = [
    ("constant", "constant", {}, 100, {0: 1.0, 50: 1.0, 99: 1.0}),
    ("step", "step", {"gamma": 0.5, "step_size": 10}, 100, {0: 1.0, 9: 1.0, 10: 0.5, 19: 0.5, 20: 0.25, 99: 0.5**9}),
    ("step-fraction", "step", {"gamma": 0.1, "step_size": 0.25}, 100, {0: 1.0, 24: 1.0, 25: 0.1, 50: 0.01, 99: 1e-3}),
    (
        "multistep",
        "multistep",
        {"milestones": [30, 0.8], "gamma": 0.1},
        100,
        {0: 1.0, 29: 1.0, 30: 0.1, 79: 0.1, 80: 0.01, 99: 0.01},
    ),
    (
        "exponential",
        "exponential",
        {"gamma": 0.5, "decay_steps": 10},
        100,
        {0: 1.0, 5: 0.5**0.5, 10: 0.5, 99: 0.5**9.9},
    ),
    ("exponential-run", "exponential", {"gamma": 0.01}, 101, {0: 1.0, 50: 0.1, 100: 0.01}),
    (
        "exponential-staircase",
        "exponential",
        {"gamma": 0.5, "decay_steps": 10, "staircase": True},
        100,
        {0: 1.0, 9: 1.0, 10: 0.5, 19: 0.5, 20: 0.25},
    ),
    ("natural_exp", "natural_exp", {"decay_rate": 2.0, "decay_steps": 10}, 100, {0: 1.0, 10: exp(-2), 15: exp(-3)}),
    (
        "natural_exp-staircase",
        "natural_exp",
        {"decay_rate": 2.0, "decay_steps": 10, "staircase": True},
        100,
        {9: 1.0, 15: exp(-2), 20: exp(-4)},
    ),
    (
        "inverse_time",
        "inverse_time",
        {"decay_rate": 1.0, "decay_steps": 10},
        100,
        {0: 1.0, 10: 0.5, 20: 1 / 3, 5: 1 / 1.5},
    ),
    (
        "inverse_time-staircase",
        "inverse_time",
        {"decay_rate": 1.0, "decay_steps": 10, "staircase": True},
        100,
        {9: 1.0, 15: 0.5, 20: 1 / 3},
    ),
    ("polynomial", "polynomial", {"power": 2.0, "end_factor": 0.1}, 101, {0: 1.0, 50: 0.9 * 0.25 + 0.1, 100: 0.1}),
    (
        "polynomial-cycle",
        "polynomial",
        {"power": 2.0, "end_factor": 0.1, "decay_steps": 10, "cycle": True},
        100,
        {
            0: 1.0,
            5: 0.9 * 0.25 + 0.1,
            10: 0.1,
            11: 0.9 * (1 - 11 / 20) ** 2 + 0.1,
            20: 0.1,
            21: 0.9 * (1 - 21 / 30) ** 2 + 0.1,
        },
    ),
    ("polynomial-hold", "polynomial", {"decay_steps": 10}, 100, {0: 1.0, 5: 0.5, 10: 0.0, 99: 0.0}),
    ("linear", "linear", {}, 101, {0: 1.0, 50: 0.5, 100: 0.0}),
    (
        "linear-up",
        "linear",
        {"start_factor": 0.5, "end_factor": 1.0, "total_iters": 10},
        100,
        {0: 0.5, 5: 0.75, 10: 1.0, 99: 1.0},
    ),
    ("cosine", "cosine", {"min_factor": 0.1}, 101, {0: 1.0, 50: 0.55, 100: 0.1}),
    (
        "cosine_restarts",
        "cosine_restarts",
        {"T_0": 10, "T_mult": 2, "min_factor": 0.1, "decay": 0.5},
        100,
        {0: 1.0, 5: 0.55, 10: 0.5, 20: 0.3, 30: 0.25, 50: 0.1 + 0.15 * (1 + cos(pi * 20 / 40)) / 2, 70: 0.125},
    ),
    (
        "cosine_restarts-fraction",
        "cosine_restarts",
        {"T_0": 0.25},
        100,
        {0: 1.0, 24: (1 + cos(pi * 24 / 25)) / 2, 25: 1.0, 75: 1.0, 99: (1 + cos(pi * 24 / 25)) / 2},
    ),
    ("linear_cosine", "linear_cosine", {}, 101, {0: 1.001, 50: 0.5 * 0.5 + 0.001, 100: 0.001}),
    (
        "linear_cosine-periods",
        "linear_cosine",
        {"alpha": 0.1, "beta": 0.0, "num_periods": 1.0, "decay_steps": 100},
        200,
        {0: 1.1, 25: 0.85 * 0.5, 50: 0.0, 100: 0.1, 150: 0.1},
    ),
    (
        "noisy_linear_cosine-no-noise",
        "noisy_linear_cosine",
        {"initial_variance": 0.0},
        101,
        {0: 1.001, 50: 0.5 * 0.5 + 0.001, 100: 0.001},
    ),
    ("one_cycle", "one_cycle", {}, 100, {0: 0.04, 29: 1.0, 99: 0.04 / 1e4}),
    (
        "one_cycle-linear",
        "one_cycle",
        {"anneal": "linear", "pct_start": 0.5, "div_factor": 10.0, "final_div_factor": 1.0},
        100,
        {0: 0.1, 49: 1.0, 24: 0.1 + 0.9 * 24 / 49, 74: 0.55, 99: 0.1},
    ),
    ("one_cycle-three-phase", "one_cycle", {"three_phase": True}, 100, {0: 0.04, 29: 1.0, 58: 0.04, 99: 4e-6}),
    ("cyclic", "cyclic", {"base_factor": 0.1, "step_size_up": 10}, 100, {0: 0.1, 5: 0.55, 10: 1.0, 20: 0.1, 30: 1.0}),
    (
        "cyclic-triangular2",
        "cyclic",
        {"base_factor": 0.1, "step_size_up": 10, "mode": "triangular2"},
        100,
        {10: 1.0, 30: 0.55, 50: 0.325},
    ),
    (
        "cyclic-exp_range",
        "cyclic",
        {"base_factor": 0.1, "step_size_up": 10, "mode": "exp_range", "gamma": 0.9},
        100,
        {0: 0.1, 10: 0.1 + 0.9 * 0.9**10, 30: 0.1 + 0.9 * 0.9**30},
    ),
    (
        "cyclic-asymmetric",
        "cyclic",
        {"base_factor": 0.0, "step_size_up": 10, "step_size_down": 30},
        100,
        {10: 1.0, 25: 0.5, 40: 0.0, 50: 1.0},
    ),
    (
        "piecewise",
        "piecewise",
        {"points": [[0.5, 0.1], [75, 0.01]]},
        100,
        {0: 1.0, 49: 1.0, 50: 0.1, 75: 0.01, 99: 0.01},
    ),
    (
        "piecewise-linear",
        "piecewise",
        {"points": [[0, 0.5], [10, 1.0], [20, 0.0]], "interpolation": "linear"},
        100,
        {0: 0.5, 5: 0.75, 10: 1.0, 15: 0.5, 20: 0.0, 99: 0.0},
    ),
    ("plateau", "plateau", {}, 100, {0: 1.0, 99: 1.0}),
]


def test_every_schedule_is_pinned():
    assert {case[1] for case in PINNED} == set(SCHEDULES)


@pytest.mark.parametrize(
    ("name", "params", "total", "expected"), [case[1:] for case in PINNED], ids=[case[0] for case in PINNED]
)
def test_pinned_values(name, params, total, expected):
    schedule = build_schedule(name, total, params)
    assert {step: schedule(step) for step in expected} == pytest.approx(expected, rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------- every schedule, defaults and spaces


@pytest.mark.parametrize("total", TOTALS)
@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_finite_and_non_negative(name, total):
    schedule = build_schedule(name, total)
    values = [schedule(step) for step in range(total + 5)]
    assert all(math.isfinite(v) and v >= 0 for v in values)


SPACE_CASES = [
    (name, key, value) for name, spec in SCHEDULES.items() for key, dim in spec.space.items() for value in dim.grid(3)
]


@pytest.mark.parametrize("total", (10, 1000))
@pytest.mark.parametrize(("name", "key", "value"), SPACE_CASES)
def test_search_space_values_build(name, key, value, total):
    schedule = build_schedule(name, total, {key: value})
    assert all(math.isfinite(schedule(step)) and schedule(step) >= 0 for step in range(total))


def test_constant_has_an_empty_space():
    assert dict(SCHEDULES["constant"].space) == {}
    assert all(spec.space for name, spec in SCHEDULES.items() if name != "constant")


@pytest.mark.parametrize("name", PURE_NAMES)
def test_pure_in_any_order(name):
    schedule = build_schedule(name, 200)
    steps = list(range(200))
    forward = [schedule(step) for step in steps]
    shuffled = steps[:]
    random.Random(0).shuffle(shuffled)
    assert [schedule(step) for step in steps] == forward
    assert {step: schedule(step) for step in shuffled} == dict(zip(steps, forward))
    assert [build_schedule(name, 200)(step) for step in reversed(steps)] == forward[::-1]


@pytest.mark.parametrize("name", NAMES)
def test_metric_driven_flag_matches_the_built_schedule(name):
    assert isinstance(build_schedule(name, 100), MetricDriven) == SCHEDULES[name].metric_driven
    assert isinstance(build_schedule(name, 100, warmup_steps=10), MetricDriven) == SCHEDULES[name].metric_driven


# --------------------------------------------------------------------------- agreement with torch

TORCH_STEPS = 1000
S = torch.optim.lr_scheduler
# (id, name, params, torch scheduler factory(optimizer), initial lr of the optimizer)
TORCH_CASES = [
    ("StepLR", "step", {"gamma": 0.7, "step_size": 37}, lambda o: S.StepLR(o, step_size=37, gamma=0.7)),
    ("StepLR-fraction", "step", {"gamma": 0.5, "step_size": 0.1}, lambda o: S.StepLR(o, step_size=100, gamma=0.5)),
    (
        "MultiStepLR",
        "multistep",
        {"milestones": [100, 0.5, 777], "gamma": 0.3},
        lambda o: S.MultiStepLR(o, milestones=[100, 500, 777], gamma=0.3),
    ),
    ("ExponentialLR", "exponential", {"gamma": 0.995, "decay_steps": 1}, lambda o: S.ExponentialLR(o, gamma=0.995)),
    ("CosineAnnealingLR", "cosine", {"min_factor": 0.05}, lambda o: S.CosineAnnealingLR(o, T_max=999, eta_min=0.05)),
    (
        "CosineAnnealingWarmRestarts",
        "cosine_restarts",
        {"T_0": 50, "T_mult": 2, "min_factor": 0.01},
        lambda o: S.CosineAnnealingWarmRestarts(o, T_0=50, T_mult=2, eta_min=0.01),
    ),
    (
        "CosineAnnealingWarmRestarts-mult1",
        "cosine_restarts",
        {"T_0": 0.15, "T_mult": 1},
        lambda o: S.CosineAnnealingWarmRestarts(o, T_0=150, T_mult=1),
    ),
    ("PolynomialLR", "polynomial", {"power": 2.0}, lambda o: S.PolynomialLR(o, total_iters=999, power=2.0)),
    (
        "PolynomialLR-short",
        "polynomial",
        {"power": 0.9, "decay_steps": 300},
        lambda o: S.PolynomialLR(o, total_iters=300, power=0.9),
    ),
    (
        "LinearLR",
        "linear",
        {"start_factor": 1.0, "end_factor": 0.0},
        lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=999),
    ),
    (
        "LinearLR-warmup-like",
        "linear",
        {"start_factor": 1 / 3, "end_factor": 1.0, "total_iters": 250},
        lambda o: S.LinearLR(o, start_factor=1 / 3, end_factor=1.0, total_iters=250),
    ),
    ("OneCycleLR", "one_cycle", {}, lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=1000, cycle_momentum=False)),
    (
        "OneCycleLR-linear-3phase",
        "one_cycle",
        {"pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0, "anneal": "linear", "three_phase": True},
        lambda o: S.OneCycleLR(
            o,
            max_lr=1.0,
            total_steps=1000,
            pct_start=0.25,
            div_factor=10.0,
            final_div_factor=100.0,
            anneal_strategy="linear",
            three_phase=True,
            cycle_momentum=False,
        ),
    ),
    (
        "CyclicLR-triangular",
        "cyclic",
        {"base_factor": 0.1, "step_size_up": 70},
        lambda o: S.CyclicLR(o, base_lr=0.1, max_lr=1.0, step_size_up=70, cycle_momentum=False),
    ),
    (
        "CyclicLR-triangular2",
        "cyclic",
        {"base_factor": 0.01, "step_size_up": 50, "step_size_down": 150, "mode": "triangular2"},
        lambda o: S.CyclicLR(
            o, base_lr=0.01, max_lr=1.0, step_size_up=50, step_size_down=150, mode="triangular2", cycle_momentum=False
        ),
    ),
    (
        "CyclicLR-exp_range",
        "cyclic",
        {"base_factor": 0.2, "step_size_up": 0.05, "mode": "exp_range", "gamma": 0.998},
        lambda o: S.CyclicLR(
            o, base_lr=0.2, max_lr=1.0, step_size_up=50, mode="exp_range", gamma=0.998, cycle_momentum=False
        ),
    ),
]


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, dtype=torch.float64, requires_grad=True)], lr=1.0)


@pytest.mark.parametrize(
    ("name", "params", "factory"), [case[1:] for case in TORCH_CASES], ids=[case[0] for case in TORCH_CASES]
)
def test_agrees_with_torch(name, params, factory):
    optimizer = _optimizer()
    scheduler = factory(optimizer)
    ours = build_schedule(name, TORCH_STEPS, params)
    for step in range(TORCH_STEPS):
        assert ours(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9, abs=1e-12), step
        optimizer.step()
        scheduler.step()


def _stalling_losses(n: int) -> list[float]:
    """Improves, then stalls with noise: exercises patience, cooldown and the floor."""
    rng = random.Random(0)
    return [max(0.3, 1.0 - i / 150) + (0.5 if i < 400 else 0.2) * rng.random() * 0.1 for i in range(n)]


def _slowing_losses(n: int) -> list[float]:
    """Keeps improving ever more slowly: only the relative threshold decides what counts as better."""
    rng = random.Random(1)
    return [2.0 / (1 + i / 50) + 0.02 * rng.random() for i in range(n)]


PLATEAU_CASES = [
    {"factor": 0.5, "patience": 5, "cooldown": 0, "min_factor": 0.0, "threshold": 1e-4},
    {"factor": 0.3, "patience": 0, "cooldown": 3, "min_factor": 1e-3, "threshold": 1e-2},
    {"factor": 0.7, "patience": 10, "cooldown": 2, "min_factor": 0.05, "threshold": 0.0},
    {"factor": 0.8, "patience": 2, "cooldown": 1, "min_factor": 0.0, "threshold": 0.05},
]


@pytest.mark.parametrize("losses", [_stalling_losses, _slowing_losses])
@pytest.mark.parametrize("params", PLATEAU_CASES)
def test_plateau_agrees_with_torch(params, losses):
    optimizer = _optimizer()
    torch_params = {key: value for key, value in params.items() if key != "min_factor"}
    scheduler = S.ReduceLROnPlateau(
        optimizer, mode="min", threshold_mode="rel", min_lr=params["min_factor"], **torch_params
    )
    ours = build_schedule("plateau", TORCH_STEPS, params)
    reductions = 0
    for step, loss in enumerate(losses(TORCH_STEPS)):
        before = ours(step)
        ours.report(loss)
        scheduler.step(loss)
        reductions += ours(step) < before
        assert ours(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9, abs=1e-12), step
    assert reductions >= 3


# --------------------------------------------------------------------------- warmup

WARMUP_LENGTHS = [(10, 10), (0.25, 25)]  # (warmup as given, in steps) for a 100-step run
WARMUP_RAMPS = {
    "linear": lambda u: u,
    "exponential": lambda u: EXPONENTIAL_WARMUP_START ** (1 - u),
}


@pytest.mark.parametrize(("given", "steps"), WARMUP_LENGTHS)
@pytest.mark.parametrize("kind", list(WARMUP_RAMPS))
@pytest.mark.parametrize("name", NAMES)
def test_warmup_in_front_of_every_schedule(name, kind, given, steps):
    total = 100
    inner = build_schedule(name, total - steps)
    schedule = build_schedule(name, total, warmup_steps=given, warmup_kind=kind)
    ramp = [WARMUP_RAMPS[kind]((t + 1) / (steps + 1)) * inner(0) for t in range(steps)]
    assert [schedule(t) for t in range(steps)] == pytest.approx(ramp, rel=1e-12)
    assert [schedule(t) for t in range(steps, total)] == [inner(t) for t in range(total - steps)]


@pytest.mark.parametrize("kind", list(WARMUP_RAMPS))
def test_warmup_ramps_up_from_near_zero(kind):
    schedule = build_schedule("constant", 1000, warmup_steps=100, warmup_kind=kind)
    values = [schedule(t) for t in range(101)]
    assert values[0] < 0.011 and values[100] == 1.0
    assert all(a < b for a, b in itertools.pairwise(values))


def test_linear_warmup_pinned():
    schedule = build_schedule("constant", 10, warmup_steps=4)
    assert [schedule(t) for t in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


DECAY_FLOORS = [
    ("cosine", {"min_factor": 0.05}, 0.05),
    ("linear", {"end_factor": 0.02}, 0.02),
    ("polynomial", {"power": 2.0, "end_factor": 0.01}, 0.01),
    ("linear_cosine", {}, 0.001),
    ("exponential", {"gamma": 0.01}, 0.01),
    ("one_cycle", {}, 0.04 / 1e4),
]


@pytest.mark.parametrize(("name", "params", "floor"), DECAY_FLOORS)
@pytest.mark.parametrize("warm", (0, 7, 0.3))
def test_decay_reaches_its_floor_at_the_last_step(name, params, floor, warm):
    schedule = build_schedule(name, 97, params, warmup_steps=warm)
    assert schedule(96) == pytest.approx(floor, rel=1e-12, abs=1e-15)
    assert schedule(95) > floor


@pytest.mark.parametrize("warm", (100, 101, 250))
def test_warmup_not_shorter_than_the_run_raises(warm):
    with pytest.raises(ValueError, match=rf"warmup_steps.*{warm}.*total_steps=100"):
        build_schedule("cosine", 100, warmup_steps=warm)


def test_warmup_keeps_plateau_report():
    schedule = build_schedule("plateau", 100, {"patience": 0}, warmup_steps=10)
    assert schedule(5) == pytest.approx(0.6 / 1.1)
    schedule.report(1.0)
    schedule.report(2.0)  # during warmup: not the plateau's business
    assert schedule(10) == 1.0
    schedule.report(1.0)
    schedule.report(2.0)
    assert schedule(11) == pytest.approx(0.1)


def test_join_runs_each_piece_on_its_own_clock():
    schedule = join([lambda t: 1.0, lambda t: 0.5**t, lambda t: float(t)], [5, 8])
    assert [schedule(t) for t in range(11)] == [1.0] * 5 + [1.0, 0.5, 0.25] + [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("schedules", "boundaries", "match"),
    [
        ([abs, abs], [], "one boundary fewer"),
        ([abs, abs], [0], r"boundaries\[0\].*0"),
        ([abs, abs, abs], [5, 5], r"boundaries\[1\].*5"),
        ([abs, abs], [2.5], r"boundaries\[0\].*2.5"),
    ],
)
def test_join_rejects_bad_boundaries(schedules, boundaries, match):
    with pytest.raises(ValueError, match=match):
        join(schedules, boundaries)


def test_warmup_rejects_unknown_kind():
    with pytest.raises(UnknownNameError, match="exponential, linear"):
        warmup("cubic", 5, abs)


# --------------------------------------------------------------------------- validation

BAD = [
    ("step", {"gamma": 0}, "gamma", "0"),
    ("step", {"gamma": 1.5}, "gamma", "1.5"),
    ("step", {"gamma": "fast"}, "gamma", "'fast'"),
    ("step", {"step_size": 0}, "step_size", "0"),
    ("step", {"step_size": -0.2}, "step_size", "-0.2"),
    ("step", {"step_size": 2.5}, "step_size", "2.5"),
    ("multistep", {"milestones": 50}, "milestones", "50"),
    ("multistep", {"milestones": [10, 0]}, r"milestones\[1\]", "0"),
    ("multistep", {"gamma": -1}, "gamma", "-1"),
    ("exponential", {"gamma": 0.0}, "gamma", "0.0"),
    ("exponential", {"staircase": "yes"}, "staircase", "'yes'"),
    ("exponential", {"decay_steps": 0}, "decay_steps", "0"),
    ("natural_exp", {"decay_rate": -0.1}, "decay_rate", "-0.1"),
    ("inverse_time", {"decay_rate": float("nan")}, "decay_rate", "nan"),
    ("polynomial", {"power": 0}, "power", "0"),
    ("polynomial", {"end_factor": 1.2}, "end_factor", "1.2"),
    ("polynomial", {"cycle": 1}, "cycle", "1"),
    ("linear", {"start_factor": -0.5}, "start_factor", "-0.5"),
    ("linear", {"end_factor": 2}, "end_factor", "2"),
    ("linear", {"total_iters": 0}, "total_iters", "0"),
    ("cosine", {"min_factor": 1.5}, "min_factor", "1.5"),
    ("cosine", {"min_factor": None}, "min_factor", "None"),
    ("cosine_restarts", {"T_0": 0}, "T_0", "0"),
    ("cosine_restarts", {"T_mult": 0}, "T_mult", "0"),
    ("cosine_restarts", {"T_mult": 1.5}, "T_mult", "1.5"),
    ("cosine_restarts", {"decay": 0}, "decay", "0"),
    ("linear_cosine", {"alpha": -1}, "alpha", "-1"),
    ("linear_cosine", {"beta": -0.1}, "beta", "-0.1"),
    ("linear_cosine", {"num_periods": -1}, "num_periods", "-1"),
    ("noisy_linear_cosine", {"initial_variance": -1}, "initial_variance", "-1"),
    ("noisy_linear_cosine", {"variance_decay": -1}, "variance_decay", "-1"),
    ("noisy_linear_cosine", {"seed": 1.5}, "seed", "1.5"),
    ("one_cycle", {"pct_start": 1.0}, "pct_start", "1.0"),
    ("one_cycle", {"pct_start": 0.005}, "pct_start", "0.005"),
    ("one_cycle", {"pct_start": 0.6, "three_phase": True}, "pct_start", "0.6"),
    ("one_cycle", {"div_factor": 0.5}, "div_factor", "0.5"),
    ("one_cycle", {"final_div_factor": 0}, "final_div_factor", "0"),
    ("one_cycle", {"anneal": "cosine"}, "anneal", "'cosine'"),
    ("cyclic", {"base_factor": 1.0}, "base_factor", "1.0"),
    ("cyclic", {"step_size_up": 0}, "step_size_up", "0"),
    ("cyclic", {"step_size_down": -5}, "step_size_down", "-5"),
    ("cyclic", {"mode": "sine"}, "mode", "'sine'"),
    ("cyclic", {"gamma": 2.0}, "gamma", "2.0"),
    ("piecewise", {"points": "0.5:0.1"}, "points", "'0.5:0.1'"),
    ("piecewise", {"points": [[10, 0.5, 1]]}, r"points\[0\]", r"\[10, 0.5, 1\]"),
    ("piecewise", {"points": [[10, 0.5], [5, 0.1]]}, r"points\[1\]", r"\[5, 0.1\]"),
    ("piecewise", {"points": [[10, -0.5]]}, r"points\[0\] multiplier", "-0.5"),
    ("piecewise", {"interpolation": "cubic"}, "interpolation", "'cubic'"),
    ("plateau", {"factor": 1.0}, "factor", "1.0"),
    ("plateau", {"patience": -1}, "patience", "-1"),
    ("plateau", {"cooldown": 0.5}, "cooldown", "0.5"),
    ("plateau", {"min_factor": -0.1}, "min_factor", "-0.1"),
    ("plateau", {"threshold": 1.0}, "threshold", "1.0"),
]


def test_every_schedule_with_params_has_bad_cases():
    assert {case[0] for case in BAD} == {name for name, spec in SCHEDULES.items() if spec.defaults}


@pytest.mark.parametrize(("name", "params", "param", "value"), BAD, ids=[f"{c[0]}-{c[1]}" for c in BAD])
def test_invalid_params_raise_naming_param_and_value(name, params, param, value):
    with pytest.raises(ValueError, match=rf"{param}.*{value}"):
        build_schedule(name, 100, params)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_param_names_the_key_and_the_valid_ones(name):
    with pytest.raises(
        ValueError, match=r"'lr_max'.*valid parameters: " + (", ".join(SCHEDULES[name].defaults) or "none")
    ):
        build_schedule(name, 100, {"lr_max": 1})


def test_unknown_schedule_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="cosine, cosine_restarts, cyclic"):
        build_schedule("cosin", 100)


@pytest.mark.parametrize("total", (0, -5, 2.5, True))
def test_total_steps_must_be_a_positive_int(total):
    with pytest.raises(ValueError, match=f"total_steps.*{total}"):
        build_schedule("cosine", total)


def test_params_merge_over_defaults():
    assert schedule_params("step", {"gamma": 0.5}) == {"gamma": 0.5, "step_size": 0.4}
    with pytest.raises(TypeError):
        SCHEDULES["step"].defaults["gamma"] = 0.2  # type: ignore[index]


# --------------------------------------------------------------------------- noise and imports


def test_noisy_linear_cosine_is_seeded():
    def values(seed):
        schedule = build_schedule("noisy_linear_cosine", 300, {"seed": seed, "initial_variance": 0.01})
        return [schedule(t) for t in range(300)]

    plain = build_schedule("linear_cosine", 300)
    assert values(3) == values(3)
    assert values(3) != values(4)
    assert values(3) != [plain(t) for t in range(300)]


def test_module_does_not_import_torch():
    code = "import sys, tuner.schedules; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
