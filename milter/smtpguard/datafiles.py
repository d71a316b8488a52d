"""What every data file smtpguard reads shares: :class:`ConfigError`, :func:`read_toml`,
:func:`read_file` and where the shipped ``rules/`` and ``conf/`` are.

Apart from :mod:`smtpguard.config` so that ``smtpguard explain`` loads its rules and
the reply table without the config's dataclasses and validators (tests/test_cli_fast.py);
:mod:`smtpguard.config` re-exports every name.
"""

from __future__ import annotations

import errno
import os
import stat
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Any

#: The files a load read, by absolute path, while :func:`recording` is on.
_RECORDED: ContextVar[dict[str, bytes] | None] = ContextVar("recorded", default=None)
#: The files a load reads instead of the disk, while :func:`replaying` is on.
_REPLAYED: ContextVar[Mapping[str, bytes] | None] = ContextVar("replayed", default=None)


class ConfigError(Exception):
    """A configuration problem, with the file and dotted key it is about."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(f"{where}: {message}")

    @property
    def problems(self) -> tuple[ConfigError, ...]:
        """Every problem this error stands for (:class:`ConfigErrors` holds several)."""
        return (self,)

    def one_line(self) -> str:
        """All of them on one line, for a log line."""
        return "; ".join(str(p) for p in self.problems)


class ConfigErrors(ConfigError):
    """Several problems of one file, each a :class:`ConfigError`: their lines, one
    each; as an error, the first one (its file, key and message)."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.file, first.key, first.message)
        self._problems = tuple(problems)

    @property
    def problems(self) -> tuple[ConfigError, ...]:
        return self._problems

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self._problems)


def shipped_dir(name: str) -> Path:
    """The shipped data directory ``name`` ("rules" or "conf") as a real path.

    A regular install has it inside the package, ``smtpguard/data/NAME`` (pyproject.toml
    maps the repository's top-level directory there). pip unpacks what it installs, so
    ``importlib.resources.files`` is a plain directory on disk; smtpguard imported from
    a zip archive is not supported (its data could not be handed out as paths). An
    editable install (``pip install -e .``) maps only the modules: its data is the
    checkout's top-level directory, read in place, so edits there count at once.
    """
    packaged = Path(str(resources.files("smtpguard"))) / "data" / name
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / name
    # Neither: name the packaged path, where a regular install must have it.
    return checkout if checkout.is_dir() else packaged


def default_rules_dir() -> Path:
    """The shipped ``rules/`` (reply table, explanations, content rules, PTR patterns)."""
    return shipped_dir("rules")


def sample_config() -> Path:
    """The shipped sample ``conf/smtpguard.toml``; its relative paths reach the shipped
    rules in every kind of install."""
    return shipped_dir("conf") / "smtpguard.toml"


@contextmanager
def recording() -> Iterator[dict[str, bytes]]:
    """Collect the bytes of every data file :func:`read_file` reads in this context.

    A supervisor's reload builds the new runtime once and hands the workers these
    bytes with the config's: a worker reading the files again could find another
    version (an editor saving twice, a broken file written a moment later) and serve
    a policy nobody validated, or a different one from its neighbour."""
    files: dict[str, bytes] = {}
    token = _RECORDED.set(files)
    try:
        yield files
    finally:
        _RECORDED.reset(token)


@contextmanager
def replaying(files: Mapping[str, bytes]) -> Iterator[None]:
    """Serve :func:`read_file` from ``files`` (what :func:`recording` collected)."""
    token = _REPLAYED.set(files)
    try:
        yield
    finally:
        _REPLAYED.reset(token)


def _key(path: Path) -> str:
    # Absolute, "..", kept: os.path.abspath would remove "lib/.." as text, and two
    # spellings the kernel reads as different files would share one recording.
    return os.path.join(os.getcwd(), path)


def exists(path: Path) -> bool:
    """Whether ``path`` is a regular file, or one that the load being replayed read."""
    replayed = _REPLAYED.get()
    return (replayed is not None and _key(path) in replayed) or path.is_file()


def read_file(path: Path) -> bytes:
    """A data file's bytes (every data file smtpguard reads goes through here).

    Under :func:`replaying`, the recorded bytes; a file the recorded load did not read
    is a :class:`ConfigError`: read from the disk it would be a version nobody
    validated (review rev51). Under :func:`recording`, a file read twice by one load
    (a reply table for a domain's languages too, an IP list named twice) gives the
    bytes of its first read both times, as a replay will."""
    key = _key(path)
    replayed = _REPLAYED.get()
    if replayed is not None:
        data = replayed.get(key)
        if data is None:
            raise ConfigError(path, "", "not among the files validated with the config")
        return data
    recorded = _RECORDED.get()
    if recorded is not None and key in recorded:
        return recorded[key]
    # Review rev179 F8: -c /dev/zero read until memory ran out, a FIFO hung. Raised as
    # OSError, which each caller already turns into its own error naming the file.
    with open(path, "rb", opener=_nonblocking) as f:
        mode = os.fstat(f.fileno()).st_mode
        if stat.S_ISCHR(mode) and os.path.samefile(path, os.devnull):
            data = b""  # an empty list kept as a link to /dev/null (review rev180 F5)
        elif not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file")
        else:
            data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES >> 20} MiB")
    if recorded is not None:
        recorded[key] = data
    return data


#: The largest data file read (a config, rules, an IP list): far beyond any real one.
MAX_FILE_BYTES = 256 << 20


def _nonblocking(path: str, flags: int) -> int:
    """open(2) that does not wait for a FIFO's writer (its type is refused then)."""
    return os.open(path, flags | os.O_NONBLOCK)


def read_toml(
    path: Path, error: type[ConfigError] = ConfigError, what: str = "file"
) -> dict[str, Any]:
    """A TOML file's contents; a missing, unreadable or invalid file raises ``error``
    naming the file."""
    try:
        data = read_file(path)
    except FileNotFoundError:
        raise error(path, "", f"{what} not found") from None
    except OSError as exc:
        raise error(path, "", f"cannot read {what}: {exc.strerror}") from None
    return parse_toml(path, data, error)


def parse_toml(path: Path, data: bytes, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """The contents of TOML ``data`` read from ``path`` already (errors name ``path``)."""
    try:
        # TOML is UTF-8 (tomllib.load decodes so too, but lets the error escape).
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            path,
            "",
            f"not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line})",
        ) from None
    # A byte order mark (Windows editors write one) is no TOML, but means nothing
    # either: line 1, column 1 would be all the error could say.
    text = text.removeprefix("\ufeff")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(path, "", f"not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib's parser recurses per level of nested arrays and inline tables: a
        # few thousand levels were a traceback (review rev156 F5). No file of ours
        # nests more than a handful.
        raise error(path, "", "not valid TOML here: arrays or tables nested too deeply") from None


def toml_table(file: Path, key: str, value: Any) -> dict[str, Any]:
    """``value`` when it is a TOML table, else a ConfigError naming ``key``."""
    if not isinstance(value, dict):
        raise ConfigError(file, key, "expected a table")
    return value


def check_keys(file: Path, key: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    """A ConfigError naming the first key of ``data`` (a table at ``key``, "" for the
    top level) that is not ``allowed``."""
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(file, f"{key}.{unknown[0]}" if key else unknown[0], "unknown key")
