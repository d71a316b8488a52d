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
  one waits, later headers are not examined and the body is skipped (SMFIS_SKIP where
  the MTA reads a reply per body chunk, passed over where it reads none), so nothing
  more is parsed or counted;
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, NamedTuple, cast

from smtpguard import loopmark
from smtpguard.address import Address, IPAddress
from smtpguard.checks import (
    Check,
    Event,
    Observing,
    Prefetching,
    Services,
    Stage,
    domain_of,
    feed_sink,
    header_names,
    settings_name,
)
from smtpguard.checks.antispam import SPAM_REPORT, AntiSpam, SpamReport
from smtpguard.checks.attachments import AttachmentSizeBody, AttachmentSizeEom
from smtpguard.checks.auth import AuthLogin, AuthMechanism, SenderLogin, SenderLoginFrom
from smtpguard.checks.blacklist import DynamicBlacklist
from smtpguard.checks.bulk import SameSize, SameSizeDeclared
from smtpguard.checks.client_host import HeloDns, SmtpPort
from smtpguard.checks.dnsbl import SCORES as DNSBL_SCORES
from smtpguard.checks.dnsbl import UNSURE_SCORES as DNSBL_UNSURE_SCORES
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
from smtpguard.checks.size import ActualSize, ActualSizeEom, DeclaredSize, DeclaredSizeRcpt
from smtpguard.checks.spf import Spf
from smtpguard.checks.virus import VirusScan
from smtpguard.config import DNS_CHECKS, CheckSettings, Config
from smtpguard.logsetup import kv as _kv
from smtpguard.message import MessageState
from smtpguard.metrics import MTA_TIMEOUT, NullMetrics
from smtpguard.policy import SKIPPED, SKIPPED_FOR, Policy
from smtpguard.replies import Reply, ReplyTable
from smtpguard.resultheaders import (
    AUTH_RESULTS,
    REPORT_FIELD,
    STATUS_FIELD,
    authentication_results,
    default_authserv_id,
    fold,
    iprev_result,
    names_us,
    spam_headers,
    spf_result,
)
from smtpguard.session import MTA, Connection, Transaction
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
    DeclaredSizeRcpt,
    Mailbox,
    HeaderLines,
    SenderLoginFrom,
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

#: Decision lines logged per session at the most.
DECISION_LINES: Final = 100
#: Summary lines logged per session for transactions that ended empty (MAIL FROM, then
#: RSET, another MAIL FROM or QUIT, with no recipient and nothing refused); the rest
#: are counted in one line at the session's end (review rev212 F3: a MAIL/RSET loop
#: wrote a line per loop, 4 times the octets the client sent, where Postfix writes one).
EMPTY_SUMMARIES: Final = 3


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
    #: Headers to insert at the top (index 0), and existing ones to remove as
    #: (name, index among the fields of that name, from 1); end of message only.
    insert_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[tuple[str, int], ...] = ()


CONTINUE = Decision(Action.CONTINUE)
SKIP = Decision(Action.SKIP)


class Pipeline:
    def __init__(self, services: Services, replies: ReplyTable, *, announce: bool = True) -> None:
        """``announce``: log what this configuration leaves inactive (a worker rebuilding
        the configuration its supervisor built and announced already says nothing)."""
        self.services = services
        self.config: Config = services.config
        self.replies = replies
        self.metrics = services.metrics
        self.timed = not isinstance(services.metrics, NullMetrics)
        self.report_header = self.config.milter.report_header
        self.report_key = self.report_header.lower() or None
        self.summary_log = self.config.milter.summary_log
        antispam = self.config.antispam
        #: The anti-spam fields we write, by lower-case name: incoming ones are removed
        #: from mail the check judged.
        self.spam_fields: dict[str, str] = {
            name.lower(): name
            for name in (
                antispam.flag_header,
                antispam.score_header,
                *((STATUS_FIELD, REPORT_FIELD) if antispam.status_headers else ()),
            )
        }
        self.auth_results = self.config.milter.auth_results
        # Forged fields with this id are removed even when we add none ourselves.
        self.authserv_id = self.config.milter.authserv_id or default_authserv_id()
        self.stages: dict[Stage, list[tuple[Check, CheckSettings]]] = {s: [] for s in Stage}
        self.stage_deadline = self.config.dns.stage_deadline
        # Exemptions and per-domain policy (smtpguard.policy).
        self.policy = Policy(services, [(cls.name, cls.stage) for cls in CHECK_CLASSES])
        #: [domain."X"] tables with their own languages or form: their reply tables.
        self.domain_replies = self.policy.reply_tables(replies)
        without_dns: list[str] = []
        inert: list[str] = []
        for cls in CHECK_CLASSES:
            settings = self.config.check(settings_name(cls.name))
            if settings.mode == "off" and cls.name not in _GUARDS:
                continue
            without_resolver = getattr(cls, "works_without_dns", None)
            if (
                settings_name(cls.name) in DNS_CHECKS
                and services.dns is None
                and not (without_resolver and without_resolver(self.config))
            ):
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
        if without_dns and announce:
            # The config loader refuses DNS checks that were asked for explicitly; these
            # are the defaults, inactive until a resolver is configured.
            log.info("no [dns] nameservers: DNS checks inactive: %s", ", ".join(without_dns))
        if inert and announce:
            log.info("checks with nothing to do in this configuration: %s", ", ".join(inert))
        self.rebuild_plan()
        self.track_mime = self.config.check(settings_name(AttachmentSizeBody.name)).mode != "off"
        content = self.config.content
        self.eom_headers: tuple[tuple[str, str], ...] = (
            ((content.loop_marker, self.config.loop_marker_value),)
            if content.add_loop_marker
            else ()
        )
        self.loop_key = loopmark.key_of(content.loop_marker_key)

    def add_check(self, check: Check, settings: CheckSettings, *, first: bool = False) -> None:
        """Add a check to its stage (plugins, tests), last or ``first``, with its hooks."""
        checks = self.stages[check.stage]
        checks.insert(0 if first else len(checks), (check, settings))
        self._register_hooks(check)
        self.rebuild_plan()

    def rebuild_plan(self) -> None:
        """Recompute what each stage runs; needed after changing :attr:`stages` directly
        (:meth:`add_check` does it)."""
        # The global mode of each check is resolved here, once, not per call, and so
        # is whether the policy may change it (exemptions, [domain."X"] tables).
        relevant = self.policy.relevant if self.policy.active else frozenset()
        self.plan: dict[Stage, tuple[_Step, ...]] = {
            stage: tuple(
                _step(c, s, self._mode(s), c.name in relevant, header_names(c)) for c, s in checks
            )
            for stage, checks in self.stages.items()
        }
        # The header stage's plan per field name, made here rather than per field: the
        # checks that read every field, and for each name a check asked for, those too.
        header = self.plan[Stage.HEADER]
        self._any_field = tuple(step for step in header if step.fields is None)
        named = {name for step in header if step.fields is not None for name in step.fields}
        self._field_plans = {
            name: tuple(step for step in header if step.fields is None or name in step.fields)
            for name in named
        }
        # Where internal_error is counted outside the checks too (rev142 F6).
        checks = {step.check.name for steps in self.plan.values() for step in steps}
        self.metrics.backends_known(sorted(checks | INTERNAL_ERROR_PLACES))

    def _register_hooks(self, check: Check) -> None:
        # Looked up once here, not per session: a runtime Protocol check at every
        # connect would cost more than the lookups prefetch starts.
        if hasattr(check, "prefetch"):
            self.prefetchers.append(check)
        if hasattr(check, "observe") and hasattr(check, "discard"):
            self.observers.append(cast(Observing, check))

    def wants(self, stage: Stage) -> bool:
        return bool(self.stages[stage])

    def run(
        self,
        stage: Stage,
        conn: Connection,
        event: Event | None = None,
        *,
        listening: Callable[[], bool] | None = None,
    ) -> Decision:
        """The stage's decision. At end of message, ``listening`` (the adapter's) tells
        whether the MTA still waits for it, asked when the stage took
        :data:`ASK_MTA_AFTER` seconds or more: past its milter timeout the MTA has given
        the client its own answer, and the summary says so (review rev212 F1: it said
        accept or reject after Postfix's 451)."""
        txn = conn.txn
        begun = time.monotonic() if listening is not None else 0.0
        if stage is Stage.MAIL and txn is not None:
            txn.scratch[_ENDING] = _Ending(
                time.monotonic(),
                conn.session_id,
                conn.client_ip,
                conn.scratch.get(SKIPPED),
                trusted=conn.trusted_network,
                reported=tuple(conn.scratch.get(_REPORTED, ())),
            )
        if not self.timed:
            decision = self._run(stage, conn, event or Event())
        else:
            started = time.perf_counter()
            try:
                decision = self._run(stage, conn, event or Event())
            finally:
                self.metrics.stage_seconds(stage.value, time.perf_counter() - started)
        ending: _Ending | None = txn.scratch.get(_ENDING) if txn is not None else None
        if ending is not None and stage is Stage.MAIL:
            ending.iprev = iprev_result(conn)
        if txn is not None and (
            stage is Stage.EOM or (stage is Stage.MAIL and decision.reply is not None)
        ):
            # The transaction is over: the message was answered, or MAIL FROM refused.
            reply_id = decision.reply.reply_id if decision.reply is not None else None
            outcome, check = _outcome_of(decision, txn), decision.check
            took = time.monotonic() - begun
            if listening is not None and took >= ASK_MTA_AFTER and not listening():
                verdict = f"{outcome}/{reply_id}" if reply_id else outcome
                log.warning(
                    "sid=%s the MTA gave up waiting for this message's verdict (%s)"
                    " after %.1f s: its milter timeout (Postfix's"
                    " milter_content_timeout) passed, and the client got the MTA's own"
                    " answer (its default_action), not this one",
                    conn.session_id,
                    verdict,
                    took,
                )
                txn.scratch[_UNANSWERED] = verdict
                outcome, reply_id, check = "abort", None, ""
            self._summarize(txn, outcome, reply_id, check)
        return decision

    def run_headers(self, conn: Connection, fields: Sequence[tuple[str, str]]) -> Decision:
        """The header stage for several fields in a row, as :meth:`run` for each would
        judge them, with the per-call set-up done once (one deadline, one timing) and
        the observing checks fed all the fields at once after them (no header check
        reads what they gather)."""
        deadline = time.monotonic() + self.stage_deadline
        started = time.perf_counter() if self.timed else 0.0
        decision = CONTINUE
        txn = conn.txn
        try:
            if txn is None:
                for field in fields:
                    event = Event(header=field, deadline=deadline)
                    decision = self._run(Stage.HEADER, conn, event)
                return decision
            observed: list[tuple[str, str]] = []
            try:
                for field in fields:
                    if txn.pending is not None:
                        # As _run: no field after a header verdict is observed or judged.
                        self._message(txn).count_field(*field)
                        decision = CONTINUE
                        continue
                    event = Event(header=field, deadline=deadline)
                    self._observe(Stage.HEADER, conn, txn, event, observers=False)
                    observed.append(field)
                    decision = self._run_checks(Stage.HEADER, conn, event)
            finally:
                self._observe_fields(conn, observed, deadline)
        finally:
            if self.timed:
                self.metrics.stage_seconds(Stage.HEADER.value, time.perf_counter() - started)
        return decision

    def _observe_fields(
        self, conn: Connection, fields: Sequence[tuple[str, str]], deadline: float
    ) -> None:
        """The observing checks' share of :meth:`run_headers`: the fields at once."""
        if not fields:
            return
        blind = _blinded(conn)
        for observer in self.observers:
            if blind and _observer_name(observer) in blind:
                continue
            batch = getattr(observer, "observe_fields", None)
            try:
                if batch is not None:
                    batch(conn, fields)
                else:
                    for field in fields:
                        observer.observe(Stage.HEADER, conn, Event(header=field, deadline=deadline))
            except Exception:  # noqa: BLE001 - _blind logs it, traceback and all
                _blind(conn, observer)

    def _run(self, stage: Stage, conn: Connection, event: Event) -> Decision:
        if event.deadline is None:
            event.deadline = time.monotonic() + self.stage_deadline
        if stage is Stage.MAIL:
            event.stage_length = self.stage_deadline
        if stage in _PREFETCH_STAGES and conn.admitted:
            self._prefetch(conn)
        if stage is Stage.MAIL and conn.pending is not None:
            return self._decide(stage, conn, event, conn.pending_check, conn.pending)
        txn = conn.txn
        held_reports: list[tuple[str, Verdict]] = []
        if stage is Stage.RCPT and self.policy.active:
            held_reports = self.policy.held_reports(conn, event)
            answer = self._held_here(conn, event)
            if answer is not None:
                return answer
        if txn is not None and stage in _CONTENT_STAGES:
            pending = self._content(stage, conn, txn, event)
            if pending is not None:
                return pending
        decision = self._run_checks(stage, conn, event)
        if held_reports and decision.action is Action.CONTINUE:
            # Reported for a recipient the message goes to: one refused here would not
            # have got it from an enforcing check either (review rev153 F4).
            for check, held_verdict in held_reports:
                # As enforcing would answer it for this recipient (review rev210 L4: a
                # 554 was reported where the exemption's failed lookup gives a 450).
                verdict = _unless_unsure(self.policy, conn, check, held_verdict, event.rcpt)
                self._reported(conn, verdict.reply_id)
                self._log(
                    stage=stage,
                    conn=conn,
                    event=event,
                    check=check,
                    verdict=verdict,
                    mode="report",
                    action="pass",
                    would=True,
                )
        if stage is Stage.EOM and txn is not None:
            self._release(txn)
            if decision.action is Action.CONTINUE:
                return self._accept(conn, txn)
        return decision

    def _held_here(self, conn: Connection, event: Event) -> Decision | None:
        """A MAIL FROM verdict held for this recipient (it is not exempt from it): the
        answer, or None when there is none, or when it waits for the end of a local
        submission (see LOCAL_SUBMISSION_PASSES), as when no recipient was exempt
        (review rev228 M2: refused at MAIL, it bounced mail to exempt recipients)."""
        held = self.policy.held(conn, event)
        if held is None:
            return None
        # As at MAIL FROM: this recipient's exemption may be the one a failed lookup
        # left undecided (review rev110 F1: 554 for a temporary fault).
        check, verdict = held
        verdict = _unless_unsure(self.policy, conn, check, verdict, event.rcpt)
        if not conn.local_submission or conn.txn is None:
            return self._decide(Stage.RCPT, conn, event, check, verdict)
        conn.txn.defer(verdict, check)
        self._log(
            stage=Stage.RCPT,
            conn=conn,
            event=event,
            check=check,
            verdict=verdict,
            mode="enforce",
            action="deferred",
        )
        return None

    def _content(
        self, stage: Stage, conn: Connection, txn: Transaction, event: Event
    ) -> Decision | None:
        """Before a content stage's checks: the message model, and the answer when a
        verdict is already pending (then no check runs)."""
        if stage is Stage.EOH:
            txn.headers_ended = True
        elif stage in _AFTER_HEADERS and not txn.headers_ended:
            # An MTA that does not send end-of-headers (simulate, an old one): the
            # first body chunk, or the end of a message without a body, stands for
            # it, so checks and observers see the same stages either way.
            self._run(Stage.EOH, conn, Event(deadline=event.deadline))
        if txn.pending is not None:
            if stage is Stage.EOM:
                self._release(txn)
                return self._decide(stage, conn, event, txn.pending_check, txn.pending)
            feed_sink(self._message(txn).sizes, stage, event)
            return SKIP if stage is Stage.BODY else CONTINUE
        self._observe(stage, conn, txn, event)
        if stage is Stage.EOM and self.policy.active:
            _drop_exempt_scores(self.policy, conn, txn, event)
        return None

    def _reported(self, conn: Connection, reply_id: str) -> None:
        """A report-only verdict, for the report header of the message(s) it concerns:
        the transaction's, or at connect and HELO every one of the connection."""
        scratch = conn.txn.scratch if conn.txn is not None else conn.scratch
        scratch.setdefault(_REPORTED, []).append(reply_id)

    def _loop_marker(self, txn: Transaction, leaves: bool) -> tuple[tuple[str, str], ...]:
        """The loop marker (``content.add_loop_marker``) on mail for the domains we take
        mail for (local and relay domains, our host names); mail our users send out to
        other domains goes without it, so a list elsewhere that sends our user's post back
        to our users brings back no marker of ours (review rev93 F4)."""
        if not self.eom_headers or leaves:
            return ()
        if not self.loop_key:
            return self.eom_headers
        ((name, value),) = self.eom_headers
        sender, recipients = loopmark.parties(
            txn.sender, txn.recipients, self.config.site.recipient_delimiter
        )
        return ((name, loopmark.render(name, value, self.loop_key, sender, recipients)),)

    def _leaves(self, txn: Transaction) -> bool:
        """Whether some recipient is in a domain we take no mail for (local and relay
        domains, our host names)."""
        site = self.config.site
        return not all(site.is_ours(d) or site.is_relay(d) for d in txn.recipient_domains)

    def _accept(self, conn: Connection, txn: Transaction) -> Decision:
        """End of message, accepted: the headers to add, insert and remove."""
        # Asked once, where the loop marker or a trusted client's headers depend on it.
        leaves = bool(self.eom_headers or conn.trusted) and self._leaves(txn)
        headers = (*txn.add_headers, *self._loop_marker(txn, leaves))
        # Our own users' mail that leaves: its score and rule names are nobody else's
        # business (review rev188 F5); kept on mail for our mailboxes, which Sieve's
        # spamtest and the like read (rev192 F1). The flag alone still goes.
        private = conn.trusted and leaves
        if private:
            score_header = self.config.antispam.score_header
            headers = tuple(h for h in headers if h[0] != score_header)
        reported: list[str] = [
            *conn.scratch.get(_REPORTED, ()),
            *txn.scratch.get(_REPORTED, ()),
        ]
        if reported and self.report_header:
            ids = [f"{i}," for i in dict.fromkeys(reported)]
            ids[-1] = ids[-1].rstrip(",")
            headers = (*headers, (self.report_header, fold(self.report_header, ids)))
        spam: SpamReport | None = txn.scratch.get(SPAM_REPORT)
        if spam is not None and self.config.antispam.status_headers and not private:
            headers = (
                *headers,
                *spam_headers(
                    spam=spam.spam, score=spam.score, required=spam.required, rules=spam.rules
                ),
            )
        ours = authentication_results(self.authserv_id, conn, txn) if self.auth_results else None
        forged: list[tuple[str, int]] = [(AUTH_RESULTS, i) for i in txn.scratch.get(_FORGED_AR, [])]
        for field in txn.scratch.get(_FORGED_SPAM, ()):
            # The anti-spam check judged this message: only our fields say so. The
            # report field is ours whether or not anything was reported.
            if spam is not None or field[0] == self.report_header:
                forged.append(field)
        if not (headers or ours or forged):
            return CONTINUE
        return Decision(
            Action.CONTINUE,
            headers=headers,
            insert_headers=(ours,) if ours else (),
            # Last first: whether or not the MTA renumbers after a removal, the
            # indexes still to remove stay right.
            remove_headers=tuple(reversed(forged)),
        )

    def _prefetch(self, conn: Connection) -> None:
        """Let every enabled check start its lookups; never blocks, never decides."""
        # Only exemptions by client address alone spare a check's lookups.
        policy = self.policy if self.policy.active and self.policy.client_only else None
        for check in self.prefetchers:
            if policy is not None and policy.skips_client(conn, check.name):
                continue
            try:
                cast(Prefetching, check).prefetch(conn)
            except Exception:
                # The check looks up for itself when it decides; an error then
                # becomes a verdict the normal way.
                log.exception("sid=%s check=%s prefetch failed", conn.session_id, check.name)

    def end_transaction(self, txn: Transaction | None, conn: Connection | None = None) -> None:
        """The transaction ended without an answer to its message (RSET, a new MAIL
        FROM, QUIT, a lost connection): release what checks hold and log its summary
        (past :data:`EMPTY_SUMMARIES` empty ones in ``conn``'s session, only count it)."""
        if txn is None:
            return
        self._release(txn)
        ending: _Ending | None = txn.scratch.get(_ENDING)
        if ending is None or ending.done:
            return
        refusal = ending.refusal
        if refusal is not None and (refusal[3] is not Stage.RCPT or not txn.recipient_domains):
            # Refused at MAIL FROM or end of message, or every recipient refused.
            self._summarize(txn, refusal[0], refusal[1], refusal[2])
            return
        line = True
        if conn is not None and not txn.recipients and not txn.unparsed_recipients:
            conn.empty_transactions += 1
            line = conn.empty_transactions <= EMPTY_SUMMARIES
            if not line:
                # The last one's sender goes on the session's repeated= line (review
                # rev214 L1: a relay probe's senders, refused by Postfix, were lost).
                conn.empty_from = _sender_text(txn)
        self._summarize(txn, "abort", None, "", line=line)

    def end_session(self, conn: Connection) -> None:
        """The session closed: the empty transactions its summary lines left out."""
        more = conn.empty_transactions - EMPTY_SUMMARIES
        if more > 0 and self.summary_log:
            _summary_line(
                (
                    ("sid", conn.session_id),
                    ("outcome", "abort"),
                    ("nrcpt", 0),
                    ("repeated", more),
                    ("client", conn.client_ip),
                    ("from", conn.empty_from),
                )
            )

    def _release(self, txn: Transaction) -> None:
        """Release what checks hold for a transaction (scanner streams, spools)."""
        for observer in self.observers:
            try:
                observer.discard(txn)
            except Exception:
                ending: _Ending | None = txn.scratch.get(_ENDING)
                sid = ending.session_id if ending is not None else "-"
                log.exception("sid=%s observer %r: releasing its state failed", sid, observer)

    def _observe(
        self,
        stage: Stage,
        conn: Connection,
        txn: Transaction,
        event: Event,
        *,
        observers: bool = True,
    ) -> None:
        """Feed the message model that content checks read, and (unless ``observers``
        is false: :meth:`run_headers`) the observing checks."""
        message = self._message(txn)
        feed_sink(message, stage, event)
        if stage is Stage.HEADER and event.header is not None:
            self._note_result_field(txn, *event.header)
        if stage is Stage.EOM:
            message.close()
        if not observers:
            return
        blind = _blinded(conn)
        for observer in self.observers:
            # A failing observer must not stop the others; its check answers
            # _BLIND_VERDICT at end of message, and it is fed no more of this message
            # (review rev80 F4: a traceback for every body chunk of a 3 MB message).
            if blind and _observer_name(observer) in blind:
                continue
            try:
                observer.observe(stage, conn, event)
            except Exception:  # noqa: BLE001 - _blind logs it, traceback and all
                _blind(conn, observer)

    def _message(self, txn: Transaction) -> MessageState:
        """The transaction's message model, made at its first content stage."""
        if txn.message is None:
            txn.message = MessageState(
                track_mime=self.track_mime,
                max_mime_depth=self.config.content.max_mime_depth,
                max_mime_parts=self.config.content.max_mime_parts,
            )
        return txn.message

    def _note_result_field(self, txn: Transaction, name: str, value: str) -> None:
        """Remember, by their index among the fields of their name, the incoming fields
        that would pass for ours: Authentication-Results carrying our authserv-id (RFC
        8601 §5), and the anti-spam fields we write (a sender's "X-Spam-Status: No"
        above ours would be the one a filter reads first)."""
        key = name.lower()
        if key == "authentication-results":
            seen = txn.scratch[_SEEN_AR] = txn.scratch.get(_SEEN_AR, 0) + 1
            if names_us(value, self.authserv_id):
                txn.scratch.setdefault(_FORGED_AR, []).append(seen)
            return
        if key == self.report_key:
            # Ours whenever configured: a sender's copy would read as smtpguard's own
            # note of what report mode let through.
            seen = txn.scratch[_SEEN_REPORT] = txn.scratch.get(_SEEN_REPORT, 0) + 1
            txn.scratch.setdefault(_FORGED_SPAM, []).append((self.report_header, seen))
            return
        written = self.spam_fields.get(key)
        if written is not None:
            counts: dict[str, int] = txn.scratch.setdefault(_SEEN_SPAM, {})
            counts[written] = counts.get(written, 0) + 1
            txn.scratch.setdefault(_FORGED_SPAM, []).append((written, counts[written]))

    def _steps(self, stage: Stage, event: Event) -> Sequence[_Step]:
        """The checks to run: at the header stage, those that read this field."""
        if event.header is None:
            return self.plan[stage]
        return self._field_plans.get(event.header[0].lower(), self._any_field)

    def _run_checks(self, stage: Stage, conn: Connection, event: Event) -> Decision:
        trace: list[str] | None = conn.scratch.get(TRACE)
        policy = self.policy if self.policy.active else None
        txn = conn.txn  # _blinded(conn), inlined: it runs for every stage's checks
        blind: set[str] | None = txn.scratch.get(_BLIND) if txn is not None else None
        # Most steps of most messages: enforced, nothing to trace or skip; then the
        # check's call (and its count) is all there is to a step that finds nothing.
        plain = trace is None and not blind
        timed = self.timed
        for step in self._steps(stage, event):
            if not (plain and step.enforced):
                decision = self._step(
                    stage, conn, event, step, policy=policy, trace=trace, blind=blind
                )
            else:
                check = step.check
                try:
                    verdict = check(conn, event)
                except Exception:  # noqa: BLE001 - _raised logs it, traceback and all
                    self._raised(stage, conn, check.name, trace)
                    return self.internal_error(conn, stage, check.name)
                if timed:
                    self.metrics.check_verdict(check.name, _VERDICT_KIND.get(type(verdict), "hit"))
                if verdict is None:
                    continue
                decision = self._answer(
                    stage, conn, event, step, verdict, mode="enforce", guarded=False, policy=policy
                )
            if decision is not None:
                return decision
        return CONTINUE

    def _step(
        self,
        stage: Stage,
        conn: Connection,
        event: Event,
        step: _Step,
        *,
        policy: Policy | None,
        trace: list[str] | None,
        blind: set[str] | None,
    ) -> Decision | None:
        """One step of :meth:`_run_checks` in full: its mode here, traced, skipped for
        a check gone blind. None: the next step runs."""
        check = step.check
        mode, guarded = (
            _ENFORCED
            if step.enforced
            else self._mode_here(stage, conn, event, step, policy=policy, trace=trace)
        )
        if mode == "off" and not guarded:
            return None
        try:
            verdict = _BLIND_VERDICT if blind and check.name in blind else check(conn, event)
        except Exception:  # noqa: BLE001 - _raised logs it, traceback and all
            self._raised(stage, conn, check.name, trace)
            if mode == "report" and not guarded:
                return None
            return self.internal_error(conn, stage, check.name)
        if trace is not None:
            trace.append(f"{stage.value} {check.name}: {_outcome(verdict)}")
        if self.timed:
            self.metrics.check_verdict(check.name, _VERDICT_KIND.get(type(verdict), "hit"))
        if verdict is None:
            return None
        return self._answer(
            stage, conn, event, step, verdict, mode=mode, guarded=guarded, policy=policy
        )

    def _answer(
        self,
        stage: Stage,
        conn: Connection,
        event: Event,
        step: _Step,
        verdict: Verdict,
        *,
        mode: str,
        guarded: bool,
        policy: Policy | None,
    ) -> Decision | None:
        """What a step's verdict does, in the mode it ran in (and whether its guard
        holds: :meth:`_mode_here`). None: the next step runs."""
        name = step.check.name
        mode = _guarded(conn, name, verdict, mode) if guarded else mode
        if mode == "off":
            return None
        return self._act(
            stage,
            conn,
            event,
            check=name,
            settings=step.settings,
            mode=mode,
            verdict=_unless_unsure(
                policy,
                conn,
                name,
                verdict,
                event.rcpt if stage is Stage.RCPT else None,
                stage=stage,
            ),
        )

    def _raised(self, stage: Stage, conn: Connection, name: str, trace: list[str] | None) -> None:
        """A check raised (called from its except clause): logged with the traceback,
        counted, traced; the caller answers for it."""
        log.exception("sid=%s check=%s raised; answering internal_error", conn.session_id, name)
        if self.timed:
            self.metrics.check_verdict(name, "error")
        if trace is not None:
            trace.append(f"{stage.value} {name}: exception")

    def _mode_here(
        self,
        stage: Stage,
        conn: Connection,
        event: Event,
        step: _Step,
        *,
        policy: Policy | None,
        trace: list[str] | None,
    ) -> tuple[str, bool]:
        """A step's mode for this call (exemptions skip a check, [domain."X"] tables may
        change its mode), and whether its guard holds (:func:`_guarded`): a stranger's
        relay that reaches us through Postfix (or an MTA whose macro v names neither
        Postfix nor Sendmail: :attr:`MTA.guards_relay`) while the relay check does not
        enforce (a dry run, report mode, off) is refused all the same. With postfix-config's
        restrictions Postfix refuses it first; that it did not means they are not
        postfix-config's, e.g. still those of relay_control = "milter", which pass
        every recipient to us (review rev116 F2: the loader's advice for a dry run in
        milter mode opened the relay until postfix-config ran again). Sendmail's relay
        rules are its own (contrib/sendmail/README.md, review rev118 F1). No exemption
        skips the relay check (the loader refuses one)."""
        mode = step.mode
        name = step.check.name
        if step.relevant and policy is not None:
            mode = policy.effective(conn, name, stage, event, mode)
        guarded = (
            mode != "enforce" and name in _GUARDS and not conn.trusted and conn.mta.guards_relay
        )
        if mode == "off" and not guarded and trace is not None:
            why = "mode off" if step.mode == "off" or policy is None else policy.why(conn, name)
            trace.append(f"{stage.value} {name}: skipped ({why})")
        return mode, guarded

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

        def note(action: str, *, would: bool = False) -> None:
            self._log(
                stage=stage,
                conn=conn,
                event=event,
                check=check,
                verdict=verdict,
                mode=mode,
                action=action,
                would=would,
            )

        if (
            mode == "report"
            and stage in _CONTENT_STAGES
            and not _first_report(conn, check, verdict)
        ):
            # Once per message: a content verdict would repeat for every field or chunk.
            return None
        if isinstance(verdict, TempError):
            # Counted where the verdict is made, not again where a deferred or held one
            # is answered.
            if verdict.fault:
                self.metrics.backend_error(check)
            if settings.on_temp_error == "pass" and not verdict.firm:
                # Enforcing lets it pass: nothing to report either.
                note("pass")
                return None
        if mode == "report":
            if (
                stage is Stage.MAIL
                and self.policy.active
                and self.policy.hold(conn, check, verdict, event, report=True)
            ):
                # As enforcing would: reported for each recipient not exempt from it.
                note("held", would=True)
                return None
            self._reported(conn, verdict.reply_id)
            if stage not in _CONTENT_STAGES and conn.txn is not None:
                # A SIZE= reported at MAIL or RCPT is the message's report: its body
                # step must not report it again (review rev220 L2).
                _first_report(conn, check, verdict)
            note("pass", would=True)
            return None
        txn = conn.txn
        if txn is not None and (
            stage in _DEFERRED_TO_EOM or (stage is Stage.RCPT and conn.local_submission)
        ):
            if verdict.reply_id in LOCAL_SUBMISSION_PASSES and stage is Stage.RCPT:
                note("pass", would=True)
                return None
            txn.defer(verdict, check)
            note("deferred")
            # A local submission's recipient: the next check runs (see
            # LOCAL_SUBMISSION_PASSES), and the recipient is accepted.
            return SKIP if stage is Stage.BODY else None if stage is Stage.RCPT else CONTINUE
        if stage in _DEFERRED_STAGES:
            conn.defer(verdict, check)
            note("deferred")
            return CONTINUE
        if (
            stage is Stage.MAIL
            and self.policy.active
            and self.policy.hold(conn, check, verdict, event)
        ):
            # A recipient may be exempt from this check: each RCPT gets the answer.
            note("held")
            return None
        if stage is Stage.MAIL and self.policy.active:
            # hold() asks the client's name or SPF of an exemption with recipients, which
            # nothing at MAIL asked before: a lookup that failed there leaves it undecided.
            verdict = _unless_unsure(self.policy, conn, check, verdict, stage=stage)
        return self._decide(stage, conn, event, check, verdict)

    def internal_error(
        self, conn: Connection, stage: Stage, where: str, detail: str = "exception"
    ) -> Decision:
        """The answer to an unexpected fault anywhere: ``internal_error``, a tempfail.

        In the headers or body it waits for end of message like any content verdict,
        and at connect or HELO for MAIL FROM like any verdict of those stages: the MTA
        may not read replies to those steps (no-reply negotiated), and the client hears
        a DATA-phase reply only at the end anyway.
        """
        self.metrics.backend_error(where)
        return self._held(stage, conn, where, TempError("internal_error", detail))

    def _held(self, stage: Stage, conn: Connection, where: str, verdict: Verdict) -> Decision:
        """A verdict from outside the checks (``where``), answered when a check's at
        ``stage`` would be: at end of message, at MAIL FROM, or now."""
        txn = conn.txn
        if txn is not None and (
            stage in _DEFERRED_TO_EOM or (stage is Stage.RCPT and conn.local_submission)
        ):
            # A local submission's recipient too (see LOCAL_SUBMISSION_PASSES).
            txn.defer(verdict, where)
            return SKIP if stage is Stage.BODY else CONTINUE
        if stage in _DEFERRED_STAGES:
            conn.defer(verdict, where)
            return CONTINUE
        return self._decide(stage, conn, Event(), where, verdict)

    def header_flood(
        self, conn: Connection, detail: str, *, dry_run_passes: bool = True
    ) -> Decision:
        """A message with more header fields than ``limits.max_header_fields``:
        ``message_too_long`` (552 5.3.4), answered at end of message like any header
        verdict. The count is the message's own, the same at every retry: a 4xx would
        have its sender retry it for days (review rev165 F1), as Sendmail's
        MaxHeadersLength answers 552 too. A dry run passes it unless not
        ``dry_run_passes``, saying what enforcing would answer as for a check's verdict
        (review rev175 F1: nothing but a warning said so)."""
        verdict = Hit("message_too_long", detail)
        if dry_run_passes and self.config.milter.dry_run:
            self._reported(conn, verdict.reply_id)
            self._log(
                stage=Stage.HEADER,
                conn=conn,
                event=Event(),
                check=HEADER_FLOOD,
                verdict=verdict,
                mode="report",
                action="pass",
                would=True,
            )
            return CONTINUE
        return self._held(Stage.HEADER, conn, HEADER_FLOOD, verdict)

    def count_field(self, txn: Transaction, name: str, value: str) -> None:
        """A field past ``limits.max_header_fields``, neither judged nor observed: only
        its size counts (the summary line's ``size=``)."""
        self._message(txn).count_field(name, value)

    def note_field_past_limit(self, txn: Transaction, name: str, value: str) -> int:
        """A field past ``limits.max_header_fields`` in a dry run, which passes such a
        message unjudged: one that would pass for our result fields is remembered for
        removal all the same (review rev165 F1: it deferred the message for good).
        Returns how many are remembered, so that the caller can bound them."""
        self._note_result_field(txn, name, value)
        return len(txn.scratch.get(_FORGED_AR, ())) + len(txn.scratch.get(_FORGED_SPAM, ()))

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
        # A check that is off stays off (one built for its guard: the relay check).
        if settings.mode == "off":
            return "off"
        return "report" if self.config.milter.dry_run else settings.mode

    def _decide(
        self, stage: Stage, conn: Connection, event: Event, check: str, verdict: Verdict
    ) -> Decision:
        if conn.local_submission and isinstance(verdict, TempError) and verdict.for_good:
            verdict = Hit("message_too_long", f"{verdict.detail} (a local submission)")
        reply = self._render(stage, conn, event, verdict.reply_id)
        action = Action.TEMPFAIL if reply.temporary else Action.REJECT
        ending: _Ending | None = conn.txn.scratch.get(_ENDING) if conn.txn else None
        if ending is not None:
            ending.refusal = (action.value, verdict.reply_id, check, stage)
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

    def _render(self, stage: Stage, conn: Connection, event: Event, reply_id: str) -> Reply:
        """The reply as this recipient or message would get it (its domain's table)."""
        replies = self.replies
        if self.domain_replies:
            domain = self.policy.domain(conn, stage, event)
            if domain is not None:
                replies = self.domain_replies.get((domain.languages, domain.form), replies)
        return replies.render(reply_id, utf8=self.utf8_allowed(conn))

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
        would: bool = False,
    ) -> None:
        """The decision line; ``would``: it says what enforcing would answer. Lines of
        what was let pass (report mode, a temporary error passed, held or deferred
        verdicts) are at most :data:`DECISION_LINES` a session: a client gets no error
        for them, so nothing ends a session of 10,000 recipients (review rev43: 3 MB of
        log). Refusals are always logged: the MTA's error limits end such a session,
        and a ban tool reads them (rev47: passes logged first hid them)."""
        if action != "deferred":
            self.metrics.decision(verdict.reply_id, mode, action)
        if action not in (Action.REJECT.value, Action.TEMPFAIL.value):
            conn.decision_lines += 1
            if conn.decision_lines > DECISION_LINES:
                if conn.decision_lines == DECISION_LINES + 1:
                    log.info(
                        "decisions sid=%s client=%s limit=%d: the rest of this session's"
                        " lines for verdicts that let mail pass are not logged (the metrics"
                        " still count them)",
                        conn.session_id,
                        conn.client_ip,
                        DECISION_LINES,
                    )
                return
        txn = conn.txn
        fields: Sequence[tuple[str, object]] = (
            ("sid", conn.session_id),
            ("qid", txn.queue_id if txn else None),
            ("stage", stage.value),
            ("check", check),
            ("reply", verdict.reply_id),
            ("mode", mode),
            ("action", action),
            # What enforcing would answer (an override may change the table's code).
            ("would", self._would(stage, conn, event, verdict) if would else None),
            ("temp", isinstance(verdict, TempError) or None),
            ("client", conn.client_ip),
            ("helo", conn.helo),
            ("login", txn.auth_login if txn else None),
            ("from", _sender_text(txn)),
            ("rcpt", f"<{event.rcpt.text}>" if event.rcpt else event.rcpt_raw or None),
            ("detail", verdict.detail or None),
            # Why a recipient's refusal waits, or passes (see LOCAL_SUBMISSION_PASSES).
            ("submission", "local" if stage is Stage.RCPT and conn.local_submission else None),
        )
        # A scanner's outage is logged when it starts and ends: the messages it fails
        # meanwhile are INFO (review rev88 N8: a WARNING each).
        fault = verdict.reply_id == "internal_error" and not (
            isinstance(verdict, TempError) and verdict.logged
        )
        level = logging.WARNING if fault else logging.INFO
        log.log(level, "decision %s", " ".join(_kv(k, v) for k, v in fields if v is not None))

    def _would(self, stage: Stage, conn: Connection, event: Event, verdict: Verdict) -> str:
        reply = self._render(stage, conn, event, verdict.reply_id)
        return f"{reply.code} {reply.xcode}"

    def _summarize(
        self, txn: Transaction, outcome: str, reply_id: str | None, check: str, line: bool = True
    ) -> None:
        """The one line (and the metrics) of a transaction that ended, once; without
        ``line`` only the metrics."""
        ending: _Ending | None = txn.scratch.get(_ENDING)
        if ending is None or ending.done:
            return
        ending.done = True
        if reply_id is None and ending.refusal is not None and outcome == ending.refusal[0]:
            reply_id = ending.refusal[1]
        elapsed = time.monotonic() - ending.started
        # A verdict the MTA no longer waited for is counted apart from a client that
        # left (review rev218 F4): the client got the MTA's default_action, a deferral.
        counted = MTA_TIMEOUT if _UNANSWERED in txn.scratch else reply_id or ""
        self.metrics.transaction(outcome, counted, elapsed)
        if not self.summary_log or not line:
            return
        spam: SpamReport | None = txn.scratch.get(SPAM_REPORT)
        spf = spf_result(txn)
        size = txn.message.size if txn.message is not None else txn.declared_size
        fields: Sequence[tuple[str, object]] = (
            ("sid", ending.session_id),
            ("qid", txn.queue_id),
            ("outcome", outcome),
            ("reply", reply_id),
            ("check", check or None),
            ("score", f"{spam.score:.1f}" if spam else None),
            ("rules", ",".join(spam.rules) if spam and spam.rules else None),
            ("spf", spf.result if spf else None),
            ("iprev", ending.iprev),
            ("size", size),
            ("nrcpt", len(txn.recipient_domains)),
            ("policy", self._domain_table(txn)),
            ("skipped", _skips(txn, ending.session_skips)),
            ("would", _would_ids(ending.reported, txn.scratch.get(_REPORTED))),
            ("unanswered", txn.scratch.get(_UNANSWERED)),
            ("trusted", "yes" if ending.trusted else None),
            ("client", ending.client_ip),
            ("ms", round(elapsed * 1000)),
            # What the client chose, after client= (a ban tool anchors on it): who sent
            # it to whom, so an accepted message can be told apart (review rev113 F1).
            ("login", txn.auth_login),
            ("from", _sender_text(txn)),
            ("rcpt", _recipients(txn)),
        )
        _summary_line(fields)

    def _domain_table(self, txn: Transaction) -> str | None:
        table = domain_of(self.config, txn)
        return table.domain if table is not None else None


def _drop_exempt_scores(policy: Policy, conn: Connection, txn: Transaction, event: Event) -> None:
    """A DNSBL score zone's weight is part of its check's verdict: a message whose
    recipients are all exempt from that check (a recipient exemption, which MAIL FROM
    cannot know yet) does not get it added to its spam score."""
    scores: dict[str, dict[str, float]] = txn.scratch.get(DNSBL_SCORES, {})
    for check in list(scores):
        if policy.exempt(conn, check, Stage.EOM, event) is not None:
            del scores[check]
        elif policy.unsure(conn, check, stage=Stage.EOM):
            # An exemption that might have dropped them could not be decided: a
            # refusal that needs them is no permanent one (the antispam check).
            txn.scratch.setdefault(DNSBL_UNSURE_SCORES, set()).add(check)


def _unless_unsure(
    policy: Policy | None,
    conn: Connection,
    check: str,
    verdict: Verdict,
    rcpt: Address | None = None,
    *,
    stage: Stage | None = None,
) -> Verdict:
    """A permanent verdict an exemption might have spared, had its lookup not failed
    temporarily, becomes a temporary failure (the client retries; the lookup may work
    then). Whatever the check's ``on_temp_error``: a lookup of the client's own DNS
    that is slow must not turn a refusal into an accept."""
    if (
        isinstance(verdict, Hit)
        and policy is not None
        and check in policy.relevant
        and policy.unsure(conn, check, rcpt, stage=stage)
    ):
        return TempError(
            "database_temp_error",
            f"{verdict.reply_id} not answered: an exemption's lookup failed temporarily",
            firm=True,
        )
    return verdict


def _skips(txn: Transaction, session_skips: dict[str, str] | None) -> str | None:
    """``check:exemption`` for every check an exemption skipped in the session or the
    transaction, or None; a skip at RCPT for some of the accepted recipients only as
    ``check:exemption(1/3)``, and none for a skip whose recipients were all refused
    afterwards."""
    merged = {**(session_skips or {}), **txn.scratch.get(SKIPPED, {})}
    spared: dict[str, set[str]] = txn.scratch.get(SKIPPED_FOR, {})
    total = len(txn.recipient_domains)
    out = []
    for check, name in merged.items():
        share = ""
        if check in spared:
            count = sum(1 for r in txn.recipients if r.canonical_lc in spared[check])
            if not count:
                continue  # it spared a recipient refused later (review rev220 L4)
            share = f"({count}/{total})" if count < total else ""
        out.append(f"{check}:{name}{share}")
    return ",".join(out) or None


class _Step(NamedTuple):
    """One check of a stage's plan, with what is known of it before any session."""

    check: Check
    settings: CheckSettings
    #: The global mode ("enforce", "report", "off" ...).
    mode: str
    #: Whether exemptions or [domain."X"] tables may change the mode.
    relevant: bool
    #: The header fields it reads (header stage), None for all.
    fields: frozenset[str] | None
    #: Enforced in every session: no exemption or table changes its mode, and no guard
    #: is needed (:meth:`Pipeline._mode_here` is not asked; most steps of a message).
    enforced: bool


def _step(
    check: Check, settings: CheckSettings, mode: str, relevant: bool, fields: frozenset[str] | None
) -> _Step:
    return _Step(check, settings, mode, relevant, fields, mode == "enforce" and not relevant)


#: Where :meth:`Pipeline.internal_error` is called from outside a check (the driver):
#: a fault in the adapter.
ADAPTER: Final = "adapter"
INTERNAL_ERROR_PLACES: Final = frozenset({ADAPTER})
#: What refuses a message past ``limits.max_header_fields`` (:meth:`Pipeline.header_flood`).
HEADER_FLOOD: Final = "limits.max_header_fields"

#: In a local submission (Postfix's non_smtpd_milters: mail from sendmail(1), which
#: cleanup shows as localhost with port 0) no recipient can be refused: cleanup keeps
#: the whole message in its maildrop, retried for good (review rev227). What Postfix
#: decides there itself passes (an unknown local user bounces at delivery, and a local
#: submission has no recipient limit), and so does a mailbox suspended for a while: a 4xx
#: for the whole message would keep it in the maildrop, which has no lifetime, for as
#: long as the suspension (review rev230 M1); Postfix's queue has one. Any other
#: refusal of a recipient (a locked mailbox, a members-only list) refuses the whole
#: message at its end, which cleanup answers with a bounce to the local sender (review
#: rev228 M3: a report let every local process post to a private list); a fault
#: (database_temp_error, internal_error) with a 4xx, the message retried from the
#: maildrop until the fault is gone.
LOCAL_SUBMISSION_PASSES: Final = frozenset(
    {"mailbox_unavailable", "mailbox_unavailable_temp", "rcpt_limit"}
)

#: :meth:`Pipeline._mode_here`'s answer for an enforced step.
_ENFORCED: Final = ("enforce", False)


@dataclass(slots=True)
class _Ending:
    """How a transaction is going to be summed up (``txn.scratch[_ENDING]``)."""

    started: float
    session_id: str
    client_ip: IPAddress | None
    #: Checks an exemption skipped for the whole session (decided before MAIL FROM).
    session_skips: dict[str, str] | None = None
    #: The last refusal answered: (outcome, reply id, check, stage).
    refusal: tuple[str, str, str, Stage] | None = None
    iprev: str | None = None
    done: bool = False
    trusted: bool = False
    #: Reply ids report mode found at connect and HELO (every transaction's).
    reported: tuple[str, ...] = ()


#: Recipients named in a summary line; more are counted (``,+N``).
SUMMARY_RECIPIENTS: Final = 5


def _recipients(txn: Transaction) -> str | None:
    named = [f"<{r.text}>" for r in txn.recipients[:SUMMARY_RECIPIENTS]]
    named += txn.unparsed_recipients[: SUMMARY_RECIPIENTS - len(named)]
    more = len(txn.recipients) + len(txn.unparsed_recipients) - len(named)
    if more:
        named.append(f"+{more}")
    return ",".join(named) or None


def _would_ids(before: Sequence[str], ids: Sequence[str] | None) -> str | None:
    """The reply ids report mode (or a dry run) found for the transaction, once each."""
    if not before and not ids:
        return None
    return ",".join(dict.fromkeys((*before, *(ids or ()))))


#: Seconds an end of message may take before the MTA is asked whether it still waits:
#: the question costs two writes to the MTA, so it is not put to every message, and a
#: milter timeout shorter than this would defer most mail anyway.
ASK_MTA_AFTER: Final = 1.0
#: Transaction scratch key: the verdict the MTA gave up waiting for (``reject/ID``).
_UNANSWERED: Final = "pipeline.unanswered"


def _summary_line(fields: Sequence[tuple[str, object]]) -> None:
    """A ``summary`` line: key=value only (what reads them splits them so), the fields
    without a value left out."""
    log.info("summary %s", " ".join(_kv(k, v) for k, v in fields if v is not None))


def _sender_text(txn: Transaction | None) -> str | None:
    """The transaction's MAIL FROM for a log line: ``<address>``, or as the client
    wrote it when it did not parse."""
    if txn is None:
        return None
    return f"<{txn.sender.text}>" if txn.sender else txn.sender_raw


def _outcome_of(decision: Decision, txn: Transaction) -> str:
    if decision.action is Action.REJECT:
        return "reject"
    if decision.action is Action.TEMPFAIL:
        return "tempfail"
    spam: SpamReport | None = txn.scratch.get(SPAM_REPORT)
    return "tag" if spam is not None and spam.spam else "accept"


#: Verdicts enforced whatever their check's mode (Pipeline._mode_here): relaying for
#: strangers, which no setting of ours may let through.
_GUARDS: Final[dict[str, frozenset[str]]] = {"relay": frozenset({"host_denies_relay"})}


def _guarded(conn: Connection, check: str, verdict: Verdict, mode: str) -> str:
    """The mode a guarded check's verdict is answered in: "enforce" for one it guards."""
    if not isinstance(verdict, Hit) or verdict.reply_id not in _GUARDS[check]:
        return mode
    # The likeliest cause first (review rev121 F3: a domain Postfix receives mail for
    # and [site] lacks, in a dry run; the advice led with trusting the client).
    log.error(
        "sid=%s %s passed a relay from untrusted client %s (%s): refused whatever"
        " the relay check's mode and milter.dry_run say. Either Postfix receives mail"
        " for that domain and [site] does not list it (add it to site.local_domains or"
        " site.relay_domains; `smtpguard postfix-config --check` names such domains),"
        " or Postfix's relay restrictions are not those `smtpguard postfix-config`"
        " writes (run it and reload Postfix), or Postfix lets this client relay"
        " (mynetworks, a client certificate, an access map: list it in"
        " site.trusted_networks)",
        conn.session_id,
        "Postfix" if conn.mta is MTA.POSTFIX else "the MTA (its macro v names no MTA we know)",
        conn.client_ip,
        # The recipient's domain as the client wrote it (review rev168 F4: ESC
        # sequences reached the log raw, surrogates broke the syslog handler).
        _kv("detail", verdict.detail),
    )
    return "enforce"


_VERDICT_KIND: dict[type, str] = {type(None): "pass", Hit: "hit", TempError: "temperror"}
_ENDING = "pipeline.ending"
#: Observing checks of the transaction that raised while fed the message.
_BLIND = "pipeline.blind_observers"
#: Firm: an exception is no outage an operator chose to let pass (scanners report their
#: I/O failures as results, scanners/__init__), and passing let any message that made
#: the reading fail bypass the check (review rev66 F1: one Subject switched the
#: anti-spam rules off). As for a check that raises when asked (README: "Any
#: unexpected exception answers internal_error").
_BLIND_VERDICT: Final = TempError("internal_error", "failed while reading the message", firm=True)
_SEEN_AR = "pipeline.auth_results_seen"
_FORGED_AR = "pipeline.auth_results_forged"
_SEEN_SPAM = "pipeline.spam_fields_seen"
_FORGED_SPAM = "pipeline.spam_fields_forged"
_SEEN_REPORT = "pipeline.report_fields_seen"

#: ``conn.scratch[TRACE] = []`` makes the pipeline record every check's outcome there
#: (``smtpguard simulate`` shows them); absent, nothing is recorded.
TRACE = "pipeline.trace"
_REPORTED = "pipeline.report_ids"


def _outcome(verdict: Verdict | None) -> str:
    if verdict is None:
        return "pass"
    kind = "temporary error" if isinstance(verdict, TempError) else "hit"
    return f"{kind} {verdict.reply_id} ({verdict.detail})" if verdict.detail else kind


def _first_report(conn: Connection, check: str, verdict: Verdict) -> bool:
    """Report-only verdicts of content checks would repeat for every header or chunk
    once true, and a check's end-of-message step finds again what its body step found
    (review rev215 F3: an oversized message reported twice): log each check's verdict
    once per transaction, as enforcing refuses it once."""
    scratch = conn.txn.scratch if conn.txn is not None else conn.scratch
    reported: set[str] = scratch.setdefault("pipeline.reported", set())
    key = f"{settings_name(check)}/{verdict.reply_id}"
    if key in reported:
        return False
    reported.add(key)
    return True


__all__ = ["CHECK_NAMES", "CONTINUE", "Action", "Decision", "Hit", "Pipeline", "TempError"]


def _blind(conn: Connection, observer: Observing) -> None:
    """Log the exception of an observer that raised while fed the message, and
    remember it: its check answers :data:`_BLIND_VERDICT` at end of message (a
    scanner that lost the stream would find nothing in what it saw, and the message
    would pass unscanned). Called from an ``except`` block."""
    name = _observer_name(observer)
    log.exception(
        "sid=%s check=%s failed while reading the message; it reads no more of it and"
        " answers internal_error at end of message",
        conn.session_id,
        name,
    )
    if conn.txn is not None:
        conn.txn.scratch.setdefault(_BLIND, set()).add(name)


def _blinded(conn: Connection) -> set[str] | None:
    """The observing checks of the transaction that raised (see :func:`_blind`)."""
    txn = conn.txn
    return txn.scratch.get(_BLIND) if txn is not None else None


def _observer_name(observer: Observing) -> str:
    return str(getattr(observer, "name", type(observer).__name__))
