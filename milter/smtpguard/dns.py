"""The DNS service shared by every DNS check.

One asyncio event loop runs in a daemon thread and sends every query
(:class:`UdpTransport`, a stub resolver client on top of dnspython). A libmilter
callback never waits for a query to be sent: it calls :meth:`Resolver.submit` (or
:meth:`Resolver.spawn` for a chain of lookups) and gets a
:class:`concurrent.futures.Future` back at once, or a :class:`Completed` when the
cache already had the answer. Lookups that need only the
client IP are started when the connection opens (the checks' ``prefetch`` hook) and
collected at MAIL FROM, where the caller waits at most until the stage deadline.
Why it matters: Debian's libmilter queues sessions on a small worker pool, so one
callback blocked on slow DNS stalls unrelated sessions (see mta-facts.md).

Every answer keeps its status all the way to the verdict and the log:

* ``OK``: records of the type asked for (CNAME chains followed);
* ``NXDOMAIN``: the name does not exist (RFC 1035 §4.1.1 RCODE 3);
* ``NODATA``: the name exists, without records of this type (RFC 2308 §2.2);
* ``SERVFAIL``: the server could not answer (SERVFAIL, REFUSED, malformed reply);
* ``TIMEOUT``: no answer in time (the query's own timeout or the caller's deadline).

The cache (cachetools' :class:`~cachetools.TLRUCache`: every answer has its own time to
live) keeps positive answers for their TTL, capped by ``max_ttl``; negative answers for
the TTL RFC 2308 §5 gives them (the smaller of the SOA record's TTL and its MINIMUM
field, from the authority section), capped by ``negative_ttl``, and not at all without
an SOA; an NXDOMAIN stands for every type of its name (RFC 2308 §5). SERVFAIL and
timeouts are remembered for ``failure_ttl`` seconds (RFC 9520 §3.2) so a dead server is
not asked again by every session. A full cache drops expired answers first, then the
least recently used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import logging
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, Protocol, TypeAlias, TypeVar, cast

import dns.asyncquery
import dns.entropy
import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
from cachetools import TLRUCache

from smtpguard.config import DnsConfig

log = logging.getLogger("smtpguard")

_T = TypeVar("_T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Any cached NXDOMAIN answers every type of its name (RFC 2308 §5).
_ANY = "*"


class Status(Enum):
    OK = "ok"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    SERVFAIL = "servfail"
    TIMEOUT = "timeout"

    @property
    def temporary(self) -> bool:
        """The answer says nothing about the name: ask again later."""
        return self in (Status.SERVFAIL, Status.TIMEOUT)

    @property
    def negative(self) -> bool:
        """An authoritative "there is nothing" (RFC 2308)."""
        return self in (Status.NXDOMAIN, Status.NODATA)


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one lookup.

    ``ttl`` is what DNS allows (record TTL, or the RFC 2308 negative TTL; 0: do not
    cache); the cache applies its caps. ``detail`` explains failures for the log.
    """

    name: str
    rdtype: str
    status: Status
    rdata: tuple[dns.rdata.Rdata, ...] = ()
    ttl: float = 0.0
    detail: str = ""

    @classmethod
    def of(cls, name: str, rdtype: str, *values: str, ttl: float = 300.0) -> Answer:
        """An OK answer from presentation-format values (``"10 mx.example."``)."""
        records = tuple(
            dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), value)
            for value in values
        )
        return cls(name, rdtype, Status.OK if records else Status.NODATA, records, ttl)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def addresses(self) -> tuple[IPAddress, ...]:
        """A/AAAA records as addresses."""
        out: list[IPAddress] = []
        for rd in self.rdata:
            if rd.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                out.append(ipaddress.ip_address(rd.address))  # type: ignore[attr-defined]
        return tuple(out)

    def names(self) -> tuple[str, ...]:
        """PTR (or CNAME/NS) targets, lower-case, without the final dot."""
        out = []
        for rd in self.rdata:
            target = getattr(rd, "target", None)
            if isinstance(target, dns.name.Name):
                out.append(_text(target))
        return tuple(out)

    def mx(self) -> tuple[tuple[int, str], ...]:
        """MX records as (preference, exchange); the root name is ``""`` (RFC 7505)."""
        out = []
        for rd in self.rdata:
            if rd.rdtype == dns.rdatatype.MX:
                exchange: dns.name.Name = rd.exchange  # type: ignore[attr-defined]
                preference: int = rd.preference  # type: ignore[attr-defined]
                out.append((preference, _text(exchange)))
        return tuple(out)

    def strings(self) -> tuple[tuple[bytes, ...], ...]:
        """TXT records as their character-strings (RFC 1035 §3.3.14)."""
        out = []
        for rd in self.rdata:
            if rd.rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
                out.append(tuple(rd.strings))  # type: ignore[attr-defined]
        return tuple(out)

    def texts(self) -> tuple[str, ...]:
        """TXT records, each record's strings joined (RFC 7208 §3.3), as text."""
        return tuple(b"".join(parts).decode("utf-8", "replace") for parts in self.strings())

    def describe(self) -> str:
        """``NXDOMAIN``, ``127.0.0.2``, ``SERVFAIL (why)`` ... for logs."""
        if self.status is Status.OK:
            return ",".join(rd.to_text() for rd in self.rdata)
        text = self.status.name
        return f"{text} ({self.detail})" if self.detail else text


def _text(name: dns.name.Name) -> str:
    """Lower-case, no final dot; the root name (null MX target) is ``""``."""
    return "" if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


class Transport(Protocol):
    """Where uncached questions go: :class:`UdpTransport` in production, fakes in
    tests."""

    async def query(self, name: str, rdtype: str) -> Answer: ...


@dataclass(slots=True)
class _Question:
    """One question as sent, kept to recognise its answer (RFC 5452 §4.1)."""

    qid: int
    qname: dns.name.Name
    qtype: dns.rdatatype.RdataType
    #: The question section on the wire (RFC 1035 §4.1.2).
    wire: bytes
    edns: bool

    @classmethod
    def make(cls, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, edns: bool) -> _Question:
        wire = b"".join(bytes((len(label),)) + label for label in qname.labels)
        return cls(dns.entropy.random_16(), qname, qtype, wire + _QTAIL.pack(qtype, 1), edns)

    def to_wire(self) -> bytes:
        """Header with RD (RFC 1035 §4.1.1), the question, and with EDNS an OPT record
        advertising our UDP payload size (RFC 6891 §6.1.2)."""
        header = _HEADER.pack(self.qid, 0x0100, 1, 0, 0, 1 if self.edns else 0)
        opt = b"\x00" + _RR.pack(dns.rdatatype.OPT, _EDNS_PAYLOAD, 0, 0) if self.edns else b""
        return header + self.wire + opt

    def message(self) -> dns.message.Message:
        """The same question as a dnspython message (for the TCP fallback)."""
        query = dns.message.make_query(
            self.qname, self.qtype, use_edns=0 if self.edns else False, payload=_EDNS_PAYLOAD
        )
        query.id = self.qid
        return query


@dataclass(frozen=True, slots=True)
class _Reply:
    rcode: int
    truncated: bool = False
    #: RFC 2308 negative TTL, for answers read by the fast path.
    negative_ttl: float = 0.0
    #: The parsed response; None for a negative answer read straight from the wire.
    message: dns.message.QueryMessage | None = None


_HEADER = struct.Struct("!6H")
_QTAIL = struct.Struct("!HH")
_RR = struct.Struct("!HHIH")
_EDNS_PAYLOAD = 1232
_QR, _OPCODE, _TC = 0x8000, 0x7800, 0x0200


def read_reply(data: bytes, question: _Question) -> _Reply | None:
    """The answer to ``question`` in ``data``, or None when it is not one (another
    id or question, not a response, malformed): the caller keeps waiting."""
    fast = _read_negative(data, question)
    if fast is not None:
        return fast
    try:
        message = dns.message.from_wire(data)
    except dns.exception.DNSException:
        # A truncated answer may not parse; its header still says "ask over TCP".
        if len(data) >= 12 and data[:2] == question.qid.to_bytes(2, "big"):
            flags = int.from_bytes(data[2:4], "big")
            if flags & _QR and flags & _TC:
                return _Reply(flags & 0xF, truncated=True)
        return None
    if not isinstance(message, dns.message.QueryMessage) or not message.flags & _QR:
        return None
    if message.id != question.qid or message.opcode() != dns.opcode.QUERY:
        return None
    if len(message.question) != 1:
        return None
    asked = message.question[0]
    if (asked.name, asked.rdtype, asked.rdclass) != (
        question.qname,
        question.qtype,
        dns.rdataclass.IN,
    ):
        return None
    return _Reply(message.rcode(), bool(message.flags & _TC), message=message)


def _read_negative(data: bytes, question: _Question) -> _Reply | None:
    """NXDOMAIN or no data, read from the wire without building a message.

    Most answers a milter gets are negative (clients not listed in DNSBLs), and
    parsing them with dnspython costs more CPU than all the rest of a lookup. Only the
    plainest form is read here: our id, QR set, opcode QUERY, not truncated, RCODE
    NOERROR or NXDOMAIN, our question echoed byte for byte, no answer records, and
    well-formed authority and additional sections (the SOA gives the RFC 2308 TTL;
    an OPT record must carry no extended RCODE). Anything else: None, and
    :func:`read_reply` parses the message in full.
    """
    size = len(question.wire)
    if len(data) < 12 + size:
        return None
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qid != question.qid or flags & (_QR | _OPCODE | _TC) != _QR:
        return None
    rcode = flags & 0xF
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) or qdcount != 1 or ancount:
        return None
    if data[12 : 12 + size] != question.wire:
        return None
    offset, ttl = 12 + size, None
    for index in range(nscount + arcount):
        next_offset = _skip_name(data, offset)
        if next_offset is None or next_offset + _RR.size > len(data):
            return None
        rtype, _rclass, rr_ttl, rdlength = _RR.unpack_from(data, next_offset)
        rdata = next_offset + _RR.size
        end = rdata + rdlength
        if end > len(data):
            return None
        if index < nscount and rtype == dns.rdatatype.SOA and ttl is None:
            names_end = _skip_name(data, rdata)
            names_end = _skip_name(data, names_end) if names_end is not None else None
            if names_end is None or names_end + 20 != end:
                return None
            (minimum,) = struct.unpack_from("!I", data, names_end + 16)
            ttl = float(min(rr_ttl, minimum))
        if rtype == dns.rdatatype.OPT and rr_ttl >> 24:
            return None  # an extended RCODE (RFC 6891 §6.1.3): not NOERROR/NXDOMAIN
        offset = end
    if offset != len(data):
        return None
    return _Reply(rcode, negative_ttl=ttl or 0.0)


def _skip_name(data: bytes, offset: int) -> int | None:
    """The offset after the (possibly compressed, RFC 1035 §4.1.4) name at
    ``offset``; None if it runs past the data or uses a reserved label type."""
    while offset < len(data):
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2 if offset + 2 <= len(data) else None
        if length & 0xC0:
            return None
        offset += 1 + length
    return None


class _Socket(asyncio.DatagramProtocol):
    """One UDP socket of the pool and the questions waiting for answers on it."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        #: (query id, server address, port) -> (question, future of its reply)
        self.pending: dict[tuple[int, str, int], tuple[_Question, asyncio.Future[_Reply]]] = {}
        self.used = 0
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
        question, future = waiting
        # The same id from the server asked, and our question (RFC 5452 §4.1).
        reply = read_reply(data, question)
        if reply is None:
            return
        del self.pending[key]
        if not future.done():
            future.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for one of several servers on an unconnected socket: the
        # query concerned times out and the next server is tried.
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        for _question, future in self.pending.values():
            if not future.done():
                future.set_exception(exc or ConnectionError("DNS socket closed"))
        self.pending.clear()

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
    is read straight from the wire (:func:`_read_negative`), and dnspython parses only
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            qname = dns.name.from_text(name)
            qtype = dns.rdatatype.from_text(rdtype)
        except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
            return Answer(name, rdtype, Status.SERVFAIL, detail=f"cannot ask: {exc}")
        errors: list[str] = []
        failed: set[str] = set()
        edns = True
        for attempt in range(self.tries):
            server = self.servers[attempt % len(self.servers)]
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if server in failed:
                continue
            question = _Question.make(qname, qtype, edns)
            per_try = min(remaining, self.timeout / self.tries)
            try:
                reply = await self._exchange(question, server, per_try)
                if reply.truncated:
                    reply = await self._tcp(question, server, deadline - loop.time())
            except TimeoutError:
                errors.append(f"{server}: no answer in {per_try:.2g}s")
                continue
            except (OSError, dns.exception.DNSException) as exc:
                errors.append(f"{server}: {type(exc).__name__}: {exc}")
                failed.add(server)
                continue
            answer = _answer(name, rdtype, reply)
            if answer is not None:
                return answer
            if reply.rcode == dns.rcode.FORMERR and edns:
                # An old server that does not speak EDNS0 (RFC 6891 §7): ask plainly.
                edns = False
                errors.append(f"{server} answered FORMERR to EDNS")
                continue
            errors.append(f"{server} answered {dns.rcode.to_text(dns.rcode.Rcode(reply.rcode))}")
            failed.add(server)
            if len(failed) == len(self.servers):
                return Answer(name, rdtype, Status.SERVFAIL, detail="; ".join(errors))
        if failed and len(failed) == len(self.servers):
            return Answer(name, rdtype, Status.SERVFAIL, detail="; ".join(errors))
        detail = "; ".join(errors) or f"no answer in {self.timeout}s"
        return Answer(name, rdtype, Status.TIMEOUT, detail=detail)

    async def _exchange(self, question: _Question, server: str, timeout: float) -> _Reply:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        sock = await self._socket(family)
        key = (question.qid, server, self.port)
        while key in sock.pending:
            question.qid = dns.entropy.random_16()
            key = (question.qid, server, self.port)
        future: asyncio.Future[_Reply] = loop.create_future()
        sock.pending[key] = (question, future)
        sock.used += 1
        if sock.used >= self.QUERIES_PER_SOCKET:
            # Fresh source ports keep off-path answer guessing hard (RFC 5452 §9.2).
            sock.retired = True
        # call_later, not wait_for: no extra task per question on a busy loop.
        timer = loop.call_later(timeout, _expire, future)
        try:
            assert sock.transport is not None
            sock.transport.sendto(question.to_wire(), (server, self.port))
            return await future
        finally:
            timer.cancel()
            sock.pending.pop(key, None)
            sock.close_if_idle()

    async def _tcp(self, question: _Question, server: str, timeout: float) -> _Reply:
        """RFC 7766 §5: a truncated UDP answer is asked again over TCP."""
        if timeout <= 0:
            raise TimeoutError
        response = await asyncio.wait_for(
            dns.asyncquery.tcp(question.message(), server, port=self.port), timeout
        )
        reply = read_reply(response.to_wire(), question)
        if reply is None:
            raise ConnectionError("TCP answer does not match the question")
        return reply

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
                local = "::" if family == socket.AF_INET6 else "0.0.0.0"  # noqa: S104
                loop = asyncio.get_running_loop()
                _transport, protocol = await loop.create_datagram_endpoint(
                    _Socket, local_addr=(local, 0), family=family
                )
                pool.append(protocol)
                self._open.add(protocol)
                return protocol
        return random.choice(pool)  # noqa: S311


def _expire(future: asyncio.Future[_Reply]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _answer(name: str, rdtype: str, reply: _Reply) -> Answer | None:
    """The answer in a NOERROR or NXDOMAIN reply; None for other RCODEs."""
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
        return Answer(name, rdtype, Status.NODATA, ttl=negative_ttl(response))
    return Answer(name, rdtype, Status.OK, tuple(chain.answer), ttl=float(chain.minimum_ttl))


def negative_ttl(response: dns.message.Message) -> float:
    """RFC 2308 §5: the negative TTL is the smaller of the SOA record's own TTL and
    its MINIMUM field; without an SOA in the authority section, do not cache (§5)."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            soa_minimum: int = next(iter(rrset)).minimum
            return float(min(rrset.ttl, soa_minimum))
    return 0.0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


class Resolver:
    """The service: cache, in-flight sharing, event loop thread, deadlines.

    ``transport`` and ``clock`` are injected: the unit tests pass a fake transport
    and a fake clock instead of patching anything.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        cache_size: int = 10000,
        max_ttl: float = 86400,
        negative_ttl: float = 3600,
        failure_ttl: float = 5,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        max_inflight: int = 512,
    ) -> None:
        self.transport = transport
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.failure_ttl = failure_ttl
        self.timeout = timeout
        self.clock = clock
        self.stats = CacheStats()
        self._cache: TLRUCache[tuple[str, str], Answer] = TLRUCache(
            maxsize=cache_size, ttu=self._expires, timer=clock
        )
        # The cache is read by callback threads (the fast path of submit) and written
        # by the loop thread; cachetools is not thread-safe.
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, str], asyncio.Future[Answer]] = {}
        self._background: set[asyncio.Task[Answer]] = set()
        self._max_inflight = max_inflight
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # Coroutines handed over by callback threads, started by one wake-up of the
        # loop: waking it (a write to its self-pipe) per lookup costs more than the
        # lookup's own bookkeeping when a burst of sessions connects at once.
        self._handover: list[
            tuple[Coroutine[Any, Any, Any] | tuple[str, str], concurrent.futures.Future[Any]]
        ] = []
        self._handover_lock = threading.Lock()

    # --- cache -------------------------------------------------------------------

    def cache_ttl(self, answer: Answer) -> float:
        """How long ``answer`` is kept: its TTL under the cap of its kind."""
        if answer.status is Status.OK:
            return min(answer.ttl, self.max_ttl)
        if answer.status.negative:
            return min(answer.ttl, self.negative_ttl)
        return self.failure_ttl

    def _expires(self, _key: tuple[str, str], answer: Answer, now: float) -> float:
        return now + self.cache_ttl(answer)

    def cached(self, name: str, rdtype: str) -> Answer | None:
        """The cached answer, if any; ValueError if ``name`` cannot be a DNS name."""
        return self._cached(_key(name, rdtype))

    def _cached(self, key: tuple[str, str]) -> Answer | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                nx = self._cache.get((key[0], _ANY))
                if nx is not None:
                    hit = Answer(key[0], key[1], Status.NXDOMAIN, ttl=nx.ttl, detail=nx.detail)
            if hit is not None:
                self.stats.hits += 1
            return hit

    def _store(self, key: tuple[str, str], answer: Answer) -> None:
        with self._lock:
            self.stats.misses += 1
            self.stats.by_status[answer.status.value] = (
                self.stats.by_status.get(answer.status.value, 0) + 1
            )
            # TLRUCache does not keep an entry whose expiry is not in the future (TTL 0).
            self._cache[key] = answer
            if answer.status is Status.NXDOMAIN:
                self._cache[(key[0], _ANY)] = answer

    # --- asynchronous side (runs on the loop thread) -----------------------------

    async def query(self, name: str, rdtype: str) -> Answer:
        """One lookup through the cache; concurrent askers share one query."""
        try:
            key = _key(name, rdtype)
        except ValueError as exc:
            return _invalid(name, rdtype, exc)
        hit = self._cached(key)
        if hit is not None:
            return hit
        # shield: one asker giving up must not cancel the query for the others.
        return await asyncio.shield(self._lookup(key))

    def _lookup(self, key: tuple[str, str]) -> asyncio.Future[Answer]:
        """The query in flight for ``key``, started if there is none (loop thread)."""
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._ask(key))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(key, None))
        return pending

    async def _ask(self, key: tuple[str, str]) -> Answer:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_inflight)
        async with self._slots:
            try:
                answer = await self.transport.query(*key)
            except Exception as exc:
                # Whatever breaks in a transport, the loop and the other lookups live on.
                log.exception("dns: lookup %s/%s failed", *key)
                answer = Answer(*key, Status.SERVFAIL, detail=f"{type(exc).__name__}: {exc}")
        self._store(key, answer)
        return answer

    def warm(self, name: str, rdtype: str) -> None:
        """Start a lookup whose answer is wanted later (loop thread only)."""
        task = asyncio.ensure_future(self.query(name, rdtype))
        # asyncio keeps only weak references to tasks: hold it until it is done.
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- thread side (libmilter callbacks) ---------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name="smtpguard-dns", daemon=True)
                thread.start()
                ready.wait()
                self._thread, self._loop = thread, loop
            return self._loop

    def submit(self, name: str, rdtype: str) -> Pending[Answer]:
        """Start a lookup; returns at once. A cached answer comes back done."""
        try:
            key = _key(name, rdtype)
        except ValueError as exc:
            return Completed(_invalid(name, rdtype, exc))
        hit = self._cached(key)
        if hit is not None:
            return Completed(hit)
        future: concurrent.futures.Future[Answer] = concurrent.futures.Future()
        self._hand_over(key, future)
        return future

    def spawn(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Run a chain of lookups (a coroutine using :meth:`query`) on the loop."""
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._hand_over(coro, future)
        return future

    def _hand_over(
        self,
        work: Coroutine[Any, Any, Any] | tuple[str, str],
        future: concurrent.futures.Future[Any],
    ) -> None:
        loop = self._ensure_loop()
        with self._handover_lock:
            self._handover.append((work, future))
            wake = len(self._handover) == 1
        if wake:
            loop.call_soon_threadsafe(self._start_handed_over)

    def _start_handed_over(self) -> None:
        with self._handover_lock:
            batch, self._handover = self._handover, []
        for work, future in batch:
            if not future.set_running_or_notify_cancel():
                if not isinstance(work, tuple):
                    work.close()
                continue
            # A bare lookup joins the query in flight without a coroutine of its own.
            task = self._lookup(work) if isinstance(work, tuple) else asyncio.ensure_future(work)
            task.add_done_callback(functools.partial(_settle, future))

    def wait(self, future: Pending[_T], deadline: float | None) -> _T | None:
        """The future's result, or None when the deadline (monotonic) passes first."""
        remaining = self.remaining(deadline)
        try:
            return future.result(timeout=remaining)
        except concurrent.futures.TimeoutError:
            return None

    def remaining(self, deadline: float | None) -> float:
        if deadline is None:
            return self.timeout
        return max(0.0, deadline - time.monotonic())

    def lookup(self, name: str, rdtype: str, deadline: float | None = None) -> Answer:
        """Blocking lookup for code that cannot be asynchronous (the SPF library)."""
        answer = self.wait(self.submit(name, rdtype), deadline)
        if answer is None:
            return Answer(name, rdtype, Status.TIMEOUT, detail="stage deadline reached")
        return answer

    def close(self) -> None:
        """Stop the loop thread (tests, reload): pending lookups are cancelled."""
        loop, self._loop = self._loop, None
        if loop is None:
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            close: Callable[[], None] | None = getattr(self.transport, "close", None)
            if close is not None:
                close()
                await asyncio.sleep(0)  # let the transports finish closing
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                loop.close()


def _settle(future: concurrent.futures.Future[Any], task: asyncio.Future[Any]) -> None:
    """Hand a finished task's outcome to the callback thread's future."""
    if task.cancelled():
        future.set_exception(concurrent.futures.CancelledError())
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())


def _key(name: str, rdtype: str) -> tuple[str, str]:
    return normalize(name), rdtype.upper()


def _invalid(name: str, rdtype: str, exc: ValueError) -> Answer:
    # Not encodable as a DNS name (empty or over-long label): it cannot exist.
    return Answer(name, rdtype, Status.NXDOMAIN, detail=f"invalid name: {exc}")


#: Names that need neither IDNA nor escapes: checked here, not parsed by dnspython.
_PLAIN_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}\.?")


def normalize(name: str) -> str:
    """Lower-case ASCII (A-label) form without the final dot; ValueError if ``name``
    cannot be a DNS name (RFC 1035 §2.3.4 limits, IDNA errors)."""
    lowered = name.lower()
    if len(lowered) <= 253 and lowered.isascii() and _PLAIN_NAME.fullmatch(lowered):
        return lowered.removesuffix(".")
    try:
        return dns.name.from_text(name).to_text(omit_final_dot=True).lower()
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise ValueError(str(exc)) from None


def client_address(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 client (``::ffff:192.0.2.1``) is the IPv4 client."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def reverse_name(ip: IPAddress) -> str:
    """The PTR owner name: ``d.c.b.a.in-addr.arpa`` / nibbles + ``ip6.arpa``
    (RFC 1035 §3.5, RFC 3596 §2.5); the same text as dnspython's reversename, built
    directly: that one costs ~40 us per call and this runs for every session. Like
    dnspython, an IPv4-mapped IPv6 address is looked up under in-addr.arpa."""
    ip = client_address(ip)
    return dnsbl_name(ip, "in-addr.arpa" if ip.version == 4 else "ip6.arpa")


def dnsbl_name(ip: IPAddress, zone: str) -> str:
    """RFC 5782 §2.1 (IPv4: octets reversed) and §2.4 (IPv6: 32 nibbles reversed)."""
    if isinstance(ip, ipaddress.IPv4Address):
        labels = reversed(str(ip).split("."))
    else:
        labels = reversed(ip.exploded.replace(":", ""))
    return ".".join(labels) + "." + zone


def system_nameservers() -> list[str]:
    """The nameservers of /etc/resolv.conf (``nameservers = ["system"]``)."""
    return [str(ns) for ns in dns.resolver.Resolver(configure=True).nameservers]


class Completed(Generic[_T]):
    """A lookup answered on the calling thread (from the cache), with no trip through
    the event loop thread: what the callers use of a future, without the condition
    variable a :class:`concurrent.futures.Future` builds and notifies (~3.5 us each,
    several per session)."""

    __slots__ = ("_value",)

    def __init__(self, value: _T) -> None:
        self._value = value

    def result(self, timeout: float | None = None) -> _T:
        return self._value

    def done(self) -> bool:
        return True


#: A lookup's outcome: still running on the loop thread, or already known.
Pending: TypeAlias = concurrent.futures.Future[_T] | Completed[_T]


def make_resolver(config: DnsConfig) -> Resolver:
    servers = list(config.nameservers)
    if servers == ["system"]:
        servers = system_nameservers()
    transport = UdpTransport(servers, config.port, config.timeout)
    return Resolver(
        transport,
        cache_size=config.cache_size,
        max_ttl=config.max_ttl,
        negative_ttl=config.negative_ttl,
        failure_ttl=config.failure_ttl,
        timeout=config.timeout,
    )
