"""Checkpoints in real studies (SQLite, MLflow on SQLite, a real ``tuner run`` process): a worker killed mid-trial
(SIGKILL) or interrupted (SIGINT, Ctrl-C) costs only the work since the last checkpoint -- the retry resumes from it
and ends bit-identical to an uninterrupted trial, its curve whole, its MLflow run tagged with the trial it resumed;
folders of pruned and failed trials go, the best ``keep_best`` stay; ``save_model`` keeps the best weights, which
``tuner export --format checkpoint`` writes (an unwritable ``checkpoint_dir``: tests/test_spec.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from tests.helpers import FIXTURES, ROOT, mlflow_runs
from tuner.study.prepare import prepare
from tuner.study.runner import RunOptions, run_study
from tuner.study.storage import open_storage
from tuner.study.storage.heartbeat import fail_stale_trials
from tuner.tasks import load_task

TASK = str(FIXTURES / "checkpoint_task.py:make_task")
HANG_AT = 35  # the worker hangs at this optimizer step; its last checkpoint is the one after step 30


def _study_file(directory: Path, name: str = "long", **changes) -> Path:
    data = {
        "name": name,
        "task": TASK,
        "budget": {"steps": 60, "eval_every": 10, "n_trials": 1, "checkpoint_every": 1},
        "space": {"optimizers": {"momentum": {"lr": 0.05, "momentum": 0.9}}, "schedules": ["cosine"], "batch_size": 32},
        "sampler": "random",
        "pruner": "none",
        "seed": 0,
        "deterministic": True,
        **changes,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _wait_for(condition, what: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the worker exited with {process.returncode} before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def _kill_mid_trial(workdir: Path, study_file: Path, how: signal.Signals) -> None:
    """Run ``tuner run`` in its own process until it hangs at step ``HANG_AT``, then send it ``how``."""
    hung = workdir / "hung"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "TUNER_TEST_HANG_AT": str(HANG_AT),
        "TUNER_TEST_HANG_FILE": str(hung),
    }
    with (workdir / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tuner", "run", str(study_file), "--tracking-uri", "none"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _wait_for(hung.exists, f"the worker to reach step {HANG_AT}", worker)
        worker.send_signal(how)
        code = worker.wait(timeout=120)
    assert code == (-signal.SIGKILL if how == signal.SIGKILL else 130), (workdir / "worker.log").read_text()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_a_killed_trial_resumes_from_its_last_checkpoint_and_ends_bit_identical(workdir, monkeypatch, one_thread, how):
    monkeypatch.setenv("TUNER_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("TUNER_GRACE_PERIOD", "2")
    study_file = _study_file(workdir)
    _kill_mid_trial(workdir, study_file, how)
    url = f"sqlite:///{workdir}/tuner.db"
    if how == signal.SIGKILL:  # the next worker to start a trial fails it as lost once its heartbeat is stale

        def lost() -> bool:
            study = optuna.load_study(study_name="long", storage=open_storage(url))
            fail_stale_trials(study)
            return _trials(study)[0].state.name == "FAIL"

        deadline = time.monotonic() + 60
        while not lost():
            assert time.monotonic() < deadline, "the killed trial never went stale"
            time.sleep(0.5)
    assert (workdir / "checkpoints" / "long" / "0" / "checkpoint.pt").is_file()

    tracking = f"sqlite:///{workdir}/mlflow.db"
    study = run_study(prepare(study_file, tracking_uri=tracking), RunOptions(n_trials=1))
    (workdir / "ref").mkdir()
    reference = run_study(
        prepare(
            _study_file(workdir / "ref", name="ref"), storage=f"sqlite:///{workdir}/ref/tuner.db", tracking_uri="none"
        ),
        RunOptions(n_trials=1),
    )
    killed, retry = _trials(study)
    (whole,) = _trials(reference)
    assert killed.state.name == "FAIL" and killed.user_attrs["reason"] in ("worker lost", "interrupted")
    assert retry.state.name == "COMPLETE" and retry.user_attrs["resumed_from"] == {"trial": 0, "step": 30}
    assert retry.value == whole.value  # bit-identical on CPU
    assert retry.intermediate_values == whole.intermediate_values  # the whole curve, steps 10..60
    assert retry.user_attrs["steps_done"] == 60
    assert sorted(p.name for p in (workdir / "checkpoints" / "long").iterdir()) == ["1"]  # the lost one's folder went

    (run,) = [r for r in mlflow_runs(tracking, "long") if r.data.tags.get("tuner.trial_number") == "1"]
    assert run.data.tags["tuner.retry_of"] == "0" and run.data.tags["tuner.resumed_from"] == "trial 0 step 30"
    history = mlflow_client(tracking).get_metric_history(run.info.run_id, "accuracy")
    assert sorted(m.step for m in history) == [10, 20, 30, 40, 50, 60]


def test_a_ctrl_c_d_train_function_resumes_through_trial_restore(workdir, monkeypatch):
    shutil.copy(FIXTURES / "user_train.py", workdir / "user_train.py")
    own = {
        "train": "user_train.py:train_with_checkpoints",
        "metric": "accuracy",
        "direction": "maximize",
        "budget": {"epochs": 3, "n_trials": 1, "checkpoint_every": 1},
        "space": {"optimizers": {"adam": {"lr": 0.003}}, "schedules": ["plateau"], "batch_size": 128},
    }
    study_file = _study_file(workdir, name="own", task=None, **own)
    monkeypatch.setenv("TUNER_TEST_INTERRUPT_AFTER", "2")
    with pytest.raises(KeyboardInterrupt):
        run_study(prepare(study_file, tracking_uri="none"), RunOptions(n_trials=1))
    monkeypatch.delenv("TUNER_TEST_INTERRUPT_AFTER")
    study = run_study(prepare(study_file, tracking_uri="none"), RunOptions(n_trials=1))
    whole = run_study(prepare(_study_file(workdir, name="whole", task=None, **own), tracking_uri="none"), RunOptions(1))
    interrupted, retry = _trials(study)
    assert interrupted.user_attrs["reason"] == "interrupted" and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["resumed_from"] == {"trial": 0, "step": 2 * 11}
    assert retry.value == _trials(whole)[0].value
    assert retry.intermediate_values == _trials(whole)[0].intermediate_values


def mlflow_client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def test_only_the_best_complete_trials_keep_their_folders_and_the_best_model_is_exported(workdir, cli):
    tracking = f"sqlite:///{workdir}/mlflow.db"
    space = {"optimizers": {"sgd": {"lr": {"low": 1e-3, "high": 1e3, "log": True}}}, "schedules": ["constant"]}
    study_file = _study_file(
        workdir,
        name="keep",
        budget={"steps": 30, "eval_every": 10, "n_trials": 6, "checkpoint_every": 1},
        space={**space, "batch_size": 32},
        keep_best=2,
        save_model=True,
    )
    study = run_study(prepare(study_file, tracking_uri=tracking), RunOptions(n_trials=6))
    trials = _trials(study)
    complete = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)
    assert len(complete) >= 3 and any(t.state.name == "PRUNED" for t in trials)  # large LRs diverge
    folders = sorted(int(p.name) for p in (workdir / "checkpoints" / "keep").iterdir())
    assert folders == sorted(t.number for t in complete[:2])
    best = complete[0]
    assert sorted(p.name for p in (workdir / "checkpoints" / "keep" / str(best.number)).iterdir()) == [
        "checkpoint.pt",
        "model.pt",
    ]

    result = cli("export", "keep", "--format", "checkpoint", "-o", workdir / "best.pt")
    assert result.exit_code == 0, result.output
    task = load_task(TASK)
    model = task.build_model()
    model.load_state_dict(torch.load(workdir / "best.pt", weights_only=True))
    model.eval()
    data = task.load_data()
    with torch.no_grad():
        accuracy = float(task.metrics(model(data.val_inputs), data.val_targets)["accuracy"])
    assert accuracy == best.value  # the trained model itself, not a rerun

    parent = [r for r in mlflow_runs(tracking, "keep") if r.data.tags.get("tuner.role") != "trial"][0]
    assert parent.data.tags["tuner.best_model_trial"] == str(best.number)
    assert "model.pt" in [a.path for a in mlflow_client(tracking).list_artifacts(parent.info.run_id)]

    beyond = complete[2].number
    gone = cli("export", "keep", "--format", "checkpoint", "--trial", beyond, "-o", workdir / "x.pt")
    assert gone.exit_code == 2 and "is gone (keep_best" in gone.output
    missing = cli("export", "keep", "--format", "checkpoint")
    assert missing.exit_code == 2 and "give -o PATH" in missing.output


def test_population_members_keep_their_model_but_are_not_checkpointed(workdir):
    from tuner.train.checkpoint import CheckpointWarning

    task = str(FIXTURES / "user_task.py:make_task")  # no dropout: the members train stacked
    budget = {"steps": 30, "eval_every": 10, "n_trials": 4, "checkpoint_every": 1}
    space = {"optimizers": {"adam": {"lr": {"low": 1e-3, "high": 1e-1, "log": True}}}, "schedules": ["constant"]}
    study_file = _study_file(
        workdir, name="pop", task=task, budget=budget, space={**space, "batch_size": 32}, save_model=True
    )
    with pytest.warns(CheckpointWarning, match="members of a population are not checkpointed"):
        study = run_study(prepare(study_file, tracking_uri="none"), RunOptions(n_trials=4, population=4))
    best = study.best_trial
    assert best.user_attrs["population"] == 4
    folder = workdir / "checkpoints" / "pop"
    assert [p.name for p in folder.iterdir()] == [str(best.number)]
    assert [p.name for p in (folder / str(best.number)).iterdir()] == ["model.pt"]  # weights, no checkpoint
    model = load_task(task).build_model()
    model.load_state_dict(torch.load(best.user_attrs["model"], weights_only=True))


def test_save_model_with_your_own_loop_exits_2(workdir):
    from tuner.errors import TunerError

    path = workdir / "own.yaml"
    spec = {"name": "own", "train": str(FIXTURES / "user_train.py:train"), "metric": "accuracy"}
    path.write_text(yaml.safe_dump({**spec, "direction": "maximize", "save_model": True}))
    with pytest.raises(TunerError, match="save_model: true keeps the weights of models tuner's trainer trains"):
        prepare(path)
