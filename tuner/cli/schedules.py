"""``tuner schedules``: list the learning-rate schedules, print their multipliers, plot them.

Only ``tuner.schedules`` (pure Python) is imported up front; PyYAML, rich and matplotlib are
imported inside the commands that need them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tuner.cli._common import JsonOption, console, new_app, print_json, user_errors
from tuner.schedules import SCHEDULES, MetricDriven, Schedule, build_schedule

app = new_app()

SetOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Schedule parameter; the value is a YAML scalar (0.5, 10, true, null, [10, 20]). Repeatable.",
    ),
]
WarmupOption = Annotated[
    str, typer.Option("--warmup", help="Warmup in front of the schedule: int steps or a fraction in [0, 1) of --steps.")
]
WarmupKindOption = Annotated[str, typer.Option("--warmup-kind", help="Warmup ramp: linear or exponential.")]

PLOT_COLUMNS = 4
SYNTHETIC_EVALUATIONS = 50


@app.callback(invoke_without_command=True)
@user_errors
def schedules(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the LR schedules: formula, parameters with their defaults, default search space."""
    if ctx.invoked_subcommand is not None:
        return
    rows = catalog()
    if as_json:
        print_json(rows)
    else:
        _print_table(rows)


@app.command("values")
@user_errors
def values(
    name: Annotated[str, typer.Argument(help="Schedule name (see `tuner schedules`).")],
    steps: Annotated[int, typer.Option("--steps", min=1, help="Number of optimizer steps N.")],
    set_: SetOption = None,
    warmup: WarmupOption = "0",
    warmup_kind: WarmupKindOption = "linear",
    as_json: JsonOption = False,
) -> None:
    """Print the multiplier of the peak LR at each step 0..N-1.

    A metric-driven schedule (plateau) stays at 1 here: it only moves on report()."""
    schedule = build_schedule(name, steps, parse_sets(set_), warmup_steps=parse_scalar(warmup), warmup_kind=warmup_kind)
    multipliers = [schedule(step) for step in range(steps)]
    if as_json:
        print_json(multipliers)
    else:
        typer.echo("\n".join(f"{step} {value:.12g}" for step, value in enumerate(multipliers)))


@app.command("plot")
@user_errors
def plot(
    names: Annotated[list[str], typer.Argument(help="Schedule names, or `all` for a grid of every schedule.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG file to write.")],
    steps: Annotated[int, typer.Option("--steps", min=2, help="Number of optimizer steps N.")] = 1000,
    set_: SetOption = None,
    warmup: WarmupOption = "0",
    warmup_kind: WarmupKindOption = "linear",
) -> None:
    """Plot schedules to a PNG: the named ones on one labelled axis, or `all` on a grid.

    --set applies to every schedule plotted. Metric-driven schedules (plateau) are shown driven by a
    synthetic validation loss that stops improving at 30% of the run."""
    grid = "all" in names
    chosen = list(SCHEDULES) if grid else names
    params, warm = parse_sets(set_), parse_scalar(warmup)
    curves = {
        name: curve(build_schedule(name, steps, params, warmup_steps=warm, warmup_kind=warmup_kind), steps)
        for name in chosen
    }
    title = f"multiplier of the peak LR over {steps} steps" + (f", {warmup_kind} warmup {warmup}" if warm else "")
    figure = _grid_figure(curves, title) if grid else _overlay_figure(curves, title)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    typer.echo(f"wrote {output}")


# --------------------------------------------------------------------------- helpers


def catalog() -> list[dict[str, Any]]:
    """The schedule table as JSON-ready rows."""
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "defaults": dict(spec.defaults),
            "space": {key: dim.describe() for key, dim in spec.space.items()},
            "metric_driven": spec.metric_driven,
        }
        for spec in SCHEDULES.values()
    ]


def parse_scalar(text: str) -> Any:
    """A YAML scalar or flow list (``0.5``, ``10``, ``true``, ``null``, ``[10, 20]``); ``1e-3`` is a float."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        reason = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(f"cannot parse {text!r} as a YAML value ({reason})") from None
    if isinstance(value, str):
        try:
            return float(text)
        except ValueError:
            return value
    return value


def parse_sets(items: Optional[list[str]]) -> dict[str, Any]:
    """``["gamma=0.5", "milestones=[10, 20]"]`` -> ``{"gamma": 0.5, "milestones": [10, 20]}``."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        params[key.strip()] = parse_scalar(text)
    return params


def curve(schedule: Schedule, steps: int) -> list[float]:
    """The multipliers at steps 0..steps-1; a metric-driven schedule is fed a synthetic loss that
    falls linearly to 0.5 by 30% of the run and then stays flat, reported every steps/50 steps."""
    every = max(1, steps // SYNTHETIC_EVALUATIONS)
    values = []
    for step in range(steps):
        values.append(schedule(step))
        if isinstance(schedule, MetricDriven) and (step + 1) % every == 0:
            schedule.report(max(0.5, 1.0 - step / (0.6 * steps)))
    return values


def _show(value: Any) -> str:
    """A value as the user would type it with --set (YAML-ish: true, null, [1, 2], plain strings)."""
    return value if isinstance(value, str) else json.dumps(value)


def _describe_dimension(described: dict[str, Any]) -> str:
    kind = described["type"]
    if kind == "choice":
        return "{" + ", ".join(map(_show, described["options"])) + "}"
    if kind == "fixed":
        return f"= {_show(described['value'])}"
    scale = " log" if described.get("log") or kind == "beta" else ""
    return f"{'int ' if kind == 'int' else ''}[{described['low']:g}, {described['high']:g}]{scale}"


def _print_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="LR schedules (multiplier of the peak LR at optimizer step t)", show_lines=True)
    for column in ("name", "description", "defaults", "search space"):
        table.add_column(column, overflow="fold")
    for row in rows:
        defaults = "\n".join(f"{key}={_show(value)}" for key, value in row["defaults"].items()) or "-"
        space = "\n".join(f"{key} {_describe_dimension(dim)}" for key, dim in row["space"].items()) or "-"
        table.add_row(*(Text(cell) for cell in (row["name"], row["description"], defaults, space)))
    console().print(table)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _style(axis, values: list[float], title: str) -> None:
    axis.set_title(title, fontsize=10)
    axis.set_ylim(0, max(1.05, 1.05 * max(values)))
    axis.grid(alpha=0.3)
    axis.tick_params(labelsize=8)


def _grid_figure(curves: dict[str, list[float]], title: str):
    rows = math.ceil(len(curves) / PLOT_COLUMNS)
    figure = _new_figure(3.2 * PLOT_COLUMNS, 2.3 * rows)
    axes = figure.subplots(rows, PLOT_COLUMNS, sharex=True, squeeze=False).ravel()
    for axis, (name, values) in zip(axes, curves.items()):
        axis.plot(range(len(values)), values, linewidth=1.4, color="tab:blue")
        label = f"{name} (synthetic loss)" if SCHEDULES[name].metric_driven else name
        _style(axis, values, label)
    for axis in axes[len(curves) :]:
        axis.set_visible(False)
    for axis in axes[-PLOT_COLUMNS:]:
        axis.set_xlabel("step", fontsize=9)
    figure.suptitle(f"tuner schedules (defaults): {title}", fontsize=12)
    return figure


def _overlay_figure(curves: dict[str, list[float]], title: str):
    figure = _new_figure(8, 4.5)
    axis = figure.subplots()
    for name, values in curves.items():
        label = f"{name} (synthetic loss)" if SCHEDULES[name].metric_driven else name
        axis.plot(range(len(values)), values, linewidth=1.6, label=label)
    _style(axis, [v for values in curves.values() for v in values], title)
    axis.set_xlabel("step")
    axis.set_ylabel("multiplier of the peak LR")
    axis.legend(fontsize=9)
    return figure
