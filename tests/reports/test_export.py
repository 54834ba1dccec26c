"""`tuner export`: the Python snippet is the recipe in closed form -- every schedule of the catalog equals tuner's at
every step of any run length, plateau keeps its warmup, a switch trains exactly as tuner's trainer -- and `--trial N`
picks any trial; the Lightning hooks build the same."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import torch
import yaml

from tests.helpers import write_study
from tuner.errors import TunerError
from tuner.recipe import Recipe, Switch
from tuner.reports.export import Exported, export_lightning, python_snippet
from tuner.reports.schedule_code import SCHEDULE_CODE
from tuner.schedules import SCHEDULES, recipe_schedule
from tuner.tasks import load_task
from tuner.train import TrainBudget, Trainer

CLOSED_FORM = [name for name in SCHEDULES if not SCHEDULES[name].metric_driven]

VARIANTS: dict[str, dict[str, Any]] = {  # a second set of parameters per schedule: the other branches of its formula
    "constant": {},
    "step": {"step_size": 7, "gamma": 0.5},
    "multistep": {"milestones": [10, 0.6], "gamma": 0.3},
    "exponential": {"staircase": True, "decay_steps": 0.1},
    "natural_exp": {"staircase": True, "decay_steps": 13},
    "inverse_time": {"decay_steps": 0.2, "decay_rate": 3.0},
    "polynomial": {"cycle": True, "decay_steps": 0.3, "power": 2.0, "end_factor": 0.05},
    "linear": {"total_iters": 0.5, "start_factor": 0.5, "end_factor": 0.1},
    "cosine": {"min_factor": 0.05},
    "cosine_restarts": {"T_0": 0.1, "T_mult": 2, "decay": 0.7, "min_factor": 0.01},
    "linear_cosine": {"num_periods": 2.0, "decay_steps": 0.8, "alpha": 0.1},
    "noisy_linear_cosine": {"seed": 7, "decay_steps": 0.9},
    "one_cycle": {"three_phase": True, "anneal": "linear", "pct_start": 0.25},
    "cyclic": {"mode": "triangular2", "step_size_up": 0.05, "step_size_down": 0.1},
    "piecewise": {"points": [[0, 0.5], [0.3, 1.0], [0.7, 0.1]], "interpolation": "linear"},
}
CASES = [
    *((name, {}, 0.1, "linear") for name in CLOSED_FORM),  # defaults, a fractional linear warmup
    *((name, VARIANTS[name], 7, "exponential") for name in CLOSED_FORM),  # the variants, 7 steps of exponential warmup
    ("cyclic", {"mode": "exp_range", "gamma": 0.999}, 0, "linear"),  # no warmup
    ("piecewise", {"points": [[5, 0.5], [0.5, 0.2]]}, 0, "linear"),
]
TOTALS = (97, 1000)


def _namespace(source: str) -> dict[str, Any]:
    assert "tuner" not in source.replace("`tuner export`", "").replace("tuner's", "").replace("tuner/", ""), (
        "the snippet must not depend on tuner"
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, "<exported>", "exec"), namespace)
    return namespace


def test_every_closed_form_schedule_has_its_code() -> None:
    assert set(SCHEDULE_CODE) == set(CLOSED_FORM) and set(VARIANTS) == set(CLOSED_FORM)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
@pytest.mark.parametrize(
    "schedule, params, warmup, kind", CASES, ids=[f"{c[0]}-{'variant' if c[1] else 'defaults'}-w{c[2]}" for c in CASES]
)
def test_the_exported_lambda_lr_equals_tuners_schedule_at_every_step(
    schedule: str, params: dict[str, Any], warmup: float, kind: str
) -> None:
    """The snippet's LambdaLR gives PEAK_LR x tuner's schedule at every step (and past the end) for two run lengths
    (the old export held a table of the trial's steps: another run length silently held its last value)."""
    recipe = Recipe(optimizer="sgd", lr=0.3, schedule=schedule, schedule_params=params, warmup=warmup, warmup_kind=kind)
    namespace = _namespace(python_snippet(recipe, 97))
    for total in TOTALS:
        expected = recipe_schedule(recipe, total)
        optimizer = namespace["make_optimizer"](torch.nn.Linear(2, 1))
        scheduler = namespace["make_scheduler"](optimizer, total)
        assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
        for step in range(total + 3):
            lr = optimizer.param_groups[0]["lr"]
            assert lr == pytest.approx(recipe.lr * expected(step), rel=1e-12, abs=1e-18), (total, step)
            scheduler.step()


def test_a_warmup_longer_than_the_run_is_refused_by_the_snippet() -> None:
    namespace = _namespace(python_snippet(Recipe(optimizer="sgd", lr=0.1, schedule="cosine", warmup=20)))
    optimizer = namespace["make_optimizer"](torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="total_steps=10"):
        namespace["make_scheduler"](optimizer, 10)


PLATEAU = Recipe(
    optimizer="sgd",
    lr=0.2,
    schedule="plateau",
    schedule_params={"factor": 0.5, "patience": 1, "cooldown": 1, "threshold": 0.01, "min_factor": 0.2},
    warmup=5,
    warmup_kind="exponential",
)
EVAL_EVERY = 5
LOSSES = [0.5, 1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85]


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_plateau_keeps_the_warmup_and_reduces_as_tuner_does() -> None:
    """Warmup, then ReduceLROnPlateau fed the same validation losses: the LR equals tuner's at every step. The first
    evaluation comes at the end of the warmup, where tuner's plateau does not count it yet."""
    source = python_snippet(PLATEAU, 80)
    assert "scheduler.step(val_loss)" in source and "ReduceLROnPlateau" in source
    namespace = _namespace(source)
    total = EVAL_EVERY * len(LOSSES)
    schedule = recipe_schedule(PLATEAU, total)
    optimizer = namespace["make_optimizer"](torch.nn.Linear(2, 1))
    scheduler = namespace["make_scheduler"](optimizer, total)
    seen = []
    for step in range(total):
        expected = PLATEAU.lr * schedule(step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12), step
        seen.append(expected)
        optimizer.step()
        scheduler.step()
        if (step + 1) % EVAL_EVERY == 0:
            loss = LOSSES[(step + 1) // EVAL_EVERY - 1]
            schedule.report(loss)
            scheduler.step(loss)
    assert seen[0] < 0.01 * PLATEAU.lr and seen[5] == PLATEAU.lr  # the exponential warmup, from 0.003 of the peak
    # halved twice at plateaus, then held at min_factor 0.2
    assert sorted({round(lr / PLATEAU.lr, 12) for lr in seen[5:]}) == [0.2, 0.25, 0.5, 1.0]


SWITCHES = {
    "adam -> sgd, cosine with warmup, clipped": Recipe(
        optimizer="adam",
        lr=3e-3,
        schedule="cosine",
        warmup=5,
        clip_norm=0.5,
        batch_size=64,
        switch=Switch(optimizer="sgd", at_fraction=0.5, lr=0.05),
    ),
    "schedule-free adamw -> adamw with decay, one_cycle": Recipe(
        optimizer="schedulefree_adamw",
        lr=3e-3,
        weight_decay=1e-3,
        weight_decay_mode="decoupled",
        schedule="one_cycle",
        batch_size=32,
        switch=Switch(optimizer="adamw", at_fraction=0.4, lr=1e-3, optimizer_params={"beta2": 0.99}),
    ),
}


@pytest.fixture(scope="module")
def task():
    return load_task("digits-mlp", {"hidden": [16]})


@pytest.mark.parametrize("name", list(SWITCHES))
def test_training_with_an_exported_switch_equals_tuners_trainer(task, name: str) -> None:
    """The same batches through tuner's Trainer and through the snippet's optimizer, scheduler and clipping in a
    plain loop end at the same parameters: the switch happens at the same step, at the second optimizer's LR."""
    recipe, budget = SWITCHES[name], TrainBudget(steps=40)
    ours = Trainer(task, recipe, budget, seed=3, device="cpu")
    batches = list(ours.batches())
    for step, micro_batches in enumerate(batches):
        ours.train_step(step, micro_batches)
    ours.optimizer.eval()

    namespace = _namespace(python_snippet(recipe, ours.total_steps))
    model = Trainer(task, recipe, budget, seed=3, device="cpu").model  # the same initial model
    optimizer = namespace["make_optimizer"](model, ours.total_steps)
    scheduler = namespace["make_scheduler"](optimizer, ours.total_steps)
    for ((inputs, targets),) in batches:  # one micro-batch a step
        loss = task.loss(model(inputs), targets)
        loss.backward()
        namespace["clip_gradients"](model)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    optimizer.eval()
    assert optimizer.switched and optimizer.switch_step == round(recipe.switch.at_fraction * ours.total_steps)
    for a, b in zip(ours.model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_weight_decay_is_the_recipes_even_where_torchs_default_is_not_zero() -> None:
    """torch's AdamW decays by 0.01 unless told otherwise: a recipe without decay exports weight_decay 0.0."""
    namespace = _namespace(python_snippet(Recipe(optimizer="adamw", lr=1e-3)))
    assert namespace["make_optimizer"](torch.nn.Linear(2, 1)).param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize(
    "recipe, message",
    [
        (Recipe(optimizer="muon", lr=0.02), "muon, which builds two optimizers"),
        (Recipe(optimizer="adam", lr=1e-3, switch=Switch("sparse_adam", 0.5, 1e-3)), "sparse_adam, which builds two"),
    ],
)
def test_companion_optimizers_are_refused_with_the_reason(recipe: Recipe, message: str) -> None:
    with pytest.raises(TunerError, match=message):
        python_snippet(recipe)


# -- the CLI on a real study -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def switch_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny study whose every trial switches adam -> sgd part-way (cosine, clipped)."""
    from typer.testing import CliRunner

    from tuner.cli import app

    folder = tmp_path_factory.mktemp("switch")
    path = write_study(
        folder,
        budget={"epochs": 1, "n_trials": 3},
        space={
            "optimizers": ["adam"],
            "schedules": ["cosine"],
            "batch_size": 64,
            "clip_norm": 1.0,
            "warmup": 0.1,
            "switch": {"to": ["sgd"], "optional": False},
        },
    )
    storage = f"sqlite:///{folder / 'tuner.db'}"
    result = CliRunner().invoke(app, ["run", str(path), "--storage", storage, "--tracking-uri", "none"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=storage)
    return {"storage": storage, "study": study, "folder": folder}


def test_export_python_of_a_switch_study_builds_the_switch(switch_study: dict[str, Any], cli) -> None:
    result = cli("export", "tiny", "--format", "python", "--storage", switch_study["storage"])
    assert result.exit_code == 0, result.output
    best = switch_study["study"].best_trial
    assert f"best trial {best.number} of study 'tiny'" in result.stdout
    namespace = _namespace(result.stdout)
    optimizer = namespace["make_optimizer"](torch.nn.Linear(4, 2), 30)
    assert isinstance(optimizer.first, torch.optim.Adam) and isinstance(optimizer.second, torch.optim.SGD)
    recipe = best.user_attrs["recipe"]
    assert optimizer.switch_step == round(recipe["switch"]["at_fraction"] * 30)


@pytest.mark.parametrize("command", ["best", "export"])
def test_trial_n_picks_that_trial(switch_study: dict[str, Any], cli, command: str) -> None:
    study = switch_study["study"]
    other = next(t for t in study.trials if t.number != study.best_trial.number)
    args = ["--json"] if command == "best" else ["--format", "json"]
    result = cli(command, "tiny", "--trial", str(other.number), "--storage", switch_study["storage"], *args)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    recipe = shown["recipe"] if command == "best" else shown
    assert recipe == other.user_attrs["recipe"] != study.best_trial.user_attrs["recipe"]
    if command == "best":
        assert (shown["trial"], shown["state"], shown["value"]) == (other.number, other.state.name, other.value)


def test_trial_n_in_the_python_header_and_an_unknown_trial_exits_2(switch_study: dict[str, Any], cli) -> None:
    storage = switch_study["storage"]
    number = next(t.number for t in switch_study["study"].trials if t.number != switch_study["study"].best_trial.number)
    result = cli("export", "tiny", "--trial", str(number), "--format", "python", "--storage", storage)
    assert result.exit_code == 0 and f"complete trial {number} of study 'tiny'" in result.stdout
    for command in ("best", "export"):
        result = cli(command, "tiny", "--trial", "99", "--storage", storage)
        assert result.exit_code == 2 and "study 'tiny' has no trial 99 (trials 0..2)" in result.stderr


def test_yaml_export_is_the_recipe(switch_study: dict[str, Any], cli) -> None:
    result = cli("export", "tiny", "--storage", switch_study["storage"])
    assert yaml.safe_load(result.stdout) == switch_study["study"].best_trial.user_attrs["recipe"]


# -- Lightning ---------------------------------------------------------------------------------------------------


def test_lightning_export_builds_the_recipe(workdir: Path, cli) -> None:
    path = write_study(
        workdir,
        budget={"epochs": 1, "n_trials": 2},
        space={"optimizers": ["adam"], "schedules": ["cosine"], "batch_size": 64, "clip_norm": 1.0},
    )
    assert cli("run", path).exit_code == 0
    result = cli("export", "tiny", "--format", "lightning")
    assert result.exit_code == 0, result.output
    namespace = _namespace(result.stdout)
    trial = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}").best_trial
    recipe, total = trial.user_attrs["recipe"], 2 * trial.user_attrs["total_steps"]  # any run length

    class Module(torch.nn.Linear):  # stands in for a LightningModule: the hooks need self.parameters() and the trainer
        trainer = SimpleNamespace(estimated_stepping_batches=total)
        configure_optimizers = namespace["configure_optimizers"]
        configure_gradient_clipping = namespace["configure_gradient_clipping"]

    module = Module(4, 2)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.Adam) and config["lr_scheduler"]["interval"] == "step"

    schedule = recipe_schedule(Recipe.from_dict(recipe), total)
    for step in range(total):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(recipe["lr"] * schedule(step), rel=1e-12)
        optimizer.step()
        scheduler.step()

    module.weight.grad = torch.full_like(module.weight, 10.0)
    module.bias.grad = torch.full_like(module.bias, 10.0)
    module.configure_gradient_clipping(optimizer)
    norm = torch.nn.utils.get_total_norm([module.weight.grad, module.bias.grad])
    assert float(norm) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.filterwarnings("ignore::UserWarning", r"ignore:.*isinstance\(treespec, LeafSpec\):FutureWarning")
def test_lightning_runs_the_exported_plateau_with_warmup_and_a_switch() -> None:
    """Real Lightning: configure_optimizers hands it the warmup (stepped every step) and ReduceLROnPlateau on
    val_loss (each epoch); evaluations inside the warmup do not count, later ones halve the LR; the switch happens."""
    lightning = pytest.importorskip("lightning")
    from torch.utils.data import DataLoader, TensorDataset

    recipe = Recipe(
        optimizer="adam",
        lr=1e-2,
        schedule="plateau",
        schedule_params={"patience": 0, "factor": 0.5, "threshold": 0.0},
        warmup=6,  # 4 steps an epoch: the first epoch's evaluation falls inside the warmup
        clip_value=0.5,
        batch_size=16,
        switch=Switch(optimizer="sgd", at_fraction=0.5, lr=0.1),
    )
    lrs: list[float] = []

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
            return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", 1.0)  # never improves: every counted evaluation halves the LR

    source = export_lightning(Exported(recipe, "s", 0, None, "loss", None))
    hooks = _namespace(source)
    Module.configure_optimizers = hooks["configure_optimizers"]
    Module.configure_gradient_clipping = hooks["configure_gradient_clipping"]
    data = TensorDataset(torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(64, 1))
    trainer = lightning.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Module(), DataLoader(data, batch_size=16), DataLoader(data, batch_size=64))
    optimizer = trainer.optimizers[0]
    assert optimizer.switched and optimizer.switch_step == 8 and trainer.global_step == 16
    assert lrs[0] < lrs[5] < recipe.lr and lrs[6:12] == [recipe.lr] * 6  # warmup, then the peak through epoch 2
    # epoch 1's evaluation falls in the warmup and is not counted, epoch 2's sets the best, epoch 3's halves the LR
    assert lrs[12:] == [recipe.lr / 2] * 4
