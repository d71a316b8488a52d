"""bulk: same_size_flood from the same-size counters (a fake here)."""

from __future__ import annotations

import pytest

from smtpguard.checks import Event, Services, Stage
from smtpguard.checks.bulk import SameSize, SameSizeDeclared, bulk_key
from smtpguard.session import Connection
from smtpguard.verdict import Hit, TempError
from support.checks import ServicesFactory, body, make_conn, with_message
from support.fakes import FakeBlacklist, FakeCounter, FakeDirectory

THRESHOLD = {"threshold": 2}
KEY = "a@example.org|198.51.100.7"


def test_declarations() -> None:
    assert (SameSizeDeclared.name, SameSizeDeclared.stage) == ("bulk.mail", Stage.MAIL)
    assert (SameSize.name, SameSize.stage) == ("bulk.eom", Stage.EOM)
    for cls in (SameSizeDeclared, SameSize):
        assert cls.reply_ids == ("same_size_flood", "database_temp_error")


@pytest.mark.parametrize(
    ("parts", "key"),
    [
        (("sender", "client_ip"), KEY),
        (("sender_domain",), "example.org"),
        (("sender_domain", "client_ip"), "example.org|198.51.100.7"),
        (("sender",), "a@example.org"),
        (("login", "client_ip"), "alice|198.51.100.7"),
    ],
)
def test_bulk_key(parts: tuple[str, ...], key: str) -> None:
    conn = make_conn(sender="A@Example.ORG", auth_login="Alice")
    assert bulk_key(parts, conn) == key


def test_bulk_key_login_of_an_anonymous_session_is_empty() -> None:
    assert bulk_key(("login", "sender"), make_conn(sender="a@example.org")) == "|a@example.org"


@pytest.mark.parametrize("sender", ['"A"@Example.ORG', '"\\A"@example.org'])
def test_a_quoted_sender_counts_as_the_plain_one(sender: str) -> None:
    """Switching spellings must not split one sender's same-size count."""
    assert bulk_key(("sender",), make_conn(sender=sender)) == "a@example.org"


def test_an_idn_sender_domain_counts_once_in_either_spelling() -> None:
    u_label = bulk_key(("sender_domain",), make_conn(sender="a@bücher.example", smtputf8=True))
    assert u_label == bulk_key(("sender_domain",), make_conn(sender="a@xn--bcher-kva.example"))


def test_bulk_key_of_the_null_sender_and_without_transaction() -> None:
    assert bulk_key(("sender", "sender_domain"), make_conn(sender="<>")) == "|"
    assert bulk_key(("sender", "sender_domain", "client_ip"), make_conn(ip=None)) == "<>||"


def message_of(size: int, **conn_args: object) -> Connection:
    conn = with_message(make_conn(sender="a@example.org", **conn_args))  # type: ignore[arg-type]  # hypothesis-drawn kwargs of mixed types
    body(conn, b"x" * size)
    return conn


def test_actual_size_counts_every_message_and_refuses_above_the_threshold(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    check = SameSize(make_services(bulk=THRESHOLD))
    assert check(message_of(500), Event()) is None
    assert check(message_of(500), Event()) is None
    assert check(message_of(500), Event()) == Hit(
        "same_size_flood", "3 messages of about 500 octets"
    )
    assert counter.calls == [("hit", KEY, 500)] * 3


def test_declared_size_is_checked_without_counting(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    check = SameSizeDeclared(make_services(bulk=THRESHOLD))
    counter.counts[KEY] = 1
    assert check(make_conn(sender="a@example.org", declared_size=500), Event()) is None
    counter.counts[KEY] = 2
    verdict = check(make_conn(sender="a@example.org", declared_size=500), Event())
    assert verdict == Hit("same_size_flood", "2 messages near SIZE=500")
    assert counter.calls == [("peek", KEY, 500)] * 2
    assert counter.counts[KEY] == 2  # peeking records nothing


def test_without_size_nothing_is_asked(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    assert SameSizeDeclared(make_services())(make_conn(sender="a@example.org"), Event()) is None
    assert SameSize(make_services())(make_conn(sender="a@example.org"), Event()) is None
    assert SameSize(make_services())(make_conn(), Event()) is None
    assert counter.calls == []


def test_trusted_networks_are_not_counted(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    services = make_services(bulk={"threshold": 1})
    trusted = {"trusted_network": True}
    assert SameSize(services)(message_of(500, **trusted), Event()) is None
    declared = make_conn(sender="a@example.org", declared_size=500, trusted_network=True)
    assert SameSizeDeclared(services)(declared, Event()) is None
    assert counter.calls == []


@pytest.mark.parametrize("trusted_network", [False, True])
def test_authenticated_sessions_are_counted(
    make_services: ServicesFactory, counter: FakeCounter, trusted_network: bool
) -> None:
    """A stolen password is the classic same-size flood: logging in exempts nothing."""
    services = make_services(bulk={"threshold": 1})
    login = {"auth_login": "alice", "trusted_network": trusted_network}
    assert SameSize(services)(message_of(500, **login), Event()) is None
    assert SameSize(services)(message_of(500, **login), Event()) == Hit(
        "same_size_flood", "2 messages of about 500 octets"
    )
    declared = make_conn(sender="a@example.org", declared_size=500, **login)  # type: ignore[arg-type]  # mixed kwargs
    assert isinstance(SameSizeDeclared(services)(declared, Event()), Hit)


def test_counter_failure_is_a_temporary_error(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    counter.failing = True
    services = make_services()
    expected = TempError(
        "database_temp_error", "bulk counter: redis unreachable: connection refused"
    )
    assert SameSize(services)(message_of(10), Event()) == expected
    declared = make_conn(sender="a@example.org", declared_size=10)
    assert SameSizeDeclared(services)(declared, Event()) == expected


def test_without_a_counter_both_pass(make_services: ServicesFactory) -> None:
    services = make_services(bulk={"threshold": 1})
    bare = Services(services.config, FakeDirectory(), FakeBlacklist())
    assert SameSize(bare)(message_of(10), Event()) is None
    declared = make_conn(sender="a@example.org", declared_size=10)
    assert SameSizeDeclared(bare)(declared, Event()) is None
