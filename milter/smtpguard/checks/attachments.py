"""``attachment_too_long``: one attachment decodes to more than the limit.

The MIME structure is followed as body chunks arrive
(:class:`~smtpguard.content.mime.MimeWalker`), attachments at any depth, inside
attached messages too, and text outside the parts (a preamble or epilogue, where a
parser that reads the boundary otherwise may find one). The body half refuses as soon
as a running size passes the
limit; the end-of-message half sees the last part once the walker is closed. The
limit is the transaction's ``[domain."X"] max_attachment_size`` when it has one.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks import Event, Services, Stage, domain_of
from smtpguard.session import Connection
from smtpguard.verdict import Hit, Verdict


class _AttachmentSize:
    reply_ids: ClassVar[tuple[str, ...]] = ("attachment_too_long",)

    def __init__(self, services: Services) -> None:
        self.config = services.config
        self.limit = services.config.limits.max_attachment_size

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        message = conn.txn.message if conn.txn else None
        if message is None or message.mime is None:
            return None
        domain = domain_of(self.config, conn.txn)
        limit = domain.max_attachment_size if domain is not None else self.limit
        mime = message.mime
        if mime.largest_attachment > limit:
            return Hit(
                "attachment_too_long",
                f"attachment {mime.largest_attachment_name!r} decodes to"
                f" {mime.largest_attachment} > {limit} octets",
            )
        if mime.largest_outside > limit:
            # Another parser may find a part there that the walker did not.
            return Hit(
                "attachment_too_long",
                f"text outside the MIME parts is {mime.largest_outside} > {limit} octets",
            )
        return None


class AttachmentSizeBody(_AttachmentSize):
    name: ClassVar[str] = "attachment_size.body"
    stage: ClassVar[Stage] = Stage.BODY


class AttachmentSizeEom(_AttachmentSize):
    name: ClassVar[str] = "attachment_size.eom"
    stage: ClassVar[Stage] = Stage.EOM
