"""The Prometheus endpoint of the running service."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from smtpguard.config import ConfigError, load_config
from smtpguard.metrics import (
    FILE_BYTES,
    MAX_SCRAPES,
    PrometheusMetrics,
    ReloadStatus,
    _never_fails,
    allocate_files,
)
from smtpguard.workerwatch import WorkersCollector, WorkerStats
from support.files import tmpfs
from support.mtclient import assert_reply
from support.polling import poll_for, scrape, trickle, wait_until
from support.service import ROOT, UNTRUSTED_IP, Running, make_site, running
from support.unbound import GOOD_IP, PTR_SERVFAIL_IP, DnsServer

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_decisions_stages_and_sessions_are_exported(tmp_path: Path) -> None:
    port = free_port()
    site = make_site(tmp_path, {"metrics": {"enabled": True, "port": port}})
    with running(site) as service:
        assert "smtpguard_sessions_in_flight 0.0" in scrape(port)
        with service.session() as s:
            s.connect(UNTRUSTED_IP)
            s.helo("mail.sender.example")
            assert s.mail("<spammer@bad.example>").kind == "reply"
            assert "smtpguard_sessions_in_flight 1.0" in scrape(port)
        text = scrape(port)
    assert (
        'smtpguard_decisions_total{action="reject",mode="enforce",reply_id="host_denies_sender"}'
        " 1.0" in text
    )
    assert 'smtpguard_stage_seconds_count{stage="mail"} 1.0' in text
    assert 'smtpguard_stage_seconds_count{stage="connect"} 1.0' in text


def test_metrics_endpoint_is_loopback_only_by_default(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[metrics]\nenabled = true\nlisten = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match=r"metrics\.listen: not a loopback address"):
        load_config(path)


PROMTOOL = "/usr/bin/promtool"
DOCS = ROOT / "docs"
HEADERS = [("From", "friend@sender.example"), ("To", "alice@example.com"), ("Subject", "hi")]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def accept_one(service: Running) -> None:
    with service.session() as s:
        s.connect(UNTRUSTED_IP)
        s.helo("mail.sender.example")
        assert s.mail("<friend@sender.example>").kind == "continue"
        assert s.rcpt("<alice@example.com>").kind == "continue"
        final, _mods, _early = s.message(HEADERS, "hello\r\n")
        assert final.kind in ("continue", "accept")


def refuse_one(service: Running) -> None:
    with service.session() as s:
        s.connect(UNTRUSTED_IP)
        s.helo("mail.sender.example")
        assert_reply(s.mail("<spammer@bad.example>"), "host_denies_sender")


#: Starts the service with 1,100 descriptors held open (not close-on-exec), so that
#: the ones it opens itself are numbered past select(2)'s 1024.
_HIGH_FDS = (
    "import os, sys\n"
    "held = [os.open('/dev/null', os.O_RDONLY) for _ in range(1100)]\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'smtpguard', *sys.argv[1:]])\n"
)


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.mark.parametrize("workers", [1, 2])
def test_silent_metrics_clients_hold_no_more_than_a_bound(tmp_path: Path, workers: int) -> None:
    """Review rev179 F1, F2: with one process, 1,100 connections to /metrics that said
    nothing took every descriptor (each a thread with no timeout) and every MTA session
    timed out; with workers, a burst made the supervisor's select() fail on a
    descriptor past 1023 and the service died. Now at most MAX_SCRAPES are served at
    once, each for REQUEST_SECONDS, and the rest closed as they come."""
    from support.daemons import free_port  # noqa: PLC0415

    port = free_port()
    extra = {"milter": {"workers": workers}, "metrics": {"enabled": True, "port": port}}
    site = make_site(tmp_path, extra)
    command = [sys.executable, "-c", _HIGH_FDS, "-c", str(site.config), "run"]
    with running(site, command) as service:
        pid = service.process.pid
        base = _fds(pid)
        silent = []
        for _ in range(300):
            with contextlib.suppress(OSError):
                silent.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        try:
            assert _fds(pid) <= base + MAX_SCRAPES + 8
            refuse_one(service)  # the milter answers meanwhile
            assert service.process.poll() is None, service.log()
        finally:
            for conn in silent:
                conn.close()
        assert "smtpguard_sessions" in scrape(port)
        assert service.process.poll() is None, service.log()


@pytest.mark.parametrize("workers", [1, 2])
def test_clients_that_trickle_their_request_are_cut_at_the_deadline(
    tmp_path: Path, workers: int
) -> None:
    """Review rev180 F4: with one process, MAX_SCRAPES clients sending a byte now and
    then (within the read timeout) held every slot for as long as they went on, and
    every scrape was refused."""
    from support.daemons import free_port  # noqa: PLC0415

    port = free_port()
    extra = {"milter": {"workers": workers}, "metrics": {"enabled": True, "port": port}}
    site = make_site(tmp_path, extra)
    stop = threading.Event()
    with running(site) as service:
        scrape(port)  # up
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_SCRAPES)]
        threads = [threading.Thread(target=trickle, args=(conn, stop, 0.5, 8)) for conn in slow]
        for thread in threads:
            thread.start()
        try:
            assert "smtpguard_sessions" in scrape(port, deadline=8)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert service.process.poll() is None


@pytest.mark.parametrize("workers", [1, 2])
def test_every_outcome_is_counted_and_promtool_accepts_the_text(
    tmp_path: Path, workers: int
) -> None:
    """With 2 workers the supervisor serves the sum over the workers (multiprocess mode)."""
    port = free_port()
    extra = {"metrics": {"enabled": True, "port": port}, "milter": {"workers": workers}}
    site = make_site(tmp_path, extra)
    with running(site) as service:
        for _ in range(2):
            accept_one(service)
        refuse_one(service)
        accepts = ("smtpguard_transactions_total", (("outcome", "accept"), ("reply_id", "none")))

        def settled() -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] | None:
            text = scrape(port)
            now = samples(text)
            idle = now.get(("smtpguard_sessions_in_flight", ())) == 0.0
            return (text, now) if now.get(accepts) == 2.0 and idle else None

        text, found = poll_for(settled, what=lambda: scrape(port))
    reject = (("outcome", "reject"), ("reply_id", "host_denies_sender"))
    assert found[("smtpguard_transactions_total", reject)] == 1.0
    assert found[("smtpguard_sessions_total", ())] == 3.0
    assert found[("smtpguard_transaction_seconds_count", ())] == 3.0
    assert found[("smtpguard_check_verdicts_total", (("check", "sender_deny"), ("verdict", "hit")))]
    assert found[("smtpguard_check_verdicts_total", (("check", "relay"), ("verdict", "pass")))]
    assert found[("smtpguard_stage_seconds_count", (("stage", "eom"),))] == 2.0
    # Present from the start, so that ratios over them exist before the first failure.
    assert found[("smtpguard_dns_lookups_total", (("status", "servfail"),))] == 0.0
    # Review rev133 F5: increase() starts a series at its first sample, so one that
    # appears with its first error or deferral missed that one (an alert a step late).
    assert found[("smtpguard_backend_errors_total", (("backend", "mailbox"),))] == 0.0
    assert found[("smtpguard_backend_errors_total", (("backend", "blacklist"),))] == 0.0
    # rev142 F6; a message past limits.max_header_fields is a refusal, no fault (rev165 F1).
    assert found[("smtpguard_backend_errors_total", (("backend", "adapter"),))] == 0.0
    flood = ("smtpguard_backend_errors_total", (("backend", "limits.max_header_fields"),))
    assert flood not in found
    for reply_id in ("internal_error", "database_temp_error"):
        tempfail = (("outcome", "tempfail"), ("reply_id", reply_id))
        assert found[("smtpguard_transactions_total", tempfail)] == 0.0
    build = [k for k in found if k[0] == "smtpguard_build_info"]
    assert len(build) == 1
    assert found[build[0]] == 1.0
    assert dict(build[0][1])["version"]
    assert found[("process_resident_memory_bytes", ())] > 0
    # No label value is an address or an IP: the label sets are closed.
    assert UNTRUSTED_IP not in text
    assert "bad.example" not in text
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_refused_reload_shows_in_the_metrics(tmp_path: Path, workers: int) -> None:
    """Review rev113 F3: a refused reload (here a key that needs a restart, which
    check-config cannot see) kept the old configuration with nothing but a log line."""
    port = free_port()
    extra = {"metrics": {"enabled": True, "port": port}, "milter": {"workers": workers}}
    site = make_site(tmp_path, extra)
    original = site.config.read_text()
    ok = ("smtpguard_config_last_reload_successful", ())
    when = ("smtpguard_config_last_reload_success_timestamp_seconds", ())
    with running(site) as service:
        started = samples(scrape(port))
        assert started[ok] == 1.0
        assert started[when] > 0
        site.config.write_text(original.replace("[milter]\n", "[milter]\ntimeout = 60\n", 1))
        service.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in service.log())
        refused = samples(scrape(port))
        assert (refused[ok], refused[when]) == (0.0, started[when])
        site.config.write_text(original)
        service.process.send_signal(signal.SIGHUP)
        wait_until(lambda: samples(scrape(port))[ok] == 1.0)
        assert samples(scrape(port))[when] > started[when]
        if workers == 1:
            return
        # Review rev155 F4: which configuration each worker runs (the refused reload
        # made no generation).
        assert started[("smtpguard_config_generation", ())] == 0.0
        running_now = ("smtpguard_worker_config_generation", (("worker", "1"),))
        assert started[running_now] == 0.0
        applied = re.compile(r"worker=\d reloaded configuration from \S+ \(generation 1\)")
        wait_until(lambda: len(applied.findall(service.log())) == 2)
        reloaded = samples(scrape(port))
        assert reloaded[("smtpguard_config_generation", ())] == 1.0
        generation = "smtpguard_worker_config_generation"
        assert [reloaded[(generation, (("worker", n),))] for n in "12"] == [1.0, 1.0]


def test_dns_lookups_are_counted_by_status(tmp_path: Path, unbound: DnsServer) -> None:
    port = free_port()
    dns = {"nameservers": ["127.0.0.1"], "port": unbound.port, "timeout": 1.0}
    site = make_site(tmp_path, {"metrics": {"enabled": True, "port": port}, "dns": dns})
    with running(site) as service:
        with service.session() as s:
            s.connect(GOOD_IP, "mx.good.test")
            s.helo("mx.good.test")
            assert s.mail("<someone@good.test>").kind == "continue"
        with service.session() as s:
            s.connect(PTR_SERVFAIL_IP)
            s.helo("mx.good.test")
            s.mail("<someone@good.test>")
        found = samples(scrape(port))
    assert found[("smtpguard_dns_lookups_total", (("status", "ok"),))] >= 3
    assert found[("smtpguard_dns_lookups_total", (("status", "servfail"),))] >= 1
    assert found[("smtpguard_dns_cache_lookups_total", (("result", "miss"),))] >= 4


def test_metric_names_are_the_documented_ones() -> None:
    """Every metric is built in PrometheusMetrics.__init__ (a worker supervisor in
    multiprocess mode needs them all in one place), or by the supervisor's own
    collector; docs/observability.md lists them all."""
    registry = CollectorRegistry()
    PrometheusMetrics(registry, process_collector=False)
    registry.register(WorkersCollector(WorkerStats(), list))
    registry.register(ReloadStatus())
    names = {f.name for f in registry.collect()}
    documented = set(re.findall(r"`(smtpguard_[a-z_]+)`", (DOCS / "observability.md").read_text()))
    assert names == {n.removesuffix("_total") for n in documented}


def test_a_metric_that_cannot_be_written_never_fails_the_session(tmp_path: Path) -> None:
    """Review rev43: a worker whose multiprocess directory it cannot write (files are
    per process: a forked worker opens its own) tempfailed every session, as
    session_opened raised in the driver. Metrics go off instead, with one error line."""
    code = (
        "import logging, os, shutil, sys\n"
        "logging.basicConfig(stream=sys.stdout, format='%(levelname)s %(message)s')\n"
        "from smtpguard.metrics import PrometheusMetrics\n"
        "m = PrometheusMetrics()\n"
        "shutil.rmtree(os.environ['PROMETHEUS_MULTIPROC_DIR'])\n"
        "if os.fork() == 0:\n"
        "    m.session_opened(); m.decision('x', 'enforce', 'reject'); m.session_closed()\n"
        "    print('off' if m.off else 'on', flush=True)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
    )
    (tmp_path / "metrics").mkdir()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "PYTHONPATH": str(ROOT / "milter"),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "off"
    errors = [line for line in lines if line.startswith("ERROR metrics: cannot record")]
    assert len(errors) == 1
    assert "metrics off in this process" in errors[0]


def test_two_threads_failing_at_once_turn_metrics_off_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A CI run: two sessions' threads of one worker failed to record at once, and the
    worker logged "metrics off" twice (and told its supervisor twice)."""
    both_inside = threading.Barrier(2)

    class Failing(PrometheusMetrics):
        @_never_fails
        def record(self: PrometheusMetrics, /) -> None:
            both_inside.wait(timeout=5)
            raise OSError("gone")

    metrics = Failing(CollectorRegistry(), process_collector=False)
    told: list[bool] = []
    metrics.when_off = lambda: told.append(True)
    with caplog.at_level(logging.ERROR, "smtpguard"):
        threads = [threading.Thread(target=metrics.record) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=5)
    assert metrics.off
    assert [r.getMessage() for r in caplog.records].count(
        "metrics: cannot record (gone); metrics off in this process"
    ) == 1
    assert told == [True]


def run_child(code: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a Python of its own (prometheus-client picks multiprocess mode at
    import), its log lines on stdout: a SIGBUS kills that process, not pytest."""
    prelude = (
        "import logging, os, sys\n"
        "logging.basicConfig(stream=sys.stdout, format='%(levelname)s %(message)s')\n"
        "from smtpguard.metrics import PrometheusMetrics\n"
        "def record(m):\n"
        "    m.session_opened(); m.decision('rbl_deny', 'enforce', 'reject')\n"
        "    m.check_verdict('rbl', 'hit'); m.stage_seconds('mail', 0.001)\n"
        "    m.transaction('reject', 'rbl_deny', 0.01); m.session_closed()\n"
    )
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "PYTHONPATH": f"{ROOT / 'milter'}:{ROOT / 'tests'}",
    }
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_a_full_metrics_directory_turns_metrics_off_instead_of_sigbus(tmp_path: Path) -> None:
    """Review rev47 (documented then, fixed now): prometheus-client makes its files
    sparse, and on a full tmpfs the first value written was SIGBUS: the supervisor died
    at its start, a worker at its first metric and again after each restart. The files
    are allocated first now; ENOSPC turns metrics off with one line, and leaves no
    file a scrape would choke on."""
    with tmpfs(tmp_path / "metrics", "256k", fill=True) as full:
        done = run_child(
            "m = PrometheusMetrics(process_collector=False)\n"
            "record(m)\n"
            "d = os.environ['PROMETHEUS_MULTIPROC_DIR']\n"
            "print('off' if m.off else 'on', sorted(os.listdir(d)))\n",
            full,
        )
    assert done.returncode == 0, (done.returncode, done.stderr)
    lines = done.stdout.splitlines()
    assert lines[-1] == "off ['filler']"
    errors = [line for line in lines if line.startswith("ERROR metrics: cannot record")]
    assert len(errors) == 1
    assert "No space left on device" in errors[0]


def test_a_worker_without_room_for_its_files_goes_on_without_metrics(tmp_path: Path) -> None:
    """Room for the supervisor's files, none left for a worker's: the worker (a fork,
    as the supervisor makes it) tells the supervisor and records nothing; the
    supervisor's own files go on working."""
    with tmpfs(tmp_path / "metrics", "512k") as directory:
        done = run_child(
            "from support.files import fill_up\n"
            "from pathlib import Path\n"
            "m = PrometheusMetrics(process_collector=False)\n"
            "fill_up(Path(os.environ['PROMETHEUS_MULTIPROC_DIR']))\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    m.when_off = lambda: print('told', flush=True)\n"
            "    m.prepare_process(); record(m)\n"
            "    print('worker', 'off' if m.off else 'on', flush=True)\n"
            "    os._exit(0)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "record(m)\n"
            "print('status', status, 'supervisor', 'off' if m.off else 'on', flush=True)\n",
            directory,
        )
        files = sorted(p.name for p in directory.iterdir())
    assert done.returncode == 0, (done.returncode, done.stderr)
    lines = done.stdout.splitlines()
    assert lines[-3:-1] == ["told", "worker off"], lines
    assert lines[-1] == "status 0 supervisor on"
    assert sum(line.startswith("ERROR metrics: cannot record") for line in lines) == 1
    assert len(files) == 1 + len(FILE_BYTES)  # the filler and the supervisor's


def test_files_are_made_allocated_and_a_grown_one_is_kept(tmp_path: Path) -> None:
    grown = tmp_path / "counter_7.db"
    with grown.open("wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00")
        f.truncate(1 << 19)  # as the client grows a file: sparse
    allocate_files(str(tmp_path), 7)
    for prefix, size in FILE_BYTES.items():
        path = tmp_path / f"{prefix}_7.db"
        stat = path.stat()
        assert stat.st_size == max(size, 1 << 19 if prefix == "counter" else 0)
        assert stat.st_blocks * 512 >= stat.st_size  # no hole left
    assert grown.read_bytes()[:8] == b"\x10\x00\x00\x00\x00\x00\x00\x00"


def test_every_label_value_fits_in_the_files_as_made(tmp_path: Path) -> None:
    """The files are made at FILE_BYTES; past that the client grows them sparse again.
    Every reply id, mode and action, every check and verdict, stage, outcome and
    backend (more than a service ever meets) fits."""
    modes, actions = ("enforce", "report", "dry_run"), ("pass", "held", "reject", "tempfail")
    code = (
        "import itertools\n"
        "from smtpguard.metrics import FILE_BYTES, OUTCOMES, VERDICTS\n"
        "from smtpguard.pipeline import CHECK_CLASSES\n"
        "from smtpguard.replies import ALL_IDS\n"
        "from smtpguard.checks import Stage\n"
        "m = PrometheusMetrics(process_collector=False)\n"
        f"for r, mode, act in itertools.product(ALL_IDS, {modes!r}, {actions!r}):\n"
        "    m.decision(r, mode, act)\n"
        "for c, v in itertools.product([c.name for c in CHECK_CLASSES], VERDICTS):\n"
        "    m.check_verdict(c, v); m.backend_error(c)\n"
        "for s in Stage: m.stage_seconds(s.value, 0.001)\n"
        "for o, r in itertools.product(OUTCOMES, [*ALL_IDS, 'none']):\n"
        "    m.transaction(o, r, 0.1)\n"
        "d = os.environ['PROMETHEUS_MULTIPROC_DIR']\n"
        "for prefix, size in FILE_BYTES.items():\n"
        "    got = os.path.getsize(os.path.join(d, f'{prefix}_{os.getpid()}.db'))\n"
        "    print(prefix, got, size, flush=True)\n"
        "print('off' if m.off else 'on')\n"
    )
    done = run_child(code, tmp_path)
    assert done.returncode == 0, done.stderr
    *sizes, state = done.stdout.splitlines()
    assert state == "on"
    assert len(sizes) == len(FILE_BYTES)
    for line in sizes:
        prefix, got, size = line.split()
        assert got == size, f"{prefix}: grown to {got}"
