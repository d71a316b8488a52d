"""CLI conventions: exit codes, -c anywhere, a closed pipe, one-line failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.service import ROOT, make_site, run_cli, smtpguard

SAMPLE = ROOT / "conf" / "smtpguard.toml"


def test_config_option_before_or_after_the_subcommand() -> None:
    before = run_cli("-c", str(SAMPLE), "replies")
    after = run_cli("replies", "-c", str(SAMPLE))
    assert before.returncode == after.returncode == 0, after.stderr
    assert before.stdout == after.stdout
    assert "host_denies_relay" in after.stdout


def test_usage_error_and_help_name_the_exit_codes() -> None:
    assert run_cli("no-such-command").returncode == 2
    help_text = run_cli("--help").stdout
    assert "exit codes:" in help_text
    assert "2  usage or configuration error" in help_text


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
