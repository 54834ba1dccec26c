"""An unset ``space.lr`` means ``lr: auto`` for a built-in task when the range tests cost at most a fifth of the
planned study (``tuner.study.lr_auto.RANGE_TEST_MAX_SHARE``); ``space.lr: catalog`` keeps the catalog's ranges, and a
study that began without a range test keeps them when resumed."""

from __future__ import annotations

import shutil
import threading
import warnings
from pathlib import Path

import optuna
import pytest

from tests.helpers import FIXTURES, write_study
from tuner.optim import OPTIMIZERS
from tuner.space import Float
from tuner.study.keys import StudyKeys, TrialKeys
from tuner.study.lr_auto import FIRST_TRIAL_LR_FACTOR, enqueue_suggested_lrs, wait_for_lr_ranges
from tuner.study.prepare import prepare
from tuner.study.runner import RunOptions, run_study

# TINY_STUDY's runs: 2 epochs of 23 steps (batch 64); two range tests of 100 steps each
LONG = {"epochs": 2, "n_trials": 60}  # 2,760 steps planned: the range tests are 7% of it
SHORT = {"epochs": 2, "n_trials": 20}  # 920 steps planned: 22%


def test_a_study_long_enough_gets_lr_auto_and_says_why(workdir: Path, cli) -> None:
    prepared = prepare(write_study(workdir, budget=LONG))
    assert prepared.space.auto_lr == ("adam", "sgd") and prepared.space.auto_lr_by_default
    result = cli("check", str(workdir / "study.yaml"))
    assert result.exit_code == 0, result.output
    assert "lr: auto by default: the range tests (2 x 100 steps) cost 7% of the study's planned training" in (
        result.output
    )


def test_a_short_study_an_explicit_choice_or_an_lr_of_its_own_keeps_the_catalog_ranges(workdir: Path) -> None:
    assert prepare(write_study(workdir, budget=SHORT)).space.auto_lr == ()
    catalog = prepare(write_study(workdir, budget=LONG, space={"optimizers": ["adam", "sgd"], "lr": "catalog"}))
    assert catalog.space.auto_lr == () and catalog.space.optimizers["adam"].params["lr"] == OPTIMIZERS["adam"].lr
    own = {"optimizers": {"adam": {"lr": {"low": 1e-3, "high": 1e-2}}, "sgd": {}}, "batch_size": [64]}
    mixed = prepare(write_study(workdir, budget=LONG, space=own)).space
    assert mixed.auto_lr == ("sgd",) and mixed.optimizers["adam"].params["lr"] == Float(1e-3, 1e-2, log=True)
    explicit = prepare(write_study(workdir, budget=SHORT, space={"optimizers": ["adam"], "lr": "auto"})).space
    assert explicit.auto_lr == ("adam",) and not explicit.auto_lr_by_default


def test_grid_pbt_and_own_training_are_never_given_lr_auto(workdir: Path) -> None:
    grid = prepare(write_study(workdir, budget=LONG, sampler={"name": "grid", "options": {"points": 2}}))
    assert grid.space.auto_lr == ()
    pbt = {**LONG, "population": 4}
    space = {"optimizers": ["adam"], "schedules": ["constant"], "batch_size": [64]}
    assert prepare(write_study(workdir, budget=pbt, space=space, strategy="pbt")).space.auto_lr == ()
    shutil.copy(FIXTURES / "user_train.py", workdir / "user_train.py")
    own = prepare(
        write_study(
            workdir, task=None, train="user_train.py:train", budget=LONG, metric="accuracy", direction="maximize"
        )
    )
    assert own.space.auto_lr == ()


def test_the_range_test_runs_before_the_first_trial_and_its_ranges_are_searched(workdir: Path) -> None:
    budget = {"epochs": 1, "n_trials": 200}
    space = {"optimizers": ["adam"], "schedules": ["constant"], "batch_size": [64]}
    study = run_study(prepare(write_study(workdir, budget=budget, space=space)), RunOptions(n_trials=3))
    found = study.user_attrs[StudyKeys.LR_AUTO]["adam"]
    assert set(found) >= {"low", "high", "steps"}
    assert all(found["low"] <= t.params["adam.lr"] <= found["high"] for t in study.trials)


def test_a_study_begun_with_the_catalog_ranges_keeps_them_when_resumed(workdir: Path) -> None:
    space = {"optimizers": ["adam"], "schedules": ["constant"], "batch_size": [64]}
    short = write_study(workdir, budget={"epochs": 1, "n_trials": 2}, space=space)
    run_study(prepare(short), RunOptions(n_trials=2))
    longer = write_study(workdir, budget={"epochs": 1, "n_trials": 200}, space=space)  # n_trials may change freely
    assert prepare(longer).space.auto_lr_by_default
    messages: list[str] = []
    study = run_study(prepare(longer), RunOptions(n_trials=3), on_message=messages.append)
    assert StudyKeys.LR_AUTO not in study.user_attrs and len(study.trials) == 3
    assert any("lr: the catalog's ranges, as this study began with them" in message for message in messages)
    assert study.trials[-1].distributions["adam.lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)


def test_a_worker_that_joins_during_the_range_tests_waits_for_their_ranges(workdir: Path) -> None:
    prepared = prepare(write_study(workdir, budget=LONG))
    study = optuna.create_study(storage=f"sqlite:///{workdir / 'tuner.db'}", study_name="tiny")
    found = {name: {"low": 1e-3, "high": 1e-2, "lr": 3e-3} for name in ("adam", "sgd")}
    timer = threading.Timer(1.0, study.set_user_attr, (StudyKeys.LR_AUTO, found))
    messages: list[str] = []
    timer.start()
    waited = wait_for_lr_ranges(study, prepared, messages.append, timeout=60, poll=0.1)
    timer.join()
    assert waited.space.optimizers["sgd"].params["lr"] == Float(1e-3, 1e-2, log=True)
    assert messages == ["lr: auto: waiting for the LR range tests that `tuner run` runs before the first trial"]
    alone = optuna.create_study(storage=f"sqlite:///{workdir / 'tuner.db'}", study_name="alone")
    given_up = wait_for_lr_ranges(alone, prepared, messages.append, timeout=0.3, poll=0.1)
    assert given_up.space.optimizers["sgd"].params["lr"] == OPTIMIZERS["sgd"].lr
    assert messages[-1] == "lr: auto: no LR ranges recorded after 0.3 s; searching the catalog's ranges"


def test_a_new_study_first_tries_each_optimizer_at_the_multiple_of_its_suggestion(workdir: Path) -> None:
    budget = {"epochs": 1, "n_trials": 200}
    space = {"optimizers": ["adam", "sgd"], "schedules": ["constant", "cosine"], "batch_size": [64]}
    messages: list[str] = []
    study = run_study(
        prepare(write_study(workdir, budget=budget, space=space)), RunOptions(n_trials=3), on_message=messages.append
    )
    found = study.user_attrs[StudyKeys.LR_AUTO]
    first = sorted(study.trials, key=lambda t: t.number)[:2]
    for trial, name in zip(first, ["adam", "sgd"]):
        row = found[name]
        lr = min(max(FIRST_TRIAL_LR_FACTOR * row["lr"], row["low"]), row["high"])
        assert trial.user_attrs[TrialKeys.LR_SUGGESTED] == name
        assert trial.params["optimizer"] == name and trial.params["schedule"] == "cosine"
        assert trial.params[f"{name}.lr"] == pytest.approx(lr)
    assert sum("lr: auto  first trial: " in message for message in messages) == 2
    resumed = run_study(prepare(write_study(workdir, budget=budget, space=space)), RunOptions(n_trials=5))
    assert len(resumed.trials) == 5
    assert [t.number for t in resumed.trials if TrialKeys.LR_SUGGESTED in t.user_attrs] == [0, 1]


def test_first_trials_set_only_what_the_space_draws_within_the_range_and_none_without_a_range_test(
    workdir: Path,
) -> None:
    budget = {"epochs": 1, "n_trials": 200}
    single = {"optimizers": ["adam"], "schedules": ["constant"], "batch_size": [32, 64]}
    finding = {"adam": {"lr": 0.01, "low": 0.001, "high": 0.02, "batch_size": 64}}
    study = optuna.create_study()
    study.set_user_attr(StudyKeys.LR_AUTO, finding)
    said: list[str] = []
    enqueued = enqueue_suggested_lrs(study, prepare(write_study(workdir, budget=budget, space=single)), said.append)
    assert enqueued == [{"adam.lr": 0.02, "batch_size": 64}]  # 3 x 0.01 capped at the range's high
    assert said == ["lr: auto  first trial: adam at lr 0.02 (3 x the suggested 0.01, within [0.001, 0.02]), constant"]
    assert enqueue_suggested_lrs(study, prepare(write_study(workdir, budget=budget, space=single))) == []  # queued
    catalog = prepare(write_study(workdir, budget=budget, space={**single, "lr": "catalog"}))
    fresh = optuna.create_study()
    fresh.set_user_attr(StudyKeys.LR_AUTO, finding)
    assert enqueue_suggested_lrs(fresh, catalog) == []
    shutil.copy(FIXTURES / "user_train.py", workdir / "user_train.py")  # a probe sweep suggests its best probe
    own_space = {**single, "lr": "auto"}
    own = write_study(
        workdir,
        task=None,
        train="user_train.py:train",
        budget=budget,
        metric="accuracy",
        direction="maximize",
        space=own_space,
    )
    assert prepare(own).space.auto_lr == ("adam",) and enqueue_suggested_lrs(fresh, prepare(own)) == []


def test_a_first_trial_still_queued_when_the_space_changes_is_failed_with_the_reason_not_trained(
    workdir: Path, cli
) -> None:
    budget = {"epochs": 1, "n_trials": 200}
    space = {"optimizers": ["adam", "sgd"], "schedules": ["constant", "cosine"], "batch_size": [64]}
    first = run_study(prepare(write_study(workdir, budget=budget, space=space)), RunOptions(n_trials=1))
    queued = [t for t in first.trials if t.state == optuna.trial.TrialState.WAITING]
    assert [t.user_attrs[TrialKeys.LR_SUGGESTED] for t in queued] == ["sgd"]
    row = first.user_attrs[StudyKeys.LR_AUTO]["sgd"]
    stale_lr = min(max(FIRST_TRIAL_LR_FACTOR * row["lr"], row["low"]), row["high"])
    narrowed = {**space, "optimizers": {"adam": {}, "sgd": {"lr": {"low": stale_lr / 100, "high": stale_lr / 10}}}}
    with warnings.catch_warnings(record=True) as caught:  # Optuna's own warning is not shown: tuner says why
        warnings.simplefilter("always")
        result = cli("run", write_study(workdir, budget=budget, space=narrowed), "--n-trials", 3, "--allow-change")
    assert not [w for w in caught if "Fixed parameter" in str(w.message)]
    assert result.exit_code == 0, result.output
    resumed = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}")
    stale = resumed.trials[queued[0].number]
    assert stale.state == optuna.trial.TrialState.FAIL
    reason = stale.user_attrs[TrialKeys.REASON]
    assert f"sgd.lr = {stale_lr:.4g} is outside [{stale_lr / 100:.4g}, {stale_lr / 10:.4g}]" in reason
    assert "the study's space, which changed since" in reason and TrialKeys.STEPS_DONE not in stale.user_attrs
    assert f"failed: 1 x {reason}" in result.output
    others = [t for t in resumed.trials if t.number != stale.number]
    assert len(others) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in others)  # n_trials: 3
    assert all(t.params["sgd.lr"] <= stale_lr / 10 for t in others if t.params["optimizer"] == "sgd")
