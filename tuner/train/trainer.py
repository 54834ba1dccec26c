"""``fit(task, recipe, budget, on_eval)``: train one model with one Recipe, and the ``Trainer`` behind it.

Knows nothing of Optuna or MLflow. The caller hears about every evaluation through ``on_eval`` and may stop the
run there (that is how pruning works). What counts as divergence, an evaluation, the best one and a stop reason is
decided by ``tuner.train.progress.RunProgress``, the bookkeeping every training path shares.

``Trainer`` is the public step API of one run (``batches``, ``train_step``, ``evaluate``): ``fit`` drives it to
the end of the budget; the LR range test (``tuner.train.lr_range``) drives it through an LR sweep. Its data come from
``tuner.train.data`` (a task's in-memory tensors or its loaders, the same way for both); how each step computes
(mixed precision, gradient accumulation, channels-last, ``torch.compile``) from the budget (``tuner.train.compute``).

Checkpoints (``tuner.train.checkpoint``): given a ``Checkpointer``, a run writes one when it is due, after an
optimizer step -- the model, the optimizer(s), a plateau schedule's counters, fp16's scaler, the progress, the
training loss since the last evaluation, the best weights (``objective: best``) and every random-number state: the
state now, and the state its current epoch started from with how many batches of it were trained, so that a resumed
run draws the same epoch order, skips those batches and goes on exactly as the uninterrupted run (bit-identical on
CPU).
"""

from __future__ import annotations

import collections
import itertools
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import torch

from tuner._torch import rng_states, set_rng_states
from tuner.optim import build_optimizer, clip_gradients
from tuner.recipe import Recipe
from tuner.schedules import load_schedule_state, recipe_schedule, schedule_state
from tuner.tasks import Task
from tuner.train.checkpoint import Checkpointer, CheckpointWarning
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
    checkpoints: Optional[Checkpointer] = None,
) -> FitResult:
    """Train ``task``'s model with ``recipe`` for ``budget``; evaluate every ``eval_every`` and call ``on_eval``.

    Args:
        metric: the metric that ranks evaluations (default: the task's).
        direction: "maximize" or "minimize" (default: the task's for ``metric``).
        on_eval: hears every evaluation; returning True stops the run (status "stopped").
        device: "auto", "cpu", "cuda", "cuda:1" ...
        seed: seeds the model's initialisation and the data order (a loader task's ``train_loader`` gets it).
        deterministic: torch's deterministic algorithms (bit-identical reruns on CPU).
        checkpoints: write checkpoints when due, and resume from the one the plan names (``result.extras``:
            ``resumed_step``; ``model``, the path of the final weights when the plan saves them). A checkpoint that
            does not fit this model is ignored with a ``CheckpointWarning`` and the run starts over.
    """
    settings: dict[str, Any] = dict(
        metric=metric, direction=direction, on_eval=on_eval, device=device, seed=seed, deterministic=deterministic
    )
    try:
        trainer = Trainer(task, recipe, budget, checkpoints=checkpoints, **settings)
    except CheckpointMismatch as error:
        warnings.warn(f"{error}; the trial starts over", CheckpointWarning, stacklevel=2)
        trainer = Trainer(task, recipe, budget, checkpoints=checkpoints, **settings)  # it resumes only once
    return trainer.run()


class CheckpointMismatch(Exception):
    """A checkpoint that matched the run's identity could still not be loaded into its model or optimizer."""


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
        checkpoints: Optional[Checkpointer] = None,
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
        self.checkpoints = checkpoints
        self.start_step, self.losses = 0, (0.0, 0)  # the training loss summed since the last evaluation, and count
        self.best_weights: Optional[dict[str, torch.Tensor]] = None  # objective "best": its best evaluation's
        self._epoch_rng: Optional[dict[str, Any]] = None  # the RNG states the current epoch started from
        self._epoch_position = 0  # micro-batches of the current epoch handed out
        self._resume: Optional[dict[str, Any]] = None
        state = checkpoints.resume_state() if checkpoints is not None else None
        if state is not None:
            self.load_checkpoint(state)

    def run(self) -> FitResult:
        """Train for the budget, evaluating on the progress's cadence, until the end or a stop (writing checkpoints
        when due). With ``objective: best`` the model ends with the weights of its best evaluation."""
        started = time.perf_counter()
        progress = self.progress
        step = self.start_step - 1
        for step, micro_batches in enumerate(self.batches(), self.start_step):
            loss = self.train_step(step, micro_batches)
            if progress.check_loss(step, loss):
                break
            self.losses = (self.losses[0] + loss, self.losses[1] + 1)
            if progress.is_eval_step(step + 1) and self._evaluate_now(step + 1):
                break
            if self.checkpoints is not None and step + 1 < self.total_steps and self.checkpoints.due():
                self.checkpoints.save(self.checkpoint_state(step + 1))
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        return progress.result(step + 1, time.perf_counter() - started, self._extras())

    def _evaluate_now(self, steps_done: int) -> bool:
        """Evaluate after ``steps_done`` steps and record it (keeping the best weights for ``objective: best``);
        whether the run stops here."""
        evaluation = self.evaluate(steps_done, self.losses[0] / self.losses[1])
        self.losses = (0.0, 0)
        stop = self.progress.evaluated(evaluation)
        if self.budget.objective == "best" and self.progress.best is evaluation:
            self.best_weights = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        if self.checkpoints is not None:
            self.checkpoints.evaluated()
        return stop

    def _extras(self) -> dict[str, Any]:
        """What the result says of checkpoints: the step it resumed from, the final weights' file."""
        extras: dict[str, Any] = {"resumed_step": self.start_step} if self.start_step else {}
        if self.checkpoints is not None and self.progress.status in ("completed", "early_stopped"):
            path = self.checkpoints.save_model(self.model.state_dict())
            extras.update({"model": str(path)} if path is not None else {})
        return extras

    # -- checkpoints --------------------------------------------------------------------------------------------------

    def checkpoint_state(self, steps_done: int) -> dict[str, Any]:
        """Everything the run continues from after ``steps_done`` optimizer steps (see the module docstring)."""
        scaler = self.precision.scaler
        return {
            "step": steps_done,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": schedule_state(self.schedule),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "progress": self.progress.state_dict(),
            "losses": list(self.losses),
            "best_weights": self.best_weights,
            "rng": rng_states(self.source.generators()),
            "epoch_rng": self._epoch_rng,
            "epoch_position": self._epoch_position,
        }

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        """Continue from ``checkpoint_state``'s ``state``: the next ``batches()`` resumes its epoch.
        ``CheckpointMismatch`` when it does not fit this model or optimizer."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"], int(state["step"]))
            load_schedule_state(self.schedule, state["schedule"])
            if self.precision.scaler is not None and state["scaler"] is not None:
                self.precision.scaler.load_state_dict(state["scaler"])
            self.progress.load_state_dict(state["progress"])
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as error:
            raise CheckpointMismatch(
                f"the checkpoint does not fit this run's model or optimizer ({type(error).__name__}: {error})"
            ) from error
        self.start_step, self.losses = int(state["step"]), (float(state["losses"][0]), int(state["losses"][1]))
        self.best_weights = state["best_weights"]
        self._resume = state

    def batches(self) -> Iterator[list[Batch]]:
        """The micro-batches of each optimizer step, on the device, for ``total_steps`` steps: ``budget.accumulate``
        of them a step (one unless accumulating; the last step of an epoch takes what is left), epoch after epoch
        (in-memory data reshuffled by the run's own generator, a loader iterated again). After a checkpoint was
        loaded, from the step after it."""
        steps = self.start_step
        while True:
            epoch = self._start_epoch()
            while micro_batches := list(itertools.islice(epoch, self.budget.accumulate)):
                self._epoch_position += len(micro_batches)
                yield [to_device(batch, self.device, self.budget.channels_last) for batch in micro_batches]
                steps += 1
                if steps == self.total_steps:
                    return

    def _start_epoch(self) -> Iterator[Batch]:
        """A pass over the training data. With checkpoints, the RNG states it starts from are kept; resuming, it
        starts from the checkpoint's epoch states, skips the batches trained before it, then takes its states."""
        if self.checkpoints is None:
            return iter(self.source.epoch())
        generators, resume, self._resume = self.source.generators(), self._resume, None
        if resume is not None:
            set_rng_states(resume["epoch_rng"], generators)
        self._epoch_rng, self._epoch_position = rng_states(generators), 0
        epoch = iter(self.source.epoch())
        if resume is not None:
            self._epoch_position = int(resume["epoch_position"])
            collections.deque(itertools.islice(epoch, self._epoch_position), maxlen=0)
            set_rng_states(resume["rng"], generators)
        return epoch

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
