"""The ``smtpguard`` command."""

from __future__ import annotations

import argparse
import codecs
import errno
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from smtpguard import __version__

if TYPE_CHECKING:
    from smtpguard.config import Config
    from smtpguard.state import RedisBlacklist

# Each command imports what it needs when it runs: ``explain`` and ``help-site`` start
# without pymilter, prometheus_client, dnspython, redis or the checks
# (tests/test_cli_fast.py), and every other command pays only for its own modules.

DEFAULT_CONFIG = "/etc/smtpguard/smtpguard.toml"


def _config_path(arg: str | None) -> str:
    return arg or os.environ.get("SMTPGUARD_CONFIG") or DEFAULT_CONFIG


def _load(arg: str | None) -> Config:
    from smtpguard.app import load

    return load(_config_path(arg))


def cmd_run(args: argparse.Namespace) -> int:
    from smtpguard.signals import hold_signals

    # Held from the first moment, before the imports below take a third of a second: a
    # reload or a stop sent during the start is taken once the service is up, where it
    # killed the process before (review rev94 F8).
    hold_signals()
    import logging

    from smtpguard import logsetup
    from smtpguard.adapter import App, drop_privileges, serve
    from smtpguard.app import build_runtime, new_gate
    from smtpguard.metrics import PrometheusMetrics, ReloadStatus
    from smtpguard.probes import (
        config_owner_problems,
        file_problems,
        key_problems,
        root_notes,
        site_problems,
        socket_problems,
        user_problems,
    )
    from smtpguard.sockets import StartError, claim_unix, libmilter_address, unix_path
    from smtpguard.supervisor import reloader

    config = _load(args.config)
    try:
        logsetup.configure(config.milter)
    except logsetup.LogSetupError as exc:
        print(f"{config.file}: milter.log_socket: {exc}", file=sys.stderr)
        return 2  # cannot start
    # Before anything is opened or written: a running milter is left alone.
    path = unix_path(config.milter.socket)
    if path is not None:
        claim_unix(path, remove_stale=False)
    missing = user_problems(config)
    for problem in missing:
        print(problem, file=sys.stderr)
    if missing:
        return 2
    # Named, not fatal: what mail sees when a store fails is each check's on_temp_error.
    for problem in file_problems(config, become=drop_privileges):
        logging.getLogger("smtpguard").error("%s", problem)
    # Also named, not fatal: check-config reports them as problems.
    named = socket_problems(config) + site_problems(config) + key_problems(config)
    for problem in named + config_owner_problems(config) + root_notes(config):
        logging.getLogger("smtpguard").warning("%s", problem)
    if config.milter.workers > 1:
        from smtpguard.supervisor import prepare_metrics, supervise

        prepare_metrics(config)
        return supervise(config)
    if isinstance(config.milter.cpu_affinity, tuple):
        from smtpguard.supervisor import bind

        bind(config.milter.cpu_affinity)  # one process: on the CPUs listed, all of them
    hold_signals()  # before the resolver's and the metrics server's threads start
    gate = new_gate(config)
    prometheus = PrometheusMetrics() if config.metrics.enabled else None
    runtime = build_runtime(config, metrics=prometheus)
    app = App(runtime, gate)
    if prometheus is not None:
        listen = f"{config.metrics.listen}:{config.metrics.port}"
        try:
            prometheus.serve(config.metrics.listen, config.metrics.port)
        except OSError as exc:
            raise StartError(f"cannot bind {listen} (metrics): {exc.strerror}") from None
    logging.getLogger("smtpguard").info(
        "smtpguard %s starting on %s (config %s)",
        __version__,
        libmilter_address(config.milter.socket),
        config.file,
    )

    # The same reload as every worker's (supervisor.RESTART_ONLY needs a restart); previous=
    # keeps the resolver (its thread, sockets and cache) when [dns] is unchanged.
    reload = reloader(app)
    if prometheus is not None:
        reloads = ReloadStatus()
        prometheus.registry.register(reloads)
        reload = reloads.watching(reload)
    serve(app, reload)
    logging.getLogger("smtpguard").info("smtpguard stopped")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Every problem found, one ``FILE: key: problem`` line each; exit 1 if any."""
    from smtpguard.adapter import drop_privileges
    from smtpguard.app import build_runtime
    from smtpguard.config import ConfigError
    from smtpguard.directory import NoDirectory
    from smtpguard.probes import (
        backend_problems,
        config_owner_problems,
        cpu_problems,
        directory_notes,
        exemption_notes,
        file_problems,
        key_problems,
        log_problems,
        root_notes,
        site_problems,
        socket_problems,
        state_notes,
        unused_notes,
        user_problems,
        zone_notes,
    )

    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    problems = user_problems(config) + file_problems(config, become=drop_privileges)
    problems += log_problems(config) + cpu_problems(config) + socket_problems(config)
    problems += site_problems(config) + key_problems(config) + config_owner_problems(config)
    # A directory file already reported is left out, so the rest still gets checked.
    unreadable = any(p.key == "directory.path" for p in problems)
    try:
        build_runtime(config, directory=NoDirectory() if unreadable else None)
    except ConfigError as exc:
        problems.append(exc)
    if not args.offline:
        reported = frozenset(p.key for p in problems)
        problems += backend_problems(config, become=drop_privileges, skip=reported)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    skipped = " (network backends not asked: --offline)" if args.offline else ""
    print(f"{config.file}: OK{skipped}")
    # run's warning too (review rev224 L8a: check-config said OK and nothing else).
    notes = root_notes(config) + state_notes(config) + directory_notes(config)
    notes += exemption_notes(config) + unused_notes(config)
    if not args.offline:
        notes += zone_notes(config)
    for note in notes:
        print(note)
    return 0


def cmd_replies(args: argparse.Namespace) -> int:
    from smtpguard.replies import ALL_IDS, MILTER_IDS, load_replies

    config = _load(args.config)
    table = load_replies(config.replies, config.file)
    # As clients get them (review rev140 F4, rev142 F3: the UTF-8 form was printed
    # with utf8 = "never", and for Sendmail); with "smtputf8", as an SMTPUTF8 session
    # gets them.
    utf8 = not args.ascii and config.replies.utf8 != "never" and config.milter.mta != "sendmail"
    for reply_id in MILTER_IDS:
        for line in table.render(reply_id, utf8=utf8).wire_lines():
            print(f"{reply_id:26} {line}")
    for reply_id in sorted(ALL_IDS - set(MILTER_IDS)):
        row = table.rows[reply_id]
        print(f"{reply_id:26} {row.code} {row.xcode} {row.text['en']}  [decided by the MTA]")
    return 0


def _unprintable(char: str) -> bool:
    """A character that would break a line of ``blacklist list``: a control character
    (tab, newline, escape, C1) or a line or paragraph separator."""
    import unicodedata

    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def _reason_problem(reason: str) -> str | None:
    for char in reason:
        if _unprintable(char):
            return (
                f"control character {_escaped(char)} (blacklist list shows one entry per"
                " line, its fields separated by tabs)"
            )
        if "\ud800" <= char <= "\udfff":  # a byte of argv that is not UTF-8
            return "not UTF-8"
    return None


def _escaped(text: str) -> str:
    """``text`` with each character that :func:`_unprintable` names as a backslash
    escape (``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``): one line, one field."""
    return "".join(
        char.encode("unicode_escape").decode("ascii") if _unprintable(char) else char
        for char in text
    )


def _as_service_user(config: Config, path: Path) -> None:
    """As root, become ``milter.user`` (with its groups) for good before writing
    ``path`` (the state or directory file) when that user could have put a link on the
    way to it: a folder above it that it may write (scripts/start.sh makes
    /var/lib/smtpguard its own), or a link there already (review rev179 F3: blacklist
    add created /etc/nologin; rev180 F3: a linked folder, one writable through a
    supplementary group). Files made are then the service's own, as it needs them. A
    path only root controls, or a host without that user, leaves root as it is."""
    import pwd

    from smtpguard.adapter import drop_privileges

    if os.geteuid() != 0 or not config.milter.user:
        return
    try:
        user = pwd.getpwnam(config.milter.user)
    except KeyError:
        return
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    if any(_open_to(child, user.pw_uid, groups) for child in _on_the_way(path)):
        drop_privileges(config.milter.user, its_groups=True)


def _on_the_way(path: Path) -> Iterator[Path]:
    """Every path the way to ``path`` passes, each once: its folders, and where each
    link on it leads, followed one at a time, so that a link there and the folder it
    sits in are judged too (review rev184 F1: root's link into a folder of the user's,
    where it had planted a link of its own to a root-only folder). Lazily, so that the
    first open one ends the walk, and bounded as the kernel bounds it: 40 links, 4096
    characters (review rev185 F1: a link growing the path at each turn took all the
    memory of root's command)."""
    seen: set[Path] = set()
    pending = path.absolute()
    for _ in range(40):  # as many links as the kernel follows (ELOOP)
        for here in (pending, *pending.parents):
            if here not in seen:
                seen.add(here)
                yield here
        parts = pending.parts
        for end in range(2, len(parts) + 1):
            here = Path(*parts[:end])
            if here.is_symlink():
                target = here.parent / os.readlink(here)
                pending = Path(os.path.normpath(target.joinpath(*parts[end:])))
                break
        else:
            return
        if len(str(pending)) > 4096:  # PATH_MAX: the kernel would refuse it
            return


def _open_to(child: Path, uid: int, groups: set[int]) -> bool:
    """Whether the user ``uid`` with ``groups`` may have put ``child`` where it is: a
    link it owns, or its folder is one that user may add names to: its own, whatever
    the mode says (the owner may chmod it between this look and the write: review
    rev182 F2), writable by its groups (as its ACL says, where it has one) or by all;
    in a sticky one, as /tmp, only a name that is not there yet or is its own.
    A link root made in a folder only root writes is root's (rev182 F3: a symlinked
    /etc/smtpguard made root drop, and the import failed)."""
    import stat

    try:
        here = child.lstat()
    except OSError:
        here = None
    if here is not None and stat.S_ISLNK(here.st_mode) and here.st_uid == uid:
        return True
    if child.parent == child:
        return False
    try:
        # Through a link: it is the folder names are added to (the link itself is
        # judged one level up).
        folder = child.parent.stat()
    except OSError:
        return False
    acl = _acl_lets_write(child.parent, folder.st_gid, uid, groups)
    writable = (
        folder.st_uid == uid
        or folder.st_mode & stat.S_IWOTH
        or (acl if acl is not None else folder.st_gid in groups and folder.st_mode & stat.S_IWGRP)
    )
    if not writable:
        return False
    return not (folder.st_mode & stat.S_ISVTX and here is not None and here.st_uid != uid)


def _acl_lets_write(folder: Path, gid: int, uid: int, groups: set[int]) -> bool | None:
    """Whether the POSIX ACL of ``folder`` (owned by group ``gid``) lets ``uid`` with
    ``groups`` write there through a group or a named entry, as its mask allows (review
    rev184 F2: any ACL, one that gave a monitoring account read access, made root drop
    and the command fail); None without an ACL: the group's mode bits say it then. With
    one they are the mask, and the owning group's entry is in the ACL (review rev185)."""
    import struct

    try:
        raw = os.getxattr(folder, "system.posix_acl_access")
    except OSError:
        return None  # none, or a file system without extended attributes
    entries = [struct.unpack_from("<HHI", raw, at) for at in range(4, len(raw) - 7, 8)]
    mask = next((perm for tag, perm, _ in entries if tag == _ACL_MASK), 7)
    return any(
        perm & mask & 2
        and (
            (tag == _ACL_USER and id_ == uid)
            or (tag == _ACL_GROUP and id_ in groups)
            or (tag == _ACL_GROUP_OBJ and gid in groups)
        )
        for tag, perm, id_ in entries
    )


#: Tags of the entries of a Linux POSIX ACL extended attribute (acl/include/acl_ea.h).
_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK = 0x02, 0x04, 0x08, 0x10


def cmd_blacklist_add(args: argparse.Namespace) -> int:
    from smtpguard.app import make_blacklist
    from smtpguard.state import EntryError, RedisBlacklist, blacklist_entry

    config = _load(args.config)
    if config.state.backend == "embedded":
        # Not with Redis (review rev180 F2: its socket's group is the service's only
        # under its unit; no SQLite file is written then).
        _as_service_user(config, config.state.path)
    store = make_blacklist(config)
    entries, refused = [], []
    problem = _reason_problem(args.reason)
    if problem is not None:
        refused.append(f"smtpguard: blacklist add: --reason: {problem}")
    for text in args.entry:
        try:
            entries.append(blacklist_entry(text))
        except EntryError as exc:
            refused.append(f"smtpguard: blacklist add: {_escaped(text)}: {exc}")
    if refused:
        print("\n".join(refused), file=sys.stderr)
        print("smtpguard: blacklist add: nothing added", file=sys.stderr)
        return 2
    lost = None
    if isinstance(store, RedisBlacklist):
        # With HGETALL, which the commands' documented ACL user has (HMGET it has not).
        marked = store.listing()[1]
        if not marked and store.seen_unknown is not None:
            # Review rev162 F2: it would mark a list Redis may have lost, unsaid.
            print(
                f"smtpguard: blacklist add: {_unknown_seen(store)}: adding would take the"
                " hash as it is for the whole list; run this as root or the service's"
                " user (nothing added)",
                file=sys.stderr,
            )
            return 1
        lost = store.lost(marked)
    # All in one write: a failure midway adds none of them (SQLite), or says that some
    # may be in (Redis).
    for entry, new in zip(entries, store.add_all(entries, args.reason), strict=True):
        print(f"add {entry}: {'done' if new else 'already listed'}")
    if isinstance(store, RedisBlacklist) and lost is not None:
        # The documented way to take a lost list as it is, but never unsaid (review
        # rev159 F2): the entries Redis lost are not coming back.
        held = len(store.listing()[0])
        print(
            f"smtpguard: warning: {store.key} counted as lost; `blacklist add` marked it,"
            f" so the list is what Redis holds now ({_plural_entries(held)}): senders only"
            " the lost list held are accepted again; add them again if you have them",
            file=sys.stderr,
        )
    return 0


def cmd_blacklist_remove(args: argparse.Namespace) -> int:
    from smtpguard.app import make_blacklist
    from smtpguard.state import RedisBlacklist

    config = _load(args.config)
    if config.state.backend == "embedded":
        # Not with Redis (review rev180 F2: its socket's group is the service's only
        # under its unit; no SQLite file is written then).
        _as_service_user(config, config.state.path)
    store = make_blacklist(config)
    _warn_if_missing(store)
    status = 0
    if isinstance(store, RedisBlacklist):
        marked = store.listing()[1]
        if lost := store.lost(marked):
            # Left lost (no marker written): the service keeps deferring what the list
            # would judge, rather than take what is left for the list (review rev159 F2).
            print(
                f"smtpguard: warning: {lost}; `remove` does not mark it, and a running"
                " service fails every lookup meanwhile ([checks.blacklist] on_temp_error"
                " decides)",
                file=sys.stderr,
            )
            status = 1
        elif not marked and store.seen_unknown is not None:
            print(
                f"smtpguard: warning: {_unknown_seen(store)}: run this as root or the"
                " service's user to know whether the list is lost",
                file=sys.stderr,
            )
            status = 1
    # Taken as given, unchecked: entries stored before add checked them must go too.
    for entry in args.entry:
        print(f"remove {entry}: {'done' if store.remove(entry) else 'not listed'}")
    return status


def _warn_if_missing(store: object) -> None:
    """Say that the embedded state file does not exist: `list` and `remove` leave it
    so (review rev83 F1: they made it again, empty, and every listed sender passed),
    and a service using it defers every message meanwhile."""
    from smtpguard.state import SqliteBlacklist

    if isinstance(store, SqliteBlacklist) and not store.exists():
        print(
            f"smtpguard: warning: {store.path} does not exist: a running service using it"
            " defers every message until `smtpguard blacklist add` creates it (a start of"
            " the service creates it empty)",
            file=sys.stderr,
        )


def cmd_blacklist_list(args: argparse.Namespace) -> int:
    import json
    import time

    from smtpguard.app import make_blacklist
    from smtpguard.state import RedisBlacklist, entry_scope

    store = make_blacklist(_load(args.config))
    _warn_if_missing(store)
    if isinstance(store, RedisBlacklist):
        entries, marked = store.listing()
        status = _lost_status(store, marked, len(entries))
    else:
        entries, status = store.entries(), 0
    if args.json:
        rows = [
            {
                "address": e.address,
                "matches": entry_scope(e.address),
                "added_at": e.added_at,
                "reason": e.reason,
            }
            for e in entries
        ]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return status
    for entry in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.added_at))
        # Escaped: rows stored before add refused control characters keep to one line.
        address = _escaped(entry.address)
        print(f"{address}\t{stamp}\t{_escaped(entry.reason)}")
        if entry_scope(entry.address) == "nothing":
            print(f"smtpguard: {address}: matches no sender; remove it", file=sys.stderr)
    return status


def _lost_status(store: RedisBlacklist, marked: bool, count: int) -> int:
    """1, said on stderr, when the Redis blacklist counts as lost (its marker gone
    after this host saw it, or ``redis_blacklist_required``): an empty listing is then
    no empty list, and the service's lookups fail (review rev100 F10); or when this
    user cannot tell (review rev101 F4: the state folder unreadable)."""
    lost = store.lost(marked)
    if lost is not None:
        held = f" (it holds {_plural_entries(count)})"
        print(
            f"smtpguard: warning: {lost}{held}; a running service fails every lookup"
            " meanwhile ([checks.blacklist] on_temp_error decides)",
            file=sys.stderr,
        )
        return 1
    if not marked and count:
        # An upgrade's list (review rev102 F1): protected once marked.
        print(
            f"smtpguard: note: the blacklist hash {store.key} holds {_plural_entries(count)}"
            " but no marker (made before smtpguard marked its lists): run `smtpguard"
            " blacklist mark`; until then a host that never saw a marker would take its"
            " loss for an empty list, and redis_blacklist_required would fail every lookup",
            file=sys.stderr,
        )
    if not marked and store.seen_unknown is not None:
        print(
            f"smtpguard: warning: the blacklist hash {_unknown_seen(store)}: run this as"
            " root or the service's user",
            file=sys.stderr,
        )
        return 1
    return 0


def _unknown_seen(store: RedisBlacklist) -> str:
    """Why this user cannot tell a lost list from a new one (review rev101 F4)."""
    return (
        f"{store.key} has no marker, and this user cannot tell whether this host saw one"
        f" ({store.seen_unknown})"
    )


def _plural_entries(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"


def cmd_blacklist_mark(args: argparse.Namespace) -> int:
    """Take the Redis blacklist as it is: a list made before smtpguard marked its
    lists, or what is left after a loss (review rev101 F2)."""
    from smtpguard.app import make_blacklist
    from smtpguard.state import RedisBlacklist

    store = make_blacklist(_load(args.config))
    if not isinstance(store, RedisBlacklist):
        print("the embedded blacklist has no marker: nothing to do")
        return 0
    done = store.mark()
    count = len(store.entries())
    state = "marked" if done else "already marked"
    print(f"{store.key}: {state} ({_plural_entries(count)})")
    return 0


def _directory_command(
    func: Callable[[argparse.Namespace, Config], int],
) -> Callable[[argparse.Namespace], int]:
    """A ``directory`` subcommand: the config loaded; a missing or unreadable directory
    file, or a refused change, is one line and exit 2."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from smtpguard.directory import ChangeRefused, DirectoryError

        config = _load(args.config)
        if config.directory.backend == "none" and getattr(args, "if_new", False):
            print(f'{config.file}: directory.backend is "none": nothing to import')
            return 0
        if config.directory.backend == "none":
            # The file would be written (or read) where nothing else looks.
            print(
                f'smtpguard: {config.file}: directory.backend is "none": there is no'
                " directory to change or read",
                file=sys.stderr,
            )
            return 2
        try:
            return func(args, config)
        except (DirectoryError, ChangeRefused) as exc:
            print(f"smtpguard: {exc}", file=sys.stderr)
            return 2

    return run


@_directory_command
def cmd_directory_import(args: argparse.Namespace, config: Config) -> int:
    from smtpguard.directory import ImportError_, import_file, read_contents, read_import

    if args.if_new and config.directory.path.exists():
        print(f"{config.directory.path} exists: nothing imported")
        return 0
    try:
        source = read_import(Path(args.file))  # with this user's rights: root's file too
        _as_service_user(config, config.directory.path)
        counts = import_file(
            config.directory.path,
            source,
            replace=args.replace,
            is_local=config.site.is_local,
            delimiters=config.site.recipient_delimiter,
        )
    except ImportError_ as exc:
        for problem in exc.problems:
            print(f"smtpguard: {problem}", file=sys.stderr)
        print(f"smtpguard: {args.file}: nothing imported", file=sys.stderr)
        return 2
    parts = [
        _counted(counts.users, "user"),
        _counted(counts.aliases, "alias", "aliases")
        + f" ({_counted(counts.alias_targets, 'target')})",
        _counted(counts.send_as, "send-as right"),
        _counted(counts.lists, "list"),
        _counted(counts.members, "member"),
        _counted(counts.posters, "poster"),
    ]
    if args.replace:
        print(f"{config.directory.path}: replaced with {', '.join(parts)}")
        return 0
    # Merged: the counts are this file's, so say what the directory holds now (review
    # rev215 F5: "1 user" read as a directory that had lost its other users).
    now = read_contents(config.directory.path)
    held = [
        _counted(len(now.users), "user"),
        _counted(len({row.address for row in now.aliases}), "alias", "aliases"),
        _counted(len(now.lists), "list"),
    ]
    print(f"{config.directory.path}: imported {', '.join(parts)}; now {', '.join(held)}")
    return 0


def _counted(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


@_directory_command
def cmd_directory_list(args: argparse.Namespace, config: Config) -> int:
    from smtpguard.directory import list_lines, read_contents

    for line in list_lines(read_contents(config.directory.path)):
        print(line)
    return 0


def _not_in_directory(address: str, config: Config) -> int:
    print(f"smtpguard: {address}: not in the directory {config.directory.path}", file=sys.stderr)
    return 1


@_directory_command
def cmd_directory_show(args: argparse.Namespace, config: Config) -> int:
    from smtpguard.directory import describe, read_contents

    lines = describe(read_contents(config.directory.path), args.address)
    if lines is None:
        return _not_in_directory(args.address, config)
    print("\n".join(lines))
    return 0


@_directory_command
def cmd_directory_export(args: argparse.Namespace, config: Config) -> int:
    from smtpguard.directory import export_csv, export_toml, formula_cells, read_contents

    export = export_csv if args.format == "csv" else export_toml
    text, left_out = export(read_contents(config.directory.path))
    print(text, end="")
    for cell in formula_cells(text) if args.format == "csv" else []:
        print(
            f"smtpguard: warning: {cell}: a spreadsheet opening this file would take it"
            " for a formula; import the file there as text, every column",
            file=sys.stderr,
        )
    for row in left_out:
        print(f"smtpguard: left out (no import would take it): {row}", file=sys.stderr)
    return 1 if left_out else 0


@_directory_command
def cmd_directory_remove(args: argparse.Namespace, config: Config) -> int:
    from smtpguard.directory import remove_address

    _as_service_user(config, config.directory.path)
    removed = remove_address(config.directory.path, args.address)
    if removed is None:
        return _not_in_directory(args.address, config)
    also = [
        f"{n} {what}{'' if n == 1 else 's'}"
        for n, what in (
            (removed.send_as, "send-as right"),
            (removed.members, "list member"),
            (removed.memberships, "list membership"),
        )
        if n
    ]
    details = f" with {', '.join(also)}" if also else ""
    kinds = " and ".join(removed.kinds)
    print(f"{config.directory.path}: removed {kinds} {args.address.lower()}{details}")
    return 0


def cmd_postfix_config(args: argparse.Namespace) -> int:
    from smtpguard.postfix import (
        PostconfError,
        check_report,
        main_cf_fragment,
        postfix_footer_regexp,
        read_postconf,
        shell_script,
        stale_footers,
    )
    from smtpguard.postfix import plan as postfix_plan
    from smtpguard.replies import load_replies

    config = _load(args.config)
    replies = load_replies(config.replies, config.file)
    # Absolute: the footer table's path is written into main.cf, and Postfix's daemons
    # read it from the queue directory, not from here.
    directory = os.path.abspath(args.config_directory) if args.config_directory else None
    if args.footers:
        # With the admin's smtpd_reject_footer, as the script writes the table (review
        # rev234 L1: without it Postfix's own replies lost the admin's footer, and
        # --check called the table stale); without a Postfix to ask, the table alone.
        try:
            admin = read_postconf(directory).raw.get("smtpd_reject_footer", "")
        except PostconfError:
            admin = ""
        print(postfix_footer_regexp(replies, config.replies.utf8 == "always", admin), end="")
        return 0
    try:
        current = read_postconf(directory)
    except PostconfError as exc:
        print(f"smtpguard postfix-config: {exc}", file=sys.stderr)
        return 2
    result = postfix_plan(config, replies, current, non_smtpd_milters=args.non_smtpd_milters)
    if args.check:
        stale = stale_footers(result, current)
        print(check_report(result, [stale] if stale else []), end="")
        return 1 if result.problems else 0
    print(main_cf_fragment(result) if args.main_cf else shell_script(result), end="")
    if result.blocking:
        print(
            "smtpguard postfix-config: applying this would open a relay: "
            + "; ".join(result.blocking),
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_sendmail_config(args: argparse.Namespace) -> int:
    from smtpguard.sendmail import (
        SendmailConfigError,
        sendmail_cf_problems,
        sendmail_mc,
        sendmail_socket_dir_problems,
    )

    config = _load(args.config)
    if args.check:
        try:
            text = Path(args.check).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            print(f"smtpguard sendmail-config: {exc}", file=sys.stderr)
            return 2
        problems = sendmail_cf_problems(config, text)
        for problem in problems:
            print(f"{args.check}: {problem}")
        if not problems:
            print(f"{args.check}: OK")
        return 1 if problems else 0
    try:
        print(sendmail_mc(config), end="")
    except SendmailConfigError as exc:
        print(f"smtpguard sendmail-config: {config.file}: {exc}", file=sys.stderr)
        return 2
    for problem in sendmail_socket_dir_problems(config.milter.socket):
        # The lines are right; where the socket is may not be (DontBlameSendmail can
        # allow it, which only the built .cf says: --check reads it).
        print(f"smtpguard sendmail-config: warning: {problem}", file=sys.stderr)
    return 0


def _client_address(text: str) -> str:
    """``--client``: an IP address, also as Postfix logs it (``[192.0.2.5]``,
    ``[IPv6:2001:db8::1]``), in the form the MTA hands the milter."""
    import ipaddress

    bare = text.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    tagged = bare[:5].lower() == "ipv6:"
    if tagged:
        bare = bare[5:]
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an IP address: {text!r} (e.g. 192.0.2.5, 2001:db8::1, [192.0.2.5])"
        ) from None
    if address.version == 4:
        if tagged:
            raise argparse.ArgumentTypeError(
                f"not an IP address: {text!r} (the IPv6: tag goes with IPv6 addresses only)"
            )
        return str(address)
    import socket

    # inet_ntop's form, as the MTA's: ::ffff:192.0.2.5 for an IPv4-mapped address.
    shown = socket.inet_ntop(socket.AF_INET6, address.packed)
    return f"{shown}%{address.scope_id}" if address.scope_id else shown


def cmd_simulate(args: argparse.Namespace) -> int:
    import logging

    from smtpguard.app import build_runtime, make_blacklist, own_counter
    from smtpguard.simulate import Envelope, simulate
    from smtpguard.state import Blacklist, SnapshotBlacklist, SqliteBlacklist

    config = _load(args.config)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="  log: %(message)s",
        stream=sys.stdout,
    )
    # What the service would answer, leaving it as it is (review rev226): the embedded
    # blacklist read, never made (as root, where the service could then not write it),
    # and the same-size counts this run's own (a simulated message counted for the
    # sender, whose real mail then got 552).
    store: Blacklist = make_blacklist(config)
    if isinstance(store, SqliteBlacklist):
        _warn_if_missing(store)
        store = SnapshotBlacklist([entry.address for entry in store.entries()])
    if config.check("bulk").mode != "off":
        print("note: same-size counts are this run's own: the service's are not read or changed")
    result = simulate(
        build_runtime(config, blacklist=store, counter=own_counter(config)),
        Envelope(
            client=args.client,
            client_name=args.client_name,
            helo=args.helo,
            login=args.login,
            auth_type=args.auth_type,
            tls=args.tls,
            mta=args.mta,
            sender=args.sender,
            sender_params=tuple(args.param),
            recipients=tuple(args.to),
        ),
        Path(args.eml).read_bytes() if args.eml else None,
    )
    for line in result.lines:
        print(line)
    return 0 if result.accepted else 1


def _text_arg(text: str) -> str:
    """``text`` from argv or a file as valid Unicode: bytes that are not UTF-8 (which
    Python keeps as lone surrogates) become U+FFFD instead of a UnicodeEncodeError."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _machine_output(args: argparse.Namespace) -> bool:
    """Whether the command's stdout is for a program: a file Postfix or m4 reads, an
    import file, JSON. ``explain --json`` is not counted: it escapes what is not ASCII
    itself when stdout is not UTF-8 (explain.json_ascii), which is UTF-8 too."""
    if args.command == "explain":
        return False
    if args.command == "postfix-config":
        return not args.check
    return (
        args.command == "sendmail-config"
        or getattr(args, "directory_command", "") == "export"
        or getattr(args, "json", False) is True
    )


def _forgiving_output(*, machine: bool = False) -> None:
    """Whatever the locale, printing never raises and the exit code is the command's.

    What people read is in the locale's encoding, with a backslash escape for what it
    cannot show. What a program reads (``machine``) is UTF-8 whatever the locale: a
    Latin-1 or GBK locale must not change the bytes of a Postfix table. Text that came
    in as bytes that are not UTF-8 (a file name) goes out as those same bytes.

    A closed descriptor (``>&-``), which Python makes a None stream, becomes /dev/null
    at that descriptor: the command still runs to its own exit code, and no file it
    opens later (the SQLite state) becomes descriptor 1 or 2."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        errors = "surrogateescape" if machine and fd == 1 else "backslashreplace"
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, _devnull(fd, errors))
        elif hasattr(stream, "reconfigure"):
            if machine and fd == 1:
                stream.reconfigure(encoding="utf-8", errors=errors)
            else:
                stream.reconfigure(errors=errors)


def _devnull(fd: int, errors: str) -> TextIO:
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.fstat(fd)
    except OSError:  # still closed (descriptor 0 was free first): take its place
        os.dup2(null, fd)
        os.close(null)
        null = fd
    return open(null, "w", encoding="utf-8", errors=errors)


#: Bytes of a reply ``explain -`` reads from stdin.
MAX_STDIN_REPLY = 64 * 1024


def cmd_explain(args: argparse.Namespace) -> int:
    # Reads no config file (-c is ignored): the knowledge is the shipped rules, or
    # --rules-dir. Imported here so that explain starts without the milter's modules.
    from smtpguard.explain import explain_main, json_ascii, knowledge

    if args.log is not None and args.reply:
        # `--log a.log b.log`: a shell glob of rotated logs.
        print(
            f"smtpguard explain: --log reads one file, folder or -; {args.reply[0]!r} is one"
            " too many (several logs: cat them | smtpguard explain --log -)",
            file=sys.stderr,
        )
        return 2
    if args.log is None and not args.reply:
        print(
            "smtpguard explain: give a reply line (- reads it from stdin) or --log FILE",
            file=sys.stderr,
        )
        return 2
    if args.events and args.log is None:
        print("smtpguard explain: --events goes with --log", file=sys.stderr)
        return 2
    if args.log is not None:
        import io

        from smtpguard.explain_log import log_main

        return log_main(
            args.log,
            knowledge=knowledge(args.rules_dir),
            lang=args.lang,
            as_json=args.json,
            # Python sets sys.stdin to None when the descriptor is closed (<&-).
            stdin=sys.stdin.buffer if sys.stdin is not None else io.BytesIO(),
            out=sys.stdout,
            events=args.events,
        )
    if args.reply == ["-"]:
        # A reply pasted into a pipe: no quoting to get right. Read as a log line is,
        # bounded (explain reads the first MAX_LINE_CHARS characters of a line anyway).
        data = sys.stdin.buffer.read(MAX_STDIN_REPLY) if sys.stdin is not None else b""
        # A bounce saved by Notepad (UTF-16 with its byte order mark) read as UTF-8 was
        # a NUL between every two letters: no reply found (review rev207 F7).
        utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        line = data.decode("utf-16" if utf16 else "utf-8-sig", "replace")
    else:
        line = _text_arg(" ".join(args.reply))
    text = explain_main(
        line,
        lang=args.lang,
        as_json=args.json,
        rules_dir=args.rules_dir,
        ensure_ascii=json_ascii(sys.stdout),
    )
    print(text)
    return 0


def _is_hostname(value: str) -> bool:
    from smtpguard.address import is_valid_domain

    return is_valid_domain(value)


def _hostname_argument(value: str) -> str:
    if not _is_hostname(value):
        raise argparse.ArgumentTypeError(f"not a host name: {value!r}")
    return value


def _postconf_value(name: str) -> tuple[str, str]:
    """The default Postfix instance's ``name`` (``postconf -xh``, expanded) and, when it
    gave none, why (its last error line)."""
    import subprocess

    try:
        done = subprocess.run(  # noqa: S603 - a parameter name of ours, no shell
            ["postconf", "-xh", name],  # noqa: S607 - Postfix's own tool, on PATH
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", str(exc)
    if done.returncode == 0:
        return done.stdout.strip(), ""
    return "", (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]


def _postfix_hostname(config: Config) -> str | None:
    """Postfix's myhostname, expanded (``$mydomain``), which it puts in some of its own
    replies (review rev101 F8: the first of site.our_hostnames was not it); None, said
    on stderr, without a Postfix that answers here (rev102 F5)."""
    from smtpguard.helpsite import EXAMPLE_HOST

    if config.milter.mta == "sendmail":
        return None
    name, why = _postconf_value("myhostname")
    if _is_hostname(name):
        return name
    print(
        f"smtpguard help-site: note: `postconf -xh myhostname` gave no host name"
        f" ({why or repr(name)}): the pages show {EXAMPLE_HOST} where Postfix names itself;"
        " give --mta-hostname",
        file=sys.stderr,
    )
    return None


def _postfix_size_limit(config: Config) -> int | None:
    """Postfix's message_size_limit (0: none), which refuses before smtpguard when it is
    lower; None, said on stderr (review rev234 L3), without a Postfix that answers."""
    if config.milter.mta == "sendmail":
        return None
    value, _why = _postconf_value("message_size_limit")
    if value.isdigit():
        return int(value) or None
    print(
        "smtpguard help-site: note: `postconf -xh message_size_limit` gave no value: the"
        " pages quote limits.max_message_size alone (run it with MAIL_CONFIG set to the"
        " Postfix instance's directory)",
        file=sys.stderr,
    )
    return None


def cmd_help_site(args: argparse.Namespace) -> int:
    from smtpguard.explain import knowledge
    from smtpguard.helpsite import (
        EXAMPLE_HOST,
        SiteError,
        build_site,
        limit_facts,
        page_form,
        write_site,
    )
    from smtpguard.replies import load_replies

    if not args.out:
        # Path("") is the current directory: an unset variable in a script would
        # write the site wherever it runs.
        print("smtpguard help-site: --out must name a directory", file=sys.stderr)
        return 2
    config = _load(args.config)
    table = load_replies(config.replies, config.file)
    try:
        host = args.mta_hostname or _postfix_hostname(config) or EXAMPLE_HOST
        facts = limit_facts(config, _postfix_size_limit(config))
        pages = build_site(table, knowledge(), mta=config.milter.mta, host=host, facts=facts)
    except SiteError as exc:
        print(f"smtpguard help-site: {config.file}: {exc}", file=sys.stderr)
        return 2
    count = write_site(Path(args.out), pages)
    form = page_form(config.replies.help_url)
    print(f"{args.out}: {count} files; the page of reply ID is {form.replace('{id}', 'ID')}")
    return 0


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Callable[[argparse.Namespace], int],
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """The subcommand ``name`` (``kwargs`` as for ``add_parser``), run by ``func``."""
    parser = sub.add_parser(name, **kwargs)
    parser.set_defaults(func=func)
    return parser


def _check_config_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cc = _command(
        sub, "check-config", cmd_check_config, help="validate the config, reply table and backends"
    )
    cc.add_argument("file", nargs="?", help="config file to check")
    cc.add_argument(
        "--offline", action="store_true", help="do not ask clamd, rspamd, Redis or DNS servers"
    )


def _blacklist_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bl = sub.add_parser("blacklist", help="manage the dynamic sender blacklist")
    # dest "action": main() tells the writing subcommands (add, remove) by it.
    blsub = bl.add_subparsers(dest="action", required=True)
    add = _command(
        blsub,
        "add",
        cmd_blacklist_add,
        help="add senders; nothing is added if any entry is refused",
        description="ENTRY is a sender address, @domain (that domain) or .domain (the"
        " domain and its subdomains). A bare domain, an IP address or a /pattern/ is"
        " refused, with what to use instead: it would never match.",
    )
    add.add_argument(
        "entry", nargs="+", metavar="ENTRY", help="user@domain, @domain or .domain, one or more"
    )
    add.add_argument("--reason", default="", help="note stored with the entries")
    remove = _command(blsub, "remove", cmd_blacklist_remove, help="remove entries, as listed")
    remove.add_argument(
        "entry", nargs="+", metavar="ENTRY", help="an entry as blacklist list shows it"
    )
    _command(
        blsub,
        "mark",
        cmd_blacklist_mark,
        help="take a Redis blacklist without its marker as it is",
        description="A Redis blacklist made before smtpguard marked its lists, or what"
        " is left of one Redis lost, has no marker: once this host saw one, or with"
        " [state] redis_blacklist_required, lookups fail until the marker is back. This"
        " writes it (add does too; remove leaves a lost list lost).",
    )
    show = _command(blsub, "list", cmd_blacklist_list, help="list the entries")
    show.add_argument("--json", action="store_true", help="machine-readable output")


def _directory_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("directory", help="manage the embedded directory")
    dsub = d.add_subparsers(dest="directory_command", required=True)
    di = _command(
        dsub,
        "import",
        cmd_directory_import,
        help="load users, aliases and lists from CSV or TOML (nothing if any row is invalid)",
    )
    di.add_argument("file", help="a .toml or .csv file (README: the directory's format)")
    di.add_argument(
        "--replace",
        action="store_true",
        help="drop every existing entry first (without it, an entry given again replaces"
        " the stored one whole: a user with its send-as rights, an alias, a list)",
    )
    di.add_argument(
        "--if-new",
        action="store_true",
        help="only when the directory file does not exist yet (and nothing, exit 0, with"
        ' directory.backend = "none"): a first install\'s example users, never merged'
        " into a live directory",
    )
    _command(dsub, "list", cmd_directory_list, help="one line per user, alias and list")
    ds = _command(dsub, "show", cmd_directory_show, help="a user, alias or list with all it has")
    ds.add_argument("address", help="address (or a user's login)")
    de = _command(
        dsub, "export", cmd_directory_export, help="print the directory as an import file"
    )
    de.add_argument("--format", choices=("toml", "csv"), default="toml")
    dr = _command(
        dsub,
        "remove",
        cmd_directory_remove,
        help="remove a user, alias or list (refused while an alias points at it)",
    )
    dr.add_argument("address", help="the user's, alias's or list's address")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smtpguard",
        description="smtpguard: a policy milter for Postfix and Sendmail, and the tools"
        " around it (config check, MTA settings, reply table, explain).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"smtpguard {__version__}")
    p.add_argument(
        "-c",
        "--config",
        help=f"config file (default: $SMTPGUARD_CONFIG or {DEFAULT_CONFIG})",
    )
    sub = p.add_subparsers(dest="command", required=True)

    _command(sub, "run", cmd_run, help="run the milter service")
    _check_config_parser(sub)
    rp = _command(sub, "replies", cmd_replies, help="print the reply table as clients would see it")
    rp.add_argument(
        "--ascii",
        action="store_true",
        help='as sent when UTF-8 is not allowed (always so with [replies] utf8 = "never";'
        ' with "smtputf8", without it: as a session without SMTPUTF8 gets them)',
    )

    _blacklist_parser(sub)

    sim = _command(
        sub,
        "simulate",
        cmd_simulate,
        help="run the configured pipeline on an envelope (and message) without an MTA",
    )
    sim.add_argument(
        "--client",
        required=True,
        type=_client_address,
        help="client IP address (also [192.0.2.5] or [IPv6:2001:db8::1], as Postfix logs it)",
    )
    sim.add_argument("--client-name", default="", help="client host name (default: [IP])")
    sim.add_argument("--helo", help="HELO/EHLO name (omit: no HELO)")
    sim.add_argument("--login", help="SASL login of an authenticated session")
    sim.add_argument("--auth-type", default="LOGIN", help="SASL mechanism (with --login)")
    sim.add_argument("--tls", action="store_true", help="the session uses TLS")
    sim.add_argument("--mta", choices=("postfix", "sendmail"), default="postfix")
    sim.add_argument("--from", dest="sender", required=True, help="MAIL FROM address")
    sim.add_argument("--param", action="append", default=[], help="ESMTP parameter of MAIL")
    sim.add_argument("--to", action="append", required=True, help="RCPT TO (repeatable)")
    sim.add_argument("--eml", help="RFC 5322 message file for the DATA phase")
    sim.add_argument("-v", "--verbose", action="store_true", help="show the decision log")

    ex = _command(
        sub,
        "explain",
        cmd_explain,
        help="say what any SMTP reply line means and what the sender should do",
    )
    ex.add_argument(
        "reply",
        nargs="*",
        help='the reply line, e.g. "550 5.7.1 Relaying denied"; - reads it from stdin',
    )
    ex.add_argument("--lang", choices=("en", "zh"), default="en")
    ex.add_argument("--json", action="store_true", help="machine-readable output")
    ex.add_argument(
        "--log",
        metavar="FILE",
        help="explain every bounce and deferral of a Postfix, Sendmail or Exim log (- for"
        " stdin) or of a folder of DSN messages, and print a summary",
    )
    ex.add_argument(
        "--events",
        action="store_true",
        help="with --log: also one line per bounce or deferral, as read (JSON Lines with --json)",
    )
    ex.add_argument(
        "--rules-dir",
        type=Path,
        metavar="DIR",
        help="directory with explain.toml and replies.toml (default: the shipped rules/);"
        " explain reads no config file",
    )

    hs = _command(
        sub,
        "help-site",
        cmd_help_site,
        help="write a static help site (en/zh): one page per reply id, at the paths"
        " replies.help_url points to",
    )
    hs.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    hs.add_argument(
        "--mta-hostname",
        metavar="NAME",
        type=_hostname_argument,
        help="the name Postfix puts in some of its own replies, as the MTA rows' pages show"
        " them (default: `postconf -xh myhostname`, else mail.example.com)",
    )

    pc = _command(
        sub,
        "postfix-config",
        cmd_postfix_config,
        help="print the postconf commands that add smtpguard to a Postfix instance",
        description="Reads the Postfix instance (postconf) and prints the smallest set of"
        " changes that attach smtpguard, merged with what is already configured: a shell"
        " script of postconf -e commands (default) or main.cf lines (--main-cf).",
    )
    pc.add_argument(
        "--config-directory",
        help="the Postfix instance's config directory (default: the system instance)",
    )
    out = pc.add_mutually_exclusive_group()
    out.add_argument("--main-cf", action="store_true", help="print main.cf lines instead")
    out.add_argument(
        "--footers", action="store_true", help="print the smtpd_reject_footer_maps table"
    )
    out.add_argument(
        "--check",
        action="store_true",
        help="list settings of the instance that conflict with the smtpguard config;"
        " exit 1 if there are any",
    )
    pc.add_argument(
        "--non-smtpd-milters",
        action="store_true",
        help="attach smtpguard to non_smtpd_milters (local submission) too",
    )
    sc = _command(
        sub,
        "sendmail-config",
        cmd_sendmail_config,
        help="print the sendmail.mc lines for this config",
    )
    sc.add_argument(
        "--check",
        metavar="CF",
        help="read a built sendmail.cf instead: list what keeps Sendmail from running"
        " smtpguard as configured, or makes it an open relay while smtpguard only"
        " reports (FEATURE(promiscuous_relay)); exit 1 if anything",
    )

    _directory_parser(sub)
    return p


EXIT_CODES = """exit codes:
  0  ok; for simulate: the mail would be accepted
  1  simulate: the mail would be refused; check-config, postfix-config --check,
     sendmail-config --check: problems found; directory show, directory
     remove: no such entry; directory export: rows left out (each named on
     stderr); blacklist list, remove (and add, adding nothing): a Redis list
     that is lost or may be; run: the milter socket was lost while serving
     (workers > 1);
     explain --log DIR: a file or folder of it could not be read (named on stderr)
  2  usage or configuration error, or cannot start (socket in use, cannot bind,
     unreadable or unwritable file, syslog socket)
  130  stopped with Ctrl-C (explain --log: the summary of what was read is printed);
     run stops on SIGINT as on SIGTERM, with 0"""


def _accept_config_anywhere(parser: argparse.ArgumentParser) -> None:
    """``-c FILE`` after the subcommand too (``smtpguard replies -c FILE``).

    SUPPRESS keeps a subcommand without ``-c`` from overwriting the value given before
    it."""
    for action in parser._actions:  # argparse exposes subparsers only this way
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not any("--config" in a.option_strings for a in sub._actions):
                    sub.add_argument(
                        "-c",
                        "--config",
                        default=argparse.SUPPRESS,
                        help="config file (also accepted before the subcommand)",
                    )
                _accept_config_anywhere(sub)


def _store_access(args: argparse.Namespace) -> tuple[Path, bool] | None:
    """The SQLite file an admin command uses, and whether it writes to it."""
    if args.command == "blacklist":
        config = _load(args.config)
        # `mark` never opens the embedded file (it has no marker).
        if config.state.backend != "embedded" or getattr(args, "action", "") == "mark":
            return None
        return config.state.path, getattr(args, "action", "") in ("add", "remove")
    if args.command == "directory":
        writes = getattr(args, "directory_command", "") in ("import", "remove")
        return _load(args.config).directory.path, writes
    return None


def _check_access(path: Path, write: bool) -> None:
    """Raise the OSError (path, errno text) that opening ``path`` would meet, before
    SQLite turns it into "unable to open database file"."""
    mode = os.R_OK | (os.W_OK if write else 0)
    if path.exists():
        if not os.access(path, mode):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(parent))
    # A missing file is the command's to handle (the blacklist starts empty), as long
    # as it could be made there.
    if not os.access(parent, os.W_OK | os.X_OK if write else os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(parent))


def _failure(exc: Exception, command: str) -> tuple[str, int] | None:
    """The line to print and the exit code for an expected failure; None for a bug."""
    # Imported only now: a command that failed has loaded the module that raised.
    import sqlite3

    from smtpguard.config import ConfigError
    from smtpguard.directory import ImportError_
    from smtpguard.sockets import StartError
    from smtpguard.state import StateError

    if isinstance(exc, ConfigError):
        # check-config reports problems (1); anything else could not even start (2).
        return f"smtpguard: configuration error: {exc}", 1 if command == "check-config" else 2
    if isinstance(exc, StartError | ImportError_ | StateError):
        return f"smtpguard: {exc}", 2
    if isinstance(exc, sqlite3.Error):
        return f"smtpguard: SQLite: {exc}", 2
    if isinstance(exc, OSError):
        # Permission and missing-file failures of any command: one line, no traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        return f"smtpguard: {where}{exc.strerror or exc}", 2
    return None


def main(argv: Sequence[str] | None = None) -> int:
    _forgiving_output()  # before argparse writes its usage errors
    parser = build_parser()
    _accept_config_anywhere(parser)
    args = parser.parse_args(argv)
    if _machine_output(args):
        _forgiving_output(machine=True)
    if getattr(args, "file", None) and args.command == "check-config":
        args.config = args.file
    try:
        store = _store_access(args)
        if store is not None:
            _check_access(*store)
        rc: int = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        # Ctrl-C where a command does not handle it itself (explain - waiting for
        # stdin, --log before its reading starts): no traceback, the shell's status.
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`smtpguard replies | head`): end quietly. Python would
        # otherwise report the pipe again when it flushes stdout at exit.
        _stdout_to_devnull()
        return 0
    except Exception as exc:
        failure = _failure(exc, args.command)
        if failure is None:
            raise
        message, code = failure
        print(message, file=sys.stderr)
        _drop_unwritable_stdout()
        return code
    return rc


def _drop_unwritable_stdout() -> None:
    """After a failure: output stdout still holds and cannot write (a full disk) would
    make Python report it again at exit ("Exception ignored") and exit 120; it is
    dropped, the failure has been said once."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        _stdout_to_devnull()


def _stdout_to_devnull() -> None:
    """What stdout still holds goes nowhere at exit (it could not be written)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
