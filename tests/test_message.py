"""The message model the content checks read (smtpguard/message.py)."""

from __future__ import annotations

import time

from smtpguard.message import MessageState, UnspacedValue, field_octets


def test_kept_headers_are_bounded_by_names_and_octets() -> None:
    state = MessageState(track_mime=True, max_mime_depth=20)
    for i in range(200_000):
        state.feed_header(f"Content-X{i}", "")
    state.feed_header("Content-Type", 'multipart/mixed; boundary="b"')
    assert len(state._content_headers) == 1
    for _ in range(5000):
        state.feed_header("Content-Type", "x" * 100)
    assert state._kept <= 64 * 1024


def test_size_counts_header_lines_and_the_separator() -> None:
    state = MessageState(track_mime=False, max_mime_depth=20)
    state.feed_header("Subject", "hi")
    state.feed_header("X-Folded", "a\n\tb")
    state.end_of_headers()
    # "Subject: hi\r\n" + "X-Folded: a\r\n\tb\r\n" + "\r\n"
    assert state.size == 13 + 17 + 2


def long_line(*chunks: bytes) -> bool:
    state = MessageState(track_mime=False, max_mime_depth=20)
    state.end_of_headers()
    for chunk in chunks:
        state.feed(chunk)
    return state.long_line


def test_only_lf_ends_a_body_line() -> None:
    """A bare CR is an octet of the line: 1200 octets split by one used to pass."""
    assert long_line(b"a" * 600 + b"\r" + b"b" * 599 + b"\r\n")
    assert not long_line(b"a" * 500 + b"\r" + b"b" * 497 + b"\r\n")  # 998 in all


def test_the_cr_of_crlf_is_not_counted_wherever_the_chunks_split() -> None:
    line = b"a" * 998 + b"\r\n"
    for cut in (0, 1, 500, 998, 999, 1000):
        assert not long_line(b"x\r\n" + line[:cut], line[cut:] + b"end\r\n"), cut
    too_long = b"a" * 999 + b"\r\n"
    for cut in (0, 500, 999, 1000):
        assert long_line(b"x\r\n" + too_long[:cut], too_long[cut:]), cut
    # Without a CR the LF alone ends the line (bare LF mail is taken as it is).
    assert not long_line(b"a" * 998 + b"\n")
    assert long_line(b"a" * 999 + b"\n")


def test_lines_just_under_the_limit_cost_one_scan_each() -> None:
    """Review rev47: the long-line search tried every octet as a line start, so 50 MB
    of 997-octet lines cost 16 s of CPU; it starts at line starts only now."""
    chunk = (b"a" * 996 + b"\r\n") * 65
    started = time.process_time()
    assert not long_line(*[chunk] * 80)  # about 5 MB
    assert time.process_time() - started < 0.5
    assert long_line(chunk, b"b" * 999 + b"\r\n", chunk)


def test_a_field_written_without_the_space_counts_without_it() -> None:
    spaced, unspaced = (MessageState(track_mime=False, max_mime_depth=5) for _ in range(2))
    spaced.feed_header("X-Long", "a" * 990)
    unspaced.feed_header("X-Long", UnspacedValue("a" * 990))
    assert field_octets("X-Long", "a" * 990) == (1000, 998)  # "X-Long: " + 990, CRLF
    assert field_octets("X-Long", UnspacedValue("a" * 990)) == (999, 997)  # "X-Long:"
    assert spaced.size == unspaced.size + 1


def _mime_message(headers: list[tuple[str, str]], body: bytes) -> MessageState:
    state = MessageState(track_mime=True, max_mime_depth=5)
    for name, value in headers:
        state.feed_header(name, value)
    state.end_of_headers()
    state.feed(body)
    state.close()
    return state


_ATTACHMENT = (
    b"--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    b"--b1\r\nContent-Type: application/octet-stream\r\n"
    b'Content-Disposition: attachment; filename="big.bin"\r\n\r\n'
    + b"x" * 200_000
    + b"\r\n--b1--\r\n"
)


def test_repeated_content_fields_cannot_push_out_the_content_type() -> None:
    """Only the first field of each Content-* name is kept (found by review: 67 KiB of
    Content-Transfer-Encoding copies first, and the multipart went unread)."""
    # 64 copies of 1 KiB each as the budget counts them (name, value, 64): all of it.
    padding = [("Content-Transfer-Encoding", "7bit (" + "p" * 928 + ")")] * 64
    state = _mime_message(
        [*padding, ("Content-Type", 'multipart/mixed; boundary="b1"')], _ATTACHMENT
    )
    assert state.mime is not None
    assert state.mime.largest_attachment_name == "big.bin"
    assert state.mime.largest_attachment >= 200_000


def test_a_content_field_too_large_to_keep_counts_the_body_whole() -> None:
    huge = 'multipart/mixed; boundary="b1"; x-pad="' + "p" * 70_000 + '"'
    state = _mime_message([("Content-Type", huge)], _ATTACHMENT)
    assert state.mime is not None
    assert state.mime.largest_attachment >= 200_000
    assert state.mime.largest_attachment_name == "<unparsed part: header block too large>"


def test_a_disposition_past_those_kept_counts_the_body_whole() -> None:
    """Review rev70 N2: eight "inline" copies first, and the ninth, "attachment",
    went unread; Dovecot took it (the last) and showed the attachment."""
    headers = [("Content-Type", "application/octet-stream")]
    headers += [("Content-Disposition", "inline")] * 8
    headers += [("Content-Disposition", "attachment; filename=big.bin")]
    state = _mime_message(headers, b"x" * 200_000)
    assert state.mime is not None
    assert state.mime.largest_attachment >= 200_000
