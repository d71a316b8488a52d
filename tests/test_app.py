"""Building and retiring runtimes: what a reload leaves open."""

from __future__ import annotations

import logging
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import tomli_w

from smtpguard.adapter import App
from smtpguard.app import Runtime, build_runtime, counter_path, load, new_gate, retire
from smtpguard.counters import InProcessCounter
from smtpguard.directory import Login
from smtpguard.driver import SessionDriver
from smtpguard.state import StateError
from smtpguard.supervisor import reloader
from support.daemons import start_redis
from support.files import descriptors_on
from support.service import Site, make_site

MACROS = {"v": "Postfix 3.7.11"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    # Several workers: the same-size counts live in the memory-mapped file.
    return make_site(tmp_path_factory.mktemp("app"), {"milter": {"workers": 2}})


def session(app: App, n: int) -> None:
    """One message that reads the blacklist (MAIL), the directory (RCPT) and the
    same-size counter (end of message)."""
    d = SessionDriver(app.runtime, app.gate, MACROS.get)
    ip = f"198.51.100.{n % 200 + 1}"
    d.connect(f"[{ip}]", socket.AF_INET, (ip, 40000))
    d.helo("mail.sender.example")
    assert d.mail(f"<u{n}@sender.example>", ()).reply is None
    assert d.rcpt("<alice@example.com>").reply is None
    d.data()
    d.header("Subject", "hello")
    d.eoh()
    d.body(b"x" * 500)
    assert d.eom().reply is None
    d.close()


def reloaded(app: App, data: dict[str, Any]) -> Runtime:
    """The runtime a reload builds from ``data`` as the config file's text."""
    text = tomli_w.dumps(data).encode()
    return reloader(app, lambda: text)()


def files(site: Site) -> tuple[Path, ...]:
    config = load(site.config)
    state = config.state.path
    wal = state.with_name(state.name + "-wal")
    return (site.directory, state, wal, counter_path(config))


def reloads(
    app: App, site: Site, measure: Callable[[], int], keep: list[Runtime] | None = None
) -> list[int]:
    """Ten reloads, each with another window (so a new counter too) and a session on
    the new runtime, retiring the old one; ``measure()`` after each. ``keep`` collects
    the retired runtimes (kept referenced)."""
    data = tomllib.loads(site.config.read_text(encoding="utf-8"))
    session(app, 0)
    found = []
    for n in range(1, 11):
        data["bulk"] = {"window": 3600 + n}
        old = app.runtime
        app.swap(reloaded(app, data))
        session(app, n)
        retire(old, app.runtime)
        assert old.services.counter is not app.runtime.services.counter
        if keep is not None:
            keep.append(old)
        found.append(measure())
    return found


def test_reloads_leave_no_descriptors_of_the_stores_they_replaced(site: Site) -> None:
    """Each reload builds new stores; the old runtime's SQLite connections and counter
    file are closed when it is retired. They used to pile up in every worker (about
    three more per reload here, where the collector runs)."""
    app = App(build_runtime(load(site.config)), new_gate(load(site.config)))
    open_after = reloads(app, site, lambda: descriptors_on(*files(site)))
    # SQLite keeps a closed connection's descriptor while another connection of the
    # process holds a lock on the same file (POSIX locks are per process): one more
    # after the first reload, and then never more.
    assert open_after == [open_after[0]] * 10, open_after


def test_retire_keeps_what_the_new_runtime_shares(site: Site) -> None:
    """A reload that changes nothing of [state], [bulk] or [dns] keeps the counter:
    retiring the old runtime must not close it under the new one."""
    app = App(build_runtime(load(site.config)), new_gate(load(site.config)))
    session(app, 0)
    old = app.runtime
    app.swap(reloader(app)())
    assert old.services.counter is app.runtime.services.counter
    retire(old, app.runtime)
    session(app, 1)
    assert descriptors_on(counter_path(load(site.config))) > 0


def test_a_session_on_the_retired_runtime_counts_where_the_new_one_does(
    tmp_path: Path,
) -> None:
    """Review rev197: after a reload that changed the window, a message still on the
    old runtime was counted as a first (the old counter answered 1) and delivered,
    while the workers that had reloaded counted its sender over the threshold."""
    two = make_site(tmp_path, {"milter": {"workers": 2}})
    app = App(build_runtime(load(two.config)), new_gate(load(two.config)))
    old = app.runtime
    session(app, 0)
    data = tomllib.loads(two.config.read_text(encoding="utf-8"))
    data["bulk"] = {"window": 1200}
    app.swap(reloaded(app, data))
    retire(old, app.runtime)
    new = app.runtime.services.counter
    assert new is not None
    assert old.services.counter is not new
    session(app, 1)  # on the new file: the first of its window
    assert old.services.counter is not None
    assert old.services.counter.hit("k", 500) == new.peek("k", 500) == 1
    assert new.hit("k", 500) == 2


def test_the_directory_gives_a_bare_login_the_default_login_domain(tmp_path: Path) -> None:
    """Review rev198 L1: with the sqlite directory, Dovecot's bare "alice" was unknown
    (551 auth error for every message) though policy.default_login_domain names her
    domain."""
    site = make_site(tmp_path, {"policy": {"default_login_domain": "example.com"}})
    directory = build_runtime(load(site.config)).services.directory
    assert directory.login("alice") == Login("alice@example.com", "alice@example.com", "active")


def test_one_worker_keeps_its_counts_over_a_new_threshold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev141 F1: with one worker any [bulk] or [state] change built a new,
    empty in-process counter, silently: a threshold lowered during a flood gave every
    sender a fresh allowance. A new threshold, key or blacklist setting keeps it; a
    new window starts the counts again, and says so."""
    one = make_site(tmp_path, {"milter": {"workers": 1}})
    app = App(build_runtime(load(one.config)), new_gate(load(one.config)))
    for n in range(3):
        session(app, n)
    counter = app.runtime.services.counter
    data = tomllib.loads(one.config.read_text(encoding="utf-8"))
    data["bulk"] = {"threshold": 1500}
    app.swap(reloaded(app, data))
    assert app.runtime.services.counter is counter
    assert isinstance(counter, InProcessCounter)
    assert counter.max_per_bucket == 1501  # room for the new threshold's counts
    # Review rev142 F2: from 1000 or more down, the per-bucket cap changed with it and
    # the counter was built again.
    data["bulk"] = {"threshold": 2, "key": ["sender_domain"]}
    data.setdefault("state", {})["cache_ttl"] = 0
    with caplog.at_level(logging.WARNING):
        app.swap(reloaded(app, data))
    assert app.runtime.services.counter is counter
    # Never lowered (review rev147 F2): the running configuration shares the counter,
    # and keeps running with its own threshold if a reload is refused.
    assert counter.max_per_bucket == 1501
    assert "start again at zero" not in caplog.text
    data["bulk"]["window"] = 600
    with caplog.at_level(logging.WARNING):
        app.swap(reloaded(app, data))
    assert app.runtime.services.counter is not counter
    assert "same-size counts start again at zero" in caplog.text


def test_reloads_with_redis_state_close_the_retired_connections(tmp_path: Path) -> None:
    """The blacklist's and the counter's Redis connections of a retired runtime are
    closed: Redis sees the clients of one runtime, not of every reload since start.
    The retired runtimes stay referenced here, as a worker's first one does (frozen
    before the fork, never collected): being dropped is no way to close them."""
    server = start_redis(tmp_path / "redis")
    retired: list[Runtime] = []
    try:
        site = make_site(
            tmp_path / "site", {"state": {"backend": "redis", "redis_url": server.url}}
        )
        app = App(build_runtime(load(site.config)), new_gate(load(site.config)))
        watcher = redis.Redis.from_url(server.url)
        clients = reloads(app, site, lambda: len(watcher.client_list()), retired)
        assert clients == [clients[0]] * 10, clients
        watcher.close()
    finally:
        server.stop()


@pytest.mark.parametrize(("on_error", "take_back"), [("error", True), ("local", False)])
def test_failed_redis_hits_are_taken_back_only_where_their_messages_count_nowhere(
    tmp_path: Path, on_error: str, take_back: bool
) -> None:
    """Review rev88 N3: with on_redis_error = "local" a hit whose call failed was
    counted here and its message delivered: a hit Redis made after all is its count."""
    from smtpguard.app import make_counter  # noqa: PLC0415
    from smtpguard.counters import RedisCounter, ResilientCounter  # noqa: PLC0415

    state = {"backend": "redis", "redis_url": "redis://127.0.0.1:1/0", "on_redis_error": on_error}
    site = make_site(tmp_path, {"state": state}, directory=False)
    counter = make_counter(load(site.config))
    assert isinstance(counter, ResilientCounter)
    assert isinstance(counter.primary, RedisCounter)
    assert counter.primary.take_back is take_back


def test_a_reload_during_a_redis_outage_keeps_the_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev83: a reload made a new Redis blacklist, whose first failed lookup
    logged the outage's start again, and whose recovery counted from the reload. With
    [state] unchanged the running one is kept; with [state] changed it is not."""
    server = start_redis(tmp_path / "redis")
    try:
        site = make_site(
            tmp_path / "site", {"state": {"backend": "redis", "redis_url": server.url}}
        )
        app = App(build_runtime(load(site.config)), new_gate(load(site.config)))
        blacklist = app.runtime.services.blacklist
        assert blacklist.listed("someone@sender.example") is None
        server.stop()
        caplog.set_level(logging.INFO, logger="smtpguard")
        with pytest.raises(StateError):
            blacklist.listed("someone@sender.example")
        old = app.runtime
        app.swap(reloader(app)())
        retire(old, app.runtime)
        assert app.runtime.services.blacklist is blacklist
        with pytest.raises(StateError):
            app.runtime.services.blacklist.listed("someone@sender.example")
        assert caplog.text.count("blacklist backend redis unreachable") == 1
        # Another [state] is another blacklist.
        data = tomllib.loads(site.config.read_text(encoding="utf-8"))
        data["state"]["timeout"] = 1.5
        assert reloaded(app, data).services.blacklist is not blacklist
    finally:
        server.stop()
