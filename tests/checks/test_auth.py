"""SASL checks: AuthMechanism, AuthLogin, SenderLogin (and the shared login lookup)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from smtpguard.app import build_runtime, load
from smtpguard.checks import Event, Stage
from smtpguard.checks.auth import (
    AuthLogin,
    AuthMechanism,
    SenderLogin,
    SenderLoginFrom,
    resolve_login,
)
from smtpguard.config import ConfigError
from smtpguard.directory import DirectoryError, Login, NoDirectory
from smtpguard.verdict import Hit, TempError, Verdict
from support.checks import ServicesFactory, make_conn
from support.fakes import FakeDirectory
from support.service import make_site

ALICE = Login("alice", "alice@example.com", "active")


def test_stages_and_replies() -> None:
    assert {c.stage for c in (AuthMechanism, AuthLogin, SenderLogin)} == {Stage.MAIL}
    assert AuthMechanism.reply_ids == ("auth_mode_unsupported",)
    assert set(AuthLogin.reply_ids) == {"domain_auth_error", "auth_error_perm", "auth_error_temp"}
    assert set(SenderLogin.reply_ids) == {"sender_mismatch", "auth_error_temp"}


# --- auth_mechanism -------------------------------------------------------------------


@pytest.mark.parametrize("check_cls", [AuthMechanism, AuthLogin, SenderLogin])
def test_unauthenticated_sessions_are_not_checked(
    make_services: ServicesFactory,
    directory: FakeDirectory,
    check_cls: type[AuthMechanism | AuthLogin | SenderLogin],
) -> None:
    directory.failing = {"login", "may_send_as"}
    check = check_cls(make_services(policy={"auth_allowed": ["CRAM-MD5"]}))
    assert check(make_conn(sender="alice@example.com"), Event()) is None
    assert check(make_conn(sender="alice@example.com", auth_login=""), Event()) is None
    assert check(make_conn(), Event()) is None
    assert directory.calls == []


@pytest.mark.parametrize(
    ("auth_type", "tls"),
    [
        ("PLAIN", "TLSv1.3"),
        ("LOGIN", "TLSv1.2"),
        ("plain", "TLSv1.3"),
        ("CRAM-MD5", None),  # not a clear-text mechanism
        ("SCRAM-SHA-256", None),
        (None, None),  # no mechanism macro: nothing to hold against it
    ],
)
def test_mechanism_accepted(
    make_services: ServicesFactory, auth_type: str | None, tls: str | None
) -> None:
    conn = make_conn(sender="a@example.com", auth_login="a", auth_type=auth_type, tls_version=tls)
    assert AuthMechanism(make_services())(conn, Event()) is None


@pytest.mark.parametrize("auth_type", ["PLAIN", "LOGIN", "login"])
def test_clear_text_mechanism_without_tls(make_services: ServicesFactory, auth_type: str) -> None:
    conn = make_conn(sender="a@example.com", auth_login="a", auth_type=auth_type)
    verdict = AuthMechanism(make_services())(conn, Event())
    assert verdict == Hit("auth_mode_unsupported", f"mechanism {auth_type.upper()} without TLS")


def test_tls_required_list_is_configurable(make_services: ServicesFactory) -> None:
    check = AuthMechanism(make_services(policy={"auth_tls_required": ["cram-md5"]}))
    plain = make_conn(sender="a@example.com", auth_login="a", auth_type="PLAIN")
    cram = make_conn(sender="a@example.com", auth_login="a", auth_type="CRAM-MD5")
    assert check(plain, Event()) is None
    assert check(cram, Event()) == Hit("auth_mode_unsupported", "mechanism CRAM-MD5 without TLS")


def test_mechanism_not_allowed(make_services: ServicesFactory) -> None:
    check = AuthMechanism(make_services(policy={"auth_allowed": ["cram-md5", "PLAIN"]}))
    conn = make_conn(sender="a@example.com", auth_login="a", auth_type="LOGIN", tls_version="1.3")
    assert check(conn, Event()) == Hit("auth_mode_unsupported", "mechanism LOGIN not allowed")


def test_missing_mechanism_not_allowed_when_list_given(make_services: ServicesFactory) -> None:
    check = AuthMechanism(make_services(policy={"auth_allowed": ["CRAM-MD5"]}))
    conn = make_conn(sender="a@example.com", auth_login="a", auth_type=None)
    assert check(conn, Event()) == Hit("auth_mode_unsupported", "mechanism ? not allowed")


def test_allowed_mechanism_still_needs_tls(make_services: ServicesFactory) -> None:
    check = AuthMechanism(make_services(policy={"auth_allowed": ["PLAIN"]}))
    without = make_conn(sender="a@example.com", auth_login="a", auth_type="plain")
    with_tls = make_conn(sender="a@example.com", auth_login="a", auth_type="plain", tls_version="x")
    assert check(without, Event()) == Hit("auth_mode_unsupported", "mechanism PLAIN without TLS")
    assert check(with_tls, Event()) is None


# --- auth_login -----------------------------------------------------------------------


@pytest.fixture
def auth_directory(directory: FakeDirectory) -> FakeDirectory:
    directory.logins.update(
        {
            "alice": ALICE,
            "alice@example.com": ALICE,
            "bob@mail.example.net": Login("bob@mail.example.net", "bob@mail.example.net", "active"),
            "carol@example.com": Login("carol@example.com", "carol@example.com", "locked"),
            "dave@example.com": Login("dave@example.com", "dave@example.com", "suspended"),
        }
    )
    return directory


SITE = {"local_domains": ["example.com", ".example.net"]}


@pytest.fixture
def login_check(make_services: ServicesFactory) -> AuthLogin:
    return AuthLogin(make_services(site=SITE))


def logged_in_as(check: AuthLogin, login: str) -> Verdict | None:
    """The check's verdict at MAIL FROM in a session authenticated as ``login``."""
    return check(make_conn(sender="a@example.org", auth_login=login), Event())


@pytest.mark.parametrize("login", ["alice@example.com", "alice", "bob@mail.example.net"])
def test_active_login(login_check: AuthLogin, auth_directory: FakeDirectory, login: str) -> None:
    assert logged_in_as(login_check, login) is None
    assert auth_directory.calls == [("login", login)]


@pytest.mark.parametrize(
    ("login", "domain"),
    [("eve@example.org", "example.org"), ("eve@example.net", "example.net")],
)
def test_login_in_foreign_domain(
    login_check: AuthLogin, auth_directory: FakeDirectory, login: str, domain: str
) -> None:
    # ".example.net" covers subdomains only, not example.net itself.
    verdict = logged_in_as(login_check, login)
    assert verdict == Hit("domain_auth_error", f"login {login!r}: domain {domain} not hosted")
    assert auth_directory.calls == []  # decided before any lookup


def test_login_domain_is_case_insensitive(
    login_check: AuthLogin, auth_directory: FakeDirectory
) -> None:
    auth_directory.logins["alice@EXAMPLE.COM"] = ALICE
    assert logged_in_as(login_check, "alice@EXAMPLE.COM") is None


def test_bare_login_uses_default_domain(
    make_services: ServicesFactory, auth_directory: FakeDirectory
) -> None:
    local = AuthLogin(make_services(site=SITE, policy={"default_login_domain": "Example.COM"}))
    assert logged_in_as(local, "alice") is None
    assert logged_in_as(local, "alice@example.org") == Hit(
        "domain_auth_error", "login 'alice@example.org': domain example.org not hosted"
    )


@pytest.mark.parametrize(
    ("domain", "why"),
    [("example.org", "not in site.local_domains"), ("exa mple@@", "not a domain name")],
)
def test_a_default_login_domain_that_refuses_every_login_is_refused_at_load(
    make_services: ServicesFactory, domain: str, why: str
) -> None:
    # Every login without "@" would get domain_auth_error.
    with pytest.raises(ConfigError) as err:
        make_services(site=SITE, policy={"default_login_domain": domain})
    assert err.value.key == "policy.default_login_domain"
    assert why in err.value.message


def test_unknown_login(login_check: AuthLogin, auth_directory: FakeDirectory) -> None:
    verdict = logged_in_as(login_check, "mallory@example.com")
    assert verdict == Hit("auth_error_perm", "login 'mallory@example.com' unknown")


@pytest.mark.parametrize(
    ("login", "state"), [("carol@example.com", "locked"), ("dave@example.com", "suspended")]
)
def test_inactive_login(
    login_check: AuthLogin, auth_directory: FakeDirectory, login: str, state: str
) -> None:
    verdict = logged_in_as(login_check, login)
    assert verdict == Hit("auth_error_perm", f"login {login!r} is {state}")


def test_login_lookup_failure_is_temporary(
    login_check: AuthLogin, auth_directory: FakeDirectory
) -> None:
    auth_directory.failing.add("login")
    verdict = logged_in_as(login_check, "alice")
    assert verdict == TempError("auth_error_temp", "login: database is locked")


# --- the shared lookup ------------------------------------------------------------------


def test_login_is_looked_up_once_per_transaction(
    make_services: ServicesFactory, auth_directory: FakeDirectory
) -> None:
    auth_directory.send_as.add(("alice", "alice@example.com"))
    services = make_services(site=SITE)
    conn = make_conn(sender="alice@example.com", auth_login="alice")
    assert AuthLogin(services)(conn, Event()) is None
    assert SenderLogin(services)(conn, Event()) is None
    assert [c[0] for c in auth_directory.calls] == ["login", "may_send_as"]
    assert conn.txn is not None
    assert resolve_login(auth_directory, conn.txn) == ALICE


def test_unknown_login_is_cached_too(auth_directory: FakeDirectory) -> None:
    conn = make_conn(sender="a@example.org", auth_login="nobody")
    assert conn.txn is not None
    assert resolve_login(auth_directory, conn.txn) is None
    assert resolve_login(auth_directory, conn.txn) is None
    assert auth_directory.calls == [("login", "nobody")]


def test_failed_lookup_is_not_cached(auth_directory: FakeDirectory) -> None:
    auth_directory.failing.add("login")
    conn = make_conn(sender="a@example.org", auth_login="alice")
    assert conn.txn is not None
    with pytest.raises(DirectoryError, match="database is locked"):
        resolve_login(auth_directory, conn.txn)
    auth_directory.failing.clear()
    assert resolve_login(auth_directory, conn.txn) == ALICE


# --- sender_login ---------------------------------------------------------------------


def test_sender_owned(make_services: ServicesFactory, auth_directory: FakeDirectory) -> None:
    auth_directory.send_as.add(("alice", "Sales@example.com"))
    conn = make_conn(sender="Sales@Example.COM", auth_login="alice")
    assert SenderLogin(make_services())(conn, Event()) is None
    # The local part keeps its case, the domain is lower-cased (Address.canonical).
    assert auth_directory.calls[-1] == ("may_send_as", "alice", "Sales@example.com")


@pytest.mark.parametrize("sender", ['<"Sales"@example.com>', r'<"Sa\les"@Example.COM.>'])
def test_quoted_sender_owned(
    make_services: ServicesFactory, auth_directory: FakeDirectory, sender: str
) -> None:
    """RFC 5321 4.1.2: the quoted Dot-string is the address the login owns."""
    auth_directory.send_as.add(("alice", "Sales@example.com"))
    conn = make_conn(sender=sender, auth_login="alice")
    assert SenderLogin(make_services())(conn, Event()) is None
    assert auth_directory.calls[-1] == ("may_send_as", "alice", "Sales@example.com")


def test_quoted_sender_not_owned_shown_as_sent(
    make_services: ServicesFactory, auth_directory: FakeDirectory
) -> None:
    auth_directory.send_as.add(("alice", "Sales@example.com"))
    conn = make_conn(sender='<"Sales "@example.com>', auth_login="alice")
    verdict = SenderLogin(make_services())(conn, Event())
    detail = """login 'alice' may not send as "Sales "@example.com"""
    assert verdict == Hit("sender_mismatch", detail)
    assert auth_directory.calls[-1] == ("may_send_as", "alice", '"Sales "@example.com')


def test_sender_not_owned(make_services: ServicesFactory, auth_directory: FakeDirectory) -> None:
    conn = make_conn(sender="ceo@example.com", auth_login="alice")
    verdict = SenderLogin(make_services())(conn, Event())
    assert verdict == Hit("sender_mismatch", "login 'alice' may not send as ceo@example.com")


def test_sender_login_unknown(
    make_services: ServicesFactory, auth_directory: FakeDirectory
) -> None:
    conn = make_conn(sender="ghost@example.com", auth_login="ghost")
    verdict = SenderLogin(make_services())(conn, Event())
    assert verdict == Hit("sender_mismatch", "login 'ghost' unknown")
    assert [c[0] for c in auth_directory.calls] == ["login"]


def test_sender_login_skips_the_null_sender(
    make_services: ServicesFactory, auth_directory: FakeDirectory
) -> None:
    auth_directory.failing = {"login", "may_send_as"}
    conn = make_conn(sender="<>", auth_login="alice")
    assert SenderLogin(make_services())(conn, Event()) is None
    assert auth_directory.calls == []


@pytest.mark.parametrize(
    "sender", ["<broken@>", "<carol%example.com>", "<carol>", "<example.com!carol>"]
)
def test_an_unparsable_sender_is_no_logins(
    make_services: ServicesFactory, auth_directory: FakeDirectory, sender: str
) -> None:
    """Review rev65 F1: with the syntax check in report mode (or exempted), alice sent
    as <carol%example.com> and Postfix delivered it as carol@example.com."""
    auth_directory.send_as.add(("alice", "alice@example.com"))
    conn = make_conn(sender=sender, auth_login="alice")
    verdict = SenderLogin(make_services())(conn, Event())
    assert verdict == Hit("sender_mismatch", f"login may not send as unparsable {sender!r}")


@pytest.mark.parametrize("method", ["login", "may_send_as"])
def test_sender_login_backend_failure(
    make_services: ServicesFactory, auth_directory: FakeDirectory, method: str
) -> None:
    auth_directory.failing.add(method)
    conn = make_conn(sender="alice@example.com", auth_login="alice")
    verdict = SenderLogin(make_services())(conn, Event())
    assert verdict == TempError("auth_error_temp", f"{method}: database is locked")


@pytest.mark.parametrize(
    ("state", "refused"),
    [("locked", True), ("suspended", True), ("overquota", False), ("moving", False)],
)
def test_only_disabled_or_locked_logins_are_refused_permanently(
    make_services: ServicesFactory, directory: FakeDirectory, state: str, refused: bool
) -> None:
    directory.logins["user@example.com"] = Login("user@example.com", "user@example.com", state)
    check = AuthLogin(make_services(site={"local_domains": ["example.com"]}))
    conn = make_conn(sender="user@example.com", auth_login="user@example.com", auth_type="LOGIN")
    verdict = check(conn, Event())
    if refused:
        assert verdict == Hit("auth_error_perm", f"login 'user@example.com' is {state}")
    else:
        assert verdict is None


# --- internationalized domains: U-labels and A-labels are one domain --------------------

JUERGEN = Login("juergen", "jürgen@xn--bcher-kva.example", "active")


@pytest.mark.parametrize("local_domain", ["bücher.example", "xn--bcher-kva.example"])
@pytest.mark.parametrize("login", ["juergen@Bücher.example", "juergen@XN--BCHER-KVA.example"])
def test_idn_login_domain_either_spelling(
    make_services: ServicesFactory, directory: FakeDirectory, local_domain: str, login: str
) -> None:
    directory.logins[login] = JUERGEN
    check = AuthLogin(make_services(site={"local_domains": [local_domain]}))
    assert logged_in_as(check, login) is None
    assert directory.calls == [("login", login)]


@pytest.mark.parametrize(
    ("sender", "key"),
    [
        # The local part keeps its case; the domain is canonical (Address.canonical).
        ("<Jürgen@Bücher.example>", "Jürgen@xn--bcher-kva.example"),
        ("<jürgen@XN--BCHER-KVA.example.>", "jürgen@xn--bcher-kva.example"),
        ("<ju\u0308rgen@bu\u0308cher.example>", "jürgen@xn--bcher-kva.example"),  # NFD
    ],
)
def test_idn_sender_owned_looked_up_canonical(
    make_services: ServicesFactory, directory: FakeDirectory, sender: str, key: str
) -> None:
    directory.logins["juergen"] = JUERGEN
    directory.send_as.add(("juergen", key))
    conn = make_conn(sender=sender, auth_login="juergen", smtputf8=True)
    assert SenderLogin(make_services())(conn, Event()) is None
    assert directory.calls[-1] == ("may_send_as", "juergen", key)


def test_idn_sender_not_owned_shown_as_sent(
    make_services: ServicesFactory, directory: FakeDirectory
) -> None:
    directory.logins["juergen"] = JUERGEN
    conn = make_conn(sender="<x@Straße.de>", auth_login="juergen", smtputf8=True)
    verdict = SenderLogin(make_services())(conn, Event())
    assert verdict == Hit("sender_mismatch", "login 'juergen' may not send as x@Straße.de")
    assert directory.calls[-1] == ("may_send_as", "juergen", "x@xn--strae-oqa.de")


def test_without_a_directory_a_login_is_not_refused_and_sends_as_itself(
    make_services: ServicesFactory,
) -> None:
    """directory.backend = "none": every authenticated user used to get auth_error_perm
    (the login unknown) and sender_mismatch; the MTA's SASL vouched for the login."""
    services = dataclasses.replace(make_services(), directory=NoDirectory())
    own = make_conn(sender="alice@example.com", auth_type="PLAIN", auth_login="alice@example.com")
    assert AuthLogin(services)(own, Event()) is None
    assert SenderLogin(services)(own, Event()) is None
    other = make_conn(sender="bob@example.com", auth_type="PLAIN", auth_login="alice@example.com")
    verdict = SenderLogin(services)(other, Event())
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "sender_mismatch"


def test_without_a_directory_a_bare_login_is_at_the_default_login_domain(
    make_services: ServicesFactory, tmp_path: Path
) -> None:
    """Review rev123 F2: through the service's own wiring (app.build_runtime's
    NoDirectory), policy.default_login_domain names the domain of a login without "@"."""
    site = make_site(
        tmp_path,
        {"directory": {"backend": "none"}, "policy": {"default_login_domain": "example.com"}},
        directory=False,
    )
    directory = build_runtime(load(site.config), announce=False).services.directory
    services = dataclasses.replace(make_services(), directory=directory)
    own = make_conn(sender="alice@example.com", auth_type="PLAIN", auth_login="alice")
    assert SenderLogin(services)(own, Event()) is None
    other = make_conn(sender="bob@example.com", auth_type="PLAIN", auth_login="alice")
    verdict = SenderLogin(services)(other, Event())
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "sender_mismatch"


# --- sender_login.header: the From: field (policy.check_header_from) -----------------

FROM_CHECK = {"check_header_from": True}
#: The detail of a From: whose display name shows bob's address.
SHOWN_BOB = "login 'alice' may not write From: (its display name) bob@example.com"


def from_verdict(
    make_services: ServicesFactory, value: str, login: str = "alice"
) -> Verdict | None:
    check = SenderLoginFrom(make_services(policy=FROM_CHECK))
    conn = make_conn(sender="alice@example.com", auth_login=login)
    return check(conn, Event(header=("From", value)))


def test_from_check_is_inert_unless_asked_for(make_services: ServicesFactory) -> None:
    assert SenderLoginFrom(make_services()).inert
    assert not SenderLoginFrom(make_services(policy=FROM_CHECK)).inert
    assert (SenderLoginFrom.stage, SenderLoginFrom.header_names) == (Stage.HEADER, ("from",))


@pytest.mark.parametrize(
    "value",
    [
        "alice@example.com",
        "Alice <alice@example.com>",
        '"Alice, Sales" <Sales@Example.COM>',
        "=?utf-8?q?Al=C3=AFce?= <alice@example.com>, Sales@example.com",
        "alice@example.com (Alice)",
        # A display name that is the login's own address (mail programs write that).
        '"alice@example.com" <alice@example.com>',
        "=?utf-8?q?Sales=40example=2Ecom?= <alice@example.com>",
        # Review rev223 L5: an @ in a name is no address without a dotted domain.
        '"alice@home" <alice@example.com>',
        '"Jobs@Acme" <alice@example.com>',
        # Review rev225 M1: an address among other words is no address the name is (a
        # list's rewrite, a Fediverse handle, a time, a department after a fullwidth @).
        "\"'bob@partner.example' via dev-list\" <alice@example.com>",
        '"Alice (@alice@mastodon.social)" <alice@example.com>',
        '"Alice - Dinner@8.30pm" <alice@example.com>',
        '"山田太郎\uff20営業部.東京都 様" <alice@example.com>',
    ],
)
def test_from_addresses_the_login_owns(
    make_services: ServicesFactory, auth_directory: FakeDirectory, value: str
) -> None:
    auth_directory.send_as.update({("alice", "alice@example.com"), ("alice", "Sales@example.com")})
    assert from_verdict(make_services, value) is None


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("CEO <ceo@example.com>", "login 'alice' may not write From: ceo@example.com"),
        # Every author must be owned, not only the first.
        ("alice@example.com, ceo@example.com", "login 'alice' may not write From: ceo@example.com"),
        # Review rev222 F3, rev223 M2: what a mail program shows as bob's address when
        # it shows the display name alone: plain, encoded, quoted, behind mailto:, in
        # fullwidth characters or with invisible ones.
        *(
            (f"{name} <alice@example.com>", SHOWN_BOB)
            for name in (
                '"bob@example.com"',
                "=?utf-8?b?Ym9iQGV4YW1wbGUuY29t?=",
                "\"'bob@example.com'\"",
                '"bob@example.com\u200b"',
                '"bob\uff20example.com"',
                '"bob\ufe6bexample.com"',
                '"mailto:bob@example.com"',
                '"bob@example.com,"',
            )
        ),
        ("Alice", "From: 'Alice' names no valid address"),
        ("", "From: '' names no valid address"),
        ("<>", "From: '<>' names no valid address"),
        ("alice@@example.com", "From: 'alice@@example.com' names no valid address"),
        # Review rev66 F4: the standard parser's recursion ran out (a tempfail).
        ("(" * 600 + "x" + ")" * 600, f"From: {('(' * 200)!r} names no valid address"),
        ("(" * 600 + "alice@example.com", f"From: {('(' * 200)!r} names no valid address"),
    ],
)
def test_from_addresses_the_login_does_not_own(
    make_services: ServicesFactory, auth_directory: FakeDirectory, value: str, detail: str
) -> None:
    auth_directory.send_as.add(("alice", "alice@example.com"))
    assert from_verdict(make_services, value) == Hit("sender_mismatch", detail)


def test_from_check_leaves_anonymous_sessions_and_fails_temporarily(
    make_services: ServicesFactory, auth_directory: FakeDirectory
) -> None:
    check = SenderLoginFrom(make_services(policy=FROM_CHECK))
    anonymous = make_conn(sender="a@example.org")
    assert check(anonymous, Event(header=("From", "ceo@example.com"))) is None
    assert auth_directory.calls == []
    auth_directory.failing.add("may_send_as")
    verdict = from_verdict(make_services, "ceo@example.com")
    assert isinstance(verdict, TempError)
    assert verdict.reply_id == "auth_error_temp"
    assert from_verdict(make_services, "x@example.com", login="ghost") == Hit(
        "sender_mismatch", "login 'ghost' unknown"
    )
