"""``tuner lock`` and ``tuner regress``: best recipes as checked-in lock files that CI re-runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tuner.cli._common import (
    DeviceOption,
    StorageOption,
    StudyArgument,
    StudyFileOption,
    new_app,
    own_storage_url,
    user_errors,
)

app = new_app()


@app.command("lock")
@user_errors
def lock(
    study: StudyArgument,
    output: Annotated[
        Optional[Path], typer.Option("-o", "--output", help="lock file (default: studies/STUDY.lock.yaml)")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="lock the best K distinct recipes")] = 1,
    trial: Annotated[
        Optional[int],
        typer.Option("--trial", min=0, help="lock trial N's recipe instead of the best (not with --top-k)"),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="fixed seeds each recipe is trained on")] = 5,
    storage: StorageOption = None,
    device: DeviceOption = None,
    floor: Annotated[
        Optional[float], typer.Option(min=0, help="absolute floor of the tolerance (default: 1% of |mean|)")
    ] = None,
    min_effect: Annotated[
        float, typer.Option("--min-effect", min=0, help="minimum effect size, in locked std units")
    ] = 0.5,
    alpha: Annotated[float, typer.Option(min=1e-6, max=0.5, help="significance level of the one-sided test")] = 0.05,
    deterministic: Annotated[
        bool, typer.Option("--deterministic/--no-deterministic", help="torch deterministic algorithms")
    ] = True,
    jobs: Annotated[int, typer.Option(min=1, help="local processes training the seeds")] = 1,
    study_file: StudyFileOption = None,
) -> None:
    """Re-train the best recipe(s) of STUDY (or trial N's) over fixed seeds at full budget; write a lock file for
    `tuner regress`. What trains them: --file, else the study's stored file if it names a built-in task or what
    $TUNER_ALLOWED_TASKS allows."""
    from tuner.ci.lock import lock_study
    from tuner.ci.lockfile import dump_lock, write_atomically
    from tuner.ci.summary import fmt

    path = output or Path("studies") / f"{study}.lock.yaml"
    locked = lock_study(
        study,
        own_storage_url(storage, study_file),
        path,
        study_file=study_file,
        top_k=top_k,
        trial=trial,
        seeds=seeds,
        device=device,
        floor=floor,
        min_effect=min_effect,
        alpha=alpha,
        deterministic=deterministic,
        processes=jobs,
    )
    write_atomically(path, dump_lock(locked))
    for entry in locked.recipes:
        typer.echo(
            f"#{entry.rank} {entry.recipe['optimizer']} lr={entry.recipe['lr']:.3g} "
            f"schedule={entry.recipe['schedule']}: "
            f"{locked.metric} {fmt(entry.mean)} ± {fmt(entry.std)} over {len(entry.seeds)} seeds, "
            f"tolerance {fmt(entry.tolerance)}"
        )
    typer.echo(f"wrote {path}; check it with: tuner regress {path}")


@app.command("regress")
@user_errors
def regress(
    locks: Annotated[list[Path], typer.Argument(metavar="LOCK", help="lock files (from `tuner lock`)")],
    junit: Annotated[
        Optional[Path], typer.Option("--junit", help="write a JUnit XML report (one testcase per locked recipe)")
    ] = None,
    summary: Annotated[
        Optional[Path], typer.Option("--summary", help="write a markdown summary (for a CI step summary)")
    ] = None,
    seeds: Annotated[
        Optional[int],
        typer.Option(
            "--seeds",
            min=1,
            help="seeds per recipe: the first S locked ones, or all of them and fresh ones (default: the locked "
            "ones); the test is paired over the locked seeds re-run, fresh ones are only reported",
        ),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="local processes training the runs")] = 1,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda ... (default: the lock's)")] = None,
) -> None:
    """Re-run every locked recipe and fail (exit 1) when one got worse than its lock by more than the tolerance."""
    from tuner.ci.lockfile import write_atomically
    from tuner.ci.runner import regress as run_regress
    from tuner.ci.summary import junit_xml, markdown_summary

    cases = run_regress(locks, seeds=seeds, jobs=jobs, device=device)
    _print_table(cases)
    if junit is not None:
        write_atomically(junit, junit_xml(cases))
    if summary is not None:
        write_atomically(summary, markdown_summary(cases))
    failed = [case for case in cases if not case.verdict.passed]
    for case in cases:
        typer.echo(f"{case.name}: {case.verdict.reason}" + "".join(f"\n  note: {note}" for note in case.notes))
    typer.echo(f"{len(cases) - len(failed)} passed, {len(failed)} regressed")
    if failed:
        raise typer.Exit(1)


def _print_table(cases) -> None:
    from rich.console import Console
    from rich.table import Table

    from tuner.ci.summary import COLUMNS, HEADERS, table_rows

    table = Table(*HEADERS)
    for row in table_rows(cases):
        style = "green" if row["verdict"] == "PASS" else "bold red"
        table.add_row(*(row[column] for column in COLUMNS[:-1]), f"[{style}]{row['verdict']}[/{style}]")
    Console(width=160).print(table)
