"""Framework integrations for ``train:`` functions: ``tuner.integrations.lightning`` (a Lightning callback and
``configure_optimizers``) and ``tuner.integrations.hf`` (a Hugging Face ``TrainerCallback`` and ``optimizers``).

Importing this package imports no framework; each submodule imports its own on first use and, when it is missing,
raises ``MissingExtraError`` (a ``TunerError`` and an ``ImportError``) naming the extra that installs it:
``pip install 'tuner[lightning]'`` or ``pip install 'tuner[hf]'``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["hf", "lightning"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
