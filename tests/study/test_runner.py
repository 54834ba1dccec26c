"""Every sampler and pruner of the tables runs a real (tiny) study; per-trial seeds are stable."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tests.helpers import write_study
from tuner.study.lifecycle import trial_seed
from tuner.study.prepare import prepare
from tuner.study.runner import RunOptions, run_study
from tuner.study.tables import PRUNERS, SAMPLERS


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs_a_conditional_study(workdir: Path, sampler: str) -> None:
    path = write_study(
        workdir,
        sampler=sampler,
        budget={"steps": 20, "eval_every": 10, "n_trials": 4},
        space={"optimizers": ["adam", "sgd"], "schedules": ["constant", "step"], "batch_size": [64]},
        tracking_uri="none",
    )
    study = run_study(prepare(path), RunOptions(n_trials=4, allow_partial_grid=sampler == "grid"))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 4 and all(t.state != optuna.trial.TrialState.FAIL for t in finished)
    for trial in finished:
        recipe = trial.user_attrs["recipe"]
        assert {name.split(".")[0] for name in trial.params if "." in name} <= {recipe["optimizer"], recipe["schedule"]}


NEEDED_OPTIONS = {"percentile": {"percentile": 25}}
"""Pruners a bare name does not build (tests/study/test_checks.py: the message that says so)."""


@pytest.mark.parametrize("pruner", sorted(PRUNERS))
def test_every_pruner_runs(workdir: Path, pruner: str) -> None:
    path = write_study(
        workdir,
        pruner={"name": pruner, "options": NEEDED_OPTIONS.get(pruner, {})},
        budget={"steps": 40, "eval_every": 5, "n_trials": 6},
        space={"optimizers": ["sgd"], "schedules": ["constant"], "batch_size": [64]},
        tracking_uri="none",
    )
    study = run_study(prepare(path), RunOptions(n_trials=6))
    states = {t.state for t in study.trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)


def test_trial_seeds_are_stable_and_distinct() -> None:
    seeds = [trial_seed(0, n) for n in range(1000)]
    assert len(set(seeds)) == 1000 and seeds[:3] == [trial_seed(0, 0), trial_seed(0, 1), trial_seed(0, 2)]
    assert trial_seed(1, 0) != trial_seed(0, 0)
    assert all(0 <= s < 2**31 for s in seeds)


def test_a_trial_another_worker_failed_as_lost_keeps_that_outcome_in_optuna_and_mlflow(workdir: Path) -> None:
    """The worker that was thought lost comes back and ends its trial: the study refuses the write, the result is
    discarded with a warning (the worker goes on), and the MLflow run the other worker closed as lost is not reopened
    as complete."""
    from tuner.study.lifecycle import TrialLifecycle, TrialResultDiscarded
    from tuner.study.runner import open_study, open_tracker
    from tuner.study.runs import LostRunCloser
    from tuner.study.storage import LostTrial
    from tuner.tracking import TrialOutcome

    prepared = prepare(write_study(workdir))
    tracker = open_tracker(prepared.tracking_uri)
    study = open_study(prepared, tracker)
    lifecycle = TrialLifecycle(study, prepared, tracker)
    member = lifecycle.start(study.ask())
    trial_id = member.trial._trial_id
    assert study._storage.get_trial(trial_id).user_attrs["mlflow_run_id"] == member.run.run_id
    study._storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)  # what the other worker does:
    optuna.storages.RetryFailedTrialCallback()(study, study._storage.get_trial(trial_id))  # queues trial 1
    LostRunCloser(tracker)(LostTrial("tiny", 0, member.run.run_id))
    with pytest.warns(
        TrialResultDiscarded, match=r"trial 0 was failed as lost by another worker.*its retry is trial 1.*discarded"
    ):
        lifecycle.end(member, TrialOutcome("COMPLETE", "completed", 0.9, 1.0, attrs={"total_steps": 10}))
    tracker.flush()
    stored = study._storage.get_trial(trial_id)
    assert stored.state == optuna.trial.TrialState.FAIL and "reason" not in stored.user_attrs
    mlflow_run = tracker.client.get_run(member.run.run_id)
    assert mlflow_run.info.status == "FAILED"
    assert (mlflow_run.data.tags["tuner.state"], mlflow_run.data.tags["tuner.reason"]) == ("FAIL", "worker lost")


def test_a_busy_machine_gets_a_hint_when_cpu_trials_would_run_several_threads_each(monkeypatch) -> None:
    import torch

    from tuner.study.runner import busy_cpu_hint

    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # what torch would use in a single process
    hint = busy_cpu_hint("cpu", jobs=1, load=9.2, cores=4)
    assert hint is not None and "load 9.2 on 4 cores" in hint and "4 torch threads" in hint
    assert "OMP_NUM_THREADS=1" in hint
    assert busy_cpu_hint("cpu", jobs=1, load=3.5, cores=4) is None  # a core to spare
    assert busy_cpu_hint("cpu", jobs=4, load=9.2, cores=4) is None  # one thread each already
    assert "2 torch threads" in (busy_cpu_hint("cpu", jobs=2, load=9.2, cores=4) or "")
    assert busy_cpu_hint("cuda", jobs=1, load=9.2, cores=4) is None
    assert (busy_cpu_hint("auto", jobs=1, load=9.2, cores=4) is None) == torch.cuda.is_available()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # OMP_NUM_THREADS=1
    assert busy_cpu_hint("cpu", jobs=1, load=9.2, cores=4) is None
