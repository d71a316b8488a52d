"""RspamdClient against a real rspamd normal worker (started once per test session)."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import pytest

from smtpguard.scanners import Endpoint, MessageSpool, SpamEnvelope, SpamResult, SpamStatus
from smtpguard.scanners.rspamd import RspamdClient
from support.daemons import GTUBE, Rspamd, free_port

pytestmark = pytest.mark.integration

HAM = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: lunch\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <lunch.1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Bob,\r\n\r\nlunch tomorrow at noon? The usual place.\r\n\r\nAlice\r\n"
)
SPAM = HAM.replace(b"lunch tomorrow", GTUBE + b"\r\nlunch tomorrow")
ENVELOPE_RCPTS = ("bob@example.com",)


def check(client: RspamdClient, message: bytes | MessageSpool, queue_id: str = "") -> SpamResult:
    """Scan with the usual test envelope."""
    envelope = SpamEnvelope(
        ip="198.51.100.7",
        helo="client.example.org",
        sender="alice@example.org",
        rcpts=ENVELOPE_RCPTS,
        queue_id=queue_id or None,
    )
    return client.check(message, envelope)


@pytest.fixture
def client(rspamd: Rspamd) -> RspamdClient:
    return RspamdClient(rspamd.endpoint, timeout=20)


def test_clean_mail_passes(client: RspamdClient) -> None:
    result = check(client, HAM, "HAM1")
    assert result.status is SpamStatus.OK, result.detail
    assert result.ok
    assert result.action == "no action"
    assert result.required_score is not None
    assert result.score < result.required_score
    assert "GTUBE" not in result.symbols


def test_gtube_gives_action_reject(client: RspamdClient) -> None:
    result = check(client, SPAM, "SPAM1")
    assert result.status is SpamStatus.OK, result.detail
    assert result.action == "reject"
    assert "GTUBE" in result.symbols
    # rspamd 3.4 forces the score to the reject threshold; the symbol itself scores 0.
    assert result.required_score is not None
    assert result.score >= result.required_score


def test_envelope_reaches_rspamd(client: RspamdClient, rspamd: Rspamd) -> None:
    envelope = SpamEnvelope(
        ip="203.0.113.99",
        helo="helo.example.net",
        hostname="client.example.net",
        sender="envelope-sender@example.net",
        rcpts=("r1@example.com", "r2@example.com"),
        queue_id="QIDENVELOPE",
        user="carol",
    )
    result = client.check(HAM, envelope)
    assert result.ok, result.detail
    line = next(line for line in rspamd.log().splitlines() if "qid: <QIDENVELOPE>" in line)
    assert "ip: 203.0.113.99" in line
    assert "from: <envelope-sender@example.net>" in line
    assert "user: carol" in line
    assert "rcpts: <r1@example.com,r2@example.com>" in line


def test_utf8_envelope_and_null_sender(client: RspamdClient) -> None:
    envelope = SpamEnvelope(
        ip="2001:db8::25", sender="", rcpts=("用户@例子.广告",), helo="[2001:db8::25]"
    )
    result = client.check(HAM, envelope)
    assert result.ok, result.detail


def test_over_a_unix_socket(rspamd: Rspamd) -> None:
    result = check(RspamdClient(rspamd.unix, timeout=20), SPAM)
    assert result.action == "reject"


def spool_of(message: bytes, memory_cap: int, filler_lines: int = 0) -> MessageSpool:
    spool = MessageSpool(memory_cap=memory_cap)
    head, _, body = message.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.decode().partition(": ")
        spool.feed_header(name, value)
    spool.end_of_headers()
    spool.feed(body)
    for i in range(filler_lines):
        spool.feed(b"filler line %06d so that the spool rolls over to disk\r\n" % i)
    return spool


def test_spooled_message_on_disk(client: RspamdClient) -> None:
    with spool_of(SPAM, memory_cap=256) as spool:
        assert not spool.in_memory
        result = check(client, spool)
    assert result.action == "reject", result


def test_large_spooled_message_arrives_whole(client: RspamdClient, rspamd: Rspamd) -> None:
    with spool_of(HAM, memory_cap=16 * 1024, filler_lines=20_000) as spool:
        result = check(client, spool, "BIGSPOOL")
        size = spool.size
    assert result.ok, result.detail
    line = next(line for line in rspamd.log().splitlines() if "qid: <BIGSPOOL>" in line)
    assert f"len: {size}," in line


def test_gtube_is_ignored_in_a_large_text_part(client: RspamdClient) -> None:
    """rspamd 3.4 looks for GTUBE only in text parts below about 8 KiB."""
    filler = (b"y" * 70 + b"\r\n") * 200  # ~14 KB
    result = check(client, SPAM.replace(b"Alice\r\n", filler))
    assert result.ok
    assert result.action != "reject"
    assert "GTUBE" not in result.symbols


def test_engine_down_is_an_error() -> None:
    client = RspamdClient(Endpoint(host="127.0.0.1", port=free_port()), timeout=2)
    result = client.check(HAM, SpamEnvelope())
    assert result.status is SpamStatus.ERROR
    assert "refused" in result.detail.lower()


def test_missing_unix_socket_is_an_error(tmp_path: Path) -> None:
    client = RspamdClient(Endpoint(path=str(tmp_path / "none.sock")), timeout=2)
    result = client.check(HAM, SpamEnvelope())
    assert result.status is SpamStatus.ERROR


def test_engine_that_never_answers_times_out() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        endpoint = Endpoint(host="127.0.0.1", port=server.getsockname()[1])
        result = RspamdClient(endpoint, timeout=0.3).check(HAM, SpamEnvelope())
    assert result.status is SpamStatus.ERROR
    assert "timed out" in result.detail


class _Canned(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (500, b'{"error": "task timeout"}', "HTTP 500: task timeout"),
        (200, b"<html>not json</html>", "not a JSON object"),
        (200, b'{"action": "reject"}', "lacks score or action"),
        (200, b"[1, 2]", "not a JSON object"),
        (200, b'{"score": true, "action": "reject"}', "lacks score or action"),
        (200, b"x" * 2000, "reply over 1000 octets"),
    ],
)
def test_unexpected_replies_are_errors(status: int, body: bytes, detail: str) -> None:
    handler = type("Handler", (_Canned,), {"status": status, "body": body})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            endpoint = Endpoint(host="127.0.0.1", port=server.server_address[1])
            result = RspamdClient(endpoint, timeout=5, max_reply=1000).check(HAM, SpamEnvelope())
        finally:
            server.shutdown()
    assert result.status is SpamStatus.ERROR
    assert detail in result.detail


def test_startup_time_is_reported(rspamd: Rspamd) -> None:
    # Cold start compiles Hyperscan databases (~12-17 s here); warm start is < 2 s.
    assert rspamd.startup < 90
