"""``load_task``: a built-in name, ``path/to/file.py:make_task`` or ``package.module:make_task``.

Everything that can go wrong on the user's side becomes a ``TunerError`` with a one-line message
that needs no traceback: the file path and line of an exception raised in the user's code, the
callables a file does define when the named one is missing, what a returned object lacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Union

from tuner.errors import TunerError, lookup
from tuner.tasks.base import Task, missing_task_members, validate_directions
from tuner.tasks.builtin import BUILTIN_TASKS

DEFAULT_FUNCTION = "make_task"


def load_task(
    ref: str, options: Optional[Mapping[str, Any]] = None, *, base_dir: Optional[Union[str, Path]] = None
) -> Task:
    """The task named by ``ref``, built with ``factory(**options)``.

    ``ref`` is a built-in name (see ``BUILTIN_TASKS``), ``"file.py:function"`` (a relative path is
    looked up in ``base_dir`` — the study file's folder — then in the working directory; the function
    defaults to ``make_task``) or ``"package.module:function"`` (imported from ``sys.path``).
    """
    options = dict(options or {})
    if is_builtin_ref(ref):
        return _load_builtin(ref, options)
    factory, path, folder = load_function(ref, base_dir=base_dir, kind="task", default=DEFAULT_FUNCTION)
    where = str(path)
    _check_options(factory, options, factory.__name__, where)
    try:
        with _on_sys_path(folder):
            task = factory(**options)
    except Exception as error:
        raise TunerError(f"error in {factory.__name__}() of {where}: {describe_user_error(error, path)}") from error
    return check_task(task, f"{factory.__name__}() in {where}")


def load_function(
    ref: str, *, base_dir: Optional[Union[str, Path]] = None, kind: str = "train", default: Optional[str] = None
) -> tuple[Callable[..., Any], Path, Optional[Path]]:
    """The function ``ref`` names -- ``"file.py:function"`` or ``"package.module:function"`` -- with the file it is
    defined in and the folder to put on ``sys.path`` while calling it (None for a module). Anything wrong (a missing
    file, an import error in it, no such function) is a ``TunerError`` saying what and where."""
    target, named = split_ref(ref, default)
    if named is None:
        raise TunerError(f"{kind}: expected 'file.py:function' or 'package.module:function', got {ref!r}")
    function = named
    if is_task_file(target):
        path = resolve_task_file(target, base_dir)
        module = _imported(lambda: _import_file(path), path, kind)
        folder: Optional[Path] = path.parent
    else:
        path = _module_origin(target)
        module = _imported(lambda: _import_module(target), path, kind)
        folder = None
    found = getattr(module, function, None)
    if not callable(found):
        defined = ", ".join(_callables(module)) or "(none)"
        raise TunerError(f"{path} defines no function {function!r}; callables defined there: {defined}")
    return found, path, folder


def _imported(importer: Callable[[], ModuleType], path: Path, kind: str) -> ModuleType:
    try:
        return importer()
    except Exception as error:
        raise TunerError(f"error importing {kind} file {path}: {describe_user_error(error, path)}") from error


def split_ref(ref: str, default: Optional[str] = None) -> tuple[str, Optional[str]]:
    """``(file or module, function)`` of ``"file.py:function"`` / ``"package.module:function"``; without a
    ``:function`` (or with a colon that is no function's, a Windows drive's), ``(ref, default)``."""
    target, _, function = ref.rpartition(":")
    return (target, function) if target and function.isidentifier() else (ref, default)


def is_builtin_ref(ref: str) -> bool:
    """Whether a task reference names a built-in task (neither a file nor ``module:function``)."""
    return split_ref(ref)[1] is None and not is_task_file(ref)


def is_task_file(text: str) -> bool:
    """Whether a task reference names a file (``.py`` or a path) rather than a built-in or a module."""
    return text.endswith(".py") or "/" in text or os.sep in text


def _load_builtin(name: str, options: dict[str, Any]) -> Task:
    spec = lookup(BUILTIN_TASKS, "task", name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise TunerError(
            f"unknown option {unknown[0]!r} for task {name!r}; valid options: {', '.join(spec.options) or '(none)'}"
        )
    try:
        return spec.factory(**{**spec.options, **options})
    except (TypeError, ValueError) as error:  # a wrong-typed or out-of-range option: say which, no traceback
        raise TunerError(f"task {name!r}: bad options {options}: {error}") from None


def resolve_task_file(path: Union[str, Path], base_dir: Optional[Union[str, Path]] = None) -> Path:
    """The absolute path of a task file: as given if absolute, else under ``base_dir`` then the cwd."""
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [Path(d) / given for d in (base_dir, Path.cwd()) if d is not None]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c.absolute()) for c in dict.fromkeys(candidates))
    raise TunerError(f"task file not found: {str(path)!r} (looked for {tried})")


def _module_origin(module: str) -> Path:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as error:
        raise TunerError(f"cannot find task module {module!r}: {error}") from None
    if spec is None or spec.origin is None or not os.path.isfile(spec.origin):
        raise TunerError(f"cannot find task module {module!r} on sys.path")
    return Path(spec.origin).resolve()


def _import_file(path: Path) -> ModuleType:
    """Execute ``path`` as a fresh module (registered in ``sys.modules`` so dataclasses and pickling work)."""
    name = f"tuner_user_task_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TunerError(f"cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_sys_path(path.parent):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_module(module: str) -> ModuleType:
    return importlib.import_module(module)


@contextlib.contextmanager
def _on_sys_path(folder: Optional[Path]) -> Iterator[None]:
    """Let a task file import its sibling modules while it is being loaded (no-op for ``None``)."""
    entry = str(folder)
    added = folder is not None and entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _callables(module: ModuleType) -> list[str]:
    """Public functions and classes defined in ``module`` itself (not imported into it)."""
    return sorted(
        name
        for name, value in vars(module).items()
        if callable(value) and not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    )


def _check_options(factory: Callable[..., Any], options: dict[str, Any], function: str, where: str) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**options)
    except TypeError as error:
        valid = ", ".join(signature.parameters) or "(none)"
        raise TunerError(
            f"options {sorted(options)} do not fit {function}() in {where}: {error}; its parameters: {valid}"
        ) from None


def describe_user_error(error: BaseException, path: Path) -> str:
    """``"line N (in fn): Type: message"`` for the innermost traceback frame in ``path`` (or the innermost at all)."""
    if isinstance(error, SyntaxError) and error.filename and _same_file(error.filename, path):
        text = f": {error.text.strip()}" if error.text else ""
        return f"line {error.lineno}: {type(error).__name__}: {error.msg}{text}"
    frames = traceback.extract_tb(error.__traceback__)
    inside = [frame for frame in frames if _same_file(frame.filename, path)]
    summary = f"{type(error).__name__}: {error}"
    if inside:
        return f"line {inside[-1].lineno} (in {inside[-1].name}): {summary}"
    if frames:
        return f"{frames[-1].filename}, line {frames[-1].lineno}: {summary}"
    return summary


def _same_file(filename: str, path: Path) -> bool:
    try:
        return Path(filename).resolve() == path
    except (OSError, ValueError):
        return False


def check_task(task: Any, source: str) -> Task:
    """``task`` if it has every Task member and consistent directions, else a ``TunerError`` saying what is wrong."""
    missing = missing_task_members(task)
    if missing:
        raise TunerError(
            f"{source} returned {type(task).__name__}, which is not a Task: missing {', '.join(missing)} "
            f"(return tuner.tasks.SimpleTask(...) or an object with those members)"
        )
    try:
        validate_directions(task.metric, task.direction, task.directions)
    except ValueError as error:
        raise TunerError(f"{source} returned task {task.name!r} with inconsistent metrics: {error}") from None
    return task
