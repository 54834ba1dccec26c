"""The one URL mask: passwords and secret query values out of what is stored and what is printed."""

from __future__ import annotations

import logging
import warnings

import optuna
import pytest

from tuner.study.storage.redact import mask_output, mask_text, mask_url, redact


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://team:s3cret@db:5432/optuna", "postgresql://team:***@db:5432/optuna"),
        ("postgresql+psycopg://team:p%40ss@db/optuna", "postgresql+psycopg://team:***@db/optuna"),
        ("postgresql://team:p@ss@db/optuna", "postgresql://team:***@db/optuna"),  # a raw '@' in the password
        (
            "postgresql://team@db/optuna?password=s3cret&sslmode=require",
            "postgresql://team@db/optuna?password=***&sslmode=require",
        ),
        ("https://me:tok@mlflow.example.com/?api_key=s3cret", "https://me:***@mlflow.example.com/?api_key=***"),
        ("http://u:s3cret@host:port/", "http://u:***@host:port/"),  # no URL SQLAlchemy reads: the password still goes
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/a b/tuner.db", "sqlite:////tmp/a b/tuner.db"),
        ("none", "none"),
        ("./mlruns", "./mlruns"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert "s3cret" not in mask_text(f"cannot open '{url}': refused") and "tok" not in mask_text(url)


def test_redact_masks_every_url_in_data_and_keeps_the_rest() -> None:
    spec = {"storage": "postgresql://u:s3cret@h/db", "command": ["python", "t.py", "--db=mysql://a:s3cret@c/d"], "n": 3}
    assert redact(spec) == {
        "storage": "postgresql://u:***@h/db",
        "command": ["python", "t.py", "--db=mysql://a:***@c/d"],
        "n": 3,
    }


def test_warnings_and_log_lines_mask_urls(caplog) -> None:
    with warnings.catch_warnings(record=True) as seen:
        mask_output()  # as quiet_libraries() does in every process that runs a study
        warnings.simplefilter("always")
        warnings.warn("MLflow: could not log: http://u:s3cret@mlflow:5000/api failed", RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["MLflow: could not log: http://u:***@mlflow:5000/api failed"]
    with caplog.at_level(logging.WARNING):
        logging.getLogger("tuner.test").warning("retrying %s", "postgresql://u:s3cret@h/db")
    assert caplog.messages == ["retrying postgresql://u:***@h/db"]


def test_a_trial_attribute_is_stored_with_its_urls_masked(tmp_path) -> None:
    from tuner.study.storage.sql import write_trial

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 't.db'}")
    trial = study.ask()
    write_trial(trial, {"tracking_errors": ["MLflow: could not end run: https://u:s3cret@m/api: 503"]})
    stored = study.get_trials()[0].user_attrs["tracking_errors"]
    assert stored == ["MLflow: could not end run: https://u:***@m/api: 503"]
