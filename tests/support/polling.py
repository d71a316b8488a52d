"""Waiting for a condition, and the processes a supervisor started (tests never sleep
to synchronise: they poll for what they wait for)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

POLL = 0.02


def wait_until(condition: Callable[[], bool], deadline: float = 10.0) -> float:
    """Poll ``condition`` until true; fail after ``deadline`` s. Returns seconds waited."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < deadline, "condition not reached"
        time.sleep(POLL)
    return time.monotonic() - start


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
