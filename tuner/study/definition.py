"""A study is one question: what defines it, stored with it, and a resume that would change it refused.

The definition is what every trial's value depends on: what trains (the task and its options, or the train function
or command), the metric and direction, the budget (but ``n_trials``, ``timeout``, ``population``, ``trial_timeout``
and ``checkpoint_every``, which change how many trials run and how, not what a value means), the search space and the
sampler's and pruner's kinds. It is stored on the study (user attr ``definition``) as plain data, so a difference can
be shown field by field: ``budget.epochs: 10 -> 3``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional

from tuner.errors import TunerError
from tuner.spec import StudySpec
from tuner.study.storage.redact import redact

FREE_BUDGET_KEYS = ("n_trials", "timeout", "population", "trial_timeout", "checkpoint_every")
"""Budget keys a resume may change freely: they decide how many trials run and how, not what a value means."""


def storable(spec: StudySpec) -> dict[str, Any]:
    """The study file as it may be stored (on the study, in MLflow): JSON-ready, every URL's credentials masked
    (``storage: postgresql://user:***@host/db``)."""
    return redact(spec.model_dump(mode="json"))


def definition(spec: StudySpec, metric: str, direction: str) -> dict[str, Any]:
    """What defines the study ``spec`` describes, as JSON-ready data (credentials masked, as stored)."""
    data = storable(spec)
    defined: dict[str, Any] = {door: data[door] for door in ("task", "train", "command") if data[door] is not None}
    defined["metric"], defined["direction"] = metric, direction
    defined["budget"] = {key: value for key, value in data["budget"].items() if key not in FREE_BUDGET_KEYS}
    defined["space"] = data["space"]
    defined["sampler"], defined["pruner"] = data["sampler"]["name"], data["pruner"]["name"]
    if spec.strategy == "pbt":  # only then: the definitions stored before strategies existed stay equal
        defined["strategy"], defined["pbt"] = spec.strategy, spec.pbt_settings.model_dump(mode="json")
    return json.loads(json.dumps(defined))  # one canonical form (tuples as lists ...)


def differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``field: old -> new`` for every field that differs between two definitions."""
    old, new = _flat(stored), _flat(wanted)
    return [
        f"{key}: {_show(old.get(key))} -> {_show(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def check_unchanged(
    name: str, stored: Optional[Mapping[str, Any]], wanted: Mapping[str, Any], allow_change: bool
) -> list[str]:
    """The differences between a resumed study's definition and the file's; a ``TunerError`` (exit 2) naming them and
    the ways forward unless ``allow_change``. No stored definition (a study of an older tuner): nothing to compare."""
    if stored is None:
        return []
    changed = differences(stored, wanted)
    if changed and not allow_change:
        listing = "\n".join(f"  {line}" for line in changed)
        raise TunerError(
            f"study {name!r} exists and was defined differently; its trials would be ranked against values "
            f"this file's trials do not measure alike:\n{listing}\n"
            f"Ways forward: give the study a new name; or `tuner run FILE --fork NEW_NAME` (a new study warm-started "
            f"from this one's best recipes); or `--allow-change` to go on in this study anyway (n_trials, timeout "
            f"and population may always change)"
        )
    return changed


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, sort_keys=True)
