"""ClamdStream against a real clamd with a test-written signature database (EICAR)."""

from __future__ import annotations

import base64
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from smtpguard.scanners import Endpoint, ScanStatus
from smtpguard.scanners.clamd import ClamdStream, canary, ping, scan
from support.daemons import EICAR, EICAR_SIGNATURE, Clamd, free_port, start_clamd

if TYPE_CHECKING:
    from scanners.conftest import SlowPeers

pytestmark = pytest.mark.integration

FOUND_NAME = f"{EICAR_SIGNATURE}.UNOFFICIAL"
STREAM_MAX = 1024 * 1024


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    daemon = start_clamd(tmp_path_factory.mktemp("clamd"), stream_max_length=STREAM_MAX)
    yield daemon
    daemon.stop()


@pytest.fixture(params=["unix", "tcp"])
def endpoint(request: pytest.FixtureRequest, clamd: Clamd) -> Endpoint:
    return clamd.unix if request.param == "unix" else clamd.tcp


HEADERS = [
    ("Received", "from client.example.org (client.example.org [198.51.100.7])\n\tby mx"),
    ("From", "Alice <alice@example.org>"),
    ("To", "bob@example.com"),
    ("Subject", "=?utf-8?b?5rWL6K+V?= test"),
    ("Message-ID", "<1@example.org>"),
]


def multipart(attachment: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """A multipart/mixed message whose second part carries ``attachment`` in base64."""
    headers = [
        *HEADERS,
        ("MIME-Version", "1.0"),
        ("Content-Type", 'multipart/mixed; boundary="b1"'),
    ]
    encoded = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    body = (
        b"--b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="tool.com"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--b1--\r\n"
    )
    return headers, body


def stream_message(
    stream: ClamdStream, headers: list[tuple[str, str]], body: bytes, chunk: int = 65535
) -> None:
    """Feed like the pipeline: header callbacks, end of headers, body chunks."""
    for name, value in headers:
        stream.feed_header(name, value)
    stream.end_of_headers()
    for start in range(0, len(body), chunk):
        stream.feed(body[start : start + chunk])


def test_clean_message(endpoint: Endpoint) -> None:
    with ClamdStream(endpoint, timeout=5) as stream:
        stream_message(stream, HEADERS, b"Hello Bob,\r\nlunch tomorrow?\r\n")
        result = stream.finish()
    assert result.status is ScanStatus.CLEAN
    assert result.virus == ""
    assert result.scanned > 100


def test_eicar_in_the_body_is_found(endpoint: Endpoint) -> None:
    with ClamdStream(endpoint, timeout=5) as stream:
        stream_message(stream, HEADERS, b"Here it is:\r\n" + EICAR + b"\r\n")
        result = stream.finish()
    assert result.status is ScanStatus.INFECTED
    assert result.infected
    assert result.virus == FOUND_NAME


def test_base64_attachment_in_a_multipart_is_found(endpoint: Endpoint) -> None:
    headers, body = multipart(EICAR)
    assert EICAR not in body  # only the decoded attachment contains it
    with ClamdStream(endpoint, timeout=5) as stream:
        stream_message(stream, headers, body)
        result = stream.finish()
    assert result.status is ScanStatus.INFECTED
    assert result.virus == FOUND_NAME


def test_without_the_header_block_clamd_does_not_decode_mime(clamd: Clamd) -> None:
    """Why ClamdStream sends the headers: the body alone is not parsed as MIME."""
    _, body = multipart(EICAR)
    assert scan(clamd.unix, body).status is ScanStatus.CLEAN


def test_message_larger_than_one_chunk(endpoint: Endpoint) -> None:
    filler = b"".join(b"line %06d of a long and boring report\r\n" % i for i in range(12_000))
    assert len(filler) > 5 * 65535
    with ClamdStream(endpoint, timeout=5) as stream:
        stream_message(stream, HEADERS, filler)
        clean = stream.finish()
    with ClamdStream(endpoint, timeout=5) as stream:
        stream_message(stream, HEADERS, filler + EICAR + b"\r\n")
        infected = stream.finish()
    assert clean.status is ScanStatus.CLEAN
    assert clean.scanned > len(filler)
    assert infected.status is ScanStatus.INFECTED
    assert infected.virus == FOUND_NAME


def test_large_infected_attachment_in_small_chunks(clamd: Clamd) -> None:
    headers, body = multipart(b"\0" * 300_000 + EICAR + b"\0" * 1000)
    with ClamdStream(clamd.unix, timeout=5) as stream:
        stream_message(stream, headers, body, chunk=1000)
        result = stream.finish()
    assert result.status is ScanStatus.INFECTED


def test_over_max_bytes_scans_the_prefix(clamd: Clamd) -> None:
    filler = b"x" * 200 + b"\r\n"
    body = filler * 1000  # ~200 KB
    with ClamdStream(clamd.unix, timeout=5, max_bytes=50_000) as stream:
        stream_message(stream, HEADERS, body)
        result = stream.finish()
    assert result.status is ScanStatus.SIZE_LIMIT
    assert result.scanned == 50_000
    assert "max_bytes=50000" in result.detail
    with ClamdStream(clamd.unix, timeout=5, max_bytes=50_000) as stream:
        stream_message(stream, HEADERS, EICAR + b"\r\n" + body)
        infected = stream.finish()
    assert infected.status is ScanStatus.INFECTED  # found in the scanned prefix


def test_clamd_refusing_over_its_stream_max_length(endpoint: Endpoint) -> None:
    """clamd scans nothing of a stream it refuses, EICAR in the first line included:
    no verdict, never the clean prefix on_size_limit = "pass" passes (found by review)."""
    body = (b"y" * 998 + b"\r\n") * (STREAM_MAX // 1000 + 200)
    with ClamdStream(endpoint, timeout=5, max_bytes=10 * STREAM_MAX) as stream:
        stream_message(stream, HEADERS, EICAR + b"\r\n" + body)
        result = stream.finish()
    assert result.status is ScanStatus.ERROR
    assert "StreamMaxLength" in result.detail
    assert result.too_large  # on_size_limit applies (review rev145 F2)


def test_empty_message_is_clean(clamd: Clamd) -> None:
    with ClamdStream(clamd.unix, timeout=5) as stream:
        assert stream.finish().status is ScanStatus.CLEAN


def test_finish_is_idempotent_and_opening_is_lazy(clamd: Clamd) -> None:
    stream = ClamdStream(clamd.unix, timeout=5)
    stream.feed_header("Subject", "hi")
    assert stream._sock is None  # header fields wait for the body (or finish)
    stream.feed(b"body\r\n")
    assert stream._sock is not None
    first = stream.finish()
    assert stream.finish() is first
    assert stream._sock is None


def test_aborted_stream_leaves_clamd_working(clamd: Clamd) -> None:
    stream = ClamdStream(clamd.unix, timeout=5)
    stream_message(stream, HEADERS, b"half a message\r\n")
    stream.close()
    stream.close()
    assert ping(clamd.unix)


def test_unix_socket_absent_is_an_error(tmp_path: Path) -> None:
    stream = ClamdStream(Endpoint(path=str(tmp_path / "missing.sock")), timeout=1)
    stream_message(stream, HEADERS, EICAR)
    result = stream.finish()
    assert result.status is ScanStatus.ERROR
    assert "cannot connect" in result.detail
    assert str(tmp_path / "missing.sock") in result.detail


def test_tcp_port_closed_is_an_error() -> None:
    stream = ClamdStream(Endpoint(host="127.0.0.1", port=free_port()), timeout=1)
    stream_message(stream, HEADERS, b"hello\r\n")
    assert stream.finish().status is ScanStatus.ERROR


def test_a_host_name_that_does_not_resolve_starts_an_outage() -> None:
    """Review rev120 F2: a lookup failure was no "no answer": every message looked the
    name up again and waited for it. (.invalid never resolves: RFC 2606.)"""
    endpoint = Endpoint(host="clamd.smtpguard-test.invalid", port=3310)
    first = ClamdStream(endpoint, timeout=5)
    stream_message(first, HEADERS, b"hello\r\n")
    result = first.finish()
    assert result.status is ScanStatus.ERROR
    assert "cannot connect" in result.detail
    second = ClamdStream(endpoint, timeout=5)
    stream_message(second, HEADERS, b"hello\r\n")
    result = second.finish()
    assert (result.status, result.unasked) == (ScanStatus.ERROR, True), result.detail


def test_scanner_that_never_answers_times_out() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # accepted by the kernel, never read: sends fill up, replies never come
        endpoint = Endpoint(host="127.0.0.1", port=server.getsockname()[1])
        with ClamdStream(endpoint, timeout=0.3, scan_timeout=0.3) as stream:
            stream_message(stream, HEADERS, b"hello\r\n")
            result = stream.finish()
    assert result.status is ScanStatus.ERROR
    assert "timed out" in result.detail


#: What a call may take beyond its deadline: the last operation's wake-up, scheduling.
MARGIN = 0.4


def _read_stream(conn: socket.socket) -> None:
    """Read an INSTREAM up to its zero-length terminating chunk."""
    data = b""
    while not data.endswith(b"\0\0\0\0"):
        got = conn.recv(65536)
        assert got
        data += got


@pytest.mark.parametrize("unix", [True, False], ids=["unix", "tcp"])
def test_verdict_sent_a_byte_at_a_time_times_out(slow_peer: SlowPeers, unix: bool) -> None:
    """Each byte within a receive's timeout, the verdict as a whole not within its own."""

    def clamd(conn: socket.socket) -> None:
        _read_stream(conn)
        slow_peer.drip(conn, b"stream: Eicar-Test-Signature FOUND\0", every=0.1)

    endpoint = slow_peer.start(clamd, unix=unix)
    with ClamdStream(endpoint, timeout=5, scan_timeout=0.8) as stream:
        stream_message(stream, HEADERS, b"hello\r\n")
        start = time.monotonic()
        result = stream.finish()
        elapsed = time.monotonic() - start
    assert result.status is ScanStatus.ERROR
    assert "timed out" in result.detail
    assert "reply cut short" in result.detail  # bytes came, not the whole verdict
    assert 0.7 <= elapsed < 0.8 + MARGIN


def test_chunks_read_slowly_time_out_as_one_send(slow_peer: SlowPeers) -> None:
    """A call's pieces share its deadline: each alone would make it, together they
    would take a minute."""
    endpoint = slow_peer.start(
        lambda conn: slow_peer.read_slowly(conn, 4096, every=0.05), unix=True
    )
    with ClamdStream(endpoint, timeout=0.8, scan_timeout=5, chunk_size=1024) as stream:
        stream.feed_header("Subject", "slow")
        start = time.monotonic()
        stream.feed(b"x" * (4 * 1024 * 1024))
        fed = time.monotonic() - start
        result = stream.finish()
        finished = time.monotonic() - start - fed
    assert result.status is ScanStatus.ERROR
    assert "sending to clamd failed: timed out" in result.detail
    assert 0.7 <= fed < 0.8 + MARGIN
    assert finished < MARGIN  # the stream already failed: nothing more to wait for


def test_stream_sent_within_its_own_deadline_across_chunks(slow_peer: SlowPeers) -> None:
    """Each body chunk alone is read within ``timeout``, the stream as a whole is not
    within ``stream_timeout``: the scan ends then, not at chunks times ``timeout``."""
    endpoint = slow_peer.start(
        lambda conn: slow_peer.read_slowly(conn, 64 * 1024, every=0.05), unix=True
    )
    chunk = b"x" * (512 * 1024)  # about 0.4 s at the peer's pace
    with ClamdStream(endpoint, timeout=1.2, stream_timeout=1.6, scan_timeout=0.3) as stream:
        stream.feed_header("Subject", "slow")
        start = time.monotonic()
        for _ in range(10):
            stream.feed(chunk)
        fed = time.monotonic() - start
        result = stream.finish()
    assert result.status is ScanStatus.ERROR
    assert "sending to clamd failed: timed out" in result.detail
    assert fed < 1.6 + MARGIN
    assert stream.sent < 10 * len(chunk)


def test_stream_timeout_is_never_below_the_calls(tmp_path: Path) -> None:
    endpoint = Endpoint(path=str(tmp_path / "clamd.sock"))
    assert ClamdStream(endpoint, timeout=5, stream_timeout=1).stream_timeout == 5
    assert ClamdStream(endpoint, timeout=300).stream_timeout == 300
    assert ClamdStream(endpoint, timeout=30).stream_timeout == 240


def test_idle_stream_closed_by_read_timeout_is_an_error(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A client pausing longer than clamd's ReadTimeout between chunks: ERROR, no raise."""
    daemon = start_clamd(tmp_path_factory.mktemp("clamd-rt"), read_timeout=1)
    try:
        stream = ClamdStream(daemon.unix, timeout=5)
        stream_message(stream, HEADERS, b"first chunk\r\n")
        assert stream._sock is not None
        # clamd hangs up after ReadTimeout: the socket turns readable (EOF).
        readable, _, _ = select.select([stream._sock], [], [], 10)
        assert readable
        stream.feed(b"second chunk, too late\r\n")
        result = stream.finish()
        assert result.status is ScanStatus.ERROR
    finally:
        daemon.stop()


def test_parallel_streams_do_not_need_a_worker_thread_each(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    daemon = start_clamd(tmp_path_factory.mktemp("clamd-mt"), max_threads=2)
    try:
        streams = [ClamdStream(daemon.unix, timeout=5) for _ in range(8)]
        for i, stream in enumerate(streams):
            stream_message(stream, HEADERS, EICAR if i % 2 else b"clean\r\n")
        results = [stream.finish() for stream in streams]
    finally:
        daemon.stop()
    assert [r.status for r in results] == [ScanStatus.CLEAN, ScanStatus.INFECTED] * 4


def test_scan_helper_reads_a_file(clamd: Clamd, tmp_path: Path) -> None:
    headers, body = multipart(EICAR)
    message = tmp_path / "m.eml"
    message.write_bytes(b"".join(f"{n}: {v}\r\n".encode() for n, v in headers) + b"\r\n" + body)
    with message.open("rb") as fh:
        assert scan(clamd.tcp, fh).virus == FOUND_NAME


def test_ping(clamd: Clamd, tmp_path: Path) -> None:
    assert ping(clamd.unix)
    assert ping(clamd.tcp)
    assert not ping(Endpoint(path=str(tmp_path / "none.sock")))
    assert clamd.startup < 10


def test_the_canary_scan(clamd: Clamd, tmp_path: Path) -> None:
    """What tells a hung clamd from a message slow to scan (smtpguard.scanners.health)."""
    assert canary(clamd.unix, 2.0) == ""
    assert canary(clamd.tcp, 2.0) == ""
    assert canary(Endpoint(path=str(tmp_path / "none.sock")), 2.0) == "No such file or directory"
