"""The reply table: ``rules/replies.toml`` plus operator overrides, validated at load.

Validation exists because the MTAs do not forgive: Postfix treats a reply whose
enhanced-code class differs from the code class as malformed and applies
``milter_default_action`` (with ``accept`` the mail is silently accepted); libmilter
drops a reply with a lone ``%``; CR/LF inside a line breaks ``setreply``; RFC 5321
§4.5.3.1.5 limits a reply line to 512 octets. A bad table therefore stops start-up with
an error naming the file, the id and the field.

Rendering happens once at load for every id and both "may send UTF-8" answers, so the
hot path is a dict lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smtpguard.datafiles import ConfigError, read_toml

if TYPE_CHECKING:
    from smtpguard.config import RepliesConfig

#: Every reply id of the spec. Ids decided by the MTA are documented and explained but
#: never sent by the milter.
MILTER_IDS: tuple[str, ...] = (
    "queue_unavailable",
    "rbl_deny",
    "openrelay_check",
    "smtpport_check",
    "helo_first",
    "helo_error",
    "mail_from_invalid",
    "sender_unvalidated",
    "host_denies_sender",
    "black_mail_address",
    "relay_local_fail",
    "auth_mode_unsupported",
    "domain_auth_error",
    "auth_error_perm",
    "auth_error_temp",
    "sender_mismatch",
    "remote_ip_mismatch",
    "host_denies_relay",
    "relay_domain_fail",
    "rcpt_limit",
    "mailbox_unavailable",
    "mailbox_unavailable_temp",
    "user_locked",
    "private_list_denied",
    "database_temp_error",
    "message_too_long",
    "line_parse_error",
    "looping_message",
    "fake_router",
    "attachment_too_long",
    "virus_found",
    "antispam_reject",
    "same_size_flood",
    "internal_error",
)
MTA_IDS: tuple[str, ...] = (
    "mail_first",
    "rcpt_first",
    "sequence_error",
    "syntax_error",
    "stray_newline",
)
ALL_IDS: frozenset[str] = frozenset(MILTER_IDS + MTA_IDS)
#: Rows that stand for a condition that passes (a fault, load, a limit per
#: transaction), with why: neither a site override nor a copy of the table may make
#: them permanent, or mail that a retry would deliver bounces. The other 4xx rows of
#: the spec are policy (``auth_mode_unsupported``, ``domain_auth_error``) or decided by
#: the MTA (``stray_newline``; Postfix itself answers it 550 by default), and a site
#: may want them permanent.
TEMPORARY_IDS: Mapping[str, str] = {
    "queue_unavailable": "load shedding, or a shutdown in progress",
    "auth_error_temp": "the directory could not be asked",
    "rcpt_limit": "the client must send the other recipients in another transaction",
    "mailbox_unavailable_temp": "the recipient's state (suspended, moving, over quota) passes",
    "database_temp_error": "a backend failed",
    "internal_error": "a fault inside smtpguard",
}

#: The language every row must have in plain ASCII: the fallback when UTF-8 may not be
#: sent (Sendmail, ``utf8 = "never"``, ``"smtputf8"`` without SMTPUTF8).
ASCII_LANGUAGE = "en"

# RFC 5321 §4.5.3.1.5: 512 octets including the code and CRLF; leave room for an MTA
# prefix such as Sendmail's "<address>... ".
MAX_LINE_BYTES = 490

_CODE = re.compile(r"[45][0-9][0-9]\Z")
_XCODE = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}\Z")
_LONE_PERCENT = re.compile(r"(?<!%)%(?:%%)*(?!%)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Reply:
    """A rendered reply, ready for ``setreply(code, xcode, *lines)``."""

    reply_id: str
    code: str
    xcode: str
    lines: tuple[str, ...]

    @property
    def temporary(self) -> bool:
        return self.code.startswith("4")

    def wire_lines(self) -> list[str]:
        """The reply as the client sees it (``%%`` undoubled), for logs and tests."""
        out = []
        last = len(self.lines) - 1
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            out.append(f"{self.code}{sep}{self.xcode} {line.replace('%%', '%')}")
        return out


@dataclass(frozen=True, slots=True)
class Row:
    reply_id: str
    code: str
    xcode: str
    stage: str
    decided_by: str
    text: Mapping[str, str]
    hint: Mapping[str, str]


class ReplyTable:
    def __init__(self, rows: Mapping[str, Row], policy: RepliesConfig) -> None:
        self.rows = rows
        self.policy = policy
        self._rendered: dict[tuple[str, bool], Reply] = {}
        for reply_id in MILTER_IDS:
            for utf8 in (True, False):
                self._rendered[(reply_id, utf8)] = self._render(rows[reply_id], utf8=utf8)

    def render(self, reply_id: str, *, utf8: bool) -> Reply:
        """The reply for ``reply_id``; ``utf8`` says whether non-ASCII may be sent."""
        return self._rendered[(reply_id, utf8)]

    def one_line(self, reply_id: str, *, utf8: bool) -> str:
        """The texts of ``reply_id`` in the table's one-line form, whatever
        ``replies.form`` says: for the MTA's own replies, which carry one line only
        (an access map's result; review rev73 F4: the first of the per-language lines
        dropped every other language)."""
        row = self.rows[reply_id]
        return _join([row.text[lang] for lang in self._languages(row, utf8)], "one_line")[0]

    def _languages(self, row: Row, utf8: bool) -> list[str]:
        langs = [lang for lang in self.policy.languages if utf8 or row.text[lang].isascii()]
        return langs or [ASCII_LANGUAGE]

    def _render(self, row: Row, *, utf8: bool) -> Reply:
        langs = self._languages(row, utf8)
        lines = _join([row.text[lang] for lang in langs], self.policy.form)
        if self.policy.hint:
            hints = [
                row.hint[lang]
                for lang in langs
                if row.hint.get(lang) and (utf8 or row.hint[lang].isascii())
            ]
            lines += _join(hints, self.policy.form)
        if self.policy.help_url:
            lines.append(self.policy.help_url.format(id=row.reply_id))
        return Reply(row.reply_id, row.code, row.xcode, tuple(lines))


def _join(texts: list[str], form: str) -> list[str]:
    if not texts:
        return []
    if form == "per_language":
        return list(texts)
    # The seed's own form: "rbl deny. (拒绝 RBL 中的邮件服务器)".
    return [texts[0] + "".join(f" ({t})" for t in texts[1:])]


def load_replies(policy: RepliesConfig, config_file: Path | str = "") -> ReplyTable:
    """Load, override and validate the table; raise :class:`ConfigError`."""
    file = policy.table
    rows = _read(file)
    in_table = {lang for row in rows.values() for lang in row.text}
    for lang in policy.languages:
        if lang not in in_table and lang not in _override_languages(policy):
            # A typo ("cn" for "zh") is the config's, not a hole in the table (review
            # rev121 F8: the error named the table's first row).
            raise ConfigError(
                config_file or "config",
                "replies.languages",
                f"{lang!r} is in no row of {file} (its languages: {', '.join(sorted(in_table))})",
            )
    _apply_overrides(rows, policy, config_file)

    for row in rows.values():
        try:
            _validate(row, policy.languages)
        except _RowError as exc:
            raise ConfigError(file, f"{row.reply_id}.{exc.field}", exc.message) from None
    table = ReplyTable(rows, policy)
    # The rendered replies are what setreply gets: check them whole, hint and help
    # URL lines included, in both renderings.
    for (reply_id, utf8), reply in table._rendered.items():
        for line, wire in zip(reply.lines, reply.wire_lines(), strict=True):
            problem = _line_problem(line, ascii_only=not utf8)
            if not problem and len(wire.encode()) > MAX_LINE_BYTES:
                # What the operator can do about it (review rev233 H1: it named a row
                # of the shipped table and nothing else).
                problem = (
                    f"over {MAX_LINE_BYTES} bytes; shorten the text, or set [replies]"
                    ' form = "per_language" (one line per language)'
                    if policy.form == "one_line" and len(policy.languages) > 1
                    else f"over {MAX_LINE_BYTES} bytes; shorten the text"
                )
            if problem:
                where, key = _whose_line(line, reply_id, policy, file, config_file)
                raise ConfigError(where, key, f"rendered line {line[:60]!r}: {problem}")
    return table


def _whose_line(
    line: str, reply_id: str, policy: RepliesConfig, file: Path, config_file: Path | str
) -> tuple[Path | str, str]:
    """Which file and key a rendered line with a problem comes from: the config's help
    URL or override, or the table's row (review rev156 F6: the table was blamed for
    what the config added to it)."""
    config = config_file or "config"
    if policy.help_url and line == policy.help_url.format(id=reply_id):
        return config, "replies.help_url"
    if reply_id in policy.overrides:
        return config, f"replies.override.{reply_id}"
    return file, reply_id


def read_rows(file: Path, languages: Iterable[str] = ("en", "zh")) -> dict[str, Row]:
    """The rows of the table ``file`` as written (no site overrides), validated for
    ``languages``: what ``explain`` and the help site need, without a config."""
    rows = _read(file)
    for row in rows.values():
        try:
            _validate(row, languages)
        except _RowError as exc:
            raise ConfigError(file, f"{row.reply_id}.{exc.field}", exc.message) from None
    return rows


def _read(file: Path) -> dict[str, Row]:
    raw = read_toml(file, what="reply table")
    rows: dict[str, Row] = {}
    for reply_id, data in raw.items():
        if reply_id not in ALL_IDS:
            raise ConfigError(file, reply_id, "unknown reply id")
        if not isinstance(data, dict):
            raise ConfigError(file, reply_id, "expected a table")
        rows[reply_id] = _row(file, reply_id, data)
    missing = sorted(ALL_IDS - rows.keys())
    if missing:
        raise ConfigError(file, missing[0], "reply id missing from the table")
    return rows


def _line_problem(line: str, *, ascii_only: bool) -> str | None:
    if _CONTROL.search(line):
        return "contains CR, LF or another control character"
    if _LONE_PERCENT.search(line):
        return "a '%' must be written '%%' (help_url included)"
    if ascii_only and not line.isascii():
        # Sendmail clears the 8th bit: non-ASCII here would desynchronize the session.
        return "not ASCII, but this rendering is sent where only ASCII may go"
    return None


def _override_languages(policy: RepliesConfig) -> set[str]:
    return {lang for override in policy.overrides.values() for lang in override.text}


def _apply_overrides(rows: dict[str, Row], policy: RepliesConfig, config_file: Path | str) -> None:
    where = config_file or "config"
    for reply_id, override in policy.overrides.items():
        if reply_id not in ALL_IDS:
            raise ConfigError(where, f"replies.override.{reply_id}", "unknown reply id")
        row = rows[reply_id]
        known = {ASCII_LANGUAGE, *policy.languages, *policy.domain_languages, *row.text}
        for part, texts in (("text", override.text), ("hint", override.hint)):
            for lang in texts:
                if lang not in known:
                    # A typo (zn for zh) would load and change nothing.
                    raise ConfigError(
                        where,
                        f"replies.override.{reply_id}.{part}.{lang}",
                        f"not a language of the table, replies.languages or a"
                        f" [domain] table"
                        f" ({', '.join(sorted(known))})",
                    )
        rows[reply_id] = Row(
            reply_id,
            override.code or row.code,
            override.xcode or row.xcode,
            row.stage,
            row.decided_by,
            {**row.text, **override.text},
            {**row.hint, **override.hint},
        )
        try:
            _validate(rows[reply_id], policy.languages)
        except _RowError as exc:
            raise ConfigError(
                where, f"replies.override.{reply_id}.{exc.field}", exc.message
            ) from None


class _RowError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _row(file: Path, reply_id: str, data: dict[str, Any]) -> Row:
    allowed = {"code", "xcode", "stage", "decided_by", "text", "hint"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(file, f"{reply_id}.{unknown[0]}", "unknown field")
    for name in ("text", "hint"):
        value = data.get(name, {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(file, f"{reply_id}.{name}", "expected a table of strings")
    for name in ("code", "xcode", "stage", "decided_by"):
        if not isinstance(data.get(name, ""), str):
            raise ConfigError(file, f"{reply_id}.{name}", "expected a string")
    return Row(
        reply_id,
        data.get("code", ""),
        data.get("xcode", ""),
        data.get("stage", ""),
        data.get("decided_by", "milter"),
        data.get("text", {}),
        data.get("hint", {}),
    )


def _validate(row: Row, languages: Iterable[str]) -> None:
    if not _CODE.match(row.code):
        raise _RowError("code", f"must be a 4xx or 5xx code, got {row.code!r}")
    m = _XCODE.match(row.xcode)
    if not m:
        raise _RowError("xcode", f"must be an RFC 3463 code like 5.7.1, got {row.xcode!r}")
    if row.reply_id in TEMPORARY_IDS and not row.code.startswith("4"):
        why = TEMPORARY_IDS[row.reply_id]
        raise _RowError("code", f"must stay a 4xx code, a retry can succeed ({why})")
    if m.group(1) != row.code[0]:
        # Postfix calls this a malformed reply and applies milter_default_action.
        raise _RowError("xcode", f"class {m.group(1)} differs from code {row.code}")
    for name, texts in (("text", row.text), ("hint", row.hint)):
        for lang in (ASCII_LANGUAGE, *languages):
            if lang not in texts or not texts[lang].strip():
                raise _RowError(f"{name}.{lang}", "missing")
        for lang, text in texts.items():
            if _CONTROL.search(text):
                raise _RowError(f"{name}.{lang}", "contains CR, LF or another control character")
            if _LONE_PERCENT.search(text):
                raise _RowError(f"{name}.{lang}", "a '%' must be written '%%'")
            if text[:1].isdigit():
                # Postfix reads a leading digit as a malformed code.
                raise _RowError(f"{name}.{lang}", "must not start with a digit")
    if not row.text[ASCII_LANGUAGE].isascii() or not row.hint[ASCII_LANGUAGE].isascii():
        raise _RowError(ASCII_LANGUAGE, "the fallback language must be plain ASCII")
