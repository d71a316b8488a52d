from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from smtpguard.checks import Services
from smtpguard.config import Config
from support.checks import ConfigFactory, ServicesFactory, write_config
from support.fakes import (
    FakeBlacklist,
    FakeCounter,
    FakeDirectory,
    FakeRules,
    FakeSpamEngine,
    FakeVirusScanner,
    fake_scanners,
)


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
def counter() -> FakeCounter:
    return FakeCounter()


@pytest.fixture
def virus_scanner() -> FakeVirusScanner:
    return FakeVirusScanner()


@pytest.fixture
def rules() -> FakeRules:
    return FakeRules()


@pytest.fixture
def spam_engine() -> FakeSpamEngine:
    return FakeSpamEngine()


@pytest.fixture
def make_services(
    make_config: ConfigFactory,
    directory: FakeDirectory,
    blacklist: FakeBlacklist,
    counter: FakeCounter,
    virus_scanner: FakeVirusScanner,
    rules: FakeRules,
    spam_engine: FakeSpamEngine,
) -> ServicesFactory:
    """Services over the fakes of the test: directory, blacklist, same-size counter and
    every scanner (see support.fakes)."""

    def build(**sections: Mapping[str, Any]) -> Services:
        return Services(
            config=make_config(**sections),
            directory=directory,
            blacklist=blacklist,
            counter=counter,
            scanners=fake_scanners(virus_scanner, rules, spam_engine),
        )

    return build
