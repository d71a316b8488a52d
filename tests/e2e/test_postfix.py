"""End to end through a real Postfix: what an SMTP client sees for every reply id.

Postfix is configured from ``smtpguard postfix-config`` (the snippet users copy) and
XCLIENT plays the client's address, name, HELO and SASL login. Each test asserts the
exact reply line(s) the client receives: code, enhanced code and the table's text in
the default language policy (one line, English then Chinese in parentheses).
"""

from __future__ import annotations

import base64
import re
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemons import EICAR, GTUBE, start_clamd
from support.dovecot import start_dovecot
from support.expected import SPEC, default_line
from support.polling import poll_for
from support.postfix import Postfix, client, start_postfix
from support.sendmail import tls_dir
from support.service import Running, Site, make_site, running, smtpguard
from support.smtp import Reply, SmtpClient
from support.unbound import DNSBL_ZONES, GOOD_IP, NO_PTR_IP, RBL_IP, RELAY_IP, DnsServer

pytestmark = pytest.mark.integration

UNTRUSTED = {"addr": "198.51.100.7", "name": "mail.sender.example", "helo": "mail.sender.example"}
TRUSTED = {"addr": "192.0.2.10", "name": "relay.example.com", "helo": "relay.example.com"}


def e2e_site(name: str, extra: dict[str, object] | None = None) -> Site:
    # Postfix's smtpd (user postfix) must reach the socket: a world-traversable
    # directory and a socket group-writable by postfix.
    root = Path(tempfile.mkdtemp(prefix=f"smtpguard-{name}-"))
    root.chmod(0o755)
    base = {"milter": {"socket_group": "postfix", "socket_mode": "0660"}}
    return make_site(root, {**base, **(extra or {})})


SASL_USERS = {"alice@example.com": "alice-secret", "bob@example.com": "bob-secret"}


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Running, Postfix]]:
    site = e2e_site(
        "postfix",
        {
            "limits": {
                "max_rcpt": 3,
                "max_message_size": 1_000_000,
                "max_attachment_size": 50_000,
                "max_header_fields": 100,
            },
            "content": {"add_loop_marker": True, "loop_marker_key": "e2e secret, not a real one"},
            # PLAIN needs TLS (there is none here); LOGIN is allowed for the SASL tests.
            "policy": {"auth_tls_required": ["PLAIN"]},
        },
    )
    dovecot = start_dovecot(SASL_USERS)
    sasl = (
        "smtpd_sasl_auth_enable = yes\n"
        "smtpd_sasl_type = dovecot\n"
        f"smtpd_sasl_path = {dovecot.socket}\n"
        "smtpd_sasl_security_options = noanonymous\n"
    )
    try:
        with running(site) as service, tls_dir() as tls:
            # STARTTLS offered, never required (a self-signed certificate).
            starttls = (
                f"smtpd_tls_cert_file = {tls / 'server.pem'}\n"
                f"smtpd_tls_key_file = {tls / 'server.key'}\n"
                "smtpd_tls_security_level = may\n"
            )
            with start_postfix(site.config, sasl + starttls) as postfix:
                yield service, postfix
    finally:
        dovecot.stop()


@pytest.fixture
def postfix(stack: tuple[Running, Postfix]) -> Postfix:
    return stack[1]


def expected_line(reply_id: str) -> str:
    code, xcode, _en, _zh = SPEC[reply_id]
    return f"{code} {xcode} {default_line(reply_id)}"


def assert_table(reply: Reply, reply_id: str) -> None:
    assert reply.lines == (expected_line(reply_id),), f"{reply_id}: {reply}"


# --- MAIL FROM ----------------------------------------------------------------------


def test_helo_first(postfix: Postfix) -> None:
    with client(postfix, {"addr": "198.51.100.7", "name": "mail.sender.example"}) as c:
        assert_table(c.cmd("MAIL FROM:<a@sender.example>"), "helo_first")


def test_helo_error(postfix: Postfix) -> None:
    with client(postfix, {**UNTRUSTED, "helo": "localhost"}) as c:
        assert_table(c.cmd("MAIL FROM:<a@sender.example>"), "helo_error")
    with client(postfix, UNTRUSTED) as c:
        assert c.cmd("MAIL FROM:<a@sender.example>").code == 250


def test_mail_from_invalid(postfix: Postfix) -> None:
    with client(postfix, UNTRUSTED) as c:
        assert_table(c.cmd("MAIL FROM:<a..b@sender.example>"), "mail_from_invalid")
        assert_table(c.cmd("MAIL FROM:<a@b@c>"), "mail_from_invalid")


@pytest.mark.parametrize("path", ["<a b@sender.example>", "<@>", "<a@.example>", "<abc"])
def test_mail_from_syntax_postfix_refuses_itself(postfix: Postfix, path: str) -> None:
    """Addresses Postfix cannot parse never reach the milter: Postfix answers, and the
    generated footer map appends the table's Chinese text."""
    with client(postfix, UNTRUSTED) as c:
        reply = c.cmd(f"MAIL FROM:{path}")
    assert reply.lines == ("501 5.1.7 Bad sender address syntax (发件人地址不合法)",)


def test_message_too_long_from_size(postfix: Postfix) -> None:
    with client(postfix, UNTRUSTED) as c:
        assert_table(c.cmd("MAIL FROM:<a@sender.example> SIZE=1000001"), "message_too_long")
        assert c.cmd("MAIL FROM:<a@sender.example> SIZE=1000").code == 250


def test_message_too_long_above_postfix_limit(postfix: Postfix) -> None:
    """A SIZE= above Postfix's own message_size_limit never reaches the milter:
    Postfix answers with the table's code, and the footer map adds the table's text."""
    with client(postfix, UNTRUSTED) as c:
        assert c.cmd("MAIL FROM:<a@sender.example> SIZE=50000000").lines == (
            "552 5.3.4 Message size exceeds fixed limit (message is too long. 邮件大小超过限制)",
        )


def test_message_too_long_in_data_above_postfix_limit(postfix: Postfix) -> None:
    """Review rev232 L4: past message_size_limit in DATA, with no SIZE=, Postfix's own
    "message file too big" carried no table text; the footer map adds it."""
    line = b"x" * 998 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (10_300_000 // len(line))
    with client(postfix, UNTRUSTED) as c:
        assert c.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        assert c.data(body).lines == (
            "552 5.3.4 Error: message file too big (message is too long. 邮件大小超过限制)",
        )
    # And with BDAT (review rev234 L2).
    with client(postfix, UNTRUSTED) as c:
        assert c.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        c.send_raw(f"BDAT {len(body)} LAST\r\n".encode() + body)
        assert c.read().lines == (
            "552 5.3.4 Chunk exceeds message size limit (message is too long. 邮件大小超过限制)",
        )


def test_host_denies_sender(postfix: Postfix) -> None:
    with client(postfix, UNTRUSTED) as c:
        assert_table(c.cmd("MAIL FROM:<spammer@bad.example>"), "host_denies_sender")


def test_black_mail_address(stack: tuple[Running, Postfix]) -> None:
    service, postfix = stack
    smtpguard(service.site, "blacklist", "add", "pest@sender.example")
    try:
        with client(postfix, UNTRUSTED) as c:
            assert_table(c.cmd("MAIL FROM:<pest@sender.example>"), "black_mail_address")
    finally:
        smtpguard(service.site, "blacklist", "remove", "pest@sender.example")


def test_relay_local_fail(postfix: Postfix) -> None:
    with client(postfix, UNTRUSTED) as c:
        assert_table(c.cmd("MAIL FROM:<alice@example.com>"), "relay_local_fail")
    with client(postfix, TRUSTED) as c:
        assert c.cmd("MAIL FROM:<alice@example.com>").code == 250


@pytest.mark.parametrize(
    ("login", "sender", "reply_id"),
    [
        ("eve@other.example", "eve@other.example", "domain_auth_error"),
        ("bob@example.com", "bob@example.com", "auth_error_perm"),
        ("alice@example.com", "carol@example.com", "sender_mismatch"),
    ],
)
def test_authenticated_sender_checks(
    postfix: Postfix, login: str, sender: str, reply_id: str
) -> None:
    with client(postfix, UNTRUSTED, login=login) as c:
        assert_table(c.cmd(f"MAIL FROM:<{sender}>"), reply_id)


def test_authenticated_sender_may_use_own_and_send_as(postfix: Postfix) -> None:
    for sender in ("alice@example.com", "sales@example.com"):
        with client(postfix, UNTRUSTED, login="alice@example.com") as c:
            assert c.cmd(f"MAIL FROM:<{sender}>").code == 250
            assert c.cmd("RCPT TO:<x@foreign.example>").code == 250


def auth_login(c: SmtpClient, user: str, password: str) -> Reply:
    assert c.cmd("AUTH LOGIN").code == 334
    assert c.cmd(base64.b64encode(user.encode()).decode()).code == 334
    return c.cmd(base64.b64encode(password.encode()).decode())


def test_real_sasl_sender_mismatch(postfix: Postfix) -> None:
    with client(postfix, UNTRUSTED) as c:
        assert auth_login(c, "alice@example.com", "alice-secret").code == 235
        assert_table(c.cmd("MAIL FROM:<carol@example.com>"), "sender_mismatch")
        assert c.cmd("MAIL FROM:<sales@example.com>").code == 250
        # Authenticated, so relaying is allowed.
        assert c.cmd("RCPT TO:<x@foreign.example>").code == 250


def test_real_sasl_locked_login(postfix: Postfix) -> None:
    with client(postfix, UNTRUSTED) as c:
        assert auth_login(c, "bob@example.com", "bob-secret").code == 235
        assert_table(c.cmd("MAIL FROM:<bob@example.com>"), "auth_error_perm")


def test_real_sasl_plain_without_tls(postfix: Postfix) -> None:
    token = base64.b64encode(b"\0alice@example.com\0alice-secret").decode()
    with client(postfix, UNTRUSTED) as c:
        assert c.cmd(f"AUTH PLAIN {token}").code == 235
        assert_table(c.cmd("MAIL FROM:<alice@example.com>"), "auth_mode_unsupported")


@pytest.mark.parametrize("ehlo_again", [True, False], ids=["ehlo-again", "no-ehlo-again"])
def test_real_sasl_plain_after_starttls(postfix: Postfix, ehlo_again: bool) -> None:
    """Review rev198 M1: Postfix takes AUTH and MAIL right after STARTTLS with no new
    EHLO (RFC 3207: the client SHOULD send one), so no HELO step said the session was
    encrypted, and the login got auth_mode_unsupported at every attempt. postfix-config
    asks for {tls_version} at MAIL too."""
    token = base64.b64encode(b"\0alice@example.com\0alice-secret").decode()
    with client(postfix, UNTRUSTED) as c:
        assert c.starttls().code == 220
        if ehlo_again:
            assert c.ehlo(UNTRUSTED["helo"]).code == 250
        assert c.cmd(f"AUTH PLAIN {token}").code == 235
        assert c.cmd("MAIL FROM:<alice@example.com>").code == 250
        assert c.cmd("RCPT TO:<x@foreign.example>").code == 250  # logged in: relayed


# --- RCPT TO ------------------------------------------------------------------------


def test_host_denies_relay(postfix: Postfix) -> None:
    """relay_control = "postfix" (the default): Postfix refuses with the table's reply
    from its access map and puts its own prefix in front (tests/e2e/test_postfix_deploy.py
    has the exact unprefixed text of relay_control = "milter")."""
    with client(postfix, UNTRUSTED) as c:
        assert c.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert c.cmd("RCPT TO:<x@foreign.example>").lines == (
            "553 5.7.1 <x@foreign.example>: Recipient address rejected: "
            + default_line("host_denies_relay"),
        )
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
    assert "NOQUEUE: reject: RCPT" in postfix.maillog()


def test_relay_domain_fail(postfix: Postfix) -> None:
    with client(postfix, TRUSTED) as c:
        assert c.cmd("MAIL FROM:<someone@foreign.example>").code == 250
        assert_table(c.cmd("RCPT TO:<x@other.example>"), "relay_domain_fail")


def test_rcpt_limit(postfix: Postfix) -> None:
    with client(postfix, UNTRUSTED) as c:
        assert c.cmd("MAIL FROM:<a@sender.example>").code == 250
        for _ in range(3):
            assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        assert_table(c.cmd("RCPT TO:<sales@example.com>"), "rcpt_limit")


@pytest.mark.parametrize(
    ("rcpt", "reply_id"),
    [
        ("nobody@example.com", "mailbox_unavailable"),
        ("carol@example.com", "mailbox_unavailable_temp"),
        ("bob@example.com", "user_locked"),
        ("staff@example.com", "private_list_denied"),
    ],
)
def test_recipient_replies(postfix: Postfix, rcpt: str, reply_id: str) -> None:
    with client(postfix, UNTRUSTED) as c:
        assert c.cmd("MAIL FROM:<outsider@sender.example>").code == 250
        assert_table(c.cmd(f"RCPT TO:<{rcpt}>"), reply_id)


def test_utf8_text_with_and_without_smtputf8(postfix: Postfix) -> None:
    for params in ("", " SMTPUTF8"):
        with client(postfix, UNTRUSTED) as c:
            reply = c.cmd(f"MAIL FROM:<spammer@bad.example>{params}")
        assert_table(reply, "host_denies_sender")
        assert "拒绝发件人地址".encode() in reply.raw


# --- DATA / end of message ----------------------------------------------------------

HEADERS = (
    "From: Friend <friend@sender.example>\r\n"
    "To: alice@example.com\r\n"
    "Subject: hello\r\n"
    "Message-ID: <e2e-{n}@sender.example>\r\n"
)


def send(postfix: Postfix, message: str | bytes, sender: str = "friend@sender.example") -> Reply:
    raw = message.encode() if isinstance(message, str) else message
    with client(postfix, UNTRUSTED) as c:
        assert c.cmd(f"MAIL FROM:<{sender}>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        return c.data(raw)


def test_accepted_mail_arrives_intact(postfix: Postfix) -> None:
    body = "".join(f"line {i}: the quick brown fox\r\n" for i in range(200))
    message = HEADERS.format(n=1) + "\r\n" + body
    reply = send(postfix, message)
    assert reply.code == 250, reply
    queue_id = re.search(r"queued as (\w+)", reply.lines[-1])
    assert queue_id
    delivered = postfix.wait_delivered(queue_id.group(1))
    head, _, delivered_body = delivered.partition(b"\n\n")
    assert delivered_body.replace(b"\n", b"\r\n") == body.encode()
    for line in HEADERS.format(n=1).encode().split(b"\r\n")[:-1]:
        assert line in head.split(b"\n")
    assert b"X-Smtpguard-Loop: mx.example.com" in head


def delivered_marker(postfix: Postfix, n: int) -> str:
    """Message ``n`` from friend@sender.example to alice, delivered: its loop marker
    field as read back (folded over lines), CRLF-terminated, to put in a message."""
    reply = send(postfix, HEADERS.format(n=n) + "\r\nhi\r\n")
    queue_id = re.search(r"queued as (\w+)", reply.lines[-1])
    assert reply.code == 250, reply
    assert queue_id, reply
    head = postfix.wait_delivered(queue_id.group(1)).partition(b"\n\n")[0].decode()
    field = re.search(r"^X-Smtpguard-Loop: mx\.example\.com; n=\w+;.*(?:\n\t.*)*", head, re.M)
    assert field, head
    return field.group(0).replace("\n", "\r\n") + "\r\n"


def test_the_keyed_marker_is_a_loop_only_for_its_sender_and_recipients(
    postfix: Postfix,
) -> None:
    """Review rev105, rev107 F1: the marker of a delivered message names its envelope
    sender and recipient (keyed hashes, folded over lines); sent back as it arrived for
    that recipient it is a loop, sent on to another user or by a list host's own
    envelope sender it is not."""
    again = delivered_marker(postfix, 3) + HEADERS.format(n=4) + "\r\nhi\r\n"
    assert_table(send(postfix, again), "looping_message")
    resent = (
        (UNTRUSTED, "friend@sender.example", "dave"),
        (TRUSTED, "news-bounces@example.com", "alice"),  # the list host of ours
    )
    for host, sender, rcpt in resent:
        with client(postfix, host) as c:
            assert c.cmd(f"MAIL FROM:<{sender}>").code == 250
            assert c.cmd(f"RCPT TO:<{rcpt}@example.com>").code == 250
            assert c.data(again.encode()).code == 250


def test_the_keyed_marker_naming_some_recipients_lets_all_have_it(postfix: Postfix) -> None:
    """Review rev108 F2, rev114 F1: a host of ours that keeps the original envelope
    sender (an alias expansion, a Sieve redirect) sends the message back for alice, who
    had it, and dave, who did not: Postfix delivers to both (before, both were refused;
    dropping alice could lose a copy the MTA's own aliases sent round a loop)."""
    again = delivered_marker(postfix, 5) + HEADERS.format(n=6) + "\r\nhi\r\n"
    with client(postfix, TRUSTED) as c:
        assert c.cmd("MAIL FROM:<friend@sender.example>").code == 250
        assert c.cmd("RCPT TO:<alice+team@example.com>").code == 250
        assert c.cmd("RCPT TO:<dave@example.com>").code == 250
        reply = c.data(again.encode())
    second = re.search(r"queued as (\w+)", reply.lines[-1])
    assert reply.code == 250, reply
    assert second, reply
    delivered = postfix.wait_delivered(second.group(1)).decode()
    assert delivered.count("X-Smtpguard-Loop:") == 2
    sent = re.findall(rf"{second.group(1)}: to=<([^>]+)>.*status=sent", postfix.maillog())
    assert sorted(sent) == ["alice+team@example.com", "dave@example.com"], postfix.maillog()


def test_looping_message(postfix: Postfix) -> None:
    received = (
        "Received: from a.example (a.example [198.51.100.1]) by b.example (Postfix)"
        " with ESMTP id 1; Sat, 28 Nov 2026 17:00:00 +0000\r\n"
    )
    assert_table(
        send(postfix, received * 31 + HEADERS.format(n=2) + "\r\nhi\r\n"), "looping_message"
    )


def test_fake_router(postfix: Postfix) -> None:
    forged = (
        "Received: from mx.example.com (mx.example.com [203.0.113.25]) by mx.example.com"
        " with ESMTP id 1; Sat, 28 Nov 2026 17:00:00 +0000\r\n"
    )
    assert_table(send(postfix, forged + HEADERS.format(n=3) + "\r\nhi\r\n"), "fake_router")


def test_line_parse_error(postfix: Postfix) -> None:
    message = HEADERS.format(n=4) + "\r\nshort\r\n" + "x" * 999 + "\r\n"
    assert_table(send(postfix, message), "line_parse_error")


def test_a_trusted_hosts_long_line_is_delivered(postfix: Postfix) -> None:
    """Review rev209: a site's own host's cron mail with a 1500-octet line got 551,
    where Postfix delivers it whole."""
    line = "y" * 1500
    with client(postfix, TRUSTED) as c:
        assert c.cmd("MAIL FROM:<cron@relay.example.com>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        reply = c.data((HEADERS.format(n=7) + "\r\nshort\r\n" + line + "\r\n").encode())
    assert reply.code == 250, reply
    queued = re.search(r"queued as (\w+)", reply.lines[-1])
    assert queued, reply
    delivered = postfix.wait_delivered(queued.group(1))
    assert delivered.endswith(b"\nshort\n" + line.encode() + b"\n")


@pytest.mark.parametrize(
    ("field", "accepted"),
    [
        ("X-Long:" + "a" * 991, True),  # 998 octets, no space after the colon
        ("X-Long:" + "a" * 992, False),
        ("X-Long: " + "a" * 990, True),
        ("X-Long: " + "a" * 991, False),
    ],
    ids=["998-unspaced", "999-unspaced", "998-spaced", "999-spaced"],
)
def test_header_line_of_998_octets_as_written(postfix: Postfix, field: str, accepted: bool) -> None:
    """Postfix removes the space after the colon unless the milter negotiates
    SMFIP_HDR_LEADSPC; smtpguard does, so a line is measured as the client wrote it
    (found by review: a 998-octet ``Name:value`` line was refused for good)."""
    reply = send(postfix, HEADERS.format(n=6) + field + "\r\n\r\nhi\r\n")
    if accepted:
        assert reply.code == 250, reply
    else:
        assert_table(reply, "line_parse_error")


def test_message_too_long_while_streaming(postfix: Postfix) -> None:
    body = ("y" * 78 + "\r\n") * 13_000  # ~1.04 MB, no SIZE= declared
    assert_table(send(postfix, HEADERS.format(n=5) + "\r\n" + body), "message_too_long")


def test_more_header_fields_than_the_limit_is_refused_for_good(postfix: Postfix) -> None:
    """A 5xx, not the 450 it had (review rev165 F1): a retry has as many fields. Postfix
    adds Date: (not its own Received:), so 99 of the client's own fields pass and 100
    do not."""
    for extra, passes in ((95, True), (96, False)):
        fields = "".join(f"X-Field-{i}: v\r\n" for i in range(extra))
        reply = send(postfix, HEADERS.format(n=20 + extra) + fields + "\r\nbody\r\n")
        if passes:
            assert reply.code == 250, reply
        else:
            assert_table(reply, "message_too_long")


def test_attachment_too_long(postfix: Postfix) -> None:
    data = base64.encodebytes(b"\x01" * 60_000).decode().replace("\n", "\r\n")
    message = (
        HEADERS.format(n=6)
        + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
        "--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        "--b1\r\nContent-Type: application/octet-stream\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="big.bin"\r\n\r\n' + data + "--b1--\r\n"
    )
    reply = send(postfix, message)
    assert_table(reply, "attachment_too_long")
    assert "单个附件大小超出限制".encode() in reply.raw  # UTF-8 survives cleanup at EOM


# --- rows decided by Postfix itself -------------------------------------------------


def test_mta_level_rows_get_the_table_text_as_footer(postfix: Postfix) -> None:
    with client(postfix, UNTRUSTED) as c:
        assert c.cmd("RCPT TO:<alice@example.com>").lines == (
            "503 5.5.1 Error: need MAIL command (请先发送 MAIL)",
        )
        assert c.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert c.cmd("DATA").lines == ("554 5.5.1 Error: no valid recipients (请先发送 RCPT)",)
        assert c.cmd("MAIL FROM:<b@sender.example>").lines == (
            "503 5.5.1 Error: nested MAIL command (命令顺序错误)",
        )
        assert c.cmd("FROBNICATE").lines == ("500 5.5.2 Error: command not recognized (语法错误)",)


def test_footer_keeps_percent_and_dollar_signs_of_the_table_text() -> None:
    """The table writes "%" as "%%" (libmilter's escape) and "$" is a regexp_table
    substitution and a footer macro in Postfix: the client reads the text as written.
    The admin's own smtpd_reject_footer, which Postfix drops where a footer map entry
    matches, follows it (review rev205 F3), its macros expanded as Postfix would."""
    text = "请先发送 MAIL (100%% 检查, 费用 $5, $client_address)"
    site = e2e_site("footers", {"replies": {"override": {"mail_first": {"text": {"zh": text}}}}})
    admin = "smtpd_reject_footer = \\c - help: https://help.example.com/ for $client_address\n"
    with running(site):
        postfix = start_postfix(site.config, admin)
        try:
            with client(postfix, UNTRUSTED) as c:
                assert c.cmd("RCPT TO:<alice@example.com>").lines == (
                    "503 5.5.1 Error: need MAIL command"
                    " (请先发送 MAIL (100% 检查, 费用 $5, $client_address))"
                    " - help: https://help.example.com/ for 198.51.100.7",
                )
        finally:
            postfix.stop()


# --- faults -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_stack() -> Iterator[tuple[Running, Postfix, Site]]:
    site = e2e_site("faults", {"limits": {"max_sessions": 1}})
    with running(site) as service, start_postfix(site.config) as postfix:
        yield service, postfix, site


def test_queue_unavailable(fault_stack: tuple[Running, Postfix, Site]) -> None:
    _service, postfix, _site = fault_stack
    with client(postfix, UNTRUSTED) as first:
        # An idle session holds its slot from connect on (review rev73 F2: Postfix
        # kept an unanswered connect event until MAIL FROM, and a second client got
        # 250 while this one waited after EHLO).
        with client(postfix, UNTRUSTED) as second:
            assert_table(second.cmd("MAIL FROM:<a@sender.example>"), "queue_unavailable")
        assert first.cmd("MAIL FROM:<a@sender.example>").code == 250


def first_mail(postfix: Postfix, sender: str, **extra: str) -> tuple[SmtpClient, Reply]:
    """A client and the first reply to its MAIL FROM that is not ``queue_unavailable``
    (``max_sessions = 1``): libmilter frees a session's slot in its close callback,
    after smtpd hung up, so the previous session's slot may still be taken for a
    moment. Polls, with a deadline."""

    def attempt() -> tuple[SmtpClient, Reply] | None:
        c = client(postfix, UNTRUSTED, **extra)
        reply = c.cmd(f"MAIL FROM:<{sender}>")
        if reply.lines != (expected_line("queue_unavailable"),):
            return c, reply
        c.quit()
        return None

    return poll_for(attempt, 5, "the session slot was never released")


def test_database_temp_error_and_auth_error_temp(
    fault_stack: tuple[Running, Postfix, Site],
) -> None:
    _service, postfix, site = fault_stack
    db = sqlite3.connect(site.directory, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        c, reply = first_mail(postfix, "outsider@sender.example")
        with c:
            assert reply.code == 250, reply
            assert_table(c.cmd("RCPT TO:<alice@example.com>"), "database_temp_error")
        c, reply = first_mail(postfix, "alice@example.com", login="alice@example.com")
        with c:
            assert_table(reply, "auth_error_temp")
    finally:
        db.execute("ROLLBACK")
        db.close()


def test_dead_milter_defers_never_accepts() -> None:
    site = e2e_site("dead")
    postfix = start_postfix(site.config)  # nothing listens on the milter socket
    try:
        with client(postfix, UNTRUSTED) as c:
            reply = c.cmd("MAIL FROM:<a@sender.example>")
            assert reply.code == 451, reply
            assert reply.lines[0].startswith("451 4.")
        # Trusted clients are deferred too: nothing passes unchecked, nothing is relayed.
        with client(postfix, TRUSTED) as c:
            assert c.cmd("MAIL FROM:<alice@example.com>").code == 451
    finally:
        postfix.stop()


# --- DNS, scanners and bulk through Postfix -----------------------------------------

GOOD = {"addr": GOOD_IP, "name": "mx.good.test", "helo": "mx.good.test"}


@pytest.fixture(scope="module")
def full_stack(unbound: DnsServer) -> Iterator[tuple[Running, Postfix]]:
    clamd_dir = Path(tempfile.mkdtemp(prefix="smtpguard-clamd-"))
    clamd = start_clamd(clamd_dir)
    site = e2e_site(
        "full",
        {
            "dns": {"nameservers": ["127.0.0.1"], "port": unbound.port, "timeout": 1.0},
            "virus": {"backend": "clamd", "clamd_socket": f"unix:{clamd.socket}"},
            "bulk": {"threshold": 2},
            "dnsbl": {"zones": DNSBL_ZONES},
        },
    )
    try:
        with running(site) as service, start_postfix(site.config) as postfix:
            yield service, postfix
    finally:
        clamd.stop()


@pytest.mark.parametrize(
    ("ident", "sender", "reply_id"),
    [
        ({**GOOD, "addr": RBL_IP, "name": "[UNAVAILABLE]"}, "someone@good.test", "rbl_deny"),
        (
            {**GOOD, "addr": RELAY_IP, "name": "[UNAVAILABLE]"},
            "someone@good.test",
            "openrelay_check",
        ),
        (
            {**GOOD, "addr": NO_PTR_IP, "name": "[UNAVAILABLE]"},
            "someone@good.test",
            "smtpport_check",
        ),
        (GOOD, "someone@nx.test", "sender_unvalidated"),
        (GOOD, "someone@spf-fail.test", "remote_ip_mismatch"),
    ],
)
def test_dns_replies_through_postfix(
    full_stack: tuple[Running, Postfix], ident: dict[str, str], sender: str, reply_id: str
) -> None:
    _service, postfix = full_stack
    with client(postfix, ident) as c:
        assert_table(c.cmd(f"MAIL FROM:<{sender}>"), reply_id)
    with client(postfix, GOOD) as c:
        assert c.cmd("MAIL FROM:<someone@good.test>").code == 250


def send_good(postfix: Postfix, message: bytes) -> Reply:
    with client(postfix, GOOD) as c:
        assert c.cmd("MAIL FROM:<someone@good.test>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        return c.data(message)


def test_virus_found_through_postfix(full_stack: tuple[Running, Postfix]) -> None:
    _service, postfix = full_stack
    message = HEADERS.format(n=20).encode() + b"\r\nhere:\r\n" + EICAR + b"\r\n"
    assert_table(send_good(postfix, message), "virus_found")


def test_antispam_reject_through_postfix(full_stack: tuple[Running, Postfix]) -> None:
    _service, postfix = full_stack
    message = HEADERS.format(n=21).encode() + b"\r\nbuy now\r\n" + GTUBE + b"\r\n"
    assert_table(send_good(postfix, message), "antispam_reject")


def test_same_size_flood_through_postfix(full_stack: tuple[Running, Postfix]) -> None:
    _service, postfix = full_stack
    replies = [
        send_good(postfix, (HEADERS.format(n=30 + i) + "\r\n" + "same offer\r\n" * 30).encode())
        for i in range(3)
    ]
    assert [r.code for r in replies[:2]] == [250, 250]
    assert_table(replies[2], "same_size_flood")


def test_internal_error_through_postfix() -> None:
    site = e2e_site("faulty")
    script = Path(__file__).resolve().parents[1] / "support" / "faulty_service.py"
    with running(site, [sys.executable, str(script), str(site.config)]):
        postfix = start_postfix(site.config)
        try:
            with client(postfix, UNTRUSTED) as c:
                assert c.cmd("MAIL FROM:<outsider@sender.example>").code == 250
                assert_table(c.cmd("RCPT TO:<alice@example.com>"), "internal_error")
        finally:
            postfix.stop()
