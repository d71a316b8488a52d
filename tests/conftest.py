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


# --- DNS (issue 5): one unbound on loopback for the whole test session ---------------
# (Imported here, not at the top: this section was appended to a shared file.)

from support.unbound import DnsServer, unbound_server  # noqa: E402


@pytest.fixture(scope="session")
def unbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    """unbound serving the test zones of support/unbound.py; started on first use."""
    with unbound_server(tmp_path_factory.mktemp("unbound")) as server:
        yield server
