"""Helpers the tests share: where things are, a tiny study file, reading MLflow runs back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""

FIXTURES = Path(__file__).resolve().parent / "fixtures"
"""User task files the tests load."""

TINY_STUDY = {
    "name": "tiny",
    "task": {"name": "digits-mlp", "options": {"hidden": [32]}},
    "budget": {"epochs": 2, "n_trials": 4},
    "space": {"optimizers": ["adam", "sgd"], "schedules": ["constant", "cosine"], "batch_size": [64]},
    "pruner": "none",
    "seed": 0,
}


def write_study(directory: Path, filename: str = "study.yaml", **changes) -> Path:
    """Write TINY_STUDY with top-level ``changes`` to ``directory/filename``."""
    data = {**TINY_STUDY, **changes}
    path = directory / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def mlflow_runs(tracking_uri: str, experiment: str):
    """Every run of an MLflow experiment (it must exist)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id], max_results=1000)


RTOL = 1e-5
"""How close a population member's final parameters must be to training it alone (float32)."""


class RecordingTask:
    """The real task, remembering the last model it built (``fit`` trains that object in place)."""

    def __init__(self, task: Any) -> None:
        self._task, self.model = task, None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def build_model(self) -> Any:
        self.model = self._task.build_model()
        return self.model


def write_cifar(root: Path, images_per_batch: int = 20) -> Path:
    """A tiny CIFAR-10 directory in the real "python version" format (random pixels, balanced labels)."""
    import pickle

    import numpy as np

    from tuner.tasks import cifar

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in (*cifar.TRAIN_FILES, cifar.TEST_FILE):
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, size=(images_per_batch, cifar.PIXELS), dtype=np.uint8),
            b"labels": [i % cifar.N_CLASSES for i in range(images_per_batch)],
            b"filenames": [f"{name}_{i}.png".encode() for i in range(images_per_batch)],
        }
        (root / name).write_bytes(pickle.dumps(batch))
    meta = {b"label_names": [f"class{i}".encode() for i in range(cifar.N_CLASSES)], b"num_vis": cifar.PIXELS}
    (root / cifar.META_FILE).write_bytes(pickle.dumps(meta))
    return root
