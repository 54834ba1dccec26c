"""A study is one question: resuming with a file that changes what the study is exits 2 and says what changed and
how to go on; n_trials, timeout and population always pass; --allow-change and --fork are the ways forward."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tests.helpers import write_study


def _study(workdir: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir}/tuner.db")


def test_a_changed_study_file_is_refused_with_the_differences_and_the_ways_forward(workdir: Path, cli) -> None:
    assert cli("run", write_study(workdir, tracking_uri="none")).exit_code == 0
    before = len(_study(workdir).trials)
    changed = write_study(
        workdir,
        tracking_uri="none",
        budget={"epochs": 3, "n_trials": 4},
        space={"optimizers": ["adagrad"], "schedules": ["constant", "cosine"], "batch_size": [64]},
    )
    result = cli("run", changed)
    assert result.exit_code == 2, result.output
    assert "budget.epochs: 2 -> 3" in result.output
    assert 'space.optimizers: ["adam", "sgd"] -> ["adagrad"]' in result.output
    assert "--fork NEW_NAME" in result.output and "--allow-change" in result.output and "Traceback" not in result.output
    study = _study(workdir)
    assert len(study.trials) == before and study.user_attrs["spec"]["budget"]["epochs"] == 2  # nothing written

    task_changed = write_study(workdir, tracking_uri="none", task="digits-cnn")
    assert 'task.name: "digits-mlp" -> "digits-cnn"' in cli("run", task_changed).output


def test_how_many_trials_and_how_they_run_may_always_change(workdir: Path, cli) -> None:
    assert cli("run", write_study(workdir, tracking_uri="none")).exit_code == 0
    more = write_study(workdir, tracking_uri="none", budget={"epochs": 2, "n_trials": 6, "timeout": 600})
    result = cli("run", more, "--population", "2")
    assert result.exit_code == 0, result.output
    assert len([t for t in _study(workdir).trials if t.state.is_finished()]) >= 6


def test_allow_change_goes_on_and_records_the_change(workdir: Path, cli) -> None:
    assert cli("run", write_study(workdir, tracking_uri="none")).exit_code == 0
    changed = write_study(workdir, tracking_uri="none", budget={"epochs": 3, "n_trials": 5})
    result = cli("run", changed, "--allow-change")
    assert result.exit_code == 0, result.output
    study = _study(workdir)
    assert study.user_attrs["changes"][-1]["changed"] == ["budget.epochs: 2 -> 3"]
    assert study.user_attrs["definition"]["budget"]["epochs"] == 3
    assert cli("run", changed).exit_code == 0  # the changed definition is the study's now


def test_fork_starts_a_new_study_from_the_old_ones_best_recipes(workdir: Path, cli) -> None:
    assert cli("run", write_study(workdir, tracking_uri="none")).exit_code == 0
    changed = write_study(workdir, tracking_uri="none", budget={"epochs": 3, "n_trials": 4})
    result = cli("run", changed, "--fork", "tiny-3-epochs")
    assert result.exit_code == 0, result.output
    assert "warm start: enqueued tiny#" in result.output
    fork = optuna.load_study(study_name="tiny-3-epochs", storage=f"sqlite:///{workdir}/tuner.db")
    assert any("warm_start" in t.user_attrs for t in fork.trials)
    assert len(_study(workdir).trials) == 4  # the original is untouched


def test_a_study_made_before_definitions_were_kept_is_checked_against_its_stored_file(workdir: Path, cli) -> None:
    assert cli("run", write_study(workdir, tracking_uri="none")).exit_code == 0
    study = _study(workdir)
    study._storage.set_study_user_attr(study._study_id, "definition", None)  # what an older tuner left
    result = cli("run", write_study(workdir, tracking_uri="none", budget={"epochs": 5, "n_trials": 4}))
    assert result.exit_code == 2 and "budget.epochs: 2 -> 5" in result.output


@pytest.mark.parametrize("name", ["tiny", "bad name!"])
def test_fork_needs_a_new_valid_name(workdir: Path, cli, name: str) -> None:
    result = cli("run", write_study(workdir, tracking_uri="none"), "--fork", name)
    assert result.exit_code == 2 and "--fork" in result.output
