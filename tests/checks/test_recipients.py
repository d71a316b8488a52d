"""Recipient checks: RcptLimit and Mailbox (the directory's view of local mailboxes)."""

from __future__ import annotations

from typing import Any

import pytest

from smtpguard.checks import Stage, settings_name
from smtpguard.checks.recipients import Mailbox, RcptLimit
from smtpguard.config import DECIDED_PER_RECIPIENT, NEVER_EXEMPT
from smtpguard.directory import Kind, Recipient
from smtpguard.pipeline import CHECK_CLASSES
from smtpguard.verdict import Hit, TempError
from support.checks import ServicesFactory, make_conn, rcpt
from support.fakes import FakeDirectory

SITE = {"local_domains": ["example.com", ".example.net"]}


def test_stages_and_replies() -> None:
    assert RcptLimit.stage is Stage.RCPT
    assert Mailbox.stage is Stage.RCPT
    assert RcptLimit.reply_ids == ("rcpt_limit",)
    assert set(Mailbox.reply_ids) == {
        "mailbox_unavailable",
        "mailbox_unavailable_temp",
        "user_locked",
        "private_list_denied",
        "database_temp_error",
    }


# --- rcpt_limit -----------------------------------------------------------------------


def test_below_limit(make_services: ServicesFactory) -> None:
    check = RcptLimit(make_services(limits={"max_rcpt": 3}))
    for count in range(3):
        recipients = [f"r{i}@example.org" for i in range(count)]
        conn = make_conn(sender="a@example.org", recipients=recipients)
        assert check(conn, rcpt("next@example.org")) is None


def test_at_limit(make_services: ServicesFactory) -> None:
    check = RcptLimit(make_services(limits={"max_rcpt": 3}))
    conn = make_conn(sender="a@example.org", recipients=["a@x.example", "b@x.example", "c@x.ex"])
    assert check(conn, rcpt("d@x.example")) == Hit("rcpt_limit", "already 3 recipients")


def test_limit_of_one(make_services: ServicesFactory) -> None:
    check = RcptLimit(make_services(limits={"max_rcpt": 1}))
    assert check(make_conn(sender="<>"), rcpt("a@example.com")) is None
    full = make_conn(sender="<>", recipients=["a@example.com"])
    assert check(full, rcpt("b@example.com")) == Hit("rcpt_limit", "already 1 recipients")


def test_limit_without_transaction(make_services: ServicesFactory) -> None:
    check = RcptLimit(make_services(limits={"max_rcpt": 1}))
    assert check(make_conn(), rcpt("a@example.com")) is None


@pytest.mark.parametrize(
    ("lax", "split"),
    [
        ({"checks": {"mailbox": {"mode": "report"}}}, False),
        ({"checks": {"mailbox": {"mode": "report"}, "antispam": {"mode": "report"}}}, True),
        ({"max_message_size": 1000}, True),
    ],
    ids=["mailbox-only", "and-antispam", "size"],
)
def test_a_domain_policy_splits_only_what_the_message_depends_on(
    make_services: ServicesFactory, lax: dict[str, Any], split: bool
) -> None:
    """Review rev216 L2: a domain's mailbox check in report mode (decided at RCPT, for
    that recipient alone) split every stranger's message to it and another domain."""
    check = RcptLimit(
        make_services(
            site={"local_domains": ["example.com", "lax.example"]}, domain={"lax.example": lax}
        )
    )
    conn = make_conn(sender="a@example.org", recipients=["alice@example.com"])
    verdict = check(conn, rcpt("bob@lax.example"))
    assert (verdict is not None) is split, verdict


def test_every_check_decided_per_recipient_is_known_as_such() -> None:
    """DomainPolicy.content leaves out the modes of DECIDED_PER_RECIPIENT: a check
    that decides at RCPT alone and may have a per-domain mode belongs there."""
    stages: dict[str, set[Stage]] = {}
    for cls in CHECK_CLASSES:
        stages.setdefault(settings_name(cls.name), set()).add(cls.stage)
    at_rcpt_alone = {
        name
        for name, found in stages.items()
        if found == {Stage.RCPT} and name not in NEVER_EXEMPT and name != "rcpt_limit"
    }
    assert at_rcpt_alone == DECIDED_PER_RECIPIENT


# --- mailbox --------------------------------------------------------------------------


@pytest.fixture
def mailbox(make_services: ServicesFactory, directory: FakeDirectory) -> Mailbox:
    directory.recipients.update(
        {
            "alice@example.com": Recipient(Kind.USER),
            "Bob@example.com": Recipient(Kind.USER),
            "sales@example.com": Recipient(Kind.ALIAS),
            "carol@example.com": Recipient(Kind.USER, state="locked"),
            "dan@example.com": Recipient(Kind.USER, state="suspended"),
            "erin@example.com": Recipient(Kind.USER, state="moving"),
            "fred@example.com": Recipient(Kind.USER, state="overquota"),
            "old@example.com": Recipient(Kind.ALIAS, state="locked"),
            "staff@example.com": Recipient(Kind.LIST, list_policy="members"),
            "Staff@example.com": Recipient(Kind.LIST, list_policy="members"),
            "news@host.example.net": Recipient(Kind.LIST, list_policy="posters"),
        }
    )
    directory.posters.update(
        {("staff@example.com", "alice@example.com"), ("Staff@example.com", "alice@example.com")}
    )
    return Mailbox(make_services(site=SITE))


@pytest.mark.parametrize(
    "recipient", ["alice@example.com", "alice@EXAMPLE.COM", "sales@example.com", "Bob@example.com"]
)
def test_deliverable(mailbox: Mailbox, directory: FakeDirectory, recipient: str) -> None:
    assert mailbox(make_conn(sender="x@example.org"), rcpt(recipient)) is None
    # Looked up as Address.canonical: domain lower-cased, local part as given.
    local, _, domain = recipient.rpartition("@")
    assert directory.calls == [("recipient", f"{local}@{domain.lower()}")]


@pytest.mark.parametrize(
    ("recipient", "key"),
    [
        # RFC 5321 4.1.2: a quoted Dot-string is the unquoted mailbox.
        ('<"alice"@example.com>', "alice@example.com"),
        (r'<"al\ice"@Example.COM>', "alice@example.com"),
        ('<"Bob"@example.com>', "Bob@example.com"),
        ('<"sales"@example.com>', "sales@example.com"),
    ],
)
def test_quoted_recipient_is_looked_up_unquoted(
    mailbox: Mailbox, directory: FakeDirectory, recipient: str, key: str
) -> None:
    assert mailbox(make_conn(sender="x@example.org"), rcpt(recipient)) is None
    assert directory.calls == [("recipient", key)]


def test_quoted_recipient_verdicts_show_it_as_sent(mailbox: Mailbox) -> None:
    conn = make_conn(sender="x@example.org")
    assert mailbox(conn, rcpt('<"carol"@example.com>')) == Hit(
        "user_locked", '"carol"@example.com is locked'
    )
    assert mailbox(conn, rcpt('<"nobody"@example.com>')) == Hit(
        "mailbox_unavailable", '"nobody"@example.com unknown'
    )
    # Quotes that are needed make another mailbox.
    assert mailbox(conn, rcpt('<"alice "@example.com>')) == Hit(
        "mailbox_unavailable", '"alice "@example.com unknown'
    )


def test_quoted_list_and_poster(mailbox: Mailbox, directory: FakeDirectory) -> None:
    assert mailbox(make_conn(sender='"alice"@example.com'), rcpt('"staff"@example.com')) is None
    assert directory.calls == [
        ("recipient", "staff@example.com"),
        ("may_post", "staff@example.com", "alice@example.com"),
    ]
    verdict = mailbox(make_conn(sender='"bob"@example.org'), rcpt('"staff"@example.com'))
    assert verdict == Hit(
        "private_list_denied", '"bob"@example.org may not post to "staff"@example.com (members)'
    )


@pytest.mark.parametrize("recipient", ["nobody@example.com", "bob@example.com", "x@a.example.net"])
def test_unknown_local_recipient(mailbox: Mailbox, recipient: str) -> None:
    verdict = mailbox(make_conn(sender="x@example.org"), rcpt(recipient))
    assert verdict == Hit("mailbox_unavailable", f"{recipient} unknown")


def test_the_hosts_own_name_under_a_dot_entry_is_the_mtas(
    make_services: ServicesFactory, directory: FakeDirectory
) -> None:
    """mx.example.net is one of our host names and ".example.net" covers it: root@ it is
    the MTA's local delivery, which no directory lists (third review: a trusted
    client's mail to root@ the host got 550)."""
    check = Mailbox(make_services(site={**SITE, "our_hostnames": ["mx.example.net"]}))
    assert check(make_conn(sender="x@example.org"), rcpt("root@mx.example.net")) is None
    verdict = check(make_conn(sender="x@example.org"), rcpt("x@a.example.net"))
    assert verdict == Hit("mailbox_unavailable", "x@a.example.net unknown")
    # Named exactly in local_domains, it is a directory domain like any other.
    exact = Mailbox(
        make_services(
            site={"local_domains": ["mx.example.net"], "our_hostnames": ["mx.example.net"]}
        )
    )
    verdict = exact(make_conn(sender="x@example.org"), rcpt("root@mx.example.net"))
    assert verdict == Hit("mailbox_unavailable", "root@mx.example.net unknown")


def test_a_utf8_local_part_without_smtputf8_is_the_mailbox_it_names(
    mailbox: Mailbox, directory: FakeDirectory
) -> None:
    """Review rev181 F3: the MTA let it through, and an existing user's mail got
    "550 5.1.1 mailbox unavailable" (there is no such mailbox)."""
    directory.recipients["用户@example.com"] = Recipient(Kind.USER)
    stranger = make_conn(sender="x@example.org")
    assert mailbox(stranger, rcpt("<用户@example.com>", smtputf8=False)) is None
    verdict = mailbox(stranger, rcpt("<别人@example.com>", smtputf8=False))
    assert verdict == Hit("mailbox_unavailable", "别人@example.com unknown")


def test_invalid_recipient(mailbox: Mailbox, directory: FakeDirectory) -> None:
    verdict = mailbox(make_conn(sender="x@example.org"), rcpt("<alice@@example.com>"))
    assert verdict == Hit("mailbox_unavailable", "invalid recipient '<alice@@example.com>'")
    assert directory.calls == []


@pytest.mark.parametrize("recipient", ["<taro.@docomo.ne.jp>", "<a..b@example.org>"])
def test_invalid_recipient_elsewhere_is_not_ours_to_judge(
    mailbox: Mailbox, directory: FakeDirectory, recipient: str
) -> None:
    """Postfix delivers such addresses; relaying to them is the relay check's call."""
    assert mailbox(make_conn(sender="x@example.org"), rcpt(recipient)) is None
    assert directory.calls == []


@pytest.mark.parametrize(
    "recipient",
    [
        "someone@example.org",
        "someone@example.net",  # ".example.net" is subdomains only
        "<Postmaster>",  # no domain: the MTA's own postmaster
    ],
)
def test_not_our_business(mailbox: Mailbox, directory: FakeDirectory, recipient: str) -> None:
    directory.failing.add("recipient")
    assert mailbox(make_conn(sender="x@example.org"), rcpt(recipient)) is None
    assert directory.calls == []


@pytest.mark.parametrize("recipient", ["postmaster@example.com", "PostMaster@example.com"])
def test_postmaster_of_a_local_domain_exists(
    mailbox: Mailbox, directory: FakeDirectory, recipient: str
) -> None:
    """RFC 5321 §4.5.1: not in the directory, still a mailbox (the MTA's aliases)."""
    assert mailbox(make_conn(sender="x@example.org"), rcpt(recipient)) is None
    assert directory.calls == []


def test_a_fan_out_alias_checks_every_list_it_reaches(
    mailbox: Mailbox, directory: FakeDirectory
) -> None:
    directory.recipients["all@example.com"] = Recipient(
        Kind.ALIAS, lists_reached=(("staff@example.com", "members"),)
    )
    verdict = mailbox(make_conn(sender="x@example.org"), rcpt("all@example.com"))
    assert verdict == Hit(
        "private_list_denied",
        "x@example.org may not post to all@example.com, which reaches staff@example.com (members)",
    )
    assert mailbox(make_conn(sender="alice@example.com"), rcpt("all@example.com")) is None


def test_postmaster_extension_is_only_postmaster_when_nothing_else(
    make_services: ServicesFactory, directory: FakeDirectory
) -> None:
    """postmaster-team@ may be a list or a user of its own: looked up whole first
    (found by the second review: the shortcut skipped the directory)."""
    directory.recipients.update(
        {
            "postmaster-team@example.com": Recipient(
                Kind.LIST, list_policy="members", list_address="postmaster-team@example.com"
            ),
            "postmaster-old@example.com": Recipient(Kind.USER, state="locked"),
        }
    )
    check = Mailbox(make_services(site={**SITE, "recipient_delimiter": "+-"}))
    conn = make_conn(sender="mallory@evil.example")
    team = check(conn, rcpt("postmaster-team@example.com"))
    assert isinstance(team, Hit)
    assert team.reply_id == "private_list_denied"
    old = check(conn, rcpt("postmaster-old@example.com"))
    assert isinstance(old, Hit)
    assert old.reply_id == "user_locked"
    assert check(conn, rcpt("postmaster-x@example.com")) is None
    assert check(conn, rcpt("postmaster+bounces@example.com")) is None


def test_a_list_reached_through_an_alias_keeps_its_policy(
    mailbox: Mailbox, directory: FakeDirectory
) -> None:
    """The directory names the list an alias leads to; may_post is asked about it (it
    was asked about the alias, which has no list policy of its own: open)."""
    directory.recipients["all@example.com"] = Recipient(
        Kind.LIST, list_policy="members", list_address="staff@example.com"
    )
    verdict = mailbox(make_conn(sender="x@example.org"), rcpt("all@example.com"))
    assert verdict == Hit(
        "private_list_denied", "x@example.org may not post to all@example.com (members)"
    )
    assert ("may_post", "staff@example.com", "x@example.org") in directory.calls
    assert mailbox(make_conn(sender="alice@example.com"), rcpt("all@example.com")) is None


def test_locked_user(mailbox: Mailbox) -> None:
    verdict = mailbox(make_conn(sender="x@example.org"), rcpt("carol@example.com"))
    assert verdict == Hit("user_locked", "carol@example.com is locked")


def test_alias_to_locked_user(mailbox: Mailbox) -> None:
    verdict = mailbox(make_conn(sender="x@example.org"), rcpt("old@example.com"))
    assert verdict == Hit("user_locked", "old@example.com is locked")


@pytest.mark.parametrize(
    ("recipient", "state"),
    [
        ("dan@example.com", "suspended"),
        ("erin@example.com", "moving"),
        ("fred@example.com", "overquota"),
    ],
)
def test_temporarily_unavailable(mailbox: Mailbox, recipient: str, state: str) -> None:
    verdict = mailbox(make_conn(sender="x@example.org"), rcpt(recipient))
    assert verdict == Hit("mailbox_unavailable_temp", f"{recipient} is {state}")


def test_list_poster_allowed(mailbox: Mailbox, directory: FakeDirectory) -> None:
    assert mailbox(make_conn(sender="alice@Example.COM"), rcpt("Staff@example.com")) is None
    # Both addresses as Address.canonical: local part as given, domain lower-cased.
    assert directory.calls == [
        ("recipient", "Staff@example.com"),
        ("may_post", "Staff@example.com", "alice@example.com"),
    ]


def test_list_poster_denied(mailbox: Mailbox, directory: FakeDirectory) -> None:
    verdict = mailbox(make_conn(sender="stranger@example.org"), rcpt("staff@example.com"))
    assert verdict == Hit(
        "private_list_denied", "stranger@example.org may not post to staff@example.com (members)"
    )
    assert directory.calls == [
        ("recipient", "staff@example.com"),
        ("may_post", "staff@example.com", "stranger@example.org"),
    ]


def test_list_null_sender(mailbox: Mailbox, directory: FakeDirectory) -> None:
    verdict = mailbox(make_conn(sender="<>"), rcpt("news@host.example.net"))
    assert verdict == Hit(
        "private_list_denied", "<> may not post to news@host.example.net (posters)"
    )
    assert directory.calls[-1] == ("may_post", "news@host.example.net", "")


def test_list_without_transaction(mailbox: Mailbox, directory: FakeDirectory) -> None:
    verdict = mailbox(make_conn(), rcpt("staff@example.com"))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "private_list_denied"
    assert directory.calls[-1] == ("may_post", "staff@example.com", "")


@pytest.mark.parametrize(
    ("method", "recipient"),
    [("recipient", "alice@example.com"), ("may_post", "staff@example.com")],
)
def test_directory_failure_is_temporary(
    mailbox: Mailbox, directory: FakeDirectory, method: str, recipient: str
) -> None:
    directory.failing.add(method)
    verdict = mailbox(make_conn(sender="x@example.org"), rcpt(recipient))
    assert verdict == TempError("database_temp_error", f"{method}: database is locked")


def test_backend_none_checks_nobody(
    make_services: ServicesFactory, directory: FakeDirectory
) -> None:
    directory.failing.add("recipient")
    check = Mailbox(make_services(site=SITE, directory={"backend": "none"}))
    assert check(make_conn(sender="x@example.org"), rcpt("nobody@example.com")) is None
    assert directory.calls == []
    # A syntactically invalid recipient is refused regardless of the backend.
    verdict = check(make_conn(sender="x@example.org"), rcpt("<@>"))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "mailbox_unavailable"


# --- rcpt_limit with [domain."X"] tables ------------------------------------------------------

DOMAINS: dict[str, dict[str, Any]] = {
    "site": {
        "local_domains": [
            "example.com",
            "big.example",
            "twin.example",
            "plain.example",
            "one.example",
        ]
    },
    "limits": {"max_rcpt": 5},
    "domain": {
        "big.example": {"max_message_size": 9_000_000, "max_rcpt": 2},
        # Says the same as big.example: the two may share a transaction.
        "twin.example": {"max_message_size": 9_000_000},
        # Only its max_rcpt differs from the global policy.
        "one.example": {"max_rcpt": 1},
    },
}


@pytest.mark.parametrize(
    ("accepted", "next_rcpt", "refused"),
    [
        ([], "a@big.example", False),
        (["a@big.example"], "b@twin.example", False),
        (["a@big.example"], "b@plain.example", True),
        (["a@plain.example"], "b@big.example", True),
        (["a@plain.example"], "b@example.com", False),  # both under the global policy
        (["a@big.example", "b@twin.example"], "c@big.example", True),  # big.example's max_rcpt
        # Every recipient's table holds, not the first one's (review rev69 F1).
        (["a@twin.example", "b@big.example"], "c@big.example", True),
        (["a@twin.example", "b@twin.example"], "c@twin.example", False),  # twin's is 5
        (["a@example.com"], "b@one.example", True),
        (["a@one.example"], "b@example.com", True),
        ([], "a@one.example", False),
        # An invalid address falls under the domain it names: the mailbox check's to judge.
        (["a@big.example"], "<b..c@big.example>", False),
        (["a@big.example"], "<b..c@plain.example>", True),
    ],
)
def test_one_domain_policy_per_transaction(
    make_services: ServicesFactory, accepted: list[str], next_rcpt: str, refused: bool
) -> None:
    check = RcptLimit(make_services(**DOMAINS))
    verdict = check(make_conn(sender="x@sender.example", recipients=accepted), rcpt(next_rcpt))
    assert isinstance(verdict, Hit) is refused
    if isinstance(verdict, Hit):
        assert verdict.reply_id == "rcpt_limit"


@pytest.mark.parametrize(
    "client", [{"trusted_network": True}, {"auth_login": "alice@example.com"}], ids=str
)
def test_the_sites_own_submission_is_not_split_by_domain_policy(
    make_services: ServicesFactory, client: dict[str, Any]
) -> None:
    """Review rev153 F5: a user writing to colleagues of two domains with different
    tables (or to one and an outside address) got 451 for the second, every time,
    which mail programs take for a failed send. The site's own submission is judged
    under the tables combined instead (Config.combined_policy); the count limits of
    every table still hold."""
    check = RcptLimit(make_services(**DOMAINS))
    sent = make_conn(sender="x@example.com", recipients=["a@plain.example"], **client)
    assert check(sent, rcpt("b@big.example")) is None
    # big.example's max_rcpt (2) holds for the transaction it joined.
    joined = make_conn(
        sender="x@example.com", recipients=["a@plain.example", "b@big.example"], **client
    )
    assert check(joined, rcpt("c@elsewhere.example")) == Hit("rcpt_limit", "already 2 recipients")
    full = make_conn(sender="x@example.com", recipients=["a@one.example"], **client)
    assert check(full, rcpt("b@example.com")) == Hit("rcpt_limit", "already 1 recipients")
    # A stranger's transaction is split as before.
    stranger = make_conn(sender="x@sender.example", recipients=["a@plain.example"])
    assert isinstance(check(stranger, rcpt("b@big.example")), Hit)


# --- internationalized domains: U-labels and A-labels are one domain --------------------


@pytest.mark.parametrize("local_domain", ["bücher.example", "XN--BCHER-KVA.example"])
@pytest.mark.parametrize(
    ("recipient", "smtputf8"),
    [
        ("jürgen@Bücher.example", True),
        ("ju\u0308rgen@bu\u0308cher.example", True),  # NFD
        ("jürgen@xn--bcher-kva.example.", True),
    ],
)
def test_idn_recipient_looked_up_canonical(
    make_services: ServicesFactory,
    directory: FakeDirectory,
    local_domain: str,
    recipient: str,
    smtputf8: bool,
) -> None:
    """Local in either spelling of the local domain, and looked up in the directory's
    form (A-labels, NFC)."""
    directory.recipients["jürgen@xn--bcher-kva.example"] = Recipient(Kind.USER)
    check = Mailbox(make_services(site={"local_domains": [local_domain]}))
    assert check(make_conn(sender="x@example.org"), rcpt(recipient, smtputf8=smtputf8)) is None
    assert directory.calls == [("recipient", "jürgen@xn--bcher-kva.example")]
    assert check(make_conn(sender="x@example.org"), rcpt("x@bucher.example")) is None
    assert len(directory.calls) == 1  # not ours: no lookup


def test_idn_unknown_recipient_shown_as_sent(
    make_services: ServicesFactory, directory: FakeDirectory
) -> None:
    check = Mailbox(make_services(site={"local_domains": ["xn--bcher-kva.example"]}))
    verdict = check(make_conn(sender="x@example.org"), rcpt("nobody@Bücher.example", smtputf8=True))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "mailbox_unavailable"
    assert "xn--" not in verdict.detail


IDN_DOMAINS: dict[str, Any] = {
    "site": {"local_domains": ["example.com", "xn--bcher-kva.example"]},
    "domain": {"bücher.example": {"max_rcpt": 2, "max_message_size": 9_000_000}},
}


def test_idn_spellings_share_one_domain_policy(make_services: ServicesFactory) -> None:
    """Both spellings of one domain are one table: no rcpt_limit between them, but its
    max_rcpt counts both."""
    check = RcptLimit(make_services(**IDN_DOMAINS))
    conn = make_conn(sender="x@sender.example", recipients=["a@xn--bcher-kva.example"])
    assert check(conn, rcpt("b@Bücher.example", smtputf8=True)) is None
    assert conn.txn is not None
    second = rcpt("b@bücher.example", smtputf8=True)
    conn.txn.accept(second.rcpt, second.rcpt_raw)
    verdict = check(conn, rcpt("c@xn--bcher-kva.example"))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "rcpt_limit"
    # Another domain policy: the message names the table as it is written.
    other = make_conn(sender="x@sender.example", recipients=["a@xn--bcher-kva.example"])
    assert check(other, rcpt("b@example.com")) == Hit(
        "rcpt_limit",
        "example.com falls under the global policy, this transaction under"
        ' [domain."bücher.example"]: send it in another transaction',
    )
