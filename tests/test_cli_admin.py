"""The admin commands, ``blacklist`` and ``directory``, through ``python -m smtpguard``.

They refuse what could never work (exit 2, nothing changed) and show what is stored
without sqlite3.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from smtpguard.app import load
from support.service import ROOT, Site, make_site, smtpguard

SAMPLE_DIRECTORY = ROOT / "conf" / "directory.example.toml"
TABLES = ("users", "aliases", "send_as", "lists", "list_members")


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """The test site: local domain example.com, its directory imported."""
    return make_site(tmp_path / "site")


@pytest.fixture(scope="module")
def unchanged_site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The same, shared by the tests that only read it."""
    return make_site(tmp_path_factory.mktemp("site"))


def run(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return smtpguard(site, *args, check=False)


def refused(site: Site, *args: str) -> list[str]:
    """The lines a command that must be refused writes: it exits 2 with no output."""
    result = run(site, *args)
    assert result.returncode == 2, result
    assert result.stdout == ""
    return result.stderr.splitlines()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def stored(path: Path) -> dict[str, list[tuple[str, ...]]]:
    with closing(sqlite3.connect(path)) as db:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in TABLES}


# --- directory import -------------------------------------------------------------------


def test_import_summary_counts_aliases_targets_members_and_posters(
    site: Site, tmp_path: Path
) -> None:
    """Review rev159 F4: an alias of three targets was "3 aliases", posters were counted
    as members, and "1 lists"."""
    source = write(
        tmp_path / "one.toml",
        '[[user]]\naddress = "alice@example.com"\n\n'
        '[[alias]]\naddress = "sales@example.com"\ntarget = "alice@example.com"\n\n'
        '[[alias]]\naddress = "sales@example.com"\ntarget = "ext@other.example"\n\n'
        '[[list]]\naddress = "crew@example.com"\npolicy = "members"\n'
        'members = ["alice@example.com"]\nposters = ["boss@other.example", "x@other.example"]\n',
    )
    result = run(site, "directory", "import", str(source), "--replace")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"{site.directory}: replaced with 1 user, 1 alias (2 targets), 0 send-as rights,"
        " 1 list, 1 member, 2 posters\n"
    )


def test_a_merged_import_says_what_the_directory_holds_now(site: Site, tmp_path: Path) -> None:
    """Review rev215 F5: a merge of one user printed "1 user, 0 aliases ..." while the
    directory held five, which read as if the others were gone."""
    before = run(site, "directory", "list")
    users = sum(1 for line in before.stdout.splitlines() if line.split()[1:2] == ["user"])
    source = write(tmp_path / "one.csv", "type,address\nuser,newcomer@example.com\n")
    result = run(site, "directory", "import", str(source))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{site.directory}: imported 1 user, 0 aliases")
    assert f"; now {users + 1} users, " in result.stdout, (before.stdout, result.stdout)


def test_import_typo_exits_2_and_changes_nothing(site: Site, tmp_path: Path) -> None:
    before = stored(site.directory)
    source = write(
        tmp_path / "new.toml",
        '[[user]]\naddress = "new@example.com"\nstat = "locked"\n\n'
        '[[user]]\naddress = "other@example.com"\nstate = "lockd"\n',
    )
    assert refused(site, "directory", "import", str(source), "--replace") == [
        f"smtpguard: {source}: user[0]: unknown key 'stat' (address, login, state, send_as)",
        f"smtpguard: {source}: user[1].state: unknown state 'lockd'"
        " (active, locked, suspended, moving, overquota)",
        f"smtpguard: {source}: nothing imported",
    ]
    assert stored(site.directory) == before


def test_import_unknown_csv_column(site: Site, tmp_path: Path) -> None:
    source = write(tmp_path / "new.csv", "type,address,sate\nuser,new@example.com,locked\n")
    assert refused(site, "directory", "import", str(source))[0] == (
        f"smtpguard: {source}:1: unknown column 'sate'"
        " (type, address, login, state, target, policy, list)"
    )
    assert "new@example.com" not in run(site, "directory", "list").stdout


def test_import_refuses_aliases_to_nothing_and_loops(site: Site, tmp_path: Path) -> None:
    source = write(
        tmp_path / "aliases.toml",
        '[[alias]]\naddress = "me@example.com"\ntarget = "me@example.com"\n\n'
        '[[alias]]\naddress = "typo@example.com"\ntarget = "alcie@example.com"\n\n'
        '[[alias]]\naddress = "fwd@example.com"\ntarget = "someone@elsewhere.example"\n\n'
        '[[alias]]\naddress = "bad@example.com"\ntarget = "not an address"\n',
    )
    # Every problem in one run, the checks across rows too although a row was refused
    # (README). example.com is the site's local domain: alcie@ is nothing; elsewhere is
    # a forward.
    assert refused(site, "directory", "import", str(source)) == [
        f"smtpguard: {source}: alias[3].target: invalid address 'not an address' (missing domain)",
        f"smtpguard: {source}: alias[0].target: alias loop me@example.com -> me@example.com",
        f"smtpguard: {source}: alias[1].target: alcie@example.com is in a local domain but is"
        " no user, alias or list",
        f"smtpguard: {source}: nothing imported",
    ]


def test_import_missing_file_exits_2(site: Site, tmp_path: Path) -> None:
    result = run(site, "directory", "import", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert str(tmp_path / "absent.toml") in result.stderr


def test_import_if_new_leaves_an_existing_directory_alone(site: Site, tmp_path: Path) -> None:
    """Review rev140 F7: start.sh imported the example users whenever a fixed path was
    missing, into a directory the config had moved; --if-new asks the config."""
    before = stored(site.directory)
    result = run(site, "directory", "import", "--if-new", str(SAMPLE_DIRECTORY))
    assert (result.returncode, result.stdout) == (0, f"{site.directory} exists: nothing imported\n")
    assert stored(site.directory) == before
    moved = tmp_path / "elsewhere" / "users.sqlite"
    moved.parent.mkdir()
    fresh = make_site(tmp_path / "fresh", {"directory": {"path": str(moved)}}, directory=False)
    assert run(fresh, "directory", "import", "--if-new", str(SAMPLE_DIRECTORY)).returncode == 0
    assert len(stored(moved)["users"]) == 2  # the example's alice and postmaster
    none = make_site(tmp_path / "none", {"directory": {"backend": "none"}}, directory=False)
    result = run(none, "directory", "import", "--if-new", str(SAMPLE_DIRECTORY))
    assert result.returncode == 0, result.stderr
    assert "nothing to import" in result.stdout


# --- directory export, list, show, remove ----------------------------------------------


@pytest.mark.parametrize("form", ["toml", "csv"])
def test_export_imports_back_to_the_same_directory(site: Site, tmp_path: Path, form: str) -> None:
    assert run(site, "directory", "import", str(SAMPLE_DIRECTORY)).returncode == 0
    exported = run(site, "directory", "export", "--format", form)
    assert exported.returncode == 0, exported.stderr
    copy = make_site(tmp_path / "copy", directory=False)
    # Something there first, which --replace must drop.
    assert run(copy, "directory", "import", str(SAMPLE_DIRECTORY)).returncode == 0
    source = write(tmp_path / f"export.{form}", exported.stdout)
    result = run(copy, "directory", "import", str(source), "--replace")
    assert result.returncode == 0, result.stderr
    assert stored(copy.directory) == stored(site.directory)
    assert len(stored(site.directory)["users"]) == 5  # the site's four and postmaster


def test_export_is_toml_by_default(unchanged_site: Site) -> None:
    assert run(unchanged_site, "directory", "export").stdout.startswith(
        '[[user]]\naddress = "alice@example.com"\nsend_as = ["sales@example.com"]\n'
    )


def test_export_leaves_out_what_no_import_takes_and_exits_1(site: Site) -> None:
    with closing(sqlite3.connect(site.directory)) as db, db:
        db.execute("INSERT INTO send_as VALUES ('ghost', 'sales@example.com')")
    result = run(site, "directory", "export")
    assert result.returncode == 1
    assert result.stdout.startswith("[[user]]\n")
    assert "ghost" not in result.stdout
    assert result.stderr == (
        "smtpguard: left out (no import would take it): send-as right sales@example.com"
        " of login 'ghost': no user has that login\n"
    )


def test_directory_list(unchanged_site: Site) -> None:
    result = run(unchanged_site, "directory", "list")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "alice@example.com\tuser\tactive",
        "bob@example.com\tuser\tlocked",
        "carol@example.com\tuser\tsuspended",
        "dave@example.com\tuser\tactive",
        "news@example.com\tlist\topen",
        "sales@example.com\talias\talice@example.com",
        "staff@example.com\tlist\tmembers",
    ]


def test_directory_show(unchanged_site: Site) -> None:
    user = run(unchanged_site, "directory", "show", "Alice@Example.com")
    assert user.returncode == 0
    assert user.stdout == (
        "alice@example.com: user\n"
        "  state     active\n"
        "  login     alice@example.com\n"
        "  send-as   sales@example.com\n"
        "  aliases   sales@example.com\n"
        "  lists     staff@example.com (member)\n"
    )
    assert run(unchanged_site, "directory", "show", "dave").stdout.startswith(
        "dave@example.com: user\n"
    )
    assert run(unchanged_site, "directory", "show", "sales@example.com").stdout == (
        "sales@example.com: alias\n  targets   alice@example.com (user, active)\n"
    )
    assert run(unchanged_site, "directory", "show", "staff@example.com").stdout == (
        "staff@example.com: list\n"
        "  policy    members\n"
        "  members   alice@example.com\n"
        "  posters   -\n"
    )


def test_directory_show_unknown_exits_1(unchanged_site: Site) -> None:
    result = run(unchanged_site, "directory", "show", "nobody@example.com")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"smtpguard: nobody@example.com: not in the directory {unchanged_site.directory}\n"
    )


def test_directory_remove(site: Site) -> None:
    assert refused(site, "directory", "remove", "alice@example.com") == [
        "smtpguard: alice@example.com: the alias sales@example.com points at it;"
        " remove it or change its target first"
    ]
    removed = run(site, "directory", "remove", "sales@example.com")
    assert removed.returncode == 0
    assert removed.stdout == f"{site.directory}: removed alias sales@example.com\n"
    removed = run(site, "directory", "remove", "alice@example.com")
    assert removed.stdout == (
        f"{site.directory}: removed user alice@example.com with 1 send-as right,"
        " 1 list membership\n"
    )
    assert run(site, "directory", "show", "alice@example.com").returncode == 1
    again = run(site, "directory", "remove", "alice@example.com")
    assert again.returncode == 1
    assert "not in the directory" in again.stderr


def test_directory_read_without_a_file_exits_2(tmp_path: Path) -> None:
    site = make_site(tmp_path, directory=False)
    for command in (["list"], ["show", "a@example.com"], ["export"]):
        result = run(site, "directory", *command)
        assert result.returncode == 2, command
        assert str(site.directory) in result.stderr
    assert not site.directory.exists()


def test_directory_commands_refuse_when_there_is_no_directory(tmp_path: Path) -> None:
    # Imported to the default path, the entries would be read by nothing.
    site = make_site(tmp_path, {"directory": {"backend": "none"}}, directory=False)
    source = tmp_path / "users.toml"
    source.write_text('[[user]]\naddress = "a@example.com"\n', encoding="utf-8")
    for command in (["import", str(source)], ["list"], ["remove", "a@example.com"]):
        result = run(site, "directory", *command)
        assert result.returncode == 2, command
        assert 'directory.backend is "none"' in result.stderr
    assert not site.directory.exists()


# --- blacklist ------------------------------------------------------------------------


def listed(site: Site) -> list[dict[str, object]]:
    result = run(site, "blacklist", "list", "--json")
    assert result.returncode == 0, result.stderr
    entries: list[dict[str, object]] = json.loads(result.stdout)
    return entries


def test_blacklist_add_refuses_what_cannot_match(site: Site) -> None:
    assert run(site, "blacklist", "add", "ok@sender.example").returncode == 0
    added = ("evil.example", "203.0.113.5", "/regex/", "a@b.example")
    assert refused(site, "blacklist", "add", *added) == [
        "smtpguard: blacklist add: evil.example: a bare domain matches nothing: use"
        " @evil.example (the domain) or .evil.example (it and its subdomains)",
        "smtpguard: blacklist add: 203.0.113.5: the blacklist holds senders, not client IPs",
        "smtpguard: blacklist add: /regex/: patterns go in [policy] sender_deny, not in the"
        " blacklist",
        "smtpguard: blacklist add: nothing added",
    ]
    # Not even the valid a@b.example.
    assert [e["address"] for e in listed(site)] == ["ok@sender.example"]


def test_blacklist_add_and_list_json(site: Site) -> None:
    result = run(
        site, "blacklist", "add", "Pest@Sender.Example", "@spam.example", ".evil.example",
        "--reason", "complaint",
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "add pest@sender.example: done",
        "add @spam.example: done",
        "add .evil.example: done",
    ]
    assert run(site, "blacklist", "add", "@spam.example").stdout == (
        "add @spam.example: already listed\n"
    )
    entries = listed(site)
    assert [(e["address"], e["matches"], e["reason"]) for e in entries] == [
        (".evil.example", "subdomains", "complaint"),
        ("@spam.example", "domain", "complaint"),
        ("pest@sender.example", "address", "complaint"),
    ]
    assert all(isinstance(e["added_at"], float) for e in entries)


def test_blacklist_list_json_empty(site: Site) -> None:
    run(site, "blacklist", "add", "a@b.example")
    run(site, "blacklist", "remove", "a@b.example")
    assert run(site, "blacklist", "list", "--json").stdout == "[]\n"


def test_blacklist_mark_is_nothing_to_do_for_the_embedded_file(tmp_path: Path) -> None:
    """Not an error, and no state file looked for (it may not exist yet)."""
    site = make_site(tmp_path, {"state": {"path": str(tmp_path / "none" / "state.sqlite")}})
    done = run(site, "blacklist", "mark")
    assert (done.returncode, done.stdout) == (
        0,
        "the embedded blacklist has no marker: nothing to do\n",
    )
    assert not (tmp_path / "none").exists()


def test_subdomain_entry_refuses_mail_in_a_session(site: Site) -> None:
    assert run(site, "blacklist", "add", ".evil.example").returncode == 0

    def simulate(sender: str) -> subprocess.CompletedProcess[str]:
        return run(
            site, "simulate", "--client", "198.51.100.7", "--helo", "mail.sender.example",
            "--from", sender, "--to", "news@example.com",
        )  # fmt: skip

    refused = simulate("a@mx.evil.example")
    assert refused.returncode == 1
    assert "blacklist: hit black_mail_address (listed as .evil.example)" in refused.stdout
    assert simulate("a@notevil.example").returncode == 0


def test_blacklist_entry_stored_before_the_check(site: Site) -> None:
    run(site, "blacklist", "add", "a@b.example")  # creates the state file
    run(site, "blacklist", "remove", "a@b.example")
    with closing(sqlite3.connect(site.state)) as db, db:
        db.execute("INSERT INTO blacklist VALUES ('evil.example', 0, 'old')")
    result = run(site, "blacklist", "list")
    assert result.stdout.startswith("evil.example\t")
    assert result.stderr == "smtpguard: evil.example: matches no sender; remove it\n"
    assert listed(site)[0]["matches"] == "nothing"
    removed = run(site, "blacklist", "remove", "evil.example", "never@example.org")
    assert removed.stdout == "remove evil.example: done\nremove never@example.org: not listed\n"
    assert listed(site) == []


@pytest.mark.parametrize(
    ("reason", "shown"),
    [("x\ny", "\\n"), ("a\tb", "\\t"), ("\x1b[31m", "\\x1b"), ("one\u2028two", "\\u2028")],
)
def test_blacklist_reason_with_a_control_character_is_refused(
    site: Site, reason: str, shown: str
) -> None:
    assert refused(site, "blacklist", "add", "a@b.example", "--reason", reason) == [
        f"smtpguard: blacklist add: --reason: control character {shown} (blacklist list shows"
        " one entry per line, its fields separated by tabs)",
        "smtpguard: blacklist add: nothing added",
    ]
    assert listed(site) == []


def test_blacklist_reason_not_utf8_is_refused(site: Site) -> None:
    command = [sys.executable.encode(), b"-m", b"smtpguard", b"-c", bytes(site.config)]
    result = subprocess.run(
        [*command, b"blacklist", b"add", b"a@b.example", b"--reason", b"caf\xe9"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "smtpguard: blacklist add: --reason: not UTF-8"
    assert listed(site) == []


def test_blacklist_list_escapes_control_characters_stored_before(site: Site) -> None:
    run(site, "blacklist", "add", "a@b.example", "--reason", "ok · 投诉")
    with closing(sqlite3.connect(site.state)) as db, db:
        db.execute("INSERT INTO blacklist VALUES ('c@d.example', 0, 'one\ntwo\tthree')")
        db.execute("INSERT INTO blacklist VALUES ('e\nf.example', 0, '')")
    result = run(site, "blacklist", "list")
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(row[0], row[2]) for row in rows] == [
        ("a@b.example", "ok · 投诉"),
        ("c@d.example", "one\\ntwo\\tthree"),
        ("e\\nf.example", ""),
    ]
    assert result.stderr == "smtpguard: e\\nf.example: matches no sender; remove it\n"
    # JSON has its own escapes: the text as stored.
    assert [e["reason"] for e in listed(site)] == ["ok · 投诉", "one\ntwo\tthree", ""]


def test_blacklist_usage_errors_exit_2(site: Site) -> None:
    assert run(site, "blacklist", "add").returncode == 2  # no entry
    assert run(site, "blacklist", "list", "--reason", "x").returncode == 2
    assert run(site, "blacklist").returncode == 2


@pytest.mark.parametrize(
    ("command", "output"),
    [
        (["list"], ""),
        (["list", "--json"], "[]\n"),
        (["remove", "x@y.example"], "remove x@y.example: not listed\n"),
    ],
)
def test_looking_at_a_deleted_blacklist_does_not_make_it_empty(
    site: Site, command: list[str], output: str
) -> None:
    """Review rev83 F1: with the state file deleted the service defers every message
    (a backend error), but `blacklist list` created it again, empty, and every listed
    sender was let through. list and remove leave it missing and say so; only
    `blacklist add` creates it."""
    assert run(site, "blacklist", "add", "pest@sender.example").returncode == 0
    state = load(site.config).state.path
    state.unlink()
    result = run(site, "blacklist", *command)
    assert result.returncode == 0
    assert result.stdout == output
    assert result.stderr == (
        f"smtpguard: warning: {state} does not exist: a running service using it defers"
        " every message until `smtpguard blacklist add` creates it (a start of the service"
        " creates it empty)\n"
    )
    assert not state.exists()
    assert run(site, "blacklist", "add", "pest@sender.example").returncode == 0
    assert run(site, "blacklist", "list").stderr == ""
