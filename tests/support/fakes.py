"""Backends passed into checks and the pipeline in unit tests: they answer from sets
and dicts, record their calls and raise the backend's own error on demand.

The scanner fakes (:class:`FakeVirusScanner`, :class:`FakeRules`,
:class:`FakeSpamEngine`) go into ``Services.scanners`` through :func:`fake_scanners`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from smtpguard.config import AntispamConfig, VirusConfig
from smtpguard.counters import CounterError
from smtpguard.directory import DirectoryError, Kind, Login, Recipient
from smtpguard.scanners import (
    MessageSpool,
    ScanResult,
    ScanStatus,
    SpamEnvelope,
    SpamResult,
    SpamStatus,
)
from smtpguard.scanners.backends import ScannerFactory
from smtpguard.scanners.rules import RulesResult
from smtpguard.state import StateError

__all__ = [
    "FakeBlacklist",
    "FakeCounter",
    "FakeDirectory",
    "FakeRuleScan",
    "FakeRules",
    "FakeSpamEngine",
    "FakeVirusScanner",
    "FakeVirusStream",
    "fake_scanners",
]


@dataclass
class FakeDirectory:
    """A directory answering from dicts; methods named in ``failing`` raise."""

    recipients: dict[str, Recipient] = field(default_factory=dict)
    logins: dict[str, Login] = field(default_factory=dict)
    #: (login, address) pairs a login may send as (beyond nothing: no implicit rights).
    send_as: set[tuple[str, str]] = field(default_factory=set)
    #: (list address, sender) pairs allowed to post.
    posters: set[tuple[str, str]] = field(default_factory=set)
    failing: set[str] = field(default_factory=set)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def _enter(self, method: str, *args: str) -> None:
        self.calls.append((method, *args))
        if method in self.failing:
            raise DirectoryError(f"{method}: database is locked")

    def recipient(self, address: str) -> Recipient:
        self._enter("recipient", address)
        return self.recipients.get(address, Recipient(Kind.NONE))

    def login(self, login: str) -> Login | None:
        self._enter("login", login)
        return self.logins.get(login)

    def may_send_as(self, login: Login, address: str) -> bool:
        self._enter("may_send_as", login.login, address)
        return (login.login, address) in self.send_as

    def may_post(self, list_address: str, sender: str) -> bool:
        self._enter("may_post", list_address, sender)
        return (list_address, sender) in self.posters


@dataclass
class FakeBlacklist:
    """Address and ``@domain`` entries (lower-case), like the SQLite blacklist."""

    entries: set[str] = field(default_factory=set)
    failing: bool = False
    calls: list[str] = field(default_factory=list)

    def listed(self, address: str) -> str | None:
        self.calls.append(address)
        if self.failing:
            raise StateError("state.sqlite: disk I/O error")
        address = address.lower()
        for candidate in (address, "@" + address.rpartition("@")[2]):
            if candidate in self.entries:
                return candidate
        return None


@dataclass
class FakeCounter:
    """Same-size counters that count per key (sizes ignored); ``failing`` raises."""

    counts: dict[str, int] = field(default_factory=dict)
    failing: bool = False
    calls: list[tuple[str, str, int]] = field(default_factory=list)

    def _enter(self, method: str, key: str, size: int) -> None:
        self.calls.append((method, key, size))
        if self.failing:
            raise CounterError("redis unreachable: connection refused")

    def hit(self, key: str, size: int) -> int:
        self._enter("hit", key, size)
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]

    def peek(self, key: str, size: int) -> int:
        self._enter("peek", key, size)
        return self.counts.get(key, 0)


# --- scanners -------------------------------------------------------------------------


@dataclass
class FakeVirusStream:
    """One transaction's scan: records what it is fed, answers ``result``."""

    result: ScanResult
    headers: list[tuple[str, str]] = field(default_factory=list)
    ends_of_headers: int = 0
    body: bytearray = field(default_factory=bytearray)
    finished: int = 0
    closed: bool = False

    def feed_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))

    def end_of_headers(self) -> None:
        self.ends_of_headers += 1

    def feed(self, chunk: bytes) -> None:
        self.body += chunk

    def finish(self) -> ScanResult:
        self.finished += 1
        return self.result

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeVirusScanner:
    """The ``virus`` factory: a new :class:`FakeVirusStream` per transaction."""

    result: ScanResult = field(default_factory=lambda: ScanResult(ScanStatus.CLEAN))
    streams: list[FakeVirusStream] = field(default_factory=list)
    configs: list[VirusConfig] = field(default_factory=list)

    def __call__(self, config: VirusConfig) -> FakeVirusStream:
        self.configs.append(config)
        stream = FakeVirusStream(self.result)
        self.streams.append(stream)
        return stream


@dataclass
class FakeRuleScan:
    """One message through :class:`FakeRules`: records it, answers the rules' result."""

    result: RulesResult
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def feed_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))

    def end_of_headers(self) -> None:
        pass

    def feed(self, chunk: bytes) -> None:
        self.body += chunk

    def finish(self) -> RulesResult:
        return self.result


@dataclass
class FakeRules:
    """The ``rules`` factory and the rule set it loads: every message gets ``result``."""

    result: RulesResult = field(default_factory=lambda: RulesResult(0.0, ()))
    paths: list[Path] = field(default_factory=list)
    scans: list[FakeRuleScan] = field(default_factory=list)

    def __call__(self, path: Path) -> FakeRules:
        self.paths.append(path)
        return self

    def scanner(self) -> FakeRuleScan:
        scan = FakeRuleScan(self.result)
        self.scans.append(scan)
        return scan


@dataclass
class FakeSpamEngine:
    """The ``spam_engine`` factory and the engine: answers ``result``, records each
    message (as the octets it would send) and its envelope."""

    result: SpamResult = field(default_factory=lambda: SpamResult(SpamStatus.OK, 0.0, "no action"))
    configs: list[AntispamConfig] = field(default_factory=list)
    calls: list[tuple[bytes, SpamEnvelope]] = field(default_factory=list)

    def __call__(self, config: AntispamConfig) -> FakeSpamEngine:
        self.configs.append(config)
        return self

    def check(
        self, message: MessageSpool | IO[bytes] | bytes, envelope: SpamEnvelope
    ) -> SpamResult:
        data = message.getvalue() if isinstance(message, MessageSpool) else message
        self.calls.append((data if isinstance(data, bytes) else data.read(), envelope))
        return self.result


def fake_scanners(
    virus: FakeVirusScanner | None = None,
    rules: FakeRules | None = None,
    engine: FakeSpamEngine | None = None,
) -> ScannerFactory:
    """A :class:`ScannerFactory` whose every scanner is a fake."""
    return ScannerFactory(
        virus=virus or FakeVirusScanner(),
        rules=rules or FakeRules(),
        spam_engine=engine or FakeSpamEngine(),
    )
