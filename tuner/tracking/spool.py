"""Tracking calls that could not be sent yet, kept on disk: one journal file per process, bounded, read back in order.

A process that has calls it cannot send writes them to its own file in the spool directory
(``<host>-<pid>-<random>.jsonl``): one JSON line per call, then one ``{"ack": seq}`` line as each is sent (with its
result, e.g. the id of a created run), and it holds an exclusive ``flock`` on the file while it lives. When all is
sent the file is removed. A file that no process holds was left by one that ended before its calls went out (killed,
or it left while the server was still away): ``adopt`` hands its entries to a live process, which sends what is left.

A process's file holds at most ``limit`` bytes. Past that a call is refused (the caller drops it and says so), except
``essential`` ones -- small calls that keep a run's bookkeeping whole (its creation, its end) -- which may use as much
again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional


@dataclass
class Entry:
    """A call as the spool keeps it: ``done`` once it was sent (``result`` is what sending it returned)."""

    seq: int
    kind: str
    args: dict[str, Any]
    essential: bool = False
    done: bool = False
    result: Any = None


class Spool:
    """This process's journal of unsent calls in ``directory`` (see the module docstring).

    Args:
        directory: where every process tracking to the same server keeps its file.
        limit: the most bytes this process's file may hold (essential calls may use as much again).
    """

    def __init__(self, directory: Path, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be > 0 bytes, got {limit=}")
        self.directory, self.limit = Path(directory), limit
        self._file: Optional[IO[str]] = None
        self._size = 0
        self._seq = 0

    @property
    def path(self) -> Optional[Path]:
        """This process's file, while it has one."""
        return Path(self._file.name) if self._file is not None else None

    def append(self, kind: str, args: dict[str, Any], essential: bool = False) -> Optional[int]:
        """Write a call; returns its sequence number, or None when the spool is full (nothing is written)."""
        self._seq += 1
        line = json.dumps({"seq": self._seq, "kind": kind, "args": args, "essential": essential}) + "\n"
        if self._size + len(line) > self.limit * (2 if essential else 1):
            return None
        self._write(line)
        return self._seq

    def ack(self, seq: int, result: Any = None) -> None:
        """Mark call ``seq`` sent (with what sending it returned)."""
        self._write(json.dumps({"ack": seq, "result": result}) + "\n")

    def clear(self) -> None:
        """Everything was sent: remove this process's file."""
        if self._file is None:
            return
        path = Path(self._file.name)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._file.close()  # releases the lock
        self._file, self._size = None, 0

    def adopt(self) -> list[Entry]:
        """The entries of every file no live process holds, in order (sent ones included, marked ``done``); the
        files are removed. Call ``append`` for what is still to send before anything else can fail."""
        entries: list[Entry] = []
        own = self.path
        for path in sorted(self.directory.glob("*.jsonl")) if self.directory.is_dir() else []:
            if path != own:
                entries += _take_abandoned(path)
        return entries

    def _write(self, line: str) -> None:
        if self._file is None:
            self._file = self._open()
        self._file.write(line)
        self._file.flush()  # in the kernel's hands: a killed process loses nothing
        self._size += len(line)

    def _open(self) -> IO[str]:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        handle = open(self.directory / name, "a", encoding="utf-8")  # noqa: SIM115 - held open for the lock
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle


def _take_abandoned(path: Path) -> list[Entry]:
    """The entries of ``path`` when no process holds it (then the file is removed), else nothing."""
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below, after the lock is taken
    except FileNotFoundError:  # another process adopted it a moment ago
        return []
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process is alive
            return []
        try:  # the lock may be on a file another adopter removed meanwhile
            if os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
                return []
        except FileNotFoundError:
            return []
        entries = _parse(handle.read())
        path.unlink()
    return entries


def _parse(text: str) -> list[Entry]:
    entries: dict[int, Entry] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short when its process was killed mid-write
            continue
        if "ack" in record and record["ack"] in entries:
            entries[record["ack"]].done, entries[record["ack"]].result = True, record.get("result")
        elif "seq" in record:
            entries[record["seq"]] = Entry(
                record["seq"], record["kind"], record["args"], record.get("essential", False)
            )
    return list(entries.values())
