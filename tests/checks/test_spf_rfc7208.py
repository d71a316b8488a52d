"""The RFC 7208 test suite (openspf.org, release 2014.04) through our SPF evaluator.

``tests/data/rfc7208-tests.yml`` is the suite as pyspf 2.0.14 ships it (licence in
``rfc7208-tests.LICENSE`` beside it). Each scenario's zone data is served by a fake
transport that behaves like a recursive resolver (CNAMEs followed, a ``TIMEOUT`` entry
becomes a TIMEOUT answer), behind the real :class:`~smtpguard.dns.Resolver` and cache;
:class:`~smtpguard.checks.spf.SpfQuery` evaluates. This proves that wiring pyspf to our
resolver (the ``dns`` override) keeps it conformant, with no library global touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TXT
import pytest
import yaml

from smtpguard.checks.spf import SpfQuery
from smtpguard.dns import Answer, Resolver, Status, normalize

SUITE = Path(__file__).resolve().parents[1] / "data" / "rfc7208-tests.yml"
MAX_CNAME = 10


def _key(name: str) -> str:
    try:
        return normalize(name)
    except ValueError:
        return name.lower().rstrip(".")


def load_zone(data: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """As the suite's own driver (pyspf test/testspf.py, getrdata): an SPF record is
    also served as TXT when the name has no TXT record; "NONE" values are no record."""
    zone: dict[str, list[Any]] = {}
    for name, entries in data.items():
        records: list[Any] = []
        generated = []
        has_txt = False
        for entry in entries:
            if not isinstance(entry, dict):
                records.append(entry)  # the bare word TIMEOUT
                continue
            for rdtype, value in entry.items():
                if rdtype in ("TXT", "SPF") and isinstance(value, str):
                    value = (value,)  # noqa: PLW2901  # the suite's shorthand
                if rdtype == "TXT":
                    has_txt = True
                elif rdtype == "SPF":
                    generated.append(("TXT", value))
                if value != ("NONE",):
                    records.append((rdtype, value))
        if not has_txt:
            records.extend(generated)
        zone[_key(name)] = records
    return zone


def _rdata(rdtype: str, value: Any) -> list[dns.rdata.Rdata]:
    IN = dns.rdataclass.IN
    kind = dns.rdatatype.from_text(rdtype)
    if rdtype in ("TXT", "SPF"):
        strings = []
        for text in value:
            raw = text.encode("utf-8")
            # A long string is several character-strings on the wire (RFC 1035 §3.3.14).
            strings += [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
        return [dns.rdtypes.ANY.TXT.TXT(IN, kind, strings or [b""])]
    if rdtype == "MX":
        preference, exchange = value
        mx = dns.rdtypes.ANY.MX.MX(  # type: ignore[no-untyped-call]  # dnspython leaves it bare
            IN, kind, preference, dns.name.from_text(exchange)
        )
        return [mx]
    try:
        return [dns.rdata.from_text(IN, kind, str(value))]
    except (dns.exception.DNSException, ValueError):
        return []  # data a real server could not hold


@dataclass
class SuiteDns:
    """A recursive resolver over one scenario's zone data."""

    zone: dict[str, list[Any]]

    async def query(self, name: str, rdtype: str) -> Answer:
        return self._resolve(name, rdtype, 0)

    def _resolve(self, name: str, rdtype: str, depth: int) -> Answer:
        entries = self.zone.get(_key(name))
        if entries is None:
            # The suite's driver: unknown names under "error." time out.
            if name.startswith("error."):
                return Answer(name, rdtype, Status.TIMEOUT, detail="suite: error.")
            return Answer(name, rdtype, Status.NXDOMAIN, ttl=60)
        records: list[dns.rdata.Rdata] = []
        for entry in entries:
            if entry == "TIMEOUT":
                # As in the suite's driver: a timeout unless an answer came first.
                if not records:
                    return Answer(name, rdtype, Status.TIMEOUT, detail="suite: TIMEOUT")
                break
            kind, value = entry
            if kind == rdtype and value == "TIMEOUT":
                return Answer(name, rdtype, Status.TIMEOUT, detail="suite: TIMEOUT")
            if kind == "CNAME" and rdtype != "CNAME":
                if depth >= MAX_CNAME:
                    return Answer(name, rdtype, Status.SERVFAIL, detail="CNAME chain")
                return self._resolve(str(value), rdtype, depth + 1)
            if kind == rdtype:
                records += _rdata(kind, value)
        status = Status.OK if records else Status.NODATA
        return Answer(name, rdtype, status, tuple(records), ttl=300 if records else 60)


def scenarios() -> list[Any]:
    out = []
    with SUITE.open("rb") as fh:
        for scenario in yaml.safe_load_all(fh):
            zone = load_zone(scenario["zonedata"])
            for test_id, test in scenario["tests"].items():
                out.append(pytest.param(zone, test, id=test_id))
    return out


@pytest.mark.parametrize(("zone", "test"), scenarios())
def test_rfc7208(zone: dict[str, list[Any]], test: dict[str, Any]) -> None:
    resolver = Resolver(SuiteDns(zone))
    try:
        query = SpfQuery(
            resolver,
            time.monotonic() + 10,
            i=test["host"],
            s=test["mailfrom"],
            h=test["helo"],
            strict=test.get("strict", True),
        )
        query.set_default_explanation("DEFAULT")
        result, _code, explanation = query.check()
    finally:
        resolver.close()
    expected = test["result"]
    allowed = expected if isinstance(expected, list) else [expected]
    assert result in allowed, f"{test.get('spec')}: {result} not in {allowed}"
    if "explanation" in test:
        assert explanation == test["explanation"]
