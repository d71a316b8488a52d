"""check-config (and run) name every problem as ``FILE: key: problem``: the SQLite files
as the service user sees them, and each configured network backend, asked once."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import socket
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from smtpguard.app import counter_path, load
from smtpguard.config import Config, load_config
from smtpguard.probes import root_notes, socket_problems, unused_notes
from support.daemons import REDIS_COUNTING, Rspamd, free_port, start_clamd, start_redis
from support.files import STDLIB, STDLIB_PROBLEM, others_may_read, without_stdlib_problem
from support.polling import wait_until
from support.service import ROOT, Site, make_site, merge, run_cli, running, smtpguard
from support.unbound import DnsServer, silent_nameserver

pytestmark = pytest.mark.integration


def problems(result: Any) -> list[str]:
    return without_stdlib_problem([line for line in result.stderr.splitlines() if line])


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory user nobody may traverse (pytest's own tmp dirs are 0700), with a
    ``state`` directory nobody owns, as the service user's state directory would be."""
    root = Path(tempfile.mkdtemp(prefix="smtpguard-probe-"))
    root.chmod(0o755)
    (root / "state").mkdir()
    shutil.chown(root / "state", "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def nobody_site(root: Path, extra: dict[str, Any] | None = None) -> Site:
    base = {
        "milter": {"user": "nobody"},
        "state": {"path": str(root / "state" / "state.sqlite")},
    }
    return make_site(root, merge(base, extra or {}))


# --- host ---------------------------------------------------------------------------


def test_listed_cpus_the_host_does_not_allow(tmp_path: Path) -> None:
    allowed = os.sched_getaffinity(0)
    absent = max(allowed) + 1
    site = make_site(tmp_path, {"milter": {"workers": 2, "cpu_affinity": [min(allowed), absent]}})
    result = smtpguard(site, "check-config", "--offline", check=False)
    assert result.returncode == 1
    have = ",".join(map(str, sorted(allowed)))
    assert problems(result) == [
        f"{site.config.resolve()}: milter.cpu_affinity: CPU {absent} not among the CPUs"
        f" this host allows ({have})"
    ]
    fine = make_site(tmp_path / "fine", {"milter": {"cpu_affinity": sorted(allowed)}})
    assert smtpguard(fine, "check-config", "--offline", check=False).returncode == 0


# --- socket -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("milter", "found"),
    [
        ({"socket_mode": "0660"}, []),
        ({"socket_mode": "0770"}, []),
        ({"socket_mode": "0600"}, ["0600 gives the socket's group no write access"]),
        ({"socket_mode": "0640"}, ["0640 gives the socket's group no write access"]),
        ({"socket_mode": "0777"}, ["0777 is world-writable"]),
        ({"socket_mode": "0602"}, ["0602 gives the socket's", "0602 is world-writable"]),
        # The MTA's user as the owner connects without the group.
        ({"socket_mode": "0600", "socket_owner": "nobody"}, []),
        ({"socket_mode": "0400", "socket_owner": "nobody"}, ["0400 gives the socket's"]),
        # An inet: socket has no mode.
        ({"socket_mode": "0777", "socket": "inet:8899"}, []),
    ],
)
def test_socket_modes_the_mta_cannot_use_or_anyone_can(
    tmp_path: Path, milter: dict[str, str], found: list[str]
) -> None:
    site = make_site(tmp_path, {"milter": milter})
    config = load(site.config)
    reported = socket_problems(config)
    assert [p.key for p in reported] == ["milter.socket_mode"] * len(found)
    assert all(p.file == str(config.file) for p in reported)
    assert all(p.message.startswith(f) for p, f in zip(reported, found, strict=True))


def socket_problems_as_nobody(config: Config) -> list[str]:
    """socket_problems in a child process running as user nobody."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            nobody = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            found = [p.message for p in socket_problems(config) if p.key == "milter.socket"]
            os.write(write, json.dumps(found).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == 0
    return list(json.loads(data))


def test_a_socket_directory_run_could_not_create_the_socket_in(open_dir: Path) -> None:
    """Found by review: check-config passed, and run then could not bind (the unit's
    ExecStartPre is check-config, and Restart= would loop)."""
    cases = {
        "writable": (open_dir / "state" / "s.sock", None),
        "root's": (open_dir / "s.sock", f"cannot create the socket in {open_dir} as nobody"),
        "missing": (
            open_dir / "new" / "s.sock",
            f"cannot create {open_dir / 'new'} as nobody: {open_dir}: no write permission",
        ),
        "missing, parent writable": (open_dir / "state" / "new" / "s.sock", None),
    }
    for name, (sock, expected) in cases.items():
        site = make_site(
            open_dir / f"site-{len(name)}-{name[:3]}", {"milter": {"socket": f"unix:{sock}"}}
        )
        found = socket_problems_as_nobody(load(site.config))
        if expected is None:
            assert found == [], name
        else:
            assert len(found) == 1, (name, found)
            assert found[0].startswith(expected), (name, found)
    # As root nothing of this is a problem; a file in the way is, for anyone.
    (open_dir / "file").write_text("")
    site = make_site(open_dir / "site-file", {"milter": {"socket": f"unix:{open_dir}/file/s.sock"}})
    assert [p.message for p in socket_problems(load(site.config)) if p.key == "milter.socket"] == [
        f"cannot create the socket's directory {open_dir}/file: {open_dir}/file is no directory"
    ]


def test_check_config_reports_the_socket_mode_and_run_does_not_refuse_it(tmp_path: Path) -> None:
    site = make_site(tmp_path, {"milter": {"socket_mode": "0600"}})
    result = smtpguard(site, "check-config", "--offline", check=False)
    assert result.returncode == 1
    assert problems(result) == [
        f"{site.config.resolve()}: milter.socket_mode: 0600 gives the socket's group no write"
        " access, so the MTA (a member of that group) cannot connect; use 0660, or make the"
        " MTA's user socket_owner"
    ]
    # Not a load error: the service starts with it, and says so in its log.
    with running(site) as service:
        assert stat.S_IMODE(site.socket.stat().st_mode) == 0o600
        assert "milter.socket_mode: 0600 gives the socket's group no write" in service.log()


def test_check_config_notes_a_state_file_the_start_would_create(tmp_path: Path) -> None:
    """Review rev83: with state.path missing (a first start, or a path mistyped after a
    move) check-config said only OK, and the start created an empty blacklist."""
    site = make_site(tmp_path)
    file = site.config.resolve()
    result = smtpguard(site, "check-config", "--offline", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{file}: OK (network backends not asked: --offline)",
        *map(str, root_notes(load_config(file))),
        f"{file}: state.path: note: {site.state} does not exist; the start creates it, an"
        " empty blacklist (right on a first start; otherwise check the path: the entries"
        " of the old file would not be there)",
    ]
    assert smtpguard(site, "blacklist", "add", "someone@sender.example").returncode == 0
    assert site.state.exists()
    again = smtpguard(site, "check-config", "--offline", check=False)
    assert "state.path" not in again.stdout
    assert again.stdout.startswith(f"{file}: OK (network backends not asked: --offline)\n")


# --- backends -----------------------------------------------------------------------


def test_unreachable_backends_are_all_listed(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    with silent_nameserver() as dns_port:
        site = make_site(
            tmp_path,
            {
                "virus": {"backend": "clamd", "clamd_socket": f"unix:{tmp_path}/clamd.ctl"},
                "antispam": {"engine": "rspamd", "engine_socket": f"inet:127.0.0.1:{closed}"},
                "state": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{closed}/0"},
                "dns": {"nameservers": ["127.0.0.1"], "port": dns_port, "timeout": 0.4},
            },
        )
        result = smtpguard(site, "check-config", check=False)
    assert result.returncode == 1
    file = site.config.resolve()
    lines = problems(result)
    assert lines[:2] == [
        f"{file}: virus.clamd_socket: cannot connect to unix:{tmp_path}/clamd.ctl:"
        " No such file or directory",
        f"{file}: antispam.engine_socket: cannot connect to inet:127.0.0.1:{closed}:"
        " Connection refused",
    ]
    assert lines[2].startswith(f"{file}: state.redis_url: Redis does not answer PING: ")
    assert f"127.0.0.1:{closed}" in lines[2]
    assert "Connection refused" in lines[2]
    assert lines[3].startswith(f"{file}: dns.nameservers: 127.0.0.1: no answer to . NS: ")
    assert len(lines) == 4
    assert "Traceback" not in result.stderr

    offline = smtpguard(site, "check-config", "--offline", check=False)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.splitlines() == [
        f"{file}: OK (network backends not asked: --offline)",
        *map(str, root_notes(load_config(file))),
    ]


def test_something_else_on_the_backend_ports(tmp_path: Path) -> None:
    """A port that accepts but is not the backend: named, not mistaken for it."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        virus = {"backend": "clamd", "clamd_socket": f"inet:127.0.0.1:{port}", "timeout": 1.0}
        site = make_site(tmp_path, {"virus": virus})  # 1 s: nothing will answer PING
        result = smtpguard(site, "check-config", check=False)
    assert result.returncode == 1
    assert problems(result) == [
        f"{site.config.resolve()}: virus.clamd_socket: inet:127.0.0.1:{port} does not answer"
        " PING with PONG: not clamd, or overloaded"
    ]


def test_a_clamd_that_answers_ping_but_cannot_scan(tmp_path: Path) -> None:
    """Review rev188 F3: check-config said OK for a clamd whose every scan failed (its
    TemporaryDirectory gone), and every message then got the scanner's failure."""
    scratch = tmp_path / "clamd-tmp"
    scratch.mkdir()
    clamd = start_clamd(tmp_path / "clamd", temporary=scratch)
    try:
        site = make_site(
            tmp_path / "site",
            {"virus": {"backend": "clamd", "clamd_socket": f"unix:{clamd.socket}"}},
        )
        assert smtpguard(site, "check-config", check=False).returncode == 0
        scratch.rmdir()
        result = smtpguard(site, "check-config", check=False)
    finally:
        clamd.stop()
    assert result.returncode == 1
    (problem,) = problems(result)
    assert f"virus.clamd_socket: unix:{clamd.socket} answers PING but fails a scan" in problem


def test_reachable_backends_pass(tmp_path: Path, unbound: DnsServer, rspamd: Rspamd) -> None:
    clamd = start_clamd(tmp_path / "clamd")
    redis = start_redis(tmp_path / "redis")
    try:
        site = make_site(
            tmp_path / "site",
            {
                "virus": {"backend": "clamd", "clamd_socket": f"unix:{clamd.socket}"},
                "antispam": {"engine": "rspamd", "engine_socket": str(rspamd.endpoint)},
                "state": {"backend": "redis", "redis_url": redis.url},
                "dns": {"nameservers": [unbound.host], "port": unbound.port},
            },
        )
        result = smtpguard(site, "check-config", check=False)
    finally:
        clamd.stop()
        redis.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{site.config.resolve()}: OK",
        *map(str, root_notes(load_config(site.config))),
    ]


def test_check_config_notes_a_zone_that_does_not_list_its_test_point(
    tmp_path: Path, unbound: DnsServer
) -> None:
    """Review rev224 M3: a zone name with a typo (rbl.tset for rbl.test) listed nobody,
    and check-config said OK. RFC 5782's test point 127.0.0.2 tells them apart."""
    site = make_site(
        tmp_path,
        {
            "dns": {"nameservers": [unbound.host], "port": unbound.port},
            "dnsbl": {"zones": [{"name": "rbl.test"}, {"name": "rbl.tset"}]},
        },
    )
    result = smtpguard(site, "check-config", check=False)
    assert result.returncode == 0, result.stderr
    file = site.config.resolve()
    zones = [line for line in result.stdout.splitlines() if "dnsbl.zones" in line]
    assert zones == [
        f"{file}: dnsbl.zones[1].name: note: rbl.tset does not list its test point"
        " 127.0.0.2 (2.0.0.127.rbl.tset: NXDOMAIN): a typo in the name, or a list that is"
        " gone; it lists no client"
    ]
    offline = smtpguard(site, "check-config", "--offline", check=False)
    assert "rbl.tset" not in offline.stdout


def test_a_redis_that_answers_ping_but_refuses_writes(tmp_path: Path) -> None:
    """Review rev50: a read-only replica (or a Redis out of memory) passed check-config
    and then answered 450 to every message."""
    redis_server = start_redis(tmp_path / "redis")
    try:
        client = redis.Redis.from_url(redis_server.url)
        client.config_set("replica-read-only", "yes")
        client.replicaof("127.0.0.1", "1")  # a master that never answers: read-only now
        client.close()
        site = make_site(
            tmp_path / "site", {"state": {"backend": "redis", "redis_url": redis_server.url}}
        )
        result = smtpguard(site, "check-config", check=False)
    finally:
        redis_server.stop()
    assert result.returncode == 1
    assert (
        "state.redis_url: Redis answers PING but the counters fail: You can't write against"
        " a read only replica." in result.stderr
    )


def test_the_redis_probe_writes_with_the_counters_commands(tmp_path: Path) -> None:
    """Review rev53: the probe's SET failed for a least-privilege ACL user that the
    service works with; one without the counters' ZADD is named as such."""
    redis_server = start_redis(tmp_path / "redis")
    try:
        client = redis.Redis.from_url(redis_server.url)
        # What the counter's script needs (EVALSHA, SCRIPT LOAD after NOSCRIPT, and
        # the commands the script runs), and a user with PING and ZADD but no script.
        counting = REDIS_COUNTING
        client.acl_setuser(
            "svc",
            enabled=True,
            passwords=["+pw"],
            keys=["*"],
            commands=[*counting.split(), "+hmget"],
        )
        client.acl_setuser(
            "ro", enabled=True, passwords=["+pw"], keys=["*"], commands=["+ping", "+zadd"]
        )
        # Review rev96: the counters' commands but not the blacklist's lookup.
        client.acl_setuser(
            "nobl", enabled=True, passwords=["+pw"], keys=["*"], commands=counting.split()
        )
        # ... and the counters' commands but one their scripts run.
        client.acl_setuser(
            "nozcard",
            enabled=True,
            passwords=["+pw"],
            keys=["*"],
            commands=[*counting.replace("+zcard", "").split(), "+hmget"],
        )
        # ... and all but what takes back a hit whose call timed out.
        client.acl_setuser(
            "notakeback",
            enabled=True,
            passwords=["+pw"],
            keys=["*"],
            commands=[*counting.replace(" +zrevrange", "").split(), "+hmget"],
        )
        client.close()
        results = {}
        for user in ("svc", "ro", "nobl", "nozcard", "notakeback"):
            url = f"redis://{user}:pw@127.0.0.1:{redis_server.port}/0"
            site = make_site(tmp_path / user, {"state": {"backend": "redis", "redis_url": url}})
            results[user] = smtpguard(site, "check-config", check=False)
    finally:
        redis_server.stop()
    assert results["svc"].returncode == 0, results["svc"].stderr
    assert results["ro"].returncode == 1
    assert "the Redis user may not do what the counters do" in results["ro"].stderr
    assert results["nobl"].returncode == 1
    assert results["nobl"].stderr.count("\n") == 1  # that line alone
    assert "state.redis_url: the blacklist lookup fails" in results["nobl"].stderr
    assert results["nozcard"].returncode == 1
    assert "the Redis user may not do what the counters do" in results["nozcard"].stderr
    assert results["notakeback"].returncode == 1
    assert "may not take back a hit whose call timed out" in results["notakeback"].stderr
    assert ":pw@" not in results["ro"].stderr


def test_a_redis_blacklist_lost_is_reported_by_check_config_and_list(tmp_path: Path) -> None:
    """Review rev100 F10: check-config said OK and `blacklist list` printed nothing for
    a list Redis lost. With redis_blacklist_required a hash without the marker is
    reported on any host; without it, once this host saw the marker."""
    redis_server = start_redis(tmp_path / "redis")
    state = {"backend": "redis", "redis_url": redis_server.url}
    try:
        client = redis.Redis.from_url(redis_server.url)
        required = make_site(
            tmp_path / "req", {"state": {**state, "redis_blacklist_required": True}}
        )
        plain = make_site(tmp_path / "plain", {"state": state})
        # A list made before smtpguard marked it (or lost): required says so.
        client.hset("smtpguard:blacklist", "old@example.net", "0 ")
        checked = smtpguard(required, "check-config", check=False)
        listed = smtpguard(required, "blacklist", "list", check=False)
        # Not required, never seen here: an empty (or unmarked) list, no problem.
        plain_before = smtpguard(plain, "check-config", check=False)
        smtpguard(plain, "blacklist", "add", "new@example.net")
        plain_marked = smtpguard(plain, "blacklist", "list", check=False)
        required_marked = smtpguard(required, "check-config", check=False)
        client.flushdb()
        # plain's list saw the marker: its host now takes the absence for a loss.
        plain_after = smtpguard(plain, "check-config", check=False)
        plain_listed = smtpguard(plain, "blacklist", "list", "--json", check=False)
        client.close()
    finally:
        redis_server.stop()
    assert checked.returncode == 1
    assert (
        f"{required.config.resolve()}: state.redis_blacklist_required: the blacklist hash"
        " smtpguard:blacklist has no marker and [state] redis_blacklist_required is true"
        in checked.stderr
    )
    assert listed.returncode == 1
    assert listed.stdout.startswith("old@example.net\t")
    assert listed.stderr.startswith("smtpguard: warning: the blacklist hash smtpguard:blacklist")
    assert plain_before.returncode == 0, plain_before.stderr
    assert plain_marked.returncode == 0, plain_marked.stderr
    assert plain_marked.stdout.startswith("new@example.net\t")
    assert required_marked.returncode == 0, required_marked.stderr
    assert plain_after.returncode == 1
    assert (
        "state.redis_blacklist_required: the blacklist hash smtpguard:blacklist is gone from"
        " Redis" in plain_after.stderr
    )
    assert plain_listed.returncode == 1
    assert json.loads(plain_listed.stdout) == []
    assert "is gone from Redis" in plain_listed.stderr


@contextlib.contextmanager
def redis_with_cli_user(tmp_path: Path) -> Iterator[tuple[redis.Redis, str]]:
    """A Redis of its own, an admin's client on it, and the URL of the user
    conf/smtpguard.toml documents for the blacklist commands (+hsetnx +hdel +hgetall)."""
    redis_server = start_redis(tmp_path / "redis")
    try:
        admin = redis.Redis.from_url(redis_server.url)
        admin.acl_setuser(
            "cli",
            enabled=True,
            passwords=["+pw"],
            keys=["smtpguard:*"],
            commands=["+hsetnx", "+hdel", "+hgetall"],
        )
        try:
            yield admin, f"redis://cli:pw@127.0.0.1:{redis_server.port}/0"
        finally:
            admin.close()
    finally:
        redis_server.stop()


def test_blacklist_list_and_mark_with_the_documented_cli_user(tmp_path: Path) -> None:
    """Review rev101 F1: `blacklist list` asked with HMGET, which the CLI's documented
    ACL user (+hsetnx +hdel +hgetall) lacks; F2: an upgrade's unmarked list with
    redis_blacklist_required names its entries and `blacklist mark` settles it."""
    with redis_with_cli_user(tmp_path) as (admin, url):
        admin.hset("smtpguard:blacklist", "old@example.net", "0 ")
        state = {"backend": "redis", "redis_url": url, "redis_blacklist_required": True}
        site = make_site(tmp_path / "site", {"state": state})
        before = smtpguard(site, "blacklist", "list", check=False)
        marked = smtpguard(site, "blacklist", "mark", check=False)
        again = smtpguard(site, "blacklist", "mark", check=False)
        after = smtpguard(site, "blacklist", "list", check=False)
    assert before.returncode == 1, before.stderr
    assert before.stdout.startswith("old@example.net\t")
    assert "redis_blacklist_required is true" in before.stderr
    assert "(it holds 1 entry)" in before.stderr
    assert "`smtpguard blacklist mark` takes it as it is" in before.stderr
    assert marked.stdout == "smtpguard:blacklist: marked (1 entry)\n"
    assert again.stdout == "smtpguard:blacklist: already marked (1 entry)\n"
    assert after.returncode == 0, after.stderr
    assert after.stdout.startswith("old@example.net\t")


def test_remove_leaves_a_lost_list_lost_and_add_says_what_it_takes(tmp_path: Path) -> None:
    """Review rev159 F2: `remove` of one entry and `add` of another wrote the marker of
    a list Redis had lost, silently: the service took what was left for the list and
    accepted every sender only the lost list held. Run as the documented CLI user."""
    with redis_with_cli_user(tmp_path) as (admin, url):
        site = make_site(tmp_path / "site", {"state": {"backend": "redis", "redis_url": url}})
        smtpguard(site, "blacklist", "add", "bad1@evil.example")
        smtpguard(site, "blacklist", "list")  # this host saw the marker (as a service does)
        admin.flushall()
        removed = smtpguard(site, "blacklist", "remove", "someone@partner.example", check=False)
        still_lost = smtpguard(site, "blacklist", "list", check=False)
        added = smtpguard(site, "blacklist", "add", "new@spam.example", check=False)
        marked = smtpguard(site, "blacklist", "list", check=False)
    assert removed.returncode == 1
    assert removed.stdout == "remove someone@partner.example: not listed\n"
    assert "is gone from Redis" in removed.stderr
    assert "`remove` does not mark it" in removed.stderr
    assert still_lost.returncode == 1  # the service's lookups still fail: no accept
    assert added.returncode == 0, added.stderr
    assert added.stdout == "add new@spam.example: done\n"
    assert (
        "smtpguard: warning: smtpguard:blacklist counted as lost; `blacklist add` marked it,"
        " so the list is what Redis holds now (1 entry)"
    ) in added.stderr
    assert marked.returncode == 0, marked.stderr


def test_add_refuses_to_mark_a_list_when_it_cannot_tell_whether_it_was_lost(
    tmp_path: Path,
) -> None:
    """Review rev162 F2: run by a user who may not read the state folder, `add` marked
    a hash without its marker, which the host's service had seen (so: a lost list),
    and said nothing. (The seen file cannot be looked at here because its name is too
    long, where the review's user lacked the folder's permission: the same OSError
    path.)"""
    with redis_with_cli_user(tmp_path) as (admin, url):
        state = {
            "backend": "redis",
            "redis_url": url,
            "path": str(tmp_path / ("s" * 230 + ".sqlite")),
        }
        site = make_site(tmp_path / "site", {"state": state})
        admin.hset("smtpguard:blacklist", "left@example.net", "0 ")
        added = smtpguard(site, "blacklist", "add", "new@spam.example", check=False)
        removed = smtpguard(site, "blacklist", "remove", "left@example.net", check=False)
        marked = admin.hexists("smtpguard:blacklist", "smtpguard:marker") or any(
            key != b"left@example.net" for key in admin.hkeys("smtpguard:blacklist")
        )
    assert added.returncode == 1
    assert added.stdout == ""
    assert "this user cannot tell whether this host saw one" in added.stderr
    assert "(nothing added)" in added.stderr
    assert removed.returncode == 1
    assert "cannot tell whether this host saw one" in removed.stderr
    assert not marked


def test_an_unmarked_list_with_entries_gets_a_note_not_an_error(tmp_path: Path) -> None:
    """Review rev102 F1: a list made before the marker, without required: `list` says
    to mark it (exit 0: lookups answer), and once marked says nothing."""
    redis_server = start_redis(tmp_path / "redis")
    try:
        redis.Redis.from_url(redis_server.url).hset("smtpguard:blacklist", "old@example.net", "0 ")
        site = make_site(
            tmp_path / "site", {"state": {"backend": "redis", "redis_url": redis_server.url}}
        )
        before = smtpguard(site, "blacklist", "list", check=False)
        smtpguard(site, "blacklist", "mark")
        after = smtpguard(site, "blacklist", "list", check=False)
    finally:
        redis_server.stop()
    assert before.returncode == 0
    assert before.stderr.startswith(
        "smtpguard: note: the blacklist hash smtpguard:blacklist holds 1 entry but no marker"
    )
    assert "run `smtpguard blacklist mark`" in before.stderr
    assert (after.returncode, after.stderr) == (0, "")


def test_check_config_says_when_this_host_cannot_remember_the_marker(tmp_path: Path) -> None:
    """Review rev101 F3, rev102 F2: where the service cannot keep the seen file, asked as
    the service user; with redis_blacklist_required the file is moot (rev102 F3)."""
    redis_server = start_redis(tmp_path / "redis")
    try:
        redis.Redis.from_url(redis_server.url).hset(
            "smtpguard:blacklist", "(smtpguard blacklist)", "1"
        )
        (tmp_path / "a-file").write_text("", encoding="utf-8")
        state = {
            "backend": "redis",
            "redis_url": redis_server.url,
            "path": str(tmp_path / "a-file" / "state.sqlite"),
        }
        result = smtpguard(
            make_site(tmp_path / "site", {"state": state}), "check-config", check=False
        )
        required = {**state, "redis_blacklist_required": True}
        moot = smtpguard(
            make_site(tmp_path / "req", {"state": required}), "check-config", check=False
        )
    finally:
        redis_server.stop()
    seen = tmp_path / "a-file" / "state.sqlite.redis-smtpguard-blacklist-seen"
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert (
        f"state.path: the service cannot keep {seen} ({tmp_path / 'a-file'} is not a folder)"
        in (result.stderr)
    )
    assert (moot.returncode, moot.stderr) == (0, "")


# --- files, as the service user -----------------------------------------------------


def test_an_interpreter_the_service_user_cannot_read_is_named(open_dir: Path) -> None:
    """Review rev58: with Python private to root (pyenv under /root, 0700) the
    supervisor died at its first reap, importing a module after the privilege drop;
    any module imported on first use fails so. check-config names it where it is so."""
    site = nobody_site(open_dir)
    result = smtpguard(site, "check-config", "--offline", check=False)
    named = [line for line in result.stderr.splitlines() if STDLIB_PROBLEM in line]
    if others_may_read(STDLIB):
        assert named == []
    else:
        assert named == [
            f"{site.config.resolve()}: milter.user: nobody cannot read {STDLIB}: {STDLIB_PROBLEM}"
        ]


def test_a_config_link_the_service_user_cannot_follow(open_dir: Path) -> None:
    """A reload reads the config by the path given: a link in a directory only root may
    search failed every reload, while check-config checked the link's target alone
    (review rev58)."""
    site = nobody_site(open_dir)
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    link = private / "smtpguard.toml"
    link.symlink_to(site.config)
    result = run_cli("-c", str(link), "check-config", "--offline", check=False)
    assert result.returncode == 1
    assert problems(result) == [
        f"{site.config.resolve()}: milter.user: nobody cannot read {link}:"
        " a reload (SIGHUP) would fail"
    ]


def test_files_the_service_user_cannot_use(open_dir: Path) -> None:
    site = nobody_site(open_dir)
    site.directory.chmod(0o600)  # root's: nobody cannot read it
    state = open_dir / "state" / "state.sqlite"
    smtpguard(site, "blacklist", "add", "x@example.net")  # as nobody, its folder's owner
    os.chown(state, 0, 0)  # root's now, as a copy made by hand would be
    state.chmod(0o644)
    file = site.config.resolve()
    expected = [
        f"{file}: directory.path: cannot read {site.directory} as nobody: Permission denied",
        f"{file}: state.path: cannot write {state} as nobody: Permission denied",
    ]
    result = smtpguard(site, "check-config", check=False)
    assert result.returncode == 1
    assert problems(result) == expected

    # run names them too, but starts: what mail sees when a store fails is each
    # check's on_temp_error (database_temp_error by default, or a pass).
    with running(site) as service:
        logged = [line for line in service.log().splitlines() if " ERROR " in line]
    assert without_stdlib_problem([line.partition(" ERROR ")[2] for line in logged]) == expected


@pytest.mark.parametrize(
    ("program", "mode", "why"),
    [
        ("hook.sh", 0o755, None),
        ("hook.sh", 0o700, "nobody may not execute {path}"),
        ("hook.sh", 0o711, "nobody may execute {path} but not read it: as a script (#!)"),
        ("nointerp.sh", 0o755, "{path} is a script whose interpreter '/nonexistent/sh'"),
        ("private/hook.sh", 0o755, "nobody cannot reach {path}: Permission denied"),
        ("missing.sh", None, "{path} does not exist"),
        ("hooks", None, "{path} is a directory"),
        ("no-such-hook-on-path", None, "no-such-hook-on-path is not on PATH ("),
        ("./hooks/hook.sh", 0o755, "./hooks/hook.sh is a relative path: give the full path"),
        # Review rev82 F5, F6: a program nobody may only execute runs; these do not.
        ("true", 0o711, None),
        ("crlf.sh", 0o755, "{path} has a #! line ending in a carriage return (CRLF)"),
        ("empty.sh", 0o755, "{path} is neither a script starting with #! nor an executable"),
        ("plain.sh", 0o755, "{path} is neither a script starting with #! nor an executable"),
        # Review rev84 F2: a carriage return after an argument is the argument's.
        ("crlfarg.sh", 0o755, None),
        ("crlfenv.sh", 0o755, "{path} has a #! line ending in a carriage return (CRLF)"),
    ],
)
def test_a_virus_hook_the_service_user_cannot_run(
    open_dir: Path, program: str, mode: int | None, why: str | None
) -> None:
    """Review rev80 F2: check-config said OK for a hook that did not exist or that the
    service user could not execute; run then deferred every message (or passed every
    one unscanned with on_temp_error = "pass"). Review rev81 F2, F3: a hook it could
    not reach, a script it could not read or whose interpreter is missing, and a
    relative path (found from the service's working directory, "/" under systemd)."""
    hooks = open_dir / "hooks"
    hooks.mkdir(mode=0o755)
    (hooks / "private").mkdir(mode=0o700)
    name = program.removeprefix("./hooks/")
    path = hooks if program == "hooks" else hooks / name
    if mode is not None:
        contents = {
            "nointerp.sh": b"#!/nonexistent/sh\nexit 0\n",
            "crlf.sh": b"#!/bin/sh\r\nexit 0\r\n",
            "empty.sh": b"",
            "plain.sh": b"exit 0\n",
            "crlfarg.sh": b"#!/usr/bin/env -S sh\r\nexit 0\r\n",
            "crlfenv.sh": b"#!/usr/bin/env sh\r\nexit 0\r\n",
        }
        path.write_bytes(contents.get(name, b"#!/bin/sh\nexit 0\n"))
        if name == "true":
            shutil.copyfile("/bin/true", path)
        path.chmod(mode)
    bare = program == "no-such-hook-on-path" or program.startswith("./")
    site = nobody_site(
        open_dir, {"virus": {"backend": "command", "command": [program if bare else str(path)]}}
    )
    result = smtpguard(site, "check-config", "--offline", check=False)
    named = [line for line in problems(result) if ": virus.command: " in line]
    if why is None:
        assert named == []
        return
    assert result.returncode == 1
    (line,) = named
    expected = why.format(path=path)
    assert f"{site.config.resolve()}: virus.command: {expected}" in line
    assert line.endswith(
        "every message would get the scanner's failure"
        " ([checks.virus] on_temp_error decides: deferred, or passed unscanned)"
    )


def test_state_directory_the_service_user_cannot_write(open_dir: Path) -> None:
    site = nobody_site(open_dir, {"state": {"path": str(open_dir / "state.sqlite")}})
    result = smtpguard(site, "check-config", check=False)
    assert result.returncode == 1
    assert problems(result) == [
        f"{site.config.resolve()}: state.path: cannot create {open_dir / 'state.sqlite'}"
        f" as nobody: {open_dir}: Permission denied"
    ]


def test_shared_counters_the_service_user_cannot_write(open_dir: Path) -> None:
    """Review rev226 F1: the workers' same-size file made by root (an older simulate, a
    copy by hand) deferred every message as database_temp_error; check-config passed."""
    site = nobody_site(open_dir, {"milter": {"workers": 2}})
    shared = counter_path(load_config(site.config))
    shared.write_bytes(b"\0" * 64)
    shared.chmod(0o600)
    result = smtpguard(site, "check-config", "--offline", check=False)
    assert result.returncode == 1
    assert problems(result) == [
        f"{site.config.resolve()}: state.path: cannot write {shared} as nobody: Permission"
        " denied: the workers' same-size counts would fail and every message be deferred"
        " (database_temp_error); give it to that user, or remove it (the service makes it"
        " again, the counts empty)"
    ]
    shutil.chown(shared, "nobody")
    result = smtpguard(site, "check-config", "--offline", check=False)
    assert problems(result) == []


def test_config_unreadable_for_the_service_user(open_dir: Path) -> None:
    site = nobody_site(open_dir)
    site.config.chmod(0o600)
    result = smtpguard(site, "check-config", check=False)
    assert result.returncode == 1
    assert problems(result) == [
        f"{site.config.resolve()}: milter.user: nobody cannot read {site.config.resolve()}:"
        " a reload (SIGHUP) would fail"
    ]


def test_rule_files_a_reload_reads_unreadable_for_the_service_user(open_dir: Path) -> None:
    """The reply table and the generic-PTR patterns are read again on SIGHUP, as the
    service user."""
    private = open_dir / "private"
    private.mkdir()
    table = shutil.copy(ROOT / "rules" / "replies.toml", private / "replies.toml")
    patterns = shutil.copy(ROOT / "rules" / "generic_ptr.toml", private / "generic_ptr.toml")
    Path(patterns).chmod(0o600)  # root's, as a copy made by hand would be
    site = nobody_site(open_dir, {"smtpport": {"generic_patterns": str(patterns)}})
    file = site.config.resolve()
    expected = (
        f"{file}: smtpport.generic_patterns: nobody cannot read {patterns}:"
        " a reload (SIGHUP) would fail"
    )
    result = smtpguard(site, "check-config", "--offline", check=False)
    assert result.returncode == 1
    assert problems(result) == [expected]

    Path(table).chmod(0o600)
    site = nobody_site(
        open_dir,
        {"replies": {"table": str(table)}, "smtpport": {"generic_patterns": str(patterns)}},
    )
    result = smtpguard(site, "check-config", "--offline", check=False)
    assert problems(result) == [
        f"{file}: replies.table: nobody cannot read {table}: a reload (SIGHUP) would fail",
        expected,
    ]

    Path(patterns).chmod(0o644)
    Path(table).chmod(0o644)
    assert problems(smtpguard(site, "check-config", "--offline", check=False)) == []


# --- site ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("site_keys", "checks", "reported"),
    [
        ({"local_domains": [], "relay_domains": []}, {}, True),
        ({"local_domains": [], "relay_domains": ["relay.example"]}, {}, False),
        ({"local_domains": ["example.com"]}, {}, False),
        # A pure submission host that leaves relaying to Postfix.
        ({"local_domains": [], "relay_domains": []}, {"relay": {"mode": "off"}}, False),
    ],
)
def test_a_site_without_domains_is_a_problem(
    tmp_path: Path, site_keys: dict[str, list[str]], checks: dict[str, Any], reported: bool
) -> None:
    site = make_site(tmp_path, {"site": site_keys, "checks": checks})
    found, _printed = offline_problems(site, "site.local_domains", reported)
    if reported:
        assert "refused as relaying (host_denies_relay)" in found[0]


def offline_problems(site: Site, key: str, reported: bool) -> tuple[list[str], str]:
    """check-config --offline's problems about ``key``, there or not as ``reported``
    says, its exit code to match, and all it printed."""
    result = smtpguard(site, "check-config", "--offline", check=False)
    found = [p for p in problems(result) if f": {key}: " in p]
    assert bool(found) is reported, result.stderr
    assert result.returncode == (1 if reported else 0), result.stderr
    return found, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("mode", "folder", "reported"),
    [(0o644, 0o755, True), (0o640, 0o755, False), (0o644, 0o700, False)],
    ids=["readable", "group", "in_a_closed_folder"],
)
def test_a_loop_marker_key_others_may_read_is_a_problem(
    open_dir: Path, mode: int, folder: int, reported: bool
) -> None:
    """Review rev107 F4: the key keeps the marker's recipients hidden and unforgeable;
    in a file every user may read it is neither (OpenDKIM refuses such a key). Review
    rev108 F5: not where no other user can reach the file."""
    where = open_dir / "conf"
    site = make_site(where, {"content": {"loop_marker_key": "k" * 20}})
    site.config.chmod(mode)
    where.chmod(folder)
    found, printed = offline_problems(site, "content.loop_marker_key", reported)
    if reported:
        assert "every user may read it (mode 0644): chmod o-r" in found[0]
    assert "k" * 20 not in printed


def test_check_config_notes_alias_chains_an_import_would_refuse(tmp_path: Path) -> None:
    """An older import let a chain of more than 8 aliases or a loop in: lookups of them
    now fail (database_temp_error). check-config names them, as a note: the service
    still starts for every other address."""
    site = make_site(tmp_path)
    with sqlite3.connect(site.directory) as db:
        db.executemany(
            "INSERT INTO aliases VALUES (?, ?)",
            [(f"c{i}@example.com", f"c{i + 1}@example.com") for i in range(10)]
            + [("ping@example.com", "pong@example.com"), ("pong@example.com", "ping@example.com")],
        )
    db.close()
    result = smtpguard(site, "check-config", "--offline", check=False)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "directory.path: note:" in line]
    assert any("a chain of more than 8 aliases (c0@example.com -> " in n for n in notes), notes
    assert any("alias loop ping@example.com -> pong@example.com -> ping" in n for n in notes)
    assert all("mail to it is deferred (database_temp_error)" in n for n in notes)


def test_check_config_notes_logins_in_domains_the_site_does_not_host(tmp_path: Path) -> None:
    """Review rev198 L2: an import took a login kept from another provider; it could
    never send (domain_auth_error at every attempt), and check-config said OK."""
    site = make_site(tmp_path)
    source = tmp_path / "more.toml"
    source.write_text(
        '[[user]]\naddress = "zed@example.com"\nlogin = "zed@oldisp.example"\n\n'
        '[[user]]\naddress = "amy@example.com"\nlogin = "amy"\n',
        encoding="utf-8",
    )
    smtpguard(site, "directory", "import", str(source))
    result = smtpguard(site, "check-config", "--offline", check=False)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "directory.path: note:" in line]
    assert notes == [
        f"{site.config}: directory.path: note: {site.directory}: login 'zed@oldisp.example'"
        " is in a domain site.local_domains does not list: every message it sends gets"
        " domain_auth_error"
    ]


def test_check_config_runs_the_virus_hook_once_as_the_service_user(open_dir: Path) -> None:
    """Review rev92 F3: a hook that fails every message (clamdscan without its clamd,
    exit 2, a hang) passed check-config, which only looked at the program file. Online,
    it is now run once on a message of a few clean octets, as milter.user."""
    hooks = open_dir / "hooks"
    hooks.mkdir(mode=0o755)
    seen = open_dir / "state" / "seen"
    scripts = {
        "broken.sh": "echo 'stream: cannot connect to clamd ERROR'\nexit 2\n",
        "hangs.sh": "exec sleep 3600\n",
        "works.sh": f"cat >/dev/null\nid -un > {seen}\nexit 0\n",
    }
    for name, body in scripts.items():
        (hooks / name).write_text(f"#!/bin/sh\n{body}")
        (hooks / name).chmod(0o755)
    why = {
        "broken.sh": f"{hooks}/broken.sh: exit status 2: stream: cannot connect to clamd ERROR",
        "hangs.sh": f"{hooks}/hangs.sh timed out after 1 s",
    }
    for name, expected in why.items():
        virus = {"backend": "command", "command": [str(hooks / name)], "timeout": 1.0}
        site = nobody_site(open_dir, {"virus": virus})
        result = smtpguard(site, "check-config", check=False)
        assert result.returncode == 1, result.stdout
        (line,) = [line for line in problems(result) if ": virus.command: " in line]
        assert f"did not answer clean ({expected}): every message would get" in line, line
        offline = smtpguard(site, "check-config", "--offline", check=False)
        assert ": virus.command: " not in offline.stderr  # not run offline
    virus = {"backend": "command", "command": [str(hooks / "works.sh")], "timeout": 5.0}
    site = nobody_site(open_dir, {"virus": virus})
    result = smtpguard(site, "check-config", check=False)
    assert ": virus.command: " not in result.stderr, result.stderr
    assert seen.read_text().strip() == "nobody"


@pytest.mark.parametrize(
    ("mode", "owner", "found"),
    [
        (0o666, "root", "is writable by every user"),
        (0o664, "nobody", "is owned by nobody and writable by group"),
        (0o644, "nobody", "is owned by nobody:"),
        (0o640, "root", None),
    ],
)
def test_a_config_others_may_change_is_a_problem(
    tmp_path: Path, mode: int, owner: str, found: str | None
) -> None:
    """Review rev179 F4: a 0666 config owned by nobody passed check-config, and run as
    root started; whoever writes it chooses milter.user and the virus hook."""
    site = make_site(tmp_path)
    site.config.chmod(mode)
    shutil.chown(site.config, owner, "nogroup" if owner == "nobody" else "root")
    result = smtpguard(site, "check-config", "--offline", check=False)
    if found is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1
        assert f"the config file {site.config} {found}" in result.stderr, result.stderr


def test_root_without_a_service_user_is_noted(tmp_path: Path) -> None:
    """Review rev179 F4: as root with milter.user empty the service read mail as root,
    unsaid."""
    site = make_site(tmp_path)
    note = root_notes(load_config(site.config))
    assert "milter.user: note: empty: run as root, the service stays root" in str(note[0])
    nobody = make_site(tmp_path / "nobody", {"milter": {"user": "nobody"}})
    assert root_notes(load_config(nobody.config)) == []
    # check-config says it too (review rev224 L8a: it said OK and nothing else), a note
    # after OK: a test or a container may mean it.
    result = smtpguard(site, "check-config", "--offline", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [
        f"{site.config.resolve()}: OK (network backends not asked: --offline)",
        str(note[0]),
    ]
    with running(site) as service:
        wait_until(lambda: "milter.user: note: empty" in service.log())


def test_a_socket_directory_every_user_may_write_is_a_problem(tmp_path: Path) -> None:
    """Review rev179 F10: another user could bind the socket's name first (run then
    refused to start) or stand in for smtpguard; check-config passed."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    site = make_site(tmp_path / "site", {"milter": {"socket": f"unix:{shared}/s.sock"}})
    result = smtpguard(site, "check-config", "--offline", check=False)
    assert result.returncode == 1
    assert f"milter.socket: the socket's directory {shared} is writable by every user" in (
        result.stderr
    )
    shared.chmod(0o755)
    assert smtpguard(site, "check-config", "--offline", check=False).returncode == 0


def test_settings_of_a_check_that_is_off_everywhere_are_noted(tmp_path: Path) -> None:
    """Review rev224 L8c: a reject zone and a local list with checks.rbl off loaded,
    and check-config said OK: nothing asks them."""
    listed = tmp_path / "block.txt"
    listed.write_text("198.51.100.0/24\n")
    off = {
        "dns": {"nameservers": ["127.0.0.1"]},
        "dnsbl": {
            "zones": [{"name": "zen.example"}, {"name": "relays.example", "kind": "openrelay"}],
            "local": [{"file": str(listed)}],
        },
        "checks": {"rbl": {"mode": "off"}, "virus": {"mode": "off"}},
        "virus": {"backend": "clamd"},
    }
    site = make_site(tmp_path / "off", off)
    file = site.config.resolve()
    result = smtpguard(site, "check-config", "--offline", check=False)
    assert result.returncode == 0, result.stderr
    tail = ", but [checks.{}] is off: nothing uses it"
    notes = [line for line in result.stdout.splitlines() if "nothing uses it" in line]
    assert notes == [
        f"{file}: dnsbl.zones: note: zones of kind rbl (zen.example)" + tail.format("rbl"),
        f"{file}: dnsbl.local: note: local lists of kind rbl ({listed})" + tail.format("rbl"),
        f"{file}: virus.backend: note: backend 'clamd'" + tail.format("virus"),
    ]
    # Settings of the DNS checks without a resolver (review rev224 L4).
    quiet = make_site(
        tmp_path / "nodns",
        {"spf": {"reject_softfail": True}, "smtpport": {"connect_back": "report"}},
    )
    assert [str(n) for n in unused_notes(load_config(quiet.config))] == [
        f"{quiet.config.resolve()}: {key}: note: set, but [dns] has no nameservers: the DNS"
        " checks are inactive"
        for key in ("spf.reject_softfail", "smtpport.connect_back")
    ]
    # The openrelay zone is asked (the check is on), and so is everything once on.
    on = merge(off, {"checks": {"rbl": {"mode": "report"}, "virus": {"mode": "enforce"}}})
    assert unused_notes(load_config(make_site(tmp_path / "on", on).config)) == []
