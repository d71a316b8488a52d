"""The milter's listening socket, before and after libmilter binds it.

libmilter (``smfi_opensocket``) binds what it is given and nothing more, so what makes
the socket safe happens here:

* ``inet:PORT`` without a host would listen on every interface (libmilter binds
  ``INADDR_ANY``, ``in6addr_any`` for ``inet6:``), while the config loader treats it as
  loopback: :func:`libmilter_address` writes the loopback host out.
* A unix socket path that exists is never taken over while something answers on it
  (:func:`claim_unix`); a stale file (connection refused) is removed. libmilter's own
  "remove the old socket" would take a running milter's socket away from it.
* A unix socket is created under a umask that already gives its final mode
  (:func:`bind_unix`): libmilter binds with the process umask and the mode is only set
  afterwards, so under umask 000 it would be world-writable until then.
* Owner, group and mode are set right after the bind (:func:`secure_unix`); a missing
  socket directory is created 0750 with the socket's group (so the MTA can traverse
  it) and owned by the service user (so it can remove its socket when it stops).

Everything that stops start-up raises :class:`StartError` with the one line to print.
This module does not import libmilter: the caller passes the bind in as a function.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import ipaddress
import logging
import os
import pwd
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtpguard.config import MilterConfig

log = logging.getLogger("smtpguard")

#: What ``socket_group = "auto"`` means: the group Postfix's smtpd runs as.
AUTO_GROUP = "postfix"
#: The socket directory's mode when smtpguard creates it: the group may traverse.
DIRECTORY_MODE = 0o750
#: Hosts written out for ``inet:PORT`` / ``inet6:PORT``, as the config loader assumes.
LOOPBACK = {"inet": "127.0.0.1", "inet6": "::1"}


class StartError(Exception):
    """The service cannot start; the message is the line to print (exit code 2)."""


class SocketInUse(StartError):
    """Something answers on the unix socket path: another milter is running."""


def libmilter_address(spec: str) -> str:
    """The address handed to libmilter: ``inet:PORT`` with its loopback host written out."""
    kind, _, rest = spec.partition(":")
    if kind not in LOOPBACK:
        return spec
    port, _, host = rest.partition("@")
    return f"{kind}:{port}@{host or LOOPBACK[kind]}"


def host_addresses(host: str) -> set[str]:
    """The addresses an inet milter host stands for, as text: an MTA's spelling of
    smtpguard's socket (``localhost``, ``[::1]``, ``127.1``) is the same socket."""
    host = host.strip().strip("[]").lower()
    if host in ("", "localhost", "localhost.localdomain"):
        return {"127.0.0.1", "::1"}
    if host in ("ip6-localhost", "ip6-loopback"):
        return {"::1"}
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        # inet_aton's forms too (127.1), which the resolver takes.
        return {socket.inet_ntoa(socket.inet_aton(host))}
    except OSError:
        return {host}


def unix_path(spec: str) -> Path | None:
    kind, _, rest = spec.partition(":")
    return Path(rest) if kind in ("unix", "local") else None


def claim_unix(path: Path, *, remove_stale: bool = True) -> None:
    """Make sure nothing serves on ``path``; remove a stale socket file if asked.

    Raises :class:`SocketInUse` when a connection succeeds (or hangs: a listener with a
    full backlog is a live one), :class:`StartError` for a path that is not a socket
    or cannot be examined. Nothing is changed in either case.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartError(f"cannot bind {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise StartError(f"cannot bind {path}: File exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            if remove_stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                log.info("removed stale socket %s (nothing answered on it)", path)
            return
        except (TimeoutError, BlockingIOError):
            pass
        except OSError as exc:
            raise StartError(f"cannot bind {path}: {exc.strerror}") from None
    raise SocketInUse(f"socket {path} is in use by a running milter")


@dataclass(frozen=True, slots=True)
class Ownership:
    """Resolved ids for the socket (-1: leave as created) and its directory's owner."""

    uid: int
    gid: int
    directory_uid: int
    #: ``socket_group = "auto"``: a group that cannot be given is left as created.
    auto: bool = False
    #: Why the group is left as created, logged once the socket exists.
    note: str = ""

    def without_group(self, note: str) -> Ownership:
        return Ownership(self.uid, -1, self.directory_uid, self.auto, note)


def resolve(config: MilterConfig, auto_group: str = AUTO_GROUP) -> Ownership:
    """User and group names to ids; names were checked at load, but may be gone now."""
    try:
        uid = pwd.getpwnam(config.socket_owner).pw_uid if config.socket_owner else -1
        directory_uid = pwd.getpwnam(config.user).pw_uid if config.user else -1
    except KeyError as exc:
        raise StartError(f"no such user on this system: {exc.args[0]}") from None
    group = config.socket_group
    if group == "auto":
        try:
            return Ownership(uid, grp.getgrnam(auto_group).gr_gid, directory_uid, auto=True)
        except KeyError:
            note = f"no group {auto_group} on this host"
            return Ownership(uid, -1, directory_uid, auto=True, note=note)
    try:
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError:
        raise StartError(f"no such group on this system: {group!r}") from None
    return Ownership(uid, gid, directory_uid)


def _chown(path: Path, uid: int, owners: Ownership, auto_group: str) -> Ownership:
    """chown; for "auto", a group we may not give (not root, not a member) is dropped.

    Never through a symbolic link: the socket's directory may belong to the service
    user, who could put a link to /etc/shadow where root is about to give the socket
    its owner and group.
    """
    if uid == -1 and owners.gid == -1:
        return owners
    try:
        os.chown(path, uid, owners.gid, follow_symlinks=False)
    except PermissionError:
        if not owners.auto:
            raise
        # Not root: for "auto" the group then stays the service's own, which the MTA's
        # user can join instead (contrib/systemd/smtpguard.service).
        owners = owners.without_group(f"cannot give {path} to group {auto_group} (not root)")
        if uid != -1:
            os.chown(path, uid, -1, follow_symlinks=False)
    return owners


def prepare_directory(path: Path, owners: Ownership, auto_group: str = AUTO_GROUP) -> Ownership:
    """Create the socket's directory if missing: 0750, the socket's group, the service
    user as owner. An existing directory is left exactly as it is."""
    directory = path.parent
    if directory.is_dir():
        return owners
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(directory, DIRECTORY_MODE)
        # mkdir applies the umask: set the mode itself, never wider than asked.
        _chmod(directory, DIRECTORY_MODE)
        return _chown(directory, owners.directory_uid, owners, auto_group)
    except OSError as exc:
        raise StartError(f"cannot bind {path}: {exc.strerror}") from None


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def bind_unix(mode: int, bind: Callable[[], None]) -> None:
    """Run ``bind`` (libmilter's opensocket) under a umask that gives ``mode`` at once."""
    with umask(0o777 & ~mode):
        bind()


def secure_unix(path: Path, mode: int, owners: Ownership, auto_group: str = AUTO_GROUP) -> None:
    """Owner and group, then mode, of the bound socket; log a group left as created."""
    try:
        owners = _chown(path, owners.uid, owners, auto_group)
        _chmod(path, mode)
    except OSError as exc:
        raise StartError(f"cannot set owner, group or mode of {path}: {exc.strerror}") from None
    if owners.note:
        log.info("%s: socket left with group %s", owners.note, _group_name(path.stat().st_gid))


def _chmod(path: Path, mode: int) -> None:
    # fchmodat(AT_SYMLINK_NOFOLLOW): Python raises NotImplementedError where the path
    # is a symbolic link (Linux cannot change a link's mode), which here means that
    # something replaced what was just created.
    try:
        os.chmod(path, mode, follow_symlinks=False)
    except NotImplementedError:
        raise OSError(errno.ELOOP, f"{path} was replaced by a symbolic link") from None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def bind_error(address: str) -> str:
    """Why libmilter could not bind ``address`` (it reports no errno): the same bind
    tried here, its error text. ``address`` is libmilter's form."""
    path = unix_path(address)
    target: str | tuple[Any, ...]
    if path is not None:
        family, target = socket.AF_UNIX, str(path)
    else:
        kind, _, rest = address.partition(":")
        port, _, host = rest.partition("@")
        family = socket.AF_INET6 if kind == "inet6" else socket.AF_INET
        try:
            info = socket.getaddrinfo(host.strip("[]"), int(port), family, socket.SOCK_STREAM)
        except (OSError, ValueError) as exc:
            return str(exc)
        target = info[0][4]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(target)
    except OSError as exc:
        return exc.strerror or str(exc)
    if path is not None:
        # The bind made a socket file of our own: remove it again.
        with contextlib.suppress(OSError):
            path.unlink()
    return "libmilter could not open it (see its syslog message)"


def listening_sockets() -> set[int]:
    """This process's listening sockets, as file descriptor numbers.

    libmilter keeps the socket it opens to itself; compared before and after the bind,
    this finds it (see :mod:`smtpguard.supervisor` for why it must be found).
    """
    found = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            probe = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                found.add(fd)
        except OSError:
            pass
        finally:
            probe.detach()
    return found


def remove_unix(path: Path, inode: tuple[int, int]) -> None:
    """Remove our socket at a clean stop, unless the path now holds another file."""
    try:
        info = path.lstat()
        if (info.st_dev, info.st_ino) == inode:
            path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot remove socket %s: %s", path, exc.strerror)
