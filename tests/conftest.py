"""Shared fixtures: a tiny study file in a temporary working directory, a CLI runner, a PostgreSQL server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

TINY_STUDY = {
    "name": "tiny",
    "task": {"name": "digits-mlp", "options": {"hidden": [32]}},
    "budget": {"epochs": 2, "n_trials": 4},
    "space": {"optimizers": ["adam", "sgd"], "schedules": ["constant", "cosine"], "batch_size": [64]},
    "pruner": "none",
    "seed": 0,
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory: the embedded defaults (tuner.db, mlflow.db) land here."""
    monkeypatch.chdir(tmp_path)
    for name in ("TUNER_STORAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def write_study(directory: Path, filename: str = "study.yaml", **changes) -> Path:
    """Write TINY_STUDY with top-level ``changes`` to ``directory/filename``."""
    data = {**TINY_STUDY, **changes}
    path = directory / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 for the session (``create_database(name)`` gives each test its own URL)."""
    from service_fixtures import PostgresServer

    server = PostgresServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def cli():
    """Invoke the real ``tuner`` Typer app in-process."""
    from typer.testing import CliRunner

    from tuner.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


def mlflow_runs(tracking_uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id], max_results=1000)


os.environ.setdefault("PYTHONHASHSEED", "0")
