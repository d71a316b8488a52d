"""attachment_size: attachment_too_long when one attachment decodes to more than
limits.max_attachment_size; the MIME structure is followed as the body streams in."""

from __future__ import annotations

import base64
import binascii

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


def uuencoded(size: int) -> bytes:
    data = b"\x01" * size
    lines = [binascii.b2a_uu(data[i : i + 45]).rstrip(b"\n") for i in range(0, size, 45)]
    return (
        b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: x-uuencode\r\n"
        b'Content-Disposition: attachment; filename="old.bin"\r\n\r\n'
        b"begin 644 old.bin\r\n" + b"\r\n".join(lines) + b"\r\n`\r\nend\r\n--b1--\r\n"
    )  # fmt: skip


def test_uuencoded_attachment_is_judged_by_its_decoded_size(
    make_services: ServicesFactory,
) -> None:
    """Counted at its encoded size (~1.37x), 800 octets of data were refused at 1000."""
    services = make_services(limits=LIMIT)
    conn = start()
    assert AttachmentSizeBody(services)(conn, body(conn, uuencoded(800))) is None
    assert AttachmentSizeEom(services)(conn, end_of_message(conn)) is None
    conn = start()
    body(conn, uuencoded(1200))
    verdict = AttachmentSizeEom(services)(conn, end_of_message(conn))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "attachment_too_long"


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


BIG_PART = (
    b"Content-Type: application/pdf; name=big.pdf\r\nContent-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=big.pdf\r\n\r\n"
    + base64.encodebytes(b"\x01" * 5000).replace(b"\n", b"\r\n")
)
NESTED = b"".join(
    b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (d, d + 1)
    for d in range(20)
)
INNER = b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="i"\r\n\r\n--i\r\n'
PADDING = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 200) for i in range(330))
LONG = b"q" * 1100


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        pytest.param(
            'multipart/mixed; boundary="b"', b"--b\r\n" + BIG_PART + b"--b--\r\n", id="plain"
        ),
        pytest.param(
            'multipart/mixed; boundary="b0"',
            NESTED + b"--b20\r\n" + BIG_PART + b"--b20--\r\n",
            id="nested-past-the-depth-limit",
        ),
        pytest.param(
            'multipart/mixed; boundary="b"',
            b"--b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(INNER + BIG_PART + b"--i--\r\n")
            + b"--b--\r\n",
            id="base64-message-rfc822",
        ),
        pytest.param(
            'multipart/mixed; boundary="b"',
            b"--b\r\n" + PADDING + BIG_PART + b"--b--\r\n",
            id="part-headers-over-64k",
        ),
        pytest.param(
            f'multipart/mixed; boundary="{LONG.decode()}"',
            b"--" + LONG + b"\r\n" + BIG_PART + b"--" + LONG + b"--\r\n",
            id="boundary-over-1008",
        ),
    ],
)
def test_a_structure_the_walker_does_not_enter_cannot_hide_an_attachment(
    make_services: ServicesFactory, content_type: str, raw: bytes
) -> None:
    """Parts read whole for a structural reason (depth limit, encoded message/rfc822,
    an over-long boundary, a header block over budget) used to count nothing: a 5000
    byte attachment inside passed a 1000 byte limit. A mail client still opens it."""
    services = make_services(limits=LIMIT)
    conn = with_message(make_conn(sender="a@example.org"))
    header(conn, "Content-Type", content_type)
    end_of_headers(conn)
    verdict = AttachmentSizeBody(services)(conn, body(conn, raw))
    if verdict is None:
        verdict = AttachmentSizeEom(services)(conn, end_of_message(conn))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "attachment_too_long"


def test_text_outside_the_parts_counts_against_the_limit(make_services: ServicesFactory) -> None:
    """Review rev42, through Postfix: base64 over a multipart hides its delimiters from
    the walker, which counted nothing, while a mail client decodes and finds the
    attachment; all of it is text outside the parts, counted as one."""
    services = make_services(limits=LIMIT)
    conn = with_message(make_conn(sender="a@example.org"), track_mime=True)
    header(conn, "Content-Type", 'multipart/mixed; boundary="b1"')
    header(conn, "Content-Transfer-Encoding", "base64")
    end_of_headers(conn)
    data = base64.encodebytes(multipart(2000)).replace(b"\n", b"\r\n")
    verdict = AttachmentSizeBody(services)(conn, body(conn, data))
    assert isinstance(verdict, Hit)
    assert verdict.reply_id == "attachment_too_long"
    assert verdict.detail.startswith("text outside the MIME parts is ")
    # A usual preamble and epilogue do not.
    conn = start()
    small = b"This is a multi-part message in MIME format.\r\n" + multipart(10) + b"bye\r\n"
    assert AttachmentSizeBody(services)(conn, body(conn, small)) is None
