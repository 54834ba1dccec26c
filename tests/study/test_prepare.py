"""What fails in every trial is refused before the first one: exit 2, the file, the field and the value, nothing
written; and the study file's training settings reach every trial."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import FIXTURES, write_study
from tuner.study.prepare import prepare, train_budget
from tuner.study.runner import RunOptions, run_study


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device": "cuda"}, "device: cuda is not available on this machine"),
        ({"budget": {"epochs": 1, "precision": "fp16"}}, "budget.precision: fp16 needs a CUDA device"),
        (
            {
                "budget": {"epochs": 1, "accumulate": 2},
                "space": {"optimizers": ["lbfgs"], "schedules": ["constant"], "batch_size": [None]},
            },
            "lbfgs",
        ),
        ({"task": "loader_task.py:make_task_yielding_dicts"}, "a dict with keys"),
        ({"budget": {"epochs": 1, "precision": "half"}}, "budget.precision"),
    ],
)
def test_what_cannot_train_exits_2_before_anything_is_written(workdir: Path, cli, changes: dict, message: str) -> None:
    shutil.copy(FIXTURES / "loader_task.py", workdir / "loader_task.py")
    result = cli("run", write_study(workdir, **changes))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (workdir / "tuner.db").exists() and not (workdir / "mlflow.db").exists()


def test_the_budget_reaches_the_trials(workdir: Path) -> None:
    shutil.copy(FIXTURES / "loader_task.py", workdir / "loader_task.py")
    path = write_study(
        workdir,
        task="loader_task.py:make_task",
        budget={"epochs": 2, "n_trials": 2, "precision": "bf16", "accumulate": 2},
        tracking_uri="none",
    )
    prepared = prepare(path)
    budget = train_budget(prepared.spec.budget)
    assert (budget.precision, budget.accumulate) == ("bf16", 2)
    study = run_study(prepared, RunOptions(n_trials=2))
    trials = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(trials) == 2
    # 256 examples in batches of 64 (the study's batch size), two micro-batches a step: 2 steps an epoch, 2 epochs
    assert {t.user_attrs["total_steps"] for t in trials} == {4}
