"""``fit(task, recipe, budget, on_eval)``: train one model with one Recipe, and the ``Trainer`` behind it.

Knows nothing of Optuna or MLflow. The caller hears about every evaluation through ``on_eval`` and may stop the
run there (that is how pruning works). What counts as divergence, an evaluation, the best one and a stop reason is
decided by ``tuner.train.progress.RunProgress``, the bookkeeping every training path shares.

``Trainer`` is the public step API of one run (``batches``, ``train_step``, ``evaluate``): ``fit`` drives it to
the end of the budget; the LR range test (``tuner.train.lr_range``) drives it through an LR sweep. Its data come from
``tuner.train.data`` (a task's in-memory tensors or its loaders, the same way for both); how each step computes
(mixed precision, gradient accumulation, channels-last, ``torch.compile``) from the budget (``tuner.train.compute``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Optional

import torch

from tuner.optim import build_optimizer, clip_gradients
from tuner.recipe import Recipe
from tuner.schedules import recipe_schedule
from tuner.tasks import Task
from tuner.train.checks import available_device, check_optimizers, check_precision, recipe_optimizers
from tuner.train.compute import Precision, forward_loss, prepare_model, seed_everything
from tuner.train.data import Batch, data_source, to_device
from tuner.train.progress import Evaluation, FitResult, OnEval, RunProgress, TrainBudget, plan_batches


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
        seed: seeds the model's initialisation and the data order (a loader task's ``train_loader`` gets it).
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
    """One training run of ``recipe`` on ``task``: model, optimizer, schedule, data and ``RunProgress``.

    Built right after seeding (so the model's initialisation is the seed's; the data come after the model, so a
    loader's construction cannot change it). ``run()`` trains to the end of the budget; ``batches()``,
    ``train_step()`` and ``evaluate()`` are the steps it is made of. Raises ``TunerError`` for a device this machine
    lacks, a precision the device cannot run, a closure optimizer (lbfgs) with accumulation or mixed precision, a
    streamed task whose epoch length is unknown under an epoch budget (``check_training`` refuses them all before
    a study starts).
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
        self.device = available_device(device)
        check_precision(budget.precision, self.device)
        check_optimizers(recipe_optimizers(recipe), budget)
        seed_everything(seed, deterministic)
        self.model = prepare_model(task.build_model().to(self.device), budget)
        self.source = data_source(task, self.device, recipe.batch_size, seed)
        self.batch_size = recipe.batch_size
        self.per_epoch, self.total_steps, eval_every = plan_batches(self.source.batches_per_epoch, budget)
        self.optimizer = build_optimizer(self.model, recipe, self.total_steps, full_batch=recipe.batch_size is None)
        self.schedule = recipe_schedule(recipe, self.total_steps)
        self.precision = Precision(budget.precision, self.device)
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
        """Train for the budget, evaluating on the progress's cadence, until the end or a stop. With
        ``objective: best`` the model ends with the weights of its best evaluation."""
        started = time.perf_counter()
        progress = self.progress
        best_weights: Optional[dict[str, torch.Tensor]] = None
        loss_sum, loss_count, step = 0.0, 0, 0
        for step, micro_batches in enumerate(self.batches()):
            loss = self.train_step(step, micro_batches)
            if progress.check_loss(step, loss):
                break
            loss_sum, loss_count = loss_sum + loss, loss_count + 1
            if not progress.is_eval_step(step + 1):
                continue
            evaluation = self.evaluate(step + 1, loss_sum / loss_count)
            loss_sum, loss_count = 0.0, 0
            stop = progress.evaluated(evaluation)
            if self.budget.objective == "best" and progress.best is evaluation:
                best_weights = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
            if stop:
                break
        if best_weights is not None:
            self.model.load_state_dict(best_weights)
        return progress.result(step + 1, time.perf_counter() - started)

    def batches(self) -> Iterator[list[Batch]]:
        """The micro-batches of each optimizer step, on the device, for ``total_steps`` steps: ``budget.accumulate``
        of them a step (one unless accumulating; the last step of an epoch takes what is left), epoch after epoch
        (in-memory data reshuffled by the run's own generator, a loader iterated again)."""
        steps = 0
        while True:
            epoch = iter(self.source.epoch())
            while micro_batches := list(itertools.islice(epoch, self.budget.accumulate)):
                yield [to_device(batch, self.device, self.budget.channels_last) for batch in micro_batches]
                steps += 1
                if steps == self.total_steps:
                    return

    def train_step(self, step: int, micro_batches: Sequence[Batch], *, lr_multiplier: Optional[float] = None) -> float:
        """One optimizer step (``step`` counts from 0) on ``micro_batches`` (one item of ``batches()``) at the
        schedule's LR multiplier, or at ``lr_multiplier`` times the peak LR when given; records the LR on the
        progress's curve and returns the step's training loss (the mean over its micro-batches)."""
        multiplier = self.schedule(step) if lr_multiplier is None else lr_multiplier
        closure = self._closure(micro_batches)
        loss = self.optimizer.step(step, multiplier, closure, scaler=self.precision.scaler).item()
        self.progress.record_lr(step, self.optimizer.lr)
        return loss

    def _closure(self, micro_batches: Sequence[Batch]) -> Callable[[], torch.Tensor]:
        """Zero the gradients, accumulate each micro-batch's loss / their number, unscale (fp16) and clip; the loss."""
        share = len(micro_batches)

        def closure() -> torch.Tensor:
            self.model.zero_grad(set_to_none=True)
            losses = []
            for inputs, targets in micro_batches:
                loss = forward_loss(self.model, self.task, inputs, targets, self.precision)
                loss = loss if share == 1 else loss / share
                self.precision.backward(loss)
                losses.append(loss.detach())
            if self.precision.scaler is not None:  # fp16: clipping must see the true gradients
                self.precision.unscale(self.optimizer.active_optimizers)
            clip_gradients(self.model.parameters(), self.recipe.clip_norm, self.recipe.clip_value)
            return sum(losses[1:], losses[0])

        return closure

    @torch.no_grad()
    def evaluate(self, steps_done: int, train_loss: float) -> Evaluation:
        """The validation metrics after ``steps_done`` optimizer steps: the task's per-batch means, averaged over the
        validation batches weighted by their size."""
        self.model.eval()
        self.optimizer.eval()
        totals: dict[str, float] = {}
        count = 0
        for batch in self.source.validation():
            inputs, targets = to_device(batch, self.device, self.budget.channels_last)
            with self.precision.autocast():
                metrics = self.task.metrics(self.model(inputs), targets)
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + float(value) * len(inputs)
            count += len(inputs)
        self.model.train()
        self.optimizer.train()
        metrics = {name: total / count for name, total in totals.items()}
        return self.progress.evaluation(steps_done, metrics, train_loss, self.optimizer.lr)
