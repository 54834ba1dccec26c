"""`tuner report`: a self-contained HTML page from a real study, logged to MLflow, rendered in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import write_study
from tuner.recipe import Recipe
from tuner.reports.html import lr_curve, reason_group

N_FIGURES = 7


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 12-trial study with complete and diverged (pruned) trials (5 complete at least: importances), and its
    report."""
    from typer.testing import CliRunner

    from tuner.cli import app

    directory = tmp_path_factory.mktemp("report")
    path = write_study(
        directory,
        budget={"epochs": 1, "n_trials": 12},
        sampler={"name": "random"},
        space={
            "optimizers": {"adam": {}, "sgd": {"lr": {"low": 5.0, "high": 100.0}}},
            "schedules": ["constant", "cosine"],
            "batch_size": 64,
        },
        storage=f"sqlite:///{directory / 'tuner.db'}",
        tracking_uri=f"sqlite:///{directory / 'mlflow.db'}",
    )
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(path)], catch_exceptions=False).exit_code == 0
    result = runner.invoke(
        app,
        ["report", "tiny", "-o", str(directory / "report.html"), "--storage", f"sqlite:///{directory / 'tuner.db'}"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "logged to MLflow run" in result.stdout
    return directory


def test_report_is_self_contained_and_explains_the_study(study_dir: Path) -> None:
    import optuna

    page = (study_dir / "report.html").read_text()
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_dir / 'tuner.db'}")
    assert page.count("<script type='text/javascript'>") == 1 and "<script src" not in page  # plotly.js inline, once
    assert len(page) > 3_000_000
    for div in (
        "best-value-against-compute",
        "optimization-history",
        "parallel-coordinates",
        "parameter-importances",
        "best-value-per-optimizer-family",
        "lr-curves-of-the-top-trials",
        "learning-curves-of-the-top-trials",
    ):
        assert f'id="plot-{div}"' in page, div
    states = [t.state.name for t in study.trials]
    assert "PRUNED" in states and "COMPLETE" in states
    assert f"{states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, 0 fail" in page
    assert "<td>pruned</td><td>diverged at step N</td>" in page
    assert f"best accuracy = {study.best_value:.6g} (trial {study.best_trial.number})" in page


def test_report_shows_the_compute_spent_to_reach_the_best(study_dir: Path) -> None:
    """The economics section: the plot, the compute to reach 90/99/100% of the way to the best, the totals (every
    ended trial's steps, pruned ones included) and what is counted."""
    import optuna

    from tuner.study.economics import economics

    page = (study_dir / "report.html").read_text()
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_dir / 'tuner.db'}")
    section = page.split("<h2>Best value against compute</h2>", 1)[1].split("</section>", 1)[0]
    assert 'id="plot-best-value-against-compute"' in section and "wall clock (s)" in section
    total_steps = sum(t.user_attrs["steps_done"] for t in study.trials)
    total_seconds = sum(t.user_attrs["duration_s"] for t in study.trials)
    assert f"<td>all {len(study.trials)} ended trials</td><td>-</td><td>{total_steps}</td>" in section
    assert f"<td>{total_seconds:.1f}</td>" in section
    curve = economics(study)
    for fraction, target, point in curve.milestones():
        row = f"<td>{fraction:.0%} of the way"
        assert row in section and f"<td>{target:.6g}</td><td>{point.spent.steps}</td>" in section
    assert "counted: steps: optimizer steps trained by complete, pruned" in section


def test_report_of_a_study_without_trials_says_so(workdir: Path, cli) -> None:
    import optuna

    optuna.create_study(study_name="empty", storage=f"sqlite:///{workdir / 'tuner.db'}")
    result = cli("report", "empty", "-o", "report.html")
    assert result.exit_code == 0, result.output
    page = (workdir / "report.html").read_text()
    assert "no trial has ended yet: no compute spent, no value to show" in page


def test_report_is_logged_on_the_parent_run(study_dir: Path) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_dir / 'tuner.db'}")
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    names = [a.path for a in client.list_artifacts(study.user_attrs["mlflow_parent_run_id"])]
    assert "report.html" in names


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--virtual-time-budget=15000",
]


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="needs Debian's chromium (.ci/run installs it; under CI a missing chromium fails the test)",
)
def test_report_renders_in_headless_chromium_without_errors(study_dir: Path) -> None:
    url = (study_dir / "report.html").as_uri()
    profile = study_dir / "chromium-profile"

    def chromium(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
            capture_output=True,
            text=True,
            timeout=180,
        )

    logged = chromium("--enable-logging=stderr", "--v=0", "--dump-dom")
    console = [line for line in logged.stderr.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if re.search(r"error|uncaught", line, re.IGNORECASE)], console
    rendered = logged.stdout
    for div in re.findall(r'id="(plot-[a-z-]+)"', rendered):  # every plot div holds plotly's rendered svg
        block = rendered.split(f'id="{div}"', 1)[1].split("</section>", 1)[0]
        assert 'class="main-svg"' in block, f"{div} did not render"
    assert rendered.count('class="main-svg"') >= 2 * N_FIGURES
    chromium("--window-size=1200,4000", f"--screenshot={study_dir / 'report.png'}")
    assert (study_dir / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_lr_curve_is_the_one_training_used() -> None:
    from tuner.tasks import load_task
    from tuner.train import TrainBudget, fit

    recipe = Recipe("adam", 0.01, schedule="cosine", warmup=0.2, batch_size=64)
    result = fit(load_task("digits-mlp", {"hidden": [16]}), recipe, TrainBudget(epochs=2), device="cpu")
    steps, lrs = lr_curve(recipe, result.total_steps)
    recomputed = dict(zip(steps, lrs))
    assert {step for step, _ in result.lr_curve} <= set(recomputed)
    for step, lr in result.lr_curve:
        assert recomputed[step] == pytest.approx(lr, rel=1e-9, abs=1e-15)


def test_reason_group_drops_numbers() -> None:
    assert reason_group("diverged at step 12: training loss 1.2e+04 (first loss 2.3)") == "diverged at step N"
    assert reason_group("pruned at step 40") == "pruned at step N"
    assert reason_group("") == "(none)"


def test_report_bad_input_exits_2(workdir: Path, cli) -> None:
    assert cli("run", write_study(workdir, budget={"epochs": 1, "n_trials": 1})).exit_code == 0
    result = cli("report", "nope")
    assert result.exit_code == 2 and "no study named 'nope'" in result.stderr and "tiny" in result.stderr
    result = cli("report", "tiny", "-o", "missing/report.html")
    assert result.exit_code == 2 and "missing" in result.stderr
    assert not list(workdir.glob("**/*.html"))


def test_importances_are_computed_over_fields_every_trial_has(tmp_path: Path) -> None:
    """The issue's case: an optimizer's own LR, present in one trial of six, must not get an importance; the recipe's
    lr (every trial has one) does."""
    import optuna

    from tuner.recipe import Recipe
    from tuner.reports.html import _importances

    study = optuna.create_study(direction="maximize")
    for number in range(8):
        optimizer = "sgd" if number == 0 else "adam"
        recipe = Recipe(
            optimizer=optimizer, lr=10 ** (-1 - number / 3), schedule="constant" if number % 2 else "cosine"
        )
        trial = optuna.trial.create_trial(
            params={"optimizer": optimizer, f"{optimizer}.lr": recipe.lr},
            distributions={
                "optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd"]),
                f"{optimizer}.lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
            },
            value=0.5 + 0.05 * number,
            user_attrs={"recipe": recipe.to_dict()},
        )
        study.add_trial(trial)
    figure = _importances(study, [])
    names = set(figure.data[0].y)
    assert names == {"optimizer", "lr", "schedule"} and "sgd.lr" not in names
    few = optuna.create_study()
    with pytest.raises(ValueError, match="importances need at least 5"):
        _importances(few, [])
