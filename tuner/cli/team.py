"""Team commands: ``tuner worker`` joins a shared study, ``tuner dashboard`` serves optuna-dashboard on it."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from tuner.cli._common import (
    DeviceOption,
    StorageOption,
    StudyFileOption,
    TrackingUriOption,
    new_app,
    own_storage_url,
    user_errors,
)

app = new_app()


@app.command("worker")
@user_errors
def worker(
    study: Annotated[str, typer.Argument(help="name of a study created by `tuner run`")],
    storage: StorageOption = None,
    gpus: Annotated[
        Optional[str], typer.Option(help="GPU indices, e.g. 0,1: one worker process per GPU (CUDA_VISIBLE_DEVICES)")
    ] = None,
    n_trials: Annotated[
        Optional[int],
        typer.Option("--n-trials", min=1, help="target number of finished trials in the study (default: the study's)"),
    ] = None,
    timeout: Annotated[Optional[float], typer.Option(help="stop starting trials after this many seconds")] = None,
    tracking_uri: TrackingUriOption = None,
    device: DeviceOption = None,
    study_file: StudyFileOption = None,
    urls_from_env: Annotated[bool, typer.Option("--urls-from-env", hidden=True)] = False,
) -> None:
    """Join an existing study and run its trials until it holds its target of finished trials.

    What trains comes from this side: a built-in task, --file (the study file, which must define the study as
    stored), or a module, file or command that $TUNER_ALLOWED_TASKS allows -- never from the database alone."""
    from tuner.study.records import summarize
    from tuner.study.worker import WorkerOptions, parse_gpus, run_gpu_workers, run_worker

    if urls_from_env:  # a --gpus child: its parent resolved both and put them in the environment, not on argv
        storage, tracking_uri = os.environ["TUNER_STORAGE"], os.environ["MLFLOW_TRACKING_URI"]
    url = own_storage_url(storage, study_file)
    options = WorkerOptions(study, url, n_trials, timeout, tracking_uri, device, study_file and str(study_file))
    if gpus is not None:
        raise typer.Exit(run_gpu_workers(options, parse_gpus(gpus)))
    try:
        result = run_worker(options, on_message=lambda hint: typer.echo(f"note: {hint}", err=True))
    except KeyboardInterrupt:
        typer.echo("interrupted: the running trial is marked FAIL (reason: interrupted).", err=True)
        raise typer.Exit(130) from None
    summary = summarize(result)
    typer.echo(f"study {study!r}: " + ", ".join(f"{summary.get(k, 0)} {k}" for k in ("complete", "pruned", "fail")))


@app.command("dashboard")
@user_errors
def dashboard(
    storage: StorageOption = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to serve on")] = 8080,
    host: Annotated[
        str, typer.Option(help="interface to bind; beyond loopback (0.0.0.0, a LAN address) --auth is required")
    ] = "127.0.0.1",
    tracking_uri: TrackingUriOption = None,
    auth: Annotated[
        Optional[str],
        typer.Option(
            envvar="TUNER_DASHBOARD_AUTH",
            show_envvar=True,
            help="USER:HASH: require HTTP basic auth; HASH is a bcrypt hash from --hash-password (prefer the env)",
        ),
    ] = None,
    allow_writes: Annotated[
        bool,
        typer.Option("--allow-writes", help="let the dashboard change studies (create, rename, delete, tell, notes)"),
    ] = False,
    hash_password: Annotated[
        bool,
        typer.Option("--hash-password", help="read a password (prompt, or a line of stdin), print its hash for --auth"),
    ] = False,
) -> None:
    """Serve optuna-dashboard on the study storage, read-only unless --allow-writes, and print how to open the MLflow
    UI. Bound beyond loopback it requires basic auth (--auth USER:HASH or $TUNER_DASHBOARD_AUTH)."""
    from tuner.spec import storage_url
    from tuner.study import dashboard as guard
    from tuner.study.prepare import quiet_libraries
    from tuner.study.storage import mask_url

    if hash_password:
        typer.echo(guard.hash_password(_read_password()))
        return
    credentials = guard.parse_auth(auth) if auth else None
    guard.require_auth_beyond_loopback(host, credentials)
    url = storage_url(storage)
    app = guard.dashboard_app(url, credentials, allow_writes)
    quiet_libraries()
    access = "read-write" if allow_writes else "read-only"
    access += f", basic auth as {credentials.user!r}" if credentials else ""
    typer.echo(f"optuna-dashboard on {mask_url(url)}: http://{host}:{port}/dashboard/ ({access})")
    typer.echo(mlflow_hint(tracking_uri))
    guard.serve(app, host, port)


def _read_password() -> str:
    """A password typed twice at a terminal, or the first line of stdin when it is a pipe."""
    import sys

    if sys.stdin.isatty():
        return typer.prompt("password", hide_input=True, confirmation_prompt=True, err=True)
    return sys.stdin.readline().rstrip("\r\n")


def mlflow_hint(uri: Optional[str]) -> str:
    """How to open the MLflow UI for ``uri``: the server's address, or the `mlflow ui` command for a store."""
    from tuner.spec import tracking_uri
    from tuner.study.storage import mask_url

    resolved = tracking_uri(uri)
    if resolved.startswith(("http://", "https://")):
        return f"MLflow UI: open {resolved}"
    return (
        f"MLflow UI: mlflow ui --backend-store-uri '{mask_url(resolved)}' --port 5000, then open http://127.0.0.1:5000"
    )
