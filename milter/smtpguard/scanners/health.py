"""Whether a scanner (clamd, rspamd, the command hook) answers, and what its scans do
while it does not.

A scanner that gave no answer (refused, or hung) is not asked again for
``retry_interval`` seconds: meanwhile every scan fails at once, then one asks again. A
hung scanner would otherwise hold every message for its timeouts and fill
``max_sessions``, deferring mail that ``on_temp_error = "pass"`` lets through (review
rev86 F1). A failure after the scanner took the connection (a request not read, an
answer that did not come in time, a reset) may be that message's alone, a scan slow on
it or crafted to be: then the scanner is given a canary, a scan of a few octets, on a
thread of its own, waiting as long as a scan may (at least :data:`CANARY_WAIT`: a busy
scanner queues it behind the scans under way, rev91 F2). Only a canary not answered
starts the outage (rev88 N1: one slow message stopped the scans of every message for
5 s), and a canary answered ends one that is on (rev91 F1: a slow message winning each
retry held it open). A scan, not a ping: a scanner that answers pings while its scans
all hang (rspamd waiting on its own hung Redis, rev89 F2) is out, and messages crafted
to be slow cannot open an outage while the scanner scans (rev90: with ``on_temp_error
= "pass"``, three slow messages in a row opened a window in which EICAR passed). The
outage is logged when it starts and when it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Final

from smtpguard.outage import Outage

__all__ = ["CANARY_WAIT", "ScannerHealth", "shared_health"]

#: Seconds the canary scan gets after a failure past the connect (does it scan at all?).
CANARY_WAIT: Final = 2.0

log = logging.getLogger("smtpguard")

#: The process's ScannerHealth per scanner (see :func:`shared_health`).
_registry: dict[Hashable, ScannerHealth] = {}
_registry_lock = threading.Lock()


def shared_health(key: Hashable, make: Callable[[], ScannerHealth]) -> ScannerHealth:
    """The one :class:`ScannerHealth` of this process for ``key`` (a clamd endpoint, a
    hook's argv), made by ``make`` the first time: every scan, and every configuration
    a reload builds, asks the same scanner."""
    with _registry_lock:
        found = _registry.get(key)
        if found is None:
            found = _registry[key] = make()
        return found


class ScannerHealth:
    """One scanner endpoint's outage (see the module docstring).

    ``kind``, ``name`` and ``endpoint`` name it in log lines ("virus scanner clamd at
    unix:/..."; ``where`` replaces "NAME at ENDPOINT"), ``check`` is the check whose
    ``on_temp_error`` decides meanwhile, and ``canary(wait)`` scans a few octets with
    the scanner within ``wait`` seconds: "" if it answered, else why not (None: no
    verdict, the process is ending)."""

    def __init__(
        self,
        kind: str,
        name: str,
        endpoint: object,
        check: str,
        canary: Callable[[float], str | None],
        *,
        retry_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        where: str = "",
    ) -> None:
        self.name = name
        #: The scanner where a scan's error detail names it ("clamd at unix:/...").
        self.where = where or f"{name} at {endpoint}"
        self.what = f"{kind} {self.where}"
        self.check = check
        self.outage = Outage(retry_interval, clock)
        self._canary = canary
        self._lock = threading.Lock()
        #: Scans failed without asking, in the current outage.
        self._unasked = 0
        #: A canary is under way (one at a time).
        self._testing = False

    def refusal(self, now: float) -> str:
        """ "" if a scan starting ``now`` may ask the scanner; else why not (the scan's
        error detail)."""
        outage = self.outage
        if outage.ask(now):
            return ""
        with self._lock:
            self._unasked += 1
        return (
            f"{self.where}: not asked, gave no answer ({outage.last_error}); asked again"
            f" every {outage.retry_interval:g} s"
        )

    def no_answer(self, why: str) -> None:
        """A scan got no answer: an outage starts (logged), or goes on. Timed now, when
        the failure is known: a scan's start would leave no wait at all after a connect
        that timed out past ``retry_interval`` (review rev120 F1: every message waited
        the full engine_timeout)."""
        if not self.outage.failed(why, self.outage.clock()):
            return
        with self._lock:
            self._unasked = 0
        log.warning(
            "%s gave no answer (%s): not asked for %g s at a time (one message asks"
            " again); meanwhile every message gets its failure at once ([checks.%s]"
            " on_temp_error decides)",
            self.what,
            why,
            self.outage.retry_interval,
            self.check,
        )

    def test_later(self, why: str, wait: float = CANARY_WAIT) -> None:
        """Give the scanner a canary on a thread of its own (the scan that failed has
        waited long enough), for as long as a scan may take (``wait``, at least
        :data:`CANARY_WAIT`): no answer starts an outage, an answer ends one."""
        with self._lock:
            if self._testing:
                return
            self._testing = True

        def probe() -> None:
            try:
                started = self.outage.clock()
                failed = self._canary(max(wait, CANARY_WAIT))
                if failed:
                    self.no_answer(f"{why}; a canary scan: {failed}")
                elif failed is not None:
                    self.answered(started)
            finally:
                with self._lock:
                    self._testing = False

        threading.Thread(target=probe, name=f"{self.name}-canary", daemon=True).start()

    def answered(self, started: float) -> None:
        """A scan that started at ``started`` got an answer: the end of an outage, if
        one was on (logged)."""
        lasted = self.outage.recovered(started)
        if lasted is None:
            return
        with self._lock:
            unasked, self._unasked = self._unasked, 0
        # A WARNING when messages went unasked (passed unscanned, or deferred): a site
        # that logs WARNING and up sees the end of what it saw start (review rev95 F6).
        log.log(
            logging.WARNING if unasked else logging.INFO,
            "%s answering again after %.1f s; %d messages were not asked meanwhile",
            self.what,
            lasted,
            unasked,
        )
