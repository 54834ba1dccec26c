"""``tuner lr-find`` (LR range test per optimizer) and ``tuner report`` (one self-contained HTML page per study)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

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
    steps: Annotated[int, typer.Option(min=10, help="optimizer steps of the sweep")] = 100,
    lr_start: Annotated[float, typer.Option(help="first LR of the sweep")] = 1e-6,
    lr_end: Annotated[float, typer.Option(help="last LR of the sweep")] = 10.0,
    device: DeviceOption = None,
    json_output: JsonOption = False,
) -> None:
    """LR range test: per optimizer, sweep the LR exponentially over a short run; print the suggested LR and range."""
    from tuner.errors import lookup
    from tuner.optim import OPTIMIZERS
    from tuner.reports.plots import plot_findings
    from tuner.study.lr_auto import sweep_batch_size
    from tuner.study.prepare import prepare
    from tuner.train.lr_range import SweepConfig, describe, find_lrs

    if plot is not None and (plot.suffix.lower() not in PLOT_SUFFIXES or not plot.parent.resolve().is_dir()):
        raise ValueError(f"--plot: {plot}: expected a .png, .svg or .pdf file in an existing directory")
    config = SweepConfig(lr_start=lr_start, lr_end=lr_end, steps=steps)
    prepared = prepare(study_file, device=device)
    names = optimizer or list(prepared.space.optimizers)
    for name in names:
        lookup(OPTIMIZERS, "optimizer", name)
    batch = sweep_batch_size(prepared.space)
    findings = find_lrs(
        prepared.task, names, batch_size=batch, config=config, seed=prepared.spec.seed, device=prepared.device
    )
    if plot is not None:
        plot_findings(findings, str(plot))
    rows = [finding.summary() for finding in findings.values()]
    if json_output:
        return print_json(rows)
    typer.echo(
        f"LR range test on {prepared.spec.task.name} (batch {batch}, {steps} steps from {lr_start:g} to {lr_end:g}):"
    )
    for row in rows:
        typer.echo("  " + describe(row))
    if plot is not None:
        typer.echo(f"wrote {plot}")


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
