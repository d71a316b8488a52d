"""ConnectionPool: results reused for cache_ttl, errors never cached, no cache at 0; a
file replaced by rename or removed is noticed within cache_ttl."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from smtpguard.sqlitedb import MIN_CHECK_INTERVAL, ConnectionPool
from support.files import descriptors_on
from support.threads import hammer

SQL = "SELECT v FROM t WHERE k = ?"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "t.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (k TEXT, v TEXT)")
        db.execute("INSERT INTO t VALUES ('a', 'one')")
    return path


def opener(path: Path, timeout: float = 0.2) -> ConnectionPool:
    return ConnectionPool(
        lambda: sqlite3.connect(path, timeout=timeout, check_same_thread=False),
    )


def set_value(path: Path, value: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE t SET v = ?", (value,))


def test_results_are_reused_until_the_ttl_passes(db_path: Path) -> None:
    clock = Clock()
    pool = ConnectionPool(
        lambda: sqlite3.connect(db_path, check_same_thread=False), cache_ttl=1.0, clock=clock
    )
    assert pool.query(SQL, ("a",)) == [("one",)]
    set_value(db_path, "two")
    clock.now += 0.9
    assert pool.query(SQL, ("a",)) == [("one",)]  # still the cached result
    assert pool.query(SQL, ("b",)) == []  # other arguments: asked
    clock.now += 0.1
    assert pool.query(SQL, ("a",)) == [("two",)]


def test_empty_results_are_cached_too(db_path: Path) -> None:
    clock = Clock()
    pool = ConnectionPool(
        lambda: sqlite3.connect(db_path, check_same_thread=False), cache_ttl=1.0, clock=clock
    )
    assert pool.query(SQL, ("new",)) == []
    with sqlite3.connect(db_path) as db:
        db.execute("INSERT INTO t VALUES ('new', 'x')")
    assert pool.query(SQL, ("new",)) == []
    clock.now += 1.0
    assert pool.query(SQL, ("new",)) == [("x",)]


def test_callers_cannot_change_the_cached_rows(db_path: Path) -> None:
    pool = ConnectionPool(
        lambda: sqlite3.connect(db_path, check_same_thread=False), cache_ttl=60, clock=Clock()
    )
    pool.query(SQL, ("a",)).clear()
    assert pool.query(SQL, ("a",)) == [("one",)]


def test_without_ttl_every_query_reads_the_file(db_path: Path) -> None:
    pool = opener(db_path)
    assert pool.query(SQL, ("a",)) == [("one",)]
    set_value(db_path, "two")
    assert pool.query(SQL, ("a",)) == [("two",)]


def test_errors_are_not_cached(db_path: Path) -> None:
    clock = Clock()
    pool = ConnectionPool(
        lambda: sqlite3.connect(db_path, timeout=0.05, check_same_thread=False),
        cache_ttl=60,
        clock=clock,
    )
    lock = sqlite3.connect(db_path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            pool.query(SQL, ("a",))
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert pool.query(SQL, ("a",)) == [("one",)]


# --- a file replaced by rename, or removed --------------------------------------------


def make_file(path: Path, value: str) -> Path:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE t (k TEXT, v TEXT)")
        db.execute("INSERT INTO t VALUES ('a', ?)", (value,))
    return path


def replace_by_rename(path: Path, value: str) -> None:
    """What rsync and config management do: write a new file, rename it over the old."""
    os.replace(make_file(path.with_name(path.name + ".tmp"), value), path)


def watched(path: Path, clock: Clock, cache_ttl: float = 1.0) -> ConnectionPool:
    return ConnectionPool(
        lambda: sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        ),
        cache_ttl=cache_ttl,
        clock=clock,
        watch=path,
        label="test file",
    )


def watched_file(
    tmp_path: Path, value: str = "old", cache_ttl: float = 1.0
) -> tuple[Path, Clock, ConnectionPool]:
    """A file holding a=value, a clock, and a pool on the file watched by that clock
    that has read the file once: it knows the file's inode (and caches a=value)."""
    path = make_file(tmp_path / "t.sqlite", value)
    clock = Clock()
    pool = watched(path, clock, cache_ttl)
    assert pool.query(SQL, ("a",)) == [(value,)]
    return path, clock, pool


def test_file_replaced_by_rename_is_reopened_after_the_ttl(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock, pool = watched_file(tmp_path)
    before = path.stat().st_ino
    replace_by_rename(path, "new")
    after = path.stat().st_ino
    clock.now += 0.5
    assert pool.query(SQL, ("a",)) == [("old",)]  # within the ttl: the cached result
    assert pool.query(SQL, ("b",)) == []  # not cached: the pooled (old) connection
    caplog.set_level(logging.INFO)
    clock.now += 0.5
    assert pool.query(SQL, ("a",)) == [("new",)]
    assert pool.query(SQL, ("b",)) == []
    assert [r.getMessage() for r in caplog.records] == [
        f"test file {path} replaced (inode {before} -> {after}): reopened"
    ]


def test_a_file_copied_over_in_place_is_reopened_after_the_ttl(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev204: ``cp backup.sqlite directory.sqlite`` keeps the inode, and SQLite
    trusts a connection's cached pages while the file's change counter reads the same,
    as it does in two files made by the same writes: the pool answered from the old
    contents until a restart."""
    path, clock, pool = watched_file(tmp_path)
    other = make_file(tmp_path / "other.sqlite", "new")
    assert path.read_bytes()[24:28] == other.read_bytes()[24:28]  # the change counters
    inode = path.stat().st_ino
    shutil.copyfile(other, path)
    assert path.stat().st_ino == inode
    caplog.set_level(logging.INFO)
    clock.now += 1.0
    assert pool.query(SQL, ("a",)) == [("new",)]
    # Quiet: SQLite's own writes (an import, a checkpoint) change the file so too.
    assert caplog.records == []


def test_wal_files_removed_under_the_pool_are_reopened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by review: with -wal and -shm removed, the pooled connections kept the
    unlinked index and never saw another process's writes again (a blacklist entry
    removed with the CLI kept refusing mail)."""
    path = make_file(tmp_path / "t.sqlite", "old")
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
    clock = Clock()
    pool = watched(path, clock, cache_ttl=1.0)
    keep_open = sqlite3.connect(path)  # another process's connection: the files stay
    try:
        assert pool.query(SQL, ("a",)) == [("old",)]
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink()
        with closing(sqlite3.connect(path)) as db, db:
            db.execute("UPDATE t SET v = 'new'")
        caplog.set_level(logging.INFO)
        clock.now += 1.0
        assert pool.query(SQL, ("a",)) == [("new",)]
        assert [r.getMessage() for r in caplog.records] == [
            f"test file {path} WAL index removed: reopened"
        ]
    finally:
        keep_open.close()
        pool.close()


@pytest.fixture
def tmpfs_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs where there is one: it never reuses a freed inode number at
    once, as ext4 often does, which would hide a changed WAL index."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(dir=shm, prefix="smtpguard-test-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def wal_file(path: Path) -> sqlite3.Connection:
    """A connection to ``path`` in WAL mode, the file made if missing (as the blacklist
    makes its own)."""
    db = sqlite3.connect(path, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT, v TEXT)")
    return db


def test_a_reopen_does_not_cause_the_next(
    tmpfs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by review: a reopen closes the pool's last connection, which removes the
    WAL index; the next connection's new index passed for a replacement, and each
    reopen caused the next, for as long as the service ran. The first is the quiet one
    of a file the pool's own first connection made (as the blacklist's does)."""
    path = tmpfs_dir / "t.sqlite"
    clock = Clock()
    pool = ConnectionPool(
        partial(wal_file, path), cache_ttl=1.0, clock=clock, watch=path, label="test file"
    )
    caplog.set_level(logging.INFO)
    try:
        for _ in range(6):
            assert pool.query(SQL, ("a",)) == []
            clock.now += 1.0
    finally:
        pool.close()
    assert [r.getMessage() for r in caplog.records] == []


def test_replaced_file_drops_results_cached_from_the_old_one(tmp_path: Path) -> None:
    path, clock, pool = watched_file(tmp_path, cache_ttl=10)
    clock.now += 9.0
    assert pool.query(SQL, ("a",)) == [("old",)]  # cached at 100.0, kept until 110.0
    replace_by_rename(path, "new")
    clock.now += 1.0  # the file check is due (every 10 s); the cached result is not
    assert pool.query(SQL, ("a",)) == [("new",)]


def test_without_ttl_the_file_is_checked_at_the_minimum_interval(tmp_path: Path) -> None:
    path, clock, pool = watched_file(tmp_path, cache_ttl=0)
    replace_by_rename(path, "new")
    clock.now += MIN_CHECK_INTERVAL / 2
    assert pool.query(SQL, ("a",)) == [("old",)]  # no cache, but not checked yet
    clock.now += MIN_CHECK_INTERVAL / 2
    assert pool.query(SQL, ("a",)) == [("new",)]


def test_the_file_is_checked_once_per_ttl(tmp_path: Path) -> None:
    path, clock, pool = watched_file(tmp_path)
    replace_by_rename(path, "new")
    for _ in range(7):
        clock.now += 0.125
        assert pool.query(SQL, ("b",)) == []  # no result cached; still the old file
    clock.now += 0.125
    assert pool.query(SQL, ("a",)) == [("new",)]


def test_removed_file_is_an_error_with_a_log_line_until_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock, pool = watched_file(tmp_path)
    inode = path.stat().st_ino
    path.unlink()
    caplog.set_level(logging.INFO)
    clock.now += 1.0
    for _ in range(3):  # not the old data, not the cached result, and one log line
        with pytest.raises(sqlite3.OperationalError, match="No such file or directory"):
            pool.query(SQL, ("a",))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.ERROR,
            f"test file {path} missing (was inode {inode}): No such file or directory;"
            " lookups fail until it is back",
        )
    ]
    caplog.clear()
    make_file(path, "back")
    # A file that is missing is looked for at every query: back at once.
    assert pool.query(SQL, ("a",)) == [("back",)]
    assert [r.getMessage() for r in caplog.records] == [
        f"test file {path} back (inode {path.stat().st_ino}): reopened"
    ]


def test_a_file_never_seen_is_left_to_the_opener(tmp_path: Path) -> None:
    """A file that did not exist yet is no "missing" state: the opener decides (the
    blacklist creates its file on first use, the directory reports it)."""
    path = tmp_path / "later.sqlite"
    pool = ConnectionPool(
        lambda: sqlite3.connect(make_file(path, "made") if not path.exists() else path),
        cache_ttl=1.0,
        clock=Clock(),
        watch=path,
    )
    assert pool.query(SQL, ("a",)) == [("made",)]
    assert pool.query(SQL, ("a",)) == [("made",)]


def test_connections_in_use_at_the_reopen_are_closed_not_pooled(tmp_path: Path) -> None:
    """A lookup that started on the old file finishes there, but its connection is not
    given back to the pool, and its result is not cached for the new file."""
    path = make_file(tmp_path / "t.sqlite", "old")
    clock = Clock()
    opened: list[sqlite3.Connection] = []
    in_query = threading.Event()
    go_on = threading.Event()

    class Slow(sqlite3.Connection):
        def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
            if threading.current_thread().name == "slow":
                in_query.set()
                go_on.wait(5)
            return super().execute(*args, **kwargs)

    def opener() -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, factory=Slow)
        opened.append(db)
        return db

    pool = ConnectionPool(opener, cache_ttl=1.0, clock=clock, watch=path)
    assert pool.query(SQL, ("b",)) == []  # one connection, on the old file, now idle
    result: list[Any] = []
    slow = threading.Thread(target=lambda: result.extend(pool.query(SQL, ("a",))), name="slow")
    slow.start()
    assert in_query.wait(5)  # the slow lookup holds the old connection
    replace_by_rename(path, "new")
    clock.now += 1.0
    assert pool.query(SQL, ("b",)) == []  # the check: reopened
    go_on.set()
    slow.join(5)
    assert result == [("old",)]  # it had started on the old file
    assert pool.query(SQL, ("a",)) == [("new",)]  # not the old result from the cache
    assert len(opened) == 2  # the first was closed: one new connection serves all
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")


def test_reopen_while_threads_use_the_pool(tmp_path: Path) -> None:
    path, clock, pool = watched_file(tmp_path, "v0", cache_ttl=0)
    stop = threading.Event()
    seen: list[str] = []
    lock = threading.Lock()

    queried = threading.Event()

    def work(n: int) -> None:
        while not stop.is_set():
            [(value,)] = pool.query(SQL, ("a",))
            with lock:
                seen.append(value)
            queried.set()

    def replace(n: int) -> None:
        for version in range(1, 21):
            replace_by_rename(path, f"v{version}")
            clock.now += MIN_CHECK_INTERVAL
            # Let the workers query each version before the next replacement.
            queried.clear()
            assert queried.wait(5), "no worker queried the pool"
        clock.now += MIN_CHECK_INTERVAL
        stop.set()

    errors = hammer(lambda n: replace(n) if n == 0 else work(n), threads=5)
    assert errors == []
    assert pool.query(SQL, ("a",)) == [("v20",)]


def test_a_closed_pool_keeps_no_connection_and_still_answers(db_path: Path) -> None:
    """A store retired by a reload: its idle connections close at once, and a session
    still using it gets its answer on a connection that closes after the query."""
    before = descriptors_on(db_path)  # the fixture's own connection, until collected
    pool = opener(db_path)
    assert pool.query("SELECT v FROM t") == [("one",)]
    assert descriptors_on(db_path) == before + 1
    pool.close()
    assert descriptors_on(db_path) == before
    assert pool.query("SELECT v FROM t") == [("one",)]
    assert descriptors_on(db_path) == before


def test_a_retired_pool_does_not_report_its_own_wal_index_churn(
    tmpfs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev155 F3: a pool retired by a reload (close(): it keeps no connection)
    opens and closes one per query; closing the file's last connection removes the
    WAL index, and the next check said "WAL index removed: reopened" at every query
    of a session still on the old configuration."""
    path = tmpfs_dir / "t.sqlite"
    clock = Clock()
    pool = ConnectionPool(
        partial(wal_file, path), cache_ttl=1.0, clock=clock, watch=path, label="test file"
    )
    assert pool.query(SQL, ("a",)) == []
    pool.close()
    caplog.set_level(logging.INFO)
    for _ in range(6):
        clock.now += 1.0
        assert pool.query(SQL, ("a",)) == []
    assert [r.getMessage() for r in caplog.records] == []
