"""Scripts for Debian's ``miltertest`` (the Lua harness from OpenDKIM) against the
running service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support.service import Running

pytestmark = pytest.mark.integration

LUA = Path(__file__).parent / "lua"
MILTERTEST = shutil.which("miltertest")


def run_script(service: Running, name: str) -> subprocess.CompletedProcess[str]:
    assert MILTERTEST, "Debian's miltertest is installed by scripts/test.sh"
    return subprocess.run(
        [MILTERTEST, "-D", f"socket=unix:{service.site.socket}", "-s", str(LUA / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_envelope_script(service: Running) -> None:
    result = run_script(service, "envelope.lua")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "envelope.lua: all checks passed" in result.stdout
    log = service.log()
    assert "reply=host_denies_relay" in log
    assert "reply=host_denies_sender" in log
