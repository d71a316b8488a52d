"""smtpport (PTR, FCrDNS, generic names, connect-back) and helo_dns."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.checks import Event
from smtpguard.checks.client_host import (
    FORWARD_IN_FLIGHT,
    HeloDns,
    SmtpPort,
    cached_reverse_dns,
    embeds_ip,
    generic_match,
    reverse_dns,
)
from smtpguard.config import ConfigError, GenericPatterns, load_config
from smtpguard.dns import Answer, Resolver, Status
from smtpguard.resultheaders import iprev_result
from smtpguard.session import Connection
from smtpguard.verdict import Hit, TempError
from support.checks import make_conn
from support.fake_dns import FakeClock, FakeDns, dns_services, fake_resolver, hold_slots
from support.polling import wait_until
from support.service import ROOT

IP = "198.51.100.7"
PTR = "7.100.51.198.in-addr.arpa"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> GenericPatterns:
    path = tmp_path_factory.mktemp("cfg") / "smtpguard.toml"
    path.write_text("", encoding="utf-8")
    patterns = load_config(path).smtpport.generic
    assert patterns is not None
    return patterns


def smtpport(tmp_path: Path, resolver: Resolver, **options: Any) -> SmtpPort:
    """The check with ``[smtpport]`` set to ``options``."""
    return SmtpPort(dns_services(tmp_path, resolver, smtpport=options))


def soon() -> Event:
    return Event(deadline=time.monotonic() + 2)


def host(fake: FakeDns, ip: str, *names: str, forward: dict[str, str] | None = None) -> None:
    """PTR ip -> names; each name's A is ``forward[name]`` (default: ip itself)."""
    reverse = ipaddress.ip_address(ip).reverse_pointer
    fake.add(reverse, "PTR", *(f"{n}." for n in names))
    for n in names:
        target = (forward or {}).get(n, ip)
        if target:
            fake.add(n, "A" if ":" not in ip else "AAAA", target)


# --- the shipped generic patterns --------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "198-51-100-7.dyn.isp.example",
        "dyn-7.isp.example",
        "dynamic-198-51.isp.example",
        "dhcp-44-12.campus.example",
        "ppp-12.isp.example",
        "p5b0a1234.dip0.t-ipconnect.de",
        "adsl-pool-23.isp.example",
        "xdsl12.isp.example",
        "c-98-207-14-3.hsd1.ca.comcast.net",
        "cable-12.isp.example",
        "ftth.isp.example",
        "cpe-7-100.isp.example",
        "customer123.isp.example",
        "mobile-12.carrier.example",
        "unassigned.isp.example",
        "no-ptr.isp.example",
        "ip-203-0-113-9.ec2.example",
        "host.1.2.3.4.isp.example",
        "dyn-1-2.isp.co.uk",
    ],
)
def test_generic_names(shipped: GenericPatterns, name: str) -> None:
    assert generic_match(shipped, name, ipaddress.IPv4Address("192.0.2.1")) is not None


@pytest.mark.parametrize(
    "name",
    [
        "mx.good.test",
        "mail.example.com",
        "mx1.example.com",
        "mail-ot1-f54.google.com",
        "a8-30.smtp-out.amazonses.com",
        "o1.ptr1234.sendgrid.net",
        "mail.dslreports.example",
        "smtp.poolside.example",
        "mx.home-office.example",
        "outbound.customers-mail.example",
        "relay2.mobileco.example",
        # The owner's registered domain is not the provider's naming scheme.
        "mail.dynamic-solutions.com",
        "mx1.pool-tech.de",
        "mx.dyn.com",
        "out.dsl.net",
        "smtp.cable.co.uk",
    ],
)
def test_mail_server_names_are_not_generic(shipped: GenericPatterns, name: str) -> None:
    assert generic_match(shipped, name, ipaddress.IPv4Address("192.0.2.1")) is None


@pytest.mark.parametrize(
    "name",
    [
        "198-51-100-7.example.net",
        "7.100.51.198.example.net",
        "s198_51_100_7.example.net",
        "h198051100007.example.net",
        "c6336407.example.net",
        "mail-7-100-51-198.example.net",
    ],
)
def test_embedded_ip_forms(name: str) -> None:
    assert embeds_ip(name, ipaddress.IPv4Address(IP))


@pytest.mark.parametrize(
    "name", ["198-51-100-70.example.net", "1198-51-100-7.example.net", "mx.example.net"]
)
def test_other_digits_are_not_the_client_ip(name: str) -> None:
    assert not embeds_ip(name, ipaddress.IPv4Address(IP))


def test_allow_patterns_and_pattern_file_errors(tmp_path: Path) -> None:
    rules = tmp_path / "generic.toml"
    rules.write_text(
        "embedded_ip = false\nallow = ['^mx\\.']\n"
        "[[pattern]]\nname = 'dyn'\nregex = '(^|[.-])dyn([.-]|$)'\n",
        encoding="utf-8",
    )
    config = tmp_path / "smtpguard.toml"
    config.write_text(f"[smtpport]\ngeneric_patterns = '{rules}'\n", encoding="utf-8")
    patterns = load_config(config).smtpport.generic
    assert patterns is not None
    ip = ipaddress.IPv4Address(IP)
    assert generic_match(patterns, "a.dyn.isp.example", ip) == "dyn"
    assert generic_match(patterns, "mx.dyn.isp.example", ip) is None
    assert generic_match(patterns, "198-51-100-7.isp.example", ip) is None
    rules.write_text("[[pattern]]\nname = 'bad'\nregex = '(unclosed'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.file == str(rules)
    assert err.value.key == "pattern[0].regex"
    rules.write_text("allow = ['^mx[.]', '(?<!no)mail']\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.key == "allow[1]"
    assert "lookbehind is not supported" in err.value.message


#: Real-world naming schemes with their sources (see the file's header).
PTR_NAMES = tomllib.loads((ROOT / "tests" / "data" / "ptr-names.toml").read_text())["name"]


@pytest.mark.parametrize("entry", PTR_NAMES, ids=[e["ptr"] for e in PTR_NAMES])
def test_real_world_names(shipped: GenericPatterns, entry: dict[str, str]) -> None:
    """Dynamic schemes are generic; names with a static marker and mail servers' own
    names are not, even when they carry the address."""
    reason = generic_match(shipped, entry["ptr"], ipaddress.IPv4Address(entry["ip"]))
    assert (reason is not None) == (entry["kind"] == "dynamic"), (entry["source"], reason)


def test_the_data_has_every_kind_with_a_source() -> None:
    assert {e["kind"] for e in PTR_NAMES} == {"dynamic", "static", "server"}
    assert all(e["source"] for e in PTR_NAMES)


@pytest.mark.parametrize(
    "name",
    [
        "static.88-198-24-108.clients.your-server.de",
        "198-51-100-7.static.isp.example",
        "dsl-static-12.isp.example",
        "fixed-ip-7.pool.isp.example",
    ],
)
def test_a_static_marker_is_never_generic(shipped: GenericPatterns, name: str) -> None:
    assert generic_match(shipped, name, ipaddress.IPv4Address(IP)) is None


#: ip_digits as it was written for Python's re, with a backreference RE2 does not have.
_IP_DIGITS_BACKREF = re.compile(
    r"(^|[^0-9])[0-9]{1,3}([.\-_])[0-9]{1,3}\2[0-9]{1,3}\2[0-9]{1,3}([^0-9]|$)"
)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789.-_ab", max_size=20))
def test_ip_digits_without_backreference_matches_as_before(
    shipped: GenericPatterns, name: str
) -> None:
    """Differential: the shipped RE2 form agrees with the former backreference form."""
    ip_digits = dict(shipped.patterns)["ip_digits"]
    assert ip_digits.search(name) == (_IP_DIGITS_BACKREF.search(name) is not None), name


# --- smtpport decisions --------------------------------------------------------------


def decide(check: SmtpPort, ip: str = IP, **conn_args: object) -> object:
    conn = make_conn(sender="a@sender.test", ip=ip, **conn_args)  # type: ignore[arg-type]  # kwargs of mixed types
    check.prefetch(conn)
    return check(conn, soon())


def test_confirmed_ptr_passes(tmp_path: Path, resolver: Resolver, fake: FakeDns) -> None:
    host(fake, IP, "mx.sender.test")
    assert decide(smtpport(tmp_path, resolver)) is None


def test_confirmed_ipv6_ptr_passes(tmp_path: Path, resolver: Resolver, fake: FakeDns) -> None:
    host(fake, "2001:db8::7", "mx6.sender.test")
    assert decide(smtpport(tmp_path, resolver), ip="2001:db8::7") is None


@pytest.mark.parametrize("status", [Status.NXDOMAIN, Status.NODATA])
def test_no_ptr_is_a_hit(tmp_path: Path, resolver: Resolver, fake: FakeDns, status: Status) -> None:
    if status is Status.NODATA:
        fake.add(PTR, "TXT", '"no ptr here"')
    verdict = decide(smtpport(tmp_path, resolver))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "smtpport_check"
    assert f"no PTR for {IP}: {status.name}" in verdict.detail


@pytest.mark.parametrize("status", [Status.SERVFAIL, Status.TIMEOUT])
def test_ptr_failure_is_temporary(
    tmp_path: Path, resolver: Resolver, fake: FakeDns, status: Status
) -> None:
    fake.fail(PTR, "PTR", status)
    verdict = decide(smtpport(tmp_path, resolver))
    assert isinstance(verdict, TempError)
    assert status.name in verdict.detail


@pytest.mark.parametrize("mode", ["report", "off"])
def test_a_lookup_failure_defers_nothing_where_no_reason_refuses(
    tmp_path: Path, resolver: Resolver, fake: FakeDns, mode: str
) -> None:
    """Review rev224 M1: every reason off or in report (a rollout), a resolver outage
    still deferred every stranger with 450; one reason enforced, it does."""
    fake.fail(PTR, "PTR", Status.SERVFAIL)
    relaxed = {"no_ptr": mode, "fcrdns": mode, "generic": mode}
    (tmp_path / "relaxed").mkdir()
    (tmp_path / "one").mkdir()
    assert decide(smtpport(tmp_path / "relaxed", resolver, **relaxed)) is None
    one = {**relaxed, "fcrdns": "enforce"}
    assert isinstance(decide(smtpport(tmp_path / "one", resolver, **one)), TempError)


@pytest.mark.parametrize("mode", ["report", "off"])
def test_each_reason_has_its_own_mode(
    tmp_path: Path,
    resolver: Resolver,
    fake: FakeDns,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One reason relaxed leaves the others enforced; "report" logs what it saw."""
    caplog.set_level(logging.INFO, "smtpguard")
    relaxed = smtpport(tmp_path, resolver, no_ptr=mode)
    assert decide(relaxed) is None  # IP has no PTR
    assert ("reason=no_ptr mode=report" in caplog.text) == (mode == "report")
    host(fake, "198.51.100.8", "mx.liar.test", forward={"mx.liar.test": "198.51.100.99"})
    verdict = decide(relaxed, ip="198.51.100.8")
    assert isinstance(verdict, Hit)
    assert verdict.detail.startswith("fcrdns: ")

    host(fake, "198.51.100.9", "198-51-100-9.dyn.isp.test")
    generic_relaxed = smtpport(tmp_path, resolver, generic=mode)
    assert decide(generic_relaxed, ip="198.51.100.9") is None
    verdict = decide(smtpport(tmp_path, resolver, fcrdns=mode, generic=mode), ip="198.51.100.8")
    assert verdict is None
    verdict = decide(generic_relaxed)
    assert isinstance(verdict, Hit)
    assert verdict.detail.startswith("no_ptr: ")


def test_unconfirmed_ptr_is_a_hit(tmp_path: Path, resolver: Resolver, fake: FakeDns) -> None:
    host(fake, IP, "mx.liar.test", forward={"mx.liar.test": "198.51.100.99"})
    verdict = decide(smtpport(tmp_path, resolver))
    assert isinstance(verdict, Hit)
    assert "does not resolve back" in verdict.detail


def test_unconfirmed_ptr_with_failed_forward_lookup_is_temporary(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    host(fake, IP, "mx.slow.test", forward={"mx.slow.test": ""})
    fake.fail("mx.slow.test", "A", Status.TIMEOUT)
    assert isinstance(decide(smtpport(tmp_path, resolver)), TempError)


def test_fcrdns_can_be_turned_off(tmp_path: Path, resolver: Resolver, fake: FakeDns) -> None:
    host(fake, IP, "mx.liar.test", forward={"mx.liar.test": "198.51.100.99"})
    assert decide(smtpport(tmp_path, resolver, fcrdns=False)) is None


def test_generic_confirmed_name_is_a_hit(tmp_path: Path, resolver: Resolver, fake: FakeDns) -> None:
    host(fake, IP, "198-51-100-7.dyn.isp.test")
    verdict = decide(smtpport(tmp_path, resolver))
    assert isinstance(verdict, Hit)
    assert "looks generic (pattern dynamic)" in verdict.detail
    assert decide(smtpport(tmp_path, resolver, generic_patterns="")) is None


def test_one_good_confirmed_name_is_enough(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    host(fake, IP, "198-51-100-7.dyn.isp.test", "mx.sender.test")
    assert decide(smtpport(tmp_path, resolver)) is None


@pytest.mark.parametrize("status", [Status.TIMEOUT, Status.SERVFAIL])
def test_a_name_whose_lookup_failed_may_be_the_good_one(
    tmp_path: Path, resolver: Resolver, fake: FakeDns, status: Status
) -> None:
    """Review rev189 F1, through real unbound and Postfix: the confirmed name looked
    generic, the other's forward lookup failed, and the client got a permanent 554 (one
    name that does not look generic is enough, and that one may have been it)."""
    host(fake, IP, "198-51-100-7.dyn.isp.test", "host.slow.test", forward={"host.slow.test": ""})
    fake.fail("host.slow.test", "A", status)
    verdict = decide(smtpport(tmp_path, resolver))
    assert isinstance(verdict, TempError)
    assert "host.slow.test may not (no forward answer in time)" in verdict.detail
    # A failed name that looks generic too changes nothing.
    other = "198.51.100.8"
    host(fake, other, "198-51-100-8.dyn.isp.test", "8.dsl.isp.test", forward={"8.dsl.isp.test": ""})
    fake.fail("8.dsl.isp.test", "A", status)
    assert isinstance(decide(smtpport(tmp_path, resolver), ip=other), Hit)


def test_a_name_confirmed_in_time_is_enough(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    """Review rev189 F3: the other name's servers never answered, and the mail server
    already confirmed was deferred until the cache held both."""
    fake.slow["slow.test"] = 5.0
    check = smtpport(tmp_path, resolver)

    conns: list[Connection] = []

    def judged(ip: str) -> object:
        # Well before the resolver's own timeout: the slow answers are not in.
        conns.append(make_conn(sender="a@sender.test", ip=ip))
        check.prefetch(conns[-1])
        return check(conns[-1], Event(deadline=time.monotonic() + 0.5))

    host(fake, IP, "mx.sender.test", "host.slow.test")
    assert judged(IP) is None
    # The name confirmed in time looks generic: the silent one may not.
    other = "198.51.100.8"
    host(fake, other, "198-51-100-8.dyn.isp.test", "mail.slow.test")
    verdict = judged(other)
    assert isinstance(verdict, TempError)
    assert "mail.slow.test may not (no forward answer in time)" in verdict.detail
    # Nothing confirmed in time: deferred as before.
    third = "198.51.100.9"
    host(fake, third, "mx.slow.test")
    verdict = judged(third)
    assert isinstance(verdict, TempError)
    # The PTR answered: the late lookup is named (review rev199: the log blamed the PTR).
    assert verdict.detail == f"PTR {third}: mx.slow.test: forward lookup stage deadline reached"
    # A message let through (on_temp_error = "pass") says so (RFC 8601 §2.7.3).
    assert [iprev_result(conn) for conn in conns] == ["pass", "pass", "temperror"]


def test_a_name_past_the_first_ten_may_be_the_good_one(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    names = [f"198-51-100-7.dyn{i}.isp.test" for i in range(10)] + ["mx.sender.test"]
    host(fake, IP, *names)
    assert decide(smtpport(tmp_path, resolver)) is None
    assert decide(smtpport(tmp_path, resolver, fcrdns=False)) is None
    # Eleven generic names: refused as ever.
    host(fake, "198.51.100.8", *(n.replace("-7.", "-8.") for n in names[:10]), "8.dsl.isp.test")
    assert isinstance(decide(smtpport(tmp_path, resolver), ip="198.51.100.8"), Hit)


def test_at_most_ten_ptr_names_are_followed(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    names = [f"n{i}.sender.test" for i in range(12)]
    host(fake, IP, *names, forward=dict.fromkeys(names, "198.51.100.99"))
    # Review rev48: none of the first ten resolves back, but the two not looked up
    # might (resolvers rotate the order): no refusal for that.
    assert decide(smtpport(tmp_path, resolver)) is None
    assert sum(rdtype == "A" for _, rdtype in fake.calls) == 10
    # Ten names or fewer, none resolving back: refused as ever.
    host(fake, "198.51.100.8", *names[:10], forward=dict.fromkeys(names, "198.51.100.99"))
    verdict = decide(smtpport(tmp_path, resolver), ip="198.51.100.8")
    assert isinstance(verdict, Hit)
    assert "does not resolve back" in verdict.detail


def test_a_ptr_to_the_root_is_no_ptr(tmp_path: Path, resolver: Resolver, fake: FakeDns) -> None:
    """Review rev48: it was logged as "PTR  does not resolve back", an empty name."""
    fake.add(PTR, "PTR", ".")
    verdict = decide(smtpport(tmp_path, resolver))
    assert isinstance(verdict, Hit)
    assert verdict.detail.startswith("no_ptr: no PTR for 198.51.100.7")


def test_trusted_clients_are_not_looked_up(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    assert decide(smtpport(tmp_path, resolver), trusted_network=True) is None
    assert decide(smtpport(tmp_path, resolver), auth_login="alice", auth_type="PLAIN") is None
    # Authentication is known only at MAIL: the lookup may have started, no verdict.
    assert all(name == PTR for name, _ in fake.calls)


# --- connect-back ------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.5", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_connect_back(tmp_path: Path, resolver: Resolver, fake: FakeDns, listener: int) -> None:
    check = smtpport(
        tmp_path, resolver, connect_back=True, connect_back_port=listener, connect_back_timeout=0.5
    )
    host(fake, "127.0.0.5", "mx5.sender.test")
    host(fake, "127.0.0.6", "mx6.sender.test")
    assert decide(check, ip="127.0.0.5") is None
    verdict = decide(check, ip="127.0.0.6")  # nothing listens there
    assert isinstance(verdict, Hit)
    assert f"port {listener} does not accept SMTP: connection refused" in verdict.detail
    # Cached per IP: the second session does not connect again.
    conn = make_conn(sender="a@sender.test", ip="127.0.0.6")
    check.prefetch(conn)
    assert conn.scratch["smtpport.connect_back"].result(timeout=2) == (False, "cached")


# --- helo_dns --------------------------------------------------------------------------


def helo_check(tmp_path: Path, resolver: Resolver) -> HeloDns:
    return HeloDns(dns_services(tmp_path, resolver))


def helo_decide(check: HeloDns, helo: str, **conn_args: object) -> object:
    conn = make_conn(sender="a@sender.test", helo=helo, **conn_args)  # type: ignore[arg-type]  # kwargs of mixed types
    check.prefetch(conn)
    return check(conn, soon())


def test_helo_that_resolves_passes(tmp_path: Path, resolver: Resolver, fake: FakeDns) -> None:
    fake.add("mx.sender.test", "AAAA", "2001:db8::1")
    assert helo_decide(helo_check(tmp_path, resolver), "MX.Sender.Test") is None


@pytest.mark.parametrize("helo", ["nohost.sender.test", "no_host.sender.test"])
def test_helo_that_does_not_resolve(
    tmp_path: Path, resolver: Resolver, fake: FakeDns, helo: str
) -> None:
    """An underscore passes the helo check's syntax (as Postfix's): not the lookup
    (review rev115 F1)."""
    verdict = helo_decide(helo_check(tmp_path, resolver), helo)
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "helo_error"
    assert "A NXDOMAIN, AAAA NXDOMAIN" in verdict.detail


def test_a_helo_name_with_an_mx_record_resolves(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    """Review rev189 F2: Postfix's reject_unknown_helo_hostname wants "a DNS A or MX
    record"; a HELO of the bare domain (MX, no address) was refused."""
    fake.add("sender.test", "MX", "10 mx.sender.test.")
    check = helo_check(tmp_path, resolver)
    assert helo_decide(check, "sender.test") is None
    fake.add("nomx.sender.test", "TXT", '"x"')
    verdict = helo_decide(check, "nomx.sender.test")
    assert isinstance(verdict, Hit)
    assert verdict.detail.endswith("A NODATA, AAAA NODATA, MX NODATA")
    # The MX is asked only where there is no address.
    fake.add("mx.sender.test", "A", "198.51.100.7")
    fake.calls.clear()
    assert helo_decide(check, "mx.sender.test") is None
    assert ("mx.sender.test", "MX") not in fake.calls


def test_helo_lookup_failure_is_temporary(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    fake.fail("mx.sender.test", "A", Status.SERVFAIL)
    fake.add("mx.sender.test", "TXT", '"x"')
    assert isinstance(helo_decide(helo_check(tmp_path, resolver), "mx.sender.test"), TempError)


@pytest.mark.parametrize("helo", ["[198.51.100.7]", "localhost", "bad..name.test"])
def test_helo_syntax_is_left_to_the_helo_check(
    tmp_path: Path, resolver: Resolver, fake: FakeDns, helo: str
) -> None:
    assert helo_decide(helo_check(tmp_path, resolver), helo) is None
    assert fake.calls == []


def test_a_helo_name_that_resolves_is_remembered(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    fake.add("mx.sender.test", "A", "192.0.2.1")
    check = helo_check(tmp_path, resolver)
    assert helo_decide(check, "mx.sender.test") is None
    before = resolver.stats.hits + resolver.stats.misses
    assert helo_decide(check, "MX.sender.test.") is None
    assert resolver.stats.hits + resolver.stats.misses == before  # not even the cache read
    # A name that does not resolve is asked again each time (it may be added).
    assert isinstance(helo_decide(check, "nohost.sender.test"), Hit)
    before = resolver.stats.hits + resolver.stats.misses
    assert isinstance(helo_decide(check, "nohost.sender.test"), Hit)
    assert resolver.stats.hits + resolver.stats.misses > before


def test_helo_of_trusted_client_is_not_looked_up(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    assert helo_decide(helo_check(tmp_path, resolver), "x.test", trusted_network=True) is None
    assert fake.calls == []


class CountingForward:
    """A transport: the PTR of IP names ten hosts, each forward lookup takes 50 ms;
    ``most`` is the largest number of forward lookups seen in flight at once."""

    def __init__(self) -> None:
        self.now = self.most = 0

    async def query(self, name: str, rdtype: str) -> Answer:
        if rdtype == "PTR":
            return Answer.of(name, "PTR", *(f"n{i}.sender.test." for i in range(10)))
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.05)
        self.now -= 1
        return Answer.of(name, rdtype, "198.51.100.99")


def test_forward_lookups_of_one_client_are_two_at_a_time() -> None:
    """Review rev52: ten at once per connection let a flood of clients whose names
    never answer hold the resolver's slots, and other sessions' SPF lookups timed out."""
    transport = CountingForward()
    resolver = Resolver(transport)
    try:
        rdns = resolver.spawn(reverse_dns(resolver, ipaddress.ip_address(IP), None)).result(5)
    finally:
        resolver.close()
    assert len(rdns.names) == 10
    assert rdns.confirmed == ()
    assert transport.most == FORWARD_IN_FLIGHT == 2


def test_reverse_dns_lives_as_long_as_its_first_answer(fake: FakeDns) -> None:
    """Review rev199: the verdict memo outlived the TTLs of the answers it rested on;
    the reverse DNS says when the first of them leaves the resolver's cache."""
    fake.add(PTR, "PTR", "mail.sender.test.", ttl=300)
    fake.add("mail.sender.test", "A", IP, ttl=5)
    clock = FakeClock(1000.0)
    resolver = Resolver(fake, clock=clock)
    try:
        rdns = resolver.spawn(reverse_dns(resolver, ipaddress.ip_address(IP), None)).result(5)
        assert rdns.confirmed == ("mail.sender.test",)
        assert rdns.expires == 1005.0
        assert resolver.left(expires=rdns.expires) == 5.0
        cached = cached_reverse_dns(resolver, ipaddress.ip_address(IP))
        assert cached is not None
        assert cached.expires == 1005.0
    finally:
        resolver.close()


def test_a_closed_sessions_lookups_leave_the_queue(tmp_path: Path, fake: FakeDns) -> None:
    """A connect flood whose PTR names never answer: each session's forward lookups
    outlived it and waited for slots later sessions needed (review rev52 N3). When a
    session is abandoned its reverse DNS is cancelled, and its forward lookups not
    sent yet (waiting for their turn in reverse_dns, two at a time) never are. They
    use the client pool, not the shared one. (The resolver's own dropping of queued
    lookups is test_dns's.)"""
    names = [f"n{i}.slow.test" for i in range(10)]
    host(fake, IP, *names)
    fake.slow["slow.test"] = 0.5
    resolver = fake_resolver(fake, max_inflight=2)
    try:
        check = smtpport(tmp_path, resolver)
        conn = make_conn(sender="a@sender.test", ip=IP)
        check.prefetch(conn)
        wait_until(lambda: sum(rdtype == "A" for _, rdtype in fake.calls) == 2)
        hold_slots(resolver, fake, 2)  # the shared pool is another's
        conn.abandon()
        # The client pool's slots are handed out in turn: a lookup asked now is sent
        # after any of the session's that were still queued.
        after = resolver.submit("after.test", "A", client=True)
        assert resolver.wait(after, time.monotonic() + 5) is not None
        assert sum(name.endswith("slow.test") for name, _ in fake.calls) == 2
    finally:
        resolver.close()


def test_a_connect_flood_from_one_network_defers_that_network_only(
    tmp_path: Path, fake: FakeDns
) -> None:
    """A flood of connections from one /24 whose reverse zone never answers holds that
    network's share of the client pool; other clients' reverse DNS is still asked."""
    fake.slow["100.51.198.in-addr.arpa"] = 60
    resolver = fake_resolver(fake, max_inflight=16)  # four slots per network
    try:
        check = smtpport(tmp_path, resolver)
        for i in range(1, 33):
            check.prefetch(make_conn(sender="a@sender.test", ip=f"198.51.100.{i}"))
        host(fake, "203.0.113.7", "mx.sender.test")
        assert decide(check, ip="203.0.113.7") is None
        flooded = make_conn(sender="a@sender.test", ip="198.51.100.200")
        check.prefetch(flooded)
        verdict = check(flooded, Event(deadline=time.monotonic() + 0.3))
        assert isinstance(verdict, TempError), verdict
        assert verdict.detail == "PTR 198.51.100.200: stage deadline reached"  # its PTR late
    finally:
        resolver.close()


def test_a_closed_sessions_helo_lookups_leave_the_queue(tmp_path: Path, fake: FakeDns) -> None:
    """Review rev61 F3: a flood of HELO names that never answer, sessions that hang up
    at once: their lookups were sent for seconds after, and a later client's PTR
    waited behind them. A session's HELO lookups are dropped when it closes."""
    fake.slow["slow.test"] = 0.5
    resolver = fake_resolver(fake, max_inflight=16)  # four client-pool slots per network
    try:
        check = helo_check(tmp_path, resolver)
        first = make_conn(sender="a@sender.test", helo="h0.slow.test")
        second = make_conn(sender="a@sender.test", helo="h1.slow.test")
        third = make_conn(sender="a@sender.test", helo="h2.slow.test")
        for conn in (first, second, third):
            check.prefetch(conn)
        wait_until(lambda: len(fake.calls) == 4)  # the share: the third one waits
        third.abandon()
        after = resolver.submit("after.slow.test", "A", client=True, network="198.51.100.0/24")
        assert resolver.wait(after, time.monotonic() + 5) is not None
        assert not any(name == "h2.slow.test" for name, _ in fake.calls), fake.calls
    finally:
        resolver.close()
