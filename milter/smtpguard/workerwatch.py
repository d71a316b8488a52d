"""What a supervisor (:mod:`smtpguard.supervisor`) watches of its workers besides
their exit: a heartbeat from each, and the restarts for ``/metrics``.

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

import mmap
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

#: Seconds between two heartbeats of a worker.
HEARTBEAT_INTERVAL: Final = 1.0
#: Why a worker was restarted (the ``reason`` of ``smtpguard_worker_restarts_total``):
#: killed as hung by the heartbeat watchdog, ended by another signal (the OOM killer,
#: a crash, an operator), or exited on its own.
RESTART_REASONS: Final = ("hung", "signal", "exit")


class Heartbeats:
    """One heartbeat slot per worker in anonymous shared memory (``MAP_SHARED``),
    mapped before the first fork, so a worker restarted later writes where the
    supervisor reads.

    No lock: a worker killed while holding one would silence the others. A slot is
    one aligned 8-byte double that only its worker writes; a read that overlapped a
    write could see half of each, so :meth:`last` takes a value only when two reads in
    a row agree (a torn value would otherwise be taken for a stale heartbeat).
    """

    _SLOT = struct.Struct("=d")

    def __init__(self, count: int) -> None:
        self.count = count
        self._map = mmap.mmap(-1, max(count, 1) * self._SLOT.size, flags=mmap.MAP_SHARED)

    def set(self, index: int, when: float) -> None:
        offset = index * self._SLOT.size
        # One slice assignment: struct.pack_into would write the bytes one by one.
        self._map[offset : offset + self._SLOT.size] = self._SLOT.pack(when)

    def last(self, index: int) -> float | None:
        """The slot's time, or None when a write was under way while reading."""
        first = self._SLOT.unpack_from(self._map, index * self._SLOT.size)[0]
        second = self._SLOT.unpack_from(self._map, index * self._SLOT.size)[0]
        return float(first) if first == second else None

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

    def close(self) -> None:
        self._map.close()


@dataclass
class WorkerStats:
    """What the supervisor counts about its workers for ``/metrics``; only its loop
    changes these, and the same loop serves the scrapes."""

    restarts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESTART_REASONS, 0))


class WorkersCollector:
    """The supervisor's own series, read at scrape time (a collector on the registry
    that serves ``/metrics``, beside the multiprocess one that sums the workers')."""

    def __init__(self, stats: WorkerStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily  # noqa: PLC0415

        restarts = CounterMetricFamily(
            "smtpguard_worker_restarts",
            "Workers the supervisor started again, by why the one before ended: hung"
            " (killed by the heartbeat watchdog), signal, exit",
            labels=("reason",),
        )
        for reason, count in self.stats.restarts.items():
            restarts.add_metric((reason,), count)
        yield restarts
