"""End to end through a live Sendmail 8.17 with smtpguard attached (Sendmail support).

A raw SMTP client (``support/smtp.py``) talks to a throwaway Sendmail
(``support/sendmail.py``) whose milter lines are the Sendmail block of ``README.md``
(the output of ``smtpguard sendmail-config`` for the sample config), with the test's
socket path put in; smtpguard runs as the real ``smtpguard run`` service.

What is proven here:

* every milter-decided reply id reaches the client with its code, enhanced code and
  English text, with the ``<address>... `` prefix Sendmail
  adds to 450, 550 and 553 (:func:`through_sendmail`);
* replies are plain printable ASCII, no byte of 0x80 or more, although the site's
  language policy is the default (English and Chinese, UTF-8 always): smtpguard
  recognised Sendmail by macro ``v``. Every client session checks every reply it read
  (``LoopbackClient.assert_printable``);
* with only the README's ``INPUT_MAIL_FILTER`` line (no macro defines, so no ``v``),
  replies are still ASCII and the client stays in step (``bare_mta``);
* the snippet's ``confMAX_HOP`` (``limits.max_hops`` + 1) lets smtpguard, not Sendmail,
  decide hops: 30 hops are delivered, 31 get ``looping_message``; Sendmail's default
  of 25 would accept 25 with a 250 and then hold them (``bare_mta`` again);
  A Chinese reply is mangled by Sendmail (it clears the 8th bit: control bytes, a bare
  CR, a NUL that cuts the text; :func:`test_utf8_towards_sendmail_is_mangled`) and
  could end the reply line early, so after each refusal a follow-up command must get
  its own reply (:func:`refused`);
* accepted mail arrives intact; Sendmail's own replies for the MTA-level rows of the
  table are pinned (``contrib/sendmail/README.md`` compares them with the table);
* with the milter gone, ``F=T`` gives Sendmail's ``451 4.3.2`` at MAIL (and at RCPT when
  it dies mid-session).

Sendmail has no XCLIENT, so the milter sees the client's real address. Most tests
connect from 127.0.0.1, which the test site does not trust (``BASE_CONFIG``'s
``trusted_networks = ["192.0.2.0/24"]``); the client binds to other loopback addresses
where it needs another identity: 127.0.0.3 is trusted (``relay_domain_fail``), and
127.0.0.2 is an ordinary untrusted client that Sendmail's own relay rules apply to
(Sendmail always lets 127.0.0.1 relay).

The ids that need real components are proven with them, as in test_postfix.py's
"DNS, scanners and bulk through Postfix":

* ``rbl_deny``, ``openrelay_check``, ``smtpport_check``, ``sender_unvalidated``,
  ``remote_ip_mismatch`` (:func:`test_dns_replies`): a second site (``full_mta``)
  whose ``[dns]`` points at the session's unbound (``conftest.py``) with the DNS lists
  of test_postfix.py. The DNS identities are loopback addresses
  (``support/unbound.py``, "loopback clients for the Sendmail end-to-end tests"):
  127.0.0.7 is listed in rbl.test, 127.0.0.8 in relays.test, 127.0.0.9 has no PTR,
  127.0.0.10 has a forward-confirmed PTR and SPF pass for loop.test. All are decided
  at MAIL; 554 and 556 are not prefixed.
* ``virus_found``, ``antispam_reject``, ``same_size_flood`` (:func:`test_scanner_replies`,
  :func:`test_same_size_flood`): the same site with clamd (EICAR), the built-in
  anti-spam rules (GTUBE) and ``bulk.threshold = 2``; end of message, 552, never
  prefixed.
* ``domain_auth_error``, ``auth_error_perm``, ``auth_error_temp``, ``sender_mismatch``,
  ``auth_mode_unsupported`` (:func:`test_auth_replies`, :func:`test_auth_error_temp`):
  a Sendmail with SMTP AUTH (Cyrus SASL, a private sasldb, PLAIN and LOGIN,
  ``TRUST_AUTH_MECH``; ``support/sendmail.py``, :func:`~support.sendmail.sasl_dir`)
  and Sendmail's own relay control, attached to the main site; a real AUTH LOGIN or
  AUTH PLAIN, then MAIL. Sendmail passes ``{auth_type}`` and ``{auth_authen}``; 451,
  551 and 554 are not prefixed. There is no TLS, so the site requires TLS for PLAIN
  only (``EXTRA``), and PLAIN gives ``auth_mode_unsupported``.

So every milter-decided id of ``support/expected.py`` is proven through Sendmail; the
MTA-level rows are Sendmail's own (:func:`test_mta_level_rows_are_sendmails_own`).
"""

from __future__ import annotations

import base64
import contextlib
import re
import smtplib
import socket
import sqlite3
import struct
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from smtpguard.app import load
from smtpguard.sendmail import sendmail_cf_problems, sendmail_mc, sendmail_timeouts
from support.daemons import EICAR, GTUBE, start_clamd
from support.expected import SPEC
from support.polling import poll_for
from support.sendmail import (
    Sendmail,
    SendmailInstall,
    fetch_debs,
    filter_line_only,
    install,
    milter_socket_dir,
    readme_snippet,
    sasl_dir,
    sendmail,
    tls_dir,
    with_socket,
)
from support.service import (
    DENIED_SENDERS,
    REFUSED_HELOS,
    RULES,
    Running,
    Site,
    make_site,
    merge,
    running,
    smtpguard,
)
from support.smtp import Reply, SmtpClient
from support.unbound import (
    DNSBL_ZONES,
    LOOP_DOMAIN,
    LOOP_GOOD_IP,
    LOOP_NO_PTR_IP,
    LOOP_RBL_IP,
    LOOP_RELAY_IP,
    NX_DOMAIN,
    SPF_FAIL_DOMAIN,
    DnsServer,
)

pytestmark = pytest.mark.integration

#: The site: limits small enough to reach, 127.0.0.1 untrusted (BASE_CONFIG).
LIMITS = {
    "max_rcpt": 3,
    "max_message_size": 1_000_000,
    "max_attachment_size": 50_000,
    # The sample config's value, which the README's snippet (confMAX_HOP 31) is for;
    # above Sendmail's default of 25.
    "max_hops": 30,
}
#: A loopback client address the site trusts, and one that Sendmail does not treat as
#: local (it lets 127.0.0.1 relay whatever its relay settings say).
TRUSTED_CLIENT = "127.0.0.3"
OTHER_CLIENT = "127.0.0.2"
EXTRA = {
    "site": {"trusted_networks": ["192.0.2.0/24", f"{TRUSTED_CLIENT}/32"]},
    "limits": LIMITS,
    "content": {"add_loop_marker": True},
    # The AUTH instance has no TLS: allow LOGIN without it, so that PLAIN alone gives
    # auth_mode_unsupported (as in test_postfix.py).
    "policy": {"auth_tls_required": ["PLAIN"]},
}
#: Reply codes that Sendmail prefixes with "<address>... " (measured; see the README).
PREFIXED = frozenset({"450", "550", "553"})
OK = "250 2.0.0 OK"
SENDER = "friend@sender.example"
HEADERS = (
    f"From: Friend <{SENDER}>\r\n"
    "To: alice@example.com\r\n"
    "Subject: hello\r\n"
    "Date: Sat, 28 Nov 2026 17:00:00 +0000\r\n"
    "Message-ID: <1@sender.example>\r\n"
).encode()
RECEIVED = (
    b"Received: from mail.sender.example (mail.sender.example [198.51.100.7])\r\n"
    b"\tby relay.sender.example with ESMTP id 4F1A2B3C; Sat, 28 Nov 2026 16:00:00 +0000\r\n"
)


MAIL = f"MAIL FROM:<{SENDER}>"
MAIL_OK = f"250 2.1.0 <{SENDER}>... Sender ok"
ALICE = "RCPT TO:<alice@example.com>"
ALICE_OK = "250 2.1.5 <alice@example.com>... Recipient ok"


def through_sendmail(reply_id: str, address: str | None = None) -> str:
    """The line a client reads for ``reply_id`` when smtpguard answers Sendmail.

    English only (ASCII), and for 450/550/553 Sendmail's ``<address>... `` in front.
    """
    code, xcode, en, _zh = SPEC[reply_id]
    prefix = f"{address}... " if address is not None and code in PREFIXED else ""
    return f"{code} {xcode} {prefix}{en}"


def assert_ascii(reply: Reply) -> None:
    for line in reply.raw.split(b"\r\n")[:-1]:
        assert all(0x20 <= byte < 0x7F for byte in line), f"not printable ASCII: {reply.raw!r}"


def expect(client: SmtpClient, command: str, *lines: str) -> Reply:
    reply = client.cmd(command)
    assert_ascii(reply)
    assert reply.lines == lines, f"{command!r}: got {reply}"
    return reply


def refused(client: SmtpClient, command: str, *lines: str) -> None:
    """``command`` gets exactly ``lines``; the next command then gets its own reply."""
    expect(client, command, *lines)
    assert client.buf == b"", f"bytes after the reply: {client.buf!r}"
    expect(client, "NOOP", OK)
    assert client.buf == b""


def refused_sender(client: SmtpClient, path: str, reply_id: str) -> None:
    """``MAIL FROM:path`` gets ``reply_id`` as Sendmail words it; then a NOOP works."""
    refused(client, f"MAIL FROM:{path}", through_sendmail(reply_id, path))


def refused_recipient(client: SmtpClient, path: str, reply_id: str) -> None:
    """``RCPT TO:path`` gets ``reply_id`` as Sendmail words it; then a NOOP works."""
    refused(client, f"RCPT TO:{path}", through_sendmail(reply_id, path))


def sender_ok(address: str) -> str:
    return f"250 2.1.0 {address}... Sender ok"


def recipient_ok(address: str) -> str:
    return f"250 2.1.5 {address}... Recipient ok"


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def sendmail_install(tmp_path_factory: pytest.TempPathFactory) -> SendmailInstall:
    return install(fetch_debs(), tmp_path_factory.mktemp("sendmail-root"))


def guard_site(tmp: Path, sock: Path, extra: dict[str, object] | None = None) -> Site:
    return make_site(tmp, merge(merge(EXTRA, {"milter": {"socket": f"unix:{sock}"}}), extra or {}))


def site_socket(site: Site) -> Path:
    return Path(load(site.config).milter.socket.removeprefix("unix:"))


def snippet(site: Site) -> str:
    """What users copy into sendmail.mc: the README's Sendmail block, for this site's
    socket."""
    return with_socket(readme_snippet(), site_socket(site))


@contextmanager
def guarded_sendmail(
    install: SendmailInstall,
    tmp: Path,
    extra: dict[str, object] | None = None,
    command: Callable[[Path], list[str]] | None = None,
    lines: Callable[[str], str] = str,
) -> Iterator[tuple[Running, Sendmail]]:
    """smtpguard on a site with ``extra``, behind its own Sendmail; their files go below
    ``tmp``. ``command`` gives the service's argv for the config file (default:
    ``smtpguard run``); ``lines`` what of the README's .mc lines the Sendmail gets
    (default: all)."""
    with milter_socket_dir() as sockets:
        sock = sockets / "smtpguard.sock"
        site = guard_site(tmp / "site", sock, extra)
        argv = command(site.config) if command is not None else None
        with (
            running(site, argv, wait_for=str(sock)) as svc,
            sendmail(install, tmp / "mta", lines(snippet(site))) as sm,
        ):
            yield svc, sm


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with milter_socket_dir() as sockets:
        site = guard_site(tmp_path_factory.mktemp("guard"), sockets / "smtpguard.sock")
        with running(site, wait_for=str(sockets / "smtpguard.sock")) as svc:
            yield svc


@pytest.fixture(scope="module")
def mta(
    sendmail_install: SendmailInstall, guard: Running, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sendmail]:
    with sendmail(sendmail_install, tmp_path_factory.mktemp("mta"), snippet(guard.site)) as sm:
        yield sm


@pytest.fixture
def client(mta: Sendmail) -> Iterator[SmtpClient]:
    with mta.client() as c:
        assert c.greeting.code == 220
        yield c


def greeted(client: SmtpClient, helo: str = "client.test") -> SmtpClient:
    reply = client.ehlo(helo)
    assert reply.code == 250, reply
    return client


def relayed(client: SmtpClient, sender: str, rcpt: str, token: bytes) -> None:
    """MAIL FROM ``sender`` and RCPT TO ``rcpt`` accepted, and a message marked with
    ``token`` taken for delivery."""
    expect(client, f"MAIL FROM:<{sender}>", sender_ok(f"<{sender}>"))
    expect(client, f"RCPT TO:<{rcpt}>", recipient_ok(f"<{rcpt}>"))
    reply = client.data(HEADERS + b"\r\n" + token + b"\r\n")
    assert reply.code == 250, reply


def envelope(client: SmtpClient, rcpt: str = "alice@example.com") -> SmtpClient:
    greeted(client)
    expect(client, MAIL, MAIL_OK)
    expect(client, f"RCPT TO:<{rcpt}>", recipient_ok(f"<{rcpt}>"))
    return client


# --- the instance itself ----------------------------------------------------------


def decisions(log: str, reply_id: str) -> int:
    """How many decision lines name ``reply_id`` (each transaction's summary line names
    it too)."""
    return sum(
        1
        for line in log.splitlines()
        if " decision " in line and f" reply={reply_id} " in f"{line} "
    )


def test_the_same_site_answers_postfix_in_utf8(guard: Running) -> None:
    """The ASCII replies in this module come from detecting Sendmail, not from the
    site's language policy."""
    listing = smtpguard(guard.site, "replies").stdout
    assert "553 5.7.1 host denies the sender. (拒绝发件人地址)" in listing


def test_snippet_is_in_the_running_config(mta: Sendmail, guard: Running) -> None:
    mc = (mta.dir / "test.mc").read_text()
    assert snippet(guard.site) in mc
    cf = (mta.dir / "test.cf").read_text()
    assert "Xsmtpguard, S=local:/run/smtpguard-tests/" in cf
    # The site has no scanner: R: keeps its floor, E: its 5 minutes.
    assert "F=T, T=C:30s;S:30s;R:30s;E:5m" in cf
    # Sendmail's default connect list, with v and {client_resolve} appended.
    assert (
        "\nO Milter.macros.connect=j, _, {daemon_name}, {if_name}, {if_addr}, v, {client_resolve}\n"
        in cf
    )
    assert "\nO Milter.macros.eom={msg_id}\n" in cf
    assert "\nO MaxHopCount=31\n" in cf


def test_readme_snippet_is_the_sites_own_sendmail_config(guard: Running) -> None:
    """The README's lines fit the test site: what sendmail-config prints for it, but
    for the milter's name (only Sendmail's label for it; "_2d" for "-" in m4 names) and
    the AuthOptions lines, which EXTRA's policy (LOGIN in clear) does not get."""
    generated = smtpguard(guard.site, "sendmail-config").stdout
    readme = snippet(guard.site)
    auth = readme.index("dnl AUTH: PLAIN and LOGIN offered only after STARTTLS")
    assert readme[auth:].count("\n") == 4
    assert re.sub(r"smtpguard(-|_2d)test(?![A-Za-z0-9])", "smtpguard", generated) == readme[:auth]


def test_accepted_mail_arrives_intact(client: SmtpClient, mta: Sendmail) -> None:
    body = (
        "Hello Alice, token INTACT-1.\r\n"
        ".a line that starts with a dot\r\n"
        "\ttabbed line, trailing spaces   \r\n"
        "8-bit text: caf\u00e9 \u4f60\u597d\r\n" + "x" * 998 + "\r\n"
        "\r\n"
        "last line\r\n"
    ).encode()
    envelope(client)
    reply = client.data(HEADERS + b"\r\n" + body)
    assert_ascii(reply)
    assert reply.code == 250, reply
    assert reply.text.endswith("Message accepted for delivery")
    delivery = mta.wait_for_delivery(b"INTACT-1")
    assert delivery.recipient == "alice@example.com"
    head, sep, delivered_body = delivery.message.partition(b"\n\n")
    assert sep
    assert delivered_body == lf(body)
    # Sendmail's Received header first, then the client's headers unchanged, then the
    # loop marker and the anti-spam status smtpguard adds (no Authentication-Results:
    # this site has no DNS, so neither SPF nor iprev ran).
    lines = head.split(b"\n")
    assert lines[0] == b"Received: from client.test (localhost [127.0.0.1])"
    assert lines[1].startswith(b"\tby mx.example.com (8.17")
    assert lines[2].startswith(b"\tfor <alice@example.com>; ")
    assert b"\n".join(lines[3:]) + b"\n" == lf(HEADERS) + (
        b"X-Smtpguard-Loop: mx.example.com\nX-Spam-Status: No, score=0.0 required=6.0 tests=none\n"
    )


def test_a_message_without_any_header_field_is_accepted(client: SmtpClient, mta: Sendmail) -> None:
    """Review rev111 F1: Sendmail passes no header field of its own, and with the end of
    headers negotiated away libmilter aborted such a message unanswered: Sendmail
    deferred it at its milter timeout (451 4.3.2 after 30 s), at every retry."""
    envelope(client)
    reply = client.data(b"\r\nno header at all, token NOHEADER-1\r\n")
    assert reply.code == 250, reply
    delivery = mta.wait_for_delivery(b"NOHEADER-1")
    assert delivery.recipient == "alice@example.com"


def test_queue_id_reaches_the_end_of_message_lines(
    client: SmtpClient, mta: Sendmail, guard: Running
) -> None:
    """The generated lines add no ``i`` to the end-of-message list: Sendmail's queue id
    comes with MAIL (its default list) and stays the transaction's; the summary
    written at end of message carries the id the client was told."""
    envelope(client)
    reply = client.data(HEADERS + b"\r\nQID-1\r\n")
    assert reply.code == 250, reply
    qid = reply.text.split()[1]  # "2.0.0 <qid> Message accepted for delivery"
    poll_for(
        lambda: next((x for x in guard.log().splitlines() if f" qid={qid} " in f"{x} "), None),
        what=lambda: guard.log()[-2000:],
    )


def test_refused_recipient_does_not_disturb_the_transaction(
    client: SmtpClient, mta: Sendmail
) -> None:
    greeted(client)
    expect(client, MAIL, MAIL_OK)
    refused_recipient(client, "<nobody@example.com>", "mailbox_unavailable")
    expect(client, ALICE, ALICE_OK)
    reply = client.data(HEADERS + b"\r\nINTACT-2\r\n")
    assert reply.code == 250, reply
    assert mta.wait_for_delivery(b"INTACT-2").recipient == "alice@example.com"
    assert not [d for d in mta.deliveries() if d.recipient.startswith("nobody")]


# --- MAIL FROM --------------------------------------------------------------------


def test_helo_first(client: SmtpClient) -> None:
    refused(client, MAIL, through_sendmail("helo_first"))
    greeted(client)
    expect(client, MAIL, MAIL_OK)


@pytest.mark.parametrize("helo", REFUSED_HELOS)
def test_helo_error(client: SmtpClient, helo: str) -> None:
    greeted(client, helo)
    refused(client, MAIL, through_sendmail("helo_error"))
    # A new EHLO with a proper name starts over, in step.
    greeted(client)
    expect(client, MAIL, MAIL_OK)


def test_helo_with_the_client_literal_passes(client: SmtpClient) -> None:
    greeted(client, "[127.0.0.1]")
    expect(client, MAIL, MAIL_OK)


@pytest.mark.parametrize(
    "path",
    [
        "<a..b@sender.example>",
        "<us er@sender.example>",
        "<user@-bad-.example>",
        "<user@bad_dom.example>",
        "<" + "a" * 65 + "@sender.example>",
    ],
)
def test_mail_from_invalid(client: SmtpClient, path: str) -> None:
    """The malformed paths Sendmail lets through to the milter (552: no prefix)."""
    greeted(client)
    refused_sender(client, path, "mail_from_invalid")
    expect(client, MAIL, MAIL_OK)


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("<@sender.example>", "553 5.1.3 <@sender.example>... User address required"),
        ("<user@>", "553 5.1.3 <user@>... Hostname required"),
        ("<user@sender.example", "553 5.0.0 <user@sender.example... Unbalanced '<'"),
    ],
)
def test_mail_from_refused_by_sendmail_itself(client: SmtpClient, path: str, line: str) -> None:
    """Sendmail's parser answers these before the milter is asked (README)."""
    greeted(client)
    refused(client, f"MAIL FROM:{path}", line)


def test_message_too_long_from_size(client: SmtpClient) -> None:
    greeted(client)
    refused(client, f"{MAIL} SIZE=1000001", through_sendmail("message_too_long"))
    expect(client, f"{MAIL} SIZE=1000000", MAIL_OK)


@pytest.mark.parametrize("path", DENIED_SENDERS)
def test_host_denies_sender(client: SmtpClient, path: str) -> None:
    greeted(client)
    # 553: Sendmail puts the path, as the client wrote it, in front.
    refused_sender(client, path, "host_denies_sender")
    expect(client, MAIL, MAIL_OK)


def test_black_mail_address(guard: Running, mta: Sendmail) -> None:
    address = "pest@sender.example"
    smtpguard(guard.site, "blacklist", "add", address, "--reason", "sendmail e2e")
    try:
        with mta.client() as c:
            greeted(c)
            refused_sender(c, "<Pest@Sender.Example>", "black_mail_address")
    finally:
        smtpguard(guard.site, "blacklist", "remove", address)
    with mta.client() as c:
        greeted(c)
        expect(c, f"MAIL FROM:<{address}>", sender_ok(f"<{address}>"))


def test_relay_local_fail(client: SmtpClient) -> None:
    greeted(client)
    refused_sender(client, "<alice@example.com>", "relay_local_fail")
    expect(client, "MAIL FROM:<>", sender_ok("<>"))


# --- RCPT TO ----------------------------------------------------------------------


def test_host_denies_relay(client: SmtpClient) -> None:
    greeted(client)
    expect(client, MAIL, MAIL_OK)
    refused_recipient(client, "<x@foreign.example>", "host_denies_relay")
    expect(client, ALICE, ALICE_OK)
    expect(client, "RCPT TO:<x@relay.example>", recipient_ok("<x@relay.example>"))


def test_relay_domain_fail(mta: Sendmail) -> None:
    """A trusted client may relay only with a sender address of ours."""
    with mta.client(source=TRUSTED_CLIENT) as c:
        greeted(c, "mx.example.com")  # our own name is fine from a trusted host
        expect(c, "MAIL FROM:<someone@foreign.example>", sender_ok("<someone@foreign.example>"))
        refused_recipient(c, "<x@other.example>", "relay_domain_fail")
        expect(c, "RSET", "250 2.0.0 Reset state")
        relayed(c, "alice@example.com", "x@other.example", b"RELAYED-1")
    assert mta.wait_for_delivery(b"RELAYED-1").recipient == "x@other.example"


def test_the_hosts_own_name_is_local_mail(mta: Sendmail) -> None:
    """Sendmail's class w always holds $j (mx.example.com, in site.our_hostnames): what
    the host's programs send as root@ it goes out, and a stranger reaches postmaster@
    it. Found by review: 553 relay check domain fail and 553 host denies relay."""
    with mta.client(source=TRUSTED_CLIENT) as c:
        greeted(c, "mx.example.com")
        relayed(c, "root@mx.example.com", "x@other.example", b"FROM-THE-HOST-1")
    assert mta.wait_for_delivery(b"FROM-THE-HOST-1").recipient == "x@other.example"
    with mta.client(source=OTHER_CLIENT) as c:
        greeted(c)
        expect(c, MAIL, MAIL_OK)
        expect(
            c, "RCPT TO:<postmaster@mx.example.com>", recipient_ok("<postmaster@mx.example.com>")
        )
        refused_recipient(c, "<x@foreign.example>", "host_denies_relay")


def test_rcpt_limit(client: SmtpClient, mta: Sendmail) -> None:
    greeted(client)
    expect(client, MAIL, MAIL_OK)
    accepted = ["alice@example.com", "sales@example.com", "news@example.com"]
    for rcpt in accepted:
        expect(client, f"RCPT TO:<{rcpt}>", recipient_ok(f"<{rcpt}>"))
    # 451: no prefix.
    refused_recipient(client, "<x@relay.example>", "rcpt_limit")
    reply = client.data(HEADERS + b"\r\nLIMIT-1\r\n")
    assert reply.code == 250, reply
    got = sorted(d.recipient for d in mta.wait_for_deliveries(b"LIMIT-1", len(accepted)))
    assert got == sorted(accepted)


@pytest.mark.parametrize(
    ("rcpt", "reply_id"),
    [
        ("<nobody@example.com>", "mailbox_unavailable"),
        ("<carol@example.com>", "mailbox_unavailable_temp"),
        ("<bob@example.com>", "user_locked"),
        ("<staff@example.com>", "private_list_denied"),
    ],
)
def test_recipient_directory_replies(client: SmtpClient, rcpt: str, reply_id: str) -> None:
    greeted(client)
    expect(client, MAIL, MAIL_OK)
    refused_recipient(client, rcpt, reply_id)
    expect(client, ALICE, ALICE_OK)


def test_database_temp_error(client: SmtpClient, guard: Running) -> None:
    db = sqlite3.connect(guard.site.directory, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # directory readers now get "database is locked"
    try:
        greeted(client)
        expect(client, MAIL, MAIL_OK)
        refused_recipient(client, "<alice@example.com>", "database_temp_error")
        # A recipient that needs no directory lookup still passes.
        expect(client, "RCPT TO:<x@relay.example>", recipient_ok("<x@relay.example>"))
    finally:
        db.execute("ROLLBACK")
        db.close()


# --- end of message ---------------------------------------------------------------


def refused_message(client: SmtpClient, message: bytes, reply_id: str) -> None:
    reply = client.data(message)
    assert_ascii(reply)
    assert reply.lines == (through_sendmail(reply_id),), f"{reply_id}: got {reply}"
    expect(client, "NOOP", OK)
    # The transaction is over; a new one starts in step.
    expect(client, MAIL, MAIL_OK)


def accepted_message(client: SmtpClient, mta: Sendmail, message: bytes, token: bytes) -> None:
    reply = client.data(message)
    assert reply.code == 250, reply
    mta.wait_for_delivery(token)


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Smtpguard-Loop: mx.example.com\r\n",  # our own marker: we accepted it before
        b"Delivered-To: alice@example.com\r\n",  # delivered to this recipient before
        RECEIVED * 31,  # more hops than limits.max_hops (30)
    ],
)
def test_looping_message(client: SmtpClient, extra: bytes) -> None:
    envelope(client)
    refused_message(client, extra + HEADERS + b"\r\nhi\r\n", "looping_message")


def test_hops_at_the_limit_pass(client: SmtpClient, mta: Sendmail) -> None:
    """Sendmail does not show its own Received header to the milter: 30 is 30. Sendmail
    counts 31 with its own, which the snippet's confMAX_HOP (31) allows; with Sendmail's
    default of 25 this message would get 250 and then be held (test_bare_snippet_hops)."""
    envelope(client)
    accepted_message(client, mta, RECEIVED * 30 + HEADERS + b"\r\nHOPS-30\r\n", b"HOPS-30")


@pytest.mark.parametrize(
    "received",
    [
        b"from mx.example.com (mx.example.com [203.0.113.25])\r\n"
        b"\tby mx.example.com with ESMTP id 1; Sat, 28 Nov 2026 16:00:00 +0000",
        b"this is not a trace field",
    ],
)
def test_fake_router(client: SmtpClient, received: bytes) -> None:
    envelope(client)
    refused_message(
        client, b"Received: " + received + b"\r\n" + HEADERS + b"\r\nx\r\n", "fake_router"
    )


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (HEADERS + b"X-Long: " + b"a" * 991 + b"\r\n", b"x\r\n"),  # 999-octet header line
        (HEADERS, b"short\r\n" + b"b" * 999 + b"\r\n"),  # 999-octet body line
        (HEADERS, b"nul \x00 byte\r\n"),
    ],
)
def test_line_parse_error(client: SmtpClient, headers: bytes, body: bytes) -> None:
    envelope(client)
    refused_message(client, headers + b"\r\n" + body, "line_parse_error")


def test_message_too_long_while_streaming(client: SmtpClient) -> None:
    envelope(client)
    body = (b"x" * 78 + b"\r\n") * 13_000  # ~1.04 MB > limits.max_message_size
    refused_message(client, HEADERS + b"\r\n" + body, "message_too_long")


def mime_with_attachment(size: int, token: str) -> bytes:
    data = base64.encodebytes(b"\xa5" * size).replace(b"\n", b"\r\n")
    return (
        HEADERS
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        + f"--b1\r\nContent-Type: text/plain\r\n\r\n{token}\r\n--b1\r\n".encode()
        + b'Content-Type: application/octet-stream; name="big.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="big.bin"\r\n\r\n' + data + b"\r\n--b1--\r\n"
    )


def test_attachment_too_long(client: SmtpClient, mta: Sendmail) -> None:
    envelope(client)
    refused_message(client, mime_with_attachment(50_001, "BIG"), "attachment_too_long")
    expect(client, ALICE, ALICE_OK)
    accepted_message(client, mta, mime_with_attachment(50_000, "ATTACH-OK"), b"ATTACH-OK")


# --- Sendmail's own replies for the MTA-level rows --------------------------------


def test_mta_level_rows_are_sendmails_own(client: SmtpClient, guard: Running) -> None:
    """Pinned, so that contrib/sendmail/README.md stays true. smtpguard decides none."""
    decisions = guard.log().count(" decision ")
    greeted(client)
    # mail_first (table: 502)
    refused(client, "RCPT TO:<alice@example.com>", "503 5.0.0 Need MAIL before RCPT")
    refused(client, "DATA", "503 5.0.0 Need MAIL command")
    # syntax_error (table: 500)
    refused(client, "FOO bar", '500 5.5.1 Command unrecognized: "FOO bar"')
    refused(client, "MAIL FROM", '501 5.5.2 Syntax error in parameters scanning "FROM"')
    expect(client, MAIL, MAIL_OK)
    # rcpt_first (table: 503)
    refused(client, "DATA", "503 5.0.0 Need RCPT (recipient)")
    # sequence_error (table: 500)
    refused(client, "MAIL FROM:<b@sender.example>", "503 5.5.0 Sender already specified")
    # ESMTP parameters Sendmail does not know, SMTPUTF8 included (no RFC 6531 here).
    expect(client, "RSET", "250 2.0.0 Reset state")
    refused(client, f"{MAIL} SMTPUTF8", "555 5.5.4 SMTPUTF8 parameter unrecognized")
    # A command line ended by a bare LF is accepted.
    client.send_raw(b"NOOP\n")
    assert client.read().lines == (OK,)
    assert guard.log().count(" decision ") == decisions


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (
            b"Subject: x\r\n\r\nline one\nline two\r\n.\r\n",
            "421 4.5.0 Bare linefeed (LF) not allowed",
        ),
        (
            b"Subject: x\r\n\r\nline one\rline two\r\n.\r\n",
            "421 4.5.0 Bare carriage return (CR) not allowed",
        ),
    ],
)
def test_stray_newline_is_sendmails_own(client: SmtpClient, data: bytes, line: str) -> None:
    """stray_newline (table: 451): Debian's fix for SMTP smuggling closes the session."""
    envelope(client)
    expect(client, "DATA", "354 End data with <CR><LF>.<CR><LF>")
    client.send_raw(data)
    reply = client.read()
    assert reply.lines == (line,)
    with pytest.raises(ConnectionError):  # Sendmail closed the session
        client.cmd("NOOP")


# --- a Sendmail that keeps relay control itself -----------------------------------

#: Production-style relay lines: Sendmail refuses relaying itself, with the table's
#: text, so relay control holds while the milter is down; as Debian's OSTYPE does,
#: it also rejects NUL bytes itself.
STRICT_RELAY = (
    "RELAY_DOMAIN(`example.com relay.example')dnl\n"
    "define(`confRELAY_MSG', `\"553 host denies relay.\"')dnl\n"
    "define(`confREJECT_NUL', `true')dnl\n"
)


@pytest.fixture(scope="module")
def strict_mta(
    sendmail_install: SendmailInstall, guard: Running, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sendmail]:
    directory = tmp_path_factory.mktemp("strict")
    with sendmail(sendmail_install, directory, snippet(guard.site), relay=STRICT_RELAY) as sm:
        yield sm


def test_sendmail_relay_refusal_reads_like_the_table(strict_mta: Sendmail, guard: Running) -> None:
    before = decisions(guard.log(), "host_denies_relay")
    with strict_mta.client(source=OTHER_CLIENT) as c:
        greeted(c)
        expect(c, MAIL, MAIL_OK)
        refused_recipient(c, "<x@foreign.example>", "host_denies_relay")
        expect(c, "RCPT TO:<x@relay.example>", recipient_ok("<x@relay.example>"))
        # The milter still answers for the directory.
        refused_recipient(c, "<bob@example.com>", "user_locked")
    # Sendmail answered the relay attempt before asking the milter.
    assert decisions(guard.log(), "host_denies_relay") == before


def test_sendmail_relay_refusal_without_client_name(strict_mta: Sendmail) -> None:
    """confRELAY_MSG does not cover a client whose address has no name (README)."""
    with strict_mta.client(source="127.0.0.4") as c:
        greeted(c)
        expect(c, MAIL, MAIL_OK)
        refused(
            c,
            "RCPT TO:<x@foreign.example>",
            "550 5.7.1 <x@foreign.example>... Relaying denied. IP name lookup failed [127.0.0.4]",
        )


def test_sendmail_reject_nul_answers_first(strict_mta: Sendmail) -> None:
    with strict_mta.client() as c:
        envelope(c)
        reply = c.data(HEADERS + b"\r\nnul \x00 byte\r\n")
        assert_ascii(reply)
        assert reply.lines == ("554 5.6.1 NUL byte not allowed",)
        expect(c, "NOOP", OK)


# --- SMTP AUTH (Cyrus SASL in Sendmail) ---------------------------------------------

#: sasldb users of the AUTH instance (user@realm: password). eve's domain is not ours;
#: bob is locked in smtpguard's directory, not in the sasldb.
SASL_USERS = {
    "alice@example.com": "alice-secret",
    "bob@example.com": "bob-secret",
    "eve@other.example": "eve-secret",
    # A "+" in the login: Sendmail hands {auth_authen} to milters xtext-encoded.
    "frank+ops@example.com": "frank-secret",
}


@pytest.fixture(scope="module")
def auth_mta(
    sendmail_install: SendmailInstall, guard: Running, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sendmail]:
    """Sendmail with AUTH PLAIN and LOGIN (sasldb) and its own relay control
    (TRUST_AUTH_MECH: an authenticated client may relay), attached to the main site."""
    sasl = sasl_dir(sendmail_install, tmp_path_factory.mktemp("sasl"), SASL_USERS)
    directory = tmp_path_factory.mktemp("auth-mta")
    with sendmail(
        sendmail_install, directory, snippet(guard.site), relay=STRICT_RELAY, sasl=sasl
    ) as sm:
        yield sm


def auth_login(client: SmtpClient, user: str) -> None:
    password = SASL_USERS[user]
    expect(client, "AUTH LOGIN", "334 VXNlcm5hbWU6")  # "Username:"
    expect(client, base64.b64encode(user.encode()).decode(), "334 UGFzc3dvcmQ6")
    expect(client, base64.b64encode(password.encode()).decode(), "235 2.0.0 OK Authenticated")


def auth_plain(client: SmtpClient, user: str) -> None:
    token = base64.b64encode(f"\0{user}\0{SASL_USERS[user]}".encode()).decode()
    expect(client, f"AUTH PLAIN {token}", "235 2.0.0 OK Authenticated")


def test_auth_is_offered(auth_mta: Sendmail) -> None:
    with auth_mta.client(source=OTHER_CLIENT) as c:
        reply = c.ehlo("client.test")
        assert "250-AUTH PLAIN LOGIN" in reply.lines, reply
        expect(c, "AUTH LOGIN", "334 VXNlcm5hbWU6")
        expect(c, base64.b64encode(b"alice@example.com").decode(), "334 UGFzc3dvcmQ6")
        expect(c, base64.b64encode(b"wrong").decode(), "535 5.7.0 authentication failed")


def test_authenticated_sender_may_send_as_and_relay(auth_mta: Sendmail) -> None:
    """alice may use sales@ (send_as); authenticated, she may relay (Sendmail's
    TRUST_AUTH_MECH and smtpguard's relay check agree)."""
    with auth_mta.client(source=OTHER_CLIENT) as c:
        greeted(c)
        # Unauthenticated, Sendmail refuses the relay itself (confRELAY_MSG).
        expect(c, MAIL, MAIL_OK)
        refused_recipient(c, "<x@foreign.example>", "host_denies_relay")
        expect(c, "RSET", "250 2.0.0 Reset state")
        auth_login(c, "alice@example.com")
        relayed(c, "sales@example.com", "x@foreign.example", b"AUTH-RELAY-1")
    assert auth_mta.wait_for_delivery(b"AUTH-RELAY-1").recipient == "x@foreign.example"


@pytest.mark.parametrize(
    ("login", "mechanism", "sender", "reply_id"),
    [
        ("eve@other.example", "LOGIN", "eve@other.example", "domain_auth_error"),
        ("bob@example.com", "LOGIN", "bob@example.com", "auth_error_perm"),
        ("alice@example.com", "LOGIN", "carol@example.com", "sender_mismatch"),
        # PLAIN needs TLS (EXTRA's auth_tls_required); this Sendmail has none.
        ("alice@example.com", "PLAIN", "alice@example.com", "auth_mode_unsupported"),
    ],
    ids=["domain_auth_error", "auth_error_perm", "sender_mismatch", "auth_mode_unsupported"],
)
def test_auth_replies(
    auth_mta: Sendmail, guard: Running, login: str, mechanism: str, sender: str, reply_id: str
) -> None:
    """Decided at MAIL from Sendmail's {auth_type} and {auth_authen}. 451, 551 and 554:
    never prefixed."""
    before = decisions(guard.log(), reply_id)
    with auth_mta.client(source=OTHER_CLIENT) as c:
        greeted(c)
        (auth_login if mechanism == "LOGIN" else auth_plain)(c, login)
        refused_sender(c, f"<{sender}>", reply_id)
        if reply_id == "sender_mismatch":
            expect(c, f"MAIL FROM:<{login}>", sender_ok(f"<{login}>"))
    assert decisions(guard.log(), reply_id) == before + 1


def test_a_login_sendmail_xtext_encodes_is_found(auth_mta: Sendmail, guard: Running) -> None:
    """Sendmail writes frank+ops as "frank+2Bops" in {auth_authen}; read as written, the
    login was unknown and its owner refused for good (auth_error_perm; found by
    review)."""
    extra = guard.site.dir / "frank.toml"
    extra.write_text('[[user]]\naddress = "frank+ops@example.com"\n')
    smtpguard(guard.site, "directory", "import", str(extra))
    try:
        with auth_mta.client(source=OTHER_CLIENT) as c:
            greeted(c)
            auth_login(c, "frank+ops@example.com")
            relayed(c, "frank+ops@example.com", "x@foreign.example", b"XTEXT-LOGIN")
    finally:
        smtpguard(guard.site, "directory", "remove", "frank+ops@example.com")
    assert auth_mta.wait_for_delivery(b"XTEXT-LOGIN").recipient == "x@foreign.example"


#: Another milter's lines after smtpguard's, as such packages document them: its own
#: filter list and MAIL macro list, each replacing the one smtpguard's lines left.
#: The other filter has no socket and no F= flag: Sendmail goes on without it.
REPLACING_LATER = (
    "INPUT_MAIL_FILTER(`other', `S=local:/nonexistent/other.sock')dnl\n"
    "define(`confINPUT_MAIL_FILTERS', `other')dnl\n"
    "define(`confMILTER_MACROS_ENVFROM', `{mail_addr}')dnl\n"
)


def test_a_later_define_that_drops_smtpguard_still_gives_a_working_cf(
    sendmail_install: SendmailInstall, guard: Running, tmp_path: Path
) -> None:
    """Review rev68 F1 and rev70 N4: a later define replaced the filter list, m4
    stopped before writing the rule sets, and Debian installs what m4 wrote: a .cf
    without mailers. Now the guard puts smtpguard back first and the MAIL macros it
    reads back, m4 still exits 1, and the .cf installed anyway runs smtpguard: a
    login is known (relayed) and its wrong sender refused."""
    sasl = sasl_dir(sendmail_install, tmp_path / "sasl", SASL_USERS)
    with sendmail(
        sendmail_install,
        tmp_path / "mta",
        snippet(guard.site) + REPLACING_LATER,
        relay=STRICT_RELAY,
        sasl=sasl,
        m4_may_fail=True,
    ) as sm:
        cf = (sm.dir / "test.cf").read_text()
        assert re.search(r"^O InputMailFilters=smtpguard,other$", cf, re.M)
        envfrom = re.search(r"^O Milter\.macros\.envfrom=(.*)$", cf, re.M)
        assert envfrom is not None
        assert envfrom.group(1) == "{mail_addr}, i, {auth_type}, {auth_authen}, {tls_version}"
        before = decisions(guard.log(), "sender_mismatch")
        with sm.client(source=OTHER_CLIENT) as c:
            greeted(c)
            auth_login(c, "alice@example.com")
            refused_sender(c, "<carol@example.com>", "sender_mismatch")
            relayed(c, "sales@example.com", "x@foreign.example", b"PUT-BACK-1")
        assert sm.wait_for_delivery(b"PUT-BACK-1").recipient == "x@foreign.example"
    assert decisions(guard.log(), "sender_mismatch") == before + 1


#: A .mc that lists its filters before defining them (Sendmail's cf/README allows it).
LIST_FIRST = (
    "define(`confINPUT_MAIL_FILTERS', `smtpguard,other')dnl\n"
    "MAIL_FILTER(`other', `S=local:/nonexistent/other.sock')dnl\n"
)


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(lambda ours: LIST_FIRST + ours, id="list-first"),
        pytest.param(lambda ours: ours + ours, id="pasted-twice"),
        pytest.param(lambda ours: ours + filter_line_only(ours), id="older-copy-below"),
    ],
)
def test_the_filter_is_enlisted_once(
    sendmail_install: SendmailInstall,
    guard: Running,
    tmp_path: Path,
    lines: Callable[[str], str],
) -> None:
    """A list naming smtpguard before its lines made Sendmail answer every MAIL with
    451 4.3.2 (smtpguard twice in InputMailFilters); the lines pasted twice stopped
    Sendmail from starting ("duplicate filter definition"). Both now run smtpguard
    once (the second with m4 exiting 1, its .cf installed as Debian does)."""
    before = decisions(guard.log(), "host_denies_sender")
    with (
        sendmail(
            sendmail_install, tmp_path / "mta", lines(snippet(guard.site)), m4_may_fail=True
        ) as sm,
        sm.client(source=OTHER_CLIENT) as c,
    ):
        greeted(c)
        refused_sender(c, "<spammer@bad.example>", "host_denies_sender")
        expect(c, MAIL, MAIL_OK)
    assert decisions(guard.log(), "host_denies_sender") == before + 1


@pytest.fixture(scope="module")
def tls_mta(
    sendmail_install: SendmailInstall, guard: Running, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sendmail]:
    """The AUTH instance with STARTTLS as well (a self-signed certificate)."""
    sasl = sasl_dir(sendmail_install, tmp_path_factory.mktemp("sasl-tls"), SASL_USERS)
    directory = tmp_path_factory.mktemp("tls-mta")
    with (
        tls_dir() as tls,
        sendmail(
            sendmail_install,
            directory,
            snippet(guard.site),
            relay=STRICT_RELAY,
            sasl=sasl,
            tls=tls,
        ) as sm,
    ):
        yield sm


@pytest.mark.parametrize("ehlo_again", [True, False], ids=["ehlo-again", "no-ehlo-again"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_login_after_starttls_is_encrypted(
    tls_mta: Sendmail, guard: Running, mechanism: str, ehlo_again: bool
) -> None:
    """PLAIN and LOGIN need TLS (EXTRA's auth_tls_required). Sendmail takes AUTH right
    after STARTTLS without a new EHLO (RFC 3207: the client SHOULD send one), so no HELO
    step says the session is encrypted: sendmail-config asks for {tls_version} at MAIL
    too (found by review: such a session's login was refused as without TLS)."""
    before = decisions(guard.log(), "auth_mode_unsupported")
    with tls_mta.client(source=OTHER_CLIENT) as c:
        greeted(c)
        assert c.starttls().code == 220
        if ehlo_again:
            assert c.ehlo("client.test").code == 250
        (auth_login if mechanism == "LOGIN" else auth_plain)(c, "alice@example.com")
        token = f"TLS-{mechanism}-{ehlo_again}".encode()
        relayed(c, "alice@example.com", "x@foreign.example", token)
    assert tls_mta.wait_for_delivery(token).recipient == "x@foreign.example"
    assert decisions(guard.log(), "auth_mode_unsupported") == before


def test_no_login_in_clear_on_a_tls_instance(tls_mta: Sendmail, guard: Running) -> None:
    """Review rev187 F1: AUTH PLAIN in clear, then STARTTLS, then MAIL was accepted and
    relayed (Sendmail keeps the login across STARTTLS; smtpguard sees TLS at MAIL).
    The generated lines add AuthOptions p: PLAIN and LOGIN are offered only after
    STARTTLS, so the password never goes in clear."""
    token = base64.b64encode(b"\0alice@example.com\0" + SASL_USERS["alice@example.com"].encode())
    with tls_mta.client(source=OTHER_CLIENT) as c:
        reply = c.ehlo("client.test")
        assert not [line for line in reply.lines if "AUTH" in line], reply
        expect(c, f"AUTH PLAIN {token.decode()}", "503 5.3.3 AUTH not available")
        assert c.starttls().code == 220
        assert "250-AUTH PLAIN LOGIN" in c.ehlo("client.test").lines
        expect(c, MAIL, MAIL_OK)
        refused_recipient(c, "<x@foreign.example>", "host_denies_relay")
    cf = (tls_mta.dir / "test.cf").read_text()
    assert re.search(r"^O AuthOptions=p$", cf, re.M)
    config = load(guard.site.config)
    assert not [p for p in sendmail_cf_problems(config, cf) if "AuthOptions" in p]
    # The same .cf without the flag is named by --check.
    without = cf.replace("O AuthOptions=p", "")
    (problem,) = [p for p in sendmail_cf_problems(config, without) if "AuthOptions" in p]
    assert problem.startswith("AuthOptions lacks p, and AuthMechanisms offers PLAIN before")


def test_auth_error_temp(auth_mta: Sendmail, guard: Running) -> None:
    """The directory cannot answer for the login: a temporary error."""
    db = sqlite3.connect(guard.site.directory, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        with auth_mta.client(source=OTHER_CLIENT) as c:
            greeted(c)
            auth_login(c, "alice@example.com")
            refused_sender(c, "<alice@example.com>", "auth_error_temp")
    finally:
        db.execute("ROLLBACK")
        db.close()
    with auth_mta.client(source=OTHER_CLIENT) as c:
        greeted(c)
        auth_login(c, "alice@example.com")
        expect(c, "MAIL FROM:<alice@example.com>", sender_ok("<alice@example.com>"))


# --- DNS, scanners and bulk through Sendmail --------------------------------------

#: The sender of the DNS site: its SPF record lets the loop.test clients send.
LOOP_SENDER = f"someone@{LOOP_DOMAIN}"


def helo_of(source: str) -> str:
    """The HELO a loopback client of the DNS site uses: its PTR name (mx7.loop.test)."""
    return f"mx{source.rsplit('.', 1)[1]}.{LOOP_DOMAIN}"


@pytest.fixture(scope="module")
def full_mta(
    sendmail_install: SendmailInstall,
    unbound: DnsServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Running, Sendmail]]:
    """smtpguard with a resolver (the session's unbound), the DNS lists, clamd as its
    virus scanner and a bulk threshold of 2, behind its own Sendmail."""
    clamd = start_clamd(tmp_path_factory.mktemp("clamd"))
    try:
        extra: dict[str, object] = {
            "dns": {"nameservers": ["127.0.0.1"], "port": unbound.port, "timeout": 1.0},
            "virus": {"backend": "clamd", "clamd_socket": f"unix:{clamd.socket}"},
            "bulk": {"threshold": 2},
            "dnsbl": {"zones": DNSBL_ZONES},
        }
        with guarded_sendmail(sendmail_install, tmp_path_factory.mktemp("full"), extra) as both:
            yield both
    finally:
        clamd.stop()


def loop_client(mta: Sendmail, source: str = LOOP_GOOD_IP) -> SmtpClient:
    return greeted(mta.client(source=source), helo_of(source))


def test_dns_site_accepts_a_good_client(full_mta: tuple[Running, Sendmail]) -> None:
    """The control: forward-confirmed PTR, SPF pass, listed nowhere."""
    _svc, mta = full_mta
    with loop_client(mta) as c:
        expect(c, f"MAIL FROM:<{LOOP_SENDER}>", sender_ok(f"<{LOOP_SENDER}>"))
        expect(c, ALICE, ALICE_OK)
        reply = c.data(HEADERS + b"\r\nDNS-GOOD-1\r\n")
        assert reply.code == 250, reply
    assert mta.wait_for_delivery(b"DNS-GOOD-1").recipient == "alice@example.com"


@pytest.mark.parametrize(
    ("source", "sender", "reply_id"),
    [
        (LOOP_RBL_IP, LOOP_SENDER, "rbl_deny"),
        (LOOP_RELAY_IP, LOOP_SENDER, "openrelay_check"),
        (LOOP_NO_PTR_IP, LOOP_SENDER, "smtpport_check"),
        (LOOP_GOOD_IP, f"someone@{NX_DOMAIN}", "sender_unvalidated"),
        (LOOP_GOOD_IP, f"someone@{SPF_FAIL_DOMAIN}", "remote_ip_mismatch"),
    ],
    ids=["rbl_deny", "openrelay_check", "smtpport_check", "sender_unvalidated", "spf_fail"],
)
def test_dns_replies(
    full_mta: tuple[Running, Sendmail], source: str, sender: str, reply_id: str
) -> None:
    """Decided at MAIL from the milter's own lookups of the client's real address
    (the DNSBL and PTR lookups start at connect). 554 and 556: never prefixed."""
    svc, mta = full_mta
    before = decisions(svc.log(), reply_id)
    with loop_client(mta, source) as c:
        refused_sender(c, f"<{sender}>", reply_id)
    assert decisions(svc.log(), reply_id) == before + 1
    if source != LOOP_GOOD_IP:
        # The verdict is the client's: the same session refuses any sender.
        with loop_client(mta, source) as c:
            refused_sender(c, "<>", reply_id)
    with loop_client(mta) as c:
        expect(c, f"MAIL FROM:<{LOOP_SENDER}>", sender_ok(f"<{LOOP_SENDER}>"))


def loop_message(client: SmtpClient, message: bytes, sender: str = LOOP_SENDER) -> Reply:
    """One transaction of a good client: MAIL, RCPT, DATA; the reply to the data."""
    expect(client, f"MAIL FROM:<{sender}>", sender_ok(f"<{sender}>"))
    expect(client, ALICE, ALICE_OK)
    reply = client.data(message)
    assert_ascii(reply)
    expect(client, "NOOP", OK)
    return reply


@pytest.mark.parametrize(
    ("payload", "reply_id"),
    [(EICAR, "virus_found"), (GTUBE, "antispam_reject")],
    ids=["virus_found", "antispam_reject"],
)
def test_scanner_replies(full_mta: tuple[Running, Sendmail], payload: bytes, reply_id: str) -> None:
    """End of message: clamd finds EICAR, the built-in rules GTUBE. Not prefixed."""
    _svc, mta = full_mta
    token = f"SCAN-{reply_id}".encode()
    with loop_client(mta) as c:
        reply = loop_message(c, HEADERS + b"\r\n" + token + b"\r\n" + payload + b"\r\n")
        assert reply.lines == (through_sendmail(reply_id),), f"{reply_id}: got {reply}"
        # The transaction is over; the next one starts in step.
        expect(c, f"MAIL FROM:<{LOOP_SENDER}>", sender_ok(f"<{LOOP_SENDER}>"))
    assert not [d for d in mta.deliveries() if token in d.message]


def test_same_size_flood(full_mta: tuple[Running, Sendmail]) -> None:
    """bulk.threshold = 2: the third message of the same size from the same sender and
    client is refused; the first two are delivered."""
    _svc, mta = full_mta
    sender = f"flood@{LOOP_DOMAIN}"
    replies = []
    with loop_client(mta) as c:
        for i in range(3):
            body = f"FLOOD-{i}\r\n".encode() + b"same offer\r\n" * 30
            # Another message each time: the same Message-ID again would be a retry.
            headers = HEADERS.replace(b"<1@sender.example>", f"<flood{i}@sender.example>".encode())
            replies.append(loop_message(c, headers + b"\r\n" + body, sender))
    assert [r.code for r in replies[:2]] == [250, 250], replies
    assert replies[2].lines == (through_sendmail("same_size_flood"),), replies[2]
    mta.wait_for_delivery(b"FLOOD-1")
    assert not [d for d in mta.deliveries() if b"FLOOD-2" in d.message]


# --- more sites: session limit with hints, internal errors, a dying milter --------


@pytest.fixture(scope="module")
def busy(
    sendmail_install: SendmailInstall, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sendmail]:
    """One session at a time; replies carry the table's hint as a second line."""
    extra: dict[str, object] = {"limits": {"max_sessions": 1}, "replies": {"hint": True}}
    with guarded_sendmail(sendmail_install, tmp_path_factory.mktemp("busy"), extra) as (_, sm):
        yield sm


def hint(reply_id: str) -> str:
    with (RULES / "replies.toml").open("rb") as fh:
        text: str = tomllib.load(fh)[reply_id]["hint"]["en"]
    return text


def session_with_a_slot(mta: Sendmail, deadline: float = 10.0) -> SmtpClient:
    """A session that got past MAIL on the one-session site.

    Sendmail answers QUIT before it closes its milter connection, so the slot of the
    previous session (the fixture's readiness probe) may still be taken for a moment.
    """

    def attempt() -> SmtpClient | None:
        client = greeted(mta.client())
        if client.cmd(MAIL).code == 250:
            return client
        client.quit()
        return None

    return poll_for(attempt, deadline, "the session slot was never free")


def test_queue_unavailable_multi_line(busy: Sendmail) -> None:
    """A connect-stage verdict, delivered at MAIL; only the first line is prefixed."""
    code, xcode, _en, _zh = SPEC["queue_unavailable"]
    with session_with_a_slot(busy) as first, busy.client() as second:
        greeted(second)
        first_line = through_sendmail("queue_unavailable", f"<{SENDER}>")
        refused(
            second,
            MAIL,
            first_line.replace(" ", "-", 1),
            f"{code} {xcode} {hint('queue_unavailable')}",
        )
        expect(first, ALICE, ALICE_OK)


@pytest.fixture(scope="module")
def faulty(
    sendmail_install: SendmailInstall, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sendmail]:
    """smtpguard with a directory that raises (tests/support/faulty_service.py)."""
    script = Path(__file__).resolve().parents[1] / "support" / "faulty_service.py"

    def command(config: Path) -> list[str]:
        return [sys.executable, str(script), str(config)]

    tmp = tmp_path_factory.mktemp("faulty")
    with guarded_sendmail(sendmail_install, tmp, command=command) as (_, sm):
        yield sm


def test_internal_error(faulty: Sendmail) -> None:
    with faulty.client() as c:
        greeted(c)
        expect(c, MAIL, MAIL_OK)
        refused_recipient(c, "<alice@example.com>", "internal_error")
        expect(c, "RCPT TO:<x@relay.example>", recipient_ok("<x@relay.example>"))


TEMPFAIL = "451 4.3.2 Please try again later"


def test_dead_milter_gives_sendmails_tempfail(
    sendmail_install: SendmailInstall, tmp_path: Path
) -> None:
    with guarded_sendmail(sendmail_install, tmp_path) as (svc, sm), sm.client() as c:
        greeted(c)
        expect(c, MAIL, MAIL_OK)
        svc.process.kill()  # a crash: nothing listens on the socket any more
        svc.process.wait()
        # Mid-session: the next milter command fails, F=T tempfails it.
        refused(c, "RCPT TO:<alice@example.com>", TEMPFAIL)
        # A new session: greeting and EHLO as usual, MAIL tempfails.
        with sm.client() as later:
            assert later.greeting.code == 220
            greeted(later)
            refused(later, MAIL, TEMPFAIL)
            refused(later, MAIL, TEMPFAIL)


def test_missing_socket_gives_sendmails_tempfail(
    sendmail_install: SendmailInstall, tmp_path: Path
) -> None:
    """No socket file at all (smtpguard not started yet, or stopped cleanly, which
    removes it): Sendmail starts, and F=T tempfails MAIL."""
    with milter_socket_dir() as sockets:
        lines = with_socket(readme_snippet(), sockets / "smtpguard.sock")
        with sendmail(sendmail_install, tmp_path / "mta", lines) as sm, sm.client() as c:
            greeted(c)
            refused(c, MAIL, TEMPFAIL)


def test_socket_below_tmp_stops_sendmail(sendmail_install: SendmailInstall, tmp_path: Path) -> None:
    """Sendmail checks the whole path of a local: socket when it reads its cf, whether
    or not the socket exists: below /tmp (world-writable, sticky) the daemon does not
    start at all, exit status 71 (EX_OSERR), so nothing answers on port 25."""
    sock = tmp_path / "smtpguard.sock"
    lines = with_socket(readme_snippet(), sock)
    with pytest.raises(RuntimeError) as failed, sendmail(sendmail_install, tmp_path / "mta", lines):
        pass
    message = str(failed.value)
    assert "sendmail exited with status 71" in message
    assert f"Xsmtpguard: local socket name {sock} unsafe: World writable directory" in message


def test_socket_below_a_group_writable_directory_stops_sendmail(
    sendmail_install: SendmailInstall, tmp_path: Path
) -> None:
    with milter_socket_dir() as sockets:
        shared = sockets / "shared"
        shared.mkdir()
        shared.chmod(0o775)
        sock = shared / "smtpguard.sock"
        lines = with_socket(readme_snippet(), sock)
        with (
            pytest.raises(RuntimeError) as failed,
            sendmail(sendmail_install, tmp_path / "mta", lines),
        ):
            pass
    message = str(failed.value)
    assert "sendmail exited with status 71" in message
    assert f"local socket name {sock} unsafe: Group writable directory" in message


@pytest.fixture(scope="module")
def utf8_mta(
    sendmail_install: SendmailInstall, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sendmail]:
    """smtpguard told that its MTA is Postfix, behind a Sendmail that sends no macro v
    (the INPUT_MAIL_FILTER line alone): the config decides, so it sends the table's
    Chinese."""
    extra: dict[str, object] = {"milter": {"mta": "postfix"}}
    tmp = tmp_path_factory.mktemp("utf8")
    with guarded_sendmail(sendmail_install, tmp, extra, lines=filter_line_only) as (_, sm):
        yield sm


@pytest.fixture(scope="module")
def contradicted(
    sendmail_install: SendmailInstall, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Running, Sendmail]]:
    """smtpguard told that its MTA is Postfix, behind a Sendmail with the README's lines
    (macro v among them)."""
    extra: dict[str, object] = {"milter": {"mta": "postfix"}}
    with guarded_sendmail(sendmail_install, tmp_path_factory.mktemp("v-wins"), extra) as both:
        yield both


def test_macro_v_wins_over_a_config_that_says_postfix(
    contradicted: tuple[Running, Sendmail],
) -> None:
    """Review rev140 F1: with milter.mta = "postfix" behind a Sendmail that names itself
    in macro v, smtpguard sent UTF-8 and a real client fell out of step. v wins: ASCII
    replies, the client in step, one WARNING that says why."""
    svc, sm = contradicted
    for _ in range(2):
        assert rcpt_limit_with_smtplib(sm) == [
            (451, b"4.5.3 out of allow RCPT numbers."),
            (250, b"2.0.0 OK"),
            (250, b"2.0.0 Reset state"),
        ]
    log = svc.log()
    assert log.count('milter.mta = "postfix", but the MTA\'s macro v=') == 1
    assert "names sendmail: answering as to sendmail (logged once per process)" in log


@pytest.mark.parametrize(
    ("before", "command", "address", "reply_id"),
    [
        ((), "MAIL FROM:<spammer@bad.example>", "<spammer@bad.example>", "host_denies_sender"),
        ((MAIL,), "RCPT TO:<nobody@example.com>", "<nobody@example.com>", "mailbox_unavailable"),
        ((MAIL, ALICE, ALICE, ALICE), "RCPT TO:<x@relay.example>", None, "rcpt_limit"),
    ],
    ids=["host_denies_sender", "mailbox_unavailable", "rcpt_limit"],
)
def test_utf8_towards_sendmail_is_mangled(
    utf8_mta: Sendmail,
    before: tuple[str, ...],
    command: str,
    address: str | None,
    reply_id: str,
) -> None:
    """Why smtpguard must detect Sendmail: Sendmail clears the 8th bit of every byte of
    a milter's reply. 0x80 becomes a NUL that ends the text (址 = E5 9D 80), 0x8D a bare
    CR (不 = E4 B8 8D), 0x8A a bare LF (上 = E4 B8 8A): a client that ends lines at LF
    reads the rest of the line as one more reply. This client splits at CRLF only."""
    code, xcode, en, zh = SPEC[reply_id]
    with utf8_mta.client(printable=False) as c:
        greeted(c)
        for line in before:
            assert c.cmd(line).code == 250
        reply = c.cmd(command)
        expect(c, "NOOP", OK)
    prefix = f"{address}... " if address else ""
    sent = f"{code} {xcode} {prefix}{en} ({zh})".encode()
    mangled = bytes(byte & 0x7F for byte in sent).split(b"\0")[0]
    assert reply.raw == mangled + b"\r\n"
    with pytest.raises(AssertionError, match="not printable ASCII"):
        assert_ascii(reply)
    with pytest.raises(AssertionError, match="not printable ASCII"):
        c.assert_printable()
    # The client never sees a byte of 0x80 or more from Sendmail, mangled or not: only
    # printable ASCII shows that smtpguard sent no UTF-8.
    assert max(c.received) < 0x80


def rcpt_limit_with_smtplib(mta: Sendmail) -> list[tuple[int, bytes]]:
    """Python's smtplib, which ends reply lines at LF: RCPT one too many, NOOP, RSET."""
    client = smtplib.SMTP("127.0.0.1", mta.port, timeout=30)
    try:
        client.ehlo("client.test")
        assert client.docmd(MAIL)[0] == 250
        for _ in range(3):
            assert client.docmd(ALICE)[0] == 250
        return [client.docmd(cmd) for cmd in ("RCPT TO:<x@relay.example>", "NOOP", "RSET")]
    finally:
        client.close()


def test_a_real_client_stays_in_step(mta: Sendmail) -> None:
    assert rcpt_limit_with_smtplib(mta) == [
        (451, b"4.5.3 out of allow RCPT numbers."),
        (250, b"2.0.0 OK"),
        (250, b"2.0.0 Reset state"),
    ]


def test_utf8_towards_sendmail_desynchronizes_a_real_client(utf8_mta: Sendmail) -> None:
    """The bare LF from rcpt_limit's Chinese ends smtplib's reply early; the rest of
    the line is read as the answer to NOOP, and NOOP's answer as the answer to RSET."""
    assert rcpt_limit_with_smtplib(utf8_mta) == [
        (451, b"4.5.3 out of allow RCPT numbers. (h6\x05e\x07: RCPT e\x05\x01h.8d8"),
        (-1, b""),  # "i\x19\x10)": not a reply smtplib can parse
        (250, b"2.0.0 OK"),  # NOOP's reply, one command late
    ]


# --- the README's INPUT_MAIL_FILTER line alone (no macro defines) -------------------

#: smtpguard's warning when a session comes without macro v (once per process).
NO_V_WARNING = "the MTA sent no macro v"


@pytest.fixture(scope="module")
def bare_mta(
    sendmail_install: SendmailInstall, guard: Running, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sendmail]:
    """A Sendmail with only the README's INPUT_MAIL_FILTER line, as the README once
    showed it: no confMILTER_MACROS_* (so no v), no confMAX_HOP. Attached to the main
    site, whose milter.mta is "auto"."""
    filter_line = filter_line_only(snippet(guard.site))
    with sendmail(sendmail_install, tmp_path_factory.mktemp("bare-mta"), filter_line) as sm:
        yield sm


def test_bare_snippet_has_no_defines(bare_mta: Sendmail) -> None:
    mc = (bare_mta.dir / "test.mc").read_text()
    assert "INPUT_MAIL_FILTER(`smtpguard'" in mc
    assert "confMILTER_MACROS" not in mc
    assert "confMAX_HOP" not in mc
    cf = (bare_mta.dir / "test.cf").read_text()
    # Sendmail's defaults: no v at connect, at most 25 hops.
    assert "\nO Milter.macros.connect=j, _, {daemon_name}, {if_name}, {if_addr}\n" in cf
    assert "\n#O MaxHopCount=25\n" in cf


def test_bare_snippet_replies_are_ascii(bare_mta: Sendmail, guard: Running) -> None:
    """Without v, smtpguard cannot tell Sendmail from another MTA and answers in ASCII:
    the table's English text at MAIL, RCPT and end of message, each reply in step."""
    with bare_mta.client() as c:
        greeted(c)
        refused_sender(c, "<spammer@bad.example>", "host_denies_sender")
        expect(c, MAIL, MAIL_OK)
        refused_recipient(c, "<nobody@example.com>", "mailbox_unavailable")
        for _ in range(3):
            expect(c, ALICE, ALICE_OK)
        refused_recipient(c, "<x@relay.example>", "rcpt_limit")
        looped = b"Delivered-To: alice@example.com\r\n" + HEADERS + b"\r\nhi\r\n"
        refused_message(c, looped, "looping_message")
    # The with block checked every reply of the session: printable ASCII only.
    assert c.received
    assert max(c.received) < 0x80


def test_bare_snippet_keeps_a_real_client_in_step(bare_mta: Sendmail) -> None:
    """The session that fell out of step with UTF-8 replies: smtplib after rcpt_limit
    (compare test_utf8_towards_sendmail_desynchronizes_a_real_client)."""
    assert rcpt_limit_with_smtplib(bare_mta) == [
        (451, b"4.5.3 out of allow RCPT numbers."),
        (250, b"2.0.0 OK"),
        (250, b"2.0.0 Reset state"),
    ]


def test_bare_snippet_is_logged_once(bare_mta: Sendmail, guard: Running) -> None:
    for _ in range(2):
        with bare_mta.client() as c:
            greeted(c)
            refused_sender(c, "<spammer@bad.example>", "host_denies_sender")
    # The sessions of the main instance (with v) never add to it.
    assert guard.log().count(NO_V_WARNING) == 1


def test_bare_snippet_hops(bare_mta: Sendmail) -> None:
    """Why the snippet defines confMAX_HOP: with Sendmail's default of 25, counting its
    own Received header, 25 hops get a 250 (smtpguard allows 30) and are then held in
    the queue ("Too many hops"), never delivered; 24 are delivered."""
    for hops in (25, 24):
        with bare_mta.client() as c:
            envelope(c)
            token = f"BARE-HOPS-{hops}".encode()
            reply = c.data(RECEIVED * hops + HEADERS + b"\r\n" + token + b"\r\n")
            assert reply.code == 250, reply
    bare_mta.wait_for_delivery(b"BARE-HOPS-24")
    assert not [d for d in bare_mta.deliveries() if b"BARE-HOPS-25" in d.message]
    held = [f for f in (bare_mta.dir / "queue").glob("df*") if b"BARE-HOPS-25" in f.read_bytes()]
    assert len(held) == 1, sorted(p.name for p in (bare_mta.dir / "queue").iterdir())


# --- Sendmail's read timeout and a slow scanner -------------------------------------

#: Seconds the fake clamd takes for its verdict; below the site's virus.timeout, above
#: the old fixed R: scaled down (30 s would make this test too slow).
SLOW_VERDICT = 2.5
VIRUS_TIMEOUT = 3.0
SCALED_OLD_READ = 2


@contextmanager
def fake_clamd(
    path: Path, answer: Callable[[socket.socket, threading.Event], None] | None
) -> Iterator[Path]:
    """A clamd on unix socket ``path``: each connection goes to ``answer`` on a thread of
    its own, with an event set when the test ends; None accepts and never reads (an
    overloaded clamd). Every connection is closed at the end."""
    stop = threading.Event()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)
    server.settimeout(0.2)
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)
            if answer is not None:
                threading.Thread(target=answer, args=(conn, stop), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


@contextmanager
def slow_clamd(path: Path, verdict: bytes) -> Iterator[Path]:
    """A clamd on unix socket ``path`` that reads a whole INSTREAM and answers
    ``verdict`` :data:`SLOW_VERDICT` seconds after its last chunk."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        with conn:
            data = b""
            while not _instream_complete(data):
                got = conn.recv(65536)
                if not got:
                    return
                data += got
            # The slow scan itself; returns at once when the test ends.
            stop.wait(SLOW_VERDICT)
            with contextlib.suppress(OSError):
                conn.sendall(verdict + b"\0")

    with fake_clamd(path, answer) as served:
        yield served


def _instream_complete(data: bytes) -> bool:
    """``zINSTREAM\\0`` and length-prefixed chunks up to the zero-length one."""
    pos = data.find(b"\0") + 1
    if pos == 0:
        return False
    while len(data) >= pos + 4:
        (size,) = struct.unpack("!I", data[pos : pos + 4])
        if size == 0:
            return True
        pos += 4 + size
    return False


def test_end_of_message_reply_waits_for_a_slow_scanner(
    sendmail_install: SendmailInstall, tmp_path: Path
) -> None:
    """Sendmail reads the end-of-message reply with R:, not E:. Time scaled down (the
    generator's floor of 30 s lowered to 1): with the old fixed R: below the scanner's
    time, Sendmail answers 451 itself although smtpguard finds the virus; with the R:
    derived from virus.timeout, the client gets smtpguard's virus_found."""
    timeout = {"virus": {"backend": "clamd", "timeout": VIRUS_TIMEOUT}}
    with (
        slow_clamd(tmp_path / "clamd.sock", b"stream: Eicar-Test-Signature FOUND") as clamd,
        milter_socket_dir() as sockets,
    ):
        sock = sockets / "smtpguard.sock"
        extra = merge(timeout, {"virus": {"clamd_socket": f"unix:{clamd}"}})
        site = guard_site(tmp_path / "site", sock, extra)
        config = load(site.config)
        generated = sendmail_mc(config)
        derived = sendmail_timeouts(config, floor=1)
        read = int(derived.split("R:")[1].split("s;")[0])
        assert read > 2 * VIRUS_TIMEOUT > SLOW_VERDICT > SCALED_OLD_READ
        old = f"C:30s;S:10s;R:{SCALED_OLD_READ}s;E:5m"
        with running(site, wait_for=str(sock)) as svc:
            for name, timeouts, reply, then in (
                ("old", old, TEMPFAIL, TEMPFAIL),
                ("derived", derived, through_sendmail("virus_found"), MAIL_OK),
            ):
                lines = generated.replace(f"T={sendmail_timeouts(config)}'", f"T={timeouts}'")
                with (
                    sendmail(sendmail_install, tmp_path / name, lines) as sm,
                    sm.client(timeout=15) as c,
                ):
                    envelope(c)
                    got = c.data(HEADERS + f"\r\nSLOW-{name}\r\n".encode())
                    assert got.lines == (reply,), f"R: from {timeouts}: {got}"
                    # Sendmail gave up on the filter for the session; or not.
                    expect(c, MAIL, then)
            # Both times smtpguard itself found the virus.
            assert decisions(svc.log(), "virus_found") == 2


@contextmanager
def stuck_clamd(path: Path) -> Iterator[Path]:
    """A clamd on unix socket ``path`` that accepts and never reads (overloaded)."""
    with fake_clamd(path, None) as served:
        yield served


def test_a_large_body_waits_for_a_stuck_scanner_as_long_as_a_reply(
    sendmail_install: SendmailInstall, tmp_path: Path
) -> None:
    """Sendmail writes the body without waiting for replies; past the socket buffers its
    write waits for smtpguard, which waits up to virus.timeout on the scanner. With
    Sendmail's usual S:10s (scaled: 1 s) a 3 MB message got Sendmail's own 451 although
    on_temp_error = "pass" lets it through; with S: as long as the derived R: it passes."""
    extra = {
        "virus": {"backend": "clamd", "timeout": VIRUS_TIMEOUT},
        "checks": {"virus": {"on_temp_error": "pass"}},
        "limits": {"max_message_size": 10_000_000},
    }
    body = b"\r\n" + (b"x" * 76 + b"\r\n") * 40_000
    with stuck_clamd(tmp_path / "clamd.sock") as clamd, milter_socket_dir() as sockets:
        sock = sockets / "smtpguard.sock"
        site = guard_site(
            tmp_path / "site", sock, merge(extra, {"virus": {"clamd_socket": f"unix:{clamd}"}})
        )
        config = load(site.config)
        generated = sendmail_mc(config)
        derived = sendmail_timeouts(config, floor=1)
        read = derived.split("R:")[1].split(";")[0]
        old = derived.replace(f"S:{read}", "S:1s")
        with running(site, wait_for=str(sock)):
            for name, timeouts, code in (("old", old, 451), ("derived", derived, 250)):
                lines = generated.replace(f"T={sendmail_timeouts(config)}'", f"T={timeouts}'")
                with (
                    sendmail(sendmail_install, tmp_path / name, lines) as sm,
                    sm.client(timeout=30) as c,
                ):
                    envelope(c)
                    got = c.data(HEADERS + body)
                    assert got.code == code, f"S: from {timeouts}: {got}"
