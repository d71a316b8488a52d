"""The stub resolver client on the wire: questions put together by hand, answers read
from UDP datagrams, and :class:`UdpTransport`, which sends them for
:class:`~smtpguard.dns.Resolver`.

Every datagram that arrives on a client socket is read here, and anyone who can guess a
port and an id can send one, so the reader must not take anything for an answer that
dnspython would refuse. Negative answers (most of a milter's: clients not listed in
DNSBLs) are read straight from the wire (:func:`read_negative`); everything else goes
through :func:`dns.message.from_wire`. tests/test_dnswire_fuzz.py holds the two readers
to the same answers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import dns.entropy
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from smtpguard.dns import Answer, Status


@dataclass(slots=True)
class Question:
    """One question as sent, kept to recognise its answer (RFC 5452 §4.1)."""

    qid: int
    qname: dns.name.Name
    qtype: dns.rdatatype.RdataType
    #: The question section on the wire (RFC 1035 §4.1.2).
    wire: bytes
    edns: bool

    @classmethod
    def make(cls, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, edns: bool) -> Question:
        wire = b"".join(bytes((len(label),)) + label for label in qname.labels)
        return cls(dns.entropy.random_16(), qname, qtype, wire + _QTAIL.pack(qtype, 1), edns)

    def to_wire(self) -> bytes:
        """Header with RD (RFC 1035 §4.1.1), the question, and with EDNS an OPT record
        advertising our UDP payload size (RFC 6891 §6.1.2)."""
        header = _HEADER.pack(self.qid, 0x0100, 1, 0, 0, 1 if self.edns else 0)
        opt = b"\x00" + _RR.pack(dns.rdatatype.OPT, _EDNS_PAYLOAD, 0, 0) if self.edns else b""
        return header + self.wire + opt

    def message(self) -> dns.message.Message:
        """The same question as a dnspython message (tests build replies to it)."""
        query = dns.message.make_query(
            self.qname, self.qtype, use_edns=0 if self.edns else False, payload=_EDNS_PAYLOAD
        )
        query.id = self.qid
        return query


@dataclass(frozen=True, slots=True)
class Reply:
    rcode: int
    truncated: bool = False
    #: RFC 2308 negative TTL, for answers read by the fast path.
    negative_ttl: float = 0.0
    #: The parsed response; None for a negative answer read straight from the wire.
    message: dns.message.QueryMessage | None = None
    #: Octets of the message on the wire (the cache weighs answers by it).
    size: int = 0
    #: Records in the message, when it was too large to parse (more than
    #: :data:`MAX_RECORDS`, or names of more than :data:`MAX_LABELS` labels in all).
    oversized: int = 0
    #: Labels of every name in the records, compression pointers followed (the memory
    #: and CPU its parsed names take grow with them; 0: not counted).
    labels: int = 0
    #: Why our answer (our id and question) could not be read: a failure of the
    #: server's, not a reason to wait for another datagram.
    unreadable: str = ""


# Every record type's class loaded now, and none later: dnspython otherwise caches a
# type it meets first in class ANY as generic data for every class, and an A or AAAA
# read after one such spoofed record had no address (review rev55: addresses() raised).
dns.rdata.load_all_types()  # type: ignore[no-untyped-call]  # dnspython: untyped

_HEADER = struct.Struct("!6H")
_QTAIL = struct.Struct("!HH")
_RR = struct.Struct("!HHIH")
_EDNS_PAYLOAD = 1232
#: Error RCODEs taken from a reply that echoes no question.
_QUESTIONLESS = frozenset(
    (dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP, dns.rcode.REFUSED)
)
#: Records an answer may hold (in all its sections) to be read at all. A milter's
#: lookups want a few (the largest real sets are TXT records of big domains, a few
#: dozen); more is what a client's own reverse zone or a sender's domain can serve to
#: cost every session megabytes of cache and a second of CPU (review rev48: 3000 PTR
#: names in one TCP answer). Such an answer is a SERVFAIL.
MAX_RECORDS = 200
#: Labels an answer's names may have in all, compression pointers followed, to be read:
#: 200 PTR records of one 126-label name fit in 3 KB on the wire, and dnspython spends
#: half a second of the resolver's one thread on them (review rev52; 150 A records of a
#: 3-label owner are 450). Such an answer is a SERVFAIL too.
MAX_LABELS = 2000
_QR, _OPCODE, _TC = 0x8000, 0x7800, 0x0200


def read_reply(data: bytes, question: Question, *, tcp: bool = False) -> Reply | None:
    """The answer to ``question`` in ``data``, or None when it is not one (another
    id or question, not a response, malformed): the caller keeps waiting. ``tcp``:
    read over TCP, where TC asks for nothing more (rev55: its records were dropped)."""
    fast = read_negative(data, question)
    if fast is not None:
        return fast
    screened = _screen(data, question, tcp=tcp)
    if not isinstance(screened, int):
        return screened
    labels = screened
    try:
        message = dns.message.from_wire(data)
    except dns.exception.DNSException as exc:
        # Ours, by id and question, and unreadable: the server's failure. Waiting for
        # another datagram let the same one cost a parse again and again (review rev58).
        return Reply(dns.rcode.SERVFAIL, size=len(data), unreadable=f"{type(exc).__name__}: {exc}")
    if not isinstance(message, dns.message.QueryMessage) or not message.flags & _QR:
        return None
    if message.id != question.qid or message.opcode() != dns.opcode.QUERY:
        return None
    if not message.question and message.rcode() in _QUESTIONLESS:
        # A server that cannot read the question may not echo it (RFC 1035 §4.1.2 does
        # not require it for errors; dnspython accepts it): waiting for another reply
        # timed out every lookup, and a FORMERR to EDNS was never asked again plainly
        # (review rev48).
        return Reply(message.rcode(), size=len(data))
    if len(message.question) != 1:
        return None
    asked = message.question[0]
    if (asked.name, asked.rdtype, asked.rdclass) != (
        question.qname,
        question.qtype,
        dns.rdataclass.IN,
    ):
        return None
    return Reply(
        message.rcode(), bool(message.flags & _TC), message=message, size=len(data), labels=labels
    )


def _screen(data: bytes, question: Question, *, tcp: bool) -> Reply | int | None:
    """Before a full parse: a Reply that needs none (truncated, or the oversized
    failure), None for a message not to parse at all, else the labels of its names.

    Only our answer is parsed: our id, a response to a query, our question (in any
    letter case, as dnspython compares names), or an error that echoes no question
    (RFC 1035 §4.1.2 does not require it). Nothing dnspython could read from another
    message would be our answer, and a hostile resolver could send one after another
    for one pending query, each costing what the walk lets through (review rev56).
    Ours is walked first; one the walk cannot read is a failure, unparsed."""
    if len(data) < 12:
        return None  # no header: nobody's answer
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    response = qid == question.qid and flags & (_QR | _OPCODE) == _QR
    if not tcp and response and flags & _TC:
        # Only the signal to ask over TCP: nothing in it is read.
        return Reply(flags & 0xF, truncated=True)
    # The name in any letter case, its type and class as asked (review rev59: type 67
    # lower-cased is type 99).
    named = len(question.wire) - 4
    ours = (
        qdcount == 1
        and data[12 : 12 + named].lower() == question.wire[:named].lower()
        and data[12 + named : 16 + named] == question.wire[named:]
    )
    if not response or not (ours or (qdcount == 0 and flags & 0xF in _QUESTIONLESS)):
        return None
    records = ancount + nscount + arcount
    if records > MAX_RECORDS:
        # Never parsed (rev52: 2.3 s). Ours needs room for every record counted (11
        # octets at least: a pointer or the root for the owner, type, class, TTL and
        # length).
        if ours and len(data) >= 12 + len(question.wire) + 11 * records:
            return Reply(flags & 0xF, size=len(data), oversized=records)
        return None
    labels = label_load(data, qdcount, records)
    if labels is None:
        # Ours, and malformed where dnspython would refuse it too: the server's failure.
        return Reply(dns.rcode.SERVFAIL, size=len(data), unreadable="malformed records")
    if labels < 0:
        return None
    if labels > MAX_LABELS:
        return Reply(flags & 0xF, size=len(data), oversized=records, labels=labels)
    return labels


def read_negative(data: bytes, question: Question) -> Reply | None:
    """NXDOMAIN or no data, read from the wire without building a message.

    Most answers a milter gets are negative (clients not listed in DNSBLs), and
    parsing them with dnspython costs more CPU than all the rest of a lookup. Only the
    plainest form is read here, and only when dnspython would read the same: our id,
    QR set, opcode QUERY, not truncated, RCODE NOERROR or NXDOMAIN, our question
    echoed byte for byte, no answer records, at most one authority record, an SOA of
    class IN (it gives the RFC 2308 TTL), and at most one additional record, an OPT
    with the root as owner, no options and no extended RCODE. Anything else: None, and
    :func:`read_reply` parses the message in full.
    """
    size = len(question.wire)
    end = len(data)
    if end < 12 + size:
        return None
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qid != question.qid or flags & (_QR | _OPCODE | _TC) != _QR:
        return None
    rcode = flags & 0xF
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) or qdcount != 1 or ancount:
        return None
    if nscount > 1 or arcount > 1 or data[12 : 12 + size] != question.wire:
        return None
    offset, ttl = 12 + size, 0.0
    if nscount:
        soa = _read_soa(data, offset, end)
        if soa is None:
            return None
        offset, ttl = soa
    if arcount:
        if data[offset : offset + 1] != b"\x00" or offset + 1 + _RR.size > end:
            return None
        rtype, _payload, rr_ttl, rdlength = _RR.unpack_from(data, offset + 1)
        # An extended RCODE (RFC 6891 §6.1.3) is not NOERROR or NXDOMAIN.
        if rtype != dns.rdatatype.OPT or rr_ttl >> 24 or rdlength:
            return None
        offset += 1 + _RR.size
    if offset != end:
        return None
    return Reply(rcode, negative_ttl=ttl)


def _read_soa(data: bytes, offset: int, end: int) -> tuple[int, float] | None:
    """(offset after it, RFC 2308 negative TTL) for the SOA record of class IN at
    ``offset``; None for any other record or a malformed one. A TTL or SOA time with
    the top bit set (RFC 2181 §8) is left to dnspython too: how it reads them has
    changed between versions."""
    owner_end = _name_end(data, offset, end)
    if owner_end is None or owner_end + _RR.size > end:
        return None
    rtype, rclass, rr_ttl, rdlength = _RR.unpack_from(data, owner_end)
    rdata = owner_end + _RR.size
    rdata_end = rdata + rdlength
    if rtype != dns.rdatatype.SOA or rclass != dns.rdataclass.IN or rdata_end > end:
        return None
    mname_end = _name_end(data, rdata, rdata_end)
    rname_end = _name_end(data, mname_end, rdata_end) if mname_end is not None else None
    if rname_end is None or rname_end + _SOA_NUMBERS.size != rdata_end:
        return None
    _serial, *times = _SOA_NUMBERS.unpack_from(data, rname_end)
    if max(rr_ttl, *times) > _MAX_TTL:
        return None
    minimum = times[-1]
    return rdata_end, float(min(rr_ttl, minimum))


def _name_end(data: bytes, offset: int, limit: int) -> int | None:
    """The offset after the (possibly compressed, RFC 1035 §4.1.4) name at ``offset``,
    which must end before ``limit``; None where dnspython would refuse it: a reserved
    label type, a pointer that does not point before the part of the name read so far,
    more than 16 pointers, a name over 255 octets."""
    span = _name_span(data, offset, limit)
    return None if span is None else span[0]


#: Record types whose data hold names dnspython reads in class IN (its rdtypes'
#: from_wire; records of other classes refuse the reply): where the first is, and how
#: many follow it.
_RDATA_NAMES: Final[dict[int, tuple[int, int]]] = {
    dns.rdatatype.NS: (0, 1),
    dns.rdatatype.CNAME: (0, 1),
    dns.rdatatype.PTR: (0, 1),
    dns.rdatatype.DNAME: (0, 1),
    dns.rdatatype.NSEC: (0, 1),
    dns.rdatatype.TKEY: (0, 1),
    dns.rdatatype.TSIG: (0, 1),
    dns.rdatatype.SOA: (0, 2),
    dns.rdatatype.RP: (0, 2),
    dns.rdatatype.MX: (2, 1),
    dns.rdatatype.AFSDB: (2, 1),
    dns.rdatatype.RT: (2, 1),
    dns.rdatatype.LP: (2, 1),
    dns.rdatatype.DSYNC: (5, 1),
    dns.rdatatype.RRSIG: (18, 1),
    dns.rdatatype.SIG: (18, 1),
    dns.rdatatype.NSAP_PTR: (0, 1),
    dns.rdatatype.KX: (2, 1),
    dns.rdatatype.PX: (2, 2),
    dns.rdatatype.SVCB: (2, 1),
    dns.rdatatype.HTTPS: (2, 1),
    dns.rdatatype.SRV: (6, 1),
}
#: Record types of character-strings only: each string counts as a label (a TXT of
#: 65,000 empty strings cost 0.2 s to parse, review rev54).
_STRINGS: Final = frozenset(
    (
        dns.rdatatype.TXT,
        dns.rdatatype.SPF,
        dns.rdatatype.HINFO,
        dns.rdatatype.AVC,
        dns.rdatatype.RESINFO,
        dns.rdatatype.WALLET,
        dns.rdatatype.NINFO,
    )
)
#: Record types read as lists of small elements (SVCB parameters, APL items, EDNS
#: options): 16,000 of them cost dnspython about 0.1 s (review rev55).
_ELEMENTS: Final = frozenset(
    (dns.rdatatype.SVCB, dns.rdatatype.HTTPS, dns.rdatatype.APL, dns.rdatatype.OPT)
)


#: Record types with a type bitmap (RFC 4034 §4.1.2), a list of windows of 3 octets
#: or more.
_BITMAPS: Final = frozenset((dns.rdatatype.NSEC, dns.rdatatype.NSEC3, dns.rdatatype.CSYNC))


def label_load(data: bytes, questions: int, records: int) -> int | None:
    """What parsing the message costs, in labels: those of the names in its records'
    data (pointers followed: the cost grows with them) and of its owners, one per
    character-string, one per element of a list; None where the message cannot be
    walked (malformed, octets after its records, or a name where dnspython reads names
    that is not one); -1 for a record of another class than IN (no answer of ours).

    An owner written as a pointer counts what it leads to the first time, one for
    each later owner pointing to the same place (each ip6.arpa owner of a PTR set
    would count 34, review rev54); owners pointing to places of their own count in
    full: 199 names that hash alike under one long suffix cost dnspython's message
    index 0.4 s (review rev56). The walk stops once past :data:`MAX_LABELS` (its
    count is then a lower bound): counting 32,000 names of one HIP took 0.24 s."""
    end = len(data)
    offset = 12
    for _ in range(questions):
        after = _name_end(data, offset, end)
        if after is None or after + 4 > end:
            return None
        offset = after + 4
    total = 0
    owners: set[int] = set()
    for _ in range(records):
        span = _name_span(data, offset, end)
        if span is None or span[0] + 10 > end:
            return None
        if data[offset] >= 0xC0:
            target = (data[offset] & 0x3F) << 8 | data[offset + 1]
            total += 1 if target in owners else span[1]
            owners.add(target)
        else:
            total += span[1]
        offset = span[0]
        rdtype, rdclass, _ttl, rdlength = _RR.unpack_from(data, offset)
        offset += 10
        rdata_end = offset + rdlength
        if rdata_end > end:
            return None
        if rdclass != dns.rdataclass.IN and rdtype != dns.rdatatype.OPT:
            # Nothing we ask about; other classes read types differently (CH's A holds
            # a name; review rev55: 0.5 s uncounted). Not our answer (-1).
            return -1
        load = _rdata_load(data, rdtype, offset, rdata_end, MAX_LABELS - total)
        if load is None:
            return None
        total += load
        if total > MAX_LABELS:
            return total
        offset = rdata_end
    # Octets after the last record: dnspython refuses the message (TrailingJunk), after
    # parsing it all (review rev58: 52 ms for 2.7 KB, sent again and again).
    return total if offset == end else None


def _rdata_load(data: bytes, rdtype: int, start: int, end: int, budget: int) -> int | None:
    """:func:`label_load`'s count for one record's data, which stops once past
    ``budget``."""
    if rdtype in _STRINGS:
        count = 0
        while start < end:
            start += 1 + data[start]
            count += 1
        return count if start == end else None
    at, names = _names_at(data, rdtype, start, end)
    # Parameters, items or options: about one per 4 octets at most; type bitmap
    # windows one per 3 (review rev56: 21,000 windows in 65 KB cost 30 ms).
    total = (end - start) // 4 if rdtype in _ELEMENTS else 0
    if rdtype in _BITMAPS:
        total += (end - start) // 3
    while names and at < end and total <= budget:
        span = _name_span(data, at, end)
        if span is None:
            return None
        at, total, names = span[0], total + span[1], names - 1
    return None if names > 0 and total <= budget else total


def _names_at(data: bytes, rdtype: int, start: int, end: int) -> tuple[int, int]:
    """Where the names in a class IN record's data begin and how many there are (-1:
    to the end of the data)."""
    layout = _RDATA_NAMES.get(rdtype)
    if layout is not None:
        return start + layout[0], layout[1]
    if rdtype == dns.rdatatype.NAPTR:
        at = start + 4  # order, preference; then flags, services, regexp
        for _ in range(3):
            if at >= end:
                return end, 1  # no room for the name: not walkable
            at += 1 + data[at]
        return at, 1
    if rdtype == dns.rdatatype.HIP and end - start >= 4:
        hit, key = data[start], int.from_bytes(data[start + 2 : start + 4], "big")
        return start + 4 + hit + key, -1  # rendezvous servers to the end
    gateway = rdtype in (dns.rdatatype.IPSECKEY, dns.rdatatype.AMTRELAY)
    if gateway and end - start >= 3 and data[start + 1] & 0x7F == 3:
        # A gateway or relay of type 3 is a name, after one octet more for IPSECKEY.
        return start + (3 if rdtype == dns.rdatatype.IPSECKEY else 2), 1
    return end, 0


def _name_span(data: bytes, offset: int, limit: int) -> tuple[int, int] | None:
    """:func:`_name_end`, and the name's labels (pointers followed)."""
    after = None
    segment = lowest = offset
    length = hops = labels = 0
    while offset < limit:
        count = data[offset]
        if count == 0:
            if length >= 255:
                return None
            return (offset + 1 if after is None else after), labels
        if count < 64:
            offset += 1 + count
            length += 1 + count
            labels += 1
            if offset > limit:
                return None
        elif count >= 0xC0:
            if offset + 2 > limit:
                return None
            target = (count & 0x3F) << 8 | data[offset + 1]
            if after is None:
                after = offset + 2
            hops += 1
            if target >= lowest or hops > _MAX_POINTERS:
                return None
            # What a pointer leads to must end where the part already read begins.
            limit, segment = segment, target
            lowest = offset = target
        else:
            return None
    return None


_SOA_NUMBERS = struct.Struct("!5I")
#: The largest TTL (RFC 2181 §8).
_MAX_TTL = 0x7FFFFFFF
#: dnspython follows at most this many compression pointers in one name.
_MAX_POINTERS = 16


class _Socket(asyncio.DatagramProtocol):
    """One UDP socket of the pool and the questions waiting for answers on it."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        #: (query id, server address, port) -> (question, the lookup it is a try of)
        self.pending: dict[tuple[int, str, int], tuple[Question, _Lookup]] = {}
        self.used = 0
        #: Every id asked on this socket: never drawn again for its life (at most
        #: UdpTransport.QUERIES_PER_SOCKET), so a late reply to an expired try, a
        #: question-less error that matches by id alone, cannot end a later query
        #: (review rev52 N5).
        self.ids: set[int] = set()
        self.retired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's UDP transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        if len(data) < 12:
            return
        key = (int.from_bytes(data[:2], "big"), str(addr[0]), int(addr[1]))
        waiting = self.pending.get(key)
        if waiting is None:
            return  # late (after a retry), duplicated, or not for us
        question, lookup = waiting
        # The same id from the server asked, and our question (RFC 5452 §4.1).
        reply = read_reply(data, question)
        if reply is None:
            return
        del self.pending[key]
        lookup.deliver(question, key[1], reply)
        # A retired socket closes with its last answer (review rev126 F1: it was left
        # open, one descriptor per 256 lookups, until none were left).
        self.close_if_idle()

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for one of several servers on an unconnected socket: the
        # query concerned times out and the next server is tried.
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pending, self.pending = self.pending, {}
        for (_qid, server, _port), (question, lookup) in pending.items():
            lookup.deliver(question, server, exc or ConnectionError("DNS socket closed"))

    def close_if_idle(self) -> None:
        if self.retired and not self.pending and self.transport is not None:
            self.transport.close()


class UdpTransport:
    """A stub resolver client (RFC 1035 §4.2.1) for the configured recursive servers.

    Why not :mod:`dns.asyncresolver`: per lookup it opens a socket and builds a
    resolution object, and dnspython builds and parses every message; that is about
    three times the CPU of this client (see bench/README.md), and a burst of sessions
    with several DNSBL zones is bound by that CPU, shared under one GIL with the milter
    callbacks. Here a question is a few bytes put together by hand, a negative answer
    is read straight from the wire (:func:`read_negative`), and dnspython parses only
    answers that carry records, and handles the TCP fallback.

    Questions go out over a small pool of UDP sockets, each on its own random port and
    retired after ``QUERIES_PER_SOCKET`` questions, with random ids; an answer counts
    only from the server asked, with the id and question of the query (RFC 5452 §4,
    §9). EDNS0 with a 1232-byte payload keeps long TXT (SPF) records in UDP; a
    truncated answer is asked again over TCP. Every server gets two tries within
    ``timeout``; SERVFAIL or REFUSED from one server moves on to the next.
    """

    SOCKETS = 8
    QUERIES_PER_SOCKET = 256

    def __init__(self, nameservers: Sequence[str], port: int, timeout: float) -> None:
        if not nameservers:
            raise ValueError("no nameservers")
        self.servers = [ipaddress.ip_address(ns).compressed for ns in nameservers]
        self.port = port
        self.timeout = timeout
        self.tries = 2 * len(self.servers)
        self._pools: dict[int, list[_Socket]] = {}
        #: Every socket not yet closed, retired ones included (for close()).
        self._open: set[_Socket] = set()
        self._opening: asyncio.Lock | None = None

    def close(self) -> None:
        """Close every socket (loop thread; the resolver calls it when it stops)."""
        for sock in self._open:
            if sock.transport is not None:
                sock.transport.close()
        self._open.clear()
        self._pools.clear()

    async def query(self, name: str, rdtype: str) -> Answer:
        """Ask the servers in turn, a try every ``timeout / tries`` seconds, each try
        listened for until the lookup's deadline: an answer to an earlier try that
        comes after the next was sent still counts (review rev122 F1: with two servers
        each try was given a quarter of the time and then dropped, and an answer slower
        than that never counted, so a sender whose SPF says -all passed)."""
        try:
            qname = dns.name.from_text(name)
            qtype = dns.rdatatype.from_text(rdtype)
        except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
            return Answer(name, rdtype, Status.SERVFAIL, detail=f"cannot ask: {exc}")
        return await _Lookup(self, name, rdtype, qname, qtype).run()

    async def _read(
        self,
        outcome: Reply | BaseException,
        question: Question,
        server: str,
        deadline: float,
        share: float,
    ) -> Reply | str:
        """An answered try's reply, or why it failed (text). A truncated answer is asked
        again over TCP, given ``share`` of the time at most: one whose TCP hangs must
        leave time for the next server (review rev48)."""
        given = share
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            reply = outcome
            if reply.truncated:
                given = max(0.0, min(deadline - asyncio.get_running_loop().time(), share))
                reply = await self._tcp(question, server, given)
        except TimeoutError:
            return f"{server}: no answer over TCP in {given:.2g}s"
        except (OSError, EOFError, dns.exception.DNSException) as exc:
            # EOFError: dnspython's TCP read when the server closes mid-answer.
            return f"{server}: {type(exc).__name__}: {exc}"
        return reply

    async def _send(self, question: Question, server: str, lookup: _Lookup) -> _Socket:
        """Send one try of ``lookup``; its answer (or the socket's loss) goes to
        :meth:`_Lookup.deliver`, until :func:`_release`."""
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        sock = await self._socket(family)
        while question.qid in sock.ids:
            question.qid = dns.entropy.random_16()
        sock.ids.add(question.qid)
        sock.pending[(question.qid, server, self.port)] = (question, lookup)
        sock.used += 1
        if sock.used >= self.QUERIES_PER_SOCKET:
            # Fresh source ports keep off-path answer guessing hard (RFC 5452 §9.2).
            sock.retired = True
        try:
            assert sock.transport is not None
            sock.transport.sendto(question.to_wire(), (server, self.port))
        except BaseException:
            _release(sock, question.qid, server, self.port)
            raise
        return sock

    async def _tcp(self, question: Question, server: str, timeout: float) -> Reply:
        """RFC 7766 §5: a truncated UDP answer is asked again over TCP."""
        if timeout <= 0:
            raise TimeoutError
        data = await asyncio.wait_for(self._tcp_exchange(question, server), timeout)
        # Read as a UDP answer is: an oversized one is refused unparsed (dnspython's
        # own TCP query parsed it, and it was serialised and parsed again here).
        reply = read_reply(data, question, tcp=True)
        if reply is None:
            raise ConnectionError("TCP answer does not match the question")
        return reply

    async def _tcp_exchange(self, question: Question, server: str) -> bytes:
        """The message the server answers over TCP (RFC 1035 §4.2.2: two octets of
        length in front); EOFError when it closes before the end."""
        reader, writer = await asyncio.open_connection(server, self.port)
        try:
            wire = question.to_wire()
            writer.write(len(wire).to_bytes(2, "big") + wire)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            return await reader.readexactly(size)
        finally:
            writer.close()

    async def _socket(self, family: int) -> _Socket:
        pool = self._pools.setdefault(family, [])
        if any(s.retired for s in pool):
            pool[:] = [s for s in pool if not s.retired]
            self._open = {s for s in self._open if s.transport and not s.transport.is_closing()}
        if len(pool) >= self.SOCKETS:
            return random.choice(pool)  # noqa: S311  # spreads load; ids and ports are the secret
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if len(pool) < self.SOCKETS:
                # A client socket: any local address, a random port from the kernel.
                local = "::" if family == socket.AF_INET6 else "0.0.0.0"  # noqa: S104 - the wildcard of the family, to let the kernel pick
                loop = asyncio.get_running_loop()
                _transport, protocol = await loop.create_datagram_endpoint(
                    _Socket, local_addr=(local, 0), family=family
                )
                pool.append(protocol)
                self._open.add(protocol)
                return protocol
        # Sockets may have retired (and closed) while this one waited for the lock: a
        # question sent on a closed one raised AttributeError (found by a benchmark of
        # 50 lookups at a time).
        live = [s for s in pool if not s.retired]
        if not live:
            return await self._socket(family)
        return random.choice(live)  # noqa: S311 - spreads load; ids and ports are the secret


class _Lookup:
    """The tries of one :meth:`UdpTransport.query`: answers arrive by :meth:`deliver`
    (called by the socket, which wakes the query at once: one loop turn per answer)."""

    def __init__(
        self,
        transport: UdpTransport,
        name: str,
        rdtype: str,
        qname: dns.name.Name,
        qtype: dns.rdatatype.RdataType,
    ) -> None:
        self.transport = transport
        self.name, self.rdtype, self.qname, self.qtype = name, rdtype, qname, qtype
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + transport.timeout
        self.interval = transport.timeout / transport.tries
        self.next_send = self.loop.time()
        self.sent = 0
        self.errors: list[str] = []
        self.failed: set[str] = set()
        self.edns = True
        #: Answers (or a socket's loss) not yet read: (question, server, outcome).
        self.arrived: list[tuple[Question, str, Reply | BaseException]] = []
        #: Tries sent and not answered, by id() of their question (a query id is unique
        #: on its socket only): (question, server, sent at, socket).
        self.inflight: dict[int, tuple[Question, str, float, _Socket]] = {}
        self._event: asyncio.Future[None] | None = None

    def deliver(self, question: Question, server: str, outcome: Reply | BaseException) -> None:
        self.arrived.append((question, server, outcome))
        self.wake()

    def wake(self) -> None:
        event = self._event
        if event is not None and not event.done():
            event.set_result(None)

    async def _wait(self, timeout: float) -> None:
        self._event = event = self.loop.create_future()
        timer = self.loop.call_later(max(0.0, timeout), self.wake)
        try:
            await event
        finally:
            timer.cancel()
            self._event = None

    async def run(self) -> Answer:
        transport = self.transport
        try:
            while True:
                if self.arrived and (answer := await self._answered()) is not None:
                    return answer
                now = self.loop.time()
                if now >= self.deadline:
                    break
                more = self.sent < transport.tries
                if more and now >= self.next_send:
                    await self._send_next(now)
                    continue
                if not self.inflight and not more:
                    break
                await self._wait(
                    (min(self.deadline, self.next_send) if more else self.deadline) - now
                )
        finally:
            for question, server, _sent, sock in self.inflight.values():
                _release(sock, question.qid, server, transport.port)
        end = self.loop.time()
        self.errors += [
            f"{server}: no answer in {end - sent:.2g}s"
            for _q, server, sent, _s in self.inflight.values()
        ]
        return self._answer(Status.TIMEOUT)

    def _answer(self, status: Status) -> Answer:
        if self.failed and len(self.failed) == len(self.transport.servers):
            status = Status.SERVFAIL
        detail = "; ".join(self.errors) or f"no answer in {self.transport.timeout}s"
        return Answer(self.name, self.rdtype, status, detail=detail)

    async def _send_next(self, now: float) -> None:
        servers = self.transport.servers
        server = servers[self.sent % len(servers)]
        self.sent += 1
        if server in self.failed:
            return
        question = Question.make(self.qname, self.qtype, self.edns)
        sock = await self.transport._send(question, server, self)
        self.inflight[id(question)] = (question, server, now, sock)
        self.next_send = now + self.interval

    async def _answered(self) -> Answer | None:
        """The answer among the tries answered, if one is; each failed server noted
        (the next one is asked at once), SERVFAIL once every server failed."""
        transport = self.transport
        while self.arrived:
            question, server, outcome = self.arrived.pop(0)
            if self.inflight.pop(id(question), None) is None:
                continue  # already given up
            if isinstance(outcome, Reply) and not outcome.truncated:
                read: Reply | str = outcome  # the common case, without a coroutine
            else:
                read = await transport._read(
                    outcome, question, server, self.deadline, self.interval
                )
            judged = read if isinstance(read, str) else _judge(self.name, self.rdtype, server, read)
            if isinstance(judged, Answer):
                return judged
            self.next_send = self.loop.time()
            if judged == _EDNS_REFUSED and question.edns:
                # An old server that does not speak EDNS0 (RFC 6891 §7): ask plainly.
                # Judged by the try it answers: a second server's FORMERR to an EDNS
                # try sent before the first one's turned EDNS off is no failure of its
                # own (review rev126).
                if self.edns:
                    self.edns = False
                    self.errors.append(f"{server} answered FORMERR to EDNS")
                continue
            self.errors.append(f"{server} answered FORMERR" if judged == _EDNS_REFUSED else judged)
            self.failed.add(server)
            if len(self.failed) == len(transport.servers):
                return self._answer(Status.SERVFAIL)
        return None


def _judge(name: str, rdtype: str, server: str, reply: Reply) -> Answer | str:
    """An Answer, or why this server failed (text), or :data:`_EDNS_REFUSED`."""
    answer = to_answer(name, rdtype, reply)
    if answer is not None:
        return answer
    if reply.rcode == dns.rcode.FORMERR:
        return _EDNS_REFUSED
    # An unreadable answer is that server's failure too.
    if reply.unreadable:
        return f"{server}: unreadable answer: {reply.unreadable}"
    return f"{server} answered {dns.rcode.to_text(dns.rcode.Rcode(reply.rcode))}"


#: :meth:`UdpTransport._read`'s word for a FORMERR (an answer to EDNS, or not).
_EDNS_REFUSED: Final = "FORMERR"


def _release(sock: _Socket, qid: int, server: str, port: int) -> None:
    """A try is over: its answer is no longer waited for."""
    sock.pending.pop((qid, server, port), None)
    sock.close_if_idle()


def to_answer(name: str, rdtype: str, reply: Reply) -> Answer | None:
    """The answer in a NOERROR or NXDOMAIN reply; None for other RCODEs, and for an
    unreadable reply (a SERVFAIL of the server's)."""
    if reply.unreadable:
        return None
    if reply.oversized:
        if reply.labels:
            detail = (
                # The walk stopped past the limit: its count is a lower bound.
                f"answer of {reply.oversized} records whose names have more than"
                f" {MAX_LABELS} labels: not read"
            )
        else:
            detail = f"answer of {reply.oversized} records, more than {MAX_RECORDS}: not read"
        return Answer(name, rdtype, Status.SERVFAIL, detail=detail, oversized=True)
    response = reply.message
    if reply.rcode == dns.rcode.NXDOMAIN:
        ttl = reply.negative_ttl if response is None else negative_ttl(response)
        return Answer(name, rdtype, Status.NXDOMAIN, ttl=ttl)
    if reply.rcode != dns.rcode.NOERROR:
        return None
    if response is None:
        return Answer(name, rdtype, Status.NODATA, ttl=reply.negative_ttl)
    try:
        chain = response.resolve_chaining()
    except dns.exception.DNSException as exc:
        return Answer(name, rdtype, Status.SERVFAIL, detail=f"bad answer: {exc}")
    if chain.answer is None:
        if _is_referral(response):
            # A server that does not recurse points elsewhere: no answer about the
            # name at all. Read as NODATA it refused every sender and client for good.
            return Answer(
                name, rdtype, Status.SERVFAIL, detail="referral: the nameserver does not recurse"
            )
        return Answer(name, rdtype, Status.NODATA, ttl=negative_ttl(response))
    return Answer(
        name,
        rdtype,
        Status.OK,
        tuple(chain.answer),
        ttl=float(chain.minimum_ttl),
        size=reply.size,
        labels=reply.labels,
    )


def _is_referral(response: dns.message.Message) -> bool:
    """RFC 2308 §2.2: no answer, NS records and no SOA in the authority section, from a
    server that is not authoritative for the name (a NODATA carries the SOA)."""
    if response.flags & dns.flags.AA:
        return False
    kinds = {rrset.rdtype for rrset in response.authority}
    return dns.rdatatype.NS in kinds and dns.rdatatype.SOA not in kinds


def negative_ttl(response: dns.message.Message) -> float:
    """RFC 2308 §5: the negative TTL is the smaller of the SOA record's own TTL and
    its MINIMUM field; without an SOA in the authority section, do not cache (§5)."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            soa_minimum: int = next(iter(rrset)).minimum
            return float(min(rrset.ttl, soa_minimum))
    return 0.0
