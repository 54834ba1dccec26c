"""Workers that join an existing study: ``tuner worker STUDY --storage URL [--gpus 0,1]``.

The study's spec (user attribute ``spec``) and the directory it was written in (``spec_dir``) are stored with
the study by ``tuner run``, so a worker needs only the study name and the storage URL. With ``--gpus`` the
worker starts one process per GPU, each pinned with ``CUDA_VISIBLE_DEVICES``; without, it trains in this
process (on the study's ``device``, CPU on a machine without CUDA). Heartbeats, reconnects and the retry of
a lost trial come with the storage (``tuner.study.storage``).
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
from tuner.spec import parse_study
from tuner.study.keys import StudyKeys
from tuner.study.prepare import Prepared, prepare, quiet_libraries
from tuner.study.records import best_recipe_or_none, summarize
from tuner.study.runner import RunOptions, join_study, open_tracker, optimize
from tuner.study.storage import load_existing_study, mask_url


@dataclass(frozen=True)
class WorkerOptions:
    """What one ``tuner worker`` invocation was asked for (None: the stored study's own values)."""

    study: str
    storage_url: str
    n_trials: Optional[int] = None
    timeout: Optional[float] = None
    tracking_uri: Optional[str] = None
    device: Optional[str] = None


def prepare_stored(options: WorkerOptions) -> Prepared:
    """The stored study re-prepared from its spec. Raises ``TunerError`` for an unreachable storage, a study name not
    in it (listing the studies) or a study that ``tuner`` did not create."""
    study = load_existing_study(options.study, options.storage_url)
    spec = study.user_attrs.get(StudyKeys.SPEC)
    if spec is None:
        raise TunerError(
            f"study {options.study!r} in {mask_url(options.storage_url)} has no stored spec "
            f"(it was not created by `tuner run`)"
        )
    spec_dir = study.user_attrs.get(StudyKeys.SPEC_DIR) or os.getcwd()
    return prepare(
        parse_study(spec),
        storage=options.storage_url,
        tracking_uri=options.tracking_uri,
        device=options.device,
        spec_dir=spec_dir if os.path.isdir(spec_dir) else os.getcwd(),
    )


def run_worker(options: WorkerOptions, on_trial: Optional[Callable[[optuna.Study], None]] = None) -> optuna.Study:
    """Run trials of the stored study in this process until it holds its target of finished trials."""
    prepared = prepare_stored(options)
    quiet_libraries()
    tracker = open_tracker(prepared.tracking_uri)
    study = join_study(prepared.spec.name, prepared.storage_url, tracker)
    budget = prepared.spec.budget
    run_options = RunOptions(n_trials=options.n_trials or budget.n_trials, timeout=options.timeout or budget.timeout)
    try:
        optimize(study, prepared, tracker, run_options, worker_index(), on_trial=on_trial)
    finally:
        tracker.end_study(study.user_attrs.get(StudyKeys.PARENT_RUN), best_recipe_or_none(study), summarize(study))
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
    """The ``tuner worker`` command line one pinned child runs (no ``--gpus``: it trains in its own process)."""
    command = [sys.executable, "-m", "tuner", "worker", options.study, "--storage", options.storage_url]
    for flag, value in (
        ("--n-trials", options.n_trials),
        ("--timeout", options.timeout),
        ("--tracking-uri", options.tracking_uri),
        ("--device", options.device or "cuda"),
    ):
        if value is not None:
            command += [flag, str(value)]
    return command


def run_gpu_workers(options: WorkerOptions, gpus: list[int]) -> int:
    """Start one child per GPU (``CUDA_VISIBLE_DEVICES=<gpu>``), wait for all; the worst exit code wins.
    SIGINT/SIGTERM are passed on so each child marks its running trial FAIL before exiting."""
    prepare_stored(options)  # bad study names and unreachable storage fail here, once, before any child starts
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = [v.strip() for v in visible.split(",")] if visible else None
    children = []
    for gpu in gpus:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": physical[gpu] if physical else str(gpu)}
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
