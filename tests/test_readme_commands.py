"""README.md's command table against the CLI's parsers: a flag the table names must
exist, and postfix-config's row names each of its flags."""

from __future__ import annotations

import argparse
import re

from smtpguard.cli import build_parser
from support.service import ROOT

#: A row of the command table: the command's name and the rest of its synopsis.
ROW = re.compile(r"\| `smtpguard (?:\[-c FILE\] )?([a-z-]+)(.*?)` \|")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # argparse has no public way to list a parser's actions or subcommands.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    """The long options of ``parser`` and of its subcommands, without the global ones."""
    own = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    for child in _subcommands(parser).values():
        own |= _flags(child)
    return own - {"--help", "--config"}


def _rows() -> list[tuple[str, set[str]]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [
        (m.group(1), set(re.findall(r"--[a-z][a-z-]*", m.group(2))))
        for m in map(ROW.match, text.splitlines())
        if m
    ]
    assert rows, "no command table in README.md"
    return rows


def test_every_documented_flag_exists() -> None:
    commands = _subcommands(build_parser())
    for name, documented in _rows():
        assert name in commands, name
        assert documented <= _flags(commands[name]), (name, documented - _flags(commands[name]))


def test_postfix_config_row_names_every_flag() -> None:
    rows = [flags for name, flags in _rows() if name == "postfix-config"]
    assert rows == [_flags(_subcommands(build_parser())["postfix-config"])]
    assert {"--check", "--main-cf", "--non-smtpd-milters", "--config-directory"} <= rows[0]


def test_every_command_and_flag_is_in_the_table() -> None:
    named: dict[str, set[str]] = {}
    for name, flags in _rows():
        named.setdefault(name, set()).update(flags)
    for name, parser in _subcommands(build_parser()).items():
        assert name in named, f"{name} has no row in README.md's command table"
        assert _flags(parser) <= named[name], (name, _flags(parser) - named[name])
