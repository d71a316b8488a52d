"""The same-size counter shared by worker processes, under contention.

Every worker's end of message takes the counter file's lock (``SharedCounter``: an
``flock`` lock around a few microseconds of reads and writes of the map). With more
workers and more messages, two workers want it at the same moment more often, and what
the loser does while it waits decides the latency of that message. This runs
``--processes`` processes (forked, each with its own map, as workers have) that each
make ``--hits`` hits as fast as they can, on one key (every message from one flood) and
on 5000 keys per process (ordinary mail), and prints per hit the median and 99th percentile of
the wall time, the hits per second of all processes together, and how many hits had to
wait; the baseline is one process alone, measured in the same run.

    .venv/bin/python -m bench.counter_contention [--processes 1,2,4] [--hits 20000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from smtpguard.counters import SharedCounter, SizeBuckets


def _worker(path: str, hits: int, same_key: bool, number: int, out: Connection) -> None:
    counter = SharedCounter(path, 3600, SizeBuckets(0.02))
    waits = 0
    times = []
    # Wall time per hit: a hit that waits for the lock sleeps, which CPU time misses.
    for i in range(hits):
        # Ordinary mail: 5000 senders per process, well within the table's 65536 entries.
        key = "flood@example.org|192.0.2.1" if same_key else f"s{number}.{i % 5000}@example.org"
        started = time.perf_counter()
        counter.hit(key, 4000 + i % 7)
        elapsed = time.perf_counter() - started
        times.append(elapsed)
        waits += elapsed > 0.0001
    counter.close()
    out.send((times, waits))


def run(path: Path, processes: int, hits: int, same_key: bool) -> tuple[list[float], int, float]:
    """All hits' wall times, how many waited (took over 100 us), and hits per second."""
    fork = multiprocessing.get_context("fork")
    pipes = [fork.Pipe(duplex=False) for _ in range(processes)]
    workers = [
        fork.Process(target=_worker, args=(str(path), hits, same_key, n, send))
        for n, (_, send) in enumerate(pipes)
    ]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    results = [receive.recv() for receive, _ in pipes]
    seconds = time.perf_counter() - started
    for worker in workers:
        worker.join(30)
    times = [t for result in results for t in result[0]]
    return times, sum(result[1] for result in results), processes * hits / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--hits", type=int, default=20000)
    args = parser.parse_args()
    counts = sorted({1, *(int(n) for n in args.processes.split(","))})
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "counters.map"
        SharedCounter(path, 3600, SizeBuckets(0.02)).prepare()
        for same_key in (True, False):
            print("one key (a flood)" if same_key else "5000 keys per process (ordinary mail)")
            print("  processes   hits/s  vs 1   p50 us   p99 us  p99 vs 1  waited")
            base: tuple[float, float] | None = None
            for processes in counts:
                times, waits, rate = run(path, processes, args.hits, same_key)
                cuts = statistics.quantiles(times, n=100)
                p50, p99 = cuts[49] * 1e6, cuts[98] * 1e6
                if base is None:
                    base = (rate, p99)
                print(
                    f"  {processes:9d} {rate:8.0f} {rate / base[0]:5.2f} {p50:8.1f} {p99:8.1f}"
                    f" {p99 / base[1]:9.2f} {waits / len(times):7.2%}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
