"""The storage tuner opens passes Optuna's own conformance suite for storages, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from optuna.testing.pytest_storages import StorageTestCase

from tuner.study.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    """A fresh ``TunerStorage`` (one database each), opened as ``tuner run`` opens it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'study.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database(f"conf_{uuid.uuid4().hex[:12]}")
    opened = open_storage(url)
    yield opened
    opened.engine.dispose()


class TestTunerStorage(StorageTestCase):
    """Every test of ``optuna.testing.pytest_storages.StorageTestCase`` against ``storage``."""
