"""Every sampler and pruner of the tables runs a real (tiny) study; per-trial seeds are stable."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tests.conftest import write_study
from tuner.engine import PRUNERS, SAMPLERS, RunOptions, prepare, run_study, trial_seed


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs_a_conditional_study(workdir: Path, sampler: str) -> None:
    path = write_study(workdir, sampler=sampler, budget={"steps": 20, "eval_every": 10, "n_trials": 4},
                       space={"optimizers": ["adam", "sgd"], "schedules": ["constant", "step"], "batch_size": [64]},
                       tracking_uri="none")
    study = run_study(prepare(path), RunOptions(n_trials=4))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 4 and all(t.state != optuna.trial.TrialState.FAIL for t in finished)
    for trial in finished:
        recipe = trial.user_attrs["recipe"]
        assert {name.split(".")[0] for name in trial.params if "." in name} <= {recipe["optimizer"], recipe["schedule"]}


@pytest.mark.parametrize("pruner", sorted(PRUNERS))
def test_every_pruner_runs(workdir: Path, pruner: str) -> None:
    path = write_study(workdir, pruner=pruner, budget={"steps": 40, "eval_every": 5, "n_trials": 6},
                       space={"optimizers": ["sgd"], "schedules": ["constant"], "batch_size": [64]}, tracking_uri="none")
    study = run_study(prepare(path), RunOptions(n_trials=6))
    states = {t.state for t in study.trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)


def test_trial_seeds_are_stable_and_distinct() -> None:
    seeds = [trial_seed(0, n) for n in range(1000)]
    assert len(set(seeds)) == 1000 and seeds[:3] == [trial_seed(0, 0), trial_seed(0, 1), trial_seed(0, 2)]
    assert trial_seed(1, 0) != trial_seed(0, 0)
    assert all(0 <= s < 2**31 for s in seeds)
