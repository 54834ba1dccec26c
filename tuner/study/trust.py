"""The study is data, not code: what a process runs for a study it reads from the database, its own side names.

A study's stored spec (user attribute ``spec``) is data that anyone who can write to the database can change. A
process that rebuilds a study from it -- ``tuner worker``, ``tuner lock`` -- imports a task or train function, or runs
a command, only when its own side names it:

* a built-in task (tuner's own code; its options are data);
* the study file given on the command line (``--file``): it must define the study as the database does
  (``check_same_study``), and then nothing of what trains is read from the database at all;
* ``$TUNER_ALLOWED_TASKS``: comma-separated ``fnmatch`` patterns (``*``, ``?``, ``[...]``), each of one kind:

  - ``package.module:function``, ``package.module`` (any function) or ``package.*``: a task or train function in a
    module imported from ``sys.path``;
  - a path (it has a ``/`` or ends in ``.py``; relative to the working directory), ``:function`` optional:
    ``/srv/team/tasks/*.py``, matched against the real path of the file the study names (symlinks resolved);
  - ``cmd:FOLDER:COMMAND``: a ``command:`` study's command line as the study file writes it, run in that folder
    (``cmd:/srv/team/studies:python train.py --epochs 5``);
  - ``*`` alone: anything (a database that only trusted people can write to).

Anything else is refused before it is imported or run: ``TunerError`` (exit 2) saying what the database names and
how to allow it. Where a worker sends MLflow data is its own too (``study_tracking_uri``).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Optional, Union

import optuna

from tuner.errors import TunerError
from tuner.spec import StudySpec, parse_study, tracking_uri
from tuner.study.definition import definition, differences
from tuner.study.keys import StudyKeys
from tuner.study.prepare import Prepared, prepare
from tuner.study.runner import stored_definition
from tuner.study.storage.redact import is_masked, mask_text
from tuner.tasks import is_builtin_ref, is_task_file, resolve_task_file, split_ref
from tuner.tasks.loader import DEFAULT_FUNCTION

ENV_ALLOWED = "TUNER_ALLOWED_TASKS"
"""The environment variable listing what a study read from the database may run here (see the module docstring)."""


@dataclass(frozen=True)
class Code:
    """What a study runs, spelled as allow-list patterns are matched: ``module:function``,
    ``/real/path/file.py:function`` or ``cmd:/real/folder:command``."""

    kind: str  # "module", "file" or "command"
    name: str


def prepare_own(
    study: optuna.Study,
    study_file: Optional[Union[str, Path]] = None,
    *,
    storage: str,
    tracking_uri: Optional[str] = None,
    device: Optional[str] = None,
) -> Prepared:
    """``study`` prepared from what this side names: ``study_file`` (checked to define the study as stored), else the
    spec stored with it, refused unless what it trains is allowed here (``stored_spec``). ``storage`` is this side's
    URL; the tracking URI is ``tracking_uri``, else the file's or ``study_tracking_uri``'s."""
    if study_file is not None:
        prepared = prepare(study_file, storage=storage, tracking_uri=tracking_uri, device=device)
        check_same_study(study, prepared, study_file)
        return prepared
    spec, spec_dir = stored_spec(study)  # before anything it names is imported
    uri = study_tracking_uri(study, tracking_uri)
    return prepare(spec, storage=storage, tracking_uri=uri, device=device, spec_dir=spec_dir)


def stored_spec(study: optuna.Study) -> tuple[StudySpec, str]:
    """The study file stored on ``study`` and the folder it was in (the working directory when that is gone),
    refused (``TunerError``) unless what it trains is allowed on this side (``check_allowed``)."""
    data = study.user_attrs.get(StudyKeys.SPEC)
    if data is None:
        raise TunerError(
            f"study {study.study_name!r} has no stored study file (user attr {StudyKeys.SPEC!r}): "
            f"it was not created by `tuner run`"
        )
    spec = parse_study(data, source=f"study {study.study_name!r} (its stored study file)")
    folder = study.user_attrs.get(StudyKeys.SPEC_DIR)
    spec_dir = folder if isinstance(folder, str) and os.path.isdir(folder) else os.getcwd()
    check_allowed(spec, spec_dir)
    return spec, spec_dir


def check_allowed(spec: StudySpec, spec_dir: str) -> None:
    """Refuse (``TunerError``) a study read from the database whose task, train function or command is neither
    built in nor allowed by ``$TUNER_ALLOWED_TASKS``; nothing is imported or run to decide."""
    code = code_of(spec, spec_dir)
    if code is None or any(
        kind in ("*", code.kind) and fnmatchcase(code.name, pattern) for kind, pattern in allowed_patterns()
    ):
        return
    named = mask_text(str(spec.command if spec.door == "command" else getattr(spec, spec.door).name))
    raise TunerError(
        f"study {spec.name!r}: its database names {spec.door}: {named!r}, which this machine has not allowed. "
        f"A study's database is data: code it names is not imported or run unless this side names it too. "
        f"Give the study file (--file STUDY_FILE, the file the study was run with), or allow it: "
        f"{ENV_ALLOWED}={shlex.quote(code.name)} (comma-separated patterns; README, Team setup)"
    )


def code_of(spec: StudySpec, spec_dir: str) -> Optional[Code]:
    """What ``spec`` runs, as allow-list patterns are matched (None: a built-in task). A task or train file is
    looked up as loading it would (``spec_dir``, then the working directory); a missing one is a ``TunerError``."""
    if spec.command is not None:
        argv = shlex.split(spec.command) if isinstance(spec.command, str) else [str(a) for a in spec.command]
        return Code("command", f"cmd:{os.path.realpath(spec_dir)}:{shlex.join(argv)}")
    ref = spec.task or spec.train
    assert ref is not None  # the spec has exactly one door
    if spec.task is not None and is_builtin_ref(ref.name):
        return None
    target, function = split_ref(ref.name, DEFAULT_FUNCTION if spec.task is not None else None)
    if is_task_file(target):
        return Code("file", f"{resolve_task_file(target, spec_dir)}:{function or ''}")
    return Code("module", f"{target}:{function or ''}")


def allowed_patterns(text: Optional[str] = None) -> list[tuple[str, str]]:
    """``(kind, pattern)`` for each entry of ``text`` (default: ``$TUNER_ALLOWED_TASKS``), spelled as ``Code``."""
    raw = os.environ.get(ENV_ALLOWED, "") if text is None else text
    return [_pattern(entry.strip()) for entry in raw.split(",") if entry.strip()]


def _pattern(entry: str) -> tuple[str, str]:
    if entry == "*":
        return "*", "*"
    if entry.startswith("cmd:"):
        folder, colon, command = entry[len("cmd:") :].partition(":")
        if not (colon and folder and command):
            raise TunerError(
                f"{ENV_ALLOWED}: {entry!r}: a command is allowed as cmd:FOLDER:COMMAND (the folder it runs in, "
                f"the command line as the study file writes it)"
            )
        return "command", f"cmd:{_real(folder)}:{command}"
    target, _, function = entry.rpartition(":")
    if not (target and (function.isidentifier() or function == "*")):
        target, function = entry, "*"
    if is_task_file(target):
        return "file", f"{_real(target)}:{function}"
    return "module", f"{target}:{function}"


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def check_same_study(study: optuna.Study, prepared: Prepared, path: Union[str, Path]) -> None:
    """Refuse (``TunerError``) a local study file that does not define ``study`` as the database does: another
    name, or a difference in what defines it (``tuner.study.definition``), each shown ``field: stored -> file``."""
    if prepared.spec.name != study.study_name:
        raise TunerError(f"{path} defines study {prepared.spec.name!r}, not {study.study_name!r}")
    stored = stored_definition(study)
    if stored is None:  # a study of an older tuner: nothing to compare
        return
    changed = differences(stored, definition(prepared.spec, prepared.metric, prepared.direction))
    if changed:
        listing = "\n".join(f"  {line}" for line in changed)
        raise TunerError(
            f"{path} does not define study {study.study_name!r} as its database does (stored -> file):\n{listing}\n"
            f"Give the study file the study was run with"
        )


def study_tracking_uri(study: optuna.Study, override: Optional[str] = None) -> str:
    """Where a process that reads ``study`` from its database sends MLflow data: ``override`` (``--tracking-uri``),
    else ``$MLFLOW_TRACKING_URI``, else the study file's as stored, else the embedded default. A stored URI whose
    credentials were masked (they are never stored) is no address: ``TunerError`` saying how to give it."""
    own = override or os.environ.get("MLFLOW_TRACKING_URI")
    if own:
        return tracking_uri(own)
    stored = (study.user_attrs.get(StudyKeys.SPEC) or {}).get("tracking_uri")
    if stored and is_masked(stored):
        raise TunerError(
            f"study {study.study_name!r} logs to MLflow at {stored}, whose credentials are not stored: give the "
            f"tracking URI with --tracking-uri or $MLFLOW_TRACKING_URI"
        )
    return tracking_uri(stored)
