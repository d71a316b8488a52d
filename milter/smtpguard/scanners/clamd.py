"""clamd client: the message streamed to ``INSTREAM`` as it arrives.

Protocol (clamd(8), "INSTREAM"): the client sends ``zINSTREAM\\0`` and then the data as
chunks, each prefixed with its length as a 4-byte unsigned big-endian integer, ending
with a zero-length chunk. clamd answers, NUL-terminated because of the ``z`` prefix,
``stream: OK``, ``stream: <name> FOUND`` or ``<text> ERROR``. When the stream grows
past clamd's ``StreamMaxLength`` it answers ``INSTREAM size limit exceeded. ERROR`` and
closes the connection at once, without scanning.

Why the header block is sent too: clamd decodes MIME (base64 attachments, nested
multiparts) only when it recognises a whole RFC 5322 message (``ScanMail yes``, the
default). Given the body alone, a base64-encoded attachment is scanned as base64 text
and its content is *not* found. :class:`ClamdStream` therefore writes the header fields
as ``Name: value`` CRLF and the empty line before the body chunks.

How the stream is bounded:

* ``max_bytes`` (set it at or below clamd's ``StreamMaxLength``): octets beyond it are
  not sent; the prefix is still scanned, and a clean prefix is reported as
  :attr:`~smtpguard.scanners.ScanStatus.SIZE_LIMIT`. If clamd's own limit is lower and
  it refuses, it scanned nothing: an ERROR, with the reason in ``detail``.
* time, by deadlines rather than per socket operation (a clamd that reads or answers
  a byte at a time would otherwise hold the call without limit): each call that sends
  (:meth:`~ClamdStream.open`, :meth:`~ClamdStream.feed_header` that fills a chunk,
  :meth:`~ClamdStream.feed`, :meth:`~ClamdStream.finish`) connects if need be and
  sends within ``timeout``, and the whole stream, from the first octets sent to the
  terminator, within ``stream_timeout``; then :meth:`~ClamdStream.finish` waits for
  the verdict within ``scan_timeout`` (clamd scans only after the last chunk). A
  deadline that passes ends the scan as ERROR ("timed out"). Without the stream's
  own bound a clamd that reads just fast enough for each chunk would hold end of
  message for the chunk count times ``timeout`` (400 chunks in 25 MiB), long after
  the SMTP client gave up waiting for its reply to the final dot (RFC 5321
  §4.5.3.2.6: 10 minutes) and will send the message again; with only that bound, a
  clamd across a slow link could never take a large message (it needs about
  110 kB/s for 25 MiB in the default 240 s). Both MTAs hand the body to the milter
  only once the client has sent all of it, so the chunks come back to back.
* clamd closes a stream that stays idle longer than its ``ReadTimeout`` (120 s by
  default). A client that pauses that long between body chunks therefore gets
  :attr:`~smtpguard.scanners.ScanStatus.ERROR`; keep ``ReadTimeout`` at or above the
  MTA's own SMTP data timeout (Postfix ``smtpd_timeout``, 300 s).

clamd receives open streams in its listener thread (into a temporary file) and uses a
worker thread only for the final scan, so transactions streaming in parallel do not
exhaust ``MaxThreads``; verified against clamd 1.4.

Nothing here raises on I/O: every failure ends as a :class:`~smtpguard.scanners.ScanResult`
with status ERROR, so the calling check can apply its "scanner down" policy.

A clamd that gave no answer (refused, a connect that timed out, or a send or verdict
that timed out while a canary scan gets no answer either: a message slow to scan is
that message's) is not asked again for :data:`RETRY_INTERVAL` seconds, per endpoint
and process: meanwhile every scan ends at once as ERROR, and then one asks again
(:mod:`smtpguard.scanners.health` says why).
"""

from __future__ import annotations

import functools
import socket
import struct
import time
from typing import IO, Final

from smtpguard.scanners import (
    DeadlineSocket,
    Endpoint,
    ScanResult,
    ScanStatus,
    connect,
    failure_text,
    header_bytes,
)
from smtpguard.scanners.health import ScannerHealth, shared_health

__all__ = ["ClamdStream", "ping", "scan"]

#: A chunk of this size or more is sent as it is; smaller header fields are collected
#: up to it. The milter protocol delivers body chunks of at most 65535 octets.
DEFAULT_CHUNK: Final = 64 * 1024
#: Seconds the whole stream may take to send (see the module docstring): with the
#: verdict's own timeout after it, well inside the SMTP client's 10 minutes.
DEFAULT_STREAM_TIMEOUT: Final = 240.0
#: clamd's default StreamMaxLength is 25 MB (clamd.conf(5)).
DEFAULT_MAX_BYTES: Final = 25 * 1024 * 1024
_REPLY_MAX: Final = 4096
#: How long a failed send waits for what clamd said before it hung up (within the
#: call's deadline): the reply to a refused stream is already on its way by then.
_EXPLAIN_WAIT: Final = 1.0
_SIZE_LIMIT_REPLY: Final = "INSTREAM size limit exceeded"
#: Seconds between two tries of a clamd that gave no answer (see the module docstring).
RETRY_INTERVAL: Final = 5.0


def _health_of(endpoint: Endpoint) -> ScannerHealth:
    """The process's health of the clamd at ``endpoint`` (one per endpoint)."""
    return shared_health(
        ("clamd", str(endpoint)),
        lambda: ScannerHealth(
            "virus scanner",
            "clamd",
            endpoint,
            "virus",
            functools.partial(canary, endpoint),
            retry_interval=RETRY_INTERVAL,
        ),
    )


def canary(endpoint: Endpoint, wait: float) -> str:
    """ "" if clamd scans a few octets within ``wait`` seconds, else why not (not through
    :class:`ClamdStream`, which an outage would refuse at once)."""
    reply = bytearray()
    try:
        with connect(endpoint, wait) as sock:
            sock.sendall(b"zINSTREAM\0" + struct.pack("!I", 7) + b"canary\n" + struct.pack("!I", 0))
            _receive(sock, reply)
    except OSError as exc:
        why = failure_text(exc)
        return f"{why} after {wait:g} s" if isinstance(exc, TimeoutError) else why
    verdict = reply.split(b"\0", 1)[0].strip().decode("utf-8", "replace")
    return "" if verdict == "stream: OK" else f"answered {verdict[:80]!r}"


def _receive(sock: socket.socket, reply: bytearray) -> None:
    """Read clamd's reply into ``reply`` up to its NUL, the end of the stream or
    :data:`_REPLY_MAX` octets (what came before an OSError stays in ``reply``)."""
    while b"\0" not in reply and len(reply) < _REPLY_MAX:
        got = sock.recv(_REPLY_MAX)
        if not got:
            return
        reply += got


def _no_answer(exc: OSError) -> bool:
    """A failure that says clamd is not there or not answering (not one where it spoke:
    a connection it closed after a refusal, say)."""
    # gaierror: its host name does not resolve, now or at all (review rev120 F2: every
    # message looked it up again, and no outage began).
    return isinstance(
        exc, (TimeoutError, ConnectionRefusedError, FileNotFoundError, socket.gaierror)
    )


class ClamdStream:
    """One INSTREAM scan, opened per transaction.

    Call :meth:`feed_header` for each header field, :meth:`end_of_headers`, then
    :meth:`feed` for each body chunk, and :meth:`finish` at end of message; call
    :meth:`close` when the transaction is aborted. The connection is opened lazily by the
    first octets to send (or explicitly by :meth:`open`), so a transaction refused before
    DATA never touches clamd. One instance is used by one transaction at a time.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = 10.0,
        scan_timeout: float = 60.0,
        stream_timeout: float = DEFAULT_STREAM_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        chunk_size: int = DEFAULT_CHUNK,
        whole_message: bool = False,
    ) -> None:
        """``whole_message=True``: :meth:`feed` gets the complete message, header block
        and empty line included (no :meth:`feed_header` / :meth:`end_of_headers`)."""
        self.endpoint = endpoint
        self.timeout = timeout
        self.scan_timeout = scan_timeout
        #: Never below ``timeout``: one call may always take that long.
        self.stream_timeout = max(stream_timeout, timeout)
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size
        #: Octets handed to clamd so far (header block included).
        self.sent = 0
        #: True once octets were dropped because of ``max_bytes``.
        self.truncated = False
        self._sock: DeadlineSocket | None = None
        #: ``time.monotonic()`` by which the current call's I/O must end.
        self._deadline = 0.0
        #: ``time.monotonic()`` by which the whole stream must be sent
        #: (``stream_timeout``): set by the first call that sends.
        self._send_by: float | None = None
        self._pending = bytearray()
        self._eoh = whole_message
        self._error = ""
        #: The error is the health's refusal: clamd was not asked (an outage).
        self._unasked = False
        self._result: ScanResult | None = None
        self._health = _health_of(endpoint)
        #: When this scan first asked clamd (``time.monotonic()``); None: not yet.
        self._asked: float | None = None
        #: Why the last reply could not be read, if it could not.
        self._reply_error: OSError | None = None

    # -- feeding --------------------------------------------------------------------

    def _expire_at(self, deadline: float) -> None:
        """Start a call's phase: its connect, sends and receives end by ``deadline``."""
        self._deadline = deadline
        if self._sock is not None:
            self._sock.deadline = deadline

    def _sending(self) -> None:
        """Start a call that sends: within ``timeout``, and by the stream's deadline
        (set now if this is the first)."""
        now = time.monotonic()
        if self._send_by is None:
            self._send_by = now + self.stream_timeout
        self._expire_at(min(now + self.timeout, self._send_by))

    def open(self) -> None:
        """Connect and start INSTREAM (done implicitly by the first octets to send)."""
        self._sending()
        self._open()

    def _open(self) -> None:
        if self._sock is not None or self._error or self._result is not None:
            return
        now = time.monotonic()
        if not_asked := self._health.refusal(now):
            self._error = not_asked
            self._unasked = True
            return
        self._asked = now
        try:
            sock = connect(self.endpoint, self._deadline - now)
        except OSError as exc:
            self._error = f"cannot connect to clamd at {self.endpoint}: {failure_text(exc)}"
            self._failed(exc)
            return
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Each chunk is one write, but the zero-length terminator is tiny: without
            # this it could wait for the delayed ACK of the previous chunk (~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._send(b"zINSTREAM\0")

    def feed_header(self, name: str, value: str) -> None:
        self._pending += header_bytes(name, value)
        if len(self._pending) >= self.chunk_size:
            self._sending()
            self._flush()

    def end_of_headers(self) -> None:
        if not self._eoh:
            self._eoh = True
            self._pending += b"\r\n"

    def feed(self, chunk: bytes) -> None:
        """Send one body chunk (with any header fields still waiting) to clamd now."""
        # The MTA may have negotiated end-of-headers away; clamd still needs the empty
        # line to find the header block.
        self.end_of_headers()
        self._pending += chunk
        self._sending()
        self._flush()

    def _flush(self) -> None:
        if not self._pending or self._error or self._result is not None:
            self._pending.clear()
            return
        data = bytes(self._pending)
        self._pending.clear()
        room = self.max_bytes - self.sent
        if len(data) > room:
            data = data[: max(room, 0)]
            self.truncated = True
        if not data:
            return
        self._open()
        for start in range(0, len(data), self.chunk_size):
            piece = data[start : start + self.chunk_size]
            if not self._send(struct.pack("!I", len(piece)) + piece):
                return
            self.sent += len(piece)

    def _send(self, data: bytes) -> bool:
        if self._error or self._sock is None:
            return False
        try:
            self._sock.sendall(data)
        except OSError as exc:
            # clamd closes the stream early on its size limit or ReadTimeout; what it
            # said before closing is the better explanation, when there is one.
            reply, _ = self._read_reply(min(self._deadline, time.monotonic() + _EXPLAIN_WAIT))
            if reply.startswith(_SIZE_LIMIT_REPLY):
                self._result = _size_limit_refused(reply, self.sent)
            else:
                self._error = f"sending to clamd failed: {failure_text(exc)}" + (
                    f" (clamd said: {reply})" if reply else ""
                )
                if not reply and isinstance(exc, TimeoutError):
                    # Not read in time: hung, or slow on this stream (see _finish).
                    self._health.test_later(failure_text(exc), self.timeout)
            self._drop()
            return False
        return True

    def _failed(self, exc: OSError) -> None:
        if _no_answer(exc):
            self._health.no_answer(failure_text(exc))

    # -- the verdict ----------------------------------------------------------------

    def finish(self) -> ScanResult:
        """End the stream and return clamd's verdict (the same result on every call)."""
        if self._result is None:
            self._result = self._finish()
            self._drop()
        return self._result

    def _finish(self) -> ScanResult:
        self.end_of_headers()
        # Connecting (a message without a body sent nothing yet), what is left and the
        # terminator are the end of the stream's sending; the verdict gets its own
        # deadline below.
        self._sending()
        self._flush()
        if self._result is not None:
            return self._result
        if self._sock is None and not self._error:
            # Nothing to send (an empty message): still ask, so "clean" is clamd's word.
            self._open()
        if self._error or self._sock is None:
            return ScanResult(
                ScanStatus.ERROR, detail=self._error, scanned=self.sent, unasked=self._unasked
            )
        if not self._send(struct.pack("!I", 0)):
            if self._result is not None:
                return self._result
            return ScanResult(ScanStatus.ERROR, detail=self._error, scanned=self.sent)
        reply, whole = self._read_reply(time.monotonic() + self.scan_timeout)
        failure = self._reply_error
        if not reply and failure is not None:
            if isinstance(failure, TimeoutError):
                # A verdict that did not come in time: a clamd that is not there (or
                # hung) does not scan a canary either; one slow on this message does.
                self._health.test_later(failure_text(failure), self.scan_timeout)
            else:
                self._failed(failure)
        # Text cut short by an error or the deadline may be half a verdict.
        return self._interpret(reply if whole else "")

    def _read_reply(self, deadline: float) -> tuple[str, bool]:
        """clamd's reply up to its NUL, read by ``deadline`` (``time.monotonic()``), and
        whether it ended (NUL, end of stream, the size cap) rather than broke off."""
        sock = self._sock
        if sock is None:
            return "", False
        sock.deadline = deadline
        data = bytearray()
        whole = True
        try:
            _receive(sock, data)
        except OSError as exc:
            whole = False
            what = f"reply cut short after {len(data)} octets" if data else "no reply"
            self._error = self._error or f"{what} from clamd: {failure_text(exc)}"
            self._reply_error = exc
        if data and self._asked is not None:
            self._health.answered(self._asked)
        return data.split(b"\0", 1)[0].decode("utf-8", "replace").strip(), whole

    def _interpret(self, reply: str) -> ScanResult:
        if not reply:
            detail = self._error or "clamd closed the connection without a reply"
            return ScanResult(ScanStatus.ERROR, detail=detail, scanned=self.sent)
        if reply.startswith(_SIZE_LIMIT_REPLY):
            return _size_limit_refused(reply, self.sent)
        text = reply.removeprefix("stream:").strip()
        if text == "OK":
            if self.truncated:
                return ScanResult(
                    ScanStatus.SIZE_LIMIT,
                    detail=f"message over max_bytes={self.max_bytes}; first {self.sent}"
                    " octets scanned clean",
                    scanned=self.sent,
                )
            return ScanResult(ScanStatus.CLEAN, scanned=self.sent)
        if text.endswith(" FOUND"):
            return ScanResult(
                ScanStatus.INFECTED,
                virus=text.removesuffix(" FOUND").strip(),
                detail="truncated scan" if self.truncated else "",
                scanned=self.sent,
            )
        return ScanResult(ScanStatus.ERROR, detail=f"clamd: {reply[:200]}", scanned=self.sent)

    # -- cleanup --------------------------------------------------------------------

    def close(self) -> None:
        """Abandon the stream (transaction aborted); clamd discards what it received."""
        self._pending.clear()
        self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ClamdStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _size_limit_refused(reply: str, sent: int) -> ScanResult:
    # clamd scans nothing of a stream it refuses: no verdict at all, never the clean
    # prefix on_size_limit = "pass" lets through.
    return ScanResult(
        ScanStatus.ERROR,
        detail=f"clamd refused the stream ({reply}) once {sent} octets were sent and scanned"
        " nothing: its StreamMaxLength is below virus.max_bytes; lower max_bytes",
        scanned=sent,
        too_large=True,
    )


def scan(
    endpoint: Endpoint,
    message: bytes | IO[bytes],
    *,
    timeout: float = 10.0,
    scan_timeout: float = 60.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ScanResult:
    """Scan a whole message (bytes or a binary file read from its current position).

    For ``simulate`` and tests; the milter streams with :class:`ClamdStream` instead.
    """
    with ClamdStream(
        endpoint,
        timeout=timeout,
        scan_timeout=scan_timeout,
        max_bytes=max_bytes,
        whole_message=True,
    ) as stream:
        if isinstance(message, bytes):
            for start in range(0, len(message), DEFAULT_CHUNK):
                stream.feed(message[start : start + DEFAULT_CHUNK])
        else:
            while block := message.read(DEFAULT_CHUNK):
                stream.feed(block)
        return stream.finish()


def ping(endpoint: Endpoint, timeout: float = 2.0) -> bool:
    """True when clamd answers ``PING`` with ``PONG`` (readiness and health checks)."""
    try:
        with connect(endpoint, timeout) as sock:
            sock.sendall(b"zPING\0")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.rstrip(b"\0") == b"PONG"
