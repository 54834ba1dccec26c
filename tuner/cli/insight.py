"""``tuner lr-find`` (LR range test per optimizer) and ``tuner report`` (one self-contained HTML page per study)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tuner.cli._common import (
    DeviceOption,
    JsonOption,
    StorageOption,
    StudyArgument,
    TrackingUriOption,
    new_app,
    print_json,
    user_errors,
)

if TYPE_CHECKING:
    from tuner.study.prepare import Prepared
    from tuner.train.lr_range import SweepConfig

app = new_app()

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


@app.command("lr-find")
@user_errors
def lr_find(
    study_file: Annotated[Path, typer.Argument(help="study file (YAML)")],
    optimizer: Annotated[
        Optional[list[str]], typer.Option("--optimizer", help="optimizer to test (repeat; default: the study's)")
    ] = None,
    plot: Annotated[Optional[Path], typer.Option(help="write the loss-vs-LR curves here (.png, .svg or .pdf)")] = None,
    steps: Annotated[
        int, typer.Option(min=10, help="optimizer steps of the sweep (own training: a probe's, budget in steps)")
    ] = 100,
    lr_start: Annotated[
        Optional[float], typer.Option(help="first LR of the sweep [default: 1e-6; own training: the catalog's low]")
    ] = None,
    lr_end: Annotated[
        Optional[float], typer.Option(help="last LR of the sweep [default: 10; own training: the catalog's high]")
    ] = None,
    probes: Annotated[int, typer.Option(min=2, help="own training (train:/command:): short runs per optimizer")] = 7,
    device: DeviceOption = None,
    json_output: JsonOption = False,
) -> None:
    """LR range test: per optimizer, sweep the LR exponentially over a short run; print the suggested LR and range.

    A study with its own training (train: / command:) reports only at its own evaluations, so each optimizer is probed
    with --probes short runs of that code instead (one epoch, or --steps, at constant LRs log-spaced over the range).
    """
    from tuner.errors import lookup
    from tuner.optim import OPTIMIZERS
    from tuner.reports.plots import plot_findings
    from tuner.study.lr_auto import sweep_batch_size
    from tuner.study.prepare import prepare
    from tuner.train.lr_range import SweepConfig, describe, find_lrs

    if plot is not None and (plot.suffix.lower() not in PLOT_SUFFIXES or not plot.parent.resolve().is_dir()):
        raise ValueError(f"--plot: {plot}: expected a .png, .svg or .pdf file in an existing directory")
    config = SweepConfig(lr_start=lr_start, lr_end=lr_end, steps=steps, probes=probes)
    prepared = prepare(study_file, device=device)
    names = optimizer or list(prepared.space.optimizers)
    for name in names:
        lookup(OPTIMIZERS, "optimizer", name)
        config.span(name if prepared.task is None else None)  # a bad LR range fails before anything trains
    batch = sweep_batch_size(prepared.space)
    findings = find_lrs(
        prepared.trains, names, batch_size=batch, config=config, seed=prepared.spec.seed, device=prepared.device
    )
    if plot is not None:
        plot_findings(findings, str(plot))
    rows = [finding.summary() for finding in findings.values()]
    if json_output:
        return print_json(rows)
    typer.echo(_heading(prepared, batch, config, names))
    for row in rows:
        typer.echo("  " + describe(row))
    if plot is not None:
        typer.echo(f"wrote {plot}")


def _heading(prepared: Prepared, batch: Optional[int], config: SweepConfig, names: list[str]) -> str:
    """What was run: the exponential sweep of a task, or the probe sweep of the study's own training."""
    if prepared.task is not None:
        start, end = config.span()
        assert prepared.spec.task is not None
        task = prepared.spec.task.name
        return f"LR range test on {task} (batch {batch}, {config.steps} steps from {start:g} to {end:g}):"
    door = prepared.spec.train.name if prepared.spec.train is not None else f"command {prepared.spec.command!r}"
    spans = ", ".join(f"{name} {config.span(name)[0]:g}..{config.span(name)[1]:g}" for name in names)
    return (
        f"LR probe sweep of {door} (own training: {config.probes} short runs per optimizer, "
        f"{config.probes * len(names)} in all, each at a constant LR log-spaced over {spans}; "
        f"batch {batch}; {prepared.metric}, {prepared.direction}):"
    )


@app.command("report")
@user_errors
def report(
    study: StudyArgument,
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write")] = Path("report.html"),
    storage: StorageOption = None,
    tracking_uri: TrackingUriOption = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="trials whose LR and learning curves are drawn")] = 5,
) -> None:
    """Write one self-contained HTML page explaining the study (works offline); log it on the study's MLflow run."""
    from tuner.reports.html import write_report
    from tuner.spec import storage_url

    if not output.parent.resolve().is_dir():
        raise ValueError(f"-o: {output}: directory {output.parent} does not exist")
    logged = write_report(study, storage_url(storage), output, top_k=top_k, tracking_uri=tracking_uri)
    typer.echo(f"wrote {output}" + (f" (logged to MLflow run {logged})" if logged else ""))
