"""contrib/systemd/: the unit passes systemd's own checks and names the documented layout.

``systemd-analyze verify`` and ``security --offline`` read unit files without a running
systemd. verify insists that the programs the unit runs exist, so it reads a copy whose
smtpguard is the test venv's; warnings (an unknown key, a bad value) leave its exit code
at 0, so its output must be empty too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smtpguard.config import load_config
from smtpguard.sockets import unix_path

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "contrib" / "systemd" / "smtpguard.service"
TMPFILES = ROOT / "contrib" / "systemd" / "smtpguard.tmpfiles"
SAMPLE = ROOT / "conf" / "smtpguard.toml"
#: Highest acceptable exposure of `systemd-analyze security`, in its tenths (2.0 "OK").
MAX_EXPOSURE = 20


def prefix() -> Path:
    """Where scripts/start.sh installs (PREFIX of scripts/lib.sh)."""
    found = re.search(r"^PREFIX=(\S+)$", (ROOT / "scripts" / "lib.sh").read_text(), re.M)
    assert found
    return Path(found.group(1))


def values(key: str) -> list[str]:
    """Every value of ``key`` in the unit (one per line it is set on)."""
    out = []
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.partition("=")
        if sep and name == key:
            out.append(value)
    return out


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: Debian's systemd package has it (scripts/test.sh)"
    return path


def test_unit_verifies(tmp_path: Path) -> None:
    venv_smtpguard = Path(sys.executable).with_name("smtpguard")
    installed = str(prefix() / "venv" / "bin" / "smtpguard")
    text = UNIT.read_text(encoding="utf-8")
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(installed, str(venv_smtpguard)), encoding="utf-8")
    result = subprocess.run(
        [tool("systemd-analyze"), "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_unit_is_hardened() -> None:
    result = subprocess.run(
        [
            tool("systemd-analyze"),
            "security",
            "--offline=yes",
            f"--threshold={MAX_EXPOSURE}",
            str(UNIT),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_runs_the_documented_layout() -> None:
    """start.sh's venv, an installed README and contrib/, the sample's socket directory
    writable, its state directory systemd's, and a reload that sends SIGHUP."""
    home = prefix()
    assert values("ExecStart") == [
        f"{home}/venv/bin/smtpguard -c /etc/smtpguard/smtpguard.toml run"
    ]
    start_sh = (ROOT / "scripts" / "start.sh").read_text(encoding="utf-8")
    for document in " ".join(values("Documentation")).split():
        path = Path(document.removeprefix("file://"))
        # start.sh copies README.md and contrib/ from the checkout to PREFIX.
        assert (ROOT / path.relative_to(home)).is_file(), document
        assert path.relative_to(home).parts[0] in start_sh, document
    config = load_config(SAMPLE)
    socket = unix_path(config.milter.socket)
    assert socket is not None
    assert f"-{socket.parent}" in values("ReadWritePaths")
    assert config.directory.path.parent == Path("/var/lib") / values("StateDirectory")[0]
    assert config.state.path.parent == config.directory.path.parent
    assert values("User") == [config.milter.user]
    assert "postfix" in values("SupplementaryGroups")
    # Signals libmilter's own signal thread never takes (review rev161 F1).
    assert values("ExecReload")[-1] == "/bin/kill -USR1 $MAINPID"
    assert values("KillSignal") == ["SIGUSR2"]
    assert values("SuccessExitStatus") == ["SIGUSR2"]


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles gives the directory away")
def test_tmpfiles_creates_the_sample_socket_directory(tmp_path: Path) -> None:
    """In a scratch root whose own user database gives smtpguard and postfix ids of their
    own: the directory of the sample's socket, 0750, smtpguard's, group postfix."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\n"
        "smtpguard:x:4101:4101::/var/lib/smtpguard:/usr/sbin/nologin\n"
        "postfix:x:4102:4102::/var/spool/postfix:/usr/sbin/nologin\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nsmtpguard:x:4101:\npostfix:x:4102:\n")
    result = subprocess.run(
        [tool("systemd-tmpfiles"), "--create", f"--root={root}", str(TMPFILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    socket = unix_path(load_config(SAMPLE).milter.socket)
    assert socket is not None
    made = (root / socket.parent.relative_to("/")).stat()
    assert (made.st_mode & 0o7777, made.st_uid, made.st_gid) == (0o750, 4101, 4102)
