"""``same_size_flood``: many messages of about the same size from the same sender.

The key is built from ``bulk.key`` (sender address and client IP by default; ``login``
adds the SASL login); sizes go into buckets (relative width ``bulk.bucket_width``, e.g.
2%, or a fixed ``bulk.bucket_bytes``; see :class:`~smtpguard.counters.SizeBuckets` for
the exact rule: a hit counts in its bucket and both neighbours, so sizes within one
width always count together). More than ``bulk.threshold`` hits within ``bulk.window``
seconds is refused. At MAIL FROM a declared ``SIZE=`` is checked early (without
counting); at end of message the actual size is counted. Authenticated sessions are
counted, clients in ``site.trusted_networks`` that do not log in are not. A counter
backend that fails gives ``database_temp_error`` (or local counting, see
``state.on_redis_error``).
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks import Event, Services, Stage
from smtpguard.counters import CounterError, SizeBucketCounter
from smtpguard.session import Connection
from smtpguard.verdict import Hit, TempError, Verdict


def bulk_key(parts: tuple[str, ...], conn: Connection) -> str:
    txn = conn.txn
    values = []
    for part in parts:
        if part == "sender":
            # Canonical: "x"@y and x@y are one sender, one count.
            values.append(txn.sender.canonical_lc if txn and txn.sender else "<>")
        elif part == "sender_domain":
            values.append(txn.sender.domain_canonical if txn and txn.sender else "")
        elif part == "client_ip":
            values.append(str(conn.client_ip or ""))
        elif part == "login":
            # Logins compare without regard to ASCII case, as Postfix's do.
            values.append(txn.auth_login.lower() if txn and txn.auth_login else "")
    return "|".join(values)


def counted(conn: Connection) -> bool:
    """Authenticated sessions count (a stolen password is the classic same-size
    flood); the site's own hosts in ``trusted_networks`` do not, unless they log in."""
    return conn.authenticated or not conn.trusted_network


class _Bulk:
    reply_ids: ClassVar[tuple[str, ...]] = ("same_size_flood", "database_temp_error")

    def __init__(self, services: Services) -> None:
        self.config = services.config.bulk
        self.counter: SizeBucketCounter | None = services.counter


class SameSizeDeclared(_Bulk):
    name: ClassVar[str] = "bulk.mail"
    stage: ClassVar[Stage] = Stage.MAIL

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if self.counter is None or txn is None or txn.declared_size is None:
            return None
        if not counted(conn):
            return None
        key = bulk_key(self.config.key, conn)
        try:
            seen = self.counter.peek(key, txn.declared_size)
        except CounterError as exc:
            return TempError("database_temp_error", f"bulk counter: {exc}")
        if seen + 1 > self.config.threshold:
            return Hit("same_size_flood", f"{seen} messages near SIZE={txn.declared_size}")
        return None


class SameSize(_Bulk):
    name: ClassVar[str] = "bulk.eom"
    stage: ClassVar[Stage] = Stage.EOM

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if self.counter is None or txn is None or txn.message is None or not counted(conn):
            return None
        size = txn.message.size
        try:
            count = self.counter.hit(bulk_key(self.config.key, conn), size)
        except CounterError as exc:
            return TempError("database_temp_error", f"bulk counter: {exc}")
        if count > self.config.threshold:
            return Hit("same_size_flood", f"{count} messages of about {size} octets")
        return None
