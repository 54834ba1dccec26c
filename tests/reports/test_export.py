"""`tuner export --format lightning`: the configure_optimizers body reproduces the trial's optimizer and LR sequence."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from tests.helpers import write_study
from tuner.schedules import build_schedule


def test_lightning_export_builds_the_recipe(workdir: Path, cli) -> None:
    path = write_study(
        workdir,
        budget={"epochs": 1, "n_trials": 2},
        space={"optimizers": ["adam"], "schedules": ["cosine"], "batch_size": 64, "clip_norm": 1.0},
    )
    assert cli("run", path).exit_code == 0
    result = cli("export", "tiny", "--format", "lightning")
    assert result.exit_code == 0, result.output
    namespace: dict = {}
    exec(result.stdout, namespace)

    class Module(torch.nn.Linear):  # stands in for a LightningModule: the hooks only need self.parameters()
        configure_optimizers = namespace["configure_optimizers"]
        configure_gradient_clipping = namespace["configure_gradient_clipping"]

    module = Module(4, 2)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.Adam) and config["lr_scheduler"]["interval"] == "step"

    trial = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}").best_trial
    recipe, total = trial.user_attrs["recipe"], trial.user_attrs["total_steps"]
    schedule = build_schedule("cosine", total, recipe["schedule_params"])
    for step in range(total):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(recipe["lr"] * schedule(step), rel=1e-12)
        optimizer.step()
        scheduler.step()

    module.weight.grad = torch.full_like(module.weight, 10.0)
    module.bias.grad = torch.full_like(module.bias, 10.0)
    module.configure_gradient_clipping(optimizer)
    norm = torch.nn.utils.get_total_norm([module.weight.grad, module.bias.grad])
    assert float(norm) == pytest.approx(1.0, rel=1e-4)
