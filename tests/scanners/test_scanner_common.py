"""Shared scanner pieces: header serialisation, the message spool (endpoints:
tests/test_endpoint.py)."""

from __future__ import annotations

from smtpguard.scanners import MessageSpool, header_bytes


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
