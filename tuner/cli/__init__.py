"""The ``tuner`` command line: one Typer app per file, joined here with ``add_typer``.

Every command imports its heavy dependencies (torch, optuna, mlflow) inside its body, so that ``tuner --help``
stays fast.
"""

from __future__ import annotations

import typer

from tuner.cli import check, insight, optimizers, regress, run, schedules, study, team

__all__ = ["app", "main"]

app = typer.Typer(
    name="tuner",
    help="Tune the optimizer, learning rate and schedule of PyTorch models with Optuna and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for commands in (run.app, check.app, study.app, optimizers.app, regress.app, team.app, insight.app):
    app.add_typer(commands)
app.add_typer(schedules.app, name="schedules")


def main() -> None:
    """Console-script entry point."""
    app()
