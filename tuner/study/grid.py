"""The grid sampler: one sub-grid per branch of the conditional space, each point run once.

A branch is one (optimizer, schedule) pair -- with a ``switch`` space, one (optimizer, schedule, switch target or
none) triple. Its sub-grid spans only the parameters a trial of that branch suggests: the optimizer's own (its LR at
``lr_points`` values, every other range at ``points``), the schedule's, the shared dimensions (a list of choices
gives each choice) and the switch's. Two points that make the same effective recipe (a warmup kind without warmup, a
weight-decay mode without weight decay) are one point. The grid is the union of the sub-grids: its size is known
before the run, and ``tuner run`` refuses a grid larger than ``n_trials`` unless ``--allow-partial-grid``.

How it runs, with Optuna's public API only: ``tuner run`` enqueues the points (``study.enqueue_trial``, in an order
shuffled by the study's seed, so that a partial grid is a random subset), each with its key as the trial's user
attribute ``grid_point``. Every parameter a grid trial suggests is fixed by its point, so ``GridQueueSampler`` never
samples. Workers pop the queue (a waiting trial goes to exactly one of them) and stop when it is empty: inside
``grid_trials_only`` the study's storage refuses to create a trial that is not from the queue
(``tuner.study.storage.QueueEmpty``), so no worker ever runs a point twice or an extra trial. A resumed study
enqueues the points no trial has taken yet (an interrupted trial's point is run again).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import TunerError
from tuner.space import Beta, Dimension, optuna_param_names
from tuner.spec import NamedOptions
from tuner.study.keys import StudyKeys, TrialKeys
from tuner.study.search import EntrySpace, SearchSpace
from tuner.study.storage import only_queued_trials

DEFAULT_POINTS = 3
"""Grid values of each range (``sampler.options.points``)."""

DEFAULT_LR_POINTS = 5
"""Grid values of each LR range (``sampler.options.lr_points``)."""

MAX_GRID_POINTS = 100_000
"""A grid larger than this is refused before it is counted point by point."""

GRID_OPTIONS = ("points", "lr_points")


@dataclass(frozen=True)
class Grid:
    """The points of a grid study, in a fixed order: each point's Optuna parameters and its key.

    ``branches`` is (label, points) per branch, ``duplicates`` the points dropped as the same effective recipe as an
    earlier one.
    """

    points: tuple[Mapping[str, Any], ...]
    keys: tuple[str, ...]
    branches: tuple[tuple[str, int], ...]
    points_per_range: int
    lr_points: int
    duplicates: int = 0

    @property
    def size(self) -> int:
        """How many points the grid has."""
        return len(self.points)

    def describe(self) -> str:
        """One line: the size and how it was made (what ``tuner run`` prints first)."""
        dropped = f"; {self.duplicates} duplicate recipes dropped" if self.duplicates else ""
        return (
            f"grid: {self.size} points over {len(self.branches)} branches (optimizer x schedule), "
            f"{self.points_per_range} values a range, {self.lr_points} LR values{dropped}"
        )


def grid_options(options: Mapping[str, Any]) -> tuple[int, int]:
    """(points, lr_points) of ``sampler.options``; anything else, or a count below 1, is a ``ValueError``."""
    unknown = sorted(set(options) - set(GRID_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; valid options: {', '.join(GRID_OPTIONS)}")
    counts = []
    for name, default in (("points", DEFAULT_POINTS), ("lr_points", DEFAULT_LR_POINTS)):
        value = options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}")
        counts.append(value)
    return counts[0], counts[1]


def build_grid(space: SearchSpace, points: int = DEFAULT_POINTS, lr_points: int = DEFAULT_LR_POINTS) -> Grid:
    """The grid of ``space``: every branch's sub-grid, duplicates of an effective recipe dropped (the first kept)."""
    branches = [(label, axes) for label, axes in _branches(space, points, lr_points)]
    total = sum(math.prod(len(values) for _, values in axes) for _, axes in branches)
    if total > MAX_GRID_POINTS:
        raise TunerError(
            f"the grid would have {total} points (more than {MAX_GRID_POINTS}); lower "
            f"sampler.options.points ({points}) or lr_points ({lr_points}), or search fewer parameters"
        )
    found: list[Mapping[str, Any]] = []
    keys: list[str] = []
    counts: list[tuple[str, int]] = []
    seen: set[str] = set()
    for label, axes in branches:
        names = [name for name, _ in axes]
        count = 0
        for values in itertools.product(*(values for _, values in axes)):
            params = dict(zip(names, values))
            recipe = effective_recipe(space, params)
            if recipe in seen:
                continue
            seen.add(recipe)
            found.append(params)
            keys.append(point_key(params))
            count += 1
        counts.append((label, count))
    return Grid(tuple(found), tuple(keys), tuple(counts), points, lr_points, total - len(found))


def _branches(space: SearchSpace, points: int, lr_points: int) -> Iterator[tuple[str, list[tuple[str, list[Any]]]]]:
    """(label, axes) of every branch: each axis is (Optuna parameter name, its grid values)."""
    switch = space.switch
    switch_options: list[Optional[str]] = [None]
    if switch is not None:
        switch_options = [*(["none"] if switch.optional else []), *switch.targets]
    for optimizer, entry in space.optimizers.items():
        for schedule, schedule_entry in space.schedules.items():
            for target in switch_options:
                axes: list[tuple[str, list[Any]]] = []
                if len(space.optimizers) > 1:
                    axes.append(("optimizer", [optimizer]))
                axes += _entry_axes(entry, points, lr_points)
                if len(space.schedules) > 1:
                    axes.append(("schedule", [schedule]))
                axes += _entry_axes(schedule_entry, points, points)
                for name, dim in space.shared.items():
                    axes += _axes(dim, name, points)
                label = f"{optimizer} x {schedule}"
                if switch is not None and target is not None:
                    if len(switch_options) > 1:
                        axes.append(("switch", [target]))
                    if target != "none":
                        axes += _axes(switch.at_fraction, "switch.at_fraction", points)
                        axes += _axes(switch.targets[target], f"switch.{target}.lr", lr_points)
                        label += f" -> {target}"
                yield label, axes


def _entry_axes(entry: EntrySpace, points: int, lr_points: int) -> list[tuple[str, list[Any]]]:
    axes: list[tuple[str, list[Any]]] = []
    for param, dim in entry.params.items():
        axes += _axes(dim, f"{entry.name}.{param}", lr_points if param == "lr" else points)
    return axes


def _axes(dim: Dimension, name: str, points: int) -> list[tuple[str, list[Any]]]:
    """The Optuna parameters a dimension suggests under ``name`` (none when fixed), with their grid values."""
    values = dim.optuna_grid(points) if isinstance(dim, Beta) else dim.grid(points)
    return [(optuna_name, _distinct(values)) for optuna_name in optuna_param_names(dim, name)]


def _distinct(values: Sequence[Any]) -> list[Any]:
    kept: dict[str, Any] = {}
    for value in values:
        kept.setdefault(json.dumps(value, sort_keys=True), value)
    return list(kept.values())


class _PointTrial:
    """A trial whose every suggestion is read from one grid point (``SearchSpace.sample`` draws the point's recipe)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params
        self.used: set[str] = set()

    def _take(self, name: str) -> Any:
        if name not in self.params:
            raise AssertionError(f"grid point {dict(self.params)} lacks the parameter {name!r} a trial suggests")
        self.used.add(name)
        return self.params[name]

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self._take(name)

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return self._take(name)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._take(name)


def effective_recipe(space: SearchSpace, params: Mapping[str, Any]) -> str:
    """The recipe a trial with ``params`` trains with, as a canonical string: settings that change nothing (the
    warmup kind without warmup, the weight-decay mode without weight decay) at one value."""
    trial = _PointTrial(params)
    recipe = space.sample(trial)
    unused = set(params) - trial.used
    if unused:
        raise AssertionError(f"grid point {dict(params)} sets parameters no trial suggests: {sorted(unused)}")
    data = recipe.to_dict()
    if not recipe.warmup:
        data["warmup"], data["warmup_kind"] = 0, "linear"
    if not recipe.weight_decay:
        data["weight_decay"], data["weight_decay_mode"] = 0.0, "coupled"
    return json.dumps(data, sort_keys=True, default=str)


def point_key(params: Mapping[str, Any]) -> str:
    """A short stable key of a grid point (its trial's user attribute ``grid_point``)."""
    return hashlib.sha256(json.dumps(dict(params), sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- running a grid --------------------------------------------------------------------------------------------------


class GridQueueSampler(optuna.samplers.BaseSampler):
    """The sampler of a grid study: it never samples -- every parameter of a queued trial is fixed by the point it was
    enqueued with (``enqueue_grid``; a retry of a queued trial has its parameters too). Asked to sample, it knows the
    queue was empty (the storage could not refuse the trial: not a ``TunerStorage``): that trial fails, and the
    sampler stops the study as Optuna's own grid sampler does when its grid is done.

    Args:
        space: the study's search space; ``grid`` is built from it at once (bad options fail here).
        points: grid values of each range; lr_points: of each LR range.
        seed: unused (the order of the points comes from the study's seed when they are enqueued).
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        points: int = DEFAULT_POINTS,
        lr_points: int = DEFAULT_LR_POINTS,
        seed: Optional[int] = None,
    ) -> None:
        points, lr_points = grid_options({"points": points, "lr_points": lr_points})
        self.grid = build_grid(space, points, lr_points)
        self.exhausted = False  # set when asked to sample: a trial came from no queued point

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        self.exhausted = True
        if TrialKeys.GRID_POINT in trial.user_attrs:
            raise TunerError(
                f"grid point of trial {trial.number} does not fix {param_name!r}: it was queued for another space "
                f"(the study file changed); run the changed file as a new study"
            )
        raise TunerError(f"trial {trial.number} is no grid point: every point of the grid is taken")

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Optional[Sequence[float]]
    ) -> None:
        if self.exhausted:
            study.stop()


def is_grid(sampler: NamedOptions) -> bool:
    """Whether a study's sampler is the grid."""
    return sampler.name == "grid"


def grid_of(space: SearchSpace, sampler: NamedOptions) -> Optional[Grid]:
    """The grid of a grid study (None for any other sampler)."""
    return build_grid(space, *grid_options(sampler.options)) if is_grid(sampler) else None


def check_grid_run(grid: Optional[Grid], n_trials: int, allow_partial: bool, warm_start: Optional[str]) -> None:
    """A ``TunerError`` when a grid study's run cannot do what it says: a grid larger than ``n_trials`` (unless
    ``allow_partial``), or a warm start (its recipes are no grid points)."""
    if grid is None:
        return
    if warm_start:
        raise TunerError(
            f"--warm-start {warm_start}: a grid study runs its own {grid.size} points, not another study's recipes; "
            "drop --warm-start (or use a sampler that learns, e.g. tpe)"
        )
    if grid.size > n_trials and not allow_partial:
        raise TunerError(
            f"sampler: the grid has {grid.size} points, more than n_trials ({n_trials}): raise budget.n_trials "
            f"(or --n-trials) to {grid.size}, lower sampler.options.points ({grid.points_per_range}) or lr_points "
            f"({grid.lr_points}), or pass --allow-partial-grid to run a random {n_trials} of them"
        )


def enqueue_grid(
    study: optuna.Study,
    space: SearchSpace,
    sampler: NamedOptions,
    seed: int,
    n_trials: int,
    say: Callable[[str], None] = lambda message: None,
) -> int:
    """Enqueue the grid points no trial of ``study`` has taken, in the order shuffled by ``seed``, as many as the
    study needs to hold ``n_trials`` finished trials; returns how many were enqueued.

    A point is taken by a trial that is waiting, running, finished, or failed for any reason but ``interrupted``
    (a lost worker's trial is retried by the storage itself). Waiting points of another grid (the study file's space
    or grid options changed) are a ``TunerError``: they would run recipes of the old space.
    """
    grid = build_grid(space, *grid_options(sampler.options))
    trials = study.get_trials(deepcopy=False)
    current = set(grid.keys)
    stale = [t.number for t in trials if t.state == TrialState.WAITING and _point(t) not in (None, *current)]
    if stale:
        raise TunerError(
            f"study {study.study_name!r} holds {len(stale)} queued points of another grid (trials {stale[:5]}...): "
            f"its space or sampler.options changed since they were queued; run the changed file as a new study "
            f"(another name), or restore the old one"
        )
    taken = {_point(t) for t in trials if _point(t) is not None}  # an interrupted point's retry carries its key
    pending = sum(1 for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING))
    finished = sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    order = list(range(grid.size))
    random.Random(seed).shuffle(order)
    untaken = [index for index in order if grid.keys[index] not in taken]
    chosen = untaken[: max(0, n_trials - finished - pending)]
    for index in chosen:
        study.enqueue_trial(dict(grid.points[index]), user_attrs={TrialKeys.GRID_POINT: grid.keys[index]})
    study.set_user_attr(
        StudyKeys.GRID, {"size": grid.size, "points": grid.points_per_range, "lr_points": grid.lr_points}
    )
    if taken:
        say(f"grid: {len(taken & current)} of {grid.size} points taken before; {len(chosen)} queued now")
    return len(chosen)


def _point(trial: FrozenTrial) -> Optional[str]:
    return trial.user_attrs.get(TrialKeys.GRID_POINT)


@contextlib.contextmanager
def grid_trials_only(study: optuna.Study, sampler: NamedOptions) -> Iterator[None]:
    """While inside, a grid study runs only its queued points: asking for a trial when none is queued raises
    ``QueueEmpty`` instead of creating one (other studies: no effect)."""
    if not is_grid(sampler):
        yield
        return
    with only_queued_trials(study):
        yield
