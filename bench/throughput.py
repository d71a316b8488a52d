"""Throughput of Postfix with smtpguard, against no milter, a null milter and rspamd.

One command, one run, everything on loopback in private directories:

    .venv/bin/python -m bench.throughput            # full run, ~6-10 min on 2 cores
    .venv/bin/python -m bench.throughput --quick    # smoke run, ~1.5 min

It starts unbound (the test zones of tests/support/unbound.py plus a bench sender
domain), the real ``smtpguard run`` on a unix socket with the shipped default policy
(conf/smtpguard.toml) and every check that needs no outside service enabled, the null
pymilter milter (bench/null_milter.py), rspamd's milter proxy in self-scan mode, and
four Postfix instances delivering to ``discard`` that differ only in ``smtpd_milters``:

    (a) no milter   (b) null pymilter   (c) smtpguard   (d) rspamd proxy

Then, with ``smtp-source`` as the load, one message per session and then many messages
per session (``-d``), it runs the configurations interleaved (rotating their order),
``--repeat`` times each, waiting for each queue to drain between runs. It reports msg/s
(median, min-max), the ratios c/a, c/b, c/d, CPU seconds per message of the milter
process (/proc/PID/stat utime+stime) and its peak RSS (VmHWM).

It also drives the null milter and smtpguard directly over the milter protocol (no
Postfix; bench/milter_load.py) at 1, 10 and 50 concurrent sessions: sessions/s and
p50/p99 latency, and the RSS of each with 200 sessions held open.

``--workers 1,2`` (the default) runs one smtpguard per worker count (``[milter]
workers``), each with its own Postfix instance, in the same interleaved rotation:
``(c)`` is one process, ``(c2)`` two workers behind one socket. CPU and RSS of a
multi-worker smtpguard are those of the supervisor and all its workers together.

``--python PATH`` runs the milters (the null milter and every smtpguard) under another
interpreter, e.g. the venv scripts/start.sh makes on Debian's /usr/bin/python3 (built
with profile-guided optimization, unlike a plain source build): the figures of the
interpreter smtpguard is deployed on. It must import ``Milter`` and ``smtpguard``; the
run prints which smtpguard it found.

Results are printed and written as JSON (``--json``, default
/tmp/smtpguard-bench/throughput.json). A benchmark, not a test: it never fails because
the machine is slow; targets are printed as met/missed (``--check`` makes a miss exit 1).
``--profile`` runs a second smtpguard under cProfile (bench/profiled_smtpguard.py)
through one more Postfix run and one direct run, and prints where its CPU time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from bench.milter_load import Identity, LoadResult, SessionScript, drive, hold_open, release
from bench.postfix_bench import (
    BenchPostfix,
    Load,
    RspamdProxy,
    loadavg,
    machine_busy,
    process_tree,
    smtp_source,
    start_postfix,
    start_rspamd_proxy,
    status_kib,
    sum_cpu,
    threads,
    unbound,
    wait_listening,
)
from smtpguard.config import read_toml
from tests.support.daemons import stop_process
from tests.support.postfix import free_port
from tests.support.unbound import DNSBL_ZONES

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

CONFIGS = ("none", "null", "smtpguard", "rspamd")
#: Not in the default run: smtpguard on an inet: socket (compare with --loop-marker).
EXTRA_CONFIGS = ("smtpguard_inet",)
INET_RATIO = "c'/c"
LABELS = {
    "none": "(a) no milter",
    "null": "(b) null pymilter",
    "smtpguard": "(c) smtpguard",
    "rspamd": "(d) rspamd proxy",
    "smtpguard_inet": "(c') smtpguard inet",
}
#: Targets for a 2-core machine (bench/README.md, "Targets, and why the missed ones are
#: missed").
TARGET_C_B = 0.90
TARGET_C_D = 2.0
TARGET_DIRECT_RATIO = 0.8
TARGET_DIRECT_P99_MS = 20.0
TARGET_RSS_MB = 80.0
#: Issue 17: with two workers, direct protocol at 10 sessions >= 0.7x the null milter;
#: the whole service (supervisor and workers) with 200 sessions open <= 120 MB; CPU per
#: session at 10 concurrent sessions <= 1.1x the CPU per session at one session.
TARGET_WORKERS_DIRECT_RATIO = 0.7
TARGET_WORKERS_RSS_MB = 120.0
TARGET_CPU_CONTENTION = 1.1
HOLD_SESSIONS = 200
DEFAULT_JSON = Path("/tmp/smtpguard-bench/throughput.json")
HS_CACHE = Path("/tmp/smtpguard-bench/rspamd-hs-cache")

#: What Postfix's smtp-source sends in every configuration: HELO mx.good.test (it
#: resolves), a sender domain with MX and an SPF record that passes the loopback
#: client, a recipient the directory knows.
SENDER = "bench@sender.bench.test"
RECIPIENT = "alice@example.com"
HELO = "mx.good.test"


# --- the milters ---------------------------------------------------------------------


def smtpguard_name(workers: int) -> str:
    """The configuration name of smtpguard with ``workers`` worker processes."""
    return "smtpguard" if workers == 1 else f"smtpguard_w{workers}"


def is_smtpguard(config: str) -> bool:
    return config.startswith("smtpguard")


def family_kib(pid: int, key: str) -> int:
    return sum(status_kib(p, key) for p in process_tree(pid))


def family_pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` and its workers: pages shared by N of them count
    1/N in each, so the sum is the memory the service really holds (RSS counts the
    pages a worker inherited from the supervisor once per process)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


def smtpguard_config(
    directory: Path,
    dns_port: int,
    *,
    inet_port: int | None = None,
    loop_marker: bool = False,
    workers: int = 1,
    cpu_affinity: str | list[int] = "auto",
) -> Path:
    """conf/smtpguard.toml as shipped, with what a private instance needs and every
    check that needs no outside service switched on:

    * the socket in ``directory``, group ``postfix`` (Postfix's smtpd connects), or
      ``inet:PORT@127.0.0.1`` for the optional ``smtpguard_inet`` configuration;
    * with ``loop_marker``, ``content.add_loop_marker = true`` (off by default): one
      header added to every accepted message, a second packet at end of message;
    * ``trusted_networks`` without 127.0.0.0/8: smtp-source can only connect from
      127.0.0.1, and a trusted client skips most checks; here it gets all of them;
    * ``[dns]`` on the local unbound, a DNSBL zone of each kind (rbl.test,
      relays.test: the client is not listed), and ``helo_dns`` on (it is off by
      default); smtpport (PTR + FCrDNS + generic names), sender_domain and spf are on
      by default once there is a resolver;
    * ``[bulk] threshold`` raised to 1 000 000: smtp-source sends thousands of
      identical messages from one client and sender, which is exactly what the
      same-size check refuses after 20; the check still counts every message;
    * the directory imported from conf/directory.example.toml (alice@example.com);
    * ``[milter] workers`` and ``cpu_affinity`` as given (the shipped defaults: the CPU
      count, and "auto": each of several workers bound to one CPU).

    The content checks, the built-in anti-spam rules and the in-process same-size
    counter are on by default; the virus scanner and the rspamd engine need an outside
    service and stay at their default (off).
    """
    data = read_toml(ROOT / "conf" / "smtpguard.toml")
    if inet_port is None:
        data["milter"].update(
            socket=f"unix:{directory / 'smtpguard.sock'}",
            socket_group="postfix",
            socket_mode="0660",
        )
    else:
        data["milter"]["socket"] = f"inet:{inet_port}@127.0.0.1"
    if loop_marker:
        data.setdefault("content", {})["add_loop_marker"] = True
    data["milter"]["workers"] = workers
    data["milter"]["cpu_affinity"] = cpu_affinity
    # The sample drops privileges to the user scripts/start.sh creates; the bench runs
    # the service as whoever runs the bench.
    data["milter"]["user"] = ""
    data = _absolute_paths(data, ROOT / "conf")
    data["site"]["trusted_networks"] = ["192.0.2.0/24"]
    data["directory"]["path"] = str(directory / "directory.sqlite")
    data["state"]["path"] = str(directory / "state.sqlite")
    data["dns"].update(nameservers=["127.0.0.1"], port=dns_port)
    data.setdefault("checks", {})["helo_dns"] = {"mode": "enforce"}
    data.setdefault("bulk", {})["threshold"] = 1_000_000
    data.setdefault("dnsbl", {})["zones"] = DNSBL_ZONES
    config = directory / "smtpguard.toml"
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    subprocess.run(
        [
            *(sys.executable, "-m", "smtpguard", "-c", str(config)),
            *("directory", "import", str(ROOT / "conf" / "directory.example.toml")),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return config


def _absolute_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """The shipped config's relative paths ("../rules/...") made absolute: the copy
    lives elsewhere."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out[key] = _absolute_paths(value, base)
        elif isinstance(value, str) and value.startswith(("../", "./")):
            out[key] = str((base / value).resolve())
        else:
            out[key] = value
    return out


@contextlib.contextmanager
def milter_process(
    argv: list[str],
    address: Path | tuple[str, int],
    log: Path,
    deadline: float = 30.0,
    stop_timeout: float = 15.0,
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(address, proc, log, deadline)
        yield proc
    finally:
        # libmilter notices SIGTERM at its next listener poll (up to ~5 s).
        stop_process(proc, timeout=stop_timeout)


# --- measurements --------------------------------------------------------------------


@dataclass
class Run:
    config: str
    mode: str
    repetition: int
    messages: int
    seconds: float
    cpu: float | None
    machine_cores_busy: float
    drain_seconds: float
    #: CPU of the Postfix instance (every process of it) from the start of the run
    #: until its queue was empty again.
    mta_cpu: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


@dataclass
class Setup:
    postfix: dict[str, BenchPostfix]
    pids: dict[str, list[int]] = field(default_factory=dict)
    rspamd: RspamdProxy | None = None

    def milter_pids(self, config: str) -> list[int]:
        if config == "rspamd" and self.rspamd is not None:
            return self.rspamd.pids
        if is_smtpguard(config) and config in self.pids:
            # Read at each measurement: a worker may have been replaced meanwhile.
            return process_tree(self.pids[config][0])
        return self.pids.get(config, [])


def measure_postfix(setup: Setup, config: str, mode: str, load: Load, repetition: int) -> Run:
    instance = setup.postfix[config]
    pids = setup.milter_pids(config)
    cpu0 = sum_cpu(pids) if pids else None
    mta0 = instance.cpu_seconds()
    busy0, total0 = machine_busy()
    seconds = smtp_source(load, instance.port)
    busy1, total1 = machine_busy()
    cpu = sum_cpu(pids) - cpu0 if cpu0 is not None else None
    drain = instance.wait_empty()
    mta = instance.cpu_seconds() - mta0
    cores = (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1.0)
    return Run(config, mode, repetition, load.messages, seconds, cpu, cores, drain, mta)


def peak_rss_mb(setup: Setup, config: str) -> float | None:
    pids = setup.milter_pids(config)
    if not pids:
        return None
    # rspamd: the largest of its processes (the proxy worker does the scanning).
    return max(status_kib(p, "VmHWM") for p in pids) / 1024


@dataclass
class DirectPoint:
    milter: str
    concurrency: int
    repetition: int
    result: LoadResult
    cpu: float


def measure_direct(
    pid: int, address: str, script: SessionScript, concurrency: int, seconds: float
) -> tuple[LoadResult, float]:
    pids = process_tree(pid)
    cpu0 = sum_cpu(pids)
    result = drive(script, address, concurrency, seconds)
    return result, sum_cpu(pids) - cpu0


def held_rss(pid: int, address: str, script: SessionScript, count: int) -> dict[str, float]:
    """RSS of the process and its workers, summed (shared pages count in each)."""
    before = family_kib(pid, "VmRSS") / 1024
    held = hold_open(script, address, count)
    try:
        time.sleep(0.5)  # let the last callbacks return
        during = family_kib(pid, "VmRSS") / 1024
        pss = family_pss_kib(pid) / 1024
        nthreads = sum(threads(p) for p in process_tree(pid))
    finally:
        release(script, held)
    return {
        "rss_before_mb": before,
        "rss_mb": during,
        "pss_mb": pss,
        "threads": nthreads,
        "sessions": count,
    }


# --- profiling -----------------------------------------------------------------------


def summarize_pstats(path: Path, top: int = 15) -> dict[str, Any]:
    """The functions with the most CPU time (own, and with callees) from the pstats
    file bench/profiled_smtpguard.py wrote; shares of the profiled total."""
    stats = pstats.Stats(str(path))
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    entries = stats.stats  # type: ignore[attr-defined]  # pstats keeps it untyped
    total = sum(tt for _cc, _nc, tt, _ct, _callers in entries.values()) or 1.0

    def label(key: tuple[str, int, str]) -> str:
        file, line, name = key
        parts = Path(file).parts
        if "smtpguard" in parts:
            parts = parts[len(parts) - 1 - parts[::-1].index("smtpguard") :]
        else:
            parts = parts[-1:]
        return f"{name} ({'/'.join(parts)}:{line})" if line else name

    def rows(index: int, only_ours: bool) -> list[tuple[str, float]]:
        items = sorted(entries.items(), key=lambda kv: kv[1][index], reverse=True)
        out = []
        for key, value in items:
            if only_ours and "smtpguard" not in Path(key[0]).parts:
                continue
            out.append((label(key), round(100 * value[index] / total, 1)))
            if len(out) == top:
                break
        return out

    return {
        "pstats": str(path),
        "cpu_seconds": round(total, 3),
        "own": rows(2, only_ours=False),
        "inclusive": rows(3, only_ours=True),
    }


# --- the run -------------------------------------------------------------------------


def median_rate(runs: Sequence[Run]) -> float:
    return statistics.median(r.rate for r in runs) if runs else float("nan")


def rotate(items: Sequence[str], by: int) -> list[str]:
    k = by % len(items)
    return list(items[k:]) + list(items[:k])


def profile_smtpguard(
    work: Path,
    dns_port: int,
    load: Load,
    args: argparse.Namespace,
    direct_seconds: float,
    script: SessionScript | None,
) -> dict[str, Any]:
    """A second smtpguard, under cProfile with a CPU clock per thread, through one
    Postfix run (its own instance) and one direct run at 10 sessions; not measured."""
    directory = work / "profiled"
    directory.mkdir()
    directory.chmod(0o755)
    config = smtpguard_config(directory, dns_port)
    out = args.json.parent / "smtpguard-cpu.pstats"
    out.parent.mkdir(parents=True, exist_ok=True)
    # An earlier run's file must not pass for this one's if this one writes none.
    out.unlink(missing_ok=True)
    sock = directory / "smtpguard.sock"
    profiler = [sys.executable, str(BENCH / "profiled_smtpguard.py"), "--cpu", str(out)]
    print("profiling smtpguard (cProfile, extra runs) ...", flush=True)
    # Merging a profile per libmilter thread (one per session) takes a while at exit.
    argv = [*profiler, "-c", str(config), "run"]
    with milter_process(argv, sock, directory / "log", stop_timeout=300.0):
        instance = start_postfix("profiled", config, f"unix:{sock}")
        try:
            smtp_source(load, instance.port)
            instance.wait_empty()
        finally:
            instance.stop()
        if script is not None:
            drive(script, str(sock), 10, direct_seconds)
    # The process has stopped: its profile is written.
    if not out.exists():
        print(f"no profile written; see {directory / 'log'}", flush=True)
        return {}
    return {"postfix_and_direct": summarize_pstats(out)}


def cpu_affinity(text: str) -> str | list[int]:
    """``--cpu-affinity``: "auto", "off" or comma-separated CPU numbers."""
    if text in ("auto", "off"):
        return text
    try:
        return [int(cpu) for cpu in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"auto, off or CPU numbers, not {text!r}") from None


def milter_interpreter(parser: argparse.ArgumentParser, python: str) -> str:
    """``python``'s version and the smtpguard it imports, printed; a parser error when
    it cannot run the milters."""
    try:
        probe = subprocess.run(
            [
                python,
                "-c",
                "import platform, Milter, smtpguard; "
                "print(platform.python_version(), smtpguard.__file__)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError as exc:
        parser.error(f"--python {python}: {exc.strerror}")
    if probe.returncode != 0:
        parser.error(
            f"--python {python}: cannot import Milter and smtpguard: {probe.stderr.strip()[-300:]}"
        )
    found = probe.stdout.strip()
    print(f"milters run on {python}: Python {found}", flush=True)
    return f"{python}: {found}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: -m 300, 1 repetition")
    p.add_argument("--repeat", type=int, help="runs of each configuration (default 3)")
    p.add_argument("-m", "--messages", type=int, help="messages per run (default 2000)")
    p.add_argument("-s", "--sessions", type=int, default=10, help="parallel SMTP sessions")
    p.add_argument("-l", "--size", type=int, default=1024, help="payload bytes per message")
    p.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help="comma-separated subset of none,null,smtpguard,rspamd"
        " (and smtpguard_inet: smtpguard on an inet: socket)",
    )
    p.add_argument("--modes", default="single,multi", help="single (1 msg/session), multi (-d)")
    p.add_argument("--direct-seconds", type=float, help="seconds per direct point (2)")
    p.add_argument("--concurrency", default="1,10,50", help="direct protocol concurrencies")
    p.add_argument("--no-direct", action="store_true", help="skip the direct protocol part")
    p.add_argument(
        "--loop-marker",
        action="store_true",
        help="smtpguard adds its loop-marker header to every message (default: off)",
    )
    p.add_argument("--rspamd-workers", type=int, default=1, help="proxy worker count")
    p.add_argument(
        "--workers",
        default="1,2",
        help="smtpguard worker counts to compare ([milter] workers), e.g. 1,2,4",
    )
    p.add_argument(
        "--cpu-affinity",
        type=cpu_affinity,
        default="auto",
        help="[milter] cpu_affinity of the smtpguard instances: auto (as shipped), off, or"
        " CPU numbers such as 1 or 0,1",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs the milters (default: this one); it must import"
        " Milter and smtpguard",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument("--profile", action="store_true", help="cProfile smtpguard (extra runs)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()

    repeat = args.repeat or (1 if args.quick else 3)
    messages = args.messages or (300 if args.quick else 2000)
    direct_seconds = args.direct_seconds or (1.0 if args.quick else 2.0)
    configs = [c for c in args.configs.split(",") if c]
    modes = [m for m in args.modes.split(",") if m]
    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    unknown = set(configs) - {*CONFIGS, *EXTRA_CONFIGS} | set(modes) - {"single", "multi"}
    if unknown:
        p.error(f"unknown configuration or mode: {', '.join(sorted(unknown))}")
    worker_counts = sorted({int(w) for w in args.workers.split(",") if w})
    if not worker_counts or worker_counts[0] < 1:
        p.error("--workers: worker counts of 1 or more")
    guards = [smtpguard_name(n) for n in worker_counts]
    for n in worker_counts:
        LABELS.setdefault(smtpguard_name(n), f"(c{n}) smtpguard x{n}")
    if "smtpguard" in configs:
        at = configs.index("smtpguard")
        configs[at : at + 1] = guards
    direct_milters = ["null", *guards]

    milter_python = milter_interpreter(p, args.python)
    load_before = loadavg()
    if load_before > 0.5:
        print(f"note: load average {load_before:.2f}: the machine is not idle", flush=True)

    loads = {
        mode: Load(
            sessions=args.sessions,
            messages=messages,
            size=args.size,
            reuse=mode == "multi",
            sender=SENDER,
            recipient=RECIPIENT,
            helo=HELO,
        )
        for mode in modes
    }
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "milter_python": milter_python,
            "kernel": platform.release(),
            "loadavg_before": load_before,
        },
        "parameters": {
            "repeat": repeat,
            "messages": messages,
            "sessions": args.sessions,
            "size": args.size,
            "modes": modes,
            "configs": configs,
            "direct_seconds": direct_seconds,
            "concurrency": concurrencies,
            "rspamd_workers": args.rspamd_workers,
            "smtpguard_workers": worker_counts,
            "cpu_affinity": args.cpu_affinity,
            "direct_milters": direct_milters,
        },
    }
    work = Path(tempfile.mkdtemp(prefix="smtpguard-throughput-"))
    work.chmod(0o755)  # Postfix's smtpd (user postfix) must reach the sockets
    runs: list[Run] = []
    direct: list[DirectPoint] = []
    held: dict[str, dict[str, float]] = {}
    profiles: dict[str, Any] = {}
    failures: list[str] = []
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            print("starting unbound, milters and Postfix instances ...", flush=True)
            dns = stack.enter_context(unbound(work / "unbound"))
            setup = Setup(postfix={})
            sockets: dict[str, Path] = {}
            sg_dirs: dict[str, Path] = {}
            sg_configs: dict[str, Path] = {}
            for n in worker_counts:
                name = smtpguard_name(n)
                sg_dirs[name] = work / name
                sg_dirs[name].mkdir()
                sg_dirs[name].chmod(0o755)
                sg_configs[name] = smtpguard_config(
                    sg_dirs[name],
                    dns.port,
                    loop_marker=args.loop_marker,
                    workers=n,
                    cpu_affinity=args.cpu_affinity,
                )
            sg_dir, sg_config = sg_dirs[guards[0]], sg_configs[guards[0]]
            results["smtpguard_config"] = sg_config.read_text()
            results["smtp_source"] = {
                mode: " ".join(load.argv(0)[:-1]) for mode, load in loads.items()
            }
            for name in guards:
                if name not in configs and args.no_direct:
                    continue
                sockets[name] = sg_dirs[name] / "smtpguard.sock"
                proc = stack.enter_context(
                    milter_process(
                        [args.python, "-m", "smtpguard", "-c", str(sg_configs[name]), "run"],
                        sockets[name],
                        sg_dirs[name] / "service.log",
                    )
                )
                setup.pids[name] = [proc.pid]
            inet_port: int | None = None
            if "smtpguard_inet" in configs:
                inet_dir = work / "smtpguard-inet"
                inet_dir.mkdir()
                inet_port = free_port()
                inet_config = smtpguard_config(
                    inet_dir, dns.port, inet_port=inet_port, loop_marker=args.loop_marker
                )
                proc = stack.enter_context(
                    milter_process(
                        [args.python, "-m", "smtpguard", "-c", str(inet_config), "run"],
                        ("127.0.0.1", inet_port),
                        inet_dir / "service.log",
                    )
                )
                setup.pids["smtpguard_inet"] = [proc.pid]
            if "null" in configs or not args.no_direct:
                sockets["null"] = work / "null.sock"
                proc = stack.enter_context(
                    milter_process(
                        [args.python, str(BENCH / "null_milter.py"), f"unix:{sockets['null']}"],
                        sockets["null"],
                        work / "null.log",
                    )
                )
                setup.pids["null"] = [proc.pid]
            if "rspamd" in configs:
                t0 = time.monotonic()
                setup.rspamd = start_rspamd_proxy(
                    work / "rspamd",
                    dns_port=dns.port,
                    workers=args.rspamd_workers,
                    hs_cache=HS_CACHE,
                )
                stack.callback(setup.rspamd.stop)
                print(f"rspamd proxy ready in {time.monotonic() - t0:.1f} s", flush=True)
            milter_line = {
                "none": None,
                "null": f"unix:{sockets.get('null')}",
                **{name: f"unix:{sockets.get(name)}" for name in guards},
                "rspamd": f"inet:127.0.0.1:{setup.rspamd.port}" if setup.rspamd else None,
                "smtpguard_inet": f"inet:127.0.0.1:{inet_port}",
            }
            for config in configs:
                instance = start_postfix(config, sg_config, milter_line[config])
                stack.callback(instance.stop)
                setup.postfix[config] = instance

            # Warm-up: smtpd processes, rspamd's first scans, smtpguard's DNS cache
            # (the first pass asks unbound, later ones are answered from the cache).
            warm = min(200, messages)
            for config in configs:
                for mode in modes:
                    smtp_source(loads[mode], setup.postfix[config].port, warm)
                setup.postfix[config].wait_empty()
            print(f"ready after {time.monotonic() - started:.0f} s; measuring", flush=True)

            for rep in range(repeat):
                for mode in modes:
                    for config in rotate(configs, rep + modes.index(mode)):
                        try:
                            run = measure_postfix(setup, config, mode, loads[mode], rep)
                        except RuntimeError as exc:
                            # e.g. smtp-source got a reject or tempfail: keep going.
                            failures.append(f"rep {rep + 1} {mode} {config}: {exc}")
                            print(f"  FAILED: {failures[-1]}", flush=True)
                            setup.postfix[config].wait_empty()
                            continue
                        runs.append(run)
                        cpu_text = f"{1000 * run.cpu / run.messages:.2f} ms/msg" if run.cpu else "-"
                        print(
                            f"  rep {rep + 1} {mode:6} {LABELS[config]:18} {run.rate:7.1f} msg/s"
                            f"  milter cpu {cpu_text:>14}"
                            f"  postfix cpu {1000 * run.mta_cpu / run.messages:.2f} ms/msg"
                            f"  machine {run.machine_cores_busy:.2f} cores busy",
                            flush=True,
                        )
            peak = {c: peak_rss_mb(setup, c) for c in configs}

            script = SessionScript(Identity(body_size=args.size))
            if not args.no_direct:
                # Warm-up (threads, imports, DNS cache for this client identity).
                for milter in direct_milters:
                    drive(script, str(sockets[milter]), 10, min(direct_seconds, 1.0))
                for rep in range(repeat):
                    for conc in concurrencies:
                        for milter in rotate(direct_milters, rep + conc):
                            pid = setup.pids[milter][0]
                            result, cpu = measure_direct(
                                pid, str(sockets[milter]), script, conc, direct_seconds
                            )
                            direct.append(DirectPoint(milter, conc, rep, result, cpu))
                            print(
                                f"  rep {rep + 1} direct c={conc:<3d} {milter:12}"
                                f" {result.rate:7.1f} sessions/s"
                                f"  p50 {1000 * result.percentile(50):6.2f} ms"
                                f"  p99 {1000 * result.percentile(99):6.2f} ms"
                                + (f"  errors {result.errors}" if result.errors else ""),
                                flush=True,
                            )
                for milter in direct_milters:
                    held[milter] = held_rss(
                        setup.pids[milter][0], str(sockets[milter]), script, HOLD_SESSIONS
                    )
                    print(
                        f"  {milter}: {HOLD_SESSIONS} sessions open:"
                        f" RSS {held[milter]['rss_mb']:.1f} MB"
                        f" ({held[milter]['threads']:.0f} threads)",
                        flush=True,
                    )

            if args.profile:
                profiles = profile_smtpguard(
                    work,
                    dns.port,
                    loads[modes[0]],
                    args,
                    direct_seconds,
                    None if args.no_direct else script,
                )

            sg_log = sg_dir / "service.log"
            if sg_log.exists():  # smtpguard ran (not with --configs without it)
                log_text = sg_log.read_text(errors="replace")
                results["smtpguard_log"] = {
                    "lines": len(log_text.splitlines()),
                    "decisions": log_text.count("decision "),
                    "tracebacks": log_text.count("Traceback"),
                    "tail": log_text.splitlines()[-5:],
                }
            results["postfix_milter_rejects"] = {
                c: inst.maillog().count("milter-reject") for c, inst in setup.postfix.items()
            }
            if setup.rspamd is not None:
                results["rspamd_startup_seconds"] = round(setup.rspamd.startup, 1)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    results["seconds"] = round(time.monotonic() - started, 1)
    results["failures"] = failures
    summary = report(results, runs, direct, peak, held, profiles, configs, modes, concurrencies)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    for failure in failures:
        print(f"FAILED: {failure}")
    print(f"\nJSON: {args.json}  ({results['seconds']:.0f} s in all)")
    return 1 if args.check and (summary["missed"] or failures) else 0


# --- the report ----------------------------------------------------------------------


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def report(
    results: dict[str, Any],
    runs: list[Run],
    direct: list[DirectPoint],
    peak: dict[str, float | None],
    held: dict[str, dict[str, float]],
    profiles: dict[str, Any],
    configs: list[str],
    modes: list[str],
    concurrencies: list[int],
) -> dict[str, Any]:
    params = results["parameters"]
    missed: list[str] = []
    out_postfix: dict[str, Any] = {}
    print(
        f"\n== Postfix + smtp-source -s {params['sessions']} -m {params['messages']}"
        f" -l {params['size']}, {params['repeat']} run(s) each, interleaved =="
    )
    for mode in modes:
        title = (
            "one message per session"
            if mode == "single"
            else f"-d: {params['messages'] // params['sessions']} messages per session"
        )
        print(f"\n{mode}: {title}")
        print(
            f"  {'configuration':20} {'msg/s median':>12} {'min-max':>15} {'vs (a)':>7}"
            f" {'milter CPU/msg':>15} {'Postfix CPU/msg':>16} {'peak RSS':>9} {'machine':>8}"
        )
        by_config: dict[str, Any] = {}
        base = median_rate([r for r in runs if r.mode == mode and r.config == "none"])
        for config in configs:
            mine = [r for r in runs if r.mode == mode and r.config == config]
            if not mine:
                continue
            rates = [r.rate for r in mine]
            cpus = [r.cpu / r.messages for r in mine if r.cpu is not None]
            cpu_ms = 1000 * statistics.median(cpus) if cpus else None
            mta_ms = 1000 * statistics.median(r.mta_cpu / r.messages for r in mine)
            med = statistics.median(rates)
            rss = peak.get(config)
            busy = statistics.median(r.machine_cores_busy for r in mine)
            by_config[config] = {
                "label": LABELS[config],
                "msg_per_s_median": round(med, 1),
                "msg_per_s_min": round(min(rates), 1),
                "msg_per_s_max": round(max(rates), 1),
                "msg_per_s_runs": [round(x, 1) for x in rates],
                "vs_no_milter": round(med / base, 3) if base == base else None,
                "milter_cpu_seconds_per_message": round(cpu_ms / 1000, 6) if cpu_ms else None,
                "postfix_cpu_seconds_per_message": round(mta_ms / 1000, 6),
                "milter_peak_rss_mb": round(rss, 1) if rss is not None else None,
                "machine_cores_busy": round(busy, 2),
                "drain_seconds": [round(r.drain_seconds, 2) for r in mine],
            }
            print(
                f"  {LABELS[config]:20} {med:12.1f} {min(rates):7.1f}-{max(rates):<7.1f}"
                f" {_fmt_ratio(med / base if base == base else None):>7}"
                f" {(f'{cpu_ms:.3f} ms' if cpu_ms else '-'):>15} {f'{mta_ms:.3f} ms':>16}"
                f" {(f'{rss:.1f} MB' if rss is not None else '-'):>9} {busy:8.2f}"
            )
        ratios: dict[str, float | None] = {}
        c = by_config.get("smtpguard", {}).get("msg_per_s_median")
        for other, key in (("none", "c/a"), ("null", "c/b"), ("rspamd", "c/d")):
            o = by_config.get(other, {}).get("msg_per_s_median")
            ratios[key] = round(c / o, 3) if c and o else None
        inet = by_config.get("smtpguard_inet", {}).get("msg_per_s_median")
        if inet and c:
            ratios[INET_RATIO] = round(inet / c, 3)
        b = by_config.get("null", {}).get("msg_per_s_median")
        for n in params.get("smtpguard_workers", []):
            cn = by_config.get(f"smtpguard_w{n}", {}).get("msg_per_s_median")
            if n > 1 and cn:
                ratios[f"c{n}/b"] = round(cn / b, 3) if b else None
                ratios[f"c{n}/c"] = round(cn / c, 3) if c else None
        ok_cb = None if ratios["c/b"] is None else ratios["c/b"] >= TARGET_C_B
        ok_cd = None if ratios["c/d"] is None else ratios["c/d"] >= TARGET_C_D
        missed += [f"{mode} c/b"] if ok_cb is False else []
        missed += [f"{mode} c/d"] if ok_cd is False else []
        print(
            f"  c/a {_fmt_ratio(ratios['c/a'])}   c/b {_fmt_ratio(ratios['c/b'])}"
            f" (target >= {TARGET_C_B}: {_verdict(ok_cb)})   c/d {_fmt_ratio(ratios['c/d'])}"
            f" (target >= {TARGET_C_D}: {_verdict(ok_cd)})"
            + (f"   inet/unix {_fmt_ratio(ratios.get(INET_RATIO))}" if INET_RATIO in ratios else "")
        )
        extra = [
            f"{k} {_fmt_ratio(v)}"
            for k, v in ratios.items()
            if k.startswith("c") and k[1:2].isdigit()
        ]
        if extra:
            print("  workers: " + "   ".join(extra) + f" (c{{n}}/b target >= {TARGET_C_B})")
        out_postfix[mode] = {"configs": by_config, "ratios": ratios}
    results["postfix"] = out_postfix
    results["postfix_runs"] = [
        {
            "config": r.config,
            "mode": r.mode,
            "repetition": r.repetition,
            "messages": r.messages,
            "seconds": round(r.seconds, 3),
            "msg_per_s": round(r.rate, 1),
            "milter_cpu_seconds": round(r.cpu, 3) if r.cpu is not None else None,
            "machine_cores_busy": round(r.machine_cores_busy, 2),
        }
        for r in runs
    ]

    out_direct: dict[str, Any] = {}
    if direct:
        milters = params.get("direct_milters", ["null", "smtpguard"])
        print("\n== Direct milter protocol (no Postfix), unix socket ==")
        print(
            f"  {'sessions':>8} {'milter':12} {'sessions/s median':>17} {'min-max':>15}"
            f" {'p50 ms':>7} {'p99 ms':>7} {'CPU/session':>12} {'vs null':>8}"
        )
        for conc in concurrencies:
            row: dict[str, Any] = {}
            for milter in milters:
                points = [d for d in direct if d.milter == milter and d.concurrency == conc]
                if not points:
                    continue
                rates = [d.result.rate for d in points]
                pooled = LoadResult(conc, 0, 0.0, [x for d in points for x in d.result.latencies])
                n = sum(d.result.sessions for d in points)
                cpu = sum(d.cpu for d in points) / n if n else float("nan")
                row[milter] = {
                    "sessions_per_s_median": round(statistics.median(rates), 1),
                    "sessions_per_s_min": round(min(rates), 1),
                    "sessions_per_s_max": round(max(rates), 1),
                    "p50_ms": round(1000 * pooled.percentile(50), 2),
                    "p99_ms": round(1000 * pooled.percentile(99), 2),
                    "cpu_seconds_per_session": round(cpu, 6),
                    "sessions": n,
                    "errors": sum(d.result.errors for d in points),
                    "first_error": next(
                        (d.result.first_error for d in points if d.result.errors), ""
                    ),
                }
            for milter in milters:
                if milter != "null" and "null" in row and milter in row:
                    row[milter]["vs_null"] = round(
                        row[milter]["sessions_per_s_median"] / row["null"]["sessions_per_s_median"],
                        3,
                    )
            if "smtpguard" in row and "vs_null" in row["smtpguard"]:
                row["ratio"] = row["smtpguard"]["vs_null"]
            for milter in milters:
                if milter not in row:
                    continue
                r = row[milter]
                vs = f"{r['vs_null']:.2f}" if "vs_null" in r else ""
                print(
                    f"  {conc:8d} {milter:12} {r['sessions_per_s_median']:17.1f}"
                    f" {r['sessions_per_s_min']:7.1f}-{r['sessions_per_s_max']:<7.1f}"
                    f" {r['p50_ms']:7.2f} {r['p99_ms']:7.2f}"
                    f" {1000 * r['cpu_seconds_per_session']:9.3f} ms {vs:>8}"
                    + (f"  ERRORS {r['errors']}: {r['first_error']}" if r["errors"] else "")
                )
            out_direct[str(conc)] = row
        ten = out_direct.get("10", {})
        ok_ratio = ten["ratio"] >= TARGET_DIRECT_RATIO if "ratio" in ten else None
        ok_p99 = ten["smtpguard"]["p99_ms"] <= TARGET_DIRECT_P99_MS if "smtpguard" in ten else None
        missed += ["direct ratio"] if ok_ratio is False else []
        missed += ["direct p99"] if ok_p99 is False else []
        print(
            f"  at 10 sessions: smtpguard/null {_fmt_ratio(ten.get('ratio'))}"
            f" (target >= {TARGET_DIRECT_RATIO}: {_verdict(ok_ratio)}),"
            f" smtpguard p99 {ten.get('smtpguard', {}).get('p99_ms', '-')} ms"
            f" (target <= {TARGET_DIRECT_P99_MS:.0f} ms: {_verdict(ok_p99)})"
        )
        one = out_direct.get("1", {})
        for milter in milters:
            if milter == "null":
                continue
            if milter.startswith("smtpguard_w") and milter in ten:
                w = ten[milter]
                ok_w = w.get("vs_null", 0) >= TARGET_WORKERS_DIRECT_RATIO
                ok_wp = w["p99_ms"] <= 15.0
                missed += [f"direct {milter} ratio"] if not ok_w else []
                missed += [f"direct {milter} p99"] if not ok_wp else []
                print(
                    f"  {milter} at 10 sessions: vs null {_fmt_ratio(w.get('vs_null'))}"
                    f" (target >= {TARGET_WORKERS_DIRECT_RATIO}: {_verdict(ok_w)}),"
                    f" p99 {w['p99_ms']} ms (target <= 15 ms: {_verdict(ok_wp)})"
                )
            if milter in ten and milter in one:
                contention = (
                    ten[milter]["cpu_seconds_per_session"] / one[milter]["cpu_seconds_per_session"]
                )
                ten[milter]["cpu_contention"] = round(contention, 3)
                ok_c = contention <= TARGET_CPU_CONTENTION
                missed += [f"{milter} cpu contention"] if not ok_c else []
                print(
                    f"  {milter}: CPU/session at 10 sessions / at 1: {contention:.2f}x"
                    f" (target <= {TARGET_CPU_CONTENTION}: {_verdict(ok_c)})"
                )
    results["direct"] = out_direct

    if held:
        parts = [
            f"{m} {h['rss_mb']:.1f} MB (PSS {h['pss_mb']:.1f} MB; idle {h['rss_before_mb']:.1f}"
            f" MB, {h['threads']:.0f} threads)"
            for m, h in held.items()
        ]
        print(f"\nRSS with {HOLD_SESSIONS} sessions open (to MAIL FROM): " + "; ".join(parts))
        sg = held.get("smtpguard")
        ok_rss = sg["rss_mb"] <= TARGET_RSS_MB if sg else None
        missed += ["rss"] if ok_rss is False else []
        print(f"  smtpguard target <= {TARGET_RSS_MB:.0f} MB: {_verdict(ok_rss)}")
        sg2 = held.get("smtpguard_w2")
        if sg2:
            # Summed RSS counts the pages the workers share with the supervisor three
            # times; PSS counts them once.
            ok_rss2 = sg2["pss_mb"] <= TARGET_WORKERS_RSS_MB
            missed += ["memory smtpguard_w2"] if not ok_rss2 else []
            print(
                f"  smtpguard_w2 (supervisor + 2 workers): PSS {sg2['pss_mb']:.1f} MB,"
                f" RSS summed {sg2['rss_mb']:.1f} MB; target <= {TARGET_WORKERS_RSS_MB:.0f} MB"
                f" (PSS): {_verdict(ok_rss2)}"
            )
    results["held_sessions"] = held

    for name, prof in profiles.items():
        print(
            f"\n== cProfile of smtpguard ({name}): {prof['cpu_seconds']} s CPU,"
            f" profiler overhead included; {prof['pstats']} =="
        )
        print("  own time (share of all profiled CPU):")
        for frame, pct in prof["own"]:
            print(f"    {pct:5.1f}%  {frame}")
        print("  with callees, smtpguard functions:")
        for frame, pct in prof["inclusive"]:
            print(f"    {pct:5.1f}%  {frame}")
    results["profiles"] = profiles
    results["targets"] = {
        "c/b": TARGET_C_B,
        "c/d": TARGET_C_D,
        "direct_10_ratio": TARGET_DIRECT_RATIO,
        "direct_10_p99_ms": TARGET_DIRECT_P99_MS,
        "rss_200_sessions_mb": TARGET_RSS_MB,
        "workers_direct_10_ratio": TARGET_WORKERS_DIRECT_RATIO,
        "workers_rss_200_sessions_mb": TARGET_WORKERS_RSS_MB,
        "cpu_contention": TARGET_CPU_CONTENTION,
        "missed": missed,
    }
    print(
        "\ntargets: "
        + ("none missed (of those measured)" if not missed else "missed: " + ", ".join(missed))
    )
    return {"missed": missed}


if __name__ == "__main__":
    sys.exit(main())
