"""line_syntax: line_parse_error for lines over 998 octets (RFC 5322 §2.1.1) or NULs."""

from __future__ import annotations

from smtpguard.checks import Event, Stage
from smtpguard.checks.lines import BodyLines, HeaderLines
from smtpguard.session import Connection
from smtpguard.verdict import Hit
from support.checks import ServicesFactory, body, end_of_headers, header, make_conn, with_message


def conn_with_message() -> Connection:
    return with_message(make_conn(sender="a@example.org"))


def test_declarations() -> None:
    assert (HeaderLines.name, HeaderLines.stage) == ("line_syntax.header", Stage.HEADER)
    assert (BodyLines.name, BodyLines.stage) == ("line_syntax.body", Stage.BODY)
    assert HeaderLines.reply_ids == BodyLines.reply_ids == ("line_parse_error",)


def test_header_line_of_998_octets_passes(make_services: ServicesFactory) -> None:
    check, conn = HeaderLines(make_services()), conn_with_message()
    assert check(conn, header(conn, "X-Long", "a" * 990)) is None  # "X-Long: " + 990


def test_header_line_of_999_octets(make_services: ServicesFactory) -> None:
    check, conn = HeaderLines(make_services()), conn_with_message()
    verdict = check(conn, header(conn, "X-Long", "a" * 991))
    assert verdict == Hit("line_parse_error", "header 'X-Long' line of 999 octets")


def test_folded_header_counts_its_longest_physical_line(make_services: ServicesFactory) -> None:
    check, conn = HeaderLines(make_services()), conn_with_message()
    assert check(conn, header(conn, "X-Folded", "a" * 900 + "\r\n " + "b" * 997)) is None
    verdict = check(conn, header(conn, "X-Folded", "a\r\n " + "b" * 998))
    assert verdict == Hit("line_parse_error", "header 'X-Folded' line of 999 octets")


def test_each_field_is_judged_by_its_own_lines(make_services: ServicesFactory) -> None:
    """Review rev211: the fields are judged after all have arrived, and a message-wide
    figure named every field after a long one ("header 'Message-ID' line of 1208
    octets" for a short Message-ID), each reported again in report mode."""
    check, conn = HeaderLines(make_services()), conn_with_message()
    long_field = header(conn, "X-Long", "a" * 1200)
    nul_field = header(conn, "Subject", "a\x00b")
    short = header(conn, "Message-ID", "<1@example.org>")
    assert check(conn, long_field) == Hit("line_parse_error", "header 'X-Long' line of 1208 octets")
    assert check(conn, nul_field) == Hit("line_parse_error", "NUL byte in header 'Subject'")
    assert check(conn, short) is None


def test_nul_in_a_header(make_services: ServicesFactory) -> None:
    check, conn = HeaderLines(make_services()), conn_with_message()
    verdict = check(conn, header(conn, "Subject", "a\x00b"))
    assert verdict == Hit("line_parse_error", "NUL byte in header 'Subject'")


def test_body_lines(make_services: ServicesFactory) -> None:
    check, conn = BodyLines(make_services()), conn_with_message()
    end_of_headers(conn)
    assert check(conn, body(conn, b"x" * 998 + b"\r\n")) is None
    # A line split across chunks still counts whole.
    assert check(conn, body(conn, b"y" * 500)) is None
    verdict = check(conn, body(conn, b"y" * 499 + b"\r\n"))
    assert verdict == Hit("line_parse_error", "body line over 998 octets")


def test_nul_in_the_body(make_services: ServicesFactory) -> None:
    check, conn = BodyLines(make_services()), conn_with_message()
    end_of_headers(conn)
    assert check(conn, body(conn, b"ok\r\n")) is None
    assert check(conn, body(conn, b"a\x00b\r\n")) == Hit("line_parse_error", "NUL byte in body")


def test_without_message_nothing_is_decided(make_services: ServicesFactory) -> None:
    services = make_services()
    for conn in (make_conn(sender="a@example.org"), make_conn()):
        assert HeaderLines(services)(conn, Event(header=("X", "y"))) is None
        assert BodyLines(services)(conn, Event(chunk=b"\x00")) is None
    assert HeaderLines(services)(conn_with_message(), Event()) is None


def trusted_conn(**kind: bool | str) -> Connection:
    return with_message(make_conn(sender="a@example.org", **kind))  # type: ignore[arg-type]  # mixed kwargs


TRUSTED: list[dict[str, bool | str]] = [{"trusted_network": True}, {"auth_login": "alice"}]


def test_a_trusted_clients_long_lines_pass(make_services: ServicesFactory) -> None:
    """Review rev209: the site's own cron and monitoring mail with a line over 998
    octets got 551, where Postfix delivers it (folded on the way out)."""
    services = make_services()
    for kind in TRUSTED:
        conn = trusted_conn(**kind)
        assert HeaderLines(services)(conn, header(conn, "X-Long", "a" * 991)) is None
        end_of_headers(conn)
        assert BodyLines(services)(conn, body(conn, b"x" * 999 + b"\r\n")) is None
        # A NUL byte is refused from anyone.
        assert BodyLines(services)(conn, body(conn, b"a\x00b\r\n")) == Hit(
            "line_parse_error", "NUL byte in body"
        )
        verdict = HeaderLines(services)(conn, header(conn, "Subject", "a\x00b"))
        assert verdict == Hit("line_parse_error", "NUL byte in header 'Subject'")


def test_a_trusted_clients_long_lines_are_refused_when_asked(
    make_services: ServicesFactory,
) -> None:
    services = make_services(line_syntax={"check_trusted": True})
    for kind in TRUSTED:
        conn = trusted_conn(**kind)
        verdict = HeaderLines(services)(conn, header(conn, "X-Long", "a" * 991))
        assert verdict == Hit("line_parse_error", "header 'X-Long' line of 999 octets")
        end_of_headers(conn)
        verdict = BodyLines(services)(conn, body(conn, b"x" * 999 + b"\r\n"))
        assert verdict == Hit("line_parse_error", "body line over 998 octets")
