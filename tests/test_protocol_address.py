"""Quoted local parts through the real ``smtpguard run`` service (PyPI miltertest client).

RFC 5321 4.1.2: ``"spammer"@bad.example`` (and ``"sp\\ammer"@bad.example``) is the
mailbox ``spammer@bad.example``. Every address-based check must answer the quoted
spelling exactly as it answers the plain one: the deny list and its patterns, the
dynamic blacklist, the directory's recipients and the login's own senders.

Likewise a domain written with U-labels (``köln.example``, sent only with SMTPUTF8) is
the domain written with A-labels (``xn--kln-sna.example``), whichever form the
configuration uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.mtclient import Answer, MilterSession, assert_pass, assert_reply
from support.polling import wait_until
from support.service import UNTRUSTED_IP, Running, make_site, running, smtpguard

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


def test_invalid_recipient_elsewhere_is_no_mailbox_of_ours(service: Running) -> None:
    """Postfix accepts and delivers ``taro.@docomo.ne.jp`` (Japanese carriers gave out
    such addresses): only our own domains' mailboxes are ours to call unavailable."""
    with session(service, TLS) as s:
        assert_pass(s.mail("<alice@example.com>", macros=ALICE))
        assert_pass(s.rcpt("<taro.@docomo.ne.jp>"))
        assert_pass(s.rcpt("<a..b@gmail.example>"))
        assert_reply(s.rcpt("<a..b@example.com>"), "mailbox_unavailable")
        assert_reply(s.rcpt("<not an address>"), "mailbox_unavailable")
    with session(service) as s:
        # A stranger still may not relay to it.
        assert_pass(s.mail("<a@sender.example>"))
        assert_reply(s.rcpt("<taro.@docomo.ne.jp>"), "host_denies_relay")


def test_login_owns_the_quoted_sender(service: Running) -> None:
    for owned in ('<"alice"@example.com>', '<"sales"@example.com>'):
        assert_pass(mail_from(service, owned, ALICE))
    mismatch = mail_from(service, '<"carol"@example.com>', ALICE)
    assert mismatch == mail_from(service, "<carol@example.com>", ALICE)
    assert_reply(mismatch, "sender_mismatch")


# --- address extensions (site.recipient_delimiter, "+" by default) -----------------


def test_recipient_with_an_extension_reaches_the_mailbox(service: Running) -> None:
    """Debian's Postfix delivers alice+news@ to alice@ (recipient_delimiter = +):
    refusing it as unknown would bounce mail the MTA would deliver."""
    with session(service) as s:
        assert_pass(s.mail("<a@sender.example>"))
        assert_pass(s.rcpt("<alice+news@example.com>"))
        assert_pass(s.rcpt('<"alice+news"@Example.COM>'))
        assert_reply(s.rcpt("<bob+x@example.com>"), "user_locked")
        assert_reply(s.rcpt("<nobody+x@example.com>"), "mailbox_unavailable")


def test_members_only_list_with_an_extension_keeps_its_policy(service: Running) -> None:
    with session(service) as s:
        assert_pass(s.mail("<stranger@sender.example>"))
        assert_reply(s.rcpt("<staff+x@example.com>"), "private_list_denied")
    with session(service, TLS) as s:
        # A member posting from an address with an extension is that member.
        assert_pass(s.mail("<alice+lists@example.com>", macros=ALICE))
        assert_pass(s.rcpt("<staff+x@example.com>"))


def test_deny_list_and_blacklist_see_through_an_extension(service: Running) -> None:
    """As Postfix's access(5) lookups: a listed spammer@ is spammer+1@ too."""
    assert_reply(mail_from(service, "<spammer+1@bad.example>"), "host_denies_sender")
    assert_reply(mail_from(service, '<"spammer+x"@Bad.Example>'), "host_denies_sender")
    # Split unquoted, as Postfix does: "spammer+a b" is spammer + "a b" (found by review).
    assert_reply(mail_from(service, '<"spammer+a b"@bad.example>'), "host_denies_sender")
    smtpguard(service.site, "blacklist", "add", "evil2@spam.example")
    try:
        assert_reply(mail_from(service, "<evil2+a@spam.example>"), "black_mail_address")
        assert_pass(mail_from(service, "<evil3+a@spam.example>"))
    finally:
        smtpguard(service.site, "blacklist", "remove", "evil2@spam.example")


def test_login_owns_its_address_with_an_extension_in_any_case(service: Running) -> None:
    assert_pass(mail_from(service, "<alice+news@example.com>", ALICE))
    # Postfix compares SASL logins without regard to case (strcasecmp).
    dave = {"{auth_authen}": "DAVE", "{auth_type}": "PLAIN"}
    assert_pass(mail_from(service, "<dave@example.com>", dave))
    assert_reply(mail_from(service, "<alice@example.com>", dave), "sender_mismatch")
    # Which login it was (review rev113 F1: decision lines named no login).
    wait_until(lambda: "login=DAVE from=<alice@example.com>" in service.log())


# --- internationalized domains: U-labels and A-labels are one domain --------------------


@pytest.fixture(scope="module")
def idn_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A site whose deny list is written with U-labels and whose local domain with
    A-labels, and a directory user imported with U-labels."""
    site = make_site(
        tmp_path_factory.mktemp("idn"),
        {
            "site": {"local_domains": ["example.com", "xn--bcher-kva.example"]},
            "policy": {"sender_deny": ["köln.example", "@straße.de"]},
        },
    )
    source = site.dir / "idn.toml"
    source.write_text('[[user]]\naddress = "jürgen@bücher.example"\n', encoding="utf-8")
    smtpguard(site, "directory", "import", str(source))
    with running(site) as svc:
        yield svc


def idn_mail_from(service: Running, path: str, *esmtp: str) -> Answer:
    with session(service) as s:
        return s.mail(path, *esmtp)


@pytest.mark.parametrize(
    ("a_label", "u_label"),
    [
        ("<x@xn--kln-sna.example>", "<x@Köln.example>"),
        ("<x@MX.XN--KLN-SNA.example.>", "<x@mx.ko\u0308ln.example>"),  # NFD
        ("<x@xn--strae-oqa.de>", "<x@straße.de>"),
    ],
)
def test_deny_list_in_u_labels_denies_the_a_label_sender(
    idn_service: Running, a_label: str, u_label: str
) -> None:
    answer = idn_mail_from(idn_service, a_label)
    assert_reply(answer, "host_denies_sender")
    # The same sender in U-labels (RFC 6531: only with SMTPUTF8) gets the same answer.
    assert idn_mail_from(idn_service, u_label, "SMTPUTF8") == answer


@pytest.mark.parametrize(
    "sender", ["<x@strasse.de>", "<x@koln.example>", "<x@sub.xn--strae-oqa.de>"]
)
def test_deny_list_in_u_labels_spares_other_domains(idn_service: Running, sender: str) -> None:
    assert_pass(idn_mail_from(idn_service, sender))


def test_a_u_label_recipient_is_local_only_as_the_site_spells_the_domain(
    idn_service: Running,
) -> None:
    """The site lists xn--bcher-kva.example: the MTA routes that spelling as ours, and
    (relay_control = "postfix", Postfix's lists carrying both spellings) its U-label
    in any case too (review rev181 F1, F2; rev116 F1 refused it as relaying); any
    other spelling is foreign mail."""
    with session(idn_service) as s:
        assert_pass(s.mail("<a@sender.example>", "SMTPUTF8"))
        assert_pass(s.rcpt("<jürgen@xn--bcher-kva.example>"))
        assert_pass(s.rcpt("<jürgen@XN--BCHER-KVA.example>"))
        assert_reply(s.rcpt("<nobody@xn--bcher-kva.example>"), "mailbox_unavailable")
        assert_reply(s.rcpt("<x@bucher.example>"), "host_denies_relay")
    with session(idn_service) as s:
        assert_pass(s.mail("<a@sender.example>", "SMTPUTF8"))
        assert_pass(s.rcpt("<jürgen@Bücher.example>"))
        assert_reply(s.rcpt("<jürgen@bu\u0308cher.example>"), "host_denies_relay")  # NFD


# --- the From: header field of an authenticated login (policy.check_header_from) ----


def test_header_from_the_login_does_not_own_is_refused_when_asked_for(tmp_path: Path) -> None:
    headers_of = {
        "owned": [("From", "Alice <alice@example.com>"), ("Subject", "hi")],
        "alias": [("From", '"Sales" <sales@example.com>'), ("Subject", "hi")],
        "forged": [("From", "CEO <ceo@example.com>"), ("Subject", "wire the money")],
    }

    def submit(service: Running, headers: list[tuple[str, str]]) -> Answer:
        with session(service, TLS) as s:
            assert_pass(s.mail("<alice@example.com>", macros=ALICE))
            assert_pass(s.rcpt("<friend@elsewhere.example>"))
            final, _mods, early = s.message(headers, "Hello\r\n")
            assert early == []
            return final

    extra = {"policy": {"check_header_from": True}}
    with running(make_site(tmp_path / "site", extra)) as service:
        assert_pass(submit(service, headers_of["owned"]))
        assert_pass(submit(service, headers_of["alias"]))
        assert_reply(submit(service, headers_of["forged"]), "sender_mismatch")
    # Off (the default), only MAIL FROM is the login's to own.
    with running(make_site(tmp_path / "default")) as service:
        assert_pass(submit(service, headers_of["forged"]))


@pytest.mark.parametrize("mode", ["report", "off"])
def test_a_sender_that_does_not_parse_is_still_judged_for_who_it_is(
    tmp_path: Path, mode: str
) -> None:
    """Review rev65 F1: with sender_syntax in report mode or off, a stranger's
    <alice%example.com> and alice's <carol%example.com> passed, and Postfix delivered
    them as alice@ and carol@example.com; a deny-listed sender passed the same way."""
    extra = {"checks": {"sender_syntax": {"mode": mode}}}
    with running(make_site(tmp_path / mode, extra)) as service:
        for path in ("<alice%example.com>", "<example.com!alice>", "<alice>"):
            assert_reply(mail_from(service, path), "relay_local_fail")
        assert_reply(mail_from(service, "<carol%example.com>", ALICE), "sender_mismatch")
        assert_reply(mail_from(service, "<spammer%bad.example>"), "host_denies_sender")
        # Nothing of ours in it: passed to the other checks.
        assert_pass(mail_from(service, "<friend@elsewhere..example>"))
