"""``prepare``: a study file checked completely -- names, ranges, task, metric, sampler, pruner -- with nothing written.

Everything that can be wrong with what the user asked for fails here, as a ``TunerError`` naming the file, the field
and the value, before a study, an MLflow run or a file exists.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import optuna

from tuner.errors import TunerError
from tuner.spec import StudySpec, load_study
from tuner.study.search import SearchSpace, resolve_space
from tuner.study.tables import make_pruner, make_sampler
from tuner.tasks import Task, load_task


@dataclass(frozen=True)
class Prepared:
    """A validated study: everything needed to run trials, nothing written yet."""

    spec: StudySpec
    spec_dir: str
    task: Task
    space: SearchSpace
    metric: str
    direction: str
    storage_url: str
    tracking_uri: str
    device: str


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
    if spec.task is None:
        raise TunerError(f"{where}: {spec.door}: not supported yet")  # the Trial API lands next (issue 14)
    try:
        task = load_task(spec.task.name, spec.task.options, base_dir=spec_dir)
        space = resolve_space(spec.space, task.default_batch_size)
    except TunerError as error:
        raise TunerError(f"{where}: {error}") from None
    metric = spec.metric or task.metric
    if metric not in task.directions:
        raise TunerError(
            f"{where}: metric: unknown metric {metric!r} for task {spec.task.name!r}; "
            f"valid metrics: {', '.join(sorted(task.directions))}"
        )
    direction = spec.direction or task.directions[metric]
    _check_sampler_and_pruner(spec, space, where)
    return Prepared(
        spec,
        spec_dir,
        task,
        space,
        metric,
        direction,
        spec.resolved_storage(storage),
        spec.resolved_tracking_uri(tracking_uri),
        device or spec.device,
    )


def _check_sampler_and_pruner(spec: StudySpec, space: SearchSpace, where: str) -> None:
    """Build both once: an unknown name or bad options fail before the study exists."""
    quiet_libraries()
    for field, build in (
        ("sampler", lambda: make_sampler(spec.sampler, spec.seed, space)),
        ("pruner", lambda: make_pruner(spec.pruner)),
    ):
        try:
            build()
        except TunerError as error:
            raise TunerError(f"{where}: {field}: {error}") from None


def quiet_libraries() -> None:
    """Keep Optuna's and MLflow's INFO chatter and experimental-feature warnings off the user's terminal."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported (it resets its logger)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*noload.*")
