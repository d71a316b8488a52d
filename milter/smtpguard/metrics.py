"""Prometheus metrics (``[metrics] enabled = true``), served on loopback by default.

Everything that records a metric takes a :class:`Metrics`; the default
:class:`NullMetrics` does nothing, so code paths are the same with metrics off.

Every metric object is built in :meth:`PrometheusMetrics.__init__`, and only counters,
histograms and gauges that are moved with ``inc``/``dec``/``set`` are used (no
``set_function``, no collectors that read process state at scrape time). That is what
prometheus-client's multiprocess mode can add up across worker processes: each gauge
says how (``multiprocess_mode``). Label values come from closed sets only (reply ids,
check names, stage names, outcome and status enums, backend names), never from
addresses, IPs or other client-controlled text.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, Final, ParamSpec, Protocol, TypeVar

from smtpguard import __version__

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("smtpguard")
P = ParamSpec("P")

_STAGE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60
)  # fmt: skip
_TRANSACTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

#: How a transaction ended (the ``outcome`` of the summary line and of
#: ``smtpguard_transactions_total``).
OUTCOMES = ("accept", "tag", "reject", "tempfail", "abort")
#: ``smtpguard_transactions_total``'s reply_id of an ``abort`` whose verdict the MTA no
#: longer waited for (its milter timeout passed): the client got the MTA's
#: default_action, a deferral with postfix-config's settings.
MTA_TIMEOUT: Final = "mta_timeout"
#: What one call of a check gave (``smtpguard_check_verdicts_total``).
VERDICTS = ("pass", "hit", "temperror", "error")
#: Seconds a metrics client has for each read of its request (and the answer's writes).
REQUEST_SECONDS: Final = 2.0
#: Metrics connections served at once; more are closed as they come. A scrape takes
#: milliseconds: this only bounds what clients that say nothing can hold.
MAX_SCRAPES: Final = 16

#: The multiprocess files one of our processes writes, by prefix (prometheus-client
#: names them ``PREFIX_PID.db``: one per metric type and gauge mode used below), and
#: the octets each is made with: every label value there is fits (tests/test_metrics.py;
#: the counters' in 256 KiB, the two gauges' few series in 4 KiB); the client grows a
#: file past its size by doubling it, sparse.
FILE_BYTES: Final = {
    "counter": 1 << 18,
    "histogram": 1 << 16,
    "gauge_max": 1 << 12,
    "gauge_livesum": 1 << 12,
}


def allocate_files(directory: str, pid: int) -> None:
    """Make the multiprocess files of process ``pid`` in ``directory`` with their
    blocks allocated, before prometheus-client maps them.

    The client makes them sparse: on a full tmpfs (``/run``) the first write into a
    page of the mapping is SIGBUS, which no ``except`` catches (review rev47: every
    worker died at its first metric, and again at each restart). Raises OSError
    (ENOSPC) and removes what it made; a file that is there already is allocated as it
    is, and kept.
    """
    made: list[str] = []
    try:
        for prefix, size in FILE_BYTES.items():
            path = os.path.join(directory, f"{prefix}_{pid}.db")
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                made.append(path)
            except FileExistsError:
                fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, max(size, os.fstat(fd).st_size))
            finally:
                os.close(fd)
    except OSError:
        for path in made:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise


#: What held a lookup that missed its caller's deadline (``smtpguard_dns_busy_total``):
#: a full pool, the client network's full share of one, or the resolver's loop thread,
#: which had not started it.
DNS_BUSY_REASONS = ("slots", "network_share", "loop")


class Metrics(Protocol):
    def decision(self, reply_id: str, mode: str, action: str) -> None: ...
    def stage_seconds(self, stage: str, seconds: float) -> None: ...
    def backend_error(self, backend: str) -> None: ...
    def backends_known(self, names: Iterable[str]) -> None: ...
    def check_verdict(self, check: str, verdict: str) -> None: ...
    def transaction(self, outcome: str, reply_id: str, seconds: float) -> None: ...
    def session_opened(self) -> None: ...
    def session_closed(self) -> None: ...
    def dns_lookup(self, status: str) -> None: ...
    def dns_cache(self, hit: bool) -> None: ...
    def dns_busy(self, reason: str) -> None: ...


class NullMetrics:
    def decision(self, reply_id: str, mode: str, action: str) -> None:
        pass

    def stage_seconds(self, stage: str, seconds: float) -> None:
        pass

    def backend_error(self, backend: str) -> None:
        pass

    def backends_known(self, names: Iterable[str]) -> None:
        pass

    def check_verdict(self, check: str, verdict: str) -> None:
        pass

    def transaction(self, outcome: str, reply_id: str, seconds: float) -> None:
        pass

    def session_opened(self) -> None:
        pass

    def session_closed(self) -> None:
        pass

    def dns_lookup(self, status: str) -> None:
        pass

    def dns_cache(self, hit: bool) -> None:
        pass

    def dns_busy(self, reason: str) -> None:
        pass


def _never_fails(
    method: Callable[Concatenate[PrometheusMetrics, P], None],
) -> Callable[Concatenate[PrometheusMetrics, P], None]:
    """A metric that cannot be written (a multiprocess directory the service user may
    not write, or that is gone) turns this process's metrics off with one error line;
    it must never fail the session (review rev43: every MAIL got a tempfail). A full
    tmpfs would be SIGBUS, not an exception: :func:`allocate_files` is what keeps it
    out (rev47)."""

    @functools.wraps(method)
    def guarded(self: PrometheusMetrics, /, *args: P.args, **kwargs: P.kwargs) -> None:
        if self.off:
            return
        try:
            method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever it is, metrics only
            self._turn_off(exc)

    return guarded


_R = TypeVar("_R")


class ReloadStatus:
    """The last reload's result for ``/metrics``, under the names Prometheus and
    Alertmanager give theirs: a refused reload keeps the running configuration, and
    ``systemctl reload`` cannot tell (its check-config does not know the running one:
    a key that needs a restart passes it; review rev113 F3). A collector on the
    registry that serves the scrapes (one process's, or the supervisor's)."""

    def __init__(self) -> None:
        self.successful = True
        #: The start counts as the first successful load, as in Prometheus.
        self.success_time = time.time()

    def record(self, ok: bool) -> None:
        self.successful = ok
        if ok:
            self.success_time = time.time()

    def watching(self, reload: Callable[[], _R]) -> Callable[[], _R]:
        """``reload``, its result recorded: an exception is a refusal."""

        def watched() -> _R:
            try:
                result = reload()
            except BaseException:
                self.record(False)
                raise
            self.record(True)
            return result

        return watched

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import GaugeMetricFamily  # noqa: PLC0415

        yield GaugeMetricFamily(
            "smtpguard_config_last_reload_successful",
            "Whether the last reload (SIGHUP) was applied (1) or refused, the running"
            " configuration kept (0; the log says why)",
            value=1.0 if self.successful else 0.0,
        )
        yield GaugeMetricFamily(
            "smtpguard_config_last_reload_success_timestamp_seconds",
            "When the configuration running now was loaded (the start, or the last reload applied)",
            value=self.success_time,
        )


class PrometheusMetrics:
    """All of smtpguard's series, on ``registry`` (a new one by default).

    ``process_collector`` adds the standard ``process_*`` series of this process; a
    supervisor in multiprocess mode reports its own process and leaves it off in the
    workers.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, process_collector: bool = True
    ) -> None:
        # Imported here: every session module imports this one for NullMetrics, and
        # commands without metrics (explain, check-config) need not load the client.
        from prometheus_client import (  # noqa: PLC0415 - see above
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            ProcessCollector,
        )

        #: Set when a metric could not be recorded: nothing is recorded any more.
        self.off = False
        self._off_lock = threading.Lock()
        #: Called once when that happens (a worker tells its supervisor, whose
        #: ``smtpguard_workers_metrics_off`` says so: its sums now lack this process).
        self.when_off: Callable[[], None] | None = None
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process_collector:
            ProcessCollector(registry=r)
        # In multiprocess mode a metric without labels writes its value at once: none is
        # made when this process's files cannot be (every method then returns at once).
        self.prepare_process()
        if self.off:
            # No metric object exists in this process nor in the workers it forks:
            # metrics stay off until the service starts again.
            log.error("metrics: off until the service is restarted with room for its files")
            return
        build = Gauge(
            "smtpguard_build_info",
            "Always 1; the labels say which smtpguard and Python run",
            ("version", "python"),
            registry=r,
            multiprocess_mode="max",
        )
        build.labels(__version__, platform.python_version()).set(1)
        self._decisions = Counter(
            "smtpguard_decisions",
            "Verdicts acted upon, per reply id, mode and action",
            ("reply_id", "mode", "action"),
            registry=r,
        )
        self._transactions = Counter(
            "smtpguard_transactions",
            "Transactions (MAIL FROM to end of message or abort) by outcome and reply id"
            ' ("none" for accepted mail)',
            ("outcome", "reply_id"),
            registry=r,
        )
        self._transaction_seconds = Histogram(
            "smtpguard_transaction_seconds",
            "Time from MAIL FROM to the end of the transaction",
            buckets=_TRANSACTION_BUCKETS,
            registry=r,
        )
        self._verdicts = Counter(
            "smtpguard_check_verdicts",
            "Results of each check call: pass, hit, temperror, error (the check raised)",
            ("check", "verdict"),
            registry=r,
        )
        self._stage = Histogram(
            "smtpguard_stage_seconds",
            "Time spent in the pipeline per milter stage",
            ("stage",),
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self._errors = Counter(
            "smtpguard_backend_errors",
            "Temporary failures of a check's backend, by check name (mailbox, blacklist,"
            " rbl, virus, ...)",
            ("backend",),
            registry=r,
        )
        self._sessions = Counter(
            "smtpguard_sessions", "SMTP sessions (milter connections) opened", registry=r
        )
        self._in_flight = Gauge(
            "smtpguard_sessions_in_flight",
            "Open SMTP sessions",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._dns = Counter(
            "smtpguard_dns_lookups",
            "DNS queries sent upstream (cache misses), by outcome",
            ("status",),
            registry=r,
        )
        self._dns_cache = Counter(
            "smtpguard_dns_cache_lookups", "DNS cache lookups by result", ("result",), registry=r
        )
        self._dns_busy = Counter(
            "smtpguard_dns_busy",
            "DNS lookups whose caller's deadline passed while they waited for a resolver"
            " slot (deferred: this host was too busy to ask), by what was full",
            ("reason",),
            registry=r,
        )
        # Children looked up once: verdicts are counted for every check call.
        self._verdict_children: dict[tuple[str, str], Counter] = {}
        self._dns_hit = self._dns_cache.labels("hit")
        self._dns_miss = self._dns_cache.labels("miss")
        # Present from the start at 0, so ratios over them exist before the first event.
        for status in ("ok", "nxdomain", "nodata", "servfail", "timeout"):
            self._dns.labels(status)
        for reason in DNS_BUSY_REASONS:
            self._dns_busy.labels(reason)
        self._transactions.labels("accept", "none")
        # The deferrals the tempfail ratio alert is for, counted from their first.
        for reply_id in ("internal_error", "database_temp_error", "queue_unavailable"):
            self._transactions.labels("tempfail", reply_id)
        self._transactions.labels("abort", MTA_TIMEOUT)

    def prepare_process(self) -> None:
        """In multiprocess mode, allocate this process's files before its first value
        (:func:`allocate_files`; a worker calls it after the fork). When they cannot
        be, nothing is recorded in this process, said once."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return
        if self.off:
            # Off since the supervisor's start (its files could not be made): this
            # worker records nothing either, and is counted so.
            if self.when_off is not None:
                self.when_off()
            return
        try:
            allocate_files(directory, os.getpid())
        except OSError as exc:
            self._turn_off(exc)

    def _turn_off(self, exc: Exception) -> None:
        # Two sessions' threads may fail at once: one line, one report (the second
        # one failed on the first one's half-made files: a CI run logged both).
        with self._off_lock:
            if self.off:
                return
            self.off = True
        log.error("metrics: cannot record (%s); metrics off in this process", exc)
        if self.when_off is not None:
            self.when_off()

    @_never_fails
    def decision(self, reply_id: str, mode: str, action: str) -> None:
        self._decisions.labels(reply_id, mode, action).inc()

    @_never_fails
    def stage_seconds(self, stage: str, seconds: float) -> None:
        self._stage.labels(stage).observe(seconds)

    @_never_fails
    def backend_error(self, backend: str) -> None:
        self._errors.labels(backend).inc()

    @_never_fails
    def backends_known(self, names: Iterable[str]) -> None:
        """Each check's error series at 0 from the start: ``increase()`` over a series
        takes its first sample as its start, so the first errors of one that appeared
        with them went uncounted (the alert fired only on the next; review rev133 F5)."""
        for name in names:
            self._errors.labels(name)

    @_never_fails
    def check_verdict(self, check: str, verdict: str) -> None:
        child = self._verdict_children.get((check, verdict))
        if child is None:
            child = self._verdict_children[(check, verdict)] = self._verdicts.labels(check, verdict)
        child.inc()

    @_never_fails
    def transaction(self, outcome: str, reply_id: str, seconds: float) -> None:
        self._transactions.labels(outcome, reply_id or "none").inc()
        self._transaction_seconds.observe(seconds)

    @_never_fails
    def session_opened(self) -> None:
        self._sessions.inc()
        self._in_flight.inc()

    @_never_fails
    def session_closed(self) -> None:
        self._in_flight.dec()

    @_never_fails
    def dns_lookup(self, status: str) -> None:
        self._dns.labels(status).inc()

    @_never_fails
    def dns_cache(self, hit: bool) -> None:
        (self._dns_hit if hit else self._dns_miss).inc()

    @_never_fails
    def dns_busy(self, reason: str) -> None:
        self._dns_busy.labels(reason).inc()

    def serve(self, address: str, port: int) -> None:
        """/metrics on ``address``:``port`` in threads beside libmilter's: at most
        :data:`MAX_SCRAPES` connections at once, each given :data:`REQUEST_SECONDS` to
        send its request (review rev179 F1: prometheus-client's server gave each
        connection a thread with no timeout, and 1,100 idle ones took every descriptor
        of the process: every MTA session timed out, with nothing logged)."""
        from http.server import ThreadingHTTPServer  # noqa: PLC0415 - see __init__

        from prometheus_client.exposition import MetricsHandler  # noqa: PLC0415 - see __init__

        #: Connections whose request head is in: their deadline is met.
        spoken: set[Any] = set()

        class Handler(MetricsHandler.factory(self.registry)):  # type: ignore[misc]  # untyped
            timeout = REQUEST_SECONDS

            def parse_request(self) -> bool:
                parsed = bool(super().parse_request())
                spoken.add(self.connection)
                return parsed

        def cut(request: Any) -> None:
            """A client that has not sent its whole head by the deadline, a byte at a
            time or none (review rev180 F4: the read timeout alone let 16 clients that
            sent a byte every 1.9 s hold every slot)."""
            if request not in spoken:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
            daemon_threads = True
            request_queue_size = 128
            slots = threading.BoundedSemaphore(MAX_SCRAPES)

            def process_request(self, request: Any, client_address: Any) -> None:
                if not self.slots.acquire(blocking=False):
                    self.shutdown_request(request)  # over the bound: closed at once
                    return
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    self.slots.release()
                    raise

            def process_request_thread(self, request: Any, client_address: Any) -> None:
                deadline = threading.Timer(REQUEST_SECONDS, cut, (request,))
                deadline.start()
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    deadline.cancel()
                    spoken.discard(request)
                    self.slots.release()

        server = Server((address, port), Handler)
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
