"""One SMTP session driven through the pipeline, independent of libmilter.

The pymilter adapter and ``smtpguard simulate`` both drive sessions through this class,
so a simulation runs exactly the code path of the milter: the same parsing of
addresses and ESMTP parameters, the same macros, the same pipeline.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, Final

from smtpguard.address import (
    AddressError,
    IPAddress,
    esmtp_params,
    parse_path,
    unmapped,
    xtext_decode,
)
from smtpguard.app import Runtime
from smtpguard.checks import Event, Stage
from smtpguard.logsetup import kv
from smtpguard.pipeline import ADAPTER, CONTINUE, Action, Decision
from smtpguard.session import MTA, Connection, Transaction, detect_mta, new_session_id
from smtpguard.state import SessionGate
from smtpguard.verdict import Hit, TempError

log = logging.getLogger("smtpguard")
#: Characters of header fields collected (batch_headers) before they are judged
#: anyway: memory stays bounded by this, not by the header block's size.
HEADER_BATCH_CHARS: Final = 256 * 1024

#: The client Postfix's cleanup shows for a local submission (cleanup_milter.c; ::1
#: with inet_protocols = ipv6, review rev228 M1).
_LOOPBACKS: Final = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})

#: Looks up an MTA macro ("v", "{auth_authen}", ...); None when the MTA did not send it.
MacroLookup = Callable[[str], str | None]


class Once:
    """True the first time it is called, then False; safe across session threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False

    def __call__(self) -> bool:
        with self._lock:
            first, self._done = not self._done, True
            return first


#: The missing-v warning concerns the MTA's configuration, not one session: every
#: session of a misconfigured Sendmail would repeat it.
UNANNOUNCED_NOTICE = Once()
#: So does the warning that macro v contradicts milter.mta.
CONTRADICTED_NOTICE = Once()


class UnresolvedNotice(Once):
    """Once per process, for a configuration whose exemptions by host name depend on
    the MTA's {client_resolve}: none, without a resolver (review rev152 F1: with the
    INPUT_MAIL_FILTER line alone such an exemption was off, silently)."""

    def due(self, runtime: Runtime) -> bool:
        if self._done:
            return False  # said already: no look at the exemptions at every connect
        config = runtime.config
        if config.dns.enabled or not any(ex.host_suffixes for ex in config.policy.exempt):
            return False
        return self()


UNRESOLVED_NOTICE = UnresolvedNotice()


@functools.lru_cache(maxsize=4096)  # the same clients come back; parsing costs more
def _ip_address(text: str) -> IPAddress:
    # An IPv4 client on the MTA's dual-stack socket (Sendmail can hand these over):
    # trusted networks, HELO literals and Received are written in IPv4.
    return unmapped(ipaddress.ip_address(text))


def client_ip(family: int, hostaddr: Any) -> IPAddress | None:
    """The client IP from ``connect``'s hostaddr: a tuple from libmilter (IP first), a
    bare string from ``Milter.testctx``; None for a unix socket or garbage."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    raw = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else hostaddr
    try:
        # Drop an IPv6 zone id ("fe80::1%eth0"): it is not part of the address.
        return _ip_address(str(raw).split("%", 1)[0])
    except ValueError:
        return None


def _declared_size(size: str | None) -> int | None:
    """RFC 1870's SIZE=1*20DIGIT read as the MTA reads it: leading zeros skipped
    (Postfix's off_cvt_string, Sendmail's strtol; review rev186 F1: 27 digits meaning
    200000 skipped the size checks at MAIL), a "+" Sendmail's strtol takes (review
    rev191 F3), and a value past 20 digits past every limit. isdigit() alone also
    accepts "²" and the like."""
    size = size.removeprefix("+") if size else size
    if not size or not (size.isascii() and size.isdigit()):
        return None
    digits = size.lstrip("0")
    return int(digits or "0") if len(digits) <= 20 else 10**20


class SessionDriver:
    def __init__(
        self,
        runtime: Runtime,
        gate: SessionGate,
        macro: MacroLookup,
        unannounced_notice: Once = UNANNOUNCED_NOTICE,
        *,
        batch_headers: bool = False,
        unresolved_notice: UnresolvedNotice = UNRESOLVED_NOTICE,
    ) -> None:
        # A session keeps the runtime it started with, even across a reload.
        self.rt = runtime
        self.gate = gate
        self.macro = macro
        self.unannounced_notice = unannounced_notice
        self.unresolved_notice = unresolved_notice
        self.conn = Connection(new_session_id(), None, None, "")
        self.entered = False
        #: This session's transaction is counted in the gate's ``busy``.
        self.in_transaction = False
        #: Header fields are collected and judged together at the next step (the first
        #: body chunk or the end of the message): for an MTA that waits for no reply
        #: per field, where a field's verdict waits for end of message anyway.
        self.batch_headers = batch_headers
        self._fields: list[tuple[str, str]] = []
        #: Characters of the fields collected: judged once they pass HEADER_BATCH_CHARS.
        self._batched = 0
        #: Header fields of the current message so far, and how many may be judged.
        self._field_count = 0
        self._max_fields = runtime.config.limits.max_header_fields

    def _macro(self, name: str) -> str | None:
        return self.macro(name) or None

    def _login(self) -> str | None:
        login = self._macro("{auth_authen}")
        if login and self.conn.mta is MTA.SENDMAIL:
            # Sendmail hands the login over xtext-encoded (bob+x is "bob+2Bx"); Postfix
            # as the client sent it. Not without macro v: that may be a Postfix too
            # (second review); sendmail-config's lines send v.
            return xtext_decode(login)
        return login

    def internal_error(self, stage: Stage) -> Decision:
        return self.rt.pipeline.internal_error(self.conn, stage, ADAPTER)

    def connect(self, hostname: str, family: int, hostaddr: Any) -> Decision:
        conn = self.conn
        conn.client_ip = client_ip(family, hostaddr)
        if isinstance(hostaddr, tuple) and len(hostaddr) > 1:
            conn.client_port = int(hostaddr[1])
        conn.client_name = hostname or ""
        configured = self.rt.config.milter.mta
        conn.mta = detect_mta(self._macro("v"), configured)
        if configured not in ("auto", conn.mta.value) and CONTRADICTED_NOTICE():
            log.warning(
                'sid=%s milter.mta = "%s", but the MTA\'s macro %s names %s: answering as'
                ' to %s (logged once per process); set milter.mta = "auto"',
                conn.session_id,
                configured,
                kv("v", self._macro("v")),
                conn.mta.value,
                conn.mta.value,
            )
        # Postfix's name is confirmed or "unknown", Sendmail's any name; both say in
        # {client_resolve} whether the lookup failed for now (TEMP; Sendmail then gives
        # the name as "[IP]"): a verdict an exemption by host name would spare must not
        # be permanent then (reviews rev152 F1, rev153 F1: TEMP was read as FAIL).
        resolve = self._macro("{client_resolve}")
        # cleanup_milter.c's ersatz client for a local submission: localhost [127.0.0.1]
        # with port 0, which no TCP client has, and without smtpd's {client_resolve}
        # (cleanup knows no such macro; it does send {daemon_addr}, measured with 3.7):
        # an XCLIENT PORT=0 through smtpd is no local submission (review rev228 M4).
        # postfix-config has smtpd send {client_resolve}.
        conn.local_submission = (
            conn.client_port == 0
            and conn.mta is MTA.POSTFIX
            and conn.client_name == "localhost"
            and conn.client_ip in _LOOPBACKS
            and resolve is None
        )
        conn.client_name_unsure = resolve == "TEMP"
        if conn.client_name in ("", "unknown") or conn.client_name.startswith("["):
            conn.client_name_confirmed = False
        else:
            conn.client_name_confirmed = conn.mta is MTA.POSTFIX or resolve == "OK"
        if resolve is None and conn.mta is not MTA.POSTFIX and self.unresolved_notice.due(self.rt):
            log.warning(
                "sid=%s the MTA sent no macro {client_resolve} and smtpguard has no"
                " resolver ([dns] nameservers): client names are not confirmed, so no"
                " exemption by host_suffixes applies; logged once per process. Use the"
                " whole sendmail-config output",
                conn.session_id,
            )
        if conn.mta is MTA.UNANNOUNCED and self.unannounced_notice():
            log.warning(
                "sid=%s the MTA sent no macro v (Postfix does by default, Sendmail only when "
                "its .mc has the defines of smtpguard sendmail-config): replies are ASCII "
                "only, as for Sendmail, which clears the 8th bit of reply text, and SASL "
                "logins are taken as sent (Sendmail xtext-encodes them: a login with + or = "
                "is then unknown); logged once per process. Use the whole sendmail-config "
                'output, or set milter.mta = "sendmail"',
                conn.session_id,
            )
        conn.trusted_network = self.rt.config.site.is_trusted_ip(conn.client_ip)
        self.entered = True
        conn.admitted = self.gate.enter()
        self.rt.services.metrics.session_opened()
        return self.rt.pipeline.run(Stage.CONNECT, conn)

    def helo(self, name: str) -> Decision:
        if self.conn.txn is not None:
            # HELO and EHLO reset the transaction (RFC 5321 §4.1.4); libmilter sends no
            # abort after a message, nor after a refused MAIL FROM (review rev135 F1).
            self.abort()
        self.conn.helo = name
        self.conn.tls_version = self._macro("{tls_version}")
        return self.rt.pipeline.run(Stage.HELO, self.conn)

    def mail(self, mailfrom: str, args: tuple[str, ...] | list[str]) -> Decision:
        conn = self.conn
        if not self.entered and conn.pending is None:
            # pymilter decodes the connect host name before any of our code runs; an
            # undecodable one skipped connect, and with it every check of the client
            # address (review rev74 F1). No MTA we know sends one, but a session we
            # know nothing of is not one to pass.
            log.warning(
                "sid=%s MAIL FROM without a connect step (its host name could not be"
                " read?): tempfail",
                conn.session_id,
            )
            conn.defer(TempError("internal_error", "no connect step"), ADAPTER)
        self._fields = []
        self._batched = 0
        self._field_count = 0
        self._transaction_over()
        self.rt.pipeline.end_transaction(conn.txn, conn)
        if self.gate.draining:
            # No new message once the service stops: a stop waits for the messages
            # under way only (review rev193 F1); the MTA retries this one elsewhere or
            # later, as it does a new session's.
            conn.defer(Hit("queue_unavailable", "draining: the service is stopping"), ADAPTER)
        params = esmtp_params(args)
        smtputf8 = "SMTPUTF8" in params
        try:
            sender, error = parse_path(mailfrom, smtputf8=smtputf8), ""
        except AddressError as exc:
            sender, error = None, exc.reason
        size = params.get("SIZE")
        conn.txn = Transaction(
            sender=sender,
            sender_raw=mailfrom,
            esmtp=params,
            sender_error=error,
            smtputf8=smtputf8,
            declared_size=_declared_size(size),
            auth_type=self._macro("{auth_type}"),
            auth_login=self._login(),
            queue_id=self._macro("i"),
        )
        conn.transactions += 1
        if not conn.tls_version:
            # STARTTLS with no EHLO after it (Sendmail allows AUTH then): MAIL's macros
            # are the first to say the session is encrypted.
            conn.tls_version = self._macro("{tls_version}") or conn.tls_version
        return self.rt.pipeline.run(Stage.MAIL, conn)

    def _transaction_over(self) -> None:
        """The transaction is answered, aborted or replaced: a stop no longer waits
        for this session."""
        if self.in_transaction:
            self.in_transaction = False
            self.gate.end_transaction()

    def rcpt(self, rcptto: str, args: tuple[str, ...] | list[str] = ()) -> Decision:
        conn = self.conn
        self._queue_id()
        smtputf8 = conn.txn.smtputf8 if conn.txn else False
        try:
            rcpt = parse_path(rcptto, smtputf8=smtputf8, allow_postmaster=True)
        except AddressError:
            rcpt = None
        if rcpt is not None and rcpt.is_null:
            rcpt = None  # RCPT TO:<> is not a mailbox (RFC 5321 §4.1.1.3)
        decision = self.rt.pipeline.run(Stage.RCPT, conn, Event(rcpt=rcpt, rcpt_raw=rcptto))
        if decision.action is Action.CONTINUE and conn.txn is not None:
            conn.txn.accept(rcpt, rcptto)
        return decision

    def data(self) -> Decision:
        self._queue_id()
        if self.conn.txn is not None and not self.in_transaction:
            # A message under way from here: a stop waits for its verdict. Before
            # DATA a stop may cut the session: the MTA defers the message.
            self.in_transaction = True
            self.gate.begin_transaction()
        return CONTINUE

    def header(self, name: str, value: str) -> Decision:
        self._field_count += 1
        if self._field_count > self._max_fields:
            return self._too_many_fields(self._max_fields, name, value)
        if self.batch_headers:
            self._fields.append((name, value))
            self._batched += len(name) + len(value)
            if self._batched > HEADER_BATCH_CHARS:
                # Review rev169 F2: a header block of 54 MB was held whole until its end.
                self._flush_headers()
            return CONTINUE
        return self.rt.pipeline.run(Stage.HEADER, self.conn, Event(header=(name, value)))

    def _too_many_fields(self, limit: int, name: str, value: str) -> Decision:
        """Past the limit nothing more is kept or judged: the message gets
        message_too_long at its end (the count is the message's own: a retry would
        not change it), unless a field before it already has a verdict. A dry run
        lets it pass, as it lets every refusal pass, remembering only the fields that
        would pass for our result fields (a forged Authentication-Results, X-Spam-*),
        to remove them; more of those than the limit are refused all the same."""
        dry_run = self.rt.config.milter.dry_run
        txn = self.conn.txn
        if txn is not None:
            self.rt.pipeline.count_field(txn, name, value)
        if self._field_count == limit + 1:
            self._flush_headers()
            log.warning(
                "sid=%s more than %d header fields (limits.max_header_fields): the rest"
                " is not judged%s",
                self.conn.session_id,
                limit,
                ", dry run: the message passes" if dry_run else "",
            )
            decision = self.rt.pipeline.header_flood(self.conn, f"more than {limit} header fields")
            if not dry_run:
                return decision
        if (
            dry_run
            and txn is not None
            and txn.pending is None
            and self.rt.pipeline.note_field_past_limit(txn, name, value) > limit
        ):
            return self.rt.pipeline.header_flood(
                self.conn,
                f"more than {limit} fields that would pass for our result fields",
                dry_run_passes=False,
            )
        return CONTINUE

    def _flush_headers(self) -> None:
        self._batched = 0
        if self._fields:
            fields, self._fields = self._fields, []
            # A verdict on a field is kept in the transaction (pending) and answered at
            # end of message, as it would be had each field been judged on arrival.
            self.rt.pipeline.run_headers(self.conn, fields)

    def eoh(self) -> Decision:
        self._flush_headers()
        return self.rt.pipeline.run(Stage.EOH, self.conn)

    def body(self, chunk: bytes) -> Decision:
        self._flush_headers()
        return self.rt.pipeline.run(Stage.BODY, self.conn, Event(chunk=chunk))

    def eom(self, listening: Callable[[], bool] | None = None) -> Decision:
        """End of message; ``listening`` as :meth:`Pipeline.run` takes it."""
        if self.conn.txn is None:
            # A message with no MAIL FROM behind it: no MTA sends one, but a step we
            # lost (review rev157 F1: an undecodable SMFIC_UNKNOWN taken for HELO
            # reset the transaction) left a message no check had seen, which
            # "continue" accepted with no summary line.
            log.warning(
                "sid=%s end of message without a transaction (MAIL FROM lost?): tempfail",
                self.conn.session_id,
            )
            return self.internal_error(Stage.EOM)
        try:
            self._queue_id()
            self._flush_headers()
            return self.rt.pipeline.run(Stage.EOM, self.conn, listening=listening)
        finally:
            self._transaction_over()

    def abort(self) -> None:
        self._fields = []
        self._transaction_over()
        self.rt.pipeline.end_transaction(self.conn.txn, self.conn)
        self.conn.txn = None

    def close(self) -> None:
        self._fields = []
        self._transaction_over()
        try:
            self.rt.pipeline.end_transaction(self.conn.txn, self.conn)
            self.rt.pipeline.end_session(self.conn)
        finally:
            # A fault while ending the transaction must not keep the session's slot:
            # max_sessions would shrink by one for good.
            self.conn.txn = None
            self.conn.abandon()
            if self.entered:
                self.entered = False
                if self.conn.admitted:
                    self.gate.leave()
                self.rt.services.metrics.session_closed()

    def _queue_id(self) -> None:
        # Sendmail gives it from MAIL; Postfix once it opened the queue file, after
        # the first recipient it accepted: from the second RCPT TO on (its
        # milter_rcpt_macros have "i"; review rev133 F1), then at DATA.
        if self.conn.txn is not None:
            self.conn.txn.queue_id = self._macro("i") or self.conn.txn.queue_id
