"""bulk: same_size_flood from the same-size counters (a fake here)."""

from __future__ import annotations

import pytest

from smtpguard.address import parse_path
from smtpguard.checks import Event, Services, Stage
from smtpguard.checks.bulk import RETRIES_FORGIVEN, SameSize, SameSizeDeclared, bulk_key
from smtpguard.session import Connection
from smtpguard.verdict import Hit, TempError
from support.checks import ServicesFactory, body, header, make_conn, with_message
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
        (("sender", "client_ip"), "login:alice|198.51.100.7"),
        (("sender_domain",), "example.org"),
        (("sender_domain", "client_ip"), "example.org|198.51.100.7"),
        (("sender",), "login:alice"),
        (("login", "client_ip"), "alice|198.51.100.7"),
        # Review rev223 L4: a shared login that sends as each of its users, per address.
        (("mail_from", "client_ip"), KEY),
    ],
)
def test_bulk_key(parts: tuple[str, ...], key: str) -> None:
    """A logged-in client's sender is its login (review rev222 F1)."""
    conn = make_conn(sender="A@Example.ORG", auth_login="Alice")
    assert bulk_key(parts, conn) == key
    assert bulk_key(("sender", "client_ip"), make_conn(sender="A@Example.ORG")) == KEY


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
    args: dict[str, object] = {"sender": "a@example.org", **conn_args}
    conn = with_message(make_conn(**args))  # type: ignore[arg-type]  # hypothesis-drawn kwargs of mixed types
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


def test_an_ipv6_host_rotating_its_addresses_is_one_sender(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    """Review rev167 F1: each privacy address of one /64 had a count of its own, so a
    host rotating them was never refused; another /64 is another sender."""
    check = SameSize(make_services(bulk=THRESHOLD))
    for ip in ("2001:db8:0:1::100", "2001:db8:0:1:8a2e:370:7334:1", "2001:db8:0:1::102"):
        verdict = check(message_of(500, ip=ip), Event())
    assert verdict == Hit("same_size_flood", "3 messages of about 500 octets")
    assert {key for _, key, _ in counter.calls} == {"a@example.org|2001:db8:0:1::/64"}
    assert check(message_of(500, ip="2001:db8:0:2::100"), Event()) is None


@pytest.mark.parametrize(
    ("prefix", "key"),
    [
        (64, "|2001:db8:0:1::/64"),
        (48, "|2001:db8::/48"),
        (128, "|2001:db8:0:1::7"),
    ],
)
def test_the_ipv6_prefix_of_the_key(prefix: int, key: str) -> None:
    conn = make_conn(ip="2001:db8:0:1::7")
    assert bulk_key(("sender", "client_ip"), conn, prefix) == "<>" + key
    # An IPv4 client is its address whatever the prefix, behind NAT64 too (review
    # rev172 F1: every IPv4 host there shared one /64).
    assert bulk_key(("client_ip",), make_conn(), prefix) == "198.51.100.7"
    nat64 = make_conn(ip="64:ff9b::c633:6407")
    assert bulk_key(("client_ip",), nat64, prefix) == "198.51.100.7"
    # A site's own NAT64 prefix (RFC 8215), whose length the site chose: each IPv4
    # host has an address of its own, one /64 was all of them.
    for local in ("64:ff9b:1:ab::c633:6407", "64:ff9b:1:c633:64:700::"):
        assert bulk_key(("client_ip",), make_conn(ip=local), prefix) == local


def test_declared_size_is_checked_without_counting(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    """Refused at MAIL FROM only when the count is over the threshold already: at it,
    the message may be a retry counted before, which only end of message can tell
    (review rev95 F1: each greylisted retry got 552 at RCPT)."""
    check = SameSizeDeclared(make_services(bulk=THRESHOLD))
    counter.counts[KEY] = 2
    assert check(make_conn(sender="a@example.org", declared_size=500), Event()) is None
    counter.counts[KEY] = 3
    verdict = check(make_conn(sender="a@example.org", declared_size=500), Event())
    assert verdict == Hit("same_size_flood", "3 messages near SIZE=500")
    assert counter.calls == [("peek", KEY, 500)] * 2
    assert counter.counts[KEY] == 3  # peeking records nothing


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


def bounce_of(size: int, **conn_args: object) -> Connection:
    """A null-sender message to the ``recipients`` given (none by default)."""
    conn = with_message(make_conn(sender="<>", **conn_args))  # type: ignore[arg-type]  # mixed kwargs
    body(conn, b"x" * size)
    return conn


def test_bounces_are_not_counted_by_default(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    """Review rev209: one receiving MX returned our newsletter's 25 bounces, all of one
    size, and the 21st on got 552, which loses a bounce for good."""
    services = make_services(bulk={"threshold": 1})
    for _ in range(3):
        assert SameSize(services)(bounce_of(500), Event()) is None
    declared = make_conn(sender="<>", declared_size=500)
    counter.counts["|198.51.100.7"] = 5
    assert SameSizeDeclared(services)(declared, Event()) is None
    assert counter.calls == []


def test_a_logged_in_clients_null_sender_is_counted(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    """Review rev211 F1: a stolen password's flood went uncounted as MAIL FROM:<>."""
    services = make_services(bulk={"threshold": 1})
    login = {"auth_login": "alice", "recipients": ["a@elsewhere.example"]}
    assert SameSize(services)(bounce_of(500, **login), Event()) is None
    assert SameSize(services)(bounce_of(500, **login), Event()) == Hit(
        "same_size_flood", "2 messages of about 500 octets"
    )
    declared = make_conn(sender="<>", declared_size=500, auth_login="alice")
    assert isinstance(SameSizeDeclared(services)(declared, Event()), Hit)


def test_a_null_sender_to_several_recipients_is_counted(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    """Review rev211 F2: a bounce has one recipient; spam as MAIL FROM:<> to several
    local users went uncounted. Counted per client IP, and a bounce from that IP is
    still not refused at MAIL FROM by their count."""
    services = make_services(bulk={"threshold": 1})
    many = {"recipients": ["alice@example.com", "dave@example.com"]}
    assert SameSize(services)(bounce_of(500, **many), Event()) is None
    assert SameSize(services)(bounce_of(500, **many), Event()) == Hit(
        "same_size_flood", "2 messages of about 500 octets"
    )
    assert SameSizeDeclared(services)(make_conn(sender="<>", declared_size=500), Event()) is None
    one = {"recipients": ["alice@example.com"]}
    assert SameSize(services)(bounce_of(500, **one), Event()) is None
    assert [key for _, key, _ in counter.calls] == ["|198.51.100.7"] * 2


def test_bounces_count_per_client_ip_when_asked(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    services = make_services(bulk={"threshold": 1, "count_bounces": True})
    assert SameSize(services)(bounce_of(500), Event()) is None
    assert SameSize(services)(bounce_of(500), Event()) == Hit(
        "same_size_flood", "2 messages of about 500 octets"
    )
    assert SameSize(services)(bounce_of(500, ip="198.51.100.8"), Event()) is None
    declared = make_conn(sender="<>", declared_size=500)
    assert isinstance(SameSizeDeclared(services)(declared, Event()), Hit)
    assert [key for _, key, _ in counter.calls] == ["|198.51.100.7"] * 2 + [
        "|198.51.100.8",
        "|198.51.100.7",
    ]


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


def test_a_logged_in_client_is_one_sender_whatever_address_it_sends_as(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    """Review rev222 F1, through Postfix with Dovecot SASL: alice sent 25 messages of
    one size as alice+0@ ... alice+24@ (or her aliases and send-as addresses), each
    counted as a sender of its own, and none was refused."""
    services = make_services(bulk={"threshold": 2})
    check = SameSize(services)
    verdicts = [
        check(message_of(500, sender=f"alice+{i}@example.com", auth_login="Alice"), Event())
        for i in range(2)
    ]
    verdicts.append(check(message_of(500, sender="sales@example.com", auth_login="alice"), Event()))
    assert verdicts[:2] == [None, None]
    assert verdicts[2] == Hit("same_size_flood", "3 messages of about 500 octets")
    assert {key for _, key, _ in counter.calls} == {"login:alice|198.51.100.7"}
    # A stranger's senders stay apart (a list's VERP sender is one per recipient).
    for i in range(3):
        assert check(message_of(500, sender=f"list-bounces+u{i}@lists.example"), Event()) is None


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


def attempt(
    message_id: str | None, recipients: tuple[str, ...] = ("bob@example.com",)
) -> Connection:
    """One delivery attempt of a 500-octet message with this Message-ID."""
    conn = with_message(make_conn(sender="a@example.org"))
    assert conn.txn is not None
    for rcpt in recipients:
        conn.txn.accept(parse_path(f"<{rcpt}>"), rcpt)
    if message_id is not None:
        header(conn, "Message-ID", message_id)
    body(conn, b"x" * (500 - (conn.txn.message.size if conn.txn.message else 0)))
    return conn


def test_a_retried_message_counts_once(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    """Review rev93 F3: a message that a later milter greylisted (Postfix tells the
    earlier milters nothing) counted at each retry, and its fourth attempt was refused
    for good; it had never been delivered."""
    check = SameSize(make_services(bulk=THRESHOLD))
    for _ in range(RETRIES_FORGIVEN + 1):
        assert check(attempt("<1@sender.example>"), Event()) is None
    assert counter.counts[KEY] == 1
    # Past the retries forgiven, the same message again is a flood of its own.
    assert check(attempt("<1@sender.example>"), Event()) is None
    assert check(attempt("<1@sender.example>"), Event()) == Hit(
        "same_size_flood", "3 messages of about 500 octets"
    )


def test_other_messages_and_other_recipients_count(
    make_services: ServicesFactory, counter: FakeCounter
) -> None:
    check = SameSize(make_services(bulk=THRESHOLD))
    assert check(attempt("<1@sender.example>"), Event()) is None
    assert check(attempt("<2@sender.example>"), Event()) is None
    # The same Message-ID to other recipients (a list's next batch, or a flood that
    # keeps one Message-ID) is another message here.
    flood = attempt("<2@sender.example>", ("carol@example.com",))
    assert check(flood, Event()) == Hit("same_size_flood", "3 messages of about 500 octets")
    # A retry is refused once the sender's count is over the threshold.
    assert check(attempt("<1@sender.example>"), Event()) == Hit(
        "same_size_flood",
        "3 messages of about 500 octets (this one's attempt 2, counted once)",
    )
    # Without a Message-ID every attempt counts.
    assert check(attempt(None), Event()) == Hit("same_size_flood", "4 messages of about 500 octets")
