"""``tuner.Trial``: one trial as your own training code sees it -- the recipe, the seed, the budget, a real torch
optimizer and LR scheduler built from the recipe, and ``report`` that logs, prunes and catches divergence.

A study file that says ``train: path/to/file.py:function`` calls ``function(trial)`` once per trial, in the worker's
process; one that says ``command: ...`` runs the command once per trial, and ``tuner.Trial.from_env()`` gives the same
object inside it (``tuner.train.command``). Either way the study records the trial like one of its own trainer's:
state, reason, value, every report, the LR curve.

What ``report`` decides is decided by ``RunProgress``, the bookkeeping every training path shares: non-finite metrics,
or a loss above ``divergence_factor`` times the first one reported, end the trial as pruned with the reason; the
pruner's answer raises ``TrialPruned``. Knows nothing of Optuna or MLflow: the caller hands in a ``Reporter``.

``checkpoint(state)`` and ``restore()`` go through the same ``Checkpointer`` as tuner's trainer
(``tuner.train.checkpoint``); in a command trial the command writes and reads the files itself, and ``restore`` tells
the study's process over the socket which reports it continues from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

from tuner._torch import rng_states, set_rng_states
from tuner.errors import TrialPruned, UserCodeError
from tuner.recipe import Recipe
from tuner.train.checkpoint import Checkpointer, CheckpointPlan
from tuner.train.progress import Evaluation, FitResult, RunProgress, TrainBudget

Reporter = Callable[[Evaluation], bool]
"""Hears every report of a trial (the study logs it and asks the pruner); True: prune the trial."""

LOSS_KEYS = ("train_loss", "loss")
"""The reported metric the divergence check follows: the training loss if reported, else the (validation) loss."""

ENV_TRIAL = "TUNER_TRIAL"
"""The environment variable that points a command trial at its ``trial.json`` (``Trial.from_env``)."""


@dataclass
class TrialInfo:
    """What a trial is, as plain data (it crosses to a command's process as JSON)."""

    number: int
    study_name: str
    recipe: Recipe
    params: dict[str, Any]
    seed: int
    device: str
    budget: TrainBudget
    metric: str
    direction: str
    deterministic: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[CheckpointPlan] = None

    def to_json(self) -> dict[str, Any]:
        """The info as JSON-ready data (``from_json`` reads it back)."""
        budget = {key: getattr(self.budget, key) for key in self.budget.__dataclass_fields__}
        return {
            "number": self.number,
            "study_name": self.study_name,
            "recipe": self.recipe.to_dict(),
            "params": self.params,
            "seed": self.seed,
            "device": self.device,
            "budget": budget,
            "metric": self.metric,
            "direction": self.direction,
            "options": self.options,
            "checkpoint": self.checkpoint.to_json() if self.checkpoint is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialInfo:
        """The info ``to_json`` wrote."""
        return cls(
            int(data["number"]),
            str(data["study_name"]),
            Recipe.from_dict(data["recipe"]),
            dict(data["params"]),
            int(data["seed"]),
            str(data["device"]),
            TrainBudget(**data["budget"]),
            str(data["metric"]),
            str(data["direction"]),
            bool(data.get("deterministic", False)),
            dict(data.get("options", {})),
            CheckpointPlan.from_json(data["checkpoint"]) if data.get("checkpoint") else None,
        )


class Trial:
    """One trial of a study, for your own training loop.

    Attributes:
        recipe: the sampled ``tuner.Recipe`` (optimizer, LR, its hyperparameters, weight decay, clipping, schedule,
            warmup, batch size, switch).
        params: the trial's raw Optuna parameters.
        seed: the trial's seed (torch is seeded with it before your function is called).
        device: the ``torch.device`` to train on.
        budget: the study's ``TrainBudget`` (``epochs`` or ``steps``, ``eval_every``, ...).
        number: the trial's number in the study.
        study_name: the study's name.
        metric: the metric the study optimizes (``report`` and your return value should include it).
        options: the study file's ``train: {name, options}`` options (a data directory, a model size ...).
    """

    def __init__(
        self,
        info: TrialInfo,
        reporter: Optional[Reporter] = None,
        channel: Optional[Channel] = None,
        checkpoints: Optional[Checkpointer] = None,
        *,
        writes_checkpoints: bool = True,
    ) -> None:
        self.info, self._channel = info, channel
        self._checkpoints, self._writes_checkpoints = checkpoints, writes_checkpoints
        self._resumed_step: Optional[int] = None
        self.recipe, self.params, self.seed = info.recipe, info.params, info.seed
        self.device = torch.device(info.device)
        self.budget, self.number, self.study_name, self.metric = info.budget, info.number, info.study_name, info.metric
        self.options = dict(info.options)
        self._reporter = reporter
        self._total_steps: Optional[int] = None
        self._progress: Optional[RunProgress] = None
        self._optimizer: Any = None
        self._last_step = 0
        self._final: Optional[dict[str, float]] = None
        self._started = time.perf_counter()

    # -- what your loop calls ------------------------------------------------------------------------------------

    def build(self, model_or_params: Union[torch.nn.Module, Any], total_steps: int) -> tuple[Any, Any]:
        """The recipe's ``torch.optim.Optimizer`` and LR scheduler for a run of ``total_steps`` optimizer steps.

        Call ``optimizer.step()`` then ``scheduler.step()`` once per optimizer step; clipping, the weight decay mode
        and the optimizer switch happen inside ``optimizer.step()``. A plateau schedule also takes
        ``scheduler.step(validation_loss)``. lbfgs needs ``optimizer.step(closure)`` and a full batch.

        Args:
            model_or_params: the model (or an iterable of its parameters).
            total_steps: the run's length in optimizer steps (the schedule's length, where the switch happens).

        Returns:
            ``(optimizer, scheduler)``: a ``RecipeOptimizer`` and a ``RecipeScheduler``.
        """
        from tuner.optim.torch_api import build

        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got total_steps={total_steps!r}")
        self._total_steps = total_steps
        optimizer, scheduler = build(
            model_or_params, self.recipe, total_steps, full_batch=self.recipe.batch_size is None, on_lr=self._record_lr
        )
        self._optimizer = optimizer
        self._record_lr(0, optimizer.effective_lr)
        if self._channel is not None:
            self._channel.send({"type": "build", "total_steps": total_steps})
        return optimizer, scheduler

    @classmethod
    def from_env(cls) -> Trial:
        """The trial a command trial runs (a study with ``command:`` starts the command with ``$TUNER_TRIAL`` set).

        Its ``report`` reaches the study (which logs it and asks the pruner) and the pruner's answer comes back.
        In a multi-process command (torchrun), only rank 0 reports; the other ranks' reports do nothing. Torch and
        ``random`` are seeded with the trial's seed here, as they are before a ``train:`` function is called.
        """
        import json
        import os
        from pathlib import Path

        from tuner.errors import TunerError
        from tuner.train.compute import seed_everything

        path = os.environ.get(ENV_TRIAL)
        if not path:
            raise TunerError(
                f"${ENV_TRIAL} is not set: Trial.from_env() works inside a command that `tuner run` "
                f"starts for a study with `command:`"
            )
        data = json.loads(Path(path).read_text())
        info = TrialInfo.from_json(data)
        if info.device.startswith("cuda") and "LOCAL_RANK" in os.environ:
            info.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        seed_everything(info.seed, info.deterministic)
        checkpoints = Checkpointer(info.checkpoint) if info.checkpoint is not None else None
        if os.environ.get("RANK", "0") != "0":
            return cls(info, checkpoints=checkpoints, writes_checkpoints=False)
        channel = Channel(str(data["socket"]))
        return cls(info, channel.report, channel, checkpoints)

    def planned(self, total_steps: int) -> None:
        """The run's length, as a command's ``build`` told the study (which draws the LR curve from the recipe)."""
        from tuner.schedules import recipe_lr_curve

        self._total_steps = int(total_steps)
        for step, lr in zip(*recipe_lr_curve(self.recipe, self._total_steps)):
            self._record_lr(step, lr)

    def report(self, step: int, metrics: Union[Mapping[str, Any], float]) -> None:
        """Report the metrics after ``step`` optimizer steps (a float: the study's metric).

        Logs them, hands the study's metric to the pruner, and stops the trial -- raising ``tuner.TrialPruned`` --
        when the pruner says so or the run has diverged (a non-finite metric, or a loss above ``divergence_factor``
        times the first reported one); the reason is recorded.
        """
        values = _floats(metrics, self.metric)
        if self._checkpoints is not None:
            self._checkpoints.evaluated()
        if self.metric not in values:
            raise ValueError(
                f"report: the study optimizes {self.metric!r}, which is not among the reported metrics {sorted(values)}"
            )
        progress = self._progress_now()
        if progress.stopped:
            raise TrialPruned(progress.reason)
        step = int(step)
        self._last_step = max(self._last_step, step)
        loss = next((values[key] for key in LOSS_KEYS if key in values), None)
        if loss is not None and progress.check_loss(max(step - 1, 0), loss):
            raise TrialPruned(progress.reason)
        lr = self._optimizer.effective_lr if self._optimizer is not None else self.recipe.lr
        evaluation = progress.evaluation(step, values, values.get("train_loss"), lr)
        if progress.evaluated(evaluation):
            raise TrialPruned(progress.reason if progress.status == "diverged" else f"pruned at step {step}")

    def checkpoint(self, state: Mapping[str, Any]) -> bool:
        """Save ``state`` as the trial's checkpoint when one is due; True when it was written.

        Due every ``budget.checkpoint_every`` reports, or every ``{minutes: M}`` (10 minutes by default, so a short
        trial writes nothing). ``state`` is yours -- the ``state_dict()`` of your model, optimizer and scheduler, your
        loader's ``generator.get_state()``, your epoch: anything ``torch.load(weights_only=True)`` reads back
        (tensors, numbers, strings, lists, dicts). tuner adds the random-number states (torch, CUDA, ``random``,
        NumPy) and the reports so far. Call it right after a ``report``, where your loop can resume. The file is
        written atomically; a failed write (a full disk) is a warning and keeps the previous checkpoint. Only rank
        0 of a multi-process command writes.
        """
        if self._checkpoints is None or not self._writes_checkpoints or not self._checkpoints.due():
            return False
        progress = self._progress_now().state_dict()
        return self._checkpoints.save(
            {"user": dict(state), "step": self._last_step, "progress": progress, "rng": rng_states()}
        )

    def restore(self) -> Optional[dict[str, Any]]:
        """The state the last checkpoint of the trial this one repeats was given -- a trial lost with its worker or
        interrupted by Ctrl-C, same recipe and seed -- or None: start from the beginning. Tensors come on the CPU
        (``load_state_dict`` moves them). It also puts back the random-number states of that moment and the
        reports so far, so the next ``report`` continues from the checkpoint's step. Call it once, after ``build``.
        """
        state = self._checkpoints.resume_state() if self._checkpoints is not None else None
        if state is None:
            return None
        set_rng_states(state["rng"])
        self.restored(int(state["step"]), state["progress"])
        if self._channel is not None:
            self._channel.send({"type": "restore", "step": int(state["step"]), "progress": state["progress"]})
        return dict(state["user"])

    def restored(self, step: int, progress: Mapping[str, Any], *, lr_curve: bool = True) -> None:
        """The trial continues from a checkpoint after ``step`` optimizer steps, with ``progress`` (its reports so
        far, ``RunProgress.state_dict``); ``lr_curve`` False keeps the curve drawn from the recipe (a command's)."""
        self._progress_now().load_state_dict(dict(progress), lr_curve=lr_curve)
        self._last_step = self._resumed_step = int(step)

    @property
    def last_step(self) -> int:
        """The largest step reported so far (0 before the first report)."""
        return self._last_step

    def stop(self, reason: str) -> None:
        """End the trial as pruned with ``reason`` (what a ``TrialPruned`` raised out of your function does)."""
        self._progress_now().stop("stopped", reason)

    def should_prune(self) -> bool:
        """Whether the trial has been stopped (pruned or diverged) by an earlier ``report``."""
        return self._progress is not None and self._progress.stopped

    def finish(self, metrics: Union[Mapping[str, Any], float, None] = None) -> None:
        """Say the trial's final metrics (a float: the study's metric); without a call, its last report counts."""
        if metrics is not None:
            self._final = _floats(metrics, self.metric)
            if self._channel is not None:
                self._channel.send({"type": "finish", "metrics": self._final})

    @property
    def final(self) -> Optional[dict[str, float]]:
        """The final metrics ``finish`` said (None: not said)."""
        return self._final

    # -- what the study reads ------------------------------------------------------------------------------------

    def result(self, returned: Any = None) -> FitResult:
        """The trial's run as a ``FitResult``: its reports, its LR curve, and its final metrics (what the function
        returned, else what ``finish`` said, else its last report)."""
        if returned is not None:
            self.finish(returned)
        progress = self._progress_now()
        total = self._total_steps or max(self._last_step, 1)
        extras = {"resumed_step": self._resumed_step} if self._resumed_step is not None else {}
        result = progress.result(self._last_step, time.perf_counter() - self._started, extras)
        result.total_steps = total
        if not progress.stopped:
            result.final = self._final or (dict(result.last.metrics) if result.last is not None else None)
        return result

    # -- internals -----------------------------------------------------------------------------------------------

    def _progress_now(self) -> RunProgress:
        if self._progress is None:
            total = self._total_steps or self.budget.steps or 1_000_000
            budget = TrainBudget(  # patience: your loop's to decide
                epochs=self.budget.epochs,
                steps=self.budget.steps,
                divergence_factor=self.budget.divergence_factor,
                objective=self.budget.objective,
            )
            self._progress = RunProgress(
                budget, self.metric, self.info.direction, total_steps=total, on_eval=self._reporter
            )
        return self._progress

    def _record_lr(self, step: int, lr: float) -> None:
        self._progress_now().record_lr(step, lr)

    def __repr__(self) -> str:
        return f"Trial(number={self.number}, study={self.study_name!r}, seed={self.seed}, recipe={self.recipe})"


def _floats(metrics: Union[Mapping[str, Any], float], metric: str) -> dict[str, float]:
    """Reported metrics as plain floats (tensors and numpy scalars included); a bare number is the study's metric."""
    if not isinstance(metrics, Mapping):
        return {metric: _float(metric, metrics)}
    return {str(key): _float(str(key), value) for key, value in metrics.items()}


def _float(name: str, value: Any) -> float:
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        raise ValueError(f"metric {name!r}: expected a number, got {value!r} ({type(value).__name__})") from None
    return number


def check_train_function(function: Callable[..., Any], where: str) -> None:
    """A train function takes one argument, the ``Trial``: ``TunerError`` naming the function and its signature."""
    import inspect

    from tuner.errors import TunerError

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(object())
    except TypeError:
        raise TunerError(
            f"{where}: {getattr(function, '__name__', function)}{signature} must take one argument, "
            f"the tuner.Trial (def train(trial): ...)"
        ) from None


def run_function(function: Callable[[Trial], Any], trial: Trial, *, deterministic: bool = False) -> FitResult:
    """Call ``function(trial)`` with torch seeded from the trial's seed; its run as a ``FitResult``.

    ``TrialPruned`` ends it as pruned (with ``report``'s reason, or the one the function raised); any other exception
    is raised as ``UserCodeError`` naming the type, the message and where in the user's file it was raised."""
    from tuner.train.compute import seed_everything

    seed_everything(trial.seed, deterministic or trial.info.deterministic)
    try:
        returned = function(trial)
    except TrialPruned as pruned:
        trial.stop(str(pruned) or f"pruned by the training code at step {trial.last_step}")
        return trial.result()
    except Exception as error:
        raise UserCodeError(describe_exception(error, function)) from error
    return trial.result(returned)


def describe_exception(error: BaseException, function: Callable[..., Any]) -> str:
    """``Type: message (at file:line in fn)``: the innermost frame in the function's own file, else the innermost."""
    import traceback
    from pathlib import Path

    code = getattr(function, "__code__", None)
    home = Path(code.co_filename).resolve() if code is not None else None
    frames = traceback.extract_tb(error.__traceback__)
    inside = [frame for frame in frames if home is not None and Path(frame.filename).resolve() == home]
    chosen = inside or list(frames)
    frame = chosen[-1] if chosen else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})" if frame is not None else ""
    return f"{type(error).__name__}: {error}{where}"


class Channel:
    """A command trial's connection to the study's process (a Unix socket), opened on first use."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.connection: Any = None
        self.reader: Any = None

    def send(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one JSON message and read the answer."""
        import json
        import socket

        if self.connection is None:
            self.connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.connection.connect(self.address)
            self.reader = self.connection.makefile("rb")
        self.connection.sendall(json.dumps(message).encode() + b"\n")
        return dict(json.loads(self.reader.readline() or b"{}"))

    def report(self, evaluation: Evaluation) -> bool:
        """Send a report; whether the study prunes the trial."""
        answer = self.send({"type": "report", "step": evaluation.step, "metrics": evaluation.metrics})
        if answer.get("error"):
            raise ValueError(answer["error"])
        return bool(answer.get("prune"))
