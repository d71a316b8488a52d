"""rspamd client: ``POST /checkv2`` of its HTTP protocol, to a normal worker.

Protocol (rspamd documentation, "Rspamd protocol"): the message is the request body;
the envelope goes in request headers (``IP``, ``Helo``, ``Hostname``, ``From``, one
``Rcpt`` per recipient, ``Queue-Id``, ``User`` for the SASL login). The reply is JSON
with ``score``, ``required_score``, ``action`` (``no action``, ``greylist``, ``add
header``, ``rewrite subject``, ``soft reject``, ``reject``) and ``symbols`` (name ->
``{"score": ...}``). Nothing else of the reply is relied on.

rspamd needs the whole message, so it is sent at end of message from a
:class:`~smtpguard.scanners.MessageSpool`: in memory up to the spool's cap, beyond it
in an unlinked temporary file, streamed to the socket in 64 KiB blocks with an explicit
``Content-Length`` (no chunked encoding). The anti-spam check gives the spool a
``max_size`` (``antispam.engine_max_bytes``, at or below rspamd's own ``max_message``,
50 MiB by default) and does not send a truncated spool.

Every failure (connection refused, timeout, HTTP status other than 200, a reply that is
not the expected JSON, or one larger than ``max_reply`` without the verdict at its
head) is a :class:`SpamResult` with status ERROR and the reason in ``detail``; nothing
raises.

An engine that gave no answer (refused, a connect that timed out, or a failure after
it took the connection while a canary scan gets no answer either: a message slow to
scan is that message's) is not asked again for ``retry_interval`` seconds: meanwhile
every message gets the failure at once, and then one message asks again
(:mod:`smtpguard.scanners.health` says why). An engine that answers, even with an
error, is up.

``timeout`` is spent twice at most, as deadlines rather than per socket operation (an
engine that answers a byte at a time would otherwise hold end of message without
limit): connecting and sending the request share one, the answer (status line,
headers, JSON) has the other. rspamd's own ``task_timeout`` (8 s by default) bounds
the scan, within the second.

What surprised in rspamd 3.4: the GTUBE test string short-cuts the scan
(``"is_skipped": true``), forces action ``reject`` and sets ``score`` to the reject
threshold (15 by default) while the ``GTUBE`` symbol itself scores 0.
"""

from __future__ import annotations

import dataclasses
import functools
import http.client
import json
import math
import socket
import time
from collections.abc import Callable
from typing import IO, Any, Final

from smtpguard.outage import Outage
from smtpguard.scanners import (
    DeadlineSocket,
    Endpoint,
    MessageSpool,
    SpamEnvelope,
    SpamResult,
    SpamStatus,
    connect,
    failure_text,
)
from smtpguard.scanners.health import ScannerHealth

__all__ = ["RspamdClient", "rspamd_health"]

_BLOCK: Final = 64 * 1024
#: A dropped connection while sending more than this may be rspamd's max_message.
_HINTED: Final = 64 * 1024
_CHECK_PATH: Final = "/checkv2"
#: How long a request announcing a dropped message's length waits to be dropped too
#: (RspamdClient._refuses_length): rspamd drops it once it has read the header block.
_LENGTH_PROBE_WAIT: Final = 1.0
#: How long one announcing a single octet waits not to be dropped: rspamd drops a
#: request at once when it does.
_SHORT_PROBE_WAIT: Final = 0.3
#: What the canary scan sends (see smtpguard.scanners.health).
_CANARY: Final = b"Subject: canary\r\n\r\ncanary\r\n"


class _Connection(http.client.HTTPConnection):
    """HTTP over :func:`~smtpguard.scanners.connect`'s socket (TCP, or a unix socket:
    rspamd workers can bind ``/path mode=0660``), whose operations all end by the
    socket's deadline: http.client reads a response in many small reads, each of which
    a plain socket timeout would bound separately. :meth:`connect` starts the deadline
    at ``timeout``; :meth:`expire_in` starts the next phase."""

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        # The Host header names the TCP endpoint; a unix socket has none to name.
        host, port = (
            (endpoint.host, endpoint.port) if endpoint.path is None else ("localhost", None)
        )
        super().__init__(host, port, timeout=timeout, blocksize=_BLOCK)
        self.endpoint = endpoint
        self.phase_timeout = timeout
        self._deadline_sock: DeadlineSocket | None = None

    def connect(self) -> None:
        sock = connect(self.endpoint, self.phase_timeout)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # The header block and the body go in separate sends (http.client does the
            # same): without this the body could wait for a delayed ACK (~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._deadline_sock = sock

    def expire_in(self, seconds: float) -> None:
        """What follows on this connection must end within ``seconds`` from now."""
        if self._deadline_sock is not None:
            self._deadline_sock.expire_in(seconds)


class RspamdClient:
    """Asks one rspamd normal worker (``unix:PATH`` or ``inet:HOST:PORT``)."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = 15.0,
        max_reply: int = 1024 * 1024,
        retry_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        health: ScannerHealth | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_reply = max_reply
        #: ``health``: the process's one for this endpoint (:func:`rspamd_health`),
        #: which a reload's new client keeps (review rev120 F5: a reload forgot an
        #: outage, and the next messages waited the full timeout again).
        self.health = health or rspamd_health(endpoint, retry_interval=retry_interval, clock=clock)

    def _connection(self) -> _Connection:
        """A connection whose connect and everything after share one ``timeout`` until
        :meth:`_Connection.expire_in` (probes use it for ``GET /ping``)."""
        return _Connection(self.endpoint, self.timeout)

    def check(
        self, message: MessageSpool | IO[bytes] | bytes, envelope: SpamEnvelope
    ) -> SpamResult:
        """Score ``message`` (header block, empty line, body) with its envelope."""
        body, length = _body(message)
        headers: list[tuple[str, str]] = [("Content-Length", str(length))]
        for name, value in (
            ("IP", envelope.ip),
            ("Helo", envelope.helo),
            ("Hostname", envelope.hostname),
            ("From", envelope.sender),
            ("Queue-Id", envelope.queue_id),
            ("User", envelope.user),
        ):
            if value is not None:
                headers.append((name, value))
        headers.extend(("Rcpt", rcpt) for rcpt in envelope.rcpts)
        health = self.health
        now = health.outage.clock()
        if refusal := health.refusal(now):
            return SpamResult(SpamStatus.ERROR, detail=refusal, unasked=True)
        conn = self._connection()
        response: http.client.HTTPResponse | None = None
        connected = sent = False
        try:
            conn.connect()
            connected = True
            conn.putrequest("POST", _CHECK_PATH, skip_accept_encoding=True)
            for name, value in headers:
                # Envelope values may be UTF-8 (SMTPUTF8); http.client would insist on
                # Latin-1 for str. CR, LF and NUL cannot come from an SMTP command, but
                # are removed so that no value can ever split the request.
                conn.putheader(name, _clean(value).encode("utf-8", "surrogateescape"))
            conn.endheaders(body)
            sent = True
            conn.expire_in(self.timeout)
            response = conn.getresponse()
            raw = response.read(self.max_reply + 1)
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            why = failure_text(exc)
            if not connected:
                health.no_answer(why)  # refused, no such socket, or no accept in time
            elif isinstance(exc, OSError):
                # Connected, then a request not read, an answer that did not come in
                # time or a connection reset: an engine that is not there (or hung)
                # does not scan a canary either; one that failed on this message does
                # (review rev88 N1: one slow answer stopped the scans of every message).
                health.test_later(why, self.timeout)
            # rspamd drops a message over its max_message without an answer, as soon as
            # it has read the header block (review rev120 F6: "Broken pipe" alone,
            # deferred on every retry). One that fit in the sockets' buffers was sent
            # whole before the drop (rev151 F2): then a crash or a restart, which is no
            # matter of size (rev147 F1: deferred as one, for good), is told from it by
            # asking again with the length alone.
            dropped = (
                isinstance(exc, (BrokenPipeError, ConnectionResetError))
                and length > _HINTED
                and (not sent or self._refuses_length(length))
            )
            if dropped:
                why += (
                    f" (sending {length} octets: rspamd drops a message over its"
                    " max_message; keep antispam.engine_max_bytes at or below it)"
                )
            return SpamResult(
                SpamStatus.ERROR,
                detail=f"rspamd at {self.endpoint}: {why}",
                too_large=dropped,
            )
        finally:
            # The response holds the socket open until it is closed too.
            if response is not None:
                response.close()
            conn.close()
        health.answered(now)
        if len(raw) > self.max_reply:
            # A message with many URLs makes a long reply (rspamd lists them); rspamd
            # writes the verdict first, so the head still gives it. Failing here would
            # let a sender skip the engine by padding the message.
            head = _head_fields(raw[: self.max_reply])
            if status != 200 or "score" not in head or "action" not in head:
                return self._named(
                    SpamResult(SpamStatus.ERROR, detail=f"reply over {self.max_reply} octets")
                )
            return self._named(_result(status, head))
        return self._named(_parse(status, raw))

    def _refuses_length(self, length: int) -> bool:
        """Whether rspamd drops a request that announces ``length`` octets at once,
        before its body, and waits for the body of one that announces a single octet:
        its max_message refusal. A request that is waited on for its body, one that
        cannot connect (a crashed engine) and an engine that drops any request (one
        shutting down; review rev154 F3) are no such refusal."""
        return (
            self._probe(length, _LENGTH_PROBE_WAIT) == "dropped"
            and self._probe(1, _SHORT_PROBE_WAIT) == "waited"
        )

    def _probe(self, length: int, wait: float) -> str:
        """What rspamd does, within ``wait`` seconds, with a request announcing
        ``length`` octets whose body does not follow: "dropped", "waited" (for the
        body), or "failed" (no connection, an answer)."""
        conn = _Connection(self.endpoint, min(self.timeout, wait))
        try:
            conn.connect()
        except OSError:
            conn.close()
            return "failed"
        try:
            conn.putrequest("POST", _CHECK_PATH, skip_accept_encoding=True)
            conn.putheader("Content-Length", str(length))
            conn.endheaders()
            conn.getresponse()
        except TimeoutError:
            return "waited"
        except (BrokenPipeError, ConnectionResetError):
            return "dropped"
        except (OSError, http.client.HTTPException):
            return "failed"
        finally:
            conn.close()
        return "failed"

    @property
    def outage(self) -> Outage:
        return self.health.outage

    def _canary(self, wait: float) -> str:
        return _canary(self.endpoint, wait)

    def _named(self, result: SpamResult) -> SpamResult:
        """An error's detail names the engine, as a socket error's does."""
        if result.ok or not result.detail or result.detail.startswith("rspamd at "):
            return result
        return dataclasses.replace(result, detail=f"rspamd at {self.endpoint}: {result.detail}")


def rspamd_health(
    endpoint: Endpoint,
    *,
    retry_interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> ScannerHealth:
    """A new health record of the engine at ``endpoint`` (see :func:`shared_health`)."""
    return ScannerHealth(
        "spam engine",
        "rspamd",
        endpoint,
        "antispam",
        functools.partial(_canary, endpoint),
        retry_interval=retry_interval,
        clock=clock,
    )


def _canary(endpoint: Endpoint, wait: float) -> str:
    """ "" if the engine answers a scan of a few octets within ``wait`` seconds, else
    why not (not through :meth:`RspamdClient.check`, which an outage would refuse at
    once). Any HTTP answer counts: an engine that answers, even with an error, is up."""
    conn = _Connection(endpoint, wait)
    try:
        conn.request("POST", _CHECK_PATH, body=_CANARY)
        conn.getresponse().read(_CANARY_REPLY_MAX)
    except (OSError, http.client.HTTPException) as exc:
        why = failure_text(exc)
        return f"{why} after {wait:g} s" if isinstance(exc, TimeoutError) else why
    finally:
        conn.close()
    return ""


#: What a canary's answer may hold (it is read only to end the exchange).
_CANARY_REPLY_MAX: Final = 1024 * 1024


def _body(message: MessageSpool | IO[bytes] | bytes) -> tuple[bytes | IO[bytes], int]:
    if isinstance(message, bytes):
        return message, len(message)
    if isinstance(message, MessageSpool):
        return message.reader(), message.size
    start = message.tell()
    length = message.seek(0, 2) - start
    message.seek(start)
    return message, length


def _clean(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ").replace("\0", " ")


#: Top-level fields read from the head of a reply too long to keep whole.
_VERDICT_FIELDS = ("is_skipped", "score", "required_score", "action")


def _head_fields(raw: bytes) -> dict[str, Any]:
    """The verdict's top-level fields among the complete ``"key": value`` pairs at the
    start of a JSON object cut short; those after the cut are simply missing."""
    text = raw.decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    out: dict[str, Any] = {}
    at = len(text) - len(text.lstrip())
    if not text.startswith("{", at):
        return out
    at += 1
    try:
        while len(out) < len(_VERDICT_FIELDS):
            key, at = decoder.raw_decode(text, _skip(text, at, ","))
            value, at = decoder.raw_decode(text, _skip(text, at, ":"))
            # Only a value the object goes on after is whole: a number cut short
            # (16 of 16.5, 16 of "16.", 1 of "1e") reads as a whole one.
            at = _skip(text, at, "")
            if not text.startswith((",", "}"), at):
                break
            if isinstance(key, str) and key in _VERDICT_FIELDS:
                out[key] = value
    except (ValueError, RecursionError):
        pass  # the cut, or not JSON (or nested too deep): what was read is all there is
    return out


def _skip(text: str, at: int, separator: str) -> int:
    """Past white space and at most one ``separator``."""
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    if separator and text.startswith(separator, at):
        at += 1
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _parse(status: int, raw: bytes) -> SpamResult:
    try:
        reply: Any = json.loads(raw)
    except (ValueError, RecursionError):
        # RecursionError: arrays nested thousands deep (review rev120 F4).
        reply = None
    return _result(status, reply)


def _result(status: int, reply: Any) -> SpamResult:
    """The answer in a decoded reply (None: not JSON)."""
    if status != 200:
        error = reply.get("error") if isinstance(reply, dict) else None
        return SpamResult(
            SpamStatus.ERROR,
            detail=f"HTTP {status}" + (f": {str(error)[:200]}" if error else ""),
        )
    if not isinstance(reply, dict):
        return SpamResult(SpamStatus.ERROR, detail="reply is not a JSON object")
    score, action = reply.get("score"), reply.get("action")
    if not isinstance(score, int | float) or isinstance(score, bool) or not isinstance(action, str):
        return SpamResult(SpamStatus.ERROR, detail="reply lacks score or action")
    number = _finite(score)
    if number is None:
        # Python's json reads NaN and Infinity: a NaN score compares false with every
        # threshold, so a reject would become an accept.
        return SpamResult(SpamStatus.ERROR, detail=f"reply's score is {str(score)[:20]}")
    required = reply.get("required_score")
    symbols: dict[str, float] = {}
    raw_symbols = reply.get("symbols")
    if isinstance(raw_symbols, dict):
        for name, symbol in raw_symbols.items():
            value = symbol.get("score") if isinstance(symbol, dict) else None
            symbols[str(name)] = _finite(value) or 0.0
    return SpamResult(
        SpamStatus.OK,
        score=number,
        action=action,
        required_score=_finite(required),
        symbols=symbols,
    )


def _finite(value: object) -> float | None:
    """A JSON number as a float; None for anything else, NaN, the infinities and an
    integer beyond any float."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
