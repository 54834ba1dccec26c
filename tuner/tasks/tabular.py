"""``tabular-mlp``: an MLP on a small tabular set that ships inside scikit-learn (offline).

``dataset``: ``breast-cancer`` (569 rows, 30 features, 2 classes) or ``wine`` (178 rows, 13 features, 3 classes).
As for the digits, the split is stratified and seeded and the features are standardized with the train split's
statistics only.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any, Union

from tuner.errors import lookup
from tuner.tasks.base import CLASSIFICATION_DIRECTIONS, SimpleTask, TaskData, classification_metrics, cross_entropy
from tuner.tasks.digits import check_fraction, sizes

DATASETS = {"breast-cancer": "load_breast_cancer", "wine": "load_wine"}
"""Dataset name -> its scikit-learn loader (a file shipped inside the package)."""


@lru_cache(maxsize=8)
def _split(dataset: str, val_fraction: float, split_seed: int) -> tuple[Any, Any, Any, Any, int]:
    """Stratified, standardized numpy split and the number of classes (cached per process)."""
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    bunch = getattr(sklearn.datasets, DATASETS[dataset])()
    x_train, x_val, y_train, y_val = train_test_split(
        bunch.data, bunch.target, test_size=val_fraction, random_state=split_seed, stratify=bunch.target
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    return (x_train - mean) / std, y_train, (x_val - mean) / std, y_val, len(bunch.target_names)


def load(dataset: str, val_fraction: float, split_seed: int) -> TaskData:
    """The split as float32 features ``(N, F)`` and long labels."""
    import torch

    x_train, y_train, x_val, y_val, _ = _split(dataset, val_fraction, split_seed)
    return TaskData(
        torch.tensor(x_train, dtype=torch.float32),
        torch.tensor(y_train, dtype=torch.long),
        torch.tensor(x_val, dtype=torch.float32),
        torch.tensor(y_val, dtype=torch.long),
    )


def build_mlp(n_features: int, hidden: tuple[int, ...], n_classes: int) -> Any:
    """Linear-ReLU layers of widths ``hidden``, then a linear head over ``n_classes``."""
    from torch import nn

    widths = (n_features, *hidden)
    layers: list[Any] = []
    for n_in, n_out in zip(widths, widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], n_classes))


def tabular_mlp(
    dataset: str = "breast-cancer",
    val_fraction: float = 0.3,
    hidden: Union[int, Sequence[int]] = (32,),
    split_seed: int = 0,
) -> SimpleTask:
    """An MLP on a scikit-learn tabular set (``breast-cancer`` or ``wine``); maximize validation accuracy."""
    lookup(DATASETS, "dataset", dataset)
    val_fraction = check_fraction(val_fraction, "val_fraction")
    x_train, _, _, _, n_classes = _split(dataset, val_fraction, int(split_seed))
    return SimpleTask(
        name="tabular-mlp",
        model_fn=partial(build_mlp, x_train.shape[1], sizes(hidden, "hidden"), n_classes),
        data_fn=partial(load, dataset, val_fraction, int(split_seed)),
        loss_fn=cross_entropy,
        metrics_fn=classification_metrics,
        metric="accuracy",
        direction="maximize",
        directions=CLASSIFICATION_DIRECTIONS,
        default_batch_size=32,
    )
