"""``tuner optimizers``: the optimizer catalog as a table, or as JSON with ``--json``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tuner.cli._common import JsonOption, console, new_app, print_json, user_errors

app = new_app()

_FORMATS: Mapping[str, Callable[[dict[str, Any]], str]] = {
    "float": lambda d: f"[{d['low']:g}, {d['high']:g}]" + (" log" if d["log"] else ""),
    "int": lambda d: f"int [{d['low']}, {d['high']}]" + (" log" if d["log"] else ""),
    "beta": lambda d: f"β in [{d['low']:g}, {d['high']:g}] log(1-β)",
    "choice": lambda d: "{" + ", ".join(map(str, d["options"])) + "}",
    "fixed": lambda d: f"= {d['value']}",
}

_NOTES: Mapping[str, str] = {
    "full_batch_only": "full-batch tasks only (batch_size: null)",
    "needs_sparse": "needs a sparse embedding",
    "schedule_free": "schedule-free (train/eval modes)",
}


def format_dimension(described: dict[str, Any]) -> str:
    """A dimension's ``describe()`` dict as a short human string (``[1e-05, 0.1] log``)."""
    return _FORMATS[described["type"]](described)


def _hyperparameters(entry: dict[str, Any]) -> str:
    lines = []
    for key, default in entry["defaults"].items():
        searched = entry["space"].get(key)
        lines.append(f"{key} = {default}" + (f"  search {format_dimension(searched)}" if searched else ""))
    return "\n".join(lines) or "-"


def _notes(entry: dict[str, Any]) -> str:
    notes = [text for flag, text in _NOTES.items() if entry[flag]]
    notes += [f"{entry['companion']} on the other parameters"] if entry["companion"] else []
    notes.append("native weight decay: " + (", ".join(entry["native_weight_decay"]) or "none"))
    return "\n".join(notes)


def _print_table(entries: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="optimizers", show_lines=True)
    for column in ("name", "family", "update rule", "lr range", "hyperparameters (default, search range)", "notes"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            entry["name"],
            entry["family"],
            entry["description"],
            format_dimension(entry["lr"]),
            _hyperparameters(entry),
            _notes(entry),
        )
    console().print(table)


@app.command("optimizers")
@user_errors
def optimizers(json_output: JsonOption = False) -> None:
    """List the optimizers: update rule, LR range, hyperparameters with defaults and search ranges."""
    from tuner.optim.catalog import OPTIMIZERS

    entries = [spec.describe() for spec in OPTIMIZERS.values()]
    if json_output:
        print_json(entries)
    else:
        _print_table(entries)
