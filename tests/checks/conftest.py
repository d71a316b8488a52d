from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

# tests/checks on sys.path so the test modules can import check_support (as
# tests/conftest.py does for tests/support).
sys.path.insert(0, str(Path(__file__).parent))

from check_support import ConfigFactory, ServicesFactory, write_config

from smtpguard.checks import Services
from smtpguard.config import Config
from support.fakes import FakeBlacklist, FakeDirectory


@pytest.fixture
def make_config(tmp_path: Path) -> ConfigFactory:
    """``make_config(site={...}, policy={...})``: a Config loaded from a TOML file."""

    def build(**sections: Mapping[str, Any]) -> Config:
        return write_config(tmp_path, **sections)

    return build


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory()


@pytest.fixture
def blacklist() -> FakeBlacklist:
    return FakeBlacklist()


@pytest.fixture
def make_services(
    make_config: ConfigFactory, directory: FakeDirectory, blacklist: FakeBlacklist
) -> ServicesFactory:
    """Services over the ``directory`` and ``blacklist`` fakes of the test."""

    def build(**sections: Mapping[str, Any]) -> Services:
        return Services(config=make_config(**sections), directory=directory, blacklist=blacklist)

    return build
