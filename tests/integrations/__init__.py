"""Tests of tuner.integrations: the Lightning and Hugging Face callbacks, run for real through the examples."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import ROOT

EXAMPLES = ROOT / "examples"
"""The examples folder: examples/lightning and examples/hf each hold a study.yaml and its train.py."""


def require(module: str, extra: str) -> ModuleType:
    """``module``, or skip the test module when the extra is not installed -- except in CI (``$CI`` set), where the
    extras are installed (``scripts/setup.sh test``) and a missing one must fail, not skip."""
    if os.environ.get("CI"):
        try:
            return importlib.import_module(module)
        except ImportError as error:
            pytest.fail(f"{module} is not installed in CI: scripts/setup.sh test installs tuner[{extra}] ({error})")
    return pytest.importorskip(module, reason=f"needs the {extra} extra: pip install 'tuner[{extra}]'")


def example_module(example: str) -> ModuleType:
    """The example's train.py as a module (loaded once), for tests that drive its pieces directly."""
    name = f"tuner_example_{example}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / example / "train.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def make_trial(recipe: Any, reporter: Any = None, **budget: Any) -> Any:
    """A ``tuner.Trial`` of a study of ``accuracy`` (maximized), outside a study: ``reporter(evaluation)`` hears
    every report (True: prune the trial)."""
    from tuner.train.progress import TrainBudget
    from tuner.train.trial import Trial, TrialInfo

    return Trial(TrialInfo(0, "test", recipe, {}, 0, "cpu", TrainBudget(**budget), "accuracy", "maximize"), reporter)
