"""Worker processes behind one socket (``[milter] workers``, smtpguard.supervisor).

The service tests run the real ``smtpguard run`` with two workers and drive it with the
milter protocol; which worker serves a session is the kernel's choice, read back from
the ``worker=N`` mark of the session's summary line.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import logging
import mmap
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from smtpguard.adapter import App
from smtpguard.app import build_runtime, new_gate
from smtpguard.config import (
    MAX_WORKERS,
    ConfigError,
    MilterConfig,
    default_workers,
    load_config,
)
from smtpguard.counters import SharedCounter, SizeBuckets
from smtpguard.metrics import REQUEST_SECONDS as METRICS_REQUEST_SECONDS
from smtpguard.state import SharedSessionGate
from smtpguard.supervisor import (
    ALONE_BACKOFF,
    MAX_BACKOFF,
    MAX_CONFIG_BYTES,
    RESTART_ONLY,
    SharedText,
    Supervisor,
    _remove_orphaned_metrics_dirs,
    check_reloadable,
    pack_files,
    read_config,
    reloader,
    restart_delay,
    unpack_files,
    worker_cpu,
)
from smtpguard.workerwatch import LOCK_HOLDER_SILENCE, Flags
from support.files import tmpfs
from support.mtclient import MilterSession, assert_pass, assert_reply
from support.polling import children, holds_for, poll_for, scrape, trickle, wait_until
from support.service import (
    RULES,
    UNTRUSTED_IP,
    Running,
    Site,
    kill_supervisor_then_start_again,
    make_site,
    metrics_on,
    running,
)

#: The issue's promise for a killed worker.
RESTART_DEADLINE = 2.0
WORKERS = {"milter": {"workers": 2}}
THRESHOLD = 20
BULK = {**WORKERS, "bulk": {"threshold": THRESHOLD, "window": 600}}
HEADERS = [("From", "friend@sender.example"), ("To", "alice@example.com"), ("Subject", "x")]
BODY = "Offer number 0000\r\n" * 40


def both_started(service: Running) -> None:
    """The socket answers once the supervisor has opened it, before the forks."""
    wait_until(lambda: len(children(service.process.pid)) == 2)


def served_by(service: Running) -> set[str]:
    return set(re.findall(r"worker=(\d+) summary", service.log()))


def mail(service: Running, sender: str) -> str:
    with service.session() as s:
        s.connect(UNTRUSTED_IP)
        s.helo("mail.sender.example")
        return s.mail(sender).kind


def deliver(service: Running, body: str = BODY) -> str:
    with service.session() as s:
        assert_pass(s.connect(UNTRUSTED_IP))
        assert_pass(s.helo("mail.sender.example"))
        assert_pass(s.mail("<friend@sender.example>"))
        assert_pass(s.rcpt("<alice@example.com>"))
        final, _mods, _early = s.message(HEADERS, body)
        if final.kind in ("continue", "accept"):
            return "accepted"
        assert_reply(final, "same_size_flood")
        return "flood"


def concurrently(count: int, threads: int, job: Callable[[], str]) -> list[str]:
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        for _ in range(n):
            try:
                result = job()
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                results.append(result)

    pool = [threading.Thread(target=run, args=(count // threads,)) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return results


def until_both_served(service: Running, count: int, job: Callable[[], str]) -> int:
    """Runs count jobs two at a time, then more until both workers have served one,
    and says how many ran. Which worker accepts a connection is the kernel's choice:
    ten in a row to one worker happened in CI."""
    sent = len(concurrently(count, threads=2, job=job))
    deadline = time.monotonic() + 30
    while served_by(service) != {"1", "2"} and time.monotonic() < deadline:
        sent += len(concurrently(2, threads=2, job=job))
    assert served_by(service) == {"1", "2"}
    return sent


def more_until_both_served(service: Running, job: Callable[[], str]) -> list[str]:
    """At least one more job, then more one at a time until both workers have served;
    their results."""
    results = [job()]
    deadline = time.monotonic() + 30
    while served_by(service) != {"1", "2"} and time.monotonic() < deadline:
        results.append(job())
    assert served_by(service) == {"1", "2"}
    return results


# --- configuration ------------------------------------------------------------------


def config_with(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "smtpguard.toml"
    path.write_text(text)
    return load_config(path)


def test_default_workers_follow_the_cpus_this_process_may_use(tmp_path: Path) -> None:
    expected = min(len(os.sched_getaffinity(0)), 8)
    assert default_workers() == expected
    assert config_with(tmp_path, "").milter.workers == expected


def test_a_worker_bound_to_one_cpu_reads_the_default_the_service_started_with(
    tmp_path: Path,
) -> None:
    """A worker (bound to one CPU by cpu_affinity = "auto") that reloads a config
    without ``workers`` must get the service's default, not 1: with 1 every reload
    was refused in the workers ("changing workers needs a restart"), and a config
    saying one worker would also have allowed an in-process counter there."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    path = tmp_path / "smtpguard.toml"
    path.write_text("", encoding="utf-8")
    expected = config_with(tmp_path, "").milter.workers
    pid = os.fork()
    if pid == 0:  # the worker's situation: forked after import, then bound
        code = 1
        try:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
            code = 0 if load_config(path).milter.workers == expected else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("value", [0, MAX_WORKERS + 1, "'2'"])
def test_workers_out_of_range_are_refused(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match=r"milter\.workers"):
        config_with(tmp_path, f"[milter]\nworkers = {value}\n")


def test_worker_heartbeat_timeout_is_off_or_at_least_two_heartbeats(tmp_path: Path) -> None:
    assert config_with(tmp_path, "").milter.worker_heartbeat_timeout == 30.0
    for value, expected in (("0", 0.0), ("2", 2.0), ("7.5", 7.5)):
        loaded = config_with(tmp_path, f"[milter]\nworker_heartbeat_timeout = {value}\n")
        assert loaded.milter.worker_heartbeat_timeout == expected
    for value in ("-1", "0.5", "1.9", "nan", "inf", "'30'", "true"):
        with pytest.raises(ConfigError, match=r"milter\.worker_heartbeat_timeout"):
            config_with(tmp_path, f"[milter]\nworker_heartbeat_timeout = {value}\n")


def test_each_worker_gets_one_cpu_of_the_set_in_turn() -> None:
    auto = MilterConfig(workers=3)
    assert [worker_cpu(n, [2, 5], auto) for n in (1, 2, 3)] == [2, 5, 2]
    # Off, one worker, or one CPU: the kernel places the processes.
    assert worker_cpu(1, [2, 5], MilterConfig(workers=3, cpu_affinity="off")) is None
    assert worker_cpu(1, [2, 5], MilterConfig(workers=1)) is None
    assert worker_cpu(1, [2], auto) is None


def test_cpu_affinity_is_auto_off_or_cpus(tmp_path: Path) -> None:
    assert config_with(tmp_path, "").milter.cpu_affinity == "auto"
    assert config_with(tmp_path, "[milter]\ncpu_affinity = 'off'\n").milter.cpu_affinity == "off"
    listed = config_with(tmp_path, "[milter]\ncpu_affinity = [3, 1]\n")
    assert listed.milter.cpu_affinity == (3, 1)
    for value in ("'all'", "[]", "[1, 1]", "[-1]", "['1']", "[true]", "1"):
        with pytest.raises(ConfigError, match=r"milter\.cpu_affinity"):
            config_with(tmp_path, f"[milter]\ncpu_affinity = {value}\n")


def test_listed_cpus_bind_every_worker_in_turn() -> None:
    """A list applies as given: also with one worker or one CPU in it."""
    listed = MilterConfig(workers=3, cpu_affinity=(4, 1))
    assert [worker_cpu(n, [0, 1], listed) for n in (1, 2, 3)] == [4, 1, 4]
    assert worker_cpu(1, [0, 1], MilterConfig(workers=1, cpu_affinity=(1,))) == 1


def allowed_cpus(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_listed_cpu_takes_both_workers(tmp_path: Path) -> None:
    """cpu_affinity = [CPU]: both workers on that CPU (a host shared with the MTA)."""
    last = max(os.sched_getaffinity(0))
    site = make_site(tmp_path, {"milter": {"workers": 2, "cpu_affinity": [last]}})
    with running(site) as service:
        both_started(service)
        workers = children(service.process.pid)
        wait_until(lambda: all(allowed_cpus(pid) == {last} for pid in workers))
        wait_until(lambda: service.log().count(f" bound to CPU {last}") == 2)
        assert mail(service, "<a@sender.example>") == "continue"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_listed_cpu_takes_a_single_process(tmp_path: Path) -> None:
    last = max(os.sched_getaffinity(0))
    site = make_site(tmp_path, {"milter": {"workers": 1, "cpu_affinity": [last]}})
    with running(site) as service:
        assert allowed_cpus(service.process.pid) == {last}
        assert f" bound to CPU {last}" in service.log()
        assert mail(service, "<a@sender.example>") == "continue"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("affinity", ["auto", "off"])
def test_workers_are_bound_to_distinct_cpus_unless_off(tmp_path: Path, affinity: str) -> None:
    site = make_site(tmp_path, {"milter": {"workers": 2, "cpu_affinity": affinity}})
    cpus = os.sched_getaffinity(0)
    with running(site) as service:
        both_started(service)
        supervisor = service.process.pid
        workers = children(supervisor)
        # Bound right after the fork, before the worker serves: poll for it.
        if affinity == "auto":
            wait_until(lambda: all(len(allowed_cpus(pid)) == 1 for pid in workers))
            assert set().union(*(allowed_cpus(pid) for pid in workers)) == set(sorted(cpus)[:2])
            wait_until(lambda: service.log().count(" bound to CPU ") == 2)
        else:
            assert all(allowed_cpus(pid) == cpus for pid in workers)
            assert " bound to CPU " not in service.log()
        # The supervisor keeps the whole set, and the sessions are served either way.
        assert allowed_cpus(supervisor) == cpus
        assert (
            concurrently(6, threads=3, job=lambda: mail(service, "<a@sender.example>"))
            == ["continue"] * 6
        )


def test_restart_backoff() -> None:
    """At once after a death (a killed worker), then doubling while it keeps dying."""
    assert [restart_delay(n) for n in range(8)] == [0, 0, 1, 2, 4, 8, 16, 30]
    assert restart_delay(100) == MAX_BACKOFF


# --- shared state, without the service ------------------------------------------------

_fork = multiprocessing.get_context("fork")


def _hold_two(gate: SharedSessionGate, entered: Any, release: Any) -> None:
    gate.bind(1)
    assert gate.enter()
    assert gate.enter()
    entered.set()
    release.wait(10)


def test_shared_gate_limits_the_sessions_of_every_process() -> None:
    gate = SharedSessionGate(limit=3, workers=2)
    gate.bind(0)
    entered, release = _fork.Event(), _fork.Event()
    other = _fork.Process(target=_hold_two, args=(gate, entered, release))
    other.start()
    try:
        assert entered.wait(10)
        assert gate.per_worker() == [0, 2]
        assert gate.enter() is True  # 3 of 3
        assert gate.enter() is False  # 4 of 3, though this process holds only 1
        assert gate.total() == 3  # a refused session holds no slot (review rev124 F2)
    finally:
        release.set()
        other.join(10)
    # The supervisor frees a dead worker's slot.
    gate.release(1)
    assert gate.total() == gate.active == 1
    assert gate.enter() is True


def _hammer(counter: SharedCounter, hits: int, counts: Any) -> None:
    for _ in range(hits):
        counts.put(counter.hit("friend@sender.example|198.51.100.7", 1000))


def test_shared_counter_is_exact_across_processes(tmp_path: Path) -> None:
    counter = SharedCounter(tmp_path / "counters.map", 600, SizeBuckets(0.02))
    # As the supervisor does before it forks; the children get this very object, with
    # the parent's map, and must open their own (a lock is per process).
    counter.prepare()
    counts: Any = _fork.Queue()
    procs = [_fork.Process(target=_hammer, args=(counter, 25, counts)) for _ in range(4)]
    for p in procs:
        p.start()
    seen = sorted(counts.get(timeout=30) for _ in range(100))
    for p in procs:
        p.join(10)
    # Every hit saw every earlier one, whichever process made it: 1, 2, ..., 100.
    assert seen == list(range(1, 101))
    assert counter.peek("friend@sender.example|198.51.100.7", 1010) == 100


# --- reload: the text the supervisor validated; what needs a restart -----------------


def test_flags_set_in_a_worker_are_counted_by_the_supervisor() -> None:
    flags = Flags(3)
    assert flags.count() == 0
    worker = _fork.Process(target=flags.set, args=(2, True))
    worker.start()
    worker.join(10)
    flags.set(0, True)
    assert flags.count() == 2
    flags.set(2, False)
    flags.set(0, True)
    assert flags.count() == 1


def _read_after(shared: SharedText, published: Any, seen: Any) -> None:
    published.wait(10)
    seen.put(shared.read())


def test_shared_text_reaches_a_worker_forked_before_it_was_published() -> None:
    shared = SharedText(64)
    assert shared.read() == (0, b"")
    published, seen = _fork.Event(), _fork.Queue()
    worker = _fork.Process(target=_read_after, args=(shared, published, seen))
    worker.start()
    try:
        shared.publish(1, b"first")
        shared.publish(2, b"[milter]\nlog_level = 'DEBUG'\n")
        published.set()
        assert seen.get(timeout=10) == (2, b"[milter]\nlog_level = 'DEBUG'\n")
    finally:
        worker.join(10)
    shared.publish(3, b"")
    assert shared.read() == (3, b"")
    with pytest.raises(ValueError, match="65 bytes"):
        shared.publish(4, b"x" * 65)
    assert shared.read() == (3, b"")


def resident_kib(region: mmap.mmap) -> int:
    """The resident size of ``region`` (its mapping's Rss in /proc/self/smaps)."""
    start = ctypes.addressof(ctypes.c_char.from_buffer(region))
    lines = Path("/proc/self/smaps").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"{start:x}-"))
    rss = next(line for line in lines[at + 1 :] if line.startswith("Rss:"))
    return int(rss.split()[1])


def test_shared_text_gives_back_the_pages_past_a_shorter_text() -> None:
    """Review rev51: a reload with a 38 MiB IP list kept 38 MiB resident in every
    process after the list was cut to one line."""
    shared = SharedText(64 * 1024 * 1024)
    try:
        shared.publish(1, b"x" * 40_000_000)
        assert resident_kib(shared._map) > 39_000
        shared.publish(2, b"[milter]\n")
        assert resident_kib(shared._map) <= 8
        assert shared.read() == (2, b"[milter]\n")
    finally:
        shared.close()


def test_a_config_too_big_to_publish_refuses_the_reload(tmp_path: Path) -> None:
    path = tmp_path / "smtpguard.toml"
    path.write_bytes(b"#" * MAX_CONFIG_BYTES)
    assert len(read_config(path)) == MAX_CONFIG_BYTES
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match=r"larger than 4 MiB.*a restart reads it"):
        read_config(path)
    with pytest.raises(ConfigError, match="file not found"):
        read_config(tmp_path / "gone.toml")


#: A different value for every setting a reload cannot apply.
RESTART_CHANGES = [
    ("milter", "socket", "unix:/run/other/other.sock"),
    ("milter", "socket_mode", 0o600),
    ("milter", "socket_owner", "root"),
    ("milter", "socket_group", ""),
    ("milter", "user", "nobody"),
    ("milter", "name", "other"),
    ("milter", "timeout", 60),
    ("milter", "log", "syslog"),
    ("milter", "log_facility", "daemon"),
    ("milter", "log_socket", "/run/other.log"),
    ("milter", "workers", MAX_WORKERS + 1),
    ("milter", "cpu_affinity", (0,)),
    ("metrics", "enabled", True),
    ("metrics", "listen", "::1"),
    ("metrics", "port", 1),
]


def test_every_restart_only_setting_is_covered() -> None:
    listed = {(section, key) for section, keys in RESTART_ONLY for key in keys}
    assert listed == {(section, key) for section, key, _ in RESTART_CHANGES}


@pytest.mark.parametrize(("section", "key", "value"), RESTART_CHANGES)
def test_changing_a_start_setting_refuses_the_reload(
    tmp_path: Path, section: str, key: str, value: object
) -> None:
    running = config_with(tmp_path, "")
    changed = replace(getattr(running, section), **{key: value})
    with pytest.raises(ConfigError) as err:
        check_reloadable(running, replace(running, **{section: changed}))
    assert str(err.value) == f"{running.file}: {section}.{key}: changing {key} needs a restart"


def test_a_reload_builds_from_the_text_given_not_the_file(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    original = site.config.read_text()
    config = load_config(site.config)
    app = App(build_runtime(config), new_gate(config))
    site.config.write_text(original.replace('log_level = "INFO"', 'log_level = "nonsense"'))
    validated = original.replace('log_level = "INFO"', 'log_level = "DEBUG"\ndry_run = true')
    runtime = reloader(app, validated.encode)()
    assert runtime.config.milter.log_level == "DEBUG"
    assert runtime.config.milter.dry_run is True
    assert runtime.config.file == config.file
    # One process reads the file again.
    with pytest.raises(ConfigError, match=r"milter\.log_level"):
        reloader(app)()


def test_packed_files_come_back_as_they_went() -> None:
    files = {"/etc/smtpguard/replies.toml": b"x" * 70_000, "/x/\udcff.txt": b"", "/y": b"\0\n"}
    where = Path("/etc/smtpguard/releases/7/smtpguard.toml")
    assert unpack_files(pack_files(b"[milter]\n", files, where)) == (b"[milter]\n", files, where)
    assert unpack_files(pack_files(b"", {})) == (b"", {}, None)


def test_a_worker_reloads_the_data_files_the_supervisor_validated(tmp_path: Path) -> None:
    """A reply table or IP list changed after the supervisor validated it (an editor
    saving twice, a broken version written a moment later) reaches no worker: a worker
    builds from the bytes the supervisor read, not from the files. (The supervisor's
    two steps are called directly: the worker's side has no observable moment between
    the supervisor's read and its own in a running service.)"""
    table, partners = tmp_path / "replies.toml", tmp_path / "partners.txt"
    table.write_bytes((RULES / "replies.toml").read_bytes())
    partners.write_text("198.51.100.0/24\n")
    exempt = {"name": "partners", "ip_files": [str(partners)], "skip": ["rbl"]}
    site = make_site(tmp_path, {"replies": {"table": str(table)}, "policy": {"exempt": [exempt]}})
    supervisor = Supervisor(load_config(site.config))
    try:
        validated = table.read_text().replace("host denies the sender.", "validated text.")
        table.write_text(validated)
        partners.write_text("198.51.100.0/24\n203.0.113.0/24\n")
        supervisor._reload()
        assert supervisor.generation == 1
        table.write_text("[host_denies_sender]\ncode = 'not a code'\n")
        partners.write_text("not an address\n")

        supervisor.generation = 0  # what a worker started before the reload runs
        runtime = supervisor._apply_published()
        assert runtime is not None
        reply = runtime.replies.render("host_denies_sender", utf8=False)
        assert (reply.code, reply.xcode, reply.lines[0]) == ("553", "5.7.1", "validated text.")
        (applied,) = runtime.config.policy.exempt
        assert applied.networks.sources == (str(partners),)
        assert applied.networks.size == 2
    finally:
        supervisor.published.close()


def _stopped(path: str, lock: bool, held: Any, release: Any) -> None:
    # A worker stopped (as SIGSTOP leaves it), holding the counter's lock or not,
    # until the test releases it (or kills it).
    with open(path, "r+b") as file:
        if lock:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        held.set()
        release.wait(60)


@pytest.mark.parametrize("holds", [True, False])
def test_a_silent_worker_holding_the_counters_lock_is_killed_at_once(
    tmp_path: Path, holds: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev197: a worker stopped while it held the same-size counter's lock made
    every worker's messages wait for it and fail, until the heartbeat watchdog killed
    it 30 s later. Silent for LOCK_HOLDER_SILENCE with the lock held, it is killed; a
    silent worker without the lock waits for worker_heartbeat_timeout as before.
    (The supervisor's watch is called directly, at a chosen time, on a process that
    holds the lock for real in the worker's place: when a stopped worker happens to
    hold it in a running service is left to chance.)"""
    site = make_site(tmp_path, {**WORKERS, "state": {"timeout": 0.5}})
    supervisor = Supervisor(load_config(site.config))
    fork = multiprocessing.get_context("fork")
    held, release = fork.Event(), fork.Event()
    counter = supervisor.app.runtime.services.counter
    assert isinstance(counter, SharedCounter)
    counter.prepare()
    holder = fork.Process(target=_stopped, args=(counter.path, holds, held, release))
    holder.start()
    try:
        assert held.wait(10)
        worker = supervisor.workers[0]
        worker.pid = holder.pid or 0
        beat = time.monotonic()
        supervisor.heartbeats.set(0, beat)
        supervisor.heartbeats.set(1, beat + 3600)  # the other worker: beating
        with caplog.at_level(logging.ERROR):
            supervisor._watch(now=beat + LOCK_HOLDER_SILENCE - 0.5)
            assert not worker.hung
            supervisor._watch(now=beat + LOCK_HOLDER_SILENCE + 0.5)
        assert worker.hung is holds
        holder.join(0 if not holds else 10)
        if holds:
            assert holder.exitcode == -signal.SIGKILL
            assert (
                f"worker 1 (pid {holder.pid}) hung holding the same-size counter's lock: no"
                f" heartbeat for {LOCK_HOLDER_SILENCE + 0.5:.1f} s" in caplog.text
            )
        else:
            assert holder.is_alive()
            assert "hung" not in caplog.text
    finally:
        if holder.is_alive():
            # Not after the kill: a waiter killed inside Event.wait leaves the event's
            # condition expecting it, and set() would wait for it for ever.
            release.set()
        holder.join(10)
        supervisor.published.close()


def test_a_workers_reload_leaves_the_configuration_notes_to_the_supervisor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The notes on what a configuration leaves inactive (checks with nothing to do, DNS
    checks without nameservers) were logged by the supervisor and again by every worker
    at each reload (review rev87 F6): they describe the text, which only the supervisor
    reads; a worker applies the same bytes."""
    site = make_site(tmp_path)
    supervisor = Supervisor(load_config(site.config))
    notes = ("checks with nothing to do in this configuration", "DNS checks inactive")
    try:
        caplog.set_level(logging.INFO, logger="smtpguard")
        caplog.clear()
        supervisor._reload()
        said = caplog.text
        assert any(note in said for note in notes)  # this site leaves some inactive
        caplog.clear()
        supervisor.generation = 0  # what a worker started before the reload runs
        assert supervisor._apply_published() is not None
        assert not any(note in caplog.text for note in notes)
    finally:
        supervisor.published.close()


def test_a_link_switched_between_the_supervisor_and_a_worker_changes_nothing(
    tmp_path: Path,
) -> None:
    """Review rev51: a relative path was resolved at every load, so a deploy that
    switched a link (live -> v3) after the supervisor read v2 gave a worker v3, a
    version nobody validated."""
    for version in ("v1", "v2", "v3"):
        (tmp_path / version).mkdir()
        text = (RULES / "replies.toml").read_text()
        (tmp_path / version / "replies.toml").write_text(
            text.replace("host denies the sender.", f"{version} text.")
        )
    live = tmp_path / "live"
    live.symlink_to("v1")
    site = make_site(tmp_path, {"replies": {"table": "live/replies.toml"}})
    supervisor = Supervisor(load_config(site.config))
    try:
        live.unlink()
        live.symlink_to("v2")
        supervisor._reload()
        assert supervisor.generation == 1
        live.unlink()
        live.symlink_to("v3")

        supervisor.generation = 0  # what a worker started before the reload runs
        runtime = supervisor._apply_published()
        assert runtime is not None
        reply = runtime.replies.render("host_denies_sender", utf8=False)
        assert reply.lines[0] == "v2 text."
    finally:
        supervisor.published.close()


def test_data_files_too_big_to_hand_to_the_workers_refuse_the_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    partners = tmp_path / "partners.txt"
    partners.write_text("198.51.100.0/24\n")
    exempt = {"name": "partners", "ip_files": [str(partners)], "skip": ["rbl"]}
    site = make_site(tmp_path, {"policy": {"exempt": [exempt]}})
    limit = len(site.config.read_bytes()) + len((RULES / "replies.toml").read_bytes()) + 4096
    supervisor = Supervisor(load_config(site.config), reload_bytes=limit)
    try:
        partners.write_text("".join(f"10.{i // 256}.{i % 256}.0/24\n" for i in range(400)))
        supervisor._reload()
        assert supervisor.generation == 0
        assert supervisor.published.read() == (0, b"")
        (refusal,) = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
        assert re.search(
            r"smtpguard\.toml: with its data files [0-9,]+ bytes, more than the [0-9,]+ a reload"
            r" hands to the workers \(a restart reads them\)$",
            refusal,
        )
        assert supervisor.app.runtime.config.policy.exempt[0].networks.size == 1
    finally:
        supervisor.published.close()


# --- the service ----------------------------------------------------------------------


def test_flood_count_is_exact_across_workers(tmp_path: Path) -> None:
    site = make_site(tmp_path, BULK)
    with running(site) as service:
        both_started(service)
        results = concurrently(THRESHOLD, threads=4, job=lambda: deliver(service))
        assert results == ["accepted"] * THRESHOLD
        # Both workers counted into one view: every message from now on is one too
        # many, whichever worker takes it (until both have served, if the kernel gave
        # them all to one so far).
        late = more_until_both_served(service, job=lambda: deliver(service))
        assert late == ["flood"] * len(late)
    # The file the workers shared (its geometry is the service's: window 600 s).
    counters = SharedCounter(tmp_path / "state-counters.map", 600, SizeBuckets(0.02))
    assert counters.total() == THRESHOLD + len(late)


def test_flood_count_on_redis_is_exact_across_workers(tmp_path: Path) -> None:
    """Review rev50: the workers shared the Redis counter's member names (node and
    sequence, copied by the fork), so their hits collided: 39 of 60 got through a
    threshold of 20."""
    from support.daemons import start_redis  # noqa: PLC0415

    server = start_redis(tmp_path / "redis")
    try:
        state = {"backend": "redis", "redis_url": server.url}
        site = make_site(tmp_path / "site", {**BULK, "state": state})
        with running(site) as service:
            both_started(service)
            results = concurrently(3 * THRESHOLD, threads=4, job=lambda: deliver(service))
            late = more_until_both_served(service, job=lambda: deliver(service))
        assert results.count("accepted") == THRESHOLD
        assert results.count("flood") == 2 * THRESHOLD
        assert late == ["flood"] * len(late)
    finally:
        server.stop()


def test_session_limit_is_for_the_whole_service(tmp_path: Path) -> None:
    site = make_site(tmp_path, {**WORKERS, "limits": {"max_sessions": 2}})
    with running(site) as service:
        sessions = [service.session() for _ in range(4)]
        try:
            kinds = []
            for s in sessions:
                assert_pass(s.connect(UNTRUSTED_IP))
                assert_pass(s.helo("mail.sender.example"))
                kinds.append(s.mail("<a@sender.example>").kind)
        finally:
            for s in sessions:
                s.close()
        assert kinds == ["continue", "continue", "reply", "reply"]


def test_sighup_reloads_every_worker_and_a_broken_config_changes_none(tmp_path: Path) -> None:
    site = make_site(tmp_path, WORKERS)
    original = site.config.read_text()
    with running(site) as service:
        both_started(service)
        assert mail(service, "<new@spam.example>") == "continue"

        site.config.write_text(original.replace('"junk.example"', '"junk.example", "spam.example"'))
        service.process.send_signal(signal.SIGHUP)
        wait_until(lambda: service.log().count("reloaded configuration") == 2)
        assert re.search(r"worker=1 reloaded configuration", service.log())
        assert re.search(r"worker=2 reloaded configuration", service.log())
        assert (
            concurrently(10, threads=2, job=lambda: mail(service, "<new@spam.example>"))
            == ["reply"] * 10
        )

        site.config.write_text(original.replace("max_rcpt = 3", "max_rcpt = 'many'"))
        service.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in service.log())
        log = service.log()
        # Refused once, by the supervisor; no worker was asked.
        assert log.count("reload refused") == 1
        assert "max_rcpt" in log
        assert log.count("reloaded configuration") == 2
        assert (
            concurrently(10, threads=2, job=lambda: mail(service, "<new@spam.example>"))
            == ["reply"] * 10
        )
        assert service.process.poll() is None


def past_mail_from(site: Site) -> MilterSession:
    """A session of an untrusted client whose MAIL FROM was let through."""
    session = MilterSession(str(site.socket))
    assert_pass(session.connect(UNTRUSTED_IP))
    assert_pass(session.helo("mail.sender.example"))
    assert_pass(session.mail("<a@sender.example>"))
    return session


def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    site = make_site(tmp_path, WORKERS)
    with running(site) as service:
        both_started(service)
        workers = children(service.process.pid)
        in_flight = past_mail_from(site)
        assert_pass(in_flight.rcpt("<alice@example.com>"))
        # Answered, so a worker has the message: connect and HELO get no reply on a
        # unix socket, and a SIGTERM that overtook them would find no message yet.
        assert_pass(in_flight.data())
        service.process.send_signal(signal.SIGTERM)
        wait_until(lambda: service.log().count("stopping; messages under way finish") == 2)
        # The message that started before the stop is served to its end.
        final, _mods, _early = in_flight.message([("Subject", "hi")], "Hello.\r\n", data=False)
        assert_pass(final)
        in_flight.close()
        assert service.process.wait(timeout=20) == 0
    log = service.log()
    assert log.count("exited with status 0") == 2
    assert "restarting" not in log
    assert not site.socket.exists()
    assert all(not Path(f"/proc/{pid}").exists() or children(pid) == set() for pid in workers)


def test_an_operators_signals_to_a_worker_are_left_to_its_supervisor(tmp_path: Path) -> None:
    """Review rev193 F2: a second SIGHUP sent to a worker while its main thread was
    out of sigwait reached libmilter's own signal thread, which stopped the worker
    and cut its sessions. A worker takes its supervisor's SIGUSR1 and SIGUSR2 alone;
    SIGHUP, SIGTERM and SIGINT sent to it are dropped."""
    site = make_site(tmp_path, WORKERS)
    with running(site) as service:
        both_started(service)
        workers = children(service.process.pid)
        held = past_mail_from(site)
        for _ in range(20):
            for worker in workers:
                for sig in (signal.SIGHUP, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                    os.kill(worker, sig)
        holds_for(lambda: children(service.process.pid) == workers, 1.0)
        assert_pass(held.rcpt("<alice@example.com>"))
        final, _mods, _early = held.message([("Subject", "hi")], "Hello.\r\n")
        assert_pass(final)
        held.close()
        log = service.log()
        assert "restarting" not in log
        assert "reloaded configuration" not in log
        assert "stopping" not in log


def test_killed_worker_is_back_within_two_seconds(tmp_path: Path) -> None:
    site = make_site(tmp_path, WORKERS)
    with running(site) as service:
        supervisor = service.process.pid
        wait_until(lambda: len(children(supervisor)) == 2)
        before = children(supervisor)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        waited = wait_until(
            lambda: len(children(supervisor) - before) == 1 and len(children(supervisor)) == 2,
            deadline=10,
        )
        assert waited < RESTART_DEADLINE
        assert "was killed by signal 9" in service.log()
        assert (
            concurrently(10, threads=2, job=lambda: mail(service, "<a@sender.example>"))
            == ["continue"] * 10
        )
        assert victim not in children(supervisor)


def test_with_no_worker_up_one_is_back_within_alone_backoff(tmp_path: Path) -> None:
    """Review rev124 F3: every worker killed as soon as it started: the backoff grew to
    MAX_BACKOFF for all of them, and the MTA's sessions waited in the socket's queue
    up to 30 s. With none up, the next start comes within ALONE_BACKOFF."""
    site = make_site(tmp_path, WORKERS)
    with running(site) as service:
        supervisor = service.process.pid
        wait_until(lambda: len(children(supervisor)) == 2)
        end = time.monotonic() + 9  # long enough for the backoff to pass 4 s
        killed: set[int] = set()
        while time.monotonic() < end:
            for pid in children(supervisor) - killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            # The next worker the supervisor starts (a killed one may linger unreaped).
            wait_until(lambda: bool(children(supervisor) - killed) or time.monotonic() >= end, 10)
        assert "restarting it in 2 s (no worker is up)" in service.log()
        started = time.monotonic()
        assert mail(service, "<a@sender.example>") == "continue"
        assert time.monotonic() - started < ALONE_BACKOFF + 1.5


@pytest.mark.parametrize("last", ["exec sleep 3600", "exec env -i sleep 3600"])
def test_a_killed_workers_virus_hooks_do_not_run_on(tmp_path: Path, last: str) -> None:
    """Review rev92 F2: the hook programs of a worker killed outright (by the
    supervisor's own watchdog, the OOM killer) went to init and ran on, with no
    timeout; the supervisor now adopts them and ends them. Only them (review rev94 F1:
    it killed every child it had not forked, such as a daemon a start script left).
    Also one that clears its environment, where the mark that names its worker was
    (review rev95 F4: found by the process group its worker recorded)."""
    pids = tmp_path / "pids"
    pids.mkdir()
    hook = tmp_path / "scan.sh"
    hook.write_text(f"#!/bin/sh\necho $$ > {pids}/$$\ncat >/dev/null\n{last}\n")
    hook.chmod(0o755)
    extra = {**WORKERS, "virus": {"backend": "command", "command": [str(hook)], "timeout": 60}}
    site = make_site(tmp_path / "site", extra)
    # A start script that leaves a process of its own behind, then becomes the service.
    bystander = tmp_path / "bystander"
    service_argv = f"{sys.executable} -m smtpguard -c {site.config} run"
    wrapper = ["sh", "-c", f"sleep 3599 & echo $! > {bystander}; exec {service_argv}"]
    with running(site, wrapper) as service:
        supervisor = service.process.pid
        wait_until(bystander.exists)
        other = int(bystander.read_text())
        wait_until(lambda: len(children(supervisor) - {other}) == 2)
        sender = deliver_to_a_dying_worker(service)
        program = int(poll_for(lambda: next(iter(os.listdir(pids)), None)))
        worker = int(Path(f"/proc/{program}/stat").read_text().rpartition(")")[2].split()[1])
        assert worker in children(supervisor)
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: not alive(program))
        sender.join(timeout=10)
        killed = f"(pid {worker}) left 1 virus hook processes running: killed"
        wait_until(lambda: killed in service.log())
        # The worker again, and the start script's process, untouched.
        wait_until(lambda: len(children(supervisor) - {other}) == 2)
        assert alive(other)
    os.kill(other, signal.SIGKILL)


def test_a_killed_workers_hook_child_in_a_group_of_its_own_is_ended(tmp_path: Path) -> None:
    """Review rev97 F7: a hook's child that moved to a process group of its own (setpgid,
    as job control does) and cleared its environment was neither marked nor in a
    recorded group; it stays in the hook's session, whose id is the recorded one."""
    pids = tmp_path / "pids"
    pids.mkdir()
    hook = tmp_path / "scan.sh"
    hook.write_text(
        "#!/bin/sh\ncat >/dev/null\n"
        'perl -e \'setpgrp(0,0); exec "env", "-i", "sleep", "3600"\' &\n'
        f"echo $! > {pids}/child\necho $$ > {pids}/leader\nwait\n"
    )
    hook.chmod(0o755)
    extra = {**WORKERS, "virus": {"backend": "command", "command": [str(hook)], "timeout": 60}}
    site = make_site(tmp_path / "site", extra)
    with running(site) as service:
        supervisor = service.process.pid
        wait_until(lambda: len(children(supervisor)) == 2)
        sender = deliver_to_a_dying_worker(service)

        def written() -> str | None:
            path = pids / "leader"
            return (path.read_text().strip() or None) if path.exists() else None

        leader = int(poll_for(written))
        child = int((pids / "child").read_text())

        def group_and_session() -> tuple[int, int]:
            stat = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()
            return int(stat[2]), int(stat[3])

        # Its own group once perl's setpgrp ran (the pid is written before: CI under
        # load read the hook's group), in the hook's session.
        wait_until(lambda: group_and_session()[0] == child)
        assert group_and_session() == (child, leader)
        worker = int(Path(f"/proc/{leader}/stat").read_text().rpartition(")")[2].split()[1])
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: not alive(child) and not alive(leader))
        sender.join(timeout=10)


def deliver_to_a_dying_worker(service: Running) -> threading.Thread:
    """A message sent in a thread of its own, whose worker a test kills mid-scan."""

    def deliver() -> None:
        with contextlib.suppress(Exception), service.session() as s:  # the worker dies
            s.connect(UNTRUSTED_IP)
            s.helo("mail.sender.example")
            s.mail("<a@sender.example>")
            s.rcpt("<alice@example.com>")
            s.message([("Subject", "hi")], "Hello.\r\n")

    sender = threading.Thread(target=deliver)
    sender.start()
    return sender


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (not a zombie, nor gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_silent_metrics_clients_do_not_delay_a_restart(tmp_path: Path) -> None:
    """Review rev87 F4: the supervisor waited up to 2 s for each metrics client to
    speak, or to end its request, in the loop that also restarts workers (four silent
    clients: 3.6 s)."""
    from support.daemons import free_port  # noqa: PLC0415

    port = free_port()
    site = make_site(tmp_path, {**WORKERS, "metrics": {"enabled": True, "port": port}})
    with running(site) as service:
        supervisor = service.process.pid
        wait_until(lambda: len(children(supervisor)) == 2)
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        for conn in silent[2:]:
            conn.sendall(b"GET /metr")  # and then nothing more: a request cut short
        try:
            before = children(supervisor)
            os.kill(min(before), signal.SIGKILL)
            waited = wait_until(
                lambda: len(children(supervisor) - before) == 1 and len(children(supervisor)) == 2,
                deadline=10,
            )
            assert waited < 1.0
            assert "smtpguard_sessions" in scrape(port)  # a client that speaks is served
        finally:
            for conn in silent:
                conn.close()


def test_sighups_in_quick_succession_restart_no_worker(tmp_path: Path) -> None:
    """Review rev87 F2: the supervisor passed each reload on as SIGHUP; one that came
    while a worker's main thread was not waiting went to libmilter's own signal
    thread, which stopped the worker (and, as any user but root, removed the socket
    and with it the service). Workers now get signals libmilter does not wait for."""
    site = make_site(tmp_path, WORKERS)
    with running(site) as service:
        both_started(service)
        for _ in range(60):
            service.process.send_signal(signal.SIGHUP)
        wait_until(lambda: service.log().count("reloaded configuration") >= 2)
        holds_for(lambda: "restarting" not in service.log(), 1.0)
        assert mail(service, "<a@sender.example>") == "continue"
        log = service.log()
        assert "restarting" not in log
        assert "libmilter stopped on its own" not in log
        assert service.process.poll() is None


def test_sigusr1_and_sigusr2_to_the_supervisor_reload_and_stop_as_in_one_process(
    tmp_path: Path,
) -> None:
    """Review rev88: SIGUSR1 and SIGUSR2 reload and stop one process (what the
    supervisor sends its workers), but sent to the supervisor they stayed pending, and
    nothing was logged."""
    site = make_site(tmp_path, WORKERS)
    original = site.config.read_text()
    with running(site) as service:
        both_started(service)
        site.config.write_text(original.replace('"junk.example"', '"junk.example", "spam.example"'))
        service.process.send_signal(signal.SIGUSR1)
        wait_until(lambda: service.log().count("reloaded configuration") == 2)
        assert "reload: configuration" in service.log()
        assert mail(service, "<new@spam.example>") == "reply"
        service.process.send_signal(signal.SIGUSR2)
        assert service.process.wait(timeout=15) == 0, service.log()
        log = service.log()
        assert f"signal {int(signal.SIGUSR2)}: stopping 2 workers" in log
        assert "smtpguard stopped" in log
        assert not site.socket.exists()


def test_a_sighup_during_the_stop_is_no_death_by_signal(tmp_path: Path) -> None:
    """Review rev87 F5: the supervisor put SIGHUP's default action back while it was
    unblocked, so a SIGHUP at the end of a stop killed it (status "killed by signal
    1" after "smtpguard stopped")."""
    site = make_site(tmp_path, WORKERS)
    with running(site) as service:
        both_started(service)
        service.process.send_signal(signal.SIGTERM)
        while True:
            with contextlib.suppress(ProcessLookupError):
                service.process.send_signal(signal.SIGHUP)
            try:
                service.process.wait(timeout=0.002)  # its exit, a SIGHUP every 2 ms
                break
            except subprocess.TimeoutExpired:
                continue
        assert service.process.returncode == 0, service.log()


def test_metrics_are_summed_over_workers(tmp_path: Path) -> None:
    from support.daemons import free_port  # noqa: PLC0415

    port = free_port()
    site = make_site(tmp_path, {**WORKERS, "metrics": {"enabled": True, "port": port}})
    with running(site) as service:
        both_started(service)
        sent = until_both_served(service, 10, lambda: mail(service, "<spammer@bad.example>"))
        import urllib.request  # noqa: PLC0415

        def scraped() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        # A client that connects and says nothing, or sends its request a byte at a
        # time for longer than the scrape waits, holds the supervisor's loop (which
        # also restarts workers) for 2 s at most.
        stop = threading.Event()
        slow = socket.create_connection(("127.0.0.1", port))
        slowloris = threading.Thread(target=trickle, args=(slow, stop, 0.25))
        slowloris.start()
        try:
            with socket.create_connection(("127.0.0.1", port)):
                text = scraped()
        finally:
            stop.set()
            slowloris.join()
        found = re.search(
            r'^smtpguard_decisions_total\{action="reject",mode="enforce",'
            r'reply_id="host_denies_sender"\} (\S+)$',
            text,
            re.MULTILINE,
        )
        assert found is not None, text
        assert float(found.group(1)) == sent


def tcp_inodes(port: int) -> set[str]:
    """Socket inodes of the TCP connections to the local IPv4 ``port`` still open."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        # 01 ESTABLISHED, 08 CLOSE_WAIT (the client gone, the socket still held).
        if int(fields[1].rpartition(":")[2], 16) == port and fields[3] in ("01", "08"):
            found.add(fields[9])
    return found


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(target[len("socket:[") : -1])
    return found


def test_a_metrics_request_being_read_at_a_fork_stays_the_supervisors(tmp_path: Path) -> None:
    """Review rev202 L2: a worker forked while the supervisor read a request's head kept
    the connection for its whole life, so the client was never closed and the socket
    stayed in CLOSE-WAIT."""
    from support.daemons import free_port  # noqa: PLC0415

    port = free_port()
    site = make_site(tmp_path, {**WORKERS, "metrics": {"enabled": True, "port": port}})
    with running(site) as service:
        supervisor = service.process.pid
        both_started(service)
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(b"GET /met")
            sent = time.monotonic()
            held = poll_for(lambda: tcp_inodes(port) & socket_inodes(supervisor) or None)
            before = children(supervisor)
            os.kill(min(before), signal.SIGKILL)
            wait_until(
                lambda: len(children(supervisor) - before) == 1 and len(children(supervisor)) == 2,
                deadline=10,
            )
            # The new worker was forked while the request was still being read.
            assert time.monotonic() - sent < METRICS_REQUEST_SECONDS
            (new,) = children(supervisor) - before
            assert not socket_inodes(new) & held
            # Cut at the supervisor's deadline: the client sees the end.
            slow.settimeout(METRICS_REQUEST_SECONDS + 5)
            assert slow.recv(1) == b""


def metrics_off(port: int) -> float:
    found = re.search(r"^smtpguard_workers_metrics_off (\S+)$", scrape(port), re.MULTILINE)
    assert found is not None
    return float(found.group(1))


def metrics_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, int, Site]:
    """A two-worker site with metrics on, its multiprocess directory in ``tmp_path``."""
    from support.daemons import free_port  # noqa: PLC0415

    port = free_port()
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    site = make_site(tmp_path / "site", {**WORKERS, "metrics": {"enabled": True, "port": port}})
    return directory, port, site


def test_workers_whose_metrics_are_off_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review rev47: a worker that could not record a metric stopped recording with
    one log line, and the sums read low with nothing saying so."""
    directory, port, site = metrics_site(tmp_path, monkeypatch)
    with running(site) as service:
        both_started(service)
        assert metrics_off(port) == 0
        # The files a worker made at its start gone, and no way to make them again.
        shutil.rmtree(directory)
        directory.write_text("not a directory")
        until_both_served(service, 10, lambda: mail(service, "<spammer@bad.example>"))
        assert metrics_off(port) == 2
        assert service.log().count("metrics off in this process") == 2
        # A worker started again records again, once the directory is back (it makes
        # its files at its start: one started with the directory still broken is off).
        directory.unlink()
        directory.mkdir()
        worker = min(children(service.process.pid))
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: len(children(service.process.pid) - {worker}) == 2)
        assert metrics_off(port) == 1


def test_workers_whose_metric_files_were_removed_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review rev218 F3: with the directory removed (a temporary files cleaner, an
    rm -r), the workers wrote on into their maps of the removed files without an
    error: /metrics lost their series and nothing counted them as off."""
    directory, port, site = metrics_site(tmp_path, monkeypatch)
    with running(site) as service:
        both_started(service)
        until_both_served(service, 4, lambda: mail(service, "<spammer@bad.example>"))
        assert metrics_off(port) == 0
        shutil.rmtree(directory)
        until_both_served(service, 4, lambda: mail(service, "<spammer@bad.example>"))
        assert metrics_off(port) == 2
        assert metrics_off(port) == 2
        assert service.log().count("is gone (removed with the directory") == 2


def test_a_worker_still_making_its_metric_files_is_not_taken_for_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review rev221 L1: with a start slower than a fixed grace (a loaded host, a slow
    disk) both workers were said to have lost their files and counted as off. Only a
    worker that said its files are made is looked at. (The supervisor's side is called
    directly: the worker's moment between fork and files has no observable point.)"""
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    site = make_site(tmp_path / "site", {**WORKERS, "metrics": {"enabled": True}})
    supervisor = Supervisor(load_config(site.config))
    try:
        first, second = supervisor.workers
        first.pid, second.pid = 4242424, 4242425  # running, no files (yet)
        assert supervisor._metrics_off() == 0
        supervisor.metrics_files.set(first.number - 1, True)
        assert supervisor._metrics_off() == 1
    finally:
        supervisor.published.close()


def test_a_full_metrics_file_system_leaves_the_service_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review rev47, through the service: with PROMETHEUS_MULTIPROC_DIR on a full
    tmpfs (/run) the supervisor died of SIGBUS at its start without a line. Now it
    starts, says once that it cannot record, and its workers serve without metrics
    (counted as such), without being restarted."""
    from support.daemons import free_port  # noqa: PLC0415

    port = free_port()
    with tmpfs(tmp_path / "metrics", "256k", fill=True) as directory:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
        site = make_site(tmp_path / "site", {**WORKERS, "metrics": {"enabled": True, "port": port}})
        with running(site) as service:
            both_started(service)
            until_both_served(service, 4, lambda: mail(service, "<spammer@bad.example>"))
            assert metrics_off(port) == 2
            log = service.log()
            assert log.count("metrics: cannot record ([Errno 28] No space left on device)") == 1
            assert "restarting" not in log
            assert "metrics: off until the service is restarted" in log
            assert len(children(service.process.pid)) == 2
            service.process.send_signal(signal.SIGTERM)
            assert service.process.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("key", "change"),
    [("workers", "workers = 3"), ("cpu_affinity", 'workers = 2\ncpu_affinity = "off"')],
)
def test_changing_the_worker_count_needs_a_restart(tmp_path: Path, key: str, change: str) -> None:
    site = make_site(tmp_path, WORKERS)
    original = site.config.read_text()
    with running(site) as service:
        both_started(service)
        site.config.write_text(original.replace("workers = 2", change))
        service.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in service.log())
        assert f"milter.{key}: changing {key} needs a restart" in service.log()
        assert "reloaded configuration" not in service.log()
        assert len(children(service.process.pid)) == 2


def test_every_worker_applies_the_config_the_supervisor_validated(tmp_path: Path) -> None:
    """The file changing after the supervisor validated it (a broken version written a
    moment later, or one nobody sent SIGHUP for) reaches no worker: every worker,
    also one restarted later, serves the validated config."""
    site = make_site(tmp_path, WORKERS)
    original = site.config.read_text()
    validated = original.replace('"junk.example"', '"junk.example", "spam.example"')
    with running(site) as service:
        both_started(service)
        site.config.write_text(validated)
        service.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "valid (generation 1), sent to 2 workers" in service.log())
        site.config.write_text(original.replace("max_rcpt = 3", "max_rcpt = 'many'"))
        wait_until(lambda: service.log().count("reloaded configuration") == 2)
        assert "reload refused" not in service.log()
        assert (
            concurrently(10, threads=2, job=lambda: mail(service, "<new@spam.example>"))
            == ["reply"] * 10
        )

        # A valid config nobody validated, and the reload signal to one worker only.
        site.config.write_text(validated.replace('"spam.example"', '"spam.example", "x.example"'))
        worker = min(children(service.process.pid))
        os.kill(worker, signal.SIGUSR1)
        wait_until(lambda: "configuration generation 1 applied already" in service.log())
        assert service.log().count("reloaded configuration") == 2

        # A worker killed and started again gets the validated config too.
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: len(children(service.process.pid) - {worker}) == 2)
        assert (
            concurrently(10, threads=2, job=lambda: mail(service, "<a@x.example>"))
            == ["continue"] * 10
        )
        assert (
            concurrently(10, threads=2, job=lambda: mail(service, "<new@spam.example>"))
            == ["reply"] * 10
        )
        assert "reload refused" not in service.log()


def test_log_level_applies_on_reload(tmp_path: Path) -> None:
    site = make_site(tmp_path, {**WORKERS, "milter": {"workers": 2, "log_level": "WARNING"}})
    original = site.config.read_text()
    with running(site) as service:
        both_started(service)
        assert concurrently(4, threads=2, job=lambda: mail(service, "<a@sender.example>"))
        assert " INFO " not in service.log()
        site.config.write_text(original.replace('"WARNING"', '"INFO"'))
        service.process.send_signal(signal.SIGHUP)
        wait_until(lambda: service.log().count("reloaded configuration") == 2)
        until_both_served(service, 10, lambda: mail(service, "<a@sender.example>"))


def test_a_new_metrics_port_needs_a_restart(tmp_path: Path) -> None:
    from support.daemons import free_port  # noqa: PLC0415

    port = free_port()
    site = make_site(tmp_path, {**WORKERS, "metrics": {"enabled": True, "port": port}})
    original = site.config.read_text()
    with running(site) as service:
        both_started(service)
        site.config.write_text(original.replace(f"port = {port}", f"port = {port + 1}"))
        service.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in service.log())
        assert "metrics.port: changing port needs a restart" in service.log()
        assert "reloaded configuration" not in service.log()
        assert "smtpguard_" in scrape(port)


def totals(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scrape(port))
        for sample in family.samples
    }


def counted(name: str) -> bool:
    """A sample of a counter or a histogram the workers write (what only grows), by
    its name; not the supervisor's own (smtpguard_worker_*)."""
    ours = name.startswith("smtpguard_") and not name.startswith("smtpguard_worker")
    return ours and name.endswith(("_total", "_bucket", "_count", "_sum"))


def replaced(directory: Path, supervisor: int, dead: int) -> bool:
    """The files of the worker ``dead`` are gone, and another serves in its place."""
    serving = children(supervisor)
    return not list(directory.glob(f"*_{dead}.db")) and len(serving) == 2 and dead not in serving


def test_a_dead_workers_metrics_files_go_and_its_counts_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed outright leaves no file of its own behind (a crash loop would
    pile them up), its live gauge stops counting, and what it counted stays in the
    totals (a counter that went down would read as a reset to Prometheus)."""
    from support.daemons import free_port  # noqa: PLC0415

    port = free_port()
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    site = make_site(tmp_path, {**WORKERS, "metrics": {"enabled": True, "port": port}})
    refused = (
        "smtpguard_decisions_total",
        (("action", "reject"), ("mode", "enforce"), ("reply_id", "host_denies_sender")),
    )
    in_flight = ("smtpguard_sessions_in_flight", ())
    with running(site) as service:
        both_started(service)
        supervisor = service.process.pid
        first = children(supervisor)
        sent = until_both_served(service, 10, lambda: mail(service, "<spammer@bad.example>"))
        # Both served sessions, so both have counters and a live gauge of their own.
        for pid in first:
            assert (directory / f"counter_{pid}.db").exists()
            assert (directory / f"gauge_livesum_{pid}.db").exists()
        before = totals(port)
        assert before[refused] == sent
        assert before[("smtpguard_sessions_total", ())] == sent

        # The second death adds to the retired values of the first.
        for victim in sorted(first):
            os.kill(victim, signal.SIGKILL)
            wait_until(functools.partial(replaced, directory, supervisor, victim))
            after = totals(port)
            # Every counter and histogram sample, buckets included, as before.
            assert {k: v for k, v in after.items() if counted(k[0])} == {
                k: v for k, v in before.items() if counted(k[0])
            }
            assert after[in_flight] == 0
        assert (directory / "counter_retired.db").exists()
        assert totals(port)[("smtpguard_worker_restarts_total", (("reason", "signal"),))] == 2
        assert not [f for f in os.listdir(directory) if any(str(p) in f for p in first)]
        # The workers started since count on top.
        concurrently(4, threads=2, job=lambda: mail(service, "<spammer@bad.example>"))
        assert totals(port)[refused] == sent + 4


def test_sessions_a_dead_worker_cuts_are_logged_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review rev133 F3: a session in flight in a worker killed ended without a
    summary line and in no counter; the restart line said nothing of it."""
    from support.daemons import free_port  # noqa: PLC0415

    port = free_port()
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    site = make_site(tmp_path, {**WORKERS, "metrics": {"enabled": True, "port": port}})
    in_flight = ("smtpguard_sessions_in_flight", ())
    with running(site) as service, contextlib.ExitStack() as open_sessions:
        both_started(service)
        supervisor = service.process.pid
        for _ in range(4):
            s = open_sessions.enter_context(service.session())
            s.connect(UNTRUSTED_IP)
            s.helo("mail.sender.example")
            assert s.mail("<friend@sender.example>").kind == "continue"
        wait_until(lambda: totals(port)[in_flight] == 4)
        for victim in sorted(children(supervisor)):
            os.kill(victim, signal.SIGKILL)
            wait_until(functools.partial(replaced, directory, supervisor, victim))
        cut = re.findall(r"killed by signal 9 with (\d+) sessions? in flight", service.log())
        assert sum(map(int, cut)) == 4, service.log()
        # Review rev155 F4: what became of them, and marked as the worker's own lines
        # are, so that one grep for worker=N finds its crash and restart.
        assert "(cut: no summary line; the MTA answered them by its milter default_action)" in (
            service.log()
        )
        assert re.search(r"worker=(\d) worker \1 \(pid \d+\) was killed by signal 9", service.log())
        assert totals(port)[("smtpguard_worker_sessions_cut_total", ())] == 4


def test_a_hung_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    """A stopped worker sends no heartbeat: after worker_heartbeat_timeout the
    supervisor names it in the log, kills it, and a new worker serves in its place."""
    from support.daemons import free_port  # noqa: PLC0415

    port = free_port()
    site = make_site(
        tmp_path,
        {
            "milter": {"workers": 2, "worker_heartbeat_timeout": 2},
            "metrics": {"enabled": True, "port": port},
        },
    )
    hung = ("smtpguard_worker_restarts_total", (("reason", "hung"),))
    with running(site) as service:
        both_started(service)
        supervisor = service.process.pid
        before = children(supervisor)
        assert totals(port)[hung] == 0
        victim = min(before)
        os.kill(victim, signal.SIGSTOP)
        # Killed once silent for 2 s, restarted at once: allow for a loaded machine.
        wait_until(lambda: len(children(supervisor) - before) == 1, deadline=15)
        wait_until(lambda: len(children(supervisor)) == 2)
        assert victim not in children(supervisor)
        found = re.search(
            rf"worker (\d) \(pid {victim}\) hung: no heartbeat for (\S+) s"
            r" \(worker_heartbeat_timeout = 2 s\); killing it",
            service.log(),
        )
        assert found is not None, service.log()
        assert float(found.group(2)) >= 2
        assert f"(pid {victim}) was killed by signal 9" in service.log()
        assert totals(port)[hung] == 1
        # The other worker, busy or idle, kept beating: killed once, only this one.
        assert service.log().count(" hung: ") == 1
        assert (
            concurrently(10, threads=2, job=lambda: mail(service, "<a@sender.example>"))
            == ["continue"] * 10
        )
        assert totals(port)[("smtpguard_worker_restarts_total", (("reason", "signal"),))] == 0


def proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (utime to cstime) and resident bytes of ``pid``, read here from
    /proc independently of smtpguard."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    cpu = sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return cpu, pages * os.sysconf("SC_PAGE_SIZE")


def test_metrics_report_the_workers_cpu_and_memory(tmp_path: Path) -> None:
    """process_* is the supervisor's; the workers' CPU and memory have series of their
    own, and the CPU total does not go down when a worker dies."""
    from support.daemons import free_port  # noqa: PLC0415

    port = free_port()
    site = make_site(tmp_path, {**WORKERS, "metrics": {"enabled": True, "port": port}})
    cpu = ("smtpguard_workers_cpu_seconds_total", ())
    rss = ("smtpguard_workers_resident_memory_bytes", ())
    with running(site) as service:
        both_started(service)
        supervisor = service.process.pid
        workers = children(supervisor)

        def busy() -> bool:
            """A session costs well under a clock tick (10 ms) of CPU: serve some until
            the workers' CPU time is measurable."""
            concurrently(10, threads=2, job=lambda: mail(service, "<a@sender.example>"))
            return sum(proc_usage(pid)[0] for pid in workers) >= 0.05

        wait_until(busy, deadline=60)
        seen = [proc_usage(pid) for pid in workers]
        found = totals(port)
        # CPU only grows: at least what the workers had used just before the scrape.
        assert found[cpu] >= sum(c for c, _ in seen) >= 0.05
        # Each worker's resident size moves a little between the two reads.
        assert 0.8 * sum(r for _, r in seen) <= found[rss] <= 1.25 * sum(r for _, r in seen)
        # Not the supervisor's own: two workers that each hold the inherited runtime.
        assert found[rss] > found[("process_resident_memory_bytes", ())]

        # The one with more CPU time: the total would go down without it.
        victim = max(workers, key=lambda pid: proc_usage(pid)[0])
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(children(supervisor) - workers) == 1)
        wait_until(lambda: len(children(supervisor)) == 2)
        after = totals(port)
        assert after[cpu] >= found[cpu]
        assert after[rss] > 0


def test_the_heartbeat_watchdog_can_be_turned_on_by_a_reload(tmp_path: Path) -> None:
    """worker_heartbeat_timeout is not read only at start: the workers beat whether
    or not it is on, and the supervisor applies the reloaded value."""
    site = make_site(tmp_path, {"milter": {"workers": 2, "worker_heartbeat_timeout": 0}})
    original = site.config.read_text()
    with running(site) as service:
        both_started(service)
        supervisor = service.process.pid
        before = children(supervisor)
        victim = min(before)
        os.kill(victim, signal.SIGSTOP)
        try:
            site.config.write_text(
                original.replace("worker_heartbeat_timeout = 0", "worker_heartbeat_timeout = 2")
            )
            # The stopped worker cannot reload; the supervisor's validation is enough.
            service.process.send_signal(signal.SIGHUP)
            wait_until(lambda: "valid (generation 1)" in service.log())
            wait_until(lambda: len(children(supervisor) - before) == 1, deadline=15)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)
        assert f"(pid {victim}) hung: no heartbeat for " in service.log()
        assert "reload refused" not in service.log()


def test_a_killed_supervisor_is_named_and_its_metrics_directory_removed_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review rev113 F4: the workers of a supervisor killed outright said an ordinary
    "stopping", and its metrics directory (a megabyte) stayed behind at every such
    kill outside systemd. The next start removes it (named with a pid nobody has);
    tests/test_privileges.py: as root for milter.user."""
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(run))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    kill_supervisor_then_start_again(make_site(tmp_path, {**WORKERS, **metrics_on()}), run)


def test_orphaned_metrics_directories_that_cannot_go_never_stop_a_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev117 F2: names the service user chose ("²" or 20 digits as the pid)
    and a tree too deep to walk raised out of the start's clean-up, at every start."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    names = [f"smtpguard-metrics-{gone.pid}-ok", "smtpguard-metrics-\u00b2-x"]
    names.append("smtpguard-metrics-99999999999999999999-x")
    for name in names:
        (tmp_path / name).mkdir()
    deep = tmp_path / f"smtpguard-metrics-{gone.pid}-deep"
    levels = 1100
    for depth in range(levels + 1):
        os.mkdir(os.path.join(deep, *["d"] * depth))
    try:
        caplog.set_level(logging.INFO, logger="smtpguard")
        _remove_orphaned_metrics_dirs(str(tmp_path), frozenset({os.geteuid()}))
        left = sorted(p.name for p in tmp_path.iterdir())
        assert f"smtpguard-metrics-{gone.pid}-ok" not in left
        assert "smtpguard-metrics-\u00b2-x" in left
        assert "smtpguard-metrics-99999999999999999999-x" in left
        assert deep.name in left
        assert any(f"cannot remove {deep}" in r.getMessage() for r in caplog.records)
    finally:
        # Deepest first, without recursion: pytest's own clean-up would raise on it.
        for depth in range(levels, -1, -1):
            os.rmdir(os.path.join(deep, *["d"] * depth))
