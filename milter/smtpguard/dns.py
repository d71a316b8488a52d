"""The DNS service shared by every DNS check.

One asyncio event loop runs in a daemon thread and sends every query
(:class:`~smtpguard.dnswire.UdpTransport`, a stub resolver client on top of dnspython). A libmilter
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
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeAlias, TypeVar, cast

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

from smtpguard.address import IPAddress, canonical_domain, unmapped
from smtpguard.config import DnsConfig
from smtpguard.memo import peek
from smtpguard.metrics import Metrics, NullMetrics

if TYPE_CHECKING:
    from smtpguard.session import Connection

log = logging.getLogger("smtpguard")

_T = TypeVar("_T")

#: Any cached NXDOMAIN answers every type of its name (RFC 2308 §5).
_ANY = "*"

#: One client network holds this share of a pool's slots at most (a quarter: an eighth
#: deferred a busy ESP /24 whose senders' domains answer slowly, review rev63 N2).
NETWORK_SHARE = 4
#: Seconds left at submit() from which a lookup the loop never started is this host's
#: fault (less is too little for any server to answer: the time went before it).
LOOP_GRACE = 0.05
#: Seconds collect() waits past the deadline for an answer already on its way through
#: the loop's callbacks (review rev63 N3: a listing answered 1 ms before the deadline
#: read as a timeout).
LATE_GRACE = 0.005
#: The share of ``timeout`` that a wait for a slot may reach before a later timeout
#: is this host's, and that a caller gives back past its deadline to a lookup that
#: waited (Resolver.busy_wait).
BUSY_SHARE = 0.25
#: Waits this close count as the same (they are read from the same clock twice).
_SAME = 0.001


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
    #: Octets of the answer on the wire, and the labels of its names (pointers
    #: followed), when read from it: the cache weighs by them; no part of what the
    #: answer says.
    size: int = field(default=0, compare=False)
    labels: int = field(default=0, compare=False)
    #: A timeout of a lookup that waited for one of the resolver's own slots before it
    #: was sent: this host was too busy to ask, and nothing is known of the name or
    #: its servers (see :meth:`Resolver.missed`).
    busy: bool = field(default=False, compare=False)
    #: Seconds the lookup waited for one of the resolver's slots before it was sent
    #: (0: none, or a cached answer). A chain of lookups (SPF's includes) adds them up:
    #: waits each too short to be ``busy`` can still use up the caller's time (rev61).
    waited: float = field(default=0.0, compare=False)
    #: A SERVFAIL of ours: an answer too large to read (``dnswire.MAX_RECORDS``,
    #: ``MAX_LABELS``). Asking again gets the same answer; SPF takes it as the domain's
    #: permanent error (review rev183 F3: a record naming 201 addresses deferred mail
    #: for ever).
    oversized: bool = field(default=False, compare=False)
    #: When the resolver's cache lets the answer go (its clock; infinity for one no
    #: cache holds): a verdict drawn from it may be remembered no longer
    #: (:meth:`Resolver.left`; review rev199: verdict memos outlived the TTLs).
    expires: float = field(default=math.inf, compare=False)

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
                out.append(ipaddress.ip_address(rd.address))  # type: ignore[attr-defined]  # dnspython types rdata generically
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
                exchange: dns.name.Name = rd.exchange  # type: ignore[attr-defined]  # dnspython types rdata generically
                preference: int = rd.preference  # type: ignore[attr-defined]  # dnspython types rdata generically
                out.append((preference, _text(exchange)))
        return tuple(out)

    def strings(self) -> tuple[tuple[bytes, ...], ...]:
        """TXT records as their character-strings (RFC 1035 §3.3.14)."""
        out = []
        for rd in self.rdata:
            if rd.rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
                out.append(tuple(rd.strings))  # type: ignore[attr-defined]  # dnspython types rdata generically
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
    """Where uncached questions go: :class:`~smtpguard.dnswire.UdpTransport` in
    production, fakes in tests."""

    async def query(self, name: str, rdtype: str) -> Answer: ...


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


#: Lookups in a row, under this many distinct domains at least (a name's last two
#: labels), that all failed (SERVFAIL or a timeout of the servers, not of this host)
#: before the DNS servers are said to be down: one dead zone (a DNSBL at low traffic,
#: with nothing else asked meanwhile) fails its own names only (review rev100 F2).
DOWN_AFTER = 8
DOWN_NAMES = 3


class ServerHealth:
    """Whether the DNS servers answer at all, judged from the lookups sent (loop thread
    only). A resolver that stopped, answers SERVFAIL to everything or went silent makes
    every DNS check fail temporarily (and pass, by their default on_temp_error) without
    any other line saying so: its start is a WARNING and its end an INFO, once each, as
    the other backends' outages are (review rev99 F2)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failed = 0
        self._names: set[str] = set()
        self._first: float | None = None
        self._down_since: float | None = None
        self._failed_meanwhile = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def answered(self, answer: Answer) -> None:
        if answer.busy:
            return  # this host's own queue, not the servers
        if not answer.status.temporary:
            if self._down_since is not None:
                log.info(
                    "dns: the DNS servers answer again after %.1f s; %d lookups failed meanwhile",
                    self.clock() - self._down_since,
                    self._failed_meanwhile,
                )
            self._failed = 0
            self._names.clear()
            self._first = self._down_since = None
            self._failed_meanwhile = 0
            return
        if self._down_since is not None:
            self._failed_meanwhile += 1
            return
        if self._first is None:
            self._first = self.clock()
        self._failed += 1
        if len(self._names) < DOWN_NAMES:
            self._names.add(".".join(answer.name.rstrip(".").rsplit(".", 2)[-2:]))
        if self._failed >= DOWN_AFTER and len(self._names) >= DOWN_NAMES:
            self._down_since = self._first
            self._failed_meanwhile = self._failed
            log.warning(
                "dns: the DNS servers do not answer: the last %d lookups all failed (%s);"
                " the DNS checks fail meanwhile, and each one's on_temp_error decides"
                " (rbl, spf, sender_domain, smtpport, helo_dns and openrelay pass by"
                " default)",
                self._failed,
                answer.describe(),
            )


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
        metrics: Metrics | None = None,
    ) -> None:
        self.transport = transport
        self.metrics: Metrics = metrics if metrics is not None else NullMetrics()
        self.health = ServerHealth(clock)
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.failure_ttl = failure_ttl
        self.timeout = timeout
        self.clock = clock
        self.stats = CacheStats()
        self._cache: TLRUCache[tuple[str, str], Answer] = TLRUCache(
            maxsize=cache_size, ttu=self._expires, timer=clock, getsizeof=cache_weight
        )
        # The cache is read by callback threads (the fast path of submit) and written
        # by the loop thread; cachetools is not thread-safe.
        self._lock = threading.Lock()
        #: Sessions running with this resolver, and whether a reload retired it.
        self._holds_lock = threading.Lock()
        self._holds = 0
        self._retired = False
        self._inflight: dict[tuple[str, str], asyncio.Future[Answer]] = {}
        #: Who waits for each lookup in flight (loop thread only): coroutines in
        #: query(), and submit()s without a deadline, which never leave...
        self._askers: dict[asyncio.Future[Answer], int] = {}
        #: ...and the latest deadline of the submit()s with one. A lookup still waiting
        #: for a slot when none of them waits any more is dropped, not sent.
        self._until: dict[asyncio.Future[Answer], float] = {}
        #: Lookups waiting for a slot now (read by callback threads: missed()).
        #: The value: the client network whose share it waits for, or "" (the pool's).
        self._queued: dict[asyncio.Future[Answer], str] = {}
        #: Seconds a lookup in flight waited for its slot, and when it was sent (read
        #: by callback threads: missed(); kept until the lookup is forgotten, after its
        #: askers' futures have its answer).
        self._slot_waits: dict[asyncio.Future[Answer], float] = {}
        self._sent: dict[asyncio.Future[Answer], float] = {}
        #: Whom each lookup in flight was asked for: the client pool?, and the network
        #: (None: no share).
        self._owners: dict[asyncio.Future[Answer], tuple[bool, str | None]] = {}
        #: A wait for a slot this long makes a later timeout the host's (busy); a
        #: caller waits past its deadline this long at most (_give_back).
        self.busy_wait = timeout * BUSY_SHARE
        self._background: set[asyncio.Task[Answer]] = set()
        self._max_inflight = max_inflight
        #: Lookups in flight at most, per pool (see _pool()): the shared pool, the
        #: client's names (query(client=True)), and names under the reserved zones.
        self._slots: tuple[asyncio.Semaphore, asyncio.Semaphore, asyncio.Semaphore] | None = None
        #: The slots of the shared or the client pool one client network may hold
        #: (see _share()), and how many of its lookups use or wait for them (the
        #: entry goes at zero); keyed by (client pool?, network).
        self._shares: dict[tuple[bool, str], tuple[asyncio.Semaphore, int]] = {}
        # Three at least: one session's MX, A and AAAA (sender_domain) go at once.
        self._network_slots = max(3, max_inflight // NETWORK_SHARE)
        self._reserved: tuple[str, ...] = ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        # Coroutines handed over by callback threads, started by one wake-up of the
        # loop: waking it (a write to its self-pipe) per lookup costs more than the
        # lookup's own bookkeeping when a burst of sessions connects at once.
        self._handover: list[
            tuple[
                Coroutine[Any, Any, Any] | tuple[str, str, bool, float | None, str | None],
                concurrent.futures.Future[Any],
            ]
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

    def left(self, *answers: Answer, expires: float = math.inf) -> float:
        """Seconds until the first of ``answers`` leaves the cache, or ``expires``
        comes if sooner (infinity for neither): how long a verdict drawn from them may
        be remembered, TTL 0 not at all."""
        first = min((answer.expires for answer in answers), default=expires)
        return min(first, expires) - self.clock()

    def cached(self, name: str, rdtype: str) -> Answer | None:
        """The cached answer, if any; ValueError if ``name`` cannot be a DNS name."""
        return self._cached(_key(name, rdtype))

    def cached_or_none(self, name: str, rdtype: str) -> Answer | None:
        """The cached answer, if any, and None for a name that cannot be a DNS name."""
        try:
            return self._cached(_key(name, rdtype))
        except ValueError:
            return None

    def _cached(self, key: tuple[str, str]) -> Answer | None:
        with self._lock:
            hit = peek(self._cache, key, None)
            if hit is None:
                nx = peek(self._cache, (key[0], _ANY), None)
                if nx is not None:
                    hit = Answer(
                        key[0],
                        key[1],
                        Status.NXDOMAIN,
                        ttl=nx.ttl,
                        detail=nx.detail,
                        expires=nx.expires,
                    )
            if hit is not None:
                self.stats.hits += 1
        if hit is not None:
            self.metrics.dns_cache(True)
        return hit

    def _store(self, key: tuple[str, str], answer: Answer) -> None:
        with self._lock:
            self.stats.misses += 1
            self.stats.by_status[answer.status.value] = (
                self.stats.by_status.get(answer.status.value, 0) + 1
            )
            # TLRUCache does not keep an entry whose expiry is not in the future (TTL 0).
            with contextlib.suppress(ValueError):  # heavier than the whole cache: not kept
                self._cache[key] = answer
            if answer.status is Status.NXDOMAIN:
                self._cache[(key[0], _ANY)] = answer
        self.metrics.dns_cache(False)
        self.metrics.dns_lookup(answer.status.value)

    # --- asynchronous side (runs on the loop thread) -----------------------------

    async def query(
        self, name: str, rdtype: str, *, client: bool = False, network: str | None = None
    ) -> Answer:
        """One lookup through the cache; concurrent askers share one query.

        ``client``: the name is one the connecting client chooses (its reverse zone,
        the names in it, its HELO name), and waits for a slot of the client pool:
        a flood of connections whose zones never answer then holds those slots alone,
        and other sessions' SPF and MX lookups are not queued behind it (review rev52).
        A lookup still waiting for a slot when its last asker is cancelled (the
        session that wanted it closed) is dropped. ``network``: the asking client's
        network (:func:`client_network`), which may hold a share of the shared pool's
        slots only (see :meth:`_share`)."""
        try:
            key = _key(name, rdtype)
        except ValueError as exc:
            return _invalid(name, rdtype, exc)
        hit = self._cached(key)
        if hit is not None:
            return hit
        task = self._lookup(key, client, network=network)
        self._askers[task] = self._askers.get(task, 0) + 1
        try:
            # shield: one asker giving up must not cancel the query for the others.
            return await asyncio.shield(task)
        finally:
            left = self._askers.get(task)
            if left is not None:  # None: done, and forgotten
                self._askers[task] = left - 1
                if task in self._queued and not task.done() and not self._wanted(task):
                    # Forgotten at once: an asker coming meanwhile starts another
                    # lookup, not this cancelled one (review rev57: it got
                    # CancelledError, and its session internal_error).
                    self._forget(key, task)
                    task.cancel()

    def _wanted(self, task: asyncio.Future[Answer]) -> bool:
        """Whether anyone still waits for ``task``'s answer."""
        return self._askers.get(task, 0) > 0 or self._until.get(task, 0.0) > time.monotonic()

    def _lookup(
        self,
        key: tuple[str, str],
        client: bool = False,
        until: float | None = None,
        network: str | None = None,
    ) -> asyncio.Future[Answer]:
        """The query in flight for ``key``, started if there is none (loop thread).
        ``until``: the deadline of a submit() asker (None: a query() or a submit()
        without one, counted by the caller). A query in flight is joined, unless it is
        not sent yet and was asked for another network than the asker's: it may wait
        for that network's share, and a flood from one network that asked a domain
        first would then hold every other network's mail from that domain behind it
        (review rev62 F3). The asker's lookup is then one of its own (answered from the
        cache if the other one was sent first, see _ask)."""
        pending = self._inflight.get(key)
        if pending is None or pending.done() or self._held_by_share(pending, client, network):
            pending = asyncio.ensure_future(self._ask(key, client, network))
            self._inflight[key] = pending
            self._owners[pending] = (client, network)
            # Forgotten once the askers' futures have the answer (their done callbacks
            # are called first): missed() still sees how it waited until then.
            pending.add_done_callback(functools.partial(self._forget_soon, key))
        if until is not None and until > self._until.get(pending, 0.0):
            self._until[pending] = until
        return pending

    def _held_by_share(
        self, pending: asyncio.Future[Answer], client: bool, network: str | None
    ) -> bool:
        """Whether ``pending``, not sent yet, waits (or is about to wait) for the share
        of another network than ``network``. Only then is it not joined: waiting for a
        full pool it is joined, or a flood of askers from many networks would each
        queue a query of the same name (review rev63 N4)."""
        if pending in self._sent or pending not in self._owners:
            return False
        owner_client, owner = self._owners[pending]
        if owner_client != client:
            # Waiting for another pool (a HELO name asked as a sender's domain): a
            # flood of the client pool must not hold the shared pool's askers (rev64).
            return True
        if owner is None or owner == network:
            return False
        if pending in self._queued:
            return self._queued[pending] == owner
        share = self._shares.get((owner_client, owner))
        return share is not None and share[0].locked()

    def _forget_soon(self, key: tuple[str, str], task: asyncio.Future[Answer]) -> None:
        task.get_loop().call_soon(self._forget, key, task)

    def _forget(self, key: tuple[str, str], task: asyncio.Future[Answer]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        self._askers.pop(task, None)
        self._until.pop(task, None)
        if task.done():
            self._slot_waits.pop(task, None)
            self._sent.pop(task, None)
            self._owners.pop(task, None)

    def reserve(self, zones: Iterable[str]) -> None:
        """Give lookups under ``zones`` (the DNSBL zones) ``max_inflight`` slots of
        their own. The other lookups' names come from clients (a PTR zone, its
        names, a sender's domain), and a flood of connections whose zones never answer
        could hold every slot: a DNSBL lookup then waited for one until the stage
        deadline, and the listed client passed as after a DNS timeout (review rev48).
        Called again on reload (the zones may change while ``[dns]`` does not)."""
        self._reserved = tuple(f".{normalize(zone)}" for zone in zones)

    def _pool(self, key: tuple[str, str], client: bool) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = (
                asyncio.Semaphore(self._max_inflight),
                asyncio.Semaphore(self._max_inflight),
                asyncio.Semaphore(self._max_inflight),
            )
        shared, clients, reserved = self._slots
        if self._reserved and f".{key[0]}".endswith(self._reserved):
            return reserved
        return clients if client else shared

    def _share(self, key: tuple[bool, str]) -> asyncio.Semaphore:
        """The slots of a pool (the client pool or the shared one: ``key`` is
        (client, network)) one network's lookups may hold: a quarter of them
        (``NETWORK_SHARE``). Both pools' names are chosen by clients (the sender's
        domain, the reverse zone, the HELO name): a MAIL FROM flood of dead domains
        from one network held every slot of the shared pool, and every other sender
        waited for one and was deferred as long as it lasted (review rev59 F4). Now
        such a flood waits for its own share, and its own sessions are the ones
        deferred (busy). A flood spread over many networks still fills a pool: the
        safe side, as before. The DNSBL zones' pool has no shares: those names are
        the operator's."""
        share, users = self._shares.get(key, (None, 0))
        if share is None:
            share = asyncio.Semaphore(self._network_slots)
        self._shares[key] = (share, users + 1)
        return share

    def _unshare(self, key: tuple[bool, str]) -> None:
        share, users = self._shares[key]
        if users > 1:
            self._shares[key] = (share, users - 1)
        else:
            del self._shares[key]

    async def _ask(self, key: tuple[str, str], client: bool, network: str | None) -> Answer:
        slots = self._pool(key, client)
        share = None
        if network is not None and slots is not self._reserved_slots():
            share = self._share((client, network))
        task = cast("asyncio.Future[Answer]", asyncio.current_task())
        # The network whose share is full (missed() names it), if it is.
        over_share = network if share is not None and share.locked() else None
        waited = 0.0
        try:
            if slots.locked() or over_share:
                queued = time.monotonic()
                self._queued[task] = over_share or ""
                try:
                    await self._acquire(slots, share)
                finally:
                    self._queued.pop(task, None)
                waited = self._slot_waits[task] = time.monotonic() - queued
                hit = self._cached(key)
                if hit is not None or not self._wanted(task):
                    self._release(slots, share)
                    if hit is not None:  # another network's lookup of it was sent first
                        return dataclasses.replace(hit, waited=waited)
                    # Every asker's deadline passed while it queued (review rev57: a
                    # flood of MAIL FROMs with dead domains kept the slots full of
                    # lookups nobody read, for 20 s after it stopped). Busy: an asker
                    # that reads it just after its deadline must not take it for the
                    # name's own timeout (review rev62 F2).
                    detail = f"not sent: no one waits for it after {waited:.1f} s in the queue"
                    return Answer(*key, Status.TIMEOUT, detail=detail, busy=True, waited=waited)
            else:
                await self._acquire(slots, share)
            self._sent[task] = time.monotonic()
            try:
                answer = await self.transport.query(*key)
            except Exception as exc:
                # Whatever breaks in a transport, the loop and the other lookups live on.
                log.exception("dns: lookup %s/%s failed", *key)
                answer = Answer(*key, Status.SERVFAIL, detail=f"{type(exc).__name__}: {exc}")
            finally:
                self._release(slots, share)
            self.health.answered(answer)
        finally:
            if network is not None and share is not None:
                self._unshare((client, network))
        answer = dataclasses.replace(answer, expires=self.clock() + self.cache_ttl(answer))
        self._store(key, answer)
        # The cache keeps the answer as the name's servers gave it; its askers learn
        # how long it queued.
        return dataclasses.replace(answer, waited=waited) if waited else answer

    def _reserved_slots(self) -> asyncio.Semaphore | None:
        return self._slots[2] if self._slots is not None else None

    @staticmethod
    async def _acquire(slots: asyncio.Semaphore, share: asyncio.Semaphore | None) -> None:
        # The network's share first: a network over it waits without holding a slot
        # of the pool that the other networks need.
        if share is not None:
            await share.acquire()
        try:
            await slots.acquire()
        except BaseException:
            if share is not None:
                share.release()
            raise

    @staticmethod
    def _release(slots: asyncio.Semaphore, share: asyncio.Semaphore | None) -> None:
        slots.release()
        if share is not None:
            share.release()

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

    def submit(
        self,
        name: str,
        rdtype: str,
        *,
        client: bool = False,
        deadline: float | None = None,
        network: str | None = None,
    ) -> Pending[Answer]:
        """Start a lookup; returns at once. A cached answer comes back done.
        ``client`` and ``network`` as for :meth:`query`; ``deadline`` (monotonic):
        when the caller stops waiting, after which the lookup, if it still waits for a
        slot and no one else wants it, is not sent (None: it is sent whenever its turn
        comes)."""
        try:
            key = _key(name, rdtype)
        except ValueError as exc:
            return Completed(_invalid(name, rdtype, exc))
        hit = self._cached(key)
        if hit is not None:
            return Completed(hit)
        if self._closed:
            detail = "not sent: the resolver was closed (reloaded) (this host is busy)"
            return Completed(Answer(*key, Status.TIMEOUT, detail=detail, busy=True))
        future = Submitted()
        self._hand_over((*key, client, deadline, network), future)
        return future

    def spawn(self, coro: Coroutine[Any, Any, _T]) -> Spawned[_T]:
        """Run a chain of lookups (a coroutine using :meth:`query`) on the loop.
        Cancelling the future cancels the coroutine (see :class:`Spawned`)."""
        future: Spawned[_T] = Spawned()
        if self._closed:
            # A session that outlived its runtime's reload: nothing is started again
            # (review rev64 F6: a new loop thread leaked, and the old loop's semaphores
            # raised); the caller reads a cancelled lookup as this host's failure.
            coro.close()
            future.cancel()
            return future
        self._hand_over(coro, future)
        return future

    def _hand_over(
        self,
        work: Coroutine[Any, Any, Any] | tuple[str, str, bool, float | None, str | None],
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
            if isinstance(work, tuple):
                # A bare lookup joins the query in flight without a coroutine of its
                # own; its asker is the callback thread, which never cancels: it
                # waits until its deadline, or for good without one.
                name, rdtype, client, until, network = work
                lookup = self._lookup((name, rdtype), client, until, network)
                if until is None:
                    self._askers[lookup] = self._askers.get(lookup, 0) + 1
                if isinstance(future, Submitted):
                    future.lookup = lookup
                task: asyncio.Future[Any] = lookup
            else:
                task = asyncio.ensure_future(work)
                if isinstance(future, Spawned):
                    future.started(task)
            task.add_done_callback(functools.partial(_settle, future))

    def missed(
        self,
        name: str,
        rdtype: str,
        *,
        lookup: asyncio.Future[Answer] | None = None,
        waited_before: float = 0.0,
        given: float = math.inf,
        started: bool = True,
        asked: float | None = None,
        given_back: float = 0.0,
    ) -> Answer:
        """The answer of a lookup whose caller's deadline passed first: a TIMEOUT,
        ``busy`` when this host, not the name's servers, made it miss:

        * the lookup was never sent: it still waits for one of our slots, or the
          resolver's loop had not even run it (``started``: whether the loop had
          taken it at all), though the caller gave it time (``given`` seconds,
          ``LOOP_GRACE`` at least, or it came after lookups that waited);
        * it waited for a slot a quarter of ``timeout`` or more before it was sent;
        * or it, or the caller's lookups before it (``waited_before`` seconds: an SPF
          evaluation's includes), waited for slots longer than the caller waited past
          its deadline for it (``given_back``, see :meth:`collect`), and it was sent
          less than ``timeout`` before the deadline: the servers did not get their
          time because we queued (review rev61 F2, rev62 F1). Waits given back in full
          leave the servers the time they would have had without them, so a miss is
          then theirs (review rev64 F7: slow domains from a busy network deferred
          after a few milliseconds of waiting).

        Such a timeout says nothing of the name's servers, only that this host was too
        busy to ask them: the checks that look up names the client does not control
        (SPF, the sender's domain, the DNSBL zones) defer it whatever their
        ``on_temp_error`` says, since a flood that fills the slots would otherwise
        pass a forged sender (review rev52 N3). A short wait before a server that had
        its whole timeout is the server's timeout (review rev57). ``lookup``: the
        caller's own lookup (``Submitted.lookup``), else the one in flight for the
        name."""
        try:
            key = _key(name, rdtype)
        except ValueError as exc:
            return _invalid(name, rdtype, exc)
        fair = waited_before > 0 or given >= LOOP_GRACE
        task = lookup if lookup is not None else self._inflight.get(key)
        # Not forgotten yet (a lookup is forgotten once its askers' futures are set).
        known = task is not None and task in self._owners
        waited = self._host_wait(task, asked)
        sent = self._sent.get(task) if task is not None else None
        detail = "stage deadline reached"
        if given_back:
            detail += f" ({given_back:.2f} s past it, the time it waited for resolver slots)"
        plain = Answer(name, rdtype, Status.TIMEOUT, detail=detail)
        if (task is not None and task.cancelled()) or not started or (known and sent is None):
            unsent = self._unsent(task, started, fair)
            if unsent is None:
                return plain
            why, reason = unsent
        elif not known:
            return plain
        elif waited >= self.busy_wait:
            why, reason = f"after {waited:.1f} s waiting for a resolver slot", "slots"
        elif (
            waited + waited_before > given_back + _SAME
            and sent is not None
            and time.monotonic() - sent < self.timeout
        ):
            why = (
                f"{time.monotonic() - sent:.2f} s after it was sent, after"
                f" {waited + waited_before:.2f} s waiting for resolver slots"
            )
            reason = "slots"
        else:
            return dataclasses.replace(plain, waited=waited)
        self.metrics.dns_busy(reason)
        detail = f"stage deadline reached {why} (this host is busy)"
        return Answer(name, rdtype, Status.TIMEOUT, detail=detail, busy=True, waited=waited)

    def _unsent(
        self, task: asyncio.Future[Answer] | None, started: bool, fair: bool
    ) -> tuple[str, str] | None:
        """Why a lookup never sent by its caller's deadline is this host's fault, and
        the metric's reason; None when nothing says so (the caller gave it no time).
        Never sent: the loop had not taken or run it yet, it still waits for a slot, or
        it was dropped or cancelled while it waited (reviews rev63, rev64)."""
        if task is not None and task.cancelled():
            return "before it was sent (cancelled while it waited for a resolver slot)", "slots"
        if task is not None and task in self._queued:
            network = self._queued.get(task)
            if network:
                return f"waiting for a resolver slot ({network} holds its share of them)", (
                    "network_share"
                )
            return "waiting for a resolver slot", "slots"
        if not fair:
            return None
        if not started or task is None or not task.done():
            return "before the resolver's loop took it", "loop"
        return "before it was sent (dropped while it waited for a resolver slot)", "slots"

    def collect(
        self,
        future: Pending[Answer],
        deadline: float | None,
        name: str,
        rdtype: str,
        waited_before: float = 0.0,
    ) -> Answer:
        """The answer of a :meth:`submit` (or a spawned single lookup) by ``deadline``,
        or what :meth:`missed` says of it. An answer that came by the deadline but is
        still on its way through the loop's callbacks (the lookup forgotten, the
        future not yet set) is taken as it is: the cache has it, or it comes within
        ``LATE_GRACE`` (review rev63 N3: a listing answered 1 ms before the deadline
        read as a timeout)."""
        given = self.remaining(deadline)
        answer = self.wait(future, deadline)
        if answer is not None:
            return answer
        given_back = 0.0
        if deadline is not None and not future.done():
            given_back, answer = self._give_back(future, deadline, name, rdtype, waited_before)
            if answer is not None:
                return answer
        lookup = self._lookup_of(future, name, rdtype)
        started = not _not_started(future) and (
            lookup is not None or not isinstance(future, Spawned) or future.done()
        )
        cached = self.cached_or_none(name, rdtype)
        if cached is not None:
            # Someone else's lookup of the name answered: real data. If ours was never
            # sent, all of the caller's time went waiting for this host, and an SPF
            # evaluation that goes on must know it (review rev64 F1).
            if not started or (lookup is not None and lookup not in self._sent):
                queued = given
            elif lookup is not None:
                queued = self._slot_waits.get(lookup, 0.0)
            else:
                queued = 0.0
            return dataclasses.replace(cached, waited=queued) if queued else cached
        if future.done():
            settled = self.wait(future, None)
            if settled is not None:
                return settled
            # Cancelled: it waited for a slot until no session wanted it any more (the
            # one that asked first closed after our deadline: reviews rev63, rev64), or
            # the resolver was closed. Never sent: this host's failure.
            self.metrics.dns_busy("slots")
            detail = "stage deadline reached before it was sent (this host is busy)"
            return Answer(name, rdtype, Status.TIMEOUT, detail=detail, busy=True)
        answer = self.missed(
            name,
            rdtype,
            lookup=lookup,
            waited_before=waited_before,
            given=given,
            started=started,
            asked=_asked(future),
            given_back=given_back,
        )
        if answer.busy:
            return answer
        late = self.wait(future, time.monotonic() + LATE_GRACE)
        return late if late is not None else answer

    def _give_back(
        self,
        future: Pending[Answer],
        deadline: float,
        name: str,
        rdtype: str,
        waited_before: float,
    ) -> tuple[float, Answer | None]:
        """Wait past ``deadline`` as long as this host's queue kept the lookup, and the
        caller's lookups before it (``waited_before``), from being sent: the name's
        servers get the time they would have had on an idle host, so a timeout after
        it is theirs, and a flood that delays lookups gains nothing (review rev64 F7:
        a slow domain's SPF from a busy network was deferred as this host's fault
        after a few milliseconds of waiting). At most a quarter of ``timeout``
        (``busy_wait``: a longer wait makes a miss this host's anyway), and never past
        the lookup's own timeout. Returns the seconds given and the answer if it came.
        The lookup's own wait is known once it is sent, so it is read again after
        each wait."""
        back = 0.0
        while True:
            lookup = self._lookup_of(future, name, rdtype)
            more = min(waited_before + self._host_wait(lookup, _asked(future)), self.busy_wait)
            sent = self._sent.get(lookup) if lookup is not None else None
            if sent is not None:
                more = min(more, sent + self.timeout - deadline)
            if more <= back + _SAME:
                return back, None
            back = more
            answer = self.wait(future, deadline + back)
            if answer is not None or future.done():
                return back, answer

    def _lookup_of(
        self, future: Pending[Answer], name: str, rdtype: str
    ) -> asyncio.Future[Answer] | None:
        """The lookup ``future`` waits for, if the loop has started it."""
        lookup = future.lookup if isinstance(future, Submitted) else None
        if lookup is None and isinstance(future, Spawned) and not future.done():
            # A spawned single lookup: its query, if the coroutine has asked it yet.
            with contextlib.suppress(ValueError):
                lookup = self._inflight.get(_key(name, rdtype))
        return lookup

    def _host_wait(self, task: asyncio.Future[Answer] | None, asked: float | None) -> float:
        """Seconds ``task`` waited for this host before it was sent: for a slot, or,
        sent long after it was asked, for a loop thread kept busy (review rev64 F4)."""
        if task is None:
            return 0.0
        waited = self._slot_waits.get(task, 0.0)
        sent = self._sent.get(task)
        if sent is not None and asked is not None and sent - asked >= LOOP_GRACE:
            waited = max(waited, sent - asked)
        return waited

    def wait(self, future: Pending[_T], deadline: float | None) -> _T | None:
        """The future's result, or None when the deadline (monotonic) passes first, or
        when the lookup was cancelled (its session closed: nothing to wait for)."""
        remaining = self.remaining(deadline)
        try:
            return future.result(timeout=remaining)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            return None

    def remaining(self, deadline: float | None) -> float:
        if deadline is None:
            return self.timeout
        return max(0.0, deadline - time.monotonic())

    def lookup(
        self,
        name: str,
        rdtype: str,
        deadline: float | None = None,
        network: str | None = None,
        waited_before: float = 0.0,
    ) -> Answer:
        """Blocking lookup for code that cannot be asynchronous (the SPF library).
        ``waited_before``: seconds the caller's earlier lookups of one evaluation
        waited for slots (see :meth:`missed`); the caller waits for this one past
        ``deadline`` as long as they waited (up to ``busy_wait``, :meth:`_give_back`),
        so it is still wanted then."""
        until = self.wanted_until(deadline, waited_before)
        future = self.submit(name, rdtype, deadline=until, network=network)
        return self.collect(future, deadline, name, rdtype, waited_before)

    def wanted_until(self, deadline: float | None, waited_before: float) -> float | None:
        """How long a lookup asked by ``deadline`` after waits of ``waited_before``
        seconds is still wanted: the caller waits past its deadline as long as they
        waited, up to ``busy_wait`` (:meth:`_give_back`); for :meth:`submit`."""
        return None if deadline is None else deadline + min(waited_before, self.busy_wait)

    def hold(self) -> None:
        """A session that may use the resolver starts (:meth:`close_when_released`)."""
        with self._holds_lock:
            self._holds += 1

    def release(self) -> None:
        """That session ended; the last one closes a resolver a reload retired."""
        with self._holds_lock:
            self._holds -= 1
            closing = self._retired and self._holds <= 0
        if closing:
            self.close()

    def close_when_released(self) -> None:
        """Close once no session holds the resolver (at once if none does): a reload
        retired it, and the sessions that started before may still look things up
        (review rev155 F1: a timer closed it under a session that outlived it, and
        its lookups answered as timeouts, which a check passes)."""
        with self._holds_lock:
            self._retired = True
            closing = self._holds <= 0
        if closing:
            self.close()

    def close(self) -> None:
        """Stop the loop thread (tests, reload): pending lookups are cancelled, and
        later ones are not sent (a busy timeout)."""
        self._closed = True
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


def _asked(future: Pending[Any]) -> float | None:
    return future.asked if isinstance(future, (Submitted, Spawned)) else None


def _not_started(future: Pending[Any]) -> bool:
    """Whether the resolver's loop has not taken ``future``'s work yet."""
    if isinstance(future, Submitted):
        return future.lookup is None and not future.done()
    if isinstance(future, Spawned):
        return future.task is None and not future.done()
    return False


class Submitted(concurrent.futures.Future[Answer]):
    """The future of :meth:`Resolver.submit`: ``lookup`` is the lookup it waits for
    (set on the loop thread), which :meth:`Resolver.missed` reads."""

    def __init__(self) -> None:
        super().__init__()
        self.lookup: asyncio.Future[Answer] | None = None
        #: When it was asked (monotonic): the time until its lookup was sent counts as
        #: a wait of this host's (review rev64 F4).
        self.asked = time.monotonic()


class Spawned(concurrent.futures.Future[_T]):
    """The future of a coroutine run on the resolver's loop (:meth:`Resolver.spawn`).

    :meth:`cancel` cancels the coroutine even once it runs (a plain
    :class:`concurrent.futures.Future` refuses then): a session's reverse DNS is
    dropped when the session closes, and so are the lookups it still waits for a slot
    for, so a flood of connections that hang up at once leaves no queue behind."""

    def __init__(self) -> None:
        super().__init__()
        self._task: asyncio.Future[Any] | None = None
        self._abandoned = False
        self.asked = time.monotonic()

    @property
    def task(self) -> asyncio.Future[Any] | None:
        """The coroutine's task, once the loop has started it."""
        return self._task

    def started(self, task: asyncio.Future[Any]) -> None:
        """(Loop thread) the coroutine runs as ``task``."""
        self._task = task
        if self._abandoned:
            task.cancel()

    def cancel(self) -> bool:
        if super().cancel():
            return True
        if self.done():
            return False
        self._abandoned = True
        task = self._task
        if task is not None:
            # asyncio's objects belong to the loop's thread.
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs
                task.get_loop().call_soon_threadsafe(task.cancel)
        return True


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
    if not name.isascii():
        # dnspython would convert U-labels by IDNA2003, which maps straße.de to
        # strasse.de, another owner's domain. The IDNA2008 A-label is the name.
        name = canonical_domain(name)
        if not name.isascii():
            raise ValueError(f"not a valid internationalized domain name: {name!r}")
    try:
        return dns.name.from_text(name).to_text(omit_final_dot=True).lower()
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise ValueError(str(exc)) from None


#: An IPv4-mapped IPv6 client (``::ffff:192.0.2.1``) is the IPv4 client.
client_address = unmapped


def client_network(ip: IPAddress) -> str:
    """The network a client's lookups are counted under (:meth:`Resolver._share`): its
    /24 (IPv4) or /48 (IPv6, a site's usual allocation; one host of it may take any of
    its 65,536 /64s)."""
    ip = client_address(ip)
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network((ip, prefix), strict=False))


def share_network(conn: Connection) -> str | None:
    """The network whose share of the resolver's slots a session's lookups take
    (:func:`client_network`), or None: no share for a client of ``trusted_networks``
    (the site's own relays and submission hosts, 127.0.0.1 included, behind each of
    which many senders stand: review rev62 F4) nor for one without an address."""
    if conn.client_ip is None or conn.trusted_network:
        return None
    return client_network(conn.client_ip)


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
    """The nameservers of /etc/resolv.conf (``nameservers = ["system"]``); none when it
    lists none or cannot be read (dnspython raises then: a traceback at the start,
    review rev156 F3)."""
    try:
        return [str(ns) for ns in dns.resolver.Resolver(configure=True).nameservers]
    except (dns.resolver.NoResolverConfiguration, OSError):
        return []


class NoNameserver(ValueError):
    """``nameservers = ["system"]`` and /etc/resolv.conf lists none."""


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


def cache_weight(answer: Answer) -> int:
    """An answer's share of ``dns.cache_size``: 1 for the usual few records, more for
    many records, many octets or many labels (about one per 2 KiB of memory: a parsed
    label is about 45 octets), so that a cache full of a hostile zone's largest
    answers stays tens of megabytes, not gigabytes (review rev48: 1.7 MB per entry of
    3000 PTR names, 72 KiB per 62 KB TXT; rev52: 745 KiB for 200 names of 85 labels
    compressed into a few kilobytes)."""
    return 1 + len(answer.rdata) // 4 + answer.size // 2048 + answer.labels // 45


def make_resolver(config: DnsConfig, metrics: Metrics | None = None) -> Resolver:
    # dnswire builds on this module's Answer: imported here, not at the top.
    from smtpguard.dnswire import UdpTransport  # noqa: PLC0415 - imported late: dnswire imports this module

    servers = list(config.nameservers)
    if servers == ["system"]:
        servers = system_nameservers()
        if not servers:
            raise NoNameserver('"system": no nameserver in /etc/resolv.conf')
    transport = UdpTransport(servers, config.port, config.timeout)
    return Resolver(
        transport,
        cache_size=config.cache_size,
        max_ttl=config.max_ttl,
        negative_ttl=config.negative_ttl,
        failure_ttl=config.failure_ttl,
        timeout=config.timeout,
        metrics=metrics,
    )
