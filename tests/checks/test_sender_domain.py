"""sender_domain: MX / implicit MX / null MX (RFC 5321 §5.1, RFC 7505)."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest

from smtpguard.checks import Event
from smtpguard.checks.sender_domain import SenderDomain
from smtpguard.dns import Resolver, Status, client_network
from smtpguard.verdict import Hit, TempError
from support.checks import make_conn
from support.fake_dns import FakeDns, dns_services, fake_resolver, hold_slots

D = "sender.test"
SITE = {"local_domains": ["example.com"]}


@pytest.fixture
def check(tmp_path: Path, resolver: Resolver) -> SenderDomain:
    return SenderDomain(dns_services(tmp_path, resolver, site=SITE))


def decide(check: SenderDomain, sender: str = f"a@{D}") -> object:
    return check(make_conn(sender=sender), Event(deadline=time.monotonic() + 2))


def test_mx_passes(check: SenderDomain, fake: FakeDns) -> None:
    fake.add(D, "MX", "10 mx.elsewhere.test.")
    assert decide(check) is None


@pytest.mark.parametrize("rdtype", ["A", "AAAA"])
def test_address_record_is_the_implicit_mx(check: SenderDomain, fake: FakeDns, rdtype: str) -> None:
    fake.add(D, rdtype, "192.0.2.1" if rdtype == "A" else "2001:db8::1")
    assert decide(check) is None


def test_nxdomain_is_a_hit(check: SenderDomain) -> None:
    verdict = decide(check)
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "sender_unvalidated"
    assert verdict.detail == f"{D}: NXDOMAIN"


def test_no_mx_a_or_aaaa_is_a_hit(check: SenderDomain, fake: FakeDns) -> None:
    fake.add(D, "TXT", '"v=spf1 -all"')
    verdict = decide(check)
    assert isinstance(verdict, Hit)
    assert "no MX, A or AAAA" in verdict.detail


def test_a_verdict_is_remembered_no_longer_than_its_answers(
    check: SenderDomain, fake: FakeDns
) -> None:
    """Review rev199: an NXDOMAIN without an SOA (TTL 0: not to be cached, RFC 2308
    §5) was remembered for dns.verdict_ttl, and the new domain's mail refused."""
    fake.negative_ttl = 0
    assert isinstance(decide(check), Hit)
    fake.add(D, "MX", "10 mx.elsewhere.test.")  # registered meanwhile
    assert decide(check) is None
    assert fake.count(D, "MX") == 2
    assert decide(check) is None  # an answer of 300 s: remembered
    assert fake.count(D, "MX") == 2


def test_null_mx_is_a_hit(check: SenderDomain, fake: FakeDns) -> None:
    fake.add(D, "MX", "0 .")
    fake.add(D, "A", "192.0.2.1")  # an A record does not undo a null MX (RFC 7505 §3)
    verdict = decide(check)
    assert isinstance(verdict, Hit)
    assert "null MX" in verdict.detail


@pytest.mark.parametrize("status", [Status.SERVFAIL, Status.TIMEOUT])
def test_mx_failure_is_temporary(check: SenderDomain, fake: FakeDns, status: Status) -> None:
    fake.fail(D, "MX", status)
    verdict = decide(check)
    assert isinstance(verdict, TempError)
    assert verdict.reply_id == "database_temp_error"
    assert status.name in verdict.detail


def test_address_failure_without_mx_is_temporary(check: SenderDomain, fake: FakeDns) -> None:
    fake.add(D, "TXT", '"x"')
    fake.fail(D, "AAAA", Status.TIMEOUT)
    assert isinstance(decide(check), TempError)


def test_one_address_record_is_enough_when_the_other_fails(
    check: SenderDomain, fake: FakeDns
) -> None:
    fake.add(D, "A", "192.0.2.1")
    fake.fail(D, "AAAA", Status.SERVFAIL)
    assert decide(check) is None


@pytest.mark.parametrize("sender", ["<>", "a@example.com", "a@[192.0.2.1]"])
def test_not_looked_up(check: SenderDomain, fake: FakeDns, sender: str) -> None:
    # The null sender, one of our local domains, an address literal.
    assert decide(check, sender) is None
    assert fake.calls == []


def test_asks_mx_a_and_aaaa_at_once(check: SenderDomain, fake: FakeDns) -> None:
    fake.delay = 0.3
    start = time.monotonic()
    assert isinstance(decide(check), Hit)
    assert time.monotonic() - start < 0.6


def test_a_lookup_that_waited_for_a_slot_is_deferred(tmp_path: Path, fake: FakeDns) -> None:
    """A timeout in the resolver's own queue says nothing of the domain (a connect
    flood can cause it): deferred whatever on_temp_error says (review rev52 N3)."""
    resolver = fake_resolver(fake, max_inflight=3)  # one session's MX, A and AAAA
    try:
        check = SenderDomain(dns_services(tmp_path, resolver, site=SITE))
        fake.slow["slow.test"] = 60
        event = Event(deadline=time.monotonic() + 0.2)
        slow = check(make_conn(sender="a@slow.test"), event)
        assert isinstance(slow, TempError), slow
        assert not slow.firm, slow
        queued = check(make_conn(sender=f"a@{D}"), Event(deadline=time.monotonic() + 0.2))
        assert isinstance(queued, TempError), queued
        assert queued.firm, queued
        assert "waiting for a resolver slot" in queued.detail
    finally:
        resolver.close()


def test_a_flood_from_one_network_defers_that_network_only(tmp_path: Path, fake: FakeDns) -> None:
    """Review rev59 F4: other sessions' MAIL FROMs with dead domains, all from one /24,
    held every slot and every sender was deferred. They hold that network's share."""
    resolver = fake_resolver(fake, max_inflight=16)  # four slots per network
    try:
        check = SenderDomain(dns_services(tmp_path, resolver, site=SITE))
        fake.slow["dead.test"] = 60
        flood = client_network(ipaddress.ip_address("198.51.100.7"))
        for i in range(32):
            resolver.submit(f"{i}.dead.test", "MX", network=flood)
        fake.add(D, "MX", "10 mx.elsewhere.test.")
        other = make_conn(sender=f"a@{D}", ip="203.0.113.9")
        assert check(other, Event(deadline=time.monotonic() + 1)) is None
        same = make_conn(sender="a@other.test", ip="198.51.100.99")
        deferred = check(same, Event(deadline=time.monotonic() + 0.3))
        assert isinstance(deferred, TempError), deferred
        assert deferred.firm, deferred
        # The site's own relay in that network (trusted_networks) takes no share.
        fake.add("relayed.test", "MX", "10 mx.elsewhere.test.")
        relay = make_conn(sender="a@relayed.test", ip="198.51.100.25", trusted_network=True)
        assert check(relay, Event(deadline=time.monotonic() + 1)) is None
    finally:
        resolver.close()


def test_waits_of_the_sender_checks_before_it_are_given_back(tmp_path: Path) -> None:
    """Review rev81 F1: an spf_pass exemption's SPF, asked at sender_domain's turn,
    waited for slots past the sender checks' cap; sender_domain then asked after its
    deadline, its plain timeout passed, and a domain without MX got through. It takes
    those waits over as SPF does (Event.sender_waits): the time is given back."""
    fake = FakeDns()
    fake.slow["nomx.test"] = 0.1  # NODATA for MX, A and AAAA, after 0.1 s
    resolver = fake_resolver(fake)  # timeout 2 s: 0.5 s given back at most
    try:
        check = SenderDomain(dns_services(tmp_path, resolver, site=SITE))
        event = Event(deadline=time.monotonic() - 0.55, stage_length=0.6)
        event.sender_waited = 0.5  # what the exemption's SPF waited for slots
        time.sleep(0.1)  # the cap of two stages has passed
        cap = event.sender_deadline()
        assert cap is not None
        assert cap < time.monotonic()
        verdict = check(make_conn(sender="a@nomx.test"), event)
        assert isinstance(verdict, Hit), verdict
        assert verdict.reply_id == "sender_unvalidated"
        assert time.monotonic() < cap + 0.5 + 0.4
    finally:
        resolver.close()


def test_a_busy_lookup_the_verdict_does_not_rest_on_leaves_it_to_on_temp_error(
    tmp_path: Path, fake: FakeDns
) -> None:
    """Review rev122 F3: the MX timed out after asking the server, and A and AAAA
    waited for a slot; the MX verdict (which A and AAAA cannot change) was made firm,
    deferred whatever on_temp_error said, with no word of why."""
    resolver = fake_resolver(fake, max_inflight=1)
    try:
        fake.slow[D] = 60
        check = SenderDomain(dns_services(tmp_path, resolver, site=SITE))
        verdict = check(make_conn(sender=f"a@{D}"), Event(deadline=time.monotonic() + 0.3))
        assert isinstance(verdict, TempError), verdict
        assert verdict.detail.startswith(f"{D} MX: ")
        assert not verdict.firm, verdict
    finally:
        resolver.close()
    # The MX itself without a slot: firm, and the detail says why.
    resolver = fake_resolver(fake, max_inflight=1)
    try:
        hold_slots(resolver, fake, 1)
        check = SenderDomain(dns_services(tmp_path, resolver, site=SITE))
        other = check(make_conn(sender="a@other.test"), Event(deadline=time.monotonic() + 0.3))
    finally:
        resolver.close()
    assert isinstance(other, TempError), other
    assert other.firm, other
    assert other.detail.endswith("(MX: no slot to ask)")
