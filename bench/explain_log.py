"""Throughput of ``smtpguard explain --log`` on a generated mail log, and the start time
of ``smtpguard explain``.

Writes ``--lines`` (1,000,000) lines of Postfix, Sendmail and Exim log
(tests/support/maillog.py: about one line in eight a bounce or deferral, addresses, IPs
and queue ids varying per line, a few hundred remote domains) to a temporary file, then
measures in the same run:

- **baseline**: a plain Python loop over the file's lines (``for line in f: n += 1``),
  the floor for anything in Python that looks at every line;
- **command**: ``smtpguard explain --log FILE --json`` as a subprocess, start-up
  included, and its peak RSS (constant-memory check: compare ``--lines 100000``);
- **start**: ``smtpguard explain "550 5.1.1 user unknown"``, median of ``--starts`` runs,
  with the knowledge cache of a private ``XDG_CACHE_HOME`` written once before (the
  start of every run but the first after an install or a rules edit), and **cold**:
  with that cache removed before each run (the rules read, validated and cached).

Prints lines/s, the ratio command/baseline, and whether the targets are met (>= 50,000
lines/s; start < 0.15 s with the cache written). ``--check`` turns a missed target into
exit status 1.

    .venv/bin/python -m bench.explain_log [--lines 1000000] [--starts 20] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import maillog

TARGET_LINES_PER_S = 50_000
TARGET_START_S = 0.15
COMMAND = [sys.executable, "-m", "smtpguard"]


def baseline(path: Path) -> float:
    start = time.perf_counter()
    n = 0
    with path.open("rb") as f:
        for _line in f:
            n += 1
    return time.perf_counter() - start


def command(path: Path) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    out = subprocess.run(
        [*COMMAND, "explain", "--log", str(path), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - start, json.loads(out.stdout)


def start_time(runs: int, cache: Path, *, cold: bool) -> float:
    """Median start of ``explain``; ``cold``: without its knowledge cache each time."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    command = [*COMMAND, "explain", "550 5.1.1 user unknown"]
    if not cold:
        subprocess.run(command, check=True, capture_output=True, env=env)
        assert any(cache.rglob("explain*.pickle")), "explain wrote no knowledge cache"
    times = []
    for _ in range(runs):
        if cold:
            shutil.rmtree(cache, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="smtpguard-bench-") as tmp:
        path = Path(tmp) / "mail.log"
        began = time.perf_counter()
        maillog.write(path, args.lines)
        size = path.stat().st_size
        print(
            f"log: {args.lines:,} lines, {size / 1e6:.1f} MB,"
            f" written in {time.perf_counter() - began:.1f} s"
        )
        base = baseline(path)
        took, summary = command(path)
        rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = start_time(args.starts, Path(tmp) / "cache", cold=False)
        cold = start_time(args.starts, Path(tmp) / "cold", cold=True)

    rate = args.lines / took
    print(f"baseline (Python line loop): {base:.2f} s, {args.lines / base:,.0f} lines/s")
    print(
        f"explain --log --json:        {took:.2f} s, {rate:,.0f} lines/s"
        f" ({took / base:.1f}x the baseline's time), peak RSS {rss_kib / 1024:.0f} MB"
    )
    print(
        f"  events {summary['events']:,} (bounced {summary['bounced']:,}, deferred"
        f" {summary['deferred']:,}), explanations computed {summary['explained']:,}"
    )
    print(
        f"explain start (median of {args.starts}): {start * 1000:.0f} ms,"
        f" {cold * 1000:.0f} ms without its knowledge cache"
    )
    met_rate = rate >= TARGET_LINES_PER_S
    met_start = start < TARGET_START_S
    print(f"target >= {TARGET_LINES_PER_S:,} lines/s: {'met' if met_rate else 'MISSED'}")
    print(f"target start < {TARGET_START_S * 1000:.0f} ms: {'met' if met_start else 'MISSED'}")
    return 1 if args.check and not (met_rate and met_start) else 0


if __name__ == "__main__":
    sys.exit(main())
