"""Unix vs inet milter socket, with and without the loop-marker header.

Sends N messages one after another through `smtpguard run` (PyPI miltertest client as
the MTA) in four configurations and prints the mean time per message and the ratio to
the unix socket without header modification, all measured in the same run.

    .venv/bin/python -m bench.socket_stall [-n 50]

Why: a milter that answers end of message with two packets (add header, then
continue) over TCP waits for Nagle + delayed ACK (~40 ms); libmilter offers no
TCP_NODELAY. Over a unix socket there is no such wait.
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from tests.support.mtclient import MilterSession
from tests.support.service import make_site, running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_message(address: str | tuple[str, int], nodelay: bool) -> None:
    with MilterSession(address) as s:
        if nodelay:
            s.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect("198.51.100.7")
        s.helo("mail.sender.example")
        s.mail("<friend@sender.example>")
        s.rcpt("<alice@example.com>")
        answer, _mods, early = s.message(
            [("From", "friend@sender.example"), ("Subject", "bench")], "hello\r\n" * 20
        )
        assert answer.kind in ("continue", "accept"), answer
        assert not early


def measure(tmp: Path, socket_kind: str, marker: bool, nodelay: bool, n: int) -> float:
    port = free_port()
    sock = f"inet:{port}@127.0.0.1" if socket_kind == "inet" else "unix:%s"
    extra = {"content": {"add_loop_marker": marker}, "milter": {"log_level": "WARNING"}}
    site = make_site(tmp / f"{socket_kind}-{marker}-{nodelay}", extra)
    if socket_kind == "inet":
        text = site.config.read_text().replace(f'"unix:{site.socket}"', f'"{sock}"')
        site.config.write_text(text)
    address: str | tuple[str, int] = (
        ("127.0.0.1", port) if socket_kind == "inet" else str(site.socket)
    )
    with running(site, wait_for=address) as _svc:
        one_message(address, nodelay)  # warm-up
        start = time.perf_counter()
        for _ in range(n):
            one_message(address, nodelay)
        return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=50, help="messages per configuration")
    args = parser.parse_args()
    with TemporaryDirectory() as d:
        tmp = Path(d)
        results = {}
        # MTA side: "postfix-like" writes each milter packet with TCP_NODELAY semantics
        # (one packet per command); "sendmail-like" sends macro and command packets
        # back to back with Nagle on, as Sendmail does.
        for kind, nodelay in (("unix", False), ("inet", True), ("inet", False)):
            for marker in (False, True):
                results[(kind, nodelay, marker)] = measure(tmp, kind, marker, nodelay, args.n)
    base = results[("unix", False, False)]
    print(f"{'socket':6} {'MTA side':14} {'loop marker':12} {'ms/message':>11} {'ratio':>7}")
    for (kind, nodelay, marker), secs in results.items():
        mta = "-" if kind == "unix" else ("postfix-like" if nodelay else "sendmail-like")
        print(
            f"{kind:6} {mta:14} {('yes' if marker else 'no'):12} {secs * 1000:11.2f}"
            f" {secs / base:7.2f}"
        )


if __name__ == "__main__":
    main()
