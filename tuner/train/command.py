"""Command trials: the user's own script (or ``torchrun ...``) run once per trial, reporting back over a local socket.

The parent (``run_command``) writes the trial -- recipe, seed, device, budget -- to ``trial.json`` in a fresh folder,
points ``$TUNER_TRIAL`` at it, starts the command in its own process group and serves a Unix socket there. Inside the
command, ``tuner.Trial.from_env()`` reads the file and gives the same ``Trial`` API as an in-process ``train:``
function: ``build`` the optimizer and scheduler locally, ``report`` -- sent to the parent, which logs it and asks the
pruner, and answers -- and ``finish``. Only one process reports: rank 0 of a multi-process command (``$RANK``); the
others' reports are no-ops. A command that exits non-zero (unless pruned), outlives ``budget.trial_timeout``, or ends
without reporting fails the trial with a reason naming it and the last lines of its output. The output goes to
``trial.log`` in the trial's folder (kept when the trial fails, removed otherwise).

Messages are JSON lines: ``{"type": "build", "total_steps": N}``, ``{"type": "report", "step": S, "metrics": {...}}``
(answered ``{"prune": bool, "reason": str}``), ``{"type": "finish", "metrics": {...}}`` and ``{"type": "restore",
"step": S, "progress": {...}}`` (each answered ``{}``). Checkpoints are files the command writes and reads itself
(``trial.checkpoint`` / ``trial.restore``, where ``trial.json`` says); ``restore`` tells the study which reports the
trial continues from (``RunProgress.state_dict``), so its record and curve go on from the checkpoint's step.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from tuner.errors import TrialPruned, TunerError
from tuner.recipe import Recipe
from tuner.train.checkpoint import Checkpointer, CheckpointPlan
from tuner.train.progress import FitResult, TrainBudget
from tuner.train.trial import ENV_TRIAL, Reporter, Trial, TrialInfo, run_function

PRUNED_GRACE_SECONDS = 10.0
"""How long a pruned command may take to exit before its process group is killed."""

OUTPUT_LINES = 5
"""Lines of a failed command's output quoted in the trial's reason."""


class CommandFailed(Exception):
    """A command trial failed: it exited non-zero, timed out, or never reported (the message says which)."""


@dataclass(frozen=True)
class OwnTraining:
    """A study's own training -- its ``train:`` function (called in this process) or its ``command:`` (run once per
    call) -- and what every run of it is told: the study's name, metric, direction, budget and options.

    The one way a run of the user's code is started: a trial of the study (``tuner.study.lifecycle``) and a probe of
    the LR sweep (``tuner.train.lr_range.probe_sweep``) both go through ``run``.
    """

    study_name: str
    metric: str
    direction: str
    budget: TrainBudget
    function: Optional[Callable[[Trial], Any]] = None
    command: Optional[list[str]] = None
    cwd: str = "."
    timeout: Optional[float] = None
    deterministic: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def info(
        self,
        number: int,
        recipe: Recipe,
        seed: int,
        device: str,
        *,
        params: Optional[dict[str, Any]] = None,
        budget: Optional[TrainBudget] = None,
        checkpoint: Optional[CheckpointPlan] = None,
    ) -> TrialInfo:
        """The ``TrialInfo`` of one run (``budget``: the study's unless given)."""
        return TrialInfo(
            number,
            self.study_name,
            recipe,
            dict(params or {}),
            seed,
            device,
            budget or self.budget,
            self.metric,
            self.direction,
            self.deterministic,
            dict(self.options),
            checkpoint,
        )

    def run(self, info: TrialInfo, reporter: Reporter, checkpoints: Optional[Checkpointer] = None) -> FitResult:
        """Run the user's code once as ``info`` says; ``reporter`` hears every report. Raises ``UserCodeError`` (the
        function raised) or ``CommandFailed`` (the command failed)."""
        if self.function is not None:
            return run_function(self.function, Trial(info, reporter, checkpoints=checkpoints))
        assert self.command is not None, "OwnTraining needs a function or a command"
        return run_command(self.command, info, reporter, cwd=self.cwd, timeout=self.timeout)


def command_argv(command: Union[str, list[str]], spec_dir: str) -> list[str]:
    """The command as an argv, checked to run: ``python``/``python3`` is the Python tuner runs on (so ``import
    tuner`` works inside), another program must be on ``$PATH`` or in the study file's folder; a ``.py`` script
    given to Python must exist there. ``TunerError`` names what is missing."""
    argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
    program = argv[0]
    if program in ("python", "python3"):
        argv[0] = sys.executable
        script = next((arg for arg in argv[1:] if not arg.startswith("-")), None)
        if script is not None and script.endswith(".py") and not (Path(spec_dir) / script).is_file():
            raise TunerError(
                f"command: script {script!r} not found in {spec_dir} (commands run in the study "
                f"file's folder); got command {command!r}"
            )
        return argv
    local = Path(spec_dir) / program
    if shutil.which(program) is None and not (local.is_file() and os.access(local, os.X_OK)):
        raise TunerError(
            f"command: program {program!r} not found (not on PATH, nor an executable in {spec_dir}); "
            f"got command {command!r}"
        )
    return argv


def run_command(
    argv: list[str], info: TrialInfo, reporter: Reporter, *, cwd: str, timeout: Optional[float] = None
) -> FitResult:
    """Run one command trial (see the module docstring) and return its run as a ``FitResult``.

    Raises ``CommandFailed`` when the command fails; ``KeyboardInterrupt`` stops it (its process group is killed).
    """
    trial = Trial(info, reporter)
    folder = Path(tempfile.mkdtemp(prefix=f"tuner-trial-{info.number}-"))
    path = folder / "trial.json"
    address = str(folder / "report.sock")
    path.write_text(json.dumps({**info.to_json(), "socket": address}))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen()
    log = (folder / "trial.log").open("wb")
    env = {**os.environ, ENV_TRIAL: str(path), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    failed = True
    try:
        _Session(trial, server, process, timeout).serve()
        result = _result(trial, process, folder / "trial.log")
        failed = False
        return result
    finally:
        _stop(process)
        log.close()
        server.close()
        _clean(folder, keep_log=failed)


class _Session:
    """The parent's side while the command runs: answer its messages, watch the clock and the process."""

    def __init__(self, trial: Trial, server: socket.socket, process: subprocess.Popen, timeout: Optional[float]):
        self.trial, self.process, self.timeout = trial, process, timeout
        self.selector = selectors.DefaultSelector()
        self.selector.register(server, selectors.EVENT_READ, self._accept)
        self.buffers: dict[socket.socket, bytes] = {}
        self.pruned_at: Optional[float] = None

    def serve(self) -> None:
        started = time.monotonic()
        try:
            while self.process.poll() is None:
                for key, _ in self.selector.select(timeout=0.1):
                    key.data(key.fileobj)
                now = time.monotonic()
                if self.timeout is not None and now - started > self.timeout:
                    raise CommandFailed(
                        f"timed out after {self.timeout:g} s (budget.trial_timeout); the command was killed"
                    )
                if self.pruned_at is not None and now - self.pruned_at > PRUNED_GRACE_SECONDS:
                    return  # pruned, and it did not exit: its process group is killed on the way out
            for key, _ in self.selector.select(timeout=0):  # what it sent just before it exited
                key.data(key.fileobj)
        finally:
            for key in list(self.selector.get_map().values()):
                if key.data != self._accept:
                    key.fileobj.close()  # type: ignore[union-attr]
            self.selector.close()

    def _accept(self, server: Any) -> None:
        connection, _ = server.accept()
        self.buffers[connection] = b""
        self.selector.register(connection, selectors.EVENT_READ, self._read)

    def _read(self, connection: Any) -> None:
        chunk = connection.recv(65536)
        if not chunk:
            self.selector.unregister(connection)
            connection.close()
            return
        data = self.buffers[connection] + chunk
        *lines, self.buffers[connection] = data.split(b"\n")
        for line in lines:
            if line.strip():
                answer = self._answer(json.loads(line))
                connection.sendall(json.dumps(answer).encode() + b"\n")

    def _answer(self, message: Mapping[str, Any]) -> dict[str, Any]:
        kind = message.get("type")
        if kind == "build":
            self.trial.planned(int(message["total_steps"]))
            return {}
        if kind == "finish":
            self.trial.finish(message.get("metrics"))
            return {}
        if kind == "restore":
            self.trial.restored(int(message["step"]), message["progress"], lr_curve=False)
            return {}
        if kind != "report":
            return {"error": f"unknown message type {kind!r}"}
        try:
            self.trial.report(int(message["step"]), message["metrics"])
        except TrialPruned as pruned:
            self.pruned_at = self.pruned_at or time.monotonic()
            return {"prune": True, "reason": str(pruned)}
        except ValueError as error:  # a report the study cannot use (its metric missing): the command hears why
            return {"prune": False, "error": str(error)}
        return {"prune": False}


def _result(trial: Trial, process: subprocess.Popen, log: Path) -> FitResult:
    code = process.poll()
    if trial.should_prune():
        return trial.result()
    if code not in (0, None):
        raise CommandFailed(f"the command exited with code {code}{_last_lines(log)}")
    if trial.last_step == 0 and trial.final is None:
        raise CommandFailed(
            "the command ended without reporting (call trial.report(step, metrics) or "
            f"trial.finish(metrics) in it){_last_lines(log)}"
        )
    return trial.result()


def _last_lines(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()[-OUTPUT_LINES:]
    except OSError:
        return ""
    return f"; its last output ({log}): " + " | ".join(lines) if lines else f"; no output ({log})"


def _stop(process: subprocess.Popen) -> None:
    """End the command's whole process group (torchrun's workers too): SIGTERM, then SIGKILL after 5 s."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _clean(folder: Path, keep_log: bool) -> None:
    for name in ("trial.json", "report.sock") + (() if keep_log else ("trial.log",)):
        with contextlib.suppress(OSError):
            (folder / name).unlink()
    if not keep_log:
        shutil.rmtree(folder, ignore_errors=True)
