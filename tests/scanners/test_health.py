"""ScannerHealth: when a scanner that gave no answer is asked again, and what is logged."""

from __future__ import annotations

import logging
import threading

import pytest

from smtpguard.scanners.health import ScannerHealth
from support.fake_dns import FakeClock
from support.polling import threads_done


def health(clock: FakeClock, answers: bool = True) -> ScannerHealth:
    return ScannerHealth(
        "virus scanner",
        "clamd",
        "unix:/run/clamd.sock",
        "virus",
        lambda wait: "" if answers else f"timed out after {wait:g} s",
        clock=clock,
    )


def test_no_answer_refuses_scans_until_the_interval_has_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    scanner = health(clock)
    assert scanner.refusal(clock()) == ""
    scanner.no_answer("Connection refused")
    for _ in range(3):
        clock.advance(1.0)
        assert scanner.refusal(clock()) == (
            "clamd at unix:/run/clamd.sock: not asked, gave no answer (Connection refused);"
            " asked again every 5 s"
        )
    clock.advance(2.0)
    started = clock()
    assert scanner.refusal(started) == ""  # this one asks
    assert scanner.refusal(clock()) != ""  # and only this one
    scanner.answered(started)
    assert scanner.refusal(clock()) == ""
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "virus scanner clamd at unix:/run/clamd.sock gave no answer (Connection"
            " refused): not asked for 5 s at a time (one message asks again); meanwhile"
            " every message gets its failure at once ([checks.virus] on_temp_error"
            " decides)",
        ),
        (
            logging.WARNING,  # messages went unasked (review rev95 F6)
            "virus scanner clamd at unix:/run/clamd.sock answering again after 5.0 s; 4"
            " messages were not asked meanwhile",
        ),
    ]


@pytest.mark.parametrize("answers", [True, False])
def test_a_failure_past_the_connect_is_an_outage_only_if_a_canary_scan_fails_too(
    answers: bool,
) -> None:
    clock = FakeClock()
    scanner = health(clock, answers=answers)
    scanner.test_later("timed out")
    threads_done("clamd-canary")
    assert scanner.outage.down is not answers
    if not answers:
        assert scanner.outage.last_error == "timed out; a canary scan: timed out after 2 s"


def test_one_canary_at_a_time() -> None:
    release = threading.Event()
    canaries = 0

    def canary(wait: float) -> str:
        nonlocal canaries
        canaries += 1
        release.wait(5)
        return ""

    scanner = ScannerHealth("spam engine", "rspamd", "inet:127.0.0.1:11333", "antispam", canary)
    for _ in range(5):
        scanner.test_later("timed out")
    release.set()
    threads_done("rspamd-canary")
    assert canaries == 1


def test_slow_messages_that_go_on_open_no_outage_while_the_scanner_scans() -> None:
    """Review rev90: a rule that opened the outage after three failures in a row let
    three crafted slow messages open a window in which EICAR passed (with
    on_temp_error = "pass"); the canary keeps scanning."""
    clock = FakeClock()
    scanner = health(clock, answers=True)
    for _ in range(10):
        clock.advance(2.0)
        scanner.test_later("timed out")
        threads_done("clamd-canary")
    assert not scanner.outage.down


def test_a_canary_answered_ends_an_outage() -> None:
    """Review rev91 F1: during an outage the one message let through to ask again may
    be a slow one; its canary was answered, yet the outage went on, and a slow message
    winning each retry held it open (40 of 40 EICAR passed in 20 s)."""
    clock = FakeClock()
    scanner = health(clock, answers=True)
    scanner.no_answer("Connection refused")
    assert scanner.outage.down
    clock.advance(5.0)
    assert scanner.refusal(clock()) == ""  # the retry: a slow message, timed out
    scanner.test_later("timed out", wait=30.0)
    threads_done("clamd-canary")
    assert not scanner.outage.down
    assert scanner.refusal(clock()) == ""


def test_the_canary_waits_as_long_as_a_scan_may() -> None:
    """Review rev91 F2: a busy scanner queues the canary behind the scans under way."""
    waits: list[float] = []

    def canary(wait: float) -> str:
        waits.append(wait)
        return ""

    scanner = ScannerHealth("virus scanner", "clamd", "unix:/c.sock", "virus", canary)
    scanner.test_later("timed out", wait=30.0)
    threads_done("clamd-canary")
    scanner.test_later("timed out", wait=0.5)
    threads_done("clamd-canary")
    assert waits == [30.0, 2.0]
