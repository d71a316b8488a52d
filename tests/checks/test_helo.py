"""HeloFirst (helo_first) and HeloName (helo_error), both decided at MAIL FROM."""

from __future__ import annotations

import pytest

from smtpguard.checks import Event, Stage
from smtpguard.checks.helo import HeloFirst, HeloName
from smtpguard.verdict import Hit
from support.checks import ServicesFactory, make_conn

SITE = {
    "local_domains": ["example.com", ".example.net"],
    "our_hostnames": ["mx.example.com"],
    "our_ips": ["192.0.2.25", "2001:db8::25"],
}


@pytest.fixture
def helo_check(make_services: ServicesFactory) -> HeloName:
    return HeloName(make_services(site=SITE))


def test_both_checks_run_at_mail() -> None:
    assert HeloFirst.stage is Stage.MAIL
    assert HeloName.stage is Stage.MAIL
    assert HeloFirst.reply_ids == ("helo_first",)
    assert HeloName.reply_ids == ("helo_error",)


# --- helo_first ---------------------------------------------------------------------


def test_mail_before_helo(make_services: ServicesFactory) -> None:
    verdict = HeloFirst(make_services())(make_conn(helo=None, sender="a@example.org"), Event())
    assert verdict == Hit("helo_first", "MAIL before HELO/EHLO")


def test_mail_before_helo_even_when_trusted(make_services: ServicesFactory) -> None:
    conn = make_conn(helo=None, sender="a@example.com", trusted_network=True, ip="127.0.0.1")
    verdict = HeloFirst(make_services())(conn, Event())
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "helo_first"


@pytest.mark.parametrize("helo", ["mail.example.org", "", "garbage"])
def test_any_greeting_satisfies_helo_first(make_services: ServicesFactory, helo: str) -> None:
    # Whether the name is any good is HeloName's business.
    assert HeloFirst(make_services())(make_conn(helo=helo, sender="a@example.org"), Event()) is None


# --- helo_error: legitimate greetings -------------------------------------------------


def test_no_helo_is_left_to_helo_first(helo_check: HeloName) -> None:
    assert helo_check(make_conn(helo=None, sender="a@example.org"), Event()) is None


@pytest.mark.parametrize(
    ("helo", "ip"),
    [
        ("mail.example.org", "198.51.100.7"),
        ("Mail.Example.ORG.", "198.51.100.7"),
        ("  mail.example.org \t", "198.51.100.7"),
        ("[198.51.100.7]", "198.51.100.7"),
        ("[IPv6:2001:db8::7]", "2001:db8::7"),
        ("[ipv6:2001:DB8::7]", "2001:db8::7"),
        # The IPv4 client written as an IPv4-mapped IPv6 literal.
        ("[IPv6:::ffff:198.51.100.7]", "198.51.100.7"),
        ("[198.51.100.99]", None),  # unix socket / unknown client: nothing to compare
        ("example.net", "198.51.100.7"),  # ".example.net" is its subdomains only
        # Postfix's reject_invalid_helo_hostname lets underscores pass (review rev112 F3).
        ("win_host.example.org", "198.51.100.7"),
    ],
)
def test_good_greetings(helo_check: HeloName, helo: str, ip: str | None) -> None:
    assert helo_check(make_conn(helo=helo, ip=ip, sender="a@example.org"), Event()) is None


# --- helo_error: problems -------------------------------------------------------------


@pytest.mark.parametrize(
    ("helo", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("[300.1.2.3]", "invalid address literal"),
        ("[198.051.100.7]", "invalid address literal"),  # leading zero: octal ambiguity
        ("[tag:whatever]", "invalid address literal"),
        ("[198.51.100.8]", "address literal is not the client IP 198.51.100.7"),
        ("bad name.example.org", "invalid host name syntax"),
        ("-bad.example.org", "invalid host name syntax"),
        ("mail..example.org", "invalid host name syntax"),
        ("例子.中国", "invalid host name syntax"),
        ("localhost", "not a fully qualified domain name"),
        ("198.51.100.7", "not a fully qualified domain name"),
        ("mx.example.com", "claims one of our names"),
        ("MX.EXAMPLE.COM.", "claims one of our names"),
        ("example.com", "claims one of our names"),
        # ".example.net": every subdomain is ours, as for the relay and sender checks.
        ("mx.example.net", "claims one of our names"),
        ("a.b.Example.NET.", "claims one of our names"),
        ("[192.0.2.25]", "claims one of our IPs"),
        ("[IPv6:2001:db8::25]", "claims one of our IPs"),
        ("[IPv6:::ffff:192.0.2.25]", "claims one of our IPs"),
    ],
)
def test_bad_greetings(helo_check: HeloName, helo: str, problem: str) -> None:
    verdict = helo_check(make_conn(helo=helo, sender="a@example.org"), Event())
    # The detail quotes the greeting exactly as received (unstripped) for the log.
    assert verdict == Hit("helo_error", f"helo={helo!r}: {problem}")


def test_wrong_literal_family_is_a_mismatch(helo_check: HeloName) -> None:
    conn = make_conn(helo="[IPv6:2001:db8::7]", ip="198.51.100.7", sender="a@example.org")
    verdict = helo_check(conn, Event())
    assert isinstance(verdict, Hit)
    assert verdict.detail.endswith("address literal is not the client IP 198.51.100.7")


# --- trusted and authenticated clients --------------------------------------------------


@pytest.mark.parametrize("helo", ["mx.example.com", "example.com"])
def test_trusted_network_may_use_our_names(helo_check: HeloName, helo: str) -> None:
    conn = make_conn(helo=helo, ip="127.0.0.1", trusted_network=True, sender="a@example.com")
    assert helo_check(conn, Event()) is None


def test_authenticated_client_may_use_our_names(helo_check: HeloName) -> None:
    conn = make_conn(
        helo="mx.example.com", sender="a@example.com", auth_type="PLAIN", auth_login="a"
    )
    assert conn.authenticated
    assert helo_check(conn, Event()) is None


def test_trusted_client_claiming_our_ip_from_that_ip(helo_check: HeloName) -> None:
    conn = make_conn(helo="[192.0.2.25]", ip="192.0.2.25", trusted_network=True, sender="<>")
    assert helo_check(conn, Event()) is None


@pytest.mark.parametrize(
    ("helo", "ip"),
    [
        # Postfix's pickup path (non_smtpd_milters): sendmail(1) submissions.
        ("localhost", "127.0.0.1"),
        # A LAN device's bare name.
        ("printer", "192.0.2.40"),
        # A mail client behind NAT: the literal of its private address.
        ("[10.0.0.5]", "192.0.2.41"),
    ],
)
def test_trusted_network_greetings_are_not_judged(helo_check: HeloName, helo: str, ip: str) -> None:
    conn = make_conn(helo=helo, ip=ip, trusted_network=True, sender="a@example.com")
    assert helo_check(conn, Event()) is None


def test_authenticated_greeting_is_not_judged(helo_check: HeloName) -> None:
    conn = make_conn(
        helo="DESKTOP-7Q2",
        ip="198.51.100.9",
        sender="a@example.com",
        auth_type="PLAIN",
        auth_login="a",
    )
    assert conn.authenticated
    assert helo_check(conn, Event()) is None


def test_the_same_greetings_from_strangers_are_refused(helo_check: HeloName) -> None:
    for helo, ip in (("localhost", "198.51.100.7"), ("[10.0.0.5]", "198.51.100.7")):
        verdict = helo_check(make_conn(helo=helo, ip=ip, sender="a@example.org"), Event())
        assert isinstance(verdict, Hit), helo


def test_unauthenticated_transaction_is_not_trusted(helo_check: HeloName) -> None:
    conn = make_conn(helo="mx.example.com", sender="a@example.org", auth_login=None)
    verdict = helo_check(conn, Event())
    assert isinstance(verdict, Hit)
    assert verdict.detail.endswith("claims one of our names")
