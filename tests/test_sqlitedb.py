"""ConnectionPool: results reused for cache_ttl, errors never cached, no cache at 0."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from smtpguard.sqlitedb import ConnectionPool

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
