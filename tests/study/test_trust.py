"""The study is data, not code: a real SQLite study whose stored spec is edited to name code that would leave a marker
file. ``tuner worker`` and ``tuner lock`` refuse it before anything is imported or run (exit 2, saying why and how to
allow it); what the worker's own side names -- a built-in task, ``--file``, ``$TUNER_ALLOWED_TASKS`` -- runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from tests.helpers import FIXTURES, TINY_STUDY
from tuner.errors import TunerError

EVIL = """\
import pathlib
pathlib.Path(__file__).with_name("MARKER").write_text("imported")


def make_task(**options):
    pathlib.Path(__file__).with_name("MARKER").write_text("called")


def train(trial):
    pathlib.Path(__file__).with_name("MARKER").write_text("called")
"""

OWN_CODE = {"metric": "accuracy", "direction": "maximize"}
EDITS = {
    "task file": {"task": {"name": "evil.py:make_task", "options": {}}},
    "task module": {"task": {"name": "subprocess:getoutput", "options": {"cmd": "touch MARKER"}}},
    "train file": {"train": {"name": "evil.py:train", "options": {}}, **OWN_CODE},
    "command": {"command": "touch MARKER", **OWN_CODE},
    "python command": {"command": ["python", "evil.py"], **OWN_CODE},
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A study database made by `tuner run` of a built-in task (one trial), copied fresh into each test."""
    from typer.testing import CliRunner

    from tuner.cli import app

    folder = tmp_path_factory.mktemp("trusted")
    study = folder / "tiny.yaml"
    study.write_text(yaml.safe_dump({**TINY_STUDY, "budget": {"epochs": 1, "n_trials": 1}}))
    url = f"sqlite:///{folder / 'tuner.db'}"
    result = CliRunner().invoke(app, ["run", str(study), "--storage", url, "--tracking-uri", "none"])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def team(workdir: Path, pristine: Path, monkeypatch) -> Path:
    """The study in this test's folder, with the evil file next to it and no allow-list."""
    monkeypatch.delenv("TUNER_ALLOWED_TASKS", raising=False)
    for path in pristine.glob("tuner.db*"):  # the database and its write-ahead log
        shutil.copy(path, workdir / path.name)
    shutil.copy(pristine / "tiny.yaml", workdir / "tiny.yaml")
    (workdir / "evil.py").write_text(EVIL)
    return workdir


def _edit(folder: Path, **changes) -> None:
    """What someone with write access to the database does: the stored spec names other code (and more trials)."""
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'tuner.db'}")
    spec = {key: value for key, value in study.user_attrs["spec"].items() if key not in ("task", "train", "command")}
    spec["budget"] = {**spec["budget"], "n_trials": 3}
    study.set_user_attr("spec", {**spec, **changes})
    study.set_user_attr("spec_dir", str(folder))


@pytest.mark.parametrize("edit", list(EDITS))
def test_code_a_database_edit_names_is_refused_before_it_is_imported_or_run(team: Path, cli, edit: str) -> None:
    _edit(team, **EDITS[edit])
    for command in (["worker", "tiny"], ["lock", "tiny", "--seeds", "1", "-o", team / "tiny.lock.yaml"]):
        result = cli(*command, "--storage", f"sqlite:///{team / 'tuner.db'}")
        assert result.exit_code == 2, result.output
        assert not (team / "MARKER").exists(), f"{command[0]} ran what the database named"
        assert "which this machine has not allowed" in result.stderr, result.output
        assert "--file STUDY_FILE" in result.stderr and "TUNER_ALLOWED_TASKS=" in result.stderr
        assert "Traceback" not in result.output
        assert f"its database names {next(iter(EDITS[edit]))}:" in result.stderr  # and what it refused
    assert not (team / "tiny.lock.yaml").exists()


@pytest.mark.parametrize("edit", ["task file", "task module", "command"])
def test_the_edit_is_real_code_when_a_worker_allows_everything(team: Path, cli, monkeypatch, edit: str) -> None:
    """The control: with ``TUNER_ALLOWED_TASKS='*'`` the same edit runs (so only the check stood in its way)."""
    _edit(team, **EDITS[edit])
    monkeypatch.setenv("TUNER_ALLOWED_TASKS", "*")
    cli("worker", "tiny", "--storage", f"sqlite:///{team / 'tuner.db'}", "--tracking-uri", "none")
    assert (team / "MARKER").exists()


def test_a_worker_with_its_own_study_file_runs_that_file_not_the_database(team: Path, cli) -> None:
    _edit(team, **EDITS["task file"])
    url = f"sqlite:///{team / 'tuner.db'}"
    result = cli("worker", "tiny", "--storage", url, "--file", team / "tiny.yaml", "--tracking-uri", "none")
    assert result.exit_code == 0, result.output
    assert not (team / "MARKER").exists()
    assert "study 'tiny': 1 complete" in result.output  # the file's own n_trials (1), not the edited 3


def test_a_resumed_run_trains_its_own_file_and_reads_the_stored_one_as_data(team: Path, cli) -> None:
    _edit(team, **EDITS["task module"])
    url = f"sqlite:///{team / 'tuner.db'}"
    result = cli("run", team / "tiny.yaml", "--storage", url, "--tracking-uri", "none")
    assert result.exit_code == 0, result.output
    _edit(team, **EDITS["task module"])  # the run stored its own file again: edit it once more
    study = optuna.load_study(study_name="tiny", storage=url)
    study.set_user_attr("definition", None)  # a study of an older tuner: its definition is read off the stored file
    result = cli("run", team / "tiny.yaml", "--storage", url, "--tracking-uri", "none")
    assert result.exit_code == 2 and 'task.name: "subprocess:getoutput" -> "digits-mlp"' in result.stderr
    assert not (team / "MARKER").exists()


def test_a_study_file_that_defines_another_study_is_refused(team: Path, cli) -> None:
    url = f"sqlite:///{team / 'tuner.db'}"
    changed = {**TINY_STUDY, "budget": {"epochs": 3, "n_trials": 1}}
    (team / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = cli("worker", "tiny", "--storage", url, "--file", team / "changed.yaml")
    assert result.exit_code == 2
    assert "does not define study 'tiny' as its database does" in result.stderr
    assert "budget.epochs: 1 -> 3" in result.stderr
    (team / "other.yaml").write_text(yaml.safe_dump({**changed, "name": "other"}))
    result = cli("worker", "tiny", "--storage", url, "--file", team / "other.yaml")
    assert result.exit_code == 2 and "defines study 'other', not 'tiny'" in result.stderr
    result = cli("worker", "tiny", "--file", team / "missing.yaml")
    assert result.exit_code == 2 and "missing.yaml: study file not found" in result.stderr


def test_a_task_file_allowed_by_pattern_runs(team: Path, cli, monkeypatch) -> None:
    code = team / "code"
    code.mkdir()
    shutil.copy(FIXTURES / "user_task.py", code / "user_task.py")
    _edit(team, task={"name": "code/user_task.py:make_task", "options": {}})
    url = f"sqlite:///{team / 'tuner.db'}"
    monkeypatch.setenv("TUNER_ALLOWED_TASKS", f"mypkg.*, {code}/*.py")
    result = cli("worker", "tiny", "--storage", url, "--tracking-uri", "none", "--n-trials", "1")
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("TUNER_ALLOWED_TASKS", "code/other.py")
    assert cli("worker", "tiny", "--storage", url).exit_code == 2


# -- the allow-list ---------------------------------------------------------------------------------------------


def _spec(**door):
    from tuner.spec import parse_study

    return parse_study({"name": "s", **door, **({} if "task" in door else OWN_CODE)})


@pytest.mark.parametrize(
    "door, allowed, refused",
    [
        ({"task": "digits-mlp"}, "", None),  # built in: always
        ({"task": "mypkg.tasks:make_task"}, "mypkg.tasks", "mypkg.other"),
        ({"task": "mypkg.tasks:make_task"}, "mypkg.*", "mypkg.tasks:other_fn"),
        ({"train": "mypkg.loops:train"}, "mypkg.loops:train", "mypkg.loops:evaluate"),
        ({"task": "evil.py"}, "{dir}/*.py", "{dir}/sub/*.py"),
        ({"train": "evil.py:train"}, "evil.py:train", "evil.py:make_task"),
        ({"command": "python train.py --epochs 5"}, "cmd:{dir}:python train.py --epochs 5", "cmd:/elsewhere:python *"),
        ({"command": ["touch", "MARKER"]}, "*", "cmd:{dir}:touch OTHER"),
    ],
)
def test_allow_list_patterns(tmp_path: Path, monkeypatch, door: dict, allowed: str, refused) -> None:
    from tuner.study.trust import check_allowed

    (tmp_path / "evil.py").write_text(EVIL)
    monkeypatch.chdir(tmp_path)  # relative patterns are the working directory's
    spec = _spec(**door)
    monkeypatch.setenv("TUNER_ALLOWED_TASKS", allowed.format(dir=tmp_path))
    check_allowed(spec, str(tmp_path))
    if refused is not None:
        monkeypatch.setenv("TUNER_ALLOWED_TASKS", refused.format(dir=tmp_path))
        with pytest.raises(TunerError, match="has not allowed"):
            check_allowed(spec, str(tmp_path))
    assert not (tmp_path / "MARKER").exists()


def test_a_command_pattern_without_its_folder_is_a_clear_error(monkeypatch) -> None:
    from tuner.study.trust import allowed_patterns

    with pytest.raises(TunerError, match="cmd:FOLDER:COMMAND"):
        allowed_patterns("cmd:python train.py")


def test_gpu_children_inherit_what_their_parent_allows(team: Path, monkeypatch) -> None:
    """``--gpus`` children (here one, on the CPU) run with their parent's ``--file`` or allow-list and URLs, none of
    which is on their command line."""
    from tuner.study.worker import WorkerOptions, gpu_worker_command, run_gpu_workers

    url = f"sqlite:///{team / 'tuner.db'}"
    _edit(team, **EDITS["task file"])
    elsewhere = {**yaml.safe_load((team / "tiny.yaml").read_text()), "storage": f"sqlite:///{team / 'other.db'}"}
    (team / "elsewhere.yaml").write_text(yaml.safe_dump(elsewhere))  # --storage beats it, in the children too
    with_file = WorkerOptions("tiny", url, tracking_uri="none", device="cpu", study_file=str(team / "elsewhere.yaml"))
    assert not any("sqlite" in word or word == "none" for word in gpu_worker_command(with_file))
    assert run_gpu_workers(with_file, [0]) == 0
    code = team / "code"
    code.mkdir()
    shutil.copy(FIXTURES / "user_task.py", code / "user_task.py")
    _edit(team, task={"name": "code/user_task.py:make_task", "options": {}})
    allowed = WorkerOptions("tiny", url, n_trials=1, tracking_uri="none", device="cpu")
    with pytest.raises(TunerError, match="has not allowed"):
        run_gpu_workers(allowed, [0])  # refused once, in the parent, before any child starts
    monkeypatch.setenv("TUNER_ALLOWED_TASKS", f"{code}/*.py")
    assert run_gpu_workers(allowed, [0]) == 0
    assert not (team / "MARKER").exists() and not (team / "other.db").exists()


def test_a_worker_sends_mlflow_data_where_its_own_side_says(team: Path, monkeypatch) -> None:
    from tuner.study.trust import study_tracking_uri

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{team / 'tuner.db'}")
    study.set_user_attr("spec", {**study.user_attrs["spec"], "tracking_uri": "http://db-says:5000"})
    assert study_tracking_uri(study) == "http://db-says:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mine:5000")
    assert study_tracking_uri(study) == "http://mine:5000"
    assert study_tracking_uri(study, "none") == "none"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    study.set_user_attr("spec", {**study.user_attrs["spec"], "tracking_uri": "postgresql://u:***@h/mlflow"})
    with pytest.raises(TunerError, match="credentials are not stored: give the tracking URI"):
        study_tracking_uri(study)
