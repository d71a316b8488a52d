"""SqliteDirectory and import_file: the embedded directory backend."""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from smtpguard.address import strip_extension
from smtpguard.directory import (
    ChangeRefused,
    Contents,
    DirectoryError,
    ImportCounts,
    ImportError_,
    Kind,
    Login,
    NoDirectory,
    Recipient,
    Removed,
    SqliteDirectory,
    create_database,
    describe,
    export_csv,
    export_toml,
    formula_cells,
    import_file,
    list_lines,
    read_contents,
    remove_address,
)
from smtpguard.sqlitedb import MIN_CHECK_INTERVAL
from support.fake_dns import FakeClock
from support.files import replace_by_rename

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
    # team@ is one alias of two targets; the lists have two members and two posters.
    assert counts == ImportCounts(
        users=6, aliases=5, send_as=2, lists=4, members=2, alias_targets=6, posters=2
    )
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


def test_import_stores_quoted_local_parts_canonical(tmp_path: Path, db_path: Path) -> None:
    """RFC 5321 4.1.2: ``"zed"@`` is ``zed@``; the quotes ``"z d"@`` needs stay."""
    source = write(
        tmp_path / "q.toml",
        "[[user]]\naddress = '\"Zed\"@Example.com'\nsend_as = ['\"Sales\"@example.com']\n\n"
        "[[user]]\naddress = '\"z\\ d\"@example.com'\n\n"
        "[[alias]]\naddress = '\"info\"@example.com'\ntarget = '\"zed\"@example.com'\n",
    )
    import_file(db_path, source)
    assert table_rows(db_path, "users") == [
        ('"z d"@example.com', '"z d"@example.com', "active"),
        ("zed@example.com", "zed@example.com", "active"),
    ]
    assert table_rows(db_path, "aliases") == [("info@example.com", "zed@example.com")]
    assert table_rows(db_path, "send_as") == [("zed@example.com", "sales@example.com")]
    directory = SqliteDirectory(db_path, timeout=0.5)
    assert directory.recipient("zed@example.com") == Recipient(Kind.USER)
    assert directory.recipient('"z d"@example.com') == Recipient(Kind.USER)
    assert directory.recipient("info@example.com") == Recipient(Kind.ALIAS)


def test_csv_import(tmp_path: Path, db_path: Path) -> None:
    counts = import_file(db_path, write(tmp_path / "d.csv", DIRECTORY_CSV))
    assert counts == ImportCounts(
        users=2, aliases=1, send_as=1, lists=1, members=1, alias_targets=1, posters=1
    )
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
    assert info.value.problems == (
        f"{source}: user[1].state: unknown state 'frozen'"
        " (active, locked, suspended, moving, overquota)",
    )
    # Checked before anything is written: the valid first row is not, nor the file.
    assert not db_path.exists()


def test_csv_bad_state_names_file_and_line(tmp_path: Path, db_path: Path) -> None:
    source = write(
        tmp_path / "bad.csv",
        "type,address,state\nuser,ok@example.com,\nuser,x@example.com,frozen\n",
    )
    with pytest.raises(ImportError_) as info:
        import_file(db_path, source)
    assert info.value.problems == (
        f"{source}:3: state: unknown state 'frozen' (active, locked, suspended, moving, overquota)",
    )
    assert not db_path.exists()


def test_failed_import_leaves_previous_data(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    before = {t: table_rows(db_path, t) for t in ("users", "aliases", "send_as", "lists")}
    bad = write(
        tmp_path / "bad.toml",
        '[[user]]\naddress = "new@example.com"\n\n[[list]]\naddress = "l@example.com"\n'
        'policy = "secret"\n',
    )
    with pytest.raises(ImportError_, match=r"list\[0\]\.policy: unknown list policy 'secret'"):
        import_file(db_path, bad, replace=True)
    # Neither the DELETEs of replace nor the first row survived the rollback.
    assert {t: table_rows(db_path, t) for t in before} == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[alias]]\naddress = "a@example.com"\n', "alias[0]: missing target"),
        ('[[user]]\nlogin = "x"\n', "user[0]: missing address"),
        ('[[group]]\naddress = "g@example.com"\n', ": unknown key 'group' (user, alias, list)"),
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
    with pytest.raises(
        ImportError_,
        match=r"bad\.csv:3: type: unknown record type 'group' \(user, alias, send_as, list,",
    ):
        import_file(db_path, source)
    assert not db_path.exists()


def test_a_new_directory_file_appears_only_complete(tmp_path: Path, db_path: Path) -> None:
    """Found by review: importing into a removed directory file committed the empty
    schema first, and a running milter that found it there answered 550 for every
    real user until the rows followed. Whenever a file is at the path, it is whole."""
    users = 20000
    source = write(
        tmp_path / "big.toml",
        "".join(f'[[user]]\naddress = "u{n}@example.com"\n' for n in range(users)),
    )
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if not db_path.exists():
                continue
            try:
                with closing(sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)) as db:
                    seen.append(db.execute("SELECT count(*) FROM users").fetchone()[0])
            except sqlite3.Error:
                seen.append(-1)  # a schema without its tables, or a file half there

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert import_file(db_path, source).users == users
    finally:
        done.set()
        watcher.join()
    assert set(seen) <= {users}, sorted(set(seen))
    assert list(db_path.parent.iterdir()) == [db_path]  # nothing left beside it


def test_two_imports_into_a_missing_file_keep_both(tmp_path: Path, db_path: Path) -> None:
    """Second review: each built its own new file, and the second rename replaced the
    first's; the first import's rows were lost while both said they were imported."""
    sources = [
        write(
            tmp_path / f"part{n}.toml",
            "".join(f'[[user]]\naddress = "u{n}-{i}@example.com"\n' for i in range(20000)),
        )
        for n in (1, 2)
    ]
    fork = multiprocessing.get_context("fork")
    together = fork.Barrier(2)

    def run(source: Path) -> None:
        together.wait()
        import_file(db_path, source)

    workers = [fork.Process(target=run, args=(source,)) for source in sources]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0, 0]
    assert len(table_rows(db_path, "users")) == 40000
    assert list(db_path.parent.iterdir()) == [db_path]


def test_missing_import_file(tmp_path: Path, db_path: Path) -> None:
    with pytest.raises(ImportError_, match=r"nope\.csv"):
        import_file(db_path, tmp_path / "nope.csv")
    assert not db_path.exists()  # nothing created before the source was read


def problems_of(db_path: Path, source: Path, **options: Any) -> tuple[str, ...]:
    """The problems an import reports; the directory file must be as it was."""
    before = db_path.read_bytes() if db_path.exists() else None
    with pytest.raises(ImportError_) as info:
        import_file(db_path, source, **options)
    assert (db_path.read_bytes() if db_path.exists() else None) == before
    return info.value.problems


def test_every_problem_is_reported_and_nothing_imported(tmp_path: Path, db_path: Path) -> None:
    source = write(
        tmp_path / "typos.toml",
        '[[user]]\naddress = "a@example.com"\nstat = "locked"\n\n'
        '[[user]]\naddress = "not an address"\n\n'
        '[[user]]\naddress = "c@example.com"\nstate = "lockd"\n\n'
        '[[list]]\naddress = "l@example.com"\npolicy = "closed"\nmembers = ["x"]\n',
    )
    assert problems_of(db_path, source) == (
        f"{source}: user[0]: unknown key 'stat' (address, login, state, send_as)",
        f"{source}: user[1].address: invalid address 'not an address' (missing domain)",
        f"{source}: user[2].state: unknown state 'lockd'"
        " (active, locked, suspended, moving, overquota)",
        f"{source}: list[0].policy: unknown list policy 'closed' (open, members, posters, domain)",
        f"{source}: list[0].members[0]: invalid address 'x' (missing domain)",
    )


def test_typo_does_not_replace_the_directory(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    typo = write(tmp_path / "typo.toml", '[[user]]\naddress = "a@example.com"\nstat = "x"\n')
    assert problems_of(db_path, typo, replace=True) == (
        f"{typo}: user[0]: unknown key 'stat' (address, login, state, send_as)",
    )
    assert len(table_rows(db_path, "users")) == 6


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('address = "a@example.com"\nstate = 1', "user[0].state: must be a string"),
        ('address = "a@example.com"\nlogin = ""', "user[0].login: empty login (leave it out"),
        ('address = "a@example.com"\nlogin = " a"', "(leading or trailing space)"),
        ('address = "a@example.com"\nlogin = "a\\u0007"', "(control character)"),
        ('address = "a@example.com"\nsend_as = [1]', "user[0].send_as: must be an array of"),
        ('address = "a@example.com"\nsend_as = ["b"]', "user[0].send_as[0]: invalid address 'b'"),
        ('address = "a@example.com"\nsend_as = "@bad_domain"', "user[0].send_as: invalid domain"),
        (
            'address = "<a@example.com>"',
            "user[0].address: invalid address '<a@example.com>' (write",
        ),
        ('address = "a@example.com."', "(the domain ends with a dot)"),
        ('address = "a@@example.com"', "user[0].address: invalid address 'a@@example.com'"),
        ('address = ""', "user[0]: missing address"),
    ],
)
def test_toml_values_refused(tmp_path: Path, db_path: Path, text: str, problem: str) -> None:
    source = write(tmp_path / "bad.toml", f"[[user]]\n{text}\n")
    [found] = problems_of(db_path, source)
    assert found.startswith(f"{source}: ")
    assert problem in found


CSV_COLUMNS = "(type, address, login, state, target, policy, list)"


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        pytest.param(
            "type,address,sate,address,\nuser,a@example.com,x,,\n",
            (
                f"1: unknown column 'sate' {CSV_COLUMNS}",
                "1: column 'address' given twice",
                f"1: unknown column column 5 without a name {CSV_COLUMNS}",
            ),
            id="columns",
        ),
        pytest.param(
            "type,address,login,state,target,policy,list\n"
            "alias,a@example.com,,active,b@example.org,,\n"
            "\n"  # blank lines are skipped, and the line numbers stay right
            "user,u@example.com,,,,,,extra\n"
            ",x@example.com,,,,,\n",
            (
                "2: state: not a field of alias rows (address, target)",
                "4: 8 fields, the header names 7",
                "5: missing type",
            ),
            id="rows",
        ),
        pytest.param(
            "type,address,login,list\n"
            "send_as,sales@example.com,nobody,\n"
            "member,m@example.com,,nolist@example.com\n",
            (
                "2: login: no user has the login 'nobody'",
                "3: list: nolist@example.com is not a list",
            ),
            id="references",
        ),
        pytest.param(
            "type,address,login\nuser,alice@example.com,Alice\nsend_as,sales@example.com,alice\n",
            (
                "3: login: no user has the login 'alice' (a user has 'Alice': name it in"
                " the user's case)",
            ),
            id="login in another case",
        ),
    ],
)
def test_csv_refused(tmp_path: Path, db_path: Path, text: str, problems: tuple[str, ...]) -> None:
    source = write(tmp_path / "bad.csv", text)
    assert problems_of(db_path, source) == tuple(f"{source}:{p}" for p in problems)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        (
            "latin1.csv",
            b"type,address\nuser,a@example.com\nuser,j\xfcrgen@example.com\n",
            ":3: not UTF-8",
        ),
        ("latin1.toml", b'[[user]]\naddress = "j\xfcrgen@example.com"\n', ":2: not UTF-8"),
        (
            "huge.csv",
            b"type,address\nuser,a@example.com\nuser," + b"x" * 200_000 + b"\n",
            ":3: field larger than field limit",
        ),
        # Review rev114 F8: a byte order mark, CR or CRLF line ends, an unclosed quote.
        (
            "bom.csv",
            b"\xef\xbb\xbftype,address\r\nuser,a@example.com\r\n\xfcser,b@example.com\r\n",
            ":3: not UTF-8",
        ),
        ("cr.toml", b'[[user]]\raddress = "a@example.com"\r\r\xfc', ":4: not UTF-8"),
        (
            "quote.csv",
            b'type,address\nuser,a@example.com\nuser,"b\n' + b"x\n" * 70_000,
            ":3-65539: field larger than field limit",
        ),
    ],
)
def test_unreadable_files_name_the_line(
    tmp_path: Path, db_path: Path, name: str, raw: bytes, message: str
) -> None:
    """Review rev109 F5: a byte that is not UTF-8 and an over-long field were named by
    the file alone."""
    source = tmp_path / name
    source.write_bytes(raw)
    with pytest.raises(ImportError_) as info:
        import_file(db_path, source)
    assert str(info.value).startswith(f"{source}{message}")


@pytest.mark.parametrize("nested", ["a = " + "[" * 100_000, "a = " + "{x=" * 100_000])
def test_a_toml_file_nested_too_deeply_is_a_problem_not_a_traceback(
    tmp_path: Path, nested: str
) -> None:
    """Review rev179 F6: RecursionError from tomllib."""
    source = tmp_path / "deep.toml"
    source.write_text(nested)
    with pytest.raises(ImportError_, match="nested too deeply"):
        import_file(tmp_path / "d.sqlite", source)
    assert not (tmp_path / "d.sqlite").exists()


@pytest.mark.parametrize("ending", [b"\r", b"\r\r\n", b"\r\n"])
def test_a_toml_file_with_any_line_ending_imports(
    tmp_path: Path, db_path: Path, ending: bytes
) -> None:
    """Review rev114 F3: a file with CR alone, or converted twice (CR CR LF), imported
    before the import read bytes (Path.read_text reads universal newlines)."""
    source = tmp_path / "mac.toml"
    source.write_bytes(ending.join([b"[[user]]", b'address = "a@example.com"', b""]))
    assert import_file(db_path, source).users == 1


def test_a_csv_row_over_several_lines_is_named_by_them(tmp_path: Path, db_path: Path) -> None:
    """Review rev109 F5: an unclosed quote on line 3 swallows line 4; the problem was
    blamed on line 4 alone."""
    source = write(
        tmp_path / "quote.csv",
        'type,address\nuser,a@example.com\nuser,"bob@example.com\nuser,carol@example.com\n',
    )
    (problem,) = problems_of(db_path, source)
    assert problem.startswith(f"{source}:3-4: address: invalid address")


def test_csv_byte_order_mark(tmp_path: Path, db_path: Path) -> None:
    source = tmp_path / "excel.csv"
    source.write_bytes(b"\xef\xbb\xbftype,address\r\nuser,a@example.com\r\n")
    assert import_file(db_path, source).users == 1


@pytest.mark.parametrize(
    ("aliases", "problem"),
    [
        ([("self", "self")], "alias[0].target: alias loop self@example.com -> self@example.com"),
        (
            [("a", "b"), ("b", "c"), ("c", "a")],
            "alias[0].target: alias loop a@example.com -> b@example.com -> c@example.com"
            " -> a@example.com",
        ),
        # A fan-out alias is a loop too if one of its targets leads back.
        (
            [("team", "bob"), ("team", "list"), ("list", "team")],
            "alias[1].target: alias loop team@example.com -> list@example.com -> team@example.com",
        ),
    ],
)
def test_alias_loops_refused(
    tmp_path: Path, db_path: Path, aliases: list[tuple[str, str]], problem: str
) -> None:
    text = "".join(
        f'[[alias]]\naddress = "{a}@example.com"\ntarget = "{t}@example.com"\n' for a, t in aliases
    )
    source = write(tmp_path / "loop.toml", text)
    assert problems_of(db_path, source) == (f"{source}: {problem}",)  # one line a loop


def test_alias_loop_with_stored_aliases_refused(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    # help -> info is stored; info -> help would close the loop.
    more = write(
        tmp_path / "more.toml",
        '[[alias]]\naddress = "info@example.com"\ntarget = "help@example.com"\n',
    )
    [problem] = problems_of(db_path, more)
    assert problem == (
        f"{more}: alias[0].target: alias loop info@example.com -> help@example.com"
        " -> info@example.com"
    )


def is_example_com(domain: str) -> bool:
    return domain == "example.com"


def test_alias_to_nothing_in_a_local_domain_refused(tmp_path: Path, db_path: Path) -> None:
    source = write(
        tmp_path / "d.toml",
        '[[alias]]\naddress = "info@example.com"\ntarget = "nobody@example.com"\n\n'
        '[[alias]]\naddress = "fwd@example.com"\ntarget = "someone@elsewhere.example"\n\n'
        '[[alias]]\naddress = "help@example.com"\ntarget = "later@example.com"\n\n'
        '[[user]]\naddress = "later@example.com"\n',
    )
    assert problems_of(db_path, source, is_local=is_example_com) == (
        f"{source}: alias[0].target: nobody@example.com is in a local domain but is no user,"
        " alias or list",
    )
    # Without the local domains every target outside the directory is a forward.
    assert import_file(db_path, source).aliases == 3


def test_row_and_cross_row_problems_are_reported_together(tmp_path: Path, db_path: Path) -> None:
    """One run names every problem: the cross-row checks run on the rows that passed,
    so fixing the state does not bring up the alias on the next try."""
    source = write(
        tmp_path / "both.toml",
        '[[user]]\naddress = "b@example.com"\nstate = "lockd"\n\n'
        '[[alias]]\naddress = "x@example.com"\ntarget = "nobody@example.com"\n',
    )
    assert problems_of(db_path, source, is_local=is_example_com) == (
        f"{source}: user[0].state: unknown state 'lockd'"
        " (active, locked, suspended, moving, overquota)",
        f"{source}: alias[0].target: nobody@example.com is in a local domain but is no user,"
        " alias or list",
    )
    assert not db_path.exists()


def test_refused_records_are_not_reported_missing_too(tmp_path: Path, db_path: Path) -> None:
    """What a refused record names is there once its own problem is fixed: an alias to
    it, its login's send-as rights and its list's members are no second problem. A
    record whose address is refused (line 4) names nothing, and breaks nothing."""
    source = write(
        tmp_path / "d.csv",
        "type,address,login,state,target,policy,list\n"
        "user,b@example.com,bee,lockd,,,\n"
        "list,l@example.com,,,,secret,\n"
        "user,not an address,,,,,\n"
        "alias,x@example.com,,,b@example.com,,\n"
        "send_as,sales@example.com,bee,,,,\n"
        "member,m@example.com,,,,,l@example.com\n"
        "user,c@example.com,,,,,\n"
        "user,C@example.com,cee,,,,\n"  # given twice: its login is not stored either
        "send_as,info@example.com,cee,,,,\n"
        "alias,y@example.com,,,gone@example.com,,\n",
    )
    assert problems_of(db_path, source, is_local=is_example_com) == (
        f"{source}:2: state: unknown state 'lockd' (active, locked, suspended, moving, overquota)",
        f"{source}:3: policy: unknown list policy 'secret' (open, members, posters, domain)",
        f"{source}:4: address: invalid address 'not an address' (missing domain)",
        f"{source}:9: address: given twice (also line 8)",
        f"{source}:11: target: gone@example.com is in a local domain but is no user, alias or list",
    )


def test_nothing_is_reported_missing_after_a_record_not_read(tmp_path: Path, db_path: Path) -> None:
    """A record of an unknown type could be what the alias points to; clashes between
    the rows that were read are still reported."""
    source = write(
        tmp_path / "d.csv",
        "type,address,target\n"
        "group,g@example.com,\n"
        "alias,x@example.com,g@example.com\n"
        "user,a@example.com,\n"
        "alias,a@example.com,b@example.org\n",
    )
    assert problems_of(db_path, source, is_local=is_example_com) == (
        f"{source}:2: type: unknown record type 'group' (user, alias, send_as, list, member,"
        " poster)",
        f"{source}:4: address: a@example.com is a user (line 4) and an alias (line 5)",
    )


def test_alias_to_stored_user_accepted(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    more = write(
        tmp_path / "more.toml", '[[alias]]\naddress = "x@example.com"\ntarget = "bob@example.com"\n'
    )
    assert import_file(db_path, more, is_local=is_example_com).aliases == 1


@pytest.mark.parametrize(
    ("name", "text", "problems"),
    [
        pytest.param(
            "d.toml",
            '[[user]]\naddress = "a@example.com"\n\n'
            '[[alias]]\naddress = "a@example.com"\ntarget = "b@example.org"\n',
            (": user[0].address: a@example.com is a user (user[0]) and an alias (alias[0])",),
            id="address-of-two-kinds",
        ),
        pytest.param(
            "d.csv",
            "type,address,login\nuser,a@example.com,same\nuser,b@example.com,same\n",
            (
                ":2: login: login 'same' of several users: a@example.com (line 2),"
                " b@example.com (line 3)",
            ),
            id="login-of-two-users",
        ),
        pytest.param(
            "d.toml",
            '[[user]]\naddress = "a@example.com"\nsend_as = ["@x.example", "@X.example"]\n\n'
            '[[user]]\naddress = "A@example.com"\nstate = "locked"\n',
            (
                ": user[0].send_as[1]: given twice (also user[0])",
                ": user[1].address: given twice (also user[0])",
            ),
            id="given-twice",
        ),
        pytest.param(
            "d.toml",
            '[[user]]\naddress = "a@example.com"\n\n[[user]]\naddress = \'"a"@example.com\'\n',
            (": user[1].address: given twice (also user[0])",),
            id="given-twice-quoted",
        ),
    ],
)
def test_conflicting_rows_refused(
    tmp_path: Path, db_path: Path, name: str, text: str, problems: tuple[str, ...]
) -> None:
    source = write(tmp_path / name, text)
    assert problems_of(db_path, source) == tuple(f"{source}{p}" for p in problems)


def test_stored_address_of_another_kind_refused(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "base.toml", DIRECTORY_TOML))
    as_list = write(tmp_path / "l.toml", '[[list]]\naddress = "bob@example.com"\n')
    assert problems_of(db_path, as_list) == (
        f"{as_list}: list[0].address: bob@example.com is a user (already in the directory)"
        " and a list (list[0])",
    )


def test_user_given_again_replaces_the_stored_one(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    again = write(
        tmp_path / "again.toml", '[[user]]\naddress = "bob@example.com"\nstate = "moving"\n'
    )
    import_file(db_path, again)
    assert ("bob@example.com", "bob@example.com", "moving") in table_rows(db_path, "users")


def test_an_entry_given_again_is_replaced_whole(tmp_path: Path, db_path: Path) -> None:
    """Review rev123 F1: an import without --replace added to what was stored: a
    send-as right taken away stayed, an alias kept its old target beside the new one,
    a member taken off a list could still post to it."""
    first = """\
[[user]]
address = "alice@example.com"
send_as = ["ceo@example.com", "sales@example.com"]
[[user]]
address = "carol@example.com"
[[user]]
address = "ceo@example.com"
[[alias]]
address = "sales@example.com"
target = "alice@example.com"
[[list]]
address = "board@example.com"
policy = "members"
members = ["alice@example.com", "carol@example.com"]
"""
    import_file(db_path, write(tmp_path / "first.toml", first))
    again = """\
[[user]]
address = "alice@example.com"
send_as = []
[[alias]]
address = "sales@example.com"
target = "carol@example.com"
[[list]]
address = "board@example.com"
policy = "members"
members = ["carol@example.com"]
"""
    import_file(db_path, write(tmp_path / "again.toml", again))
    assert table_rows(db_path, "send_as") == []
    assert table_rows(db_path, "aliases") == [("sales@example.com", "carol@example.com")]
    assert table_rows(db_path, "list_members") == [
        ("board@example.com", "carol@example.com", "member")
    ]
    directory = SqliteDirectory(db_path, timeout=0.5)
    alice = directory.login("alice@example.com")
    assert alice is not None
    assert not directory.may_send_as(alice, "ceo@example.com")
    assert not directory.may_post("board@example.com", "alice@example.com")


def test_a_login_given_to_a_new_user_brings_no_rights(tmp_path: Path, db_path: Path) -> None:
    """Review rev123 F1: alice renamed to asmith and her old login given to a new user:
    the new user sent as ceo@ with alice's old right."""
    first = """\
[[user]]
address = "alice@example.com"
login = "alice"
send_as = ["ceo@example.com"]
[[user]]
address = "ceo@example.com"
"""
    import_file(db_path, write(tmp_path / "first.toml", first))
    again = """\
[[user]]
address = "alice@example.com"
login = "asmith"
send_as = ["ceo@example.com"]
[[user]]
address = "mallory@example.com"
login = "alice"
"""
    import_file(db_path, write(tmp_path / "again.toml", again))
    assert table_rows(db_path, "send_as") == [("asmith", "ceo@example.com")]
    directory = SqliteDirectory(db_path, timeout=0.5)
    mallory = directory.login("alice")
    assert mallory is not None
    assert mallory.address == "mallory@example.com"
    assert not directory.may_send_as(mallory, "ceo@example.com")


def test_entries_given_again_are_checked_as_they_will_be(tmp_path: Path, db_path: Path) -> None:
    """Review rev126 F3: a → b → u1 became a → u1 and b → a, no loop; the checks
    still saw the old targets beside the new ones and refused a loop a → b → a."""
    first = """\
[[user]]
address = "u1@example.com"
[[alias]]
address = "a@example.com"
target = "b@example.com"
[[alias]]
address = "b@example.com"
target = "u1@example.com"
"""
    import_file(db_path, write(tmp_path / "first.toml", first))
    swapped = """\
[[alias]]
address = "a@example.com"
target = "u1@example.com"
[[alias]]
address = "b@example.com"
target = "a@example.com"
"""
    import_file(db_path, write(tmp_path / "swapped.toml", swapped))
    assert table_rows(db_path, "aliases") == [
        ("a@example.com", "u1@example.com"),
        ("b@example.com", "a@example.com"),
    ]
    # A loop the import itself makes is still refused.
    looped = '[[alias]]\naddress = "a@example.com"\ntarget = "b@example.com"\n'
    assert "alias loop" in " ".join(problems_of(db_path, write(tmp_path / "l.toml", looped)))


def test_csv_rows_of_an_entry_not_given_again_add_to_it(tmp_path: Path, db_path: Path) -> None:
    """A send-as or member row alone (CSV) is an addition; with its user or list row in
    the same file, the file's rows are the whole of it."""
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    before = table_rows(db_path, "send_as")
    login, _ = before[0]
    more = write(tmp_path / "more.csv", f"type,login,address\nsend_as,{login},@example.com\n")
    import_file(db_path, more)
    assert table_rows(db_path, "send_as") == sorted({*before, (login, "@example.com")})


# --- export, show, list, remove -----------------------------------------------------

AWKWARD_TOML = """\
[[user]]
address = '"john \\"jack\\" smith"@example.com'
login = "jörg \\\\ admin"
send_as = ["@bücher.example", "x@[192.0.2.1]"]

[[alias]]
address = "jack@example.com"
target = '"john \\"jack\\" smith"@example.com'
"""


def all_rows(db_path: Path) -> dict[str, list[tuple[str, ...]]]:
    tables = ("users", "aliases", "send_as", "lists", "list_members")
    return {table: table_rows(db_path, table) for table in tables}


@pytest.mark.parametrize("export", [export_toml, export_csv])
def test_export_imports_back_to_the_same_directory(
    tmp_path: Path, db_path: Path, export: Callable[[Contents], tuple[str, list[str]]]
) -> None:
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    import_file(db_path, write(tmp_path / "d.csv", DIRECTORY_CSV))
    import_file(db_path, write(tmp_path / "awkward.toml", AWKWARD_TOML))
    text, left_out = export(read_contents(db_path))
    assert left_out == []
    suffix = ".csv" if export is export_csv else ".toml"
    copy = tmp_path / "copy.sqlite"
    import_file(copy, write(tmp_path / f"export{suffix}", text), replace=True)
    assert all_rows(copy) == all_rows(db_path)
    assert all_rows(db_path)["users"]  # not two empty directories


def test_export_leaves_out_what_no_import_can_say(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("INSERT INTO send_as VALUES ('ghost', 'x@example.com')")
        db.execute(
            "INSERT INTO list_members VALUES ('gone@example.com', 'y@example.com', 'member')"
        )
    for export in (export_toml, export_csv):
        text, left_out = export(read_contents(db_path))
        assert left_out == [
            "send-as right x@example.com of login 'ghost': no user has that login",
            "member y@example.com of gone@example.com: not a list",
        ]
        assert "ghost" not in text
        assert "gone@example.com" not in text


def test_read_contents_needs_the_file(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError, match="no such file"):
        read_contents(tmp_path / "absent.sqlite")
    assert not (tmp_path / "absent.sqlite").exists()


def test_list_lines(directory: SqliteDirectory, db_path: Path) -> None:
    lines = list_lines(read_contents(db_path))
    assert lines[:3] == [
        "alice@example.com\tuser\tactive",
        "all@example.com\tlist\tdomain",
        "announce@example.com\tlist\tposters",
    ]
    assert "team@example.com\talias\tbob@example.com, carol@example.com" in lines
    assert len(lines) == 6 + 6 + 4 - 1  # team is one line for its two targets


def test_describe_user(directory: SqliteDirectory, db_path: Path) -> None:
    contents = read_contents(db_path)
    expected = [
        "alice@example.com: user",
        "  state     active",
        "  login     alice",
        "  send-as   @example.net, sales@example.com",
        "  aliases   info@example.com",
        "  lists     announce@example.com (poster)",
    ]
    assert describe(contents, "Alice@Example.com") == expected
    assert describe(contents, "alice") == expected  # by login
    assert describe(contents, "nobody@example.com") is None
    assert describe(contents, '"alice"@example.com') == expected


def test_describe_alias_and_list(directory: SqliteDirectory, db_path: Path) -> None:
    contents = read_contents(db_path)
    assert describe(contents, "team@example.com") == [
        "team@example.com: alias",
        "  targets   bob@example.com (user, active), carol@example.com (user, locked)",
    ]
    assert describe(contents, "help@example.com") == [
        "help@example.com: alias",
        "  targets   info@example.com (alias)",
    ]
    assert describe(contents, "fwd@example.com") == [
        "fwd@example.com: alias",
        "  targets   someone@elsewhere.example (not in the directory)",
    ]
    assert describe(contents, "staff@example.com") == [
        "staff@example.com: list",
        "  policy    members",
        "  members   bob@example.com",
        "  posters   boss@elsewhere.example",
    ]


def test_remove(directory: SqliteDirectory, db_path: Path) -> None:
    with pytest.raises(ChangeRefused, match=r"team@example\.com points at it"):
        remove_address(db_path, "bob@example.com")
    assert remove_address(db_path, '"team"@example.com') == Removed(("alias",), 0, 0, 0)
    assert remove_address(db_path, "Bob@Example.com") == Removed(("user",), 0, 0, 2)
    assert directory.recipient("bob@example.com") == Recipient(Kind.NONE)
    assert not directory.may_post("staff@example.com", "bob@example.com")
    with pytest.raises(ChangeRefused, match=r"info@example\.com points at it"):
        remove_address(db_path, "alice@example.com")
    # bob was a member: only the poster is left.
    assert remove_address(db_path, "staff@example.com") == Removed(("list",), 0, 1, 0)
    assert "staff@example.com" not in str(all_rows(db_path))
    assert remove_address(db_path, "staff@example.com") is None


def test_remove_user_with_send_as(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "d.toml", DIRECTORY_TOML))
    for alias in ("help@example.com", "info@example.com"):
        remove_address(db_path, alias)
    assert remove_address(db_path, "alice@example.com") == Removed(("user",), 2, 0, 1)
    assert table_rows(db_path, "send_as") == []


def test_remove_needs_the_file(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError, match="no such file"):
        remove_address(tmp_path / "absent.sqlite", "a@example.com")
    assert not (tmp_path / "absent.sqlite").exists()


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
        # RFC 5321 4.1.2: a quoted Dot-string is the same mailbox.
        ('"alice"@example.com', Recipient(Kind.USER)),
        (r'"Al\ice"@Example.com.', Recipient(Kind.USER)),
        ('"carol"@example.com', Recipient(Kind.USER, state="locked")),
        ('"info"@example.com', Recipient(Kind.ALIAS)),
        ('"alice "@example.com', Recipient(Kind.NONE)),
        ('"ali ce"@example.com', Recipient(Kind.NONE)),
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


def test_an_alias_loop_in_the_file_is_a_lookup_failure(
    directory: SqliteDirectory, db_path: Path
) -> None:
    """Import refuses loops; a file written otherwise may still have one: neither an
    accept nor a refusal (review rev109 F2), a temporary failure that names it."""
    with closing(sqlite3.connect(db_path)) as db, db:
        db.executemany(
            "INSERT INTO aliases VALUES (?, ?)",
            [("ping@example.com", "pong@example.com"), ("pong@example.com", "ping@example.com")],
        )
    with pytest.raises(DirectoryError, match=r"ping@example\.com: an alias loop or a chain"):
        directory.recipient("ping@example.com")


def test_alias_to_external_address(directory: SqliteDirectory) -> None:
    assert directory.recipient("fwd@example.com") == Recipient(Kind.ALIAS)


def test_alias_fanning_out_is_deliverable(directory: SqliteDirectory) -> None:
    # team -> {bob, carol}: carol is locked, but bob still gets the mail.
    assert directory.recipient("team@example.com") == Recipient(Kind.ALIAS)


def chain(
    hops: int, end: str = '[[user]]\naddress = "a{n}@example.com"\nstate = "locked"\n'
) -> str:
    lines = [
        f'[[alias]]\naddress = "a{i}@example.com"\ntarget = "a{i + 1}@example.com"\n'
        for i in range(hops)
    ]
    return "\n".join([*lines, end.format(n=hops)])


def test_an_alias_chain_longer_than_a_lookup_follows_is_refused_at_import(
    tmp_path: Path, db_path: Path
) -> None:
    """Review rev109 F2: a chain past the lookup's depth was accepted, and a locked user
    or a members-only list at its end never seen."""
    hops = SqliteDirectory.MAX_ALIAS_DEPTH + 1
    with pytest.raises(ImportError_, match=r"alias\[0\].target: a chain of more than 8 aliases"):
        import_file(db_path, write(tmp_path / "chain.toml", chain(hops)))
    import_file(db_path, write(tmp_path / "ok.toml", chain(hops - 1)))
    directory = SqliteDirectory(db_path, timeout=0.5)
    assert directory.recipient("a0@example.com") == Recipient(Kind.ALIAS, state="locked")


def test_an_alias_chain_written_otherwise_is_a_lookup_failure(
    directory: SqliteDirectory, db_path: Path
) -> None:
    hops = SqliteDirectory.MAX_ALIAS_DEPTH + 2
    with closing(sqlite3.connect(db_path)) as db, db:
        db.executemany(
            "INSERT INTO aliases VALUES (?, ?)",
            [(f"a{i}@example.com", f"a{i + 1}@example.com") for i in range(hops)],
        )
        db.execute("INSERT INTO lists VALUES (?, ?)", (f"a{hops}@example.com", "members"))
        # And a fan-out alias into the chain: its lists are looked for as deep.
        db.executemany(
            "INSERT INTO aliases VALUES (?, ?)",
            [("fan@example.com", "a0@example.com"), ("fan@example.com", "x@elsewhere.example")],
        )
    for address in ("a0@example.com", "fan@example.com"):
        with pytest.raises(DirectoryError, match="a chain of more than 8 aliases"):
            directory.recipient(address)
    assert directory.recipient("a3@example.com") == Recipient(
        Kind.LIST, list_policy="members", list_address=f"a{hops}@example.com"
    )


def test_an_alias_to_a_local_address_with_an_extension_imports(
    tmp_path: Path, db_path: Path
) -> None:
    """Review rev109 F3: the lookup delivers sales@ -> alice+sales@ to alice@, but the
    import refused it as a local address that is nothing."""
    text = (
        '[[user]]\naddress = "alice@example.com"\n\n'
        '[[alias]]\naddress = "sales@example.com"\ntarget = "alice+sales@example.com"\n'
    )
    source = write(tmp_path / "ext.toml", text)
    with pytest.raises(ImportError_, match="is in a local domain but is no user"):
        import_file(db_path, source, is_local=lambda d: d == "example.com")
    import_file(db_path, source, is_local=lambda d: d == "example.com", delimiters="+")
    directory = SqliteDirectory(db_path, timeout=0.5, recipient_delimiter="+")
    assert directory.recipient("sales@example.com") == Recipient(Kind.ALIAS, state="active")
    loop = '[[alias]]\naddress = "alice@example.com"\ntarget = "sales+x@example.com"\n'
    with pytest.raises(ImportError_, match="alias loop"):
        import_file(
            db_path,
            write(tmp_path / "loop.toml", text.replace("[[user]]", "#") + loop),
            replace=True,
            delimiters="+",
        )


def test_replacing_the_directory_with_nothing_is_refused(tmp_path: Path, db_path: Path) -> None:
    """Review rev109 F4: an empty or cut file given to --replace emptied the directory,
    and every local recipient got 550."""
    import_file(db_path, write(tmp_path / "one.toml", '[[user]]\naddress = "a@example.com"\n'))
    with pytest.raises(ImportError_, match="--replace would empty the directory"):
        import_file(db_path, write(tmp_path / "empty.toml", "# nothing\n"), replace=True)
    directory = SqliteDirectory(db_path, timeout=0.5)
    assert directory.recipient("a@example.com").kind is Kind.USER


def test_a_recipient_is_one_snapshot_of_the_file(db_path: Path, tmp_path: Path) -> None:
    """Review rev109 F1: a lookup made three queries, and an import that committed
    between them (an address turned from alias to user) made the address nothing:
    550 for an address that exists before and after. One statement per address."""
    import_file(
        db_path,
        write(
            tmp_path / "a.toml",
            '[[user]]\naddress = "bob@example.com"\n\n'
            '[[alias]]\naddress = "x@example.com"\ntarget = "bob@example.com"\n',
        ),
    )
    turned = write(tmp_path / "b.toml", '[[user]]\naddress = "x@example.com"\n')

    class ImportedMidway(SqliteDirectory):
        calls = 0

        def _query(self, sql: str, args: tuple[str, ...]) -> list[tuple[str, ...]]:
            rows = super()._query(sql, args)
            ImportedMidway.calls += 1
            if ImportedMidway.calls == 1:
                import_file(db_path, turned, replace=True)
            return rows

    directory = ImportedMidway(db_path, timeout=0.5)
    assert directory.recipient("x@example.com").kind is not Kind.NONE


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
    expected = Recipient(Kind.LIST, list_policy=policy, list_address=address.lower())
    assert directory.recipient(address) == expected


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


def test_a_bare_login_is_its_user_at_the_default_login_domain(
    directory: SqliteDirectory, db_path: Path
) -> None:
    """Review rev198 L1: Dovecot's bare "bob" was unknown to the directory, whose user
    is bob@example.com: every message of his got a permanent 551 auth error."""
    assert directory.login("bob") is None  # without policy.default_login_domain
    qualified = SqliteDirectory(db_path, timeout=0.5, login_domain="example.com")
    assert qualified.login("bob") == Login("bob@example.com", "bob@example.com", "active")
    assert qualified.login("carol") == Login("carol@example.com", "carol@example.com", "locked")
    # A login of its own still wins; an unknown one stays unknown.
    assert qualified.login("alice") == Login("alice", "alice@example.com", "active")
    assert qualified.login("mallory") is None
    assert qualified.login("") is None


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
        # RFC 5321 4.1.2: quoted, the same addresses.
        '"alice"@example.com',
        r'"s\ales"@example.com',
        '"anyone"@example.net',
        '"info"@example.com',
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
        '"bob"@example.com',
        '"alice "@example.com',  # quotes that are needed: another mailbox
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
        ('"staff"@example.com', '"bob"@example.com', True),
        ('"staff"@example.com', "alice@example.com", False),
        ("announce@example.com", '"alice"@example.com', True),
        ("announce@example.com", '"bob"@example.com', False),
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


def test_failing_lookups_are_logged_once_per_outage(
    db_path: Path,
    directory: SqliteDirectory,
    exclusive_lock: sqlite3.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review rev83: a locked or corrupt file deferred every local recipient with
    nothing in the log but each decision's detail."""
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    locked = SqliteDirectory(db_path, timeout=0.1, clock=clock)
    for _ in range(3):
        with pytest.raises(DirectoryError, match="locked"):
            locked.recipient("bob@example.com")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.ERROR,
            f"directory file {db_path}: lookups fail: database is locked; the mail that"
            " needs them is deferred until they answer again (logged once)",
        )
    ]
    exclusive_lock.execute("COMMIT")
    clock.advance(2.5)
    assert locked.recipient("bob@example.com") == Recipient(Kind.USER)
    assert locked.login("alice") is not None
    assert [r.getMessage() for r in caplog.records[1:]] == [
        f"directory file {db_path} answering again after 2.5 s"
    ]


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
    """backend = "none": no login is verified (the MTA's SASL vouched for it; it used
    to be unknown, so every authenticated user got auth_error_perm), and a login may
    send as itself only."""
    nobody = NoDirectory()
    assert nobody.recipient("alice@example.com") == Recipient(Kind.NONE)
    me = nobody.login("Me@Example.COM")
    assert me == Login("Me@Example.COM", "me@example.com", "active")
    assert nobody.may_send_as(me, "me@example.com")
    assert nobody.may_send_as(me, '"me"@EXAMPLE.com')
    assert not nobody.may_send_as(me, "you@example.com")
    bare = nobody.login("alice")
    assert bare == Login("alice", "", "active")
    assert not nobody.may_send_as(bare, "alice@example.com")
    assert nobody.may_post("l@example.com", "")


# --- logins without regard to case, address extensions -----------------------------------


def test_login_matches_without_regard_to_case(directory: SqliteDirectory) -> None:
    """Postfix's reject_sender_login_mismatch compares the SASL login with strcasecmp;
    a Cyrus SASL login arrives as the user typed it."""
    assert directory.login("ALICE") == Login("alice", "alice@example.com", "active")
    assert directory.login("Alice") == Login("alice", "alice@example.com", "active")


def test_login_exact_spelling_wins(tmp_path: Path, db_path: Path) -> None:
    """A directory stored before logins were compared without case may hold two
    spellings: the exact one answers, another spelling matches neither."""
    create_database(db_path)
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("INSERT INTO users VALUES ('a@example.com', 'Alice', 'active')")
        db.execute("INSERT INTO users VALUES ('b@example.com', 'alice', 'active')")
    directory = SqliteDirectory(db_path, timeout=0.5)
    assert directory.login("alice") == Login("alice", "b@example.com", "active")
    assert directory.login("Alice") == Login("Alice", "a@example.com", "active")
    assert directory.login("ALICE") is None


def test_logins_differing_in_case_refused(tmp_path: Path, db_path: Path) -> None:
    source = write(
        tmp_path / "d.toml",
        '[[user]]\naddress = "a@example.com"\nlogin = "Alice"\n\n'
        '[[user]]\naddress = "b@example.com"\nlogin = "alice"\n',
    )
    with pytest.raises(ImportError_) as caught:
        import_file(db_path, source)
    assert "login 'alice' of several users: a@example.com" in str(caught.value)


@pytest.fixture
def plus(tmp_path: Path, db_path: Path) -> SqliteDirectory:
    import_file(db_path, write(tmp_path / "directory.toml", DIRECTORY_TOML))
    return SqliteDirectory(db_path, timeout=0.5, recipient_delimiter="+")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("alice+news@example.com", Recipient(Kind.USER)),
        ("Alice+News+More@Example.com", Recipient(Kind.USER)),
        ('"alice+news"@example.com', Recipient(Kind.USER)),
        ("carol+x@example.com", Recipient(Kind.USER, state="locked")),
        ("info+x@example.com", Recipient(Kind.ALIAS)),
        (
            "staff+x@example.com",
            Recipient(Kind.LIST, list_policy="members", list_address="staff@example.com"),
        ),
        ("nobody+x@example.com", Recipient(Kind.NONE)),
        ("+alice@example.com", Recipient(Kind.NONE)),  # nothing left before it
        ("alice-news@example.com", Recipient(Kind.NONE)),  # not a delimiter here
    ],
)
def test_recipient_extension(plus: SqliteDirectory, address: str, expected: Recipient) -> None:
    assert plus.recipient(address) == expected


def test_extensions_off_by_default_in_the_class(directory: SqliteDirectory) -> None:
    """The class knows no delimiter unless given one (the config's default gives "+")."""
    assert directory.recipient("alice+news@example.com") == Recipient(Kind.NONE)


def test_an_address_with_the_delimiter_listed_wins(tmp_path: Path, db_path: Path) -> None:
    source = write(
        tmp_path / "d.toml",
        '[[user]]\naddress = "a@example.com"\n\n'
        '[[user]]\naddress = "a+b@example.com"\nstate = "locked"\n',
    )
    import_file(db_path, source)
    directory = SqliteDirectory(db_path, timeout=0.5, recipient_delimiter="+")
    assert directory.recipient("a+b@example.com") == Recipient(Kind.USER, state="locked")
    assert directory.recipient("a+c@example.com") == Recipient(Kind.USER)


def test_send_as_own_address_with_extension(plus: SqliteDirectory) -> None:
    alice = plus.login("alice")
    assert alice is not None
    assert plus.may_send_as(alice, "alice+news@example.com")
    assert plus.may_send_as(alice, "sales+x@example.com")  # a send-as right's extension
    assert not plus.may_send_as(alice, "bob+alice@example.com")
    assert not plus.may_send_as(alice, "alice@example.com+x")  # no local part left


def test_list_extension_keeps_the_list_policy(plus: SqliteDirectory) -> None:
    """staff+x@ is delivered to staff@'s members: its policy applies, or any stranger
    could post to a members-only list by adding an extension."""
    assert not plus.may_post("staff+x@example.com", "alice@example.com")
    assert plus.may_post("staff+x@example.com", "bob@example.com")
    # A member posting from an address with an extension is that member.
    assert plus.may_post("staff@example.com", "bob+lists@example.com")
    assert not plus.may_post("announce@example.com", "bob+x@example.com")
    assert plus.may_post("announce@example.com", "alice+x@example.com")


@pytest.mark.parametrize(
    ("key", "delimiters", "expected"),
    [
        ("alice+news@example.com", "+", "alice@example.com"),
        ("alice-news+x@example.com", "+-", "alice@example.com"),  # the first of them
        ("alice+news@example.com", "", None),
        ("alice@example.com", "+", None),
        ("+news@example.com", "+", None),
        ("postmaster+x@example.com", "+", "postmaster@example.com"),
        ("postmaster@example.com", "+", None),
        ("mailer-daemon@example.com", "-", None),  # never split
        ("owner-staff@example.com", "-", None),  # list conventions older than extensions
        ("staff-request@example.com", "-", None),
        ("owner-staff@example.com", "+", None),
        ("staff-x@example.com", "-", "staff@example.com"),
        ("alice+", "+", "alice"),
    ],
)
def test_strip_extension(key: str, delimiters: str, expected: str | None) -> None:
    assert strip_extension(key, delimiters) == expected


def test_an_address_of_its_own_is_not_another_login_extension(
    tmp_path: Path, db_path: Path
) -> None:
    """Postfix tries the whole address first: john-smith@ is not john@'s to send as
    or to post as when john-smith@ is a mailbox of its own (found by review)."""
    source = write(
        tmp_path / "d.toml",
        '[[user]]\naddress = "john@example.com"\n\n'
        '[[user]]\naddress = "john-smith@example.com"\n\n'
        '[[user]]\naddress = "team@example.com"\n\n'
        '[[user]]\naddress = "team+ops@example.com"\n\n'
        '[[alias]]\naddress = "john-sales@example.com"\ntarget = "john-smith@example.com"\n\n'
        '[[list]]\naddress = "club@example.com"\npolicy = "members"\n'
        'members = ["john@example.com"]\n',
    )
    import_file(db_path, source)
    directory = SqliteDirectory(db_path, timeout=0.5, recipient_delimiter="+-")
    john, team = directory.login("john@example.com"), directory.login("team@example.com")
    assert john is not None
    assert team is not None
    assert not directory.may_send_as(john, "john-smith@example.com")
    assert not directory.may_send_as(john, "john-sales@example.com")
    assert not directory.may_send_as(team, "team+ops@example.com")
    assert directory.may_send_as(john, "john-news@example.com")  # not a mailbox here
    assert not directory.may_post("club@example.com", "john-smith@example.com")
    assert directory.may_post("club@example.com", "john+lists@example.com")


def test_an_alias_of_a_list_names_the_list(tmp_path: Path, db_path: Path) -> None:
    """recipient() says which list an alias (or an extension) leads to, so the check
    asks may_post about that list: all@ -> staff@ must not open a members-only list."""
    source = write(
        tmp_path / "d.toml",
        '[[list]]\naddress = "staff@example.com"\npolicy = "members"\n'
        'members = ["bob@example.com"]\n\n'
        '[[alias]]\naddress = "all@example.com"\ntarget = "staff@example.com"\n',
    )
    import_file(db_path, source)
    directory = SqliteDirectory(db_path, timeout=0.5, recipient_delimiter="+")
    for address in ("all@example.com", "all+x@example.com", "staff+x@example.com"):
        found = directory.recipient(address)
        assert found == Recipient(
            Kind.LIST, list_policy="members", list_address="staff@example.com"
        ), address


def test_a_fan_out_alias_names_every_restricted_list_it_reaches(
    tmp_path: Path, db_path: Path
) -> None:
    """all@ -> {staff@ (members), boss@} was a plain alias, so a stranger's mail went to
    the list; so did ext@ -> staff+x@ (second review)."""
    source = write(
        tmp_path / "d.toml",
        '[[user]]\naddress = "boss@example.com"\n\n'
        '[[list]]\naddress = "staff@example.com"\npolicy = "members"\n'
        'members = ["bob@example.com"]\n\n'
        '[[list]]\naddress = "board@example.com"\npolicy = "posters"\n\n'
        '[[list]]\naddress = "open@example.com"\n\n'
        '[[alias]]\naddress = "all@example.com"\ntarget = "staff@example.com"\n\n'
        '[[alias]]\naddress = "all@example.com"\ntarget = "boss@example.com"\n\n'
        '[[alias]]\naddress = "all@example.com"\ntarget = "open@example.com"\n\n'
        '[[alias]]\naddress = "deep@example.com"\ntarget = "all@example.com"\n\n'
        '[[alias]]\naddress = "deep@example.com"\ntarget = "mid@example.com"\n\n'
        '[[alias]]\naddress = "mid@example.com"\ntarget = "board+x@example.com"\n\n'
        '[[alias]]\naddress = "mid@example.com"\ntarget = "all@example.com"\n\n'
        '[[alias]]\naddress = "ext@example.com"\ntarget = "staff+x@example.com"\n',
    )
    import_file(db_path, source)
    directory = SqliteDirectory(db_path, timeout=0.5, recipient_delimiter="+")
    staff = ("staff@example.com", "members")
    assert directory.recipient("all@example.com") == Recipient(Kind.ALIAS, lists_reached=(staff,))
    assert directory.recipient("all+x@example.com").lists_reached == (staff,)
    # Nested fan-outs reaching all@ twice, and a target with an extension.
    assert directory.recipient("deep@example.com").lists_reached == (
        ("board@example.com", "posters"),
        staff,
    )
    assert directory.recipient("ext@example.com") == Recipient(
        Kind.LIST, list_policy="members", list_address="staff@example.com"
    )


def test_quoted_local_part_is_split_unquoted() -> None:
    """Postfix splits "spammer+a b" as spammer + "a b" (found by review)."""
    assert strip_extension('"spammer+a b"@example.org', "+") == "spammer@example.org"
    assert strip_extension('"a b+c"@example.org', "+") == '"a b"@example.org'
    assert strip_extension('"+x"@example.org', "+") is None
    assert strip_extension("double-bounce@example.org", "-") is None


def test_no_directory_gives_a_bare_login_the_default_login_domain() -> None:
    """Review rev123 F2: with backend = "none" a login without "@" (Dovecot's usual)
    could send as nobody: every such user got 554 mail address invalid."""
    nobody = NoDirectory("+", login_domain="example.com")
    alice = nobody.login("alice")
    assert alice == Login("alice", "alice@example.com", "active")
    assert nobody.may_send_as(alice, "alice@example.com")
    assert nobody.may_send_as(alice, "Alice+lists@Example.com")
    assert not nobody.may_send_as(alice, "bob@example.com")
    # Not a local part: as nobody still.
    odd = nobody.login("al ice")
    assert odd is not None
    assert odd.address == ""


def test_no_directory_sends_as_itself_with_an_extension() -> None:
    nobody = NoDirectory("+")
    me = nobody.login("me@example.com")
    assert me is not None
    assert nobody.may_send_as(me, "me+lists@example.com")
    assert not nobody.may_send_as(me, "you+me@example.com")
    assert not NoDirectory().may_send_as(me, "me+lists@example.com")


# --- the file replaced by rename (rsync, config management), or removed ---------------


def alice_file(tmp_path: Path, name: str, state: str) -> Path:
    source = write(
        tmp_path / f"{name}.toml",
        f'[[user]]\naddress = "alice@example.com"\nlogin = "alice"\nstate = "{state}"\n',
    )
    path = tmp_path / "staging" / f"{name}.sqlite"
    import_file(path, source)
    return path


def alice_active(
    tmp_path: Path, db_path: Path, cache_ttl: float
) -> tuple[FakeClock, SqliteDirectory]:
    """The directory file with alice active, read through a clock the test moves."""
    db_path.parent.mkdir(parents=True)
    shutil.copyfile(alice_file(tmp_path, "active", "active"), db_path)
    clock = FakeClock()
    return clock, SqliteDirectory(db_path, timeout=0.1, cache_ttl=cache_ttl, clock=clock)


def test_directory_replaced_by_rename_is_seen_after_cache_ttl(
    tmp_path: Path, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, directory = alice_active(tmp_path, db_path, cache_ttl=1.0)
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
    clock, directory = alice_active(tmp_path, db_path, cache_ttl=0)
    assert directory.recipient("alice@example.com") == Recipient(Kind.USER)
    replace_by_rename(alice_file(tmp_path, "locked", "locked"), db_path)
    clock.advance(MIN_CHECK_INTERVAL)
    assert directory.recipient("alice@example.com") == Recipient(Kind.USER, state="locked")


def test_removed_directory_is_an_error_with_a_log_line(
    tmp_path: Path, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, directory = alice_active(tmp_path, db_path, cache_ttl=1.0)
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


# --- internationalized domains: U-labels and A-labels are one domain --------------------

IDN_TOML = """\
[[user]]
address = "Jürgen@Bücher.example"
login = "juergen"
send_as = ["@straße.de", "verkauf@xn--bcher-kva.example"]

[[alias]]
address = "info@xn--bcher-kva.example"
target = "jürgen@bücher.example"

[[list]]
address = "team@bücher.example"
policy = "members"
members = ["ju\u0308rgen@xn--bcher-kva.example"]
"""


def test_idn_import_stores_canonical(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "idn.toml", IDN_TOML))
    assert table_rows(db_path, "users") == [("jürgen@xn--bcher-kva.example", "juergen", "active")]
    assert table_rows(db_path, "aliases") == [
        ("info@xn--bcher-kva.example", "jürgen@xn--bcher-kva.example")
    ]
    assert table_rows(db_path, "send_as") == [
        ("juergen", "@xn--strae-oqa.de"),
        ("juergen", "verkauf@xn--bcher-kva.example"),
    ]
    assert table_rows(db_path, "list_members") == [
        ("team@xn--bcher-kva.example", "jürgen@xn--bcher-kva.example", "member")
    ]


def _idn_answers(directory: SqliteDirectory) -> None:
    for spelling in ("jürgen@bücher.example", "Ju\u0308rgen@XN--BCHER-KVA.example"):
        assert directory.recipient(spelling) == Recipient(Kind.USER), spelling
    for spelling in ("info@bücher.example", "info@xn--bcher-kva.example"):
        assert directory.recipient(spelling) == Recipient(Kind.ALIAS), spelling
    assert directory.recipient("team@xn--bcher-kva.example") == Recipient(
        Kind.LIST, list_policy="members", list_address="team@xn--bcher-kva.example"
    )
    assert directory.recipient("jurgen@bücher.example") == Recipient(Kind.NONE)
    login = directory.login("juergen")
    assert login is not None
    for sender in (
        "jürgen@xn--bcher-kva.example",
        "x@straße.de",
        "x@xn--strae-oqa.de",
        "verkauf@bücher.example",
        "info@bücher.example",
        "info@xn--bcher-kva.example",
    ):
        assert directory.may_send_as(login, sender), sender
    assert not directory.may_send_as(login, "x@strasse.de")
    for poster in ("jürgen@bücher.example", "jürgen@xn--bcher-kva.example"):
        assert directory.may_post("team@bücher.example", poster), poster
        assert directory.may_post("team@xn--bcher-kva.example", poster), poster
    assert not directory.may_post("team@bücher.example", "x@bücher.example")


def test_idn_addresses_either_spelling(tmp_path: Path, db_path: Path) -> None:
    import_file(db_path, write(tmp_path / "idn.toml", IDN_TOML))
    _idn_answers(SqliteDirectory(db_path, timeout=0.5))


def test_idn_addresses_imported_by_an_older_version(db_path: Path) -> None:
    """Before the canonical domain, import stored U-labels as written (lower-cased):
    such a directory answers as a new import does, until it is imported again."""
    create_database(db_path)
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("INSERT INTO users VALUES ('jürgen@bücher.example', 'juergen', 'active')")
        db.execute("INSERT INTO aliases VALUES ('info@bücher.example', 'jürgen@bücher.example')")
        db.execute("INSERT INTO send_as VALUES ('juergen', '@straße.de')")
        db.execute("INSERT INTO send_as VALUES ('juergen', 'verkauf@bücher.example')")
        db.execute("INSERT INTO lists VALUES ('team@bücher.example', 'members')")
        db.execute(
            "INSERT INTO list_members VALUES"
            " ('team@bücher.example', 'jürgen@bücher.example', 'member')"
        )
    directory = SqliteDirectory(db_path, timeout=0.5)
    _idn_answers(directory)
    login = directory.login("jürgen@xn--bcher-kva.example")
    assert login is not None
    assert login.login == "juergen"


def test_an_older_versions_idn_entries_given_again_are_replaced(
    tmp_path: Path, db_path: Path
) -> None:
    """Review rev127 F2: a user and a list stored in U-labels by an older version, given
    again: the new rows went in beside the old ones (the user locked by the import
    stayed active, the list made members-only stayed open), and the checks, which
    took the old rows as gone, let another user take the old login in another case."""
    create_database(db_path)
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("INSERT INTO users VALUES ('u@bücher.example', 'Boss', 'active')")
        db.execute("INSERT INTO send_as VALUES ('Boss', 'ceo@example.com')")
        db.execute("INSERT INTO lists VALUES ('staff@bücher.example', 'open')")
    again = """\
[[user]]
address = "u@bücher.example"
login = "u-new"
state = "locked"
[[list]]
address = "staff@bücher.example"
policy = "members"
members = ["u@bücher.example"]
"""
    import_file(db_path, write(tmp_path / "again.toml", again))
    assert table_rows(db_path, "users") == [("u@xn--bcher-kva.example", "u-new", "locked")]
    assert table_rows(db_path, "lists") == [("staff@xn--bcher-kva.example", "members")]
    assert table_rows(db_path, "send_as") == []
    directory = SqliteDirectory(db_path, timeout=0.5)
    assert directory.recipient("u@xn--bcher-kva.example").state == "locked"
    # Its old login, in another case, for someone else: no two logins differing in
    # case only are left (the old row kept "Boss" beside the new "boss").
    create_database(db_path)
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("INSERT INTO users VALUES ('v@bücher.example', 'Chief', 'active')")
    handover = """\
[[user]]
address = "v@bücher.example"
login = "v-new"
[[user]]
address = "mallory@example.com"
login = "chief"
"""
    import_file(db_path, write(tmp_path / "handover.toml", handover))
    logins = sorted(login for _address, login, _state in table_rows(db_path, "users"))
    assert logins == ["chief", "u-new", "v-new"]


def test_the_journal_of_an_interrupted_import_is_rolled_back(
    directory: SqliteDirectory, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev50: an import killed midway left a hot journal, which the lookups'
    read-only connections cannot roll back: every local recipient was deferred
    ("attempt to write a readonly database") until someone ran a CLI command."""
    before = directory.recipient("alice@example.com")
    assert before == Recipient(Kind.USER)
    directory.close()
    pid = os.fork()
    if pid == 0:  # an import killed after its writes reached the file
        db = sqlite3.connect(db_path)
        db.execute("PRAGMA cache_size=5")
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM users")
        for i in range(20_000):
            db.execute(
                "INSERT INTO users (address, login, state) VALUES (?, ?, 'active')",
                (f"u{i}@example.com", f"u{i}"),
            )
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert db_path.with_name(db_path.name + "-journal").exists()
    fresh = SqliteDirectory(db_path, timeout=0.5)
    with caplog.at_level(logging.WARNING, "smtpguard"):
        assert fresh.recipient("alice@example.com") == before
    assert "rolled back the journal of an interrupted write" in caplog.text
    assert fresh.recipient("u5@example.com") == Recipient(Kind.NONE)


def test_export_names_the_cells_a_spreadsheet_would_run(tmp_path: Path) -> None:
    """Review rev179 F7: an imported login "=HYPERLINK(...)" was exported as it is, for
    a spreadsheet to run. It stays as it is (the export is for import) and is named."""
    source = tmp_path / "in.csv"
    source.write_text(
        "type,address,login,state,target,policy,list\n"
        'user,dave@example.com,"=HYPERLINK(""http://evil.example/"",""x"")",,,,\n'
        "user,alice@example.com,,,,,\n"
    )
    db = tmp_path / "d.sqlite"
    import_file(db, source)
    text, left_out = export_csv(read_contents(db))
    assert left_out == []
    (found,) = formula_cells(text)
    assert found.startswith("line 3: '=HYPERLINK(")  # alice's row comes first
    again = tmp_path / "again.csv"
    again.write_text(text)
    import_file(tmp_path / "e.sqlite", again)
    assert read_contents(tmp_path / "e.sqlite") == read_contents(db)
