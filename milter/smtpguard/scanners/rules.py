"""Built-in content rules: header and body patterns with scores (``rules/antispam.toml``).

File format (TOML, one table per rule; unknown keys are refused)::

    [[rule]]
    name = "SUBJ_FREE_MONEY"          # unique; [A-Za-z0-9_.-], used in logs
    part = "header:Subject"           # "body", "header:NAME" or "header:*"
    pattern = '\\bfree money\\b'       # RE2 syntax (docs/patterns.md), searched
    score = 2.5                       # negative scores are allowed
    ignore_case = true                # optional, default false
    description = "Subject offers free money"

What a rule sees:

* ``header:NAME``: the value of every header field of that name (case-insensitive),
  unfolded (CRLF + white space -> one space) and with RFC 2047 encoded words decoded.
  ``header:*``: ``Name: value`` of every header field, unfolded and decoded the same way.
* ``body``: every line of the raw body (everything after the empty line), decoded as
  UTF-8 with invalid octets replaced, without the line break. There is no MIME
  decoding: a base64 or quoted-printable part is seen as it is transferred (rspamd,
  when configured, scores decoded content).

Each rule counts at most once per message; the result is the sum of the scores of the
rules that matched.

Guards, because the rules run against mail written by strangers:

* Patterns are compiled with RE2 (:mod:`smtpguard.patterns`): matching is linear in
  the length of the line whatever the pattern, so there is no backtracking to guard
  against. A pattern RE2 cannot compile (backreferences, lookaround) is refused at
  load with a :class:`RuleError` naming the file and the rule, and so is one that
  matches the empty string (it would match every line).
* Lines are searched in segments of at most ``line_cap`` characters (default 4096); a
  longer line is cut into overlapping segments (``overlap`` characters, default 256), so
  a match longer than the overlap that straddles a cut can be missed.
* At most ``max_body_bytes`` of the body are scanned (default 512 KiB; None = all).
* Encoded words are decoded up to ``max_header_decode`` characters of them in the
  fields of one name (default 256 Ki, far more than a message's own); the fields of
  that name after that are matched as written and the result says ``complete=False``,
  as for the time budget.
* A time budget per message (``time_budget`` seconds of this thread's CPU spent in
  the scan itself, header decoding included, default 1.0) stops the scan between two
  line segments or header fields; the result
  then says ``complete=False``. CPU, and only the scan's: a budget of wall-clock time
  from the first header field also counted the other checks, a slow virus scanner and
  waits for the interpreter lock, and under load a spam message's body went unscanned
  (review rev145 F1).

Performance: the rules of one part are searched together (RE2's FilteredRE2, see
:class:`~smtpguard.patterns.PatternSet`): the literals each pattern requires are looked
for in one pass over a whole block of body lines (a body chunk's complete lines), and
only the rules whose literals occur there are run on its lines. Ordinary mail then
costs one pass per chunk instead of a search per rule and line. Header fields are kept
until the headers end and each group is matched on all of its fields at once, each
field still searched on its own (bench/rules_cost.py measures all of this).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from smtpguard.config import HEADER_NAME, ConfigError, default_rules_dir, read_toml
from smtpguard.content.encoded_words import readings as decode_readings
from smtpguard.patterns import Pattern, PatternError, PatternSet, encode

__all__ = [
    "DEFAULT_RULES_FILE",
    "Rule",
    "RuleError",
    "RuleScan",
    "RuleSet",
    "RulesResult",
]

DEFAULT_RULES_FILE: Final = "antispam.toml"
DEFAULT_LINE_CAP: Final = 4096
DEFAULT_OVERLAP: Final = 256
DEFAULT_MAX_BODY_BYTES: Final = 512 * 1024
#: Characters of encoded words decoded in the header fields of one name, per message.
DEFAULT_MAX_HEADER_DECODE: Final = 256 * 1024
DEFAULT_TIME_BUDGET: Final = 1.0

_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_KEYS: Final = frozenset({"name", "part", "pattern", "score", "ignore_case", "description"})
_UNFOLD: Final = re.compile(r"\r?\n[ \t]*")
_MISSING: Final = object()


class RuleError(ConfigError):
    """A rule file problem; ``key`` names the rule (``rule[3] (NAME).pattern``)."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    #: ``"body"``, ``"header:*"`` or ``"header:<lower-cased name>"``.
    part: str
    pattern: Pattern
    score: float
    description: str = ""


@dataclass(frozen=True, slots=True)
class RulesResult:
    score: float
    #: Names of the rules that matched, in rule-file order.
    matched: tuple[str, ...]
    #: False when the time budget stopped the scan early.
    complete: bool = True
    detail: str = ""


# --- loading ---------------------------------------------------------------------------


def _load_rules(path: Path) -> list[Rule]:
    raw = read_toml(path, RuleError)
    unknown = sorted(set(raw) - {"rule"})
    if unknown:
        raise RuleError(path, unknown[0], "unknown key (expected [[rule]] tables)")
    entries = raw.get("rule", [])
    if not isinstance(entries, list):
        raise RuleError(path, "rule", "expected [[rule]] tables")
    rules: list[Rule] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        rule = _rule(path, index, entry)
        if rule.name in names:
            raise RuleError(path, f"rule[{index}] ({rule.name}).name", "duplicate rule name")
        names.add(rule.name)
        rules.append(rule)
    if not rules:
        # An empty or truncated file (a deploy cut short) switched the built-in scoring
        # off without a word (review rev156 F11).
        raise RuleError(
            path,
            "rule",
            "no [[rule]] tables: the built-in scoring would do nothing (keep at least the"
            ' shipped GTUBE rule, which tests the whole chain: with engine = "rspamd" a'
            " file with that rule alone leaves the scoring to rspamd; without an engine,"
            ' checks.antispam.mode = "off" turns the check off)',
        )
    return rules


def _rule(path: Path, index: int, entry: Any) -> Rule:
    where = f"rule[{index}]"
    if not isinstance(entry, dict):
        raise RuleError(path, where, "expected a table")
    name = entry.get("name")
    if isinstance(name, str) and _NAME.match(name):
        where = f"rule[{index}] ({name})"
    else:
        raise RuleError(path, f"{where}.name", "expected a name of 1-64 [A-Za-z0-9_.-]")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise RuleError(path, f"{where}.{unknown[0]}", "unknown key")

    def get(key: str, kind: type | tuple[type, ...], what: str, default: Any = _MISSING) -> Any:
        if key not in entry:
            if default is _MISSING:
                raise RuleError(path, f"{where}.{key}", f"missing ({what})")
            return default
        value = entry[key]
        # bool is an int subclass: "score = true" must not pass as 1.
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise RuleError(path, f"{where}.{key}", f"expected {what}")
        return value

    part = get("part", str, "a string")
    if part in ("body", "header:*"):
        pass
    elif part.startswith("header:") and HEADER_NAME.match(part[7:]):
        part = "header:" + part[7:].lower()
    else:
        raise RuleError(path, f"{where}.part", 'expected "body", "header:NAME" or "header:*"')
    score = float(get("score", (int, float), "a number"))
    if not math.isfinite(score):
        raise RuleError(path, f"{where}.score", "must be a finite number")
    ignore_case = get("ignore_case", bool, "true or false", False)
    description = get("description", str, "a string", "")
    source = get("pattern", str, "a string")
    if not source:
        raise RuleError(path, f"{where}.pattern", "must not be empty")
    try:
        compiled = Pattern(source, ignore_case=ignore_case)
    except PatternError as exc:
        raise RuleError(
            path, f"{where}.pattern", f"not a valid RE2 pattern: {exc} (docs/patterns.md)"
        ) from None
    if compiled.search(""):
        raise RuleError(path, f"{where}.pattern", "matches the empty string, so every line")
    return Rule(name, part, compiled, score, description)


# --- the rule set and one scan ---------------------------------------------------------


class _Group:
    """The rules of one part, searched together (one pass finds the candidates)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.names = frozenset(rule.name for rule in rules)
        self.patterns = PatternSet([rule.pattern for rule in self.rules])

    def matching(self, text: str) -> list[Rule]:
        """The rules that match ``text``."""
        rules = self.rules
        return [rules[i] for i in self.patterns.search(text)]

    def matching_any(self, texts: Sequence[str]) -> list[Rule]:
        """The rules that match one of ``texts`` (each searched on its own)."""
        if len(texts) == 1:
            return self.matching(texts[0])
        # One pass over all of them finds the few rules worth running on each.
        joined = "\n".join(texts)
        encoded = [encode(text) for text in texts]
        return [
            rule
            for rule in self.candidates(joined, set())
            if any(rule.pattern.search_encoded(data) for data in encoded)
        ]

    def candidates(self, text: str, matched: set[str]) -> list[Rule]:
        """The rules not yet matched that can match somewhere in ``text``, in order."""
        rules = self.rules
        found = self.patterns.candidates(text)
        return [rules[i] for i in found if rules[i].name not in matched]


class RuleSet:
    """Compiled rules, shared by all transactions (immutable, thread-safe)."""

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        source: Path | str = "<rules>",
        line_cap: int = DEFAULT_LINE_CAP,
        overlap: int = DEFAULT_OVERLAP,
        max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
        max_header_decode: int = DEFAULT_MAX_HEADER_DECODE,
        time_budget: float = DEFAULT_TIME_BUDGET,
        clock: Callable[[], float] = time.thread_time,
    ) -> None:
        if not 0 <= overlap < line_cap:
            raise ValueError("overlap must be below line_cap")
        self.source = str(source)
        self.rules = tuple(rules)
        self.line_cap = line_cap
        self.overlap = overlap
        self.max_body_bytes = max_body_bytes
        self.max_header_decode = max_header_decode
        self.time_budget = time_budget
        self.clock = clock
        body = [r for r in self.rules if r.part == "body"]
        self.body: _Group | None = _Group(body) if body else None
        any_header = [r for r in self.rules if r.part == "header:*"]
        self.any_header: _Group | None = _Group(any_header) if any_header else None
        named: dict[str, list[Rule]] = {}
        for rule in self.rules:
            if rule.part.startswith("header:") and rule.part != "header:*":
                named.setdefault(rule.part[7:], []).append(rule)
        self.headers: Mapping[str, _Group] = {k: _Group(v) for k, v in named.items()}
        self._order = {rule.name: i for i, rule in enumerate(self.rules)}
        self._scores = {rule.name: rule.score for rule in self.rules}

    @classmethod
    def load(
        cls,
        path: Path | str | None = None,
        *,
        line_cap: int = DEFAULT_LINE_CAP,
        overlap: int = DEFAULT_OVERLAP,
        max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
        time_budget: float = DEFAULT_TIME_BUDGET,
    ) -> RuleSet:
        """Load and compile a rule file (default: the shipped ``rules/antispam.toml``).

        Raises :class:`RuleError` (a :class:`~smtpguard.config.ConfigError`).
        """
        file = Path(path) if path is not None else default_rules_dir() / DEFAULT_RULES_FILE
        return cls(
            _load_rules(file),
            source=file,
            line_cap=line_cap,
            overlap=overlap,
            max_body_bytes=max_body_bytes,
            time_budget=time_budget,
        )

    def scanner(self) -> RuleScan:
        """A scan for one message (feed it like the clamd stream)."""
        return RuleScan(self)

    def scan_message(self, message: bytes) -> RulesResult:
        """Scan a whole RFC 5322 message at once (``simulate`` and tests)."""
        scan = self.scanner()
        head, sep, body = message.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = message.partition(b"\n\n")
        if not sep:
            head, body = b"", message
        for name, value in _split_headers(head):
            scan.feed_header(name, value)
        scan.end_of_headers()
        scan.feed(body)
        return scan.finish()


def _split_headers(head: bytes) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for line in re.split(rb"\r?\n(?![ \t])", head):
        name, colon, value = line.partition(b":")
        if colon:
            fields.append(
                (name.decode("ascii", "replace").strip(), value.lstrip().decode("utf-8", "replace"))
            )
    return fields


class RuleScan:
    """One message through a :class:`RuleSet`: headers, then body chunks, then finish."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self._matched: set[str] = set()
        self._body_left: int | None = rules.max_body_bytes
        self._carry = bytearray()
        #: CPU spent in the scan before the call in progress, and when that call began.
        self._spent = 0.0
        self._entered = 0.0
        self._stopped = ""
        #: No more body to take: max_body_bytes reached, or every body rule matched.
        self._body_done = rules.body is None
        #: Every body rule matched: nothing left to search for in what was taken either.
        self._all_found = False
        #: Header texts per group, matched together when the headers end.
        self._headers: dict[int, tuple[_Group, list[str]]] = {}
        #: Characters of encoded words still to be decoded, per field name.
        self._decode_left: dict[str, int] = {}
        #: Field names whose encoded words were left undecoded past that.
        self._undecoded: set[str] = set()

    # -- headers --------------------------------------------------------------------

    def feed_header(self, name: str, value: str) -> None:
        key = name.lower()
        group = self.rules.headers.get(key)
        any_header = self.rules.any_header
        if group is None and any_header is None:
            return
        unfolded = _UNFOLD.sub(" ", value) if "\n" in value else value
        texts: tuple[str, ...] = (unfolded,)
        if "=?" in unfolded and not self._stopped:
            texts = self._decoded(key, unfolded)
        for text in texts:
            if group is not None:
                self._keep(group, text)
            if any_header is not None:
                self._keep(any_header, f"{name}: {text}")

    def _decoded(self, key: str, unfolded: str) -> tuple[str, ...]:
        """The readings of a field with encoded words. Readers differ on a word whose
        text holds another opening: both readings are matched (review rev71 R2, rev72
        E1). Decoding is the costly part of a field, so it counts in the time budget,
        and past ``max_header_decode`` characters of encoded words in fields of one
        name the rest are matched as written, the scan incomplete (review rev195 F1: 9
        MB of them took 5 s of CPU, uncounted). Per name and by the words read: a long
        field without words, or fields of another name, cannot use up the Subject's
        share (review rev200)."""
        left = self._decode_left.get(key, self.rules.max_header_decode)
        if left <= 0:
            self._undecoded.add(key)
            return (unfolded,)
        self._enter()
        try:
            texts, read = decode_readings(unfolded)
            self._check_time()
        finally:
            self._leave()
        self._decode_left[key] = left - read
        return texts

    def _keep(self, group: _Group, text: str) -> None:
        kept = self._headers.get(id(group))
        if kept is None:
            self._headers[id(group)] = (group, [text])
        else:
            kept[1].append(text)

    def end_of_headers(self) -> None:
        """Match the header rules, each group on all its headers at once (a search per
        header and group cost more than the rest of the scan of a short message)."""
        self._enter()
        try:
            self._header_rules()
        finally:
            self._leave()

    def _header_rules(self) -> None:
        headers, self._headers = self._headers, {}
        for group, texts in headers.values():
            if self._stopped:
                return
            self._matched.update(rule.name for rule in group.matching_any(texts))
            self._check_time()

    # -- body -----------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self._enter()
        try:
            self._feed(chunk)
        finally:
            self._leave()

    def _feed(self, chunk: bytes) -> None:
        if self._headers:
            self._header_rules()  # the MTA may not say where the headers end
        if self._body_done or self._stopped:
            return
        if self._body_left is not None:
            if len(chunk) >= self._body_left:
                chunk = chunk[: self._body_left]
                self._body_done = True
            self._body_left -= len(chunk)
        self._carry += chunk
        end = self._carry.rfind(b"\n")
        if end >= 0:
            # One decode for all complete lines; a LF never sits inside a UTF-8 sequence.
            self._body_block(self._carry[:end].decode("utf-8", "replace"))
            del self._carry[: end + 1]
        self._trim_carry()
        if self._body_done:
            self._flush_carry()

    def _body_block(self, text: str) -> None:
        """Lines of ``text``; only rules whose literals occur in the block are searched."""
        group = self.rules.body
        if group is None or self._stopped:
            return
        candidates = group.candidates(text, self._matched)
        if not candidates:
            return
        # Not _body_done: the block that reaches max_body_bytes sets it before it is
        # searched, and all of it is searched (found by review: only its first line was).
        for line in text.split("\n"):
            self._body_line(line.removesuffix("\r"), candidates)
            if self._stopped or self._all_found:
                return

    def _trim_carry(self) -> None:
        """Search a line that grows past the cap in segments; keep only the overlap."""
        cap, overlap = self.rules.line_cap, self.rules.overlap
        while len(self._carry) > cap and not self._stopped and not self._all_found:
            self._body_block(self._carry[:cap].decode("utf-8", "replace"))
            del self._carry[: cap - overlap]

    def _flush_carry(self) -> None:
        if self._carry:
            self._body_block(self._carry.decode("utf-8", "replace"))
        self._carry.clear()

    def _body_line(self, line: str, candidates: list[Rule]) -> None:
        cap, overlap = self.rules.line_cap, self.rules.overlap
        start = 0
        while not self._stopped:
            self._match(candidates, line[start : start + cap])
            self._check_time()
            if start + cap >= len(line):
                break
            start += cap - overlap
        body = self.rules.body
        if body is not None and body.names <= self._matched:
            self._body_done = self._all_found = True  # every body rule already counted

    # -- matching -------------------------------------------------------------------

    def _match(self, candidates: list[Rule], text: str) -> None:
        # Rule by rule rather than the group's set search per line: a rule that matched
        # is not run again, which is most of the work on a spam message.
        data = encode(text)
        for rule in candidates:
            if rule.name not in self._matched and rule.pattern.search_encoded(data):
                self._matched.add(rule.name)

    def _enter(self) -> None:
        self._entered = self.rules.clock()

    def _leave(self) -> None:
        self._spent += self.rules.clock() - self._entered

    def _check_time(self) -> None:
        if self._stopped:
            return
        if self._spent + self.rules.clock() - self._entered > self.rules.time_budget:
            self._stopped = f"time budget of {self.rules.time_budget:g} s of CPU used up"

    def finish(self) -> RulesResult:
        self._enter()
        try:
            if self._headers:
                self._header_rules()
            if not self._body_done and not self._stopped:
                self._flush_carry()
        finally:
            self._leave()
        order = self.rules._order
        matched = tuple(sorted(self._matched, key=order.__getitem__))
        scores = self.rules._scores
        return RulesResult(
            score=sum(scores[name] for name in matched),
            matched=matched,
            complete=not (self._stopped or self._undecoded),
            detail=self._stopped or self._undecoded_detail(),
        )

    def _undecoded_detail(self) -> str:
        if not self._undecoded:
            return ""
        names = ", ".join(sorted(self._undecoded))
        limit = self.rules.max_header_decode
        return f"encoded words past {limit} characters of {names} fields not decoded"
