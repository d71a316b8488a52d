"""Every DNS-driven reply id through the real ``smtpguard run`` service and a real DNS
server (unbound on loopback, data in support/unbound.py).

The MTA side is the PyPI ``miltertest`` client. Client IPs are data in the milter
protocol; the DNS server holds PTR, DNSBL and domain records for them. Each reply id
gets sessions that receive exactly its code, enhanced code and text (default language
policy: one bilingual line), legitimate sessions that pass, and the temporary-error
paths: SERVFAIL (zones unbound cannot answer) and timeouts (a nameserver port where
nothing answers), passing by default and tempfailing when configured.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from smtpguard.config import DNS_CHECKS
from support.mtclient import Answer, MilterSession, assert_pass, assert_reply
from support.service import TRUSTED_IP, Running, make_site, running
from support.unbound import (
    A_ONLY_DOMAIN,
    AAAA_ONLY_DOMAIN,
    DNSBL_ZONES,
    GENERIC_DSL_IP,
    GENERIC_IP,
    GOOD_DOMAIN,
    GOOD_IP,
    GOOD_IP6,
    IDN_SPF_A_LABELS,
    IDN_SPF_DOMAIN,
    LISTS_ALL_ZONE,
    NO_MAIL_DOMAIN,
    NO_PTR_IP,
    NULL_MX_DOMAIN,
    NX_DOMAIN,
    PROBE_CLOSED_IP,
    PROBE_OPEN_IP,
    PTR_SERVFAIL_IP,
    RBL_BLOCKED_IP,
    RBL_IP,
    RBL_IP6,
    RBL_OUT_OF_RANGE_IP,
    RBL_SERVFAIL_IP,
    RBL_TEST_IP,
    RBL_TXT,
    RBL_WILDCARD_IP,
    RELAY_IP,
    RELAY_TXT,
    SERVFAIL_DOMAIN,
    SERVFAIL_HELO,
    SPF_FAIL_DOMAIN,
    SPF_FAIL_HELO,
    SPF_PERMERROR_DOMAIN,
    SPF_SOFTFAIL_DOMAIN,
    SPF_TEMPERROR_DOMAIN,
    UNCONFIRMED_IP,
    UNRESOLVABLE_HELO,
    DnsServer,
    silent_nameserver,
)

pytestmark = pytest.mark.integration

GOOD_HELO = "mx.good.test"
GOOD_SENDER = f"<someone@{GOOD_DOMAIN}>"
TLS = {"{tls_version}": "TLSv1.3"}


def dns_service(
    tmp: Path, port: int, extra: dict[str, Any], zones: Sequence[Mapping[str, Any]] = DNSBL_ZONES
) -> Iterator[Running]:
    dns = {"nameservers": ["127.0.0.1"], "port": port, "timeout": 1.0, "stage_deadline": 2.0}
    dns.update(extra.pop("dns", {}))
    site = make_site(tmp, {"dns": dns, "dnsbl": {"zones": zones}, **extra})
    with running(site) as svc:
        yield svc


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer) -> Iterator[Running]:
    """Defaults (temporary DNS errors pass), plus helo_dns, which is off by default."""
    extra = {"checks": {"helo_dns": {"mode": "enforce"}}}
    yield from dns_service(tmp_path_factory.mktemp("dns-main"), unbound.port, extra)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer) -> Iterator[Running]:
    """Every DNS check tempfails on SERVFAIL/timeout; softfail is refused."""
    checks = {name: {"on_temp_error": "tempfail"} for name in sorted(DNS_CHECKS)}
    checks["helo_dns"]["mode"] = "enforce"
    extra = {"checks": checks, "spf": {"reject_softfail": True}}
    yield from dns_service(tmp_path_factory.mktemp("dns-strict"), unbound.port, extra)


@pytest.fixture(scope="module")
def dead(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The nameserver never answers; sender_domain alone tempfails on timeouts."""
    with silent_nameserver() as port:
        extra = {
            "dns": {"timeout": 0.3, "stage_deadline": 0.6},
            "checks": {"sender_domain": {"on_temp_error": "tempfail"}},
        }
        yield from dns_service(tmp_path_factory.mktemp("dns-dead"), port, extra)


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """An SMTP port that accepts connections, on PROBE_OPEN_IP only."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((PROBE_OPEN_IP, 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def probe(
    tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer, listener: int
) -> Iterator[Running]:
    extra = {
        "smtpport": {
            "connect_back": True,
            "connect_back_port": listener,
            "connect_back_timeout": 0.5,
        }
    }
    yield from dns_service(tmp_path_factory.mktemp("dns-probe"), unbound.port, extra, zones=())


def session(
    service: Running,
    ip: str = GOOD_IP,
    helo: str = GOOD_HELO,
    helo_macros: dict[str, str] | None = None,
) -> MilterSession:
    s = service.session()
    assert_pass(s.connect(ip))
    assert_pass(s.helo(helo, macros=helo_macros))
    return s


def mail(service: Running, sender: str = GOOD_SENDER, **kwargs: Any) -> Answer:
    with session(service, **kwargs) as s:
        return s.mail(sender)


# --- rbl_deny / openrelay_check -----------------------------------------------------


@pytest.mark.parametrize("ip", [RBL_TEST_IP, RBL_IP, RBL_IP6])
def test_rbl_deny(main: Running, ip: str) -> None:
    assert_reply(mail(main, ip=ip), "rbl_deny")


def test_rbl_listing_reason_goes_to_the_log(main: Running) -> None:
    assert_reply(mail(main, ip=RBL_IP), "rbl_deny")
    log = main.log()
    assert "reply=rbl_deny" in log
    assert f"{RBL_IP} listed in rbl.test as 127.0.0.4" in log
    assert RBL_TXT in log


def test_a_list_that_lists_everyone_refuses_no_one(tmp_path: Path, unbound: DnsServer) -> None:
    """Review rev122 F2: a dead list answering 127.0.0.2 for every name refused every
    client with 554. It lists its own test point 127.0.0.1 (RFC 5782 §5): its listings
    are a failure of the zone (on_temp_error decides), and a WARNING says why."""
    zones = [LISTS_ALL_ZONE]
    for on_temp_error, expected in (("pass", None), ("tempfail", "database_temp_error")):
        extra: dict[str, Any] = {"checks": {"rbl": {"on_temp_error": on_temp_error}}}
        for service in dns_service(tmp_path / on_temp_error, unbound.port, extra, zones):
            reply = mail(service, ip=RBL_IP)
            log = service.log()
        if expected is None:
            assert_pass(reply)
        else:
            assert_reply(reply, expected)
        assert "zone=listsall.test" in log
        assert "lists its test point 1.0.0.127.listsall.test as 127.0.0.2 (RFC 5782" in log


def test_openrelay_check(main: Running) -> None:
    assert_reply(mail(main, ip=RELAY_IP), "openrelay_check")
    assert RELAY_TXT in main.log()


@pytest.mark.parametrize("ip", [GOOD_IP, GOOD_IP6, RBL_OUT_OF_RANGE_IP])
def test_unlisted_clients_pass(main: Running, ip: str) -> None:
    assert_pass(mail(main, ip=ip))


@pytest.mark.parametrize(
    ("ip", "answer"), [(RBL_BLOCKED_IP, "127.255.255.254"), (RBL_WILDCARD_IP, "203.0.113.1")]
)
def test_refused_and_foreign_answers_are_ignored_and_logged(
    main: Running, ip: str, answer: str
) -> None:
    assert_pass(mail(main, ip=ip))
    assert f"zone=rbl.test client={ip} answer ignored: {answer}" in main.log()


def test_authenticated_client_passes_the_dns_checks(main: Running) -> None:
    # Listed, no PTR, HELO that does not resolve: authentication trumps all of them.
    with session(main, ip=RBL_IP, helo=UNRESOLVABLE_HELO, helo_macros=TLS) as s:
        macros = {"{auth_authen}": "alice@example.com", "{auth_type}": "PLAIN"}
        assert_pass(s.mail("<alice@example.com>", macros=macros))


def test_trusted_network_passes_the_dns_checks(main: Running) -> None:
    assert_pass(mail(main, f"<x@{SPF_FAIL_DOMAIN}>", ip=TRUSTED_IP, helo=UNRESOLVABLE_HELO))


# --- smtpport_check -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        (NO_PTR_IP, f"no PTR for {NO_PTR_IP}: NXDOMAIN"),
        (UNCONFIRMED_IP, "does not resolve back"),
        (GENERIC_IP, "looks generic (pattern dynamic)"),
        (GENERIC_DSL_IP, "looks generic"),
    ],
)
def test_smtpport_check(main: Running, ip: str, why: str) -> None:
    assert_reply(mail(main, ip=ip), "smtpport_check")
    assert why in main.log()


def test_smtpport_connect_back(probe: Running) -> None:
    sender = f"<x@{A_ONLY_DOMAIN}>"  # no SPF record for the 127.0.0.x clients
    assert_pass(mail(probe, sender, ip=PROBE_OPEN_IP, helo="mx5.good.test"))
    assert_reply(mail(probe, sender, ip=PROBE_CLOSED_IP, helo="mx6.probe.test"), "smtpport_check")
    assert "does not accept SMTP: connection refused" in probe.log()


# --- helo_error (DNS) -----------------------------------------------------------------


def test_helo_error_when_the_helo_name_does_not_resolve(main: Running) -> None:
    assert_reply(mail(main, helo=UNRESOLVABLE_HELO), "helo_error")
    assert f"helo {UNRESOLVABLE_HELO} does not resolve: A NXDOMAIN, AAAA NXDOMAIN" in main.log()


# --- sender_unvalidated ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "why"),
    [
        (NULL_MX_DOMAIN, "null MX (RFC 7505)"),
        (NO_MAIL_DOMAIN, "no MX, A or AAAA"),
        (NX_DOMAIN, f"{NX_DOMAIN}: NXDOMAIN"),
    ],
)
def test_sender_unvalidated(main: Running, domain: str, why: str) -> None:
    assert_reply(mail(main, f"<x@{domain}>"), "sender_unvalidated")
    assert why in main.log()


@pytest.mark.parametrize("domain", [GOOD_DOMAIN, A_ONLY_DOMAIN, AAAA_ONLY_DOMAIN])
def test_sender_domains_that_receive_mail_pass(main: Running, domain: str) -> None:
    assert_pass(mail(main, f"<x@{domain}>"))


# --- remote_ip_mismatch ---------------------------------------------------------------


def test_remote_ip_mismatch(main: Running) -> None:
    assert_reply(mail(main, f"<x@{SPF_FAIL_DOMAIN}>"), "remote_ip_mismatch")
    assert f"spf=fail mailfrom {SPF_FAIL_DOMAIN} from {GOOD_IP}" in main.log()


@pytest.mark.parametrize("domain", [IDN_SPF_DOMAIN, IDN_SPF_A_LABELS])
def test_remote_ip_mismatch_whatever_the_spelling_of_an_idn(main: Running, domain: str) -> None:
    """Review rev112 F1: under an IDN top-level domain the U-label spelling made
    "v=spf1 a -all" a permerror, and a forger using it passed."""
    with session(main) as s:
        assert_reply(s.mail(f"<ceo@{domain}>", "SMTPUTF8"), "remote_ip_mismatch")
    assert f"spf=fail mailfrom {IDN_SPF_A_LABELS} from {GOOD_IP}" in main.log()


def test_remote_ip_mismatch_for_the_null_sender_uses_helo(main: Running) -> None:
    assert_reply(mail(main, "<>", helo=SPF_FAIL_HELO), "remote_ip_mismatch")
    assert_pass(mail(main, "<>", helo=GOOD_HELO))


@pytest.mark.parametrize(
    "domain", [GOOD_DOMAIN, SPF_SOFTFAIL_DOMAIN, SPF_PERMERROR_DOMAIN, A_ONLY_DOMAIN]
)
def test_spf_pass_softfail_permerror_none_pass(main: Running, domain: str) -> None:
    assert_pass(mail(main, f"<x@{domain}>"))


def test_softfail_refused_when_configured(strict: Running) -> None:
    assert_reply(mail(strict, f"<x@{SPF_SOFTFAIL_DOMAIN}>"), "remote_ip_mismatch")


# --- temporary errors: SERVFAIL -----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "sender"),
    [
        ({"ip": RBL_SERVFAIL_IP}, GOOD_SENDER),
        ({"ip": PTR_SERVFAIL_IP}, GOOD_SENDER),
        ({"helo": SERVFAIL_HELO}, GOOD_SENDER),
        ({}, f"<x@{SERVFAIL_DOMAIN}>"),
        ({}, f"<x@{SPF_TEMPERROR_DOMAIN}>"),
    ],
    ids=["rbl", "smtpport", "helo_dns", "sender_domain", "spf"],
)
def test_servfail_passes_by_default_and_tempfails_when_configured(
    main: Running, strict: Running, kwargs: dict[str, str], sender: str
) -> None:
    assert_pass(mail(main, sender, **kwargs))
    assert_reply(mail(strict, sender, **kwargs), "database_temp_error")


def test_servfail_is_logged_as_such(main: Running) -> None:
    assert_pass(mail(main, f"<x@{SERVFAIL_DOMAIN}>"))
    log = main.log()
    assert "check=sender_domain reply=database_temp_error mode=enforce action=pass temp=True" in log
    assert f"{SERVFAIL_DOMAIN} MX: SERVFAIL" in log


def test_legitimate_session_passes_the_strict_service(strict: Running) -> None:
    with session(strict) as s:
        assert_pass(s.mail(GOOD_SENDER))
        assert_pass(s.rcpt("<alice@example.com>"))


# --- temporary errors: timeouts -----------------------------------------------------


def test_timeouts_pass_by_default_and_stay_bounded(dead: Running) -> None:
    with session(dead, helo="[198.51.100.10]") as s:
        start = time.monotonic()
        # Null sender, literal HELO: only rbl and smtpport look up, and both time out.
        assert_pass(s.mail("<>"))
        assert time.monotonic() - start < 1.5
    log = dead.log()
    assert "check=rbl reply=database_temp_error mode=enforce action=pass temp=True" in log
    assert "check=smtpport reply=database_temp_error mode=enforce action=pass temp=True" in log
    assert "TIMEOUT" in log


def test_timeout_tempfails_when_configured(dead: Running) -> None:
    with session(dead) as s:
        start = time.monotonic()
        assert_reply(s.mail(GOOD_SENDER), "database_temp_error")
        assert time.monotonic() - start < 1.5
    assert "good.test MX: TIMEOUT" in dead.log()
