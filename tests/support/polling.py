"""Waiting for a condition, and the processes a supervisor started (tests never sleep
to synchronise: they poll for what they wait for)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

POLL = 0.02

_T = TypeVar("_T")


def wait_until(condition: Callable[[], bool], deadline: float = 10.0) -> float:
    """Poll ``condition`` until true; fail after ``deadline`` s. Returns seconds waited."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < deadline, "condition not reached"
        time.sleep(POLL)
    return time.monotonic() - start


def holds_for(condition: Callable[[], bool], seconds: float) -> None:
    """Poll ``condition`` for ``seconds``; fail the moment it is false (what must not
    happen: a service that must not exit, a line that must not come)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert condition(), "condition no longer holds"
        time.sleep(POLL)
    assert condition(), "condition no longer holds"


def threads_done(name: str, deadline: float = 10.0) -> float:
    """Wait until no thread of this process is called ``name`` (a scanner's canary)."""
    return wait_until(lambda: not any(t.name == name for t in threading.enumerate()), deadline)


def poll_for(get: Callable[[], _T | None], deadline: float = 10.0, what: object = "") -> _T:
    """Poll ``get`` until it returns something other than None, and return that; fail
    after ``deadline`` s, with ``what`` (called if callable) in the message."""
    start = time.monotonic()
    while True:
        found = get()
        if found is not None:
            return found
        if time.monotonic() - start >= deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"not reached in {deadline} s: {detail}")
        time.sleep(POLL)


def scrape(port: int, deadline: float = 10.0) -> str:
    """The text of ``/metrics`` on ``port``, once the endpoint answers."""

    def get() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            return None

    return poll_for(get, deadline, "metrics endpoint not up")


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after ")".
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def trickle(conn: socket.socket, stop: threading.Event, pause: float, repeat: int = 4) -> None:
    """Send a metrics request on ``conn`` a byte every ``pause`` s (a slow client),
    until ``stop`` is set or the server cuts it off; ``conn`` is closed then."""
    with conn:
        for byte in b"GET /metrics HTTP/1.0\r\n" * repeat:
            if stop.wait(pause):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return  # cut off at its deadline
