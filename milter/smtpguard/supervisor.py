"""Worker processes behind one milter socket (``[milter] workers`` > 1).

One Python process runs one callback at a time, so one smtpguard process uses one
core however many sessions libmilter's threads carry. rspamd and milter-manager
answer this with worker processes, and libmilter allows it: ``smfi_opensocket`` opens
the listening socket once and keeps it in a global, and ``smfi_main`` (``mi_listener``)
accepts on that global, calling ``mi_opensocket`` again only to find it already open.
So the supervisor (this module, the process systemd started):

1. builds and validates the runtime (a broken config stops the start, exit 2);
2. registers the callbacks and opens the socket (:func:`smtpguard.adapter.open_socket`:
   owner, group and mode as for one process), makes the listening socket non-blocking
   and drops privileges;
3. forks the workers. Nothing here has started a thread yet (the resolver's loop
   starts at the first lookup, the metrics endpoint is served from this process's
   own loop), so each worker is a clean copy: the runtime, the registered callbacks
   and the socket, with no lock held by a thread that is not there. Each worker runs
   :func:`smtpguard.adapter.run`, the single-process loop;
4. waits: SIGCHLD restarts a dead worker (at once the first time, then with a
   doubling delay up to :data:`MAX_BACKOFF` while workers keep dying within
   :data:`STABLE_AFTER` seconds of their start, :data:`ALONE_BACKOFF` at most while
   no worker is up), a worker whose heartbeat stopped for
   ``worker_heartbeat_timeout`` seconds is killed and so restarted
   (:mod:`smtpguard.workerwatch`), SIGHUP validates the config once here and only
   then tells every worker to reload (a broken config changes nothing anywhere),
   SIGTERM and SIGINT tell every worker to drain and wait for them. SIGUSR1 and
   SIGUSR2 are SIGHUP and SIGTERM here too, as in one process (what the supervisor
   itself sends its workers: a hand that sends them to the service gets the same).

A reload reads the files once, here: the config's bytes validated, with those of every
data file the config names (reply table, rules, pattern and IP list files:
:func:`smtpguard.datafiles.recording`), go to the workers through :class:`SharedText`
with a generation number, and a worker builds its runtime from those, never from the
files. A file read again by each worker could have changed in between (an editor saving
twice, a broken version written a moment later) and left workers on different
policies, or on a config nobody validated.

Why non-blocking: every worker's listener waits in ``select`` on the same socket, all
wake for one connection, one ``accept`` wins; with a blocking socket the others would
sit in ``accept`` until the next connection and not see a stop request (libmilter
checks it between polls). libmilter treats ``EAGAIN`` from ``accept`` as "try again",
and on Linux an accepted socket does not inherit ``O_NONBLOCK``.

Shared state: the session limit is a :class:`~smtpguard.state.SharedSessionGate` in
memory shared by every worker; the embedded same-size counters are a memory-mapped file
(:func:`smtpguard.app.counter_path`); the blacklist and the directory were files (or
Redis) already. Metrics use prometheus-client's multiprocess mode: every worker writes
its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and the supervisor serves their sum
(a dead worker's live gauges are removed, its counters folded into one retired set:
:func:`retire_metrics`).

A worker whose libmilter loop ends on its own closes the listening socket and, not
running as root, removes the unix socket's path (libmilter's ``mi_closener``) that the
other workers still listen behind. The supervisor notices the path is gone and stops
the whole service with exit status 1, so that the service manager starts it afresh
instead of leaving a milter nobody can reach.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import gc
import hashlib
import io
import logging
import math
import mmap
import operator
import os
import re

# os.wait4 imports it at every call: imported now, before the privilege drop, so a
# milter.user who cannot read the interpreter's library does not kill the supervisor
# at its first reap (review rev58: pyenv under /root, mode 0700).
import resource  # noqa: F401
import select
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Final

from smtpguard import __version__
from smtpguard.adapter import (
    App,
    drop_privileges,
    install,
    open_socket,
    run,
)
from smtpguard.app import Runtime, build_runtime, retire
from smtpguard.config import Config, ConfigError, MilterConfig, load_config
from smtpguard.counters import CounterError, SharedCounter
from smtpguard.datafiles import recording, replaying
from smtpguard.logsetup import ABOUT_WORKER, set_level
from smtpguard.metrics import MAX_SCRAPES, ReloadStatus
from smtpguard.metrics import REQUEST_SECONDS as METRICS_REQUEST_SECONDS
from smtpguard.pipeline import CHECK_NAMES
from smtpguard.probes import key_problems, site_problems
from smtpguard.scanners.command import HOOK_MARK, record_groups_in
from smtpguard.signals import RELOAD_SIGNAL, SERVICE_SIGNALS, STOP_SIGNAL
from smtpguard.sockets import (
    StartError,
    libmilter_address,
    listening_sockets,
    remove_unix,
    unix_path,
)
from smtpguard.state import RedisBlacklist, SharedSessionGate, SqliteBlacklist, StateError
from smtpguard.workerwatch import (
    HEARTBEAT_INTERVAL,
    LOCK_HOLDER_SILENCE,
    Flags,
    Generations,
    Heartbeats,
    HookGroups,
    WorkersCollector,
    WorkerStats,
    flock_holders,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from smtpguard.metrics import PrometheusMetrics

log = logging.getLogger("smtpguard")

#: A worker that ran this long before dying is restarted at once.
STABLE_AFTER: Final = 10.0
#: The longest wait before restarting a worker that keeps dying at start.
MAX_BACKOFF: Final = 30.0
#: The longest wait before a restart while no worker at all is up.
ALONE_BACKOFF: Final = 2.0
#: Marks a metrics directory this service created (and removes at the end).
_OWN_METRICS_DIR: Final = "SMTPGUARD_OWN_METRICS_DIR"
_SIGNALS: Final = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGCHLD,
    RELOAD_SIGNAL,
    STOP_SIGNAL,
)
_PR_SET_PDEATHSIG: Final = 1
_PR_SET_CHILD_SUBREAPER: Final = 36
#: Seconds between two looks at the socket file (see Supervisor._check_socket).
SOCKET_CHECK_INTERVAL: Final = 1.0
#: The largest config file a reload reads.
MAX_CONFIG_BYTES: Final = 4 * 1024 * 1024
#: The most a reload hands to the workers: the config and every data file it names
#: (the shared memory's size; pages are only used as far as a reload writes them).
MAX_RELOAD_BYTES: Final = 64 * 1024 * 1024
#: Settings read once at start: the socket and its permissions, the privileges,
#: libmilter's registration and timeout, the log destination, the processes and the
#: metrics endpoint. A reload that changes one is refused rather than reported as
#: valid while the old value stays in force. (log_level applies on reload.)
RESTART_ONLY: Final = (
    (
        "milter",
        (
            "socket",
            "socket_mode",
            "socket_owner",
            "socket_group",
            "user",
            "name",
            "timeout",
            "log",
            "log_facility",
            "log_socket",
            "workers",
            "cpu_affinity",
        ),
    ),
    ("metrics", ("enabled", "listen", "port")),
)


@dataclass
class Worker:
    number: int
    pid: int = 0
    started: float = 0.0
    #: Deaths in a row, each within STABLE_AFTER of its start.
    quick_deaths: int = 0
    #: When to start it again (monotonic), while it is down.
    due: float | None = 0.0
    #: Killed by the heartbeat watchdog, not yet reaped.
    hung: bool = False


def reloader(
    app: App,
    text: Callable[[], bytes] | None = None,
    target: Path | None = None,
    *,
    announce: bool = True,
) -> Callable[[], Runtime]:
    """The reload of a running service: the config checked as at start, on top of the
    running runtime (whose resolver and counters are kept when unchanged).

    ``text`` gives the config's bytes (a worker: those the supervisor validated) and
    ``target`` the file they were read from (the path the service was started with,
    links followed); by default that path is read again, and its links followed again
    (one process). ``announce``: see :func:`~smtpguard.app.build_runtime`."""

    def reload() -> Runtime:
        running = app.runtime.config
        data = None if text is None else text()
        new = load_config(running.path, known_checks=CHECK_NAMES, data=data, target=target)
        check_reloadable(running, new)
        check_still_receives(running, new)
        if announce:
            # What the start warns about, a reload says too (review rev224 L2: a manual
            # SIGHUP skipped the check-config that systemd's reload runs).
            for problem in key_problems(new):
                log.warning("reload: %s", problem)
        return build_runtime(new, previous=app.runtime, announce=announce)

    return reload


_COUNT = struct.Struct("=I")
_ENTRY = struct.Struct("=IQ")


def pack_files(config: bytes, files: Mapping[str, bytes], target: Path | None = None) -> bytes:
    """The config's bytes, the file they were read from (``target``) and the data
    files' bytes (by absolute path) as one text for :class:`SharedText`."""
    where = b"" if target is None else str(target).encode("utf-8", "surrogateescape")
    out = [_COUNT.pack(len(files)), _ENTRY.pack(len(where), len(config)), where, config]
    for path, data in files.items():
        name = path.encode("utf-8", "surrogateescape")
        out += [_ENTRY.pack(len(name), len(data)), name, data]
    return b"".join(out)


def unpack_files(text: bytes) -> tuple[bytes, dict[str, bytes], Path | None]:
    """What :func:`pack_files` packed: the config's bytes, the data files', the config
    file."""
    view = memoryview(text)
    (count,) = _COUNT.unpack_from(view, 0)
    at = _COUNT.size
    entries: list[tuple[str, bytes]] = []
    for _ in range(count + 1):
        name_size, size = _ENTRY.unpack_from(view, at)
        at += _ENTRY.size
        name = bytes(view[at : at + name_size]).decode("utf-8", "surrogateescape")
        at += name_size
        entries.append((name, bytes(view[at : at + size])))
        at += size
    where, config = entries[0]
    return config, dict(entries[1:]), Path(where) if where else None


def check_still_receives(running: Config, new: Config) -> None:
    """Refuse a reload that leaves a site that received mail for its domains with none
    (site.local_domains and relay_domains emptied): every stranger's recipient would be
    refused as relaying, for good (review rev224 L2: check-config refuses it, a manual
    SIGHUP applied it). A site that had none keeps reloading as it is."""
    gone = site_problems(new)
    if gone and not site_problems(running):
        problem = gone[0]
        raise ConfigError(
            new.file, problem.key, f"{problem.message}; the running configuration is kept"
        )


def check_reloadable(running: Config, new: Config) -> None:
    """Raise :class:`ConfigError` naming the first :data:`RESTART_ONLY` setting that
    ``new`` changes."""
    for section, keys in RESTART_ONLY:
        for key in keys:
            if getattr(getattr(new, section), key) != getattr(getattr(running, section), key):
                raise ConfigError(new.file, f"{section}.{key}", f"changing {key} needs a restart")


def read_config(path: Path) -> bytes:
    """The config file's bytes for a reload, at most :data:`MAX_CONFIG_BYTES`."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read file: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            path,
            "",
            f"larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB, more than a reload hands"
            " to the workers (a restart reads it)",
        )
    return data


class SharedText:
    """Bytes the supervisor publishes and every worker reads, with a generation number.

    Anonymous shared memory (``MAP_SHARED``), mapped before the first fork, so every
    worker, also one restarted later, sees what the supervisor writes afterwards. No
    lock: a worker killed while holding one would stop every reload. Instead the writer
    makes a sequence number odd while it writes and even again after, and stores a
    digest of the text; a reader keeps a copy only when the sequence number was the
    same even value before and after and the digest matches, else it reads again.
    Only the supervisor writes.
    """

    _HEAD = struct.Struct("=QQQ32s")  # sequence, generation, length, SHA-256
    _TRIES = 1000

    def __init__(self, size: int) -> None:
        self.size = size
        self._map = mmap.mmap(-1, self._HEAD.size + size, flags=mmap.MAP_SHARED)
        self._sequence = 0
        self.publish(0, b"")

    def publish(self, generation: int, data: bytes) -> None:
        if len(data) > self.size:
            raise ValueError(f"{len(data)} bytes, more than {self.size}")
        self._sequence += 1
        struct.pack_into("=Q", self._map, 0, self._sequence)
        digest = hashlib.sha256(data).digest()
        struct.pack_into("=QQ32s", self._map, 8, generation, len(data), digest)
        self._map[self._HEAD.size : self._HEAD.size + len(data)] = data
        self._sequence += 1
        struct.pack_into("=Q", self._map, 0, self._sequence)
        # The pages past the text go back to the system, in every process that maps
        # them: a reload with a large IP list kept its size resident for good after
        # the list shrank (review rev51).
        page = mmap.PAGESIZE
        unused = -(-(self._HEAD.size + len(data)) // page) * page
        if unused < len(self._map):
            # Memory only: a kernel that refuses must not fail the reload.
            with contextlib.suppress(OSError):
                self._map.madvise(mmap.MADV_REMOVE, unused, len(self._map) - unused)

    def read(self) -> tuple[int, bytes]:
        """The generation and text published last (generation 0: nothing yet)."""
        head = self._HEAD
        for _ in range(self._TRIES):
            before, generation, length, digest = head.unpack_from(self._map, 0)
            if before % 2 == 0 and length <= self.size:
                data = self._map[head.size : head.size + length]
                (after,) = struct.unpack_from("=Q", self._map, 0)
                if after == before and hashlib.sha256(data).digest() == digest:
                    return generation, data
            time.sleep(0.001)
        raise RuntimeError("the published configuration kept changing while read")

    def close(self) -> None:
        self._map.close()


def prepare_metrics(config: Config) -> None:
    """Put prometheus-client in multiprocess mode before any metric exists.

    The client chooses the mode once, when it is imported, from
    ``PROMETHEUS_MULTIPROC_DIR``. A directory given that way (systemd:
    ``Environment=PROMETHEUS_MULTIPROC_DIR=/run/smtpguard/metrics``) is emptied of an
    earlier run's files; otherwise one is created under ``$RUNTIME_DIRECTORY`` or the
    temporary directory and removed at the end. If the client was imported before
    (by a module that needs it at import time), this process runs itself again with
    the variable set, keeping its pid.
    """
    if not config.metrics.enabled:
        return
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not given:
        parent = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or tempfile.gettempdir()
        _remove_orphaned_metrics_dirs(parent, _metrics_dir_owners(config.milter.user))
        # The pid in the name tells a later start whether its owner still runs.
        given = tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-", dir=parent)
        os.environ[_OWN_METRICS_DIR] = given
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = given
    elif os.environ.get(_OWN_METRICS_DIR) != given:
        # The operator's directory: an earlier run's files would be added in.
        for stale in Path(given).glob("*.db"):
            stale.unlink()
    module = sys.modules.get("prometheus_client.values")
    if module is not None and module.ValueClass is module.MutexValue:
        log.debug("prometheus-client was imported before multiprocess mode: starting again")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # noqa: S606 - ourselves


class Supervisor:
    def __init__(self, config: Config, *, reload_bytes: int = MAX_RELOAD_BYTES) -> None:
        self.config = config
        self.gate = SharedSessionGate(config.limits.max_sessions, config.milter.workers)
        self.metrics: PrometheusMetrics | None = None
        self.registry: CollectorRegistry | None = None
        if config.metrics.enabled:
            self.metrics, self.registry = _multiprocess_metrics()
        # Built here, validated before anything is opened, and inherited by every worker.
        self.app = App(build_runtime(config, metrics=self.metrics), self.gate)
        #: The config text of the last valid reload, for the workers to apply; mapped
        #: here, before any fork. ``generation``: in the supervisor, the last one
        #: published; in a worker, the one its runtime was built from (0: the start's).
        self.published = SharedText(reload_bytes)
        self.generation = 0
        #: In a worker, its number (0 in the supervisor).
        self.number = 0
        self.workers = [Worker(n) for n in range(1, config.milter.workers + 1)]
        #: Mapped here, before any fork, like ``published``.
        self.heartbeats = Heartbeats(len(self.workers))
        #: The generation each worker runs, for /metrics; mapped here, like ``published``.
        self.generations = Generations(len(self.workers))
        #: Set by a worker whose metrics went off; mapped here, like ``published``.
        self.metrics_off = Flags(len(self.workers))
        #: Set by a worker once its metric files are made; mapped here, like the above.
        self.metrics_files = Flags(len(self.workers))
        #: Pids of running workers whose metric files were found removed (said once).
        self._files_gone: set[int] = set()
        #: The virus hook programs' process groups, per worker; mapped here too.
        self.hook_groups = HookGroups(len(self.workers))
        #: When the loop last checked the heartbeats, and since when it has been
        #: running without a pause (heartbeats older than that are not held against
        #: a worker: see _watch).
        self._watched = self._watch_from = time.monotonic()
        #: When the socket file was last compared with the one opened.
        self._socket_checked = time.monotonic()
        #: Metrics connections accepted, each with the time it must have spoken by.
        self._scrapes: dict[socket.socket, _Scrape] = {}
        #: Until when no metrics connection is accepted (out of descriptors).
        self._accept_paused = 0.0
        self.stats = WorkerStats()
        self.reloads = ReloadStatus()
        if self.registry is not None:
            self.registry.register(
                WorkersCollector(self.stats, self._pids, self._metrics_off, self._generations)
            )
            self.registry.register(self.reloads)
        #: The CPUs the service may use, read before any worker is bound to one.
        self.cpus = sorted(os.sched_getaffinity(0))
        self.stopping = False
        self.failed = False
        self.inode: tuple[int, int] | None = None
        self.listener = -1
        self.pid = os.getpid()
        self.http: _MetricsServer | None = None
        self._wake_r, self._wake_w = -1, -1

    # --- start and stop ----------------------------------------------------------

    def serve(self) -> int:
        config = self.config.milter
        # Held until the loop handles them: a SIGTERM during the start must stop the
        # service cleanly (socket removed), not kill it with the socket left behind.
        # SIGUSR1 and SIGUSR2 among them: a worker then has them held from its first
        # instruction (their default action would kill it).
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        install(self.app)
        _adopt_orphans()
        before = listening_sockets()
        self.inode = open_socket(config)
        opened = listening_sockets() - before
        if len(opened) == 1:
            self.listener = opened.pop()
            os.set_blocking(self.listener, False)
        else:
            log.warning("cannot tell libmilter's socket among %s: left blocking", sorted(opened))
        try:
            self._serve_metrics()
            if config.user:
                _give_metrics_dir(config.user)
                drop_privileges(config.user)
            self._prepare_files()
            log.info(
                "smtpguard %s starting on %s with %d workers (config %s)",
                __version__,
                libmilter_address(config.socket),
                config.workers,
                self.config.file,
            )
            self._loop()
        finally:
            path = unix_path(config.socket)
            if path is not None and self.inode is not None:
                remove_unix(path, self.inode)
        log.info("smtpguard stopped")
        return 1 if self.failed else 0

    def _prepare_files(self) -> None:
        """Create the state and counter files once, as the service user, before the
        workers would race to create them (the first sessions of two workers at once
        got "database is locked"). A file that cannot be made is left to the checks'
        own temporary-error handling, as with one process."""
        services = self.app.runtime.services
        if isinstance(services.blacklist, RedisBlacklist):
            # Its marker seen (or its absence said) once, before the workers inherit it.
            services.blacklist.prepare()
        for store in (services.blacklist, services.counter):
            if isinstance(store, SqliteBlacklist | SharedCounter):
                try:
                    store.prepare()
                except (StateError, CounterError) as exc:
                    log.error("cannot prepare %s: %s", store.path, exc)
                if isinstance(store, SharedCounter):
                    store.release()

    def _serve_metrics(self) -> None:
        if self.registry is None:
            return
        from prometheus_client.exposition import MetricsHandler  # noqa: PLC0415 - optional

        m = self.config.metrics
        server_class = _MetricsServer6 if ":" in m.listen else _MetricsServer
        handler = _read_head_handler(MetricsHandler.factory(self.registry))
        try:
            self.http = server_class((m.listen, m.port), handler)
        except OSError as exc:
            raise StartError(f"cannot bind {m.listen}:{m.port} (metrics): {exc.strerror}") from None
        # Accepted only when the loop has seen a client waiting, but one that went
        # away meanwhile would leave a blocking accept() waiting for the next.
        self.http.socket.setblocking(False)

    def _loop(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in _SIGNALS:
            signal.signal(sig, _note)
        signal.set_wakeup_fd(self._wake_w)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        try:
            while True:
                # Signals first: one that came during the start stops it before a fork.
                readable = self._wait()
                if self._wake_r in readable:
                    for number in _drain(self._wake_r):
                        self._signal(number)
                self._reap()
                self._watch()
                self._check_socket()
                self._serve_scrapes(readable)
                self._start_due()
                if self.stopping and not any(w.pid for w in self.workers):
                    return
        finally:
            # Held before their handlers go: a SIGHUP now would kill the process with
            # its default action (review rev87 F5: "killed by signal 1" after "stopped").
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            signal.set_wakeup_fd(-1)
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.close(self._wake_r)
            os.close(self._wake_w)
            for conn in self._scrapes:
                conn.close()
            self._scrapes.clear()
            if self.http is not None:
                self.http.server_close()

    def _wait(self) -> list[int]:
        fds = [self._wake_r]
        if self.http is not None and time.monotonic() >= self._accept_paused:
            fds.append(self.http.fileno())
        fds += [conn.fileno() for conn in self._scrapes]
        dues = [w.due for w in self.workers if w.due is not None and not self.stopping]
        dues += [scrape.deadline for scrape in self._scrapes.values()]
        if self._accept_paused > time.monotonic():
            dues.append(self._accept_paused)
        limit = self.app.runtime.config.milter.worker_heartbeat_timeout
        if limit > 0:
            dues.append(self._watched + min(HEARTBEAT_INTERVAL, limit / 4))
        if not self.stopping and self.inode is not None:
            dues.append(self._socket_checked + SOCKET_CHECK_INTERVAL)
        timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
        # poll(2), not select(2): a descriptor numbered 1024 or more made select raise
        # and the supervisor die (review rev179 F2: a burst of metrics connections).
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        try:
            events = poller.poll(None if timeout is None else math.ceil(timeout * 1000))
        except InterruptedError:
            return []
        return [fd for fd, _ in events]

    def _serve_scrapes(self, readable: list[int]) -> None:
        """Metrics requests, each read by this loop as it comes and answered once its
        head is complete: the loop also restarts workers and watches their heartbeats,
        and a client that connects and says nothing (or a byte a second) held it for two
        seconds each (review rev87 F4). One whose head is not complete within
        :data:`METRICS_REQUEST_SECONDS` is closed."""
        http = self.http
        if http is None:
            return
        now = time.monotonic()
        if http.fileno() in readable:
            self._accept_scrape(http, now)
        for conn, scrape in list(self._scrapes.items()):
            if conn.fileno() in readable and not scrape.read(conn):
                continue
            if not scrape.complete and now < scrape.deadline:
                continue
            del self._scrapes[conn]
            if not scrape.complete:
                _cut(conn)
                continue
            try:
                conn.setblocking(True)
                conn.settimeout(METRICS_REQUEST_SECONDS)  # bounds the answer
                http.heads[conn] = bytes(scrape.head)
                http.finish_request(conn, conn.getpeername())
            except Exception:
                log.debug("metrics request failed", exc_info=True)
            finally:
                http.heads.pop(conn, None)
                http.shutdown_request(conn)

    def _accept_scrape(self, http: _MetricsServer, now: float) -> None:
        """A metrics connection, read by the loop; one over :data:`MAX_SCRAPES` is
        closed at once (what clients that say nothing can hold is bounded)."""
        try:
            conn, _ = http.socket.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._accept_paused = now + _ACCEPT_PAUSE
            return
        if len(self._scrapes) >= MAX_SCRAPES:
            conn.close()
            return
        conn.setblocking(False)
        self._scrapes[conn] = _Scrape(now + METRICS_REQUEST_SECONDS)

    def _check_socket(self) -> None:
        """Stop (exit 1) when the socket file is gone or another's: the workers would
        serve on a listening socket no MTA can reach any more, and every message would
        wait for the MTA's default action, without a word in the log (review rev87 F1:
        an old instance's worker removed a new one's socket)."""
        if self.stopping or self.inode is None:
            return
        now = time.monotonic()
        if now - self._socket_checked < SOCKET_CHECK_INTERVAL:
            return
        self._socket_checked = now
        self._socket_lost("")

    def _socket_lost(self, before: str) -> bool:
        """Whether the socket file is gone or another's; if so, stop (exit 1), saying
        so after ``before`` (what else happened)."""
        if self._socket_intact():
            return False
        log.error(
            "%sthe socket %s was removed or replaced under the running service; stopping"
            " so that the service manager starts smtpguard afresh",
            f"{before} " if before else "",
            self.config.milter.socket,
        )
        self.failed = True
        self.stop("socket lost")
        return True

    def _signal(self, sig: int) -> None:
        # SIGUSR1 and SIGUSR2 mean here what they mean to one process (review rev88:
        # they stayed pending in the supervisor, and nothing said so).
        if sig in (signal.SIGHUP, RELOAD_SIGNAL) and not self.stopping:
            self._reload()
        elif sig in (signal.SIGTERM, signal.SIGINT, STOP_SIGNAL):
            self.stop(f"signal {sig}")

    def stop(self, why: str) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers; messages under way finish first", why, self._up())
            self.stopping = True
            # Nothing is forked any more: the workers hold the socket until they drain.
            if self.listener >= 0:
                os.close(self.listener)
                self.listener = -1
            # The MTA stops connecting (and tempfails at once, per its default action)
            # instead of reaching workers that only refuse new sessions while draining.
            path = unix_path(self.config.milter.socket)
            if path is not None and self.inode is not None:
                remove_unix(path, self.inode)
        for worker in self.workers:
            worker.due = None
            if worker.pid:
                _kill(worker.pid, STOP_SIGNAL)

    def _up(self) -> int:
        return sum(1 for w in self.workers if w.pid)

    def _metrics_off(self) -> int:
        """Running workers that record no metrics: those that said so (a file they
        could not make), and those whose files were removed under them (a temporary
        files cleaner, an ``rm -r`` of the directory): such a worker writes on into
        its maps of the removed files without an error, and the sums lose its counts
        with nothing saying so (review rev218 F3). Only a worker that said its files
        are made is looked at (rev221 L1: a slow start was taken for a removal)."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
        off = 0
        for worker in self.workers:
            if not worker.pid:
                continue
            if self.metrics_off.is_set(worker.number - 1):
                off += 1
                continue
            path = os.path.join(directory, f"counter_{worker.pid}.db")
            made = self.metrics_files.is_set(worker.number - 1)
            if not directory or not made or os.path.exists(path):
                continue
            off += 1
            if worker.pid not in self._files_gone:
                self._files_gone.add(worker.pid)
                log.error(
                    "metrics: worker %d (pid %d): its file %s is gone (removed with the"
                    " directory %s?): its counts are missing from /metrics until it is"
                    " restarted, and the sums read low",
                    worker.number,
                    worker.pid,
                    path,
                    directory,
                    extra={ABOUT_WORKER: worker.number},
                )
        return off

    def _pids(self) -> list[int]:
        """The running workers' pids (a dead one until it is reaped)."""
        return [w.pid for w in self.workers if w.pid]

    def _generations(self) -> tuple[int, list[tuple[int, int]]]:
        """The last generation published, and each running worker's (a slot read
        while its worker wrote it is left out of this scrape)."""
        running = [
            (w.number, found)
            for w in self.workers
            if w.pid and (found := self.generations.get(w.number - 1)) is not None
        ]
        return self.generation, running

    # --- reload ------------------------------------------------------------------

    def _reload(self) -> None:
        try:
            # The path the service started with, its links followed again: a deploy
            # may have switched one to another release (review rev51).
            target = self.app.runtime.config.path.resolve()
            data = read_config(target)
            with recording() as files:
                runtime = reloader(self.app, lambda: data, target)()
            text = pack_files(data, files, target)
            if len(text) > self.published.size:
                retire(runtime, self.app.runtime)
                raise ConfigError(
                    runtime.config.file,
                    "",
                    f"with its data files {len(text):,} bytes, more than the"
                    f" {self.published.size:,} a reload hands to the workers"
                    " (a restart reads them)",
                )
        except ConfigError as exc:
            log.error("reload refused, no worker changes its configuration: %s", exc.one_line())
            self.reloads.record(False)
            return
        except Exception:
            log.exception("reload failed, no worker changes its configuration")
            self.reloads.record(False)
            return
        self.reloads.record(True)
        # Workers started from now on inherit the new runtime; running ones build their
        # own from the same bytes, published before they are told. No session runs
        # here, so the old runtime's stores are closed at once.
        old = self.app.runtime
        self.generation += 1
        runtime = replace(runtime, generation=self.generation)
        self.app.swap(runtime)
        retire(old, runtime)
        set_level(runtime.config.milter.log_level)
        self.published.publish(self.generation, text)
        self._prepare_files()
        for worker in self.workers:
            if worker.pid:
                _kill(worker.pid, RELOAD_SIGNAL)
        log.info(
            "reload: configuration %s valid (generation %d), sent to %d workers",
            runtime.config.file,
            self.generation,
            self._up(),
        )

    def _apply_published(self) -> Runtime | None:
        """A worker's reload: the text the supervisor validated last, or None when this
        worker runs it already (a SIGHUP sent to the worker itself, or one that came
        during the reload that applied it)."""
        generation, data = self.published.read()
        if generation == self.generation:
            log.info(
                "reload: configuration generation %d applied already, nothing newer from"
                " the supervisor (pid %d), which alone reads the file",
                generation,
                self.pid,
            )
            return None
        config, files, target = unpack_files(data)
        with replaying(files):
            # The supervisor built the same text and logged its notes: one voice.
            runtime = reloader(self.app, lambda: config, target, announce=False)()
        self.generation = generation
        if self.number:
            self.generations.set(self.number - 1, generation)
        return replace(runtime, generation=generation)

    # --- workers -----------------------------------------------------------------

    def _start_due(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if self.stopping or worker.pid or worker.due is None or worker.due > now:
                continue
            self._fork(worker)

    def _fork(self, worker: Worker) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # Everything built so far moves to the permanent generation: the workers' cycle
        # collections then never write to these objects, so their pages stay shared
        # with the supervisor instead of being copied into every worker. Garbage first,
        # the frozen included: a runtime frozen at an earlier fork and replaced by a
        # reload since (its stores hold reference cycles) would otherwise stay for good.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        if threading.active_count() > 1:
            # Nothing here should start one (see the module documentation): a lock held
            # by a thread that the child does not have would never be released there.
            log.warning("forking with %d threads running", threading.active_count())
        # The new worker's first heartbeat comes after its start: until then, the
        # start counts as one (not the heartbeat of the worker before it).
        self.heartbeats.set(worker.number - 1, time.monotonic())
        # It inherits this process's runtime.
        self.generations.set(worker.number - 1, self.generation)
        # Held across the fork: the child has this process's handlers until it puts the
        # defaults back, and a signal sent to it before then would be taken for one of
        # the supervisor's (the wake-up pipe is shared).
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            # Out of processes or memory for now: the others serve on; try again.
            worker.due = time.monotonic() + 1.0
            log.error(
                "cannot start worker %d: %s; trying again in 1 s",
                worker.number,
                exc,
                extra={ABOUT_WORKER: worker.number},
            )
            return
        if pid == 0:
            code = 1
            try:
                code = self._worker(worker.number)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        worker.pid, worker.started, worker.due, worker.hung = pid, time.monotonic(), None, False
        log.info(
            "worker %d started (pid %d)", worker.number, pid, extra={ABOUT_WORKER: worker.number}
        )

    def _worker(self, number: int) -> int:
        """The child: undo the supervisor's signal set-up, then libmilter's loop."""
        signal.set_wakeup_fd(-1)
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # The fork held them all: the service's stay held, for adapter.run's sigwait (a
        # SIGHUP before it would end the worker); the rest (SIGCHLD) is let go.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(_SIGNALS) - SERVICE_SIGNALS)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.http is not None:
            self.http.socket.close()
        # Requests still being read when the fork came are the supervisor's: a copy
        # here kept each client's connection open for the worker's whole life, past
        # the supervisor's deadline (review rev202 L2).
        for conn in self._scrapes:
            conn.close()
        self._scrapes.clear()
        _die_with_parent(self.pid)
        _mark_worker(number)
        self.number = number
        self.gate.bind(number - 1)
        self.hook_groups.bind(number - 1)
        record_groups_in(self.hook_groups)
        if self.metrics is not None:
            self.metrics.when_off = functools.partial(self.metrics_off.set, number - 1, True)
            self.metrics.prepare_process()
            self.metrics_files.set(number - 1, True)
        cpu = worker_cpu(number, self.cpus, self.config.milter)
        if cpu is not None:
            bind({cpu})
        # Also when the watchdog is off: a reload may turn it on.
        self.heartbeats.start(number - 1)
        try:
            run(self.app, self._apply_published, end=_end_worker, supervisor=self.pid)
        except Exception:
            log.exception("failed; the worker exits 1")
            return 1
        finally:
            logging.shutdown()
        return 0

    def _reap(self) -> None:
        while True:
            try:
                pid, status, used = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is None:
                continue  # what a dead worker left running, adopted and ended (below)
            # Until now its CPU time was read from /proc; from now on it is this.
            self.stats.ended_cpu += used.ru_utime + used.ru_stime
            self._end_hooks(worker, pid, status)
            self._gone(worker, status)

    def _end_hooks(self, worker: Worker, pid: int, status: int) -> None:
        """Kill the virus hook programs worker ``pid`` left running: they came to this
        process (a child subreaper) when it died. Killed outright (the supervisor's own
        watchdog, the OOM killer) a worker could not end them, and they ran on without a
        timeout (review rev92 F2). Only processes whose environment names the worker
        (:data:`~smtpguard.scanners.command.HOOK_MARK`), or that are in a process group
        the worker recorded (:class:`~smtpguard.workerwatch.HookGroups`: a program that
        cleared its environment, review rev95 F4), are touched: what else came here (a
        daemon a start script left, any orphan when this is a container's pid 1) is
        someone else's, only reaped by :meth:`_reap` (review rev94 F1)."""
        groups = self.hook_groups.take(worker.number - 1)
        workers = {w.pid for w in self.workers}
        #: pid -> the process group to kill for it.
        targets: dict[int, int] = {}
        for found in _processes():
            if found.pid in workers:
                continue  # a recorded id reused by a worker started since
            if found.session in groups or found.group in groups:
                # A recorded id is the hook's session: every process in it is the
                # hook's, at any depth, also one that moved to a group of its own
                # (setpgid, job control; review rev97 F7), and a group never spans
                # sessions.
                targets[found.pid] = found.group
            elif found.parent == self.pid and _hook_of(found.pid) == pid:
                # A hook leads a session of its own: its group is what it started.
                targets[found.pid] = found.group if found.group == found.pid else 0
        killed = 0
        for target, group in targets.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group:
                    os.killpg(group, signal.SIGKILL)
                else:
                    os.kill(target, signal.SIGKILL)
                killed += 1
        if killed:
            level = logging.INFO if self.stopping or not status else logging.WARNING
            log.log(
                level,
                "worker %d (pid %d) left %d virus hook processes running: killed",
                worker.number,
                pid,
                killed,
                extra={ABOUT_WORKER: worker.number},
            )

    def _gone(self, worker: Worker, status: int) -> None:
        pid, worker.pid = worker.pid, 0
        self._files_gone.discard(pid)
        self.metrics_files.set(worker.number - 1, False)
        cut = self.gate.release(worker.number - 1)
        self.metrics_off.set(worker.number - 1, False)
        if self.registry is not None:
            retire_metrics(pid, os.environ["PROMETHEUS_MULTIPROC_DIR"])
        how = _describe(status)
        if self.stopping:
            log.info(
                "worker %d (pid %d) %s",
                worker.number,
                pid,
                how,
                extra={ABOUT_WORKER: worker.number},
            )
            return
        if self._socket_lost(f"worker {worker.number} (pid {pid}) {how} and"):
            return
        lived = time.monotonic() - worker.started
        reason = "hung" if worker.hung else "signal" if os.WIFSIGNALED(status) else "exit"
        self.stats.restarts[reason] += 1
        # Review rev133 F3: they end without a summary line, in no counter.
        self.stats.sessions_cut += cut
        how += (
            f" with {cut} session{'' if cut == 1 else 's'} in flight (cut: no summary line;"
            " the MTA answered them by its milter default_action)"
            if cut
            else ""
        )
        worker.quick_deaths = worker.quick_deaths + 1 if lived < STABLE_AFTER else 0
        delay = restart_delay(worker.quick_deaths)
        alone = ""
        if delay > ALONE_BACKOFF and not any(w.pid for w in self.workers):
            # No worker is up: the MTA's connections wait in the socket's queue, each
            # smtpd for its milter timeout (review rev124 F3: 27 s for one session
            # while four crash-looping workers all waited out MAX_BACKOFF).
            delay, alone = ALONE_BACKOFF, " (no worker is up)"
        worker.due = time.monotonic() + delay
        log.warning(
            "worker %d (pid %d) %s after %.1f s; restarting it %s%s",
            worker.number,
            pid,
            how,
            lived,
            "now" if delay == 0 else f"in {delay:.0f} s",
            alone,
            extra={ABOUT_WORKER: worker.number},
        )

    def _watch(self, now: float | None = None) -> None:
        """Kill every worker whose last heartbeat is older than
        ``worker_heartbeat_timeout`` (hung, see :mod:`smtpguard.workerwatch`), and
        sooner one that holds the same-size counter's lock (every worker's messages
        wait for it: :func:`~smtpguard.workerwatch.flock_holders`); :meth:`_gone` then
        starts it again as after any death. ``now``: the monotonic clock's time."""
        config = self.app.runtime.config
        limit = config.milter.worker_heartbeat_timeout
        now = time.monotonic() if now is None else now
        previous, self._watched = self._watched, now
        if limit <= 0:
            return
        if now - previous > limit / 2:
            # This loop did not run for a while (the host suspended, or the
            # supervisor starved or stopped itself): the workers' heartbeats went
            # unseen just as long, so silence is counted from now.
            self._watch_from = now
        holding = min(limit, max(LOCK_HOLDER_SILENCE, 2 * config.state.timeout))
        holders: set[int] | None = None
        for worker in self.workers:
            if not worker.pid or worker.hung:
                continue
            beat = self.heartbeats.last(worker.number - 1)
            if beat is None:
                continue  # being written: the worker is alive
            silent = now - max(beat, self._watch_from)
            if silent <= holding:
                continue
            if silent <= limit:
                if holders is None:
                    holders = self._counter_lock_holders()
                if worker.pid not in holders:
                    continue
                log.error(
                    "worker %d (pid %d) hung holding the same-size counter's lock: no"
                    " heartbeat for %.1f s, every worker's messages wait for it; killing it",
                    worker.number,
                    worker.pid,
                    silent,
                    extra={ABOUT_WORKER: worker.number},
                )
            else:
                log.error(
                    "worker %d (pid %d) hung: no heartbeat for %.1f s"
                    " (worker_heartbeat_timeout = %g s); killing it",
                    worker.number,
                    worker.pid,
                    silent,
                    limit,
                    extra={ABOUT_WORKER: worker.number},
                )
            worker.hung = True
            _kill(worker.pid, signal.SIGKILL)

    def _counter_lock_holders(self) -> set[int]:
        """The pids holding the shared same-size counter's file lock (none without one)."""
        counter = self.app.runtime.services.counter
        return flock_holders(counter.path) if isinstance(counter, SharedCounter) else set()

    def _socket_intact(self) -> bool:
        path = unix_path(self.config.milter.socket)
        if path is None or self.inode is None:
            return True
        try:
            info = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            # Cannot tell (a directory the service user may not search, review rev88
            # N4): a socket that cannot be seen is no socket gone.
            return True
        return (info.st_dev, info.st_ino) == self.inode


def worker_cpu(number: int, cpus: Sequence[int], config: MilterConfig) -> int | None:
    """The CPU worker ``number`` (from 1) is bound to, or None to leave it unbound.

    libmilter gives each session a thread and pymilter holds the GIL for each callback,
    so a worker's threads hand the GIL over many times per session. Across CPUs every
    hand-over wakes a thread on another CPU (an inter-processor interrupt, costly in a
    VM); on one CPU it is a local context switch. Measured on 2 CPUs, 2 workers at 10
    concurrent sessions: 1.6x the sessions per second and 0.7x the CPU per session
    (bench/README.md). One worker stays unbound: alone, it would leave the other CPUs
    to the MTA while its own is busy.

    A list of CPUs is the operator's choice and applies as given, worker N on its Nth
    entry in turn: on a host shared with the MTA, workers kept to fewer CPUs leave the
    MTA's processes the others, and each side's caches likely stay warm (bench/README.md,
    round 8)."""
    affinity = config.cpu_affinity
    if isinstance(affinity, tuple):
        return affinity[(number - 1) % len(affinity)]
    if affinity == "off" or config.workers < 2 or len(cpus) < 2:
        return None
    return cpus[(number - 1) % len(cpus)]


def bind(cpus: Collection[int]) -> None:
    """Run this process (and the threads it starts later) on ``cpus``; a failure is
    logged and the process left as it was."""
    # Called before libmilter's and the resolver's threads start: they inherit the
    # mask. A worker's log lines carry worker=N already.
    listed = ",".join(map(str, sorted(cpus)))
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        # A CPU outside the service's set, or a cpuset changed under us: serving
        # unbound is better than not serving.
        log.warning("cannot bind to CPU %s: %s; left unbound", listed, exc)
        return
    log.info("bound to CPU %s", listed)


def restart_delay(quick_deaths: int) -> float:
    """Seconds before a dead worker starts again, after ``quick_deaths`` deaths in a row
    that each came within :data:`STABLE_AFTER` of the start: the first at once (a
    killed worker is back in milliseconds), then 1, 2, 4 ... :data:`MAX_BACKOFF`."""
    if quick_deaths <= 1:
        return 0.0
    return float(min(2.0 ** (quick_deaths - 2), MAX_BACKOFF))


def supervise(config: Config) -> int:
    """``smtpguard run`` with ``workers`` > 1; the exit status (0, or 1 when the
    service had to stop because its socket was lost)."""
    try:
        return Supervisor(config).serve()
    finally:
        # Only the supervisor gets here: a worker ends with os._exit.
        _remove_metrics_dir()


def _multiprocess_metrics() -> tuple[PrometheusMetrics, CollectorRegistry]:
    from prometheus_client import CollectorRegistry, ProcessCollector  # noqa: PLC0415
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

    from smtpguard.metrics import PrometheusMetrics  # noqa: PLC0415 - after prepare_metrics

    # The workers' series: values go to files, whatever registry holds the objects.
    metrics = PrometheusMetrics(process_collector=False)
    served = CollectorRegistry()
    MultiProcessCollector(served)  # type: ignore[no-untyped-call]  # untyped
    ProcessCollector(registry=served)
    return metrics, served


#: How a dead worker's values join the retired ones, by file prefix: counters and
#: histograms keep counting (a total over the workers must not go down when one dies),
#: gauges keep their mode's meaning. ``gauge_all`` is not here: its series carry the
#: pid, and one worker's would not survive a merge. (Live gauges are deleted before.)
_RETIRE: Final[dict[str, Callable[[float, float], float]]] = {
    "counter": operator.add,
    "histogram": operator.add,
    "summary": operator.add,
    "gauge_sum": operator.add,
    "gauge_max": max,
    "gauge_min": min,
}
_RETIRED: Final = "retired"


def retire_metrics(pid: int, directory: str) -> None:
    """Drop the multiprocess files of the dead worker ``pid``, keeping what it counted.

    ``mark_process_dead`` removes only the files of live gauges (``livesum``): the
    counters' and histograms' files must stay, or the totals would go down. One set per
    dead worker would pile up under a crash loop (each scrape reads every file), so the
    values are added into one set of ``*_retired.db`` files, in the file format that
    ``MultiProcessCollector`` reads, and the worker's files are deleted. Only the
    supervisor's loop runs this and serves scrapes, so no scrape sees a value twice.
    """
    from prometheus_client import multiprocess  # noqa: PLC0415 - optional dependency

    try:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    except OSError as exc:
        log.error("metrics: cannot remove the live gauges of worker pid %d: %s", pid, exc)
    for dead in Path(directory).glob(f"*_{pid}.db"):
        prefix = dead.name.removesuffix(f"_{pid}.db")
        combine = _RETIRE.get(prefix)
        if combine is None:
            continue
        try:
            _retire_file(dead, dead.with_name(f"{prefix}_{_RETIRED}.db"), combine)
        except OSError as exc:
            # The directory, not the file: both files stay (the dead worker's values
            # still count) and the next death tries again.
            log.error("metrics: cannot retire %s of worker pid %d: %s", dead.name, pid, exc)
        except Exception as exc:  # noqa: BLE001 - the supervisor must go on restarting
            # A worker killed while prometheus_client set its file up leaves it empty
            # or torn. Its values are lost (the totals may go down once, which
            # Prometheus reads as a counter reset); the restart must not be.
            log.error("metrics: %s of worker pid %d unreadable, dropped: %s", dead.name, pid, exc)
            with contextlib.suppress(OSError):
                dead.unlink()


def _retire_file(dead: Path, retired: Path, combine: Callable[[float, float], float]) -> None:
    """Add the values of ``dead`` into ``retired`` and remove ``dead``."""
    from prometheus_client.mmap_dict import MmapedDict  # noqa: PLC0415 - optional

    values: dict[str, tuple[float, float]] = {}
    if retired.exists():
        try:
            values = {key: (value, stamp) for key, value, stamp in _file_values(retired)}
        except OSError:
            raise  # not the file's content: leave it (retire_metrics)
        except Exception as exc:  # noqa: BLE001 - a torn file: start the retired set again
            log.error("metrics: %s unreadable, started again: %s", retired.name, exc)
            retired.unlink()
    for key, value, stamp in _file_values(dead):
        old = values.get(key)
        values[key] = (value, stamp) if old is None else (combine(old[0], value), stamp)
    # A new file, its blocks allocated before MmapedDict maps it: a sparse one on a
    # full tmpfs is SIGBUS at the first write, which killed the supervisor (review
    # rev43); ENOSPC here is an OSError (retire_metrics). Then put in place at once.
    fresh = retired.with_name(retired.name + ".new")
    with open(fresh, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, _mmap_size(values))
    out = MmapedDict(str(fresh))  # type: ignore[no-untyped-call]  # untyped
    try:
        for key, (value, stamp) in values.items():
            out.write_value(key, value, stamp)  # type: ignore[no-untyped-call]
    finally:
        out.close()  # type: ignore[no-untyped-call]
    os.replace(fresh, retired)
    # Deleted after the retired file holds its values: a supervisor killed in between
    # counts them twice until the restart empties the directory.
    dead.unlink()


def _mmap_size(values: Mapping[str, object]) -> int:
    """The size MmapedDict needs for ``values`` (an 8-byte header; per entry a 4-byte
    length, the key and 1 to 8 bytes of padding, value and time stamp), as it grows:
    from 64 KiB by doubling."""
    lengths = [len(key.encode()) for key in values]
    used = 8 + sum(4 + n + (8 - (4 + n) % 8) + 16 for n in lengths)
    size = 1 << 16
    while size < used:
        size *= 2
    return size


def _file_values(path: Path) -> Iterator[tuple[str, float, float]]:
    """Key, value and timestamp of every entry of a multiprocess file."""
    from prometheus_client.mmap_dict import MmapedDict  # noqa: PLC0415 - optional

    read = MmapedDict.read_all_values_from_file
    for key, value, stamp, _ in read(str(path)):  # type: ignore[no-untyped-call]  # untyped
        yield key, value, stamp


_MAX_REQUEST = 16384
#: Seconds the loop stops accepting metrics connections when it ran out of descriptors
#: (the listener would stay readable and the loop spin: review rev179 F9).
_ACCEPT_PAUSE = 0.5


@dataclass
class _Scrape:
    """A metrics connection whose request head the supervisor's loop is reading."""

    deadline: float
    head: bytearray = field(default_factory=bytearray)
    #: The head is all there (or as much as is read of one), or the client is done.
    complete: bool = False

    def read(self, conn: socket.socket) -> bool:
        """Read what has come; False if nothing could be read after all."""
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            # Gone: a request it sent whole is still answered (the answer goes nowhere).
            self.complete = b"\r\n\r\n" in self.head
            self.deadline = 0.0
            return True
        self.head += chunk
        self.complete = b"\r\n\r\n" in self.head or len(self.head) >= _MAX_REQUEST
        return True


class _MetricsServer(HTTPServer):
    # A scrape is answered in milliseconds; the default backlog of 5 refused clients
    # that came together (rev89: 200 at once waited up to 41 s).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        #: Request heads read by the supervisor's loop, by connection.
        self.heads: dict[socket.socket, bytes] = {}


class _MetricsServer6(_MetricsServer):
    address_family = socket.AF_INET6


def _read_head_handler(base: type[BaseHTTPRequestHandler]) -> type[BaseHTTPRequestHandler]:
    """``base`` parsing the request head the supervisor's loop has read
    (``_MetricsServer.heads``) instead of reading the socket itself."""

    class Handler(base):  # type: ignore[valid-type,misc]  # base is a runtime class
        timeout = METRICS_REQUEST_SECONDS

        def setup(self) -> None:
            super().setup()
            heads: dict[socket.socket, bytes] = getattr(self.server, "heads", {})
            self.rfile = io.BytesIO(heads.get(self.connection, b""))

    return Handler


def _note(signum: int, frame: object) -> None:
    """The handler itself does nothing: the wakeup fd carries the signal to the loop."""


def _drain(fd: int) -> list[int]:
    out: list[int] = []
    while True:
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += list(data)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _prctl(option: int, value: int) -> None:
    """prctl(2) with one argument; OSError (AttributeError without a libc) on failure."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")


def _adopt_orphans() -> None:
    """Make this process the parent of what its workers leave running when they die
    (see :meth:`Supervisor._end_hooks`); not inherited by the workers."""
    try:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError) as exc:
        log.warning("cannot adopt what dead workers leave running: %s", exc)


def _hook_of(pid: int) -> int | None:
    """The pid of the process that ran ``pid`` as a virus hook (its environment's
    :data:`~smtpguard.scanners.command.HOOK_MARK`), or None: not a hook, gone, or not
    readable by this process."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            environ = file.read()
    except OSError:
        return None
    mark = HOOK_MARK.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(mark) and entry[len(mark) :].isdigit():
            return int(entry[len(mark) :])
    return None


@dataclass(frozen=True, slots=True)
class _Process:
    pid: int
    parent: int
    group: int
    session: int


def _processes() -> Iterator[_Process]:
    """The live processes (from /proc; none where it cannot be read; zombies left out:
    only reaping ends those)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as file:
                    stat = file.read()
            except OSError:
                continue  # gone meanwhile
            # "pid (comm) state ppid pgrp session ...": comm may hold spaces and ")".
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 3 and fields[0] != b"Z":
                yield _Process(int(entry.name), int(fields[1]), int(fields[2]), int(fields[3]))


def _cut(conn: socket.socket) -> None:
    """Close a metrics client's connection for the client too: a shutdown ends it even
    where another process still holds a copy of the descriptor."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


def _die_with_parent(supervisor: int) -> None:
    """A worker whose supervisor is killed outright drains and ends (the stop signal)."""
    try:
        _prctl(_PR_SET_PDEATHSIG, STOP_SIGNAL)
    except (OSError, AttributeError) as exc:
        log.debug("no parent-death signal: %s", exc)
    if os.getppid() != supervisor:
        # The supervisor died between fork and prctl (compared by pid: in a container
        # the supervisor may itself be pid 1).
        os.kill(os.getpid(), STOP_SIGNAL)


def _end_worker() -> None:
    """How a worker ends once its stop has drained its sessions: at once, never with
    libmilter's ``smfi_stop``, which removes whatever socket is at the path when it runs
    as another user than root (libmilter's mi_closener). The path is the supervisor's to
    remove, by inode; a worker still draining after its supervisor removed it (a stop,
    the supervisor killed) would remove the socket of an instance started since, and
    a worker stopped alone the socket its siblings serve on (review rev87 F1, F3)."""
    logging.shutdown()
    os._exit(0)


def _mark_worker(number: int) -> None:
    from smtpguard.logsetup import set_worker  # noqa: PLC0415 - workers only

    set_worker(number)


def _give_metrics_dir(user: str) -> None:
    """The workers run as ``user`` and write their metrics files there."""
    directory = os.environ.get(_OWN_METRICS_DIR)
    if not directory or os.geteuid() != 0:
        return
    import pwd  # noqa: PLC0415

    entry = pwd.getpwnam(user)
    # Not through a symbolic link: the directory's parent may be writable by others.
    os.chown(directory, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


_METRICS_PREFIX: Final = "smtpguard-metrics-"


def _metrics_dir_owners(user: str) -> frozenset[int]:
    """Whose metrics directories are ours: this process's, and when it runs as root,
    the service user's, to whom it hands them (:func:`_give_metrics_dir`; review rev115
    F3: a killed supervisor's directory then belonged to that user)."""
    owners = {os.geteuid()}
    if os.geteuid() == 0 and user:
        import pwd  # noqa: PLC0415

        with contextlib.suppress(KeyError):
            owners.add(pwd.getpwnam(user).pw_uid)
    return frozenset(owners)


def _remove_orphaned_metrics_dirs(parent: str, owners: frozenset[int]) -> None:
    """Remove the metrics directories of supervisors that ended without removing
    theirs (killed outright: review rev113 F4, a megabyte per start in /tmp): ours by
    ``owners``, named with a pid no process has. A directory without a pid in its name
    (an older release's) is left alone. Never stops a start: what cannot be removed
    is left, and said (review rev117 F2: the service user could name one so that every
    later start raised)."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        pid = entry.name.removeprefix(_METRICS_PREFIX).partition("-")[0]
        if not entry.name.startswith(_METRICS_PREFIX) or not _PID.fullmatch(pid):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owners or _alive(int(pid)):
                continue
            shutil.rmtree(entry.path)
        except (OSError, RecursionError) as exc:
            log.warning("cannot remove %s, left by a killed supervisor: %s", entry.path, exc)
            continue
        log.info("removed %s, left by a supervisor (pid %s) that was killed", entry.path, pid)


#: A pid as a metrics directory's name gives it: ASCII digits, at most Linux's 4194304.
_PID: Final = re.compile(r"[0-9]{1,7}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _remove_metrics_dir() -> None:
    directory = os.environ.get(_OWN_METRICS_DIR)
    if directory and os.environ.get("PROMETHEUS_MULTIPROC_DIR") == directory:
        shutil.rmtree(directory, ignore_errors=True)
