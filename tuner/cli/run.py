"""``tuner run``: create or resume a study from a study file and run its trials."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tuner.cli._common import DeviceOption, StorageOption, TrackingUriOption, new_app, user_errors
from tuner.cli.check import AllowPartialGridOption, print_check

app = new_app()


@app.command("run")
@user_errors
def run(
    study_file: Annotated[Path, typer.Argument(help="study file (YAML)")],
    n_trials: Annotated[
        Optional[int], typer.Option("--n-trials", min=1, help="target number of finished trials (overrides the file)")
    ] = None,
    timeout: Annotated[Optional[float], typer.Option(help="stop starting trials after this many seconds")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="local worker processes on the same storage")] = 1,
    storage: StorageOption = None,
    tracking_uri: TrackingUriOption = None,
    device: DeviceOption = None,
    population: Annotated[
        Optional[int],
        typer.Option(min=1, help="trials trained at once in one vectorized pass (overrides budget.population)"),
    ] = None,
    warm_start: Annotated[
        Optional[str],
        typer.Option(
            "--warm-start", metavar="STUDY[:K]", help="first enqueue the top-K (default 3) recipes of an earlier study"
        ),
    ] = None,
    fork: Annotated[
        Optional[str],
        typer.Option(
            "--fork",
            metavar="NEW_NAME",
            help="run the file as a new study NEW_NAME, warm-started from the "
            "study it names (when the file changed what the study is)",
        ),
    ] = None,
    allow_change: Annotated[
        bool, typer.Option("--allow-change", help="resume the study although the file changed what defines it")
    ] = False,
    allow_partial_grid: AllowPartialGridOption = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="check the study and print what it searches (as `tuner check`); write nothing"),
    ] = False,
) -> None:
    """Tune the optimizer, learning rate and schedule described by STUDY_FILE (same name resumes the study)."""
    from tuner.study.grid import check_grid_run
    from tuner.study.prepare import prepare
    from tuner.study.runner import RunOptions, busy_cpu_hint, run_study
    from tuner.study.warmstart import check_source

    prepared = prepare(study_file, storage=storage, tracking_uri=tracking_uri, device=device)
    if fork is not None:
        prepared, warm_start = forked(prepared, fork, warm_start)
    budget = prepared.spec.budget
    if warm_start:  # a bad --warm-start fails before anything is written
        check_source(warm_start, prepared)
    options = RunOptions(
        n_trials=n_trials or budget.n_trials,
        timeout=timeout or budget.timeout,
        jobs=jobs,
        warm_start=warm_start,
        population=population or budget.population or 1,
        allow_change=allow_change,
        allow_partial_grid=allow_partial_grid,
    )
    if dry_run:
        return print_check(prepared, options.n_trials, allow_partial_grid, warm_start)
    grid = prepared.plan.grid
    if grid is not None:  # the grid's size, before anything else
        check_grid_run(grid, options.n_trials, allow_partial_grid, warm_start)
        typer.echo(grid.describe())
    from tuner.study.tables import describe_search

    typer.echo(
        f"study {prepared.spec.name!r}: {options.n_trials} finished trials wanted; "
        f"{describe_search(prepared.spec.sampler, prepared.spec.pruner, prepared.spec, options.population)}"
    )
    hint = busy_cpu_hint(prepared.device, options.jobs)
    if hint:
        typer.echo(f"note: {hint}", err=True)
    try:
        total = options.n_trials if grid is None else min(options.n_trials, grid.size)
        with _Progress(prepared.spec.name, total) as progress:
            study = run_study(prepared, options, on_trial=progress.update, on_message=typer.echo)
            progress.update(study)  # a study that had its trials already shows them, not 0/N
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: the running trial is marked FAIL (reason: interrupted); `tuner run` again resumes.", err=True
        )
        raise typer.Exit(130) from None
    _print_result(study, prepared.metric)


def forked(prepared: Any, name: str, warm_start: Optional[str]) -> tuple[Any, str]:
    """The study file run as study ``name``, warm-started from the study it names (unless ``--warm-start`` says
    otherwise)."""
    from dataclasses import replace

    from tuner.spec import parse_study

    original = prepared.spec.name
    if name == original:
        raise ValueError(f"--fork: {name!r} is the study the file names; give the new study another name")
    spec = parse_study({**prepared.spec.model_dump(mode="json"), "name": name}, source=f"--fork {name!r}")
    return replace(prepared, spec=spec), warm_start or original


class _Progress:
    """A rich progress bar: trials done/total, best so far, pruned/failed counts, ETA."""

    def __init__(self, name: str, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task(name, total=total, stats="")

    def __enter__(self) -> _Progress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, study: Any) -> None:
        from tuner.study.records import summarize

        summary = summarize(study)
        done = summary.get("complete", 0) + summary.get("pruned", 0)
        best = f"best {summary['best_value']:.4g}" if "best_value" in summary else "best -"
        stats = f"{best}  pruned {summary.get('pruned', 0)}  failed {summary.get('fail', 0)}"
        self.progress.update(self.task, completed=min(done, self.progress.tasks[0].total), stats=stats)


def _print_result(study: Any, metric: str) -> None:
    """The study's counts, why trials failed (the most frequent reasons) and the best recipe; when no trial completed
    and some failed, exit 1."""
    from tuner.study.records import best_record, failure_reasons, summarize

    summary = summarize(study)
    counts = ", ".join(f"{summary.get(k, 0)} {k}" for k in ("complete", "pruned", "fail"))
    typer.echo(f"study {study.study_name!r}: {counts}")
    if "best_value" not in summary:
        reasons = failure_reasons(study)
        if not reasons:
            typer.echo("no complete trial yet")
            return
        typer.echo("no trial completed; why trials failed:", err=True)
        for _, count, example in reasons:
            typer.echo(f"  {count} x {example}", err=True)
        typer.echo(f"see every trial's reason: tuner show {study.study_name}", err=True)
        raise typer.Exit(1)
    for _, count, example in failure_reasons(study) if summary.get("fail") else []:
        typer.echo(f"failed: {count} x {example}", err=True)
    best = best_record(study)
    recipe = best.to_recipe()
    typer.echo(
        f"best {metric} = {best.value:.6g} (trial {best.number}): {recipe.optimizer} lr={recipe.lr:.3g} "
        f"schedule={recipe.schedule}"
    )
    typer.echo(f"next: tuner best {study.study_name}   |   tuner export {study.study_name} --format python")
