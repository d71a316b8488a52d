"""ScannerHealth: when a scanner that gave no answer is asked again, and what is logged."""

from __future__ import annotations

import logging
import threading

import pytest

from smtpguard.scanners.health import ScannerHealth
from support.fake_dns import FakeClock
from support.polling import wait_until


def health(clock: FakeClock, answers: bool = True) -> ScannerHealth:
    return ScannerHealth(
        "virus scanner", "clamd", "unix:/run/clamd.sock", "virus", lambda: answers, clock=clock
    )


def test_no_answer_refuses_scans_until_the_interval_has_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    scanner = health(clock)
    assert scanner.refusal(clock()) == ""
    scanner.no_answer("Connection refused", clock())
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
            logging.INFO,
            "virus scanner clamd at unix:/run/clamd.sock answering again after 5.0 s; 4"
            " messages were not asked meanwhile",
        ),
    ]


@pytest.mark.parametrize("answers", [True, False])
def test_a_failure_past_the_connect_is_an_outage_only_without_an_answer_to_the_ping(
    answers: bool,
) -> None:
    clock = FakeClock()
    scanner = health(clock, answers=answers)
    scanner.ping_later("timed out")
    wait_until(lambda: not any(t.name == "clamd-ping" for t in threading.enumerate()))
    assert scanner.outage.down is not answers


def test_one_ping_at_a_time() -> None:
    release = threading.Event()
    pings = 0

    def ping() -> bool:
        nonlocal pings
        pings += 1
        release.wait(5)
        return True

    scanner = ScannerHealth("spam engine", "rspamd", "inet:127.0.0.1:11333", "antispam", ping)
    for _ in range(5):
        scanner.ping_later("timed out")
    release.set()
    wait_until(lambda: not any(t.name == "rspamd-ping" for t in threading.enumerate()))
    assert pings == 1


def test_failures_that_go_on_are_an_outage_whatever_the_ping_says() -> None:
    """Review rev89 F2: an engine that answers its ping while every scan times out (its
    own Redis hung) was never out, and every message waited for it."""
    clock = FakeClock()
    scanner = health(clock, answers=True)
    scanner.answered(clock())
    clock.advance(6.0)  # no scan answered since
    for _ in range(3):
        scanner.ping_later("timed out")
        wait_until(lambda: not any(t.name == "clamd-ping" for t in threading.enumerate()))
    assert scanner.outage.down
    assert "timed out; 3 scans in a row" in scanner.outage.last_error


def test_failures_between_answered_scans_are_no_outage() -> None:
    clock = FakeClock()
    scanner = health(clock, answers=True)
    for _ in range(6):
        clock.advance(2.0)
        scanner.ping_later("timed out")
        wait_until(lambda: not any(t.name == "clamd-ping" for t in threading.enumerate()))
        scanner.answered(clock())  # other messages are scanned meanwhile
    assert not scanner.outage.down
