"""``strategy: pbt`` end to end: `tuner run` trains one population, every member is a trial with its lineage in the
study and in MLflow, its recorded recipe and seed replay it with plain ``fit``, `tuner export` prints an ordinary
piecewise schedule, `tuner lock` and `regress` run it; what PBT cannot run exits 2 with the reason."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from tests.helpers import mlflow_runs, write_study
from tuner.recipe import Recipe
from tuner.study.lifecycle import trial_seed
from tuner.tasks import load_task
from tuner.train import TrainBudget, fit

TASK = {"name": "digits-mlp", "options": {"hidden": [16]}}
BUDGET = {"steps": 40, "eval_every": 10, "n_trials": 6, "population": 6}
SPACE = {"optimizers": ["adam"], "schedules": ["constant"], "batch_size": [128]}


def _pbt_study(workdir: Path, **changes) -> Path:
    settings = {"task": TASK, "budget": BUDGET, "space": SPACE, "strategy": "pbt", "pbt": {"interval": 1}}
    return write_study(workdir, **{**settings, **changes})


def test_a_pbt_study_records_lineages_that_export_and_replay(workdir: Path, cli) -> None:
    result = cli("run", _pbt_study(workdir))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}")
    trials = {t.number: t for t in study.trials}
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values())
    assert all(t.user_attrs["population"] == 6 for t in trials.values())
    exploited = [t for t in trials.values() if t.user_attrs["pbt_lineage"]["exploits"]]
    assert exploited
    for trial in exploited:
        lineage = trial.user_attrs["pbt_lineage"]
        root = lineage["ancestry"][0]["trial"]
        assert trial.user_attrs["seed"] == trial_seed(0, root) and lineage["exact_replay"]
        recipe = trial.user_attrs["recipe"]
        points = recipe["schedule_params"]["points"]
        assert recipe["schedule"] == "piecewise" and points[-1][0] == lineage["exploits"][-1]["step"]
        assert all(e["parent_trial"] in trials and e["parent_trial"] != trial.number for e in lineage["exploits"])

    # the recorded recipe and seed replay the member with plain fit
    member = max(exploited, key=lambda t: len(t.user_attrs["pbt_lineage"]["ancestry"]))
    replay = fit(
        load_task(TASK["name"], TASK["options"]),
        Recipe.from_dict(member.user_attrs["recipe"]),
        TrainBudget(steps=40, eval_every=10),
        seed=member.user_attrs["seed"],
        device="cpu",
    )
    assert replay.last.metrics["accuracy"] == pytest.approx(member.value, abs=1e-6)

    # MLflow: parent member and step of every exploit
    runs = {
        int(r.data.tags["tuner.trial_number"]): r
        for r in mlflow_runs(f"sqlite:///{workdir / 'mlflow.db'}", "tiny")
        if r.data.tags.get("tuner.role") == "trial"
    }
    tags = runs[member.number].data.tags
    exploits = member.user_attrs["pbt_lineage"]["exploits"]
    assert tags["tuner.pbt.parent"] == str(exploits[-1]["parent_trial"])
    assert tags["tuner.pbt.exploit_steps"] == ", ".join(f"{e['step']} <- #{e['parent_trial']}" for e in exploits)
    assert tags["tuner.pbt.replay_seed"] == str(member.user_attrs["seed"])

    # export: an ordinary piecewise schedule of the catalog, as YAML and as plain torch code
    exported = yaml.safe_load(cli("export", "tiny", "--trial", member.number).stdout)
    assert exported == member.user_attrs["recipe"]
    code = cli("export", "tiny", "--trial", member.number, "--format", "python")
    assert code.exit_code == 0 and "piecewise" in code.stdout

    # lock and regress retrain it with plain fit
    lock = workdir / "pbt.lock.yaml"
    result = cli("lock", "tiny", "--trial", member.number, "--seeds", "2", "-o", lock)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(lock.read_text())["recipes"][0]["recipe"] == member.user_attrs["recipe"]
    result = cli("regress", lock)
    assert result.exit_code == 0 and "PASS" in result.stdout, result.output


def test_perturbed_betas_and_weight_decay_are_recorded_and_marked_not_exactly_replayable(workdir: Path, cli) -> None:
    space = {**SPACE, "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True}}
    perturb = {"interval": 1, "perturb": ["lr", "betas", "weight_decay"]}
    assert cli("run", _pbt_study(workdir, space=space, pbt=perturb), "--tracking-uri", "none").exit_code == 0
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}").trials
    exploited = [t for t in trials if t.user_attrs["pbt_lineage"]["exploits"]]
    assert exploited
    for trial in exploited:
        last = trial.user_attrs["pbt_lineage"]["exploits"][-1]
        recipe = trial.user_attrs["recipe"]
        assert {"beta1", "beta2", "weight_decay"} <= set(last)
        assert recipe["optimizer_params"]["beta1"] == last["beta1"] and recipe["weight_decay"] == last["weight_decay"]
        assert 1e-5 <= recipe["weight_decay"] <= 1e-2
        assert not trial.user_attrs["pbt_lineage"]["exact_replay"]

    # a worker joining the study trains whole populations too, never PBT-less trials one at a time
    result = cli("worker", "tiny", "--n-trials", "12", "--tracking-uri", "none")
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}").trials
    assert len(trials) == 12
    assert all(t.user_attrs["population"] == 6 and "pbt_lineage" in t.user_attrs for t in trials)


BATCHNORM_TASK = """
import torch
from tuner.tasks import SimpleTask, load_task

def make_task():
    digits = load_task("digits-mlp", {})
    return SimpleTask(
        name="digits-bn",
        model_fn=lambda: torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 10)),
        data_fn=digits.load_data,
        loss_fn=digits.loss,
        metrics_fn=digits.metrics_fn,
        metric="accuracy",
        direction="maximize",
    )
"""


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"task": "bn_task.py:make_task"}, "shared vectorized pass, but module '1' (BatchNorm1d)"),
        ({"space": {**SPACE, "optimizers": ["adam", "sgd"]}}, "must name one optimizer"),
        ({"space": {**SPACE, "optimizers": ["adafactor"]}}, "with a batched update rule"),
        ({"space": {**SPACE, "schedules": ["constant", "cosine"]}}, "space.schedules: [constant]"),
        ({"space": {**SPACE, "batch_size": [64, 128]}}, "space.batch_size must be one value"),
        ({"budget": {**BUDGET, "population": 3}}, "budget.population >= 4"),
        ({"budget": {**BUDGET, "objective": "best"}}, "remove budget.objective: best"),
        ({"pbt": {"quantile": 0.75}}, "pbt.quantile"),
        ({"pbt": {"perturb": ["momentum"]}}, "pbt.perturb"),
        ({"strategy": "search"}, "strategy: pbt only"),
        ({"pbt": {"perturb": ["weight_decay"]}}, "pbt.perturb names weight_decay, but space.weight_decay"),
        ({"space": {**SPACE, "optimizers": ["sgd"]}, "pbt": {"perturb": ["betas"]}}, "space.optimizers.sgd gives"),
    ],
)
def test_what_pbt_cannot_run_exits_2_with_the_reason(workdir: Path, cli, changes: dict, message: str) -> None:
    (workdir / "bn_task.py").write_text(BATCHNORM_TASK)
    result = cli("run", _pbt_study(workdir, **changes))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (workdir / "tuner.db").exists()


def test_population_flag_below_the_minimum_exits_2(workdir: Path, cli) -> None:
    result = cli("run", _pbt_study(workdir), "--population", "2")
    assert result.exit_code == 2 and "at least 4 members" in result.output
