"""``message_too_long``: the declared ``SIZE=`` at MAIL FROM and the actual size.

The actual size counts header and body octets as they stream in (header lines as
``Name: value`` CRLF plus the empty line); the transaction is refused at the first body
chunk that passes the limit, so nothing more is read or kept.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks import Event, Services, Stage
from smtpguard.session import Connection
from smtpguard.verdict import Hit, Verdict


class DeclaredSize:
    """From the ESMTP ``SIZE=`` parameter (RFC 1870)."""

    name: ClassVar[str] = "message_size.mail"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("message_too_long",)

    def __init__(self, services: Services) -> None:
        self.limit = services.config.limits.max_message_size

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is not None and txn.declared_size is not None and txn.declared_size > self.limit:
            return Hit("message_too_long", f"SIZE={txn.declared_size} > {self.limit}")
        return None


class ActualSize:
    """From the octets received so far (headers, then each body chunk)."""

    name: ClassVar[str] = "message_size.body"
    stage: ClassVar[Stage] = Stage.BODY
    reply_ids: ClassVar[tuple[str, ...]] = ("message_too_long",)

    def __init__(self, services: Services) -> None:
        self.limit = services.config.limits.max_message_size

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        message = conn.txn.message if conn.txn else None
        if message is not None and message.size > self.limit:
            return Hit("message_too_long", f"{message.size} octets > {self.limit}")
        return None


class ActualSizeEom(ActualSize):
    """At end of message too: a message made of headers alone has no body chunk."""

    name: ClassVar[str] = "message_size.eom"
    stage: ClassVar[Stage] = Stage.EOM
