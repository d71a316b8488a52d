"""``smtpguard explain`` starts fast and reads anything: it imports none of the milter's
modules, reads no config file, loads its rules once per process and takes bytes that are
not UTF-8 (in argv, stdin or the locale's output encoding) without a traceback.

Start time itself is measured by bench/explain_log.py, not here (no timed tests)."""

from __future__ import annotations

import codecs
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smtpguard.explain import knowledge
from support.service import RULES

#: Modules only the milter, the admin commands or their backends need.
HEAVY = (
    "Milter",
    "prometheus_client",
    "dns",
    "redis",
    "sqlite3",
    "asyncio",
    "spf",
    "smtpguard.config",
    "smtpguard.app",
    "smtpguard.adapter",
    "smtpguard.checks",
    "smtpguard.metrics",
    "smtpguard.dns",
    "smtpguard.directory",
    "smtpguard.state",
)


def imported(*args: str) -> set[str]:
    """The modules ``smtpguard ARGS`` imports, from ``python -X importtime``."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "smtpguard", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def heavy(names: set[str]) -> list[str]:
    return sorted(n for n in names if n in HEAVY or n.startswith(tuple(f"{h}." for h in HEAVY)))


@pytest.mark.parametrize(
    "args",
    [
        ("explain", "550 5.1.1 user unknown"),
        ("explain", "--json", "--lang", "zh", "421 4.7.0 try again later"),
        ("explain", "--log", os.devnull, "--json"),
    ],
)
def test_explain_imports_none_of_the_milter(args: tuple[str, ...]) -> None:
    names = imported(*args)
    assert "smtpguard.explain" in names
    assert heavy(names) == []


def test_heavy_list_is_not_empty_for_the_milter() -> None:
    """The check above can fail: a command that builds the runtime imports them."""
    names = imported("-c", str(RULES.parent / "conf" / "smtpguard.toml"), "replies")
    assert "smtpguard.config" in heavy(names)


def run(args: list[bytes], *, env: dict[str, str] | None = None, stdin: bytes = b"") -> bytes:
    result = subprocess.run(
        [sys.executable.encode(), b"-m", b"smtpguard", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr
    return result.stdout


def test_explain_reads_no_config_file(tmp_path: Path) -> None:
    broken = tmp_path / "smtpguard.toml"
    broken.write_text("this is [not toml\n")
    expected = run([b"explain", b"550 5.1.1 user unknown"])
    assert run([b"explain", b"550 5.1.1 user unknown"], env={"SMTPGUARD_CONFIG": str(broken)}) == (
        expected
    )
    assert run([b"-c", str(broken).encode(), b"explain", b"550 5.1.1 user unknown"]) == expected
    assert run([b"explain", b"-c", b"/nonexistent.toml", b"550 5.1.1 user unknown"]) == expected


def test_explain_takes_a_rules_dir(tmp_path: Path) -> None:
    out = run([b"explain", b"--json", b"--rules-dir", str(RULES).encode(), b"550 5.1.1 x"])
    assert json.loads(out)["category"] == "unknown_recipient"
    missing = subprocess.run(
        [sys.executable, "-m", "smtpguard", "explain", "--rules-dir", str(tmp_path), "550 x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("smtpguard: configuration error: ")
    assert "explain.toml" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize(
    "reply",
    [
        b"550 5.1.1 \xff\xfe user unknown",
        b"\x80\x81\x82",
        b"554 \xe6\x8b\x92\xe7\xbb\x9d \xed\xa0\x80 surrogate",
        # argv cannot carry NUL; stdin can (test_explain_log.py).
        b"550 5.7.1 \x1b[31mred\x1b[0m \x7f del",
    ],
)
@pytest.mark.parametrize("output", ["utf-8", "ascii"])
def test_explain_any_bytes_in_argv(reply: bytes, output: str) -> None:
    env = {"PYTHONIOENCODING": output}
    text = run([b"explain", b"--lang", b"zh", reply], env=env)
    assert text.startswith("回复".encode() if output == "utf-8" else b"\\u56de\\u590d")
    data = json.loads(run([b"explain", b"--json", reply], env=env))
    assert data["category"]


def test_explain_log_any_bytes_on_stdin_and_in_its_name(tmp_path: Path) -> None:
    name = os.fsencode(tmp_path) + b"/mail-\xff.log"
    line = (
        b"Dec  2 18:00:01 mx postfix/smtp[1]: 4A: to=<b\xffb@example.com>, relay=none,"
        b" dsn=5.1.1, status=bounced (host h said: 550 5.1.1 \xfe\xff unknown (in reply to"
        b" RCPT TO command))\n"
    )
    Path(os.fsdecode(name)).write_bytes(line)
    for source, stdin in ((name, b""), (b"-", line)):
        for env in ({}, {"PYTHONIOENCODING": "ascii"}):
            out = run([b"explain", b"--log", source, b"--lang", b"zh"], env=env, stdin=stdin)
            assert b"1" in out.splitlines()[0]
            summary = json.loads(run([b"explain", b"--log", source, b"--json"], stdin=stdin))
            assert summary["bounced"] == 1


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig"])
def test_explain_reads_a_reply_saved_with_a_byte_order_mark(encoding: str) -> None:
    """Review rev207 F7: a bounce saved by Notepad as UTF-16 was "Unknown reply"."""
    text = "550 5.1.1 mailbox unavailable. (邮箱不存在)\r\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    found = json.loads(run([b"explain", b"--json", b"-"], stdin=data))
    assert found["reply_id"] == "mailbox_unavailable"


def test_rules_load_once_per_process() -> None:
    assert knowledge() is knowledge()
    assert knowledge(RULES) is knowledge()


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_config_that_is_no_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    """Review rev179 F8: -c /dev/zero read until memory ran out, a FIFO hung."""
    path = Path("/dev/zero")
    if kind == "fifo":
        path = tmp_path / "fifo.toml"
        os.mkfifo(path)
    done = subprocess.run(
        [sys.executable, "-m", "smtpguard", "-c", str(path), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == f"{path}: cannot read file: not a regular file\n"
