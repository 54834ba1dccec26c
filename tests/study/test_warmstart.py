"""Warm start: mapping an earlier study's recipes onto this study's space, LR rescaling, `tuner run --warm-start`."""

from __future__ import annotations

import math
import re
from pathlib import Path

import optuna
import pytest

from tests.helpers import write_study
from tuner.errors import TunerError
from tuner.recipe import Recipe
from tuner.spec import SpaceSpec
from tuner.study.search import resolve_space
from tuner.study.warmstart import OutsideSpace, map_recipe, parse_source


def _space(**fields):
    data = {
        "optimizers": ["adam", "sgd", "momentum"],
        "schedules": ["constant", "cosine"],
        "batch_size": [32, 64],
        **fields,
    }
    return resolve_space(SpaceSpec(**data), 64)


ADAM = Recipe(
    "adam",
    1e-3,
    {"beta1": 0.9, "beta2": 0.995, "eps": 1e-7},
    schedule="cosine",
    schedule_params={"min_factor": 0.05},
    batch_size=32,
)


@pytest.mark.parametrize("recipe", [ADAM, Recipe("momentum", 0.05, {"momentum": 0.85}, batch_size=64)])
def test_mapped_params_replay_the_recipe(recipe: Recipe) -> None:
    space = _space()
    params, note = map_recipe(space, recipe)
    assert note == ""
    assert space.sample(optuna.trial.FixedTrial(params)) == recipe


@pytest.mark.parametrize(
    "recipe, factor, rule",
    [
        (Recipe("sgd", 0.1, batch_size=32), 4.0, "linear rule (sgd family)"),
        (ADAM, 2.0, "square-root rule (adam family)"),
    ],
)
def test_batch_size_change_rescales_lr_by_family(recipe: Recipe, factor: float, rule: str) -> None:
    space = _space(batch_size=128)
    params, note = map_recipe(space, recipe)
    sampled = space.sample(optuna.trial.FixedTrial(params))
    assert sampled.batch_size == 128 and sampled.lr == pytest.approx(recipe.lr * factor)
    assert rule in note and "batch 32 -> 128" in note


@pytest.mark.parametrize(
    "space_fields, recipe, message",
    [
        (
            {"optimizers": ["adam"]},
            Recipe("sgd", 0.1, batch_size=32),
            "optimizer 'sgd' is not offered here (this study: adam)",
        ),
        ({}, Recipe("rmsprop", 1e-3, batch_size=32), "optimizer 'rmsprop' is not offered here"),
        (
            {"optimizers": {"sgd": {"lr": {"low": 0.01, "high": 0.2}}}, "batch_size": 128},
            Recipe("sgd", 0.1, batch_size=32),
            "sgd.lr = 0.4 is outside [0.01, 0.2]",
        ),
        (
            {"weight_decay": 0.0},
            Recipe("sgd", 0.1, weight_decay=1e-4, batch_size=32),
            "weight_decay: the recipe has 0.0001",
        ),
        (
            {"schedules": ["cosine"]},
            Recipe("sgd", 0.1, schedule="step", batch_size=32),
            "schedule 'step' is not offered here (this study: cosine)",
        ),
    ],
)
def test_recipes_outside_the_space_are_refused_with_the_reason(space_fields, recipe: Recipe, message: str) -> None:
    with pytest.raises(OutsideSpace, match=re.escape(message)):
        map_recipe(_space(**space_fields), recipe)


def test_parse_source() -> None:
    assert parse_source("quickstart") == ("quickstart", 3)
    assert parse_source("quickstart:5") == ("quickstart", 5)
    for bad in ("quickstart:0", "quickstart:x", ":2"):
        with pytest.raises(TunerError, match="STUDY:K"):
            parse_source(bad)


def _load(workdir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'tuner.db'}")


def test_run_warm_start_enqueues_top_k_rescaled(workdir: Path, cli) -> None:
    first = write_study(workdir, "first.yaml", budget={"epochs": 1, "n_trials": 4})
    assert cli("run", first).exit_code == 0
    source = _load(workdir, "tiny")
    top = sorted((t for t in source.trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)[:2]

    second = write_study(
        workdir,
        "second.yaml",
        name="tiny2",
        budget={"epochs": 1, "n_trials": 3},
        space={
            "optimizers": {"adam": {}, "sgd": {"lr": {"low": 1e-3, "high": 10.0}}},
            "schedules": ["constant", "cosine"],
            "batch_size": 128,
        },
    )
    result = cli("run", second, "--warm-start", "tiny:2")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("warm start: enqueued tiny#") == 2
    assert "batch 64 -> 128" in result.stdout and "rule" in result.stdout
    study = _load(workdir, "tiny2")
    assert len(study.trials) == 3
    for old, new in zip(top, study.trials[:2]):
        assert new.user_attrs["warm_start"] == f"tiny#{old.number}"
        before, after = old.user_attrs["recipe"], new.user_attrs["recipe"]
        factor = 2.0 if before["optimizer"] == "sgd" else math.sqrt(2.0)
        assert after["optimizer"] == before["optimizer"] and after["schedule"] == before["schedule"]
        assert after["lr"] == pytest.approx(before["lr"] * factor) and after["batch_size"] == 128
    assert "warm_start" not in study.trials[2].user_attrs


@pytest.mark.parametrize(
    "source, message", [("nope", "no study named 'nope'"), ("tiny:0", "STUDY:K"), ("tiny2", "is the study being run")]
)
def test_bad_warm_start_exits_2_before_creating_the_study(workdir: Path, cli, source: str, message: str) -> None:
    assert cli("run", write_study(workdir, budget={"epochs": 1, "n_trials": 1})).exit_code == 0
    result = cli("run", write_study(workdir, "second.yaml", name="tiny2"), "--warm-start", source)
    assert result.exit_code == 2 and message in result.stderr
    assert optuna.get_all_study_names(f"sqlite:///{workdir / 'tuner.db'}") == ["tiny"]
