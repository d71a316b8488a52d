"""Incremental MIME walker that measures attachments while the body streams in.

The milter sees the body in chunks (``xxfi_body``); :class:`MimeWalker` follows the MIME
structure across those chunks without ever holding a part's body, and keeps the size of
the largest attachment up to date so that a caller can stop early.

Standards followed:

* RFC 2045 §5 (Content-Type, default ``text/plain`` when absent or invalid, §5.2), §6
  (Content-Transfer-Encoding), §6.7 (quoted-printable), §6.8 (base64).
* RFC 2046 §5.1.1: a delimiter is ``"--" boundary`` at the start of a line, optionally
  followed by space or tab; ``"--" boundary "--"`` closes the multipart. The line break
  before a delimiter belongs to the delimiter, not to the part. §5.1.5: parts of
  ``multipart/digest`` default to ``message/rfc822``. §5.2.1: ``message/rfc822`` may only
  use 7bit, 8bit or binary, so its content is parsed as a message (header, blank line,
  body). RFC 6532 §3.7 ``message/global`` is handled the same way.
* RFC 2183 (Content-Disposition), RFC 2231 §3-4 (``filename*``, ``filename*0*``
  continuations and charsets), RFC 5322 §2.2 (header fields, §2.2.3 folding).

An *attachment* is a leaf part whose Content-Disposition type is ``attachment`` or that has
a ``filename`` parameter (Content-Disposition) or a ``name`` parameter (Content-Type), in
plain or RFC 2231 form. Multipart and embedded-message containers are walked into. An
embedded message (``message/rfc822``, ``message/global``) marked so is an attachment too,
of its size as written (its encoding is the identity), and its own attachments count as
well: a forwarded ``fw.eml`` is one attachment to its reader (review rev93 F5: one of
any size passed while each of its leaves was under the limit). A multipart is never
counted itself.
Its *decoded size* is counted without decoding:

* base64: 3 bytes per 4 alphabet characters minus padding, white space ignored; a "="
  where no encoder writes one takes nothing off (the most any decoder gets); other
  characters are skipped and noted as ``bad base64``, as is a dangling single character.
* quoted-printable: ``=XX`` is one byte, a soft line break (``=`` + optional space/tab +
  line break) is none, everything else as given, line breaks as given (CRLF 2, LF 1);
  a stray ``=`` counts as one byte and is noted as ``bad quoted-printable``.
* x-uuencode: what the data lines' length characters say, or 45/64 of their bytes if
  that is more; ``begin``/``end`` and any other line as given.
* anything else (7bit, 8bit, binary, unknown): bytes as given.

Bounded memory and linear time: the walker keeps one partial line (lines longer than
64 KiB are processed in pieces; a line longer than 1 KiB is never a delimiter), header
values of the header block being read (at most ``max_header_bytes``), and a stack of at
most ``max_depth`` boundaries. A multipart or embedded message at nesting depth
``max_depth`` or more (the top level is depth 0) is not walked into, noted as ``depth
limit``; nor is a base64 or quoted-printable ``message/rfc822`` (``encoded
message/rfc822``), a multipart whose boundary readers take differently (``ambiguous
boundary``, ``boundary too long``) or a part whose Content-Type is outside RFC 2045's
grammar (``unusual Content-Type``: a comment, a token after a value): other readers walk
into those, and the boundaries they open may take lines that the walker gives to the
multiparts around, so the rest of the body is read whole, as one opaque part (review
rev143 F1, F4). A multipart without a boundary, which no reader walks into, is an opaque
leaf; a Content-Disposition outside that grammar makes its part an attachment (some
reader takes it for one). Such an opaque part, and a
leaf whose header block ran over ``max_header_bytes`` (its Content-Disposition may have
come after), counts as one attachment of its whole size, named ``<unparsed part:
NOTE>`` unless it has a name: whatever it hides is inside it, so the size limit still
holds for an attachment nested, encoded or padded out of the walker's sight. Body data
is scanned with
``bytes.find``/``translate``/``re`` over whole runs of lines; Python-level work happens
only per header line and per line that starts with ``--``.

Deviations, chosen for robustness: only LF ends a line (CRLF and bare LF both work; a bare
CR does not, as in Dovecot; one followed by a delimiter, which Python's email takes for
one, makes the rest of the body one opaque part, noted as ``bare CR before a
delimiter``); an embedded message's leading mbox ``From`` line is skipped; a line in a
part's header block that is no header field (nor blank) is read past, as Dovecot reads
it, the fields after it taken for the part's (noted as ``missing header/body
separator``); readers that start the body at that line see the rest of the block as
the body's first bytes, so an attachment counts them, as written, and a multipart
counts them as its preamble (text outside the parts); of several Content-Disposition
fields any may make a part an attachment (readers differ on which counts); a
delimiter of an outer multipart closes all inner ones (noted as ``missing closing
boundary``); a line that starts with a delimiter and goes on, or that Dovecot would
give to another open multipart, makes the rest of the body one opaque part (noted as
``delimiter line with more than the boundary``). Nothing here raises on any input.

Notes in :attr:`MimeWalker.malformed` are distinct short strings: ``depth limit``,
``missing closing boundary``, ``missing start boundary``, ``missing boundary parameter``,
``boundary too long``, ``bad base64``, ``bad quoted-printable``, ``header block too
large``, ``missing header/body separator``, ``encoded message/rfc822``, ``too many
parts`` (past ``max_parts`` parts the rest of the body is one opaque part), ``too many
lines to examine`` (likewise past a million header lines and "--" lines that are no
delimiter), ``ambiguous boundary`` (given twice with two values, with more than a
comment after its quotes, ending in a blank, or in RFC 2231's encoded form), ``unusual
Content-Type``, ``parameters too complex`` (a field past a thousand separators, quotes
and escapes: the part is opaque).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import unquote_to_bytes

__all__ = ["MimeWalker"]

# A line this long is handed on in pieces so that a newline-free body cannot grow the buffer.
_LINE_MAX: Final = 64 * 1024
# RFC 2046 limits boundaries to 70 characters; a longer line is never a delimiter, which
# also bounds how long an unterminated "--" line is held back.
_DELIM_LINE_MAX: Final = 1024
_BOUNDARY_MAX: Final = _DELIM_LINE_MAX - 16
#: Dovecot keeps this much of a boundary (BOUNDARY_STRING_MAX_LEN, 70 + 10), and any
#: line that starts with it is its delimiter: a longer one is read whole (review rev138
#: F1), as a reader's cut cannot be followed exactly.
_READERS_BOUNDARY_MAX: Final = 80
# Reported names end up in logs.
_NAME_MAX: Final = 255
# RFC 2231 continuations beyond this are ignored.
_SECTIONS_MAX: Final = 64

_HEADERS: Final = 0
_LEAF: Final = 1
_SKIP: Final = 2

_IDENTITY_ENCODINGS: Final = frozenset({"", "7bit", "8bit", "binary"})
_WANTED_HEADERS: Final = frozenset(
    {b"content-type", b"content-disposition", b"content-transfer-encoding"}
)

#: Any octet but controls, space and colon in a field name: 8-bit ones too, as Dovecot
#: reads them (review rev66 F3: "X-Junk\xe9: 1" ended a part's header block here, and
#: its Content-Disposition after it went unread while IMAP clients showed it).
_HEADER_FIELD: Final = re.compile(rb"([^\x00-\x20\x7f:]+)[ \t]*:")
_CRLF: Final = b"\r\n"
_BROKEN_HEADERS: Final = "missing header/body separator"
_DISPOSITION: Final = b"content-disposition"
_ENCODING: Final = b"content-transfer-encoding"

_WHITESPACE: Final = b" \t\r\n\x0b\x0c"
_B64_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_B64_INVALID: Final = bytes(c for c in range(256) if c not in _B64_ALPHABET)
_B64_PADS: Final = re.compile(rb"=+")
#: Lines examined one by one in Python (header lines of the parts, body lines that
#: start with "--" but are no delimiter) before the rest of the message is one opaque
#: part: a message of nothing else cost 14 s of CPU for 50 MB (review rev42, rev45).
#: Ordinary mail has a few per part: a forward of 1,000 messages with 119 header
#: lines each is 119,000 (rev47: refused at a budget of 100,000). A million lines
#: cost about 1.5 s of CPU.
_EXAMINE_MAX: Final = 1_000_000
_QP_ESCAPE: Final = re.compile(rb"=[0-9A-Fa-f]{2}")
_QP_SOFT_BREAK: Final = re.compile(rb"=[ \t]*\r?\n")
_QP_SOFT_BREAK_AT_END: Final = re.compile(rb"=[ \t]*\r?\n\Z")
# Window in which a trailing soft break is looked for; QP lines are at most 76 characters.
_QP_TAIL: Final = 1024

_PARAM_OUTSIDE: Final = re.compile(r'[;"]')
_PARAM_INSIDE: Final = re.compile(r'["\\]')
_QUOTED_PAIR: Final = re.compile(r"\\(.)", re.DOTALL)
_SIMPLE_COMMENT: Final = re.compile(r"\([^()]*\)")
# RFC 2045 §5.1's grammar, strictly: tokens, quoted strings and white space (folded or
# not), comments only where all readers skip them alike. A Content-Type or
# Content-Disposition outside it is read by readers each their own way (review rev143
# F1-F3: a nested comment, a ";" in one, a token after the boundary's): its part is
# counted whole (see _start_entity). Each piece of white space has one place in the
# pattern, so no text backtracks long.
_WS: Final = r"(?:[ \t]|\r?\n[ \t])*"
_MIME_WORD: Final = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
# No quoted-pair: Python's email counts quotes minus escaped ones to find the ";" that
# ends a value, so "a\\" closed its string only to it (review rev144 F1).
_QUOTED: Final = r'"(?:[^"\\\r\n]|\r?\n[ \t])*"'
_VALUE: Final = rf"(?:{_MIME_WORD}|{_QUOTED}){_WS}"
_PARAMS: Final = rf"(?:;{_WS}(?:{_MIME_WORD}{_WS}={_WS}{_VALUE})?)*"
# Around the type and subtype, plain comments too ("attachment (see below)"), which the
# walker cuts there as every reader does.
_CWS: Final = r'(?:[ \t]|\r?\n[ \t]|\([^()\\;"\r\n]*\))*'
# Nothing between the type, the "/" and the subtype, nor before the type: Python's
# email reads "(c)multipart/mixed" and "multipart / mixed" as one leaf, Dovecot as a
# multipart (review rev146 F2). A comment may follow the subtype.
_STRICT_TYPE: Final = re.compile(rf"{_WS}{_MIME_WORD}/{_MIME_WORD}{_CWS}{_PARAMS}")
# A parameter that is not the boundary, unquoted, may hold a "/" too ("type=text/html"
# on multipart/related, "protocol=application/pkcs7-signature"): readers split the
# parameters alike where no quote, backslash or comment is in them (see _params_agree).
_LOOSE_PARAM: Final = re.compile(rf'{_WS}{_MIME_WORD}{_WS}=[^"\\()\x00-\x08\x0a-\x1f\x7f]*')
_BOUNDARY_PARAM: Final = re.compile(
    rf"{_WS}(?i:boundary){_WS}={_WS}(?:{_MIME_WORD}|{_QUOTED}){_WS}"
)
_BOUNDARY_NAME: Final = re.compile(r"[ \t\r\n]*(?i:boundary)\b")
#: A boundary parameter's name, plain or RFC 2231 (the section number, if any).
_BOUNDARY_KEY: Final = re.compile(r"(?i:boundary)(?:\*(\d+))?\*?")
_STRICT_DISPOSITION: Final = re.compile(rf"{_CWS}{_MIME_WORD}{_CWS}{_PARAMS}")
_UNFOLD: Final = re.compile(r"\r?\n")

# RFC 2231 charsets decoded as such; anything else falls back to UTF-8. A whitelist keeps
# hostile names away from codecs that are not text encodings or reject "replace".
_CHARSETS: Final = frozenset(
    {"utf-8", "utf8", "us-ascii", "ascii", "latin1", "cp1252", "koi8-r", "koi8-u"}
    | {f"iso-8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)}
    | {f"windows-{n}" for n in range(1250, 1259)}
    | {"gbk", "gb2312", "gb18030", "big5", "shift_jis", "euc-jp", "iso-2022-jp", "euc-kr"}
)


class _Counter(Protocol):
    size: int

    def add(self, data: bytes | bytearray) -> None: ...

    def finish(self, at_eof: bool) -> str | None: ...


class _RawCounter:
    """Identity encodings: bytes as given."""

    __slots__ = ("pending", "size")

    def __init__(self) -> None:
        self.size = 0
        # The last line break seen; it belongs to the next delimiter unless more data follows.
        self.pending = 0

    def add(self, data: bytes | bytearray) -> None:
        size = self.size + self.pending + len(data)
        self.pending = _eol_length(data)
        self.size = size - self.pending

    def finish(self, at_eof: bool) -> str | None:
        if at_eof:
            self.size += self.pending
        self.pending = 0
        return None


class _Base64Counter:
    """Count decoded bytes of base64 text without decoding it.

    A run of alphabet characters that a pad sequence ends as an encoder would (two
    characters into a quantum and "==", or three and "=") counts alone, whole bytes
    only: exact for one padded encoding and for a file encoded line by line. Any other
    "=" is no end: decoders differ there (Python's joins the characters around it), so
    the characters count as joined, which no decoder exceeds. Pads so dense that no
    encoder writes them count every character at its 6 bits, the bound for all
    decoders (review rev42: "=" after the 1st, 2nd and 4th character of each quantum
    had a third of the decoded size counted)."""

    __slots__ = ("bad", "chars", "dense", "done", "ended", "pads", "run", "size", "trail")

    def __init__(self) -> None:
        self.size = 0
        self.chars = 0
        self.pads = 0
        #: Bytes of the runs a pad sequence has ended, how many there were, alphabet
        #: characters since, and the pads right after them.
        self.done = 0
        self.ended = 0
        self.run = 0
        self.trail = 0
        self.dense = False
        self.bad = False

    def add(self, data: bytes | bytearray) -> None:
        data = data.translate(None, _WHITESPACE)
        if not data:
            return
        clean = data.translate(None, _B64_INVALID)
        if len(clean) != len(data):
            self.bad = True
        pads = clean.count(b"=")
        self.chars += len(clean) - pads
        self.pads += pads
        if pads and not self.dense:
            # An encoder writes at most two pads per line, and its lines carry more
            # than 16 characters; checked first, so that no pattern of pads costs
            # more than one pass in C.
            self.dense = pads > 2 + len(clean) // 16
        if self.dense:
            self.size = self.chars * 3 // 4
            return
        at = 0
        for match in _B64_PADS.finditer(clean) if pads else ():
            start, end = match.span()
            if start > at:
                self.run += start - at
                self.trail = 0
            self.trail += end - start
            quantum = self.run % 4
            if quantum == 3 or (quantum == 2 and self.trail >= 2):
                self.done += self.run * 3 // 4
                self.ended += 1
                self.run = 0
            at = end
        if at < len(clean):
            self.run += len(clean) - at
            self.trail = 0
        if self.ended > 1 and self.chars < 32 * self.ended:
            # Ended runs shorter than any encoder's lines: a pattern, not padding.
            self.dense = True
            self.size = self.chars * 3 // 4
            return
        self.size = self.done + self.run * 3 // 4

    def finish(self, at_eof: bool) -> str | None:
        if (self.chars + self.pads) % 4 == 1:
            self.bad = True
        return "bad base64" if self.bad else None


class _QuotedPrintableCounter:
    """Count decoded bytes of quoted-printable text without decoding it."""

    __slots__ = ("bad", "pending", "size")

    def __init__(self) -> None:
        self.size = 0
        self.pending = 0
        self.bad = False

    def add(self, data: bytes | bytearray) -> None:
        escapes = len(_QP_ESCAPE.findall(data))
        soft = _QP_SOFT_BREAK.findall(data)
        if data.count(b"=") != escapes + len(soft):
            self.bad = True
        size = self.size + self.pending + len(data) - 2 * escapes - sum(map(len, soft))
        # A final soft break is already discounted; only a hard one may belong to a delimiter.
        soft_at_end = bool(soft) and (
            _QP_SOFT_BREAK_AT_END.search(data, max(0, len(data) - _QP_TAIL)) is not None
        )
        self.pending = 0 if soft_at_end else _eol_length(data)
        self.size = size - self.pending

    def finish(self, at_eof: bool) -> str | None:
        if at_eof:
            self.size += self.pending
        self.pending = 0
        return "bad quoted-printable" if self.bad else None


class _UuencodeCounter:
    """Count decoded bytes of uuencoded text (``x-uuencode``) without decoding it.

    Between ``begin`` and ``end``, a data line's first character says how many bytes
    it carries (n = (c - 32) & 63; uudecode writes that many). The data lines count
    the larger of what they declare and 45/64 of their bytes (a well-formed line of
    45 bytes is 62 to 64 characters with its line break and a checksum), less a
    small allowance per part for the short last lines, both summed over the part: so
    well-formed uuencode counts exactly its decoded size, and no content counts below
    ~0.7 of the bytes a client that does not decode it saves, however its lines are
    shaped. Every other line (``begin``, ``end``, text around them, all of it when no
    ``begin`` comes) counts as given. Linear, in C-level passes: a part of millions of
    short lines costs no Python per line."""

    __slots__ = ("data_bytes", "declared", "open_line", "pending", "raw", "size", "state")

    def __init__(self) -> None:
        self.size = 0
        self.declared = 0  # what the data lines' length characters say
        self.data_bytes = 0  # the data lines' bytes, line breaks included
        self.raw = 0  # every other line's bytes
        # Data arrives in whole lines except over-long ones: what the line a chunk
        # continues was counted as ("data", "raw"; None: the chunk starts a line).
        self.open_line: str | None = None
        # As _RawCounter's: the line break of a last line that counts as given.
        self.pending = 0
        self.state = _UU_BEFORE

    def add(self, data: bytes | bytearray) -> None:
        if not data:
            return
        self.raw += self.pending
        self.pending = 0
        n = len(data)
        start = 0
        if self.open_line is not None:
            newline = data.find(b"\n")
            start = n if newline < 0 else newline + 1
            if self.open_line == "data":
                self.data_bytes += start
            else:
                self.raw += start
        data_from = n  # where lines counted as data may start in this chunk
        if self.state == _UU_BEFORE and start < n:
            found = _UU_BEGIN.search(data, start)
            stop = n if found is None else found.end()
            self.raw += stop - start
            start = stop
            if found is not None:
                self.state = _UU_INSIDE
        if self.state == _UU_INSIDE and start < n:
            found = _UU_END.search(data, start)
            stop = n if found is None else found.start()
            self._data(data, start, stop)
            data_from, start = start, stop
            if found is not None:
                self.state = _UU_AFTER
        if start < n:
            self.raw += n - start
        self._last_line(data, data_from, start)
        self.size = self._data_size() + self.raw

    def _data_size(self) -> int:
        floor = self.data_bytes * _UU_LINE_BYTES // _UU_LINE_CHARS - _UU_ALLOWANCE
        return max(self.declared, floor)

    def _last_line(self, data: bytes | bytearray, data_from: int, after: int) -> None:
        """Note the chunk's last line: open (the next chunk continues it) or, if it
        counts as given, ended by a line break that may belong to a delimiter.
        ``data_from``: where data lines may start; ``after``: where the text after
        ``end`` starts, if it came."""
        n = len(data)
        ended = data.endswith(b"\n")
        last = data.rfind(b"\n", 0, n - 1) + 1 if ended else data.rfind(b"\n") + 1
        if last == 0 and self.open_line is not None:
            kind = self.open_line
        else:
            stop = after if self.state == _UU_AFTER else n
            is_data = data_from <= last < stop and 0x20 <= data[last] <= 0x60
            kind = "data" if is_data else "raw"
        if ended:
            self.open_line = None
            if kind == "raw":
                self.pending = _eol_length(data)
                self.raw -= self.pending
        else:
            self.open_line = kind

    def _data(self, data: bytes | bytearray, start: int, stop: int) -> None:
        firsts = b"".join(_UU_DATA_LINE.findall(data, start, stop))
        others = sum(map(len, _UU_OTHER_LINE.findall(data, start, stop)))
        self.raw += others
        self.declared += sum(firsts.translate(_UU_LENGTH))
        self.data_bytes += stop - start - others

    def finish(self, at_eof: bool) -> str | None:
        if at_eof:
            self.raw += self.pending
            self.size += self.pending
        self.pending = 0
        return None


_UU_BEFORE, _UU_INSIDE, _UU_AFTER = 0, 1, 2
_UU_BEGIN: Final = re.compile(rb"(?m)^begin [^\n]*\n?")
_UU_END: Final = re.compile(rb"(?m)^end\r?$")
#: A uuencoded data line's first character: how many bytes it says the line carries,
#: and how many characters a well-formed line has for them (before its line break).
_UU_DATA_LINE: Final = re.compile(rb"(?m)^[\x20-\x60]")
_UU_LENGTH: Final = bytes((c - 32) & 63 if 0x20 <= c <= 0x60 else 0 for c in range(256))
#: A well-formed data line of 45 bytes has at most 64 characters: its length
#: character, 60, a checksum character, CR LF.
_UU_LINE_BYTES, _UU_LINE_CHARS = 45, 64
#: What a part's short last lines ("`", the last data line) may add above what
#: they declare.
_UU_ALLOWANCE: Final = 16
#: Any other line, its line break included.
_UU_OTHER_LINE: Final = re.compile(rb"(?m)^[^\x20-\x60\n][^\n]*\n?|^\n")
# Python's email decodes these four (review rev150 F1: "uue" was counted as written,
# and a uudecoder can make a short line's text larger, as "M" says 45 octets).
_UUENCODE: Final = frozenset({"x-uuencode", "uuencode", "x-uue", "uue"})
#: The encodings counted decoded (see _parse_encoding).
_DECODED: Final = frozenset({"base64", "quoted-printable", *_UUENCODE})


def _eol_length(data: bytes | bytearray) -> int:
    if data.endswith(_CRLF):
        return 2
    return 1 if data.endswith(b"\n") else 0


def _make_counter(encoding: str) -> _Counter:
    if encoding == "base64":
        return _Base64Counter()
    if encoding == "quoted-printable":
        return _QuotedPrintableCounter()
    if encoding in _UUENCODE:
        return _UuencodeCounter()
    return _RawCounter()


@dataclass(slots=True)
class _Embedded:
    """An embedded message counted as an attachment: where its content starts (an
    offset in the body) and how many multiparts were open around it."""

    name: str | None
    start: int
    level: int


@dataclass(slots=True)
class _Frame:
    """An open multipart: its boundary and where it sits."""

    boundary: bytes
    depth: int
    digest: bool
    saw_part: bool = False


class MimeWalker:
    """Walk a message body chunk by chunk and measure its attachments.

    ``top_headers`` are the message's header fields as ``(name, value)`` pairs in the order
    received; values may be folded. Feed the body with :meth:`feed` and call :meth:`close`
    at its end. The public attributes are valid at any time and final after ``close``:

    * ``largest_attachment``: decoded size of the largest attachment seen so far; it grows
      while an attachment streams in, so a size limit can act before the body ends.
    * ``largest_attachment_name``: its file name (RFC 2231 decoded, undecodable bytes
      replaced, at most 255 characters), or ``None`` if it has none.
    * ``largest_outside``: the longest run of text outside every part (a multipart's
      preamble or epilogue, or all of one whose boundary never comes), in octets as
      written. A size limit counts it as an attachment: where another parser reads the
      boundary otherwise (text after its quotes, ``boundary`` and ``boundary*`` that
      disagree, an encoded multipart), a part hides in it (review rev42: 200 kB past a
      50 kB limit, through Postfix).
    * ``attachments``: how many attachments have started.
    * ``malformed``: distinct notes about structural problems, in order of discovery.
    """

    __slots__ = (
        "_broken_bytes",
        "_buf",
        "_closed",
        "_counter",
        "_cur_header",
        "_depth",
        "_digest_parent",
        "_embedded",
        "_embedded_parts",
        "_examine_left",
        "_first_header_line",
        "_header_bare_cr",
        "_header_bytes",
        "_header_overflow",
        "_headers",
        "_here",
        "_hint",
        "_line_start",
        "_max_depth",
        "_max_header_bytes",
        "_mode",
        "_name",
        "_offset",
        "_outside",
        "_parts_left",
        "_stack",
        "_tail",
        "attachments",
        "largest_attachment",
        "largest_attachment_name",
        "largest_outside",
        "malformed",
    )

    def __init__(
        self,
        top_headers: Sequence[tuple[str, str]],
        *,
        max_depth: int = 20,
        max_header_bytes: int = 65536,
        top_headers_cut: bool = False,
        max_parts: int = 10000,
    ) -> None:
        """``top_headers_cut``: a ``Content-*`` field of the message was too large to
        keep; the body is then read whole as one attachment, as a part's is."""
        self.largest_attachment = 0
        self.largest_attachment_name: str | None = None
        self.largest_outside = 0
        self.attachments = 0
        self.malformed: list[str] = []
        self._max_depth = max(0, max_depth)
        self._parts_left = max(1, max_parts)
        self._max_header_bytes = max(0, max_header_bytes)
        self._buf = bytearray()
        # Length of the buffer prefix known to hold no b"\n": a paused scan resumes there,
        # so feeding tiny chunks onto a long partial line stays linear.
        self._hint = 0
        self._line_start = True
        self._stack: list[_Frame] = []
        #: Embedded messages counted as attachments, open (see _Embedded).
        self._embedded_parts: list[_Embedded] = []
        #: The body offset of _buf[0], the offset of the line being handled, and the
        #: last two octets dropped from _buf (the line break before a delimiter).
        self._offset = 0
        self._here = 0
        self._tail = b""
        self._mode = _SKIP
        self._counter: _Counter | None = None
        self._name: str | None = None
        #: Bytes since the last delimiter outside every part (preamble, epilogue).
        self._outside = 0
        self._examine_left = _EXAMINE_MAX
        self._closed = False
        self._depth = 0
        self._digest_parent = False
        self._embedded = False
        self._headers: dict[bytes, bytearray] = {}
        self._cur_header: bytes | None = None
        self._header_bytes = 0
        self._header_overflow = top_headers_cut
        self._header_bare_cr = False
        self._broken_bytes = 0
        self._first_header_line = True

        found: dict[str, str] = {}
        dispositions: list[str] = []
        for name, value in top_headers:
            key = name.strip().lower()
            if key == "content-disposition":
                dispositions.append(_UNFOLD.sub("", value))
            elif key == "content-type":
                found.setdefault(key, _UNFOLD.sub("", value))
            elif key == "content-transfer-encoding":
                # A fold kept as in a part's (_header_line): not the exact name Python's
                # email decodes (review rev150 F2).
                found.setdefault(key, _UNFOLD.sub("\n", value))
        self._start_entity(
            found.get("content-type"),
            dispositions,
            found.get("content-transfer-encoding"),
            depth=0,
            digest_parent=False,
        )

    # -- public API --------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """Process the next piece of the body; chunk borders may fall anywhere."""
        if self._closed or not chunk:
            return
        self._buf += chunk
        self._process(final=False)

    def close(self) -> None:
        """Mark the end of the body and settle the last part; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._process(final=True)
        self._here = self._offset
        if self._mode == _HEADERS:
            self._end_headers()
        self._end_leaf(at_eof=True)
        self._end_embedded(0, eol=0)
        if self._stack:
            self._note("missing closing boundary")
            if not all(frame.saw_part for frame in self._stack):
                self._note("missing start boundary")
            self._stack.clear()
        self._buf = bytearray()
        self._headers = {}

    # -- scanning ----------------------------------------------------------------------

    def _process(self, *, final: bool) -> None:
        buf = self._buf
        pos = 0
        while True:
            if self._mode == _HEADERS:
                nxt = self._header_step(pos, final=final)
            else:
                nxt = self._body_step(pos, final=final)
            if nxt is None:
                break
            pos = nxt
        if pos:
            if self._embedded_parts:  # only they measure to a line break (_eol_before)
                self._tail = (self._tail + bytes(buf[max(0, pos - 2) : pos]))[-2:]
            self._offset += pos
        del buf[:pos]
        # Every step that pauses leaves only a newline-free remainder behind.
        self._hint = len(buf)

    def _header_step(self, pos: int, *, final: bool) -> int | None:
        buf = self._buf
        n = len(buf)
        if pos >= n:
            return None
        nl = buf.find(b"\n", max(pos, self._hint))
        if nl < 0:
            if not final:
                if n - pos <= _LINE_MAX:
                    return None
                # An over-long header line is counted and dropped, never stored.
                self._count_header(n - pos)
                self._cur_header = None
                self._line_start = False
                return n
            end = n
        else:
            end = nl + 1
        if not self._line_start:
            self._count_header(end - pos)
            self._line_start = True
            return end

        return self._header_line(bytes(buf[pos:end]), pos, end)

    def _header_line(self, line: bytes, pos: int, end: int) -> int:
        """Handle one complete header-block line; return where scanning continues."""
        if not self._examined():
            return pos  # read again as the opaque rest's data
        first_line = self._first_header_line
        self._first_header_line = False
        # A bare CR: Python's email ends a line there, so its fields after it, or the
        # end of the block, are not ours (review rev148 F1: a Content-Disposition
        # hidden in a Content-Type's value). Read whole when the block ends.
        self._header_bare_cr |= b"\r" in line.removesuffix(b"\n").removesuffix(b"\r")
        if self._stack and line.startswith(b"--"):
            hit = self._match_delimiter(line[:_DELIM_LINE_MAX])
            if hit is not None:
                if self._loose(hit, len(line)):
                    return pos  # read again as the opaque rest's data
                self._here = self._offset + pos
                self._delimiter(*hit[:2], eol=self._eol_before(pos) if self._embedded_parts else 0)
                return end
        if line in (b"\r\n", b"\n"):
            self._here = self._offset + end
            self._end_headers()
            return end
        if self._broken_bytes:
            self._broken_bytes += len(line)
        if line[0] in b" \t":
            cur = self._cur_header
            if cur is not None and self._count_header(len(line)):
                # A fold in the encoding's value is kept ("\n"): Python's email reads
                # "Content-Transfer-Encoding:\r\n base64" as " base64" and does not
                # decode it (review rev149 F1).
                self._headers[cur] += (b"\n" if cur == _ENCODING else b"") + line.rstrip(b"\r\n")
            return end
        m = _HEADER_FIELD.match(line)
        if m is None:
            if first_line and self._embedded and line.startswith(b"From "):
                return end
            # Readers differ from here on: Dovecot reads on to the blank line, taking
            # the fields after this line for the part's (review rev66 F3); others
            # start the body at it. Read on too, and keep the size of the rest of the
            # block, the other readers' body (_start_entity).
            if not self._broken_bytes:
                self._note(_BROKEN_HEADERS)
                self._broken_bytes = len(line)
            self._cur_header = None
            self._count_header(len(line))
            return end
        self._cur_header = None
        self._field(line, m)
        return end

    def _field(self, line: bytes, m: re.Match[bytes]) -> None:
        """A header field line of the block (``m``: its name and colon)."""
        if m.end() - 1 > m.end(1) and not self._broken_bytes:
            # "Name : value": Dovecot takes the field, Python's email starts the body at
            # it (review rev149 F1): from here the block also counts as the body's.
            self._note(_BROKEN_HEADERS)
            self._broken_bytes = len(line)
        if self._count_header(len(line)):
            self._keep_field(m.group(1).lower(), line[m.end() :].rstrip(b"\r\n"))

    def _keep_field(self, key: bytes, value: bytes) -> None:
        """Keep the first Content-Type and Content-Transfer-Encoding, and every
        Content-Disposition: readers differ on which of several counts (Dovecot: the
        last; review rev67 F6), and any may make the part an attachment."""
        if key == _DISPOSITION and key in self._headers:
            key = b"%s#%d" % (_DISPOSITION, len(self._headers))
        elif key not in _WANTED_HEADERS or key in self._headers:
            return
        self._headers[key] = bytearray(value)
        self._cur_header = key

    def _count_header(self, size: int) -> bool:
        """Account header bytes; False once the header block is over budget."""
        self._header_bytes += size
        if self._header_bytes > self._max_header_bytes:
            self._note("header block too large")
            self._cur_header = None
            self._header_overflow = True
            return False
        return True

    def _body_step(self, pos: int, *, final: bool) -> int | None:
        buf = self._buf
        n = len(buf)
        if pos >= n:
            return None
        start = max(pos, self._hint)
        if self._stack:
            if self._line_start and buf[pos] == 0x2D:  # "-"
                if n - pos < 2 and not final:
                    return None
                if n - pos >= 2 and buf[pos + 1] == 0x2D:
                    return self._candidate_line(pos, final=final)
            idx = buf.find(b"\n--", start)
            if idx >= 0:
                self._data(pos, idx + 1)
                self._line_start = True
                return idx + 1
        if final:
            self._data(pos, n)
            return n
        last = buf.rfind(b"\n", start)
        if last >= 0:
            # Hold back the partial last line: it may be the start of a delimiter, and
            # line-aligned data keeps quoted-printable escapes whole.
            self._data(pos, last + 1)
            self._line_start = True
            return last + 1
        if n - pos > _LINE_MAX:
            end = _safe_cut(buf, pos, n)
            self._data(pos, end)
            self._line_start = False
            return end
        return None

    def _candidate_line(self, pos: int, *, final: bool) -> int | None:
        """Handle a line at ``pos`` that starts with ``--``."""
        buf = self._buf
        n = len(buf)
        nl = buf.find(b"\n", max(pos, self._hint))
        if nl >= 0:
            end = nl + 1
        elif final:
            end = n
        elif n - pos <= _DELIM_LINE_MAX:
            return None
        else:
            end = _safe_cut(buf, pos, n)
            hit = self._match_delimiter(bytes(buf[pos : pos + _DELIM_LINE_MAX]))
            if hit is not None:
                self._loose(hit, end - pos + 1)  # longer than a delimiter line: read whole
            self._data(pos, end)
            self._line_start = False
            return end
        hit = self._match_delimiter(bytes(buf[pos : min(end, pos + _DELIM_LINE_MAX)]))
        if hit is not None and not self._loose(hit, end - pos):
            self._here = self._offset + pos
            self._delimiter(*hit[:2], eol=self._eol_before(pos) if self._embedded_parts else 0)
            self._line_start = True
            return end
        self._examined()
        self._data(pos, end)
        self._line_start = True
        return end

    def _match_delimiter(self, line: bytes) -> tuple[int, bool, bool | None] | None:
        """Find the innermost open multipart whose delimiter ``line`` is: (its index,
        closing, loose). Loose: the line only starts with it (True), or with the
        boundaries of several, which readers take differently (None). RFC 2046
        §5.1.1 reads a line that starts with one as its delimiter ("an exact match of
        the entire candidate line is not required"), and so do Dovecot and others;
        Python's email does not."""
        rest = line[2:].rstrip(b" \t\r\n")
        stack = self._stack
        for i in range(len(stack) - 1, -1, -1):
            boundary = stack[i].boundary
            closing = (
                len(rest) == len(boundary) + 2
                and rest.endswith(b"--")
                and rest.startswith(boundary)
            )
            if rest == boundary or closing:
                if self._other_reading(line, i):
                    # Review rev136 F1: "--X-- " closes "X" once its blank is gone, but
                    # Dovecot keeps the blank and takes the longer "X-" of a multipart
                    # further out: read whole.
                    return i, False, None
                return i, closing, False
        starts = [i for i in range(len(stack) - 1, -1, -1) if rest.startswith(stack[i].boundary)]
        if not starts:
            return None
        i = starts[0]
        if self._other_reading(line, i):
            # Dovecot takes the longest boundary the line starts with, and ends the
            # multiparts inside it; the innermost one would keep them open (review
            # rev135 F2: an attachment cut into text parts by "--inner" lines): read
            # whole, whatever was being read.
            return i, False, None
        after = rest[len(stack[i].boundary) : len(stack[i].boundary) + 2]
        return i, after == b"--", True

    def _other_reading(self, line: bytes, ours: int) -> bool:
        """Whether Dovecot 2.3 may take ``line`` for another open multipart's delimiter
        than ``ours``. Its boundary_find takes, of the boundaries the line starts with,
        the longest, a tie to the innermost, an exact one at once. Read once on the line
        without its line break (and a CR before it), as 2.3.19 was seen to read it
        (review rev143 F5: "--A --" was a delimiter of "A -" there); and once with a
        final "--" cut too (after more than two characters), as boundary_line_find
        reads it in other versions, where only a reading naming another multipart
        counts (one naming none leaves a boundary ending in "--", a digest's
        "__--__--", to the whole line's reading). Boundaries longer than Dovecot keeps,
        or ending in a blank, are not walked into (:meth:`_enter`)."""
        find = line[2:].split(b"\n", 1)[0].removesuffix(b"\r")
        if self._longest_prefix(find) != ours:
            return True
        if len(find) > 2 and find.endswith(b"--"):
            cut = self._longest_prefix(find[:-2])
            return cut is not None and cut != ours
        return False

    def _longest_prefix(self, find: bytes) -> int | None:
        stack = self._stack
        found: int | None = None
        for i in range(len(stack) - 1, -1, -1):
            boundary = stack[i].boundary
            if find.startswith(boundary) and (
                found is None or len(boundary) > len(stack[found].boundary)
            ):
                found = i
                if len(boundary) == len(find):
                    break
        return found

    def _loose(self, hit: tuple[int, bool, bool | None], length: int) -> bool:
        """Whether a delimiter found by its start only (or in a line too long to be
        one) ends the walk: readers differ on it (RFC 2046 §5.1.1 and Dovecot take
        ``--Bx`` for a delimiter, Python's email for text), and from there on their
        structures differ (review rev134 F1: an attachment after it was one to
        Dovecot, text to us; rev144 F6: taken as a delimiter, a later one of an inner
        multipart ended an attachment Python's email read on through it). So the rest
        of the body is read whole, as one attachment, from the size of one being
        counted."""
        if hit[2] is False and length <= _DELIM_LINE_MAX:
            return False
        self._read_rest_whole("delimiter line with more than the boundary")
        return True

    def _eol_before(self, pos: int) -> int:
        """The length of the line break that ends before ``pos`` in the buffer (CRLF 2,
        LF 1, none at the start of the body): it belongs to a delimiter at ``pos``."""
        before = bytes(self._buf[max(0, pos - 2) : pos])
        if len(before) < 2:
            before = (self._tail + before)[-2:]
        if self._offset + pos == 0 or not before.endswith(b"\n"):
            return 0
        return 2 if before == b"\r\n" else 1

    def _data(self, pos: int, end: int) -> None:
        if self._stack and end > pos:
            cut = self._bare_cr_delimiter(pos, end)
            if cut is not None:
                # Python's email ends a line at a bare CR too, and takes what follows
                # for a delimiter; Dovecot and we do not (review rev144 F3): readers'
                # structures part here, so the rest of the body is read whole.
                self._data_span(pos, cut)
                self._read_rest_whole("bare CR before a delimiter")
                self._data_span(cut, end)
                return
        self._data_span(pos, end)

    def _bare_cr_delimiter(self, pos: int, end: int) -> int | None:
        """Where in ``pos:end`` a bare CR is followed by a delimiter of an open
        multipart (the index after the CR), if anywhere."""
        buf = self._buf
        at = buf.find(b"\r--", pos, end)
        while at >= 0:
            text = bytes(buf[at + 1 : at + 1 + _DELIM_LINE_MAX])
            line = re.split(rb"[\r\n]", text, maxsplit=1)[0]
            if self._match_delimiter(line) is not None:
                return at + 1
            at = buf.find(b"\r--", at + 1, end)
        return None

    def _data_span(self, pos: int, end: int) -> None:
        if self._embedded_parts and end > pos:
            # Growing as it streams in, so a size limit acts before its end; a line
            # break at the end may be a delimiter's, and so may a CR a long line was cut
            # after (review rev94 F7). Only the outermost: it holds the inner ones and
            # is the largest (F5: each of 18 nested ones, per line, tripled the cost).
            buf = self._buf
            last = buf[end - 1]
            if end >= 2 and last == 0x0A:
                held = 2 if buf[end - 2] == 0x0D else 1
            elif last == 0x0A:
                held = self._eol_before(end)  # the CR, if any, was in an earlier chunk
            else:
                held = 1 if last == 0x0D else 0
            part = self._embedded_parts[0]
            self._measured(part, self._offset + end - held - part.start)
        if self._mode == _SKIP:
            # Text outside the parts (largest_outside).
            self._outside += end - pos
            self.largest_outside = max(self.largest_outside, self._outside)
            return
        counter = self._counter
        if counter is None or self._mode != _LEAF or end <= pos:
            return
        counter.add(self._buf[pos:end])
        if counter.size > self.largest_attachment:
            self.largest_attachment = counter.size
            self.largest_attachment_name = self._name

    # -- structure ---------------------------------------------------------------------

    def _delimiter(self, index: int, closing: bool, *, eol: int) -> None:
        self._outside = 0
        if self._mode == _HEADERS:
            self._end_headers()
            if len(self._stack) <= index:
                # Its fields made the rest of the body one opaque part (read whole).
                return
        self._end_leaf(at_eof=False)
        self._end_embedded(index + 1, eol=eol)
        stack = self._stack
        if len(stack) > index + 1:
            self._note("missing closing boundary")
            del stack[index + 1 :]
        frame = stack[index]
        if closing:
            if not frame.saw_part:
                self._note("missing start boundary")
            stack.pop()
            self._mode = _SKIP
            return
        frame.saw_part = True
        self._parts_left -= 1
        if self._parts_left < 0:
            self._read_rest_whole("too many parts")
            return
        self._begin_headers(frame.depth + 1, digest_parent=frame.digest, embedded=False)

    def _examined(self) -> bool:
        """Count one line examined in Python; past the budget the rest is read whole
        (False)."""
        self._examine_left -= 1
        if self._examine_left >= 0:
            return True
        self._read_rest_whole("too many lines to examine")
        return False

    def _read_rest_whole(self, why: str, name: str | None = None) -> None:
        """Stop walking: the rest of the body is one opaque part of its whole size.

        Walking costs Python work per part (a few microseconds each), so a message of
        nothing but empty parts would cost seconds of CPU per megabyte; the bytes of
        one opaque part are counted at ``bytes.find`` speed, with no delimiter sought."""
        self._note(why)
        # An attachment in progress goes on in the opaque part, from its size so far:
        # counted as two, one part decoded and the rest raw, each under the limit
        # passed 1.7 times the limit (review rev47).
        so_far = self._counter.size if self._mode == _LEAF and self._counter else 0
        self._stack.clear()
        self._opaque(why, so_far, name)

    def _opaque(self, why: str, so_far: int = 0, name: str | None = None) -> None:
        """What follows is one attachment counted as written, from ``so_far``; named
        ``name`` (the part's, when the rest starts with a part that has one)."""
        self._mode = _LEAF
        self._name = name or f"<unparsed part: {why}>"
        self._counter = _make_counter("binary")
        self._counter.size = so_far
        self._started(self._name)

    def _begin_headers(self, depth: int, *, digest_parent: bool, embedded: bool) -> None:
        self._mode = _HEADERS
        self._depth = depth
        self._digest_parent = digest_parent
        self._embedded = embedded
        self._headers = {}
        self._cur_header = None
        self._header_bytes = 0
        self._header_overflow = False
        self._header_bare_cr = False
        self._broken_bytes = 0
        self._first_header_line = True

    def _end_headers(self) -> None:
        headers = self._headers
        self._headers = {}
        self._cur_header = None
        if self._header_bare_cr:
            self._header_bare_cr = False
            self._read_rest_whole("bare CR in a header field")
            return
        self._start_entity(
            _header_text(headers.get(b"content-type")),
            [_decoded(v) for k, v in headers.items() if k.startswith(_DISPOSITION)],
            _header_text(headers.get(b"content-transfer-encoding")),
            depth=self._depth,
            digest_parent=self._digest_parent,
        )

    def _start_entity(
        self,
        content_type: str | None,
        dispositions: Sequence[str],
        encoding_value: str | None,
        *,
        depth: int,
        digest_parent: bool,
    ) -> None:
        encoding = _parse_encoding(encoding_value)
        self._counter = None
        self._name = None
        broken = self._broken_bytes
        self._broken_bytes = 0
        try:
            maintype, subtype, ct_params = _parse_content_type(content_type, digest_parent)
            disp_type, disp_params = _strongest_disposition(dispositions)
        except _TooComplex:
            # Read whole, counted as one: what it hides is in it (review rev47: 800
            # parts of 64 KiB Content-Types cost 24 s of CPU).
            self._note("parameters too complex")
            self._opaque("parameters too complex")
            return
        # Why a part that is not walked into is read whole, or "" when it is an
        # ordinary leaf. Whatever it hides (a nested attachment, one whose
        # Content-Disposition came after the header budget) is in it.
        # The container's own header block (walking into an embedded message starts
        # the next one).
        overflow = self._header_overflow
        unusual = content_type is not None and not _STRICT_TYPE.fullmatch(content_type)
        head, params_text = _split_type(content_type) if unusual and content_type else ("", "")
        letters = _letters(head)
        if unusual and _STRICT_TYPE.fullmatch(head) and _params_agree(params_text):
            # Only parameters readers split alike are off the grammar ("type=text/html"
            # unquoted on multipart/related; rev146 F5): read as any.
            unusual = False
            letters = ""
        if _CONTAINER.search(letters) or (unusual and "=?" in head):
            # Readers differ on its type or parameters (a multipart to one, text to
            # another; one boundary or another; an encoded-word, which Python's email
            # decodes, rev144 F5): everything after is one attachment.
            name = _attachment(disp_type, disp_params, ct_params, "")[1]
            self._read_rest_whole("unusual Content-Type", name)
            return
        # An attachment to some reader (Dovecot took "attachment x", "inline;
        # (c)filename=a.bin", "name(c)=a.bin" for one): counted as one, decoded as its
        # Content-Transfer-Encoding says, which they read alike (review rev144 F4: an
        # unquoted "name=My Document.pdf" was counted as written, a third more). A type
        # without a name in it ("text; charset=us-ascii") stays text: no reader makes
        # more of it; nor does an empty Content-Disposition.
        named = unusual and "name" in _letters(content_type or "")
        odd = [
            value
            for value in dispositions
            if value.strip() and not _STRICT_DISPOSITION.fullmatch(value)
        ]
        # Decoded where only a parameter is off the grammar (readers agree on the
        # encoding of an "attachment; filename=My Document.pdf"); as written where the
        # type itself is (a reader that makes no sense of it may not decode it either).
        as_written = (named and not _STRICT_TYPE.fullmatch(head)) or any(
            not _STRICT_DISPOSITION.fullmatch(_split_type(value)[0]) for value in odd
        )
        if named or odd:
            self._note("unusual Content-Type" if named else "unusual Content-Disposition")
            disp_type = "attachment"
        elif unusual:
            self._note("unusual Content-Type")
        # encoded: what readers that take the first word decode (Dovecot, for an
        # embedded message: review rev150 F3), whatever follows it.
        opaque = self._enter(
            maintype,
            subtype,
            ct_params,
            encoding,
            depth,
            encoded=_encoding_word(encoding_value) in _DECODED,
        )
        if (
            opaque is None
            and maintype == "multipart"
            and content_type
            and _boundary_doubt(content_type)
        ):
            # Walked into, but Python's email takes another boundary (review rev146 F1).
            self._stack.pop()
            self._note("ambiguous boundary")
            opaque = "ambiguous boundary"
        if opaque in _READ_REST_WHOLE:
            # A container readers walk into and we do not: the boundaries it opens to
            # them may take lines we give to ours (review rev143 F4), so everything
            # after it is one attachment, not just it.
            self._read_rest_whole(opaque, _attachment(disp_type, disp_params, ct_params, "")[1])
            return
        if opaque is None and maintype == "message":
            self._embedded_attachment(disp_type, disp_params, ct_params, overflow=overflow)
        if opaque is None:
            if broken:
                # Readers that start the body at the line that is no field read the
                # rest of the block as the container's first text: a preamble (where
                # a part of theirs may hide, review rev67 F5), counted as one.
                self._outside += broken
                self.largest_outside = max(self.largest_outside, self._outside)
            return
        if not opaque and self._header_overflow:
            opaque = "header block too large"
        self._mode = _LEAF
        marked, self._name = _attachment(disp_type, disp_params, ct_params, opaque)
        if not marked:
            return
        # Readers that start the body at a line that is no field take the rest of the
        # block for the attachment's first bytes: counted with the body, as written
        # (never less than decoded).
        self._counter = _make_counter("binary" if broken or as_written else encoding)
        self._counter.size = broken
        self._started(self._name)

    def _started(self, name: str | None) -> None:
        """One more attachment, named ``name``."""
        self.attachments += 1
        if self.attachments == 1:
            self.largest_attachment_name = name

    def _embedded_attachment(
        self,
        disp_type: str,
        disp_params: dict[str, str],
        ct_params: dict[str, str],
        *,
        overflow: bool,
    ) -> None:
        """An embedded message just walked into: counted as an attachment too when it
        is marked as one (see the module docstring), or when its header block ran over
        ``max_header_bytes``, its Content-Disposition perhaps past it, as a leaf's is
        (review rev94 F2: padding hid the attached message again)."""
        unparsed = "header block too large" if overflow else ""
        marked, name = _attachment(disp_type, disp_params, ct_params, unparsed)
        if not marked:
            return
        if not self._embedded_parts:
            self._tail = b""  # kept only while one is open: what it held is older
        self._embedded_parts.append(_Embedded(name, self._here, len(self._stack)))
        self._started(name)

    def _enter(
        self,
        maintype: str,
        subtype: str,
        ct_params: dict[str, str],
        encoding: str,
        depth: int,
        *,
        encoded: bool = False,
    ) -> str | None:
        """Walk into a multipart or an embedded message (None); else why a container is
        read whole instead (noted), or "" for an ordinary leaf."""
        if maintype == "multipart":
            written = _to_bytes(_param(ct_params, "boundary") or "")
            boundary = written.rstrip(b" \t")
            if not boundary:
                why = "missing boundary parameter"
            elif (
                _ambiguous(ct_params, "boundary")
                or boundary != written
                or (
                    "boundary" not in ct_params
                    and any(key.startswith("boundary*") and key.endswith("*") for key in ct_params)
                )
                or (boundary.startswith(b"<") and boundary.endswith(b">"))
                or b"=?" in boundary
            ):
                # Parsers differ on which boundary counts: read whole, counted as one
                # (review rev45: the part hid in a text part of our reading). So do they
                # on one that ends in a blank, which RFC 2046 forbids: Dovecot keeps it
                # (review rev138 F2), and on RFC 2231's encoded form given alone, which
                # Dovecot 2.3 does not take for a boundary and Python's email does
                # (rev143 F6); Python's email also strips <...> and decodes an
                # encoded-word in it (rev144 F1).
                why = "ambiguous boundary"
            elif len(boundary) > min(_BOUNDARY_MAX, _READERS_BOUNDARY_MAX):
                why = "boundary too long"
            elif depth >= self._max_depth:
                why = "depth limit"
            else:
                self._stack.append(_Frame(boundary, depth, subtype == "digest"))
                self._mode = _SKIP
                return None
        elif maintype == "message" and subtype in ("rfc822", "global"):
            if encoding not in _IDENTITY_ENCODINGS or encoded:
                why = "encoded message/rfc822"
            elif depth >= self._max_depth:
                why = "depth limit"
            else:
                self._begin_headers(depth + 1, digest_parent=False, embedded=True)
                return None
        else:
            return ""
        self._note(why)
        return why

    def _end_embedded(self, level: int, *, eol: int) -> None:
        """A delimiter of the multipart at ``level - 1`` (or one further out; 0: the
        end of the body) ends the embedded messages inside it."""
        parts = self._embedded_parts
        while parts and parts[-1].level >= level:
            part = parts.pop()
            self._measured(part, self._here - eol - part.start)

    def _measured(self, part: _Embedded, size: int) -> None:
        if size > self.largest_attachment:
            self.largest_attachment = size
            self.largest_attachment_name = part.name

    def _end_leaf(self, *, at_eof: bool) -> None:
        counter = self._counter
        self._counter = None
        if counter is None or self._mode != _LEAF:
            return
        note = counter.finish(at_eof)
        if note is not None:
            self._note(note)
        if counter.size > self.largest_attachment:
            self.largest_attachment = counter.size
            self.largest_attachment_name = self._name

    def _note(self, note: str) -> None:
        if note not in self.malformed:
            self.malformed.append(note)


def _attachment(
    disp_type: str, disp_params: dict[str, str], ct_params: dict[str, str], unparsed: str
) -> tuple[bool, str | None]:
    """Whether a part is an attachment, and its name for the log: a Content-Disposition
    of type ``attachment``, or a file name in any form, or ``unparsed`` (why the part is
    read whole: counted as one attachment, its size bounds anything inside it)."""
    # Comments removed as for Content-Type: "attachment (see below)" is one too
    # (RFC 2183 via RFC 2045 §5.1 syntax; found by review, it went uncounted).
    disp_type = "".join(_SIMPLE_COMMENT.sub("", disp_type).split()).lower()
    if not (
        unparsed
        or disp_type == "attachment"
        or _has_param(disp_params, "filename")
        or _has_param(ct_params, "name")
    ):
        return False, None
    name = _param(disp_params, "filename")
    if name is None:
        name = _param(ct_params, "name")
    if name is None and unparsed:
        name = f"<unparsed part: {unparsed}>"
    return True, _loggable(name) if name is not None else None


def _safe_cut(buf: bytearray, pos: int, end: int) -> int:
    """Where to split an over-long line so a quoted-printable ``=XX`` or ``=CR`` stays whole."""
    if end - 1 > pos and buf[end - 1] == 0x3D:  # "="
        return end - 1
    if end - 2 > pos and buf[end - 2] == 0x3D:
        return end - 2
    return end


def _strongest_disposition(values: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The type and parameters of the Content-Disposition fields: the first that makes
    the part an attachment (type ``attachment``, or a ``filename``), else the first.
    Readers differ on which of several counts (review rev67 F6: "inline" then
    "attachment; filename=..." hid 60 kB from us and not from Dovecot)."""
    parsed = [_parse_params(value) for value in values]
    for disp_type, params in parsed:
        kind = "".join(_SIMPLE_COMMENT.sub("", disp_type).split()).lower()
        if kind == "attachment" or _has_param(params, "filename"):
            return disp_type, params
    return parsed[0] if parsed else ("", {})


def _decoded(raw: bytearray) -> str:
    # surrogateescape keeps every byte, so a boundary re-encodes to exactly what is on the wire.
    return raw.decode("utf-8", "surrogateescape")


def _header_text(raw: bytearray | None) -> str | None:
    return None if raw is None else _decoded(raw)


def _to_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Lone surrogates that are not escaped bytes can only come from top_headers.
        return text.encode("utf-8", "surrogatepass")


def _loggable(name: str) -> str:
    return _to_bytes(name).decode("utf-8", "replace")[:_NAME_MAX]


def _parse_content_type(value: str | None, digest_parent: bool) -> tuple[str, str, dict[str, str]]:
    params: dict[str, str] = {}
    if value:
        type_text, params = _parse_params(value)
        type_text = "".join(_SIMPLE_COMMENT.sub("", type_text).split()).lower()
        maintype, sep, subtype = type_text.partition("/")
        if sep and maintype and subtype:
            return maintype, subtype, params
    # RFC 2045 §5.2 and RFC 2046 §5.1.5 defaults; parameters are kept so that a name= on a
    # broken type still marks an attachment.
    if digest_parent:
        return "message", "rfc822", params
    return "text", "plain", params


def _encoding_word(value: str | None) -> str:
    """The first word of a Content-Transfer-Encoding, lower-cased, comments cut."""
    words = _SIMPLE_COMMENT.sub("", value or "").split()
    return words[0].lower() if words else ""


def _parse_encoding(value: str | None) -> str:
    """The Content-Transfer-Encoding the part is counted by: a decoding one only when
    the value is exactly its name (any case): Python's email decodes nothing else, not
    "base64 " nor "quoted-printable (see RFC 2045)", and hands over the text as written
    (review rev149 F1, up to three times the limit); such a value is counted as
    written ("binary": decoding only shrinks it)."""
    if not value:
        return ""
    exact = value.lstrip(" \t").lower()
    if exact in _DECODED:
        return exact
    word = _encoding_word(value)
    return "binary" if word in _DECODED else word


#: Separators, quotes and escapes read in one field's parameters: a few dozen in real
#: mail (RFC 2231 continuations included).
_PARAM_STEPS: Final = 1000


def _split_type(value: str) -> tuple[str, str]:
    """``value`` cut at its first ";" outside quotes and comments: the type, and the
    parameters from that ";" on (review rev146 F3, F4: a name's "=?" or "Message" was
    taken for the type's)."""
    depth = 0
    quoted = False
    for match in _TYPE_MARK.finditer(value):
        mark = match.group()
        if quoted:
            quoted = mark != '"'
        elif mark == '"' and depth == 0:
            quoted = True
        elif mark == "(":
            depth += 1
        elif mark == ")":
            depth = max(depth - 1, 0)
        elif mark == ";" and depth == 0:
            return value[: match.start()], value[match.start() :]
    return value, ""


def _boundary_doubt(content_type: str) -> bool:
    """A boundary Python's email reads otherwise than the walker: one given twice in
    any form or case (it takes the last of some, sorts RFC 2231 sections, review
    rev148 F2; the walker takes the first), sections out of order or with a gap, or
    one unquoted with a "*" or "'" (policy.default cuts it there, rev146 F1)."""
    names: list[str] = []
    sections: list[int] = []
    for segment in _split_type(content_type)[1].split(";")[1:]:
        name, equals, value = segment.partition("=")
        found = _BOUNDARY_KEY.fullmatch(name.strip())
        if not equals or found is None:
            continue
        names.append(name.strip().lower())
        if found.group(1) is not None:
            sections.append(int(found.group(1)))
        value = value.strip()
        if not value.startswith('"') and ("*" in value or "'" in value):
            return True
    plain = sum(1 for name in names if name in ("boundary", "boundary*"))
    return (
        len(names) != len(set(names))
        or sections != list(range(len(sections)))
        or (plain > 0 and bool(sections))
    )


def _params_agree(params: str) -> bool:
    """Whether readers split ``params`` (from its first ";") into the same parameters
    and take the same boundary: no quote, backslash or comment outside a value the
    grammar takes, and the boundary, given once, in the strict form."""
    boundaries = 0
    for segment in params.split(";")[1:]:
        if _BOUNDARY_NAME.match(segment):
            boundaries += 1
            if not _BOUNDARY_PARAM.fullmatch(segment):
                return False
        elif segment.strip() and not (
            _PARAMS_ONE.fullmatch(";" + segment) or _LOOSE_PARAM.fullmatch(segment)
        ):
            return False
    return boundaries <= 1


#: A type some reader may walk into, in a Content-Type's letters (:func:`_letters`).
_CONTAINER: Final = re.compile(r"multipart|message")
#: What :func:`_split_type` follows: quoted-pairs, quotes, comments and ";".
_TYPE_MARK: Final = re.compile(r'\\.|[()";]', re.DOTALL)
#: One parameter in the strict grammar.
_PARAMS_ONE: Final = re.compile(rf"{_PARAMS}")
#: What nests comments: an opening, a closing, and a quoted-pair (the character after
#: it taken as it is).
_COMMENT_MARK: Final = re.compile(r"\\.|[()]", re.DOTALL)


def _letters(value: str) -> str:
    """The lower-case letters of ``value`` outside comments, nested ones too: what a
    reader could make a type of ("multi(x)part" is "multipart" to some). One pass (a
    loop of one substitution per level cost 80 s of CPU per MB of nesting: review
    rev144 F2)."""
    kept: list[str] = []
    depth = start = 0
    for match in _COMMENT_MARK.finditer(value):
        mark = match.group()
        if depth == 0:
            kept.append(value[start : match.start()])
        if mark == "(":
            depth += 1
        elif mark == ")":
            depth = max(depth - 1, 0)
        start = match.end()
    if depth == 0:
        kept.append(value[start:])
    return "".join(c for c in "".join(kept).lower() if "a" <= c <= "z")


#: Why a container is not walked into where readers do walk into it: what follows is
#: read whole (:meth:`MimeWalker._start_entity`). Not a multipart without a boundary,
#: which no reader walks into either.
_READ_REST_WHOLE: Final = frozenset(
    {"ambiguous boundary", "boundary too long", "depth limit", "encoded message/rfc822"}
)


class _TooComplex(Exception):
    """A field's parameters are past :data:`_PARAM_STEPS`."""


def _parse_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type; a=b; c="d;e"`` into the leading value and lower-cased parameters.

    The first occurrence of a parameter wins. One pass over the text; quoted strings may
    contain ``;`` and backslash escapes.
    """
    segments: list[str] = []
    start = 0
    i = 0
    n = len(value)
    quoted = False
    steps = 0
    while i < n:
        steps += 1
        if steps > _PARAM_STEPS:
            raise _TooComplex
        if quoted:
            m = _PARAM_INSIDE.search(value, i)
            if m is None:
                break
            if m.group() == "\\":
                i = m.end() + 1
                continue
            quoted = False
            i = m.end()
        else:
            m = _PARAM_OUTSIDE.search(value, i)
            if m is None:
                break
            i = m.end()
            if m.group() == '"':
                quoted = True
            else:
                segments.append(value[start : m.start()])
                start = i
    segments.append(value[start:])

    params: dict[str, str] = {}
    for segment in segments[1:]:
        key, sep, raw = segment.partition("=")
        key = key.strip().lower()
        if sep and key and key not in params:
            params[key] = _unquote(raw)
    return segments[0].strip(), params


def _unquote(raw: str) -> str:
    raw = raw.strip()
    if not raw.startswith('"'):
        return raw
    end = raw.rfind('"')
    if end > 0 and _SIMPLE_COMMENT.sub("", raw[end + 1 :]).strip():
        return raw  # more after the quoted string: as written (see _ambiguous)
    inner = raw[1:end] if end > 0 else raw[1:]
    return _QUOTED_PAIR.sub(r"\1", inner)


def _ambiguous(params: dict[str, str], base: str) -> bool:
    """Given twice (plain and RFC 2231) with two values, or as a quoted string with
    more after it than a comment (RFC 2045 §5.1 allows one: rev47)."""
    plain = params.get(base)
    if plain is None:
        return False
    return plain.startswith('"') or _param(params, base) != plain


def _has_param(params: dict[str, str], base: str) -> bool:
    if base in params:
        return True
    prefix = base + "*"
    return any(key.startswith(prefix) for key in params)


def _param(params: dict[str, str], base: str) -> str | None:
    """Value of ``base``, preferring the RFC 2231 forms ``base*`` and ``base*0*``..."""
    extended = params.get(base + "*")
    if extended is not None:
        return _decode_2231([(extended, True)])
    sections: list[tuple[str, bool]] = []
    for number in range(_SECTIONS_MAX):
        encoded = params.get(f"{base}*{number}*")
        if encoded is not None:
            sections.append((encoded, True))
            continue
        plain = params.get(f"{base}*{number}")
        if plain is None:
            break
        sections.append((plain, False))
    if sections:
        return _decode_2231(sections)
    return params.get(base)


def _decode_2231(sections: list[tuple[str, bool]]) -> str:
    charset = "utf-8"
    out = bytearray()
    for index, (text, encoded) in enumerate(sections):
        if not encoded:
            out += _to_bytes(text)
            continue
        payload = text
        if index == 0:
            cs, quote1, rest = text.partition("'")
            _language, quote2, rest = rest.partition("'")
            if quote1 and quote2:
                charset = cs.strip().lower() or charset
                payload = rest
        out += unquote_to_bytes(_to_bytes(payload))
    if charset not in _CHARSETS:
        charset = "utf-8"
    return out.decode(charset, "replace")
