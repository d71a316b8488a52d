"""The manual pages: ``smtpguard(8)`` from the command line parser and
``smtpguard.toml(5)`` from the sample configuration's comments.

Both are generated, so they cannot drift from what they describe: the command page
walks :func:`smtpguard.cli.build_parser` (every subcommand, option and help text), the
configuration page reads ``conf/smtpguard.toml``, whose comments are the reference of
every option (each key with its default and the comment block above it). The pages
are committed in ``contrib/man/`` (``scripts/start.sh`` installs them), and a test
regenerates them and compares: after a change to the parser or the sample, run::

    python -m smtpguard.manpage --sample conf/smtpguard.toml --out contrib/man
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from smtpguard import __version__

#: ``.TH`` footer: the version alone, no date, so that regenerating the same tree gives
#: the same pages.
_SOURCE: Final = f"smtpguard {__version__}"

# The sections of smtpguard(8) that the parser does not hold. Facts from
# smtpguard.signals and smtpguard.supervisor (signals), smtpguard.cli (environment,
# default config) and scripts/start.sh and contrib/systemd (files).


def _signals() -> list[tuple[str, str]]:
    """The SIGNALS section; the settings a reload refuses from the list it checks."""
    from smtpguard.signals import RELOAD_SIGNAL, STOP_SIGNAL  # noqa: PLC0415
    from smtpguard.supervisor import RESTART_ONLY  # noqa: PLC0415  (it loads pymilter)

    restart = ", ".join(f"{section}.{key}" for section, keys in RESTART_ONLY for key in keys)
    return [
        (
            f"SIGHUP, {RELOAD_SIGNAL.name}",
            "Reload: the configuration and every file it names are read again and"
            " checked first; a configuration that does not load changes nothing (the log"
            " says why). Sessions in flight finish under the settings they began with."
            f" A reload that changes a setting needing a restart ({restart}) is refused."
            f" The shipped systemd unit's reload sends {RELOAD_SIGNAL.name}.",
        ),
        (
            f"SIGTERM, SIGINT, {STOP_SIGNAL.name}",
            "Stop: no new session is taken, the sessions in flight may finish, then the"
            " socket is removed. With several workers the supervisor stops every worker."
            f" The shipped systemd unit's stop sends {STOP_SIGNAL.name}.",
        ),
    ]


_ENVIRONMENT: Final = [
    ("SMTPGUARD_CONFIG", "The configuration file when -c is not given."),
    (
        "PROMETHEUS_MULTIPROC_DIR",
        "With several workers and metrics on: the directory of the workers' metric"
        " files (default: one made under $RUNTIME_DIRECTORY or /tmp, and removed at"
        " the end).",
    ),
]
_FILES: Final = [
    ("/etc/smtpguard/smtpguard.toml", "The configuration (smtpguard.toml(5))."),
    (
        "/opt/smtpguard/",
        "What scripts/start.sh installs: the program in venv/, the sample configuration"
        " in conf/, the shipped rules in rules/, contrib/ (systemd unit, Postfix and"
        " Sendmail snippets, these pages).",
    ),
    (
        "/var/lib/smtpguard/",
        "The embedded directory (directory.path) and state (state.path) files.",
    ),
    (
        "/var/spool/postfix/smtpguard/smtpguard.sock",
        "The default milter socket, inside Postfix's chroot.",
    ),
]
_SEE_ALSO: Final = "smtpguard.toml(5), postconf(5), postconf(1), sendmail(8), systemctl(1)"


def escape(text: str) -> str:
    """``text`` as roff input: backslashes and hyphens escaped, and a line that would
    begin with a control character (``.`` or ``'``) made plain text."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n")
    )


def _quoted(text: str) -> str:
    """An argument of a roff request, in double quotes."""
    return '"' + escape(text).replace('"', '""') + '"'


def _header(name: str, section: int, title: str) -> list[str]:
    return [
        f'.TH {name.upper()} {section} "" {_quoted(_SOURCE)} {_quoted(title)}',
        # Left-aligned, not hyphenated: option names and addresses must read as written.
        # groff's man macros hyphenate again at each page trap with the HY register.
        ".nr HY 0",
        ".ad l",
        ".nh",
    ]


def _paragraphs(items: Sequence[tuple[str, str]]) -> list[str]:
    out: list[str] = []
    for term, text in items:
        out += [".TP", f"\\fB{escape(term)}\\fR", escape(text)]
    return out


# --- smtpguard(8) ------------------------------------------------------------------


def _subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    """Every subcommand below ``parser``, depth first: its words after the program's
    name, its parser and its one-line help."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, child in action.choices.items():
            yield name, child, helps.get(name, "")
            for words, grandchild, help_text in _subcommands(child):
                yield f"{name} {words}", grandchild, help_text


def _argument(action: argparse.Action) -> tuple[str, str] | None:
    """An option's or positional argument's term and text; None for -h and the
    subcommand list."""
    if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
        return None
    if action.option_strings:
        term = ", ".join(action.option_strings)
        if action.nargs != 0:
            term += " " + (str(action.metavar) if action.metavar else action.dest.upper())
    else:
        term = str(action.metavar) if action.metavar else action.dest
        if action.nargs in ("*", "+"):
            term += " ..."
    parts = [_sentence(action.help or "")]
    if action.choices is not None and not isinstance(action.choices, dict):
        parts.append("One of: " + ", ".join(map(str, action.choices)) + ".")
        if action.default is not None and action.default in action.choices:
            parts.append(f"Default: {action.default}.")
    if action.required and action.option_strings:
        parts.append("Required.")
    return term, " ".join(filter(None, parts))


def _sentence(text: str) -> str:
    """argparse's help phrase as a sentence of the page."""
    text = text.strip()
    if not text:
        return ""
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _usage(parser: argparse.ArgumentParser) -> str:
    """The parser's usage on one line, a list of subcommands as COMMAND (they follow,
    each in its own section)."""
    usage = parser.format_usage().removeprefix("usage: ").strip()
    usage = re.sub(r"\s+", " ", usage)
    return re.sub(r"\{[a-z,-]+\} \.\.\.", "COMMAND ...", usage)


def command_page(parser: argparse.ArgumentParser) -> str:
    """smtpguard(8), from the program's parser."""
    out = _header("smtpguard", 8, "System Administration")
    out += [
        ".SH NAME",
        "smtpguard \\- " + escape("policy milter for Postfix and Sendmail"),
        ".SH SYNOPSIS",
        f".B {escape(_usage(parser))}",
        ".SH DESCRIPTION",
        escape(parser.description or ""),
        ".PP",
        escape(
            "smtpguard run serves the libmilter protocol on the socket of the"
            " configuration's [milter] table; Postfix names it in smtpd_milters,"
            " Sendmail in INPUT_MAIL_FILTER (smtpguard postfix-config and"
            " sendmail-config print the lines). Each refusal is answered with the"
            " reply table's code, enhanced status code (RFC 3463) and text."
        ),
        ".SH OPTIONS",
    ]
    for action in parser._actions:
        argument = _argument(action)
        if argument is not None:
            out += _paragraphs([argument])
    out.append(".SH COMMANDS")
    for words, child, help_text in _subcommands(parser):
        out += [f".SS {_quoted('smtpguard ' + words)}", escape(_sentence(help_text))]
        if child.description:
            out += [".PP", escape(child.description)]
        arguments = [a for a in map(_argument, child._actions) if a is not None]
        if not any(isinstance(a, argparse._SubParsersAction) for a in child._actions):
            out += [".PP", f"Usage: {escape(_usage(child))}"]
        out += _paragraphs(arguments)
    out += [".SH SIGNALS", *_paragraphs(_signals())]
    out += [".SH ENVIRONMENT", *_paragraphs(_ENVIRONMENT)]
    out += [".SH FILES", *_paragraphs(_FILES)]
    out += [".SH EXIT STATUS", *_exit_status(parser.epilog or "")]
    out += [".SH SEE ALSO", escape(_SEE_ALSO)]
    return "\n".join(out) + "\n"


def _exit_status(epilog: str) -> list[str]:
    """The parser's "exit codes:" epilog (code, then its text over indented lines)."""
    items: list[tuple[str, str]] = []
    for line in epilog.splitlines()[1:]:
        code = re.match(r"\s*(\d+)\s+(.*)", line)
        if code:
            items.append((code.group(1), code.group(2)))
        elif items and line.strip():
            items[-1] = (items[-1][0], items[-1][1] + " " + line.strip())
    return _paragraphs(items)


# --- smtpguard.toml(5) -------------------------------------------------------------


@dataclass
class _Table:
    name: str
    intro: list[str] = field(default_factory=list)
    #: Each key's line and the comment above it; a line "" is a note of the table's
    #: own (a comment after its last key).
    keys: list[tuple[str, list[str]]] = field(default_factory=list)


_TABLE: Final = re.compile(r"^\[\[?([^\]]+)\]\]?\s*$")
_KEY: Final = re.compile(r"^([A-Za-z0-9_.\"-]+)\s*=\s*(.*)$")


class _Reader:
    """The sample read line by line. A comment block is a run of paragraphs (comment
    lines, a blank line between two). Above a key, the whole block is the key's text.
    Above a table header, the paragraph that touches the header is the table's
    introduction and those before it are notes of the table before; a note that shows
    an example of a table of its own (``# [domain."example.com"]``, ``#
    [[policy.exempt]]``) is that table's section."""

    def __init__(self) -> None:
        self.preamble: list[str] = []
        self.tables: list[_Table] = []
        self.paragraphs: list[list[str]] = []
        self.touching = False

    def comment(self, line: str) -> None:
        text = line[2:] if line.startswith("# ") else line[1:]
        if not self.touching:
            self.paragraphs.append([])
        self.paragraphs[-1].append(text)
        self.touching = True

    def blank(self) -> None:
        self.touching = False

    def key(self, line: str) -> None:
        if not self.tables:
            raise ValueError(f"a key before any table: {line!r}")
        text = _joined(self.paragraphs)
        # A key left commented out (``# workers = 2``: its default applies) is an entry
        # of its own with the text above it, the rest is the next key's (review rev214
        # M2: cpu_affinity showed the workers text). Not in an example table's block.
        if not any(map(_example_table, text)):
            commented = [i for i, t in enumerate(text) if _KEY.match(t) and _is_example(t)]
            if commented:
                at = commented[-1]
                self.tables[-1].keys.append(("# " + text[at], _trimmed(text[:at])))
                text = _trimmed(text[at + 1 :])
        self.tables[-1].keys.append((line, text))
        self.paragraphs, self.touching = [], False

    def table(self, name: str) -> None:
        intro = self.paragraphs.pop() if self.paragraphs and self.touching else []
        self.notes()
        self.tables.append(_Table(name, intro=intro))
        self.touching = False

    def notes(self) -> None:
        for paragraph in self.paragraphs:
            if not self.tables:
                self.preamble += [*paragraph, ""]
                continue
            sections = _examples(paragraph)
            if not sections:
                self.tables[-1].keys.append(("", paragraph))
            for name, lines in sections:
                self.tables.append(_Table(name, intro=lines))
        self.paragraphs = []


def _examples(paragraph: list[str]) -> list[tuple[str, list[str]]]:
    """A note cut into one section per example table it shows: each section the text
    before its example, the example, and (the last one) the text after it."""
    sections: list[tuple[str, list[str]]] = []
    start = 0
    headers = [i for i, line in enumerate(paragraph) if _example_table(line)]
    for n, at in enumerate(headers):
        end = headers[n + 1] if n + 1 < len(headers) else len(paragraph)
        # The example ends at the first line that is not TOML: the text after it
        # introduces the next example (or ends the last section).
        stop = at + 1
        while stop < end and _is_example(paragraph[stop]):
            stop += 1
        if n + 1 == len(headers):
            stop = end
        sections.append((paragraph[at].strip(), paragraph[start:stop]))
        start = stop
    return sections


def _joined(paragraphs: list[list[str]]) -> list[str]:
    out: list[str] = []
    for paragraph in paragraphs:
        out += [*([""] if out else []), *paragraph]
    return out


def _read_sample(text: str) -> tuple[list[str], list[_Table]]:
    """The sample's opening comment and its tables (see :class:`_Reader`)."""
    reader = _Reader()
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith("#"):
            reader.comment(line)
        elif not line:
            reader.blank()
        elif table := _TABLE.match(line):
            reader.table(table.group(0).strip())
        elif _KEY.match(line):
            reader.key(line)
        else:
            raise ValueError(f"a line the sample's shape does not have: {line!r}")
    reader.notes()
    return _trimmed(reader.preamble), reader.tables


def _trimmed(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


#: A row of a table in a comment: indented, a term (words one space apart), two
#: spaces or more, its text.
_ROW: Final = re.compile(r"^( +)(\S(?:.*?\S)?)  +(\S.*)$")


def _column(lines: Sequence[str]) -> tuple[int, int] | None:
    """The indent and text column of the table of terms in ``lines`` (the most common
    among its rows), or None."""
    found = collections.Counter(
        (len(m.group(1)), m.start(3)) for m in map(_ROW.match, lines) if m is not None
    )
    return found.most_common(1)[0][0] if found else None


def _row(line: str, column: tuple[int, int] | None) -> tuple[int, str, str] | None:
    """A row's indent, term and text: at the table's column where the line has a word
    starting there (a term that fills its column is one space short of two), else up
    to its first two spaces."""
    if column is not None:
        indent, col = column
        if (
            len(line) > col
            and line[:indent].isspace()
            and not line[indent].isspace()
            and line[col - 1] == " "
            and not line[col].isspace()
        ):
            return indent, line[indent:col].strip(), line[col:]
    row = _ROW.match(line)
    return (len(row.group(1)), row.group(2), row.group(3)) if row else None


def _example_table(line: str) -> bool:
    """A commented-out table header (``# [[policy.exempt]]``)."""
    return _TABLE.match(line) is not None and _is_example(line)


def _is_example(line: str) -> bool:
    """A commented-out line of TOML (``# workers = 2``, ``# [[policy.exempt]]``): it
    parses as TOML on its own, where prose that starts like it does not."""
    if not line or line[0].isspace():
        return False
    try:
        tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return False
    return True


def _text(lines: Sequence[str]) -> list[str]:
    """Comment lines as man text: prose filled, an empty line a new paragraph, a table
    of terms (``#   ips    IPv4/IPv6 ...`` and its deeper-indented continuation lines)
    as an indented list, commented-out TOML as an example, as written."""
    out: list[str] = []
    rows: list[tuple[int, str, str]] = []
    example: list[str] = []
    column = _column(lines)

    def flush() -> None:
        if rows:
            out.append(".RS")
            for _, term, text in rows:
                out.extend([".TP", f"\\fB{escape(term)}\\fR", escape(text)])
            out.append(".RE")
            rows.clear()
        if example:
            out.extend([".PP", ".EX", *map(escape, example), ".EE", ".PP"])
            example.clear()

    for line in lines:
        # A line indented deeper than the row before it goes on with that row's text,
        # whatever spaces it has inside (review rev214 M1).
        deeper = bool(rows) and bool(line.strip()) and len(line) - len(line.lstrip()) > rows[-1][0]
        row = None if deeper else _row(line, column)
        if deeper:
            indent, term, text = rows[-1]
            rows[-1] = (indent, term, f"{text} {line.strip()}")
        elif row:
            if example:
                flush()
            rows.append(row)
        elif _is_example(line):
            if rows:
                flush()
            example.append(line)
        else:
            flush()
            out.append(".PP" if not line.strip() else escape(line.strip()))
    flush()
    while out and out[-1] == ".PP":
        out.pop()
    return out


def config_page(sample: str) -> str:
    """smtpguard.toml(5), from the sample configuration's text."""
    preamble, tables = _read_sample(sample)
    out = _header("smtpguard.toml", 5, "File Formats")
    out += [
        ".SH NAME",
        "smtpguard.toml \\- " + escape("smtpguard configuration file"),
        ".SH DESCRIPTION",
        *_text(preamble),
        ".PP",
        escape(
            "The file is TOML. Below, every table and key as the sample"
            " configuration (conf/smtpguard.toml) lists it, with its default value"
            " and what it does. smtpguard check-config validates a file against all of"
            " it."
        ),
    ]
    for table in tables:
        out += [".SH " + _quoted(table.name)]
        out += _text(_trimmed(table.intro))
        for line, comment in table.keys:
            if not line:
                out += [".PP", *_text(comment)]
                continue
            out += [".TP", f"\\fB{escape(line)}\\fR", *_text(comment)]
    out += [".SH SEE ALSO", escape("smtpguard(8)")]
    return "\n".join(out) + "\n"


def render(sample: Path) -> dict[str, str]:
    """Both pages by file name."""
    from smtpguard.cli import build_parser  # noqa: PLC0415 - the CLI imports much

    return {
        "smtpguard.8": command_page(build_parser()),
        "smtpguard.toml.5": config_page(sample.read_text(encoding="utf-8")),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smtpguard.manpage", description=__doc__)
    parser.add_argument("--sample", type=Path, required=True, help="conf/smtpguard.toml")
    parser.add_argument("--out", type=Path, required=True, help="directory to write to")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in render(args.sample).items():
        (args.out / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
