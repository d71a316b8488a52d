"""The DNS client on the wire: questions as sent, answers read (the fast negative path
and dnspython's), and :class:`UdpTransport` against a real server (unbound).

tests/test_dnswire_fuzz.py compares the reader with dnspython on generated messages.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset
import pytest

from smtpguard.dns import Answer, Resolver, Status, cache_weight
from smtpguard.dnswire import (
    MAX_LABELS,
    MAX_RECORDS,
    Question,
    Reply,
    UdpTransport,
    _Socket,
    negative_ttl,
    read_negative,
    read_reply,
    to_answer,
)
from support.fake_dns import FakeDns, fake_resolver
from support.service import ROOT
from support.unbound import (
    BIG_TXT,
    BIG_TXT_NAME,
    GOOD_DOMAIN,
    MANY_RECORDS_NAME,
    NO_MAIL_DOMAIN,
    NULL_MX_DOMAIN,
    SERVFAIL_DOMAIN,
    SOME_RECORDS_NAME,
    DnsServer,
    silent_nameserver,
)


def test_negative_ttl_is_the_smaller_of_soa_ttl_and_minimum() -> None:
    def response(soa_ttl: int, minimum: int) -> dns.message.Message:
        return dns.message.from_text(
            "id 1\nopcode QUERY\nrcode NXDOMAIN\nflags QR AA\n;QUESTION\nx.test. IN A\n"
            f";AUTHORITY\ntest. {soa_ttl} IN SOA ns.test. h.test. 1 3600 600 86400 {minimum}\n"
        )

    assert negative_ttl(response(300, 60)) == 60
    assert negative_ttl(response(30, 600)) == 30
    assert negative_ttl(dns.message.from_text("id 1\nflags QR\n;QUESTION\nx.test. IN A\n")) == 0


# --- reading answers -----------------------------------------------------------------


def question(name: str = "7.100.51.198.rbl.test", rdtype: str = "A") -> Question:
    return Question.make(dns.name.from_text(name), dns.rdatatype.from_text(rdtype), True)


def response(
    q: Question, rcode: int = dns.rcode.NXDOMAIN, soa: str | None = "rbl.test.", **kw: Any
) -> dns.message.Message:
    r = dns.message.make_response(dns.message.from_wire(q.to_wire()))
    r.set_rcode(dns.rcode.Rcode(rcode))
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
        fast = read_negative(wire, q)
        assert fast is not None
        assert (fast.rcode, fast.negative_ttl, fast.message) == (rcode, ttl, None)
        full = read_reply(wire, q)
        assert full == fast


def test_answers_with_records_are_parsed_in_full() -> None:
    q = question()
    r = response(q, dns.rcode.NOERROR, soa=None)
    r.answer.append(dns.rrset.from_text(q.qname, 300, "IN", "A", "127.0.0.2"))
    assert read_negative(r.to_wire(), q) is None
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
    assert read_reply(b"\x00" * 11, q) is None
    # Ours with octets after it: the server's failure, unparsed (review rev58).
    junk = read_reply(response(q).to_wire() + b"junk", q)
    assert junk is not None
    assert junk.unreadable == "malformed records"


def test_the_question_type_is_compared_as_asked() -> None:
    """Review rev59: the question was compared lower-cased, type and class included:
    a reply of type 67 was taken for one of type 99 (its octet lower-cased)."""
    q = Question.make(dns.name.from_text("a.example"), dns.rdatatype.SPF, False)
    other = Question.make(dns.name.from_text("A.EXAMPLE"), dns.rdatatype.RdataType.make(67), False)
    wire = dns.message.make_response(other.message()).to_wire() + b"\x00"
    wire = struct.pack("!H", q.qid) + wire[2:]
    assert read_reply(wire, q) is None  # another question: not ours, not even unreadable
    same = dns.message.make_response(q.message()).to_wire() + b"\x00"
    junk = read_reply(same, q)
    assert junk is not None
    assert junk.unreadable


def test_truncated_answer_asks_for_tcp() -> None:
    q = question()
    r = response(q, dns.rcode.NOERROR, soa=None)
    r.flags |= dns.flags.TC
    reply = read_reply(r.to_wire(), q)
    assert reply is not None
    assert reply.truncated


def nxdomain_wire(q: Question, authority: list[bytes], additional: list[bytes]) -> bytes:
    header = struct.pack("!6H", q.qid, 0x8183, 1, 0, len(authority), len(additional))
    return header + q.wire + b"".join(authority) + b"".join(additional)


def soa_record(ttl: int, minimum: int = 60) -> bytes:
    # Owner and names compressed against the question (offset 12).
    rdata = b"\x02ns\xc0\x0c\x01h\xc0\x0c" + struct.pack("!5I", 1, 3600, 600, 86400, minimum)
    return b"\xc0\x0c" + struct.pack("!HHIH", dns.rdatatype.SOA, 1, ttl, len(rdata)) + rdata


OPT_RECORD = b"\x00" + struct.pack("!HHIH", dns.rdatatype.OPT, 1232, 0, 0)
#: Where the data of a first authority record with a compressed owner starts.
NS_AT = 12 + len(question().wire) + 2 + 10


@pytest.mark.parametrize(
    ("authority", "additional"),
    [
        ([soa_record(300)], [OPT_RECORD, OPT_RECORD]),  # two OPT records (RFC 6891 §6.1.1)
        ([b"\xc0\x0c" + struct.pack("!HHIHH", dns.rdatatype.NS, 1, 300, 2, 0xC000 | NS_AT)], []),
        ([OPT_RECORD], []),  # OPT outside the additional section
    ],
    ids=["two OPT", "pointer to itself", "OPT in authority"],
)
def test_what_dnspython_refuses_is_no_answer(
    authority: list[bytes], additional: list[bytes]
) -> None:
    """Our id and question, unreadable: a failure of the server, not a reason to wait
    for another datagram (review rev58: the same one, sent again, cost a parse each)."""
    q = question()
    wire = nxdomain_wire(q, authority, additional)
    assert read_negative(wire, q) is None
    reply = read_reply(wire, q)
    assert reply is not None
    assert reply.unreadable
    assert reply.rcode == dns.rcode.SERVFAIL
    assert to_answer("x", "A", reply) is None  # the server's failure: the next is asked
    # With one octet more after the records the walk refuses it before any parse.
    junk = read_reply(wire + b"\x00", q)
    assert junk is not None
    assert junk.unreadable == "malformed records"


@pytest.mark.parametrize(
    ("authority", "ttl"),
    [
        ([soa_record(300)], 60),
        ([soa_record(300), soa_record(30)], 30),  # one RRset: the smaller TTL (RFC 2181 §5.2)
        ([soa_record(0x80000000)], 0),  # the top bit set: 0 (RFC 2181 §8)
    ],
)
def test_negative_ttl_is_dnspythons(authority: list[bytes], ttl: int) -> None:
    q = question()
    reply = read_reply(nxdomain_wire(q, authority, [OPT_RECORD]), q)
    assert reply is not None
    assert to_answer("x", "A", reply) == Answer("x", "A", Status.NXDOMAIN, ttl=ttl)


def empty_noerror(q: Question, *, authority: str, authoritative: bool = False) -> Answer | None:
    response = dns.message.make_response(q.message())
    response.flags &= ~dns.flags.RA
    if authoritative:
        response.flags |= dns.flags.AA
    owner, ttl, rdclass, rdtype, rdata = authority.split(maxsplit=4)
    response.authority.append(dns.rrset.from_text(owner, int(ttl), rdclass, rdtype, rdata))
    reply = read_reply(response.to_wire(), q)
    assert reply is not None
    return to_answer("example.org", "MX", reply)


def test_a_referral_is_no_answer_about_the_name() -> None:
    """A nameserver that does not recurse answers NOERROR with NS records and no SOA:
    read as NODATA it was final, and sender_domain refused every sender (554)."""
    q = question("example.org", "MX")
    referral = empty_noerror(q, authority=". 518400 IN NS a.root-servers.net.")
    assert referral is not None
    assert referral.status is Status.SERVFAIL
    assert referral.status.temporary
    # A real NODATA carries the SOA; an authoritative server's NS-only one stays NODATA.
    soa = "example.org. 300 IN SOA ns.example.org. h.example.org. 1 7200 900 1209600 60"
    nodata = empty_noerror(q, authority=soa)
    assert nodata is not None
    assert nodata.status is Status.NODATA
    own = empty_noerror(q, authority="example.org. 300 IN NS ns.example.org.", authoritative=True)
    assert own is not None
    assert own.status is Status.NODATA


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


@pytest.mark.integration
def test_an_answer_of_too_many_records_is_a_failure_unread(real: Resolver) -> None:
    """Review rev48: 3000 PTR names in one TCP answer cost 1.7 MB of cache and 0.6 s
    of CPU per lookup; past MAX_RECORDS an answer is a SERVFAIL, never parsed."""
    deadline = time.monotonic() + 5
    many = real.lookup(MANY_RECORDS_NAME, "A", deadline)
    assert many.status is Status.SERVFAIL
    # 300 records and EDNS's OPT record.
    assert f"answer of 301 records, more than {MAX_RECORDS}: not read" in many.detail
    some = real.lookup(SOME_RECORDS_NAME, "A", deadline)
    assert some.status is Status.OK
    assert len(some.addresses()) == 150
    assert some.size > 1232  # read over TCP
    # The question's labels for the first owner written as a pointer to it, one for
    # each later one.
    assert some.labels == len(SOME_RECORDS_NAME.split(".")) + 149
    assert cache_weight(some) == 1 + 150 // 4 + some.size // 2048 + some.labels // 45


def test_an_answer_of_too_many_labels_is_a_failure_unread() -> None:
    """Review rev52: 200 PTR names of 126 labels compress into 3 KB, within every
    limit, and cost half a second of the resolver thread to parse."""
    q = Question.make(dns.name.from_text("7.100.51.198.in-addr.arpa"), dns.rdatatype.PTR, True)
    response = dns.message.make_response(q.message())
    tail = ".".join("x" * 120)
    rrset = response.find_rrset(
        response.answer, q.qname, dns.rdataclass.IN, dns.rdatatype.PTR, create=True
    )
    for i in range(20):
        rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.PTR, f"n{i}.{tail}."), 60)
    data = response.to_wire()
    assert len(data) < 1232
    started = time.process_time()
    reply = read_reply(data, q)
    assert time.process_time() - started < 0.05
    assert reply is not None
    assert reply.message is None  # never parsed
    # The question's 6 labels for the first owner, one for each later one, each
    # target's 121: the walk stopped at the 17th record, past the limit.
    assert reply.labels == 6 + 16 + 17 * 121
    answer = to_answer("7.100.51.198.in-addr.arpa", "PTR", reply)
    assert answer is not None
    assert answer.status is Status.SERVFAIL
    assert answer.detail == (  # 20 and EDNS's OPT record, whose owner is the root
        f"answer of 21 records whose names have more than {MAX_LABELS} labels: not read"
    )
    # Half of it is read, and weighs by its labels in the cache.
    half = dns.message.make_response(q.message())
    kept_rrset = half.find_rrset(
        half.answer, q.qname, dns.rdataclass.IN, dns.rdatatype.PTR, create=True
    )
    for i in range(10):
        kept_rrset.add(
            dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.PTR, f"n{i}.{tail}."), 60
        )
    fine = read_reply(half.to_wire(), q)
    assert fine is not None
    assert fine.labels == 6 + 9 + 10 * 121
    kept = to_answer("7.100.51.198.in-addr.arpa", "PTR", fine)
    assert kept is not None
    assert kept.ok
    assert cache_weight(kept) == 1 + 10 // 4 + kept.size // 2048 + fine.labels // 45


def hostile_reply(q: Question, rdtype: str, values: list[str]) -> dns.message.Message:
    response = dns.message.make_response(q.message())
    rrset = response.find_rrset(
        response.answer, q.qname, dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), create=True
    )
    for value in values:
        rrset.add(dns.rdata.from_text(dns.rdataclass.IN, rrset.rdtype, value), 60)
    return response


def one_record(q: Question, rdata: bytes) -> bytes:
    """An answer to ``q`` of one record of its type: the owner a pointer to the question."""
    return (
        struct.pack("!6H", q.qid, 0x8180, 1, 1, 0, 0)
        + q.wire
        + struct.pack("!HHHIH", 0xC00C, q.qtype, 1, 60, len(rdata))
        + rdata
    )


def over_budget_unread(q: Question, data: bytes) -> Reply:
    """The reply to ``q`` in ``data``, which must be read quickly and over budget."""
    started = time.process_time()
    reply = read_reply(data, q)
    assert time.process_time() - started < 0.05
    assert reply is not None
    assert reply.labels > MAX_LABELS
    return reply


def test_the_label_budget_holds_for_every_way_round_it() -> None:
    """Review rev54: a question echoed in other letters, TC set, names in record types
    the walk did not know (RP) and a TXT of many empty strings were parsed whatever
    they held (0.2 to 1 s of the resolver's thread each)."""
    q = Question.make(dns.name.from_text("7.100.51.198.in-addr.arpa"), dns.rdatatype.PTR, True)
    tail = ".".join("x" * 120)
    ptrs = hostile_reply(q, "PTR", [f"n{i}.{tail}." for i in range(20)]).to_wire(max_size=65535)
    other_case = ptrs[:12] + ptrs[12 : 12 + len(q.wire)].upper() + ptrs[12 + len(q.wire) :]
    truncated = ptrs[:2] + bytes([ptrs[2] | 0x02]) + ptrs[3:]
    rp = Question.make(dns.name.from_text("x.example"), dns.rdatatype.RP, True)
    rps = hostile_reply(rp, "RP", [f"m{i}.{tail}. t{i}.{tail}." for i in range(10)])
    rps_wire = rps.to_wire(max_size=65535)
    txt = Question.make(dns.name.from_text("t.example"), dns.rdatatype.TXT, False)
    strings = one_record(txt, bytes(65_000))  # 65,000 empty strings
    for question, data in ((q, other_case), (rp, rps_wire), (txt, strings)):
        assert over_budget_unread(question, data).message is None
    started = time.process_time()
    cut = read_reply(truncated, q)
    assert time.process_time() - started < 0.05
    assert cut is not None
    assert cut.truncated


def test_replies_no_budget_counted_are_refused_or_counted() -> None:
    """Review rev55: 10,870 questions in one datagram (1.2 s of dnspython), records
    of class CH (whose A holds a name), strings of AVC records and 16,000 SVCB
    parameters were parsed uncounted."""
    q = Question.make(dns.name.from_text("a.example"), dns.rdatatype.A, False)
    head = struct.pack("!6H", q.qid, 0x8180, 2, 0, 0, 0)
    assert read_reply(head + q.wire + q.wire, q) is None  # two questions
    ch = hostile_reply(q, "A", ["192.0.2.1"])
    ch.answer[0].rdclass = dns.rdataclass.CH
    ch_wire = ch.to_wire()
    assert read_reply(ch_wire, q) is None
    avc = Question.make(dns.name.from_text("a.example"), dns.rdatatype.AVC, False)
    over_budget_unread(avc, one_record(avc, bytes(65_000)))
    svcb = Question.make(dns.name.from_text("a.example"), dns.rdatatype.SVCB, False)
    params = b"".join(struct.pack("!HH", 100 + i, 0) for i in range(16_000))
    over_budget_unread(svcb, one_record(svcb, b"\x00\x01\x00" + params))  # to the root


def test_tc_over_tcp_asks_for_nothing_more() -> None:
    """Review rev55: an answer read over TCP with TC set was taken for the signal to
    ask again over TCP, and its records were dropped (NODATA for a listing)."""
    q = Question.make(dns.name.from_text("2.0.0.127.rbl.test"), dns.rdatatype.A, True)
    response = hostile_reply(q, "A", ["127.0.0.2"])
    response.flags |= dns.flags.TC
    data = response.to_wire()
    udp = read_reply(data, q)
    assert udp is not None
    assert udp.truncated
    tcp = read_reply(data, q, tcp=True)
    assert tcp is not None
    answer = to_answer("2.0.0.127.rbl.test", "A", tcp)
    assert answer is not None
    assert [str(a) for a in answer.addresses()] == ["127.0.0.2"]


def test_a_class_any_record_does_not_poison_later_answers() -> None:
    """Review rev55: once dnspython had read an AAAA of class ANY (a spoofed reply),
    it read every later AAAA as generic data, and addresses() raised."""
    code = (
        "import struct, dns.message\n"
        "import smtpguard.dnswire\n"
        "query = dns.message.make_query('a.example', 'AAAA').to_wire()\n"
        "def reply(rdclass):\n"
        "    head = query[:2] + struct.pack('!5H', 0x8180, 1, 1, 0, 0)\n"
        "    rr = struct.pack('!HHHIH', 0xC00C, 28, rdclass, 60, 16)\n"
        "    return head + query[12:] + rr + bytes.fromhex('20010db8' + '0' * 22 + '25')\n"
        "dns.message.from_wire(reply(255))\n"
        "m = dns.message.from_wire(reply(1))\n"
        "print(next(iter(m.answer[0])).address)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT / "milter")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2001:db8::25"


def test_an_ipv6_reverse_answer_of_many_names_is_read() -> None:
    """Review rev54: each ip6.arpa owner counted its 34 labels, so 54 names or more
    were a failure; an owner written as a pointer to a place counted before counts
    one."""
    name = dns.reversename.from_address("2001:db8::7")
    q = Question.make(name, dns.rdatatype.PTR, True)
    names = [f"mx{i}.sender.example." for i in range(150)]
    data = hostile_reply(q, "PTR", names).to_wire(max_size=65535)
    reply = read_reply(data, q)
    assert reply is not None
    assert reply.message is not None
    assert reply.labels == 34 + 149 + 150 * 3
    answer = to_answer(name.to_text(omit_final_dot=True), "PTR", reply)
    assert answer is not None
    assert len(answer.names()) == 150


def test_heavy_answers_take_more_of_the_cache() -> None:
    light = Answer("a.test", "A", Status.OK, (), ttl=60)
    assert cache_weight(light) == 1
    one = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, "192.0.2.1")
    assert cache_weight(Answer("a.test", "A", Status.OK, (one,) * 40, 60, size=700)) == 11
    assert cache_weight(Answer("t.test", "TXT", Status.OK, (one,), 60, size=62_000)) == 31
    # A cache of 40 weighs a 62 KB answer as 31 of them: the next one evicts it.
    fake = FakeDns()
    resolver = fake_resolver(fake, cache_size=40)
    try:
        for name in ("t.test", "u.test"):
            fake.records[(name, "TXT")] = Answer(name, "TXT", Status.OK, (one,), 60, size=62_000)
        assert resolver.lookup("t.test", "TXT", time.monotonic() + 1).ok
        assert resolver.cached("t.test", "TXT") is not None
        assert resolver.lookup("u.test", "TXT", time.monotonic() + 1).ok
        assert resolver.cached("t.test", "TXT") is None
        assert resolver.cached("u.test", "TXT") is not None
    finally:
        resolver.close()


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


@contextmanager
def slow_nameservers(hosts: Sequence[str], delay: float) -> Iterator[int]:
    """UDP servers on ``hosts``, one port for all (yielded), that answer every question
    NXDOMAIN ``delay`` seconds after it came, each on a timer of its own (a server slow
    upstream: its answers to several tries come one after the other)."""
    with timed_nameservers(hosts, lambda _host, _query: (dns.rcode.NXDOMAIN, delay)) as port:
        yield port


@contextmanager
def timed_nameservers(
    hosts: Sequence[str], judge: Callable[[str, dns.message.Message], tuple[dns.rcode.Rcode, float]]
) -> Iterator[int]:
    """UDP servers on ``hosts``, one port for all (yielded), that answer each question
    with the RCODE ``judge(host, query)`` gives, as many seconds after it came as it
    says, each on a timer of its own."""
    socks: list[socket.socket] = []
    port = 0
    for host in hosts:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, port))
        port = udp.getsockname()[1]
        udp.settimeout(0.1)
        socks.append(udp)
    stop = threading.Event()
    timers: list[threading.Timer] = []

    def serve(udp: socket.socket) -> None:
        host = udp.getsockname()[0]
        while not stop.is_set():
            try:
                data, peer = udp.recvfrom(4096)
                query = dns.message.from_wire(data)
                reply = dns.message.make_response(query)
            except (OSError, dns.exception.DNSException):
                continue
            rcode, delay = judge(host, query)
            reply.set_rcode(rcode)
            if rcode == dns.rcode.FORMERR:
                reply.use_edns(False)
            timer = threading.Timer(delay, udp.sendto, (reply.to_wire(), peer))
            timers.append(timer)
            timer.start()

    threads = [threading.Thread(target=serve, args=(udp,), daemon=True) for udp in socks]
    for thread in threads:
        thread.start()
    try:
        yield port
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for timer in timers:
            timer.cancel()
        for udp in socks:
            udp.close()


def test_a_late_formerr_to_edns_is_no_failure_of_the_server() -> None:
    """Review rev126: two old servers that refuse EDNS, the second slower. Once the
    first one's FORMERR turned EDNS off, the second one's FORMERR to the EDNS try it
    had already been sent marked it failed; with the first one failing plainly, the
    lookup ended SERVFAIL although the second one was about to answer."""

    def judge(host: str, query: dns.message.Message) -> tuple[dns.rcode.Rcode, float]:
        first = host == "127.0.0.4"
        if query.edns >= 0:
            return dns.rcode.FORMERR, 0.7 if first else 0.6
        return (dns.rcode.SERVFAIL, 0.0) if first else (dns.rcode.NXDOMAIN, 0.6)

    with timed_nameservers(["127.0.0.4", "127.0.0.5"], judge) as port:
        # Two servers, four tries, one every 0.5 s: EDNS to each, then plainly.
        r = Resolver(UdpTransport(["127.0.0.4", "127.0.0.5"], port, 2.0))
        try:
            answer = r.lookup("a.example", "A", time.monotonic() + 5)
        finally:
            r.close()
    assert answer.status is Status.NXDOMAIN, answer


def test_many_lookups_at_once_on_sockets_that_retire_quickly() -> None:
    """Found by a benchmark of 50 lookups at a time: a lookup that waited for the pool's
    lock while other lookups retired (and closed) the sockets there was given a closed
    one, and sendto raised AttributeError."""

    class Quick(UdpTransport):
        SOCKETS = 4
        QUERIES_PER_SOCKET = 1  # every socket retires at once: many wait for the lock

    with slow_nameservers(["127.0.0.10"], 0.0) as port:
        transport = Quick(["127.0.0.10"], port, 2.0)

        async def burst() -> list[Answer]:
            names = [f"n{i}.example" for i in range(200)]
            try:
                return await asyncio.gather(*(transport.query(n, "A") for n in names))
            finally:
                transport.close()  # on the loop's thread, as the resolver does

        answers = asyncio.run(burst())
    assert {a.status for a in answers} == {Status.NXDOMAIN}


def test_a_retired_socket_closes_with_its_last_answer() -> None:
    """Review rev126 F1: a retired socket whose last try was answered was never closed:
    a descriptor per QUERIES_PER_SOCKET lookups, until the process had none left and
    every DNS check failed."""

    class Quick(UdpTransport):
        QUERIES_PER_SOCKET = 4

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    with slow_nameservers(["127.0.0.11"], 0.0) as port:
        transport = Quick(["127.0.0.11"], port, 2.0)

        async def one_by_one() -> tuple[int, int]:
            try:
                await transport.query("warm.example", "A")
                before = descriptors()
                for i in range(400):  # 100 sockets retired
                    await transport.query(f"n{i}.example", "A")
                return before, descriptors()
            finally:
                transport.close()

        before, after = asyncio.run(one_by_one())
    # The pool fills up to SOCKETS sockets; 100 retired ones stayed open before.
    assert after <= before + Quick.SOCKETS


def test_an_answer_to_an_earlier_try_still_counts() -> None:
    """Review rev122 F1: with two servers each try was waited for a quarter of the
    timeout and then dropped: servers answering in 0.7 of it gave TIMEOUT, and with
    on_temp_error = "pass" a sender whose domain does not exist passed."""
    with slow_nameservers(["127.0.0.8", "127.0.0.9"], 0.7) as port:
        r = Resolver(UdpTransport(["127.0.0.8", "127.0.0.9"], port, 1.0))
        try:
            start = time.monotonic()
            answer = r.lookup("gone.example", "MX", time.monotonic() + 5)
            elapsed = time.monotonic() - start
        finally:
            r.close()
    assert answer.status is Status.NXDOMAIN, answer.detail
    assert 0.65 < elapsed < 0.9


@contextmanager
def truncating_nameserver(host: str, port: int, *, hang: bool = False) -> Iterator[None]:
    """Every UDP answer truncated (TC, no records); a TCP connection closed at once, as a
    server that fails mid-answer (the TCP read raises EOFError then), or with ``hang``
    held open without an answer until the server stops."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp.bind((host, port))
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, port))
    tcp.listen(8)
    stop = threading.Event()

    def answer_udp() -> None:
        while not stop.is_set():
            try:
                data, peer = udp.recvfrom(4096)
                reply = dns.message.make_response(dns.message.from_wire(data))
            except (OSError, dns.exception.DNSException):
                continue
            reply.flags |= dns.flags.TC
            udp.sendto(reply.to_wire(), peer)

    held: list[socket.socket] = []

    def close_tcp() -> None:
        while not stop.is_set():
            try:
                conn, _ = tcp.accept()
            except OSError:
                continue
            if hang:
                held.append(conn)
            else:
                conn.close()

    udp.settimeout(0.1)
    tcp.settimeout(0.1)
    threads = [threading.Thread(target=f, daemon=True) for f in (answer_udp, close_tcp)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for conn in held:
            conn.close()
        udp.close()
        tcp.close()


@contextmanager
def junk_nameserver(host: str, port: int) -> Iterator[None]:
    """Answers every question with its answer and one octet more (dnspython refuses
    it: TrailingJunk)."""

    def respond(data: bytes, _peer: tuple[str, int]) -> bytes:
        return dns.message.make_response(dns.message.from_wire(data)).to_wire() + b"\x00"

    with udp_nameserver(host, port, respond):
        yield


@pytest.mark.integration
def test_an_unreadable_answer_is_that_servers_failure(unbound: DnsServer) -> None:
    """Review rev58: our id and question with one octet too many was parsed in full,
    dropped, and waited past: the same datagram sent again cost a parse each time,
    and the lookup timed out. It is the server's failure: the next one is asked."""
    with junk_nameserver("127.0.0.6", unbound.port):
        alone = Resolver(UdpTransport(["127.0.0.6"], unbound.port, 1.0))
        pair = Resolver(UdpTransport(["127.0.0.6", unbound.host], unbound.port, 1.0))
        try:
            started = time.monotonic()
            failed = alone.lookup(GOOD_DOMAIN, "MX", time.monotonic() + 5)
            assert time.monotonic() - started < 0.5
            answer = pair.lookup(GOOD_DOMAIN, "MX", time.monotonic() + 5)
        finally:
            alone.close()
            pair.close()
    assert failed.status is Status.SERVFAIL
    assert failed.detail == "127.0.0.6: unreadable answer: malformed records"
    assert answer.status is Status.OK


@pytest.mark.integration
def test_next_server_answers_when_the_first_fails_over_tcp(unbound: DnsServer) -> None:
    """Found by review: the EOFError escaped the loop over the servers, and the lookup
    ended as SERVFAIL with a traceback instead of the next server's answer."""
    with truncating_nameserver("127.0.0.3", unbound.port):
        r = Resolver(UdpTransport(["127.0.0.3", unbound.host], unbound.port, 1.0))
        try:
            answer = r.lookup(GOOD_DOMAIN, "MX", time.monotonic() + 5)
        finally:
            r.close()
    assert answer.status is Status.OK, answer
    assert answer.mx() == ((10, "mx.good.test"),)


@pytest.mark.integration
def test_next_server_answers_when_the_first_hangs_over_tcp(unbound: DnsServer) -> None:
    """Review rev48: the TCP retry got all the time left, so the next server was never
    asked; it gets this server's share now."""
    with truncating_nameserver("127.0.0.3", unbound.port, hang=True):
        r = Resolver(UdpTransport(["127.0.0.3", unbound.host], unbound.port, 2.0))
        try:
            start = time.monotonic()
            answer = r.lookup(GOOD_DOMAIN, "MX", time.monotonic() + 5)
            took = time.monotonic() - start
        finally:
            r.close()
    assert answer.status is Status.OK, answer
    assert took < 1.5


@contextmanager
def udp_nameserver(
    host: str, port: int, respond: Callable[[bytes, tuple[str, int]], bytes]
) -> Iterator[int]:
    """A UDP server on ``host``:``port`` (0: any) that answers every datagram with
    ``respond(datagram, sender)``; yields its port."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((host, port))
    udp.settimeout(0.1)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                data, peer = udp.recvfrom(4096)
            except OSError:
                continue
            udp.sendto(respond(data, peer), peer)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield udp.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        udp.close()


@contextmanager
def questionless_nameserver(host: str, asked: list[tuple[int, int]] | None = None) -> Iterator[int]:
    """FORMERR without a question to a query with EDNS, REFUSED without one to a plain
    query: a header alone, as servers that cannot read the question answer. Each
    query's (source port, id) goes to ``asked``."""

    def respond(data: bytes, peer: tuple[str, int]) -> bytes:
        qid, _flags, _qd, _an, _ns, arcount = struct.unpack_from("!6H", data)
        if asked is not None:
            asked.append((peer[1], qid))
        rcode = dns.rcode.FORMERR if arcount else dns.rcode.REFUSED
        return struct.pack("!6H", qid, 0x8000 | rcode, 0, 0, 0, 0)

    with udp_nameserver(host, 0, respond) as port:
        yield port


def test_an_error_without_a_question_is_taken() -> None:
    """Review rev48: a FORMERR or REFUSED that echoes no question was waited out as no
    answer (a timeout for every lookup), and EDNS was never dropped for such a server."""
    q = Question.make(dns.name.from_text("a.example"), dns.rdatatype.A, True)
    for rcode in (dns.rcode.FORMERR, dns.rcode.REFUSED):
        reply = read_reply(struct.pack("!6H", q.qid, 0x8000 | rcode, 0, 0, 0, 0), q)
        assert reply is not None
        assert reply.rcode == rcode
    # Not for an answer: NOERROR and NXDOMAIN must echo the question.
    assert read_reply(struct.pack("!6H", q.qid, 0x8000, 0, 0, 0, 0), q) is None
    with questionless_nameserver("127.0.0.4") as port:
        r = Resolver(UdpTransport(["127.0.0.4"], port, 2.0))
        try:
            started = time.monotonic()
            answer = r.lookup("a.example", "A", time.monotonic() + 5)
        finally:
            r.close()
    assert answer.status is Status.SERVFAIL
    assert "answered FORMERR to EDNS" in answer.detail
    assert "answered REFUSED" in answer.detail
    assert time.monotonic() - started < 1


def test_a_socket_never_asks_with_the_same_id_twice() -> None:
    """Review rev52 N5: an id was free again once its try expired, and a late (or
    spoofed) question-less REFUSED, matched by id alone, ended the next query on the
    socket that drew it. No socket draws an id twice in its life."""
    asked: list[tuple[int, int]] = []
    with questionless_nameserver("127.0.0.4", asked) as port:
        r = Resolver(UdpTransport(["127.0.0.4"], port, 2.0))
        try:
            futures = [r.submit(f"n{i}.example", "A") for i in range(1500)]
            for future in futures:
                assert r.wait(future, time.monotonic() + 10) is not None
        finally:
            r.close()
    assert len(asked) > 1500  # mostly FORMERR to EDNS, then REFUSED (a few may be lost)
    assert len(set(asked)) == len(asked)


@pytest.mark.integration
def test_many_concurrent_lookups_share_few_sockets(real: Resolver, unbound: DnsServer) -> None:
    futures = [real.submit(f"{i}.0.0.127.rbl.test", "A") for i in range(300)]
    answers = [f.result(timeout=5) for f in futures]
    assert {a.status for a in answers} == {Status.OK, Status.NXDOMAIN}
    transport = real.transport
    assert isinstance(transport, UdpTransport)
    assert len(transport._pools[socket.AF_INET]) <= UdpTransport.SOCKETS


class _Sink:
    """Stands for the lookup a try belongs to: records what the socket delivers."""

    def __init__(self) -> None:
        self.got: list[tuple[str, object]] = []

    def deliver(self, question: Question, server: str, outcome: object) -> None:
        self.got.append((server, outcome))


def test_answers_count_only_from_the_server_asked() -> None:
    sock = _Socket()
    q = question()
    sink = _Sink()
    sock.pending[(q.qid, "127.0.0.1", 53)] = (q, cast(Any, sink))
    wire = response(q).to_wire()
    sock.datagram_received(wire, ("127.0.0.9", 53))  # another host
    sock.datagram_received(wire, ("127.0.0.1", 5353))  # another port
    assert sink.got == []
    sock.datagram_received(wire, ("127.0.0.1", 53))
    ((server, reply),) = sink.got
    assert server == "127.0.0.1"
    assert isinstance(reply, Reply)


# --- replies built octet by octet (review rev56) ------------------------------------------

HIP, NSEC3, PRIVATE = 55, 50, 65280
LONG = b"\x01a" * 126 + b"\x00"  # a 126-label name


def raw_record(owner: bytes, rdtype: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rdtype, 1, 3600, len(rdata)) + rdata


def pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def raw_reply(q: Question, records: list[bytes], qid: int | None = None) -> bytes:
    header = struct.pack("!6H", q.qid if qid is None else qid, 0x8180, 1, len(records), 0, 0)
    return header + q.wire + b"".join(records)


def a_question() -> Question:
    return Question.make(dns.name.from_text("1.2.0.192.zen.example"), dns.rdatatype.A, True)


def refused_unread(data: bytes, q: Question) -> None:
    """``data`` is a SERVFAIL for its labels, walked in a few milliseconds, never parsed."""
    started = time.process_time()
    reply = read_reply(data, q)
    assert time.process_time() - started < 0.05
    assert reply is not None
    assert reply.message is None
    assert reply.labels > MAX_LABELS
    answer = to_answer("1.2.0.192.zen.example", "A", reply)
    assert answer is not None
    assert answer.status is Status.SERVFAIL


def test_owners_pointing_to_places_of_their_own_count_in_full() -> None:
    """Review rev56 H1: 199 owners written as pointers into one record's data, names
    that hash alike under a long suffix, counted one label each: 0.4 s of dnspython's
    message index per datagram."""
    q = a_question()
    blob_at = 12 + len(q.wire) + 2 + 10  # the data of the first record
    suffix = b"\x01s" * 112 + b"\x00"
    blob, owners = bytearray(suffix), []
    for i in range(199):
        owners.append(blob_at + len(blob))
        blob += b"\x04" + f"n{i:03d}".encode() + pointer(blob_at)
    records = [raw_record(pointer(12), PRIVATE, bytes(blob))]
    records += [raw_record(pointer(at), dns.rdatatype.A, b"\x7f\x00\x00\x02") for at in owners]
    refused_unread(raw_reply(q, records), q)


def test_the_walk_stops_past_the_limit() -> None:
    """Review rev56 W1: one HIP record of 32,000 rendezvous servers, each a pointer to a
    126-label name, took 0.24 s to count before the count was compared."""
    q = a_question()
    long_at = 12 + len(q.wire) + 2 + 10
    fixed = struct.pack("!BBH", 16, 2, 4) + b"\x01" * 16 + b"\x02" * 4
    servers = pointer(long_at) * 32000
    records = [
        raw_record(pointer(12), dns.rdatatype.PTR, LONG),
        raw_record(pointer(12), HIP, fixed + servers),
    ]
    refused_unread(raw_reply(q, records), q)


def test_type_bitmap_windows_count() -> None:
    """Review rev56 T3: 21,000 windows of 3 octets in 65 KB cost dnspython 30 ms,
    uncounted."""
    q = a_question()
    windows = b"".join(bytes((w % 256, 1, 0x40)) for w in range(21000))
    nsec3 = b"\x01\x00\x00\x00\x00\x02\x00\x01" + windows
    refused_unread(raw_reply(q, [raw_record(pointer(12), NSEC3, nsec3)]), q)


def test_a_reply_to_another_question_is_not_even_walked() -> None:
    """Review rev56: a reply with our id and another question was walked and parsed,
    then dropped, and the query kept waiting for the next one: a hostile resolver
    repeated it for every question. Nothing in it is read now."""
    q = a_question()
    other = Question.make(dns.name.from_text("9.2.0.192.zen.example"), dns.rdatatype.A, True)
    fixed = struct.pack("!BBH", 16, 2, 4) + b"\x01" * 16 + b"\x02" * 4
    long_at = 12 + len(other.wire) + 2 + 10
    records = [
        raw_record(pointer(12), dns.rdatatype.PTR, LONG),
        raw_record(pointer(12), HIP, fixed + pointer(long_at) * 32000),
    ]
    data = raw_reply(other, records, qid=q.qid)
    started = time.process_time()
    for _ in range(100):
        assert read_reply(data, q) is None
    assert time.process_time() - started < 0.05
