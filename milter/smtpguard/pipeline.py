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
* verdicts found in the headers or the body wait on the transaction and are delivered
  at end of message, which is when the client hears any DATA-phase reply anyway; once
  one waits, later headers are not examined and the body is skipped (SMFIS_SKIP), so
  nothing more is parsed or counted;
* the reply is rendered at delivery time, when it is known whether the client
  negotiated SMTPUTF8 and which MTA we talk to;
* when the connection opens and after HELO, every enabled check with a ``prefetch``
  hook gets to start its lookups (DNSBL zones, PTR and forward confirmation, the HELO
  name) before that stage's checks run; a failing hook is logged and the check then
  looks up when it decides;
* every stage has a deadline (``dns.stage_deadline``) that the checks waiting on DNS
  share, so one callback never waits longer than that in all;
* checks that need DNS are not built when no ``[dns] nameservers`` are configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import cast

from smtpguard.checks import (
    Check,
    Event,
    Observing,
    Prefetching,
    Services,
    Stage,
    feed_sink,
    settings_name,
)
from smtpguard.checks.antispam import AntiSpam
from smtpguard.checks.attachments import AttachmentSizeBody, AttachmentSizeEom
from smtpguard.checks.auth import AuthLogin, AuthMechanism, SenderLogin
from smtpguard.checks.blacklist import DynamicBlacklist
from smtpguard.checks.bulk import SameSize, SameSizeDeclared
from smtpguard.checks.client_host import HeloDns, SmtpPort
from smtpguard.checks.dnsbl import OpenRelay, Rbl
from smtpguard.checks.helo import HeloFirst, HeloName
from smtpguard.checks.lines import BodyLines, HeaderLines
from smtpguard.checks.loop import Loop
from smtpguard.checks.received import ForgedReceived
from smtpguard.checks.recipients import Mailbox, RcptLimit
from smtpguard.checks.relay import Relay, RelayLocal
from smtpguard.checks.sender import SenderDeny, SenderSyntax
from smtpguard.checks.sender_domain import SenderDomain
from smtpguard.checks.session_limit import SessionLimit
from smtpguard.checks.size import ActualSize, ActualSizeEom, DeclaredSize
from smtpguard.checks.spf import Spf
from smtpguard.checks.virus import VirusScan
from smtpguard.config import DNS_CHECKS, CheckSettings, Config
from smtpguard.message import MessageState
from smtpguard.metrics import NullMetrics
from smtpguard.replies import Reply, ReplyTable
from smtpguard.session import Connection, Transaction
from smtpguard.verdict import Hit, TempError, Verdict

log = logging.getLogger("smtpguard")

#: Every check in the order it runs within its stage.
CHECK_CLASSES: tuple[type[Check], ...] = (
    SessionLimit,
    # Verdicts about the client itself come first at MAIL FROM, as the connect-time
    # rejects they stand for would (their lookups start at connect, see prefetch).
    Rbl,
    OpenRelay,
    SmtpPort,
    HeloFirst,
    HeloName,
    HeloDns,
    SenderSyntax,
    DeclaredSize,
    SameSizeDeclared,
    SenderDeny,
    DynamicBlacklist,
    AuthMechanism,
    AuthLogin,
    SenderLogin,
    RelayLocal,
    # After the local/relay checks: no lookups for mail they already refuse.
    SenderDomain,
    Spf,
    Relay,
    RcptLimit,
    Mailbox,
    HeaderLines,
    Loop,
    ForgedReceived,
    ActualSize,
    BodyLines,
    AttachmentSizeBody,
    AttachmentSizeEom,
    ActualSizeEom,
    VirusScan,
    AntiSpam,
    SameSize,
)
#: The ``[checks.NAME]`` tables the config may have (one per family of checks).
CHECK_NAMES: frozenset[str] = frozenset(settings_name(c.name) for c in CHECK_CLASSES)

_DEFERRED_STAGES = frozenset({Stage.CONNECT, Stage.HELO})
_PREFETCH_STAGES = frozenset({Stage.CONNECT, Stage.HELO})
_CONTENT_STAGES = frozenset({Stage.HEADER, Stage.EOH, Stage.BODY, Stage.EOM})
_DEFERRED_TO_EOM = frozenset({Stage.HEADER, Stage.EOH, Stage.BODY})
_AFTER_HEADERS = frozenset({Stage.BODY, Stage.EOM})


class Action(Enum):
    CONTINUE = "continue"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    #: Send no more body chunks (a verdict already waits for end of message).
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reply: Reply | None = None
    check: str = ""
    #: Headers to add when the message is accepted (end of message only).
    headers: tuple[tuple[str, str], ...] = ()


CONTINUE = Decision(Action.CONTINUE)
SKIP = Decision(Action.SKIP)


class Pipeline:
    def __init__(self, services: Services, replies: ReplyTable) -> None:
        self.services = services
        self.config: Config = services.config
        self.replies = replies
        self.metrics = services.metrics
        self.timed = not isinstance(services.metrics, NullMetrics)
        self.report_header = self.config.milter.report_header
        self.stages: dict[Stage, list[tuple[Check, CheckSettings]]] = {s: [] for s in Stage}
        self.stage_deadline = self.config.dns.stage_deadline
        without_dns: list[str] = []
        inert: list[str] = []
        for cls in CHECK_CLASSES:
            settings = self.config.check(settings_name(cls.name))
            if settings.mode == "off":
                continue
            if settings_name(cls.name) in DNS_CHECKS and services.dns is None:
                without_dns.append(cls.name)
                continue
            check = cls(services)  # type: ignore[call-arg]  # Protocol has no __init__
            if getattr(check, "inert", False):
                # Enabled but with nothing to do in this configuration (a virus scanner
                # with backend "none"): calling it for every header would cost time.
                inert.append(cls.name)
                continue
            self.stages[cls.stage].append((check, settings))
        self.prefetchers: list[Check] = []
        self.observers: list[Observing] = []
        for checks in self.stages.values():
            for check, _settings in checks:
                self._register_hooks(check)
        if without_dns:
            # The config loader refuses DNS checks that were asked for explicitly; these
            # are the defaults, inactive until a resolver is configured.
            log.info("no [dns] nameservers: DNS checks inactive: %s", ", ".join(without_dns))
        if inert:
            log.info("checks with nothing to do in this configuration: %s", ", ".join(inert))
        self.rebuild_plan()
        self.track_mime = self.config.check(settings_name(AttachmentSizeBody.name)).mode != "off"
        content = self.config.content
        self.eom_headers: tuple[tuple[str, str], ...] = (
            ((content.loop_marker, self.config.loop_marker_value),)
            if content.add_loop_marker
            else ()
        )

    def add_check(self, check: Check, settings: CheckSettings, *, first: bool = False) -> None:
        """Add a check to its stage (plugins, tests), last or ``first``, with its hooks."""
        checks = self.stages[check.stage]
        checks.insert(0 if first else len(checks), (check, settings))
        self._register_hooks(check)
        self.rebuild_plan()

    def rebuild_plan(self) -> None:
        """Recompute what each stage runs; needed after changing :attr:`stages` directly
        (:meth:`add_check` does it)."""
        # The effective mode of each check is resolved here, once, not per call.
        self.plan: dict[Stage, tuple[tuple[Check, CheckSettings, str], ...]] = {
            stage: tuple((c, s, self._mode(s)) for c, s in checks)
            for stage, checks in self.stages.items()
        }

    def _register_hooks(self, check: Check) -> None:
        # Looked up once here, not per session: a runtime Protocol check at every
        # connect would cost more than the lookups prefetch starts.
        if hasattr(check, "prefetch"):
            self.prefetchers.append(check)
        if hasattr(check, "observe") and hasattr(check, "discard"):
            self.observers.append(cast(Observing, check))

    def wants(self, stage: Stage) -> bool:
        return bool(self.stages[stage])

    def run(self, stage: Stage, conn: Connection, event: Event | None = None) -> Decision:
        if not self.timed:
            return self._run(stage, conn, event or Event())
        started = time.perf_counter()
        try:
            return self._run(stage, conn, event or Event())
        finally:
            self.metrics.stage_seconds(stage.value, time.perf_counter() - started)

    def _run(self, stage: Stage, conn: Connection, event: Event) -> Decision:
        if event.deadline is None:
            event.deadline = time.monotonic() + self.stage_deadline
        if stage in _PREFETCH_STAGES and conn.admitted:
            self._prefetch(conn)
        if stage is Stage.MAIL and conn.pending is not None:
            return self._decide(stage, conn, event, conn.pending_check, conn.pending)
        txn = conn.txn
        if txn is not None and stage in _CONTENT_STAGES:
            if stage is Stage.EOH:
                txn.headers_ended = True
            elif stage in _AFTER_HEADERS and not txn.headers_ended:
                # The milter asks the MTA not to send end-of-headers (SMFIP_NOEOH):
                # the first body chunk, or the end of a message without a body, stands
                # for it, so checks and observers see the same stages either way.
                self._run(Stage.EOH, conn, Event(deadline=event.deadline))
            if txn.pending is not None:
                if stage is Stage.EOM:
                    self.end_transaction(txn)
                    return self._decide(stage, conn, event, txn.pending_check, txn.pending)
                return SKIP if stage is Stage.BODY else CONTINUE
            self._observe(stage, conn, txn, event)
        decision = self._run_checks(stage, conn, event)
        if stage is Stage.EOM and txn is not None:
            self.end_transaction(txn)
            headers = (*txn.add_headers, *self.eom_headers)
            reported: list[str] | None = txn.scratch.get(_REPORTED)
            if reported:
                headers = (*headers, (self.report_header, ", ".join(dict.fromkeys(reported))))
            if decision.action is Action.CONTINUE and headers:
                return Decision(Action.CONTINUE, headers=headers)
        return decision

    def _prefetch(self, conn: Connection) -> None:
        """Let every enabled check start its lookups; never blocks, never decides."""
        for check in self.prefetchers:
            try:
                cast(Prefetching, check).prefetch(conn)
            except Exception:
                # The check looks up for itself when it decides; an error then
                # becomes a verdict the normal way.
                log.exception("sid=%s check=%s prefetch failed", conn.session_id, check.name)

    def end_transaction(self, txn: Transaction | None) -> None:
        """Release what checks hold for a transaction (scanner streams, spools)."""
        if txn is None:
            return
        for observer in self.observers:
            try:
                observer.discard(txn)
            except Exception:
                log.exception("discarding transaction state failed")

    def _observe(self, stage: Stage, conn: Connection, txn: Transaction, event: Event) -> None:
        """Feed the message model that content checks read, and the observing checks."""
        if txn.message is None:
            txn.message = MessageState(
                track_mime=self.track_mime, max_mime_depth=self.config.content.max_mime_depth
            )
        feed_sink(txn.message, stage, event)
        if stage is Stage.EOM:
            txn.message.close()
        for observer in self.observers:
            # A failing observer must not stop the others; its check decides at EOM
            # from whatever it has (and answers a temporary error if that is nothing).
            try:
                observer.observe(stage, conn, event)
            except Exception:
                log.exception("sid=%s observer %r failed", conn.session_id, observer)

    def _run_checks(self, stage: Stage, conn: Connection, event: Event) -> Decision:
        trace: list[str] | None = conn.scratch.get(TRACE)
        for check, settings, mode in self.plan[stage]:
            try:
                verdict = check(conn, event)
            except Exception:
                log.exception(
                    "sid=%s check=%s raised; answering internal_error", conn.session_id, check.name
                )
                if trace is not None:
                    trace.append(f"{stage.value} {check.name}: exception")
                if mode == "report":
                    continue
                return self.internal_error(conn, stage, check.name)
            if trace is not None:
                trace.append(f"{stage.value} {check.name}: {_outcome(verdict)}")
            if verdict is not None:
                decision = self._act(
                    stage,
                    conn,
                    event,
                    check=check.name,
                    settings=settings,
                    mode=mode,
                    verdict=verdict,
                )
                if decision is not None:
                    return decision
        return CONTINUE

    def _act(
        self,
        stage: Stage,
        conn: Connection,
        event: Event,
        *,
        check: str,
        settings: CheckSettings,
        mode: str,
        verdict: Verdict,
    ) -> Decision | None:
        """What a verdict does; None lets the stage's next check run."""

        def note(action: str) -> None:
            self._log(
                stage=stage,
                conn=conn,
                event=event,
                check=check,
                verdict=verdict,
                mode=mode,
                action=action,
            )

        if mode == "report":
            if stage in _CONTENT_STAGES and not _first_report(conn, check, stage):
                return None
            if self.report_header and conn.txn is not None:
                conn.txn.scratch.setdefault(_REPORTED, []).append(verdict.reply_id)
            note("pass")
            return None
        if isinstance(verdict, TempError) and settings.on_temp_error == "pass":
            note("pass")
            return None
        if stage in _DEFERRED_TO_EOM and conn.txn is not None:
            conn.txn.pending, conn.txn.pending_check = verdict, check
            note("deferred")
            return SKIP if stage is Stage.BODY else CONTINUE
        if stage in _DEFERRED_STAGES:
            # Keep the first one; it is delivered at every MAIL FROM of the session.
            if conn.pending is None:
                conn.pending, conn.pending_check = verdict, check
            note("deferred")
            return CONTINUE
        return self._decide(stage, conn, event, check, verdict)

    def internal_error(self, conn: Connection, stage: Stage, where: str) -> Decision:
        """The answer to an unexpected fault anywhere: ``internal_error``, a tempfail.

        In the headers or body it waits for end of message like any content verdict:
        the MTA may not read replies to those steps (no-reply negotiated), and the
        client hears a DATA-phase reply only at the end anyway.
        """
        verdict = TempError("internal_error", "exception")
        txn = conn.txn
        if stage in _DEFERRED_TO_EOM and txn is not None:
            if txn.pending is None:
                txn.pending, txn.pending_check = verdict, where
            return SKIP if stage is Stage.BODY else CONTINUE
        return self._decide(stage, conn, Event(), where, verdict)

    def utf8_allowed(self, conn: Connection) -> bool:
        # Sendmail clears the 8th bit of reply text, turning UTF-8 into control bytes
        # (0x8A/0x8D become LF/CR) that desynchronize the session: never send it there,
        # nor to an MTA that did not say which one it is (see MTA.carries_utf8).
        if not conn.mta.carries_utf8:
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
        if action != "deferred":
            self.metrics.decision(verdict.reply_id, mode, action)
        if isinstance(verdict, TempError):
            self.metrics.backend_error(check)
        level = logging.WARNING if verdict.reply_id == "internal_error" else logging.INFO
        log.log(level, "decision %s", " ".join(_kv(k, v) for k, v in fields if v is not None))


#: ``conn.scratch[TRACE] = []`` makes the pipeline record every check's outcome there
#: (``smtpguard simulate`` shows them); absent, nothing is recorded.
TRACE = "pipeline.trace"
_REPORTED = "pipeline.report_ids"


def _outcome(verdict: Verdict | None) -> str:
    if verdict is None:
        return "pass"
    kind = "temporary error" if isinstance(verdict, TempError) else "hit"
    return f"{kind} {verdict.reply_id} ({verdict.detail})" if verdict.detail else kind


def _first_report(conn: Connection, check: str, stage: Stage) -> bool:
    """Report-only verdicts of content checks would repeat for every header or chunk
    once true; log them once per transaction."""
    scratch = conn.txn.scratch if conn.txn is not None else conn.scratch
    reported: set[str] = scratch.setdefault("pipeline.reported", set())
    key = f"{check}/{stage.value}"
    if key in reported:
        return False
    reported.add(key)
    return True


def _kv(key: str, value: object) -> str:
    text = str(value)
    # Quote values with spaces or quotes so the line stays machine-parsable; repr also
    # neutralizes control characters a client may have sent.
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        text = repr(text)
    return f"{key}={text}"


__all__ = ["CHECK_NAMES", "CONTINUE", "Action", "Decision", "Hit", "Pipeline", "TempError"]
