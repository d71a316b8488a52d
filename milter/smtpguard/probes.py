"""What ``run`` and ``check-config`` find wrong beyond the config file itself.

Every problem is a :class:`~smtpguard.config.ConfigError`, printed as
``FILE: dotted.key: problem`` like a load error.

* :func:`user_problems`: ``milter.user`` exists.
* :func:`file_problems`: the SQLite files (``directory.path`` must be readable,
  ``state.path`` readable and writable, or creatable) and the files a reload reads,
  checked as the user the service runs as. When started as root with ``milter.user``
  set, the checks run in a child process that has become that user: a check made as
  root would pass for files the service cannot open, and a file SQLite created for it
  would belong to root.
* :func:`socket_problems`: a unix socket mode the MTA cannot connect through, or one
  every local user can.
* :func:`backend_problems`: one harmless request to each configured network backend
  (clamd ``PING``, rspamd ``GET /ping``, Redis ``PING``, one DNS query per nameserver),
  with the configured timeouts, through the clients the checks use, and one run of the
  virus hook on a message of a few clean octets.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import http.client
import json
import logging
import os
import pwd
import re
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import dns as dnspython
import redis

import smtpguard
from smtpguard.app import counter_path, redis_seen_file
from smtpguard.config import Config, ConfigError
from smtpguard.counters import CounterError, RedisCounter, SizeBuckets, redis_client
from smtpguard.directory import DirectoryError, alias_chain_problems, login_domains
from smtpguard.dns import Answer, Status, system_nameservers
from smtpguard.dnswire import UdpTransport
from smtpguard.endpoint import Endpoint
from smtpguard.logsetup import LogSetupError, syslog_handler
from smtpguard.scanners import clamd, command, connect, failure_text
from smtpguard.scanners.clamd import ping
from smtpguard.scanners.rspamd import RspamdClient
from smtpguard.state import REDIS_MARKER, RedisBlacklist, redis_blacklist_key

#: Asked of each nameserver: every recursive resolver can answer it.
DNS_PROBE = (".", "NS")

Problem = tuple[str, str]


def user_problems(config: Config) -> list[ConfigError]:
    """``milter.user`` must exist. Checked here, not at load: the sample config names
    the user scripts/start.sh creates, and must load on any host."""
    user = config.milter.user
    try:
        if user:
            pwd.getpwnam(user)
    except KeyError:
        return [ConfigError(config.file, "milter.user", f"no such user on this system: {user!r}")]
    return []


def site_problems(config: Config) -> list[ConfigError]:
    """A site with no domain of its own refuses every recipient of an untrusted client
    as relaying (host_denies_relay): a valid configuration, but never a working one
    for a host that receives mail."""
    site = config.site
    if site.local_domains or site.relay_domains or config.check("relay").mode == "off":
        return []
    text = (
        "empty, and so is site.relay_domains: every recipient of an untrusted client is"
        " refused as relaying (host_denies_relay); list the domains this host receives"
        " mail for"
    )
    return [ConfigError(config.file, "site.local_domains", text)]


def key_problems(config: Config) -> list[ConfigError]:
    """A config file that holds ``content.loop_marker_key`` and that every user may
    read: the key is what keeps the marker's recipients hidden and unforgeable (review
    rev107 F4; OpenDKIM refuses a signing key others can read)."""
    if not config.content.loop_marker_key:
        return []
    try:
        path = Path(config.file).resolve()
        mode = path.stat().st_mode
        # Readable by others only where they may also reach it (review rev108 F5: a
        # 0644 file in a 0700 folder was refused).
        hidden = any(not d.stat().st_mode & stat.S_IXOTH for d in path.parents)
    except OSError:
        return []  # the file was read a moment ago; what is gone now is another problem
    if hidden or not mode & stat.S_IROTH:
        return []
    text = (
        f"{config.file} holds the key and every user may read it (mode"
        f" {stat.S_IMODE(mode):04o}): chmod o-r it (0640, group of the service user);"
        " the shipped systemd unit does not start the service until then"
    )
    return [ConfigError(config.file, "content.loop_marker_key", text)]


def config_owner_problems(config: Config) -> list[ConfigError]:
    """A config file (or its folder) that others may write: whoever can write it
    chooses ``milter.user``, the virus hook's command and every file the service reads
    as root (review rev179 F4: a 0666 file owned by nobody passed; Postfix's ``postfix
    check`` warns of the same for its files, OpenDKIM refuses such keys). Its owner
    must be root or the user running this, and it writable by no group but root's."""
    problems = []
    path = Path(config.file)
    for what, where in (("the config file", path), ("its folder", path.resolve().parent)):
        try:
            st = where.stat()
        except OSError:
            continue
        why = []
        if st.st_uid not in (0, os.geteuid()):
            why.append(f"owned by {_user_name(st.st_uid)}")
        if st.st_mode & stat.S_IWOTH and not (where.is_dir() and st.st_mode & stat.S_ISVTX):
            why.append("writable by every user")
        elif st.st_mode & stat.S_IWGRP and st.st_gid != 0:
            why.append(f"writable by group {_group_name(st.st_gid)}")
        if why:
            problems.append(
                ConfigError(
                    config.file,
                    "",
                    f"{what} {where} is {' and '.join(why)}: whoever can change it chooses"
                    " the user the service runs as, the virus hook's command and the files"
                    " read as root; make it root's, writable by root only (0640 or 0644)",
                )
            )
    return problems


def root_notes(config: Config) -> list[ConfigError]:
    """Root with no ``milter.user``: the service would parse every message as root
    (review rev179 F4: not a word said). A warning of ``run``, not a problem: a test or
    a container may mean it."""
    if os.geteuid() != 0 or config.milter.user:
        return []
    text = (
        "note: empty: run as root, the service stays root and reads untrusted mail with"
        " every privilege; set the user it drops to (scripts/start.sh makes smtpguard)"
    )
    return [ConfigError(config.file, "milter.user", text)]


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def exemption_notes(config: Config) -> list[ConfigError]:
    """Exemptions whose ``ip_files`` hold no address for now: they match no client
    until the files do (review rev224 M2: a partner list emptied refused the start and
    every reload, and the partner removed stayed exempt)."""
    return [
        ConfigError(
            config.file,
            f"policy.exempt[{i}].ip_files",
            f"note: {', '.join(ex.networks.sources)} hold no address: exemption"
            f" {ex.name!r} matches no client until they do",
        )
        for i, ex in enumerate(config.policy.exempt)
        if ex.networks.sources and not ex.networks and not ex.host_suffixes
    ]


def state_notes(config: Config) -> list[ConfigError]:
    """Not problems: what the start will do that an operator should know before it. A
    missing state file is created empty at start (logged as a WARNING then), right on
    a first start; after a move or a typo in ``state.path`` it is a blacklist lost
    (review rev83: check-config said only OK)."""
    path = config.state.path
    if config.state.backend != "embedded" or path.exists():
        return []
    text = (
        f"note: {path} does not exist; the start creates it, an empty blacklist (right on"
        " a first start; otherwise check the path: the entries of the old file would not"
        " be there)"
    )
    return [ConfigError(config.file, "state.path", text)]


def directory_notes(config: Config) -> list[ConfigError]:
    """Not problems: alias loops and chains longer than a lookup follows in the
    directory file (an import refuses them; an older one may have let one in). Mail to
    those addresses is deferred (database_temp_error), not the service stopped."""
    directory = config.directory
    if directory.backend != "sqlite" or not directory.path.exists():
        return []
    try:
        found = alias_chain_problems(directory.path, config.site.recipient_delimiter)
        logins = login_domains(directory.path)
    except DirectoryError:
        return []  # file_problems names what is wrong with the file
    notes = [
        ConfigError(
            config.file,
            "directory.path",
            f"note: {directory.path}: {what}: mail to it is deferred (database_temp_error)"
            " until the directory is imported again without it",
        )
        for what in found[:20]
    ]
    # Review rev198 L2: a login kept from another provider can never send (the login's
    # domain is checked first), and its client retries for ever.
    foreign = [login for login, domain in logins if not config.site.is_local(domain)]
    notes += [
        ConfigError(
            config.file,
            "directory.path",
            f"note: {directory.path}: login {login!r} is in a domain site.local_domains"
            " does not list: every message it sends gets domain_auth_error",
        )
        for login in foreign[:20]
    ]
    return notes


def cpu_problems(config: Config) -> list[ConfigError]:
    """CPUs ``milter.cpu_affinity`` lists that this process may not run on (the
    service would leave those workers unbound). Host-specific, like the user."""
    listed = config.milter.cpu_affinity
    if not isinstance(listed, tuple):
        return []
    allowed = os.sched_getaffinity(0)
    missing = [cpu for cpu in listed if cpu not in allowed]
    if not missing:
        return []
    have = ",".join(map(str, sorted(allowed)))
    text = f"CPU {','.join(map(str, missing))} not among the CPUs this host allows ({have})"
    return [ConfigError(config.file, "milter.cpu_affinity", text)]


def file_problems(config: Config, become: Callable[[str], None] | None = None) -> list[ConfigError]:
    """Problems with the files the service opens, as ``milter.user`` if it exists.

    ``become`` switches the child process to that user (the service's
    ``drop_privileges``); without it, or when no switch is needed, the checks run here.
    """
    # The virus hook's first octets, read here (as root: a program the service user may
    # execute but not read is fine unless it is a script, review rev82 F5).
    hook = _program_head(config)
    found = _as_service_user(config, become, lambda: _files(config, hook))
    return [ConfigError(config.file, key, message) for key, message in found]


def _as_service_user(
    config: Config, become: Callable[[str], None] | None, check: Callable[[], list[Problem]]
) -> list[Problem]:
    """``check()`` in a child process that ``become`` made ``milter.user``, where this
    one is root and the user another; here otherwise."""
    user = config.milter.user
    try:
        uid = pwd.getpwnam(user).pw_uid if user else 0
    except KeyError:
        uid = 0  # user_problems names it
    if become is not None and uid != 0 and os.geteuid() == 0:
        return _in_child(lambda: become(user), check)
    return check()


def _in_child(become: Callable[[], None], check: Callable[[], list[Problem]]) -> list[Problem]:
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(reader)
            logging.disable()  # the service's own log is the parent's
            try:
                become()
                found = check()
            except BaseException as exc:  # noqa: BLE001 - reported by the parent
                found = [("milter.user", f"cannot check as that user: {exc}")]
            with os.fdopen(writer, "wb") as out:
                out.write(json.dumps(found).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as source:
        data = source.read()
    os.waitpid(pid, 0)
    try:
        return [(str(key), str(message)) for key, message in json.loads(data)]
    except (ValueError, TypeError):
        return [("milter.user", "the check as that user ended without an answer")]


def _program_head(config: Config) -> bytes | None:
    """The first octets of the virus hook's program, if it is one and can be read."""
    if config.virus.backend != "command" or not config.virus.command:
        return None
    try:
        found = shutil.which(config.virus.command[0])
        if found is None or not os.path.isfile(found):
            return None  # a FIFO would hold the check (review rev84 F6)
        with open(found, "rb") as file:
            return file.read(_HEAD)
    except OSError:
        return None


#: Octets of a program read to tell a script (#!) from an executable (ELF).
_HEAD = 256


def _files(config: Config, hook: bytes | None = None) -> list[Problem]:
    found: list[Problem] = []
    if config.directory.backend == "sqlite":
        found += _readable_db("directory.path", config.directory.path, "users")
    if config.state.backend == "embedded":
        found += _writable_db("state.path", config.state.path)
        if config.milter.workers > 1:
            found += _shared_counters(counter_path(config))
    elif not config.state.redis_blacklist_required:
        found += _seen_file(config)
    found += _reload_files(config)
    if config.virus.backend == "command" and config.virus.command:
        found += _program(config, config.virus.command[0], hook)
    return found


def _seen_file(config: Config) -> list[Problem]:
    """Where the host remembers the Redis blacklist's marker, as the service user sees
    it (review rev101 F3, rev102 F2: asked as root, a folder the service may not enter
    passed, and the service took a list Redis lost for an empty one)."""
    path = redis_seen_file(config)
    whom = config.milter.user or "the service"
    try:
        if path.exists():
            return []
        # The service makes it, and missing folders, as the embedded file's.
        place = _nearest_existing(path)
        if not place.is_dir():
            why = f"{place} is not a folder"
        elif os.access(place, os.W_OK | os.X_OK):
            return []
        else:
            why = f"may not write {place}"
    except OSError as exc:
        why = exc.strerror or str(exc)
    return [
        (
            "state.path",
            f"{whom} cannot keep {path} ({why}), where this host remembers having seen the"
            " Redis blacklist's marker: after a restart it would take a list Redis lost"
            " for an empty one; let it write that folder, or set [state]"
            " redis_blacklist_required = true",
        )
    ]


def _program(config: Config, program: str, head: bytes | None) -> list[Problem]:
    """The virus hook must be a program the service can run (review rev80 F2: a
    missing one deferred every message, or with on_temp_error = "pass" let every one
    through unscanned). Looked up as the service does: on PATH unless it names a
    path (this process's PATH; a systemd unit has its own)."""
    whom = config.milter.user or "the service"
    try:
        why = _program_problem(program, whom, head)
    except OSError as exc:  # a directory on the way it may not search (review rev81 F2)
        why = f"{whom} cannot reach {program}: {exc.strerror or exc}"
    if why is None:
        return []
    return [
        (
            "virus.command",
            f"{why}: every message would get the scanner's failure"
            " ([checks.virus] on_temp_error decides: deferred, or passed unscanned)",
        )
    ]


def _program_problem(program: str, whom: str, head: bytes | None) -> str | None:
    """What keeps ``whom`` from running ``program``; ``head``: its first octets as
    check-config itself read them (None: it could not)."""
    if os.sep in program and not os.path.isabs(program):
        # Found from the service's working directory: "/" under systemd, wherever
        # check-config happens to run (review rev81 F3).
        return f"{program} is a relative path: give the full path"
    found = shutil.which(program)
    if found is None:
        where = Path(program) if os.sep in program else None
        if where is None:
            return f"{program} is not on PATH ({os.environ.get('PATH', os.defpath)})"
        if not where.exists():
            return f"{program} does not exist"
        if where.is_dir():
            return f"{program} is a directory"
        return f"{whom} may not execute {program}"
    if not os.path.isfile(found):
        # A FIFO or a device: execve() refuses it (review rev85 F4).
        return f"{program} is not a regular file"
    if head is None:
        return None
    if not head.startswith(b"#!"):
        if head.startswith(b"\x7fELF"):
            return None
        # execve() runs neither an empty file nor text without "#!" (ENOEXEC): the
        # service has no shell to fall back on (review rev82 F6).
        return f"{program} is neither a script starting with #! nor an executable (ELF)"
    return _script_problem(program, found, whom, head)


def _script_problem(program: str, found: str, whom: str, head: bytes) -> str | None:
    """What keeps a #! script from running: its reader may not read it, its
    interpreter is missing or not executable, its #! line ends in CR."""
    if not os.access(found, os.R_OK):
        return f"{whom} may execute {program} but not read it: as a script (#!) it cannot run"
    line = head[2:].split(b"\n", 1)[0].split(b"\0", 1)[0]
    # The kernel splits the line at spaces and tabs only: a carriage return ending the
    # interpreter's name is part of it (review rev82 F6); after an argument it is the
    # argument's (rev84 F2: "#!/usr/bin/perl -w" with CRLF runs).
    words = [word for word in re.split(rb"[ \t]+", line) if word]
    first = words[0] if words else b""
    # env takes its one argument for the program's name ("python3\r"), unless it
    # splits it itself (-S) (review rev85 F2).
    named_by_env = (
        os.path.basename(first) == b"env" and len(words) == 2 and not words[1].startswith(b"-")
    )
    if first.endswith(b"\r") or (named_by_env and words[1].endswith(b"\r")):
        return f"{program} has a #! line ending in a carriage return (CRLF): it cannot run"
    interpreter = os.fsdecode(first)
    if not interpreter or not os.path.isfile(interpreter):
        return f"{program} is a script whose interpreter {interpreter!r} does not exist"
    if not os.access(interpreter, os.X_OK):
        return f"{program} is a script whose interpreter {interpreter} {whom} may not execute"
    return None


def _readable_db(key: str, path: Path, table: str) -> list[Problem]:
    # A missing directory file is build_runtime's error, with how to create it.
    if not path.exists():
        return []
    try:
        with path.open("rb"):
            pass
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
        ) as db:
            db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()  # noqa: S608 - constant
    except OSError as exc:
        return [(key, f"cannot read {path} as {_user_name(os.geteuid())}: {exc.strerror}")]
    except sqlite3.Error as exc:
        return [(key, f"cannot read {path} as {_user_name(os.geteuid())}: {exc}")]
    return []


def _writable_db(key: str, path: Path) -> list[Problem]:
    if not path.exists():
        # The service creates it (and missing directories) at first use.
        place = _nearest_existing(path)
        try:
            with tempfile.TemporaryFile(dir=place):
                pass
        except OSError as exc:
            # Checked as the user the service runs as (review rev121 F8: a root
            # operator read "Permission denied" on a directory root can write).
            as_user = _user_name(os.geteuid())
            return [(key, f"cannot create {path} as {as_user}: {place}: {exc.strerror}")]
        return []
    try:
        with path.open("r+b"):
            pass
        with contextlib.closing(sqlite3.connect(path, timeout=2.0)) as db:
            # The write lock: what adding to the blacklist and WAL mode need.
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
    except OSError as exc:
        return [(key, f"cannot write {path} as {_user_name(os.geteuid())}: {exc.strerror}")]
    except sqlite3.Error as exc:
        return [(key, f"cannot write {path} as {_user_name(os.geteuid())}: {exc}")]
    return []


def _shared_counters(path: Path) -> list[Problem]:
    """The workers' same-size file beside the state file, which the service makes in the
    same folder (checked with it). One it may not write (review rev226 F1: made by root)
    defers every message that reaches end of message."""
    try:
        with path.open("r+b"):
            pass
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [
            (
                "state.path",
                f"cannot write {path} as {_user_name(os.geteuid())}: {exc.strerror}: the"
                " workers' same-size counts would fail and every message be deferred"
                " (database_temp_error); give it to that user, or remove it (the service"
                " makes it again, the counts empty)",
            )
        ]
    return []


def _nearest_existing(path: Path) -> Path:
    """The closest folder above ``path`` that exists (or what stands in its place)."""
    place = path.parent
    while not place.exists():
        place = place.parent
    return place


def _reload_files(config: Config) -> list[Problem]:
    """What the service reads after the privilege drop besides the databases: the config
    and rule files on a reload (SIGHUP), and modules imported on first use (dnspython
    imports a record type's module when it first parses one)."""
    reload = "a reload (SIGHUP) would fail"
    wanted: list[tuple[str, Path, str]] = [
        ("milter.user", config.file, reload),
        ("replies.table", config.replies.table, reload),
        ("antispam.rules", config.antispam.rules, reload),
        ("milter.user", Path(smtpguard.__file__).parent, "its modules cannot be imported"),
        ("milter.user", Path(dnspython.__file__ or "").parent, "DNS answers would fail"),
        (
            "milter.user",
            Path(os.__file__).parent,
            "modules of Python's own library imported on first use would fail",
        ),
    ]
    if config.path != config.file:
        # A reload reads the config by the path given, links and all (review rev58:
        # a link in a directory only root may search failed every reload).
        wanted.append(("milter.user", config.path, reload))
    generic = config.smtpport.generic
    if generic is not None:
        wanted.append(("smtpport.generic_patterns", generic.file, reload))
    # Local IP lists are read again on every reload too.
    wanted += [(f"dnsbl.local[{i}].file", x.file, reload) for i, x in enumerate(config.dnsbl.local)]
    wanted += [
        (f"policy.exempt[{i}].ip_files", Path(source), reload)
        for i, exemption in enumerate(config.policy.exempt)
        for source in exemption.networks.sources
    ]
    whom = config.milter.user or "the service"
    found: list[Problem] = []
    for key, path, consequence in wanted:
        if not path.is_absolute():
            continue
        try:
            mode = os.R_OK | (os.X_OK if path.is_dir() else 0)
        except OSError:  # a directory on the way it may not search: access() says no
            mode = os.R_OK
        if not os.access(path, mode):
            found.append((key, f"{whom} cannot read {path}: {consequence}"))
    return found


def socket_problems(config: Config) -> list[ConfigError]:
    """A unix socket's ``milter.socket_mode`` that loads but fails or exposes the
    milter. Reported here, not refused at load: an MTA that is the socket's owner
    (``socket_owner``) connects without the group's write bit."""
    milter = config.milter
    found = []
    if milter.mta == "sendmail":
        # The sendmail-config line refuses it; say so before the MTA is set up.
        from smtpguard.sendmail import sendmail_socket_problem  # noqa: PLC0415 - cycle-free, rare

        problem = sendmail_socket_problem(milter.socket)
        if problem is not None:
            found.append(ConfigError(config.file, "milter.socket", f"for Sendmail: {problem}"))
    if not milter.socket.startswith(("unix:", "local:")):
        return found
    where = _socket_directory_problem(Path(milter.socket.partition(":")[2]))
    if where is not None:
        found.append(ConfigError(config.file, "milter.socket", where))
    mode = milter.socket_mode
    texts = []
    # connect() on a unix socket needs write permission on it.
    if not mode & 0o020 and not (milter.socket_owner and mode & 0o200):
        texts.append(
            f"{mode:04o} gives the socket's group no write access, so the MTA (a member"
            " of that group) cannot connect; use 0660, or make the MTA's user socket_owner"
        )
    if mode & 0o002:
        texts.append(
            f"{mode:04o} is world-writable: every local user could talk to the milter"
            " directly; use 0660"
        )
    return found + [ConfigError(config.file, "milter.socket_mode", text) for text in texts]


def _socket_directory_problem(path: Path) -> str | None:
    """Whether this process could bind the socket: ``run`` binds it as the user that
    starts it (root before it drops privileges, or the unit's User=), as check-config
    runs (ExecStartPre, ExecReload). Found by review: check-config passed and ``run``
    then failed to bind, under a unit restarting it every two seconds."""
    directory = path.absolute().parent
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create the socket's directory {directory}: {existing} is no directory"
    if existing == directory and directory.stat().st_mode & stat.S_IWOTH:
        # Review rev179 F10: another user may bind the name first (run then refuses to
        # start) or stand in for smtpguard.
        return (
            f"the socket's directory {directory} is writable by every user: another one"
            " may take the socket's name first or stand in for smtpguard; use a directory"
            " only root and the service user write (/run/smtpguard, smtpguard/ in"
            " Postfix's queue directory)"
        )
    if os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return None
    what = f"the socket in {directory}" if existing == directory else f"{directory}"
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    why = "read-only file system" if read_only else "no write permission"
    return f"cannot create {what} as {_user_name(os.geteuid())}: {existing}: {why}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def log_problems(config: Config) -> list[ConfigError]:
    """With ``milter.log = "syslog"``, the socket must take our lines (``run`` stops
    on it too, but only when the service starts)."""
    milter = config.milter
    if milter.log != "syslog":
        return []
    try:
        syslog_handler(milter.log_facility, milter.log_socket).close()
    except LogSetupError as exc:
        return [ConfigError(config.file, "milter.log_socket", str(exc))]
    return []


def backend_problems(
    config: Config,
    become: Callable[[str], None] | None = None,
    *,
    skip: frozenset[str] = frozenset(),
) -> list[ConfigError]:
    """Ask each configured network backend once, and run the virus hook once on a
    message of a few clean octets (as ``milter.user``, see :func:`file_problems`);
    every failure is one problem. ``skip``: keys already reported (a hook that cannot
    be run is not run)."""
    found: list[Problem] = []
    if config.virus.backend == "clamd":
        found += _clamd(config.virus.clamd_socket, config.virus.timeout)
    if config.virus.backend == "command" and "virus.command" not in skip:
        found += _hook(config, become)
    if config.antispam.engine == "rspamd":
        found += _rspamd(config.antispam.engine_socket, config.antispam.engine_timeout)
    if config.state.backend == "redis":
        found += _redis(config)
    if config.dns.enabled and "dns.nameservers" not in skip:
        found += _nameservers(config)
    return [ConfigError(config.file, key, message) for key, message in found]


def _hook(config: Config, become: Callable[[str], None] | None) -> list[Problem]:
    """The hook must find a clean message clean: one that cannot reach its scanner
    (clamdscan without its clamd), exits 2 or hangs fails every message, which only
    executing it tells (review rev92 F3: check-config said OK)."""
    argv = config.virus.command
    if not argv:
        return []

    def run() -> list[Problem]:
        why = command.canary(argv, config.virus.timeout)
        if not why:
            return []
        return [
            (
                "virus.command",
                f"run on a message of a few clean octets, it did not answer clean ({why}):"
                " every message would get the scanner's failure: deferred, or passed"
                ' unscanned where [checks.virus] on_temp_error = "pass" (not after an'
                " exit status 1 or a 'NAME FOUND' line: those are deferred all the same)",
            )
        ]

    return _as_service_user(config, become, run)


def _clamd(endpoint: Endpoint, timeout: float) -> list[Problem]:
    key = "virus.clamd_socket"
    try:
        connect(endpoint, timeout).close()
    except OSError as exc:
        return [(key, f"cannot connect to {endpoint}: {failure_text(exc)}")]
    if not ping(endpoint, timeout):
        return [(key, f"{endpoint} does not answer PING with PONG: not clamd, or overloaded")]
    # A clamd that answers PING may still fail every scan (review rev188 F3: its
    # TemporaryDirectory gone): what the service's outage check asks too.
    why = clamd.canary(endpoint, timeout)
    if why:
        return [
            (
                key,
                f"{endpoint} answers PING but fails a scan of a few clean octets ({why}):"
                " every message would get the scanner's failure: deferred, or passed"
                ' unscanned where [checks.virus] on_temp_error = "pass"',
            )
        ]
    return []


def _rspamd(endpoint: Endpoint, timeout: float) -> list[Problem]:
    key = "antispam.engine_socket"
    # The scanner's own HTTP connection (TCP or unix socket), for rspamd's ping URL.
    conn = RspamdClient(endpoint, timeout=timeout)._connection()
    try:
        conn.request("GET", "/ping")
        response = conn.getresponse()
        body = response.read(64)
    except OSError as exc:
        return [(key, f"cannot connect to {endpoint}: {failure_text(exc)}")]
    except http.client.HTTPException as exc:
        return [(key, f"{endpoint} does not speak HTTP: {exc.__class__.__name__}")]
    finally:
        conn.close()
    if response.status != 200 or body.strip() != b"pong":
        return [(key, f"{endpoint} answered GET /ping with HTTP {response.status}: not rspamd")]
    return []


def _redis(config: Config) -> list[Problem]:
    state = config.state
    prefix = state.redis_prefix
    client = redis_client(state.redis_url, timeout=state.timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        # Not the URL: it may carry a password. redis-py's text names host and port.
        client.close()
        return [("state.redis_url", f"Redis does not answer PING: {exc}")]
    # One hit of the real counter on a key of its own, expiring in 10 s: the script,
    # its commands and a write, as the service makes them (review rev50: a read-only
    # replica passed PING; rev53: SET, which the service never sends, failed for a
    # least-privilege user; rev54: a user without the script's commands passed).
    counter = RedisCounter(client, 10.0, SizeBuckets(0.02), prefix=f"{prefix}:check-config")
    try:
        try:
            counter.hit("check-config", 1)
            counter.hit_unless_retry("check-config", 1, "check-config", 3)
        except CounterError as exc:
            cause = exc.__cause__
            if _not_permitted(cause):
                return [
                    ("state.redis_url", f"the Redis user may not do what the counters do: {cause}")
                ]
            return [
                ("state.redis_url", f"Redis answers PING but the counters fail: {cause or exc}")
            ]
        # Taking back the hits of a call that timed out (ZREM, ZREVRANGE in a script, in
        # a pipeline as the service sends them): a user without them gets every such
        # take-back refused (review rev106 F3: what that costs).
        try:
            counter.try_take_back("check-config", 1)
        except CounterError as exc:
            if not _not_permitted(exc.__cause__):
                return [("state.redis_url", f"taking back a hit failed: {exc.__cause__}")]
            return [
                (
                    "state.redis_url",
                    "the Redis user may not take back a hit whose call timed out (+zrem"
                    " +zrevrange): after Redis stalls, a message its timeout deferred may"
                    " count twice, or use up one of its forgiven retries:"
                    f" {exc.__cause__}",
                )
            ]
        # The blacklist's lookup, as MAIL FROM makes it, marker and address (review
        # rev96: a user with the counters' commands but not HMGET passed, and every MAIL
        # FROM was deferred).
        try:
            marker, _ = client.hmget(
                redis_blacklist_key(prefix), [REDIS_MARKER, "check-config@smtpguard.invalid"]
            )
        except redis.RedisError as exc:
            return [("state.redis_url", f"the blacklist lookup fails: {exc}")]
        # A list Redis lost: every lookup fails (review rev100 F10: check-config said
        # OK). The seen file is asked as the service asks it.
        blacklist = RedisBlacklist(
            client,
            prefix,
            seen_file=redis_seen_file(config),
            required=state.redis_blacklist_required,
        )
        lost = blacklist.lost(marker is not None)
        if lost is not None:
            return [("state.redis_blacklist_required", f"{lost}; every lookup fails meanwhile")]
    finally:
        client.close()
    return []


def _not_permitted(cause: BaseException | None) -> bool:
    # Inside a script a refused command comes back as a plain error reply (review rev96).
    return isinstance(cause, redis.exceptions.NoPermissionError) or (
        isinstance(cause, redis.exceptions.ResponseError) and "can't run this command" in str(cause)
    )


def _servers(config: Config) -> list[str]:
    """The nameservers the resolver asks ("system": those of /etc/resolv.conf)."""
    servers = list(config.dns.nameservers)
    return system_nameservers() if servers == ["system"] else servers


def _nameservers(config: Config) -> list[Problem]:
    servers = _servers(config)
    if not servers:
        return [("dns.nameservers", "no nameserver in /etc/resolv.conf")]
    found: list[Problem] = []
    name, rdtype = DNS_PROBE
    for server in servers:
        answer = asyncio.run(_ask(server, config.dns.port, config.dns.timeout, name, rdtype))
        if answer.status.temporary:
            what = "no answer" if answer.status is Status.TIMEOUT else "no usable answer"
            found.append(
                ("dns.nameservers", f"{server}: {what} to {name} {rdtype}: {answer.detail}")
            )
    return found


def unused_notes(config: Config) -> list[ConfigError]:
    """Settings of a check that is off everywhere: block lists never asked, a scanner
    never called (review rev224 L8c: reject zones and local lists with checks.rbl off
    loaded, and check-config said OK). No ``[domain."X"]`` table turns on a check that
    is off globally (the loader refuses it). Notes: switching a check off for a while
    keeps its settings, rightly."""
    found: list[ConfigError] = []

    def note(key: str, what: str, check: str) -> None:
        found.append(
            ConfigError(
                config.file,
                key,
                f"note: {what}, but [checks.{check}] is off: nothing uses it",
            )
        )

    for kind in ("rbl", "openrelay"):
        if config.check(kind).mode != "off":
            continue
        zones = [z.name for z in config.dnsbl.zones if z.kind == kind]
        if zones:
            note("dnsbl.zones", f"zones of kind {kind} ({', '.join(zones)})", kind)
        files = [str(x.file) for x in config.dnsbl.local if x.kind == kind]
        if files:
            note("dnsbl.local", f"local lists of kind {kind} ({', '.join(files)})", kind)
    if config.antispam.engine != "none" and config.check("antispam").mode == "off":
        note("antispam.engine", f"engine {config.antispam.engine!r}", "antispam")
    if config.virus.backend != "none" and config.check("virus").mode == "off":
        note("virus.backend", f"backend {config.virus.backend!r}", "virus")
    if not config.dns.enabled:
        # The DNS checks are inactive without a resolver (review rev224 L4).
        dns_keys = [
            ("spf.reject_softfail", config.spf.reject_softfail),
            ("smtpport.connect_back", config.smtpport.connect_back != "off"),
        ]
        found += [
            ConfigError(
                config.file,
                key,
                "note: set, but [dns] has no nameservers: the DNS checks are inactive",
            )
            for key, given in dns_keys
            if given
        ]
    return found


def zone_notes(config: Config) -> list[ConfigError]:
    """DNSBL zones that do not list their RFC 5782 test point (127.0.0.2, asked as
    ``2.0.0.127.ZONE``): a typo in the name, or a list that is gone, lists nobody and
    says nothing (review rev224 M3). A note, not a problem: a list down for an hour
    must not stop a deploy. Asked of the first nameserver; one that does not answer
    is ``dns.nameservers``' problem."""
    if not config.dns.enabled or not config.dnsbl.zones:
        return []
    servers = _servers(config)
    if not servers:
        return []
    found = []
    for i, zone in enumerate(config.dnsbl.zones):
        name = f"2.0.0.127.{zone.name}"
        answer = asyncio.run(_ask(servers[0], config.dns.port, config.dns.timeout, name, "A"))
        if answer.status in (Status.NXDOMAIN, Status.NODATA):
            found.append(
                ConfigError(
                    config.file,
                    f"dnsbl.zones[{i}].name",
                    f"note: {zone.name} does not list its test point 127.0.0.2 ({name}:"
                    f" {answer.status.name}): a typo in the name, or a list that is gone;"
                    " it lists no client",
                )
            )
    return found


async def _ask(server: str, port: int, timeout: float, name: str, rdtype: str) -> Answer:
    transport = UdpTransport([server], port, timeout)
    try:
        return await transport.query(name, rdtype)
    finally:
        transport.close()
