"""``smtpguard explain``: the machine-readable fix, the stable JSON keys, enhanced codes
found mid-text, the once-per-process loader and input that is not clean text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smtpguard.config import ConfigError
from smtpguard.explain import (
    FIXES,
    JSON_KEYS,
    Knowledge,
    explain_main,
    knowledge,
    load_knowledge,
    parse_reply,
)
from support.service import RULES

EXPLAIN = RULES / "explain.toml"
SHIPPED = EXPLAIN.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def shipped() -> Knowledge:
    return knowledge()


def test_every_category_names_a_fix(shipped: Knowledge) -> None:
    assert {c.fix for c in shipped.categories.values()} <= set(FIXES)
    assert {r.fix for r in shipped.rules if r.fix is not None} <= set(FIXES)
    assert shipped.categories["unknown_recipient"].fix == "fix_recipient"
    assert shipped.categories["dnsbl"].fix == "delist_ip"


@pytest.mark.parametrize(
    ("line", "fix", "permanent"),
    [
        (
            "550 5.1.1 <x@example.com>: Recipient address rejected: User unknown",
            "fix_recipient",
            True,
        ),
        ("452 4.2.2 Mailbox full", "retry_later", False),
        ("552 5.2.2 Mailbox full", "contact_recipient", True),
        ("250 2.0.0 Ok: queued as 4F3A2", "none", False),
        ("zzz", "none", False),
    ],
)
def test_fix_and_permanent(shipped: Knowledge, line: str, fix: str, permanent: bool) -> None:
    exp = shipped.explain(line)
    assert (exp.fix, exp.permanent) == (fix, permanent)


def test_a_permanent_reply_is_never_told_it_is_retried(shipped: Knowledge) -> None:
    for category in shipped.categories.values():
        assert "4xx" not in category.action.en, category.id
    full5 = shipped.explain("552 5.2.2 Mailbox full")
    full4 = shipped.explain("452 4.2.2 Mailbox full")
    assert full5.category == full4.category == "mailbox_full"
    assert "retr" not in full5.action_en
    assert "retries" in full4.action_en
    assert "重试" in full4.action_zh


@pytest.mark.parametrize(
    ("line", "category"),
    [
        ("550 5.7.1 Greylisted, please try again later", "greylisting"),
        (
            "554 5.7.1 <bob@example.com>: Recipient address rejected: Greylisted, see"
            " http://postgrey.schweikert.ch/help/example.com.html",
            "greylisting",
        ),
        ("554 5.7.1 Service temporarily unavailable, try again later", "temp_failure"),
    ],
)
def test_a_5xx_that_speaks_of_waiting_is_not_told_it_arrives(
    shipped: Knowledge, line: str, category: str
) -> None:
    """Review rev178 F1: "Nothing to do: ... the mail arrives after a short delay" for
    mail that had come back."""
    exp = shipped.explain(line)
    assert (exp.category, exp.fix, exp.permanent) == (category, "contact_postmaster", True)
    assert "will not be sent again by itself" in exp.action_en
    assert "不会再自动投递" in exp.action_zh
    assert (
        shipped.explain(line.replace("55", "45", 1).replace(" 5.", " 4.", 1)).fix == "retry_later"
    )


@pytest.mark.parametrize(
    "line",
    [
        "450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]",
        "450 4.1.8 <a@nxdomain.example>: Sender address rejected: Domain not found",
        "450 4.1.1 <bob@example.com>: Recipient address rejected: User unknown in virtual"
        " mailbox table",
        "452 4.5.3 Too many recipients",
        "450 4.7.1 <localhost>: Helo command rejected: Host not found",
    ],
)
def test_every_4xx_says_the_mail_is_retried(shipped: Knowledge, line: str) -> None:
    """Review rev178 F4: only four categories said it."""
    exp = shipped.explain(line)
    assert exp.permanent is False
    assert "your mail server keeps the message and retries" in exp.action_en
    assert "自动重试" in exp.action_zh
    five = shipped.explain(line.replace("45", "55", 1).replace(" 4.", " 5.", 1))
    assert "retr" not in five.action_en


@pytest.mark.parametrize(
    "line",
    [
        "454 4.7.1 <x@far.example>: Relay access denied",
        "435 4.7.8 Authentication credentials invalid",
        "430 4.7.0 Must issue a STARTTLS command first",
    ],
)
def test_a_4xx_the_sender_must_fix_gets_no_retry_note(shipped: Knowledge, line: str) -> None:
    """Review rev180 F6: relaying and logging in are not cured by a retry; but a reply
    that says it is temporary keeps the note (review rev182 F5: a SASL backend's
    outage)."""
    assert "retries" not in shipped.explain(line).action_en
    outage = shipped.explain("454 4.7.0 Temporary authentication failure")
    assert outage.category == "auth_failed"
    assert "retries" in outage.action_en


def test_a_4xx_that_says_retrying_will_not_help_gets_no_note(shipped: Knowledge) -> None:
    exp = shipped.explain(
        "421 4.7.0 [TSS09] All messages from 192.0.2.1 will be permanently deferred;"
        " Retrying will NOT succeed."
    )
    assert exp.category == "dnsbl"
    assert "retries" not in exp.action_en
    # Our own table's 4xx hints say it in their words.
    ours = shipped.explain("451 4.5.3 out of allow RCPT numbers.")
    assert ours.reply_id == "rcpt_limit"
    assert "keeps the message" not in ours.action_en


@pytest.mark.parametrize(
    "line",
    [
        "550 5.0.0 Failed",
        "550 5.0.0 Permanent failure",
        "550 5.0.0 Blocked",
        "550 5.0.0 Request denied",
        "550 5.0.0 Go away",
        "550 5.0.0 Error",
        "554 5.0.0 Refused",
    ],
)
def test_few_generic_words_get_no_made_up_cause(shipped: Knowledge, line: str) -> None:
    """Review rev178 F3: the codes' features carried the word model to auth_failed,
    helo or protocol_sequence for replies that name no reason."""
    exp = shipped.explain(line)
    assert exp.rule != "words-model"
    assert (exp.category, exp.fix) == ("rejected", "contact_postmaster")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_json_keys_are_stable(lang: str) -> None:
    data = json.loads(explain_main("550 5.7.26 Unauthenticated email", lang=lang, as_json=True))
    assert tuple(data) == JSON_KEYS
    for key in ("category", "fix", "permanent", "enhanced_code", "server_family"):
        assert key in data
    assert data["enhanced_code"] == data["xcode"] == "5.7.26"
    assert data["permanent"] is True
    assert data["fix"] in FIXES


@pytest.mark.parametrize(
    ("line", "xcode"),
    [
        ("550 Message rejected, status 5.7.26 unauthenticated", "5.7.26"),
        ("552 Requested mail action aborted: exceeded storage allocation (5.2.2)", "5.2.2"),
        ("552 quota exceeded [5.2.2]", "5.2.2"),
        ("450 try later [4.7.1]", "4.7.1"),
        ("550 from 5.2.2.1 rejected", None),  # an IP address, not a code
        ("550 version 5.2.2.1 of the filter", None),
        ("550 mismatched class (4.2.2)", None),
    ],
)
def test_enhanced_code_anywhere(line: str, xcode: str | None) -> None:
    assert parse_reply(line).xcode == xcode


def test_knowledge_is_loaded_once_per_rules_dir(tmp_path: Path) -> None:
    assert knowledge() is knowledge()
    assert knowledge(RULES) is knowledge()
    (tmp_path / "explain.toml").write_text(SHIPPED, encoding="utf-8")
    (tmp_path / "replies.toml").write_text(
        (RULES / "replies.toml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    other = knowledge(tmp_path)
    assert other is knowledge(tmp_path)
    assert other is not knowledge()


@pytest.mark.parametrize(
    "line",
    [
        b"550 5.1.1 \xff\xfe user unknown",
        "550 5.1.1 \udcff\udcfe user unknown",  # argv bytes that were not UTF-8
        "550 5.1.1 \ud800 user unknown",  # a lone surrogate from nowhere
        "550 5.1.1 \x00\x1b[31m user unknown",
        b"550 5.1.1 \xd3\xc3\xbb\xa7\xb2\xbb\xb4\xe6\xd4\xda user unknown",  # GBK
    ],
)
def test_any_input_explains_and_encodes(shipped: Knowledge, line: str | bytes) -> None:
    exp = shipped.explain(line)
    assert exp.category == "unknown_recipient"
    for lang in ("en", "zh"):
        json.dumps(exp.to_dict(lang), ensure_ascii=False).encode("utf-8")
    assert "\x1b" not in exp.text


def test_unknown_fix_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "explain.toml"
    bad.write_text(SHIPPED.replace('fix = "delist_ip"', 'fix = "pray"', 1), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_knowledge(bad, replies=RULES / "replies.toml")
    assert err.value.key == "category.dnsbl.fix"
    assert "unknown fix" in err.value.message
