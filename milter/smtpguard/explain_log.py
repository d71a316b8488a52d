"""``smtpguard explain --log``: every bounce and deferral of a mail log, or of a folder of
DSN messages, explained and summed up by category, fix and remote domain.

What is read:

* **Postfix** delivery lines (``smtp``, ``lmtp``, ``local``... agents):
  ``to=<RCPT>, ... dsn=X.Y.Z, status=bounced|deferred (DETAIL)``. When DETAIL has the
  remote server's reply (``host H[IP] said: 550 ... (in reply to RCPT TO command)``)
  (or ``refused to talk to me: 554 ...`` for a greeting) that reply is explained;
  otherwise DETAIL with the logged enhanced code in front
  ("4.4.1 connect to ...: Connection timed out").
* **Sendmail**: ``to=RCPT[,RCPT...], ... dsn=X.Y.Z, stat=TEXT`` with a 4.x.x or 5.x.x
  code (``stat=Deferred: 451 4.7.1 ...`` loses its ``Deferred:``); one event per
  recipient.
* **Exim** main log: ``ID ** RCPT ...`` (bounce) and ``ID == RCPT ...`` (deferral),
  the flag right after a message id (``1tI9Xz-000ABC-12``, or Exim 4.97's longer
  ``1tI9Xz-00000000ABC-1234``): a ``==`` in a logged Subject is none. The reply after
  ``SMTP error from remote mail server after COMMAND:`` when there is one, otherwise
  the text after the last ``: `` (``Unrouteable address``).
* **A folder of DSN messages** (RFC 3464; one message per file, e.g. a Maildir's
  ``new/`` and ``cur/``, read recursively): each per-recipient block of the
  ``message/delivery-status`` part (or RFC 6533's ``message/global-delivery-status``
  of an SMTPUTF8 bounce) with ``Action: failed`` (bounce) or ``delayed`` (deferral),
  its ``Diagnostic-Code`` (``smtp; 550 ...``) or else its ``Status``.

A log compressed with gzip, bzip2 or xz (a rotated ``mail.log.2.gz``, or piped in) is
read through its decompressor, and so is a compressed DSN file (Dovecot's zlib plugin);
zstd, which the standard library cannot read, is refused by name. Lines end with LF,
CRLF or a lone CR. Every other line is counted and skipped, except Postfix's
``status=expired, returned to sender``: it names neither recipients nor a reason, so
the recipients of that queue id deferred earlier in the log and not delivered since are
bounced with their last deferral's reply (:class:`PostfixQueue`). Deferrals are counted
per attempt: a message retried five times is five deferral events; an Exim ``defer
(-51|-52|-53): retry time not reached`` and a Postfix ``delivery temporarily
suspended`` (qmgr deferring a destination already known to be down) attempted nothing,
and are no deferral. A bounced event is permanent whatever its reply's code
(:meth:`Explainer.returned`).

Every text of an event (recipient, domain, reply) has its control characters (ESC,
BEL, NUL, C1, tab, line breaks) replaced by a space: a remote server or a mailed
bounce chooses those bytes, and printed raw they would drive the operator's terminal.

Memory stays bounded whatever the input's size: lines are read one at a time, cut at
:data:`MAX_LINE_BYTES`; DSN files are read up to :data:`MAX_MESSAGE_BYTES` (the
delivery-status part comes before the returned message); explanations are cached per
distinct reply (an LRU of :data:`CACHE_SIZE` replies of at most :data:`MAX_REPLY_CHARS`
characters); at most :data:`MAX_DOMAINS` remote
domains are counted one by one, later new ones as ``(other domains)``.

The cache key is the reply with its volatile parts replaced (the local part of
addresses, IPv4 addresses, long tokens with digits such as queue ids and Gmail's
trailer, and an unreachable host's name down to its provider's domain: ``connect to
alt1.aspmx.l.google.com[...]`` becomes ``connect to mx.google.com[...]``), so that "550
5.1.1 <alice@a.example>: User unknown" and the same reply for bob are explained once.
Reply codes that open the lines of a multi-line reply are kept. The explainer ignores
addresses when it matches keywords, so the replaced text is explained as the original
would be (tests/test_explain_log.py checks that on every file of the explain corpus,
tests/data/explain/).
"""

from __future__ import annotations

import base64
import binascii
import bz2
import contextlib
import dataclasses
import errno
import gzip
import io
import json
import lzma
import os
import quopri
import re
import shlex
import stat
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple, Protocol, TextIO, TypeVar, cast

from cachetools import LRUCache

from smtpguard.explain import MAX_LINE_CHARS, Knowledge, clean_input, json_ascii

#: A longer line is cut there (and the rest of it skipped); no log line is that long.
MAX_LINE_BYTES = 64 * 1024
_CHUNK_BYTES = 64 * 1024
#: Bytes read of each DSN file: enough for the headers, the human part and the
#: delivery-status part, which come before the returned message.
MAX_MESSAGE_BYTES = 1024 * 1024
#: Parts nested deeper in a DSN file: not a DSN. A bounce is multipart/report with the
#: delivery-status part one level down; forwarded as an attachment, a few more.
MAX_NESTING = 12
#: Bytes of a DSN file parsed at most at this many multipart or message/ content types:
#: refused before the (recursive) parser runs into Python's recursion limit.
MAX_CONTAINERS = 200
#: explain reads at most this much of a reply line (explain.MAX_LINE_CHARS); longer
#: replies are cut here, which bounds the cache's keys too.
MAX_REPLY_CHARS = MAX_LINE_CHARS
#: An address (RFC 5321 allows 256 octets in a path); longer is cut.
MAX_FIELD_CHARS = 512
CACHE_SIZE = 4096
MAX_DOMAINS = 10_000
OTHER_DOMAINS = "(other domains)"
NO_DOMAIN = "(none)"
#: Rows of the text summary's domain table (JSON has all counted domains).
TOP_DOMAINS = 20

Status = Literal["bounced", "deferred"]

# A quick test on the raw bytes before any decoding: most lines of a mail log are
# neither bounces nor deferrals.
_CANDIDATE = re.compile(
    rb"status=(?:bounced|deferred) |dsn=[45]\.|[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}"
    rb" (?:\*\*|==) "
)
# Parsing is str.find and anchored matches only: linear in the line whatever it holds
# (an unanchored ".*?" between two markers is quadratic on a line that repeats the first).
_DSN = re.compile(r"[45]\.\d{1,3}\.\d{1,3}(?=,)")
#: Postfix writes them together: "dsn=X.Y.Z, status=WORD (".
_DSN_STATUS = re.compile(
    r"(?P<dsn>[245]\.\d{1,3}\.\d{1,3}), status=(?P<status>[a-z]+) \(", re.ASCII
)
_POSTFIX_SAID = (" said: ", " refused to talk to me: ")
_POSTFIX_SUSPENDED = "delivery temporarily suspended: "
_POSTFIX_EXPIRED = b" status=expired, returned to sender"
_POSTFIX_SENT = b" status=sent ("
_POSTFIX_REMOVED = b": removed"
_TO = b": to=<"
#: pickup's line for a message requeued with ``postsuper -r``: its new queue id
#: (``postfix/pickup[PID]: NEWID: uid=N from=<SENDER> orig_id=OLDID``).
_ORIG_ID = b"> orig_id="
_REQUEUED = re.compile(
    r"(?P<new>[0-9A-Za-z]+): uid=\d+ from=<.*> orig_id=(?P<old>[0-9A-Za-z]+)", re.ASCII | re.DOTALL
)
_IN_REPLY_TO = " (in reply to "
# A queue run that found the address's, transport's or hosts' retry time not reached
# (ERRNO_RRETRY, ERRNO_LRETRY, ERRNO_HRETRY in Exim's exim.h) attempted no delivery.
_EXIM_RETRY_WAIT = re.compile(
    r"\bdefer \(-5[123]\): retry time not (?:yet )?reached", re.IGNORECASE | re.ASCII
)
_EXIM_SMTP = "SMTP error from remote mail server after "
_CONTAINER = re.compile(rb"(?im)^content-type:[ \t]*(?:multipart|message)/")
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
# RFC 3464 section 2.1: the blocks of a delivery-status part are separated by blank lines.
_BLANK_LINE = re.compile(rb"\r?\n(?:[ \t]*\r?\n)+")
# explain's clean_input keeps tab and line ends (a pasted reply has them); an event is
# one line of --events output, one tab-separated field each.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f]")
_CODE_START = re.compile(r"[245]\d\d[ -]|[245]\.\d{1,3}\.\d{1,3} ")
_VOLATILE = re.compile(
    # Postfix's own words for a server it could not reach: the host is the recipient's.
    r"(?P<host>(?<=connect to )[\w.-]+(?=\[)|(?<=ame service error for name=)[\w.-]+(?= type=))"
    # The local part of an address; its domain may name the provider (qq.com, 163.com).
    # Every run starts at its left boundary: started inside a word, the scan to the
    # word's end would repeat at each position (quadratic on a long word).
    r"|(?P<local>(?<=<)[^<>\s@]*(?=@[^<>\s]*>)"
    r"|(?<![\w.+%=-])[\w.+%=-]+(?=@[\w-]+(?:\.[\w-]+)+))"
    r"|(?P<ip>(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.]))"
    # Queue ids, Gmail's and Microsoft's trailers, time stamps; never a reply code that
    # opens a line of a multi-line reply ("554-ironport4...", "550-Verification").
    # A literal "\n" (how a joined multi-line reply marks its lines) is no part of one.
    # Vendors' reason codes (Orange's OFR006_102, Sophos's XGEMAIL_0011, SFR's
    # SFR_IN_101: capitals and digits joined by underscores, at most 4 digits last;
    # not MSGID_1733451550123, review rev102 Q1) are kept,
    # explain reads them; a random reference with an underscore (Mimecast's base64url
    # ids) is not one (review rev101 F5).
    r"|(?P<token>(?<![\w\\-])(?!\d{3}-)"
    r"(?![A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*_[0-9]{1,4}(?![\w-]))"
    r"(?=[\w-]*\d)[\w-]{10,}(?![\w-]))"
)
_PLACEHOLDERS = {
    "local": "user",
    "ip": "192.0.2.1",
    "token": "X0",
}


@dataclass(frozen=True, slots=True)
class Event:
    """One bounce or deferral of one recipient."""

    mta: str
    status: Status
    recipient: str
    #: The remote domain (the recipient's), lower case; "" when the log names none.
    domain: str
    #: What is explained: the remote server's reply, or the logged code and detail.
    reply: str
    #: Postfix's queue id of the message ("" for other sources): an expired message's
    #: recipients are found by it.
    queue_id: str = ""
    #: False for a Postfix deferral that attempted nothing (a destination already
    #: known to be down): remembered for the message's expiry, not counted.
    attempted: bool = True


@dataclass(frozen=True, slots=True)
class Verdict:
    """The part of an explanation the summary counts."""

    category: str
    fix: str
    permanent: bool
    server_family: str | None
    enhanced_code: str | None


#: Called with every event and its verdict as it is read (``--events``).
EventSink = Callable[[Event, Verdict], None]

# --- reading -------------------------------------------------------------------------


class ChunkReader(Protocol):
    def read1(self, size: int = -1, /) -> bytes: ...


def read_lines(stream: ChunkReader) -> Iterator[bytes]:
    """The lines of ``stream``, ended by LF, CRLF or a lone CR (as ``explain`` splits a
    pasted reply), each cut at :data:`MAX_LINE_BYTES` (the rest skipped).

    ``read1``, not ``read``: a line is handed on as soon as it arrives, so that ``tail
    -f mail.log | smtpguard explain --log - --events`` prints each event at once."""
    read1 = stream.read1
    pending = b""
    # Inside a line already cut: what comes up to its end is dropped.
    skipping = False
    # A cut line that ended in CR: an LF that starts the next chunk is its CRLF's.
    after_cr = False
    while chunk := read1(_CHUNK_BYTES):
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
            if not chunk:  # a read that gave that LF alone (a pipe, a file's last byte)
                continue
        after_cr = False
        lines = (pending + chunk).splitlines(keepends=True)
        # The last piece may go on in the next chunk, and so may a CR that ends it (a
        # CRLF split in two); only an LF surely ends it.
        pending = lines.pop()
        if pending.endswith(b"\n"):
            lines.append(pending)
            pending = b""
        for line in lines:
            if skipping:
                skipping = False
                continue
            yield line[:MAX_LINE_BYTES]
        if len(pending) >= MAX_LINE_BYTES:
            if not skipping:
                yield pending[:MAX_LINE_BYTES]
            # A line ended by its CR (a lone CR, or the CR of a CRLF split between two
            # chunks) is over: the next chunk starts a new line.
            after_cr = pending.endswith(b"\r")
            skipping = not after_cr
            pending = b""
    if pending and not skipping:
        yield pending[:MAX_LINE_BYTES]


#: The programs whose lines record deliveries: Postfix's delivery agents and qmgr (the
#: last part of a syslog_name such as postfix-out/smtp), Sendmail's names.
_POSTFIX_AGENTS = frozenset(
    {"smtp", "lmtp", "local", "virtual", "pipe", "error", "retry", "discard", "qmgr"}
)
_SENDMAIL_TAGS = frozenset({"sm-mta", "sendmail", "sm-msp-queue"})
#: Who writes "QID: removed": qmgr, and postsuper -d.
_REMOVERS = frozenset({"qmgr", "postsuper"})
#: Who writes an expired message's line, and a requeued one's (postsuper -r).
_QMGR = frozenset({"qmgr"})
_PICKUP = frozenset({"pickup"})
#: A Postfix or Sendmail message about a queued message: its queue id first.
_QUEUE_ID = re.compile(r"[0-9A-Za-z]+: ", re.ASCII)
#: An Exim line: its own timestamp (and pid) when it writes the log itself, then the
#: message id and the flag. Any other " ** " (a logged Subject, a Dovecot line) is none.
_EXIM_LINE = re.compile(
    r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{3})?(?: [+-]\d{4})? )?(?:\[\d+(?::\d+)?\] )?"
    r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4} (\*\*|==) ",
    re.ASCII,
)


def parse_log_line(raw: bytes) -> list[Event]:
    """The events one log line records: none for most lines."""
    if _CANDIDATE.search(raw) is None:
        return []
    line = raw.decode("utf-8", "replace").rstrip("\r\n")
    tag, message = _syslog_split(line)
    return _postfix(tag, message) or _sendmail(tag, message) or _exim(tag, message)


#: A syslog head: an optional <PRI>, the timestamp (BSD's, or RFC 3339's as rsyslog and
#: journalctl -o short-iso write it), the host, the program and its pid.
_HEAD = re.compile(
    r"(?:<\d{1,3}>)?(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?"
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?"
    # journalctl -o short-full, short-unix, short-monotonic and short-delta (systemd
    # 252's "[%5lu.%06lu <%5lu.%06lu%s>]", "*" before ">" for an unreliable delta).
    r"|[A-Z][a-z]{2} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z]{2,5}|\d{9,10}\.\d+"
    r"|\[ *\d+\.\d+(?: < *\d+\.\d+[ *]>)?\])"
    r" (?:\S+ )?(?P<tag>[^\s\[\]]+)\[\d+\]: ",
    re.ASCII,
)
#: What text before a head may not hold: a Postfix message has "QID: " or
#: "warning: ... [IP]: " before any client's text, smtpguard's values are in '...', an
#: address in <...>; a shipper's prefix (host=mx, Loki's {filename="..."}) has none.
_NOT_BEFORE_A_HEAD = ("<", "'", ": ")
#: RFC 5424's head (rsyslog's RSYSLOG_SyslogProtocol23Format, syslog-ng's
#: syslog-protocol): <PRI>1 TIMESTAMP HOST APP PROCID MSGID STRUCTURED-DATA. A "]"
#: (a backslash, a double quote) in a parameter's value is escaped with a backslash (its 6.3.3).
_HEAD_5424 = re.compile(
    r"<\d{1,3}>1 \S+ \S+ (?P<tag>\S+) \S+ \S+ (?:-|(?:\[(?:[^\]\\]|\\.)*\])+) \ufeff?"
)


def _syslog_split(line: str) -> tuple[str | None, str]:
    """A syslog line's program (its tag: ``postfix/smtp`` of ``... postfix/smtp[12]:``)
    and message; (None, line) for a line without one (``journalctl -o cat``, Exim's own
    log). The head is the first that text before it does not quote: a client's text
    comes after it (review rev168 F1: a HELO or a quoted sender holding a whole delivery
    line was read as a bounce), and what a shipper writes before it (``host=mx``,
    Loki's ``{filename="..."}``) holds none of :data:`_NOT_BEFORE_A_HEAD`, which text
    before a client's always does (review rev170 F4, rev171 F1)."""
    found = _HEAD_5424.match(line)
    if found is None:
        found = _HEAD.search(line)
        if found is not None and any(s in line[: found.start()] for s in _NOT_BEFORE_A_HEAD):
            # In a line without a head of its own (journalctl -o cat) a client's text
            # (a non-SMTP command, a Subject header_checks logs) may hold one (review
            # rev171 F1).
            found = None
    if found is not None:
        return found["tag"], line[found.end() :]
    # A head without a timestamp: what precedes the first "]: ", holding nothing a
    # message would.
    end = line.find("]: ")
    if end < 0:
        return None, line
    head = line[:end]
    if any(c in head for c in "\"'=<") or ": " in head:
        return None, line
    bracket = head.rfind("[")
    if bracket < 0 or not head[bracket + 1 :].isdigit():
        return None, line
    return head[head.rfind(" ", 0, bracket) + 1 : bracket], line[end + 3 :]


def _postfix_message(raw: bytes, programs: frozenset[str]) -> str | None:
    """The message of a line one of Postfix's ``programs`` wrote (the last part of its
    syslog_name), or of a line without a head; None for any other line."""
    tag, message = _syslog_split(raw.decode("utf-8", "replace").rstrip("\r\n"))
    if tag is not None and tag.rpartition("/")[2] not in programs:
        return None
    return message


class _QueueLine(NamedTuple):
    """A Postfix message about one address of a queued message."""

    queue_id: str
    #: The ``to=`` or ``from=`` address as written.
    address: str
    #: Where the fields after it (and after an ``orig_to=<...>, ``) start.
    fields: int


def _queued(line: str, field: str) -> _QueueLine | None:
    """A Postfix message that is ``QID: field<ADDRESS>, ...``, the addresses read to
    their ends (a quoted local part may hold ``>, status=...``: review rev170 F2);
    None for any other."""
    head = _QUEUE_ID.match(line)
    if head is None or not line.startswith(field, head.end()):
        return None
    start = head.end() + len(field)
    close = _address_end(line, start)
    if close < 0:
        return None
    at = close + 2
    if line.startswith(" orig_to=<", at):
        orig_close = _address_end(line, at + len(" orig_to=<"))
        if orig_close < 0:
            return None
        at = orig_close + 2
    return _QueueLine(line[: head.end() - 2], line[start:close], at)


def _dsn_status(line: str, queued: _QueueLine) -> re.Match[str] | None:
    """The ``dsn=X.Y.Z, status=WORD (`` of a delivery line: the first dsn= after the
    address, whose fields (relay=, delay=, delays=, conn_use=) hold no text a client
    chose; never a status in the reply that follows (review rev173 F1: a remote server
    echoing a recipient "q status=bounced (x"@y made deferrals bounces)."""
    at = line.find(" dsn=", queued.fields)
    return _DSN_STATUS.match(line, at + 5) if at >= 0 else None


def _postfix(tag: str | None, line: str) -> list[Event]:
    if tag is not None and tag.rpartition("/")[2] not in _POSTFIX_AGENTS:
        return []
    queued = _queued(line, "to=<")
    found = _dsn_status(line, queued) if queued is not None else None
    if (
        queued is None
        or found is None
        or found["dsn"][0] == "2"
        or found["status"] not in ("bounced", "deferred")
    ):
        return []
    detail = line[found.end() :].rstrip()
    # A line a syslog relay cut (RFC 3164's 1024 bytes) has lost its ")": what is left
    # of the detail is still the reason, as for a cut Exim or Sendmail line.
    detail = detail.removesuffix(")")
    for said in _POSTFIX_SAID:
        at = detail.find(said)
        if at >= 0:
            reply = detail[at + len(said) :]
            cut = reply.rfind(_IN_REPLY_TO)
            if cut >= 0 and reply.endswith(")"):
                reply = reply[:cut]
            break
    else:
        reply = f"{found['dsn']} {detail}"
    # qmgr's deferral of a recipient whose destination is already marked down
    # (qmgr_defer_recipient): no attempt, as Exim's "retry time not reached".
    attempted = not detail.startswith(_POSTFIX_SUSPENDED)
    status: Status = "bounced" if found["status"] == "bounced" else "deferred"
    return [_event("postfix", status, queued.address, reply, queued.queue_id, attempted=attempted)]


def _address_end(line: str, at: int) -> int:
    """Where the address that starts at ``at`` ends (its ``>,``): a quoted local part
    (``"a>, status=bounced (x"@y``) is read past, as Postfix writes it, backslashes
    escaping; -1 if there is none."""
    if line.startswith('"', at):
        i = at + 1
        while i < len(line) and line[i] != '"':
            i += 2 if line[i] == "\\" else 1
        at = i
    return line.find(">,", at)


def _outside_quotes(line: str, needle: str, at: int) -> int:
    """The first ``needle`` from ``at`` on that is outside a quoted string (Sendmail's
    ``to=<"a, dsn=5.7.1, stat=x"@y>,<b@z>, delay=...``); -1 if none."""
    quoted = False
    i = at
    while i < len(line):
        c = line[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif line.startswith(needle, i):
            return i
        i += 1
    return -1


def _expired(raw: bytes) -> str | None:
    """The queue id of qmgr's ``QID: from=<...>, status=expired, returned to sender``;
    None for any other line (review rev170 F3: a quoted sender holding the words, in
    qmgr's line of a message still queued, counted it as expired)."""
    line = _postfix_message(raw, _QMGR)
    queued = _queued(line, "from=<") if line is not None else None
    if line is None or queued is None or not line.startswith(" status=expired, ", queued.fields):
        return None
    return queued.queue_id


def _queue_id(raw: bytes, after: bytes) -> str | None:
    """The queue id of a Postfix line: the word just before ``after`` (": to=<",
    ": from=<", ": removed"); None when the line has no ``after``."""
    at = raw.find(after)
    if at < 0:
        return None
    return raw[raw.rfind(b" ", 0, at) + 1 : at].decode("ascii", "replace") or None


def _sendmail(tag: str | None, line: str) -> list[Event]:
    head = _QUEUE_ID.match(line)
    if (tag is not None and tag not in _SENDMAIL_TAGS) or head is None:
        return []
    if not line.startswith("to=", head.end()):
        return []
    start = head.end() - 1
    fields_end = _outside_quotes(line, ", ", start)
    dsn_at = line.find(" dsn=", fields_end)
    stat_at = line.find(", stat=", dsn_at)
    if min(start, fields_end, dsn_at, stat_at) < 0:
        return []
    dsn = _DSN.match(line, dsn_at + 5)
    if dsn is None or dsn.end() != stat_at:
        return []
    stat = line[stat_at + 7 :].strip()
    stat = stat.removeprefix("Deferred:").strip()
    code = dsn.group()
    reply = stat if _CODE_START.match(stat) else f"{code} {stat}"
    status: Status = "bounced" if code[0] == "5" else "deferred"
    # Several recipients of one delivery: "to=<a@x>,<b@y>, delay=...".
    rcpts = [r.strip().strip("<>") for r in line[start + 4 : fields_end].split(",")]
    return [_event("sendmail", status, r, reply) for r in rcpts if r]


def _exim(tag: str | None, line: str) -> list[Event]:
    if tag is not None and not tag.startswith("exim"):
        return []
    found = _EXIM_LINE.match(line)
    if found is None:
        return []
    rest = line[found.end() :].strip()
    rcpt, _, rest = rest.partition(" ")
    if rcpt.endswith(":"):
        rcpt, rest = rcpt[:-1], f": {rest}"
    status: Status = "bounced" if found.group(1) == "**" else "deferred"
    smtp = rest.find(_EXIM_SMTP)
    if smtp < 0 and status == "deferred" and _EXIM_RETRY_WAIT.search(rest):
        return []
    if smtp >= 0:
        # "after RCPT TO:<bob@example.net>: 550 ..." or "after end of data: 550 ...".
        after = rest[smtp + len(_EXIM_SMTP) :]
        # "after MAIL FROM:<a@b.example> SIZE=1234: 550 ...": the command's parameters
        # come between the address and the reply.
        angle = after.find(":<")
        colon = after.find(": ")
        if angle >= 0 and (colon < 0 or angle < colon):
            close = after.find(">", angle)
            colon = after.find(": ", close) if close >= 0 else colon
        reply = after[colon + 2 :] if colon > 0 else after
    else:
        text = rest.rsplit(": ", 1)[-1] if ": " in rest else rest
        # No reply code: the class comes from the log's own verdict.
        reply = f"{'5' if status == 'bounced' else '4'}.0.0 {text}"
    return [_event("exim", status, rcpt, reply)]


def _event(
    mta: str,
    status: Status,
    recipient: str,
    reply: str,
    queue_id: str = "",
    *,
    attempted: bool = True,
) -> Event:
    # "Final-Recipient: rfc822; <bob@example.net>": the brackets are no part of it.
    rcpt = _clean(recipient).strip().removeprefix("<").removesuffix(">").strip()
    domain = rcpt.rpartition("@")[2].strip().rstrip(".").lower() if "@" in rcpt else ""
    return Event(
        mta,
        status,
        rcpt[:MAX_FIELD_CHARS],
        domain[:MAX_FIELD_CHARS],
        _clean(reply).strip()[:MAX_REPLY_CHARS],
        # A queue id is letters and digits; anything else is cleaned as any text.
        queue_id if queue_id.isalnum() or not queue_id else _clean(queue_id)[:MAX_FIELD_CHARS],
        attempted,
    )


def _clean(text: str) -> str:
    """``text`` fit to print: surrogates (bytes that were not UTF-8) as U+FFFD, control
    characters as a space. The log's writer or a bounce's sender chose them; ESC and BEL
    printed raw would drive the reader's terminal (colours, title, hidden text)."""
    return _UNPRINTABLE.sub(" ", clean_input(text))


def dsn_events(message: Message) -> Iterator[Event]:
    """The events of one DSN message: its per-recipient blocks that failed or were
    delayed (RFC 3464 section 2.3). A message nested deeper than :data:`MAX_NESTING`
    has none."""
    for part in _status_parts(message) or ():
        # The first block is about the message; the others are one recipient each.
        for block in _blocks(part)[1:]:
            action = _field(block, "Action").lower()
            if action not in ("failed", "delayed"):
                continue
            status: Status = "bounced" if action == "failed" else "deferred"
            recipient = _typed(
                _field(block, "Final-Recipient") or _field(block, "Original-Recipient")
            )
            diagnostic = _typed(_field(block, "Diagnostic-Code"))
            code = _field(block, "Status")
            reply = diagnostic or code
            if diagnostic and code and not _CODE_START.match(diagnostic):
                reply = f"{code} {diagnostic}"
            yield _event("dsn", status, recipient, reply)


def _status_parts(message: Message) -> list[Message] | None:
    """The delivery-status parts of ``message`` in the order of ``Message.walk``, or
    None when its containers nest deeper than :data:`MAX_NESTING`.

    Of a multipart/report only its own status part counts: its returned message (RFC
    3462's third part) is not walked, for when a bounce bounced that is the first
    bounce, whose recipients are not this one's. Other containers are walked, so that a
    bounce forwarded as an attachment is found. A loop, not ``walk``'s recursion: a file
    of a thousand nested message/rfc822 parts is no DSN, not a RecursionError."""
    out: list[Message] = []
    stack = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        ctype = part.get_content_type()
        if ctype in _STATUS_TYPES:
            out.append(part)
            continue
        if not part.is_multipart():
            continue
        if depth >= MAX_NESTING:
            return None
        payload = part.get_payload()
        children = [c for c in payload if isinstance(c, Message)]
        if ctype == "multipart/report":
            out.extend(c for c in children if c.get_content_type() in _STATUS_TYPES)
        else:
            stack.extend((c, depth + 1) for c in reversed(children))
    return out


def _blocks(part: Message) -> list[Message]:
    """The blocks of a delivery-status part, each as header fields."""
    payload = part.get_payload()
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    encoded = encoding in ("base64", "quoted-printable")
    if part.get_content_type() == "message/delivery-status" and not encoded:
        # email parses this type into its blocks itself (RFC 3464 has it 7bit).
        return [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []
    # message/global-delivery-status (RFC 6533) email parses as any message/ type: the
    # first block as a message's header, the rest as its body, still in the part's
    # transfer encoding (8bit, or base64 or quoted-printable of UTF-8); so it parses an
    # encoded message/delivery-status into blocks of the encoded text (review rev163
    # F3: a base64 one gave no event, a quoted-printable one mojibake). Put together
    # again as bytes (compat32 keeps 8-bit bytes as surrogates; get_payload(decode=True)
    # hands them back unchanged), decoded and split at blank lines.
    raw = (
        b"\n".join(_unparsed(inner) for inner in payload if isinstance(inner, Message))
        if isinstance(payload, list)
        else b""
    )
    if encoding == "base64":
        try:
            raw = base64.b64decode(raw)
        except binascii.Error:
            return []
    elif encoding == "quoted-printable":
        raw = quopri.decodestring(raw)
    parser = BytesHeaderParser(policy=compat32)
    return [parser.parsebytes(block + b"\n") for block in _BLANK_LINE.split(raw.strip()) if block]


def _unparsed(inner: Message) -> bytes:
    """A block email parsed as a message, as the bytes it was parsed from."""
    head = "".join(f"{name}: {value}\n" for name, value in inner.raw_items())
    body = inner.get_payload(decode=True)
    return (
        head.encode("ascii", "surrogateescape") + b"\n" + (body if isinstance(body, bytes) else b"")
    )


def _field(block: Message, name: str) -> str:
    # The raw value: folded fields come with their line breaks, raw 8-bit bytes (UTF-8
    # from a Chinese server, say) as surrogates, which _shown turns back into text.
    # (``get`` would hand a Header object that prints those bytes as U+FFFD.)
    wanted = name.lower()
    for key, value in block.raw_items():
        if key.lower() == wanted:
            return _shown(" ".join(str(value).split()))
    return ""


def _typed(value: str) -> str:
    """``rfc822; bob@example.com`` -> ``bob@example.com``; ``smtp; 550 ...`` -> ``550 ...``."""
    kind, sep, rest = value.partition(";")
    return rest.strip() if sep and " " not in kind.strip() else value


@dataclass(frozen=True, slots=True)
class Linked:
    """A folder below a DSN folder that is a link: not followed (named on stderr)."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


@dataclass(frozen=True, slots=True)
class Unread:
    """A file or folder under a DSN folder that could not be read, and why."""

    why: str
    folder: bool = False


def read_dsn_folder(
    folder: Path,
) -> Iterator[tuple[Path, list[Event] | Unread | Linked | None]]:
    """Each file under ``folder`` (sorted, recursively) and its events; None for a file
    that is not a DSN message (no delivery-status part); :class:`Unread` for a file or
    a folder below ``folder`` that cannot be read. ``folder`` itself unreadable raises
    its OSError."""
    top = os.fspath(folder)
    real_top = folder.resolve()
    failed: list[OSError] = []

    def note(exc: OSError) -> None:
        # The folder asked for is the command's input: unreadable, it is an error
        # (exit 2) as a missing log is. A folder below it is one part of the input.
        if exc.filename == top:
            raise exc
        failed.append(exc)

    def unread_folders() -> Iterator[tuple[Path, Unread]]:
        while failed:
            exc = failed.pop(0)
            yield Path(os.fsdecode(exc.filename or "")), Unread(_why(exc), folder=True)

    for root, dirs, files in os.walk(folder, onerror=note):
        # os.walk reports a subfolder it cannot list when it gets to it, just before
        # the next folder it yields.
        yield from unread_folders()
        dirs.sort()
        for name in sorted(dirs):
            if os.path.islink(os.path.join(root, name)):
                # os.walk does not follow it: said (not counted as unreadable).
                yield Path(root, name), Linked()
        for name in sorted(files):
            path = Path(root, name)
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue  # a dangling link, a message moved on (Maildir's tmp/)
                yield path, Unread(_why(exc))
                continue
            # A link to a message of this folder would count that bounce twice; links
            # to messages elsewhere (a mairix or notmuch search folder) are read.
            if path.is_symlink() and _inside(path.resolve(), real_top):
                continue
            if stat.S_ISREG(mode):  # a FIFO or socket would block or fail
                yield path, _read_dsn(path)
    yield from unread_folders()


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _read_dsn(path: Path) -> list[Event] | Unread | None:
    # One unreadable file (no permission, a broken compressed one) does not end the
    # summary of the others.
    try:
        with path.open("rb") as raw:
            kind = _compression(raw)
            if kind == "zstd":
                return Unread("compressed with zstd, which cannot be read here")
            with _decompressed(raw, kind) as f:
                data = f.read(MAX_MESSAGE_BYTES)
    except EOFError:
        return Unread("compressed file ends early")
    except (lzma.LZMAError, zlib.error) as exc:
        return Unread(f"compressed file is corrupt ({exc})")
    except OSError as exc:
        # The decompressors' own errors carry no errno (gzip's "Not a gzipped file").
        return Unread(_why(exc) if exc.errno is not None else f"compressed file is corrupt ({exc})")
    return _dsn_file(data)


def _dsn_file(data: bytes) -> list[Event] | None:
    """The events of one DSN file's bytes; None when it is no DSN (see read_dsn_folder)."""
    # The email parser recurses once per nested part: a file that declares more
    # containers than any bounce has is refused before it can exhaust the stack.
    if len(_CONTAINER.findall(data)) > MAX_CONTAINERS:
        return None
    try:
        message = message_from_bytes(data, policy=compat32)
        if not _status_parts(message):
            return None
        return list(dsn_events(message))
    # Whatever one hostile or broken file makes the parser raise, the summary of the
    # other files goes on: that file is counted as no DSN.
    except Exception:  # noqa: BLE001
        return None


# --- explaining and counting ---------------------------------------------------------


def cache_key(reply: str) -> str:
    """``reply`` with its volatile parts replaced (see the module doc)."""
    return _VOLATILE.sub(_placeholder, reply)


def _placeholder(m: re.Match[str]) -> str:
    kind = m.lastgroup or "token"
    if kind == "host":
        # The provider's domain stays: it names the server family (google.com, qq.com).
        return "mx." + ".".join(m.group().split(".")[-2:])
    return _PLACEHOLDERS[kind]


class Explainer:
    """Explanations of replies, cached per :func:`cache_key` in a bounded LRU."""

    def __init__(self, knowledge: Knowledge, size: int = CACHE_SIZE) -> None:
        self.knowledge = knowledge
        self.cache: LRUCache[str, Verdict] = LRUCache(maxsize=size)
        self.computed = 0

    def returned(self, verdict: Verdict) -> Verdict:
        """The verdict of a message given back to its sender: whatever its reply's code
        (a 4xx deferral until the queue's lifetime ran out, a DSN's ``Status: 4.4.1``),
        nothing will retry it. The category's fix for a permanent reply, and where that
        is to wait, to ask the receiving side's administrator."""
        cat = self.knowledge.categories.get(verdict.category)
        fix = cat.fix if cat is not None else verdict.fix
        # A 5xx can say "wait" too: Exim's "retry timeout exceeded" and Exchange's
        # "550 4.4.7 QUEUE.Expired" are network failures, whose fix is to wait.
        if fix == "retry_later":
            fix = "contact_postmaster"
        if verdict.permanent and fix == verdict.fix:
            return verdict
        return dataclasses.replace(verdict, fix=fix, permanent=True)

    def verdict(self, reply: str) -> Verdict:
        key = cache_key(reply)
        found = self.cache.get(key)
        if found is None:
            exp = self.knowledge.explain(key)
            found = Verdict(
                exp.category, exp.fix, exp.permanent, exp.server_family, exp.enhanced_code
            )
            self.cache[key] = found
            self.computed += 1
        return found


@dataclass
class _Tally:
    bounced: int = 0
    deferred: int = 0

    def add(self, status: Status) -> None:
        if status == "bounced":
            self.bounced += 1
        else:
            self.deferred += 1

    @property
    def total(self) -> int:
        return self.bounced + self.deferred


@dataclass
class _DomainTally(_Tally):
    categories: Counter[str] = field(default_factory=Counter)


@dataclass
class Summary:
    """Counts of a whole input, by (category, fix), by fix and by remote domain."""

    source: str
    lines: int = 0
    messages: int = 0
    #: DSN files without a delivery-status part, or that could not be read.
    not_dsn: int = 0
    #: Folders below a DSN folder that could not be listed (their files are not counted).
    unreadable_folders: int = 0
    #: Files below a DSN folder that could not be read (counted in ``not_dsn`` too).
    unreadable: int = 0
    #: Postfix messages returned to their sender after their queue lifetime.
    expired: int = 0
    #: Postfix deferrals that attempted nothing (the destination already down).
    suspended: int = 0
    #: Postfix recipients deferred and not delivered, bounced or removed when the log
    #: ends (mail still queued), and their messages; bounded as PostfixQueue is.
    waiting: int = 0
    waiting_messages: int = 0
    #: False when recipients were forgotten for room: ``waiting`` is a lower bound.
    waiting_complete: bool = True
    #: The reading was stopped (Ctrl-C): the counts are of what was read until then.
    interrupted: bool = False
    totals: _Tally = field(default_factory=_Tally)
    by_category: dict[tuple[str, str], _Tally] = field(default_factory=dict)
    by_fix: dict[str, _Tally] = field(default_factory=dict)
    by_domain: dict[str, _DomainTally] = field(default_factory=dict)
    by_family: Counter[str] = field(default_factory=Counter)
    explained: int = 0

    def add(self, event: Event, verdict: Verdict) -> None:
        self.totals.add(event.status)
        key = (verdict.category, verdict.fix)
        tally = self.by_category.get(key)
        if tally is None:
            tally = self.by_category[key] = _Tally()
        tally.add(event.status)
        fix = self.by_fix.get(verdict.fix)
        if fix is None:
            fix = self.by_fix[verdict.fix] = _Tally()
        fix.add(event.status)
        domain = event.domain or NO_DOMAIN
        dom = self.by_domain.get(domain)
        if dom is None:
            if len(self.by_domain) >= MAX_DOMAINS:
                domain = OTHER_DOMAINS
                dom = self.by_domain.get(domain)
            if dom is None:
                dom = self.by_domain[domain] = _DomainTally()
        dom.add(event.status)
        dom.categories[verdict.category] += 1
        if verdict.server_family:
            self.by_family[verdict.server_family] += 1

    def to_dict(self, knowledge: Knowledge, lang: str) -> dict[str, object]:
        """The ``--json`` document (its keys are documented in README.md)."""
        return {
            "source": self.source,
            "lines": self.lines,
            "messages": self.messages,
            "not_dsn": self.not_dsn,
            "unreadable": self.unreadable,
            "unreadable_folders": self.unreadable_folders,
            "expired": self.expired,
            "suspended": self.suspended,
            "waiting": self.waiting,
            "waiting_messages": self.waiting_messages,
            "waiting_complete": self.waiting_complete,
            "interrupted": self.interrupted,
            "events": self.totals.total,
            "bounced": self.totals.bounced,
            "deferred": self.totals.deferred,
            "explained": self.explained,
            "by_category": [
                {
                    "category": category,
                    "title": _title(knowledge, category, lang),
                    "fix": fix,
                    **_counts(t),
                }
                for (category, fix), t in _ranked(self.by_category)
            ],
            "by_fix": [{"fix": fix, **_counts(t)} for fix, t in _ranked(self.by_fix)],
            "by_domain": [
                {
                    "domain": domain,
                    **_counts(t),
                    "top_category": t.categories.most_common(1)[0][0],
                }
                for domain, t in _ranked(self.by_domain)
            ],
            "by_server_family": dict(self.by_family.most_common()),
            "lang": lang,
        }

    def render_text(self, knowledge: Knowledge, lang: str) -> str:
        words = _WORDS[lang]
        notes = [
            _plural(words[key], count)
            for key, count in (
                ("not_dsn", self.not_dsn),
                ("unreadable", self.unreadable),
                ("unreadable_folders", self.unreadable_folders),
            )
            if count
        ]
        if self.messages or notes:
            what = _plural(words["messages"], self.messages)
            if notes:
                what += words["notes"].format(words["separator"].join(notes))
        else:
            what = _plural(words["lines"], self.lines)
        extra = [
            _plural(words[key], count)
            for key, count in (
                ("expired", self.expired),
                ("suspended", self.suspended),
                ("waiting" if self.waiting_complete else "waiting_at_least", self.waiting),
            )
            if count
        ]
        out = [
            ("" if not self.interrupted else words["interrupted"])
            + f"{_clean(self.source)}: {what};"
            f" {_plural(words['events'], self.totals.total)}"
            f" ({words['bounced']} {self.totals.bounced}, {words['deferred']}"
            f" {self.totals.deferred})"
            + (words["notes"].format(words["separator"].join(extra)) if extra else "")
        ]
        if not self.totals.total:
            return out[0]
        out += [
            "",
            *_table(
                [
                    words["category"],
                    "",
                    words["fix"],
                    words["bounced"],
                    words["deferred"],
                    words["total"],
                ],
                [
                    [
                        category,
                        _title(knowledge, category, lang),
                        fix,
                        t.bounced,
                        t.deferred,
                        t.total,
                    ]
                    for (category, fix), t in _ranked(self.by_category)
                ],
            ),
        ]
        out += [
            "",
            *_table(
                [words["fix"], words["bounced"], words["deferred"], words["total"]],
                [[fix, t.bounced, t.deferred, t.total] for fix, t in _ranked(self.by_fix)],
            ),
        ]
        domains = _ranked(self.by_domain)
        out += [
            "",
            *_table(
                [
                    words["domain"],
                    words["bounced"],
                    words["deferred"],
                    words["total"],
                    words["top_category"],
                ],
                [
                    [d, t.bounced, t.deferred, t.total, t.categories.most_common(1)[0][0]]
                    for d, t in domains[:TOP_DOMAINS]
                ],
            ),
        ]
        if len(domains) > TOP_DOMAINS:
            out.append(words["more_domains"].format(len(domains) - TOP_DOMAINS))
        return "\n".join(out)


_K = TypeVar("_K")
_T = TypeVar("_T", bound=_Tally)


def _plural(forms: str, count: int) -> str:
    """``"{} line|{} lines"`` -> "1 line", "2 lines"; a form without ``|`` is both."""
    one, _, many = forms.partition("|")
    return (one if count == 1 or not many else many).format(count)


def _title(knowledge: Knowledge, category: str, lang: str) -> str:
    cat = knowledge.categories.get(category)
    if cat is None:
        return category
    return cat.title.zh if lang == "zh" else cat.title.en


def _counts(t: _Tally) -> dict[str, int]:
    return {"bounced": t.bounced, "deferred": t.deferred, "total": t.total}


def _ranked(tallies: dict[_K, _T]) -> list[tuple[_K, _T]]:
    """Largest total first; ties in key order, so the output is stable."""
    return sorted(tallies.items(), key=lambda kv: (-kv[1].total, str(kv[0])))


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    """Columns padded to their widest cell (CJK characters count two); numbers right."""
    cells = [header, *[[str(c) for c in row] for row in rows]]
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(header))]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - _width(cell))
            parts.append(pad + cell if numeric[i] else cell + pad)
        lines.append("  ".join(parts).rstrip())
    return lines


def _width(text: str) -> int:
    return sum(2 if "\u2e80" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef" else 1 for ch in text)


_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "lines": "{} line|{} lines",
        "messages": "{} message|{} messages",
        "not_dsn": "{} not a DSN|{} not DSNs",
        "unreadable": "{} file not read|{} files not read",
        "unreadable_folders": "{} folder not read|{} folders not read",
        "expired": "{} message expired|{} messages expired",
        "suspended": "{} deferral without an attempt not counted"
        "|{} deferrals without an attempt not counted",
        "waiting": "{} recipient still deferred at the end|{} recipients still deferred at the end",
        "waiting_at_least": "at least {} recipient still deferred at the end (more than"
        " could be remembered)|at least {} recipients still deferred at the end (more than"
        " could be remembered)",
        "interrupted": "interrupted: ",
        "notes": " ({})",
        "separator": ", ",
        "events": "{} bounce or deferral|{} bounces and deferrals",
        "bounced": "bounced",
        "deferred": "deferred",
        "total": "total",
        "category": "category",
        "fix": "fix",
        "domain": "remote domain",
        "top_category": "top category",
        "more_domains": "... and {} more domains (--json lists them all)",
    },
    "zh": {
        "lines": "{} 行",
        "messages": "{} 封邮件",
        "not_dsn": "{} 封不是 DSN",
        "unreadable": "{} 个文件无法读取",
        "unreadable_folders": "{} 个文件夹无法读取",
        "expired": "{} 封邮件超期退回",
        "suspended": "{} 次未尝试投递的延迟未计入",
        "waiting": "{} 个收件人到日志末尾仍在延迟",
        "waiting_at_least": "至少 {} 个收件人到日志末尾仍在延迟（超出可记录的数量）",  # noqa: RUF001
        "interrupted": "已中断：",  # noqa: RUF001 - a Chinese colon in Chinese text
        "notes": "（{}）",  # noqa: RUF001 - Chinese brackets in Chinese text
        "separator": "，",  # noqa: RUF001 - a Chinese comma in Chinese text
        "events": "{} 次退信和延迟",
        "bounced": "退信",
        "deferred": "延迟",
        "total": "合计",
        "category": "类别",
        "fix": "处理",
        "domain": "对方域名",
        "top_category": "主要类别",
        "more_domains": "……另有 {} 个域名（--json 列出全部）",  # noqa: RUF001 - Chinese brackets
    },
}


# --- the command ---------------------------------------------------------------------


#: What is remembered of queued Postfix messages' deferrals for their expiry (recipient
#: and reply), in bytes; the messages deferred longest ago are forgotten first.
MAX_QUEUED_BYTES = 16 * 1024 * 1024
#: Recipients remembered per queued message.
MAX_QUEUED_RECIPIENTS = 1000


#: Bytes a remembered deferral takes besides its texts (its Event, strings and dict
#: entry): measured, so that MAX_QUEUED_BYTES is what the process holds.
_ENTRY_BYTES = 450


class _Waiting(dict[str, Event]):
    """A message's deferred recipients, with their size kept as they come and go (a
    message of 1000 recipients is not summed again at each deferral)."""

    size = 0

    def put(self, event: Event) -> None:
        old = self.get(event.recipient)
        if old is not None:
            self.size -= _entry_size(old)
        self[event.recipient] = event
        self.size += _entry_size(event)

    def drop(self, recipient: str) -> bool:
        old = self.pop(recipient, None)
        if old is None:
            return False
        self.size -= _entry_size(old)
        return True


def _entry_size(event: Event) -> int:
    return _ENTRY_BYTES + len(event.recipient) + len(event.reply)


def _waiting_size(waiting: _Waiting) -> int:
    return 200 + waiting.size


class _Queued(LRUCache[str, _Waiting]):
    """The remembered messages; counts the recipients forgotten for room, so that a
    count of what waits can say it is a lower bound (review rev101 F7)."""

    forgotten = 0

    def popitem(self) -> tuple[str, _Waiting]:
        key, recipients = super().popitem()
        self.forgotten += len(recipients)
        return key, recipients


class PostfixQueue:
    """The last deferral of each recipient of each Postfix message in the log that is not
    yet delivered or bounced. Postfix logs a message that expired (deferred until
    ``maximal_queue_lifetime``) as one ``status=expired, returned to sender`` line without
    its recipients; they are the ones deferred and never delivered since, each bounced
    with its last reason."""

    def __init__(
        self, max_bytes: int = MAX_QUEUED_BYTES, max_recipients: int = MAX_QUEUED_RECIPIENTS
    ) -> None:
        self.queued = _Queued(maxsize=max_bytes, getsizeof=_waiting_size)
        self.max_recipients = max_recipients
        #: Deferred recipients not remembered (over MAX_QUEUED_RECIPIENTS a message).
        self.dropped = 0

    def note(self, event: Event) -> None:
        if event.mta != "postfix" or not event.queue_id:
            return
        if event.status == "bounced":
            if event.queue_id in self.queued:
                self._forget(event.queue_id, self.queued[event.queue_id], event.recipient)
            return
        recipients = self.queued.get(event.queue_id)
        if recipients is None:
            recipients = _Waiting()
        elif event.recipient not in recipients and len(recipients) >= self.max_recipients:
            self.dropped += 1
            return
        recipients.put(event)
        self.queued[event.queue_id] = recipients

    def delivered(self, raw: bytes) -> None:
        """A ``status=sent`` line: that recipient is no longer waiting."""
        # Most delivered messages were never deferred: the queue id decides first.
        queue_id = _queue_id(raw, _TO)
        if queue_id is None or queue_id not in self.queued:
            return
        line = _postfix_message(raw, _POSTFIX_AGENTS)
        queued = _queued(line, "to=<") if line is not None else None
        found = _dsn_status(line, queued) if line is not None and queued is not None else None
        if queued is None or found is None or found["status"] != "sent":
            return
        rcpt = _clean(queued.address).strip()
        self._forget(queue_id, self.queued[queue_id], rcpt[:MAX_FIELD_CHARS])

    def removed(self, raw: bytes) -> None:
        """A ``QUEUEID: removed`` line (the message left the queue: delivered, bounced,
        or deleted with postsuper -d): none of its recipients waits any more, and the id
        may be given to another message later."""
        line = _postfix_message(raw, _REMOVERS)
        head = _QUEUE_ID.match(line) if line is not None else None
        if line is not None and head is not None and line[head.end() :] == "removed":
            self.queued.pop(line[: head.end() - 2], None)

    def requeued(self, raw: bytes) -> None:
        """pickup's ``NEWID: uid=... orig_id=OLDID`` (``postsuper -r``): the message
        goes on under its new id, and nothing waits under the old one (review rev101
        F6: it was counted as waiting for ever)."""
        line = _postfix_message(raw, _PICKUP)
        # pickup's line by its whole shape, the orig_id the last word (a sender address
        # may hold the words: review rev102 F6); a logged Subject is not one (rev173 F2).
        found = _REQUEUED.fullmatch(line.rstrip()) if line is not None else None
        if found is None:
            return
        recipients = self.queued.pop(found["old"], None)
        if recipients is not None:
            self.queued[found["new"]] = recipients

    @property
    def complete(self) -> bool:
        """Whether every deferred recipient was remembered (none forgotten for room)."""
        return not (self.queued.forgotten or self.dropped)

    def _forget(self, queue_id: str, recipients: _Waiting, recipient: str) -> None:
        if not recipients.drop(recipient):
            return
        if recipients:
            self.queued[queue_id] = recipients
        else:
            del self.queued[queue_id]

    def expired(self, queue_id: str) -> list[Event]:
        """The bounces of an expired message's recipients that the log deferred."""
        recipients = self.queued.pop(queue_id, None)
        if recipients is None:
            return []
        return [
            dataclasses.replace(e, status="bounced", attempted=True) for e in recipients.values()
        ]


def summarize_lines(
    lines: Iterable[bytes], explainer: Explainer, source: str, each: EventSink | None = None
) -> Summary:
    """The summary of a log's lines. Ctrl-C (KeyboardInterrupt) ends the reading: the
    summary is of what was read, marked ``interrupted``."""
    summary = Summary(source)
    queue = PostfixQueue()
    try:
        for raw in lines:
            summary.lines += 1
            events = parse_log_line(raw)
            if not events:
                # Tested here, not in a call: most lines of a log are neither.
                if _POSTFIX_SENT in raw:
                    queue.delivered(raw)
                    continue
                if _POSTFIX_REMOVED in raw[-12:]:  # the line's end, without copying it
                    queue.removed(raw)
                    continue
                if _POSTFIX_EXPIRED not in raw or (queue_id := _expired(raw)) is None:
                    # pickup's own line only: a logged Subject may hold the words.
                    if _ORIG_ID in raw:
                        queue.requeued(raw)
                    continue
                summary.expired += 1
                events = queue.expired(queue_id)
            for event in events:
                queue.note(event)
                if not event.attempted:
                    summary.suspended += 1
                    continue
                _count(summary, event, explainer, each)
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.explained = explainer.computed
    summary.waiting_messages = len(queue.queued)
    summary.waiting = sum(len(recipients) for recipients in queue.queued.values())
    summary.waiting_complete = queue.complete
    return summary


def _count(summary: Summary, event: Event, explainer: Explainer, each: EventSink | None) -> None:
    verdict = explainer.verdict(event.reply)
    if event.status == "bounced":
        verdict = explainer.returned(verdict)
    summary.add(event, verdict)
    if each is not None:
        each(event, verdict)


#: What a message (or an mbox) starts with, and no mail log line does: an mbox's
#: "From " line, or a header field a saved message starts with ("Return-Path: <...>",
#: "Received: from ..."). Named ones only: `journalctl -o cat` gives Postfix lines that
#: start with a queue id and ": ", which looks like any field.
_MESSAGE_START = re.compile(
    rb"From |(?i:return-path|received(?:-spf)?|delivered-to|x-[a-z0-9-]+|date|from|to|cc"
    rb"|subject|message-id|mime-version|content-[a-z-]+|dkim-signature|arc-[a-z-]+"
    rb"|authentication-results|reply-to|sender|envelope-to|thread-[a-z]+|auto-submitted"
    rb"|in-reply-to|references|precedence|importance|list-[a-z-]+|errors-to|organization"
    rb"|user-agent|disposition-notification-to):"
)
_SNIFF_BYTES = 80


def summarize_messages(
    lines: Iterable[bytes], explainer: Explainer, source: str, each: EventSink | None = None
) -> Summary:
    """The summary of one message, or of an mbox (messages after "From " lines), given
    as a log: each read as a DSN file of a folder is (its first MAX_MESSAGE_BYTES)."""
    summary = Summary(source)

    def flush(data: bytearray) -> None:
        summary.messages += 1
        events = _dsn_file(bytes(data))
        if events is None:
            summary.not_dsn += 1
            return
        for event in events:
            _count(summary, event, explainer, each)

    message = bytearray()
    started = False
    # An mbox's "From " line comes first or after a blank line (one in a body is
    # written ">From " by every mbox writer).
    blank = True
    try:
        for line in lines:
            summary.lines += 1
            if blank and line.startswith(b"From "):
                if started:
                    flush(message)
                message.clear()
                started = True
                continue
            blank = not line.strip()
            started = True
            if len(message) < MAX_MESSAGE_BYTES:
                message += line[: MAX_MESSAGE_BYTES - len(message)]
        if started:
            flush(message)
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.explained = explainer.computed
    return summary


def summarize_folder(
    folder: Path,
    explainer: Explainer,
    each: EventSink | None = None,
    warn: Callable[[str], None] | None = None,
) -> Summary:
    """The summary of a DSN folder; ``warn`` is told of each file or folder below it
    that could not be read (``PATH: why``)."""
    summary = Summary(os.fsdecode(folder))
    try:
        for path, events in read_dsn_folder(folder):
            if isinstance(events, Linked):
                if warn is not None:
                    warn(f"{_clean(os.fsdecode(path))}: a link to a folder, not followed")
                continue
            if isinstance(events, Unread):
                if warn is not None:
                    counted = "folder not read" if events.folder else "file not read"
                    warn(f"{_clean(os.fsdecode(path))}: {events.why} ({counted})")
                if events.folder:
                    summary.unreadable_folders += 1
                    continue
                summary.unreadable += 1
            summary.messages += 1
            if not isinstance(events, list):
                summary.not_dsn += 1
                continue
            for event in events:
                _count(summary, event, explainer, each)
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.explained = explainer.computed
    return summary


def summarize(
    source: str,
    explainer: Explainer,
    stdin: BinaryIO,
    each: EventSink | None = None,
    warn: Callable[[str], None] | None = None,
) -> Summary:
    """The summary of ``source``: a log file, ``-`` (``stdin``) or a DSN folder (whose
    unreadable parts ``warn`` is told of)."""
    if source == "-":
        # ``zcat`` is not needed: a compressed log piped in is read as a named one is.
        peekable = stdin if isinstance(stdin, io.BufferedReader) else io.BufferedReader(_raw(stdin))
        return _summarize_stream(peekable, explainer, "-", each)
    path = Path(source)
    if path.is_dir():
        summary = summarize_folder(path, explainer, each, warn)
    else:
        with path.open("rb") as raw:
            summary = _summarize_stream(raw, explainer, source, each)
    # A name with bytes that are not UTF-8 (kept by Python as surrogates) is shown, not
    # a reason to fail.
    summary.source = _shown(source)
    return summary


def _raw(stream: BinaryIO) -> io.RawIOBase:
    # Any binary stream with readinto (BytesIO: a closed stdin, tests) can be buffered.
    return cast(io.RawIOBase, stream)


def _summarize_stream(
    raw: io.BufferedReader, explainer: Explainer, source: str, each: EventSink | None
) -> Summary:
    kind = _compression(raw)
    if kind == "zstd":
        # Not in the standard library: named, not read as a few lines of binary noise.
        first = "... | zstd -dc" if source == "-" else f"zstdcat {shlex.quote(source)}"
        raise OSError(
            errno.EINVAL,
            f"compressed with zstd; decompress first: {first} | smtpguard explain --log -",
            source,
        )
    with _decompressed(raw, kind) as f:
        try:
            if _MESSAGE_START.match(f.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]):
                # A bounce saved from a mail program, or an mbox of them: not a log.
                return summarize_messages(read_lines(f), explainer, source, each)
            return summarize_lines(read_lines(f), explainer, source, each)
        except EOFError as exc:
            # A rotated log still being compressed, or cut short: name it.
            raise OSError(errno.EIO, f"compressed log ends early ({exc})", source) from None
        except (lzma.LZMAError, zlib.error) as exc:
            raise OSError(errno.EIO, f"compressed log is corrupt ({exc})", source) from None
        except OSError as exc:
            # The decompressors' own errors carry no errno (gzip's "Not a gzipped file",
            # bzip2's "Invalid data stream"); a failed read of the file has one.
            if kind is None or exc.errno is not None:
                raise
            raise OSError(errno.EIO, f"compressed log is corrupt ({exc})", source) from None


_Compression = Literal["gzip", "bzip2", "xz", "zstd"]


def _compression(raw: io.BufferedReader) -> _Compression | None:
    """What ``raw`` is compressed with, by its magic number (not its name: a log piped
    in has none)."""
    head = raw.peek(6)[:6]
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    # "BZh" and the block size, 1 to 9 (hundreds of kB).
    if head[:3] == b"BZh" and b"1" <= head[3:4] <= b"9":
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return None


class _Readable(ChunkReader, Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def peek(self, size: int, /) -> bytes: ...


def _decompressed(
    raw: io.BufferedReader, kind: _Compression | None
) -> contextlib.AbstractContextManager[_Readable]:
    """``raw`` read through its decompressor (a stream: still a line at a time, in
    constant memory; concatenated streams too). Leaving it leaves ``raw`` open."""
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(raw)
    if kind == "xz":
        return lzma.LZMAFile(raw, format=lzma.FORMAT_XZ)
    return contextlib.nullcontext(raw)


def _shown(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def event_dict(event: Event, verdict: Verdict) -> dict[str, object]:
    """One ``--events --json`` line (keys documented in README.md)."""
    return {
        "type": "event",
        "mta": event.mta,
        "status": event.status,
        "recipient": event.recipient,
        "domain": event.domain,
        "reply": event.reply,
        "category": verdict.category,
        "fix": verdict.fix,
        "permanent": verdict.permanent,
        "enhanced_code": verdict.enhanced_code,
        "server_family": verdict.server_family,
    }


#: The exit status after Ctrl-C, as a shell gives a command SIGINT ended (128 + 2).
INTERRUPTED = 130


def log_main(
    source: str,
    *,
    knowledge: Knowledge,
    lang: str,
    as_json: bool,
    stdin: BinaryIO,
    out: TextIO,
    events: bool = False,
    err: TextIO | None = None,
) -> int:
    """Write what ``smtpguard explain --log SOURCE [--lang] [--json] [--events]`` prints
    to ``out``: the summary; with ``events``, first one line per event as it is read
    (JSON Lines with ``as_json``, the summary then being the last line). What of a DSN
    folder could not be read is said on ``err`` (stderr), one line each. The exit
    status: 0, 1 when a file or folder of a DSN folder could not be read,
    :data:`INTERRUPTED` after Ctrl-C (the summary is of what was read)."""
    errors = sys.stderr if err is None else err

    def warn(text: str) -> None:
        errors.write(f"smtpguard: {text}\n")

    each: EventSink | None = None
    ascii_only = json_ascii(out)
    # Each event is flushed as it is written: read through a pipe (`| jq`, `| grep`),
    # block buffering would hold a live log's events for hours.
    if events and as_json:

        def each(event: Event, verdict: Verdict) -> None:
            out.write(json.dumps(event_dict(event, verdict), ensure_ascii=ascii_only) + "\n")
            out.flush()

    elif events:

        def each(event: Event, verdict: Verdict) -> None:
            fields = (event.status, event.domain or NO_DOMAIN, verdict.category, verdict.fix)
            out.write("\t".join([*fields, event.recipient, event.reply]) + "\n")
            out.flush()

    summary = summarize(source, Explainer(knowledge), stdin, each, warn)
    if as_json and events:
        out.write(
            json.dumps(
                {"type": "summary", **summary.to_dict(knowledge, lang)}, ensure_ascii=ascii_only
            )
            + "\n"
        )
    elif as_json:
        out.write(
            json.dumps(summary.to_dict(knowledge, lang), ensure_ascii=ascii_only, indent=2) + "\n"
        )
    else:
        out.write(("\n" if events else "") + summary.render_text(knowledge, lang) + "\n")
    if summary.interrupted:
        return INTERRUPTED
    return 1 if summary.unreadable or summary.unreadable_folders else 0
