"""smtpguard.content.encoded_words: RFC 2047 decoding for the content rules."""

from __future__ import annotations

import encodings
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.content.encoded_words import decode, readings


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        ("plain text", "plain text"),
        ("=?utf-8?q?caf=C3=A9?=", "café"),
        ("=?UTF-8?B?Y2Fmw6k=?= world", "café world"),
        ("=?utf-8?b?w6k?=", "é"),  # padding left out
        ("=?utf-8?q?a_b?=", "a b"),
        ("=?iso-8859-1*en?q?caf=E9?=", "café"),  # RFC 2231 §5 language
        # White space between encoded words goes (§6.2), the text around them stays.
        ("a =?utf-8?q?x?= =?utf-8?q?y?= b", "a xy b"),
        ("=?utf-8?q?a?=\r\n =?utf-8?q?b?=", "ab"),
        ("=?utf-8?q?x?= =?iso-8859-1?q?=E9?=", "xé"),
        # A character split between two words of one charset.
        ("=?utf-8?q?=E4=B8?= =?utf-8?q?=AD?=", "中"),
        # White space in the text, as mail readers take it (review rev67 F2).
        ("=?utf-8?q?You have w=6Fn a prize?=", "You have won a prize"),
        # A "?" in the text, as mutt and Python's reader take it (review rev70 N6).
        ("=?utf-8?q?You_have_won?_a_prize?=", "You have won? a prize"),
        ("=?utf-8?b?WW91IGhhdmUgd29u?IGEgcHJpemU=?=", "You have won a prize"),
        # Not past another opening: the word after an unclosed one is decoded, as
        # Thunderbird and Python's newer reader decode it (review rev71 R2).
        (
            "=?utf-8?q?x =?utf-8?b?WW91IGhhdmUgd29uIGEgcHJpemU=?=",
            "=?utf-8?q?x You have won a prize",
        ),
        (
            "=?utf-8?b?SGk= =?utf-8?b?WW91IGhhdmUgd29uIGEgcHJpemU=?=",
            "=?utf-8?b?SGk= You have won a prize",
        ),
        # Not past a line end.
        ("=?utf-8?q?a\r\n b?=", "=?utf-8?q?a\r\n b?="),
        # An unknown charset is read as UTF-8 (rev67 F2; rev66 F1: email.header raised
        # CharsetError for the first two).
        ("=?é?q?x?=", "x"),
        ("=?中?b?eA==?= hello", "x hello"),
        ("=?x-no-such-charset?q?win_money?=", "win money"),
        ("=?x-gbk?b?1tDOxA==?=", "中文"),
        ("=?utf-8?q?caf=C3=A9?= =?bogus?q?x?= =?utf-8?q?y?=", "caféxy"),
        # Codecs without an alias, and mail clients' labels (rev70 N3).
        ("=?koi8-u?b?4sXay8/b1M/Xzs8=?=", "Безкоштовно"),
        ("=?windows-874?q?=BF=C3=D5?=", "ฟรี"),
        ("=?koi8-ru?q?=E6=D7?=", "Фв"),
        ("=?windows-31j?b?g2WDWINn?=", "テスト"),
        # Codecs that are no text encodings, or no charsets, are not applied (rev67
        # F3: they raised).
        ("=?undefined?q?abc?=", "abc"),
        ("=?idna?q?abc=FF?=", "abc\ufffd"),
        ("=?rot13?q?uryyb?=", "uryyb"),
        ("=?base64?q?aGk=?=", "aGk="),
        # Not encoded words: stay as written.
        ("=?utf-8?q?never closed", "=?utf-8?q?never closed"),
        ("=?utf-8?q?=FF?=", "\ufffd"),
    ],
)
def test_decode(value: str, decoded: str) -> None:
    assert decode(value) == decoded


@pytest.mark.parametrize(
    "unit",
    [
        "=?a?b?c ",
        "=?",
        "=?a",
        "=?utf-8?q?" + "y" * 50,
        "=?u?b?" + "x" * 70 + "?",
        "=?a?b?",
        "=?a?b?x?",
        "=?a?q?" + "z" * 30 + "\n",
    ],
)
def test_hostile_values_take_linear_time(unit: str) -> None:
    """Review rev66 F2: email.header.decode_header took 2 s of CPU (GIL held) for a
    60 kB Subject of unclosed openings, about four times as long for twice the size.
    Here 240 kB take milliseconds; the bound leaves two orders of magnitude."""
    value = unit * (240_000 // len(unit))
    started = time.process_time()
    decode(value)
    assert time.process_time() - started < 0.5


def test_charset_names_are_not_kept() -> None:
    """Review rev67 F4: each made-up charset name passed to codecs.lookup stayed in
    the standard library's cache for good (70 MB per message of many names)."""
    before = len(encodings._cache)  # the cache at fault (private to the standard library)
    decode(" ".join(f"=?made-up-{i}?q?x?=" for i in range(5000)))
    assert len(encodings._cache) == before


def test_the_second_reading_only_where_the_readers_differ() -> None:
    """Review rev195 F1: every field with an encoded word was decoded twice, though the
    two readers differ only on a word whose text holds another opening."""
    assert readings("=?utf-8?q?caf=C3=A9?= =?utf-8?q?x?=") == (("caféx",), 21 + 13)
    assert readings("plain") == (("plain",), 0)
    # The characters read are those of the words: a long field without one costs nothing.
    assert readings("=? " + "x" * 90_000) == (("=? " + "x" * 90_000,), 0)
    texts, read = readings("=?utf-8?q?a=?utf-8?q?b?=")
    assert texts == ("=?utf-8?q?ab", "a=?utf-8?q?b")
    assert read == 13 + 24  # the second word, then the whole value as one


_PIECES = st.sampled_from(["=?", "?=", "utf-8", "?q?", "?b?", "a", "=C3=A9", " ", "\n", "?"])


@given(st.lists(_PIECES, max_size=12).map("".join))
def test_readings_are_the_two_decodings(value: str) -> None:
    both = (decode(value), decode(value, across_openings=True))
    assert readings(value)[0] == (both[:1] if both[0] == both[1] else both)
