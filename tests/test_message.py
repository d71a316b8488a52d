"""The message model the content checks read (smtpguard/message.py)."""

from __future__ import annotations

from smtpguard.message import MessageState


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
