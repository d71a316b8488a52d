"""Prometheus metrics (``[metrics] enabled = true``), served on loopback by default.

Everything that records a metric takes a :class:`Metrics`; the default
:class:`NullMetrics` does nothing, so code paths are the same with metrics off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from smtpguard.dns import Resolver

_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics(Protocol):
    def decision(self, reply_id: str, mode: str, action: str) -> None: ...
    def stage_seconds(self, stage: str, seconds: float) -> None: ...
    def backend_error(self, backend: str) -> None: ...


class NullMetrics:
    def decision(self, reply_id: str, mode: str, action: str) -> None:
        pass

    def stage_seconds(self, stage: str, seconds: float) -> None:
        pass

    def backend_error(self, backend: str) -> None:
        pass


class _DnsCacheCollector(Collector):
    """Reads the resolver's own hit/miss counters at scrape time (no per-lookup cost)."""

    def __init__(self, resolver: Callable[[], Resolver | None]) -> None:
        self.resolver = resolver

    def collect(self) -> Iterator[CounterMetricFamily]:
        resolver = self.resolver()
        if resolver is None:
            return
        hits, misses = resolver.stats.hits, resolver.stats.misses
        family = CounterMetricFamily(
            "smtpguard_dns_cache_lookups", "DNS cache lookups by result", labels=("result",)
        )
        family.add_metric(("hit",), hits)
        family.add_metric(("miss",), misses)
        yield family


class PrometheusMetrics:
    def __init__(self, sessions_in_flight: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self._decisions = Counter(
            "smtpguard_decisions",
            "Verdicts acted upon, per reply id, mode and action",
            ("reply_id", "mode", "action"),
            registry=self.registry,
        )
        self._stage = Histogram(
            "smtpguard_stage_seconds",
            "Time spent in the pipeline per milter stage",
            ("stage",),
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self._errors = Counter(
            "smtpguard_backend_errors",
            "Temporary failures of a check's backend, by check name (mailbox, blacklist,"
            " rbl, virus, ...)",
            ("backend",),
            registry=self.registry,
        )
        sessions = Gauge(
            "smtpguard_sessions_in_flight", "Open SMTP sessions", registry=self.registry
        )
        sessions.set_function(sessions_in_flight)

    def decision(self, reply_id: str, mode: str, action: str) -> None:
        self._decisions.labels(reply_id, mode, action).inc()

    def stage_seconds(self, stage: str, seconds: float) -> None:
        self._stage.labels(stage).observe(seconds)

    def backend_error(self, backend: str) -> None:
        self._errors.labels(backend).inc()

    def watch_dns(self, resolver: Callable[[], Resolver | None]) -> None:
        self.registry.register(_DnsCacheCollector(resolver))

    def serve(self, address: str, port: int) -> None:
        start_http_server(port, addr=address, registry=self.registry)
