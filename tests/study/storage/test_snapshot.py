"""Asking a population from one snapshot of the study: the same draws as without it, one database read."""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage

from tests.helpers import write_study
from tuner.study.prepare import prepare
from tuner.study.storage import open_storage
from tuner.study.storage.rdb import asking_from_one_snapshot
from tuner.study.tables import SAMPLERS

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [
    pytest.mark.filterwarnings("ignore:Heartbeat of storage"),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]

MIXED_SPACE = {"optimizers": ["adam", "sgd"], "schedules": ["constant", "cosine"]}
GRID_SPACE = {
    "optimizers": {"sgd": {"lr": 0.1}},
    "schedules": {"constant": {}},
    "batch_size": [8, 16, 32, 64, 128, 256, 512, 1024],
}


def _ask_population(study: optuna.Study, space, size: int, snapshot: bool) -> list[dict]:
    if not snapshot:
        trials = [study.ask() for _ in range(size)]
        for trial in trials:
            space.sample(trial)
        return [t.params for t in trials]
    asked = []
    with asking_from_one_snapshot(study):
        for _ in range(size):
            asked.append(study.ask())
            space.sample(asked[-1])
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            assert running[-1].params == asked[-1].params  # reads see what was just sampled
    return [t.params for t in asked]


@pytest.fixture
def database_reads(monkeypatch):
    """Counts Optuna's reads of many trials from the database (what its cache does on every study read)."""
    count = [0]
    read = RDBStorage._get_trials

    def counting(*args, **kwargs):
        count[0] += 1
        return read(*args, **kwargs)

    monkeypatch.setattr(RDBStorage, "_get_trials", counting)
    return count


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_asking_from_one_snapshot_samples_what_optuna_would(workdir: Path, sampler: str, database_reads) -> None:
    """Every sampler of the table draws the same population with and without the snapshot, with enqueued trials
    (popped by ``ask`` itself; for the grid, its queued points), while the database is read once."""
    space = prepare(write_study(workdir, space=GRID_SPACE if sampler == "grid" else MIXED_SPACE)).space
    got = {}
    for snapshot in (False, True):
        directory = workdir / str(snapshot)
        directory.mkdir()
        storage = open_storage(f"sqlite:///{directory / 'study.db'}")
        study = optuna.create_study(
            study_name="s",
            storage=storage,
            direction="maximize",
            sampler=SAMPLERS[sampler](3, space, **({"points": 2} if sampler == "grid" else {})),
        )
        if sampler == "grid":  # tuner's grid runs its points from the study's queue
            for params, key in zip(study.sampler.grid.points, study.sampler.grid.keys):
                study.enqueue_trial(dict(params), user_attrs={"grid_point": key})
        for number in range(2 if sampler == "grid" else 6):  # history: completed trials the sampler learns from
            trial = study.ask()
            space.sample(trial)
            study.tell(trial, 0.1 * number)
        for enqueued in _enqueued(sampler):
            study.enqueue_trial(enqueued)
        database_reads[0] = 0
        got[snapshot] = _ask_population(study, space, 5, snapshot)
        if snapshot:
            assert database_reads[0] == 1
        else:
            assert database_reads[0] >= 5  # at least one a trial: what the snapshot saves
        reads = database_reads[0]
        study.get_trials()
        assert database_reads[0] == reads + 1  # after it the storage reads the database again
    assert got[True] == got[False]


def _enqueued(sampler: str) -> list[dict]:
    """Two trials to enqueue; the grid sampler takes only whole grid points."""
    if sampler != "grid":
        return [{"optimizer": "sgd"}, {"optimizer": "adam", "schedule": "cosine"}]
    return [{"batch_size": 32}, {"batch_size": 1024}]


def test_grid_points_running_members_took_are_not_handed_out_again(tmp_path: Path) -> None:
    """Past the grid's size the grid sampler picks among points no trial has taken, running ones included; it notes
    a trial's point inside ``ask``, before the caller holds the trial."""

    def population(snapshot: bool) -> list[int]:
        directory = Path(tempfile.mkdtemp(dir=tmp_path))
        study = optuna.create_study(
            storage=open_storage(f"sqlite:///{directory / 's.db'}"),
            sampler=optuna.samplers.GridSampler({"x": list(range(8))}, seed=0),
        )
        for off_grid in range(100, 108):  # trials 0-7 take no grid point: the grid is still unvisited
            study.enqueue_trial({"x": off_grid}, skip_if_exists=False)
            study.tell(study.ask(), 0.0)
        trials = []
        with asking_from_one_snapshot(study) if snapshot else _nothing():
            for _ in range(8):
                trials.append(study.ask())
        return [trial.suggest_categorical("x", list(range(8))) for trial in trials]

    assert population(True) == population(False)
    assert sorted(population(True)) == list(range(8))  # each point once


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_failure_while_asking_leaves_the_storage_reading_the_database(tmp_path: Path, database_reads) -> None:
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    with pytest.raises(RuntimeError, match="sampler broke"), asking_from_one_snapshot(study):
        raise RuntimeError("sampler broke")
    database_reads[0] = 0
    study.get_trials()
    assert database_reads[0] == 1


def test_the_storage_pickles_and_a_snapshot_is_not_carried(tmp_path: Path) -> None:
    import pickle

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    with storage.snapshot(study_id):
        restored = pickle.loads(pickle.dumps(storage))
    assert restored._snapshot is None and restored.get_study_name_from_id(study_id) == "s"
