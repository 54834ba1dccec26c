"""What the CLI commands share: options declared once, user errors without tracebacks, JSON and table output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from tuner.errors import TunerError

F = TypeVar("F", bound=Callable[..., Any])

StudyArgument = Annotated[str, typer.Argument(help="study name")]
StorageOption = Annotated[
    Optional[str], typer.Option("--storage", help="Optuna storage URL (default: $TUNER_STORAGE or sqlite:///tuner.db)")
]
TrackingUriOption = Annotated[
    Optional[str],
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: the study file's or $MLFLOW_TRACKING_URI -- the variable first for a study "
        "read from the database -- else sqlite:///mlflow.db; 'none' disables)",
    ),
]
DeviceOption = Annotated[
    Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:1 ... (default: the study's)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
StudyFileOption = Annotated[
    Optional[Path],
    typer.Option(
        "--file",
        help="the study file the study was run with: what trains comes from it, not from the database "
        "(else: a built-in task, or what $TUNER_ALLOWED_TASKS allows)",
    ),
]


def own_storage_url(storage: Optional[str], study_file: Optional[Path]) -> str:
    """The storage URL of a command that reads a study: ``--storage``, else the study file's (``--file``), else
    ``$TUNER_STORAGE``, else the embedded default. Never one read from a database."""
    from tuner.spec import load_study, storage_url

    return storage_url(storage or (load_study(study_file).storage if study_file is not None else None))


def new_app() -> typer.Typer:
    """A Typer app for one file's commands (``tuner.cli`` joins them with ``add_typer``)."""
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def user_errors(command: F) -> F:
    """Turn ``TunerError`` and ``ValueError`` (bad input) into a one-line message and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TunerError as error:
            fail(str(error), getattr(error, "exit_code", 2))
        except ValueError as error:
            fail(str(error), 2)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` to stderr (any URL in it masked) and exit with ``code``."""
    if "://" in message:
        from tuner.study.storage.redact import mask_text

        message = mask_text(message)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def console() -> Any:
    """A rich console; when output is not a terminal (a pipe, a file, CI logs) and $COLUMNS is unset it is 160
    columns wide, not rich's 80."""
    import os

    from rich.console import Console

    return Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=160)


def fmt(value: Any) -> str:
    """A table cell: ``-`` for nothing, 4 significant digits for floats."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
