"""The milter socket: never taken over, never wider than configured, loopback by default,
removed at a clean stop; start-up failures named in one line (exit 2)."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpguard.config import MilterConfig
from smtpguard.sockets import Ownership, StartError, libmilter_address, resolve, secure_unix
from support.daemons import free_port
from support.polling import wait_until
from support.service import STOPPING, UNTRUSTED_IP, Running, Site, make_site, running, smtpguard

pytestmark = pytest.mark.integration

POSTFIX_GID = next((g.gr_gid for g in grp.getgrall() if g.gr_name == "postfix"), None)


def run_argv(site: Site) -> list[str]:
    return [sys.executable, "-m", "smtpguard", "-c", str(site.config), "run"]


def stop(process: subprocess.Popen[str], timeout: float = 30.0) -> int:
    """SIGTERM and wait (libmilter notices it at its next listener poll, ~5 s)."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)


def wait_for_file(path: Path, process: subprocess.Popen[str], deadline: float = 15.0) -> None:

    def there() -> bool:
        assert process.poll() is None, f"service exited with {process.returncode}"
        return path.exists()

    wait_until(there, deadline)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users may traverse (pytest's own tmp dirs are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="smtpguard-sock-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


# --- addresses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "given"),
    [
        ("inet:9999", "inet:9999@127.0.0.1"),
        ("inet:9999@", "inet:9999@127.0.0.1"),
        ("inet6:9999", "inet6:9999@::1"),
        ("inet:9999@127.0.0.2", "inet:9999@127.0.0.2"),
        ("inet6:9999@[::1]", "inet6:9999@[::1]"),
        ("unix:/run/x.sock", "unix:/run/x.sock"),
        ("local:/run/x.sock", "local:/run/x.sock"),
    ],
)
def test_libmilter_gets_the_host_written_out(configured: str, given: str) -> None:
    assert libmilter_address(configured) == given


def listening(table: str, port: int) -> list[str]:
    """Local addresses (hex, as the kernel writes them) listening on ``port``."""
    out = []
    for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hexport = local.partition(":")
        if state == "0A" and int(hexport, 16) == port:
            out.append(address)
    return out


def test_inet_port_without_host_listens_on_loopback_only(tmp_path: Path) -> None:
    port = free_port()
    site = make_site(tmp_path, {"milter": {"socket": f"inet:{port}"}})
    with running(site, wait_for=("127.0.0.1", port)) as service:
        assert listening("tcp", port) == ["0100007F"]  # 127.0.0.1, not 00000000
        assert listening("tcp6", port) == []
        assert f"starting on inet:{port}@127.0.0.1" in service.log()


def test_inet6_port_without_host_listens_on_ipv6_loopback_only(tmp_path: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = free_port()
    site = make_site(tmp_path, {"milter": {"socket": f"inet6:{port}"}})
    with running(site, wait_for=("::1", port)):
        assert listening("tcp6", port) == ["00000000000000000000000001000000"]  # ::1
        assert listening("tcp", port) == []


def test_inet_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        site = make_site(tmp_path, {"milter": {"socket": f"inet:{port}"}})
        result = smtpguard(site, "run", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"smtpguard: cannot bind inet:{port}@127.0.0.1: Address already in use"
    )
    assert "Traceback" not in result.stderr


# --- a unix socket's path -----------------------------------------------------------


def test_live_socket_is_never_taken_over(site: Site, service: Running) -> None:
    before = site.socket.stat()
    result = smtpguard(site, "run", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"smtpguard: socket {site.socket} is in use by a running milter"
    after = site.socket.stat()
    assert (after.st_ino, after.st_mode, after.st_gid) == (
        before.st_ino,
        before.st_mode,
        before.st_gid,
    )
    with service.session() as s:  # the running one still serves on it
        s.connect(UNTRUSTED_IP)
        assert s.helo("mail.sender.example").kind == "continue"


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a killed milter leaves it."""
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    stale_socket(site.socket)
    assert stat.S_IMODE(site.socket.stat().st_mode) != 0o660
    with running(site) as service:
        assert stat.S_IMODE(site.socket.stat().st_mode) == 0o660  # a new one (inodes recur)
        with service.session() as s:
            s.connect(UNTRUSTED_IP)
            assert s.helo("mail.sender.example").kind == "continue"
        assert "removed stale socket" in service.log()


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    site.socket.write_text("not a socket")
    result = smtpguard(site, "run", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"smtpguard: cannot bind {site.socket}: File exists and is not a socket"
    )
    assert site.socket.read_text() == "not a socket"


def test_socket_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the socket directory should be")
    path = blocker / "sub" / "s.sock"
    site = make_site(tmp_path, {"milter": {"socket": f"unix:{path}"}})
    result = smtpguard(site, "run", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"smtpguard: cannot bind {path}: Not a directory"


def test_clean_stop_removes_the_socket(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    process = subprocess.Popen(run_argv(site), stderr=subprocess.PIPE, text=True)
    wait_for_file(site.socket, process)
    assert stop(process) == 0
    assert not site.socket.exists()


# --- created safe -------------------------------------------------------------------


def test_socket_mode_under_umask_000_from_creation(tmp_path: Path) -> None:
    """libmilter binds with the process umask; bind_unix must already give the mode.

    The control socket, bound by libmilter without bind_unix, shows what the test
    would see if the umask were not handled (0777 under umask 000).
    """
    script = textwrap.dedent(
        """
        import os, sys
        import milter
        from smtpguard.sockets import bind_unix
        os.umask(0)
        safe, control = sys.argv[1], sys.argv[2]
        milter.setconn("unix:" + safe)
        milter.register("t")
        bind_unix(0o660, lambda: milter.opensocket(False))
        print(oct(os.stat(safe).st_mode & 0o777))
        """
    )
    control = textwrap.dedent(
        """
        import os, sys
        import milter
        os.umask(0)
        milter.setconn("unix:" + sys.argv[1])
        milter.register("t")
        milter.opensocket(False)
        print(oct(os.stat(sys.argv[1]).st_mode & 0o777))
        """
    )
    safe, plain = tmp_path / "safe.sock", tmp_path / "plain.sock"
    out = subprocess.run(
        [sys.executable, "-c", script, str(safe), str(plain)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "0o660"
    out = subprocess.run(
        [sys.executable, "-c", control, str(plain)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "0o777"


def test_service_socket_never_wider_than_configured(tmp_path: Path) -> None:
    """Started under umask 000, the socket's mode is 0660 from the first stat on."""
    site = make_site(tmp_path)
    previous = site.socket
    for attempt in range(3):
        # A fresh path each time: the previous service takes a few seconds to stop.
        path = tmp_path / f"run{attempt}" / "s.sock"
        site.config.write_text(site.config.read_text().replace(str(previous), str(path)))
        previous = path
        process = subprocess.Popen(
            run_argv(site),
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=lambda: os.umask(0),  # noqa: PLW1509 - no threads in the test
        )
        STOPPING.append(process)
        seen: set[int] = set()
        samples, end = 0, time.monotonic() + 15
        # From the first moment the file exists until its group is the final one.
        while samples < 1000:
            try:
                info = path.stat()
            except FileNotFoundError:
                assert process.poll() is None
                assert time.monotonic() < end
                continue
            seen.add(stat.S_IMODE(info.st_mode))
            samples += 1
            if POSTFIX_GID is not None and info.st_gid == POSTFIX_GID:
                break
        process.send_signal(signal.SIGTERM)
        assert seen == {0o660}
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750


@pytest.mark.skipif(POSTFIX_GID is None, reason="no group postfix on this host")
def test_created_directory_belongs_to_the_service_user(open_dir: Path) -> None:
    """Directory 0750, group postfix (auto), owner the user the service drops to, who
    can then remove the socket at a clean stop."""
    state = open_dir / "state"
    state.mkdir()
    shutil.chown(state, "nobody")
    path = open_dir / "spool" / "smtpguard" / "smtpguard.sock"
    site = make_site(
        open_dir,
        {
            "milter": {"socket": f"unix:{path}", "user": "nobody"},
            "state": {"path": str(state / "state.sqlite")},
        },
    )
    process = subprocess.Popen(run_argv(site), stderr=subprocess.PIPE, text=True)
    wait_for_file(path, process)
    directory = path.parent.stat()
    assert stat.S_IMODE(directory.st_mode) == 0o750
    assert (directory.st_uid, directory.st_gid) == (pwd.getpwnam("nobody").pw_uid, POSTFIX_GID)
    sock = path.stat()
    assert stat.S_IMODE(sock.st_mode) == 0o660
    assert sock.st_gid == POSTFIX_GID
    assert stop(process) == 0
    assert not path.exists()


def test_a_socket_swapped_for_a_symlink_changes_nothing_it_points_at(tmp_path: Path) -> None:
    """The socket's directory may be the service user's: between bind and chown it can
    put a link to a file of root's there. Root must neither give that file the
    socket's group nor its mode."""
    secret = tmp_path / "shadow"
    secret.write_text("root's\n")
    secret.chmod(0o600)
    path = tmp_path / "s.sock"
    path.symlink_to(secret)
    nobody = pwd.getpwnam("nobody")
    owners = Ownership(uid=nobody.pw_uid, gid=nobody.pw_gid, directory_uid=-1)
    with pytest.raises(StartError, match="replaced by a symbolic link"):
        secure_unix(path, 0o666, owners)
    info = secret.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o600)


def test_auto_group_missing_leaves_the_group_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.sock"
    stale_socket(path)
    created = path.stat().st_gid
    owners = resolve(MilterConfig(socket_group="auto"), auto_group="no-such-group-here")
    with caplog.at_level(logging.INFO, logger="smtpguard"):
        secure_unix(path, 0o660, owners, auto_group="no-such-group-here")
    assert path.stat().st_gid == created
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    name = grp.getgrgid(created).gr_name
    assert caplog.messages == [
        f"no group no-such-group-here on this host: socket left with group {name}"
    ]


@pytest.mark.skipif(POSTFIX_GID is None, reason="no group postfix on this host")
def test_auto_group_we_may_not_give_is_left_when_not_root(open_dir: Path) -> None:
    """Not root and not in group postfix (a service started as its own user): the socket
    keeps the service's group, and the log says why, instead of failing to start."""
    nobody = pwd.getpwnam("nobody")
    shutil.chown(open_dir, "nobody")
    path = open_dir / "s.sock"
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes nobody; what it saw goes back through the pipe
        code = 1
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            records: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]  # capture what the handler emits
            logging.getLogger("smtpguard").addHandler(handler)
            logging.getLogger("smtpguard").setLevel(logging.INFO)
            stale_socket(path)
            secure_unix(path, 0o660, resolve(MilterConfig(socket_group="auto")))
            info = path.stat()
            os.write(writer, f"{info.st_gid} {stat.S_IMODE(info.st_mode):o}\n".encode())
            os.write(writer, "\n".join(records).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as source:
        gid_mode, *messages = source.read().splitlines()
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert gid_mode == f"{nobody.pw_gid} 660"
    group = grp.getgrgid(nobody.pw_gid).gr_name
    assert messages == [
        f"cannot give {path} to group postfix (not root): socket left with group {group}"
    ]
