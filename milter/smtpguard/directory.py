"""The directory: users and their states, aliases, send-as rights, lists.

The embedded backend is a SQLite file that the milter opens read-only, through a small
pool of connections (eight by default) that libmilter's threads share
(:mod:`smtpguard.sqlitedb`). ``smtpguard directory import`` writes it; a file replaced
by rename (rsync, configuration management) is reopened within ``directory.cache_ttl``.
Every backend failure (missing or removed file, lock held past the timeout, corrupt
file) surfaces as :class:`DirectoryError`, which checks turn into a temporary error,
never into "unknown user".
"""

from __future__ import annotations

import csv
import sqlite3
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from smtpguard.sqlitedb import ConnectionPool

USER_STATES = ("active", "locked", "suspended", "moving", "overquota")
LIST_POLICIES = ("open", "members", "posters", "domain")

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY,             -- lower-cased
    login   TEXT UNIQUE,                  -- SASL login; defaults to the address
    state   TEXT NOT NULL DEFAULT 'active'
);
CREATE TABLE IF NOT EXISTS aliases (
    address TEXT NOT NULL,
    target  TEXT NOT NULL,
    PRIMARY KEY (address, target)
);
CREATE TABLE IF NOT EXISTS send_as (
    login   TEXT NOT NULL,
    address TEXT NOT NULL,                -- exact address, or "@domain" for a whole domain
    PRIMARY KEY (login, address)
);
CREATE TABLE IF NOT EXISTS lists (
    address TEXT PRIMARY KEY,
    policy  TEXT NOT NULL DEFAULT 'open'
);
CREATE TABLE IF NOT EXISTS list_members (
    list    TEXT NOT NULL,
    address TEXT NOT NULL,
    role    TEXT NOT NULL DEFAULT 'member',  -- member | poster
    PRIMARY KEY (list, address, role)
);
"""


class DirectoryError(Exception):
    """The directory could not answer (temporary from the client's point of view)."""


class Kind(Enum):
    NONE = "none"
    USER = "user"
    ALIAS = "alias"
    LIST = "list"


@dataclass(frozen=True, slots=True)
class Recipient:
    kind: Kind
    state: str = "active"
    list_policy: str = "open"


@dataclass(frozen=True, slots=True)
class Login:
    login: str
    address: str
    state: str


class Directory(Protocol):
    def recipient(self, address: str) -> Recipient: ...
    def login(self, login: str) -> Login | None: ...
    def may_send_as(self, login: Login, address: str) -> bool: ...
    def may_post(self, list_address: str, sender: str) -> bool: ...


class NoDirectory:
    """``backend = "none"``: nobody is known, every local recipient is unknown."""

    def recipient(self, address: str) -> Recipient:
        return Recipient(Kind.NONE)

    def login(self, login: str) -> Login | None:
        return None

    def may_send_as(self, login: Login, address: str) -> bool:
        return address == login.address

    def may_post(self, list_address: str, sender: str) -> bool:
        return True


class SqliteDirectory:
    # Alias chains longer than this are treated as loops.
    MAX_ALIAS_DEPTH = 8

    def __init__(
        self,
        path: Path,
        timeout: float,
        *,
        cache_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.timeout = timeout
        # Watched: a file replaced by rename is reopened within cache_ttl, a removed
        # one is an error (sqlitedb's docstring says why and how).
        self._shared = ConnectionPool(
            self._open, cache_ttl=cache_ttl, clock=clock, watch=path, label="directory file"
        )

    def _open(self) -> sqlite3.Connection:
        return sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=self.timeout,
            check_same_thread=False,
        )

    def _query(self, sql: str, args: tuple[str, ...]) -> list[tuple[str, ...]]:
        try:
            return self._shared.query(sql, args)
        except sqlite3.Error as exc:
            raise DirectoryError(f"{self.path}: {exc}") from None

    def recipient(self, address: str) -> Recipient:
        address = address.lower()
        seen: set[str] = set()
        current = address
        for depth in range(self.MAX_ALIAS_DEPTH):
            rows = self._query("SELECT state FROM users WHERE address = ?", (current,))
            if rows:
                return Recipient(Kind.USER if depth == 0 else Kind.ALIAS, state=rows[0][0])
            rows = self._query("SELECT policy FROM lists WHERE address = ?", (current,))
            if rows:
                return Recipient(Kind.LIST, list_policy=rows[0][0])
            targets = self._query("SELECT target FROM aliases WHERE address = ?", (current,))
            if not targets:
                # At depth > 0 this is an alias pointing outside the directory.
                return Recipient(Kind.NONE if depth == 0 else Kind.ALIAS)
            if len(targets) > 1:
                # A fan-out alias delivers to whichever targets exist: the alias itself
                # is a valid recipient whatever the state of one member.
                return Recipient(Kind.ALIAS)
            seen.add(current)
            current = targets[0][0].lower()
            if current in seen:
                break
        return Recipient(Kind.ALIAS)

    def login(self, login: str) -> Login | None:
        rows = self._query(
            "SELECT login, address, state FROM users WHERE login = ? OR address = ?"
            " ORDER BY login = ? DESC LIMIT 1",
            (login, login.lower(), login),
        )
        if not rows:
            return None
        name, address, state = rows[0]
        return Login(name or address, address, state)

    def may_send_as(self, login: Login, address: str) -> bool:
        address = address.lower()
        if address == login.address:
            return True
        domain = "@" + address.rpartition("@")[2]
        if self._query(
            "SELECT 1 FROM send_as WHERE login = ? AND address IN (?, ?)",
            (login.login, address, domain),
        ):
            return True
        return bool(
            self._query(
                "SELECT 1 FROM aliases WHERE address = ? AND target = ?", (address, login.address)
            )
        )

    def may_post(self, list_address: str, sender: str) -> bool:
        list_address, sender = list_address.lower(), sender.lower()
        rows = self._query("SELECT policy FROM lists WHERE address = ?", (list_address,))
        if not rows:
            return True
        policy = rows[0][0]
        if policy == "open":
            return True
        if policy == "domain":
            return sender.rpartition("@")[2] == list_address.rpartition("@")[2]
        roles = ("poster",) if policy == "posters" else ("member", "poster")
        found = self._query(
            "SELECT role FROM list_members WHERE list = ? AND address = ?",
            (list_address, sender),
        )
        return any(r[0] in roles for r in found)


# --- import -------------------------------------------------------------------------


class ImportError_(Exception):
    """A row of an import file is invalid; the message names file and row."""


@dataclass(frozen=True, slots=True)
class ImportCounts:
    users: int = 0
    aliases: int = 0
    send_as: int = 0
    lists: int = 0
    members: int = 0


def create_database(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as db:
        db.executescript(SCHEMA)
        db.commit()


def import_file(db_path: Path, source: Path, *, replace: bool = False) -> ImportCounts:
    """Load users, aliases, send-as rights and lists from TOML or CSV into the database.

    TOML: ``[[user]] address login state send_as``, ``[[alias]] address target``,
    ``[[list]] address policy members posters``. CSV: one row per record with a ``type``
    column (``user``, ``alias``, ``send_as``, ``list``, ``member``, ``poster``) and the
    columns ``address``, ``login``, ``state``, ``target``, ``policy``, ``list``.
    The whole file goes in one transaction: a bad row changes nothing.
    """
    records = list(_read_toml(source) if source.suffix == ".toml" else _read_csv(source))
    create_database(db_path)
    counts = {"users": 0, "aliases": 0, "send_as": 0, "lists": 0, "members": 0}
    with closing(sqlite3.connect(db_path, timeout=10)) as db:
        try:
            db.execute("BEGIN IMMEDIATE")
            if replace:
                for table in ("users", "aliases", "send_as", "lists", "list_members"):
                    db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            for where, kind, rec in records:
                _insert(db, where, kind, rec, counts)
            db.commit()
        except BaseException:
            db.rollback()
            raise
    return ImportCounts(**counts)


def _insert(
    db: sqlite3.Connection, where: str, kind: str, rec: dict[str, str], counts: dict[str, int]
) -> None:
    def need(key: str) -> str:
        value = rec.get(key, "").strip()
        if not value:
            raise ImportError_(f"{where}: missing {key}")
        return value

    if kind == "user":
        address = need("address").lower()
        state = rec.get("state", "").strip() or "active"
        if state not in USER_STATES:
            raise ImportError_(f"{where}: state must be one of {', '.join(USER_STATES)}")
        login = rec.get("login", "").strip() or address
        db.execute(
            "INSERT OR REPLACE INTO users (address, login, state) VALUES (?, ?, ?)",
            (address, login, state),
        )
        counts["users"] += 1
        for other in filter(None, (s.strip() for s in rec.get("send_as", "").split(","))):
            db.execute("INSERT OR IGNORE INTO send_as VALUES (?, ?)", (login, other.lower()))
            counts["send_as"] += 1
    elif kind == "alias":
        db.execute(
            "INSERT OR IGNORE INTO aliases VALUES (?, ?)",
            (need("address").lower(), need("target").lower()),
        )
        counts["aliases"] += 1
    elif kind == "send_as":
        db.execute(
            "INSERT OR IGNORE INTO send_as VALUES (?, ?)", (need("login"), need("address").lower())
        )
        counts["send_as"] += 1
    elif kind == "list":
        policy = rec.get("policy", "").strip() or "open"
        if policy not in LIST_POLICIES:
            raise ImportError_(f"{where}: policy must be one of {', '.join(LIST_POLICIES)}")
        address = need("address").lower()
        db.execute("INSERT OR REPLACE INTO lists VALUES (?, ?)", (address, policy))
        counts["lists"] += 1
        for role, key in (("member", "members"), ("poster", "posters")):
            for member in filter(None, (m.strip() for m in rec.get(key, "").split(","))):
                db.execute(
                    "INSERT OR IGNORE INTO list_members VALUES (?, ?, ?)",
                    (address, member.lower(), role),
                )
                counts["members"] += 1
    elif kind in ("member", "poster"):
        db.execute(
            "INSERT OR IGNORE INTO list_members VALUES (?, ?, ?)",
            (need("list").lower(), need("address").lower(), kind),
        )
        counts["members"] += 1
    else:
        raise ImportError_(f"{where}: unknown record type {kind!r}")


def _read_csv(source: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    try:
        with source.open(newline="", encoding="utf-8") as fh:
            for n, row in enumerate(csv.DictReader(fh), start=2):
                clean = {k.strip(): (v or "") for k, v in row.items() if k}
                yield f"{source}:{n}", clean.get("type", "").strip(), clean
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImportError_(f"{source}: {exc}") from None


def _read_toml(source: Path) -> Iterable[tuple[str, str, dict[str, str]]]:
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ImportError_(f"{source}: {exc}") from None
    out = []
    for kind, key in (("user", "user"), ("alias", "alias"), ("list", "list")):
        entries = data.pop(key, [])
        if not isinstance(entries, list):
            raise ImportError_(f"{source}: {key} must be an array of tables ([[{key}]])")
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ImportError_(f"{source}: {key}[{n}] must be a table")
            rec = {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in entry.items()}
            out.append((f"{source}: {key}[{n}]", kind, rec))
    if data:
        raise ImportError_(f"{source}: unknown key {sorted(data)[0]!r}")
    return out
