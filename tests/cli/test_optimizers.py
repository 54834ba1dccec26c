"""``tuner optimizers``: the catalog as a rich table and as JSON, without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from tuner.cli.optimizers import format_dimension, optimizers
from tuner.optim.catalog import OPTIMIZERS
from tuner.space import Beta, Choice, Fixed, Float, Int

app = typer.Typer()
app.command("optimizers")(optimizers)
app.command("noop")(lambda: None)  # a second command keeps "optimizers" a named subcommand


def invoke(*args: str):
    return CliRunner().invoke(app, ["optimizers", *args], catch_exceptions=False, env={"COLUMNS": "250"})


def test_json_lists_every_optimizer_with_its_spec() -> None:
    result = invoke("--json")
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert [entry["name"] for entry in entries] == list(OPTIMIZERS)
    for entry in entries:
        spec = OPTIMIZERS[entry["name"]]
        assert entry["description"] == spec.description
        assert entry["family"] == spec.family
        assert entry["torch_class"] == spec.torch_class
        assert entry["lr"] == spec.lr.describe()
        assert entry["defaults"] == dict(spec.defaults)
        assert entry["space"] == {key: dim.describe() for key, dim in spec.space.items()}
        assert entry["full_batch_only"] == spec.full_batch_only
        assert entry["schedule_free"] == spec.schedule_free


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_table_shows_name_description_lr_range_and_hyperparameters(name: str) -> None:
    result = invoke()
    assert result.exit_code == 0, result.output
    spec = OPTIMIZERS[name]
    flat = " ".join(result.stdout.split())
    assert f" {name} " in flat
    assert format_dimension(spec.lr.describe()) in flat
    for key, default in spec.defaults.items():
        assert f"{key} = {default}" in flat
    for dim in spec.space.values():
        assert f"search {format_dimension(dim.describe())}" in flat


@pytest.mark.parametrize(
    "dimension, text",
    [
        (Float(1e-5, 0.1, log=True), "[1e-05, 0.1] log"),
        (Float(-1.0, -0.5), "[-1, -0.5]"),
        (Int(5, 100, log=True), "int [5, 100] log"),
        (Beta(0.9, 0.999), "β in [0.9, 0.999] log(1-β)"),
        (Choice((False, True)), "{False, True}"),
        (Fixed(3), "= 3"),
    ],
)
def test_format_dimension(dimension, text: str) -> None:
    assert format_dimension(dimension.describe()) == text


def test_command_does_not_import_torch() -> None:
    code = (
        "import sys, typer\nfrom typer.testing import CliRunner\nfrom tuner.cli.optimizers import optimizers\n"
        "app = typer.Typer(); app.command('optimizers')(optimizers); app.command('noop')(lambda: None)\n"
        "r = CliRunner().invoke(app, ['optimizers', '--json'])\nassert r.exit_code == 0, r.output\n"
        "print('torch' in sys.modules, 'schedulefree' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
