"""``tuner check STUDY_FILE``: validate a study as ``tuner run`` would, print what it would search, write nothing.

``tuner run --dry-run`` prints the same. The space is shown resolved -- per optimizer and per schedule each parameter
with its range and scale or its fixed value, the shared dimensions, the switch -- with the optimizer steps a trial
runs for each batch size and, for the grid sampler, the grid's size per branch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from tuner.cli._common import DeviceOption, new_app, user_errors
from tuner.cli.optimizers import format_dimension

if TYPE_CHECKING:
    from tuner.space import Dimension
    from tuner.study.prepare import Prepared

app = new_app()

NTrialsOption = Annotated[
    Optional[int], typer.Option("--n-trials", min=1, help="target number of finished trials (overrides the file)")
]
AllowPartialGridOption = Annotated[
    bool,
    typer.Option(
        "--allow-partial-grid", help="let a grid with more points than n_trials run a random n_trials of them"
    ),
]


@app.command("check")
@user_errors
def check(
    study_file: Annotated[Path, typer.Argument(help="study file (YAML)")],
    n_trials: NTrialsOption = None,
    allow_partial_grid: AllowPartialGridOption = False,
    device: DeviceOption = None,
) -> None:
    """Check STUDY_FILE as `tuner run` would and print the resolved search space; write nothing."""
    from tuner.study.prepare import prepare

    prepared = prepare(study_file, device=device)
    print_check(prepared, n_trials or prepared.spec.budget.n_trials, allow_partial_grid)


def print_check(prepared: Prepared, n_trials: int, allow_partial_grid: bool, warm_start: Optional[str] = None) -> None:
    """Print ``report(prepared)``, then fail (exit 2) as ``tuner run`` would on the grid's size or a warm start."""
    from tuner.study.grid import check_grid_run

    typer.echo("\n".join(report(prepared, n_trials)))
    check_grid_run(prepared.plan.grid, n_trials, allow_partial_grid, warm_start)
    typer.echo("ok: every check passed; nothing was written")


def report(prepared: Prepared, n_trials: int) -> list[str]:
    """The lines ``tuner check`` prints."""
    spec = prepared.spec
    door = f"task {spec.task.name}" if spec.task else f"train: {spec.train.name}" if spec.train else "command:"
    lines = [f"study {spec.name}: {door}, {prepared.direction} {prepared.metric}, n_trials {n_trials}", ""]
    lines += _lengths(prepared)
    lines += _space(prepared)
    lines += [
        "",
        f"sampler: {_named(spec.sampler.name, spec.sampler.options)}",
        f"pruner: {_named(spec.pruner.name, spec.pruner.options)}",
    ]
    lines += _grid(prepared, n_trials)
    return lines


def _lengths(prepared: Prepared) -> list[str]:
    plan = prepared.plan
    if not plan.lengths:
        return [f"run length: your {prepared.spec.door}: code decides it (values are checked, lengths are not)"]
    lines = [f"run length ({plan.basis}):"]
    for run in plan.lengths:
        size = "full batch" if run.batch_size is None else f"batch_size {run.batch_size}"
        epoch = f" ({run.per_epoch} an epoch)" if run.per_epoch is not None else ""
        lines.append(f"  {size}: {run.steps} optimizer steps a trial{epoch}")
    return lines


def _space(prepared: Prepared) -> list[str]:
    from tuner.optim import OPTIMIZERS
    from tuner.schedules import SCHEDULES
    from tuner.study.lr_auto import default_note
    from tuner.train.lr_range import PROBES

    space = prepared.space
    test = "the LR range test" if prepared.task is not None else f"a probe sweep of {PROBES} short runs of your code"
    lines = ["", _choice_line("optimizer", list(space.optimizers))]
    if space.auto_lr_by_default:
        lines.append(f"  ({default_note(prepared)})")
    for name, entry in space.optimizers.items():
        auto = f"  lr from {test} (lr: auto), before the first trial" if name in space.auto_lr else ""
        lines += [f"  {name}{auto}"] + _entry(entry.params, OPTIMIZERS[name].defaults)
    lines.append(_choice_line("schedule", list(space.schedules)))
    for name, entry in space.schedules.items():
        lines += [f"  {name}"] + _entry(entry.params, SCHEDULES[name].defaults)
    lines.append("shared")
    lines += [f"    {name:<20} {_dimension(dim)}" for name, dim in space.shared.items()]
    switch = space.switch
    if switch is None:
        lines.append("switch: none")
    else:
        optional = " (or no switch)" if switch.optional else ""
        lines.append(f"switch: to one of {', '.join(switch.targets)}{optional}")
        lines.append(f"    {'at_fraction':<20} {_dimension(switch.at_fraction)}")
        lines += [f"    {name + '.lr':<20} {_dimension(lr)}" for name, lr in switch.targets.items()]
    return lines


def _choice_line(kind: str, names: list[str]) -> str:
    return f"{kind}: {names[0]}" if len(names) == 1 else f"{kind}: one of {', '.join(names)}"


def _entry(params: Any, defaults: Any) -> list[str]:
    lines = [f"    {name:<20} {_dimension(dim)}" for name, dim in params.items()]
    fixed = [f"{key}={value!r}" for key, value in defaults.items() if key not in params]
    if fixed:
        lines.append(f"    {'defaults':<20} {', '.join(fixed)}")
    return lines or ["    (no parameters)"]


def _dimension(dim: Dimension) -> str:
    """``format_dimension``, with the scale of a range spelled out (log or linear)."""
    described = dim.describe()
    text = format_dimension(described)
    return text + " linear" if described["type"] in ("float", "int") and not described["log"] else text


def _named(name: str, options: dict[str, Any]) -> str:
    return name + (f" {options}" if options else "")


def _grid(prepared: Prepared, n_trials: int) -> list[str]:
    grid = prepared.plan.grid
    if grid is None:
        return []
    lines = ["", grid.describe()]
    lines += [f"  {label:<40} {count}" for label, count in grid.branches]
    if grid.size > n_trials:
        lines.append(
            f"n_trials {n_trials} < {grid.size} points: `tuner run` refuses it unless --allow-partial-grid "
            f"(then a random {n_trials} of them run)"
        )
    else:
        lines.append(f"the study ends when the {grid.size} points have run (n_trials {n_trials})")
    return lines
