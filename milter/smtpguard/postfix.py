"""Adding smtpguard to a running Postfix without clobbering the admin's settings.

``smtpguard postfix-config`` reads the instance it is pointed at (``postconf -c DIR``)
and prints the smallest set of changes that attach smtpguard: our milter appended to
the existing ``smtpd_milters``, the macros we read added to the existing macro lists,
the table's relay reply placed before Postfix's own relay guard, and each other
setting changed only where smtpguard needs it, with a one-line reason. ``--check``
lists what in a live instance conflicts with the smtpguard config.

The rules this follows come from measurements on Postfix 3.7 (``docs/postfix.md``):

* ``postconf -e`` replaces whole parameters, so every list is merged here from the
  instance's current value, never written from scratch.
* Relaying is never left to the milter alone unless the operator asks for it
  (``site.relay_control = "milter"``). With the default ``"postfix"`` Postfix's own
  ``reject_unauth_destination`` (or ``defer_unauth_destination``) keeps the last word,
  and a ``static:`` access map before it carries the table's reply, so relay control
  holds with the milter down, removed or in dry run.
* In ``"milter"`` mode the ``static:{OK}`` that lets unauthorized recipients through to
  the milter is wrapped in ``${smtpd_milters?{...}}``: with ``smtpd_milters`` emptied
  or commented out it disappears and Postfix's guard refuses relaying again. The
  table's static reply stays after it: Postfix ignores the OK for a recipient with
  routing in its local part (``allow_untrusted_routing = no``), and refuses that one
  itself (review rev119 F3: with its own 454, not the table's 553).
* A milter's own settings (``default_action``, timeouts, protocol) go into its
  ``smtpd_milters`` entry, so the admin's other milters keep theirs.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import posixpath
import re
import shlex
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final

from smtpguard.address import (
    IPNetwork,
    canonical_domain,
    u_label_spelling,
    unmapped_network,
)
from smtpguard.bounds import answer_bounds
from smtpguard.config import Config
from smtpguard.directory import DirectoryError, Kind, SqliteDirectory, read_contents
from smtpguard.iplist import unbracket
from smtpguard.replies import Reply, ReplyTable
from smtpguard.session import detect_mta
from smtpguard.sockets import host_addresses, libmilter_address

#: Macros smtpguard reads, per stage (added to whatever the instance already sends).
POSTFIX_MACROS = {
    "milter_connect_macros": "j {daemon_name} {daemon_addr} v _ {client_addr} {client_name}"
    " {client_resolve}",
    "milter_helo_macros": "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    # {tls_version} at MAIL too: Postfix takes AUTH and MAIL right after STARTTLS with
    # no new EHLO (RFC 3207: the client SHOULD send one), and the HELO step is the only
    # other that says the session is encrypted (review rev198 M1: such a login was
    # deferred for ever as one without TLS).
    "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host}"
    " {mail_mailer} {tls_version}",
    "milter_rcpt_macros": "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
    "milter_end_of_data_macros": "i",
}

#: Our per-milter settings: a dead or slow smtpguard defers mail, never accepts it.
#: Postfix's milter timeouts should be this many times smtpguard's longest answer
#: (Plan.timeouts).
QUEUE_FACTOR = 2

MILTER_SETTINGS = (
    "default_action=tempfail",
    "protocol=6",
    "connect_timeout=10s",
    "command_timeout=30s",
    "content_timeout=300s",
)

#: Postfix's own replies for rows it decides itself (regexp keys), the table id whose
#: text the footer appends, and whether the English text goes too (where Postfix's
#: English says something else than the table's).
POSTFIX_FOOTERS: tuple[tuple[str, str, bool], ...] = (
    (r"^503 5\.5\.1 Error: need MAIL command", "mail_first", False),
    (r"^503 5\.5\.1 Error: need RCPT command", "rcpt_first", False),
    # What Postfix says to DATA before RCPT when milters are configured.
    (r"^554 5\.5\.1 Error: no valid recipients", "rcpt_first", False),
    (r"^503 5\.5\.1 Error: nested MAIL command", "sequence_error", False),
    (r"^503 5\.5\.1 Error: send HELO/EHLO first", "helo_first", False),
    (r"^50[02] 5\.5\.2 Error: command not recognized", "syntax_error", False),
    (r"^501 5\.5\.[24] Syntax", "syntax_error", False),
    (r"^[45][0-9][0-9] [45]\.5\.2 .*bare <LF> received", "stray_newline", False),
    # Addresses Postfix's own parser refuses never reach the milter.
    (r"^501 5\.1\.7 Bad sender address syntax", "mail_from_invalid", False),
    (r"^501 5\.1\.3 Bad recipient address syntax", "mailbox_unavailable", False),
    # A declared SIZE= above message_size_limit is refused by Postfix at MAIL, before
    # the milter is asked; same code and enhanced code as the table's row.
    (r"^552 5\.3\.4 Message size exceeds fixed limit", "message_too_long", True),
    # Past message_size_limit in DATA, without (or below) a SIZE= (review rev232 L4).
    (r"^552 5\.3\.4 Error: message file too big", "message_too_long", True),
    # The same with BDAT (CHUNKING), review rev234 L2.
    (r"^552 5\.3\.4 Chunk exceeds message size limit", "message_too_long", True),
)

#: What Postfix answers where a footer's pattern is not one literal line, as a real
#: Postfix 3.7.11 answered (``{host}``: its myhostname): the help pages show these
#: (review rev100 F9). tests/test_postfix_config.py matches each to its pattern.
POSTFIX_EXAMPLES: dict[str, tuple[str, ...]] = {
    r"^50[02] 5\.5\.2 Error: command not recognized": ("500 5.5.2 Error: command not recognized",),
    r"^501 5\.5\.[24] Syntax": (
        "501 5.5.4 Syntax: MAIL FROM:<address>",
        "501 5.5.4 Syntax: RCPT TO:<address>",
    ),
    # smtpd_forbid_bare_newline = reject, a client outside its exclusions.
    r"^[45][0-9][0-9] [45]\.5\.2 .*bare <LF> received": (
        "550 5.5.2 {host} Error: bare <LF> received",
    ),
}

_LITERAL = re.compile(r"\^(?:[^\\\[\].*+?()|{}^$]|\\\.)+")


def postfix_says(pattern: str, host: str) -> tuple[str, ...]:
    """The lines Postfix answers that a POSTFIX_FOOTERS pattern matches: the pattern
    itself when it is one literal line, else the measured POSTFIX_EXAMPLES."""
    if _LITERAL.fullmatch(pattern):
        return (pattern[1:].replace("\\.", "."),)
    return tuple(line.format(host=host) for line in POSTFIX_EXAMPLES.get(pattern, ()))


RELAY_GUARDS = ("reject_unauth_destination", "defer_unauth_destination")
#: What postfix-config writes for smtpd_reject_unlisted_recipient.
UNLISTED_WHILE_MILTERS = "${smtpd_milters?{no}:{yes}}"
#: Recipient tables smtpd_reject_unlisted_recipient = no would stop Postfix checking.
RECIPIENT_MAPS = ("relay_recipient_maps", "virtual_alias_maps", "virtual_mailbox_maps")
#: Where Postfix lists the domains it takes mail for.
ACCEPTED_DOMAINS = (
    "mydestination",
    "virtual_alias_domains",
    "virtual_mailbox_domains",
    "relay_domains",
)
#: The client Postfix's cleanup shows non_smtpd_milters for mail from sendmail(1):
#: ::1 where inet_protocols has no IPv4 (review rev228 M1).
_LOOPBACK = ipaddress.ip_address("127.0.0.1")
_LOOPBACK6 = ipaddress.ip_address("::1")
FOOTER_FILE = "smtpguard_footers.regexp"

#: What decides whether a service offers AUTH before TLS.
_AUTH_IN_CLEAR = (
    "smtpd_sasl_auth_enable",
    "smtpd_tls_auth_only",
    "smtpd_tls_security_level",
    "smtpd_tls_wrappermode",
    "smtpd_enforce_tls",
)
#: Every parameter the plan reads.
PARAMETERS = (
    "config_directory",
    "queue_directory",
    "myhostname",
    "smtpd_milters",
    "non_smtpd_milters",
    "milter_default_action",
    "milter_macro_v",
    "compatibility_level",
    "inet_protocols",
    *POSTFIX_MACROS,
    "mynetworks",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
    "smtpd_reject_unlisted_recipient",
    *RECIPIENT_MAPS,
    *ACCEPTED_DOMAINS,
    "parent_domain_matches_subdomains",
    "message_size_limit",
    "hopcount_limit",
    "recipient_delimiter",
    "smtputf8_enable",
    "smtpd_reject_footer_maps",
    "smtpd_reject_footer",
    "alias_maps",
    "local_recipient_maps",
    "smtpd_forbid_bare_newline",
    "receive_override_options",
    "content_filter",
    "smtpd_upstream_proxy_protocol",
    "smtpd_authorized_xclient_hosts",
    "smtpd_milter_maps",
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_helo_required",
    "smtpd_sender_restrictions",
    "smtpd_service_name",
    "smtpd_delay_reject",
    *_AUTH_IN_CLEAR,
)


class PostconfError(Exception):
    """postconf is missing or cannot read the instance."""


@dataclass(frozen=True, slots=True)
class Service:
    """A master.cf service run by smtpd, with its ``-o`` overrides (``postconf -P``)."""

    name: str
    kind: str
    overrides: Mapping[str, str]
    #: The same with ``$name`` expanded (``postconf -P -x``).
    expanded: Mapping[str, str] = field(default_factory=dict)
    #: master.cf's chroot column: "y", "n" or "-" (Postfix's default: y below
    #: compatibility_level 1, n from 1 on).
    chroot: str = "-"
    #: A ``pass`` service a postscreen on port 25 hands its clients to (its
    #: ``smtpd_service_name``).
    behind_postscreen: bool = False

    @property
    def label(self) -> str:
        return f"{self.name}/{self.kind}"


@dataclass(frozen=True, slots=True)
class Settings:
    """An instance's parameters: as written (``raw``) and with ``$name`` expanded; and
    its smtpd services in master.cf."""

    raw: Mapping[str, str]
    expanded: Mapping[str, str]
    services: tuple[Service, ...] = ()
    #: master.cf's chroot column of cleanup, which runs non_smtpd_milters.
    cleanup_chroot: str = "-"


def read_postconf(config_directory: str | None = None) -> Settings:
    """The instance's current values, read with ``postconf [-c DIR] -h [-x]``, and its
    smtpd services with ``postconf -F`` and ``-P`` (master.cf, Postfix 2.11 on)."""
    base = ["postconf"] + (["-c", config_directory] if config_directory else [])

    def run(*args: str) -> str:
        try:
            done = subprocess.run(  # noqa: S603 - fixed argv, the directory is one item
                [*base, *args], capture_output=True, text=True, check=False
            )
        except FileNotFoundError:
            raise PostconfError("postconf not found: is Postfix installed?") from None
        if done.returncode != 0:
            errors = [e for e in done.stderr.splitlines() if "warning:" not in e]
            raise PostconfError("; ".join(errors) or f"postconf exited {done.returncode}")
        return done.stdout

    def values(*flags: str) -> dict[str, str]:
        stdout = run(*flags, *PARAMETERS)
        # Parameters this Postfix does not know (smtpd_forbid_bare_newline before
        # 3.7.10) are left out of its output: they read as empty.
        out = dict.fromkeys(PARAMETERS, "")
        for name, value in _assignments(stdout):
            if name in out:
                out[name] = value
        return out

    fields = dict(_assignments(run("-F")))

    def run_by(program: str) -> list[tuple[str, str]]:
        return [
            (name, kind)
            for key, command in fields.items()
            if key.endswith("/command") and command.split()[:1] == [program]
            for name, kind in [key.rsplit("/", 2)[:2]]
        ]

    def overrides(*flags: str) -> dict[tuple[str, str], dict[str, str]]:
        out: dict[tuple[str, str], dict[str, str]] = {}
        for key, value in _assignments(run("-P", *flags)):
            service, kind, parameter = key.rsplit("/", 2)
            out.setdefault((service, kind), {})[parameter] = value
        return out

    raw, expanded = overrides(), overrides("-x")
    now = values("-x")
    # Review rev177 F2: postscreen hands port 25's clients to the pass service its
    # smtpd_service_name names, not only to one called "smtpd".
    passes = {
        expanded.get(screen, {}).get("smtpd_service_name", now["smtpd_service_name"] or "smtpd")
        for screen in run_by("postscreen")
        if screen[1] == "inet" and _port_25_name(screen[0])
    }
    services = tuple(
        Service(
            name,
            kind,
            raw.get((name, kind), {}),
            expanded.get((name, kind), {}),
            fields.get(f"{name}/{kind}/chroot", "-"),
            behind_postscreen=kind == "pass" and name in passes,
        )
        for name, kind in run_by("smtpd")
    )
    return Settings(
        raw=values(),
        expanded=now,
        services=services,
        cleanup_chroot=fields.get("cleanup/unix/chroot", "-"),
    )


def _assignments(stdout: str) -> Iterator[tuple[str, str]]:
    """``name = value`` lines of postconf (``name =`` for an empty value)."""
    for line in stdout.splitlines():
        name, sep, value = line.partition(" = ")
        if not sep and line.endswith(" ="):
            name, sep = line[:-2], "="
        if sep:
            yield name, value


@dataclass(frozen=True, slots=True)
class Change:
    name: str
    value: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    config_directory: str
    changes: tuple[Change, ...]
    #: Settings left alone that the admin should know about.
    notes: tuple[str, ...]
    #: Conflicts between the instance as it is now and the smtpguard config.
    problems: tuple[str, ...]
    #: Those of ``problems`` that ``changes`` do not resolve (the admin's call).
    unresolved: tuple[str, ...]
    #: Those of ``unresolved`` that ``changes`` would make worse: an open relay the
    #: plan itself opens. The script stops before changing anything.
    blocking: tuple[str, ...]
    footer_path: str
    footers: str


def list_spans(value: str) -> list[tuple[int, int]]:
    """Where each item of a Postfix list (commas and/or white space) starts and ends in
    ``value``, with ``{...}`` groups kept whole."""
    spans: list[tuple[int, int]] = []
    start: int | None = None
    depth = 0
    for i, ch in enumerate(value):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(depth - 1, 0)
        if depth == 0 and (ch.isspace() or ch == ","):
            if start is not None:
                spans.append((start, i))
                start = None
            continue
        if start is None:
            start = i
    if start is not None:
        spans.append((start, len(value)))
    return spans


#: The lists Postfix matches as strings (trivial-rewrite's resolve.c and
#: resolve_local.c: string_list_init), a name matching itself alone: ".example.com"
#: matches nothing there, and "!.example.com" excludes nothing (measured with Postfix
#: 3.7.11: "virtual_alias_domains = !.v.example, w.v.example" accepts w.v.example, and
#: ".v2.example" neither v2.example nor a.v2.example). relay_domains is a domain list
#: (match_hostname).
STRING_LISTS = ("mydestination", "virtual_alias_domains", "virtual_mailbox_domains")


def _excluded(exclusions: Iterable[str], domain: str, name: str, parent: bool) -> bool:
    """Whether one of the ``!`` patterns ``exclusions`` of the list ``name`` matches
    ``domain`` as Postfix 3.7 matches them (match_ops.c): in a string list
    (:data:`STRING_LISTS`) itself alone; in a domain list of ``parent`` style
    (Postfix._parent_style) also its subdomains, so "!p.example" refuses q.p.example
    (review rev54); in a domain list of the other style ".p.example" its
    subdomains."""
    for pattern in exclusions:
        if pattern == domain:
            return True
        if name in STRING_LISTS:
            continue
        if pattern.startswith("."):
            if not parent and domain.endswith(pattern):
                return True
        elif parent and domain.endswith("." + pattern):
            return True
    return False


def split_list(value: str) -> list[str]:
    """A Postfix list (commas and/or white space) with ``{...}`` groups kept whole."""
    return [value[a:b] for a, b in list_spans(value)]


def restriction_list(value: str) -> list[str]:
    """A restriction list's items with the restriction names in lower case: smtpd
    compares them with strcasecmp, so ``Reject_Unauth_Destination`` is the relay guard
    and ``Permit`` passes everything (review rev185). Tables and arguments (anything
    with more than letters and underscores) stay as written."""
    return [
        item.lower() if _RESTRICTION_NAME.fullmatch(item) else item for item in split_list(value)
    ]


_RESTRICTION_NAME: Final = re.compile(r"[A-Za-z_]+")


def _cut(value: str, spans: list[tuple[int, int]], index: int, end_index: int) -> str:
    """``value`` without items ``index`` to ``end_index`` (inclusive) and the
    separator that follows them (or, for the last items, the one before)."""
    start = spans[index][0]
    if end_index + 1 < len(spans):
        return value[:start] + value[spans[end_index + 1][0] :]
    before = spans[index - 1][1] if index > 0 else start
    return value[:before] + value[spans[end_index][1] :]


def _first(value: str, ours: Callable[[str], bool]) -> str:
    """``value`` with the (first) entry ``ours`` accepts moved to the front, written as
    it was; ``value`` itself when it is first already or not written there (it may come
    from a ``$parameter``)."""
    spans = list_spans(value)
    for i, (a, b) in enumerate(spans):
        if ours(value[a:b]):
            return value if i == 0 else f"{value[a:b]}, {_cut(value, spans, i, i)}"
    return value


def _milter_address(entry: str) -> str:
    """``unix:x`` of ``{ unix:x, default_action=accept }`` or of a bare ``unix:x``."""
    if entry.startswith("{") and entry.endswith("}"):
        parts = split_list(entry[1:-1])
        return parts[0] if parts else ""
    return entry


def same_socket(one: str, other: str, queue_directory: str) -> bool:
    """Whether two Postfix milter addresses name one socket (review rev41, rev44:
    smtpguard under another spelling got a second entry and ran twice per message).
    A unix path is relative to the queue directory (where Postfix's daemons run), and
    the same file through a link is the same socket; an inet host may be left out
    (localhost, as Postfix's inet_connect), written as a name of the loopback or in
    another form of the same address."""
    kind, _, rest = one.strip().partition(":")
    other_kind, _, other_rest = other.strip().partition(":")
    kinds = {kind.lower().replace("local", "unix"), other_kind.lower().replace("local", "unix")}
    if kinds == {"unix"}:
        first, second = (
            posixpath.normpath(posixpath.join(queue_directory, path)) for path in (rest, other_rest)
        )
        if first == second:
            return True
        try:
            a, b = os.stat(posixpath.dirname(first)), os.stat(posixpath.dirname(second))
        except OSError:
            return False
        same_directory = (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        return same_directory and posixpath.basename(first) == posixpath.basename(second)
    if kinds == {"inet"}:
        host, _, port = rest.rpartition(":")
        other_host, _, other_port = other_rest.rpartition(":")
        return port == other_port and bool(host_addresses(host) & host_addresses(other_host))
    return one.strip() == other.strip()


def _milter_options(entry: str) -> list[tuple[str, str]]:
    """The ``name=value`` settings of a grouped entry as Postfix reads them: an item
    may be braced itself (``{ default_action = accept }``), names in lower case."""
    if not (entry.startswith("{") and entry.endswith("}")):
        return []
    out = []
    for part in split_list(entry[1:-1])[1:]:
        braced = part.startswith("{") and part.endswith("}")
        key, _, value = (part[1:-1] if braced else part).partition("=")
        out.append((key.strip().lower(), value.strip()))
    return out


def _milter_option(entry: str, option: str) -> str | None:
    """The value of ``option`` in a grouped entry; the last one counts, as in Postfix
    (review rev46: "tempfail, then accept" was read as tempfail)."""
    values = [value for key, value in _milter_options(entry) if key == option]
    return values[-1] if values else None


def _with_tempfail(entry: str, address: str) -> str:
    """``entry`` for ``address`` with default_action=tempfail, its other settings
    kept."""
    kept = [f"{key}={value}" for key, value in _milter_options(entry) if key != "default_action"]
    return "{ " + ", ".join((address, "default_action=tempfail", *kept)) + " }"


def _has_our_settings(entry: str) -> bool:
    """A grouped milter entry with exactly the settings postfix-config writes."""
    if not (entry.startswith("{") and entry.endswith("}")):
        return False
    parts = split_list(entry[1:-1])
    return {"".join(part.split()) for part in parts[1:]} == set(MILTER_SETTINGS)


def _is_our_entry(entry: str) -> bool:
    """An ``smtpd_milters`` entry postfix-config wrote for smtpguard at another socket:
    exactly our settings, and an address that names smtpguard (an admin may have
    copied the settings for another milter)."""
    return _has_our_settings(entry) and "smtpguard" in _milter_address(entry).lower()


def _refers_to(raw: str, parameter: str) -> bool:
    """Whether a raw value expands ``$parameter`` (or ``${parameter...}``)."""
    return re.search(rf"\$\{{?{re.escape(parameter)}(?![A-Za-z0-9_])", raw) is not None


def postfix_milter_address(socket: str, queue_directory: str = "/var/spool/postfix") -> str:
    """The ``smtpd_milters`` form of our socket.

    A unix socket under Postfix's queue directory is given relative to it, which
    works for a chrooted smtpd (the chroot is the queue directory) and an unchrooted
    one (smtpd runs with the queue directory as its working directory).
    """
    kind, _, rest = socket.partition(":")
    if kind in ("unix", "local"):
        path = PurePosixPath(rest)
        queue = PurePosixPath(queue_directory)
        if path.is_relative_to(queue):
            return f"unix:{path.relative_to(queue)}"
        return f"unix:{path}"
    # libmilter's family:PORT@HOST with the loopback host it binds written out.
    kind, _, rest = libmilter_address(socket).partition(":")
    port, _, host = rest.partition("@")
    host = host.strip("[]")
    return f"inet:[{host}]:{port}" if kind == "inet6" else f"inet:{host}:{port}"


def _seconds(value: str) -> float:
    """A Postfix time value (``30s``, ``5m``; a bare number is seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if value[-1:] in units:
        return float(value[:-1]) * units[value[-1]]
    return float(value)


def postfix_network(net: IPNetwork) -> str:
    """``mynetworks`` form: IPv6 in brackets (``[::1]/128``), else read as a table."""
    if net.version == 6:
        return f"[{net.network_address}]/{net.prefixlen}"
    return str(net)


def _covered(net: IPNetwork, networks: Iterable[IPNetwork]) -> bool:
    """Whether ``net`` lies inside one of ``networks``."""
    return any(
        net.version == other.version and net.subnet_of(other)  # type: ignore[arg-type]
        for other in networks
    )


def _parse_network(token: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(unbracket(token), strict=False)
    except ValueError:
        return None


def relay_reply(replies: ReplyTable, utf8: bool) -> str:
    reply = replies.render("host_denies_relay", utf8=utf8)
    # Postfix takes only one line from an access map; %% is not special there. The
    # text stands in main.cf, inside static:{...}: "$" would expand a parameter and a
    # brace end the map early (review rev75 F4), so "$$" and parentheses.
    text = replies.one_line("host_denies_relay", utf8=utf8).replace("%%", "%")
    text = text.replace("$", "$$").translate(_NO_BRACES)
    return f"{reply.code} {reply.xcode} {text}"


_NO_BRACES = str.maketrans("{}", "()")


def relay_access(replies: ReplyTable, utf8: bool) -> str:
    return f"check_recipient_access static:{{{relay_reply(replies, utf8)}}}"


#: relay_control = "milter": pass every recipient on to smtpguard, but only while
#: smtpd_milters is not empty (commented out, the guard after it answers again).
MILTER_RELAY_PASS = "${smtpd_milters?{check_recipient_access static:{OK}}}"  # noqa: S105 - not a password


def footer_text(text: str) -> str:
    """A table text as a regexp_table(5) result that Postfix's footer expansion turns
    back into it: "%%" (the table's "%", for libmilter) is one "%" here, and "$" is
    "$$" (a regexp substitution otherwise) twice over (the footer's own $name
    expansion). Checked against Postfix 3.7; a backslash has no escape there (the
    footer reads "\\n" as a line break whatever precedes it)."""
    return text.replace("%%", "%").replace("$", "$$$$")


def postfix_footer_regexp(replies: ReplyTable, utf8: bool, admin_footer: str = "") -> str:
    """The smtpd_reject_footer_maps table. Postfix uses a matching entry instead of
    ``smtpd_reject_footer``, so the admin's footer (as main.cf writes it) is carried
    after each entry's text (review rev205 F3: the admin's help link was gone from
    every reply the table matched)."""
    admin_footer = admin_footer.strip()
    if admin_footer:
        # As written for the footer's own expansion: only the regexp table's "$" is
        # escaped. "\c" continues the line; anything else starts a line of its own.
        carried = admin_footer.replace("$", "$$")
        carried = carried[2:] if carried.startswith("\\c") else "\\n" + carried
    else:
        carried = ""
    out = []
    for pattern, reply_id, with_english in POSTFIX_FOOTERS:
        row = replies.rows[reply_id]
        # In the table's order of languages; English only where Postfix's own text
        # is not the table's.
        texts = [
            row.text[lang]
            for lang in replies.policy.languages
            if (with_english or lang != "en") and (utf8 or row.text[lang].isascii())
        ]
        text = (" " if with_english else "; ").join(texts)
        if text:
            # The pattern is delimited by "/": one inside it (HELO/EHLO) would end it
            # early and Postfix would skip the rule ("unknown regexp option").
            escaped = pattern.replace("/", "\\/")
            # The help link on a line of its own, as the milter's replies carry it
            # (review rev229 L2: Postfix's own refusals had none).
            link = (
                "\\n" + footer_text(replies.policy.help_url.format(id=reply_id))
                if replies.policy.help_url
                else ""
            )
            out.append(f"/{escaped}/ \\c ({footer_text(text)}){link}{carried}")
    return "\n".join(out) + ("\n" if out else "")


def _uses_table_utf8(config: Config) -> bool:
    return config.replies.utf8 == "always"


def plan(
    config: Config,
    replies: ReplyTable,
    current: Settings,
    *,
    non_smtpd_milters: bool = False,
) -> Plan:
    """What to change in the instance ``current`` describes, and what conflicts."""
    planner = _Planner(config, replies, current)
    planner.milters(non_smtpd_milters)
    planner.macros()
    planner.announced()
    planner.timeouts()
    planner.networks()
    planner.relay()
    planner.recipients()
    planner.mailboxes()
    planner.domains()
    planner.sizes()
    planner.hops()
    planner.delimiter()
    planner.utf8()
    planner.footers()
    planner.bare_newline()
    planner.master_services()
    planner.auth_in_clear()
    planner.cleanup()
    return Plan(
        config_directory=current.expanded["config_directory"],
        changes=tuple(planner.changes),
        notes=tuple(planner.notes),
        problems=tuple(planner.problems),
        unresolved=tuple(planner.unresolved),
        blocking=tuple(planner.blocking),
        footer_path=planner.footer_path,
        footers=postfix_footer_regexp(
            replies, _uses_table_utf8(config), current.raw.get("smtpd_reject_footer", "")
        ),
    )


class _Planner:
    def __init__(self, config: Config, replies: ReplyTable, current: Settings) -> None:
        self.config = config
        self.replies = replies
        self.raw = current.raw
        self.now = current.expanded
        self.changes: list[Change] = []
        self.notes: list[str] = []
        self.problems: list[str] = []
        #: Problems no change of the plan resolves.
        self.unresolved: list[str] = []
        #: Problems the plan's changes would cause: an open relay.
        self.blocking: list[str] = []
        self.address = postfix_milter_address(config.milter.socket, self.now["queue_directory"])
        self.footer_path = f"{self.now['config_directory']}/{FOOTER_FILE}"
        self.services = current.services
        #: The domains of each list, tables and files read (_domain_entries).
        self._domain_lists: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        #: The files and tables of a domain list that could not be read or listed, at
        #: any depth (filled by _domain_entries).
        self._unread: dict[str, list[str]] = {}
        #: As mydestination writes it (_listed_domains).
        self.myhostname = self.now["myhostname"].lower().rstrip(".")
        self.cleanup_chroot = current.cleanup_chroot
        #: smtpguard's address in main.cf's smtpd_milters as the plan leaves it.
        self.main_address = self.address
        #: smtpguard's address in non_smtpd_milters as the plan leaves it, or "".
        self.non_smtpd = ""
        #: main.cf's relay restriction lists as the plan leaves them (raw).
        self.relay_lists: dict[str, str] = {}

    def change(self, name: str, value: str, reason: str, problem: str | None = None) -> None:
        self.changes.append(Change(name, value, reason))
        if problem is not None:
            self.problems.append(f"{name}: {problem}")

    def problem(self, text: str, *, blocking: bool = False) -> None:
        """A conflict the plan leaves to the admin; ``blocking`` if applying the plan
        would open a relay because of it."""
        if blocking and any(MILTER_RELAY_PASS in self.raw[n] for n in _RELAY_LISTS):
            # An earlier run wrote the pass-through: not "would", it is (rev44).
            text += (
                f". It is open now: main.cf already has {MILTER_RELAY_PASS}; close it"
                ' with relay_control = "postfix" and postfix-config, or fix the cause'
            )
        self.problems.append(text)
        self.unresolved.append(text)
        if blocking:
            self.blocking.append(text)

    # --- milters ------------------------------------------------------------------

    def milters(self, non_smtpd: bool) -> None:
        entry = "{ " + ", ".join((self.address, *MILTER_SETTINGS)) + " }"
        inherited = _refers_to(self.raw["non_smtpd_milters"], "smtpd_milters")
        if inherited:
            self.notes.append(
                "non_smtpd_milters refers to $smtpd_milters: mail submitted with sendmail"
                " (pickup) goes through smtpguard too, as client localhost [127.0.0.1]"
            )
        params = ["smtpd_milters"] + (["non_smtpd_milters"] if non_smtpd and not inherited else [])
        protocols = set(split_list(self.now["inet_protocols"]))
        local = _LOOPBACK if protocols & {"all", "ipv4"} else _LOOPBACK6
        theirs = [e for e in split_list(self.now["non_smtpd_milters"]) if self._is_ours(e)]
        # Also where an earlier run (or the admin) put smtpguard there: a --check after
        # inet_protocols or trusted_networks changed said "no conflicts" while every
        # local message bounced (review rev230 M2).
        local_mail = non_smtpd or inherited or bool(theirs)
        if local_mail and not self.config.site.is_trusted_ip(local):
            network = "127.0.0.0/8" if local.version == 4 else "::1/128"
            self.problem(
                f"non_smtpd_milters: Postfix shows smtpguard mail submitted with sendmail as"
                f" client {local}, and {local} is not in site.trusted_networks: it would"
                f" be refused (helo_error, relay_local_fail); add {network} there"
            )
        for name in params:
            self._milter_entry(name, entry)
        if non_smtpd or inherited:
            self.non_smtpd = self.address
        else:
            self.non_smtpd = _milter_address(theirs[0]) if theirs else ""

    def _milter_entry(self, name: str, entry: str) -> None:
        """smtpguard's entry in one milter list: added, moved to the front, or put in
        place of an earlier postfix-config's entry for another socket; one change with
        every reason."""
        entries = split_list(self.now[name])
        ours = [e for e in entries if self._is_ours(e)]
        raw = self.raw[name]
        spans = list_spans(raw)
        stale = [
            i
            for i, (a, b) in enumerate(spans)
            if _is_our_entry(raw[a:b]) and not self._is_ours(raw[a:b])
        ]
        self._lookalikes(name, [raw[a:b] for a, b in spans])
        value = raw
        reasons: list[str] = []
        problems: list[str] = []
        if stale:
            old = ", ".join(_milter_address(raw[slice(*spans[i])]) for i in stale)
            for i in reversed(stale):
                value = _cut(value, list_spans(value), i, i)
            # Left there, a dead socket would defer every message (default_action).
            if ours:
                reasons.append(
                    f"smtpguard's entry for an earlier milter.socket ({old}) removed: its"
                    " dead socket would defer every message"
                )
                problems.append(f"holds smtpguard's entry for {old} beside {self.address}")
            else:
                reasons.append(f"smtpguard's entry follows milter.socket ({old} -> {self.address})")
                problems.append(
                    f"smtpguard's entry is for {old}, not milter.socket ({self.address})"
                )
        value = self._one_spelling(name, value, reasons, problems)
        if not ours:
            value = _append(value, entry)
            if not stale:
                reasons.append(
                    "attach smtpguard; default_action=tempfail: while it is down mail is"
                    " deferred, never accepted unchecked"
                )
                problems.append(f"smtpguard ({self.address}) is not in it")
        first = _first(value, self._is_ours)
        if first != value:
            value = first
            reasons.append(
                "smtpguard first, the other milters after it in their order: it must see"
                " the header fields as the client sent them (it removes incoming"
                " Authentication-Results with its authserv-id and X-Spam-* fields, which"
                " would take those of a milter before it)"
            )
            if ours:
                problems.append(f"another milter comes before smtpguard ({self.address})")
        if value != raw:
            self.change(name, value, "; ".join(reasons), "; ".join(problems) or None)
        if ours and not any(self._is_ours(raw[a:b]) for a, b in spans):
            # Reached through a $parameter this plan does not rewrite.
            if not self._is_ours(entries[0]):
                # Review rev166 F4: not moved to the front, and nothing said so.
                self.problem(
                    f"{name}: another milter ({_milter_address(entries[0])}) comes before"
                    f" smtpguard ({self.address}) in {raw}, which this does not rewrite:"
                    " put smtpguard first there (it must see the header fields as the"
                    " client sent them)"
                )
            self._default_action(
                name,
                ours[0],
                self.now["milter_default_action"],
                relays=name == "smtpd_milters",
            )
        if name == "smtpd_milters":
            # What services without smtpd_milters of their own use (review rev46: one
            # reached through $my_milters was not what the chroot check tested).
            written = any(self._is_ours(value[a:b]) for a, b in list_spans(value))
            self.main_address = self.address if written or not ours else _milter_address(ours[0])

    def _lookalikes(self, name: str, entries: list[str]) -> None:
        """Review rev166 F1: an earlier milter.socket whose address does not name
        smtpguard stays (it may be another milter's copy of our settings), and its dead
        socket defers every message: said, not removed."""
        for entry in entries:
            if _has_our_settings(entry) and not _is_our_entry(entry) and not self._is_ours(entry):
                self.problem(
                    f"{name}: {_milter_address(entry)} has exactly the settings"
                    " postfix-config writes for smtpguard: if it was smtpguard's earlier"
                    " milter.socket, take it out (its dead socket defers every message);"
                    " if it is another milter, change one of its settings and this goes away"
                )

    def _default_action(self, where: str, entry: str, default: str, *, relays: bool = True) -> None:
        """smtpguard's entry must defer mail while it is down. In milter mode anything
        but tempfail or reject also opens the relay then: the pass-through lets every
        recipient by, and no smtpguard refuses them (review rev44, rev46: a stranger's
        mail was delivered while smtpguard restarted). ``relays``: the entry serves
        smtpd (non_smtpd_milters does not: mail from sendmail(1) is local)."""
        action = (_milter_option(entry, "default_action") or default).lower()
        if action == "tempfail":
            return
        milter_mode = self.config.site.relay_control == "milter"
        opens = relays and milter_mode and action != "reject"
        self.problem(
            f"{where}: default_action for {_milter_address(entry)} is {action!r}: with"
            " smtpguard down mail would not be deferred"
            + (' but relayed for anyone (open relay, relay_control = "milter")' if opens else "")
            + " (use default_action=tempfail)",
            blocking=opens,
        )

    def _is_ours(self, entry: str) -> bool:
        return same_socket(_milter_address(entry), self.address, self.now["queue_directory"])

    def _one_spelling(self, name: str, value: str, reasons: list[str], problems: list[str]) -> str:
        """``value`` with smtpguard written once, as postfix-config writes its address
        (relative to the queue directory, which a chrooted smtpd reaches), its entry's
        settings kept."""
        mine = [i for i, (a, b) in enumerate(list_spans(value)) if self._is_ours(value[a:b])]
        for i in reversed(mine[1:]):
            value = _cut(value, list_spans(value), i, i)
        if len(mine) > 1:
            reasons.append(
                f"smtpguard was listed {len(mine)} times: it ran once per entry, every"
                " check twice; the first entry kept"
            )
            problems.append(f"lists smtpguard ({self.address}) {len(mine)} times")
        if mine:
            a, b = list_spans(value)[mine[0]]
            entry = value[a:b]
            written = _milter_address(entry)
            # Rewritten only to the relative spelling a chrooted smtpd reaches; an
            # admin's relative one (a bind mount in the chroot) stays (review rev46:
            # rewritten to the absolute path, every message got 451).
            address = self.address
            kind, _, path = written.partition(":")
            if address.startswith("unix:/") and kind in ("unix", "local") and path[:1] != "/":
                address = written
            elif written != address:
                reasons.append(
                    f"smtpguard's address written as {address}, not {written}: the"
                    " same socket, in the spelling a chrooted smtpd reaches"
                )
                problems.append(f"names smtpguard's socket {written}, not {address}")
            action = _milter_option(entry, "default_action") or self.now["milter_default_action"]
            if action.lower() != "tempfail" or not entry.startswith("{"):
                fixed = _with_tempfail(entry, address)
            else:
                fixed = entry.replace(written, address, 1)
            if action.lower() != "tempfail":
                reasons.append(
                    "default_action=tempfail in smtpguard's entry: while it is down mail is"
                    " deferred, never accepted unchecked (nor relayed in milter mode)"
                )
                problems.append(f"default_action for {written} is {action!r}, not tempfail")
            if fixed != entry:
                value = value[:a] + fixed + value[b:]
        return value

    def macros(self) -> None:
        for name, wanted in POSTFIX_MACROS.items():
            have = set(split_list(self.now[name]))
            missing = [m for m in wanted.split() if m not in have]
            if missing:
                self.change(
                    name,
                    _append(self.raw[name], " ".join(missing), sep=" "),
                    f"smtpguard reads {' '.join(missing)}",
                    f"missing {' '.join(missing)}",
                )

    def announced(self) -> None:
        """A problem where what this Postfix sends in macro v (``milter_macro_v``, in
        main.cf or an smtpd service's -o) makes smtpguard take it for Sendmail
        (:func:`~smtpguard.session.detect_mta`): an empty value, or Sendmail's 8.x
        version. Then a stranger's relay that reaches smtpguard passes in a dry run or
        report mode (no relay guard: Sendmail's relay rules are its own), and the
        replies lose their UTF-8 text (review rev151 F1)."""
        values = {"main.cf": self.now["milter_macro_v"]}
        for service in self.services:
            if "milter_macro_v" in service.expanded:
                values[f"master.cf {service.name}"] = service.expanded["milter_macro_v"]
        for where, value in values.items():
            mta = detect_mta(value.strip() or None, self.config.milter.mta)
            if mta.likely_sendmail:
                self.problems.append(
                    f"milter_macro_v = {value.strip()!r} ({where}): with [milter] mta ="
                    f" {self.config.milter.mta!r} smtpguard takes this Postfix for Sendmail"
                    " (no relay guard in a dry run or report mode, ASCII replies); give"
                    " milter_macro_v its default ($mail_name $mail_version) or set"
                    ' [milter] mta = "postfix"'
                )

    def timeouts(self) -> None:
        """A note where smtpguard can take longer to answer a step than our entry's
        timeout lets Postfix wait: Postfix would then apply default_action (tempfail)
        instead of smtpguard's verdict. Postfix's timer also runs while the step waits
        for one of libmilter's threads, which under a burst can take as long as a
        callback (review rev61 F4): the entry's timeout should be twice the callback's
        bound (``QUEUE_FACTOR``). The entry's values stay: the config is what makes
        smtpguard that slow (its scanner and DNS timeouts)."""
        bounds = answer_bounds(self.config)
        ours = dict(setting.split("=", 1) for setting in MILTER_SETTINGS)
        for option, worst, steps in (
            ("command_timeout", bounds.command, "connect to DATA"),
            ("content_timeout", bounds.content, "headers, body and end of message"),
        ):
            if QUEUE_FACTOR * worst > _seconds(ours[option]):
                self.notes.append(
                    f"{option}={ours[option]} in smtpguard's smtpd_milters entry is below"
                    f" twice the {worst:g} s smtpguard may take to answer ({steps}; its"
                    " DNS, directory, state and scanner timeouts; under a burst a step"
                    " may first wait as long for a libmilter thread): Postfix would"
                    " defer such mail itself; lower those timeouts or raise the entry's"
                )

    # --- relaying ---------------------------------------------------------------

    def networks(self) -> None:
        """mynetworks is the admin's; what differs from site.trusted_networks is a
        note, except clients Postfix trusts and smtpguard does not: their mail with a
        sender of ours is refused at MAIL FROM and their relaying at RCPT, in a dry run
        too (review rev121 F1: a LAN's printers bounced while --check said "no
        conflicts"). An IPv4-mapped entry is the IPv4 network smtpguard reads it as."""
        tokens = split_list(self.now["mynetworks"])
        # Networks in /file entries and cidr: tables count as written (review rev166
        # F2: a LAN in a file got 553 relay_local_fail while --check said no conflicts).
        written: dict[IPNetwork, str] = {}
        others: list[str] = []
        bare: dict[str, IPNetwork] = {}
        for label, net, is_bare in self._network_items(tokens, set()):
            if net is None:
                others.append(label)
            elif is_bare:
                bare[label] = net
            else:
                written.setdefault(net, label)
        if bare:
            fixed = " ".join(postfix_network(n) for n in bare.values())
            self.problem(
                f"mynetworks has {' '.join(bare)}: Postfix reads an IPv6 network without"
                " brackets as a lookup table (type:table), which fails, and then defers"
                f" mail for every recipient (451 4.3.0); write it {fixed}"
            )
        indirect = [t for t in tokens if _parse_network(t) is None]
        ours = self.config.site.trusted_networks
        theirs = {unmapped_network(n) for n in written}
        uncovered = [t for n, t in written.items() if not _covered(unmapped_network(n), ours)]
        if uncovered:
            self.problem(
                f"mynetworks has {' '.join(uncovered)}, outside site.trusted_networks:"
                " Postfix lets these clients relay, smtpguard refuses their mail from a"
                " sender of our domains at MAIL FROM (relay_local_fail) and their"
                " relaying at RCPT (host_denies_relay), in a dry run and report mode"
                " too; add them to site.trusted_networks (or take them out of mynetworks)"
            )
        only_ours = [n for n in ours if not _covered(n, theirs)]
        if not (only_ours or others):
            return
        text = [f"mynetworks left as it is ({self.now['mynetworks'] or 'empty'});"]
        if only_ours:
            nets = " ".join(postfix_network(n) for n in only_ours)
            text.append(
                f"in site.trusted_networks only: {nets} (smtpguard lets them relay,"
                " Postfix does not);"
            )
        if others:
            text.append(f"not compared: {' '.join(others)};")
        if indirect:
            # Never advice that would drop the networks of the admin's files and tables.
            text.append(
                "to make them equal, list in mynetworks (or its files and tables) what"
                " site.trusted_networks has, and the other way round"
            )
        else:
            wanted = " ".join(postfix_network(n) for n in ours)
            text.append(f"to make them equal: mynetworks = {wanted or '(empty)'}")
        self.notes.append(" ".join(text))

    def _network_items(
        self, items: list[str], read: set[str], including: tuple[str, ...] = ()
    ) -> Iterator[tuple[str, IPNetwork | None, bool]]:
        """mynetworks' networks, each with where it is written (the item, or
        ``network (in FILE)``), as Postfix's match_list reads them: /file entries hold
        more items, a cidr: table's keys are networks; None for what is not compared
        (an exclusion, another table type, a file that cannot be read). And whether it
        is IPv6 written bare where Postfix reads a word (main.cf, a /file): Postfix
        reads a word with a colon as type:table unless it is bracketed, a lookup that
        fails and defers every recipient (review rev167 F2, rev170 F1; mta-facts);
        cidr: tables take it bare."""
        for item in items:
            if item.startswith("!"):
                yield item, None, False
                continue
            if item.startswith("/"):
                try:
                    listed = self._included("mynetworks", item, read, including)
                except OSError as exc:
                    yield f"{item} ({exc.strerror or exc})", None, False
                    continue
                inner = self._network_items(listed or [], read, (*including, item))
                for label, net, is_bare in inner:
                    where = label if label.endswith(")") else f"{label} (in {item})"
                    yield where, net, is_bare
                continue
            kind, sep, path = item.removeprefix("proxy:").partition(":")
            if sep and kind == "cidr" and not _parse_network(item):
                try:
                    text = Path(path).read_text(errors="replace")
                except OSError as exc:
                    yield f"{item} ({exc.strerror or exc})", None, False
                    continue
                for line in text.splitlines():
                    words = line.partition("#")[0].split()
                    if not words or words[0] in ("if", "endif") or words[0].startswith("!"):
                        continue
                    yield f"{words[0]} (in {item})", _parse_network(words[0]), False
                continue
            net = _parse_network(item)
            yield item, net, net is not None and ":" in item and not item.startswith("[")

    def _included(
        self, name: str, item: str, read: set[str], including: tuple[str, ...]
    ) -> list[str] | None:
        """The items of a list's ``/file`` entry, None when the list read it already
        (``read``, shared by the whole list: a web of files that include each other was
        read along every path through it, rev46); OSError if it cannot be read. A file
        among those ``including`` it is a cycle: the first of a list is a conflict, as
        measured with Postfix 3.7 (review rev51): the list's lookups then fail."""
        if item in including and not any(
            n.startswith(f"{name}: ") and "includes itself" in n for n in self.unresolved
        ):
            # The first cycle of a list: a web of files has as many as paths.
            self.problem(
                f"{name}: {item} includes itself (through {' -> '.join(including)}):"
                " Postfix reads it again until it runs out of file descriptors, and"
                ' answers "451 4.3.0 Temporary lookup failure" for what comes after it'
                " and for everything the list does not name"
            )
        if item in read:
            return None
        read.add(item)
        return _file_items(item)

    def relay(self) -> None:
        milter_mode = self.config.site.relay_control == "milter"
        ours = relay_access(self.replies, self._utf8)
        names = ("smtpd_relay_restrictions", "smtpd_recipient_restrictions")
        # Earlier postfix-config output (the other relay_control, an older reply text)
        # comes out first; everything else stays as the admin wrote it, unexpanded. In
        # milter mode everything of ours comes out, to go back in its order.
        cleaned = {name: self._without_ours(name, None if milter_mode else ours) for name in names}
        open_relay = self._open_relay_problems(cleaned, milter_mode)
        name = "smtpd_relay_restrictions"
        if (
            not _guards(cleaned[name])
            and not self.now[name].strip()
            and _guards(cleaned["smtpd_recipient_restrictions"])
        ):
            name = "smtpd_recipient_restrictions"
        value = self._with_ours(name, cleaned[name], ours, milter_mode)
        if (
            milter_mode
            and name == "smtpd_relay_restrictions"
            and _guards(cleaned["smtpd_recipient_restrictions"])
        ):
            self.notes.append(
                "smtpd_recipient_restrictions has a relay guard of its own, evaluated after"
                " smtpd_relay_restrictions: Postfix answers relaying there with its own text"
                f' (site.relay_control = "milter" needs {MILTER_RELAY_PASS} before it too)'
            )
        for other in names:
            new = value if other == name and value is not None else cleaned[other]
            self.relay_lists[other] = new
            if new == self.raw[other]:
                continue
            stale = self.raw[other] != self._without_ours(other, None)
            conflict = None
            if (
                stale
                and milter_mode
                and self._without_ours(other, MILTER_RELAY_PASS) == self.raw[other]
            ):
                # Written by a release before rev119 F3: the pass-through alone. Not a
                # conflict; what this plan adds is the table's reply for routed mail.
                stale = False
            elif stale and not milter_mode and MILTER_RELAY_PASS in self.raw[other]:
                # Review rev116 F2: left from relay_control = "milter".
                conflict = (
                    f"passes every recipient to the milter ({MILTER_RELAY_PASS}, the"
                    ' setting of site.relay_control = "milter"): Postfix refuses no relaying'
                    " itself until this is applied, and smtpguard refuses it at RCPT"
                    " whatever its dry run or relay check's mode say"
                )
            elif stale:
                conflict = (
                    "holds smtpguard relay settings of another site.relay_control or reply text"
                )
            self.change(
                other,
                new,
                self._relay_reason(new, new is not value, milter_mode, open_relay),
                conflict,
            )

    def _with_ours(self, name: str, base: str, ours: str, milter_mode: bool) -> str | None:
        """``base`` with ``ours`` (the table's static relay reply) right before its
        relay guard, in milter mode after the pass-through, or None (and a note) where
        that cannot be done without changing what the admin's list means."""
        if ours in base and not milter_mode:
            return base
        if not _guards(base):
            if not self.now[name].strip():
                base = "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
            elif base.startswith("${{$compatibility_level}") and _guards(self.now[name]):
                # Postfix's own default: nothing of the admin's to keep unexpanded.
                base = ", ".join(split_list(self.now[name]))
        spans, guards = list_spans(base), _guards(base)
        if not guards:
            if _guards(self.now[name]):
                before = f"{MILTER_RELAY_PASS}, {ours}" if milter_mode else ours
                self.notes.append(
                    f"{name} reaches its relay guard through another parameter"
                    f" ({self.raw[name]}): to get the table's relay reply, put"
                    f" permit_auth_destination, {before} before the guard there"
                )
            else:
                self.notes.append(
                    f"{name} has no reject_unauth_destination: Postfix decides relaying"
                    " with its own rules, smtpguard's relay reply is not used"
                )
            return None
        if guards[-1] != len(spans) - 1:
            self.notes.append(
                f"{name}: entries follow {base[slice(*spans[guards[-1]])]}, so the table's"
                " relay reply is not inserted (it would skip them); Postfix answers relaying"
                " with its own text"
            )
            return None
        at = spans[guards[-1]][0]
        insert = [MILTER_RELAY_PASS, ours] if milter_mode else [ours]
        if "permit_auth_destination" not in restriction_list(base[:at]):
            # Before the pass-through too: an earlier run's stays where it was.
            insert = ["permit_auth_destination", *insert]
        # In the admin's style: a list written without commas gets none.
        sep = ", " if any(base[b:e].strip() == "," for b, e in _gaps(spans)) else " "
        return base[:at] + sep.join(insert) + sep + base[at:]

    @staticmethod
    def _relay_reason(new: str, cleaned_only: bool, milter_mode: bool, open_relay: bool) -> str:
        if cleaned_only:
            return "earlier smtpguard relay settings removed (site.relay_control changed)"
        if milter_mode:
            return (
                'site.relay_control = "milter": smtpguard answers relaying with the'
                " table's exact text; you give up Postfix's own relay refusal while"
                " smtpguard is in smtpd_milters (if smtpguard is down mail is deferred; if"
                " smtpd_milters is emptied the static:{OK} vanishes and Postfix refuses"
                " relaying again)"
            )
        if open_relay:
            return (
                "unauthorized relaying gets the table's reply from Postfix itself; but see"
                " the conflict above: an earlier entry passes every recipient"
            )
        return (
            "unauthorized relaying gets the table's reply from Postfix itself, before"
            f" {split_list(new)[-1]}: relaying stays closed with smtpguard down,"
            " removed or in dry run (Postfix puts '<rcpt>: Recipient address"
            " rejected:' before the text)"
        )

    @property
    def _utf8(self) -> bool:
        return _uses_table_utf8(self.config)

    def _without_ours(self, name: str, keep: str | None) -> str:
        """The raw value without what postfix-config wrote for relaying, except ``keep``
        (what it would write now): the milter-mode pass-through, and the table's relay
        reply (same code and enhanced code) with the relay guard right after it."""
        value = self.raw[name]
        reply = self.replies.render("host_denies_relay", utf8=self._utf8)
        for old in self._unescaped_relay_entries(reply):
            # Written by releases before the text was escaped for main.cf (review rev76
            # N3): a brace in it breaks Postfix's list, so it is found as text, in the
            # shape written below (rev77 R1: an admin's own reject-all stays).
            if old != keep:
                written = re.compile(re.escape(old) + rf"[\s,]*(?=(?i:{'|'.join(RELAY_GUARDS)})\b)")
                value = written.sub(
                    lambda m: (
                        "" if "permit_auth_destination" in m.string[: m.start()].lower() else m[0]
                    ),
                    value,
                )
        prefix = f"static:{{{reply.code} {reply.xcode} "
        spans = list_spans(value)
        items = [value[a:b] for a, b in spans]
        names = restriction_list(value)
        for i in reversed(range(len(items))):
            if items[i] == MILTER_RELAY_PASS and keep != MILTER_RELAY_PASS:
                value = _cut(value, spans, i, i)
            elif (
                items[i] == "check_recipient_access"
                and i + 2 < len(items)
                and items[i + 1].startswith(prefix)
                and names[i + 2] in RELAY_GUARDS
                # As written: after permit_auth_destination it only ever meets relay
                # attempts. Without one, it is the admin's reject-all, and stays.
                and "permit_auth_destination" in names[:i]
                and f"{items[i]} {items[i + 1]}" != keep
            ):
                value = _cut(value, spans, i, i + 1)
        return value

    def _unescaped_relay_entries(self, reply: Reply) -> list[str]:
        """The relay entries earlier releases wrote for ``reply`` (this table's
        host_denies_relay) where the text has a "$" or a brace: the first line of the
        reply, or its one-line form, as is."""
        texts = {
            reply.lines[0].replace("%%", "%"),
            self.replies.one_line("host_denies_relay", utf8=self._utf8).replace("%%", "%"),
        }
        return [
            f"check_recipient_access static:{{{reply.code} {reply.xcode} {text}}}"
            for text in sorted(texts)
            if any(c in text for c in "${}")
        ]

    def _open_relay_problems(self, cleaned: Mapping[str, str], milter_mode: bool) -> bool:
        """Report what passes every recipient before the relay guard; True if any."""
        found = False
        every: list[str] = []
        lists: dict[str, list[str]] = {}
        for name, value in cleaned.items():
            if "$" not in value.replace(MILTER_RELAY_PASS, ""):
                # Nothing to expand but our own pass-through: read what the admin wrote,
                # not what an earlier postfix-config left there (a broken entry of one
                # hid the guard after it; rev77 R2).
                items = restriction_list(value.replace(MILTER_RELAY_PASS, ""))
            elif milter_mode and MILTER_RELAY_PASS in value:
                every += restriction_list(self.now[name])
                continue  # its expansion cannot be told apart from the admin's items
            else:
                items = restriction_list(self.now[name])
                if MILTER_RELAY_PASS in self.raw[name] and self.now["smtpd_milters"].strip():
                    # The expansion of our own pass-through, which this plan removes.
                    items = _without_pass(items)
            every += items
            lists[name] = items
        for name, items in lists.items():
            if not milter_mode and any(
                _closes_relay(other) for other_name, other in lists.items() if other_name != name
            ):
                # smtpd applies both lists, and a refusal in either ends the RCPT: the
                # other one closes relaying whatever this one permits (review rev205 F2:
                # Postfix's own split, relay guard in smtpd_relay_restrictions and a
                # final permit in smtpd_recipient_restrictions, was called an open
                # relay). Not in milter mode: there smtpd_relay_restrictions passes
                # everything while milters are configured, and smtpguard decides.
                continue
            guard = next((i for i, item in enumerate(items) if item in RELAY_GUARDS), None)
            for item in items[: len(items) if guard is None else guard]:
                if item == "permit" or _passes_all(item):
                    found = True
                    self.problem(
                        f"{name}: {item!r} before the relay guard passes every recipient:"
                        " open relay as soon as smtpguard is removed, stopped or in dry run"
                    )
        has_guard = any(item in (*RELAY_GUARDS, "reject", "defer") for item in every)
        if not has_guard:
            found = True
            self.problem(
                "smtpd_relay_restrictions: neither it nor smtpd_recipient_restrictions has"
                " reject_unauth_destination: open relay possible"
            )
        return found

    # --- master.cf services -------------------------------------------------------

    def master_services(self) -> None:
        """What main.cf's settings mean for each smtpd service of master.cf: one
        without smtpguard, and one that runs it a second time on a content filter's
        output. postfix-config writes main.cf only; these are the admin's to fix.
        Overrides are read as Postfix expands them (``postconf -P -x``)."""
        filtering = bool(self.now["content_filter"].strip()) or any(
            s.expanded.get("content_filter", "").strip()
            or s.expanded.get("smtpd_proxy_filter", "").strip()
            for s in self.services
        )
        milter_mode = self.config.site.relay_control == "milter"
        if milter_mode and self.now["smtpd_milter_maps"].strip():
            self.problem(
                f"smtpd_milter_maps ({self.raw['smtpd_milter_maps']}): the clients it gives"
                " other milters or DISABLE skip smtpguard while smtpd_milters is set, so"
                f" {MILTER_RELAY_PASS} passes every recipient for them: open relay"
                ' (site.relay_control = "milter"); use relay_control = "postfix"',
                blocking=True,
            )
        guarded_public: list[str] = []
        unguarded_public: list[str] = []
        for service in self.services:
            o, x = service.overrides, service.expanded
            listed, off, milters = self._service_milters(service)
            where = f"master.cf service {service.label}"
            public = not self._loopback_only(service)
            if public:
                (guarded_public if listed and not off else unguarded_public).append(service.label)
            if listed and not off and "smtpd_milters" in o:
                if listed != self.address:
                    self.problem(
                        f"{where}: names smtpguard's socket {listed} (-o smtpd_milters), not"
                        f" {self.address}, the spelling a chrooted smtpd reaches"
                    )
                entry = next(e for e in split_list(milters) if self._is_ours(e))
                default = x.get("milter_default_action", self.now["milter_default_action"])
                # Its own restrictions refusing outsiders, the pass-through opens nothing
                # there while smtpguard is down (review rev177 F3: blocked as an open relay).
                relays = public and not any(
                    _closes_relay(items) for items in self._relay_items(service)
                )
                self._default_action(where, entry, default, relays=relays)
            if milter_mode and x.get("smtpd_milter_maps", "").strip():
                self.problem(
                    f"{where}: its smtpd_milter_maps may let clients skip smtpguard while"
                    f" {MILTER_RELAY_PASS} passes every recipient: open relay"
                    ' (site.relay_control = "milter")',
                    blocking=True,
                )
            if listed and not off:
                # The address that service uses (review rev44: one of its own,
                # spelled absolute, deferred every message unreported).
                self._chroot_problem(service.chroot, where, "every message", listed)
                content_filter = x.get("content_filter", self.now["content_filter"])
                proxy_filter = x.get("smtpd_proxy_filter", "")
                reinjection = "content_filter" in o or not public
                if filtering and not (content_filter + proxy_filter).strip() and reinjection:
                    self.problem(
                        f"{where}: takes mail back from the content filter (no"
                        " content_filter) and runs smtpguard on it a second time, from a"
                        " trusted client: forwarded mail is refused (relay_domain_fail), the"
                        " filter's X-Spam-* fields and our Authentication-Results are"
                        " removed as forged, and with content.add_loop_marker every message for"
                        " our domains bounces (looping_message); add no_milters to its"
                        " -o receive_override_options"
                    )
                continue
            why = "no_milters" if off else f"smtpd_milters = {milters or '(empty)'}"
            # The pass-through is on wherever the service's smtpd_milters is not empty,
            # smtpguard in it or not (no_milters leaves the parameter set).
            if (
                milter_mode
                and milters.strip()
                and public
                and not any(_closes_relay(items) for items in self._relay_items(service))
            ):
                self.problem(
                    f"{where}: smtpguard does not run there ({why}), but smtpd_milters is"
                    f" set, so main.cf's {MILTER_RELAY_PASS} passes every recipient on"
                    " it, and its own restrictions do not refuse relaying: open relay"
                    ' (site.relay_control = "milter"). Give it'
                    " -o smtpd_relay_restrictions=permit_sasl_authenticated,"
                    'reject_unauth_destination, or use relay_control = "postfix"',
                    blocking=True,
                )
            elif _port_25(service) and public and not _lan_only(service):
                # Review rev166 F5: the admin's -o smtpd_milters kept smtpguard off the
                # service mail from outside comes in on, and --check said "no conflicts".
                self.problem(
                    f"{where}: smtpguard does not run there ({why}), on the service mail"
                    " from other hosts comes in on: none of its checks are made; remove"
                    " its -o smtpd_milters (main.cf's names smtpguard) or add"
                    f" {self.address} to it"
                )
            else:
                self.notes.append(f"{where}: smtpguard does not run there ({why})")
        if unguarded_public and not guarded_public:
            self.problem(
                f"smtpguard runs on none of the smtpd services other hosts reach"
                f" ({', '.join(unguarded_public)}): none of its checks are made"
            )

    def auth_in_clear(self) -> None:
        """Where smtpd offers AUTH before STARTTLS while ``policy.auth_tls_required``
        names PLAIN or LOGIN: the password crosses the network in clear before the
        auth_mechanism check can refuse the session at MAIL FROM, and its 451 makes the
        client send it again (review rev222 F2). Sendmail gets AuthOptions=p."""
        clear = sorted(self.config.policy.auth_tls_required & {"PLAIN", "LOGIN"})
        if not clear or self.config.check("auth_mechanism").mode == "off":
            return
        # Each service other hosts reach, as it runs (main.cf's values where it has no
        # -o of its own); main.cf itself only where master.cf was not read (review
        # rev223 L3: main.cf was noted though every service overrode it).
        places: list[tuple[str, Mapping[str, str]]] = [
            (f"master.cf service {s.label}", s.expanded)
            for s in self.services
            if not self._loopback_only(s)
        ]
        if not self.services:
            places = [("main.cf", {})]
        for where, own in places:

            def value(name: str, own: Mapping[str, str] = own) -> str:
                return own.get(name, self.now[name]).strip().lower()

            # Postfix's older spelling of "encrypt" where the level is left empty.
            level = value("smtpd_tls_security_level") or (
                "encrypt" if value("smtpd_enforce_tls") == "yes" else ""
            )
            if (
                value("smtpd_sasl_auth_enable") == "yes"
                and value("smtpd_tls_auth_only") != "yes"
                and level != "encrypt"
                and value("smtpd_tls_wrappermode") != "yes"
            ):
                self.notes.append(
                    f"{where}: offers AUTH before STARTTLS (smtpd_tls_auth_only = no):"
                    f" {' and '.join(clear)} send the password in clear, and"
                    " policy.auth_tls_required refuses that only at MAIL FROM"
                    " (auth_mode_unsupported, a 451 the client retries, password and"
                    " all); set smtpd_tls_auth_only = yes there"
                )

    def _service_milters(self, service: Service) -> tuple[str | None, bool, str]:
        """smtpguard's address in the service's smtpd_milters (None if not there),
        whether no_milters turns them off there, and its smtpd_milters as expanded
        ("main.cf's")."""
        o, x = service.overrides, service.expanded
        receive = x.get("receive_override_options", self.now["receive_override_options"])
        off = "no_milters" in split_list(receive)
        milters = o.get("smtpd_milters")
        if milters is None or _refers_to(milters, "smtpd_milters"):
            # main.cf's list, which holds smtpguard's entry once this plan is applied.
            return self.main_address, off, milters or "main.cf's"
        milters = x.get("smtpd_milters", milters)
        ours = next((e for e in split_list(milters) if self._is_ours(e)), None)
        return (None if ours is None else _milter_address(ours)), off, milters

    def _unchecked_recipients(self) -> list[str]:
        """Where outside clients meet no smtpguard although main.cf's smtpd_milters
        names it, and main.cf's smtpd_reject_unlisted_recipient holds: services with
        milters of their own or no_milters, and clients that smtpd_milter_maps gives
        other milters."""
        out = []
        for service in self.services:
            listed, off, milters = self._service_milters(service)
            if (
                (listed and not off)
                or self._loopback_only(service)
                or "smtpd_reject_unlisted_recipient" in service.overrides
                # Emptied there, the conditional says yes on that service (rev44).
                or not milters.strip()
            ):
                continue
            why = "no_milters" if off else f"smtpd_milters = {milters or '(empty)'}"
            out.append(f"master.cf service {service.label} ({why})")
        maps = [self.now["smtpd_milter_maps"]] + [
            s.expanded.get("smtpd_milter_maps", "") for s in self.services
        ]
        if any(m.strip() for m in maps):
            out.append("the clients smtpd_milter_maps gives other milters or DISABLE")
        return out

    def _chroot_problem(self, chroot: str, where: str, mail: str, address: str) -> None:
        """A chrooted service sees only what is under queue_directory (its chroot): the
        socket's directory must be the one smtpguard listens in when reached from in
        there, symbolic links resolved against the chroot (review rev41: a link under
        the queue directory to /run broke the default relative address unnoticed, and
        a link that does lead to the socket was reported). Otherwise ``mail`` is
        deferred with 451 4.7.1."""
        kind, _, path = address.partition(":")
        if kind not in ("unix", "local") or not _chrooted(chroot, self.now["compatibility_level"]):
            return
        queue = self.now["queue_directory"]
        # A relative address is relative to the queue directory, which is "/" inside.
        socket = PurePosixPath(queue, path)
        seen = PurePosixPath("/", path).parent
        why = _unreachable(queue, seen, socket.parent)
        if why is None:
            return
        column = "y" if chroot == "y" else "- (y below compatibility_level 1)"
        self.problem(
            f"{where}: runs chrooted (chroot {column} in master.cf) in {queue}, where the"
            f" directory of milter.socket {socket} {why}:"
            f" {mail} would be deferred (451 4.7.1). Put the socket under queue_directory"
            f" (unix:{queue}/smtpguard/smtpguard.sock, the default's place) or set the"
            " service's chroot column to n"
        )

    def cleanup(self) -> None:
        """cleanup runs non_smtpd_milters (mail from sendmail(1), pickup): chrooted, it
        cannot reach a socket outside the queue directory either."""
        if self.non_smtpd:
            self._chroot_problem(
                self.cleanup_chroot,
                "master.cf service cleanup/unix",
                "mail from sendmail(1)",
                self.non_smtpd,
            )

    def _relay_items(self, service: Service) -> list[list[str]]:
        """The service's restriction lists that can refuse an outsider's RCPT: its
        override as Postfix expands it, else main.cf's (the relay lists as this plan
        leaves them, the pass-through one item). With smtpd_delay_reject (the default)
        a client, HELO or sender restriction refuses at RCPT too. An override that
        refers to main.cf's relay list counts that list's items too, pass-through
        included: what ``-P -x`` made of it depends on main.cf as it is now."""
        out = []

        def setting(name: str, default: str) -> str:
            value = service.expanded.get(name, self.now.get(name, default))
            return value.strip().lower() or default

        helo_required = setting("smtpd_helo_required", "no") == "yes"
        delayed = setting("smtpd_delay_reject", "yes") == "yes"
        for name in _REFUSING_LISTS:
            if name == "smtpd_helo_restrictions" and not helo_required:
                # Never applied to a client that sends no HELO (review rev177 F1: such a
                # stranger relayed past "permit_sasl_authenticated, reject" there).
                continue
            main = restriction_list(self.relay_lists.get(name, self.now[name]))
            if name not in service.overrides:
                items = main
            else:
                items = restriction_list(service.expanded.get(name, service.overrides[name]))
                if any(_refers_to(service.overrides[name], n) for n in _RELAY_LISTS):
                    items = main + items
            if not delayed and name not in _RELAY_LISTS:
                # Without smtpd_delay_reject these run before there is a recipient: a
                # relay guard there never fires (review rev180 F1: a stranger relayed),
                # nor a lookup of the recipient, nor one of the sender before MAIL FROM
                # (rev220 M1; rev221 H1: the sender list runs at MAIL FROM, with it).
                unknown = _RECIPIENT_LOOKUPS
                if name != "smtpd_sender_restrictions":
                    unknown = unknown | _SENDER_LOOKUPS
                items = _without_lookups(
                    [item for item in items if item not in RELAY_GUARDS], unknown
                )
            out.append(items)
        return out

    def _loopback_only(self, service: Service) -> bool:
        """Listening on loopback only, and not behind a proxy that hands it outside
        clients (smtpd_upstream_proxy_protocol, or XCLIENT from a mail proxy)."""
        proxies = [
            service.expanded.get(name, self.now[name])
            for name in ("smtpd_upstream_proxy_protocol", "smtpd_authorized_xclient_hosts")
        ]
        return not any(p.strip() for p in proxies) and _loopback_name(service.name)

    # --- recipients, sizes, text ------------------------------------------------

    def recipients(self) -> None:
        config = self.config
        mailbox = config.check("mailbox")
        directory = config.directory.backend != "none"
        unlisted = self.now["smtpd_reject_unlisted_recipient"]
        ours = self.raw["smtpd_reject_unlisted_recipient"] == UNLISTED_WHILE_MILTERS
        # smtpd_reject_unlisted_recipient = no also stops Postfix checking these
        # recipients, which smtpguard's directory (site.local_domains) does not hold.
        maps = [name for name in RECIPIENT_MAPS if self.now[name].strip()]
        # main.cf's value holds for every service; where smtpguard does not run, no
        # one would check (review rev41: 550 became 250 on a service with milters of
        # its own, and on one with no_milters).
        unguarded = self._unchecked_recipients()
        # A domain's table or an exemption that takes the mailbox check off leaves that
        # domain's (or client's) unknown recipients to nobody (review rev196 F1: 250
        # for nosuch@ a domain with mode "off", then a bounce to a forged sender).
        lax = [
            f'[domain."{name}"] checks.mailbox.mode = "{mode}"'
            for name, table in sorted(config.domains.items())
            for check, mode in table.checks
            if check == "mailbox" and mode != "enforce"
        ] + [
            f'[[policy.exempt]] "{exemption.name}" skips mailbox'
            for exemption in config.policy.exempt
            if "mailbox" in exemption.skip
        ]
        everywhere = directory and mailbox.mode == "enforce" and not config.milter.dry_run
        # What smtpguard accepts that Postfix would not deliver (review rev205 F1: a
        # directory user with no account, or an address extension Postfix does not
        # split, got 250 and then local(8)'s bounce to a forged sender).
        undeliverable = (
            self._undeliverable() if everywhere and not (maps or unguarded or lax) else None
        )
        if maps or unguarded or lax or undeliverable or not everywhere:
            if maps:
                why = f"{', '.join(maps)} would go unchecked too"
            elif undeliverable:
                why = undeliverable
            elif unguarded:
                why = (
                    f"smtpguard does not check recipients on {', '.join(unguarded)}, where"
                    " nothing would"
                )
            elif everywhere:
                why = f"smtpguard does not refuse every unknown recipient ({'; '.join(lax)})"
            else:
                why = (
                    "smtpguard's directory does not refuse unknown recipients (backend"
                    " none, dry run or mailbox check not enforced)"
                )
            if ours:
                self.change(
                    "smtpd_reject_unlisted_recipient",
                    "yes",
                    f"Postfix checks recipients itself again: {why}",
                    f"is 'no' while smtpguard is attached, but {why} (backscatter)",
                )
            elif unlisted == "no":
                self.problem(
                    f"smtpd_reject_unlisted_recipient: is 'no' but {why}: nothing checks"
                    " those recipients (backscatter)"
                )
            elif maps or unguarded or lax or undeliverable:
                self.notes.append(
                    f"smtpd_reject_unlisted_recipient left at yes ({why} with no): unknown"
                    " recipients get Postfix's own reply, not mailbox_unavailable"
                )
            return
        if unlisted == "yes":
            self.change(
                "smtpd_reject_unlisted_recipient",
                UNLISTED_WHILE_MILTERS,
                "unknown local recipients reach smtpguard's directory (mailbox_unavailable);"
                " with smtpd_milters emptied Postfix refuses them itself again",
            )

    def _undeliverable(self) -> str | None:
        """Why Postfix's own check of local recipients must stay, or None: a directory
        address in a domain Postfix delivers itself (mydestination) that its
        local_recipient_maps do not hold, which smtpd_reject_unlisted_recipient = no
        stops smtpd consulting; or a recipient_delimiter other than smtpguard's."""
        ours, theirs = self.config.site.recipient_delimiter, self.now["recipient_delimiter"]
        # Only a delimiter smtpguard splits at and Postfix does not: the other way
        # smtpguard is the stricter one (review rev208 L1).
        if set(ours) - set(theirs):
            return (
                f"recipient_delimiter is {theirs!r} and site.recipient_delimiter {ours!r}:"
                " smtpguard would accept address extensions Postfix does not deliver"
            )
        tables = split_list(self.now["local_recipient_maps"])
        config = self.config
        if not tables or config.directory.backend != "sqlite":
            return None
        site = config.site
        # Written out, in a /file or a table's keys (review rev208 M2: a file's domains
        # were never compared); a table postmap cannot list is no proof.
        own = {domain for domain, _ in self._domain_entries("mydestination")}
        own = {d for d in own if site.is_local(d)}
        # At any depth: a table named in a /file too (review rev210 M1).
        unlisted = self._unread.get("mydestination", [])
        if unlisted:
            return (
                f"mydestination has {', '.join(unlisted)}, whose domains cannot be listed to"
                " compare their addresses with local_recipient_maps"
            )
        try:
            contents = read_contents(config.directory.path)
        except (DirectoryError, OSError):
            return None  # mailboxes() and check-config say what is wrong with the file
        addresses = [
            address
            for address in dict.fromkeys(
                row.address.lower()
                for rows in (contents.users, contents.aliases, contents.lists)
                for row in rows
            )
            if address.rpartition("@")[2] in own and not address.startswith("postmaster@")
        ]
        if not addresses:
            return None
        # smtpd looks a local recipient up whole and as its local part (local(8)'s
        # names: passwd, aliases).
        keys = sorted({*addresses, *(a.rpartition("@")[0] for a in addresses)})
        known: set[str] = set()
        for table in tables:
            found = self._query(table, keys)
            if isinstance(found, str):
                return (
                    f"local_recipient_maps could not be compared with the directory ({table}:"
                    f" {found}), so addresses Postfix cannot deliver might pass"
                )
            known |= found
        unknown = [a for a in addresses if a not in known and a.rpartition("@")[0] not in known]
        if not unknown:
            return None
        shown = ", ".join(unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        return (
            f"local_recipient_maps do not hold {shown} of smtpguard's directory, which"
            " Postfix's local delivery would then bounce"
        )

    def _query(self, table: str, keys: Sequence[str]) -> set[str] | str:
        """The ``keys`` that ``table`` holds (``postmap -q -``), or why it cannot be
        read."""
        # Exit 1: no key found, which is an answer too.
        found, why = self._postmap(
            table, "-q", "-", given="".join(f"{key}\n" for key in keys), ok=1
        )
        return why if found is None else set(found)

    def _postmap(
        self, table: str, *args: str, given: str = "", ok: int = 0
    ) -> tuple[list[str] | None, str]:
        """The keys ``postmap ARGS TABLE`` printed (``KEY<TAB>VALUE`` lines; a key may
        hold spaces: "john smith", review rev170 F5), or None and why it failed (an
        exit status over ``ok``, or a fatal error)."""
        command = ["postmap", "-c", self.now["config_directory"], *args]
        try:
            done = subprocess.run(  # noqa: S603 - fixed argv, the table is one item
                [*command, table.removeprefix("proxy:")],
                input=given,
                capture_output=True,
                text=True,
                errors="replace",
                check=False,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, str(exc)
        # A negative status: killed by a signal, its output cut short (review rev210 L1).
        if not 0 <= done.returncode <= ok or "fatal:" in done.stderr:
            errors = [e for e in done.stderr.splitlines() if "warning:" not in e]
            return None, "; ".join(errors) or f"postmap exited {done.returncode}"
        return [line.split("\t", 1)[0] for line in done.stdout.splitlines() if line.strip()], ""

    def mailboxes(self) -> None:
        """Addresses Postfix receives mail for in smtpguard's local domains (the keys of
        virtual_mailbox_maps and virtual_alias_maps that postmap can list) that the
        directory does not hold: smtpguard refuses mail to them for good (review rev121
        F4: a user of Postfix's map bounced, 550, while --check said no conflicts)."""
        config = self.config
        if (
            config.directory.backend != "sqlite"
            or config.check("mailbox").mode != "enforce"
            or config.milter.dry_run
            or not config.directory.path.is_file()
        ):
            return
        site = config.site
        found: dict[str, list[str]] = {}
        for name in ("virtual_mailbox_maps", "virtual_alias_maps"):
            for table in split_list(self.now[name]):
                for key in self._keys(table, name, quiet=True) or ():
                    local, at, domain = key.rpartition("@")
                    if (
                        at
                        and local
                        and site.is_local(domain)
                        and not site.is_host_only(domain)
                        and local.lower() != "postmaster"
                    ):
                        found.setdefault(key, []).append(name)
        for address in self._aliases():
            found.setdefault(address, []).append("alias_maps")
        if not found:
            return
        directory = SqliteDirectory(
            config.directory.path,
            timeout=config.directory.timeout,
            recipient_delimiter=site.recipient_delimiter,
        )
        try:
            missing = [key for key in found if directory.recipient(key).kind is Kind.NONE]
        except DirectoryError:
            return  # check-config names what is wrong with the file
        finally:
            directory.close()
        if missing:
            shown = ", ".join(missing[:5]) + (f", +{len(missing) - 5}" if len(missing) > 5 else "")
            maps = sorted({n for key in missing for n in found[key]})
            self.problem(
                f"Postfix receives mail for {len(missing)} address(es) of site.local_domains"
                f" that smtpguard's directory lacks ({shown}; keys of {', '.join(maps)}):"
                " smtpguard refuses mail to them (550 5.1.1 mailbox unavailable); import"
                " them (`smtpguard directory import`)"
            )

    def _aliases(self) -> Iterator[str]:
        """The addresses aliases(5) makes for smtpguard's local domains in
        mydestination (review rev166 F3: abuse@ and hostmaster@, delivered through
        alias_maps, got 550 from smtpguard while --check said no conflicts)."""
        site = self.config.site
        own = [
            d
            for d in split_list(self.now["mydestination"])
            if not d.startswith("/") and ":" not in d and site.is_local(d)
        ]
        own = [d for d in own if not site.is_host_only(d)]
        for table in split_list(self.now["alias_maps"]) if own else ():
            for key in self._keys(table, "alias_maps", quiet=True) or ():
                # postalias adds "@" and the NIS markers YP_LAST_MODIFIED, YP_MASTER_NAME.
                if "@" in key or key.startswith("YP_") or key.lower() == "postmaster":
                    continue
                # A key with a space is a quoted local part ("john smith": alice).
                local = f'"{key}"' if any(c.isspace() or c == '"' for c in key) else key
                yield from (f"{local}@{domain}" for domain in own)

    def domains(self) -> None:
        """Domains Postfix accepts mail for that smtpguard would refuse as relaying."""
        site = self.config.site
        own = self._own_name()
        self._delivered_but_relayed()
        unknown: dict[str, list[str]] = {}
        hosts: list[str] = []
        for name in ACCEPTED_DOMAINS:
            parent = self._parent_style(name)
            for domain, exclusions in self._domain_entries(name):
                if domain == "localhost" or domain.startswith("localhost."):
                    continue  # never a destination from outside
                # (what Postfix accepts, a domain name that stands for it, by which rule)
                accepted = [(domain, domain, name)]
                if domain.startswith("."):
                    if name in STRING_LISTS or parent:
                        continue  # matches no domain there
                    accepted = [(f"subdomains of {domain[1:]}", "smtpguard-probe" + domain, name)]
                elif parent:
                    why = f"{name} with parent_domain_matches_subdomains"
                    accepted.append((f"subdomains of {domain}", "smtpguard-probe." + domain, why))
                for shown, probe, why in accepted:
                    if shown == own or _excluded(exclusions, probe, name, parent):
                        # its own conflict (_own_name), or refused by a "!" before it
                        continue
                    if site.is_host_only(probe):
                        hosts.append(shown)
                    elif not (site.is_local(probe) or site.is_relay(probe)):
                        unknown.setdefault(shown, []).append(why)
        for host in dict.fromkeys(hosts):
            self.notes.append(
                f"Postfix accepts mail for {host}, one of site.our_hostnames: smtpguard lets"
                " trusted and logged-in clients send to it, and from outside only"
                " postmaster@ it and bounces (host_denies_relay for the rest, which no"
                " directory knows)"
            )
        if unknown:
            self._refused_domains(unknown)
        self._idn_spellings()

    def _refused_domains(self, unknown: Mapping[str, list[str]]) -> None:
        listed = _first_20([f"{d} ({', '.join(dict.fromkeys(n))})" for d, n in unknown.items()])
        self.problem(
            f"Postfix accepts mail for {listed}, which smtpguard refuses"
            " (host_denies_relay): add them to site.local_domains or site.relay_domains"
            ' (".example.com" covers the subdomains of example.com; a domain of'
            " mydestination belongs in site.local_domains)"
        )

    def _own_name(self) -> str:
        """$myhostname in mydestination but not in site.our_hostnames: reported, and
        returned ("" when it is no conflict). Whether or not a local or relay entry
        covers it: root@ it and the aliases are Postfix's, which no directory knows
        (third review: 550 for a trusted client's mail to root@, and for the host's own
        bounces)."""
        site = self.config.site
        myhostname = self.myhostname
        if myhostname not in self._listed_domains("mydestination") or (
            site.is_host_name(myhostname) or canonical_domain(myhostname) in site.local_domains
        ):
            return ""
        self.problem(
            f"Postfix delivers mail for its own name {myhostname} (mydestination) itself"
            " (root@, aliases): add it to site.our_hostnames, so that smtpguard leaves"
            " those names to Postfix and takes only postmaster@ it and bounces from"
            " outside"
        )
        return myhostname

    def _delivered_but_relayed(self) -> None:
        """A mydestination domain that smtpguard takes for a relay domain: relay domains
        are not checked against the directory, and with the milter Postfix's own
        unknown-recipient check is off (smtpd_reject_unlisted_recipient), so unknown
        users would be accepted, then bounced (backscatter; third review)."""
        site = self.config.site
        for domain in self._listed_domains("mydestination"):
            # The host's own names are decided before any relay entry (checks.relay);
            # $myhostname missing from our_hostnames is _own_name's.
            if domain == self.myhostname or site.is_host_only(domain):
                continue
            if site.is_relay(domain) and not site.is_local(domain):
                self.problem(
                    f"Postfix delivers mail for {domain} (mydestination) itself, but"
                    " site.relay_domains covers it: its unknown recipients would be"
                    " accepted and then bounced; list it in site.local_domains (or"
                    " site.our_hostnames for this host's own name) instead"
                )

    def _parent_style(self, name: str) -> bool:
        """How Postfix 3.7 matches the domain list ``name`` (match_ops.c
        match_hostname): one named in parent_domain_matches_subdomains (by default
        relay_domains) covers the subdomains of "example.com", and ".example.com"
        matches nothing there; in another domain list ".example.com" covers the
        subdomains and "example.com" only itself. The lists of :data:`STRING_LISTS`
        match names exactly, whatever parent_domain_matches_subdomains says."""
        parents = split_list(self.now["parent_domain_matches_subdomains"])
        return name in parents and name not in STRING_LISTS

    def _listed_domains(self, name: str) -> list[str]:
        """The domain names Postfix's list ``name`` accepts as written (not their
        subdomains), lower-case, without the trailing dot (see _domain_entries)."""
        parent = self._parent_style(name)
        return [
            domain
            for domain, exclusions in self._domain_entries(name)
            if not _excluded(exclusions, domain, name, parent)
        ]

    def _matching_domains(self, name: str) -> list[str]:
        """:meth:`_listed_domains` but a ".example.com" that matches no domain in that
        list (a string list, or one with parent-style matching: review rev58, rev185
        F3)."""
        nothing = name in STRING_LISTS or self._parent_style(name)
        return [d for d in self._listed_domains(name) if not (nothing and d.startswith("."))]

    def _domain_entries(self, name: str) -> list[tuple[str, tuple[str, ...]]]:
        """The domain names Postfix's list ``name`` holds, lower-case, without the
        trailing dot: written out, in a /file, or the keys of a lookup table that
        ``postmap -s`` can list (review rev41: a texthash: mydestination domain got a
        permanent 553 while --check said "no conflicts"), each with the exclusions
        ("!name") written before it: the first match decides (match_list(3)), so one
        of them that matches the name refuses it (review rev51 called such a name
        accepted). A table it cannot list (regexp:, SQL, LDAP) is a note, once."""
        if name not in self._domain_lists:
            written = split_list(self.now[name])
            # Postfix warns "comment at end of line is not supported" and ignores the
            # rest of the list (review rev58: the names after it were reported).
            ended = next((i for i, item in enumerate(written) if item.startswith("#")), None)
            if ended is not None:
                note = (
                    f"{name}: Postfix ignores what follows '#' ({' '.join(written[ended:])}):"
                    " a comment must be on a line of its own"
                )
                if note not in self.notes:
                    self.notes.append(note)
            items = self._domain_items(written[:ended], name, set(), ())
            exclusions: list[str] = []
            entries = []
            for item in items:
                if item.startswith("!"):
                    # As written: "!t.example." excludes nothing Postfix looks up
                    # (review rev54: it hid t.example, which Postfix accepts).
                    exclusions.append(item[1:].lower())
                    continue
                if item.endswith(".") and item != ".":
                    # Postfix looks names up without the final dot: "t.example." matches
                    # nothing, and Postfix refuses t.example (review rev58).
                    self._dotted_name(name, item)
                    continue
                domain = item.lower()
                if domain and "$" not in domain:
                    entries.append((domain, tuple(exclusions)))
            self._domain_lists[name] = entries
        return self._domain_lists[name]

    def _domain_items(
        self, items: list[str], name: str, read: set[str], including: tuple[str, ...]
    ) -> list[str]:
        """The domains of a list's ``items``, /file entries read once each (``read``,
        shared by the whole list: a web of files that include each other was read
        along every path through it, rev46); ``including``: the files being read."""
        out: list[str] = []
        for item in items:
            if item.startswith("!"):
                # An exclusion, kept in its place for _listed_domains. match_list(3)
                # flips the sense at every "!": "!!x" is x, and in an excluded file or
                # table every name flips, its own exclusions included (review rev54:
                # its names were dropped; rev58: its "!" names are accepted).
                inner = item.lstrip("!")
                if (len(item) - len(inner)) % 2 == 0:
                    out += self._domain_items([inner], name, read, including)
                elif inner.startswith("/") or ":" in inner:
                    found = self._domain_items([inner], name, read, including)
                    out += [d[1:] if d.startswith("!") else f"!{d}" for d in found]
                else:
                    out.append(f"!{inner}")
                continue
            if item.startswith("/"):
                try:
                    listed = self._included(name, item, read, including)
                except OSError as exc:
                    self._not_compared(name, item, exc.strerror or str(exc))
                    self._unread.setdefault(name, []).append(item)
                    continue
                if listed is not None:
                    out += self._domain_items(listed, name, read, (*including, item))
            elif ":" in item or "/" in item:
                out += self._table_keys(item, name)
            else:
                out.append(item)
        return out

    def _table_keys(self, table: str, name: str) -> list[str]:
        """The keys of ``table`` that name a domain: an address (user@domain) or catch-all
        (@domain) key of virtual_alias_maps, which virtual_alias_domains lists by
        default, never matches a domain (review rev44: reported as domains)."""
        # Postfix's defaults list the domains of the virtual maps by their tables,
        # regexp ones included: no note for what the admin never wrote.
        quiet = _refers_to(self.raw[name], "virtual_alias_maps") or _refers_to(
            self.raw[name], "virtual_mailbox_maps"
        )
        keys = self._keys(table, name, quiet=quiet)
        if keys is None:
            self._unread.setdefault(name, []).append(table)
        # A single-label key names a domain in a table of the list's own, but in the
        # virtual maps of Postfix's default it is an alias (rev46); a trailing dot
        # Postfix never matches.
        # A key "!x.example" is no exclusion: a name looked up never begins with "!"
        # (review rev58).
        return [
            k
            for k in keys or ()
            if "@" not in k
            and not k.endswith(".")
            and not k.startswith("!")
            and ("." in k or not quiet)
        ]

    def _keys(self, table: str, name: str, *, quiet: bool) -> list[str] | None:
        """Every key of ``table`` (``postmap -s``), or None where it cannot be listed
        (a note unless ``quiet``)."""
        keys, why = self._postmap(table, "-s")
        if keys is None and not quiet:
            self._not_compared(name, table, why)
        return keys

    def _dotted_name(self, name: str, item: str) -> None:
        note = (
            f"{name}: {item} matches no domain (Postfix looks names up without the final"
            " dot); write it without the dot"
        )
        if note not in self.notes:
            self.notes.append(note)

    def _not_compared(self, name: str, item: str, why: str) -> None:
        note = (
            f"{name}: not compared with site.local_domains and site.relay_domains: {item}"
            f" ({why}); list its domains there, or smtpguard refuses mail to them"
            " (host_denies_relay)"
        )
        if note not in self.notes:
            self.notes.append(note)

    def _idn_spellings(self) -> None:
        """Postfix (3.7 measured) compares the names in these lists as written:
        bücher.example and xn--bcher-kva.example are two domains to it, one to
        smtpguard. A list with one spelling refuses mail to the other as relaying,
        a permanent 5xx for mail smtpguard accepts."""
        missing: list[str] = []
        for name in ACCEPTED_DOMAINS:
            items = set(self._listed_domains(name))
            for domain in sorted(self._matching_domains(name)):
                bare = domain.lstrip(".")
                dot = domain[: len(domain) - len(bare)]
                a_label = canonical_domain(bare)
                if not a_label.isascii() or "xn--" not in a_label:
                    continue  # not an internationalized name (or not a valid one)
                other = u_label_spelling(a_label) if bare == a_label else a_label
                if other is None:
                    continue  # not IDNA2008 (xn--ls8h.la): two names to smtpguard too
                if name == "relay_domains" and other != a_label:
                    # Not the U-label there: Postfix matches its lists after ICU's case
                    # folding, so it would relay strasse.example for straße.example to a
                    # next hop of that name, someone else's (review rev118 F3).
                    continue
                if other != bare and dot + other not in items:
                    missing.append(f"{dot}{other} ({name} has {domain})")
        if missing:
            self.problem(
                f"Postfix compares domain names as written: it refuses mail to"
                f" {_first_20(missing)}"
                " as relaying, although it is the same domain to smtpguard; list both"
                " spellings (U-label and xn-- A-label)"
            )
        self._unlisted_u_labels()

    def _unlisted_u_labels(self) -> None:
        """With relay_control = "milter" smtpguard has the last word, and a U-label
        spelling is ours only as site lists it: one Postfix's lists carry that site has
        only as its A-label gets 553 host denies relay (review rev184 F4: mail to our
        own users; --check said no conflicts)."""
        site = self.config.site
        if site.relay_control != "milter":
            return
        unlisted: set[str] = set()
        for name in ACCEPTED_DOMAINS:
            parents = self._parent_style(name)
            for domain in self._matching_domains(name):
                if domain.isascii():
                    continue
                dotted = domain.startswith(".")
                bare = domain.lstrip(".")
                # A name it stands for: itself, or a subdomain (review rev185 F2).
                probes = ([] if dotted else [(bare, bare)]) + (
                    [(f"x.{bare}", f".{bare}")] if dotted or parents else []
                )
                unlisted.update(
                    said
                    for probe, said in probes
                    if (site.is_local(probe) or site.is_relay(probe))
                    and not site.routes_as_ours(probe)
                )
        if unlisted:
            self.problem(
                f"Postfix takes mail for {_first_20(sorted(unlisted))}, which site lists only in"
                ' A-labels: with relay_control = "milter" smtpguard refuses that spelling'
                " as relaying (553 host denies relay); add it to site.local_domains or"
                " site.relay_domains as Postfix writes it"
            )

    def sizes(self) -> None:
        # The largest limit smtpguard applies: a [domain."X"] table may raise it.
        ours = max(
            [self.config.limits.max_message_size]
            + [d.max_message_size for d in self.config.domains.values()]
        )
        limit = _int(self.now["message_size_limit"])
        if limit == 0 or limit > ours:
            return
        # Raising the admin's limit would let larger mail in than the site chose.
        self.notes.append(
            f"message_size_limit ({limit}) is not above limits.max_message_size ({ours}):"
            " Postfix refuses larger mail first, with its own 552 5.3.4 and the table's"
            " text as footer; for smtpguard's message_too_long, lower"
            f" limits.max_message_size below {limit}"
        )

    def hops(self) -> None:
        """Postfix's cleanup counts the Received: fields with its own, which milters are
        not shown, and refuses at hopcount_limit: with mail of more fields than
        smtpguard's limit it answers first (review rev125 F1). A note: the limit is
        the admin's."""
        limit = _int(self.now["hopcount_limit"])
        ours = self.config.limits.max_hops
        if limit == 0 or limit > ours + 2:
            return
        self.notes.append(
            f"hopcount_limit ({limit}) is not above limits.max_hops + 2 ({ours + 2}): Postfix"
            " counts its own Received: field, which milters are not shown, and refuses"
            f" mail with {limit - 1} or more such fields itself, with its own 554 5.4.0"
            " 'too many hops'; for smtpguard's looping_message, raise hopcount_limit"
            f" above {ours + 2} or lower limits.max_hops below {limit - 2}"
        )

    def delimiter(self) -> None:
        ours = self.config.site.recipient_delimiter
        theirs = self.now["recipient_delimiter"]
        if set(ours) == set(theirs):
            return
        # A note, not a change: the delimiter decides where the admin's mail is
        # delivered, which is not smtpguard's to change.
        self.notes.append(
            f"recipient_delimiter is {theirs!r}, site.recipient_delimiter {ours!r}:"
            " set them equal, or smtpguard judges address extensions (alice+news@) other"
            " than Postfix delivers them and its access maps see them"
        )

    def utf8(self) -> None:
        if _uses_table_utf8(self.config) and self.now["smtputf8_enable"] == "no":
            self.change(
                "smtputf8_enable",
                "yes",
                "replies at end of message keep the table's UTF-8 text (with no, Postfix's"
                " cleanup turns every non-ASCII byte into a space)",
            )

    def footers(self) -> None:
        if self.now["smtpd_reject_footer"].strip():
            # Review rev166 F6: Postfix appends it to every 4xx and 5xx reply of smtpd,
            # smtpguard's too, where no footer map entry matches.
            self.notes.append(
                f"smtpd_reject_footer left as it is ({self.raw['smtpd_reject_footer']}):"
                " Postfix appends it to smtpguard's replies too, so clients read the"
                " table's text followed by it; the footer table carries it after each of"
                " its texts (Postfix uses a matching entry instead of it), so write the"
                " table again after changing it"
            )
        table = f"regexp:{self.footer_path}"
        maps = split_list(self.now["smtpd_reject_footer_maps"])
        if table in maps:
            return
        self.change(
            "smtpd_reject_footer_maps",
            _append(self.raw["smtpd_reject_footer_maps"], table),
            "Postfix's own replies for rows it decides itself (protocol errors, bad address"
            " syntax, declared size) get the table's text appended",
        )

    def bare_newline(self) -> None:
        value = self.now["smtpd_forbid_bare_newline"] or "no"
        if value != "reject":
            self.notes.append(
                f"smtpd_forbid_bare_newline left as it is ({value}): stray_newline is"
                " answered only with 'reject' (Postfix 3.7.10+: 'yes' and 'normalize'"
                " accept a bare LF as a line end, 'reject' refuses it with Postfix's"
                " 550 5.5.2 and the table's text as footer; 'yes' and 'reject' both close"
                " SMTP smuggling)"
            )


_RELAY_LISTS = ("smtpd_relay_restrictions", "smtpd_recipient_restrictions")
_REFUSING_LISTS = (
    *_RELAY_LISTS,
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
)


def _closes_relay(items: list[str]) -> bool:
    """Whether a restriction list refuses an outsider's relay attempt: a relay guard,
    ``reject`` or ``defer`` with nothing before it that may let an outsider through,
    and not right after ``warn_if_reject``, which makes it only log (review rev177 F1:
    an open relay was taken for closed). Anything it cannot judge (a policy service, a
    map) before the guard means it closes nothing."""
    warn_only = False
    for index, item in enumerate(items):
        if index and (
            items[index - 1] in _TAKES_AN_ARGUMENT or _refuses_everyone(items, index - 1)
        ):
            continue  # "zen.spamhaus.org" after reject_rbl_client (review rev184 F3)
        if item in RELAY_GUARDS or item in ("reject", "defer") or _refuses_everyone(items, index):
            if not warn_only:
                return True
        elif (
            item in ("permit", MILTER_RELAY_PASS)
            or _passes_all(item)
            or not (item in _NEVER_PERMIT_OUTSIDERS or item in _ONLY_REFUSE)
        ):
            # A map, a policy service, a restriction class, permit_mx_backup: each may
            # answer OK for a client or sender it chooses, before the guard (review
            # rev182 F4: check_sender_access with boss@=OK relayed for a forged boss).
            return False
        warn_only = item == "warn_if_reject"
    return False


#: Restrictions that let through only clients of ours, logged-in ones or mail for our
#: own domains: a relay guard after them still closes relaying for outsiders.
_NEVER_PERMIT_OUTSIDERS: Final = frozenset(
    {
        "permit_mynetworks",
        "permit_sasl_authenticated",
        "permit_auth_destination",
        "permit_tls_clientcerts",
        "sleep",
    }
)
#: Restrictions that refuse by a name written after them, as a list item of its own.
_TAKES_AN_ARGUMENT: Final = frozenset(
    {
        "reject_rbl_client",
        "reject_rbl",
        "reject_rhsbl_client",
        "reject_rhsbl_reverse_client",
        "reject_rhsbl_sender",
        "reject_rhsbl_helo",
        "reject_rhsbl_recipient",
        "sleep",
    }
)
#: Postfix's own restrictions (3.7's smtpd) that can only refuse (or warn), never
#: permit: by name, not by a "reject_" prefix, since any other name is a restriction
#: class, which may answer permit (review rev191 F1: Reject_Strangers = permit before
#: the guard was taken for a refusal, and a stranger relayed).
_ONLY_REFUSE: Final = frozenset(
    {
        "check_recipient_maps",  # 3.7's name for reject_unlisted_recipient
        "defer_if_permit",
        "defer_if_reject",
        "reject_authenticated_sender_login_mismatch",
        "reject_invalid_helo_hostname",
        "reject_invalid_hostname",
        "reject_known_sender_login_mismatch",
        "reject_maps_rbl",
        "reject_multi_recipient_bounce",
        "reject_non_fqdn_helo_hostname",
        "reject_non_fqdn_hostname",
        "reject_non_fqdn_recipient",
        "reject_non_fqdn_sender",
        "reject_plaintext_session",
        "reject_rbl",
        "reject_rbl_client",
        "reject_rhsbl_client",
        "reject_rhsbl_helo",
        "reject_rhsbl_recipient",
        "reject_rhsbl_reverse_client",
        "reject_rhsbl_sender",
        "reject_sender_login_mismatch",
        "reject_unauth_pipelining",
        "reject_unauthenticated_sender_login_mismatch",
        "reject_unknown_address",
        "reject_unknown_client",
        "reject_unknown_client_hostname",
        "reject_unknown_helo_hostname",
        "reject_unknown_hostname",
        "reject_unknown_recipient_domain",
        "reject_unknown_reverse_client_hostname",
        "reject_unknown_sender_domain",
        "reject_unlisted_recipient",
        "reject_unlisted_sender",
        "reject_unverified_recipient",
        "reject_unverified_sender",
        "warn_if_reject",
    }
)


def _without_lookups(items: list[str], lookups: frozenset[str]) -> list[str]:
    """``items`` without the restrictions in ``lookups`` and their tables."""
    out: list[str] = []
    skip_table = False
    for item in items:
        if skip_table:
            skip_table = False
        elif item in lookups:
            skip_table = True
        else:
            out.append(item)
    return out


def _refuses_everyone(items: list[str], index: int) -> bool:
    """Whether ``items[index]`` is an access restriction whose table is a static one
    that can only refuse (4NN/5NN, REJECT, DEFER), as the relay entry postfix-config
    writes (review rev215 F1: taken for a map that may permit, so the list that entry
    closed was said to close nothing, and an admin's final permit elsewhere an open
    relay)."""
    return (
        items[index] in _ALWAYS_LOOKED_UP
        and index + 1 < len(items)
        and _STATIC_REFUSAL.fullmatch(items[index + 1]) is not None
    )


#: Access restrictions smtpd looks up for every RCPT that reaches them: the client's
#: always, the sender's and the recipient's where they are known (the lists evaluated
#: at RCPT; :meth:`_Planner._relay_items` drops them from the others). Not the HELO
#: name's (none without HELO), the login's, the certificate's or the MX/NS/A lookups',
#: which a stranger may not give smtpd anything to look up (review rev220 M1).
_ALWAYS_LOOKED_UP: Final = frozenset(
    {"check_client_access", "check_sender_access", "check_recipient_access"}
)
#: Restrictions that look up the sender, or the recipient: skipped before it exists.
_SENDER_LOOKUPS: Final = frozenset(
    {
        "check_sender_access",
        "check_sender_mx_access",
        "check_sender_ns_access",
        "check_sender_a_access",
    }
)
_RECIPIENT_LOOKUPS: Final = frozenset(
    {
        "check_recipient_access",
        "check_recipient_mx_access",
        "check_recipient_ns_access",
        "check_recipient_a_access",
    }
)
#: Postfix's access(5) results that refuse: "4NN text", "5NN text", REJECT and DEFER
#: with optional text (not DEFER_IF_PERMIT and the like, which depend on what follows).
_STATIC_REFUSAL: Final = re.compile(
    r"static:(?:\{\s*(?:[45][0-9][0-9]|reject|defer)(?:\s[^{}]*)?\}|(?:[45][0-9][0-9]|reject|defer))",
    re.IGNORECASE,
)


def _passes_all(item: str) -> bool:
    """An access table that answers OK for everything: ``static:{OK}``, ``static:OK``
    (any case), as the last word of a restriction such as ``check_client_access``."""
    return _STATIC_OK.search(item) is not None


_STATIC_OK: Final = re.compile(r"(?:^|\s)static:\{?\s*ok\s*\}?$", re.IGNORECASE)


def _first_20(items: list[str]) -> str:
    """The first 20 of ``items`` and a count of the rest: a table of thousands gave a
    line of megabytes (rev44, rev46)."""
    more = f" and {len(items) - 20} more" if len(items) > 20 else ""
    return ", ".join(items[:20]) + more


def _chrooted(column: str, compatibility_level: str) -> bool:
    """master.cf's chroot column as Postfix reads it: "-" is y below compatibility_level
    1 (its backwards-compatible default, measured by review rev41 on 3.7), n from 1 on."""
    if column != "-":
        return column == "y"
    major = compatibility_level.strip().split(".", 1)[0]
    return not major.isdigit() or int(major) < 1


def _unreachable(root: str, seen: PurePosixPath, real: PurePosixPath) -> str | None:
    """Why the directory ``seen`` from a chroot in ``root`` is not ``real``; None if it
    is (the same device and inode, or the same path with no link on the way)."""
    try:
        reached = chroot_path(root, seen)
        if reached == str(real):
            return None  # whether or not smtpguard has made it yet
        inside = os.stat(reached)
    except OSError as exc:
        return f"does not exist for it ({seen}: {exc.strerror or exc})"
    try:
        outside = os.stat(real)
    except OSError as exc:
        return (
            f"cannot be compared with {reached}, which it reaches ({real}: {exc.strerror or exc})"
        )
    if (outside.st_dev, outside.st_ino) == (inside.st_dev, inside.st_ino):
        return None
    return f"is another directory for it ({seen} leads to {reached})"


def chroot_path(root: str, path: PurePosixPath) -> str:
    """The real path a process chrooted in ``root`` reaches by the absolute ``path``:
    each symbolic link resolved as the kernel resolves it in there (an absolute target
    from ``root``, ".." never above it), at most 40 of them (ELOOP)."""
    todo = list(path.parts[1:])
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            # As the kernel: ".." of something that is not a directory fails (rev44).
            here = os.path.join(root, *done)
            if not os.path.isdir(here):
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), here)
            if done:
                done.pop()
            continue
        real = os.path.join(root, *done, part)
        if not os.path.islink(real):
            done.append(part)
            continue
        links += 1
        if links > 40:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), real)
        target = PurePosixPath(os.readlink(real))
        if target.is_absolute():
            done = []
        todo = list(target.parts[1:] if target.is_absolute() else target.parts) + todo
    return os.path.join(root, *done)


def _file_items(path: str) -> list[str]:
    """The items of a ``/file`` entry of a Postfix list, as match_list(3) reads it
    (words or commas, ``#`` comments); OSError if it cannot be read."""
    text = Path(path).read_text(errors="replace")
    return split_list(" ".join(line.partition("#")[0] for line in text.splitlines()))


def _port_25(service: Service) -> bool:
    """The service that takes mail from other hosts on port 25: master.cf's ``smtp``
    (or ``25``, on any address), or the pass service a postscreen there hands them to."""
    if service.kind == "pass":
        return service.behind_postscreen
    return service.kind == "inet" and _port_25_name(service.name)


def _port_25_name(name: str) -> bool:
    """A master.cf inet service name that listens on port 25 (``smtp``, ``25``, on any
    address)."""
    return name.rpartition(":")[2] in ("smtp", "25")


def _lan_only(service: Service) -> bool:
    """Listening on one private address only (``10.0.0.1:smtp``): a LAN's own relay
    listener, which an admin may keep without milters (review rev170: not a conflict)."""
    host, sep, _port = service.name.rpartition(":")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return bool(sep) and address.is_private and not address.is_unspecified


def _loopback_name(service: str) -> bool:
    """Whether a master.cf service name listens on a loopback address only
    (``127.0.0.1:10025``, ``[::1]:10025``); a bare port or name listens everywhere."""
    host, sep, _port = service.rpartition(":")
    if not sep:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _without_pass(items: list[str]) -> list[str]:
    """Expanded list items without the last ``check_recipient_access static:{OK}``
    before the relay guard (what :data:`MILTER_RELAY_PASS` expands to)."""
    guard = next((i for i, item in enumerate(items) if item in RELAY_GUARDS), len(items))
    for i in range(guard - 2, -1, -1):
        if items[i : i + 2] == ["check_recipient_access", "static:{OK}"]:
            return items[:i] + items[i + 2 :]
    return items


def _gaps(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The separators between the items of a list."""
    return [(a[1], b[0]) for a, b in itertools.pairwise(spans)]


def _guards(value: str) -> list[int]:
    """Indexes of the relay guards written in a list as it stands (unexpanded)."""
    return [i for i, item in enumerate(restriction_list(value)) if item in RELAY_GUARDS]


def _append(raw: str, item: str, sep: str = ", ") -> str:
    return f"{raw}{sep}{item}" if raw.strip() else item


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _postconf_command(config_directory: str, default_directory: str) -> str:
    if config_directory == default_directory:
        return "postconf -e"
    return f"postconf -c {shlex.quote(config_directory)} -e"


def shell_script(result: Plan, default_directory: str = "/etc/postfix") -> str:
    """The plan as ``sh`` commands: write the footer table, then ``postconf -e``."""
    out = [
        f"# smtpguard: changes for the Postfix instance in {result.config_directory}",
        "# (generated by `smtpguard postfix-config`; review, run with sh, then `postfix reload`).",
    ]
    out += _comment_block("note", result.notes)
    out += _comment_block("conflict left to you", result.unresolved)
    if result.blocking:
        # Review rev41: the conflict was only a comment, and `sh -e` applied the
        # pass-through that opened the relay on a service without smtpguard.
        out += [
            "# NOT APPLIED: these changes would open a relay (conflicts above).",
            "echo 'smtpguard postfix-config: nothing changed: the changes would leave an open"
            " relay; see the conflicts at the top of this script' >&2",
            "exit 1",
        ]
    out += [
        "# The footer table smtpd_reject_footer_maps reads:",
        f"cat > {shlex.quote(result.footer_path)} <<'SMTPGUARD_EOF'",
        result.footers.rstrip("\n"),
        "SMTPGUARD_EOF",
    ]
    command = _postconf_command(result.config_directory, default_directory)
    for change in result.changes:
        out.append(f"# {change.reason}")
        out.append(f"{command} {shlex.quote(f'{change.name} = {change.value}')}")
    if not result.changes:
        out.append("# nothing to change in main.cf")
    return "\n".join(out) + "\n"


def main_cf_fragment(result: Plan) -> str:
    """The same changes as main.cf lines (replace the existing parameters with them)."""
    out = [
        f"# smtpguard: main.cf settings for the Postfix instance in {result.config_directory}",
        "# (generated by `smtpguard postfix-config --main-cf`). Each replaces the parameter",
        "# of the same name; the values already include what the instance had.",
    ]
    out += _comment_block("note", result.notes)
    if result.blocking:
        out += _comment_block("NOT APPLICABLE: these settings would open a relay", result.blocking)
    for change in result.changes:
        out.append(f"# {change.reason}")
        # Commented out where they would open a relay: appended to main.cf as they
        # stood, they did (review rev44).
        out.append(("# " if result.blocking else "") + f"{change.name} = {change.value}")
    out.append(f"# and {result.footer_path} holding `smtpguard postfix-config --footers`.")
    return "\n".join(out) + "\n"


def _comment_block(kind: str, lines: Iterable[str]) -> list[str]:
    return [f"# {kind}: {line}" for line in lines]


def stale_footers(result: Plan, current: Settings) -> str | None:
    """A note when the footer table smtpd_reject_footer_maps names holds other text than
    this release and configuration write (review rev233 L1: after an upgrade Postfix's
    own replies went on without the help link, and --check said nothing)."""
    if f"regexp:{result.footer_path}" not in split_list(
        current.expanded.get("smtpd_reject_footer_maps", "")
    ):
        return None
    try:
        written = Path(result.footer_path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        written = None
    except OSError as exc:
        return f"{result.footer_path}: cannot read ({exc.strerror}) to compare it"
    if written is not None and written.strip() == result.footers.strip():
        return None
    what = "does not exist" if written is None else "differs from what this configuration writes"
    return (
        f"{result.footer_path} {what}: Postfix's own replies carry other text (a release"
        " or [replies] change since it was written); run postfix-config's output again"
        " (it writes the table), then postfix reload"
    )


def check_report(result: Plan, extra_notes: Iterable[str] = ()) -> str:
    lines = [f"conflict: {p}" for p in result.problems]
    lines += [f"note: {n}" for n in (*result.notes, *extra_notes)]
    if not result.problems:
        lines.append(f"{result.config_directory}: no conflicts with the smtpguard config")
    return "\n".join(lines) + "\n"
