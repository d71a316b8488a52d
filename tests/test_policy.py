"""smtpguard.policy on its own: which exemption matches what, with fakes (fake DNS for
forward confirmation and SPF, sessions built by support.checks)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from smtpguard.address import parse_path
from smtpguard.checks import Event, Stage
from smtpguard.dns import Resolver, Status
from smtpguard.policy import SKIPPED, Policy, address_matches
from smtpguard.probes import exemption_notes
from smtpguard.session import MTA, Connection
from smtpguard.verdict import Hit
from support.checks import make_conn, rcpt
from support.fake_dns import FakeDns, dns_services, fake_resolver
from support.polling import wait_until

SITE = {
    "local_domains": ["example.com"],
    "relay_domains": ["relay.example"],
    "our_hostnames": ["mx.example.net"],
    "our_ips": ["203.0.113.25"],
}


def policy(tmp_path: Path, resolver: Resolver | None, **policy_section: object) -> Policy:
    services = dns_services(tmp_path, resolver, site=SITE, policy=policy_section)
    return Policy(services, [("rbl", Stage.MAIL), ("antispam", Stage.EOM), ("mailbox", Stage.RCPT)])


def partner_policy(tmp_path: Path, resolver: Resolver) -> Policy:
    """An exemption from the rbl check for clients whose confirmed names end in
    partner.example."""
    return policy(
        tmp_path,
        resolver,
        exempt=[{"name": "p", "host_suffixes": ["partner.example"], "skip": ["rbl"]}],
    )


@pytest.mark.parametrize(
    ("address", "pattern", "matches"),
    [
        ("a@partner.example", "a@partner.example", True),
        ("b@partner.example", "a@partner.example", False),
        ("a@Partner.Example", "partner.example", True),
        ("a@mx.partner.example", "partner.example", True),
        ("a@mx.partner.example", "@partner.example", False),
        ("a@partner.example", "@partner.example", True),
        ("a@notpartner.example", "partner.example", False),
        # RFC 5321 4.1.2: a quoted Dot-string is the unquoted mailbox, both ways.
        ('"a"@partner.example', "a@partner.example", True),
        (r'"\A"@Partner.Example.', "a@partner.example", True),
        ("a@partner.example", '"a"@partner.example', True),
        ('"a b"@partner.example', "a@partner.example", False),
        ('"a."@partner.example', "a@partner.example", False),
    ],
)
def test_address_forms(address: str, pattern: str, matches: bool) -> None:
    assert address_matches(parse_path(f"<{address}>"), (pattern,)) is matches


@pytest.mark.parametrize(
    ("address", "pattern", "matches"),
    [
        # As Postfix's access(5): the address as written, then without its extension.
        ("alice+news@example.com", "alice@example.com", True),
        ("alice+news@example.com", "alice+news@example.com", True),
        ("alice+news@example.com", "alice+other@example.com", False),
        ("alice@example.com", "alice+news@example.com", False),
        ('"alice+a b"@example.com', "alice@example.com", True),
        ("owner-list+x@example.com", "owner-list@example.com", True),
    ],
)
def test_address_extensions(address: str, pattern: str, matches: bool) -> None:
    assert address_matches(parse_path(f"<{address}>"), (pattern,), "+") is matches
    # Without a delimiter only the address as written matches.
    assert address_matches(parse_path(f"<{address}>"), (pattern,)) is (address == pattern)


def test_recipient_exemption_sees_through_the_extension(tmp_path: Path) -> None:
    p = policy(tmp_path, None, exempt=[{"recipients": ["abuse@example.com"], "skip": ["rbl"]}])
    conn = make_conn(sender="x@y.example")
    assert p.exempt(conn, "rbl", Stage.RCPT, rcpt("abuse+report@example.com"))
    assert not p.exempt(conn, "rbl", Stage.RCPT, rcpt("abusex@example.com"))


def test_ip_exemption_skips_only_what_it_names(tmp_path: Path) -> None:
    p = policy(tmp_path, None, exempt=[{"name": "p", "ips": ["198.51.100.0/24"], "skip": ["rbl"]}])
    conn = make_conn(sender="x@partner.example", ip="198.51.100.9")
    assert p.exempt(conn, "rbl", Stage.MAIL, Event()) == "p"
    assert conn.txn is not None
    assert conn.txn.scratch[SKIPPED] == {"rbl": "p"}
    assert p.exempt(conn, "spf", Stage.MAIL, Event()) is None
    other = make_conn(sender="x@partner.example", ip="198.51.101.9")
    assert p.exempt(other, "rbl", Stage.MAIL, Event()) is None
    assert p.skips_client(conn, "rbl")
    assert not p.skips_client(other, "rbl")


def test_host_suffix_needs_forward_confirmation(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    fake.add("9.100.51.198.in-addr.arpa", "PTR", "mx.partner.example.")
    fake.add("mx.partner.example", "A", "198.51.100.9")
    fake.add("10.100.51.198.in-addr.arpa", "PTR", "mx.partner.example.")
    p = partner_policy(tmp_path, resolver)
    event = Event(deadline=None)
    assert p.exempt(make_conn(sender="x@y.example", ip="198.51.100.9"), "rbl", Stage.MAIL, event)
    # Same PTR name, but it resolves to .9, not .10: not confirmed.
    assert not p.exempt(
        make_conn(sender="x@y.example", ip="198.51.100.10"), "rbl", Stage.MAIL, event
    )


def test_a_failed_confirmation_leaves_the_exemption_undecided(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    """A PTR lookup that fails temporarily neither grants the exemption nor lets the
    check's refusal be permanent: the verdict becomes a temporary failure."""
    fake.fail("9.100.51.198.in-addr.arpa", "PTR", Status.SERVFAIL)
    p = partner_policy(tmp_path, resolver)
    conn = make_conn(sender="x@y.example", ip="198.51.100.9")
    assert p.exempt(conn, "rbl", Stage.MAIL, Event(deadline=None)) is None
    assert p.unsure(conn, "rbl")
    assert not p.unsure(conn, "antispam")  # no exemption that needs the lookup skips it
    # A client whose PTR answers is decided either way.
    fake.add("11.100.51.198.in-addr.arpa", "PTR", "mx2.partner.example.")
    fake.add("mx2.partner.example", "A", "198.51.100.11")
    sure = make_conn(sender="x@y.example", ip="198.51.100.11")
    assert p.exempt(sure, "rbl", Stage.MAIL, Event(deadline=None)) == "p"
    assert not p.unsure(sure, "rbl")


def test_a_confirmation_that_answers_late_decides_the_rest_of_the_connection(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    """A lookup that misses MAIL FROM's deadline leaves that verdict undecided; once
    it has answered, later messages of the connection are decided again."""
    fake.add("9.100.51.198.in-addr.arpa", "PTR", "mx.other.example.")
    fake.add("mx.other.example", "A", "198.51.100.9")
    fake.delay = 0.2
    p = partner_policy(tmp_path, resolver)
    conn = make_conn(sender="x@y.example", ip="198.51.100.9")
    assert p.exempt(conn, "rbl", Stage.MAIL, Event(deadline=time.monotonic() + 0.01)) is None
    assert p.unsure(conn, "rbl")
    assert p.exempt(conn, "rbl", Stage.MAIL, Event(deadline=time.monotonic() + 5)) is None
    assert not p.unsure(conn, "rbl")


def test_a_confirmation_waits_half_of_mail_from_at_most(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    """Review rev60: the client's reverse DNS (names the client chooses, which may never
    answer) held MAIL FROM until the stage's end, before SPF's own stage could start:
    like the client_host check it stops at half the stage, undecided."""
    fake.add("9.100.51.198.in-addr.arpa", "PTR", "mx.partner.example.")
    fake.add("mx.partner.example", "A", "198.51.100.9")
    fake.delay = 5.0
    p = partner_policy(tmp_path, resolver)
    conn = make_conn(sender="x@y.example", ip="198.51.100.9")
    started = time.monotonic()
    event = Event(deadline=started + 1.0, stage_length=1.0)
    assert p.exempt(conn, "rbl", Stage.MAIL, event) is None
    assert time.monotonic() - started < 0.9  # the stage's end: 1.0 s
    assert p.unsure(conn, "rbl")


def test_a_trusted_clients_confirmation_takes_no_share_of_its_network(
    tmp_path: Path, fake: FakeDns
) -> None:
    """Lookups of clients of trusted_networks take no network share (review rev62 F4):
    the exemption's reverse DNS of a trusted relay did, and waited behind its /24's
    other clients whose names never answer (undecided, a temporary failure)."""
    fake.slow["hold.test"] = 60
    fake.add("9.100.51.198.in-addr.arpa", "PTR", "mx.partner.example.")
    fake.add("mx.partner.example", "A", "198.51.100.9")
    resolver = fake_resolver(fake, max_inflight=16)  # four slots per network
    try:
        for i in range(4):
            resolver.submit(f"{i}.hold.test", "A", client=True, network="198.51.100.0/24")
        wait_until(lambda: len(fake.calls) == 4)
        p = partner_policy(tmp_path, resolver)
        trusted = make_conn(sender="x@y.example", ip="198.51.100.9", trusted_network=True)
        event = Event(deadline=time.monotonic() + 2, stage_length=2)
        assert p.exempt(trusted, "rbl", Stage.MAIL, event) == "p"
        assert not p.unsure(trusted, "rbl")
        # A client of the same /24 outside trusted_networks waits for the share.
        fake.add("10.100.51.198.in-addr.arpa", "PTR", "mx.partner.example.")
        other = make_conn(sender="x@y.example", ip="198.51.100.10")
        event = Event(deadline=time.monotonic() + 0.2, stage_length=0.2)
        assert p.exempt(other, "rbl", Stage.MAIL, event) is None
        assert p.unsure(other, "rbl")
    finally:
        resolver.close()


def test_without_a_resolver_postfix_client_name_counts(tmp_path: Path) -> None:
    p = policy(tmp_path, None, exempt=[{"host_suffixes": ["example.org"], "skip": ["rbl"]}])
    # make_conn's client_name is "client.example.org"; Postfix confirmed it.
    assert p.exempt(make_conn(sender="x@y.example"), "rbl", Stage.MAIL, Event())
    assert not p.exempt(
        make_conn(sender="x@y.example", mta=MTA.SENDMAIL), "rbl", Stage.MAIL, Event()
    )
    # Sendmail's, when its {client_resolve} said OK.
    resolved = make_conn(sender="x@y.example", mta=MTA.SENDMAIL, client_name_confirmed=True)
    assert p.exempt(resolved, "rbl", Stage.MAIL, Event())


def test_sender_exemption_with_spf_pass(tmp_path: Path, resolver: Resolver, fake: FakeDns) -> None:
    fake.add("partner.example", "TXT", '"v=spf1 ip4:198.51.100.0/24 -all"')
    p = policy(
        tmp_path,
        resolver,
        exempt=[{"senders": ["partner.example"], "spf_pass": True, "skip": ["rbl"]}],
    )
    event = Event(deadline=None)
    passing = make_conn(sender="a@partner.example", ip="198.51.100.9")
    assert p.exempt(passing, "rbl", Stage.MAIL, event)
    failing = make_conn(sender="a@partner.example", ip="203.0.113.9")
    assert not p.exempt(failing, "rbl", Stage.MAIL, event)
    assert not p.exempt(make_conn(sender="a@other.example"), "rbl", Stage.MAIL, event)


@pytest.mark.parametrize(
    "sender", ["a@partner.example.", '"a"@Partner.Example', '"x@other.example"@partner.example']
)
def test_an_spf_pass_exemption_checks_the_sender_as_the_spf_check_does(
    tmp_path: Path, resolver: Resolver, fake: FakeDns, sender: str
) -> None:
    """Review rev69 F5: "a@partner.example." was checked as written, pyspf answered
    "none" for the empty last label, and the partner's exemption never held."""
    fake.add("partner.example", "TXT", '"v=spf1 ip4:198.51.100.0/24 -all"')
    fake.add("other.example", "TXT", '"v=spf1 +all"')
    p = policy(
        tmp_path,
        resolver,
        exempt=[{"senders": ["partner.example"], "spf_pass": True, "skip": ["rbl"]}],
    )
    event = Event(deadline=None)
    assert p.exempt(make_conn(sender=sender, ip="198.51.100.9"), "rbl", Stage.MAIL, event)
    assert not p.exempt(make_conn(sender=sender, ip="203.0.113.9"), "rbl", Stage.MAIL, event)


def test_an_spf_pass_exemption_has_the_sender_checks_time(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    """Review rev59: the exemption's own SPF waited on the stage's deadline, which the
    client's own names (a PTR that never answers) may have used up: a partner got 450
    every time. It has the sender checks' time, as the spf check has."""
    fake.add("partner.example", "TXT", '"v=spf1 ip4:198.51.100.0/24 -all"')
    fake.delay = 0.1
    p = policy(
        tmp_path,
        resolver,
        exempt=[{"senders": ["partner.example"], "spf_pass": True, "skip": ["rbl"]}],
    )
    spent = Event(deadline=time.monotonic(), stage_length=1.0)  # the stage used up
    conn = make_conn(sender="a@partner.example", ip="198.51.100.9")
    assert p.exempt(conn, "rbl", Stage.MAIL, spent)
    assert not p.unsure(conn, "rbl")


def test_postmaster_and_held_verdicts(tmp_path: Path) -> None:
    p = policy(tmp_path, None, postmaster_skip=["all-content", "rbl"])
    conn = make_conn(sender="x@y.example")
    verdict = Hit("rbl_deny", "listed")
    assert p.hold(conn, "rbl", verdict, Event())
    assert p.held(conn, rcpt("postmaster@example.com")) is None
    assert p.held(conn, rcpt("postmaster")) is None
    assert p.held(conn, rcpt("alice@example.com")) == ("rbl", verdict)
    # postmaster of a domain that is not ours is nobody special.
    assert p.held(conn, rcpt("postmaster@relay.example")) == ("rbl", verdict)
    # Our host names and IPs are ours (review rev153 F2: the banner's host name).
    assert p.held(conn, rcpt("PostMaster@MX.Example.Net")) is None
    assert p.held(conn, rcpt("postmaster@[203.0.113.25]")) is None
    # Quoted, the same mailbox (RFC 5321 4.1.2); with needed quotes, another one.
    assert p.held(conn, rcpt('"postmaster"@example.com')) is None
    assert p.held(conn, rcpt(r'"Post\master"@example.com')) is None
    assert p.held(conn, rcpt('"postmaster "@example.com')) == ("rbl", verdict)


def test_quoted_sender_and_recipient_exemptions(tmp_path: Path) -> None:
    exempt = [
        # make_conn's client is 198.51.100.7.
        {
            "name": "s",
            "ips": ["198.51.100.0/24"],
            "senders": ["a@partner.example"],
            "skip": ["rbl"],
        },
        {"name": "r", "recipients": ["alice@example.com"], "skip": ["mailbox"]},
    ]
    p = policy(tmp_path, None, exempt=exempt)
    for sender in ("a@partner.example", '"a"@partner.example', r'"\a"@Partner.Example'):
        assert p.exempt(make_conn(sender=sender), "rbl", Stage.MAIL, Event()) == "s", sender
    assert p.exempt(make_conn(sender='"a "@partner.example'), "rbl", Stage.MAIL, Event()) is None
    conn = make_conn(sender="x@y.example")
    for recipient in ("alice@example.com", '"alice"@example.com', r'"al\ice"@example.com'):
        event = rcpt(recipient)
        assert p.exempt(conn, "mailbox", Stage.RCPT, event) == "r", recipient
    assert p.exempt(conn, "mailbox", Stage.RCPT, rcpt('"alice "@example.com')) is None


def test_content_exemptions_are_judged_per_transaction_and_named_per_check(
    tmp_path: Path,
) -> None:
    net, ip = ["198.51.100.0/24"], "198.51.100.9"
    exempt = [
        {"name": "a", "ips": net, "senders": ["other.example"], "skip": ["antispam"]},
        {"name": "b", "ips": net, "senders": ["partner.example"], "skip": ["received", "antispam"]},
    ]
    p = policy(tmp_path, None, exempt=exempt)
    partner = make_conn(sender="x@partner.example", ip=ip, recipients=["alice@example.com"])
    assert p.exempt(partner, "received", Stage.HEADER, Event()) == "b"
    assert p.exempt(partner, "antispam", Stage.EOM, Event()) == "b"
    assert p.exempt(partner, "virus", Stage.EOM, Event()) is None
    other = make_conn(sender="x@other.example", ip=ip, recipients=["alice@example.com"])
    assert p.exempt(other, "received", Stage.HEADER, Event()) is None
    assert p.exempt(other, "antispam", Stage.EOM, Event()) == "a"
    assert other.txn is not None
    assert other.txn.scratch[SKIPPED] == {"antispam": "a"}


def test_content_exemption_needs_every_recipient(tmp_path: Path) -> None:
    p = policy(tmp_path, None)
    only = make_conn(sender="x@y.example", recipients=["postmaster@example.com"])
    assert p.effective(only, "antispam", Stage.EOM, Event(), "enforce") == "off"
    mixed = make_conn(
        sender="x@y.example", recipients=["postmaster@example.com", "alice@example.com"]
    )
    assert p.effective(mixed, "antispam", Stage.EOM, Event(), "enforce") == "enforce"


def test_an_emptied_ip_file_exempts_nobody_and_still_loads(tmp_path: Path) -> None:
    """Review rev224 M2: a partner list emptied was refused ("matches nothing") at
    start and at every reload, so the service did not start and the partner just
    removed stayed exempt. It loads, matches no client, and check-config notes it."""
    partners = tmp_path / "partners.txt"
    partners.write_text("# nobody for now\n")
    exempt = [{"name": "partners", "ip_files": [str(partners)], "skip": ["rbl"]}]
    p = policy(tmp_path, None, exempt=exempt)
    conn = make_conn(sender="x@y.example", ip="198.51.100.7")
    assert p.exempt(conn, "rbl", Stage.MAIL, Event()) is None
    (note,) = exemption_notes(p.config)
    assert note.key == "policy.exempt[0].ip_files"
    assert "matches no client until they do" in str(note)
    partners.write_text("198.51.100.0/24\n")
    q = policy(tmp_path, None, exempt=exempt)
    assert q.exempt(conn, "rbl", Stage.MAIL, Event()) == "partners"
    assert exemption_notes(q.config) == []


def abuse_desk(name: str = "abuse-desk", **criteria: object) -> dict[str, object]:
    """An exemption of abuse@ from the anti-spam check, on ``criteria`` too."""
    return {"name": name, "recipients": ["abuse@example.com"], "skip": ["antispam"], **criteria}


def to_postmaster_and_abuse(ip: str = "198.51.100.9", *more: str) -> Connection:
    recipients = ["postmaster@example.com", "abuse@example.com", *more]
    return make_conn(sender="x@y.example", ip=ip, recipients=recipients)


def test_recipients_exempt_by_different_exemptions_are_exempt_together(tmp_path: Path) -> None:
    """Review rev216 M1: a complaint to postmaster@ and abuse@, each exempt from the
    anti-spam check by an exemption of its own, was judged by it (552 for both)."""
    p = policy(tmp_path, None, exempt=[abuse_desk()])
    both = to_postmaster_and_abuse()
    assert p.effective(both, "antispam", Stage.EOM, Event(), "enforce") == "off"
    assert both.txn is not None
    assert both.txn.scratch[SKIPPED] == {"antispam": "abuse-desk+postmaster"}
    # Everyone else still gets the check, with or without them.
    three = to_postmaster_and_abuse("198.51.100.9", "alice@example.com")
    assert p.effective(three, "antispam", Stage.EOM, Event(), "enforce") == "enforce"
    # Not a check only one of them skips.
    virus_too = policy(tmp_path, None, exempt=[abuse_desk()], postmaster_skip=["antispam", "virus"])
    assert virus_too.effective(both, "virus", Stage.EOM, Event(), "enforce") == "enforce"
    # And each exemption's own conditions hold: a partner's by client address.
    q = policy(tmp_path, None, exempt=[abuse_desk("partner", ips=["198.51.100.0/24"])])
    elsewhere = to_postmaster_and_abuse("203.0.113.9")
    assert q.effective(elsewhere, "antispam", Stage.EOM, Event(), "enforce") == "enforce"
    theirs = to_postmaster_and_abuse("198.51.100.9")
    assert q.effective(theirs, "antispam", Stage.EOM, Event(), "enforce") == "off"


def test_an_undecided_exemption_with_another_makes_a_content_refusal_unsure(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    """An exemption whose reverse DNS failed for now, for abuse@, with postmaster's
    for the other recipient: together they might have covered the message."""
    fake.fail("9.100.51.198.in-addr.arpa", "PTR", Status.SERVFAIL)
    partner = abuse_desk("partner", host_suffixes=["partner.example"])
    p = policy(tmp_path, resolver, exempt=[partner])
    conn = to_postmaster_and_abuse("198.51.100.9")
    assert p.exempt(conn, "antispam", Stage.EOM, Event(deadline=None)) is None
    assert p.unsure(conn, "antispam", stage=Stage.EOM)
    mixed = make_conn(
        sender="x@y.example",
        ip="198.51.100.9",
        recipients=["alice@example.com", "abuse@example.com"],
    )
    assert p.exempt(mixed, "antispam", Stage.EOM, Event(deadline=None)) is None
    assert not p.unsure(mixed, "antispam", stage=Stage.EOM)


def test_an_exemption_that_cannot_apply_leaves_a_content_refusal_certain(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    """Review rev220 L1: the abuse desk's exemption is for 10.0.0.0/8 only, so abuse@
    is never exempt for this client; an undecided partner for sales@ made the refusal
    a 450 where it is certain."""
    fake.fail("9.100.51.198.in-addr.arpa", "PTR", Status.SERVFAIL)
    sales = ["sales@example.com"]
    partner = abuse_desk("partner", host_suffixes=["partner.example"], recipients=sales)
    for network, unsure in (("10.0.0.0/8", False), ("198.51.100.0/24", True)):
        # Outside the abuse desk's network its exemption cannot apply: certain; inside,
        # both may: unsure.
        p = policy(tmp_path, resolver, exempt=[partner, abuse_desk(ips=[network])])
        conn = make_conn(
            sender="x@y.example", ip="198.51.100.9", recipients=[*sales, "abuse@example.com"]
        )
        assert p.exempt(conn, "antispam", Stage.EOM, Event(deadline=None)) is None
        assert p.unsure(conn, "antispam", stage=Stage.EOM) is unsure, network


# --- internationalized domains: U-labels and A-labels are one domain --------------------


@pytest.mark.parametrize(
    ("address", "pattern"),
    [
        ("a@xn--bcher-kva.example", "bücher.example"),
        ("a@mx.xn--bcher-kva.example", "Bücher.Example."),
        ("a@Bücher.example", "xn--bcher-kva.example"),
        ("a@bu\u0308cher.example", "@bücher.example"),  # NFD
        ("a@XN--BCHER-KVA.example", "@bücher.example"),
        ("jürgen@xn--bcher-kva.example", "Jürgen@Bücher.example"),
        ("ju\u0308rgen@bücher.example", "jürgen@xn--bcher-kva.example"),
    ],
)
def test_idn_address_forms(address: str, pattern: str) -> None:
    assert address_matches(parse_path(f"<{address}>", smtputf8=True), (pattern,))


@pytest.mark.parametrize(
    ("address", "pattern"),
    [
        ("a@strasse.de", "straße.de"),  # IDNA2008: two domains
        ("a@mx.xn--bcher-kva.example", "@bücher.example"),
        ("jurgen@bücher.example", "jürgen@bücher.example"),
    ],
)
def test_idn_address_forms_that_differ(address: str, pattern: str) -> None:
    assert not address_matches(parse_path(f"<{address}>", smtputf8=True), (pattern,))


@pytest.mark.parametrize(
    ("senders", "recipients", "sender", "recipient"),
    [
        (["bücher.example"], ["@straße.de"], "x@xn--bcher-kva.example", "x@xn--strae-oqa.de"),
        (["xn--bcher-kva.example"], ["@xn--strae-oqa.de"], "x@bücher.example", "x@Straße.de"),
    ],
    ids=["u-label-entries", "a-label-entries"],
)
def test_idn_sender_and_recipient_exemptions(
    tmp_path: Path, senders: list[str], recipients: list[str], sender: str, recipient: str
) -> None:
    exempt = [
        {"name": "s", "ips": ["198.51.100.0/24"], "senders": senders, "skip": ["rbl"]},
        {"name": "r", "recipients": recipients, "skip": ["mailbox"]},
    ]
    services = dns_services(
        tmp_path,
        None,
        site={"local_domains": ["example.com", "straße.de"]},
        policy={"exempt": exempt},
    )
    p = Policy(services, [("rbl", Stage.MAIL), ("mailbox", Stage.RCPT)])
    conn = make_conn(sender=sender, smtputf8=True)
    assert p.exempt(conn, "rbl", Stage.MAIL, Event()) == "s"
    assert p.exempt(conn, "mailbox", Stage.RCPT, rcpt(recipient, smtputf8=True)) == "r"
    other = make_conn(sender="x@bucher.example")
    assert p.exempt(other, "rbl", Stage.MAIL, Event()) is None
    assert p.exempt(other, "mailbox", Stage.RCPT, rcpt("x@strasse.de")) is None


@pytest.mark.parametrize(
    ("table", "recipient"),
    [("bücher.example", "x@XN--BCHER-KVA.example"), ("xn--bcher-kva.example", "x@Bücher.example")],
)
def test_idn_domain_table_applies_to_either_spelling(
    tmp_path: Path, table: str, recipient: str
) -> None:
    services = dns_services(
        tmp_path,
        None,
        site={"local_domains": ["example.com", "bücher.example"]},
        domain={table: {"checks": {"mailbox": {"mode": "report"}}}},
    )
    p = Policy(services, [("rbl", Stage.MAIL), ("mailbox", Stage.RCPT)])
    conn = make_conn(sender="x@y.example")
    event = rcpt(recipient, smtputf8=True)
    domain = p.domain(conn, Stage.RCPT, event)
    assert domain is not None
    assert domain.domain == table
    assert p.mode(conn, "mailbox", Stage.RCPT, event, "enforce") == "report"
    other = rcpt("x@example.com")
    assert p.mode(conn, "mailbox", Stage.RCPT, other, "enforce") == "enforce"
