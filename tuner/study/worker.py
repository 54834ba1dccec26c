"""Workers that join an existing study: ``tuner worker STUDY --storage URL [--gpus 0,1]``.

The study's spec (user attribute ``spec``) and the directory it was written in (``spec_dir``) are stored with
the study by ``tuner run``, so a worker of a built-in task needs only the study name and the storage URL. What the
database names is data, never code the worker runs unasked: a task or train function, or a command, must be named on
the worker's own side -- its own copy of the study file (``--file``, checked to define the same study) or
``$TUNER_ALLOWED_TASKS`` (``tuner.study.trust``). The storage URL comes from the worker's side too (``--storage`` or
``$TUNER_STORAGE``), never from the database. With ``--gpus`` the worker starts one process per GPU, each pinned with
``CUDA_VISIBLE_DEVICES`` and given the URLs through its environment (not its command line, which ``ps`` shows);
without, it trains in this process (on the study's ``device``, CPU on a machine without CUDA). Heartbeats, reconnects
and the retry of a lost trial come with the storage (``tuner.study.storage``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import optuna

from tuner.errors import TunerError
from tuner.study.lr_auto import wait_for_lr_ranges
from tuner.study.prepare import Prepared, quiet_libraries
from tuner.study.runner import RunOptions, busy_cpu_hint, join_study, open_tracker, optimize
from tuner.study.runs import end_study
from tuner.study.storage import load_existing_study
from tuner.study.trust import prepare_own


@dataclass(frozen=True)
class WorkerOptions:
    """What one ``tuner worker`` invocation was asked for (None: the stored study's own values)."""

    study: str
    storage_url: str
    n_trials: Optional[int] = None
    timeout: Optional[float] = None
    tracking_uri: Optional[str] = None
    device: Optional[str] = None
    study_file: Optional[str] = None


def prepare_stored(options: WorkerOptions) -> Prepared:
    """The study prepared from the worker's own study file (checked to define the stored study), else from the spec
    stored with it (refused unless what it trains is allowed here: ``tuner.study.trust``). Raises ``TunerError`` for
    an unreachable storage, a study name not in it (listing the studies) or a study that ``tuner`` did not create."""
    study = load_existing_study(options.study, options.storage_url)
    return prepare_own(
        study, options.study_file, storage=options.storage_url, tracking_uri=options.tracking_uri, device=options.device
    )


def run_worker(
    options: WorkerOptions,
    on_trial: Optional[Callable[[optuna.Study], None]] = None,
    on_message: Callable[[str], None] = lambda message: None,
) -> optuna.Study:
    """Run trials of the stored study in this process until it holds its target of finished trials."""
    prepared = prepare_stored(options)
    hint = busy_cpu_hint(prepared.device)
    if hint:
        on_message(hint)
    quiet_libraries()
    tracker = open_tracker(prepared.tracking_uri)
    study = join_study(prepared.spec.name, prepared.storage_url, tracker)
    prepared = wait_for_lr_ranges(study, prepared, on_message)
    budget = prepared.spec.budget
    run_options = RunOptions(
        n_trials=options.n_trials or budget.n_trials,
        timeout=options.timeout or budget.timeout,
        population=(budget.population or 1) if prepared.spec.strategy == "pbt" else 1,  # PBT runs whole populations
    )
    try:
        optimize(study, prepared, tracker, run_options, worker_index(), on_trial=on_trial)
    finally:
        end_study(study, tracker)
    return study


def worker_index() -> int:
    """A number distinct per worker process across machines: seeds the sampler so workers do not draw alike."""
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_000


# -- one process per GPU ------------------------------------------------------------------------------------


def parse_gpus(text: str, available: Optional[int] = None) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``; an entry that is not a GPU of this machine is a ``TunerError``."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise TunerError(f"--gpus: expected a comma-separated list of GPU indices, got {text!r}")
    for entry in entries:
        if not entry.isdigit():
            raise TunerError(f"--gpus: {entry!r} is not a GPU index (0, 1, ...)")
    count = gpu_count() if available is None else available
    gpus: list[int] = []
    for entry in entries:
        if int(entry) >= count:
            raise TunerError(
                f"--gpus: GPU {entry} does not exist; this machine has {count} GPU(s)"
                + (f": 0..{count - 1}" if count else "")
            )
        if int(entry) in gpus:
            raise TunerError(f"--gpus: GPU {entry} is listed twice")
        gpus.append(int(entry))
    return gpus


def gpu_count() -> int:
    """CUDA devices visible to this process (respects an outer ``CUDA_VISIBLE_DEVICES``)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_worker_command(options: WorkerOptions) -> list[str]:
    """The ``tuner worker`` command line one pinned child runs (no ``--gpus``: it trains in its own process). URLs
    are not on it (``ps`` shows command lines): the child takes the ones its parent resolved from its environment
    (``--urls-from-env``, ``gpu_worker_env``)."""
    command = [sys.executable, "-m", "tuner", "worker", options.study, "--urls-from-env"]
    for flag, value in (
        ("--file", os.path.abspath(options.study_file) if options.study_file is not None else None),
        ("--n-trials", options.n_trials),
        ("--timeout", options.timeout),
        ("--device", options.device or "cuda"),
    ):
        if value is not None:
            command += [flag, str(value)]
    return command


def gpu_worker_env(prepared: Prepared, visible_device: str) -> dict[str, str]:
    """A pinned child's environment: this one's (``$TUNER_ALLOWED_TASKS`` included, so the child allows what its
    parent does), with the storage URL and tracking URI its parent resolved, and its GPU."""
    return {
        **os.environ,
        "TUNER_STORAGE": prepared.storage_url,
        "MLFLOW_TRACKING_URI": prepared.tracking_uri,
        "CUDA_VISIBLE_DEVICES": visible_device,
    }


def run_gpu_workers(options: WorkerOptions, gpus: list[int]) -> int:
    """Start one child per GPU (``CUDA_VISIBLE_DEVICES=<gpu>``), wait for all; the worst exit code wins.
    SIGINT/SIGTERM are passed on so each child marks its running trial FAIL before exiting."""
    prepared = prepare_stored(options)  # bad names, unreachable storage, code not allowed: once, before any child
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = [v.strip() for v in visible.split(",")] if visible else None
    children = []
    for gpu in gpus:
        env = gpu_worker_env(prepared, physical[gpu] if physical else str(gpu))
        children.append(subprocess.Popen(gpu_worker_command(options), env=env))

    def pass_on(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return max(codes, key=abs)
