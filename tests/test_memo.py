"""Memo: verdicts kept for the configured time, bounded, shared between threads."""

from __future__ import annotations

import pytest
from cachetools import TLRUCache, TTLCache

from smtpguard.memo import Memo, peek
from support.fake_dns import FakeClock
from support.threads import hammer


def test_a_verdict_lives_for_the_ttl() -> None:
    clock = FakeClock()
    memo: Memo[str] = Memo(30, clock=clock)
    memo.put("k", "v")
    clock.advance(29.9)
    assert memo.get("k") == (True, "v")
    clock.advance(0.1)
    assert memo.get("k") == (False, None)


def test_a_verdict_lives_no_longer_than_what_it_was_drawn_from() -> None:
    """Review rev199: a verdict outlived the DNS answers it rested on by verdict_ttl."""
    clock = FakeClock()
    memo: Memo[str] = Memo(30, clock=clock)
    memo.put("short", "v", within=2)
    memo.put("long", "v", within=300)
    memo.put("gone", "v", within=0)  # TTL 0 (RFC 2308 §5): not remembered at all
    assert memo.get("gone") == (False, None)
    clock.advance(1.9)
    assert memo.get("short") == (True, "v")
    clock.advance(0.1)
    assert memo.get("short") == (False, None)
    clock.advance(27.9)
    assert memo.get("long") == (True, "v")
    clock.advance(0.1)
    assert memo.get("long") == (False, None)  # never past the ttl


def test_none_is_a_verdict_not_a_miss() -> None:
    memo: Memo[str | None] = Memo(30, clock=FakeClock())
    memo.put("k", None)
    assert memo.get("k") == (True, None)
    assert memo.get("other") == (False, None)


def test_zero_ttl_memoizes_nothing() -> None:
    memo: Memo[str] = Memo(0, clock=FakeClock())
    memo.put("k", "v")
    assert memo.get("k") == (False, None)


def test_size_is_bounded_and_the_least_recently_used_goes() -> None:
    memo: Memo[int] = Memo(30, maxsize=3, clock=FakeClock())
    for i in range(3):
        memo.put(i, i)
    assert memo.get(0) == (True, 0)  # read: now the most recently used
    memo.put(3, 3)
    assert [k for k in range(4) if memo.get(k)[0]] == [0, 2, 3]


def test_threads_share_one_memo() -> None:
    memo: Memo[int] = Memo(30, maxsize=50)

    def work(n: int) -> None:
        for i in range(3000):
            key = (n * 7 + i) % 200
            memo.put(key, key)
            _found, value = memo.get(key)
            assert value in (None, key)

    assert hammer(work) == []
    assert sum(memo.get(k)[0] for k in range(200)) <= 50


@pytest.mark.parametrize("kind", ["ttl", "tlru"])
def test_peek_answers_as_get_does_for_fresh_missing_and_expired_keys(kind: str) -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] | TLRUCache[str, int] = (
        TTLCache(10, ttl=30, timer=clock)
        if kind == "ttl"
        else TLRUCache(10, lambda _k, _v, now: now + 30, timer=clock)
    )
    cache["k"] = 1
    assert peek(cache, "k", None) == cache.get("k") == 1
    assert peek(cache, "other", "default") == cache.get("other", "default") == "default"
    clock.advance(30)
    assert peek(cache, "k", None) is cache.get("k") is None
