from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ on sys.path so every test module can import the shared helpers in support/.
sys.path.insert(0, str(Path(__file__).parent))

from support.service import Running, Site, make_site, reap_stopping, running


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The standard test installation (see support/service.py for its data)."""
    return make_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def service(site: Site) -> Iterator[Running]:
    """``smtpguard run`` on the standard site, shared by a test module."""
    with running(site) as svc:
        yield svc


@pytest.fixture(scope="session", autouse=True)
def _reap_services() -> Iterator[None]:
    yield
    reap_stopping()
