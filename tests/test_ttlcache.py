"""TtlCache: expiry per entry, bounded size, eviction in store order."""

from __future__ import annotations

import pytest

from smtpguard.ttlcache import TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entry_lives_for_its_ttl() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(10, ttl=5, timer=clock)
    cache["a"] = 1
    clock.now += 4.9
    assert cache.get("a") == 1
    assert "a" in cache
    clock.now += 0.1
    assert cache.get("a") is None
    assert "a" not in cache
    assert len(cache) == 0  # dropped when read expired


def test_per_entry_ttl_and_default() -> None:
    clock = Clock()
    cache: TtlCache[str, str] = TtlCache(10, timer=clock)
    cache.set("long", "x", 60)
    cache.set("short", "y", 1)
    clock.now += 2
    assert cache.get("long") == "x"
    assert cache.get("short", "gone") == "gone"


@pytest.mark.parametrize("ttl", [0, -1])
def test_non_positive_ttl_is_not_stored(ttl: float) -> None:
    cache: TtlCache[str, int] = TtlCache(10, timer=Clock())
    cache.set("k", 1, ttl)
    assert cache.get("k") is None
    assert len(cache) == 0


def test_none_can_be_told_from_a_miss() -> None:
    cache: TtlCache[str, int | None] = TtlCache(10, ttl=5, timer=Clock())
    cache["k"] = None
    marker = object()
    assert cache.get("k", marker) is None
    assert cache.get("other", marker) is marker


def test_full_cache_sheds_the_oldest_stored() -> None:
    clock = Clock()
    cache: TtlCache[int, int] = TtlCache(3, ttl=60, timer=clock)
    for i in range(3):
        cache[i] = i
    cache[0] = 0  # stored again: now the newest
    cache[3] = 3
    assert len(cache) == 3
    assert [k for k in range(4) if k in cache] == [0, 2, 3]


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        TtlCache(0)


def test_expired_entries_behind_live_ones_go_first() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(3, timer=clock)
    cache.set("long", 1, 3600)
    cache.set("f1", 2, 5)
    cache.set("f2", 3, 5)
    clock.now += 10
    cache.set("new", 4, 60)
    assert cache.get("long") == 1
    assert cache.get("new") == 4
    assert len(cache) == 2


def test_sweeps_for_expired_entries_at_most_once_a_second() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(2, timer=clock)
    cache.set("a", 1, 60)
    cache.set("b", 2, 60)
    cache.set("c", 3, 0.5)  # full: sweeps (nothing expired), drops "a"
    clock.now += 0.6  # "c" expires; the last sweep was 0.6 s ago
    cache.set("d", 4, 60)  # no sweep yet: the oldest, "b", goes
    assert [k for k in "abcd" if k in cache] == ["d"]  # reading "c" dropped it
    cache.set("e", 5, 0.1)
    clock.now += 1.0
    cache.set("f", 6, 60)  # a sweep again: expired "e" goes, "d" stays
    assert [k for k in "abcdef" if k in cache] == ["d", "f"]
