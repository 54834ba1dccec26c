"""Lock files: the best recipe(s) of a study re-trained over fixed seeds at full budget, checked in, re-run by CI.

A lock file (``studies/NAME.lock.yaml``) holds the task reference and options, recipe, budget, metric and direction,
per-seed values, mean and std, the pass rule (``tuner.ci.rule``) and each recipe's tolerance, versions, device and
platform. ``read_lock`` validates one (a ``TunerError`` names the file, the field and the value): every number finite,
``mean`` and ``std`` those of ``values`` (to float noise), seeds distinct; ``dump_lock`` writes keys in a fixed order
and floats exactly.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuner.ci.rule import DEFAULT_ALPHA, DEFAULT_MIN_EFFECT, TEST_NAME, mean_std
from tuner.errors import TunerError
from tuner.recipe import Recipe
from tuner.spec import TaskRef, format_validation_error, read_yaml_mapping
from tuner.version import __version__

LOCK_VERSION = 1
RELATIVE_TOLERANCE = 1e-9
"""How far a lock's ``mean`` and ``std`` may be from what its ``values`` give (float noise), relative."""

Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LockBudget(_Strict):
    """The training budget every locked run uses (``tuner.train.TrainBudget``)."""

    epochs: Optional[int] = Field(None, gt=0)
    steps: Optional[int] = Field(None, gt=0)
    eval_every: Optional[int] = Field(None, gt=0)
    patience: Optional[int] = Field(None, gt=0)
    divergence_factor: float = Field(1e3, gt=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    accumulate: int = Field(1, ge=1)
    compile: bool = False
    channels_last: bool = False
    objective: Literal["final", "best"] = Field(
        "best", description="a seed's value: its final or best evaluation (locks made before 'objective' used best)"
    )
    trial_timeout: Optional[float] = Field(None, gt=0, description="a command or train function's time limit")


class PassRule(_Strict):
    """How ``tolerance`` was derived and the test's significance level (see the module docstring)."""

    test: str = TEST_NAME
    alpha: float = Field(DEFAULT_ALPHA, gt=0, lt=1)
    min_effect: float = Field(DEFAULT_MIN_EFFECT, ge=0, allow_inf_nan=False)
    floor: float = Field(ge=0, allow_inf_nan=False, description="absolute floor of the tolerance, in metric units")


class LockedRecipe(_Strict):
    """One locked recipe: its per-seed values at lock time and the tolerance the check allows."""

    rank: int = Field(ge=1)
    trial: Optional[int] = None
    study_value: Optional[float] = None
    recipe: dict[str, Any]
    seeds: list[int] = Field(min_length=1)
    values: list[Finite] = Field(min_length=1)
    mean: float = Field(allow_inf_nan=False, description="the mean of values")
    std: float = Field(ge=0, allow_inf_nan=False, description="the sample standard deviation of values")
    tolerance: float = Field(ge=0, allow_inf_nan=False)


class LockFile(_Strict):
    """A whole lock file; keys are written in this order."""

    lock_version: int
    study: str
    created: str = ""
    task: Optional[TaskRef] = None
    train: Optional[TaskRef] = Field(
        None, description="a train function, 'file.py:fn' (relative to the lock) or 'pkg.mod:fn', and its options"
    )
    command: Optional[Union[str, list[str]]] = Field(None, description="a command run once per seed")
    workdir: Optional[str] = Field(None, description="the folder a command runs in, relative to the lock file")
    metric: str
    direction: Literal["maximize", "minimize"]
    budget: LockBudget
    deterministic: bool = True
    device: str = "auto"
    rule: PassRule
    environment: dict[str, Any] = Field(default_factory=dict)
    recipes: list[LockedRecipe] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> LockFile:
        given = [key for key in ("task", "train", "command") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of task, train or command (got {', '.join(given) or 'none'})")
        return self

    @property
    def source(self) -> str:
        """What trains the locked recipes, for messages: the task's name, the train function or the command."""
        if self.task is not None:
            return self.task.name
        return f"train: {self.train.name}" if self.train is not None else f"command: {self.command}"


def read_lock(path: str | Path) -> LockFile:
    """Read and validate a lock file: a ``TunerError`` names the file, the field and the value (exit code 2)."""
    path = Path(path)
    data = read_yaml_mapping(path, "lock file", "lock_version, task, recipes ...")
    version = data.get("lock_version")
    if version != LOCK_VERSION:
        raise TunerError(
            f"{path}: lock_version: this tuner ({tuner_version()}) reads lock files of version {LOCK_VERSION}, "
            f"got {version!r}; re-create the lock with `tuner lock`"
        )
    try:
        lock = LockFile.model_validate(data)
    except ValidationError as error:
        raise TunerError(f"{path}: invalid lock file:\n{format_validation_error(error)}") from None
    for index, entry in enumerate(lock.recipes):
        _check_entry(path, index, entry)
    return lock


def _check_entry(path: Path, index: int, entry: LockedRecipe) -> None:
    where = f"{path}: recipes.{index}"
    if len(entry.values) != len(entry.seeds):
        raise TunerError(
            f"{where}: values and seeds must have the same length, got {len(entry.values)} and {len(entry.seeds)}"
        )
    if len(set(entry.seeds)) != len(entry.seeds):
        raise TunerError(f"{where}.seeds: seeds must be distinct, got {entry.seeds}")
    mean, std = mean_std(entry.values)
    for key, stated, computed in (("mean", entry.mean, mean), ("std", entry.std, std)):
        if not math.isclose(stated, computed, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-12):
            what = "mean" if key == "mean" else "sample standard deviation"
            raise TunerError(
                f"{where}.{key}: {stated!r} is not the {what} of values ({computed!r}); the lock was edited by hand "
                f"or is corrupt: re-create it with `tuner lock`"
            )
    try:
        check_recipe(recipe_of(entry))
    except (TunerError, ValueError, TypeError) as error:
        raise TunerError(f"{where}.recipe: {error}") from None


def recipe_of(entry: LockedRecipe) -> Recipe:
    """The ``Recipe`` of a locked entry."""
    return Recipe.from_dict(entry.recipe)


def check_recipe(recipe: Recipe) -> None:
    """Names and values of the recipe's optimizer and schedule, checked against the catalog before anything trains."""
    from tuner.errors import lookup
    from tuner.optim import OPTIMIZERS
    from tuner.optim.build import resolve_params
    from tuner.schedules import build_schedule

    resolve_params(lookup(OPTIMIZERS, "optimizer", recipe.optimizer), recipe.optimizer_params)
    build_schedule(recipe.schedule, 1000, recipe.schedule_params)


def dump_lock(lock: LockFile) -> str:
    """The lock as YAML: keys in a fixed order, floats written exactly (they read back bit-identical)."""
    header = (
        f"# tuner lock file of study {lock.study!r}: re-run it with `tuner regress <this file>`.\n"
        f"# Pass rule: see `tolerance` below and the README section 'CI regression of best configs'.\n"
    )
    data = lock.model_dump(mode="json")
    for key in ("task", "train", "command", "workdir"):  # only what trains the recipes is written
        if data[key] is None:
            del data[key]
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)


def write_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def tuner_version() -> str:
    """This tuner's version."""
    return __version__
