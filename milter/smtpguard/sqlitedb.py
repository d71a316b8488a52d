"""One SQLite connection shared by libmilter's worker threads.

libmilter runs sessions on many short-lived threads, so a connection per thread meant
opening the file (and checking the schema) once per SMTP session. One connection
behind a lock costs a few microseconds of waiting instead; SQLite serializes access to
a connection anyway.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any


class SharedConnection:
    def __init__(self, opener: Callable[[], sqlite3.Connection]) -> None:
        self._opener = opener
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Run a read query; on any SQLite error the connection is dropped and reopened
        next time (the file may have been replaced), and the error is raised."""
        with self._lock:
            try:
                if self._db is None:
                    self._db = self._opener()
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                raise
