"""Short-lived memos of verdicts computed from DNS answers.

The resolver already caches every answer, but turning answers into a verdict (an SPF
evaluation, a sender-domain judgement, a reverse-DNS confirmation) costs more than the
lookups once they are cached: 0.1-0.2 ms each per message. A repeat sender within
``dns.verdict_ttl`` seconds reuses the verdict. Temporary failures are never
memoized, so a SERVFAIL is retried by the next message.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, MutableMapping
from typing import Generic, TypeVar

from cachetools import TLRUCache

_K = TypeVar("_K")
_V = TypeVar("_V")
_D = TypeVar("_D")


def peek(cache: MutableMapping[_K, _V], key: _K, default: _D) -> _V | _D:
    """``cache.get(key, default)``, at a third of its cost on a hit.

    cachetools' timed caches implement ``get`` as a frozen timer around a membership
    test and then a read, each asking the clock again; a plain read already answers
    KeyError for a key that is missing or expired. Several of these reads happen per
    message (DNS answers, verdict memos, directory rows, flood counts).
    """
    try:
        return cache[key]
    except KeyError:
        return default


class Memo(Generic[_V]):
    """Verdicts for ``ttl`` seconds each, or less: no longer than the DNS answers they
    were drawn from stay in the resolver's cache (``put``'s ``within``; review rev199:
    a domain's fixed SPF record was still refused, and a TTL-0 NXDOMAIN remembered,
    for ``dns.verdict_ttl``)."""

    def __init__(
        self, ttl: float, maxsize: int = 10000, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.enabled = ttl > 0
        self.ttl = ttl
        self._cache: TLRUCache[Hashable, tuple[_V, float]] = TLRUCache(
            maxsize=maxsize, ttu=_until, timer=clock
        )
        # cachetools is not thread-safe; libmilter calls in from many threads.
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[bool, _V | None]:
        """(found, value): ``value`` may legitimately be None (no objection)."""
        if not self.enabled:
            return False, None
        with self._lock:
            entry = peek(self._cache, key, None)
        if entry is None:
            return False, None
        return True, entry[0]

    def put(self, key: Hashable, value: _V, within: float = math.inf) -> None:
        """Remember ``value`` for ``ttl`` seconds, or ``within`` if sooner (nothing
        when that is not in the future)."""
        if self.enabled:
            with self._lock:
                # TLRUCache keeps no entry whose time is up already.
                self._cache[key] = (value, min(self.ttl, within))


def _until(_key: Hashable, entry: tuple[object, float], now: float) -> float:
    return now + entry[1]
