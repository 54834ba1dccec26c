"""``check_training``: what would fail in every trial, refused before the first one with a ``TunerError``.

The study's prepare step calls it once; ``Trainer`` applies the same rules (``available_device``,
``check_precision``, ``check_optimizers``) to its own run, so ``fit`` called directly refuses the same things.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Optional

import torch

from tuner.errors import TunerError
from tuner.optim import get_optimizer_spec
from tuner.recipe import Recipe
from tuner.tasks import Loaders, loaders_of
from tuner.train.compute import Precision, compile_failure, compile_model, forward_loss, prepare_model, resolve_device
from tuner.train.data import Batch, LoaderBatches, to_device
from tuner.train.progress import TrainBudget, plan_batches


def check_training(
    task: Any,
    budget: TrainBudget,
    device: str = "auto",
    batch_size: Optional[int] = None,
    *,
    optimizers: Iterable[str] = (),
) -> None:
    """Raise a ``TunerError`` saying what to change when training ``task`` under ``budget`` on ``device`` cannot work.

    ``batch_size`` is a trial's (e.g. the largest the space holds; None: the whole training set, or the loader's
    choice), ``optimizers`` the catalog names trials may train with (switch targets included). Refused:

    * ``device`` is not on this machine (``cuda`` without CUDA, ``cuda:N`` past the last GPU);
    * ``budget.precision`` does not run on it (fp16 off CUDA, bf16 on a GPU without it);
    * one of ``optimizers`` steps with a closure (lbfgs) and the budget accumulates gradients or uses mixed
      precision;
    * a loader task's loaders yield no batch, or something else than ``(inputs, targets)`` pairs of tensors (one
      batch of each is peeked, the train loader made with ``batch_size`` and seed 0), or the train loader has no
      ``len()`` and the budget counts epochs;
    * with mixed precision, channels-last or ``torch.compile``: one training step (forward, loss, backward of a
      fresh model on one batch of ``batch_size``) fails; under ``torch.compile``, after it passed eagerly, the
      message says that compiling is what fails.
    """
    torch_device = available_device(device)
    check_precision(budget.precision, torch_device)
    check_optimizers(optimizers, budget)
    loaders = loaders_of(task)
    batch = _peek(loaders, budget, batch_size) if loaders is not None else None
    if budget.precision != "fp32" or budget.channels_last or budget.compile:
        _try_step(task, budget, torch_device, batch if batch is not None else _first_examples(task, batch_size))


def available_device(device: str) -> torch.device:
    """The torch device of ``device`` ('auto', 'cpu', 'cuda', 'cuda:1' ...), or a ``TunerError`` when this machine
    has no such device."""
    try:
        resolved = resolve_device(device)
    except RuntimeError as error:
        raise TunerError(f"device: {device!r} is not a device ({error}); use auto, cpu, cuda or cuda:N") from None
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        raise TunerError(
            f"device: {device} is not available on this machine (torch.cuda.is_available() is False); "
            "use device: cpu or auto"
        )
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise TunerError(
            f"device: {device} does not exist: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return resolved


def check_precision(precision: str, device: torch.device) -> None:
    """A ``TunerError`` when ``device`` cannot train in ``precision``: fp16 needs CUDA, bf16 on CUDA a GPU with it."""
    if precision == "fp16" and device.type != "cuda":
        raise TunerError(f"budget.precision: fp16 needs a CUDA device; got device {device}; use bf16 on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TunerError(f"budget.precision: bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16")


def check_optimizers(optimizers: Iterable[str], budget: TrainBudget) -> None:
    """A ``TunerError`` when an optimizer that steps with a closure (lbfgs: it evaluates the loss several times a
    step) meets gradient accumulation or mixed precision, which work only with one plain evaluation a step."""
    if budget.accumulate == 1 and budget.precision == "fp32":
        return
    for name in optimizers:
        if get_optimizer_spec(name).needs_closure:
            raise TunerError(
                f"optimizer {name} steps with a closure, which works only with budget.accumulate 1 and precision "
                f"fp32; got accumulate {budget.accumulate}, precision {budget.precision}"
            )


def recipe_optimizers(recipe: Recipe) -> list[str]:
    """The optimizers a recipe trains with: its own, and the one it switches to."""
    return [recipe.optimizer] + ([recipe.switch.optimizer] if recipe.switch is not None else [])


def _peek(loaders: Loaders, budget: TrainBudget, batch_size: Optional[int]) -> Batch:
    """The first batch of the train loader (made with ``batch_size`` and seed 0), after the first of the val loader
    and the plan of the run (an epoch budget needs ``len()``) passed."""
    source = LoaderBatches(loaders, batch_size, seed=0)
    plan_batches(source.batches_per_epoch, budget)
    next(source.validation())
    return next(source.epoch())


def _first_examples(task: Any, batch_size: Optional[int]) -> Batch:
    data = task.load_data()
    return data.train_inputs[:batch_size], data.train_targets[:batch_size]


def _try_step(task: Any, budget: TrainBudget, device: torch.device, batch: Batch) -> None:
    """One forward, loss and backward of a fresh model as the budget asks: eagerly, then compiled."""
    model = prepare_model(task.build_model().to(device), replace(budget, compile=False))
    inputs, targets = to_device(batch, device, budget.channels_last)
    precision = Precision(budget.precision, device)
    failure = _step_failure(model, task, inputs, targets, precision)
    if failure is not None:
        raise TunerError(
            f"one training step of task {task.name!r} fails under {_settings(budget)}: "
            f"{type(failure).__name__}: {failure}"
        )
    if budget.compile:
        failure = _step_failure(compile_model(model), task, inputs, targets, precision)
        if failure is not None:
            raise TunerError(compile_failure(failure))


def _step_failure(
    model: torch.nn.Module, task: Any, inputs: torch.Tensor, targets: torch.Tensor, precision: Precision
) -> Optional[Exception]:
    """What one forward, loss and backward raises, or None."""
    try:
        with torch.enable_grad():
            precision.backward(forward_loss(model, task, inputs, targets, precision))
    except Exception as error:  # the user's model and loss may raise anything
        return error
    return None


def _settings(budget: TrainBudget) -> str:
    """The budget's step settings, e.g. "precision bf16, channels_last"."""
    return f"precision {budget.precision}" + (", channels_last" if budget.channels_last else "")
