"""Where smtpguard's CPU per session goes: per stage and per check, no libmilter.

bench/throughput.py measures the milter as a whole; this drives the same sessions
through :class:`smtpguard.driver.SessionDriver` (the code the pymilter adapter calls,
minus libmilter and pymilter) on one thread, with the benchmark's configuration
(bench/throughput.py: shipped policy, every local check on, DNS on a local unbound with
a warm cache), and measures CPU time (``time.thread_time``) per stage, per check, per
observer (checks fed with the headers and body as they stream) and per prefetch hook.
The resolver's event loop thread is counted separately (process CPU minus this
thread's).

    .venv/bin/python -m bench.session_cost [-n 2000] [--cprofile 25]

Header fields are batched as on the shipped unix socket (the adapter negotiates no
reply per header and the fields are judged together at the next step), so their cost
shows under "eoh"; ``--per-field`` judges each field as it arrives (the inet socket
path).

``--cprofile N`` prints the N functions with the most CPU time instead of the per-check
table (cProfile on this thread, CPU clock; its overhead inflates the total, the split
is what to read).
The figures are microseconds of CPU per session (first the same sessions without
the wrappers, which is what the milter runs); compare them with the null milter's
CPU per session in bench/throughput.py's direct protocol table, which is what libmilter
and pymilter cost before smtpguard runs a line.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import pstats
import socket
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tomli_w

from bench.milter_load import Identity
from bench.postfix_bench import unbound
from bench.throughput import smtpguard_config
from smtpguard.app import Runtime, build_runtime, load
from smtpguard.driver import SessionDriver
from smtpguard.pipeline import Action
from smtpguard.state import SessionGate

Clock = Callable[[], float]
COSTS: collections.defaultdict[str, float] = collections.defaultdict(float)


class _Timed:
    """A check (or a check's bound hook) whose calls, ``observe`` and ``prefetch`` add
    their CPU time to :data:`COSTS`; everything else is passed through."""

    def __init__(self, inner: Any, label: str, clock: Clock = time.thread_time) -> None:
        self._inner = inner
        self._label = label
        self._clock = clock
        owner = getattr(inner, "__self__", inner)  # a bound method's check
        self._name = getattr(owner, "name", label)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _timed(self, label: str, func: Callable[..., Any], *args: Any) -> Any:
        t0 = self._clock()
        try:
            return func(*args)
        finally:
            COSTS[label] += self._clock() - t0

    def __call__(self, *args: Any) -> Any:
        return self._timed(self._label, self._inner, *args)

    def observe(self, *args: Any) -> Any:
        return self._timed(f"observe {self._name}", self._inner.observe, *args)

    def prefetch(self, *args: Any) -> Any:
        return self._timed(f"prefetch {self._name}", self._inner.prefetch, *args)


def instrument(pipeline: Any) -> None:
    """Wrap every enabled check and the pipeline's lists of prefetch hooks and
    observers (check objects or bound methods, whichever the pipeline keeps)."""
    for stage, checks in pipeline.stages.items():
        pipeline.stages[stage] = [
            (_Timed(check, f"{stage.value:7} {check.name}"), settings) for check, settings in checks
        ]
    pipeline.rebuild_plan()
    for attr, kind in (("prefetchers", "prefetch"), ("observers", "observe")):
        hooks = getattr(pipeline, attr, None)
        if isinstance(hooks, list):
            setattr(pipeline, attr, [_Timed(h, f"{kind} {_name(h)}") for h in hooks])


def _name(hook: Any) -> str:
    return str(getattr(getattr(hook, "__self__", hook), "name", hook))


def one_session(
    runtime: Any,
    gate: SessionGate,
    identity: Identity,
    stages: dict[str, float],
    *,
    batch_headers: bool = True,
) -> None:
    macros = {
        "v": "Postfix 3.7.11",
        "j": "mx.example.com",
        "{daemon_name}": "mx.example.com",
        "_": f"{identity.client_name} [{identity.client_ip}]",
        "{client_addr}": identity.client_ip,
        "{client_name}": identity.client_name,
        "{mail_addr}": identity.sender,
        "{rcpt_addr}": identity.recipient,
        "i": "4QBENCH0001",
    }
    clock = time.thread_time
    t = clock()

    def lap(stage: str) -> None:
        nonlocal t
        now = clock()
        stages[stage] += now - t
        t = now

    driver = SessionDriver(runtime, gate, macros.get, batch_headers=batch_headers)
    lap("session setup")
    steps: list[tuple[str, Callable[[], Any]]] = [
        (
            "connect",
            lambda: driver.connect(
                identity.client_name, socket.AF_INET, (identity.client_ip, 40000)
            ),
        ),
        ("helo", lambda: driver.helo(identity.helo)),
        ("mail", lambda: driver.mail(f"<{identity.sender}>", ())),
        ("rcpt", lambda: driver.rcpt(f"<{identity.recipient}>")),
        ("data", driver.data),
    ]
    for name, step in steps:
        decision = step()
        lap(name)
        if decision.action in (Action.REJECT, Action.TEMPFAIL):
            raise RuntimeError(f"refused at {name}: {decision}")
    for name, value in identity.headers():
        driver.header(name, value)
    lap("header (all)")
    driver.eoh()
    lap("eoh")
    driver.body(identity.body())
    lap("body")
    final = driver.eom()
    lap("eom")
    if final.action is not Action.CONTINUE:
        raise RuntimeError(f"refused at end of message: {final}")
    driver.close()
    lap("close")


@contextlib.contextmanager
def bench_runtime(
    prefix: str,
    *,
    workers: int = 1,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[tuple[Runtime, SessionGate]]:
    """The benchmark's runtime (bench/throughput.py's configuration with ``workers``,
    DNS on a private unbound) and a session gate, for sessions driven without
    libmilter. ``edit`` may change the configuration's TOML data before it is loaded."""
    with (
        tempfile.TemporaryDirectory(prefix=prefix) as tmp,
        unbound(Path(tmp) / "unbound") as dns,
    ):
        path = smtpguard_config(Path(tmp), dns.port, workers=workers)
        if edit is not None:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            edit(data)
            path.write_text(tomli_w.dumps(data), encoding="utf-8")
        config = load(path)
        yield build_runtime(config), SessionGate(config.limits.max_sessions)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--sessions", type=int, default=2000)
    p.add_argument("--cprofile", type=int, default=0, metavar="N", help="top N functions")
    p.add_argument("--per-field", action="store_true", help="judge each header on arrival")
    p.add_argument("--dump", metavar="FILE", help="with --cprofile: write the pstats there")
    args = p.parse_args()
    identity = Identity()
    with bench_runtime("smtpguard-cost-") as (runtime, gate):
        warm: collections.defaultdict[str, float] = collections.defaultdict(float)
        for _ in range(50):  # DNS cache, imports, first-use caches
            one_session(runtime, gate, identity, warm, batch_headers=not args.per_field)
        # The same sessions without the per-check wrappers first: they add about a
        # quarter to the total, so the breakdown below is read for its shares.
        plain_stages: collections.defaultdict[str, float] = collections.defaultdict(float)
        plain0 = time.thread_time()
        for _ in range(args.sessions):
            one_session(runtime, gate, identity, plain_stages, batch_headers=not args.per_field)
        plain = time.thread_time() - plain0
        if not args.cprofile:  # the wrappers would dominate a deterministic profile
            instrument(runtime.pipeline)
        stages: collections.defaultdict[str, float] = collections.defaultdict(float)
        profiler = cProfile.Profile(time.thread_time) if args.cprofile else None
        cpu0, thread0 = time.process_time(), time.thread_time()
        if profiler:
            profiler.enable()
        for _ in range(args.sessions):
            one_session(runtime, gate, identity, stages, batch_headers=not args.per_field)
        if profiler:
            profiler.disable()
        cpu = time.process_time() - cpu0
        thread = time.thread_time() - thread0
    n = args.sessions

    def us(seconds: float) -> str:
        return f"{1e6 * seconds / n:8.1f} us"

    print(f"{n} sessions through SessionDriver (no libmilter), CPU per session:")
    print(f"  uninstrumented (thread)    {us(plain)}")
    print("instrumented:")
    print(f"  total (process)            {us(cpu)}")
    print(f"  this thread                {us(thread)}")
    print(f"  resolver loop thread       {us(cpu - thread)}")
    # The wrappers add about a third in all, unevenly (a wrapped call costs the same
    # for a cheap check as for a dear one): the stages without them are the ones to
    # compare between versions, the instrumented ones say where inside a stage.
    print("\nper stage (this thread):        uninstrumented   instrumented")
    for name, seconds in stages.items():
        print(f"  {name:26} {us(plain_stages[name])}    {us(seconds)}")
    checks = sum(COSTS.values())
    if COSTS:
        print(f"\nchecks, observers, prefetch hooks: {us(checks).strip()} in all; the rest of")
        print(f"this thread ({us(thread - checks).strip()}) is driver, pipeline and message model")
        for name, seconds in sorted(COSTS.items(), key=lambda kv: -kv[1]):
            print(f"  {name:34} {us(seconds)}")
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(args.cprofile)
        print("\n" + out.getvalue())
        if args.dump:
            stats.dump_stats(args.dump)
    return 0


if __name__ == "__main__":
    sys.exit(main())
