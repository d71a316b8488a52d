"""``antispam_reject``: a spam score from the built-in rules and an optional engine.

The built-in rules (``rules/antispam.toml``) are matched as the message streams in.
With ``engine = "rspamd"`` the message is also spooled (memory, then an unlinked
temporary file) and sent to rspamd's ``/checkv2`` at end of message. The two scores are
added (the rules use rspamd's scale), and so are the weights of the DNSBL zones with
``action = "score"`` that list the client (:mod:`smtpguard.checks.dnsbl`). At
``add_header_score`` the message is accepted with ``X-Spam-Flag: YES`` and
``X-Spam-Score``; at ``reject_score`` (or rspamd's own "reject" or "discard" action, if
``engine_action``: refused, never dropped unsaid) it is refused, and rspamd's
"quarantine" tags it as spam whatever the score. rspamd's "soft reject" (its
ratelimit and greylist modules' way of saying "defer this message") is, with
``engine_action``, a deferral (``database_temp_error``, whatever ``on_temp_error``
says); its other actions ("greylist", "add header", "rewrite subject") are only
reported: smtpguard's own thresholds decide. An engine that is down gives a temporary
error, which passes by default (``on_temp_error = "pass"``): the built-in score still
applies. So does a scan of the rules that their CPU budget (``time_budget``) stopped:
its score so far counts, ``rules=incomplete`` is in tests=, and the message gets the
temporary error. ``rules=incomplete`` also marks a message whose fields past
``limits.max_header_fields`` a dry run let pass unsearched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from smtpguard.checks import Event, Services, Stage, domain_of, feed_fields, feed_sink
from smtpguard.checks.dnsbl import SCORES as DNSBL_SCORES
from smtpguard.checks.dnsbl import UNSURE_SCORES as DNSBL_UNSURE_SCORES
from smtpguard.scanners import MessageSpool, RuleStream, SpamEngine, SpamEnvelope
from smtpguard.session import Connection, Transaction
from smtpguard.verdict import Hit, TempError, Verdict

log = logging.getLogger(__name__)

#: What may not stand in a tests= token: white space, the separators of SpamAssassin's
#: list, and anything that is no printable ASCII (a NUL in an engine's answer made
#: pymilter refuse the whole field; review rev73 F5).
_TOKEN_BREAKS = re.compile(r"[^!-+\--:<-~]+")  # printable ASCII but "," and ";"
#: An engine's action is a word or two; a longer one is cut in the token.
_ACTION_CHARS = 40
#: tests= tokens for an engine that gave no score: an X-Spam-Status "No" without them
#: read like a message rspamd had passed (review rev73 F1, F3).
ENGINE_SKIPPED = "rspamd=skipped/over_engine_max_bytes"
ENGINE_FAILED = "rspamd=failed"
#: In tests= when the rules' CPU budget stopped their scan: the score is a lower bound.
RULES_INCOMPLETE = "rules=incomplete"

_RULES = "antispam.rules"
_SPOOL = "antispam.spool"
#: ``txn.scratch`` key of the :class:`SpamReport` (summary line, result headers).
SPAM_REPORT = "antispam.report"


@dataclass(frozen=True, slots=True)
class SpamReport:
    score: float
    #: ``add_header_score``: at or above it the message is tagged as spam.
    required: float
    rules: tuple[str, ...]
    #: rspamd's own action (``engine_action``) says spam, whatever the score:
    #: "reject", "discard", "quarantine".
    engine_spam: bool = False

    @property
    def spam(self) -> bool:
        return self.engine_spam or self.score >= self.required


class AntiSpam:
    name: ClassVar[str] = "antispam"
    stage: ClassVar[Stage] = Stage.EOM
    reply_ids: ClassVar[tuple[str, ...]] = (
        "antispam_reject",
        "database_temp_error",
        "internal_error",
    )

    def __init__(self, services: Services) -> None:
        self.config = services.config.antispam
        self.services_config = services.config
        scanners = services.scanners
        self.rules = scanners.rules(self.config.rules)
        self.engine = scanners.spam_engine(self.config) if self.config.engine == "rspamd" else None

    def observe(self, stage: Stage, conn: Connection, event: Event) -> None:
        txn = conn.txn
        if txn is None:
            return
        scan, spool = self._sinks(txn)
        feed_sink(scan, stage, event)
        if spool is not None:
            feed_sink(spool, stage, event)

    def observe_fields(self, conn: Connection, fields: Sequence[tuple[str, str]]) -> None:
        txn = conn.txn
        if txn is None:
            return
        scan, spool = self._sinks(txn)
        feed_fields(scan, fields)
        if spool is not None:
            feed_fields(spool, fields)

    def _sinks(self, txn: Transaction) -> tuple[RuleStream, MessageSpool | None]:
        scan: RuleStream | None = txn.scratch.get(_RULES)
        if scan is None:
            scan = txn.scratch[_RULES] = self.rules.scanner()
        spool: MessageSpool | None = txn.scratch.get(_SPOOL)
        if spool is None and self.engine is not None:
            spool = txn.scratch[_SPOOL] = MessageSpool(
                memory_cap=self.config.spool_memory, max_size=self.config.engine_max_bytes
            )
        return scan, spool

    def discard(self, txn: Transaction) -> None:
        txn.scratch.pop(_RULES, None)
        spool: MessageSpool | None = txn.scratch.pop(_SPOOL, None)
        if spool is not None:
            spool.close()

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        scan: RuleStream | None = txn.scratch.get(_RULES) if txn is not None else None
        if txn is None or scan is None:
            return None
        result = scan.finish()
        score, why = result.score, list(result.matched)
        if not result.complete or (txn.message is not None and txn.message.unread_fields):
            # Never read as a clean scan (review rev145 F1: "tests=none" on spam whose
            # body was not searched): said in tests=, and a temporary error below when
            # the budget stopped it. Fields past limits.max_header_fields, which a dry
            # run passes, are not searched either (review rev175 F1).
            why.append(RULES_INCOMPLETE)
        listed: dict[str, dict[str, float]] = txn.scratch.get(DNSBL_SCORES, {})
        unsure: set[str] = txn.scratch.get(DNSBL_UNSURE_SCORES, set())
        # An undecided exemption drops a check's weights all together or not at all:
        # the score may be lower by the positive sums, higher by the negative ones.
        may_lose = may_gain = 0.0
        for check, zones in listed.items():
            for zone, weight in zones.items():
                score += weight
                why.append(f"dnsbl:{zone}={weight:.1f}")
            if check in unsure:
                total = sum(zones.values())
                may_lose += max(total, 0.0)
                may_gain += max(-total, 0.0)
        # The transaction's [domain."X"] thresholds, when it has them.
        domain = domain_of(self.services_config, txn)
        reject_score = domain.reject_score if domain else self.config.reject_score
        add_header_score = domain.add_header_score if domain else self.config.add_header_score
        engine_error = deferred = action = ""
        unasked = firm = False
        spool = self._sendable(conn, txn, why)
        # Too large for the engine, with on_size_limit = "tempfail": answered after
        # the rules' own refusal, which is for good, not deferred to no end.
        oversize = spool if isinstance(spool, TempError) else None
        if self.engine is not None and isinstance(spool, MessageSpool):
            added, action, engine_error, unasked, firm = self._ask(
                self.engine, conn, txn, spool, why
            )
            score += added
            if action in ("reject", "discard"):
                # Discarded by rspamd's own milter; refused here, never dropped unsaid.
                self._report(txn, score, add_header_score, why, engine_spam=True)
                return Hit("antispam_reject", f"rspamd action {action}; score {score:.1f}")
            if action == "soft reject":
                deferred = f"rspamd action soft reject; score {score:.1f}"
        detail = f"score {score:.1f} ({', '.join(why) or 'no rule matched'})"
        # Quarantined by rspamd's own milter: delivered here, marked as spam.
        self._report(txn, score, add_header_score, why, engine_spam=action == "quarantine")
        if score - may_lose >= reject_score:
            return Hit("antispam_reject", detail)
        if score + may_gain >= reject_score:
            # Refused or not depends on whether the exemption applies: never for good,
            # never an accept.
            return TempError(
                "database_temp_error",
                f"{detail}: reject_score reached or not depending on DNSBL weights an"
                " exemption's failed lookup might drop",
                firm=True,
            )
        if oversize is not None:
            return oversize
        if deferred:
            # rspamd asks for the message later (review rev49: it was accepted). Not
            # an engine fault: on_temp_error = "pass" must not turn it into an accept.
            return TempError("database_temp_error", deferred, firm=True, fault=False)
        stopped = "" if result.complete else result.detail
        return _unfinished(engine_error, unasked, stopped, detail, firm=firm)

    def _sendable(
        self, conn: Connection, txn: Transaction, why: list[str]
    ) -> MessageSpool | TempError | None:
        """The message for the engine; None when there is none or it is too large for
        it (noted in ``why``); a TempError for one too large with on_size_limit =
        "tempfail"."""
        spool: MessageSpool | None = txn.scratch.get(_SPOOL)
        if spool is None or not spool.truncated:
            return spool
        # rspamd refuses it (max_message): an error every time, never a verdict.
        limit = self.config.engine_max_bytes
        if self.config.on_size_limit == "tempfail":
            # The operator's choice for what is no fault: deferred also where
            # on_temp_error = "pass" lets an engine outage through.
            return TempError(
                "internal_error",
                f"too large for the spam engine: over engine_max_bytes={limit}",
                firm=True,
                fault=False,
                for_good=True,
            )
        # Without this line the message's log reads like one the engine scored.
        log.info(
            "antispam sid=%s not sent to the spam engine, scored by the rules alone"
            " (on_size_limit = pass): over engine_max_bytes=%d",
            conn.session_id,
            limit,
        )
        why.append(ENGINE_SKIPPED)
        return None

    def _ask(
        self,
        engine: SpamEngine,
        conn: Connection,
        txn: Transaction,
        spool: MessageSpool,
        why: list[str],
    ) -> tuple[float, str, str, bool, bool]:
        """rspamd's score (noted in ``why``), its action where ``engine_action`` acts on
        it (:data:`_ACTED_ON`; else ""), what failed ("" if nothing), whether
        rspamd was not asked (an outage, logged once), and whether the failure is
        deferred whatever ``on_temp_error`` says (dropped for its size, with
        ``on_size_limit = "tempfail"``)."""
        envelope = SpamEnvelope(
            ip=str(conn.client_ip) if conn.client_ip else None,
            helo=conn.helo,
            # rspamd reads Hostname as Postfix's {client_name}: "unknown" unless
            # it resolves back (Sendmail passes forged names too).
            hostname=conn.client_name if conn.client_name_confirmed else "unknown",
            sender=txn.sender.text if txn.sender else "",
            rcpts=(
                *(r.text for r in txn.recipients),
                *(raw.strip().strip("<>") for raw in txn.unparsed_recipients),
            ),
            queue_id=txn.queue_id,
            user=txn.auth_login,
        )
        answer = engine.check(spool, envelope)
        if not answer.ok:
            # Delivered anyway when on_temp_error = "pass": say so in tests=.
            why.append(ENGINE_FAILED)
            # Dropped for its size (rspamd's max_message): on_size_limit = "tempfail"
            # defers it, as one over engine_max_bytes (review rev145 F2).
            firm = answer.too_large and self.config.on_size_limit == "tempfail"
            return 0.0, "", answer.detail or "engine failed", answer.unasked, firm
        # One token: X-Spam-Status readers split tests= at white space and commas
        # ("no action" is "no_action" there, as in rspamd's own logs).
        action = _TOKEN_BREAKS.sub("_", answer.action[:_ACTION_CHARS])
        why.append(f"rspamd={answer.score:.1f}/{action}")
        acted = self.config.engine_action and answer.action in _ACTED_ON
        return answer.score, answer.action if acted else "", "", False, False

    def _report(
        self,
        txn: Transaction,
        score: float,
        threshold: float,
        why: list[str],
        *,
        engine_spam: bool = False,
    ) -> None:
        # For the summary line and, on accepted mail, X-Spam-Status/X-Spam-Report: with
        # the threshold that tagged the message (the domain's, when it has one).
        report = txn.scratch[SPAM_REPORT] = SpamReport(score, threshold, tuple(why), engine_spam)
        if report.spam:
            # Before any refusal, not after: a refusal not enforced (report mode, dry
            # run, an exemption's undecided lookup passed on) delivers the message, and
            # the worst spam must not arrive less marked than the merely suspect.
            txn.add_headers.append((self.config.flag_header, "YES"))
            txn.add_headers.append((self.config.score_header, f"{score:.1f}"))


#: rspamd's actions ``engine_action`` acts on (review rev188 F2: "discard" and
#: "quarantine" were delivered as "No").
_ACTED_ON = frozenset({"reject", "discard", "soft reject", "quarantine"})


def _unfinished(
    engine_error: str, unasked: bool, rules_stopped: str, detail: str, *, firm: bool = False
) -> TempError | None:
    """The temporary error of a score not all of whose parts were had: the engine
    failed, or the rules' CPU budget stopped them (``rules_stopped`` says how).
    ``on_temp_error`` decides: "pass" delivers the message with the score so far, said
    on its decision line."""
    if engine_error:
        # firm only for a message the engine refused for its size with on_size_limit =
        # "tempfail": the same answer at every retry (review rev234 M1).
        return TempError(
            "internal_error",
            f"spam engine: {engine_error}; {detail}",
            firm=firm,
            logged=unasked,
            for_good=firm,
        )
    if rules_stopped:
        return TempError("internal_error", f"rules not finished: {rules_stopped}; {detail}")
    return None
