"""The ``tuner`` command line: one Typer app per file, joined here with ``add_typer``.

Every command imports its heavy dependencies (torch, optuna, mlflow) inside its body, so that ``tuner --help``
stays fast.
"""

from __future__ import annotations

import typer

from tuner.cli import check, housekeeping, insight, optimizers, regress, run, schedules, study, team

__all__ = ["app", "main"]

app = typer.Typer(
    name="tuner",
    help="Tune the optimizer, learning rate and schedule of PyTorch models with Optuna and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for commands in (run.app, check.app, study.app, housekeeping.app, optimizers.app, regress.app, team.app, insight.app):
    app.add_typer(commands)
app.add_typer(schedules.app, name="schedules")


def _version(value: bool) -> None:
    if value:
        from tuner.version import __version__

        typer.echo(f"tuner {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Tune the optimizer, learning rate and schedule of PyTorch models with Optuna and MLflow."""


def main() -> None:
    """Console-script entry point."""
    app()
