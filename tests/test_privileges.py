"""Socket ownership and mode, privilege drop, and exposure limits of the real service."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import stat
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from smtpguard.config import ConfigError, load_config
from support.daemons import start_redis
from support.mtclient import MilterSession
from support.polling import children, holds_for, wait_until
from support.service import (
    UNTRUSTED_IP,
    Site,
    kill_supervisor_then_start_again,
    make_site,
    metrics_on,
    running,
    smtpguard,
)

pytestmark = pytest.mark.integration


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # real uid
    raise AssertionError("no Uid line")


def nobody_root() -> tuple[Path, Path]:
    """A site directory the unprivileged user may traverse after the drop, and a state
    directory it owns: the blacklist file is created at first use, after the drop
    (start-up refuses a state.path the service user could not create)."""
    root = Path(tempfile.mkdtemp(prefix="smtpguard-priv-"))
    root.chmod(0o755)
    state = root / "state"
    state.mkdir()
    shutil.chown(state, "nobody")
    return root, state


def test_socket_permissions_and_privilege_drop() -> None:
    root, state = nobody_root()
    site = make_site(
        root,
        {
            "milter": {
                "socket_owner": "nobody",
                "socket_group": "nogroup",
                "socket_mode": "0640",
                "user": "nobody",
            },
            "state": {"path": str(state / "state.sqlite")},
        },
    )
    with running(site) as service:
        info = site.socket.stat()
        assert stat.S_IMODE(info.st_mode) == 0o640
        assert info.st_uid == pwd.getpwnam("nobody").pw_uid
        assert info.st_gid == grp.getgrnam("nogroup").gr_gid
        assert uid_of(service.process.pid) == pwd.getpwnam("nobody").pw_uid
        with service.session() as s:
            s.connect(UNTRUSTED_IP)
            s.helo("mail.sender.example")
            assert s.mail("<>").kind == "continue"
            assert s.rcpt("<alice@example.com>").kind == "continue"
        assert "dropped privileges to nobody" in service.log()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[milter]\nsocket = "inet:9999@0.0.0.0"\n', "non-loopback"),
        ('[milter]\nsocket = "inet:9999@192.0.2.1"\n', "non-loopback"),
        ('[milter]\nsocket_group = "no-such-group-here"\n', "no such user or group"),
        ('[milter]\nsocket_mode = "rw-rw----"\n', "octal mode"),
    ],
)
def test_exposure_and_identity_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_service_user_is_named_at_start_not_at_load(tmp_path: Path) -> None:
    """The sample config names a user only scripts/start.sh creates: it must load on
    any host, while check-config and run name the missing user."""
    site = make_site(tmp_path, {"milter": {"user": "no-such-user-here"}})
    assert load_config(site.config).milter.user == "no-such-user-here"
    line = f"{site.config.resolve()}: milter.user: no such user on this system: 'no-such-user-here'"
    check = smtpguard(site, "check-config", "--offline", check=False)
    assert (check.returncode, check.stderr.strip()) == (1, line)
    run = smtpguard(site, "run", check=False)
    assert (run.returncode, run.stderr.strip()) == (2, line)
    assert not site.socket.exists()


def test_remote_socket_allowed_explicitly(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[milter]\nsocket = "inet:9999@192.0.2.1"\nallow_remote_socket = true\n')
    assert load_config(path).milter.allow_remote_socket


def test_a_supervisor_as_the_service_user_reaps_and_restarts_its_workers() -> None:
    """Review rev58: os.wait4 imports the resource module at every call; where the
    service user cannot read the interpreter's library (this machine: pyenv under
    /root, 0700) the supervisor died at its first reap and left its workers behind."""
    root, state = nobody_root()
    site = make_site(
        root,
        {
            "milter": {"user": "nobody", "workers": 2},
            "state": {"path": str(state / "state.sqlite")},
        },
    )
    with running(site) as service:
        supervisor = service.process.pid
        wait_until(lambda: len(children(supervisor)) == 2)
        before = children(supervisor)
        os.kill(min(before), signal.SIGKILL)
        wait_until(lambda: len(children(supervisor) - before) == 1, deadline=10)
        assert service.process.poll() is None, service.log()
        with service.session() as s:
            s.connect(UNTRUSTED_IP)
            assert s.helo("mail.sender.example").kind == "continue"


def nobody_site(root: Path, state: Path, extra: dict[str, Any] | None = None) -> Site:
    """Two workers as nobody, the socket in a directory nobody owns (as the packaged
    /var/spool/postfix/smtpguard): the user may remove what is at the path there."""
    run = root.parent / "run"
    run.mkdir(exist_ok=True)
    shutil.chown(run, "nobody")
    config: dict[str, Any] = {
        "milter": {"user": "nobody", "workers": 2, "socket": f"unix:{run}/smtpguard.sock"},
        "state": {"path": str(state / "state.sqlite")},
    }
    for section, values in (extra or {}).items():
        config[section] = {**config.get(section, {}), **values}
    return make_site(root, config)


def socket_of(site: Site) -> Path:
    return site.dir.parent / "run" / "smtpguard.sock"


def serves(socket_path: Path) -> bool:
    with MilterSession(str(socket_path)) as s:
        s.connect(UNTRUSTED_IP)
        return s.helo("mail.sender.example").kind == "continue"


def test_a_worker_stopped_alone_leaves_the_socket_to_its_siblings() -> None:
    """Review rev87 F3: a worker that is not root ended with libmilter's smfi_stop,
    which removes whatever socket is at the path: the one its siblings serve on. The
    supervisor then found its socket gone and stopped the whole service."""
    root, state = nobody_root()
    site = nobody_site(root / "site", state)
    with running(site, wait_for=str(socket_of(site))) as service:
        supervisor = service.process.pid
        wait_until(lambda: len(children(supervisor)) == 2)
        before = children(supervisor)
        os.kill(min(before), signal.SIGUSR2)  # the supervisor's stop
        wait_until(lambda: len(children(supervisor) - before) == 1, deadline=10)
        assert socket_of(site).exists()
        assert service.process.poll() is None, service.log()
        assert serves(socket_of(site))
        assert "socket lost" not in service.log()


def test_an_old_instance_draining_leaves_a_new_instances_socket_alone() -> None:
    """Review rev87 F1: stopped, a supervisor removes its socket at once while its
    workers drain; a new instance started meanwhile made a socket at the path, which
    the last old worker then removed on its way out (libmilter's smfi_stop, as any
    user but root): the new instance served nobody, without a word in its log."""
    root, state = nobody_root()
    old = nobody_site(root / "old", state)
    new = nobody_site(root / "new", state)
    path = socket_of(old)
    with running(old, wait_for=str(path)) as first:
        wait_until(lambda: len(children(first.process.pid)) == 2)
        held = MilterSession(str(path))
        assert held.connect(UNTRUSTED_IP).kind == "continue"
        assert held.helo("mail.sender.example").kind == "continue"
        assert held.mail("<a@sender.example>").kind == "continue"  # a worker has it
        first.process.send_signal(signal.SIGTERM)
        wait_until(lambda: not path.exists())
        with running(new, wait_for=str(path)) as second:
            assert second.process.poll() is None
            held.close()  # the old worker's drain ends
            assert first.process.wait(timeout=20) == 0
            # The new supervisor looks at its socket once a second: it stays, and so do
            # socket and service.
            holds_for(lambda: path.exists() and second.process.poll() is None, 1.5)
            assert serves(path)


def test_a_socket_removed_under_the_service_stops_it_with_an_error() -> None:
    """Workers on a socket no MTA can reach any more would defer every message without
    a word; the supervisor now looks at the file once a second."""
    root, state = nobody_root()
    site = nobody_site(root / "site", state)
    with running(site, wait_for=str(socket_of(site))) as service:
        wait_until(lambda: len(children(service.process.pid)) == 2)
        socket_of(site).unlink()
        assert service.process.wait(timeout=40) == 1
    assert "was removed or replaced under the running service" in service.log()


def test_a_socket_the_service_user_cannot_see_is_no_socket_gone() -> None:
    """Review rev88 N4: the supervisor's look at its socket read "permission denied"
    (a directory the service user may not search) as the socket removed, and stopped
    the service a second after every start."""
    root, state = nobody_root()
    hidden = root / "hidden"
    hidden.mkdir(mode=0o700)
    path = hidden / "smtpguard.sock"
    site = make_site(
        root / "site",
        {
            "milter": {"user": "nobody", "workers": 2, "socket": f"unix:{path}"},
            "state": {"path": str(state / "state.sqlite")},
        },
    )
    with running(site, wait_for=str(path)) as service:
        wait_until(lambda: len(children(service.process.pid)) == 2)
        holds_for(lambda: service.process.poll() is None, 2.5)  # two looks at the socket
        assert serves(path)


def test_a_killed_supervisors_metrics_directory_is_removed_though_root_gave_it_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review rev115 F3: started as root, the supervisor hands its metrics directory
    to milter.user; the next start (root again) took only its own as ours."""
    root, state = nobody_root()
    run = root / "metrics-run"
    run.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(run))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    site = nobody_site(root, state, metrics_on())
    kill_supervisor_then_start_again(site, run, str(socket_of(site)))


def test_root_writes_the_state_and_directory_files_as_the_service_user(tmp_path: Path) -> None:
    """Review rev179 F3: the state directory is the service user's, and a link it put
    at the state file's path had root's `blacklist add` (and `directory import`) create
    a file anywhere (/etc/nologin). As root they now write as milter.user: a planted
    link reaches only what that user may write, and what they make is its own."""
    root, state = nobody_root()
    site = make_site(
        root,
        {
            "milter": {"user": "nobody"},
            "state": {"path": str(state / "state.sqlite")},
            "directory": {"path": str(state / "directory.sqlite")},
        },
    )
    nobody = pwd.getpwnam("nobody").pw_uid
    smtpguard(site, "blacklist", "add", "spammer@example.org")
    assert (state / "state.sqlite").stat().st_uid == nobody
    users = root / "users.toml"
    users.write_text('[[user]]\naddress = "alice@example.com"\n')
    users.chmod(0o600)  # root's own file: read before the drop
    smtpguard(site, "directory", "import", "--replace", str(users))
    assert (state / "directory.sqlite").stat().st_uid == nobody
    private = root / "rootonly"
    private.mkdir(mode=0o700)
    for name, command in (
        ("state.sqlite", ("blacklist", "add", "other@example.org")),
        ("directory.sqlite", ("directory", "import", "--replace", str(users))),
    ):
        planted = state / name
        planted.unlink()
        planted.symlink_to(private / name)
        os.lchown(planted, nobody, -1)
        done = smtpguard(site, *command, check=False)
        assert done.returncode != 0, done.stdout
        assert not (private / name).exists()


def test_a_state_file_root_made_is_named_for_what_it_is(tmp_path: Path) -> None:
    """Review rev226 F1: a state file made by root (an older simulate, a copy by hand)
    made root's `blacklist add`, run as the service user, say "run it again", which
    could never succeed."""
    root, state = nobody_root()
    site = make_site(
        root, {"milter": {"user": "nobody"}, "state": {"path": str(state / "state.sqlite")}}
    )
    smtpguard(site, "blacklist", "add", "spammer@example.org")
    shutil.chown(state / "state.sqlite", "root")
    done = smtpguard(site, "blacklist", "add", "other@example.org", check=False)
    assert done.returncode != 0
    assert done.stderr.endswith(
        "attempt to write a readonly database: nothing added (this user may not write it"
        " or its folder: give them to the service's user)\n"
    ), done.stderr
    shutil.chown(state / "state.sqlite", "nobody")
    assert smtpguard(site, "blacklist", "add", "other@example.org").returncode == 0


def test_a_redis_blacklist_is_changed_as_root(tmp_path: Path) -> None:
    """Review rev180 F2: with Redis no state file is written, but the drop to the
    service user took root's access to what reaching Redis needs (under the unit, the
    socket's group; here a client key only root may read), and the command failed."""
    root, state = nobody_root()
    server = start_redis(root / "redis", tls=True)
    try:
        (root / "redis").chmod(0o700)
        site = make_site(
            root,
            {
                "milter": {"user": "nobody"},
                "state": {
                    "backend": "redis",
                    "redis_url": server.url,
                    "path": str(state / "state.sqlite"),
                },
            },
        )
        added = smtpguard(site, "blacklist", "add", "spammer@example.org")
        assert "add spammer@example.org: done" in added.stdout
        assert "spammer@example.org" in smtpguard(site, "blacklist", "list").stdout
        smtpguard(site, "blacklist", "remove", "spammer@example.org")
        assert "spammer@example.org" not in smtpguard(site, "blacklist", "list").stdout
        assert not (state / "state.sqlite").exists()
    finally:
        server.stop()


def test_a_linked_folder_on_the_way_to_the_state_file_is_followed_as_the_service_user(
    tmp_path: Path,
) -> None:
    """Review rev180 F3: the folder above the state file's was looked at through the
    link the service user had put in its own folder (a root-only folder there), so
    root wrote through it."""
    root, state = nobody_root()
    private = root / "rootonly"
    private.mkdir(mode=0o700)
    site = make_site(
        root,
        {"milter": {"user": "nobody"}, "state": {"path": str(state / "sub" / "state.sqlite")}},
    )
    link = state / "sub"
    link.symlink_to(private)
    os.lchown(link, pwd.getpwnam("nobody").pw_uid, -1)
    done = smtpguard(site, "blacklist", "add", "evil@example.com", check=False)
    assert done.returncode != 0, done.stdout
    assert not (private / "state.sqlite").exists()


def test_a_folder_the_service_user_owns_is_open_to_it_whatever_its_mode(tmp_path: Path) -> None:
    """Review rev182 F2: a folder it owned with mode 0555 was taken for closed, and the
    owner flipped it to 0755 and a link in between the look and root's write."""
    from smtpguard.cli import _open_to  # noqa: PLC0415

    nobody = pwd.getpwnam("nobody")
    groups = set(os.getgrouplist("nobody", nobody.pw_gid))
    owned = tmp_path / "owned"
    owned.mkdir(mode=0o555)
    shutil.chown(owned, "nobody")
    assert _open_to(owned / "state.sqlite", nobody.pw_uid, groups)
    roots = tmp_path / "roots"
    roots.mkdir(mode=0o755)
    assert not _open_to(roots / "state.sqlite", nobody.pw_uid, groups)


def test_a_link_root_made_in_its_own_folder_keeps_root(tmp_path: Path) -> None:
    """Review rev182 F3: a symlinked /etc/smtpguard (root's link, root's folders) made
    root drop to the service user, which could not write there: the import failed."""
    root, state = nobody_root()
    real = root / "real"
    real.mkdir(mode=0o755)
    (root / "etc").symlink_to(real)
    site = make_site(
        root,
        {
            "milter": {"user": "nobody"},
            "state": {"path": str(state / "state.sqlite")},
            "directory": {"path": str(root / "etc" / "directory.sqlite")},
        },
    )
    users = root / "users.toml"
    users.write_text('[[user]]\naddress = "alice@example.com"\n')
    smtpguard(site, "directory", "import", "--replace", str(users))
    assert (real / "directory.sqlite").stat().st_uid == 0


def _posix_acl(uid: int, perm: int) -> bytes:
    """A Linux ``system.posix_acl_access`` value: rwx for the owner, r-x for the group
    and others, ``perm`` for ``uid``, and a mask of rwx."""
    none = 0xFFFFFFFF
    entries = [(0x01, 7, none), (0x02, perm, uid), (0x04, 5, none), (0x10, 7, none)]
    entries.append((0x20, 5, none))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@pytest.mark.parametrize(("perm", "open_"), [(5, False), (7, True)])
def test_an_acl_opens_a_folder_only_where_it_lets_the_user_write(
    tmp_path: Path, perm: int, open_: bool
) -> None:
    """Review rev184 F2: any ACL (one giving a monitoring account read access) made
    root drop, and the command failed."""
    from smtpguard.cli import _open_to  # noqa: PLC0415

    nobody = pwd.getpwnam("nobody")
    groups = set(os.getgrouplist("nobody", nobody.pw_gid))
    folder = tmp_path / "etc"
    folder.mkdir(mode=0o755)
    try:
        os.setxattr(folder, "system.posix_acl_access", _posix_acl(nobody.pw_uid, perm))
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs here: {exc.strerror}")
    assert _open_to(folder / "directory.sqlite", nobody.pw_uid, groups) is open_


def test_roots_link_into_a_folder_of_the_service_user_is_followed_as_that_user(
    tmp_path: Path,
) -> None:
    """Review rev184 F1: root's own link to the state file in the service user's
    folder, where the user had planted a link to a root-only folder: root wrote there."""
    root, state = nobody_root()
    etc = root / "etc"
    etc.mkdir(mode=0o755)
    private = root / "rootonly"
    private.mkdir(mode=0o700)
    (etc / "state.sqlite").symlink_to(state / "state.sqlite")
    planted = state / "state.sqlite"
    planted.symlink_to(private / "nologin")
    os.lchown(planted, pwd.getpwnam("nobody").pw_uid, -1)
    site = make_site(
        root, {"milter": {"user": "nobody"}, "state": {"path": str(etc / "state.sqlite")}}
    )
    done = smtpguard(site, "blacklist", "add", "evil@example.com", check=False)
    assert done.returncode != 0, done.stdout
    assert not (private / "nologin").exists()


def test_a_link_that_grows_the_path_ends_the_walk_quickly(tmp_path: Path) -> None:
    """Review rev185 F1: a link of the service user's that grows the path at each turn
    (a -> a/a/.../a) took all the memory of root's blacklist add."""
    root, state = nobody_root()
    nobody = pwd.getpwnam("nobody").pw_uid
    grow = state / "a"
    grow.symlink_to("/".join(["a"] * 2047))
    os.lchown(grow, nobody, -1)
    (state / "state.sqlite").symlink_to("a/x")
    os.lchown(state / "state.sqlite", nobody, -1)
    site = make_site(
        root, {"milter": {"user": "nobody"}, "state": {"path": str(state / "state.sqlite")}}
    )
    started = time.monotonic()
    done = smtpguard(site, "blacklist", "add", "evil@example.com", check=False)
    assert time.monotonic() - started < 20
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr


def test_under_an_acl_the_owning_groups_entry_says_whether_it_may_write(tmp_path: Path) -> None:
    """Review rev185: with an ACL the mode's group bits are its mask; a folder of group
    nogroup, its group entry r-x, read as writable by nobody's group, and root's
    command dropped and failed."""
    from smtpguard.cli import _open_to  # noqa: PLC0415

    nobody = pwd.getpwnam("nobody")
    groups = set(os.getgrouplist("nobody", nobody.pw_gid))
    folder = tmp_path / "etc"
    folder.mkdir(mode=0o755)
    shutil.chown(folder, "root", grp.getgrgid(nobody.pw_gid).gr_name)
    try:
        os.setxattr(folder, "system.posix_acl_access", _posix_acl(1, 7))  # daemon: rwx
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs here: {exc.strerror}")
    assert folder.stat().st_mode & stat.S_IWGRP  # the mask's bits
    assert not _open_to(folder / "directory.sqlite", nobody.pw_uid, groups)
