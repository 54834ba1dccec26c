"""Bring your own training: a ``train:`` function and a ``command:`` script run as trials of a real study (SQLite,
MLflow on SQLite), recorded like tuner's own: states, reasons, values, every report, the LR curve."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from tests.helpers import FIXTURES, mlflow_runs
from tuner.errors import TunerError
from tuner.study.prepare import prepare
from tuner.study.runner import RunOptions, run_study

SPACE = {"optimizers": ["adam", "momentum"], "schedules": ["constant", "cosine"], "batch_size": [64]}


def _study_file(directory: Path, **door) -> Path:
    for name in ("user_train.py", "user_command.py"):
        shutil.copy(FIXTURES / name, directory / name)
    data = {
        "name": "own",
        **door,
        "metric": "accuracy",
        "direction": "maximize",
        "budget": {"epochs": 2, "n_trials": 3},
        "space": SPACE,
        "pruner": "none",
        "seed": 0,
    }
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def test_a_train_function_is_tuned_like_a_task(workdir: Path) -> None:
    study = run_study(prepare(_study_file(workdir, train="user_train.py:train")), RunOptions(n_trials=3))
    trials = _trials(study)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for trial in trials:
        steps = sorted(trial.intermediate_values)
        assert len(steps) == 2 and trial.value == pytest.approx(trial.intermediate_values[steps[-1]])
        assert trial.user_attrs["reason"] == "completed" and trial.user_attrs["total_steps"] == 2 * steps[0]
    runs = {
        int(r.data.tags["tuner.trial_number"]): r
        for r in mlflow_runs(f"sqlite:///{workdir}/mlflow.db", "own")
        if r.data.tags.get("tuner.role") == "trial"
    }
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["tuner.state"] == "COMPLETE"
    assert {"accuracy", "loss", "lr", "objective"} <= set(run.data.metrics)
    assert run.data.params["optimizer"] == trials[0].user_attrs["recipe"]["optimizer"]


def test_a_float_return_counts_and_reruns_are_identical(workdir: Path) -> None:
    first = run_study(prepare(_study_file(workdir, train="user_train.py:train_returning_a_float")), RunOptions(1))
    values = [t.value for t in _trials(first)]
    (workdir / "again").mkdir()
    again = run_study(
        prepare(
            _study_file(workdir / "again", train="user_train.py:train_returning_a_float"),
            storage=f"sqlite:///{workdir}/again/tuner.db",
            tracking_uri="none",
        ),
        RunOptions(1),
    )
    assert [t.value for t in _trials(again)] == values


def test_failures_and_divergence_of_the_users_code_are_recorded_with_reasons(workdir: Path) -> None:
    broken = run_study(
        prepare(_study_file(workdir, train="user_train.py:train_that_breaks"), tracking_uri="none"),
        RunOptions(n_trials=1),
    )
    (trial,) = _trials(broken)[:1]
    assert trial.state.name == "FAIL"
    assert trial.user_attrs["reason"].startswith("error: ValueError: the data pipeline broke (at user_train.py:")
    assert trial.user_attrs["reason"].endswith("in train_that_breaks)")

    (workdir / "d").mkdir()
    diverging = run_study(
        prepare(
            _study_file(workdir / "d", train="user_train.py:train_that_diverges"),
            storage=f"sqlite:///{workdir}/d/tuner.db",
            tracking_uri="none",
        ),
        RunOptions(1),
    )
    (trial,) = _trials(diverging)[:1]
    assert trial.state.name == "PRUNED" and trial.user_attrs["reason"].startswith("diverged at step 2")
    assert trial.value == pytest.approx(0.5)  # the last finite value, never a NaN


@pytest.mark.parametrize(
    ("door", "message"),
    [
        (
            {"train": "user_train.py:train_with_two_arguments"},
            r"train_with_two_arguments\(trial, other\) must take one",
        ),
        ({"train": "user_train.py:nope"}, "defines no function 'nope'"),
        ({"train": "missing.py:train"}, "file not found: 'missing.py'"),
        ({"command": "python missing.py"}, "script 'missing.py' not found"),
        ({"command": "no-such-program --flag"}, "program 'no-such-program' not found"),
    ],
)
def test_bad_doors_fail_before_anything_is_written(workdir: Path, door: dict, message: str) -> None:
    with pytest.raises(TunerError, match=message):
        prepare(_study_file(workdir, **door))
    assert not (workdir / "tuner.db").exists()


def test_a_population_needs_a_task(workdir: Path) -> None:
    path = _study_file(workdir, train="user_train.py:train")
    data = yaml.safe_load(path.read_text())
    data["budget"]["population"] = 4
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TunerError, match="budget.population: 4 members need a task"):
        prepare(path)
    data["budget"].pop("population")
    data["space"]["lr"] = "auto"  # lr: auto is no longer refused: a probe sweep of the user's code
    path.write_text(yaml.safe_dump(data))
    assert prepare(path).space.auto_lr == ("adam", "momentum")


def test_a_command_is_tuned_like_a_function_and_reports_over_the_socket(workdir: Path) -> None:
    study = run_study(prepare(_study_file(workdir, command="python user_command.py")), RunOptions(n_trials=2))
    trials = _trials(study)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    assert all(len(t.intermediate_values) == 2 and t.user_attrs["total_steps"] > 0 for t in trials)
    (workdir / "fn").mkdir()
    function = run_study(
        prepare(
            _study_file(workdir / "fn", train="user_train.py:train"),
            storage=f"sqlite:///{workdir}/fn/tuner.db",
            tracking_uri="none",
        ),
        RunOptions(2),
    )
    assert [t.value for t in trials] == [t.value for t in _trials(function)]  # the same trial, in or out of process
    runs = [r for r in mlflow_runs(f"sqlite:///{workdir}/mlflow.db", "own") if r.data.tags.get("tuner.role") == "trial"]
    assert all("lr" in r.data.metrics and "accuracy" in r.data.metrics for r in runs)


@pytest.mark.parametrize(
    ("mode", "budget", "reason"),
    [
        ("crash", {}, r"error: the command exited with code 3; its last output \(.*trial.log\): about to crash"),
        ("silent", {}, r"error: the command ended without reporting"),
        ("sleep", {"trial_timeout": 3}, r"error: timed out after 3 s \(budget.trial_timeout\)"),
    ],
)
def test_a_command_that_fails_fails_its_trial_with_the_reason(
    workdir: Path, mode: str, budget: dict, reason: str
) -> None:
    path = _study_file(workdir, command=f"python user_command.py {mode}")
    data = yaml.safe_load(path.read_text())
    data["budget"].update(budget, n_trials=1)
    path.write_text(yaml.safe_dump(data))
    study = run_study(prepare(path, tracking_uri="none"), RunOptions(n_trials=1))
    trial = _trials(study)[0]
    assert trial.state.name == "FAIL"
    assert __import__("re").match(reason, trial.user_attrs["reason"]), trial.user_attrs["reason"]


def test_from_env_outside_a_command_trial_says_how_to_use_it(monkeypatch) -> None:
    import tuner

    monkeypatch.delenv("TUNER_TRIAL", raising=False)
    with pytest.raises(TunerError, match=r"\$TUNER_TRIAL is not set"):
        tuner.Trial.from_env()


def test_the_cli_refuses_a_file_with_two_doors(workdir: Path, cli) -> None:
    path = _study_file(workdir, train="user_train.py:train")
    data = yaml.safe_load(path.read_text())
    data["task"] = "digits-mlp"
    path.write_text(yaml.safe_dump(data))
    result = cli("run", path)
    assert result.exit_code == 2
    assert "give exactly one of task, train or command (got task='digits-mlp', train='user_train.py:train')" in (
        result.output
    )


@pytest.mark.parametrize("door", [{"train": "user_train.py:train"}, {"command": "python user_command.py"}])
def test_a_study_of_own_code_is_locked_and_regressed_by_calling_it(workdir: Path, cli, door: dict) -> None:
    """`tuner lock` re-runs the best recipe by calling the function (or running the command) on fixed seeds; `tuner
    regress` re-runs the lock from another folder and passes bit-identically on this CPU."""
    study_file = _study_file(workdir, **door)
    data = yaml.safe_load(study_file.read_text())
    data["budget"]["n_trials"] = 2
    study_file.write_text(yaml.safe_dump(data))
    assert cli("run", study_file, "--tracking-uri", "none").exit_code == 0
    lock = workdir / "locks" / "own.lock.yaml"
    result = cli("lock", "own", "--file", study_file, "--seeds", "2", "-o", lock)  # own code: named here
    assert result.exit_code == 0, result.output
    stored = yaml.safe_load(lock.read_text())
    key = next(iter(door))
    assert stored[key] == ({"name": "../user_train.py:train", "options": {}} if key == "train" else door["command"])
    assert stored.get("workdir") == (".." if key == "command" else None)
    regressed = cli("regress", lock)
    assert regressed.exit_code == 0, regressed.output
    assert "1 passed, 0 regressed" in regressed.output and "+0 " in regressed.output


# -- lr-find and lr: auto on own training: a probe sweep of short runs of the user's code ---------------------------


def test_lr_find_probes_a_train_function_and_never_reaches_a_diverged_probe(workdir: Path, cli) -> None:
    """digits + sgd, probes from 0.1 to 100: at lr 100 the epoch ends with loss 57 (the net is dead), a divergence;
    the suggestion is the probe with the best accuracy, and the range stays below lr 100."""
    from tuner.train.lr_range import SweepConfig, find_lrs

    path = _study_file(workdir, train="user_train.py:train")
    args = ["--optimizer", "sgd", "--lr-start", "0.1", "--lr-end", "100", "--probes", "3", "--plot", "lr.png"]
    result = cli("lr-find", path, *args)
    assert result.exit_code == 0, result.output
    assert "LR probe sweep of user_train.py:train (own training: 3 short runs per optimizer, 3 in all" in result.stdout
    assert "3 probes of 1 epoch, 1 diverged (from lr 100)" in result.stdout
    assert (workdir / "lr.png").read_bytes()[:4] == b"\x89PNG"

    prepared = prepare(path)
    config = SweepConfig(lr_start=0.1, lr_end=100.0, probes=5)
    (finding,) = find_lrs(prepared.trains, ["sgd"], batch_size=64, config=config, seed=0, device="cpu").values()
    values = finding.losses  # each probe's accuracy, NaN where it diverged
    diverged = [lr for lr, value in zip(finding.lrs, values) if value != value]
    assert finding.lrs == pytest.approx(config.probe_lrs("sgd")) and diverged and diverged[-1] == pytest.approx(100)
    best = max((v, lr) for lr, v in zip(finding.lrs, values) if v == v)[1]
    row = finding.summary()
    assert row["lr"] == best and row["low"] <= row["lr"] <= row["high"] < min(d for d in diverged if d > best)
    assert not (workdir / "tuner.db").exists()  # probes are not trials: nothing written


def test_lr_auto_on_a_train_function_sets_the_range_the_trials_search(workdir: Path) -> None:
    path = _study_file(workdir, train="user_train.py:train")
    data = yaml.safe_load(path.read_text())
    data["space"]["optimizers"] = {"sgd": {"lr": "auto"}, "adam": {}}
    data["budget"]["epochs"] = 1
    path.write_text(yaml.safe_dump(data))
    messages: list[str] = []
    study = run_study(prepare(path), RunOptions(n_trials=4), on_message=messages.append)
    (row,) = study.user_attrs["lr_auto"].values()
    assert set(study.user_attrs["lr_auto"]) == {"sgd"} and "7 probes of 1 epoch" in row["stopped"]
    assert row["low"] < row["lr"] <= row["high"] and any(m.startswith("lr: auto  sgd") for m in messages)
    assert row["steps"] == 7 * 22 and row["seconds"] > 0  # 7 one-epoch probes of 22 batches: the study's compute
    trials = _trials(study)
    assert [t.number for t in trials] == [0, 1, 2, 3] and all(t.state.name == "COMPLETE" for t in trials)
    for trial in trials:
        if "sgd.lr" in trial.params:
            dist = trial.distributions["sgd.lr"]
            assert (dist.low, dist.high) == pytest.approx((row["low"], row["high"]))
            assert row["low"] <= trial.params["sgd.lr"] <= row["high"]
        else:
            assert trial.distributions["adam.lr"].low == 1e-5  # the catalog's range: adam is not auto
    (parent,) = [
        r for r in mlflow_runs(f"sqlite:///{workdir}/mlflow.db", "own") if r.data.tags.get("tuner.role") == "study"
    ]
    assert float(parent.data.params["lr_auto.sgd.high"]) == pytest.approx(row["high"])


def test_lr_find_probes_a_command_like_the_same_function(workdir: Path, cli) -> None:
    """The command runs the same loop in its own process: its probes end as the function's do, same suggestion."""
    import json

    args = ["--optimizer", "sgd", "--lr-start", "0.1", "--lr-end", "100", "--probes", "2", "--json"]
    command = cli("lr-find", _study_file(workdir, command="python user_command.py"), *args)
    assert command.exit_code == 0, command.output
    (workdir / "fn").mkdir()
    function = cli("lr-find", _study_file(workdir / "fn", train="user_train.py:train"), *args)
    assert function.exit_code == 0, function.output
    (row,) = json.loads(command.stdout)
    (same,) = json.loads(function.stdout)
    assert row.pop("seconds") > 0 and same.pop("seconds") > 0  # a command's probes also pay its start-up
    assert row == same and row["stopped"].startswith("2 probes of 1 epoch") and row["steps"] == 2 * 22


def test_check_says_lr_auto_probes_the_users_code(workdir: Path, cli) -> None:
    path = _study_file(workdir, train="user_train.py:train")
    data = yaml.safe_load(path.read_text())
    data["space"]["lr"] = "auto"
    path.write_text(yaml.safe_dump(data))
    result = cli("check", path)
    assert result.exit_code == 0, result.output
    assert (
        "adam  lr from a probe sweep of 7 short runs of your code (lr: auto), before the first trial" in result.output
    )


def test_lr_find_on_code_that_always_fails_says_so(workdir: Path, cli) -> None:
    path = _study_file(workdir, train="user_train.py:train_that_breaks")
    result = cli("lr-find", path, "--optimizer", "sgd", "--probes", "2")
    assert result.exit_code == 2
    assert "every probe of sgd's LR sweep failed; at lr 0.001: ValueError: the data pipeline broke" in result.stderr
    # an --lr-end below the catalog's low (sgd: 0.001) is refused before any probe runs
    result = cli("lr-find", path, "--optimizer", "adam", "--optimizer", "sgd", "--lr-end", "1e-4")
    assert result.exit_code == 2 and "lr_start=0.001, lr_end=0.0001" in result.stderr
