"""What the framework callbacks share: the metrics a framework logged as a trial's report, the validation loss a
plateau schedule follows, and the error that names the missing extra.

The naming rule (both callbacks):

* every logged metric that is a number (a Python number, a one-element tensor, a numpy scalar) is reported as a
  float; anything else (strings, lists, multi-element tensors) is left out;
* a name that starts with one of the framework's validation prefixes (Lightning: ``val_``, ``val/``; Hugging Face:
  ``eval_``) is reported without it -- ``val_accuracy`` as ``accuracy``, ``eval_loss`` as ``loss`` -- unless the bare
  name was logged too (then both keep their names: ``loss`` logged by ``training_step`` stays the training loss);
* ``monitor`` names the logged metric that is the study's metric when the names do not match (``val_acc`` for a
  study of ``accuracy``): its value is also reported under the study's metric name.

tuner's convention for the rest follows: ``loss`` is the validation loss (a plateau schedule follows it) and
``train_loss`` the training loss (the divergence check follows it when reported, else ``loss``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional

from tuner.errors import TunerError
from tuner.optim.torch_api import RecipeScheduler


class MissingExtraError(TunerError, ImportError):
    """A framework integration whose framework is not installed; the message says which extra installs it."""


def missing_extra(extra: str, package: str, error: ImportError) -> MissingExtraError:
    """The error raised when ``tuner.integrations.<extra>`` is imported without ``package``."""
    return MissingExtraError(
        f"tuner.integrations.{extra} needs {package}, which is not installed ({error}): pip install 'tuner[{extra}]'"
    )


def number(value: Any) -> Optional[float]:
    """``value`` as a float when it is one number (bools, strings, containers, multi-element tensors: None)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    size = getattr(value, "numel", None) or getattr(value, "size", None)
    try:
        count = size() if callable(size) else size
        if count != 1 or not hasattr(value, "item"):
            return None
        item = value.item()
    except (TypeError, ValueError, RuntimeError):
        return None
    return None if isinstance(item, bool) or not isinstance(item, (int, float)) else float(item)


def as_report(
    logged: Mapping[str, Any], metric: str, prefixes: tuple[str, ...], monitor: Optional[str], where: str
) -> dict[str, float]:
    """The metrics a framework logged, named for ``trial.report`` (the module docstring's rule).

    Raises ``TunerError`` naming what was logged when the study's ``metric`` is not among them (or ``monitor`` is
    not logged)."""
    numbers: dict[str, float] = {}
    for name, value in logged.items():
        found = number(value)
        if found is not None:
            numbers[str(name)] = found
    report: dict[str, float] = {}
    for name, value in numbers.items():
        bare = strip(name, prefixes)
        report[bare if bare != name and bare not in numbers and bare not in report else name] = value
    if monitor is not None:
        if monitor not in numbers:
            raise TunerError(f"{where}: monitor={monitor!r} was not logged; the logged metrics: {sorted(numbers)}")
        report[metric] = numbers[monitor]
    if metric not in report:
        with_prefixes = " or ".join(repr(prefix + metric) for prefix in prefixes)
        raise TunerError(
            f"{where}: the study optimizes {metric!r}, which is not among the logged metrics {sorted(numbers)}: "
            f"log it as {metric!r} or {with_prefixes}, or name the logged metric with monitor=..."
        )
    return report


def strip(name: str, prefixes: tuple[str, ...]) -> str:
    """``name`` without the first of ``prefixes`` it starts with."""
    for prefix in prefixes:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix) :]
    return name


def validation_loss(
    logged: Mapping[str, Any], report: Mapping[str, float], prefixes: tuple[str, ...], loss_monitor: Optional[str]
) -> Optional[float]:
    """The validation loss a plateau schedule follows: ``loss_monitor`` if given, else the first of
    ``<prefix>loss`` logged, else the reported ``loss``; None when there is none."""
    names = [loss_monitor] if loss_monitor is not None else [prefix + "loss" for prefix in prefixes]
    for name in names:
        if name in logged:
            return number(logged[name])
    return report.get("loss") if loss_monitor is None else None


def metric_driven(schedulers: Iterable[Any]) -> list[RecipeScheduler]:
    """The recipe schedulers among ``schedulers`` (wrappers unwrapped: accelerate's keeps it in ``.scheduler``)
    whose schedule follows a metric (plateau)."""
    found = []
    for scheduler in schedulers:
        inner = scheduler if isinstance(scheduler, RecipeScheduler) else getattr(scheduler, "scheduler", None)
        if isinstance(inner, RecipeScheduler) and inner.metric_driven:
            found.append(inner)
    return found


def feed_plateau(schedulers: Iterable[Any], schedule: str, loss: Optional[float], where: str) -> int:
    """Report ``loss`` to every plateau ``RecipeScheduler`` among ``schedulers``; how many were fed.

    Raises ``TunerError`` when the recipe's schedule is plateau and there is no loss to feed it, or no recipe
    scheduler that the framework steps (a plateau that never hears a loss never lowers the LR)."""
    plateaus = metric_driven(schedulers)
    if not plateaus:
        if schedule == "plateau":
            raise TunerError(
                f"{where}: the recipe's schedule is plateau, but the trainer holds no scheduler from trial.build "
                f"to feed the validation loss to: hand it the scheduler trial.build returned"
            )
        return 0
    if loss is None:
        raise TunerError(
            f"{where}: the recipe's schedule is plateau, which follows the validation loss, but none was logged: "
            f"log it as 'val_loss' (Lightning) or let the Trainer compute 'eval_loss' (Hugging Face), "
            f"or name it with loss_monitor=..."
        )
    for scheduler in plateaus:
        scheduler.report(loss)  # a non-finite loss is not counted (the trial's report prunes it as diverged)
    return len(plateaus)
