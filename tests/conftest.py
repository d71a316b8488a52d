from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator

import pytest

from smtpguard.dns import Resolver
from support.daemons import Rspamd, start_rspamd
from support.fake_dns import FakeDns, fake_resolver
from support.service import Running, Site, make_site, reap_stopping, running
from support.unbound import DnsServer, unbound_server

# explain keeps its parsed rules in the user's cache directory: the suite's runs (and
# the CLI subprocesses they start, which inherit this) keep theirs out of ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="smtpguard-test-cache-")

# tests/ is on sys.path (pyproject.toml, [tool.pytest.ini_options] pythonpath), so every
# test module imports the shared helpers as ``support``.


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


# --- DNS ------------------------------------------------------------------------------


@pytest.fixture
def fake() -> FakeDns:
    """The DNS data a test's resolver answers from; a module with records of its own
    overrides this fixture."""
    return FakeDns()


@pytest.fixture
def resolver(fake: FakeDns) -> Iterator[Resolver]:
    """A resolver over :func:`fake` (no network), closed after the test."""
    r = fake_resolver(fake)
    yield r
    r.close()


@pytest.fixture(scope="session")
def unbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    """unbound serving the test zones of support/unbound.py (docs/testing.md); started
    on first use, one for the whole test session."""
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


@pytest.fixture(autouse=True)
def _scanner_canaries_end_with_their_test() -> Iterator[None]:
    """A scanner whose answer timed out gets a canary scan on a thread of its own, which
    may log an outage a second later: let it finish in the test that started it, not in
    the log another test reads."""
    yield
    for thread in threading.enumerate():
        if thread.name in ("rspamd-canary", "clamd-canary", "command-canary"):
            thread.join(timeout=5)
