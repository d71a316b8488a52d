"""ConnectionPool's result cache: bounded, and shared by libmilter's threads."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from smtpguard.sqlitedb import ConnectionPool
from support.fake_dns import FakeClock
from support.threads import hammer

SQL = "SELECT v FROM t WHERE k = ?"


def make_db(path: Path, keys: int) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (k INTEGER, v TEXT)")
        db.executemany("INSERT INTO t VALUES (?, 'old')", [(k,) for k in range(keys)])
    return path


def pool(path: Path, cache_size: int) -> ConnectionPool:
    return ConnectionPool(
        lambda: sqlite3.connect(path, check_same_thread=False),
        cache_ttl=60,
        cache_size=cache_size,
        clock=FakeClock(),
    )


def test_cache_is_bounded(tmp_path: Path) -> None:
    path = make_db(tmp_path / "t.sqlite", 3)
    p = pool(path, cache_size=2)
    for k in range(3):
        assert p.query(SQL, (k,)) == [("old",)]
    with sqlite3.connect(path) as db:
        db.execute("UPDATE t SET v = 'new'")
    # Two results fit: the first one asked was dropped and is read again.
    assert [p.query(SQL, (k,))[0][0] for k in (2, 1, 0)] == ["old", "old", "new"]


def test_threads_share_one_cache(tmp_path: Path) -> None:
    path = make_db(tmp_path / "t.sqlite", 100)
    p = pool(path, cache_size=20)

    def work(n: int) -> None:
        for i in range(300):
            assert p.query(SQL, ((n * 13 + i) % 100,)) == [("old",)]

    assert hammer(work) == []
