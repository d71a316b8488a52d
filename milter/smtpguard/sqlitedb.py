"""A small pool of SQLite connections shared by libmilter's worker threads, with a
short-lived cache of query results.

libmilter runs sessions on many short-lived threads, so a connection per thread meant
opening the file (and checking the schema) once per SMTP session. One connection
behind a lock was worse under load: ``execute`` releases the GIL while the lock is
held, and getting the GIL back can take a whole switch interval, so lookups queued
behind each other (~5 ms each at 10 concurrent sessions). A pool lets concurrent
lookups run on their own connections; the lock only guards the list of idle ones.

Even on its own connection a query gives the GIL up several times (prepare, each step,
reset), and under concurrent sessions every give-up is a hand-over to another callback
thread and a wait to get it back: half of the futex calls per session in
bench/throughput.py's direct protocol run at 10 sessions. So results are kept for
``cache_ttl`` seconds (directory.cache_ttl, state.cache_ttl): the same sender and
recipients come back session after session, and a change made with the CLI takes
effect within that time. Errors are never cached.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache

#: Distinct (query, arguments) results kept at most.
CACHE_ENTRIES = 20_000


class ConnectionPool:
    def __init__(
        self,
        opener: Callable[[], sqlite3.Connection],
        size: int = 8,
        *,
        cache_ttl: float = 0.0,
        cache_size: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._opener = opener
        self._size = size
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # cachetools is not thread-safe: the cache is used under self._lock.
        self._cache: TTLCache[tuple[str, tuple[Any, ...]], tuple[Any, ...]] | None = (
            TTLCache(cache_size, ttl=cache_ttl, timer=clock) if cache_ttl > 0 else None
        )

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Run a read query (or answer it from the cache). A connection that raised is
        closed, not reused (the file may have been replaced), and the error is raised."""
        cache = self._cache
        if cache is not None:
            with self._lock:
                hit = cache.get((sql, args))
            if hit is not None:
                return list(hit)
        rows = self._execute(sql, args)
        if cache is not None:
            with self._lock:
                cache[(sql, args)] = tuple(rows)
        return rows

    def _execute(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
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
