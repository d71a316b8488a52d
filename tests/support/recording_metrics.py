"""A Metrics that keeps every call, for tests that check what is counted."""

from __future__ import annotations

from collections.abc import Iterable


class RecordingMetrics:
    """Keeps every metrics call, as (method, args)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def _keep(self, name: str, *args: object) -> None:
        self.calls.append((name, args))

    def decision(self, reply_id: str, mode: str, action: str) -> None:
        self._keep("decision", reply_id, mode, action)

    def stage_seconds(self, stage: str, seconds: float) -> None:
        self._keep("stage_seconds", stage)

    def backend_error(self, backend: str) -> None:
        self._keep("backend_error", backend)

    def backends_known(self, names: Iterable[str]) -> None:
        self._keep("backends_known", *names)

    def check_verdict(self, check: str, verdict: str) -> None:
        self._keep("check_verdict", check, verdict)

    def transaction(self, outcome: str, reply_id: str, seconds: float) -> None:
        assert seconds >= 0
        self._keep("transaction", outcome, reply_id)

    def session_opened(self) -> None:
        self._keep("session_opened")

    def session_closed(self) -> None:
        self._keep("session_closed")

    def dns_lookup(self, status: str) -> None:
        self._keep("dns_lookup", status)

    def dns_cache(self, hit: bool) -> None:
        self._keep("dns_cache", hit)

    def dns_busy(self, reason: str) -> None:
        self._keep("dns_busy", reason)

    def named(self, name: str) -> list[tuple[object, ...]]:
        return [args for method, args in self.calls if method == name]
