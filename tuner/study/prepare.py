"""``prepare``: a study file checked completely -- names, ranges, task, metric, sampler, pruner -- with nothing written.

Everything that can be wrong with what the user asked for fails here, as a ``TunerError`` naming the file, the field
and the value, before a study, an MLflow run or a file exists: what the file says (``tuner.spec``), the names and
ranges of the space (``tuner.study.search``), what cannot train at all (``check_training``), and every optimizer,
schedule, warmup, pruner and sampler setting against the run's length (``tuner.study.checks``, whose findings --
steps a trial per batch size, the grid -- come back as ``Prepared.plan``).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import optuna

from tuner.errors import TunerError
from tuner.space import Fixed, Float, Int
from tuner.spec import Budget, StudySpec, load_study
from tuner.study.checkpoints import check_checkpoint_dir
from tuner.study.checks import StudyPlan, check_study
from tuner.study.lr_auto import lr_auto_by_default
from tuner.study.pbt import check_pbt
from tuner.study.search import SearchSpace, resolve_space
from tuner.study.storage.redact import mask_output
from tuner.tasks import Task, load_function, load_task
from tuner.train import TrainBudget, check_training
from tuner.train.checks import available_device
from tuner.train.command import OwnTraining, command_argv
from tuner.train.trial import check_train_function


@dataclass(frozen=True)
class Prepared:
    """A validated study: everything needed to run trials, nothing written yet.

    Exactly one of ``task`` (tuner's trainer trains it), ``train_fn`` (the user's function, called with a
    ``tuner.Trial``) and ``command`` (the user's script, run once per trial) is set, as the study file says.
    """

    spec: StudySpec
    spec_dir: str
    task: Optional[Task]
    space: SearchSpace
    metric: str
    direction: str
    storage_url: str
    tracking_uri: str
    device: str
    train_fn: Optional[Callable[..., Any]] = None
    command: Optional[list[str]] = None
    plan: StudyPlan = StudyPlan()  # what the checks found: steps a trial per batch size, the grid

    @property
    def own(self) -> Optional[OwnTraining]:
        """The user's own training (``train:`` or ``command:``) as every run of it starts; None for a task."""
        if self.task is not None:
            return None
        spec = self.spec
        return OwnTraining(
            spec.name,
            self.metric,
            self.direction,
            train_budget(spec.budget),
            function=self.train_fn,
            command=self.command,
            cwd=self.spec_dir,
            timeout=spec.budget.trial_timeout,
            deterministic=spec.deterministic,
            options=dict(spec.train.options) if spec.train is not None else {},
        )

    @property
    def trains(self) -> Union[Task, OwnTraining]:
        """What trials train: the task (tuner's trainer), else the user's own training."""
        if self.task is not None:
            return self.task
        own = self.own
        assert own is not None
        return own


def prepare(
    source: Union[str, Path, StudySpec],
    *,
    storage: Optional[str] = None,
    tracking_uri: Optional[str] = None,
    device: Optional[str] = None,
    spec_dir: Optional[str] = None,
) -> Prepared:
    """Load and check a study (a file path or a ``StudySpec``). Raises ``TunerError``.

    Args:
        storage: the Optuna storage URL (default: the file's, ``$TUNER_STORAGE``, ``sqlite:///tuner.db``).
        tracking_uri: the MLflow tracking URI (default: the file's, ``$MLFLOW_TRACKING_URI``, ``sqlite:///mlflow.db``).
        device: overrides the file's ``device``.
        spec_dir: the folder relative task files are found in (default: the study file's, else the working directory).
    """
    if isinstance(source, StudySpec):
        spec, where = source, source.name
    else:
        spec, where = load_study(source), str(source)
        spec_dir = spec_dir or str(Path(source).resolve().parent)
    spec_dir = spec_dir or os.getcwd()
    try:
        door = _load_door(spec, spec_dir)
        batch_size = door.task.default_batch_size if door.task is not None else None
        space = resolve_space(spec.space, batch_size)
        metric, direction = _metric_and_direction(spec, door.task)
        _check_door(spec)
        check_pbt(spec, space, door.task, train_budget(spec.budget))
        _check_training(spec, door, space, device or spec.device)
        check_checkpoint_dir(spec)
        quiet_libraries()
        plan = check_study(spec, door.task, space, train_budget(spec.budget))
        if lr_auto_by_default(spec, space, plan, batch_size):
            space = resolve_space(spec.space, batch_size, lr_auto_default=True)
    except TunerError as error:
        raise TunerError(f"{where}: {error}") from None
    return Prepared(
        spec,
        spec_dir,
        door.task,
        space,
        metric,
        direction,
        spec.resolved_storage(storage),
        spec.resolved_tracking_uri(tracking_uri),
        device or spec.device,
        door.train_fn,
        door.command,
        plan,
    )


@dataclass(frozen=True)
class _Door:
    task: Optional[Task] = None
    train_fn: Optional[Callable[..., Any]] = None
    command: Optional[list[str]] = None


def _load_door(spec: StudySpec, spec_dir: str) -> _Door:
    """What trials train: the task, the user's train function, or the user's command (checked it runs)."""
    if spec.task is not None:
        return _Door(task=load_task(spec.task.name, spec.task.options, base_dir=spec_dir))
    if spec.train is not None:
        function, _, _ = load_function(spec.train.name, base_dir=spec_dir, kind="train")
        check_train_function(function, f"train: {spec.train.name}")
        return _Door(train_fn=function)
    assert spec.command is not None
    return _Door(command=command_argv(spec.command, spec_dir))


def _metric_and_direction(spec: StudySpec, task: Optional[Task]) -> tuple[str, str]:
    if task is None:  # train: and command: studies name both (the spec checks it)
        assert spec.metric is not None and spec.direction is not None
        return spec.metric, spec.direction
    metric = spec.metric or task.metric
    if metric not in task.directions:
        assert spec.task is not None
        raise TunerError(
            f"metric: unknown metric {metric!r} for task {spec.task.name!r}; "
            f"valid metrics: {', '.join(sorted(task.directions))}"
        )
    return metric, spec.direction or task.directions[metric]


def train_budget(budget: Budget) -> TrainBudget:
    """The study file's budget as every trial trains with it."""
    return TrainBudget(
        epochs=budget.epochs,
        steps=budget.steps,
        eval_every=budget.eval_every,
        patience=budget.patience,
        divergence_factor=budget.divergence_factor,
        precision=budget.precision,
        accumulate=budget.accumulate,
        compile=budget.compile,
        channels_last=budget.channels_last,
        objective=budget.objective,
    )


def _check_training(spec: StudySpec, door: _Door, space: SearchSpace, device: str) -> None:
    """What would fail in every trial (``check_training``): the device, the precision, lbfgs with accumulation or
    mixed precision, a task's loaders, torch.compile; for the user's own code, the device."""
    if door.task is None:
        available_device(device)
        return
    optimizers = [*space.optimizers, *(space.switch.targets if space.switch is not None else ())]
    check_training(
        door.task, train_budget(spec.budget), device, largest_batch(space.shared["batch_size"]), optimizers=optimizers
    )


def largest_batch(dimension: Any) -> Optional[int]:
    """The largest batch size a trial may train with (None: a full batch is among them)."""
    values = [dimension.value] if isinstance(dimension, Fixed) else list(getattr(dimension, "options", ()))
    if isinstance(dimension, (Int, Float)):
        values = [int(dimension.high)]
    return None if None in values or not values else int(max(values))


def _check_door(spec: StudySpec) -> None:
    """What only tuner's own trainer can do: a population, ``save_model``. (``lr: auto`` runs a probe sweep of the
    user's own code: ``tuner.train.lr_range.probe_sweep``.)"""
    if spec.task is not None:
        return
    if spec.budget.population is not None and spec.budget.population > 1:
        raise TunerError(
            f"budget.population: {spec.budget.population} members need a task that tuner trains "
            f"(a {spec.door}: study runs its own loop, one trial at a time); remove it"
        )
    if spec.save_model:
        raise TunerError(
            f"save_model: true keeps the weights of models tuner's trainer trains (a task); with {spec.door}: your "
            f"code owns the model -- put its state_dict() in trial.checkpoint(...) and keep_best keeps the best "
            f"trials' checkpoints; remove save_model"
        )


def quiet_libraries() -> None:
    """Keep Optuna's and MLflow's INFO chatter and experimental-feature warnings off the user's terminal, and the
    passwords of URLs out of every warning and log line (``mask_output``)."""
    mask_output()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported (it resets its logger)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*noload.*")
    # a queued trial outside a changed space is failed with its reason (lifecycle.check_queued_values)
    warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
