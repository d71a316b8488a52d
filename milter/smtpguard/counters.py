"""Same-size bulk counting (``same_size_flood``): hits per key per size bucket in a
sliding window, in process or shared through Redis.

The bucket rule (:class:`SizeBuckets`)
--------------------------------------
A size falls in bucket ``b``:

* relative width ``w`` (e.g. 0.02): ``b = floor(ln(size) / ln(1 + w))`` (sizes below 1
  count as 1), so each bucket spans a factor of ``1 + w``;
* fixed width ``W`` octets: ``b = floor(size / W)``.

A hit is recorded in its own bucket, and the count for a size is the number of hits in
the window in its bucket *and both neighbours* (``b - 1``, ``b``, ``b + 1``). This
removes the edge effect of plain buckets (10 000 and 10 001 octets may straddle a
boundary) and gives a rule that can be stated exactly:

* two sizes within ``w`` of each other (the larger at most ``1 + w`` times the smaller),
  or within ``W`` octets, are **always** counted together;
* two sizes more than ``(1 + w)**2`` apart, or ``2 W`` octets or more apart, are
  **never** counted together;
* in between, it depends on where the bucket boundaries fall.

The caller compares the count with its threshold: :meth:`SizeBucketCounter.hit` returns
the count *including* the hit just recorded (reject when it exceeds the limit), and
:meth:`SizeBucketCounter.peek` the count without recording (for the early decision at
MAIL FROM on the ESMTP ``SIZE=`` value: reject when ``peek(...) + 1`` exceeds the limit).
Note that the MTA adds its own ``Received:`` header before the milter sees the message,
so the octets counted at end of message are a little above the declared ``SIZE=``;
the neighbour buckets absorb that for all but tiny widths.

Backends
--------
:class:`InProcessCounter` keeps timestamps per (key, bucket) in a bounded
:class:`cachetools.TTLCache`; :class:`SqliteCounter` keeps one row per hit in a SQLite
file, so that the worker processes of one host share one view (``[milter] workers``
> 1); :class:`RedisCounter` keeps one sorted set per (key, bucket) in Redis so that
several MTA hosts share one view. :class:`ResilientCounter`
wraps the Redis one with the configured outage behaviour. Backend failures surface as
:class:`CounterError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol, cast

import redis
from cachetools import TTLCache
from redis.backoff import NoBackoff
from redis.retry import Retry

from smtpguard.memo import peek

__all__ = [
    "CounterError",
    "InProcessCounter",
    "RedisCounter",
    "ResilientCounter",
    "SizeBucketCounter",
    "SizeBuckets",
    "SqliteCounter",
    "redis_client",
]

log = logging.getLogger("smtpguard.counters")


class CounterError(Exception):
    """The counter backend could not answer (the caller answers database_temp_error)."""


@dataclass(frozen=True, slots=True)
class SizeBuckets:
    """Which sizes count as "the same size" (see the module documentation)."""

    width: float
    relative: bool = True

    def __post_init__(self) -> None:
        if self.relative and not 0 < self.width < 1:
            raise ValueError("a relative bucket width must be between 0 and 1 (e.g. 0.02)")
        if not self.relative and (self.width < 1 or self.width != int(self.width)):
            raise ValueError("a fixed bucket width must be a whole number of octets >= 1")

    def bucket(self, size: int) -> int:
        if self.relative:
            return math.floor(math.log(max(size, 1)) / math.log1p(self.width))
        return max(size, 0) // int(self.width)

    def neighbourhood(self, size: int) -> tuple[int, int, int]:
        """(lower neighbour, own bucket, upper neighbour)."""
        b = self.bucket(size)
        return b - 1, b, b + 1


class SizeBucketCounter(Protocol):
    """Counts hits per key per size bucket in a sliding window.

    ``key`` identifies the sender as configured (for example ``address|client-ip``).
    Both methods may raise :class:`CounterError`.
    """

    def hit(self, key: str, size: int) -> int:
        """Record a message of ``size`` octets; return the count including it."""
        ...

    def peek(self, key: str, size: int) -> int:
        """The count a message of ``size`` octets would join, without recording it."""
        ...


class InProcessCounter:
    """The embedded backend: this process only, bounded memory.

    At most ``max_keys`` (key, bucket) entries are kept (least recently used go first,
    and an entry expires ``window`` seconds after its last hit); each keeps at most
    ``max_per_bucket`` timestamps, so counts saturate there: keep it above the
    threshold. ``clock`` is injectable for tests (monotonic seconds).
    """

    def __init__(
        self,
        window: float,
        buckets: SizeBuckets,
        *,
        max_keys: int = 100_000,
        max_per_bucket: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.buckets = buckets
        self.max_per_bucket = max_per_bucket
        self._clock = clock
        self._lock = threading.Lock()
        self._hits: TTLCache[tuple[str, int], deque[float]] = TTLCache(
            maxsize=max_keys, ttl=window, timer=clock
        )

    def hit(self, key: str, size: int) -> int:
        return self._count(key, size, add=True)

    def peek(self, key: str, size: int) -> int:
        return self._count(key, size, add=False)

    def _count(self, key: str, size: int, *, add: bool) -> int:
        lower, own, upper = self.buckets.neighbourhood(size)
        with self._lock:
            now = self._clock()
            oldest = now - self.window
            if add:
                stamps = peek(self._hits, (key, own), None)
                if stamps is None:
                    stamps = deque(maxlen=self.max_per_bucket)
                stamps.append(now)
                # Assigning again restarts the entry's time to live.
                self._hits[(key, own)] = stamps
            total = 0
            for bucket in (lower, own, upper):
                stamps = peek(self._hits, (key, bucket), None)
                if stamps is None:
                    continue
                while stamps and stamps[0] <= oldest:
                    stamps.popleft()
                total += len(stamps)
            return total


_SQLITE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS size_slots (
    key    TEXT NOT NULL,     -- BLAKE2b of the counter key (no addresses in the file)
    bucket INTEGER NOT NULL,
    slot   INTEGER NOT NULL,  -- floor(wall-clock seconds / slot length)
    hits   INTEGER NOT NULL,
    PRIMARY KEY (key, bucket, slot)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS size_slots_slot ON size_slots (slot);
"""
#: The window is kept in this many time slots per (key, bucket).
SLOTS_PER_WINDOW: Final = 64


class SqliteCounter:
    """The embedded backend shared by worker processes: hit counts in a SQLite file.

    Hits are counted per (key, bucket) in time slots of ``window / 64``; a hit counts
    as long as its slot overlaps the window, so for at least ``window`` and at most
    ``window * (1 + 1/64)`` seconds after it was made (never less than the in-process
    counter, which keeps every time stamp). Each hit is one write transaction (``BEGIN
    IMMEDIATE``: add to the slot, drop the key's expired slots, sum the three buckets),
    so hits from several processes are counted exactly, in the order SQLite's write
    lock gives them, and a hit costs the same however many came before it (at most 65
    rows per bucket). Expired slots of every key go at most once per ``window / 10``
    seconds. A connection opened before a fork is never used in the child: each
    process opens its own. Every SQLite error raises :class:`CounterError`.

    The file is not the blacklist's (``state.path``): the blacklist keeps its WAL empty
    so that the file can be replaced by rename, which a file written on every message
    could not promise.
    """

    def __init__(
        self,
        path: os.PathLike[str] | str,
        window: float,
        buckets: SizeBuckets,
        *,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self.window = window
        self.buckets = buckets
        self.timeout = timeout
        self.slot_seconds = window / SLOTS_PER_WINDOW
        self._clock = clock
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._next_sweep = 0.0

    def hit(self, key: str, size: int) -> int:
        return self._run(key, size, add=True)

    def peek(self, key: str, size: int) -> int:
        return self._run(key, size, add=False)

    def prepare(self) -> None:
        """Create the file and its table now, and close it again: a supervisor does this
        before it forks its workers, so that they do not all create it at once (the
        switch of a fresh file to WAL does not wait for a lock, it fails)."""
        try:
            with contextlib.closing(self._open()):
                pass
        except sqlite3.Error as exc:
            raise CounterError(f"{self.path}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        # Counts are worth nothing after a power loss; a sync per message is.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SQLITE_SCHEMA)
        return db

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            # After a fork the parent's connection (if any) is left alone, not closed:
            # closing it here would touch the parent's locks.
            self._db, self._pid = self._open(), os.getpid()
        return self._db

    def _run(self, key: str, size: int, *, add: bool) -> int:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16)
        hashed = digest.hexdigest()
        lower, own, upper = self.buckets.neighbourhood(size)
        try:
            with self._lock:
                db = self._connection()
                now = self._clock()
                slot = math.floor(now / self.slot_seconds)
                # The oldest slot that still overlaps the window [now - window, now].
                first = math.floor((now - self.window) / self.slot_seconds)
                if not add:
                    return self._sum(db, hashed, lower, upper, first)
                db.execute("BEGIN IMMEDIATE")
                try:
                    if now >= self._next_sweep:
                        db.execute("DELETE FROM size_slots WHERE slot < ?", (first,))
                        self._next_sweep = now + self.window / 10
                    else:
                        db.execute(
                            "DELETE FROM size_slots"
                            " WHERE key = ? AND bucket BETWEEN ? AND ? AND slot < ?",
                            (hashed, lower, upper, first),
                        )
                    db.execute(
                        "INSERT INTO size_slots VALUES (?, ?, ?, 1)"
                        " ON CONFLICT (key, bucket, slot) DO UPDATE SET hits = hits + 1",
                        (hashed, own, slot),
                    )
                    count = self._sum(db, hashed, lower, upper, first)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                return count
        except sqlite3.Error as exc:
            raise CounterError(f"{self.path}: {exc}") from exc

    @staticmethod
    def _sum(db: sqlite3.Connection, hashed: str, lower: int, upper: int, first: int) -> int:
        row = db.execute(
            "SELECT coalesce(sum(hits), 0) FROM size_slots"
            " WHERE key = ? AND bucket BETWEEN ? AND ? AND slot >= ?",
            (hashed, lower, upper, first),
        ).fetchone()
        return int(row[0])


# Runs atomically in Redis. Redis's own clock (TIME) timestamps the hits, so hosts with
# skewed clocks still share one window. Scores are microseconds (exact in a double
# until the year 2255). Needs Redis >= 5 (effects replication of scripts that call TIME
# before writing).
#   KEYS: lower neighbour, own bucket, upper neighbour
#   ARGV: window in microseconds, unique member, "1" to record a hit, per-bucket cap
_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], now, ARGV[2])
  local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
  if over > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
  end
  redis.call('PEXPIRE', KEYS[2], math.ceil(window / 1000))
end
local total = 0
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  total = total + redis.call('ZCARD', KEYS[i])
end
return total
"""


def redis_client(url: str, *, timeout: float = 0.5) -> redis.Redis:
    """A client for ``redis://HOST:PORT/DB``, ``rediss://...`` or ``unix:///path?db=N``.

    ``timeout`` bounds connect and each command. redis-py retries ten times with
    exponential backoff by default, which would hold every message for seconds while
    Redis is down; here it retries once at once, enough for a pooled connection that a
    restarted Redis closed.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )


class RedisCounter:
    """The shared backend: one sorted set per (key, bucket) in Redis.

    Key names are ``PREFIX:{HASH}:BUCKET`` where HASH is a BLAKE2b digest of the counter
    key (addresses stay out of Redis, and the braces put a key's buckets in one Redis
    Cluster slot, as a script touching several keys requires). A bucket set expires
    ``window`` after its last hit and holds at most ``max_per_bucket`` members, so
    nothing grows without bound. Every Redis or socket failure raises
    :class:`CounterError`.
    """

    def __init__(
        self,
        client: redis.Redis,
        window: float,
        buckets: SizeBuckets,
        *,
        prefix: str = "smtpguard:size",
        max_per_bucket: int = 1000,
    ) -> None:
        self.client = client
        self.window = window
        self.buckets = buckets
        self.prefix = prefix
        self.max_per_bucket = max_per_bucket
        self._script = client.register_script(_LUA)
        # Members must be unique across hosts and calls; the score carries the time.
        self._node = os.urandom(6).hex()
        self._seq = itertools.count()

    def hit(self, key: str, size: int) -> int:
        return self._run(key, size, add=True)

    def peek(self, key: str, size: int) -> int:
        return self._run(key, size, add=False)

    def keys_for(self, key: str, size: int) -> list[str]:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16)
        base = f"{self.prefix}:{{{digest.hexdigest()}}}"
        return [f"{base}:{bucket}" for bucket in self.buckets.neighbourhood(size)]

    def _run(self, key: str, size: int, *, add: bool) -> int:
        member = f"{self._node}:{next(self._seq)}"
        args: list[str | int] = [
            int(self.window * 1_000_000),
            member,
            "1" if add else "0",
            self.max_per_bucket,
        ]
        try:
            # Script uses EVALSHA and loads the script again after NOSCRIPT (a restarted
            # or flushed Redis).
            result = self._script(keys=self.keys_for(key, size), args=args)
        except (redis.RedisError, OSError) as exc:
            raise CounterError(f"redis: {exc}") from exc
        return int(cast(int, result))


OnError = Literal["error", "local"]


class ResilientCounter:
    """A shared counter with a defined behaviour while its backend is unreachable.

    ``on_error = "error"``: raise :class:`CounterError` (the check answers
    ``database_temp_error``, or passes if its ``on_temp_error`` says so).
    ``on_error = "local"``: count in ``local`` (an :class:`InProcessCounter`) instead;
    limits then hold per host until the backend is back. Every hit is also recorded
    locally while the backend works, so at the start of an outage the local view
    already holds this host's own recent messages instead of starting from zero.

    The outage is logged once when it starts (WARNING) and once when it ends (INFO),
    never per message. After a failure the backend is not asked again for
    ``retry_interval`` seconds, so messages during an outage do not each wait for a
    connect timeout.
    """

    def __init__(
        self,
        primary: SizeBucketCounter,
        *,
        on_error: OnError = "error",
        local: SizeBucketCounter | None = None,
        retry_interval: float = 5.0,
        name: str = "redis",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if on_error == "local" and local is None:
            raise ValueError('on_error = "local" needs a local counter')
        self.primary = primary
        self.on_error = on_error
        self.local = local
        self.retry_interval = retry_interval
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._next_try = 0.0
        self._last_error = ""
        self._during_outage = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def hit(self, key: str, size: int) -> int:
        return self._call("hit", key, size)

    def peek(self, key: str, size: int) -> int:
        return self._call("peek", key, size)

    def _call(self, op: Literal["hit", "peek"], key: str, size: int) -> int:
        now = self._clock()
        with self._lock:
            ask = self._down_since is None or now >= self._next_try
        if ask:
            try:
                count = _method(self.primary, op)(key, size)
            except CounterError as exc:
                self._failed(exc, now)
            else:
                self._recovered(now)
                if op == "hit" and self.on_error == "local" and self.local is not None:
                    self.local.hit(key, size)
                return count
        with self._lock:
            self._during_outage += 1
            error = self._last_error
        if self.on_error == "error" or self.local is None:
            raise CounterError(f"{self.name} unreachable: {error}")
        return _method(self.local, op)(key, size)

    def _failed(self, exc: CounterError, now: float) -> None:
        with self._lock:
            self._next_try = now + self.retry_interval
            self._last_error = str(exc)
            if self._down_since is not None:
                return
            self._down_since = now
            self._during_outage = 0
        log.warning(
            "counter backend %s unreachable (%s); %s until it answers again",
            self.name,
            exc,
            "counting on this host only" if self.on_error == "local" else "answering errors",
        )

    def _recovered(self, now: float) -> None:
        with self._lock:
            if self._down_since is None:
                return
            lasted, messages = now - self._down_since, self._during_outage
            self._down_since = None
        log.info(
            "counter backend %s reachable again after %.1f s; %d calls %s meanwhile",
            self.name,
            lasted,
            messages,
            "counted locally" if self.on_error == "local" else "failed",
        )


def _method(counter: SizeBucketCounter, op: Literal["hit", "peek"]) -> Callable[[str, int], int]:
    return counter.hit if op == "hit" else counter.peek
