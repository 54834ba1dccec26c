"""Search-space vocabulary: Float, Int, Choice, Beta and Fixed.

Each dimension maps 1:1 onto an Optuna distribution but this module never imports Optuna:
``suggest(trial, name)`` only calls the ``trial.suggest_*`` methods (duck typing), so the catalog
tables that use these types stay cheap to import.

``Beta`` is the one twist: a momentum-like coefficient close to 1 (β2 = 0.999) is sampled on a
log scale of ``1 - β``, so 0.9, 0.99 and 0.999 are equally likely. Its Optuna parameter is named
``<name>.one_minus`` and holds ``1 - β``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Union


class TrialLike(Protocol):
    """The part of ``optuna.Trial`` a dimension needs."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        """A float in [low, high] (log scale when ``log``)."""

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        """An int in [low, high] (log scale when ``log``)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        """One of ``choices``."""


@dataclass(frozen=True)
class Float:
    """A real number in [low, high], optionally on a log scale."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"a range needs finite bounds, got low={self.low}, high={self.high}")
        if not self.low <= self.high:
            raise ValueError(f"low must be <= high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got low={self.low}")

    def suggest(self, trial: TrialLike, name: str) -> float:
        """Suggest this dimension as the trial's parameter ``name``."""
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def grid(self, n: int) -> list[float]:
        """``n`` values from low to high, evenly spaced (on a log scale when ``log``)."""
        if n == 1 or self.low == self.high:
            return [self.low]
        if self.log:
            a, b = math.log(self.low), math.log(self.high)
            inner = [math.exp(a + (b - a) * i / (n - 1)) for i in range(1, n - 1)]
        else:
            inner = [self.low + (self.high - self.low) * i / (n - 1) for i in range(1, n - 1)]
        return [self.low, *inner, self.high]  # exact ends: exp(log(x)) may fall just outside the range

    def describe(self) -> dict[str, Any]:
        """The dimension as plain data (``tuner optimizers --json``)."""
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Int:
    """An integer in [low, high], optionally on a log scale."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"low must be <= high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got low={self.low}")

    def suggest(self, trial: TrialLike, name: str) -> int:
        """Suggest this dimension as the trial's parameter ``name``."""
        return trial.suggest_int(name, self.low, self.high, log=self.log)

    def grid(self, n: int) -> list[int]:
        """Up to ``n`` distinct integers from low to high."""
        values = Float(self.low, self.high, self.log).grid(n)
        return sorted({int(round(v)) for v in values})

    def describe(self) -> dict[str, Any]:
        """The dimension as plain data."""
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Choice:
    """One of a fixed list of options (str, int, float or bool)."""

    options: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.options) == 0:
            raise ValueError("a choice needs at least one option, got an empty list")
        _check_finite(self.options)
        object.__setattr__(self, "options", tuple(self.options))

    def suggest(self, trial: TrialLike, name: str) -> Any:
        """Suggest one of the options as the trial's parameter ``name``."""
        return trial.suggest_categorical(name, list(self.options))

    def grid(self, n: int) -> list[Any]:
        """Every option."""
        return list(self.options)

    def describe(self) -> dict[str, Any]:
        """The dimension as plain data."""
        return {"type": "choice", "options": list(self.options)}


@dataclass(frozen=True)
class Beta:
    """A coefficient β in [low, high] ⊂ [0, 1), sampled log-uniformly in ``1 - β``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high < 1:
            raise ValueError(f"a beta range needs 0 <= low <= high < 1, got low={self.low}, high={self.high}")

    @property
    def _one_minus(self) -> Float:
        return Float(1 - self.high, 1 - self.low, log=True)

    def suggest(self, trial: TrialLike, name: str) -> float:
        """Suggest ``1 - beta`` (log scale) as the trial's parameter ``<name>.one_minus``; returns beta."""
        return 1.0 - self._one_minus.suggest(trial, f"{name}.one_minus")

    def grid(self, n: int) -> list[float]:
        """``n`` betas, evenly spaced in log(1 - beta)."""
        return [1.0 - v for v in self._one_minus.grid(n)]

    def optuna_grid(self, n: int) -> list[float]:
        """Grid values of the Optuna parameter ``<name>.one_minus`` (``1 - β``)."""
        return self._one_minus.grid(n)

    def describe(self) -> dict[str, Any]:
        """The dimension as plain data."""
        return {"type": "beta", "low": self.low, "high": self.high, "scale": "log(1-beta)"}


@dataclass(frozen=True)
class Fixed:
    """A value that is not searched (a pinned hyperparameter)."""

    value: Any

    def __post_init__(self) -> None:
        _check_finite([self.value])

    def suggest(self, trial: TrialLike, name: str) -> Any:
        """The fixed value (nothing is suggested)."""
        return self.value

    def grid(self, n: int) -> list[Any]:
        """The fixed value alone."""
        return [self.value]

    def describe(self) -> dict[str, Any]:
        """The dimension as plain data."""
        return {"type": "fixed", "value": self.value}


Dimension = Union[Float, Int, Choice, Beta, Fixed]


def optuna_param_names(dimension: Dimension, name: str) -> list[str]:
    """The Optuna parameter names a dimension registers when suggested under ``name``."""
    if isinstance(dimension, Fixed):
        return []
    if isinstance(dimension, Beta):
        return [f"{name}.one_minus"]
    return [name]


def _check_finite(values: Any) -> None:
    """Numbers must be finite: ``.inf`` or ``.nan`` in a study file is a mistake, not a value to search."""
    for value in values:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"values must be finite numbers, got {value!r}")
