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
                        standard error)
killed by a signal      ERROR
not started             ERROR (program missing, not executable)
timeout                 ERROR; the program and everything it started in its
                        session are killed
======================  =====================================================

This is the convention of ``clamscan``/``clamdscan`` (0 clean, 1 virus, 2 error), so
``["clamdscan", "--no-summary", "-"]`` works as a hook as it is.

The program runs without a shell (``argv`` is passed as a list; nothing is expanded),
in a new session so that a timeout kills its children too, with standard output and
standard error going to temporary files read back at most 4 KiB each, so a chatty
program cannot fill memory or block on a full pipe; one that writes more than 16 MiB
to them in all is killed (ERROR), so it cannot fill the disk either.

The message comes from a :class:`~smtpguard.scanners.MessageSpool` (in memory up to its
cap, then a temporary file, which is then handed over as the program's standard input
directly), a binary file, or bytes. :class:`CommandScan` is the hook as a
:class:`~smtpguard.scanners.VirusStream`: it spools the message as it arrives and runs
the program at :meth:`~CommandScan.finish`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import IO, Final

from smtpguard.scanners import MessageSpool, ScanResult, ScanStatus

__all__ = ["CommandScan", "run_command"]

_OUTPUT_MAX: Final = 4096
#: Octets of standard output and error a program may write in all before it is
#: killed (they go to temporary files: see :func:`_wait`), and the seconds between
#: two looks at their size.
_SPOOLED_OUTPUT_MAX: Final = 16 * 2**20
_OUTPUT_CHECK: Final = 0.05
_FOUND: Final = re.compile(r"^(?:.*:\s+)?(?P<name>.+?)\s+FOUND$")


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
    size, stdin, data = _stdin(message)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv from the operator's config, no shell
                list(argv),
                stdin=stdin,
                stdout=out,
                stderr=err,
                close_fds=True,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            return ScanResult(
                ScanStatus.ERROR, detail=f"cannot run {argv[0]}: {exc.strerror or exc}"
            )
        failure = _wait(proc, data, timeout, (out, err))
        if failure:
            return ScanResult(ScanStatus.ERROR, detail=f"{argv[0]} {failure}", scanned=size)
        status = proc.returncode
        if status == 0:
            return ScanResult(ScanStatus.CLEAN, scanned=size)
        name = _name(_head(out)) if status == 1 else ""
        if name:
            return ScanResult(ScanStatus.INFECTED, virus=name, scanned=size)
        # Exit 1 without a "NAME FOUND" line is a program that failed (Python's
        # uncaught exception, set -e), whatever it printed before (review rev49: a
        # progress line was taken for a virus name): not a permanent virus_found for
        # a temporary fault.
        what = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        if status == 1:
            what += " without a 'NAME FOUND' line on stdout"
        stderr = _head(err).strip().replace("\n", " | ")[:300]
        return ScanResult(
            ScanStatus.ERROR,
            detail=f"{argv[0]}: {what}" + (f": {stderr}" if stderr else ""),
            scanned=size,
            # A hook that says "infected" the old way (a bare name) must not have its
            # mail passed where scanner outages pass (review rev51).
            suspect=status == 1,
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
        """Run the program (once; the same result on every call)."""
        if self._result is None:
            result = run_command(self.argv, self.spool, self.timeout)
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


def _wait(
    proc: subprocess.Popen[bytes], data: bytes | None, timeout: float, outputs: Sequence[IO[bytes]]
) -> str:
    """Write ``data`` to the program and wait for it within ``timeout``; "" once it
    has exited, else why it was killed: out of time, or more than
    ``_SPOOLED_OUTPUT_MAX`` octets written to its output files (review rev80 F3: a
    hook that kept printing filled the temporary directory within its timeout).

    communicate() may be called again after its timeout without losing input (the
    subprocess documentation; the input is given only to the first call), so it
    waits in slices of ``_OUTPUT_CHECK`` seconds, between which the files are
    measured; a program that exits at once costs no more than one call. A program
    that exits without reading everything is not an error (communicate ignores
    EPIPE)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            proc.communicate(input=data, timeout=max(0.0, min(_OUTPUT_CHECK, left)))
        except subprocess.TimeoutExpired:
            data = None  # handed over: the next call goes on writing it
            written = sum(os.fstat(file.fileno()).st_size for file in outputs)
            if written > _SPOOLED_OUTPUT_MAX:
                _kill_session(proc)
                return f"killed: it wrote more than {_SPOOLED_OUTPUT_MAX // 2**20} MiB of output"
            if left <= _OUTPUT_CHECK:
                _kill_session(proc)
                return f"timed out after {timeout:g} s"
            continue
        return ""


def _kill_session(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    # The program leads its own session (start_new_session): this reaches its
    # children too, and nothing of smtpguard.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _head(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read(_OUTPUT_MAX).decode("utf-8", "replace")


def _name(stdout: str) -> str:
    """The name in the first ``NAME FOUND`` line of ``stdout`` ("" if none)."""
    for raw in stdout.splitlines():
        found = _FOUND.match(raw.strip())
        if found:
            return found.group("name")[:200]
    return ""
