"""Study housekeeping: ``tuner delete`` (a study and its MLflow experiment) and ``tuner compare`` (studies side by
side)."""

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


@app.command("delete")
@user_errors
def delete(
    study: StudyArgument,
    storage: StorageOption = None,
    tracking_uri: TrackingUriOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete a study (its trials), its MLflow experiment (kept by MLflow as deleted, restorable) and its checkpoints
    (the study's checkpoint_dir folder, as seen from here)."""
    from tuner.spec import parse_study, storage_url
    from tuner.study.checkpoints import delete_checkpoints
    from tuner.study.keys import StudyKeys
    from tuner.study.runner import open_tracker
    from tuner.study.storage import delete_study, load_existing_study
    from tuner.study.trust import study_tracking_uri

    url = storage_url(storage)
    loaded = load_existing_study(study, url)
    tracked_here = tracking_uri is not None or StudyKeys.SPEC in loaded.user_attrs
    uri = study_tracking_uri(loaded, tracking_uri) if tracked_here else None
    spec = loaded.user_attrs.get(StudyKeys.SPEC)
    if not yes:
        typer.confirm(f"delete study {study!r} ({len(loaded.trials)} trials) and its MLflow experiment?", abort=True)
    delete_study(study, url)
    tracked = uri is not None and open_tracker(uri).delete_study(study)
    checkpoints = delete_checkpoints(parse_study(spec)) if spec is not None else None
    typer.echo(f"deleted study {study!r}" + (" and its MLflow experiment" if tracked else ""))
    if checkpoints is not None:
        typer.echo(f"removed its checkpoints: {checkpoints}")


@app.command("compare")
@user_errors
def compare(
    studies: Annotated[list[str], typer.Argument(metavar="STUDY...", help="two or more study names")],
    storage: StorageOption = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="also write the comparison as an HTML page")] = None,
    json_output: JsonOption = False,
) -> None:
    """Studies side by side: best value and recipe, trials by state, what they cost (optimizer steps trained, seconds
    of training, wall clock) and what it cost each to reach the best value all of them reached (the worst of their
    bests). --html: also every study's best value against its compute on one plot."""
    from tuner.spec import storage_url
    from tuner.study.economics import compare as compare_studies
    from tuner.study.storage import load_existing_study, open_storage

    url = storage_url(storage)
    opened = open_storage(url)
    comparison = compare_studies([load_existing_study(name, url, opened) for name in studies])
    if html is not None:
        from tuner.reports.html import comparison_page, write_page

        write_page(html, comparison_page(comparison))
    if json_output:
        return print_json(comparison.rows)
    _print(comparison.rows)
    if comparison.reach_value is not None:
        typer.echo(
            f"to reach: optimizer steps, seconds of training until the study's best reached "
            f"{fmt(comparison.reach_value)}, the best value every study reached (an LR range test included)"
        )
    else:
        typer.echo(comparison.reach_note)
    if html is not None:
        typer.echo(f"wrote {html}")


COLUMNS = (
    "study",
    "metric",
    "best_value",
    "optimizer",
    "lr",
    "schedule",
    "trials",
    "complete",
    "pruned",
    "fail",
    "steps",
    "seconds",
    "wall_s",
    "to_reach",
)
HEADERS = {"wall_s": "wall s", "to_reach": "to reach"}


def _print(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(*(HEADERS.get(column, column) for column in COLUMNS))
    for row in rows:
        metric = f"{row['metric']} ({row['objective']}, {'max' if row['direction'] == 'maximize' else 'min'})"
        cells = dict(row, metric=metric, to_reach=_to_reach(row))
        table.add_row(*(fmt(cells[column]) for column in COLUMNS))
    console().print(table)


def _to_reach(row: dict[str, Any]) -> Optional[str]:
    if row["steps_to_reach"] is None:
        return None
    return f"{row['steps_to_reach']}, {fmt(row['seconds_to_reach'])}"
