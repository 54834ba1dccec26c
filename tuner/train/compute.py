"""How a run computes: its device and seeds, and what ``TrainBudget`` asks of each step -- mixed precision
(``Precision``: ``torch.autocast``, fp16's ``torch.amp.GradScaler``), the channels-last memory format and
``torch.compile`` (``prepare_model``).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable
from typing import Any, Optional

import torch

from tuner.errors import TunerError
from tuner.train.progress import TrainBudget

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""``TrainBudget.precision`` -> the dtype ``torch.autocast`` computes in (fp32: no autocast)."""


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for ``device``: 'auto' picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python's and torch's generators; ``deterministic`` also asks torch for deterministic algorithms."""
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class Precision:
    """A run's precision on ``device``: ``autocast()`` around each forward pass and loss, ``backward`` and
    ``unscale`` around fp16's ``torch.amp.GradScaler`` (``scaler``, None unless fp16)."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.name, self.device_type = precision, device.type
        self.dtype = AUTOCAST_DTYPES.get(precision)
        self.scaler: Optional[torch.amp.GradScaler] = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` in the run's dtype (nothing for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled by the GradScaler under fp16)."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """fp16: bring the gradients of ``optimizers`` back to their true scale, so that clipping sees them."""
        assert self.scaler is not None, "only fp16 scales gradients"
        for optimizer in optimizers:
            self.scaler.unscale_(optimizer)


def forward_loss(
    model: torch.nn.Module, task: Any, inputs: torch.Tensor, targets: torch.Tensor, precision: Precision
) -> torch.Tensor:
    """The task's training loss of one batch, computed under the run's autocast."""
    with precision.autocast():
        return task.loss(model(inputs), targets)


def prepare_model(model: torch.nn.Module, budget: TrainBudget) -> torch.nn.Module:
    """``model`` (already on its device) as the budget asks: channels-last memory format, ``torch.compile``."""
    if budget.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return compile_model(model) if budget.compile else model


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``; a failure becomes a ``TunerError`` (``compile_failure``)."""
    try:
        return torch.compile(model)  # type: ignore[return-value]
    except Exception as error:  # torch.compile's failures come in many types
        raise TunerError(compile_failure(error)) from error


def compile_failure(error: BaseException) -> str:
    """The message of a model ``torch.compile`` cannot compile or run."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    return (
        f"budget.compile: torch.compile cannot compile this model ({type(error).__name__}: {first_line}); "
        "set compile: false to train it eagerly"
    )
