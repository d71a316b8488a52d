"""Why a microsecond of smtpguard's Python costs about two inside the live milter.

bench/session_cost.py runs sessions back to back on one thread: the interpreter, the
checks' code and their data stay in the CPU caches. In the milter, libmilter starts a
thread per SMTP session, and between two callbacks of a session the MTA's processes
(smtpd, cleanup, the load client) run on the same cores. This runs the same session
three ways, in one process, and prints CPU per stage:

* ``same``: every session on one thread, back to back (session_cost.py's figure);
* ``fresh``: every session on a new thread, as libmilter does;
* ``cold``: one thread, but ``--evict`` MiB of memory written between sessions, which
  pushes the session's code and data out of the caches as other processes do.

The total of ``cold`` against ``same`` is the share of a session's cost that is cache
misses, which no change to one check's code removes; only less code and fewer objects
touched per message do.

    .venv/bin/python -m bench.cold_cache [-n 2000] [--evict 8]
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import threading
from collections.abc import Callable

from bench.milter_load import Identity
from bench.session_cost import bench_runtime, one_session

Stages = collections.defaultdict[str, float]
MODES = ("same", "fresh", "cold")


def _on_one_thread(job: Callable[[], None]) -> None:
    thread = threading.Thread(target=job)
    thread.start()
    thread.join()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--sessions", type=int, default=2000)
    p.add_argument("--evict", type=int, default=8, metavar="MIB", help="written between sessions")
    args = p.parse_args()
    n: int = args.sessions
    identity = Identity()
    # Every 64th byte: one write per cache line is enough to claim the line.
    evict = bytearray(args.evict << 20)
    zeros = bytes(len(evict[::64]))
    with bench_runtime("smtpguard-cold-") as (runtime, gate):

        def session(stages: Stages) -> None:
            one_session(runtime, gate, identity, stages)

        for _ in range(200):  # DNS cache, first-use caches, specialized bytecode
            session(collections.defaultdict(float))
        results: dict[str, list[Stages]] = {mode: [] for mode in MODES}
        for _round in range(2):  # interleaved, so a busy moment hits every mode alike
            for mode in MODES:
                stages: Stages = collections.defaultdict(float)
                if mode == "fresh":
                    for _ in range(n):
                        _on_one_thread(functools.partial(session, stages))
                else:

                    def back_to_back(stages: Stages = stages, cold: bool = mode == "cold") -> None:
                        for _ in range(n):
                            if cold:
                                evict[::64] = zeros
                            session(stages)

                    _on_one_thread(back_to_back)
                results[mode].append(stages)

    def best(mode: str, stage: str | None = None) -> float:
        """The lower of the two rounds, in microseconds per session."""
        runs = results[mode]
        values = [sum(r.values()) if stage is None else r[stage] for r in runs]
        return 1e6 * min(values) / n

    print(f"{n} sessions per mode (best of 2 rounds), CPU per session in us:")
    print(f"  {'stage':16} {'same':>8} {'fresh':>8} {'cold':>8}")
    for stage in results["same"][0]:
        row = "".join(f" {best(mode, stage):8.1f}" for mode in MODES)
        print(f"  {stage:16}{row}")
    row = "".join(f" {best(mode):8.1f}" for mode in MODES)
    print(f"  {'total':16}{row}")
    same = best("same")
    print(f"  vs same:         {1:8.2f} {best('fresh') / same:8.2f} {best('cold') / same:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
