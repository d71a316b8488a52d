"""A raw SMTP client for end-to-end tests: exact reply bytes, XCLIENT, SMTPUTF8.

smtplib hides multi-line structure and refuses some of what these tests must send
(commands out of order, bare LF), so this speaks the protocol itself.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass

POLL_INTERVAL = 0.02


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]  # full lines as received, "553-5.7.1 text", without CRLF
    raw: bytes

    @property
    def text(self) -> str:
        """The last line's text after the code (and enhanced code, if any)."""
        return self.lines[-1][4:]

    def __str__(self) -> str:
        return " | ".join(self.lines)


class SmtpClient:
    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.greeting = self.read()

    def read(self) -> Reply:
        lines: list[str] = []
        raw = b""
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError(f"connection closed after {raw!r}")
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            raw += line + b"\r\n"
            lines.append(line.decode("utf-8", "surrogateescape"))
            if len(line) < 4 or line[3:4] != b"-":
                return Reply(int(line[:3]), tuple(lines), raw)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str) -> Reply:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")
        return self.read()

    def ehlo(self, name: str = "client.test") -> Reply:
        return self.cmd(f"EHLO {name}")

    def starttls(self) -> Reply:
        """STARTTLS (RFC 3207); on 220 the session goes on encrypted. The test
        instances' certificates are self-signed: not verified."""
        reply = self.cmd("STARTTLS")
        if reply.code == 220:
            assert not self.buf, "the server spoke before the handshake"
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self.sock = context.wrap_socket(self.sock)
        return reply

    def xclient(self, **attrs: str) -> Reply:
        """XCLIENT ADDR=.. NAME=.. HELO=.. LOGIN=..; Postfix answers with a new greeting."""
        args = " ".join(f"{k.upper()}={v}" for k, v in attrs.items())
        return self.cmd(f"XCLIENT {args}")

    def data(self, message: bytes) -> Reply:
        """DATA, then the message (dot-stuffed, CRLF-terminated) and the final dot."""
        reply = self.cmd("DATA")
        if reply.code != 354:
            return reply
        body = message.replace(b"\r\n.", b"\r\n..")
        if body.startswith(b"."):
            body = b"." + body
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        self.sock.sendall(body + b".\r\n")
        return self.read()

    def quit(self) -> None:
        with contextlib.suppress(OSError):
            self.cmd("QUIT")
        self.sock.close()

    def __enter__(self) -> SmtpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit()


def wait_for_greeting(
    port: int,
    what: str,
    deadline: float,
    *,
    banner: str = "",
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll until ``what`` answers a connection to ``port`` with a 220 greeting that
    contains ``banner`` (so not some other daemon that took the port first).

    RuntimeError when ``process`` exits first, TimeoutError after ``deadline`` seconds.
    """
    end = time.monotonic() + deadline
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            with SmtpClient("127.0.0.1", port, timeout=5) as client:
                if client.greeting.code == 220 and banner in client.greeting.text:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise TimeoutError(f"{what} gave no 220 greeting on port {port}")
        time.sleep(POLL_INTERVAL)
