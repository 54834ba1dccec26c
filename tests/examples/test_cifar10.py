"""examples/cifar10 runs as its README says -- the Task file and the own loop -- on a tiny generated CIFAR-10 dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, write_cifar
from tuner.study.prepare import prepare
from tuner.study.runner import RunOptions, run_study

EXAMPLE = ROOT / "examples" / "cifar10"


@pytest.mark.parametrize("study_file", ["study.yaml", "study-train.yaml"])
def test_the_cifar10_example_tunes_on_a_cifar_directory(tmp_path: Path, study_file: str) -> None:
    root = write_cifar(tmp_path / "cifar-10-batches-py", images_per_batch=16)
    data = yaml.safe_load((EXAMPLE / study_file).read_text())
    door = "task" if "task" in data else "train"
    data[door]["name"] = str(EXAMPLE / data[door]["name"])
    data[door]["options"] = {"root": str(root), "limit": 48, "width": 4}
    data.update(budget={"epochs": 1, "n_trials": 2}, tracking_uri="none", storage=f"sqlite:///{tmp_path}/tuner.db")
    data["space"].update(batch_size=[16], schedules=["cosine", "step"])  # one_cycle needs more than 3 steps
    path = tmp_path / study_file
    path.write_text(yaml.safe_dump(data))
    study = run_study(prepare(path), RunOptions(n_trials=2))
    trials = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(trials) == 2, [t.user_attrs.get("reason") for t in study.trials]
    assert all(len(t.intermediate_values) == 1 and 0 <= t.value <= 1 for t in trials)
    assert all(t.user_attrs["total_steps"] == 3 for t in trials)  # 48 images in batches of 16, one epoch
