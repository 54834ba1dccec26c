"""A recipe's LR schedule as plain Python source: the closed form `tuner export --format python` writes.

``SCHEDULE_CODE`` holds, for every schedule of ``tuner.schedules.SCHEDULES`` but the metric-driven plateau, the body of
``schedule_multiplier(t, total)`` -- the multiplier of the peak LR at step ``t`` of the ``total`` steps that follow
the warmup, the formula of ``tuner/schedules.py`` written out with the same operations -- and the duration helpers it
calls. The schedule's parameters (the recipe's, merged over the defaults) become local names in front of the body.
``schedule_source(recipe)`` joins that with the recipe's warmup into ``lr_multiplier(step, total_steps)``: a function
of the step and of the run's length, so the snippet is right for any dataset size or epoch count.

tests/reports/test_export.py holds every entry equal to tuner's schedule at every step of two run lengths (1e-12,
warmups included); a schedule added to the catalog without an entry here fails that test.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tuner.recipe import Recipe
from tuner.schedules import EXPONENTIAL_WARMUP_START, SCHEDULES, schedule_params


@dataclass(frozen=True)
class ScheduleCode:
    """The body of ``schedule_multiplier(t, total)`` and the helpers (``HELPERS`` keys) and modules it uses."""

    body: str
    helpers: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()


HELPERS: Mapping[str, str] = {
    "steps_of": '''
def steps_of(value, total):
    """A duration in optimizer steps: an int is a number of steps, a float < 1 a fraction of `total`."""
    if isinstance(value, float) and value < 1:
        return int(round(value * total))
    return int(value)
''',
    "at_least_one_step": '''
def at_least_one_step(value, total):
    """`steps_of`, where a positive fraction gives at least one step."""
    steps = steps_of(value, total)
    return max(steps, 1) if isinstance(value, float) and 0 < value < 1 else steps
''',
    "decay_span": '''
def decay_span(value, total):
    """A decay's length in steps: None is the whole schedule, which ends at its last step (total - 1)."""
    return max(total - 1, 1) if value is None else at_least_one_step(value, total)
''',
}
HELPER_NEEDS: Mapping[str, tuple[str, ...]] = {
    "at_least_one_step": ("steps_of",),
    "decay_span": ("at_least_one_step", "steps_of"),
}

_DECAY_POWER = """
length = decay_span(decay_steps, total)
p = float(t // length) if staircase else t / length
"""

_LINEAR_COSINE = """
span = decay_span(decay_steps, total)
s = min(t, span)
linear = (span - s) / span
cosine = 0.5 * (1.0 + math.cos(math.pi * 2.0 * num_periods * s / span))
"""

SCHEDULE_CODE: Mapping[str, ScheduleCode] = {
    "constant": ScheduleCode("return 1.0"),
    "step": ScheduleCode("return gamma ** (t // at_least_one_step(step_size, total))", ("at_least_one_step",)),
    "multistep": ScheduleCode(
        """
marks = sorted(at_least_one_step(m, total) for m in milestones)
return gamma ** bisect.bisect_right(marks, t)
""",
        ("at_least_one_step",),
        ("bisect",),
    ),
    "exponential": ScheduleCode(_DECAY_POWER + "return gamma ** p", ("decay_span",)),
    "natural_exp": ScheduleCode(_DECAY_POWER + "return math.exp(-decay_rate * p)", ("decay_span",), ("math",)),
    "inverse_time": ScheduleCode(_DECAY_POWER + "return 1.0 / (1.0 + decay_rate * p)", ("decay_span",)),
    "polynomial": ScheduleCode(
        """
span = decay_span(decay_steps, total)
length = span * max(1, math.ceil(t / span)) if cycle else span
fraction = min(t, length) / length
return (1.0 - end_factor) * (1.0 - fraction) ** power + end_factor
""",
        ("decay_span",),
        ("math",),
    ),
    "linear": ScheduleCode(
        """
span = decay_span(total_iters, total)
return start_factor + (end_factor - start_factor) * min(t, span) / span
""",
        ("decay_span",),
    ),
    "cosine": ScheduleCode(
        """
span = max(total - 1, 1)
return min_factor + (1.0 - min_factor) * (1.0 + math.cos(math.pi * min(t, span) / span)) / 2.0
""",
        (),
        ("math",),
    ),
    "cosine_restarts": ScheduleCode(
        """
period = at_least_one_step(T_0, total)
if T_mult == 1:
    cycle, t_cur = divmod(t, period)
    length = period
else:
    cycle, start, length = 0, 0, period
    while t >= start + length:
        start, length, cycle = start + length, length * T_mult, cycle + 1
    t_cur = t - start
return min_factor + (decay**cycle - min_factor) * (1.0 + math.cos(math.pi * t_cur / length)) / 2.0
""",
        ("at_least_one_step",),
        ("math",),
    ),
    "linear_cosine": ScheduleCode(
        _LINEAR_COSINE + "return (alpha + linear) * cosine + beta", ("decay_span",), ("math",)
    ),
    "noisy_linear_cosine": ScheduleCode(
        _LINEAR_COSINE
        + """
std = math.sqrt(initial_variance / (1.0 + s) ** variance_decay)
noise = random.Random(f"{seed}:{t}").gauss(0.0, std)
return max(0.0, (alpha + linear + noise) * cosine + beta)
""",
        ("decay_span",),
        ("math", "random"),
    ),
    "one_cycle": ScheduleCode(
        """
initial = 1.0 / div_factor
floor = initial / final_div_factor
up = float(pct_start * total) - 1
if three_phase:
    phases = ((up, initial, 1.0), (float(2 * pct_start * total) - 2, 1.0, initial), (total - 1, initial, floor))
else:
    phases = ((up, initial, 1.0), (total - 1, 1.0, floor))

def curve(start, end, pct):
    if anneal == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start

t = min(t, total - 1)
begin = 0.0
for end, low, high in phases[:-1]:
    if t <= end:
        return curve(low, high, (t - begin) / (end - begin))
    begin = end
end, low, high = phases[-1]
return curve(low, high, (t - begin) / (end - begin))
""",
        (),
        ("math",),
    ),
    "cyclic": ScheduleCode(
        """
up = at_least_one_step(step_size_up, total)
down = up if step_size_down is None else at_least_one_step(step_size_down, total)
size = float(up + down)
ratio = up / size
cycle = math.floor(1 + t / size)
x = 1.0 + t / size - cycle
height = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
if mode == "triangular":
    scale = 1.0
elif mode == "triangular2":
    scale = 1 / (2.0 ** (cycle - 1))
else:  # exp_range
    scale = gamma**t
return base_factor + (1.0 - base_factor) * height * scale
""",
        ("at_least_one_step",),
        ("math",),
    ),
    "piecewise": ScheduleCode(
        """
steps, values = [0], [1.0]
for index, (at, value) in enumerate(points):
    at = steps_of(at, total)
    if index == 0 and at == 0:
        steps, values = [], []
    steps.append(at)
    values.append(value)
index = bisect.bisect_right(steps, t)
if interpolation == "constant":
    return values[index - 1]
if index == len(steps):
    return values[-1]
(s0, v0), (s1, v1) = (steps[index - 1], values[index - 1]), (steps[index], values[index])
return v0 + (v1 - v0) * (t - s0) / (s1 - s0)
""",
        ("steps_of",),
        ("bisect",),
    ),
}
"""Per schedule: the closed form written out (the plateau, metric-driven, is exported as torch's scheduler)."""

WARMUP_RAMPS: Mapping[str, str] = {
    "linear": "u",
    "exponential": f"{EXPONENTIAL_WARMUP_START!r} ** (1.0 - u)",
}
"""The warmup shapes of ``tuner.schedules.WARMUPS`` as expressions of ``u = (step + 1) / (warmup_steps + 1)``."""


@dataclass(frozen=True)
class Source:
    """Python source and the modules it imports."""

    code: str
    imports: tuple[str, ...]


def warmup_source(recipe: Recipe) -> Source:
    """``WARMUP``, ``warmup_steps(total_steps)`` and ``warmup_ramp(step, warm)`` of the recipe's warmup."""
    code = f'''
WARMUP = {recipe.warmup!r}  # the recipe's warmup: an int number of steps, or a fraction (< 1) of total_steps


{HELPERS["steps_of"].strip()}


def warmup_steps(total_steps):
    """The warmup's length in optimizer steps for a run of `total_steps` steps."""
    return steps_of(WARMUP, total_steps)


def warmup_ramp(step, warm):
    """The {recipe.warmup_kind} warmup's share of the schedule's first value at step `step` < `warm`."""
    u = (step + 1) / (warm + 1)
    return {WARMUP_RAMPS[recipe.warmup_kind]}
'''
    return Source(code.strip("\n"), ())


def schedule_source(recipe: Recipe) -> Source:
    """``warmup_source`` plus ``schedule_multiplier(t, total)`` and ``lr_multiplier(step, total_steps)`` of the
    recipe's schedule (not plateau: ``SCHEDULE_CODE``)."""
    entry = SCHEDULE_CODE[recipe.schedule]
    params = schedule_params(recipe.schedule, recipe.schedule_params)
    helpers = [name for name in HELPERS if name != "steps_of" and name in _needed(entry.helpers)]
    bound = [f"    {name} = {value!r}" for name, value in params.items()]
    description = textwrap.fill(
        f"{recipe.schedule}: {SCHEDULES[recipe.schedule].description}.", 112, subsequent_indent="    "
    )
    code = "\n\n\n".join(
        [
            warmup_source(recipe).code,
            *(HELPERS[name].strip() for name in helpers),
            f'''def schedule_multiplier(t, total):
    """{description}

    Step `t` of the `total` steps after the warmup (tuner/schedules.py's formula, the recipe's parameters).
    """
{chr(10).join(bound)}
{_indent(entry.body)}''',
            '''def lr_multiplier(step, total_steps):
    """The multiplier of PEAK_LR at optimizer step `step` (from 0) of a run of `total_steps` optimizer steps: the
    warmup ramps towards the schedule's first value, then the schedule runs over the steps after it."""
    warm = warmup_steps(total_steps)
    if step < warm:
        return warmup_ramp(step, warm) * schedule_multiplier(0, total_steps - warm)
    return schedule_multiplier(step - warm, total_steps - warm)''',
        ]
    )
    return Source(code, entry.imports)


def _needed(names: tuple[str, ...]) -> set[str]:
    return {*names, *(need for name in names for need in HELPER_NEEDS.get(name, ()))}


def _indent(body: str) -> str:
    return "\n".join(f"    {line}" if line else "" for line in body.strip("\n").splitlines())


def plateau_params(recipe: Recipe) -> dict[str, Any]:
    """The plateau schedule's parameters (the recipe's over the defaults)."""
    return schedule_params("plateau", recipe.schedule_params)
