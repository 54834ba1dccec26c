"""The conditional search space: only the chosen optimizer's / schedule's parameters are sampled."""

from __future__ import annotations

import math

import optuna
import pytest

from tuner.space import Beta
from tuner.spec import SpaceSpec
from tuner.study.search import resolve_space


def _space(**kwargs):
    return resolve_space(SpaceSpec(**kwargs), default_batch_size=64)


def test_only_chosen_entries_parameters_are_sampled() -> None:
    space = _space(optimizers=["adam", "sgd", "momentum"], schedules=["constant", "cosine", "step"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        recipe = space.sample(trial)
        prefixes = {name.split(".")[0] for name in trial.params if "." in name}
        assert prefixes <= {recipe.optimizer, recipe.schedule}
        assert f"{recipe.optimizer}.lr" in trial.params
        study.tell(trial, 0.0)
    chosen = {t.params.get("optimizer") for t in study.trials}
    assert chosen == {"adam", "sgd", "momentum"}


def test_betas_are_sampled_on_a_log_one_minus_scale() -> None:
    space = _space(optimizers={"adam": {"beta2": {"low": 0.9, "high": 0.9999}}}, schedules=["constant"])
    assert isinstance(space.optimizers["adam"].params["beta2"], Beta)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    logs = []
    for _ in range(400):
        trial = study.ask()
        recipe = space.sample(trial)
        beta2 = recipe.optimizer_params["beta2"]
        assert 0.9 <= beta2 <= 0.9999
        assert trial.params["adam.beta2.one_minus"] == pytest.approx(1 - beta2)
        logs.append(math.log10(1 - beta2))
        study.tell(trial, 0.0)
    # log10(1-β) is uniform on [-4, -1]: each decade holds about a third of the draws
    per_decade = [sum(low <= x < low + 1 for x in logs) for low in (-4, -3, -2)]
    assert all(90 <= n <= 180 for n in per_decade), per_decade


def test_fixed_values_and_overrides() -> None:
    space = _space(
        optimizers={"sgd": {"lr": 0.05}}, schedules={"step": {"gamma": 0.5}}, weight_decay=1e-4, clip_norm=[1.0, 5.0]
    )
    trial = optuna.trial.FixedTrial({"clip_norm": 5.0, "step.step_size": 0.3})
    recipe = space.sample(trial)
    assert recipe.lr == 0.05 and recipe.schedule_params["gamma"] == 0.5
    assert recipe.weight_decay == 1e-4 and recipe.clip_norm == 5.0


def test_switch_is_searched_with_its_own_lr_and_fraction() -> None:
    space = _space(
        optimizers=["adam"],
        schedules=["constant"],
        switch={"to": ["sgd", "momentum"], "at_fraction": {"low": 0.4, "high": 0.6}},
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        recipe = space.sample(trial)
        switch = recipe.switch
        seen.add(None if switch is None else switch.optimizer)
        if switch is not None:
            assert 0.4 <= switch.at_fraction <= 0.6
            low, high = (1e-3, 1.0) if switch.optimizer == "sgd" else (1e-4, 0.5)
            assert low <= switch.lr <= high and trial.params[f"switch.{switch.optimizer}.lr"] == switch.lr
        study.tell(trial, 0.0)
    assert seen == {None, "sgd", "momentum"}


def test_switch_targets_are_checked() -> None:
    from tuner.errors import TunerError

    with pytest.raises(TunerError, match="sgdd"):
        _space(optimizers=["adam"], schedules=["constant"], switch={"to": ["sgdd"]})
    with pytest.raises(TunerError, match="at_fraction"):
        _space(
            optimizers=["adam"],
            schedules=["constant"],
            switch={"to": ["sgd"], "at_fraction": {"low": 0.5, "high": 1.5}},
        )
