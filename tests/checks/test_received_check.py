"""ForgedReceived: fake_router for unparsable Received fields and forged claims of our
hosts (site: our_hostnames mx.example.com, our_ips 192.0.2.25)."""

from __future__ import annotations

import pytest

from smtpguard.checks import Event, Stage
from smtpguard.checks.received import ForgedReceived
from smtpguard.verdict import Hit
from support.checks import ServicesFactory, make_conn

DATE = "Tue, 1 Oct 2024 10:00:00 +0000"
FOREIGN = f"from a.example (a.example [198.51.100.9]) by b.example with ESMTP id X; {DATE}"
CLAIMS_NAME = f"from mx.example.com (mx.example.com [198.51.100.9]) by mx.example.com; {DATE}"
CLAIMS_IP = f"from relay.example (relay.example [192.0.2.25]) by [192.0.2.25]; {DATE}"


def received(value: str) -> Event:
    return Event(header=("Received", value))


def test_declaration() -> None:
    assert ForgedReceived.name == "received"
    assert ForgedReceived.stage is Stage.HEADER
    assert ForgedReceived.reply_ids == ("fake_router",)


def test_an_ordinary_trace_field_passes(make_services: ServicesFactory) -> None:
    check = ForgedReceived(make_services())
    assert check(make_conn(sender="a@example.org"), received(FOREIGN)) is None


@pytest.mark.parametrize("value", ["", "from", f"by b.example; {DATE} garbage (", "x\x00y"])
def test_unparsable_trace_field(make_services: ServicesFactory, value: str) -> None:
    verdict = ForgedReceived(make_services())(make_conn(sender="a@example.org"), received(value))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "fake_router"
    assert verdict.detail.startswith("unparsable Received: ")


@pytest.mark.parametrize("value", [CLAIMS_NAME, CLAIMS_IP])
def test_a_foreign_client_claiming_our_host(make_services: ServicesFactory, value: str) -> None:
    verdict = ForgedReceived(make_services())(make_conn(sender="a@example.org"), received(value))
    assert isinstance(verdict, Hit)
    assert verdict.detail.startswith("Received claims our host: from ")


@pytest.mark.parametrize(
    "conn_args",
    [{"trusted_network": True}, {"ip": "192.0.2.25"}, {"auth_login": "alice@example.com"}],
    ids=["trusted", "our-ip", "logged-in"],
)
def test_our_own_hosts_may_claim_us(
    make_services: ServicesFactory, conn_args: dict[str, object]
) -> None:
    conn = make_conn(sender="a@example.org", **conn_args)  # type: ignore[arg-type]  # kwargs of mixed types
    assert ForgedReceived(make_services())(conn, received(CLAIMS_NAME)) is None


def test_other_headers_are_not_looked_at(make_services: ServicesFactory) -> None:
    check = ForgedReceived(make_services())
    assert check(make_conn(sender="a@example.org"), Event(header=("X-Received", "junk"))) is None
    assert check(make_conn(sender="a@example.org"), Event()) is None


def test_a_logged_in_client_still_gets_the_syntax_check(make_services: ServicesFactory) -> None:
    """Found by review: a user's redirect through submission was refused for our own
    Received fields; the claim test spares a logged-in client, the syntax check not."""
    conn = make_conn(sender="a@example.org", auth_login="alice@example.com")
    verdict = ForgedReceived(make_services())(conn, received("this is not a trace field"))
    assert isinstance(verdict, Hit)
    assert verdict.detail.startswith("unparsable Received: ")
