"""The DNS service: cache (TTL, caps, RFC 2308 negative caching, failures, a full
cache, threads), distinct statuses, in-flight sharing, deadlines, names. The wire
client is tested in test_dnswire.py.

The cache tests pass a fake transport and a fake clock into the resolver; nothing is
patched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.reversename
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.config import DnsConfig
from smtpguard.dns import (
    DOWN_AFTER,
    Answer,
    Resolver,
    Status,
    client_address,
    client_network,
    dnsbl_name,
    make_resolver,
    normalize,
    reverse_name,
)
from support.fake_dns import FakeClock, FakeDns, fake_resolver, hold_slots
from support.polling import wait_until
from support.recording_metrics import RecordingMetrics
from support.threads import hammer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def resolver(fake: FakeDns, clock: FakeClock) -> Iterator[Resolver]:
    r = fake_resolver(fake, clock, max_ttl=3600, negative_ttl=600, failure_ttl=5)
    yield r
    r.close()


@pytest.fixture
def live_resolver(fake: FakeDns) -> Iterator[Resolver]:
    """For the tests that time real delays of the fake (``fake.delay``)."""
    r = fake_resolver(fake)
    yield r
    r.close()


def ask(resolver: Resolver, name: str, rdtype: str) -> Answer:
    return resolver.lookup(name, rdtype, time.monotonic() + 5)


def assert_cached_for(
    resolver: Resolver, fake: FakeDns, clock: FakeClock, name: str, seconds: int
) -> None:
    """The answer for ``name`` A is reused for ``seconds`` and asked for again after."""
    ask(resolver, name, "A")
    clock.advance(seconds - 1)
    ask(resolver, name, "A")
    assert fake.count(name, "A") == 1
    clock.advance(2)
    ask(resolver, name, "A")
    assert fake.count(name, "A") == 2


# --- positive answers -----------------------------------------------------------------


def test_answer_is_cached_for_its_ttl(resolver: Resolver, fake: FakeDns, clock: FakeClock) -> None:
    fake.add("mx.example.test", "A", "192.0.2.1", ttl=60)
    assert ask(resolver, "mx.example.test", "A").addresses() == (ipaddress.ip_address("192.0.2.1"),)
    clock.advance(59)
    assert ask(resolver, "MX.Example.Test.", "A").ok  # same key: case and final dot
    assert fake.count("mx.example.test", "A") == 1
    clock.advance(2)
    assert ask(resolver, "mx.example.test", "A").ok
    assert fake.count("mx.example.test", "A") == 2


def test_positive_ttl_is_capped(resolver: Resolver, fake: FakeDns, clock: FakeClock) -> None:
    fake.add("long.example.test", "A", "192.0.2.1", ttl=7 * 86400)
    assert_cached_for(resolver, fake, clock, "long.example.test", 3600)  # max_ttl


def test_ttl_zero_is_not_cached(resolver: Resolver, fake: FakeDns) -> None:
    fake.add("zero.example.test", "A", "192.0.2.1", ttl=0)
    ask(resolver, "zero.example.test", "A")
    ask(resolver, "zero.example.test", "A")
    assert fake.count("zero.example.test", "A") == 2


# --- negative answers (RFC 2308) ------------------------------------------------------


def test_nxdomain_cached_for_negative_ttl_and_for_every_type(
    resolver: Resolver, fake: FakeDns, clock: FakeClock
) -> None:
    fake.negative_ttl = 30
    assert ask(resolver, "nope.example.test", "A").status is Status.NXDOMAIN
    # RFC 2308 §5: the name does not exist, whatever the type.
    assert ask(resolver, "nope.example.test", "TXT").status is Status.NXDOMAIN
    clock.advance(29)
    assert ask(resolver, "nope.example.test", "A").status is Status.NXDOMAIN
    assert fake.calls == [("nope.example.test", "A")]
    clock.advance(2)
    assert ask(resolver, "nope.example.test", "A").status is Status.NXDOMAIN
    assert fake.count("nope.example.test", "A") == 2


def test_nodata_is_cached_per_type(resolver: Resolver, fake: FakeDns, clock: FakeClock) -> None:
    fake.add("host.example.test", "A", "192.0.2.1")
    assert ask(resolver, "host.example.test", "AAAA").status is Status.NODATA
    assert ask(resolver, "host.example.test", "AAAA").status is Status.NODATA
    assert ask(resolver, "host.example.test", "A").ok
    assert fake.count("host.example.test", "AAAA") == 1


def test_negative_ttl_is_capped(resolver: Resolver, fake: FakeDns, clock: FakeClock) -> None:
    fake.negative_ttl = 86400
    assert_cached_for(resolver, fake, clock, "nope.example.test", 600)  # negative_ttl


def test_negative_answer_without_soa_is_not_cached(resolver: Resolver, fake: FakeDns) -> None:
    fake.negative_ttl = 0  # RFC 2308 §5: no SOA, no negative caching
    ask(resolver, "nope.example.test", "A")
    ask(resolver, "nope.example.test", "A")
    assert fake.count("nope.example.test", "A") == 2


# --- a full cache -----------------------------------------------------------------------


def test_full_cache_drops_expired_answers_before_live_ones(fake: FakeDns, clock: FakeClock) -> None:
    fake.add("a.example.test", "A", "192.0.2.1", ttl=60)
    fake.add("b.example.test", "A", "192.0.2.2", ttl=60)
    fake.add("c.example.test", "A", "192.0.2.3", ttl=0.5)
    fake.add("d.example.test", "A", "192.0.2.4", ttl=60)
    resolver = fake_resolver(fake, clock, cache_size=2)
    try:
        for name in ("a", "b", "c"):  # c pushes a out
            ask(resolver, f"{name}.example.test", "A")
        clock.advance(0.6)  # c has expired, b has not
        ask(resolver, "d.example.test", "A")
        assert ask(resolver, "b.example.test", "A").ok
        assert fake.count("b.example.test", "A") == 1
    finally:
        resolver.close()


def test_full_cache_drops_the_least_recently_used(fake: FakeDns, clock: FakeClock) -> None:
    for name in ("a", "b", "c"):
        fake.add(f"{name}.example.test", "A", "192.0.2.1", ttl=60)
    resolver = fake_resolver(fake, clock, cache_size=2)
    try:
        ask(resolver, "a.example.test", "A")
        ask(resolver, "b.example.test", "A")
        ask(resolver, "a.example.test", "A")  # from the cache: a is the most recently used
        ask(resolver, "c.example.test", "A")  # no room: b goes
        ask(resolver, "a.example.test", "A")
        ask(resolver, "b.example.test", "A")
        assert [fake.count(f"{n}.example.test", "A") for n in "abc"] == [1, 2, 1]
    finally:
        resolver.close()


def test_callback_threads_read_the_cache_while_the_loop_writes_it(fake: FakeDns) -> None:
    names = [f"h{i}.example.test" for i in range(4)]
    for name in names:
        fake.add(name, "A", "192.0.2.1")
    # Two entries for four names: every lookup of thread 0 stores an answer (on the
    # loop thread) and evicts one the other threads are reading.
    resolver = fake_resolver(fake, cache_size=2)
    done = threading.Event()

    def work(n: int) -> None:
        if n == 0:
            try:
                for i in range(200):
                    assert resolver.submit(names[i % 4], "A").result(timeout=5).ok
            finally:
                done.set()
            return
        i = n
        while not done.is_set():
            answer = resolver.cached(names[i % 4], "A")
            assert answer is None or answer.name == names[i % 4]
            i += 1

    try:
        assert hammer(work) == []
    finally:
        resolver.close()


# --- failures -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [Status.SERVFAIL, Status.TIMEOUT])
def test_failures_are_remembered_briefly(
    resolver: Resolver, fake: FakeDns, clock: FakeClock, status: Status
) -> None:
    fake.fail("flaky.example.test", "MX", status)
    assert ask(resolver, "flaky.example.test", "MX").status is status
    clock.advance(4)
    assert ask(resolver, "flaky.example.test", "MX").status is status
    assert fake.count("flaky.example.test", "MX") == 1
    clock.advance(2)  # past failure_ttl = 5
    del fake.statuses[("flaky.example.test", "MX")]
    fake.add("flaky.example.test", "MX", "10 mx.example.test.")
    assert ask(resolver, "flaky.example.test", "MX").ok


def test_statuses_stay_distinct(resolver: Resolver, fake: FakeDns) -> None:
    fake.add("ok.example.test", "A", "192.0.2.1")
    fake.fail("sf.example.test", "A", Status.SERVFAIL)
    fake.fail("to.example.test", "A", Status.TIMEOUT)
    got = [
        ask(resolver, name, rdtype).status
        for name, rdtype in [
            ("ok.example.test", "A"),
            ("ok.example.test", "MX"),
            ("nx.example.test", "A"),
            ("sf.example.test", "A"),
            ("to.example.test", "A"),
        ]
    ]
    assert got == [
        Status.OK,
        Status.NODATA,
        Status.NXDOMAIN,
        Status.SERVFAIL,
        Status.TIMEOUT,
    ]
    assert [s.temporary for s in got] == [False, False, False, True, True]


def test_transport_exception_becomes_servfail(clock: FakeClock) -> None:
    class Broken:
        async def query(self, name: str, rdtype: str) -> Answer:
            raise RuntimeError("socket exploded")

    resolver = Resolver(Broken(), clock=clock)
    try:
        answer = ask(resolver, "x.example.test", "A")
        assert answer.status is Status.SERVFAIL
        assert "socket exploded" in answer.detail
        # The loop survived.
        assert ask(resolver, "y.example.test", "A").status is Status.SERVFAIL
    finally:
        resolver.close()


def test_invalid_name_is_nxdomain_without_a_query(resolver: Resolver, fake: FakeDns) -> None:
    answer = ask(resolver, "a" * 64 + ".example.test", "A")
    assert answer.status is Status.NXDOMAIN
    assert "invalid name" in answer.detail
    assert fake.calls == []


# --- concurrency and deadlines --------------------------------------------------------


def test_concurrent_askers_share_one_query(fake: FakeDns, live_resolver: Resolver) -> None:
    fake.delay = 0.2
    fake.add("slow.example.test", "A", "192.0.2.1")
    futures = [live_resolver.submit("slow.example.test", "A") for _ in range(20)]
    assert all(f.result(timeout=5).ok for f in futures)
    assert fake.count("slow.example.test", "A") == 1
    # From the cache now: the future comes back already done.
    assert live_resolver.submit("slow.example.test", "A").done()


def test_lookups_run_concurrently(fake: FakeDns, live_resolver: Resolver) -> None:
    fake.delay = 0.3
    start = time.monotonic()
    futures = [live_resolver.submit(f"h{i}.example.test", "A") for i in range(30)]
    assert all(f.result(timeout=5).status is Status.NXDOMAIN for f in futures)
    assert time.monotonic() - start < 1.5  # 30 x 0.3 s one after another would be 9 s


def test_deadline_gives_timeout_and_the_answer_is_kept(
    fake: FakeDns, live_resolver: Resolver
) -> None:
    fake.delay = 0.3
    fake.add("late.example.test", "TXT", '"hello"')
    start = time.monotonic()
    answer = live_resolver.lookup("late.example.test", "TXT", time.monotonic() + 0.05)
    assert answer.status is Status.TIMEOUT
    assert answer.detail == "stage deadline reached"
    assert time.monotonic() - start < 0.25
    # The query went on and its answer is cached for the next asker.
    later = live_resolver.lookup("late.example.test", "TXT", time.monotonic() + 2)
    assert later.texts() == ("hello",)
    assert fake.count("late.example.test", "TXT") == 1


def test_submit_never_blocks(fake: FakeDns, live_resolver: Resolver) -> None:
    fake.delay = 0.5
    start = time.monotonic()
    future = live_resolver.submit("x.example.test", "A")
    assert time.monotonic() - start < 0.1
    assert not future.done()
    assert live_resolver.wait(future, time.monotonic()) is None


# --- names ------------------------------------------------------------------------------


def test_names() -> None:
    v4 = ipaddress.ip_address("198.51.100.7")
    v6 = ipaddress.ip_address("2001:db8::66")
    assert dnsbl_name(v4, "rbl.test") == "7.100.51.198.rbl.test"
    assert dnsbl_name(v6, "rbl.test") == ".".join(reversed("20010db8" + "0" * 20 + "0066")) + (
        ".rbl.test"
    )
    assert reverse_name(v4) == "7.100.51.198.in-addr.arpa"
    assert reverse_name(v6).endswith(".8.b.d.0.1.0.0.2.ip6.arpa")
    assert client_address(ipaddress.ip_address("::ffff:198.51.100.7")) == v4
    assert normalize("Bücher.Example.") == "xn--bcher-kva.example"
    # IDNA2008, not dnspython's IDNA2003: that maps straße.de to strasse.de.
    assert normalize("straße.de") == "xn--strae-oqa.de"
    assert normalize("fa\u00df.de") != normalize("fass.de")
    with pytest.raises(ValueError, match="internationalized"):
        normalize("\u2603.test")


@given(st.ip_addresses())
def test_reverse_name_is_dnspythons(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    expected = dns.reversename.from_address(str(ip)).to_text(omit_final_dot=True)
    assert reverse_name(ip) == expected
    with pytest.raises(ValueError, match="label"):
        normalize("a" * 64 + ".test")


class SlowZones:
    """A transport whose names under ``slow.test`` take ``seconds`` to fail."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def query(self, name: str, rdtype: str) -> Answer:
        if name.endswith("slow.test"):
            await asyncio.sleep(self.seconds)
        return Answer(name, rdtype, Status.NXDOMAIN, ttl=0)


def test_dnsbl_zones_keep_slots_of_their_own() -> None:
    """Review rev48: a flood of connections whose own zones never answer held every
    slot; a DNSBL lookup waited until the stage deadline and the listed client passed
    as after a DNS timeout. Lookups under a reserved zone have slots of their own."""
    resolver = Resolver(SlowZones(30), max_inflight=2)
    resolver.reserve(["RBL.test.", "bl.example"])
    try:
        for i in range(4):  # both slots held, two more waiting
            resolver.submit(f"{i}.slow.test", "PTR")
        started = time.monotonic()
        listed = resolver.lookup("2.0.0.127.rbl.test", "A", started + 2)
        assert listed.status is Status.NXDOMAIN, listed
        assert resolver.lookup("2.0.0.127.bl.example", "A", started + 2).status is Status.NXDOMAIN
        assert time.monotonic() - started < 1
        # Not a reserved zone (a suffix of a label is none): it waits for a slot.
        other = resolver.lookup("x.notrbl.test", "A", time.monotonic() + 0.3)
        assert other.status is Status.TIMEOUT
        assert "stage deadline reached" in other.detail
    finally:
        resolver.close()


def test_a_timeout_waiting_for_a_slot_says_this_host_was_busy(fake: FakeDns) -> None:
    """Review rev52 N3: a flood filled the slots, the sender's SPF lookup timed out in
    the queue and passed as a DNS timeout. Such a timeout is ``busy``; one the server
    caused is not."""
    fake.add("forged.test", "TXT", '"v=spf1 -all"')
    fake.slow["slow-server.test"] = 60
    metrics = RecordingMetrics()
    resolver = fake_resolver(fake, max_inflight=2, metrics=metrics)
    try:
        slow = resolver.lookup("slow-server.test", "TXT", time.monotonic() + 0.2)
        assert slow.status is Status.TIMEOUT, slow
        assert not slow.busy, slow
        assert metrics.named("dns_busy") == []
        hold_slots(resolver, fake, 1)  # with the slow server's lookup: both slots held
        queued = resolver.lookup("forged.test", "TXT", time.monotonic() + 0.2)
        assert queued.status is Status.TIMEOUT, queued
        assert queued.busy, queued
        assert "waiting for a resolver slot" in queued.detail
        assert ("forged.test", "TXT") not in fake.calls
        assert metrics.named("dns_busy") == [("slots",)]
    finally:
        resolver.close()


def test_the_clients_names_wait_for_slots_of_their_own(fake: FakeDns) -> None:
    """Names the connecting client chooses (its reverse zone, its PTR names, its HELO
    name) fill the client pool alone: a connect flood whose zones never answer leaves
    the sender's lookups of other sessions their slots (review rev52 N3)."""
    fake.add("forged.test", "TXT", '"v=spf1 -all"')
    resolver = fake_resolver(fake, max_inflight=2)
    try:
        hold_slots(resolver, fake, 2, client=True)
        started = time.monotonic()
        assert resolver.lookup("forged.test", "TXT", started + 2).ok
        assert time.monotonic() - started < 1
        flooded = resolver.submit("next.client.test", "PTR", client=True)
        assert resolver.wait(flooded, time.monotonic() + 0.2) is None
        assert resolver.missed("next.client.test", "PTR").busy
        assert ("next.client.test", "PTR") not in fake.calls
    finally:
        resolver.close()


@pytest.mark.parametrize("client", [False, True])
def test_one_network_holds_a_share_of_the_slots(fake: FakeDns, client: bool) -> None:
    """Review rev59 F4: a MAIL FROM flood of dead domains from one network held every
    slot of the shared pool, and every other sender was deferred while it lasted (a
    connect flood whose reverse zone never answers did the same to the client pool).
    A network holds an eighth of a pool's slots at most: the flood waits for its own
    share (and its sessions are the ones deferred), other networks' lookups are sent."""
    fake.slow["dead.test"] = 60
    fake.add("legit.test", "TXT", '"v=spf1 -all"')
    metrics = RecordingMetrics()
    resolver = fake_resolver(fake, max_inflight=16, metrics=metrics)  # four per network
    flood = client_network(ipaddress.ip_address("198.51.100.7"))
    try:
        for i in range(8):
            resolver.submit(f"{i}.dead.test", "TXT", client=client, network=flood)
        wait_until(lambda: len(fake.calls) == 4)
        other = client_network(ipaddress.ip_address("203.0.113.9"))
        started = time.monotonic()
        legit = resolver.wait(
            resolver.submit("legit.test", "TXT", client=client, network=other), started + 2
        )
        assert legit is not None
        assert legit.ok
        assert time.monotonic() - started < 1
        # The same /24 waits behind its share, as this host's fault (deferred).
        same = resolver.submit("x.test", "TXT", client=client, network=flood)
        assert resolver.wait(same, time.monotonic() + 0.2) is None
        missed = resolver.missed("x.test", "TXT")
        assert missed.busy
        assert "(198.51.100.0/24 holds its share of them)" in missed.detail
        assert metrics.named("dns_busy") == [("network_share",)]
        # The other pool's share of the same network is its own.
        elsewhere = resolver.submit("y.test", "TXT", client=not client, network=flood)
        assert resolver.wait(elsewhere, time.monotonic() + 2) is not None
        assert len(fake.calls) == 6, fake.calls
    finally:
        resolver.close()
    assert client_network(ipaddress.ip_address("::ffff:198.51.100.200")) == flood
    assert client_network(ipaddress.ip_address("2001:db8:1:2::5")) == "2001:db8:1::/48"


def test_another_network_does_not_wait_behind_a_share_it_joined(fake: FakeDns) -> None:
    """Review rev62 F3: a session from network B asked a domain that a flood from A had
    asked first; the lookup waited for A's share, and B's sender was deferred. B's
    asking is a query of its own; A's, once its turn comes, reads the cache."""
    fake.slow["dead.test"] = 60
    fake.add("popular.test", "MX", "10 mx.popular.test.")
    resolver = fake_resolver(fake, max_inflight=16)  # four slots per network
    a, b = "198.51.100.0/24", "203.0.113.0/24"
    try:
        for i in range(4):
            resolver.submit(f"{i}.dead.test", "MX", network=a)
        wait_until(lambda: len(fake.calls) == 4)
        flooded = resolver.submit("popular.test", "MX", deadline=time.monotonic() + 5, network=a)
        started = time.monotonic()
        answer = resolver.lookup("popular.test", "MX", started + 2, network=b)
        assert answer.ok, answer
        assert time.monotonic() - started < 1
        assert fake.count("popular.test", "MX") == 1
        assert not flooded.done()  # still A's to wait for
    finally:
        resolver.close()


def test_a_lookup_dropped_unsent_is_busy(fake: FakeDns) -> None:
    """Review rev62 F2: a lookup whose askers' deadlines all passed while it queued is
    dropped unsent; an asker reading it just after its deadline took that timeout for
    the name's own. It says this host was busy."""
    fake.slow["pause.test"] = 0.3
    resolver = fake_resolver(fake, max_inflight=1)
    try:
        resolver.submit("0.pause.test", "A")
        wait_until(lambda: bool(fake.calls))
        future = resolver.submit("late.test", "A", deadline=time.monotonic() + 0.1)
        dropped = resolver.wait(future, time.monotonic() + 5)  # read late, as in a race
        assert dropped is not None
        assert dropped.status is Status.TIMEOUT
        assert dropped.busy, dropped
        assert "not sent" in dropped.detail
        assert ("late.test", "A") not in fake.calls
    finally:
        resolver.close()


def test_a_lookup_the_loop_never_started_is_busy(fake: FakeDns) -> None:
    """A loop thread kept busy (a flood's work) had not even started the lookup by its
    deadline: that timeout is this host's, not the name's (a forged sender's SPF would
    otherwise pass as the domain's timeout)."""
    metrics = RecordingMetrics()
    resolver = fake_resolver(fake, metrics=metrics)

    async def hog() -> None:
        time.sleep(0.5)  # blocks the loop: what a flood of work on it does

    try:
        resolver.spawn(hog())
        future = resolver.submit("forged.test", "TXT", deadline=time.monotonic() + 0.2)
        answer = resolver.collect(future, time.monotonic() + 0.2, "forged.test", "TXT")
        assert answer.busy, answer
        assert "before the resolver's loop took it" in answer.detail
        assert metrics.named("dns_busy") == [("loop",)]
        # With no time left at all to start with, nothing is known of whose fault.
        gone = resolver.submit("late.test", "TXT", deadline=time.monotonic())
        assert not resolver.collect(gone, time.monotonic(), "late.test", "TXT").busy
    finally:
        resolver.close()


def test_askers_from_many_networks_share_a_lookup_queued_for_the_pool(fake: FakeDns) -> None:
    """Review rev63 N4: waiting for a full pool (no network's share), a lookup is
    joined by every network that asks it: one query, not one per network."""
    fake.slow["hold.test"] = 0.3
    fake.slow["popular.test"] = 0.2  # still out when the other slots free
    fake.add("popular.test", "MX", "10 mx.popular.test.")
    resolver = fake_resolver(fake, max_inflight=16)
    try:
        hold_slots(resolver, fake, 16)
        futures = [
            resolver.submit("popular.test", "MX", network=f"192.0.{i}.0/24") for i in range(5)
        ]
        for future in futures:
            answer = resolver.wait(future, time.monotonic() + 5)
            assert answer is not None
            assert answer.ok, answer
        assert fake.count("popular.test", "MX") == 1
    finally:
        resolver.close()


def test_an_answer_on_its_way_at_the_deadline_is_read(fake: FakeDns) -> None:
    """Review rev63 N3: a DNSBL answer that came just before the deadline was still
    going through the loop's callbacks (its lookup forgotten, the session's future not
    yet set) and read as a timeout: a listed client passed. The cache has it."""
    fake.add("2.0.0.127.rbl.test", "A", "127.0.0.2")
    resolver = fake_resolver(fake)

    async def settles_late() -> Answer:
        answer = await resolver.query("2.0.0.127.rbl.test", "A")
        await asyncio.sleep(0.3)  # the future is set long after the answer came
        return answer

    try:
        future = resolver.spawn(settles_late())
        answer = resolver.collect(future, time.monotonic() + 0.1, "2.0.0.127.rbl.test", "A")
        assert answer.ok, answer
    finally:
        resolver.close()


def test_a_lookup_cancelled_while_it_queued_is_busy(fake: FakeDns) -> None:
    """Review rev63: a session's lookup joined another session's queued one; that
    session closed just after our deadline and cancelled it (no one wanted it any
    more), and our answer was a plain timeout: a forged sender's SPF would pass as the
    domain's. A lookup never sent is this host's fault."""
    resolver = fake_resolver(fake, max_inflight=1)
    try:
        hold_slots(resolver, fake, 1)
        first = resolver.spawn(resolver.query("x.test", "TXT"))  # a session's, queued
        joined = resolver.submit("x.test", "TXT", deadline=time.monotonic() + 0.05)
        time.sleep(0.1)  # our deadline passes...
        assert first.cancel()  # ...and the first session closes
        wait_until(joined.done)
        answer = resolver.collect(joined, time.monotonic() + 1, "x.test", "TXT")
        assert answer.busy, answer
        assert ("x.test", "TXT") not in fake.calls
    finally:
        resolver.close()


def test_a_sender_lookup_does_not_join_one_queued_in_the_client_pool(fake: FakeDns) -> None:
    """Review rev64 F2: a flood filled the client pool and said HELO with a victim's
    domain; a sender check's lookup of that name joined the HELO lookup queued there
    and was deferred, the shared pool idle. Another pool's queued lookup is not
    joined."""
    fake.add("victim.test", "A", "192.0.2.1")
    resolver = fake_resolver(fake, max_inflight=4)
    try:
        hold_slots(resolver, fake, 4, client=True)
        helo = resolver.submit("victim.test", "A", client=True, network="198.51.100.0/24")
        answer = resolver.lookup("victim.test", "A", time.monotonic() + 1, "203.0.113.0/24")
        assert answer.ok, answer
        assert not helo.done()
    finally:
        resolver.close()


def test_a_closed_resolver_sends_nothing_more(fake: FakeDns) -> None:
    """Review rev64 F6: a session that outlived its runtime's reload started a new loop
    thread on the closed resolver, which leaked, and the old loop's semaphores raised.
    A closed resolver answers with a busy timeout, and a spawned chain is cancelled."""
    resolver = fake_resolver(fake)
    assert resolver.lookup("x.test", "A", time.monotonic() + 1).status is Status.NXDOMAIN
    resolver.close()
    answer = resolver.lookup("y.test", "A", time.monotonic() + 1)
    assert answer.busy, answer
    chain = resolver.spawn(resolver.query("z.test", "A"))
    assert chain.cancelled()
    assert resolver.collect(chain, time.monotonic() + 1, "z.test", "A").busy
    assert ("y.test", "A") not in fake.calls


def test_an_answer_others_cached_keeps_the_time_ours_queued(fake: FakeDns) -> None:
    """Review rev64 F1: our lookup queued for our network's share until the deadline
    while another network's lookup of the name was answered; the cached answer came
    back without the wait, and the SPF evaluation going on after the deadline had its
    next timeout read as the domain's. The rescued answer says how long we waited."""
    fake.slow["hold.test"] = 60
    fake.add("victim.test", "TXT", '"v=spf1 exists:%{i}._spf.victim.test -all"')
    resolver = fake_resolver(fake, max_inflight=16)  # four slots per network
    ours = "192.0.2.0/24"
    try:
        for i in range(4):
            resolver.submit(f"{i}.hold.test", "A", network=ours)
        wait_until(lambda: len(fake.calls) == 4)
        future = resolver.submit("victim.test", "TXT", network=ours)
        other = resolver.lookup("victim.test", "TXT", time.monotonic() + 1, "203.0.113.0/24")
        assert other.ok
        answer = resolver.collect(future, time.monotonic() + 0.1, "victim.test", "TXT")
        assert answer.ok, answer
        assert answer.waited >= 0.09, answer
    finally:
        resolver.close()


def test_a_lookups_bookkeeping_is_forgotten_when_it_is_done(fake: FakeDns) -> None:
    """Shares, waits, send times and networks of lookups go with them: a flood from
    many networks leaves nothing behind (queued, dropped and sent lookups alike)."""
    fake.slow["pause.test"] = 0.2
    resolver = fake_resolver(fake, max_inflight=16)  # four slots per network
    try:
        for i in range(20):
            network = f"192.0.{i}.0/24"
            answer = resolver.lookup(f"{i}.done.test", "A", time.monotonic() + 2, network=network)
            assert answer.status is Status.NXDOMAIN, answer
        for i in range(6):  # four sent, two queued on the share and dropped unsent
            resolver.submit(f"{i}.pause.test", "A", deadline=time.monotonic() + 0.05, network="n")
        wait_until(lambda: not resolver._inflight)
        wait_until(lambda: not (resolver._sent or resolver._slot_waits or resolver._owners))
        assert not resolver._shares
        assert not resolver._queued
    finally:
        resolver.close()


def test_lookups_nobody_waits_for_leave_the_queue(fake: FakeDns) -> None:
    """A spawned chain of lookups cancelled (its session closed) drops the lookups it
    still waits for a slot for: a flood of connections that hang up at once leaves no
    queue for later sessions to wait behind. A lookup someone else asked for stays."""
    fake.slow[".pause.test"] = 0.3
    resolver = fake_resolver(fake, max_inflight=1)

    async def chain() -> list[Answer]:
        names = ("0.pause.test", "1.pause.test", "2.pause.test")
        return list(await asyncio.gather(*(resolver.query(n, "A", client=True) for n in names)))

    try:
        future = resolver.spawn(chain())
        wait_until(lambda: bool(fake.calls))
        wanted = resolver.submit("2.pause.test", "A", client=True)  # another session's
        assert future.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(timeout=5)
        answer = resolver.wait(wanted, time.monotonic() + 5)
        assert answer is not None
        assert answer.status is Status.NXDOMAIN
        # Slots go in turn: the second, had it stayed, was sent before the third.
        assert fake.calls == [("0.pause.test", "A"), ("2.pause.test", "A")]
    finally:
        resolver.close()


def test_a_lookup_nobody_waits_for_any_more_is_not_sent(fake: FakeDns) -> None:
    """Review rev57: a flood of MAIL FROMs whose domains never answer filled the slots
    with lookups every caller had given up on, and later senders waited behind them
    for 20 s after the flood. A queued lookup whose askers' deadlines have all passed
    is dropped when its turn comes; one asked without a deadline is still sent."""
    fake.slow["pause.test"] = 0.5
    resolver = fake_resolver(fake, max_inflight=1)
    try:
        resolver.submit("0.pause.test", "A")
        wait_until(lambda: len(fake.calls) == 1)
        given_up = resolver.submit("late.test", "A", deadline=time.monotonic() + 0.1)
        kept = resolver.submit("kept.test", "A")
        assert resolver.wait(kept, time.monotonic() + 5) is not None
        assert resolver.wait(given_up, time.monotonic() + 5) is not None
        assert ("late.test", "A") not in fake.calls
        assert ("kept.test", "A") in fake.calls
    finally:
        resolver.close()


def test_a_short_wait_for_a_slot_leaves_a_slow_server_its_timeout(fake: FakeDns) -> None:
    """Review rev57: a lookup that waited a few milliseconds for a slot and then timed
    out at a slow server was deferred as this host's fault. It is the server's when
    the server had its whole timeout before the deadline, or when the caller waited
    past the deadline as long as the lookup waited for its slot (review rev64 F7: a
    busy network's slow domains were deferred after waits of 0.01 s); a wait of a
    quarter of the timeout or more (or one still waiting) is this host's."""
    fake.slow["pause.test"] = 0.05
    fake.slow["long.test"] = 0.7
    fake.slow["slow-server.test"] = 60
    resolver = fake_resolver(fake, max_inflight=1, timeout=0.3)  # long wait: 0.075 s
    try:
        resolver.submit("0.pause.test", "A")
        slow = resolver.lookup("slow-server.test", "A", time.monotonic() + 0.45)
        assert slow.status is Status.TIMEOUT
        assert not slow.busy, slow  # out for 0.4 s: its whole timeout
        resolver.close()
        resolver = fake_resolver(fake, max_inflight=1)  # timeout 2 s: long wait 0.5 s
        resolver.submit("1.pause.test", "A")
        deadline = time.monotonic() + 0.45
        short = resolver.lookup("2.slow-server.test", "A", deadline)
        assert not short.busy, short  # it had 0.45 s, as without the wait
        assert time.monotonic() >= deadline + 0.05
        # The slot's wait, 0.05 s of pause and whatever a loaded machine adds to it.
        given_back = re.search(
            r"\((\S+) s past it, the time it waited for resolver slots\)", short.detail
        )
        assert given_back is not None, short.detail
        assert 0.05 <= float(given_back.group(1)) < 0.3
        resolver.close()
        resolver = fake_resolver(fake, max_inflight=1)
        resolver.submit("0.long.test", "A")
        late = resolver.lookup("1.slow-server.test", "A", time.monotonic() + 1.0)
        assert late.busy, late
        assert "after 0.7 s waiting for a resolver slot" in late.detail
    finally:
        resolver.close()


def test_the_time_a_lookup_waited_for_a_slot_is_given_back(fake: FakeDns) -> None:
    """Review rev62 F1: a flood that frees a slot just before the deadline leaves the
    sender's servers no time, and a plain timeout passed a forged sender. The caller
    now waits past its deadline as long as the lookup queued, so the servers answer
    as they would have on an idle host (review rev64 F7)."""
    fake.slow["pause.test"] = 0.3
    fake.slow["victim.test"] = 0.1
    fake.add("victim.test", "A", "192.0.2.1")
    resolver = fake_resolver(fake, max_inflight=1)  # timeout 2 s: long wait 0.5 s
    try:
        resolver.submit("0.pause.test", "A")
        wait_until(lambda: bool(fake.calls))
        # Sent after 0.3 s of waiting, 0.05 s before the deadline: answered 0.05 s past it.
        answer = resolver.lookup("victim.test", "A", time.monotonic() + 0.35)
        assert answer.status is Status.OK, answer
        assert answer.waited > 0.1  # about 0.3 s, less what the test took to ask
    finally:
        resolver.close()


def test_waits_longer_than_what_is_given_back_make_a_miss_this_hosts(fake: FakeDns) -> None:
    """The time given back is a quarter of the timeout at most: an SPF evaluation whose
    lookups waited longer in all (review rev61 F2) is deferred as before."""
    fake.slow["pause.test"] = 0.05
    fake.slow["slow-server.test"] = 60
    resolver = fake_resolver(fake, max_inflight=1)  # timeout 2 s: given back 0.5 s at most
    try:
        resolver.submit("0.pause.test", "A")
        deadline = time.monotonic() + 0.3
        answer = resolver.lookup("slow-server.test", "A", deadline, waited_before=0.6)
        assert answer.busy, answer
        assert "after 0.6" in answer.detail, answer
        assert deadline + 0.5 <= time.monotonic() < deadline + 1.0
    finally:
        resolver.close()


def test_an_asker_coming_as_a_lookup_is_cancelled_gets_a_lookup_of_its_own(
    fake: FakeDns,
) -> None:
    """Review rev57: a session joined a queued lookup just as its last asker (a closed
    session) cancelled it, and got CancelledError: internal_error."""
    resolver = fake_resolver(fake, max_inflight=1)
    hold_slots(resolver, fake, 1)

    async def scenario() -> bool:
        leaving = asyncio.ensure_future(resolver.query("x.test", "A"))
        await asyncio.sleep(0.05)  # queued behind the held slot
        leaving.cancel()
        await asyncio.sleep(0)  # its asker leaves, and the lookup is cancelled
        coming = asyncio.ensure_future(resolver.query("x.test", "A"))
        await asyncio.sleep(0.1)
        return coming.done()

    try:
        assert resolver.spawn(scenario()).result(timeout=5) is False  # waiting, not failed
    finally:
        resolver.close()


def test_servers_that_stop_answering_are_said_once_and_their_return_too(
    fake: FakeDns, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A resolver that answers SERVFAIL to everything (or went silent) turns every DNS
    check off by their default on_temp_error: a WARNING says so when it starts and an
    INFO when the servers answer again, once each (review rev99 F2); one broken zone,
    whose failures other names' answers interleave, is no outage."""
    resolver = fake_resolver(fake, clock, failure_ttl=0)
    try:
        fake.add("good.example", "A", "192.0.2.1")
        with caplog.at_level(logging.INFO, logger="smtpguard"):
            for n in range(20):
                fake.fail(f"broken{n}.zone.example", "A", Status.SERVFAIL)
                ask(resolver, f"broken{n}.zone.example", "A")
                ask(resolver, f"good{n}.example", "A")  # NXDOMAIN: an answer
            assert not resolver.health.down
            # One dead DNSBL zone at low traffic, nothing else asked meanwhile.
            for n in range(30):
                fake.fail(f"{n}.2.0.192.bl.example.org", "A", Status.TIMEOUT)
                ask(resolver, f"{n}.2.0.192.bl.example.org", "A")
            assert not resolver.health.down
            ask(resolver, "good.example", "A")
            for n in range(12):
                fake.fail(f"name{n}.example", "A", Status.TIMEOUT)
                ask(resolver, f"name{n}.example", "A")
            assert resolver.health.down
            clock.advance(30)
            ask(resolver, "back.example", "A")
            assert not resolver.health.down
    finally:
        resolver.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "smtpguard"]
    assert len(messages) == 2
    assert messages[0].startswith(
        "dns: the DNS servers do not answer: the last 8 lookups all failed (TIMEOUT"
    )
    assert messages[1] == (
        "dns: the DNS servers answer again after 30.0 s; 12 lookups failed meanwhile"
    )


def test_a_silent_dns_server_is_said_through_the_real_transport(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real UDP client against a server that reads and never answers."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    config = DnsConfig(("127.0.0.1",), silent.getsockname()[1], timeout=0.2, failure_ttl=1)
    resolver = make_resolver(config)
    try:
        with caplog.at_level(logging.WARNING, logger="smtpguard"):
            for n in range(DOWN_AFTER):
                answer = resolver.lookup(f"n{n}.example", "A", time.monotonic() + 5)
                assert answer.status is Status.TIMEOUT
            assert resolver.health.down
    finally:
        resolver.close()
        silent.close()
    assert [r.getMessage().partition(":")[2].partition(":")[0] for r in caplog.records] == [
        " the DNS servers do not answer"
    ]


def test_a_retired_resolver_serves_the_sessions_that_hold_it_then_closes(
    fake: FakeDns, clock: FakeClock
) -> None:
    """Review rev155 F1: a reload that changed [dns] closed the old resolver on a
    timer, under a session that outlived it (a client talking on for longer than the
    milter timeout): its lookups failed as timeouts, which helo_dns passes. Closed
    when the last session holding it ends."""
    fake.add("a.example.test", "A", "192.0.2.1", ttl=0)
    fake.add("b.example.test", "A", "192.0.2.2", ttl=0)
    resolver = fake_resolver(fake, clock)
    try:
        resolver.hold()
        resolver.hold()
        resolver.close_when_released()
        assert ask(resolver, "a.example.test", "A").ok
        resolver.release()
        assert ask(resolver, "b.example.test", "A").ok  # one session still holds it
        resolver.release()
        assert not ask(resolver, "a.example.test", "A").ok  # closed: not sent
        assert fake.count("a.example.test", "A") == 1
    finally:
        resolver.close()
    idle = fake_resolver(fake, clock)
    idle.close_when_released()  # no session holds it: closed at once
    assert not ask(idle, "b.example.test", "A").ok
