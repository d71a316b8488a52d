"""``same_size_flood``: many messages of about the same size from the same sender.

The key is built from ``bulk.key`` (sender address and client IP by default, an IPv6
client as its ``bulk.ipv6_prefix`` network; a logged-in client's sender is its SASL
login, whatever address it sends as; ``login`` adds the SASL login); sizes go
into buckets (relative width ``bulk.bucket_width``, e.g. 2%, or a fixed
``bulk.bucket_bytes``; see :class:`~smtpguard.counters.SizeBuckets` for the exact rule:
a hit counts in its bucket and both neighbours, so sizes within one width always count
together). More than ``bulk.threshold`` hits within ``bulk.window``
seconds is refused. At MAIL FROM a declared ``SIZE=`` is checked early (without
counting, and only over the threshold); at end of message the actual size is counted.
Authenticated sessions are counted, clients in ``site.trusted_networks`` that do not
log in are not. A counter backend that fails gives ``database_temp_error`` (or local
counting, see ``state.on_redis_error``).

A retry of a message is not counted again: the same key, Message-ID, recipients and
size within the window, up to :data:`RETRIES_FORGIVEN` times (a message that a later
milter greylists or tempfails is counted here first, and Postfix tells an earlier milter
nothing of it, so each retry counted again and the message itself was finally refused
for good, review rev93 F3); past that, or without a Message-ID, every attempt counts
(the same message again and again to the same recipients is a flood of its own). The
attempts are counted with the same counter, under a key of their own.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import ClassVar, Final

from smtpguard.address import NAT64, NAT64_LOCAL
from smtpguard.checks import Event, Services, Stage
from smtpguard.counters import CounterError, SizeBucketCounter, hit_unless_retry
from smtpguard.session import Connection
from smtpguard.verdict import Hit, TempError, Verdict

#: Attempts of one message (see the module docstring) that count once: a greylisting
#: milter's retries, Postfix's queue retries after a temporary failure.
RETRIES_FORGIVEN: Final = 3


def retry_key(key: str, conn: Connection) -> str | None:
    """The counter key of this message's attempts: the sender's ``key``, its
    Message-ID, its recipients and its size; None without a Message-ID."""
    txn = conn.txn
    if txn is None or txn.message is None or not txn.message.message_id:
        return None
    recipients = sorted(r.canonical_lc for r in txn.recipients) + sorted(txn.unparsed_recipients)
    text = "\0".join([key, txn.message.message_id, str(txn.message.size), *recipients])
    digest = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16)
    return "retry|" + digest.hexdigest()


def bulk_key(parts: tuple[str, ...], conn: Connection, ipv6_prefix: int = 64) -> str:
    """The sender's key; an IPv6 client as its network of ``ipv6_prefix`` bits (review
    rev167 F1: one host's privacy addresses each counted apart, never a flood), but an
    IPv4 host behind NAT64 as itself."""
    txn = conn.txn
    values = []
    for part in parts:
        if part == "mail_from":
            # The address as given, logged in or not (a shared login that sends as
            # each of its users, counted per address where the site wants that).
            values.append(txn.sender.canonical_lc if txn and txn.sender else "<>")
        elif part == "sender":
            if txn and txn.auth_login:
                # A logged-in client by its login: every address it may send as (its
                # extensions, aliases, send-as rights) is one sender (review rev222 F1:
                # a stolen password rotating alice+1@, alice+2@ ... was never counted
                # past one message each). Compared without regard to case, as logins.
                values.append("login:" + txn.auth_login.lower())
                continue
            # Canonical: "x"@y and x@y are one sender, one count.
            values.append(txn.sender.canonical_lc if txn and txn.sender else "<>")
        elif part == "sender_domain":
            values.append(txn.sender.domain_canonical if txn and txn.sender else "")
        elif part == "client_ip":
            ip = conn.client_ip
            if isinstance(ip, ipaddress.IPv6Address) and ip in NAT64:
                # An IPv4 host behind NAT64 or SIIT (RFC 6052): one host, its own key
                # (review rev172 F1: all of IPv4 shared one /64).
                values.append(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
            elif isinstance(ip, ipaddress.IPv6Address) and ipv6_prefix < 128:
                if ip in NAT64_LOCAL:
                    # A site's own NAT64 prefix (RFC 8215): where the IPv4 address
                    # sits depends on its length, which only the site knows, but each
                    # IPv4 host has one address there (RFC 6052's suffix is zero), so
                    # the whole address is the host. A /64 of it was all of IPv4.
                    values.append(str(ip))
                    continue
                values.append(str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False)))
            else:
                values.append(str(ip or ""))
        elif part == "login":
            # Logins compare without regard to ASCII case, as Postfix's do.
            values.append(txn.auth_login.lower() if txn and txn.auth_login else "")
    return "|".join(values)


def counted(conn: Connection) -> bool:
    """Authenticated sessions count (a stolen password is the classic same-size
    flood); the site's own hosts in ``trusted_networks`` do not, unless they log in."""
    return conn.authenticated or not conn.trusted_network


def a_bounce(conn: Connection, recipients: bool = True) -> bool:
    """A stranger's null-sender transaction to one recipient (or, with ``recipients``
    false, at MAIL FROM, before they are known): a bounce's shape. Such a message is
    not counted unless ``bulk.count_bounces``: a 552 to a bounce is lost for good (RFC
    5321 §6.1: no bounce of a bounce), and one receiving MX returns the bounces of our
    own newsletter all of about one size (review rev209). A logged-in client's null
    sender counts (review rev211 F1: a stolen password's flood went uncounted as
    ``MAIL FROM:<>``), and so does one to several recipients, which no bounce has
    (rev211 F2; Postfix's reject_multi_recipient_bounce)."""
    txn = conn.txn
    if txn is None or txn.sender is None or not txn.sender.is_null or conn.authenticated:
        return False
    return not recipients or len(txn.recipients) + len(txn.unparsed_recipients) <= 1


class _Bulk:
    reply_ids: ClassVar[tuple[str, ...]] = ("same_size_flood", "database_temp_error")

    def __init__(self, services: Services) -> None:
        self.config = services.config.bulk
        self.counter: SizeBucketCounter | None = services.counter

    def _uncounted(self, conn: Connection, *, recipients: bool) -> bool:
        """A session this check leaves alone: a trusted host's, or a bounce
        (:func:`a_bounce`) unless ``bulk.count_bounces``."""
        return not counted(conn) or (not self.config.count_bounces and a_bounce(conn, recipients))


class SameSizeDeclared(_Bulk):
    name: ClassVar[str] = "bulk.mail"
    stage: ClassVar[Stage] = Stage.MAIL

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if self.counter is None or txn is None or txn.declared_size is None:
            return None
        if self._uncounted(conn, recipients=False):
            # A bounce's count is of the null-sender messages that are not bounces
            # (several recipients): it must not refuse a bounce here.
            return None
        key = bulk_key(self.config.key, conn, self.config.ipv6_prefix)
        try:
            seen = self.counter.peek(key, txn.declared_size)
        except CounterError as exc:
            return TempError("database_temp_error", f"bulk counter: {exc}")
        # Over the threshold already, not at it: a message that would be the one too many
        # may be a retry, counted before, which only end of message can tell (review
        # rev95 F1: every MTA declares SIZE=, and each greylisted retry got 552 here).
        if seen > self.config.threshold:
            return Hit("same_size_flood", f"{seen} messages near SIZE={txn.declared_size}")
        return None


class SameSize(_Bulk):
    name: ClassVar[str] = "bulk.eom"
    stage: ClassVar[Stage] = Stage.EOM

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if self.counter is None or txn is None or txn.message is None:
            return None
        if self._uncounted(conn, recipients=True):
            return None
        size = txn.message.size
        key = bulk_key(self.config.key, conn, self.config.ipv6_prefix)
        retry = retry_key(key, conn)
        try:
            if retry is None:
                count, attempts = self.counter.hit(key, size), 1
            else:
                count, attempts = hit_unless_retry(self.counter, key, size, retry, RETRIES_FORGIVEN)
        except CounterError as exc:
            return TempError("database_temp_error", f"bulk counter: {exc}")
        if count <= self.config.threshold:
            return None
        if 1 < attempts <= RETRIES_FORGIVEN + 1:
            # Counted at its first attempt, and in the count since.
            return Hit(
                "same_size_flood",
                f"{count} messages of about {size} octets (this one's attempt {attempts},"
                " counted once)",
            )
        return Hit("same_size_flood", f"{count} messages of about {size} octets")
