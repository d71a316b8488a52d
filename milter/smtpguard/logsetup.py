"""Where the service's log lines go: stderr (journald under systemd) or syslog.

``[milter] log = "syslog"`` sends every line to the local syslog socket
(``log_socket``, ``/dev/log`` by default) with ``log_facility`` (``mail`` by default),
so smtpguard's lines land in ``/var/log/mail.log`` beside Postfix's, tagged the way
other milters tag theirs: ``smtpguard[PID]: message``. The severity follows the
level (INFO is ``info``, WARNING ``warning``, ERROR ``err``).

The tag is written by the formatter rather than as the handler's fixed ``ident``: the
process id is then the one of the process that logs, also in worker processes forked
after the handler was made. :func:`set_worker` puts ``worker=N`` at the start of
every later line of the calling process.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import socket
import stat
import sys
from typing import TYPE_CHECKING, Final, TextIO

if TYPE_CHECKING:
    from smtpguard.config import MilterConfig

#: ``log_facility`` values: syslog's names as Python's SysLogHandler knows them.
FACILITIES: frozenset[str] = frozenset(logging.handlers.SysLogHandler.facility_names)
PROGRAM = "smtpguard"

_worker = ""


def set_worker(number: int | None) -> None:
    """Mark every later line of this process with ``worker=NUMBER`` (None: no mark)."""
    global _worker  # noqa: PLW0603 - one process-wide mark, set once per worker
    _worker = "" if number is None else f"worker={number} "


#: ``extra`` key of a supervisor's line about one worker: marked ``worker=N`` as that
#: worker's own lines are, so one grep finds its crash and restart (review rev155 F4).
ABOUT_WORKER = "about_worker"


class _WorkerMark(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        about = record.__dict__.get(ABOUT_WORKER)
        record.worker = _worker if about is None else f"worker={about} "
        return True


STDERR_FORMAT = "%(asctime)s " + PROGRAM + "[%(process)d]: %(levelname)s %(worker)s%(message)s"
#: What journald gets on stderr: it adds the time stamp, host and ``smtpguard[PID]:``
#: tag itself (the unit's SyslogIdentifier), so ours twice defeated ban patterns.
JOURNAL_FORMAT = "%(levelname)s %(worker)s%(message)s"
#: RFC 3164 TAG and CONTENT; syslog adds the time stamp and host name.
SYSLOG_FORMAT = PROGRAM + "[%(process)d]: %(worker)s%(message)s"


class LogSetupError(Exception):
    """The log destination cannot be opened (the message names it)."""


def syslog_handler(facility: str, address: str = "/dev/log") -> logging.Handler:
    """A handler writing to the syslog datagram socket at ``address``.

    The socket must exist at start: Python's handler (like openlog(3)) would accept a
    missing one and lose every line, printing a traceback for each to stderr. Once
    running, a syslog daemon that restarts is reconnected to at the next line."""
    try:
        if not stat.S_ISSOCK(os.stat(address).st_mode):
            raise LogSetupError(f"{address} is not a socket")
        handler = logging.handlers.SysLogHandler(
            address=address,
            facility=logging.handlers.SysLogHandler.facility_names[facility],
            socktype=socket.SOCK_DGRAM,
        )
    except OSError as exc:
        raise LogSetupError(f"cannot open the syslog socket {address}: {exc.strerror}") from None
    # syslog(3) sends no NUL terminator; some collectors keep it as part of the text.
    handler.append_nul = False
    handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
    return handler


class _LineFormatter(logging.Formatter):
    """A record of several lines (a traceback, above all) written to a stream gets the
    first line's head (time stamp, tag, level, ``worker=N``, and the message's leading
    ``sid=ID``) on each of its lines: journald and grep read a stream line by line,
    and a traceback's lines without it could not be told from which worker or session
    they came (review rev87 F6). Syslog gets a record as one datagram and keeps it
    one message, so its formatter is the plain one."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if "\n" not in text:
            return text
        message = record.message
        sid = message.split(None, 1)[0] + " " if message.startswith("sid=") else ""
        record.message = ""
        try:
            head = self._style.format(record) + sid
        finally:
            record.message = message
        first, *rest = text.split("\n")
        return "\n".join([first, *(head + line for line in rest)])


class _SecondCachedFormatter(_LineFormatter):
    """logging.Formatter's default time stamp ("2026-12-03 13:14:51,123"), with the
    part up to the second formatted once per second: a line is written per message,
    and strftime was a quarter of a line's cost."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, super().formatTime(record)[:-4])
        return f"{cached[1]},{int(record.msecs):03d}"


def stream_handler(stream: TextIO) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    if to_journal(stream):
        handler.setFormatter(_LineFormatter(JOURNAL_FORMAT))
    else:
        handler.setFormatter(_SecondCachedFormatter(STDERR_FORMAT))
    return handler


def to_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is systemd's journal stream: $JOURNAL_STREAM names its device
    and inode (systemd.exec(5)); a stream redirected elsewhere keeps the full format
    (review rev43: the documented ban pattern missed journald's lines)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


_installed: list[logging.Handler] = []


def configure(config: MilterConfig, stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's lines where ``config`` says, at its ``log_level``.

    Calling it again replaces the handler it installed before. Raises
    :class:`LogSetupError` when the syslog socket cannot be opened.
    """
    if config.log == "syslog":
        handler = syslog_handler(config.log_facility, config.log_socket)
    else:
        handler = stream_handler(stream or sys.stderr)
    handler.addFilter(_WorkerMark())
    # No format of ours shows the caller's file and line, the thread or the
    # multiprocessing name; not collecting them is a fifth of a line's cost (the
    # logging HOWTO's "Optimization" section), and a line is written per message.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in _installed:
        root.removeHandler(old)
        old.close()
    _installed[:] = [handler]
    root.addHandler(handler)
    root.setLevel(config.log_level)
    return handler


def set_level(level: str) -> None:
    """Apply ``log_level`` anew (a reload): the destination stays as :func:`configure`
    opened it."""
    logging.getLogger().setLevel(level)


#: What a value may not contain unquoted (``key=value`` pairs separated by spaces): a
#: lone ' would open a quote that a quote-aware reader follows into the next field.
_NEEDS_QUOTES = re.compile(r'[ "\'=\\]')
#: A ``key=`` after a space inside a quoted value (a client's ``HELO x client=1.2.3.4``).
_KEY_INSIDE = re.compile(r"(?<= )([A-Za-z_][\w.-]*)=")


#: Longest value in a log line, as written (quoted and escaped): a client's 2 KB HELO of
#: 8-bit octets, six characters each escaped, made a line that syslog's 8 KB limit cuts
#: (review rev113 F5).
MAX_LOGGED: Final = 512


def kv(key: str, value: object) -> str:
    """``key=value`` for a log line, the value quoted and cut as a client's text must
    be: one field, whatever it holds."""
    text = value if type(value) is str else str(value)
    # Most values (ids, addresses, numbers) need nothing: written as they are without
    # the calls below (a dozen values per message).
    if (
        text
        and len(text) <= MAX_LOGGED
        and text.isprintable()
        and _NEEDS_QUOTES.search(text) is None
    ):
        return f"{key}={text}"
    # Quote values with spaces or quotes so the line stays machine-parsable; repr also
    # neutralizes control characters a client may have sent. No value may hold what
    # reads as a field of its own, even to a regex that ignores quotes (a ban tool's
    # "client=(\S+)"): that = is written \x3d. SRS addresses (SRS0=...) keep theirs.
    if len(text) <= MAX_LOGGED:
        written = _written(text)
        if len(written) <= MAX_LOGGED:
            return f"{key}={written}"
    # Cut (``...(+N)``: N characters left out) until it fits once written.
    keep = min(len(text), MAX_LOGGED)
    while True:
        written = _written(f"{text[:keep]}...(+{len(text) - keep})")
        if len(written) <= MAX_LOGGED:
            return f"{key}={written}"
        keep = keep * 2 // 3


def _written(text: str) -> str:
    """``text`` as a log value: as it is, or quoted with every ``key=`` escaped."""
    if not text or _NEEDS_QUOTES.search(text) or not text.isprintable():
        return _KEY_INSIDE.sub(r"\1\\x3d", _quoted(text))
    return text


def _quoted(text: str) -> str:
    r"""``repr``, but with no ``\'``: a repr holding both quotes escapes ' so inside
    single quotes, which shell-style readers (shlex) cannot take. Written ``\x27``."""
    shown = repr(text)
    if not shown.startswith("'") or "\\'" not in shown:
        return shown
    out, body, i = [], shown[1:-1], 0
    while i < len(body):
        pair = body[i : i + 2] if body[i] == "\\" else body[i]
        out.append("\\x27" if pair == "\\'" else pair)
        i += len(pair)
    return "'" + "".join(out) + "'"
