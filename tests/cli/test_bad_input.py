"""Bad input comes out clean: exit 2, the file/field/value, no traceback, nothing written; read-only commands never
create a storage; a run whose every trial failed exits 1 and says why."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tests.helpers import FIXTURES, write_study


@pytest.mark.parametrize("command", [("show", "nope"), ("best", "nope"), ("export", "nope"), ("report", "nope")])
def test_read_only_commands_on_a_fresh_folder_create_nothing(workdir: Path, cli, command: tuple) -> None:
    result = cli(*command)
    assert result.exit_code == 2 and "no study named 'nope'" in result.output and "Traceback" not in result.output
    assert list(workdir.iterdir()) == []
    listing = cli("ls")
    assert listing.exit_code == 0 and "no studies in sqlite:///" in listing.output and list(workdir.iterdir()) == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"space": {"optimizers": {"adam": {"lr": {"low": 1e-4, "high": float("inf")}}}}},
            "a range needs finite bounds",
        ),
        ({"space": {"optimizers": {"adam": {"lr": float("nan")}}}}, "values must be finite numbers, got nan"),
        (
            {"task": {"name": "digits-mlp", "options": {"val_fraction": "half"}}},
            "task 'digits-mlp': bad options {'val_fraction': 'half'}: val_fraction must be a number in (0, 1)",
        ),
        ({"name": "x" * 501}, "name: String should have at most 200 characters"),
    ],
)
def test_bad_values_exit_2_before_anything_is_written(workdir: Path, cli, changes: dict, message: str) -> None:
    result = cli("run", write_study(workdir, **changes))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (workdir / "tuner.db").exists() and not (workdir / "mlflow.db").exists()


def test_a_run_whose_every_trial_failed_exits_1_with_the_reasons(workdir: Path, cli) -> None:
    shutil.copy(FIXTURES / "user_train.py", workdir / "user_train.py")
    path = write_study(
        workdir,
        task=None,
        train="user_train.py:train_that_breaks",
        metric="accuracy",
        direction="maximize",
        tracking_uri="none",
    )
    result = cli("run", path)
    assert result.exit_code == 1, result.output
    assert "no trial completed; why trials failed:" in result.output
    assert "4 x error: ValueError: the data pipeline broke (at user_train.py:" in result.output


def test_a_read_only_database_fails_at_once_not_after_minutes_of_retries(workdir: Path, cli, caplog) -> None:
    path = write_study(workdir, tracking_uri="none")
    assert cli("run", path).exit_code == 0
    read_only = f"sqlite:///file:{workdir / 'tuner.db'}?mode=ro&uri=true"
    with caplog.at_level(logging.WARNING):
        result = cli("run", path, "--n-trials", "6", "--storage", read_only)
    assert result.exit_code == 2 and "readonly" in result.output.replace("-", "") and "Traceback" not in result.output
    assert not [r for r in caplog.records if "retrying in" in r.getMessage()], "a lasting failure is never retried"
