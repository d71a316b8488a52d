"""``rbl_deny`` and ``openrelay_check``: the client IP in a DNS blocklist (RFC 5782).

Every configured zone of the check's kind is asked when the connection opens, all at
once; the answers are collected at MAIL FROM (where the reply text reaches the client;
Postfix defers connect-time rejects to MAIL anyway) and at MAIL FROM the session's
authentication is known, so authenticated clients pass. Clients in
``trusted_networks`` are never looked up.

Which answers mean "listed" (RFC 5782 §2.3 leaves the codes to each list):

* answers outside 127.0.0.0/8 are never listings: a wildcard or an NXDOMAIN-rewriting
  resolver answered (RFC 5782 §2.1); they are ignored and logged;
* 127.0.0.1 and 127.255.255.0/24 are the operators' error codes (Spamhaus answers
  127.255.255.252 for a bad key, .254 for queries through public resolvers, .255 for
  excessive queries): "query refused", not a listing; ignored and logged;
* otherwise the zone's ``answers`` ranges decide, or its ``bitmask``, or (neither
  given) any answer in 127.0.0.0/8.

A list that lists its own test point (RFC 5782 §5: 127.0.0.1, and ::FFFF:7F00:1 for
IPv6, MUST NOT be listed) answers for everyone: a retired list that now lists the
whole Internet, or a broken one. When a zone lists a client, its test point is looked
up too (cached like any answer); while that is listed, the zone's listings are a
temporary failure of the zone (``on_temp_error`` decides), never a refusal or a score,
and a WARNING says so every few minutes (review rev122 F2: one dead list refused every
client with 554).

Active probing (connecting to the client to test for an open relay) is never done:
``openrelay_check`` relies only on the published open-relay lists.

A listing's TXT record (the list's reason and removal URL, RFC 5782 §2.1) is fetched
once the A record shows a listing and goes to the log with the verdict; it is never
sent to the client.

``[[dnsbl.local]]`` block lists (files of addresses and networks,
:mod:`smtpguard.iplist`) are asked first, by prefix lookup and without DNS; a client
listed there gets the same reply as a listing in a zone of that kind.

A client found in no zone (every answer in, none a listing, an ignored code or a
failure) is remembered as such for ``dns.verdict_ttl`` seconds: a repeat client's
sessions then skip building the zone names and reading the cache, zone by zone.

A zone with ``action = "score"`` never refuses: a listing there puts the zone's
``weight`` into :data:`SCORES` on the transaction (under the check's name), and the
``antispam`` check adds the weights to the message's score at end of message
(postscreen's ``dnsbl_sites`` weights, rspamd's RBL symbols). So two weak lists
together can refuse a message that one alone would only flag. A client exempted from
this check (``[[policy.exempt]]``) is not looked up, so it gets no score either; a
message whose recipients are all exempt from it has its scores dropped at end of
message (the pipeline does that).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Sequence
from typing import ClassVar

from cachetools import TTLCache

from smtpguard.address import IPAddress
from smtpguard.checks import Event, Services, Stage
from smtpguard.config import DNSBL_ERROR_CODES, Config, DnsblZone
from smtpguard.dns import (
    Answer,
    Completed,
    Pending,
    Resolver,
    client_address,
    dnsbl_name,
)
from smtpguard.memo import Memo
from smtpguard.session import Connection
from smtpguard.verdict import Hit, TempError, Verdict

log = logging.getLogger("smtpguard")
#: Characters of a listing's TXT reason kept for the log.
_REASON_MAX = 300

_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
#: Seconds between two log lines about the same ignored answer of the same zone.
_IGNORED_LOG_INTERVAL = 300.0
_IGNORED_KEYS = 1024

#: ``txn.scratch`` key: {check name: {zone name: weight}} of the ``action = "score"``
#: zones that list the client (read by the antispam check).
SCORES = "dnsbl.scores"
#: ``txn.scratch`` key: names of checks whose :data:`SCORES` an exemption might have
#: dropped, had its lookup not failed (the pipeline sets it at end of message).
UNSURE_SCORES = "dnsbl.unsure_scores"

#: One zone's lookup for the client: the zone, the name asked, the answer to come.
_Lookup = tuple[DnsblZone, str, Pending[Answer]]
#: The lookups of a client the memo knows to be in no zone: none to make.
_CLEAN: tuple[_Lookup, ...] = ()


def classify(zone: DnsblZone, answer: Answer) -> tuple[list[str], list[str]]:
    """Split an A answer into (listing codes, ignored codes with the reason)."""
    listed: list[str] = []
    ignored: list[str] = []
    for address in answer.addresses():
        if not isinstance(address, ipaddress.IPv4Address) or address not in _LOOPBACK:
            ignored.append(f"{address} (outside 127.0.0.0/8: wildcard or rewriting resolver)")
        elif any(address in net for net in DNSBL_ERROR_CODES):
            ignored.append(f"{address} (list refused the query: blocked or open resolver)")
        elif _accepted(zone, address):
            listed.append(str(address))
    return listed, ignored


def _accepted(zone: DnsblZone, address: ipaddress.IPv4Address) -> bool:
    if zone.bitmask is not None:
        return bool(int(address) & 0xFFFFFF & zone.bitmask)
    if zone.answers:
        return any(low <= address <= high for low, high in zone.answers)
    return True


class _Dnsbl:
    """Shared by the two kinds; ``kind`` picks the zones."""

    name: ClassVar[str]
    kind: ClassVar[str]
    reply_id: ClassVar[str]
    stage: ClassVar[Stage] = Stage.MAIL

    def __init__(self, services: Services) -> None:
        self.zones = tuple(z for z in services.config.dnsbl.zones if z.kind == self.kind)
        self.local = tuple(x for x in services.config.dnsbl.local if x.kind == self.kind)
        self.dns = services.dns
        self.key = f"{self.name}.lookups"
        # Bounded: a zone (or a hijacking resolver) may answer anything, each answer a
        # new key. cachetools is not thread-safe: used under the lock.
        self._ignored_logged: TTLCache[tuple[str, str], bool] = TTLCache(
            _IGNORED_KEYS, ttl=_IGNORED_LOG_INTERVAL, timer=time.monotonic
        )
        self._ignored_lock = threading.Lock()
        #: Client addresses found in no zone (module docstring).
        self.clean: Memo[bool] = Memo(services.config.dns.verdict_ttl)
        #: In report mode a score zone's weight is logged, not added: a zone on trial
        #: refused mail through the anti-spam score (review rev129 F4). A dry run adds
        #: it, for the anti-spam check's own report.
        self.scores_count = services.config.check(self.name).mode != "report"

    def prefetch(self, conn: Connection) -> None:
        if conn.trusted_network or conn.client_ip is None or self.key in conn.scratch:
            return
        if self.dns is None or not self.zones:
            return
        conn.scratch[self.key] = self._lookups(conn, self.dns, client_address(conn.client_ip))

    def _lookups(self, conn: Connection, resolver: Resolver, ip: IPAddress) -> Sequence[_Lookup]:
        return _CLEAN if self.clean.get(ip)[0] else self._start(conn, resolver, ip)

    def _start(self, conn: Connection, resolver: Resolver, ip: IPAddress) -> list[_Lookup]:
        out: list[_Lookup] = []
        for zone in self.zones:
            if isinstance(ip, ipaddress.IPv6Address) and not zone.ipv6:
                continue
            name = dnsbl_name(ip, zone.name)
            known = resolver.cached(name, "A")
            if known is not None and not classify(zone, known)[0]:
                # Cached and not listed (the common case): no trip through the loop.
                out.append((zone, name, Completed(known)))
            else:
                # The session's alone: dropped when it closes (review rev57).
                spawned = conn.background(resolver.spawn(self._lookup(resolver, zone, name)))
                out.append((zone, name, spawned))
        return out

    @staticmethod
    async def _lookup(resolver: Resolver, zone: DnsblZone, name: str) -> Answer:
        answer = await resolver.query(name, "A")
        if classify(zone, answer)[0]:
            # Listed: fetch the reason and the zone's test point now, so they are
            # (usually) cached when MAIL needs them.
            resolver.warm(name, "TXT")
            resolver.warm(_test_point(zone, name), "A")
        return answer

    @classmethod
    def works_without_dns(cls, config: Config) -> bool:
        """Local block lists need no resolver (the pipeline asks before leaving a DNS
        check out)."""
        return any(x.kind == cls.kind for x in config.dnsbl.local)

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        if conn.trusted or conn.client_ip is None:
            return None
        if self.local and (listed := self._local(client_address(conn.client_ip))):
            return listed
        if self.dns is None or not self.zones:
            return None
        return self._zones(conn, event, self.dns, client_address(conn.client_ip))

    def _zones(
        self, conn: Connection, event: Event, dns: Resolver, ip: IPAddress
    ) -> Verdict | None:
        lookups: Sequence[_Lookup] | None = conn.scratch.get(self.key)
        if lookups is None:
            lookups = conn.scratch[self.key] = self._lookups(conn, dns, ip)
        if lookups is _CLEAN:
            return None
        hit: Hit | None = None
        failures = []
        # No listing, score, ignored code or failure in any zone: worth remembering.
        clean = True
        busy = False
        answers = []
        for zone, name, future in lookups:
            answer = dns.collect(future, event.deadline, name, "A")
            answers.append(answer)
            busy = busy or answer.busy
            if answer.status.temporary:
                failures.append(f"{zone.name}: {answer.describe()}")
                continue
            listed, ignored = classify(zone, answer)
            for item in ignored:
                clean = False
                self._log_ignored(conn, zone, item)
            if not listed:
                continue
            clean = False
            if broken := self._lists_everyone(conn, dns, zone, name, event):
                failures.append(f"{zone.name}: {broken}")
                continue
            if zone.action == "score":
                self._score(conn, zone, listed)
                continue
            if hit is None:
                hit = Hit(self.reply_id, self._detail(conn, zone, name, listed, event))
        if hit is not None:
            return hit
        if failures:
            # A lookup that never left this host for want of a slot says nothing of
            # the zone: deferred whatever on_temp_error says (Resolver.missed).
            return TempError(
                "database_temp_error", f"{self.name}: " + "; ".join(failures), firm=busy
            )
        if clean:
            self.clean.put(ip, True, within=dns.left(*answers))
        return None

    def _lists_everyone(
        self, conn: Connection, dns: Resolver, zone: DnsblZone, name: str, event: Event
    ) -> str:
        """Why the zone's listings mean nothing now ("" if they do): it lists its test
        point (module docstring). A test point that cannot be looked up leaves the
        listing standing: the zone said so, and a failure is no proof of a dead list."""
        point = _test_point(zone, name)
        answer = dns.lookup(point, "A", event.deadline)
        if not answer.ok or not answer.addresses():
            return ""
        why = (
            f"lists its test point {point} as"
            f" {','.join(str(a) for a in answer.addresses())} (RFC 5782 §5): it lists"
            " every address, a dead or broken list; its listings are ignored"
        )
        self._log_ignored(conn, zone, why)
        return why

    def _score(self, conn: Connection, zone: DnsblZone, listed: list[str]) -> None:
        # On the transaction: a later one of the connection may be authenticated,
        # exempt, or refused before it gets here.
        if conn.txn is not None and self.scores_count:
            scores = conn.txn.scratch.setdefault(SCORES, {})
            scores.setdefault(self.name, {})[zone.name] = zone.weight
        log.info(
            "dnsbl sid=%s zone=%s client=%s listed as %s: score %+.1f%s",
            conn.session_id,
            zone.name,
            conn.client_ip,
            ",".join(listed),
            zone.weight,
            "" if self.scores_count else f" (not added: {self.name} mode=report)",
        )

    def _local(self, ip: IPAddress) -> Hit | None:
        for item in self.local:
            entry = item.entries.find(ip)
            if entry is not None:
                return Hit(self.reply_id, f"{ip} listed in {item.file} as {entry}")
        return None

    def _detail(
        self, conn: Connection, zone: DnsblZone, name: str, listed: list[str], event: Event
    ) -> str:
        assert self.dns is not None
        txt = self.dns.lookup(name, "TXT", event.deadline)
        reason = " ".join(txt.texts()) if txt.ok else f"no TXT: {txt.describe()}"
        if len(reason) > _REASON_MAX:
            # The zone's text, for the log: a 64 KB TXT made a log line of 64 KB (rev48).
            reason = reason[:_REASON_MAX] + "..."
        return f"{conn.client_ip} listed in {zone.name} as {','.join(listed)}: {reason}"

    def _log_ignored(self, conn: Connection, zone: DnsblZone, item: str) -> None:
        # Such answers come back for every client until the operator fixes the
        # resolver or the zone: say so every few minutes, not once per session.
        key = (zone.name, item)
        with self._ignored_lock:
            if key in self._ignored_logged:
                return
            self._ignored_logged[key] = True
        log.warning(
            "dnsbl sid=%s zone=%s client=%s answer ignored: %s",
            conn.session_id,
            zone.name,
            conn.client_ip,
            item,
        )


#: RFC 5782 §5: the addresses no list may list.
_TEST_POINT_V4 = ipaddress.IPv4Address("127.0.0.1")
_TEST_POINT_V6 = ipaddress.IPv6Address("::ffff:7f00:1")


def _test_point(zone: DnsblZone, name: str) -> str:
    """The name of the zone's test point in the family of the client's ``name``."""
    ipv6 = name.count(".") - zone.name.count(".") > 4  # 32 nibbles, not 4 octets
    return dnsbl_name(_TEST_POINT_V6 if ipv6 else _TEST_POINT_V4, zone.name)


class Rbl(_Dnsbl):
    name: ClassVar[str] = "rbl"
    kind: ClassVar[str] = "rbl"
    reply_id: ClassVar[str] = "rbl_deny"
    reply_ids: ClassVar[tuple[str, ...]] = ("rbl_deny", "database_temp_error")


class OpenRelay(_Dnsbl):
    name: ClassVar[str] = "openrelay"
    kind: ClassVar[str] = "openrelay"
    reply_id: ClassVar[str] = "openrelay_check"
    reply_ids: ClassVar[tuple[str, ...]] = ("openrelay_check", "database_temp_error")
