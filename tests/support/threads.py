"""Many threads on one object, switching as often as the interpreter allows.

cachetools' caches are not thread-safe (a store that evicts walks a linked list or a
heap another thread may be changing), so every user here wraps its cache in a lock.
With the default switch interval (5 ms) a race between threads is rare enough to pass
unnoticed; switching every microsecond makes a missing lock fail in a few thousand
operations.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable


def hammer(work: Callable[[int], None], threads: int = 8) -> list[BaseException]:
    """Run ``work(n)`` on ``threads`` threads at once; the exceptions they raised."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)
    return errors
