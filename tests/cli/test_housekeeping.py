"""Study housekeeping users expect: --version, delete (the study, its MLflow experiment, its checkpoints), compare."""

from __future__ import annotations

import json
from pathlib import Path

import optuna

from tests.helpers import write_study
from tuner.version import __version__


def test_version(cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"tuner {__version__}"


def test_delete_removes_the_study_and_its_experiment_after_confirmation(workdir: Path, cli) -> None:
    from mlflow.tracking import MlflowClient

    assert cli("run", write_study(workdir, save_model=True)).exit_code == 0
    assert (workdir / "checkpoints" / "tiny").is_dir()  # the best trial's model.pt
    result = cli("delete", "tiny", "--yes")
    assert result.exit_code == 0 and "deleted study 'tiny' and its MLflow experiment" in result.output
    assert "removed its checkpoints" in result.output and not (workdir / "checkpoints" / "tiny").exists()
    storage = f"sqlite:///{workdir}/tuner.db"
    assert "tiny" not in [s.study_name for s in optuna.get_all_study_summaries(storage)]
    experiment = MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_experiment_by_name("tiny")
    assert experiment.lifecycle_stage == "deleted"
    assert cli("run", write_study(workdir)).exit_code == 0  # the name is free again (the experiment restored)
    missing = cli("delete", "nope", "--yes")
    assert missing.exit_code == 2 and "no study named 'nope'" in missing.output


def test_delete_asks_first(workdir: Path) -> None:
    from typer.testing import CliRunner

    from tuner.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["run", str(write_study(workdir, tracking_uri="none"))]).exit_code == 0
    answered_no = runner.invoke(app, ["delete", "tiny"], input="n\n")
    assert answered_no.exit_code == 1 and "Aborted" in answered_no.output
    assert "tiny" in [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{workdir}/tuner.db")]


def test_compare_puts_studies_side_by_side_with_what_they_cost(workdir: Path, cli) -> None:
    assert cli("run", write_study(workdir, tracking_uri="none")).exit_code == 0
    longer = write_study(workdir, "other.yaml", name="other", tracking_uri="none", budget={"epochs": 3, "n_trials": 3})
    assert cli("run", longer).exit_code == 0
    result = cli("compare", "tiny", "other", "--json", "--html", workdir / "compare.html")
    rows = json.loads(result.output[: result.output.rindex("]") + 1])
    assert [row["study"] for row in rows] == ["tiny", "other"]
    tiny = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir}/tuner.db")
    assert rows[0]["best_value"] == tiny.best_value and rows[0]["trials"] == len(tiny.trials)
    assert rows[0]["steps"] == sum(t.user_attrs["steps_done"] for t in tiny.trials)
    assert rows[1]["steps"] > 0 and rows[1]["seconds"] > 0
    page = (workdir / "compare.html").read_text()
    assert "<h1>tuner compare</h1>" in page and "plot-compare" in page and ">other<" in page
    table = cli("compare", "tiny", "other")
    assert table.exit_code == 0 and "accuracy (final, max)" in table.output
