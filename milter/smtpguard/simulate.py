"""``smtpguard simulate``: one session through the configured pipeline, no MTA.

It drives :class:`~smtpguard.driver.SessionDriver`, the very code the milter runs,
with macros built from the command line, and reports each stage's outcome and the
exact reply a client would get. The configured backends (directory, blacklist, DNS,
scanners) are the real ones, so a simulation answers "what would happen now"; it
changes none of the service's state (the caller passes the blacklist as read and
same-size counters of its own).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from smtpguard.app import Runtime
from smtpguard.checks import domain_of
from smtpguard.config import COMBINED, GLOBAL_TABLE, DomainPolicy
from smtpguard.driver import SessionDriver
from smtpguard.message import as_read
from smtpguard.pipeline import TRACE, Action, Decision
from smtpguard.state import SessionGate

CHUNK = 65535  # what an MTA sends per body packet
#: Codes in front of whose text Sendmail writes the path of the MAIL FROM or RCPT TO it
#: answers, and "... " (measured: contrib/sendmail/README.md, tests/e2e/test_sendmail.py).
SENDMAIL_PREFIXED = frozenset({"450", "550", "553"})
#: Sendmail's MAXSHORTSTR: a path this long or longer is shortened in its replies.
SENDMAIL_SHORTEN = 203


@dataclass(frozen=True)
class Envelope:
    client: str
    sender: str
    recipients: tuple[str, ...]
    client_name: str = ""
    helo: str | None = None
    login: str | None = None
    auth_type: str = "LOGIN"
    tls: bool = False
    mta: str = "postfix"
    sender_params: tuple[str, ...] = ()


@dataclass
class Result:
    lines: list[str] = field(default_factory=list)
    accepted: bool = False


def _describe(decision: Decision, sendmail_path: str | None = None) -> str:
    """The outcome, and the reply as the client reads it: through Sendmail, where
    ``sendmail_path`` is the path of the command answered, with Sendmail's prefix."""
    reply = decision.reply
    if reply is None:
        return decision.action.value
    lines = reply.wire_lines()
    if sendmail_path is not None and len(sendmail_path) >= SENDMAIL_SHORTEN:
        # Sendmail writes the path through shortenstring(path, MAXSHORTSTR): the first
        # and the last 100 characters around "..." (second review).
        half = (SENDMAIL_SHORTEN - 3) // 2
        sendmail_path = f"{sendmail_path[:half]}...{sendmail_path[-half:]}"
    if sendmail_path is not None and reply.code in SENDMAIL_PREFIXED:
        # Only the first line of a multi-line reply gets it (measured with replies.hint).
        head = len(f"{reply.code} {reply.xcode} ")
        lines[0] = f"{lines[0][:head]}{sendmail_path}... {lines[0][head:]}"
    return " | ".join(lines) + f"   [{reply.reply_id}]"


def describe_domain(policy: DomainPolicy | None) -> str:
    """The ``[domain."X"]`` table a transaction got, with what it sets."""
    if policy is None:
        return "global settings (no [domain] table for the recipients' domain)"
    modes = ", ".join(f"{name}={mode}" for name, mode in policy.checks)
    tables = [
        "the global settings" if name == GLOBAL_TABLE else f'[domain."{name}"]'
        for name in policy.domain.split(COMBINED)
    ]
    title = tables[0] if len(tables) == 1 else " + ".join(tables) + " at their strictest"
    return (
        f"{title}: max_message_size={policy.max_message_size}"
        f" max_attachment_size={policy.max_attachment_size} max_rcpt={policy.max_rcpt}"
        f" languages={','.join(policy.languages)} form={policy.form}"
        f" antispam={policy.add_header_score:g}/{policy.reject_score:g}"
        + (f" checks: {modes}" if modes else "")
    )


def _domain_lines(runtime: Runtime, driver: SessionDriver) -> list[str]:
    if not runtime.config.domains:
        return []
    policy = domain_of(runtime.config, driver.conn.txn)
    return [f"{'domain policy':28} {describe_domain(policy)}"]


def split_message(raw: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """Header fields as the milter's adapter hands them on (name, and the value without
    the one space after the colon, marked where there was none) and the body."""
    text = raw.replace(b"\r\n", b"\n")
    head, _, body = text.partition(b"\n\n")
    written: list[tuple[str, str]] = []
    for line in head.decode("utf-8", "surrogateescape").split("\n"):
        if line[:1] in (" ", "\t") and written:
            name, value = written[-1]
            written[-1] = (name, f"{value}\n{line}")
        elif ":" in line:
            name, _, value = line.partition(":")
            written.append((name, value))
    return [(name, as_read(value)) for name, value in written], body.replace(b"\n", b"\r\n")


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), CHUNK):
        yield body[start : start + CHUNK]


def _macros(runtime: Runtime, env: Envelope) -> dict[str, str]:
    macros: dict[str, str] = {
        "v": "Postfix 3.7.11" if env.mta == "postfix" else "8.17.1.9",
        "j": sorted(runtime.config.site.our_hostnames or {"localhost"})[0],
        "i": "SIMULATED",
    }
    if env.login:
        macros["{auth_authen}"] = env.login
        macros["{auth_type}"] = env.auth_type
    if env.tls:
        macros["{tls_version}"] = "TLSv1.3"
    if env.client_name:
        # --client-name is the name the MTA resolved and confirmed, for either MTA.
        macros["{client_resolve}"] = "OK"
    return macros


def simulate(runtime: Runtime, env: Envelope, message: bytes | None) -> Result:
    result = Result()
    out = result.lines
    macros = _macros(runtime, env)
    driver = SessionDriver(runtime, SessionGate(runtime.config.limits.max_sessions), macros.get)
    trace: list[str] = []
    driver.conn.scratch[TRACE] = trace
    family = socket.AF_INET6 if ":" in env.client else socket.AF_INET

    def step(label: str, decision: Decision, path: str | None = None) -> bool:
        """``path``: of the MAIL FROM or RCPT TO answered, which Sendmail may echo."""
        echoed = path if env.mta == "sendmail" else None
        out.append(f"{label:28} {_describe(decision, echoed)}")
        out.extend(f"    {line}" for line in trace)
        trace.clear()
        return decision.action in (Action.REJECT, Action.TEMPFAIL)

    try:
        step(
            "connect " + env.client,
            driver.connect(env.client_name or f"[{env.client}]", family, (env.client, 25)),
        )
        if env.helo is not None:
            step(f"helo {env.helo}", driver.helo(env.helo))
        sender = f"<{env.sender}>"
        if step(f"mail from:{sender}", driver.mail(sender, env.sender_params), sender):
            out.append("result: refused at MAIL FROM")
            return result
        accepted = [
            r for r in env.recipients if not step(f"rcpt to:<{r}>", driver.rcpt(f"<{r}>"), f"<{r}>")
        ]
        if not accepted:
            out.append("result: every recipient refused")
            return result
        out.extend(_domain_lines(runtime, driver))
        if message is None:
            out.append(f"result: envelope accepted for {len(accepted)} recipient(s)")
            result.accepted = True
            return result
        headers, body = split_message(message)
        driver.data()
        for name, value in headers:
            step(f"header {name}", driver.header(name, value))
        step("end of headers", driver.eoh())
        skipped = False
        for chunk in _chunks(body):
            if driver.body(chunk).action is Action.SKIP:
                skipped = True
                break
        if skipped:
            out.append(f"{'body':28} skipped (a verdict waits for end of message)")
        final = driver.eom()
        step("end of message", final)
        for name, value in final.headers:
            out.append(f"{'  add header':28} {name}: {value}")
        result.accepted = final.action is Action.CONTINUE
        out.append("result: " + ("accepted" if result.accepted else "refused at end of message"))
        return result
    finally:
        driver.close()
