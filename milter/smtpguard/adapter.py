"""The pymilter adapter: the only module that imports ``Milter``.

It maps libmilter callbacks to pipeline stages, keeps one :class:`Connection` per SMTP
session and one :class:`Transaction` per MAIL FROM, and turns decisions into
``setreply`` plus the matching return value. Every callback that answers the MTA runs
inside :meth:`SmtpGuardMilter._guard`: whatever goes wrong becomes ``internal_error`` (a
tempfail with the table's text), never pymilter's generic "untrapped exception" 451 and
never an accept. The exception is what pymilter's C glue decodes before a callback
runs (the connect host name, the HELO name, header field names: strict UTF-8): an
8-bit one gets that 451 where a reply is read, and a MAIL FROM after a connect that
never ran tempfails (``internal_error``; docs/mta-facts.md). ``abort`` and ``close``
answer nothing the client sees; a fault there is logged and the session's clean-up
goes on.

Facts this relies on (see ``docs/mta-facts.md``): the custom reply is used only
when the return value matches its class (5xx with REJECT, 4xx with TEMPFAIL); Postfix
gives the client IP in ``hostaddr`` and its version in macro ``v`` ("Postfix 3.7.11");
Sendmail's ``v`` is a bare version number.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import Milter
import milter  # pymilter's C module: the libmilter calls runmilter makes

from smtpguard.app import Runtime, retire
from smtpguard.checks import Stage
from smtpguard.config import ConfigError, MilterConfig
from smtpguard.driver import SessionDriver
from smtpguard.logsetup import kv, set_level
from smtpguard.message import as_read
from smtpguard.pipeline import Action, Decision
from smtpguard.scanners.command import end_running
from smtpguard.session import MTA
from smtpguard.signals import RELOAD_SIGNAL, SERVICE_SIGNALS, STOP_SIGNAL, hold_signals
from smtpguard.sockets import (
    StartError,
    bind_error,
    bind_unix,
    claim_unix,
    libmilter_address,
    prepare_directory,
    remove_unix,
    resolve,
    secure_unix,
    unix_path,
)
from smtpguard.state import SessionGate
from smtpguard.verdict import TempError

log = logging.getLogger("smtpguard")

#: The milter object of the session whose callback runs now. pymilter gives each
#: libmilter context a Python thread state of its own, kept for all of its callbacks
#: (``_get_context``), so this is per session: what :func:`_glue_fault` reads.
_session = threading.local()
#: What a macro that is not valid UTF-8 reads as (U+FFFD, the replacement character).
UNREADABLE_MACRO = "\ufffd"
#: The kinds of warning a session's client caused already (:meth:`_warn_once`).
_WARNED = "adapter.warned"


class App:
    """What every session shares: the current runtime and the session gate."""

    def __init__(self, runtime: Runtime, gate: SessionGate) -> None:
        self._runtime = runtime
        self.gate = gate
        self._lock = threading.Lock()

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    def hold_runtime(self) -> Runtime:
        """The current runtime for a session starting, its resolver held until the
        session's close (:meth:`Resolver.release`): taken under the lock a reload
        swaps under, so a resolver retired by it is never held afterwards."""
        with self._lock:
            runtime = self._runtime
            if runtime.services.dns is not None:
                runtime.services.dns.hold()
            return runtime

    def swap(self, runtime: Runtime) -> None:
        with self._lock:
            self._runtime = runtime
            self.gate.limit = runtime.config.limits.max_sessions


#: Seconds between the two progress reports of SmtpGuardMilter._listening: a reset
#: from an MTA this many seconds away still fails the second (review rev213 F2).
PROGRESS_PAUSE = 0.01


class SmtpGuardMilter(Milter.Base):  # type: ignore[misc]  # pymilter ships no types
    """One libmilter connection: callbacks go to a :class:`SessionDriver`."""

    #: Between DATA (or a first header field) and the end of the headers: where a
    #: field name pymilter cannot decode comes from (:meth:`glue_fault`).
    _in_header_block = False

    def __init__(self, app: App) -> None:
        runtime = app.hold_runtime()
        #: The resolver this session holds until its close (App.hold_runtime).
        self._resolver = runtime.services.dns
        self.driver = SessionDriver(runtime, app.gate, self._macro)
        #: The MTA gave up on this session (:meth:`_listening`).
        self._gone = False

    def _macro(self, name: str) -> str | None:
        try:
            value: str | None = self.getsymval(name)
        except UnicodeDecodeError:
            # pymilter decodes macros as strict UTF-8 and gives no bytes: the value
            # (a Latin-1 SASL login, say) reads as one nothing matches, so the checks
            # answer as for an unknown value instead of a tempfail on every MAIL.
            self._warn_once(
                f"macro {name}",
                "sid=%s macro %s is not valid UTF-8; read as unknown",
                self.driver.conn.session_id,
                name,
            )
            return UNREADABLE_MACRO
        return value

    def _guard(self, stage: Stage, step: Callable[..., Decision], *args: Any) -> int:
        try:
            decision = step(*args)
        except Exception:
            sid = self.driver.conn.session_id
            log.exception("sid=%s stage=%s unexpected error", sid, stage.value)
            return self._internal_error(stage)
        return self._answer(decision)

    def _internal_error(self, stage: Stage) -> int:
        try:
            decision = self.driver.internal_error(stage)
        except Exception:
            log.exception("sid=%s cannot render internal_error", self.driver.conn.session_id)
            return int(Milter.TEMPFAIL)
        return self._answer(decision)

    def _answer(self, decision: Decision) -> int:
        if decision.action is Action.SKIP:
            # SKIP is only legal when the MTA offered it (protocol v6, SMFIP_SKIP).
            return int(Milter.SKIP if self._protocol & Milter.P_SKIP else Milter.CONTINUE)
        if decision.action is Action.CONTINUE or decision.reply is None:
            if self._gone:
                return int(Milter.CONTINUE)
            sid = self.driver.conn.session_id
            try:
                # Removals first: they name fields by their place among the received
                # ones, which an insertion of the same name would shift. An empty
                # value removes the field, with or without SMFIP_HDR_LEADSPC.
                for field, place in decision.remove_headers:
                    self.chgheader(field, place, "")
            except Exception:
                # A forged field claiming our verdict would be believed downstream:
                # the message waits for a retry rather than going out with it.
                log.exception("sid=%s removing a forged header field failed", sid)
                return self._internal_error(Stage.EOM)
            # Result and marker headers inform, they are no verdict: each one that
            # cannot be added is logged and the message delivered.
            edits: list[tuple[str, str, int | None]] = [
                *((n, v, 0) for n, v in decision.insert_headers),
                *((n, v, None) for n, v in decision.headers),
            ]
            # With SMFIP_HDR_LEADSPC the MTA writes the value as given, so the space
            # after the colon is ours to send (Postfix's milter8.c MILTER8_HDR_SPACE).
            space = " " if self._protocol & Milter.P_HDR_LEADSPC else ""
            for name, value, index in edits:
                try:
                    if index is None:
                        self.addheader(name, space + value)
                    else:
                        self.addheader(name, space + value, index)
                except milter.error:
                    # libmilter's write failed: the MTA is gone from this message, most
                    # likely past its milter timeout (review rev131 F2: a traceback
                    # per field, after a summary line that said accept).
                    log.warning(
                        "sid=%s the MTA no longer takes this message's header fields"
                        " (it gave up waiting: its milter timeout, Postfix's"
                        " milter_content_timeout or Sendmail's T=R:); the client got the"
                        " MTA's own answer, not this verdict",
                        sid,
                    )
                    break
                except Exception:
                    log.exception("sid=%s adding header %s failed", sid, name)
            return int(Milter.CONTINUE)
        reply = decision.reply
        result = Milter.TEMPFAIL if decision.action is Action.TEMPFAIL else Milter.REJECT
        try:
            self.setreply(reply.code, reply.xcode, *reply.lines)
        except Exception:
            # The table is validated at load, so this means a broken MTA connection;
            # the generic reply of the same class is still the right outcome.
            sid = self.driver.conn.session_id
            log.exception("sid=%s setreply failed for %s", sid, reply.reply_id)
        return int(result)

    # --- callbacks --------------------------------------------------------------

    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        _session.milter = self
        return self._guard(Stage.CONNECT, self.driver.connect, hostname, family, hostaddr)

    def hello(self, hostname: str) -> int:
        return self._guard(Stage.HELO, self.driver.helo, hostname)

    def glue_fault(self, error: BaseException) -> None:
        """pymilter raised in its own code, before calling back (:func:`_glue_fault`):
        its strict UTF-8 decoding of the HELO name or of a header field's name. The
        step goes on (the exception policy, :func:`_register`). A HELO name is judged
        here, surrogate-escaped as envelope addresses are: the step was lost, and
        MAIL FROM got a permanent helo_first from a client that had said HELO (review
        rev130 F1: Postfix with smtputf8_enable = no passes such a name on). Anything
        else defers the transaction, or the next one."""
        conn = self.driver.conn
        # Review rev135 F1: a transaction outlives its message (libmilter sends no
        # abort after end of message, nor after a refused MAIL FROM): the step is told
        # by the header block, not by a transaction open.
        if (
            isinstance(error, UnicodeDecodeError)
            and isinstance(error.object, bytes)
            and not self._in_header_block
        ):
            name = error.object.decode("utf-8", "surrogateescape")
            self._warn_once(
                "helo",
                "sid=%s HELO name is not UTF-8 (byte %d: %s); judged as %s",
                conn.session_id,
                error.start,
                error.reason,
                kv("helo", name),
            )
            if self._guard(Stage.HELO, self.driver.helo, name) != Milter.CONTINUE:
                self._defer_fault()
            return
        self._warn_once(
            "arguments",
            "sid=%s pymilter could not pass the %s its arguments (%s: %s): tempfail",
            conn.session_id,
            "header field" if self._in_header_block else "callback",
            type(error).__name__,
            error,
        )
        # A step no check saw: never passed as if one had (a field unread, say).
        self._defer_fault(f"pymilter: {type(error).__name__}")

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        """A WARNING the client's bytes cause, once a session for each ``kind``; the
        rest at DEBUG (review rev168 F3: a HELO of invalid UTF-8 sent again and again
        wrote a line each, 184 KB for 300)."""
        warned: set[str] = self.driver.conn.scratch.setdefault(_WARNED, set())
        level = logging.DEBUG if kind in warned else logging.WARNING
        warned.add(kind)
        log.log(level, message, *args)

    def _defer_fault(self, detail: str = "exception") -> None:
        """internal_error at the next step that is answered: end of message, or with no
        message to answer the next MAIL FROM."""
        conn = self.driver.conn
        fault = TempError("internal_error", detail)
        if conn.txn is not None:
            conn.txn.defer(fault, "adapter")
        else:
            conn.defer(fault, "adapter")

    def envfrom(self, mailfrom: str, *args: str) -> int:
        self._in_header_block = False
        return self._guard(Stage.MAIL, self.driver.mail, mailfrom, args)

    def envrcpt(self, rcptto: str, *args: str) -> int:
        return self._guard(Stage.RCPT, self.driver.rcpt, rcptto, args)

    # DATA stays: its macros are where Postfix first gives the queue id ("i"), which
    # every log line of the message's content checks carries.
    def data(self) -> int:
        self._in_header_block = True
        return self._guard(Stage.EOH, self.driver.data)

    def header(self, name: str, value: str) -> int:
        self._in_header_block = True
        return self._guard(Stage.HEADER, self.driver.header, name, self._field_value(value))

    def _field_value(self, value: str) -> str:
        """The value as the checks read it, without the one space after the colon.

        SMFIP_HDR_LEADSPC is negotiated so that a value written without that space
        can be told from one with it (without it the MTA removes the space, and a
        998-octet ``Name:value`` line would count as 999 and be refused for good);
        the space is removed here instead, where the MTA would have."""
        return as_read(value) if self._protocol & Milter.P_HDR_LEADSPC else value

    # The end of headers is kept although nothing is decided there (header verdicts
    # wait for end of message): libmilter goes from DATA only to a header or to EOH,
    # so without it a message with no header field at all (Sendmail passes no Received
    # of its own) was aborted unanswered, and the MTA deferred it at its milter
    # timeout, every time (review rev111 F1: SMFIP_NOEOH was negotiated).
    def eoh(self) -> int:
        self._in_header_block = False
        return self._guard(Stage.EOH, self.driver.eoh)

    def body(self, chunk: bytes) -> int:
        return self._guard(Stage.BODY, self.driver.body, chunk)

    def eom(self) -> int:
        self._in_header_block = False
        return self._guard(Stage.EOM, self.driver.eom, self._listening)

    def _listening(self) -> bool:
        """Whether Postfix still waits for this message's answer: after its milter
        timeout it has closed the connection, and a progress report (SMFIR_PROGRESS,
        which it reads as "still working", each read with a timeout of its own) fails
        to go out. Twice, a moment apart: on TCP the first write to a closed peer is
        taken, and it is the peer's reset, a round trip later, that fails the second
        (a milter further away than PROGRESS_PAUSE may be taken for listening). A
        verdict the MTA gave up on is not delivered: its header edits are left out.

        Sendmail is not asked: it checks its whole end-of-message timeout (T=E:)
        between the replies it reads, so the report itself would make it give up on
        a verdict it would have taken (review rev213 F1)."""
        if self.driver.conn.mta is not MTA.POSTFIX:
            return True
        try:
            self.progress()
            time.sleep(PROGRESS_PAUSE)
            self.progress()
        except milter.error:
            self._gone = True
            return False
        return True

    def abort(self) -> int:
        self._in_header_block = False
        self._quietly("abort", self.driver.abort)
        return int(Milter.CONTINUE)

    def close(self) -> int:
        try:
            self._quietly("close", self.driver.close)
        finally:
            resolver, self._resolver = self._resolver, None
            if resolver is not None:
                resolver.release()
        _session.milter = None
        return int(Milter.CONTINUE)

    def _quietly(self, what: str, step: Callable[[], None]) -> None:
        # No reply goes to the client here, but an exception would still reach
        # pymilter, which logs a traceback and may leave the session half cleaned.
        try:
            step()
        except Exception:
            log.exception("sid=%s %s: unexpected error", self.driver.conn.session_id, what)


class SmtpGuardMilterNoReply(SmtpGuardMilter):
    """The same, negotiating no reply to HELO, DATA, each header and each body chunk.

    The answer to those is always "continue": HELO verdicts and faults wait for MAIL
    FROM, header and body verdicts and faults for end of message (see the pipeline).
    Skipping the replies saves a round trip per step (through Postfix, connect and
    HELO without replies measured 0.05 ms less milter CPU per message).
    Connect keeps its reply, although its verdicts wait for MAIL FROM as well:
    Postfix's milter8 buffers an event that needs no reply until one that does, so
    without it the connection reached smtpguard only with MAIL FROM: an idle session
    held no ``max_sessions`` slot and the lookups on the client's address could not
    start before MAIL FROM (review rev73 F2).
    The price of the body's: after a content verdict the MTA cannot be told to skip
    the rest of the body (SMFIS_SKIP), so it sends the remaining chunks, which the
    pipeline ignores; a round trip per chunk of every message against a local copy of
    the rest of a message already condemned.
    Used on unix sockets only: over TCP, back-to-back packets without replies wait
    for Nagle and delayed ACK (~40 ms per message).

    With nobody waiting for a verdict per header, the fields are collected and judged
    together at the next step (the first body chunk, or the end of a message without
    one): a pipeline pass per message instead of one per field.
    """

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.driver.batch_headers = True

    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return self._unanswered(super().connect(hostname, family, hostaddr))

    @Milter.noreply  # type: ignore[untyped-decorator]  # pymilter ships no types
    def hello(self, hostname: str) -> int:
        return self._unanswered(super().hello(hostname))

    def _unanswered(self, rc: int) -> int:
        if rc != Milter.CONTINUE:
            # Only a fault while rendering internal_error itself gets here (the
            # pipeline defers every verdict of these stages). Nothing may be answered
            # to HELO, and connect answers as its verdicts do: MAIL FROM tempfails.
            self.driver.conn.defer(TempError("internal_error", "exception"), "adapter")
        return int(Milter.CONTINUE)

    # DATA is answered: Postfix sends a step that needs no reply only with the next
    # one that does, and a stop waits for the messages whose DATA it has seen (review
    # rev194 F1: counted from MAIL FROM, a transaction the client dropped with RSET
    # reached the milter only when the session ended, and held every stop for 30 s).

    @Milter.noreply  # type: ignore[untyped-decorator]  # pymilter ships no types
    def eoh(self) -> int:
        rc = super().eoh()
        if not self._protocol & Milter.P_NR_EOH:
            return rc  # an MTA that did not grant it reads this answer
        if rc != Milter.CONTINUE:
            self._defer_fault()  # a fault while rendering internal_error: at end of message
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]  # pymilter ships no types
    def body(self, chunk: bytes) -> int:
        rc = super().body(chunk)
        if not self._protocol & Milter.P_NR_BODY:
            return rc  # an MTA that did not grant it reads this answer
        if rc not in (Milter.CONTINUE, Milter.SKIP):
            # Only a fault while rendering internal_error itself gets here (the
            # pipeline keeps every body verdict for end of message); nothing may be
            # answered now, so end of message tempfails instead.
            self._defer_fault()
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]  # pymilter ships no types
    def header(self, name: str, value: str) -> int:
        # Collects the field; it is judged with the body chunk or end of message that
        # follows. Past limits.max_header_fields the collected ones are judged here, so
        # a fault is deferred to end of message as any header verdict is.
        self._in_header_block = True
        try:
            self.driver.header(name, self._field_value(value))
        except Exception:
            sid = self.driver.conn.session_id
            log.exception("sid=%s stage=header unexpected error", sid)
            if self._internal_error(Stage.HEADER) != Milter.CONTINUE:
                self._defer_fault()
        return int(Milter.CONTINUE)


# pymilter caches what a class negotiates in a class attribute (``_protocol_mask``),
# which a subclass inherits: whichever class negotiated first would decide for both.
# Computed here, the subclass first, each class has its own; both ask for the header
# values as written (SMFIP_HDR_LEADSPC, see SmtpGuardMilter._field_value).
Milter.enable_protocols(SmtpGuardMilterNoReply, Milter.P_HDR_LEADSPC)
Milter.enable_protocols(SmtpGuardMilter, Milter.P_HDR_LEADSPC)


def _register(config: MilterConfig) -> None:
    """What ``Milter.runmilter`` does before opening the socket, with two changes.

    pymilter's exception policy is CONTINUE, not TEMPFAIL: it applies only to what
    raises in pymilter's own glue, before our code runs (the adapter answers its own
    exceptions), which is its strict UTF-8 decoding of the connect host name, the HELO
    name and a header field's name. Each is handled by :func:`_glue_fault` instead:
    over ``inet:`` pymilter's 451 to HELO made Postfix refuse every MAIL FROM of the
    session, a trusted client's too (review rev132 F1). A step after a connect that
    never ran is answered ``internal_error`` by the driver; a header field not read
    defers its message.

    So that nothing else can reach that policy, every callback answers its own
    exceptions (:func:`_dispatch`), one without the session's milter object (it is
    made at negotiation) included, where runmilter's lambdas raised AttributeError."""
    milter.set_exception_policy(milter.CONTINUE)
    milter.set_connect_callback(_dispatch("connect", Milter.connect_callback))
    milter.set_helo_callback(_dispatch("hello"))
    milter.set_envfrom_callback(_dispatch("envfrom_bytes"))
    milter.set_envrcpt_callback(_dispatch("envrcpt_bytes"))
    milter.set_header_callback(_dispatch("header_bytes"))
    milter.set_eoh_callback(_dispatch("eoh"))
    milter.set_body_callback(_dispatch("body"))
    milter.set_eom_callback(_dispatch("eom"))
    milter.set_abort_callback(_dispatch("abort"))
    milter.set_close_callback(Milter.close_callback)
    milter.setconn(libmilter_address(config.socket))
    milter.settimeout(config.timeout)
    milter.register(
        config.name,
        data=_dispatch("data"),
        # None: libmilter answers an unknown command itself (SMFIP_NOUNKNOWN asks the
        # MTA not to send one). pymilter's glue decoded it strictly first, and a
        # failure there was taken for an undecodable HELO name (review rev157 F1).
        unknown=None,
        negotiate=_dispatch("negotiate", Milter.negotiate_callback),
    )


def _dispatch(method: str, first: Callable[..., int] | None = None) -> Callable[..., int]:
    """The callback pymilter calls for ``method`` of the session's milter object (or
    ``first``, pymilter's own, for the steps that make that object). An exception
    that escapes it (the adapter answers its own: a fault of the glue between them)
    is a tempfail, never the exception policy's CONTINUE (an accept at end of
    message); where no reply is awaited, at the next step that has one."""

    def call(ctx: Any, *args: Any) -> int:
        session = ctx.getpriv() if first is None else None
        try:
            if first is not None:
                return first(ctx, *args)
            if session is None:
                log.error("the %s callback came for a session without its object", method)
                return int(Milter.TEMPFAIL)
            rc: int = getattr(session, method)(*args)
            return rc
        except Exception:
            log.exception("the %s callback raised; tempfail", method)
            session = ctx.getpriv()
            if not isinstance(session, SmtpGuardMilter):
                return int(Milter.TEMPFAIL)
            session._defer_fault(f"{method}: exception")
            step = getattr(type(session), method, None)
            if getattr(session, "_protocol", 0) & getattr(step, "milter_protocol", 0):
                return int(Milter.NOREPLY)
            return int(Milter.TEMPFAIL)

    return call


def open_socket(config: MilterConfig) -> tuple[int, int] | None:
    """Register the callbacks and bind the socket; for a unix socket, claim its path
    first and set its owner, group and mode. Returns the unix socket's (device, inode),
    to remove exactly that file at the end. Raises :class:`StartError`."""
    _register(config)
    address = libmilter_address(config.socket)
    path = unix_path(address)
    if path is None:
        _opensocket(address)
        return None
    owners = resolve(config)
    claim_unix(path)
    owners = prepare_directory(path, owners)
    # False: libmilter must not remove an existing file; claim_unix removed a stale
    # one, and one that appeared since belongs to a milter that started meanwhile.
    bind_unix(config.socket_mode, lambda: _opensocket(address))
    info = path.lstat()
    try:
        secure_unix(path, config.socket_mode, owners)
    except StartError:
        remove_unix(path, (info.st_dev, info.st_ino))
        raise
    return (info.st_dev, info.st_ino)


def _opensocket(address: str) -> None:
    try:
        milter.opensocket(False)
    except milter.error:
        raise StartError(f"cannot bind {address}: {bind_error(address)}") from None


def serve(app: App, reload: Callable[[], Runtime | None] | None = None) -> None:
    """Open the socket, fix its permissions, drop privileges, run libmilter's loop.

    This is ``Milter.runmilter`` split open: the socket is bound by
    :func:`open_socket` (see :mod:`smtpguard.sockets` for what makes it safe), and
    privileges are dropped once it exists (possibly in a root-owned directory). At the
    end, however it comes, the unix socket file is removed.

    Signals: libmilter's own signal thread treats SIGHUP like SIGTERM (stop). So the
    libmilter loop runs in a second thread and the main thread waits for SIGHUP,
    SIGTERM and SIGINT with ``sigwait``. Linux hands a process-directed signal to the
    thread group leader first when it is waiting for it, so these signals reach us,
    not libmilter: SIGHUP calls ``reload`` and swaps the runtime (sessions in flight
    keep theirs; a failing reload is logged and the old runtime stays), SIGTERM and
    SIGINT refuse new sessions, wait for those in flight (at most
    :data:`DRAIN_SECONDS`) and then stop libmilter. Reloads and the drain run on
    threads of their own, so that the main thread is back in ``sigwait`` at once.
    Still, a signal sent while the main thread has one pending and is not running goes
    to another thread that waits for it, libmilter's (measured in CI: 60 SIGHUPs sent
    back to back): a libmilter that stops unasked is an error (exit 2), so that
    systemd's Restart=on-failure, or the supervisor, starts it again.
    """
    config = app.runtime.config.milter
    install(app)
    # Held from before the socket exists: a SIGTERM as soon as it appears (an MTA's
    # init script, a test) waits for run()'s sigwait instead of killing the process
    # or reaching libmilter's own signal thread (exit 2).
    hold_signals()
    inode = open_socket(config)
    try:
        if config.user:
            drop_privileges(config.user)
        run(app, reload)
    finally:
        path = unix_path(config.socket)
        if path is not None and inode is not None:
            remove_unix(path, inode)


def install(app: App) -> None:
    """Make libmilter create one milter object per connection, all sharing ``app``;
    pymilter's own faults go to our log (:func:`_glue_fault`)."""
    unix = app.runtime.config.milter.socket.startswith(("unix:", "local:"))
    Milter.factory = partial(SmtpGuardMilterNoReply if unix else SmtpGuardMilter, app)
    if sys.excepthook is not _glue_fault:
        global _previous_hook  # noqa: PLW0603 - the hook a main-thread error goes to
        _previous_hook = sys.excepthook
        sys.excepthook = _glue_fault


_previous_hook = sys.excepthook


def _glue_fault(kind: type[BaseException], error: BaseException, tb: Any) -> None:
    """``sys.excepthook``. On a libmilter thread it is called only by pymilter's C
    glue (``PyErr_Print``): an exception before a callback ran (the adapter catches
    its own, and threading's threads have ``threading.excepthook``). It went to stderr
    bare, with no time or session (review rev130 F2)."""
    if threading.get_ident() == threading.main_thread().ident:
        _previous_hook(kind, error, tb)
        return
    milter_object = getattr(_session, "milter", None)
    if isinstance(milter_object, SmtpGuardMilter):
        milter_object.glue_fault(error)
        return
    log.warning(
        "pymilter could not pass a callback its arguments before the session began"
        " (%s: %s, the connect host name?); MAIL FROM is answered internal_error",
        kind.__name__,
        error,
    )


def run(
    app: App,
    reload: Callable[[], Runtime | None] | None,
    end: Callable[[], None] = milter.stop,
    *,
    supervisor: int | None = None,
) -> None:
    """libmilter's loop on the opened socket until SIGTERM or SIGINT (see :func:`serve`);
    a worker process of :mod:`smtpguard.supervisor` runs exactly this. SIGUSR1 and
    SIGUSR2 are SIGHUP and SIGTERM too. ``end`` is called once a stop has drained the
    sessions: libmilter's ``smfi_stop`` by default (its end wakes this thread).
    ``supervisor``: a worker's supervisor's pid, to say so when it is gone."""
    hold_signals()  # inherited by libmilter's threads
    failure: list[BaseException] = []
    ended = threading.Event()
    # libmilter starts its own signal thread, which takes a pending SIGTERM or SIGHUP
    # if it waits for it first, and then stops the milter: it starts only once this
    # thread is about to wait (CI: a SIGTERM right after the socket appeared, exit 2).
    waiting = threading.Event()

    def loop() -> None:
        try:
            waiting.wait()
            milter.main()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread below
            failure.append(exc)
        finally:
            # Wake the main thread's sigwait (a signal to that thread alone).
            ended.set()
            signal.pthread_kill(threading.main_thread().ident or 0, STOP_SIGNAL)

    worker = threading.Thread(target=loop, name="libmilter", daemon=True)
    worker.start()
    signals = SERVICE_SIGNALS - _left_to_the_supervisor(supervisor)
    reloading = threading.Lock()
    pending = threading.Event()
    stopping: list[threading.Thread] = []
    while True:
        # This thread must be back in sigwait at once after every signal: one that
        # comes while it is not goes to libmilter's own signal thread, which stops
        # the milter on SIGHUP as on SIGTERM (review rev43: two signals in quick
        # succession, or one during the drain, stopped it). So reloads and the drain
        # run on threads of their own.
        waiting.set()
        sig = signal.sigwait(signals)
        if ended.is_set():
            break
        if stopping:
            log.info("signal %s: already stopping", sig)
            continue
        if sig in (signal.SIGHUP, RELOAD_SIGNAL):
            if reload is not None:
                pending.set()
                if reloading.acquire(blocking=False):
                    threading.Thread(
                        target=_reload,
                        args=(app, reload, reloading, pending),
                        name="reload",
                        daemon=True,
                    ).start()
                else:
                    # The config may have changed again since the running reload read
                    # it (the supervisor sends each validated change once): again.
                    log.info("SIGHUP during a reload: reloading again after it")
            continue
        announced = threading.Event()
        stopping.append(
            threading.Thread(
                target=_stop, args=(app.gate, end, announced), name="stop", daemon=True
            )
        )
        stopping[0].start()
        # Said once the drain runs (starting a thread waits for it): whoever acts on
        # this line finds this thread back in sigwait at once.
        if supervisor is not None and os.getppid() != supervisor:
            # Its parent-death signal: the supervisor was killed outright (the OOM
            # killer, kill -9), which nothing else would say (review rev113 F4).
            log.warning(
                "signal %s: the supervisor (pid %d) is gone: stopping; messages under way"
                " finish first",
                sig,
                supervisor,
            )
        else:
            log.info("signal %s: stopping; messages under way finish first", sig)
        announced.set()
    _finish(worker, reloading)
    if failure:
        raise failure[0]
    if not stopping:
        # libmilter ended without our asking: a signal reached its own thread, or it
        # failed. Not a clean stop: exit non-zero, so that systemd's Restart=on-failure
        # (and the supervisor) start the milter again.
        raise StartError(
            "libmilter stopped on its own: a signal reached its own signal thread, or it"
            " failed; exiting with an error, to be started again"
        )


def _left_to_the_supervisor(supervisor: int | None) -> frozenset[signal.Signals]:
    """In a worker, the signals it leaves to its supervisor: it takes SIGUSR1 and
    SIGUSR2 alone. An operator's SIGHUP, SIGTERM or SIGINT sent to it while the main
    thread was out of sigwait went to libmilter's own signal thread, which stopped the
    worker and cut its sessions (review rev193 F2: two SIGHUPs in a row). Ignored, and
    not blocked in the main thread, the kernel drops them as they are sent. Before
    libmilter's signal thread starts (it waits for the main thread's first sigwait)."""
    if supervisor is None:
        return frozenset()
    for sig in _OPERATOR_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _OPERATOR_SIGNALS)
    return _OPERATOR_SIGNALS


#: What an operator (or a terminal) sends; a worker leaves them to its supervisor.
_OPERATOR_SIGNALS = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT})


def _finish(libmilter: threading.Thread, reloading: threading.Lock) -> None:
    """Wait for libmilter's thread, then for a reload in progress: one still running
    would log while the interpreter shuts down, which can end in a fatal error
    (SIGABRT) instead of the exit code that follows."""
    libmilter.join()
    if reloading.acquire(timeout=RELOAD_WAIT_AT_EXIT):
        reloading.release()


def _stop(gate: SessionGate, end: Callable[[], None], announced: threading.Event) -> None:
    """Drain, then ``end`` (libmilter's stop, whose end wakes the main thread's
    sigwait), not before the stop is in the log (``end`` may end the process)."""
    gate.draining = True
    _drain(gate, DRAIN_SECONDS)
    announced.wait(5.0)
    end()


#: How long a stop waits for sessions in flight before libmilter is told to stop.
DRAIN_SECONDS = 30.0
#: How long the process waits at its end for a reload in progress.
RELOAD_WAIT_AT_EXIT = 30.0
_DRAIN_POLL = 0.05


def _drain(gate: SessionGate, deadline: float) -> None:
    """Wait until this process's messages under way have been answered (new sessions
    and new messages are refused meanwhile).

    ``smfi_stop`` does not wait for them: Debian's libmilter (worker pool) drops every
    open connection as soon as it is called, which the MTA sees as a milter failure in
    the middle of a message. A session between messages is cut: the MTA answers its
    next MAIL FROM with a temporary failure, as it answers every new session now
    (review rev193 F1: one idle client held every stop for the whole deadline). The
    deadline bounds a stop behind a slow message.
    """
    end = time.monotonic() + deadline
    idle = 0
    # Two polls in a row with nothing under way: a message's count ends as its verdict
    # is made, a moment before libmilter writes it (review rev194 F2).
    while idle < 2 and time.monotonic() < end:
        idle = idle + 1 if gate.busy == 0 else 0
        time.sleep(_DRAIN_POLL)
    if gate.busy > 0:
        log.warning("stopping with %d messages still under way after %.0f s", gate.busy, deadline)
    if gate.active > 0:
        # They end with no summary line (review rev202 L1: a stop left no trace of
        # what the MTA then deferred).
        log.info(
            "stopping: %d session%s still open cut (no summary line; the MTA answers"
            " them by its milter default_action)",
            gate.active,
            "" if gate.active == 1 else "s",
        )
    # Their virus hook programs, and a canary's, would run on after the process (review
    # rev92 F2, rev94 F4); none starts from now on.
    if ended := end_running():
        log.warning("killed %d virus hook programs still running", ended)


def _reload(
    app: App, reload: Callable[[], Runtime | None], done: threading.Lock, pending: threading.Event
) -> None:
    """Reload while SIGHUPs are pending; ``done`` is held meanwhile."""
    while True:
        try:
            while pending.is_set():
                pending.clear()
                _reload_once(app, reload)
        finally:
            done.release()
        # A SIGHUP that came after the last check found the lock still held.
        if not pending.is_set() or not done.acquire(blocking=False):
            return


def _reload_once(app: App, reload: Callable[[], Runtime | None]) -> None:
    """``reload`` returns None when there is nothing new to apply (it says why)."""
    try:
        runtime = reload()
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc.one_line())
        return
    except Exception:
        log.exception("reload failed, keeping the running configuration")
        return
    if runtime is None:
        return
    old = app.runtime
    app.swap(runtime)
    set_level(runtime.config.milter.log_level)
    if runtime.generation:
        log.info(
            "reloaded configuration from %s (generation %d)",
            runtime.config.file,
            runtime.generation,
        )
    else:
        log.info("reloaded configuration from %s", runtime.config.file)
    retire(old, runtime)
    resolver = old.services.dns
    if resolver is not None and resolver is not runtime.services.dns:
        # Sessions that started on the old runtime may still look things up with it.
        resolver.close_when_released()


def drop_privileges(user: str, *, its_groups: bool = False) -> None:
    """Become ``user`` (its primary group; no supplementary groups, or with
    ``its_groups`` those /etc/group gives it, as a command run as it would have them)
    for good."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartError(f"cannot drop privileges: no user {user!r} on this system") from None
    if os.getuid() == entry.pw_uid:
        return
    try:
        if its_groups:
            os.initgroups(user, entry.pw_gid)
        else:
            os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except OSError as exc:
        raise StartError(f"cannot drop privileges to {user}: {exc.strerror}") from None
    log.info("dropped privileges to %s (uid %d)", user, entry.pw_uid)
