"""``strategy: pbt``: population-based training as a study. The exploit/explore run itself is tuner's trainer's
(``tuner.train.pbt``); here is what the study adds around it:

* ``check_pbt`` (from ``prepare``): what PBT needs of the study file, refused up front with the reason -- a task
  tuner trains, a population the vectorized pass can stack (no fallback to sequential training: members copy each
  other's rows), one optimizer and batch size, a held LR (schedule ``constant``, no warmup or switch) and the final
  evaluation as a trial's value;
* ``pbt_config``: the catalog's ranges of the study's space handed to the trainer as plain data;
* ``lineage_record``: a member's lineage in trial numbers -- the user attribute ``pbt_lineage``, the replayable
  recipe and seed (``recipe``/``seed`` attributes, so ``tuner export``, ``lock`` and ``regress`` replay it with plain
  ``fit``) and the MLflow tags of its run (``tuner.pbt.parent``, ``tuner.pbt.exploits`` ...).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Optional

from tuner.errors import TunerError
from tuner.optim.batched import BATCHED
from tuner.space import Beta, Choice, Dimension, Fixed, Float
from tuner.spec import StudySpec
from tuner.study.keys import TrialKeys
from tuner.study.search import SearchSpace
from tuner.tasks import Task
from tuner.train import TrainBudget
from tuner.train.pbt import PBTConfig, Range
from tuner.train.population import population_blocker, vmap_blocker


def check_pbt(spec: StudySpec, space: SearchSpace, task: Optional[Task], budget: TrainBudget) -> None:
    """``TunerError`` naming what keeps ``strategy: pbt`` from running on this study (nothing when it is search)."""
    if spec.strategy != "pbt":
        return
    if task is None:
        raise TunerError(f"strategy: pbt trains its population with tuner's trainer: it needs a task, not {spec.door}:")
    optimizers = list(space.optimizers)
    if len(optimizers) != 1 or optimizers[0] not in BATCHED:
        raise TunerError(
            f"strategy: pbt: members copy each other's optimizer state, so space.optimizers must name one optimizer "
            f"with a batched update rule ({', '.join(BATCHED)}), got {optimizers}"
        )
    if list(space.schedules) != ["constant"] or _values(space.shared["warmup"]) != [0] or space.switch is not None:
        raise TunerError(
            "strategy: pbt sets each member's LR itself (held, changed at exploits, exported as a piecewise "
            f"schedule): use space.schedules: [constant] without warmup or switch, got schedules "
            f"{list(space.schedules)}, warmup {_values(space.shared['warmup'])}, "
            f"switch {'set' if space.switch else 'none'}"
        )
    if len(_values(space.shared["batch_size"])) != 1:
        raise TunerError(
            f"strategy: pbt: the population shares one stack, so space.batch_size must be one value, got "
            f"{_values(space.shared['batch_size'])}"
        )
    if budget.objective != "final":
        raise TunerError(
            "strategy: pbt: a member's value is its final evaluation (what a replay of its lineage ends with); "
            f"remove budget.objective: {budget.objective}"
        )
    _check_perturbed_ranges(spec, space)
    reason = population_blocker(task, budget) or vmap_blocker(task.build_model())
    if reason is not None:
        raise TunerError(f"strategy: pbt needs the population path's shared vectorized pass, but {reason}")


PERTURBED_RANGES = {"lr": ("lr",), "betas": ("beta1", "beta2"), "weight_decay": ("weight_decay",)}
"""The ranges each ``pbt.perturb`` name explores in."""


def _check_perturbed_ranges(spec: StudySpec, space: SearchSpace) -> None:
    """Each name of ``pbt.perturb`` needs a range in the space to explore in (a fixed value has none)."""
    ranges = pbt_config(spec, space, 0).ranges
    for name in spec.pbt_settings.perturb:
        if not any(key in ranges for key in PERTURBED_RANGES[name]):
            optimizer = next(iter(space.optimizers))
            where = "space.weight_decay" if name == "weight_decay" else f"space.optimizers.{optimizer}"
            raise TunerError(
                f"pbt.perturb names {name}, but {where} gives it no range to explore in "
                f"(a fixed value): give {'/'.join(PERTURBED_RANGES[name])} a {{low, high}} range, or drop {name}"
            )


def _values(dimension: Dimension) -> list[Any]:
    if isinstance(dimension, Fixed):
        return [dimension.value]
    if isinstance(dimension, Choice):
        return list(dimension.options)
    return [dimension]


def pbt_config(spec: StudySpec, space: SearchSpace, seed: int) -> PBTConfig:
    """The trainer's ``PBTConfig``: the file's ``pbt:`` settings and the ranges of the space's optimizer."""
    settings = spec.pbt_settings
    (entry,) = space.optimizers.values()
    ranges: dict[str, Range] = {}
    for name, dimension in (("lr", entry.params.get("lr")), ("weight_decay", space.shared["weight_decay"])):
        if isinstance(dimension, Float):
            ranges[name] = Range(dimension.low, dimension.high, dimension.log)
    for name in ("beta1", "beta2"):
        beta = entry.params.get(name)
        if isinstance(beta, Beta):
            ranges[name] = Range(beta.low, beta.high)
    return PBTConfig(
        interval=settings.interval,
        quantile=settings.quantile,
        perturb=tuple(settings.perturb),
        ranges=ranges,
        resample_probability=settings.resample_probability,
        seed=seed,
    )


def lineage_record(lineage: dict[str, Any], numbers: Sequence[int]) -> tuple[dict[str, Any], dict[str, str]]:
    """A member's lineage (``Lineage.to_dict()``, member indices) as the trial's user attributes and its MLflow run's
    tags, in trial numbers (``numbers[index]``)."""
    exploits = [{**e, "parent_trial": numbers[e["parent"]]} for e in lineage["exploits"]]
    for exploit in exploits:
        del exploit["parent"]
    ancestry = [{"trial": numbers[a["member"]], "from_step": a["from_step"]} for a in lineage["ancestry"]]
    record = {"exploits": exploits, "ancestry": ancestry, "exact_replay": lineage["exact"]}
    attrs = {TrialKeys.PBT_LINEAGE: record, TrialKeys.RECIPE: lineage["recipe"], TrialKeys.SEED: lineage["seed"]}
    tags = {
        "tuner.pbt.root_trial": str(ancestry[0]["trial"]),
        "tuner.pbt.exploits": str(len(exploits)),
        "tuner.pbt.replay_seed": str(lineage["seed"]),
        "tuner.pbt.exact_replay": str(lineage["exact"]).lower(),
        "tuner.pbt.lineage": json.dumps(record)[:5000],
    }
    if exploits:
        tags["tuner.pbt.parent"] = str(exploits[-1]["parent_trial"])
        tags["tuner.pbt.exploit_steps"] = ", ".join(f"{e['step']} <- #{e['parent_trial']}" for e in exploits)[:5000]
    return attrs, tags
