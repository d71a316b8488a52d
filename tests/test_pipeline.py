"""Pipeline: how verdicts become decisions (modes, temp errors, faults, deferral, UTF-8).

The pipeline is built from a real config file and the shipped reply table; the
backends are small fakes passed in through Services. Checks that raise or answer on a
chosen stage are added with ``pipeline.add_check``.
"""

from __future__ import annotations

import ast
import ipaddress
import logging
import shlex
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtpguard.address import AddressError, parse_path
from smtpguard.app import build_runtime, load
from smtpguard.checks import Event, Services, Stage, settings_name
from smtpguard.config import CheckSettings, load_config
from smtpguard.directory import Kind, Recipient
from smtpguard.driver import SessionDriver
from smtpguard.logsetup import MAX_LOGGED
from smtpguard.logsetup import kv as _kv
from smtpguard.metrics import OUTCOMES
from smtpguard.pipeline import (
    ASK_MTA_AFTER,
    CHECK_CLASSES,
    CHECK_NAMES,
    CONTINUE,
    DECISION_LINES,
    Action,
    Decision,
    Pipeline,
)
from smtpguard.replies import load_replies
from smtpguard.session import MTA, Connection, Transaction
from smtpguard.state import SessionGate
from smtpguard.verdict import Hit, TempError, Verdict
from support.fakes import FakeBlacklist, FakeDirectory
from support.recording_metrics import RecordingMetrics
from support.service import make_site

SITE_TOML = """\
[site]
local_domains = ["example.com"]
our_hostnames = ["mx.example.com"]

[policy]
sender_deny = ["spam.example"]
"""

DENIED_EN = ("host denies the sender.",)
DENIED_BOTH = ("host denies the sender. (拒绝发件人地址)",)
QUEUE_EN = ("queue unavailable.",)
QUEUE_BOTH = ("queue unavailable. (队列忙)",)


# --- fakes ----------------------------------------------------------------------------


class Recorder:
    """Never objects; remembers that it ran."""

    name: ClassVar[str] = "recorder"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        self.calls += 1
        return None


class Boom:
    name: ClassVar[str] = "boom"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ()

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        raise RuntimeError("boom in check")


class HeloGreylist:
    """A HELO-stage check (none ships yet) that always objects."""

    name: ClassVar[str] = "helo_greylist"
    stage: ClassVar[Stage] = Stage.HELO
    reply_ids: ClassVar[tuple[str, ...]] = ("helo_error",)

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        return Hit("helo_error", "greylisted greeting")


# --- builders -------------------------------------------------------------------------


@dataclass
class Harness:
    pipeline: Pipeline
    blacklist: FakeBlacklist
    directory: FakeDirectory


class BuildHarness(Protocol):
    def __call__(self, extra_toml: str = "") -> Harness: ...


@pytest.fixture
def build(tmp_path: Path) -> BuildHarness:
    def make(extra_toml: str = "") -> Harness:
        path = tmp_path / "smtpguard.toml"
        path.write_text(SITE_TOML + extra_toml, encoding="utf-8")
        config = load_config(path, known_checks=CHECK_NAMES)
        replies = load_replies(config.replies, config.file)
        directory = FakeDirectory(recipients={"alice@example.com": Recipient(Kind.USER)})
        blacklist = FakeBlacklist()
        services = Services(config=config, directory=directory, blacklist=blacklist)
        return Harness(Pipeline(services, replies), blacklist, directory)

    return make


def connect(
    *,
    helo: str | None = "mail.example.org",
    admitted: bool = True,
    mta: MTA = MTA.POSTFIX,
    trusted_network: bool = False,
) -> Connection:
    return Connection(
        session_id="test.1",
        client_ip=ipaddress.ip_address("198.51.100.7"),
        client_port=40000,
        client_name="client.example.org",
        mta=mta,
        helo=helo,
        trusted_network=trusted_network,
        admitted=admitted,
    )


def mail(conn: Connection, sender: str, *, smtputf8: bool = False) -> Connection:
    """Start a new transaction as the adapter does at MAIL FROM."""
    try:
        parsed, error = parse_path(sender, smtputf8=smtputf8), ""
    except AddressError as exc:
        parsed, error = None, exc.reason
    conn.txn = Transaction(
        sender=parsed,
        sender_raw=sender,
        esmtp={"SMTPUTF8": None} if smtputf8 else {},
        sender_error=error,
        smtputf8=smtputf8,
        queue_id="4XyZ12",
    )
    conn.transactions += 1
    return conn


def rcpt_event(raw: str) -> Event:
    return Event(rcpt=parse_path(raw, allow_postmaster=True), rcpt_raw=raw)


def decisions(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    """The "decision k=v ..." log lines, parsed back into dicts."""
    out = []
    for record in caplog.records:
        message = record.getMessage()
        if record.name == "smtpguard" and message.startswith("decision "):
            out.append(dict(p.split("=", 1) for p in shlex.split(message[len("decision ") :])))
    return out


@pytest.fixture(autouse=True)
def _capture_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtpguard")


def assert_reject(
    decision: Decision, reply_id: str, check: str, lines: tuple[str, ...] | None = None
) -> None:
    assert decision.reply is not None
    assert decision.reply.reply_id == reply_id
    assert decision.check == check
    assert decision.action is (Action.TEMPFAIL if decision.reply.temporary else Action.REJECT)
    if lines is not None:
        assert decision.reply.lines == lines


# --- the first decisive verdict wins --------------------------------------------------


def test_clean_mail_continues(build: BuildHarness, caplog: pytest.LogCaptureFixture) -> None:
    h = build()
    recorder = Recorder()
    h.pipeline.add_check(recorder, CheckSettings())
    decision = h.pipeline.run(Stage.MAIL, mail(connect(), "<friend@example.org>"))
    assert decision == CONTINUE
    assert recorder.calls == 1
    assert h.blacklist.calls == ["friend@example.org"]
    assert decisions(caplog) == []


def test_first_decisive_verdict_wins(build: BuildHarness) -> None:
    h = build()
    recorder = Recorder()
    h.pipeline.add_check(recorder, CheckSettings())
    # No HELO and a denied sender: helo_first runs first and decides.
    decision = h.pipeline.run(Stage.MAIL, mail(connect(helo=None), "<x@spam.example>"))
    assert decision.action is Action.REJECT
    assert_reject(decision, "helo_first", "helo_first")
    assert decision.reply is not None
    assert (decision.reply.code, decision.reply.xcode) == ("501", "5.5.1")
    # Later checks of the stage did not run.
    assert h.blacklist.calls == []
    assert recorder.calls == 0


def test_later_check_decides_when_earlier_ones_pass(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = build()
    decision = h.pipeline.run(Stage.MAIL, mail(connect(), "<x@spam.example>"))
    assert_reject(decision, "host_denies_sender", "sender_deny", DENIED_BOTH)
    assert decision.reply is not None
    assert decision.reply.wire_lines() == ["553 5.7.1 host denies the sender. (拒绝发件人地址)"]
    assert h.blacklist.calls == []
    [line] = decisions(caplog)
    assert line["stage"] == "mail"
    assert line["check"] == "sender_deny"
    assert line["reply"] == "host_denies_sender"
    assert line["mode"] == "enforce"
    assert line["action"] == "reject"
    assert line["qid"] == "4XyZ12"
    assert line["from"] == "<x@spam.example>"
    assert line["detail"] == "domain spam.example denied"


def test_rcpt_verdicts_are_immediate(build: BuildHarness) -> None:
    h = build()
    conn = mail(connect(), "<friend@example.org>")
    assert h.pipeline.run(Stage.RCPT, conn, rcpt_event("<alice@example.com>")) == CONTINUE
    relay = h.pipeline.run(Stage.RCPT, conn, rcpt_event("<x@elsewhere.example>"))
    assert_reject(relay, "host_denies_relay", "relay", ("host denies relay. (拒绝中继)",))
    unknown = h.pipeline.run(Stage.RCPT, conn, rcpt_event("<bob@example.com>"))
    assert_reject(unknown, "mailbox_unavailable", "mailbox")


# --- modes ------------------------------------------------------------------------------


def test_report_mode_logs_and_continues(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = build('[checks.sender_deny]\nmode = "report"\n')
    recorder = Recorder()
    h.pipeline.add_check(recorder, CheckSettings())
    decision = h.pipeline.run(Stage.MAIL, mail(connect(), "<x@spam.example>"))
    assert decision == CONTINUE
    # The checks after the reporting one still ran.
    assert h.blacklist.calls == ["x@spam.example"]
    assert recorder.calls == 1
    [line] = decisions(caplog)
    assert line["check"] == "sender_deny"
    assert line["reply"] == "host_denies_sender"
    assert line["mode"] == "report"
    assert line["action"] == "pass"
    assert "mode=report action=pass" in caplog.text


def test_report_mode_reports_a_message_once_per_reply(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev215 F3: an oversized message in report mode was reported by the body
    check and again at end of message (two decision lines, two counts), where
    enforcing refuses it once."""
    h = build('[limits]\nmax_message_size = 100\n\n[checks.message_size]\nmode = "report"\n')
    conn = mail(connect(), "<friend@example.org>")
    assert h.pipeline.run_headers(conn, [("Subject", "hi")]) == CONTINUE
    for _ in range(3):
        assert h.pipeline.run(Stage.BODY, conn, Event(chunk=b"x" * 78 + b"\r\n")) == CONTINUE
    assert h.pipeline.run(Stage.EOM, conn).action is Action.CONTINUE
    lines = [d for d in decisions(caplog) if d["reply"] == "message_too_long"]
    assert [(d["check"], d["mode"], d["action"]) for d in lines] == [
        ("message_size.body", "report", "pass")
    ]
    # The next transaction is reported again.
    conn = mail(conn, "<friend@example.org>")
    assert h.pipeline.run_headers(conn, [("Subject", "hi")]) == CONTINUE
    assert h.pipeline.run(Stage.BODY, conn, Event(chunk=b"x" * 300)) == CONTINUE
    assert h.pipeline.run(Stage.EOM, conn).action is Action.CONTINUE
    assert len([d for d in decisions(caplog) if d["reply"] == "message_too_long"]) == 2
    # Review rev220 L2: declared at MAIL FROM (SIZE=), reported there, not again by
    # the body step: enforcing refuses it once, at MAIL FROM.
    conn = mail(conn, "<friend@example.org>")
    assert conn.txn is not None
    conn.txn.declared_size = 300
    assert h.pipeline.run(Stage.MAIL, conn) == CONTINUE
    assert h.pipeline.run_headers(conn, [("Subject", "hi")]) == CONTINUE
    assert h.pipeline.run(Stage.BODY, conn, Event(chunk=b"x" * 300)) == CONTINUE
    assert h.pipeline.run(Stage.EOM, conn).action is Action.CONTINUE
    lines = [d for d in decisions(caplog) if d["reply"] == "message_too_long"]
    assert [d["check"] for d in lines[2:]] == ["message_size.mail"]


def test_decision_lines_are_capped_per_session(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev43, through Postfix: in report mode a client gets no error, so one
    session of 10,000 recipients wrote 10,010 lines (3 MB); the metrics still count."""
    h = build('[checks.mailbox]\nmode = "report"\n')
    conn = mail(connect(), "<a@sender.example>")
    for i in range(DECISION_LINES + 50):
        assert h.pipeline.run(Stage.RCPT, conn, rcpt_event(f"<nobody{i}@example.com>")) == CONTINUE
    assert len(decisions(caplog)) == DECISION_LINES
    capped = [r.getMessage() for r in caplog.records if "are not logged" in r.getMessage()]
    assert capped == [
        f"decisions sid={conn.session_id} client={conn.client_ip} limit={DECISION_LINES}:"
        " the rest of this session's lines for verdicts that let mail pass are not logged"
        " (the metrics still count them)"
    ]
    # A refusal after them is logged all the same (review rev47: a ban tool saw none).
    refused = h.pipeline.run(Stage.MAIL, mail(conn, "<x@spam.example>"))
    assert_reject(refused, "host_denies_sender", "sender_deny")
    assert decisions(caplog)[-1]["action"] == "reject"


def test_report_mode_lets_a_later_check_decide(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = build('[checks.sender_deny]\nmode = "report"\n')
    h.blacklist.entries.add("x@spam.example")
    decision = h.pipeline.run(Stage.MAIL, mail(connect(), "<x@spam.example>"))
    assert_reject(decision, "black_mail_address", "blacklist")
    assert [(d["check"], d["mode"], d["action"]) for d in decisions(caplog)] == [
        ("sender_deny", "report", "pass"),
        ("blacklist", "enforce", "reject"),
    ]


def test_mode_off_removes_the_check(build: BuildHarness, caplog: pytest.LogCaptureFixture) -> None:
    h = build('[checks.sender_deny]\nmode = "off"\n')
    mail_checks = [check.name for check, _settings in h.pipeline.stages[Stage.MAIL]]
    assert "sender_deny" not in mail_checks
    assert "sender_syntax" in mail_checks
    assert h.pipeline.run(Stage.MAIL, mail(connect(), "<x@spam.example>")) == CONTINUE
    assert decisions(caplog) == []


def test_mode_off_empties_a_stage(build: BuildHarness) -> None:
    assert build().pipeline.wants(Stage.CONNECT)
    h = build('[checks.session_limit]\nmode = "off"\n')
    assert not h.pipeline.wants(Stage.CONNECT)
    assert h.pipeline.wants(Stage.MAIL)


def test_dry_run_reports_everything(build: BuildHarness, caplog: pytest.LogCaptureFixture) -> None:
    h = build("[milter]\ndry_run = true\n")
    h.blacklist.entries.add("x@spam.example")
    conn = connect(helo=None, admitted=False)
    assert h.pipeline.run(Stage.CONNECT, conn) == CONTINUE
    assert conn.pending is None  # nothing deferred either
    assert h.pipeline.run(Stage.MAIL, mail(conn, "<x@spam.example>")) == CONTINUE
    assert h.pipeline.run(Stage.RCPT, conn, rcpt_event("<nobody@example.com>")) == CONTINUE
    lines = decisions(caplog)
    assert [d["check"] for d in lines] == [
        "session_limit",
        "helo_first",
        "sender_deny",
        "blacklist",
        "mailbox",
    ]
    assert all(d["mode"] == "report" and d["action"] == "pass" for d in lines)


@pytest.mark.parametrize(
    "extra",
    [
        "[milter]\ndry_run = true\n",
        '[checks.relay]\nmode = "report"\n',
        '[checks.relay]\nmode = "off"\n',
    ],
    ids=["dry_run", "report", "off"],
)
def test_a_strangers_relay_is_refused_whatever_the_relay_checks_mode(
    build: BuildHarness, caplog: pytest.LogCaptureFixture, extra: str
) -> None:
    """Review rev116 F2: a stranger's relay reaches us only when the MTA's relay
    restrictions are not postfix-config's (still relay_control = "milter"'s, which pass
    every recipient): refused, with an ERROR, whatever the mode. A trusted client and a
    local recipient pass."""
    h = build(extra)
    conn = mail(connect(), "<a@sender.example>")
    refused = h.pipeline.run(Stage.RCPT, conn, rcpt_event("<victim@gmail.example>"))
    assert_reject(refused, "host_denies_relay", "relay")
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "Postfix passed a relay from untrusted client 198.51.100.7" in error.getMessage()
    # Review rev168 F4: the client's domain written as a log value, never raw.
    caplog.clear()
    unparsed = Event(rcpt=None, rcpt_raw="<x@evil\x1b[2J\udcff.example>")
    h.pipeline.run(Stage.RCPT, conn, unparsed)
    (raw,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        "(detail='relay to evil\\x1b[2j\\udcff.example from untrusted client')" in raw.getMessage()
    )
    # Review rev121 F3: the likeliest cause, a domain [site] lacks, comes first.
    assert (
        ". Either Postfix receives mail for that domain and [site] does not list it (add it"
        " to site.local_domains or site.relay_domains;"
    ) in error.getMessage()
    assert h.pipeline.run(Stage.RCPT, conn, rcpt_event("<alice@example.com>")) == CONTINUE
    trusted = mail(connect(trusted_network=True), "<a@example.com>")
    assert h.pipeline.run(Stage.RCPT, trusted, rcpt_event("<x@gmail.example>")) == CONTINUE


def test_the_relay_guard_is_postfixs_and_off_stays_off(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev118 F1, F5: Sendmail's relay rules are its own (a site that leaves
    relaying to it, relay check off, refused every inbound message); a relay check that
    is off reports nothing in a dry run either."""
    h = build('[milter]\ndry_run = true\n\n[checks.relay]\nmode = "off"\n')
    sendmail = mail(connect(mta=MTA.SENDMAIL), "<a@sender.example>")
    assert h.pipeline.run(Stage.RCPT, sendmail, rcpt_event("<victim@gmail.example>")) == CONTINUE
    trusted = mail(connect(trusted_network=True), "<a@sender.example>")
    assert h.pipeline.run(Stage.RCPT, trusted, rcpt_event("<x@gmail.example>")) == CONTINUE
    assert not [d for d in decisions(caplog) if d["check"] == "relay"]


def test_dry_run_overrides_enforce(build: BuildHarness, caplog: pytest.LogCaptureFixture) -> None:
    h = build('[milter]\ndry_run = true\n\n[checks.sender_deny]\nmode = "enforce"\n')
    assert h.pipeline.run(Stage.MAIL, mail(connect(), "<x@spam.example>")) == CONTINUE
    [line] = decisions(caplog)
    assert (line["check"], line["mode"], line["action"]) == ("sender_deny", "report", "pass")
    # What enforcing would have answered: the reply id alone does not say (overrides).
    assert line["would"] == "553 5.7.1"


# --- temporary errors ---------------------------------------------------------------------


def test_temp_error_tempfails_by_default(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = build()
    h.blacklist.failing = True
    decision = h.pipeline.run(Stage.MAIL, mail(connect(), "<friend@example.org>"))
    assert decision.action is Action.TEMPFAIL
    assert_reject(
        decision,
        "database_temp_error",
        "blacklist",
        ("database temporary error. (临时数据访问失败)",),
    )
    [line] = decisions(caplog)
    assert line["temp"] == "True"
    assert line["action"] == "tempfail"


def test_temp_error_pass_continues(build: BuildHarness, caplog: pytest.LogCaptureFixture) -> None:
    h = build('[checks.blacklist]\non_temp_error = "pass"\n')
    h.blacklist.failing = True
    recorder = Recorder()
    h.pipeline.add_check(recorder, CheckSettings())
    decision = h.pipeline.run(Stage.MAIL, mail(connect(), "<friend@example.org>"))
    assert decision == CONTINUE
    assert recorder.calls == 1
    [line] = decisions(caplog)
    assert line["check"] == "blacklist"
    assert line["reply"] == "database_temp_error"
    assert (line["mode"], line["action"], line["temp"]) == ("enforce", "pass", "True")


def test_a_dry_run_reports_no_temp_error_that_enforcing_lets_pass(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """It would have said "would 450" for mail enforcing accepts."""
    h = build('[milter]\ndry_run = true\n\n[checks.blacklist]\non_temp_error = "pass"\n')
    h.blacklist.failing = True
    assert h.pipeline.run(Stage.MAIL, mail(connect(), "<friend@example.org>")) == CONTINUE
    [line] = decisions(caplog)
    assert (line["reply"], line["action"], line["temp"]) == ("database_temp_error", "pass", "True")
    assert "would" not in line


def test_temp_error_pass_does_not_excuse_hits(build: BuildHarness) -> None:
    h = build('[checks.blacklist]\non_temp_error = "pass"\n')
    h.blacklist.entries.add("x@example.org")
    decision = h.pipeline.run(Stage.MAIL, mail(connect(), "<x@example.org>"))
    assert_reject(decision, "black_mail_address", "blacklist")


# --- faults -------------------------------------------------------------------------------


def mail_through_boom(h: Harness, settings: CheckSettings) -> tuple[Decision, Recorder]:
    """MAIL FROM through a raising check (with ``settings``) and then a recording one."""
    recorder = Recorder()
    h.pipeline.add_check(recorder, CheckSettings(), first=True)
    h.pipeline.add_check(Boom(), settings, first=True)
    return h.pipeline.run(Stage.MAIL, mail(connect(), "<friend@example.org>")), recorder


def test_raising_check_answers_internal_error(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    decision, recorder = mail_through_boom(build(), CheckSettings())
    assert decision.action is Action.TEMPFAIL
    assert_reject(decision, "internal_error", "boom", ("out of memory. (内部错误)",))
    assert decision.reply is not None
    assert (decision.reply.code, decision.reply.xcode) == ("450", "4.3.0")
    assert recorder.calls == 0
    [fault] = [r for r in caplog.records if "raised" in r.getMessage()]
    assert fault.getMessage() == "sid=test.1 check=boom raised; answering internal_error"
    assert fault.levelno == logging.ERROR
    assert fault.exc_info is not None
    assert isinstance(fault.exc_info[1], RuntimeError)
    assert "Traceback" in caplog.text
    assert "RuntimeError: boom in check" in caplog.text
    [line] = decisions(caplog)
    assert (line["check"], line["reply"], line["action"]) == ("boom", "internal_error", "tempfail")
    assert [r.levelno for r in caplog.records if r.getMessage().startswith("decision ")] == [
        logging.WARNING
    ]


def test_raising_check_in_report_mode_continues(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    decision, recorder = mail_through_boom(build(), CheckSettings(mode="report"))
    assert decision == CONTINUE
    assert recorder.calls == 1
    assert "RuntimeError: boom in check" in caplog.text  # still logged
    assert decisions(caplog) == []


def test_raising_check_under_dry_run_continues(build: BuildHarness) -> None:
    h = build("[milter]\ndry_run = true\n")
    h.pipeline.add_check(Boom(), CheckSettings(), first=True)
    assert h.pipeline.run(Stage.MAIL, mail(connect(), "<friend@example.org>")) == CONTINUE


def test_internal_error_respects_utf8_policy(build: BuildHarness) -> None:
    h = build('[replies]\nutf8 = "never"\n')
    decision = h.pipeline.internal_error(connect(), Stage.MAIL, "adapter")
    assert_reject(decision, "internal_error", "adapter", ("out of memory.",))


@pytest.mark.parametrize("stage", [Stage.CONNECT, Stage.HELO])
def test_internal_error_at_connect_or_helo_waits_for_mail(
    build: BuildHarness, stage: Stage
) -> None:
    """The MTA reads no reply to connect and HELO (no-reply negotiated): a fault there
    tempfails the MAIL FROM that follows, as the stages' verdicts do."""
    h = build()
    conn = connect()
    assert h.pipeline.internal_error(conn, stage, "adapter") == CONTINUE
    assert conn.pending == TempError("internal_error", "exception")
    decision = h.pipeline.run(Stage.MAIL, mail(conn, "<friend@example.org>"))
    assert_reject(decision, "internal_error", "adapter")


# --- connect and HELO verdicts are deferred to MAIL -----------------------------------------


def test_connect_verdict_is_deferred_to_every_mail(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = build()
    recorder = Recorder()
    h.pipeline.add_check(recorder, CheckSettings())
    conn = connect(admitted=False)
    assert h.pipeline.run(Stage.CONNECT, conn) == CONTINUE
    assert conn.pending == Hit("queue_unavailable", "over max_sessions (1000) or draining")
    assert conn.pending_check == "session_limit"
    [deferred] = decisions(caplog)
    assert (deferred["stage"], deferred["action"]) == ("connect", "deferred")

    for sender in ("<friend@example.org>", "<other@example.org>", "<>"):
        decision = h.pipeline.run(Stage.MAIL, mail(conn, sender))
        assert decision.action is Action.TEMPFAIL
        assert_reject(decision, "queue_unavailable", "session_limit", QUEUE_BOTH)
    assert conn.transactions == 3
    # The MAIL checks never ran: the deferred verdict answered first.
    assert recorder.calls == 0
    assert h.blacklist.calls == []
    mail_lines = [d for d in decisions(caplog) if d["stage"] == "mail"]
    assert len(mail_lines) == 3
    assert all(d["check"] == "session_limit" and d["action"] == "tempfail" for d in mail_lines)


def test_deferred_reply_is_rendered_at_mail(build: BuildHarness) -> None:
    h = build('[replies]\nutf8 = "smtputf8"\n')
    conn = connect(admitted=False)
    h.pipeline.run(Stage.CONNECT, conn)
    plain = h.pipeline.run(Stage.MAIL, mail(conn, "<a@example.org>"))
    utf8 = h.pipeline.run(Stage.MAIL, mail(conn, "<a@example.org>", smtputf8=True))
    assert_reject(plain, "queue_unavailable", "session_limit", QUEUE_EN)
    assert_reject(utf8, "queue_unavailable", "session_limit", QUEUE_BOTH)


def test_admitted_connect_defers_nothing(build: BuildHarness) -> None:
    h = build()
    conn = connect()
    assert h.pipeline.run(Stage.CONNECT, conn) == CONTINUE
    assert conn.pending is None
    assert h.pipeline.run(Stage.MAIL, mail(conn, "<friend@example.org>")) == CONTINUE


def test_connect_report_mode_defers_nothing(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = build('[checks.session_limit]\nmode = "report"\n')
    conn = connect(admitted=False)
    assert h.pipeline.run(Stage.CONNECT, conn) == CONTINUE
    assert conn.pending is None
    assert h.pipeline.run(Stage.MAIL, mail(conn, "<friend@example.org>")) == CONTINUE
    [line] = decisions(caplog)
    assert (line["check"], line["mode"], line["action"]) == ("session_limit", "report", "pass")


def test_helo_verdict_is_deferred(build: BuildHarness) -> None:
    h = build()
    h.pipeline.add_check(HeloGreylist(), CheckSettings())
    conn = connect()
    assert h.pipeline.run(Stage.HELO, conn) == CONTINUE
    assert conn.pending == Hit("helo_error", "greylisted greeting")
    decision = h.pipeline.run(Stage.MAIL, mail(conn, "<friend@example.org>"))
    assert_reject(decision, "helo_error", "helo_greylist")


def test_first_deferred_verdict_is_kept_across_stages(build: BuildHarness) -> None:
    h = build()
    h.pipeline.add_check(HeloGreylist(), CheckSettings())
    conn = connect(admitted=False)
    h.pipeline.run(Stage.CONNECT, conn)
    h.pipeline.run(Stage.HELO, conn)
    assert conn.pending_check == "session_limit"
    decision = h.pipeline.run(Stage.MAIL, mail(conn, "<friend@example.org>"))
    assert_reject(decision, "queue_unavailable", "session_limit")


# --- UTF-8 in replies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "mta", "smtputf8", "lines"),
    [
        ("always", MTA.POSTFIX, False, DENIED_BOTH),
        ("always", MTA.POSTFIX, True, DENIED_BOTH),
        ("always", MTA.UNKNOWN, False, DENIED_BOTH),
        ("never", MTA.POSTFIX, True, DENIED_EN),
        ("never", MTA.POSTFIX, False, DENIED_EN),
        ("smtputf8", MTA.POSTFIX, True, DENIED_BOTH),
        ("smtputf8", MTA.POSTFIX, False, DENIED_EN),
        ("always", MTA.SENDMAIL, False, DENIED_EN),
        ("always", MTA.SENDMAIL, True, DENIED_EN),
        ("smtputf8", MTA.SENDMAIL, True, DENIED_EN),
    ],
)
def test_utf8_policy(
    build: BuildHarness, policy: str, mta: MTA, smtputf8: bool, lines: tuple[str, ...]
) -> None:
    h = build(f'[replies]\nutf8 = "{policy}"\n')
    conn = mail(connect(mta=mta), "<x@spam.example>", smtputf8=smtputf8)
    decision = h.pipeline.run(Stage.MAIL, conn)
    assert_reject(decision, "host_denies_sender", "sender_deny", lines)
    assert decision.reply is not None
    assert (decision.reply.code, decision.reply.xcode) == ("553", "5.7.1")
    assert all(line.isascii() for line in decision.reply.lines) is (lines == DENIED_EN)


def test_utf8_smtputf8_policy_without_transaction(build: BuildHarness) -> None:
    h = build('[replies]\nutf8 = "smtputf8"\n')
    assert h.pipeline.utf8_allowed(connect()) is False
    assert h.pipeline.utf8_allowed(mail(connect(), "<a@example.org>", smtputf8=True)) is True


def test_per_language_form(build: BuildHarness) -> None:
    h = build('[replies]\nform = "per_language"\n')
    decision = h.pipeline.run(Stage.MAIL, mail(connect(), "<x@spam.example>"))
    assert_reject(
        decision, "host_denies_sender", "sender_deny", ("host denies the sender.", "拒绝发件人地址")
    )
    assert decision.reply is not None
    assert decision.reply.wire_lines() == [
        "553-5.7.1 host denies the sender.",
        "553 5.7.1 拒绝发件人地址",
    ]


def test_report_mode_can_stamp_a_header(tmp_path: Path) -> None:

    site = make_site(
        tmp_path,
        {
            "milter": {"report_header": "X-Smtpguard-Report"},
            "checks": {"sender_deny": {"mode": "report"}},
        },
    )
    runtime = build_runtime(load(site.config))

    driver = SessionDriver(runtime, SessionGate(10), {"v": "Postfix 3.7.11"}.get)
    driver.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 25))
    driver.helo("mail.sender.example")
    assert driver.mail("<spammer@bad.example>", ()).action is Action.CONTINUE
    assert driver.rcpt("<alice@example.com>").action is Action.CONTINUE
    driver.data()
    driver.eoh()
    decision = driver.eom()
    assert ("X-Smtpguard-Report", "host_denies_sender") in decision.headers


def dry_run_driver(tmp_path: Path, extra: dict[str, object], gate: int = 10) -> SessionDriver:
    config = {"milter": {"report_header": "X-Smtpguard-Report", "dry_run": True}, **extra}
    runtime = build_runtime(load(make_site(tmp_path, config).config))
    driver = SessionDriver(runtime, SessionGate(gate), {"v": "Postfix 3.7.11"}.get)
    driver.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 25))
    driver.helo("mail.sender.example")
    return driver


def reported(driver: SessionDriver, *rcpts: str) -> str | None:
    """One message to ``rcpts`` through the driver: its report header."""
    assert driver.mail("<friend@sender.example>", ()).action is Action.CONTINUE
    for rcpt in rcpts:
        assert driver.rcpt(rcpt).action is Action.CONTINUE
    driver.data()
    driver.eoh()
    return dict(driver.eom().headers).get("X-Smtpguard-Report")


def test_a_connect_verdict_reaches_every_messages_report_header(tmp_path: Path) -> None:
    """Over max_sessions: enforcing would refuse at every MAIL FROM of the session."""
    driver = dry_run_driver(tmp_path, {}, gate=0)
    assert reported(driver, "<alice@example.com>") == "queue_unavailable"
    assert reported(driver, "<alice@example.com>") == "queue_unavailable"


def test_a_dry_run_reports_a_held_verdict_per_recipient_as_enforcing_would(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """postmaster@ is exempt from the DNSBL: enforcing holds its verdict at MAIL FROM
    and refuses only the other recipients; the dry run said "refused at MAIL FROM"."""
    listed = tmp_path / "blocked.txt"
    listed.write_text("198.51.100.7\n", encoding="utf-8")
    extra = {
        "policy": {"postmaster_skip": ["all-content", "rbl", "mailbox"]},
        "dnsbl": {"local": [{"file": str(listed), "kind": "rbl"}]},
    }
    driver = dry_run_driver(tmp_path, extra)
    assert reported(driver, "<postmaster@example.com>") is None
    assert [(d["stage"], d["action"]) for d in decisions(caplog)] == [("mail", "held")]
    caplog.clear()
    assert reported(driver, "<postmaster@example.com>", "<alice@example.com>") == "rbl_deny"
    assert [(d["stage"], d["action"], d.get("rcpt")) for d in decisions(caplog)] == [
        ("mail", "held", None),
        ("rcpt", "pass", "<alice@example.com>"),
    ]


def test_a_held_report_is_not_made_for_a_recipient_refused_all_the_same(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev153 F4: the DNSBL only reporting, its verdict held for the recipients
    (postmaster@ is exempt from it): a recipient the mailbox check then refused was
    reported all the same, and the copy delivered to postmaster@ alone carried
    rbl_deny, which enforcing would not have refused."""
    listed = tmp_path / "blocked.txt"
    listed.write_text("198.51.100.7\n", encoding="utf-8")
    config = {
        "milter": {"report_header": "X-Smtpguard-Report"},
        "policy": {"postmaster_skip": ["all-content", "rbl"]},
        "dnsbl": {"local": [{"file": str(listed), "kind": "rbl"}]},
        "checks": {"rbl": {"mode": "report"}},
    }
    runtime = build_runtime(load(make_site(tmp_path, config).config))
    driver = SessionDriver(runtime, SessionGate(10), {"v": "Postfix 3.7.11"}.get)
    driver.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 25))
    driver.helo("mail.sender.example")
    assert driver.mail("<friend@sender.example>", ()).action is Action.CONTINUE
    assert driver.rcpt("<postmaster@example.com>").action is Action.CONTINUE
    refused = driver.rcpt("<nobody@example.com>")
    assert refused.reply is not None
    assert refused.reply.reply_id == "mailbox_unavailable"
    driver.data()
    driver.eoh()
    assert "X-Smtpguard-Report" not in dict(driver.eom().headers)
    assert not [d for d in decisions(caplog) if d["check"] == "rbl" and d["stage"] == "rcpt"]
    # A recipient the message does go to is reported.
    assert reported(driver, "<alice@example.com>") == "rbl_deny"


def test_a_long_report_header_is_folded(tmp_path: Path) -> None:
    """RFC 5322 §2.1.1: lines of at most 78 characters where the text allows."""
    site = make_site(
        tmp_path,
        {"milter": {"report_header": "X-Smtpguard-Report", "dry_run": True}},
    )
    driver = SessionDriver(
        build_runtime(load(site.config)), SessionGate(10), {"v": "Postfix 3.7.11"}.get
    )
    driver.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 25))
    driver.helo("localhost")
    assert driver.mail("<spammer@bad.example>", ()).action is Action.CONTINUE
    # Unknown, locked, over max_rcpt, suspended (a stranger's relay would be refused
    # whatever the mode: test_a_strangers_relay_is_refused_whatever_the_relay_checks_mode).
    for rcpt in ("nobody", "alice", "bob", "carol", "dave"):
        assert driver.rcpt(f"<{rcpt}@example.com>").action is Action.CONTINUE
    driver.data()
    driver.eoh()
    value = dict(driver.eom().headers)["X-Smtpguard-Report"]
    lines = f"X-Smtpguard-Report: {value}".split("\n")
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith("\t") for line in lines[1:])
    unfolded = " ".join(line.strip() for line in value.split("\n"))
    assert unfolded == (
        "helo_error, host_denies_sender, mailbox_unavailable, user_locked, rcpt_limit,"
        " mailbox_unavailable_temp"
    )


@pytest.mark.parametrize("sender", ["<spammer@bad.example>", "<friend@sender.example>"])
def test_a_senders_own_report_header_is_removed(tmp_path: Path, sender: str) -> None:
    """Whether or not report mode noted anything, a copy the sender wrote would read as
    smtpguard's own note: it is removed, in any case of its name."""
    site = make_site(
        tmp_path,
        {
            "milter": {"report_header": "X-Smtpguard-Report"},
            "checks": {"sender_deny": {"mode": "report"}},
        },
    )
    driver = SessionDriver(
        build_runtime(load(site.config)), SessionGate(10), {"v": "Postfix 3.7.11"}.get
    )
    driver.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 25))
    driver.helo("mail.sender.example")
    driver.mail(sender, ())
    driver.rcpt("<alice@example.com>")
    driver.data()
    driver.header("x-smtpguard-report", "none")
    driver.header("Subject", "hi")
    driver.header("X-Smtpguard-Report", "none (forged)")
    decision = driver.eom()
    assert decision.action is Action.CONTINUE
    assert decision.remove_headers == (("X-Smtpguard-Report", 2), ("X-Smtpguard-Report", 1))


# --- end of headers stood in for --------------------------------------------------------


class StageLog:
    """An observing EOM check that records the content stages it is fed."""

    name: ClassVar[str] = "stage_log"
    stage: ClassVar[Stage] = Stage.EOM
    reply_ids: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.seen: list[str] = []

    def observe(self, stage: Stage, conn: Connection, event: Event) -> None:
        self.seen.append(stage.value)

    def discard(self, txn: Transaction) -> None:
        pass

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        return None


@pytest.mark.parametrize(
    ("steps", "seen"),
    [
        # SMFIP_NOEOH: the first body chunk stands for the end of headers ...
        (["header", "body", "body", "eom"], ["header", "eoh", "body", "body", "eom"]),
        # ... or the end of a message without a body ...
        (["header", "eom"], ["header", "eoh", "eom"]),
        # ... and an MTA that sends it anyway gets it once.
        (["header", "eoh", "body", "eom"], ["header", "eoh", "body", "eom"]),
    ],
)
def test_end_of_headers_is_observed_once(
    build: BuildHarness, steps: list[str], seen: list[str]
) -> None:
    h = build()
    log = StageLog()
    h.pipeline.add_check(log, CheckSettings())
    conn = mail(connect(), "<friend@example.org>")
    events = {
        "header": Event(header=("Subject", "hi")),
        "body": Event(chunk=b"line\r\n"),
    }
    for step in steps:
        decision = h.pipeline.run(Stage(step), conn, events.get(step))
        assert decision.action is Action.CONTINUE
    assert log.seen == seen
    # Header line, blank line, body: the blank line is counted once.
    assert conn.txn is not None
    assert conn.txn.message is not None
    body = len(b"line\r\n") * steps.count("body")
    assert conn.txn.message.size == len(b"Subject: hi\r\n") + 2 + body


class FieldLog:
    """A header check that reads two fields and records the ones it is called for."""

    name: ClassVar[str] = "field_log"
    stage: ClassVar[Stage] = Stage.HEADER
    reply_ids: ClassVar[tuple[str, ...]] = ("fake_router",)
    header_names: ClassVar[frozenset[str]] = frozenset({"x-mark", "x-trace"})

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        assert event.header is not None
        self.seen.append(event.header[0])
        return Hit("fake_router", "refused") if event.header[1] == "bad" else None


class BatchLog(StageLog):
    """An observing check that takes the batched header fields at once."""

    name: ClassVar[str] = "batch_log"

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    def observe_fields(self, conn: Connection, fields: Sequence[tuple[str, str]]) -> None:
        self.batches.append([name for name, _ in fields])


def test_observers_get_the_batched_fields_up_to_a_header_verdict(build: BuildHarness) -> None:
    h = build()
    fields, batch, single = FieldLog(), BatchLog(), StageLog()
    for check in (fields, batch, single):
        h.pipeline.add_check(check, CheckSettings())
    conn = mail(connect(), "<friend@example.org>")
    headers = [("Subject", "hi"), ("X-Trace", "bad"), ("X-Mark", "a"), ("To", "b@example.org")]
    assert h.pipeline.run_headers(conn, headers) == CONTINUE
    # The verdict on X-Trace waits for the end of message; what follows it is neither
    # judged nor observed, as when each field is run on its own.
    assert fields.seen == ["X-Trace"]
    assert batch.batches == [["Subject", "X-Trace"]]
    assert batch.seen == []  # fed through observe_fields only
    assert single.seen == ["header", "header"]  # an observer without it: field by field
    assert conn.txn is not None
    assert conn.txn.message is not None
    assert conn.txn.message.headers == 2
    # Only their size counts, for the summary line (review rev174 F1).
    whole = b"Subject: hi\r\nX-Trace: bad\r\nX-Mark: a\r\nTo: b@example.org\r\n"
    assert conn.txn.message.size == len(whole)


def test_a_header_check_is_called_for_the_fields_it_reads_only(build: BuildHarness) -> None:
    h = build()
    fields = FieldLog()
    everything = StageLog()
    h.pipeline.add_check(fields, CheckSettings())
    h.pipeline.add_check(everything, CheckSettings())
    conn = mail(connect(), "<friend@example.org>")
    headers = [("Subject", "bad"), ("X-MARK", "a"), ("X-Other", "x"), ("X-Trace", "bad")]
    decision = h.pipeline.run_headers(conn, headers)
    # Names compare case-insensitively; a verdict on a field it reads still counts.
    assert fields.seen == ["X-MARK", "X-Trace"]
    assert everything.seen == ["header"] * 4
    assert decision == CONTINUE
    assert conn.txn is not None
    assert conn.txn.pending == Hit("fake_router", "refused")
    assert conn.txn.pending_check == "field_log"


# --- check names --------------------------------------------------------------------------


def test_every_check_name_is_unique() -> None:
    """Logs, metrics and traces name a check: two classes must never share a name."""
    names = [cls.name for cls in CHECK_CLASSES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_check_names_are_their_config_table_and_a_part() -> None:
    for cls in CHECK_CLASSES:
        family, dot, part = cls.name.partition(".")
        assert settings_name(cls.name) == family in CHECK_NAMES
        assert not dot or part == cls.stage.value, cls.name
    # The [checks.NAME] tables the sample config documents are still the names.
    for family in ("message_size", "line_syntax", "attachment_size", "bulk"):
        assert family in CHECK_NAMES


@pytest.mark.parametrize(
    ("family", "parts"),
    [
        ("message_size", {"message_size.mail", "message_size.body", "message_size.eom"}),
        ("line_syntax", {"line_syntax.header", "line_syntax.body"}),
        ("attachment_size", {"attachment_size.body", "attachment_size.eom"}),
        ("bulk", {"bulk.mail", "bulk.eom"}),
    ],
)
def test_one_config_table_sets_every_part_of_a_family(
    build: BuildHarness, family: str, parts: set[str]
) -> None:
    def running(h: Harness) -> set[str]:
        return {check.name for checks in h.pipeline.stages.values() for check, _ in checks}

    assert parts <= running(build())
    h = build(f"[checks.{family}]\nmode = 'report'\non_temp_error = 'pass'\n")
    modes = {
        step.check.name: (step.mode, step.settings.on_temp_error)
        for plan in h.pipeline.plan.values()
        for step in plan
    }
    assert all(modes[part] == ("report", "pass") for part in parts)
    assert not parts & running(build(f"[checks.{family}]\nmode = 'off'\n"))


def test_the_log_names_the_part_that_decided(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = build("[limits]\nmax_message_size = 100\n")
    conn = mail(connect(), "<friend@example.org>")
    assert conn.txn is not None
    conn.txn.declared_size = 101
    decision = h.pipeline.run(Stage.MAIL, conn)
    assert_reject(decision, "message_too_long", "message_size.mail")
    assert decisions(caplog)[-1]["check"] == "message_size.mail"


# --- summary line and metrics (issue 13) -------------------------------------------------


def summaries(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    out = []
    for record in caplog.records:
        message = record.getMessage()
        if record.name == "smtpguard" and message.startswith("summary "):
            out.append(dict(p.split("=", 1) for p in shlex.split(message[len("summary ") :])))
    return out


def metered_driver(
    tmp_path: Path, extra: dict[str, object] | None = None
) -> tuple[SessionDriver, RecordingMetrics]:
    metrics = RecordingMetrics()
    runtime = build_runtime(load(make_site(tmp_path, extra).config), metrics=metrics)
    driver = SessionDriver(runtime, SessionGate(10), {"v": "Postfix 3.7.11", "i": "QID1"}.get)
    driver.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 25))
    driver.helo("mail.sender.example")
    return driver, metrics


class SlowEom:
    """An end-of-message check that takes as long as the pipeline waits before asking
    whether the MTA still listens."""

    name: ClassVar[str] = "slow_eom"
    stage: ClassVar[Stage] = Stage.EOM
    reply_ids: ClassVar[tuple[str, ...]] = ()

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        time.sleep(ASK_MTA_AFTER)
        return None


def test_a_verdict_the_mta_gave_up_on_is_counted_apart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev218 F4: counted as an abort with reply_id "none", the same series as
    a client that left, though the client was deferred by the MTA's default_action."""
    driver, metrics = metered_driver(tmp_path)
    driver.rt.pipeline.add_check(SlowEom(), CheckSettings())
    assert driver.mail("<friend@sender.example>", ()).action is Action.CONTINUE
    assert driver.rcpt("<alice@example.com>").action is Action.CONTINUE
    driver.data()
    driver.header("Subject", "hi")
    driver.eom(listening=lambda: False)
    driver.close()
    assert metrics.named("transaction") == [("abort", "mta_timeout")]
    [summary] = summaries(caplog)
    assert (summary["outcome"], summary["unanswered"]) == ("abort", "accept")
    assert "reply" not in summary


def test_every_transaction_outcome_is_counted_and_summed_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    driver, metrics = metered_driver(tmp_path)
    assert driver.mail("<friend@sender.example>", ()).action is Action.CONTINUE
    assert driver.rcpt("<alice@example.com>").action is Action.CONTINUE
    driver.data()
    driver.header("Subject", "hi")
    assert driver.eom().action is Action.CONTINUE
    assert driver.mail("<spammer@bad.example>", ()).action is Action.REJECT
    driver.close()
    assert metrics.named("transaction") == [("accept", ""), ("reject", "host_denies_sender")]
    assert metrics.named("session_opened") == [()]
    assert metrics.named("session_closed") == [()]
    assert ("sender_deny", "hit") in metrics.named("check_verdict")
    assert ("relay", "pass") in metrics.named("check_verdict")
    accepted, refused = summaries(caplog)
    assert accepted["outcome"] == "accept"
    assert (accepted["qid"], accepted["nrcpt"], accepted["sid"]) == ("QID1", "1", refused["sid"])
    assert (refused["outcome"], refused["reply"], refused["check"]) == (
        "reject",
        "host_denies_sender",
        "sender_deny",
    )


def test_a_fault_at_end_of_message_is_summed_up_as_tempfail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    driver, metrics = metered_driver(tmp_path)
    driver.mail("<friend@sender.example>", ())
    driver.rcpt("<alice@example.com>")
    driver.data()
    # What the adapter answers when a callback raises.
    assert driver.internal_error(Stage.EOM).action is Action.TEMPFAIL
    driver.close()
    assert metrics.named("transaction") == [("tempfail", "internal_error")]
    (line,) = summaries(caplog)
    assert (line["outcome"], line["reply"]) == ("tempfail", "internal_error")


def test_a_raising_check_is_counted_as_error(build: BuildHarness) -> None:
    h = build()
    metrics = RecordingMetrics()
    h.pipeline.metrics, h.pipeline.timed = metrics, True
    h.pipeline.add_check(Boom(), CheckSettings(), first=True)
    h.pipeline.run(Stage.MAIL, mail(connect(), "<a@example.org>"))
    assert metrics.named("check_verdict") == [("boom", "error")]
    assert metrics.named("transaction") == [("tempfail", "internal_error")]


def test_summary_outcomes_are_the_documented_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    driver, _metrics = metered_driver(tmp_path)
    driver.mail("<friend@sender.example>", ())
    driver.rcpt("<alice@example.com>")
    driver.abort()
    driver.close()
    assert [s["outcome"] for s in summaries(caplog)] == ["abort"]
    assert {s["outcome"] for s in summaries(caplog)} <= set(OUTCOMES)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("accept", "k=accept"),
        (1178, "k=1178"),
        ("", "k=''"),
        ("a b", "k='a b'"),
        ('say "hi"', "k='say \"hi\"'"),
        ("x=y", "k='x=y'"),
        ("back\\slash", "k='back\\\\slash'"),
        ("bell\x07", "k='bell\\x07'"),
        # A lone quote opened a quote that ran into the next field (found by review).
        ("'x", 'k="\'x"'),
        # A client's value never reads as a field, even to a regex blind to quotes.
        (
            '<"q client=203.0.113.9 reply=rbl_deny "@x>',
            "k='<\"q client\\x3d203.0.113.9 reply\\x3drbl_deny \"@x>'",
        ),
        ("SRS0=HHH=TT=example.org=a@b.example", "k='SRS0=HHH=TT=example.org=a@b.example'"),
    ],
)
def test_log_values_that_would_break_key_value_parsing_are_quoted(
    value: object, shown: str
) -> None:
    assert _kv("k", value) == shown


@given(st.text(max_size=30))
@example("a'b\"c")
@example('it\'s "x" y=1')
@example("a\\")
@example("\\'")
def test_a_value_with_both_quotes_stays_one_field_to_a_shell_style_reader(value: str) -> None:
    """One field to a shell-style reader (shlex), and the value again to Python's."""
    shown = _kv("k", value)
    (field,) = shlex.split(shown)
    assert field.startswith("k=")
    if shown[2:3] in ("'", '"'):
        # \x3d (a key= inside) is = again to Python.
        assert ast.literal_eval(shown[2:]) == value
    else:
        assert shown[2:] == value


@given(st.text(min_size=200, max_size=3000))
@example("\udcff" * 2000)
@example("x client=1.2.3.4 " * 200)
@example("ab'c\"d" * 300)
def test_a_long_value_is_cut_and_stays_one_field(value: str) -> None:
    """Review rev113 F5: a 2 KB HELO of 8-bit octets made a 12 KB line. At most
    MAX_LOGGED characters once written, still one field, what is left out counted."""
    shown = _kv("k", value)
    assert len(shown) <= len("k=") + MAX_LOGGED
    assert len(shlex.split(shown)) == 1
    text = ast.literal_eval(shown[2:]) if shown[2:3] in ("'", '"') else shown[2:]
    if text != value:
        kept, _, left_out = text.rpartition("...(+")
        assert value.startswith(kept)
        assert left_out == f"{len(value) - len(kept)})"


class BrokenScanner(StageLog):
    """An observing EOM check whose stream breaks at the first body chunk; like a
    scanner that lost its stream, it would find nothing at the end."""

    name: ClassVar[str] = "broken_scanner"

    def observe(self, stage: Stage, conn: Connection, event: Event) -> None:
        if stage is Stage.BODY:
            raise OSError("scanner stream lost")
        super().observe(stage, conn, event)


@pytest.mark.parametrize("on_temp_error", ["tempfail", "pass"])
def test_an_observer_that_fails_answers_a_temporary_error_not_a_pass(
    build: BuildHarness, on_temp_error: Literal["tempfail", "pass"]
) -> None:
    """Whatever on_temp_error says (review rev66 F1: with "pass", one header field
    that made the anti-spam rules raise let the message through unscanned)."""
    h = build()
    scanner = BrokenScanner()
    h.pipeline.add_check(scanner, CheckSettings(on_temp_error=on_temp_error))
    conn = mail(connect(), "<friend@example.org>")
    assert h.pipeline.run_headers(conn, [("Subject", "hi")]) == CONTINUE
    assert h.pipeline.run(Stage.BODY, conn, Event(chunk=b"X5O!P%@AP\r\n")) == CONTINUE
    decision = h.pipeline.run(Stage.EOM, conn)
    assert decision.action is Action.TEMPFAIL
    assert decision.reply is not None
    assert decision.reply.reply_id == "internal_error"
    assert decision.check == "broken_scanner"
    # The next transaction starts with a working stream.
    conn = mail(conn, "<friend@example.org>")
    assert h.pipeline.run(Stage.EOM, conn).action is Action.CONTINUE


class CountingBrokenScanner(StageLog):
    """An observing EOM check whose stream breaks at the first body chunk, and which
    records every stage it is fed."""

    name: ClassVar[str] = "counting_broken_scanner"

    def observe(self, stage: Stage, conn: Connection, event: Event) -> None:
        super().observe(stage, conn, event)
        if stage is Stage.BODY:
            raise OSError("scanner stream lost")


def test_an_observer_that_failed_is_fed_no_more_of_the_message(
    build: BuildHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev80 F4: a scanner whose stream broke logged a traceback for every
    later body chunk of the message, naming the check by its Python repr. It is
    logged once, by its check's name, and fed nothing more of that message; the next
    transaction feeds it again."""
    h = build()
    scanner = CountingBrokenScanner()
    h.pipeline.add_check(scanner, CheckSettings())
    conn = mail(connect(), "<friend@example.org>")
    assert h.pipeline.run_headers(conn, [("Subject", "hi")]) == CONTINUE
    for _ in range(5):
        assert h.pipeline.run(Stage.BODY, conn, Event(chunk=b"chunk\r\n")) == CONTINUE
    decision = h.pipeline.run(Stage.EOM, conn)
    assert decision.action is Action.TEMPFAIL
    assert scanner.seen == ["header", "eoh", "body"]
    failed = [r for r in caplog.records if "reads no more of it" in r.getMessage()]
    assert len(failed) == 1
    assert "check=counting_broken_scanner failed" in failed[0].getMessage()
    assert failed[0].exc_info is not None
    conn = mail(conn, "<friend@example.org>")
    assert h.pipeline.run(Stage.BODY, conn, Event(chunk=b"x\r\n")) == CONTINUE
    assert scanner.seen == ["header", "eoh", "body", "eoh", "body"]


def test_a_raising_check_counts_as_a_backend_error_once(tmp_path: Path) -> None:
    """An exception answers internal_error; alerts on backend errors must see it."""
    driver, metrics = metered_driver(tmp_path)
    driver.rt.pipeline.add_check(Boom(), CheckSettings(), first=True)
    assert driver.mail("<friend@sender.example>", ()).action is Action.TEMPFAIL
    assert metrics.named("backend_error") == [("boom",)]


def test_a_report_mode_content_temp_error_counts_once_per_message(tmp_path: Path) -> None:
    """A blind content check answers a temporary error for every body chunk: in report
    mode it was counted (and with on_temp_error = pass logged) once per chunk."""
    driver, metrics = metered_driver(tmp_path, {"milter": {"dry_run": True}})
    driver.rt.pipeline.add_check(BodyTempError(), CheckSettings(), first=True)
    assert driver.mail("<friend@sender.example>", ()).action is Action.CONTINUE
    assert driver.rcpt("<alice@example.com>").action is Action.CONTINUE
    driver.data()
    driver.eoh()
    for _ in range(5):
        driver.body(b"x" * 100)
    assert driver.eom().action is Action.CONTINUE
    assert metrics.named("backend_error") == [("body_temp",)]


class BodyTempError:
    name: ClassVar[str] = "body_temp"
    stage: ClassVar[Stage] = Stage.BODY
    reply_ids: ClassVar[tuple[str, ...]] = ("database_temp_error",)

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        return TempError("database_temp_error", "backend down")


class AskedDeferral:
    """A deferral asked for (rspamd's soft reject, on_size_limit): nothing failed."""

    name: ClassVar[str] = "asked"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("database_temp_error",)

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        return TempError("database_temp_error", "later, please", firm=True, fault=False)


def test_a_deferral_asked_for_is_no_backend_error(tmp_path: Path) -> None:
    """Review rev51: every rspamd soft reject counted as a backend error and tripped
    SmtpguardBackendErrors on a healthy service."""
    driver, metrics = metered_driver(tmp_path)
    driver.rt.pipeline.add_check(AskedDeferral(), CheckSettings(on_temp_error="pass"), first=True)
    decision = driver.mail("<friend@sender.example>", ())
    assert decision.action is Action.TEMPFAIL
    assert decision.reply is not None
    assert decision.reply.reply_id == "database_temp_error"
    assert metrics.named("backend_error") == []
