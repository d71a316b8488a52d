"""A lean MTA side of the milter protocol, for load: no Postfix, just the packets.

``tests/support/mtclient.py`` (the PyPI ``miltertest`` client) validates every reply
and decodes every packet; that costs more client CPU per session than the milter
spends on a null session, so a load generator built on it measures itself. Here every
packet of a session is encoded once, the option negotiation's answer decides which
steps are sent and which are answered (``SMFIP_NO*`` / ``SMFIP_NR_*``, as Postfix does),
and a session is a tight loop of ``sendall`` and reads.

A session is what Postfix sends for one SMTP session with one message: option
negotiation, CONNECT (with Postfix's connect macros), HELO, MAIL FROM, RCPT TO, DATA,
the headers Postfix passes on (its own Received: first), end of headers, the body, end
of message, QUIT. Any answer other than continue/accept (a reject, a tempfail) is an
error: the benchmark measures mail that passes.
"""

from __future__ import annotations

import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

# Protocol constants (libmilter's mfdef.h).
VERSION = 6
ACTIONS = 0x1FF
#: Every protocol flag Postfix 3.7 offers (SMFIP_NOCONNECT .. SMFIP_HDR_LEADSPC).
PROTOCOL = 0x1FFFFF
NOCONNECT, NOHELO, NOMAIL, NORCPT, NOBODY, NOHDRS, NOEOH = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40
NR_HDR, NODATA, SKIP = 0x80, 0x200, 0x400
NR_CONN, NR_HELO, NR_MAIL, NR_RCPT, NR_DATA = 0x1000, 0x2000, 0x4000, 0x8000, 0x10000
NR_EOH, NR_BODY = 0x40000, 0x80000

#: Final answers (continue, accept) and the ones that refuse the mail.
PASS = frozenset(b"ca")
REFUSE = frozenset(b"rtdy")
#: End-of-message modifications that come before the final answer (and "progress").
MODIFICATIONS = frozenset(b"hime+-2bqp")


def packet(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


def optneg_packet() -> bytes:
    return packet(b"O", struct.pack(">III", VERSION, ACTIONS, PROTOCOL))


def read_packet(stream: BinaryIO) -> tuple[bytes, bytes]:
    head = stream.read(4)
    if len(head) < 4:
        raise ConnectionError("milter closed the connection")
    (length,) = struct.unpack(">I", head)
    body = stream.read(length)
    if len(body) < length:
        raise ConnectionError("milter closed the connection mid-packet")
    return body[:1], body[1:]


def _nul(*values: str) -> bytes:
    return b"".join(v.encode() + b"\0" for v in values)


def macros(stage: bytes, values: dict[str, str]) -> bytes:
    return packet(b"D", stage + _nul(*(x for kv in values.items() for x in kv)))


@dataclass(frozen=True)
class Identity:
    """Who the session claims to be, as Postfix would present it."""

    client_ip: str = "198.51.100.10"
    client_name: str = "mx.good.test"
    helo: str = "mx.good.test"
    sender: str = "bench@sender.bench.test"
    recipient: str = "alice@example.com"
    body_size: int = 1024

    def headers(self) -> list[tuple[str, str]]:
        """What Postfix passes on: its own Received: first, then the client's."""
        date = "Thu, 28 Nov 2024 17:00:00 +0000 (UTC)"
        return [
            (
                "Received",
                f"from {self.helo} ({self.client_name} [{self.client_ip}])\n\tby mx.example.com"
                f" (Postfix) with ESMTP id 4QBENCH0001\n\tfor <{self.recipient}>; {date}",
            ),
            ("From", f"<{self.sender}>"),
            ("To", f"<{self.recipient}>"),
            ("Date", date),
            ("Message-Id", "<20241128170000.4QBENCH0001@sender.bench.test>"),
            ("Subject", "benchmark"),
        ]

    def body(self) -> bytes:
        line = b"La La La La La La La La La La La La La La La La La La La La La La La La\r\n"
        return (line * (self.body_size // len(line) + 1))[: self.body_size]


class SessionScript:
    """The packets of one session, encoded once; :meth:`run` plays them."""

    def __init__(self, identity: Identity) -> None:
        i = identity
        self.identity = i
        self.connect_macros = macros(
            b"C",
            {
                "j": "mx.example.com",
                "{daemon_name}": "mx.example.com",
                "{daemon_addr}": "127.0.0.1",
                "v": "Postfix 3.7.11",
                "_": f"{i.client_name} [{i.client_ip}]",
                "{client_addr}": i.client_ip,
                "{client_name}": i.client_name,
            },
        )
        self.connect = packet(
            b"C",
            i.client_name.encode() + b"\0" + b"4" + struct.pack(">H", 40000) + _nul(i.client_ip),
        )
        self.helo = packet(b"H", _nul(i.helo))
        self.mail_macros = macros(b"M", {"{mail_addr}": i.sender, "{mail_host}": "", "i": ""})
        self.mail = packet(b"M", _nul(f"<{i.sender}>"))
        self.rcpt_macros = macros(
            b"R", {"{rcpt_addr}": i.recipient, "{rcpt_host}": "", "{rcpt_mailer}": "discard"}
        )
        self.rcpt = packet(b"R", _nul(f"<{i.recipient}>"))
        self.data_macros = macros(b"T", {"i": "4QBENCH0001"})
        self.data = packet(b"T")
        self.headers = [packet(b"L", _nul(name, value)) for name, value in i.headers()]
        self.eoh = packet(b"N")
        self.body = packet(b"B", i.body())
        self.eom_macros = macros(b"E", {"i": "4QBENCH0001"})
        self.eom = packet(b"E")
        self.quit = packet(b"Q")

    def open(self, address: str | tuple[str, int], timeout: float) -> socket.socket:
        """Connect (unix path or (host, port))."""
        if isinstance(address, tuple):
            sock = socket.create_connection(address, timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Postfix
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(address)
        return sock

    def negotiate(self, sock: socket.socket, stream: BinaryIO) -> int:
        sock.sendall(optneg_packet())
        cmd, data = read_packet(stream)
        if cmd != b"O" or len(data) < 12:
            raise ConnectionError(f"bad option negotiation answer {cmd!r}")
        _version, _actions, protocol = struct.unpack(">III", data[:12])
        return int(protocol)

    def step(
        self, sock: socket.socket, stream: BinaryIO, pkt: bytes, skip: bool, noreply: bool
    ) -> bytes:
        """Send one command unless the milter asked not to; its answer (b"c" when
        none is expected)."""
        if skip:
            return b"c"
        sock.sendall(pkt)
        if noreply:
            return b"c"
        while True:
            cmd, data = read_packet(stream)
            if cmd == b"p":
                continue
            if ord(cmd) in PASS or cmd == b"s":
                return cmd
            raise SessionRefused(cmd, data)

    def begin(self, sock: socket.socket, stream: BinaryIO, prot: int) -> None:
        """Negotiated socket: CONNECT, HELO, MAIL FROM (the session stays open)."""
        sock.sendall(self.connect_macros)
        self.step(sock, stream, self.connect, bool(prot & NOCONNECT), bool(prot & NR_CONN))
        self.step(sock, stream, self.helo, bool(prot & NOHELO), bool(prot & NR_HELO))
        sock.sendall(self.mail_macros)
        self.step(sock, stream, self.mail, bool(prot & NOMAIL), bool(prot & NR_MAIL))

    def finish(self, sock: socket.socket, stream: BinaryIO, prot: int) -> None:
        """RCPT TO to end of message, after :meth:`begin`."""
        sock.sendall(self.rcpt_macros)
        self.step(sock, stream, self.rcpt, bool(prot & NORCPT), bool(prot & NR_RCPT))
        sock.sendall(self.data_macros)
        self.step(sock, stream, self.data, bool(prot & NODATA), bool(prot & NR_DATA))
        for header in self.headers:
            self.step(sock, stream, header, bool(prot & NOHDRS), bool(prot & NR_HDR))
        self.step(sock, stream, self.eoh, bool(prot & NOEOH), bool(prot & NR_EOH))
        self.step(sock, stream, self.body, bool(prot & NOBODY), bool(prot & NR_BODY))
        sock.sendall(self.eom_macros + self.eom)
        while True:
            cmd, data = read_packet(stream)
            if ord(cmd) in MODIFICATIONS:
                continue
            if ord(cmd) in PASS:
                return
            raise SessionRefused(cmd, data)

    def run(self, address: str | tuple[str, int], timeout: float = 30.0) -> None:
        sock = self.open(address, timeout)
        try:
            stream = sock.makefile("rb")
            prot = self.negotiate(sock, stream)
            self.begin(sock, stream, prot)
            self.finish(sock, stream, prot)
            sock.sendall(self.quit)
        finally:
            sock.close()


class SessionRefused(Exception):
    def __init__(self, cmd: bytes, data: bytes) -> None:
        super().__init__(f"milter answered {cmd!r} {data[:200]!r}")


@dataclass
class LoadResult:
    concurrency: int
    sessions: int
    seconds: float
    latencies: list[float] = field(repr=False)
    errors: int = 0
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.sessions / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return cuts[round(q) - 1]


def drive(
    script: SessionScript,
    address: str | tuple[str, int],
    concurrency: int,
    seconds: float,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> LoadResult:
    """``concurrency`` clients, each running sessions back to back for ``seconds``;
    every session's latency is from socket connect to its QUIT."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    barrier = threading.Barrier(concurrency + 1)
    stop = [0.0]

    def client(mine: list[float]) -> None:
        barrier.wait()
        while clock() < stop[0]:
            t0 = clock()
            try:
                script.run(address)
            except (OSError, SessionRefused) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            mine.append(clock() - t0)

    workers = [
        threading.Thread(target=client, args=(latencies[i],), daemon=True)
        for i in range(concurrency)
    ]
    for w in workers:
        w.start()
    start = clock()
    stop[0] = start + seconds
    barrier.wait()
    for w in workers:
        w.join()
    elapsed = clock() - start
    flat = [x for mine in latencies for x in mine]
    return LoadResult(
        concurrency, len(flat), elapsed, flat, len(errors), errors[0] if errors else ""
    )


def hold_open(
    script: SessionScript, address: str | tuple[str, int], count: int, timeout: float = 30.0
) -> list[socket.socket]:
    """Open ``count`` sessions up to MAIL FROM and leave them open (close with
    :func:`release`)."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = script.open(address, timeout)
            held.append(sock)
            stream = sock.makefile("rb")
            prot = script.negotiate(sock, stream)
            script.begin(sock, stream, prot)
    except BaseException:
        release(script, held)
        raise
    return held


def release(script: SessionScript, held: list[socket.socket]) -> None:
    for sock in held:
        try:
            sock.sendall(packet(b"A") + script.quit)
        except OSError:
            pass
        finally:
            sock.close()
