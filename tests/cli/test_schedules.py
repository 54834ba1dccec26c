"""``tuner schedules``: the listing, ``values`` and ``plot``, driven through a local Typer root."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from tuner.cli.schedules import app
from tuner.schedules import SCHEDULES, build_schedule

root = typer.Typer()
root.add_typer(app, name="schedules")


@root.callback()
def _root() -> None:
    """Test root."""


runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str):
    return runner.invoke(root, ["schedules", *args], env={"COLUMNS": "200"})


def test_table_lists_every_schedule_with_its_params():
    result = invoke()
    assert result.exit_code == 0, result.output
    for name, spec in SCHEDULES.items():
        assert name in result.output
        assert all(key in result.output for key in spec.defaults)


def test_json_listing():
    result = invoke("--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["name"] for row in rows] == list(SCHEDULES)
    for row in rows:
        spec = SCHEDULES[row["name"]]
        assert row["description"] == spec.description
        assert row["defaults"] == json.loads(json.dumps(dict(spec.defaults)))
        assert row["space"] == {key: dim.describe() for key, dim in spec.space.items()}


# (args, name, total, params, warmup, warmup_kind) the CLI call must reproduce
VALUES_CASES = [
    (["cosine", "--steps", "11"], "cosine", 11, {}, 0, "linear"),
    (["cosine", "--steps", "11", "--set", "min_factor=1e-1"], "cosine", 11, {"min_factor": 0.1}, 0, "linear"),
    (
        ["multistep", "--steps", "12", "--set", "milestones=[3, 0.5]", "--set", "gamma=0.5"],
        "multistep",
        12,
        {"milestones": [3, 0.5], "gamma": 0.5},
        0,
        "linear",
    ),
    (
        ["exponential", "--steps", "20", "--set", "staircase=true", "--set", "decay_steps=4"],
        "exponential",
        20,
        {"staircase": True, "decay_steps": 4},
        0,
        "linear",
    ),
    (
        ["one_cycle", "--steps", "30", "--warmup", "0.2", "--warmup-kind", "exponential"],
        "one_cycle",
        30,
        {},
        0.2,
        "exponential",
    ),
    (
        ["piecewise", "--steps", "10", "--set", "points=[[2, 0.5], [0.6, 0.1]]", "--warmup", "3"],
        "piecewise",
        10,
        {"points": [[2, 0.5], [0.6, 0.1]]},
        3,
        "linear",
    ),
    (["linear", "--steps", "10", "--set", "total_iters=null"], "linear", 10, {"total_iters": None}, 0, "linear"),
]


@pytest.mark.parametrize(("args", "name", "total", "params", "warm", "kind"), VALUES_CASES)
def test_values_json_matches_the_library(args, name, total, params, warm, kind):
    result = invoke("values", *args, "--json")
    assert result.exit_code == 0, result.output
    schedule = build_schedule(name, total, params, warmup_steps=warm, warmup_kind=kind)
    assert json.loads(result.output) == [schedule(step) for step in range(total)]


def test_values_text_is_step_value_lines():
    result = invoke("values", "step", "--steps", "6", "--set", "step_size=2", "--set", "gamma=0.5")
    assert result.exit_code == 0, result.output
    assert result.output.split("\n")[:-1] == ["0 1", "1 1", "2 0.5", "3 0.5", "4 0.25", "5 0.25"]


# (args, text the error must contain)
ERROR_CASES = [
    (["values", "cosin", "--steps", "5"], "valid schedules: constant, cosine"),
    (["values", "cosine", "--steps", "5", "--set", "min_factor=2"], "min_factor must be in [0, 1], got min_factor=2"),
    (["values", "step", "--steps", "5", "--set", "gamma=fast"], "gamma must be a finite number, got gamma='fast'"),
    (["values", "cosine", "--steps", "5", "--set", "gamma=0.5"], "valid parameters: min_factor"),
    (["values", "cosine", "--steps", "5", "--set", "min_factor"], "--set expects KEY=VALUE"),
    (["values", "cosine", "--steps", "5", "--set", "min_factor=[1"], "cannot parse '[1'"),
    (["values", "cosine", "--steps", "5", "--warmup", "5"], "warmup_steps must be < total_steps"),
    (["values", "cosine", "--steps", "5", "--warmup-kind", "cubic"], "valid warmup kinds: exponential, linear"),
    (["values", "one_cycle", "--steps", "3"], "pct_start * total_steps must be > 1"),
    (["plot", "cosine", "nope", "-o", "never.png"], "unknown schedule 'nope'"),
]


@pytest.mark.parametrize(("args", "message"), ERROR_CASES)
def test_user_errors_exit_2_without_traceback(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("names", [["all"], ["cosine", "one_cycle", "plateau"]])
def test_plot_writes_a_png(tmp_path, names):
    out = tmp_path / "sub" / "lr.png"
    result = invoke("plot", *names, "--steps", "200", "-o", str(out), "--warmup", "0.1")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_cli_module_is_cheap_to_import():
    code = (
        "import sys, tuner.cli.schedules; heavy = {'torch', 'matplotlib', 'optuna', 'mlflow'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
