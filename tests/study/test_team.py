"""The team service with real components: PostgreSQL 15, an ``mlflow server``, three worker processes, a SIGKILL,
a database restart, optuna-dashboard; the docker-compose file's parity with the code; bad input of the commands."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, TINY_STUDY, mlflow_runs
from tests.service_fixtures import free_port

N_TRIALS = 24
TEAM_ENV = {
    "TUNER_HEARTBEAT_INTERVAL": "1",
    "TUNER_GRACE_PERIOD": "4",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",  # a frozen server: each call gives up after 2 s (tuner's own default is 10)
    "OMP_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "PYTHONFAULTHANDLER": "1",  # a worker still running when a test gives up is sent SIGABRT: its stacks go to its log
}


def _tuner(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, **TEAM_ENV}
    env.pop("TUNER_STORAGE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", *args], cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def _storage(url: str):
    import optuna

    return optuna.storages.RDBStorage(url)


def _wait_for(condition, seconds: float, what: str, processes=()):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for process in processes:
            assert process.poll() in (None, 0), (
                f"a worker exited early with {process.returncode} while waiting for {what}"
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _stop_with_stacks(processes) -> None:
    """Stop the workers still running (a test that gave up on them), each first writing every thread's stack to its
    log (PYTHONFAULTHANDLER: SIGABRT), so a hang shows where it hung."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGABRT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _trials(url: str, name: str):
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=_storage(url)).get_trials(deepcopy=False)
    except KeyError:
        return []


def _running_trial_of(url: str, name: str, pid: int):
    for trial in _trials(url, name):
        if (
            trial.state.name == "RUNNING"
            and trial.user_attrs.get("worker", "").endswith(f":{pid}")
            and trial.user_attrs.get("mlflow_run_id")
        ):
            return trial
    return None


def _finished(url: str, name: str) -> int:
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in _trials(url, name))


def _outage_recorded(url: str, name: str) -> bool:
    """Whether a finished trial says its tracking waited for the server."""
    return any(
        t.user_attrs.get("tracking_errors", [""])[0].startswith("MLflow unreachable")
        for t in _trials(url, name)
        if t.state.name in ("COMPLETE", "PRUNED")
    )


def _states(url: str, name: str) -> dict[str, list]:
    trials = _trials(url, name)
    states = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
    return {state: [t for t in trials if t.state.name == state] for state in states}


@pytest.mark.slow
def test_three_workers_survive_a_sigkill_a_pause_an_mlflow_outage_and_a_postgres_restart(
    postgres, mlflow_server, tmp_path
):
    """One worker SIGKILLed mid-trial; PostgreSQL restarted; another worker SIGSTOPped past the grace period while
    the MLflow server freezes (requests time out) for a few trials, then both continue. Nothing is lost, duplicated
    or left RUNNING in Optuna or MLflow, and every process but the killed one ends well."""
    url = postgres.create_database("team_fault")
    study_file = tmp_path / "team.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                # trials of ~1 s (a 6-epoch trial took 30 ms: the victim could finish all its trials between two polls)
                **TINY_STUDY,
                "name": "team",
                "budget": {"epochs": 120, "n_trials": N_TRIALS},
                "sampler": "random",
                # the catalog's LR ranges: with lr: auto the first trials are the range test's suggestions, and one
                # at sgd's range top diverges in a few steps, so the victim's trial could end before the SIGKILL
                "space": {**TINY_STUDY["space"], "lr": "catalog"},
                "storage": url,
                "tracking_uri": mlflow_server.uri,
            }
        )
    )
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    runner = _tuner("run", str(study_file), cwd=tmp_path, log=logs[0])
    _wait_for(lambda: _trials(url, "team"), 120, "the study to be created", [runner])
    victim, sleeper = (_tuner("worker", "team", "--storage", url, cwd=tmp_path, log=log) for log in logs[1:])
    processes = [runner, victim, sleeper]
    try:
        lost = _wait_for(
            lambda: _running_trial_of(url, "team", victim.pid), 120, "a running trial of the victim", processes
        )
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        done_at_kill = _finished(url, "team")
        _wait_for(
            lambda: _finished(url, "team") > done_at_kill,
            120,
            "a trial to complete after the kill",
            [runner, sleeper],
        )
        postgres.restart()
        paused = _wait_for(
            lambda: _running_trial_of(url, "team", sleeper.pid),
            120,
            "a running trial of the sleeper",
            [runner, sleeper],
        )
        sleeper.send_signal(signal.SIGSTOP)
        mlflow_server.pause()
        done_at_outage = _finished(url, "team")
        assert done_at_outage <= N_TRIALS - 6, "too few trials left for the outage to end before the study does"
        _wait_for(
            lambda: _finished(url, "team") >= done_at_outage + 2 and _outage_recorded(url, "team"),
            120,
            "trials in the outage, one recording it (a call first waits 2 s to time out)",
            [runner],
        )
        mlflow_server.resume()
        _wait_for(
            lambda: any(t.number == paused.number for t in _states(url, "team")["FAIL"]),
            120,
            "the paused worker's trial to be failed as lost",
            [runner],
        )
        sleeper.send_signal(signal.SIGCONT)
        codes = [process.wait(timeout=300) for process in (runner, sleeper)]
    finally:
        mlflow_server.resume()
        _stop_with_stacks(processes)
        print("\n".join(f"--- {log.name}\n{log.read_text()[-6000:]}" for log in logs))  # shown when the test fails
    outputs = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs)
    assert codes == [0, 0] and victim.returncode == -signal.SIGKILL, outputs
    assert "was failed as lost by another worker" in logs[2].read_text(), outputs

    trials = _trials(url, "team")
    by_state = _states(url, "team")
    finished = by_state["COMPLETE"] + by_state["PRUNED"]  # a random LR may diverge (pruned), depending on the order
    assert len(finished) >= N_TRIALS, outputs
    assert not by_state["RUNNING"] and not by_state["WAITING"], outputs
    assert sorted(t.number for t in by_state["FAIL"]) == sorted([lost.number, paused.number]), outputs
    for gone in (lost, paused):
        gone = next(t for t in trials if t.number == gone.number)
        assert gone.user_attrs["reason"] == "worker lost"
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == gone.number]
        assert len(retries) == 1, "a lost trial is retried exactly once"
        retry = retries[0]
        assert retry.state.name in ("COMPLETE", "PRUNED") and retry.params == gone.params
        assert (retry.user_attrs["recipe"], retry.user_attrs["seed"]) == (
            gone.user_attrs["recipe"],
            gone.user_attrs["seed"],
        )
        if gone.number == lost.number:  # the paused worker, once continued, may take its own trial's retry itself
            assert retry.user_attrs["worker"] != gone.user_attrs["worker"]
    recipes = [json.dumps([t.user_attrs["recipe"], t.user_attrs["seed"]], sort_keys=True) for t in finished]
    assert len(set(recipes)) == len(recipes), "no finished trial is duplicated"
    assert any(t.user_attrs.get("tracking_errors", [""])[0].startswith("MLflow unreachable") for t in trials)

    runs = mlflow_runs(mlflow_server.uri, "team")
    parents = [r for r in runs if r.data.tags.get("tuner.role") == "study"]
    children = [r for r in runs if r.data.tags.get("tuner.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["tuner.summary.running"] == "0"
    assert parents[0].data.tags["tuner.summary.trials"] == str(len(trials))
    numbers = sorted(int(r.data.tags["tuner.trial_number"]) for r in children)
    assert numbers == sorted(t.number for t in trials), "one MLflow run per trial, none duplicated"
    expected = {t.number: ("FAILED" if t.state.name == "FAIL" else "FINISHED", t.state.name) for t in trials}
    for run in children:
        number = int(run.data.tags["tuner.trial_number"])
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert (run.info.status, run.data.tags.get("tuner.state")) == expected[number], number
        assert run.data.params and (run.data.tags["tuner.state"] != "COMPLETE" or "objective" in run.data.metrics)
    for gone in (lost, paused):
        (run,) = [r for r in children if int(r.data.tags["tuner.trial_number"]) == gone.number]
        assert run.data.tags["tuner.reason"] == "worker lost"
    assert not list(Path(os.environ["XDG_CACHE_HOME"]).rglob("*.jsonl")), "every spool was sent"
    from mlflow import MlflowClient

    by_number = {t.number: t for t in trials}
    for run in children[:3]:  # the recipe artifact went through the server's artifact proxy
        local = MlflowClient(mlflow_server.uri).download_artifacts(run.info.run_id, "recipe.yaml", str(tmp_path))
        trial = by_number[int(run.data.tags["tuner.trial_number"])]
        assert yaml.safe_load(Path(local).read_text()) == trial.user_attrs["recipe"]

    _check_dashboard(url, "team", len(trials), tmp_path)


def _get_json(address: str):
    request = urllib.request.Request(address, headers={"Accept-Encoding": "gzip, deflate"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
    return json.loads(body)


def _check_dashboard(url: str, name: str, n_trials: int, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "dashboard.log"
    dashboard = _tuner("dashboard", "--storage", url, "--port", str(port), cwd=tmp_path, log=log)
    base = f"http://127.0.0.1:{port}"
    try:

        def studies():
            try:
                return _get_json(f"{base}/api/studies")
            except OSError:
                return None

        listing = _wait_for(studies, 120, "optuna-dashboard to answer", [dashboard])
        study = next(s for s in listing["study_summaries"] if s["study_name"] == name)
        detail = _get_json(f"{base}/api/studies/{study['study_id']}")
        assert len(detail["trials"]) == n_trials
        request = urllib.request.Request(f"{base}/dashboard/", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
    assert "optuna-dashboard on" in log.read_text() and "MLflow UI" in log.read_text()


# -- fault handling in isolation (SQLite, seconds) -------------------------------------------------------------


def test_a_trial_whose_heartbeat_stops_fails_as_worker_lost_and_is_retried_once_with_its_recipe(tmp_path, monkeypatch):
    import optuna

    from tuner.study.storage import open_storage

    monkeypatch.setenv("TUNER_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("TUNER_GRACE_PERIOD", "2")
    closed = []
    storage = open_storage(f"sqlite:///{tmp_path / 'lost.db'}", on_lost=closed.append)
    study = optuna.create_study(study_name="lost", storage=storage, direction="maximize")
    trial = study.ask()
    params = {
        "lr": trial.suggest_float("lr", 1e-4, 1.0, log=True),
        "opt": trial.suggest_categorical("opt", ["adam", "sgd"]),
    }
    for key, value in {"seed": 1234, "recipe": {"lr": params["lr"]}, "mlflow_run_id": "run-abc"}.items():
        trial.set_user_attr(key, value)
    storage.record_heartbeat(trial._trial_id)  # ... and then the worker is gone: no more heartbeats
    time.sleep(3.5)
    optuna.storages.fail_stale_trials(study)
    optuna.storages.fail_stale_trials(study)  # a second worker checking finds nothing more to do

    fresh = optuna.load_study(study_name="lost", storage=f"sqlite:///{tmp_path / 'lost.db'}").get_trials(deepcopy=False)
    assert [t.state.name for t in fresh] == ["FAIL", "WAITING"]
    assert fresh[0].user_attrs["reason"] == "worker lost"
    assert [(lost.study, lost.number, lost.run_id, lost.reason) for lost in closed] == [
        ("lost", 0, "run-abc", "worker lost")
    ]
    retry = study.ask()
    assert retry.number == 1 and retry.suggest_float("lr", 1e-4, 1.0, log=True) == params["lr"]
    assert retry.suggest_categorical("opt", ["adam", "sgd"]) == params["opt"] and retry.user_attrs["seed"] == 1234


def test_only_lost_connections_are_retried():
    from sqlalchemy import exc

    from tuner.study.storage.rdb import is_connection_error

    lost = exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = lost
    assert is_connection_error(lost) and is_connection_error(wrapped)
    assert not is_connection_error(exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_connection_error(ValueError("bad value"))


def test_trials_go_on_while_mlflow_hangs_and_every_run_arrives_whole_and_linked(workdir, mlflow_server, monkeypatch):
    """The server freezes (SIGSTOP: requests time out) for several trials, then answers again: no trial fails or waits
    for it, each trial of the outage says so, and afterwards every run has its params, metrics and end state, is
    recorded on its trial, and the spool is empty."""
    import optuna

    from tests.helpers import write_study
    from tuner.study.prepare import prepare
    from tuner.study.runner import RunOptions, run_study

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    path = write_study(workdir, name="frozen", budget={"epochs": 2, "n_trials": 8}, tracking_uri=mlflow_server.uri)

    def outage(study: optuna.Study) -> None:
        if len(study.trials) == 2:
            mlflow_server.pause()
            time.sleep(2)  # the tracking thread's first call has timed out: the next trials start in the outage
        elif len(study.trials) == 6:
            mlflow_server.resume()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            run_study(prepare(path), RunOptions(n_trials=8), on_trial=outage)
    finally:
        mlflow_server.resume()
    trials = optuna.load_study(study_name="frozen", storage=f"sqlite:///{workdir / 'tuner.db'}").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 8
    in_outage = [t.number for t in trials if t.user_attrs.get("tracking_errors")]
    assert {3, 4, 5} <= set(in_outage) <= {2, 3, 4, 5, 6, 7}
    assert all(
        t.user_attrs["tracking_errors"][0].startswith("MLflow unreachable") for t in trials if t.number in in_outage
    )
    runs = mlflow_runs(mlflow_server.uri, "frozen")
    children = {int(r.data.tags["tuner.trial_number"]): r for r in runs if r.data.tags["tuner.role"] == "trial"}
    assert len(children) == len(runs) - 1 == 8
    for trial in trials:
        run = children[trial.number]
        assert (run.info.status, run.data.tags["tuner.state"]) == ("FINISHED", "COMPLETE")
        assert run.data.params["optimizer"] == trial.user_attrs["recipe"]["optimizer"]
        assert run.data.metrics["objective"] == trial.value and "accuracy" in run.data.metrics
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
    (parent,) = [r for r in runs if r.data.tags["tuner.role"] == "study"]
    assert parent.info.status == "FINISHED" and parent.data.tags["tuner.summary.complete"] == "8"
    assert not list(Path(os.environ["XDG_CACHE_HOME"]).rglob("*.jsonl"))


def test_an_unreachable_mlflow_server_does_not_fail_trials_and_the_gap_is_recorded(workdir, monkeypatch, cli):
    import optuna

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    from tests.helpers import write_study

    study_file = write_study(workdir, budget={"epochs": 1, "n_trials": 2}, tracking_uri="none")
    assert cli("run", study_file).exit_code == 0  # the study (and its spec) exist; MLflow now goes away
    result = cli("worker", "tiny", "--n-trials", "3", "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[2].user_attrs["tracking_errors"][0].startswith("MLflow unreachable (ConnectionRefusedError")


# -- bad input ------------------------------------------------------------------------------------------------


def test_an_unreachable_storage_exits_2_naming_the_url_with_the_password_masked(cli):
    url = f"postgresql://team:s3cret@127.0.0.1:{free_port()}/optuna"
    for args in (["worker", "team", "--storage", url], ["dashboard", "--storage", url]):
        result = cli(*args)
        assert result.exit_code == 2
        assert "cannot open storage postgresql://team:***@127.0.0.1" in result.output and "s3cret" not in result.output
        assert "Traceback" not in result.output


def test_a_study_not_in_the_storage_exits_2_listing_the_studies(postgres, cli):
    import optuna

    url = postgres.create_database("team_names")
    optuna.create_study(study_name="alpha", storage=url)
    result = cli("worker", "beta", "--storage", url)
    assert result.exit_code == 2
    assert "no study named 'beta'" in result.output and "studies: alpha" in result.output


@pytest.mark.parametrize(
    "gpus, message", [("99", "GPU 99 does not exist"), ("0,x", "'x' is not a GPU index"), (",", "expected a comma")]
)
def test_a_gpu_that_does_not_exist_exits_2(cli, gpus, message):
    result = cli("worker", "team", "--storage", "sqlite:///unused.db", "--gpus", gpus)
    assert result.exit_code == 2 and message in result.output


def test_gpu_workers_are_pinned_one_per_gpu():
    from tuner.study.worker import WorkerOptions, gpu_worker_command, parse_gpus

    assert parse_gpus("0,1", available=2) == [0, 1]
    with pytest.raises(Exception, match="listed twice"):
        parse_gpus("1,1", available=2)
    command = gpu_worker_command(WorkerOptions("team", "postgresql://u:pw@h/db", n_trials=8))
    assert command[1:] == ["-m", "tuner", "worker", "team", "--urls-from-env", "--n-trials", "8", "--device", "cuda"]
    with_file = gpu_worker_command(WorkerOptions("team", "sqlite:///t.db", study_file="team.yaml"))
    assert with_file[6:8] == ["--file", os.path.abspath("team.yaml")]  # the children allow what their parent does


# -- docker-compose parity --------------------------------------------------------------------------------------

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OWN_IMAGE = [name for name, service in COMPOSE["services"].items() if service.get("image") == "tuner:latest"]


def _with_defaults(text: str) -> str:
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or f"<{m.group(1)}>", text)


def _click_command(program: str, sub: str):
    import typer.main

    if program == "tuner":
        from tuner.cli import app

        group = typer.main.get_command(app)
    else:
        import mlflow.cli

        group = mlflow.cli.cli
    assert sub in group.commands, f"{program} has no command {sub!r}"
    return group.commands[sub]


@pytest.mark.parametrize("service", OWN_IMAGE)
def test_each_compose_command_is_a_real_command_with_real_options(service):
    import shlex

    words = shlex.split(_with_defaults(COMPOSE["services"][service]["command"]))
    assert words[0] in ("tuner", "mlflow"), f"{service}: {words[0]} is not a command this project installs"
    command = _click_command(words[0], words[1])
    options = {opt for param in command.params for opt in param.opts}
    used = [word for word in words[2:] if word.startswith("--")]
    assert set(used) <= options, f"{service}: unknown options {set(used) - options}"


INTERNAL_ENV = {"TUNER_TRIAL"}
"""Set by tuner itself for the processes it starts (a command trial's trial.json), never by a user."""
AWAITING_COMPOSE = {"TUNER_ALLOWED_TASKS"}
"""Read by tuner, not yet passed by the compose file: its owner (branch compose-dashboard) is to pass it to workers."""


def _mlflow_server_envvars() -> set[str]:
    """The environment names ``mlflow server`` reads: its options' ``envvar`` and mlflow's environment_variables."""
    import mlflow

    command = _click_command("mlflow", "server")
    names = {param.envvar for param in command.params if isinstance(param.envvar, str)}
    source = "\n".join(path.read_text() for path in Path(mlflow.__file__).parent.rglob("environment_variables.py"))
    return names | set(re.findall(r'"(MLFLOW_\w+)"', source))


def test_compose_environment_names_match_what_the_code_reads():
    ours = "\n".join(path.read_text() for path in (ROOT / "tuner").rglob("*.py"))
    theirs = _mlflow_server_envvars()
    passed = set(COMPOSE["x-tuner-env"])
    for name in OWN_IMAGE:
        environment = COMPOSE["services"][name].get("environment", {})
        passed |= set(environment)
        for key in environment:
            read = key in theirs if key.startswith("MLFLOW_") and name == "mlflow" else f'"{key}"' in ours
            assert read, f"{name}: environment {key} is read by nothing"
    read = set(re.findall(r'"(TUNER_[A-Z_]+)"', ours)) - INTERNAL_ENV - AWAITING_COMPOSE
    assert read <= passed, f"the compose file does not pass {read - passed}"


def test_env_example_names_every_variable_the_compose_file_uses():
    used = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    example = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^(\w+)=", example, re.MULTILINE))
    assert used <= defined, f".env.example lacks {used - defined}"
    assert "CHANGE-ME" in example and ".env" in (ROOT / ".gitignore").read_text().split()


# -- docker-compose secrets and exposure ------------------------------------------------------------------------

ENV_EXAMPLE = dict(re.findall(r"^(\w+)='?([^'\n]*)'?$", (ROOT / ".env.example").read_text(), re.MULTILINE))
SECRET_GUARD = "deploy/require-secrets.sh"
ENV_SECRETS = ("POSTGRES_PASSWORD", "PROXY_PASSWORD_HASH")


def _words(value) -> str:
    return " ".join(value) if isinstance(value, list) else str(value or "")


def test_no_compose_command_holds_a_password():
    for name, service in COMPOSE["services"].items():
        for key in ("command", "entrypoint"):
            words = _words(service.get(key))
            assert not re.search(r"\$\{\w*PASSWORD", words), f"{name}: a password in its {key} (visible in ps)"
            assert "://" not in words, f"{name}: a URL in its {key}; pass it by environment"


def test_every_password_in_the_compose_file_is_required_and_not_defaulted():
    text = (ROOT / "docker-compose.yml").read_text()
    uses = re.findall(r"\$\{(\w*PASSWORD\w*)([^}]*)\}", text)
    assert uses and all(rest.startswith(":?") for _, rest in uses), f"a password with a default or none: {uses}"


def test_the_mlflow_backend_uri_comes_by_environment():
    mlflow = COMPOSE["services"]["mlflow"]
    option = next(p for p in _click_command("mlflow", "server").params if "--backend-store-uri" in p.opts)
    assert option.envvar == "MLFLOW_BACKEND_STORE_URI"
    assert "--backend-store-uri" not in mlflow["command"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")


def test_only_postgres_and_the_proxy_publish_ports_each_on_its_own_address_loopback_by_default():
    published = {name: service["ports"] for name, service in COMPOSE["services"].items() if service.get("ports")}
    assert set(published) == {"postgres", "proxy"}
    for name, ports in published.items():
        setting = f"{name.upper()}_BIND_ADDRESS"
        assert all(port.startswith(f"${{{setting}:-127.0.0.1}}:") for port in ports), f"{name}: {ports}"
        assert ENV_EXAMPLE[setting] == "127.0.0.1"
    postgres_part = (ROOT / ".env.example").read_text().split("# PostgreSQL")[1].split("\n\n")[0]
    assert "0.0.0.0" not in postgres_part


@pytest.mark.parametrize("service", ["postgres", "proxy"])
def test_the_services_holding_a_secret_start_through_the_guard_of_every_secret(service):
    spec = COMPOSE["services"][service]
    entrypoint = spec["entrypoint"]
    assert entrypoint[:2] == ["sh", f"/{SECRET_GUARD}"] and f"./{SECRET_GUARD}:/{SECRET_GUARD}:ro" in spec["volumes"]
    guarded = entrypoint[2 : entrypoint.index("--")]
    secrets = {key for key in spec["environment"] if re.search("PASSWORD|HASH", key)}
    assert secrets and secrets <= set(guarded), f"{service}: {secrets - set(guarded)} is not checked"
    assert spec.get("command"), f"{service}: a new entrypoint drops the image's command; give it again"


def _guard(env: dict[str, str], *names: str) -> subprocess.CompletedProcess:
    command = ["sh", str(ROOT / SECRET_GUARD), *names, "--", "echo", "started"]
    clean = {key: value for key, value in os.environ.items() if key not in names}
    return subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ENV_SECRETS)
@pytest.mark.parametrize("value", ["placeholder", "change-me", "", None])
def test_the_secret_guard_refuses_the_placeholder_and_empty_values(name, value):
    if value == "placeholder":
        value = ENV_EXAMPLE[name]
    result = _guard({} if value is None else {name: value}, name)
    assert result.returncode == 78 and "started" not in result.stdout
    assert f"refusing to start: {name} is" in result.stderr and ".env" in result.stderr


def test_the_secret_guard_runs_the_command_when_every_secret_is_set():
    result = _guard({"POSTGRES_PASSWORD": "a real $ecret 'x'", "PROXY_PASSWORD_HASH": "$2b$12$x"}, *ENV_SECRETS)
    assert result.returncode == 0 and result.stdout == "started\n"
    result = _guard({"POSTGRES_PASSWORD": "fine", "PROXY_PASSWORD_HASH": "CHANGE-ME"}, *ENV_SECRETS)
    assert result.returncode == 78 and "PROXY_PASSWORD_HASH" in result.stderr


def test_the_compose_dashboard_is_read_only_and_checks_the_proxy_credentials():
    from tuner.errors import TunerError
    from tuner.study.dashboard import parse_auth

    dashboard = COMPOSE["services"]["dashboard"]
    assert "--allow-writes" not in dashboard["command"]
    assert dashboard["environment"]["TUNER_DASHBOARD_AUTH"] == (
        "${PROXY_USER:-team}:${PROXY_PASSWORD_HASH:?set PROXY_PASSWORD_HASH in .env}"
    )
    with pytest.raises(TunerError, match="not a bcrypt hash"):
        parse_auth(f"{ENV_EXAMPLE['PROXY_USER']}:{ENV_EXAMPLE['PROXY_PASSWORD_HASH']}")


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose (1.29, Debian) is not installed")
def test_docker_compose_accepts_the_file_and_refuses_it_without_a_password(tmp_path):
    env_file = tmp_path / "env"

    def config(text: str) -> subprocess.CompletedProcess:
        env_file.write_text(text)
        command = [
            "docker-compose",
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--env-file",
            str(env_file),
            "config",
            "-q",
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    example = (ROOT / ".env.example").read_text()
    assert config(example).returncode == 0
    for name in ENV_SECRETS:
        result = config(re.sub(rf"^{name}=.*$", f"{name}=", example, flags=re.MULTILINE))
        assert result.returncode != 0 and f"set {name} in .env" in result.stderr
