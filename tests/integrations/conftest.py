"""Fixtures of the integration tests: one torch thread (the models are tiny), the examples as study files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integrations import EXAMPLES


@pytest.fixture(autouse=True)
def single_threaded(one_thread) -> None:
    """Every integration test with one torch thread (tests/conftest.py: the models are tiny)."""


@pytest.fixture
def example_study(workdir: Path):
    """``write(example, **changes)``: the example's study.yaml with top-level ``changes``, written to the working
    directory with ``train:`` pointing at the example's own train.py."""

    def write(example: str, **changes: Any) -> Path:
        folder = EXAMPLES / example
        data = yaml.safe_load((folder / "study.yaml").read_text())
        file, _, function = data["train"].partition(":")
        data.update(changes, train=f"{folder / file}:{function}")
        path = workdir / "study.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
