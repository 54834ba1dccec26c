"""Commands that read studies: ``tuner ls``, ``show``, ``best``, ``export`` and ``schema``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tuner.cli._common import (
    JsonOption,
    StorageOption,
    StudyArgument,
    TrackingUriOption,
    console,
    fmt,
    new_app,
    print_json,
    user_errors,
)

app = new_app()


@app.command("ls")
@user_errors
def ls(storage: StorageOption = None, json_output: JsonOption = False) -> None:
    """List the studies in the storage with their trial counts and best values."""
    from tuner.spec import storage_url
    from tuner.study.records import study_summaries
    from tuner.study.storage import mask_url, open_storage, storage_exists

    url = storage_url(storage)
    rows = study_summaries(open_storage(url)) if storage_exists(url) else []
    if json_output:
        return print_json(rows)
    if not rows:
        typer.echo(f"no studies in {mask_url(url)}")
        return
    table = _table("study", "direction", "trials", "complete", "pruned", "fail", "best value")
    for row in rows:
        counts = (str(row.get(k, 0)) for k in ("trials", "complete", "pruned", "fail"))
        table.add_row(row["name"], row["direction"], *counts, fmt(row.get("best_value")))
    console().print(table)


@app.command("show")
@user_errors
def show(
    study: StudyArgument,
    storage: StorageOption = None,
    tracking_uri: TrackingUriOption = None,
    json_output: JsonOption = False,
) -> None:
    """A table of the study's trials: number, state, value, optimizer, lr, schedule, duration, reason. The study's
    MLflow parent run gets its summary rewritten from the study as it is now."""
    from tuner.spec import storage_url
    from tuner.study.records import records
    from tuner.study.runs import refresh_summary
    from tuner.study.storage import load_existing_study

    loaded = load_existing_study(study, storage_url(storage))
    rows = [_trial_row(record) for record in records(loaded)]
    if json_output:
        print_json(rows)
    else:
        _print_trials(loaded, rows)
    refresh_summary(loaded, tracking_uri)


def _print_trials(loaded: Any, rows: list[dict[str, Any]]) -> None:
    from tuner.study.records import study_metric, study_objective

    value = f"{study_metric(loaded)} ({study_objective(loaded)})"
    table = _table("#", "state", value, "optimizer", "lr", "schedule", "batch", "duration s", "reason")
    for row in rows:
        table.add_row(
            str(row["number"]),
            row["state"],
            fmt(row["value"]),
            row["optimizer"],
            fmt(row["lr"]),
            row["schedule"],
            str(row["batch_size"]),
            fmt(row["duration_s"]),
            row["reason"],
        )
    console().print(table)
    gaps = [row for row in rows if row["tracking_errors"]]
    if gaps:
        typer.echo(
            f"MLflow: {len(gaps)} trial(s) with tracking gaps (--json lists them), "
            f"e.g. trial {gaps[-1]['number']}: {gaps[-1]['tracking_errors'][0]}"
        )


def _trial_row(record: Any) -> dict[str, Any]:
    recipe = record.recipe or {}
    return {
        "number": record.number,
        "state": record.state,
        "value": record.value,
        "optimizer": recipe.get("optimizer", "-"),
        "lr": recipe.get("lr"),
        "schedule": recipe.get("schedule", "-"),
        "batch_size": recipe.get("batch_size", "-"),
        "duration_s": record.duration_s,
        "reason": record.reason,
        "tracking_errors": record.tracking_errors,
    }


TrialOption = Annotated[
    Optional[int], typer.Option("--trial", min=0, help="trial N instead of the best (any state, if it has a recipe)")
]


@app.command("best")
@user_errors
def best(
    study: StudyArgument, storage: StorageOption = None, json_output: JsonOption = False, trial: TrialOption = None
) -> None:
    """The best trial's value and recipe (or trial N's with --trial N)."""
    import yaml

    from tuner.spec import storage_url
    from tuner.study.records import best_record, study_metric, study_objective, trial_record
    from tuner.study.storage import load_existing_study

    loaded = load_existing_study(study, storage_url(storage))
    record = best_record(loaded) if trial is None else trial_record(loaded, trial)
    result = {
        "study": study,
        "trial": record.number,
        "state": record.state,
        "value": record.value,
        "metric": study_metric(loaded),
        "objective": study_objective(loaded),
        "direction": loaded.direction.name.lower(),
        "seed": record.seed,
        "recipe": record.to_recipe().to_dict(),
    }
    if json_output:
        return print_json(result)
    typer.echo(yaml.safe_dump(result, sort_keys=False).rstrip())


@app.command("export")
@user_errors
def export(
    study: StudyArgument,
    storage: StorageOption = None,
    format: Annotated[str, typer.Option("--format", help="yaml, json, python, lightning or checkpoint")] = "yaml",
    trial: TrialOption = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="write to this file (--format checkpoint needs it)")
    ] = None,
) -> None:
    """Print the best recipe (or trial N's) as YAML, JSON, or a self-contained Python snippet building the optimizer
    and scheduler; or, with --format checkpoint -o PATH, write the trial's trained weights (a save_model study)."""
    from tuner.errors import TunerError, lookup
    from tuner.reports.export import EXPORTERS, best_of, trial_of, write_model
    from tuner.spec import storage_url
    from tuner.study.storage import load_existing_study

    exporter = lookup({**EXPORTERS, "checkpoint": write_model}, "format", format)
    if format == "checkpoint" and output is None:
        raise TunerError("--format checkpoint writes the trained weights to a file: give -o PATH")
    if output is not None and not output.resolve().parent.is_dir():
        raise TunerError(f"-o: folder {str(output.parent)!r} does not exist")
    loaded = load_existing_study(study, storage_url(storage))
    exported = best_of(loaded) if trial is None else trial_of(loaded, trial)
    if format == "checkpoint":
        assert output is not None
        typer.echo(f"wrote trial {exported.trial}'s weights (a state_dict) to {write_model(exported, output)}")
    elif output is not None:
        output.write_text(exporter(exported))
    else:
        typer.echo(exporter(exported).rstrip())


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of study files (point your editor's YAML support at it)."""
    from tuner.spec import json_schema

    print_json(json_schema())


def _table(*columns: str) -> Any:
    from rich.table import Table

    return Table(*columns)
