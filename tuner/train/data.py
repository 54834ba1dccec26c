"""Where a run's batches come from: a task's in-memory tensors sliced by index, or its loaders.

``data_source(task, device, batch_size, seed)`` picks one. ``TensorBatches`` serves a task with ``load_data()``: the
tensors move to the device once per process (``data_on_device``), each epoch is a fresh ``torch.randperm`` of the
run's own generator, validation goes in chunks of ``EVAL_CHUNK``. ``LoaderBatches`` serves a ``LoaderTask``:
``train_loader(batch_size, seed)`` is iterated again each epoch, ``val_loader()`` each evaluation, and every batch is
checked to be an ``(inputs, targets)`` pair of tensors (``as_batch``). ``to_device`` moves a batch where the model is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional, Protocol

import torch

from tuner.errors import TunerError
from tuner.tasks import Loaders, Task, TaskData, loaders_of

EVAL_CHUNK = 4096
"""Validation examples of in-memory data evaluated at once (metrics are averaged over chunks weighted by size)."""

Batch = tuple[torch.Tensor, torch.Tensor]
"""One batch: ``(inputs, targets)``, the first dimension of each indexing examples."""

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


class DataSource(Protocol):
    """A run's batches: ``epoch()`` one pass over the training data, ``validation()`` one over the validation data."""

    batches_per_epoch: Optional[int]  # None: unknown (a loader without len())

    def epoch(self) -> Iterator[Batch]:
        """One pass over the training data, in this epoch's order."""
        ...

    def validation(self) -> Iterator[Batch]:
        """One pass over the validation data, in a fixed order."""
        ...

    def generators(self) -> list[torch.Generator]:
        """The generators that order the training data (a checkpoint keeps their states)."""
        ...


def data_source(task: Task, device: torch.device, batch_size: Optional[int], seed: int) -> DataSource:
    """The batches of one run of ``task``: its loaders when it streams (``loaders_of``), else its in-memory data on
    ``device``. ``batch_size`` None: the whole training set a batch (in memory), the loader's choice (streamed)."""
    loaders = loaders_of(task)
    if loaders is None:
        return TensorBatches(data_on_device(task, device), batch_size, seed)
    return LoaderBatches(loaders, batch_size, seed)


class TensorBatches:
    """In-memory data: mini-batches sliced by index from a fresh permutation each epoch (the run's own generator,
    seeded with the run's seed), validation in chunks of ``EVAL_CHUNK``."""

    def __init__(self, data: TaskData, batch_size: Optional[int], seed: int) -> None:
        self.data, self.batch_size = data, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_per_epoch: Optional[int] = 1 if batch_size is None else math.ceil(data.n_train / batch_size)

    def epoch(self) -> Iterator[Batch]:
        """The epoch's mini-batches (the whole set once when there is no batch size)."""
        inputs, targets = self.data.train_inputs, self.data.train_targets
        if self.batch_size is None:
            yield inputs, targets
            return
        order = torch.randperm(len(inputs), generator=self.generator).to(inputs.device)
        for start in range(0, len(inputs), self.batch_size):
            index = order[start : start + self.batch_size]
            yield inputs[index], targets[index]

    def validation(self) -> Iterator[Batch]:
        """The validation set in chunks of ``EVAL_CHUNK``."""
        inputs, targets = self.data.val_inputs, self.data.val_targets
        for start in range(0, len(inputs), EVAL_CHUNK):
            yield inputs[start : start + EVAL_CHUNK], targets[start : start + EVAL_CHUNK]

    def generators(self) -> list[torch.Generator]:
        """The run's own generator (each epoch's permutation)."""
        return [self.generator]


class LoaderBatches:
    """Streamed data: the task's loaders, made once a run (``train_loader(batch_size, seed)``, ``val_loader()``) and
    iterated again each epoch / evaluation; each batch checked by ``as_batch``."""

    def __init__(self, loaders: Loaders, batch_size: Optional[int], seed: int) -> None:
        self.train: Iterable[Any] = loaders.train(batch_size, seed)
        self.val: Iterable[Any] = loaders.val()
        self.batches_per_epoch = length(self.train)

    def epoch(self) -> Iterator[Batch]:
        """One pass over the train loader."""
        return _checked(self.train, "train_loader")

    def validation(self) -> Iterator[Batch]:
        """One pass over the val loader."""
        return _checked(self.val, "val_loader")

    def generators(self) -> list[torch.Generator]:
        """The train loader's generators: a ``DataLoader``'s ``generator`` and its sampler's (its own one, or the
        global generator when it has none -- that one a checkpoint keeps anyway)."""
        sampler = getattr(self.train, "sampler", None)
        found = [getattr(owner, "generator", None) for owner in (self.train, sampler)]
        unique = {id(g): g for g in found if isinstance(g, torch.Generator)}
        return list(unique.values())


def length(loader: Iterable[Any]) -> Optional[int]:
    """``len(loader)``, or None when it has none (an iterable-style dataset, a generator)."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _checked(loader: Iterable[Any], name: str) -> Iterator[Batch]:
    empty = True
    for batch in loader:
        empty = False
        yield as_batch(batch, name)
    if empty:
        raise TunerError(
            f"the task's {name} yielded no batch (a generator is spent after one pass: return a re-iterable, "
            "e.g. a torch.utils.data.DataLoader or a list)"
        )


def as_batch(batch: Any, source: str) -> Batch:
    """``batch`` as ``(inputs, targets)`` when it is a pair of tensors, else a ``TunerError`` saying what ``source``
    yielded."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        return batch[0], batch[1]
    raise TunerError(f"the task's {source} must yield (inputs, targets) pairs of tensors; it yielded {describe(batch)}")


def describe(value: Any) -> str:
    """What a loader yielded, in a few words: its type, and its keys, shape or items."""
    if isinstance(value, torch.Tensor):
        return f"a single tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {sorted(str(key) for key in value)}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(type(item).__name__ for item in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"a {type(value).__name__} of {len(value)} items ({items})"
    return f"a {type(value).__name__}"


def to_device(batch: Batch, device: torch.device, channels_last: bool = False) -> Batch:
    """``batch`` on ``device``; from the CPU to CUDA through pinned memory without blocking. ``channels_last``: 4-D
    inputs in ``torch.channels_last`` memory format."""
    inputs, targets = batch
    layout = torch.channels_last if channels_last and inputs.ndim == 4 else torch.preserve_format
    return _moved(inputs, device, layout), _moved(targets, device, torch.preserve_format)


def _moved(tensor: torch.Tensor, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
    if tensor.device == device and layout == torch.preserve_format:
        return tensor
    streamed = device.type == "cuda" and tensor.device.type == "cpu"
    if streamed and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=streamed, memory_format=layout)
