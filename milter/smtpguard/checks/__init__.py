"""Checks: one module per family. A check reads the session and the services it was
given, and returns a :class:`~smtpguard.verdict.Hit`, a
:class:`~smtpguard.verdict.TempError` or ``None``. It never talks to the MTA and never
builds reply text; the pipeline decides what a verdict does.

A check may also have ``prefetch(conn)`` (:class:`Prefetching`): the pipeline calls it
when the connection opens and again after HELO, before that stage's checks run, so a
check that needs DNS starts its lookups early and decides later, at MAIL FROM, from
answers that are usually in by then. ``prefetch`` must return at once and be
idempotent (it runs more than once per session).

A check that needs the message itself (a virus scanner, the spam rules) has
``observe(stage, conn, event)`` (:class:`Observing`): the pipeline hands it every header,
the end of headers and every body chunk as they arrive, and calls ``discard(txn)`` when
the transaction ends, whatever way it ends, so streams and spools are closed. Such a
check gets its scanners from ``services.scanners``
(:class:`~smtpguard.scanners.backends.ScannerFactory`), never builds them itself, so
its tests can hand it fakes.

A check's ``name`` is unique: it names the check in logs, metrics and traces. A
family of checks that decide the same thing at several stages (``message_size.mail``,
``message_size.body``, ``message_size.eom``) shares one ``[checks.NAME]`` table, named
by the part before the dot (:func:`settings_name`).

A check whose configuration leaves it nothing to do (a virus scanner with backend
``none``) sets ``inert = True`` when built; the pipeline then leaves it out and logs so,
rather than calling it for every header and chunk. In the same spirit a header check
that reads only some fields names them (``header_names``, lower case: ``received``
reads ``Received:`` alone) and is called for those only (:func:`header_names`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, ClassVar, Final, Protocol

from smtpguard.metrics import Metrics, NullMetrics
from smtpguard.scanners.backends import ScannerFactory

if TYPE_CHECKING:
    from smtpguard.address import Address
    from smtpguard.config import Config, DomainPolicy
    from smtpguard.counters import SizeBucketCounter
    from smtpguard.directory import Directory
    from smtpguard.dns import Resolver
    from smtpguard.session import Connection, Transaction
    from smtpguard.state import Blacklist
    from smtpguard.verdict import Verdict


#: The shares of the stage at MAIL FROM the checks on names the client chooses wait at
#: most, and the checks of the sender's domain get at least after the checks before
#: them (Event.client_deadline and sender_deadline).
CLIENT_SHARE = 0.5
SENDER_SHARE = 1.0


class Stage(Enum):
    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    HEADER = "header"
    EOH = "eoh"
    BODY = "body"
    EOM = "eom"

    # Members are singletons compared by identity; Enum's own __hash__ (a Python-level
    # hash of the name) showed up in profiles of the per-callback stage lookups.
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a check may use, passed in (never imported as a global)."""

    config: Config
    directory: Directory
    blacklist: Blacklist
    #: None when no ``[dns] nameservers`` are configured: the DNS checks are not built.
    dns: Resolver | None = None
    #: Same-size bulk counters (in process, or Redis shared by several hosts).
    counter: SizeBucketCounter | None = None
    #: Where decisions, stage timings and backend errors are counted.
    metrics: Metrics = field(default_factory=NullMetrics)
    #: Builds the virus scanner streams, the content rules and the spam engine client.
    scanners: ScannerFactory = field(default_factory=ScannerFactory)


@dataclass(slots=True)
class Event:
    """What the current callback carries beyond the session state."""

    rcpt: Address | None = None
    rcpt_raw: str = ""
    header: tuple[str, str] | None = None
    chunk: bytes | None = None
    #: ``time.monotonic()`` by which the stage should be decided: checks waiting on DNS
    #: share it (``dns.stage_deadline``). Set by the pipeline; None waits one timeout.
    deadline: float | None = None
    #: The stage's length at MAIL FROM (``dns.stage_deadline``), where the checks about
    #: the client and those of the sender's domain share it out (client_deadline,
    #: sender_deadline); 0: every check has ``deadline``.
    stage_length: float = 0.0
    #: Seconds the lookups of the sender's domain made so far in this stage waited for
    #: the resolver's slots (the longest of those asked together, added up over the
    #: checks); see :meth:`sender_waits`.
    sender_waited: float = 0.0

    def client_deadline(self) -> float | None:
        """The deadline of the checks that wait on names the client chooses at MAIL
        FROM (its reverse DNS, its HELO name): the first half of the stage. Their
        lookups started when the connection opened, and those names may never answer.
        (The DNSBL zones are the operator's: they keep the whole stage.)"""
        if self.deadline is None:
            return None
        return self.deadline - self.stage_length * (1 - CLIENT_SHARE)

    def sender_deadline(self) -> float | None:
        """The deadline of a check that looks up the sender's domain (SPF,
        sender_domain, an ``spf_pass`` exemption's SPF): a whole stage from the moment
        it asks, or the stage's own deadline if that is later, so that nothing before
        it shortens its time; but never past two stages (``SENDER_SHARE`` beyond the
        stage: a MAIL FROM callback takes two stages at most, smtpguard.bounds).

        A client whose own PTR names never answered used up the stage, SPF had no
        time, and a forged sender passed "-all" as after a DNS timeout (review rev57);
        with a third of the stage a slow domain's include chain still ran out of it
        (rev59). Reckoned at each call, not once per stage: an exemption's SPF asked
        before the client checks fixed the window at the stage's deadline, and the
        spf check after a PTR that never answered had half a stage again (rev61)."""
        return self._sender_deadline(time.monotonic())

    def _sender_deadline(self, now: float) -> float | None:
        if self.deadline is None:
            return None
        latest = self.deadline + self.stage_length * SENDER_SHARE
        return min(latest, max(self.deadline, now + self.stage_length))

    def sender_waits(self) -> float:
        """The waits for slots that a check of the sender's domain starting now takes
        over from the ones before it: as much of ``sender_waited`` as the two-stage
        cap took from its time (none when it has its whole stage). A lookup it asks
        after its deadline is then this host's fault, and the time is given back to
        it (smtpguard.dns.Resolver.collect): a flood that made sender_domain's lookups
        wait past the stage left SPF no time, and its plain timeout passed a forged
        sender (review rev79 F1); an spf_pass exemption's SPF did the same to
        sender_domain (rev81 F1)."""
        now = time.monotonic()
        deadline = self._sender_deadline(now)
        if deadline is None or not self.sender_waited:
            return 0.0
        return min(self.sender_waited, max(0.0, now + self.stage_length - deadline))


#: Transaction scratch key: (recipients counted, the table they fall under).
_DOMAIN_TABLE: Final = "domain_table"


def domain_of(config: Config, txn: Transaction | None) -> DomainPolicy | None:
    """The ``[domain."X"]`` table the transaction's mail falls under, or None: the
    global settings apply. ``rcpt_limit`` keeps a stranger's transaction to one table;
    one that is not split (a dry run, the site's own submission) is judged under its
    recipients' tables at their strictest (:meth:`Config.combined_policy`)."""
    if txn is None or not config.domains:
        return None
    domains = txn.recipient_domains
    if not domains:
        return None
    known: tuple[int, DomainPolicy | None] | None = txn.scratch.get(_DOMAIN_TABLE)
    if known is None or known[0] != len(domains):
        # Asked by several checks per message, answered once per recipient added.
        known = txn.scratch[_DOMAIN_TABLE] = (len(domains), config.combined_policy(domains))
    return known[1]


def settings_name(name: str) -> str:
    """The ``[checks.NAME]`` table of the check called ``name`` (module docstring)."""
    return name.partition(".")[0]


class Check(Protocol):
    #: Unique; used in logs and metrics. Up to its first dot, the ``[checks.NAME]`` table.
    name: ClassVar[str]
    stage: ClassVar[Stage]
    #: The reply ids this check can return (documentation, config checks, tests).
    reply_ids: ClassVar[tuple[str, ...]]

    def __call__(self, conn: Connection, event: Event) -> Verdict | None: ...


def header_names(check: object) -> frozenset[str] | None:
    """The header fields (lower-case names) a header-stage check reads, when it says so
    with a ``header_names`` attribute: the pipeline calls it for those fields only. None:
    every field."""
    names = getattr(check, "header_names", None)
    return frozenset(names) if names is not None else None


class Observing(Protocol):
    """A check fed with the message content as it streams in.

    It may also have ``observe_fields(conn, fields)``: the header fields the MTA sent
    without waiting for replies, all at once (what ``observe`` with each field would
    do, at one call per message instead of one per field)."""

    def observe(self, stage: Stage, conn: Connection, event: Event) -> None: ...
    def discard(self, txn: Transaction) -> None: ...


class MessageSink(Protocol):
    """Anything fed the message as it streams in (scanner streams, spools, rules)."""

    def feed_header(self, name: str, value: str) -> None: ...
    def end_of_headers(self) -> None: ...
    def feed(self, chunk: bytes) -> None: ...


def feed_fields(sink: MessageSink, fields: Sequence[tuple[str, str]]) -> None:
    """Hand ``sink`` several header fields (an observer's ``observe_fields``)."""
    for name, value in fields:
        sink.feed_header(name, value)


def feed_sink(sink: MessageSink, stage: Stage, event: Event) -> None:
    """Hand ``sink`` what this content stage carries."""
    if stage is Stage.HEADER and event.header is not None:
        sink.feed_header(*event.header)
    elif stage is Stage.EOH:
        sink.end_of_headers()
    elif stage is Stage.BODY and event.chunk is not None:
        sink.feed(event.chunk)


class Prefetching(Protocol):
    """A check that starts its lookups before it decides (see the module docstring)."""

    def prefetch(self, conn: Connection) -> None: ...
