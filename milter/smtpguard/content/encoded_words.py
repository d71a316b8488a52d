"""RFC 2047 encoded words in a header field value, decoded in linear time.

``email.header.decode_header`` finds encoded words with ``.*?`` up to the next
``?=``: on a value of many ``=?x?b?`` openings and no closing one, each opening scans
to the end of the value, and a 60 kB Subject took two seconds of CPU with the GIL
held, stalling every session of the worker (review rev66 F2). It also raises
exceptions outside its documented set (``CharsetError`` for a charset that is not
ASCII, rev66 F1). Here an encoded word's text stops at the first ``?`` (RFC 2047 §5: it
may not contain one), so each opening is examined up to its own next ``?`` and the
whole value is read once; nothing raises.

What is decoded, and what stays as written:

* ``=?charset[*language]?B|Q?text?=``, the text up to the first ``?=`` (a ``?``
  inside it taken as readers take it): base64 (missing padding added) or the "Q"
  encoding (``_`` is a space, ``=XX`` an octet). White space inside the text, which
  RFC 2047 forbids, is taken as mail readers take it (Python's, mutt): as part of the
  text (review rev67 F2: "=?utf-8?q?You have w=6Fn a prize?=" went unread). A base64
  text that does not decode, or a word that does not close, stays as written;
* the charset is looked up among Python's text codecs, by their names and aliases
  (``x-`` prefix ignored), in a table made once: never by passing the message's
  name to ``codecs.lookup``, which keeps every name it is asked for in a cache that
  never shrinks (rev67 F4: a message of many made-up names held 70 MB for good) and
  finds codecs that are no text encodings (``rot13``, ``zlib``: rev67 F3). An
  unknown charset is read as UTF-8, as Python's newer header reader reads it: its
  ASCII words still match;
* white space between two encoded words is dropped (§6.2), and adjacent words of one
  charset are decoded together, so a character split between them survives;
* undecodable octets become U+FFFD: the value is matched by content rules, never
  written back into a message.
"""

from __future__ import annotations

import binascii
import bisect
import codecs
import encodings
import encodings.aliases
import functools
import math
import pkgutil
import re
from collections.abc import Iterator
from typing import Final

_OPENING: Final = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?")
_CLOSING: Final = re.compile(r"\?=")
_LINE_END: Final = re.compile(r"[\r\n]")
#: The longest encoded text read (RFC 2047 §2 allows 75 octets for the whole word;
#: long ones are common, a line's worth is plenty).
MAX_TEXT: Final = 2000
_BETWEEN: Final = re.compile(r"[ \t\r\n]*")
_Q_OCTET: Final = re.compile(rb"=([0-9A-Fa-f]{2})")


def decode(value: str, *, across_openings: bool = False) -> str:
    """``value`` with its encoded words decoded (see the module's docstring).

    ``across_openings``: a word's text may hold another opening, as Python's legacy
    reader and mutt read it (where Thunderbird and Python's newer reader end the
    word there); content rules match both readings (review rev72 E1)."""
    return _decode(value, across_openings)[0]


def readings(value: str) -> tuple[tuple[str, ...], int]:
    """``value`` decoded as Thunderbird and Python's newer reader decode it, then, only
    where a word's text holds another opening (so the two differ), as Python's legacy
    reader and mutt do (:func:`decode`'s ``across_openings``): what content rules
    match. One pass over the value when the readers agree (review rev195 F1: every
    field was decoded twice). Also the characters of encoded words read, what the
    decoding cost: a long field with no word in it costs nothing (review rev200)."""
    first, differs, read = _decode(value, False)
    if not differs:
        return (first,), read
    other, _, more = _decode(value, True)
    return ((first,) if other == first else (first, other)), read + more


def _decode(value: str, across_openings: bool) -> tuple[str, bool, int]:
    """:func:`decode`, whether an opening was passed over for another opening before
    its closer (then ``across_openings`` reads the value otherwise), and the
    characters of the encoded words read."""
    if "=?" not in value:
        return value, False, 0
    out: list[str] = []
    pending: list[bytes] = []
    pending_charset = ""
    position = 0
    previous_end = -1
    inner: list[int] = []
    read = 0
    for start, end, charset_name, encoding, text in _words(value, across_openings, inner):
        read += end - start
        octets = _octets(encoding, text)
        if octets is None:
            continue  # stays as written, with the text around it
        charset = _codec(charset_name)
        between = value[position:start]
        adjacent = previous_end >= 0 and _BETWEEN.fullmatch(between) is not None
        if not (adjacent and charset == pending_charset):
            _flush(out, pending, pending_charset)
            if not adjacent:
                out.append(between)
            pending_charset = charset
        pending.append(octets)
        position = previous_end = end
    _flush(out, pending, pending_charset)
    out.append(value[position:])
    return "".join(out), bool(inner), read


def _words(
    value: str, across_openings: bool, inner: list[int]
) -> Iterator[tuple[int, int, str, str, str]]:
    """(start, end, charset, encoding, text) of each encoded word, in order.

    The text runs to the first ``?=`` after the opening, ``?`` inside it included
    (RFC 2047 forbids it; mail readers such as mutt and Python's take it: review rev70
    N6), but not past a line end, :data:`MAX_TEXT` or another opening: an opening
    without a closer of its own would take the next word's text for its own, where
    Thunderbird and Python's newer reader decode that word (review rev71 R2). The
    closers, line ends and openings are found once and each opening's looked up by
    bisection, so a value of many openings and no closer is still read in linear time
    (review rev66 F2). ``inner`` gets the position of each opening passed over for
    another opening before its closer."""
    closers = [m.start() for m in _CLOSING.finditer(value)]
    line_ends = [m.start() for m in _LINE_END.finditer(value)]
    starts = [m.start() for m in _OPENING.finditer(value)]
    position = 0
    while (opening := _OPENING.search(value, position)) is not None:
        begin = opening.end()
        index = bisect.bisect_left(closers, begin)
        if index == len(closers):
            return  # no closer after it: no word after it either
        close = closers[index]
        if close - begin > MAX_TEXT or _first_after(line_ends, begin) < close:
            position = opening.start() + 2
            continue
        if not across_openings and _first_after(starts, opening.start() + 1) < close:
            inner.append(opening.start())
            position = opening.start() + 2
            continue
        yield opening.start(), close + 2, opening.group(1), opening.group(2), value[begin:close]
        position = close + 2


def _first_after(positions: list[int], start: int) -> float:
    """The first of the sorted ``positions`` at or after ``start``, or infinity."""
    index = bisect.bisect_left(positions, start)
    return positions[index] if index < len(positions) else math.inf


def _flush(out: list[str], pending: list[bytes], charset: str) -> None:
    if pending:
        out.append(b"".join(pending).decode(charset, "replace"))
        pending.clear()


#: Charset labels mail clients write that Python's aliases lack (WHATWG's Encoding
#: Standard names them), to Python's codec.
_MAIL_LABELS: Final = {
    "windows-874": "cp874",
    "koi8-ru": "koi8_u",
    "iso-8859-8-i": "iso8859_8",
    "iso-8859-6-i": "iso8859_6",
    "iso-8859-6-e": "iso8859_6",
    "iso-8859-8-e": "iso8859_8",
    "x-mac-cyrillic": "mac_cyrillic",
    "x-mac-roman": "mac_roman",
    "x-user-defined": "latin_1",
    "dos-874": "cp874",
    "x-mac-ukrainian": "mac_cyrillic",
    "iso-ir-149": "euc_kr",
    "windows-31j": "cp932",
}


def _text_codecs() -> dict[str, str]:
    """Every name, alias and module of Python's text codecs (and :data:`_MAIL_LABELS`),
    normalized, to the codec's name. The modules too: some codecs have no alias
    (koi8_u, cp874; review rev70 N3: read as UTF-8, their words matched no rule)."""
    names = set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
    names |= {module.name for module in pkgutil.iter_modules(encodings.__path__)}
    table = {}
    for name in (*names, *_MAIL_LABELS.values()):
        try:
            info = codecs.lookup(name)
        except (LookupError, ImportError, ValueError):
            continue
        if getattr(info, "_is_text_encoding", True) and _reads_any_octets(info.name):
            table[_normal(name)] = info.name
    for label, codec in _MAIL_LABELS.items():
        table[_normal(label)] = table[_normal(codec)]
    return table


#: Text codecs that are no charsets of mail: they raise whatever the error handler
#: ("undefined", "idna") or read escapes and labels instead of characters.
_NOT_CHARSETS: Final = frozenset(
    {"undefined", "idna", "punycode", "unicode-escape", "raw-unicode-escape"}
)
#: Every octet, and malformed sequences of the multi-octet codecs.
_PROBE: Final = bytes(range(256)) + b"\\x\\u12\xff\xfe\x00\xd8\x1b$B\x1b(\x8e"


def _reads_any_octets(codec: str) -> bool:
    """Whether ``codec`` decodes any octets with ``errors="replace"`` without raising
    (a word of such a charset would otherwise make the rules fail: rev67 F3)."""
    if codec in _NOT_CHARSETS:
        return False
    try:
        _PROBE.decode(codec, "replace")
    except (UnicodeError, ValueError, TypeError, LookupError):
        return False
    return True


def _normal(charset: str) -> str:
    return encodings.normalize_encoding(charset).lower().replace("_", "")


_CODECS: Final = _text_codecs()
#: What an unknown charset is read as.
_FALLBACK: Final = "utf-8"


@functools.lru_cache(maxsize=128)
def _codec(charset: str) -> str:
    """The codec for a charset name of a message (:data:`_CODECS`), else UTF-8.
    Remembered for the last names asked (bounded: made-up names come and go): the
    normalization is most of a word's cost, and a field repeats its charset (review
    rev195 F1: a header of 500,000 words took 5 s of CPU)."""
    name = _normal(charset)
    found = _CODECS.get(name) or _CODECS.get(name.removeprefix("x"))
    return found or _FALLBACK


def _octets(encoding: str, text: str) -> bytes | None:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None  # 8-bit text is no encoded word (§5)
    if encoding in "bB":
        try:
            return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))
        except binascii.Error:
            return None
    return _Q_OCTET.sub(lambda m: bytes((int(m.group(1), 16),)), raw.replace(b"_", b" "))
