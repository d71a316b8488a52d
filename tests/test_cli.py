"""CLI conventions: exit codes, -c anywhere, a closed pipe or descriptor, one-line
failures, output encodings."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from support.postfix import write_settled
from support.service import ROOT, Site, make_site, run_cli, smtpguard

SAMPLE = ROOT / "conf" / "smtpguard.toml"


def test_config_option_before_or_after_the_subcommand() -> None:
    before = run_cli("-c", str(SAMPLE), "replies")
    after = run_cli("replies", "-c", str(SAMPLE))
    assert before.returncode == after.returncode == 0, after.stderr
    assert before.stdout == after.stdout
    assert "host_denies_relay" in after.stdout


@pytest.mark.parametrize(
    ("utf8", "mta", "chinese"),
    [("always", "auto", True), ("never", "auto", False), ("always", "sendmail", False)],
)
def test_replies_are_printed_as_the_utf8_policy_sends_them(
    tmp_path: Path, utf8: str, mta: str, chinese: bool
) -> None:
    """Review rev140 F4, rev142 F3: with utf8 = "never", or towards Sendmail, the
    table's Chinese was printed, which no client gets."""
    extra = {"replies": {"languages": ["zh"], "utf8": utf8}, "milter": {"mta": mta}}
    site = make_site(tmp_path, extra, directory=False)
    shown = smtpguard(site, "replies").stdout
    rbl = next(line for line in shown.splitlines() if line.startswith("rbl_deny "))
    assert ("拒绝" in rbl) is chinese, rbl
    assert rbl.isascii() is not chinese
    ascii_form = smtpguard(site, "replies", "--ascii").stdout
    assert ascii_form.isascii()
    if not chinese:
        assert shown == ascii_form


def test_usage_error_and_help_name_the_exit_codes() -> None:
    assert run_cli("no-such-command").returncode == 2
    help_text = run_cli("--help").stdout
    assert "exit codes:" in help_text
    assert "2  usage or configuration error" in help_text
    ones = " ".join(help_text.partition("\n  1  ")[2].partition("\n  2  ")[0].split())
    for command in ("directory show", "directory remove", "directory export", "run:"):
        assert command in ones, command


def test_readme_names_the_exit_codes_help_does() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    codes = " ".join(readme.partition("\nExit codes: ")[2].partition("\n\n")[0].split())
    for command in ("`directory show`", "`directory remove`", "`directory export`", "`run`"):
        assert command in codes.partition("; 2 ")[0], command


def test_run_that_cannot_open_the_syslog_socket_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-socket"
    site = make_site(
        tmp_path / "site",
        {"milter": {"log": "syslog", "log_socket": str(missing)}},
        directory=False,
    )
    result = smtpguard(site, "run", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"{site.config}: milter.log_socket: cannot open the syslog socket {missing}"
    )
    assert not site.socket.exists()


def test_configuration_error_is_exit_2_in_every_command_but_check_config(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[milter]\nno_such_key = 1\n")
    replies = run_cli("-c", str(bad), "replies")
    assert replies.returncode == 2
    assert replies.stderr.strip() == (
        f"smtpguard: configuration error: {bad}: milter.no_such_key: unknown key"
    )
    assert run_cli("check-config", str(bad)).returncode == 1


def test_a_closed_pipe_ends_quietly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpguard", "-c", str(SAMPLE), "replies"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert err == ""


def test_log_level_in_any_case(tmp_path: Path) -> None:
    site = make_site(tmp_path, {"milter": {"log_level": "info"}})
    assert smtpguard(site, "check-config", "--offline").returncode == 0


def test_unusable_store_is_one_line_with_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    site = make_site(
        tmp_path / "site", {"state": {"path": str(blocker / "state.sqlite")}}, directory=False
    )
    result = smtpguard(site, "blacklist", "add", "pest@sender.example", check=False)
    assert result.returncode == 2
    assert result.stderr == f"smtpguard: {blocker}: No such file or directory\n"


# --- closed descriptors ---------------------------------------------------------------


def closed(redirect: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``smtpguard ARGS`` with the shell's ``redirect`` (``>&-``: stdout closed)."""
    return subprocess.run(
        ["sh", "-c", f'"$@" {redirect}', "sh", sys.executable, "-m", "smtpguard", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("redirect", [">&-", "2>&-", ">&- 2>&-"])
def test_a_closed_stdout_or_stderr_keeps_the_commands_exit_code(
    tmp_path: Path, redirect: str
) -> None:
    site = make_site(tmp_path)
    assert closed(redirect, "check-config", str(site.config), "--offline").returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[milter]\nno_such_key = 1\n")
    assert closed(redirect, "check-config", str(bad)).returncode == 1
    added = closed(redirect, "-c", str(site.config), "blacklist", "add", "pest@sender.example")
    assert added.returncode == 0
    assert "Traceback" not in added.stderr
    listed = smtpguard(site, "blacklist", "list").stdout
    assert listed.startswith("pest@sender.example\t")
    refused = closed(
        redirect, "-c", str(site.config), "simulate", "--client", "198.51.100.7",
        "--from", "spammer@bad.example", "--to", "alice@example.com", "-v",
    )  # fmt: skip
    assert refused.returncode == 1


def test_a_closed_stdout_is_not_reused_for_the_state_file(tmp_path: Path) -> None:
    """What the command opens after a closed stdout does not become descriptor 1, where
    its own output would land."""
    site = make_site(tmp_path, directory=False)
    closed(">&-", "-c", str(site.config), "blacklist", "add", "a@sender.example")
    closed(">&-", "-c", str(site.config), "blacklist", "list")
    assert smtpguard(site, "blacklist", "list").stdout.startswith("a@sender.example\t")
    with sqlite3.connect(site.state) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# --- output encoding ------------------------------------------------------------------


def encoded(site: Site, encoding: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``smtpguard -c SITE ARGS`` where the locale's encoding is ``encoding``."""
    return subprocess.run(
        [sys.executable, "-m", "smtpguard", "-c", str(site.config), *args],
        capture_output=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": encoding},
    )


@pytest.fixture(scope="module")
def utf8_site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A site whose directory and blacklist hold text beyond Latin-1 and GBK."""
    site = make_site(tmp_path_factory.mktemp("site"))
    source = site.dir / "more.toml"
    source.write_text('[[user]]\naddress = "müller@example.com"\n', encoding="utf-8")
    smtpguard(site, "directory", "import", str(source))
    smtpguard(site, "blacklist", "add", "pest@sender.example", "--reason", "投诉 · ☺")
    return site


MACHINE_OUTPUT = [
    ("postfix-config", "--footers"),
    ("sendmail-config",),
    ("directory", "export"),
    ("directory", "export", "--format", "csv"),
    ("blacklist", "list", "--json"),
]


@pytest.mark.parametrize("args", MACHINE_OUTPUT)
@pytest.mark.parametrize("encoding", ["latin-1", "gbk", "ascii"])
def test_output_for_programs_is_utf8_whatever_the_locale(
    utf8_site: Site, encoding: str, args: tuple[str, ...]
) -> None:
    expected = encoded(utf8_site, "utf-8", *args)
    assert expected.returncode == 0, expected.stderr
    assert not expected.stdout.isascii() or args[0] == "sendmail-config"
    result = encoded(utf8_site, encoding, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected.stdout


@pytest.mark.skipif(shutil.which("postconf") is None, reason="needs Postfix's postconf")
@pytest.mark.parametrize("form", [(), ("--main-cf",)])
def test_the_postconf_script_is_utf8_whatever_the_locale(
    utf8_site: Site, tmp_path: Path, form: tuple[str, ...]
) -> None:
    write_settled(tmp_path / "main.cf", "")
    write_settled(tmp_path / "master.cf", "")
    args = ("postfix-config", "--config-directory", str(tmp_path), *form)
    expected = encoded(utf8_site, "utf-8", *args)
    assert expected.returncode == 0, expected.stderr
    assert "拒绝".encode() in expected.stdout
    assert encoded(utf8_site, "latin-1", *args).stdout == expected.stdout
    assert encoded(utf8_site, "gbk", *args).stdout == expected.stdout


@pytest.mark.skipif(shutil.which("postconf") is None, reason="needs Postfix's postconf")
def test_a_relative_postfix_directory_is_written_absolute(utf8_site: Site, tmp_path: Path) -> None:
    """Postfix's daemons work in the queue directory: a footer table named relative to
    where postfix-config ran would not be found there."""
    (tmp_path / "etc").mkdir()
    write_settled(tmp_path / "etc" / "main.cf", "")
    write_settled(tmp_path / "etc" / "master.cf", "")
    result = subprocess.run(
        [sys.executable, "-m", "smtpguard", "-c", str(utf8_site.config), "postfix-config",
         "--config-directory", "etc"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"postconf -c {tmp_path / 'etc'} -e " in result.stdout
    assert f"smtpd_reject_footer_maps = regexp:{tmp_path / 'etc'}/smtpguard_footers.regexp" in (
        result.stdout
    )


@pytest.mark.parametrize(
    "args",
    [
        ("replies",),
        ("simulate", "--client", "198.51.100.7", "--helo", "mail.sender.example", "--from",
         "spammer@bad.example", "--to", "alice@example.com"),
        ("blacklist", "list"),
        ("directory", "list"),
    ],
)  # fmt: skip
def test_output_for_people_is_in_the_locales_encoding_and_never_fails(
    utf8_site: Site, args: tuple[str, ...]
) -> None:
    utf8 = encoded(utf8_site, "utf-8", *args)
    for encoding in ("latin-1", "gbk", "ascii"):
        result = encoded(utf8_site, encoding, *args)
        assert result.returncode == utf8.returncode, result.stderr
        assert b"Traceback" not in result.stderr
        # What the encoding cannot show is a backslash escape; the rest as in UTF-8.
        assert result.stdout == utf8.stdout.decode().encode(encoding, "backslashreplace")
    assert "拒绝".encode("gbk") in encoded(utf8_site, "gbk", "replies").stdout
    assert b"\\u62d2\\u7edd" in encoded(utf8_site, "latin-1", "replies").stdout
