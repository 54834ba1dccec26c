"""The study file: pydantic models, ``load_study(path) -> StudySpec`` and its JSON Schema.

A five-line study file works::

    name: quickstart
    task: digits-mlp
    space:
      optimizers: [adam, sgd]
      schedules: [constant, cosine]

Everything else has a default. Names of optimizers, schedules, samplers and pruners are checked
against their tables here, so a bad file fails before anything is written to a study or to MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from tuner.errors import TunerError

DEFAULT_STORAGE = "sqlite:///tuner.db"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_CHECKPOINT_DIR = "checkpoints"

# A range in the file: {low, high, log?} or a list of choices or a single fixed value.
RangeValue = Union[dict[str, Any], list[Any], float, int, str, bool, None]


class Strict(BaseModel):
    """A frozen model that refuses unknown keys (a typo in a study file is an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskRef(Strict):
    """A built-in task name, ``path/to/file.py:make_task`` or ``package.module:make_task``, and its options."""

    name: str = Field(description="built-in task name, 'file.py:function' or 'package.module:function'")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the task factory")


class CheckpointMinutes(Strict):
    """``checkpoint_every: {minutes: M}``: a checkpoint after every M minutes of training."""

    minutes: float = Field(gt=0, allow_inf_nan=False, description="minutes of training between checkpoints")


CheckpointCadence = Annotated[
    Union[
        Annotated[int, Field(gt=0, strict=True), Tag("evaluations")],
        Annotated[CheckpointMinutes, Tag("time")],
    ],
    Discriminator(lambda value: "time" if isinstance(value, (dict, CheckpointMinutes)) else "evaluations"),
]
"""``budget.checkpoint_every``: a number of evaluations, or ``{minutes: M}``."""


class Budget(Strict):
    """How long each trial trains and how many trials the study runs."""

    epochs: Optional[int] = Field(
        None, gt=0, description="passes over the training set (default 10 unless steps is set)"
    )
    steps: Optional[int] = Field(None, gt=0, description="optimizer steps per trial (instead of epochs)")
    eval_every: Optional[int] = Field(
        None,
        gt=0,
        description="evaluate every this many epochs (epoch budget) or steps (step budget); "
        "default: 1 epoch / steps//10",
    )
    patience: Optional[int] = Field(
        None, gt=0, description="stop a trial after this many evaluations without improvement"
    )
    n_trials: int = Field(20, gt=0, description="target number of finished (complete or pruned) trials in the study")
    timeout: Optional[float] = Field(None, gt=0, description="stop starting new trials after this many seconds")
    divergence_factor: float = Field(
        1e3, gt=1, description="a training loss above this multiple of the first loss counts as divergence"
    )
    population: Optional[int] = Field(None, gt=0, description="train this many trials at once in one vectorized pass")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32, or mixed precision: bf16 (CPU or CUDA), fp16 (CUDA, with a GradScaler)"
    )
    accumulate: int = Field(1, ge=1, description="micro-batches per optimizer step (gradient accumulation)")
    compile: bool = Field(False, description="torch.compile the model")
    channels_last: bool = Field(False, description="channels-last memory format for conv models (and their inputs)")
    objective: Literal["final", "best"] = Field(
        "final",
        description="a trial's value: 'final', its last evaluation (what rerunning the recipe gives), or 'best', its "
        "best evaluation (the trainer restores those weights at the end)",
    )
    trial_timeout: Optional[float] = Field(
        None, gt=0, description="a trial running longer than this many seconds fails (command trials: killed)"
    )
    checkpoint_every: Optional[CheckpointCadence] = Field(
        None,
        description="write a trial's checkpoint after every this many evaluations, or {minutes: M} of training "
        "(default: every 10 minutes, so short trials write none)",
    )

    @model_validator(mode="after")
    def _one_length(self) -> Budget:
        if self.epochs is not None and self.steps is not None:
            raise ValueError(f"set either epochs or steps, not both (got epochs={self.epochs}, steps={self.steps})")
        return self


class NamedOptions(Strict):
    """A table entry chosen by name, with keyword options for its constructor."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class SwitchSpace(Strict):
    """Start with the sampled optimizer and switch to one of ``to`` part-way (Adam first for speed, then SGD to
    fine-tune).
    ``at_fraction`` is the fraction of training at which to switch and ``lr`` the second optimizer's peak LR (default:
    that optimizer's catalog range); with ``optional: true`` "no switch" is one of the choices."""

    to: list[str] = Field(min_length=1, description="optimizers to switch to")
    at_fraction: RangeValue = Field(default_factory=lambda: {"low": 0.3, "high": 0.8})
    lr: RangeValue = Field(None, description="the second optimizer's peak LR; default: its catalog range")
    optional: bool = True


class SpaceSpec(Strict):
    """What is searched. ``optimizers``/``schedules`` are a list of names or a mapping from name to overrides of that
    entry's default ranges (``{lr: {low: 1e-4, high: 1e-2}, beta2: {low: 0.99, high: 0.9999}}``); a range is
    ``{low, high, log}``,
    a list of choices, or a single fixed value."""

    optimizers: Union[list[str], dict[str, dict[str, RangeValue]]] = Field(
        default_factory=lambda: ["adam", "sgd", "momentum"]
    )
    schedules: Union[list[str], dict[str, dict[str, RangeValue]]] = Field(
        default_factory=lambda: ["constant", "cosine"]
    )
    batch_size: RangeValue = Field(
        None, description="batch size choices; null = the task's default (full batch if it has none)"
    )
    weight_decay: RangeValue = Field(0.0, description="weight decay: a value or a range")
    weight_decay_mode: RangeValue = Field("coupled", description="'coupled' (L2), 'decoupled', or a list of both")
    clip_norm: RangeValue = Field(None, description="gradient norm clipping: null, a value or a range")
    clip_value: RangeValue = Field(None, description="gradient value clipping: null, a value or a range")
    warmup: RangeValue = Field(
        0, description="warmup in steps (int) or as a fraction (< 1) of training: a value or a range"
    )
    warmup_kind: RangeValue = Field("linear", description="'linear' or 'exponential'")
    switch: Optional[SwitchSpace] = Field(None, description="switch optimizer part-way through training (searched)")
    lr: Optional[Literal["auto", "catalog"]] = Field(
        None,
        description="'auto': an LR range test per optimizer sets its LR search range "
        "(also per optimizer: adam: {lr: auto}); 'catalog': the catalog's LR ranges; unset: 'auto' for a built-in "
        "task when the range test costs at most a fifth of the study's planned training, else 'catalog'",
    )

    @field_validator("optimizers", "schedules")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if len(value) == 0:
            raise ValueError("must name at least one entry, got an empty list")
        return value


PBT_MIN_POPULATION = 4
"""The smallest population PBT runs (a quarter of it exploits a quarter: at least one member each way)."""


class PBTSpec(Strict):
    """``pbt:`` (with ``strategy: pbt``): how the population exploits and explores (``tuner.train.pbt``)."""

    interval: int = Field(2, gt=0, strict=True, description="evaluations between two exploit/explore rounds")
    quantile: float = Field(
        0.25, gt=0, le=0.5, description="the bottom quantile copies the top quantile's weights and optimizer state"
    )
    perturb: list[Literal["lr", "betas", "weight_decay"]] = Field(
        default_factory=lambda: ["lr"],
        description="what explores after a copy, within the space's ranges: lr (x0.8/x1.25 or resampled), betas "
        "(on 1 - beta), weight_decay; a replay with plain fit is exact for lr only",
    )
    resample_probability: float = Field(
        0.25, ge=0, le=1, description="the chance a perturbed LR is drawn anew in its range instead of scaled"
    )


class StudySpec(Strict):
    """A whole study file."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.\-]+$", max_length=200, description="study name (letters, digits, _ . -; 200 at most)"
    )
    task: Optional[TaskRef] = Field(None, description="what tuner trains: a built-in task or a task file (or train:)")
    train: Optional[TaskRef] = Field(
        None,
        description="your own training loop instead of a task: 'file.py:function' or 'package.module:function', "
        "called with a tuner.Trial (or {name, options}: the options reach it as trial.options)",
    )
    command: Optional[Union[str, list[str]]] = Field(
        None,
        description="your own script instead of a task, run once per trial (e.g. 'python train.py' or 'torchrun "
        "--nproc_per_node 2 train.py'); inside it, tuner.Trial.from_env() gives the trial",
    )
    metric: Optional[str] = Field(None, description="metric to optimize; default: the task's")
    direction: Optional[Literal["maximize", "minimize"]] = Field(
        None, description="default: the task's direction for the metric"
    )
    budget: Budget = Field(default_factory=Budget)
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    strategy: Literal["search", "pbt"] = Field(
        "search",
        description="'search': the sampler draws each trial's recipe; 'pbt': population-based training -- "
        "budget.population members train in one vectorized pass, the worst copying the best (see pbt)",
    )
    pbt: Optional[PBTSpec] = Field(None, description="with strategy: pbt: {interval, quantile, perturb}")
    sampler: NamedOptions = Field(
        default_factory=lambda: NamedOptions(name="tpe"),
        description="tpe, random, grid, gp, cmaes or qmc; a name or {name, options}",
    )
    pruner: NamedOptions = Field(
        default_factory=lambda: NamedOptions(name="median"),
        description="median, percentile, asha, hyperband or none; a name or {name, options}",
    )
    seed: int = 0
    deterministic: bool = Field(False, description="torch deterministic algorithms (bit-identical reruns on CPU)")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1' ...")
    storage: Optional[str] = Field(None, description=f"Optuna storage URL; default $TUNER_STORAGE or {DEFAULT_STORAGE}")
    tracking_uri: Optional[str] = Field(
        None,
        description=f"MLflow tracking URI; default $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI}; 'none' disables",
    )
    checkpoint_dir: Optional[str] = Field(
        None,
        min_length=1,
        description=f"trials' checkpoints go to <checkpoint_dir>/<study>/<trial> (default ./{DEFAULT_CHECKPOINT_DIR}, "
        "from the working directory; a shared filesystem for a team)",
    )
    keep_best: int = Field(
        1, ge=0, description="the checkpoints (and models) of this many best complete trials are kept; others removed"
    )
    save_model: bool = Field(
        False,
        description="keep complete trials' final weights (model.pt); the best is logged to MLflow and written by "
        "tuner export --format checkpoint",
    )

    @field_validator("task", "train", mode="before")
    @classmethod
    def _task_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _named_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: Any) -> Any:
        if value is not None and not (value.strip() if isinstance(value, str) else value):
            raise ValueError("must name a program to run, got an empty command")
        return value

    @model_validator(mode="after")
    def _one_door(self) -> StudySpec:
        given = [key for key in ("task", "train", "command") if getattr(self, key) is not None]
        if len(given) != 1:
            shown = {
                "task": self.task.name if self.task else None,
                "train": self.train.name if self.train else None,
                "command": self.command,
            }
            got = ", ".join(f"{key}={shown[key]!r}" for key in given) or "none of them"
            raise ValueError(f"give exactly one of task, train or command (got {got})")
        if self.task is None and (self.metric is None or self.direction is None):
            door = given[0]
            raise ValueError(
                f"with {door}: the study needs metric and direction (the metric your code reports, "
                f"e.g. metric: accuracy, direction: maximize); got metric={self.metric!r}, "
                f"direction={self.direction!r}"
            )
        return self

    @model_validator(mode="after")
    def _pbt_needs_a_population(self) -> StudySpec:
        if self.strategy == "search":
            if self.pbt is not None:
                raise ValueError("pbt: settings are read with strategy: pbt only (got strategy: search)")
            return self
        population = self.budget.population
        if population is None or population < PBT_MIN_POPULATION:
            raise ValueError(
                f"strategy: pbt trains one population in one pass: set budget.population >= {PBT_MIN_POPULATION} "
                f"(got budget.population={population!r})"
            )
        return self

    @property
    def pbt_settings(self) -> PBTSpec:
        """``pbt:`` as given, or its defaults."""
        return self.pbt if self.pbt is not None else PBTSpec()

    @property
    def door(self) -> str:
        """How trials train: "task" (tuner's trainer), "train" (your function) or "command" (your script)."""
        return "task" if self.task is not None else "train" if self.train is not None else "command"

    def resolved_storage(self, override: Optional[str] = None) -> str:
        """The storage URL: ``override``, the file's, ``$TUNER_STORAGE``, else the embedded default."""
        return storage_url(override or self.storage)

    def resolved_tracking_uri(self, override: Optional[str] = None) -> str:
        """The MLflow tracking URI: ``override``, the file's, ``$MLFLOW_TRACKING_URI``, else the embedded default."""
        return tracking_uri(override or self.tracking_uri)


def storage_url(url: Optional[str] = None) -> str:
    """The study storage URL: ``url``, else ``$TUNER_STORAGE``, else ``sqlite:///tuner.db`` (made absolute)."""
    return absolute_sqlite(url or os.environ.get("TUNER_STORAGE") or DEFAULT_STORAGE)


def tracking_uri(uri: Optional[str] = None) -> str:
    """The MLflow tracking URI: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (made absolute)."""
    return absolute_sqlite(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def absolute_sqlite(url: str) -> str:
    """``sqlite:///tuner.db`` relative to the current directory, made absolute so that every process (and MLflow's
    per-URI store cache) sees the same file."""
    prefix = "sqlite:///"
    path = url[len(prefix) :]
    if url.startswith(prefix) and not path.startswith(("/", "file:")) and path != ":memory:":
        return prefix + os.path.abspath(path)
    return url


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file; any problem raises ``TunerError`` naming the file, field and value."""
    data = read_yaml_mapping(path, "study file", "name, task, space ...")
    return parse_study(data, source=str(path))


def read_yaml_mapping(path: str | Path, kind: str, keys: str) -> dict[str, Any]:
    """The YAML mapping in the ``kind`` file at ``path`` (``keys``: examples for the message); a missing file, bad
    YAML or anything but a mapping raises ``TunerError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TunerError(f"{path}: {kind} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise TunerError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(data, dict):
        article = "an" if kind[0] in "aeiou" else "a"
        raise TunerError(f"{path}: {article} {kind} must be a mapping of keys ({keys}), got {type(data).__name__}")
    return data


def parse_study(data: dict[str, Any], source: str = "<study>") -> StudySpec:
    """Validate a study given as a dict (what a study file holds)."""
    try:
        return StudySpec.model_validate(data)
    except ValidationError as error:
        raise TunerError(f"{source}: invalid study file:\n{format_validation_error(error)}") from None


def format_validation_error(error: ValidationError) -> str:
    """One line per problem: ``field.path: message (got value)``."""
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        value = problem.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {location}: {message}{shown}")
    return "\n".join(lines)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a study file (for editor autocompletion)."""
    schema = StudySpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tuner study file"
    return schema
