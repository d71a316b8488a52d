"""Quoted local parts through the real ``smtpguard run`` service (PyPI miltertest client).

RFC 5321 4.1.2: ``"spammer"@bad.example`` (and ``"sp\\ammer"@bad.example``) is the
mailbox ``spammer@bad.example``. Every address-based check must answer the quoted
spelling exactly as it answers the plain one: the deny list and its patterns, the
dynamic blacklist, the directory's recipients and the login's own senders.
"""

from __future__ import annotations

import pytest

from support.mtclient import Answer, MilterSession, assert_pass, assert_reply
from support.service import UNTRUSTED_IP, Running, smtpguard

pytestmark = pytest.mark.integration

TLS = {"{tls_version}": "TLSv1.3"}
ALICE = {"{auth_authen}": "alice@example.com", "{auth_type}": "PLAIN"}


def session(service: Running, macros: dict[str, str] | None = None) -> MilterSession:
    s = service.session()
    assert_pass(s.connect(UNTRUSTED_IP))
    assert_pass(s.helo("mail.sender.example", macros=macros))
    return s


def mail_from(service: Running, path: str, macros: dict[str, str] | None = None) -> Answer:
    with session(service, TLS if macros else None) as s:
        return s.mail(path, macros=macros)


@pytest.mark.parametrize(
    ("plain", "quoted"),
    [
        # policy.sender_deny of the test site: an exact address and a pattern.
        ("<spammer@bad.example>", '<"spammer"@bad.example>'),
        ("<spammer@bad.example>", r'<"sp\ammer"@Bad.Example>'),
        ("<promo-42@any.example>", '<"promo-42"@any.example>'),
    ],
)
def test_deny_list_answers_the_quoted_sender_alike(
    service: Running, plain: str, quoted: str
) -> None:
    answer = mail_from(service, quoted)
    assert answer == mail_from(service, plain)
    assert_reply(answer, "host_denies_sender")


def test_needed_quotes_name_another_sender(service: Running) -> None:
    assert_pass(mail_from(service, '<"spammer "@bad.example>'))


def test_blacklist_answers_the_quoted_sender_alike(service: Running) -> None:
    smtpguard(service.site, "blacklist", "add", "evil@spam.example")
    plain = mail_from(service, "<evil@spam.example>")
    assert_reply(plain, "black_mail_address")
    for quoted in ('<"evil"@spam.example>', r'<"ev\il"@spam.example>'):
        assert mail_from(service, quoted) == plain, quoted
    # Removed by its quoted spelling too: the same entry.
    smtpguard(service.site, "blacklist", "remove", '"evil"@spam.example')
    assert_pass(mail_from(service, '<"evil"@spam.example>'))


def test_directory_knows_the_quoted_recipient(service: Running) -> None:
    with session(service) as s:
        assert_pass(s.mail("<a@sender.example>"))
        assert_pass(s.rcpt('<"alice"@example.com>'))
        assert_pass(s.rcpt(r'<"al\ice"@Example.COM>'))
        assert_reply(s.rcpt('<"nobody"@example.com>'), "mailbox_unavailable")
        assert_reply(s.rcpt('<"alice "@example.com>'), "mailbox_unavailable")


def test_login_owns_the_quoted_sender(service: Running) -> None:
    for owned in ('<"alice"@example.com>', '<"sales"@example.com>'):
        assert_pass(mail_from(service, owned, ALICE))
    mismatch = mail_from(service, '<"carol"@example.com>', ALICE)
    assert mismatch == mail_from(service, "<carol@example.com>", ALICE)
    assert_reply(mismatch, "sender_mismatch")
