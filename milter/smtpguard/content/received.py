"""Parse the value of a ``Received:`` trace header field.

Grammar background: RFC 5321 §4.4 (``Stamp``: ``From-domain By-domain Opt-info [CFWS] ";"
FWS date-time``, with ``TCP-info`` in the from-clause comment, ``Via``/``With``/``ID``/``For``
clauses) and RFC 5322 §3.6.7 (``received = "Received:" *received-token ";" date-time``),
comments and quoted-pairs per RFC 5322 §3.2.2, folding per RFC 5322 §2.2.3, address
literals per RFC 5321 §4.1.3.

Real MTAs do not follow the grammar to the letter, so this is a pragmatic parser. The input
is the field *value* as a milter receives it.

What is accepted (a *valid trace field*):

* At most :data:`MAX_LENGTH` characters and no NUL character.
* Folding (CRLF or bare LF followed by space or tab) is removed; any other CR or LF counts
  as a space.
* The value is split into words, comments and ``;``. A comment is a balanced, possibly
  nested ``(...)`` in which a backslash escapes the next character. A quoted string
  ``"..."`` (backslash escapes) is part of the word around it. Brackets are ordinary word
  characters, so ``[192.0.2.1]`` and ``<a@example.org>`` are single words.
* At most one ``;`` outside comments and quoted strings that separates the date, and
  after it at least one word (the date-time; it is not validated further). A ``;``
  followed by a keyword is no such separator, only punctuation between clauses
  (SquirrelMail's ``from HOST (SquirrelMail authenticated user U); by HOST with HTTP;
  DATE``; review rev93 F1). ``date`` is the unfolded text
  after the ``;`` with surrounding blanks (space, tab) stripped, comments such as ``(UTC)``
  included. Without a ``;`` the field has the obsolete form RFC 5322 §4.5.7 still
  requires readers to honour (``obs-received = "Received" *WSP ":" *received-token
  CRLF``: no date, as SendGrid's relays write it), and ``date`` is ``None``.
* Before the ``;``, once comments are removed, only clauses: a keyword ``from``, ``by``,
  ``via``, ``with``, ``id`` or ``for`` (any case, any order) followed by words that are
  not keywords (``with Microsoft SMTP Server`` is one clause), or by none: QQ Mail
  writes ``with SMTP id ; DATE`` on every webmail message, China Telecom's 189.cn
  ``from  ([192.0.2.1]) by ...`` (review rev93 F1: both refused as forged, 553);
  RFC 5322 §3.6.7 makes any received-tokens a trace field. A keyword seen
  before is a word of the clause it stands in (Mimecast's ``with ESMTP with STARTTLS``:
  received-tokens are any words), except ``from``, which starts another from clause
  wherever it stands (IBM's ``with IBM ESMTP SMTP Gateway: ... for <x> from <y>``);
  the first clause of each keyword is the one read, and every from clause is read
  for a claim of our hosts (``other_from_names``, ``from_ips``).
* Or, before the ``;``, nothing but one or more comments, as in qmail's
  ``(qmail 1234 invoked by uid 89); 1 Jan 2024 10:00:00 -0000``.

Everything else raises :class:`ReceivedParseError`: more than one ``;`` before a date,
an empty date after a ``;``, a leading word that is not a keyword, keywords and
nothing else (``from``), an unbalanced ``(`` or ``)``, an unterminated quoted string or
a trailing backslash in a comment, a NUL, an over-long value, nothing at all.

What is extracted:

* ``from_name``: the first word after ``from`` as written (a HELO name, or for Exim the
  verified host name, or an address literal such as ``[192.0.2.1]``); None when the
  clause has only a comment.
* ``from_ips``: addresses in the from clause, de-duplicated in order of appearance. Each
  word of the clause and each white-space separated token of each from-clause comment
  (outside nested comments) is tried as ``[a.b.c.d]``, ``[IPv6:...]``, a bare address
  (Exchange and qmail write ``(192.0.2.1)``), each optionally with a ``user@`` prefix
  (ident, qmail) and a ``:port`` suffix. ``helo=[...]`` tokens are not TCP information
  and are skipped.
* ``from_rdns``: in the first from-clause comment that has a bracketed address, the token
  right before it (``user@`` removed) unless it contains ``=``: Postfix and Sendmail write
  ``(host.example.com [192.0.2.1])``; Postfix writes ``unknown`` when there is no name and
  that text is returned unchanged, as is a trailing dot.
* ``from_helo``: the name in a from-clause comment's ``helo=NAME`` token, where Exim
  records the client's HELO when it differs from the verified name
  (``from [192.0.2.1] (helo=mx.example.com)``).
* ``by_name``: the first word after ``by`` (None without one).

Only ``str.find``-like scanning and regular expressions with possessive quantifiers
are used, so parsing is linear in the input length.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from smtpguard.address import IPAddress, canonical_domain

__all__ = [
    "MAX_LENGTH",
    "ReceivedInfo",
    "ReceivedParseError",
    "claims_ours",
    "is_our_claim",
    "parse_received",
    "written_by_another",
]

MAX_LENGTH: Final = 8192

_KEYWORDS: Final = frozenset({"from", "by", "via", "with", "id", "for"})

_FOLD: Final = re.compile(r"\r?\n(?=[ \t])")
# After optional blanks: a word (runs of word characters and quoted strings, a
# backslash escaping the next character inside quotes), ";", "(", ")", or the end.
# Possessive quantifiers keep matching linear whatever the input.
_TOKEN: Final = re.compile(
    r'[ \t]*+(?:((?:[^ \t()";]++|"(?:[^"\\]++|\\.)*+")++)|(;)|(\()|(\))|\Z)', re.DOTALL
)
_COMMENT_SPECIAL: Final = re.compile(r"[()\\]")
_DOTTED: Final = re.compile(r"[0-9.]+")
# The shape nearly every MTA writes (see parse_received): words without quotes or
# backslashes, comments without nesting, the date starting with a word.
_W = r'[^ \t();"\\]++'
_SP = r"[ \t]*+"
_COMMON: Final = re.compile(
    rf"{_SP}from[ \t]++({_W}){_SP}\(([^()\"\\]*+)\)"
    rf"{_SP}by[ \t]++({_W})(?:{_SP}\([^()\"\\]*+\))?"
    rf"{_SP}with[ \t]++({_W})[ \t]++id[ \t]++({_W})(?:[ \t]++for[ \t]++({_W}))?"
    rf"{_SP};{_SP}([^ \t;()\"\\][^;()\"\\]*+(?:\([^;()\"\\]*+\)[^;()\"\\]*+)*+)"
)

# Longest text that can still be an address literal ("IPv6:" + 45 + zone id); anything
# longer is rejected before ipaddress sees it.
_IP_TEXT_MAX: Final = 80

_WORD: Final = 0
_COMMENT: Final = 1
_SEMI: Final = 2


@dataclass(frozen=True, slots=True)
class ReceivedInfo:
    """What :func:`parse_received` extracted; absent parts are ``None`` or empty."""

    from_name: str | None
    from_ips: tuple[IPAddress, ...]
    from_rdns: str | None
    by_name: str | None
    date: str | None
    from_helo: str | None = None
    #: Names in the from clauses after the first (a ``from`` that comes again starts
    #: one): their first word, the reverse-DNS name and the ``helo=`` of their comments.
    #: Their addresses are in ``from_ips``. Only :func:`is_our_claim` reads them.
    other_from_names: tuple[str, ...] = ()


class ReceivedParseError(ValueError):
    """The value is not a valid trace field in the sense of the module docstring."""


@dataclass(slots=True)
class _Token:
    kind: int
    # Word text, or the comment's depth-1 text (nested comments replaced by a space).
    text: str
    end: int


@dataclass(slots=True)
class _Clause:
    words: list[str]
    comments: list[str]


def parse_received(value: str, *, fast: bool = True) -> ReceivedInfo:
    """Parse a ``Received:`` field value; raise :class:`ReceivedParseError` if invalid.

    With ``fast``, the common shape MTAs write (``from W (C) by W [(C)] with W id W
    [for W]; DATE``, lower-case keywords, one-word values, no quotes, backslashes or
    nested comments) is read with one regular expression; anything else, and every
    error, goes through the tokenizer. Both give the same result (the tests compare
    them on generated input).
    """
    if len(value) > MAX_LENGTH:
        raise ReceivedParseError(f"longer than {MAX_LENGTH} characters")
    if "\x00" in value:
        raise ReceivedParseError("contains NUL")
    text = _FOLD.sub("", value).replace("\r", " ").replace("\n", " ")
    if fast:
        info = _parse_common(text)
        if info is not None:
            return info
    tokens = _tokenize(text)

    semis = [
        i
        for i, tok in enumerate(tokens)
        if tok.kind == _SEMI
        and not (
            i + 1 < len(tokens)
            and tokens[i + 1].kind == _WORD
            and tokens[i + 1].text.lower() in _KEYWORDS
        )
    ]
    if len(semis) > 1:
        raise ReceivedParseError("more than one ';'")
    date: str | None = None
    semi = len(tokens)
    if semis:
        semi = semis[0]
        if not any(tok.kind == _WORD for tok in tokens[semi + 1 :]):
            raise ReceivedParseError("empty date")
        date = text[tokens[semi].end :].strip(" \t")

    clauses, more_from = _clauses(tokens[:semi])
    from_clause = clauses.get("from")
    by_clause = clauses.get("by")
    from_ips: tuple[IPAddress, ...] = ()
    from_rdns = None
    if from_clause is not None:
        from_ips, from_rdns = _tcp_info(from_clause)
    other_names: list[str] = []
    for clause in more_from:
        ips, rdns = _tcp_info(clause)
        from_ips += tuple(ip for ip in ips if ip not in from_ips)
        helo = _helo(clause)
        first = clause.words[0] if clause.words else None
        other_names += [n for n in (first, rdns, helo) if n is not None]
    return ReceivedInfo(
        from_name=_name(from_clause),
        from_ips=from_ips,
        from_rdns=from_rdns,
        by_name=_name(by_clause),
        date=date,
        from_helo=_helo(from_clause) if from_clause else None,
        other_from_names=tuple(other_names),
    )


def _name(clause: _Clause | None) -> str | None:
    """A clause's first word as the host name it gives; none when that word is a
    keyword seen before ("by from by": a word of the from clause, no name; found by
    the fuzz test)."""
    if clause is None or not clause.words or clause.words[0].lower() in _KEYWORDS:
        return None
    return clause.words[0]


def _parse_common(text: str) -> ReceivedInfo | None:
    m = _COMMON.fullmatch(text)
    if m is None:
        return None
    helo, comment, by_name, with_, id_, for_, date = m.groups()
    if any(w is not None and w.lower() in _KEYWORDS for w in (helo, by_name, with_, id_, for_)):
        return None  # a keyword where a value belongs: the tokenizer says what is wrong
    from_ips, from_rdns, from_helo = _common_from(helo, comment)
    return ReceivedInfo(
        from_name=helo,
        from_ips=from_ips,
        from_rdns=from_rdns,
        by_name=by_name,
        date=date.strip(" \t"),
        from_helo=from_helo,
    )


@lru_cache(maxsize=1024)
def _common_from(helo: str, comment: str) -> tuple[tuple[IPAddress, ...], str | None, str | None]:
    # The MTA's own field names the client the same way in every message it sends
    # (HELO name, then "host [IP]"): the clause is read once per client, not per field.
    clause = _Clause([helo], [comment])
    from_ips, from_rdns = _tcp_info(clause)
    return from_ips, from_rdns, _helo(clause)


def is_our_claim(
    info: ReceivedInfo,
    names: frozenset[str],
    ips: frozenset[IPAddress],
) -> bool:
    """Whether the field is one of our hops: its from clause names one of our hosts or
    addresses, and its by clause names one too, or is missing.

    A header that claims to come from us but arrives from outside is forged. A field
    whose ``by`` is another host is that host's record of what it received, from us
    too, when a mailing list or a forwarder sends our user's message back to our users:
    history, not a claim (review rev93 F2: the list's copy was refused, 553; a forger
    gains nothing from it, and a host's own LAN or loopback hop, a Thunderbird HELO
    ``[192.168.1.10]``, amavis's ``localhost [127.0.0.1]``, is not taken for ours, F6).
    Names compare as :func:`~smtpguard.address.canonical_domain` gives them (case, a
    trailing dot, U-label or A-label, full-width letters do not matter); an IPv4-mapped
    IPv6 address also matches its IPv4 form, since dual-stack MTAs record either.
    """
    return not written_by_another(info, names, ips) and claims_ours(info, names, ips)


def claims_ours(info: ReceivedInfo, names: frozenset[str], ips: frozenset[IPAddress]) -> bool:
    """Whether the from clauses name one of our hosts or addresses (the by clause
    aside: see :func:`is_our_claim`)."""
    ours = _normalized(names)
    for name in (info.from_name, info.from_rdns, info.from_helo, *info.other_from_names):
        if name is not None and _normalize(name) in ours:
            return True
    return any(_is_ours(ip, ips) for ip in info.from_ips)


def written_by_another(
    info: ReceivedInfo, names: frozenset[str], ips: frozenset[IPAddress]
) -> bool:
    """Whether the field's by clause names a host that is not one of ours: what that
    host received, and every field below it, is the message's history before it came
    near us (see :func:`is_our_claim`)."""
    by = info.by_name
    return by is not None and not _names_us(by, _normalized(names), ips)


@lru_cache(maxsize=1024)
def _names_us(word: str, ours: frozenset[str], ips: frozenset[IPAddress]) -> bool:
    # The same few MTAs write the by clauses of most fields: judged once per name.
    """Whether a by clause's word is one of our names or addresses."""
    ip, _ = _parse_ip(word)
    return _is_ours(ip, ips) if ip is not None else _normalize(word) in ours


def _is_ours(ip: IPAddress, ips: frozenset[IPAddress]) -> bool:
    return ip in ips or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped in ips)


def _normalize(name: str) -> str:
    # A forger may spell our name with U-labels or full-width letters: the A-label
    # form is the one name.
    return canonical_domain(name)


@lru_cache(maxsize=16)
def _normalized(names: frozenset[str]) -> frozenset[str]:
    # The caller passes the same configured set for every message; caching keeps the
    # per-header cost at one hash lookup per name.
    return frozenset(_normalize(n) for n in names)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(text)
    match = _TOKEN.match
    while True:
        m = match(text, i)
        if m is None:
            # Only an opening quote whose string never ends is left unmatched.
            raise ReceivedParseError("unterminated quoted string")
        i = m.end()
        word, semi, opening = m.group(1, 2, 3)
        if word is not None:
            tokens.append(_Token(_WORD, word, i))
        elif semi is not None:
            tokens.append(_Token(_SEMI, ";", i))
        elif opening is not None:
            i, inner = _scan_comment(text, i - 1)
            tokens.append(_Token(_COMMENT, inner, i))
        elif m.group(4) is not None:
            raise ReceivedParseError("unbalanced ')'")
        elif i >= n:
            return tokens


def _scan_comment(text: str, i: int) -> tuple[int, str]:
    """Return the index after the comment opening at ``i`` and its depth-1 text."""
    depth = 0
    pieces: list[str] = []
    pos = i
    n = len(text)
    while True:
        m = _COMMENT_SPECIAL.search(text, pos)
        if m is None:
            raise ReceivedParseError("unbalanced '('")
        c = m.group()
        if depth == 1:
            pieces.append(text[pos : m.start()])
        if c == "\\":
            if m.end() >= n:
                raise ReceivedParseError("backslash at end of comment")
            if depth == 1:
                pieces.append(text[m.end()])
            pos = m.end() + 1
        elif c == "(":
            depth += 1
            if depth == 2:
                pieces.append(" ")
            pos = m.end()
        else:
            depth -= 1
            pos = m.end()
            if depth == 0:
                return pos, "".join(pieces)


def _clauses(tokens: list[_Token]) -> tuple[dict[str, _Clause], list[_Clause]]:
    """The first clause of each keyword, and the from clauses after the first."""
    clauses: dict[str, _Clause] = {}
    more_from: list[_Clause] = []
    current: _Clause | None = None
    leading_comments = 0
    for tok in tokens:
        if tok.kind == _COMMENT:
            if current is None:
                leading_comments += 1
            else:
                current.comments.append(tok.text)
            continue
        if tok.kind == _SEMI:
            continue  # between clauses (see parse_received)
        keyword = tok.text.lower()
        if keyword in _KEYWORDS:
            if keyword not in clauses:
                current = _Clause([], [])
                clauses[keyword] = current
                continue
            if keyword == "from":
                # A claim of where the message came from, wherever it stands: its own
                # clause, which the forged-claim test reads too.
                current = _Clause([], [])
                more_from.append(current)
                continue
            # Seen before: a word of the clause it stands in (module docstring).
        if current is None:
            raise ReceivedParseError("does not start with a trace clause")
        current.words.append(tok.text)
    if not clauses and not leading_comments:
        raise ReceivedParseError("nothing before ';'")
    if clauses and not any(c.words or c.comments for c in (*clauses.values(), *more_from)):
        raise ReceivedParseError("no clause has a value")
    return clauses, more_from


def _tcp_info(clause: _Clause) -> tuple[tuple[IPAddress, ...], str | None]:
    found: dict[IPAddress, None] = {}
    for word in clause.words:
        ip, _ = _parse_ip(word)
        if ip is not None:
            found[ip] = None
    rdns: str | None = None
    for comment in clause.comments:
        parts = comment.split()
        for k, part in enumerate(parts):
            ip, bracketed = _parse_ip(part)
            if ip is None:
                continue
            found[ip] = None
            if rdns is None and bracketed and k > 0:
                before = parts[k - 1]
                if "=" not in before:
                    rdns = before.rpartition("@")[2] or None
    return tuple(found), rdns


def _helo(clause: _Clause) -> str | None:
    for comment in clause.comments:
        for part in comment.split():
            if part[:5].lower() == "helo=" and len(part) > 5:
                return part[5:]
    return None


def _parse_ip(token: str) -> tuple[IPAddress | None, bool]:
    """Parse an address token; the flag tells whether it was an ``[...]`` literal."""
    token = token.rpartition("@")[2]
    if token.startswith("["):
        close = token.find("]")
        if close < 0:
            return None, False
        rest = token[close + 1 :]
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None, False
        inner = token[1:close]
        if inner[:5].lower() == "ipv6:":
            inner = inner[5:]
        return _ip(inner), True
    ip = _ip(token)
    if ip is None:
        # "192.0.2.1:25"; a bare IPv6 address cannot carry a port without brackets.
        host, sep, port = token.rpartition(":")
        if sep and port.isdigit() and "." in host and ":" not in host:
            ip = _ip(host)
    return ip, False


def _ip(text: str) -> IPAddress | None:
    if not text or len(text) > _IP_TEXT_MAX:
        return None
    # Most tokens are host names: an IPv4 address is digits and dots, an IPv6 address
    # has a colon; anything else is not worth an exception from ipaddress.
    if ":" not in text and not _DOTTED.fullmatch(text):
        return None
    return _cached_ip(text)


@lru_cache(maxsize=1024)
def _cached_ip(text: str) -> IPAddress | None:
    # The same relays and clients recur in trace fields from message to message.
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
