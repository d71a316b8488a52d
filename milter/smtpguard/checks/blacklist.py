"""``black_mail_address``: the dynamic blacklist kept in the state store."""

from __future__ import annotations

from typing import ClassVar

from smtpguard.address import implied_mailboxes, strip_extension
from smtpguard.checks import Event, Services, Stage
from smtpguard.session import Connection
from smtpguard.state import StateError
from smtpguard.verdict import Hit, TempError, Verdict


class DynamicBlacklist:
    """An address entry also lists the address with an extension
    (``site.recipient_delimiter``, as Postfix's access(5) lookups): a listed
    ``spammer@`` is not escaped by sending as ``spammer+1@``."""

    name: ClassVar[str] = "blacklist"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("black_mail_address", "database_temp_error")

    def __init__(self, services: Services) -> None:
        self.blacklist = services.blacklist
        self.delimiters = services.config.site.recipient_delimiter

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is None:
            return None
        if txn.sender is not None:
            if txn.sender.is_null:
                return None
            addresses = [(txn.sender.text, txn.sender.canonical_lc)]
        else:
            # As the MTA may make it (review rev65 F1: with sender_syntax not
            # enforcing, <spammer%bad.example> was delivered as spammer@bad.example).
            addresses = implied_mailboxes(txn.sender_raw)
        try:
            for text, canonical in addresses:
                entry = self.blacklist.listed(text)
                if entry is None:
                    bare = strip_extension(canonical, self.delimiters)
                    if bare is not None:
                        entry = self.blacklist.listed(bare)
                if entry:
                    return Hit("black_mail_address", f"listed as {entry}")
        except StateError as exc:
            return TempError("database_temp_error", str(exc))
        return None
