"""Instructions per session under callgrind: a cost figure that other work on the
machine does not move.

bench/session_cost.py measures CPU time, which on a shared two-core machine moves by
10 % from run to run; a change worth 3 % cannot be seen in it. This counts the
instructions (valgrind's callgrind, "Collected") that SessionDriver runs per session
with the benchmark's configuration and two workers' counter (bench/throughput.py's):
each variant runs twice in a child process, with 0 and with ``--sessions`` sessions
after the same warm-up, and the difference divided by the sessions is the figure, so
start-up (imports, rules, RE2 compilation) cancels out. Two runs of the same code agree
to a few tenths of a percent. Instructions are not time: a cache miss costs hundreds
of cycles and no instructions, and the live milter's cost per message is about twice
its tight-loop time for that reason (README.md); use it to see what a change removes.

    .venv/bin/python -m bench.session_instructions [--sessions 200] [VARIANT ...]

A VARIANT is ``;``-separated ``section.key=TOML`` settings applied to the benchmark's
configuration, e.g. ``'checks.antispam.mode="off"'``; none: the configuration as is.
Needs valgrind (Debian: apt-get install valgrind). About 20 s per run.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from bench.milter_load import Identity
from bench.session_cost import bench_runtime, one_session

WARM_UP = 50
_COLLECTED = re.compile(r"Collected : (\d+)")


def apply(data: dict[str, Any], variant: str) -> None:
    """Set each ``section.key=TOML`` of ``variant`` in the configuration ``data``."""
    for item in filter(None, (part.strip() for part in variant.split(";"))):
        key, _, value = item.partition("=")
        section, _, name = key.rpartition(".")
        node = data
        for part in filter(None, section.split(".")):
            node = node.setdefault(part, {})
        node[name] = tomllib.loads(f"v = {value}")["v"]


def child(sessions: int, variant: str) -> None:
    """Run ``WARM_UP + sessions`` sessions (under valgrind: see :func:`count`)."""
    with bench_runtime(
        "smtpguard-instructions-", workers=2, edit=lambda data: apply(data, variant)
    ) as (runtime, gate):
        identity = Identity()
        stages: collections.defaultdict[str, float] = collections.defaultdict(float)
        for _ in range(WARM_UP + sessions):
            one_session(runtime, gate, identity, stages)


def count(sessions: int, variant: str) -> int:
    """Instructions callgrind collected for a child run of ``sessions`` sessions."""
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.session_instructions",
        "--child",
        str(sessions),
        "--variant",
        variant,
    ]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(argv, capture_output=True, text=True, cwd=root, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind run failed ({done.returncode}): {done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", metavar="VARIANT")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.variant)
        return 0
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts in every run
    print(f"instructions per session (callgrind, {args.sessions} sessions, own baseline)")
    for variant in args.variants or [""]:
        per_session = (count(args.sessions, variant) - count(0, variant)) // args.sessions
        print(f"  {per_session:>10,}  {variant or '(the benchmark configuration)'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
