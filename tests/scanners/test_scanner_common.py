"""Shared scanner pieces: endpoint syntax, header serialisation, the message spool."""

from __future__ import annotations

import pytest

from smtpguard.scanners import Endpoint, MessageSpool, header_bytes, parse_endpoint


@pytest.mark.parametrize(
    ("spec", "endpoint", "text"),
    [
        ("unix:/run/clamav/clamd.ctl", Endpoint(path="/run/clamav/clamd.ctl"), None),
        ("inet:127.0.0.1:3310", Endpoint(host="127.0.0.1", port=3310), None),
        ("inet:localhost:11333", Endpoint(host="localhost", port=11333), None),
        ("inet:[::1]:3310", Endpoint(host="::1", port=3310), "inet:[::1]:3310"),
    ],
)
def test_parse_endpoint(spec: str, endpoint: Endpoint, text: str | None) -> None:
    assert parse_endpoint(spec) == endpoint
    assert str(endpoint) == (text or spec)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "/run/clamd.sock",
        "unix:relative.sock",
        "inet:127.0.0.1",
        "inet:127.0.0.1:0",
        "inet:127.0.0.1:70000",
        "inet::3310",
        "inet:[::1]3310",
        "tcp:127.0.0.1:3310",
        "inet:host:port",
    ],
)
def test_parse_endpoint_refuses(spec: str) -> None:
    with pytest.raises(ValueError, match=r"expected|absolute"):
        parse_endpoint(spec)


def test_header_bytes() -> None:
    assert header_bytes("Subject", "hi") == b"Subject: hi\r\n"
    assert header_bytes("Received", "from a\n\tby b") == b"Received: from a\r\n\tby b\r\n"
    assert header_bytes("Received", "from a\r\n\tby b") == b"Received: from a\r\n\tby b\r\n"
    assert header_bytes("Subject", "caf\udcc3\udca9") == b"Subject: caf\xc3\xa9\r\n"
    assert header_bytes("Subject", "中文") == "Subject: 中文\r\n".encode()


def test_spool_builds_the_message() -> None:
    with MessageSpool() as spool:
        spool.feed_header("From", "a@example.org")
        spool.end_of_headers()
        spool.end_of_headers()  # once only
        spool.feed(b"body\r\n")
        assert spool.getvalue() == b"From: a@example.org\r\n\r\nbody\r\n"
        assert spool.size == len(spool.getvalue())
        assert spool.in_memory


def test_spool_adds_the_empty_line_when_eoh_was_not_seen() -> None:
    with MessageSpool() as spool:
        spool.feed_header("Subject", "x")
        spool.feed(b"a\r\n")
        spool.feed(b"b\r\n")
        assert spool.getvalue() == b"Subject: x\r\n\r\na\r\nb\r\n"


def test_spool_rolls_to_disk_and_truncates() -> None:
    with MessageSpool(memory_cap=100, max_size=1000) as spool:
        spool.end_of_headers()
        for _ in range(20):
            spool.feed(b"x" * 98 + b"\r\n")
        assert not spool.in_memory
        assert spool.truncated
        assert spool.size == 1000
        assert len(spool.getvalue()) == 1000
        assert spool.reader().read(3) == b"\r\nx"  # reader() rewinds
