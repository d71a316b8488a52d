"""The one matcher for regular expressions written by operators and shipped in ``rules/``.

Every such pattern (``policy.sender_deny``, the anti-spam rules, the generic-PTR
patterns, the ``explain`` rules) is compiled here, with RE2 (google-re2): it runs in
time linear in the text whatever the pattern, because it never backtracks. ``(a+)+$``
on a hostile 30-character local part costs microseconds instead of minutes, so no
pattern needs a "looks dangerous" analysis first. The price is the syntax RE2 does not
have: backreferences (``\\1``), lookahead and lookbehind (``(?=``, ``(?<!``), atomic
groups and possessive quantifiers, conditionals, and ``\\Z`` (RE2 spells it ``\\z``).
Such a pattern does not compile; the loaders turn :class:`PatternError` into a
:class:`~smtpguard.config.ConfigError` naming the file and the key. What is supported,
and where RE2 differs from Python's ``re``, is in ``docs/patterns.md``.

Texts are searched as UTF-8; octets pymilter handed over as surrogate escapes go back
to the original octets, which match no character class, instead of raising.

Patterns that smtpguard writes itself (parsers, fixed formats) stay on ``re``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import re2

__all__ = ["Pattern", "PatternError", "PatternSet", "compile_pattern"]

#: RE2's own per-pattern memory budget (its default): a pattern whose automaton needs
#: more, such as ``\pL{1000}``, is refused at compile time.
MAX_MEM: Final = 8 << 20

#: RE2's words for what it refuses (matched at the start of its message), and what to
#: write instead.
_HINTS: Final = tuple(
    (re.compile(words), hint)
    for words, hint in (
        (r"invalid escape sequence: \\Z", "RE2 spells the end of the text \\z, or use $"),
        (r"invalid escape sequence: \\[0-9]", "backreferences are not supported"),
        (r"invalid escape sequence: \\[uUN]", "write \\x{E9} or the character itself"),
        (r"invalid perl operator: \(\?x", "verbose mode (?x) is not supported"),
        (r"invalid perl operator: \(\?#", "(?#comments) are not supported"),
        (r"invalid perl operator: \(\?[=!]", "lookahead is not supported"),
        (r"invalid perl operator: \(\?<[=!]", "lookbehind is not supported"),
        (r"invalid perl operator: \(\?>", "atomic groups are not supported"),
        (r"invalid perl operator: \(\?\(", "conditional groups are not supported"),
        (r"invalid perl operator: \(\?P", "(?P=name) backreferences are not supported"),
        (r"bad repetition operator: .*\+$", "possessive quantifiers are not supported"),
        (r"invalid repetition size", "a repetition count, nested ones multiplied, is at most 1000"),
        (r"pattern too large", "the compiled pattern needs more than RE2's 8 MiB budget"),
    )
)


class PatternError(ValueError):
    """A pattern RE2 cannot compile; the message says why (and what to write instead)."""


def _options(ignore_case: bool) -> re2.Options:
    options = re2.Options()
    options.case_sensitive = not ignore_case
    # Nothing reads groups: capturing costs time and nothing else.
    options.never_capture = True
    # RE2 would print its compile errors on stderr; they come back as PatternError.
    options.log_errors = False
    options.max_mem = MAX_MEM
    return options


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


#: The encoding :meth:`Pattern.search_encoded` expects.
encode = _utf8


class Pattern:
    """One compiled pattern: :meth:`search` and :meth:`fullmatch` answer yes or no."""

    __slots__ = ("_regexp", "ignore_case", "source")

    def __init__(self, source: str, *, ignore_case: bool = False) -> None:
        if "\0" in source:
            raise PatternError("a pattern cannot contain NUL")
        self.source = source
        self.ignore_case = ignore_case
        try:
            self._regexp = re2.compile(source, _options(ignore_case))
        except re2.error as exc:
            raise PatternError(_message(exc)) from None

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in ``text``."""
        return self._regexp.search(_utf8(text)) is not None

    def search_encoded(self, data: bytes) -> bool:
        """:meth:`search` on text already given to :func:`encode`: one encoding for
        many patterns searched in the same text."""
        return self._regexp.search(data) is not None

    def fullmatch(self, text: str) -> bool:
        """Whether the pattern matches the whole of ``text``."""
        return self._regexp.fullmatch(_utf8(text)) is not None

    def __repr__(self) -> str:
        flags = ", ignore_case=True" if self.ignore_case else ""
        return f"Pattern({self.source!r}{flags})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pattern):
            return NotImplemented
        return (self.source, self.ignore_case) == (other.source, other.ignore_case)

    def __hash__(self) -> int:
        return hash((self.source, self.ignore_case))


def compile_pattern(source: str, *, ignore_case: bool = False) -> Pattern:
    """Compile ``source`` with RE2; raise :class:`PatternError` if it cannot."""
    return Pattern(source, ignore_case=ignore_case)


class PatternSet:
    """Many patterns searched together (RE2's FilteredRE2), for rule sets.

    At build time RE2 derives from each pattern the literal strings ("atoms") that any
    match must contain; a search first finds which atoms occur in the text, in one
    pass, and runs only the patterns those atoms allow (patterns without atoms always
    run). :meth:`candidates` stops after the first step: a superset of the patterns
    that match somewhere in the text, and so in any part of it.
    """

    __slots__ = ("_filter", "patterns")

    def __init__(self, patterns: Sequence[Pattern]) -> None:
        self.patterns = tuple(patterns)
        self._filter = re2.Filter()
        for pattern in self.patterns:
            # Each pattern compiled on its own above, so this cannot fail on syntax.
            self._filter.Add(pattern.source, _options(pattern.ignore_case))
        self._filter.Compile()

    def search(self, text: str) -> list[int]:
        """Indices of the patterns that match somewhere in ``text``, ascending."""
        if not self.patterns:
            return []
        return sorted(self._filter.Match(_utf8(text), False) or ())

    def candidates(self, text: str) -> list[int]:
        """Indices of the patterns that may match in ``text`` or any part of it."""
        if not self.patterns:
            return []
        return sorted(self._filter.Match(_utf8(text), True) or ())


def _message(exc: re2.error) -> str:
    raw = exc.args[0] if exc.args else ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    for words, hint in _HINTS:
        if words.match(text):
            return f"{text} ({hint})"
    return text
