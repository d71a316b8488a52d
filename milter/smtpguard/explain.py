"""``smtpguard explain``: say what an SMTP reply line from any server means.

The knowledge is data, ``rules/explain.toml``; this module only parses, validates and
looks up. A reply is explained by the first of:

1. **Our own table** (``rules/replies.toml``): the first line's text is exactly one of
   our texts (en, zh, or the seed's one-line form "en (zh)"), with our code when the
   line has one. The action is that row's hint; ``reply_id`` names the row.
2. **The rules** (``[[rule]]``), in file order, first match wins: ``text`` is searched
   in the reply text with e-mail addresses and host names replaced (``raw = true``:
   in the pasted text); ``code`` must match the whole code when the line has one (a
   line with only an enhanced code is matched by its class, as "500" for "5.3.0"; a
   line without any code on its text alone, unless ``code_required``);
   ``xcode``, when given, must match the whole enhanced code, so such a rule never
   matches a line without one. When no rule matched, the text without its
   ``<address>`` and ``<host>`` words is tried once more.
   A rule's ``meaning`` table explains a group of provider codes one by one. A
   ``weak`` rule (generic words) gives way to a specific RFC 3463 detail of another
   category (:meth:`Knowledge._specific_detail`). Replies with a 2xx/3xx code are
   successes and skip the rules.
3. **Weak words** (``[keywords]``, rule id ``keywords``): the one category whose words
   the reply contains, when no rule matched, the code is not a syntax or sequence
   code (:data:`PROTOCOL_CODES`) and the enhanced code has no specific detail; unless
   the word model (4.) says another category at least ``keywords_threshold`` sure.
4. **The word model** (rule id ``words-model``, :mod:`smtpguard.explain_words`), where
   the fallback would answer a 4xx, 5xx or code-less reply: the category its words and
   codes make likely, when the model is at least ``threshold`` sure. Its file
   (``rules/explain-words.toml``) is read the first time it is needed.
5. **The fallback** (rule id ``rfc3463-fallback``): the RFC 3463 meaning of the
   enhanced code's subject and detail (class/subject/detail), else the RFC 5321/4954
   meaning of the basic code, else its class (2/3/4/5), else "unknown".

Parsing is lenient about what users paste: "550 5.7.1 text", "550-5.7.1 text",
"550 text", "The server says: 550 ...", "host x said: 550 ...", ">>550 ...", literal
``\\r\\n`` sequences, qmail's trailing "(#5.7.1)", an enhanced code anywhere in the text
("status 5.7.26", "(5.2.2)"), a code followed by a comma (Zoho's "ERROR_CODE :550,") or
by a colon and an enhanced code or address ("550: #5.1.0 Address rejected"), multi-line
replies (the code of the last reply line wins; the texts of its lines are joined;
"550-5.7.1" prefixes inside an unfolded line are dropped; a delivery report's own lines
before the reply are searched after its text), lines without a code,
full-width CJK punctuation (NFKC), and any bytes (:func:`clean_input`). Lines are cut
to :data:`MAX_LINE_CHARS` and the joined text to :data:`MAX_TEXT_CHARS` before any
rule pattern runs, and the patterns are RE2 (:mod:`smtpguard.patterns`, linear in the
text whatever they say), so a hostile input cannot make the lookup slow.

JSON output (``--json``) is one object with the keys of :data:`JSON_KEYS`, documented
with the closed :data:`FIXES` set in ``docs/explain.md``. :func:`knowledge` loads the
rules once per process and rules directory, from a cache in the user's cache directory
when neither the files nor the code changed since it was written (see "the knowledge
cache").
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import html
import importlib
import json
import os
import pickle
import re
import stat
import sys
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

from smtpguard import __version__, explain_words
from smtpguard.datafiles import ConfigError, check_keys, default_rules_dir, read_toml, toml_table
from smtpguard.explain_words import WORDS_RULE, WordModel
from smtpguard.patterns import Pattern, PatternError, PatternSet
from smtpguard.replies import ALL_IDS, read_rows

LANGUAGES: tuple[str, ...] = ("en", "zh")
FALLBACK_RULE = "rfc3463-fallback"
#: The rule id of an explanation from weak words (``[keywords]``), see Knowledge.explain.
KEYWORDS_RULE = "keywords"
#: The closed set of machine-readable fixes (``fix`` in the JSON output); what each one
#: asks the sender to do is in ``docs/explain.md``. Every category names one.
FIXES: tuple[str, ...] = (
    "none",
    "retry_later",
    "fix_recipient",
    "contact_recipient",
    "fix_sender",
    "authenticate",
    "fix_credentials",
    "use_tls",
    "delist_ip",
    "fix_dns",
    "fix_spf_dkim_dmarc",
    "reduce_rate",
    "shrink_message",
    "clean_content",
    "fix_client",
    "contact_postmaster",
)
#: Rule sources that name no server family (``server_family`` is null for them).
GENERIC_SOURCES: frozenset[str] = frozenset({"generic", "rfc3463", "rfc5321", "rfc4954"})
JSON_KEYS: tuple[str, ...] = (
    "reply",
    "code",
    "xcode",
    "enhanced_code",
    "text",
    "category",
    "fix",
    "permanent",
    "title",
    "cause",
    "action",
    "rule",
    "source",
    "server_family",
    "reply_id",
    "lang",
)

#: RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; pasted bounces add a prefix.
MAX_LINE_CHARS = 2048
MAX_TEXT_CHARS = 4096
MAX_LINES = 200
_DISPLAY_CHARS = 200
#: RFC 5321's syntax and sequence codes (4.2.2): they say what kind of error it is more
#: precisely than weak words ("SIZE requires a value" is no size problem) or an X.5.x
#: enhanced code (OpenSMTPD answers "503 5.5.1" to a command in the wrong state).
PROTOCOL_CODES: frozenset[str] = frozenset({"500", "501", "502", "503", "504"})
#: Replies a :class:`Knowledge` searches rule by rule before it builds its atom filter
#: (tens of milliseconds: more than trying every rule on a few replies).
UNFILTERED_REPLIES = 16

_ID = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
_SOURCE = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_CODE_KEY = re.compile(r"[2-5][0-9][0-9]\Z")
_DETAIL_KEY = re.compile(r"[0-7]\.[0-9]{1,3}\Z")
_ESCAPED_NEWLINE = re.compile(r"\\r\\n|\\n|\\r")
_NEWLINE = re.compile(r"\r\n|\r|\n")
_SPACE = re.compile(r"\s+")
#: What users paste before a reply line: quote marks, list bullets, ">" of a quoted
#: mail and a session transcript's marker for the server's side (sendmail's "<<< ",
#: "<-- " of mailing-list and test tools).
#: A MIME boundary line of a pasted bounce: no words of the reply (review rev178 F5: the
#: "Reply:" line ended in "--ABC123.1733162401/mx.example.org").
_BOUNDARY = re.compile(r"\s*--[!-~]{6,}\s*\Z")
#: A server's refusal in a transcript that follows from an earlier one (a pipelined
#: DATA after every recipient was refused, a command out of sequence).
_FOLLOWS_ON = re.compile(
    r"no (?:valid )?recipients|need (?:rcpt|mail)\b|bad sequence"
    r"|valid rcpt command must precede|all rcpt commands were rejected",
    re.IGNORECASE,
)
#: A transcript's line of the client's side (sendmail -v: ">>> MAIL From:<a@b> SIZE=9").
_CLIENT = re.compile(r"\s*>>>\s")
_LEAD = re.compile(r"[\s>'\"`#(\[*]*(?:(?:<<<|<--?)\s*)?")
#: A code ended by a colon is one only before an enhanced code or an address ("550: #5.1.0
#: Address rejected", sendmail's "550: <a@b>... User unknown"): "503: Service Unavailable"
#: is an HTTP status line, "221: my $code" a line of grep -n (review rev104 F7).
_COLON_SEP = r":(?=[ \t]+(?:#?[2-5]\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9])|<))"
_REPLY = re.compile(
    rf"(?P<code>[2-5][0-9][0-9])(?P<sep>[ \t-]|,(?=[ \t])|{_COLON_SEP}|\Z)[ \t]*"
    r"(?:#?(?P<xcode>[2-5]\.[0-9]{1,3}\.[0-9]{1,3})(?=[\s;:,)]|\Z))?"
)
#: A code after a marker: "says:550", "said: 550", "returned '550", "smtp; 550".
_EMBEDDED_REPLY = re.compile(
    rf"[:;'\"(\[#=]\s{{0,3}}(?=[2-5][0-9][0-9](?:[ \t-]|, |{_COLON_SEP}|\Z))"
)
_EMBED_WINDOW = 400
#: A line that ends the reply before it (see :func:`parse_reply`).
_ENDS_REPLY = re.compile(
    r"(?:(?:Final-Recipient|Original-Recipient|Action|Status|Remote-MTA|Reporting-MTA"
    r"|Diagnostic-Code|Last-Attempt-Date|Arrival-Date|Will-Retry-Until|Received-From-MTA"
    r"|X-[A-Za-z0-9-]+|Content-[A-Za-z-]+|DSN generated by|Remote server):\s|Giving up on\b)",
    re.IGNORECASE,
)
#: What follows a code in a telephone number: another group of digits ("555-0199").
_PHONE_REST = re.compile(r"(?:[0-9]{3}-[0-9]|[0-9]{4}(?![0-9.])|[0-9]{3}[ \t]*\Z)")
_BARE_XCODE = re.compile(r"#?(?P<xcode>[2-5]\.[0-9]{1,3}\.[0-9]{1,3})(?=[\s;:,)]|\Z)[ \t]*")
_QMAIL_XCODE = re.compile(r"\(#(?P<xcode>[2-5]\.[0-9]{1,3}\.[0-9]{1,3})\b")
_SENDMAIL_PREFIX = re.compile(r"<[^<>\s]{0,320}>(?:\.\.\.|:)?\s*")
#: What Postfix puts before an access map's text, after the address (the static relay
#: reply of postfix-config: "<x@foreign.example>: Recipient address rejected: ...").
_POSTFIX_ACCESS_PREFIX = re.compile(
    r"\A(?:(?:Recipient|Sender) address|Client host|Helo command) rejected:\s*", re.IGNORECASE
)
#: A gloss in brackets at the end of a reply (postfix-config's reply footers).
_FOOTER = re.compile(r"\(([^()]{1,200})\)\s*$")
#: The end Postfix writes after a remote server's reply in its logs and bounces.
_IN_REPLY_TO = re.compile(r"\s*\(in reply to [^()]{1,40}\)\s*$", re.IGNORECASE)
_WORD = re.compile(r"\w+")
#: An enhanced code anywhere in the text ("status 5.7.26", "(5.2.2)", "[5.2.2]"), not a
#: piece of an IP address or version number.
_MID_XCODE = re.compile(r"(?<![\w.])[245]\.[0-9]{1,3}\.[0-9]{1,3}(?!\.?[0-9])")
#: An enhanced code where a status code stands, in a line without a basic code: at the
#: start, after "status", "error", "code", "reason", "dsn", "smtp;", after one of
#: ":(,;=<[", or a dash as a list's bullet (Exchange's "-- 5.7.54 SMTP; Unable to
#: relay"). After another word it is a version ("Dovecot 2.3.16", "cyrus 2.5.17"), not
#: a status.
_CODELESS_XCODE = re.compile(
    r"(?:^|(?<=[:(\[,;=<])|\b(?:status|error|code|reason|dsn|smtp;)|(?<!\S)--?)[ \t]{0,3}"
    r"(?P<xcode>[245]\.[0-7]\.[0-9]{1,3})(?!\.?[0-9])",
    re.IGNORECASE,
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_ADDRESS = re.compile(r"<?[^\s<>@\"'(),;:\[\]]{1,64}@[a-z0-9.-]{1,255}>?|<>", re.IGNORECASE)
_URL_HOST = re.compile(r"(https?://)[^/\s\]>)'\"]+", re.IGNORECASE)
_HOST = re.compile(
    r"(?<![\w.@-])(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}(?![\w-])", re.IGNORECASE
)
#: Last labels that make a dotted word a host name (any two letters are a country).
_TLD_WORDS = (
    "com net org edu gov mil int info biz name pro io co me tv cc "
    "eu asia xyz top site online club shop app dev cloud email mail link live icu "
    "vip work ltd group arpa example invalid test localhost local lan internal"
)
_TLDS = frozenset(_TLD_WORDS.split())
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Text:
    """One piece of advice in every language of :data:`LANGUAGES`."""

    en: str
    zh: str


@dataclass(frozen=True, slots=True)
class Category:
    id: str
    title: Text
    cause: Text
    action: Text
    #: One of :data:`FIXES`.
    fix: str
    #: Used instead of ``fix`` when the reply is temporary (4xx).
    temporary_fix: str | None = None
    #: Appended to the action only when the reply is temporary (4xx): a permanent 5xx
    #: is never told that it will be retried.
    temporary_note: Text | None = None
    #: False for a category whose 4xx a retry does not cure (relaying, logging in):
    #: no note that the mail is retried (review rev180 F6).
    retry_helps: bool = True
    #: The action, with the fix contact_postmaster, for a permanent (5xx) reply of a
    #: category whose action says the mail is retried: nothing retries a 5xx, whatever
    #: its words say (review rev178 F1).
    permanent_action: Text | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    category: str
    code: Pattern | None
    xcode: Pattern | None
    text: Pattern
    cause: Text | None
    action: Text | None
    source: str
    #: One of :data:`FIXES`; default: the category's.
    fix: str | None = None
    #: Search the text as pasted instead of :attr:`ParsedReply.plain`: for evidence that
    #: lives in a host name (``zen.spamhaus.org``, ``listed at dnsbl.example``).
    raw: bool = False
    #: A rule for a group of provider codes (NetEase's MI:SFQ, RP:QRC...): the meaning
    #: of the first code found in the reply is its cause, so a reply is told what its
    #: own code means and not the whole group's.
    meanings: tuple[tuple[Pattern, Text], ...] = ()
    #: ``code`` must be there: a rule about what a basic code itself means (503 is a
    #: sequence error whatever its words) says nothing about a line without one.
    code_required: bool = False
    #: Generic words ("access denied", "try again later"): a specific RFC 3463 detail
    #: of another category in the same reply says more (Knowledge._specific_detail).
    weak: bool = False
    #: False for a 4xx the server itself says retrying will not cure (Yahoo's
    #: "permanently deferred"): its answer gets no note that the mail is retried.
    retry_helps: bool = True

    def cause_for(self, reply: ParsedReply) -> Text | None:
        text = reply.text if self.raw else reply.plain
        return next((m for pattern, m in self.meanings if pattern.search(text)), self.cause)

    def matches(self, reply: ParsedReply) -> bool:
        if self.code_required and reply.code is None:
            return False
        if self.code is not None:
            code = reply.code or _class_code(reply)
            if code is not None and not self.code.fullmatch(code):
                return False
        if self.xcode is not None and (
            reply.xcode is None or not self.xcode.fullmatch(reply.xcode)
        ):
            return False
        return self.text.search(reply.text if self.raw else reply.plain)


def _class_code(reply: ParsedReply) -> str | None:
    """What a rule's ``code`` is matched against when the line has no basic code: the
    class of its enhanced code as "X00" (Postfix's "5.3.0 service unavailable" is no
    temporary failure, qmail's "(#4.3.0)" may be one); None, when there is no code at
    all: such a line is matched on its text alone."""
    return f"{reply.xcode[0]}00" if reply.xcode is not None else None


@dataclass(frozen=True, slots=True)
class Fallback:
    """The meaning of a code, enhanced-code detail or class, from the RFCs."""

    key: str
    category: str
    #: Used instead of ``category`` when the reply is temporary (4xx).
    temporary_category: str | None
    cause: Text
    action: Text | None
    #: A basic code that says little (550, 554...): the enhanced code's subject wins.
    weak: bool = False


@dataclass(frozen=True, slots=True)
class Ours:
    """One row of our own reply table, as ``explain`` sees it."""

    reply_id: str
    code: str
    category: str
    cause: Text
    hint: Text
    #: The texts that identify the row: en, zh and the seed's one-line "en (zh)".
    texts: tuple[str, ...]
    #: The row's enhanced code (RFC 3463), as the shipped table has it.
    xcode: str = ""


@dataclass(frozen=True, slots=True)
class ParsedReply:
    code: str | None
    xcode: str | None
    #: All text of the reply (its lines joined), NFKC-normalized, whitespace collapsed.
    text: str
    #: Text of the first line, with the lines folded from it, without code and
    #: enhanced code.
    first: str
    #: The text of every pasted line (cut), where server signatures are looked for.
    raw: str = ""
    #: :attr:`text` with e-mail addresses and host names replaced by ``<address>`` and
    #: ``<host>``: what rules search, so that a domain containing "spam" or "relay"
    #: is no evidence of anything. A delivery report's own lines before the reply
    #: ("Connected to 192.0.2.1 but my name was rejected.") follow the reply's text:
    #: they name the SMTP stage that failed.
    plain: str = ""
    #: :attr:`plain` of the reply's own text, without a delivery report's lines.
    own: str = ""

    @property
    def klass(self) -> str:
        """The reply class ("2" to "5") from the code, else the enhanced code, else ""."""
        return (self.code or self.xcode or "")[:1]

    def display(self) -> str:
        parts = [p for p in (self.code, self.xcode, self.text) if p]
        line = " ".join(parts)
        if len(line) > _DISPLAY_CHARS:
            line = line[: _DISPLAY_CHARS - 1] + "…"
        return line


@dataclass(frozen=True, slots=True)
class Explanation:
    code: str | None
    xcode: str | None
    text: str
    category: str
    title_en: str
    title_zh: str
    cause_en: str
    cause_zh: str
    action_en: str
    action_zh: str
    #: The matched rule id, ``ours.<reply_id>``, :data:`KEYWORDS_RULE`,
    #: :data:`~smtpguard.explain_words.WORDS_RULE` or :data:`FALLBACK_RULE`.
    rule: str
    source: str
    #: Our reply table's id when the reply is one of ours.
    reply_id: str | None
    reply: str
    #: One of :data:`FIXES`: what the sender should do, for scripts.
    fix: str = "none"
    #: True for a permanent (5xx) reply: the mail will not be retried.
    permanent: bool = False
    #: The server family the reply comes from (``postfix``, ``gmail``, ``qq``...) when
    #: the matched rule or the text says so; None when nothing identifies it.
    server_family: str | None = None

    @property
    def enhanced_code(self) -> str | None:
        """The RFC 3463 enhanced status code (alias of ``xcode``)."""
        return self.xcode

    def title(self, lang: str) -> str:
        return self.title_zh if lang == "zh" else self.title_en

    def cause(self, lang: str) -> str:
        return self.cause_zh if lang == "zh" else self.cause_en

    def action(self, lang: str) -> str:
        return self.action_zh if lang == "zh" else self.action_en

    def to_dict(self, lang: str) -> dict[str, str | bool | None]:
        """The JSON object; its keys, in order, are :data:`JSON_KEYS` (stable)."""
        return {
            "reply": self.reply,
            "code": self.code,
            "xcode": self.xcode,
            "enhanced_code": self.xcode,
            "text": self.text,
            "category": self.category,
            "fix": self.fix,
            "permanent": self.permanent,
            "title": self.title(lang),
            "cause": self.cause(lang),
            "action": self.action(lang),
            "rule": self.rule,
            "source": self.source,
            "server_family": self.server_family,
            "reply_id": self.reply_id,
            "lang": lang,
        }


class Knowledge:
    """Validated ``explain`` knowledge; build it with :func:`load_knowledge`."""

    def __init__(
        self,
        categories: Mapping[str, Category],
        rules: tuple[Rule, ...],
        ours: Mapping[str, Ours],
        fallback: Mapping[str, Fallback],
        *,
        families: tuple[tuple[str, Pattern], ...] = (),
        keywords: tuple[tuple[str, Pattern], ...] = (),
        words: WordModel | Path | None = None,
        atoms: Atoms | None = None,
    ) -> None:
        self.categories = categories
        self.rules = rules
        self.ours = ours
        self.fallback = fallback
        #: (family, signature) in file order: names the server family of a reply that
        #: a generic rule or the fallback explained ("gsmtp" is Gmail).
        self.families = families
        #: (category, weak words) in file order: used only when no rule matched.
        self.keywords = keywords
        #: The word model, or its file until the fallback first needs it (most lines
        #: never do, and ``explain "LINE"`` must start fast); None: no model.
        self._words = words
        # One pass over the text finds the rules that may match (RE2's literal atoms);
        # only those are tried, in file order: a log of a million bounces is not
        # searched 200 times per line. Building the atom filter costs more than trying
        # every rule on a few lines, so the first replies (`explain "LINE"`) are searched
        # rule by rule and the filter is built once a log makes it pay.
        self._plain_index = [i for i, rule in enumerate(rules) if not rule.raw]
        self._raw_index = [i for i, rule in enumerate(rules) if rule.raw]
        self._sets: tuple[PatternSet, PatternSet] | None = None
        self._unfiltered = UNFILTERED_REPLIES
        #: :func:`rule_atoms` of the rules, which spare those first replies building
        #: the automaton of rules that cannot match (None: every rule is tried).
        self._atoms = atoms
        # Rows sharing a text ("auth error.", 451 and 551) are told apart by the code.
        self._ours_by_key: dict[str, list[Ours]] = {}
        for row in ours.values():
            for text in row.texts:
                rows = self._ours_by_key.setdefault(_words(text), [])
                if row not in rows:
                    rows.append(row)

    def explain(self, line: str | bytes) -> Explanation:
        """Explain one pasted reply. Any input is accepted: bytes that are not UTF-8,
        lone surrogates (undecodable argv) and control characters become U+FFFD or
        spaces, so the result always prints and serializes."""
        reply = parse_reply(_unhtml(clean_input(line)))
        expired = _EXPIRED_AFTER.search(reply.text) if reply.klass == "5" else None
        if expired is not None:
            last = self.explain(reply.text[expired.end() :])
            if last.code is not None and last.code[:1] == "4":
                return self._expired(reply, last)
        ours = self._match_ours(reply)
        if ours is not None:
            cat = self.categories[ours.category]
            return self._explanation(
                reply,
                cat,
                cause=ours.cause,
                action=ours.hint,
                rule=f"ours.{ours.reply_id}",
                source="smtpguard",
                ours=ours,
            )
        if reply.code is None or reply.code[0] in "45":
            detail = self._specific_detail(reply)
            rule = None
            if reply.own != reply.plain:
                # The quoted reply's own specific words first: a report's wrapper
                # ("delivery has been delayed") says less than the reply's reason; but
                # the report's stage ("my name was rejected") more than generic words.
                rule = self._first_rule(replace(reply, plain=reply.own), specific=True)
            if rule is None:
                rule = self._first_rule(reply)
            if rule is None and _NAMED.search(reply.plain):
                # "Mailbox <address> is full": the name between a rule's words hides
                # them; the text without names is tried once no rule matched.
                rule = self._first_rule(replace(reply, plain=_unnamed(reply.plain)))
            if rule is not None:
                if rule.weak and detail is not None and detail != rule.category:
                    return self._fallback(reply)
                cat = self.categories[rule.category]
                return self._explanation(
                    reply,
                    cat,
                    cause=rule.cause_for(reply) or cat.cause,
                    action=rule.action or cat.action,
                    rule=rule.id,
                    source=rule.source,
                    fix=rule.fix,
                    retry_helps=rule.retry_helps,
                )
            guess = None if detail is not None else self._keywords(reply)
            if guess is not None:
                overruled = self._guess(reply, overruling=guess)
                if overruled is not None:
                    return overruled
                cat = self.categories[guess]
                return self._explanation(
                    reply,
                    cat,
                    cause=cat.cause,
                    action=cat.action,
                    rule=KEYWORDS_RULE,
                    source="generic",
                )
        return self._fallback(reply)

    def _first_rule(self, reply: ParsedReply, *, specific: bool = False) -> Rule | None:
        """The first rule in file order that matches; ``specific``: no weak rule."""
        return next(
            (
                rule
                for rule in self._candidates(reply)
                if not (specific and rule.weak) and rule.matches(reply)
            ),
            None,
        )

    def _keywords(self, reply: ParsedReply) -> str | None:
        """Weak evidence, when no rule found strong evidence: the one category whose
        words the reply contains. Two or more categories' words (or none) say nothing,
        and the codes decide (the fallback), as they do for a syntax or sequence code
        (:data:`PROTOCOL_CODES`)."""
        if reply.code in PROTOCOL_CODES:
            return None
        hits = {category for category, words in self.keywords if words.search(reply.plain)}
        if reply.klass != "4":
            hits.discard("temp_failure")
        return hits.pop() if len(hits) == 1 else None

    def _specific_detail(self, reply: ParsedReply) -> str | None:
        """The category of the enhanced code's RFC 3463 detail when it names the problem
        (X.2.2: the mailbox is full) and so says more than weak words ("File too large"
        in the text of a 5.2.2) or a ``weak`` rule. Details used for every refusal
        (X.7.1) are ``weak`` themselves: None."""
        if reply.xcode is None:
            return None
        _, subject, detail = (str(int(part)) for part in reply.xcode.split("."))
        entry = self.fallback.get(f"detail.{subject}.{detail}")
        if entry is None or entry.weak:
            return None
        if reply.klass == "4" and entry.temporary_category:
            return entry.temporary_category
        return entry.category

    def _candidates(self, reply: ParsedReply) -> tuple[Rule, ...] | list[Rule]:
        """The rules that may match, in file order (all of them for the first replies)."""
        if self._sets is None:
            if self._unfiltered > 0:
                self._unfiltered -= 1
                return self.rules if self._atoms is None else self._with_atoms(reply)
            self._sets = (
                PatternSet([self.rules[i].text for i in self._plain_index]),
                PatternSet([self.rules[i].text for i in self._raw_index]),
            )
        plain_set, raw_set = self._sets
        found = {self._plain_index[i] for i in plain_set.candidates(reply.plain)}
        found.update(self._raw_index[i] for i in raw_set.candidates(reply.text))
        return [self.rules[i] for i in sorted(found)]

    def _with_atoms(self, reply: ParsedReply) -> list[Rule]:
        """The rules, in file order, but those none of whose atoms the text holds."""
        assert self._atoms is not None
        plain, text = reply.plain.casefold(), reply.text.casefold()
        return [
            rule
            for rule, atoms in zip(self.rules, self._atoms, strict=True)
            if atoms is None or any(atom in (text if rule.raw else plain) for atom in atoms)
        ]

    def family(self, reply: ParsedReply, source: str) -> str | None:
        if source not in GENERIC_SOURCES:
            return source
        return next((name for name, sig in self.families if sig.search(reply.raw)), None)

    def _match_ours(self, reply: ParsedReply) -> Ours | None:
        if reply.code is not None and reply.code[0] not in "45":
            return None
        first = reply.first
        if reply.code is not None:
            # Our multi-line reply unfolded into one line (a bounce's Diagnostic-Code):
            # its first line ends where the next "554-5.7.1" or "554 5.7.1" begins.
            first = re.split(
                rf"(?<!\S){reply.code}[ -][245]\.[0-9]{{1,3}}\.[0-9]{{1,3}}(?!\S)",
                first,
                maxsplit=1,
            )[0]
        first = _IN_REPLY_TO.sub("", first)
        if first[:1] == "<":
            first = _SENDMAIL_PREFIX.sub("", first, count=1)
            first = _POSTFIX_ACCESS_PREFIX.sub("", first, count=1)
        rows = self._ours_by_key.get(_words(first), [])
        # Our Chinese gloss is what no other server writes; an English text alone
        # ("Syntax error", "Virus found") is any server's words (review rev138 F4).
        glossed = not first.isascii()
        if not rows and " (" in first:
            english, _, gloss = first.partition(" (")
            if not gloss.isascii():
                # The English text with a gloss of another wording ([replies.override]).
                rows = self._ours_by_key.get(_words(english), [])
        if not rows and (footer := _FOOTER.search(first)) and not footer[1].isascii():
            # Postfix's own reply with the gloss postfix-config's footer table puts
            # after it ("503 5.5.1 Error: need MAIL command (请先发送 MAIL)"; review
            # rev137 F6).
            rows = self._ours_by_key.get(_words(footer[1]), [])
        if not rows:
            return None
        if reply.code is None:
            return _without_code(rows, reply.xcode, glossed=glossed)
        # The code tells apart rows that share a text ("auth error.", 451 and 551).
        exact = next((row for row in rows if row.code == reply.code), None)
        soft = [row for row in rows if _soft_bounced(row, reply)]
        if len(soft) == 1 and (exact is None or exact.xcode != reply.xcode):
            # Postfix's soft_bounce made a 4xx of our 5xx, both codes alike (550 5.1.1
            # -> 450 4.1.1): that row, in any language (review rev178 F7: the 450 row of
            # that text, or no row of ours at all, was taken).
            return soft[0]
        if exact is not None or not glossed:
            return exact
        # With our gloss, another code is an override's, or Postfix's soft_bounce.
        same_class = [row for row in rows if row.code[0] == reply.code[0]]
        return same_class[0] if same_class else (rows[0] if len(rows) == 1 else None)

    def words_model(self) -> WordModel | None:
        """The word model, read from its file the first time (a malformed file raises
        :class:`ConfigError` then, naming the file and key)."""
        if isinstance(self._words, Path):
            self._words = _cached_words(self._words, self.categories)
        return self._words

    def _guess(self, reply: ParsedReply, *, overruling: str | None = None) -> Explanation | None:
        """The word model's category where the codes alone would answer (see
        :mod:`smtpguard.explain_words`); None below its threshold or without a model.
        ``overruling``: weak words' category, which the model replaces only with another
        one, and only at its ``keywords_threshold`` (in the backtest weak words were
        right on 59 % of the lines they answered, the codes on 55 %, the rules on 88 %)."""
        if reply.klass not in ("4", "5", ""):
            return None
        model = self.words_model()
        if model is None:
            return None
        feats = explain_words.features(reply.code, reply.xcode, reply.plain)
        least = model.threshold if overruling is None else model.keywords_threshold
        guess = model.guess(feats, reply.klass, least)
        if guess is None or guess[0] == overruling:
            return None
        cat = self.categories[guess[0]]
        cause = Text(f"{cat.cause.en} {_GUESSED.en}", f"{cat.cause.zh}{_GUESSED.zh}")
        return self._explanation(
            reply, cat, cause=cause, action=cat.action, rule=WORDS_RULE, source="generic"
        )

    def _fallback(self, reply: ParsedReply) -> Explanation:
        """Most specific first: the RFC 3463 detail, the basic code, the RFC 3463 subject,
        a weak basic code, the class; a syntax or sequence code (:data:`PROTOCOL_CODES`)
        before an X.5.x (protocol) detail. Success (2xx/3xx) is only ever its class.
        The word model's sure guess comes first (:meth:`_guess`)."""
        guessed = self._guess(reply)
        if guessed is not None:
            return guessed
        klass = (reply.code or reply.xcode or "")[:1]
        class_entry = self.fallback.get(f"class.{klass}") or self.fallback["none"]
        candidates: list[Fallback | None] = []
        if klass in ("4", "5"):
            code = self.fallback.get(f"code.{reply.code}")
            subject: Fallback | None = None
            if reply.xcode is not None:
                _, subj, detail = (str(int(part)) for part in reply.xcode.split("."))
                if subj == "5" and reply.code in PROTOCOL_CODES and code is not None:
                    candidates.append(code)
                if detail != "0":
                    candidates.append(self.fallback.get(f"detail.{subj}.{detail}"))
                subject = self.fallback.get(f"subject.{subj}")
            if code is not None and not code.weak:
                candidates.append(code)
            candidates += [subject, code]
        best = next((c for c in candidates if c is not None), class_entry)
        category = best.category
        if klass == "4" and best.temporary_category:
            category = best.temporary_category
        cause = best.cause
        action = best.action or class_entry.action
        if best is not class_entry:
            cause = Text(
                f"{best.cause.en} {class_entry.cause.en}", f"{best.cause.zh}{class_entry.cause.zh}"
            )
        assert action is not None  # class entries are validated to carry an action
        cat = self.categories[category]
        return self._explanation(
            reply, cat, cause=cause, action=action, rule=FALLBACK_RULE, source="rfc3463"
        )

    def _expired(self, reply: ParsedReply, last: Explanation) -> Explanation:
        """A 5xx that says the message expired, quoting the last temporary refusal
        (Microsoft's "550 5.4.300 Message expired -> 451 4.7.500 Server busy"): the
        refusal's cause, but the mail came back and nothing retries it (review rev207
        F6: the wrapper's weak words said "check the recipient's domain")."""
        # Sent again, the mail may pass: the cause's own fix, else to send it later.
        fix = last.fix if last.fix != "none" else "retry_later"
        return replace(
            last,
            code=reply.code,
            xcode=reply.xcode,
            text=reply.text,
            reply=reply.display(),
            cause_en=f"{_EXPIRED.en} {last.cause_en}",
            cause_zh=f"{_EXPIRED.zh}{last.cause_zh}",
            action_en=_EXPIRED_ACTION.en,
            action_zh=_EXPIRED_ACTION.zh,
            fix=fix,
            permanent=True,
        )

    def _explanation(
        self,
        reply: ParsedReply,
        cat: Category,
        *,
        cause: Text,
        action: Text,
        rule: str,
        source: str,
        ours: Ours | None = None,
        fix: str | None = None,
        retry_helps: bool = True,
    ) -> Explanation:
        temporary = reply.klass == "4"
        if fix is None:
            fix = cat.temporary_fix if temporary and cat.temporary_fix else cat.fix
        if reply.klass == "5" and cat.permanent_action is not None:
            # "Greylisted, try again later" with a 550: the mail came back, and nothing
            # retries it (review rev178 F1: "nothing to do, it arrives after a delay").
            fix, action = "contact_postmaster", cat.permanent_action
        elif temporary and retry_helps and (cat.retry_helps or _SAYS_LATER.search(reply.plain)):
            note = cat.temporary_note if action is cat.action else None
            if note is None and ours is None and fix != "retry_later":
                # Every 4xx says it is retried (review rev178 F4: most said nothing of
                # it); a retry_later answer says so in its own words, our hints in theirs.
                note = _TEMPORARY
            if note is not None:
                action = Text(f"{action.en} {note.en}", f"{action.zh}{note.zh}")
        return Explanation(
            code=reply.code,
            xcode=reply.xcode,
            text=reply.text,
            category=cat.id,
            title_en=cat.title.en,
            title_zh=cat.title.zh,
            cause_en=cause.en,
            cause_zh=cause.zh,
            action_en=action.en,
            action_zh=action.zh,
            rule=rule,
            source=source,
            reply_id=ours.reply_id if ours else None,
            reply=reply.display(),
            fix=fix,
            permanent=reply.klass == "5",
            server_family=self.family(reply, source),
        )


# --- parsing -------------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    code: str | None
    xcode: str | None
    text: str
    #: A continuation line of a multi-line reply ("550-..."): more of it follows.
    more: bool = False


def _soft_bounced(row: Ours, reply: ParsedReply) -> bool:
    """Whether ``reply``'s codes are ``row``'s permanent ones as Postfix's soft_bounce
    writes them: the class 5 of both made 4."""
    return (
        row.code[:1] == "5"
        and bool(row.xcode)
        and reply.code == f"4{row.code[1:]}"
        and reply.xcode == f"4{row.xcode[1:]}"
    )


def _without_code(rows: list[Ours], xcode: str | None, *, glossed: bool) -> Ours | None:
    """Which of ``rows`` (ours with the reply's text) a reply without a basic code is
    (review rev163 F2: the first row won, so "4.2.1 mailbox unavailable." was the
    permanent mailbox_unavailable and "auth error" the permanent auth_error_perm). An
    enhanced code chooses: its class with our gloss, the row's own enhanced code with
    our English text alone (which is any server's words with another one, as the coded
    path takes it: review rev138 F4). With no code at all, only rows that agree on the
    class: "auth error" may be either."""
    if xcode is not None:
        if glossed:
            rows = [row for row in rows if row.code[0] == xcode[0]]
        else:
            rows = [row for row in rows if row.xcode == xcode]
        return rows[0] if rows else None
    return rows[0] if len({row.code[0] for row in rows}) == 1 else None


def clean_input(line: str | bytes) -> str:
    """Any input as printable text: bytes and surrogate escapes (argv that was not
    UTF-8) are decoded as UTF-8 with U+FFFD for what is not; other lone surrogates
    become U+FFFD and control characters (but tab and line ends) a space."""
    if isinstance(line, bytes):
        text = line.decode("utf-8", "replace")
    else:
        try:
            text = line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            text = _SURROGATE.sub("\ufffd", line)
    return _CONTROL.sub(" ", text)


#: A tag of HTML's own elements (an address in angle brackets, <bob@example.org>, and a
#: name such as <postmaster> are none).
_HTML_TAG = re.compile(
    r"</?(?:html|head|body|p|div|br|span|b|i|u|font|table|tbody|thead|td|th|tr|pre|a|img"
    r"|hr|ul|ol|li|h[1-6]|style|meta|title|blockquote|center|strong|em|small|tt|code)"
    r"(?:\s[^<>]{0,500})?/?>",
    re.IGNORECASE,
)
#: A numeric character reference, which no reply writes for itself ("&#37038;").
_NUMERIC_REF = re.compile(r"&#(?:[0-9]{2,7}|x[0-9a-f]{2,6});", re.IGNORECASE)
#: A named character reference, read only in HTML source ("&amp;" in a URL of a reply
#: as text is the reply's own).
_NAMED_REF = re.compile(r"&[a-z][a-z0-9]{1,31};", re.IGNORECASE)


def _unhtml(text: str) -> str:
    """``text`` as read on the page when it is HTML source: tags become line ends and
    character references their characters (review rev207 F7: an Exchange NDR's
    "'554 5.7.1 mail address invalid.'<br>" and Chinese written as &#37038; were not
    ours). Only what is surely HTML is changed (rev210 L5: one "&amp;" decoded the
    "&region" of a URL and took "<root>" for a tag)."""
    decoded = _NUMERIC_REF.sub(lambda m: html.unescape(m.group(0)), text)
    if _HTML_TAG.search(decoded) is not None:
        decoded = _NAMED_REF.sub(lambda m: html.unescape(m.group(0)), _HTML_TAG.sub("\n", decoded))
    return decoded if decoded == text else clean_input(decoded)


def parse_reply(raw: str) -> ParsedReply:
    """Split a pasted reply into code, enhanced code and text (see the module doc)."""
    lines, starts = _lines(_ESCAPED_NEWLINE.sub("\n", raw))
    whole = " ".join(line[:MAX_LINE_CHARS] for line in lines)[: 2 * MAX_TEXT_CHARS]
    # A session transcript (sendmail -v, a Sendmail bounce's "Transcript of session"):
    # the server's replies are its "<<<" lines and the client's ">>>" commands are no
    # words ("SIZE=1234" made a size problem; review rev178 F2).
    server = [line.lstrip().startswith("<<<") for line in lines]
    transcript = any(server)
    if transcript:
        client = [_CLIENT.match(line) is not None for line in lines]
        server = [s for s, c in zip(server, client, strict=True) if not c]
        starts = [s for s, c in zip(starts, client, strict=True) if not c]
        lines = [line for line, c in zip(lines, client, strict=True) if not c]
    parsed = [_parse_line(line[:MAX_LINE_CHARS]) for line in lines]

    # Group: consecutive lines with the same code form one reply; lines without a code
    # continue the reply before them. The last reply that has a code wins, and the last
    # refusal (4xx, 5xx) before a later 2xx or 3xx: a bounce's reply is a refusal, and
    # a "206-555-0100" or "245 MIME-Version" after it is a quoted message's line (review
    # rev163 F1: "Accepted (not an error)"). In a transcript the first refusal of the
    # server wins: what follows it ("503 Need RCPT", "554 no valid recipients" after a
    # pipelined DATA, Sendmail's own "550 ... User unknown" line) follows from it.
    said_by = server if transcript else [False] * len(parsed)
    groups, from_server = _grouped(parsed, said_by, starts, lines)
    coded = [g for g in groups if g[0].code is not None]
    refusals = [g for g in coded if (g[0].code or "")[:1] in ("4", "5")]
    first_said = _transcript_reply(groups, from_server, refusals)
    report = ""
    if coded:
        group = first_said or (refusals[-1] if refusals else coded[-1])
        before = groups[: groups.index(group)]
        report = " ".join(line.text for g in before if g[0].code is None for line in g)
        code = group[0].code
        xcodes = [line.xcode for line in group if line.code is not None and line.xcode]
        if not xcodes and not group[0].text and len(group) > 1 and group[1].xcode:
            # Folded right after the basic code ("said: 450\n    4.1.1 mailbox ..."):
            # review rev207 F5, the soft-bounced row was taken for another.
            xcodes = [group[1].xcode]
        xcode = xcodes[-1] if xcodes else None
    else:
        group = [line for g in groups for line in g]
        code = None
        xcodes = [line.xcode for line in group if line.xcode]
        xcode = xcodes[-1] if xcodes else None
    text = " ".join(line.text for line in group if line.text)[:MAX_TEXT_CHARS]
    if xcode is None and (m := _QMAIL_XCODE.search(text)):
        xcode = m.group("xcode")
    if xcode is not None and code is not None and xcode[0] != code[0]:
        xcode = None  # "550 4.7.1" is malformed; trust the basic code
    if xcode is None and code is not None:
        # The first one of the reply's class: "550 ... status 5.7.26", "(5.2.2)".
        xcode = next((m for m in _MID_XCODE.findall(text) if m[0] == code[0]), None)
    elif xcode is None:
        # No basic code: the first enhanced code in the text gives the class ("Status:
        # 5.1.1", "Delivery failed: 5.1.1 user unknown"); with an RFC 3463 subject (0-7)
        # only and where a status stands, so that "Exim 4.94.2" or "(Dovecot 2.3.16)"
        # is no temporary failure.
        found = _CODELESS_XCODE.search(text)
        xcode = found.group("xcode") if found else None
    if code is not None:
        # A multi-line reply unfolded into one line (a bounce's Diagnostic-Code) repeats
        # "550-5.7.1" inside the text; those are line prefixes, not words.
        text = _space_out(
            re.sub(rf"(?<!\S){code}[ -](?:[245]\.[0-9]{{1,3}}\.[0-9]{{1,3}}(?!\S))?", " ", text)
        )
    plain = plain_text(f"{text} {report[:MAX_TEXT_CHARS]}" if report else text)
    own = plain_text(text) if report else plain
    return ParsedReply(code, xcode, text, _first_line(group), whole, plain, own)


def _lines(raw: str) -> tuple[list[str], list[bool]]:
    """The lines of a paste worth reading (up to the quoted original, the last
    :data:`MAX_LINES`), and for each whether it starts a reply whatever its code.

    Blank lines (and MIME boundaries) go, but the line after one starts a reply of its
    own: no MTA folds a reply across one (review rev207 F2, F4: a signature, or the
    next recipient's reply, was read as part of the reply before it). So does an
    unindented header-like line (a DSN's "Final-Recipient:", Microsoft's "DSN generated
    by:") and qmail's "Giving up on"."""
    kept: list[str] = []
    after_gap: list[bool] = []
    gap = False
    for line in _NEWLINE.split(raw):
        if not line.strip() or _BOUNDARY.match(line):
            gap = True
            continue
        kept.append(line)
        after_gap.append(gap)
        gap = False
    lines = _before_the_original(kept)
    starts = [
        gap or _ENDS_REPLY.match(line) is not None
        for gap, line in zip(after_gap, lines, strict=False)
    ]
    return lines[-MAX_LINES:], starts[-MAX_LINES:]


def _grouped(
    parsed: list[_Line], said_by: list[bool], starts: list[bool], lines: list[str]
) -> tuple[list[list[_Line]], list[bool]]:
    """The replies of a paste (see :func:`parse_reply`) and whether each is the
    server's side of a transcript. A line with a code after a line without one starts
    another reply unless it is indented (a wrapped line of the same reply): the next
    recipient's reply of the same code was merged into the one before."""
    groups: list[list[_Line]] = []
    from_server: list[bool] = []
    # Whether each reply is a multi-line one still going on: its last coded line was
    # "550-..." and its final line has not come, not even unfolded into the text after
    # it, as a bounce writes it ("said: 550-5.7.1 ... 550 5.7.1 ...").
    going_on: list[bool] = []
    for line, said, start, written in zip(parsed, said_by, starts, lines, strict=True):
        same = bool(groups) and line.code == groups[-1][0].code and said == from_server[-1]
        # Its next line of the same code continues it, past a blank line or a line a
        # mail client wrapped (review rev208 H2: Gmail's reply pasted with blank lines
        # lost its words); an uncoded line only where nothing ends the reply before it
        # (rev210 L3: the paster's own words after a blank line were the reply's).
        if (bool(going_on) and going_on[-1] and same and line.code is not None) or (
            groups
            and not start
            and (
                line.code is None
                or (same and (groups[-1][-1].code is not None or written[:1].isspace()))
            )
        ):
            groups[-1].append(line)
            code = groups[-1][0].code
            if line.code is not None:
                going_on[-1] = _goes_on(line)
            elif going_on[-1] and code is not None:
                going_on[-1] = _final_line(code, line.text) is None
        else:
            groups.append([line])
            from_server.append(said)
            going_on.append(_goes_on(line))
    return groups, from_server


def _goes_on(line: _Line) -> bool:
    """Whether a coded line leaves its multi-line reply going on (see :func:`_grouped`)."""
    return line.code is not None and line.more and _final_line(line.code, line.text) is None


def _final_line(code: str, text: str) -> re.Match[str] | None:
    """A multi-line reply's final line ("550 ...") unfolded into ``text``."""
    return re.search(rf"(?<!\S){code}(?: |\Z)", text)


def _transcript_reply(
    groups: list[list[_Line]], from_server: list[bool], refusals: list[list[_Line]]
) -> list[_Line] | None:
    """The reply of a session transcript (None where no line is the server's): see
    :func:`parse_reply`."""
    server_said = [g for g, by_server in zip(groups, from_server, strict=True) if by_server]
    if not server_said:
        return None
    causes = [
        g
        for g in server_said
        if g in refusals and g[0].code != "503" and not _FOLLOWS_ON.search(g[0].text)
    ]
    # The first permanent one: a recipient refused for good after another deferred is
    # the bounce's reason (review rev180 F6), else the first; where all follow on from
    # another (a pipelining 503 and "no valid recipients"), the MTA's own refusal line
    # (a partial paste: review rev185 F4), else the first of them (rev184 F5).
    own = [g for g in refusals if g not in server_said and g[0].code != "503"]
    return (
        next((g for g in causes if (g[0].code or "")[:1] == "5"), None)
        or next(iter(causes), None)
        or (own[-1] if own else None)
        or next((g for g in server_said if g in refusals), None)
    )


def _first_line(group: list[_Line]) -> str:
    """The reply's first line, with the lines folded from it (a bounce wraps a long
    reply wherever it likes: review rev137 F2) up to the next line with a code."""
    if not group:
        return ""
    parts = [group[0].text]
    for line in group[1:]:
        if line.code is not None:
            break
        parts.append(line.text)
    return " ".join(part for part in parts if part)


#: A reply that says itself it is temporary: it keeps the note where its category has
#: none ("454 4.7.0 Temporary authentication failure": review rev182 F5).
_SAYS_LATER = re.compile(r"\btemporar|\btry (?:again )?later\b", re.IGNORECASE)
#: The note on a temporary (4xx) reply whose category has none of its own.
_TEMPORARY = Text(
    "This reply is temporary (4xx): your mail server keeps the message and retries by"
    " itself for a while (usually up to five days); you get a bounce only if it keeps"
    " failing.",
    "这是临时错误（4xx）：您的邮件服务器会保留邮件并在一段时间内（通常最长五天）自动重试；"  # noqa: RUF001 - Chinese punctuation
    "只有持续失败时才会收到退信。",
)
#: A permanent reply saying the message expired, then "->" and the last reply that
#: deferred it (Microsoft 365's NDR).
_EXPIRED_AFTER = re.compile(r"\bexpired\b[^>]{0,80}?->\s*(?=[45][0-9][0-9][ -])", re.IGNORECASE)
_EXPIRED = Text(
    "The sending server retried the message until it expired; its last attempt was"
    " refused for now:",
    "发送服务器多次重试直至邮件过期；最后一次尝试被临时拒绝：",  # noqa: RUF001 - Chinese punctuation
)
_EXPIRED_ACTION = Text(
    "The message was not delivered, and nothing sends it again by itself. Send it"
    " again; if it fails the same way, contact the recipient's postmaster with this"
    " reply.",
    "邮件未送达，也不会再重试。请重新发送；如仍以同样原因失败，请将此回复发给收件方的邮件管理员。",  # noqa: RUF001 - Chinese punctuation
)
#: Appended to a category's cause when the word model chose the category.
_GUESSED = Text(
    "(Guessed from the reply's words: no rule matched it.)",
    "（根据回复的用词推测：没有规则与之匹配。）",  # noqa: RUF001 - fullwidth brackets are Chinese punctuation
)

#: The placeholders of :func:`plain_text`, as a word between others.
_NAMED = re.compile(r" ?<(?:address|host)>")


def _unnamed(plain: str) -> str:
    """``plain`` without its ``<address>`` and ``<host>`` words."""
    return _space_out(_NAMED.sub("", plain))


def _space_out(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def plain_text(text: str) -> str:
    """``text`` without what names a mailbox or a host (see :attr:`ParsedReply.plain`)."""
    text = _ADDRESS.sub("<address>", text)
    text = _URL_HOST.sub(r"\1<host>", text)
    return _HOST.sub(_host, text)


def _host(m: re.Match[str]) -> str:
    name = m.group(0)
    tld = name.rsplit(".", 1)[-1].lower()
    return "<host>" if len(tld) == 2 or tld in _TLDS else name


#: A line that starts the copy of the original message a bounce quotes after its
#: reply (Gmail, Exchange, Exim, a MIME delivery report's returned message).
#: A dash run is entered at its start only: searched from each of its dashes, a line of
#: 65,000 of them took 150 s (review rev207 F3).
_ORIGINAL_MESSAGE = re.compile(
    r"(?<!-)-+\s*(?:original|forwarded) message\b|original message headers:"
    r"|(?<!-)-+\s*this is a copy of the message"
    r"|(?<!-)-+\s*the original message\b|content-type:\s*(?:message/(?:rfc822|global)\b"
    r"|text/rfc822-headers\b)|content-description:\s*undelivered message\b",
    re.IGNORECASE,
)


def _before_the_original(lines: list[str]) -> list[str]:
    """``lines`` up to the copy of the original message, once a refusal came before it
    (review rev163 F1: a phone number in the quoted signature, "206-555-0100", was taken
    for the reply); all of them when none did (the copy is all there is to read)."""
    if not any(_ORIGINAL_MESSAGE.search(line[:MAX_LINE_CHARS]) for line in lines):
        return lines  # the usual reply: nothing to parse twice (explain --log's lines)
    refused = False
    for index, line in enumerate(lines):
        if refused and _ORIGINAL_MESSAGE.match(line[:MAX_LINE_CHARS].strip()):
            return lines[:index]
        if not refused:
            code = _parse_line(line[:MAX_LINE_CHARS]).code
            refused = code is not None and code[:1] in ("4", "5")
    return lines


def _parse_line(line: str) -> _Line:
    line = _SPACE.sub(" ", unicodedata.normalize("NFKC", line)).strip()
    start = _LEAD.match(line)
    pos = start.end() if start else 0
    m = _REPLY.match(line, pos)
    if m is None:
        marker = next(
            (
                found
                for found in _EMBEDDED_REPLY.finditer(line, 0, _EMBED_WINDOW)
                if not _in_url(line, found.start())
            ),
            None,
        )
        if marker is not None:
            m = _REPLY.match(line, marker.end())
    if (
        m is not None
        and m.group("sep") == "-"
        and m.group("xcode") is None
        and _PHONE_REST.match(line, m.end())
    ):
        # "425-555-0199", "Phone: 555-0142": a telephone number in a signature or a
        # forwarder's note, not a reply (review rev207 F1: it outranked the bounce).
        # Joined by dashes only: "550 550 5.1.1", "554 192.0.2.1 is listed" are replies
        # (review rev208 H1).
        m = None
    if m is not None:
        more = m.group("sep") == "-"
        return _Line(m.group("code"), m.group("xcode"), line[m.end() :].strip(), more)
    bare = _BARE_XCODE.match(line, pos)
    if bare is not None:
        return _Line(None, bare.group("xcode"), line[bare.end() :].strip())
    # A continuation such as "    (in reply to RCPT TO command)": keep its brackets.
    return _Line(None, None, line.lstrip("> ").strip())


def _in_url(line: str, pos: int) -> bool:
    """Whether ``pos`` is inside a URL: Mimecast's links end in "DOC-1369#550", a
    query in "?code=550"; that number is an anchor, not the reply's code."""
    return "://" in line[line.rfind(" ", 0, pos) + 1 : pos]


def _words(text: str) -> str:
    """Comparison key for our own texts: lower-case words, punctuation dropped."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).lower()))


# --- loading -------------------------------------------------------------------------


def load_knowledge(
    path: Path | str,
    *,
    replies: Path | str | None = None,
    words: WordModel | Path | str | None = None,
) -> Knowledge:
    """Load and validate ``rules/explain.toml`` and our reply table.

    ``replies`` defaults to ``replies.toml`` next to ``path``. ``words`` is the word
    model or its file (read when first needed, :meth:`Knowledge.words_model`); None:
    the codes alone answer where no rule matched. Every problem raises
    :class:`ConfigError` naming the file and the rule, category or entry.
    """
    return Knowledge(**_parts(path, replies=replies, words=words))


def _parts(
    path: Path | str,
    *,
    replies: Path | str | None = None,
    words: WordModel | Path | str | None = None,
) -> dict[str, Any]:
    """The arguments of :class:`Knowledge` read from the files (see load_knowledge)."""
    file = Path(path)
    raw = read_toml(file)

    unknown = sorted(set(raw) - {"category", "rule", "ours", "fallback", "family", "keywords"})
    if unknown:
        raise ConfigError(file, unknown[0], "unknown key")
    categories = _categories(file, raw.get("category"))
    rules = _rules(file, raw.get("rule"), categories)
    fallback = _fallbacks(file, raw.get("fallback"), categories)
    families = _families(file, raw.get("family", {}))
    keywords = tuple(
        (
            _category_ref(file, f"keywords.{name}", name, categories),
            _regex(file, f"keywords.{name}", words),
        )
        for name, words in toml_table(file, "keywords", raw.get("keywords", {})).items()
    )
    table_file = Path(replies) if replies is not None else file.parent / "replies.toml"
    rows = read_rows(table_file)
    ours = _ours(file, raw.get("ours"), categories, rows)
    return {
        "categories": categories,
        "rules": rules,
        "ours": ours,
        "fallback": fallback,
        "families": families,
        "keywords": keywords,
        "words": Path(words) if isinstance(words, str) else words,
    }


def train_words(
    cases: Iterable[tuple[str, str]],
    *,
    alpha: float = explain_words.ALPHA,
    threshold: float = explain_words.THRESHOLD,
    keywords_threshold: float = explain_words.KEYWORDS_THRESHOLD,
) -> WordModel:
    """The word model of labelled (reply line, category) pairs, parsed as
    :meth:`Knowledge.explain` parses them; only the replies it may be asked about (4xx,
    5xx, no code) count."""
    examples = []
    for line, category in cases:
        reply = parse_reply(clean_input(line))
        if reply.klass in ("4", "5", ""):
            examples.append(
                (explain_words.features(reply.code, reply.xcode, reply.plain), category)
            )
    return explain_words.train(
        examples, alpha=alpha, threshold=threshold, keywords_threshold=keywords_threshold
    )


def _cached_words(path: Path, categories: Mapping[str, Category]) -> WordModel:
    """The word model of ``path``, from the knowledge cache when its entry was made from
    the same files and code (reading its 7,000 TOML keys took a third of the start time
    of a reply that reaches it); else read, validated and cached."""
    rules_dir = path.parent
    files = (rules_dir / "explain.toml", rules_dir / "replies.toml", path)
    return _through_cache(
        _cache_name(rules_dir, "words"),
        _cache_key(rules_dir, files, True),
        WordModel,
        lambda: explain_words.load_words(path, categories),
    )


@functools.cache
def _cached(rules_dir: Path) -> Knowledge:
    # The word model is optional in a rules directory of the user's (``explain
    # --rules-dir`` written before it existed); the shipped one has it
    # (tests/test_explain_words.py).
    words = rules_dir / explain_words.FILE_NAME
    files = (rules_dir / "explain.toml", rules_dir / "replies.toml")

    def build() -> dict[str, Any]:
        parts = _parts(files[0], replies=files[1], words=words if words.exists() else None)
        parts["atoms"] = rule_atoms(parts["rules"])
        return parts

    key = _cache_key(rules_dir, files, words.exists())
    return Knowledge(**_through_cache(_cache_name(rules_dir, "rules"), key, dict, build))


_E = TypeVar("_E")


def _through_cache(
    name: str, key: tuple[Any, ...] | None, kind: type[_E], build: Callable[[], _E]
) -> _E:
    """The cache entry ``name`` made under ``key`` when it holds a ``kind``; else
    ``build()``, written there (no key: not cached)."""
    found = _read_cache(name, key) if key is not None else None
    if isinstance(found, kind):
        return found
    entry = build()
    if key is not None:
        _write_cache(name, key, entry)
    return entry


# --- the knowledge cache -------------------------------------------------------------
# Reading the two TOML files, validating them and finding the rules' literal atoms take
# longer than the rest of ``explain "LINE"`` (bench/README.md, explain_log.py): the
# result is kept in the user's cache directory, its patterns as sources
# (:class:`_Deferred`), under a key of everything it was made from. Whatever goes wrong
# with the cache, the files are read as without it.
#
# Unpickling runs what the file names, so a cache entry is trusted only as far as the
# directory it is in: ``smtpguard/`` must be a real directory (not a symlink) of this
# user's that nobody else may write, held open while the entry is read or replaced
# (no one can swap it for another between the check and the use); the entry must be a
# regular file of this user's, opened without following a symlink or waiting on a
# FIFO; and the unpickler builds only the classes an entry holds (_cache_classes).

#: The modules whose code makes what is cached (the TOML readers and validators, the
#: reply table's loader, the pattern checks, the dataclasses): an edited checkout or an
#: upgrade that kept smtpguard's version number must not be served the old result.
_CODE_MODULES: tuple[str, ...] = (
    "smtpguard.explain",
    "smtpguard.explain_words",
    "smtpguard.datafiles",
    "smtpguard.patterns",
    "smtpguard.replies",
)

_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _FILE_FLAGS
#: O_NONBLOCK: opening a FIFO planted in place of the entry returns at once (and is
#: then refused as not a regular file) instead of waiting for a writer.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | _FILE_FLAGS
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FILE_FLAGS


def _code_files() -> tuple[str, ...]:
    """The source files of :data:`_CODE_MODULES` (all imported by this module)."""
    return tuple(getattr(sys.modules[name], "__file__", None) or "" for name in _CODE_MODULES)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "smtpguard")


def _cache_name(rules_dir: Path, part: Literal["rules", "words"]) -> str:
    """The shipped rules' entries, and one for whichever ``--rules-dir`` came last: a
    test suite's or a rule writer's many directories never fill the cache directory.
    The word model has an entry of its own: most replies never need it."""
    shipped = rules_dir == default_rules_dir().resolve()
    base = "explain" if part == "rules" else "explain-words"
    return f"{base}.pickle" if shipped else f"{base}-rules-dir.pickle"


def _cache_key(rules_dir: Path, files: tuple[Path, ...], has_words: bool) -> tuple[Any, ...] | None:
    """What a cache entry must have been made from to be used: the rule files' and the
    code's (:data:`_CODE_MODULES`) paths, sizes, modification and change times and
    inodes (an edit changes the change time, which no tool sets back), smtpguard's and
    Python's versions. None when a file cannot be read (loading then names it; code
    not in files, as from a zip archive, is not cached)."""
    try:
        stats = tuple(
            (os.fsencode(file), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
            for file in (*map(str, files), *_code_files())
            for st in (os.stat(file),)
        )
    except (OSError, ValueError):
        return None
    return (__version__, sys.version, os.fsencode(rules_dir), has_words, stats)


def _open_cache_dir(*, create: bool) -> int | None:
    """A descriptor of the cache directory when it is one only this user may change;
    else None (the cache is not used). ``create``: make it first when missing."""
    path = _cache_dir()
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # One that is there already (whatever made it) is checked below alike.
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
        except OSError:
            return None
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return None  # missing, a symlink (ELOOP) or no directory
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022:
        return fd
    os.close(fd)
    return None


@functools.cache
def _cache_classes() -> dict[tuple[str, str], Any]:
    """What a cache entry is made of, by the (module, name) a pickle names it with: the
    only callables the unpickler hands out (any other, such as os.system, is refused).
    The rest of an entry is str, bool, int, None, tuple, list and dict, which pickle
    builds without naming them."""
    made_of = (Text, Category, Rule, Fallback, Ours, _deferred, type(Path()), WordModel)
    return {(obj.__module__, obj.__qualname__): obj for obj in made_of}


class _CacheUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _cache_classes()[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not in a cache entry") from None


def _read_cache(name: str, key: tuple[Any, ...]) -> object:
    """The entry ``name`` holds when it was made under ``key``; else None."""
    dir_fd = _open_cache_dir(create=False)
    if dir_fd is None:
        return None
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return None
            found = _CacheUnpickler(f).load()
    except Exception:  # noqa: BLE001 - a cache that cannot be read is rebuilt
        return None
    finally:
        os.close(dir_fd)
    if not isinstance(found, tuple) or len(found) != 2 or found[0] != key:
        return None
    return found[1]


def _write_cache(name: str, key: tuple[Any, ...], entry: object) -> None:
    try:
        data = pickle.dumps((key, entry), protocol=pickle.HIGHEST_PROTOCOL)
    except pickle.PicklingError:
        return
    dir_fd = _open_cache_dir(create=True)
    if dir_fd is None:
        # A read-only home, a directory others may write: explain works without it.
        return
    tmp = f".explain-{os.urandom(8).hex()}"
    try:
        fd = os.open(tmp, _WRITE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            with open(fd, "wb") as f:
                f.write(data)
            # Written whole, then renamed: a concurrent run reads all of it or none.
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    except OSError:
        return  # a full disk
    finally:
        os.close(dir_fd)


# --- literal atoms -------------------------------------------------------------------
# ``explain "LINE"`` tries the rules one by one (UNFILTERED_REPLIES), and building RE2's
# automaton of every rule it tries was most of its time. A rule whose text pattern needs
# one of a few literal strings ("user unknown", "mailbox") cannot match a text that
# holds none of them, so it is skipped unbuilt. The atoms are a necessary condition
# only: where one cannot be proved, there are none and the rule is always tried
# (tests/test_explain.py checks every rule match of the corpus against them).

#: Per rule, in file order: the case-folded strings one of which any match contains,
#: or None (always tried).
Atoms = tuple[tuple[str, ...] | None, ...]


def rule_atoms(rules: tuple[Rule, ...]) -> Atoms:
    """The literal atoms of every rule's text pattern (see above)."""
    # Python's own parser, used only where it reads a pattern as RE2 does: what RE2
    # alone has (\pL, \x{..}, \z, \Q..\E) is an error here, and a POSIX class is
    # refused before (Python would read "[[:alpha:]]" as "[[:alph]" and a "]").
    parser: Any = importlib.import_module("re._parser")
    out: list[tuple[str, ...] | None] = []
    for rule in rules:
        source = rule.text.source
        found: set[str] | None = None
        if "[:" not in source:
            try:
                found = _atoms_of(list(parser.parse(source)), parser)
            except Exception:  # noqa: BLE001 - any syntax Python reads otherwise: no atoms
                found = None
        out.append(None if found is None else tuple(sorted(found)))
    return tuple(out)


def _caseless(text: str) -> bool:
    """Whether RE2's case folding can only match ``text`` as case-folded text holds it:
    ASCII, or characters without case (CJK)."""
    return text.isascii() or all(c.lower() == c.upper() == c.casefold() == c for c in text)


def _atoms_of(items: list[tuple[Any, Any]], parser: Any) -> set[str] | None:
    """Atoms of a sequence: every element must match, so any element's atoms will do;
    the one whose shortest atom is longest is the most selective."""
    choices: list[set[str]] = []
    run: list[str] = []

    def flush() -> None:
        text = "".join(run)
        if text and _caseless(text):
            choices.append({text.casefold()})
        run.clear()

    for op, av in items:
        if op is parser.LITERAL:
            run.append(chr(av))
            continue
        flush()
        found = _atoms_of_node(op, av, parser)
        if found is not None:
            choices.append(found)
    flush()
    return max(choices, key=lambda atoms: min(map(len, atoms)), default=None)


def _atoms_of_node(op: Any, av: Any, parser: Any) -> set[str] | None:
    if op is parser.SUBPATTERN:
        return _atoms_of(list(av[-1]), parser)
    if op is parser.BRANCH:
        # Any branch may match: one of each branch's atoms; a branch without any
        # leaves the whole alternation without.
        out: set[str] = set()
        for branch in av[1]:
            found = _atoms_of(list(branch), parser)
            if found is None:
                return None
            out |= found
        return out
    if op in (parser.MAX_REPEAT, parser.MIN_REPEAT) and av[0] >= 1:
        return _atoms_of(list(av[2]), parser)
    return None


def knowledge(rules_dir: Path | None = None) -> Knowledge:
    """The knowledge of ``rules_dir`` (default: the shipped rules), loaded once per
    process and directory: a log of a million bounces compiles the rules once."""
    return _cached(Path(rules_dir if rules_dir is not None else default_rules_dir()).resolve())


def _meanings(file: Path, key: str, value: Any) -> tuple[tuple[Pattern, Text], ...]:
    """``[rule.meaning."MI:SFQ"]`` tables: a code (matched as a whole word) and its text."""
    out = []
    for token, text in toml_table(file, key, value).items():
        pattern = _regex(file, f"{key}.{token}", rf"(?:^|\W){re.escape(token)}(?:\W|$)")
        out.append((pattern, _text(file, f"{key}.{token}", text)))
    return tuple(out)


def _bool(file: Path, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(file, key, "expected true or false")
    return value


def _fix(file: Path, key: str, value: Any) -> str:
    name = _string(file, key, value)
    if name not in FIXES:
        raise ConfigError(file, key, f"unknown fix {name!r} (one of {', '.join(FIXES)})")
    return name


def _families(file: Path, raw: Any) -> tuple[tuple[str, Pattern], ...]:
    data = toml_table(file, "family", raw)
    out: list[tuple[str, Pattern]] = []
    for name, value in data.items():
        key = f"family.{name}"
        if not _SOURCE.match(name) or name in GENERIC_SOURCES:
            raise ConfigError(file, key, f"bad family name {name!r}")
        entry = toml_table(file, key, value)
        check_keys(file, key, entry, {"text"})
        out.append((name, _regex(file, f"{key}.text", entry.get("text"))))
    return tuple(out)


def _string(file: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(file, key, "expected a non-empty string")
    return value


def _optional_text(file: Path, key: str, value: Any) -> Text | None:
    return None if value is None else _text(file, key, value)


def _text(file: Path, key: str, value: Any) -> Text:
    if value is None:
        raise ConfigError(file, key, "missing (needs en and zh)")
    data = toml_table(file, key, value)
    check_keys(file, key, data, set(LANGUAGES))
    for lang in LANGUAGES:
        if lang not in data:
            raise ConfigError(file, f"{key}.{lang}", "missing")
    en = _string(file, f"{key}.en", data["en"])
    zh = _string(file, f"{key}.zh", data["zh"])
    return Text(en, zh)


def _category_ref(file: Path, key: str, value: Any, categories: Mapping[str, Category]) -> str:
    name = _string(file, key, value)
    if name not in categories:
        raise ConfigError(file, key, f"unknown category {name!r}")
    return name


def _categories(file: Path, raw: Any) -> dict[str, Category]:
    data = toml_table(file, "category", raw)
    out: dict[str, Category] = {}
    for cid, value in data.items():
        key = f"category.{cid}"
        if not _ID.match(cid):
            raise ConfigError(file, key, "bad category id")
        entry = toml_table(file, key, value)
        check_keys(
            file,
            key,
            entry,
            {
                "title",
                "cause",
                "action",
                "fix",
                "temporary_fix",
                "temporary_note",
                "permanent_action",
                "retry_helps",
            },
        )
        temporary_fix = entry.get("temporary_fix")
        permanent_action = _optional_text(
            file, f"{key}.permanent_action", entry.get("permanent_action")
        )
        out[cid] = Category(
            cid,
            title=_text(file, f"{key}.title", entry.get("title")),
            cause=_text(file, f"{key}.cause", entry.get("cause")),
            action=_text(file, f"{key}.action", entry.get("action")),
            fix=_fix(file, f"{key}.fix", entry.get("fix")),
            temporary_fix=None
            if temporary_fix is None
            else _fix(file, f"{key}.temporary_fix", temporary_fix),
            temporary_note=_optional_text(
                file, f"{key}.temporary_note", entry.get("temporary_note")
            ),
            permanent_action=permanent_action,
            retry_helps=_bool(file, f"{key}.retry_helps", entry.get("retry_helps", True)),
        )
    if "unknown" not in out:
        raise ConfigError(file, "category.unknown", "missing (needed by the fallback)")
    return out


def _rules(file: Path, raw: Any, categories: Mapping[str, Category]) -> tuple[Rule, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(file, "rule", "expected an array of tables ([[rule]])")
    seen: set[str] = set()
    out: list[Rule] = []
    allowed = {"id", "category", "code", "xcode", "text", "cause", "action", "source", "fix", "raw"}
    allowed |= {"meaning", "code_required", "weak", "retry_helps"}
    for index, value in enumerate(raw):
        entry = toml_table(file, f"rule[{index}]", value)
        rid = entry.get("id")
        if not isinstance(rid, str) or not _ID.match(rid):
            raise ConfigError(file, f"rule[{index}].id", "missing or bad rule id")
        key = f"rule.{rid}"
        if rid in seen:
            raise ConfigError(file, key, "duplicate rule id")
        seen.add(rid)
        check_keys(file, key, entry, allowed)
        source = _string(file, f"{key}.source", entry.get("source"))
        if not _SOURCE.match(source):
            raise ConfigError(file, f"{key}.source", f"bad source {source!r}")
        out.append(
            Rule(
                id=rid,
                category=_category_ref(file, f"{key}.category", entry.get("category"), categories),
                code=_code_pattern(file, f"{key}.code", entry.get("code")),
                xcode=_optional_regex(file, f"{key}.xcode", entry.get("xcode")),
                text=_regex(file, f"{key}.text", entry.get("text")),
                cause=_optional_text(file, f"{key}.cause", entry.get("cause")),
                action=_optional_text(file, f"{key}.action", entry.get("action")),
                source=source,
                fix=None if entry.get("fix") is None else _fix(file, f"{key}.fix", entry["fix"]),
                raw=_bool(file, f"{key}.raw", entry.get("raw", False)),
                meanings=_meanings(file, f"{key}.meaning", entry.get("meaning", {})),
                code_required=_bool(
                    file, f"{key}.code_required", entry.get("code_required", False)
                ),
                weak=_bool(file, f"{key}.weak", entry.get("weak", False)),
                retry_helps=_bool(file, f"{key}.retry_helps", entry.get("retry_helps", True)),
            )
        )
    return tuple(out)


def _code_pattern(file: Path, key: str, value: Any) -> Pattern | None:
    if value is None:
        return None
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(file, key, "expected a regex or a non-empty list of regexes")
        return _regex(file, key, "|".join(f"(?:{v})" for v in value))
    return _regex(file, key, value)


def _optional_regex(file: Path, key: str, value: Any) -> Pattern | None:
    return None if value is None else _regex(file, key, value)


class _Deferred(Pattern):
    """A rule pattern that RE2 builds the first time it is searched. Loading the files
    builds each one once to validate it (:func:`_regex`); one read back from the cache
    was validated when the cache was written, and ``explain "LINE"`` searches only the
    rules before the first that matches, not all 528 patterns."""

    __slots__ = ()

    def __init__(self, source: str, *, ignore_case: bool = False) -> None:
        self.source = source
        self.ignore_case = ignore_case

    def __getattr__(self, name: str) -> Any:
        # Reached only for an attribute not set yet: the compiled expression.
        if name != "_regexp":
            raise AttributeError(name)
        Pattern.__init__(self, self.source, ignore_case=self.ignore_case)
        return getattr(self, name)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its source: RE2's compiled form cannot be, and is rebuilt on use.
        return (_deferred, (self.source, self.ignore_case))


def _deferred(source: str, ignore_case: bool) -> _Deferred:
    return _Deferred(source, ignore_case=ignore_case)


def _regex(file: Path, key: str, value: Any) -> Pattern:
    pattern = _string(file, key, value)
    try:
        deferred = _Deferred(pattern, ignore_case=True)
        Pattern.__init__(deferred, pattern, ignore_case=True)
        return deferred
    except PatternError as exc:
        raise ConfigError(
            file, key, f"not a valid RE2 pattern {pattern!r}: {exc} (docs/patterns.md)"
        ) from None


def _fallbacks(file: Path, raw: Any, categories: Mapping[str, Category]) -> dict[str, Fallback]:
    data = toml_table(file, "fallback", raw)
    check_keys(file, "fallback", data, {"none", "class", "code", "subject", "detail"})
    out: dict[str, Fallback] = {}
    checks = {
        "class": re.compile(r"[2-5]\Z"),
        "code": _CODE_KEY,
        "subject": re.compile(r"[0-7]\Z"),
        "detail": _DETAIL_KEY,
    }
    out["none"] = _fallback(file, "fallback.none", data.get("none"), categories, True)
    for group, check in checks.items():
        entries = toml_table(file, f"fallback.{group}", data.get(group, {}))
        for name, value in entries.items():
            key = f"fallback.{group}.{name}"
            if not check.match(name):
                raise ConfigError(file, key, f"bad {group} key {name!r}")
            out[f"{group}.{name}"] = _fallback(file, key, value, categories, group == "class")
    for klass in "2345":
        if f"class.{klass}" not in out:
            raise ConfigError(file, f"fallback.class.{klass}", "missing")
    return out


def _fallback(
    file: Path, key: str, value: Any, categories: Mapping[str, Category], needs_action: bool
) -> Fallback:
    entry = toml_table(file, key, value)
    check_keys(file, key, entry, {"category", "temporary_category", "cause", "action", "weak"})
    temporary = entry.get("temporary_category")
    weak = entry.get("weak", False)
    if not isinstance(weak, bool):
        raise ConfigError(file, f"{key}.weak", "expected true or false")
    action_key = f"{key}.action"
    action = (
        _text(file, action_key, entry.get("action"))
        if needs_action
        else _optional_text(file, action_key, entry.get("action"))
    )
    return Fallback(
        key=key,
        category=_category_ref(file, f"{key}.category", entry.get("category"), categories),
        temporary_category=None
        if temporary is None
        else _category_ref(file, f"{key}.temporary_category", temporary, categories),
        cause=_text(file, f"{key}.cause", entry.get("cause")),
        action=action,
        weak=weak,
    )


def _ours(
    file: Path, raw: Any, categories: Mapping[str, Category], rows: Mapping[str, Any]
) -> dict[str, Ours]:
    data = toml_table(file, "ours", raw)
    out: dict[str, Ours] = {}
    for reply_id, value in data.items():
        key = f"ours.{reply_id}"
        if reply_id not in ALL_IDS:
            raise ConfigError(file, key, "unknown reply id")
        entry = toml_table(file, key, value)
        check_keys(file, key, entry, {"category", "cause"})
        row = rows[reply_id]
        out[reply_id] = Ours(
            reply_id=reply_id,
            code=row.code,
            xcode=row.xcode,
            category=_category_ref(file, f"{key}.category", entry.get("category"), categories),
            cause=_text(file, f"{key}.cause", entry.get("cause")),
            # The table writes a '%' as '%%' (a milter reply is a format string).
            hint=Text(row.hint["en"].replace("%%", "%"), row.hint["zh"].replace("%%", "%")),
            texts=(
                row.text["en"],
                row.text["zh"],
                f"{row.text['en']} ({row.text['zh']})",
                f"{row.text['zh']} ({row.text['en']})",  # languages = ["zh", "en"]
            ),
        )
    missing = sorted(ALL_IDS - out.keys())
    if missing:
        raise ConfigError(file, f"ours.{missing[0]}", "reply id missing")
    return out


# --- output --------------------------------------------------------------------------

_LABELS: dict[str, tuple[str, str, str, str, str]] = {
    "en": ("Reply:      ", "Category:   ", "Cause:      ", "What to do: ", "Matched:    "),
    # Full-width colons: the Chinese labels use Chinese punctuation.
    "zh": ("回复：      ", "类别：      ", "原因：      ", "处理建议：  ", "匹配：      "),  # noqa: RUF001 - fullwidth colons are the Chinese labels
}


def render_text(exp: Explanation, lang: str) -> str:
    reply, category, cause, action, matched = _LABELS[lang]
    rule = f"{exp.rule} ({exp.source})"
    if exp.reply_id:
        rule += (
            f", our reply table id {exp.reply_id}"
            if lang == "en"
            else f"，本系统回复表 id {exp.reply_id}"  # noqa: RUF001 - Chinese comma
        )
    return "\n".join(
        [
            f"{reply}{exp.reply or '-'}",
            f"{category}{exp.title(lang)} [{exp.category}]",
            f"{cause}{exp.cause(lang)}",
            f"{action}{exp.action(lang)}",
            f"{matched}{rule}",
        ]
    )


def render_json(exp: Explanation, lang: str, *, ensure_ascii: bool = False) -> str:
    return json.dumps(exp.to_dict(lang), ensure_ascii=ensure_ascii, indent=2)


def json_ascii(stream: TextIO) -> bool:
    """Whether JSON written to ``stream`` must escape what is not ASCII: its encoding is
    not UTF-8 (``PYTHONIOENCODING=ascii``, a C locale), where the backslash escapes the
    command falls back to for unprintable text would not be JSON. A stream of str with
    no encoding (StringIO) takes any text."""
    encoding = getattr(stream, "encoding", None)
    if not encoding:
        return False
    try:
        return codecs.lookup(encoding).name != "utf-8"
    except LookupError:
        return True


def explain_main(
    argv_line: str,
    *,
    lang: str,
    as_json: bool,
    rules_dir: Path | None = None,
    ensure_ascii: bool = False,
) -> str:
    """The text ``smtpguard explain "REPLY LINE" [--lang en|zh] [--json]`` prints;
    ``ensure_ascii``: JSON with non-ASCII escaped (see :func:`json_ascii`)."""
    if lang not in LANGUAGES:
        raise ValueError(f"lang must be one of {', '.join(LANGUAGES)}; got {lang!r}")
    exp = knowledge(rules_dir).explain(argv_line)
    return render_json(exp, lang, ensure_ascii=ensure_ascii) if as_json else render_text(exp, lang)
