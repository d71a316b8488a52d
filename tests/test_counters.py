"""Same-size bulk counters: the bucket rule, the in-process backend, the shared
memory-mapped one, Redis (real redis-server on loopback), and the outage behaviour."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import itertools
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.counters import (
    PATH_CHECK_INTERVAL,
    CounterError,
    InProcessCounter,
    RedisCounter,
    ResilientCounter,
    SharedCounter,
    SizeBuckets,
    hit_unless_retry,
    lock_pauses,
    redis_client,
)
from support.daemons import REDIS_COUNTING, RedisServer, free_port, start_redis
from support.fake_dns import FakeClock
from support.files import descriptors_on, fill_up, tmpfs
from support.polling import wait_until
from support.threads import hammer

TWO_PERCENT = SizeBuckets(0.02)
KEY = "spammer@example.org|198.51.100.7"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the bucket rule -------------------------------------------------------------------


@given(st.integers(1, 10**9), st.floats(0, 0.02))
def test_relative_sizes_within_width_are_always_counted_together(size: int, rel: float) -> None:
    other = math.floor(size * (1 + rel))
    assert abs(TWO_PERCENT.bucket(size) - TWO_PERCENT.bucket(other)) <= 1


@given(st.integers(1, 10**9), st.floats(0.0405, 10))
def test_relative_sizes_far_apart_are_never_counted_together(size: int, rel: float) -> None:
    other = math.ceil(size * (1 + rel))  # more than (1.02)**2 = 1.0404 times larger
    assert abs(TWO_PERCENT.bucket(size) - TWO_PERCENT.bucket(other)) >= 2


@given(st.integers(0, 10**9), st.integers(0, 500))
def test_fixed_width_rule(size: int, delta: int) -> None:
    fixed = SizeBuckets(500, relative=False)
    assert abs(fixed.bucket(size) - fixed.bucket(size + delta)) <= 1
    assert abs(fixed.bucket(size) - fixed.bucket(size + 1000 + delta)) >= 2


def test_bucket_edges() -> None:
    assert TWO_PERCENT.bucket(0) == TWO_PERCENT.bucket(1) == 0
    assert TWO_PERCENT.neighbourhood(10_000) == (464, 465, 466)
    with pytest.raises(ValueError, match="between 0 and 1"):
        SizeBuckets(2.0)
    with pytest.raises(ValueError, match="whole number"):
        SizeBuckets(0.5, relative=False)


# --- in process ------------------------------------------------------------------------


def test_counts_same_size_per_key() -> None:
    counter = InProcessCounter(60, TWO_PERCENT, clock=Clock())
    assert [counter.hit(KEY, 10_000 + i) for i in range(5)] == [1, 2, 3, 4, 5]
    assert counter.hit("other|192.0.2.1", 10_000) == 1
    assert counter.hit(KEY, 50_000) == 1  # another size


def test_in_process_entries_cost_well_under_a_kilobyte() -> None:
    """100,000 entries (max_keys) of one hit each, the usual shape (most senders send
    once an hour): a deque per entry made that 115 MiB in one process."""
    counter = InProcessCounter(3600, TWO_PERCENT)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(10_000):
            counter.hit(f"user{n}@sender{n % 503}.example|198.18.{n >> 8 & 255}.{n & 255}", 3000)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / 10_000
    finally:
        tracemalloc.stop()
    assert per_entry < 700, per_entry


def test_in_process_stamps_per_bucket_stop_at_the_cap() -> None:
    clock = Clock()
    counter = InProcessCounter(60, TWO_PERCENT, max_per_bucket=5, clock=clock)
    counts = []
    for _ in range(8):
        clock.now += 1
        counts.append(counter.hit(KEY, 1000))
    assert counts == [1, 2, 3, 4, 5, 5, 5, 5]
    clock.now += 55  # the first 3 stamps would have left the window: not kept anyway
    assert counter.peek(KEY, 1000) == 5
    clock.now += 3
    assert counter.peek(KEY, 1000) == 2


def test_peek_does_not_record() -> None:
    counter = InProcessCounter(60, TWO_PERCENT, clock=Clock())
    counter.hit(KEY, 10_000)
    assert counter.peek(KEY, 10_100) == 1
    assert counter.peek(KEY, 10_100) == 1
    assert counter.hit(KEY, 10_100) == 2


def test_neighbour_buckets_count_but_distant_ones_do_not() -> None:
    counter = InProcessCounter(60, TWO_PERCENT, clock=Clock())
    b = TWO_PERCENT.bucket(10_000)
    top_of_bucket = max(s for s in range(10_000, 10_400) if TWO_PERCENT.bucket(s) == b)
    counter.hit(KEY, top_of_bucket)
    assert counter.peek(KEY, top_of_bucket + 1) == 1  # next bucket, still counted
    assert counter.peek(KEY, int(top_of_bucket * 1.05)) == 0


def test_sliding_window_with_injected_clock() -> None:
    clock = Clock()
    counter = InProcessCounter(60, TWO_PERCENT, clock=clock)
    counter.hit(KEY, 10_000)
    clock.now += 30
    assert counter.hit(KEY, 10_000) == 2
    clock.now += 30  # the first hit is exactly one window old: gone
    assert counter.peek(KEY, 10_000) == 1
    clock.now += 29.9
    assert counter.peek(KEY, 10_000) == 1
    clock.now += 0.2
    assert counter.peek(KEY, 10_000) == 0
    assert counter.hit(KEY, 10_000) == 1


def test_memory_is_bounded() -> None:
    clock = Clock()
    counter = InProcessCounter(60, TWO_PERCENT, max_keys=10, max_per_bucket=3, clock=clock)
    assert [counter.hit(KEY, 5000) for _ in range(5)] == [1, 2, 3, 3, 3]  # saturates
    for i in range(100):
        counter.hit(f"k{i}", 5000)
    assert len(counter._hits) <= 10
    clock.now += 61
    counter.hit("fresh", 5000)
    assert len(counter._hits) == 1  # expired entries are dropped


def test_threads_lose_no_hits() -> None:
    counter = InProcessCounter(60, TWO_PERCENT, max_per_bucket=10_000)

    def work() -> None:
        for _ in range(500):
            counter.hit(KEY, 7000)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.peek(KEY, 7000) == 4000


def test_threads_share_a_full_table() -> None:
    counter = InProcessCounter(60, TWO_PERCENT, max_keys=20)

    def work(n: int) -> None:
        for i in range(1000):
            key = f"k{(n * 7 + i) % 100}"
            assert counter.hit(key, 5000) >= 1
            counter.peek(key, 5000)

    assert hammer(work) == []
    assert len(counter._hits) <= 20


def test_a_key_in_use_outlives_idle_ones() -> None:
    counter = InProcessCounter(60, TWO_PERCENT, max_keys=3, clock=Clock())
    counter.hit(KEY, 5000)
    for i in range(10):
        counter.hit(f"idle{i}", 5000)
        counter.peek(KEY, 5000)  # a read keeps it among the recently used
    assert counter.peek(KEY, 5000) == 1


# --- Redis -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def fresh_redis(redis_server: RedisServer) -> RedisServer:
    if redis_server.process.poll() is not None:  # a test killed it
        redis_server.restart()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.script_flush()  # each test meets a Redis that knows no script yet
    client.close()
    return redis_server


def counter_on(server: RedisServer, window: float = 60, max_per_bucket: int = 1000) -> RedisCounter:
    return RedisCounter(
        redis_client(server.url), window, TWO_PERCENT, max_per_bucket=max_per_bucket
    )


@pytest.mark.integration
def test_two_hosts_sharing_redis_trip_the_limit_together(fresh_redis: RedisServer) -> None:
    limit = 5
    host_a, host_b = counter_on(fresh_redis), counter_on(fresh_redis)
    counts_a = [host_a.hit(KEY, 12_000 + i * 10) for i in range(3)]
    counts_b = [host_b.hit(KEY, 12_050 + i * 10) for i in range(3)]
    assert max(counts_a) <= limit  # neither alone would be over
    assert counts_b == [4, 5, 6]
    assert counts_b[-1] > limit  # together they are
    assert host_a.peek(KEY, 12_000) == 6
    # Alone, each host's own three would never have tripped it:
    alone = InProcessCounter(60, TWO_PERCENT)
    assert max(alone.hit(KEY, 12_000 + i * 10) for i in range(3)) <= limit


@pytest.mark.integration
def test_redis_keys_expire_and_nothing_grows(fresh_redis: RedisServer) -> None:
    counter = counter_on(fresh_redis, window=0.3, max_per_bucket=4)
    for _ in range(10):
        counter.hit(KEY, 3000)
    own = counter.keys_for(KEY, 3000)[1]
    client = counter.client
    assert client.zcard(own) == 4  # capped
    assert 0 < client.pttl(own) <= 300
    names = cast(list[bytes], client.keys("*"))
    assert KEY.encode() not in b"".join(names)  # addresses stay out of Redis
    wait_until(lambda: not client.exists(own), deadline=5)
    assert not client.exists(own)
    assert counter.hit(KEY, 3000) == 1


@pytest.mark.integration
def test_redis_window_slides(fresh_redis: RedisServer) -> None:
    counter = counter_on(fresh_redis, window=0.5)
    counter.hit(KEY, 3000)
    client = counter.client
    own = counter.keys_for(KEY, 3000)[1]
    # Make the first hit older than the window by moving its score (Redis time, us).
    seconds, micros = client.time()
    old = (seconds - 10) * 1_000_000 + micros
    members = cast(list[bytes], client.zrange(own, 0, -1))
    client.zadd(own, dict.fromkeys(members, old))
    assert counter.hit(KEY, 3000) == 1


@pytest.mark.integration
def test_redis_counter_uses_redis_time_not_the_host_clock(
    fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = counter_on(fresh_redis)
    counter.hit(KEY, 3000)
    # A host whose clock is a day ahead still sees the same window.
    monkeypatch.setattr(time, "time", lambda: 1e10)
    monkeypatch.setattr(time, "monotonic", lambda: 1e10)
    assert counter.hit(KEY, 3000) == 2
    monkeypatch.undo()
    client = counter.client
    seconds, micros = client.time()
    now = seconds * 1_000_000 + micros
    pairs = cast(
        list[tuple[bytes, float]],
        client.zrange(counter.keys_for(KEY, 3000)[1], 0, -1, withscores=True),
    )
    scores = [score for _, score in pairs]
    assert all(now - 5_000_000 < s <= now for s in scores)


@pytest.mark.integration
def test_forked_workers_sharing_one_redis_counter_lose_no_hits(fresh_redis: RedisServer) -> None:
    """Review rev50: workers forked from one supervisor share the counter object, its
    node and sequence; their k-th hits were one member, counted once."""
    counter = counter_on(fresh_redis)

    def ten_hits() -> None:
        for _ in range(10):
            counter.hit(KEY, 3000)

    in_child(ten_hits)
    ten_hits()
    assert counter.peek(KEY, 3000) == 20


@pytest.mark.integration
def test_redis_hits_stamped_a_window_ahead_are_dropped(fresh_redis: RedisServer) -> None:
    """Review rev50: hits made before Redis's clock was stepped back counted until real
    time caught up with them (an hour by default)."""
    counter = counter_on(fresh_redis, window=10)
    counter.hit(KEY, 3000)
    client = counter.client
    seconds, micros = client.time()
    now = seconds * 1_000_000 + micros
    own = counter.keys_for(KEY, 3000)[1]
    client.zadd(own, {"before-the-step:1": now + 120_000_000, "just-ahead:1": now + 5_000_000})
    assert counter.peek(KEY, 3000) == 2  # a few seconds ahead: clocks of one window
    assert not client.zscore(own, "before-the-step:1")


@pytest.mark.integration
def test_a_tls_redis_with_a_private_ca_and_client_certificates(tmp_path: Path) -> None:
    """Review rev50: rediss:// could name no CA file and no client certificate, so a
    TLS Redis (which asks clients for one by default) refused every connection."""
    server = start_redis(tmp_path / "redis", tls=True)
    try:
        counter = counter_on(server)
        assert [counter.hit(KEY, 3000) for _ in range(3)] == [1, 2, 3]
        plain = server.url.split("?")[0]  # no CA named: the certificate is not trusted
        with pytest.raises(CounterError, match="certificate verify failed"):
            RedisCounter(redis_client(plain), 60, TWO_PERCENT).hit(KEY, 3000)
        # A name the certificate does not carry: refused unless the check is turned off.
        by_name = server.url.replace("127.0.0.1", "localhost")
        with pytest.raises(CounterError, match=r"[Hh]ostname mismatch"):
            RedisCounter(redis_client(by_name), 60, TWO_PERCENT).hit(KEY, 3000)
        lenient = RedisCounter(redis_client(f"{by_name}&ssl_check_hostname=false"), 60, TWO_PERCENT)
        assert lenient.hit(KEY, 3000) == 4
    finally:
        server.stop()


@pytest.mark.integration
def test_script_is_reloaded_after_script_flush(fresh_redis: RedisServer) -> None:
    counter = counter_on(fresh_redis)
    counter.hit(KEY, 3000)
    counter.client.script_flush()
    assert counter.hit(KEY, 3000) == 2


@pytest.mark.integration
def test_redis_down_raises_counter_error() -> None:
    counter = RedisCounter(
        redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5), 60, TWO_PERCENT
    )
    with pytest.raises(CounterError, match="redis"):
        counter.hit(KEY, 3000)


@pytest.mark.integration
def test_redis_that_never_answers_times_out() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"redis://127.0.0.1:{server.getsockname()[1]}/0"
        counter = RedisCounter(redis_client(url, timeout=0.2), 60, TWO_PERCENT)
        start = time.monotonic()
        with pytest.raises(CounterError):
            counter.hit(KEY, 3000)
        assert time.monotonic() - start < 2


# --- outage behaviour ------------------------------------------------------------------


OutageLog = Callable[[], list[tuple[int, str]]]


@pytest.fixture
def outage_log(caplog: pytest.LogCaptureFixture) -> OutageLog:
    """Reads the counters' log so far as (level, message), from INFO up."""
    logger = "smtpguard.counters"
    caplog.set_level(logging.INFO, logger=logger)

    def read() -> list[tuple[int, str]]:
        return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == logger]

    return read


@pytest.mark.integration
def test_redis_killed_mid_run_with_on_error_error(
    fresh_redis: RedisServer, outage_log: OutageLog
) -> None:
    clock = Clock()
    counter = ResilientCounter(
        counter_on(fresh_redis), on_error="error", retry_interval=5, clock=clock
    )
    assert [counter.hit(KEY, 3000) for _ in range(3)] == [1, 2, 3]
    fresh_redis.kill()
    for _ in range(20):
        with pytest.raises(CounterError, match="unreachable"):
            counter.hit(KEY, 3000)
        clock.now += 1  # retries every 5 s of (injected) time
    assert counter.down
    fresh_redis.restart()  # an empty Redis: no persistence in the test server
    clock.now += 5
    assert counter.hit(KEY, 3000) == 1
    assert not counter.down
    log = outage_log()
    assert [level for level, _ in log] == [logging.WARNING, logging.INFO]  # once each
    assert "unreachable" in log[0][1]
    assert "answering errors" in log[0][1]
    assert "reachable again" in log[1][1]


@pytest.mark.integration
def test_an_error_answer_is_no_unreachable_redis(
    fresh_redis: RedisServer, outage_log: OutageLog
) -> None:
    """A Redis that answers with an error (here a user who may not run the counter's
    script; a read-only replica or one out of memory the same) was logged as
    "unreachable", which sends the operator to the network (review rev50)."""
    admin = redis.Redis.from_url(fresh_redis.url)
    admin.acl_setuser("nope", enabled=True, passwords=["+pw"], keys=["*"], commands=["+ping"])
    admin.close()
    client = redis.Redis.from_url(f"redis://nope:pw@127.0.0.1:{fresh_redis.port}/0")
    counter = ResilientCounter(
        RedisCounter(client, 60, TWO_PERCENT, max_per_bucket=1000), retry_interval=5
    )
    for _ in range(2):
        with pytest.raises(CounterError, match=r"redis failing: .*(?i:permission)"):
            counter.hit(KEY, 3000)
    ((level, message),) = outage_log()
    assert level == logging.WARNING
    assert message.startswith("counter backend redis failing (redis: ")
    client.close()


@pytest.mark.integration
def test_redis_killed_mid_run_with_local_fallback(
    fresh_redis: RedisServer, outage_log: OutageLog
) -> None:
    clock = Clock()
    local = InProcessCounter(60, TWO_PERCENT, clock=clock)
    counter = ResilientCounter(
        counter_on(fresh_redis), on_error="local", local=local, retry_interval=5, clock=clock
    )
    other_host = counter_on(fresh_redis)
    assert [counter.hit(KEY, 3000) for _ in range(2)] == [1, 2]
    assert other_host.hit(KEY, 3000) == 3
    fresh_redis.kill()
    # Counting goes on, on this host only: its own two hits are remembered locally,
    # the other host's is not.
    assert [counter.hit(KEY, 3000) for _ in range(4)] == [3, 4, 5, 6]
    assert counter.peek(KEY, 3000) == 6
    log = outage_log()
    assert len(log) == 1
    assert "counting on this host only" in log[0][1]
    fresh_redis.restart()
    clock.now += 6
    assert counter.hit(KEY, 3000) == 1
    assert len(outage_log()) == 2


@pytest.mark.integration
def test_a_key_of_another_type_fails_that_sender_only(
    fresh_redis: RedisServer, outage_log: OutageLog
) -> None:
    """Review rev86 F3: a value planted under one sender's key opened an outage that
    deferred every sender for 5 s, at each message of that sender."""
    counter = ResilientCounter(counter_on(fresh_redis), on_error="error", retry_interval=5)
    primary = counter.primary
    assert isinstance(primary, RedisCounter)
    admin = redis.Redis.from_url(fresh_redis.url)
    admin.set(primary.keys_for(KEY, 3000)[1], "planted")
    pattern = primary.key_pattern(KEY)
    for _ in range(3):
        with pytest.raises(CounterError, match="WRONGTYPE") as raised:
            counter.hit(KEY, 3000)
        # The decision line's detail names the keys as the warning does (rev133 F4).
        assert str(raised.value).endswith(f"(keys {pattern})")
        assert counter.hit("other|192.0.2.9", 3000) >= 1  # at once, no outage
    assert not counter.down
    ((level, message),) = outage_log()  # once for the key
    assert level == logging.WARNING
    assert "holds another type of value" in message
    assert f"(keys {pattern})" in message
    listed = {k.decode() for k in cast(list[bytes], admin.keys(pattern))}
    assert primary.keys_for(KEY, 3000)[1] in listed
    admin.delete(primary.keys_for(KEY, 3000)[1])
    assert counter.hit(KEY, 3000) == 1
    admin.close()


@pytest.mark.integration
def test_an_outage_of_writes_ends_with_a_write(
    fresh_redis: RedisServer, outage_log: OutageLog
) -> None:
    """Review rev86 F4: out of memory, Redis answered the peeks (they write nothing):
    each ended the outage the next hit opened again, two log lines every 5 s."""
    clock = Clock()
    counter = ResilientCounter(
        counter_on(fresh_redis), on_error="error", retry_interval=5, clock=clock
    )
    admin = redis.Redis.from_url(fresh_redis.url)
    assert counter.hit(KEY, 3000) == 1
    admin.config_set("maxmemory", 1)
    try:
        for _ in range(6):  # 30 s of messages: a peek at MAIL FROM, a hit at the end
            clock.now += 5
            assert counter.peek(KEY, 3000) == 1
            with pytest.raises(CounterError, match=r"(?i)maxmemory|OOM"):
                counter.hit(KEY, 3000)
        assert counter.down
    finally:
        admin.config_set("maxmemory", 0)
    clock.now += 5
    assert counter.peek(KEY, 3000) == 1
    assert counter.hit(KEY, 3000) == 2  # right after the peek: not 5 s later
    assert not counter.down
    log = outage_log()
    assert [level for level, _ in log] == [logging.WARNING, logging.INFO]
    assert "failing" in log[0][1]
    assert "answering again after 30.0 s" in log[1][1]
    admin.close()


#: A take-back timer that does not run within a test: what the next call takes back.
NEXT_CALL_ONLY = 3600.0


def timed_out(server: RedisServer, call: Callable[[], object]) -> None:
    """``call`` while Redis hangs (SIGSTOP): it times out, and Redis runs it when it
    resumes."""
    server.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(CounterError, match=r"(?i)timeout|timed out"):
            call()
    finally:
        server.process.send_signal(signal.SIGCONT)


@pytest.mark.integration
@pytest.mark.parametrize(("take_back", "retry_counts"), [(True, 2), (False, 3)])
def test_a_hit_that_timed_out_is_taken_back_by_the_next_call(
    fresh_redis: RedisServer, take_back: bool, retry_counts: int
) -> None:
    """Review rev86 F2: a hit sent to a Redis that hung was run when it resumed, so a
    deferred message counted, and its retry was refused as one too many; rev88 N2:
    taken back after the next call, that retry still saw it. Not with take_back off
    (on_redis_error = "local": the message was counted locally and delivered)."""
    counter = RedisCounter(
        redis_client(fresh_redis.url, timeout=0.3),
        60,
        TWO_PERCENT,
        take_back=take_back,
        take_back_delay=NEXT_CALL_ONLY,
    )
    assert counter.hit(KEY, 3000) == 1
    timed_out(fresh_redis, lambda: counter.hit(KEY, 3000))
    reader = counter_on(fresh_redis)
    wait_until(lambda: reader.peek(KEY, 3000) == 2)  # Redis ran it after all
    assert counter.hit(KEY, 3000) == retry_counts  # the retry of the deferred message
    assert reader.peek(KEY, 3000) == retry_counts


@pytest.mark.integration
def test_a_hit_that_timed_out_is_taken_back_without_another_call(
    fresh_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev159 F1: the take-back waited for this process's next call, which may
    not come for the whole window (the other workers got the traffic): the deferred
    message counted, and its sender was refused for good one message early."""
    counter = RedisCounter(
        redis_client(fresh_redis.url, timeout=0.3), 60, TWO_PERCENT, take_back_delay=2.0
    )
    assert counter.hit(KEY, 3000) == 1
    reader = counter_on(fresh_redis)
    with caplog.at_level(logging.INFO, logger="smtpguard.counters"):
        timed_out(fresh_redis, lambda: counter.hit(KEY, 3000))
        wait_until(lambda: reader.peek(KEY, 3000) == 2)  # Redis ran it after all
        # Then the timer took it back: this counter made no call.
        wait_until(lambda: reader.peek(KEY, 3000) == 1)
        wait_until(lambda: "took back 1 same-size hit(s)" in caplog.text)
    assert reader.hit(KEY, 3000) == 2  # another worker's next message


@pytest.mark.integration
def test_a_counter_retired_by_a_reload_still_takes_back_its_failed_hits(
    fresh_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev162 F1: a reload while Redis hung retired the counter, and the hits
    its failed calls had written were dropped with it: the deferred message counted
    for the whole window once Redis resumed."""
    counter = RedisCounter(
        redis_client(fresh_redis.url, timeout=0.3), 60, TWO_PERCENT, take_back_delay=0.2
    )
    assert counter.hit(KEY, 3000) == 1
    reader = counter_on(fresh_redis)
    with caplog.at_level(logging.INFO, logger="smtpguard.counters"):
        fresh_redis.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(CounterError):
                counter.hit(KEY, 3000)
            counter.close()  # the reload, while Redis still hangs
            # Its timer's tries fail meanwhile (each doubles the wait), and go on.
            wait_until(lambda: counter._drain_delay >= 0.8)
        finally:
            fresh_redis.process.send_signal(signal.SIGCONT)
        wait_until(lambda: "took back 1 same-size hit(s)" in caplog.text, deadline=15)
    assert reader.peek(KEY, 3000) == 1


@pytest.mark.integration
def test_a_take_back_refused_fails_no_call(fresh_redis: RedisServer) -> None:
    """Review rev89 F1: a pending take-back whose key now held another type failed the
    pipeline it rode in, so every sender's call failed, for good."""
    counter = ResilientCounter(
        RedisCounter(redis_client(fresh_redis.url, timeout=0.3), 60, TWO_PERCENT),
        retry_interval=5,
    )
    primary = counter.primary
    assert isinstance(primary, RedisCounter)
    assert counter.hit(KEY, 3000) == 1
    fresh_redis.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(CounterError):
            primary.hit(KEY, 3000)  # a take-back pending
    finally:
        fresh_redis.process.send_signal(signal.SIGCONT)
    admin = redis.Redis.from_url(fresh_redis.url)
    wait_until(lambda: admin.zcard(primary.keys_for(KEY, 3000)[1]) == 2)
    admin.delete(primary.keys_for(KEY, 3000)[1])
    admin.set(primary.keys_for(KEY, 3000)[1], "planted")
    for n in range(3):
        assert counter.hit(f"other{n}|192.0.2.9", 3000) == 1
    assert not counter.down
    admin.close()


@pytest.mark.integration
def test_a_take_back_works_for_the_documented_redis_user(fresh_redis: RedisServer) -> None:
    """Review rev106 F1: a take-back rode in a redis-py pipeline with the call's script,
    which made redis-py ask SCRIPT EXISTS first: refused to the user conf/smtpguard.toml
    describes, so after one timeout every call failed until the worker restarted."""
    admin = redis.Redis.from_url(fresh_redis.url)
    commands = REDIS_COUNTING.split()
    admin.acl_setuser("svc", enabled=True, passwords=["+pw"], keys=["*"], commands=commands)
    url = f"redis://svc:pw@127.0.0.1:{fresh_redis.port}/0"
    counter = RedisCounter(
        redis_client(url, timeout=0.3), 60, TWO_PERCENT, take_back_delay=NEXT_CALL_ONLY
    )
    assert hit_unless_retry(counter, KEY, 3000, "retry|m0", 3) == (1, 1)
    timed_out(fresh_redis, lambda: hit_unless_retry(counter, KEY, 3000, "retry|m1", 3))
    reader = counter_on(fresh_redis)
    wait_until(lambda: reader.peek(KEY, 3000) == 2)  # Redis ran it after all
    assert hit_unless_retry(counter, KEY, 3000, "retry|m1", 3) == (2, 1)  # taken back
    assert counter.hit("other|192.0.2.9", 3000) == 1
    assert reader.peek(KEY, 3000) == 2
    admin.close()


@pytest.mark.integration
@pytest.mark.parametrize("retry", [False, True])
def test_a_take_back_after_redis_lost_its_scripts(fresh_redis: RedisServer, retry: bool) -> None:
    """The take-back's round after SCRIPT FLUSH (or a restart without persistence):
    the scripts are loaded again and what did not run runs once; the call's hit counts
    once, the hit that timed out not at all."""
    counter = RedisCounter(
        redis_client(fresh_redis.url, timeout=0.3), 60, TWO_PERCENT, take_back_delay=NEXT_CALL_ONLY
    )
    reader = counter_on(fresh_redis)
    if retry:
        assert hit_unless_retry(counter, KEY, 3000, "retry|m0", 3) == (1, 1)
        timed_out(fresh_redis, lambda: hit_unless_retry(counter, KEY, 3000, "retry|m1", 3))
    else:
        assert counter.hit(KEY, 3000) == 1
        timed_out(fresh_redis, lambda: counter.hit(KEY, 3000))
    wait_until(lambda: reader.peek(KEY, 3000) == 2)
    admin = redis.Redis.from_url(fresh_redis.url)
    admin.script_flush()
    assert hit_unless_retry(counter, KEY, 3000, "retry|m2", 3) == (2, 1)
    assert reader.peek(KEY, 3000) == 2
    admin.close()


RETRY_STEPS = [
    (key, message, size)
    for key, message, size in [
        (KEY, "m1", 3000),
        (KEY, "m1", 3000),  # a retry: counted once
        (KEY, "m2", 3010),
        (KEY, "m1", 3000),
        (KEY, "m1", 3000),
        (KEY, "m1", 3000),  # the 4th repeat counts again
        ("other|192.0.2.9", "m1", 3000),
        (KEY, "m3", 9000),
        (KEY, "m2", 3010),
    ]
]


class _TwoCalls:
    """A counter with hit and peek only: :func:`hit_unless_retry`'s two-call path."""

    def __init__(self, counter: InProcessCounter) -> None:
        self.hit, self.peek = counter.hit, counter.peek


def test_in_process_counts_a_retry_once_in_one_call_as_the_two_calls_do() -> None:
    """InProcessCounter.hit_unless_retry (one lock, one pass) gives what hit and peek
    give, step by step, and what it recorded reads the same afterwards."""
    together, apart = InProcessCounter(60, TWO_PERCENT), InProcessCounter(60, TWO_PERCENT)
    for key, message, size in RETRY_STEPS:
        attempt = f"retry|{key}|{message}|{size}"
        assert together.hit_unless_retry(key, size, attempt, 3) == hit_unless_retry(
            _TwoCalls(apart), key, size, attempt, 3
        )
    for key, message, size in RETRY_STEPS:
        attempt = f"retry|{key}|{message}|{size}"
        assert together.peek(key, size) == apart.peek(key, size)
        assert together.peek(attempt, size) == apart.peek(attempt, size)
    assert together.peek(KEY, 3000) == 3  # m1 twice (its 4th attempt counts) and m2


@pytest.mark.integration
def test_redis_counts_a_retry_once_in_one_call_as_the_two_calls_do(
    fresh_redis: RedisServer,
) -> None:
    """Review rev95 F7: RedisCounter.hit_unless_retry is one script that does what
    hit_unless_retry does with hit and peek; the attempts' sets share the sender's hash
    tag (one Redis Cluster slot for the script's keys)."""
    together = counter_on(fresh_redis)
    apart = InProcessCounter(60, TWO_PERCENT)
    admin = redis.Redis.from_url(fresh_redis.url)
    commands = admin.info("commandstats")
    for key, message, size in RETRY_STEPS:
        attempt = f"retry|{key}|{message}|{size}"
        assert hit_unless_retry(together, key, size, attempt, 3) == hit_unless_retry(
            apart, key, size, attempt, 3
        )
    calls = admin.info("commandstats")
    ran = sum(
        calls[name]["calls"] - commands.get(name, {"calls": 0})["calls"]
        for name in ("cmdstat_evalsha", "cmdstat_eval")
        if name in calls
    )
    assert ran == len(RETRY_STEPS) + 1  # one script per message (and one NOSCRIPT)
    tag = together.keys_for(KEY, 3000)[1].split("}")[0] + "}"
    ours = [k.decode() for k in cast(list[bytes], admin.keys(tag + "*"))]
    assert any(":a:" in k for k in ours)
    assert any(":a:" not in k for k in ours)
    admin.close()


@pytest.mark.integration
@pytest.mark.parametrize("planted", [0, 1, 2])
def test_a_call_refused_by_a_planted_key_records_nothing(
    fresh_redis: RedisServer, planted: int
) -> None:
    """Review rev95 F7: the attempt was counted by a first call, the message refused by
    the second (a value of another type under the sender's key, WRONGTYPE), and its
    retry was then taken for a repeat and never counted. A script's error does not undo
    what it wrote before it, so a key of another type in any of the three buckets is
    now refused before anything is written (a plain hit in the bucket before a planted
    neighbour stayed counted too)."""
    counter = counter_on(fresh_redis)
    admin = redis.Redis.from_url(fresh_redis.url)
    bad = counter.keys_for(KEY, 3000)[planted]
    admin.set(bad, "planted")
    with pytest.raises(CounterError, match="WRONGTYPE"):
        hit_unless_retry(counter, KEY, 3000, "retry|m", 3)
    with pytest.raises(CounterError, match="WRONGTYPE"):
        counter.hit(KEY, 3000)
    admin.delete(bad)
    assert counter.peek(KEY, 3000) == 0
    assert hit_unless_retry(counter, KEY, 3000, "retry|m", 3) == (1, 1)  # the retry counts
    admin.close()


@pytest.mark.integration
def test_both_hits_of_a_retry_call_that_timed_out_are_taken_back(
    fresh_redis: RedisServer,
) -> None:
    """A hit_unless_retry that timed out but ran when Redis resumed: its message was
    deferred, so neither its attempt nor its hit counts at its retry."""
    counter = RedisCounter(
        redis_client(fresh_redis.url, timeout=0.3), 60, TWO_PERCENT, take_back_delay=NEXT_CALL_ONLY
    )
    assert hit_unless_retry(counter, KEY, 3000, "retry|m0", 3) == (1, 1)
    timed_out(fresh_redis, lambda: hit_unless_retry(counter, KEY, 3000, "retry|m1", 3))
    reader = counter_on(fresh_redis)
    wait_until(lambda: reader.peek(KEY, 3000) == 2)  # Redis ran it after all
    assert hit_unless_retry(counter, KEY, 3000, "retry|m1", 3) == (2, 1)
    assert reader.peek(KEY, 3000) == 2


@pytest.mark.integration
def test_a_retry_another_worker_forgave_keeps_the_hit_it_relied_on(
    fresh_redis: RedisServer,
) -> None:
    """Review rev96 F2: worker 1's call for a message timed out but ran when Redis
    resumed; the message's retry reached worker 2 first, was forgiven as a retry and
    delivered, counted by worker 1's hit. Worker 1's next call took that hit back, and
    the delivered message no longer counted. A retry call is taken back only while its
    attempt is still the message's newest."""
    worker1 = RedisCounter(
        redis_client(fresh_redis.url, timeout=0.3), 60, TWO_PERCENT, take_back_delay=NEXT_CALL_ONLY
    )
    worker2 = RedisCounter(redis_client(fresh_redis.url, timeout=0.3), 60, TWO_PERCENT)
    # Loads the script: an EVALSHA of a script Redis does not know yet writes nothing.
    assert hit_unless_retry(worker1, "other|192.0.2.9", 3000, "retry|m0", 3) == (1, 1)
    timed_out(fresh_redis, lambda: hit_unless_retry(worker1, KEY, 3000, "retry|m1", 3))
    reader = counter_on(fresh_redis)
    wait_until(lambda: reader.peek(KEY, 3000) == 1)  # Redis ran it after all
    assert hit_unless_retry(worker2, KEY, 3000, "retry|m1", 3) == (1, 2)  # forgiven
    # Worker 1's next call, another message: m1's hit stays, m2 counts beside it.
    assert hit_unless_retry(worker1, KEY, 3000, "retry|m2", 3) == (2, 1)
    assert reader.peek(KEY, 3000) == 2


@pytest.mark.integration
def test_resilient_counter_counts_a_retry_in_one_call_and_locally(
    fresh_redis: RedisServer,
) -> None:
    """With on_redis_error = "local" the wrapper counts each message locally too, so
    that an outage starts from this host's own recent messages; the retry rule holds in
    both, and during an outage on the local counter alone."""
    local = InProcessCounter(60, TWO_PERCENT)
    counter = ResilientCounter(
        counter_on(fresh_redis), on_error="local", local=local, retry_interval=60
    )
    assert hit_unless_retry(counter, KEY, 3000, "retry|m", 3) == (1, 1)
    assert hit_unless_retry(counter, KEY, 3000, "retry|m", 3) == (1, 2)
    assert local.peek(KEY, 3000) == 1
    fresh_redis.stop()
    assert hit_unless_retry(counter, KEY, 3000, "retry|m", 3) == (1, 3)  # local: a retry
    assert counter.down
    assert hit_unless_retry(counter, KEY, 3000, "retry|n", 3) == (2, 1)


def test_outage_does_not_hammer_redis() -> None:
    """While down, the backend is asked at most once per retry interval."""
    calls = 0

    class Down:
        def hit(self, key: str, size: int) -> int:
            nonlocal calls
            calls += 1
            raise CounterError("down")

        peek = hit

    clock = Clock()
    counter = ResilientCounter(Down(), on_error="error", retry_interval=5, clock=clock)
    for _ in range(100):
        with pytest.raises(CounterError):
            counter.hit(KEY, 1)
        clock.now += 0.1
    assert calls == 2  # at 0 s and at 5 s


def test_local_fallback_needs_a_local_counter() -> None:
    with pytest.raises(ValueError, match="local counter"):
        ResilientCounter(InProcessCounter(60, TWO_PERCENT), on_error="local")


# --- the shared (memory-mapped) backend -------------------------------------------------


def shared(path: Path, window: float = 60, **kw: Any) -> SharedCounter:
    return SharedCounter(path / "counters.map", window, kw.pop("buckets", TWO_PERCENT), **kw)


def test_shared_counts_same_size_per_key_with_neighbours(tmp_path: Path) -> None:
    counter = shared(tmp_path, buckets=SizeBuckets(100, relative=False))
    assert [counter.hit(KEY, 1000) for _ in range(3)] == [1, 2, 3]
    assert counter.hit(KEY, 1150) == 4  # the neighbour bucket counts both ways
    assert counter.peek(KEY, 1000) == 4
    assert counter.peek(KEY, 1250) == 1  # two buckets up: only the 1150 one
    assert counter.peek(KEY, 5000) == 0
    assert counter.peek("other|192.0.2.1", 1000) == 0
    assert counter.peek(KEY, 1000) == 4  # peek records nothing


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["a|x", "b|x"]),
            st.sampled_from(["m1", "m2", "m3"]),
            st.sampled_from([1000, 1010, 1500]),
        ),
        max_size=25,
    )
)
def test_shared_counts_a_retry_once_as_the_two_calls_do(
    steps: list[tuple[str, str, int]],
) -> None:
    """SharedCounter.hit_unless_retry does under one lock what hit_unless_retry does with
    hit and peek (review rev93 F3's retries; one lock instead of two per message)."""
    with tempfile_dir() as path:
        together = shared(path)
        apart = InProcessCounter(60, TWO_PERCENT)
        for key, message, size in steps:
            attempt = f"retry|{key}|{message}|{size}"
            assert together.hit_unless_retry(key, size, attempt, 3) == hit_unless_retry(
                apart, key, size, attempt, 3
            )


@contextlib.contextmanager
def tempfile_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: hypothesis runs the test many times within one of it.
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def test_shared_window_slides_with_slot_precision(tmp_path: Path) -> None:
    clock = Clock()
    counter = shared(tmp_path, window=300, clock=clock)
    assert counter.hit(KEY, 7000) == 1
    clock.now += 200
    assert counter.hit(KEY, 7000) == 2
    # A hit counts for at least the window, and at most one slot (window / 30) more.
    clock.now += 100
    assert counter.peek(KEY, 7000) == 2
    clock.now += 300 / 30 + 0.001
    assert counter.peek(KEY, 7000) == 1
    clock.now += 200
    assert counter.peek(KEY, 7000) == 0
    assert counter.hit(KEY, 7000) == 1


@given(
    steps=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=60),
    start=st.integers(min_value=0, max_value=10**6),
)
def test_shared_count_is_the_hits_of_the_slots_in_the_window(
    tmp_path_factory: pytest.TempPathFactory, steps: list[int], start: int
) -> None:
    # Hits a random number of slots apart, so the slots in the window wrap around the
    # ring at every offset: each count is the hits whose slot is not older than the
    # window's first slot, as the class documents.
    window, slot = 300.0, 300.0 / 30
    clock = Clock(start * slot + slot / 2)
    counter = shared(tmp_path_factory.mktemp("ring"), window=window, clock=clock)
    made: list[int] = []
    for step in steps:
        clock.now += step * slot
        made.append(math.floor(clock.now / slot))
        first = math.floor((clock.now - window) / slot)
        assert counter.hit(KEY, 7000) == sum(1 for s in made if s >= first)


def test_shared_counter_is_one_view_for_every_object_on_the_file(tmp_path: Path) -> None:
    # What two worker processes see (the processes themselves: tests/test_workers.py).
    one, two = shared(tmp_path), shared(tmp_path)
    assert one.hit(KEY, 7000) == 1
    assert two.hit(KEY, 7000) == 2
    assert one.peek(KEY, 7000) == 2


def test_shared_threads_lose_no_hits(tmp_path: Path) -> None:
    counter = shared(tmp_path)

    def work(_n: int) -> None:
        for _ in range(300):
            counter.hit(KEY, 7000)

    assert hammer(work) == []
    assert counter.peek(KEY, 7000) == 2400


def test_shared_table_is_bounded_and_forgets_the_stalest_first(tmp_path: Path) -> None:
    clock = Clock()
    counter = shared(tmp_path, capacity=64, clock=clock)  # 32 entries for counts
    counter.prepare()
    size = (tmp_path / "counters.map").stat().st_size
    for _ in range(5):
        counter.hit(KEY, 7000)
    for i in range(200):
        # Every hit within the window; KEY is hit every round, so it is never the
        # stalest entry when a new key needs one.
        clock.now += 0.2
        counter.hit(KEY, 7000)
        counter.hit(f"k{i}", 7000)
    # 200 keys through 32 entries: the file never grew, and the key in use kept its count.
    assert (tmp_path / "counters.map").stat().st_size == size
    assert counter.peek(KEY, 7000) == 205
    assert counter.peek("k199", 7000) == 1


def test_shared_entries_out_of_the_window_are_reused(tmp_path: Path) -> None:
    clock = Clock()
    counter = shared(tmp_path, capacity=64, clock=clock)  # 32 entries for counts
    for i in range(32):
        counter.hit(f"old{i}", 7000)
    clock.now += 70
    for i in range(32):
        assert counter.hit(f"new{i}", 7000) == 1
    assert [counter.peek(f"new{i}", 7000) for i in range(32)] == [1] * 32
    assert counter.peek("old0", 7000) == 0


def test_shared_counts_a_hit_when_the_clock_goes_back(tmp_path: Path) -> None:
    clock = Clock(5000)
    counter = shared(tmp_path, clock=clock)
    counter.hit(KEY, 7000)
    clock.now -= 30
    assert counter.hit(KEY, 7000) == 2


def test_shared_file_of_another_release_is_named_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev233 L2: the file of a release with another format (SGSIZE01) was called
    a "new geometry" in the log, though no setting changed."""
    old = shared(tmp_path)
    old.hit(KEY, 7000)
    old.close()
    path = tmp_path / "counters.map"
    with path.open("r+b") as file:
        file.write(b"SGSIZE01")
    with caplog.at_level(logging.WARNING, "smtpguard.counters"):
        assert shared(tmp_path).hit(KEY, 7000) == 1
    assert "written by a release with another file format" in caplog.text
    assert "new geometry" not in caplog.text


def test_shared_file_of_another_geometry_is_made_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = shared(tmp_path, window=60)
    old.hit(KEY, 7000)
    new = shared(tmp_path, window=600)
    with caplog.at_level(logging.WARNING, "smtpguard.counters"):
        assert new.hit(KEY, 7000) == 1
    assert "new geometry, same-size counts start at zero" in caplog.text
    # The old object (sessions still on the configuration before a reload) keeps the
    # file it mapped, now replaced at the path: never truncated under it.
    assert old.hit(KEY, 7000) == 2
    assert new.peek(KEY, 7000) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "counters.map"]


def test_a_shared_file_removed_under_the_workers_is_followed_by_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev50: after the file was removed (to reset the counts) a worker started
    later counted on a new file and the running ones on the removed one, each seeing
    part of the hits. Within PATH_CHECK_INTERVAL every worker counts on the new one."""
    clock = FakeClock()
    running = shared(tmp_path, path_clock=clock)
    assert [running.hit(KEY, 7000) for _ in range(3)] == [1, 2, 3]
    (tmp_path / "counters.map").unlink()
    restarted = shared(tmp_path, path_clock=clock)
    assert restarted.hit(KEY, 7000) == 1
    clock.advance(PATH_CHECK_INTERVAL)
    with caplog.at_level(logging.WARNING, "smtpguard.counters"):
        assert running.hit(KEY, 7000) == 2
    assert "removed or replaced under the running service" in caplog.text
    assert restarted.peek(KEY, 7000) == 2
    # Restored from a copy by rename: the same.
    copy = tmp_path / "copy.map"
    shutil.copy(tmp_path / "counters.map", copy)
    copy.rename(tmp_path / "counters.map")
    clock.advance(PATH_CHECK_INTERVAL)
    assert running.hit(KEY, 7000) == 3
    assert restarted.hit(KEY, 7000) == 4


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_removed_file_on_a_full_disk_is_said_and_made_once_its_space_is_free(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev99 F3: the file removed (to reset the counts) on a full disk. The first
    worker to look cannot make it again: its count fails, and one ERROR says so (the
    WARNING about counting on the new file said it before it was there). The removed
    file's space comes back when the last process lets go of it, so the last worker
    makes the new one, and the first follows it; nobody goes on alone on the removed
    file (a supervisor keeping its map kept that space: release())."""
    with tmpfs(tmp_path / "state", "12m") as state:
        clock = FakeClock()
        one, two = shared(state, path_clock=clock), shared(state, path_clock=clock)
        assert one.hit(KEY, 7000) == 1
        assert two.hit(KEY, 7000) == 2
        (state / "counters.map").unlink()
        fill_up(state)
        clock.advance(PATH_CHECK_INTERVAL)
        with caplog.at_level(logging.WARNING, "smtpguard.counters"):
            with pytest.raises(CounterError, match="No space left on device"):
                one.hit(KEY, 7000)
            failing = [(r.levelname, r.getMessage()) for r in caplog.records]
            caplog.clear()
            assert two.hit(KEY, 7000) == 1
            assert one.hit(KEY, 7000) == 2
        back = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in failing] == ["ERROR"]
    assert "cannot be made again (" in failing[0][1]
    assert [level for level, _ in back] == ["WARNING", "WARNING"]
    assert all("counting on the file now at the path" in m for _, m in back), back


def test_the_supervisor_lets_the_file_go_after_making_it(tmp_path: Path) -> None:
    counter = shared(tmp_path)
    counter.prepare()
    counter.release()
    assert descriptors_on(tmp_path / "counters.map") == 0
    assert counter.hit(KEY, 7000) == 1


def in_child(scenario: Callable[[], None]) -> None:
    """Run ``scenario`` in a forked child: a regression here is SIGBUS, which must kill
    the child, not the test run."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            scenario()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child killed by signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0


def test_a_shared_file_cut_in_place_is_put_back_not_a_crash(tmp_path: Path) -> None:
    """Found by review: truncating the file under a running worker killed it with
    SIGBUS at its next message. The second review: a restore with cp (cut, then
    written again) split the workers onto two files when one was made anew."""

    def scenario() -> None:
        path = tmp_path / "counters.map"
        counter = shared(tmp_path)
        assert counter.hit(KEY, 1000) == 1
        other = shared(tmp_path)  # another worker's view of the same file
        assert other.hit(KEY, 1000) == 2
        backup = path.read_bytes()
        with path.open("wb") as target:  # cp opens its target with O_TRUNC ...
            assert counter.hit(KEY, 1000) == 1  # what was cut counts from zero
            assert path.stat().st_size == counter.size
            target.write(backup)  # ... and then writes the copy through that descriptor
        # Both still count on the one file, the copy's counts included.
        assert other.hit(KEY, 1000) == 3
        assert counter.peek(KEY, 1000) == 3
        assert list(tmp_path.iterdir()) == [path]

    in_child(scenario)


def test_a_worker_that_maps_a_cut_file_first_puts_it_back_too(tmp_path: Path) -> None:
    """Third review: a worker that had not mapped the file yet (just started) found it
    cut and made a new one by rename, while the others put the old one back: each
    counted alone."""

    def scenario() -> None:
        path = tmp_path / "counters.map"
        counting = shared(tmp_path)
        assert counting.hit(KEY, 1000) == 1
        fresh = shared(tmp_path)  # a worker with no message yet: nothing mapped
        os.truncate(path, 0)
        assert fresh.hit(KEY, 1000) == 1
        assert counting.hit(KEY, 1000) == 2
        assert fresh.peek(KEY, 1000) == 2
        assert list(tmp_path.iterdir()) == [path]

    in_child(scenario)


def test_a_shared_counter_dropped_without_close_closes_its_file(tmp_path: Path) -> None:
    """A reload retires the old counter with close(); a session still on the old
    runtime then maps the file again, and that descriptor must go with the counter."""
    counter = shared(tmp_path)
    counter.hit(KEY, 1000)
    counter.close()
    counter.hit(KEY, 1000)  # the straggler
    assert descriptors_on(tmp_path / "counters.map") > 0
    del counter
    gc.collect()
    assert descriptors_on(tmp_path / "counters.map") == 0


def test_close_releases_the_file_and_a_later_call_still_counts(tmp_path: Path) -> None:
    counter = shared(tmp_path)
    assert counter.hit(KEY, 1000) == 1
    counter.close()
    assert descriptors_on(tmp_path / "counters.map") == 0
    assert counter.hit(KEY, 1000) == 2


def test_a_retired_counter_never_makes_the_file_again(tmp_path: Path) -> None:
    """A reload that changes the window retires the old counter; a session still on
    the old configuration must not put the old geometry back under the path, or the
    workers' new counters end up on different files (a flood split between them)."""
    old, new = shared(tmp_path, 3600), shared(tmp_path, 600)
    old.hit(KEY, 1000)
    old.close()
    assert new.hit(KEY, 1000) == 1  # a new geometry: counts start at zero
    made = (tmp_path / "counters.map").stat().st_ino
    # Without a successor named, nothing is counted: the check's temporary error.
    with pytest.raises(CounterError, match="made again for another geometry"):
        old.hit(KEY, 1000)
    with pytest.raises(CounterError):
        old.hit_unless_retry(KEY, 1000, "retry|1", 3)
    assert (tmp_path / "counters.map").stat().st_ino == made
    assert new.hit(KEY, 1000) == 2


def test_a_counter_retired_for_another_geometry_counts_on_its_successor(
    tmp_path: Path,
) -> None:
    """Review rev197: a message in flight at a reload that changed the window was
    counted as a first (hit 1) and delivered, however far over the threshold its
    sender was in both files, while the workers that reloaded first counted on."""
    old, new = shared(tmp_path, 3600), shared(tmp_path, 600)
    old.hit(KEY, 1000)
    old.close()
    old.succeeded_by(new)
    assert new.hit(KEY, 1000) == 1
    assert old.hit(KEY, 1000) == 2
    assert old.peek(KEY, 1000) == 2
    assert old.hit_unless_retry(KEY, 1000, "retry|1", 3) == (3, 1)
    assert old.hit_unless_retry(KEY, 1000, "retry|1", 3) == (3, 2)  # a retry, not counted
    assert new.peek(KEY, 1000) == 3


def test_a_retired_counter_of_the_same_geometry_counts_on(tmp_path: Path) -> None:
    """A reload that changes only the threshold: the retired counter's file is the
    new one's, and a session still on it counts there."""
    old, new = shared(tmp_path), shared(tmp_path)
    old.hit(KEY, 1000)
    old.close()
    assert new.hit(KEY, 1000) == 2
    assert old.hit(KEY, 1000) == 3
    assert new.peek(KEY, 1000) == 3


def test_two_geometries_in_one_process_do_not_crash_it(tmp_path: Path) -> None:
    """A reload that changes the window builds a second counter on the file while the
    first still serves; each used to make the file again in place for its layout, and
    the other then read a truncated map: SIGBUS, every worker killed. Run in a child,
    so that a regression fails this test instead of killing the test run."""
    script = f"""
import sys, threading, time
sys.path[:0] = {sys.path!r}
from smtpguard.counters import SharedCounter, SizeBuckets
buckets = SizeBuckets(0.02)
path = {str(tmp_path / "counters.map")!r}
old, new = SharedCounter(path, 3600, buckets), SharedCounter(path, 600, buckets)
stop = time.monotonic() + 2

def run(counter):
    i = 0
    while time.monotonic() < stop:
        counter.hit(f"k{{i % 50}}", 10000)
        i += 1

threads = [threading.Thread(target=run, args=(c,)) for c in (old, new)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]


def test_shared_counts_stamped_while_the_clock_ran_ahead_expire(tmp_path: Path) -> None:
    """A day ahead, then set back: the hits stamped in the future used to stay the
    newest and count for a day, so one message an hour tripped the limit."""
    clock = Clock(1_000_000 + 86400)
    counter = shared(tmp_path, window=600, clock=clock)
    counter.hit(KEY, 7000)
    clock.now -= 86400
    counts = []
    for _ in range(24):
        counts.append(counter.hit(KEY, 7000))
        clock.now += 3600
    assert counts == [1] * 24
    assert counter.total() == 0  # the last hit left the window an hour ago


def test_shared_file_that_is_not_a_table_is_made_again(tmp_path: Path) -> None:
    (tmp_path / "counters.map").write_bytes(b"not a counter table\n" * 100)
    counter = shared(tmp_path)
    assert counter.hit(KEY, 7000) == 1
    assert (tmp_path / "counters.map").stat().st_size == counter.size


def test_shared_file_holds_no_addresses(tmp_path: Path) -> None:
    counter = shared(tmp_path)
    counter.hit(KEY, 7000)
    data = (tmp_path / "counters.map").read_bytes()
    assert b"spammer" not in data
    assert b"198.51.100.7" not in data
    assert data.count(b"\0") < len(data)  # something was written


def test_shared_file_that_cannot_be_made_is_a_counter_error(tmp_path: Path) -> None:
    counter = SharedCounter(tmp_path / "missing" / "counters.map", 60, TWO_PERCENT)
    with pytest.raises(CounterError, match=r"missing/counters\.map"):
        counter.hit(KEY, 7000)
    with pytest.raises(CounterError):
        counter.prepare()


def test_a_shared_file_that_cannot_be_opened_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev226 F1: a file this user may not open (root made it) failed every
    message's count with no more than the message's own INFO line."""
    caplog.set_level(logging.INFO, logger="smtpguard.counters")
    missing = tmp_path / "missing"
    counter = SharedCounter(missing / "counters.map", 60, TWO_PERCENT)
    for _ in range(3):
        with pytest.raises(CounterError):
            counter.hit(KEY, 7000)
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert said == [
        (
            logging.ERROR,
            f"cannot use the workers' same-size file ({missing}/counters.map: No such file"
            " or directory): same-size counting fails, [checks.bulk] on_temp_error decides,"
            " until it can (let the service's user write it, or remove it: the service"
            " makes it again)",
        )
    ]
    missing.mkdir()
    assert counter.hit(KEY, 7000) == 1
    assert [(r.levelno, r.getMessage()) for r in caplog.records][1:] == [
        (logging.WARNING, f"{missing}/counters.map: the same-size file can be used again")
    ]


def test_shared_capacity_must_be_a_power_of_two(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="power of two"):
        shared(tmp_path, capacity=1000)


def _hold_lock(path: str, held: Any, release: Any) -> None:
    # A worker stopped while it holds the counter's lock, as SIGSTOP would leave it.
    with open(path, "r+b") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        held.set()
        release.wait(30)


def test_shared_lock_waiter_yields_first_then_sleeps_longer_each_time() -> None:
    # The lock is held for microseconds: the first tries only yield the CPU; a holder
    # that stays (descheduled, stopped) is then polled less and less often.
    pauses = list(itertools.islice(lock_pauses(), 30))
    assert pauses[:20] == [0.0] * 20
    assert pauses[20:27] == [0.00005, 0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.002]
    assert pauses[27:] == [0.002] * 3


@contextlib.contextmanager
def _lock_held_elsewhere(counter: SharedCounter) -> Iterator[Any]:
    """Another process holds the counter file's lock until the yielded event is set
    (or the block ends)."""
    counter.prepare()
    fork = multiprocessing.get_context("fork")
    held, release = fork.Event(), fork.Event()
    holder = fork.Process(target=_hold_lock, args=(counter.path, held, release))
    holder.start()
    try:
        assert held.wait(10)
        yield release
    finally:
        release.set()
        holder.join(10)


def _try_hit(path: str, answer: Any) -> None:
    try:
        SharedCounter(path, 60, TWO_PERCENT, timeout=0.2).hit(KEY, 1000)
    except CounterError:
        answer.put("locked")
    else:
        answer.put("counted")


def test_closing_one_counter_keeps_the_lock_another_holds(tmp_path: Path) -> None:
    """A reload retires (closes) a counter on the same file as the new one, which may
    hold the lock in the middle of a hit at that moment: POSIX record locks belong to
    the process, and closing any descriptor of the file dropped them."""
    holder, retired = shared(tmp_path), shared(tmp_path)
    retired.hit(KEY, 1000)
    holder.prepare()
    holder._lock_file(holder._fd)  # as in the middle of a hit
    try:
        retired.close()
        fork = multiprocessing.get_context("fork")
        answer = fork.Queue()
        other = fork.Process(target=_try_hit, args=(holder.path, answer))
        other.start()
        other.join(10)
        assert answer.get(timeout=5) == "locked"
    finally:
        fcntl.flock(holder._fd, fcntl.LOCK_UN)


def test_shared_hit_waits_for_a_lock_released_soon(tmp_path: Path) -> None:
    counter = shared(tmp_path, timeout=10)
    counts: list[int] = []
    with _lock_held_elsewhere(counter) as release:
        hitting = threading.Thread(target=lambda: counts.append(counter.hit(KEY, 7000)))
        hitting.start()
        assert not counts  # the other process holds the lock
        release.set()
        hitting.join(10)
    assert counts == [1]


def test_shared_lock_held_elsewhere_is_a_counter_error_after_the_timeout(
    tmp_path: Path,
) -> None:
    counter = shared(tmp_path, timeout=0.3)
    with _lock_held_elsewhere(counter):
        started = time.monotonic()
        with pytest.raises(CounterError, match=r"locked by another process for 0\.3 s"):
            counter.hit(KEY, 7000)
        assert 0.3 <= time.monotonic() - started < 3
    # Released: the next call counts as usual.
    assert counter.hit(KEY, 7000) == 1


def test_the_sessions_of_a_process_wait_for_a_held_lock_side_by_side(tmp_path: Path) -> None:
    """Review rev197: behind a session waiting for the file lock (held by a stopped
    worker), a worker's other sessions queued on its thread lock and each waited its
    own timeout after the one before: the waits added up. Now one timeout in all."""
    counter = shared(tmp_path, timeout=1.0)
    ended: list[float] = []

    def hit() -> None:
        with contextlib.suppress(CounterError):
            counter.hit_unless_retry(KEY, 7000, "retry|1", 3)
        ended.append(time.monotonic())

    with _lock_held_elsewhere(counter):
        started = time.monotonic()
        sessions = [threading.Thread(target=hit) for _ in range(4)]
        for session in sessions:
            session.start()
        for session in sessions:
            session.join(30)
    assert len(ended) == 4
    # Four after one another would take 4 s; side by side about 1.
    assert max(ended) - started < 2.5


def test_an_attempt_never_takes_a_counts_place(tmp_path: Path) -> None:
    """Review rev95 F2: an attempt's key comes from a Message-ID the sender chooses,
    which could be ground so that its entry evicted the sender's own count (a flood
    without limit). Attempts have a half of the table of their own: however many
    there are, the counts stay."""
    counter = shared(tmp_path, capacity=64)
    for n in range(31):
        counter.hit(f"other{n}", 1000)
    assert counter.hit(KEY, 1000) == 1  # the last free entry for counts
    for n in range(1, 101):
        assert counter.hit_unless_retry(KEY, 1000, f"retry|{n}", 3) == (n + 1, 1)
    assert [counter.peek(f"other{n}", 1000) for n in range(31)] == [1] * 31
    assert counter.total() == 32 + 100


def test_a_retry_counts_once_with_the_counts_half_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev141 F2: with every entry live (a busy window), an attempt found no
    room, so each retry counted as a first attempt: the 3rd attempt of one message got
    552 under a threshold of 2. A full table is said once (WARNING)."""
    clock = Clock()
    counter = shared(tmp_path, capacity=64, clock=clock)
    with caplog.at_level(logging.WARNING, "smtpguard.counters"):
        for n in range(200):
            counter.hit(f"other{n}", 1000)  # the counts' half full, and then some
        for n in range(40):
            clock.now += 0.1
            counter.hit_unless_retry(f"old{n}", 5000, f"retry|old{n}", 3)  # attempts
        clock.now += 0.1
        attempts = [counter.hit_unless_retry(KEY, 1000, "retry|m1", 3) for _ in range(4)]
    # Its attempt took the place of the attempt idle longest: counted once, the
    # three retries forgiven.
    assert attempts == [(1, 1), (1, 2), (1, 3), (1, 4)]
    assert counter.peek("retry|old39", 5000) == 0  # attempts are not counts
    assert caplog.text.count("is full") == 1
    assert "raise [bulk] shared_entries above 64" in caplog.text
