"""Study files: defaults, the JSON Schema, and every kind of bad input (exit 2, clear message, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import write_study
from tuner.errors import TunerError
from tuner.spec import load_study
from tuner.study.prepare import prepare


def test_five_line_study_gets_working_defaults(tmp_path: Path) -> None:
    path = tmp_path / "five.yaml"
    path.write_text("name: five\ntask: digits-mlp\nspace:\n  optimizers: [adam]\n  schedules: [cosine]\n")
    prepared = prepare(path)
    assert prepared.metric == "accuracy" and prepared.direction == "maximize"
    assert prepared.storage_url == f"sqlite:///{Path.cwd() / 'tuner.db'}"
    assert prepared.tracking_uri == f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    assert prepared.spec.sampler.name == "tpe" and prepared.spec.pruner.name == "median"
    assert prepared.spec.budget.n_trials == 20


@pytest.mark.parametrize(
    "path", sorted(p for p in Path("studies").glob("*.yaml") if not p.name.endswith(".lock.yaml")), ids=lambda p: p.name
)
def test_shipped_studies_are_valid(path: Path) -> None:
    prepare(path)


def test_schema_command_prints_json_schema(cli) -> None:
    result = cli("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert {"name", "task", "budget", "space", "sampler", "pruner", "storage", "tracking_uri"} <= set(
        schema["properties"]
    )


BAD_STUDIES = [
    # (changes to the tiny study, words the message must contain)
    ({"budgett": {}}, ["budgett", "unknown key"]),
    ({"budget": {"epochs": "many"}}, ["budget.epochs", "'many'"]),
    ({"budget": {"epochs": 2, "steps": 10}}, ["epochs", "steps"]),
    (
        {"space": {"optimizers": ["adam"], "schedules": ["constant"], "weight_decay": {"low": 0.1, "high": 0.01}}},
        ["space.weight_decay", "low", "high"],
    ),
    (
        {"space": {"optimizers": {"adam": {"lr": {"low": 1.0, "high": 0.1}}}, "schedules": ["constant"]}},
        ["space.optimizers.adam.lr", "low"],
    ),
    ({"space": {"optimizers": ["adamm"], "schedules": ["constant"]}}, ["adamm", "valid optimizers", "adamw"]),
    ({"space": {"optimizers": ["adam"], "schedules": ["cosinee"]}}, ["cosinee", "valid schedules", "cosine_restarts"]),
    (
        {"space": {"optimizers": {"adam": {"bogus": 1}}, "schedules": ["constant"]}},
        ["space.optimizers.adam", "bogus", "beta2"],
    ),
    ({"space": {"optimizers": [], "schedules": ["constant"]}}, ["space.optimizers", "at least one"]),
    ({"space": {"optimizers": ["adam"], "schedules": ["constant"], "batch_size": []}}, ["space.batch_size", "empty"]),
    ({"task": "no-such-task"}, ["no-such-task", "digits-mlp"]),
    ({"task": "missing_file.py:make_task"}, ["missing_file.py"]),
    ({"sampler": "annealing"}, ["sampler", "annealing", "tpe"]),
    ({"pruner": "sometimes"}, ["pruner", "sometimes", "hyperband"]),
    ({"metric": "f1"}, ["metric", "f1", "accuracy"]),
    ({"name": "bad name!"}, ["name", "bad name!"]),
    ({"budget": {"checkpoint_every": 0}}, ["budget.checkpoint_every", "greater than 0", "(got 0)"]),
    ({"budget": {"checkpoint_every": {"minutes": -1}}}, ["budget.checkpoint_every", "minutes", "(got -1)"]),
    ({"keep_best": -1}, ["keep_best", "(got -1)"]),
    ({"checkpoint_dir": "study.yaml/ckpt"}, ["checkpoint_dir", "'study.yaml/ckpt'", "study.yaml is not a folder"]),
]


@pytest.mark.parametrize(
    "changes,words", BAD_STUDIES, ids=[str(list(c)[0]) + str(i) for i, (c, _) in enumerate(BAD_STUDIES)]
)
def test_bad_study_exits_2_naming_file_field_value_and_writes_nothing(workdir: Path, cli, changes, words) -> None:
    path = write_study(workdir, **changes)
    result = cli("run", path)
    assert result.exit_code == 2, result.output
    assert str(path) in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert "Traceback" not in result.output
    assert not (workdir / "tuner.db").exists() and not (workdir / "mlflow.db").exists()


def test_yaml_syntax_error(workdir: Path, cli) -> None:
    path = workdir / "broken.yaml"
    path.write_text("name: x\ntask: [digits-mlp\n")
    result = cli("run", path)
    assert result.exit_code == 2
    assert "invalid YAML" in result.stderr and str(path) in result.stderr
    assert not (workdir / "tuner.db").exists()


def test_missing_study_file(workdir: Path, cli) -> None:
    result = cli("run", workdir / "nope.yaml")
    assert result.exit_code == 2 and "not found" in result.stderr


def test_load_study_reports_all_problems_at_once(tmp_path: Path) -> None:
    path = write_study(tmp_path, budget={"epochs": -1, "n_trials": 0})
    with pytest.raises(TunerError) as error:
        load_study(path)
    assert "budget.epochs" in str(error.value) and "budget.n_trials" in str(error.value)
