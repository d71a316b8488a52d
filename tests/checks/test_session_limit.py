"""SessionLimit: queue_unavailable for sessions the gate did not admit."""

from __future__ import annotations

from smtpguard.checks import Event, Stage
from smtpguard.checks.session_limit import SessionLimit
from smtpguard.verdict import Hit
from support.checks import ServicesFactory, make_conn


def test_declares_connect_stage_and_reply() -> None:
    assert SessionLimit.name == "session_limit"
    assert SessionLimit.stage is Stage.CONNECT
    assert SessionLimit.reply_ids == ("queue_unavailable",)


def test_admitted_session_passes(make_services: ServicesFactory) -> None:
    check = SessionLimit(make_services(limits={"max_sessions": 5}))
    assert check(make_conn(admitted=True), Event()) is None


def test_refused_session_gets_queue_unavailable(make_services: ServicesFactory) -> None:
    check = SessionLimit(make_services(limits={"max_sessions": 5}))
    verdict = check(make_conn(admitted=False), Event())
    assert verdict == Hit("queue_unavailable", "over max_sessions (5) or draining")


def test_refused_even_from_trusted_network(make_services: ServicesFactory) -> None:
    # Load shedding protects the server; trust does not exempt a session from it.
    check = SessionLimit(make_services())
    verdict = check(make_conn(admitted=False, trusted_network=True, ip="127.0.0.1"), Event())
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "queue_unavailable"
    assert "max_sessions (1000)" in verdict.detail


def test_needs_no_transaction(make_services: ServicesFactory) -> None:
    # At connect there is no MAIL FROM yet and no HELO.
    conn = make_conn(admitted=False, helo=None)
    assert conn.txn is None
    verdict = SessionLimit(make_services())(conn, Event())
    assert isinstance(verdict, Hit)
