"""Cost of one local IP list lookup (``[[dnsbl.local]]``, ``[[policy.exempt]] ip_files``)
as the list grows: 10 entries against 100,000.

The lists are random IPv4 and IPv6 networks with the prefix lengths real lists have
(/32 and /24 mostly, a few /16 to /31; /128, /64 and /48 for IPv6), built with
:func:`smtpguard.iplist.build` as the config loader builds them. The probes are client
addresses, half inside some entry and half outside. The figure is the best of
``--rounds`` rounds of ``--lookups`` lookups, in nanoseconds per lookup. The number of
entries does not enter the lookup (a few dict lookups whatever the size); what is left
of the ratio large/small is the memory hierarchy (100,000 entries do not fit in the CPU
caches, 10 do) and a denser /16 index. For scale, the same lookup as a linear scan of
``ip in network`` over the entries is printed too.

    .venv/bin/python -m bench.iplist [--lookups 200000] [--rounds 5] [--check]

``--check`` exits 1 when the ratio is over 4 (a linear scan makes it thousands).
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import time

from smtpguard.address import IPAddress
from smtpguard.iplist import IpSet, build

V4_LENGTHS = (32,) * 6 + (24,) * 3 + (16, 20, 22, 28, 29, 30, 31)
V6_LENGTHS = (128, 64, 64, 56, 48, 48, 32)


def networks(count: int, rng: random.Random) -> list[str]:
    out = []
    for index in range(count):
        if index % 4 == 3:
            length = rng.choice(V6_LENGTHS)
            v6 = ipaddress.IPv6Network((rng.getrandbits(128), length), strict=False)
            out.append(str(v6))
        else:
            length = rng.choice(V4_LENGTHS)
            v4 = ipaddress.IPv4Network((rng.getrandbits(32), length), strict=False)
            out.append(str(v4))
    return out


def probes(entries: list[str], count: int, rng: random.Random) -> list[IPAddress]:
    inside = [ipaddress.ip_network(rng.choice(entries)).network_address for _ in range(count // 2)]
    outside: list[IPAddress] = [
        ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(count - len(inside))
    ]
    mixed: list[IPAddress] = [*inside, *outside]
    rng.shuffle(mixed)
    return mixed


def per_lookup(found: IpSet, ips: list[IPAddress], rounds: int) -> float:
    best = float("inf")
    find = found.find
    for _ in range(rounds):
        start = time.perf_counter()
        for ip in ips:
            find(ip)
        best = min(best, time.perf_counter() - start)
    return best / len(ips) * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 when the ratio is over 2")
    args = parser.parse_args(argv)
    rng = random.Random(14)
    results = {}
    for size in (10, 100_000):
        entries = networks(size, rng)
        started = time.perf_counter()
        found = build((e, f"bench:{i}") for i, e in enumerate(entries))
        built = time.perf_counter() - started
        ns = per_lookup(found, probes(entries, args.lookups, rng), args.rounds)
        results[size] = ns
        print(f"{size:>7} entries: {ns:7.0f} ns per lookup (built in {built * 1000:.0f} ms)")
        if size == 100_000:
            nets = [ipaddress.ip_network(e) for e in entries]
            sample = probes(entries, 50, rng)
            started = time.perf_counter()
            for ip in sample:
                any(ip.version == n.version and ip in n for n in nets)
            scan = (time.perf_counter() - started) / len(sample) * 1e9
            print(f"{size:>7} entries, linear scan: {scan:9.0f} ns per lookup")
    ratio = results[100_000] / results[10]
    print(f"ratio 100000/10: {ratio:.2f}x")
    return 1 if args.check and ratio > 4 else 0


if __name__ == "__main__":
    sys.exit(main())
