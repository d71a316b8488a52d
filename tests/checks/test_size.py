"""DeclaredSize: message_too_long from the ESMTP SIZE= parameter (RFC 1870)."""

from __future__ import annotations

import pytest

from smtpguard.checks import Event, Stage
from smtpguard.checks.size import DeclaredSize
from smtpguard.verdict import Hit
from support.checks import ServicesFactory, make_conn


def test_declared_size_runs_at_mail() -> None:
    assert DeclaredSize.name == "message_size.mail"
    assert DeclaredSize.stage is Stage.MAIL
    assert DeclaredSize.reply_ids == ("message_too_long",)


@pytest.mark.parametrize("size", [None, 0, 999, 1000])
def test_declared_size_within_limit(make_services: ServicesFactory, size: int | None) -> None:
    check = DeclaredSize(make_services(limits={"max_message_size": 1000}))
    assert check(make_conn(sender="a@example.org", declared_size=size), Event()) is None


def test_declared_size_over_limit(make_services: ServicesFactory) -> None:
    check = DeclaredSize(make_services(limits={"max_message_size": 1000}))
    verdict = check(make_conn(sender="a@example.org", declared_size=1001), Event())
    assert verdict == Hit("message_too_long", "SIZE=1001 > 1000")


def test_declared_size_applies_to_null_sender_too(make_services: ServicesFactory) -> None:
    check = DeclaredSize(make_services(limits={"max_message_size": 10}))
    verdict = check(make_conn(sender="<>", declared_size=11), Event())
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "message_too_long"


def test_declared_size_default_limit(make_services: ServicesFactory) -> None:
    check = DeclaredSize(make_services())
    limit = 50 * 1024 * 1024
    assert check(make_conn(sender="a@example.org", declared_size=limit), Event()) is None
    verdict = check(make_conn(sender="a@example.org", declared_size=limit + 1), Event())
    assert verdict == Hit("message_too_long", f"SIZE={limit + 1} > {limit}")


def test_declared_size_without_transaction(make_services: ServicesFactory) -> None:
    assert DeclaredSize(make_services())(make_conn(), Event()) is None
