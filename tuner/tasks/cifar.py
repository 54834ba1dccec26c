"""``cifar10``: CIFAR-10 read from a local directory in the standard "python version" format.

``root`` holds ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and ``batches.meta``; each batch is a
pickle of a dict with ``b"data"`` (uint8, ``(N, 3072)``, channel-major 32x32 images) and ``b"labels"``.
Nothing is ever downloaded. The batches are pickles, read with an unpickler that builds only what a CIFAR-10 batch
holds (dicts, lists, bytes, numbers and numpy arrays): a pickle that names anything else -- ``os.system`` in a
planted file -- is refused, never run. Inputs are normalized with the per-channel mean and std of the (possibly
limited) train split.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Optional, Union

from tuner.errors import TunerError
from tuner.tasks.base import CLASSIFICATION_DIRECTIONS, SimpleTask, TaskData, classification_metrics, cross_entropy
from tuner.tasks.digits import build_cnn, pooled_side, sizes

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CHANNELS, SIDE, N_CLASSES = 3, 32, 10
PIXELS = CHANNELS * SIDE * SIDE


def check_root(root: Optional[Union[str, Path]]) -> Path:
    """``root`` as a Path that holds every CIFAR-10 file, or a ``TunerError`` naming what is missing."""
    if root is None:
        raise TunerError("task cifar10 needs the option root: a directory with the CIFAR-10 python batches")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise TunerError(f"cifar10 root {str(path)!r} is not a directory")
    missing = [name for name in (*TRAIN_FILES, TEST_FILE, META_FILE) if not (path / name).is_file()]
    if missing:
        raise TunerError(
            f"cifar10 root {str(path)!r} lacks {', '.join(missing)} (expected the CIFAR-10 python batches)"
        )
    return path


SAFE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }
)
"""The only globals a CIFAR-10 batch pickle refers to (numpy's array reconstruction)."""


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds CIFAR-10 batches and nothing else (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which a CIFAR-10 batch never holds: refused, not run"
            )
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[Any, Any]:
    """``(data uint8 (N, 3072), labels int64 (N,))`` from one batch pickle, or a ``TunerError`` naming the file."""
    import numpy as np

    try:
        with path.open("rb") as handle:
            batch = BatchUnpickler(handle, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as error:  # unpickling errors come in many types
        raise TunerError(f"cannot read CIFAR-10 batch {str(path)!r}: {type(error).__name__}: {error}") from error
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise TunerError(
            f"CIFAR-10 batch {str(path)!r}: b'data' must be uint8 (N, {PIXELS}), got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) >= N_CLASSES:
        raise TunerError(f"CIFAR-10 batch {str(path)!r}: b'labels' must be {data.shape[0]} ints in [0, {N_CLASSES})")
    return data, labels


@lru_cache(maxsize=2)
def _arrays(root: str, limit: Optional[int]) -> tuple[Any, Any, Any, Any]:
    import numpy as np

    path = Path(root)
    train = [read_batch(path / name) for name in TRAIN_FILES]
    x_train, y_train = np.concatenate([x for x, _ in train])[:limit], np.concatenate([y for _, y in train])[:limit]
    x_val, y_val = read_batch(path / TEST_FILE)
    return x_train, y_train, x_val, y_val


def load(root: str, limit: Optional[int]) -> TaskData:
    """Float32 ``(N, 3, 32, 32)`` images normalized per channel with train statistics; long labels."""
    import torch

    x_train, y_train, x_val, y_val = _arrays(root, limit)

    def images(x: Any) -> Any:
        return torch.tensor(x, dtype=torch.float32).reshape(-1, CHANNELS, SIDE, SIDE) / 255.0

    train_images, val_images = images(x_train), images(x_val)
    mean = train_images.mean(dim=(0, 2, 3), keepdim=True)
    std = train_images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return TaskData((train_images - mean) / std, torch.tensor(y_train), (val_images - mean) / std, torch.tensor(y_val))


def cifar10(
    root: Optional[str] = None, limit: Optional[int] = None, channels: Union[int, Sequence[int]] = (32, 64)
) -> SimpleTask:
    """A small CNN on CIFAR-10 from ``root``; maximize test-batch accuracy."""
    path = check_root(root)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None (all), got limit={limit}")
    channels = sizes(channels, "channels")
    pooled_side(SIDE, channels)
    return SimpleTask(
        name="cifar10",
        model_fn=partial(build_cnn, channels, CHANNELS, SIDE),
        data_fn=partial(load, str(path.resolve()), limit),
        loss_fn=cross_entropy,
        metrics_fn=classification_metrics,
        metric="accuracy",
        direction="maximize",
        directions=CLASSIFICATION_DIRECTIONS,
        default_batch_size=128,
    )
