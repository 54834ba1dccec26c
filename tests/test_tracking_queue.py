"""The tracking queue and its spool, with a stand-in server (a function that answers or refuses): order kept through
an outage, refused calls dropped and told, the spool bounded, removed once drained, and taken over from a dead
process. The MLflow tracker on a real server is tested in tests/test_tracking.py."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tuner.tracking.calls import UNREACHABLE, Call, CallQueue
from tuner.tracking.spool import Spool


class StandIn:
    """Answers calls in order while ``up``; a call of kind ``bad`` is refused for good."""

    def __init__(self) -> None:
        self.up, self.received = True, []

    def __call__(self, call: Call) -> int:
        if not self.up:
            raise ConnectionError("connection refused")
        if call.kind == "bad":
            raise ValueError("the server says this call is wrong")
        self.received.append(call.args["n"])
        return call.args["n"]


def _queue(execute, spool_dir: Path, background: bool = False, limit: int = 1 << 20, **options) -> CallQueue:
    return CallQueue(
        execute,
        background=background,
        transient=lambda error: isinstance(error, ConnectionError),
        describe=lambda call: f"send {call.kind}",
        spool=Spool(spool_dir, limit),
        retry=(0.0, 0.0),
        **options,
    )


def _spooled(spool_dir: Path) -> list[dict]:
    return [json.loads(line) for path in spool_dir.glob("*.jsonl") for line in path.read_text().splitlines()]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def test_calls_keep_their_order_through_an_outage_and_the_spool_is_removed_once_they_are_sent(tmp_path):
    server, errors = StandIn(), []
    queue = _queue(server, tmp_path)
    queue.submit(Call("log", {"n": 0}, errors=errors))
    server.up = False
    queue.submit(*(Call("log", {"n": n}, errors=errors) for n in (1, 2, 3)))
    assert server.received == [0] and not queue.flush()
    assert [entry["args"]["n"] for entry in _spooled(tmp_path) if "seq" in entry] == [1, 2, 3]
    assert errors[0].startswith(UNREACHABLE) and len(errors) == 1  # told once, not once per call
    server.up = True
    assert queue.flush()
    assert server.received == [0, 1, 2, 3] and not list(tmp_path.glob("*.jsonl"))


def test_a_refused_call_is_told_and_dropped_and_the_next_goes_on(tmp_path):
    server, errors = StandIn(), []
    queue = _queue(server, tmp_path)
    queue.submit(Call("bad", {"n": 0}, errors=errors), Call("log", {"n": 1}, errors=errors))
    assert queue.flush() and server.received == [1]
    assert errors == ["MLflow: could not send bad: ValueError: the server says this call is wrong"]


def test_a_call_that_keeps_failing_while_the_server_answers_others_is_dropped(tmp_path):
    server, errors = StandIn(), []

    def stuck(call: Call) -> int:
        if call.kind == "stuck":
            raise ConnectionError("the server breaks on this one call")
        return server(call)

    queue = _queue(stuck, tmp_path, answers=lambda: True)
    queue.submit(Call("stuck", {"n": 0}, errors=errors), Call("log", {"n": 1}))
    while not queue.flush():  # tried again until it failed 3 times while the server answered
        pass
    assert server.received == [1] and "could not send stuck" in errors[-1]


def test_flush_gives_up_after_one_more_try_keeping_durable_calls_and_dropping_the_others(tmp_path):
    server, errors = StandIn(), []
    queue = _queue(server, tmp_path, background=True)
    server.up = False
    queue.submit(Call("log", {"n": 1}), Call("state", {"n": 2}, durable=False, errors=errors))
    assert not queue.flush()
    assert [entry["args"]["n"] for entry in _spooled(tmp_path) if "seq" in entry] == [1]
    assert errors and errors[-1].startswith("MLflow: could not send state")
    server.up = True
    assert queue.flush() and server.received == [1]


def test_a_full_spool_drops_bulky_calls_with_a_message_and_keeps_essential_ones(tmp_path):
    server, errors = StandIn(), []
    queue = _queue(server, tmp_path, limit=300)
    server.up = False
    queue.submit(Call("log", {"n": 0, "pad": "x" * 100}, errors=errors))
    queue.submit(Call("log", {"n": 1, "pad": "x" * 200}, errors=errors))
    queue.submit(Call("end", {"n": 2}, essential=True, errors=errors))
    assert any("spool" in line and "is full" in line for line in errors)
    server.up = True
    assert queue.flush() and server.received == [0, 2]


LEFT_BEHIND = """
import os, sys
from tuner.tracking.spool import Spool
spool = Spool(sys.argv[1], 1 << 20)
first = spool.append("create", {"n": 1})
spool.append("log", {"n": 2})
spool.ack(first, "run-1")
os._exit(0)  # killed: the file stays, nobody holds it
"""


def test_a_dead_process_spool_is_taken_over_once_and_a_live_one_is_left_alone(tmp_path):
    subprocess.run([sys.executable, "-c", LEFT_BEHIND, str(tmp_path)], check=True, cwd=Path(__file__).parents[1])
    alive = Spool(tmp_path, 1 << 20)
    alive.append("log", {"n": 9})  # this process's own file, locked
    taker = Spool(tmp_path, 1 << 20)
    entries = taker.adopt()
    assert [(e.kind, e.args["n"], e.done, e.result) for e in entries] == [
        ("create", 1, True, "run-1"),
        ("log", 2, False, None),
    ]
    assert taker.adopt() == [] and len(list(tmp_path.glob("*.jsonl"))) == 1  # only the live one is left
    alive.clear()
    assert not list(tmp_path.glob("*.jsonl"))
