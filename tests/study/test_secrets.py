"""No secret is stored or printed: a study on a real PostgreSQL, its password in the study file's ``storage:`` and
``tracking_uri:`` (an MLflow store on the same server), run with two local processes, joined by a worker that gets the
URLs from its environment, then shown, exported and reported. The password is on no surface: every table of both
databases dumped as text, the MLflow artifacts, the report page, every command's output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_STUDY

PASSWORD = "Pw7xQz-s3cret-d0nt-leak"


def _with_password(url: str) -> str:
    user, rest = url.split("://", 1)[1].split("@", 1)
    return f"postgresql://{user}:{PASSWORD}@{rest}"


def _tuner(*args: str, cwd: Path, env: dict[str, str]) -> str:
    base = {key: value for key, value in os.environ.items() if key not in ("TUNER_STORAGE", "MLFLOW_TRACKING_URI")}
    result = subprocess.run(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd,
        env={**base, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _dump(url: str) -> str:
    """Every row of every table of a PostgreSQL database, as text."""
    import psycopg
    from psycopg import sql

    from tuner.study.storage import mask_url

    with psycopg.connect(url) as connection:
        tables = [row[0] for row in connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert tables, f"no tables in {mask_url(url)}"
        rows = [
            f"{table}: {connection.execute(sql.SQL('SELECT * FROM {}').format(sql.Identifier(table))).fetchall()}"
            for table in tables
        ]
    return "\n".join(rows)


def _files(folder: Path) -> str:
    return "\n".join(path.read_bytes().decode(errors="replace") for path in folder.rglob("*") if path.is_file())


@pytest.mark.slow
def test_a_password_given_in_the_study_file_is_on_no_stored_or_printed_surface(postgres, workdir: Path, cli) -> None:
    storage = _with_password(postgres.create_database("secret_study"))
    tracking = _with_password(postgres.create_database("secret_mlflow"))
    study_file = workdir / "secret.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                **TINY_STUDY,
                "name": "secret",
                "budget": {"epochs": 1, "n_trials": 3},
                "storage": storage,
                "tracking_uri": tracking,
            }
        )
    )
    printed = [_tuner("run", str(study_file), "--jobs", "2", cwd=workdir, env={})]
    # a worker joins with the URLs from its environment (never from the database), and runs a trial more
    joined = {"TUNER_STORAGE": storage, "MLFLOW_TRACKING_URI": tracking}
    printed.append(_tuner("worker", "secret", "--n-trials", "4", cwd=workdir, env=joined))
    assert "study 'secret': 4 complete" in printed[-1]
    for args in (["show", "secret"], ["best", "secret"], ["export", "secret"], ["ls"], ["best", "secret", "--json"]):
        result = cli(*args, "--storage", storage)
        assert result.exit_code == 0, result.output
        printed.append(result.output)
    empty = _with_password(postgres.create_database("secret_empty"))
    printed.append(cli("ls", "--storage", empty).output)
    assert "no studies in postgresql://" in printed[-1]
    report = workdir / "report.html"
    result = cli("report", "secret", "--storage", storage, "--tracking-uri", tracking, "-o", report)
    assert result.exit_code == 0 and "logged" in result.output, result.output
    printed.append(result.output)

    stored = {
        "the study database": _dump(storage),
        "the MLflow database": _dump(tracking),
        "the MLflow artifacts": _files(workdir / "mlruns"),
        "the report": report.read_text(),
    }
    leaks = [
        where for where, text in {**stored, "what the commands printed": "\n".join(printed)}.items() if PASSWORD in text
    ]
    assert not leaks, f"the password is in {', '.join(leaks)}"
    masked = storage.replace(PASSWORD, "***")
    assert f"storage: {masked}" in stored["the MLflow artifacts"]  # study.yaml, as the study stores its file
    assert masked in stored["the study database"]
    assert f"no studies in {empty.replace(PASSWORD, '***')}" in printed[-2]
