"""``fit(task, recipe, budget, on_eval)``: train one model with one Recipe, and the ``Trainer`` behind it.

Knows nothing of Optuna or MLflow. The caller hears about every evaluation through ``on_eval`` and may stop the
run there (that is how pruning works). What counts as divergence, an evaluation, the best one and a stop reason is
decided by ``tuner.train.progress.RunProgress``, the bookkeeping every training path shares.

``Trainer`` is the public step API of one run (``batches``, ``train_step``, ``evaluate``): ``fit`` drives it to
the end of the budget; the LR range test (``tuner.train.lr_range``) drives it through an LR sweep.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Optional

import torch

from tuner.optim import build_optimizer, clip_gradients
from tuner.recipe import Recipe
from tuner.schedules import recipe_schedule
from tuner.tasks import Task, TaskData
from tuner.train.progress import Evaluation, FitResult, OnEval, RunProgress, TrainBudget, plan_steps

EVAL_CHUNK = 4096
"""Validation examples evaluated at once (metrics are averaged over chunks weighted by their size)."""


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


_DEVICE_DATA: dict[tuple[int, str], tuple[Task, TaskData]] = {}  # the task is kept so that its id is not reused


def data_on_device(task: Task, device: torch.device) -> TaskData:
    """The task's data moved to ``device`` once per process (small datasets live there for every trial)."""
    key = (id(task), str(device))
    if key not in _DEVICE_DATA:
        data = task.load_data()
        moved = TaskData(
            *(t.to(device) for t in (data.train_inputs, data.train_targets, data.val_inputs, data.val_targets))
        )
        _DEVICE_DATA[key] = (task, moved)
    return _DEVICE_DATA[key][1]


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
    """Train ``task``'s model with ``recipe`` for ``budget``; evaluate every ``eval_every`` and call ``on_eval``.

    Args:
        metric: the metric that ranks evaluations (default: the task's).
        direction: "maximize" or "minimize" (default: the task's for ``metric``).
        on_eval: hears every evaluation; returning True stops the run (status "stopped").
        device: "auto", "cpu", "cuda", "cuda:1" ...
        seed: seeds the model's initialisation and the data order.
        deterministic: torch's deterministic algorithms (bit-identical reruns on CPU).
    """
    trainer = Trainer(
        task,
        recipe,
        budget,
        metric=metric,
        direction=direction,
        on_eval=on_eval,
        device=device,
        seed=seed,
        deterministic=deterministic,
    )
    return trainer.run()


class Trainer:
    """One training run of ``recipe`` on ``task``: model, optimizer, schedule, data order and ``RunProgress``.

    Built right after seeding (so the model's initialisation is the seed's). ``run()`` trains to the end of the
    budget; ``batches()``, ``train_step()`` and ``evaluate()`` are the steps it is made of.
    """

    def __init__(
        self,
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
    ) -> None:
        self.task, self.recipe, self.budget = task, recipe, budget
        metric = metric or task.metric
        direction = direction or task.directions.get(metric, task.direction)
        torch_device = resolve_device(device)
        seed_everything(seed, deterministic)
        self.data = data_on_device(task, torch_device)
        self.model = task.build_model().to(torch_device)
        self.batch_size = recipe.batch_size
        self.per_epoch, self.total_steps, eval_every = plan_steps(
            len(self.data.train_inputs), recipe.batch_size, budget
        )
        self.optimizer = build_optimizer(self.model, recipe, self.total_steps, full_batch=recipe.batch_size is None)
        self.schedule = recipe_schedule(recipe, self.total_steps)
        self.generator = torch.Generator().manual_seed(seed)
        self.progress = RunProgress(
            budget,
            metric,
            direction,
            total_steps=self.total_steps,
            per_epoch=self.per_epoch,
            eval_every=eval_every,
            on_eval=on_eval,
            schedule=self.schedule,
        )
        self.model.train()
        self.optimizer.train()

    def run(self) -> FitResult:
        """Train for the budget, evaluating on the progress's cadence, until the end or a stop."""
        started = time.perf_counter()
        progress = self.progress
        loss_sum, loss_count, step = 0.0, 0, 0
        for step, (inputs, targets) in enumerate(self.batches()):
            loss = self.train_step(step, inputs, targets)
            if progress.check_loss(step, loss):
                break
            loss_sum, loss_count = loss_sum + loss, loss_count + 1
            if not progress.is_eval_step(step + 1):
                continue
            evaluation = self.evaluate(step + 1, loss_sum / loss_count)
            loss_sum, loss_count = 0.0, 0
            if progress.evaluated(evaluation):
                break
        return progress.result(step + 1, time.perf_counter() - started)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches for ``total_steps`` steps, reshuffled every epoch by the run's own generator."""
        inputs, targets = self.data.train_inputs, self.data.train_targets
        n = len(inputs)
        order = torch.empty(0, dtype=torch.long)
        for step in range(self.total_steps):
            if self.batch_size is None:
                yield inputs, targets
                continue
            position = step % self.per_epoch
            if position == 0:
                order = torch.randperm(n, generator=self.generator).to(inputs.device)
            index = order[position * self.batch_size : (position + 1) * self.batch_size]
            yield inputs[index], targets[index]

    def train_step(
        self, step: int, inputs: torch.Tensor, targets: torch.Tensor, lr_multiplier: Optional[float] = None
    ) -> float:
        """One optimizer step (``step`` counts from 0) at the schedule's LR multiplier, or at ``lr_multiplier`` times
        the peak LR when given; records the LR on the progress's curve and returns the batch's training loss."""
        multiplier = self.schedule(step) if lr_multiplier is None else lr_multiplier
        loss = self.optimizer.step(step, multiplier, self._closure(inputs, targets)).item()
        self.progress.record_lr(step, self.optimizer.lr)
        return loss

    def _closure(self, inputs: torch.Tensor, targets: torch.Tensor) -> Callable[[], torch.Tensor]:
        def closure() -> torch.Tensor:
            self.model.zero_grad(set_to_none=True)
            loss = self.task.loss(self.model(inputs), targets)
            loss.backward()
            clip_gradients(self.model.parameters(), self.recipe.clip_norm, self.recipe.clip_value)
            return loss.detach()

        return closure

    @torch.no_grad()
    def evaluate(self, steps_done: int, train_loss: float) -> Evaluation:
        """The validation metrics after ``steps_done`` optimizer steps (weighted over chunks of ``EVAL_CHUNK``)."""
        self.model.eval()
        self.optimizer.eval()
        inputs, targets = self.data.val_inputs, self.data.val_targets
        totals: dict[str, float] = {}
        for start in range(0, len(inputs), EVAL_CHUNK):
            chunk_inputs, chunk_targets = inputs[start : start + EVAL_CHUNK], targets[start : start + EVAL_CHUNK]
            metrics = self.task.metrics(self.model(chunk_inputs), chunk_targets)
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + float(value) * len(chunk_inputs)
        self.model.train()
        self.optimizer.train()
        metrics = {name: total / len(inputs) for name, total in totals.items()}
        return self.progress.evaluation(steps_done, metrics, train_loss, self.optimizer.lr)
