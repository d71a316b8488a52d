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
The octets counted at end of message may be a little above the declared ``SIZE=``
(header fields the MTA added for the message, such as Postfix's missing ``Date:``; its
own ``Received:`` does not reach the milter): the neighbour buckets absorb that for all
but tiny widths.

Backends
--------
:class:`InProcessCounter` keeps timestamps per (key, bucket) in a bounded
:class:`cachetools.TTLCache`; :class:`SharedCounter` keeps hit counts per time slot in
a hash table in a memory-mapped file, so that the worker processes of one host share
one view (``[milter] workers`` > 1); :class:`RedisCounter` keeps one sorted set per
(key, bucket) in Redis so that several MTA hosts share one view.
:class:`ResilientCounter` wraps the Redis one with the configured outage behaviour.
Backend failures surface as :class:`CounterError`.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import fcntl
import functools
import hashlib
import itertools
import logging
import math
import mmap
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeVar, cast

import redis
from cachetools import TTLCache
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from smtpguard.memo import peek
from smtpguard.outage import Outage, back, trouble

__all__ = [
    "CounterError",
    "InProcessCounter",
    "RedisCounter",
    "ResilientCounter",
    "SharedCounter",
    "SizeBucketCounter",
    "SizeBuckets",
    "redis_client",
]

log = logging.getLogger("smtpguard.counters")

_T = TypeVar("_T")


class CounterError(Exception):
    """The counter backend could not answer (the caller answers database_temp_error)."""


# One width per configuration: its logarithm once, not per message.
_log1p = functools.lru_cache(maxsize=64)(math.log1p)


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
            return math.floor(math.log(max(size, 1)) / _log1p(self.width))
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


def keep_at_least(counter: SizeBucketCounter, per_bucket: int) -> None:
    """Let ``counter`` keep at least ``per_bucket`` hits per (key, bucket), never fewer
    than it does (a reload's new threshold: the running configuration shares the
    counter, and stays if the reload is refused). A counter without such a cap (the
    shared file: a count per time slot) keeps what it does."""
    widen = getattr(counter, "keep_at_least", None)
    if widen is not None:
        widen(per_bucket)


def hit_unless_retry(
    counter: SizeBucketCounter, key: str, size: int, attempt: str, forgiven: int
) -> tuple[int, int]:
    """Count an attempt of a message under ``attempt``, then the message under ``key``
    unless the attempt is one of its first ``forgiven`` repeats in the window (a retry,
    counted at its first attempt: only peeked at). Returns the key's count and the
    attempt's. A counter with a method of this name does both at once (one lock)."""
    together = getattr(counter, "hit_unless_retry", None)
    if together is not None:
        counts: tuple[int, int] = together(key, size, attempt, forgiven)
        return counts
    attempts = counter.hit(attempt, size)
    if 1 < attempts <= forgiven + 1:
        return counter.peek(key, size), attempts
    return counter.hit(key, size), attempts


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
        # A list per entry, not a deque: most senders send once, and a deque's first
        # block costs 600 bytes where a one-stamp list costs 90 (1.2 kB per entry
        # before, 115 MiB at max_keys).
        self._hits: TTLCache[tuple[str, int], list[float]] = TTLCache(
            maxsize=max_keys, ttl=window, timer=clock
        )

    def hit(self, key: str, size: int) -> int:
        return self._count(key, size, add=True)

    def peek(self, key: str, size: int) -> int:
        return self._count(key, size, add=False)

    def keep_at_least(self, per_bucket: int) -> None:
        self.max_per_bucket = max(self.max_per_bucket, per_bucket)

    def hit_unless_retry(self, key: str, size: int, attempt: str, forgiven: int) -> tuple[int, int]:
        """:func:`hit_unless_retry` under one lock, the attempt counted in its own
        bucket only (a retry has the very size), as the shared backends count it."""
        lower, own, upper = self.buckets.neighbourhood(size)
        with self._lock:
            now = self._clock()
            oldest = now - self.window
            attempts = self._tally(attempt, (own,), own, now, oldest, add=True)
            add = not 1 < attempts <= forgiven + 1
            return self._tally(key, (lower, own, upper), own, now, oldest, add=add), attempts

    def _count(self, key: str, size: int, *, add: bool) -> int:
        lower, own, upper = self.buckets.neighbourhood(size)
        with self._lock:
            now = self._clock()
            return self._tally(key, (lower, own, upper), own, now, now - self.window, add=add)

    def _tally(
        self,
        key: str,
        buckets: tuple[int, ...],
        own: int,
        now: float,
        oldest: float,
        *,
        add: bool,
    ) -> int:
        """Under the lock: the key's count over ``buckets``, after a hit in ``own``
        if ``add``."""
        if add:
            stamps = peek(self._hits, (key, own), None)
            if stamps is None:
                stamps = []
            elif len(stamps) >= self.max_per_bucket:
                del stamps[0]
            stamps.append(now)
            # Assigning again restarts the entry's time to live.
            self._hits[(key, own)] = stamps
        total = 0
        for bucket in buckets:
            stamps = peek(self._hits, (key, bucket), None)
            if stamps is None:
                continue
            # Appended under the lock from a monotonic clock: in order.
            del stamps[: bisect.bisect_right(stamps, oldest)]
            total += len(stamps)
        return total


#: Time slots per (key, bucket) in :class:`SharedCounter`; the window spans all but two.
RING_SLOTS: Final = 32
#: How far ahead of the clock (in slots: one window) a count may be stamped and still
#: count: beyond that it was made while the clock ran ahead, and is dropped.
_AHEAD: Final = RING_SLOTS - 2
# 02: counts and attempts in halves of their own (a file of 01 is made again).
_MAGIC: Final = b"SGSIZE02"
# magic, capacity, ring slots, slot seconds; padded so that entries start aligned.
_HEADER: Final = struct.Struct("<8sIId")
_HEADER_SIZE: Final = 64
# key digest, bucket, newest slot, then one hit count per ring slot.
_ENTRY: Final = struct.Struct(f"<16sqq{RING_SLOTS}I")
_KEY: Final = struct.Struct("<16sq")
_SLOT: Final = struct.Struct("<q")
_RING: Final = struct.Struct(f"<{RING_SLOTS}I")
_COUNT: Final = struct.Struct("<I")
_EMPTY: Final = bytes(16)
#: Seconds between two warnings that the table had no room.
FULL_WARNING_INTERVAL: Final = 600.0
#: Entries tried from a key's home position before the oldest one is reused.
PROBES: Final = 32
#: Waiting for another process's lock on the counter file. It is held for a few
#: microseconds per hit, so a waiter first only yields the CPU (which lets a holder on
#: the same core finish), then sleeps, doubling from the first to the longest pause: a
#: fixed 0.5 ms sleep made each wait at least 0.5 ms (bench/counter_contention.py).
#: Seconds between two comparisons of the mapped counter file with the one at its path.
PATH_CHECK_INTERVAL: Final = 1.0
LOCK_YIELDS: Final = 20
LOCK_FIRST_PAUSE: Final = 0.00005
LOCK_LONGEST_PAUSE: Final = 0.002


#: This process's id, kept up to date over forks: asking the kernel (os.getpid) at
#: every hit would be a system call per message.
_pid = os.getpid()
#: Random, new in every process: what makes a Redis member this process's. Not the
#: pid: a worker started later may get an ended one's, and within the window their
#: members would be the same (review rev53).
_token = os.urandom(6).hex()


class _Superseded(CounterError):
    """A retired counter found the file made for another geometry since."""


def _forked() -> None:
    global _pid, _token  # noqa: PLW0603 - the process-wide ids, reset once per fork
    _pid = os.getpid()
    _token = os.urandom(6).hex()


os.register_at_fork(after_in_child=_forked)


def lock_pauses() -> Iterator[float]:
    """What a waiter for the counter file's lock does before each new try: 0 is a yield
    of the CPU, anything else a sleep of that many seconds."""
    yield from itertools.repeat(0.0, LOCK_YIELDS)
    pause = LOCK_FIRST_PAUSE
    while True:
        yield pause
        pause = min(pause * 2, LOCK_LONGEST_PAUSE)


class SharedCounter:
    """The embedded backend shared by worker processes: a hash table in a memory-mapped
    file beside the state file.

    One entry per (key, bucket) holds the hits of the last :data:`RING_SLOTS` time
    slots of ``window / (RING_SLOTS - 2)`` seconds each; a hit counts as long as its
    slot overlaps the window, so for at least ``window`` and at most ``window * (1 +
    1/30)`` seconds after it was made. Every call holds an exclusive ``flock`` lock on
    the file, so hits from several processes are counted exactly; the kernel drops the
    lock of a process that dies, so a worker killed with SIGKILL cannot block the
    others, and a call waits for the lock at most ``timeout`` seconds (a worker stopped
    while holding it) before it fails as a :class:`CounterError`. ``flock``, not POSIX
    record locks: those belong to the process, and closing any descriptor of the file
    (a counter retired by a reload, another geometry's) would silently drop the lock
    another counter object of the process holds in the middle of a hit; a flock lock
    belongs to its own open file. The key is stored as a BLAKE2b digest (no addresses
    in the file).

    The table has ``capacity`` entries (a power of two) and is found by open addressing
    over at most :data:`PROBES` entries; an entry whose hits have all left the window is
    reused, and when none has, the one idle longest is overwritten: memory stays bounded
    under any traffic, at the price of forgetting the stalest counts first. The file's
    blocks are allocated when it is made (``posix_fallocate``), so a full disk fails
    then, as a :class:`CounterError`, and never as SIGBUS on a write to the map.

    A file made for another geometry (capacity or window changed) is made again: the
    counts start from zero. A counter that has been closed (retired by a reload) never
    makes it again: a session still on the old configuration would otherwise put the
    old geometry back under the path, and the workers would count on different files
    from then on. Such a session counts on the reload's counter instead
    (:meth:`succeeded_by`): the workers that reloaded first are counting there already
    (review rev197: a message in flight at the reload was counted as a first, and a
    sender over the threshold in both files got it delivered). Each process maps the
    file itself (a map inherited over a fork is never used), and every failure raises
    :class:`CounterError`.

    Cost per hit: two lock system calls and a few dictionary-free reads of the map,
    against a write transaction of SQLite before (about 80 µs less milter CPU per
    message through Postfix; bench/README.md).
    """

    def __init__(
        self,
        path: os.PathLike[str] | str,
        window: float,
        buckets: SizeBuckets,
        *,
        capacity: int = 65536,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
        path_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 2 * PROBES or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two >= {2 * PROBES}")
        self.path = os.fspath(path)
        self.window = window
        self.buckets = buckets
        self.capacity = capacity
        self.timeout = timeout
        self.slot_seconds = window / (RING_SLOTS - 2)
        self.size = _HEADER_SIZE + capacity * _ENTRY.size
        self._header = _HEADER.pack(_MAGIC, capacity, RING_SLOTS, self.slot_seconds)
        self._clock = clock
        #: Times the comparisons of the file mapped with the one at the path.
        self._path_clock = path_clock
        self._lock = threading.Lock()
        self._map: mmap.mmap | None = None
        self._fd = -1
        self._pid = 0
        # Closes the descriptor of a counter dropped without close() (retired by a
        # reload while a session still used it, which opened the file again).
        self._closer: weakref.finalize[[int], SharedCounter] | None = None
        self._retired = False
        #: The counter a reload put in this one's place (:meth:`succeeded_by`).
        self._successor: SizeBucketCounter | None = None
        #: When the file at the path was last compared with the one mapped.
        self._path_checked = -math.inf
        #: The file mapped was removed or replaced: mapping the one at the path (said
        #: once it works), and whether that failed (said once, see _remapped).
        self._remaking = False
        self._remake_failed = False
        #: The file could not be opened or mapped (said once, until it can again).
        self._open_failed = False
        #: When the table was last said to be full (:meth:`_note_full`).
        self._full_warned = -math.inf

    def hit(self, key: str, size: int) -> int:
        return self._run(key, size, add=True)

    def peek(self, key: str, size: int) -> int:
        return self._run(key, size, add=False)

    def total(self) -> int:
        """Hits in the window over every key and bucket, the attempts' half of the
        table left out (diagnostics and tests)."""
        with self._lock:
            try:
                table = self._locked_table()
            except _Superseded:
                return 0
            try:
                now = self._clock()
                first = math.floor((now - self.window) / self.slot_seconds)
                slot = math.floor(now / self.slot_seconds)
                used = (
                    at
                    for at in range(
                        _HEADER_SIZE, _HEADER_SIZE + self.capacity // 2 * _ENTRY.size, _ENTRY.size
                    )
                    if table[at : at + 16] != _EMPTY
                )
                return sum(self._sum(table, at, first, slot) for at in used)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def prepare(self) -> None:
        """Make the file now (a supervisor does this before it forks its workers)."""
        with self._lock:
            self._mapped()

    def release(self) -> None:
        """Unmap and close the file, and map it again at the next count: what a
        supervisor does after :meth:`prepare` (it never counts, and a map it kept
        would keep a file removed later allocated: review rev99 F3)."""
        with self._lock:
            self._unmap()

    def close(self) -> None:
        """Unmap and close the file; the counter is retired (see the class docstring)."""
        with self._lock:
            self._retired = True
            self._unmap()

    def _unmap(self) -> None:
        """Close the map and descriptor, this process's or inherited over a fork (the
        parent's stay open: a descriptor and a map are per process, and a flock lock
        goes only with the last descriptor of its open file)."""
        if self._map is not None:
            self._map.close()
        if self._closer is not None:
            self._closer()
        self._map, self._fd, self._closer = None, -1, None

    def _mapped(self) -> mmap.mmap:
        if self._map is not None and self._pid == _pid:
            return self._map
        self._unmap()
        try:
            fd = self._open_locked()
        except OSError as exc:
            raise CounterError(f"{self.path}: {exc.strerror or exc}") from exc
        try:
            made = os.fstat(fd).st_size
            header = os.pread(fd, _HEADER.size, 0)
            if made != self.size or header != self._header:
                if self._retired:
                    os.close(fd)
                    raise _Superseded
                # New (empty), or this geometry's file cut in place (its header, or what
                # is left of it, or zeros): put back where it is, so that every worker
                # counts on the one file (third review: a worker that mapped it only
                # now made a new one by rename, and the workers counted apart).
                ours = self._header.startswith(header) or not header.strip(b"\0")
                if made < self.size and ours:
                    self._put_back(fd, made)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                else:
                    fresh = self._make(made, header)
                    os.close(fd)  # and with it the lock on the file it replaced
                    fd = fresh
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, self.size, mmap.MAP_SHARED)
        except OSError as exc:
            os.close(fd)
            raise CounterError(f"{self.path}: {exc.strerror or exc}") from exc
        self._fd, self._pid = fd, _pid
        self._closer = weakref.finalize(self, os.close, fd)
        return self._map

    def _locked_table(self, give_up: float | None = None) -> mmap.mmap:
        """The map, with the file lock held (the caller releases it).

        The header needs no check: a file of another geometry is never made in place
        (_make), so the one mapped keeps the header it was mapped with. But the file
        may have been cut in place by hand (an operator, a restore with cp), and
        reading a map past the end of its file kills the process with SIGBUS: that is
        found here, under the lock, and the file is put back to its size in place
        (what was cut counts from zero). In place, not made again: every worker keeps
        counting on the one file, whichever of them finds it first (second review: a
        new file split the workers, each counting alone). A file that is no longer at
        the path is no such case: it is the old geometry's after a reload (_make)."""
        table = self._remapped()
        now = self._path_clock()
        if abs(now - self._path_checked) >= PATH_CHECK_INTERVAL:
            self._path_checked = now
            if self._moved():
                self._unmap()
                self._remaking = True
                table = self._remapped()
        self._lock_file(self._fd, give_up)
        size = os.fstat(self._fd).st_size
        if size == self.size:
            return table
        try:
            self._put_back(self._fd, size)
        except OSError as exc:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            raise CounterError(f"{self.path}: {exc.strerror or exc}") from exc
        return table

    def _remapped(self) -> mmap.mmap:
        """:meth:`_mapped`, saying once what a file removed under the running service
        became: counted on again, or (a full disk, a directory it may not write) not
        made, every message failing its count until it can be (review rev99 F3: the
        line said "counting on the file now" before the file was there)."""
        try:
            table = self._mapped()
        except CounterError as exc:
            if self._remaking and not self._remake_failed:
                self._remake_failed = True
                log.error(
                    "%s was removed or replaced under the running service and cannot be"
                    " made again (%s): same-size counting fails, [checks.bulk]"
                    " on_temp_error decides, until it can",
                    self.path,
                    exc,
                )
            elif not self._remaking and not self._open_failed:
                # Said once (review rev226 F1: a file root made, which this user may
                # not open, deferred every message with an INFO line each and no more).
                self._open_failed = True
                log.error(
                    "cannot use the workers' same-size file (%s): same-size counting"
                    " fails, [checks.bulk] on_temp_error decides, until it can (let the"
                    " service's user write it, or remove it: the service makes it again)",
                    exc,
                )
            raise
        if self._open_failed:
            self._open_failed = False
            log.warning("%s: the same-size file can be used again", self.path)
        if self._remaking:
            self._remaking = self._remake_failed = False
            log.warning(
                "%s was removed or replaced under the running service: counting on"
                " the file now at the path (the same-size counts so far are not in it)",
                self.path,
            )
        return table

    def _moved(self) -> bool:
        """Whether the file mapped is no longer the one at the path, and the one there
        (or none) is for this geometry: removed to reset the counts, or restored from
        a copy by rename (review rev50: a worker started after that counted on a new
        file while the others went on with the old, each seeing part of the hits). A
        file of another geometry there is a reload's, which this counter leaves alone
        (see _make)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return not self._retired
        except OSError:
            return False
        mapped = os.fstat(self._fd)
        if (now.st_dev, now.st_ino) == (mapped.st_dev, mapped.st_ino):
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            header = os.pread(fd, _HEADER.size, 0)
        finally:
            os.close(fd)
        # An empty file is one being made for this geometry, or one a full disk left
        # empty: every worker turns to it (and fails with the one that made it), none
        # goes on alone on the removed file.
        return header == self._header or not header.strip(b"\0")

    def _put_back(self, fd: int, size: int) -> None:
        """The file, of ``size`` bytes, back to this geometry's size and header in place
        (called holding its lock); what was cut counts from zero."""
        os.posix_fallocate(fd, 0, self.size)
        if size > self.size:
            os.ftruncate(fd, self.size)
        if os.pread(fd, _HEADER.size, 0) != self._header:
            os.pwrite(fd, self._header, 0)
        if size:
            log.warning(
                "%s was %d bytes under the running service, not %d: put back in place;"
                " the same-size counts of what was cut start again from zero",
                self.path,
                size,
                self.size,
            )

    def _open_locked(self) -> int:
        """The file now at the path, opened and locked (one replaced by another process
        while this one waited for the lock is opened again)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                self._lock_file(fd)
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except (OSError, CounterError):
                os.close(fd)
                raise
            os.close(fd)

    def _make(self, made: int, header: bytes = b"") -> int:
        """An empty table of this geometry, renamed over the path (called holding the
        lock of the file it replaces); its descriptor.

        Never made in place: another counter object may have the old file mapped (a
        reload that changed the window builds a second one while sessions on the old
        configuration still count), and truncating a mapped file kills whoever reads
        it next with SIGBUS. The old one keeps its own file until it is closed."""
        if made and header[: len(_MAGIC)] not in (_MAGIC, b"\0" * len(_MAGIC)):
            # Not a changed setting: a release that writes another format, before or
            # after this one (review rev233 L2: "new geometry" misled an upgrade).
            log.warning(
                "%s: written by a release with another file format: same-size counts start at zero",
                self.path,
            )
        elif made:
            log.warning("%s: new geometry, same-size counts start at zero", self.path)
        new = f"{self.path}.{os.getpid()}.new"
        fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.size)
            os.pwrite(fd, self._header, 0)
            os.rename(new, self.path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(new)
            raise
        return fd

    def hit_unless_retry(self, key: str, size: int, attempt: str, forgiven: int) -> tuple[int, int]:
        """:func:`hit_unless_retry` under one lock: the attempt's count (its own bucket
        only: a retry has the very size) and the key's, in one pass over the file."""
        near = self.buckets.neighbourhood(size)

        def count(table: mmap.mmap, first: int, slot: int) -> tuple[int, int]:
            attempts = self._tally(table, attempt, near, first, slot, add=True, alone=True)
            add = not 1 < attempts <= forgiven + 1
            return self._tally(table, key, near, first, slot, add=add), attempts

        counts = self._counted(count)
        if counts is None:
            return hit_unless_retry(self._heir(), key, size, attempt, forgiven)
        return counts

    def _run(self, key: str, size: int, *, add: bool) -> int:
        near = self.buckets.neighbourhood(size)
        found = self._counted(
            lambda table, first, slot: self._tally(table, key, near, first, slot, add=add)
        )
        if found is None:
            heir = self._heir()
            return heir.hit(key, size) if add else heir.peek(key, size)
        return found

    def _counted(self, count: Callable[[mmap.mmap, int, int], _T]) -> _T | None:
        """``count(table, first, slot)`` with both locks held (see :meth:`_acquire`),
        ``first`` and ``slot`` the window's oldest time slot and the current one; None
        when this counter was retired for another geometry (:meth:`_heir` counts)."""
        give_up = self._acquire()
        try:
            try:
                table = self._locked_table(give_up)
            except _Superseded:
                return None
            try:
                now = self._clock()
                slot = math.floor(now / self.slot_seconds)
                first = math.floor((now - self.window) / self.slot_seconds)
                return count(table, first, slot)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def _acquire(self) -> float:
        """Take this process's lock within ``timeout``; returns when the wait for the
        file's lock after it must end, so that the two waits are ``timeout`` in all
        (review rev197: behind one session waiting for the file lock of a stopped
        worker, a worker's other sessions waited their 2 s each, one after another)."""
        give_up = time.monotonic() + self.timeout
        if not self._lock.acquire(timeout=self.timeout):
            raise CounterError(f"{self.path}: locked by another process for {self.timeout:g} s")
        return give_up

    def succeeded_by(self, counter: SizeBucketCounter) -> None:
        """Name the counter a reload put in this one's place (see the class docstring)."""
        self._successor = counter

    def _heir(self) -> SizeBucketCounter:
        """Where a call on this counter, retired for another geometry, counts."""
        if self._successor is None:
            raise CounterError(f"{self.path}: made again for another geometry, not counted")
        return self._successor

    def _tally(
        self,
        table: mmap.mmap,
        key: str,
        near: tuple[int, int, int],
        first: int,
        slot: int,
        *,
        add: bool,
        alone: bool = False,
    ) -> int:
        """Under the lock: the key's count in the buckets ``near`` (lower neighbour,
        own, upper neighbour: :meth:`SizeBuckets.neighbourhood`), after a hit if
        ``add``; ``alone``: its own bucket only, not the neighbours."""
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()
        home = int.from_bytes(digest[:8], "little")
        lower, own, upper = near
        total = 0
        if add:
            at = self._entry(table, digest, home, own, first, claim=True, attempt=alone)
            if at < 0:
                return 1
            self._add(table, at, slot)
            total = self._sum(table, at, first, slot)
        if alone:
            around: tuple[int, ...] = () if add else (own,)
        else:
            around = (lower, upper) if add else (lower, own, upper)
        for bucket in around:
            at = self._entry(table, digest, home, bucket, first, claim=False, attempt=alone)
            if at >= 0:
                total += self._sum(table, at, first, slot)
        return total

    def _lock_file(self, fd: int, give_up: float | None = None) -> None:
        """Take the file lock, waiting at most ``timeout`` seconds (or until ``give_up``):
        a process stopped while it holds the lock (SIGSTOP, a debugger) must not hold
        every session. The supervisor kills a worker that holds it without a heartbeat
        (:func:`smtpguard.workerwatch.flock_holders`)."""
        if give_up is None:
            give_up = time.monotonic() + self.timeout
        pauses = lock_pauses()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except (BlockingIOError, PermissionError):
                # Held by another process for a moment (a few microseconds per hit).
                if time.monotonic() >= give_up:
                    raise CounterError(
                        f"{self.path}: locked by another process for {self.timeout:g} s"
                    ) from None
                pause = next(pauses)
                if pause:
                    time.sleep(pause)
                else:
                    os.sched_yield()
            except OSError as exc:
                raise CounterError(f"{self.path}: {exc.strerror}") from exc

    def _entry(
        self,
        table: mmap.mmap,
        digest: bytes,
        home: int,
        bucket: int,
        first: int,
        *,
        claim: bool,
        attempt: bool = False,
    ) -> int:
        """The offset of the (key, bucket) entry; -1 if there is none and ``claim`` is
        false, else a fresh one (a never used or expired entry, else the stalest).

        Counts live in the first half of the table, attempts in the second, so neither
        takes the other's place: an attempt's key comes from a Message-ID the sender
        chooses, which could be ground to evict the sender's own count (review rev95
        F2), and with the counts' half full a retry still finds the attempt entry idle
        longest to give way (rev141 F2: with one table none could, and every retry
        counted as a first attempt, up to a permanent 552)."""
        wanted = _KEY.pack(digest, bucket)
        half = self.capacity // 2
        region = half if attempt else 0
        mask = half - 1
        start = home + bucket * 0x9E3779B1
        free = stalest = -1
        stalest_slot = 0
        for i in range(PROBES):
            at = _HEADER_SIZE + (region + ((start + i) & mask)) * _ENTRY.size
            current = table[at : at + _KEY.size]
            if current == wanted:
                return at
            if current[:16] == _EMPTY:
                # Entries are never emptied again: the key is not further on.
                if free < 0:
                    free = at
                break
            if free < 0:
                (newest,) = _SLOT.unpack_from(table, at + _KEY.size)
                if newest < first:
                    free = at
                elif stalest < 0 or newest < stalest_slot:
                    stalest, stalest_slot = at, newest
        if not claim:
            return -1
        if free >= 0:
            at = free
        else:
            self._note_full()
            at = stalest
        table[at : at + _ENTRY.size] = _ENTRY.pack(digest, bucket, 0, *([0] * RING_SLOTS))
        return at

    def _note_full(self) -> None:
        """A claim found every entry it may probe live: said at most once every
        :data:`FULL_WARNING_INTERVAL` seconds per process."""
        now = self._path_clock()
        if now < self._full_warned + FULL_WARNING_INTERVAL:
            return
        self._full_warned = now
        log.warning(
            "same-size counter table %s is full (the %d entries probed for a new one"
            " were all in use): the counts idle longest are forgotten first; raise"
            " [bulk] shared_entries above %d (two entries per message with a Message-ID"
            " in the window)",
            self.path,
            PROBES,
            self.capacity,
        )

    @staticmethod
    def _add(table: mmap.mmap, at: int, slot: int) -> None:
        (newest,) = _SLOT.unpack_from(table, at + _KEY.size)
        ring_at = at + _KEY.size + _SLOT.size
        if newest > slot + _AHEAD:
            # Counted while the clock ran more than a window ahead (then stepped back):
            # those hits would stay "newest" until real time caught up, never leaving
            # the window. A smaller step back counts on in the newest slot (below).
            newest = slot - RING_SLOTS
        if slot <= newest:
            # The common case, another hit in the newest slot (or a clock that went
            # back, counted there too): one count to raise.
            count_at = ring_at + (newest % RING_SLOTS) * _COUNT.size
            _COUNT.pack_into(table, count_at, _COUNT.unpack_from(table, count_at)[0] + 1)
            return
        ring = list(_RING.unpack_from(table, ring_at))
        # The slots after the newest one up to now had no hits: clear what they held.
        for s in range(max(newest + 1, slot - RING_SLOTS + 1), slot + 1):
            ring[s % RING_SLOTS] = 0
        ring[slot % RING_SLOTS] = 1
        _SLOT.pack_into(table, at + _KEY.size, slot)
        _RING.pack_into(table, ring_at, *ring)

    @staticmethod
    def _sum(table: mmap.mmap, at: int, first: int, now: int) -> int:
        (newest,) = _SLOT.unpack_from(table, at + _KEY.size)
        if newest < first or newest > now + _AHEAD:
            # Out of the window, or stamped by a clock that has since been set back.
            return 0
        ring: tuple[int, ...] = _RING.unpack_from(table, at + _KEY.size + _SLOT.size)
        oldest = max(first, newest - RING_SLOTS + 1)
        # Slots oldest..newest, which wrap around the ring at most once: two slices
        # instead of a generator step per slot (this runs for every message).
        start = oldest % RING_SLOTS
        end = start + newest - oldest + 1
        if end <= RING_SLOTS:
            return sum(ring[start:end])
        return sum(ring[start:]) + sum(ring[: end - RING_SLOTS])


# Runs atomically in Redis. Redis's own clock (TIME) timestamps the hits, so hosts with
# skewed clocks still share one window. Hits more than a window ahead of that clock
# (made before it was stepped back) are dropped, as SharedCounter does (review rev50:
# they counted until real time caught up with them). Scores are microseconds (exact in a double
# until the year 2255). Needs Redis >= 5 (effects replication of scripts that call TIME
# before writing). A key of another type is refused before anything is written: a
# script's error does not undo its earlier writes, and RedisCounter takes back nothing
# after an error reply (a refused call's message is deferred and must not count). Tested
# with ZCARD, not TYPE: a Redis user given only the commands the scripts run (review
# rev96 F1: tests/test_probes.py's list) must keep working after an upgrade.
#   ARGV: window in microseconds, unique member, "1" to record a hit, per-bucket cap
_LUA_PRELUDE: Final = """
for i = 1, #KEYS do
  local n = redis.pcall('ZCARD', KEYS[i])
  if type(n) == 'table' and n.err then
    return redis.error_reply(n.err .. ' (' .. KEYS[i] .. ')')
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local ahead = '(' .. string.format('%.17g', now + window)
local function add(key, member)
  redis.call('ZADD', key, now, member)
  local over = redis.call('ZCARD', key) - tonumber(ARGV[4])
  if over > 0 then
    redis.call('ZREMRANGEBYRANK', key, 0, over - 1)
  end
  redis.call('PEXPIRE', key, math.ceil(window / 1000))
end
local function count(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', key, ahead, '+inf')
  return redis.call('ZCARD', key)
end
local function total(first)
  local n = 0
  for i = first, #KEYS do
    n = n + count(KEYS[i])
  end
  return n
end
"""
#   KEYS: lower neighbour, own bucket, upper neighbour
_LUA: Final = (
    _LUA_PRELUDE
    + """
if ARGV[3] == '1' then
  add(KEYS[2], ARGV[2])
end
return total(1)
"""
)
# hit_unless_retry in one call: the attempt counted in its own bucket, then the key's
# hit unless the attempt is one of its first ARGV[6] repeats (a retry: only counted).
#   KEYS: the attempt's bucket, then the key's lower neighbour, own bucket, upper
#   ARGV: as _LUA's (ARGV[2] the key's member), then the attempt's member, forgiven
_LUA_RETRY: Final = (
    _LUA_PRELUDE
    + """
add(KEYS[1], ARGV[5])
local attempts = count(KEYS[1])
if attempts <= 1 or attempts > tonumber(ARGV[6]) + 1 then
  add(KEYS[3], ARGV[2])
end
return {total(2), attempts}
"""
)


#   KEYS: the attempt's set, the bucket of its hit; ARGV: the attempt's member, the hit's.
#   A retry call that failed after it may have run is taken back only while its attempt
#   is still the message's newest: a later attempt (another worker's, another host's)
#   was forgiven as its retry, and its message delivered, counted by this hit (review
#   rev96 F2). Redis's TIME scores the members, the same clock for every host.
_LUA_TAKE_BACK_RETRY: Final = """
local newest = redis.call('ZREVRANGE', KEYS[1], 0, 0)
if newest[1] ~= nil and newest[1] ~= ARGV[1] then
  return 0
end
return redis.call('ZREM', KEYS[1], ARGV[1]) + redis.call('ZREM', KEYS[2], ARGV[2])
"""


@dataclass(frozen=True, slots=True)
class _Written:
    """What a call that failed may have written: a hit (``key``, ``member``), and for a
    retry call the attempt it recorded with it."""

    key: str
    member: str
    attempt_key: str = ""
    attempt_member: str = ""


def _digest(text: str) -> str:
    """A Redis key's part for ``text`` (addresses stay out of Redis)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def redis_client(url: str, *, timeout: float = 0.5) -> redis.Redis:
    """A client for ``redis://HOST:PORT/DB``, ``rediss://...`` or ``unix:///path?db=N``.

    ``timeout`` bounds connect and each command. redis-py retries ten times with
    exponential backoff by default, which would hold every message for seconds while
    Redis is down; here it retries once at once, and only after a closed connection
    (a pooled one that a restarted Redis closed). Never after a timeout: a Redis that
    stopped answering would cost every command twice its timeout, and a counter hit
    that timed out may have been counted already.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
    )


#: A call of a take-back round: its script (None: ZREM), keys and arguments.
_Call = tuple[Script | None, list[str], list[str | int]]


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
        take_back: bool = True,
        take_back_delay: float | None = None,
    ) -> None:
        """``take_back``: remove hits whose call failed (see ``_undo``); not when their
        messages are counted elsewhere and delivered (``on_redis_error = "local"``).
        ``take_back_delay``: seconds after a failed call before its hits are taken back
        without waiting for another call (default :data:`TAKE_BACK_DELAY`)."""
        self.client = client
        self.window = window
        self.buckets = buckets
        self.prefix = prefix
        self.max_per_bucket = max_per_bucket
        self.take_back = take_back
        self._script = client.register_script(_LUA)
        self._retry_script = client.register_script(_LUA_RETRY)
        self._take_back_retry = client.register_script(_LUA_TAKE_BACK_RETRY)
        # Members must be unique across hosts, processes and calls; the score carries
        # the time. A token per process too: workers forked from one supervisor share
        # this counter object, node and sequence included, and the same member added
        # twice counts once (review rev50: a sender got twice the threshold with two
        # workers).
        self._node = os.urandom(6).hex()
        self._seq = itertools.count()
        #: (key, member) of hits whose call failed after it may have reached Redis (a
        #: timeout, a connection lost): the message was deferred (or passed uncounted,
        #: [checks.bulk] on_temp_error = "pass"), so it must not count when Redis ran
        #: the script after all (review rev86 F2: a retried message was refused as the
        #: threshold's one too many). Removed before the next call's own script, in
        #: one round trip with it (rev88 N2: that call was usually the retry itself);
        #: bounded, the oldest dropped first.
        self._undo: collections.deque[_Written] = collections.deque(maxlen=UNDO_MAX)
        #: Taking back without a call (review rev159 F1): the next call was this
        #: process's, which may not come for the whole window (the kernel gave every
        #: connection to another worker, this one was restarted, the traffic went
        #: quiet), and the hit counted there all along: a permanent same_size_flood
        #: one message early, for a temporary fault.
        self._drain_first = TAKE_BACK_DELAY if take_back_delay is None else take_back_delay
        self._drain_delay = self._drain_first
        self._drain_lock = threading.Lock()
        self._drain_timer: threading.Timer | None = None
        #: When a reload retired this counter (time.monotonic), or None.
        self._closed_at: float | None = None

    def hit(self, key: str, size: int) -> int:
        return self._run(key, size, add=True)

    def peek(self, key: str, size: int) -> int:
        return self._run(key, size, add=False)

    def keep_at_least(self, per_bucket: int) -> None:
        self.max_per_bucket = max(self.max_per_bucket, per_bucket)

    def hit_unless_retry(self, key: str, size: int, attempt: str, forgiven: int) -> tuple[int, int]:
        """:func:`hit_unless_retry` in one script: both hits or neither (review rev95
        F7: with two calls, a message whose second call failed had its attempt counted
        and not itself, so its retry was taken for a repeat and never counted). The
        attempt's set shares the key's hash tag (one Redis Cluster slot)."""
        base = self._base(key)
        keys = self._keys(base, size)
        attempt_key = self._attempt_key(base, attempt, size)
        member, attempt_member = self._member(), self._member()
        args: list[str | int] = [
            int(self.window * 1_000_000),
            member,
            "1",
            self.max_per_bucket,
            attempt_member,
            forgiven,
        ]
        result = self._eval(
            self._retry_script,
            [attempt_key, *keys],
            args,
            [_Written(keys[1], member, attempt_key, attempt_member)],
        )
        total, attempts = cast("list[int]", result)
        return int(total), int(attempts)

    def try_take_back(self, key: str, size: int) -> None:
        """Take back, as the service does after a failed call, a plain hit and a retry
        call's hits (ZREM, and the take-back script with its ZREVRANGE, in a pipeline)
        of members that do not exist: whether the Redis user may (check-config).
        Raises :class:`CounterError`, caused by the first refusal."""
        base = self._base(key)
        bucket = self._keys(base, size)[1]
        member = self._member()
        taken = [
            _Written(bucket, member),
            _Written(bucket, member, self._attempt_key(base, key, size), member),
        ]
        try:
            answers = self._take_back(taken)
        except (redis.RedisError, OSError) as exc:
            raise CounterError(f"redis: {exc}") from exc
        for answer in answers:
            if isinstance(answer, Exception):
                raise CounterError(f"redis: {answer}") from answer

    def keys_for(self, key: str, size: int) -> list[str]:
        return self._keys(self._base(key), size)

    def key_pattern(self, key: str) -> str:
        """A pattern matching every key of ``key``'s counts (``redis-cli --scan
        --pattern``): its buckets and its messages' attempts."""
        return f"{self._base(key)}*"

    def _keys(self, base: str, size: int) -> list[str]:
        return [f"{base}:{bucket}" for bucket in self.buckets.neighbourhood(size)]

    def _attempt_key(self, base: str, attempt: str, size: int) -> str:
        """The set of a message's attempts, under its sender's hash tag."""
        return f"{base}:a:{_digest(attempt)}:{self.buckets.bucket(size)}"

    def _base(self, key: str) -> str:
        return f"{self.prefix}:{{{_digest(key)}}}"

    def _member(self) -> str:
        return f"{self._node}:{_token}:{next(self._seq)}"

    def close(self) -> None:
        """Close the idle pooled connections (a counter retired by a reload); one in
        use is left to its command, and goes with the client. Hits still to take back
        keep their timer until they are taken back or the window has passed (review
        rev162 F1: dropped with the retired counter, a deferred message counted for the
        whole window)."""
        self._closed_at = time.monotonic()
        self.client.connection_pool.disconnect(inuse_connections=False)
        if self._undo:
            self._schedule_drain()

    def _may_retry(self) -> bool:
        """Whether the timer tries again: always while in use; once retired, until its
        hits would have expired anyway."""
        closed = self._closed_at
        return closed is None or time.monotonic() - closed < self.window

    def _run(self, key: str, size: int, *, add: bool) -> int:
        member = self._member()
        args: list[str | int] = [
            int(self.window * 1_000_000),
            member,
            "1" if add else "0",
            self.max_per_bucket,
        ]
        keys = self.keys_for(key, size)
        written = [_Written(keys[1], member)] if add else []
        return int(cast(int, self._eval(self._script, keys, args, written)))

    def _eval(
        self,
        script: Script,
        keys: list[str],
        args: list[str | int],
        written: list[_Written],
    ) -> object:
        """Run ``script``; after a failure that may have reached Redis, ``written``
        (the members it adds) is taken back by the next call."""
        taken = self._to_take_back()
        try:
            if taken:
                return self._run_taking_back(taken, script, keys, args)
            # Script uses EVALSHA and loads the script again after NOSCRIPT (a
            # restarted or flushed Redis).
            return script(keys=keys, args=args)
        except (redis.RedisError, OSError) as exc:
            self._undo.extendleft(reversed(taken))
            if self.take_back and not isinstance(exc, redis.ResponseError):
                # An error reply means the script did not write; anything else, maybe.
                self._undo.extend(written)
            if self._undo:
                self._schedule_drain()
            raise CounterError(f"redis: {exc}") from exc

    def _schedule_drain(self) -> None:
        with self._drain_lock:
            if self._drain_timer is not None:
                return
            timer = threading.Timer(self._drain_delay, self._drain)
            timer.name = "counter-take-back"
            timer.daemon = True
            self._drain_timer = timer
        timer.start()

    def _drain(self) -> None:
        """The timer's: take back what failed calls may have written, as the next call
        would; again later (twice the wait, up to :data:`TAKE_BACK_MAX_DELAY`) while
        Redis fails."""
        with self._drain_lock:
            self._drain_timer = None
        taken = self._to_take_back()
        if not taken:
            return
        try:
            removed = self._take_back(taken)
        except (redis.RedisError, OSError):
            self._undo.extendleft(reversed(taken))
            self._drain_delay = min(self._drain_delay * 2, TAKE_BACK_MAX_DELAY)
            if self._may_retry():
                self._schedule_drain()
            else:
                # Retired a window ago: what they wrote has expired by now.
                self._undo.clear()
            return
        self._drain_delay = self._drain_first
        self._report_taken(removed)
        if self._undo:
            self._schedule_drain()

    def _to_take_back(self) -> list[_Written]:
        taken: list[_Written] = []
        with contextlib.suppress(IndexError):
            while self._undo and len(taken) < UNDO_BATCH:
                taken.append(self._undo.popleft())
        return taken

    def _run_taking_back(
        self, taken: list[_Written], script: Script, keys: list[str], args: list[str | int]
    ) -> object:
        """The hits in ``taken`` removed (one round trip), then the script run.

        The take-back script is queued as EVALSHA itself: a script handed to a redis-py
        pipeline makes it ask SCRIPT EXISTS first, a command the service's Redis user
        need not have (review rev106 F1: refused, every call after one timeout failed).
        A Redis that does not know it (its first take-back, a restart, SCRIPT FLUSH)
        answers NOSCRIPT: it is loaded, as the plain calls do, and those take-backs
        sent again, before the call's own script: what a take-back leaves must not be
        counted by the call (an attempt still there makes the retry a repeat)."""
        self._report_taken(self._take_back(taken))
        return script(keys=keys, args=args)

    @staticmethod
    def _report_taken(removed: list[object]) -> None:
        # Each answer on its own: a take-back refused (a key of another type now: no
        # hit of ours to take back) is dropped, and must not fail this call, nor every
        # call after it (review rev89 F1).
        if gone := sum(n for n in removed if isinstance(n, int)):
            log.info(
                "counter backend redis: took back %d same-size hit(s) that Redis counted"
                " after their calls had failed (their messages were deferred or passed"
                " uncounted)",
                gone,
            )
        if refused := [n for n in removed if isinstance(n, Exception)]:
            log.warning(
                "counter backend redis: %d take-back(s) refused and dropped (%s): hits"
                " Redis counted after their calls had failed may count until they expire",
                len(refused),
                refused[0],
            )

    def _take_back(self, taken: list[_Written]) -> list[object]:
        """The take-backs of ``taken`` in one round trip (two after NOSCRIPT); the
        answer of each, an exception for one refused."""
        undo = self._take_back_retry
        calls: list[_Call] = [
            (undo, [w.attempt_key, w.key], [w.attempt_member, w.member])
            if w.attempt_key
            else (None, [w.key], [w.member])
            for w in taken
        ]
        removed = self._round(calls)
        lost = [i for i, r in enumerate(removed) if isinstance(r, redis.exceptions.NoScriptError)]
        if lost:
            undo.sha = self.client.script_load(undo.script)
            again = self._round([calls[i] for i in lost])
            for i, result in zip(lost, again, strict=True):
                removed[i] = result
        return removed

    def _round(self, calls: list[_Call]) -> list[object]:
        """One pipeline of EVALSHA (a script) and ZREM (None: of its one key, the
        members) calls; every answer."""
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args in calls:
            if script is None:
                pipe.zrem(keys[0], *args)
            else:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
        return cast(list[object], pipe.execute(raise_on_error=False))


#: Hits to take back at most (RedisCounter._undo), and per call that works.
UNDO_MAX: Final = 10_000
UNDO_BATCH: Final = 500
#: Seconds after a failed call before its hits are taken back without a call, and the
#: longest wait between two tries while Redis keeps failing.
TAKE_BACK_DELAY: Final = 1.0
TAKE_BACK_MAX_DELAY: Final = 30.0

OnError = Literal["error", "local"]


def _about_one_key(exc: CounterError) -> bool:
    """An error about the keys of one call (a value of another type planted under a
    counter's name), not about the backend: Redis answered."""
    cause = exc.__cause__
    # In a pipeline redis-py words it "Command # 2 (EVALSHA ...) of pipeline caused
    # error: WRONGTYPE ..." (review rev89 F1).
    return isinstance(cause, redis.ResponseError) and "WRONGTYPE" in str(cause)


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
        self.outage = Outage(retry_interval, clock)
        self._during_outage = 0
        #: How the last failure is worded (outage.trouble).
        self._trouble = "unreachable"
        #: A hit failed during this outage: only a hit that works ends it. A read
        #: working says nothing about writes (review rev86 F4: a Redis out of memory
        #: answered the peeks, and each one ended the outage the next hit opened again).
        self._hit_failed = False
        #: Counter keys whose Redis keys hold a value of another type, logged once.
        self._bad_keys: TTLCache[str, bool] = TTLCache(1000, ttl=3600, timer=clock)

    @property
    def down(self) -> bool:
        return self.outage.down

    def close(self) -> None:
        """Close both counters' connections or files (retired by a reload)."""
        for part in (self.primary, self.local):
            close: Callable[[], None] | None = getattr(part, "close", None)
            if close is not None:
                close()

    def hit(self, key: str, size: int) -> int:
        return self._call("hit", key, lambda counter: counter.hit(key, size))

    def peek(self, key: str, size: int) -> int:
        return self._call("peek", key, lambda counter: counter.peek(key, size))

    def keep_at_least(self, per_bucket: int) -> None:
        keep_at_least(self.primary, per_bucket)
        if self.local is not None:
            keep_at_least(self.local, per_bucket)

    def hit_unless_retry(self, key: str, size: int, attempt: str, forgiven: int) -> tuple[int, int]:
        """:func:`hit_unless_retry` in one call to the backend (RedisCounter's script),
        with this wrapper's outage behaviour; counted locally the same way."""
        return self._call(
            "hit", key, lambda counter: hit_unless_retry(counter, key, size, attempt, forgiven)
        )

    def _call(
        self, op: Literal["hit", "peek"], key: str, run: Callable[[SizeBucketCounter], _T]
    ) -> _T:
        now = self._clock()
        if self.outage.ask(now):
            try:
                count = run(self.primary)
            except CounterError as exc:
                if _about_one_key(exc):
                    # Not an outage: the other senders' counts work (rev86 F3: one
                    # planted key deferred every sender for 5 s at each of its messages).
                    return self._key_failed(key, run, exc)
                self._failed(exc, op)
            else:
                if op == "hit" or not self._hit_failed:
                    self._recovered(now)
                elif self.outage.down:
                    # Reads work again: let the next hit try at once instead of after
                    # the interval, or the peeks at MAIL FROM would claim every probe.
                    self.outage.retry_now()
                if op == "hit" and self.on_error == "local" and self.local is not None:
                    run(self.local)
                return count
        with self._lock:
            self._during_outage += 1
        error = self.outage.last_error
        if self.on_error == "error" or self.local is None:
            raise CounterError(f"{self.name} {self._trouble}: {error}")
        return run(self.local)

    def _key_failed(
        self, key: str, run: Callable[[SizeBucketCounter], _T], exc: CounterError
    ) -> _T:
        """One call's keys are unusable: this call fails (or counts locally), logged
        once per key."""
        with self._lock:
            first = key not in self._bad_keys
            self._bad_keys[key] = True
        naming = getattr(self.primary, "key_pattern", None)
        # Named in the warning and in the error the decision line (with the session id)
        # carries, so the two can be joined and the key found (review rev133 F4).
        where = f" (keys {naming(key)})" if naming is not None else ""
        if first:
            log.warning(
                "counter backend %s: a key of this sender's counts holds another type of"
                " value (%s)%s; its messages get the counter's error until it expires or"
                " is deleted",
                self.name,
                exc,
                where,
            )
        if self.on_error == "error" or self.local is None:
            raise CounterError(f"{exc}{where}") from exc.__cause__
        return run(self.local)

    def _failed(self, exc: CounterError, op: Literal["hit", "peek"]) -> None:
        # "redis unreachable" was logged for a read-only replica or a user without
        # the permission too (review rev50): worded by what failed, and logged again
        # when that changes during the outage (rev58: a Redis back as a read-only
        # replica).
        word, self._trouble = self._trouble, trouble(exc.__cause__)
        # Timed when the failure is known (review rev120 F1; see state.py's _failed).
        started = self.outage.failed(str(exc), self._clock())
        with self._lock:
            self._hit_failed = (self._hit_failed and not started) or op == "hit"
        if not started:
            if word != self._trouble:
                log.warning("counter backend %s now %s (%s)", self.name, self._trouble, exc)
            return
        with self._lock:
            self._during_outage = 0
        log.warning(
            "counter backend %s %s (%s); %s until it answers again",
            self.name,
            self._trouble,
            exc,
            "counting on this host only" if self.on_error == "local" else "answering errors",
        )

    def _recovered(self, now: float) -> None:
        lasted = self.outage.recovered(now)
        if lasted is None:
            return
        with self._lock:
            messages = self._during_outage
            self._hit_failed = False
        log.info(
            "counter backend %s %s after %.1f s; %d calls %s meanwhile",
            self.name,
            back(self._trouble),
            lasted,
            messages,
            "counted locally" if self.on_error == "local" else "failed",
        )
