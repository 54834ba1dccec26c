"""End to end: `tuner run` on the embedded default (SQLite study + SQLite MLflow), then ls/show/best/export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tests.helpers import TINY_STUDY, mlflow_runs, write_study


def _study(workdir: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'tuner.db'}")


def test_run_logs_every_trial_and_resumes(workdir: Path, cli) -> None:
    path = write_study(workdir)
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    assert "best accuracy" in result.stdout

    study = _study(workdir)
    assert len(study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert study.best_value > 0.8
    assert len({t.user_attrs["seed"] for t in study.trials}) == 4

    runs = mlflow_runs(f"sqlite:///{workdir / 'mlflow.db'}", "tiny")
    parents = [r for r in runs if r.data.tags.get("tuner.role") == "study"]
    children = [r for r in runs if r.data.tags.get("tuner.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents[0].info.run_id
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert child.data.tags["tuner.state"] == "COMPLETE"
        assert child.info.status == "FINISHED"
        assert {"optimizer", "lr", "schedule", "batch_size"} <= set(child.data.params)
        assert "accuracy" in child.data.metrics and "lr" in child.data.metrics
        trial = study.trials[int(child.data.tags["tuner.trial_number"])]
        assert trial.user_attrs["mlflow_run_id"] == child.info.run_id  # lost-trial handling closes the run by it
        recipe_file = Path(child.info.artifact_uri.removeprefix("file://")) / "recipe.yaml"
        assert yaml.safe_load(recipe_file.read_text()) == trial.user_attrs["recipe"]
    assert float(parents[0].data.tags["tuner.summary.best_value"]) == pytest.approx(study.best_value)

    # same name resumes: a higher target adds exactly the missing trials, under the same parent run
    result = cli("run", path, "--n-trials", "6")
    assert result.exit_code == 0, result.output
    assert len(_study(workdir).trials) == 6
    runs = mlflow_runs(f"sqlite:///{workdir / 'mlflow.db'}", "tiny")
    assert sum(r.data.tags.get("tuner.role") == "study" for r in runs) == 1
    assert sum(r.data.tags.get("mlflow.parentRunId") == parent_id for r in runs) == 6


def test_read_commands(workdir: Path, cli) -> None:
    path = write_study(workdir, budget={"epochs": 1, "n_trials": 3})
    assert cli("run", path).exit_code == 0

    listing = json.loads(cli("ls", "--json").stdout)
    assert [row["name"] for row in listing] == ["tiny"] and listing[0]["complete"] == 3

    shown = json.loads(cli("show", "tiny", "--json").stdout)
    assert [row["number"] for row in shown] == [0, 1, 2]
    assert all(row["optimizer"] in ("adam", "sgd") for row in shown)

    best = json.loads(cli("best", "tiny", "--json").stdout)
    assert best["value"] == pytest.approx(_study(workdir).best_value)
    assert yaml.safe_load(cli("export", "tiny", "--format", "yaml").stdout) == best["recipe"]
    assert json.loads(cli("export", "tiny", "--format", "json").stdout) == best["recipe"]


def test_unknown_study_exits_2_listing_studies(workdir: Path, cli) -> None:
    assert cli("run", write_study(workdir, budget={"epochs": 1, "n_trials": 1})).exit_code == 0
    for command in (["show", "nope"], ["best", "nope"], ["export", "nope"]):
        result = cli(*command)
        assert result.exit_code == 2
        assert "nope" in result.stderr and "tiny" in result.stderr


def test_divergence_prunes_with_a_reason_and_never_a_nan(workdir: Path, cli) -> None:
    path = write_study(
        workdir,
        budget={"epochs": 2, "n_trials": 1},
        space={"optimizers": {"sgd": {"lr": 1.0e4}}, "schedules": ["constant"], "batch_size": [64]},
    )
    assert cli("run", path).exit_code == 0
    (trial,) = _study(workdir).trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["reason"].startswith("diverged")
    runs = mlflow_runs(f"sqlite:///{workdir / 'mlflow.db'}", "tiny")
    child = next(r for r in runs if r.data.tags.get("tuner.role") == "trial")
    assert child.data.tags["tuner.state"] == "PRUNED" and child.data.tags["tuner.reason"].startswith("diverged")


def test_jobs_run_local_workers_on_one_study(workdir: Path, cli) -> None:
    path = write_study(workdir, budget={"epochs": 1, "n_trials": 6})
    result = cli("run", path, "--jobs", "2")
    assert result.exit_code == 0, result.output
    trials = _study(workdir).trials
    finished = [t for t in trials if t.state.is_finished()]
    assert 6 <= len(finished) <= 7  # a second worker may start one trial before it sees the target
    assert len({t.number for t in trials}) == len(trials)


def test_ctrl_c_marks_running_trial_interrupted_exits_130_and_resumes(workdir: Path) -> None:
    # runs until interrupted; ASHA reads the trial's reports from the study, so they are written at once (see below)
    # the catalog's LR ranges: no range test, so no first trials at its suggestions waiting in the queue
    space = {**TINY_STUDY["space"], "lr": "catalog"}
    budget = {"steps": 10_000_000, "eval_every": 200, "n_trials": 3}
    path = write_study(workdir, budget=budget, pruner="asha", space=space)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tuner", "run", str(path), "--tracking-uri", "none"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not _has_running_trial(workdir):
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # never leave a run of ten million steps behind
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    interrupted = [t for t in _study(workdir).trials if t.user_attrs.get("reason") == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0].state == optuna.trial.TrialState.FAIL

    short = write_study(workdir, "short.yaml", budget={"epochs": 1, "n_trials": 1}, pruner="asha", space=space)
    resumed = subprocess.run(  # a shorter budget changes what the study is: said, and allowed
        [sys.executable, "-m", "tuner", "run", str(short), "--tracking-uri", "none", "--allow-change"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "re-queued 1 interrupted trial(s): #0" in resumed.stdout
    first, retry = _study(workdir).trials
    assert (first.state, retry.state) == (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE)
    assert retry.user_attrs["retry_of"] == 0 and retry.params == first.params  # the same recipe, the same seed
    assert retry.user_attrs["seed"] == first.user_attrs["seed"]


def _default_sigint() -> None:
    """A process started in the background of a non-interactive shell inherits SIGINT ignored (and so would the run
    under test); restore the default so Python raises KeyboardInterrupt as it does at a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _has_running_trial(workdir: Path) -> bool:
    """Whether a trial is training. Read the study database read-only (creating Optuna's schema here would race the
    process under test)."""
    import sqlite3

    db = workdir / "tuner.db"
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as connection:
            # running and past its first evaluation: well inside the training loop. (A Ctrl-C in a trial's first
            # moments -- loading data, first imports -- is handled the same way, but the process sometimes ends by
            # SIGINT after its exit(130): a shell reports 130 either way, Popen -2. Seen with and without this
            # session's changes; CPython's "unhandled KeyboardInterrupt" flag survives a handled one.)
            return (
                connection.execute(
                    "SELECT count(*) FROM trials JOIN trial_intermediate_values USING (trial_id) "
                    "WHERE state = 'RUNNING'"
                ).fetchone()[0]
                > 0
            )
    except sqlite3.Error:
        return False


@pytest.mark.parametrize(
    "space",
    [
        {"optimizers": {"adam": {}}, "schedules": {"cosine": {}}, "warmup": 0.1, "clip_norm": 1.0, "batch_size": [64]},
        {"optimizers": {"nesterov": {}}, "schedules": {"one_cycle": {}}, "weight_decay": 1e-4, "batch_size": [64]},
        {
            "optimizers": {"adamw": {}},
            "schedules": {"cosine_restarts": {}},
            "weight_decay": 1e-3,
            "weight_decay_mode": "decoupled",
            "batch_size": [32],
        },
    ],
    ids=["adam-cosine-warmup", "nesterov-onecycle", "adamw-restarts"],
)
def test_exported_python_reproduces_the_training_lr_sequence(workdir: Path, cli, space) -> None:
    import torch

    from tuner.recipe import Recipe
    from tuner.tasks import load_task
    from tuner.train import TrainBudget, fit

    path = write_study(workdir, budget={"epochs": 2, "n_trials": 1}, space=space)
    assert cli("run", path, "--tracking-uri", "none").exit_code == 0
    source = cli("export", "tiny", "--format", "python").stdout
    namespace: dict = {}
    exec(compile(source, "exported.py", "exec"), namespace)  # the snippet must run on its own

    best = json.loads(cli("best", "tiny", "--json").stdout)
    recipe = Recipe.from_dict(best["recipe"])
    trained = fit(load_task("digits-mlp", {"hidden": [32]}), recipe, TrainBudget(epochs=2), seed=best["seed"])
    assert f"The trial ran {trained.total_steps} optimizer steps" in source

    model = torch.nn.Linear(4, 2)
    optimizer = namespace["make_optimizer"](model)
    scheduler = namespace["make_scheduler"](optimizer, trained.total_steps)
    exported = []
    for _ in range(trained.total_steps):
        exported.append(optimizer.param_groups[0]["lr"])
        model(torch.ones(1, 4)).sum().backward()
        namespace["clip_gradients"](model)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    for step, lr in trained.lr_curve:
        assert exported[step] == pytest.approx(lr, rel=1e-12, abs=1e-15), step
