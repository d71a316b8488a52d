"""Backends passed into checks and the pipeline in unit tests: they answer from sets
and dicts, record their calls and raise the backend's own error on demand."""

from __future__ import annotations

from dataclasses import dataclass, field

from smtpguard.directory import DirectoryError, Kind, Login, Recipient
from smtpguard.state import StateError

__all__ = ["FakeBlacklist", "FakeDirectory"]


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
