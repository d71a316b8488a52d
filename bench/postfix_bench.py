"""Pieces of bench/throughput.py: Postfix delivering to discard, smtp-source, the rspamd
milter proxy, unbound with the benchmark's zone, and /proc readings.

Everything here starts its own processes on loopback, in private directories, and stops
exactly the processes it started. The Postfix instance is a small variant of
``tests/support/postfix.py`` (whose transports pipe every message to a capture script):
here every transport is ``discard``, and the milter line is chosen per configuration
while the rest of ``main.cf`` is the same for all of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver

from bench.milter_load import optneg_packet, read_packet
from smtpguard.app import load
from tests.support.daemons import RSPAMD_OFF, keep_hs_cache, prepare_rspamd, stop_process
from tests.support.postfix import (
    MASTER_CF_SERVICES,
    attach_smtpguard,
    free_port,
    local_main_cf,
    postfix_cmd,
    read_maillog,
    start_instance,
)
from tests.support.unbound import LOCAL_DATA, config_text
from tests.support.unbound import free_port as free_udp_tcp_port

SMTP_SOURCE = "/usr/sbin/smtp-source"
UNBOUND = "/usr/sbin/unbound"
POLL = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_for_dns(
    port: int, proc: subprocess.Popen[Any], lifetime: float, deadline: float = 15.0
) -> bool:
    """Poll the bench zone on 127.0.0.1:``port`` until it answers; False if ``proc``
    exits or ``deadline`` passes first."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], port, lifetime
    end = time.monotonic() + deadline
    while True:
        try:
            resolver.resolve("sender.bench.test", "MX")
            return True
        except dns.exception.DNSException:
            if proc.poll() is not None or time.monotonic() > end:
                return False
            time.sleep(POLL)


# --- /proc readings --------------------------------------------------------------------


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """utime + stime of one process (all its threads), in seconds; with ``reaped``, plus
    the CPU of the children it has waited for (cutime + cstime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    last = 15 if reaped else 13
    return sum(int(f) for f in fields[11:last]) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/PID/status (VmRSS, VmHWM), in KiB; 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def threads(pid: int) -> int:
    return status_kib(pid, "Threads")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all threads' children)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values) - idle), float(sum(values))


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# --- Postfix delivering to discard -----------------------------------------------------


#: Queue directories that hold messages not yet delivered.
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


@dataclass
class BenchPostfix:
    name: str
    root: Path
    port: int
    config_dir: Path
    queue: Path

    def maillog(self) -> str:
        return read_maillog(self.root)

    def queued(self) -> int:
        count = 0
        for q in QUEUES:
            with contextlib.suppress(OSError):
                for _dirpath, _dirs, files in os.walk(self.queue / q):
                    count += len(files)
        return count

    def wait_empty(self, deadline: float = 120.0) -> float:
        """Wait until every accepted message has been delivered (discarded)."""
        start = time.monotonic()
        while self.queued():
            if time.monotonic() - start > deadline:
                raise RuntimeError(f"{self.name}: queue not empty after {deadline} s")
            time.sleep(POLL)
        return time.monotonic() - start

    def cpu_seconds(self) -> float:
        """CPU used so far by the whole instance: the master, every process it runs now
        (smtpd, cleanup, qmgr, discard, ...) and every one it has reaped. Differences
        of two readings are what Postfix spent in between, whichever processes came
        and went (a service process exits after ``max_use`` requests)."""
        master = int((self.queue / "pid" / "master.pid").read_text().split()[0])
        total = cpu_seconds(master, reaped=True)
        for pid in process_tree(master)[1:]:
            with contextlib.suppress(OSError, ValueError):
                total += cpu_seconds(pid)
        return total

    def stop(self) -> None:
        postfix_cmd(self.config_dir, "stop", check=False)
        env = {**os.environ, "MAIL_CONFIG": str(self.config_dir)}
        end = time.monotonic() + 20
        # master -t exits non-zero while the instance still holds its lock.
        while (
            subprocess.run(
                ["/usr/lib/postfix/sbin/master", "-t"], env=env, capture_output=True, check=False
            ).returncode
            != 0
            and time.monotonic() < end
        ):
            time.sleep(POLL)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postfix(name: str, smtpguard_config: Path, milter: str | None) -> BenchPostfix:
    """A Postfix instance with the main.cf smtpguard generates, every transport
    ``discard`` and ``smtpd_milters`` set to ``milter`` (None: no milter at all).

    Every configuration gets the same main.cf apart from that one line, so the
    instances differ only in the milter they ask.
    """
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"smtpguard-bench-{name}-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    root.chmod(0o755)
    config_dir, queue, data = root / "etc", root / "queue", root / "data"
    for d in (config_dir, queue, data):
        d.mkdir()
    shutil.chown(data, "postfix", "postfix")
    port = free_port()
    (config_dir / "main.cf").write_text(local_main_cf(load(smtpguard_config), root, "discard"))
    # Before postfix-config, which reads master.cf's services too (postconf -F fails
    # without the file).
    (config_dir / "master.cf").write_text(MASTER_CF_SERVICES.format(port=port))
    # The settings smtpguard generates, applied as users apply them; then the one
    # line that differs between the configurations.
    attach_smtpguard(config_dir, smtpguard_config)
    subprocess.run(
        ["postconf", "-c", str(config_dir), "-e", f"smtpd_milters = {milter or ''}"],
        check=True,
        timeout=60,
    )
    return start_instance(BenchPostfix(name, root, port, config_dir, queue), f"postfix {name}")


# --- smtp-source -----------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """One smtp-source run: ``sessions`` in parallel, ``messages`` in all, ``size``
    bytes of payload; ``reuse``: all of a session's messages over one connection
    (``-d``), else one message per connection."""

    sessions: int
    messages: int
    size: int
    reuse: bool
    sender: str
    recipient: str
    helo: str

    def argv(self, port: int, messages: int | None = None) -> list[str]:
        argv = [
            SMTP_SOURCE,
            "-s",
            str(self.sessions),
            "-m",
            str(messages or self.messages),
            "-l",
            str(self.size),
            "-f",
            self.sender,
            "-t",
            self.recipient,
            "-M",
            self.helo,
        ]
        if self.reuse:
            argv.append("-d")
        return [*argv, f"127.0.0.1:{port}"]


def smtp_source(load_: Load, port: int, messages: int | None = None) -> float:
    """Run smtp-source to the end; its wall time in seconds. Any reply it did not
    expect (a milter's reject or tempfail) makes it stop with an error: raised."""
    if not Path(SMTP_SOURCE).exists():
        raise RuntimeError(f"{SMTP_SOURCE} not found: apt-get install postfix")
    start = time.perf_counter()
    result = subprocess.run(
        load_.argv(port, messages), capture_output=True, text=True, timeout=900, check=False
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or result.stderr.strip():
        raise RuntimeError(
            f"smtp-source failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    return elapsed


# --- unbound with the benchmark's zone -------------------------------------------------

#: Added to tests/support/unbound.py's data: a sender domain whose SPF record passes
#: the loopback client Postfix reports (smtp-source cannot choose its address) and the
#: 198.51.100.10 client (PTR mx.good.test, confirmed) of the direct protocol runs.
#: 127.0.0.1 has PTR localhost. (tests' data) and unbound's built-in localhost. zone
#: confirms it.
BENCH_DATA = [
    "sender.bench.test. MX 10 mx.good.test.",
    'sender.bench.test. TXT "v=spf1 ip4:127.0.0.0/8 ip4:198.51.100.0/25 -all"',
]


@dataclass(frozen=True)
class Unbound:
    port: int
    pid: int


@contextlib.contextmanager
def unbound(directory: Path) -> Iterator[Unbound]:
    """unbound serving tests/support/unbound.py's zones plus :data:`BENCH_DATA`."""
    if not Path(UNBOUND).exists():
        raise RuntimeError(f"{UNBOUND} not found: apt-get install unbound")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_udp_tcp_port()
    extra = "".join(
        f"  local-data: '{owner} 300 IN {rest}'\n"
        for owner, _, rest in (r.partition(" ") for r in BENCH_DATA)
    )
    text = config_text(directory, port)
    if not text.startswith("server:\n") or not set(BENCH_DATA).isdisjoint(LOCAL_DATA):
        raise RuntimeError("tests/support/unbound.py changed shape")
    (directory / "unbound.conf").write_text(text.replace("server:\n", "server:\n" + extra, 1))
    log = directory / "unbound.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [UNBOUND, "-d", "-c", str(directory / "unbound.conf")], stdout=out, stderr=out
        )
    try:
        if not wait_for_dns(port, proc, lifetime=0.2):
            raise RuntimeError("unbound did not start:\n" + log.read_text())
        yield Unbound(port, proc.pid)
    finally:
        stop_process(proc)


# --- processes -------------------------------------------------------------------------


def wait_listening(
    address: Path | tuple[str, int], proc: subprocess.Popen[bytes], log: Path, deadline: float
) -> None:
    """Poll until a unix socket or a loopback TCP port accepts connections; fail early
    when ``proc`` exits."""
    end = time.monotonic() + deadline
    while True:
        family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.connect(address if isinstance(address, tuple) else str(address))
                return
            except OSError:
                pass
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{address} not ready:\n{_tail(log)}")
        time.sleep(POLL)


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    except OSError:
        return "(no log)"


# --- rspamd in milter proxy mode, self-scan --------------------------------------------

#: Modules that reach out (DNS lists, URL/map downloads, fuzzy storage) or need Redis:
#: switched off, so a scan never waits on the network. What is left is rspamd's local
#: analysis (regexp and Lua rules, MIME, headers, composites): the least rspamd does.
#: The tests' list less the modules the proxy uses to act on mail it scanned itself.
RSPAMD_NETWORK_MODULES = tuple(
    m for m in RSPAMD_OFF if m not in ("milter_headers", "once_received")
)


@dataclass
class RspamdProxy:
    dir: Path
    port: int
    process: subprocess.Popen[bytes]
    startup: float
    hs_cache: Path | None
    seeded: set[str] = field(default_factory=set)

    @property
    def pids(self) -> list[int]:
        """The main process and its workers."""
        return process_tree(self.process.pid)

    def log(self) -> str:
        return _tail(self.dir / "log" / "rspamd.log")

    def stop(self) -> None:
        stop_process(self.process)
        # Keep compiled Hyperscan databases for the next run (cold start ~12 s).
        keep_hs_cache(self.dir, self.hs_cache, self.seeded)


def start_rspamd_proxy(
    directory: Path,
    *,
    dns_port: int,
    workers: int = 1,
    hs_cache: Path | None = None,
    deadline: float = 120.0,
) -> RspamdProxy:
    """rspamd (Debian package) with only its proxy worker, ``milter = yes`` and
    ``self_scan = yes`` (it scans the mail itself, no normal worker), on a free
    loopback port. Ready when it answers the milter option negotiation."""
    port = free_port()
    # The proxy as rspamd's quick-start guide sets it up for Postfix, on our port.
    proxy_inc = (
        f'bind_socket = "127.0.0.1:{port}";\n'
        "milter = yes;\n"
        "timeout = 120s;\n"
        f"count = {workers};\n"
        'upstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n'
        "max_retries = 5;\n"
        "discard_on_reject = false;\n"
        "quarantine_on_reject = false;\n"
        'spam_header = "X-Spam";\n'
        'reject_message = "Spam message rejected";\n'
    )
    argv, seeded = prepare_rspamd(
        directory,
        workers={"proxy": proxy_inc},
        nameserver=f"127.0.0.1:{dns_port}",
        dns_timeout="1s",
        off=RSPAMD_NETWORK_MODULES,
        hs_cache=hs_cache,
    )
    start = time.monotonic()
    with (directory / "rspamd.out").open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    proxy = RspamdProxy(directory, port, process, 0.0, hs_cache, seeded)
    _wait_milter_optneg(port, process, directory / "log" / "rspamd.log", deadline)
    proxy.startup = time.monotonic() - start
    return proxy


def _wait_milter_optneg(
    port: int, process: subprocess.Popen[bytes], log: Path, deadline: float
) -> None:
    """Poll until a milter on ``port`` answers SMFIC_OPTNEG (its workers are up)."""
    end = time.monotonic() + deadline
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"rspamd exited with {process.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(optneg_packet())
                cmd, _ = read_packet(s.makefile("rb"))
                if cmd == b"O":
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            stop_process(process)
            raise RuntimeError(f"rspamd proxy not ready after {deadline} s:\n{_tail(log)}")
        time.sleep(POLL)


def sum_cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            total += cpu_seconds(pid)
    return total
