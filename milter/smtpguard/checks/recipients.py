"""Recipient checks: count limit and the directory's view of local mailboxes."""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks import Event, Services, Stage
from smtpguard.directory import DirectoryError, Kind
from smtpguard.session import Connection
from smtpguard.verdict import Hit, TempError, Verdict

# States in which mail must wait rather than bounce (450 4.2.1).
_TEMPORARY_STATES = frozenset({"suspended", "moving", "overquota"})


class RcptLimit:
    """``rcpt_limit``: the transaction already has ``limits.max_rcpt`` recipients."""

    name: ClassVar[str] = "rcpt_limit"
    stage: ClassVar[Stage] = Stage.RCPT
    reply_ids: ClassVar[tuple[str, ...]] = ("rcpt_limit",)

    def __init__(self, services: Services) -> None:
        self.limit = services.config.limits.max_rcpt

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is not None and len(txn.recipients) >= self.limit:
            return Hit("rcpt_limit", f"already {len(txn.recipients)} recipients")
        return None


class Mailbox:
    """``mailbox_unavailable``, ``mailbox_unavailable_temp``, ``user_locked``,
    ``private_list_denied``, ``database_temp_error`` for recipients in local domains.

    A syntactically invalid recipient is answered ``mailbox_unavailable`` (5.1.1 is
    RFC 3463's "bad destination mailbox address").
    """

    name: ClassVar[str] = "mailbox"
    stage: ClassVar[Stage] = Stage.RCPT
    reply_ids: ClassVar[tuple[str, ...]] = (
        "mailbox_unavailable",
        "mailbox_unavailable_temp",
        "user_locked",
        "private_list_denied",
        "database_temp_error",
    )

    def __init__(self, services: Services) -> None:
        self.site = services.config.site
        self.directory = services.directory
        self.enabled = services.config.directory.backend != "none"

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        rcpt = event.rcpt
        if rcpt is None:
            return Hit("mailbox_unavailable", f"invalid recipient {event.rcpt_raw!r}")
        if not self.enabled or not rcpt.domain or not self.site.is_local(rcpt.domain_lc):
            return None
        address = rcpt.lc
        try:
            found = self.directory.recipient(address)
            if found.kind is Kind.NONE:
                return Hit("mailbox_unavailable", f"{address} unknown")
            if found.kind is Kind.LIST:
                txn = conn.txn
                sender = "" if txn is None or txn.sender is None else txn.sender.lc
                if not self.directory.may_post(address, sender):
                    return Hit(
                        "private_list_denied",
                        f"{sender or '<>'} may not post to {address} ({found.list_policy})",
                    )
                return None
        except DirectoryError as exc:
            return TempError("database_temp_error", str(exc))
        if found.state == "locked":
            return Hit("user_locked", f"{address} is locked")
        if found.state in _TEMPORARY_STATES:
            return Hit("mailbox_unavailable_temp", f"{address} is {found.state}")
        return None
