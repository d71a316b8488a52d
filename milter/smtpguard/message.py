"""What the content checks know about the message while it streams in.

The pipeline feeds every header and body chunk into one :class:`MessageState` per
transaction; content checks only read it. Nothing here keeps the body: sizes and line
lengths are counted, the MIME structure is followed by
:class:`~smtpguard.content.mime.MimeWalker` with bounded memory, and only the headers
the walker needs (``Content-*``) are kept, up to a cap.
"""

from __future__ import annotations

import re

from smtpguard.content.mime import MimeWalker

# RFC 5322 §2.1.1: a line is at most 998 octets, excluding the CRLF.
MAX_LINE = 998
#: Long header fields a message keeps (MessageState.long_fields): the first of them
#: refuses the message (a trusted client's only with line_syntax.check_trusted).
_LONG_FIELDS_KEPT = 100
# More than MAX_LINE octets of one line. Only LF ends a line (RFC 5322 §2.1.1: CRLF;
# a bare LF is taken too): a bare CR is an octet of the line, or a long line split by
# bare CRs would pass. The CR of a CRLF is not counted; one at the end of the chunk
# may be that, and is left to the next. Tried at line starts only: unanchored, every
# octet of a line just under the limit began a scan of it (review rev47: 16 s of CPU
# for 50 MB of 997-octet lines).
_LONG_LINE = re.compile(rb"(?m)^[^\n]{%d}(?:[^\r\n]|\r(?=[^\n]))" % MAX_LINE)
# Headers kept for the MIME walker: only these top-level fields matter, and at most
# this many octets of them (name, value and a per-entry overhead).
_MIME_HEADERS = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})
_MAX_KEPT_HEADER_BYTES = 64 * 1024
_ENTRY_OVERHEAD = 64
#: Of each name the first is kept, of Content-Disposition this many: readers differ on
#: which of several counts, and any may make the body an attachment (review rev67 F6).
_KEPT_COPIES = {"content-disposition": 8}


class UnspacedValue(str):
    """A header field value written with no space after the colon (``Name:value``).

    The MTA removes that one space before a milter sees the field, unless the milter
    negotiated SMFIP_HDR_LEADSPC; the adapter does, removes the space itself and marks
    the values that had none, so the field's first line is counted as it was written.
    It reads as the plain string everywhere else, which is what every check wants.
    """

    __slots__ = ()


def as_read(written: str) -> str:
    """A field's value as written after the colon, as the checks read it: without the
    one space the MTA would remove (Postfix and Sendmail remove exactly one, never a
    tab), marked :class:`UnspacedValue` where there was none."""
    return written[1:] if written[:1] == " " else UnspacedValue(written)


def field_octets(name: str, value: str) -> tuple[int, int]:
    """A field's octets as it will be written (``Name: value`` CRLF, ``Name:value`` for
    an :class:`UnspacedValue`, folded lines CRLF) and its longest line's, CRLF aside."""
    # "Name: " precedes the first line; "Name:" where the field had no space.
    head = len(name) + (1 if isinstance(value, UnspacedValue) else 2)
    if "\n" not in value and value.isascii():
        # One line of ASCII, by far the common case: characters are octets.
        length = head + len(value)
        return length + 2, length
    lines = value.replace("\r\n", "\n").split("\n")
    lengths = (
        [len(line) for line in lines] if value.isascii() else [len(_octets(line)) for line in lines]
    )
    lengths[0] += head
    return sum(lengths) + 2 * len(lengths), max(lengths)


class MessageState:
    def __init__(
        self, *, track_mime: bool, max_mime_depth: int, max_mime_parts: int = 10000
    ) -> None:
        self.size = 0
        self.headers = 0
        #: Fields only counted (:meth:`count_field`), which no check read.
        self.unread_fields = 0
        self.received = 0
        self.nul = False
        self.long_line = False
        #: Header fields with a line over MAX_LINE octets, by (name, value): the longest.
        self.long_fields: dict[tuple[str, str], int] = {}
        #: The first Message-ID field's value (blanks stripped, at most MAX_LINE
        #: characters), or None: what tells a retry of a message from another message.
        self.message_id: str | None = None
        self._track_mime = track_mime
        self._max_mime_depth = max_mime_depth
        self._max_mime_parts = max_mime_parts
        self._content_headers: list[tuple[str, str]] = []
        self._content_seen: dict[str, int] = {}
        self._content_cut = False
        self._kept = 0
        self._carry = 0  # length of the body line that is still open
        self._carry_cr = False  # and whether it ends in a CR (maybe that of a CRLF)
        self.mime: MimeWalker | None = None

    def feed_header(self, name: str, value: str) -> None:
        """Count a header as it will be written: ``Name: value`` CRLF (``Name:value``
        for an :class:`UnspacedValue`), folded lines CRLF."""
        octets, longest = field_octets(name, value)
        self.size += octets
        if longest > MAX_LINE and len(self.long_fields) < _LONG_FIELDS_KEPT:
            self.long_fields[name, value] = longest
        self.headers += 1
        if "\x00" in value or "\x00" in name:
            self.nul = True
        lowered = name.lower()
        if lowered == "received":
            self.received += 1
        elif lowered == "message-id":
            if self.message_id is None:
                self.message_id = value.strip()[:MAX_LINE]
        elif self._track_mime and lowered in _MIME_HEADERS:
            seen = self._content_seen[lowered] = self._content_seen.get(lowered, 0) + 1
            if seen > _KEPT_COPIES.get(lowered, 1):
                # Only the first copies count (the walker reads no other): later ones
                # cannot use up the budget and push out a Content-Type that comes after
                # them (found by review: the attachment went uncounted). A disposition
                # past those kept may be the one a reader takes: the body is then read
                # whole (review rev70 N2: the ninth "attachment" went unseen).
                if lowered in _KEPT_COPIES:
                    self._content_cut = True
                return
            cost = len(name) + len(value) + _ENTRY_OVERHEAD
            if self._kept + cost <= _MAX_KEPT_HEADER_BYTES:
                self._content_headers.append((name, value))
                self._kept += cost
            else:
                self._content_cut = True

    def count_field(self, name: str, value: str) -> None:
        """A field read past the message's verdict (or past limits.max_header_fields):
        only its size is counted, for the summary line's ``size=`` (review rev174 F1:
        a message refused at its 101st field was logged as its first 1,071 octets)."""
        self.size += field_octets(name, value)[0]
        self.unread_fields += 1

    @property
    def sizes(self) -> SizeOnly:
        """This message fed only its size (see :meth:`count_field`)."""
        return SizeOnly(self)

    def end_of_headers(self) -> None:
        self.size += 2  # the empty line between header and body
        if self._track_mime:
            self.mime = MimeWalker(
                self._content_headers,
                max_depth=self._max_mime_depth,
                max_parts=self._max_mime_parts,
                top_headers_cut=self._content_cut,
            )
            self._content_headers = []

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if not self.nul and b"\x00" in chunk:
            self.nul = True
        if not self.long_line:
            self._scan_lines(chunk)
        if self.mime is not None:
            self.mime.feed(chunk)

    def _scan_lines(self, chunk: bytes) -> None:
        first = chunk.find(b"\n")
        if first < 0:
            self._carry += len(chunk)
            if chunk:
                self._carry_cr = chunk.endswith(b"\r")
            self.long_line = self._carry - self._carry_cr > MAX_LINE
            return
        # The line the previous chunks left open ends here; a CR before its LF (in
        # this chunk, or the last octet of the previous one) is not part of it.
        cr = chunk[first - 1] == 0x0D if first else self._carry_cr
        if self._carry + first - cr > MAX_LINE or _LONG_LINE.search(chunk):
            self.long_line = True
            return
        self._carry = len(chunk) - chunk.rfind(b"\n") - 1
        self._carry_cr = chunk.endswith(b"\r")

    def close(self) -> None:
        if self.mime is not None:
            self.mime.close()

    @property
    def largest_attachment(self) -> int:
        return self.mime.largest_attachment if self.mime is not None else 0


class SizeOnly:
    """A message fed past its verdict: what streams in is counted in its size (the
    summary line's ``size=``), never read."""

    __slots__ = ("_message",)

    def __init__(self, message: MessageState) -> None:
        self._message = message

    def feed_header(self, name: str, value: str) -> None:
        self._message.count_field(name, value)

    def end_of_headers(self) -> None:
        self._message.size += 2

    def feed(self, chunk: bytes) -> None:
        self._message.size += len(chunk)


def _octets(text: str) -> bytes:
    # pymilter hands undecodable header bytes over as surrogate escapes.
    return text.encode("utf-8", "surrogateescape")
