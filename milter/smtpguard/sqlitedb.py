"""A small pool of SQLite connections shared by libmilter's worker threads.

libmilter runs sessions on many short-lived threads, so a connection per thread meant
opening the file (and checking the schema) once per SMTP session. One connection
behind a lock was worse under load: ``execute`` releases the GIL while the lock is
held, and getting the GIL back can take a whole switch interval, so lookups queued
behind each other (~5 ms each at 10 concurrent sessions). A pool lets concurrent
lookups run on their own connections; the lock only guards the list of idle ones.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any


class ConnectionPool:
    def __init__(self, opener: Callable[[], sqlite3.Connection], size: int = 8) -> None:
        self._opener = opener
        self._size = size
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Run a read query. A connection that raised is closed, not reused (the file
        may have been replaced), and the error is raised."""
        with self._lock:
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._opener()
        try:
            rows = db.execute(sql, args).fetchall()
        except sqlite3.Error:
            db.close()
            raise
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(db)
                return rows
        db.close()
        return rows
