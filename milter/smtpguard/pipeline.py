"""The pipeline: per stage, the ordered checks; verdicts become decisions.

Rules, in the order they apply:

* the first decisive verdict of a stage wins; later checks of that stage do not run;
* a check in ``mode = "report"`` (or any check under ``milter.dry_run``) only logs;
* a :class:`TempError` tempfails with its reply id, or passes when the check's
  ``on_temp_error = "pass"``;
* an exception inside a check becomes ``internal_error`` (a tempfail), never an accept
  and never a permanent reject;
* verdicts found at connect or HELO wait on the connection and are delivered at MAIL
  FROM, where Postfix shows their text (it defers such rejects to MAIL anyway);
* the reply is rendered at delivery time, when it is known whether the client
  negotiated SMTPUTF8 and which MTA we talk to.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from smtpguard.checks import Check, Event, Services, Stage
from smtpguard.checks.auth import AuthLogin, AuthMechanism, SenderLogin
from smtpguard.checks.blacklist import DynamicBlacklist
from smtpguard.checks.helo import HeloFirst, HeloName
from smtpguard.checks.recipients import Mailbox, RcptLimit
from smtpguard.checks.relay import Relay, RelayLocal
from smtpguard.checks.sender import DeclaredSize, SenderDeny, SenderSyntax
from smtpguard.checks.session_limit import SessionLimit
from smtpguard.config import CheckSettings, Config
from smtpguard.replies import Reply, ReplyTable
from smtpguard.session import MTA, Connection
from smtpguard.verdict import Hit, TempError, Verdict

log = logging.getLogger("smtpguard")

#: Every check in the order it runs within its stage.
CHECK_CLASSES: tuple[type[Check], ...] = (
    SessionLimit,
    HeloFirst,
    HeloName,
    SenderSyntax,
    DeclaredSize,
    SenderDeny,
    DynamicBlacklist,
    AuthMechanism,
    AuthLogin,
    SenderLogin,
    RelayLocal,
    Relay,
    RcptLimit,
    Mailbox,
)
CHECK_NAMES: frozenset[str] = frozenset(c.name for c in CHECK_CLASSES)

_DEFERRED_STAGES = frozenset({Stage.CONNECT, Stage.HELO})


class Action(Enum):
    CONTINUE = "continue"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reply: Reply | None = None
    check: str = ""


CONTINUE = Decision(Action.CONTINUE)


class Pipeline:
    def __init__(self, services: Services, replies: ReplyTable) -> None:
        self.services = services
        self.config: Config = services.config
        self.replies = replies
        self.stages: dict[Stage, list[tuple[Check, CheckSettings]]] = {s: [] for s in Stage}
        for cls in CHECK_CLASSES:
            settings = self.config.check(cls.name)
            if settings.mode == "off":
                continue
            check = cls(services)  # type: ignore[call-arg]  # Protocol has no __init__
            self.stages[cls.stage].append((check, settings))

    def wants(self, stage: Stage) -> bool:
        return bool(self.stages[stage])

    def run(self, stage: Stage, conn: Connection, event: Event | None = None) -> Decision:
        event = event or Event()
        if stage is Stage.MAIL and conn.pending is not None:
            return self._decide(stage, conn, event, conn.pending_check, conn.pending)
        for check, settings in self.stages[stage]:
            try:
                verdict = check(conn, event)
            except Exception:
                log.exception(
                    "sid=%s check=%s raised; answering internal_error", conn.session_id, check.name
                )
                if self._mode(settings) == "report":
                    continue
                return self.internal_error(conn, stage, check.name)
            if verdict is None:
                continue
            mode = self._mode(settings)
            if mode == "report":
                self._log(
                    stage=stage,
                    conn=conn,
                    event=event,
                    check=check.name,
                    verdict=verdict,
                    mode=mode,
                    action="pass",
                )
                continue
            if isinstance(verdict, TempError) and settings.on_temp_error == "pass":
                self._log(
                    stage=stage,
                    conn=conn,
                    event=event,
                    check=check.name,
                    verdict=verdict,
                    mode=mode,
                    action="pass",
                )
                continue
            if stage in _DEFERRED_STAGES:
                # Keep the first one; it is delivered at every MAIL FROM of the session.
                conn.pending, conn.pending_check = verdict, check.name
                self._log(
                    stage=stage,
                    conn=conn,
                    event=event,
                    check=check.name,
                    verdict=verdict,
                    mode=mode,
                    action="deferred",
                )
                return CONTINUE
            return self._decide(stage, conn, event, check.name, verdict)
        return CONTINUE

    def internal_error(self, conn: Connection, stage: Stage, where: str) -> Decision:
        """The answer to an unexpected fault anywhere: ``internal_error``, a tempfail."""
        return self._decide(stage, conn, Event(), where, TempError("internal_error", "exception"))

    def utf8_allowed(self, conn: Connection) -> bool:
        # Sendmail clears the 8th bit of reply text, turning UTF-8 into control bytes
        # (0x8A/0x8D become LF/CR) that desynchronize the session: never send it there.
        if conn.mta is MTA.SENDMAIL:
            return False
        policy = self.config.replies.utf8
        if policy == "always":
            return True
        if policy == "never":
            return False
        return conn.txn is not None and conn.txn.smtputf8

    def _mode(self, settings: CheckSettings) -> str:
        return "report" if self.config.milter.dry_run else settings.mode

    def _decide(
        self, stage: Stage, conn: Connection, event: Event, check: str, verdict: Verdict
    ) -> Decision:
        reply = self.replies.render(verdict.reply_id, utf8=self.utf8_allowed(conn))
        action = Action.TEMPFAIL if reply.temporary else Action.REJECT
        self._log(
            stage=stage,
            conn=conn,
            event=event,
            check=check,
            verdict=verdict,
            mode="enforce",
            action=action.value,
        )
        return Decision(action, reply, check)

    def _log(
        self,
        *,
        stage: Stage,
        conn: Connection,
        event: Event,
        check: str,
        verdict: Verdict,
        mode: str,
        action: str,
    ) -> None:
        txn = conn.txn
        fields: Sequence[tuple[str, object]] = (
            ("sid", conn.session_id),
            ("qid", txn.queue_id if txn else None),
            ("stage", stage.value),
            ("check", check),
            ("reply", verdict.reply_id),
            ("mode", mode),
            ("action", action),
            ("temp", isinstance(verdict, TempError) or None),
            ("client", conn.client_ip),
            ("helo", conn.helo),
            ("from", f"<{txn.sender.text}>" if txn and txn.sender else txn and txn.sender_raw),
            ("rcpt", f"<{event.rcpt.text}>" if event.rcpt else event.rcpt_raw or None),
            ("detail", verdict.detail or None),
        )
        level = logging.WARNING if verdict.reply_id == "internal_error" else logging.INFO
        log.log(level, "decision %s", " ".join(_kv(k, v) for k, v in fields if v is not None))


def _kv(key: str, value: object) -> str:
    text = str(value)
    # Quote values with spaces or quotes so the line stays machine-parsable; repr also
    # neutralizes control characters a client may have sent.
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        text = repr(text)
    return f"{key}={text}"


__all__ = ["CHECK_NAMES", "CONTINUE", "Action", "Decision", "Hit", "Pipeline", "TempError"]
