"""A directory file replaced by rename (rsync, config management) or removed while the
real ``smtpguard run`` service runs: the next sessions see the new file, or a
temporary error, never the old file's answers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpguard.config import DirectoryConfig
from smtpguard.directory import import_file
from smtpguard.sqlitedb import MIN_CHECK_INTERVAL
from support.daemons import wait_until
from support.mtclient import Answer, MilterSession, assert_pass, assert_reply
from support.service import DIRECTORY, UNTRUSTED_IP, Running, make_site, running

pytestmark = pytest.mark.integration

ALICE = 'address = "alice@example.com"\n'
# Beyond cache_ttl: one session and the poll interval.
CACHE_SLACK = 0.5


def open_session(service: Running) -> MilterSession:
    s = service.session()
    assert_pass(s.connect(UNTRUSTED_IP))
    assert_pass(s.helo("mail.sender.example"))
    assert_pass(s.mail("<outsider@sender.example>"))
    return s


def replace_with_alice_locked(site_dir: Path, path: Path) -> tuple[int, int]:
    """``cp new tmp; mv tmp directory.sqlite``; the inodes before (0: none) and after."""
    source = site_dir / "locked.toml"
    assert ALICE in DIRECTORY
    source.write_text(DIRECTORY.replace(ALICE, ALICE + 'state = "locked"\n'), encoding="utf-8")
    new = site_dir / "staging" / "directory.sqlite"
    import_file(new, source)
    staged = path.with_name(path.name + ".tmp")
    shutil.copyfile(new, staged)
    before = path.stat().st_ino if path.exists() else 0
    os.replace(staged, path)
    return before, path.stat().st_ino


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Running]:
    # The test config: directory.cache_ttl = 0, the file is checked at the minimum
    # interval: a test waits that long after changing it.
    with running(make_site(tmp_path / "site")) as svc:
        yield svc


def test_rename_replaced_directory_locks_the_next_session(service: Running) -> None:
    path = service.site.directory
    with open_session(service) as s:
        assert_pass(s.rcpt("<alice@example.com>"))
    before, after = replace_with_alice_locked(service.site.dir, path)
    wait_for_answer_change(service, "the replaced directory to be reopened")
    with open_session(service) as s:
        answer = s.rcpt("<alice@example.com>")
    assert (answer.code, answer.xcode) == ("550", "5.2.1")
    assert_reply(answer, "user_locked")
    assert f"directory file {path} replaced (inode {before} -> {after}): reopened" in (
        service.log()
    )


def test_removed_directory_is_a_temporary_error(service: Running) -> None:
    path = service.site.directory
    with open_session(service) as s:
        assert_pass(s.rcpt("<alice@example.com>"))
    path.unlink()
    wait_for_answer_change(service, "the removed directory to be noticed")
    with open_session(service) as s:
        assert_reply(s.rcpt("<alice@example.com>"), "database_temp_error")
        assert_pass(s.rcpt("<x@relay.example>"))  # no lookup needed
    assert f"directory file {path} missing" in service.log()
    replace_with_alice_locked(service.site.dir, path)
    # A missing file is looked for at every lookup: back at once.
    with open_session(service) as s:
        assert_reply(s.rcpt("<alice@example.com>"), "user_locked")


@pytest.fixture
def cached_service(tmp_path: Path) -> Iterator[Running]:
    ttl = DirectoryConfig().cache_ttl
    with running(make_site(tmp_path / "site", {"directory": {"cache_ttl": ttl}})) as svc:
        yield svc


def test_rename_replaced_directory_is_seen_within_cache_ttl(cached_service: Running) -> None:
    with open_session(cached_service) as s:
        assert_pass(s.rcpt("<alice@example.com>"))  # "active" is now cached
    replace_with_alice_locked(cached_service.site.dir, cached_service.site.directory)
    ttl = DirectoryConfig().cache_ttl
    waited = wait_until(
        lambda: _locked(cached_service),
        cached_service.process,
        "the replaced directory to take effect",
        cached_service.log_path,
        deadline=ttl + 5.0,
    )
    assert waited <= ttl + CACHE_SLACK


def wait_for_answer_change(service: Running, what: str) -> None:
    """Poll sessions until alice's RCPT is no longer accepted: the file is checked at
    most every MIN_CHECK_INTERVAL, so it happens within that and one session."""
    waited = wait_until(
        lambda: _rcpt_alice(service).kind != "continue",
        service.process,
        what,
        service.log_path,
        deadline=MIN_CHECK_INTERVAL + 5.0,
    )
    assert waited <= MIN_CHECK_INTERVAL + CACHE_SLACK


def _rcpt_alice(service: Running) -> Answer:
    with open_session(service) as s:
        return s.rcpt("<alice@example.com>")


def _locked(service: Running) -> bool:
    answer = _rcpt_alice(service)
    if answer.kind == "continue":
        return False
    assert_reply(answer, "user_locked")
    return True
