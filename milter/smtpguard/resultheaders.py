"""Result header fields added at end of message: ``Authentication-Results`` (RFC 8601)
and the anti-spam report (``X-Spam-Status``, ``X-Spam-Report``).

The checks that compute a result record it on the transaction (:func:`record_spf` at
MAIL FROM, :func:`record_iprev` when the reverse DNS is judged); the pipeline reads the
records at end of message. A method that did not run for this transaction (check off,
trusted or logged-in client, exempt) is left out of the field, which RFC 8601 §2.2
allows.

RFC 8601 §5: an ``Authentication-Results`` field that arrives with our own
authserv-id was not written by us (we have not seen the message before) and must be
removed before delivery; :func:`names_us` tells such a field apart.

Values are folded (``\\n\\t``, which libmilter and Postfix write as CRLF TAB) so that no
line exceeds the 78 characters RFC 5322 §2.1.1 recommends, where there is whitespace
to fold at; an unbreakable word stays whole (the 998-octet limit is far above any value
built here).
"""

from __future__ import annotations

import functools
import math
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtpguard.address import canonical_domain

if TYPE_CHECKING:
    from smtpguard.checks.client_host import ReverseDns
    from smtpguard.session import Connection, Transaction

AUTH_RESULTS = "Authentication-Results"
STATUS_FIELD = "X-Spam-Status"
REPORT_FIELD = "X-Spam-Report"
#: RFC 5322 §2.1.1: lines SHOULD be at most 78 characters, excluding the CRLF.
LINE = 78
_SPF = "resultheaders.spf"
_IPREV = "resultheaders.iprev"
#: RFC 8601 §2.2: authserv-id = value (RFC 2045 token or quoted-string); a host name
#: is the usual choice. Leading CFWS (comments) may precede it.
_TOKEN = re.compile(r'("(?:[^"\\]|\\.)*"|[^\s;()"]+)')


@dataclass(frozen=True, slots=True)
class SpfResult:
    #: RFC 7208 §2.6 result: pass, fail, softfail, neutral, none, temperror, permerror.
    result: str
    #: ``smtp.mailfrom`` or, for the null sender, ``smtp.helo`` (RFC 8601 §2.7.2).
    ptype: str
    value: str


@functools.cache
def default_authserv_id() -> str:
    """This host's FQDN, looked up once per process (it may ask DNS)."""
    return socket.getfqdn()


def record_spf(txn: Transaction, result: str, *, helo: bool, value: str) -> None:
    txn.scratch[_SPF] = SpfResult(result, "smtp.helo" if helo else "smtp.mailfrom", value)


def spf_result(txn: Transaction) -> SpfResult | None:
    found: SpfResult | None = txn.scratch.get(_SPF)
    return found


def record_iprev(conn: Connection, rdns: ReverseDns) -> None:
    """RFC 8601 §2.7.3: pass when a PTR name resolves back to the client IP,
    temperror when a lookup failed temporarily and nothing confirmed, permerror when
    no PTR data are published (NXDOMAIN or an empty answer), fail otherwise (no name
    confirmed). Kept for the transaction the check judged: a later one of the session
    that it does not judge (logged in by then, exempt) gets no iprev (review rev201 F2:
    the first transaction's result went into a logged-in one's field)."""
    if rdns.confirmed:
        result = "pass"
    elif rdns.temporary:
        result = "temperror"
    elif rdns.ptr.status.negative:
        result = "permerror"
    else:
        result = "fail"
    if conn.txn is not None:
        conn.txn.scratch[_IPREV] = result


def iprev_result(conn: Connection) -> str | None:
    if conn.txn is None:
        return None
    found: str | None = conn.txn.scratch.get(_IPREV)
    return found


def authserv_id_of(value: str) -> str | None:
    """The authserv-id an ``Authentication-Results`` value starts with, unquoted;
    None when the value has none."""
    token = _TOKEN.match(value, _skip_cfws(value))
    if token is None:
        return None
    found = token.group(1)
    if found.startswith('"'):
        found = re.sub(r"\\(.)", r"\1", found[1:-1])
    return found


def _skip_cfws(text: str) -> int:
    """Where the text starts after white space and comments, which nest and may
    hold quoted pairs (RFC 5322 §3.2.2)."""
    index, depth = 0, 0
    while index < len(text):
        char = text[index]
        if depth and char == "\\":
            index += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif not depth and not char.isspace():
            break
        index += 1
    return index


def names_us(value: str, authserv_id: str) -> bool:
    """Whether an incoming ``Authentication-Results`` value carries our authserv-id,
    compared as domain names are: case, a trailing dot and the spelling of an IDN do
    not count (review rev69 F2: "mx.example.com." was delivered beside ours)."""
    found = authserv_id_of(value)
    return found is not None and canonical_domain(found) == canonical_domain(authserv_id)


class _Glued(str):
    """A word written with no space before it on the same line: a list's next item
    (a fold before it is still allowed)."""

    __slots__ = ()


def fold(name: str, words: Iterable[str]) -> str:
    """``words`` joined by spaces (none before a :class:`_Glued` one), folded before a
    word where the line would pass :data:`LINE` characters; ``name`` is counted on the
    first line (``Name: ``)."""
    return "\n\t".join(_lines(words, len(name) + 1))


def _lines(words: Iterable[str], width: int) -> list[str]:
    """Words filled into lines; ``width`` is what precedes the first word, less the
    space before it. Continuation lines start with a TAB (counted as 1)."""
    lines: list[str] = []
    current = ""
    for word in words:
        space = "" if isinstance(word, _Glued) else " "
        if current and width + len(space) + len(word) > LINE:
            lines.append(current)
            current, width = word, 1 + len(word)
        else:
            current = f"{current}{space}{word}" if current else word
            width += len(space) + len(word)
    lines.append(current)
    return lines


def authentication_results(
    authserv_id: str, conn: Connection, txn: Transaction
) -> tuple[str, str] | None:
    """Our ``Authentication-Results`` field, or None when no method ran. Each
    resinfo starts a line of its own (RFC 8601 §2.2 allows CFWS there)."""
    spf = spf_result(txn)
    iprev = iprev_result(conn)
    return _rendered(
        authserv_id,
        (spf.result, spf.ptype, spf.value) if spf is not None else None,
        (iprev, str(conn.client_ip)) if iprev is not None and conn.client_ip is not None else None,
    )


# The same clients and senders come back: the field is rendered once per distinct set
# of results, not folded again for every message.
@functools.lru_cache(maxsize=1024)
def _rendered(
    authserv_id: str, spf: tuple[str, str, str] | None, iprev: tuple[str, str] | None
) -> tuple[str, str] | None:
    resinfos: list[str] = []
    if spf is not None:
        result, ptype, value = spf
        resinfos.append(f"spf={result} {ptype}={_pvalue(value)}")
    if iprev is not None:
        # An IPv6 address is no RFC 2045 token (":"): quoted, like any such pvalue.
        resinfos.append(f"iprev={iprev[0]} policy.iprev={_pvalue(iprev[1])}")
    if not resinfos:
        return None
    lines = _lines([f"{authserv_id};"], len(AUTH_RESULTS) + 1)
    for index, resinfo in enumerate(resinfos):
        end = ";" if index < len(resinfos) - 1 else ""
        lines += _lines(f"{resinfo}{end}".split(" "), 0)
    return AUTH_RESULTS, "\n\t".join(lines)


def _pvalue(value: str) -> str:
    """RFC 8601 §2.2 pvalue: a domain or local-part@domain as is, else quoted."""
    if value and re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+", value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def spam_headers(
    *,
    spam: bool,
    score: float,
    required: float,
    rules: Sequence[str],
    status_header: str = STATUS_FIELD,
    report_header: str = REPORT_FIELD,
) -> tuple[tuple[str, str], ...]:
    """``X-Spam-Status: Yes, score=7.5 required=6.0 tests=A,B`` (SpamAssassin's
    layout, which filters and mail clients already parse) and, when a rule matched,
    ``X-Spam-Report`` with one matched rule per line."""
    return _spam_headers(
        spam=spam,
        score=score,
        required=required,
        rules=tuple(rules),
        status_header=status_header,
        report_header=report_header,
    )


# Most messages score the same few ways (no rule matched, above all): the fields are
# rendered once per distinct result, like Authentication-Results above.
@functools.lru_cache(maxsize=1024)
def _spam_headers(
    *,
    spam: bool,
    score: float,
    required: float,
    rules: tuple[str, ...],
    status_header: str,
    report_header: str,
) -> tuple[tuple[str, str], ...]:
    shown = f"score={_shown_score(score, spam, required)} required={required:.1f}"
    words = [f"{'Yes' if spam else 'No'},", *shown.split(" ")]
    status = fold(status_header, [*words, *_list_words("tests=", rules or ("none",))])
    if not rules:
        return ((status_header, status),)
    report_lines = [shown] + [f"* {r}" for r in rules]
    return (status_header, status), (report_header, "\n\t".join(report_lines))


def _shown_score(score: float, spam: bool, required: float) -> str:
    """The score to one decimal as SpamAssassin writes it, never on the other side of
    ``required`` than the verdict (review rev175 F2: 5.96 read "No, score=6.0
    required=6.0", which a Sieve spamtest takes for spam), and never "-0.0"."""
    shown = round(score, 1)
    if not spam and shown >= required:
        shown = math.floor(score * 10) / 10
    return f"{shown + 0.0:.1f}"


def _list_words(key: str, items: Sequence[str]) -> list[str]:
    """``key=A,B,C`` as SpamAssassin writes it: no space in the list, a fold point
    after each comma (review rev175 F3: a space after every comma of a long list cut
    it for a reader of ``tests=(\\S+)``)."""
    pieces = [f"{item}," for item in items[:-1]] + [items[-1]]
    return [key + pieces[0], *(_Glued(piece) for piece in pieces[1:])]
