"""The Task protocol, the data a task hands to the trainer, and ``SimpleTask``.

A task is what gets trained: it builds a model, hands over its data, and says how to score outputs. The trainer
seeds torch, calls ``build_model()``, then takes the data one of two ways:

* in memory (``load_data()``, small data sets): moved to the device once, mini-batches sliced by index;
* streamed (``LoaderTask``: ``train_loader(batch_size, seed)`` and ``val_loader()``, e.g. ``torch.utils.data``
  ``DataLoader``s): each batch moved to the device as it comes.

Either way it averages ``metrics()`` over validation batches weighted by their size. So ``metrics`` must return
per-batch *means* over examples and always include ``"loss"``.

This module does not import torch: tensors are only touched through their methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Optional, Protocol, runtime_checkable

from tuner.errors import TunerError

DIRECTIONS = ("maximize", "minimize")

#: What an object must have to be used as a Task (attributes, then methods; a LoaderTask's loaders stand in for
#: ``load_data``).
TASK_ATTRIBUTES = ("name", "metric", "direction", "directions", "default_batch_size")
TASK_METHODS = ("build_model", "load_data", "loss", "metrics")
LOADER_METHODS = ("train_loader", "val_loader")

TrainLoaderFactory = Callable[[Optional[int], int], Iterable[Any]]
"""``train_loader(batch_size, seed)``: the training batches, ``(inputs, targets)`` pairs of tensors."""
ValLoaderFactory = Callable[[], Iterable[Any]]
"""``val_loader()``: the validation batches, ``(inputs, targets)`` pairs of tensors."""


@dataclass
class TaskData:
    """In-memory train and validation tensors; the first dimension of each indexes examples."""

    train_inputs: Any
    train_targets: Any
    val_inputs: Any
    val_targets: Any

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            inputs, targets = getattr(self, f"{split}_inputs"), getattr(self, f"{split}_targets")
            for name, tensor in ((f"{split}_inputs", inputs), (f"{split}_targets", targets)):
                if not hasattr(tensor, "shape") or len(tensor.shape) == 0:
                    raise ValueError(f"{name} must be a tensor with an examples dimension, got {type(tensor).__name__}")
            if inputs.shape[0] != targets.shape[0]:
                raise ValueError(
                    f"{split}_inputs and {split}_targets must have as many examples, "
                    f"got {inputs.shape[0]} and {targets.shape[0]}"
                )
            if inputs.shape[0] == 0:
                raise ValueError(f"{split} split is empty")

    @property
    def n_train(self) -> int:
        """Training examples."""
        return int(self.train_inputs.shape[0])

    @property
    def n_val(self) -> int:
        """Validation examples."""
        return int(self.val_inputs.shape[0])

    def to(self, device: Any) -> TaskData:
        """A copy with every tensor moved to ``device``."""
        return TaskData(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@runtime_checkable
class Task(Protocol):
    """What the trainer needs from a task (see the module docstring for the contract)."""

    name: str
    metric: str
    direction: str
    directions: Mapping[str, str]
    default_batch_size: Optional[int]

    def build_model(self) -> Any:
        """A fresh ``torch.nn.Module`` (the trainer seeds torch first)."""

    def load_data(self) -> TaskData:
        """The train and validation tensors (a ``LoaderTask`` that streams its data may lack this method)."""

    def loss(self, outputs: Any, targets: Any) -> Any:
        """The scalar mean training loss of a batch."""

    def metrics(self, outputs: Any, targets: Any) -> dict[str, float]:
        """Per-batch means of the validation metrics, ``loss`` included."""


@runtime_checkable
class PopulationTask(Task, Protocol):
    """A Task that can also score a population's stacked ``(N, B, ...)`` tensors in one pass (optional hooks of the
    protocol; ``SimpleTask`` has them). Either may be None: the population then maps ``loss``/``metrics`` over
    members.

    ``population_loss(outputs, targets) -> (N,)``: member ``i``'s ``loss(outputs[i], targets[i])``.
    ``population_metrics(outputs, targets) -> {name: (N,) tensor}``: member ``i``'s ``metrics``, as tensors.
    """

    @property
    def population_loss(self) -> Optional[Callable[[Any, Any], Any]]:
        """Member ``i``'s ``loss(outputs[i], targets[i])`` for every member at once, or None."""

    @property
    def population_metrics(self) -> Optional[Callable[[Any, Any], dict[str, Any]]]:
        """Member ``i``'s ``metrics`` as ``(N,)`` tensors for every member at once, or None."""


def population_hooks(task: Task) -> tuple[Optional[Callable[[Any, Any], Any]], Optional[Callable[[Any, Any], Any]]]:
    """(population_loss, population_metrics) of a task, (None, None) when it declares neither."""
    # getattr, not isinstance(task, PopulationTask): from Python 3.12 a runtime protocol check no longer sees
    # members a wrapper serves through __getattr__ (seen on the GPU machine's 3.12)
    return getattr(task, "population_loss", None), getattr(task, "population_metrics", None)


@runtime_checkable
class LoaderTask(Protocol):
    """A task whose data streams from loaders instead of ``load_data()`` (optional members of the Task protocol;
    ``SimpleTask`` has them, None unless given ``train_loader_fn`` and ``val_loader_fn``).

    ``train_loader(batch_size, seed)``: an iterable of ``(inputs, targets)`` pairs of tensors, e.g. a
    ``torch.utils.data.DataLoader``. ``batch_size`` is the trial's (None: the loader's own choice); ``seed`` is the
    trial's: the loader must seed its shuffling (and any augmentation) from it, e.g. ``DataLoader(...,
    shuffle=True, generator=torch.Generator().manual_seed(seed))``, so that a rerun of a trial is identical. The
    trainer calls it once a run and iterates the result once an epoch, so it must be re-iterable (a DataLoader, a
    list; not a generator). Its ``len()``, when it has one, is the number of batches an epoch; without one the
    budget must count steps.

    ``val_loader()``: an iterable of ``(inputs, targets)`` pairs, in a fixed order; called once a run and iterated
    once an evaluation.
    """

    @property
    def train_loader(self) -> Optional[TrainLoaderFactory]:
        """``train_loader(batch_size, seed)``, the training batches; or None (the task trains from ``load_data``)."""

    @property
    def val_loader(self) -> Optional[ValLoaderFactory]:
        """``val_loader()``, the validation batches; or None (the task trains from ``load_data``)."""


class Loaders(NamedTuple):
    """A task's two loader factories (``LoaderTask``)."""

    train: TrainLoaderFactory
    val: ValLoaderFactory


def loaders_of(task: Any) -> Optional[Loaders]:
    """The task's loaders when its data streams from them (``LoaderTask``), None when it trains from
    ``load_data()``; ``TunerError`` when it has only one of the two."""
    train, val = getattr(task, "train_loader", None), getattr(task, "val_loader", None)  # as population_hooks
    if train is None and val is None:
        return None
    if train is None or val is None:
        missing = "train_loader" if train is None else "val_loader"
        raise TunerError(
            f"task {getattr(task, 'name', '?')!r} has one loader but not {missing}: a task that streams its data "
            "needs train_loader and val_loader"
        )
    return Loaders(train, val)


def validate_directions(metric: str, direction: str, directions: Mapping[str, str]) -> None:
    """Raise ``ValueError`` unless ``direction`` is valid and ``directions[metric] == direction``."""
    for key, value in {**directions, metric: direction}.items():
        if value not in DIRECTIONS:
            raise ValueError(f"direction of {key!r} must be 'maximize' or 'minimize', got {value!r}")
    if "loss" not in directions:
        raise ValueError(f"directions must include 'loss', got directions={dict(directions)}")
    if metric not in directions:
        raise ValueError(f"metric {metric!r} is not in directions {sorted(directions)}")
    if directions[metric] != direction:
        raise ValueError(f"direction={direction!r} disagrees with directions[{metric!r}]={directions[metric]!r}")


def missing_task_members(obj: Any) -> list[str]:
    """The Task attributes and methods ``obj`` lacks (methods must be callable; ``train_loader`` and ``val_loader``
    stand in for ``load_data``)."""
    streams = all(callable(getattr(obj, name, None)) for name in LOADER_METHODS)
    methods = [name for name in TASK_METHODS if not (streams and name == "load_data")]
    missing = [name for name in TASK_ATTRIBUTES if not hasattr(obj, name)]
    missing += [f"{name}()" for name in methods if not callable(getattr(obj, name, None))]
    return missing


@dataclass
class SimpleTask:
    """A Task made of plain callables, for user task files::

        def make_task():
            return SimpleTask(name="mine", model_fn=build, data_fn=load, loss_fn=torch.nn.functional.cross_entropy,
                              metrics_fn=lambda out, y: {"accuracy": (out.argmax(1) == y).float().mean().item()},
                              metric="accuracy", direction="maximize")

    ``data_fn`` returns a ``TaskData`` (or a ``(train_x, train_y, val_x, val_y)`` tuple) and is called
    once per task object. Data too big for memory streams instead: ``train_loader_fn(batch_size, seed)`` and
    ``val_loader_fn()`` return iterables of ``(inputs, targets)`` batches, e.g. DataLoaders (see ``LoaderTask``:
    the train loader must seed its shuffling from ``seed``); give them both instead of ``data_fn``.
    ``loss_fn`` is required. ``metrics_fn`` may be omitted; ``"loss"`` is always added to the metrics.
    ``directions`` defaults to ``{"loss": "minimize", metric: direction}``.
    """

    name: str
    model_fn: Callable[[], Any]
    data_fn: Optional[Callable[[], Any]] = None
    loss_fn: Optional[Callable[[Any, Any], Any]] = None
    metrics_fn: Optional[Callable[[Any, Any], Mapping[str, Any]]] = None
    metric: str = "loss"
    direction: str = "minimize"
    directions: Mapping[str, str] = field(default_factory=dict)
    default_batch_size: Optional[int] = 64
    train_loader_fn: Optional[TrainLoaderFactory] = None
    val_loader_fn: Optional[ValLoaderFactory] = None
    _data: Optional[TaskData] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("model_fn", "loss_fn"):
            if not callable(getattr(self, name)):
                raise ValueError(f"{name} must be callable, got {name}={getattr(self, name)!r}")
        for name in ("data_fn", "metrics_fn", "train_loader_fn", "val_loader_fn"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise ValueError(f"{name} must be callable or None, got {name}={getattr(self, name)!r}")
        self._check_data_source()
        self.directions = {"loss": "minimize", self.metric: self.direction, **self.directions}
        validate_directions(self.metric, self.direction, self.directions)
        if self.default_batch_size is not None and self.default_batch_size < 1:
            raise ValueError(
                f"default_batch_size must be >= 1 or None, got default_batch_size={self.default_batch_size}"
            )

    def _check_data_source(self) -> None:
        """Exactly one source of data: ``data_fn``, or both loader fns."""
        loaders = {name: getattr(self, name) for name in ("train_loader_fn", "val_loader_fn")}
        given = [name for name, fn in loaders.items() if fn is not None]
        if len(given) == 1:
            missing = next(name for name in loaders if name not in given)
            raise ValueError(
                f"{missing} is missing: a task that streams its data needs train_loader_fn and "
                f"val_loader_fn, got {given[0]} only"
            )
        if given and self.data_fn is not None:
            raise ValueError("give data_fn (in-memory data) or train_loader_fn and val_loader_fn (streamed), not both")
        if not given and self.data_fn is None:
            raise ValueError("data_fn is missing: a task needs data_fn, or train_loader_fn and val_loader_fn")

    def build_model(self) -> Any:
        """A fresh model (the trainer seeds torch first)."""
        return self.model_fn()

    def load_data(self) -> TaskData:
        """The task's data, loaded once per task object."""
        if self.data_fn is None:
            raise TunerError(f"task {self.name!r} streams its data from loaders: it has no in-memory data (data_fn)")
        if self._data is None:
            data = self.data_fn()
            self._data = data if isinstance(data, TaskData) else TaskData(*data)
        return self._data

    @property
    def train_loader(self) -> Optional[TrainLoaderFactory]:
        """Optional loader hook (``LoaderTask``): ``train_loader_fn``, or None when the task has in-memory data."""
        return self.train_loader_fn

    @property
    def val_loader(self) -> Optional[ValLoaderFactory]:
        """Optional loader hook (``LoaderTask``): ``val_loader_fn``, or None when the task has in-memory data."""
        return self.val_loader_fn

    def loss(self, outputs: Any, targets: Any) -> Any:
        """Scalar mean loss of a batch."""
        return self.loss_fn(outputs, targets)  # type: ignore[misc]  # callable: checked in __post_init__

    def metrics(self, outputs: Any, targets: Any) -> dict[str, float]:
        """Per-batch means: ``metrics_fn``'s values plus ``"loss"``."""
        values = dict(self.metrics_fn(outputs, targets)) if self.metrics_fn is not None else {}
        if "loss" not in values:
            values["loss"] = self.loss(outputs, targets)
        return {key: _as_float(value) for key, value in values.items()}

    @property
    def population_loss(self) -> Optional[Callable[[Any, Any], Any]]:
        """Optional population hook: ``f(outputs, targets) -> (N,)``, member ``i``'s ``loss(outputs[i], targets[i])``
        for stacked ``(N, B, ...)`` tensors in one pass; None when ``loss_fn`` has no known stacked form."""
        return _stacked_loss(self.loss_fn)

    @property
    def population_metrics(self) -> Optional[Callable[[Any, Any], dict[str, Any]]]:
        """Optional population hook: ``f(outputs, targets) -> {name: (N,) tensor}``, member ``i``'s ``metrics`` (as
        tensors) for stacked ``(N, B, ...)`` tensors in one pass; None when no stacked form is known."""
        if self.metrics_fn is classification_metrics:  # its "loss" is its own, whatever loss_fn is
            return stacked_classification_metrics
        loss = _stacked_loss(self.loss_fn)
        if self.metrics_fn is None and loss is not None:
            return lambda outputs, targets: {"loss": loss(outputs, targets)}
        return None


def _as_float(value: Any) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)


@dataclass(frozen=True)
class TaskSpec:
    """A built-in task: its name, a one-line description, ``factory(**options)`` and the option defaults."""

    name: str
    description: str
    factory: Callable[..., Task]
    options: Mapping[str, Any]

    def describe(self) -> dict[str, Any]:
        """Plain data for the catalog (``tuner tasks``)."""
        return {"name": self.name, "description": self.description, "options": dict(self.options)}


# --- shared helpers for classification-style tasks (torch imported lazily) ---------------------


def cross_entropy(logits: Any, targets: Any) -> Any:
    """Mean cross-entropy; logits ``(..., classes)``, targets ``(...)`` class indices."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def classification_metrics(logits: Any, targets: Any) -> dict[str, float]:
    """Mean cross-entropy and accuracy over every predicted position."""
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    return {
        "loss": cross_entropy(flat_logits, flat_targets).item(),
        "accuracy": (flat_logits.argmax(-1) == flat_targets).float().mean().item(),
    }


CLASSIFICATION_DIRECTIONS = {"loss": "minimize", "accuracy": "maximize"}


# --- the same losses and metrics over a population's stacked (N, B, ...) tensors, one value per member ---------
# Classes move to dimension 1 because log-softmax over a short last dimension is many times slower on CPU.


def _mean_over_targets(losses: Any, targets: Any, ignore_index: int = -100) -> Any:
    """Per-member means as F.cross_entropy's "mean" takes them: ignored targets count for nothing."""
    counted = (targets != ignore_index).flatten(1).sum(1)
    return losses.flatten(1).sum(1) / counted


def stacked_cross_entropy(logits: Any, targets: Any) -> Any:
    """``cross_entropy`` of each member: logits ``(N, ..., classes)``, targets ``(N, ...)`` -> ``(N,)``."""
    import torch.nn.functional as F

    n, classes = logits.shape[0], logits.shape[-1]
    losses = F.cross_entropy(logits.reshape(n, -1, classes).transpose(1, 2), targets.reshape(n, -1), reduction="none")
    return _mean_over_targets(losses, targets)


def _stacked_torch_cross_entropy(outputs: Any, targets: Any) -> Any:
    """``F.cross_entropy(outputs[i], targets[i])`` of each member (classes on a member's dimension 1)."""
    import torch
    import torch.nn.functional as F

    if outputs.ndim < 3 or targets.is_floating_point():  # one example per member, or class probabilities
        return torch.vmap(F.cross_entropy)(outputs, targets)
    return _mean_over_targets(F.cross_entropy(outputs.movedim(2, 1), targets, reduction="none"), targets)


def _stacked_mse(outputs: Any, targets: Any) -> Any:
    """``F.mse_loss(outputs[i], targets[i])`` of each member."""
    import torch
    import torch.nn.functional as F

    if outputs.shape != targets.shape:  # a member's own broadcasting
        return torch.vmap(F.mse_loss)(outputs, targets)
    return F.mse_loss(outputs, targets, reduction="none").flatten(1).mean(1)


def _stacked_loss(loss_fn: Any) -> Optional[Callable[[Any, Any], Any]]:
    if loss_fn is cross_entropy:
        return stacked_cross_entropy
    import torch.nn.functional as F

    return {F.cross_entropy: _stacked_torch_cross_entropy, F.mse_loss: _stacked_mse}.get(loss_fn)


def stacked_classification_metrics(logits: Any, targets: Any) -> dict[str, Any]:
    """``classification_metrics`` of each member as ``(N,)`` tensors: logits ``(N, ..., classes)``, targets
    ``(N, ...)``."""
    n = logits.shape[0]
    correct = logits.argmax(-1).reshape(n, -1) == targets.reshape(n, -1)
    return {"loss": stacked_cross_entropy(logits, targets), "accuracy": correct.float().mean(1)}
