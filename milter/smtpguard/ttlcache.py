"""A bounded cache whose entries expire: the one the resolver, the memos and the
same-size counter share.

cachetools' TTL caches keep a linked list in expiry order and expire on every access,
through a timer context manager: a handful of Python calls per lookup, which added up
to ~40 µs per session at a dozen lookups. Here a lookup is one dict read and one clock
read, an expired entry is dropped when it is read, and the full cache sheds its oldest
entries when a new one is stored.

Every entry has its own time to live (the resolver's answers keep their DNS TTL); an
entry whose time to live is not positive is not stored. A full cache first drops its
expired entries (a sweep at most once a second), then the entries stored longest ago
(storing again moves an entry to the end; reading does not). The cache is not
thread-safe: every user here shares it between threads under a lock of its own (or
touches it from one thread only).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar, overload

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")
_D = TypeVar("_D")


class TtlCache(Generic[_K, _V]):
    def __init__(
        self, maxsize: int, ttl: float = 0.0, timer: Callable[[], float] = time.monotonic
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.ttl = ttl
        self.timer = timer
        self._data: dict[_K, tuple[_V, float]] = {}
        self._swept = float("-inf")

    @overload
    def get(self, key: _K) -> _V | None: ...
    @overload
    def get(self, key: _K, default: _D) -> _V | _D: ...

    def get(self, key: _K, default: object = None) -> object:
        item = self._data.get(key)
        if item is None:
            return default
        if item[1] <= self.timer():
            del self._data[key]
            return default
        return item[0]

    def set(self, key: _K, value: _V, ttl: float | None = None) -> None:
        """Store ``value`` for ``ttl`` seconds (the cache's own ttl when None)."""
        lifetime = self.ttl if ttl is None else ttl
        if lifetime <= 0:
            return
        data = self._data
        data.pop(key, None)
        data[key] = (value, self.timer() + lifetime)
        if len(data) > self.maxsize:
            self._shed()

    def __setitem__(self, key: _K, value: _V) -> None:
        self.set(key, value)

    def __contains__(self, key: object) -> bool:
        return self.get(key, _MISSING) is not _MISSING  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._data)

    def pop(self, key: _K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def _shed(self) -> None:
        # With entries of different lifetimes (DNS answers, remembered failures) expired
        # ones may sit behind live ones: sweep them all out first, but at most once a
        # SWEEP_INTERVAL, so a cache full of live entries does not pay O(n) per store.
        # Then drop from the front (the dict keeps store order: the oldest) until there
        # is room, expired front entries included.
        data = self._data
        now = self.timer()
        if now - self._swept >= SWEEP_INTERVAL:
            self._swept = now
            for key in [k for k, (_v, expires) in data.items() if expires <= now]:
                del data[key]
        while len(data) > self.maxsize:
            del data[next(iter(data))]


_MISSING = object()
#: Seconds between full sweeps for expired entries when the cache is full.
SWEEP_INTERVAL = 1.0
