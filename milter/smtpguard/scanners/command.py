"""The virus-scanner command hook (``virus.backend = "command"``).

A configured program gets the whole message (header block, empty line, body) on its
standard input and answers with its exit status:

======================  =====================================================
exit status             result
======================  =====================================================
0                       CLEAN
1 and a line            INFECTED; the first line of standard output of the
``NAME FOUND``          form ``NAME FOUND`` or ``WHERE: NAME FOUND``
                        (``clamdscan``'s ``stream: NAME FOUND``) names it
1 without one           ERROR: a program that failed (Python's uncaught
                        exception, ``set -e``) exits 1 too, and may have
                        printed anything before; ``suspect``: deferred even
                        where ``on_temp_error = "pass"``, as it may be a virus
anything else           ERROR (``detail`` carries the status and the start of
                        standard error, or of standard output when standard
                        error is empty); ``suspect`` with a ``NAME FOUND`` line
                        (another scanner's status for a virus)
killed by a signal      ERROR
not started             ERROR (program missing, not executable)
timeout                 ERROR; the program and everything it started in its
                        session are killed
======================  =====================================================

This is the convention of ``clamscan``/``clamdscan`` (0 clean, 1 virus, 2 error), so
``["clamdscan", "--no-summary", "-"]`` works as a hook as it is.

The program runs without a shell (``argv`` is passed as a list; nothing is expanded),
in a new session, killed with everything it started in its process group once it
exits or times out.
Its standard output and standard error are read as it writes them and kept up to 4 KiB
each, so a chatty program can neither fill memory nor disk nor block on a full pipe;
one that writes more than 16 MiB in all is killed (ERROR).

The message comes from a :class:`~smtpguard.scanners.MessageSpool` (in memory up to its
cap, then a temporary file, which is then handed over as the program's standard input
directly), a binary file, or bytes. :class:`CommandScan` is the hook as a
:class:`~smtpguard.scanners.VirusStream`: it spools the message as it arrives and runs
the program at :meth:`~CommandScan.finish`.

A hook that fails is treated as clamd is when it gives no answer
(:mod:`smtpguard.scanners.health`): a canary, the program run on a message of a few
clean octets, tells a hook that fails for every message (hung, missing, a scanner it
cannot reach) from one that failed on that message; only the first starts an outage, in
which the hook is run again only every :data:`RETRY_INTERVAL` seconds, by one message,
and every other message gets the failure at once (review rev92 F1: a hung hook held
every message for its timeout, filled ``max_sessions`` and Postfix's smtpd processes,
and deferred mail that ``on_temp_error = "pass"`` lets through). The programs under
way are killed at the end of the process's drain, and none starts after it
(:func:`end_running`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO, Final, Protocol

from smtpguard.scanners import MessageSpool, ScanResult, ScanStatus
from smtpguard.scanners.health import ScannerHealth, shared_health

log = logging.getLogger("smtpguard.scanners")

__all__ = ["CommandScan", "canary", "end_running", "run_command"]

_OUTPUT_MAX: Final = 4096
#: Octets of standard output and error a program may write in all before it is
#: killed: it is read and dropped beyond the first _OUTPUT_MAX (see :func:`_exchange`).
_OUTPUT_LIMIT: Final = 16 * 2**20
#: Octets written to or read from a pipe at a time.
_CHUNK: Final = 64 * 1024
#: Seconds between two looks at whether the program exited, without a pidfd: from
#: the first, doubling up to the last.
_FIRST_POLL: Final = 0.001
_EXIT_POLL: Final = 0.05
_FOUND: Final = re.compile(r"^(?:.*:\s+)?(?P<name>.+?)\s+FOUND$")
#: Seconds between two runs of a hook that failed for every message (see the module
#: docstring).
RETRY_INTERVAL: Final = 5.0
#: The canary's message: a few octets every scanner finds clean.
CANARY_MESSAGE: Final = (
    b"From: <canary@smtpguard.invalid>\r\nSubject: smtpguard canary\r\n\r\ncanary\r\n"
)

#: The process groups of the programs under way (see :func:`end_running`).
_running: set[int] = set()
_running_lock = threading.Lock()
#: Set by :func:`end_running`: the process is ending, no program starts any more.
_ended = False
#: Seconds a session waits for a program it may not kill (see ``_kill_session``).
_UNKILLABLE_WAIT: Final = 1.0


class GroupRecord(Protocol):
    """Where a worker also records its programs' process groups for its supervisor
    (:class:`smtpguard.workerwatch.HookGroups`)."""

    def add(self, group: int) -> bool: ...
    def remove(self, group: int) -> None: ...


_record: GroupRecord | None = None


_row_full_said = False


def _say_row_full() -> None:
    global _row_full_said  # noqa: PLW0603 - said once per process
    _row_full_said = True
    log.warning(
        "more virus hook programs at once than this worker can record for its"
        " supervisor; the others are found by their environment only if it dies"
    )


def record_groups_in(record: GroupRecord | None) -> None:
    """Record every program's process group in ``record`` while it may run (a worker:
    its supervisor kills what it left when it is killed outright)."""
    global _record  # noqa: PLW0603 - once per worker, after the fork
    _record = record


#: In every hook program's environment: the pid of the process that ran it, so that a
#: supervisor that adopts the programs of a worker killed outright ends those and
#: nothing else (review rev94 F1).
HOOK_MARK: Final = "SMTPGUARD_HOOK_OF"


def _health_of(argv: tuple[str, ...]) -> ScannerHealth:
    """The process's health of the hook ``argv`` (one per program and arguments)."""
    program = argv[0] if argv else ""
    return shared_health(
        ("command", argv),
        lambda: ScannerHealth(
            "virus scanner",
            "command",
            program,
            "virus",
            functools.partial(_canary, argv),
            retry_interval=RETRY_INTERVAL,
            where=f"command {program}",
        ),
    )


def _canary(argv: tuple[str, ...], wait: float) -> str | None:
    """:func:`canary`, or None once the process is ending (no verdict either way)."""
    why = canary(argv, wait)
    return None if _ended else why


def canary(argv: Sequence[str], wait: float) -> str:
    """ "" if the hook finds the canary's few octets clean within ``wait`` seconds, else
    why not (the outage's test, and check-config's)."""
    result = run_command(argv, CANARY_MESSAGE, wait)
    if result.status is ScanStatus.CLEAN:
        return ""
    if result.status is ScanStatus.INFECTED:
        return f"it found {result.virus!r} in a few clean octets"
    return result.detail or result.status.value


def end_running() -> int:
    """Kill every hook program still running in this process, with what it started, and
    start none from now on (the end of a stop: the process ends, and its programs, a
    canary's included, would run on without anyone to wait for them, review rev92 F2,
    rev94 F4); how many were killed. Under the lock: a group in the set has not been
    reaped, so its id is still the program's."""
    global _ended  # noqa: PLW0603 - once per process, at its end
    with _running_lock:
        _ended = True
        for group in _running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        return len(_running)


def run_command(
    argv: Sequence[str],
    message: MessageSpool | IO[bytes] | bytes,
    timeout: float,
    *,
    env: dict[str, str] | None = None,
) -> ScanResult:
    """Run ``argv`` with the message on standard input; map its exit status (above).

    ``env`` replaces the environment when given (None: inherit smtpguard's).
    """
    if not argv:
        return ScanResult(ScanStatus.ERROR, detail="empty command")
    if _ended:
        return ScanResult(ScanStatus.ERROR, detail=f"{argv[0]} not run: the service is stopping")
    size, stdin, data = _stdin(message)
    marked = dict(os.environ if env is None else env)
    marked[HOOK_MARK] = str(os.getpid())
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv from the operator's config, no shell
            _with_default_signals(argv, marked),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,
            env=marked,
        )
    except OSError as exc:
        return ScanResult(ScanStatus.ERROR, detail=f"cannot run {argv[0]}: {exc.strerror or exc}")
    with _running_lock:
        _running.add(proc.pid)  # its process group: it leads a session of its own
        if _record is not None and not _record.add(proc.pid) and not _row_full_said:
            _say_row_full()
        if _ended:  # end_running came between the check above and here
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    try:
        failure, out, err = _exchange(proc, data, timeout)
    finally:
        with _running_lock:
            _running.discard(proc.pid)  # before it is reaped (see end_running)
        # Whatever the program left running in its process group goes with it (review
        # rev82 F3: a child that went on writing after the hook exited), before the
        # program is reaped, so the group's id cannot have been reused. A child that
        # made a group of its own escapes (rev84 F4), but holds nothing up.
        _kill_session(proc, argv[0])
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    if _ended:
        # Killed by end_running: the service stops, the scanner did not fail. Deferred
        # even where outages pass (review rev95 F5: the message was accepted unscanned).
        return ScanResult(
            ScanStatus.ERROR,
            detail=f"{argv[0]} killed: the service is stopping",
            scanned=size,
            suspect=True,
        )
    if failure:
        return ScanResult(ScanStatus.ERROR, detail=f"{argv[0]} {failure}", scanned=size)
    return _verdict(argv[0], proc.returncode, out, err, size)


def _verdict(program: str, status: int, out: bytes, err: bytes, size: int) -> ScanResult:
    """What the program's exit ``status`` and output say (the table above)."""
    if status == 0:
        return ScanResult(ScanStatus.CLEAN, scanned=size)
    stdout = _text(out)
    name = _name(stdout) if status > 0 else ""
    if name and status == 1:
        return ScanResult(ScanStatus.INFECTED, virus=name, scanned=size)
    # Exit 1 without a "NAME FOUND" line is a program that failed (Python's
    # uncaught exception, set -e), whatever it printed before (review rev49: a
    # progress line was taken for a virus name): not a permanent virus_found for
    # a temporary fault.
    what = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    if status == 1:
        what += " without a 'NAME FOUND' line on stdout"
    elif name:
        # Another scanner's convention for a virus (Sophos savscan exits 3, McAfee
        # uvscan 13): not ours to call a virus, but not to pass as an outage either
        # (review rev92 F4: passed under on_temp_error = "pass", the name in no log).
        what += f" with {name!r} FOUND on stdout (a virus is exit status 1)"
    # Why it failed, from stderr, or from stdout where the program says it there
    # (clamdscan prints clamd's errors on stdout; review rev92 F4).
    said = _text(err).strip() or ("" if name else stdout.strip())
    # One line of printable text: the program may echo the message, and this detail
    # goes into the outage's WARNING line as it is (review rev188 F4: a CR and an ANSI
    # escape from a header reached the log).
    said = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
        for c in said.replace("\n", " | ")[:300]
    )
    return ScanResult(
        ScanStatus.ERROR,
        detail=f"{program}: {what}" + (f": {said}" if said else ""),
        scanned=size,
        # A hook that says "infected" the old way (a bare name), or names a virus with
        # another status, must not have its mail passed where scanner outages pass
        # (review rev51, rev92 F4).
        suspect=status == 1 or bool(name),
    )


class CommandScan:
    """One transaction's scan by the command hook: the message is spooled (memory
    first, then an unlinked temporary file) as it arrives; :meth:`finish` runs the
    program on it. At most ``max_bytes`` are spooled; a clean verdict on a truncated
    message is :attr:`~smtpguard.scanners.ScanStatus.SIZE_LIMIT`, as with clamd."""

    def __init__(self, argv: Sequence[str], *, timeout: float, max_bytes: int) -> None:
        self.argv = tuple(argv)
        self.timeout = timeout
        self.spool = MessageSpool(max_size=max_bytes)
        self._result: ScanResult | None = None

    def feed_header(self, name: str, value: str) -> None:
        self.spool.feed_header(name, value)

    def end_of_headers(self) -> None:
        self.spool.end_of_headers()

    def feed(self, chunk: bytes) -> None:
        self.spool.feed(chunk)

    def finish(self) -> ScanResult:
        """Run the program (once; the same result on every call), unless it is in an
        outage (see the module docstring)."""
        if self._result is None:
            health = _health_of(self.argv)
            started = time.monotonic()
            if not_asked := health.refusal(started):
                self._result = ScanResult(ScanStatus.ERROR, detail=not_asked, unasked=True)
                return self._result
            result = run_command(self.argv, self.spool, self.timeout)
            if _ended:
                pass  # stopped with the service: no word on the hook's health
            elif result.status is ScanStatus.ERROR and not result.suspect:
                # Hung, or failing for every message, or only for this one (slow on
                # it, or crafted to be): the canary tells. This result stands whatever
                # the canary says.
                health.test_later(result.detail, self.timeout)
            else:
                # An answer, exit 1 without a name (suspect) too: deferred even where
                # outages pass, it opens none (review rev94 F3), and it ends one, or a
                # sender's such messages would keep one open (rev95 F3).
                health.answered(started)
            if self.spool.truncated and result.status is ScanStatus.CLEAN:
                result = ScanResult(
                    ScanStatus.SIZE_LIMIT,
                    detail=f"message over max_bytes={self.spool.max_size}; the first"
                    f" {self.spool.size} octets scanned clean",
                    scanned=result.scanned,
                )
            self._result = result
        return self._result

    def close(self) -> None:
        self.spool.close()


def _with_default_signals(argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """``argv``, run through ``env --default-signal`` when this process ignores a
    signal a program expects at its default. A worker ignores SIGHUP, SIGINT and
    SIGTERM (its supervisor takes them), and an ignored signal stays ignored across
    exec: a hook's ``trap ... TERM`` did nothing, and a TERM sent to its own child was
    lost (review rev194 F3). Popen cannot reset a disposition in the child; env(1) does,
    then execs the program in its place (same pid, same process group). A program that
    could not be run as given (not found, not executable, neither a #! script nor an
    ELF binary, which env's execvp would hand to /bin/sh) is run as given, so Popen's
    own error names it, with one worker or several."""
    ignored = [sig for sig in _DEFAULT_SIGNALS if signal.getsignal(sig) is signal.SIG_IGN]
    if not ignored:
        return list(argv)
    env_program = _resetting_env()
    if env_program is None:
        return list(argv)
    program = shutil.which(argv[0], path=os.pathsep.join(os.get_exec_path(env)))
    if program is None or not _runnable(program):
        return list(argv)
    names = ",".join(sig.name.removeprefix("SIG") for sig in ignored)
    return [env_program, f"--default-signal={names}", "--", *argv]


def _runnable(program: str) -> bool:
    """Whether the kernel itself runs ``program``: an ELF binary, or a #! script whose
    interpreter is there (a missing one would fail in env, with env's words: review
    rev200)."""
    try:
        with open(program, "rb") as file:
            head = file.read(_SHEBANG_MAX)
    except OSError:
        return False
    if head.startswith(b"\x7fELF"):
        return True
    if not head.startswith(b"#!"):
        return False
    interpreter = head[2:].split(b"\n", 1)[0].split(maxsplit=1)
    return bool(interpreter) and os.access(interpreter[0], os.X_OK)


@functools.cache
def _resetting_env(candidates: tuple[str, ...] = ("/usr/bin/env", "/bin/env")) -> str | None:
    """The first of ``candidates`` there, if it takes ``--default-signal`` (coreutils
    8.31 and later; an older env, or busybox's, failed every hook run with exit 125:
    review rev200), else None, said once: the hooks then start with the signals as the
    worker has them."""
    found = next((env for env in candidates if os.access(env, os.X_OK)), None)
    if found is None:
        return None
    try:
        probe = subprocess.run(  # noqa: S603 - a fixed argv
            [found, "--default-signal=TERM", "--version"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        works = False
    else:
        works = probe.returncode == 0
    if works:
        return found
    log.warning(
        "%s does not take --default-signal (coreutils 8.31 or later): virus hooks start"
        " with SIGHUP, SIGINT and SIGTERM ignored, as the worker that runs them",
        found,
    )
    return None


#: The signals a hook program starts with at their default disposition.
_DEFAULT_SIGNALS: Final = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)
#: Octets of a #! line read to find its interpreter (Linux reads 256).
_SHEBANG_MAX: Final = 256


def _stdin(message: MessageSpool | IO[bytes] | bytes) -> tuple[int, int | IO[bytes], bytes | None]:
    """(size, what Popen gets as stdin, bytes communicate() writes or None)."""
    if isinstance(message, bytes):
        return len(message), subprocess.PIPE, message
    if isinstance(message, MessageSpool):
        if message.in_memory:
            data = message.getvalue()
            return len(data), subprocess.PIPE, data
        # A file on disk: the program reads it directly, nothing is copied through us.
        return message.size, message.reader(), None
    try:
        message.fileno()
    except (OSError, ValueError):
        data = message.read()
        return len(data), subprocess.PIPE, data
    start = message.tell()
    size = message.seek(0, os.SEEK_END) - start
    message.seek(start)
    return size, message, None


def _exchange(
    proc: subprocess.Popen[bytes], data: bytes | None, timeout: float
) -> tuple[str, bytes, bytes]:
    """Write ``data`` to the program, read its output, and wait for it to exit within
    ``timeout``: ("", the first 4 KiB of standard output, of standard error), or why
    it must be killed (out of time, or more than ``_OUTPUT_LIMIT`` octets of output).
    See :class:`_Exchange`."""
    with _Exchange(proc, data) as exchange:
        return exchange.run(timeout)


class _Exchange:
    """One thread, no polling: a selector waits on the program's standard input,
    output and error and on its exit (a pidfd), so a message larger than the pipe goes
    in as the program reads it (review rev82 F1: communicate() called again after a
    timeout never wrote the rest), and the output is kept only as far as
    ``_OUTPUT_MAX`` and otherwise dropped as it is read: nothing on disk, however much
    a program writes (rev80 F3). The program's exit, not the end of its output, ends
    the wait: a child it left holding the pipes cannot hold the callback. A program
    that exits or closes its input without reading it all is not an error (EPIPE).
    The program is not reaped here, so its process group id stays its own until
    :func:`_kill_session`."""

    def __init__(self, proc: subprocess.Popen[bytes], data: bytes | None) -> None:
        if proc.stdout is None or proc.stderr is None:
            raise ValueError("the program's output must be pipes")
        self.proc = proc
        self.out, self.err = proc.stdout.fileno(), proc.stderr.fileno()
        self.heads = {self.out: bytearray(), self.err: bytearray()}
        self.written = 0
        self.data = memoryview(data or b"")
        self.offset = 0
        self.selector = selectors.DefaultSelector()
        self.exit_fd = _pidfd(proc.pid)
        self.exit_seen = False
        if self.exit_fd is not None:
            self.selector.register(self.exit_fd, selectors.EVENT_READ)
        self.stdin = proc.stdin.fileno() if proc.stdin is not None and self.data else None
        if self.stdin is not None:
            os.set_blocking(self.stdin, False)
            self.selector.register(self.stdin, selectors.EVENT_WRITE)
        elif proc.stdin is not None:
            proc.stdin.close()
        for fd in self.heads:
            self.selector.register(fd, selectors.EVENT_READ)

    def __enter__(self) -> _Exchange:
        return self

    def __exit__(self, *_: object) -> None:
        self.selector.close()
        if self.exit_fd is not None:
            os.close(self.exit_fd)

    def run(self, timeout: float) -> tuple[str, bytes, bytes]:
        deadline = time.monotonic() + timeout
        poll = _FIRST_POLL
        while not self._exited():
            left = deadline - time.monotonic()
            if left <= 0:
                return f"timed out after {timeout:g} s", b"", b""
            if self.exit_fd is None:
                # Without a pidfd the exit is looked for, soon after the start (most
                # hooks are quick), then less often (review rev84 F3).
                wait, poll = min(left, poll), min(2 * poll, _EXIT_POLL)
            else:
                wait = left
            events = self.selector.select(wait)
            if events:
                poll = _FIRST_POLL  # it is working: look for its exit soon (rev85 F3)
            for key, _ in events:
                if key.fd == self.stdin:
                    self._write()
                elif key.fd == self.exit_fd:
                    self.exit_seen = True
                else:
                    self._read(key.fd)
            if self.written > _OUTPUT_LIMIT:
                return f"killed: it wrote more than {_OUTPUT_LIMIT >> 20} MiB of output", b"", b""
        # What it wrote last is in the pipes (a child of its may still hold them open,
        # so read only what is there).
        for fd, head in self.heads.items():
            os.set_blocking(fd, False)
            with contextlib.suppress(BlockingIOError):
                while len(head) < _OUTPUT_MAX and (chunk := os.read(fd, _CHUNK)):
                    _keep(head, chunk)
        return "", bytes(self.heads[self.out]), bytes(self.heads[self.err])

    def _exited(self) -> bool:
        """Whether the program exited, without reaping it: its pidfd was reported
        readable (by the selector: select() refuses descriptors from 1024 on, which a
        busy worker has, review rev84 F1), or waitid(WNOWAIT) says so."""
        if self.exit_fd is not None:
            return self.exit_seen
        return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def _write(self) -> None:
        assert self.stdin is not None
        try:
            self.offset += os.write(self.stdin, self.data[self.offset : self.offset + _CHUNK])
        except BlockingIOError:
            return
        except OSError:  # EPIPE: it reads no more
            self.offset = len(self.data)
        if self.offset >= len(self.data):
            self.selector.unregister(self.stdin)
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            self.stdin = None

    def _read(self, fd: int) -> None:
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            self.selector.unregister(fd)
            return
        self.written += len(chunk)
        _keep(self.heads[fd], chunk)


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when process ``pid`` exits, or None where
    the kernel has none (then the exit is looked for from ``_FIRST_POLL`` to
    ``_EXIT_POLL`` seconds apart)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _keep(head: bytearray, chunk: bytes) -> None:
    if len(head) < _OUTPUT_MAX:
        head += chunk[: _OUTPUT_MAX - len(head)]


def _kill_session(proc: subprocess.Popen[bytes], program: str) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    # The program leads its own session (start_new_session): this reaches its
    # children too, and nothing of smtpguard.
    refused = False
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        # A program the service user may not signal (a sudo wrapper; even its zombie
        # keeps root's credentials): it runs to its own end (review rev97 F1: the scan
        # raised, each message got internal_error, and its group stayed recorded).
        refused = True
    finally:
        if _record is not None:
            # Not reaped yet: until the wait below the group's id cannot be reused.
            _record.remove(proc.pid)
    if not refused:
        proc.wait()
        return
    try:
        proc.wait(timeout=_UNKILLABLE_WAIT)
    except subprocess.TimeoutExpired:
        log.warning(
            "virus hook %s (pid %d) may not be signalled and runs on after its message",
            program,
            proc.pid,
        )


def _text(head: bytes) -> str:
    return head.decode("utf-8", "replace")


def _name(stdout: str) -> str:
    """The name in the first ``NAME FOUND`` line of ``stdout`` ("" if none)."""
    for raw in stdout.splitlines():
        found = _FOUND.match(raw.strip())
        if found:
            return found.group("name")[:200]
    return ""
