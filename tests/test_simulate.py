"""``smtpguard simulate``: the milter's code path without an MTA."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from smtpguard.app import counter_path
from smtpguard.config import load_config
from support.service import RULES, Site, make_site, smtpguard


def simulate(
    site: Site, *args: str, sender: str = "friend@sender.example"
) -> subprocess.CompletedProcess[str]:
    """An untrusted client with a good HELO; ``args`` add to or override the envelope."""
    base = ("--client", "198.51.100.7", "--helo", "mail.sender.example", "--from", sender)
    return smtpguard(site, "simulate", *base, *args, check=False)


def test_refused_sender_shows_the_exact_reply(site: Site) -> None:
    result = simulate(site, "--to", "alice@example.com", sender="spammer@bad.example")
    assert result.returncode == 1
    expected = "553 5.7.1 host denies the sender. (拒绝发件人地址)   [host_denies_sender]"
    assert expected in result.stdout
    assert "result: refused at MAIL FROM" in result.stdout


def test_message_through_every_stage(site: Site, tmp_path: Path) -> None:
    eml = tmp_path / "m.eml"
    eml.write_text("From: a@sender.example\nSubject: hi\n\nhello\n")
    result = simulate(
        site, "--to", "alice@example.com", "--to", "x@foreign.example", "--eml", str(eml)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any("rcpt to:<x@foreign.example>" in x and "[host_denies_relay]" in x for x in lines)
    assert any(x.startswith("header Subject") and x.endswith("continue") for x in lines)
    assert lines[-1] == "result: accepted"


def test_content_verdict_at_end_of_message(site: Site, tmp_path: Path) -> None:
    eml = tmp_path / "loop.eml"
    received = "Received: from a.example by b.example; Sat, 28 Nov 2026 17:00:00 +0000\n"
    eml.write_text(received * 31 + "Subject: loop\n\nhi\n")
    result = simulate(site, "--to", "alice@example.com", "--eml", str(eml))
    assert result.returncode == 1
    assert "552 5.4.6 looping message. (环回信件)   [looping_message]" in result.stdout


@pytest.mark.parametrize(("after_colon", "refused"), [("a" * 991, False), (" " + "a" * 991, True)])
def test_header_lines_are_measured_as_written(
    site: Site, tmp_path: Path, after_colon: str, refused: bool
) -> None:
    """As the milter with SMFIP_HDR_LEADSPC: ``X-Long:`` + 991 is 998 octets."""
    eml = tmp_path / "long.eml"
    eml.write_text(f"Subject: hi\nX-Long:{after_colon}\n\nhi\n")
    result = simulate(site, "--to", "alice@example.com", "--eml", str(eml))
    assert ("[line_parse_error]" in result.stdout) is refused, result.stdout
    assert result.returncode == (1 if refused else 0)


def test_authenticated_session_and_sendmail_ascii(site: Site) -> None:
    result = simulate(
        site,
        "--login",
        "alice@example.com",
        "--tls",
        "--mta",
        "sendmail",
        "--to",
        "x@foreign.example",
        sender="carol@example.com",
    )
    assert "554 5.7.1 mail address invalid.   [sender_mismatch]" in result.stdout


def reply_at(stdout: str, label: str) -> str:
    """What ``simulate`` printed for the stage ``label``."""
    [line] = [x for x in stdout.splitlines() if x.startswith(label + " ")]
    return line[len(label) :].strip()


@pytest.mark.parametrize(
    ("mta", "sender", "label", "reply"),
    [
        # As the real Sendmail sends them (tests/e2e/test_sendmail.py): the path of the
        # command being answered, as the client wrote it, then "... ".
        (
            "sendmail",
            "friend@sender.example",
            "rcpt to:<nobody@example.com>",
            "550 5.1.1 <nobody@example.com>... mailbox unavailable.   [mailbox_unavailable]",
        ),
        (
            "sendmail",
            "spammer@bad.example",
            "mail from:<spammer@bad.example>",
            "553 5.7.1 <spammer@bad.example>... host denies the sender.   [host_denies_sender]",
        ),
        # Postfix sends the milter's text as it is.
        (
            "postfix",
            "friend@sender.example",
            "rcpt to:<nobody@example.com>",
            "550 5.1.1 mailbox unavailable. (邮箱不存在)   [mailbox_unavailable]",
        ),
    ],
)
def test_reply_as_the_mta_sends_it(
    site: Site, mta: str, sender: str, label: str, reply: str
) -> None:
    result = simulate(site, "--mta", mta, "--to", "nobody@example.com", sender=sender)
    assert result.returncode == 1, result.stderr
    assert reply_at(result.stdout, label) == reply


def test_sendmail_prefixes_the_first_line_of_a_multi_line_reply(tmp_path: Path) -> None:
    """Measured with ``[replies] hint = true`` (test_queue_unavailable_multi_line)."""
    hinted = make_site(tmp_path, {"replies": {"hint": True}})
    result = simulate(hinted, "--mta", "sendmail", "--to", "nobody@example.com")
    with (RULES / "replies.toml").open("rb") as fh:
        hint: str = tomllib.load(fh)["mailbox_unavailable"]["hint"]["en"]
    assert reply_at(result.stdout, "rcpt to:<nobody@example.com>") == (
        f"550-5.1.1 <nobody@example.com>... mailbox unavailable. | 550 5.1.1 {hint}"
        "   [mailbox_unavailable]"
    )


def test_sendmail_shortens_a_long_path(site: Site) -> None:
    """Sendmail writes the path through shortenstring(path, 203): 100 characters,
    "...", the last 100 (measured with Sendmail 8.17 in the second review)."""
    rcpt = "l" * 64 + "@" + "a" * 60 + "." + "b" * 60 + ".foreign.example"
    path = f"<{rcpt}>"
    assert len(path) >= 203
    result = simulate(site, "--mta", "sendmail", "--to", rcpt)
    assert reply_at(result.stdout, f"rcpt to:{path}") == (
        f"553 5.7.1 {path[:100]}...{path[-100:]}... host denies relay.   [host_denies_relay]"
    )


def test_every_check_outcome_is_listed(site: Site) -> None:
    result = simulate(site, "--to", "nobody@example.com")
    lines = result.stdout.splitlines()
    assert "    mail sender_deny: pass" in lines
    assert "    rcpt relay: pass" in lines
    assert any(x.startswith("    rcpt mailbox: hit mailbox_unavailable") for x in lines)


@pytest.mark.parametrize(
    ("client", "connect"),
    [
        ("[198.51.100.7]", "connect 198.51.100.7 "),
        ("[IPv6:2001:DB8::0001]", "connect 2001:db8::1 "),
        ("[2001:db8::1]", "connect 2001:db8::1 "),
        ("::ffff:198.51.100.7", "connect ::ffff:198.51.100.7 "),
    ],
)
def test_client_as_postfix_logs_it(site: Site, client: str, connect: str) -> None:
    result = simulate(site, "--client", client, "--to", "alice@example.com")
    assert result.returncode == 0, result.stderr
    assert connect in result.stdout


@pytest.mark.parametrize(
    ("client", "why"),
    [
        ("192.0.2.500", ""),
        ("[192.0.2.5", ""),
        ("mail.sender.example", ""),
        ("", ""),
        ("IPv6:192.0.2.5", " (the IPv6: tag goes with IPv6 addresses only)"),
    ],
)
def test_a_client_that_is_no_ip_address_is_a_usage_error(site: Site, client: str, why: str) -> None:
    result = simulate(site, "--client", client, "--to", "alice@example.com")
    assert result.returncode == 2
    assert result.stdout == ""
    message = result.stderr.splitlines()[-1]
    assert message.startswith(
        f"smtpguard simulate: error: argument --client: not an IP address: {client!r}"
    )
    assert message.endswith(why or "(e.g. 192.0.2.5, 2001:db8::1, [192.0.2.5])")


def test_simulating_leaves_the_service_state_as_it_is(tmp_path: Path) -> None:
    """Review rev226: run as root, simulate made the shared same-size file and the state
    file root's (the service's own user then deferred every message), and counted each
    simulated message for the sender, whose real mail then got 552."""
    site = make_site(
        tmp_path,
        {
            "milter": {"workers": 2},
            "bulk": {"threshold": 2},
            "checks": {"bulk": {"mode": "enforce"}},
        },
    )
    shared = counter_path(load_config(site.config))
    eml = tmp_path / "m.eml"
    eml.write_text("From: friend@sender.example\nSubject: report\n\n" + ("x" * 70 + "\n") * 60)
    for _ in range(4):
        result = simulate(site, "--to", "alice@example.com", "--eml", str(eml))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "too many same size mails" not in result.stdout
        assert result.stdout.startswith("note: same-size counts are this run's own")
    assert not shared.exists()
    assert not site.state.exists()
    assert "does not exist" in result.stderr
    # The blacklist is still read: an entry refuses the sender it lists, and the file,
    # made by the command (as the service's user), is not written by simulate.
    smtpguard(site, "blacklist", "add", "friend@sender.example")
    written = site.state.stat().st_mtime_ns
    listed = simulate(site, "--to", "alice@example.com", "--eml", str(eml))
    assert listed.returncode == 1
    assert "[black_mail_address]" in listed.stdout, listed.stdout
    assert site.state.stat().st_mtime_ns == written
    assert not shared.exists()
