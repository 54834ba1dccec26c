"""``digits-mlp`` and ``digits-cnn``: scikit-learn's bundled 8x8 digits (1797 images, 10 classes).

Offline: ``load_digits`` reads a file shipped inside scikit-learn. The split is stratified and seeded,
the features are standardized with the train split's statistics only.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any, Union

from tuner.tasks.base import CLASSIFICATION_DIRECTIONS, SimpleTask, TaskData, classification_metrics, cross_entropy

N_CLASSES = 10
IMAGE_SIDE = 8


def sizes(value: Union[int, Sequence[int]], name: str) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints (an int, or a list from a YAML file)."""
    values = (value,) if isinstance(value, int) else tuple(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"{name} must be a positive int or a list of positive ints, got {name}={value!r}")
    return values


def check_fraction(value: float, name: str) -> float:
    """``value`` when it is a fraction in (0, 1), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {name}={value!r}")
    return float(value)


@lru_cache(maxsize=8)
def _split(val_fraction: float, split_seed: int) -> tuple[Any, Any, Any, Any]:
    """Stratified, standardized numpy split (cached per process)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x_train, x_val, y_train, y_val = train_test_split(
        bunch.data, bunch.target, test_size=val_fraction, random_state=split_seed, stratify=bunch.target
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0  # corner pixels that are always blank
    return (x_train - mean) / std, y_train, (x_val - mean) / std, y_val


def load(val_fraction: float, split_seed: int, image: bool) -> TaskData:
    """The digits split as float32 features ``(N, 64)``, or images ``(N, 1, 8, 8)`` when ``image``."""
    import torch

    x_train, y_train, x_val, y_val = _split(val_fraction, split_seed)
    shape = (-1, 1, IMAGE_SIDE, IMAGE_SIDE) if image else (-1, IMAGE_SIDE * IMAGE_SIDE)

    def features(x: Any) -> Any:
        return torch.tensor(x, dtype=torch.float32).reshape(shape)

    def labels(y: Any) -> Any:
        return torch.tensor(y, dtype=torch.long)

    return TaskData(features(x_train), labels(y_train), features(x_val), labels(y_val))


def build_mlp(hidden: tuple[int, ...]) -> Any:
    """Linear-ReLU layers of widths ``hidden``, then a 10-way linear head."""
    from torch import nn

    widths = (IMAGE_SIDE * IMAGE_SIDE, *hidden)
    layers: list[Any] = []
    for n_in, n_out in zip(widths, widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], N_CLASSES))


def build_cnn(channels: tuple[int, ...], in_channels: int = 1, side: int = IMAGE_SIDE) -> Any:
    """3x3 conv-ReLU layers of ``channels`` with a 2x2 max-pool after each, then a linear head."""
    from torch import nn

    layers: list[Any] = []
    for n_in, n_out in zip((in_channels, *channels), channels):
        layers += [nn.Conv2d(n_in, n_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    out_side = pooled_side(side, channels)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels[-1] * out_side * out_side, N_CLASSES))


def pooled_side(side: int, channels: tuple[int, ...]) -> int:
    """The image side after one 2x2 pool per conv layer; raises if it would vanish."""
    out_side = side >> len(channels)
    if out_side < 1:
        raise ValueError(f"too many conv layers for {side}x{side} images, got channels={list(channels)}")
    return out_side


def _classifier(name: str, model_fn: Any, data_fn: Any, batch_size: int) -> SimpleTask:
    return SimpleTask(
        name=name,
        model_fn=model_fn,
        data_fn=data_fn,
        loss_fn=cross_entropy,
        metrics_fn=classification_metrics,
        metric="accuracy",
        direction="maximize",
        directions=CLASSIFICATION_DIRECTIONS,
        default_batch_size=batch_size,
    )


def digits_mlp(val_fraction: float = 0.2, hidden: Union[int, Sequence[int]] = (64,), split_seed: int = 0) -> SimpleTask:
    """An MLP on the standardized 64 pixel features; maximize validation accuracy."""
    data_fn = partial(load, check_fraction(val_fraction, "val_fraction"), int(split_seed), False)
    return _classifier("digits-mlp", partial(build_mlp, sizes(hidden, "hidden")), data_fn, 64)


def digits_cnn(
    val_fraction: float = 0.2, channels: Union[int, Sequence[int]] = (16, 32), split_seed: int = 0
) -> SimpleTask:
    """A small CNN on the 1x8x8 images; maximize validation accuracy."""
    channels = sizes(channels, "channels")
    pooled_side(IMAGE_SIDE, channels)  # validate the depth now, not in the first trial
    data_fn = partial(load, check_fraction(val_fraction, "val_fraction"), int(split_seed), True)
    return _classifier("digits-cnn", partial(build_cnn, channels), data_fn, 64)
