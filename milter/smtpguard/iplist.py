"""Local IP lists: files of addresses and networks, matched by prefix lookup.

A file holds one IPv4 or IPv6 address or network (``198.51.100.0/24``,
``2001:db8::/32``) per line; ``#`` starts a comment, blank lines are ignored. A network
with host bits set (``198.51.100.7/24``) is refused rather than silently widened: it is
usually a typo for an address or for a different network.

Matching does not scan the entries. Each network is stored as its prefix (the address
shifted right by the host bits) in a dict per prefix length, so a lookup asks at most
one dict per prefix length that occurs in the file (33 for IPv4, 129 for IPv6, in
practice a handful): 100,000 entries cost the same per lookup as 10
(``bench/iplist.py`` measures it).

The files are read when the configuration is loaded: at start and on every SIGHUP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from smtpguard.address import IPAddress

_BITS = {4: 32, 6: 128}


class IpListError(Exception):
    """A line of a list file that is not an address or network."""

    def __init__(self, source: str, line: int, problem: str) -> None:
        self.source = source
        self.line = line
        self.problem = problem
        super().__init__(f"{source}:{line}: {problem}")


@dataclass(frozen=True, slots=True)
class _Family:
    bits: int
    #: prefix length -> {prefix: entry as written}; longest prefix lengths first.
    tables: tuple[tuple[int, dict[int, str]], ...] = ()

    def find(self, value: int) -> str | None:
        for length, table in self.tables:
            entry = table.get(value >> (self.bits - length))
            if entry is not None:
                return entry
        return None


@dataclass(frozen=True, slots=True)
class IpSet:
    """A set of networks answering "which entry contains this address?"."""

    #: Where the entries came from (file names), for logs.
    sources: tuple[str, ...] = ()
    size: int = 0
    v4: _Family = field(default_factory=lambda: _Family(32))
    v6: _Family = field(default_factory=lambda: _Family(128))

    def find(self, ip: IPAddress) -> str | None:
        """The entry (as written) whose network contains ``ip``, longest prefix first."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        family = self.v4 if ip.version == 4 else self.v6
        return family.find(int(ip))

    def __contains__(self, ip: IPAddress) -> bool:
        return self.find(ip) is not None

    def __bool__(self) -> bool:
        return self.size > 0


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One entry; ValueError says what is wrong with it."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"not an IP address or network: {text!r}") from exc
        raise ValueError(f"host bits set in {text!r}: did you mean {loose}?") from exc


def build(entries: Iterable[tuple[str, str]], sources: tuple[str, ...] = ()) -> IpSet:
    """An :class:`IpSet` from ``(entry, label)`` pairs, ``label`` naming where the
    entry was written (``file:line``) for error messages."""
    tables: dict[int, dict[int, dict[int, str]]] = {4: {}, 6: {}}
    size = 0
    for text, label in entries:
        try:
            net = parse_network(text)
        except ValueError as exc:
            source, _, line = label.rpartition(":")
            raise IpListError(source, int(line or 0), str(exc)) from None
        bits = _BITS[net.version]
        prefix = int(net.network_address) >> (bits - net.prefixlen)
        tables[net.version].setdefault(net.prefixlen, {}).setdefault(prefix, text)
        size += 1
    return IpSet(
        sources=sources,
        size=size,
        v4=_Family(32, tuple(sorted(tables[4].items(), reverse=True))),
        v6=_Family(128, tuple(sorted(tables[6].items(), reverse=True))),
    )


def file_entries(path: Path) -> list[tuple[str, str]]:
    """The entries of one list file with their ``file:line`` labels."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise IpListError(str(path), 0, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise IpListError(str(path), 0, "not UTF-8 text") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.partition("#")[0].strip()
        if entry:
            out.append((entry, f"{path}:{number}"))
    return out


def load(paths: Iterable[Path], extra: Iterable[tuple[str, str]] = ()) -> IpSet:
    """The union of list files (and of ``extra`` entries written in the config)."""
    entries = list(extra)
    files = tuple(paths)
    for path in files:
        entries += file_entries(path)
    return build(entries, tuple(str(p) for p in files))
