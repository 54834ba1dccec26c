"""Trials through an MLflow outage: a real ``mlflow server`` stops for 30 s while ``tuner run`` trains.

Starts ``mlflow server`` (SQLite backend, tests/service_fixtures.py) and ``tuner run`` of a study of ~1-s trials
(digits-mlp, random sampler, SQLite storage, one torch thread) that logs to it. After ``--warmup`` trials complete
the server is stopped (``--outage kill``: connections refused) or frozen (``--outage freeze``: SIGSTOP, requests time
out), kept so for ``--seconds``, then started again (a killed server takes a few seconds more to answer). Prints,
for the trials before, during (overlapping the outage) and after it: each trial's wall time (Optuna's start to
complete) over its training time (``duration_s``), median and worst (the first trial apart: it pays the
process's one-time imports). Then checks what MLflow holds once the run
has ended: one run per trial, with its params, metrics and end state, each linked from its trial, the parent
FINISHED with the final counts, and nothing left in the spool. Exits 1 when a check fails.

    .venv/bin/python bench/mlflow_outage.py [--trials 60] [--epochs 40] [--warmup 5] [--seconds 30]
        [--outage kill|freeze] [--code DIR]

``--code DIR`` runs ``tuner`` from another checkout (e.g. the code before the spool, to see the stall).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def study_file(directory: Path, uri: str, trials: int, epochs: int) -> Path:
    spec = {
        "name": "outage",
        "task": {"name": "digits-mlp", "options": {"hidden": [64]}},
        "budget": {"epochs": epochs, "n_trials": trials},
        "space": {"optimizers": ["adam", "sgd"], "schedules": ["constant", "cosine"], "batch_size": [64]},
        "sampler": "random",
        "pruner": "none",
        "seed": 0,
        "storage": f"sqlite:///{directory / 'tuner.db'}",
        "tracking_uri": uri,
    }
    path = directory / "outage.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def completed(directory: Path) -> int:
    import optuna

    try:
        study = optuna.load_study(study_name="outage", storage=f"sqlite:///{directory / 'tuner.db'}")
    except Exception:  # not created yet
        return 0
    return sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))


def wait_for(condition, process: subprocess.Popen, what: str) -> None:
    while not condition():
        if process.poll() is not None:
            raise SystemExit(f"tuner run exited ({process.returncode}) while waiting for {what}")
        time.sleep(0.1)


def run(args: argparse.Namespace, directory: Path) -> tuple[list, tuple[float, float], list[str]]:
    """Run the study through the outage; returns its trials, the outage's (start, end) as timestamps and what is
    wrong with what MLflow holds."""
    from service_fixtures import MlflowServer

    server = MlflowServer(f"sqlite:///{directory / 'mlflow.db'}", directory / "artifacts")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(directory / "cache")}
    if args.code:
        env["PYTHONPATH"] = args.code
    log = directory / "tuner.log"
    path = study_file(directory, server.uri, args.trials, args.epochs)
    tuner = subprocess.Popen(
        [sys.executable, "-m", "tuner", "run", str(path)],
        cwd=directory,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: completed(directory) >= args.warmup, tuner, "the warm-up trials")
        began = time.time()
        server.pause() if args.outage == "freeze" else server.stop()
        time.sleep(args.seconds)
        if args.outage == "freeze":
            server.resume()
        else:
            server.start()
        ended = time.time()
        print(f"outage: {ended - began:.1f} s ({args.outage}), {completed(directory)} trials complete at its end")
        if tuner.wait(timeout=3600) != 0:
            raise SystemExit(f"tuner run failed ({tuner.returncode}):\n{log.read_text()[-3000:]}")
        trials, problems = check(directory, server.uri)
    finally:
        if tuner.poll() is None:
            tuner.kill()
        server.close()
    return trials, (began, ended), problems


def check(directory: Path, uri: str) -> tuple[list, list[str]]:
    """The study's trials, and what is wrong with what MLflow holds for them."""
    import optuna
    from mlflow import MlflowClient

    trials = optuna.load_study(study_name="outage", storage=f"sqlite:///{directory / 'tuner.db'}").get_trials()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("outage")
    runs = client.search_runs([experiment.experiment_id], max_results=10000)
    children = [r for r in runs if r.data.tags.get("tuner.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("tuner.role") == "study"]
    problems = []
    numbers = sorted(int(r.data.tags["tuner.trial_number"]) for r in children)
    if numbers != sorted(t.number for t in trials):
        problems.append(f"trial numbers of the runs {numbers} are not the study's {len(trials)} trials")
    by_number = {int(r.data.tags["tuner.trial_number"]): r for r in children}
    for trial in trials:
        run = by_number.get(trial.number)
        if run is None:
            continue
        status = "FINISHED" if trial.state.name in ("COMPLETE", "PRUNED") else "FAILED"
        if (run.info.status, run.data.tags.get("tuner.state")) != (status, trial.state.name):
            problems.append(f"trial {trial.number}: run {run.info.status}/{run.data.tags.get('tuner.state')}")
        if run.data.params.get("optimizer") != trial.user_attrs["recipe"]["optimizer"]:
            problems.append(f"trial {trial.number}: params {run.data.params}")
        if trial.state.name == "COMPLETE" and run.data.metrics.get("objective") != trial.value:
            problems.append(f"trial {trial.number}: metrics {sorted(run.data.metrics)}")
        if trial.user_attrs.get("mlflow_run_id") != run.info.run_id:
            problems.append(f"trial {trial.number}: not linked to its run")
    if len(parents) != 1 or parents[0].info.status != "FINISHED":
        problems.append(f"parent runs: {[p.info.status for p in parents]}")
    elif parents[0].data.tags.get("tuner.summary.trials") != str(len(trials)):
        problems.append(f"parent summary: {parents[0].data.tags.get('tuner.summary.trials')} trials")
    left = list((directory / "cache").rglob("*.jsonl"))
    if left:
        problems.append(f"spool not empty: {left}")
    return trials, problems


def table(trials: list, outage: tuple[float, float]) -> None:
    began, ended = outage
    groups: dict[str, list[tuple[float, float]]] = {"first": [], "before": [], "during": [], "after": []}
    for trial in trials:
        start, end = (t.replace(tzinfo=None).timestamp() for t in (trial.datetime_start, trial.datetime_complete))
        group = "before" if end < began else "after" if start > ended else "during"
        group = "first" if trial.number == 0 else group  # the process's one-time costs (torch._dynamo's import)
        groups[group].append((end - start, float(trial.user_attrs["duration_s"])))
    print(f"{'trials':8} {'n':>3} {'train s (median)':>17} {'wall/train median':>18} {'wall/train worst':>17}")
    for name, rows in groups.items():
        if not rows:
            continue
        ratios = [wall / train for wall, train in rows]
        print(
            f"{name:8} {len(rows):3d} {statistics.median(train for _, train in rows):17.3f} "
            f"{statistics.median(ratios):18.2f} {max(ratios):17.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--outage", choices=("kill", "freeze"), default="kill")
    parser.add_argument("--code", help="run tuner from this checkout")
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
        f"python {platform.python_version()}, {datetime.date.today()}"
    )
    with tempfile.TemporaryDirectory() as directory:
        trials, outage, problems = run(args, Path(directory))
    table(trials, outage)
    for problem in problems[:20]:
        print(f"CHECK FAILED: {problem}")
    if problems:
        raise SystemExit(1)
    print("checks: one run per trial with its params, metrics and end state, linked from its trial; parent FINISHED")
    print("        with the final counts; spool empty")


if __name__ == "__main__":
    main()
