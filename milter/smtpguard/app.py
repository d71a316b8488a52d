"""Building a runtime from a config: reply table, services, pipeline.

Everything the milter needs is built here, once, and then handed to each session; a
reload (SIGHUP) builds a new :class:`Runtime` and swaps the reference, so sessions in
flight finish on the one they started with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smtpguard.checks import Services
from smtpguard.config import Config, ConfigError, load_config
from smtpguard.directory import Directory, NoDirectory, SqliteDirectory
from smtpguard.pipeline import CHECK_NAMES, Pipeline
from smtpguard.replies import ReplyTable, load_replies
from smtpguard.state import Blacklist, SessionGate, SqliteBlacklist


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    replies: ReplyTable
    services: Services
    pipeline: Pipeline


def load(path: Path | str) -> Config:
    return load_config(path, known_checks=CHECK_NAMES)


def build_runtime(
    config: Config,
    *,
    directory: Directory | None = None,
    blacklist: Blacklist | None = None,
) -> Runtime:
    """Build every part; raise :class:`ConfigError` if any is unusable.

    ``directory`` and ``blacklist`` replace the configured backends (tests pass fakes
    here instead of patching anything).
    """
    replies = load_replies(config.replies, config.file)
    if directory is None:
        directory = _directory(config)
    if blacklist is None:
        blacklist = SqliteBlacklist(config.state.path, config.state.timeout)
    services = Services(config=config, directory=directory, blacklist=blacklist)
    return Runtime(config, replies, services, Pipeline(services, replies))


def _directory(config: Config) -> Directory:
    d = config.directory
    if d.backend == "none":
        return NoDirectory()
    if not d.path.is_file():
        raise ConfigError(
            config.file,
            "directory.path",
            f"{d.path} does not exist; create it with 'smtpguard directory import FILE'",
        )
    return SqliteDirectory(d.path, d.timeout)


def new_gate(config: Config) -> SessionGate:
    return SessionGate(config.limits.max_sessions)
