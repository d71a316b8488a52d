"""``smtpguard run`` under cProfile, every thread included; for bench/throughput.py
``--profile cprofile``.

cProfile follows one thread, and smtpguard's work happens on libmilter's worker
threads (native threads that call into Python for each callback) and on the resolver's
event loop thread. So each callback and each Python thread gets a profiler of its own
(one per OS thread), and when the service stops, all of them are merged and written
as a pstats file:

    .venv/bin/python -m bench.profiled_smtpguard [--cpu|--wall] OUT.pstats -c CONFIG run

The overhead of deterministic profiling is large (every Python call is counted), so
the absolute times are inflated; the split between functions is what to read.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from smtpguard import adapter, cli

#: "cpu" (default): each thread's own CPU time, so waits (locks, the GIL, I/O) do not
#: count; "wall": elapsed time, which shows where sessions wait.
_TIMER = time.thread_time
_local = threading.local()
_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _profiler() -> cProfile.Profile:
    prof: cProfile.Profile | None = getattr(_local, "prof", None)
    if prof is None:
        prof = cProfile.Profile(_TIMER)
        _local.prof = prof
        with _lock:
            _profiles.append(prof)
    return prof


def _profiled(func: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        prof = _profiler()
        if getattr(_local, "active", False):  # nested: already counted
            return func(*args, **kwargs)
        _local.active = True
        prof.enable()
        try:
            return func(*args, **kwargs)
        finally:
            prof.disable()
            _local.active = False

    return wrapper


def main() -> int:
    global _TIMER  # noqa: PLW0603 - chosen once, before any thread starts
    args = sys.argv[1:]
    if args and args[0] in ("--cpu", "--wall"):
        _TIMER = time.thread_time if args.pop(0) == "--cpu" else time.perf_counter
    out, argv = args[0], args[1:]
    cls = adapter.SmtpGuardMilter
    # Every libmilter callback passes through _guard (connect .. eom), plus these.
    for name in ("_guard", "abort", "close", "__init__"):
        setattr(cls, name, _profiled(getattr(cls, name)))
    # Python threads (the resolver's event loop): profile their whole run.
    original_run = threading.Thread.run
    threading.Thread.run = _profiled(original_run)  # type: ignore[method-assign]  # profile every thread
    try:
        return cli.main(argv)
    finally:
        with _lock:
            profiles = list(_profiles)
        for prof in profiles:
            prof.create_stats()
        if profiles:
            stats = pstats.Stats(profiles[0])
            for prof in profiles[1:]:
                stats.add(prof)
            stats.dump_stats(out)


if __name__ == "__main__":
    sys.exit(main())
