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
    assert "to reach: optimizer steps, seconds of training" in table.output


def test_compare_gives_the_compute_each_study_took_to_reach_their_common_best(workdir: Path, cli) -> None:
    """The worst of the studies' bests is the value every one reached; each row says what it cost to get there, the
    LR range test of lr: auto included; the page overlays the studies' curves."""
    auto = {"optimizers": {"adam": {"lr": "auto"}}, "schedules": ["constant"], "batch_size": 64}
    assert cli("run", write_study(workdir, tracking_uri="none", space=auto)).exit_code == 0
    longer = write_study(workdir, "other.yaml", name="other", tracking_uri="none", budget={"epochs": 3, "n_trials": 3})
    assert cli("run", longer).exit_code == 0
    result = cli("compare", "tiny", "other", "--json", "--html", workdir / "compare.html")
    rows = json.loads(result.output[: result.output.rindex("]") + 1])
    storage = f"sqlite:///{workdir}/tuner.db"
    studies = [optuna.load_study(study_name=name, storage=storage) for name in ("tiny", "other")]
    common = min(study.best_value for study in studies)
    tiny_range_test = studies[0].user_attrs["lr_auto"]["adam"]["steps"]
    assert rows[0]["range_test_steps"] == tiny_range_test > 0 and rows[1]["range_test_steps"] == 0
    for row, study in zip(rows, studies):
        assert row["reach_value"] == common
        reached = study.trials[row["trial_to_reach"]]
        assert reached.value >= common and all(t.value < common for t in study.trials[: reached.number])
        trained = sum(t.user_attrs["steps_done"] for t in study.trials[: reached.number + 1])
        assert row["steps_to_reach"] == trained + row["range_test_steps"] <= row["steps"] + row["range_test_steps"]
        assert 0 < row["seconds_to_reach"] <= row["seconds"] + row["range_test_seconds"] + 0.1
        assert 0 < row["wall_s_to_reach"] <= row["wall_s"]
    page = (workdir / "compare.html").read_text()
    assert '"name":"tiny"' in page and '"name":"other"' in page and '"line":{"shape":"hv"}' in page
    assert "wall clock (s)" in page and "tiny: the LR range test (lr: auto) spent" in page
    table = cli("compare", "tiny", "other")
    assert "the best value every study reached" in table.output


def test_compare_with_a_study_without_trials_says_there_is_no_common_value(workdir: Path, cli) -> None:
    assert cli("run", write_study(workdir, tracking_uri="none", budget={"epochs": 1, "n_trials": 1})).exit_code == 0
    optuna.create_study(study_name="empty", storage=f"sqlite:///{workdir}/tuner.db", direction="maximize")
    result = cli("compare", "tiny", "empty")
    assert result.exit_code == 0 and "no complete trial yet in empty: no common value to reach" in result.output
    rows = json.loads(cli("compare", "tiny", "empty", "--json").output)
    assert rows[1]["steps"] == 0 and rows[1]["steps_to_reach"] is None and rows[0]["reach_value"] is None
