"""The manual pages (smtpguard.manpage): the committed pages are what the parser and
the sample make, groff renders them without a warning, and nothing of the sample is
left out."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from smtpguard.cli import build_parser
from smtpguard.manpage import _read_sample, _text, escape, render
from smtpguard.signals import SERVICE_SIGNALS
from smtpguard.supervisor import RESTART_ONLY

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "conf" / "smtpguard.toml"
PAGES = ROOT / "contrib" / "man"


def test_the_committed_pages_are_the_generated_ones() -> None:
    for name, text in render(SAMPLE).items():
        committed = (PAGES / name).read_text(encoding="utf-8")
        assert committed == text, (
            f"contrib/man/{name} is out of date: run"
            " python -m smtpguard.manpage --sample conf/smtpguard.toml --out contrib/man"
        )


@pytest.mark.parametrize("name", ["smtpguard.8", "smtpguard.toml.5"])
def test_groff_renders_the_page_without_a_warning(name: str) -> None:
    groff = shutil.which("groff")
    assert groff, "groff is missing: scripts/test.sh installs groff-base"
    done = subprocess.run(
        [groff, "-k", "-man", "-ww", "-Tutf8", "-P-cbou", "-rLL=80n", str(PAGES / name)],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    text = done.stdout.decode()
    # Not hyphenated: option names and addresses read as written.
    assert "\u2010\n" not in text
    if name == "smtpguard.toml.5":
        assert "count_bounces = false" in text
        assert "发送过多长度类似信件" not in text  # the sample has no reply texts
        assert '[domain."example.com"]' in text


def _subcommands(parser: argparse.ArgumentParser, words: str = "") -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.append(f"{words}{name}")
                out += _subcommands(child, f"{words}{name} ")
    return out


def test_every_subcommand_and_option_has_its_place() -> None:
    page = render(SAMPLE)["smtpguard.8"]
    commands = _subcommands(build_parser())
    assert {"run", "check-config", "blacklist add", "directory import"} <= set(commands)
    for words in commands:
        assert f'.SS "smtpguard {escape(words)}"' in page
    for option in ("--offline", "--config-directory", "--if-new", "--log FILE", "--json"):
        assert f"\\fB{escape(option)}" in page
    for section in ("SIGNALS", "ENVIRONMENT", "FILES", "EXIT STATUS", "SEE ALSO"):
        assert f".SH {section}" in page


def test_the_signals_are_every_signal_the_service_takes() -> None:
    """Review rev215 F2: SIGUSR1 and SIGUSR2 (the systemd unit's reload and stop) were
    missing, and the settings a reload refuses were four of fifteen."""
    page = render(SAMPLE)["smtpguard.8"]
    signals = page.split(".SH SIGNALS", 1)[1].split(".SH ", 1)[0]
    for name in SERVICE_SIGNALS:
        assert name.name in signals
    for section, keys in RESTART_ONLY:
        for key in keys:
            assert f"{section}.{escape(key)}" in signals


def _keys(table: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in table.items():
        if isinstance(value, dict):
            out |= _keys(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def test_every_key_of_the_sample_is_described() -> None:
    """The reader keeps every key the sample sets, under its own table."""
    text = SAMPLE.read_text(encoding="utf-8")
    _, tables = _read_sample(text)
    read = {
        f"{table.name.strip('[]')}.{line.split('=')[0].strip()}"
        for table in tables
        for line, _ in table.keys
        if line and not line.startswith("#")
    }
    assert read == _keys(tomllib.loads(text))


def test_escape() -> None:
    assert escape(".TH not a request") == "\\&.TH not a request"
    assert escape("'quoted") == "\\&'quoted"
    assert escape("a\\b -c") == "a\\eb \\-c"
    assert escape("one\n.two") == "one\n\\&.two"


def test_comment_text_shapes() -> None:
    lines = [
        'Prose that says relay_control = "postfix", as written,',
        "and goes on.",
        "",
        "Match keys:",
        "  ips             IPv4/IPv6 addresses",
        "  ip_files        allow-list files, one per",
        "                  line",
        "[[policy.exempt]]",
        'name = "partner"',
    ]
    assert _text(lines) == [
        'Prose that says relay_control = "postfix", as written,',
        "and goes on.",
        ".PP",
        "Match keys:",
        ".RS",
        ".TP",
        "\\fBips\\fR",
        "IPv4/IPv6 addresses",
        ".TP",
        "\\fBip_files\\fR",
        "allow\\-list files, one per line",
        ".RE",
        ".PP",
        ".EX",
        "[[policy.exempt]]",
        'name = "partner"',
        ".EE",
    ]


def test_rows_whose_term_fills_its_column_and_terms_of_several_words() -> None:
    """Review rev213 F3: "answers accepted ..." (one space after a term as wide as its
    column) and "languages, form" ran into the prose."""
    lines = [
        "Per zone:",
        "  name    the zone",
        "  answers accepted answer codes: addresses",
        "          or networks",
        "  languages, form  reply languages",
    ]
    assert _text(lines) == [
        "Per zone:",
        ".RS",
        ".TP",
        "\\fBname\\fR",
        "the zone",
        ".TP",
        "\\fBanswers\\fR",
        "accepted answer codes: addresses or networks",
        ".TP",
        "\\fBlanguages, form\\fR",
        "reply languages",
        ".RE",
    ]


def test_a_note_with_two_examples_is_two_sections() -> None:
    """Review rev213 F3: the [[dnsbl.local]] text and example sat under the
    [[dnsbl.zones]] heading."""
    sample = (
        "[dns]\nport = 53\n\n"
        '# Zones.\n# [[dnsbl.zones]]\n# name = "a.example"\n'
        '# Local lists.\n# [[dnsbl.local]]\n# file = "/x"\n\n'
        "[spf]\nreject_softfail = false\n"
    )
    _, tables = _read_sample(sample)
    assert [(t.name, t.intro) for t in tables] == [
        ("[dns]", []),
        ("[[dnsbl.zones]]", ["Zones.", "[[dnsbl.zones]]", 'name = "a.example"']),
        ("[[dnsbl.local]]", ["Local lists.", "[[dnsbl.local]]", 'file = "/x"']),
        ("[spf]", []),
    ]


def test_a_continuation_with_spaces_inside_stays_with_its_row() -> None:
    """Review rev214 M1: "private_list_denied, database_temp_error   (rcpt)" under
    mailbox's row was read as a row of its own."""
    lines = [
        "  rcpt_limit      rcpt_limit                 (rcpt)",
        "  mailbox         mailbox_unavailable, user_locked,",
        "                  private_list_denied, database_temp_error   (rcpt)",
        "  loop            looping_message            (header)",
    ]
    terms = [line for line in _text(lines) if line.startswith("\\fB")]
    assert terms == ["\\fBrcpt_limit\\fR", "\\fBmailbox\\fR", "\\fBloop\\fR"]
    assert "mailbox_unavailable, user_locked, private_list_denied, database_temp_error" in (
        " ".join(_text(lines))
    )


def test_a_key_left_commented_out_is_an_entry_of_its_own() -> None:
    """Review rev214 M2: cpu_affinity's entry showed the workers text."""
    sample = (
        "[milter]\n# Worker processes.\n# workers = 2\n# Binds workers to CPUs.\n"
        'cpu_affinity = "auto"\n'
    )
    _, tables = _read_sample(sample)
    assert tables[0].keys == [
        ("# workers = 2", ["Worker processes."]),
        ('cpu_affinity = "auto"', ["Binds workers to CPUs."]),
    ]
