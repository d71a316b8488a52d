"""attachment_size: attachment_too_long when one attachment decodes to more than
limits.max_attachment_size; the MIME structure is followed as the body streams in."""

from __future__ import annotations

import base64

import pytest

from smtpguard.checks import Event, Stage
from smtpguard.checks.attachments import AttachmentSizeBody, AttachmentSizeEom
from smtpguard.session import Connection
from smtpguard.verdict import Hit
from support.checks import (
    ServicesFactory,
    body,
    end_of_headers,
    end_of_message,
    header,
    make_conn,
    with_message,
)

LIMIT = {"max_attachment_size": 1000}


def multipart(size: int, name: str = "report.pdf") -> bytes:
    data = base64.encodebytes(b"\x01" * size).replace(b"\n", b"\r\n")
    return (
        b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="' + name.encode() + b'"\r\n\r\n'
        + data
        + b"--b1--\r\n"
    )  # fmt: skip


def start(*, track_mime: bool = True) -> Connection:
    conn = with_message(make_conn(sender="a@example.org"), track_mime=track_mime)
    header(conn, "Content-Type", 'multipart/mixed; boundary="b1"')
    end_of_headers(conn)
    return conn


def test_declarations() -> None:
    assert (AttachmentSizeBody.name, AttachmentSizeBody.stage) == (
        "attachment_size.body",
        Stage.BODY,
    )
    assert (AttachmentSizeEom.name, AttachmentSizeEom.stage) == ("attachment_size.eom", Stage.EOM)
    assert AttachmentSizeBody.reply_ids == AttachmentSizeEom.reply_ids == ("attachment_too_long",)


def test_attachment_at_the_limit_passes(make_services: ServicesFactory) -> None:
    services = make_services(limits=LIMIT)
    conn = start()
    assert AttachmentSizeBody(services)(conn, body(conn, multipart(1000))) is None
    assert AttachmentSizeEom(services)(conn, end_of_message(conn)) is None


def test_body_half_refuses_as_soon_as_the_size_is_passed(make_services: ServicesFactory) -> None:
    check = AttachmentSizeBody(make_services(limits=LIMIT))
    conn = start()
    message = multipart(3000)
    verdicts = [check(conn, body(conn, message[i : i + 512])) for i in range(0, len(message), 512)]
    first = next(i for i, v in enumerate(verdicts) if v is not None)
    assert first < len(verdicts) - 1  # before the end of the message
    verdict = verdicts[first]
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "attachment_too_long"
    assert "'report.pdf'" in verdict.detail
    assert verdict.detail.endswith("> 1000 octets")


def test_end_of_message_half_sees_the_last_part(make_services: ServicesFactory) -> None:
    services = make_services(limits=LIMIT)
    conn = start()
    # The attachment is the last part and the closing boundary never comes: only
    # closing the walker at end of message settles its size.
    data = multipart(1500).rpartition(b"--b1--")[0]
    body(conn, data)
    verdict = AttachmentSizeEom(services)(conn, end_of_message(conn))
    assert verdict == Hit(
        "attachment_too_long", "attachment 'report.pdf' decodes to 1500 > 1000 octets"
    )


def test_without_mime_tracking_or_message_nothing_is_decided(
    make_services: ServicesFactory,
) -> None:
    services = make_services(limits=LIMIT)
    conn = start(track_mime=False)
    assert AttachmentSizeBody(services)(conn, body(conn, multipart(3000))) is None
    assert AttachmentSizeEom(services)(conn, end_of_message(conn)) is None
    for bare in (make_conn(sender="a@example.org"), make_conn()):
        assert AttachmentSizeEom(services)(bare, Event()) is None


@pytest.mark.parametrize("size", [0, 1, 999])
def test_small_attachments_pass(make_services: ServicesFactory, size: int) -> None:
    services = make_services(limits=LIMIT)
    conn = start()
    body(conn, multipart(size))
    assert AttachmentSizeEom(services)(conn, end_of_message(conn)) is None
