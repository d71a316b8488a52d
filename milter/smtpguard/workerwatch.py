"""What a supervisor (:mod:`smtpguard.supervisor`) watches of its workers besides
their exit: a heartbeat from each, and their restarts, CPU time and memory for
``/metrics``.

A worker that stops without dying (stopped by a signal, deadlocked on the GIL, stuck
in C code that holds it) is not restarted: its sessions hang until the MTA's milter
timeouts end them, they keep their places under ``max_sessions``, and libmilter's
listener, a C thread that needs no GIL, may go on accepting sessions that no Python
callback will answer. rspamd's answer is a heartbeat:
each worker writes a timestamp the main process checks, and a worker silent too long
is killed and started again. Here a daemon thread of each worker writes
``CLOCK_MONOTONIC`` (one clock for every process of the host) into the worker's slot
once a second. It needs the GIL like every callback, so a worker whose Python code
cannot run goes silent, while one busy with sessions (the interpreter hands the GIL
over every few milliseconds) does not.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

#: Seconds between two heartbeats of a worker.
HEARTBEAT_INTERVAL: Final = 1.0
#: Seconds without a heartbeat after which a worker holding the same-size counter's
#: lock is killed, whatever ``worker_heartbeat_timeout`` says (at least twice
#: ``[state] timeout``: see :func:`flock_holders`).
LOCK_HOLDER_SILENCE: Final = 3 * HEARTBEAT_INTERVAL


def flock_holders(path: Path | str, locks: Path = Path("/proc/locks")) -> set[int]:
    """The pids holding a ``flock`` lock on the file at ``path`` (waiters left out), as
    the kernel lists them in ``locks``; empty when either cannot be read. A worker
    stopped or hung while it holds the same-size counter's lock makes every worker's
    messages wait for it and fail (review rev197: 30 s of tempfails, until the
    heartbeat watchdog): the supervisor kills such a holder sooner."""
    try:
        info = os.stat(path)
        text = locks.read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    holders = set()
    for line in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 9122 fe:00:2146921 0 EOF"; a waiter has "->" after
        # the number.
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
            with contextlib.suppress(ValueError):
                holders.add(int(fields[4]))
    return holders


#: Why a worker was restarted (the ``reason`` of ``smtpguard_worker_restarts_total``):
#: killed as hung by the heartbeat watchdog, ended by another signal (the OOM killer,
#: a crash, an operator), or exited on its own.
RESTART_REASONS: Final = ("hung", "signal", "exit")


class _Slots:
    """One 8-byte slot per worker in anonymous shared memory (``MAP_SHARED``), mapped
    before the first fork, so a worker restarted later writes where the supervisor
    reads.

    No lock: a worker killed while holding one would silence the others. A slot is
    one aligned 8-byte value that only its worker (or the supervisor before forking
    it) writes; a read that overlapped a write could see half of each, so
    :meth:`_read` takes a value only when two reads in a row agree."""

    _SLOT: ClassVar[struct.Struct]

    def __init__(self, count: int) -> None:
        self.count = count
        self._map = mmap.mmap(-1, max(count, 1) * self._SLOT.size, flags=mmap.MAP_SHARED)

    def _write(self, index: int, value: float) -> None:
        offset = index * self._SLOT.size
        # One slice assignment: struct.pack_into would write the bytes one by one.
        self._map[offset : offset + self._SLOT.size] = self._SLOT.pack(value)

    def _read(self, index: int) -> Any:
        """The slot's value, or None when a write was under way while reading."""
        first = self._SLOT.unpack_from(self._map, index * self._SLOT.size)[0]
        second = self._SLOT.unpack_from(self._map, index * self._SLOT.size)[0]
        return first if first == second else None

    def close(self) -> None:
        self._map.close()


class Heartbeats(_Slots):
    """Each worker's last heartbeat (``time.monotonic``): a torn value would
    otherwise be taken for a stale heartbeat."""

    _SLOT = struct.Struct("=d")

    def set(self, index: int, when: float) -> None:
        self._write(index, when)

    def last(self, index: int) -> float | None:
        """The slot's time, or None when a write was under way while reading."""
        found = self._read(index)
        return None if found is None else float(found)

    def start(self, index: int) -> threading.Thread:
        """In a worker: beat into slot ``index`` from a daemon thread, until the
        process ends. Start it after the worker's CPU binding (a thread keeps the
        mask it was created with) and with the signals blocked that the worker's
        main thread waits for."""

        def beat() -> None:
            while True:
                self.set(index, time.monotonic())
                time.sleep(HEARTBEAT_INTERVAL)

        thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        thread.start()
        return thread


class Generations(_Slots):
    """The configuration generation each worker runs (0: the one the service started
    with; the supervisor counts the reloads it validated): written by the supervisor
    when it forks the worker (which inherits its runtime) and by the worker when it
    applies a reload, read for ``/metrics`` (review rev155 F4: nothing showed whether
    every worker had taken a reload)."""

    _SLOT = struct.Struct("=q")

    def set(self, index: int, generation: int) -> None:
        self._write(index, generation)

    def get(self, index: int) -> int | None:
        """The slot's generation, or None when a write was under way while reading."""
        found = self._read(index)
        return None if found is None else int(found)


@dataclass
class WorkerStats:
    """What the supervisor counts about its workers for ``/metrics``; only its loop
    changes these, and the same loop serves the scrapes."""

    restarts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESTART_REASONS, 0))
    #: CPU seconds of the workers reaped so far (``wait4``'s resource usage), so that
    #: the workers' CPU total does not go down when one ends.
    ended_cpu: float = 0.0
    #: Admitted sessions in flight in workers that died: no summary line ends them.
    sessions_cut: int = 0


_TICKS: Final = os.sysconf("SC_CLK_TCK")
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")


def usage(pid: int) -> tuple[float, int] | None:
    """CPU seconds and resident bytes of process ``pid`` (from ``/proc``), or None
    when it cannot be read.

    The CPU time includes that of the children it waited for (``cutime``,
    ``cstime``), as ``wait4`` reports it for a reaped worker: the two then add up."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        statm = Path(f"/proc/{pid}/statm").read_bytes()
    except OSError:
        return None
    # "pid (comm) state ...": comm may hold spaces and ")", so count after the last ")".
    # From there, utime, stime, cutime and cstime (fields 14 to 17) are the 12th to 15th.
    ticks = sum(int(value) for value in stat.rpartition(b")")[2].split()[11:15])
    return ticks / _TICKS, int(statm.split()[1]) * _PAGE


class HookGroups:
    """The process groups of the virus hook programs each worker runs: one row of
    ``slots`` pids per worker in anonymous shared memory (``MAP_SHARED``, mapped before
    the first fork, like :class:`Heartbeats`). A worker records its own programs
    (:meth:`add`, :meth:`remove`, from its session threads); when a worker dies the
    supervisor :meth:`take` s its row and kills the groups of them that came to it. A
    program's environment names its worker too, but one that clears it (``exec env
    -i``) no longer does (review rev95 F4)."""

    SLOTS: Final = 256

    def __init__(self, count: int, slots: int = SLOTS) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, max(count, 1) * slots * 4, flags=mmap.MAP_SHARED)
        self._pids = memoryview(self._map).cast("i")
        self._lock = threading.Lock()
        #: The row this process writes (a worker's; -1 in the supervisor).
        self._row = -1

    def bind(self, row: int) -> None:
        """In a worker after the fork: its own row."""
        self._row = row

    def add(self, group: int) -> bool:
        """Record ``group``; False when the row is full (or this is no worker): the
        program is then found by its environment only."""
        if self._row < 0:
            return False
        start = self._row * self.slots
        with self._lock:
            for at in range(start, start + self.slots):
                if self._pids[at] == 0:
                    self._pids[at] = group
                    return True
        return False

    def remove(self, group: int) -> None:
        if self._row < 0:
            return
        start = self._row * self.slots
        with self._lock:
            for at in range(start, start + self.slots):
                if self._pids[at] == group:
                    self._pids[at] = 0
                    return

    def take(self, row: int) -> set[int]:
        """The groups recorded in ``row`` (its worker is gone), and the row emptied."""
        start = row * self.slots
        found = {pid for pid in self._pids[start : start + self.slots] if pid}
        self._pids[start : start + self.slots] = memoryview(bytes(4 * self.slots)).cast("i")
        return found


class Flags:
    """One byte per worker in anonymous shared memory (``MAP_SHARED``, mapped before
    the first fork, like :class:`Heartbeats`): a worker sets its own, the supervisor
    reads them and clears one when its worker is gone."""

    def __init__(self, count: int) -> None:
        self._map = mmap.mmap(-1, max(count, 1), flags=mmap.MAP_SHARED)

    def set(self, index: int, value: bool) -> None:
        self._map[index] = int(value)

    def count(self) -> int:
        """How many are set."""
        return sum(1 for value in self._map[:] if value)

    def is_set(self, index: int) -> bool:
        return bool(self._map[index])


class WorkersCollector:
    """The supervisor's own series, read at scrape time (a collector on the registry
    that serves ``/metrics``, beside the multiprocess one that sums the workers').

    The standard ``process_*`` series there describe the supervisor, which mostly
    waits; the workers' CPU time and memory are summed over the worker pids the
    supervisor knows (``pids``), read from ``/proc`` at each scrape."""

    def __init__(
        self,
        stats: WorkerStats,
        pids: Callable[[], Collection[int]],
        metrics_off: Callable[[], int] = lambda: 0,
        generations: Callable[[], tuple[int, Collection[tuple[int, int]]]] = lambda: (0, ()),
    ) -> None:
        self.stats = stats
        self.pids = pids
        self.metrics_off = metrics_off
        #: The generation the supervisor validated last, and (worker number, the
        #: generation it runs) for each running worker.
        self.generations = generations

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import (  # noqa: PLC0415 - optional dependency
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        restarts = CounterMetricFamily(
            "smtpguard_worker_restarts",
            "Workers the supervisor started again, by why the one before ended: hung"
            " (killed by the heartbeat watchdog), signal, exit",
            labels=("reason",),
        )
        for reason, count in self.stats.restarts.items():
            restarts.add_metric((reason,), count)
        yield restarts
        yield CounterMetricFamily(
            "smtpguard_worker_sessions_cut",
            "Sessions in flight in a worker that died (admitted ones; each ends without"
            " a summary line, the MTA answering per its milter default_action)",
            value=self.stats.sessions_cut,
        )
        yield GaugeMetricFamily(
            "smtpguard_workers_metrics_off",
            "Running workers that could not record a metric and stopped recording (the"
            " sums here lack their counts from then on; the log says why)",
            value=self.metrics_off(),
        )
        latest, running = self.generations()
        yield GaugeMetricFamily(
            "smtpguard_config_generation",
            "Reloads the supervisor validated and handed to the workers (0: the"
            " configuration the service started with)",
            value=latest,
        )
        workers = GaugeMetricFamily(
            "smtpguard_worker_config_generation",
            "The configuration generation each running worker has applied (below"
            " smtpguard_config_generation: that worker has not taken the last reload yet;"
            " the log says why)",
            labels=("worker",),
        )
        for number, generation in running:
            workers.add_metric((str(number),), generation)
        yield workers
        if not os.path.exists("/proc/self/stat"):
            return  # no /proc: nothing rather than a total that lacks the live workers
        live = [found for found in map(usage, self.pids()) if found is not None]
        yield CounterMetricFamily(
            "smtpguard_workers_cpu_seconds",
            "User and system CPU time of the worker processes, the ended ones included",
            value=self.stats.ended_cpu + sum(cpu for cpu, _ in live),
        )
        yield GaugeMetricFamily(
            "smtpguard_workers_resident_memory_bytes",
            "Resident memory of the running worker processes, summed (pages they share"
            " are counted once per worker)",
            value=sum(rss for _, rss in live),
        )
