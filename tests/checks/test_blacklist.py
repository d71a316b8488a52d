"""DynamicBlacklist: black_mail_address from the state store, database_temp_error."""

from __future__ import annotations

import pytest

from smtpguard.checks import Event, Stage
from smtpguard.checks.blacklist import DynamicBlacklist
from smtpguard.session import Connection
from smtpguard.verdict import Hit, TempError
from support.checks import ServicesFactory, make_conn
from support.fakes import FakeBlacklist


def test_declares_mail_stage_and_replies() -> None:
    assert DynamicBlacklist.stage is Stage.MAIL
    assert set(DynamicBlacklist.reply_ids) == {"black_mail_address", "database_temp_error"}


def test_listed_address(make_services: ServicesFactory, blacklist: FakeBlacklist) -> None:
    blacklist.entries.add("spammer@example.org")
    check = DynamicBlacklist(make_services())
    verdict = check(make_conn(sender="Spammer@Example.ORG"), Event())
    assert verdict == Hit("black_mail_address", "listed as spammer@example.org")
    # The check hands over the address as given; the store compares case-insensitively.
    assert blacklist.calls == ["Spammer@Example.ORG"]


def test_listed_domain(make_services: ServicesFactory, blacklist: FakeBlacklist) -> None:
    blacklist.entries.add("@spam.example")
    verdict = DynamicBlacklist(make_services())(make_conn(sender="anyone@spam.example"), Event())
    assert verdict == Hit("black_mail_address", "listed as @spam.example")


def test_not_listed(make_services: ServicesFactory, blacklist: FakeBlacklist) -> None:
    blacklist.entries.update({"spammer@example.org", "@spam.example"})
    check = DynamicBlacklist(make_services())
    assert check(make_conn(sender="friend@example.org"), Event()) is None
    assert check(make_conn(sender="x@sub.spam.example"), Event()) is None
    assert blacklist.calls == ["friend@example.org", "x@sub.spam.example"]


@pytest.mark.parametrize("sender", ["<spammer%example.org>", "<example.org!spammer+x>"])
def test_a_sender_that_does_not_parse_is_looked_up_as_the_mta_may_make_it(
    make_services: ServicesFactory, blacklist: FakeBlacklist, sender: str
) -> None:
    """Review rev65 F1: with sender_syntax not enforcing, Postfix delivered
    <spammer%example.org> as spammer@example.org."""
    blacklist.entries.add("spammer@example.org")
    verdict = DynamicBlacklist(make_services())(make_conn(sender=sender), Event())
    assert verdict == Hit("black_mail_address", "listed as spammer@example.org")


@pytest.mark.parametrize(
    "conn",
    [
        pytest.param(make_conn(sender="<>"), id="null-sender"),
        pytest.param(make_conn(sender="<not an address>"), id="invalid-sender"),
        pytest.param(make_conn(), id="no-transaction"),
    ],
)
def test_nothing_to_look_up(
    make_services: ServicesFactory, blacklist: FakeBlacklist, conn: Connection
) -> None:
    blacklist.failing = True  # proves the store is not even asked
    assert DynamicBlacklist(make_services())(conn, Event()) is None
    assert blacklist.calls == []


def test_store_failure_is_temporary(
    make_services: ServicesFactory, blacklist: FakeBlacklist
) -> None:
    blacklist.failing = True
    verdict = DynamicBlacklist(make_services())(make_conn(sender="a@example.org"), Event())
    assert verdict == TempError("database_temp_error", "state.sqlite: disk I/O error")
