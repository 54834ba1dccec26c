"""Checkpoints in a study: each trial's folder, the checkpoint a retry resumes from, and what is kept when trials end.

Layout: ``<checkpoint_dir>/<study>/<trial number>/`` holding ``checkpoint.pt`` (the last one written) and, with
``save_model``, ``model.pt`` (a complete trial's final weights). Relative ``checkpoint_dir``s start from the working
directory, like the embedded ``tuner.db``; a team shares one path on a shared filesystem (NFS, a mounted bucket).

**No two workers write the same folder.** A trial writes only its own folder, and trial numbers are unique in a
study: Optuna hands each number out once, from the study's database, whichever worker asks. A retry -- the copy
of a trial lost with its worker (``worker lost``) or interrupted by Ctrl-C (``retry_of``) -- gets a new number and
folder, and only *reads* the folder of the trial it repeats; a paused worker that wakes up still writes its own
trial's folder, never the retry's, and the reader sees a whole file either way (writes are atomic renames).

**Resume.** ``start`` finds the trials a trial repeats (Optuna's retry history for a lost trial, ``retry_of`` for an
interrupted one, and so on back), and reads the newest checkpoint among their folders that was written for the same
study definition, recipe, seed, kind of run and tuner version; anything else is ignored with a warning and the
trial starts over. Population members (trained stacked) are not checkpointed: their retries start over
(README, "Long trials").

**Keeping.** When a trial ends: the folders of the trials it repeated are removed (unless it was itself interrupted:
its retry may still need them); its own folder is removed when it was pruned or failed (kept when interrupted);
of the complete trials' folders on this filesystem only the ``keep_best`` best stay. With ``save_model``, a trial
that becomes the study's best logs its ``model.pt`` to the study's MLflow parent run (tag ``tuner.best_model_trial``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import optuna

from tuner.errors import TunerError
from tuner.recipe import Recipe
from tuner.spec import DEFAULT_CHECKPOINT_DIR, StudySpec
from tuner.study.definition import definition
from tuner.study.keys import TrialKeys
from tuner.study.records import top_records
from tuner.tracking import Tracker, TrialOutcome
from tuner.train import FitResult
from tuner.train.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpointer,
    CheckpointEvery,
    CheckpointPlan,
    CheckpointWarning,
    find_checkpoint,
    remove_folder,
    unwritable,
)
from tuner.version import __version__

if TYPE_CHECKING:
    from tuner.study.prepare import Prepared

INTERRUPTED = "interrupted"
"""The reason of a trial Ctrl-C stopped (its folder is kept for its retry)."""


def study_folder(spec: StudySpec) -> Path:
    """The study's checkpoint folder, ``<checkpoint_dir>/<study>`` (absolute; relative from the working directory)."""
    return Path(spec.checkpoint_dir or DEFAULT_CHECKPOINT_DIR).expanduser().resolve() / spec.name


def check_checkpoint_dir(spec: StudySpec) -> None:
    """``TunerError`` (exit 2) naming the field and value when checkpoints could not be written under the study's
    ``checkpoint_dir`` -- checked without writing anything, before any trial."""
    why = unwritable(study_folder(spec))
    if why is not None:
        shown = spec.checkpoint_dir or DEFAULT_CHECKPOINT_DIR
        raise TunerError(f"checkpoint_dir: cannot write checkpoints to {shown!r}: {why}")


def delete_checkpoints(spec: StudySpec) -> Optional[Path]:
    """Remove the study's checkpoint folder (``tuner delete``); the folder, or None when there was none here."""
    folder = study_folder(spec)
    if not folder.is_dir():
        return None
    remove_folder(folder)
    return folder


def checkpoint_every(spec: StudySpec) -> CheckpointEvery:
    """The study file's ``budget.checkpoint_every`` (default: every ``DEFAULT_MINUTES`` of training)."""
    every = spec.budget.checkpoint_every
    if every is None:
        return CheckpointEvery()
    if isinstance(every, int):
        return CheckpointEvery(evaluations=every)
    return CheckpointEvery(minutes=every.minutes)


@dataclass
class TrialCheckpoints:
    """One started trial's checkpoints: its ``Checkpointer`` and the numbers of the trials it repeats (nearest
    first)."""

    checkpointer: Checkpointer
    repeats: tuple[int, ...] = ()
    resumed_step: Optional[int] = None  # the step of the checkpoint it was handed
    tags: dict[str, str] = field(default_factory=dict)  # for its MLflow run


class StudyCheckpoints:
    """The checkpoints of one study's trials in this process (see the module docstring).

    Args:
        study: the Optuna study.
        prepared: the validated study file.
        tracker: where a new best trial's model is logged (``save_model``).
    """

    def __init__(self, study: optuna.Study, prepared: Prepared, tracker: Tracker, parent_run_id: Optional[str]) -> None:
        spec = prepared.spec
        self.study, self.tracker, self.parent_run_id = study, tracker, parent_run_id
        self.root = study_folder(spec)
        self.every, self.keep_best, self.save_model = checkpoint_every(spec), spec.keep_best, spec.save_model
        self.explicit_every, self.warned = spec.budget.checkpoint_every is not None, False
        defined = json.dumps(definition(spec, prepared.metric, prepared.direction), sort_keys=True)
        self.identity = {
            "format": CHECKPOINT_FORMAT,
            "tuner": __version__,
            "study": hashlib.sha256(defined.encode()).hexdigest()[:16],
            "kind": "trainer" if prepared.task is not None else "own code",
        }

    def folder(self, number: int) -> Path:
        """Trial ``number``'s folder."""
        return self.root / str(number)

    def start(self, trial: optuna.Trial, recipe: Recipe, seed: int, *, resumable: bool) -> TrialCheckpoints:
        """The checkpoints of a trial about to train: its plan, and -- ``resumable`` (it trains alone) and a retry --
        the newest usable checkpoint of the trials it repeats, already read."""
        remove_folder(self.folder(trial.number))  # left by a deleted study of the same name, if anything
        if not resumable and self.explicit_every and not self.warned:
            self.warned = True
            warnings.warn(
                "budget.checkpoint_every: members of a population are not checkpointed (a stack's rows cannot go on "
                "alone or join a new stack mid-run); a lost or interrupted member's retry starts over",
                CheckpointWarning,
                stacklevel=3,
            )
        identity = {**self.identity, "recipe": recipe.to_dict(), "seed": seed}
        repeats = repeated_trials(self.study, trial)
        found = find_checkpoint([self.folder(n) for n in repeats], identity) if resumable and repeats else None
        plan = CheckpointPlan(
            str(self.folder(trial.number)),
            identity,
            self.every,
            resume=str(found[0]) if found else None,
            resumes_trial=int(found[0].parent.name) if found else None,
            save_model=self.save_model,
        )
        checkpoints = TrialCheckpoints(Checkpointer(plan, found[1] if found else None), tuple(repeats))
        if repeats:
            checkpoints.tags["tuner.retry_of"] = str(repeats[0])
        if found:
            checkpoints.resumed_step = int(found[1]["step"])
            checkpoints.tags["tuner.resumed_from"] = f"trial {plan.resumes_trial} step {checkpoints.resumed_step}"
        return checkpoints

    def finished(self, checkpoints: TrialCheckpoints, result: FitResult) -> dict[str, Any]:
        """What the trial records of its checkpoints (its ``TrialKeys.RESUMED`` and ``MODEL``); a population
        member's final weights (``result.extras["params"]``) are written to its folder here."""
        params = result.extras.pop("params", None)
        if params is not None and result.status in ("completed", "early_stopped"):
            path = checkpoints.checkpointer.save_model(params)
            result.extras.update({"model": str(path)} if path is not None else {})
        attrs: dict[str, Any] = {TrialKeys.MODEL: result.extras["model"]} if "model" in result.extras else {}
        if "resumed_step" in result.extras:
            trial = checkpoints.checkpointer.plan.resumes_trial
            attrs[TrialKeys.RESUMED] = {"trial": trial, "step": int(result.extras["resumed_step"])}
        return attrs

    def ended(self, number: int, checkpoints: TrialCheckpoints, outcome: TrialOutcome) -> None:
        """Clean up after trial ``number`` ended with ``outcome`` (recorded and told): the folders of the trials it
        repeated, its own unless it completed, those of complete trials beyond the ``keep_best`` best; a new best
        trial's model is logged to MLflow (see the module docstring)."""
        if outcome.state == "FAIL" and outcome.reason == INTERRUPTED:
            return
        for repeated in checkpoints.repeats:
            remove_folder(self.folder(repeated))
        if outcome.state != "COMPLETE":
            remove_folder(self.folder(number))
            return
        present = {int(p.name) for p in self.root.iterdir() if p.name.isdigit()} if self.root.is_dir() else set()
        if not present:
            return
        ranked = [record.number for record in top_records(self.study, sys.maxsize, with_recipe=False)]
        model = outcome.attrs.get(TrialKeys.MODEL)
        if ranked and ranked[0] == number and model and Path(model).is_file():
            self.tracker.log_to_study(self.parent_run_id, tags={"tuner.best_model_trial": str(number)}, files=(model,))
        for beyond in set(ranked[self.keep_best :]) & present:
            remove_folder(self.folder(beyond))


def repeated_trials(study: optuna.Study, trial: optuna.Trial) -> list[int]:
    """The numbers of the trials ``trial`` repeats, nearest first: the lost trial it retries (Optuna's retry history)
    or the interrupted one (``retry_of``), then the trials those repeated. A trial that is no retry (it carries no
    seed of an earlier trial) costs no read."""
    if TrialKeys.SEED not in trial.user_attrs:
        return []
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    chain: list[int] = []
    current = by_number.get(trial.number)
    while current is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(current)
        previous = history[-1] if history else current.user_attrs.get(TrialKeys.RETRY_OF)
        if previous is None or previous in chain or previous == trial.number:
            break
        chain.append(int(previous))
        current = by_number.get(int(previous))
    return chain
