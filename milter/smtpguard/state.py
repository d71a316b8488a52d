"""Shared state: the dynamic sender blacklist (the same-size counters live in
:mod:`smtpguard.counters`).

The embedded backend keeps the blacklist in a SQLite file in WAL mode, so the CLI can
add and remove entries while the milter reads them: the running milter sees a change
within ``state.cache_ttl`` seconds (1 s by default), with no restart and no signal.
The milter creates the file on first use; a file replaced by rename later is reopened
within ``state.cache_ttl``, and a removed one is an error until it is back (the CLI
creates it again), not a new empty blacklist. Failures surface as :class:`StateError`;
the check turns that into ``database_temp_error`` or a pass, as configured.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import mmap
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import redis

from smtpguard.address import (
    AddressError,
    canonical_address,
    canonical_domain,
    domain_to_unicode,
    is_valid_domain,
    parse_address_literal,
    parse_path,
)
from smtpguard.outage import Outage, back, trouble
from smtpguard.sqlitedb import WatchedFile

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS blacklist (
    address  TEXT PRIMARY KEY,   -- canonical lower-cased address, "@domain" or ".domain"
    added_at REAL NOT NULL,
    reason   TEXT NOT NULL DEFAULT ''
);
"""


class StateError(Exception):
    """The state store could not answer."""


@dataclass(frozen=True, slots=True)
class BlacklistEntry:
    address: str
    added_at: float
    reason: str


class Blacklist(Protocol):
    def listed(self, address: str) -> str | None: ...


class EntryError(ValueError):
    """An entry the blacklist could never match; the message says what to use instead."""


def stored_forms(text: str) -> tuple[str, ...]:
    """How an entry given to ``remove`` may be stored: as ``add`` would store it, and
    lower-cased as given, which is how an older version stored an entry that add
    refuses or spells differently today (``"a"@example.com``, now ``a@example.com``;
    ``@bücher.example``, now ``@xn--bcher-kva.example``), also with U-labels when it
    is given with A-labels."""
    given = text.strip().lower()
    try:
        entry = blacklist_entry(text)
    except EntryError:
        return (given,)
    return tuple(dict.fromkeys((entry, given, _unicode_form(entry))))


def _unicode_form(entry: str) -> str:
    """A stored entry with its domain's A-labels as U-labels: how an older version
    stored an entry written with U-labels (:func:`domain_to_unicode`)."""
    head, at, domain = entry.rpartition("@")
    if not at:
        return entry[:1] + domain_to_unicode(entry[1:])
    return f"{head}@{domain_to_unicode(domain)}"


def blacklist_entry(text: str) -> str:
    """The stored form of a blacklist entry, or :class:`EntryError`.

    Only what :func:`matching_entries` can produce is accepted: an exact address,
    ``@domain`` (that domain) or ``.domain`` (it and its subdomains). A bare domain, an
    IP address or a ``/regex/`` would be stored and never match anything.
    """
    entry = text.strip().lower()
    if not entry:
        raise EntryError("empty entry")
    if entry.startswith("/"):
        raise EntryError("patterns go in [policy] sender_deny, not in the blacklist")
    if _is_ip(entry):
        raise EntryError("the blacklist holds senders, not client IPs")
    if entry[0] in "@.":
        domain = entry[1:].removesuffix(".")
        literal = entry[0] == "@" and parse_address_literal(domain) is not None
        if not literal and not is_valid_domain(domain, allow_utf8=True):
            raise EntryError(f"{domain!r} is not a domain")
        return entry[0] + canonical_domain(domain)
    if "@" not in entry:
        if "." in entry.removesuffix(".") and is_valid_domain(entry, allow_utf8=True):
            bare = entry.removesuffix(".")
            raise EntryError(
                f"a bare domain matches nothing: use @{bare} (the domain)"
                f" or .{bare} (it and its subdomains)"
            )
        raise EntryError("not an address, @domain or .domain")
    try:
        address = parse_path(entry, smtputf8=True)
    except AddressError as exc:
        raise EntryError(f"not an address ({exc.reason})") from None
    if address.canonical_local == "*":
        raise EntryError(f"'*' is not a wildcard here: use @{address.domain_lc} for the domain")
    return address.canonical


def entry_scope(entry: str) -> str:
    """What a stored entry matches: ``address``, ``domain`` (``@domain``),
    ``subdomains`` (``.domain``: the domain and its subdomains) or ``nothing`` (stored
    before :func:`blacklist_entry` refused such entries). An entry stored with U-labels
    by an older version matches as its A-label form does, and one with a quoted local
    part the sender who spells it so (:func:`matching_entries`)."""
    try:
        stored = blacklist_entry(entry)
    except EntryError:
        return "nothing"
    # A quoted local part stored as spelled by an older version lists that spelling;
    # so does an address literal stored before literals had one spelling.
    quoted = entry.startswith('"') and canonical_address(entry) == stored
    literal = entry.rpartition("@")[2].startswith("[")
    if entry not in (stored, _unicode_form(stored)) and not quoted and not literal:
        return "nothing"
    return {"@": "domain", ".": "subdomains"}.get(entry[0], "address")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip("[]").removeprefix("ipv6:"), strict=False)
    except ValueError:
        return False
    return True


# A sender's entries once per distinct address: every message asks for them.
@functools.lru_cache(maxsize=4096)
def matching_entries(address: str) -> tuple[str, ...]:
    """The entries that list a sender, most specific first.

    ``a@mx.evil.example`` is listed by ``a@mx.evil.example``, ``@mx.evil.example``,
    ``.mx.evil.example``, ``.evil.example`` and ``.example``. The address is looked up
    in its canonical form, as :func:`blacklist_entry` stores it: ``"a"@mx.evil.example``
    is listed by the same entries, and so is ``a@bücher.example`` by the entries of
    ``a@xn--bcher-kva.example``.
    """
    given = address.lower()
    address = canonical_address(given)
    local, at, domain = address.rpartition("@")
    if not at:
        return (address,)
    keys = [address, "@" + domain]
    spelled = given.rpartition("@")[0]
    if spelled.startswith('"') and spelled != local:
        # An entry an older version stored as the sender spelled it (quoted) still
        # lists that spelling.
        keys.insert(1, f"{spelled}@{domain}")
    if not domain.startswith("["):
        labels = domain.split(".")
        keys += ["." + ".".join(labels[i:]) for i in range(len(labels))]
    else:
        # Entries an older version stored with the literal as written (lower-cased):
        # [ipv6:2001:db8:0:0::1] still lists the sender who spells it so.
        written = given.rpartition("@")[2]
        if written != domain:
            keys += [f"{local}@{written}", "@" + written]
    if "xn--" in domain:
        # Entries an older version stored with U-labels, as they were written.
        return tuple(dict.fromkeys(form for key in keys for form in (key, _unicode_form(key))))
    return tuple(keys)


def _most_specific(keys: tuple[str, ...], found: AbstractSet[str]) -> str | None:
    return next((key for key in keys if key in found), None)


class SnapshotBlacklist:
    """The entries of a blacklist file as read once, matched in memory: what
    ``simulate`` asks. Opening the live file as the service does would create it, as
    root, where it is missing (review rev226 F1: the service, running as its own user,
    could then not write it)."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.found = frozenset(entries)

    def listed(self, address: str) -> str | None:
        return _most_specific(matching_entries(address), self.found)


class SqliteBlacklist(WatchedFile):
    label = "state file"
    # Creating the file, switching it to WAL and creating the table need the write
    # lock, for which SQLite does not always wait (a fresh file's journal-mode switch
    # answers "database is locked" at once): a burst of sessions right after the first
    # start must not race for it, so one thread prepares the file and the pool's later
    # connections only open it. One lock for every instance: held once per file.
    _prepare_lock = threading.Lock()
    # Files this process (or the supervisor it was forked from) has prepared. A reload
    # builds a new instance for the same file: it must not create a removed file again
    # as an empty blacklist, which the module docstring promises is an error instead.
    _prepared_paths: ClassVar[set[Path]] = set()

    @property
    def _prepared(self) -> bool:
        return self.path.absolute() in self._prepared_paths

    def _mark_prepared(self) -> None:
        self._prepared_paths.add(self.path.absolute())

    def _open(self) -> sqlite3.Connection:
        try:
            if not self._prepared:
                with self._prepare_lock:
                    if not self._prepared:
                        return self._create()
            if not self.path.exists():
                # Removed since it was prepared (also before a reload, which builds a
                # new instance that never saw the file): an error, never an empty list.
                raise StateError(
                    "the file does not exist (removed under the running service):"
                    " 'smtpguard blacklist add' or a restart creates it, empty"
                )
            return self._connect_existing("rw")
        except StateError as exc:
            raise sqlite3.OperationalError(str(exc)) from None

    def prepare(self) -> None:
        """Create the file (WAL mode, table) now, and close it again.

        A supervisor does this once before it forks its workers: they then only open
        the file. The lock above is per process, and several processes preparing a
        fresh file at once get "database is locked".
        """
        with self._prepare_lock:
            if self._prepared:
                # A reload in a supervisor that prepared it at start: a file removed
                # since stays an error (review rev85 F1: it came back empty).
                return
            self._create().close()

    def _create(self) -> sqlite3.Connection:
        """Open the file, creating it if need be, and mark it prepared (under
        ``_prepare_lock``); a file it had to create is logged."""
        created = not self.path.exists()
        db = self._connect()
        self._mark_prepared()
        if created:
            log.warning(
                "state file %s did not exist: created it, an empty blacklist (a first"
                " start; otherwise entries it held are gone)",
                self.path,
            )
        return db

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open {self.path}: {exc}") from None
        _empty_wal(db)
        return db

    def listed(self, address: str) -> str | None:
        """The most specific matching entry (see :func:`matching_entries`), or None."""
        keys = matching_entries(address)
        marks = ", ".join("?" * len(keys))
        try:
            rows = self._shared.query(
                f"SELECT address FROM blacklist WHERE address IN ({marks})",  # noqa: S608 - only placeholders
                keys,
            )
        except sqlite3.Error as exc:
            self._lookups_fail(str(exc))
            raise StateError(f"{self.path}: {exc}") from None
        self._lookups_answer()
        return _most_specific(keys, {str(row[0]) for row in rows})

    def add(self, address: str, reason: str = "") -> bool:
        """Add an entry (:func:`blacklist_entry` refuses what could never match)."""
        return self.add_all([address], reason)[0]

    def add_all(self, entries: Sequence[str], reason: str = "") -> list[bool]:
        """:meth:`add` for each of ``entries`` in one transaction: all or none (review
        rev159 F3: a lock held by another writer past state.timeout left a prefix of a
        long list added). Whether each was new."""
        rows = [(blacklist_entry(address), time.time(), reason) for address in entries]
        db = self._connect()
        try:
            with closing(db):
                with db:
                    added = [
                        db.execute("INSERT OR IGNORE INTO blacklist VALUES (?, ?, ?)", row).rowcount
                        >= 1
                        for row in rows
                    ]
                _empty_wal(db)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: {exc}: nothing added {_what_now(exc)}") from None
        return added

    def remove(self, address: str) -> bool:
        """Remove an entry's stored forms. Never creates the file (:meth:`_existing`)."""
        forms = stored_forms(address)
        marks = ", ".join("?" * len(forms))
        db = self._existing()
        if db is None:
            return False
        with closing(db):
            with db:
                changed = (
                    db.execute(
                        f"DELETE FROM blacklist WHERE address IN ({marks})",  # noqa: S608 - only placeholders
                        forms,
                    ).rowcount
                    >= 1
                )
            _empty_wal(db)
        return changed

    def entries(self) -> list[BlacklistEntry]:
        """Every entry (none in a file that does not exist: see :meth:`_existing`)."""
        db = self._existing()
        if db is None:
            return []
        with closing(db):
            try:
                rows = db.execute(
                    "SELECT address, added_at, reason FROM blacklist ORDER BY address"
                ).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {exc}") from None
        return [BlacklistEntry(a, t, r) for a, t, r in rows]

    def exists(self) -> bool:
        return self.path.exists()

    def _existing(self) -> sqlite3.Connection | None:
        """A connection to the file as it is, or None if there is none. Looking at the
        list, or removing from it, must not turn a deleted file, for which the service
        defers every message, into an empty blacklist that lets every listed sender
        through (review rev83 F1): only ``blacklist add`` (and the service's first
        start) creates it."""
        if not self.path.exists():
            parent = self.path.parent
            if parent.exists() and not parent.is_dir():
                raise StateError(f"cannot open {self.path}: {parent} is no directory")
            return None
        try:
            return self._connect_existing("rw")
        except sqlite3.Error as exc:
            raise StateError(f"cannot open {self.path}: {exc}") from None


def _what_now(exc: sqlite3.Error) -> str:
    """What to do after a failed write: wait for a lock, or let the user write the file
    (review rev226 F1: "run it again" for a file root made, which can never succeed)."""
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY:
        return "(this user may not write it or its folder: give them to the service's user)"
    return "(run it again)"


def _empty_wal(db: sqlite3.Connection) -> None:
    """Copy the WAL into the file and truncate it, after every write.

    The milter's connections keep the file open, so the WAL outlives each write. If
    the file is then replaced by rename, SQLite leaves the old file's ``-wal`` and
    ``-shm`` behind when those connections close (the file has moved), and whoever
    opens the new file next reads the old file's frames as its own: the old blacklist,
    and corruption at the next write. An empty WAL has no frames to mix in.
    """
    # A reader holding on past the timeout: the change is saved, the next write tries
    # again.
    with suppress(sqlite3.Error):
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def redis_blacklist_key(prefix: str) -> str:
    """The Redis hash that holds the blacklist under ``state.redis_prefix``."""
    return f"{prefix}:blacklist"


#: A field of the blacklist hash that no entry can be (entries hold "@" or start with
#: "."; this has neither, and spaces): written by ``blacklist add`` and ``remove``, read
#: with every lookup. A hash Redis lost (restarted without persistence, flushed,
#: evicted) has lost it too, and is not taken for an empty blacklist.
REDIS_MARKER = "(smtpguard blacklist)"


class RedisBlacklist:
    """The blacklist in a Redis hash (address -> "added_at reason"), shared by every
    smtpguard host using the same Redis. Errors surface as :class:`StateError`.

    After a failed lookup Redis is not asked again for ``retry_interval`` seconds (the
    lookups fail at once meanwhile), as the counters do: a Redis that stopped answering
    would otherwise hold every MAIL FROM for its timeout. The outage is logged when it
    starts and when it ends, not per message.

    A hash without :data:`REDIS_MARKER` is an empty blacklist the first time this
    process (or the supervisor that forked it) asks, said once with a WARNING as the
    embedded file's first start is; once the marker was seen, its absence means Redis
    lost the blacklist, and lookups fail (``database_temp_error``, or pass per
    ``on_temp_error``) until ``smtpguard blacklist add`` or ``remove`` writes it again:
    listed senders are not let in because a cache-style Redis dropped the list. With
    ``required`` (``[state] redis_blacklist_required``) its absence is a loss from the
    first lookup on, on every host: one that never saw the marker (another host, a new
    one, one whose state directory was wiped) cannot take a lost list for an empty one."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        retry_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        seen_file: Path | None = None,
        required: bool = False,
    ) -> None:
        self.client = client
        self.key = redis_blacklist_key(prefix)
        self.outage = Outage(retry_interval, clock)
        #: How the last failure is worded (outage.trouble).
        self._trouble = "unreachable"
        #: Where this host remembers that the marker was seen (beside the state file):
        #: a worker restarted, a reload's new object or the service restarted after
        #: Redis lost the hash still takes its absence for a loss (review rev100 F1).
        self.seen_file = seen_file
        #: The operator says a list exists (review rev100 F10): no marker is a loss.
        self.required = required
        #: Why this process cannot tell whether the host saw the marker (the CLI run
        #: by a user who may not read the state folder), or None.
        self.seen_unknown: str | None = None
        #: The marker was seen (by this host, or the process that forked this one): its
        #: absence now is a lost blacklist, not a new one (so with ``required``).
        self._seen = seen_file is not None and self._seen_on_disk(seen_file)
        self._unmarked_said = False
        self._unrecorded_said = False

    def _seen_on_disk(self, path: Path) -> bool:
        try:
            return path.exists()
        except OSError as exc:
            self.seen_unknown = f"{path}: {exc.strerror}"
            return False

    def prepare(self) -> None:
        """Ask for the marker once before the workers are forked (with HMGET, the
        command the service's ACL user has); an unreachable Redis is left to the
        lookups."""
        with contextlib.suppress(redis.RedisError):
            self._note_marker(self._has_marker())

    def _has_marker(self) -> bool:
        return self.client.hmget(self.key, [REDIS_MARKER])[0] is not None

    def _note_marker(self, present: bool, *, say: bool = True) -> bool:
        """Whether the lookup may answer: False when the blacklist was lost. ``say``:
        log a first start's empty list once (the service, not the commands)."""
        if present:
            if not self._seen:
                self._seen = True
                self._record(say=say)
            return True
        if self._seen or self.required:
            return False
        if say and not self._unmarked_said:
            self._unmarked_said = True
            log.warning(
                "redis blacklist %s has no marker: taken for an empty blacklist on a first"
                " start. If `smtpguard blacklist list` shows entries, it is a list made"
                " before smtpguard marked its lists: run `smtpguard blacklist mark` (lookups"
                " answer meanwhile); then [state] redis_blacklist_required = true makes a"
                " missing marker a loss on every host. If it held entries that are gone,"
                " Redis lost them (restarted without persistence, flushed or evicted)",
                self.key,
            )
        return True

    def _record(self, *, say: bool = True) -> None:
        """Remember on disk that this host saw the marker; a folder the service may
        not write is said once (review rev101 F3: silently, the host forgot), by the
        service only and not when ``required`` makes the file moot (rev102 F3)."""
        if self.seen_file is None:
            return
        try:
            # Its folder too, as the embedded file's (no systemd StateDirectory=); by the
            # service only: check-config and the commands make no folders.
            if say:
                self.seen_file.parent.mkdir(parents=True, exist_ok=True)
            # Made, never touched again: a file root's commands made is the host's
            # memory as well, and the service may not change its time (rev102 F4).
            with contextlib.suppress(FileExistsError):
                self.seen_file.touch(exist_ok=False)
        except OSError as exc:
            if say and not self.required and not self._unrecorded_said:
                self._unrecorded_said = True
                log.warning(
                    "cannot record that the redis blacklist %s was seen (%s: %s): after"
                    " a restart this host would take a list Redis lost for an empty one;"
                    " let the service write that folder, or set [state]"
                    " redis_blacklist_required = true",
                    self.key,
                    self.seen_file,
                    exc.strerror,
                )

    def lost(self, present: bool | None = None) -> str | None:
        """Why lookups fail for want of the marker (for check-config and ``blacklist
        list``), or None: the marker is there, or its absence is an empty list.
        ``present``: whether the hash has it, when the caller read it (HGETALL); else
        asked with HMGET. A Redis error is a :class:`StateError`."""
        if present is None:
            try:
                present = self._has_marker()
            except redis.RedisError as exc:
                raise StateError(f"redis: {exc}") from None
        return None if self._note_marker(present, say=False) else self._lost_text()

    def _lost_text(self) -> str:
        what = (
            "has no marker and [state] redis_blacklist_required is true: Redis lost the"
            " list (restarted without persistence, flushed or evicted?), or it was made"
            " before smtpguard marked its lists"
            if not self._seen
            else "is gone from Redis (restarted without persistence, flushed or evicted?),"
            " or lost its marker"
        )
        return (
            f"the blacklist hash {self.key} {what}; `smtpguard blacklist list` shows what"
            " is there, `smtpguard blacklist mark` takes it as it is, and `smtpguard"
            " blacklist add` adds entries again (and marks it)"
        )

    def mark(self) -> bool:
        """Write the marker: the hash as it is is the list (an upgrade's list, or an
        empty one after a loss). False when it was there."""
        try:
            return bool(self.client.hsetnx(self.key, REDIS_MARKER, f"{time.time()}"))
        except redis.RedisError as exc:
            raise StateError(f"redis: {exc}") from None

    def listed(self, address: str) -> str | None:
        keys = matching_entries(address)
        outage = self.outage
        now = outage.clock()
        if not outage.ask(now):
            raise StateError(f"redis {self._trouble}: {outage.last_error}")
        try:
            found = self.client.hmget(self.key, [REDIS_MARKER, *keys])
        except redis.RedisError as exc:
            self._failed(trouble(exc), str(exc))
            raise StateError(f"redis: {exc}") from None
        if not self._note_marker(found[0] is not None):
            lost = self._lost_text()
            self._failed("lost the blacklist", lost)
            raise StateError(f"redis: {lost}")
        if (lasted := outage.recovered(now)) is not None:
            log.info("blacklist backend redis %s after %.1f s", back(self._trouble), lasted)
        return _most_specific(
            keys, {key for key, value in zip(keys, found[1:], strict=True) if value is not None}
        )

    def _failed(self, word: str, error: str) -> None:
        previous, self._trouble = self._trouble, word
        # Timed when the failure is known, not when the call began (review rev120 F1:
        # a call that timed out past the retry interval left no wait at all).
        if not self.outage.failed(error, self.outage.clock()):
            if previous != word:
                log.warning("blacklist backend redis now %s (%s)", word, error)
        else:
            log.warning(
                "blacklist backend redis %s (%s); lookups fail (each check's"
                " on_temp_error decides) and it is asked again every %.0f s",
                word,
                error,
                self.outage.retry_interval,
            )

    def close(self) -> None:
        """Close the idle pooled connections (a blacklist retired by a reload); one
        in use is left to its command, and goes with the client."""
        self.client.connection_pool.disconnect(inuse_connections=False)

    def add(self, address: str, reason: str = "") -> bool:
        return self.add_all([address], reason)[0]

    def add_all(self, entries: Sequence[str], reason: str = "") -> list[bool]:
        """:meth:`add` for each of ``entries`` in one round trip (a pipeline, not a
        MULTI: the commands' ACL user has no more than +hsetnx +hdel +hgetall); a
        connection lost in it may have written some (review rev159 F3)."""
        keys = [blacklist_entry(address) for address in entries]
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hsetnx(self.key, REDIS_MARKER, f"{time.time()}")
            for key in keys:
                pipe.hsetnx(self.key, key, f"{time.time()} {reason}")
            return [bool(n) for n in pipe.execute()[1:]]
        except redis.RedisError as exc:
            raise StateError(
                f"redis: {exc}: some entries may have been added (run it again: an entry"
                " listed already stays as it is)"
            ) from None

    def remove(self, address: str) -> bool:
        # No marker written: removing one entry from a list Redis lost must not take
        # what is left for the list (review rev159 F2: every sender of the lost list
        # was accepted from then on, and the operator was told nothing).
        try:
            return bool(self.client.hdel(self.key, *stored_forms(address)))
        except redis.RedisError as exc:
            raise StateError(f"redis: {exc}") from None

    def entries(self) -> list[BlacklistEntry]:
        return self.listing()[0]

    def listing(self) -> tuple[list[BlacklistEntry], bool]:
        """The entries, and whether the hash has its marker (one HGETALL: the command
        the CLI's documented ACL user has, review rev101 F1)."""
        try:
            raw = self.client.hgetall(self.key)
        except redis.RedisError as exc:
            raise StateError(f"redis: {exc}") from None
        out, marked = [], False
        for key, value in raw.items():
            if _text(key) == REDIS_MARKER:
                marked = True
                continue
            stamp, _, reason = _text(value).partition(" ")
            out.append(BlacklistEntry(_text(key), float(stamp or 0), reason))
        return sorted(out, key=lambda e: e.address), marked


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SessionGate:
    """Counts concurrent SMTP sessions for load shedding (``queue_unavailable``).

    ``active`` is this process's sessions; :meth:`total` the whole service's.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Admitted sessions: what the limit counts.
        self.active = 0
        #: Sessions with a message under way (DATA seen, its end not yet answered),
        #: admitted or not (the session limit only reporting, a dry run, an exemption:
        #: reviews rev126 F2, rev128 F1): what a stop waits for. One between messages
        #: or before DATA is cut, the MTA deferring its message (review rev193 F1: any
        #: idle client held every stop for 30 s, new mail tempfailed meanwhile; rev194
        #: F1: so did one that dropped its transaction with RSET); one load shedding
        #: refuses never counts (reviews rev124 F2, rev127 F1).
        self.busy = 0
        self.draining = False
        self._lock = threading.Lock()

    def enter(self) -> bool:
        """Register a session; False when it is over the limit or we are draining.
        Only an admitted session holds a slot of the limit: a refused one held one
        until the MTA closed it, and refusals fed on themselves (review rev124 F4)."""
        with self._lock:
            if self.draining or self.total() + 1 > self.limit:
                return False
            self.active += 1
            self._publish()
            return True

    def begin_transaction(self) -> None:
        with self._lock:
            self.busy += 1

    def end_transaction(self) -> None:
        with self._lock:
            self.busy -= 1

    def leave(self) -> None:
        """An admitted session ended."""
        with self._lock:
            self.active -= 1
            self._publish()

    def total(self) -> int:
        return self.active

    def _publish(self) -> None:
        """Make ``active`` visible to the other processes (none here)."""


class SharedSessionGate(SessionGate):
    """``max_sessions`` for a service of several worker processes.

    One 8-byte slot per worker in anonymous shared memory, created before the workers
    are forked. A worker writes only its own slot (an aligned 8-byte store, which no
    reader sees half done) and adds up all slots on entry, so there is no lock between
    processes that a killed worker could leave held. The price: two workers admitting
    a session at the same instant may both see the other's count as it was, so the
    service can go over the limit by at most ``workers - 1`` sessions, for an instant.
    The supervisor clears the slot of a worker that died (:meth:`release`).
    """

    def __init__(self, limit: int, workers: int) -> None:
        super().__init__(limit)
        self._memory = mmap.mmap(-1, 8 * workers)
        self._slots = memoryview(self._memory).cast("q")
        self.slot = 0

    def bind(self, slot: int) -> None:
        """Called in a new worker: count this process's sessions in ``slot``."""
        with self._lock:
            self.slot = slot
            self.active = self.busy = 0
            self._slots[slot] = 0

    def release(self, slot: int) -> int:
        """Called by the supervisor for a worker that is gone: the admitted sessions
        it had in flight."""
        held, self._slots[slot] = self._slots[slot], 0
        return held

    def total(self) -> int:
        return sum(self._slots)

    def per_worker(self) -> list[int]:
        return list(self._slots)

    def _publish(self) -> None:
        self._slots[self.slot] = self.active
