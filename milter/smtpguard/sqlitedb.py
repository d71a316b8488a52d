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

A file replaced by rename (``cp new tmp; mv tmp directory.sqlite``, what rsync and
configuration management do) is a new inode: open connections keep reading the old,
deleted one for as long as they live, and with a busy pool that is forever. So the
pool compares the file's device and inode with the ones it saw last, at most once per
``cache_ttl`` or :data:`MIN_CHECK_INTERVAL`, whichever is longer, not at each lookup
(~13 a session); on a change it closes its idle connections, closes the busy ones when
they come back, and drops the cached results. So it does, quietly, for a file whose size
or modification time changed: one written over in place (``cp``) keeps its inode, and
SQLite's own check of a connection's cached pages can miss it (:class:`_Seen`). A
file that disappears after it was seen fails every query (and is looked for at each
one) until it is back: the old file's answers, or an empty file created in its place,
would be wrong silently.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from cachetools import TTLCache

from smtpguard.memo import peek
from smtpguard.outage import Outage

#: Distinct (query, arguments) results kept at most.
CACHE_ENTRIES = 20_000

#: Seconds between two checks of the watched file at least, whatever ``cache_ttl``
#: (0 included). A check at every lookup made an uncached lookup half again as dear
#: (~11 us on top of ~22 us: the ``stat``, two more lock round trips, and a slower
#: query after the system call); ten checks a second per pool cost nothing, and a
#: replaced file is still seen before the next message is.
MIN_CHECK_INTERVAL = 0.1

log = logging.getLogger("smtpguard")


class _Seen(NamedTuple):
    """What a check of the watched file found."""

    dev: int
    ino: int
    #: The inode of its WAL index (0: none).
    wal_index: int
    #: Its size and modification time: a file written over in place (``cp backup
    #: directory.sqlite``) keeps its inode, and SQLite keeps a connection's cached
    #: pages while the file's change counter reads the same, which two files that
    #: went through as many writes share (review rev204: the restored users got 550
    #: until a restart).
    size: int
    mtime_ns: int


def _wal_index(path: str) -> int:
    """The inode of the WAL index (``-shm``) beside a database in WAL mode; 0 for
    none."""
    try:
        return os.stat(f"{path}-shm").st_ino
    except OSError:
        return 0


class ConnectionPool:
    def __init__(
        self,
        opener: Callable[[], sqlite3.Connection],
        size: int = 8,
        *,
        cache_ttl: float = 0.0,
        cache_size: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        watch: Path | None = None,
        label: str = "database file",
    ) -> None:
        """``watch``: the file ``opener`` opens, checked for replacement or removal
        (``label`` names it in log lines)."""
        self._opener = opener
        self._size = size
        self._clock = clock
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # cachetools is not thread-safe: the cache is used under self._lock.
        self._cache: TTLCache[tuple[str, tuple[Any, ...]], tuple[Any, ...]] | None = (
            TTLCache(cache_size, ttl=cache_ttl, timer=clock) if cache_ttl > 0 else None
        )
        self._watch = None if watch is None else os.fspath(watch)
        self._label = label
        self._every = max(cache_ttl, MIN_CHECK_INTERVAL)
        # When the file is due for a check; never without a file to watch.
        self._next_check = -math.inf if watch is not None else math.inf
        # The file the pool's connections read; None until seen.
        self._seen: _Seen | None = None
        # Why the file seen before is gone (then every query fails), or None.
        self._gone: str | None = None
        # Bumped at each reopen: connections and results of an older one are dropped.
        self._generation = 0
        # Checks started and the latest one applied: two checks can overlap while the
        # file is missing, and an older answer must not undo a newer one.
        self._checks = self._applied = 0

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Run a read query (or answer it from the cache). A connection that raised is
        closed, not reused (the file may have been replaced), and the error is raised;
        so is an OperationalError while the watched file is missing."""
        cache = self._cache
        watch = self._watch
        if watch is not None:
            now = self._clock()
            if now >= self._next_check:
                self._check_file(watch, now)
            if self._gone is not None:
                raise sqlite3.OperationalError(self._gone)
        if cache is not None:
            with self._lock:
                hit = peek(cache, (sql, args), None)
            if hit is not None:
                return list(hit)
        rows, generation = self._execute(sql, args)
        if cache is not None:
            with self._lock:
                # A lookup that ran on the file replaced meanwhile must not cache it.
                if generation == self._generation:
                    cache[(sql, args)] = tuple(rows)
        return rows

    def _execute(self, sql: str, args: tuple[Any, ...]) -> tuple[list[Any], int]:
        with self._lock:
            generation = self._generation
            db = self._idle.pop() if self._idle else None
        fresh = db is None
        if db is None:
            db = self._opener()
        try:
            rows = db.execute(sql, args).fetchall()
        except sqlite3.Error:
            db.close()
            raise
        if fresh and self._watch is not None:
            self._note_wal_index(self._watch)
        with self._lock:
            if generation == self._generation and len(self._idle) < self._size:
                self._idle.append(db)
                return rows, generation
            if self._seen is not None:
                # This close may remove the WAL index (the pool's last connection), as
                # _reopen's: not a removal by someone else (review rev155 F3: a store
                # retired by a reload said "WAL index removed" at every query).
                self._seen = self._seen._replace(wal_index=0)
        db.close()
        return rows, generation

    @property
    def gone(self) -> bool:
        """Whether the watched file is missing since it was seen (logged by the pool)."""
        return self._gone is not None

    def _note_wal_index(self, path: str) -> None:
        """After a connection's first read: the WAL index it made or joined, if none
        was known. A file check may have run before any connection existed, and
        without this the index's removal would look like no change (_record)."""
        index = _wal_index(path)
        with self._lock:
            if index and self._seen is not None and not self._seen.wal_index:
                self._seen = self._seen._replace(wal_index=index)

    def _check_file(self, path: str, now: float) -> None:
        with self._lock:
            if now < self._next_check:
                return  # another thread is checking
            self._next_check = now + self._every
            self._checks += 1
            ticket = self._checks
        try:
            st = os.stat(path)
            found: _Seen | None = _Seen(
                st.st_dev, st.st_ino, _wal_index(path), st.st_size, st.st_mtime_ns
            )
            problem = ""
        except OSError as exc:
            found, problem = None, exc.strerror or str(exc)
        if found is not None and found == self._seen and self._gone is None:
            return  # the usual answer, without the lock; an older check may say so too
        with self._lock:
            if ticket < self._applied:
                return  # a later check has answered already
            self._applied = ticket
            text = self._record(found, problem, now)
            stale = self._reopen() if text is not None else []
        for db in stale:
            db.close()
        if text:
            level = logging.ERROR if found is None else logging.INFO
            log.log(level, "%s %s %s", self._label, path, text)

    def _record(self, found: _Seen | None, problem: str, now: float) -> str | None:
        """Under the lock: take in what a check found. None: nothing to do; else the
        connections are to be reopened, with this text in the log line ("": none)."""
        seen, gone = self._seen, self._gone
        if found is None:
            # Looked for at each query while missing: used as soon as it is there.
            self._next_check = now
            if seen is None or gone is not None:
                return None  # not there yet (the opener creates or reports it), or known
            self._gone = problem
            return f"missing (was inode {seen.ino}): {problem}; lookups fail until it is back"
        self._seen, self._gone = found, None
        if found == seen and gone is None:
            return None
        if seen is None:
            # First sight. Connections opened before it (the blacklist creates its file
            # at its first query) may be on a file replaced since: reopened quietly. At
            # a first query that finds the file there are none.
            return ""
        if gone is not None:
            return f"back (inode {found.ino}): reopened"
        if found[:2] != seen[:2]:
            return f"replaced (inode {seen.ino} -> {found.ino}): reopened"
        if seen.wal_index and found.wal_index != seen.wal_index:
            # The -wal and -shm files removed (by hand, a restore) under connections
            # that keep the unlinked index: they would never see another process's
            # writes again, which go through the new ones.
            return f"WAL index {'replaced' if found.wal_index else 'removed'}: reopened"
        if (found.size, found.mtime_ns) != (seen.size, seen.mtime_ns):
            # Written in place: by SQLite (an import, a checkpoint), which the cached
            # results need anyway, or over it by a copy, which the connections' own
            # caches may not see. Quiet: every import and checkpoint does it.
            return ""
        return None  # the first connection in WAL mode made the index

    def close(self) -> None:
        """Close the idle connections and keep none from now on (a store retired by a
        reload): a query still running gets its answer, on a connection of its own that
        is closed after it."""
        with self._lock:
            stale = self._reopen()
            self._size = 0
        for db in stale:
            db.close()

    def _reopen(self) -> list[sqlite3.Connection]:
        """Start a new generation (under the lock); the idle connections to close."""
        self._generation += 1
        if self._seen is not None:
            # Closing the pool's last connection removes the WAL index; the next
            # connection makes another, which _note_wal_index records. Compared with
            # the old one, it would pass for a replacement, and each reopen would
            # cause the next (found by review, on tmpfs, where inodes are not reused).
            self._seen = self._seen._replace(wal_index=0)
        stale, self._idle = self._idle, []
        if self._cache is not None:
            self._cache.clear()
        return stale


class WatchedFile(ABC):
    """The SQLite file of a store (the directory, the blacklist), read through a pool
    that watches it: a file replaced by rename is reopened within ``cache_ttl``, a
    removed one is an error (the module docstring says why and how)."""

    #: Names the file in the pool's log lines.
    label = "database file"

    def __init__(
        self,
        path: Path,
        timeout: float,
        *,
        cache_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self._shared = ConnectionPool(
            self._open, cache_ttl=cache_ttl, clock=clock, watch=path, label=self.label
        )
        self._outage = Outage(clock=clock)
        # Whether the outage's start was logged here (not when the pool had logged the
        # file's removal itself, with its end).
        self._failure_logged = False

    def close(self) -> None:
        """Close the file's connections (see :meth:`ConnectionPool.close`)."""
        self._shared.close()

    @abstractmethod
    def _open(self) -> sqlite3.Connection:
        """A new connection for the pool."""

    def _lookups_fail(self, why: str) -> None:
        """A lookup failed for good: logged once, when it starts an outage (review rev83:
        a corrupt or locked file, or a state file removed before a reload, deferred
        mail with nothing but each decision line's detail to say why)."""
        if not self._outage.failed(why, self._outage.clock()):
            return
        # A removal the pool saw is logged by the pool, with its end.
        self._failure_logged = not self._shared.gone
        if self._failure_logged:
            log.error(
                "%s %s: lookups fail: %s; the mail that needs them is deferred until"
                " they answer again (logged once)",
                self.label,
                self.path,
                why,
            )

    def _lookups_answer(self) -> None:
        """A lookup answered: the end of an outage, if one was on."""
        if not self._outage.down:
            return
        lasted = self._outage.recovered(self._outage.clock())
        if lasted is not None and self._failure_logged:
            log.info("%s %s answering again after %.1f s", self.label, self.path, lasted)

    def _connect_existing(self, mode: str) -> sqlite3.Connection:
        """A connection any thread may use, to the file only if it exists (``mode`` ro
        or rw): a file removed meanwhile fails here instead of coming back empty."""
        return sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode={mode}",
            uri=True,
            timeout=self.timeout,
            check_same_thread=False,
        )
