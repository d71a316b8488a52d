"""Fakes for the DNS service: a transport answering from a table, and a clock.

Passed into :class:`smtpguard.dns.Resolver` the way production passes the dnspython
transport; nothing is patched. The table behaves like a small authoritative zone: a
name with no record of the asked type but other records is NODATA, an unknown name is
NXDOMAIN (both with the negative TTL an SOA would give), and single lookups can be
forced to SERVFAIL or TIMEOUT.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from smtpguard.checks import Services
from smtpguard.config import load_config
from smtpguard.directory import NoDirectory
from smtpguard.dns import Answer, Resolver, Status
from support.polling import wait_until


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeDns:
    """A :class:`~smtpguard.dns.Transport` answering from ``records``."""

    records: dict[tuple[str, str], Answer] = field(default_factory=dict)
    #: (name, type) -> status for failures (SERVFAIL, TIMEOUT) and forced negatives.
    statuses: dict[tuple[str, str], Status] = field(default_factory=dict)
    negative_ttl: float = 60.0
    #: Seconds every answer takes (the fake sleeps on the resolver's event loop).
    delay: float = 0.0
    #: Seconds the names under a suffix take (a zone whose servers are slow).
    slow: dict[str, float] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, rdtype: str, *values: str, ttl: float = 300.0) -> FakeDns:
        self.records[(name, rdtype)] = Answer.of(name, rdtype, *values, ttl=ttl)
        return self

    def fail(self, name: str, rdtype: str, status: Status) -> FakeDns:
        self.statuses[(name, rdtype)] = status
        return self

    def count(self, name: str, rdtype: str) -> int:
        return self.calls.count((name, rdtype))

    async def query(self, name: str, rdtype: str) -> Answer:
        self.calls.append((name, rdtype))
        delay = next((s for suffix, s in self.slow.items() if name.endswith(suffix)), self.delay)
        if delay:
            await asyncio.sleep(delay)
        status = self.statuses.get((name, rdtype))
        if status is not None:
            ttl = self.negative_ttl if status.negative else 0.0
            return Answer(name, rdtype, status, ttl=ttl, detail=f"fake {status.name}")
        found = self.records.get((name, rdtype))
        if found is not None:
            return found
        exists = any(owner == name for owner, _ in self.records)
        status = Status.NODATA if exists else Status.NXDOMAIN
        return Answer(name, rdtype, status, ttl=self.negative_ttl)


def fake_resolver(fake: FakeDns, clock: FakeClock | None = None, **kwargs: Any) -> Resolver:
    """A resolver over ``fake``; close it when done (it runs an event loop thread)."""
    if clock is not None:
        kwargs["clock"] = clock
    return Resolver(fake, **kwargs)


@dataclass
class NoBlacklist:
    def listed(self, address: str) -> str | None:
        return None


#: The ``[dns]`` table of a config whose checks get a fake resolver: the loader refuses
#: DNS lists and DNS checks asked for without a nameserver; nothing is sent to this one.
DNS_SECTION: dict[str, Any] = {"nameservers": ["127.0.0.1"]}


def dns_services(where: Path, resolver: Resolver | None, **sections: Mapping[str, Any]) -> Services:
    """Services for DNS check tests: a config of ``sections`` with :data:`DNS_SECTION`
    (written under ``where`` and loaded with the real loader) and the given resolver."""
    path = where / "smtpguard.toml"
    data = {**sections, "dns": {**DNS_SECTION, **sections.get("dns", {})}}
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return Services(
        config=load_config(path), directory=NoDirectory(), blacklist=NoBlacklist(), dns=resolver
    )


def hold_slots(
    resolver: Resolver, fake: FakeDns, count: int, *, zone: str = "hold.test", client: bool = False
) -> None:
    """Fill ``count`` of the resolver's slots (its ``max_inflight``: the shared pool,
    the client pool, or the reserved pool of a DNSBL ``zone``) with lookups under
    ``zone``, which take a minute, and wait until the fake has been asked them all."""
    fake.slow.setdefault(zone, 60.0)
    asked = len(fake.calls)
    for i in range(count):
        resolver.submit(f"{i}.{asked}.held.{zone}", "A", client=client)
    wait_until(lambda: len(fake.calls) >= asked + count, deadline=5)
