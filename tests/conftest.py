"""Shared fixtures: a fresh working directory, a CLI runner, a PostgreSQL server for the session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory: the embedded defaults (tuner.db, mlflow.db) land here."""
    monkeypatch.chdir(tmp_path)
    for name in ("TUNER_STORAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test its own cache directory: MLflow calls a test left in the spool stay out of the others (and of the
    user's ~/.cache); the MLflow settings a tracker gives its process are undone after each test."""
    from tuner.tracking.mlflow_tracker import CLIENT_ENV

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    saved = {name: os.environ.get(name) for name in CLIENT_ENV}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    models train as fast, and threads waiting for each other's cores on a busy 2-core machine make them many times
    slower; a process the test starts and this one then compute alike."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 for the session (``create_database(name)`` gives each test its own URL)."""
    from tests.service_fixtures import PostgresServer

    server = PostgresServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """An ``mlflow server`` on SQLite for the module (``stop``/``start``, ``pause``/``resume`` make outages)."""
    from tests.service_fixtures import MlflowServer

    root = tmp_path_factory.mktemp("mlflow")
    server = MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts")
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


os.environ.setdefault("PYTHONHASHSEED", "0")
