"""A null pymilter milter: the floor for any milter built on pymilter.

It implements the same callbacks as smtpguard's adapter (connect, hello, envfrom,
envrcpt, data, header, eoh, body, eom, abort, close), so the MTA sends it the same
protocol steps and waits for the same answers, and every one answers CONTINUE. What it
costs is libmilter (a thread per session, a packet round trip per step) plus pymilter
(a Python call per step under the GIL): all that smtpguard cannot avoid.

    .venv/bin/python -m bench.null_milter unix:/path/to/null.sock

``--work-us N`` makes every callback spend N microseconds of CPU in Python first (a
busy loop on the thread's CPU clock): a milter that does as much Python work per step
as a real one and nothing else, which bench/gil_contention.py uses to show what
libmilter's thread per session costs under the GIL.

Stops on SIGTERM (libmilter's own signal handling). The unix socket is created
world-writable so that Postfix's smtpd (user postfix) can connect.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import Milter


class NullMilter(Milter.Base):  # type: ignore[misc]  # pymilter ships no types
    #: CPU seconds each callback spends before answering (``--work-us``).
    work = 0.0

    def _work(self) -> None:
        if self.work:
            end = time.thread_time() + self.work
            while time.thread_time() < end:
                pass

    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        self._work()
        return int(Milter.CONTINUE)

    def hello(self, hostname: str) -> int:
        self._work()
        return int(Milter.CONTINUE)

    def envfrom(self, mailfrom: str, *args: str) -> int:
        self._work()
        return int(Milter.CONTINUE)

    def envrcpt(self, rcptto: str, *args: str) -> int:
        self._work()
        return int(Milter.CONTINUE)

    def data(self) -> int:
        self._work()
        return int(Milter.CONTINUE)

    def header(self, name: str, value: str) -> int:
        self._work()
        return int(Milter.CONTINUE)

    def eoh(self) -> int:
        self._work()
        return int(Milter.CONTINUE)

    def body(self, chunk: bytes) -> int:
        self._work()
        return int(Milter.CONTINUE)

    def eom(self) -> int:
        self._work()
        return int(Milter.CONTINUE)

    def abort(self) -> int:
        self._work()
        return int(Milter.CONTINUE)

    def close(self) -> int:
        self._work()
        return int(Milter.CONTINUE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="unix:/path or inet:PORT@127.0.0.1")
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--work-us", type=float, default=0.0, help="CPU per callback")
    args = parser.parse_args()
    NullMilter.work = args.work_us / 1e6
    os.umask(0o111)  # socket mode 0666: Postfix's smtpd must be able to connect
    Milter.factory = NullMilter
    Milter.runmilter("nullmilter", args.socket, args.timeout)


if __name__ == "__main__":
    main()
