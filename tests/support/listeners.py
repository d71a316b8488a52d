"""A unix listener that accepts nothing: a scanner hung under load, whose listen queue
is full, so a connect waits for its deadline (Linux retries a full unix queue only as
long as the connecting side waits)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def full_unix_listener(path: Path) -> Iterator[socket.socket]:
    """A listening socket at ``path`` whose queue is full; yields the server socket
    (``accept()`` on it takes one off the queue)."""
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen(0)
        queued: list[socket.socket] = []
        try:
            while len(queued) < 8:  # fill the queue: the kernel's limit is backlog + 1
                client = socket.socket(socket.AF_UNIX)
                client.setblocking(False)
                try:
                    client.connect(str(path))
                except BlockingIOError:
                    client.close()
                    break
                queued.append(client)
            assert 0 < len(queued) < 8
            yield server
        finally:
            for client in queued:
                client.close()
