"""Operator policy through the real ``smtpguard run`` service and the PyPI miltertest
client: DNSBL scoring, exemptions, local IP lists, per-reason smtpport modes and
per-domain policy (issue 14). DNS answers come from the real unbound server
(support/unbound.py).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from support.daemons import GTUBE as GTUBE_BYTES
from support.expected import SPEC
from support.mtclient import Answer, assert_pass, assert_reply
from support.polling import wait_until
from support.service import Running, make_site, merge, running, smtpguard
from support.unbound import (
    A_ONLY_DOMAIN,
    GENERIC_DSL_IP,
    GENERIC_IP,
    GOOD_DOMAIN,
    GOOD_IP,
    NO_PTR_IP,
    PTR_SERVFAIL_IP,
    RBL_IP,
    RBL_TEST_IP,
    RBL_ZONE,
    RELAY_IP,
    RELAY_ZONE,
    SCORE_IP,
    SCORE_ONE_IP,
    TWO_PTR_IP,
    UNCONFIRMED_IP,
    DnsServer,
)

pytestmark = pytest.mark.integration

HEADERS = [
    ("From", "Friend <friend@good.test>"),
    ("To", "alice@example.com"),
    ("Subject", "hello"),
    ("Message-ID", "<1@good.test>"),
]


def dns_site(
    tmp: Path, port: int, extra: Mapping[str, Any], zones: Sequence[Mapping[str, Any]] = ()
) -> Iterator[Running]:
    dns = {"nameservers": ["127.0.0.1"], "port": port, "timeout": 1.0, "stage_deadline": 2.0}
    site = make_site(tmp, merge({"dns": dns, "dnsbl": {"zones": list(zones)}}, extra))
    with running(site) as svc:
        yield svc


def deliver(
    service: Running, ip: str, sender: str = f"<someone@{GOOD_DOMAIN}>"
) -> tuple[Answer, list[tuple[str, dict[str, str]]]]:
    with service.session() as s:
        assert_pass(s.connect(ip))
        assert_pass(s.helo("mx.good.test"))
        assert_pass(s.mail(sender))
        assert_pass(s.rcpt("<alice@example.com>"))
        final, mods, early = s.message(HEADERS, "Hello Alice.\r\n")
        assert early == []
        return final, mods


# --- DNSBL zones with action = "score" ---------------------------------------------------

SCORE_ZONES = (
    {"name": "score.test", "kind": "rbl", "action": "score", "weight": 8.0},
    {"name": "score2.test", "kind": "rbl", "action": "score", "weight": 8.0},
)


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer) -> Iterator[Running]:
    extra = {
        "antispam": {"add_header_score": 6.0, "reject_score": 15.0},
        # The list's readers want every report, whatever DNSBLs say of the sender.
        "policy": {"exempt": [{"recipients": ["news@example.com"], "skip": ["rbl"]}]},
    }
    yield from dns_site(tmp_path_factory.mktemp("score"), unbound.port, extra, SCORE_ZONES)


def test_one_score_zone_flags_the_message(scoring: Running) -> None:
    final, mods = deliver(scoring, SCORE_ONE_IP)
    assert_pass(final)
    assert ("h", {"name": "X-Spam-Flag", "value": "YES"}) in mods
    assert ("h", {"name": "X-Spam-Score", "value": "8.0"}) in mods
    reports = [m[1]["value"] for m in mods if m[1].get("name") == "X-Spam-Report"]
    assert any("dnsbl:score.test=8.0" in r for r in reports), mods


def test_two_score_zones_together_reach_the_reject_threshold(scoring: Running) -> None:
    final, _mods = deliver(scoring, SCORE_IP)
    assert_reply(final, "antispam_reject")
    assert "dnsbl:score.test=8.0, dnsbl:score2.test=8.0" in scoring.log()


def test_a_score_is_the_transactions_not_the_connections(scoring: Running) -> None:
    """A sending MTA reuses its connection: the listed client's first, anonymous
    message is refused, its authenticated one (never looked up: trusted) is not
    scored with the first one's weights."""
    tls, login = {"{tls_version}": "TLSv1.3"}, {"{auth_authen}": "alice@example.com"}
    with scoring.session() as s:
        assert_pass(s.connect(SCORE_IP))
        assert_pass(s.helo("mx.good.test", macros=tls))
        assert_pass(s.mail(f"<someone@{GOOD_DOMAIN}>"))
        assert_pass(s.rcpt("<alice@example.com>"))
        final, _mods, _early = s.message(HEADERS, "Hello Alice.\r\n")
        assert_reply(final, "antispam_reject")
        assert_pass(s.mail("<alice@example.com>", macros={**login, "{auth_type}": "PLAIN"}))
        assert_pass(s.rcpt("<bob@elsewhere.example>"))
        final, mods, _early = s.message(HEADERS, "Hello Bob.\r\n")
        assert_pass(final)
        # Not flagged, and a logged-in user's mail leaving carries no scores at all
        # (review rev188 F5).
        assert not [m for m in mods if m[1].get("name", "").startswith("X-Spam-")], mods
        # To one of our mailboxes it does, for Sieve's spamtest (review rev192 F1).
        assert_pass(s.mail("<alice@example.com>", macros={**login, "{auth_type}": "PLAIN"}))
        assert_pass(s.rcpt("<dave@example.com>"))
        final, mods, _early = s.message(HEADERS, "Hello Dave.\r\n")
        assert_pass(final)
        status = ("h", {"name": "X-Spam-Status", "value": "No, score=0.0 required=6.0 tests=none"})
        assert status in mods, mods


def test_recipients_exempt_from_rbl_are_exempt_from_its_scores(scoring: Running) -> None:
    with scoring.session() as s:
        assert_pass(s.connect(SCORE_IP))
        assert_pass(s.helo("mx.good.test"))
        assert_pass(s.mail(f"<someone@{GOOD_DOMAIN}>"))
        assert_pass(s.rcpt("<news@example.com>"))
        final, mods, _early = s.message(HEADERS, "Hello list.\r\n")
        assert_pass(final)
        status = ("h", {"name": "X-Spam-Status", "value": "No, score=0.0 required=6.0 tests=none"})
        assert status in mods, mods
        # With one recipient that is not exempt, the message is scored as a whole.
        assert_pass(s.mail(f"<someone@{GOOD_DOMAIN}>"))
        assert_pass(s.rcpt("<news@example.com>"))
        assert_pass(s.rcpt("<alice@example.com>"))
        final, _mods, _early = s.message(HEADERS, "Hello all.\r\n")
        assert_reply(final, "antispam_reject")


def scoring_with(
    factory: pytest.TempPathFactory, unbound: DnsServer, check: str, mode: str
) -> Iterator[Running]:
    """The score zones' site with one check's mode changed."""
    extra = {
        "antispam": {"add_header_score": 6.0, "reject_score": 15.0},
        "checks": {check: {"mode": mode}},
    }
    yield from dns_site(factory.mktemp(f"{check}-{mode}"), unbound.port, extra, SCORE_ZONES)


@pytest.fixture(scope="module")
def reporting(tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer) -> Iterator[Running]:
    yield from scoring_with(tmp_path_factory, unbound, "antispam", "report")


def test_spam_let_through_by_report_mode_is_flagged_like_any_spam(reporting: Running) -> None:
    """At reject_score in report mode the message is delivered: with the flag the
    mere suspects get, never less marked than they are."""
    final, mods = deliver(reporting, SCORE_IP)
    assert_pass(final)
    assert ("h", {"name": "X-Spam-Flag", "value": "YES"}) in mods
    assert ("h", {"name": "X-Spam-Score", "value": "16.0"}) in mods


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer) -> Iterator[Running]:
    yield from scoring_with(tmp_path_factory, unbound, "rbl", "report")


def test_score_zones_on_trial_refuse_nothing(trial: Running) -> None:
    """Review rev129 F4: with the rbl check in report mode two score zones still
    refused the message through the anti-spam score. Their listings are logged and
    not added."""
    final, mods = deliver(trial, SCORE_IP)
    assert_pass(final)
    status = ("h", {"name": "X-Spam-Status", "value": "No, score=0.0 required=6.0 tests=none"})
    assert status in mods, mods
    assert "zone=score2.test" in trial.log()
    assert "score +8.0 (not added: rbl mode=report)" in trial.log()


# --- exemptions -----------------------------------------------------------------------

GTUBE = GTUBE_BYTES.decode() + "\r\n"

EXEMPTIONS = [
    # A partner by IP: listed (and without PTR), exempt from the DNSBL and PTR checks.
    {"name": "partner-ip", "ips": [RBL_TEST_IP], "skip": ["rbl", "openrelay", "smtpport"]},
    # By forward-confirmed host name (RELAY_IP is mx77.good.test, confirmed).
    {"name": "partner-host", "host_suffixes": ["good.test"], "skip": ["openrelay"]},
    # mx.liar.test does not resolve back to UNCONFIRMED_IP: this never matches.
    {"name": "liar", "host_suffixes": ["liar.test"], "skip": ["smtpport"]},
    # A sender, only with SPF pass (good.test passes for RBL_IP).
    {"name": "partner-spf", "senders": [GOOD_DOMAIN], "spf_pass": True, "skip": ["rbl"]},
    # The abuse desk takes spam complaints (the test directory has no such mailbox).
    {"name": "abuse-desk", "recipients": ["abuse@example.com"], "skip": ["antispam", "mailbox"]},
]


@pytest.fixture(scope="module")
def exempting(tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("exempt")
    (tmp / "blocked.txt").write_text("# local block lists\n203.0.113.0/24\n2001:db8:bad::/48\n")
    (tmp / "relays.txt").write_text("192.0.2.128/25 # not trusted: only .0/25 is\n")
    extra = {
        "site": {"trusted_networks": ["192.0.2.0/25"]},
        "policy": {
            "exempt": EXEMPTIONS,
            # The test directory has no postmaster@example.com mailbox.
            "postmaster_skip": ["all-content", "all-dns", "mailbox"],
        },
        "dnsbl": {
            "local": [
                {"file": str(tmp / "blocked.txt"), "kind": "rbl"},
                {"file": str(tmp / "relays.txt"), "kind": "openrelay"},
            ]
        },
    }
    yield from dns_site(tmp, unbound.port, extra, (RBL_ZONE, RELAY_ZONE))


def test_exempted_partner_listed_in_the_dnsbl_is_accepted_and_cannot_relay(
    exempting: Running,
) -> None:
    with exempting.session() as s:
        assert_pass(s.connect(RBL_TEST_IP))
        assert_pass(s.helo("mx.partner.test"))
        assert_pass(s.mail(f"<someone@{A_ONLY_DOMAIN}>"))
        assert_reply(s.rcpt("<someone@elsewhere.example>"), "host_denies_relay")
        assert_pass(s.rcpt("<alice@example.com>"))
    log = exempting.log()
    assert "reply=rbl_deny" not in log.split("mx.partner.test")[-1]

    # The transaction's summary line (written when the session closes) names what the
    # exemption skipped.
    def summary() -> str | None:
        lines = [
            line
            for line in exempting.log().splitlines()
            if " summary " in line and f"client={RBL_TEST_IP}" in line
        ]
        return lines[-1] if lines else None

    wait_until(lambda: summary() is not None)
    assert "skipped=rbl:partner-ip" in (summary() or ""), summary()


def test_host_name_exemption_needs_forward_confirmation(exempting: Running) -> None:
    with exempting.session() as s:
        assert_pass(s.connect(RELAY_IP))
        assert_pass(s.helo("mx77.good.test"))
        assert_pass(s.mail("<someone@aonly.test>"))
        assert_pass(s.rcpt("<alice@example.com>"))
    with exempting.session() as s:
        assert_pass(s.connect(UNCONFIRMED_IP))
        assert_pass(s.helo("mx.liar.test"))
        assert_pass(s.mail("<someone@aonly.test>"))
        assert_reply(s.rcpt("<alice@example.com>"), "smtpport_check")


def test_sender_exemption_counts_only_with_spf_pass(exempting: Running) -> None:
    with exempting.session() as s:
        assert_pass(s.connect(RBL_IP))
        assert_pass(s.helo("mx66.good.test"))
        assert_pass(s.mail(f"<someone@{GOOD_DOMAIN}>"))
        assert_pass(s.rcpt("<alice@example.com>"))
    with exempting.session() as s:
        assert_pass(s.connect(RBL_IP))
        assert_pass(s.helo("mx66.good.test"))
        # Same client, a sender the exemption does not name: the listing counts (at
        # RCPT: this site exempts postmaster@ from the DNS checks, which holds them).
        assert_pass(s.mail(f"<someone@{A_ONLY_DOMAIN}>"))
        assert_reply(s.rcpt("<alice@example.com>"), "rbl_deny")


def test_postmaster_gets_mail_from_a_listed_client_others_do_not(exempting: Running) -> None:
    with exempting.session() as s:
        assert_pass(s.connect(RBL_IP))
        assert_pass(s.helo("mx66.good.test"))
        # The rbl verdict is held at MAIL FROM and answered per recipient.
        assert_pass(s.mail(f"<someone@{A_ONLY_DOMAIN}>"))
        assert_reply(s.rcpt("<alice@example.com>"), "rbl_deny")
        assert_pass(s.rcpt("<postmaster@example.com>"))
        assert_reply(s.rcpt("<someone@elsewhere.example>"), "rbl_deny")
        final, _mods, _early = s.message(HEADERS, "buy now\r\n" + GTUBE)
        # Postmaster is exempt from the content checks too.
        assert_pass(final)


@pytest.mark.parametrize(
    "other",
    [
        "<alice@example.com>",
        # Postfix accepts and delivers taro.@relay.example (an invalid dot-atom); it was
        # accepted but not recorded, so postmaster's exemption covered the whole
        # message and the relay recipient's copy went out unscanned.
        "<taro.@relay.example>",
    ],
)
def test_spam_to_other_recipients_is_still_refused(exempting: Running, other: str) -> None:
    with exempting.session() as s:
        assert_pass(s.connect(GOOD_IP))
        assert_pass(s.helo("mx.good.test"))
        assert_pass(s.mail(f"<someone@{GOOD_DOMAIN}>"))
        assert_pass(s.rcpt("<postmaster@example.com>"))
        assert_pass(s.rcpt(other))
        final, _mods, _early = s.message(HEADERS, "buy now\r\n" + GTUBE)
        assert_reply(final, "antispam_reject")

    def summary() -> str | None:
        lines = [line for line in exempting.log().splitlines() if " summary " in line]
        return next((line for line in reversed(lines) if "reply=antispam_reject" in line), None)

    wait_until(lambda: summary() is not None)
    assert " nrcpt=2 " in (summary() or ""), summary()


def complaint(service: Running, *rcpts: str) -> Answer:
    """A spam complaint (GTUBE quoted) from a good client to ``rcpts``: the answer."""
    with service.session() as s:
        for answer in (s.connect(GOOD_IP), s.helo("mx.good.test")):
            assert_pass(answer)
        assert_pass(s.mail(f"<reporter@{GOOD_DOMAIN}>"))
        for rcpt in rcpts:
            assert_pass(s.rcpt(f"<{rcpt}>"))
        return s.message(HEADERS, "this spam reached me:\r\n" + GTUBE)[0]


def test_a_complaint_to_postmaster_and_abuse_is_exempt_by_both_exemptions(
    exempting: Running,
) -> None:
    """Review rev216 M1: each recipient exempt from the anti-spam check by an exemption
    of its own, the message to both was refused (552) for both."""
    assert_pass(complaint(exempting, "postmaster@example.com", "abuse@example.com"))

    def summary() -> str | None:
        lines = [line for line in exempting.log().splitlines() if " summary " in line]
        return next((line for line in reversed(lines) if "<reporter@" in line), None)

    wait_until(lambda: summary() is not None)
    assert "antispam:abuse-desk+postmaster" in (summary() or ""), summary()
    # With a third recipient, nobody's exemption covers the message.
    third = complaint(exempting, "postmaster@example.com", "abuse@example.com", "alice@example.com")
    assert_reply(third, "antispam_reject")


# --- local IP lists -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "reply_id"),
    [
        ("203.0.113.9", "rbl_deny"),
        ("2001:db8:bad::25", "rbl_deny"),
        ("192.0.2.200", "openrelay_check"),
    ],
)
def test_cidr_listed_client_gets_the_zone_reply(exempting: Running, ip: str, reply_id: str) -> None:
    with exempting.session() as s:
        assert_pass(s.connect(ip))
        assert_pass(s.helo("mx.somewhere.test"))
        # Held for the recipients here: this site exempts postmaster@ from DNSBLs.
        assert_pass(s.mail("<someone@somewhere.test>"))
        assert_reply(s.rcpt("<alice@example.com>"), reply_id)
    assert f"{ip} listed in" in exempting.log()


def test_local_block_list_works_without_dns(tmp_path: Path) -> None:
    (tmp_path / "blocked.txt").write_text("203.0.113.0/24\n")
    extra = {"dnsbl": {"local": [{"file": str(tmp_path / "blocked.txt"), "kind": "rbl"}]}}
    with running(make_site(tmp_path, extra)) as svc, svc.session() as s:
        assert_pass(s.connect("203.0.113.9"))
        assert_pass(s.helo("mx.somewhere.test"))
        assert_reply(s.mail("<someone@somewhere.test>"), "rbl_deny")


def test_local_lists_are_read_again_on_sighup(tmp_path: Path) -> None:
    listed = tmp_path / "blocked.txt"
    listed.write_text("203.0.113.0/24\n")
    extra = {"dnsbl": {"local": [{"file": str(listed), "kind": "rbl"}]}}

    def mail(svc: Running, ip: str) -> Answer:
        with svc.session() as s:
            assert_pass(s.connect(ip))
            assert_pass(s.helo("mx.somewhere.test"))
            return s.mail("<someone@somewhere.test>")

    with running(make_site(tmp_path, extra)) as svc:
        assert_pass(mail(svc, "2001:db8:bad::1"))
        listed.write_text("203.0.113.0/24\n2001:db8:bad::/48  # added\n")
        svc.process.send_signal(signal.SIGHUP)
        wait_until(lambda: svc.log().count("reloaded configuration") == 1)
        assert_reply(mail(svc, "2001:db8:bad::1"), "rbl_deny")
        # A broken list is refused at reload; the lists already loaded stay.
        listed.write_text("2001:db8:bad::1/48\n")
        svc.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in svc.log())
        assert f"{listed}:1: host bits set" in svc.log()
        assert_reply(mail(svc, "2001:db8:bad::1"), "rbl_deny")


# --- smtpport: one mode per reason --------------------------------------------------------


@pytest.fixture(scope="module")
def ptr_rollout(tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer) -> Iterator[Running]:
    """A site rolling the PTR checks out: no PTR only reported, generic names off,
    FCrDNS enforced."""
    extra = {"smtpport": {"no_ptr": "report", "generic": "off", "fcrdns": "enforce"}}
    yield from dns_site(tmp_path_factory.mktemp("ptr"), unbound.port, extra)


@pytest.mark.parametrize(
    ("ip", "reply_id"),
    [
        (NO_PTR_IP, None),
        (GENERIC_IP, None),
        (GENERIC_DSL_IP, None),
        (UNCONFIRMED_IP, "smtpport_check"),
    ],
)
def test_smtpport_reasons_roll_out_one_at_a_time(
    ptr_rollout: Running, ip: str, reply_id: str | None
) -> None:
    with ptr_rollout.session() as s:
        assert_pass(s.connect(ip))
        assert_pass(s.helo("mx.somewhere.test"))
        answer = s.mail(f"<someone@{GOOD_DOMAIN}>")
    if reply_id is None:
        assert_pass(answer)
    else:
        assert_reply(answer, reply_id)
    if ip == NO_PTR_IP:
        assert f"reason=no_ptr mode=report: no PTR for {ip}" in ptr_rollout.log()


# --- per-domain policy ----------------------------------------------------------------------

DOMAINS = {
    "domain": {
        # Small mailboxes, spam checks only reported.
        "example.com": {"max_message_size": 3000, "checks": {"antispam": {"mode": "report"}}},
        # A customer domain with larger mail and Chinese first.
        "relay.example": {"max_message_size": 50_000, "languages": ["zh", "en"]},
    }
}


@pytest.fixture(scope="module")
def per_domain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running(make_site(tmp_path_factory.mktemp("domains"), DOMAINS)) as svc:
        yield svc


def zh_first(answer: Answer, reply_id: str) -> None:
    code, xcode, en, zh = SPEC[reply_id]
    assert (answer.kind, answer.code, answer.xcode, answer.lines) == (
        "reply",
        code,
        xcode,
        (f"{zh} ({en})",),
    ), f"{reply_id}: got {answer}"


def send(
    service: Running, rcpts: Sequence[str], body: str, *esmtp: str
) -> tuple[Answer, list[Answer]]:
    """MAIL, the RCPTs (each must pass), the message: the final answer."""
    with service.session() as s:
        assert_pass(s.connect("198.51.100.7"))
        assert_pass(s.helo("mail.sender.example"))
        assert_pass(s.mail("<friend@sender.example>", *esmtp))
        for rcpt in rcpts:
            assert_pass(s.rcpt(f"<{rcpt}>"))
        final, _mods, early = s.message(HEADERS, body)
        return final, early


def test_two_domains_with_different_size_limits_each_get_their_own(per_domain: Running) -> None:
    ten_kb = "x" * 78 + "\r\n"
    assert_reply(send(per_domain, ["alice@example.com"], ten_kb * 128)[0], "message_too_long")
    assert_pass(send(per_domain, ["someone@relay.example"], ten_kb * 128)[0])
    summaries = [line for line in per_domain.log().splitlines() if " summary " in line]
    assert "outcome=accept" in summaries[-1]
    assert "policy=relay.example" in summaries[-1]
    # Over relay.example's own limit: refused, in its language order.
    zh_first(send(per_domain, ["someone@relay.example"], ten_kb * 700)[0], "message_too_long")
    # So is mail to an address there that does not parse (Postfix delivers it).
    zh_first(send(per_domain, ["taro.@relay.example"], ten_kb * 700)[0], "message_too_long")


def test_declared_size_is_held_against_each_recipients_domain(per_domain: Running) -> None:
    with per_domain.session() as s:
        assert_pass(s.connect("198.51.100.7"))
        assert_pass(s.helo("mail.sender.example"))
        # Under the largest limit: MAIL FROM cannot know the recipients yet.
        assert_pass(s.mail("<friend@sender.example>", "SIZE=10000"))
        assert_reply(s.rcpt("<alice@example.com>"), "message_too_long")
        assert_pass(s.rcpt("<someone@relay.example>"))


@pytest.mark.parametrize(
    "rcpts",
    [
        ("alice@example.com", "someone@relay.example"),
        ("someone@relay.example", "alice@example.com"),
        # Accepted though it does not parse (Postfix delivers it): it sets the
        # transaction's policy all the same, or a sender could pick the laxer one.
        ("taro.@relay.example", "alice@example.com"),
    ],
)
def test_a_recipient_under_another_policy_waits_for_its_own_transaction(
    per_domain: Running, rcpts: tuple[str, str]
) -> None:
    first, second = rcpts
    with per_domain.session() as s:
        assert_pass(s.connect("198.51.100.7"))
        assert_pass(s.helo("mail.sender.example"))
        assert_pass(s.mail("<friend@sender.example>"))
        assert_pass(s.rcpt(f"<{first}>"))
        answer = s.rcpt(f"<{second}>")
        # A reply at RCPT is in the language order of that recipient's domain.
        if second.endswith("relay.example"):
            zh_first(answer, "rcpt_limit")
        else:
            assert_reply(answer, "rcpt_limit")
        assert "send it in another transaction" in per_domain.log()
        # The next transaction takes it.
        final, _mods, _early = s.message(HEADERS, "hello\r\n")
        assert_pass(final)
        assert_pass(s.mail("<friend@sender.example>"))
        assert_pass(s.rcpt(f"<{second}>"))


def test_per_domain_check_mode(per_domain: Running) -> None:
    spam = "buy now\r\n" + GTUBE
    # example.com only reports spam; relay.example refuses it.
    assert_pass(send(per_domain, ["alice@example.com"], spam)[0])
    zh_first(send(per_domain, ["someone@relay.example"], spam)[0], "antispam_reject")
    assert "check=antispam reply=antispam_reject mode=report" in per_domain.log()


@pytest.mark.parametrize("lax_first", [True, False], ids=["lax-first", "strict-first"])
def test_the_sites_own_mail_to_two_domains_is_judged_at_their_strictest(
    per_domain: Running, lax_first: bool
) -> None:
    """Review rev153 F5, rev154 F1: a host of ours (trusted_networks) writing to
    example.com (antispam only reported, 3000-octet limit) and relay.example (Chinese
    first, 50,000) is not split by a 451, and whichever domain comes first, neither
    copy is judged more laxly than its own table says."""
    rcpts = ["alice@example.com", "someone@relay.example"]
    if not lax_first:
        rcpts.reverse()

    def submit(body: str) -> Answer:
        with per_domain.session() as s:
            assert_pass(s.connect("192.0.2.10"))
            assert_pass(s.helo("host.example.com"))
            assert_pass(s.mail("<bob@example.com>"))
            for rcpt in rcpts:
                assert_pass(s.rcpt(f"<{rcpt}>"))
            return s.message(HEADERS, body)[0]

    # Replies after RCPT come in the first recipient's languages.
    check = assert_reply if lax_first else zh_first
    # relay.example refuses spam, which example.com's table only reports.
    check(submit("buy now\r\n" + GTUBE), "antispam_reject")
    # example.com's 3000 octets hold for relay.example's copy too.
    check(submit(("x" * 78 + "\r\n") * 50), "message_too_long")
    assert_pass(submit("hello\r\n"))
    summary = [line for line in per_domain.log().splitlines() if " summary " in line][-1]
    assert "outcome=accept" in summary
    tables = "example.com+relay.example" if lax_first else "relay.example+example.com"
    assert f"policy={tables}" in summary


def test_a_dry_run_reports_what_any_recipients_table_would_refuse(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A dry run does not split a stranger's transaction by tables: judged under the
    first recipient's table alone, example.com (antispam off) named first hid spam
    that relay.example refuses; combined, the summary says what enforcing would do."""
    lax = merge(DOMAINS, {"domain": {"example.com": {"checks": {"antispam": {"mode": "off"}}}}})
    extra = merge(lax, {"milter": {"dry_run": True}})
    with running(make_site(tmp_path_factory.mktemp("dry-domains"), extra)) as svc:
        final, _early = send(
            svc, ["alice@example.com", "someone@relay.example"], "buy now\r\n" + GTUBE
        )
        assert_pass(final)
        summary = [line for line in svc.log().splitlines() if " summary " in line][-1]
    assert "policy=example.com+relay.example" in summary
    assert "would=" in summary
    assert "antispam_reject" in summary.partition("would=")[2]


def test_simulate_shows_the_domain_policy(per_domain: Running) -> None:
    result = smtpguard(
        per_domain.site,
        "simulate",
        "--client",
        "198.51.100.7",
        "--helo",
        "mail.sender.example",
        "--from",
        "friend@sender.example",
        "--to",
        "someone@relay.example",
        "--to",
        "alice@example.com",
    )
    out = result.stdout
    assert '[domain."relay.example"]: max_message_size=50000' in out
    assert "languages=zh,en" in out
    assert "rcpt_limit" in out
    assert "451" in out
    # A host of ours is not split: the two tables, combined.
    result = smtpguard(
        per_domain.site,
        "simulate",
        *("--client", "192.0.2.10", "--helo", "host.example.com"),
        *("--from", "bob@example.com", "--to", "someone@relay.example"),
        *("--to", "alice@example.com"),
    )
    assert (
        '[domain."relay.example"] + [domain."example.com"] at their strictest:'
        " max_message_size=3000"
    ) in result.stdout
    assert "languages=zh,en" in result.stdout
    assert "rcpt rcpt_limit: pass" in result.stdout
    assert "451" not in result.stdout


# --- an exemption whose lookup fails -----------------------------------------------------


def undecided_site(
    factory: pytest.TempPathFactory,
    unbound: DnsServer,
    *exemptions: Mapping[str, Any],
    rbl_mode: str = "enforce",
) -> Iterator[Running]:
    """PTR_SERVFAIL_IP is on a local block list, and its reverse zone answers SERVFAIL:
    whether a host-name exemption applies to it cannot be known."""
    tmp = factory.mktemp("undecided")
    (tmp / "blocked.txt").write_text(f"{PTR_SERVFAIL_IP}\n")
    extra = {
        "policy": {"exempt": list(exemptions), "postmaster_skip": []},
        # rbl's default on_temp_error is "pass": it must not pass this.
        "dnsbl": {"local": [{"file": str(tmp / "blocked.txt"), "kind": "rbl"}]},
        "checks": {"rbl": {"mode": rbl_mode}},
    }
    yield from dns_site(tmp, unbound.port, extra)


@pytest.fixture(scope="module")
def undecided(tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer) -> Iterator[Running]:
    exemption = {"host_suffixes": ["good.test"], "senders": ["@partner.test"], "skip": ["rbl"]}
    yield from undecided_site(tmp_path_factory, unbound, exemption)


def test_an_exemption_undecided_by_a_failed_lookup_tempfails_never_passes(
    undecided: Running,
) -> None:
    """A client controls its own reverse zone: making the lookup fail must not turn
    the DNSBL's refusal into an accept (it was one while rbl's on_temp_error = pass
    applied to the undecided verdict)."""
    with undecided.session() as s:
        assert_pass(s.connect(PTR_SERVFAIL_IP))
        assert_pass(s.helo("mx.good.test"))
        assert_reply(s.mail("<someone@partner.test>"), "database_temp_error")
    assert "rbl_deny not answered: an exemption's lookup failed temporarily" in undecided.log()


def test_an_exemption_for_other_senders_leaves_the_refusal_permanent(undecided: Running) -> None:
    """The sender is compared before the client's name is looked up: an exemption
    that cannot apply to this sender leaves nothing undecided."""
    with undecided.session() as s:
        assert_pass(s.connect(PTR_SERVFAIL_IP))
        assert_pass(s.helo("mx.good.test"))
        assert_reply(s.mail(f"<someone@{A_ONLY_DOMAIN}>"), "rbl_deny")


def test_a_lookup_failed_for_one_sender_leaves_the_next_ones_refusal_permanent(
    undecided: Running,
) -> None:
    """The failed lookup is the connection's, but the next transaction's sender is one
    the exemption cannot match: its refusal stays permanent (it was a 4xx for the
    rest of the connection)."""
    with undecided.session() as s:
        assert_pass(s.connect(PTR_SERVFAIL_IP))
        assert_pass(s.helo("mx.good.test"))
        assert_reply(s.mail("<someone@partner.test>"), "database_temp_error")
        assert_reply(s.mail(f"<someone@{A_ONLY_DOMAIN}>"), "rbl_deny")
        assert_reply(s.mail("<again@partner.test>"), "database_temp_error")


@pytest.fixture(scope="module")
def undecided_recipient(
    tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer
) -> Iterator[Running]:
    """An exemption for one recipient: a MAIL FROM verdict is held for the recipients
    only if the client's name can be known."""
    exemption = {
        "host_suffixes": ["good.test"],
        "recipients": ["abuse@example.com"],
        "skip": ["rbl"],
    }
    yield from undecided_site(tmp_path_factory, unbound, exemption)


@pytest.fixture(scope="module")
def undecided_scores(
    tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer
) -> Iterator[Running]:
    extra = {
        "antispam": {"add_header_score": 6.0, "reject_score": 15.0},
        "policy": {"exempt": [{"host_suffixes": ["good.test"], "skip": ["rbl"]}]},
    }
    yield from dns_site(tmp_path_factory.mktemp("unsure"), unbound.port, extra, SCORE_ZONES)


def test_scores_an_undecided_exemption_might_drop_refuse_only_for_now(
    undecided_scores: Running,
) -> None:
    """The client's reverse zone fails: whether it is exempt from rbl (and from its
    score zones) is unknown, so the spam refusal those scores reach is a 4xx."""
    final, _mods = deliver(undecided_scores, PTR_SERVFAIL_IP)
    assert_reply(final, "database_temp_error")
    assert "reject_score reached or not depending on DNSBL weights" in undecided_scores.log()
    # Spam without those weights is refused for good (found by review).
    with undecided_scores.session() as s:
        assert_pass(s.connect(PTR_SERVFAIL_IP))
        assert_pass(s.helo("mx.good.test"))
        assert_pass(s.mail(f"<someone@{GOOD_DOMAIN}>"))
        assert_pass(s.rcpt("<alice@example.com>"))
        final, _mods, _early = s.message(HEADERS, GTUBE)
        assert_reply(final, "antispam_reject")


def test_a_hold_undecided_by_a_failed_lookup_tempfails_for_its_recipients_alone(
    undecided_recipient: Running,
) -> None:
    """Review rev201 F1: MAIL FROM got the 4xx, so no recipient ever got the refusal
    the exemption could not spare it. The verdict is held: each RCPT answers."""
    with undecided_recipient.session() as s:
        assert_pass(s.connect(PTR_SERVFAIL_IP))
        assert_pass(s.helo("mx.good.test"))
        assert_pass(s.mail(f"<someone@{A_ONLY_DOMAIN}>"))
        assert_reply(s.rcpt("<abuse@example.com>"), "database_temp_error")
        assert_reply(s.rcpt("<alice@example.com>"), "rbl_deny")


def test_a_later_transaction_holds_the_verdict_for_its_recipients_too(
    undecided_recipient: Running,
) -> None:
    """Review rev208 M1: once a lookup had failed in the session, the next MAIL FROM's
    verdict was made a 4xx before it was held, and every recipient got it."""
    with undecided_recipient.session() as s:
        assert_pass(s.connect(PTR_SERVFAIL_IP))
        assert_pass(s.helo("mx.good.test"))
        assert_pass(s.mail(f"<someone@{A_ONLY_DOMAIN}>"))
        assert_reply(s.rcpt("<abuse@example.com>"), "database_temp_error")
        s.abort()
        assert_pass(s.mail(f"<again@{A_ONLY_DOMAIN}>"))
        assert_reply(s.rcpt("<alice@example.com>"), "rbl_deny")
        assert_reply(s.rcpt("<abuse@example.com>"), "database_temp_error")


@pytest.fixture(scope="module")
def undecided_recipient_reported(
    tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer
) -> Iterator[Running]:
    exemption = {
        "host_suffixes": ["good.test"],
        "recipients": ["dave@example.com"],
        "skip": ["rbl"],
    }
    yield from undecided_site(tmp_path_factory, unbound, exemption, rbl_mode="report")


def test_report_mode_reports_what_enforcing_would_answer_each_recipient(
    undecided_recipient_reported: Running,
) -> None:
    """Review rev210 L4: a report-only verdict held for the recipients was reported as
    the 554 for the exemption's recipient, where enforcing answers 450."""
    service = undecided_recipient_reported
    with service.session() as s:
        assert_pass(s.connect(PTR_SERVFAIL_IP))
        assert_pass(s.helo("mx.good.test"))
        assert_pass(s.mail(f"<someone@{A_ONLY_DOMAIN}>"))
        assert_pass(s.rcpt("<dave@example.com>"))
        assert_pass(s.rcpt("<alice@example.com>"))

    def reported() -> dict[str, str]:
        found = {}
        for line in service.log().splitlines():
            code = re.search(r"would='([0-9]{3})", line)
            rcpt = re.search(r"rcpt=<([^>]+)>", line)
            if " decision " in line and "check=rbl" in line and code and rcpt:
                found[rcpt.group(1)] = code.group(1)
        return found

    wait_until(lambda: len(reported()) == 2)
    assert reported() == {"dave@example.com": "450", "alice@example.com": "554"}


@pytest.fixture(scope="module")
def recipient_reported(
    tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer
) -> Iterator[Running]:
    # ghost@ has no mailbox: the mailbox check refuses it after the exemption.
    exemption = {
        "name": "dave",
        "recipients": ["dave@example.com", "ghost@example.com"],
        "skip": ["rbl"],
    }
    yield from undecided_site(tmp_path_factory, unbound, exemption, rbl_mode="report")


def test_a_skip_for_some_recipients_says_how_many_in_the_summary(
    recipient_reported: Running,
) -> None:
    """Review rev216 L3: in report mode every recipient is accepted, and the summary
    said skipped=rbl:NAME for a message whose other recipients were not exempt."""
    service = recipient_reported
    with service.session() as s:
        for answer in (s.connect(PTR_SERVFAIL_IP), s.helo("mx.good.test")):
            assert_pass(answer)
        # Dave of two, then dave alone (the skip was for the whole message), then
        # (review rev220 L4) ghost, exempt and then refused: it spared nobody accepted.
        for sender, rcpts in (
            ("first", ["dave", "alice"]),
            ("second", ["dave"]),
            ("third", ["ghost", "alice"]),
        ):
            assert_pass(s.mail(f"<{sender}@{A_ONLY_DOMAIN}>"))
            for rcpt in rcpts:
                answer = s.rcpt(f"<{rcpt}@example.com>")
                if rcpt == "ghost":
                    assert_reply(answer, "mailbox_unavailable")
                else:
                    assert_pass(answer)
            assert_pass(s.message(HEADERS, "hello\r\n")[0])

    def summary(sender: str) -> str | None:
        lines = [line for line in service.log().splitlines() if " summary " in line]
        return next((line for line in reversed(lines) if f"<{sender}@" in line), None)

    wait_until(lambda: summary("third") is not None)
    assert " skipped=rbl:dave(1/2) " in (summary("first") or ""), summary("first")
    assert " would=rbl_deny " in (summary("first") or ""), summary("first")
    assert " skipped=rbl:dave " in (summary("second") or ""), summary("second")
    assert " skipped=" not in (summary("third") or ""), summary("third")
    assert " would=rbl_deny " in (summary("third") or ""), summary("third")


@pytest.fixture(scope="module")
def undecided_content(
    tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer
) -> Iterator[Running]:
    """A content check skipped for one recipient of a partner whose name may fail; the
    partner's other exemption has the name looked up at MAIL FROM (and fail)."""
    partner = {"host_suffixes": ["good.test"], "skip": ["spf"]}
    partner_sales = {
        "host_suffixes": ["good.test"],
        "recipients": ["sales@example.com"],
        "skip": ["antispam"],
    }
    extra = {"policy": {"exempt": [partner, partner_sales], "postmaster_skip": []}}
    yield from dns_site(tmp_path_factory.mktemp("undecided_content"), unbound.port, extra)


@pytest.mark.parametrize(
    ("recipients", "reply"),
    [
        # The exemption names no recipient of this message: the refusal stays (review
        # rev201 F1: a 4xx, and spam deferred for days).
        pytest.param(["<alice@example.com>"], "antispam_reject", id="other"),
        pytest.param(["<alice@example.com>", "<sales@example.com>"], "antispam_reject", id="both"),
        # Every recipient its own: had the lookup worked it might have been skipped.
        pytest.param(["<sales@example.com>"], "database_temp_error", id="its own"),
    ],
)
def test_a_content_refusal_is_for_now_only_where_the_undecided_exemption_covers_the_message(
    undecided_content: Running, recipients: list[str], reply: str
) -> None:
    with undecided_content.session() as s:
        assert_pass(s.connect(PTR_SERVFAIL_IP))
        assert_pass(s.helo("mx.good.test"))
        assert_pass(s.mail(f"<someone@{A_ONLY_DOMAIN}>"))
        for rcpt in recipients:
            assert_pass(s.rcpt(rcpt))
        final, _mods, _early = s.message(HEADERS, GTUBE)
        assert_reply(final, reply)


@pytest.fixture(scope="module")
def undecided_beside_a_hold(
    tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer
) -> Iterator[Running]:
    """A recipient exemption for every client (as postmaster_skip's is) holds
    the MAIL FROM verdict; another recipient's exemption needs the client's name."""
    everyone = {"recipients": ["news@example.com"], "skip": ["rbl"]}
    partner = {"host_suffixes": ["good.test"], "recipients": ["sales@example.com"], "skip": ["rbl"]}
    yield from undecided_site(tmp_path_factory, unbound, everyone, partner)


def test_a_held_verdict_undecided_for_its_recipient_tempfails(
    undecided_beside_a_hold: Running,
) -> None:
    """Review rev110 F1: the held verdict was answered at RCPT as it was, so the
    partner's recipient got 554 for a lookup that failed (450 without the other
    exemption). A recipient no exemption names still gets the permanent refusal."""
    with undecided_beside_a_hold.session() as s:
        assert_pass(s.connect(PTR_SERVFAIL_IP))
        assert_pass(s.helo("mx.good.test"))
        assert_pass(s.mail(f"<someone@{A_ONLY_DOMAIN}>"))
        assert_reply(s.rcpt("<sales@example.com>"), "database_temp_error")
        assert_reply(s.rcpt("<alice@example.com>"), "rbl_deny")
        assert_pass(s.rcpt("<news@example.com>"))


@pytest.fixture(scope="module")
def undecided_second_name(
    tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer
) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("second_name")
    (tmp / "blocked.txt").write_text(f"{TWO_PTR_IP}\n")
    extra = {
        "policy": {"exempt": [{"host_suffixes": ["broken.test"], "skip": ["rbl"]}]},
        "dnsbl": {"local": [{"file": str(tmp / "blocked.txt"), "kind": "rbl"}]},
    }
    yield from dns_site(tmp, unbound.port, extra)


def test_a_client_name_of_the_exemption_that_did_not_resolve_leaves_it_undecided(
    undecided_second_name: Running,
) -> None:
    """Review rev110 F2: the client's other PTR name resolved, the one under the
    exemption's suffix did not (SERVFAIL): 554 for a temporary fault."""
    with undecided_second_name.session() as s:
        assert_pass(s.connect(TWO_PTR_IP))
        assert_pass(s.helo("mx.good.test"))
        assert_reply(s.mail(f"<someone@{GOOD_DOMAIN}>"), "database_temp_error")
