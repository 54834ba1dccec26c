"""Faster SQLite for the embedded default: WAL journal and ``synchronous=NORMAL`` on every SQLite connection.

Both the Optuna study (``sqlite:///tuner.db``) and MLflow (``sqlite:///mlflow.db``) commit many small
transactions per trial; in WAL mode with ``synchronous=NORMAL`` a commit does not wait for an fsync,
readers do not block the writer (``--jobs K`` workers share one file), and a crashed process loses
nothing that was committed (a power cut may lose the last commits). Other databases are untouched.
"""

from __future__ import annotations

_registered = False


def speed_up_sqlite() -> None:
    """Register (once per process) a SQLAlchemy listener that tunes every new SQLite connection."""
    global _registered
    if _registered:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "connect", _tune_connection)
    _registered = True


def _tune_connection(dbapi_connection, connection_record) -> None:
    import sqlite3

    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.OperationalError:  # e.g. a read-only file: keep SQLite's defaults
        pass
    finally:
        cursor.close()
