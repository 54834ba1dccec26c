"""Tracking calls in order, off the training path; what cannot be sent yet waits in a spool, and goes out later.

``CallQueue`` sends ``Call``s one at a time, in the order they came, through ``execute``: on a background thread
(``background=True``: a server, whose round trips training must not wait for), or in the caller's thread (a local
store, whose cost is CPU time that a thread would take from training anyway, under the GIL).

When a call fails for a reason that may pass (``transient``: the server is down, restarting, overloaded), it stays
first in line with every call after it -- written to the ``Spool`` from then on, so a process that ends or dies
meanwhile leaves them on disk -- and is tried again after a pause that doubles up to ``retry[1]`` seconds. Training
never waits for any of this: ``submit`` appends. A call refused for good (the server answers that it is wrong) is
reported -- a warning, and a line in the call's ``errors`` -- and dropped. ``flush`` waits until all is sent or one
more try has failed. ``on_idle`` runs each time the queue empties after an outage (and the first time): the tracker
takes over what dead processes left in the spool then.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from tuner.tracking.spool import Spool

FLUSH_SECONDS = 60.0
"""The longest ``flush`` waits for a server that answers, slowly (one that does not answer: one try)."""

SUSPECT_TRIES = 3
"""A call that fails this many times while the server answers other calls is dropped as failed."""

UNREACHABLE = "MLflow unreachable"
"""How a trial's ``tracking_errors`` begin when its calls had to wait for the server."""

_log = logging.getLogger(__name__)


@dataclass
class Call:
    """One tracking call: ``kind`` names what ``execute`` does with JSON ``args``.

    ``durable`` calls go to the spool while the server is away; others (the study's state, recomputed when sent) only
    wait in memory. ``essential`` calls are small and keep a run whole (its creation, its end): kept in a full spool.
    ``errors`` is where its failures are told (a trial's list), ``tries`` how often it was tried."""

    kind: str
    args: dict[str, Any]
    durable: bool = True
    essential: bool = False
    errors: Optional[list[str]] = None
    tries: int = 0
    strikes: int = 0  # failures while the server answered other calls
    seq: Optional[int] = None  # its entry in the spool, once written there


class CallQueue:
    """Sends calls in order (see the module docstring).

    Args:
        execute: sends one call; returns what the spool should remember of it (a created run's id) or None.
        background: send from a thread of its own (else in the thread that submits).
        transient: whether an error may pass (keep the call) or not (drop it).
        describe: what a call does, for messages ("create trial run").
        spool: where calls wait while the server is away (None: in memory only).
        on_idle: called when the queue empties for the first time and after each outage.
        answers: whether the server answers at all (asked when a call fails again: a call that keeps failing while
            the server answers is the problem, and is dropped rather than left blocking every call after it).
        spooled_args: a call's arguments as the spool keeps them (the tracker adds what it knows by then).
        retry: the first and the longest pause between tries while the server is away, in seconds.
    """

    def __init__(
        self,
        execute: Callable[[Call], Any],
        *,
        background: bool,
        transient: Callable[[BaseException], bool],
        describe: Callable[[Call], str],
        spool: Optional[Spool] = None,
        on_idle: Callable[[], None] = lambda: None,
        answers: Callable[[], bool] = lambda: False,
        spooled_args: Callable[[Call], dict[str, Any]] = lambda call: call.args,
        retry: tuple[float, float] = (0.5, 15.0),
    ) -> None:
        self._execute, self._transient, self._describe = execute, transient, describe
        self.spool, self._on_idle, self._answers, self._spooled_args = spool, on_idle, answers, spooled_args
        self._retry = retry
        self._pending: deque[Call] = deque()
        self._cond = threading.Condition()
        self.failing: Optional[str] = None  # why the server is taken to be away (None: it answers)
        self._failures = 0  # transient failures so far: flush waits for one more at most
        self._next_try, self._pause = 0.0, retry[0]
        self._spooled = False  # every waiting durable call is in the spool
        self._idle_due = True
        self._busy = False  # a drain is running (flush waits for it; a call it makes may submit more)
        self._background = background
        if background:
            threading.Thread(target=self._run, name="tuner-mlflow", daemon=True).start()

    def submit(self, *calls: Call, persist: bool = False) -> None:
        """Queue ``calls`` (``persist``: write them to the spool at once, as calls taken over from a dead process)."""
        with self._cond:
            if persist:
                self._spool_waiting()
            for call in calls:
                if self._spooled and not self._keep(call):
                    continue
                self._note(call)
                self._pending.append(call)
            self._cond.notify_all()
        if not self._background:
            self._drain_inline(force=False)

    def flush(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Send what is queued. True once all is sent; False as soon as one more try has failed (the server is away)
        or after ``timeout`` seconds (a server that answers, slowly): durable calls left are in the spool, the
        others are dropped with a warning."""
        if self._background:
            deadline = time.monotonic() + timeout
            with self._cond:
                failures, self._next_try = self._failures, 0.0
                self._cond.notify_all()
                while (self._pending or self._busy) and self._failures == failures:
                    if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                        self._spool_waiting()
                        break
        else:
            self._drain_inline(force=True)
        with self._cond:
            if not self._pending:
                return True
            volatile = [call for call in self._pending if not call.durable]
            self._pending = deque(call for call in self._pending if call.durable)
        for call in volatile:
            self._report(call, f"{self.failing or 'MLflow too slow'} until this process stopped waiting")
        return False

    # -- sending ----------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending or time.monotonic() < self._next_try:
                    self._cond.wait(None if not self._pending else max(0.0, self._next_try - time.monotonic()))
                self._busy = True
            try:
                self._drain()
            except Exception:  # a bug here must not end the thread: tracking would stop for good
                _log.exception("tracking queue")
                time.sleep(self._retry[0])
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _drain_inline(self, force: bool) -> None:
        with self._cond:
            if self._busy or (not force and time.monotonic() < self._next_try):
                return
            self._busy = True
        try:
            self._drain()
        finally:
            self._busy = False

    def _drain(self) -> None:
        """Send until the queue is empty (running ``on_idle`` when due) or a call must wait."""
        while True:
            call = self._head()
            if call is None:
                with self._cond:
                    due, self._idle_due = self._idle_due, False
                if not due:
                    return
                self._on_idle()
            elif not self._send(call):
                return

    def _head(self) -> Optional[Call]:
        with self._cond:
            if self._pending:
                return self._pending[0]
            if self._spooled and self.spool is not None:
                self.spool.clear()
                self._spooled = False
            return None

    def _send(self, call: Call) -> bool:
        """Try the first call; False when it must wait (the server is away)."""
        call.tries += 1
        result = None
        try:
            result = self._execute(call)
        except Exception as error:
            if self._transient(error) and not self._hopeless(call):
                self._wait(error)
                return False
            self._report(call, f"{type(error).__name__}: {error}")
        with self._cond:
            if self._pending and self._pending[0] is call:  # else flush dropped it meanwhile
                self._pending.popleft()
            if call.seq is not None and self.spool is not None:
                self.spool.ack(call.seq, result)
            if self.failing is not None:
                _log.warning("MLflow answers again; sending the %d call(s) that waited", len(self._pending))
                self.failing, self._pause, self._next_try, self._idle_due = None, self._retry[0], 0.0, True
            self._cond.notify_all()
        return True

    # -- waiting for the server ---------------------------------------------------------------------------------

    def _hopeless(self, call: Call) -> bool:
        """Whether a call that failed again is the problem rather than the server: it failed ``SUSPECT_TRIES``
        times while the server answered other calls (it would block every call after it for good)."""
        if call.tries < 2 or not self._answers():
            return False
        call.strikes += 1
        return call.strikes >= SUSPECT_TRIES

    def _wait(self, error: BaseException) -> None:
        with self._cond:
            self._failures += 1
            if self.failing is None:
                self.failing = f"{UNREACHABLE} ({short_error(error)})"
                self._spool_waiting()
                where = f"kept in {self.spool.directory}" if self.spool is not None else "kept in memory"
                warnings.warn(
                    f"{self.failing}: tracking calls are {where} and sent when it answers; training goes on",
                    RuntimeWarning,
                    stacklevel=2,
                )
                for waiting in self._pending:
                    self._note(waiting)
            self._next_try = time.monotonic() + self._pause
            self._pause = min(2 * self._pause, self._retry[1])
            self._cond.notify_all()

    def _spool_waiting(self) -> None:
        """From now on every waiting durable call is in the spool (those that do not fit are dropped)."""
        if self._spooled or self.spool is None:
            return
        self._spooled = True
        self._pending = deque(call for call in self._pending if call.seq is not None or self._keep(call))

    def _keep(self, call: Call) -> bool:
        """Write a durable call to the spool; False when it is full (the call is dropped and that is said)."""
        if not call.durable or self.spool is None:
            return True
        call.seq = self.spool.append(call.kind, self._spooled_args(call), call.essential)
        if call.seq is None:
            self._report(call, f"the spool {self.spool.directory} is full ({self.spool.limit} bytes)")
        return call.seq is not None

    def _note(self, call: Call) -> None:
        """Tell the call's trial that its tracking waits for the server (once per trial)."""
        if self.failing is None or call.errors is None:
            return
        if not any(line.startswith(UNREACHABLE) for line in call.errors):
            call.errors.append(f"{self.failing}: calls kept and sent when it answers")

    def _report(self, call: Call, why: str) -> None:
        message = f"MLflow: could not {self._describe(call)}: {why}"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        if call.errors is not None:
            call.errors.append(message)


def short_error(error: BaseException) -> str:
    """An error in one line: the type and first line (at most 200 characters) of its root cause -- MLflow wraps a
    refused connection in four layers of HTTP client errors."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:200]}"
