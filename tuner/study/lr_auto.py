"""``lr: auto`` in a study: the LR range test runs once per study and sets each such optimizer's LR search range.

A study that brings its own training (``train:`` / ``command:``) runs a probe sweep of short runs of its own code
instead (``tuner.train.lr_range.probe_sweep``); the ranges are recorded the same way. Probes are not trials.

The ranges are recorded on the study (user attr ``lr_auto``, which every worker and every resume reads) and on the
MLflow parent run (params ``lr_auto.<optimizer>.lr|low|high|batch_size``, tag ``tuner.lr_auto``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Optional

import optuna

from tuner.space import Choice, Fixed, Float, Int
from tuner.study.keys import StudyKeys
from tuner.study.prepare import Prepared
from tuner.study.search import SearchSpace, resolve_space
from tuner.tracking import Tracker
from tuner.train.lr_range import describe, find_lrs


def apply_auto_lr(
    study: optuna.Study, prepared: Prepared, tracker: Tracker, say: Callable[[str], None] = print
) -> Prepared:
    """Run the range test for the ``lr: auto`` optimizers that have no range recorded on the study yet, record the
    ranges (study and MLflow), print them, and return ``prepared`` searching those ranges."""
    recorded = study.user_attrs.get(StudyKeys.LR_AUTO, {})
    missing = [name for name in prepared.space.auto_lr if name not in recorded]
    if missing:
        batch_size = sweep_batch_size(prepared.space)
        findings = find_lrs(
            prepared.trains, missing, batch_size=batch_size, seed=prepared.spec.seed, device=prepared.device
        )
        found = {**recorded, **{name: finding.summary() for name, finding in findings.items()}}
        study.set_user_attr(StudyKeys.LR_AUTO, found)
        params = {
            f"lr_auto.{name}.{key}": found[name][key] for name in missing for key in ("lr", "low", "high", "batch_size")
        }
        ranges = ", ".join(f"{n}=[{r['low']:.3g}, {r['high']:.3g}]" for n, r in found.items())
        tracker.log_to_study(study.user_attrs.get(StudyKeys.PARENT_RUN), params=params, tags={"tuner.lr_auto": ranges})
        for name in missing:
            say(f"lr: auto  {describe(found[name])}")
    return with_lr_ranges(prepared, study.user_attrs)


def with_lr_ranges(prepared: Prepared, user_attrs: Mapping[str, Any]) -> Prepared:
    """``prepared`` with the LR ranges recorded on the study in its search space; unchanged without them."""
    found = user_attrs.get(StudyKeys.LR_AUTO)
    if not prepared.space.auto_lr or not found:
        return prepared
    ranges = {name: (row["low"], row["high"]) for name, row in found.items()}
    batch_size = prepared.task.default_batch_size if prepared.task is not None else None
    return replace(prepared, space=resolve_space(prepared.spec.space, batch_size, ranges))


def sweep_batch_size(space: SearchSpace) -> Optional[int]:
    """The batch size a study's range test uses: the fixed one, or the middle (lower-middle) of the choices."""
    dim = space.shared["batch_size"]
    if isinstance(dim, Fixed):
        return dim.value
    if isinstance(dim, Choice):
        options = sorted(o for o in dim.options if o is not None)
        return options[(len(options) - 1) // 2] if options else None
    if isinstance(dim, (Int, Float)):
        return int(round(math.sqrt(dim.low * dim.high)))
    return None
