"""VirusScan: virus_found from the scanner's verdict; its stream is a fake."""

from __future__ import annotations

import pytest

from smtpguard.checks import Event, Stage
from smtpguard.checks.virus import VirusScan
from smtpguard.endpoint import Endpoint
from smtpguard.scanners import ScanResult, ScanStatus
from smtpguard.verdict import Hit, TempError, Verdict
from support.checks import ServicesFactory, make_conn, stream_message
from support.fakes import FakeVirusScanner

HEADERS = [("From", "a@example.org"), ("Subject", "hi")]
CLAMD = {"backend": "clamd", "clamd_socket": "inet:127.0.0.1:3310"}


def scan(check: VirusScan, chunks: tuple[bytes, ...] = (b"hello\r\n",)) -> Verdict | None:
    conn = make_conn(sender="a@example.org", recipients=["b@example.com"])
    stream_message(check, conn, HEADERS, chunks)
    return check(conn, Event())


def test_declaration() -> None:
    assert VirusScan.name == "virus"
    assert VirusScan.stage is Stage.EOM
    assert VirusScan.reply_ids == ("virus_found", "internal_error")


def test_backend_none_is_inert_and_opens_nothing(
    make_services: ServicesFactory, virus_scanner: FakeVirusScanner
) -> None:
    check = VirusScan(make_services())
    assert check.inert
    assert scan(check) is None
    assert virus_scanner.streams == []


def test_the_message_streams_to_the_scanner_as_it_arrives(
    make_services: ServicesFactory, virus_scanner: FakeVirusScanner
) -> None:
    check = VirusScan(make_services(virus=CLAMD))
    assert not check.inert
    assert scan(check, (b"line 1\r\n", b"line 2\r\n")) is None
    (stream,) = virus_scanner.streams
    assert stream.headers == HEADERS
    assert stream.ends_of_headers == 1
    assert bytes(stream.body) == b"line 1\r\nline 2\r\n"
    assert stream.finished == 1
    assert virus_scanner.configs[0].clamd_socket == Endpoint(host="127.0.0.1", port=3310)


@pytest.mark.parametrize(
    ("result", "config", "verdict"),
    [
        (ScanResult(ScanStatus.CLEAN), {}, None),
        (
            ScanResult(ScanStatus.INFECTED, virus="Eicar-Signature"),
            {},
            Hit("virus_found", "virus Eicar-Signature"),
        ),
        (
            ScanResult(ScanStatus.INFECTED, detail="truncated scan"),
            {},
            Hit("virus_found", "virus unnamed (truncated scan)"),
        ),
        (
            ScanResult(ScanStatus.ERROR, detail="connection refused"),
            {},
            TempError("internal_error", "scanner failed: connection refused"),
        ),
        (
            ScanResult(ScanStatus.ERROR, detail="hook: exit status 1", suspect=True),
            {},
            TempError("internal_error", "scanner failed: hook: exit status 1", firm=True),
        ),
        # Review rev145 F2: clamd refusing the stream for its size is the size limit's
        # case where on_size_limit = "tempfail" says so, not only a scanner error.
        (
            ScanResult(ScanStatus.ERROR, detail="StreamMaxLength", too_large=True),
            {"on_size_limit": "tempfail"},
            TempError(
                "internal_error", "scanner failed: StreamMaxLength", firm=True, for_good=True
            ),
        ),
        (
            ScanResult(ScanStatus.ERROR, detail="StreamMaxLength", too_large=True),
            {},
            TempError("internal_error", "scanner failed: StreamMaxLength"),
        ),
        (ScanResult(ScanStatus.SIZE_LIMIT, detail="over max_bytes"), {}, None),
        (
            ScanResult(ScanStatus.SIZE_LIMIT, detail="over max_bytes"),
            {"on_size_limit": "tempfail"},
            TempError(
                "internal_error",
                "too large to scan: over max_bytes",
                firm=True,
                fault=False,
                for_good=True,
            ),
        ),
    ],
)
def test_verdicts(
    make_services: ServicesFactory,
    virus_scanner: FakeVirusScanner,
    result: ScanResult,
    config: dict[str, str],
    verdict: Verdict | None,
) -> None:
    virus_scanner.result = result
    assert scan(VirusScan(make_services(virus={**CLAMD, **config}))) == verdict


def test_command_backend_gets_the_same_stream(
    make_services: ServicesFactory, virus_scanner: FakeVirusScanner
) -> None:
    virus_scanner.result = ScanResult(ScanStatus.INFECTED, virus="X")
    check = VirusScan(make_services(virus={"backend": "command", "command": ["/bin/scan", "-"]}))
    assert scan(check) == Hit("virus_found", "virus X")
    assert virus_scanner.configs[0].command == ("/bin/scan", "-")


def test_one_stream_per_transaction_closed_when_it_ends(
    make_services: ServicesFactory, virus_scanner: FakeVirusScanner
) -> None:
    check = VirusScan(make_services(virus=CLAMD))
    conn = make_conn(sender="a@example.org")
    stream_message(check, conn, HEADERS, [b"x\r\n"])
    assert conn.txn is not None
    check.discard(conn.txn)
    assert virus_scanner.streams[0].closed
    assert check(conn, Event()) is None  # nothing left to ask
    second = make_conn(sender="b@example.org")
    stream_message(check, second, HEADERS, [b"y\r\n"])
    assert len(virus_scanner.streams) == 2
    assert bytes(virus_scanner.streams[1].body) == b"y\r\n"


def test_no_content_no_scan(
    make_services: ServicesFactory, virus_scanner: FakeVirusScanner
) -> None:
    check = VirusScan(make_services(virus=CLAMD))
    assert check(make_conn(sender="a@example.org"), Event()) is None
    assert check(make_conn(), Event()) is None
    assert virus_scanner.streams == []
