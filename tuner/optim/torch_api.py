"""A recipe as a real ``torch.optim.Optimizer`` and LR scheduler, for training code tuner does not drive.

``RecipeOptimizer`` is what ``tuner.Trial.build`` hands a user's own loop (and a Lightning module or a Hugging Face
``Trainer``): a ``torch.optim.Optimizer`` whose ``step()`` applies the recipe's whole update -- gradient clipping,
the weight decay its torch class does not apply itself, the optimizer switch part-way, muon's and sparse_adam's
companion optimizers -- through the same ``ManagedOptimizer`` tuner's own trainer uses. Its one param group holds
every trainable parameter (so ``zero_grad``, ``GradScaler.unscale_`` and LR monitors work) and its ``lr`` is the peak
LR times the schedule: the optimizer reads its multiplier from there, as torch optimizers read their LR.

``RecipeScheduler`` is a ``torch.optim.lr_scheduler.LRScheduler`` over the recipe's schedule, in closed form (a pure
function of the step, warmup included), so any step count works; ``step()`` once per optimizer step. The plateau
schedule also takes ``step(metric)`` (a validation loss): that reports the metric and does not count a step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Optional, Union

import torch

from tuner.optim.build import build_optimizer, clip_gradients
from tuner.recipe import Recipe
from tuner.schedules import Schedule, load_schedule_state, recipe_schedule, schedule_state

ModelOrParams = Union[torch.nn.Module, Iterable[torch.nn.Parameter]]


class _Parameters(torch.nn.Module):
    """A bare list of parameters as a module (the optimizer builder splits modules)."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__()
        self.held = torch.nn.ParameterList(params)


class RecipeOptimizer(torch.optim.Optimizer):
    """``recipe``'s optimizer over ``model_or_params`` for a run of ``total_steps`` optimizer steps.

    Args:
        model_or_params: a module (muon and sparse_adam split it by layer type) or an iterable of parameters.
        recipe: the recipe; its ``lr`` is the peak LR.
        total_steps: the run's length in optimizer steps (where the switch happens).
        full_batch: whether every step sees the whole training set (lbfgs needs it).
    """

    def __init__(
        self, model_or_params: ModelOrParams, recipe: Recipe, total_steps: int, *, full_batch: bool = False
    ) -> None:
        module = model_or_params if isinstance(model_or_params, torch.nn.Module) else _Parameters(list(model_or_params))
        self.managed = build_optimizer(module, recipe, total_steps, full_batch=full_batch)
        super().__init__(self.managed.params, {"lr": recipe.lr})
        self.recipe, self.total_steps, self.steps_taken = recipe, total_steps, 0
        self.managed.begin(0)

    @property
    def lr_multiplier(self) -> float:
        """The schedule's multiplier of the peak LR now (the param group's ``lr`` over the recipe's)."""
        return float(self.param_groups[0]["lr"]) / self.recipe.lr

    @property
    def effective_lr(self) -> float:
        """The LR the active optimizer uses (after a switch, the switch's peak LR times the multiplier)."""
        return self.managed.phase.peak_lr * self.lr_multiplier

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        """One optimizer step of the recipe: clip, decay, update (``closure`` recomputes the loss: lbfgs needs it)."""
        multiplier, recipe = self.lr_multiplier, self.recipe
        if closure is None or not self.managed.phase.needs_closure:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            clip_gradients(self.managed.params, recipe.clip_norm, recipe.clip_value)
            self.managed.apply_gradients(self.steps_taken, multiplier)
        else:

            def clipped() -> torch.Tensor:
                with torch.enable_grad():
                    value = closure()
                clip_gradients(self.managed.params, recipe.clip_norm, recipe.clip_value)
                return value

            loss = self.managed.step(self.steps_taken, multiplier, clipped)
        self.steps_taken += 1
        # The next step's gradients are the user's to compute: a switch must hand over the weights before them.
        self.managed.begin(self.steps_taken)
        return loss

    def train(self) -> None:
        """Before training steps (schedule-free optimizers move the weights; otherwise nothing)."""
        self.managed.train()

    def eval(self) -> None:
        """Before evaluation (schedule-free optimizers move the weights to their average; otherwise nothing)."""
        self.managed.eval()

    def state_dict(self) -> dict[str, Any]:
        """Every torch optimizer's state, the steps taken and the LR (for checkpoints)."""
        return {"steps_taken": self.steps_taken, "lr": self.param_groups[0]["lr"], **self.managed.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.steps_taken = int(state_dict["steps_taken"])
        self.managed.load_state_dict(state_dict, self.steps_taken)
        self.param_groups[0]["lr"] = float(state_dict["lr"])


class RecipeScheduler(torch.optim.lr_scheduler.LRScheduler):
    """The recipe's LR schedule as a torch scheduler over a ``RecipeOptimizer`` (see the module docstring).

    Args:
        optimizer: the recipe's optimizer.
        on_lr: hears ``(step, lr)`` after every step (the trial's LR curve).
    """

    def __init__(self, optimizer: RecipeOptimizer, on_lr: Optional[Callable[[int, float], None]] = None) -> None:
        self.schedule: Schedule = recipe_schedule(optimizer.recipe, optimizer.total_steps)
        self.on_lr = on_lr
        super().__init__(optimizer)

    @property
    def metric_driven(self) -> bool:
        """Whether the schedule also moves on a reported metric (plateau)."""
        return hasattr(self.schedule, "report")

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """The LR of every param group at the current step: its peak LR times the schedule."""
        multiplier = self.schedule(max(self.last_epoch, 0))
        return [base * multiplier for base in self.base_lrs]

    def step(self, metrics: Optional[float] = None, epoch: Optional[int] = None) -> None:  # type: ignore[override]
        """One optimizer step later; ``step(metric)`` instead reports a validation loss to a plateau schedule."""
        if metrics is not None:
            self.report(float(metrics))
            return
        super().step()
        if self.on_lr is not None:
            optimizer = self.optimizer
            assert isinstance(optimizer, RecipeOptimizer)
            self.on_lr(max(self.last_epoch, 0), optimizer.effective_lr)

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's position and a plateau schedule's counters, as plain data (a checkpoint read with
        ``torch.load(weights_only=True)`` takes it back)."""
        state = {key: value for key, value in super().state_dict().items() if key not in ("schedule", "on_lr")}
        return {**state, "schedule": schedule_state(self.schedule)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        state = dict(state_dict)
        schedule = state.pop("schedule", None)
        super().load_state_dict(state)
        load_schedule_state(self.schedule, schedule)

    def report(self, metric: float) -> None:
        """A validation loss for the plateau schedule (the LR drops when it stops improving)."""
        if not self.metric_driven:
            raise ValueError(
                f"schedule {self.optimizer.recipe.schedule!r} does not take a metric; "  # type: ignore[attr-defined]
                f"call scheduler.step() once per optimizer step"
            )
        if math.isfinite(metric):
            self.schedule.report(metric)  # type: ignore[attr-defined]
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def build(
    model_or_params: ModelOrParams,
    recipe: Recipe,
    total_steps: int,
    *,
    full_batch: bool = False,
    on_lr: Optional[Callable[[int, float], None]] = None,
) -> tuple[RecipeOptimizer, RecipeScheduler]:
    """``recipe``'s optimizer and scheduler for a run of ``total_steps`` optimizer steps."""
    optimizer = RecipeOptimizer(model_or_params, recipe, total_steps, full_batch=full_batch)
    return optimizer, RecipeScheduler(optimizer, on_lr=on_lr)
