"""Shared scanner pieces: header serialisation, the message spool, the deadline socket
(endpoints: tests/test_endpoint.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest

from smtpguard.scanners import DeadlineSocket, Endpoint, MessageSpool, connect, header_bytes
from support.listeners import full_unix_listener

if TYPE_CHECKING:
    from pathlib import Path

    from scanners.conftest import SlowPeers

#: What a call may take beyond its deadline: the last operation's wake-up, scheduling.
MARGIN = 0.4


def test_header_bytes() -> None:
    assert header_bytes("Subject", "hi") == b"Subject: hi\r\n"
    assert header_bytes("Received", "from a\n\tby b") == b"Received: from a\r\n\tby b\r\n"
    assert header_bytes("Received", "from a\r\n\tby b") == b"Received: from a\r\n\tby b\r\n"
    assert header_bytes("Subject", "caf\udcc3\udca9") == b"Subject: caf\xc3\xa9\r\n"
    assert header_bytes("Subject", "中文") == "Subject: 中文\r\n".encode()


def test_spool_builds_the_message() -> None:
    with MessageSpool() as spool:
        spool.feed_header("From", "a@example.org")
        spool.end_of_headers()
        spool.end_of_headers()  # once only
        spool.feed(b"body\r\n")
        assert spool.getvalue() == b"From: a@example.org\r\n\r\nbody\r\n"
        assert spool.size == len(spool.getvalue())
        assert spool.in_memory


def test_spool_adds_the_empty_line_when_eoh_was_not_seen() -> None:
    with MessageSpool() as spool:
        spool.feed_header("Subject", "x")
        spool.feed(b"a\r\n")
        spool.feed(b"b\r\n")
        assert spool.getvalue() == b"Subject: x\r\n\r\na\r\nb\r\n"


def test_spool_rolls_to_disk_and_truncates() -> None:
    with MessageSpool(memory_cap=100, max_size=1000) as spool:
        spool.end_of_headers()
        for _ in range(20):
            spool.feed(b"x" * 98 + b"\r\n")
        assert not spool.in_memory
        assert spool.truncated
        assert spool.size == 1000
        assert len(spool.getvalue()) == 1000
        assert spool.reader().read(3) == b"\r\nx"  # reader() rewinds


def test_a_peer_sending_a_byte_at_a_time_cannot_outlast_the_deadline(
    slow_peer: SlowPeers,
) -> None:
    """Each byte comes well within any one receive's timeout; the deadline still ends it."""
    endpoint = slow_peer.start(lambda conn: slow_peer.drip(conn, b"x" * 1000, every=0.1))
    received = bytearray()

    def receive_all(sock: DeadlineSocket) -> None:
        while got := sock.recv(100):
            received.extend(got)

    with connect(endpoint, 0.8) as sock:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            receive_all(sock)
        elapsed = time.monotonic() - start
        # Once passed, the deadline refuses at once; expire_in() starts a new phase.
        with pytest.raises(TimeoutError):
            sock.recv(100)
        sock.expire_in(5)
        assert sock.recv(100)
    assert 0.7 <= elapsed < 0.8 + MARGIN
    assert len(received) >= 3


def test_a_unix_socket_with_a_full_listen_queue_is_waited_for(tmp_path: Path) -> None:
    """Review rev80 F1: a unix listener whose queue is full refuses at once (EAGAIN),
    and a clamd stalled for a moment under load let messages through unscanned with
    on_temp_error = "pass". The connect is tried again until its deadline."""
    path = tmp_path / "scanner.sock"
    with full_unix_listener(path) as server:
        endpoint = Endpoint(path=str(path))
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="listen queue full"):
            connect(endpoint, 0.5)
        assert 0.5 <= time.monotonic() - start < 0.5 + MARGIN

        # The scanner takes one off the queue while we wait: we are connected.
        def take_one() -> None:
            server.accept()[0].close()

        threading.Timer(0.3, take_one).start()
        start = time.monotonic()
        with connect(endpoint, 5) as sock:
            assert sock.family == socket.AF_UNIX
        assert 0.3 <= time.monotonic() - start < 0.3 + MARGIN


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace for resolv.conf needs root")
def test_a_host_name_is_looked_up_within_the_deadline(tmp_path: Path) -> None:
    """Review rev120 F2: getaddrinfo ran outside the deadline; with a resolver that does
    not answer, every scan waited the resolver's own timeout (10 s with resolv.conf's
    defaults), whatever the scanner's timeout said. Run in a mount namespace whose
    resolv.conf names a server that takes queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blackhole:
        blackhole.bind(("127.0.0.77", 53))
        resolv = tmp_path / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.77\noptions timeout:5 attempts:2\n")
        code = (
            "import time\n"
            "from smtpguard.scanners import Endpoint, connect, failure_text\n"
            "start = time.monotonic()\n"
            "try:\n"
            "    connect(Endpoint(host='clamd.internal.example', port=3310), 0.5)\n"
            "except OSError as exc:\n"
            "    print(type(exc).__name__, failure_text(exc), round(time.monotonic() - start, 1))\n"
        )
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$1" -c "$2"'
        start = time.monotonic()
        done = subprocess.run(
            ["unshare", "--mount", "sh", "-c", script, str(resolv), sys.executable, code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        # The lookup left running does not hold up the process's exit either.
        assert time.monotonic() - start < 5
    assert done.returncode == 0, done.stderr
    name, *words, seconds = done.stdout.split()
    assert (name, " ".join(words)) == (
        "TimeoutError",
        "looking up clamd.internal.example timed out",
    )
    assert 0.5 <= float(seconds) < 0.5 + MARGIN
