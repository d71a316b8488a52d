"""A null pymilter milter: the floor for any milter built on pymilter.

It implements the same callbacks as smtpguard's adapter (connect, hello, envfrom,
envrcpt, data, header, eoh, body, eom, abort, close), so the MTA sends it the same
protocol steps and waits for the same answers, and every one answers CONTINUE. What it
costs is libmilter (a thread per session, a packet round trip per step) plus pymilter
(a Python call per step under the GIL): all that smtpguard cannot avoid.

    .venv/bin/python -m bench.null_milter unix:/path/to/null.sock

Stops on SIGTERM (libmilter's own signal handling). The unix socket is created
world-writable so that Postfix's smtpd (user postfix) can connect.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import Milter


class NullMilter(Milter.Base):  # type: ignore[misc]  # pymilter ships no types
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return int(Milter.CONTINUE)

    def hello(self, hostname: str) -> int:
        return int(Milter.CONTINUE)

    def envfrom(self, mailfrom: str, *args: str) -> int:
        return int(Milter.CONTINUE)

    def envrcpt(self, rcptto: str, *args: str) -> int:
        return int(Milter.CONTINUE)

    def data(self) -> int:
        return int(Milter.CONTINUE)

    def header(self, name: str, value: str) -> int:
        return int(Milter.CONTINUE)

    def eoh(self) -> int:
        return int(Milter.CONTINUE)

    def body(self, chunk: bytes) -> int:
        return int(Milter.CONTINUE)

    def eom(self) -> int:
        return int(Milter.CONTINUE)

    def abort(self) -> int:
        return int(Milter.CONTINUE)

    def close(self) -> int:
        return int(Milter.CONTINUE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="unix:/path or inet:PORT@127.0.0.1")
    parser.add_argument("--timeout", type=int, default=600)
    args = parser.parse_args()
    os.umask(0o111)  # socket mode 0666: Postfix's smtpd must be able to connect
    Milter.factory = NullMilter
    Milter.runmilter("nullmilter", args.socket, args.timeout)


if __name__ == "__main__":
    main()
