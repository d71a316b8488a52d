"""MTA snippets: address forms, relay modes, and contrib/ kept equal to the generator."""

from __future__ import annotations

import pytest

from smtpguard.app import load
from smtpguard.mta import (
    postfix_footer_regexp,
    postfix_main_cf,
    postfix_milter_address,
)
from smtpguard.replies import load_replies
from support.service import ROOT

SAMPLE = ROOT / "conf" / "smtpguard.toml"


@pytest.mark.parametrize(
    ("socket", "expected"),
    [
        ("unix:/var/spool/postfix/smtpguard/s.sock", "unix:smtpguard/s.sock"),
        ("unix:/run/smtpguard/s.sock", "unix:/run/smtpguard/s.sock"),
        ("local:/run/s.sock", "unix:/run/s.sock"),
        ("inet:8899@127.0.0.1", "inet:127.0.0.1:8899"),
        ("inet:8899", "inet:127.0.0.1:8899"),
        ("inet6:8899@::1", "inet:[::1]:8899"),
    ],
)
def test_postfix_milter_address(socket: str, expected: str) -> None:
    assert postfix_milter_address(socket) == expected


def sample() -> tuple[str, str]:
    config = load(SAMPLE)
    replies = load_replies(config.replies, config.file)
    return (postfix_main_cf(config, replies), postfix_footer_regexp(replies, utf8=True))


def test_contrib_files_are_the_generator_output_for_the_sample_config() -> None:
    main_cf, footers = sample()
    assert (ROOT / "contrib/postfix/main.cf.snippet").read_text() == main_cf
    assert (ROOT / "contrib/postfix/smtpguard_footers.regexp").read_text() == footers


def test_postfix_snippet_is_fail_safe() -> None:
    main_cf, _footers = sample()
    lines = main_cf.splitlines()
    assert "milter_default_action = tempfail" in lines
    assert "milter_protocol = 6" in lines
    assert any(
        line.startswith("milter_mail_macros = ") and "{auth_authen}" in line for line in lines
    )
    assert "reject_unauth_destination" in main_cf


def test_relay_control_postfix_puts_the_table_reply_in_an_access_map() -> None:
    config = load(SAMPLE)
    replies = load_replies(config.replies, config.file)
    text = postfix_main_cf(config, replies, relay_control="postfix")
    assert "check_recipient_access static:{553 5.7.1 host denies relay. (拒绝中继)}" in text
    assert "static:{OK}" not in text


def test_footers_only_ascii_when_utf8_is_not_always() -> None:
    config = load(SAMPLE)
    replies = load_replies(config.replies, config.file)
    assert postfix_footer_regexp(replies, utf8=False) == ""
    assert "(请先发送 MAIL)" in postfix_footer_regexp(replies, utf8=True)
