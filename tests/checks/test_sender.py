"""MAIL FROM checks without a backend: SenderSyntax and SenderDeny."""

from __future__ import annotations

import pytest

from smtpguard.checks import Event, Stage
from smtpguard.checks.sender import SenderDeny, SenderSyntax
from smtpguard.config import ConfigError
from smtpguard.session import Connection
from smtpguard.verdict import Hit
from support.checks import ConfigFactory, ServicesFactory, make_conn


def test_stages_and_replies() -> None:
    assert {c.stage for c in (SenderSyntax, SenderDeny)} == {Stage.MAIL}
    assert SenderSyntax.reply_ids == ("mail_from_invalid",)
    assert SenderDeny.reply_ids == ("host_denies_sender",)


# --- sender_syntax --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("<no-domain>", "missing domain"),
        ("<a..b@example.org>", "consecutive dots in local part"),
        ("<user@example.org", "unbalanced angle brackets"),
        ("<üser@example.org>", "non-ASCII characters without SMTPUTF8"),
    ],
)
def test_invalid_sender(make_services: ServicesFactory, raw: str, reason: str) -> None:
    conn = make_conn(sender=raw)
    assert conn.txn is not None
    assert conn.txn.sender is None
    verdict = SenderSyntax(make_services())(conn, Event())
    assert verdict == Hit("mail_from_invalid", f"{raw!r}: {reason}")


@pytest.mark.parametrize(
    ("raw", "smtputf8"),
    [("<>", False), ("<user@example.org>", False), ("<üser@例子.中国>", True)],
)
def test_valid_sender(make_services: ServicesFactory, raw: str, smtputf8: bool) -> None:
    verdict = SenderSyntax(make_services())(make_conn(sender=raw, smtputf8=smtputf8), Event())
    assert verdict is None


def test_syntax_without_transaction(make_services: ServicesFactory) -> None:
    assert SenderSyntax(make_services())(make_conn(), Event()) is None


# --- sender_deny ----------------------------------------------------------------------

DENY = [
    "Bad@Example.ORG",  # exact address
    "spam.example.",  # domain and its subdomains (trailing dot ignored)
    "@Exact.Example",  # the domain only
    r"/^promo[0-9]+@/",  # pattern, searched in the lower-cased address
    r"/\.invalid$/",
]


@pytest.fixture
def deny(make_services: ServicesFactory) -> SenderDeny:
    return SenderDeny(make_services(policy={"sender_deny": DENY}))


@pytest.mark.parametrize(
    ("sender", "detail"),
    [
        ("<bad%example.org>", "address bad@example.org denied"),
        ("<example.org!bad>", "address bad@example.org denied"),
        ('<"bad@example.org">', "address bad@example.org denied"),
        ("<x%y.spam.example>", "domain spam.example denied"),
        ("<@relay.example:x%exact.example>", "domain @exact.example denied"),
        ("<promo7%shop.example>", "pattern /^promo[0-9]+@/"),
        ("<bad@example.org(x)>", "address bad@example.org denied"),  # review rev67 F1
    ],
)
def test_a_sender_that_does_not_parse_is_judged_as_the_mta_may_make_it(
    deny: SenderDeny, sender: str, detail: str
) -> None:
    """Review rev65 F1: with sender_syntax not enforcing, Postfix delivered such a
    sender as the address the percent hack or bang path makes of it."""
    assert deny(make_conn(sender=sender), Event()) == Hit("host_denies_sender", detail)


def test_entries_are_sorted_by_kind(deny: SenderDeny) -> None:
    assert deny.addresses == {"bad@example.org"}
    assert deny.domains == {"spam.example"}
    assert deny.exact_domains == {"exact.example"}
    assert [p.source for p in deny.patterns] == ["^promo[0-9]+@", r"\.invalid$"]


@pytest.mark.parametrize(
    ("sender", "detail"),
    [
        ("bad@example.org", "address bad@example.org denied"),
        ("BAD@EXAMPLE.org", "address bad@example.org denied"),
        ("x@spam.example", "domain spam.example denied"),
        ("x@SPAM.Example.", "domain spam.example denied"),
        ("x@mail.spam.example", "domain spam.example denied"),
        ("x@a.b.spam.example", "domain spam.example denied"),
        ("x@exact.example", "domain @exact.example denied"),
        ("x@EXACT.EXAMPLE", "domain @exact.example denied"),
        ("promo42@shop.example", "pattern /^promo[0-9]+@/"),
        ("PROMO7@shop.example", "pattern /^promo[0-9]+@/"),
        ("x@host.invalid", r"pattern /\.invalid$/"),
    ],
)
def test_denied(deny: SenderDeny, sender: str, detail: str) -> None:
    assert deny(make_conn(sender=sender), Event()) == Hit("host_denies_sender", detail)


@pytest.mark.parametrize(
    "sender",
    [
        "good@example.org",  # same domain as the denied address
        "bad@example.org.uk",
        "x@notspam.example",  # a label boundary, not a suffix
        "x@spam.example.org",
        "x@sub.exact.example",  # "@domain" does not cover subdomains
        "promo@shop.example",
        "mypromo1@shop.example",
        "x@invalid.example",
    ],
)
def test_not_denied(deny: SenderDeny, sender: str) -> None:
    assert deny(make_conn(sender=sender), Event()) is None


@pytest.mark.parametrize(
    "conn",
    [make_conn(sender="<>"), make_conn(sender="<bad@@example.org>"), make_conn()],
    ids=["null-sender", "invalid-sender", "no-transaction"],
)
def test_deny_skips_sessions_without_a_sender(deny: SenderDeny, conn: Connection) -> None:
    assert deny(conn, Event()) is None


def test_address_entry_wins_over_pattern(make_services: ServicesFactory) -> None:
    check = SenderDeny(make_services(policy={"sender_deny": ["/bad/", "bad@example.org"]}))
    verdict = check(make_conn(sender="bad@example.org"), Event())
    assert verdict == Hit("host_denies_sender", "address bad@example.org denied")


@pytest.mark.parametrize("sender", ["Promo-1@bulk.example", "promo-1@BULK.example"])
def test_a_pattern_written_with_capitals_matches(
    make_services: ServicesFactory, sender: str
) -> None:
    """Review rev156 F8: searched case-sensitively in the lower-cased address, it
    loaded and never matched."""
    check = SenderDeny(make_services(policy={"sender_deny": ["/^Promo-[0-9]+@/"]}))
    assert check(make_conn(sender=sender), Event()) == Hit(
        "host_denies_sender", "pattern /^Promo-[0-9]+@/"
    )
    assert check(make_conn(sender="promotion@bulk.example"), Event()) is None


def test_empty_deny_list_passes_everyone(make_services: ServicesFactory) -> None:
    check = SenderDeny(make_services())
    assert check(make_conn(sender="anyone@anywhere.example"), Event()) is None


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("/[unclosed/", "missing ]"),
        ("/(?<!no)reply@/", "lookbehind"),
        ("/(a)\\1@/", "backreferences"),
    ],
)
def test_bad_pattern_is_refused_at_load_naming_the_entry(
    make_config: ConfigFactory, entry: str, why: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(policy={"sender_deny": ["ok.example", entry]})
    assert info.value.key == "policy.sender_deny[1]"
    assert info.value.file.endswith("smtpguard.toml")
    assert f"not a valid RE2 pattern {entry[1:-1]!r}" in info.value.message
    assert why in info.value.message


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        # Each would load and never match, or (a pattern found in every address)
        # refuse every sender.
        ("//", "not an address, @domain or domain"),
        ("/(spam|junk)?/", "matches the empty string and ordinary names"),
        ("/^[a-z0-9.@_-]*$/", "matches the empty string and ordinary names"),
        (".spam.example", "write 'spam.example' (the domain and its subdomains)"),
        ("*@spam.example", "no wildcards; '@spam.example' is that domain"),
        ("*.spam.example", "no wildcards; '@spam.example' is that domain"),
        ("", "not an address, @domain or domain"),
        ("spammer@", "not an address, @domain or domain"),
        ("bounce-*@spam.example", "'*' is no wildcard here"),
    ],
)
def test_an_entry_that_cannot_work_is_refused_at_load(
    make_config: ConfigFactory, entry: str, why: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(policy={"sender_deny": ["ok.example", entry]})
    assert info.value.key == "policy.sender_deny[1]"
    assert why in info.value.message


def test_entries_are_read_without_surrounding_spaces(make_services: ServicesFactory) -> None:
    check = SenderDeny(make_services(policy={"sender_deny": [" spam.example ", "\tbad@x.example"]}))
    assert check(make_conn(sender="a@spam.example"), Event()) is not None
    assert check(make_conn(sender="bad@x.example"), Event()) is not None


def test_exact_domain_entry_with_trailing_dot(make_services: ServicesFactory) -> None:
    check = SenderDeny(make_services(policy={"sender_deny": ["@exact.example."]}))
    verdict = check(make_conn(sender="x@exact.example"), Event())
    assert verdict == Hit("host_denies_sender", "domain @exact.example denied")


@pytest.mark.parametrize(
    ("sender", "detail"),
    [
        # RFC 5321 4.1.2: the same mailboxes as bad@example.org and promo42@...; the
        # detail shows the address as the client wrote it.
        ('<"bad"@example.org>', 'address "bad"@example.org denied'),
        ('<"BAD"@Example.org>', 'address "bad"@example.org denied'),
        (r'<"b\ad"@example.org>', r'address "b\ad"@example.org denied'),
        ('<"bad"@example.org.>', 'address "bad"@example.org. denied'),
        ('<"promo42"@shop.example>', "pattern /^promo[0-9]+@/"),
        (r'<"pro\mo7"@shop.example>', "pattern /^promo[0-9]+@/"),
    ],
)
def test_quoted_local_part_is_denied_like_the_unquoted(
    deny: SenderDeny, sender: str, detail: str
) -> None:
    assert deny(make_conn(sender=sender), Event()) == Hit("host_denies_sender", detail)


@pytest.mark.parametrize("sender", ['<"bad "@example.org>', '<"bad.."@example.org>'])
def test_quoted_local_part_that_needs_its_quotes_is_another_mailbox(
    deny: SenderDeny, sender: str
) -> None:
    assert deny(make_conn(sender=sender), Event()) is None


def test_quoted_deny_entry_matches_both_spellings(make_services: ServicesFactory) -> None:
    check = SenderDeny(
        make_services(policy={"sender_deny": ['"Spammer"@bad.example', '"a b"@bad.example']})
    )
    assert check.addresses == {"spammer@bad.example", '"a b"@bad.example'}
    for sender in ("spammer@bad.example", '"spammer"@bad.example', r'"a\ b"@bad.example'):
        verdict = check(make_conn(sender=sender), Event())
        assert verdict == Hit("host_denies_sender", f"address {sender.lower()} denied")
    assert check(make_conn(sender="ab@bad.example"), Event()) is None


# --- internationalized domains: U-labels and A-labels are one domain --------------------


@pytest.mark.parametrize(
    "entries",
    [
        ["bücher.example", "@Exakt.Bücher.Example", "/@straße\\.de$/"],
        ["XN--BCHER-KVA.example.", "@exakt.xn--bcher-kva.example", "/@xn--strae-oqa\\.de$/"],
    ],
    ids=["u-label-entries", "a-label-entries"],
)
@pytest.mark.parametrize(
    ("sender", "smtputf8", "detail"),
    [
        ("x@bücher.example", True, "domain xn--bcher-kva.example denied"),
        ("x@mx.Bücher.example.", True, "domain xn--bcher-kva.example denied"),
        ("x@xn--bcher-kva.example", False, "domain xn--bcher-kva.example denied"),
        ("x@MX.XN--BCHER-KVA.EXAMPLE", False, "domain xn--bcher-kva.example denied"),
        # NFD: u + COMBINING DIAERESIS.
        ("x@bu\u0308cher.example", True, "domain xn--bcher-kva.example denied"),
    ],
)
def test_idn_domain_entries_deny_both_spellings(
    make_services: ServicesFactory, entries: list[str], sender: str, smtputf8: bool, detail: str
) -> None:
    check = SenderDeny(make_services(policy={"sender_deny": entries}))
    verdict = check(make_conn(sender=sender, smtputf8=smtputf8), Event())
    assert verdict == Hit("host_denies_sender", detail)


@pytest.mark.parametrize(
    ("entries", "sender", "smtputf8", "detail"),
    [
        # "@domain" entries, either spelling on either side; the detail shows the
        # domain as the client sent it.
        (["@exakt.bücher.example"], "x@exakt.xn--bcher-kva.example", False, None),
        (["@exakt.xn--bcher-kva.example"], "x@Exakt.Bücher.example", True, None),
        # Address entries.
        (["Jürgen@Bücher.example"], "jürgen@xn--bcher-kva.example", True, None),
        (["jürgen@xn--bcher-kva.example"], "Ju\u0308rgen@bücher.example", True, None),
        # Patterns see both spellings of the domain.
        (["/@straße\\.de$/"], "x@xn--strae-oqa.de", False, "pattern /@straße\\.de$/"),
        (["/@xn--strae-oqa\\.de$/"], "x@straße.de", True, "pattern /@xn--strae-oqa\\.de$/"),
    ],
)
def test_idn_entries_of_each_kind(
    make_services: ServicesFactory,
    entries: list[str],
    sender: str,
    smtputf8: bool,
    detail: str | None,
) -> None:
    check = SenderDeny(make_services(policy={"sender_deny": entries}))
    verdict = check(make_conn(sender=sender, smtputf8=smtputf8), Event())
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "host_denies_sender"
    if detail is not None:
        assert verdict.detail == detail


def test_idn_entries_stored_canonical(make_services: ServicesFactory) -> None:
    check = SenderDeny(
        make_services(policy={"sender_deny": ["Bücher.Example.", "@例子.中国", "a@Bücher.example"]})
    )
    assert check.domains == {"xn--bcher-kva.example"}
    assert check.exact_domains == {"xn--fsqu00a.xn--fiqs8s"}
    assert check.addresses == {"a@xn--bcher-kva.example"}


@pytest.mark.parametrize(
    ("sender", "smtputf8"),
    [
        # IDNA2008, not IDNA2003: straße.de is not strasse.de.
        ("x@strasse.de", False),
        ("x@bucher.example", False),
        ("x@notbücher.example", True),
        ("x@exakt.bücher.example.org", True),
    ],
)
def test_idn_entries_deny_no_other_domain(
    make_services: ServicesFactory, sender: str, smtputf8: bool
) -> None:
    check = SenderDeny(make_services(policy={"sender_deny": ["bücher.example", "straße.de"]}))
    assert check(make_conn(sender=sender, smtputf8=smtputf8), Event()) is None
