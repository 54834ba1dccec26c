"""Helpers shared by the CLI commands: user errors without tracebacks, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, TypeVar

import typer

from tuner.errors import TunerError

F = TypeVar("F", bound=Callable[..., Any])


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
    """Print ``error: message`` to stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def console():
    """A rich console; when output is not a terminal (a pipe, a file, CI logs) and $COLUMNS is unset it is 160
    columns wide, not rich's 80."""
    import os

    from rich.console import Console

    return Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=160)
