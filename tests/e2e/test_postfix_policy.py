"""Operator policy through a real Postfix (issue 14): an exempted partner listed in a
DNSBL is accepted and still cannot relay; a client listed in a local CIDR block list
gets the zone's reply; two domains with different size limits each get their own; an
exemption by host name Postfix could not look up for now defers.

Postfix is configured by ``smtpguard postfix-config``; XCLIENT plays the client's
address, name and HELO; DNS answers come from the test unbound (support/unbound.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.expected import SPEC, default_line
from support.postfix import Postfix, client, start_postfix
from support.service import Running, Site, make_site, running
from support.smtp import Reply
from support.unbound import GOOD_IP, RBL_IP, RBL_ZONE, RELAY_ZONE, DnsServer

pytestmark = pytest.mark.integration

#: Listed in rbl.test (PTR mx66.good.test, confirmed), exempted below by its address.
PARTNER = {"addr": RBL_IP, "name": "mx66.good.test", "helo": "mx66.good.test"}
GOOD = {"addr": GOOD_IP, "name": "mx.good.test", "helo": "mx.good.test"}
#: In the local block list file (a /24 of it).
BLOCKED = {"addr": "203.0.113.45", "name": "[UNAVAILABLE]", "helo": "mx.blocked.test"}
HEADERS = b"From: <someone@good.test>\r\nTo: <x@example.com>\r\nSubject: hi\r\n"


def e2e_site(root: Path, extra: dict[str, object]) -> Site:
    # Postfix's smtpd (user postfix) must reach the socket.
    root.chmod(0o755)
    base = {"milter": {"socket_group": "postfix", "socket_mode": "0660"}}
    return make_site(root, {**base, **extra})


@pytest.fixture(scope="module")
def stack(unbound: DnsServer) -> Iterator[tuple[Running, Postfix]]:
    root = Path(tempfile.mkdtemp(prefix="smtpguard-policy-"))
    blocked = root / "blocked.txt"
    blocked.write_text("# abuse reports\n203.0.113.0/24\n")
    blocked.chmod(0o644)
    site = e2e_site(
        root,
        {
            "site": {"relay_domains": ["relay.example"]},
            "limits": {"max_message_size": 1_000_000},
            "dns": {"nameservers": ["127.0.0.1"], "port": unbound.port, "timeout": 1.0},
            "dnsbl": {
                "zones": [RBL_ZONE, RELAY_ZONE],
                "local": [{"file": str(blocked), "kind": "rbl"}],
            },
            "policy": {
                "exempt": [{"name": "partner", "ips": [RBL_IP], "skip": ["rbl", "spf"]}],
            },
            "domain": {
                "example.com": {"max_message_size": 4000},
                "relay.example": {"max_message_size": 40_000},
            },
        },
    )
    with running(site) as service, start_postfix(site.config) as postfix:
        yield service, postfix


def assert_table(reply: Reply, reply_id: str) -> None:
    code, xcode, _en, _zh = SPEC[reply_id]
    assert reply.lines == (f"{code} {xcode} {default_line(reply_id)}",), f"{reply_id}: {reply}"


def test_exempted_partner_in_the_dnsbl_is_accepted_and_cannot_relay(
    stack: tuple[Running, Postfix],
) -> None:
    service, postfix = stack
    with client(postfix, PARTNER) as c:
        assert c.cmd("MAIL FROM:<someone@aonly.test>").code == 250
        # Postfix's own relay control (relay_control = "postfix") with the table's text
        # from its access map, behind Postfix's prefix.
        assert c.cmd("RCPT TO:<victim@elsewhere.example>").lines == (
            "553 5.7.1 <victim@elsewhere.example>: Recipient address rejected: "
            + default_line("host_denies_relay"),
        )
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        assert c.data(HEADERS + b"\r\nhello partner\r\n").code == 250
    assert f"client={RBL_IP}" not in "\n".join(
        line for line in service.log().splitlines() if "reply=rbl_deny" in line
    )


def test_cidr_listed_client_gets_the_zone_reply(stack: tuple[Running, Postfix]) -> None:
    service, postfix = stack
    with client(postfix, BLOCKED) as c:
        assert_table(c.cmd("MAIL FROM:<someone@aonly.test>"), "rbl_deny")
    assert "203.0.113.45 listed in" in service.log()


def test_two_domains_with_different_size_limits_each_get_their_own(
    stack: tuple[Running, Postfix],
) -> None:
    _service, postfix = stack
    body = b"\r\n" + (b"x" * 78 + b"\r\n") * 128  # 10 KB
    with client(postfix, GOOD) as c:
        assert c.cmd("MAIL FROM:<someone@good.test>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        assert_table(c.data(HEADERS + body), "message_too_long")
    with client(postfix, GOOD) as c:
        assert c.cmd("MAIL FROM:<someone@good.test>").code == 250
        assert c.cmd("RCPT TO:<someone@relay.example>").code == 250
        assert c.data(HEADERS + body).code == 250
    with client(postfix, GOOD) as c:
        # SIZE= is held against each recipient's domain.
        assert c.cmd("MAIL FROM:<someone@good.test> SIZE=10000").code == 250
        assert_table(c.cmd("RCPT TO:<alice@example.com>"), "message_too_long")
        assert c.cmd("RCPT TO:<someone@relay.example>").code == 250
        # A second domain policy in one transaction: send it in another one.
        assert_table(c.cmd("RCPT TO:<postmaster@example.com>"), "rcpt_limit")


def test_the_sites_own_mail_to_two_domains_is_judged_at_their_strictest(
    stack: tuple[Running, Postfix],
) -> None:
    """A host of ours (trusted_networks, Postfix's mynetworks) writing to both domains
    is not split by a 451 (review rev153 F5), and relay.example named first does not
    lift example.com's size limit for its copy (rev154 F1)."""
    service, postfix = stack
    ours = {"addr": "192.0.2.10", "name": "host.example.com", "helo": "host.example.com"}
    body = b"\r\n" + (b"x" * 78 + b"\r\n") * 128  # 10 KB
    for message, refused in ((HEADERS + body, True), (HEADERS + b"\r\nhello\r\n", False)):
        with client(postfix, ours) as c:
            assert c.cmd("MAIL FROM:<bob@example.com>").code == 250
            assert c.cmd("RCPT TO:<someone@relay.example>").code == 250
            assert c.cmd("RCPT TO:<alice@example.com>").code == 250
            answer = c.data(message)
            if refused:
                assert_table(answer, "message_too_long")
            else:
                assert answer.code == 250
    assert "policy=relay.example+example.com" in service.log()


def test_a_host_name_exemption_waits_when_postfixs_lookup_failed_for_now() -> None:
    """Review rev153 F1: without a resolver of its own smtpguard reads the client's
    name as Postfix confirmed it; a lookup that failed for now ({client_resolve} TEMP,
    Postfix's name "unknown") was read as no name, and a refusal the partner's
    exemption by host name spares was permanent. Deferred now; a lookup that failed
    for good leaves the refusal."""
    root = Path(tempfile.mkdtemp(prefix="smtpguard-policy-temp-"))
    exempt = {"name": "partner", "host_suffixes": ["good.test"], "skip": ["helo"]}
    site = e2e_site(root, {"policy": {"exempt": [exempt]}})
    with running(site):
        postfix = start_postfix(site.config)
        try:
            replies = {}
            for name in ("mx.good.test", "[TEMPUNAVAIL]", "[UNAVAILABLE]"):
                ident = {"addr": "198.51.100.10", "name": name, "helo": "localhost"}
                with client(postfix, ident) as c:
                    replies[name] = c.cmd("MAIL FROM:<someone@good.test>")
        finally:
            postfix.stop()
    assert replies["mx.good.test"].code == 250
    assert_table(replies["[TEMPUNAVAIL]"], "database_temp_error")
    assert replies["[UNAVAILABLE]"].code == int(SPEC["helo_error"][0]), replies
