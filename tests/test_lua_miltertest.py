"""Scripts for Debian's ``miltertest`` (the Lua harness from OpenDKIM) against the
running service."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.service import Running, make_site, running

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
        check=False,
    )


def test_envelope_script(service: Running) -> None:
    result = run_script(service, "envelope.lua")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "envelope.lua: all checks passed" in result.stdout
    # mt.getreply tells only that a reply code was set, a 4xx as well as a 5xx
    # (review rev74 F3): the service's own decision lines say which.
    log = service.log()
    for stage, reply_id in (("rcpt", "host_denies_relay"), ("mail", "host_denies_sender")):
        decided = re.findall(
            rf"stage={stage} check=\S+ reply={reply_id} mode=(\S+) action=(\S+)", log
        )
        assert decided == [("enforce", "reject")], (reply_id, decided)


@pytest.fixture(scope="module")
def content_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    extra = {
        "limits": {"max_message_size": 1_000_000, "max_attachment_size": 50_000},
        "content": {"add_loop_marker": True},
    }
    with running(make_site(tmp_path_factory.mktemp("lua-content"), extra)) as svc:
        yield svc


def test_content_script(content_service: Running) -> None:
    result = run_script(content_service, "content.lua")
    assert result.returncode == 0, result.stdout + result.stderr
    for reply_id in (
        "looping_message",
        "fake_router",
        "line_parse_error",
        "message_too_long",
        "attachment_too_long",
    ):
        assert f"ok {reply_id}" in result.stdout
    assert "content.lua: all checks passed" in result.stdout
