"""The bookkeeping of one training run, shared by every way tuner trains: ``RunProgress``.

``fit`` keeps one, ``fit_population`` one per member, and a user's own loop one behind ``tuner.Trial.report``. It
decides, in one place, when a run has diverged (a non-finite loss, or a training loss above ``divergence_factor``
times the first one; non-finite validation metrics), when it evaluates (``plan_steps``), which evaluation is best,
when patience runs out, what the stop reasons say, and which points of the LR curve are kept. The training step
itself is not here: each path computes losses its own way (the population's divergence check is one vectorized
mask, whose rows then come here for their reason).

Knows nothing of torch, Optuna or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from tuner.errors import TunerError

Status = Literal["completed", "early_stopped", "stopped", "diverged"]

LR_CURVE_POINTS = 200
"""About this many points of a run's LR curve are kept (every ``total_steps // LR_CURVE_POINTS`` steps, and the
last)."""

MIN_LOSS_SCALE = 1e-12
"""The divergence limit is ``divergence_factor * max(|first loss|, MIN_LOSS_SCALE)``."""

OBJECTIVES = ("final", "best")
"""``TrainBudget.objective``: what a run's value is -- its last evaluation, or its best one (weights restored)."""

PRECISIONS = ("fp32", "bf16", "fp16")
"""``TrainBudget.precision``: float32, or mixed precision with bfloat16 or float16 autocast."""


@dataclass(frozen=True)
class TrainBudget:
    """Length of one training run, and how its steps compute. ``eval_every`` counts epochs for an epoch budget, steps
    for a step budget.

    Args:
        epochs: passes over the training set (10 when neither ``epochs`` nor ``steps`` is given).
        steps: optimizer steps, instead of epochs.
        eval_every: evaluate every this many epochs (epoch budget) or steps (step budget); default 1 epoch / steps//10.
        patience: stop after this many evaluations without improvement of the metric.
        divergence_factor: a training loss above this multiple of the first loss counts as divergence.
        precision: "fp32", or mixed precision under ``torch.autocast``: "bf16" (CPU or CUDA), "fp16" (CUDA only,
            with a ``torch.amp.GradScaler``).
        accumulate: micro-batches per optimizer step (gradient accumulation): the recipe's batch size is the
            micro-batch's; schedules, ``steps`` and ``eval_every`` count optimizer steps.
        compile: ``torch.compile`` the model.
        channels_last: the model and 4-D inputs in ``torch.channels_last`` memory format (conv models).
        objective: what the run's value is: "final", its last evaluation (what a rerun of the recipe ends with), or
            "best", its best evaluation -- the trainer then restores the weights of that evaluation at the end, so
            the model and the value agree.
    """

    epochs: Optional[int] = None
    steps: Optional[int] = None
    eval_every: Optional[int] = None
    patience: Optional[int] = None
    divergence_factor: float = 1e3
    precision: str = "fp32"
    accumulate: int = 1
    compile: bool = False
    channels_last: bool = False
    objective: str = "final"

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps is None:
            object.__setattr__(self, "epochs", 10)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got precision={self.precision!r}")
        if not _is_int(self.accumulate) or self.accumulate < 1:
            raise ValueError(f"accumulate must be an integer >= 1, got accumulate={self.accumulate!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be 'final' or 'best', got objective={self.objective!r}")
        for name in ("compile", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {name}={getattr(self, name)!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run: after ``step`` optimizer steps, its validation ``metrics``."""

    step: int  # optimizer steps done
    epoch: float  # NaN when an epoch's length is unknown (a data loader without len())
    metrics: dict[str, float]
    train_loss: Optional[float]  # mean training loss since the previous evaluation (None: not measured)
    lr: float


@dataclass
class FitResult:
    """How a run ended: ``status`` and ``reason``, every evaluation, the best one, the LR curve, steps and seconds."""

    status: Status
    reason: str
    evaluations: list[Evaluation]
    best: Optional[Evaluation]
    lr_curve: list[tuple[int, float]]
    total_steps: int
    steps_done: int
    seconds: float
    extras: dict[str, Any] = field(default_factory=dict)
    final: Optional[dict[str, float]] = None  # what the run's own code said it ended with (a user loop's return)
    objective: str = "final"

    @property
    def last(self) -> Optional[Evaluation]:
        """The last evaluation (None when the run never evaluated)."""
        return self.evaluations[-1] if self.evaluations else None

    @property
    def counted(self) -> Optional[dict[str, float]]:
        """The metrics the run's value comes from: its final metrics (what its own code said it ended with, else its
        last evaluation), or its best evaluation when ``objective`` is "best". None: it never evaluated."""
        if self.objective == "best":
            return dict(self.best.metrics) if self.best is not None else None
        if self.final is not None:
            return dict(self.final)
        return dict(self.last.metrics) if self.last is not None else None


OnEval = Callable[[Evaluation], bool]
"""Hears every evaluation of a run; returning True stops the run (that is how pruning works)."""


def plan_steps(n_train: int, batch_size: Optional[int], budget: TrainBudget) -> tuple[int, int, int]:
    """(steps_per_epoch, total_steps, eval_every_steps) for a run over ``n_train`` examples in batches of
    ``batch_size`` (None: the whole set), ``budget.accumulate`` batches an optimizer step."""
    per_epoch, total, eval_every = plan_batches(1 if batch_size is None else math.ceil(n_train / batch_size), budget)
    assert per_epoch is not None  # known when the batches of an epoch are
    return per_epoch, total, eval_every


def plan_batches(batches: Optional[int], budget: TrainBudget) -> tuple[Optional[int], int, int]:
    """(steps_per_epoch, total_steps, eval_every_steps) for a run of ``batches`` (micro-)batches an epoch, grouped
    ``budget.accumulate`` to an optimizer step (the last step of an epoch takes what is left).

    ``batches`` None: the epoch's length is unknown (a data loader without ``len()``); the budget must then count
    ``steps``, and the steps per epoch are None. Raises ``TunerError`` otherwise.
    """
    if batches is None:
        if budget.steps is None:
            raise TunerError(
                "the task's train loader has no len(), so an epoch's length is unknown: set budget.steps "
                "(and eval_every in steps) instead of epochs"
            )
        return None, *plan_steps_per_epoch(1, budget)[1:]
    return plan_steps_per_epoch(max(1, math.ceil(batches / budget.accumulate)), budget)


def plan_steps_per_epoch(per_epoch: int, budget: TrainBudget) -> tuple[int, int, int]:
    """(steps_per_epoch, total_steps, eval_every_steps) for a run of ``per_epoch`` optimizer steps an epoch."""
    if budget.steps is not None:
        total = budget.steps
        eval_every = budget.eval_every or max(1, total // 10)
    else:
        assert budget.epochs is not None  # TrainBudget fills in 10 epochs
        total = budget.epochs * per_epoch
        eval_every = (budget.eval_every or 1) * per_epoch
    return per_epoch, total, min(eval_every, total)


def divergence_limit(first_loss: float, factor: float) -> float:
    """The training loss above which a run whose first loss was ``first_loss`` has diverged."""
    return factor * max(abs(first_loss), MIN_LOSS_SCALE)


class RunProgress:
    """One run's decisions: evaluation cadence, divergence, best and patience, stop reasons, the LR curve.

    Args:
        budget: the run's budget (patience, divergence factor).
        metric: the metric that ranks evaluations.
        direction: "maximize" or "minimize".
        total_steps: the run's length in optimizer steps (the evaluation cadence and the LR curve's sampling).
        per_epoch: optimizer steps an epoch (``Evaluation.epoch``); None when unknown (a loader without ``len()``).
        eval_every: evaluate every this many optimizer steps (and at the last step).
        on_eval: hears every finite evaluation; True stops the run.
        schedule: fed the validation loss at each evaluation when it is metric-driven (has ``report``).
    """

    def __init__(
        self,
        budget: TrainBudget,
        metric: str,
        direction: str,
        *,
        total_steps: int,
        per_epoch: Optional[int] = 1,
        eval_every: Optional[int] = None,
        on_eval: Optional[OnEval] = None,
        schedule: Any = None,
    ) -> None:
        self.budget, self.metric, self.maximize = budget, metric, direction == "maximize"
        self.total_steps, self.per_epoch = total_steps, per_epoch
        self.eval_every = eval_every or total_steps
        self.on_eval: OnEval = on_eval or _never_stop
        self.schedule = schedule if hasattr(schedule, "report") else None
        self.curve_every = max(1, total_steps // LR_CURVE_POINTS)
        self.evaluations: list[Evaluation] = []
        self.lr_curve: list[tuple[int, float]] = []
        self.best: Optional[Evaluation] = None
        self.since_best = 0
        self.first_loss: Optional[float] = None
        self.status: Status = "completed"
        self.reason = ""

    @property
    def stopped(self) -> bool:
        """Whether the run has ended before its last step (diverged, stopped, early-stopped)."""
        return self.status != "completed"

    # -- per optimizer step ---------------------------------------------------------------------------------------

    def record_lr(self, step: int, lr: float) -> None:
        """The LR used at optimizer step ``step`` (0-based); about ``LR_CURVE_POINTS`` points are kept. A step at or
        before the curve's last one is not recorded again (a run resumed from a checkpoint)."""
        if self.lr_curve and step <= self.lr_curve[-1][0]:
            return
        if step % self.curve_every == 0 or step == self.total_steps - 1:
            self.lr_curve.append((step, lr))

    def check_loss(self, step: int, loss: float) -> bool:
        """The training loss of optimizer step ``step`` (0-based); True (and the reason) when the run has diverged."""
        if self.first_loss is None:
            self.first_loss = loss
        if math.isfinite(loss) and loss <= divergence_limit(self.first_loss, self.budget.divergence_factor):
            return False
        self.diverged_on_loss(step, loss)
        return True

    def diverged_on_loss(self, step: int, loss: float) -> None:
        """Mark the run diverged at optimizer step ``step`` (0-based) with training loss ``loss``."""
        first = self.first_loss if self.first_loss is not None else loss
        self._stop("diverged", f"diverged at step {step + 1}: training loss {loss:.4g} (first loss {first:.4g})")

    def is_eval_step(self, steps_done: int) -> bool:
        """Whether the run evaluates after ``steps_done`` optimizer steps."""
        return steps_done % self.eval_every == 0 or steps_done == self.total_steps

    # -- per evaluation ---------------------------------------------------------------------------------------------

    def evaluation(
        self, steps_done: int, metrics: dict[str, float], train_loss: Optional[float], lr: float
    ) -> Evaluation:
        """The ``Evaluation`` after ``steps_done`` steps."""
        epoch = steps_done / self.per_epoch if self.per_epoch else math.nan
        return Evaluation(steps_done, epoch, metrics, train_loss, lr)

    def evaluated(self, evaluation: Evaluation) -> bool:
        """Record ``evaluation``: feed a metric-driven schedule, check it is finite, update the best and patience, and
        ask ``on_eval``. True when the run stops here (``status`` and ``reason`` say why)."""
        if self.schedule is not None and "loss" in evaluation.metrics:
            self.schedule.report(evaluation.metrics["loss"])
        if not all(math.isfinite(value) for value in evaluation.metrics.values()):
            self._stop("diverged", f"diverged at step {evaluation.step}: validation metrics {evaluation.metrics}")
            return True
        self.evaluations.append(evaluation)
        if self.best is None or self.better(evaluation, self.best):
            self.best, self.since_best = evaluation, 0
        else:
            self.since_best += 1
        if self.on_eval(evaluation):
            self._stop("stopped", f"stopped by the caller at step {evaluation.step}")
            return True
        patience = self.budget.patience
        if patience is not None and self.since_best >= patience:
            self._stop("early_stopped", f"no improvement in {patience} evaluations (step {evaluation.step})")
            return True
        return False

    def better(self, a: Evaluation, b: Evaluation) -> bool:
        """Whether evaluation ``a`` beats ``b`` on the run's metric."""
        x, y = a.metrics[self.metric], b.metrics[self.metric]
        return x > y if self.maximize else x < y

    # -- checkpoints --------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The run's bookkeeping as JSON-ready data (a checkpoint keeps it; a command trial sends it over its
        socket): every evaluation, which is best, patience, the first loss, the LR curve, the stop."""
        best = next((i for i, e in enumerate(self.evaluations) if e is self.best), None)
        return {
            "evaluations": [
                {"step": e.step, "epoch": e.epoch, "metrics": e.metrics, "train_loss": e.train_loss, "lr": e.lr}
                for e in self.evaluations
            ],
            "best": best,
            "since_best": self.since_best,
            "first_loss": self.first_loss,
            "lr_curve": [[step, lr] for step, lr in self.lr_curve],
            "status": self.status,
            "reason": self.reason,
        }

    def load_state_dict(self, state: dict[str, Any], *, lr_curve: bool = True) -> None:
        """Continue from what ``state_dict`` returned (``lr_curve`` False: keep this progress's own curve)."""
        self.evaluations = [
            Evaluation(int(e["step"]), float(e["epoch"]), dict(e["metrics"]), e["train_loss"], float(e["lr"]))
            for e in state["evaluations"]
        ]
        self.best = self.evaluations[state["best"]] if state["best"] is not None else None
        self.since_best, self.first_loss = int(state["since_best"]), state["first_loss"]
        if lr_curve:
            self.lr_curve = [(int(step), float(lr)) for step, lr in state["lr_curve"]]
        self.status, self.reason = state["status"], str(state["reason"])

    # -- the end ------------------------------------------------------------------------------------------------------

    def result(self, steps_done: int, seconds: float, extras: Optional[dict[str, Any]] = None) -> FitResult:
        """The run's ``FitResult`` after ``steps_done`` optimizer steps and ``seconds`` of training."""
        return FitResult(
            self.status,
            self.reason,
            self.evaluations,
            self.best,
            self.lr_curve,
            self.total_steps,
            steps_done,
            seconds,
            dict(extras or {}),
            objective=self.budget.objective,
        )

    def stop(self, status: Status, reason: str) -> None:
        """End the run here with ``status`` and ``reason`` (the first reason stands)."""
        if not self.stopped:
            self._stop(status, reason)

    def _stop(self, status: Status, reason: str) -> None:
        self.status, self.reason = status, reason


def _never_stop(evaluation: Evaluation) -> bool:
    return False
