"""The Prometheus endpoint of the running service."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest

from smtpguard.config import ConfigError, load_config
from support.service import UNTRUSTED_IP, make_site, running

pytestmark = pytest.mark.integration

POLL_INTERVAL = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    end = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            assert time.monotonic() < end, "metrics endpoint not up"
            time.sleep(POLL_INTERVAL)


def test_decisions_stages_and_sessions_are_exported(tmp_path: Path) -> None:
    port = free_port()
    site = make_site(tmp_path, {"metrics": {"enabled": True, "port": port}})
    with running(site) as service:
        assert "smtpguard_sessions_in_flight 0.0" in scrape(port)
        with service.session() as s:
            s.connect(UNTRUSTED_IP)
            s.helo("mail.sender.example")
            assert s.mail("<spammer@bad.example>").kind == "reply"
            assert "smtpguard_sessions_in_flight 1.0" in scrape(port)
        text = scrape(port)
    assert (
        'smtpguard_decisions_total{action="reject",mode="enforce",reply_id="host_denies_sender"}'
        " 1.0" in text
    )
    assert 'smtpguard_stage_seconds_count{stage="mail"} 1.0' in text
    assert 'smtpguard_stage_seconds_count{stage="connect"} 1.0' in text


def test_metrics_endpoint_is_loopback_only_by_default(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[metrics]\nenabled = true\nlisten = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match=r"metrics\.listen: not a loopback address"):
        load_config(path)
