"""Where a milter process's CPU goes through Postfix: the kernel, the interpreter, libc,
libmilter, per message.

bench/throughput.py gives each milter's CPU per message as one number; this splits it.
For the null pymilter milter (bench/null_milter.py) and smtpguard with two workers,
each behind its own Postfix (bench/postfix_bench.py, the same load as throughput.py's
"single" mode), it runs ``perf record`` (software CPU clock, ``--frequency`` Hz) on the
milter's processes for exactly one smtp-source run of ``--messages`` messages, then
prints the samples per shared object as milliseconds of CPU per message, and the
difference. Samples of the kernel land mostly in the scheduler (``finish_task_switch``)
and where interrupts are enabled again; a single-threaded loop carrying the same
checks shows the same kernel time (bench/README.md, round 5), so it is not the GIL
hand-overs between libmilter's session threads.

    .venv/bin/python -m bench.perf_split [--messages 4000] [--frequency 2000]

Needs ``perf`` (Debian's linux-perf) and root or ``kernel.perf_event_paranoid`` <= 1.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.postfix_bench import Load, process_tree, smtp_source, start_postfix, unbound
from bench.throughput import BENCH, HELO, RECIPIENT, SENDER, milter_process, smtpguard_config

SPLIT = ("[kernel.kallsyms]", "libpython", "libc.so", "libmilter")


def group(dso: str) -> str:
    for name in SPLIT:
        if dso.startswith(name):
            return name.strip("[]").split(".")[0]
    return "other"


def samples_by_dso(data: Path) -> collections.Counter[str]:
    """Samples per group of shared objects, from ``perf report``."""
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: collections.Counter[str] = collections.Counter()
    for line in report.splitlines():
        fields = line.split()
        # "    82.35%   1372  [kernel.kallsyms]"
        if len(fields) >= 3 and fields[0].endswith("%") and fields[1].isdigit():
            counts[group(fields[2])] += int(fields[1])
    return counts


def record(pids: list[int], data: Path, frequency: int) -> subprocess.Popen[bytes]:
    argv = ["perf", "record", "-q", "-F", str(frequency), "-o", str(data)]
    return subprocess.Popen(
        [*argv, "-p", ",".join(map(str, pids))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def measure(name: str, work: Path, dns_port: int, args: argparse.Namespace) -> dict[str, float]:
    """Milliseconds of the milter's CPU per message, by group, for milter ``name``."""
    directory = work / name
    directory.mkdir(mode=0o755)
    config = smtpguard_config(directory, dns_port, workers=2)
    if name == "smtpguard":
        sock = directory / "smtpguard.sock"
        argv = [sys.executable, "-m", "smtpguard", "-c", str(config), "run"]
    else:
        sock = directory / "null.sock"
        argv = [sys.executable, str(BENCH / "null_milter.py"), f"unix:{sock}"]
    load = Load(10, args.messages, 1024, False, SENDER, RECIPIENT, HELO)
    with contextlib.ExitStack() as stack:
        milter = stack.enter_context(milter_process(argv, sock, directory / "milter.log"))
        postfix = start_postfix(f"split{name}", config, f"unix:{sock}")
        stack.callback(postfix.stop)
        smtp_source(load, postfix.port, 300)  # warm-up: threads, imports, DNS cache
        postfix.wait_empty()
        data = directory / "perf.data"
        perf = record(process_tree(milter.pid), data, args.frequency)
        seconds = smtp_source(load, postfix.port)
        perf.send_signal(signal.SIGINT)
        _, errors = perf.communicate(timeout=30)
        postfix.wait_empty()
    counts = samples_by_dso(data)
    if not counts:
        raise RuntimeError(f"perf recorded nothing for {name}: {errors.decode(errors='replace')}")
    per_message = 1000.0 / args.frequency / args.messages
    print(f"{name:>10}: {args.messages / seconds:6.0f} msg/s")
    return {key: value * per_message for key, value in counts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--frequency", type=int, default=2000)
    args = parser.parse_args()
    if shutil.which("perf") is None:
        parser.error("perf is not installed (Debian: apt-get install linux-perf)")
    work = Path(tempfile.mkdtemp(prefix="smtpguard-perf-"))
    work.chmod(0o755)  # Postfix's unprivileged processes reach the sockets below it
    with unbound(work / "unbound") as dns:
        null = measure("null", work, dns.port, args)
        ours = measure("smtpguard", work, dns.port, args)
    groups = sorted(set(null) | set(ours), key=lambda key: -ours.get(key, 0.0))
    print(f"\nmilter CPU per message (ms), perf at {args.frequency} Hz, {args.messages} messages")
    print(f"{'':12}{'null':>8}{'smtpguard':>11}{'difference':>12}")
    for key in [*groups, "total"]:
        a = sum(null.values()) if key == "total" else null.get(key, 0.0)
        b = sum(ours.values()) if key == "total" else ours.get(key, 0.0)
        print(f"{key:12}{a:8.3f}{b:11.3f}{b - a:+12.3f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
