"""The table of built-in tasks. All of them are offline: their data ships with Python or scikit-learn,
or (CIFAR-10) is read from a directory the user gives."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from tuner.tasks.base import Task, TaskSpec
from tuner.tasks.charlm import charlm
from tuner.tasks.cifar import cifar10
from tuner.tasks.digits import digits_cnn, digits_mlp
from tuner.tasks.quadratic import quadratic
from tuner.tasks.tabular import tabular_mlp


def _spec(name: str, description: str, factory: Callable[..., Task]) -> TaskSpec:
    """A spec whose option defaults are read from the factory's signature (one source of truth)."""
    options = {key: param.default for key, param in inspect.signature(factory).parameters.items()}
    return TaskSpec(name=name, description=description, factory=factory, options=options)


BUILTIN_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _spec("digits-mlp", "MLP on scikit-learn's 8x8 digits (1797 images); maximize val accuracy", digits_mlp),
        _spec("digits-cnn", "small CNN on scikit-learn's 8x8 digits (1x8x8 images); maximize val accuracy", digits_cnn),
        _spec("quadratic", "noisy ill-conditioned quadratic as linear regression; minimize val loss", quadratic),
        _spec("charlm", "tiny transformer character LM on Python's bundled docs; minimize val nats/char", charlm),
        _spec(
            "tabular-mlp",
            "MLP on a scikit-learn tabular set (option dataset: breast-cancer or wine); maximize val accuracy",
            tabular_mlp,
        ),
        _spec("cifar10", "small CNN on CIFAR-10 read from a local directory (option root); maximize accuracy", cifar10),
    )
}
