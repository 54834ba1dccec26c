"""``check_study``: every setting of a study that would fail its trials, refused before the first one.

``prepare`` calls it once the task, the search space and the budget are known; a problem is a ``TunerError`` naming
the field and the value. Each check runs the code trials run -- at the ends (and the middle) of the space's ranges,
for the shortest and the longest run -- so that what passes here does not fail there:

* the run's length: optimizer steps a trial for each batch size of the space, planned as the trainer plans them
  (``plan_batches``) from the task's training-set size, or its train loader's ``len()``, the budget's epochs or
  steps and ``accumulate``;
* the shared dimensions: every value makes a valid recipe (weight decay >= 0, clipping > 0, batch size >= 1);
* every optimizer of the space and every switch target: lbfgs (``full_batch_only``) only with ``batch_size: null``;
  built with ``build_optimizer`` on the task's model (built once) at the ends of its ranges -- muon needs 2-D weight
  matrices, sparse_adam a sparse embedding, every hyperparameter value must be valid;
* the warmup: a whole number of steps or a fraction < 1 (``resolve_duration``, as ``tuner schedules values``), and
  shorter than the shortest run;
* every schedule with every warmup of the space, built as the trainer builds it (``recipe_schedule``) for the
  shortest and the longest run: one_cycle's ``pct_start * total_steps > 1`` ...;
* the pruner: option ranges Optuna trips on only later (Hyperband's ``min_resource <= max_resource``,
  ``reduction_factor >= 2``), a first decision past the longest run; then it decides on made-up trials in memory;
* the sampler: built, then it samples the space for a few made-up trials in memory, past its startup trials; the
  grid sampler builds its grid (``tuner.study.grid``).

For a ``train:`` or ``command:`` study the run's length is the user's code's: values are checked, lengths are not.
"""

from __future__ import annotations

import inspect
import itertools
import math
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import optuna

from tuner.errors import TunerError
from tuner.optim import OPTIMIZERS
from tuner.optim.build import build_optimizer, resolve_params
from tuner.recipe import Recipe, Switch
from tuner.schedules import recipe_schedule
from tuner.space import Choice, Dimension, Fixed, Float, Int
from tuner.spec import StudySpec
from tuner.study.grid import Grid, GridQueueSampler
from tuner.study.search import EntrySpace, SearchSpace
from tuner.study.tables import PERCENTILE_RULES, make_pruner, make_sampler
from tuner.tasks import Task, loaders_of
from tuner.train import TrainBudget
from tuner.train.data import length
from tuner.train.progress import plan_batches

MAX_PROBES = 256
"""At most this many combinations of an entry's values are built; past it, one parameter at a time is moved."""

NOMINAL_STEPS = 1_000_000
"""The run length values are checked with when the user's own code decides it (``train:``, ``command:``)."""

SAMPLER_PROBE_TRIALS = 5
"""Made-up trials a sampler samples in memory (its startup trials lowered to 2 when it has them)."""


@dataclass(frozen=True)
class RunLength:
    """How long one trial trains with ``batch_size``: ``steps`` optimizer steps (``per_epoch`` an epoch)."""

    batch_size: Optional[int]
    steps: int
    per_epoch: Optional[int] = None
    basis: str = ""  # how it was planned: "1437 training examples, 10 epochs", "budget.steps 200"


@dataclass(frozen=True)
class StudyPlan:
    """What the checks found out: the run's length per batch size (empty: the user's code decides it), how it was
    computed, and the grid of a grid study."""

    lengths: tuple[RunLength, ...] = ()
    basis: str = ""
    grid: Optional[Grid] = None

    @property
    def shortest(self) -> Optional[RunLength]:
        """The shortest run (None: unknown)."""
        return min(self.lengths, key=lambda run: run.steps) if self.lengths else None

    @property
    def longest(self) -> Optional[RunLength]:
        """The longest run (None: unknown)."""
        return max(self.lengths, key=lambda run: run.steps) if self.lengths else None


def check_study(spec: StudySpec, task: Optional[Task], space: SearchSpace, budget: TrainBudget) -> StudyPlan:
    """Every check of the module docstring, in order; returns the plan. Raises ``TunerError``."""
    lengths, basis = run_lengths(task, space, budget) if task is not None else ((), "")
    runs = _distinct_runs(lengths) or [RunLength(None, NOMINAL_STEPS)]
    check_shared(space)
    check_optimizers(task, space, runs, spec.space.batch_size is None)
    check_warmup(space, runs)
    check_schedules(space, runs)
    check_pruner(spec, lengths)
    grid = check_sampler(spec, space)
    return StudyPlan(tuple(lengths), basis, grid)


# -- the run's length ------------------------------------------------------------------------------------------------


def batch_sizes(dimension: Dimension) -> list[Optional[int]]:
    """The batch sizes a trial may train with, as probed: every choice, a range's ends and middle."""
    values = dimension.grid(3) if isinstance(dimension, (Int, Float)) else _values(dimension)
    return [None if value is None else int(value) for value in dict.fromkeys(values)]


def run_lengths(task: Task, space: SearchSpace, budget: TrainBudget) -> tuple[list[RunLength], str]:
    """(a ``RunLength`` per batch size of the space, how they were computed), as the trainer plans its runs."""
    sizes = batch_sizes(space.shared["batch_size"])
    accumulate = f", {budget.accumulate} micro-batches a step" if budget.accumulate > 1 else ""
    if budget.steps is not None:
        basis = f"budget.steps {budget.steps}"
        return [RunLength(size, budget.steps, None, basis) for size in sizes], basis
    loaders = loaders_of(task)
    if loaders is None:
        n_train = task.load_data().n_train
        batches: dict[Optional[int], Optional[int]] = {
            size: 1 if size is None else math.ceil(n_train / size) for size in sizes
        }
        basis = f"{n_train} training examples, {budget.epochs} epochs{accumulate}"
    else:
        batches = {size: _loader_length(loaders.train, size) for size in sizes}
        basis = f"len(train_loader) batches an epoch, {budget.epochs} epochs{accumulate}"
    lengths = []
    for size, count in batches.items():
        per_epoch, total, _ = plan_batches(count, budget)
        lengths.append(RunLength(size, total, per_epoch, basis))
    return lengths, basis


def _loader_length(factory: Callable[[Optional[int], int], Any], batch_size: Optional[int]) -> Optional[int]:
    try:
        loader = factory(batch_size, 0)
    except Exception as error:  # the user's code may raise anything
        raise TunerError(
            f"the task's train_loader(batch_size={batch_size}, seed=0) raised {type(error).__name__}: {error}"
        ) from None
    return length(loader)


def _distinct_runs(lengths: Sequence[RunLength]) -> list[RunLength]:
    """The shortest and the longest run (one when they are as long)."""
    if not lengths:
        return []
    shortest = min(lengths, key=lambda run: run.steps)
    longest = max(lengths, key=lambda run: run.steps)
    return [shortest] if shortest.steps == longest.steps else [shortest, longest]


def _run_words(run: RunLength) -> str:
    if not run.basis:
        return f"checked for a run of {run.steps} steps: your code decides the run's length"
    size = "a full batch" if run.batch_size is None else f"batch_size {run.batch_size}"
    return f"a trial with {size} runs {run.steps} optimizer steps: {run.basis}"


# -- shared dimensions and optimizers --------------------------------------------------------------------------------

SHARED_VALUES = ("batch_size", "weight_decay", "weight_decay_mode", "clip_norm", "clip_value")
"""Shared dimensions whose every probed value a recipe must accept (warmup: ``check_warmup``)."""


def check_shared(space: SearchSpace) -> None:
    """Every probed value of the shared dimensions makes a valid recipe (weight decay >= 0, clipping > 0 ...)."""
    for name in SHARED_VALUES:
        for value in _values(space.shared[name]):
            _try(f"space.{name}", {}, partial(Recipe, optimizer="sgd", lr=1.0, **{name: value}))


def check_optimizers(task: Optional[Task], space: SearchSpace, runs: list[RunLength], default_batch: bool) -> None:
    """lbfgs only with full batches; every optimizer and switch target built at its ranges' ends (on the task's model;
    without a task, its hyperparameter values checked)."""
    targets = dict(space.switch.targets) if space.switch is not None else {}
    sizes = batch_sizes(space.shared["batch_size"])
    for name in [*space.optimizers, *targets]:
        mini = [size for size in sizes if size is not None]
        if OPTIMIZERS[name].full_batch_only and mini:
            where = "space.switch.to" if name not in space.optimizers else f"space.optimizers.{name}"
            source = "the task's default batch size" if default_batch else "space.batch_size"
            raise TunerError(
                f"{where}: {name} needs full-batch training, but trials would train on mini-batches of "
                f"{', '.join(map(str, mini))} ({source}); set space.batch_size: [null] (the whole training set a "
                f"step), or drop {name}"
            )
    model = _build_model(task) if task is not None else None
    shared = {key: _values(space.shared[key]) for key in ("weight_decay", "weight_decay_mode")}
    steps = runs[0].steps
    for name, entry in space.optimizers.items():
        for probe in probes({**_entry_values(entry), **shared}):
            _try(f"space.optimizers.{name}", probe, partial(_build, model, _optimizer_recipe, name, probe, steps))
    if space.switch is None:
        return
    for name, lr in targets.items():
        for probe in probes({"lr": _values(lr), "at_fraction": _values(space.switch.at_fraction)}):
            _try(f"space.switch.to: {name}", probe, partial(_build, model, _switch_recipe, name, probe, steps))


def _optimizer_recipe(name: str, probe: Mapping[str, Any]) -> Recipe:
    params = {key: value for key, value in probe.items() if key not in ("lr", "weight_decay", "weight_decay_mode")}
    return Recipe(
        optimizer=name,
        lr=probe["lr"],
        optimizer_params=params,
        weight_decay=probe["weight_decay"],
        weight_decay_mode=probe["weight_decay_mode"],
    )


def _switch_recipe(name: str, probe: Mapping[str, Any]) -> Recipe:
    """Any first optimizer (sgd) switching to ``name`` at the probe's fraction and LR."""
    return Recipe(
        optimizer="sgd", lr=0.1, switch=Switch(optimizer=name, at_fraction=probe["at_fraction"], lr=probe["lr"])
    )


def _build_model(task: Task) -> Any:
    """The task's model, built once (the global random state is left as it was)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        try:
            return task.build_model()
        except Exception as error:  # the user's code may raise anything
            raise TunerError(f"the task's build_model() raised {type(error).__name__}: {error}") from None


def _build(
    model: Any, make: Callable[[str, Mapping[str, Any]], Recipe], name: str, probe: Mapping[str, Any], steps: int
) -> None:
    """What a trial does with the recipe ``make(name, probe)``: build its optimizer on the model (without a model:
    resolve its values)."""
    recipe = make(name, probe)
    if model is None:
        resolve_params(OPTIMIZERS[recipe.optimizer], recipe.optimizer_params)
        if recipe.switch is not None:
            resolve_params(OPTIMIZERS[recipe.switch.optimizer], recipe.switch.optimizer_params)
        return
    build_optimizer(model, recipe, steps, full_batch=True)  # mini-batches met lbfgs above


# -- warmup and schedules --------------------------------------------------------------------------------------------


def check_warmup(space: SearchSpace, runs: list[RunLength]) -> None:
    """The warmup is a whole number of steps or a fraction < 1 (a float range lies in [0, 1)), shorter than every
    run: checked by building the constant schedule behind it, as a trial does."""
    dim = space.shared["warmup"]
    if isinstance(dim, Float) and dim.high >= 1:
        raise TunerError(
            f"space.warmup: a float range is a fraction of the run and must lie in [0, 1), got "
            f"{{low: {dim.low}, high: {dim.high}}}; for a number of steps give integers"
        )
    for run in runs:
        for value in _values(dim):
            _try("space.warmup", {}, partial(_schedule, "constant", {"warmup": value}, run.steps), run)


def check_schedules(space: SearchSpace, runs: list[RunLength]) -> None:
    """Every schedule at its ranges' ends, with every warmup of the space, for the shortest and the longest run."""
    warmups = {"warmup": _values(space.shared["warmup"]), "warmup_kind": _values(space.shared["warmup_kind"])}
    for name, entry in space.schedules.items():
        for run in runs:
            for probe in probes({**_entry_values(entry), **warmups}):
                shown = {k: v for k, v in probe.items() if not (k.startswith("warmup") and not probe["warmup"])}
                _try(f"space.schedules.{name}", shown, partial(_schedule, name, probe, run.steps), run)


def _schedule(name: str, probe: Mapping[str, Any], steps: int) -> None:
    """Build schedule ``name`` with the probe's parameters and warmup for a run of ``steps``, as a trial does."""
    params = {key: value for key, value in probe.items() if key not in ("warmup", "warmup_kind")}
    recipe = Recipe(
        optimizer="sgd",
        lr=1.0,
        schedule=name,
        schedule_params=params,
        warmup=probe.get("warmup", 0),
        warmup_kind=probe.get("warmup_kind", "linear"),
    )
    recipe_schedule(recipe, steps)


# -- probing ---------------------------------------------------------------------------------------------------------


def _values(dim: Dimension) -> list[Any]:
    """The values a dimension is probed at: every choice, a range's ends and middle, the fixed value."""
    if isinstance(dim, Choice):
        return list(dim.options)
    if isinstance(dim, Fixed):
        return [dim.value]
    return list(dim.grid(3))


def _entry_values(entry: EntrySpace) -> dict[str, list[Any]]:
    return {param: _values(dim) for param, dim in entry.params.items()}


def probes(axes: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    """Combinations of the axes' values: all of them when there are at most ``MAX_PROBES``, else each value of each
    axis with the others at their first value, then every axis at its last."""
    names = list(axes)
    if math.prod(len(values) for values in axes.values()) <= MAX_PROBES:
        for combination in itertools.product(*axes.values()):
            yield dict(zip(names, combination))
        return
    base = {name: values[0] for name, values in axes.items()}
    for name, values in axes.items():
        for value in values:
            yield {**base, name: value}
    yield {name: values[-1] for name, values in axes.items()}


def _try(where: str, probe: Mapping[str, Any], build: Callable[[], Any], run: Optional[RunLength] = None) -> None:
    """Run ``build``; a failure is a ``TunerError`` naming ``where``, the values probed and the run."""
    try:
        build()
    except TunerError as error:  # what does not fit the task or its model, whatever the values
        raise TunerError(f"{where}: {error}" + (f" ({_run_words(run)})" if run else "")) from None
    except ValueError as error:  # a value of the space
        shown = ", ".join(f"{key}={value!r}" for key, value in probe.items())
        context = "; ".join(part for part in (f"with {shown}" if shown else "", _run_words(run) if run else "") if part)
        raise TunerError(f"{where}: {error}" + (f" ({context})" if context else "")) from None
    except Exception as error:  # an optimizer class that cannot be imported, a model it cannot take ...
        raise TunerError(f"{where}: cannot be built: {type(error).__name__}: {error}") from None


# -- pruner and sampler ----------------------------------------------------------------------------------------------


def check_pruner(spec: StudySpec, lengths: Sequence[RunLength]) -> None:
    """The pruner built, its option ranges, its first decision within the longest run; then it decides on made-up
    trials in memory (what it trips on only later fails here)."""
    name, options = spec.pruner.name, spec.pruner.options
    try:
        pruner = make_pruner(spec.pruner)
    except TunerError as error:
        raise TunerError(f"pruner: {error}") from None
    if name == "hyperband":
        factor = options.get("reduction_factor", 3)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 2:
            raise TunerError(f"pruner.options.reduction_factor: must be >= 2, got {factor!r}")
        low, high = options.get("min_resource", 1), options.get("max_resource", "auto")
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:
            raise TunerError(
                f"pruner.options: min_resource must be <= max_resource, got min_resource={low}, max_resource={high}"
            )
    longest = max((run.steps for run in lengths), default=None)
    key = "n_warmup_steps" if name in PERCENTILE_RULES else "min_resource"
    first = options.get(key)
    if longest is not None and isinstance(first, (int, float)) and first >= longest and name != "none":
        raise TunerError(
            f"pruner.options.{key}: {first} steps, but the longest trial runs {longest} optimizer steps: the pruner "
            f"could never stop a trial before its end; lower it (pruners count optimizer steps)"
        )
    _exercise(f"pruner {name!r} with options {dict(options)}", partial(_prune_made_up_trials, pruner, longest or 100))


def _prune_made_up_trials(pruner: optuna.pruners.BasePruner, steps: int) -> None:
    study = optuna.create_study(pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    reports = sorted({max(1, round(steps * k / 5)) for k in range(1, 6)})
    for number in range(4):
        trial = study.ask()
        pruned = False
        for step in reports:
            trial.report(float(number + step), step)
            if trial.should_prune():
                pruned = True
                break
        study.tell(trial, None if pruned else float(number), state=_pruned_or_complete(pruned))


def _pruned_or_complete(pruned: bool) -> optuna.trial.TrialState:
    return optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE


def check_sampler(spec: StudySpec, space: SearchSpace) -> Optional[Grid]:
    """The sampler built with its options (the grid sampler: its grid, returned); then, with its startup trials
    lowered, it samples the space for ``SAMPLER_PROBE_TRIALS`` made-up trials in memory."""
    try:
        sampler = make_sampler(spec.sampler, spec.seed, space)
    except TunerError as error:
        raise TunerError(f"sampler: {error}") from None
    if isinstance(sampler, GridQueueSampler):
        return sampler.grid
    options = dict(spec.sampler.options)
    given = options.get("n_startup_trials")
    if "n_startup_trials" in inspect.signature(type(sampler)).parameters and (
        given is None or (isinstance(given, int) and given > 2)
    ):
        sampler = make_sampler(
            spec.sampler.model_copy(update={"options": {**options, "n_startup_trials": 2}}), 0, space
        )
    _exercise(f"sampler {spec.sampler.name!r} with options {options}", partial(_sample_made_up_trials, sampler, space))
    return None


def _sample_made_up_trials(sampler: optuna.samplers.BaseSampler, space: SearchSpace) -> None:
    study = optuna.create_study(sampler=sampler)
    values = random.Random(0)
    for _ in range(SAMPLER_PROBE_TRIALS):
        trial = study.ask()
        space.sample(trial)
        study.tell(trial, values.random())


def _exercise(what: str, run: Callable[[], None]) -> None:
    """Run ``run`` on an in-memory study, Optuna quiet; any exception is a ``TunerError`` naming ``what``."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run()
    except Exception as error:
        raise TunerError(f"{what} fails on made-up trials: {type(error).__name__}: {error}") from None
    finally:
        optuna.logging.set_verbosity(verbosity)
