"""The pymilter adapter: the only module that imports ``Milter``.

It maps libmilter callbacks to pipeline stages, keeps one :class:`Connection` per SMTP
session and one :class:`Transaction` per MAIL FROM, and turns decisions into
``setreply`` plus the matching return value. Every callback runs inside
:meth:`SmtpGuardMilter._guard`: whatever goes wrong becomes ``internal_error`` (a
tempfail with the table's text), never pymilter's generic "untrapped exception" 451 and
never an accept.

Facts this relies on (see ``../shared/spec/mta-facts.md``): the custom reply is used only
when the return value matches its class (5xx with REJECT, 4xx with TEMPFAIL); Postfix
gives the client IP in ``hostaddr`` and its version in macro ``v`` ("Postfix 3.7.11");
Sendmail's ``v`` is a bare version number.
"""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import pwd
import signal
import socket
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import Milter
import milter  # pymilter's C module: the libmilter calls runmilter makes

from smtpguard.address import AddressError, esmtp_params, parse_path
from smtpguard.app import Runtime
from smtpguard.checks import Event, Stage
from smtpguard.config import ConfigError
from smtpguard.pipeline import CONTINUE, Action, Decision
from smtpguard.session import MTA, Connection, IPAddress, Transaction, new_session_id
from smtpguard.state import SessionGate

log = logging.getLogger("smtpguard")


class App:
    """What every session shares: the current runtime and the session gate."""

    def __init__(self, runtime: Runtime, gate: SessionGate) -> None:
        self._runtime = runtime
        self.gate = gate
        self._lock = threading.Lock()

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    def swap(self, runtime: Runtime) -> None:
        with self._lock:
            self._runtime = runtime
            self.gate.limit = runtime.config.limits.max_sessions


def detect_mta(version_macro: str | None, configured: str) -> MTA:
    if configured == "postfix":
        return MTA.POSTFIX
    if configured == "sendmail":
        return MTA.SENDMAIL
    if not version_macro:
        return MTA.UNKNOWN
    if version_macro.lower().startswith("postfix"):
        return MTA.POSTFIX
    # Sendmail sets v to its bare version, e.g. "8.17.1.9".
    return MTA.SENDMAIL if version_macro[:1].isdigit() else MTA.UNKNOWN


def _client_ip(family: int, hostaddr: Any) -> IPAddress | None:
    """The client IP from ``connect``'s hostaddr: a tuple from libmilter (IP first), a
    bare string from ``Milter.testctx``; None for a unix socket or garbage."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    raw = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else hostaddr
    try:
        # Drop an IPv6 zone id ("fe80::1%eth0"): it is not part of the address.
        return ipaddress.ip_address(str(raw).split("%", 1)[0])
    except ValueError:
        return None


class SmtpGuardMilter(Milter.Base):  # type: ignore[misc]  # pymilter ships no types
    def __init__(self, app: App) -> None:
        self.app = app
        # A session keeps the runtime it started with, even across a reload.
        self.rt = app.runtime
        self.conn = Connection(new_session_id(), None, None, "")
        self.entered = False

    # --- plumbing ---------------------------------------------------------------

    def _macro(self, name: str) -> str | None:
        value: str | None = self.getsymval(name)
        return value or None

    def _guard(self, stage: Stage, step: Callable[[], Decision]) -> int:
        try:
            decision = step()
        except Exception:
            log.exception("sid=%s stage=%s unexpected error", self.conn.session_id, stage.value)
            try:
                decision = self.rt.pipeline.internal_error(self.conn, stage, "adapter")
            except Exception:
                log.exception("sid=%s cannot render internal_error", self.conn.session_id)
                return int(Milter.TEMPFAIL)
        return self._answer(decision)

    def _answer(self, decision: Decision) -> int:
        if decision.action is Action.SKIP:
            # SKIP is only legal when the MTA offered it (protocol v6, SMFIP_SKIP).
            return int(Milter.SKIP if self._protocol & Milter.P_SKIP else Milter.CONTINUE)
        if decision.action is Action.CONTINUE or decision.reply is None:
            try:
                for name, value in decision.headers:
                    self.addheader(name, value)
            except Exception:
                # The marker is an aid against loops, not a verdict: log and deliver.
                log.exception("sid=%s adding headers failed", self.conn.session_id)
            return int(Milter.CONTINUE)
        reply = decision.reply
        result = Milter.TEMPFAIL if decision.action is Action.TEMPFAIL else Milter.REJECT
        try:
            self.setreply(reply.code, reply.xcode, *reply.lines)
        except Exception:
            # The table is validated at load, so this means a broken MTA connection;
            # the generic reply of the same class is still the right outcome.
            log.exception("sid=%s setreply failed for %s", self.conn.session_id, reply.reply_id)
        return int(result)

    # --- callbacks --------------------------------------------------------------

    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        def step() -> Decision:
            conn = self.conn
            conn.client_ip = _client_ip(family, hostaddr)
            if isinstance(hostaddr, tuple) and len(hostaddr) > 1:
                conn.client_port = int(hostaddr[1])
            conn.client_name = hostname or ""
            conn.mta = detect_mta(self._macro("v"), self.rt.config.milter.mta)
            conn.trusted_network = self.rt.config.site.is_trusted_ip(conn.client_ip)
            self.entered = True
            conn.admitted = self.app.gate.enter()
            return self.rt.pipeline.run(Stage.CONNECT, conn)

        return self._guard(Stage.CONNECT, step)

    def hello(self, hostname: str) -> int:
        def step() -> Decision:
            self.conn.helo = hostname
            self.conn.tls_version = self._macro("{tls_version}")
            return self.rt.pipeline.run(Stage.HELO, self.conn)

        return self._guard(Stage.HELO, step)

    def envfrom(self, mailfrom: str, *args: str) -> int:
        def step() -> Decision:
            conn = self.conn
            params = esmtp_params(args)
            smtputf8 = "SMTPUTF8" in params
            try:
                sender, error = parse_path(mailfrom, smtputf8=smtputf8), ""
            except AddressError as exc:
                sender, error = None, exc.reason
            size = params.get("SIZE")
            txn = Transaction(
                sender=sender,
                sender_raw=mailfrom,
                esmtp=params,
                sender_error=error,
                smtputf8=smtputf8,
                declared_size=int(size) if size and size.isdigit() else None,
                auth_type=self._macro("{auth_type}"),
                auth_login=self._macro("{auth_authen}"),
                queue_id=self._macro("i"),
            )
            conn.txn = txn
            conn.transactions += 1
            if conn.tls_version is None:
                conn.tls_version = self._macro("{tls_version}")
            return self.rt.pipeline.run(Stage.MAIL, conn)

        return self._guard(Stage.MAIL, step)

    def envrcpt(self, rcptto: str, *args: str) -> int:
        def step() -> Decision:
            conn = self.conn
            smtputf8 = conn.txn.smtputf8 if conn.txn else False
            try:
                rcpt = parse_path(rcptto, smtputf8=smtputf8, allow_postmaster=True)
            except AddressError:
                rcpt = None
            if rcpt is not None and rcpt.is_null:
                rcpt = None  # RCPT TO:<> is not a mailbox (RFC 5321 §4.1.1.3)
            decision = self.rt.pipeline.run(Stage.RCPT, conn, Event(rcpt=rcpt, rcpt_raw=rcptto))
            if decision.action is Action.CONTINUE and rcpt is not None and conn.txn:
                conn.txn.recipients.append(rcpt)
            return decision

        return self._guard(Stage.RCPT, step)

    def data(self) -> int:
        def step() -> Decision:
            if self.conn.txn is not None:
                self.conn.txn.queue_id = self._macro("i") or self.conn.txn.queue_id
            return CONTINUE

        return self._guard(Stage.EOH, step)

    def header(self, name: str, value: str) -> int:
        def step() -> Decision:
            event = Event(header=(name, value))
            return self.rt.pipeline.run(Stage.HEADER, self.conn, event)

        return self._guard(Stage.HEADER, step)

    def eoh(self) -> int:
        return self._guard(Stage.EOH, lambda: self.rt.pipeline.run(Stage.EOH, self.conn))

    def body(self, chunk: bytes) -> int:
        def step() -> Decision:
            return self.rt.pipeline.run(Stage.BODY, self.conn, Event(chunk=chunk))

        return self._guard(Stage.BODY, step)

    def eom(self) -> int:
        def step() -> Decision:
            if self.conn.txn is not None:
                self.conn.txn.queue_id = self._macro("i") or self.conn.txn.queue_id
            return self.rt.pipeline.run(Stage.EOM, self.conn)

        return self._guard(Stage.EOM, step)

    def abort(self) -> int:
        self.conn.txn = None
        return int(Milter.CONTINUE)

    def close(self) -> int:
        if self.entered:
            self.entered = False
            self.app.gate.leave()
        return int(Milter.CONTINUE)


def serve(app: App, reload: Callable[[], Runtime] | None = None) -> None:
    """Open the socket, fix its permissions, drop privileges, run libmilter's loop.

    This is ``Milter.runmilter`` split open: libmilter creates a unix socket with the
    process umask, so its mode, owner and group can only be set between
    ``opensocket`` and ``main``; privileges are dropped there too, once the socket
    (possibly in a root-owned directory) exists.

    Signals: libmilter's own signal thread treats SIGHUP like SIGTERM (stop). So the
    libmilter loop runs in a second thread and the main thread waits for SIGHUP,
    SIGTERM and SIGINT with ``sigwait``. Linux hands a process-directed signal to the
    thread group leader first when it is waiting for it, so these signals reach us,
    not libmilter: SIGHUP calls ``reload`` and swaps the runtime (sessions in flight
    keep theirs; a failing reload is logged and the old runtime stays), SIGTERM and
    SIGINT stop libmilter, which lets sessions in flight finish.
    """
    config = app.runtime.config.milter
    Milter.factory = partial(SmtpGuardMilter, app)
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(Milter.close_callback)
    milter.setconn(config.socket)
    milter.settimeout(config.timeout)
    milter.register(
        config.name,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )
    milter.opensocket(True)
    if config.socket.startswith(("unix:", "local:")):
        secure_socket(
            config.socket.split(":", 1)[1],
            config.socket_mode,
            config.socket_owner,
            config.socket_group,
        )
    if config.user:
        drop_privileges(config.user)

    signals = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # inherited by libmilter's threads
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            milter.main()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread below
            failure.append(exc)
        finally:
            # Wake the main thread's sigwait when libmilter ends on its own.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)

    worker = threading.Thread(target=loop, name="libmilter", daemon=True)
    worker.start()
    while True:
        sig = signal.sigwait(signals)
        if sig == signal.SIGHUP and reload is not None and worker.is_alive():
            _reload(app, reload)
            continue
        if sig == signal.SIGHUP:
            continue
        if worker.is_alive():
            log.info("signal %s: stopping; sessions in flight finish first", sig)
            app.gate.draining = True
            milter.stop()
        worker.join()
        break
    if failure:
        raise failure[0]


def _reload(app: App, reload: Callable[[], Runtime]) -> None:
    try:
        runtime = reload()
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        return
    except Exception:
        log.exception("reload failed, keeping the running configuration")
        return
    app.swap(runtime)
    log.info("reloaded configuration from %s", runtime.config.file)


def secure_socket(path: str, mode: int, owner: str, group: str) -> None:
    uid = pwd.getpwnam(owner).pw_uid if owner else -1
    gid = grp.getgrnam(group).gr_gid if group else -1
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)
    os.chmod(path, mode)


def drop_privileges(user: str) -> None:
    """Become ``user`` (its primary group, no supplementary groups) for good."""
    entry = pwd.getpwnam(user)
    if os.getuid() == entry.pw_uid:
        return
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("dropped privileges to %s (uid %d)", user, entry.pw_uid)
