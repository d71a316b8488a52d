"""The hand-written reply reader against dnspython, on generated datagrams.

Whatever arrives on a client socket is read by :func:`smtpguard.dnswire.read_reply`,
spoofed datagrams included, and negative answers are read there without dnspython.
For every datagram the reader must agree with :func:`dns.message.from_wire` or refuse
it: it never raises, never takes a datagram dnspython refuses for an answer, and never
reads a different answer (status, records, negative TTL) from one. A truncated reply
is not an answer: it only sends the question again over TCP.

Two generators: responses built by dnspython (answers, referrals, EDNS options,
CNAMEs), and negative answers put together byte by byte, where every field of the
fast path's input can take any value (compression pointers backwards, forwards and
to themselves, TTLs with the top bit set, OPT records in the wrong section, wrong
counts and lengths). Both are then cut short or have bytes overwritten.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard.dns import Answer, Status
from smtpguard.dnswire import (
    MAX_LABELS,
    MAX_RECORDS,
    Question,
    Reply,
    read_negative,
    read_reply,
    to_answer,
)

SOA, OPT, NS, A, TXT = (
    dns.rdatatype.SOA,
    dns.rdatatype.OPT,
    dns.rdatatype.NS,
    dns.rdatatype.A,
    dns.rdatatype.TXT,
)
QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
IN = dns.rdataclass.IN
#: Offset of the question name: right after the 12-octet header.
QNAME_AT = 12

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the two readers ------------------------------------------------------------------


def reference(data: bytes, q: Question) -> Reply | None:
    """What dnspython makes of ``data``: the same checks as read_reply's full parse,
    written out here so that the test does not lean on the code under test."""
    try:
        message = dns.message.from_wire(data)
    except Exception:  # whatever dnspython raises, it refuses the datagram
        return None
    if not isinstance(message, dns.message.QueryMessage) or not message.flags & QR:
        return None
    if message.id != q.qid or message.opcode() != dns.opcode.QUERY:
        return None
    errors = (dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP, dns.rcode.REFUSED)
    if not message.question and message.rcode() in errors:
        return Reply(message.rcode())  # an error need not echo the question
    if len(message.question) != 1:
        return None
    asked = message.question[0]
    if (asked.name, asked.rdtype, asked.rdclass) != (q.qname, q.qtype, IN):
        return None
    return Reply(message.rcode(), bool(message.flags & TC), message=message)


def outcome(reply: Reply, q: Question) -> Answer | int:
    """The answer a reply gives (its RCODE when it gives none)."""
    name = q.qname.to_text(omit_final_dot=True)
    rdtype = dns.rdatatype.to_text(q.qtype)
    answer = to_answer(name, rdtype, reply)
    return reply.rcode if answer is None else answer


def check(data: bytes, q: Question) -> Reply | None:
    """Assert the readers agree on ``data`` (or ours refuses it); the fast path's
    reply."""
    expected = reference(data, q)
    fast = read_negative(data, q)
    if fast is not None:
        assert expected is not None, "the fast path took a datagram dnspython refuses"
        assert not expected.truncated
        assert outcome(fast, q) == outcome(expected, q)
    ours = read_reply(data, q)  # must not raise
    if ours is None:
        return fast
    if ours.truncated:
        header = struct.unpack_from("!HH", data)
        assert header[0] == q.qid
        assert header[1] & (QR | TC) == QR | TC
        assert expected is None or expected.truncated
        return fast
    if ours.oversized:
        # Not parsed: a failure, never an answer, whatever dnspython would read.
        qid, flags, qdcount, *counts = struct.unpack_from("!6H", data)
        assert (qid, flags & (QR | TC), qdcount) == (q.qid, QR, 1)
        assert sum(counts) == ours.oversized
        assert ours.oversized > MAX_RECORDS or ours.labels > MAX_LABELS
        assert data[12 : 12 + len(q.wire)] == q.wire
        assert outcome(ours, q).status is Status.SERVFAIL  # type: ignore[union-attr]
        return fast
    if ours.unreadable:
        # Ours by id and question, and dnspython refuses it: a failure, not a reason
        # to wait for another datagram (review rev58).
        assert expected is None
        qid, flags, qdcount = struct.unpack_from("!3H", data)
        assert (qid, flags & QR) == (q.qid, QR)
        assert qdcount == 0 or data[12 : 12 + len(q.wire)].lower() == q.wire.lower()
        assert outcome(ours, q) == dns.rcode.SERVFAIL
        return fast
    assert expected is not None, "read_reply took a datagram dnspython refuses"
    assert outcome(ours, q) == outcome(expected, q)
    return fast


# --- questions -------------------------------------------------------------------------

LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)


@st.composite
def questions(draw: st.DrawFn) -> Question:
    labels = draw(st.lists(LABEL, min_size=1, max_size=4))
    qtype = draw(st.sampled_from([A, dns.rdatatype.AAAA, TXT, dns.rdatatype.MX, NS]))
    q = Question.make(dns.name.from_text(".".join(labels)), qtype, draw(st.booleans()))
    q.qid = draw(st.integers(0, 0xFFFF))
    return q


def zone_of(q: Question) -> dns.name.Name:
    return q.qname.parent() if len(q.qname) > 2 else q.qname


# --- responses built by dnspython --------------------------------------------------------

UINT32 = st.one_of(
    st.sampled_from([0, 1, 60, 300, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]),
    st.integers(0, 0xFFFFFFFF),
)
TTL = st.one_of(st.sampled_from([0, 1, 60, 300, 0x7FFFFFFF]), st.integers(0, 0x7FFFFFFF))
RCODES = [
    dns.rcode.NOERROR,
    dns.rcode.NXDOMAIN,
    dns.rcode.SERVFAIL,
    dns.rcode.REFUSED,
    dns.rcode.FORMERR,
    dns.rcode.BADVERS,
]
RDATA = {
    A: ["127.0.0.2", "127.0.0.4"],
    dns.rdatatype.AAAA: ["::1"],
    TXT: ['"v=spf1 -all"', '"listed" "twice"'],
    dns.rdatatype.MX: ["10 mx.example.", "0 ."],
    NS: ["ns1.example."],
}


@st.composite
def dnspython_responses(draw: st.DrawFn, q: Question) -> bytes:
    response = dns.message.make_response(dns.message.from_wire(q.to_wire()))
    assert isinstance(response, dns.message.QueryMessage)
    zone = zone_of(q)
    if draw(st.booleans()):
        response.use_edns(False)
    elif draw(st.booleans()):
        options = draw(
            st.lists(
                st.sampled_from(
                    [
                        dns.edns.GenericOption(dns.edns.NSID, b"ns1"),
                        dns.edns.EDEOption(dns.edns.EDECode.BLOCKED, "listed"),
                        dns.edns.GenericOption(dns.edns.COOKIE, bytes(16)),
                    ]
                ),
                max_size=2,
            )
        )
        response.use_edns(0, payload=draw(st.sampled_from([512, 1232, 4096])), options=options)
    response.set_rcode(draw(st.sampled_from(RCODES)))
    response.flags |= draw(st.sampled_from([0, AA, RA, AA | RA, TC]))
    if draw(st.integers(0, 9)) == 0:
        response.flags &= ~QR
    if draw(st.integers(0, 9)) == 0:
        response.id = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):
        owner = q.qname
        if draw(st.booleans()):  # through a CNAME
            owner = dns.name.from_text("target", zone)
            response.answer.append(dns.rrset.from_text(q.qname, 300, IN, "CNAME", owner.to_text()))
        values = draw(st.lists(st.sampled_from(RDATA[q.qtype]), min_size=1, max_size=2))
        response.answer.append(dns.rrset.from_text(owner, draw(TTL), IN, q.qtype, *values))
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            soa = f"ns.{zone} hostmaster.{zone} 1 " + " ".join(str(draw(TTL)) for _ in range(4))
            response.authority.append(dns.rrset.from_text(zone, draw(UINT32), IN, SOA, soa))
        else:
            response.authority.append(dns.rrset.from_text(zone, draw(TTL), IN, NS, f"ns.{zone}"))
    if draw(st.booleans()):
        glue = dns.name.from_text("ns", zone)
        response.additional.append(dns.rrset.from_text(glue, 300, IN, A, "192.0.2.53"))
    wire = bytearray(response.to_wire(want_shuffle=False))  # no random in a strategy
    if draw(st.integers(0, 4)) == 0:  # the question echoed in another case (0x20)
        qname = q.qname.to_wire()
        assert qname is not None  # to_wire without a file returns the bytes
        end = QNAME_AT + len(qname)
        wire[QNAME_AT:end] = wire[QNAME_AT:end].upper()
    return bytes(wire)


# --- negative answers put together byte by byte ---------------------------------------


def labels_wire(name: dns.name.Name) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in name.labels)


@st.composite
def wire_names(draw: st.DrawFn, q: Question, at: int) -> bytes:
    """A name written at offset ``at``: plain, or compressed against the question,
    or broken (pointers forwards or to themselves, reserved label types, over 255
    octets, no end)."""
    zone = zone_of(q)
    kind = draw(
        st.sampled_from(["plain", "to question", "to zone", "label then pointer", "root", "odd"])
    )
    if kind == "plain":
        return labels_wire(zone)
    if kind == "to question":
        return struct.pack("!H", 0xC000 | QNAME_AT)
    if kind == "to zone":
        return struct.pack("!H", 0xC000 | (QNAME_AT + 1 + len(q.qname.labels[0])))
    if kind == "label then pointer":
        return b"\x02ns" + struct.pack("!H", 0xC000 | QNAME_AT)
    if kind == "root":
        return b"\x00"
    return draw(
        st.sampled_from(
            [
                struct.pack("!H", 0xC000 | at),  # to itself
                struct.pack("!H", 0xC000 | (at + 2)),  # forwards
                struct.pack("!H", 0xC000),  # into the header
                b"\x02ns" + struct.pack("!H", 0xC000 | at),  # back to its own start
                b"\x40abc\x00",  # reserved label type (RFC 6891 §5)
                b"\x80abc\x00",
                b"".join(b"\x3f" + c * 63 for c in (b"a", b"b", b"c", b"d")) + b"\x00",  # 257
                b"\x03abc",  # no end
            ]
        )
    )


@st.composite
def wire_records(draw: st.DrawFn, q: Question, at: int, soa_likely: bool) -> bytes:
    owner = draw(wire_names(q, at))
    rtype = draw(st.sampled_from([SOA, SOA, SOA, OPT, NS, A]) if soa_likely else st.just(OPT))
    if rtype == OPT:
        owner = draw(st.sampled_from([b"\x00", b"\x00", owner]))
        rclass = draw(st.sampled_from([512, 1232, 4096]))
        ttl = draw(st.sampled_from([0, 0x8000, 0x00010000, 0x01000000]))  # DO, version, ext rcode
        rdata = draw(
            st.sampled_from(
                [b"", b"", struct.pack("!HH", 3, 3) + b"ns1", struct.pack("!HH", 3, 9) + b"ns1"]
            )
        )
    else:
        rclass = draw(st.sampled_from([IN, IN, IN, dns.rdataclass.CH, dns.rdataclass.ANY]))
        ttl = draw(UINT32)
        rdata_at = at + len(owner) + 10
        if rtype == SOA:
            mname = draw(wire_names(q, rdata_at))
            rname = draw(wire_names(q, rdata_at + len(mname)))
            numbers = struct.pack("!5I", *(draw(UINT32) for _ in range(5)))
            rdata = mname + rname + numbers
        elif rtype == NS:
            rdata = draw(wire_names(q, rdata_at))
        else:
            rdata = draw(st.sampled_from([b"\x7f\x00\x00\x02", b"\x7f\x00\x00", b""]))
    length = len(rdata) + draw(st.sampled_from([0, 0, 0, 0, -1, 1, -20]))
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, max(0, length)) + rdata


@st.composite
def wire_negatives(draw: st.DrawFn, q: Question) -> tuple[bytes, bool]:
    """A negative answer to ``q`` on the wire, and whether it is one the fast path must
    read itself (the plainest form, every field in range)."""
    clean = draw(st.booleans())
    rcode = draw(st.sampled_from([dns.rcode.NOERROR, dns.rcode.NXDOMAIN]))
    if clean:
        flags = QR | rcode | draw(st.sampled_from([0, AA, RD | RA]))
        zone = labels_wire(zone_of(q))
        soa = b""
        if draw(st.booleans()):
            numbers = [draw(st.integers(0, 0xFFFFFFFF))] + [draw(TTL) for _ in range(4)]
            rdata = b"\x02ns" + zone + b"\x0ahostmaster" + zone + struct.pack("!5I", *numbers)
            soa = zone + struct.pack("!HHIH", SOA, IN, draw(TTL), len(rdata)) + rdata
        opt = b"\x00" + struct.pack("!HHIH", OPT, 1232, 0, 0) if draw(st.booleans()) else b""
        header = struct.pack("!6H", q.qid, flags, 1, 0, int(bool(soa)), int(bool(opt)))
        return header + q.wire + soa + opt, True
    flags = QR | rcode | draw(st.sampled_from([0, AA, TC, 0x0800, 0x0040]))  # opcode, Z
    records = b""
    at = 12 + len(q.wire)
    count = draw(st.integers(0, 3))
    for index in range(count):
        record = draw(wire_records(q, at, soa_likely=index == 0 or draw(st.booleans())))
        records += record
        at += len(record)
    nscount = draw(st.integers(0, count))
    arcount = count - nscount + draw(st.sampled_from([0, 0, 0, 1, -1]))
    ancount = draw(st.sampled_from([0, 0, 0, 1]))
    header = struct.pack("!6H", q.qid, flags, 1, ancount, nscount, max(0, arcount))
    return header + q.wire + records, False


# --- damage --------------------------------------------------------------------------

BYTES = st.one_of(
    st.sampled_from([0x00, 0x01, 0x3F, 0x40, 0x80, 0xC0, 0xFF, SOA, OPT]), st.integers(0, 255)
)


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` as sent, cut short, with a few bytes overwritten, or with junk after it."""
    kind = draw(st.sampled_from(["as sent", "cut", "overwritten", "both", "junk"]))
    out = bytearray(data)
    if kind in ("overwritten", "both") and out:
        for _ in range(draw(st.integers(1, 3))):
            out[draw(st.integers(0, len(out) - 1))] = draw(BYTES)
    if kind in ("cut", "both"):
        out = out[: draw(st.integers(0, len(out)))]
    if kind == "junk":
        out += draw(st.binary(min_size=1, max_size=4))
    return bytes(out)


# --- the properties ------------------------------------------------------------------


@SETTINGS
@given(st.data())
def test_responses_built_by_dnspython(data: st.DataObject) -> None:
    q = data.draw(questions())
    check(data.draw(damaged(data.draw(dnspython_responses(q)))), q)


@SETTINGS
@given(st.data())
def test_negative_answers_built_byte_by_byte(data: st.DataObject) -> None:
    q = data.draw(questions())
    wire, clean = data.draw(wire_negatives(q))
    fast = check(wire, q)
    if clean:
        # Not a vacuous agreement: the plainest negative answers take the fast path.
        assert fast is not None
    check(data.draw(damaged(wire)), q)
