"""What every data file smtpguard reads shares: :class:`ConfigError`, :func:`read_toml`
and where the shipped ``rules/`` and ``conf/`` are.

Apart from :mod:`smtpguard.config` so that ``smtpguard explain`` loads its rules and
the reply table without the config's dataclasses and validators (tests/test_cli_fast.py);
:mod:`smtpguard.config` re-exports every name.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A configuration problem, with the file and dotted key it is about."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(f"{where}: {message}")


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


def read_toml(
    path: Path, error: type[ConfigError] = ConfigError, what: str = "file"
) -> dict[str, Any]:
    """A TOML file's contents; a missing, unreadable or invalid file raises ``error``
    naming the file (every data file smtpguard reads goes through here)."""
    try:
        data = path.read_bytes()
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
