"""Which MTA the real ``smtpguard run`` service believes it talks to, over the milter
protocol, and the bytes of its replies.

A Sendmail whose ``.mc`` has only the ``INPUT_MAIL_FILTER`` line sends no macro ``v``
(its connect defaults are ``j _ {daemon_name} {if_name}``); Sendmail clears the 8th bit
of reply text, so without ``v`` no reply may carry a byte of 0x80 or more. Postfix sends
``v`` and still gets the site's UTF-8 text.
"""

from __future__ import annotations

import pytest
from miltertest import constants as C

from support.expected import SPEC, default_line
from support.mtclient import Answer, MilterSession, assert_pass, assert_reply
from support.service import UNTRUSTED_IP, Running

pytestmark = pytest.mark.integration

#: Sendmail 8.17's default connect macros: no v.
SENDMAIL_DEFAULTS = {
    "j": "mx.example.com",
    "_": f"[{UNTRUSTED_IP}]",
    "{daemon_name}": "MTA",
    "{if_name}": "localhost",
}
POSTFIX = {"j": "mx.example.com", "v": "Postfix 3.7.11", "{daemon_name}": "mx"}
RECEIVED = "from a.example (a.example [198.51.100.1]) by b.example; Thu, 1 Jan 2026 00:00:00 +0000"
NO_V_WARNING = "the MTA sent no macro v"
#: What refusals() must collect, in order.
REFUSED = [
    "host_denies_sender",
    "mailbox_unavailable",
    "host_denies_relay",
    "rcpt_limit",
    "looping_message",
]


def connect_exactly(s: MilterSession, macros: dict[str, str]) -> Answer:
    """connect with exactly ``macros`` (MilterSession.connect always adds a ``v``)."""
    return s._answer(
        C.SMFIC_CONNECT,
        macros,
        hostname=f"[{UNTRUSTED_IP}]",
        family="4",
        port=40000,
        address=UNTRUSTED_IP,
    )


def refusals(service: Running, macros: dict[str, str]) -> list[Answer]:
    """One session refused at MAIL, at RCPT (directory, relay, limit) and at end of
    message (more Received fields than the default limits.max_hops of 30)."""
    with service.session() as s:
        assert_pass(connect_exactly(s, macros))
        assert_pass(s.helo("mail.sender.example"))
        answers = [s.mail("<spammer@bad.example>")]
        assert_pass(s.mail("<friend@sender.example>"))
        answers += [s.rcpt("<nobody@example.com>"), s.rcpt("<x@foreign.example>")]
        for rcpt in ("<alice@example.com>", "<sales@example.com>", "<news@example.com>"):
            assert_pass(s.rcpt(rcpt))
        answers.append(s.rcpt("<x@relay.example>"))
        final, _mods, early = s.message([("Received", RECEIVED)] * 31, "hello\r\n")
        # The verdict waits for end of message; body chunks get no reply.
        assert early == [], early
        answers.append(final)
    assert [a.kind for a in answers] == ["reply"] * len(REFUSED), answers
    return answers


def high_bytes(answers: list[Answer]) -> list[bytes]:
    """Every reply line (as the milter sent it) with a byte of 0x80 or more."""
    raw = [f"{a.code} {a.xcode} {line}".encode() for a in answers for line in a.lines]
    return [line for line in raw if any(byte >= 0x80 for byte in line)]


def test_without_v_no_reply_has_a_high_byte(service: Running) -> None:
    answers = refusals(service, SENDMAIL_DEFAULTS)
    assert high_bytes(answers) == []
    # The table's English text alone, code and enhanced code unchanged.
    assert [(a.code, a.xcode, a.lines) for a in answers] == [
        (SPEC[i][0], SPEC[i][1], (SPEC[i][2],)) for i in REFUSED
    ]


def test_postfix_still_gets_utf8(service: Running) -> None:
    answers = refusals(service, POSTFIX)
    assert len(high_bytes(answers)) == len(REFUSED)
    assert [a.lines for a in answers] == [(default_line(i),) for i in REFUSED]


def test_missing_v_is_logged_once_per_process(service: Running) -> None:
    for _ in range(3):
        refusals(service, SENDMAIL_DEFAULTS)
    refusals(service, POSTFIX)
    log = service.log()
    assert log.count(NO_V_WARNING) == 1, log[-3000:]


def test_a_login_that_is_not_utf8_is_an_unknown_login(service: Running) -> None:
    """pymilter decodes macros strictly: {auth_authen} with a Latin-1 byte raised in the
    macro read and every MAIL got internal_error (450), forever. It now reads as a login
    no directory holds: auth_error_perm, and a log line naming the macro."""
    with service.session() as s:
        assert_pass(s.connect())
        assert_pass(s.helo("mail.sender.example"))
        payload = C.SMFIC_MAIL.encode() + b"{auth_authen}\0j\xf6rg\0{auth_type}\0CRAM-MD5\0"
        packet = C.SMFIC_MACRO.encode() + payload
        s.conn.sock.sendall(len(packet).to_bytes(4, "big") + packet)
        assert_reply(s.mail("<jorg@example.com>"), "auth_error_perm")
    assert "macro {auth_authen} is not valid UTF-8" in service.log()


def test_an_unknown_command_that_is_not_utf8_leaves_the_transaction_alone(
    service: Running,
) -> None:
    """Review rev157 F1: pymilter decoded an SMFIC_UNKNOWN strictly, and the failure was
    taken for an undecodable HELO name, which reset the transaction between RCPT and
    DATA; the message after it was accepted unjudged, with no summary line. No MTA
    sends one (SMFIP_NOUNKNOWN); libmilter now answers it itself."""
    with service.session() as s:
        assert_pass(s.connect())
        assert_pass(s.helo("mail.sender.example"))
        assert_pass(s.mail("<unknown-cmd@sender.example>"))
        assert_pass(s.rcpt("<alice@example.com>"))
        # SMFIC_UNKNOWN is "U" (libmilter's mfdef.h), which miltertest does not name.
        assert_pass(s._raw(b"UXYZZY \xff\0", 0))
        final, _mods, _early = s.message([("Subject", "hi")], "hello\r\n")
        assert_pass(final)
    log = service.log()
    assert "HELO name is not UTF-8" not in log
    (summary,) = [
        line
        for line in log.splitlines()
        if "unknown-cmd@sender.example" in line and " summary " in line
    ]
    assert "outcome=accept" in summary
