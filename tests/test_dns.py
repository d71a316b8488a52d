"""The DNS service: cache (TTL, caps, RFC 2308 negative caching, failures), distinct
statuses, in-flight sharing, deadlines; and the dnspython transport against unbound.

The cache tests pass a fake transport and a fake clock into the resolver; nothing is
patched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

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

from smtpguard.dns import (
    Answer,
    Resolver,
    Status,
    UdpTransport,
    _Question,
    _read_negative,
    _Socket,
    client_address,
    dnsbl_name,
    negative_ttl,
    normalize,
    read_reply,
    reverse_name,
)
from support.fake_dns import FakeClock, FakeDns, fake_resolver
from support.threads import hammer
from support.unbound import (
    BIG_TXT,
    BIG_TXT_NAME,
    GOOD_DOMAIN,
    NO_MAIL_DOMAIN,
    NULL_MX_DOMAIN,
    SERVFAIL_DOMAIN,
    DnsServer,
    silent_nameserver,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake() -> FakeDns:
    return FakeDns()


@pytest.fixture
def resolver(fake: FakeDns, clock: FakeClock) -> Iterator[Resolver]:
    r = fake_resolver(fake, clock, max_ttl=3600, negative_ttl=600, failure_ttl=5)
    yield r
    r.close()


def ask(resolver: Resolver, name: str, rdtype: str) -> Answer:
    return resolver.lookup(name, rdtype, time.monotonic() + 5)


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
    ask(resolver, "long.example.test", "A")
    clock.advance(3599)
    ask(resolver, "long.example.test", "A")
    assert fake.count("long.example.test", "A") == 1
    clock.advance(2)  # past max_ttl = 3600
    ask(resolver, "long.example.test", "A")
    assert fake.count("long.example.test", "A") == 2


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
    ask(resolver, "nope.example.test", "A")
    clock.advance(599)
    ask(resolver, "nope.example.test", "A")
    assert fake.count("nope.example.test", "A") == 1
    clock.advance(2)  # past negative_ttl = 600
    ask(resolver, "nope.example.test", "A")
    assert fake.count("nope.example.test", "A") == 2


def test_negative_answer_without_soa_is_not_cached(resolver: Resolver, fake: FakeDns) -> None:
    fake.negative_ttl = 0  # RFC 2308 §5: no SOA, no negative caching
    ask(resolver, "nope.example.test", "A")
    ask(resolver, "nope.example.test", "A")
    assert fake.count("nope.example.test", "A") == 2


def test_negative_ttl_is_the_smaller_of_soa_ttl_and_minimum() -> None:
    def response(soa_ttl: int, minimum: int) -> dns.message.Message:
        return dns.message.from_text(
            "id 1\nopcode QUERY\nrcode NXDOMAIN\nflags QR AA\n;QUESTION\nx.test. IN A\n"
            f";AUTHORITY\ntest. {soa_ttl} IN SOA ns.test. h.test. 1 3600 600 86400 {minimum}\n"
        )

    assert negative_ttl(response(300, 60)) == 60
    assert negative_ttl(response(30, 600)) == 30
    assert negative_ttl(dns.message.from_text("id 1\nflags QR\n;QUESTION\nx.test. IN A\n")) == 0


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


def test_concurrent_askers_share_one_query(fake: FakeDns) -> None:
    fake.delay = 0.2
    fake.add("slow.example.test", "A", "192.0.2.1")
    resolver = fake_resolver(fake)
    try:
        futures = [resolver.submit("slow.example.test", "A") for _ in range(20)]
        assert all(f.result(timeout=5).ok for f in futures)
        assert fake.count("slow.example.test", "A") == 1
        # From the cache now: the future comes back already done.
        assert resolver.submit("slow.example.test", "A").done()
    finally:
        resolver.close()


def test_lookups_run_concurrently(fake: FakeDns) -> None:
    fake.delay = 0.3
    resolver = fake_resolver(fake)
    try:
        start = time.monotonic()
        futures = [resolver.submit(f"h{i}.example.test", "A") for i in range(30)]
        assert all(f.result(timeout=5).status is Status.NXDOMAIN for f in futures)
        assert time.monotonic() - start < 1.5  # 30 x 0.3 s one after another would be 9 s
    finally:
        resolver.close()


def test_deadline_gives_timeout_and_the_answer_is_kept(fake: FakeDns) -> None:
    fake.delay = 0.3
    fake.add("late.example.test", "TXT", '"hello"')
    resolver = fake_resolver(fake)
    try:
        start = time.monotonic()
        answer = resolver.lookup("late.example.test", "TXT", time.monotonic() + 0.05)
        assert answer.status is Status.TIMEOUT
        assert answer.detail == "stage deadline reached"
        assert time.monotonic() - start < 0.25
        # The query went on and its answer is cached for the next asker.
        later = resolver.lookup("late.example.test", "TXT", time.monotonic() + 2)
        assert later.texts() == ("hello",)
        assert fake.count("late.example.test", "TXT") == 1
    finally:
        resolver.close()


def test_submit_never_blocks(fake: FakeDns) -> None:
    fake.delay = 0.5
    resolver = fake_resolver(fake)
    try:
        start = time.monotonic()
        future = resolver.submit("x.example.test", "A")
        assert time.monotonic() - start < 0.1
        assert not future.done()
        assert resolver.wait(future, time.monotonic()) is None
    finally:
        resolver.close()


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


@given(st.ip_addresses())
def test_reverse_name_is_dnspythons(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    expected = dns.reversename.from_address(str(ip)).to_text(omit_final_dot=True)
    assert reverse_name(ip) == expected
    with pytest.raises(ValueError, match="label"):
        normalize("a" * 64 + ".test")


# --- reading answers -----------------------------------------------------------------


def question(name: str = "7.100.51.198.rbl.test", rdtype: str = "A") -> _Question:
    return _Question.make(dns.name.from_text(name), dns.rdatatype.from_text(rdtype), True)


def response(
    q: _Question, rcode: int = dns.rcode.NXDOMAIN, soa: str | None = "rbl.test.", **kw: Any
) -> dns.message.Message:
    r = dns.message.make_response(dns.message.from_wire(q.to_wire()))
    r.set_rcode(rcode)
    if soa:
        r.authority.append(
            dns.rrset.from_text(
                soa, 300, "IN", "SOA", "ns.rbl.test. h.rbl.test. 1 3600 600 86400 60"
            )
        )
    for key, value in kw.items():
        setattr(r, key, value)
    return r


def test_our_question_on_the_wire_is_a_plain_query() -> None:
    q = question("Mx.Example.Test", "MX")
    parsed = dns.message.from_wire(q.to_wire())
    assert parsed.id == q.qid
    assert parsed.flags == dns.flags.RD
    assert parsed.question[0].name == dns.name.from_text("mx.example.test")
    assert parsed.question[0].rdtype == dns.rdatatype.MX
    assert parsed.edns == 0
    assert parsed.payload == 1232


@pytest.mark.parametrize(
    ("rcode", "soa", "ttl"),
    [
        (dns.rcode.NXDOMAIN, "rbl.test.", 60),  # min(SOA TTL 300, MINIMUM 60)
        (dns.rcode.NOERROR, "rbl.test.", 60),
        (dns.rcode.NXDOMAIN, None, 0),  # no SOA: not cached (RFC 2308 §5)
    ],
)
def test_negative_answers_are_read_from_the_wire(rcode: int, soa: str | None, ttl: int) -> None:
    q = question()
    for r in (response(q, rcode, soa), response(q, rcode, soa, use_edns=0)):
        wire = r.to_wire()  # dnspython compresses the SOA's names against the question
        fast = _read_negative(wire, q)
        assert fast is not None
        assert (fast.rcode, fast.negative_ttl, fast.message) == (rcode, ttl, None)
        full = read_reply(wire, q)
        assert full == fast


def test_answers_with_records_are_parsed_in_full() -> None:
    q = question()
    r = response(q, dns.rcode.NOERROR, soa=None)
    r.answer.append(dns.rrset.from_text(q.qname, 300, "IN", "A", "127.0.0.2"))
    assert _read_negative(r.to_wire(), q) is None
    reply = read_reply(r.to_wire(), q)
    assert reply is not None
    assert reply.message is not None
    assert reply.message.answer[0][0].to_text() == "127.0.0.2"


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED])
def test_failures_are_read(rcode: int) -> None:
    q = question()
    reply = read_reply(response(q, rcode, soa=None).to_wire(), q)
    assert reply is not None
    assert reply.rcode == rcode


def test_answers_to_other_questions_are_not_taken() -> None:
    q = question()
    other_id = response(q)
    other_id.id = (q.qid + 1) % 65536
    other_name = response(question("8.100.51.198.rbl.test"))
    other_name.id = q.qid
    not_a_response = dns.message.from_wire(q.to_wire())
    for message in (other_id, other_name, not_a_response):
        assert read_reply(message.to_wire(), q) is None
    assert read_reply(response(q).to_wire() + b"junk", q) is None
    assert read_reply(b"\x00" * 11, q) is None


def test_truncated_answer_asks_for_tcp() -> None:
    q = question()
    r = response(q, dns.rcode.NOERROR, soa=None)
    r.flags |= dns.flags.TC
    reply = read_reply(r.to_wire(), q)
    assert reply is not None
    assert reply.truncated


# --- the UDP transport against a real server ----------------------------------------


@pytest.fixture
def real(unbound: DnsServer) -> Iterator[Resolver]:
    r = Resolver(UdpTransport([unbound.host], unbound.port, 1.0))
    yield r
    r.close()


@pytest.mark.integration
def test_transport_statuses_from_unbound(real: Resolver) -> None:
    deadline = time.monotonic() + 5
    mx = real.lookup(GOOD_DOMAIN, "MX", deadline)
    assert mx.status is Status.OK
    assert mx.mx() == ((10, "mx.good.test"),)
    assert mx.ttl == 300
    assert real.lookup(NULL_MX_DOMAIN, "MX", deadline).mx() == ((0, ""),)
    nodata = real.lookup(NO_MAIL_DOMAIN, "A", deadline)
    assert nodata.status is Status.NODATA
    nx = real.lookup("nothing-here.test", "A", deadline)
    assert nx.status is Status.NXDOMAIN
    # The SOA of the test zones has TTL 300 and MINIMUM 60 (RFC 2308 §5: the smaller).
    assert nodata.ttl == nx.ttl == 60
    servfail = real.lookup(SERVFAIL_DOMAIN, "MX", deadline)
    assert servfail.status is Status.SERVFAIL
    assert "answered SERVFAIL" in servfail.detail


@pytest.mark.integration
def test_truncated_answer_is_asked_again_over_tcp(real: Resolver) -> None:
    answer = real.lookup(BIG_TXT_NAME, "TXT", time.monotonic() + 5)
    assert answer.status is Status.OK
    assert answer.strings() == (tuple(part.encode() for part in BIG_TXT),)


def test_transport_timeout_when_nothing_answers() -> None:
    with silent_nameserver() as port:
        r = Resolver(UdpTransport(["127.0.0.1"], port, 0.3))
        try:
            start = time.monotonic()
            answer = r.lookup(GOOD_DOMAIN, "MX", time.monotonic() + 5)
            assert answer.status is Status.TIMEOUT
            assert "no answer" in answer.detail
            assert time.monotonic() - start < 0.6
        finally:
            r.close()


@pytest.mark.integration
def test_next_server_answers_when_the_first_is_silent(unbound: DnsServer) -> None:
    # The port is shared by all servers: nothing listens on 127.0.0.2 at unbound's port.
    r = Resolver(UdpTransport(["127.0.0.2", unbound.host], unbound.port, 1.0))
    try:
        start = time.monotonic()
        answer = r.lookup(GOOD_DOMAIN, "MX", time.monotonic() + 5)
        assert answer.status is Status.OK
        # Two servers, two tries each within the second: the lost try took 0.25 s.
        assert 0.2 < time.monotonic() - start < 0.6
    finally:
        r.close()


@pytest.mark.integration
def test_many_concurrent_lookups_share_few_sockets(real: Resolver, unbound: DnsServer) -> None:
    futures = [real.submit(f"{i}.0.0.127.rbl.test", "A") for i in range(300)]
    answers = [f.result(timeout=5) for f in futures]
    assert {a.status for a in answers} == {Status.OK, Status.NXDOMAIN}
    transport = real.transport
    assert isinstance(transport, UdpTransport)
    assert len(transport._pools[socket.AF_INET]) <= UdpTransport.SOCKETS


def test_answers_count_only_from_the_server_asked() -> None:
    async def scenario() -> tuple[bool, bool]:
        sock = _Socket()
        q = question()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sock.pending[(q.qid, "127.0.0.1", 53)] = (q, future)
        wire = response(q).to_wire()
        sock.datagram_received(wire, ("127.0.0.9", 53))  # another host
        sock.datagram_received(wire, ("127.0.0.1", 5353))  # another port
        early = future.done()
        sock.datagram_received(wire, ("127.0.0.1", 53))
        return early, future.done()

    assert asyncio.run(scenario()) == (False, True)
