"""The scanners the content checks use, built from the config.

The checks never construct a scanner themselves: they call the factories of the
:class:`ScannerFactory` in their :class:`~smtpguard.checks.Services`. The default one
builds the real clients below; tests pass factories that return fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smtpguard.config import AntispamConfig, VirusConfig
from smtpguard.scanners import RuleEngine, SpamEngine, VirusStream
from smtpguard.scanners.clamd import ClamdStream
from smtpguard.scanners.command import CommandScan
from smtpguard.scanners.health import shared_health
from smtpguard.scanners.rspamd import RspamdClient, rspamd_health
from smtpguard.scanners.rules import RuleSet

__all__ = ["ScannerFactory", "load_rules", "open_virus_stream", "rspamd_engine"]


def open_virus_stream(config: VirusConfig) -> VirusStream:
    """A scan for one transaction: clamd's INSTREAM (connected when the first octets
    are sent), or the command hook (spooled, run at the end)."""
    if config.backend == "clamd":
        return ClamdStream(
            config.clamd_socket,
            timeout=config.timeout,
            scan_timeout=config.timeout,
            max_bytes=config.max_bytes,
        )
    return CommandScan(config.command, timeout=config.timeout, max_bytes=config.max_bytes)


def load_rules(path: Path) -> RuleEngine:
    """The built-in content rules (raises :class:`~smtpguard.scanners.rules.RuleError`)."""
    return RuleSet.load(path)


def rspamd_engine(config: AntispamConfig) -> SpamEngine:
    """The external engine's client (``engine = "rspamd"``)."""
    endpoint = config.engine_socket
    health = shared_health(("rspamd", str(endpoint)), lambda: rspamd_health(endpoint))
    return RspamdClient(endpoint, timeout=config.engine_timeout, health=health)


@dataclass(frozen=True, slots=True)
class ScannerFactory:
    """How content checks get their scanners (see the module docstring)."""

    #: A virus scan for one transaction (``virus.backend`` other than "none").
    virus: Callable[[VirusConfig], VirusStream] = open_virus_stream
    #: The rule set of ``antispam.rules``, loaded once per runtime.
    rules: Callable[[Path], RuleEngine] = load_rules
    #: The spam engine client (``antispam.engine = "rspamd"``), built once per runtime.
    spam_engine: Callable[[AntispamConfig], SpamEngine] = rspamd_engine
