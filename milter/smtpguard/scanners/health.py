"""Whether a scanner (clamd, rspamd) answers, and what its scans do while it does not.

A scanner that gave no answer (refused, or hung) is not asked again for
``retry_interval`` seconds: meanwhile every scan fails at once, then one asks again. A
hung scanner would otherwise hold every message for its timeouts and fill
``max_sessions``, deferring mail that ``on_temp_error = "pass"`` lets through (review
rev86 F1). A failure after the scanner took the connection (a request not read, an
answer that did not come in time, a reset) may be that message's alone, a scan slow on
it or crafted to be: then the scanner is pinged on a thread of its own, and only no
answer to that starts the outage (rev88 N1: one slow message stopped the scans of every
message for 5 s). But a scanner that answers its ping while its scans all fail (rspamd
waiting on its own hung Redis) would never be out: after :data:`STUCK_AFTER` such
failures in a row, with no scan answered for ``retry_interval``, the outage starts
without asking the ping (review rev89 F2). The outage is logged when it starts and
when it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from smtpguard.outage import Outage

__all__ = ["PING_WAIT", "ScannerHealth"]

#: Seconds a ping gets after a failure past the connect (is the scanner there at all?).
PING_WAIT: Final = 1.0
#: Failures past the connect in a row, with no scan answered for ``retry_interval``,
#: that start an outage whatever the ping says.
STUCK_AFTER: Final = 3

log = logging.getLogger("smtpguard")


class ScannerHealth:
    """One scanner endpoint's outage (see the module docstring).

    ``kind``, ``name`` and ``endpoint`` name it in log lines ("virus scanner clamd at
    unix:/..."), ``check`` is the check whose ``on_temp_error`` decides meanwhile, and
    ``ping`` asks the scanner whether it is there (within :data:`PING_WAIT`)."""

    def __init__(
        self,
        kind: str,
        name: str,
        endpoint: object,
        check: str,
        ping: Callable[[], bool],
        *,
        retry_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        #: The scanner where a scan's error detail names it ("clamd at unix:/...").
        self.where = f"{name} at {endpoint}"
        self.what = f"{kind} {self.where}"
        self.check = check
        self.outage = Outage(retry_interval, clock)
        self._ping = ping
        self._lock = threading.Lock()
        #: Scans failed without asking, in the current outage.
        self._unasked = 0
        #: A ping is under way (one at a time).
        self._pinging = False
        #: Failures past the connect since the last scan answered, and when that was.
        self._failures = 0
        self._last_answer = clock()

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

    def no_answer(self, why: str, now: float) -> None:
        """A scan that started ``now`` got no answer: an outage starts (logged), or
        goes on."""
        if not self.outage.failed(why, now):
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

    def ping_later(self, why: str) -> None:
        """Ping the scanner on a thread of its own (the scan that failed has waited long
        enough): no answer starts an outage; so do failures that go on (see the module
        docstring)."""
        now = self.outage.clock()
        with self._lock:
            self._failures += 1
            stuck = (
                self._failures >= STUCK_AFTER
                and now - self._last_answer >= self.outage.retry_interval
            )
            if not stuck and self._pinging:
                return
            self._pinging = self._pinging or not stuck
        if stuck:
            self.no_answer(f"{why}; {self._failures} scans in a row", now)
            return

        def probe() -> None:
            try:
                if not self._ping():
                    self.no_answer(why, self.outage.clock())
            finally:
                with self._lock:
                    self._pinging = False

        threading.Thread(target=probe, name=f"{self.name}-ping", daemon=True).start()

    def answered(self, started: float) -> None:
        """A scan that started at ``started`` got an answer: the end of an outage, if
        one was on (logged)."""
        self._failures, self._last_answer = 0, max(self._last_answer, started)
        lasted = self.outage.recovered(started)
        if lasted is None:
            return
        with self._lock:
            unasked, self._unasked = self._unasked, 0
        log.info(
            "%s answering again after %.1f s; %d messages were not asked meanwhile",
            self.what,
            lasted,
            unasked,
        )
