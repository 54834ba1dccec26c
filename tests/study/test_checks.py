"""Every setting that would fail trials is refused before the first one (``tuner.study.checks``): exit 2 from
``tuner run``, a message naming the file, the field and the value, and nothing created -- no tuner.db, no
mlflow.db, no study in ``tuner ls``. Each case below was accepted before, its trials failing one after another."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from tests.helpers import FIXTURES, write_study
from tuner.errors import TunerError
from tuner.study.checks import RunLength
from tuner.study.prepare import prepare
from tuner.study.runner import RunOptions, run_study

pytestmark = pytest.mark.filterwarnings("ignore:`gamma` has been deprecated:FutureWarning")

ONE = {"optimizers": ["sgd"], "schedules": ["constant"], "batch_size": [64]}
"""The tiny study's space cut to one branch; cases change one thing in it."""

REFUSED = [
    # (id, changes to the tiny study, words the message must hold)
    (
        "lbfgs-on-mini-batches",
        {"space": {**ONE, "optimizers": ["lbfgs"]}},
        ["space.optimizers.lbfgs", "full-batch", "mini-batches of 64", "space.batch_size: [null]"],
    ),
    (
        "lbfgs-on-the-task-default-batch",
        {"space": {"optimizers": ["adam", "lbfgs"], "schedules": ["constant"]}},
        ["space.optimizers.lbfgs", "mini-batches of 64", "the task's default batch size"],
    ),
    ("switch-to-lbfgs", {"space": {**ONE, "switch": {"to": ["lbfgs"]}}}, ["space.switch.to", "lbfgs", "batch_size"]),
    (
        "sparse_adam-without-a-sparse-embedding",
        {"space": {**ONE, "optimizers": ["sparse_adam"]}},
        ["space.optimizers.sparse_adam", "nn.Embedding(..., sparse=True)"],
    ),
    (
        "muon-without-a-weight-matrix",
        {"task": "model_kinds_task.py:make_vector_task", "space": {**ONE, "optimizers": ["muon"]}},
        ["space.optimizers.muon", "2-D weight matrices"],
    ),
    ("optimizer-value", {"space": {**ONE, "optimizers": {"adam": {"eps": -1.0}}}}, ["space.optimizers.adam", "eps=-1"]),
    ("clipping-value", {"space": {**ONE, "clip_norm": [1.0, -1.0]}}, ["space.clip_norm", "clip_norm=-1.0"]),
    ("warmup-fraction-past-1", {"space": {**ONE, "warmup": 1.5}}, ["space.warmup", "fraction in [0, 1)", "1.5"]),
    (
        "warmup-float-range-past-1",
        {"space": {**ONE, "warmup": {"low": 0.0, "high": 2.0}}},
        ["space.warmup", "[0, 1)", "high: 2.0"],
    ),
    (
        "warmup-past-the-run",
        {"space": {**ONE, "warmup": 500}},
        # 1437 training examples in batches of 64: 23 steps an epoch, 2 epochs
        ["space.warmup", "500", "total_steps=46", "batch_size 64 runs 46 optimizer steps"],
    ),
    (
        "one_cycle-too-short",
        {"budget": {"steps": 3, "n_trials": 4}, "space": {**ONE, "schedules": ["one_cycle"]}},
        ["space.schedules.one_cycle", "pct_start * total_steps must be > 1", "pct_start=0.15", "total_steps=3"],
    ),
    (
        "warmup-leaves-one_cycle-too-short",
        {"budget": {"steps": 10, "n_trials": 4}, "space": {**ONE, "schedules": ["one_cycle"], "warmup": 5}},
        ["space.schedules.one_cycle", "total_steps=5", "warmup=5"],
    ),
    (
        "schedule-value",
        {"space": {**ONE, "schedules": {"step": {"gamma": {"low": -0.5, "high": 0.5}}}}},
        ["space.schedules.step", "gamma", "-0.5"],
    ),
    (
        "hyperband-min-above-max",
        {"pruner": {"name": "hyperband", "options": {"min_resource": 10, "max_resource": 5}}},
        ["pruner.options", "min_resource=10", "max_resource=5"],
    ),
    (
        "hyperband-reduction-factor",
        {"pruner": {"name": "hyperband", "options": {"reduction_factor": 1}}},
        ["pruner.options.reduction_factor", ">= 2", "got 1"],
    ),
    (
        "asha-past-the-run",
        {"pruner": {"name": "asha", "options": {"min_resource": 1000}}},
        ["pruner.options.min_resource", "1000", "46 optimizer steps"],
    ),
    ("percentile-without-its-cut", {"pruner": "percentile"}, ["pruner 'percentile'", "bad options", "percentile"]),
    (
        "percentile-past-100",
        {"pruner": {"name": "percentile", "options": {"percentile": 150}}},
        ["pruner 'percentile'", "150"],
    ),
    ("tpe-option", {"sampler": {"name": "tpe", "options": {"gamma": 0.5}}}, ["sampler 'tpe'", "gamma", "not callable"]),
    ("grid-option", {"sampler": {"name": "grid", "options": {"points": 0}}}, ["sampler 'grid'", "points=0"]),
]


@pytest.mark.parametrize(("changes", "words"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_what_would_fail_its_trials_exits_2_and_creates_nothing(workdir: Path, cli, changes: dict, words) -> None:
    shutil.copy(FIXTURES / "model_kinds_task.py", workdir / "model_kinds_task.py")
    path = write_study(workdir, **changes)
    result = cli("run", path)
    assert result.exit_code == 2, result.output
    assert str(path) in result.stderr and "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert not (workdir / "tuner.db").exists() and not (workdir / "mlflow.db").exists()
    assert "no studies" in cli("ls").output


def test_optimizers_that_fit_the_model_train(workdir: Path) -> None:
    """The same checks let through what does fit: sparse_adam on a sparse embedding, lbfgs on full batches, muon on
    weight matrices -- and those trials then complete."""
    shutil.copy(FIXTURES / "model_kinds_task.py", workdir / "model_kinds_task.py")
    cases = [
        ("model_kinds_task.py:make_sparse_task", {"optimizers": ["sparse_adam"], "batch_size": [16]}),
        ("digits-mlp", {"optimizers": ["lbfgs"], "batch_size": [None]}),
        ("digits-mlp", {"optimizers": ["muon"], "batch_size": [64]}),
    ]
    for number, (task, space) in enumerate(cases):
        path = write_study(
            workdir,
            name=f"fits{number}",
            task=task,
            budget={"steps": 4, "n_trials": 1},
            space={"schedules": ["cosine"], **space},
            metric="loss",
            direction="minimize",
            tracking_uri="none",
        )
        study = run_study(prepare(path), RunOptions(n_trials=1))
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE], task


def test_the_plan_counts_steps_a_trial_as_the_trainer_does(workdir: Path) -> None:
    path = write_study(workdir, budget={"epochs": 3, "accumulate": 2}, space={**ONE, "batch_size": [32, 64, None]})
    plan = prepare(path).plan
    # 1437 training examples: 45 batches of 32 -> 23 steps of two; 23 of 64 -> 12; the full batch -> 1
    assert plan.lengths == (
        RunLength(32, 69, 23, plan.basis),
        RunLength(64, 36, 12, plan.basis),
        RunLength(None, 3, 1, plan.basis),
    )
    assert plan.basis == "1437 training examples, 3 epochs, 2 micro-batches a step"
    assert (plan.shortest.steps, plan.longest.steps) == (3, 69)


def test_a_loader_task_counts_its_loaders_length(workdir: Path) -> None:
    shutil.copy(FIXTURES / "loader_task.py", workdir / "loader_task.py")
    path = write_study(workdir, task="loader_task.py:make_task", budget={"epochs": 2}, space={**ONE, "batch_size": 64})
    plan = prepare(path).plan
    assert [(run.batch_size, run.steps, run.per_epoch) for run in plan.lengths] == [(64, 8, 4)]  # 256 examples


def test_a_train_function_gets_its_values_checked_not_its_length(workdir: Path) -> None:
    shutil.copy(FIXTURES / "user_train.py", workdir / "user_train.py")
    common = dict(task=None, train="user_train.py:train", metric="accuracy", direction="maximize")
    long_warmup = prepare(write_study(workdir, **common, space={**ONE, "warmup": 500}))
    assert long_warmup.plan.lengths == ()  # the function decides how long it trains
    with pytest.raises(TunerError, match=r"space\.warmup: .*fraction in \[0, 1\).*1\.5"):
        prepare(write_study(workdir, **common, space={**ONE, "warmup": 1.5}))
