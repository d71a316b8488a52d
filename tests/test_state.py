"""SqliteBlacklist (the dynamic blacklist) and SessionGate (load shedding)."""

from __future__ import annotations

import copy
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis

from smtpguard.counters import redis_client
from smtpguard.sqlitedb import MIN_CHECK_INTERVAL
from smtpguard.state import (
    BlacklistEntry,
    EntryError,
    RedisBlacklist,
    SessionGate,
    SqliteBlacklist,
    StateError,
    blacklist_entry,
    entry_scope,
    matching_entries,
)
from support.daemons import RedisServer, start_redis
from support.fake_dns import FakeClock
from support.files import replace_by_rename
from support.polling import wait_until
from support.threads import hammer


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.sqlite"


@pytest.fixture
def blacklist(state_path: Path) -> SqliteBlacklist:
    return SqliteBlacklist(state_path, timeout=0.5)


# --- blacklist ------------------------------------------------------------------------


def test_empty_blacklist(blacklist: SqliteBlacklist, state_path: Path) -> None:
    assert blacklist.listed("anyone@example.org") is None
    assert blacklist.entries() == []
    assert state_path.is_file()  # created (with its directory) on first use


def test_add_and_list_address(blacklist: SqliteBlacklist) -> None:
    before = time.time()
    assert blacklist.add("Spammer@Example.ORG", reason="complaint #12") is True
    [entry] = blacklist.entries()
    assert entry.address == "spammer@example.org"
    assert entry.reason == "complaint #12"
    assert before <= entry.added_at <= time.time()


def test_add_twice_keeps_the_first(blacklist: SqliteBlacklist) -> None:
    assert blacklist.add("a@example.org", reason="first") is True
    assert blacklist.add("A@EXAMPLE.ORG", reason="second") is False
    assert [(e.address, e.reason) for e in blacklist.entries()] == [("a@example.org", "first")]


@pytest.mark.parametrize(
    "address", ["spammer@example.org", "SPAMMER@example.org", "Spammer@Example.Org"]
)
def test_listed_address_is_case_insensitive(blacklist: SqliteBlacklist, address: str) -> None:
    blacklist.add("Spammer@example.ORG")
    assert blacklist.listed(address) == "spammer@example.org"


def test_address_entry_is_exact(blacklist: SqliteBlacklist) -> None:
    blacklist.add("spammer@example.org")
    assert blacklist.listed("friend@example.org") is None
    assert blacklist.listed("spammer@example.org.uk") is None
    assert blacklist.listed("spammer@sub.example.org") is None


def test_domain_entry(blacklist: SqliteBlacklist) -> None:
    blacklist.add("@Spam.Example")
    assert blacklist.listed("anyone@spam.example") == "@spam.example"
    assert blacklist.listed("ANYONE@SPAM.EXAMPLE") == "@spam.example"
    assert blacklist.listed("anyone@sub.spam.example") is None  # the domain only
    assert blacklist.listed("anyone@notspam.example") is None


def test_address_and_domain_entries_together(blacklist: SqliteBlacklist) -> None:
    blacklist.add("@spam.example")
    blacklist.add("boss@spam.example")
    assert blacklist.listed("boss@spam.example") in {"boss@spam.example", "@spam.example"}
    assert blacklist.listed("other@spam.example") == "@spam.example"


def test_remove(blacklist: SqliteBlacklist) -> None:
    blacklist.add("a@example.org")
    blacklist.add("@spam.example")
    assert blacklist.remove("A@Example.org") is True
    assert blacklist.remove("a@example.org") is False
    assert blacklist.remove("never@example.org") is False
    assert blacklist.listed("a@example.org") is None
    assert [e.address for e in blacklist.entries()] == ["@spam.example"]


def test_entries_are_sorted(blacklist: SqliteBlacklist) -> None:
    for address in ("zed@example.org", "@spam.example", "amy@example.org"):
        blacklist.add(address)
    entries = blacklist.entries()
    assert [e.address for e in entries] == ["@spam.example", "amy@example.org", "zed@example.org"]
    assert all(isinstance(e, BlacklistEntry) for e in entries)


def test_second_instance_sees_changes(state_path: Path) -> None:
    """The CLI (one instance) edits while the milter (another) keeps its connection."""
    milter = SqliteBlacklist(state_path, timeout=0.5)
    cli = SqliteBlacklist(state_path, timeout=0.5)
    assert milter.listed("spammer@example.org") is None  # opens its long-lived connection

    assert cli.add("spammer@example.org", reason="cli")
    assert milter.listed("spammer@example.org") == "spammer@example.org"

    assert cli.add("@spam.example")
    assert milter.listed("x@spam.example") == "@spam.example"

    assert cli.remove("spammer@example.org")
    assert milter.listed("spammer@example.org") is None
    assert [e.address for e in milter.entries()] == ["@spam.example"]


def test_lookups_from_several_threads(blacklist: SqliteBlacklist) -> None:
    blacklist.add("@spam.example")
    results: list[str | None] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for _ in range(20):
            found = blacklist.listed("x@spam.example")
            with lock:
                results.append(found)

    assert hammer(worker, threads=4) == []
    assert results == ["@spam.example"] * 80


# --- what an entry may be, and how it matches (both backends) --------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def any_blacklist(
    request: pytest.FixtureRequest, state_path: Path
) -> SqliteBlacklist | RedisBlacklist:
    if request.param == "sqlite":
        return SqliteBlacklist(state_path, timeout=0.5)
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis_client(server.url)
    client.flushall()
    return RedisBlacklist(client, "smtpguard-test")


def test_matching_entries_most_specific_first() -> None:
    assert matching_entries("Boss@MX.Spam.Example.") == (
        "boss@mx.spam.example",
        "@mx.spam.example",
        ".mx.spam.example",
        ".spam.example",
        ".example",
    )
    # An address literal has no parent domains.
    assert matching_entries("a@[192.0.2.1]") == ("a@[192.0.2.1]", "@[192.0.2.1]")
    # Respelled literals are the same entries: an entry cannot be dodged that way.
    assert matching_entries("a@[IPv6:::ffff:192.0.2.1]")[:2] == ("a@[192.0.2.1]", "@[192.0.2.1]")
    assert blacklist_entry("@[IPv6:2001:DB8:0:0::1]") in matching_entries(
        "a@[IPv6:2001:0db8::0001]"
    )
    # An entry stored before literals had one spelling still lists that spelling.
    old = "@[ipv6:2001:db8:0:0::1]"
    assert old in matching_entries("a@[IPv6:2001:DB8:0:0::1]")
    assert entry_scope(old) == "domain"


@pytest.mark.parametrize(
    ("sender", "first"),
    [
        # RFC 5321 4.1.2: the same mailbox as boss@mx.spam.example.
        ('"Boss"@MX.Spam.Example.', "boss@mx.spam.example"),
        (r'"b\oss"@mx.spam.example', "boss@mx.spam.example"),
        # Quotes that are needed stay: another mailbox than "a" or "b".
        (r'"a\ b"@mx.spam.example', '"a b"@mx.spam.example'),
    ],
)
def test_matching_entries_of_a_quoted_local_part(sender: str, first: str) -> None:
    # The quoted spelling second: what versions before canonical addresses stored.
    spelled = sender.lower().rpartition("@")[0]
    assert matching_entries(sender) == (
        first,
        f"{spelled}@mx.spam.example",
        "@mx.spam.example",
        ".mx.spam.example",
        ".spam.example",
        ".example",
    )


def test_entries_added_together_say_which_were_new(
    any_blacklist: SqliteBlacklist | RedisBlacklist,
) -> None:
    any_blacklist.add("old@spam.example")
    assert any_blacklist.add_all(["new@spam.example", "Old@Spam.Example", "@spam.example"]) == [
        True,
        False,
        True,
    ]
    assert any_blacklist.listed("x@spam.example") == "@spam.example"


def test_entries_added_together_are_all_or_none_under_a_lock(state_path: Path) -> None:
    """Review rev159 F3: a lock held past state.timeout left a prefix of a long list
    added, and the error named no file."""
    blacklist = SqliteBlacklist(state_path, timeout=0.2)
    blacklist.add("first@spam.example")  # makes the file
    holder = sqlite3.connect(state_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StateError, match=r"locked: nothing added \(run it again\)") as err:
            blacklist.add_all([f"q{n}@partial.example" for n in range(200)])
        assert str(state_path) in str(err.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [e.address for e in blacklist.entries()] == ["first@spam.example"]


def test_subdomain_entry(any_blacklist: SqliteBlacklist | RedisBlacklist) -> None:
    any_blacklist.add(".Spam.Example")
    for sender in ("a@spam.example", "a@mx.spam.example", "A@X.Y.SPAM.EXAMPLE", "a@spam.example."):
        assert any_blacklist.listed(sender) == ".spam.example", sender
    for sender in ("a@notspam.example", "a@spam.example.org", "a@example", "spam.example@x.org"):
        assert any_blacklist.listed(sender) is None, sender


def test_domain_entry_is_that_domain_only(any_blacklist: SqliteBlacklist | RedisBlacklist) -> None:
    any_blacklist.add("@spam.example")
    assert any_blacklist.listed("a@spam.example.") == "@spam.example"
    assert any_blacklist.listed("a@mx.spam.example") is None


def test_most_specific_entry_is_named(any_blacklist: SqliteBlacklist | RedisBlacklist) -> None:
    for entry in (".example", ".spam.example", "@spam.example", "boss@spam.example"):
        any_blacklist.add(entry)
    assert any_blacklist.listed("boss@spam.example") == "boss@spam.example"
    assert any_blacklist.listed("other@spam.example") == "@spam.example"
    assert any_blacklist.listed("boss@mx.spam.example") == ".spam.example"
    assert any_blacklist.listed("anyone@else.example") == ".example"
    assert any_blacklist.listed("anyone@example.org") is None


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("Spammer@Example.ORG", "spammer@example.org"),
        ("<spammer@example.org>", "spammer@example.org"),
        ("spammer@example.org.", "spammer@example.org"),
        (" spammer@example.org ", "spammer@example.org"),
        ('"a b"@example.org', '"a b"@example.org'),
        (r'"a\ b"@example.org', '"a b"@example.org'),
        # Stored canonical, the form the milter looks up (matching_entries).
        ('"Spammer"@Example.ORG', "spammer@example.org"),
        (r'<"sp\ammer"@example.org>', "spammer@example.org"),
        ("@Evil.Example", "@evil.example"),
        ("@evil.example.", "@evil.example"),
        (".Evil.Example", ".evil.example"),
        ("@[192.0.2.1]", "@[192.0.2.1]"),
    ],
)
def test_entries_accepted(given: str, stored: str) -> None:
    assert blacklist_entry(given) == stored


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("evil.example", "use @evil.example (the domain) or .evil.example (it and its"),
        ("203.0.113.5", "the blacklist holds senders, not client IPs"),
        ("203.0.113.0/24", "the blacklist holds senders, not client IPs"),
        ("2001:db8::1", "the blacklist holds senders, not client IPs"),
        ("[192.0.2.1]", "the blacklist holds senders, not client IPs"),
        ("/^promo-[0-9]+@/", "patterns go in [policy] sender_deny"),
        ("*@evil.example", "use @evil.example for the domain"),
        ('"*"@evil.example', "use @evil.example for the domain"),
        ("not an address", "not an address, @domain or .domain"),
        ("a b@evil.example", "not an address (character not allowed"),
        ("x@", "not an address (missing domain)"),
        ("@", "'' is not a domain"),
        (".", "'' is not a domain"),
        ("@bad_name.example", "'bad_name.example' is not a domain"),
        ("", "empty entry"),
    ],
)
def test_entries_refused(given: str, reason: str) -> None:
    with pytest.raises(EntryError) as info:
        blacklist_entry(given)
    assert reason in str(info.value)


def test_quoted_and_unquoted_sender_are_one_entry(
    any_blacklist: SqliteBlacklist | RedisBlacklist,
) -> None:
    any_blacklist.add("evil@spam.example")
    for sender in ("evil@spam.example", '"evil"@spam.example', r'"ev\il"@spam.example'):
        assert any_blacklist.listed(sender) == "evil@spam.example", sender
    assert any_blacklist.listed('"evil "@spam.example') is None
    # Added quoted, it is the same entry, and lists the unquoted sender too.
    assert any_blacklist.add('"Evil"@spam.example') is False
    assert any_blacklist.add('"friend"@spam.example') is True
    assert any_blacklist.listed("friend@spam.example") == "friend@spam.example"
    assert [e.address for e in any_blacklist.entries()] == [
        "evil@spam.example",
        "friend@spam.example",
    ]
    assert any_blacklist.remove('"evil"@spam.example') is True
    assert any_blacklist.listed("evil@spam.example") is None


def store_as_an_older_version(
    blacklist: SqliteBlacklist | RedisBlacklist, state_path: Path, entry: str
) -> None:
    """Write ``entry`` as it is, past blacklist_entry's normalisation."""
    if isinstance(blacklist, SqliteBlacklist):
        blacklist.prepare()  # creates the file
        with closing(sqlite3.connect(state_path)) as db, db:
            db.execute("INSERT INTO blacklist VALUES (?, 0, 'old')", (entry,))
    else:
        blacklist.client.hset(blacklist.key, entry, "0 old")


def test_quoted_entry_stored_by_an_older_version(
    any_blacklist: SqliteBlacklist | RedisBlacklist, state_path: Path
) -> None:
    """Before the canonical form, add stored ``"evil"@spam.example`` as given: it still
    lists that spelling (the listing says "address") and goes with remove as listed."""
    old = '"evil"@spam.example'
    store_as_an_older_version(any_blacklist, state_path, old)
    assert any_blacklist.listed(old) == old
    assert any_blacklist.add("evil@spam.example") is True
    assert entry_scope(old) == "address"
    assert entry_scope("evil@spam.example") == "address"
    # Either spelling removes both rows: they name one mailbox.
    assert any_blacklist.remove(old) is True
    assert any_blacklist.entries() == []


def test_add_refuses_what_cannot_match(any_blacklist: SqliteBlacklist | RedisBlacklist) -> None:
    for entry in ("evil.example", "203.0.113.5", "/regex/"):
        with pytest.raises(EntryError):
            any_blacklist.add(entry)
    assert any_blacklist.entries() == []


def test_entry_stored_before_the_check_can_be_removed(
    blacklist: SqliteBlacklist, state_path: Path
) -> None:
    blacklist.prepare()  # creates the file
    with closing(sqlite3.connect(state_path)) as db, db:
        db.execute("INSERT INTO blacklist VALUES ('evil.example', 0, 'old')")
    assert [e.address for e in blacklist.entries()] == ["evil.example"]
    assert blacklist.remove("evil.example") is True
    assert blacklist.entries() == []


def test_unusable_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where a directory should be")
    path = blocker / "state.sqlite"
    broken = SqliteBlacklist(path, timeout=0.1)
    with pytest.raises(StateError, match=f"cannot open {path}"):
        broken.listed("a@example.org")
    with pytest.raises(StateError):
        broken.add("a@example.org")
    with pytest.raises(StateError):
        broken.remove("a@example.org")
    with pytest.raises(StateError):
        broken.entries()


def test_path_is_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    path.mkdir()
    with pytest.raises(StateError):
        SqliteBlacklist(path, timeout=0.1).listed("a@example.org")


def test_corrupt_state_file(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"\x00\xffnot a database" * 512)
    with pytest.raises(StateError, match=str(path)):
        SqliteBlacklist(path, timeout=0.1).listed("a@example.org")


# --- session gate ---------------------------------------------------------------------


def test_gate_admits_up_to_the_limit() -> None:
    gate = SessionGate(2)
    assert gate.enter() is True
    assert gate.enter() is True
    assert gate.enter() is False
    assert gate.active == 2  # a refused session holds no slot


def test_gate_refused_sessions_take_no_slot() -> None:
    """Review rev124 F2, F4: a refused session counted until the MTA closed it: a stop
    drained the sessions it refused (30 s under load), and at a small max_sessions one
    session in eight was refused below the limit."""
    gate = SessionGate(1)
    assert gate.enter() is True
    assert gate.enter() is False
    assert gate.active == 1
    gate.leave()  # the admitted one closes (the refused one was counted nowhere)
    assert gate.active == 0
    assert gate.enter() is True


def test_gate_counts_the_transactions_a_stop_waits_for() -> None:
    """Review rev193 F1: a stop waits for messages under way, not for idle sessions."""
    gate = SessionGate(10)
    assert gate.enter()
    assert gate.enter()
    gate.begin_transaction()
    assert gate.busy == 1
    gate.end_transaction()
    assert (gate.active, gate.busy) == (2, 0)


def test_gate_frees_capacity_on_leave() -> None:
    gate = SessionGate(2)
    assert gate.enter()
    assert gate.enter()
    gate.leave()
    assert gate.enter() is True
    assert gate.active == 2


def test_gate_draining_refuses_everyone() -> None:
    gate = SessionGate(10)
    assert gate.enter()
    gate.draining = True
    assert gate.enter() is False
    assert gate.enter() is False
    assert gate.active == 1
    gate.leave()
    assert gate.active == 0
    assert gate.enter() is False  # still draining with no session open
    gate.draining = False
    assert gate.enter() is True


def test_gate_limit_can_change_at_reload() -> None:
    gate = SessionGate(1)
    assert gate.enter()
    assert not gate.enter()
    gate.leave()
    gate.limit = 3
    assert gate.enter() is True
    assert gate.enter() is True
    assert gate.active == 2
    assert gate.enter() is True
    assert gate.enter() is False
    assert gate.enter() is False


def test_gate_counts_concurrent_sessions() -> None:
    gate = SessionGate(50)
    admitted: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def session_burst(n: int) -> None:
        start.wait()
        for _ in range(25):
            ok = gate.enter()
            with lock:
                admitted.append(ok)

    assert hammer(session_burst, threads=8) == []
    assert gate.active == 50
    assert admitted.count(True) == 50
    for _ in range(50):
        gate.leave()
    assert gate.active == 0


def test_concurrent_first_lookups_on_a_new_file(tmp_path: Path) -> None:
    """A burst of sessions right after start: every thread opens its connection at
    once; only one may create the file and switch it to WAL, the others must wait for
    it rather than fail with "database is locked"."""
    # The race hit ~1 burst in 13 before the fix: 30 bursts catch it 9 times in 10.
    failed = [
        attempt
        for attempt in range(30)
        if _burst_of_first_lookups(SqliteBlacklist(tmp_path / f"s{attempt}.sqlite", timeout=2))
    ]
    assert failed == []


def _burst_of_first_lookups(blacklist: SqliteBlacklist, threads: int = 10) -> list[str]:
    barrier = threading.Barrier(threads)
    errors: list[str] = []

    def first_lookup() -> None:
        barrier.wait()
        try:
            blacklist.listed("a@example.org")
        except StateError as exc:
            errors.append(str(exc))

    workers = [threading.Thread(target=first_lookup) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return errors


def listing(tmp_path: Path, name: str, *addresses: str) -> Path:
    """A blacklist file written elsewhere (by the CLI on another host, say)."""
    path = tmp_path / "staging" / f"{name}.sqlite"
    writer = SqliteBlacklist(path, timeout=0.5)
    writer.prepare()  # creates the file even with no address
    for address in addresses:
        writer.add(address)
    return path


def test_state_file_replaced_by_rename_is_seen_after_cache_ttl(
    tmp_path: Path, state_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    blacklist = SqliteBlacklist(state_path, timeout=0.5, cache_ttl=1.0, clock=clock)
    assert blacklist.listed("spammer@example.org") is None  # creates the file
    assert blacklist.listed("other@example.org") is None  # and sees it
    before = state_path.stat().st_ino
    replace_by_rename(listing(tmp_path, "new", "spammer@example.org"), state_path)
    after = state_path.stat().st_ino
    caplog.clear()  # the warnings of the two files' creation
    caplog.set_level(logging.INFO)
    clock.advance(0.5)
    assert blacklist.listed("spammer@example.org") is None  # cached
    clock.advance(0.5)
    assert blacklist.listed("spammer@example.org") == "spammer@example.org"
    assert [r.getMessage() for r in caplog.records] == [
        f"state file {state_path} replaced (inode {before} -> {after}): reopened"
    ]


def test_state_file_replaced_by_rename_without_cache(tmp_path: Path, state_path: Path) -> None:
    clock = FakeClock()
    blacklist = SqliteBlacklist(state_path, timeout=0.5, cache_ttl=0, clock=clock)
    assert blacklist.listed("spammer@example.org") is None  # creates the file
    assert blacklist.listed("other@example.org") is None  # and sees it
    # Written by the CLI while the milter has the file open: the WAL outlives the
    # write, and SQLite leaves it behind when the replaced file's connections close.
    SqliteBlacklist(state_path, timeout=0.5).add("old@example.org")
    assert blacklist.listed("old@example.org") == "old@example.org"
    replace_by_rename(listing(tmp_path, "new", "spammer@example.org"), state_path)
    clock.advance(MIN_CHECK_INTERVAL)
    assert blacklist.listed("spammer@example.org") == "spammer@example.org"
    assert blacklist.listed("old@example.org") is None  # no frame of the old file
    # And the new file takes writes: nothing of the old WAL was checkpointed into it.
    assert SqliteBlacklist(state_path, timeout=0.5).add("third@example.org")
    assert [e.address for e in blacklist.entries()] == ["spammer@example.org", "third@example.org"]


def test_removed_state_file_is_an_error_with_a_log_line(
    state_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Created on first use, but not again while running: an empty blacklist in place
    of a removed one would let every listed sender through without a word."""
    clock = FakeClock()
    blacklist = SqliteBlacklist(state_path, timeout=0.5, cache_ttl=1.0, clock=clock)
    blacklist.add("spammer@example.org")
    assert blacklist.listed("spammer@example.org") == "spammer@example.org"
    inode = state_path.stat().st_ino
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state_path}{suffix}").unlink(missing_ok=True)
    caplog.set_level(logging.INFO)
    clock.advance(1.0)
    for _ in range(2):
        with pytest.raises(StateError, match=f"{state_path}: No such file or directory"):
            blacklist.listed("spammer@example.org")
    assert not state_path.exists()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.ERROR,
            f"state file {state_path} missing (was inode {inode}): No such file or"
            " directory; lookups fail until it is back",
        )
    ]
    # The CLI (another process) creates it again.
    SqliteBlacklist(state_path, timeout=0.5).add("other@example.org")
    assert blacklist.listed("spammer@example.org") is None
    assert blacklist.listed("other@example.org") == "other@example.org"
    assert caplog.records[-1].getMessage() == (
        f"state file {state_path} back (inode {state_path.stat().st_ino}): reopened"
    )


def test_remove_takes_an_entry_as_add_took_it(tmp_path: Path) -> None:
    store = SqliteBlacklist(tmp_path / "state.sqlite", 1.0)
    assert store.add("@Example.com.")
    assert store.remove("@Example.com.")
    assert store.entries() == []


# --- internationalized domains: U-labels and A-labels are one domain --------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("@Bücher.Example.", "@xn--bcher-kva.example"),
        ("@XN--BCHER-KVA.example", "@xn--bcher-kva.example"),
        (".bücher.example", ".xn--bcher-kva.example"),
        ("Jürgen@bu\u0308cher.example", "jürgen@xn--bcher-kva.example"),  # NFD
        ("x@例子.中国", "x@xn--fsqu00a.xn--fiqs8s"),
    ],
)
def test_idn_entries_stored_canonical(given: str, stored: str) -> None:
    assert blacklist_entry(given) == stored
    assert entry_scope(stored) != "nothing"


@pytest.mark.parametrize(
    "entry",
    ["@bücher.example", "@xn--bcher-kva.example", ".Bücher.example", ".xn--bcher-kva.example"],
)
@pytest.mark.parametrize("sender", ["x@bücher.example", "x@XN--BCHER-KVA.example"])
def test_idn_domain_entry_lists_both_spellings(
    any_blacklist: SqliteBlacklist | RedisBlacklist, entry: str, sender: str
) -> None:
    any_blacklist.add(entry)
    assert any_blacklist.listed(sender) == entry[0] + "xn--bcher-kva.example"
    assert any_blacklist.listed("x@bucher.example") is None
    if entry.startswith("."):
        assert any_blacklist.listed(sender.replace("@", "@mx.")) is not None
    # Either spelling adds nothing new and removes it.
    assert any_blacklist.add(entry[0] + "BÜCHER.example") is False
    assert any_blacklist.remove(entry[0] + "xn--bcher-kva.example") is True
    assert any_blacklist.listed(sender) is None


def test_idn_address_entry_lists_both_spellings(
    any_blacklist: SqliteBlacklist | RedisBlacklist,
) -> None:
    any_blacklist.add("jürgen@xn--bcher-kva.example")
    for sender in (
        "jürgen@bücher.example",
        "ju\u0308rgen@Bücher.example",
        "Jürgen@xn--bcher-kva.example",
    ):
        assert any_blacklist.listed(sender) == "jürgen@xn--bcher-kva.example", sender
    assert any_blacklist.listed("jurgen@bücher.example") is None


@pytest.mark.parametrize(
    ("old", "sender", "scope"),
    [
        ("@bücher.example", "x@xn--bcher-kva.example", "domain"),
        (".bücher.example", "x@mx.bücher.example", "subdomains"),
        ("jürgen@bücher.example", "jürgen@xn--bcher-kva.example", "address"),
    ],
)
def test_idn_entry_stored_by_an_older_version(
    any_blacklist: SqliteBlacklist | RedisBlacklist,
    state_path: Path,
    old: str,
    sender: str,
    scope: str,
) -> None:
    """Before the canonical domain, add stored U-labels as written: such an entry still
    lists the sender in either spelling, the listing says what it matches, and remove
    takes it in either spelling."""
    store_as_an_older_version(any_blacklist, state_path, old)
    assert any_blacklist.listed(sender) == old
    assert any_blacklist.listed(sender.replace("xn--bcher-kva", "bücher")) == old
    assert entry_scope(old) == scope
    assert any_blacklist.remove(blacklist_entry(old)) is True
    assert any_blacklist.entries() == []


def test_matching_entries_of_an_idn_sender() -> None:
    expected = (
        "a@mx.xn--bcher-kva.example",
        "a@mx.bücher.example",
        "@mx.xn--bcher-kva.example",
        "@mx.bücher.example",
        ".mx.xn--bcher-kva.example",
        ".mx.bücher.example",
        ".xn--bcher-kva.example",
        ".bücher.example",
        ".example",
    )
    assert matching_entries("a@MX.Bücher.example.") == expected
    assert matching_entries("a@mx.xn--bcher-kva.example") == expected


@pytest.fixture
def frozen_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real Redis stopped with SIGSTOP: connections are accepted by the kernel, and
    nothing answers (a hung server, not a dead one)."""
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.stop()


def test_a_frozen_redis_costs_one_timeout_then_none_until_the_retry(
    frozen_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every MAIL FROM looks the sender up: a Redis that stopped answering must not hold
    each of them for its timeout (nor twice it, by redis-py's retry)."""
    clock = FakeClock()
    timeout = 0.5
    blacklist = RedisBlacklist(
        redis_client(frozen_redis.url, timeout=timeout), "smtpguard-test", clock=clock
    )
    blacklist.add("listed@example.net")
    assert blacklist.listed("listed@example.net") == "listed@example.net"
    frozen_redis.process.send_signal(signal.SIGSTOP)
    with caplog.at_level(logging.INFO, logger="smtpguard.state"):
        started = time.monotonic()
        with pytest.raises(StateError):
            blacklist.listed("listed@example.net")
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(10):
            with pytest.raises(StateError, match="unreachable"):
                blacklist.listed("listed@example.net")
        meanwhile = time.monotonic() - started
        frozen_redis.process.send_signal(signal.SIGCONT)
        clock.advance(5.0)
        assert blacklist.listed("listed@example.net") == "listed@example.net"
    assert timeout <= first < 2 * timeout, first
    assert meanwhile < timeout, meanwhile
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1, messages
    assert any("reachable again" in m for m in messages), messages


class _ScriptedRedis:
    """hmget answers per call from a list: an exception to raise, or a threading.Event
    to wait for before answering "not listed" (of a marked blacklist: the first field
    asked for is the marker)."""

    def __init__(self, script: list[BaseException | threading.Event]) -> None:
        self.script = script
        self.calls = 0

    def hmget(self, key: str, keys: list[str]) -> list[bytes | None]:
        step = self.script[self.calls]
        self.calls += 1
        if isinstance(step, BaseException):
            raise step
        step.wait(5)
        return [b"1", *[None] * (len(keys) - 1)]


def test_after_the_interval_one_lookup_probes_the_failed_redis() -> None:
    clock = FakeClock()
    down = redis.exceptions.TimeoutError("Timeout reading from socket")
    client = _ScriptedRedis([down, down, threading.Event()])
    blacklist = RedisBlacklist(client, "p", clock=clock)  # type: ignore[arg-type]
    with pytest.raises(StateError):
        blacklist.listed("a@example.com")
    clock.advance(5.0)
    with pytest.raises(StateError):
        blacklist.listed("a@example.com")  # the probe, failing again
    with pytest.raises(StateError, match="unreachable"):
        blacklist.listed("a@example.com")  # not asked: the next probe is 5 s away
    assert client.calls == 2


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (
            [redis.exceptions.NoPermissionError("no permissions to run 'hmget'")],
            ["blacklist backend redis failing (no permissions to run 'hmget')"],
        ),
        (
            [
                redis.exceptions.ConnectionError("Connection refused"),
                redis.exceptions.MaxClientsReachedError("max number of clients reached"),
            ],
            [
                "blacklist backend redis unreachable (Connection refused)",
                "blacklist backend redis now failing (max number of clients reached)",
            ],
        ),
    ],
    ids=["answered", "changing"],
)
def test_a_redis_answering_errors_is_failing_not_unreachable(
    caplog: pytest.LogCaptureFixture, script: list[BaseException], expected: list[str]
) -> None:
    """A read-only replica, one out of memory or a user without the permission answers
    with an error: it was logged as "unreachable", which sends the operator to the
    network (review rev50); so was "max number of clients reached", and an outage that
    changed nature (killed, then back as a replica) said nothing of it (rev58)."""
    clock = FakeClock()
    answer = threading.Event()
    answer.set()  # the last lookup is answered at once
    client = _ScriptedRedis([*script, answer])
    blacklist = RedisBlacklist(client, "p", clock=clock)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="smtpguard.state"):
        for _ in script:
            with pytest.raises(StateError):
                blacklist.listed("a@example.com")
            clock.advance(5.0)
        clock.advance(-5.0)
        with pytest.raises(StateError, match="redis failing: "):
            blacklist.listed("a@example.com")  # not asked: within the interval
        clock.advance(5.0)
        assert blacklist.listed("a@example.com") is None
    messages = [r.getMessage() for r in caplog.records]
    assert [m.partition("; ")[0] for m in messages[:-1]] == expected
    assert messages[-1].startswith("blacklist backend redis answering again after")


def test_a_lookup_older_than_the_outage_does_not_end_it() -> None:
    clock = FakeClock()
    answer = threading.Event()
    down = redis.exceptions.TimeoutError("Timeout reading from socket")
    client = _ScriptedRedis([answer, down])
    blacklist = RedisBlacklist(client, "p", clock=clock)  # type: ignore[arg-type]
    slow = threading.Thread(target=blacklist.listed, args=("a@example.com",))
    slow.start()
    wait_until(lambda: client.calls == 1)
    clock.advance(0.1)
    with pytest.raises(StateError):
        blacklist.listed("b@example.com")
    answer.set()
    slow.join()
    with pytest.raises(StateError, match="unreachable"):
        blacklist.listed("c@example.com")
    assert client.calls == 2


def test_a_blacklist_redis_lost_is_an_outage_not_an_empty_list(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache-style Redis restarted without persistence, flushed by another program or
    evicting under maxmemory loses the hash: listed senders must not pass silently
    (review rev99 F1). Until then, and after `blacklist add` made it again, lookups
    answer; a first start with no hash at all is an empty list, said once."""
    client = redis_client(redis_server.url)
    client.flushall()
    clock = FakeClock()
    service = RedisBlacklist(client, "lost", clock=clock)
    cli = RedisBlacklist(redis_client(redis_server.url), "lost")
    with caplog.at_level(logging.INFO, logger="smtpguard.state"):
        service.prepare()
        assert service.listed("a@example.com") is None
        assert service.listed("b@example.com") is None
        first_start = [r.getMessage() for r in caplog.records]
        caplog.clear()
        assert cli.add("listed@example.net")
        assert service.listed("listed@example.net") == "listed@example.net"
        client.flushdb()
        with pytest.raises(StateError, match="is gone from Redis"):
            service.listed("listed@example.net")
        with pytest.raises(StateError):
            service.listed("other@example.net")  # within the retry interval: not asked
        assert cli.entries() == []
        assert cli.add("listed@example.net")
        clock.advance(5.0)
        assert service.listed("listed@example.net") == "listed@example.net"
    assert len(first_start) == 1
    assert first_start[0].startswith("redis blacklist lost:blacklist has no marker")
    messages = [r.getMessage() for r in caplog.records]
    assert [m.partition(" (")[0] for m in messages] == [
        "blacklist backend redis lost the blacklist",
        "blacklist backend redis answering again after 5.0 s",
    ]
    assert [e.address for e in cli.entries()] == ["listed@example.net"]


def test_a_forked_worker_knows_the_marker_its_supervisor_saw(redis_server: RedisServer) -> None:
    """The supervisor asks once before forking: a worker started after Redis lost the
    hash still takes its absence for a loss, not a first start."""
    client = redis_client(redis_server.url)
    client.flushall()
    RedisBlacklist(client, "fork").add("x@example.net")
    supervisor = RedisBlacklist(client, "fork")
    supervisor.prepare()
    client.flushdb()
    worker = copy.copy(supervisor)
    with pytest.raises(StateError, match="is gone from Redis"):
        worker.listed("x@example.net")


def test_a_new_blacklist_object_of_this_host_knows_the_marker_was_seen(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Review rev100 F1: a worker restarted, a reload's new object or the service
    restarted after Redis lost the hash: the host remembers the marker (beside the
    state file), so none takes the loss for a first start."""
    client = redis_client(redis_server.url)
    client.flushall()
    seen = tmp_path / "state.sqlite.redis-seen"
    RedisBlacklist(client, "host").add("x@example.net")
    first = RedisBlacklist(client, "host", seen_file=seen)
    assert first.listed("x@example.net") == "x@example.net"
    assert seen.exists()
    client.flushdb()
    for later in (RedisBlacklist(client, "host", seen_file=seen), copy.copy(first)):
        with pytest.raises(StateError, match="is gone from Redis"):
            later.listed("x@example.net")


def test_a_required_blacklist_without_its_marker_is_lost_on_any_host(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Review rev100 F10: a host that never saw the marker (another host, a wiped
    state directory) took a lost list for an empty one; with required it cannot, a
    list made before the marker included, until `blacklist add` writes it."""
    client = redis_client(redis_server.url)
    client.flushall()
    client.hset("smtpguard:blacklist", "old@example.net", "0 ")
    new_host = RedisBlacklist(client, "smtpguard", seen_file=tmp_path / "seen", required=True)
    unrequired = RedisBlacklist(client, "smtpguard", seen_file=tmp_path / "other")
    with pytest.raises(StateError, match="redis_blacklist_required is true"):
        new_host.listed("old@example.net")
    assert unrequired.listed("old@example.net") == "old@example.net"
    assert unrequired.lost() is None
    assert new_host.lost() is not None
    RedisBlacklist(client, "smtpguard").add("x@example.net")
    assert new_host.lost() is None
    assert (tmp_path / "seen").exists()
    client.flushdb()
    assert "is gone from Redis" in (new_host.lost() or "")


def test_a_seen_file_that_cannot_be_written_is_said_once(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev101 F3: a state folder the service may not write made the host forget
    the marker silently."""
    client = redis_client(redis_server.url)
    client.flushall()
    RedisBlacklist(client, "rec").add("x@example.net")
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    service = RedisBlacklist(client, "rec", seen_file=tmp_path / "a-file" / "seen")
    with caplog.at_level(logging.WARNING, logger="smtpguard.state"):
        assert service.listed("x@example.net") == "x@example.net"
        assert service.listed("y@example.net") is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1
    assert said[0].startswith("cannot record that the redis blacklist rec:blacklist was seen")
    assert not (tmp_path / "a-file" / "seen").exists()
    # A missing folder is made (no StateDirectory=), and a file made by root's
    # commands before is the host's memory too: not touched, no warning (rev102 F4).
    command = RedisBlacklist(client, "rec", seen_file=tmp_path / "cmd" / "seen")
    assert command.lost() is None
    assert not (tmp_path / "cmd").exists()  # the commands make no folders
    made = RedisBlacklist(client, "rec", seen_file=tmp_path / "new" / "seen")
    assert made.listed("x@example.net") == "x@example.net"
    assert (tmp_path / "new" / "seen").is_file()
    (tmp_path / "new" / "seen").chmod(0o400)
    caplog.clear()
    again = RedisBlacklist(client, "rec", seen_file=tmp_path / "new" / "seen")
    assert again.listed("x@example.net") == "x@example.net"
    assert caplog.records == []


def test_a_seen_file_this_user_cannot_stat_is_unknown_not_absent(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Review rev101 F4: a user who may not read the state folder was told nothing."""
    client = redis_client(redis_server.url)
    client.flushall()
    unknown = RedisBlacklist(client, "u", seen_file=tmp_path / ("x" * 300))
    assert unknown.seen_unknown is not None
    assert unknown.seen_unknown.endswith("File name too long")
    assert unknown.lost() is None  # no marker, never seen: an empty list, but unsure
    assert RedisBlacklist(client, "u", seen_file=tmp_path / "seen").seen_unknown is None


def test_mark_takes_an_unmarked_list_as_it_is(redis_server: RedisServer, tmp_path: Path) -> None:
    """Review rev101 F2: a list made before the marker, with required: lookups fail
    until `blacklist mark`, which keeps its entries."""
    client = redis_client(redis_server.url)
    client.flushall()
    client.hset("old:blacklist", "old@example.net", "0 ")
    service = RedisBlacklist(client, "old", seen_file=tmp_path / "seen", required=True)
    with pytest.raises(StateError, match="`smtpguard blacklist mark` takes it as it is"):
        service.listed("old@example.net")
    assert service.listing() == ([BlacklistEntry("old@example.net", 0.0, "")], False)
    assert service.mark()
    assert not service.mark()
    assert service.lost() is None
    assert service.listing()[1]


def test_prepare_asks_with_the_command_the_service_user_has(
    redis_server: RedisServer,
) -> None:
    """The ACL conf/smtpguard.toml lists for the service has +hmget, not +hget."""
    admin = redis_client(redis_server.url)
    admin.flushall()
    RedisBlacklist(admin, "acl").add("x@example.net")
    admin.acl_setuser(
        "svc", enabled=True, passwords=["+pw"], keys=["acl:*"], commands=["+ping", "+hmget"]
    )
    try:
        service = RedisBlacklist(
            redis_client(redis_server.url.replace("redis://", "redis://svc:pw@")), "acl"
        )
        service.prepare()
        admin.flushdb()
        with pytest.raises(StateError, match="is gone from Redis"):
            service.listed("x@example.net")
    finally:
        admin.acl_deluser("svc")
