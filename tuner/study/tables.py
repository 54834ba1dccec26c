"""The sampler and pruner tables: the names a study file may use, and how each is built.

``SAMPLERS[name](seed, space, **options)`` and ``PRUNERS[name](**options)``; the grid is tuner's own
(``tuner.study.grid``: one sub-grid per optimizer x schedule branch, run from the study's queue). ``make_sampler``
and ``make_pruner`` build them; an unknown name (listing the valid ones) or bad options are a ``TunerError``.
``tuner.study.prepare`` builds both before anything is written (``tuner.study.checks``), so a bad sampler or pruner
never leaves an empty study behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import optuna

from tuner.errors import TunerError, lookup
from tuner.spec import NamedOptions, StudySpec
from tuner.study.grid import GridQueueSampler, grid_options
from tuner.study.search import SearchSpace

SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, space, **o: optuna.samplers.TPESampler(seed=seed, **{"multivariate": True, "group": True, **o}),
    "random": lambda seed, space, **o: optuna.samplers.RandomSampler(seed=seed, **o),
    "grid": lambda seed, space, **o: GridQueueSampler(space, seed=seed, **grid_kwargs(o)),
    "gp": lambda seed, space, **o: optuna.samplers.GPSampler(seed=seed, **o),
    "cmaes": lambda seed, space, **o: optuna.samplers.CmaEsSampler(seed=seed, **o),
    "qmc": lambda seed, space, **o: optuna.samplers.QMCSampler(seed=seed, **o),
}

MEDIAN_DEFAULTS = {"n_startup_trials": 2, "n_warmup_steps": 0}
"""The median rule's defaults (and the percentile rule's, its generalisation): prune from the third trial on, at any
evaluation. Optuna's 5 start-up trials spend 5 whole runs before anything is pruned. ``bench/efficiency.py``
(docs/benchmarks.md, "Efficiency"): random search's median final value reached with 1/1.70 of its compute with 2
against 1/1.62 with 5 (4 tasks x 5 seeds; better on digits-cnn, charlm and tabular-mlp, worse on the quadratic),
1/1.44 against 1/1.15 in the quick suite."""

PERCENTILE_RULES = ("median", "percentile")
"""Pruners that compare a trial with the completed trials at the same step, built with ``MEDIAN_DEFAULTS``."""

PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": lambda **o: optuna.pruners.MedianPruner(**{**MEDIAN_DEFAULTS, **o}),
    "percentile": lambda **o: optuna.pruners.PercentilePruner(**{**MEDIAN_DEFAULTS, **o}),
    "asha": lambda **o: optuna.pruners.SuccessiveHalvingPruner(**o),
    "hyperband": lambda **o: optuna.pruners.HyperbandPruner(**o),
    "none": lambda **o: optuna.pruners.NopPruner(),
}


def grid_kwargs(options: dict[str, Any]) -> dict[str, int]:
    """The grid sampler's options, checked (``points``, ``lr_points``; see ``tuner.study.grid``)."""
    points, lr_points = grid_options(options)
    return {"points": points, "lr_points": lr_points}


def make_sampler(spec: NamedOptions, seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The sampler ``spec`` names, seeded with ``seed``; bad options are a ``TunerError``."""
    factory = lookup(SAMPLERS, "sampler", spec.name)
    return _built("sampler", spec, lambda: factory(seed, space, **spec.options))


def make_pruner(spec: NamedOptions) -> optuna.pruners.BasePruner:
    """The pruner ``spec`` names; bad options are a ``TunerError``."""
    factory = lookup(PRUNERS, "pruner", spec.name)
    return _built("pruner", spec, lambda: factory(**spec.options))


def _built(kind: str, spec: NamedOptions, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except (TypeError, ValueError) as error:
        raise TunerError(f"{kind} {spec.name!r}: bad options {spec.options}: {error}") from None


STARTUP_SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
}
"""Samplers that draw their first trials at random (``n_startup_trials``) before their model takes over."""


def describe_search(
    spec: NamedOptions, pruner: NamedOptions, study: Optional[StudySpec] = None, population: int = 1
) -> str:
    """One line for the run's start: the sampler and its random start-up trials, the pruner and its warm-up (with
    ``strategy: pbt``: the populations and their exploit cadence instead of the pruner)."""
    parts = [f"sampler {spec.name}"]
    if study is not None and study.strategy == "pbt":
        settings = study.pbt_settings
        parts.append(
            f"population-based training: populations of {population}, the bottom {settings.quantile:g} copies the "
            f"top every {settings.interval} evaluation(s) and perturbs {', '.join(settings.perturb) or 'nothing'} "
            f"(no pruning)"
        )
        return "; ".join(parts)
    if spec.name in STARTUP_SAMPLERS:
        startup = spec.options.get("n_startup_trials", _default(STARTUP_SAMPLERS[spec.name], "n_startup_trials"))
        if startup:
            parts[0] += f" (its first {startup} trials are drawn at random)"
    if pruner.name == "none":
        parts.append("no pruning")
    elif pruner.name in PERCENTILE_RULES:
        options = {**MEDIAN_DEFAULTS, **pruner.options}
        kept = "" if pruner.name == "median" else f"a trial goes on in the best {options.get('percentile')}%; "
        parts.append(
            f"pruner {pruner.name} ({kept}none pruned before {options['n_startup_trials']} trials complete"
            + (f", nor before step {options['n_warmup_steps']})" if options["n_warmup_steps"] else ")")
        )
    else:
        parts.append(f"pruner {pruner.name}")
    return "; ".join(parts)


def _default(cls: type, name: str) -> Any:
    import inspect

    parameter = inspect.signature(cls).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default
