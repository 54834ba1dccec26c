"""``tuner check STUDY_FILE`` and ``tuner run --dry-run``: the checks of ``tuner run``, the resolved space, the steps a
trial runs and the grid's size printed; exit 0; nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import FIXTURES, write_study

SPACE = {
    "optimizers": {"adam": {"beta2": {"low": 0.99, "high": 0.9999}}, "sgd": {"lr": 0.1}},
    "schedules": ["constant", "one_cycle"],
    "batch_size": [32, 64],
    "weight_decay": {"low": 1e-5, "high": 1e-2},
    "warmup": [0, 0.1],
    "switch": {"to": ["momentum"], "at_fraction": {"low": 0.4, "high": 0.6}},
}


def _nothing_written(workdir: Path) -> bool:
    return not (workdir / "tuner.db").exists() and not (workdir / "mlflow.db").exists()


@pytest.mark.parametrize("command", [("check",), ("run", "--dry-run")])
def test_check_prints_the_resolved_space_and_writes_nothing(workdir: Path, cli, command: tuple[str, ...]) -> None:
    path = write_study(workdir, space=SPACE)
    result = cli(*command, path)
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert "study tiny: task digits-mlp, maximize accuracy, n_trials 4" in result.output
    # the steps a trial runs, per batch size: 1437 examples, 2 epochs
    assert ["batch_size", "32:", "90", "optimizer", "steps", "a", "trial", "(45", "an", "epoch)"] in lines
    assert ["batch_size", "64:", "46", "optimizer", "steps", "a", "trial", "(23", "an", "epoch)"] in lines
    assert "optimizer: one of adam, sgd" in result.output
    assert ["lr", "[1e-05,", "0.1]", "log"] in lines  # adam's catalog range
    assert ["beta2", "β", "in", "[0.99,", "0.9999]", "log(1-β)"] in lines  # the file's override
    assert ["lr", "=", "0.1"] in lines  # sgd's fixed LR
    assert ["defaults", "amsgrad=False"] in lines
    assert "schedule: one of constant, one_cycle" in result.output
    assert ["pct_start", "[0.15,", "0.45]", "linear"] in lines
    assert ["three_phase", "{False,", "True}"] in lines
    assert ["weight_decay", "[1e-05,", "0.01]", "log"] in lines and ["batch_size", "{32,", "64}"] in lines
    assert ["warmup", "{0,", "0.1}"] in lines and ["clip_norm", "=", "None"] in lines
    assert "switch: to one of momentum (or no switch)" in result.output
    assert ["at_fraction", "[0.4,", "0.6]", "linear"] in lines
    assert result.output.rstrip().endswith("ok: every check passed; nothing was written")
    assert _nothing_written(workdir)


def test_check_shows_the_grid_and_refuses_it_as_run_would(workdir: Path, cli) -> None:
    space = {"optimizers": ["sgd", "momentum"], "schedules": ["constant", "cosine"], "batch_size": [64]}
    path = write_study(workdir, space=space, sampler="grid")
    result = cli("check", path)
    # sgd: lr 5; momentum: lr 5 x momentum 3 -- with constant, or cosine's min_factor at 3 values
    assert "grid: 80 points over 4 branches (optimizer x schedule), 3 values a range, 5 LR values" in result.output
    assert ["momentum", "x", "cosine", "45"] in [line.split() for line in result.output.splitlines()]
    assert result.exit_code == 2 and "the grid has 80 points, more than n_trials (4)" in result.stderr
    partial = cli("check", path, "--allow-partial-grid")
    assert partial.exit_code == 0 and "a random 4 of them run" in partial.output
    enough = cli("check", path, "--n-trials", "100")
    assert enough.exit_code == 0 and "the study ends when the 80 points have run (n_trials 100)" in enough.output
    assert _nothing_written(workdir)


def test_check_fails_as_run_would(workdir: Path, cli) -> None:
    path = write_study(workdir, space={"optimizers": ["adam"], "schedules": ["constant"], "warmup": 1.5})
    result = cli("check", path)
    assert result.exit_code == 2 and "space.warmup" in result.stderr and "1.5" in result.stderr
    assert _nothing_written(workdir)


def test_a_train_function_study_says_its_code_decides_the_length(workdir: Path, cli) -> None:
    shutil.copy(FIXTURES / "user_train.py", workdir / "user_train.py")
    path = write_study(workdir, task=None, train="user_train.py:train", metric="accuracy", direction="maximize")
    result = cli("check", path)
    assert result.exit_code == 0, result.output
    assert "run length: your train: code decides it" in result.output
