from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ on sys.path so every test module can import the shared helpers in support/.
sys.path.insert(0, str(Path(__file__).parent))

from support.daemons import Rspamd, start_rspamd
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


# --- DNS: one unbound on loopback for the whole test session (docs/testing.md) -----
# (Imported here, not at the top: this section was appended to a shared file.)

from support.unbound import DnsServer, unbound_server  # noqa: E402


@pytest.fixture(scope="session")
def unbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    """unbound serving the test zones of support/unbound.py; started on first use."""
    with unbound_server(tmp_path_factory.mktemp("unbound")) as server:
        yield server


@pytest.fixture(scope="session")
def rspamd(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rspamd]:
    """One rspamd for the whole session (its cold start compiles for ~15 s). The
    compiled Hyperscan databases survive in pytest's cache directory, so the next
    session starts it in under a second."""
    cache = getattr(request.config, "cache", None)
    hs_cache = cache.mkdir("rspamd-hyperscan") if cache is not None else None
    daemon = start_rspamd(tmp_path_factory.mktemp("rspamd"), hs_cache=hs_cache)
    yield daemon
    daemon.stop()
