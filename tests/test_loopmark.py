"""The loop marker's value with sender and recipient hashes (smtpguard.loopmark)."""

from __future__ import annotations

from smtpguard import loopmark
from smtpguard.address import parse_path
from smtpguard.resultheaders import LINE

KEY = loopmark.key_of("a secret of sixteen or more")
OUR = "mx.example.com"


def marked(sender: str, *recipients: str, nonce: str | None = None) -> str:
    return loopmark.render("X-Loop", OUR, KEY, sender, recipients, nonce=nonce)


def read(value: str) -> loopmark.Marker:
    marker = loopmark.parse(value, OUR)
    assert marker is not None, value
    return marker


def test_a_bare_marker_without_a_key() -> None:
    assert loopmark.render("X-Loop", OUR, b"", "a@x.org", ["bob@example.com"]) == OUR
    assert loopmark.parse(" MX.Example.com ", OUR) == loopmark.BARE


def test_it_names_the_sender_with_each_recipient() -> None:
    marker = read(marked("a@x.org", "bob@example.com", "carol@example.com"))
    assert loopmark.named(KEY, marker, "a@x.org", ["bob@example.com"]) == (0,)
    # Which of them: a loop is a return for every recipient (review rev114 F1).
    assert loopmark.named(KEY, marker, "a@x.org", ["dave@example.com", "carol@example.com"]) == (1,)
    assert not loopmark.named(KEY, marker, "a@x.org", ["dave@example.com"])
    # A list host sends on with its own envelope sender (review rev107 F1).
    assert not loopmark.named(KEY, marker, "news-bounces@example.com", ["bob@example.com"])
    other = loopmark.key_of("another secret of sixteen")
    assert not loopmark.named(other, marker, "a@x.org", ["bob@example.com"])


def test_the_hashes_hide_the_recipients_and_their_count() -> None:
    """Review rev107 F2: no address in it, nothing one message shows can be found in
    another, and random hashes round the count up to 4, 8, 16 or 32."""
    one = marked("a@x.org", "bob@example.com", "dave@example.com")
    two = marked("a@x.org", "bob@example.com", "dave@example.com")
    assert "bob" not in one
    assert read(one).nonce != read(two).nonce
    assert not read(one).tags & read(two).tags
    assert len(read(one).tags) == 4
    assert len(read(marked("a@x.org", *(f"u{i}@example.com" for i in range(5)))).tags) == 8
    assert len(read(marked("a@x.org", *(f"u{i}@example.com" for i in range(32)))).tags) == 32


def test_a_given_nonce_gives_the_same_hashes() -> None:
    assert read(marked("a@x.org", "b@example.com", nonce="00aa00aa00aa")).nonce == "00aa00aa00aa"
    assert (
        loopmark.tag(KEY, "00aa00aa00aa", "a@x.org", "b@example.com")
        in read(marked("a@x.org", "b@example.com", nonce="00aa00aa00aa")).tags
    )


def test_many_recipients_fold_and_parse_back_folded_or_unfolded() -> None:
    recipients = [f"user{i}@example.com" for i in range(loopmark.MAX_TAGGED)]
    value = loopmark.render("X-Smtpguard-Loop", OUR, KEY, "a@x.org", recipients)
    lines = value.split("\n")
    assert len(lines) > 1
    assert all(len(line) <= LINE for line in lines[1:])
    assert len("X-Smtpguard-Loop: " + lines[0]) <= LINE
    for form in (value, value.replace("\n", "\r\n"), value.replace("\n\t", " ")):
        assert loopmark.named(KEY, read(form), "a@x.org", ["user31@example.com"])


def test_over_the_cap_the_sender_alone_is_named() -> None:
    recipients = [f"user{i}@example.com" for i in range(loopmark.MAX_TAGGED + 1)]
    marker = read(marked("a@x.org", *recipients))
    assert marker.every
    assert not marker.tags
    assert loopmark.named(KEY, marker, "a@x.org", ["anyone@example.com", "b@example.com"]) == (0, 1)
    assert not loopmark.named(KEY, marker, "list-bounces@example.com", ["user1@example.com"])


def test_parties_are_canonical_and_without_extension() -> None:
    sender = parse_path("<A@X.org>")
    rcpts = [parse_path('<"Bob+lists"@Example.COM>'), parse_path("<carol@example.com>")]
    assert loopmark.parties(sender, rcpts, "+") == (
        "a@x.org",
        ["bob@example.com", "carol@example.com"],
    )
    assert loopmark.parties(None, rcpts, "")[0] == ""


def test_other_values_are_not_ours() -> None:
    for value in (
        "mx.example.com.evil",
        "mx.example.com.evil; n=00; r=0011223344",
        "mx.example.com; r=0011223344",
        "mx.example.com; n=; r=0011223344",
        "mx.example.com; n=00; x=0011223344",
        "mx.example.com; n=00; r=",
        "mx.example.com; n=00; r=00,,11",
        "mx.example.com; n=00; a=",
        "mx.example.com; n=00; r=00; more",
        # Only what render writes (review rev108 F1: a forged "a=é" raised TypeError).
        "mx.example.com; n=00aa00aa00aa; a=\u00e9",
        "mx.example.com; n=00aa00aa00aa; a=00112233445",
        "mx.example.com; n=00aa00aa00aa; r=001122334g",
        "mx.example.com; n=00aa00aa00aa; r=" + ",".join(["0011223344"] * 33),
        "other.example; n=00; r=0011223344",
    ):
        assert loopmark.parse(value, OUR) is None, value
