"""The loop marker's value with recipient hashes (smtpguard.loopmark)."""

from __future__ import annotations

from smtpguard import loopmark
from smtpguard.resultheaders import LINE

KEY = loopmark.key_of("a secret of sixteen or more")


def test_a_bare_marker_without_a_key_or_recipients() -> None:
    assert loopmark.render("X-Loop", "mx.example.com", b"", ["bob@example.com"]) == (
        "mx.example.com"
    )
    assert loopmark.render("X-Loop", "mx.example.com", KEY, []) == "mx.example.com"
    assert loopmark.parse(" MX.Example.com ", "mx.example.com") == frozenset()


def test_recipients_round_trip_and_are_keyed() -> None:
    value = loopmark.render("X-Loop", "mx.example.com", KEY, ["bob@example.com", "carol@x.org"])
    tags = loopmark.parse(value, "mx.example.com")
    assert tags == frozenset(
        {loopmark.tag(KEY, "bob@example.com"), loopmark.tag(KEY, "carol@x.org")}
    )
    assert value.startswith("mx.example.com; r=")
    # Who got the message cannot be read or tested without the key.
    assert "bob" not in value
    other = loopmark.key_of("another secret of sixteen")
    assert loopmark.tag(other, "bob@example.com") not in tags
    assert len(loopmark.tag(KEY, "bob@example.com")) == 10


def test_many_recipients_fold_and_parse_back_folded_or_unfolded() -> None:
    recipients = [f"user{i}@example.com" for i in range(loopmark.MAX_TAGGED)]
    value = loopmark.render("X-Smtpguard-Loop", "mx.example.com", KEY, recipients)
    lines = value.split("\n")
    assert len(lines) > 1
    assert all(len(line) <= LINE for line in lines[1:])
    assert len("X-Smtpguard-Loop: " + lines[0]) <= LINE
    want = frozenset(loopmark.tag(KEY, r) for r in recipients)
    assert loopmark.parse(value, "mx.example.com") == want
    assert loopmark.parse(value.replace("\n", "\r\n"), "mx.example.com") == want
    assert loopmark.parse(value.replace("\n\t", " "), "mx.example.com") == want


def test_over_the_cap_the_marker_is_bare() -> None:
    recipients = [f"user{i}@example.com" for i in range(loopmark.MAX_TAGGED + 1)]
    assert loopmark.render("X-Loop", "mx", KEY, recipients) == "mx"


def test_other_values_are_not_ours() -> None:
    for value in (
        "mx.example.com.evil",
        "mx.example.com.evil; r=0011223344",
        "mx.example.com; x=0011223344",
        "mx.example.com; r=",
        "mx.example.com; r=00,,11",
        "other.example; r=0011223344",
    ):
        assert loopmark.parse(value, "mx.example.com") is None, value
