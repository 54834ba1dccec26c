"""Checkpoints of one run: a run stopped right after a checkpoint and resumed from it ends bit-identical to the run
never stopped (tuner's trainer: mid-epoch, plateau, a switch, ``objective: best``, streamed data; a user's loop
in-process and as a command); bad checkpoints are ignored with a warning; a write that fails halfway keeps the previous
checkpoint; the default cadence writes nothing in a short run."""

from __future__ import annotations

import resource
import signal
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from tests.helpers import FIXTURES, RecordingTask
from tuner.recipe import Recipe, Switch
from tuner.tasks import load_task
from tuner.train import TrainBudget, fit
from tuner.train.checkpoint import (
    CHECKPOINT_FILE,
    Checkpointer,
    CheckpointEvery,
    CheckpointPlan,
    CheckpointWarning,
    read_checkpoint,
)
from tuner.train.command import command_argv, run_command
from tuner.train.trial import Trial, TrialInfo, run_function

IDENTITY = {"format": 1, "tuner": "0.1.0", "study": "s", "kind": "trainer", "recipe": {}, "seed": 3}
DIGITS = ("digits-mlp", {"hidden": [16]})
BLOBS = (str(FIXTURES / "checkpoint_task.py:make_task"), {})
LOADER = (str(FIXTURES / "loader_task.py:make_task"), {})

CASES = {
    # 23 batches an epoch: evaluations (every 7 steps) and checkpoints fall mid-epoch; plateau keeps counters
    "mid-epoch plateau": (DIGITS, Recipe(optimizer="adam", lr=3e-3, schedule="plateau", warmup=5, batch_size=64)),
    "switch and best": (
        DIGITS,
        Recipe(optimizer="adam", lr=3e-3, schedule="cosine", batch_size=64, switch=Switch("sgd", 0.3, 0.05)),
    ),
    "dropout": (BLOBS, Recipe(optimizer="momentum", lr=0.05, schedule="cosine", batch_size=32)),
    "streamed data": (LOADER, Recipe(optimizer="rmsprop", lr=1e-3, schedule="step", batch_size=32)),
}


class Lost(Exception):
    pass


EVERY_2 = CheckpointEvery(evaluations=2)


def _plan(folder: Path, resume: Optional[Path] = None, every: CheckpointEvery = EVERY_2) -> CheckpointPlan:
    return CheckpointPlan(str(folder), IDENTITY, every, resume=str(resume) if resume else None)


def _run(task: Any, recipe: Recipe, budget: TrainBudget, plan: Optional[CheckpointPlan] = None, lose_at: int = 0):
    """fit, with checkpoints per ``plan``; ``lose_at``: raise at that evaluation (a worker lost after its last
    checkpoint)."""
    seen = [0]

    def on_eval(evaluation):
        seen[0] += 1
        if seen[0] == lose_at:
            raise Lost
        return False

    checkpoints = Checkpointer(plan) if plan is not None else None
    return fit(task, recipe, budget, seed=3, on_eval=on_eval, checkpoints=checkpoints)


@pytest.mark.parametrize("case", CASES)
def test_a_run_resumed_from_its_checkpoint_ends_bit_identical_to_the_run_never_stopped(case, tmp_path):
    (name, options), recipe = CASES[case]
    objective = "best" if "best" in case else "final"
    budget = TrainBudget(steps=60, eval_every=7, patience=6, objective=objective)
    task = RecordingTask(load_task(name, options))
    whole = _run(task, recipe, budget)
    whole_weights = task.model.state_dict()

    with pytest.raises(Lost):
        _run(task, recipe, budget, _plan(tmp_path / "lost"), lose_at=7)
    saved = torch.load(tmp_path / "lost" / CHECKPOINT_FILE, weights_only=True)
    assert saved["step"] == 42  # the 6th evaluation; the 7th was lost before its checkpoint

    resumed = _run(task, recipe, budget, _plan(tmp_path / "retry", tmp_path / "lost" / CHECKPOINT_FILE))
    assert resumed.extras["resumed_step"] == 42
    assert resumed.counted == whole.counted and resumed.status == whole.status
    assert resumed.evaluations == whole.evaluations and resumed.best == whole.best
    assert resumed.lr_curve == whole.lr_curve
    for key, value in task.model.state_dict().items():
        assert torch.equal(value, whole_weights[key]), key


def test_a_user_loop_resumes_through_restore_bit_identical_in_process_and_as_a_command(tmp_path):
    from tests.fixtures.user_train import Lost as LoopLost
    from tests.fixtures.user_train import train_with_checkpoints

    recipe = Recipe(optimizer="adam", lr=3e-3, schedule="plateau", batch_size=128)
    every = CheckpointEvery(evaluations=1)

    def info(plan: Optional[CheckpointPlan] = None, **options: Any) -> TrialInfo:
        budget = TrainBudget(epochs=3)
        return TrialInfo(0, "s", recipe, {}, 5, "cpu", budget, "accuracy", "maximize", options=options, checkpoint=plan)

    whole = run_function(train_with_checkpoints, Trial(info()))
    lost = Checkpointer(_plan(tmp_path / "lost", every=every))
    with pytest.raises(Exception) as raised:
        run_function(train_with_checkpoints, Trial(info(stop_after=2), checkpoints=lost))
    assert isinstance(raised.value.__cause__, LoopLost) and lost.written == 2

    retry = Checkpointer(_plan(tmp_path / "retry", tmp_path / "lost" / CHECKPOINT_FILE))
    resumed = run_function(train_with_checkpoints, Trial(info(), checkpoints=retry))
    assert resumed.extras["resumed_step"] == 2 * 11
    assert resumed.counted == whole.counted
    assert resumed.evaluations == whole.evaluations and resumed.lr_curve == whole.lr_curve

    reports = []  # the same through a command's socket: the command reads and writes the files itself
    command = run_command(
        command_argv("python user_command.py checkpoints", str(FIXTURES)),
        info(_plan(tmp_path / "command", tmp_path / "lost" / CHECKPOINT_FILE, every=every)),
        lambda evaluation: reports.append(evaluation.step) and False,
        cwd=str(FIXTURES),
    )
    assert reports == [3 * 11]  # the study hears the new report; the two before came with the checkpoint
    assert command.extras["resumed_step"] == 2 * 11 and command.counted == whole.counted
    assert [e.step for e in command.evaluations] == [11, 22, 33]
    assert read_checkpoint(tmp_path / "command" / CHECKPOINT_FILE, IDENTITY)["step"] == 3 * 11


def _garbled(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "spoil, message",
    [
        (_garbled, "cannot be read"),
        (lambda path: path.write_text("not a checkpoint"), "cannot be read"),
        (lambda path: torch.save({"step": 1}, path), "not a tuner checkpoint"),
        (lambda path: torch.save({"identity": {**IDENTITY, "tuner": "0.0.1"}}, path), "tuner version '0.0.1'"),
        (lambda path: torch.save({"identity": {**IDENTITY, "recipe": {"lr": 1}}}, path), "another recipe"),
        (lambda path: torch.save({"identity": {**IDENTITY, "seed": 4}}, path), "seed 4"),
    ],
    ids=["truncated", "text", "foreign", "other-version", "other-recipe", "other-seed"],
)
def test_an_unreadable_or_foreign_checkpoint_is_ignored_with_a_warning(tmp_path, spoil, message):
    path = tmp_path / CHECKPOINT_FILE
    Checkpointer(_plan(tmp_path)).save({"step": 7})
    assert read_checkpoint(path, IDENTITY)["step"] == 7
    spoil(path)
    with pytest.warns(CheckpointWarning, match=message):
        assert read_checkpoint(path, IDENTITY) is None


def test_a_checkpoint_of_another_model_is_ignored_and_the_run_starts_over(tmp_path):
    recipe = Recipe(optimizer="adam", lr=3e-3, batch_size=64)
    budget = TrainBudget(steps=30, eval_every=10)
    with pytest.raises(Lost):
        _run(load_task("digits-mlp", {"hidden": [8]}), recipe, budget, _plan(tmp_path / "a"), lose_at=3)
    task = load_task("digits-mlp", {"hidden": [16]})
    fresh = _run(task, recipe, budget)
    with pytest.warns(CheckpointWarning, match="does not fit this run's model"):
        resumed = _run(task, recipe, budget, _plan(tmp_path / "b", tmp_path / "a" / CHECKPOINT_FILE))
    assert "resumed_step" not in resumed.extras and resumed.counted == fresh.counted


def test_a_write_that_fails_halfway_keeps_the_previous_checkpoint(tmp_path):
    checkpointer = Checkpointer(_plan(tmp_path))
    assert checkpointer.save({"step": 1, "weights": torch.zeros(10)})
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limits[1]))  # a disk that fills after 64 KiB
    try:
        with pytest.warns(CheckpointWarning, match="the previous one is kept"):
            assert not checkpointer.save({"step": 2, "weights": torch.zeros(1_000_000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]  # no temporary file left
    assert read_checkpoint(tmp_path / CHECKPOINT_FILE, IDENTITY)["step"] == 1


def test_at_the_default_cadence_a_short_run_writes_nothing(tmp_path):
    plan = CheckpointPlan(str(tmp_path / "trial"), IDENTITY)
    assert plan.every == CheckpointEvery(minutes=10.0)
    fit(
        load_task(*DIGITS),
        Recipe(optimizer="adam", lr=3e-3, batch_size=64),
        TrainBudget(epochs=2),
        checkpoints=Checkpointer(plan),
    )
    assert not (tmp_path / "trial").exists()


def test_cadence_by_evaluations_or_minutes():
    assert CheckpointEvery(evaluations=3).due(3, 0.0) and not CheckpointEvery(evaluations=3).due(2, 1e9)
    assert CheckpointEvery(minutes=0.5).due(0, 30.0) and not CheckpointEvery(minutes=0.5).due(100, 29.9)
    with pytest.raises(ValueError, match="evaluations must be an integer >= 1"):
        CheckpointEvery(evaluations=0)
