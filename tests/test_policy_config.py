"""``[[policy.exempt]]``, ``policy.postmaster_skip`` and ``[[dnsbl.local]]`` at load:
what is accepted, and every unsafe combination refused with ``file: key: problem``."""

from __future__ import annotations

import ipaddress
import shutil
import tempfile
from pathlib import Path

import pytest

from smtpguard.app import load
from smtpguard.config import CONTENT_GROUP, DNS_CHECKS
from support.configs import assert_config_error, write_config
from support.files import without_stdlib_problem
from support.service import make_site, run_cli, smtpguard

EXEMPT = "[[policy.exempt]]\n"


def test_exemption_loads_with_groups_and_files(tmp_path: Path) -> None:
    partners = tmp_path / "partners.txt"
    partners.write_text("# partners\n203.0.113.0/24\n")
    config = load(
        write_config(
            tmp_path,
            f"{EXEMPT}name = 'p'\nips = ['198.51.100.7']\nip_files = ['{partners}']\n"
            "skip = ['rbl', 'all-content']\n",
        )
    )
    (ex,) = config.policy.exempt
    assert ex.name == "p"
    assert ex.skip == CONTENT_GROUP | {"rbl"}
    assert ipaddress.ip_address("203.0.113.9") in ex.networks
    assert ipaddress.ip_address("198.51.100.7") in ex.networks
    # Every content check but the virus scan (review rev188 F1).
    assert config.policy.postmaster_skip == CONTENT_GROUP - {"virus"}


def test_an_exemption_list_file_for_much_of_the_internet_is_refused(tmp_path: Path) -> None:
    """Review rev225 L1: refused in ips, a partner file holding 0.0.0.0/0 (or 2002::/16)
    loaded and exempted every client."""
    partners = tmp_path / "partners.txt"
    partners.write_text("# partners\n203.0.113.0/24\n2002::/16\n")
    error = assert_config_error(
        tmp_path,
        f"{EXEMPT}name = 'p'\nip_files = ['{partners}']\nskip = ['rbl']\n",
        "policy.exempt[0].ip_files",
        f"{partners}:3: 2002::/16 is wider than site.trusted_networks takes",
    )
    assert "list the networks you mean" in str(error)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (
            f"{EXEMPT}ips = ['198.51.100.7']\nskip = ['relay']\n",
            "policy.exempt[0].skip",
            "'relay' can never be skipped",
        ),
        (
            f"{EXEMPT}ips = ['198.51.100.7']\nskip = ['relay_local']\n",
            "policy.exempt[0].skip",
            "never grant relay",
        ),
        (
            f"{EXEMPT}ips = ['198.51.100.7']\nskip = ['auth_login']\n",
            "policy.exempt[0].skip",
            "can never be skipped",
        ),
        (
            f"{EXEMPT}ips = ['198.51.100.7']\nskip = ['sender_login']\n",
            "policy.exempt[0].skip",
            "can never be skipped",
        ),
        (
            f"{EXEMPT}senders = ['partner.example']\nskip = ['spf']\n",
            "policy.exempt[0].senders",
            "a sender alone is forgeable",
        ),
        (
            f"{EXEMPT}ips = ['198.51.100.7']\nskip = []\n",
            "policy.exempt[0].skip",
            "must skip something",
        ),
        (f"{EXEMPT}skip = ['rbl']\n", "policy.exempt[0].skip", "matches nothing"),
        (
            f"{EXEMPT}ips = ['198.51.100.7']\nskip = ['rbll']\n",
            "policy.exempt[0].skip",
            "unknown check 'rbll'",
        ),
        (
            f"{EXEMPT}ips = ['198.51.100.7/24']\nskip = ['rbl']\n",
            "policy.exempt[0].ips",
            "host bits set",
        ),
        (
            f"{EXEMPT}ips = ['198.51.100.7']\nspf_pass = true\nskip = ['rbl']\n",
            "policy.exempt[0].spf_pass",
            "together with senders",
        ),
        (
            "[policy]\npostmaster_skip = ['relay']\n",
            "policy.postmaster_skip",
            "can never be skipped",
        ),
        # Entries that would load and never match: Postfix's leading dot, wildcards,
        # empty parts.
        (
            f"{EXEMPT}host_suffixes = ['.partner.example']\nskip = ['rbl']\n",
            "policy.exempt[0].host_suffixes",
            "write 'partner.example'",
        ),
        (
            f"{EXEMPT}host_suffixes = ['*.partner.example']\nskip = ['rbl']\n",
            "policy.exempt[0].host_suffixes",
            "not an address, @domain or domain",
        ),
        # Review rev224 L8: an exemption for everyone, or much of the Internet.
        (
            f"{EXEMPT}ips = ['0.0.0.0/0', '::/0']\nskip = ['sender_deny']\n",
            "policy.exempt[0].ips",
            "0.0.0.0/0 is wider than site.trusted_networks takes",
        ),
        (
            f"{EXEMPT}ips = ['2000::/3']\nskip = ['rbl']\n",
            "policy.exempt[0].ips",
            "2000::/3 is wider than site.trusted_networks takes",
        ),
        # Review rev225 L1: every IPv4 host, through 6to4.
        (
            f"{EXEMPT}ips = ['2002::/16']\nskip = ['rbl']\n",
            "policy.exempt[0].ips",
            "2002::/16 is wider than site.trusted_networks takes",
        ),
        # Review rev224 L7: decided at connect, before postmaster@ is known.
        (
            "[policy]\npostmaster_skip = ['session_limit']\n",
            "policy.postmaster_skip",
            "session_limit is decided at connect",
        ),
        (
            f"{EXEMPT}ips = ['192.0.2.1']\nsenders = ['.partner.example']\nskip = ['rbl']\n",
            "policy.exempt[0].senders",
            "'@partner.example' (that domain only)",
        ),
        (
            f"{EXEMPT}ips = ['192.0.2.1']\nsenders = ['*@partner.example']\nskip = ['rbl']\n",
            "policy.exempt[0].senders",
            "no wildcards",
        ),
        (
            f"{EXEMPT}recipients = ['abuse@']\nskip = ['rbl']\n",
            "policy.exempt[0].recipients",
            "not an address, @domain or domain: 'abuse@'",
        ),
        (
            f"{EXEMPT}recipients = ['@']\nskip = ['rbl']\n",
            "policy.exempt[0].recipients",
            "not an address, @domain or domain",
        ),
        (
            f"{EXEMPT}recipients = ['']\nskip = ['rbl']\n",
            "policy.exempt[0].recipients",
            "not an address, @domain or domain",
        ),
        # Review rev140 F6: a bare word is a domain; these were meant as addresses.
        (
            f"{EXEMPT}recipients = ['postmaster']\nskip = ['antispam']\n",
            "policy.exempt[0].recipients",
            "'postmaster' is read as a domain of one label; write 'postmaster@example.com'",
        ),
        (
            f"{EXEMPT}ips = ['192.0.2.1']\nsenders = ['MAILER-DAEMON']\nskip = ['rbl']\n",
            "policy.exempt[0].senders",
            "'MAILER-DAEMON' is read as a domain",
        ),
        # Review rev151 F6: any word without a dot, and a role's name after "@".
        *(
            (
                f"{EXEMPT}recipients = ['{word}']\nskip = ['bulk']\n",
                "policy.exempt[0].recipients",
                f"'{word}' is read as a domain of one label; write '{meant}@example.com'",
            )
            for word, meant in (
                ("alice", "alice"),
                ("hostmaster", "hostmaster"),
                ("abuse.", "abuse"),
                ("@postmaster", "postmaster"),
            )
        ),
        ("[[dnsbl.local]]\nfile = 'absent.txt'\n", "dnsbl.local[0].file", "cannot read"),
        (
            "[[dnsbl.local]]\nfile = 'list.txt'\nkind = 'spam'\n",
            "dnsbl.local[0].kind",
            "must be one of rbl, openrelay",
        ),
    ],
)
def test_unsafe_or_meaningless_exemptions_are_refused(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    (tmp_path / "list.txt").write_text("10.0.0.0/8\n")
    assert_config_error(tmp_path, text, key, message)


def test_a_top_level_domain_is_a_senders_domain(tmp_path: Path) -> None:
    """Review rev154 F2: sender_deny = ["top"] refuses every *.top sender, and an
    exemption may name such a domain's senders; only a recipient's word (not one of
    our domains) or a role's name is taken for a local part."""
    text = (
        "[site]\nlocal_domains = ['example.com', 'lan']\n"
        "[policy]\nsender_deny = ['top', 'xyz.']\n"
        f"{EXEMPT}ips = ['192.0.2.1']\nsenders = ['corp']\nrecipients = ['lan']\n"
        "skip = ['rbl']\n"
    )
    config = load(write_config(tmp_path, text))
    assert config.policy.sender_deny[:2] == ("top", "xyz.")
    (ex,) = config.policy.exempt
    assert (ex.senders, ex.recipients) == (("corp",), ("lan",))


def test_sender_exemption_with_spf_pass_or_client_loads(tmp_path: Path) -> None:
    text = (
        f"{EXEMPT}senders = ['partner.example']\nspf_pass = true\nskip = ['rbl']\n"
        f"{EXEMPT}senders = ['@partner.example']\nhost_suffixes = ['mx.partner.example']\n"
        "skip = ['spf']\n"
    )
    # Review rev153 F3: without a resolver spf_pass never held; refused now.
    assert_config_error(
        tmp_path,
        text,
        "policy.exempt[0].spf_pass",
        "needs [dns] nameservers (the sender's SPF record is looked up)",
    )
    text += "[dns]\nnameservers = ['127.0.0.1']\n"
    first, second = load(write_config(tmp_path, text)).policy.exempt
    assert first.spf_pass
    assert first.senders == ("partner.example",)
    assert second.host_suffixes == ("mx.partner.example",)


def test_exemption_patterns_of_every_documented_form_load(tmp_path: Path) -> None:
    text = (
        f"{EXEMPT}ips = ['192.0.2.1']\n"
        "senders = ['a@partner.example', '\"a b\"@partner.example', '@partner.example',"
        " 'partner.example', 'Bücher.Example']\n"
        "recipients = ['postmaster@example.com', 'abuse@example.com', '@localhost']\n"
        "skip = ['rbl']\n"
    )
    (ex,) = load(write_config(tmp_path, text)).policy.exempt
    assert ex.senders[-1] == "bücher.example"
    assert ex.recipients == ("postmaster@example.com", "abuse@example.com", "@localhost")


#: example.com in full-width letters and dot (U+FF45..., U+FF0E).
FULL_WIDTH = "\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d"


def test_host_suffixes_take_the_names_dns_holds(tmp_path: Path) -> None:
    """PTR names may hold underscores; a full-width spelling is the ASCII name."""
    text = f"{EXEMPT}host_suffixes = ['mail_out.partner.example', '{FULL_WIDTH}']\nskip = ['rbl']\n"
    (ex,) = load(write_config(tmp_path, text)).policy.exempt
    assert ex.host_suffixes == ("example.com", "mail_out.partner.example")


def test_bad_list_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("10.0.0.0/8\n# x\n10.0.0.1/8\n")
    assert_config_error(
        tmp_path,
        "[[dnsbl.local]]\nfile = 'list.txt'\n",
        "dnsbl.local[0].file",
        f"{tmp_path / 'list.txt'}:3: host bits set",
    )


def test_local_list_needs_no_resolver(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("10.0.0.0/8\n")
    config = load(
        write_config(
            tmp_path, "[[dnsbl.local]]\nfile = 'list.txt'\n[checks.rbl]\nmode = 'enforce'\n"
        )
    )
    assert config.dnsbl.local[0].kind == "rbl"
    assert "rbl" in DNS_CHECKS


def test_check_config_prints_file_key_problem(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"{EXEMPT}ips = ['198.51.100.7']\nskip = ['relay']\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert f"{path.resolve()}: policy.exempt[0].skip: 'relay' can never be skipped" in (
        result.stderr
    )


# --- [domain."X"] -------------------------------------------------------------------------

SITE = "[site]\nlocal_domains = ['example.com', 'big.example']\nrelay_domains = ['relay.example']\n"


def test_domain_tables_fill_in_the_global_values(tmp_path: Path) -> None:
    config = load(
        write_config(
            tmp_path,
            SITE + "[limits]\nmax_message_size = 1000\nmax_rcpt = 5\n"
            "[domain.'Big.Example']\nmax_message_size = 5000\nlanguages = ['zh', 'en']\n"
            "checks.antispam.mode = 'report'\nchecks.virus.mode = 'enforce'\n"
            "[domain.'relay.example']\nreject_score = 30\n",
        )
    )
    big = config.domain_policy("big.example.")
    assert big is not None
    assert (big.max_message_size, big.max_rcpt, big.languages) == (5000, 5, ("zh", "en"))
    # Only what differs from the global mode is kept.
    assert big.checks == (("antispam", "report"),)
    relay = config.domain_policy("RELAY.example")
    assert relay is not None
    assert (relay.reject_score, relay.add_header_score) == (30.0, 6.0)
    assert config.domain_policy("example.com") is None
    assert relay.content != config.global_policy().content


def test_tables_combined_at_their_strictest(tmp_path: Path) -> None:
    """A transaction that is not split (the site's own submission, a dry run) is
    judged under its recipients' tables combined: no copy more laxly than its own
    table says (review rev154 F1), replies in the first recipient's languages."""
    config = load(
        write_config(
            tmp_path,
            SITE + "[limits]\nmax_message_size = 1000\nmax_rcpt = 5\n"
            "[checks.bulk]\nmode = 'report'\n"
            "[domain.'big.example']\nmax_message_size = 5000\nlanguages = ['zh', 'en']\n"
            "checks.antispam.mode = 'report'\nchecks.virus.mode = 'off'\n"
            "add_header_score = 3\n"
            "[domain.'relay.example']\nreject_score = 30\nmax_rcpt = 2\n"
            "checks.antispam.mode = 'off'\nchecks.bulk.mode = 'enforce'\n",
        )
    )
    both = config.combined_policy(["big.example", "relay.example"])
    assert both is not None
    assert both.domain == "big.example+relay.example"
    # antispam: report over off; virus: enforce (relay.example's, the global) over off;
    # bulk: relay.example's enforce over the global report.
    assert both.checks == (("antispam", "report"), ("bulk", "enforce"))
    assert (both.max_message_size, both.max_rcpt, both.languages) == (1000, 2, ("zh", "en"))
    assert (both.add_header_score, both.reject_score) == (3.0, 15.0)
    # A domain without a table counts with the global settings: every check's own mode.
    lax_first = config.combined_policy(["relay.example", "example.com", "relay.example"])
    assert lax_first is not None
    assert lax_first.domain == "relay.example+(global)"
    assert (lax_first.checks, lax_first.max_rcpt) == ((("bulk", "enforce"),), 2)
    assert lax_first.languages == config.replies.languages
    # One table (under any spelling), or none: that one.
    assert config.combined_policy(["big.example", "BIG.example."]) == config.domain_policy(
        "big.example"
    )
    assert config.combined_policy(["example.com", "other.example"]) is None
    assert config.combined_policy([]) is None


def test_tables_that_differ_per_recipient_only_are_named_together(tmp_path: Path) -> None:
    """Review rev220 L3: a table that differs only in the mailbox check's mode shares a
    stranger's transaction (cd7038f); judged as the first recipient's, the summary's
    policy= named it in one order and nothing in the other."""
    config = load(
        write_config(tmp_path, SITE + "[domain.'big.example']\nchecks.mailbox.mode = 'report'\n")
    )
    first = config.combined_policy(["big.example", "example.com"])
    second = config.combined_policy(["example.com", "big.example"])
    assert first is not None
    assert second is not None
    assert (first.domain, second.domain) == ("big.example+(global)", "(global)+big.example")
    assert first.content == second.content == config.global_policy().content


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        (
            "[domain.'other.example']\nmax_rcpt = 3\n",
            'domain."other.example"',
            "not one of site.local_domains or site.relay_domains",
        ),
        (
            "[domain.'big.example']\nchecks.relay.mode = 'report'\n",
            'domain."big.example".checks.relay.mode',
            "the same for every domain",
        ),
        (
            "[domain.'big.example']\nchecks.sender_login.mode = 'off'\n",
            'domain."big.example".checks.sender_login.mode',
            "the same for every domain",
        ),
        (
            "[domain.'big.example']\nchecks.rcpt_limit.mode = 'off'\n",
            'domain."big.example".checks.rcpt_limit.mode',
            "one domain policy",
        ),
        (
            "[domain.'big.example']\nchecks.helo_dns.mode = 'enforce'\n",
            'domain."big.example".checks.helo_dns.mode',
            "off globally",
        ),
        (
            "[domain.'big.example']\nchecks.antispan.mode = 'off'\n",
            'domain."big.example".checks.antispan.mode',
            "unknown check",
        ),
        (
            "[domain.'big.example']\nreject_score = 1\n",
            'domain."big.example".reject_score',
            "must not be below add_header_score",
        ),
        (
            "[domain.'big.example']\nlanguages = []\n",
            'domain."big.example".languages',
            "at least one",
        ),
        ("[domain.'big.example']\nmax_size = 1\n", 'domain."big.example".max_size', "unknown key"),
        # Looked up by the exact domain: a table for ".big.example" would never apply.
        ("[domain.'.big.example']\nmax_rcpt = 3\n", 'domain.".big.example"', "one exact domain"),
        # rcpt_limit keeps one transaction to one domain policy: it must enforce.
        (
            "[checks.rcpt_limit]\nmode = 'report'\n[domain.'big.example']\nmax_rcpt = 3\n",
            "checks.rcpt_limit.mode",
            "one domain policy",
        ),
        (
            "[[policy.exempt]]\nips = ['192.0.2.1']\nskip = ['rcpt_limit']\n"
            "[domain.'big.example']\nmax_rcpt = 3\n",
            "policy.exempt[0].skip",
            "must not skip rcpt_limit",
        ),
    ],
)
def test_unsafe_domain_tables_are_refused(
    tmp_path: Path, table: str, key: str, message: str
) -> None:
    assert_config_error(tmp_path, SITE + table, key, message)


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        # Decided at MAIL FROM: no recipient is known yet.
        (
            "[domain.'big.example']\nchecks.blacklist.mode = 'off'\n",
            'domain."big.example".checks.blacklist.mode',
            "decided at MAIL FROM or before",
        ),
        # The message alone: not the config's file and replies.languages again, which
        # read as if that key were wrong (review rev156 F6).
        (
            "[domain.'big.example']\nlanguages = ['fr']\n",
            'domain."big.example".languages',
            "domain.\"big.example\".languages: 'fr' is in no row of ",
        ),
    ],
)
def test_check_config_refuses_what_the_pipeline_cannot_do(
    tmp_path: Path, table: str, key: str, message: str
) -> None:
    path = write_config(
        tmp_path,
        SITE + f"[milter]\nsocket = 'unix:{tmp_path}/s.sock'\n[directory]\nbackend = 'none'\n"
        f"[state]\npath = '{tmp_path}/state.sqlite'\n" + table,
    )
    result = run_cli("check-config", "--offline", str(path))
    assert result.returncode == 1, result.stderr
    assert f"{path.resolve()}: {key}: " in result.stderr
    assert message in result.stderr


# --- list files the service user must read on SIGHUP -----------------------------------------


def test_check_config_names_list_files_the_service_user_cannot_read() -> None:
    root = Path(tempfile.mkdtemp(prefix="smtpguard-lists-"))
    try:
        root.chmod(0o755)
        (root / "state").mkdir()
        shutil.chown(root / "state", "nobody")
        blocked, partners = root / "blocked.txt", root / "partners.txt"
        for path in (blocked, partners):
            path.write_text("203.0.113.0/24\n")
            path.chmod(0o600)  # root's: nobody cannot read it after the drop
        site = make_site(
            root,
            {
                "milter": {"user": "nobody"},
                "state": {"path": str(root / "state" / "state.sqlite")},
                "dnsbl": {"local": [{"file": str(blocked)}]},
                "policy": {"exempt": [{"ip_files": [str(partners)], "skip": ["rbl"]}]},
            },
        )
        result = smtpguard(site, "check-config", "--offline", check=False)
        assert result.returncode == 1
        file = site.config.resolve()
        assert without_stdlib_problem(result.stderr.splitlines()) == [
            f"{file}: dnsbl.local[0].file: nobody cannot read {blocked}:"
            " a reload (SIGHUP) would fail",
            f"{file}: policy.exempt[0].ip_files: nobody cannot read {partners}:"
            " a reload (SIGHUP) would fail",
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("pattern", ["/[0-9]*@/", "/@/", "/./", "/\\w/"])
def test_a_sender_deny_pattern_found_in_every_sender_is_refused(
    tmp_path: Path, pattern: str
) -> None:
    """Review rev224 L1: /[0-9]*@/ (meant with +) passed check-config and denied every
    sender, a trusted local user's included; only a pattern that also matched the
    empty string was refused."""
    text = f"[policy]\nsender_deny = ['{pattern}']\n"
    assert_config_error(tmp_path, text, "policy.sender_deny[0]", "so about everything")


def test_a_narrow_sender_deny_pattern_loads(tmp_path: Path) -> None:
    text = "[policy]\nsender_deny = ['/^spam[0-9]+@/', '/@bulk\\.example$/']\n"
    assert load(write_config(tmp_path, text)).policy.sender_deny[:2] == (
        "/^spam[0-9]+@/",
        "/@bulk\\.example$/",
    )


def test_a_virus_check_asked_for_without_a_scanner_is_refused(tmp_path: Path) -> None:
    """Review rev224 L3: [checks.virus] mode = "enforce" with [virus] backend = "none"
    loaded, and EICAR was accepted (an INFO line at start the only trace)."""
    text = "[checks.virus]\nmode = 'enforce'\non_temp_error = 'tempfail'\n"
    assert_config_error(tmp_path, text, "checks.virus.mode", 'backend = "none"')
    off = "[checks.virus]\nmode = 'off'\n"
    assert load(write_config(tmp_path, off)).check("virus").mode == "off"


def test_an_exemption_for_the_sites_own_private_ipv6_loads(tmp_path: Path) -> None:
    """Review rev225 M2: fc00::/7, which trusted_networks takes, was refused in an
    exemption, and a site exempting its own ULA range did not start after the
    upgrade."""
    text = f"{EXEMPT}name = 'lan-v6'\nips = ['fc00::/7', '10.0.0.0/8']\nskip = ['helo']\n"
    (ex,) = load(write_config(tmp_path, text)).policy.exempt
    assert ex.networks.size == 2
