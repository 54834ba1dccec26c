"""The grid sampler on a conditional space: one sub-grid per optimizer x schedule branch, the LR with more values,
no effective recipe twice, its size known before the run, each point run once -- by one worker or several, alone or
in populations -- and a grid larger than n_trials refused unless asked for."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import write_study
from tuner.errors import TunerError
from tuner.spec import NamedOptions
from tuner.study.grid import build_grid, effective_recipe, enqueue_grid, grid_of
from tuner.study.keys import TrialKeys
from tuner.study.prepare import prepare
from tuner.study.runner import RunOptions, requeue_interrupted, run_study
from tuner.study.storage import open_storage
from tuner.study.tables import make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")

SMALL = {
    "optimizers": {"sgd": {}, "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}},
    "schedules": ["constant", "cosine"],
    "batch_size": [64],
}
"""lr at 3 values x (constant + cosine's min_factor at 2 values), for each optimizer: 2 x 3 x 3 = 18 points."""
SMALL_GRID = {"name": "grid", "options": {"points": 2, "lr_points": 3}}


def _space(workdir: Path, **space):
    return prepare(write_study(workdir, space=space, sampler="grid")).space


def test_each_branch_spans_its_own_parameters_and_the_lr_gets_more_values(workdir: Path) -> None:
    space = _space(workdir, optimizers=["adam", "sgd", "momentum"], schedules=["constant", "cosine"], batch_size=64)
    grid = build_grid(space)
    # adam: lr 5 x beta1 3 x beta2 3 x eps 3 = 135; sgd: lr 5; momentum: lr 5 x momentum 3 = 15 -- times constant (1)
    # or cosine (min_factor 3). Optuna's GridSampler over every branch's parameters at once: 3 x 2 x 3^8 = 39,366.
    assert grid.size == (135 + 5 + 15) * (1 + 3) == 620
    assert grid.branches == (
        ("adam x constant", 135),
        ("adam x cosine", 405),
        ("sgd x constant", 5),
        ("sgd x cosine", 15),
        ("momentum x constant", 15),
        ("momentum x cosine", 45),
    )
    recipes = {effective_recipe(space, point) for point in grid.points}  # each point: what a trial suggests, no more
    assert len(recipes) == grid.size and len(set(grid.keys)) == grid.size
    adam_lrs = sorted({point["adam.lr"] for point in grid.points if point["optimizer"] == "adam"})
    assert adam_lrs == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1])  # log scale, ends exact
    sgd_points = [point for point in grid.points if point["optimizer"] == "sgd"]
    assert all(set(point) <= {"optimizer", "sgd.lr", "schedule", "cosine.min_factor"} for point in sgd_points)


def test_settings_that_change_nothing_make_no_second_point(workdir: Path) -> None:
    space = _space(
        workdir,
        optimizers={"sgd": {"lr": {"low": 0.01, "high": 0.1}}},
        schedules=["constant"],
        warmup=[0, 10],
        warmup_kind=["linear", "exponential"],
        weight_decay=[0.0, 0.01],
        weight_decay_mode=["coupled", "decoupled"],
    )
    grid = build_grid(space, lr_points=2)
    # warmup: 0 | 10 linear | 10 exponential; weight decay: 0 | 0.01 coupled | 0.01 decoupled
    assert (grid.size, grid.duplicates) == (2 * 3 * 3, 2 * 4 * 4 - 2 * 3 * 3)


def test_a_switch_is_a_branch_of_its_own(workdir: Path) -> None:
    space = _space(
        workdir,
        optimizers=["sgd"],
        schedules=["constant"],
        switch={"to": ["momentum"], "at_fraction": {"low": 0.3, "high": 0.7}},
    )
    grid = build_grid(space)
    # no switch: sgd's lr (5); to momentum: 5 x at_fraction 3 x momentum's lr 5
    assert grid.branches == (("sgd x constant", 5), ("sgd x constant -> momentum", 75))


def _points_run(study: optuna.Study) -> collections.Counter:
    return collections.Counter(t.user_attrs.get(TrialKeys.GRID_POINT) for t in study.trials)


def test_a_grid_study_runs_each_point_once_and_ends_with_the_grid(workdir: Path) -> None:
    path = write_study(workdir, budget={"steps": 5, "n_trials": 25}, space=SMALL, sampler=SMALL_GRID)
    prepared = prepare(path)
    grid = grid_of(prepared.space, prepared.spec.sampler)
    assert grid is not None and grid.size == 18
    study = run_study(prepared, RunOptions(n_trials=25))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 18  # no failed or extra trial at the end
    assert set(_points_run(study)) == set(grid.keys) and max(_points_run(study).values()) == 1
    again = run_study(prepare(path), RunOptions(n_trials=25))  # resumed: nothing is left to run
    assert len(again.trials) == 18


def test_two_workers_and_populations_share_the_grid(workdir: Path) -> None:
    path = write_study(workdir, budget={"steps": 5, "n_trials": 18}, space=SMALL, sampler=SMALL_GRID)

    def wait_for_the_other_worker(study: optuna.Study) -> None:
        """After its first population, this process waits until the spawned worker has taken points too."""
        deadline = time.monotonic() + 120
        while len({t.user_attrs.get(TrialKeys.WORKER) for t in study.get_trials()} - {None}) < 2:
            if time.monotonic() > deadline or not any(t.state == TrialState.WAITING for t in study.get_trials()):
                return
            time.sleep(0.2)

    study = run_study(prepare(path), RunOptions(n_trials=18, jobs=2, population=3), on_trial=wait_for_the_other_worker)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 18
    points = _points_run(study)
    assert len(points) == 18 and set(points.values()) == {1}
    assert len({t.user_attrs[TrialKeys.WORKER] for t in study.trials}) == 2
    assert max(t.user_attrs[TrialKeys.POPULATION] for t in study.trials) == 3  # trained stacked


def test_a_grid_larger_than_n_trials_is_refused_unless_partial(workdir: Path, cli) -> None:
    path = write_study(workdir, budget={"steps": 5, "n_trials": 5}, space=SMALL, sampler=SMALL_GRID)
    refused = cli("run", path)
    assert refused.exit_code == 2
    assert "the grid has 18 points, more than n_trials (5)" in refused.stderr
    assert "--allow-partial-grid" in refused.stderr
    assert not (workdir / "tuner.db").exists() and not (workdir / "mlflow.db").exists()

    partial = cli("run", path, "--allow-partial-grid", "--tracking-uri", "none")
    assert partial.exit_code == 0, partial.output
    assert partial.output.splitlines()[0] == (
        "grid: 18 points over 4 branches (optimizer x schedule), 2 values a range, 3 LR values"
    )
    more = cli("run", path, "--allow-partial-grid", "--n-trials", "8", "--tracking-uri", "none")
    assert more.exit_code == 0, more.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8  # 5, then 3 points more
    assert len(_points_run(study)) == 8


def test_an_interrupted_point_is_queued_again_a_failed_one_is_not(workdir: Path) -> None:
    space = prepare(write_study(workdir, space=SMALL, sampler=SMALL_GRID)).space
    study = optuna.create_study(study_name="g", storage=open_storage(f"sqlite:///{workdir / 'g.db'}"))
    sampler = NamedOptions(**SMALL_GRID)
    assert enqueue_grid(study, space, sampler, seed=0, n_trials=100) == 18
    for reason in ("interrupted", "error: RuntimeError: boom"):
        trial = study.ask()
        space.sample(trial)  # a trial's parameters are suggested as it starts
        trial.set_user_attr(TrialKeys.REASON, reason)
        study.tell(trial, state=TrialState.FAIL)
    interrupted, failed = study.trials[0], study.trials[1]
    assert requeue_interrupted(study) == [interrupted.number]
    assert enqueue_grid(study, space, sampler, seed=0, n_trials=100) == 0  # every point is taken or queued
    queued_again = [t for t in study.trials if t.state == TrialState.WAITING and t.number >= 18]
    assert [t.user_attrs[TrialKeys.GRID_POINT] for t in queued_again] == [interrupted.user_attrs[TrialKeys.GRID_POINT]]
    assert [t.user_attrs[TrialKeys.RETRY_OF] for t in queued_again] == [interrupted.number]
    assert failed.user_attrs[TrialKeys.GRID_POINT] != interrupted.user_attrs[TrialKeys.GRID_POINT]


def test_points_of_another_grid_still_queued_are_refused(workdir: Path) -> None:
    space = prepare(write_study(workdir, space=SMALL, sampler=SMALL_GRID)).space
    study = optuna.create_study(study_name="g", storage=open_storage(f"sqlite:///{workdir / 'g.db'}"))
    enqueue_grid(study, space, NamedOptions(**SMALL_GRID), seed=0, n_trials=100)
    fewer_lrs = NamedOptions(name="grid", options={"points": 2, "lr_points": 2})  # the middle LR's 6 points go
    with pytest.raises(TunerError, match="6 queued points of another grid"):
        enqueue_grid(study, space, fewer_lrs, seed=0, n_trials=100)
    more_values = NamedOptions(name="grid", options={"points": 3, "lr_points": 5})  # every queued point is in it
    assert enqueue_grid(study, space, more_values, seed=0, n_trials=100) == 2 * 5 * (1 + 3) - 18


def test_the_order_is_shuffled_by_the_seed(workdir: Path) -> None:
    space = prepare(write_study(workdir, space=SMALL, sampler=SMALL_GRID)).space
    orders = []
    for seed in (0, 0, 1):
        study = optuna.create_study()
        enqueue_grid(study, space, NamedOptions(**SMALL_GRID), seed=seed, n_trials=100)
        orders.append([t.user_attrs[TrialKeys.GRID_POINT] for t in study.trials])
    assert orders[0] == orders[1] != orders[2] and sorted(orders[0]) == sorted(orders[2])


def test_without_a_refusing_storage_the_grid_stops_at_the_first_trial_it_cannot_fix(workdir: Path) -> None:
    """On a storage that cannot refuse new trials (in memory), the sampler fails the first trial no point fixes and
    stops the study, as Optuna's grid sampler does; a queued trial without a grid key (a retry) runs as any other."""
    path = write_study(workdir, space={**SMALL, "optimizers": ["sgd"], "schedules": ["constant"]}, sampler=SMALL_GRID)
    space = prepare(path).space
    study = optuna.create_study(sampler=make_sampler(NamedOptions(**SMALL_GRID), 0, space))
    enqueue_grid(study, space, NamedOptions(**SMALL_GRID), seed=0, n_trials=100)  # sgd's 3 LRs
    study.enqueue_trial({"sgd.lr": 0.5})  # queued without a grid key, as a retry is

    def objective(trial: optuna.Trial) -> float:
        return space.sample(trial).lr

    study.optimize(objective, n_trials=10, catch=(TunerError,))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4 + [TrialState.FAIL]
