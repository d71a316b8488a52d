"""RspamdClient against a real rspamd normal worker (started once per test session)."""

from __future__ import annotations

import http.client
import http.server
import io
import logging
import re
import socket
import struct
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from smtpguard.config import AntispamConfig
from smtpguard.scanners import Endpoint, MessageSpool, SpamEnvelope, SpamResult, SpamStatus
from smtpguard.scanners.backends import rspamd_engine
from smtpguard.scanners.rspamd import _CANARY, RspamdClient
from support.daemons import GTUBE, Rspamd, free_port
from support.fake_dns import FakeClock
from support.listeners import full_unix_listener
from support.polling import threads_done, wait_until

if TYPE_CHECKING:
    from scanners.conftest import SlowPeers

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
    # rspamd 3.4 forces the score to the reject threshold (15 by default); the symbol
    # itself scores 0. Its required_score is the highest threshold it has: the test
    # rspamd's discard one (tests/support/daemons.py).
    assert result.required_score == 1000.0
    assert result.score >= 15.0


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


def test_a_reply_too_long_to_keep_still_gives_the_verdict(rspamd: Rspamd) -> None:
    """rspamd lists every URL: a sender could pad a message with them until the reply
    is over the cap and the engine skipped (found by review). Its head still holds the
    verdict."""
    links = "".join(f"http://host{n}.padding{n}.example/\r\n" for n in range(300))
    message = SPAM.replace(b"\r\n\r\n", f"\r\n\r\n{links}".encode(), 1)
    whole = check(RspamdClient(rspamd.endpoint, timeout=20), message)
    cut = check(RspamdClient(rspamd.endpoint, timeout=20, max_reply=600), message)
    assert whole.status is SpamStatus.OK, whole.detail
    assert cut.status is SpamStatus.OK, cut.detail
    assert (cut.score, cut.action, cut.required_score) == (
        whole.score,
        whole.action,
        whole.required_score,
    )
    # The cap was really passed: rspamd's whole reply is longer.
    endpoint = rspamd.endpoint
    assert endpoint.path is None
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=20)
    try:
        conn.request("POST", "/checkv2", body=message)
        assert len(conn.getresponse().read()) > 600
    finally:
        conn.close()


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


def _ask_canned(status: int, body: bytes, max_reply: int = 1000) -> SpamResult:
    """Ask a server that answers ``status`` and ``body``, with a 1000-octet reply cap."""
    handler = type("Handler", (_Canned,), {"status": status, "body": body})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            endpoint = Endpoint(host="127.0.0.1", port=server.server_address[1])
            client = RspamdClient(endpoint, timeout=5, max_reply=max_reply)
            result = client.check(HAM, SpamEnvelope())
        finally:
            server.shutdown()
    return result


def _cut_after(head: bytes, score: bytes, cap: int = 1000) -> bytes:
    """A reply whose first ``cap`` octets end with ``head``, the start of ``score``."""
    start = b'{"action": "reject", "score":'
    padding = b" " * (cap - len(start) - len(head))
    return start + padding + score + b', "x": "' + b"x" * cap + b'"}'


@pytest.mark.parametrize(
    "body",
    [
        b'{"is_skipped": false, "score": 16.5, "required_score": 15, "action": "reject",'
        b' "urls": ["',
        b'{\n  "action" : "reject",\n  "score": 16.5, "urls": ["a", "b',
    ],
)
def test_a_long_replys_verdict_is_read_from_its_head(body: bytes) -> None:
    result = _ask_canned(200, body + b"x" * 5000 + b'"]}')
    assert result.status is SpamStatus.OK, result.detail
    assert (result.score, result.action) == (16.5, "reject")


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (500, b'{"error": "task timeout"}', "HTTP 500: task timeout"),
        (200, b"<html>not json</html>", "not a JSON object"),
        (200, b'{"action": "reject"}', "lacks score or action"),
        (200, b"[1, 2]", "not a JSON object"),
        (200, b'{"score": true, "action": "reject"}', "lacks score or action"),
        # Python's json reads these; NaN would compare false with every threshold.
        (200, b'{"score": NaN, "action": "no action"}', "score is nan"),
        (200, b'{"score": -Infinity, "action": "no action"}', "score is -inf"),
        (200, b'{"score": 1' + b"0" * 400 + b', "action": "no action"}', "score is 1000"),
        (200, b"x" * 2000, "reply over 1000 octets"),
        # Too long, and the verdict is not in the part kept.
        (200, b'{"symbols": {"' + b"x" * 2000 + b'": 1}, "score": 1, "action": "x"}', "over"),
        (500, b'{"score": 1, "action": "reject", "x": "' + b"x" * 2000 + b'"}', "over"),
        # Cut inside the score: 16 of 16.5 must not pass for the score.
        (200, b'{"action": "reject", "score": 1' + b"6" * 996 + b'.5, "x": 1}', "over"),
        (200, _cut_after(b"16.", b"16.5"), "over"),
        (200, _cut_after(b"1.65e", b"1.65e1"), "over"),
        # Not JSON: the pairs must be separated.
        (200, b'{"score" 5 "action" "no action", "x": "' + b"x" * 2000 + b'"}', "over"),
    ],
)
def test_unexpected_replies_are_errors(status: int, body: bytes, detail: str) -> None:
    result = _ask_canned(status, body)
    assert result.status is SpamStatus.ERROR
    assert detail in result.detail


#: Review rev120 F4: arrays nested deeper than Python's recursion limit.
_DEEP = b'{"score": 20, "action": "reject", "symbols": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def test_a_reply_nested_too_deep_is_an_error_not_an_exception() -> None:
    """Whole (json.loads): an engine error, which on_temp_error decides, never an
    exception (internal_error whatever on_temp_error says). Cut short, its verdict is
    read from its head as for any long reply."""
    result = _ask_canned(200, _DEEP, max_reply=len(_DEEP))
    assert result.status is SpamStatus.ERROR
    assert result.detail.endswith("reply is not a JSON object")
    cut = _ask_canned(200, _DEEP, max_reply=150_000)
    assert (cut.status, cut.score, cut.action) == (SpamStatus.OK, 20.0, "reject")
    late = _DEEP.replace(b'"score": 20, "action": "reject", ', b"").replace(
        b"}", b', "score": 20, "action": "reject"}'
    )
    cut = _ask_canned(200, late, max_reply=150_000)
    assert cut.status is SpamStatus.ERROR
    assert cut.detail.endswith("reply over 150000 octets")


def test_startup_time_is_reported(rspamd: Rspamd) -> None:
    # Cold start compiles Hyperscan databases (~12-17 s here); warm start is < 2 s.
    assert rspamd.startup < 90


#: What a call may take beyond its deadline: the last operation's wake-up, scheduling.
MARGIN = 0.4
ANSWER_BODY = b'{"score": 1.5, "required_score": 15, "action": "no action", "symbols": {}}'
ANSWER_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
ANSWER = ANSWER_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER_BODY), ANSWER_BODY)


def _read_request(conn: socket.socket) -> None:
    with conn.makefile("rb") as request:
        length = 0
        while (line := request.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        assert len(request.read(length)) == length


@pytest.mark.parametrize(
    ("sent", "dripped"),
    [(b"", ANSWER), (ANSWER_HEAD, ANSWER[len(ANSWER_HEAD) :]), (ANSWER[:-20], ANSWER[-20:])],
    ids=["status-line", "headers", "json"],
)
def test_answer_sent_a_byte_at_a_time_times_out(
    slow_peer: SlowPeers, sent: bytes, dripped: bytes
) -> None:
    """Each byte within a receive's timeout, the answer as a whole not within its own."""

    def rspamd(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(sent)
        slow_peer.drip(conn, dripped, every=0.1)

    client = RspamdClient(slow_peer.start(rspamd), timeout=0.8)
    start = time.monotonic()
    result = client.check(HAM, SpamEnvelope())
    elapsed = time.monotonic() - start
    assert result.status is SpamStatus.ERROR
    assert "timed out" in result.detail
    assert 0.7 <= elapsed < 0.8 + MARGIN


def test_answer_in_small_pieces_within_the_deadline(slow_peer: SlowPeers) -> None:
    def rspamd(conn: socket.socket) -> None:
        _read_request(conn)
        slow_peer.drip(conn, ANSWER, every=0.002)

    result = RspamdClient(slow_peer.start(rspamd, unix=True), timeout=5).check(HAM, SpamEnvelope())
    assert result.ok, result.detail
    assert result.score == 1.5


def test_request_read_slowly_times_out(slow_peer: SlowPeers) -> None:
    """Every 64 KiB block of a spooled message goes out within a send's timeout; the
    request as a whole not within the deadline it shares with the connect."""
    endpoint = slow_peer.start(
        lambda conn: slow_peer.read_slowly(conn, 4096, every=0.02), unix=True
    )
    message = io.BytesIO(HAM + b"x" * (4 * 1024 * 1024))
    start = time.monotonic()
    result = RspamdClient(endpoint, timeout=0.8).check(message, SpamEnvelope())
    elapsed = time.monotonic() - start
    assert result.status is SpamStatus.ERROR
    assert "timed out" in result.detail
    assert 0.7 <= elapsed < 0.8 + MARGIN


def test_an_engine_that_gave_no_answer_is_asked_again_only_after_the_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review rev86 F1: a hung engine held every message for its timeout."""
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    port = free_port()
    endpoint = Endpoint(host="127.0.0.1", port=port)
    client = RspamdClient(endpoint, timeout=2, retry_interval=5.0, clock=clock)
    assert "refused" in client.check(HAM, SpamEnvelope()).detail.lower()
    handler = type("Handler", (_Canned,), {"body": b'{"score": 1.5, "action": "no action"}'})
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            # Up again, but not asked before the interval has passed.
            for _ in range(2):
                result = client.check(HAM, SpamEnvelope())
                assert result.status is SpamStatus.ERROR
                assert result.detail.startswith(f"rspamd at {endpoint}: not asked, gave no")
            clock.advance(5.0)
            result = client.check(HAM, SpamEnvelope())
        finally:
            server.shutdown()
    assert (result.status, result.score) == (SpamStatus.OK, 1.5)
    # Only this engine's lines: another test's ping may end during this one.
    ours = [r for r in caplog.records if f"rspamd at {endpoint} " in r.getMessage()]
    # Its end a WARNING too: messages went unasked (review rev95 F6).
    assert [r.levelno for r in ours] == [logging.WARNING, logging.WARNING]
    assert ours[1].getMessage() == (
        f"spam engine rspamd at {endpoint} answering again after 5.0 s; 2 messages"
        " were not asked meanwhile"
    )


def test_an_engine_that_answers_an_error_is_asked_every_time() -> None:
    """An answer, even an error, is no outage: the next message asks again."""
    handler = type("Handler", (_Canned,), {"status": 500, "body": b'{"error": "task timeout"}'})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            endpoint = Endpoint(host="127.0.0.1", port=server.server_address[1])
            client = RspamdClient(endpoint, timeout=5)
            details = [client.check(HAM, SpamEnvelope()).detail for _ in range(2)]
        finally:
            server.shutdown()
    assert details == [f"rspamd at {endpoint}: HTTP 500: task timeout"] * 2


@pytest.mark.parametrize("failure", ["slow", "reset"])
def test_an_engine_failing_one_message_but_scanning_a_canary_is_no_outage(
    slow_peer: SlowPeers, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    """A scan that takes longer than the timeout, or a connection reset, is that
    message's: the next message asks again (a crafted message must not stop the engine
    for everyone; review rev88 N1: 16 spam messages passed after one slow one)."""

    def rspamd(conn: socket.socket) -> None:
        with conn.makefile("rb") as request:
            head = b"".join(iter(request.readline, b"\r\n"))
        if f"Content-Length: {len(_CANARY)}\r\n".encode() in head:
            conn.sendall(ANSWER)  # the canary is scanned
        elif failure == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        else:
            slow_peer.stop.wait(5)  # the scan

    endpoint = slow_peer.start(rspamd)
    client = RspamdClient(endpoint, timeout=0.3)
    details = []
    for _ in range(2):
        details.append(client.check(HAM, SpamEnvelope()).detail)
        threads_done("rspamd-canary")  # the canary after the failure has its answer
    assert [d.startswith("rspamd at ") and "not asked" not in d for d in details] == [True] * 2
    assert not client.outage.down
    assert f"rspamd at {endpoint} gave no answer" not in caplog.text


def test_a_large_message_dropped_halfway_names_max_message(slow_peer: SlowPeers) -> None:
    """Review rev120 F6: rspamd drops a message over its max_message without an answer;
    "Broken pipe" alone did not say why (and a tempfail site deferred it for days)."""

    def drops_it(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    client = RspamdClient(slow_peer.start(drops_it), timeout=5)
    result = client.check(HAM + b"x" * (4 * 1024 * 1024), SpamEnvelope())
    assert result.status is SpamStatus.ERROR
    assert result.detail.endswith(
        f"(sending {len(HAM) + 4 * 1024 * 1024} octets: rspamd drops a message over its"
        " max_message; keep antispam.engine_max_bytes at or below it)"
    )
    assert result.too_large  # on_size_limit applies (review rev145 F2)


def test_a_large_message_taken_whole_then_dropped_is_no_matter_of_size(
    slow_peer: SlowPeers,
) -> None:
    """Review rev147 F1: rspamd crashing (or restarted) after it read a message over
    64 KiB was taken for its max_message refusal, so on_size_limit = "tempfail"
    deferred that message for good where on_temp_error = "pass" was chosen."""

    def takes_it_then_crashes(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        found = re.search(rb"(?i)content-length: *(\d+)", head)
        assert found is not None
        length = int(found.group(1))
        while len(body) < length:
            data = conn.recv(65536)
            if not data:
                return  # the client gave up (the probe announcing a length sends none)
            body += data
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    client = RspamdClient(slow_peer.start(takes_it_then_crashes), timeout=5)
    result = client.check(HAM + b"x" * (256 * 1024), SpamEnvelope())
    assert result.status is SpamStatus.ERROR
    assert not result.too_large
    assert "max_message" not in result.detail


def test_a_large_message_sent_whole_then_dropped_for_its_length_is_a_matter_of_size(
    slow_peer: SlowPeers,
) -> None:
    """Review rev151 F2: rspamd drops a message over its max_message once it has read
    the header block; one that fits in the sockets' buffers is sent whole first, and
    the drop came as an engine fault (on_size_limit = "tempfail" did not apply, and
    on_temp_error = "pass" let it through). Told from a crash by asking again."""
    limit = 300_000

    def drops_long_ones(conn: socket.socket, *, shutting_down: bool = False) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(4096)
            if not more:
                return
            data += more
        found = re.search(rb"(?i)content-length: *(\d+)", data)
        assert found is not None
        length = int(found.group(1))
        if length > limit or shutting_down:
            if length > 1:
                # Time for the client to hand the whole message to the kernel first
                # (the probe announcing one octet is dropped at once).
                slow_peer.stop.wait(0.3)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            slow_peer.stop.wait(2)  # waits for the body, which the probe never sends
        conn.close()

    client = RspamdClient(slow_peer.start(drops_long_ones), timeout=5)
    result = client.check(HAM + b"x" * 400_000, SpamEnvelope())
    assert result.status is SpamStatus.ERROR
    assert result.too_large
    assert "rspamd drops a message over its max_message" in result.detail
    # Review rev154 F3: an engine that drops every request (shutting down) is not
    # refusing the message for its size.
    down = RspamdClient(slow_peer.start(partial(drops_long_ones, shutting_down=True)), timeout=5)
    result = down.check(HAM + b"x" * 400_000, SpamEnvelope())
    assert result.status is SpamStatus.ERROR
    assert not result.too_large


def test_an_engine_that_answers_nothing_at_all_is_an_outage(slow_peer: SlowPeers) -> None:
    def hung(conn: socket.socket) -> None:
        slow_peer.stop.wait(5)

    endpoint = slow_peer.start(hung, unix=True)
    client = RspamdClient(endpoint, timeout=0.3)
    assert client.check(HAM, SpamEnvelope()).detail.endswith(": timed out")
    wait_until(lambda: client.outage.down, deadline=5)
    start = time.monotonic()
    assert "not asked, gave no answer (timed out;" in client.check(HAM, SpamEnvelope()).detail
    assert time.monotonic() - start < 0.05


def test_an_outage_is_timed_from_the_failure_not_the_start(tmp_path: Path) -> None:
    """Review rev120 F1: a connect that timed out after the retry interval had passed
    since the scan began left no wait: every message waited the full timeout again."""
    path = tmp_path / "rspamd.sock"
    with full_unix_listener(path):
        client = RspamdClient(Endpoint(path=str(path)), timeout=0.6, retry_interval=0.4)
        start = time.monotonic()
        assert "listen queue full" in client.check(HAM, SpamEnvelope()).detail
        assert time.monotonic() - start >= 0.6
        start = time.monotonic()
        result = client.check(HAM, SpamEnvelope())
        assert time.monotonic() - start < 0.2
    assert result.unasked
    assert "not asked, gave no answer" in result.detail


def test_a_reload_keeps_the_outage(tmp_path: Path) -> None:
    """Review rev120 F5: the client a reload builds (rspamd_engine again) started with
    no outage, and its first messages waited the full timeout again."""
    config = AntispamConfig(
        engine="rspamd", engine_socket=Endpoint(path=str(tmp_path / "none.sock")), engine_timeout=2
    )
    before = rspamd_engine(config)
    assert "No such file" in before.check(HAM, SpamEnvelope()).detail
    after = rspamd_engine(config)
    assert after is not before
    result = after.check(HAM, SpamEnvelope())
    assert result.unasked, result.detail


def test_the_canary_scan(rspamd: Rspamd, tmp_path: Path) -> None:
    """What tells a hung rspamd from a message slow to scan (smtpguard.scanners.health)."""
    assert RspamdClient(rspamd.endpoint)._canary(2.0) == ""
    assert RspamdClient(rspamd.unix)._canary(2.0) == ""
    missing = Endpoint(path=str(tmp_path / "none.sock"))
    assert RspamdClient(missing)._canary(2.0) == "No such file or directory"
