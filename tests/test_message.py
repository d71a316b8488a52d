"""The message model the content checks read (smtpguard/message.py)."""

from __future__ import annotations

from smtpguard.message import MessageState, UnspacedValue


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


def test_a_field_written_without_the_space_counts_without_it() -> None:
    spaced, unspaced = (MessageState(track_mime=False, max_mime_depth=5) for _ in range(2))
    spaced.feed_header("X-Long", "a" * 990)
    unspaced.feed_header("X-Long", UnspacedValue("a" * 990))
    assert spaced.longest_header_line == 998  # "X-Long: " + 990
    assert unspaced.longest_header_line == 997  # "X-Long:" + 990
    assert spaced.size == unspaced.size + 1
