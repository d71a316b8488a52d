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

import codecs
import csv
import io
import logging
import os
import sqlite3
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol

from smtpguard.address import (
    AddressError,
    canonical_address,
    canonical_domain,
    domain_to_unicode,
    is_valid_domain,
    parse_path,
    strip_extension,
)
from smtpguard.sqlitedb import WatchedFile

log = logging.getLogger("smtpguard")

#: Seconds between two tries to roll back a hot journal this process could not.
ROLL_BACK_RETRY = 30

USER_STATES = ("active", "locked", "suspended", "moving", "overquota")
LIST_POLICIES = ("open", "members", "posters", "domain")

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY,             -- canonical, lower-cased (see _address)
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
    #: For a list: the list's own address (an alias or an extension may lead to it),
    #: which :meth:`Directory.may_post` is to be asked about.
    list_address: str = ""
    #: For an alias that fans out: the address and policy of every list that is not
    #: open among the addresses it reaches; a poster must be allowed on each.
    lists_reached: tuple[tuple[str, str], ...] = ()


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
    """``backend = "none"``: no recipient is known (the mailbox check is off then) and
    no login is verified: the MTA's SASL vouched for it, and it may send as itself
    only, with or without an address extension. A login without "@" is itself at
    ``login_domain`` (``policy.default_login_domain``; review rev123 F2: such logins,
    Dovecot's usual, could send as nobody); without one, as nobody."""

    def __init__(self, recipient_delimiter: str = "", login_domain: str = "") -> None:
        self.delimiters = recipient_delimiter
        self.login_domain = login_domain

    def recipient(self, address: str) -> Recipient:
        return Recipient(Kind.NONE)

    def login(self, login: str) -> Login | None:
        if "@" in login:
            address = _key(login)
        elif self.login_domain:
            try:
                parsed = parse_path(f"{login}@{self.login_domain}", smtputf8=True)
            except AddressError:
                parsed = None  # not a local part: as nobody
            address = _key(parsed.text) if parsed is not None else ""
        else:
            address = ""
        return Login(login, address, "active")

    def may_send_as(self, login: Login, address: str) -> bool:
        if not login.address:
            return False
        key = _key(address)
        return login.address in (key, strip_extension(key, self.delimiters))

    def may_post(self, list_address: str, sender: str) -> bool:
        return True


#: Alias hops a lookup follows at most; an import refuses a longer chain (and loops).
MAX_ALIAS_DEPTH: Final = 8


class SqliteDirectory(WatchedFile):
    """The embedded directory. Addresses are compared canonical and without regard to
    case; logins as Postfix's reject_sender_login_mismatch compares them, without
    regard to ASCII case. With ``recipient_delimiter`` an address that is not in the
    file is looked up again without its extension, as the MTA delivers it."""

    MAX_ALIAS_DEPTH = MAX_ALIAS_DEPTH
    label = "directory file"

    def __init__(
        self,
        path: Path,
        timeout: float,
        *,
        recipient_delimiter: str = "",
        login_domain: str = "",
        **pool: Any,
    ) -> None:
        """``pool``: :class:`WatchedFile`'s keywords (``cache_ttl``, ``clock``);
        ``login_domain``: where a login without "@" is looked up when it is not found
        as it is (``policy.default_login_domain``)."""
        super().__init__(path, timeout, **pool)
        self.delimiters = recipient_delimiter
        self.login_domain = login_domain
        #: When a failed roll-back of a hot journal may be tried (and logged) again.
        self._next_roll_back = 0.0

    def _open(self) -> sqlite3.Connection:
        return self._connect_existing("ro")

    def _query(self, sql: str, args: tuple[str, ...]) -> list[tuple[str, ...]]:
        try:
            rows = self._query_once(sql, args)
        except DirectoryError as exc:
            self._lookups_fail(str(exc).removeprefix(f"{self.path}: "))
            raise
        self._lookups_answer()
        return rows

    def _query_once(self, sql: str, args: tuple[str, ...]) -> list[tuple[str, ...]]:
        try:
            return self._shared.query(sql, args)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_READONLY_ROLLBACK":
                raise DirectoryError(f"{self.path}: {exc}") from None
            if not self._roll_back(exc):
                raise DirectoryError(
                    f"{self.path}: {exc} (the journal of an interrupted write is left:"
                    " any smtpguard directory command run as a user who may write the"
                    " file and its directory rolls it back)"
                ) from None
        try:
            return self._shared.query(sql, args)
        except sqlite3.Error as exc:
            raise DirectoryError(f"{self.path}: {exc}") from None

    def _roll_back(self, exc: sqlite3.Error) -> bool:
        """Roll back the hot journal an interrupted write left (an import killed
        midway): lookups open the file read-only, which SQLite cannot do then, and
        every local recipient was deferred until someone ran a CLI command (review
        rev50). A connection that may write rolls it back at its first read. After a
        failure, tried (and logged) again only every :data:`ROLL_BACK_RETRY` seconds:
        not a connection and an error line per recipient (rev53)."""
        now = time.monotonic()
        if now < self._next_roll_back:
            return False
        try:
            with closing(self._connect_existing("rw")) as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except sqlite3.Error as failed:
            self._next_roll_back = now + ROLL_BACK_RETRY
            log.error(
                "%s: %s, and this process cannot roll back the journal an interrupted"
                " write left (%s: it must be able to write the file and its directory);"
                " lookups fail until it is rolled back, tried again in %d s",
                self.path,
                exc,
                failed,
                ROLL_BACK_RETRY,
            )
            return False
        log.warning("%s: rolled back the journal of an interrupted write", self.path)
        return True

    # Every address is looked up in the form _address stores: canonical, lower-cased;
    # and in the form an older version stored (U-labels, _stored_forms).

    def recipient(self, address: str) -> Recipient:
        key = _key(address)
        found = self._recipient(key)
        if found.kind is Kind.NONE and (base := strip_extension(key, self.delimiters)):
            return self._recipient(base)
        return found

    def _known(self, key: str) -> bool:
        """Whether the directory knows ``key`` itself (a user, alias or list, or an
        address a send-as right names): then its extension is not stripped, as
        Postfix's lookups try the whole address first. ``john-smith@`` is not
        ``john@`` when john-smith@ is a mailbox of its own."""
        forms = _stored_forms(key)
        return bool(
            self._query(
                "SELECT 1 FROM users WHERE address IN (?, ?) UNION ALL"
                " SELECT 1 FROM aliases WHERE address IN (?, ?) UNION ALL"
                " SELECT 1 FROM lists WHERE address IN (?, ?) UNION ALL"
                " SELECT 1 FROM send_as WHERE address IN (?, ?) LIMIT 1",
                forms * 4,
            )
        )

    def _recipient(self, address: str) -> Recipient:
        seen: set[str] = set()
        current = address
        hops = 0
        # Each alias hop may take one more step, without an address extension.
        for depth in range(2 * self.MAX_ALIAS_DEPTH + 2):
            forms = _stored_forms(current)
            # One statement per address, so one snapshot: three queries (and three
            # cache entries) read an import half before and half after its commit, and
            # an address that turned from user to alias was nothing (review rev109 F1).
            rows = self._query(
                "SELECT 'user', state FROM users WHERE address IN (?, ?) UNION ALL"
                " SELECT 'list', policy FROM lists WHERE address IN (?, ?) UNION ALL"
                " SELECT 'alias', target FROM aliases WHERE address IN (?, ?)",
                forms * 3,
            )
            users = [value for kind, value in rows if kind == "user"]
            lists = [value for kind, value in rows if kind == "list"]
            targets = [value for kind, value in rows if kind == "alias"]
            if users:
                return Recipient(Kind.USER if depth == 0 else Kind.ALIAS, state=users[0])
            if lists:
                return Recipient(Kind.LIST, list_policy=lists[0], list_address=current)
            if not targets:
                base = strip_extension(current, self.delimiters) if depth else None
                if base is not None and base not in seen:
                    # An alias's target staff+x@ is delivered to staff@ by the MTA.
                    seen.add(current)
                    current = base
                    continue
                # At depth > 0 this is an alias pointing outside the directory.
                return Recipient(Kind.NONE if depth == 0 else Kind.ALIAS)
            if len(targets) > 1:
                # A fan-out alias delivers to whichever targets exist: the alias itself
                # is a valid recipient whatever the state of one member; but a list it
                # reaches keeps its policy.
                seen.add(current)
                reached = self._restricted_lists({_key(t) for t in targets}, seen)
                return Recipient(Kind.ALIAS, lists_reached=reached)
            seen.add(current)
            current = _key(targets[0])
            hops += 1
            if current in seen or hops > self.MAX_ALIAS_DEPTH:
                break
        # A loop, or a chain longer than the lookup follows (an import refuses both):
        # what it ends in (a locked user, a members-only list) is not known, so neither
        # an accept nor a refusal (review rev109 F2: accepted, a list's policy unseen).
        raise DirectoryError(
            f"{self.path}: {address}: an alias loop or a chain of more than"
            f" {self.MAX_ALIAS_DEPTH} aliases (import the directory again: it names them)"
        )

    def _restricted_lists(self, frontier: set[str], seen: set[str]) -> tuple[tuple[str, str], ...]:
        """Every list that is not open among the addresses ``frontier`` leads to
        through aliases (and address extensions), breadth first, a query per kind and
        level whatever the number of targets."""
        found: dict[str, str] = {}
        seen = seen | frontier
        for _ in range(self.MAX_ALIAS_DEPTH):
            if not frontier:
                break
            by_form = {form: key for key in frontier for form in _stored_forms(key)}
            forms = tuple(by_form)
            marks = ", ".join("?" * len(forms))
            for address, policy in self._query(
                f"SELECT address, policy FROM lists WHERE address IN ({marks})",  # noqa: S608 - placeholders
                forms,
            ):
                if policy != "open":
                    found.setdefault(by_form.get(address, address), policy)
            known = {
                by_form.get(row[0], row[0])
                for row in self._query(
                    f"SELECT address FROM users WHERE address IN ({marks}) UNION"  # noqa: S608
                    f" SELECT address FROM lists WHERE address IN ({marks}) UNION"
                    f" SELECT address FROM aliases WHERE address IN ({marks})",
                    forms * 3,
                )
            }
            following = {
                _key(row[0])
                for row in self._query(
                    f"SELECT target FROM aliases WHERE address IN ({marks})",  # noqa: S608
                    forms,
                )
            }
            for key in frontier - known:
                if (base := strip_extension(key, self.delimiters)) is not None:
                    following.add(base)
            frontier = following - seen
            seen |= frontier
        if frontier and self._any_alias_or_list(frontier):
            # Aliases past the depth the lookup follows: a members-only list there
            # would go unseen (review rev109 F2). An import refuses such chains.
            raise DirectoryError(
                f"{self.path}: a chain of more than {self.MAX_ALIAS_DEPTH} aliases"
                " (import the directory again: it names them)"
            )
        return tuple(sorted(found.items()))

    def _any_alias_or_list(self, keys: set[str]) -> bool:
        forms = tuple(form for key in keys for form in _stored_forms(key))
        marks = ", ".join("?" * len(forms))
        return bool(
            self._query(
                f"SELECT 1 FROM aliases WHERE address IN ({marks}) UNION ALL"  # noqa: S608
                f" SELECT 1 FROM lists WHERE address IN ({marks}) LIMIT 1",
                forms * 2,
            )
        )

    def login(self, login: str) -> Login | None:
        found = self._login(login)
        if found is None and login and "@" not in login and self.login_domain:
            # A login without "@" is its user at policy.default_login_domain, as with
            # backend "none" (review rev198 L1: Dovecot's bare "alice" was unknown
            # here, and her every message refused for good).
            return self._login(f"{login}@{self.login_domain}")
        return found

    def _login(self, login: str) -> Login | None:
        rows = self._query(
            "SELECT login, address, state FROM users WHERE login = ? OR address IN (?, ?)"
            " ORDER BY login = ? DESC LIMIT 1",
            (login, *_stored_forms(_key(login)), login),
        )
        if not rows:
            # Postfix matches the SASL login case-insensitively (strcasecmp in
            # reject_sender_login_mismatch), and a Cyrus SASL login reaches us as typed.
            # Asked only after the indexed query found nothing; two logins that differ
            # only in case (an import refuses them now) match neither.
            rows = self._query(
                "SELECT login, address, state FROM users WHERE login = ? COLLATE NOCASE LIMIT 2",
                (login,),
            )
            if len(rows) != 1:
                return None
        name, address, state = rows[0]
        return Login(name or address, address, state)

    def may_send_as(self, login: Login, address: str) -> bool:
        key = _key(address)
        if self._may_send_as(login, key):
            return True
        # Postfix's smtpd_sender_login_maps lookup strips the extension of an address
        # it does not find whole.
        base = strip_extension(key, self.delimiters)
        return base is not None and not self._known(key) and self._may_send_as(login, base)

    def _may_send_as(self, login: Login, address: str) -> bool:
        if address == _key(login.address):
            return True
        domain = "@" + address.rpartition("@")[2]
        if self._query(
            "SELECT 1 FROM send_as WHERE login = ? AND address IN (?, ?, ?, ?)",
            (login.login, *_stored_forms(address), *_stored_forms(domain)),
        ):
            return True
        return bool(
            self._query(
                "SELECT 1 FROM aliases WHERE address IN (?, ?) AND target IN (?, ?)",
                (*_stored_forms(address), *_stored_forms(_key(login.address))),
            )
        )

    def may_post(self, list_address: str, sender: str) -> bool:
        list_address, sender = _key(list_address), _key(sender)
        rows = self._query(
            "SELECT policy FROM lists WHERE address IN (?, ?)", _stored_forms(list_address)
        )
        if not rows and (base := strip_extension(list_address, self.delimiters)):
            # list+anything@ reaches the list's members as the MTA delivers it: the
            # list's policy applies to it (recipient() found the list the same way).
            list_address = base
            rows = self._query(
                "SELECT policy FROM lists WHERE address IN (?, ?)", _stored_forms(base)
            )
        if not rows:
            return True
        policy = rows[0][0]
        if policy == "open":
            return True
        if policy == "domain":
            return sender.rpartition("@")[2] == list_address.rpartition("@")[2]
        roles = ("poster",) if policy == "posters" else ("member", "poster")
        # A member posting from alice+lists@ is the member alice@ (unless alice+lists@
        # is a mailbox of its own here).
        senders = [sender]
        bare = strip_extension(sender, self.delimiters)
        if bare is not None and not self._known(sender):
            senders.append(bare)
        for form in senders:
            found = self._query(
                "SELECT role FROM list_members WHERE list IN (?, ?) AND address IN (?, ?)",
                (*_stored_forms(list_address), *_stored_forms(form)),
            )
            if any(r[0] in roles for r in found):
                return True
        return False


# --- the file's contents: import, export, remove ------------------------------------------


class ImportError_(Exception):
    """An import file is invalid: one problem a line, each naming file, row and field."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ChangeRefused(Exception):
    """A change that would leave the directory inconsistent (an alias pointing at nothing)."""


@dataclass(frozen=True, slots=True)
class ImportCounts:
    users: int = 0
    #: Distinct alias addresses, and their targets (review rev159 F4: the target rows
    #: were counted as aliases, and posters as members).
    aliases: int = 0
    send_as: int = 0
    lists: int = 0
    members: int = 0
    alias_targets: int = 0
    posters: int = 0


class UserRow(NamedTuple):
    address: str
    login: str
    state: str


class AliasRow(NamedTuple):
    address: str
    target: str


class SendAsRow(NamedTuple):
    login: str
    address: str  # exact address, or "@domain"


class ListRow(NamedTuple):
    address: str
    policy: str


class MemberRow(NamedTuple):
    list_address: str
    address: str
    role: str  # member | poster


Row = UserRow | AliasRow | SendAsRow | ListRow | MemberRow


@dataclass(frozen=True, slots=True)
class Contents:
    """Every row of a directory file, sorted: what ``export`` writes, ``show`` reads and
    ``import`` checks new rows against."""

    users: tuple[UserRow, ...] = ()
    aliases: tuple[AliasRow, ...] = ()
    send_as: tuple[SendAsRow, ...] = ()
    lists: tuple[ListRow, ...] = ()
    members: tuple[MemberRow, ...] = ()

    def rows(self) -> Iterator[Row]:
        yield from self.users
        yield from self.aliases
        yield from self.send_as
        yield from self.lists
        yield from self.members


def create_database(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as db:
        db.executescript(SCHEMA)
        db.commit()


def _read_contents(db: sqlite3.Connection) -> Contents:
    def rows(sql: str) -> list[tuple[str, ...]]:
        return sorted(db.execute(sql).fetchall())

    return Contents(
        users=tuple(UserRow(*r) for r in rows("SELECT address, login, state FROM users")),
        aliases=tuple(AliasRow(*r) for r in rows("SELECT address, target FROM aliases")),
        send_as=tuple(SendAsRow(*r) for r in rows("SELECT login, address FROM send_as")),
        lists=tuple(ListRow(*r) for r in rows("SELECT address, policy FROM lists")),
        members=tuple(MemberRow(*r) for r in rows("SELECT list, address, role FROM list_members")),
    )


def _open_existing(path: Path) -> sqlite3.Connection:
    """The directory file for the CLI's reads and edits, never created here: a typo in
    ``directory.path`` must not leave an empty directory behind."""
    if not path.is_file():
        raise DirectoryError(f"{path}: no such file (smtpguard directory import creates it)")
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise DirectoryError(f"{path}: {exc}") from None


def read_contents(path: Path) -> Contents:
    try:
        with closing(_open_existing(path)) as db:
            return _read_contents(db)
    except sqlite3.Error as exc:
        raise DirectoryError(f"{path}: {exc}") from None


def read_import(source: Path) -> ImportSource:
    """An import file read and checked row by row (:func:`import_file` writes it): a
    caller may read it with its own rights and write with the service's."""
    return ImportSource(
        source, _read_toml(source) if source.suffix == ".toml" else _read_csv(source)
    )


@dataclass(frozen=True, slots=True)
class ImportSource:
    """What :func:`read_import` read."""

    path: Path
    staged: _Staged


def import_file(
    db_path: Path,
    source: Path | ImportSource,
    *,
    replace: bool = False,
    is_local: Callable[[str], bool] | None = None,
    delimiters: str = "",
) -> ImportCounts:
    """Load users, aliases, send-as rights and lists from TOML or CSV into the database.

    The format is in README.md ("Directory import format"). Everything is checked
    before anything is written, and then written in one transaction: a file with any
    problem changes nothing, and :class:`ImportError_` lists every problem found, each
    naming the file, the row (``user[2]``, or the CSV line) and the field.

    Beyond each value on its own: an address is one of user, alias and list; a login
    belongs to one user; a send-as right names a user's login and a member a list; no
    alias leads back to itself, and no chain of aliases is longer than the lookup
    follows (:data:`MAX_ALIAS_DEPTH`). An alias target in a local domain (``is_local``,
    the config's ``site.local_domains``) must be a user, alias or list, itself or
    without its address extension (``delimiters``, ``site.recipient_delimiter``): mail
    to it would be accepted and then bounce. Targets elsewhere are forwards. Without ``replace`` the
    rows already in the file count too (a user given again replaces the stored one).
    """
    read = source if isinstance(source, ImportSource) else read_import(source)
    source, staged = read.path, read.staged
    if replace and not staged.rows and not staged.problems:
        # An empty or cut file (review rev109 F4): every local recipient refused, 550.
        raise ImportError_(
            f"{source}: no users, aliases or lists: --replace would empty the directory"
            " and every local recipient would be refused"
        )
    # Checked before the file is created, so a refused import creates no empty directory
    # (every local recipient unknown); checked again under the write lock below.
    existing = Contents()
    if not replace and db_path.exists():
        with suppress(DirectoryError):
            existing = read_contents(db_path)
    # The cross-row checks run even when rows were refused, on the rows that passed: the
    # operator gets every problem at once, not a second batch after fixing the first.
    _raise_problems(staged.problems + _cross_problems(staged, existing, is_local, delimiters))
    # A new file is written beside the path and linked there when complete: a running
    # milter that finds a file at the path reads it at once, and an empty schema there,
    # even for a moment, would make every local recipient unknown (550 for real users
    # while a removed directory is imported again; found by review).
    if db_path.exists():
        _import_into(db_path, staged, replace, is_local, delimiters)
    else:
        target = db_path.with_name(f".{db_path.name}.{os.getpid()}.new")
        try:
            # What a crashed import of a process with this id left, its journal too:
            # SQLite would roll a hot journal back into the new file.
            for leftover in (target, target.with_name(target.name + "-journal")):
                leftover.unlink(missing_ok=True)
            _import_into(target, staged, replace, is_local, delimiters)
            try:
                # A link, not a rename: it never replaces a file another import made at
                # the path meanwhile (its rows would be lost; second review). Then the
                # rows go into that one, under its write lock, as for any existing file.
                os.link(target, db_path)
            except FileExistsError:
                _import_into(db_path, staged, replace, is_local, delimiters)
        finally:
            target.unlink(missing_ok=True)
    aliases = [r for r in staged.rows if isinstance(r, AliasRow)]
    roles = [r.role for r in staged.rows if isinstance(r, MemberRow)]
    return ImportCounts(
        users=sum(isinstance(r, UserRow) for r in staged.rows),
        aliases=len({r.address for r in aliases}),
        send_as=sum(isinstance(r, SendAsRow) for r in staged.rows),
        lists=sum(isinstance(r, ListRow) for r in staged.rows),
        members=roles.count("member"),
        alias_targets=len(aliases),
        posters=roles.count("poster"),
    )


def _import_into(
    path: Path,
    staged: _Staged,
    replace: bool,
    is_local: Callable[[str], bool] | None,
    delimiters: str,
) -> None:
    """Write the staged rows into ``path`` in one transaction (the file and its tables
    made if missing), the cross-row checks made again under its write lock."""
    create_database(path)
    with closing(sqlite3.connect(path, timeout=10)) as db:
        try:
            db.execute("BEGIN IMMEDIATE")
            if replace:
                for table in ("users", "aliases", "send_as", "lists", "list_members"):
                    db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            else:
                _raise_problems(_cross_problems(staged, _read_contents(db), is_local, delimiters))
                _clear_given_again(db, staged.rows)
            _write(db, staged.rows)
            db.commit()
        except BaseException:
            db.rollback()
            raise


def _clear_given_again(db: sqlite3.Connection, rows: Iterable[Row]) -> None:
    """What the stored entries given again held beyond their own row: a user's send-as
    rights (under its stored login and under the login it is given now, which a user
    given again may have left), an alias's targets, a list's members and posters. The
    entry in the file is the whole of it (review rev123 F1: a send-as right the
    operator took away stayed, and a new user given an old login had its rights). A
    send-as, member or poster row of an entry not given again (CSV) adds to it."""
    for row in rows:
        if not isinstance(row, (UserRow, AliasRow, ListRow)):
            continue
        # Also as an older version stored an address written with U-labels.
        forms = _stored_forms(row.address)
        if isinstance(row, UserRow):
            stored = db.execute("SELECT login FROM users WHERE address IN (?, ?)", forms)
            logins = {row.login} | {login for (login,) in stored if login}
            for login in logins:
                db.execute("DELETE FROM send_as WHERE login = ?", (login,))
            # Its row as an older version stored it too (U-labels): written again
            # below in today's form, two rows would stay (review rev127 F2: a user
            # locked by the import stayed active, and its old login kept).
            db.execute("DELETE FROM users WHERE address IN (?, ?)", forms)
        elif isinstance(row, AliasRow):
            db.execute("DELETE FROM aliases WHERE address IN (?, ?)", forms)
        else:
            db.execute("DELETE FROM list_members WHERE list IN (?, ?)", forms)
            db.execute("DELETE FROM lists WHERE address IN (?, ?)", forms)


def _raise_problems(problems: list[str]) -> None:
    if problems:
        raise ImportError_(*problems)


def _write(db: sqlite3.Connection, rows: Iterable[Row]) -> None:
    for row in rows:
        if isinstance(row, UserRow):
            db.execute("INSERT OR REPLACE INTO users (address, login, state) VALUES (?, ?, ?)", row)
        elif isinstance(row, AliasRow):
            db.execute("INSERT OR IGNORE INTO aliases VALUES (?, ?)", row)
        elif isinstance(row, SendAsRow):
            db.execute("INSERT OR IGNORE INTO send_as VALUES (?, ?)", row)
        elif isinstance(row, ListRow):
            db.execute("INSERT OR REPLACE INTO lists VALUES (?, ?)", row)
        else:
            db.execute("INSERT OR IGNORE INTO list_members VALUES (?, ?, ?)", row)


# --- reading an import file ---------------------------------------------------------

_TOML_KEYS = {
    "user": ("address", "login", "state", "send_as"),
    "alias": ("address", "target"),
    "list": ("address", "policy", "members", "posters"),
}
#: TOML keys that take a string or an array of strings.
_MULTI = frozenset({"send_as", "target", "members", "posters"})

CSV_COLUMNS = ("type", "address", "login", "state", "target", "policy", "list")
_CSV_FIELDS = {
    "user": ("address", "login", "state"),
    "alias": ("address", "target"),
    "send_as": ("login", "address"),
    "list": ("address", "policy"),
    "member": ("list", "address"),
    "poster": ("list", "address"),
}


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a row came from: ``FILE: user[2]`` (TOML) or ``FILE:7`` (CSV line 7).

    ``names`` maps a row's field to its name in the file where they differ: a send-as
    right of ``user[2]`` is ``user[2].send_as[1]``, a member of ``list[0]`` names its
    list in ``list[0].address``.
    """

    file: str
    row: str
    toml: bool
    names: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.file}: {self.row}" if self.toml else f"{self.file}:{self.row}"

    def at(self, field: str) -> str:
        name = dict(self.names).get(field, field)
        return f"{self}.{name}" if self.toml else f"{self}: {name}"

    def ref(self) -> str:
        """The row for a message about another row of the same file."""
        return self.row if self.toml else f"line {self.row}"

    def naming(self, **names: str) -> _Where:
        return _Where(self.file, self.row, self.toml, tuple(names.items()))


class _Staged:
    """The rows read from a file, each with where it came from, and the problems."""

    def __init__(self) -> None:
        self.rows: dict[Row, _Where] = {}
        self.problems: list[str] = []
        self._first: dict[object, _Where] = {}
        # What records left out of ``rows`` name, as far as those values passed. The
        # cross-row checks must not report these missing too: fixing the user's state
        # fixes the alias to it as well.
        self.refused_addresses: set[str] = set()
        self.refused_lists: set[str] = set()
        self.refused_logins: set[str] = set()
        # A record not read at all could name anything: then nothing is called missing.
        self.unread = False

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{where}: {text}")

    def skip(self, where: str, text: str) -> None:
        """A problem that leaves a whole record unread."""
        self.problem(where, text)
        self.unread = True

    def refused(self, address: str, *, login: str = "", is_list: bool = False) -> None:
        """A record refused for its own values names ``address`` (and ``login``), each
        "" when that value was refused too."""
        if address:
            self.refused_addresses.add(address)
            if is_list:
                self.refused_lists.add(address)
        if login:
            self.refused_logins.add(login)

    def add(self, row: Row, where: _Where, field: str) -> None:
        # A user or list given twice would silently replace the first.
        key: object = (type(row), row.address) if isinstance(row, UserRow | ListRow) else row
        first = self._first.get(key)
        if first is not None:
            self.problem(where.at(field), f"given twice (also {first.ref()})")
            if isinstance(row, UserRow):
                # Its send-as rights are staged under this login, which is not.
                self.refused(row.address, login=row.login)
            return
        self._first[key] = where
        self.rows[row] = where


class _Invalid(ValueError):
    pass


def _key(address: str) -> str:
    """An address as the directory stores and looks it up (:func:`_address`)."""
    return canonical_address(address).lower()


def _ascii_lower(text: str) -> str:
    """``text`` with A-Z lowered and nothing else: SQLite's NOCASE, Postfix's strcasecmp."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _stored_forms(key: str) -> tuple[str, str]:
    """A key (an address or ``@domain``) as it is stored now, and with its A-labels as
    U-labels: how a directory imported by an older version stored an address written
    with U-labels. Both the same for any other address (the query stays one shape)."""
    head, at, domain = key.rpartition("@")
    if not at or "xn--" not in domain:
        return key, key
    return key, f"{head}@{domain_to_unicode(domain)}"


def _address(text: str) -> str:
    """A mailbox as the directory stores it: ``local@domain``, lower-cased, the local
    part unquoted where quotes are not needed (``"alice"@example.com`` is
    ``alice@example.com``, :func:`smtpguard.address.canonical_address`)."""
    try:
        parsed = parse_path(text, smtputf8=True)
    except AddressError as exc:
        raise _Invalid(f"invalid address {text!r} ({exc.reason})") from None
    if text.endswith("."):
        raise _Invalid(f"invalid address {text!r} (the domain ends with a dot)")
    if parsed.is_null or parsed.text != text:
        raise _Invalid(f"invalid address {text!r} (write local@domain only)")
    return _key(text)


def _send_as(text: str) -> str:
    if text.startswith("@"):
        domain = text[1:]
        if domain.endswith(".") or not is_valid_domain(domain, allow_utf8=True):
            raise _Invalid(f"invalid domain {text!r} (@ and a domain name)")
        return "@" + canonical_domain(domain)
    return _address(text)


def _login(text: str) -> str:
    if not text:
        raise _Invalid("empty login (leave it out: the login is then the address)")
    if any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in text):
        raise _Invalid(f"invalid login {text!r} (control character)")
    if text != text.strip():
        raise _Invalid(f"invalid login {text!r} (leading or trailing space)")
    return text


def _one_of(text: str, allowed: tuple[str, ...], what: str) -> str:
    if text not in allowed:
        raise _Invalid(f"unknown {what} {text!r} ({', '.join(allowed)})")
    return text


#: One value of a field and the field's name in the file (``send_as[1]``).
_Values = list[tuple[str, str]]


@dataclass(slots=True)
class _Record:
    """One record as read (a ``[[user]]`` table, a CSV row), its values checked one by one;
    ``ok`` stays True while they all are."""

    kind: str
    scalars: dict[str, str]
    multi: dict[str, _Values]
    where: _Where
    out: _Staged
    ok: bool = True

    def value(self, field: str, check: Callable[[str], str], default: str | None = None) -> str:
        """A checked single value: ``default`` if not given, a problem if required."""
        if field not in self.scalars or (self.scalars[field] == "" and default is None):
            if default is None:
                self.out.problem(str(self.where), f"missing {field}")
                self.ok = False
            return default or ""
        try:
            return check(self.scalars[field])
        except _Invalid as exc:
            self.out.problem(self.where.at(field), str(exc))
            self.ok = False
            return ""

    def values(self, field: str, check: Callable[[str], str], *, required: bool = False) -> _Values:
        """The checked values of a field that takes several, each with its name."""
        if required and not self.multi.get(field):
            self.out.problem(str(self.where), f"missing {field}")
            self.ok = False
        checked = []
        for text, name in self.multi.get(field, []):
            try:
                checked.append((check(text), name))
            except _Invalid as exc:
                self.out.problem(self.where.naming(**{field: name}).at(field), str(exc))
                self.ok = False
        return checked


def _stage_user(r: _Record) -> None:
    address = r.value("address", _address)
    login = r.value("login", _login, default="") or address
    state = r.value("state", lambda t: _one_of(t, USER_STATES, "state"), default="active")
    send_as = r.values("send_as", _send_as)
    if r.ok:
        r.out.add(UserRow(address, login, state), r.where, "address")
        for other, name in send_as:
            r.out.add(SendAsRow(login, other), r.where.naming(address=name), "address")
    else:
        r.out.refused(address, login=login)


def _stage_alias(r: _Record) -> None:
    address = r.value("address", _address)
    targets = r.values("target", _address, required=True)
    if r.ok:
        for target, name in targets:
            r.out.add(AliasRow(address, target), r.where.naming(target=name), "target")
    else:
        r.out.refused(address)


def _stage_list(r: _Record) -> None:
    address = r.value("address", _address)
    policy = r.value("policy", lambda t: _one_of(t, LIST_POLICIES, "list policy"), "open")
    people = {role: r.values(f"{role}s", _address) for role in ("member", "poster")}
    if r.ok:
        r.out.add(ListRow(address, policy), r.where, "address")
        for role, checked in people.items():
            for member, name in checked:
                named = r.where.naming(list_address="address", address=name)
                r.out.add(MemberRow(address, member, role), named, "address")
    else:
        r.out.refused(address, is_list=True)


def _stage_send_as(r: _Record) -> None:
    login = r.value("login", _login)
    other = r.value("address", _send_as)
    if r.ok:
        r.out.add(SendAsRow(login, other), r.where, "address")


def _stage_member(r: _Record) -> None:
    list_address = r.value("list", _address)
    member = r.value("address", _address)
    if r.ok:
        row = MemberRow(list_address, member, r.kind)
        r.out.add(row, r.where.naming(list_address="list"), "address")


_STAGE: dict[str, Callable[[_Record], None]] = {
    "user": _stage_user,
    "alias": _stage_alias,
    "list": _stage_list,
    "send_as": _stage_send_as,
    "member": _stage_member,
    "poster": _stage_member,
}


def _stage(
    kind: str, scalars: dict[str, str], multi: dict[str, _Values], where: _Where, out: _Staged
) -> None:
    """Check one record's values and add its rows to ``out``."""
    _STAGE[kind](_Record(kind, scalars, multi, where, out))


def _read_csv(source: Path) -> _Staged:
    out = _Staged()
    # A byte order mark: spreadsheets put one before the first column name. Lines are
    # the csv module's own (newline=""): it reads CR, LF and CRLF line ends alike.
    reader = csv.reader(io.StringIO(_read_text(source, bom=True), newline=""))
    ended = 0
    try:
        header = [name.strip() for name in next(reader, [])]
        for n, name in enumerate(header):
            if name not in CSV_COLUMNS:
                shown = repr(name) if name else f"column {n + 1} without a name"
                out.problem(f"{source}:1", f"unknown column {shown} ({', '.join(CSV_COLUMNS)})")
            elif header.index(name) != n:
                out.problem(f"{source}:1", f"column {name!r} given twice")
        if "type" not in header:
            out.problem(f"{source}:1", "missing column 'type'")
        if out.problems:
            return out
        ended = reader.line_num
        for cells in reader:
            # A quoted field may run over lines (an unclosed quote swallows the rest):
            # the row is named by the lines it spans (review rev109 F5).
            start, ended = ended + 1, reader.line_num
            if any(cell.strip() for cell in cells):
                _csv_row(source, _lines(start, ended), header, cells, out)
    except csv.Error as exc:
        # The row that failed started after the last one read.
        raise ImportError_(f"{source}:{_lines(ended + 1, reader.line_num)}: {exc}") from None
    return out


def _lines(start: int, end: int) -> str:
    return str(start) if start >= end else f"{start}-{end}"


def _read_text(source: Path, *, bom: bool = False) -> str:
    """The file's text (UTF-8, after a byte order mark if ``bom``); a byte that is not
    UTF-8 is named by its line, CR, LF and CRLF each ending one."""
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ImportError_(f"{source}: {exc}") from None
    if bom:
        raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = len((raw[: exc.start] + b"x").splitlines())
        raise ImportError_(f"{source}:{line}: not UTF-8: {exc.reason}") from None


def _csv_row(source: Path, line: str, header: list[str], cells: list[str], out: _Staged) -> None:
    where = _Where(str(source), line, toml=False)
    if len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
        out.skip(str(where), f"{len(cells)} fields, the header names {len(header)}")
        return
    given = {name: cell.strip() for name, cell in zip(header, cells, strict=False) if cell.strip()}
    kind = given.pop("type", "")
    if kind not in _CSV_FIELDS:
        if kind:
            out.skip(where.at("type"), f"unknown record type {kind!r} ({', '.join(_CSV_FIELDS)})")
        else:
            out.skip(str(where), "missing type")
        return
    fields = _CSV_FIELDS[kind]
    for name in given:
        if name not in fields:
            out.problem(where.at(name), f"not a field of {kind} rows ({', '.join(fields)})")
    scalars = {k: v for k, v in given.items() if k in fields and k not in _MULTI}
    multi = {k: [(v, k)] for k, v in given.items() if k in fields and k in _MULTI}
    _stage(kind, scalars, multi, where, out)


def _read_toml(source: Path) -> _Staged:
    try:
        # Line ends as Path.read_text reads them (universal newlines): a file with CR
        # alone, or CR CR LF (converted twice), imported before (review rev114 F3).
        text = _read_text(source).replace("\r\n", "\n").replace("\r", "\n")
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ImportError_(f"{source}: {exc}") from None
    except RecursionError:
        # Review rev179 F6: a traceback (the config loader says it so too).
        raise ImportError_(f"{source}: arrays or tables nested too deeply") from None
    out = _Staged()
    for key in data:
        if key not in _TOML_KEYS:
            out.skip(str(source), f"unknown key {key!r} ({', '.join(_TOML_KEYS)})")
    for kind, keys in _TOML_KEYS.items():
        entries = data.get(kind, [])
        if not isinstance(entries, list):
            out.skip(str(source), f"{kind} must be an array of tables ([[{kind}]])")
            continue
        for n, entry in enumerate(entries):
            where = _Where(str(source), f"{kind}[{n}]", toml=True)
            if not isinstance(entry, dict):
                out.skip(str(where), "must be a table")
                continue
            _stage(kind, *_toml_fields(entry, keys, where, out), where, out)
    return out


def _toml_fields(
    entry: dict[str, object], keys: tuple[str, ...], where: _Where, out: _Staged
) -> tuple[dict[str, str], dict[str, _Values]]:
    scalars: dict[str, str] = {}
    multi: dict[str, _Values] = {}
    for name, value in entry.items():
        if name not in keys:
            out.problem(str(where), f"unknown key {name!r} ({', '.join(keys)})")
        elif name in _MULTI and isinstance(value, list):
            if all(isinstance(v, str) for v in value):
                multi[name] = [(v, f"{name}[{i}]") for i, v in enumerate(value)]
            else:
                out.problem(where.at(name), "must be an array of strings")
        elif isinstance(value, str):
            if name in _MULTI:
                multi[name] = [(value, name)]
            else:
                scalars[name] = value
        else:
            shape = "a string or an array of strings" if name in _MULTI else "a string"
            out.problem(where.at(name), f"must be {shape}")
    return scalars, multi


def _cross_problems(
    staged: _Staged,
    existing: Contents,
    is_local: Callable[[str], bool] | None,
    delimiters: str,
) -> list[str]:
    """What is wrong with the new rows in the directory they make with ``existing``
    (whose rows are not blamed: they are None in the merged rows)."""
    given_again = _given_again(staged.rows, existing)
    rows: dict[Row, _Where | None] = {r: None for r in existing.rows() if not given_again(r)}
    rows.update(staged.rows)
    return _clash_problems(rows) + _reference_problems(staged, rows, is_local, delimiters)


def _given_again(staged: Iterable[Row], existing: Contents) -> Callable[[Row], bool]:
    """Whether the import replaces a stored row (:func:`_clear_given_again` says what
    goes): the checks judge the directory the import makes, not one with both the old
    and the new (review rev126 F3: a swap of two aliases' targets was refused as a
    loop through the old targets)."""
    # By the address as stored and in today's form (a U-label one's A-labels).
    stored_logins = {form: u.login for u in existing.users for form in (u.address, _key(u.address))}
    given: set[tuple[type, str]] = set()
    logins: set[str] = set()
    for row in staged:
        if isinstance(row, UserRow | ListRow | AliasRow):
            given.update((type(row), form) for form in _stored_forms(row.address))
        if isinstance(row, UserRow):
            logins.add(row.login)
            if old := stored_logins.get(row.address):
                logins.add(old)

    def replaced(row: Row) -> bool:
        if isinstance(row, UserRow | ListRow | AliasRow):
            return (type(row), row.address) in given
        if isinstance(row, MemberRow):
            return (ListRow, row.list_address) in given
        # A send-as right under the stored or the new login of a user given again.
        return row.login in logins

    return replaced


def _ref(where: _Where | None) -> str:
    return "already in the directory" if where is None else where.ref()


def _clash_problems(rows: dict[Row, _Where | None]) -> list[str]:
    """Addresses of more than one kind, logins of more than one user."""
    problems = []
    kinds: dict[str, dict[str, _Where | None]] = {}
    logins: dict[str, list[tuple[UserRow, _Where | None]]] = {}
    for row, where in rows.items():
        if isinstance(row, UserRow):
            # Logins are matched without regard to ASCII case (SqliteDirectory.login).
            logins.setdefault(_ascii_lower(row.login), []).append((row, where))
        if isinstance(row, UserRow | AliasRow | ListRow):
            kind = {UserRow: "a user", AliasRow: "an alias", ListRow: "a list"}[type(row)]
            kinds.setdefault(row.address, {}).setdefault(kind, where)
    # The lookups try user, then list, then alias: the other kinds would never be seen.
    for address, found in kinds.items():
        blamed = next((w for w in found.values() if w is not None), None)
        if len(found) > 1 and blamed is not None:
            parts = " and ".join(f"{kind} ({_ref(w)})" for kind, w in found.items())
            problems.append(f"{blamed.at('address')}: {address} is {parts}")
    for login, holders in logins.items():
        blamed = next((w for _, w in holders if w is not None), None)
        if len(holders) > 1 and blamed is not None:
            names = ", ".join(f"{r.address} ({_ref(w)})" for r, w in holders)
            problems.append(f"{blamed.at('login')}: login {login!r} of several users: {names}")
    return problems


def _reference_problems(
    staged: _Staged,
    rows: dict[Row, _Where | None],
    is_local: Callable[[str], bool] | None,
    delimiters: str,
) -> list[str]:
    """Send-as rights of no user, members of no list, alias loops and chains longer
    than the lookup follows, local alias targets that are nothing."""
    logins = {r.login for r in rows if isinstance(r, UserRow)} | staged.refused_logins
    # Lookups find a login in any case, but a right is stored under the login as the
    # user has it, and one written in another case would never be found.
    cased = {_ascii_lower(login): login for login in logins}
    lists = {r.address for r in rows if isinstance(r, ListRow)} | staged.refused_lists
    known = {r.address for r in rows if isinstance(r, UserRow | AliasRow | ListRow)}
    known |= staged.refused_addresses
    sure = not staged.unread
    targets: dict[str, list[str]] = {}
    for row in rows:
        if isinstance(row, AliasRow):
            targets.setdefault(row.address, []).append(row.target)
    graph = _AliasGraph(targets, delimiters)
    problems = []
    looping: set[str] = set()
    for row, where in staged.rows.items():
        if isinstance(row, SendAsRow) and sure and row.login not in logins:
            problem = f"{where.at('login')}: no user has the login {row.login!r}"
            if (user_login := cased.get(_ascii_lower(row.login))) is not None:
                problem += f" (a user has {user_login!r}: name it in the user's case)"
            problems.append(problem)
        elif isinstance(row, MemberRow) and sure and row.list_address not in lists:
            problems.append(f"{where.at('list_address')}: {row.list_address} is not a list")
        elif isinstance(row, AliasRow):
            # A loop is named once, at its first row; its other rows' chains still count.
            fault = graph.fault(row.address, () if row.address in looping else (row.target,))
            if fault is not None:
                text, loop = fault
                looping.update(loop)
                follows = "" if loop else ", more than a lookup follows"
                problems.append(f"{where.at('target')}: {text}{follows}")
            domain = row.target.rpartition("@")[2]
            base = strip_extension(row.target, delimiters)
            if (
                sure
                and is_local is not None
                and row.target not in known
                and (base is None or base not in known)
                and is_local(domain)
            ):
                problems.append(
                    f"{where.at('target')}: {row.target} is in a local domain but is no user,"
                    " alias or list"
                )
    return problems


def alias_chain_problems(path: Path, delimiters: str = "") -> list[str]:
    """The loops and over-long alias chains in an existing directory file, which an
    import refuses but an older one may have let in: lookups of them fail
    (check-config notes them). Raises :class:`DirectoryError`."""
    try:
        with closing(_open_existing(path)) as db:
            rows = db.execute("SELECT address, target FROM aliases").fetchall()
    except sqlite3.Error as exc:
        raise DirectoryError(f"{path}: {exc}") from None
    targets: dict[str, list[str]] = {}
    for address, target in rows:
        targets.setdefault(address, []).append(target)
    graph = _AliasGraph(targets, delimiters)
    faults = (graph.fault(address, targets[address]) for address in sorted(targets))
    return [fault[0] for fault in faults if fault is not None]


def login_domains(path: Path) -> list[tuple[str, str]]:
    """(login, domain) of every login with "@" in an existing directory file (a user's
    own address, unless it was given a login of its own): check-config names those in
    domains the site does not host, whose every message gets domain_auth_error. Raises
    :class:`DirectoryError`."""
    try:
        with closing(_open_existing(path)) as db:
            rows = db.execute("SELECT login, address FROM users").fetchall()
    except sqlite3.Error as exc:
        raise DirectoryError(f"{path}: {exc}") from None
    found = []
    for login, address in rows:
        name = login or address
        if "@" in name:
            found.append((name, name.rpartition("@")[2]))
    return sorted(found)


class _AliasGraph:
    """The aliases as a lookup follows them: an address that is no alias is tried
    again without its address extension (``delimiters``), as the MTA delivers it."""

    def __init__(self, targets: dict[str, list[str]], delimiters: str) -> None:
        self.targets = targets
        self.delimiters = delimiters

    def next(self, node: str) -> list[str]:
        found = self.targets.get(node)
        if found is None and (base := strip_extension(node, self.delimiters)) is not None:
            return [base]
        return found or []

    def fault(self, address: str, targets: Iterable[str]) -> tuple[str, list[str]] | None:
        """What a lookup of alias ``address`` (through ``targets``) meets that an
        import refuses: a loop back to it (the text, and the addresses on the loop) or
        a chain longer than :data:`MAX_ALIAS_DEPTH` (the text, and no address)."""
        for target in targets:
            if (loop := self.path(target, address)) is not None:
                on_it = [address, *loop]
                return f"alias loop {' -> '.join(on_it)}", on_it
        if (chain := self.too_long(address)) is not None:
            return f"a chain of more than {MAX_ALIAS_DEPTH} aliases ({' -> '.join(chain)})", []
        return None

    def path(self, start: str, goal: str) -> list[str] | None:
        """The shortest alias path from ``start`` to ``goal`` (both included), or None."""
        previous: dict[str, str | None] = {start: None}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if node == goal:
                return _walked(previous, node)
            for target in self.next(node):
                if target not in previous:
                    previous[target] = node
                    queue.append(target)
        return None

    def too_long(self, start: str) -> list[str] | None:
        """A chain from alias ``start`` that is still an alias after
        :data:`MAX_ALIAS_DEPTH` hops (review rev109 F2), or None."""
        previous: dict[str, str | None] = {start: None}
        level = [start]
        for _ in range(MAX_ALIAS_DEPTH):
            following = []
            for node in level:
                for target in self.next(node):
                    if target not in previous:
                        previous[target] = node
                        following.append(target)
            level = following
        for node in level:
            if node in self.targets:
                return _walked(previous, node)
        return None


def _walked(previous: dict[str, str | None], node: str) -> list[str]:
    """The path a breadth-first walk took to ``node``, from its start."""
    path = []
    step: str | None = node
    while step is not None:
        path.append(step)
        step = previous[step]
    return path[::-1]


# --- export ---------------------------------------------------------------------------


def _exportable(contents: Contents) -> tuple[Contents, list[str]]:
    """The rows an import would take back, and what is left out: rows stored before
    import checked them, which no import file can express."""
    logins = {u.login for u in contents.users}
    lists = {r.address for r in contents.lists}
    left_out = [
        f"send-as right {r.address} of login {r.login!r}: no user has that login"
        for r in contents.send_as
        if r.login not in logins
    ]
    left_out += [
        f"{r.role} {r.address} of {r.list_address}: not a list"
        for r in contents.members
        if r.list_address not in lists
    ]
    kept = Contents(
        users=contents.users,
        aliases=contents.aliases,
        send_as=tuple(r for r in contents.send_as if r.login in logins),
        lists=contents.lists,
        members=tuple(r for r in contents.members if r.list_address in lists),
    )
    return kept, left_out


def _toml_string(text: str) -> str:
    """A TOML basic string; controls (refused on import anyway) as ``\\uXXXX``."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(values: list[str]) -> str:
    if len(values) == 1:
        return _toml_string(values[0])
    return "[" + ", ".join(_toml_string(v) for v in values) + "]"


def export_toml(contents: Contents) -> tuple[str, list[str]]:
    """The directory as an import file (TOML), and the rows it leaves out."""
    contents, left_out = _exportable(contents)
    send_as: dict[str, list[str]] = {}
    for right in contents.send_as:
        send_as.setdefault(right.login, []).append(right.address)
    lines: list[str] = []
    for user in contents.users:
        lines += ["[[user]]", f"address = {_toml_string(user.address)}"]
        if user.login != user.address:
            lines.append(f"login = {_toml_string(user.login)}")
        if user.state != "active":
            lines.append(f"state = {_toml_string(user.state)}")
        if user.login in send_as:
            lines.append("send_as = [" + ", ".join(map(_toml_string, send_as[user.login])) + "]")
        lines.append("")
    targets: dict[str, list[str]] = {}
    for alias in contents.aliases:
        targets.setdefault(alias.address, []).append(alias.target)
    for address, to in targets.items():
        lines += ["[[alias]]", f"address = {_toml_string(address)}"]
        lines += [f"target = {_toml_value(to)}", ""]
    for mailing_list in contents.lists:
        lines += ["[[list]]", f"address = {_toml_string(mailing_list.address)}"]
        lines.append(f"policy = {_toml_string(mailing_list.policy)}")
        for role, key in (("member", "members"), ("poster", "posters")):
            people = [
                m.address
                for m in contents.members
                if m.list_address == mailing_list.address and m.role == role
            ]
            if people:
                lines.append(f"{key} = [" + ", ".join(map(_toml_string, people)) + "]")
        lines.append("")
    return "\n".join(lines), left_out


def export_csv(contents: Contents) -> tuple[str, list[str]]:
    """The directory as an import file (CSV), and the rows it leaves out."""
    contents, left_out = _exportable(contents)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for user in contents.users:
        login = "" if user.login == user.address else user.login
        state = "" if user.state == "active" else user.state
        writer.writerow(["user", user.address, login, state, "", "", ""])
    for right in contents.send_as:
        writer.writerow(["send_as", right.address, right.login, "", "", "", ""])
    for alias in contents.aliases:
        writer.writerow(["alias", alias.address, "", "", alias.target, "", ""])
    for mailing_list in contents.lists:
        writer.writerow(["list", mailing_list.address, "", "", "", mailing_list.policy, ""])
    for member in contents.members:
        writer.writerow([member.role, member.address, "", "", "", "", member.list_address])
    return out.getvalue(), left_out


#: What a spreadsheet takes for the start of a formula in a CSV cell (OWASP's list).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def formula_cells(csv_text: str) -> list[str]:
    """The cells of an export that a spreadsheet opening it would run as formulas
    (``=HYPERLINK(...)`` in a login): left as they are, since the file is for
    ``directory import``, but named (review rev179 F7)."""
    reader = csv.reader(io.StringIO(csv_text, newline=""))
    return [
        f"line {reader.line_num}: {cell!r}"
        for row in reader
        for cell in row
        if cell.startswith(_FORMULA_STARTS)
    ]


# --- looking at one entry, and removing it ------------------------------------------


def list_lines(contents: Contents) -> list[str]:
    """One ``ADDRESS<TAB>KIND<TAB>DETAIL`` line per user, alias and list, by address."""
    targets: dict[str, list[str]] = {}
    for alias in contents.aliases:
        targets.setdefault(alias.address, []).append(alias.target)
    entries = [(u.address, "user", u.state) for u in contents.users]
    entries += [(a, "alias", ", ".join(to)) for a, to in targets.items()]
    entries += [(r.address, "list", r.policy) for r in contents.lists]
    return ["\t".join(entry) for entry in sorted(entries)]


def describe(contents: Contents, address: str) -> list[str] | None:
    """What ``directory show`` prints about an address (or a user's login), or None."""
    users = {u.address: u for u in contents.users}
    lists = {r.address: r.policy for r in contents.lists}
    targets: dict[str, list[str]] = {}
    for alias in contents.aliases:
        targets.setdefault(alias.address, []).append(alias.target)
    key = _key(address.strip())
    if key not in users and key not in lists and key not in targets:
        by_login = [u.address for u in contents.users if u.login == address.strip()]
        if not by_login:
            return None
        key = by_login[0]

    def what(target: str) -> str:
        if target in users:
            return f"{target} (user, {users[target].state})"
        if target in lists:
            return f"{target} (list)"
        return f"{target} (alias)" if target in targets else f"{target} (not in the directory)"

    def line(label: str, values: Iterable[str]) -> str:
        return f"  {label:<9} {', '.join(values) or '-'}"

    lines = []
    if key in users:
        user = users[key]
        rights = [r.address for r in contents.send_as if r.login == user.login]
        lines += [f"{key}: user", line("state", [user.state]), line("login", [user.login])]
        lines.append(line("send-as", rights))
    if key in targets:
        lines += [f"{key}: alias", line("targets", map(what, targets[key]))]
    if key in lists:
        lines += [f"{key}: list", line("policy", [lists[key]])]
        for role, label in (("member", "members"), ("poster", "posters")):
            people = [
                m.address for m in contents.members if m.list_address == key and m.role == role
            ]
            lines.append(line(label, people))
    pointing = [a.address for a in contents.aliases if a.target == key]
    if pointing:
        lines.append(line("aliases", pointing))
    memberships = [f"{m.list_address} ({m.role})" for m in contents.members if m.address == key]
    if memberships:
        lines.append(line("lists", memberships))
    return lines


@dataclass(frozen=True, slots=True)
class Removed:
    kinds: tuple[str, ...]  # what the address was: user, alias, list
    send_as: int  # send-as rights of the removed user's login
    members: int  # members of the removed list
    memberships: int  # the address's own list memberships


def remove_address(db_path: Path, address: str) -> Removed | None:
    """Remove a user (with its send-as rights), an alias or a list (with its members),
    and the address's list memberships; None if the directory does not know it.

    Refused (:class:`ChangeRefused`) while an alias points at the address: the alias
    would point at nothing, which import does not allow either.
    """
    address = _key(address.strip())
    try:
        with closing(_open_existing(db_path)) as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                removed = _remove(db, address)
                db.commit()
            except BaseException:
                db.rollback()
                raise
    except sqlite3.Error as exc:
        raise DirectoryError(f"{db_path}: {exc}") from None
    return removed


def _remove(db: sqlite3.Connection, address: str) -> Removed | None:
    def exists(sql: str) -> bool:
        return db.execute(sql, (address,)).fetchone() is not None

    kinds = tuple(
        kind
        for kind, table in (("user", "users"), ("alias", "aliases"), ("list", "lists"))
        if exists(f"SELECT 1 FROM {table} WHERE address = ?")  # noqa: S608 - fixed names
    )
    if not kinds:
        return None
    pointing = [
        row[0]
        for row in db.execute(
            "SELECT DISTINCT address FROM aliases WHERE target = ? AND address != ?"
            " ORDER BY address",
            (address, address),
        )
    ]
    if pointing:
        raise ChangeRefused(
            f"{address}: the alias {', '.join(pointing)} points at it; remove it or change"
            " its target first"
        )
    login = db.execute("SELECT login FROM users WHERE address = ?", (address,)).fetchone()
    send_as = 0
    if login is not None:
        send_as = db.execute("DELETE FROM send_as WHERE login = ?", login).rowcount
    db.execute("DELETE FROM users WHERE address = ?", (address,))
    db.execute("DELETE FROM aliases WHERE address = ?", (address,))
    db.execute("DELETE FROM lists WHERE address = ?", (address,))
    members = db.execute("DELETE FROM list_members WHERE list = ?", (address,)).rowcount
    memberships = db.execute("DELETE FROM list_members WHERE address = ?", (address,)).rowcount
    return Removed(kinds, send_as, members, memberships)
