"""``message_too_long``: the declared ``SIZE=`` at MAIL FROM and the actual size.

The actual size counts header and body octets as they stream in (header lines as
``Name: value`` CRLF plus the empty line); the transaction is refused at the first body
chunk that passes the limit, so nothing more is read or kept.

With ``[domain."X"] max_message_size`` tables the limit is the recipient domain's: at
MAIL FROM (no recipient yet) ``SIZE=`` is held against the largest limit, and at each
RCPT against that recipient's (``message_size.rcpt``); the actual size against the
transaction's domain.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks import Event, Services, Stage, domain_of
from smtpguard.session import Connection
from smtpguard.verdict import Hit, Verdict


class DeclaredSize:
    """From the ESMTP ``SIZE=`` parameter (RFC 1870)."""

    name: ClassVar[str] = "message_size.mail"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("message_too_long",)

    def __init__(self, services: Services) -> None:
        config = services.config
        self.limit = max(
            [config.limits.max_message_size, *(d.max_message_size for d in config.domains.values())]
        )

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is not None and txn.declared_size is not None and txn.declared_size > self.limit:
            return Hit("message_too_long", f"SIZE={txn.declared_size} > {self.limit}")
        return None


class DeclaredSizeRcpt:
    """``SIZE=`` against the recipient domain's own limit (per-domain policy only)."""

    name: ClassVar[str] = "message_size.rcpt"
    stage: ClassVar[Stage] = Stage.RCPT
    reply_ids: ClassVar[tuple[str, ...]] = ("message_too_long",)

    def __init__(self, services: Services) -> None:
        self.config = services.config
        self.limit = self.config.limits.max_message_size
        # Without domain tables message_size.mail already held SIZE= to the one limit.
        self.inert = not self.config.domains

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is None or txn.declared_size is None or event.rcpt is None:
            return None
        domain = self.config.domain_policy(event.rcpt.domain_lc)
        limit = domain.max_message_size if domain is not None else self.limit
        if txn.declared_size > limit:
            where = f" for {domain.domain}" if domain is not None else ""
            return Hit("message_too_long", f"SIZE={txn.declared_size} > {limit}{where}")
        return None


class ActualSize:
    """From the octets received so far (headers, then each body chunk)."""

    name: ClassVar[str] = "message_size.body"
    stage: ClassVar[Stage] = Stage.BODY
    reply_ids: ClassVar[tuple[str, ...]] = ("message_too_long",)

    def __init__(self, services: Services) -> None:
        self.config = services.config
        self.limit = services.config.limits.max_message_size

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        message = conn.txn.message if conn.txn else None
        if message is None:
            return None
        domain = domain_of(self.config, conn.txn)
        limit = domain.max_message_size if domain is not None else self.limit
        if message.size > limit:
            return Hit("message_too_long", f"{message.size} octets > {limit}")
        return None


class ActualSizeEom(ActualSize):
    """At end of message too: a message made of headers alone has no body chunk."""

    name: ClassVar[str] = "message_size.eom"
    stage: ClassVar[Stage] = Stage.EOM
