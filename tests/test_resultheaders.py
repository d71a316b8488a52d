"""Authentication-Results (RFC 8601) and X-Spam-* values: their grammar, the authserv-id
of incoming fields, and folding within RFC 5322's line lengths."""

from __future__ import annotations

import ipaddress
import re
from email import message_from_string, policy

import authres  # type: ignore[import-untyped]  # no type information
import pytest

from smtpguard.address import Address
from smtpguard.checks.client_host import ReverseDns
from smtpguard.dns import Answer, Status
from smtpguard.resultheaders import (
    LINE,
    authentication_results,
    authserv_id_of,
    fold,
    names_us,
    record_iprev,
    record_spf,
    spam_headers,
)
from smtpguard.session import Connection, Transaction

IP = ipaddress.ip_address("198.51.100.10")


def session(domain: str = "good.test") -> tuple[Connection, Transaction]:
    conn = Connection("1.1", IP, 40000, "mx.good.test")
    txn = Transaction(sender=Address("someone", domain), sender_raw=f"<someone@{domain}>", esmtp={})
    conn.txn = txn
    return conn, txn


def lines(name: str, value: str) -> list[str]:
    """The physical lines of ``name: value`` as written (libmilter's LF TAB is CRLF TAB)."""
    return f"{name}: {value}".split("\n")


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("mx.example.com; spf=pass smtp.mailfrom=a.example", "mx.example.com"),
        ("mx.example.com 1; none", "mx.example.com"),
        ("  (a comment (nested)) MX.Example.COM; none", "MX.Example.COM"),
        ('"mx.example.com"; none', "mx.example.com"),
        ("mx.example.com;spf=pass", "mx.example.com"),
        ("", None),
        ("(only a comment)", None),
        (r"(a \) quoted pair) mx.example.com; none", "mx.example.com"),
    ],
)
def test_authserv_id_of_an_incoming_field(value: str, found: str | None) -> None:
    assert authserv_id_of(value) == found


def test_only_our_authserv_id_names_us() -> None:
    assert names_us("(x) MX.EXAMPLE.COM; none", "mx.example.com")
    assert names_us("mx.example.com.; spf=pass", "mx.example.com")  # review rev69 F2
    assert names_us("xn--bcher-kva.example; none", "bücher.example")
    assert not names_us("mx.example.com.evil; none", "mx.example.com")
    assert not names_us("other.example; spf=pass smtp.mailfrom=mx.example.com", "mx.example.com")


def test_spf_and_iprev_results() -> None:
    conn, txn = session()
    assert authentication_results("mx.example.com", conn, txn) is None
    record_spf(txn, "softfail", helo=False, value="good.test")
    record_iprev(conn, ReverseDns(Answer.of("10.100.51.198.in-addr.arpa", "PTR", "mx.good.test")))
    name, value = authentication_results("mx.example.com", conn, txn) or ("", "")
    assert name == "Authentication-Results"
    assert value == (
        "mx.example.com;\n\tspf=softfail smtp.mailfrom=good.test;\n"
        "\tiprev=fail policy.iprev=198.51.100.10"
    )


@pytest.mark.parametrize(
    ("rdns", "result"),
    [
        # No PTR data published: RFC 8601 §2.7.3's permerror, not fail.
        (ReverseDns(Answer("n", "PTR", Status.NXDOMAIN)), "permerror"),
        (ReverseDns(Answer("n", "PTR", Status.NODATA)), "permerror"),
        (ReverseDns(Answer("n", "PTR", Status.SERVFAIL)), "temperror"),
        (ReverseDns(Answer.of("n", "PTR", "a.test"), ("a.test",), ("a.test",)), "pass"),
        (ReverseDns(Answer.of("n", "PTR", "a.test"), ("a.test",), (), ("a.test",)), "temperror"),
        (ReverseDns(Answer.of("n", "PTR", "a.test"), ("a.test",)), "fail"),
    ],
)
def test_iprev_is_forward_confirmed_reverse_dns(rdns: ReverseDns, result: str) -> None:
    conn, txn = session()
    record_iprev(conn, rdns)
    _name, value = authentication_results("mx.example.com", conn, txn) or ("", "")
    assert f"iprev={result} policy.iprev=198.51.100.10" in value


def test_the_null_sender_is_reported_as_the_helo_identity() -> None:
    conn, txn = session()
    record_spf(txn, "pass", helo=True, value="mx.good.test")
    _name, value = authentication_results("mx.example.com", conn, txn) or ("", "")
    assert value == "mx.example.com;\n\tspf=pass smtp.helo=mx.good.test"


def test_long_values_are_folded_and_parse_back() -> None:
    conn, txn = session("a-very-long-subdomain-name-for-folding." * 2 + "example")
    record_spf(txn, "pass", helo=False, value=txn.sender.domain if txn.sender else "")
    long_id = "mx-with-a-long-name." * 3 + "example.com"
    name, value = authentication_results(long_id, conn, txn) or ("", "")
    written = lines(name, value)
    # An unbreakable word may exceed 78 (never 998); every other line stays within.
    words = [line.removeprefix(f"{name}: ").strip() for line in written]
    assert all(
        len(line) <= LINE or " " not in word for line, word in zip(written, words, strict=True)
    )
    assert all(len(line) < 998 for line in written)
    parsed = message_from_string("\r\n".join(written) + "\r\n\r\n", policy=policy.default)
    assert " ".join(str(parsed[name]).split()) == " ".join(value.split())


def test_domains_that_are_no_token_are_quoted() -> None:
    conn, txn = session()
    record_spf(txn, "pass", helo=True, value="odd name;x")
    _name, value = authentication_results("mx.example.com", conn, txn) or ("", "")
    assert 'smtp.helo="odd name;x"' in value


def test_an_ipv6_client_is_quoted_and_parses_back() -> None:
    conn, txn = session()
    conn.client_ip = ipaddress.ip_address("2001:db8::25")
    record_iprev(conn, RDNS["pass"])
    name, value = authentication_results("mx.example.com", conn, txn) or ("", "")
    assert 'iprev=pass policy.iprev="2001:db8::25"' in value
    parsed = authres.AuthenticationResultsHeader.parse(f"{name}: {value.replace(chr(10), ' ')}")
    assert [(p.name, p.value) for p in parsed.results[0].properties] == [("iprev", "2001:db8::25")]


def test_spam_headers() -> None:
    (status_name, status), (report_name, report) = spam_headers(
        spam=True, score=7.5, required=6.0, rules=["SUBJ_YOU_WON", "dnsbl:zen.test=2.0"]
    )
    assert (status_name, report_name) == ("X-Spam-Status", "X-Spam-Report")
    # "X-Spam-Status: " and this would be 83 characters: folded after a comma.
    assert status == "Yes, score=7.5 required=6.0 tests=SUBJ_YOU_WON,\n\tdnsbl:zen.test=2.0"
    assert report == "score=7.5 required=6.0\n\t* SUBJ_YOU_WON\n\t* dnsbl:zen.test=2.0"
    assert spam_headers(spam=False, score=0.0, required=6.0, rules=[]) == (
        ("X-Spam-Status", "No, score=0.0 required=6.0 tests=none"),
    )


def test_a_long_rule_list_is_folded_after_its_commas() -> None:
    rules = [f"RULE_NUMBER_{i}" for i in range(12)]
    ((name, status), _report) = spam_headers(spam=True, score=20.0, required=6.0, rules=rules)
    written = lines(name, status)
    assert len(written) > 1
    assert all(len(line) <= LINE for line in written)
    assert all(rule in status for rule in rules)


def test_fold_keeps_short_values_on_one_line() -> None:
    assert fold("X-Test", ["a", "b", "c"]) == "a b c"
    assert fold("X", ["w" * 70, "x" * 10]) == "w" * 70 + "\n\t" + "x" * 10


#: Reverse DNS outcomes by the iprev result they stand for.
RDNS = {
    "pass": ReverseDns(Answer.of("n", "PTR", "a.test"), ("a.test",), ("a.test",)),
    "fail": ReverseDns(Answer.of("n", "PTR", "a.test"), ("a.test",)),
    "permerror": ReverseDns(Answer("n", "PTR", Status.NXDOMAIN)),
    "temperror": ReverseDns(Answer("n", "PTR", Status.SERVFAIL)),
}


@pytest.mark.parametrize(
    ("spf", "helo", "iprev"),
    [
        ("pass", False, "pass"),
        ("softfail", False, "fail"),
        ("none", True, "temperror"),
        ("fail", False, "permerror"),
        ("temperror", False, None),
        (None, False, "pass"),
    ],
)
def test_the_reference_parser_reads_what_we_write(
    spf: str | None, helo: bool, iprev: str | None
) -> None:
    """authres (the RFC 8601 module spf-engine and dkimpy-milter use) parses our field
    to the same authserv-id, methods, results and properties."""
    conn, txn = session()
    expected = []
    if spf is not None:
        identity = "mx.good.test" if helo else "good.test"
        record_spf(txn, spf, helo=helo, value=identity)
        expected.append(("spf", spf, [("smtp", "helo" if helo else "mailfrom", identity)]))
    if iprev is not None:
        record_iprev(conn, RDNS[iprev])
        expected.append(("iprev", iprev, [("policy", "iprev", "198.51.100.10")]))
    name, value = authentication_results("mx.example.com", conn, txn) or ("", "")
    parsed = authres.AuthenticationResultsHeader.parse(
        f"{name}: {value.replace(chr(10), chr(13) + chr(10))}"
    )
    assert parsed.authserv_id == "mx.example.com"
    found = [
        (r.method, r.result, [(p.type, p.name, p.value) for p in r.properties])
        for r in parsed.results
    ]
    assert found == expected


@pytest.mark.parametrize(
    "value",
    [
        "mx.example.com; spf=pass smtp.mailfrom=a.example",
        "mx.example.com 1; none",
        "(comment) mx.example.com; none",
        "mx.example.com;spf=pass smtp.mailfrom=a.example",
        "other.example; iprev=pass policy.iprev=192.0.2.1",
    ],
)
def test_authserv_id_as_the_reference_parser_reads_it(value: str) -> None:
    assert (
        authserv_id_of(value) == authres.AuthenticationResultsHeader.parse_value(value).authserv_id
    )


def test_a_long_tests_list_has_no_space_but_its_folds() -> None:
    """Review rev175 F3: past 68 characters a space followed every comma, and a reader
    of ``tests=(\\S+)`` in the unfolded field got the first two rules."""
    rules = [f"RULE_NUMBER_{n}" for n in range(12)]
    ((_, status), _report) = spam_headers(spam=False, score=1.0, required=6.0, rules=rules)
    lines = status.split("\n\t")
    assert len(lines) > 2
    assert all(len(line) <= 78 for line in [f"X-Spam-Status: {lines[0]}", *lines[1:]])
    unfolded = status.replace("\n\t", "")
    assert re.search(r"tests=(\S+)", unfolded)[1].split(",") == rules  # type: ignore[index]


@pytest.mark.parametrize(
    ("score", "spam", "shown"),
    [
        (5.96, False, "5.9"),  # "score=6.0 required=6.0" would read as spam
        (5.94, False, "5.9"),
        (6.04, True, "6.0"),
        (-0.04, False, "0.0"),  # not "-0.0"
        (-1.25, False, "-1.2"),
        (2.0, True, "2.0"),  # refused by the engine's own action below required
    ],
)
def test_the_score_shown_is_on_the_verdicts_side_of_required(
    score: float, spam: bool, shown: str
) -> None:
    """Review rev175 F2."""
    ((_, status),) = spam_headers(spam=spam, score=score, required=6.0, rules=[])
    assert status == f"{'Yes' if spam else 'No'}, score={shown} required=6.0 tests=none"
