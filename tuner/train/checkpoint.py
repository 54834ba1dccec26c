"""Checkpoints of one run: when one is due, written atomically, read back only when it matches the run.

A run -- tuner's ``Trainer``, or a user's own loop through ``tuner.Trial`` -- gets a ``Checkpointer`` built from a
``CheckpointPlan``: the run's own folder (one per trial, so no two processes write the same files), how often to
write (``CheckpointEvery``: every N evaluations, or every M minutes of training -- 10 by default, so short runs write
nothing), what a checkpoint must match to be resumed (``identity``: the checkpoint format, tuner's version, the study,
the recipe, the seed) and, for a trial that repeats a lost or interrupted one, the checkpoint it resumes from.

Writes are atomic: the state goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over
``checkpoint.pt`` (``os.replace``) and the folder fsync'ed; a write that fails halfway (a full disk) removes its
temporary file and leaves the previous checkpoint as it was. Reads use ``torch.load(weights_only=True)`` -- a
checkpoint is data, never code -- and a checkpoint that cannot be read or was written for another run is ignored
with a ``CheckpointWarning``: the run starts over.

Knows nothing of Optuna or MLflow: the study decides the folders (``tuner.study.checkpoints``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

CHECKPOINT_FILE = "checkpoint.pt"
"""A run's last checkpoint, in its folder."""

MODEL_FILE = "model.pt"
"""A complete run's final weights (a ``state_dict``), in its folder, when the study asks to ``save_model``."""

CHECKPOINT_FORMAT = 1
"""The layout of what tuner writes; a checkpoint of another format is ignored."""

DEFAULT_MINUTES = 10.0
"""Without ``checkpoint_every``, a run writes a checkpoint after every this many minutes of training."""


class CheckpointWarning(UserWarning):
    """A checkpoint was ignored (unreadable, or written for another run) or could not be written; the run goes on."""


@dataclass(frozen=True)
class CheckpointEvery:
    """How often a run writes a checkpoint: after every ``evaluations`` evaluations (reports, in a user's loop), or
    after ``minutes`` of training since the last one (``DEFAULT_MINUTES`` when neither is given)."""

    evaluations: Optional[int] = None
    minutes: Optional[float] = None

    def __post_init__(self) -> None:
        if self.evaluations is not None and self.minutes is not None:
            raise ValueError(f"give evaluations or minutes, not both: got {self.evaluations=}, {self.minutes=}")
        if self.evaluations is None and self.minutes is None:
            object.__setattr__(self, "minutes", DEFAULT_MINUTES)
        if self.evaluations is not None and (not isinstance(self.evaluations, int) or self.evaluations < 1):
            raise ValueError(f"evaluations must be an integer >= 1, got evaluations={self.evaluations!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got minutes={self.minutes!r}")

    def due(self, evaluations: int, seconds: float) -> bool:
        """Whether a checkpoint is due ``evaluations`` evaluations and ``seconds`` after the last one."""
        if self.evaluations is not None:
            return evaluations >= self.evaluations
        assert self.minutes is not None
        return seconds >= 60.0 * self.minutes


@dataclass(frozen=True)
class CheckpointPlan:
    """What one run does with checkpoints (plain data: it crosses to a command trial's process as JSON).

    Args:
        folder: the run's own folder (created on the first write).
        identity: what a checkpoint must match to be resumed (``read_checkpoint``); written into each checkpoint.
        every: how often a checkpoint is written.
        resume: the checkpoint file this run resumes from (a retry's), or None.
        resumes_trial: the number of the trial whose checkpoint ``resume`` is.
        save_model: whether a complete run leaves its final weights in ``folder/model.pt``.
    """

    folder: str
    identity: dict[str, Any]
    every: CheckpointEvery = field(default_factory=CheckpointEvery)
    resume: Optional[str] = None
    resumes_trial: Optional[int] = None
    save_model: bool = False

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data (``from_json`` reads it back)."""
        every = {"evaluations": self.every.evaluations, "minutes": self.every.minutes}
        return {
            "folder": self.folder,
            "identity": self.identity,
            "every": every,
            "resume": self.resume,
            "resumes_trial": self.resumes_trial,
            "save_model": self.save_model,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointPlan:
        """The plan ``to_json`` wrote."""
        every = data["every"]
        return cls(
            str(data["folder"]),
            dict(data["identity"]),
            CheckpointEvery(every.get("evaluations"), every.get("minutes")),
            data.get("resume"),
            data.get("resumes_trial"),
            bool(data.get("save_model", False)),
        )


class Checkpointer:
    """One run's checkpoints: ``due`` / ``save`` while it trains, ``resume_state`` once when it starts, ``save_model``
    when it completes.

    Args:
        plan: the run's plan.
        resume_state: the checkpoint ``plan.resume`` names, already read (the study reads it to check it); None:
            ``resume_state()`` reads it.
    """

    def __init__(self, plan: CheckpointPlan, resume_state: Optional[dict[str, Any]] = None) -> None:
        self.plan, self._state, self._taken = plan, resume_state, False
        self.folder = Path(plan.folder)
        self.written = 0
        self._evaluations, self._since = 0, time.monotonic()

    def evaluated(self) -> None:
        """Count an evaluation (or a report) toward ``every.evaluations``."""
        self._evaluations += 1

    def due(self) -> bool:
        """Whether a checkpoint is due now."""
        return self.plan.every.due(self._evaluations, time.monotonic() - self._since)

    def save(self, state: dict[str, Any]) -> bool:
        """Write ``state`` (with the plan's identity) as the run's checkpoint, atomically. A failure (a full disk, a
        folder gone) is a ``CheckpointWarning``: the previous checkpoint stays, the run goes on. Whether it was
        written; either way the next one is due a whole interval later."""
        self._evaluations, self._since = 0, time.monotonic()
        try:
            write_atomic(self.folder / CHECKPOINT_FILE, {"identity": self.plan.identity, **state})
        except (OSError, RuntimeError) as error:  # torch.save reports a failed write as RuntimeError
            warnings.warn(
                f"could not write checkpoint {self.folder / CHECKPOINT_FILE} ({type(error).__name__}: {error}); "
                f"the previous one is kept and training goes on",
                CheckpointWarning,
                stacklevel=2,
            )
            return False
        self.written += 1
        return True

    def resume_state(self) -> Optional[dict[str, Any]]:
        """The checkpoint this run resumes from, the first time it is asked (None: it starts from step 0)."""
        if self._taken:
            return None
        self._taken = True
        state, self._state = self._state, None
        if state is None and self.plan.resume is not None:
            state = read_checkpoint(Path(self.plan.resume), self.plan.identity)
        return state

    def save_model(self, state_dict: Mapping[str, torch.Tensor]) -> Optional[Path]:
        """Write a complete run's final weights to ``folder/model.pt`` when the plan says so; the path, or None (not
        asked, or the write failed: warned)."""
        if not self.plan.save_model:
            return None
        path = self.folder / MODEL_FILE
        try:
            write_atomic(path, {name: value.detach().cpu() for name, value in state_dict.items()})
        except (OSError, RuntimeError) as error:
            warnings.warn(f"could not write the model to {path}: {error}", CheckpointWarning, stacklevel=2)
            return None
        return path


def write_atomic(path: Path, data: Any) -> None:
    """``torch.save(data)`` to ``path`` so that ``path`` is always either the old file or the whole new one: a
    temporary file in the same folder, flushed and fsync'ed, renamed over ``path``, then the folder fsync'ed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform lets a folder be opened and synced)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def read_checkpoint(path: Path, identity: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The checkpoint at ``path`` when it is readable and was written for a run of ``identity``; otherwise None,
    with a ``CheckpointWarning`` saying why (the run then starts over)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as error:  # a truncated or garbled file fails in many ways inside torch.load
        _ignored(path, f"it cannot be read ({type(error).__name__}: {error})")
        return None
    if not isinstance(state, dict) or not isinstance(state.get("identity"), dict):
        _ignored(path, "it is not a tuner checkpoint")
        return None
    why = mismatch(state["identity"], identity)
    if why is not None:
        _ignored(path, why)
        return None
    return state


def find_checkpoint(folders: Sequence[Path], identity: Mapping[str, Any]) -> Optional[tuple[Path, dict[str, Any]]]:
    """The first usable checkpoint in ``folders`` (newest first: a retry's own retries come before it), read."""
    for folder in folders:
        path = folder / CHECKPOINT_FILE
        if path.is_file():
            state = read_checkpoint(path, identity)
            if state is not None:
                return path, state
    return None


IDENTITY_FIELDS = {
    "format": "the checkpoint format",
    "tuner": "tuner version",
    "study": "study definition",
    "kind": "kind of run",
    "recipe": "recipe",
    "seed": "seed",
}
"""What a checkpoint's identity holds, in the order a mismatch is reported."""


def mismatch(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> Optional[str]:
    """Why a checkpoint written for ``stored`` cannot resume a run of ``wanted`` (None: it can)."""
    for key, what in IDENTITY_FIELDS.items():
        if stored.get(key) != wanted.get(key):
            if key in ("tuner", "format", "seed"):
                return f"it was written with {what} {stored.get(key)!r}, this run has {wanted.get(key)!r}"
            return f"it was written for another {what}"
    return None


def _ignored(path: Path, why: str) -> None:
    warnings.warn(f"checkpoint {path} is ignored: {why}; the trial starts over", CheckpointWarning, stacklevel=3)


def remove_folder(folder: Path) -> None:
    """Remove a run's checkpoint folder (nothing when it is gone already)."""
    shutil.rmtree(folder, ignore_errors=True)


def unwritable(path: Path) -> Optional[str]:
    """Why checkpoints cannot be written under ``path`` (None: they can), without writing anything: the path, or its
    nearest existing parent, must be a folder this process may write in."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None
