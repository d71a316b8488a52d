"""``queue_unavailable``: load shedding when too many sessions are open."""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks import Event, Services, Stage
from smtpguard.session import Connection
from smtpguard.verdict import Hit, Verdict


class SessionLimit:
    name: ClassVar[str] = "session_limit"
    stage: ClassVar[Stage] = Stage.CONNECT
    reply_ids: ClassVar[tuple[str, ...]] = ("queue_unavailable",)

    def __init__(self, services: Services) -> None:
        self.limit = services.config.limits.max_sessions

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        if conn.admitted:
            return None
        return Hit("queue_unavailable", f"over max_sessions ({self.limit}) or draining")
