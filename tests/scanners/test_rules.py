"""The built-in content rules engine and the shipped rules/antispam.toml."""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.config import ConfigError
from smtpguard.scanners.rules import (
    Rule,
    RuleError,
    RuleSet,
    RulesResult,
    _fold,
    check_pattern,
    required_literals,
)
from support.daemons import GTUBE

HAM = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: Minutes of Tuesday's meeting\r\n"
    b"\r\n"
    b"Hi Bob,\r\n\r\nattached are the minutes; the budget review moves to Friday.\r\n"
)


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return RuleSet.load()


def write_rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    return path


def one_rule(pattern: str, part: str = "body", *, score: float = 1.0, extra: str = "") -> str:
    return (
        f'[[rule]]\nname = "R"\npart = "{part}"\npattern = \'{pattern}\'\n'
        f"score = {score}\n{extra}\n"
    )


def ruleset(**patterns: tuple[str, str, float]) -> RuleSet:
    """Rules from keyword arguments: NAME=(part, pattern, score)."""
    return RuleSet(
        [Rule(name, part, re.compile(p), score) for name, (part, p, score) in patterns.items()]
    )


# --- the shipped rules -----------------------------------------------------------------


def test_shipped_rules_load(shipped: RuleSet) -> None:
    assert len(shipped.rules) >= 10
    assert shipped.source.endswith("rules/antispam.toml")


def test_gtube_scores_above_any_reject_threshold(shipped: RuleSet) -> None:
    result = shipped.scan_message(HAM + GTUBE + b"\r\n")
    assert "GTUBE" in result.matched
    assert result.score >= 1000


def test_ham_scores_nothing(shipped: RuleSet) -> None:
    result = shipped.scan_message(HAM)
    assert result.matched == ()
    assert result.score == 0
    assert result.complete


def test_spam_phrases_score_modestly(shipped: RuleSet) -> None:
    spam = (
        b"Subject: CONGRATULATIONS YOU HAVE WON\r\n\r\n"
        b"You are the winner of the lottery: 2 million US dollars!\r\n"
        b"Act now, contact the next of kin desk.\r\n"
    )
    result = shipped.scan_message(spam)
    assert {"SUBJ_ALL_CAPS", "SUBJ_YOU_WON", "BODY_WON_LOTTERY", "BODY_ACT_NOW"} <= set(
        result.matched
    )
    assert 5 < result.score < 1000


def test_chinese_rules_on_an_encoded_subject(shipped: RuleSet) -> None:
    # "=?utf-8?b?...?=" is 代开增值税发票 (offers to issue VAT invoices).
    result = shipped.scan_message(
        b"Subject: =?utf-8?b?5Luj5byA5aKe5YC856iO5Y+R56Wo?=\r\n\r\n"
        + "您的邮箱已满, 请立即处理\r\n".encode()
    )
    assert result.matched == ("SUBJ_INVOICE_ZH", "BODY_MAILBOX_FULL_ZH")


# --- matching semantics ----------------------------------------------------------------


def test_each_rule_counts_once() -> None:
    rules = ruleset(FREE=("body", r"free", 1.5))
    result = rules.scan_message(b"Subject: x\r\n\r\n" + b"free free\r\n" * 100)
    assert result.matched == ("FREE",)
    assert result.score == 1.5


def test_scores_add_up_and_may_be_negative() -> None:
    rules = ruleset(
        A=("body", r"alpha", 2.0), B=("header:subject", r"beta", 3.0), H=("body", r"ham", -1)
    )
    result = rules.scan_message(b"Subject: beta\r\n\r\nalpha\r\nham\r\n")
    assert result.matched == ("A", "B", "H")
    assert result.score == 4.0


def test_header_name_is_case_insensitive_and_value_unfolded() -> None:
    rules = ruleset(S=("header:subject", r"cheap watches", 1.0))
    scan = rules.scanner()
    scan.feed_header("SUBJECT", "cheap\r\n watches")
    assert scan.finish().matched == ("S",)
    scan = rules.scanner()
    scan.feed_header("Subject", "cheap\n\twatches")
    assert scan.finish().matched == ("S",)


def test_any_header_sees_name_and_value() -> None:
    rules = ruleset(M=("header:*", r"^X-Mailer: Bulk", 1.0))
    scan = rules.scanner()
    scan.feed_header("X-Mailer", "BulkSender 3.0")
    scan.feed_header("Subject", "X-Mailer: Bulk")
    assert scan.finish().matched == ("M",)
    scan = rules.scanner()
    scan.feed_header("Subject", "X-Mailer: Bulk")
    assert scan.finish().matched == ()


def test_malformed_encoded_word_is_matched_raw() -> None:
    rules = ruleset(S=("header:subject", r"=\?bogus", 1.0))
    scan = rules.scanner()
    scan.feed_header("Subject", "=?bogus-charset?q?x?=")
    assert scan.finish().matched == ("S",)


def test_body_rules_do_not_see_headers_and_vice_versa() -> None:
    rules = ruleset(B=("body", r"needle", 1.0), H=("header:subject", r"hay", 1.0))
    assert rules.scan_message(b"Subject: needle\r\n\r\nhay\r\n").matched == ()


def test_lines_split_across_chunks_and_anchors() -> None:
    rules = ruleset(L=("body", r"^whole line here$", 1.0), Z=("body", r"中文测试", 1.0))
    scan = rules.scanner()
    scan.end_of_headers()
    data = "prefix\r\nwhole line here\r\n中文测试\r\n".encode()
    for i in range(len(data)):  # one octet at a time: splits CRLF and UTF-8 sequences
        scan.feed(data[i : i + 1])
    assert scan.finish().matched == ("L", "Z")


def test_last_line_without_line_break() -> None:
    rules = ruleset(E=("body", r"the end$", 1.0))
    assert rules.scan_message(b"Subject: x\r\n\r\nthe end").matched == ("E",)


def test_invalid_utf8_does_not_break_matching() -> None:
    rules = ruleset(P=("body", r"pills", 1.0))
    assert rules.scan_message(b"Subject: x\r\n\r\n\xff\xfe cheap pills \xc3\r\n").matched == ("P",)


# --- guards ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a+)+$", "nested repetition"),
        (r"(?:\w+\s)*end", "nested repetition"),
        (r"(x+x+)+y", "nested repetition"),
        (r"(?:a|ab)+c", "alternation under an unbounded repetition"),
        (r"(a)\1", "backreferences"),
        (r"(?P<w>a)(?P=w)", "backreferences"),
        (r"(a)?(?(1)b|c)", "conditional groups"),
        (r".*a.*b", "backtracking width"),
        (r"a.{0,100}b.{0,100}c", "backtracking width"),
        (r"(a+){3}", "backtracking width"),
        (r"(?i)viagra", "use ignore_case"),
    ],
)
def test_pathological_patterns_are_refused(pattern: str, reason: str) -> None:
    refused = check_pattern(pattern)
    assert refused is not None
    assert reason in refused


@pytest.mark.parametrize(
    "pattern",
    [
        r"free.*money",
        r"\bviagra\b",
        r"a.{0,60}b.{0,60}c",
        r"(?:\d{3}-)+\d{4}",  # fixed-width body under +
        r"(?:viagra|cialis) (?:online|cheap)",
        r"[$€]\d[\d,.]{0,12}",
        r"a++b",
        r"(?=.{0,20}x)y",
    ],
)
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    assert check_pattern(pattern) is None


def test_refused_pattern_names_file_and_rule(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        one_rule(r"fine").replace('name = "R"', 'name = "OK1"')
        + '[[rule]]\nname = "EVIL"\npart = "body"\npattern = \'(a+)+b\'\nscore = 1\n',
    )
    with pytest.raises(RuleError) as caught:
        RuleSet.load(path)
    assert isinstance(caught.value, ConfigError)
    assert caught.value.file == str(path)
    assert caught.value.key == "rule[1] (EVIL).pattern"
    assert "nested repetition" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (one_rule("x", extra="colour = 1"), "rule[0] (R).colour", "unknown key"),
        (one_rule("x", part="subject"), "rule[0] (R).part", "header:NAME"),
        (one_rule("x", part="header:Bad Name"), "rule[0] (R).part", "header:NAME"),
        (one_rule("x").replace("score = 1.0", 'score = "high"'), "rule[0] (R).score", "number"),
        (one_rule("x").replace("score = 1.0", "score = true"), "rule[0] (R).score", "number"),
        (one_rule("x").replace("score = 1.0", "score = nan"), "rule[0] (R).score", "finite"),
        (one_rule("x").replace("score = 1.0\n", ""), "rule[0] (R).score", "missing"),
        (one_rule("x", extra="ignore_case = 1"), "rule[0] (R).ignore_case", "true or false"),
        (one_rule("(unclosed"), "rule[0] (R).pattern", "not a valid regex"),
        (one_rule(""), "rule[0] (R).pattern", "must not be empty"),
        (one_rule("a*"), "rule[0] (R).pattern", "empty string"),
        (one_rule("x") + one_rule("y"), "rule[1] (R).name", "duplicate"),
        (one_rule("x").replace('"R"', '"bad name!"'), "rule[0].name", "expected a name"),
        ('[[rules]]\nname = "R"\n', "rules", "unknown key"),
        ("rule = 3\n", "rule", "[[rule]] tables"),
        ("[[rule\n", "", "not valid TOML"),
    ],
)
def test_rule_file_errors(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = write_rules(tmp_path, text)
    with pytest.raises(RuleError) as caught:
        RuleSet.load(path)
    assert caught.value.key == key
    assert message in caught.value.message


def test_missing_rule_file(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="file not found"):
        RuleSet.load(tmp_path / "nope.toml")


def test_ignore_case_is_per_rule(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        '[[rule]]\nname = "CI"\npart = "body"\npattern = \'viagra\'\nscore = 1\n'
        "ignore_case = true\n"
        '[[rule]]\nname = "CS"\npart = "body"\npattern = \'CamelCase\'\nscore = 1\n',
    )
    rules = RuleSet.load(path)
    assert rules.scan_message(b"\r\n\r\nVIAGRA camelcase\r\n").matched == ("CI",)
    assert rules.scan_message(b"\r\n\r\nCamelCase\r\n").matched == ("CS",)


TEN_MB_RULES = [
    Rule("GT", "body", re.compile(re.escape(GTUBE.decode())), 1000),
    Rule("SLOW", "body", re.compile(r"free.*money"), 1),
    Rule("WORD", "body", re.compile(r"\bviagra\b", re.IGNORECASE), 1),
]


def feed_as_milter(rules: RuleSet, body: bytes) -> tuple[float, object]:
    start = time.monotonic()
    scan = rules.scanner()
    scan.end_of_headers()
    for offset in range(0, len(body), 65535):  # body chunks as the milter delivers them
        scan.feed(body[offset : offset + 65535])
    result = scan.finish()
    return time.monotonic() - start, result


def test_ten_megabyte_single_line_is_handled_quickly() -> None:
    rules = RuleSet(TEN_MB_RULES, max_body_bytes=None, time_budget=60)
    line = b"x" * (10 * 1024 * 1024) + GTUBE  # no line break at all
    elapsed, result = feed_as_milter(rules, line)
    assert result == RulesResult(1000, ("GT",))  # found at the very end
    assert elapsed < 5, elapsed
    # The same line handed over in one piece takes the other path (split after decoding).
    start = time.monotonic()
    assert rules.scan_message(b"\r\n\r\n" + line).matched == ("GT",)
    assert time.monotonic() - start < 5


def test_hostile_ten_megabyte_line_is_cut_short_by_the_time_budget() -> None:
    """[a-z]+\\d has no literal to pre-filter on and is quadratic on a run of letters
    (tens of ms per 4 KiB segment, minutes for the line): the per-message budget ends it."""
    rules = RuleSet(
        [*TEN_MB_RULES, Rule("QUADRATIC", "body", re.compile(r"[a-z]+\d"), 1)],
        max_body_bytes=None,
        time_budget=0.5,
    )
    elapsed, result = feed_as_milter(rules, b"a" * (10 * 1024 * 1024) + GTUBE)
    assert isinstance(result, RulesResult)
    assert not result.complete
    assert "time budget" in result.detail
    assert elapsed < 2, elapsed


def test_literal_prefilter_skips_rules_that_cannot_match() -> None:
    """free.*money is quadratic on "free free free ...", but without "money" in the
    block it is never run."""
    rules = RuleSet(TEN_MB_RULES, max_body_bytes=None, time_budget=60)
    elapsed, result = feed_as_milter(rules, b"free " * (2 * 1024 * 1024) + GTUBE)
    assert result == RulesResult(1000, ("GT",))
    assert elapsed < 5, elapsed


def test_default_body_limit_bounds_the_work() -> None:
    rules = RuleSet(TEN_MB_RULES)  # max_body_bytes = 512 KiB, time_budget = 1 s
    elapsed, result = feed_as_milter(rules, b"free " * (2 * 1024 * 1024) + GTUBE)
    assert isinstance(result, RulesResult)
    assert result.matched == ()  # GTUBE sits beyond the scanned part
    assert elapsed < 2, elapsed


def test_match_across_a_segment_cut_within_the_overlap() -> None:
    rules = RuleSet([Rule("N", "body", re.compile("needle"), 1)], line_cap=100, overlap=20)
    for position in range(70, 110):
        line = b"x" * position + b"needle" + b"x" * 300
        assert rules.scan_message(b"\r\n\r\n" + line).matched == ("N",), position


def test_body_scan_stops_at_max_body_bytes() -> None:
    rules = RuleSet([Rule("N", "body", re.compile("needle"), 1)], max_body_bytes=1000)
    assert rules.scan_message(b"\r\n\r\n" + b"a\r\n" * 300 + b"needle\r\n").matched == ("N",)
    assert rules.scan_message(b"\r\n\r\n" + b"a\r\n" * 400 + b"needle\r\n").matched == ()


def test_time_budget_stops_the_scan() -> None:
    ticks = itertools.count()
    rules = RuleSet(
        [Rule("LATE", "body", re.compile("late"), 1)],
        time_budget=10,
        clock=lambda: float(next(ticks)),  # one "second" per line searched
    )
    scan = rules.scanner()
    scan.end_of_headers()
    scan.feed(b"line\r\n" * 50 + b"late\r\n")
    result = scan.finish()
    assert not result.complete
    assert result.matched == ()
    assert "time budget" in result.detail


def test_scanning_stops_once_every_body_rule_matched() -> None:
    rules = ruleset(A=("body", "alpha", 1.0))
    scan = rules.scanner()
    scan.end_of_headers()
    scan.feed(b"alpha\r\n")
    scan.feed(b"x" * 10_000_000)  # ignored: nothing left to find
    assert scan.finish().matched == ("A",)


def test_rules_sharing_a_group_name_still_work() -> None:
    rules = ruleset(A=("body", r"(?P<g>alpha)", 1.0), B=("body", r"(?P<g>beta)", 1.0))
    assert rules.scan_message(b"\r\n\r\nbeta alpha\r\n").matched == ("A", "B")


def test_overlap_must_be_below_line_cap() -> None:
    with pytest.raises(ValueError, match="overlap"):
        RuleSet([], line_cap=100, overlap=100)


# --- the literal pre-filter never hides a match ----------------------------------------

ATOMS = ["a", "b", "k", "s", "i", "ab", "Sk", "[ab]", ".", r"\s", r"\b", "$", "^"]


@st.composite
def patterns(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["atom", "atom", "group", "alt"] if depth < 2 else ["atom"]))
        if kind == "atom":
            part = draw(st.sampled_from(ATOMS))
        elif kind == "group":
            part = f"(?:{draw(patterns(depth + 1))})"
        else:
            part = f"(?:{draw(patterns(depth + 1))}|{draw(patterns(depth + 1))})"
        parts.append(part + draw(st.sampled_from(["", "", "?", "*", "+", "{2}", "{1,3}"])))
    return "".join(parts)


@settings(max_examples=300, deadline=None)
@given(
    pattern=patterns(),
    ignore_case=st.booleans(),
    text=st.text(alphabet="abkisABKIS \u017f\u212a\u0130\u0131-", max_size=30),
)
def test_required_literals_never_exclude_a_match(
    pattern: str, ignore_case: bool, text: str
) -> None:
    try:
        compiled = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error:
        return
    needles = required_literals(compiled)
    if needles is None or compiled.search(text) is None:
        return
    hay = _fold(text) if ignore_case else text
    assert any(needle in hay for needle in needles), (pattern, needles, text)
