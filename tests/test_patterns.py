"""The one matcher (RE2) for operator and rules/ patterns, and every source that uses it."""

from __future__ import annotations

import ipaddress
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.address import parse_path
from smtpguard.app import load
from smtpguard.checks import Event, Services
from smtpguard.checks.client_host import generic_match
from smtpguard.checks.sender import SenderDeny
from smtpguard.config import default_rules_dir
from smtpguard.explain import load_knowledge
from smtpguard.patterns import Pattern, PatternError, PatternSet, compile_pattern
from smtpguard.scanners.rules import RuleSet
from smtpguard.session import Connection, Transaction
from support.configs import write_config
from support.fakes import FakeBlacklist, FakeDirectory

# --- the matcher ---------------------------------------------------------------------


def test_search_and_fullmatch() -> None:
    pattern = compile_pattern(r"b+")
    assert pattern.search("abbc")
    assert not pattern.search("ac")
    assert not pattern.fullmatch("abbc")
    assert pattern.fullmatch("bbb")
    assert compile_pattern(r"^x$").search("x")
    assert not compile_pattern(r"^x$").search("x\n")  # $ is the end of the text


def test_ignore_case_is_unicode_aware() -> None:
    assert compile_pattern("kelvin", ignore_case=True).search("\u212aELVIN")  # Kelvin sign
    assert compile_pattern("straße", ignore_case=True).search("STRAẞE")
    assert not compile_pattern("kelvin").search("KELVIN")


def test_text_is_utf8_and_surrogate_escapes_do_not_raise() -> None:
    assert compile_pattern(r"发票").search("代开发票")
    assert compile_pattern(r"^\p{Han}+$").search("中文")
    # pymilter hands undecodable header octets over as surrogate escapes.
    assert compile_pattern(r"caf.x").search("caf\udcc3x") is False
    assert compile_pattern(r"caf").search("caf\udcc3\udca9")


@pytest.mark.parametrize(
    ("source", "why"),
    [
        (r"(a)\1", "backreferences are not supported"),
        (r"(?P<w>a)(?P=w)", "backreferences are not supported"),
        (r"(?=a)b", "lookahead is not supported"),
        (r"(?!a)b", "lookahead is not supported"),
        (r"(?<=a)b", "lookbehind is not supported"),
        (r"(?<!a)b", "lookbehind is not supported"),
        (r"(?>a)", "atomic groups are not supported"),
        (r"(a)?(?(1)b|c)", "conditional groups are not supported"),
        (r"a++", "possessive quantifiers are not supported"),
        (r"end\Z", "\\z"),
        (r"a{1001}", "at most 1000"),
        (r"(?:a{100}){100}", "at most 1000"),
        (r"\pL{1000}", "8 MiB"),
        (r"(unclosed", "missing )"),
        ("a\0b", "NUL"),
    ],
)
def test_what_re2_cannot_compile(source: str, why: str) -> None:
    with pytest.raises(PatternError) as caught:
        compile_pattern(source)
    assert why in str(caught.value)


def test_patterns_compare_by_source_and_flags() -> None:
    assert compile_pattern("a") == Pattern("a")
    assert compile_pattern("a") != Pattern("a", ignore_case=True)
    assert len({Pattern("a"), Pattern("a")}) == 1


SOURCES = ["ab", "b+c", "^a", "c$", "[ab]{2}", "(?:ab|ba)c", "a.c", r"\bab\b", "x|ab", "k"]


@settings(max_examples=400, deadline=None)
@given(
    chosen=st.lists(st.sampled_from(SOURCES), min_size=1, max_size=6),
    ignore_case=st.lists(st.booleans(), min_size=6, max_size=6),
    lines=st.lists(st.text(alphabet="abcxkAK\u212a \n", max_size=12), max_size=4),
)
def test_pattern_set_agrees_with_single_patterns(
    chosen: list[str], ignore_case: list[bool], lines: list[str]
) -> None:
    """A set finds exactly what its patterns find one by one, and its candidates for a
    block hold every pattern that matches any line of it (the rule scanner's filter)."""
    patterns = [Pattern(s, ignore_case=i) for s, i in zip(chosen, ignore_case, strict=False)]
    group = PatternSet(patterns)
    block = "\n".join(lines)
    candidates = set(group.candidates(block))
    for text in [block, *lines]:
        found = group.search(text)
        assert found == [i for i, p in enumerate(patterns) if p.search(text)]
        assert set(found) <= candidates


def test_empty_pattern_set() -> None:
    assert PatternSet([]).search("anything") == []
    assert PatternSet([]).candidates("anything") == []


# --- every pattern source runs in linear time ------------------------------------------

#: The textbook catastrophic pattern: with a backtracking engine, each further "a" in a
#: run that does not end the text doubles the work (24 of them: 1.7 s per MAIL FROM).
CATASTROPHIC = "(a+)+$"
#: 30 characters that make it backtrack: a run of "a" followed by something else.
HOSTILE = "a" * 29 + "!"
LIMIT = 0.05  # seconds, for one match of the 30-character input


def sender_deny(tmp_path: Path) -> Callable[[], object]:
    config = load(write_config(tmp_path, f"[policy]\nsender_deny = ['/{CATASTROPHIC}/']\n"))
    check = SenderDeny(Services(config, FakeDirectory(), FakeBlacklist()))
    address = "a" * 24 + "@x.org"  # 30 characters; searched lower-cased
    assert len(address) == len(HOSTILE)
    conn = Connection(session_id="t.1", client_ip=None, client_port=None, client_name="")
    conn.txn = Transaction(sender=parse_path(f"<{address}>"), sender_raw=address, esmtp={})
    return lambda: check(conn, Event())


def antispam_rules(tmp_path: Path) -> Callable[[], object]:
    path = tmp_path / "antispam.toml"
    path.write_text(
        f"[[rule]]\nname = 'X'\npart = 'body'\npattern = '{CATASTROPHIC}'\nscore = 1\n",
        encoding="utf-8",
    )
    rules = RuleSet.load(path)
    message = b"Subject: x\r\n\r\n" + HOSTILE.encode() + b"\r\n"
    return lambda: rules.scan_message(message)


def generic_ptr(tmp_path: Path) -> Callable[[], object]:
    patterns_file = tmp_path / "generic.toml"
    patterns_file.write_text(
        f"[[pattern]]\nname = 'x'\nregex = '{CATASTROPHIC}'\n", encoding="utf-8"
    )
    config = load(write_config(tmp_path, f"[smtpport]\ngeneric_patterns = '{patterns_file}'\n"))
    generic = config.smtpport.generic
    assert generic is not None
    ip = ipaddress.IPv4Address("192.0.2.1")
    return lambda: generic_match(generic, HOSTILE, ip)


def explain_rules(tmp_path: Path) -> Callable[[], object]:
    shipped = (default_rules_dir() / "explain.toml").read_text(encoding="utf-8")
    first = shipped.index("\n[[rule]]\n") + 1
    rule = (
        f"[[rule]]\nid = 'hostile'\ncategory = 'unknown'\ntext = '{CATASTROPHIC}'\n"
        "source = 'generic'\n\n"
    )
    path = tmp_path / "explain.toml"
    path.write_text(shipped[:first] + rule + shipped[first:], encoding="utf-8")
    shutil.copy(default_rules_dir() / "replies.toml", tmp_path / "replies.toml")
    knowledge = load_knowledge(path)
    line = "550 " + HOSTILE[4:]
    assert len(line) == len(HOSTILE)
    return lambda: knowledge.explain(line)


@pytest.mark.parametrize(
    "source", [sender_deny, antispam_rules, generic_ptr, explain_rules], ids=lambda f: f.__name__
)
def test_catastrophic_pattern_is_accepted_and_linear(
    tmp_path: Path, source: Callable[[Path], Callable[[], object]]
) -> None:
    match = source(tmp_path)
    match()  # first call: lazy set-up (RE2 builds its DFA on demand)
    start = time.perf_counter()
    match()
    assert time.perf_counter() - start < LIMIT


def test_a_backtracking_engine_would_not_be() -> None:
    """What the test above guards against, measured: Python's re on 20 of the 29 "a"s
    already takes ~100 ms (twice as long per further "a")."""
    start = time.perf_counter()
    re.search(CATASTROPHIC, HOSTILE[9:])
    assert time.perf_counter() - start > LIMIT / 10


# --- the shipped rules/ patterns compile ------------------------------------------------


def test_every_shipped_rules_file_loads(tmp_path: Path) -> None:
    """Each rules/*.toml with patterns compiles under RE2 (a loader error names the key)."""
    rules = default_rules_dir()
    assert RuleSet.load(rules / "antispam.toml").rules
    assert load_knowledge(rules / "explain.toml").rules
    generic = load(write_config(tmp_path, "")).smtpport.generic  # rules/generic_ptr.toml
    assert generic is not None
    assert generic.patterns
