"""Commands that read studies: ``tuner ls``, ``show``, ``best``, ``export`` and ``schema``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tuner.cli._common import console, print_json, user_errors

StorageOption = Annotated[
    Optional[str], typer.Option("--storage", help="Optuna storage URL (default: $TUNER_STORAGE or sqlite:///tuner.db)")
]


def _storage(url: Optional[str]) -> str:
    import os

    from tuner.spec import DEFAULT_STORAGE, absolute_sqlite

    return absolute_sqlite(url or os.environ.get("TUNER_STORAGE") or DEFAULT_STORAGE)


@user_errors
def ls(storage: StorageOption = None, json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the studies in the storage with their trial counts and best values."""
    import optuna

    from tuner.study.engine import open_storage, summarize

    url = _storage(storage)
    storage_obj = open_storage(url)
    rows = []
    for summary in optuna.study.get_all_study_summaries(storage_obj, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage_obj)
        rows.append({"name": summary.study_name, "direction": summary.direction.name.lower(), **summarize(study)})
    if json_output:
        return print_json(rows)
    if not rows:
        typer.echo(f"no studies in {url}")
        return
    table = _table("study", "direction", "trials", "complete", "pruned", "fail", "best value")
    for row in rows:
        table.add_row(row["name"], row["direction"], *(str(row.get(k, 0)) for k in ("trials", "complete", "pruned", "fail")),
                      _fmt(row.get("best_value")))
    _print(table)


@user_errors
def show(study: Annotated[str, typer.Argument(help="study name")], storage: StorageOption = None,
         json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A table of the study's trials: number, state, value, optimizer, lr, schedule, duration, reason."""
    from tuner.study.engine import load_existing_study

    loaded = load_existing_study(study, _storage(storage))
    rows = [_trial_row(trial) for trial in loaded.get_trials(deepcopy=False)]
    if json_output:
        return print_json(rows)
    table = _table("#", "state", "value", "optimizer", "lr", "schedule", "batch", "duration s", "reason")
    for row in rows:
        table.add_row(str(row["number"]), row["state"], _fmt(row["value"]), row["optimizer"], _fmt(row["lr"]),
                      row["schedule"], str(row["batch_size"]), _fmt(row["duration_s"]), row["reason"])
    _print(table)


def _trial_row(trial) -> dict:
    recipe = trial.user_attrs.get("recipe", {})
    return {
        "number": trial.number, "state": trial.state.name, "value": trial.value,
        "optimizer": recipe.get("optimizer", "-"), "lr": recipe.get("lr"), "schedule": recipe.get("schedule", "-"),
        "batch_size": recipe.get("batch_size", "-"), "duration_s": trial.user_attrs.get("duration_s"),
        "reason": trial.user_attrs.get("reason", ""),
    }


@user_errors
def best(study: Annotated[str, typer.Argument(help="study name")], storage: StorageOption = None,
         json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The best trial's value and recipe."""
    import yaml

    from tuner.study.engine import best_trial, load_existing_study

    loaded = load_existing_study(study, _storage(storage))
    trial = best_trial(loaded)
    result = {"study": study, "trial": trial.number, "value": trial.value, "metric": loaded.user_attrs.get("metric"),
              "direction": loaded.direction.name.lower(), "seed": trial.user_attrs.get("seed"),
              "recipe": trial.user_attrs["recipe"]}
    if json_output:
        return print_json(result)
    typer.echo(yaml.safe_dump(result, sort_keys=False).rstrip())


@user_errors
def export(study: Annotated[str, typer.Argument(help="study name")], storage: StorageOption = None,
           format: Annotated[str, typer.Option("--format", help="yaml, json, python or lightning")] = "yaml") -> None:
    """Print the best recipe as YAML, JSON, or a self-contained Python snippet building the torch optimizer and scheduler."""
    from tuner.study.engine import best_recipe, load_existing_study
    from tuner.reports.export import EXPORTERS
    from tuner.errors import lookup

    exporter = lookup(EXPORTERS, "format", format)
    loaded = load_existing_study(study, _storage(storage))
    typer.echo(exporter(best_recipe(loaded), loaded).rstrip())


def schema() -> None:
    """Print the JSON Schema of study files (point your editor's YAML support at it)."""
    from tuner.spec import json_schema

    print_json(json_schema())


def _table(*columns: str):
    from rich.table import Table

    table = Table(*columns)
    return table


def _print(table) -> None:
    console().print(table)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
