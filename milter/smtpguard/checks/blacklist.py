"""``black_mail_address``: the dynamic blacklist kept in the state store."""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks import Event, Services, Stage
from smtpguard.session import Connection
from smtpguard.state import StateError
from smtpguard.verdict import Hit, TempError, Verdict


class DynamicBlacklist:
    name: ClassVar[str] = "blacklist"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("black_mail_address", "database_temp_error")

    def __init__(self, services: Services) -> None:
        self.blacklist = services.blacklist

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is None or txn.sender is None or txn.sender.is_null:
            return None
        try:
            entry = self.blacklist.listed(txn.sender.text)
        except StateError as exc:
            return TempError("database_temp_error", str(exc))
        return Hit("black_mail_address", f"listed as {entry}") if entry else None
