"""Tests of tuner.integrations: the Lightning and Hugging Face callbacks, run for real through the examples."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(module: str, extra: str) -> ModuleType:
    """``module``, or skip the test module when the extra is not installed -- except in CI (``$CI`` set), where the
    extras are installed (``scripts/setup.sh test``) and a missing one must fail, not skip."""
    if os.environ.get("CI"):
        try:
            return importlib.import_module(module)
        except ImportError as error:
            pytest.fail(f"{module} is not installed in CI: scripts/setup.sh test installs tuner[{extra}] ({error})")
    return pytest.importorskip(module, reason=f"needs the {extra} extra: pip install 'tuner[{extra}]'")
