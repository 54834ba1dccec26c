"""``fit(task, recipe, budget, on_eval)``: train one model with one Recipe.

Knows nothing of Optuna or MLflow. The caller hears about every evaluation through ``on_eval`` and
may stop the run there (that is how pruning works). Divergence (a non-finite loss, or a training
loss that explodes past ``divergence_factor`` times the first one) ends the run with status
``diverged`` and a reason; the metrics reported so far stay the last finite ones.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import torch

from tuner.optim import build_optimizer, clip_gradients
from tuner.recipe import Recipe
from tuner.schedules import build_schedule
from tuner.tasks import Task, TaskData

Status = Literal["completed", "early_stopped", "stopped", "diverged"]
LR_CURVE_POINTS = 200
EVAL_CHUNK = 4096


@dataclass(frozen=True)
class TrainBudget:
    """Length of one training run. ``eval_every`` counts epochs for an epoch budget, steps for a step budget."""

    epochs: Optional[int] = None
    steps: Optional[int] = None
    eval_every: Optional[int] = None
    patience: Optional[int] = None
    divergence_factor: float = 1e3

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps is None:
            object.__setattr__(self, "epochs", 10)


@dataclass(frozen=True)
class Evaluation:
    step: int  # optimizer steps done
    epoch: float
    metrics: dict[str, float]
    train_loss: float  # mean training loss since the previous evaluation
    lr: float


@dataclass
class FitResult:
    status: Status
    reason: str
    evaluations: list[Evaluation]
    best: Optional[Evaluation]
    lr_curve: list[tuple[int, float]]
    total_steps: int
    steps_done: int
    seconds: float
    extras: dict[str, Any] = field(default_factory=dict)


OnEval = Callable[[Evaluation], bool]  # return True to stop the run (pruning)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


_DEVICE_DATA: dict[tuple[int, str], tuple[Task, TaskData]] = {}  # the task is kept so that its id is not reused


def data_on_device(task: Task, device: torch.device) -> TaskData:
    """The task's data moved to ``device`` once per process (small datasets live there for every trial)."""
    key = (id(task), str(device))
    if key not in _DEVICE_DATA:
        data = task.load_data()
        moved = TaskData(*(t.to(device) for t in (data.train_inputs, data.train_targets, data.val_inputs, data.val_targets)))
        _DEVICE_DATA[key] = (task, moved)
    return _DEVICE_DATA[key][1]


def plan_steps(n_train: int, batch_size: Optional[int], budget: TrainBudget) -> tuple[int, int, int]:
    """(steps_per_epoch, total_steps, eval_every_steps) for a run."""
    per_epoch = 1 if batch_size is None else max(1, math.ceil(n_train / batch_size))
    if budget.steps is not None:
        total = budget.steps
        eval_every = budget.eval_every or max(1, total // 10)
    else:
        total = budget.epochs * per_epoch
        eval_every = (budget.eval_every or 1) * per_epoch
    return per_epoch, total, min(eval_every, total)


def fit(
    task: Task,
    recipe: Recipe,
    budget: TrainBudget,
    *,
    metric: Optional[str] = None,
    direction: Optional[str] = None,
    on_eval: Optional[OnEval] = None,
    device: str = "auto",
    seed: int = 0,
    deterministic: bool = False,
) -> FitResult:
    """Train ``task``'s model with ``recipe`` for ``budget``; evaluate every ``eval_every`` and call ``on_eval``."""
    metric = metric or task.metric
    direction = direction or task.directions.get(metric, task.direction)
    torch_device = resolve_device(device)
    seed_everything(seed, deterministic)
    run = _Run(task, recipe, budget, metric, direction, torch_device, seed)
    return run.train(on_eval or (lambda evaluation: False))


class _Run:
    """The state of one training run (model, optimizer, schedule, data order)."""

    def __init__(self, task: Task, recipe: Recipe, budget: TrainBudget, metric: str, direction: str,
                 device: torch.device, seed: int) -> None:
        self.task, self.recipe, self.budget = task, recipe, budget
        self.metric, self.maximize = metric, direction == "maximize"
        self.data = data_on_device(task, device)
        self.model = task.build_model().to(device)
        n_train = len(self.data.train_inputs)
        self.batch_size = recipe.batch_size
        self.per_epoch, self.total_steps, self.eval_every = plan_steps(n_train, recipe.batch_size, budget)
        self.optimizer = build_optimizer(self.model, recipe, self.total_steps, full_batch=recipe.batch_size is None)
        self.schedule = build_schedule(
            recipe.schedule,
            self.total_steps,
            recipe.schedule_params,
            warmup_steps=recipe.warmup_steps(self.total_steps),
            warmup_kind=recipe.warmup_kind,
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.curve_every = max(1, self.total_steps // LR_CURVE_POINTS)

    def train(self, on_eval: OnEval) -> FitResult:
        started = time.perf_counter()
        evaluations: list[Evaluation] = []
        lr_curve: list[tuple[int, float]] = []
        best: Optional[Evaluation] = None
        since_best = 0
        first_loss: Optional[float] = None
        loss_sum, loss_count = 0.0, 0
        status, reason, step = "completed", "", 0
        self.model.train()
        self.optimizer.train()
        for step, (inputs, targets) in enumerate(self._batches()):
            multiplier = self.schedule(step)
            loss = self.optimizer.step(step, multiplier, self._closure(inputs, targets)).item()
            if step % self.curve_every == 0 or step == self.total_steps - 1:
                lr_curve.append((step, self.optimizer.lr))
            first_loss = loss if first_loss is None else first_loss
            if not math.isfinite(loss) or loss > self.budget.divergence_factor * max(abs(first_loss), 1e-12):
                status, reason = "diverged", f"diverged at step {step + 1}: training loss {loss:.4g} (first loss {first_loss:.4g})"
                break
            loss_sum, loss_count = loss_sum + loss, loss_count + 1
            if (step + 1) % self.eval_every != 0 and step + 1 != self.total_steps:
                continue
            evaluation = self._evaluate(step + 1, loss_sum / loss_count)
            loss_sum, loss_count = 0.0, 0
            if not all(math.isfinite(v) for v in evaluation.metrics.values()):
                status, reason = "diverged", f"diverged at step {step + 1}: validation metrics {evaluation.metrics}"
                break
            evaluations.append(evaluation)
            if best is None or self._better(evaluation, best):
                best, since_best = evaluation, 0
            else:
                since_best += 1
            if on_eval(evaluation):
                status, reason = "stopped", f"stopped by the caller at step {step + 1}"
                break
            if self.budget.patience is not None and since_best >= self.budget.patience:
                status, reason = "early_stopped", f"no improvement in {self.budget.patience} evaluations (step {step + 1})"
                break
        return FitResult(status, reason, evaluations, best, lr_curve, self.total_steps,
                         step + 1, time.perf_counter() - started)

    def _batches(self):
        """Mini-batches for ``total_steps`` steps, reshuffled every epoch by the run's own generator."""
        inputs, targets = self.data.train_inputs, self.data.train_targets
        n = len(inputs)
        for step in range(self.total_steps):
            if self.batch_size is None:
                yield inputs, targets
                continue
            position = step % self.per_epoch
            if position == 0:
                order = torch.randperm(n, generator=self.generator).to(inputs.device)
            index = order[position * self.batch_size:(position + 1) * self.batch_size]
            yield inputs[index], targets[index]

    def _closure(self, inputs: torch.Tensor, targets: torch.Tensor) -> Callable[[], torch.Tensor]:
        def closure() -> torch.Tensor:
            self.model.zero_grad(set_to_none=True)
            loss = self.task.loss(self.model(inputs), targets)
            loss.backward()
            clip_gradients(self.model.parameters(), self.recipe.clip_norm, self.recipe.clip_value)
            return loss.detach()

        return closure

    @torch.no_grad()
    def _evaluate(self, step: int, train_loss: float) -> Evaluation:
        self.model.eval()
        self.optimizer.eval()
        inputs, targets = self.data.val_inputs, self.data.val_targets
        totals: dict[str, float] = {}
        for start in range(0, len(inputs), EVAL_CHUNK):
            chunk_inputs, chunk_targets = inputs[start:start + EVAL_CHUNK], targets[start:start + EVAL_CHUNK]
            metrics = self.task.metrics(self.model(chunk_inputs), chunk_targets)
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + float(value) * len(chunk_inputs)
        metrics = {name: total / len(inputs) for name, total in totals.items()}
        if hasattr(self.schedule, "report"):
            self.schedule.report(metrics["loss"])
        self.model.train()
        self.optimizer.train()
        return Evaluation(step, step / self.per_epoch, metrics, train_loss, self.optimizer.lr)

    def _better(self, a: Evaluation, b: Evaluation) -> bool:
        x, y = a.metrics[self.metric], b.metrics[self.metric]
        return x > y if self.maximize else x < y
