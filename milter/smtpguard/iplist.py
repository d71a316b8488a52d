"""Local IP lists: files of addresses and networks, matched by prefix lookup.

A file holds one IPv4 or IPv6 address or network (``198.51.100.0/24``,
``2001:db8::/32``) per line; ``#`` starts a comment, blank lines are ignored. A network
with host bits set (``198.51.100.7/24``) is refused rather than silently widened: it is
usually a typo for an address or for a different network.

Matching does not scan the entries. Each network is a key in a dict per prefix length
(the address shifted right by its host bits). Asking every prefix length would cost
up to 33 (IPv4) or 129 (IPv6) dict lookups, more the more varied the list; so the
lengths are also indexed by the address's top bits (/16 for IPv4, /32 for IPv6): a
lookup asks that index once, then only the lengths that occur under that /16 or /32
(usually one or two), longest first. Networks shorter than the index width are few
and asked by length. 100,000 entries cost about what 10 do (``bench/iplist.py``).

The files are read when the configuration is loaded: at start and on every SIGHUP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from smtpguard.address import IPAddress, IPNetwork, unmapped, unmapped_network
from smtpguard.datafiles import read_file


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
    #: Width of the index of prefix lengths (see the module docstring).
    stride: int
    #: prefix length -> {prefix: entry as written}
    tables: dict[int, dict[int, str]] = field(default_factory=dict)
    #: top ``stride`` bits -> the prefix lengths (>= stride) under them, longest first
    index: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: prefix lengths below ``stride``, longest first
    short: tuple[int, ...] = ()

    def find(self, value: int) -> str | None:
        bits = self.bits
        for length in self.index.get(value >> (bits - self.stride), ()):
            entry = self.tables[length].get(value >> (bits - length))
            if entry is not None:
                return entry
        for length in self.short:
            entry = self.tables[length].get(value >> (bits - length))
            if entry is not None:
                return entry
        return None


def _family(bits: int, stride: int, networks: list[tuple[int, int, str]]) -> _Family:
    """From (address, prefix length, entry) triples; a repeated network keeps its
    first entry."""
    tables: dict[int, dict[int, str]] = {}
    index: dict[int, set[int]] = {}
    for address, length, label in networks:
        tables.setdefault(length, {}).setdefault(address >> (bits - length), label)
        if length >= stride:
            index.setdefault(address >> (bits - stride), set()).add(length)
    # Most index slots hold the same few length sets: share one tuple per set.
    shared: dict[frozenset[int], tuple[int, ...]] = {}
    lengths = {
        top: shared.setdefault(frozenset(found), tuple(sorted(found, reverse=True)))
        for top, found in index.items()
    }
    short = tuple(sorted((n for n in tables if n < stride), reverse=True))
    return _Family(bits, stride, tables, lengths, short)


@dataclass(frozen=True, slots=True)
class IpSet:
    """A set of networks answering "which entry contains this address?"."""

    #: Where the entries came from (file names), for logs.
    sources: tuple[str, ...] = ()
    size: int = 0
    v4: _Family = field(default_factory=lambda: _Family(32, 16))
    v6: _Family = field(default_factory=lambda: _Family(128, 32))

    def find(self, ip: IPAddress) -> str | None:
        """The entry (as written) whose network contains ``ip``, longest prefix first."""
        ip = unmapped(ip)
        family = self.v4 if ip.version == 4 else self.v6
        return family.find(int(ip))

    def __contains__(self, ip: IPAddress) -> bool:
        return self.find(ip) is not None

    def __bool__(self) -> bool:
        return self.size > 0


def unbracket(network: str) -> str:
    """``[2001:db8::]/32`` (Postfix's mynetworks form) as ``2001:db8::/32``."""
    if network.startswith("["):
        addr, sep, rest = network[1:].partition("]")
        if sep and (not rest or rest.startswith("/")):
            return addr + rest
    return network


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One entry, also in Postfix's bracketed form (an admin copies it from
    mynetworks: review rev167 F3); ValueError says what is wrong with it."""
    bare = unbracket(text)
    try:
        net = ipaddress.ip_network(bare, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(bare, strict=False)
        except ValueError:
            raise NotANetworkError(f"not an IP address or network: {text!r}") from exc
        raise ValueError(f"host bits set in {text!r}: did you mean {loose}?") from exc
    # Lookups read an IPv4-mapped client (::ffff:192.0.2.1) as the IPv4 address it is,
    # so such an entry is stored as IPv4 too, or it would never match.
    return unmapped_network(net)


def build(
    entries: Iterable[tuple[str, str]],
    sources: tuple[str, ...] = (),
    refuse: Callable[[IPNetwork], str] | None = None,
) -> IpSet:
    """An :class:`IpSet` from ``(entry, label)`` pairs, ``label`` naming where the
    entry was written (``file:line``) for error messages. ``refuse`` says why an entry
    may not be in this list ("" if it may)."""
    families: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}
    size = 0
    for text, label in entries:
        try:
            net = parse_network(text)
        except ValueError as exc:
            source, _, line = label.rpartition(":")
            problem = (
                _UNSHOWN if isinstance(exc, NotANetworkError) and source in sources else str(exc)
            )
            raise IpListError(source, int(line or 0), problem) from None
        why = refuse(net) if refuse is not None else ""
        if why:
            source, _, line = label.rpartition(":")
            raise IpListError(source, int(line or 0), f"{text} {why}")
        families[net.version].append((int(net.network_address), net.prefixlen, text))
        size += 1
    return IpSet(
        sources=sources,
        size=size,
        v4=_family(32, 16, families[4]),
        v6=_family(128, 32, families[6]),
    )


#: A line of a list file that is no network at all is not quoted: root reads the lists
#: before it drops privileges, and a link to /etc/shadow the service user put in place
#: of a list had that file's first line in the error, and in the log (review rev179 F5;
#: rev191 F4: judged by the file's mode, a file in a private folder still was). A line
#: that reads as a network (host bits set) is quoted: it says nothing else.
_UNSHOWN = "not an IP address or network (the line is not shown)"


class NotANetworkError(ValueError):
    """An entry that is no IP address or network in any reading."""


def file_entries(path: Path) -> list[tuple[str, str]]:
    """The entries of one list file with their ``file:line`` labels."""
    try:
        text = read_file(path).decode("utf-8")
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


def load(
    paths: Iterable[Path],
    extra: Iterable[tuple[str, str]] = (),
    refuse: Callable[[IPNetwork], str] | None = None,
) -> IpSet:
    """The union of list files (and of ``extra`` entries written in the config);
    ``refuse`` as for :func:`build`."""
    entries = list(extra)
    files = tuple(paths)
    for path in files:
        entries += file_entries(path)
    return build(entries, tuple(str(p) for p in files), refuse)
