"""rbl / openrelay: zones asked at connect, decided at MAIL FROM (RFC 5782)."""

from __future__ import annotations

import ipaddress
import logging
import time
from pathlib import Path

import pytest

from smtpguard.checks import Event
from smtpguard.checks.dnsbl import SCORES, OpenRelay, Rbl, classify
from smtpguard.config import DnsblZone
from smtpguard.dns import Answer, Resolver, Status
from smtpguard.verdict import Hit, TempError
from support.checks import make_conn
from support.fake_dns import FakeDns, dns_services, fake_resolver, hold_slots
from support.unbound import RBL_ZONE, RELAY_ZONE

DNSBL = {
    "zones": [
        RBL_ZONE,
        {"name": "second.test", "kind": "rbl"},
        RELAY_ZONE,
        {"name": "v4only.test", "ipv6": False},
    ]
}

CLIENT = "198.51.100.66"
NAME = "66.100.51.198"
V6_NAME = ".".join(reversed("20010db8" + "0" * 20 + "0066"))


@pytest.fixture
def rbl(tmp_path: Path, resolver: Resolver) -> Rbl:
    return Rbl(dns_services(tmp_path, resolver, dnsbl=DNSBL))


def soon() -> Event:
    return Event(deadline=time.monotonic() + 2)


def zone(**kwargs: object) -> DnsblZone:
    return DnsblZone(name="z.test", **kwargs)  # type: ignore[arg-type]  # kwargs of mixed types, checked by the loader


def a(*values: str) -> Answer:
    return Answer.of("x.z.test", "A", *values)


# --- which answers are listings ---------------------------------------------------------


def test_classify_ranges_bitmask_and_error_codes() -> None:
    ranges = zone(
        answers=((ipaddress.IPv4Address("127.0.0.2"), ipaddress.IPv4Address("127.0.0.11")),)
    )
    assert classify(ranges, a("127.0.0.2")) == (["127.0.0.2"], [])
    assert classify(ranges, a("127.0.0.11")) == (["127.0.0.11"], [])
    assert classify(ranges, a("127.0.0.12")) == ([], [])  # not accepted, not an error
    bits = zone(bitmask=0b100)
    assert classify(bits, a("127.0.0.4"))[0] == ["127.0.0.4"]
    assert classify(bits, a("127.0.0.6"))[0] == ["127.0.0.6"]
    assert classify(bits, a("127.0.0.3"))[0] == []
    anything = zone()
    assert classify(anything, a("127.0.1.9"))[0] == ["127.0.1.9"]
    for code in ("127.255.255.252", "127.255.255.254", "127.255.255.255", "127.0.0.1"):
        listed, ignored = classify(anything, a(code))
        assert listed == []
        assert "refused" in ignored[0]
    listed, ignored = classify(anything, a("203.0.113.1"))
    assert listed == []
    assert "outside 127.0.0.0/8" in ignored[0]
    assert classify(anything, Answer("x", "A", Status.NXDOMAIN)) == ([], [])


# --- decisions --------------------------------------------------------------------------


def test_listed_client_hit_carries_the_txt_reason(rbl: Rbl, fake: FakeDns) -> None:
    fake.add(f"{NAME}.rbl.test", "A", "127.0.0.4")
    fake.add(f"{NAME}.rbl.test", "TXT", '"spam source, see https://rbl.test/"')
    conn = make_conn(sender="a@sender.test", ip=CLIENT)
    rbl.prefetch(conn)
    verdict = rbl(conn, soon())
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "rbl_deny"
    assert "rbl.test as 127.0.0.4" in verdict.detail
    assert "spam source, see https://rbl.test/" in verdict.detail


def test_a_long_txt_reason_is_cut_for_the_log(rbl: Rbl, fake: FakeDns) -> None:
    """Review rev48: a 64 KB TXT record made a log line of 64 KB."""
    fake.add(f"{NAME}.rbl.test", "A", "127.0.0.2")
    fake.add(f"{NAME}.rbl.test", "TXT", *(f'"{c * 250}"' for c in "abcdefgh"))
    conn = make_conn(sender="a@sender.test", ip=CLIENT)
    rbl.prefetch(conn)
    verdict = rbl(conn, soon())
    assert isinstance(verdict, Hit)
    reason = verdict.detail.split(": ", 1)[1]
    assert len(reason) == 303
    assert reason.endswith("a" * 250 + " " + "b" * 49 + "...")


def test_not_listed_passes_and_asks_every_zone_of_its_kind_once(rbl: Rbl, fake: FakeDns) -> None:
    conn = make_conn(sender="a@sender.test", ip=CLIENT)
    rbl.prefetch(conn)
    rbl.prefetch(conn)  # idempotent: HELO calls it again
    assert rbl(conn, soon()) is None
    assert rbl(conn, soon()) is None  # a second transaction reuses the answers
    asked = sorted(name for name, _ in fake.calls)
    assert asked == sorted(f"{NAME}.{z}" for z in ("rbl.test", "second.test", "v4only.test"))


def test_answer_outside_the_accepted_codes_passes(rbl: Rbl, fake: FakeDns) -> None:
    fake.add(f"{NAME}.rbl.test", "A", "127.0.0.20")
    assert rbl(make_conn(sender="a@sender.test", ip=CLIENT), soon()) is None


def test_error_codes_are_ignored_and_logged_once(
    rbl: Rbl, fake: FakeDns, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="smtpguard")
    fake.add(f"{NAME}.second.test", "A", "127.255.255.254")
    for _ in range(3):
        assert rbl(make_conn(sender="a@sender.test", ip=CLIENT), soon()) is None
    warnings = [r.getMessage() for r in caplog.records if "answer ignored" in r.getMessage()]
    assert len(warnings) == 1
    assert "zone=second.test" in warnings[0]
    assert "127.255.255.254" in warnings[0]


def test_ipv6_nibble_form_and_ipv4_only_zones(rbl: Rbl, fake: FakeDns) -> None:
    fake.add(f"{V6_NAME}.rbl.test", "A", "127.0.0.2")
    verdict = rbl(make_conn(sender="a@sender.test", ip="2001:db8::66"), soon())
    assert isinstance(verdict, Hit)
    assert not any(name.endswith("v4only.test") for name, _ in fake.calls)


def test_ipv4_mapped_client_is_looked_up_as_ipv4(rbl: Rbl, fake: FakeDns) -> None:
    fake.add(f"{NAME}.rbl.test", "A", "127.0.0.2")
    assert isinstance(rbl(make_conn(sender="a@sender.test", ip=f"::ffff:{CLIENT}"), soon()), Hit)


def test_trusted_clients_are_never_looked_up(rbl: Rbl, fake: FakeDns) -> None:
    conn = make_conn(sender="a@sender.test", ip=CLIENT, trusted_network=True)
    rbl.prefetch(conn)
    assert rbl(conn, soon()) is None
    assert fake.calls == []


def test_authenticated_session_passes_at_mail(rbl: Rbl, fake: FakeDns) -> None:
    fake.add(f"{NAME}.rbl.test", "A", "127.0.0.2")
    conn = make_conn(sender="a@sender.test", ip=CLIENT, auth_login="alice", auth_type="PLAIN")
    assert rbl(conn, soon()) is None


def test_temporary_failure_is_a_temp_error(rbl: Rbl, fake: FakeDns) -> None:
    fake.fail(f"{NAME}.second.test", "A", Status.SERVFAIL)
    verdict = rbl(make_conn(sender="a@sender.test", ip=CLIENT), soon())
    assert isinstance(verdict, TempError)
    assert verdict.reply_id == "database_temp_error"
    assert "second.test: SERVFAIL" in verdict.detail


def test_a_listing_wins_over_another_zones_failure(rbl: Rbl, fake: FakeDns) -> None:
    fake.fail(f"{NAME}.second.test", "A", Status.TIMEOUT)
    fake.add(f"{NAME}.rbl.test", "A", "127.0.0.2")
    assert isinstance(rbl(make_conn(sender="a@sender.test", ip=CLIENT), soon()), Hit)


def test_stage_deadline_bounds_the_wait(rbl: Rbl, fake: FakeDns) -> None:
    fake.delay = 1.0
    conn = make_conn(sender="a@sender.test", ip=CLIENT)
    rbl.prefetch(conn)
    start = time.monotonic()
    verdict = rbl(conn, Event(deadline=time.monotonic() + 0.1))
    assert time.monotonic() - start < 0.5
    assert isinstance(verdict, TempError)
    assert "stage deadline" in verdict.detail


def test_prefetch_starts_all_zones_at_once_and_returns_at_once(rbl: Rbl, fake: FakeDns) -> None:
    fake.delay = 0.3
    conn = make_conn(sender="a@sender.test", ip=CLIENT)
    start = time.monotonic()
    rbl.prefetch(conn)
    assert time.monotonic() - start < 0.1
    assert rbl(conn, Event(deadline=time.monotonic() + 2)) is None
    # Four zones of 0.3 s each, asked together.
    assert time.monotonic() - start < 0.9


def test_openrelay_uses_only_its_zones(tmp_path: Path, resolver: Resolver, fake: FakeDns) -> None:
    check = OpenRelay(dns_services(tmp_path, resolver, dnsbl=DNSBL))
    fake.add(f"{NAME}.relays.test", "A", "127.0.0.2")
    verdict = check(make_conn(sender="a@sender.test", ip=CLIENT), soon())
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "openrelay_check"
    # The client in its zone, and (it is listed) the zone's test point, which is not
    # (asked by the background warm-up and perhaps by the check too, if it came first).
    assert {name for name, _ in fake.calls if _ == "A"} == {
        f"{NAME}.relays.test",
        "1.0.0.127.relays.test",
    }


# --- a client in no zone is remembered (dns.verdict_ttl) ----------------------------------


def reads(resolver: Resolver) -> int:
    """Lookups that reached the resolver: answered from its cache or asked."""
    return resolver.stats.hits + resolver.stats.misses


def test_a_client_in_no_zone_is_remembered(rbl: Rbl, resolver: Resolver) -> None:
    assert rbl(make_conn(sender="a@sender.test", ip=CLIENT), soon()) is None
    before = reads(resolver)
    conn = make_conn(sender="a@sender.test", ip=CLIENT)
    rbl.prefetch(conn)
    assert rbl(conn, soon()) is None
    assert reads(resolver) == before  # neither a zone nor the cache asked again
    assert rbl(make_conn(sender="a@sender.test", ip="198.51.100.67"), soon()) is None
    assert reads(resolver) > before  # another client is looked up


@pytest.mark.parametrize(
    "answer",
    ["127.255.255.254", "203.0.113.1", "127.0.0.2", Status.SERVFAIL],
    ids=["refused_code", "outside_127", "listed", "servfail"],
)
def test_a_client_with_anything_to_say_is_not_remembered(
    rbl: Rbl, fake: FakeDns, resolver: Resolver, answer: str | Status
) -> None:
    if isinstance(answer, Status):
        fake.fail(f"{NAME}.second.test", "A", answer)
    else:
        fake.add(f"{NAME}.second.test", "A", answer)
    first = rbl(make_conn(sender="a@sender.test", ip=CLIENT), soon())
    before = reads(resolver)
    assert rbl(make_conn(sender="a@sender.test", ip=CLIENT), soon()) == first
    assert reads(resolver) > before


def test_a_client_is_remembered_no_longer_than_the_zones_answers(
    rbl: Rbl, fake: FakeDns, resolver: Resolver
) -> None:
    """Review rev199: a client in no zone was remembered for dns.verdict_ttl whatever
    the zones' negative TTLs; one without an SOA (TTL 0) must not be kept at all."""
    fake.negative_ttl = 0
    assert rbl(make_conn(sender="a@sender.test", ip=CLIENT), soon()) is None
    fake.add(f"{NAME}.second.test", "A", "127.0.0.2")  # listed meanwhile
    verdict = rbl(make_conn(sender="a@sender.test", ip=CLIENT), soon())
    assert isinstance(verdict, Hit)


def test_verdict_ttl_zero_remembers_no_client(tmp_path: Path, resolver: Resolver) -> None:
    rbl = Rbl(dns_services(tmp_path, resolver, dnsbl=DNSBL, dns={"verdict_ttl": 0}))
    assert rbl(make_conn(sender="a@sender.test", ip=CLIENT), soon()) is None
    before = reads(resolver)
    assert rbl(make_conn(sender="a@sender.test", ip=CLIENT), soon()) is None
    assert reads(resolver) > before


# --- score zones and local lists -------------------------------------------------------------


def test_score_zones_record_weights_instead_of_refusing(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    zones = [
        {"name": "s1.test", "action": "score", "weight": 3.5},
        {"name": "s2.test", "action": "score", "weight": -1.0},
        {"name": "s3.test", "action": "score", "weight": 9.0},
    ]
    check = Rbl(dns_services(tmp_path, resolver, dnsbl={"zones": zones}))
    fake.add(f"{NAME}.s1.test", "A", "127.0.0.2")
    fake.add(f"{NAME}.s2.test", "A", "127.0.0.2")
    conn = make_conn(sender="a@sender.test", ip=CLIENT)
    assert check(conn, soon()) is None
    assert conn.txn is not None
    assert conn.txn.scratch[SCORES] == {"rbl": {"s1.test": 3.5, "s2.test": -1.0}}
    # Kept on the transaction: the connection's next one starts without them.
    assert SCORES not in conn.scratch


def test_score_zones_of_a_check_in_report_mode_add_nothing(
    tmp_path: Path, resolver: Resolver, fake: FakeDns, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev129 F4: a zone on trial (its check in report mode) refused mail
    through the anti-spam score. Its listing is logged, its weight not added."""
    zones = [{"name": "s1.test", "action": "score", "weight": 8.0}]
    services = dns_services(
        tmp_path, resolver, dnsbl={"zones": zones}, checks={"rbl": {"mode": "report"}}
    )
    fake.add(f"{NAME}.s1.test", "A", "127.0.0.2")
    conn = make_conn(sender="a@sender.test", ip=CLIENT)
    caplog.set_level(logging.INFO, logger="smtpguard")
    assert Rbl(services)(conn, soon()) is None
    assert conn.txn is not None
    assert SCORES not in conn.txn.scratch
    assert "zone=s1.test" in caplog.text
    assert "score +8.0 (not added: rbl mode=report)" in caplog.text


def test_local_block_list_answers_like_a_zone_without_dns(tmp_path: Path) -> None:
    listed = tmp_path / "relays.txt"
    listed.write_text("198.51.100.0/24\n")
    services = dns_services(
        tmp_path, None, dnsbl={"local": [{"file": str(listed), "kind": "openrelay"}]}
    )
    assert OpenRelay.works_without_dns(services.config)
    assert not Rbl.works_without_dns(services.config)
    verdict = OpenRelay(services)(make_conn(sender="a@sender.test", ip=CLIENT), soon())
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "openrelay_check"
    assert f"listed in {listed} as 198.51.100.0/24" in verdict.detail
    assert Rbl(services)(make_conn(sender="a@sender.test", ip=CLIENT), soon()) is None


def test_a_lookup_that_waited_for_a_slot_is_deferred(tmp_path: Path, fake: FakeDns) -> None:
    """A zone's lookup that timed out in the resolver's own queue says nothing of the
    zone: deferred whatever on_temp_error says, as a listed client would otherwise
    pass by a flood (review rev52 N3)."""
    zones = [z["name"] for z in DNSBL["zones"]]
    resolver = fake_resolver(fake, max_inflight=len(zones))  # one session's lookups
    try:
        resolver.reserve(zones)
        check = Rbl(dns_services(tmp_path, resolver, dnsbl=DNSBL))
        fake.slow["rbl.test"] = 60
        conn = make_conn(sender="a@sender.test", ip="198.51.100.1")
        slow = check(conn, Event(deadline=time.monotonic() + 0.2))
        assert isinstance(slow, TempError), slow
        assert not slow.firm, slow
        hold_slots(resolver, fake, len(zones) - 1, zone="rbl.test")
        conn = make_conn(sender="a@sender.test", ip=CLIENT)
        queued = check(conn, Event(deadline=time.monotonic() + 0.2))
        assert isinstance(queued, TempError), queued
        assert queued.firm, queued
        assert "waiting for a resolver slot" in queued.detail
    finally:
        resolver.close()


def test_a_zone_that_lists_its_test_point_refuses_and_scores_no_one(
    tmp_path: Path, resolver: Resolver, fake: FakeDns, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev122 F2: a list answering for every name (its test point 127.0.0.1,
    ::FFFF:7F00:1 for IPv6, included: RFC 5782 §5) refused every client. Its listings
    are a failure of the zone; a score zone adds nothing; a zone whose test point is
    not listed still refuses."""
    zones = [
        {"name": "dead.test", "kind": "rbl"},
        {"name": "deadscore.test", "action": "score", "weight": 5.0},
    ]
    check = Rbl(dns_services(tmp_path, resolver, dnsbl={"zones": zones}))
    v6_point = ".".join(reversed("0" * 20 + "ffff7f000001"))
    for zone_name in ("dead.test", "deadscore.test"):
        fake.add(f"{NAME}.{zone_name}", "A", "127.0.0.2")
        fake.add(f"{V6_NAME}.{zone_name}", "A", "127.0.0.2")
        fake.add(f"1.0.0.127.{zone_name}", "A", "127.0.0.2")
        fake.add(f"{v6_point}.{zone_name}", "A", "127.0.0.2")
    for ip in (CLIENT, "2001:db8::66"):
        conn = make_conn(sender="a@sender.test", ip=ip)
        check.prefetch(conn)
        verdict = check(conn, soon())
        assert isinstance(verdict, TempError), verdict
        assert verdict.reply_id == "database_temp_error"
        assert "dead.test: lists its test point" in verdict.detail
        assert conn.txn is not None
        assert SCORES not in conn.txn.scratch
    assert "answer ignored: lists its test point 1.0.0.127.dead.test as 127.0.0.2" in caplog.text
    assert f"lists its test point {v6_point}.dead.test" in caplog.text
    # The same zone with its test point unlisted refuses, as before.
    (tmp_path / "sound").mkdir()
    sound = Rbl(dns_services(tmp_path / "sound", resolver, dnsbl={"zones": [RBL_ZONE]}))
    fake.add(f"{NAME}.rbl.test", "A", "127.0.0.2")
    verdict = sound(make_conn(sender="a@sender.test", ip=CLIENT), soon())
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "rbl_deny"
