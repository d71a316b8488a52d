"""Content scanners: clamd, a command hook, rspamd, and the built-in content rules.

Scanners detect and report; they never decide. Each returns a small frozen result
(:class:`ScanResult` for virus scanners, :class:`SpamResult` for anti-spam engines) and
turns every I/O failure into a result with an error status instead of raising, so a
check can map "scanner down" to a tempfail or a pass as configured without catching
exceptions. A virus name or a scanner's error text goes to the log only, never into an
SMTP reply.

Shared here:

* :func:`connect`: a stream socket to an :class:`~smtpguard.endpoint.Endpoint`
  (``unix:PATH`` / ``inet:HOST:PORT``, parsed by :mod:`smtpguard.endpoint` for the
  config loader and the scanners alike), a :class:`DeadlineSocket`: a socket timeout
  bounds one send or receive, and a scanner answering one byte at a time stays under
  it forever, so the scanners bound each phase of a scan (connect and send, then the
  verdict) by a deadline instead;
* :class:`MessageSpool`: the whole message (header block + body) for scanners that need
  it at once (the command hook, rspamd), spooled in memory up to a cap and then to an
  unlinked temporary file, so a large message never sits whole in memory;
* what the content checks expect of a scanner (:class:`VirusStream`,
  :class:`SpamEngine`, :class:`RuleEngine`), so that tests can hand them fakes
  (:class:`~smtpguard.scanners.backends.ScannerFactory` builds the real ones).
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import IO, TYPE_CHECKING, Any, Final, Protocol

from smtpguard.endpoint import Endpoint

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from smtpguard.scanners.rules import RulesResult

__all__ = [
    "DeadlineSocket",
    "Endpoint",
    "MessageSpool",
    "QueueFull",
    "RuleEngine",
    "RuleStream",
    "ScanResult",
    "ScanStatus",
    "SpamEngine",
    "SpamEnvelope",
    "SpamResult",
    "SpamStatus",
    "VirusStream",
    "connect",
    "failure_text",
    "header_bytes",
]


class ScanStatus(Enum):
    CLEAN = "clean"
    INFECTED = "infected"
    #: The scanner could not give an answer (down, timeout, protocol error).
    ERROR = "error"
    #: The message was larger than the scan limit: only a prefix was scanned and it was
    #: clean (an infected prefix is reported as INFECTED). The check maps this as
    #: configured (pass, tempfail or reject).
    SIZE_LIMIT = "size_limit"


@dataclass(frozen=True, slots=True)
class ScanResult:
    status: ScanStatus
    #: Name of what was found (log only, never sent to the client).
    virus: str = ""
    #: Why, for the log: the scanner's error, the timeout, the limit.
    detail: str = ""
    #: Octets handed to the scanner.
    scanned: int = 0
    #: An ERROR that may stand for an infection: the command hook's exit status for
    #: "infected" without a name (its crash looks the same). Deferred, never passed.
    suspect: bool = False
    #: An ERROR without asking: the scanner is in an outage, logged once for all the
    #: messages it fails (:mod:`smtpguard.scanners.health`).
    unasked: bool = False
    #: An ERROR for the message's size: the scanner refused it as too large (clamd's
    #: StreamMaxLength), so ``on_size_limit`` applies, not only ``on_temp_error``.
    too_large: bool = False

    @property
    def infected(self) -> bool:
        return self.status is ScanStatus.INFECTED


class SpamStatus(Enum):
    OK = "ok"
    #: The engine could not give an answer (down, timeout, HTTP error, bad reply).
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class SpamResult:
    status: SpamStatus
    score: float = 0.0
    #: The engine's own action (rspamd: ``no action``, ``greylist``, ``add header``,
    #: ``rewrite subject``, ``soft reject``, ``reject``); empty on error.
    action: str = ""
    #: The engine's own highest threshold (rspamd ``required_score``: the reject one,
    #: or discard's where it has one), for the log.
    required_score: float | None = None
    #: Symbol name -> score contributed.
    symbols: Mapping[str, float] = field(default_factory=dict)
    detail: str = ""
    #: An ERROR without asking (see :attr:`ScanResult.unasked`).
    unasked: bool = False
    #: An ERROR likely for the message's size (see :attr:`ScanResult.too_large`).
    too_large: bool = False

    @property
    def ok(self) -> bool:
        return self.status is SpamStatus.OK


@dataclass(frozen=True, slots=True)
class SpamEnvelope:
    """The SMTP envelope a spam engine scores the message with (None: not known)."""

    ip: str | None = None
    helo: str | None = None
    #: The client's verified host name.
    hostname: str | None = None
    #: The MAIL FROM address without angle brackets (empty for ``<>``).
    sender: str | None = None
    rcpts: tuple[str, ...] = ()
    queue_id: str | None = None
    #: The SASL login.
    user: str | None = None


# --- what the checks use ----------------------------------------------------------------


class VirusStream(Protocol):
    """One transaction's virus scan (clamd's INSTREAM, the command hook): fed the
    message as it arrives, asked once at the end, closed whatever happened."""

    def feed_header(self, name: str, value: str) -> None: ...
    def end_of_headers(self) -> None: ...
    def feed(self, chunk: bytes) -> None: ...
    def finish(self) -> ScanResult: ...
    def close(self) -> None: ...


class SpamEngine(Protocol):
    """An external spam scorer (rspamd) asked once per message, at its end."""

    def check(
        self, message: MessageSpool | IO[bytes] | bytes, envelope: SpamEnvelope
    ) -> SpamResult: ...


class RuleStream(Protocol):
    """One message through the built-in rules (:class:`~smtpguard.scanners.rules.RuleScan`)."""

    def feed_header(self, name: str, value: str) -> None: ...
    def end_of_headers(self) -> None: ...
    def feed(self, chunk: bytes) -> None: ...
    def finish(self) -> RulesResult: ...


class RuleEngine(Protocol):
    """Compiled rules shared by all transactions (:class:`~smtpguard.scanners.rules.RuleSet`)."""

    def scanner(self) -> RuleStream: ...


# --- sockets ---------------------------------------------------------------------------


class DeadlineSocket(socket.socket):
    """A stream socket whose connect, sends and receives all end by :attr:`deadline`.

    Before each of them the socket timeout is set to the time left, and once the
    deadline has passed they raise :class:`TimeoutError` without touching the socket,
    so a phase of any number of operations (http.client's many reads of a status line
    and headers included) takes at most the time it was given.
    """

    #: ``time.monotonic()`` by which every operation must end.
    deadline: float = 0.0

    def expire_in(self, seconds: float) -> None:
        """Start a phase: what follows must end within ``seconds`` from now."""
        self.deadline = time.monotonic() + seconds

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self.settimeout(left)

    def connect(self, address: Any, /) -> None:
        self._arm()
        super().connect(address)

    def send(self, data: ReadableBuffer, flags: int = 0, /) -> int:
        self._arm()
        return super().send(data, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0, /) -> None:
        # One sendall is bounded as a whole by the timeout (Python >= 3.5).
        self._arm()
        super().sendall(data, flags)

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        self._arm()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0, /) -> int:
        # What socket.makefile() reads with (http.client's responses).
        self._arm()
        return super().recv_into(buffer, nbytes, flags)


def connect(endpoint: Endpoint, timeout: float) -> DeadlineSocket:
    """Connect within ``timeout`` (OSError); the socket keeps that deadline for what
    follows until the caller sets another (:meth:`DeadlineSocket.expire_in`).

    The addresses of an ``inet:`` host are tried in turn within the one deadline
    (``socket.create_connection`` would give each its own timeout). A host name is
    looked up within that deadline too (:func:`_addresses`; review rev120 F2: a hung
    resolver held every message for its own timeout, outside the scanner's).

    A unix socket whose listen queue is full refuses at once (EAGAIN) where TCP
    would wait: the connect is tried again until the deadline, so a scanner that
    stalls for a moment under load (Debian's clamd queues 15) gets its timeout, not
    an instant failure that ``on_temp_error = "pass"`` turns into an unscanned
    message (review rev80 F1).
    """
    deadline = time.monotonic() + timeout
    if endpoint.path is not None:
        targets: list[tuple[socket.AddressFamily, int, Any]] = [(socket.AF_UNIX, 0, endpoint.path)]
    else:
        found = _addresses(endpoint, deadline)
        targets = [(family, proto, address) for family, _, proto, _, address in found]
    error: OSError = OSError(f"no address for {endpoint}")
    for family, proto, address in targets:
        pause = _QUEUE_FULL_PAUSE
        full: BlockingIOError | None = None
        while True:
            sock = DeadlineSocket(family, socket.SOCK_STREAM, proto)
            sock.deadline = deadline
            try:
                sock.connect(address)
            except BlockingIOError as exc:
                sock.close()
                error = full = exc
                if family != socket.AF_UNIX:
                    break
                # The next try's connect() raises TimeoutError once the deadline passed.
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                pause = min(2 * pause, _QUEUE_FULL_PAUSE_MAX)
                continue
            except OSError as exc:
                sock.close()
                error = exc
                if full is not None and isinstance(exc, TimeoutError):
                    error = QueueFull(f"timed out, its listen queue full ({full.strerror})")
                break
            return sock
    raise error


_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]


def _addresses(endpoint: Endpoint, deadline: float) -> Sequence[_AddrInfo]:
    """``endpoint``'s addresses; an IP address without a lookup, a host name looked up
    by the system's resolver until ``deadline`` (then TimeoutError). getaddrinfo cannot
    be interrupted: a lookup that outlives its deadline ends on a daemon thread of its
    own, unwaited for (a pool's threads would hold up the process's exit). Few run at
    once: a scanner whose lookups fail is in an outage, not asked again for seconds."""
    host, port = endpoint.host, endpoint.port
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass  # a name
    found: list[Sequence[_AddrInfo] | OSError] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            found.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name="scanner-resolve", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise TimeoutError(f"looking up {host} timed out")
    if isinstance(found[0], OSError):
        raise found[0]
    return found[0]


class QueueFull(TimeoutError):
    """:func:`connect` timed out at a unix socket whose listen queue stayed full."""


def failure_text(exc: BaseException) -> str:
    """How a backend's failure reads in a log line or a check's detail: the system's
    words for a socket error, "timed out" for a timeout (why its queue was full, when
    :func:`connect` knows), and the exception's class and text for anything else."""
    if isinstance(exc, QueueFull):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return str(exc) if str(exc).startswith("looking up ") else "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


#: Seconds between tries at a unix socket whose listen queue is full: doubling from
#: the first to the last.
_QUEUE_FULL_PAUSE = 0.005
_QUEUE_FULL_PAUSE_MAX = 0.1


# --- the message as a whole ------------------------------------------------------------


def header_bytes(name: str, value: str) -> bytes:
    """One header field as it is written in the message: ``Name: value`` CRLF.

    Folded values keep their folding, with every line break as CRLF. pymilter hands
    undecodable header octets over as surrogate escapes; they go back out as the
    original octets.
    """
    value = value.replace("\r\n", "\n").replace("\n", "\r\n")
    return f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")


#: In-memory part of a spool; beyond it the message goes to a temporary file.
DEFAULT_MEMORY_CAP: Final = 1024 * 1024


class MessageSpool:
    """The message as the scanner sees it: header fields, empty line, body.

    Built on :class:`tempfile.SpooledTemporaryFile`: data stays in memory until it
    exceeds ``memory_cap`` octets, then moves to an unlinked file in ``tmpdir`` (the
    system default when None). ``max_size`` (None = unlimited) stops storing beyond that
    many octets and sets :attr:`truncated`, so a caller can skip or flag the scan
    instead of spooling an arbitrarily large message.

    Feed it exactly like :class:`~smtpguard.scanners.clamd.ClamdStream`:
    :meth:`feed_header` per field, :meth:`end_of_headers`, :meth:`feed` per body chunk.
    Then hand :meth:`reader` (or the spool itself) to a scanner, and :meth:`close` it at
    the end of the transaction.
    """

    def __init__(
        self,
        *,
        memory_cap: int = DEFAULT_MEMORY_CAP,
        max_size: int | None = None,
        tmpdir: str | None = None,
    ) -> None:
        self.memory_cap = memory_cap
        self.max_size = max_size
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed in close()
            max_size=memory_cap, mode="w+b", dir=tmpdir
        )
        self.size = 0
        self.truncated = False
        self._eoh = False

    def feed_header(self, name: str, value: str) -> None:
        self._write(header_bytes(name, value))

    def end_of_headers(self) -> None:
        if not self._eoh:
            self._eoh = True
            self._write(b"\r\n")

    def feed(self, chunk: bytes) -> None:
        # The MTA may have negotiated end-of-headers away: the body still needs the
        # separating empty line for the scanner to find the header block.
        self.end_of_headers()
        self._write(chunk)

    def _write(self, data: bytes) -> None:
        if self.truncated:
            return
        if self.max_size is not None and self.size + len(data) > self.max_size:
            data = data[: self.max_size - self.size]
            self.truncated = True
        self._file.write(data)
        self.size += len(data)

    @property
    def in_memory(self) -> bool:
        """Still in memory (SpooledTemporaryFile rolls over once size > its max_size)."""
        return self.size <= self.memory_cap

    def reader(self) -> IO[bytes]:
        """The spooled octets, positioned at the start (the same file object each call)."""
        self._file.flush()
        self._file.seek(0)
        return self._file

    def getvalue(self) -> bytes:
        """Everything spooled, as bytes (for small messages and tests)."""
        return self.reader().read()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MessageSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
