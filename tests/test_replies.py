"""The reply table itself: the shipped file, rendering, and load-time validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from smtpguard.app import load
from smtpguard.config import ConfigError, RepliesConfig, ReplyOverride, read_toml
from smtpguard.replies import MILTER_IDS, MTA_IDS, TEMPORARY_IDS, load_replies
from support.expected import SPEC
from support.service import RULES

TABLE = RULES / "replies.toml"


def policy(**kw: Any) -> RepliesConfig:
    return RepliesConfig(table=kw.pop("table", TABLE), **kw)


def test_shipped_table_matches_the_spec() -> None:
    table = load_replies(policy())
    assert set(MILTER_IDS) == set(SPEC)
    for reply_id, (code, xcode, en, zh) in SPEC.items():
        row = table.rows[reply_id]
        assert (row.code, row.xcode, row.text["en"], row.text["zh"]) == (code, xcode, en, zh)
        assert row.decided_by == "milter"
        assert row.hint["en"].isascii()
        assert row.hint["zh"]
    for reply_id in MTA_IDS:
        assert table.rows[reply_id].decided_by == "mta"


def test_mta_rows_keep_the_seed_codes() -> None:
    rows = load_replies(policy()).rows
    assert [(rows[i].code, rows[i].text["en"]) for i in MTA_IDS] == [
        ("502", "please say MAIL first"),
        ("503", "please say RCPT first"),
        ("500", "sequence error"),
        ("500", "syntax error"),
        ("451", "stray newline"),
    ]


def test_default_render_is_the_seed_one_line_form() -> None:
    reply = load_replies(policy()).render("rbl_deny", utf8=True)
    assert (reply.code, reply.xcode, reply.lines) == (
        "554",
        "5.7.1",
        ("rbl deny. (拒绝 RBL 中的邮件服务器)",),
    )
    assert reply.wire_lines() == ["554 5.7.1 rbl deny. (拒绝 RBL 中的邮件服务器)"]


def test_ascii_render_drops_non_ascii_languages() -> None:
    reply = load_replies(policy()).render("rbl_deny", utf8=False)
    assert reply.lines == ("rbl deny.",)


def test_per_language_form_with_hint_and_url() -> None:
    table = load_replies(
        policy(form="per_language", hint=True, help_url="https://help.example/smtp/{id}")
    )
    reply = table.render("sender_mismatch", utf8=True)
    row = table.rows["sender_mismatch"]
    assert reply.lines == (
        "mail address invalid.",
        "发件人地址不匹配",
        row.hint["en"],
        row.hint["zh"],
        "https://help.example/smtp/sender_mismatch",
    )
    wire = reply.wire_lines()
    assert wire[0] == "554-5.7.1 mail address invalid."
    assert wire[-1] == "554 5.7.1 https://help.example/smtp/sender_mismatch"


def test_language_order_is_configurable() -> None:
    reply = load_replies(policy(languages=("zh", "en"))).render("rbl_deny", utf8=True)
    assert reply.lines == ("拒绝 RBL 中的邮件服务器 (rbl deny.)",)


# The MTA's own rows are documented, never rendered or sent by the milter.
@pytest.mark.parametrize("reply_id", MILTER_IDS)
def test_every_rendered_line_fits_rfc5321(reply_id: str) -> None:
    table = load_replies(policy(form="per_language", hint=True, help_url="https://h.example/{id}"))
    for utf8 in (True, False):
        for line in table.render(reply_id, utf8=utf8).wire_lines():
            assert len(line.encode()) + 2 <= 512
            assert "\r" not in line
            assert "\n" not in line


@pytest.mark.parametrize("form", ["one_line", "per_language"])
@pytest.mark.parametrize("hint", [False, True])
@pytest.mark.parametrize("languages", [("en", "zh"), ("zh", "en"), ("en",)])
def test_the_shipped_table_loads_in_every_form(
    form: str, hint: bool, languages: tuple[str, ...]
) -> None:
    """Review rev233 H1: a longer rbl_deny hint made the shipped table too long for one
    line with hint = true and form = "one_line": the service did not start after the
    upgrade. Every option the README documents must load the shipped table."""
    url = "https://help.example.com/smtp-replies/{id}"
    table = load_replies(policy(form=form, hint=hint, languages=languages, help_url=url))
    for reply_id in MILTER_IDS:
        for utf8 in (True, False):
            for line in table.render(reply_id, utf8=utf8).wire_lines():
                assert len(line.encode()) + 2 <= 512


@pytest.mark.parametrize("reply_id", MTA_IDS)
def test_mta_rows_are_never_rendered(reply_id: str) -> None:
    with pytest.raises(KeyError):
        load_replies(policy()).render(reply_id, utf8=True)


def test_override_changes_code_and_text() -> None:
    table = load_replies(
        policy(overrides={"rbl_deny": ReplyOverride(code="550", text={"en": "listed, sorry."})})
    )
    reply = table.render("rbl_deny", utf8=False)
    assert (reply.code, reply.xcode, reply.lines) == ("550", "5.7.1", ("listed, sorry.",))


def _broken_table(tmp_path: Path, reply_id: str, **changes: Any) -> Path:
    data = read_toml(TABLE)
    for key, value in changes.items():
        if value is None:
            data[reply_id].pop(key, None)
        elif isinstance(value, dict):
            data[reply_id][key] = {**data[reply_id][key], **value}
        else:
            data[reply_id][key] = value
    path = tmp_path / "replies.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("reply_id", "changes", "key", "message"),
    [
        ("rbl_deny", {"xcode": "4.7.1"}, "rbl_deny.xcode", "class 4 differs"),
        ("rbl_deny", {"code": "254"}, "rbl_deny.code", "4xx or 5xx"),
        ("rbl_deny", {"xcode": "5.7"}, "rbl_deny.xcode", "RFC 3463"),
        ("rbl_deny", {"text": {"en": "100% spam"}}, "rbl_deny.text.en", "'%%'"),
        ("rbl_deny", {"text": {"zh": "a\r\nb"}}, "rbl_deny.text.zh", "CR, LF"),
        ("rbl_deny", {"text": {"en": "5 listings"}}, "rbl_deny.text.en", "digit"),
        ("rbl_deny", {"hint": {"en": ""}}, "rbl_deny.hint.en", "missing"),
        ("rbl_deny", {"text": {"en": "拒绝"}}, "rbl_deny.en", "plain ASCII"),
        ("internal_error", {"code": "550", "xcode": "5.3.0"}, "internal_error.code", "4xx"),
        ("rbl_deny", {"colour": "red"}, "rbl_deny.colour", "unknown field"),
        ("rbl_deny", {"text": {"en": "x" * 500}}, "rbl_deny", "over 490 bytes"),
    ],
)
def test_bad_table_is_refused_naming_file_id_and_field(
    tmp_path: Path, reply_id: str, changes: dict[str, Any], key: str, message: str
) -> None:
    path = _broken_table(tmp_path, reply_id, **changes)
    with pytest.raises(ConfigError) as err:
        load_replies(policy(table=path))
    assert err.value.file == str(path)
    assert err.value.key == key
    assert message in err.value.message


def test_doubled_percent_is_accepted_and_sent_once(tmp_path: Path) -> None:
    path = _broken_table(tmp_path, "rbl_deny", text={"en": "listed at 100%% certainty."})
    reply = load_replies(policy(table=path)).render("rbl_deny", utf8=False)
    assert reply.lines == ("listed at 100%% certainty.",)  # what setreply needs
    assert reply.wire_lines() == ["554 5.7.1 listed at 100% certainty."]


def test_missing_and_unknown_ids(tmp_path: Path) -> None:
    data = read_toml(TABLE)
    del data["user_locked"]
    path = tmp_path / "missing.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match="user_locked: reply id missing"):
        load_replies(policy(table=path))
    data["user_locked"] = data["rbl_deny"]
    data["no_such_id"] = data["rbl_deny"]
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match="no_such_id: unknown reply id"):
        load_replies(policy(table=path))


def test_every_configured_language_must_exist() -> None:
    # In no row: a typo in the config ("cn" for "zh"), named there (review rev121 F8).
    with pytest.raises(ConfigError) as err:
        load_replies(policy(languages=("en", "cn")), "/etc/sg.toml")
    assert (err.value.file, err.value.key) == ("/etc/sg.toml", "replies.languages")
    assert err.value.message.startswith("'cn' is in no row of ")
    assert err.value.message.endswith("(its languages: en, zh)")
    # In some rows only (here one override's): the table lacks it elsewhere.
    fr = ReplyOverride(text={"fr": "refusé"})
    with pytest.raises(ConfigError, match=r"rbl_deny\.hint\.fr: missing"):
        load_replies(policy(languages=("en", "fr"), overrides={"rbl_deny": fr}), "/etc/sg.toml")


def test_bad_override_names_the_config_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_replies(policy(overrides={"rbl_deny": ReplyOverride(xcode="4.7.1")}), "/etc/sg.toml")
    assert err.value.file == "/etc/sg.toml"
    assert err.value.key == "replies.override.rbl_deny.xcode"
    with pytest.raises(ConfigError, match=r"replies\.override\.nope: unknown reply id"):
        load_replies(policy(overrides={"nope": ReplyOverride(code="550")}), "/etc/sg.toml")


def test_an_override_in_an_unknown_language_is_refused() -> None:
    # "zn" for "zh" would load and leave the table's text in place.
    typo = ReplyOverride(text={"zn": "\u62d2\u7edd"})
    with pytest.raises(ConfigError) as err:
        load_replies(policy(overrides={"rbl_deny": typo}), "/etc/sg.toml")
    assert err.value.key == "replies.override.rbl_deny.text.zn"
    assert "(en, zh)" in err.value.message
    hint = ReplyOverride(hint={"fr": "x"})
    with pytest.raises(ConfigError, match=r"rbl_deny\.hint\.fr: not a language"):
        load_replies(policy(overrides={"rbl_deny": hint}), "/etc/sg.toml")
    zh = ReplyOverride(text={"zh": "\u62d2\u7edd"})
    table = load_replies(policy(overrides={"rbl_deny": zh}), "/etc/sg.toml")
    assert table.rows["rbl_deny"].text["zh"] == "\u62d2\u7edd"
    # A language a [domain."X"] table uses is one (found by review: it loaded before).
    de = ReplyOverride(text={"de": "abgelehnt"})
    table = load_replies(
        policy(overrides={"rbl_deny": de}, domain_languages=("de",)), "/etc/sg.toml"
    )
    assert table.rows["rbl_deny"].text["de"] == "abgelehnt"


#: The spec's 4xx rows a site may make permanent: policy, not a passing condition.
POLICY_4XX = ("auth_mode_unsupported", "domain_auth_error")


def test_every_4xx_row_of_the_spec_is_either_temporary_or_policy() -> None:
    fourxx = {reply_id for reply_id, (code, *_) in SPEC.items() if code.startswith("4")}
    assert fourxx == set(TEMPORARY_IDS) | set(POLICY_4XX)
    assert set(TEMPORARY_IDS) >= {
        "queue_unavailable",
        "rcpt_limit",
        "mailbox_unavailable_temp",
        "database_temp_error",
        "auth_error_temp",
        "internal_error",
    }


@pytest.mark.parametrize("reply_id", sorted(TEMPORARY_IDS))
def test_temporary_rows_cannot_be_made_permanent(tmp_path: Path, reply_id: str) -> None:
    """Through the config loader: the error names the config file and the key."""
    path = tmp_path / "smtpguard.toml"
    path.write_text(
        f"[replies]\ntable = '{TABLE}'\n"
        f"[replies.override.{reply_id}]\ncode = '550'\nxcode = '5.7.1'\n",
        encoding="utf-8",
    )
    config = load(path)
    with pytest.raises(ConfigError) as err:
        load_replies(config.replies, config.file)
    assert err.value.file == str(path.resolve())
    assert err.value.key == f"replies.override.{reply_id}.code"
    assert "must stay a 4xx code" in err.value.message


def test_a_table_copy_cannot_make_a_temporary_row_permanent(tmp_path: Path) -> None:
    raw = read_toml(TABLE)
    raw["rcpt_limit"].update(code="552", xcode="5.5.3")
    copy = tmp_path / "replies.toml"
    copy.write_text(tomli_w.dumps(raw), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_replies(policy(table=copy))
    assert (err.value.file, err.value.key) == (str(copy), "rcpt_limit.code")


@pytest.mark.parametrize("reply_id", POLICY_4XX)
def test_policy_4xx_rows_may_be_made_permanent(reply_id: str) -> None:
    override = ReplyOverride(code="530", xcode="5.7.0")
    reply = load_replies(policy(overrides={reply_id: override})).render(reply_id, utf8=False)
    assert (reply.code, reply.xcode) == ("530", "5.7.0")


def test_table_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reply table not found"):
        load_replies(policy(table=tmp_path / "none.toml"))


def test_ascii_rendering_drops_non_ascii_hints() -> None:
    table = load_replies(policy(form="per_language", hint=True))
    for reply_id in MILTER_IDS:
        assert all(line.isascii() for line in table.render(reply_id, utf8=False).lines)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://h.example/?id={id}&l=zh%2Dcn", "'%%'"),
        ("https://帮助.example/{id}", "not ASCII"),
    ],
)
def test_help_url_is_checked_like_the_table(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_replies(policy(help_url=url), "/etc/sg.toml")
    # Review rev156 F6: the shipped table was named, which the operator never touched.
    assert (err.value.file, err.value.key) == ("/etc/sg.toml", "replies.help_url")


def test_an_override_too_long_once_rendered_names_the_override() -> None:
    """Review rev156 F6: its hint, within the limit alone, made a line over it with the
    code and the enhanced code, and the error named the table."""
    long = ReplyOverride(text={"en": "x" * 485})
    with pytest.raises(ConfigError, match="over 490 bytes") as err:
        load_replies(policy(overrides={"rbl_deny": long}), "/etc/sg.toml")
    assert (err.value.file, err.value.key) == ("/etc/sg.toml", "replies.override.rbl_deny")
    # What to do about it (review rev233 H1): one line per language makes room.
    assert str(err.value).endswith(
        'over 490 bytes; shorten the text, or set [replies] form = "per_language" (one line'
        " per language)"
    )


def test_help_url_with_doubled_percent_is_sent_once() -> None:
    table = load_replies(policy(help_url="https://h.example/?id={id}&l=zh%%2Dcn"))
    assert table.render("rbl_deny", utf8=True).wire_lines()[-1] == (
        "554 5.7.1 https://h.example/?id=rbl_deny&l=zh%2Dcn"
    )
