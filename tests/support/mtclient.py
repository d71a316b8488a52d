"""The MTA side of the milter protocol, on top of the PyPI ``miltertest`` package.

Unlike Debian's Lua harness it returns the code, enhanced code and full text of a
reply at any stage. Every reply received is validated the way Postfix would judge it.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import miltertest
from miltertest import constants as C

from .expected import SPEC, default_line

POLL_INTERVAL = 0.02
DEFAULT_CONNECT_MACROS = {"j": "mx.example.com", "v": "Postfix 3.7.11", "{daemon_name}": "mx"}


@dataclass(frozen=True)
class Answer:
    """One milter response: ``kind`` is continue / accept / reject / tempfail /
    discard / reply; for ``reply`` the code, xcode and text lines."""

    kind: str
    code: str = ""
    xcode: str = ""
    lines: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return f"{self.kind} {self.code} {self.xcode} {self.lines}"


_KINDS = {
    C.SMFIR_CONTINUE: "continue",
    C.SMFIR_ACCEPT: "accept",
    C.SMFIR_REJECT: "reject",
    C.SMFIR_TEMPFAIL: "tempfail",
    C.SMFIR_DISCARD: "discard",
}
#: The no-reply protocol bit a milter may negotiate for each command.
_NO_REPLY = {
    C.SMFIC_CONNECT: C.SMFIP_NR_CONN,
    C.SMFIC_HELO: C.SMFIP_NR_HELO,
    C.SMFIC_MAIL: C.SMFIP_NR_MAIL,
    C.SMFIC_RCPT: C.SMFIP_NR_RCPT,
    C.SMFIC_DATA: C.SMFIP_NR_DATA,
    C.SMFIC_HEADER: C.SMFIP_NR_HDR,
    C.SMFIC_EOH: C.SMFIP_NR_EOH,
    C.SMFIC_BODY: C.SMFIP_NR_BODY,
}
#: The protocol bit with which a milter asks not to be sent a command at all.
_NOT_SENT = {
    C.SMFIC_CONNECT: C.SMFIP_NOCONNECT,
    C.SMFIC_HELO: C.SMFIP_NOHELO,
    C.SMFIC_MAIL: C.SMFIP_NOMAIL,
    C.SMFIC_RCPT: C.SMFIP_NORCPT,
    C.SMFIC_DATA: C.SMFIP_NODATA,
    C.SMFIC_HEADER: C.SMFIP_NOHDRS,
    C.SMFIC_EOH: C.SMFIP_NOEOH,
    C.SMFIC_BODY: C.SMFIP_NOBODY,
}
_LINE = re.compile(r"([45][0-9][0-9])([ -])([245]\.[0-9]{1,3}\.[0-9]{1,3}) (.*)\Z", re.S)


def parse_reply(raw: str) -> Answer:
    """Parse and validate a SMFIR_REPLYCODE buffer ("554 5.7.1 text" or multi-line)."""
    lines = raw.split("\r\n")
    codes, xcodes, texts = set(), set(), []
    for i, line in enumerate(lines):
        m = _LINE.match(line)
        assert m, f"malformed reply line {line!r}"
        code, sep, xcode, text = m.groups()
        assert sep == ("-" if i < len(lines) - 1 else " "), f"bad continuation in {raw!r}"
        assert code[0] == xcode[0], f"class mismatch {code} {xcode}: Postfix calls it malformed"
        assert "\r" not in text
        assert "\n" not in text
        assert len(line.encode()) + 2 <= 512, "RFC 5321 reply line limit"
        codes.add(code)
        xcodes.add(xcode)
        texts.append(text)
    assert len(codes) == 1, f"mixed codes in {raw!r}"
    assert len(xcodes) == 1, f"mixed enhanced codes in {raw!r}"
    return Answer("reply", codes.pop(), xcodes.pop(), tuple(texts))


@dataclass
class MilterSession:
    """One SMTP session as an MTA would present it to the milter."""

    address: str | tuple[str, int]
    timeout: float = 10.0
    #: Offer SMFIP_HDR_LEADSPC, as Postfix and Sendmail 8.14+ do; False: an MTA that
    #: removes the space after the colon itself and adds it to the milter's fields.
    leadspc: bool = True
    conn: miltertest.MilterConnection = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.address, tuple):
            sock = socket.create_connection(self.address, timeout=self.timeout)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(self.address)
        self.conn = miltertest.MilterConnection(sock)
        offered = C.SMFI_V6_PROT if self.leadspc else C.SMFI_V6_PROT & ~C.SMFIP_HDR_LEADSPC
        self.conn.optneg_mta(protocol=offered)

    @property
    def verbatim_headers(self) -> bool:
        """Whether the milter negotiated SMFIP_HDR_LEADSPC."""
        return bool((self.conn.protocol_flags or 0) & C.SMFIP_HDR_LEADSPC)

    def _answer(self, cmd: str, macros: dict[str, str] | None, **args: object) -> Answer:
        if (self.conn.protocol_flags or 0) & _NOT_SENT.get(cmd, 0):
            # Negotiated away: Postfix sends neither the command nor its macros.
            return Answer("continue")
        if macros:
            self.conn.send_macro(cmd, **macros)
        no_reply = _NO_REPLY.get(cmd, 0)
        if no_reply and (self.conn.protocol_flags or 0) & no_reply:
            # Negotiated away, as Postfix honours it: send and do not wait.
            self.conn._send(cmd, **args)
            return Answer("continue")
        rcmd, rdict = self.conn.send_get(cmd, **args)
        if rcmd == C.SMFIR_REPLYCODE:
            return parse_reply(rdict["smtpcode"] + rdict["space"] + rdict["text"])
        assert rcmd in _KINDS, f"unexpected response {rcmd!r}"
        return Answer(_KINDS[rcmd])

    def connect(
        self,
        ip: str = "198.51.100.7",
        hostname: str | None = None,
        macros: dict[str, str] | None = None,
    ) -> Answer:
        family = "6" if ":" in ip else "4"
        return self._answer(
            C.SMFIC_CONNECT,
            {**DEFAULT_CONNECT_MACROS, **(macros or {})},
            hostname=hostname or f"[{ip}]",
            family=family,
            port=40000,
            address=ip,
        )

    def helo(self, name: str, macros: dict[str, str] | None = None) -> Answer:
        return self._answer(C.SMFIC_HELO, macros, helo=name)

    def mail(self, path: str, *esmtp: str, macros: dict[str, str] | None = None) -> Answer:
        return self._answer(C.SMFIC_MAIL, macros, args=[path, *esmtp])

    def rcpt(self, path: str, *esmtp: str, macros: dict[str, str] | None = None) -> Answer:
        return self._answer(C.SMFIC_RCPT, macros, args=[path, *esmtp])

    def data(self, macros: dict[str, str] | None = None) -> Answer:
        return self._answer(C.SMFIC_DATA, macros)

    def header(self, name: str, value: str) -> Answer:
        """The field ``Name: value`` (one space after the colon, the common form)."""
        return self.written_header(name, " " + value)

    def written_header(self, name: str, after_colon: str) -> Answer:
        """The field exactly as ``Name:`` + ``after_colon``, sent as the MTA would: in
        full with SMFIP_HDR_LEADSPC, else with one leading space removed."""
        value = after_colon
        if not self.verbatim_headers and value.startswith(" "):
            value = value[1:]
        return self._answer(C.SMFIC_HEADER, None, name=name, value=value)

    def eoh(self) -> Answer:
        return self._answer(C.SMFIC_EOH, None)

    def body(self, chunk: str) -> Answer:
        return self._answer(C.SMFIC_BODY, None, buf=chunk)

    def eom(self) -> tuple[Answer, list[tuple[str, dict[str, str]]]]:
        """End of message: the final answer, and the modifications sent before it.

        A header field's value is given as after ``Name: ``, whatever was negotiated:
        with SMFIP_HDR_LEADSPC the MTA writes ``Name:`` + the value as sent, so the
        milter must send that space itself (asserted here) and it is removed."""
        messages = self.conn.send_eom()
        rcmd, rdict = messages[-1]
        if rcmd == C.SMFIR_REPLYCODE:
            answer = parse_reply(rdict["smtpcode"] + rdict["space"] + rdict["text"])
        else:
            assert rcmd in _KINDS, f"unexpected response {rcmd!r}"
            answer = Answer(_KINDS[rcmd])
        mods = messages[:-1]
        if self.verbatim_headers:
            mods = [(cmd, _as_after_space(cmd, args)) for cmd, args in mods]
        return answer, mods

    def message(
        self,
        headers: list[tuple[str, str]],
        body: str | bytes,
        chunk: int = 65535,
        *,
        data: bool = True,
    ) -> tuple[Answer, list[tuple[str, dict[str, str]]], list[Answer]]:
        """DATA (unless ``data`` is false: sent already), headers, EOH, body (in
        chunks), EOM; returns the EOM answer, the EOM modifications and every earlier
        non-continue answer."""
        early = []
        steps = (*((self.data(),) if data else ()), *(self.header(n, v) for n, v in headers))
        for answer in (*steps, self.eoh()):
            if answer.kind != "continue":
                early.append(answer)
        raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body
        for start in range(0, len(raw), chunk):
            answer = self.body_bytes(raw[start : start + chunk])
            if answer.kind != "continue":
                early.append(answer)
                if answer.kind == "skip":
                    break
        final, mods = self.eom()
        return final, mods, early

    def connect_bytes(self, hostname: bytes, ip: str = "198.51.100.7") -> Answer:
        """Connect with a host name of raw octets (miltertest's codec encodes str
        only); the reply read as :meth:`connect` reads it."""
        self.conn.send_macro(C.SMFIC_CONNECT, **DEFAULT_CONNECT_MACROS)
        packet = (
            C.SMFIC_CONNECT.encode()
            + hostname
            + b"\0"
            + b"4"
            + (40000).to_bytes(2, "big")
            + ip.encode()
            + b"\0"
        )
        return self._raw(packet, C.SMFIP_NR_CONN)

    def helo_bytes(self, name: bytes) -> Answer:
        """HELO with a name of raw octets, read as :meth:`helo` reads the answer."""
        return self._raw(C.SMFIC_HELO.encode() + name + b"\0", C.SMFIP_NR_HELO)

    def header_bytes(self, name: bytes, value: bytes) -> Answer:
        """A header field of raw octets, ``value`` as after ``Name:``."""
        return self._raw(C.SMFIC_HEADER.encode() + name + b"\0" + value + b"\0", C.SMFIP_NR_HDR)

    def _raw(self, packet: bytes, no_reply: int) -> Answer:
        """Send a packet of raw octets (miltertest's codec encodes str only); its
        answer unless ``no_reply`` was negotiated."""
        self.conn.sock.sendall(len(packet).to_bytes(4, "big") + packet)
        if (self.conn.protocol_flags or 0) & no_reply:
            return Answer("continue")
        rcmd, rdict = self.conn.recv()
        if rcmd == C.SMFIR_REPLYCODE:
            return parse_reply(rdict["smtpcode"] + rdict["space"] + rdict["text"])
        assert rcmd in _KINDS, f"unexpected response {rcmd!r}"
        return Answer(_KINDS[rcmd])

    def body_bytes(self, chunk: bytes) -> Answer:
        # miltertest's codec encodes str only; send raw octets (NUL, 8-bit) ourselves.
        packet = C.SMFIC_BODY.encode() + chunk
        self.conn.sock.sendall(len(packet).to_bytes(4, "big") + packet)
        if (self.conn.protocol_flags or 0) & C.SMFIP_NR_BODY:
            return Answer("continue")  # no reply per chunk, as Postfix honours it
        rcmd, _ = self.conn.recv()
        if rcmd == C.SMFIR_SKIP:
            return Answer("skip")
        assert rcmd in _KINDS, f"unexpected response {rcmd!r}"
        return Answer(_KINDS[rcmd])

    def abort(self) -> None:
        self.conn._send(C.SMFIC_ABORT)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn._send(C.SMFIC_QUIT)
        self.conn.sock.close()

    def __enter__(self) -> MilterSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_after_space(cmd: str, args: dict[str, str]) -> dict[str, str]:
    """A header edit sent with SMFIP_HDR_LEADSPC, its value as after ``Name: ``."""
    value = args.get("value", "")
    if cmd not in (C.SMFIR_ADDHEADER, C.SMFIR_INSHEADER, C.SMFIR_CHGHEADER) or not value:
        return args  # not a header edit, or a removal (an empty value)
    assert value.startswith(" "), f"{args['name']}:{value!r} would be written without a space"
    return {**args, "value": value[1:]}


def wait_for_socket(address: Path | str | tuple[str, int], deadline: float = 15.0) -> None:
    """Poll until a unix or TCP socket accepts connections (never a fixed sleep)."""
    end = time.monotonic() + deadline
    while True:
        try:
            if isinstance(address, tuple):
                socket.create_connection(address, timeout=1).close()
                return
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(address))
                return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(POLL_INTERVAL)


def assert_reply(answer: Answer, reply_id: str) -> None:
    """``answer`` is exactly the table's reply for ``reply_id`` in the default policy."""
    code, xcode, _en, _zh = SPEC[reply_id]
    assert (answer.kind, answer.code, answer.xcode, answer.lines) == (
        "reply",
        code,
        xcode,
        (default_line(reply_id),),
    ), f"{reply_id}: got {answer}"


def assert_pass(answer: Answer) -> None:
    assert answer.kind == "continue", f"expected continue, got {answer}"
