"""When to ask a backend that failed: once per ``retry_interval``, by one caller.

Shared by the Redis blacklist and the shared counters: a backend that stopped answering
would otherwise hold every message for its timeout. The callers log; this only decides.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

#: What redis-py raises as connection errors that are the server's answers (a wrong
#: password, a server still loading its data, one at its maxclients) or this client's
#: own limit: no network trouble (review rev58: "max number of clients reached" was
#: logged as unreachable).
_ANSWERED: tuple[type[BaseException], ...] = tuple(
    cls
    for cls in (
        getattr(redis.exceptions, name, None)
        for name in (
            "AuthenticationError",
            "AuthorizationError",
            "BusyLoadingError",
            "ExternalAuthProviderError",
            "MaxClientsReachedError",
            "MaxConnectionsError",
        )
    )
    if isinstance(cls, type)
)


def trouble(exc: BaseException | None) -> str:
    """How a backend's failure is worded in the log: "unreachable" when no answer came
    (refused, reset, timed out), "failing" when the answer was an error (a read-only
    replica, out of memory, a user without the permission, a wrong password): the one
    sends the operator to the network, the other to the backend's own log."""
    if isinstance(exc, _ANSWERED):
        return "failing"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
        return "unreachable"
    return "failing"


def back(word: str) -> str:
    """What ends a :func:`trouble`: "reachable again", "answering again"."""
    return "reachable again" if word == "unreachable" else "answering again"


class Outage:
    def __init__(
        self, retry_interval: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.retry_interval = retry_interval
        self.clock = clock
        self.last_error = ""
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._next_try = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def ask(self, now: float) -> bool:
        """Whether a call starting ``now`` may ask the backend. After the interval the
        first one claims the probe; the others keep being told no until it answers."""
        with self._lock:
            if self._down_since is None:
                return True
            if now < self._next_try:
                return False
            self._next_try = now + self.retry_interval
            return True

    def retry_now(self) -> None:
        """Let the next call ask at once (a call of another kind has just worked)."""
        with self._lock:
            self._next_try = 0.0

    def failed(self, error: str, now: float) -> bool:
        """Record a failure; True when it starts an outage (log it then)."""
        with self._lock:
            self._next_try = now + self.retry_interval
            self.last_error = error
            if self._down_since is not None:
                return False
            self._down_since = now
            return True

    def recovered(self, started: float) -> float | None:
        """A call that started at ``started`` answered: the outage's length when this
        ends one, else None. A call older than the outage proves nothing."""
        with self._lock:
            if self._down_since is None or started < self._down_since:
                return None
            lasted = started - self._down_since
            self._down_since = None
            return lasted
