"""SqliteDirectory and import_file: the embedded directory backend."""

from __future__ import annotations

import logging
import os
import random
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from smtpguard.directory import (
    DirectoryError,
    ImportCounts,
    ImportError_,
    Kind,
    Login,
    NoDirectory,
    Recipient,
    SqliteDirectory,
    create_database,
    import_file,
)
from smtpguard.sqlitedb import MIN_CHECK_INTERVAL
from support.fake_dns import FakeClock

DIRECTORY_TOML = """\
[[user]]
address = "Alice@Example.com"
login = "alice"
send_as = ["sales@example.com", "@example.net"]

[[user]]
address = "bob@example.com"

[[user]]
address = "carol@example.com"
state = "locked"

[[user]]
address = "dan@example.com"
state = "suspended"

[[user]]
address = "erin@example.com"
state = "moving"

[[user]]
address = "fred@example.com"
state = "overquota"

[[alias]]
address = "info@example.com"
target = "Alice@example.com"

[[alias]]
address = "help@example.com"
target = "info@example.com"

[[alias]]
address = "old@example.com"
target = "carol@example.com"

[[alias]]
address = "ping@example.com"
target = "pong@example.com"

[[alias]]
address = "pong@example.com"
target = "ping@example.com"

[[alias]]
address = "fwd@example.com"
target = "someone@elsewhere.example"

[[alias]]
address = "team@example.com"
target = "carol@example.com"

[[alias]]
address = "team@example.com"
target = "bob@example.com"

[[list]]
address = "open@example.com"

[[list]]
address = "staff@example.com"
policy = "members"
members = ["Bob@Example.com"]
posters = ["boss@elsewhere.example"]

[[list]]
address = "announce@example.com"
policy = "posters"
members = ["bob@example.com"]
posters = ["alice@example.com"]

[[list]]
address = "all@example.com"
policy = "domain"
"""

DIRECTORY_CSV = """\
type,address,login,state,target,policy,list
user,Zoe@Example.org,zoe,,,,
user,yann@example.org,,locked,,,
alias,contact@example.org,,,zoe@example.org,,
send_as,@example.org,zoe,,,,
list,crew@example.org,,,,members,
member,Yann@example.org,,,,,crew@example.org
poster,outsider@elsewhere.example,,,,,crew@example.org
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "directory.sqlite"


@pytest.fixture
def directory(tmp_path: Path, db_path: Path) -> SqliteDirectory:
    import_file(db_path, write(tmp_path / "directory.toml", DIRECTORY_TOML))
    return SqliteDirectory(db_path, timeout=0.5)


@pytest.fixture
def csv_directory(tmp_path: Path, db_path: Path) -> SqliteDirectory:
    import_file(db_path, write(tmp_path / "directory.csv", DIRECTORY_CSV))
    return SqliteDirectory(db_path, timeout=0.5)


def table_rows(db_path: Path, table: str) -> list[tuple[str, ...]]:
    with closing(sqlite3.connect(db_path)) as db:
        return sorted(db.execute(f"SELECT * FROM {table}").fetchall())


# --- import -------------------------------------------------------------------------


def test_toml_import_counts(tmp_path: Path, db_path: Path) -> None:
    counts = import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    assert counts == ImportCounts(users=6, aliases=8, send_as=2, lists=4, members=4)
    assert db_path.is_file()  # parent directories created


def test_toml_import_normalizes_case(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    users = table_rows(db_path, "users")
    assert ("alice@example.com", "alice", "active") in users
    # Without a login the address is the login.
    assert ("bob@example.com", "bob@example.com", "active") in users
    assert ("info@example.com", "alice@example.com") in table_rows(db_path, "aliases")
    assert table_rows(db_path, "send_as") == [
        ("alice", "@example.net"),
        ("alice", "sales@example.com"),
    ]
    assert ("staff@example.com", "bob@example.com", "member") in table_rows(db_path, "list_members")


def test_csv_import(tmp_path: Path, db_path: Path) -> None:
    counts = import_file(db_path, write(tmp_path / "d.csv", DIRECTORY_CSV))
    assert counts == ImportCounts(users=2, aliases=1, send_as=1, lists=1, members=2)
    assert table_rows(db_path, "users") == [
        ("yann@example.org", "yann@example.org", "locked"),
        ("zoe@example.org", "zoe", "active"),
    ]
    assert table_rows(db_path, "list_members") == [
        ("crew@example.org", "outsider@elsewhere.example", "poster"),
        ("crew@example.org", "yann@example.org", "member"),
    ]


def test_csv_directory_answers(csv_directory: SqliteDirectory) -> None:
    assert csv_directory.recipient("zoe@example.org") == Recipient(Kind.USER)
    assert csv_directory.recipient("yann@example.org") == Recipient(Kind.USER, state="locked")
    assert csv_directory.recipient("contact@example.org") == Recipient(Kind.ALIAS)
    zoe = csv_directory.login("zoe")
    assert zoe == Login("zoe", "zoe@example.org", "active")
    assert csv_directory.may_send_as(zoe, "anything@example.org")
    assert not csv_directory.may_send_as(zoe, "anything@example.com")
    assert csv_directory.may_post("crew@example.org", "yann@example.org")
    assert csv_directory.may_post("crew@example.org", "outsider@elsewhere.example")
    assert not csv_directory.may_post("crew@example.org", "zoe@example.org")


def test_import_adds_unless_replace(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    extra = write(tmp_path / "extra.toml", '[[user]]\naddress = "new@example.com"\n')
    import_file(db_path, extra)
    addresses = [row[0] for row in table_rows(db_path, "users")]
    assert "new@example.com" in addresses
    assert "bob@example.com" in addresses

    import_file(db_path, extra, replace=True)
    assert table_rows(db_path, "users") == [("new@example.com", "new@example.com", "active")]
    assert table_rows(db_path, "aliases") == []
    assert table_rows(db_path, "lists") == []


def test_toml_bad_state_names_file_and_row(tmp_path: Path, db_path: Path) -> None:
    source = write(
        tmp_path / "bad.toml",
        '[[user]]\naddress = "ok@example.com"\n\n[[user]]\naddress = "x@example.com"\n'
        'state = "frozen"\n',
    )
    with pytest.raises(ImportError_) as info:
        import_file(db_path, source)
    assert str(info.value).startswith(f"{source}: user[1]: state must be one of active,")
    # One transaction: the valid first row is not written either.
    assert table_rows(db_path, "users") == []


def test_csv_bad_state_names_file_and_line(tmp_path: Path, db_path: Path) -> None:
    source = write(
        tmp_path / "bad.csv",
        "type,address,state\nuser,ok@example.com,\nuser,x@example.com,frozen\n",
    )
    with pytest.raises(ImportError_, match="state must be one of") as info:
        import_file(db_path, source)
    assert str(info.value).startswith(f"{source}:3: ")
    assert table_rows(db_path, "users") == []


def test_failed_import_leaves_previous_data(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    before = {t: table_rows(db_path, t) for t in ("users", "aliases", "send_as", "lists")}
    bad = write(
        tmp_path / "bad.toml",
        '[[user]]\naddress = "new@example.com"\n\n[[list]]\naddress = "l@example.com"\n'
        'policy = "secret"\n',
    )
    with pytest.raises(ImportError_, match=r"list\[0\]: policy must be one of"):
        import_file(db_path, bad, replace=True)
    # Neither the DELETEs of replace nor the first row survived the rollback.
    assert {t: table_rows(db_path, t) for t in before} == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[alias]]\naddress = "a@example.com"\n', "alias[0]: missing target"),
        ('[[user]]\nlogin = "x"\n', "user[0]: missing address"),
        ('[[group]]\naddress = "g@example.com"\n', "unknown key 'group'"),
        ('user = "x"\n', "user must be an array of tables"),
        ("[[user]\n", ""),  # not TOML at all
    ],
)
def test_bad_toml_files(tmp_path: Path, db_path: Path, text: str, message: str) -> None:
    source = write(tmp_path / "bad.toml", text)
    with pytest.raises(ImportError_) as info:
        import_file(db_path, source)
    assert str(info.value).startswith(str(source))
    assert message in str(info.value)


def test_csv_unknown_type(tmp_path: Path, db_path: Path) -> None:
    source = write(tmp_path / "bad.csv", "type,address\nuser,a@example.com\ngroup,g@example.com\n")
    with pytest.raises(ImportError_, match=r"bad\.csv:3: unknown record type 'group'"):
        import_file(db_path, source)
    assert not table_rows(db_path, "users")


def test_missing_import_file(tmp_path: Path, db_path: Path) -> None:
    with pytest.raises(ImportError_, match=r"nope\.csv"):
        import_file(db_path, tmp_path / "nope.csv")
    assert not db_path.exists()  # nothing created before the source was read


# --- recipients -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("alice@example.com", Recipient(Kind.USER)),
        ("ALICE@EXAMPLE.COM", Recipient(Kind.USER)),
        ("bob@example.com", Recipient(Kind.USER)),
        ("carol@example.com", Recipient(Kind.USER, state="locked")),
        ("dan@example.com", Recipient(Kind.USER, state="suspended")),
        ("erin@example.com", Recipient(Kind.USER, state="moving")),
        ("fred@example.com", Recipient(Kind.USER, state="overquota")),
        ("nobody@example.com", Recipient(Kind.NONE)),
    ],
)
def test_users_and_states(directory: SqliteDirectory, address: str, expected: Recipient) -> None:
    assert directory.recipient(address) == expected


def test_alias_to_user(directory: SqliteDirectory) -> None:
    assert directory.recipient("info@example.com") == Recipient(Kind.ALIAS)


def test_alias_chain(directory: SqliteDirectory) -> None:
    # help -> info -> alice: the final user's state, reported as an alias.
    assert directory.recipient("help@example.com") == Recipient(Kind.ALIAS, state="active")


def test_alias_carries_the_target_state(directory: SqliteDirectory) -> None:
    assert directory.recipient("old@example.com") == Recipient(Kind.ALIAS, state="locked")


def test_alias_loop_terminates(directory: SqliteDirectory) -> None:
    assert directory.recipient("ping@example.com") == Recipient(Kind.ALIAS)
    assert directory.recipient("pong@example.com") == Recipient(Kind.ALIAS)


def test_alias_to_external_address(directory: SqliteDirectory) -> None:
    assert directory.recipient("fwd@example.com") == Recipient(Kind.ALIAS)


def test_alias_fanning_out_is_deliverable(directory: SqliteDirectory) -> None:
    # team -> {bob, carol}: carol is locked, but bob still gets the mail.
    assert directory.recipient("team@example.com") == Recipient(Kind.ALIAS)


def test_alias_chain_longer_than_max_depth(tmp_path: Path, db_path: Path) -> None:
    hops = SqliteDirectory.MAX_ALIAS_DEPTH + 2
    lines = [
        f'[[alias]]\naddress = "a{i}@example.com"\ntarget = "a{i + 1}@example.com"\n'
        for i in range(hops)
    ]
    lines.append(f'[[user]]\naddress = "a{hops}@example.com"\nstate = "locked"\n')
    import_file(db_path, write(tmp_path / "chain.toml", "\n".join(lines)))
    directory = SqliteDirectory(db_path, timeout=0.5)
    # Too deep to follow: an alias, not "unknown" and not the far user's state.
    assert directory.recipient("a0@example.com") == Recipient(Kind.ALIAS)
    assert directory.recipient(f"a{hops - 3}@example.com") == Recipient(Kind.ALIAS, state="locked")


@pytest.mark.parametrize(
    ("address", "policy"),
    [
        ("open@example.com", "open"),
        ("staff@example.com", "members"),
        ("Announce@Example.com", "posters"),
        ("all@example.com", "domain"),
    ],
)
def test_lists(directory: SqliteDirectory, address: str, policy: str) -> None:
    assert directory.recipient(address) == Recipient(Kind.LIST, list_policy=policy)


# --- logins and send-as -----------------------------------------------------------------


def test_login_by_login_name(directory: SqliteDirectory) -> None:
    assert directory.login("alice") == Login("alice", "alice@example.com", "active")


def test_login_by_address(directory: SqliteDirectory) -> None:
    assert directory.login("Alice@Example.COM") == Login("alice", "alice@example.com", "active")
    assert directory.login("carol@example.com") == Login(
        "carol@example.com", "carol@example.com", "locked"
    )


def test_login_unknown(directory: SqliteDirectory) -> None:
    assert directory.login("mallory") is None
    assert directory.login("") is None


def test_login_name_wins_over_address(tmp_path: Path, db_path: Path) -> None:
    source = write(
        tmp_path / "d.toml",
        '[[user]]\naddress = "bob@example.com"\nlogin = "b"\n\n'
        '[[user]]\naddress = "robert@example.com"\nlogin = "bob@example.com"\n',
    )
    import_file(db_path, source)
    directory = SqliteDirectory(db_path, timeout=0.5)
    assert directory.login("bob@example.com") == Login(
        "bob@example.com", "robert@example.com", "active"
    )


@pytest.fixture
def alice(directory: SqliteDirectory) -> Login:
    login = directory.login("alice")
    assert login is not None
    return login


@pytest.mark.parametrize(
    "address",
    [
        "alice@example.com",  # own address
        "Alice@EXAMPLE.com",
        "sales@example.com",  # exact send_as
        "anyone@example.net",  # "@example.net" send_as
        "info@example.com",  # an alias pointing at her
    ],
)
def test_may_send_as(directory: SqliteDirectory, alice: Login, address: str) -> None:
    assert directory.may_send_as(alice, address)


@pytest.mark.parametrize(
    "address",
    [
        "bob@example.com",
        "sales@example.org",
        "x@sub.example.net",  # "@domain" is that domain only
    ],
)
def test_may_not_send_as(directory: SqliteDirectory, alice: Login, address: str) -> None:
    assert not directory.may_send_as(alice, address)


# --- list posting -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("list_address", "sender", "allowed"),
    [
        ("open@example.com", "anyone@elsewhere.example", True),
        ("open@example.com", "", True),
        ("staff@example.com", "bob@example.com", True),
        ("staff@example.com", "BOB@example.com", True),
        ("staff@example.com", "boss@elsewhere.example", True),  # posters may post too
        ("staff@example.com", "alice@example.com", False),
        ("staff@example.com", "", False),
        ("announce@example.com", "alice@example.com", True),
        ("announce@example.com", "bob@example.com", False),  # a member, not a poster
        ("all@example.com", "anyone@example.com", True),
        ("all@example.com", "anyone@EXAMPLE.COM", True),
        ("all@example.com", "anyone@sub.example.com", False),
        ("all@example.com", "anyone@elsewhere.example", False),
        ("all@example.com", "", False),
        ("unknown-list@example.com", "anyone@elsewhere.example", True),
    ],
)
def test_may_post(
    directory: SqliteDirectory, list_address: str, sender: str, allowed: bool
) -> None:
    assert directory.may_post(list_address, sender) is allowed


# --- backend failures -----------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    directory = SqliteDirectory(tmp_path / "absent.sqlite", timeout=0.1)
    with pytest.raises(DirectoryError, match=r"absent\.sqlite: unable to open"):
        directory.recipient("a@example.com")
    with pytest.raises(DirectoryError):
        directory.login("a")
    # The milter opens read-only: it must not have created the file.
    assert not (tmp_path / "absent.sqlite").exists()


def test_missing_file_recovers_once_created(tmp_path: Path, db_path: Path) -> None:
    directory = SqliteDirectory(db_path, timeout=0.1)
    with pytest.raises(DirectoryError):
        directory.recipient("bob@example.com")
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    assert directory.recipient("bob@example.com") == Recipient(Kind.USER)


@pytest.fixture
def exclusive_lock(db_path: Path, directory: SqliteDirectory) -> Iterator[sqlite3.Connection]:
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield holder
    finally:
        holder.close()


def test_locked_database(
    db_path: Path, directory: SqliteDirectory, exclusive_lock: sqlite3.Connection
) -> None:
    locked = SqliteDirectory(db_path, timeout=0.1)
    with pytest.raises(DirectoryError, match="locked"):
        locked.recipient("bob@example.com")
    with pytest.raises(DirectoryError, match="locked"):
        locked.login("alice")
    exclusive_lock.execute("COMMIT")
    assert locked.recipient("bob@example.com") == Recipient(Kind.USER)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(random.Random(20240501).randbytes(16384))
    directory = SqliteDirectory(path, timeout=0.1)
    with pytest.raises(DirectoryError, match=str(path)):
        directory.recipient("a@example.com")
    with pytest.raises(DirectoryError):
        directory.may_post("l@example.com", "a@example.com")


def test_file_replaced_after_error_is_reopened(tmp_path: Path, db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"definitely not sqlite" * 100)
    directory = SqliteDirectory(db_path, timeout=0.1)
    with pytest.raises(DirectoryError):
        directory.recipient("bob@example.com")
    db_path.unlink()
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    assert directory.recipient("bob@example.com") == Recipient(Kind.USER)


def test_empty_database_knows_nobody(db_path: Path) -> None:
    create_database(db_path)
    directory = SqliteDirectory(db_path, timeout=0.1)
    assert directory.recipient("a@example.com") == Recipient(Kind.NONE)
    assert directory.login("a") is None
    assert directory.may_post("l@example.com", "a@example.com")


def test_no_directory() -> None:
    nobody = NoDirectory()
    assert nobody.recipient("alice@example.com") == Recipient(Kind.NONE)
    assert nobody.login("alice") is None
    me = Login("me", "me@example.com", "active")
    assert nobody.may_send_as(me, "me@example.com")
    assert not nobody.may_send_as(me, "you@example.com")
    assert nobody.may_post("l@example.com", "")


# --- the file replaced by rename (rsync, config management), or removed ---------------


def alice_file(tmp_path: Path, name: str, state: str) -> Path:
    source = write(
        tmp_path / f"{name}.toml",
        f'[[user]]\naddress = "alice@example.com"\nlogin = "alice"\nstate = "{state}"\n',
    )
    path = tmp_path / "staging" / f"{name}.sqlite"
    import_file(path, source)
    return path


def replace_by_rename(new: Path, path: Path) -> None:
    """``cp new tmp; mv tmp directory.sqlite``"""
    staged = path.with_name(path.name + ".tmp")
    shutil.copyfile(new, staged)
    os.replace(staged, path)


def test_directory_replaced_by_rename_is_seen_after_cache_ttl(
    tmp_path: Path, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db_path.parent.mkdir(parents=True)
    shutil.copyfile(alice_file(tmp_path, "active", "active"), db_path)
    clock = FakeClock()
    directory = SqliteDirectory(db_path, timeout=0.1, cache_ttl=1.0, clock=clock)
    assert directory.recipient("alice@example.com") == Recipient(Kind.USER)
    assert directory.login("alice") == Login("alice", "alice@example.com", "active")
    before = db_path.stat().st_ino
    replace_by_rename(alice_file(tmp_path, "locked", "locked"), db_path)
    after = db_path.stat().st_ino
    caplog.set_level(logging.INFO)
    clock.advance(0.5)
    assert directory.recipient("alice@example.com") == Recipient(Kind.USER)  # cached
    clock.advance(0.5)
    assert directory.recipient("alice@example.com") == Recipient(Kind.USER, state="locked")
    assert directory.login("alice") == Login("alice", "alice@example.com", "locked")
    assert [r.getMessage() for r in caplog.records] == [
        f"directory file {db_path} replaced (inode {before} -> {after}): reopened"
    ]


def test_directory_replaced_by_rename_without_cache(tmp_path: Path, db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    shutil.copyfile(alice_file(tmp_path, "active", "active"), db_path)
    clock = FakeClock()
    directory = SqliteDirectory(db_path, timeout=0.1, cache_ttl=0, clock=clock)
    assert directory.recipient("alice@example.com") == Recipient(Kind.USER)
    replace_by_rename(alice_file(tmp_path, "locked", "locked"), db_path)
    clock.advance(MIN_CHECK_INTERVAL)
    assert directory.recipient("alice@example.com") == Recipient(Kind.USER, state="locked")


def test_removed_directory_is_an_error_with_a_log_line(
    tmp_path: Path, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db_path.parent.mkdir(parents=True)
    shutil.copyfile(alice_file(tmp_path, "active", "active"), db_path)
    clock = FakeClock()
    directory = SqliteDirectory(db_path, timeout=0.1, cache_ttl=1.0, clock=clock)
    assert directory.recipient("alice@example.com") == Recipient(Kind.USER)
    inode = db_path.stat().st_ino
    db_path.unlink()
    caplog.set_level(logging.INFO)
    clock.advance(1.0)
    # Neither the cached answer nor the old file's, whose connections are still open.
    with pytest.raises(DirectoryError, match=f"{db_path}: No such file or directory"):
        directory.recipient("alice@example.com")
    with pytest.raises(DirectoryError):
        directory.login("alice")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.ERROR,
            f"directory file {db_path} missing (was inode {inode}): No such file or"
            " directory; lookups fail until it is back",
        )
    ]
    replace_by_rename(alice_file(tmp_path, "locked", "locked"), db_path)
    assert directory.recipient("alice@example.com") == Recipient(Kind.USER, state="locked")
    assert caplog.records[-1].getMessage() == (
        f"directory file {db_path} back (inode {db_path.stat().st_ino}): reopened"
    )
