"""tuner: tune the optimizer, learning rate and schedule of PyTorch models, with Optuna, MLflow and a SQL study.

What a user scripts against, imported on first use (PEP 562): ``import tuner`` stays light (no torch, Optuna or
MLflow until a name that needs them is used)::

    import tuner

    task = tuner.load_task("digits-mlp")
    recipe = tuner.Recipe(optimizer="adam", lr=3e-3, schedule="cosine", warmup=0.05, batch_size=64)
    result = tuner.fit(task, recipe, tuner.TrainBudget(epochs=5))

    prepared = tuner.prepare("studies/quickstart.yaml")
    study = tuner.run_study(prepared, tuner.RunOptions(n_trials=50))
    print(tuner.best_recipe(study))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.lazy import lazy_exports
from tuner.version import __version__

if TYPE_CHECKING:
    from tuner.errors import TrialPruned, TunerError, UnknownNameError
    from tuner.optim import OPTIMIZERS, OptimizerSpec, build_optimizer
    from tuner.recipe import Recipe, Switch
    from tuner.schedules import SCHEDULES, build_schedule
    from tuner.spec import StudySpec, load_study, parse_study
    from tuner.study.prepare import Prepared, prepare
    from tuner.study.records import TrialRecord, best_recipe, records
    from tuner.study.runner import RunOptions, run_study
    from tuner.tasks import SimpleTask, Task, TaskData, load_task
    from tuner.train import (
        Evaluation,
        FitResult,
        PopulationFallbackWarning,
        RunProgress,
        TrainBudget,
        find_lrs,
        fit,
        fit_population,
        range_test,
    )
    from tuner.train.trial import Trial

_EXPORTS: dict[str, str] = {
    "TunerError": "tuner.errors",
    "TrialPruned": "tuner.errors",
    "Trial": "tuner.train",
    "UnknownNameError": "tuner.errors",
    "OPTIMIZERS": "tuner.optim",
    "OptimizerSpec": "tuner.optim",
    "build_optimizer": "tuner.optim",
    "Recipe": "tuner.recipe",
    "Switch": "tuner.recipe",
    "SCHEDULES": "tuner.schedules",
    "build_schedule": "tuner.schedules",
    "StudySpec": "tuner.spec",
    "load_study": "tuner.spec",
    "parse_study": "tuner.spec",
    "Prepared": "tuner.study.prepare",
    "prepare": "tuner.study.prepare",
    "TrialRecord": "tuner.study.records",
    "best_recipe": "tuner.study.records",
    "records": "tuner.study.records",
    "RunOptions": "tuner.study.runner",
    "run_study": "tuner.study.runner",
    "SimpleTask": "tuner.tasks",
    "Task": "tuner.tasks",
    "TaskData": "tuner.tasks",
    "load_task": "tuner.tasks",
    "Evaluation": "tuner.train",
    "FitResult": "tuner.train",
    "PopulationFallbackWarning": "tuner.train",
    "RunProgress": "tuner.train",
    "TrainBudget": "tuner.train",
    "find_lrs": "tuner.train",
    "fit": "tuner.train",
    "fit_population": "tuner.train",
    "range_test": "tuner.train",
}
__all__ = [
    "Evaluation",
    "FitResult",
    "OPTIMIZERS",
    "OptimizerSpec",
    "PopulationFallbackWarning",
    "Prepared",
    "Recipe",
    "RunOptions",
    "RunProgress",
    "SCHEDULES",
    "SimpleTask",
    "StudySpec",
    "Switch",
    "Task",
    "TaskData",
    "TrainBudget",
    "Trial",
    "TrialPruned",
    "TrialRecord",
    "TunerError",
    "UnknownNameError",
    "best_recipe",
    "build_optimizer",
    "build_schedule",
    "find_lrs",
    "fit",
    "fit_population",
    "load_study",
    "load_task",
    "parse_study",
    "prepare",
    "range_test",
    "records",
    "run_study",
    "__version__",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
