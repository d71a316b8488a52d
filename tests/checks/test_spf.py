"""spf: results to verdicts, identities, trusted clients, DNS through our resolver."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import spf as spf_module  # type: ignore[import-untyped]  # pyspf ships no type information

from smtpguard.checks import Event
from smtpguard.checks.sender_domain import SenderDomain
from smtpguard.checks.spf import MAX_EXPLANATION, Spf, SpfQuery
from smtpguard.dns import Answer, Resolver, Status
from smtpguard.dnswire import UdpTransport
from smtpguard.resultheaders import spf_result
from smtpguard.verdict import Hit, TempError
from support.checks import make_conn
from support.fake_dns import FakeDns, dns_services, fake_resolver
from support.polling import wait_until
from support.unbound import SPF_OVERSIZED_DOMAIN, DnsServer

CLIENT = "198.51.100.7"


@pytest.fixture
def fake() -> FakeDns:
    f = FakeDns()
    f.add("pass.test", "TXT", '"v=spf1 ip4:198.51.100.0/24 -all"')
    f.add("fail.test", "TXT", '"v=spf1 ip4:192.0.2.0/24 -all"')
    f.add("soft.test", "TXT", '"v=spf1 ~all"')
    f.add("neutral.test", "TXT", '"v=spf1 ?all"')
    f.add("broken.test", "TXT", '"v=spf1 frobnicate -all"')
    f.add("inc.test", "TXT", '"v=spf1 include:down.test -all"')
    f.fail("down.test", "TXT", Status.SERVFAIL)
    f.add("void.test", "TXT", '"v=spf1 a:n1.test a:n2.test a:n3.test ~all"')
    f.add("mx.helo.test", "TXT", '"v=spf1 -all"')
    # Two MX hosts with addresses of one family only (review rev183 F1).
    f.add("v6void.test", "TXT", '"v=spf1 a mx ip6:2001:db8:1::/48 -all"')
    f.add("v6void.test", "A", "198.51.100.50")
    f.add("v6void.test", "MX", "0 mx0.v6void.test.", "1 mx1.v6void.test.")
    f.add("mx0.v6void.test", "A", "198.51.100.51")
    f.add("mx1.v6void.test", "A", "198.51.100.52")
    f.add("ok.helo.test", "TXT", '"v=spf1 ip4:198.51.100.7 -all"')
    return f


def spf(tmp_path: Path, resolver: Resolver, **sections: Mapping[str, Any]) -> Spf:
    return Spf(dns_services(tmp_path, resolver, **sections))


def decide(check: Spf, sender: str, ip: str = CLIENT, **conn_args: object) -> object:
    conn = make_conn(sender=sender, ip=ip, **conn_args)  # type: ignore[arg-type]  # kwargs of mixed types
    return check(conn, Event(deadline=time.monotonic() + 2))


@pytest.mark.parametrize(
    "sender", ["a@pass.test", "a@neutral.test", "a@nospf.test", "a@broken.test", "a@soft.test"]
)
def test_no_objection(tmp_path: Path, resolver: Resolver, sender: str) -> None:
    # pass, neutral, none, permerror (§8.7: the domain's problem), softfail by default.
    assert decide(spf(tmp_path, resolver), sender) is None


def test_fail_is_a_hit(tmp_path: Path, resolver: Resolver) -> None:
    verdict = decide(spf(tmp_path, resolver), "a@fail.test")
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "remote_ip_mismatch"
    assert verdict.detail.startswith(f"spf=fail mailfrom fail.test from {CLIENT}")


def test_a_result_is_remembered_no_longer_than_its_records(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    """Review rev199: a domain that fixed its SPF record was still refused for
    dns.verdict_ttl after the record's own TTL."""
    fake.add("fixed.test", "TXT", '"v=spf1 -all"', ttl=0)
    check = spf(tmp_path, resolver)
    assert isinstance(decide(check, "a@fixed.test"), Hit)
    fake.add("fixed.test", "TXT", '"v=spf1 ip4:198.51.100.0/24 -all"', ttl=300)
    assert decide(check, "a@fixed.test") is None
    assert decide(check, "a@fixed.test") is None  # remembered now
    assert fake.count("fixed.test", "TXT") == 2


@pytest.mark.parametrize("sender", ["a@fail.test.", "a@FAIL.Test."])
def test_a_trailing_dot_names_the_same_domain(
    tmp_path: Path, resolver: Resolver, sender: str
) -> None:
    """RFC 7208 §7.1: the dot is ignored; pyspf alone would answer "none" for it."""
    verdict = decide(spf(tmp_path, resolver), sender)
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "remote_ip_mismatch"


@pytest.mark.parametrize("sender", ['"x@"@fail.test', '"a@b"@fail.test', '"@"@fail.test'])
def test_a_quoted_local_part_holding_an_at_sign_checks_the_real_domain(
    tmp_path: Path, resolver: Resolver, sender: str
) -> None:
    """pyspf alone splits at the first "@" and checks a malformed domain ("none"), so
    the quoted "@" passed mail that fail.test's "-all" refuses (review rev42)."""
    verdict = decide(spf(tmp_path, resolver), sender)
    assert isinstance(verdict, Hit)
    assert verdict.detail.startswith(f"spf=fail mailfrom fail.test from {CLIENT}")


def test_the_l_macro_is_still_the_local_part(
    fake: FakeDns, tmp_path: Path, resolver: Resolver
) -> None:
    fake.add("macro.test", "TXT", '"v=spf1 exists:%{l}.users.test -all"')
    fake.add("bob.users.test", "A", "127.0.0.2")
    check = spf(tmp_path, resolver)
    assert decide(check, "bob@macro.test") is None
    assert isinstance(decide(check, "eve@macro.test"), Hit)


def test_a_trailing_dot_on_the_helo_name_is_the_same_name(
    tmp_path: Path, resolver: Resolver
) -> None:
    verdict = decide(spf(tmp_path, resolver), "<>", helo="mx.helo.test.")
    assert isinstance(verdict, Hit)
    assert "spf=fail helo mx.helo.test from" in verdict.detail


def test_a_u_label_sender_domain_is_its_idna2008_name(
    fake: FakeDns, tmp_path: Path, resolver: Resolver
) -> None:
    # IDNA2003 (dnspython's default) would ask strasse.de, another owner's domain,
    # whose +all lets anyone send as straße.de.
    fake.add("xn--strae-oqa.de", "TXT", '"v=spf1 ip4:192.0.2.0/24 -all"')
    fake.add("strasse.de", "TXT", '"v=spf1 +all"')
    check = spf(tmp_path, resolver)
    verdict = decide(check, "a@stra\u00dfe.de", smtputf8=True)
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "remote_ip_mismatch"
    assert decide(check, "a@stra\u00dfe.de", ip="192.0.2.9", smtputf8=True) is None


def test_a_u_label_sender_domain_is_judged_as_its_a_labels(
    fake: FakeDns, tmp_path: Path, resolver: Resolver
) -> None:
    """Review rev112 F1 (RFC 8616 §3): under an IDN top-level domain "a -all" was a
    permerror for the U-label spelling (pyspf's top-label rule), so a forger passed
    where the A-label spelling fails; "ptr" never matched U-labels, so the domain's own
    host was refused."""
    idn = "xn--e1afmkfd.xn--80akhbyknj4f"  # пример.испытание
    fake.add(idn, "TXT", '"v=spf1 a -all"')
    fake.add(idn, "A", "192.0.2.10")
    fake.add("xn--bcher-kva.test", "TXT", '"v=spf1 ptr -all"')
    fake.add("9.2.0.192.in-addr.arpa", "PTR", "mail.xn--bcher-kva.test.")
    fake.add("mail.xn--bcher-kva.test", "A", "192.0.2.9")
    check = spf(tmp_path, resolver)
    for spelling in (
        "ceo@пример.испытание",
        f"ceo@{idn}",
    ):
        verdict = decide(check, spelling, smtputf8=True)
        assert isinstance(verdict, Hit), spelling
        assert decide(check, spelling, ip="192.0.2.10", smtputf8=True) is None
    for spelling in ("a@b\u00fccher.test", "a@xn--bcher-kva.test"):
        assert decide(check, spelling, ip="192.0.2.9", smtputf8=True) is None, spelling
        assert isinstance(decide(check, spelling, smtputf8=True), Hit)


@pytest.mark.parametrize(
    ("domain", "record", "helo"),
    [
        ("delim.test", "exists:%{h-}.hj.test", "mail-out.test"),  # mail.out.test.hj.test
        ("delim.test", "exists:%{hr-}.hj.test", "out.test-mail"),  # reversed: mail.out.test
        ("foo-bar.test", "exists:%{d-}.dj.test", "mx.sender.test"),  # foo.bar.test.dj.test
    ],
)
def test_macro_parts_are_rejoined_with_dots_for_every_letter(
    fake: FakeDns, tmp_path: Path, resolver: Resolver, domain: str, record: str, helo: str
) -> None:
    """Review rev112 F2 (RFC 7208 §7.3): "rejoined using "." and not the original
    splitting characters"; pyspf keeps the delimiter for letters other than l and s."""
    fake.add(domain, "TXT", f'"v=spf1 {record} -all"')
    fake.add("mail.out.test.hj.test", "A", "127.0.0.2")
    fake.add("foo.bar.test.dj.test", "A", "127.0.0.2")
    check = spf(tmp_path, resolver)
    assert decide(check, f"a@{domain}", helo=helo) is None


@pytest.mark.parametrize(
    "spec", ["exists:%{d0}.t.test", "exists:%{dx}.t.test", "exists:%{d2rr}.t", "a:x%%%a.test"]
)
def test_a_macro_syntax_error_is_a_permerror(resolver: Resolver, spec: str) -> None:
    """Review rev183 F2 (RFC 7208 §7.1, §4.6): %{d0} expanded to a malformed name,
    %{dx} as %{d}, so the record failed and the domain's own mail was refused."""
    query = SpfQuery(resolver, None, i="192.0.2.3", s="a@macro.test", h="mx.example.org")
    with pytest.raises(spf_module.PermError):
        query.expand(spec)
    assert query.expand("%{d2r.}.%{L-}.%%.t.test") == "test.macro.a.%.t.test"
    # Digits of a value not zero, leading zeros too (review rev184 F6).
    assert query.expand("%{d01}") == "test"
    # "R" reverses as "r" does; thousands of digits keep every label (review rev185).
    assert query.expand("%{dR}.%{d2R}") == "test.macro.test.macro"
    assert query.expand("%{d" + "9" * 5000 + "r}") == "test.macro"
    assert query.expand("%{d" + "0" * 5000 + "1}") == "test"


def test_a_long_expansion_is_cut_once_to_a_domain_name(resolver: Resolver) -> None:
    """RFC 7208 §7.3: left-hand labels dropped until 253 octets; review rev115 F2: a
    record of thousands of %{d} of a 125-label domain took seconds, label by label.
    exp= text is no domain name and is not cut."""
    domain = ".".join("x" * 124) + ".test"
    query = SpfQuery(resolver, None, i="192.0.2.3", s=f"a@{domain}", h="mx.example.org")
    spec = "a:" + ".".join(["%{d}"] * 3200) + ".dos.test"
    started = time.process_time()
    name = query.expand(spec)
    assert time.process_time() - started < 0.5
    assert len(name) <= 253
    assert name.endswith(".dos.test")
    assert f"{domain}.dos.test".endswith(name)
    # exp= text is not cut as a name, but it is cut (review rev117 F1).
    text = "%{d} " * 60
    assert query.expand(text, stripdot=False) == text.replace("%{d}", domain)[:MAX_EXPLANATION]


def test_an_explanation_from_thousands_of_macros_is_kept_short(
    fake: FakeDns, tmp_path: Path, resolver: Resolver
) -> None:
    """Review rev117 F1: its domain's exp= record made of %{s} gave megabytes of detail
    for each sender, which the verdict memo kept."""
    fake.add("exp.test", "TXT", '"v=spf1 -all exp=why.exp.test"')
    # Character-strings of at most 255 octets (RFC 1035), joined (RFC 7208 §3.3).
    fake.add("why.exp.test", "TXT", " ".join(['"' + "%{s} " * 50 + '"'] * 40))
    verdict = decide(spf(tmp_path, resolver), "someone@exp.test")
    assert isinstance(verdict, Hit)
    assert "someone@exp.test someone@exp.test" in verdict.detail
    assert len(verdict.detail) < 2 * MAX_EXPLANATION


def test_a_quoted_local_part_expands_as_its_mailbox(
    fake: FakeDns, tmp_path: Path, resolver: Resolver
) -> None:
    """Review rev112 F4: %{l} of "bob"@ kept the quotes; it is bob's mailbox."""
    fake.add("macro.test", "TXT", '"v=spf1 exists:%{l}.users.test -all"')
    fake.add("bob.users.test", "A", "127.0.0.2")
    assert decide(spf(tmp_path, resolver), '"bob"@macro.test') is None


def test_the_s_macro_names_what_l_and_d_name(
    fake: FakeDns, tmp_path: Path, resolver: Resolver
) -> None:
    """Review rev115 F4: %{s} kept the U-label spelling %{d} no longer has."""
    fake.add("xn--bcher-kva.test", "TXT", '"v=spf1 exists:%{s}.ok.test -all"')
    fake.add(r"bob\@xn--bcher-kva.test.ok.test", "A", "127.0.0.2")  # as DNS escapes it
    check = spf(tmp_path, resolver)
    for sender in ('"bob"@b\u00fccher.test', "bob@xn--bcher-kva.test"):
        assert decide(check, sender, smtputf8=True) is None, sender


def test_softfail_rejected_when_configured(tmp_path: Path, resolver: Resolver) -> None:
    check = spf(tmp_path, resolver, spf={"reject_softfail": True})
    assert isinstance(decide(check, "a@soft.test"), Hit)


def test_temperror_is_a_temp_error(tmp_path: Path, resolver: Resolver) -> None:
    verdict = decide(spf(tmp_path, resolver), "a@inc.test")
    assert isinstance(verdict, TempError)
    assert verdict.reply_id == "database_temp_error"
    assert "spf=temperror" in verdict.detail


def test_a_failed_ptr_lookup_is_no_permanent_fail(
    fake: FakeDns, tmp_path: Path, resolver: Resolver
) -> None:
    """RFC 7208 §5.5 makes a PTR lookup error "no match", so SERVFAIL on the client's
    reverse zone ended in "fail" and a permanent 556, whatever on_temp_error said
    (review rev42, through real unbound): a temporary fault is a temperror here."""
    fake.add("ptr.test", "TXT", '"v=spf1 ptr:good.test -all"')
    fake.add("7.100.51.198.in-addr.arpa", "PTR", "mail.good.test.")
    fake.add("mail.good.test", "A", CLIENT)
    fake.fail("8.100.51.198.in-addr.arpa", "PTR", Status.SERVFAIL)
    check = spf(tmp_path, resolver)
    assert decide(check, "a@ptr.test") is None
    verdict = decide(check, "a@ptr.test", ip="198.51.100.8")
    assert isinstance(verdict, TempError)
    # Deferred even with on_temp_error = "pass": the client answers for its reverse
    # zone, and a SERVFAIL there passed "-all" (review rev45, through Postfix).
    assert verdict.firm
    assert "spf=temperror" in verdict.detail
    assert "fail after a failed ptr lookup" in verdict.detail
    # A reverse zone that answers, without the name: the domain's fail stands.
    fake.add("9.100.51.198.in-addr.arpa", "PTR", "dsl.isp.test.")
    assert isinstance(decide(check, "a@ptr.test", ip="198.51.100.9"), Hit)
    # A failed lookup for the explanation's %{p} says nothing about the verdict.
    fake.add("exp.test", "TXT", '"v=spf1 -all exp=why.exp.test"')
    fake.add("why.exp.test", "TXT", '"%{i} is not %{p}"')
    assert isinstance(decide(check, "a@exp.test", ip="198.51.100.8"), Hit)
    # A softfail is no refusal by default: it stays one, not a deferral on every
    # retry (review rev47: "a mx ptr ~all" with a lame reverse zone).
    fake.add("legacy.test", "TXT", '"v=spf1 ptr ~all"')
    assert decide(check, "a@legacy.test", ip="198.51.100.8") is None
    (tmp_path / "strict").mkdir()
    strict = spf(tmp_path / "strict", resolver, spf={"reject_softfail": True})
    deferred = decide(strict, "a@legacy.test", ip="198.51.100.8")
    assert isinstance(deferred, TempError)
    assert deferred.firm
    # An ordinary temperror stays the operator's call (on_temp_error).
    temp = decide(check, "a@inc.test")
    assert isinstance(temp, TempError)
    assert not temp.firm


@pytest.mark.integration
def test_an_answer_too_large_to_read_is_the_domains_permerror(
    tmp_path: Path, unbound: DnsServer
) -> None:
    """Review rev183 F3, through real unbound: "a:" naming 300 addresses is an answer
    past dnswire.MAX_RECORDS, a SERVFAIL of ours that asking again cannot cure; it was
    a temperror, and with on_temp_error = "tempfail" the domain's mail was deferred
    for ever."""
    real = Resolver(UdpTransport([unbound.host], unbound.port, 1.0))
    try:
        conn = make_conn(sender=f"ceo@{SPF_OVERSIZED_DOMAIN}", ip=CLIENT)
        check = spf(tmp_path, real)  # on_temp_error = "tempfail", the default
        assert check(conn, Event(deadline=time.monotonic() + 3)) is None
        # And from the resolver's cache.
        again = make_conn(sender=f"cfo@{SPF_OVERSIZED_DOMAIN}", ip="198.51.100.8")
        assert check(again, Event(deadline=time.monotonic() + 3)) is None
    finally:
        real.close()
    assert conn.txn is not None
    found = spf_result(conn.txn)
    assert found is not None
    assert found.result == "permerror"


def test_a_reverse_zone_too_large_to_read_is_no_match(
    fake: FakeDns, tmp_path: Path, resolver: Resolver
) -> None:
    """The client answers for its own reverse zone: an answer of thousands of PTR
    names there is "no match" (RFC 7208 §5.5), not the domain's permerror, which a
    forger would have had for the asking."""
    fake.add("ptr.test", "TXT", '"v=spf1 ptr:good.test -all"')
    too_large = "answer of 3000 records, more than 200: not read"
    for name, rdtype in (("8.100.51.198.in-addr.arpa", "PTR"), ("big.good.test", "A")):
        fake.records[(name, rdtype)] = Answer(
            name, rdtype, Status.SERVFAIL, detail=too_large, oversized=True
        )
    fake.add("9.100.51.198.in-addr.arpa", "PTR", "big.good.test.")
    check = spf(tmp_path, resolver)
    for ip in ("198.51.100.8", "198.51.100.9"):
        verdict = decide(check, "a@ptr.test", ip=ip)
        assert isinstance(verdict, Hit), ip
        assert verdict.reply_id == "remote_ip_mismatch"


def test_void_lookup_limit(tmp_path: Path, resolver: Resolver) -> None:
    # RFC 7208 §4.6.4: the third lookup without an answer is a permerror (no objection).
    assert decide(spf(tmp_path, resolver), "a@void.test") is None


@pytest.mark.parametrize(("ip", "result"), [("2001:db8::99", "fail"), ("2001:db8:1::7", "pass")])
def test_the_addresses_of_mx_hosts_are_no_void_lookups_of_their_own(
    tmp_path: Path, resolver: Resolver, ip: str, result: str
) -> None:
    """Review rev183 F1: RFC 7208 §4.6.4 limits the terms whose queries come back
    empty; the missing AAAA of each MX host counted, so an IPv6 client used up the
    limit: a forger got permerror (accepted) and a listed sender no pass."""
    conn = make_conn(sender="ceo@v6void.test", ip=ip)
    verdict = Spf(dns_services(tmp_path, resolver))(conn, Event(deadline=time.monotonic() + 2))
    assert (verdict is None) == (result == "pass")
    assert conn.txn is not None
    found = spf_result(conn.txn)
    assert found is not None
    assert found.result == result


def test_null_sender_checks_the_helo_identity(tmp_path: Path, resolver: Resolver) -> None:
    check = spf(tmp_path, resolver)
    verdict = decide(check, "<>", helo="mx.helo.test")
    assert isinstance(verdict, Hit)
    assert "spf=fail helo mx.helo.test from" in verdict.detail
    assert decide(check, "<>", helo="ok.helo.test") is None


def test_null_sender_checks_a_helo_identity_with_an_underscore(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    """The helo check lets it pass (as Postfix), so SPF judges it (review rev115 F1)."""
    fake.add("win_host.helo.test", "TXT", '"v=spf1 -all"')
    verdict = decide(spf(tmp_path, resolver), "<>", helo="win_host.helo.test")
    assert isinstance(verdict, Hit)
    assert "spf=fail helo win_host.helo.test from" in verdict.detail


@pytest.mark.parametrize("helo", ["[198.51.100.7]", "localhost", None])
def test_null_sender_without_a_helo_name_passes(
    tmp_path: Path, resolver: Resolver, fake: FakeDns, helo: str | None
) -> None:
    assert decide(spf(tmp_path, resolver), "<>", helo=helo) is None
    assert fake.calls == []


def test_trusted_clients_are_not_checked(tmp_path: Path, resolver: Resolver, fake: FakeDns) -> None:
    check = spf(tmp_path, resolver)
    assert decide(check, "a@fail.test", trusted_network=True) is None
    assert decide(check, "a@fail.test", auth_login="alice", auth_type="PLAIN") is None
    assert fake.calls == []


def test_ipv4_mapped_client(tmp_path: Path, resolver: Resolver) -> None:
    assert decide(spf(tmp_path, resolver), "a@pass.test", ip=f"::ffff:{CLIENT}") is None


def test_lookups_go_through_the_shared_cache(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    check = spf(tmp_path, resolver)
    for _ in range(3):
        assert isinstance(decide(check, "a@fail.test"), Hit)
    assert fake.count("fail.test", "TXT") == 1


def test_deadline_bounds_the_evaluation(tmp_path: Path, resolver: Resolver, fake: FakeDns) -> None:
    fake.delay = 1.0
    check = spf(tmp_path, resolver)
    start = time.monotonic()
    conn = make_conn(sender="a@fail.test", ip=CLIENT)
    verdict = check(conn, Event(deadline=time.monotonic() + 0.1))
    assert time.monotonic() - start < 0.5
    assert isinstance(verdict, TempError)


def test_a_permerror_explanation_cannot_break_the_log_line(
    tmp_path: Path, fake: FakeDns, resolver: Resolver, caplog: pytest.LogCaptureFixture
) -> None:
    """The sender's TXT record is quoted in the permerror line: a CR/LF there would
    start a line of its own in the log (stderr, journald)."""
    fake.add("crlf.test", "TXT", '"v=spf1 frob\\013\\010summary -all"')  # CR LF
    with caplog.at_level(logging.INFO, "smtpguard"):
        assert decide(spf(tmp_path, resolver), "a@crlf.test") is None
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("spf sid=")]
    assert "\n" not in line
    assert "\r" not in line
    assert "frob\\r\\nsummary" in line  # shown, escaped


def test_a_lookup_that_waited_for_a_slot_is_deferred(tmp_path: Path, fake: FakeDns) -> None:
    """Review rev52 N3: a flood of connections filled the resolver's slots, the forged
    sender's TXT lookup timed out in the queue, and the temperror passed by
    on_temp_error = "pass". It is deferred; a server's own timeout stays the
    operator's call."""
    resolver = fake_resolver(fake, max_inflight=1)
    try:
        check = spf(tmp_path, resolver)
        fake.slow["fail.test"] = 60
        conn = make_conn(sender="a@fail.test", ip=CLIENT)
        slow = check(conn, Event(deadline=time.monotonic() + 0.2))
        assert isinstance(slow, TempError), slow
        assert not slow.firm, slow
        # The slow server's lookup still holds the one slot.
        conn = make_conn(sender="a@soft.test", ip=CLIENT)
        queued = check(conn, Event(deadline=time.monotonic() + 0.2))
        assert isinstance(queued, TempError), queued
        assert queued.firm
        assert "waiting for a resolver slot" in queued.detail
    finally:
        resolver.close()


def test_a_flood_from_another_network_leaves_the_forged_sender_refused(
    tmp_path: Path, fake: FakeDns
) -> None:
    """Review rev59 F4: lookups of dead sender domains from one network (a MAIL FROM
    flood) held every slot; they hold that network's share, and a sender from
    elsewhere is judged by its own record."""
    resolver = fake_resolver(fake, max_inflight=16)
    try:
        check = spf(tmp_path, resolver)
        fake.slow["dead.test"] = 60
        for i in range(32):
            resolver.submit(f"{i}.dead.test", "TXT", network="192.0.2.0/24")
        fake.add("fail.test", "TXT", '"v=spf1 -all"')
        conn = make_conn(sender="a@fail.test", ip=CLIENT)
        verdict = check(conn, Event(deadline=time.monotonic() + 1))
        assert isinstance(verdict, Hit), verdict
    finally:
        resolver.close()


def test_short_slot_waits_along_an_include_chain_add_up(tmp_path: Path, fake: FakeDns) -> None:
    """Review rev61 F2: a pool kept full so that every lookup of an include chain waits a
    little under a quarter of the timeout for its slot: the chain ran out of time on
    the wire, that last timeout was not ``busy``, and the temperror passed by
    on_temp_error = "pass". The waits add up: past what the caller gives back after its
    deadline (a quarter of the timeout), deferred."""
    fake.slow["filler.test"] = 0.3
    fake.slow["i3.chain.test"] = 5.0  # the deadline comes while it is on the wire
    fake.add("chain.test", "TXT", '"v=spf1 include:i1.chain.test -all"')
    fake.add("i1.chain.test", "TXT", '"v=spf1 include:i2.chain.test -all"')
    fake.add("i2.chain.test", "TXT", '"v=spf1 include:i3.chain.test -all"')
    fake.add("i3.chain.test", "TXT", '"v=spf1 ip4:192.0.2.0/24 -all"')
    resolver = fake_resolver(fake, max_inflight=1)  # timeout 2 s: busy from 0.5 s
    stop = threading.Event()

    def filler() -> None:  # a flood's lookups, one after another, 0.3 s each
        n = 0
        while not stop.is_set():
            n += 1
            resolver.wait(resolver.submit(f"{n}.filler.test", "A"), time.monotonic() + 6)

    thread = threading.Thread(target=filler, daemon=True)
    thread.start()
    try:
        wait_until(lambda: bool(fake.calls))
        check = spf(tmp_path, resolver)
        conn = make_conn(sender="a@chain.test", ip=CLIENT)
        verdict = check(conn, Event(deadline=time.monotonic() + 1.8))
        assert ("i3.chain.test", "TXT") in fake.calls  # sent, after short waits
        assert isinstance(verdict, TempError), verdict
        assert verdict.firm, verdict
    finally:
        stop.set()
        resolver.close()
        thread.join(timeout=5)


@pytest.mark.parametrize("held", [0.55, 60.0])
def test_spf_after_a_sender_domain_check_that_waited_past_the_stage(
    tmp_path: Path, fake: FakeDns, held: float
) -> None:
    """Review rev79 F1: a flood held the slots until just before the sender checks'
    cap, sender_domain's answers came while the resolver gave its lookups their
    waits back, and SPF then started after its own deadline: its plain timeout passed
    a forged "-all" sender. SPF takes over those waits: the time is given back to it
    too (the forged sender is refused), or, the slots still held, its miss is this
    host's (deferred whatever on_temp_error says)."""
    fake.slow["pause.test"] = held
    fake.slow["fail.test"] = 0.1
    fake.add("fail.test", "A", "192.0.2.1")
    # Timeout 2 s: 0.5 s given back at most. Three slots: sender_domain's MX, A and
    # AAAA go out together once the flood's lookups end.
    resolver = fake_resolver(fake, max_inflight=3)
    try:
        services = dns_services(tmp_path, resolver, site={"local_domains": ["example.com"]})
        for n in range(3):
            resolver.submit(f"{n}.pause.test", "A")
        wait_until(lambda: len(fake.calls) == 3)
        conn = make_conn(sender="a@fail.test", ip=CLIENT)
        # The client checks used up the stage: the sender checks have one more at most.
        event = Event(deadline=time.monotonic() + 0.01, stage_length=0.6)
        cap = event.sender_deadline()
        assert cap is not None
        domain = SenderDomain(services)(conn, event)
        verdict = Spf(services)(conn, event)
        if held < 1:
            assert domain is None
            assert event.sender_waited >= 0.5
            assert time.monotonic() > cap  # SPF asked after its deadline, and was answered
            assert isinstance(verdict, Hit), verdict
            assert verdict.reply_id == "remote_ip_mismatch"
        else:
            assert isinstance(domain, TempError), domain
            assert domain.firm, domain
            assert isinstance(verdict, TempError), verdict
            assert verdict.firm, verdict
        assert time.monotonic() < cap + 0.5 + 0.4  # the bound: the cap and a quarter of 2 s
    finally:
        resolver.close()


def test_a_sender_check_with_its_whole_stage_takes_over_no_waits() -> None:
    """Earlier checks' waits count for SPF only as far as the cap at two stages cut
    its time: with a whole stage of its own, its misses are judged on its own waits."""
    event = Event(deadline=time.monotonic() + 3, stage_length=3)
    event.sender_waited = 1.0
    assert event.sender_waits() == 0.0
    late = Event(deadline=time.monotonic() - 2.5, stage_length=3)  # the cap in 0.5 s
    late.sender_waited = 1.0  # all of it: the cap took 2.5 s
    assert late.sender_waits() == 1.0
    late.sender_waited = 4.0  # as much as the cap took
    assert 2.4 <= late.sender_waits() <= 2.6


def test_the_result_names_an_idn_sender_domain_in_a_labels(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    """Review rev69 F3: smtp.mailfrom="bücher.test" (quoted UTF-8), which RFC 8601
    parsers refuse; the A-labels are what SPF checked."""
    fake.add("xn--bcher-kva.test", "TXT", f'"v=spf1 ip4:{CLIENT} -all"')
    conn = make_conn(sender="<a@Bücher.test.>", ip=CLIENT, smtputf8=True)
    assert spf(tmp_path, resolver)(conn, Event(deadline=time.monotonic() + 2)) is None
    assert conn.txn is not None
    found = spf_result(conn.txn)
    assert found is not None
    assert (found.result, found.value) == ("pass", "xn--bcher-kva.test")
