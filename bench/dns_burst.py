"""Benchmark: a burst of concurrent milter sessions against slow DNS.

Starts a DNS server that delays every answer (bench/slow_dns.py, default 200 ms),
runs the real ``smtpguard run`` with three DNSBL zones pointing at it, and drives
sessions with the PyPI ``miltertest`` client (tests/support/mtclient.py): CONNECT,
HELO, MAIL FROM, RCPT TO, as Postfix would. Every session has its own client IP, so
no answer comes from the cache. In one run it measures

* single: one session alone (median of ``--singles`` sessions, one after another);
* burst: ``--sessions`` sessions (default 50) started together, wall time until the
  last one has its RCPT answer (median of ``--bursts`` bursts);

and prints both and their ratio. The target is a burst within 2x of a single session.
``--full`` also enables smtpport, sender_domain and spf (PTR, FCrDNS, MX/A/AAAA, SPF
lookups, all through the slow server).

    .venv/bin/python -m bench.dns_burst [--sessions 50] [--delay 0.2] [--full]

This is a benchmark, not a test: nothing asserts on the timings; ``--check`` exits 1
when the ratio misses the target.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.postfix_bench import wait_for_dns
from tests.support.mtclient import MilterSession, wait_for_socket
from tests.support.unbound import free_port

ZONES = ["bl1.bench.test", "bl2.bench.test", "bl3.bench.test"]
TARGET = 2.0

_ips = (f"10.1.{n // 250}.{n % 250 + 3}" for n in itertools.count())


def next_ip() -> str:
    """A fresh client IP (last octet never 2: nobody is listed, everybody passes)."""
    return next(_ips)


def write_config(directory: Path, dns_port: int, full: bool) -> Path:
    zones = "".join(f'\n[[dnsbl.zones]]\nname = "{z}"\nkind = "rbl"\n' for z in ZONES)
    mode = "enforce" if full else "off"
    config = directory / "smtpguard.toml"
    config.write_text(
        f"""[milter]
socket = "unix:{directory / "smtpguard.sock"}"
log_level = "WARNING"

[site]
local_domains = ["example.com"]
relay_domains = ["relay.bench.test"]
trusted_networks = ["192.0.2.0/24"]

[directory]
backend = "none"

[state]
path = "{directory / "state.sqlite"}"

[dns]
nameservers = ["127.0.0.1"]
port = {dns_port}
timeout = 2.0
stage_deadline = 3.0

[checks.smtpport]
mode = "{mode}"

[checks.sender_domain]
mode = "{mode}"

[checks.spf]
mode = "{mode}"
{zones}""",
        encoding="utf-8",
    )
    return config


@contextlib.contextmanager
def slow_dns(delay: float) -> Iterator[tuple[int, list[str]]]:
    """bench/slow_dns.py in its own process (its own GIL, like a real server), ready
    when it answers a real query; yields its port and, after the block, its output."""
    port = free_port()
    zones = [arg for z in ZONES for arg in ("--zone", z)]
    server = str(Path(__file__).with_name("slow_dns.py"))
    argv = [sys.executable, server, "--port", str(port), "--delay", str(delay), *zones]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    output: list[str] = []
    try:
        if not wait_for_dns(port, proc, lifetime=delay + 1):
            raise RuntimeError("slow DNS server did not start")
        yield port, output
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        output.extend(out.splitlines())


def one_session(socket_path: str, ip: str) -> float:
    """One SMTP session as Postfix presents it; seconds from connect to RCPT answer."""
    start = time.monotonic()
    with MilterSession(socket_path, timeout=30) as s:
        for answer in (
            s.connect(ip),
            s.helo(f"mx-{ip.split('.')[2]}-{ip.split('.')[3]}.bench.test"),
            s.mail("<someone@sender.bench.test>"),
            s.rcpt("<user@relay.bench.test>"),
        ):
            if answer.kind != "continue":
                raise RuntimeError(f"session {ip} refused: {answer}")
    return time.monotonic() - start


def burst(socket_path: str, sessions: int) -> float:
    ips = [next_ip() for _ in range(sessions)]
    barrier = threading.Barrier(sessions + 1)
    errors: list[BaseException] = []

    def run(ip: str) -> None:
        barrier.wait()
        try:
            one_session(socket_path, ip)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(ip,)) for ip in ips]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    if errors:
        raise RuntimeError(f"{len(errors)} sessions failed: {errors[0]}")
    return elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--delay", type=float, default=0.2, help="DNS answer delay, seconds")
    p.add_argument("--singles", type=int, default=5)
    p.add_argument("--bursts", type=int, default=3)
    p.add_argument("--full", action="store_true", help="also smtpport, sender_domain, spf")
    p.add_argument("--check", action="store_true", help=f"exit 1 if burst > {TARGET}x single")
    args = p.parse_args()

    with (
        slow_dns(args.delay) as (dns_port, dns_output),
        tempfile.TemporaryDirectory(prefix="dns-burst-") as tmp,
    ):
        directory = Path(tmp)
        config = write_config(directory, dns_port, args.full)
        socket_path = directory / "smtpguard.sock"
        log = (directory / "service.log").open("w")
        service = subprocess.Popen(
            [sys.executable, "-m", "smtpguard", "-c", str(config), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
        try:
            wait_for_socket(socket_path)
            one_session(str(socket_path), next_ip())  # warm-up: imports, loop thread
            singles = [one_session(str(socket_path), next_ip()) for _ in range(args.singles)]
            bursts = [burst(str(socket_path), args.sessions) for _ in range(args.bursts)]
        finally:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()
            log.close()

    single = statistics.median(singles)
    burst_time = statistics.median(bursts)
    ratio = burst_time / single
    lookups = "3 DNSBL zones" + (" + PTR/FCrDNS, MX/A/AAAA, SPF" if args.full else "")
    print(f"DNS delay {args.delay * 1000:.0f} ms per answer; {lookups}")
    print(f"single session : {single:.3f} s  (median of {len(singles)})")
    print(
        f"burst of {args.sessions:3d}   : {burst_time:.3f} s  (median of {len(bursts)}:"
        f" {', '.join(f'{b:.3f}' for b in bursts)})"
    )
    print(f"ratio          : {ratio:.2f}x  (target <= {TARGET:.1f}x)")
    print(f"DNS server     : {dns_output[-1] if dns_output else '?'}")
    return 1 if args.check and ratio > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
