"""The signals the service takes, in a module of their own: ``smtpguard run`` holds
them first thing, before the imports that take a third of a second (review rev94 F8: a
reload sent during the start killed the process), and :mod:`smtpguard.adapter` and
:mod:`smtpguard.supervisor` use them from here."""

from __future__ import annotations

import signal
from typing import Final

__all__ = ["RELOAD_SIGNAL", "SERVICE_SIGNALS", "STOP_SIGNAL", "hold_signals"]

#: What the supervisor sends its workers: a reload, a stop. libmilter's own signal
#: thread waits only for SIGHUP, SIGTERM and SIGINT, and stops the milter on any of
#: them when it gets one first, so these never reach it (review rev87 F2: a SIGHUP
#: storm stopped workers, and the service with them).
RELOAD_SIGNAL: Final = signal.SIGUSR1
STOP_SIGNAL: Final = signal.SIGUSR2
#: What the service takes with sigwait (see :func:`smtpguard.adapter.run`).
SERVICE_SIGNALS: Final = frozenset(
    {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, RELOAD_SIGNAL, STOP_SIGNAL}
)


def hold_signals() -> None:
    """Block the service's signals in this thread, and so in every thread started from
    it from now on: a thread that has one unblocked (the metrics server's, the DNS
    resolver's) would take it with its default action, which ends the process (review
    rev88 N7: a burst of SIGHUPs killed one process with metrics on). Call it before
    any thread starts."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SERVICE_SIGNALS)
