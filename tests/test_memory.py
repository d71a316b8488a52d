"""Memory, not time: a 50 MB message streams through the milter process without
the process growing by more than a few MB (nothing is buffered whole)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.mtclient import MilterSession
from support.service import UNTRUSTED_IP, Running, make_site, running

pytestmark = pytest.mark.integration

#: The bound this test holds the milter to, in kB of resident memory growth.
MAX_GROWTH_KB = 8 * 1024
MESSAGE_BYTES = 50 * 1024 * 1024


def reset_peak(pid: int) -> None:
    """Set the process's peak resident size (VmHWM) to its current one (Linux 4.0+,
    proc(5) clear_refs), so that the peak read later is the peak since now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing")


def body_chunks() -> Iterator[bytes]:
    """A multipart body with one large base64 attachment, produced lazily."""
    yield (
        b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\n"
        b'Content-Type: application/octet-stream; name="big.iso"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="big.iso"\r\n\r\n'
    )
    line = base64.b64encode(bytes(range(57))) + b"\r\n"  # 78 octets, 57 decoded
    block = line * 800  # 62,400 octets
    sent = 0
    while sent < MESSAGE_BYTES:
        yield block
        sent += len(block)
    yield b"--b1--\r\n"


@pytest.fixture(scope="module")
def big_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    extra = {"limits": {"max_message_size": 200_000_000, "max_attachment_size": 100_000_000}}
    with running(make_site(tmp_path_factory.mktemp("memory"), extra)) as svc:
        yield svc


def send(session: MilterSession, chunks: Iterator[bytes]) -> str:
    session.connect(UNTRUSTED_IP)
    session.helo("mail.sender.example")
    assert session.mail("<friend@sender.example>").kind == "continue"
    assert session.rcpt("<alice@example.com>").kind == "continue"
    session.data()
    for name, value in (
        ("From", "friend@sender.example"),
        ("MIME-Version", "1.0"),
        ("Content-Type", 'multipart/mixed; boundary="b1"'),
    ):
        assert session.header(name, value).kind == "continue"
    session.eoh()
    for chunk in chunks:
        assert session.body_bytes(chunk).kind == "continue"
    answer, _mods = session.eom()
    return answer.kind


def test_50mb_message_streams_in_bounded_memory(big_service: Running) -> None:
    pid = big_service.process.pid
    with big_service.session() as warm:  # load every code path once
        assert send(warm, iter([b"--b1--\r\n"])) in ("continue", "accept")
    # Peak against peak: the peak since startup (VmHWM) would count what loading the
    # configuration and rules took, and hide a message that stays below it.
    reset_peak(pid)
    before = status_kb(pid, "VmHWM")
    with big_service.session() as s:
        assert send(s, body_chunks()) in ("continue", "accept")
    growth = status_kb(pid, "VmHWM") - before
    print(f"milter peak RSS before {before} kB, growth {growth} kB for a 50 MB message")
    assert growth < MAX_GROWTH_KB
    assert "big.iso" not in big_service.log()  # accepted: no decision was logged
