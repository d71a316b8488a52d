"""Scanners that are slow on purpose: loopback servers running a test's script per
connection, in threads, paced by the script itself (``slow_peer``)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smtpguard.scanners import Endpoint

#: Talks to one client (the connected socket); ends when the test does at the latest.
Script = Callable[[socket.socket], None]


class SlowPeers:
    """Servers started with :meth:`start`; all stopped when the test ends."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        #: Set at the end of the test: pacing waits on it, so every script ends then.
        self.stop = threading.Event()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def start(self, script: Script, *, unix: bool = False) -> Endpoint:
        """The endpoint of a server (TCP on loopback, or a unix socket) running
        ``script`` for every connection."""
        if unix:
            path = str(self._tmp_path / f"peer{len(self._listeners)}.sock")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            endpoint = Endpoint(path=path)
        else:
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            endpoint = Endpoint(host="127.0.0.1", port=listener.getsockname()[1])
        listener.listen()
        self._listeners.append(listener)
        self._run(self._accept, script, listener)
        return endpoint

    def drip(self, conn: socket.socket, data: bytes, every: float) -> None:
        """Send ``data`` one octet every ``every`` seconds (until the test ends)."""
        for octet in data:
            if self.stop.wait(every):
                return
            conn.sendall(bytes([octet]))

    def read_slowly(self, conn: socket.socket, size: int, every: float) -> None:
        """Read at most ``size`` octets every ``every`` seconds until the client leaves."""
        # A small receive buffer, so the client's sends wait for these reads early.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        while not self.stop.wait(every):
            if not conn.recv(size):
                return

    def idle(self) -> None:
        """Wait for the end of the test (a peer that has stopped talking)."""
        self.stop.wait()

    def _accept(self, script: Script, listener: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was shut down at the end of the test
            self._run(self._serve, script, conn)

    def _serve(self, script: Script, conn: socket.socket) -> None:
        # The client hanging up (it gave up, as it should) is no error of the peer.
        with conn, contextlib.suppress(OSError):
            script(conn)

    def _run(self, target: Callable[[Script, socket.socket], None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def close(self) -> None:
        self.stop.set()
        for listener in self._listeners:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def slow_peer(tmp_path: Path) -> Iterator[SlowPeers]:
    peers = SlowPeers(tmp_path)
    yield peers
    peers.close()
