"""Relay policy: RelayLocal (relay_local_fail) at MAIL, Relay at RCPT."""

from __future__ import annotations

import pytest

from smtpguard.checks import Event, Stage
from smtpguard.checks.relay import Relay, RelayLocal
from smtpguard.verdict import Hit
from support.checks import ServicesFactory, make_conn, rcpt

SITE = {
    "local_domains": ["example.com", ".example.net"],
    "relay_domains": ["partner.example", ".relay.example"],
    "our_hostnames": ["mx.example.org"],
}


@pytest.fixture
def relay_local(make_services: ServicesFactory) -> RelayLocal:
    return RelayLocal(make_services(site=SITE))


@pytest.fixture
def relay(make_services: ServicesFactory) -> Relay:
    return Relay(make_services(site=SITE))


def test_stages_and_replies() -> None:
    assert RelayLocal.stage is Stage.MAIL
    assert Relay.stage is Stage.RCPT
    assert RelayLocal.reply_ids == ("relay_local_fail",)
    assert set(Relay.reply_ids) == {"host_denies_relay", "relay_domain_fail"}


# --- relay_local ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    ["alice@example.com", "Alice@EXAMPLE.COM.", "x@mail.example.net", "x@a.b.example.net"],
)
def test_local_sender_from_untrusted_client(relay_local: RelayLocal, sender: str) -> None:
    conn = make_conn(sender=sender)
    assert conn.txn is not None
    assert conn.txn.sender is not None
    verdict = relay_local(conn, Event())
    assert verdict == Hit(
        "relay_local_fail", f"local sender {conn.txn.sender.text} not authenticated"
    )


@pytest.mark.parametrize(
    "sender",
    [
        "x@example.org",
        "x@example.net",  # ".example.net" lists only its subdomains
        "x@notexample.com",
        "x@example.com.evil.example",
        "x@partner.example",  # relay domains are not local
    ],
)
def test_foreign_sender_from_untrusted_client(relay_local: RelayLocal, sender: str) -> None:
    assert relay_local(make_conn(sender=sender), Event()) is None


def test_local_sender_from_trusted_network(relay_local: RelayLocal) -> None:
    conn = make_conn(sender="alice@example.com", ip="127.0.0.1", trusted_network=True)
    assert relay_local(conn, Event()) is None


def test_local_sender_authenticated(relay_local: RelayLocal) -> None:
    conn = make_conn(sender="alice@example.com", auth_type="PLAIN", auth_login="alice")
    assert relay_local(conn, Event()) is None


@pytest.mark.parametrize("sender", ["<>", "<alice@example..com>", "<x@foreign..example>", None])
def test_relay_local_without_usable_sender(relay_local: RelayLocal, sender: str | None) -> None:
    assert relay_local(make_conn(sender=sender), Event()) is None


@pytest.mark.parametrize(
    "sender",
    [
        "<alice%example.com>",  # Postfix's percent hack: alice@example.com
        "<example.com!alice>",  # swap_bangpath
        "<alice>",  # append_at_myorigin: the MTA's own domain
        "<@x.example:alice>",  # the route goes, then as <alice>
        '<"alice%example.com">',  # resolve_dequoted_address
        "<x%y%mail.example.net>",
        # Review rev67 F1: a comment, a group, a list, two routes.
        "<alice@example.com(x)>",
        "<x:alice@example.com;>",
        "<alice@example.com,>",
        "<@a:@b:alice>",
        # Review rev70 N1: after the closing bracket.
        "<alice@example.com>(x)",
        "<alice@example.com>,",
        # Review rev72 S1: a "(" in a domain literal of a route.
        "<@[(]:alice@example.com>",
    ],
)
def test_an_unparsable_sender_the_mta_may_make_ours(relay_local: RelayLocal, sender: str) -> None:
    """Review rev65 F1: with sender_syntax in report mode, off or exempted, Postfix
    delivered each of these from a stranger as one of our senders."""
    verdict = relay_local(make_conn(sender=sender), Event())
    assert verdict == Hit(
        "relay_local_fail",
        f"sender {sender!r} (unparsable, the MTA may make it ours) not authenticated",
    )


def test_the_hosts_own_names_are_local_senders(make_services: ServicesFactory) -> None:
    """Review rev65 F5: root@ the host (Postfix's myorigin) and @[our IP] are the host's
    own senders, as the relay check counts them."""
    check = RelayLocal(make_services(site={**SITE, "our_ips": ["192.0.2.25"]}))
    for sender in ("root@mx.example.org", "root@MX.example.org.", "root@[192.0.2.25]"):
        verdict = check(make_conn(sender=sender), Event())
        assert isinstance(verdict, Hit), sender
        assert verdict.reply_id == "relay_local_fail"
    assert check(make_conn(sender="root@[192.0.2.26]"), Event()) is None


# --- relay ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipient",
    [
        "bob@example.com",
        "bob@EXAMPLE.com.",
        "bob@host.example.net",
        "x@partner.example",
        "x@mx.relay.example",
        "<Postmaster>",  # RFC 5321 4.5.1: always ours
        "<postmaster>",
        # This host's own name: from outside, postmaster@ it only (found by review: a
        # stranger's mail to it was refused as relaying; RFC 5321 §4.5.1).
        "postmaster@mx.example.org",
        "PostMaster@MX.example.org.",
    ],
)
def test_our_recipients_from_untrusted_client(relay: Relay, recipient: str) -> None:
    conn = make_conn(sender="stranger@example.org")
    assert relay(conn, rcpt(recipient)) is None


@pytest.mark.parametrize(
    ("recipient", "domain"),
    [
        ("x@example.org", "example.org"),
        ("x@example.net", "example.net"),
        ("x@relay.example", "relay.example"),  # ".relay.example" covers subdomains only
        ("x@Partner.Example.org", "partner.example.org"),
        ("x@sub.mx.example.org", "sub.mx.example.org"),  # a host name has no subdomains
        # Any other name at the host: no directory knows it, and Postfix (with
        # smtpd_reject_unlisted_recipient off for smtpguard) would accept, then bounce
        # it (second review).
        ("root@mx.example.org", "mx.example.org"),
        ("postmaster+x@mx.example.org", "mx.example.org"),
    ],
)
def test_untrusted_relay_attempt(relay: Relay, recipient: str, domain: str) -> None:
    verdict = relay(make_conn(sender="stranger@example.org"), rcpt(recipient))
    assert verdict == Hit("host_denies_relay", f"relay to {domain} from untrusted client")


@pytest.mark.parametrize(
    "recipient",
    [
        "victim%gmail.example@example.com",  # allow_percent_hack
        "gmail.example!victim@example.com",  # swap_bangpath
        '"victim@gmail.example"@example.com',  # resolve_dequoted_address
        "victim%gmail.example@partner.example",  # a relay domain
    ],
)
def test_routing_in_the_local_part_is_relaying(relay: Relay, recipient: str) -> None:
    """Postfix delivers victim%gmail.example@example.com to victim@gmail.example: from a
    stranger it is a relay attempt, whatever the mailbox check says (off, report)."""
    verdict = relay(make_conn(sender="stranger@example.org"), rcpt(recipient))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "host_denies_relay"
    assert verdict.detail.startswith("relay through the local part of ")
    trusted = make_conn(sender="alice@example.com", ip="127.0.0.1", trusted_network=True)
    assert relay(trusted, rcpt(recipient)) is None


def test_untrusted_relay_attempt_with_local_sender(relay: Relay) -> None:
    # Claiming a local sender does not make the client trusted.
    verdict = relay(make_conn(sender="alice@example.com"), rcpt("x@example.org"))
    assert verdict == Hit("host_denies_relay", "relay to example.org from untrusted client")


@pytest.mark.parametrize(
    "sender",
    [
        "alice@example.com",
        "x@host.example.net",
        "<>",
        # What the host's own programs send as (cron, the MSP): found by review.
        "root@mx.example.org",
    ],
)
def test_trusted_network_relays_for_local_and_null_senders(relay: Relay, sender: str) -> None:
    conn = make_conn(sender=sender, ip="127.0.0.1", trusted_network=True)
    assert relay(conn, rcpt("x@example.org")) is None


def test_bounces_to_the_hosts_own_senders(relay: Relay) -> None:
    """The host's programs send as root@ it; their bounces come back with a null
    sender (third review: refused for good). No bounce is ever sent to <>, so this is
    no backscatter."""
    assert relay(make_conn(sender="<>"), rcpt("root@mx.example.org")) is None
    verdict = relay(make_conn(sender="x@example.org"), rcpt("root@mx.example.org"))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "host_denies_relay"


@pytest.mark.parametrize("listed", ["local_domains", "relay_domains"])
def test_a_dot_entry_covering_the_host_name_does_not_open_it(
    make_services: ServicesFactory, listed: str
) -> None:
    """Third review: relay_domains = [".example.org"] let any name at mx.example.org
    through from outside, then Postfix bounced the unknown ones (backscatter)."""
    relay = Relay(make_services(site={**SITE, listed: [*SITE[listed], ".example.org"]}))
    verdict = relay(make_conn(sender="x@example.net"), rcpt("nosuch@mx.example.org"))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "host_denies_relay"
    assert relay(make_conn(sender="x@example.net"), rcpt("x@other.example.org")) is None
    # Named exactly in local_domains, it is a directory domain like any other (the
    # mailbox check judges it); in relay_domains it stays the host's (third review:
    # backscatter, as Postfix delivers it itself).
    exact = Relay(make_services(site={**SITE, listed: [*SITE[listed], "mx.example.org"]}))
    verdict = exact(make_conn(sender="x@example.net"), rcpt("nosuch@mx.example.org"))
    if listed == "local_domains":
        assert verdict is None
    else:
        assert isinstance(verdict, Hit)
        assert verdict.reply_id == "host_denies_relay"


def test_the_hosts_own_name_for_its_own_users(relay: Relay) -> None:
    """A trusted or logged-in client reaches any name at the host (cron, a local user's
    mail to root), whatever its sender; the MTA's local delivery knows them."""
    lan = make_conn(sender="device@lan.example", ip="127.0.0.1", trusted_network=True)
    assert relay(lan, rcpt("root@mx.example.org")) is None
    user = make_conn(sender="alice@example.com", auth_type="PLAIN", auth_login="alice")
    assert relay(user, rcpt("root@MX.Example.org")) is None


def test_an_idn_host_name_in_either_spelling(make_services: ServicesFactory) -> None:
    """our_hostnames is stored in A-labels; an address may carry U-labels (second
    review: U-labels were relaying)."""
    relay = Relay(make_services(site={**SITE, "our_hostnames": ["mx.bücher.example"]}))
    for domain in ("mx.bücher.example", "mx.xn--bcher-kva.example"):
        assert relay(make_conn(sender="x@example.org"), rcpt(f"postmaster@{domain}")) is None
        lan = make_conn(sender=f"root@{domain}", ip="127.0.0.1", trusted_network=True)
        assert relay(lan, rcpt("x@elsewhere.example")) is None


def test_an_address_literal_of_our_ips_is_the_hosts_own(make_services: ServicesFactory) -> None:
    """Postfix takes postmaster@[its own IP] as local mail (review rev41: smtpguard
    refused it with host_denies_relay); any other name there is refused, as at the
    host's own name, and a literal of another IP is relaying."""
    relay = Relay(make_services(site={**SITE, "our_ips": ["192.0.2.25", "2001:db8::25"]}))
    outside = make_conn(sender="x@example.org")
    for literal in ("[192.0.2.25]", "[IPv6:2001:db8::25]", "[ipv6:2001:DB8:0::25]"):
        assert relay(outside, rcpt(f"postmaster@{literal}")) is None
        verdict = relay(outside, rcpt(f"root@{literal}"))
        assert isinstance(verdict, Hit)
        assert verdict.reply_id == "host_denies_relay"
    verdict = relay(outside, rcpt("postmaster@[192.0.2.26]"))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "host_denies_relay"
    lan = make_conn(sender="device@lan.example", ip="127.0.0.1", trusted_network=True)
    assert relay(lan, rcpt("root@[192.0.2.25]")) is None


def test_trusted_network_does_not_relay_for_foreign_sender(relay: Relay) -> None:
    conn = make_conn(sender="someone@example.org", ip="127.0.0.1", trusted_network=True)
    verdict = relay(conn, rcpt("x@elsewhere.example"))
    assert verdict == Hit(
        "relay_domain_fail", "relay to elsewhere.example for foreign sender someone@example.org"
    )


def test_authenticated_client_relays_for_local_sender(relay: Relay) -> None:
    conn = make_conn(sender="alice@example.com", auth_type="PLAIN", auth_login="alice")
    assert relay(conn, rcpt("x@example.org")) is None


def test_authenticated_client_with_foreign_sender(relay: Relay) -> None:
    conn = make_conn(sender="alice@example.org", auth_type="PLAIN", auth_login="alice")
    verdict = relay(conn, rcpt("x@elsewhere.example"))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "relay_domain_fail"


def test_trusted_network_with_unparsable_sender_relays(relay: Relay) -> None:
    # Without a domain, the MTA makes it one of its own (append_at_myorigin).
    conn = make_conn(sender="<bad sender>", ip="127.0.0.1", trusted_network=True)
    assert relay(conn, rcpt("x@example.org")) is None


@pytest.mark.parametrize(
    ("sender", "domain"),
    [
        ("<victim%foreign.example>", "foreign.example"),
        ("<foreign.example!victim>", "foreign.example"),
        ('<"victim@foreign.example">', "foreign.example"),
    ],
)
def test_trusted_network_with_a_sender_the_mta_makes_foreign(
    relay: Relay, sender: str, domain: str
) -> None:
    """Review rev65 F1: Postfix delivered <victim%foreign.example> from a trusted host
    to a foreign domain as victim@foreign.example (sender_syntax in report mode)."""
    conn = make_conn(sender=sender, ip="127.0.0.1", trusted_network=True)
    assert relay(conn, rcpt("x@example.org")) == Hit(
        "relay_domain_fail",
        f"relay to example.org for sender {sender!r} (unparsable, may be of {domain})",
    )


def test_relay_without_recipient_or_transaction(relay: Relay) -> None:
    assert relay(make_conn(sender="a@example.org"), rcpt("<not valid>")) is None
    assert relay(make_conn(), rcpt("x@example.org")) is None


@pytest.mark.parametrize(
    "raw",
    [
        "<a@b@victim.example>",
        "<" + "a" * 65 + "@victim.example>",
        # Review rev71 R1: a "(" quoted or escaped is no comment to Postfix, which
        # delivered these to gmail.example.
        '<"(victim"@gmail.example(x)>',
        '<"a(b"@gmail.example(x)>',
        "<victim\\(@gmail.example>",
        "<victim\\(x@gmail.example>",
        # An "@" that no reading of ours places: not a bare local name.
        '<"(x"@>',
    ],
)
def test_unparsable_foreign_recipient_is_still_relay_controlled(relay: Relay, raw: str) -> None:
    """Relay control must not depend on the mailbox check refusing the address."""
    event = rcpt(raw)
    assert event.rcpt is None
    verdict = relay(make_conn(sender="a@example.org"), event)
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "host_denies_relay"


@pytest.mark.parametrize("raw", ["<a@b@example.com>", "<v%gmail.example>", "<gmail.example!v>"])
def test_an_unparsable_routed_recipient_is_relaying(relay: Relay, raw: str) -> None:
    """Postfix delivers these elsewhere (a@b, v@gmail.example): relaying, whether or
    not the mailbox check refuses them (it may be off or in report mode)."""
    event = rcpt(raw)
    assert event.rcpt is None
    verdict = relay(make_conn(sender="a@example.org"), event)
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "host_denies_relay"


def test_a_trusted_client_relays_through_a_routed_local_part_only_for_local_senders(
    relay: Relay,
) -> None:
    routed = rcpt("v%gmail.example@example.com")
    foreign = make_conn(sender="x@other.example", ip="192.0.2.5", trusted_network=True)
    verdict = relay(foreign, routed)
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "relay_domain_fail"
    local = make_conn(sender="alice@example.com", ip="192.0.2.5", trusted_network=True)
    assert relay(local, routed) is None


# --- internationalized domains: U-labels and A-labels are one domain --------------------

IDN_SITES = {
    "u-labels": {
        "local_domains": ["Bücher.example.", ".例子.中国"],
        "relay_domains": ["straße.de"],
    },
    "a-labels": {
        "local_domains": ["xn--bcher-kva.example", ".xn--fsqu00a.xn--fiqs8s"],
        "relay_domains": ["XN--STRAE-OQA.de"],
    },
}


@pytest.mark.parametrize("site", IDN_SITES.values(), ids=IDN_SITES.keys())
@pytest.mark.parametrize(
    "recipient",
    [
        "x@xn--bcher-kva.example",
        "x@XN--BCHER-KVA.EXAMPLE",
        "x@mx.xn--fsqu00a.xn--fiqs8s",
        "x@xn--strae-oqa.de",
    ],
)
def test_an_a_label_recipient_at_our_domain_is_no_relay(
    make_services: ServicesFactory, site: dict[str, list[str]], recipient: str
) -> None:
    """Our domain in A-labels, however site writes it: Postfix routes it as ours."""
    check = Relay(make_services(site=site))
    assert check(make_conn(sender="stranger@example.org"), rcpt(recipient)) is None


@pytest.mark.parametrize(
    ("recipient", "ours"),
    [
        ("jürgen@bücher.example", "both"),
        # Postfix 3.7 folds case, non-ASCII letters too, before it matches its lists
        # (review rev181 F2: BÜCHER.example was refused as relaying).
        ("x@BÜCHER.Example.", "both"),
        ("x@bÜcher.example", "both"),
        ("x@bu\u0308cher.example", "neither"),  # NFD
        ("x@mx.例子.中国", "both"),
        # ß is one of UTS 46's deviations: not the A-label's spelling for sure.
        ("x@straße.de", "u-labels"),
        ("x@STRAẞE.de", "neither"),  # ICU's UTS 46 makes it strasse.de (review rev116 F1)
    ],
)
def test_a_u_label_recipient_is_ours_only_as_site_spells_the_domain(
    make_services: ServicesFactory, recipient: str, ours: str
) -> None:
    """Review rev116 F1: Postfix matches its domain lists to the text (after folding
    case) and routes any other spelling as foreign mail, to the domain ICU's UTS 46
    makes of it, which our mapping may not (capital sharp s: strasse.de, someone
    else's). So a U-label spelling is ours only as site writes it, or as the U-label of
    an A-label it lists (review rev181 F1: a site listing its IDN in A-labels only
    refused mail to its own users written in U-labels; postfix-config has Postfix's
    lists carry both spellings)."""
    for name, site in IDN_SITES.items():
        check = Relay(make_services(site=site))
        verdict = check(make_conn(sender="stranger@example.org"), rcpt(recipient, smtputf8=True))
        if ours in ("both", name):
            assert verdict is None, (name, recipient)
        else:
            assert isinstance(verdict, Hit), (name, recipient)
            assert verdict.reply_id == "host_denies_relay"
            assert "not spelled as site lists a domain of ours" in verdict.detail


@pytest.mark.parametrize("site", IDN_SITES.values(), ids=IDN_SITES.keys())
@pytest.mark.parametrize(
    ("recipient", "smtputf8", "domain"),
    [
        # IDNA2003 would make straße.de and strasse.de one domain: they are two.
        ("x@strasse.de", False, "strasse.de"),
        ("x@bucher.example", False, "bucher.example"),
        ("x@例子.中国", True, "例子.中国"),  # ".domain" lists only its subdomains
        ("x@other.xn--bcher-kva.example", False, "other.xn--bcher-kva.example"),
    ],
)
def test_idn_relay_attempt_still_refused(
    make_services: ServicesFactory,
    site: dict[str, list[str]],
    recipient: str,
    smtputf8: bool,
    domain: str,
) -> None:
    check = Relay(make_services(site=site))
    verdict = check(make_conn(sender="stranger@example.org"), rcpt(recipient, smtputf8=smtputf8))
    assert verdict == Hit("host_denies_relay", f"relay to {domain} from untrusted client")


@pytest.mark.parametrize("site", IDN_SITES.values(), ids=IDN_SITES.keys())
@pytest.mark.parametrize(
    ("sender", "smtputf8"), [("x@bücher.example", True), ("x@xn--bcher-kva.example", False)]
)
def test_idn_local_sender(
    make_services: ServicesFactory, site: dict[str, list[str]], sender: str, smtputf8: bool
) -> None:
    services = make_services(site=site)
    conn = make_conn(sender=sender, smtputf8=smtputf8)
    assert conn.txn is not None
    assert conn.txn.sender is not None
    assert RelayLocal(services)(conn, Event()) == Hit(
        "relay_local_fail", f"local sender {conn.txn.sender.text} not authenticated"
    )
    # A trusted client relays for it: it is one of ours.
    trusted = make_conn(sender=sender, smtputf8=smtputf8, ip="127.0.0.1", trusted_network=True)
    assert Relay(services)(trusted, rcpt("x@example.org")) is None


def test_with_milter_relay_control_only_the_listed_spelling_is_ours(
    make_services: ServicesFactory,
) -> None:
    """Review rev182 F1: where smtpguard has the last word on relaying, a U-label
    only derived from a listed A-label was taken as ours while Postfix's lists, which
    postfix-config fills with the A-label in relay_domains, routed it as foreign mail
    (to the default transport)."""
    site = {**IDN_SITES["a-labels"], "relay_control": "milter"}
    check = Relay(make_services(site=site))
    stranger = make_conn(sender="stranger@example.org")
    verdict = check(stranger, rcpt("x@bücher.example", smtputf8=True))
    assert isinstance(verdict, Hit)
    assert "not spelled as site lists a domain of ours" in verdict.detail
    assert check(stranger, rcpt("x@xn--bcher-kva.example")) is None


def test_unparsable_idn_recipient_judged_as_written(make_services: ServicesFactory) -> None:
    """A U-label recipient without SMTPUTF8 does not parse; relay control still sees
    the domain it names, spelled as it is."""
    stranger = make_conn(sender="stranger@example.org")
    check = Relay(make_services(site=IDN_SITES["u-labels"]))
    assert check(stranger, rcpt("x@bücher.example")) is None
    check = Relay(make_services(site=IDN_SITES["a-labels"]))
    assert check(stranger, rcpt("x@bücher.example")) is None  # review rev181 F1
    assert isinstance(check(stranger, rcpt("x@straße.de")), Hit)
