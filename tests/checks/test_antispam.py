"""AntiSpam: antispam_reject and the spam headers from the rules' and the engine's
score; the rule set and the engine are fakes."""

from __future__ import annotations

from typing import Any

import pytest

from smtpguard.checks import Event, Stage
from smtpguard.checks.antispam import SPAM_REPORT, AntiSpam, SpamReport
from smtpguard.checks.dnsbl import SCORES as DNSBL_SCORES
from smtpguard.checks.dnsbl import UNSURE_SCORES as DNSBL_UNSURE_SCORES
from smtpguard.config import default_rules_dir
from smtpguard.endpoint import Endpoint
from smtpguard.scanners import SpamEnvelope, SpamResult, SpamStatus
from smtpguard.scanners.rules import RulesResult
from smtpguard.session import Connection
from smtpguard.verdict import Hit, TempError, Verdict
from support.checks import ServicesFactory, make_conn, stream_message
from support.fakes import FakeRules, FakeSpamEngine

HEADERS = [("From", "a@example.org"), ("Subject", "offer")]
BODY = b"buy now\r\n"
RSPAMD = {"engine": "rspamd", "engine_socket": "inet:127.0.0.1:11333"}


def deliver(check: AntiSpam, **conn_args: Any) -> tuple[Verdict | None, Connection]:
    conn = make_conn(sender="a@example.org", recipients=["b@example.com"], **conn_args)
    stream_message(check, conn, HEADERS, [BODY])
    return check(conn, Event()), conn


def added(conn: Connection) -> list[tuple[str, str]]:
    assert conn.txn is not None
    return conn.txn.add_headers


def test_declaration() -> None:
    assert AntiSpam.name == "antispam"
    assert AntiSpam.stage is Stage.EOM
    assert AntiSpam.reply_ids == ("antispam_reject", "database_temp_error", "internal_error")


def test_rules_are_loaded_once_from_the_configured_file(
    make_services: ServicesFactory, rules: FakeRules, spam_engine: FakeSpamEngine
) -> None:
    AntiSpam(make_services())
    assert rules.paths == [default_rules_dir() / "antispam.toml"]
    assert spam_engine.configs == []  # engine = "none": no client


def test_the_message_streams_through_the_rules(
    make_services: ServicesFactory, rules: FakeRules
) -> None:
    verdict, conn = deliver(AntiSpam(make_services()))
    assert verdict is None
    assert added(conn) == []
    (scan,) = rules.scans
    assert scan.headers == HEADERS
    assert bytes(scan.body) == BODY


@pytest.mark.parametrize(
    ("score", "verdict", "headers"),
    [
        (5.9, None, []),
        (6.0, None, [("X-Spam-Flag", "YES"), ("X-Spam-Score", "6.0")]),
        (14.9, None, [("X-Spam-Flag", "YES"), ("X-Spam-Score", "14.9")]),
        # Flagged as well: a refusal that is not enforced (report mode, dry run)
        # delivers the message, which must not arrive less marked than 14.9.
        (
            15.0,
            Hit("antispam_reject", "score 15.0 (A, B)"),
            [("X-Spam-Flag", "YES"), ("X-Spam-Score", "15.0")],
        ),
    ],
)
def test_thresholds(
    make_services: ServicesFactory,
    rules: FakeRules,
    score: float,
    verdict: Verdict | None,
    headers: list[tuple[str, str]],
) -> None:
    rules.result = RulesResult(score, ("A", "B"))
    got, conn = deliver(AntiSpam(make_services()))
    assert got == verdict
    assert added(conn) == headers


def test_configured_thresholds_and_header_names(
    make_services: ServicesFactory, rules: FakeRules
) -> None:
    rules.result = RulesResult(2.0, ("A",))
    config = {"add_header_score": 1.0, "reject_score": 3.0, "flag_header": "X-Junk"}
    verdict, conn = deliver(AntiSpam(make_services(antispam=config)))
    assert verdict is None
    assert added(conn) == [("X-Junk", "YES"), ("X-Spam-Score", "2.0")]


def test_engine_gets_the_whole_message_and_the_envelope(
    make_services: ServicesFactory, spam_engine: FakeSpamEngine
) -> None:
    check = AntiSpam(make_services(antispam=RSPAMD))
    assert spam_engine.configs[0].engine_socket == Endpoint(host="127.0.0.1", port=11333)
    verdict, _conn = deliver(check, auth_login="alice")
    assert verdict is None
    ((message, envelope),) = spam_engine.calls
    assert message == b"From: a@example.org\r\nSubject: offer\r\n\r\nbuy now\r\n"
    assert envelope == SpamEnvelope(
        ip="198.51.100.7",
        helo="mail.example.org",
        hostname="client.example.org",
        sender="a@example.org",
        rcpts=("b@example.com",),
        queue_id=None,
        user="alice",
    )


def test_a_message_over_engine_max_bytes_is_scored_without_the_engine(
    make_services: ServicesFactory, rules: FakeRules, spam_engine: FakeSpamEngine
) -> None:
    """rspamd refuses a message over its max_message: an engine error for every such
    message (found by a scanner review). It is not sent; the rules still score it."""
    rules.result = RulesResult(7.0, ("A",))
    check = AntiSpam(make_services(antispam={**RSPAMD, "engine_max_bytes": 1024}))
    conn = make_conn(sender="a@example.org", recipients=["b@example.com"])
    stream_message(check, conn, HEADERS, [b"x" * 2000 + b"\r\n"])
    assert check(conn, Event()) is None  # 7 >= 6: flagged only, no engine error
    assert spam_engine.calls == []
    assert ("X-Spam-Score", "7.0") in added(conn)
    assert conn.txn is not None
    report = conn.txn.scratch[SPAM_REPORT]
    # One token, as tests= lists them (review rev73 F3: a phrase with spaces).
    assert report.rules == ("A", "rspamd=skipped/over_engine_max_bytes")


def test_engine_score_adds_to_the_rules(
    make_services: ServicesFactory, rules: FakeRules, spam_engine: FakeSpamEngine
) -> None:
    rules.result = RulesResult(4.0, ("A",))
    spam_engine.result = SpamResult(SpamStatus.OK, 11.5, "add header")
    verdict, _ = deliver(AntiSpam(make_services(antispam=RSPAMD)))
    assert verdict == Hit("antispam_reject", "score 15.5 (A, rspamd=11.5/add_header)")


@pytest.mark.parametrize(("engine_action", "rejected"), [(True, True), (False, False)])
def test_engine_action_reject(
    make_services: ServicesFactory,
    spam_engine: FakeSpamEngine,
    engine_action: bool,
    rejected: bool,
) -> None:
    spam_engine.result = SpamResult(SpamStatus.OK, 2.0, "reject")
    check = AntiSpam(make_services(antispam={**RSPAMD, "engine_action": engine_action}))
    verdict, conn = deliver(check)
    assert (verdict == Hit("antispam_reject", "rspamd action reject; score 2.0")) is rejected
    assert rejected or verdict is None
    # rspamd's forced rejects come with low scores: a refusal that report mode or dry
    # run lets through still arrives flagged, X-Spam-Status included.
    assert (added(conn) == [("X-Spam-Flag", "YES"), ("X-Spam-Score", "2.0")]) is rejected
    assert conn.txn is not None
    assert conn.txn.scratch[SPAM_REPORT].spam is rejected


@pytest.mark.parametrize(
    ("action", "verdict"),
    [("discard", Hit("antispam_reject", "rspamd action discard; score 2.0")), ("quarantine", None)],
)
def test_engine_discard_refuses_and_quarantine_tags(
    make_services: ServicesFactory, spam_engine: FakeSpamEngine, action: str, verdict: Hit | None
) -> None:
    """Review rev188 F2: both were delivered as "No" (rspamd's own milter discards or
    quarantines); a discard is refused, never dropped unsaid."""
    spam_engine.result = SpamResult(SpamStatus.OK, 2.0, action)
    found, conn = deliver(AntiSpam(make_services(antispam=RSPAMD)))
    assert found == verdict
    assert added(conn) == [("X-Spam-Flag", "YES"), ("X-Spam-Score", "2.0")]
    off = AntiSpam(make_services(antispam={**RSPAMD, "engine_action": False}))
    found, conn = deliver(off)
    assert found is None
    assert added(conn) == []


@pytest.mark.parametrize(
    ("action", "engine_action", "rules_score", "verdict"),
    [
        (
            "soft reject",
            True,
            1.0,
            TempError(
                "database_temp_error",
                "rspamd action soft reject; score 3.0",
                firm=True,
                fault=False,
            ),
        ),
        (
            "soft reject",
            True,
            20.0,
            Hit("antispam_reject", "score 22.0 (A, rspamd=2.0/soft_reject)"),
        ),
        ("soft reject", False, 1.0, None),
        ("greylist", True, 1.0, None),
        ("rewrite subject", True, 1.0, None),
    ],
)
def test_engine_soft_reject_defers_and_other_actions_are_reported(
    make_services: ServicesFactory,
    rules: FakeRules,
    spam_engine: FakeSpamEngine,
    action: str,
    engine_action: bool,
    rules_score: float,
    verdict: Verdict | None,
) -> None:
    """Review rev49: rspamd's soft reject (ratelimit, greylisting) was accepted."""
    rules.result = RulesResult(rules_score, ("A",))
    spam_engine.result = SpamResult(SpamStatus.OK, 2.0, action)
    check = AntiSpam(make_services(antispam={**RSPAMD, "engine_action": engine_action}))
    assert deliver(check)[0] == verdict


def test_engine_failure_is_a_temporary_error_after_the_headers(
    make_services: ServicesFactory, rules: FakeRules, spam_engine: FakeSpamEngine
) -> None:
    rules.result = RulesResult(7.0, ("A",))
    spam_engine.result = SpamResult(SpamStatus.ERROR, detail="connection refused")
    verdict, conn = deliver(AntiSpam(make_services(antispam=RSPAMD)))
    assert verdict == TempError(
        "internal_error", "spam engine: connection refused; score 7.0 (A, rspamd=failed)"
    )
    # The built-in score still applies when on_temp_error = "pass" lets the mail in,
    # and X-Spam-Status says the engine gave none (review rev73 F1: "tests=none" read
    # like a message rspamd had passed).
    assert added(conn) == [("X-Spam-Flag", "YES"), ("X-Spam-Score", "7.0")]
    assert conn.txn is not None
    assert conn.txn.scratch[SPAM_REPORT].rules == ("A", "rspamd=failed")


def test_rules_their_budget_stopped_are_a_temporary_error_not_a_clean_scan(
    make_services: ServicesFactory, rules: FakeRules
) -> None:
    """Review rev145 F1: a scan the rules' budget stopped read as a clean one
    ("tests=none", accepted): the score so far counts, tests= says so, and
    on_temp_error decides."""
    stopped = "time budget of 1 s of CPU used up"
    rules.result = RulesResult(2.5, ("WON",), complete=False, detail=stopped)
    verdict, conn = deliver(AntiSpam(make_services()))
    assert verdict == TempError(
        "internal_error", f"rules not finished: {stopped}; score 2.5 (WON, rules=incomplete)"
    )
    assert conn.txn is not None
    assert conn.txn.scratch[SPAM_REPORT].rules == ("WON", "rules=incomplete")
    # What the rules found before they stopped still refuses.
    rules.result = RulesResult(1000.0, ("GTUBE",), complete=False, detail=stopped)
    verdict, _ = deliver(AntiSpam(make_services()))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "antispam_reject"


@pytest.mark.parametrize(("on_size_limit", "firm"), [("tempfail", True), ("pass", False)])
def test_an_engine_that_drops_the_message_for_its_size_follows_on_size_limit(
    make_services: ServicesFactory,
    rules: FakeRules,
    spam_engine: FakeSpamEngine,
    on_size_limit: str,
    firm: bool,
) -> None:
    """Review rev145 F2: rspamd dropping a message over its max_message was an engine
    failure only, passed by on_temp_error = "pass" although on_size_limit said
    "tempfail"."""
    rules.result = RulesResult(1.0, ("A",))
    spam_engine.result = SpamResult(SpamStatus.ERROR, detail="reset", too_large=True)
    config = {**RSPAMD, "on_size_limit": on_size_limit}
    verdict, _ = deliver(AntiSpam(make_services(antispam=config)))
    assert verdict == TempError(
        "internal_error",
        "spam engine: reset; score 1.0 (A, rspamd=failed)",
        firm=firm,
        for_good=firm,
    )


@pytest.mark.parametrize(
    ("action", "token"),
    [
        ("no action", "rspamd=0.5/no_action"),
        ("add\x00header", "rspamd=0.5/add_header"),
        ("add,header;\r\nX-Evil: 1", "rspamd=0.5/add_header_X-Evil:_1"),
        ("sp\u00e4m", "rspamd=0.5/sp_m"),
        ("x" * 500, "rspamd=0.5/" + "x" * 40),
    ],
)
def test_the_engines_action_becomes_one_printable_token(
    make_services: ServicesFactory,
    rules: FakeRules,
    spam_engine: FakeSpamEngine,
    action: str,
    token: str,
) -> None:
    """Review rev73 F5: a NUL in rspamd's action made pymilter refuse X-Spam-Status
    and X-Spam-Report (X-Spam-Flag stayed)."""
    rules.result = RulesResult(0.0, ())
    spam_engine.result = SpamResult(SpamStatus.OK, 0.5, action)
    verdict, conn = deliver(AntiSpam(make_services(antispam=RSPAMD)))
    assert verdict is None
    assert conn.txn is not None
    assert conn.txn.scratch[SPAM_REPORT].rules == (token,)


def test_discard_closes_the_spool(
    make_services: ServicesFactory, spam_engine: FakeSpamEngine
) -> None:
    check = AntiSpam(make_services(antispam=RSPAMD))
    conn = make_conn(sender="a@example.org")
    stream_message(check, conn, HEADERS, [BODY])
    assert conn.txn is not None
    spool = conn.txn.scratch["antispam.spool"]
    check.discard(conn.txn)
    assert conn.txn.scratch == {}
    with pytest.raises(ValueError, match="closed"):
        spool.getvalue()
    assert check(conn, Event()) is None
    assert spam_engine.calls == []


def test_without_content_nothing_is_scored(
    make_services: ServicesFactory, spam_engine: FakeSpamEngine
) -> None:
    check = AntiSpam(make_services(antispam=RSPAMD))
    assert check(make_conn(sender="a@example.org"), Event()) is None
    assert check(make_conn(), Event()) is None
    assert spam_engine.calls == []


# --- DNSBL weights and per-domain thresholds ---------------------------------------------------


@pytest.mark.parametrize(
    ("rules_score", "zones", "expected"),
    [
        # Reached only with the weights an undecided exemption might drop: for now.
        (4.0, {"one.test": 6.0, "two.test": 6.0}, "database_temp_error"),
        # Reached without them: for good.
        (20.0, {"one.test": 6.0}, "antispam_reject"),
        (20.0, {"white.test": -5.0}, "antispam_reject"),
        # Reached only if a negative weight were dropped: not an accept either (review).
        (17.0, {"white.test": -5.0}, "database_temp_error"),
        # The weights go together: +6 and -5 dropped leave 15.5, still refused (review).
        (15.5, {"one.test": 6.0, "white.test": -5.0}, "antispam_reject"),
        # Not reached either way.
        (4.0, {"white.test": -5.0}, None),
    ],
)
def test_scores_an_undecided_exemption_might_drop(
    make_services: ServicesFactory,
    rules: FakeRules,
    rules_score: float,
    zones: dict[str, float],
    expected: str | None,
) -> None:
    rules.result = RulesResult(rules_score, ("A",))
    check = AntiSpam(make_services())
    conn = make_conn(sender="a@example.org", recipients=["b@example.com"])
    assert conn.txn is not None
    conn.txn.scratch[DNSBL_SCORES] = {"rbl": zones}
    conn.txn.scratch[DNSBL_UNSURE_SCORES] = {"rbl"}
    stream_message(check, conn, HEADERS, [BODY])
    verdict = check(conn, Event())
    assert (verdict.reply_id if verdict else None) == expected
    if isinstance(verdict, TempError):
        assert verdict.firm  # never passed on by on_temp_error = "pass"


def test_dnsbl_score_zone_weights_add_to_the_score(
    make_services: ServicesFactory, rules: FakeRules
) -> None:
    rules.result = RulesResult(4.0, ("A",))
    check = AntiSpam(make_services())
    conn = make_conn(sender="a@example.org", recipients=["b@example.com"])
    assert conn.txn is not None
    conn.txn.scratch[DNSBL_SCORES] = {"rbl": {"one.test": 6.0}}
    stream_message(check, conn, HEADERS, [BODY])
    assert check(conn, Event()) is None  # 10 >= 6: flagged only
    assert ("X-Spam-Score", "10.0") in added(conn)
    conn = make_conn(sender="a@example.org", recipients=["b@example.com"])
    assert conn.txn is not None
    conn.txn.scratch[DNSBL_SCORES] = {"rbl": {"one.test": 6.0}, "openrelay": {"two.test": 6.0}}
    stream_message(check, conn, HEADERS, [BODY])
    verdict = check(conn, Event())
    assert isinstance(verdict, Hit)
    assert "dnsbl:one.test=6.0, dnsbl:two.test=6.0" in verdict.detail


def test_the_recipient_domain_thresholds_apply(
    make_services: ServicesFactory, rules: FakeRules
) -> None:
    rules.result = RulesResult(20.0, ("A",))
    check = AntiSpam(
        make_services(
            site={"local_domains": ["example.com", "lenient.example"]},
            domain={"lenient.example": {"add_header_score": 10.0, "reject_score": 30.0}},
        )
    )
    verdict, _conn = deliver(check)
    assert isinstance(verdict, Hit)  # example.com: the global 15
    conn = make_conn(sender="a@example.org", recipients=["b@lenient.example"])
    stream_message(check, conn, HEADERS, [BODY])
    assert check(conn, Event()) is None
    assert ("X-Spam-Flag", "YES") in added(conn)
    # X-Spam-Status and the summary line give the threshold that tagged it.
    assert conn.txn is not None
    report: SpamReport = conn.txn.scratch[SPAM_REPORT]
    assert report.required == 10.0
    assert report.spam
