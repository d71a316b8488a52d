"""postfix-config: merging with an admin's settings, relay safety, --check conflicts.

The instance's values are given as :class:`Settings` (what ``postconf`` would print),
so these tests need no Postfix; tests/e2e/test_postfix_deploy.py applies the output to
real instances.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from smtpguard.app import load
from smtpguard.config import Config
from smtpguard.directory import read_contents
from smtpguard.postfix import (
    MILTER_RELAY_PASS,
    POSTFIX_EXAMPLES,
    POSTFIX_FOOTERS,
    UNLISTED_WHILE_MILTERS,
    Plan,
    Settings,
    chroot_path,
    footer_text,
    main_cf_fragment,
    plan,
    postfix_footer_regexp,
    postfix_milter_address,
    postfix_network,
    postfix_says,
    read_postconf,
    relay_reply,
    shell_script,
    split_list,
    stale_footers,
)
from smtpguard.replies import load_replies
from support.contrib import outputs
from support.postfix import write_settled
from support.service import make_site, merge

#: What ``postconf -x`` prints for a stock Debian 12 "Internet Site" instance.
STOCK = {
    "config_directory": "/etc/postfix",
    "queue_directory": "/var/spool/postfix",
    "myhostname": "mx.example.com",
    "smtpd_milters": "",
    "non_smtpd_milters": "",
    "milter_default_action": "tempfail",
    "milter_macro_v": "Postfix 3.7.11",
    "compatibility_level": "3.6",
    "inet_protocols": "all",
    "milter_connect_macros": "j {daemon_name} {daemon_addr} v _",
    "milter_helo_macros": "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host}"
    " {mail_mailer}",
    "milter_rcpt_macros": "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
    "milter_end_of_data_macros": "i",
    # The test site's trusted_networks (Debian writes 127.0.0.0/8 [::ffff:127.0.0.0]/104
    # [::1]/128, a conflict with it: test_clients_postfix_trusts_...).
    "mynetworks": "192.0.2.0/24",
    "smtpd_relay_restrictions": "permit_mynetworks permit_sasl_authenticated"
    " defer_unauth_destination",
    "smtpd_recipient_restrictions": "",
    "smtpd_reject_unlisted_recipient": "yes",
    "relay_recipient_maps": "",
    "virtual_alias_maps": "",
    "virtual_mailbox_maps": "",
    # The test site's local domain; $myhostname has a test of its own.
    "mydestination": "example.com, localhost.example.com, localhost",
    "virtual_alias_domains": "",
    "virtual_mailbox_domains": "",
    "relay_domains": "",
    "parent_domain_matches_subdomains": "debug_peer_list,fast_flush_domains,mynetworks,"
    "permit_mx_backup_networks,qmqpd_authorized_clients,relay_domains,smtpd_access_maps",
    "message_size_limit": "10240000",
    "hopcount_limit": "50",
    "mailbox_size_limit": "0",
    "virtual_mailbox_limit": "51200000",
    # What Debian's postfix package writes into main.cf.
    "recipient_delimiter": "+",
    "smtputf8_enable": "yes",
    "smtpd_reject_footer_maps": "",
    "smtpd_reject_footer": "",
    "alias_maps": "",
    # Postfix's own default is proxy:unix:passwd.byname $alias_maps (the tests with a
    # directory give theirs).
    "local_recipient_maps": "",
    "smtpd_forbid_bare_newline": "no",
    "receive_override_options": "",
    "content_filter": "",
    "smtpd_upstream_proxy_protocol": "",
    "smtpd_authorized_xclient_hosts": "",
    "smtpd_milter_maps": "",
    "smtpd_client_restrictions": "",
    "smtpd_helo_restrictions": "",
    "smtpd_helo_required": "no",
    "smtpd_sender_restrictions": "",
    "smtpd_service_name": "smtpd",
    "smtpd_delay_reject": "yes",
    "smtpd_sasl_auth_enable": "no",
    "smtpd_tls_auth_only": "no",
    "smtpd_tls_security_level": "may",
    "smtpd_tls_wrappermode": "no",
    "smtpd_enforce_tls": "no",
}


def settings(**changed: str) -> Settings:
    values = {**STOCK, **changed}
    return Settings(raw=values, expanded=values)


def config(tmp_path: Path, extra: dict[str, Any] | None = None) -> Config:
    site = make_site(tmp_path, extra, directory=False)
    return load(site.config)


def make_plan(cfg: Config, **changed: str) -> Plan:
    return plan(cfg, load_replies(cfg.replies, cfg.file), settings(**changed))


def accepted_conflicts(result: Plan) -> list[str]:
    """The plan's "Postfix accepts mail for ..., which smtpguard refuses" problems."""
    return [p for p in result.unresolved if p.startswith("Postfix accepts mail for")]


def changes(result: Plan) -> dict[str, str]:
    return {c.name: c.value for c in result.changes}


@pytest.mark.parametrize(
    ("value", "mta", "problem"),
    [
        ("Postfix 3.7.11", "auto", False),
        ("MailGate 3.7.11", "auto", False),  # answered as Postfix, guard and all
        ("3.7.11", "auto", False),
        ("", "auto", True),  # no v: most likely a Sendmail
        ("8.17.1.9", "auto", True),
        ("", "postfix", False),
        ("8.17.1.9", "postfix", True),  # Sendmail's version wins over the setting
    ],
)
def test_a_macro_v_that_reads_as_sendmail_is_a_problem(
    tmp_path: Path, value: str, mta: str, problem: bool
) -> None:
    """Review rev151 F1: what milter_macro_v sends decides whether smtpguard takes the
    Postfix for Sendmail, whose relay rules are its own (no relay guard)."""
    result = make_plan(config(tmp_path, {"milter": {"mta": mta}}), milter_macro_v=value)
    found = [p for p in result.problems if p.startswith("milter_macro_v = ")]
    assert bool(found) is problem
    if problem:
        assert f"milter_macro_v = {value!r} (main.cf): with [milter] mta = {mta!r}" in found[0]
        assert '[milter] mta = "postfix"' in found[0]


@pytest.mark.parametrize(
    ("socket", "expected"),
    [
        ("unix:/var/spool/postfix/smtpguard/s.sock", "unix:smtpguard/s.sock"),
        ("unix:/run/smtpguard/s.sock", "unix:/run/smtpguard/s.sock"),
        ("local:/run/s.sock", "unix:/run/s.sock"),
        ("inet:8899@127.0.0.1", "inet:127.0.0.1:8899"),
        ("inet:8899", "inet:127.0.0.1:8899"),
        ("inet6:8899@::1", "inet:[::1]:8899"),
        ("inet6:8899@[::1]", "inet:[::1]:8899"),
        ("inet6:8899", "inet:[::1]:8899"),
    ],
)
def test_postfix_milter_address(socket: str, expected: str) -> None:
    assert postfix_milter_address(socket) == expected


def test_split_list_keeps_braced_groups() -> None:
    value = "inet:a:1, { inet:b:2, default_action=accept },unix:c  check_x static:{OK}"
    assert split_list(value) == [
        "inet:a:1",
        "{ inet:b:2, default_action=accept }",
        "unix:c",
        "check_x",
        "static:{OK}",
    ]


def test_ipv6_networks_are_written_in_brackets(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"site": {"trusted_networks": ["::1/128", "[2001:db8::]/32"]}})
    assert [postfix_network(n) for n in cfg.site.trusted_networks] == [
        "[::1]/128",
        "[2001:db8::]/32",
    ]


def test_other_milters_and_lists_are_kept(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    theirs = "inet:127.0.0.1:8891, { inet:127.0.0.1:8893, default_action=accept }"
    result = make_plan(cfg, smtpd_milters=theirs, non_smtpd_milters="inet:127.0.0.1:8891")
    new = changes(result)
    # First: it must see the header fields as the client sent them, not those the
    # other milters add (it removes result fields that claim its verdict).
    assert new["smtpd_milters"].startswith("{ unix:")
    assert new["smtpd_milters"].endswith("content_timeout=300s }, " + theirs)
    assert "default_action=tempfail" in new["smtpd_milters"]
    assert "non_smtpd_milters" not in new
    assert "mynetworks" not in new
    assert "milter_default_action" not in new  # the other milters keep theirs
    assert new["milter_connect_macros"] == (
        "j {daemon_name} {daemon_addr} v _ {client_addr} {client_name} {client_resolve}"
    )


def test_already_attached_changes_nothing_twice(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    first = make_plan(cfg)
    again = make_plan(cfg, **changes(first))
    assert again.changes == ()
    assert again.problems == ()


def test_mynetworks_differences_are_a_note_not_a_change(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"site": {"trusted_networks": ["192.0.2.0/24", "::1/128"]}})
    result = make_plan(cfg, mynetworks="[::1]/128")
    assert "mynetworks" not in changes(result)
    (note,) = [n for n in result.notes if n.startswith("mynetworks")]
    assert "in site.trusted_networks only: 192.0.2.0/24 (smtpguard lets them relay" in note
    assert "to make them equal: mynetworks = 192.0.2.0/24 [::1]/128" in note


def test_clients_postfix_trusts_and_smtpguard_does_not_are_a_conflict(tmp_path: Path) -> None:
    """Review rev121 F1: a LAN in mynetworks only had its mail from local senders
    refused (553 relay check local fail) while --check said "no conflicts"."""
    cfg = config(tmp_path, {"site": {"trusted_networks": ["192.0.2.0/24", "::1/128"]}})
    debian = {"mynetworks": "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128"}
    (problem,) = [p for p in make_plan(cfg, **debian).problems if p.startswith("mynetworks")]
    assert problem.startswith(
        "mynetworks has 127.0.0.0/8 [::ffff:127.0.0.0]/104, outside site.trusted_networks:"
    )
    assert "add them to site.trusted_networks" in problem
    # Inside a wider trusted network, or IPv4-mapped (smtpguard reads those as IPv4):
    # no conflict (the wider one is a note).
    wide = config(
        tmp_path / "wide",
        {"site": {"trusted_networks": ["127.0.0.0/8", "::1/128", "10.20.0.0/16"]}},
    )
    lan = {"mynetworks": "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 10.20.30.0/24"}
    result = make_plan(wide, **lan)
    assert not [p for p in result.problems if p.startswith("mynetworks")]
    (note,) = [n for n in result.notes if n.startswith("mynetworks")]
    assert "in site.trusted_networks only: 10.20.0.0/16 (smtpguard lets them relay" in note
    lan = {"mynetworks": "127.0.0.0/8 [::1]/128 10.30.0.0/24 [fd00:10::]/64"}
    (problem,) = [p for p in make_plan(wide, **lan).problems if p.startswith("mynetworks")]
    assert problem.startswith("mynetworks has 10.30.0.0/24 [fd00:10::]/64, outside")


def test_mynetworks_files_and_cidr_tables_are_compared(tmp_path: Path) -> None:
    """Review rev166 F2: a LAN listed in a file (or a cidr: table) was "not compared",
    and its clients' mail from our senders got 553 relay_local_fail; the note's advice
    would have dropped the file from mynetworks."""
    (tmp_path / "lan").write_text("# the office\n10.1.0.0/16, [2001:db8:1::]/48\n")
    (tmp_path / "more.cidr").write_text("10.2.0.0/16 OK\nif 10.3.0.0/16\n10.3.1.0/24 OK\nendif\n")
    trusted = ["127.0.0.0/8", "10.2.0.0/16", "192.0.2.0/24"]
    cfg = config(tmp_path, {"site": {"trusted_networks": trusted}})
    value = f"127.0.0.0/8 {tmp_path}/lan cidr:{tmp_path}/more.cidr"
    result = make_plan(cfg, mynetworks=value)
    (problem,) = [p for p in result.problems if p.startswith("mynetworks")]
    assert problem.startswith(
        f"mynetworks has 10.1.0.0/16 (in {tmp_path}/lan) [2001:db8:1::]/48 (in {tmp_path}/lan)"
        f" 10.3.1.0/24 (in cidr:{tmp_path}/more.cidr),"
        " outside site.trusted_networks"
    )
    (note,) = [n for n in result.notes if n.startswith("mynetworks")]
    assert "in site.trusted_networks only: 192.0.2.0/24" in note
    assert "to make them equal: mynetworks =" not in note
    # A file that includes itself (review rev51 for the domain lists).
    (tmp_path / "loop").write_text(f"10.9.0.0/16 {tmp_path}/loop\n")
    looped = make_plan(cfg, mynetworks=f"127.0.0.0/8 {tmp_path}/loop").problems
    assert any(p.startswith(f"mynetworks: {tmp_path}/loop includes itself") for p in looped)
    covered = config(
        tmp_path / "covered",
        {"site": {"trusted_networks": ["127.0.0.0/8", "10.0.0.0/8", "2001:db8:1::/48"]}},
    )
    assert not [p for p in make_plan(covered, mynetworks=value).problems if "mynetworks " in p]


def test_an_ipv6_network_without_brackets_in_mynetworks_is_a_conflict(tmp_path: Path) -> None:
    """Review rev167 F2: Postfix reads it as type:table, the lookup fails and every
    recipient gets 451 4.3.0, while --check said "no conflicts"."""
    cfg = config(
        tmp_path, {"site": {"trusted_networks": ["127.0.0.0/8", "::1/128", "2001:db8::/32"]}}
    )
    bare = {"mynetworks": "127.0.0.0/8 [::1]/128 2001:db8:aaaa::/48"}
    (problem,) = [p for p in make_plan(cfg, **bare).problems if p.startswith("mynetworks")]
    assert problem.startswith(
        "mynetworks has 2001:db8:aaaa::/48: Postfix reads an IPv6 network without brackets"
    )
    assert problem.endswith("write it [2001:db8:aaaa::]/48")
    fine = {"mynetworks": "127.0.0.0/8 [::1]/128 [2001:db8:aaaa::]/48 cidr:/etc/postfix/lan"}
    assert not [p for p in make_plan(cfg, **fine).problems if p.startswith("mynetworks")]
    # In a /file Postfix reads it so too (review rev170 F1); a cidr: table takes it bare.
    (tmp_path / "nets").write_text("192.0.2.0/24\n2001:db8:aaaa::/48\n")
    (tmp_path / "nets.cidr").write_text("2001:db8:bbbb::/48 OK\n")
    in_file = {"mynetworks": f"127.0.0.0/8 {tmp_path}/nets cidr:{tmp_path}/nets.cidr"}
    found = make_plan(cfg, **in_file).problems
    (problem,) = [p for p in found if "Postfix reads an IPv6" in p]
    assert problem.startswith(
        f"mynetworks has 2001:db8:aaaa::/48 (in {tmp_path}/nets): Postfix reads an IPv6"
    )


def test_a_hopcount_limit_that_answers_before_smtpguard_is_a_note(tmp_path: Path) -> None:
    """Review rev125 F1: with limits.max_hops = 60 and Postfix's hopcount_limit of 50,
    49 Received: fields got Postfix's 554 5.4.0 "too many hops", not looping_message,
    and nothing said so."""
    assert not [n for n in make_plan(config(tmp_path)).notes if "hopcount_limit" in n]
    high = config(tmp_path / "high", {"limits": {"max_hops": 60}})
    (note,) = [n for n in make_plan(high).notes if "hopcount_limit" in n]
    assert note.startswith("hopcount_limit (50) is not above limits.max_hops + 2 (62):")
    assert "refuses mail with 49 or more such fields itself" in note
    assert not [n for n in make_plan(high, hopcount_limit="63").notes if "hopcount_limit" in n]


def test_relay_control_postfix_keeps_postfix_guard_last(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert cfg.site.relay_control == "postfix"
    value = changes(make_plan(cfg))["smtpd_relay_restrictions"]
    # The admin's list is kept as written (here without commas), ours before its guard.
    assert value == (
        "permit_mynetworks permit_sasl_authenticated permit_auth_destination"
        " check_recipient_access static:{553 5.7.1 host denies relay. (拒绝中继)}"
        " defer_unauth_destination"
    )
    assert "static:{OK}" not in value


def test_relay_control_milter_passes_recipients_only_while_milters_are_set(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, {"site": {"relay_control": "milter"}})
    value = changes(make_plan(cfg))["smtpd_relay_restrictions"]
    assert value == (
        "permit_mynetworks permit_sasl_authenticated permit_auth_destination"
        f" {MILTER_RELAY_PASS} {OURS_POSTFIX} defer_unauth_destination"
    )


def test_milter_mode_is_written_once(tmp_path: Path) -> None:
    """Run again over its own output, the plan changes nothing."""
    cfg = config(tmp_path, {"site": {"relay_control": "milter"}})
    first = changes(make_plan(cfg))["smtpd_relay_restrictions"]
    again = make_plan(cfg, smtpd_relay_restrictions=first)
    assert "smtpd_relay_restrictions" not in changes(again)
    assert not [p for p in again.problems if p.startswith("smtpd_relay_restrictions")]


def test_milter_mode_of_an_older_release_gets_the_static_reply_without_a_conflict(
    tmp_path: Path,
) -> None:
    """Review rev119 F3: the pass-through alone left a recipient with routing in its
    local part to Postfix's own guard (454 Relay access denied). An instance set up
    that way gets the table's reply after it, and --check calls that no conflict."""
    cfg = config(tmp_path, {"site": {"relay_control": "milter"}})
    old = f"permit_mynetworks permit_sasl_authenticated {MILTER_RELAY_PASS}"
    old += " defer_unauth_destination"
    result = make_plan(cfg, smtpd_relay_restrictions=old)
    assert changes(result)["smtpd_relay_restrictions"] == (
        "permit_mynetworks permit_sasl_authenticated permit_auth_destination"
        f" {MILTER_RELAY_PASS} {OURS_POSTFIX} defer_unauth_destination"
    )
    assert not [p for p in result.problems if p.startswith("smtpd_relay_restrictions")]


@pytest.mark.parametrize(
    ("restrictions", "rewritten", "said_in", "said"),
    [
        pytest.param(
            "permit_mynetworks, reject_unauth_destination,"
            " check_policy_service unix:private/policy",
            False,
            "notes",
            "entries follow reject_unauth_destination",
            id="guard-followed-by-other-restrictions",
        ),
        pytest.param(
            "permit_mynetworks, permit_auth_destination,"
            " check_recipient_access static:{OK}, reject_unauth_destination",
            True,  # the reply goes before the guard; the OK is the admin's call
            "unresolved",
            "open relay",
            id="unconditional-ok-before-the-guard",
        ),
        pytest.param(
            # smtpd compares restriction names with strcasecmp (review rev185).
            "Permit_Mynetworks, Permit, Reject_Unauth_Destination",
            True,
            "unresolved",
            "'permit' before the relay guard passes every recipient",
            id="permit-in-another-case",
        ),
    ],
)
def test_relay_restrictions_the_admin_is_told_about(
    tmp_path: Path, restrictions: str, rewritten: bool, said_in: str, said: str
) -> None:
    result = make_plan(config(tmp_path), smtpd_relay_restrictions=restrictions)
    assert ("smtpd_relay_restrictions" in changes(result)) is rewritten
    assert any(said in line for line in getattr(result, said_in))


@pytest.mark.parametrize(
    ("changed", "said"),
    [
        ({"smtpd_sasl_auth_enable": "yes"}, True),
        ({"smtpd_sasl_auth_enable": "yes", "smtpd_tls_auth_only": "yes"}, False),
        ({"smtpd_sasl_auth_enable": "yes", "smtpd_tls_security_level": "encrypt"}, False),
        ({}, False),
    ],
    ids=["auth-in-clear", "tls-auth-only", "encrypt", "no-auth"],
)
def test_auth_offered_before_starttls_is_noted(
    tmp_path: Path, changed: dict[str, str], said: bool
) -> None:
    """Review rev222 F2: through Postfix with Dovecot, AUTH PLAIN without STARTTLS
    answered 235 and MAIL FROM 451 auth_mode_unsupported: the password had crossed
    the network in clear, and crossed it again at each retry; --check said nothing."""
    result = make_plan(config(tmp_path), **changed)
    notes = [n for n in result.notes if "offers AUTH before STARTTLS" in n]
    assert bool(notes) is said, result.notes
    if said:
        assert notes[0].startswith("main.cf: ")
        assert "LOGIN and PLAIN send the password in clear" in notes[0]


def permits_before_the_guard(result: Plan) -> list[str]:
    return [p for p in result.unresolved if "'permit' before the relay guard" in p]


@pytest.mark.parametrize("relay_control", ["postfix", "milter"])
def test_a_final_permit_after_the_other_lists_guard_is_no_open_relay(
    tmp_path: Path, relay_control: str
) -> None:
    """Review rev205 F2: Postfix's own split (the guard in smtpd_relay_restrictions,
    smtpd_recipient_restrictions ending in permit) was reported as an open relay: smtpd
    applies both lists. In milter mode the relay list passes everything while milters
    are configured, so the permit there is one (a dry run relays)."""
    cfg = config(tmp_path, {"site": {"relay_control": relay_control}})
    result = make_plan(
        cfg,
        smtpd_relay_restrictions="permit_mynetworks, permit_sasl_authenticated,"
        " reject_unauth_destination",
        smtpd_recipient_restrictions="permit_mynetworks, reject_unknown_recipient_domain, permit",
    )
    assert bool(permits_before_the_guard(result)) is (relay_control == "milter"), result.unresolved


OURS_POSTFIX = "check_recipient_access static:{553 5.7.1 host denies relay. (拒绝中继)}"


def test_the_relay_list_postfix_config_wrote_closes_relaying(tmp_path: Path) -> None:
    """Review rev215 F1: once its own relay list was applied (the table's 553 as a
    static access table before the guard), postfix-config and --check took that list
    for one that closes nothing, and the admin's final permit in
    smtpd_recipient_restrictions for an open relay (exit 1): a static table that can
    only answer 4NN/5NN, REJECT or DEFER refuses whoever reaches it."""
    cfg = config(tmp_path)
    first = make_plan(
        cfg, smtpd_recipient_restrictions="permit_mynetworks, reject_non_fqdn_recipient, permit"
    )
    applied = changes(first)["smtpd_relay_restrictions"]
    assert OURS_POSTFIX in applied
    again = make_plan(
        cfg,
        smtpd_relay_restrictions=applied,
        smtpd_recipient_restrictions="permit_mynetworks, reject_non_fqdn_recipient, permit",
    )
    assert not [p for p in again.unresolved if "open relay" in p], again.unresolved
    assert "smtpd_relay_restrictions" not in changes(again)


@pytest.mark.parametrize(
    ("table", "closes"),
    [
        ("static:{553 5.7.1 no relaying here}", True),
        ("static:{450}", True),
        ("static:REJECT", True),
        ("static:{defer try later}", True),
        ("static:{OK}", False),
        ("static:{DUNNO}", False),
        ("static:{defer_if_permit}", False),
        ("hash:/etc/postfix/rcpt", False),
    ],
)
def test_a_static_table_closes_relaying_only_if_it_only_refuses(
    tmp_path: Path, table: str, closes: bool
) -> None:
    cfg = config(tmp_path)
    result = make_plan(
        cfg,
        smtpd_relay_restrictions=f"permit_mynetworks, check_recipient_access {table},"
        " reject_unauth_destination",
        smtpd_recipient_restrictions="permit_mynetworks, permit",
    )
    assert bool(permits_before_the_guard(result)) is not closes, result.unresolved


def test_a_static_refusal_after_warn_if_reject_only_logs(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    result = make_plan(
        cfg,
        smtpd_relay_restrictions="permit_mynetworks, warn_if_reject,"
        " check_recipient_access static:{554 no}, permit",
        smtpd_recipient_restrictions="permit_mynetworks, permit",
    )
    assert len(permits_before_the_guard(result)) == 2, result.unresolved


def plan_of(cfg: Config, raw: dict[str, str], expanded: dict[str, str]) -> Plan:
    """A plan for an instance whose raw and expanded values differ (``$name``)."""
    current = Settings(raw={**STOCK, **raw}, expanded={**STOCK, **expanded})
    return plan(cfg, load_replies(cfg.replies, cfg.file), current)


def test_switching_relay_control_to_postfix_removes_the_pass_through(tmp_path: Path) -> None:
    """The milter mode's ${smtpd_milters?{...}} is replaced, never written expanded: a
    bare static:{OK} would relay for anyone once smtpguard is removed."""
    milter = config(tmp_path / "m", {"site": {"relay_control": "milter"}})
    first = changes(make_plan(milter))["smtpd_relay_restrictions"]
    assert MILTER_RELAY_PASS in first
    expanded = first.replace(MILTER_RELAY_PASS, "check_recipient_access static:{OK}")
    result = plan_of(
        config(tmp_path / "p"),
        {"smtpd_relay_restrictions": first, "smtpd_milters": "unix:x"},
        {"smtpd_relay_restrictions": expanded, "smtpd_milters": "unix:x"},
    )
    value = changes(result)["smtpd_relay_restrictions"]
    assert value == (
        f"permit_mynetworks permit_sasl_authenticated permit_auth_destination {OURS_POSTFIX}"
        " defer_unauth_destination"
    )
    assert "static:{OK}" not in value
    assert "$" not in value
    # Review rev116 F2: said as what it does until applied.
    assert any("passes every recipient to the milter" in p for p in result.problems)
    assert not any("open relay" in p for p in result.unresolved)


def test_a_pass_through_beside_other_parameters_is_no_false_alarm(tmp_path: Path) -> None:
    """With another $item the list is read expanded: the expansion of our own
    pass-through, which the plan removes, is no open relay of the admin's."""
    raw = f"permit_mynetworks, $extra_checks, {MILTER_RELAY_PASS}, reject_unauth_destination"
    expanded = (
        "permit_mynetworks, check_client_access cidr:/etc/postfix/c,"
        " check_recipient_access static:{OK}, reject_unauth_destination"
    )
    result = plan_of(
        config(tmp_path),
        {"smtpd_relay_restrictions": raw, "smtpd_milters": "unix:x"},
        {"smtpd_relay_restrictions": expanded, "smtpd_milters": "unix:x"},
    )
    assert not any("open relay" in p for p in result.problems)
    assert changes(result)["smtpd_relay_restrictions"] == (
        f"permit_mynetworks, $extra_checks, permit_auth_destination, {OURS_POSTFIX},"
        " reject_unauth_destination"
    )


def test_milter_mode_tells_of_a_second_guard_in_recipient_restrictions(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"site": {"relay_control": "milter"}})
    result = make_plan(
        cfg, smtpd_recipient_restrictions="permit_mynetworks, reject_unauth_destination"
    )
    assert any("relay guard of its own" in n for n in result.notes)


def test_switching_relay_control_to_milter_removes_the_static_reply(tmp_path: Path) -> None:
    first = changes(make_plan(config(tmp_path / "p")))["smtpd_relay_restrictions"]
    milter = config(tmp_path / "m", {"site": {"relay_control": "milter"}})
    value = changes(make_plan(milter, smtpd_relay_restrictions=first))["smtpd_relay_restrictions"]
    assert value == (
        "permit_mynetworks permit_sasl_authenticated permit_auth_destination"
        f" {MILTER_RELAY_PASS} {OURS_POSTFIX} defer_unauth_destination"
    )


def test_a_changed_reply_text_replaces_the_old_one(tmp_path: Path) -> None:
    old = (
        "permit_mynetworks, permit_auth_destination,"
        " check_recipient_access static:{553 5.7.1 relaying denied}, reject_unauth_destination"
    )
    value = changes(make_plan(config(tmp_path), smtpd_relay_restrictions=old))[
        "smtpd_relay_restrictions"
    ]
    assert value == (
        f"permit_mynetworks, permit_auth_destination, {OURS_POSTFIX}, reject_unauth_destination"
    )


def test_the_admins_list_is_kept_as_written(tmp_path: Path) -> None:
    raw = (
        "permit_mynetworks, $relay_clients_check, check_client_access cidr:/etc/postfix/c,"
        " reject_unauth_destination"
    )
    expanded = (
        "permit_mynetworks, permit_sasl_authenticated, check_client_access cidr:/etc/postfix/c,"
        " reject_unauth_destination"
    )
    result = plan_of(
        config(tmp_path), {"smtpd_relay_restrictions": raw}, {"smtpd_relay_restrictions": expanded}
    )
    assert changes(result)["smtpd_relay_restrictions"] == (
        "permit_mynetworks, $relay_clients_check, check_client_access cidr:/etc/postfix/c,"
        f" permit_auth_destination, {OURS_POSTFIX}, reject_unauth_destination"
    )


def test_a_guard_behind_a_parameter_is_left_to_the_admin(tmp_path: Path) -> None:
    result = plan_of(
        config(tmp_path),
        {"smtpd_relay_restrictions": "$my_relay_rules"},
        {"smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination"},
    )
    assert "smtpd_relay_restrictions" not in changes(result)
    assert any("through another parameter ($my_relay_rules)" in n for n in result.notes)


def test_postfix_default_relay_restrictions_are_written_out(tmp_path: Path) -> None:
    default = (
        "${{$compatibility_level} <level {1} ? {} : {permit_mynetworks,"
        " permit_sasl_authenticated, defer_unauth_destination}}"
    )
    result = plan_of(
        config(tmp_path),
        {"smtpd_relay_restrictions": default},
        {
            "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated,"
            " defer_unauth_destination"
        },
    )
    assert changes(result)["smtpd_relay_restrictions"] == (
        "permit_mynetworks, permit_sasl_authenticated, permit_auth_destination,"
        f" {OURS_POSTFIX}, defer_unauth_destination"
    )


def test_an_admins_own_ok_stays_a_conflict_and_is_not_called_closed(tmp_path: Path) -> None:
    result = make_plan(
        config(tmp_path),
        smtpd_relay_restrictions="permit_mynetworks, permit, reject_unauth_destination",
    )
    assert any("'permit' before the relay guard" in p for p in result.unresolved)
    (change,) = [c for c in result.changes if c.name == "smtpd_relay_restrictions"]
    assert "stays closed" not in change.reason
    assert "passes every recipient" in change.reason


OUR_SETTINGS = (
    "default_action=tempfail, protocol=6, connect_timeout=10s, command_timeout=30s,"
    " content_timeout=300s"
)


def test_a_changed_socket_replaces_our_old_entry(tmp_path: Path) -> None:
    """An earlier postfix-config's entry for another milter.socket: left in place, its
    dead socket with default_action=tempfail would defer every message."""
    cfg = config(tmp_path)
    address = postfix_milter_address(cfg.milter.socket)
    old = f"{{ unix:smtpguard/old.sock, {OUR_SETTINGS} }}"
    # Another milter an admin gave the same settings is not ours to replace.
    rspamd = f"{{ inet:127.0.0.1:11332, {OUR_SETTINGS} }}"
    result = make_plan(cfg, smtpd_milters=f"{rspamd}, {old}")
    new = changes(result)["smtpd_milters"]
    assert new == f"{{ {address}, {OUR_SETTINGS} }}, {rspamd}"
    assert any("unix:smtpguard/old.sock" in p for p in result.problems)
    assert "smtpd_milters" not in changes(make_plan(cfg, smtpd_milters=new))
    # Both there (an earlier run appended the new one): the old one goes.
    both = make_plan(cfg, smtpd_milters=f"{old}, {rspamd}, {{ {address}, {OUR_SETTINGS} }}")
    assert changes(both)["smtpd_milters"] == f"{{ {address}, {OUR_SETTINGS} }}, {rspamd}"


def test_an_entry_with_our_settings_at_another_socket_is_a_conflict(tmp_path: Path) -> None:
    """Review rev166 F1, through a real Postfix: after milter.socket moved from
    milter/guard.sock to milter/policy.sock the old entry stayed (its address does not
    name smtpguard: it may be another milter's copy of our settings), every message was
    deferred, and --check said "no conflicts". It is not removed, but said."""
    cfg = config(tmp_path)
    address = postfix_milter_address(cfg.milter.socket)
    old = f"{{ unix:milter/guard.sock, {OUR_SETTINGS} }}"
    result = make_plan(cfg, smtpd_milters=f"{{ {address}, {OUR_SETTINGS} }}, {old}")
    assert "smtpd_milters" not in changes(result)
    (problem,) = [p for p in result.problems if "unix:milter/guard.sock" in p]
    assert problem.startswith(
        "smtpd_milters: unix:milter/guard.sock has exactly the settings postfix-config"
        " writes for smtpguard: if it was smtpguard's earlier milter.socket, take it out"
    )
    other = f"{{ unix:milter/guard.sock, {OUR_SETTINGS.replace('30s', '31s')} }}"
    result = make_plan(cfg, smtpd_milters=f"{{ {address}, {OUR_SETTINGS} }}, {other}")
    assert not [p for p in result.problems if "unix:milter/guard.sock" in p]


@pytest.mark.parametrize(
    "written",
    [
        "unix:/var/spool/postfix/smtpguard/smtpguard.sock",
        "unix:./smtpguard/smtpguard.sock",
        "unix:/var/spool/postfix//smtpguard/../smtpguard/smtpguard.sock",
        "local:smtpguard/smtpguard.sock",
    ],
)
def test_our_socket_in_another_spelling_is_our_entry(tmp_path: Path, written: str) -> None:
    """Review rev41, through a real Postfix: the README's absolute path was not taken
    for smtpguard, a second entry was added and every message ran through smtpguard
    twice (chrooted, the absolute one kept deferring mail)."""
    cfg = config(tmp_path, {"milter": {"socket": DEFAULT_SOCKET}})
    address = postfix_milter_address(cfg.milter.socket)
    assert address == "unix:smtpguard/smtpguard.sock"
    theirs = f"{{ {written}, default_action=tempfail }}"
    result = make_plan(cfg, smtpd_milters=f"{theirs}, inet:127.0.0.1:8891")
    assert changes(result)["smtpd_milters"] == (
        f"{{ {address}, default_action=tempfail }}, inet:127.0.0.1:8891"
    )
    assert f"smtpd_milters: names smtpguard's socket {written}, not {address}" in result.problems
    # Written twice: one entry is kept, the first.
    twice = make_plan(cfg, smtpd_milters=f"inet:127.0.0.1:8891, {written}, {address}")
    # A bare entry gets its own default_action (a service's -o milter_default_action
    # would otherwise decide it: review rev46).
    expected = f"{{ {address}, default_action=tempfail }}, inet:127.0.0.1:8891"
    assert changes(twice)["smtpd_milters"] == expected
    assert any(f"lists smtpguard ({address}) 2 times" in p for p in twice.problems)


def test_an_admins_relative_spelling_of_an_outside_socket_stays(tmp_path: Path) -> None:
    """Review rev46, through a real Postfix: the socket outside the queue directory,
    bind-mounted in there and named relative by the admin, was rewritten to its
    absolute path, which a chrooted smtpd cannot reach: every message got 451."""
    queue, run = tmp_path / "queue", tmp_path / "run"
    queue.mkdir()
    run.mkdir()
    (queue / "sockets").symlink_to(run)  # stands in for the bind mount
    cfg = config(tmp_path, {"milter": {"socket": f"unix:{run}/smtpguard.sock"}})
    written = "{ unix:sockets/smtpguard.sock, default_action=tempfail }"
    result = make_plan(cfg, queue_directory=str(queue), smtpd_milters=written)
    assert "smtpd_milters" not in changes(result)


@pytest.mark.parametrize(
    ("socket", "written"),
    [
        ("inet:8899@127.0.0.1", "inet:localhost:8899"),
        # Postfix's inet_connect takes a missing host for localhost (review rev44).
        ("inet:8899@127.0.0.1", "inet:8899"),
        ("inet:8899@127.0.0.1", "inet:127.1:8899"),
        ("inet6:8899@[::1]", "inet:localhost:8899"),
        ("inet6:8899@[::1]", "inet:[0:0:0:0:0:0:0:1]:8899"),
    ],
)
def test_other_names_of_our_inet_socket(tmp_path: Path, socket: str, written: str) -> None:
    cfg = config(tmp_path, {"milter": {"socket": socket}})
    result = make_plan(cfg, smtpd_milters=f"{written}, inet:127.0.0.1:8891")
    assert changes(result)["smtpd_milters"] == (
        f"{{ {postfix_milter_address(socket)}, default_action=tempfail }}, inet:127.0.0.1:8891"
    )


def test_our_socket_through_a_link_is_our_entry(tmp_path: Path) -> None:
    """Review rev44: queue/smtpguard a link to the directory the admin's entry names."""
    queue, run = tmp_path / "queue", tmp_path / "run"
    queue.mkdir()
    run.mkdir()
    (queue / "smtpguard").symlink_to(run)
    cfg = config(tmp_path, {"milter": {"socket": f"unix:{queue}/smtpguard/smtpguard.sock"}})
    result = make_plan(cfg, queue_directory=str(queue), smtpd_milters=f"unix:{run}/smtpguard.sock")
    assert changes(result)["smtpd_milters"] == (
        "{ unix:smtpguard/smtpguard.sock, default_action=tempfail }"
    )


def test_our_entry_after_another_milter_moves_to_the_front(tmp_path: Path) -> None:
    """A milter before smtpguard (OpenDKIM, say, whose default AuthservID is the host
    name, as is smtpguard's) would have its Authentication-Results removed as forged."""
    cfg = config(tmp_path)
    ours = f"{{ {postfix_milter_address(cfg.milter.socket)}, {OUR_SETTINGS} }}"
    result = make_plan(cfg, smtpd_milters=f"inet:127.0.0.1:8891 {ours},$more_milters")
    assert changes(result)["smtpd_milters"] == f"{ours}, inet:127.0.0.1:8891 $more_milters"
    assert any("another milter comes before smtpguard" in p for p in result.problems)
    # A $parameter before it may hold anything: left as written.
    kept = make_plan(cfg, smtpd_milters=f"{ours}, $more_milters")
    assert "smtpd_milters" not in changes(kept)


def test_an_admins_reject_all_before_the_guard_is_kept(tmp_path: Path) -> None:
    """Without permit_auth_destination before it, a static 553 before the guard refuses
    inbound mail too: the admin's own rule, not an earlier postfix-config's reply."""
    theirs = (
        "permit_mynetworks, check_recipient_access static:{553 5.7.1 outbound only},"
        " reject_unauth_destination"
    )
    for extra in ({}, {"site": {"relay_control": "milter"}}):
        cfg = config(tmp_path / str(len(extra)), extra)
        value = changes(make_plan(cfg, smtpd_relay_restrictions=theirs)).get(
            "smtpd_relay_restrictions", theirs
        )
        assert "static:{553 5.7.1 outbound only}" in value


def test_non_smtpd_milters_inheriting_ours_is_told_not_doubled(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    result = plan(
        cfg,
        load_replies(cfg.replies, cfg.file),
        Settings(
            raw={**STOCK, "non_smtpd_milters": "$smtpd_milters"},
            expanded={**STOCK, "non_smtpd_milters": ""},
        ),
        non_smtpd_milters=True,
    )
    assert "non_smtpd_milters" not in changes(result)
    assert any(n.startswith("non_smtpd_milters refers to $smtpd_milters") for n in result.notes)


@pytest.mark.parametrize(
    ("protocols", "trusted", "missing"),
    [
        ("all", ["192.0.2.0/24"], "127.0.0.1"),
        ("ipv4", ["192.0.2.0/24", "::1/128"], "127.0.0.1"),
        ("ipv6", ["192.0.2.0/24", "127.0.0.0/8"], "::1"),
        ("ipv6", ["192.0.2.0/24", "::1/128"], None),
        ("ipv4, ipv6", ["192.0.2.0/24", "127.0.0.0/8"], None),
    ],
)
def test_local_submissions_need_cleanups_loopback_trusted(
    tmp_path: Path, protocols: str, trusted: list[str], missing: str | None
) -> None:
    """Review rev228 M1: with inet_protocols = ipv6 cleanup shows sendmail(1)'s mail as
    localhost [::1]; --check asked only for 127.0.0.1, said "no conflicts", and every
    local message bounced with helo_error."""
    cfg = config(tmp_path, {"site": {"trusted_networks": trusted}})
    result = plan(
        cfg,
        load_replies(cfg.replies, cfg.file),
        settings(inet_protocols=protocols),
        non_smtpd_milters=True,
    )
    said = [p for p in result.problems if p.startswith("non_smtpd_milters: Postfix shows")]
    if missing is None:
        assert said == []
    else:
        network = "127.0.0.0/8" if missing == "127.0.0.1" else "::1/128"
        assert said == [
            "non_smtpd_milters: Postfix shows smtpguard mail submitted with sendmail as"
            f" client {missing}, and {missing} is not in site.trusted_networks: it would be"
            f" refused (helo_error, relay_local_fail); add {network} there"
        ]


def test_smtpguard_already_in_non_smtpd_milters_needs_the_loopback_trusted(
    tmp_path: Path,
) -> None:
    """Review rev230 M2: with smtpguard in non_smtpd_milters already (an earlier run's
    --non-smtpd-milters, or the admin's line), --check without the flag said "no
    conflicts" after inet_protocols changed to ipv6, and every local message bounced."""
    cfg = config(tmp_path, {"site": {"trusted_networks": ["127.0.0.0/8"]}})
    ours = f"unix:{cfg.milter.socket.removeprefix('unix:')}"
    result = plan(
        cfg,
        load_replies(cfg.replies, cfg.file),
        settings(inet_protocols="ipv6", non_smtpd_milters=ours),
    )
    assert any(
        p.startswith(
            "non_smtpd_milters: Postfix shows smtpguard mail submitted with sendmail as client ::1"
        )
        for p in result.problems
    ), result.problems


def test_old_style_recipient_restrictions_get_the_reply(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    result = make_plan(
        cfg,
        smtpd_relay_restrictions="",
        smtpd_recipient_restrictions="permit_mynetworks, reject_unauth_destination",
    )
    assert changes(result)["smtpd_recipient_restrictions"].endswith(
        "static:{553 5.7.1 host denies relay. (拒绝中继)}, reject_unauth_destination"
    )


def test_check_finds_no_relay_guard(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    result = make_plan(cfg, smtpd_relay_restrictions="permit_mynetworks, permit")
    assert any("open relay possible" in p or "open relay" in p for p in result.problems)


@pytest.mark.parametrize(
    ("entry", "default"),
    [
        ("{{ {address}, default_action=accept, protocol=6 }}", "tempfail"),
        ("{address}", "accept"),
        # Review rev46: each of these was read as tempfail, or not read, and in milter
        # mode relayed a stranger's mail while smtpguard was down.
        ("{{ {address}, default_action=ACCEPT, protocol=6 }}", "tempfail"),
        ("{{ {address}, {{ default_action = accept }}, protocol=6 }}", "tempfail"),
        ("{{ {address}, default_action=tempfail, default_action=accept, protocol=6 }}", "tempfail"),
        ("{address}", "Accept"),
    ],
)
def test_our_entry_always_defers_while_smtpguard_is_down(
    tmp_path: Path, entry: str, default: str
) -> None:
    cfg = config(tmp_path)
    address = postfix_milter_address(cfg.milter.socket)
    written = entry.format(address=address)
    result = make_plan(cfg, smtpd_milters=written, milter_default_action=default)
    options = ", protocol=6" if "protocol" in written else ""
    assert changes(result)["smtpd_milters"] == (
        f"{{ {address}, default_action=tempfail{options} }}"
    )
    assert any("not tempfail" in p for p in result.problems)
    assert not result.blocking


def test_unlisted_recipients_stay_checked_without_a_directory(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"directory": {"backend": "none"}})
    assert "smtpd_reject_unlisted_recipient" not in changes(make_plan(cfg))
    result = make_plan(cfg, smtpd_reject_unlisted_recipient="no")
    assert any("backscatter" in p for p in result.unresolved)


def test_unlisted_recipients_go_to_the_directory_only_while_the_milter_is_set(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    value = changes(make_plan(cfg))["smtpd_reject_unlisted_recipient"]
    assert value == "${smtpd_milters?{no}:{yes}}"
    dry = config(tmp_path / "dry", {"milter": {"dry_run": True}})
    assert "smtpd_reject_unlisted_recipient" not in changes(make_plan(dry))


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (
            {
                "site": {"local_domains": ["example.com", "lax.example"]},
                "domain": {"lax.example": {"checks": {"mailbox": {"mode": "off"}}}},
            },
            '[domain."lax.example"] checks.mailbox.mode = "off"',
        ),
        (
            {
                "site": {"local_domains": ["example.com", "lax.example"]},
                "domain": {"lax.example": {"checks": {"mailbox": {"mode": "report"}}}},
            },
            '[domain."lax.example"] checks.mailbox.mode = "report"',
        ),
        (
            {
                "policy": {
                    "exempt": [{"name": "partner", "ips": ["198.51.100.0/24"], "skip": ["mailbox"]}]
                }
            },
            '[[policy.exempt]] "partner" skips mailbox',
        ),
    ],
)
def test_unlisted_recipients_stay_with_postfix_where_the_mailbox_check_is_off(
    tmp_path: Path, extra: dict[str, Any], named: str
) -> None:
    """Review rev196 F1: a domain's table, or an exemption, that takes the mailbox check
    off left that domain's (that client's) unknown recipients to nobody: Postfix said
    250 to nosuch@, then bounced to the forged sender (backscatter)."""
    cfg = config(tmp_path, extra)
    result = make_plan(cfg)
    assert "smtpd_reject_unlisted_recipient" not in changes(result)
    (note,) = [n for n in result.notes if n.startswith("smtpd_reject_unlisted_recipient")]
    assert f"smtpguard does not refuse every unknown recipient ({named})" in note
    # What an earlier postfix-config wrote is put back to yes.
    raw = {**STOCK, "smtpd_reject_unlisted_recipient": UNLISTED_WHILE_MILTERS}
    current = Settings(raw=raw, expanded={**raw, "smtpd_reject_unlisted_recipient": "no"})
    again = plan(cfg, load_replies(cfg.replies, cfg.file), current)
    assert changes(again)["smtpd_reject_unlisted_recipient"] == "yes"


def test_another_recipient_delimiter_keeps_postfix_checking_recipients(tmp_path: Path) -> None:
    """Review rev205 F1: with Postfix's recipient_delimiter empty, smtpguard accepted
    alice+news@ (alice's extension), which local(8) then bounced to a forged sender."""
    result = make_plan(config(tmp_path), recipient_delimiter="")
    assert "smtpd_reject_unlisted_recipient" not in changes(result)
    (note,) = [n for n in result.notes if n.startswith("smtpd_reject_unlisted_recipient")]
    assert "recipient_delimiter is '' and site.recipient_delimiter '+'" in note


def test_a_postmap_killed_by_a_signal_lists_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review rev210 L1: a postmap killed by a signal (negative status) passed for one
    that listed its table whole, and mydestination's domains went uncompared."""
    conf = postmap_directory(tmp_path)
    write_settled(conf / "dest", "example.com OK\n")
    subprocess.run(["postmap", "-c", str(conf), f"hash:{conf}/dest"], check=True)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "postmap").write_text("#!/bin/sh\nkill -SEGV $$\n")
    (fake / "postmap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    cfg = load(make_site(tmp_path / "site").config)
    result = make_plan(
        cfg,
        config_directory=str(conf),
        local_recipient_maps="inline:{postmaster=ok}",
        mydestination=f"hash:{conf}/dest, localhost",
    )
    assert "smtpd_reject_unlisted_recipient" not in changes(result)
    assert any(f"hash:{conf}/dest" in n and "postmap exited -11" in n for n in result.notes)


def test_a_delimiter_only_postfix_splits_at_leaves_smtpguard_the_recipients(
    tmp_path: Path,
) -> None:
    """Review rev208 L1: smtpguard splitting no extension is the stricter one; Postfix's
    own check was kept for it, with a note that said the reverse."""
    cfg = config(tmp_path, {"site": {"recipient_delimiter": ""}})
    result = make_plan(cfg, recipient_delimiter="+")
    assert changes(result)["smtpd_reject_unlisted_recipient"] == UNLISTED_WHILE_MILTERS


def test_directory_addresses_postfix_cannot_deliver_keep_its_recipient_check(
    tmp_path: Path,
) -> None:
    """Review rev205 F1: smtpd_reject_unlisted_recipient = no also stops smtpd asking
    local_recipient_maps; a directory user without an account there got 250, then
    local(8)'s bounce to a forged sender. Every address there: the table's reply."""
    conf = postmap_directory(tmp_path)
    cfg = load(make_site(tmp_path / "site").config)
    contents = read_contents(cfg.directory.path)
    addresses = [
        r.address for rows in (contents.users, contents.aliases, contents.lists) for r in rows
    ]
    locals_ = sorted({a.partition("@")[0] for a in addresses if a.endswith("@example.com")})
    assert "alice" in locals_
    partial = "inline:{" + ", ".join(f"{n}=ok" for n in locals_ if n != "alice") + "}"
    result = make_plan(cfg, config_directory=str(conf), local_recipient_maps=partial)
    assert "smtpd_reject_unlisted_recipient" not in changes(result)
    (note,) = [n for n in result.notes if n.startswith("smtpd_reject_unlisted_recipient")]
    assert "local_recipient_maps do not hold alice@example.com of smtpguard's directory" in note
    whole = "inline:{" + ", ".join(f"{n}=ok" for n in locals_) + "}"
    result = make_plan(cfg, config_directory=str(conf), local_recipient_maps=whole)
    assert changes(result)["smtpd_reject_unlisted_recipient"] == UNLISTED_WHILE_MILTERS
    # A table that cannot be read is no proof.
    result = make_plan(cfg, config_directory=str(conf), local_recipient_maps=f"hash:{conf}/gone")
    assert "smtpd_reject_unlisted_recipient" not in changes(result)
    # The domain in a /file of mydestination is compared too (review rev208 M2), and a
    # table postmap cannot list, named in such a file, is no proof (rev210 M1).
    write_settled(conf / "mydest", "example.com\n")
    (conf / "dest.re").write_text("/^example\\.com$/ OK\n")
    write_settled(conf / "nested", f"regexp:{conf}/dest.re\n")
    write_settled(conf / "other", "other.example OK\n")
    subprocess.run(["postmap", "-c", str(conf), f"hash:{conf}/other"], check=True)
    for mydestination, maps, kept in [
        (f"{conf}/mydest, localhost", partial, True),
        (f"{conf}/nested, localhost", whole, True),
        # An exclusion that can be listed is no reason (rev210 L2).
        (f"example.com, !hash:{conf}/other, localhost", whole, False),
    ]:
        result = make_plan(
            cfg,
            config_directory=str(conf),
            local_recipient_maps=maps,
            mydestination=mydestination,
        )
        assert ("smtpd_reject_unlisted_recipient" not in changes(result)) is kept, mydestination


def test_size_limits_are_never_raised(tmp_path: Path) -> None:
    """A lower message_size_limit is the site's choice: a note, not a change (it was
    raised, and mailbox_size_limit with it, letting larger mail in)."""
    cfg = config(tmp_path)  # max_message_size 1_000_000
    result = make_plan(cfg, message_size_limit="500000", mailbox_size_limit="900000")
    assert not {"message_size_limit", "mailbox_size_limit"} & set(changes(result))
    assert any(n.startswith("message_size_limit (500000) is not above") for n in result.notes)
    assert not any(n.startswith("message_size_limit") for n in make_plan(cfg).notes)


def test_a_different_recipient_delimiter_is_a_note_not_a_change(tmp_path: Path) -> None:
    """Where mail with an extension is delivered is the site's choice; smtpguard only
    says its directory would judge alice+news@ otherwise."""
    cfg = config(tmp_path)  # site.recipient_delimiter "+" by default
    assert not any(n.startswith("recipient_delimiter") for n in make_plan(cfg).notes)
    result = make_plan(cfg, recipient_delimiter="")
    assert "recipient_delimiter" not in changes(result)
    (note,) = [n for n in result.notes if n.startswith("recipient_delimiter")]
    assert "recipient_delimiter is '', site.recipient_delimiter '+'" in note
    # The same set of characters in another order is the same delimiter.
    both = config(tmp_path / "both", {"site": {"recipient_delimiter": "+-"}})
    notes = make_plan(both, recipient_delimiter="-+").notes
    assert not any(n.startswith("recipient_delimiter") for n in notes)


def test_unlisted_recipients_stay_with_postfix_when_it_has_other_recipient_maps(
    tmp_path: Path,
) -> None:
    """smtpd_reject_unlisted_recipient = no would also stop relay_recipient_maps and the
    virtual tables, which smtpguard's directory does not hold (backscatter)."""
    cfg = config(tmp_path)
    maps = {"relay_recipient_maps": "hash:/etc/postfix/relay_recipients"}
    result = make_plan(cfg, **maps)
    assert "smtpd_reject_unlisted_recipient" not in changes(result)
    assert any("relay_recipient_maps would go unchecked" in n for n in result.notes)
    # What an earlier postfix-config wrote is put back to yes.
    raw = {**STOCK, **maps, "smtpd_reject_unlisted_recipient": "${smtpd_milters?{no}:{yes}}"}
    current = Settings(raw=raw, expanded={**raw, "smtpd_reject_unlisted_recipient": "no"})
    again = plan(cfg, load_replies(cfg.replies, cfg.file), current)
    assert changes(again)["smtpd_reject_unlisted_recipient"] == "yes"
    assert any("backscatter" in p for p in again.problems)
    assert not any("backscatter" in p for p in again.unresolved)


def test_domains_postfix_accepts_but_smtpguard_refuses_are_a_conflict(tmp_path: Path) -> None:
    cfg = config(tmp_path)  # local example.com, relay relay.example
    result = make_plan(
        cfg,
        mydestination="mx.example.com, mail.example.com, example.com, localhost.example.com,"
        " localhost",
        virtual_alias_domains="example.org, hash:/etc/postfix/virtual_domains",
        relay_domains="relay.example",
    )
    (problem,) = accepted_conflicts(result)
    assert "mail.example.com (mydestination)" in problem
    # One of site.our_hostnames: a note on what smtpguard lets through to it.
    assert "mx.example.com" not in problem
    (note,) = [n for n in result.notes if n.startswith("Postfix accepts mail for mx.")]
    assert "from outside only postmaster@ it and bounces" in note
    # This host's own name is not one of them: the advice says where it goes, also
    # when a ".example.com" local entry covers it (third review: 550 for root@ it).
    for local in (["example.com"], ["example.com", ".example.com"]):
        covered = config(tmp_path / f"local{len(local)}", {"site": {"local_domains": local}})
        other = make_plan(covered, myhostname="mail.example.com", mydestination="mail.example.com")
        (advice,) = [p for p in other.unresolved if "mail.example.com" in p]
        assert advice.startswith(
            "Postfix delivers mail for its own name mail.example.com (mydestination) itself"
        )
        assert "add it to site.our_hostnames" in advice
    assert "example.org (virtual_alias_domains)" in problem
    assert "localhost" not in problem
    assert "hash:" not in problem
    # relay_domains is in Postfix's parent_domain_matches_subdomains: relay.example
    # covers mx.relay.example there, and smtpguard needs ".relay.example" for it.
    assert (
        "subdomains of relay.example (relay_domains with parent_domain_matches_subdomains)"
        in problem
    )
    assert "relay.example (relay_domains)" not in problem.replace("of relay.example", "")


def test_a_domain_postfix_delivers_is_no_relay_domain(tmp_path: Path) -> None:
    """Third review: a mydestination domain that site.relay_domains covers has its
    unknown users accepted, then bounced (Postfix's unknown-recipient check is off for
    the milter). The host's own name is decided before any relay entry: no conflict
    (fourth review)."""
    cfg = config(
        tmp_path,
        {"site": {"relay_domains": ["relay.example", "mail.example.org", ".example.com"]}},
    )
    result = make_plan(cfg, mydestination="mx.example.com, mail.example.org, localhost")
    relayed = [p for p in result.unresolved if "site.relay_domains covers it" in p]
    assert [p.split(" (mydestination)")[0] for p in relayed] == [
        "Postfix delivers mail for mail.example.org"
    ]


def postmap_directory(tmp_path: Path) -> Path:
    """A config directory with an empty main.cf, for tables the real postmap reads
    (the test is skipped where Postfix is not installed)."""
    if not shutil.which("postmap"):
        pytest.skip("postmap not installed (Debian package postfix)")
    conf = tmp_path / "etc"
    conf.mkdir()
    write_settled(conf / "main.cf", "")
    return conf


def test_domains_in_tables_and_files_are_compared(tmp_path: Path) -> None:
    """Review rev41, through a real Postfix: a texthash: or /file entry of mydestination
    or relay_domains was skipped, and mail to its domains got a permanent 553
    host_denies_relay while --check said "no conflicts"."""
    conf = postmap_directory(tmp_path)
    write_settled(conf / "mydest", "other.example  x\n")
    write_settled(
        conf / "relay.list", "# ours\nrelay2.example, texthash:" + str(conf / "more") + "\n"
    )
    write_settled(conf / "more", "more.example OK\n")
    (conf / "pcre").write_text("/^x/ OK\n")

    def tables(cfg: Config, relay_domains: str) -> Plan:
        return make_plan(
            cfg,
            config_directory=str(conf),
            mydestination=f"example.com, localhost, texthash:{conf}/mydest",
            relay_domains=relay_domains,
            parent_domain_matches_subdomains="",
        )

    result = tables(config(tmp_path), f"{conf}/relay.list, !skipped.example, regexp:{conf}/pcre")
    (problem,) = accepted_conflicts(result)
    assert problem.startswith(
        "Postfix accepts mail for other.example (mydestination), relay2.example (relay_domains),"
        " more.example (relay_domains), which smtpguard refuses"
    )
    (note,) = [n for n in result.notes if "not compared" in n]
    assert note.startswith(
        f"relay_domains: not compared with site.local_domains and site.relay_domains:"
        f" regexp:{conf}/pcre ("
    )
    covered = config(
        tmp_path / "covered",
        {
            "site": {
                "local_domains": ["example.com", "other.example"],
                "relay_domains": ["relay2.example", "more.example"],
            }
        },
    )
    result = tables(covered, f"{conf}/relay.list")
    assert not accepted_conflicts(result)


def test_addresses_postfix_delivers_that_the_directory_lacks_are_a_conflict(
    tmp_path: Path,
) -> None:
    """Review rev121 F4: bob@ was in Postfix's virtual_mailbox_maps and not in
    smtpguard's directory: refused 550 while --check said no conflicts. The keys
    postmap lists, in site.local_domains, that the directory does not hold (users,
    aliases, lists, extensions of them); postmaster@ and other domains left out."""
    conf = postmap_directory(tmp_path)
    write_settled(
        conf / "vmailbox",
        "alice@example.com x\nnewbie@example.com x\nsales@example.com x\n"
        "alice+lists@example.com x\npostmaster@example.com x\nsomeone@other.example x\n",
    )
    write_settled(conf / "virtual", "@example.com catchall\nhelpdesk@example.com alice\n")
    site = make_site(tmp_path / "site")
    cfg = load(site.config)
    maps = {
        "config_directory": str(conf),
        "virtual_mailbox_maps": f"texthash:{conf}/vmailbox",
        "virtual_alias_maps": f"texthash:{conf}/virtual",
    }
    (problem,) = [p for p in make_plan(cfg, **maps).problems if "directory lacks" in p]
    assert problem == (
        "Postfix receives mail for 2 address(es) of site.local_domains that smtpguard's"
        " directory lacks (newbie@example.com, helpdesk@example.com; keys of"
        " virtual_alias_maps, virtual_mailbox_maps): smtpguard refuses mail to them"
        " (550 5.1.1 mailbox unavailable); import them (`smtpguard directory import`)"
    )
    # Not refused by smtpguard, so nothing to say: a dry run, the mailbox check only
    # reporting, no directory.
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"milter": {"dry_run": True}}, True),
        ({"checks": {"mailbox": {"mode": "report"}}}, True),
        ({"directory": {"backend": "none"}}, False),
    ]
    for i, (extra, with_directory) in enumerate(cases):
        other = load(make_site(tmp_path / f"other{i}", extra, directory=with_directory).config)
        assert not [p for p in make_plan(other, **maps).problems if "directory lacks" in p]


def test_aliases_of_our_mydestination_domains_the_directory_lacks_are_a_conflict(
    tmp_path: Path,
) -> None:
    """Review rev166 F3, through a real Postfix: abuse@ and hostmaster@ of a
    mydestination domain, delivered through aliases(5), got 550 from smtpguard while
    --check said no conflicts. postalias' own keys ("@", YP_*) and postmaster are left
    out."""
    conf = postmap_directory(tmp_path)
    write_settled(
        conf / "aliases",
        'abuse: alice\nhostmaster: alice\npostmaster: root\n"john smith": alice\n',
    )
    subprocess.run(["postalias", "-c", str(conf), f"hash:{conf}/aliases"], check=True)
    cfg = load(make_site(tmp_path / "site").config)
    maps = {"config_directory": str(conf), "alias_maps": f"hash:{conf}/aliases"}
    (problem,) = [p for p in make_plan(cfg, **maps).problems if "directory lacks" in p]
    assert problem.startswith(
        "Postfix receives mail for 3 address(es) of site.local_domains that smtpguard's"
        ' directory lacks (abuse@example.com, hostmaster@example.com, "john smith"@example.com;'
        " keys of alias_maps)"
    )
    # Not a domain of ours in mydestination: nothing to compare.
    other = {**maps, "mydestination": "localhost"}
    assert not [p for p in make_plan(cfg, **other).problems if "directory lacks" in p]


def test_a_footer_table_of_another_release_is_a_note(tmp_path: Path) -> None:
    """Review rev233 L1: after an upgrade the footer table an older release wrote (no
    help link line) stayed, and --check said "no conflicts" and nothing more."""
    cfg = config(tmp_path / "site", {"replies": {"help_url": "https://h.example/{id}"}})
    etc = tmp_path / "etc"
    etc.mkdir()
    table = etc / "smtpguard_footers.regexp"
    current = settings(config_directory=str(etc), smtpd_reject_footer_maps=f"regexp:{table}")
    result = plan(cfg, load_replies(cfg.replies, cfg.file), current)
    assert stale_footers(result, current) == (
        f"{table} does not exist: Postfix's own replies carry other text (a release or"
        " [replies] change since it was written); run postfix-config's output again (it"
        " writes the table), then postfix reload"
    )
    table.write_text(result.footers, encoding="utf-8")
    assert stale_footers(result, current) is None
    older = "\n".join(line.split("\\n")[0] for line in result.footers.splitlines())
    table.write_text(older + "\n", encoding="utf-8")
    note = stale_footers(result, current)
    assert note is not None
    assert note.startswith(f"{table} differs from what this configuration writes")
    # Not attached: nothing to say.
    assert stale_footers(result, settings(config_directory=str(etc))) is None


def test_an_admins_reject_footer_is_a_note(tmp_path: Path) -> None:
    """Review rev166 F6: Postfix appends it to smtpguard's replies too."""
    footer = "\\c. For assistance call 555-0101"
    (note,) = [
        n
        for n in make_plan(config(tmp_path), smtpd_reject_footer=footer).notes
        if n.startswith("smtpd_reject_footer left")
    ]
    assert "appends it to smtpguard's replies too" in note


def test_table_keys_that_name_no_domain_are_left_out(tmp_path: Path) -> None:
    """Review rev44: with Postfix's default virtual_alias_domains = $virtual_alias_maps,
    every alias key (alice@example.com, @example.com, postmaster) was reported as an
    accepted domain, a conflict no config could clear; a /file that includes itself
    was counted again and again; a huge table made a line of megabytes."""
    conf = postmap_directory(tmp_path)
    write_settled(
        conf / "virtual",
        "postmaster root\nalice@example.com alice\n@example.com catchall\nother.example x\n",
    )
    (conf / "pcre").write_text("/^x/ OK\n")
    write_settled(conf / "self.list", f"self.example {conf}/self.list\n")
    many = " ".join(f"d{i}.example" for i in range(30))
    cfg = config(tmp_path)
    expanded = {
        **STOCK,
        "config_directory": str(conf),
        "virtual_alias_maps": f"texthash:{conf}/virtual, regexp:{conf}/pcre",
        "virtual_alias_domains": f"texthash:{conf}/virtual, regexp:{conf}/pcre",
        "relay_domains": f"{conf}/self.list, {many}",
        "parent_domain_matches_subdomains": "",
    }
    # Postfix's default: virtual_alias_domains = $virtual_alias_maps.
    raw = {**expanded, "virtual_alias_domains": "$virtual_alias_maps"}
    current = Settings(raw=raw, expanded=expanded)
    result = plan(cfg, load_replies(cfg.replies, cfg.file), current)
    (problem,) = accepted_conflicts(result)
    assert problem.startswith(
        "Postfix accepts mail for other.example (virtual_alias_domains),"
        " self.example (relay_domains), d0.example (relay_domains),"
    )
    assert "@" not in problem.split(", which smtpguard")[0]
    assert " and 12 more, which smtpguard refuses" in problem
    # The default's regexp alias map is no list of the admin's: no note for it.
    assert not any("not compared" in n for n in result.notes)
    assert f"relay_domains: {conf}/self.list includes itself (through {conf}/self.list):" in (
        " ".join(result.unresolved)
    )


def flat_relay_conflict(tmp_path: Path, relay_domains: str) -> str:
    """The one domain conflict of ``relay_domains`` matched without parent style."""
    result = make_plan(
        config(tmp_path), relay_domains=relay_domains, parent_domain_matches_subdomains=""
    )
    (problem,) = accepted_conflicts(result)
    return problem


def test_a_name_excluded_before_it_is_listed_is_not_accepted(tmp_path: Path) -> None:
    """Review rev51: "!x.example, x.example" (the first match decides: Postfix refuses
    x.example) was reported as a domain Postfix accepts and smtpguard refuses."""
    problem = flat_relay_conflict(tmp_path, "!x.example, x.example, y.example, !y.example")
    assert problem.startswith("Postfix accepts mail for y.example (relay_domains), which")
    assert "x.example" not in problem
    # Review rev54: an excluded file excludes its names; "!t.example." excludes nothing
    # Postfix looks up, so t.example is accepted.
    excluded = tmp_path / "excluded.list"
    excluded.write_text("f.example\n")
    problem = flat_relay_conflict(tmp_path, f"!{excluded}, f.example, !t.example., t.example")
    assert problem.startswith("Postfix accepts mail for t.example (relay_domains), which")
    assert "f.example" not in problem


def test_an_exclusion_matches_as_postfix_matches_its_list(tmp_path: Path) -> None:
    """Measured with real Postfix 3.7.11 (review rev54, and again for this test): in a
    domain list of parent style (by default relay_domains) "!p.example" refuses
    q.p.example too; virtual_alias_domains and virtual_mailbox_domains are string
    lists, where "!.v.example" excludes nothing (w.v.example is accepted) and
    ".v2.example" matches nothing (neither v2.example nor a.v2.example)."""
    result = make_plan(
        config(tmp_path),
        relay_domains="!p.example, q.p.example, !sub.r.example, r.example",
        virtual_alias_domains="!.v.example, w.v.example, .v2.example",
        virtual_mailbox_domains=".v3.example, !k.example, j.k.example",
    )
    (problem,) = accepted_conflicts(result)
    accepted = problem.split(", which smtpguard")[0]
    # !sub.r.example leaves r.example and its other subdomains.
    assert accepted == (
        "Postfix accepts mail for w.v.example (virtual_alias_domains), j.k.example"
        " (virtual_mailbox_domains), r.example (relay_domains), subdomains of r.example"
        " (relay_domains with parent_domain_matches_subdomains)"
    )
    # A domain list of the other style: "!p.example" is p.example alone, and
    # "!.s.example" the subdomains of s.example.
    problem = flat_relay_conflict(tmp_path, "!p.example, q.p.example, !.s.example, t.s.example")
    assert problem.startswith("Postfix accepts mail for q.p.example (relay_domains), which")


def test_a_web_of_list_files_is_read_once_per_file(tmp_path: Path) -> None:
    """Review rev46: ten files that each list all ten took 42 s (every path through the
    web was read); Postfix itself runs out of descriptors on such a cycle."""
    conf = tmp_path / "etc"
    conf.mkdir()
    files = [conf / f"part{i}.list" for i in range(12)]
    for i, path in enumerate(files):
        path.write_text(f"d{i}.example " + " ".join(str(f) for f in files) + "\n")
    started = time.monotonic()
    result = make_plan(
        config(tmp_path),
        relay_domains=f"{files[0]}, {files[5]}",
        parent_domain_matches_subdomains="",
    )
    assert time.monotonic() - started < 10
    (problem,) = accepted_conflicts(result)
    named = [f"d{i}.example (relay_domains)" for i in range(12)]
    assert problem.startswith(f"Postfix accepts mail for {', '.join(named)}, which smtpguard")
    (cycle,) = [n for n in result.unresolved if "includes itself" in n]
    assert "Temporary lookup failure" in cycle
    assert cycle.startswith(f"relay_domains: {files[0]} includes itself (through {files[0]}):")


def test_subdomains_postfix_relays_for_need_a_dot_entry(tmp_path: Path) -> None:
    covered = config(tmp_path, {"site": {"relay_domains": ["relay.example", ".relay.example"]}})
    # ".other.example" matches nothing in a parent-style list (Postfix's match_hostname),
    # nor does ".x.example" in mydestination, an exact string list (found by review).
    result = make_plan(
        covered,
        relay_domains="relay.example, .other.example",
        mydestination="example.com, .x.example, localhost",
    )
    assert not accepted_conflicts(result)
    # mydestination is matched exactly even when named there (second review).
    named = make_plan(
        covered,
        parent_domain_matches_subdomains="relay_domains, mydestination",
        mydestination="example.com, localhost",
    )
    assert not accepted_conflicts(named)
    # Where a domain list is not parent-style, the dot form is how subdomains are listed.
    dotted = make_plan(covered, relay_domains=".other.example", parent_domain_matches_subdomains="")
    (problem,) = accepted_conflicts(dotted)
    assert problem.startswith(
        "Postfix accepts mail for subdomains of other.example (relay_domains)"
    )
    # virtual_alias_domains is a string list: ".other.example" matches nothing there
    # (Postfix 3.7.11 refused a.other.example as relaying; an earlier version of this
    # test said the opposite).
    virtual = make_plan(covered, virtual_alias_domains=".other.example")
    assert not accepted_conflicts(virtual)
    # Without parent matching for relay_domains, relay.example is that domain only.
    alone = make_plan(
        config(tmp_path / "alone"),
        relay_domains="relay.example",
        parent_domain_matches_subdomains="mynetworks",
    )
    assert not accepted_conflicts(alone)


def test_lists_read_as_postfix_reads_them(tmp_path: Path) -> None:
    """Review rev58, each measured with real Postfix 3.7.11: "!!x" is x; in an excluded
    file the "!" names are accepted; a table key "!x" excludes nothing; a name written
    with its final dot matches nothing (a note says so); a "#" token ends the list
    (Postfix warns and ignores the rest)."""
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "inner").write_text("!dn1.example\nplain.example\n")
    (lists / "keys").write_text("!x4.example OK\n")
    result = make_plan(
        config(tmp_path),
        relay_domains=(
            f"!!dd7.example, !{lists}/inner, plain.example, texthash:{lists}/keys, x4.example,"
            " td.example., tf.example #hcx.example, after.example"
        ),
        parent_domain_matches_subdomains="",
    )
    (problem,) = accepted_conflicts(result)
    assert problem.split(", which smtpguard")[0] == (
        "Postfix accepts mail for dd7.example (relay_domains), dn1.example (relay_domains),"
        " x4.example (relay_domains), tf.example (relay_domains)"
    )
    assert any(n.startswith("relay_domains: td.example. matches no domain") for n in result.notes)
    assert any(
        n.startswith("relay_domains: Postfix ignores what follows '#' (#hcx.example after")
        for n in result.notes
    )


def test_an_idn_listed_in_one_spelling_is_a_conflict(tmp_path: Path) -> None:
    """Measured with Postfix 3.7: relay_domains = bücher.example refuses
    RCPT TO:<a@xn--bcher-kva.example> as relaying: the A-label is asked for. Not the
    U-label for an A-label listed: Postfix matches its lists after ICU's case folding
    and would relay strasse.example for straße.example (review rev118 F3)."""
    cfg = config(tmp_path, {"site": {"relay_domains": ["bücher.example", "例子.中国"]}})
    result = make_plan(
        cfg,
        relay_domains="bücher.example, 例子.中国, xn--fsqu00a.xn--fiqs8s, xn--ls8h.la",
        virtual_alias_domains=".Bücher.example",
    )
    (problem,) = [p for p in result.unresolved if p.startswith("Postfix compares domain")]
    assert "xn--bcher-kva.example (relay_domains has bücher.example)" in problem
    a_labels = make_plan(cfg, relay_domains="xn--bcher-kva.example, xn--fsqu00a.xn--fiqs8s")
    assert not [p for p in a_labels.unresolved if p.startswith("Postfix compares domain")]
    # virtual_alias_domains is a string list: ".bücher.example" matches nothing there,
    # in either spelling (review rev58: Postfix 3.7.11 refused both).
    assert "virtual_alias_domains" not in problem
    # Listed in both spellings: nothing to say.
    assert "例子" not in problem
    assert "xn--fsqu00a" not in problem
    # Not an IDNA2008 A-label (an emoji): no other spelling smtpguard takes for it.
    assert ".la" not in problem
    both = make_plan(
        cfg, relay_domains="xn--bcher-kva.example bücher.example, 例子.中国 xn--fsqu00a.xn--fiqs8s"
    )
    assert not [p for p in both.unresolved if p.startswith("Postfix compares domain")]


def test_milter_mode_names_a_u_label_postfix_takes_that_site_lists_in_a_labels(
    tmp_path: Path,
) -> None:
    """Review rev184 F4, through a real Postfix 3.7: with relay_control = "milter" and
    site listing xn--bcher-kva.example only, RCPT TO:<x@bücher.example> got 553 host
    denies relay while Postfix took mail for both spellings; --check said no
    conflicts."""
    site = {"local_domains": ["example.com", "xn--bcher-kva.example"], "relay_control": "milter"}
    lists = {"virtual_mailbox_domains": "xn--bcher-kva.example bücher.example"}
    (problem,) = _unlisted_u_labels(tmp_path, site, lists)
    assert problem.startswith("Postfix takes mail for bücher.example,")
    listed = {**site, "local_domains": [*site["local_domains"], "bücher.example"]}
    assert not _unlisted_u_labels(tmp_path / "listed", listed, lists)


def _unlisted_u_labels(
    tmp_path: Path, site: dict[str, Any], postfix_lists: dict[str, str]
) -> list[str]:
    """The plan's problems naming U-labels Postfix takes that site lacks."""
    result = make_plan(config(tmp_path, {"site": site}), **postfix_lists)
    return [p for p in result.unresolved if "which site lists only in A-labels" in p]


def test_milter_mode_names_u_label_subdomains_and_no_dotted_name_that_matches_nothing(
    tmp_path: Path,
) -> None:
    """Review rev185 F2: relay_domains (parent-style) with bücher.example takes
    sub.bücher.example too, which site (".xn--bcher-kva.example") refused as relaying;
    F3: ".bücher.example" there matches nothing, and was named all the same."""
    site = {
        "relay_domains": ["xn--bcher-kva.example", ".xn--bcher-kva.example", "bücher.example"],
        "relay_control": "milter",
    }
    lists = {"relay_domains": "xn--bcher-kva.example bücher.example"}
    (problem,) = _unlisted_u_labels(tmp_path, site, lists)
    assert problem.startswith("Postfix takes mail for .bücher.example,")
    nothing = {"relay_domains": ["xn--bcher-kva.example"], "relay_control": "milter"}
    dotted = {"relay_domains": "xn--bcher-kva.example .bücher.example"}
    assert not _unlisted_u_labels(tmp_path / "nothing", nothing, dotted)


def test_size_footer_carries_the_table_text(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    footers = postfix_footer_regexp(load_replies(cfg.replies, cfg.file), utf8=True)
    assert (
        "/^552 5\\.3\\.4 Message size exceeds fixed limit/"
        " \\c (message is too long. 邮件大小超过限制)" in footers.splitlines()
    )


def test_postfix_replies_keep_every_language_in_the_tables_order(tmp_path: Path) -> None:
    """Review rev73 F4: with form = "per_language" Postfix's relay refusal (one line
    from an access map) kept the first language only; with languages = ["zh", "en"]
    the size footer still put English first."""
    cfg = config(tmp_path / "per", {"replies": {"form": "per_language"}})
    replies = load_replies(cfg.replies, cfg.file)
    assert relay_reply(replies, utf8=True) == "553 5.7.1 host denies relay. (拒绝中继)"
    assert relay_reply(replies, utf8=False) == "553 5.7.1 host denies relay."
    cfg = config(tmp_path / "zh", {"replies": {"languages": ["zh", "en"]}})
    replies = load_replies(cfg.replies, cfg.file)
    assert relay_reply(replies, utf8=True) == "553 5.7.1 拒绝中继 (host denies relay.)"
    assert (
        "/^552 5\\.3\\.4 Message size exceeds fixed limit/"
        " \\c (邮件大小超过限制 message is too long.)"
        in postfix_footer_regexp(replies, utf8=True).splitlines()
    )


@pytest.mark.parametrize(
    ("footer", "carried"),
    [
        ("\\c - help: $client_address", " - help: $$client_address"),
        ("Call 555-0101", "\\nCall 555-0101"),  # a line of its own, as Postfix writes it
        ("", ""),
    ],
)
def test_the_admins_footer_follows_each_footer_table_text(
    tmp_path: Path, footer: str, carried: str
) -> None:
    """Review rev205 F3: Postfix uses a footer map's entry instead of
    smtpd_reject_footer, which the admin's replies lost. (Through Postfix:
    tests/e2e/test_postfix.py, test_footer_keeps_percent_and_dollar_signs_...)"""
    cfg = config(tmp_path)
    result = make_plan(cfg, smtpd_reject_footer=footer)
    assert f"/^503 5\\.5\\.1 Error: need MAIL command/ \\c (请先发送 MAIL){carried}" in (
        result.footers.splitlines()
    )


def test_the_relay_refusal_stands_in_main_cf_as_written(tmp_path: Path) -> None:
    """Review rev75 F4: "$user" in an overridden text was expanded by Postfix (to
    nothing) and a "}" ended the static map early."""
    cfg = config(
        tmp_path,
        {
            "replies": {
                "override": {"host_denies_relay": {"text": {"en": "no relay for $user {here}."}}}
            }
        },
    )
    replies = load_replies(cfg.replies, cfg.file)
    assert relay_reply(replies, utf8=False) == "553 5.7.1 no relay for $$user (here)."


@pytest.mark.parametrize("text", ["a } b { c", "see {policy here", "costs $5"])
def test_an_entry_written_before_the_text_was_escaped_is_replaced(
    tmp_path: Path, text: str
) -> None:
    """Review rev76 N3: an earlier release wrote the text as is; a brace in it broke
    Postfix's list, the entry was not recognised, and rerunning postfix-config kept it
    first (the cut-off text) or left Postfix unable to start."""
    cfg = config(tmp_path, {"replies": {"override": {"host_denies_relay": {"text": {"en": text}}}}})
    replies = load_replies(cfg.replies, cfg.file)
    old = f"check_recipient_access static:{{553 5.7.1 {text} (拒绝中继)}}"
    new = f"check_recipient_access static:{{{relay_reply(replies, utf8=True)}}}"
    written = (
        f"permit_mynetworks, permit_sasl_authenticated, permit_auth_destination, {old},"
        " defer_unauth_destination"
    )
    result = make_plan(cfg, smtpd_relay_restrictions=written)
    value = changes(result).get("smtpd_relay_restrictions", written)
    assert old not in value
    assert value.count("check_recipient_access") == 1
    assert new in value
    assert value.endswith("defer_unauth_destination")
    # Judged on what is written, not on Postfix's reading of the broken entry (rev77
    # R2: a false "open relay possible").
    assert not any("open relay" in p for p in result.problems)


def test_an_admins_own_entry_with_the_relay_text_stays(tmp_path: Path) -> None:
    """Review rev77 R1: the entry an earlier release wrote is found as text only in the
    shape it was written (after permit_auth_destination, a relay guard right after
    it); an admin's reject-all with the same text refuses strangers and stays."""
    cfg = config(
        tmp_path, {"replies": {"override": {"host_denies_relay": {"text": {"en": "costs $5"}}}}}
    )
    own = "check_recipient_access static:{553 5.7.1 costs $5 (拒绝中继)}"
    recipient = f"permit_mynetworks, permit_sasl_authenticated, {own}"
    result = make_plan(cfg, smtpd_recipient_restrictions=recipient)
    assert changes(result).get("smtpd_recipient_restrictions", recipient) == recipient


def test_footers_only_ascii_when_utf8_is_not_always(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    replies = load_replies(cfg.replies, cfg.file)
    ascii_only = postfix_footer_regexp(replies, utf8=False)
    assert ascii_only.isascii()
    assert ascii_only.splitlines() == [
        "/^552 5\\.3\\.4 Message size exceeds fixed limit/ \\c (message is too long.)",
        "/^552 5\\.3\\.4 Error: message file too big/ \\c (message is too long.)",
        "/^552 5\\.3\\.4 Chunk exceeds message size limit/ \\c (message is too long.)",
    ]
    assert "(请先发送 MAIL)" in postfix_footer_regexp(replies, utf8=True)


#: A reply Postfix gives for each footer pattern, in POSTFIX_FOOTERS order.
POSTFIX_REPLIES = (
    "503 5.5.1 Error: need MAIL command",
    "503 5.5.1 Error: need RCPT command",
    "554 5.5.1 Error: no valid recipients",
    "503 5.5.1 Error: nested MAIL command",
    "503 5.5.1 Error: send HELO/EHLO first",
    "502 5.5.2 Error: command not recognized",
    "501 5.5.4 Syntax: MAIL FROM:<address>",
    "550 5.5.2 Error: bare <LF> received",
    "501 5.1.7 Bad sender address syntax",
    "501 5.1.3 Bad recipient address syntax",
    "552 5.3.4 Message size exceeds fixed limit",
    "552 5.3.4 Error: message file too big",
    "552 5.3.4 Chunk exceeds message size limit",
)


def test_every_footer_rule_is_one_postfix_reads(tmp_path: Path) -> None:
    """Real postmap over the generated table: no rule skipped with a warning, and each
    of Postfix's replies finds its own footer."""
    postmap = shutil.which("postmap") or "/usr/sbin/postmap"
    if not Path(postmap).exists():
        pytest.skip("postmap not installed (Debian package postfix)")
    cfg = config(tmp_path)
    table = tmp_path / "footers.regexp"
    table.write_text(postfix_footer_regexp(load_replies(cfg.replies, cfg.file), utf8=True))
    conf = tmp_path / "postfix"
    conf.mkdir()
    write_settled(conf / "main.cf", "")
    assert len(POSTFIX_REPLIES) == len(POSTFIX_FOOTERS)
    for line, (_pattern, reply_id, _english) in zip(POSTFIX_REPLIES, POSTFIX_FOOTERS, strict=True):
        found = subprocess.run(
            [postmap, "-c", str(conf), "-q", line, f"regexp:{table}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert found.stderr == "", found.stderr
        assert found.returncode == 0, line
        zh = load_replies(cfg.replies, cfg.file).rows[reply_id].text["zh"]
        assert zh in found.stdout, (line, found.stdout)


def test_script_and_fragment_carry_the_same_settings(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    result = make_plan(cfg)
    script = shell_script(result)
    fragment = main_cf_fragment(result)
    for change in result.changes:
        assert f"{change.name} = {change.value}" in fragment
        assert f"# {change.reason}" in script
    assert "postconf -e 'smtpd_milters = " in script  # the system instance: no -c
    assert "cat > /etc/postfix/smtpguard_footers.regexp <<'SMTPGUARD_EOF'" in script


@pytest.mark.integration
def test_contrib_and_readme_are_the_generator_output() -> None:
    """contrib/postfix/ and the README's example show what postfix-config prints for
    the sample config on a stock Debian 12 Postfix (read with the real postconf)."""
    for path, text in outputs().items():
        assert path.read_text() == text, f"{path} is stale: see tests/support/contrib.py"


def test_a_slower_smtpguard_than_the_milter_timeouts_is_a_note(tmp_path: Path) -> None:
    """Postfix waits content_timeout (300 s) for the end-of-message reply: a clamd
    with virus.timeout 200 (connect, then the verdict) may take longer; a note, as the
    entry's timeouts are not what to change."""
    assert not any("_timeout=" in n for n in make_plan(config(tmp_path)).notes)
    slow = config(tmp_path / "slow", {"virus": {"backend": "clamd", "timeout": 200.0}})
    (note,) = [n for n in make_plan(slow).notes if "_timeout=" in n]
    assert note.startswith("content_timeout=300s in smtpguard's smtpd_milters entry is below")
    assert "(headers, body and end of message;" in note
    # MAIL FROM may take two stages (16 s), a quarter of dns.timeout 0.5 s given back
    # to a lookup that waited for a slot, and the state and directory: 17.4 s, under
    # the entry's 30 s; but a step may first wait as long for a libmilter thread.
    dns = config(tmp_path / "dns", {"dns": {"nameservers": ["127.0.0.1"], "stage_deadline": 8.0}})
    (note,) = [n for n in make_plan(dns).notes if "_timeout=" in n]
    assert note.startswith("command_timeout=30s in smtpguard's smtpd_milters entry is below")
    assert "twice the 17.4 s smtpguard may take" in note


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("100%% 检查", "100% 检查"),  # the table's "%%" is libmilter's escape of "%"
        ("费用 $5", "费用 $$$$5"),  # a regexp substitution, then a footer macro
        ("plain", "plain"),
    ],
)
def test_footer_text_survives_postfixs_two_expansions(text: str, written: str) -> None:
    assert footer_text(text) == written


# --- master.cf services ----------------------------------------------------------------

#: Debian's template and an amavis-style content filter (found by review, through a real
#: Postfix: the reinjection smtpd ran smtpguard a second time, and a service with
#: other milters was an open relay with relay_control = "milter").
MASTER_CF = """\
smtp      inet  n       -       y       -       -       smtpd
submission inet n       -       y       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
2525      inet  n       -       y       -       -       smtpd
  -o smtpd_milters=inet:127.0.0.1:8891
127.0.0.1:10025 inet n  -       n       -       -       smtpd
  -o content_filter=
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks
  -o mynetworks=127.0.0.0/8
pickup    unix  n       -       y       60      1       pickup
"""


def _instance(tmp_path: Path, main_cf: str, master_cf: str = MASTER_CF) -> str:
    if not (shutil.which("postconf") or Path("/usr/sbin/postconf").exists()):
        pytest.skip("postconf not installed (Debian package postfix)")
    conf = tmp_path / "postfix"
    conf.mkdir()
    write_settled(conf / "main.cf", main_cf)
    write_settled(conf / "master.cf", master_cf)
    return str(conf)


def test_master_cf_smtpd_services_are_read(tmp_path: Path) -> None:
    services = read_postconf(_instance(tmp_path, "")).services
    assert [s.label for s in services] == [
        "smtp/inet",
        "submission/inet",
        "2525/inet",
        "127.0.0.1:10025/inet",
    ]
    assert services[3].overrides["content_filter"] == ""
    assert services[2].overrides == {"smtpd_milters": "inet:127.0.0.1:8891"}


#: The shipped default: where Debian's chrooted smtpd reaches it.
DEFAULT_SOCKET = "unix:/var/spool/postfix/smtpguard/smtpguard.sock"


def _service_plan(
    tmp_path: Path, extra: dict[str, Any] | None, main_cf: str, master_cf: str = MASTER_CF
) -> Plan:
    """The plan for an instance that already has smtpguard in main.cf's smtpd_milters,
    at the default socket (inside the queue directory) unless ``extra`` sets one."""
    cfg = config(tmp_path, merge({"milter": {"socket": DEFAULT_SOCKET}}, extra or {}))
    # Debian's main.cf splits address extensions as the site does (another delimiter
    # keeps Postfix's own recipient check: test_..._recipient_delimiter_...).
    main_cf = "recipient_delimiter = +\n" + main_cf
    current = read_postconf(_instance(tmp_path, main_cf, master_cf))
    entry = "{ " + postfix_milter_address(cfg.milter.socket) + " }"
    attached = Settings(
        raw={**current.raw, "smtpd_milters": entry},
        expanded={**current.expanded, "smtpd_milters": entry},
        services=current.services,
    )
    return plan(cfg, load_replies(cfg.replies, cfg.file), attached)


def test_a_submission_service_offering_auth_before_starttls_is_noted(tmp_path: Path) -> None:
    """Review rev222 F2, read from a real postconf: a service's own -o enables SASL
    without smtpd_tls_auth_only; one with it, and MASTER_CF's submission (encrypt),
    are fine."""
    lines = [
        "2588      inet  n       -       y       -       -       smtpd",
        "  -o smtpd_sasl_auth_enable=yes",
        "2587      inet  n       -       y       -       -       smtpd",
        "  -o smtpd_sasl_auth_enable=yes",
        "  -o smtpd_tls_auth_only=yes",
    ]
    result = _service_plan(tmp_path, None, "", MASTER_CF + "\n".join(lines) + "\n")
    noted = [n for n in result.notes if "offers AUTH before STARTTLS" in n]
    assert [n.split(": ", 1)[0] for n in noted] == ["master.cf service 2588/inet"]


def test_auth_in_clear_is_noted_for_the_services_that_offer_it(tmp_path: Path) -> None:
    """Review rev223 L3, through a real Postfix 3.7 with Dovecot: main.cf was noted
    though every service overrode it, and the legacy smtpd_enforce_tls was not read."""
    lines = [
        "2589      inet  n       -       y       -       -       smtpd",
        "  -o smtpd_tls_security_level=",
        "  -o smtpd_enforce_tls=yes",
        "2590      inet  n       -       y       -       -       smtpd",
        "  -o smtpd_sasl_auth_enable=no",
    ]
    main_cf = "smtpd_sasl_auth_enable = yes\n"
    result = _service_plan(tmp_path, None, main_cf, MASTER_CF + "\n".join(lines) + "\n")
    noted = sorted(n.split(": ", 1)[0] for n in result.notes if "offers AUTH before STARTTLS" in n)
    # smtp and 2525 take main.cf's values; submission and 2589 encrypt, 2590 has no
    # AUTH, 127.0.0.1:10025 is reached from this host alone.
    assert noted == ["master.cf service 2525/inet", "master.cf service smtp/inet"]


def test_a_reinjection_smtpd_that_runs_smtpguard_again_is_a_conflict(tmp_path: Path) -> None:
    main_cf = "content_filter = smtp-amavis:[127.0.0.1]:10024\n"
    result = _service_plan(tmp_path, None, main_cf)
    (problem,) = [p for p in result.problems if "127.0.0.1:10025/inet" in p]
    assert "a second time" in problem
    assert "no_milters" in problem
    assert any("2525/inet: smtpguard does not run there" in n for n in result.notes)
    fixed = MASTER_CF.replace("no_header_body_checks", "no_header_body_checks,no_milters")
    other = tmp_path / "fixed"
    other.mkdir()
    result = _service_plan(other, None, main_cf, fixed)
    assert not any("10025" in p for p in result.problems)
    assert any(
        "127.0.0.1:10025/inet: smtpguard does not run there (no_milters)" in n for n in result.notes
    )


def test_smtpguard_kept_off_port_25_by_an_override_is_a_conflict(tmp_path: Path) -> None:
    """Review rev166 F5: the admin's -o smtpd_milters on port 25 kept smtpguard off
    the service outside mail comes in on (a listed sender passed) while --check said
    "no conflicts"; a loopback-only smtp service is not that one."""
    cases = (
        ("smtp", True),
        ("0.0.0.0:25", True),
        ("127.0.0.1:smtp", False),
        ("10.0.0.1:smtp", False),
    )
    for name, conflict in cases:
        master_cf = MASTER_CF.replace(
            "smtp      inet  n       -       y       -       -       smtpd\n",
            f"{name} inet n - y - - smtpd\n  -o smtpd_milters=inet:127.0.0.1:8891\n",
        )
        folder = tmp_path / name.replace(":", "_")
        folder.mkdir()
        result = _service_plan(folder, None, "", master_cf)
        found = [p for p in result.problems if f"{name}/inet: smtpguard does not run there" in p]
        assert bool(found) is conflict, result.problems
        if conflict:
            assert "on the service mail from other hosts comes in on" in found[0]
    # Nowhere but on loopback: a conflict too.
    only = "2525 inet n - y - - smtpd\n  -o smtpd_milters=inet:127.0.0.1:8891\n"
    folder = tmp_path / "none"
    folder.mkdir()
    result = _service_plan(folder, None, "", only)
    assert any(
        p.startswith("smtpguard runs on none of the smtpd services") for p in result.problems
    )
    assert not [p for p in _service_plan(tmp_path / "ok", None, "").problems if "runs on none" in p]


@pytest.mark.parametrize(
    ("screen_option", "main_cf", "pass_name", "conflict"),
    [
        ("", "", "smtpd", True),
        ("  -o smtpd_service_name=smtpd-in\n", "", "smtpd-in", True),
        ("", "smtpd_service_name = smtpd-in\n", "smtpd-in", True),
        # A pass service no postscreen on port 25 hands clients to.
        ("", "", "smtpd-in", False),
    ],
    ids=["smtpd", "option", "main.cf", "not-handed-to"],
)
def test_smtpguard_kept_off_postscreens_pass_service_is_a_conflict(
    tmp_path: Path, screen_option: str, main_cf: str, pass_name: str, conflict: bool
) -> None:
    """Review rev177 F2, through a real Postfix 3.7: postscreen's -o
    smtpd_service_name=smtpd-in handed port 25's clients to a pass service without
    smtpguard, a forged sender was accepted, and --check said only a note."""
    master_cf = MASTER_CF.replace(
        "smtp      inet  n       -       y       -       -       smtpd\n",
        "smtp      inet  n       -       y       -       1       postscreen\n"
        + screen_option
        + f"{pass_name}  pass  -       -       y       -       -       smtpd\n"
        "  -o smtpd_milters=inet:127.0.0.1:8891\n",
    )
    result = _service_plan(tmp_path, None, main_cf, master_cf)
    found = [
        p
        for p in result.problems
        if p.startswith(f"master.cf service {pass_name}/pass: smtpguard does not run there")
    ]
    assert bool(found) is conflict, result.problems
    if conflict:
        assert "on the service mail from other hosts comes in on" in found[0]


def test_unknown_recipients_stay_checked_where_smtpguard_does_not_run(tmp_path: Path) -> None:
    """Review rev41, through a real Postfix: main.cf's ${smtpd_milters?{no}:{yes}} holds
    on every service, so on 2525 (milters of its own) unknown@example.com went from 550
    to 250, and was bounced later (backscatter)."""
    result = _service_plan(tmp_path, None, "")
    assert "smtpd_reject_unlisted_recipient" not in changes(result)
    (note,) = [n for n in result.notes if n.startswith("smtpd_reject_unlisted_recipient")]
    assert "master.cf service 2525/inet (smtpd_milters = inet:127.0.0.1:8891)" in note
    # An earlier run's conditional goes back to yes.
    (tmp_path / "earlier").mkdir()
    earlier = _service_plan(
        tmp_path / "earlier", None, f"smtpd_reject_unlisted_recipient = {UNLISTED_WHILE_MILTERS}\n"
    )
    assert changes(earlier)["smtpd_reject_unlisted_recipient"] == "yes"
    assert any(p.startswith("smtpd_reject_unlisted_recipient: is ") for p in earlier.problems)
    # The service keeps Postfix's check with an override of its own: no objection.
    master = MASTER_CF.replace(
        "  -o smtpd_milters=inet:127.0.0.1:8891\n",
        "  -o smtpd_milters=inet:127.0.0.1:8891\n  -o smtpd_reject_unlisted_recipient=yes\n",
    )
    (tmp_path / "own").mkdir()
    own = _service_plan(tmp_path / "own", None, "", master)
    assert changes(own)["smtpd_reject_unlisted_recipient"] == UNLISTED_WHILE_MILTERS
    # Likewise a client smtpd_milter_maps hands to other milters.
    (tmp_path / "maps").mkdir()
    maps = _service_plan(
        tmp_path / "maps", None, "smtpd_milter_maps = cidr:/etc/postfix/milters\n", master
    )
    assert "smtpd_reject_unlisted_recipient" not in changes(maps)


def test_a_socket_a_chrooted_smtpd_cannot_reach_is_a_conflict(tmp_path: Path) -> None:
    """Found by review, through a real Postfix: a socket outside queue_directory with
    Debian's chrooted smtpd deferred every message while --check said "no conflicts"."""
    outside = {"milter": {"socket": "unix:/run/smtpguard/smtpguard.sock"}}
    result = _service_plan(tmp_path, outside, "")
    chrooted = [p for p in result.problems if "runs chrooted" in p]
    # smtp and submission (chroot y); not 2525 (no smtpguard) nor 10025 (chroot n).
    assert [p.split(":", 1)[0] for p in chrooted] == [
        "master.cf service smtp/inet",
        "master.cf service submission/inet",
    ]
    assert "/run/smtpguard/smtpguard.sock" in chrooted[0]
    assert set(chrooted) <= set(result.unresolved)
    inside = tmp_path / "inside"
    inside.mkdir()
    result = _service_plan(inside, None, "")  # the default socket, in the queue directory
    assert not any("runs chrooted" in p for p in result.problems)


def test_a_socket_the_chroot_has_too_is_no_conflict(tmp_path: Path) -> None:
    """Second review: a socket directory bind-mounted at the same path under the queue
    directory works (measured through a real Postfix), and was reported anyway."""
    queue = tmp_path / "queue"
    sockets = tmp_path / "run"
    extra = {"milter": {"socket": f"unix:{sockets}/smtpguard.sock"}}
    main_cf = f"queue_directory = {queue}\n"
    result = _service_plan(tmp_path, extra, main_cf)
    chrooted = [p for p in result.problems if "runs chrooted" in p]
    assert len(chrooted) == 2
    # Where it would work, in this instance's queue directory.
    assert f"unix:{queue}/smtpguard/smtpguard.sock" in chrooted[0]
    point = queue / str(sockets).lstrip("/")  # the same path inside the chroot
    point.mkdir(parents=True)
    sockets.mkdir()
    # A directory of that name is not the socket's (third review: a leftover passed),
    # nor is a symbolic link to it, which leads to itself once inside the chroot.
    (tmp_path / "leftover").mkdir()
    result = _service_plan(tmp_path / "leftover", extra, main_cf)
    assert any("is another directory for it" in p for p in result.problems)
    point.rmdir()
    point.symlink_to(sockets)
    (tmp_path / "link").mkdir()
    result = _service_plan(tmp_path / "link", extra, main_cf)
    assert any("Too many levels of symbolic links" in p for p in result.problems)
    point.unlink()
    point.mkdir()
    # A link higher up, such as queue/tmp -> /tmp, passes outside and loops inside.
    high = tmp_path / "queue2"
    high.mkdir()
    (high / str(sockets).lstrip("/").split("/")[0]).symlink_to(
        "/" + str(sockets).lstrip("/").split("/")[0]
    )
    (tmp_path / "high").mkdir()
    result = _service_plan(tmp_path / "high", extra, f"queue_directory = {high}\n")
    assert any("Too many levels of symbolic links" in p for p in result.problems)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    subprocess.run(["mount", "--bind", str(sockets), str(point)], check=True)
    try:
        result = _service_plan(mounted, extra, main_cf)
    finally:
        subprocess.run(["umount", str(point)], check=True)
    assert not any("runs chrooted" in p for p in result.problems)


def test_links_in_the_chroot_are_followed_as_the_chroot_follows_them(tmp_path: Path) -> None:
    """Review rev41: a link under the queue directory to a directory outside it broke
    the default relative address with no word from --check (every message 451), and a
    relative link that leads to the socket's directory in there too was reported."""
    queue = tmp_path / "queue"
    queue.mkdir()
    main_cf = f"queue_directory = {queue}\n"
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    (queue / "smtpguard").symlink_to(elsewhere)  # fine outside, a dangling name inside
    inside = {"milter": {"socket": f"unix:{queue}/smtpguard/smtpguard.sock"}}
    (tmp_path / "a").mkdir()
    result = _service_plan(tmp_path / "a", inside, main_cf)
    smtp, _submission = [p for p in result.problems if "runs chrooted" in p]
    assert smtp.startswith("master.cf service smtp/inet: runs chrooted (chroot y in master.cf)")
    assert "(/smtpguard: No such file or directory)" in smtp
    # A relative link that leads to the real directory in the chroot and outside.
    (queue / "smtpguard").unlink()
    (queue / "sockets").mkdir()
    (queue / "smtpguard").symlink_to("sockets")
    (tmp_path / "b").mkdir()
    result = _service_plan(tmp_path / "b", inside, main_cf)
    assert not any("runs chrooted" in p for p in result.problems)
    # An absolute link leads from the chroot's root: right outside, nowhere in there.
    (queue / "smtpguard").unlink()
    (queue / "smtpguard").symlink_to(queue / "sockets")
    (tmp_path / "c").mkdir()
    result = _service_plan(tmp_path / "c", inside, main_cf)
    assert any("(/smtpguard: No such file or directory)" in p for p in result.problems)
    # ... or to another directory of the same name in there.
    (queue / str(queue).lstrip("/") / "sockets").mkdir(parents=True)
    (tmp_path / "d").mkdir()
    result = _service_plan(tmp_path / "d", inside, main_cf)
    assert any("is another directory for it (/smtpguard leads to" in p for p in result.problems)


def test_chroot_path_fails_on_dot_dot_after_a_missing_name(tmp_path: Path) -> None:
    """As the kernel: ".." of a name that does not exist is ENOENT (review rev44)."""
    (tmp_path / "real").mkdir()
    assert chroot_path(str(tmp_path), PurePosixPath("/real/../real")) == f"{tmp_path}/real"
    with pytest.raises(FileNotFoundError):
        chroot_path(str(tmp_path), PurePosixPath("/missing/../real"))


@pytest.mark.parametrize(
    ("level", "chrooted"), [("", True), ("0", True), ("1", False), ("3.6", False)]
)
def test_chroot_dash_is_y_below_compatibility_level_1(
    tmp_path: Path, level: str, chrooted: bool
) -> None:
    """Review rev41, measured on Postfix 3.7: with compatibility_level unset (0) a "-"
    in the chroot column runs smtpd and cleanup chrooted ("using backwards-compatible
    default setting chroot=y"), and every message was deferred with no conflict."""
    master = MASTER_CF.replace(
        "       y       -       -       smtpd", "       -       -       -       smtpd"
    )
    outside = {"milter": {"socket": "unix:/run/smtpguard/smtpguard.sock"}}
    main_cf = f"compatibility_level = {level}\n" if level else ""
    result = _service_plan(tmp_path, outside, main_cf, master)
    found = [p for p in result.problems if "runs chrooted" in p]
    expected = ["master.cf service smtp/inet", "master.cf service submission/inet"]
    assert [p.split(":", 1)[0] for p in found] == (expected if chrooted else [])
    assert all("(chroot - (y below compatibility_level 1) in master.cf)" in p for p in found)


def test_default_action_accept_in_milter_mode_blocks(tmp_path: Path) -> None:
    """Review rev44, through a real Postfix: with relay_control = "milter" an entry with
    default_action=accept relayed a stranger's mail while smtpguard was down, and the
    script applied with exit 0. main.cf's entry is rewritten to tempfail; a service's
    own smtpd_milters (master.cf, which postfix-config does not write) stops the
    script, as does main.cf's reached through a $parameter; a service's own
    -o milter_default_action for a bare entry (rev46) stops it too."""
    milter_mode = {"site": {"relay_control": "milter"}, "milter": {"socket": DEFAULT_SOCKET}}
    cfg = config(tmp_path, milter_mode)
    accept = "{ unix:smtpguard/smtpguard.sock, default_action=accept }"
    result = make_plan(cfg, smtpd_milters=accept)
    assert changes(result)["smtpd_milters"] == (
        "{ unix:smtpguard/smtpguard.sock, default_action=tempfail }"
    )
    assert not result.blocking
    for override in (
        "  -o { smtpd_milters = { unix:smtpguard/smtpguard.sock, default_action=accept } }\n",
        "  -o { smtpd_milters = { unix:smtpguard/smtpguard.sock, default_action=Accept } }\n",
        "  -o smtpd_milters=unix:smtpguard/smtpguard.sock\n  -o milter_default_action=accept\n",
    ):
        master = MASTER_CF.replace("  -o smtpd_milters=inet:127.0.0.1:8891\n", override)
        where = tmp_path / str(abs(hash(override)))
        where.mkdir()
        service = _service_plan(where, milter_mode, "", master)
        assert [p.split(":", 1)[0] for p in service.blocking] == ["master.cf service 2525/inet"]
        # In the default mode Postfix still refuses relaying: a conflict, not a stop.
        (where / "plain").mkdir()
        plain = _service_plan(where / "plain", {"milter": {"socket": DEFAULT_SOCKET}}, "", master)
        assert not plain.blocking
        assert any(
            p.startswith("master.cf service 2525/inet: default_action") for p in plain.problems
        )


def test_default_action_accept_where_the_service_refuses_outsiders_does_not_block(
    tmp_path: Path,
) -> None:
    """Review rev177 F3: a submission-like service whose own restrictions refuse a
    stranger was stopped as an open relay; mail accepted unchecked while smtpguard is
    down stays a conflict."""
    milter_mode = {"site": {"relay_control": "milter"}, "milter": {"socket": DEFAULT_SOCKET}}
    override = (
        "  -o { smtpd_milters = { unix:smtpguard/smtpguard.sock, default_action=accept } }\n"
        "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject\n"
    )
    master = MASTER_CF.replace("  -o smtpd_milters=inet:127.0.0.1:8891\n", override)
    result = _service_plan(tmp_path, milter_mode, "", master)
    assert not result.blocking
    (problem,) = [p for p in result.problems if p.startswith("master.cf service 2525/inet")]
    assert "default_action for" in problem
    assert "open relay" not in problem


@pytest.mark.parametrize("milters", ["smtpguard-accept", "other"])
def test_a_relay_guard_before_the_recipient_closes_nothing(tmp_path: Path, milters: str) -> None:
    """Review rev180 F1, through a real Postfix 3.7: with -o smtpd_delay_reject=no the
    client restrictions run before there is a recipient, so reject_unauth_destination
    there never fires; the plan applied the pass-through and a stranger relayed while
    smtpguard was down."""
    milter_mode = {"site": {"relay_control": "milter"}, "milter": {"socket": DEFAULT_SOCKET}}
    entry = (
        "  -o { smtpd_milters = { unix:smtpguard/smtpguard.sock, default_action=accept } }\n"
        if milters == "smtpguard-accept"
        else "  -o smtpd_milters=inet:127.0.0.1:8891\n"
    )
    override = (
        entry + "  -o smtpd_delay_reject=no\n"
        "  -o smtpd_client_restrictions=permit_mynetworks,reject_unauth_destination\n"
    )
    master = MASTER_CF.replace("  -o smtpd_milters=inet:127.0.0.1:8891\n", override)
    result = _service_plan(tmp_path, milter_mode, "", master)
    (blocking,) = result.blocking
    assert blocking.startswith("master.cf service 2525/inet")
    assert "open relay" in blocking
    delayed = tmp_path / "delayed"
    delayed.mkdir()
    closed = _service_plan(
        delayed, milter_mode, "", master.replace("  -o smtpd_delay_reject=no\n", "")
    )
    assert not closed.blocking


def test_a_service_reaching_smtpguard_by_another_path_is_checked_chrooted(tmp_path: Path) -> None:
    """Review rev44, through a real Postfix: a chrooted service with -o smtpd_milters
    naming smtpguard by its absolute path deferred every message, and a chrooted
    cleanup with such a non_smtpd_milters kept mail from sendmail(1) queued, while
    --check said "no conflicts" (the check tested the address it would write)."""
    absolute = f"unix:{DEFAULT_SOCKET.removeprefix('unix:')}"
    master = (
        MASTER_CF.replace(
            "  -o smtpd_milters=inet:127.0.0.1:8891\n", f"  -o smtpd_milters={absolute}\n"
        )
        + "cleanup   unix  n       -       y       -       0       cleanup\n"
    )
    result = _service_plan(tmp_path, None, f"non_smtpd_milters = {absolute}\n", master)
    chrooted = [p.split(":", 1)[0] for p in result.problems if "runs chrooted" in p]
    assert chrooted == ["master.cf service 2525/inet", "master.cf service cleanup/unix"]
    assert any(
        p.startswith(f"master.cf service 2525/inet: names smtpguard's socket {absolute}")
        for p in result.problems
    )


def test_main_cf_reaching_smtpguard_through_a_parameter_is_checked_chrooted(
    tmp_path: Path,
) -> None:
    """Review rev46, through a real Postfix: smtpd_milters = $my_milters with the
    absolute path, which postfix-config does not rewrite; chrooted services answered
    451 while the check tested the relative spelling and said "no conflicts"."""
    cfg = config(tmp_path, {"milter": {"socket": DEFAULT_SOCKET}})
    absolute = DEFAULT_SOCKET.removeprefix("unix:")
    main_cf = f"my_milters = unix:{absolute}\nsmtpd_milters = $my_milters\n"
    current = read_postconf(_instance(tmp_path, main_cf))
    result = plan(cfg, load_replies(cfg.replies, cfg.file), current)
    chrooted = [p.split(":", 1)[0] for p in result.problems if "runs chrooted" in p]
    assert chrooted == ["master.cf service smtp/inet", "master.cf service submission/inet"]


def test_smtpguard_after_another_milter_through_a_parameter_is_a_conflict(
    tmp_path: Path,
) -> None:
    """Review rev166 F4: smtpd_milters = $my_milters with opendkim first was neither
    rewritten nor reported."""
    cfg = config(tmp_path, {"milter": {"socket": DEFAULT_SOCKET}})
    ours = f"{{ unix:smtpguard/smtpguard.sock, {OUR_SETTINGS} }}"
    main_cf = f"my_milters = inet:127.0.0.1:8891, {ours}\nsmtpd_milters = $my_milters\n"
    result = plan(
        cfg, load_replies(cfg.replies, cfg.file), read_postconf(_instance(tmp_path, main_cf))
    )
    (problem,) = [p for p in result.problems if "comes before smtpguard" in p]
    assert problem.startswith(
        "smtpd_milters: another milter (inet:127.0.0.1:8891) comes before smtpguard"
        " (unix:smtpguard/smtpguard.sock) in $my_milters"
    )
    first = tmp_path / "first"
    first.mkdir()
    main_cf = f"my_milters = {ours}, inet:127.0.0.1:8891\nsmtpd_milters = $my_milters\n"
    result = plan(
        cfg, load_replies(cfg.replies, cfg.file), read_postconf(_instance(first, main_cf))
    )
    assert not [p for p in result.problems if "comes before smtpguard" in p]


def test_a_service_with_milters_emptied_keeps_the_directory_reply(tmp_path: Path) -> None:
    """Review rev44: -o smtpd_milters= makes main.cf's ${smtpd_milters?{no}:{yes}} say
    yes there, so Postfix checks recipients on it; no reason to give up the table's
    mailbox_unavailable elsewhere."""
    master = MASTER_CF.replace("  -o smtpd_milters=inet:127.0.0.1:8891\n", "  -o smtpd_milters=\n")
    result = _service_plan(tmp_path, None, "", master)
    assert changes(result)["smtpd_reject_unlisted_recipient"] == UNLISTED_WHILE_MILTERS


def test_a_chrooted_cleanup_with_non_smtpd_milters(tmp_path: Path) -> None:
    """Second review: cleanup runs non_smtpd_milters; chrooted (Debian's master.cf), it
    kept mail from sendmail(1) queued while --check said nothing."""
    master_cf = MASTER_CF + "cleanup   unix  n       -       y       -       0       cleanup\n"
    extra = {"milter": {"socket": "unix:/run/smtpguard/smtpguard.sock"}}
    cfg = config(tmp_path, extra)
    current = read_postconf(_instance(tmp_path, "", master_cf))
    replies = load_replies(cfg.replies, cfg.file)
    attached = plan(cfg, replies, current, non_smtpd_milters=True)
    assert any(
        p.startswith("master.cf service cleanup/unix: runs chrooted") for p in attached.problems
    )
    alone = plan(cfg, replies, current)  # smtpd only: cleanup runs no milter of ours
    assert not any("cleanup/unix" in p for p in alone.problems)


def test_milter_mode_open_relay_on_a_service_without_smtpguard(tmp_path: Path) -> None:
    result = _service_plan(tmp_path, {"site": {"relay_control": "milter"}}, "")
    (problem,) = [p for p in result.problems if "2525/inet" in p]
    assert "open relay" in problem
    # The script stops before changing anything (review rev41, through a real Postfix:
    # the conflict was a comment, `sh -e` applied the pass-through and a stranger's
    # RCPT on that service went from 454 to 250).
    assert result.blocking == (problem,)
    script = shell_script(result)
    assert script.index("\nexit 1\n") < script.index("postconf ")
    main_cf = Path(result.config_directory, "main.cf")
    before = main_cf.read_text()
    done = subprocess.run(["sh", "-e"], input=script, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "nothing changed: the changes would leave an open relay" in done.stderr
    assert main_cf.read_text() == before
    assert not Path(result.footer_path).exists()
    fragment = main_cf_fragment(result)
    assert "# NOT APPLICABLE: these settings would open a relay: " in fragment
    assert "\nsmtpd_relay_restrictions = " not in fragment
    # The loopback reinjection service is no relay for strangers, and the services
    # that run smtpguard are no conflict.
    assert not any("10025" in p or "submission" in p or "smtp/inet" in p for p in result.problems)
    own = MASTER_CF.replace(
        "  -o smtpd_milters=inet:127.0.0.1:8891\n",
        "  -o smtpd_milters=inet:127.0.0.1:8891\n"
        "  -o smtpd_relay_restrictions=permit_mynetworks,reject_unauth_destination\n",
    )
    other = tmp_path / "own"
    other.mkdir()
    result = _service_plan(other, {"site": {"relay_control": "milter"}}, "", own)
    assert not any("2525" in p for p in result.problems)


def test_a_service_override_is_read_as_postfix_expands_it(tmp_path: Path) -> None:
    """Debian's template: submission with ``-o smtpd_milters=$mua_milters``. Empty in
    main.cf, the pass-through is off there: no open relay; set to another milter, it is."""
    # Without a client restriction of its own: with one (Debian's template) the
    # service refuses outsiders at RCPT itself.
    master = MASTER_CF.replace(
        "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject\n",
        "  -o smtpd_milters=$mua_milters\n",
    ).replace("  -o smtpd_milters=inet:127.0.0.1:8891\n", "")
    milter_mode = {"site": {"relay_control": "milter"}}
    result = _service_plan(tmp_path, milter_mode, "mua_milters =\n", master)
    assert not any("submission" in p for p in result.problems)
    assert any("submission/inet: smtpguard does not run there" in n for n in result.notes)
    other = tmp_path / "other"
    other.mkdir()
    result = _service_plan(other, milter_mode, "mua_milters = inet:127.0.0.1:8891\n", master)
    (problem,) = [p for p in result.problems if "submission/inet" in p]
    assert "smtpd_milters = inet:127.0.0.1:8891" in problem


def _port_2600(*options: str) -> str:
    """A master.cf smtpd service on port 2600 with other milters than smtpguard and
    ``options`` (``name=value``) as its -o overrides."""
    lines = ["2600      inet  n       -       y       -       -       smtpd"]
    lines += [f"  -o {option}" for option in ("smtpd_milters=inet:127.0.0.1:8891", *options)]
    return "\n".join(lines) + "\n"


def _milter_mode_problems(tmp_path: Path, service: str, main_cf: str = "") -> list[str]:
    """The conflicts for MASTER_CF plus one service on port 2600 (found by review: each
    of these was an open relay or a second run that --check passed with exit 0)."""
    master = MASTER_CF + service
    result = _service_plan(tmp_path, {"site": {"relay_control": "milter"}}, main_cf, master)
    return [p for p in result.problems if "2600" in p]


@pytest.mark.parametrize(
    "override",
    [
        "  -o smtpd_recipient_restrictions=\n",
        "  -o smtpd_recipient_restrictions=check_policy_service,unix:private/policy\n",
    ],
    ids=["emptied", "policy-service"],
)
def test_an_override_that_does_not_refuse_relaying_is_still_open(
    tmp_path: Path, override: str
) -> None:
    service = "2600      inet  n       -       y       -       -       smtpd\n"
    service += "  -o smtpd_milters=inet:127.0.0.1:8891\n" + override
    (problem,) = _milter_mode_problems(tmp_path, service)
    assert "open relay" in problem


def test_an_override_that_refuses_relaying_closes_it(tmp_path: Path) -> None:
    service = "2600      inet  n       -       y       -       -       smtpd\n"
    service += "  -o smtpd_milters=inet:127.0.0.1:8891\n"
    service += "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
    assert _milter_mode_problems(tmp_path, service) == []


def test_no_milters_through_a_main_cf_parameter_is_read(tmp_path: Path) -> None:
    service = "2600      inet  n       -       y       -       -       smtpd\n"
    service += "  -o receive_override_options=$reinject_opts\n"
    main_cf = "reinject_opts = no_unknown_recipient_checks, no_milters\n"
    (problem,) = _milter_mode_problems(tmp_path, service, main_cf)
    assert "(no_milters)" in problem


@pytest.mark.parametrize(
    "proxy",
    ["smtpd_upstream_proxy_protocol=haproxy", "smtpd_authorized_xclient_hosts=127.0.0.1"],
    ids=["haproxy", "xclient"],
)
def test_a_loopback_service_behind_a_proxy_takes_outside_clients(
    tmp_path: Path, proxy: str
) -> None:
    """Found by review, each: a proxy hands the loopback smtpd outside clients."""
    service = "127.0.0.1:2600 inet n       -       y       -       -       smtpd\n"
    service += "  -o smtpd_milters=inet:127.0.0.1:8891\n"
    service += f"  -o {proxy}\n"
    (problem,) = _milter_mode_problems(tmp_path, service)
    assert "open relay" in problem


def test_a_reinjection_smtpd_with_the_filter_set_per_service(tmp_path: Path) -> None:
    """amavis set on the public smtpd only: the reinjection smtpd has no content_filter
    to empty, and still runs smtpguard a second time."""
    master = (
        "smtp      inet  n       -       y       -       -       smtpd\n"
        "  -o content_filter=smtp-amavis:[127.0.0.1]:10024\n"
        "127.0.0.1:10025 inet n  -       n       -       -       smtpd\n"
        "  -o mynetworks=127.0.0.0/8\n"
    )
    result = _service_plan(tmp_path, None, "", master)
    (problem,) = [p for p in result.problems if "127.0.0.1:10025/inet" in p]
    assert "a second time" in problem
    assert not any("smtp/inet" in p for p in result.problems)


def test_smtpd_milter_maps_in_milter_mode_is_a_conflict(tmp_path: Path) -> None:
    """Found by review: clients the map gives DISABLE skip smtpguard while the
    pass-through stays on (Postfix's own documented example)."""
    main_cf = "smtpd_milter_maps = cidr:/etc/postfix/milter_map\n"
    result = _service_plan(tmp_path, {"site": {"relay_control": "milter"}}, main_cf)
    assert any(p.startswith("smtpd_milter_maps (") and "open relay" in p for p in result.problems)
    other = tmp_path / "postfix-mode"
    other.mkdir()
    assert not any("smtpd_milter_maps" in p for p in _service_plan(other, None, main_cf).problems)


@pytest.mark.parametrize("access", ["static:OK", "static:ok"])
def test_static_ok_without_braces_passes_everything(tmp_path: Path, access: str) -> None:
    service = "2600      inet  n       -       y       -       -       smtpd\n"
    service += "  -o smtpd_milters=inet:127.0.0.1:8891\n"
    service += "  -o smtpd_relay_restrictions=check_client_access,"
    service += f"{access},reject_unauth_destination\n"
    (problem,) = _milter_mode_problems(tmp_path, service)
    assert "open relay" in problem


def test_a_client_restriction_that_refuses_outsiders_closes_relaying(tmp_path: Path) -> None:
    """Found by review: reported as an open relay, though Postfix refuses the outsider
    at RCPT (smtpd_delay_reject)."""
    service = "2600      inet  n       -       y       -       -       smtpd\n"
    service += "  -o smtpd_milters=inet:127.0.0.1:8891\n"
    service += "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject\n"
    assert _milter_mode_problems(tmp_path, service) == []


@pytest.mark.parametrize(
    "restriction",
    [
        "smtpd_client_restrictions=permit_sasl_authenticated,warn_if_reject,reject",
        "smtpd_relay_restrictions=permit_sasl_authenticated,warn_if_reject,"
        "reject_unauth_destination",
        "smtpd_helo_restrictions=permit_sasl_authenticated,reject",
    ],
    ids=["warn_if_reject", "warn_if_reject-guard", "helo-not-required"],
)
def test_a_restriction_that_spares_some_outsiders_leaves_relaying_open(
    tmp_path: Path, restriction: str
) -> None:
    """Review rev177 F1, through a real Postfix 3.7: a stranger relayed past each
    (warn_if_reject only logs the refusal after it; HELO restrictions are never applied
    to a client that sends no HELO), and postfix-config applied the pass-through."""
    (problem,) = _milter_mode_problems(tmp_path, _port_2600(restriction))
    assert "open relay" in problem


@pytest.mark.parametrize(
    "restriction",
    [
        "check_sender_access inline:{ boss@example.com=OK },reject_unauth_destination",
        "check_policy_service unix:private/policy,reject_unauth_destination",
        "permit_mx_backup,reject_unauth_destination",
        # Review rev191 F1: a restriction class (smtpd_restriction_classes) may answer
        # permit, whatever its name looks like.
        "Reject_Strangers,reject_unauth_destination",
        "reject_strangers,reject_unauth_destination",
        # Only a #define in Postfix's mail_params.h: smtpd takes it for a class
        # (review rev192 F3).
        "reject_unknown_forward_client_hostname,reject_unauth_destination",
    ],
    ids=["map", "policy", "mx-backup", "class", "class-lower-case", "no-built-in"],
)
def test_what_may_permit_before_the_guard_leaves_relaying_open(
    tmp_path: Path, restriction: str
) -> None:
    """Review rev182 F4, through a real Postfix 3.7: check_sender_access answering OK
    for boss@ before reject_unauth_destination was taken for closed, the pass-through
    applied, and a forged boss relayed."""
    service = _port_2600(f"smtpd_sender_restrictions={restriction}")
    (problem,) = _milter_mode_problems(tmp_path, service)
    assert "open relay" in problem


@pytest.mark.parametrize(
    "restriction",
    [
        "smtpd_client_restrictions=permit_mynetworks,check_helo_access,static:{REJECT}",
        "smtpd_client_restrictions=permit_mynetworks,check_sasl_access,static:{REJECT}",
        "smtpd_client_restrictions=permit_mynetworks,check_ccert_access,static:{REJECT}",
        "smtpd_sender_restrictions=permit_mynetworks,check_sender_mx_access,static:{REJECT}",
        "smtpd_client_restrictions=permit_mynetworks,check_client_mx_access,static:{REJECT}",
    ],
    ids=["helo", "sasl", "ccert", "sender-mx", "client-mx"],
)
def test_a_static_refusal_smtpd_may_not_look_up_leaves_relaying_open(
    tmp_path: Path, restriction: str
) -> None:
    """Review rev220 M1, through a real Postfix 3.7: a stranger without HELO (or login,
    certificate, an MX to look up) relayed past each, and --check said no conflicts."""
    (problem,) = _milter_mode_problems(tmp_path, _port_2600(restriction))
    assert "open relay" in problem


@pytest.mark.parametrize("access", ["check_recipient_access", "check_sender_access"])
def test_an_envelope_lookup_before_the_envelope_refuses_nobody(tmp_path: Path, access: str) -> None:
    """Review rev220 M1: in smtpd_client_restrictions with smtpd_delay_reject = no
    there is no sender or recipient yet, and smtpd skips the lookup; with the delay
    (Postfix's default) it is made at RCPT and refuses everyone who reaches it."""
    client = f"smtpd_client_restrictions=permit_mynetworks,{access},static:{{REJECT}}"
    early = _port_2600(client, "smtpd_delay_reject=no")
    (problem,) = _milter_mode_problems(tmp_path / "early", early)
    assert "open relay" in problem
    assert _milter_mode_problems(tmp_path / "delayed", _port_2600(client)) == []


def test_the_sender_list_looks_up_the_sender_without_the_delay(tmp_path: Path) -> None:
    """Review rev221 H1, through a real Postfix 3.7: with smtpd_delay_reject = no the
    sender restrictions still run at MAIL FROM, with the sender. A map answering OK
    for boss@ let a forged boss relay, and --check said no conflicts; a static refusal
    there refuses every outsider at MAIL FROM."""
    early = "smtpd_delay_reject=no"
    boss = "smtpd_sender_restrictions=check_sender_access,inline:{boss@example.com=OK},reject"
    (problem,) = _milter_mode_problems(tmp_path / "boss", _port_2600(early, boss))
    assert "open relay" in problem
    refuse = "smtpd_sender_restrictions=permit_mynetworks,check_sender_access,static:{REJECT}"
    assert _milter_mode_problems(tmp_path / "refuse", _port_2600(early, refuse)) == []


@pytest.mark.parametrize(
    "restriction",
    [
        "permit_mynetworks,permit_sasl_authenticated,reject_non_fqdn_sender,"
        "reject_unauth_destination",
        # Review rev184 F3: an RBL's (or sleep's) argument is no restriction.
        "reject_rbl_client,zen.spamhaus.org,permit_sasl_authenticated,reject",
        "permit_sasl_authenticated,reject_rhsbl_sender,dbl.spamhaus.org,sleep,1,"
        "reject_unauth_destination",
        # Postfix reads the names in any case (review rev185).
        "Permit_Mynetworks,Permit_SASL_Authenticated,Reject_RBL_Client,zen.spamhaus.org,"
        "Reject_Unauth_Destination",
    ],
)
def test_what_permits_only_our_clients_before_the_guard_closes_relaying(
    tmp_path: Path, restriction: str
) -> None:
    service = _port_2600(f"smtpd_sender_restrictions={restriction}")
    assert _milter_mode_problems(tmp_path, service) == []


@pytest.mark.parametrize(
    ("override", "main_cf"),
    [("smtpd_helo_required=yes", ""), ("", "smtpd_helo_required = yes\n")],
    ids=["service", "main.cf"],
)
def test_a_helo_restriction_closes_relaying_where_helo_is_required(
    tmp_path: Path, override: str, main_cf: str
) -> None:
    helo = "smtpd_helo_restrictions=permit_sasl_authenticated,reject"
    service = _port_2600(*filter(None, [override, helo]))
    assert _milter_mode_problems(tmp_path, service, main_cf) == []


def test_every_footer_pattern_postfix_words_a_page_can_show() -> None:
    """Review rev100 F9: a pattern that is no literal line needs what Postfix answers
    (POSTFIX_EXAMPLES) for the help pages, and each line must be one it matches."""
    for pattern, _, _ in POSTFIX_FOOTERS:
        said = postfix_says(pattern, "mx.example.com")
        assert said, pattern
        for line in said:
            assert re.match(pattern, line), (pattern, line)
    assert set(POSTFIX_EXAMPLES) <= {pattern for pattern, _, _ in POSTFIX_FOOTERS}


def test_the_footers_alone_carry_the_admins_reject_footer(tmp_path: Path) -> None:
    """Review rev234 L1: `--footers` (what `--main-cf` says to write the table with) left
    out the admin's smtpd_reject_footer, which Postfix then no longer appended to its
    own replies, and --check called that table stale."""
    conf = tmp_path / "postfix"
    conf.mkdir()
    write_settled(conf / "main.cf", "smtpd_reject_footer = \\c. For assistance call 555-0101\n")
    write_settled(conf / "master.cf", MASTER_CF)
    site = make_site(tmp_path / "site", {}, directory=False)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "smtpguard",
            "-c",
            str(site.config),
            "postfix-config",
            "--config-directory",
            str(conf),
            "--footers",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = done.stdout.splitlines()
    assert lines
    assert all(line.endswith(". For assistance call 555-0101") for line in lines), lines
