"""What libmilter's thread per session costs a Python milter under the GIL.

libmilter runs every session on its own thread and pymilter takes the GIL for each
callback. When the callbacks are short (the null milter), ten concurrent sessions cost
about what one does; when each callback does real Python work, the threads queue for
the GIL and every hand-over is a futex wake-up and a context switch, so the CPU per
session grows with concurrency whatever the work is.

This runs bench/null_milter.py with ``--work-us`` 0 (the baseline) and a few amounts of
synthetic Python work per callback, drives each with bench/milter_load.py at 1 and at
10 concurrent sessions, and prints the CPU per session, the ratio 10 sessions / 1
session, and the throughput against the baseline measured in the same run; then the
same with the milter bound to one CPU (``taskset``), as ``[milter] cpu_affinity``
binds each worker: the GIL hand-overs between its threads stay on that CPU. A milter
that spends as much Python per session as smtpguard (~0.35 ms over ~14 callbacks, so
~25 us each) shows the same growth as smtpguard does: it belongs to the thread model,
not to smtpguard's code (bench/README.md, "Worker processes").

    .venv/bin/python -m bench.gil_contention [--work 0,10,25,40] [--seconds 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.milter_load import Identity, SessionScript
from bench.throughput import measure_direct, milter_process

BENCH = Path(__file__).resolve().parent


def measure(
    work_us: float, seconds: float, repeat: int, cpu: int | None = None
) -> dict[int, tuple[float, float]]:
    """concurrency -> (median sessions/s, median CPU ms per session); ``cpu``: the
    milter runs bound to that CPU."""
    script = SessionScript(Identity(body_size=1024))
    samples: dict[int, list[tuple[float, float]]] = {1: [], 10: []}
    with tempfile.TemporaryDirectory(prefix="gil-") as tmp:
        sock = Path(tmp) / "null.sock"
        argv = [
            *(("taskset", "-c", str(cpu)) if cpu is not None else ()),
            *(sys.executable, str(BENCH / "null_milter.py"), f"unix:{sock}"),
            *("--work-us", str(work_us)),
        ]
        with milter_process(argv, sock, Path(tmp) / "log") as proc:
            for _ in range(repeat):
                for concurrency, mine in samples.items():
                    result, used = measure_direct(proc.pid, str(sock), script, concurrency, seconds)
                    if result.errors:
                        raise SystemExit(f"work {work_us} us: {result.first_error}")
                    mine.append((result.rate, used * 1000 / max(result.sessions, 1)))
    return {
        c: (statistics.median(r for r, _ in s), statistics.median(m for _, m in s))
        for c, s in samples.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="0,10,25,40", help="us of CPU per callback")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    works = [float(w) for w in args.work.split(",")]
    if works[0] != 0:
        works.insert(0, 0.0)  # the baseline is always measured in the same run
    rows = {w: measure(w, args.seconds, args.repeat) for w in works}
    cpu = min(os.sched_getaffinity(0))
    bound = {w: measure(w, args.seconds, args.repeat, cpu) for w in works}
    print("null pymilter milter with synthetic Python work per callback (direct protocol)")
    for title, table in (("unbound", rows), (f"bound to CPU {cpu}", bound)):
        print(f"\n{title}")
        print(
            "work/callback  1 session: CPU/session  10 sessions: CPU/session"
            "  10/1   10 sessions: sessions/s  vs work 0 unbound"
        )
        for work, point in table.items():
            (_, cpu1), (rate10, cpu10) = point[1], point[10]
            print(
                f"{work:9.0f} us  {cpu1:19.3f} ms  {cpu10:20.3f} ms  {cpu10 / cpu1:5.2f}x"
                f"  {rate10:23.0f}  {rate10 / rows[0.0][10][0]:8.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
