"""The default scanner factory: what the content checks get outside the tests."""

from __future__ import annotations

from pathlib import Path

from smtpguard.checks import Services
from smtpguard.config import AntispamConfig, VirusConfig, default_rules_dir, load_config
from smtpguard.endpoint import Endpoint
from smtpguard.scanners.backends import ScannerFactory, open_virus_stream
from smtpguard.scanners.clamd import ClamdStream
from smtpguard.scanners.command import CommandScan
from smtpguard.scanners.rspamd import RspamdClient
from smtpguard.scanners.rules import RuleSet
from support.fakes import FakeBlacklist, FakeDirectory

CLAMD = Endpoint(path="/run/clamav/clamd.ctl")


def test_services_default_to_the_real_scanners(tmp_path: Path) -> None:
    (tmp_path / "smtpguard.toml").write_text("", encoding="utf-8")
    config = load_config(tmp_path / "smtpguard.toml")
    services = Services(config, FakeDirectory(), FakeBlacklist())
    assert services.scanners == ScannerFactory()
    assert services.scanners.virus is open_virus_stream


def test_virus_stream_per_backend() -> None:
    factory = ScannerFactory()
    clamd = factory.virus(VirusConfig(backend="clamd", clamd_socket=CLAMD, max_bytes=5000))
    assert isinstance(clamd, ClamdStream)
    assert (clamd.endpoint, clamd.max_bytes) == (CLAMD, 5000)
    clamd.close()
    command = factory.virus(VirusConfig(backend="command", command=("/bin/true",), timeout=3))
    assert isinstance(command, CommandScan)
    assert (command.argv, command.timeout) == (("/bin/true",), 3)
    command.close()


def test_rules_and_engine() -> None:
    factory = ScannerFactory()
    assert isinstance(factory.rules(default_rules_dir() / "antispam.toml"), RuleSet)
    socket = Endpoint(host="127.0.0.1", port=11334)
    engine = factory.spam_engine(AntispamConfig(engine="rspamd", engine_socket=socket))
    assert isinstance(engine, RspamdClient)
    assert engine.endpoint == socket
