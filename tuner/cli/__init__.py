"""The ``tuner`` command line: one Typer app per file, joined here.

Every command imports its heavy dependencies (torch, optuna, mlflow) inside its body, so that
``tuner --help`` stays fast.
"""

from __future__ import annotations

import typer

from tuner.cli import optimizers, run, schedules, study

app = typer.Typer(
    name="tuner",
    help="Tune the optimizer, learning rate and schedule of PyTorch models with Optuna and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("run")(run.run)
app.command("ls")(study.ls)
app.command("show")(study.show)
app.command("best")(study.best)
app.command("export")(study.export)
app.command("schema")(study.schema)
app.command("optimizers")(optimizers.optimizers)
app.add_typer(schedules.app, name="schedules")
from tuner.cli import regress as _regress  # noqa: E402  (issue 5: lock files and CI regression)
app.command("lock")(_regress.lock); app.command("regress")(_regress.regress)
from tuner.cli import team  # noqa: E402  (issue 4: team service)
app.command("worker")(team.worker)
app.command("dashboard")(team.dashboard)
from tuner.cli import insight  # noqa: E402  (issue 7: LR range test and study report)
app.command("lr-find")(insight.lr_find); app.command("report")(insight.report)


def main() -> None:
    """Console-script entry point."""
    app()
