"""Training tasks: the ``Task`` protocol, the built-in offline tasks and loading a user's own task.

Cheap to import: torch, numpy and scikit-learn are imported only when a task builds its model or data.
"""

from tuner.tasks.base import Loaders, LoaderTask, PopulationTask, SimpleTask, Task, TaskData, TaskSpec, loaders_of
from tuner.tasks.builtin import BUILTIN_TASKS
from tuner.tasks.loader import (
    check_task,
    is_builtin_ref,
    is_task_file,
    load_function,
    load_task,
    resolve_task_file,
    split_ref,
)

__all__ = [
    "BUILTIN_TASKS",
    "LoaderTask",
    "Loaders",
    "PopulationTask",
    "SimpleTask",
    "Task",
    "TaskData",
    "TaskSpec",
    "check_task",
    "is_builtin_ref",
    "is_task_file",
    "load_function",
    "load_task",
    "loaders_of",
    "resolve_task_file",
    "split_ref",
]
