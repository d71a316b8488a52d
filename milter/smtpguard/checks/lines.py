"""``line_parse_error``: lines over 998 octets (RFC 5322 §2.1.1) or NUL bytes.

The header half decides per header field (its longest physical line, folding
included); the body half decides as soon as a chunk shows a long line or a NUL.

A trusted client's long lines (``site.trusted_networks``, logged in) pass unless
``line_syntax.check_trusted`` is on: Postfix delivers them (its SMTP client folds a line
over 998 octets on the way out), and the site's own cron jobs, scripts and web
applications write them (review rev209). A NUL byte is refused from every client: IMAP
(RFC 3501 §4.3) cannot hand a message with one to a reader.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks import Event, Services, Stage
from smtpguard.message import MAX_LINE
from smtpguard.session import Connection
from smtpguard.verdict import Hit, Verdict


class _Lines:
    reply_ids: ClassVar[tuple[str, ...]] = ("line_parse_error",)

    def __init__(self, services: Services) -> None:
        self.check_trusted = services.config.line_syntax.check_trusted

    def _judges_length(self, conn: Connection) -> bool:
        """Whether a long line of this session is refused (see the module doc)."""
        return self.check_trusted or not conn.trusted


class HeaderLines(_Lines):
    name: ClassVar[str] = "line_syntax.header"
    stage: ClassVar[Stage] = Stage.HEADER

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        message = conn.txn.message if conn.txn else None
        if message is None or event.header is None:
            return None
        # This field's own lines: the fields may be judged after all have arrived, and
        # a message-wide figure named every field after a long one (review rev211). The
        # message-wide marks first: most messages have neither.
        name, value = event.header
        if message.nul and ("\x00" in name or "\x00" in value):
            return Hit("line_parse_error", f"NUL byte in header {name!r}")
        longest = message.long_fields.get(event.header, 0) if message.long_fields else 0
        if longest and self._judges_length(conn):
            return Hit("line_parse_error", f"header {name!r} line of {longest} octets")
        return None


class BodyLines(_Lines):
    name: ClassVar[str] = "line_syntax.body"
    stage: ClassVar[Stage] = Stage.BODY

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        message = conn.txn.message if conn.txn else None
        if message is None:
            return None
        if message.nul:
            return Hit("line_parse_error", "NUL byte in body")
        if message.long_line and self._judges_length(conn):
            return Hit("line_parse_error", f"body line over {MAX_LINE} octets")
        return None
