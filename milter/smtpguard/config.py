"""Operator configuration: ``conf/smtpguard.toml`` loaded into frozen dataclasses.

Every key is read explicitly through :class:`_Section`, which remembers what it read and
refuses whatever is left over, so a typo stops start-up instead of silently meaning a
default. Every error names the file and the dotted key. ``smtpguard check-config`` runs
exactly this loader.

Relative paths are resolved against the directory of the config file, so the sample's
``../rules/...`` work wherever it is shipped with ``rules/`` beside it: the checkout's
``conf/``, the package's ``data/conf/`` and start.sh's ``/opt/smtpguard/conf/``.
"""

from __future__ import annotations

import difflib
import functools
import grp
import ipaddress
import math
import os
import pwd
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast

from smtpguard import datafiles
from smtpguard.address import (
    NAT64,
    NAT64_LOCAL,
    AddressError,
    IPAddress,
    IPNetwork,
    canonical_domain,
    is_valid_domain,
    parse_address_literal,
    parse_path,
    u_label_spelling,
    unmapped,
)

# Re-exported (the "as" form), so that callers keep importing them from here.
from smtpguard.datafiles import ConfigError as ConfigError  # noqa: PLC0414
from smtpguard.datafiles import ConfigErrors as ConfigErrors  # noqa: PLC0414
from smtpguard.datafiles import default_rules_dir as default_rules_dir  # noqa: PLC0414
from smtpguard.datafiles import parse_toml as parse_toml  # noqa: PLC0414
from smtpguard.datafiles import read_toml as read_toml  # noqa: PLC0414
from smtpguard.datafiles import sample_config as sample_config  # noqa: PLC0414
from smtpguard.datafiles import shipped_dir as shipped_dir  # noqa: PLC0414
from smtpguard.endpoint import Endpoint, EndpointError, parse_endpoint, parse_redis_url
from smtpguard.iplist import IpListError, IpSet, parse_network
from smtpguard.iplist import load as load_ip_lists
from smtpguard.patterns import Pattern, PatternError, compile_pattern
from smtpguard.resultheaders import AUTH_RESULTS, REPORT_FIELD, STATUS_FIELD

Mode = Literal["enforce", "report", "off"]
TempPolicy = Literal["tempfail", "pass"]
UTF8Policy = Literal["always", "smtputf8", "never"]
ReplyForm = Literal["one_line", "per_language"]
MTAChoice = Literal["auto", "postfix", "sendmail"]
RelayControl = Literal["postfix", "milter"]

_T = TypeVar("_T")


#: The longest timeout or time to live a config may give, in seconds (a day): anything
#: longer is a typo, and past what the MTA waits for a milter by far. Without a bound,
#: 1e300 loaded and then failed every message (a deadline out of range).
MAX_SECONDS: Final = 86400.0
#: The longest a single wait inside a milter step may be (a DNS lookup, a stage's DNS
#: deadline, a state or directory call, the connect-back): Postfix stops waiting for
#: the whole step after 30 s (milter_command_timeout), Sendmail after 10 s, so a longer
#: one is a value meant in milliseconds, and with a dead server it turned every message
#: into the MTA's default action instead of smtpguard's own reply (review rev224 L5).
MAX_STEP_WAIT: Final = 60.0
#: The same for a scanner's timeout (clamd, the command, rspamd), which end of message
#: waits for: Postfix's milter_content_timeout and Sendmail's E: are 300 s.
MAX_SCAN_WAIT: Final = 300.0
#: The longest time to live a cache may keep an answer (30 days; DNS TTLs of a week
#: are common).
MAX_TTL: Final = 30 * 86400
#: Sanity bounds for every other number: beyond them SQLite, libmilter's C ints or
#: the float deadlines overflow.
MAX_INTEGER: Final = 2**62
MAX_NUMBER: Final = 1e15
#: Entries of an in-memory cache (dns.cache_size): beyond this, memory, not hits.
MAX_CACHE_SIZE: Final = 10_000_000


def _plain(bound: float) -> str:
    """A bound as an operator would write it in the file: ``2592000``, not ``2.592e+06``
    (``:g``) nor ``2592000.0`` (``str``); ``0.00001``, not ``1e-05``."""
    if float(bound).is_integer():
        return str(int(bound))
    # repr is the shortest text that reads back as the same float; Decimal's "f" then
    # writes it out without an exponent.
    return format(Decimal(repr(float(bound))), "f")


class _Section:
    """Typed, strict access to one TOML table."""

    def __init__(
        self,
        file: Path,
        prefix: str,
        data: Mapping[str, Any],
        registry: list[_Section] | None = None,
    ) -> None:
        self.file = file
        self.prefix = prefix
        self.data = data
        self.seen: set[str] = set()
        #: Every section read, when the caller wants to know what the loader asks for.
        self.registry = registry
        if registry is not None:
            registry.append(self)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), message)

    def _get(self, name: str, kind: type[_T] | tuple[type, ...], what: str, default: _T) -> _T:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        # bool is an int subclass: "max_rcpt = true" must not pass as 1.
        if isinstance(value, bool) and kind is not bool:
            raise self.error(name, f"expected {what}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(name, f"expected {what}, got {type(value).__name__}")
        # No setting has a use for a NUL (TOML's "\u0000"); paths and names holding one
        # loaded and failed at the start, or at every message (review rev156 F2).
        if isinstance(value, str) and "\0" in value:
            raise self.error(name, "must not contain a NUL character")
        if isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, str) and "\0" in item:
                    raise self.error(f"{name}[{index}]", "must not contain a NUL character")
        return cast(_T, value)

    def string(self, name: str, default: str) -> str:
        return self._get(name, str, "a string", default)

    def boolean(self, name: str, default: bool) -> bool:
        return self._get(name, bool, "true or false", default)

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int = MAX_INTEGER
    ) -> int:
        value = self._get(name, int, "an integer", default)
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}")
        if value > maximum:
            raise self.error(name, f"must be at most {maximum}")
        return value

    def number(
        self, name: str, default: float, *, minimum: float = 0.0, maximum: float = MAX_NUMBER
    ) -> float:
        value = self._get(name, (int, float), "a number", default)
        if not math.isfinite(value):
            # TOML has nan and inf; nan compares false with every bound below, so a
            # timeout of nan would pass and then never end.
            raise self.error(name, f"must be a finite number, got {value}")
        if value < minimum:
            raise self.error(name, f"must be at least {_plain(minimum)}")
        if value > maximum:
            raise self.error(name, f"must be at most {_plain(maximum)}")
        return float(value)

    def seconds(
        self, name: str, default: float, *, minimum: float = 0.0, maximum: float = MAX_SECONDS
    ) -> float:
        """A timeout: at most ``maximum`` (:data:`MAX_SECONDS` unless a step waits for it,
        when a larger value is named as the milliseconds it probably is)."""
        value = self.number(name, default, minimum=minimum, maximum=math.inf)
        if value > maximum:
            why = "" if maximum >= MAX_SECONDS else "; the MTA stops waiting for the milter"
            raise self.error(name, f"must be at most {_plain(maximum)} (seconds{why})")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self._get(name, list, "a list of strings", list(default))
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{name}[{index}]", "expected a string")
        return tuple(value)

    def domains(self, name: str, *, parents: bool = True) -> frozenset[str]:
        """Stored canonical (lower-case, no trailing dot, U-labels as A-labels), the
        form every comparison uses: ``bücher.example`` also matches the A-label.

        Each must be a domain name (``.example.com``, its subdomains, where
        ``parents``): ``*.example.com``, ``@example.com``, a URL or an IP address
        would load and never match.
        """
        out = set()
        for item in self.strings(name):
            domain = canonical_domain(item.strip())
            bare = domain.removeprefix(".") if parents else domain
            if domain.startswith("*."):
                hint = f"write {domain[1:]!r} for its subdomains" if parents else "no wildcards"
                raise self.error(name, f"{item!r}: {hint}")
            if not _dns_name(bare) or bare.rpartition(".")[2].isdigit():
                raise self.error(name, f"not a domain name: {item!r}")
            out.add(domain)
        return frozenset(out)

    def path(self, name: str, default: str) -> Path:
        raw = self.string(name, default)
        if not raw:
            raise self.error(name, "must not be empty")
        p = Path(raw)
        # Made absolute, neither resolved nor normalized: a link in the path is
        # followed when the file is read, not here. Resolved, it was followed at every
        # load, so a deploy that switched a link between the supervisor's load and a
        # worker's gave them different files (review rev51); normalized, "lib/.." was
        # removed as text, where the kernel takes ".." from the link's target (rev53).
        # A reload records the files under this path.
        return p if p.is_absolute() else self.file.parent / p

    def data_file(self, name: str, default: str) -> Path:
        """:meth:`path` for a file that must exist (the reply table, a pattern file):
        the error names this key and, for a relative path, where it was looked for
        (a copy of the sample elsewhere no longer has ``../rules/`` beside it)."""
        path = self.path(name, default)
        if not datafiles.exists(path):
            raw = self.string(name, default)
            where = (
                ""
                if Path(raw).is_absolute()
                else f" (a relative path is read from {self.file.parent}, the config"
                " file's directory)"
            )
            raise self.error(name, f"{path}: no such file{where}")
        return path

    def table(self, name: str) -> _Section:
        value = self._get(name, dict, "a table", {})
        return _Section(self.file, self.key(name), value, self.registry)

    def table_list(self, name: str) -> list[_Section]:
        """A TOML array of tables (``[[name]]``); each item keyed ``name[i]``."""
        value = self._get(name, list, "an array of tables", [])
        out = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{index}]", "expected a table")
            out.append(_Section(self.file, self.key(f"{name}[{index}]"), item, self.registry))
        return out

    def tables(self, name: str) -> dict[str, _Section]:
        outer = self.table(name)
        out: dict[str, _Section] = {}
        for key in outer.data:
            out[key] = outer.table(key)
        return out

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            # Every key this table may hold has been asked for by now (review rev121
            # F8: "[mliter]" said only "unknown key").
            near = difflib.get_close_matches(unknown[0], sorted(self.seen), n=1, cutoff=0.7)
            raise self.error(
                unknown[0], f"unknown key (did you mean {near[0]!r}?)" if near else "unknown key"
            )


#: More workers than this gain little: Postfix and the MTA's own processes want cores too.
MAX_DEFAULT_WORKERS: Final = 8
#: A hard ceiling: each worker is a full process with its own caches.
MAX_WORKERS: Final = 64
#: The shortest non-zero ``worker_heartbeat_timeout``: two heartbeat intervals.
MIN_HEARTBEAT_TIMEOUT: Final = 2.0


def _cpu_affinity(
    s: _Section, default: Literal["auto", "off"] | tuple[int, ...]
) -> Literal["auto", "off"] | tuple[int, ...]:
    """``"auto"``, ``"off"`` or a list of CPU numbers (distinct, from 0)."""
    value = s.data.get("cpu_affinity")
    if not isinstance(value, list):
        choices = ("auto", "off")
        fallback = default if isinstance(default, str) else "auto"
        return cast(Literal["auto", "off"], s.choice("cpu_affinity", fallback, choices))
    s.seen.add("cpu_affinity")
    if not value:
        raise s.error("cpu_affinity", 'an empty list of CPUs; use "off" to leave them unbound')
    for cpu in value:
        if isinstance(cpu, bool) or not isinstance(cpu, int) or cpu < 0:
            raise s.error("cpu_affinity", f"expected CPU numbers (0, 1, ...), got {cpu!r}")
    if len(set(value)) != len(value):
        raise s.error("cpu_affinity", "a CPU is listed twice")
    return tuple(value)


#: The CPUs the service was started with. Read once, at import: a worker forked from
#: the supervisor is then bound to one CPU (cpu_affinity = "auto"), and a default read
#: there would make its reload see "workers" changed from N to 1.
_START_CPUS: Final = len(os.sched_getaffinity(0))


def default_workers() -> int:
    """The CPUs this process could run on when it started (its affinity, as a container
    or systemd's CPUAffinity= sets it), at most :data:`MAX_DEFAULT_WORKERS`."""
    return min(_START_CPUS, MAX_DEFAULT_WORKERS)


@dataclass(frozen=True, slots=True)
class MilterConfig:
    #: Inside Postfix's queue directory, so a chrooted smtpd (Debian's default) and
    #: an unchrooted one both reach it as ``unix:smtpguard/smtpguard.sock``.
    socket: str = "unix:/var/spool/postfix/smtpguard/smtpguard.sock"
    name: str = "smtpguard"
    #: libmilter's own default (MI_TIMEOUT): it also ends a session silent this long,
    #: and the MTA is silent for a whole DATA phase (review rev169 F1: 600 deferred every
    #: upload over 10-20 minutes, at each retry).
    timeout: int = 7210
    mta: MTAChoice = "auto"
    dry_run: bool = False
    log_level: str = "INFO"
    #: Unix socket permissions, applied right after libmilter creates the socket.
    socket_mode: int = 0o660
    socket_owner: str = ""
    #: "auto": the group ``postfix`` when it exists (smtpd runs as user postfix),
    #: else the group the socket was created with; "" leaves it as created.
    socket_group: str = "auto"
    #: Drop root privileges to this user (and its group) after opening the socket.
    #: Whether it exists is checked at start (run, check-config), not at load: the
    #: sample names the user scripts/start.sh creates, and must load anywhere.
    user: str = ""
    #: Allow an inet: socket on a non-loopback address (exposes the milter protocol).
    allow_remote_socket: bool = False
    #: Header naming the reply ids that report-mode checks found, added to accepted
    #: mail ("" = none), e.g. "X-Smtpguard-Report".
    report_header: str = ""
    #: One ``summary`` line per transaction at its end (outcome, reply id, score, ...).
    summary_log: bool = True
    #: "stderr" (journald under systemd) or "syslog" (``log_socket``, ``log_facility``).
    log: Literal["stderr", "syslog"] = "stderr"
    log_facility: str = "mail"
    log_socket: str = "/dev/log"
    #: RFC 8601 authserv-id of our Authentication-Results field; "" = this host's name.
    authserv_id: str = ""
    #: Add Authentication-Results (SPF, iprev) to accepted mail.
    auth_results: bool = True
    #: Worker processes serving the one socket (see smtpguard.supervisor); 1 runs
    #: everything in one process, as before workers existed.
    workers: int = field(default_factory=default_workers)
    #: "auto": with several workers, each runs on one CPU of the service's set (worker
    #: N on its Nth CPU, round robin); "off": the kernel places them; CPU numbers: the
    #: workers run on those, in turn. See smtpguard.supervisor.worker_cpu.
    cpu_affinity: Literal["auto", "off"] | tuple[int, ...] = "auto"
    #: With several workers: seconds without a heartbeat (each worker sends one a
    #: second) after which the supervisor kills a worker as hung, and restarts it;
    #: 0 turns the watchdog off. See smtpguard.supervisor.Supervisor._watch.
    worker_heartbeat_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class SiteConfig:
    local_domains: frozenset[str] = frozenset()
    relay_domains: frozenset[str] = frozenset()
    trusted_networks: tuple[IPNetwork, ...] = ()
    #: Who has the last word on unauthorized relaying. "postfix": Postfix's own
    #: reject_unauth_destination (with the table's reply in an access map before it),
    #: so relaying stays closed with the milter down, removed or in dry run.
    #: "milter": smtpguard answers with the table's exact text; it then must enforce.
    relay_control: RelayControl = "postfix"
    our_hostnames: frozenset[str] = frozenset()
    our_ips: frozenset[IPAddress] = frozenset()
    #: Characters that start an address extension (Postfix's recipient_delimiter):
    #: alice+news@ is alice@ to the directory, the deny list and the blacklist.
    recipient_delimiter: str = "+"
    #: The spellings with non-ASCII characters of the three domain lists' names (the
    #: U-labels of their A-labels too), lower-cased, no trailing dot, a leading "."
    #: for subdomains: see :meth:`routes_as_ours`.
    idn_spellings: frozenset[str] = frozenset()

    def routes_as_ours(self, domain: str) -> bool:
        """Whether the MTA routes ``domain`` (as the client wrote it) as the domain of
        ours it stands for: an ASCII one (A-labels) always, one with other characters
        only when written as the config lists it, or as the U-label of an A-label it
        lists, in any case (Postfix folds case before it matches its lists, its
        non-ASCII letters too: review rev181 F2). Our mapping of U-labels
        (:func:`canonical_domain`) is not the MTA's (Postfix's is ICU's UTS 46, which
        maps capital sharp s to "ss": STRAẞE.example is strasse.example there, and
        straße.example here), and Postfix matches its own domain lists to the text:
        any other spelling it routes as foreign mail, to a domain that may be someone
        else's (review rev116 F1). Relaying is judged by this, nothing else."""
        if domain.isascii():
            return True
        written = domain.removesuffix(".")
        name = written.lower()
        if len(name) != len(written) or any(
            low in _DEVIATIONS and low != up for up, low in zip(written, name, strict=True)
        ):
            return False  # STRAẞE.example: Postfix (ICU) folds it to strasse.example
        return name in self.idn_spellings or any(
            name.endswith(entry) for entry in self.idn_spellings if entry.startswith(".")
        )

    def is_local(self, domain: str) -> bool:
        return _in_domains(domain, self.local_domains)

    def is_relay(self, domain: str) -> bool:
        return _in_domains(domain, self.relay_domains)

    def is_host_name(self, domain: str) -> bool:
        """One of our host names (compared canonical: an IDN in U-labels too), or an
        address literal of one of ``our_ips`` (Postfix takes postmaster@[its own IP]
        as local mail; review rev41)."""
        if domain.startswith("["):
            ip = parse_address_literal(domain)
            return ip is not None and unmapped(ip) in self.our_ips
        return canonical_domain(domain) in self.our_hostnames

    def is_host_only(self, domain: str) -> bool:
        """One of our host names that local_domains does not name exactly (a
        ".example.com" entry covering it does not count, nor relay_domains: the MTA
        delivers it itself): mail to it is the host's own, which no directory knows
        (checks.relay, checks.recipients)."""
        if domain.startswith("["):
            return self.is_host_name(domain)
        name = canonical_domain(domain)
        return name in self.our_hostnames and name not in self.local_domains

    def is_ours(self, domain: str) -> bool:
        """A local domain or one of our host names: what the host's own programs send
        as (root@ the host: Postfix's myorigin, Sendmail's $j)."""
        return self.is_local(domain) or self.is_host_name(domain)

    def is_trusted_ip(self, ip: IPAddress | None) -> bool:
        return ip is not None and any(ip in net for net in self.trusted_networks)


#: Characters UTS 46 maps otherwise than IDNA 2008 (its deviations): a U-label with
#: one is no spelling Postfix is sure to route as the A-label's domain.
_DEVIATIONS: Final = frozenset("\u00df\u03c2\u200c\u200d")


def _idn_spelling(item: str, *, derive: bool) -> str:
    """The non-ASCII spelling a domain list's ``item`` gives Postfix's lists (see
    :meth:`SiteConfig.routes_as_ours`): itself, lower-cased, or with ``derive`` the
    U-label of an A-label (review rev181 F1: an IDN listed as its A-label only refused
    its U-label spelling as relaying, mail to our own users); "" for none. Derived
    only where Postfix has the last word on relaying (relay_control "postfix"): a
    spelling its lists lack it refuses itself there, where with "milter" it would
    route it as foreign mail (review rev182 F1: to the default transport)."""
    if not item.isascii():
        return item.lower()
    if not derive:
        return ""
    bare = item.lstrip(".").lower()
    unicode = u_label_spelling(bare)
    if unicode is None or _DEVIATIONS & set(unicode):
        return ""
    return item[: len(item) - len(bare)] + unicode


def _in_domains(domain: str, domains: frozenset[str]) -> bool:
    """Exact match, or any parent listed as ``.example.com`` (Postfix style); compared
    canonical, as :meth:`_Section.domains` stores them. Cached (a frozenset keeps its
    hash): a message's domains are asked about by several checks. A name longer than
    DNS allows (255 octets) is none of ours, and is not cached: a client on the milter
    socket sent 60 KB names, each parent joined anew (review rev169 F3)."""
    if len(domain) > MAX_DOMAIN_CHARS:
        return False
    return _in_domains_cached(domain, domains)


#: RFC 1035 §2.3.4 (a name's text form, with room for a final dot).
MAX_DOMAIN_CHARS: Final = 255


@functools.lru_cache(maxsize=4096)
def _in_domains_cached(domain: str, domains: frozenset[str]) -> bool:
    domain = canonical_domain(domain)
    if domain in domains:
        return True
    # Each parent is a suffix of the name: sliced at each dot, not joined from labels.
    at = domain.find(".")
    while at >= 0:
        if domain[at:] in domains:
            return True
        at = domain.find(".", at + 1)
    return False


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_sessions: int = 1000
    max_rcpt: int = 100
    max_message_size: int = 50 * 1024 * 1024
    max_attachment_size: int = 20 * 1024 * 1024
    max_hops: int = 30
    #: Header fields of one message judged at most; a message with more is not judged
    #: and gets internal_error (a flood of fields costs CPU and memory per field).
    max_header_fields: int = 10000


@dataclass(frozen=True, slots=True)
class ContentConfig:
    #: Trace header smtpguard recognises (and, if enabled, adds) as its loop marker.
    loop_marker: str = "X-Smtpguard-Loop"
    #: Add the marker to accepted mail for our local and relay domains (not to mail our
    #: users send to other domains). Costs one extra packet at end of message, which
    #: over an inet: socket waits ~40 ms for Nagle + delayed ACK; use a unix socket.
    add_loop_marker: bool = False
    #: Marker value; empty means the first of site.our_hostnames, else milter.name.
    loop_marker_value: str = ""
    #: A secret: the marker then names its envelope sender with each recipient (keyed
    #: hashes), and a message that comes back is a loop only from that sender for one of
    #: them (smtpguard.loopmark). Empty: the bare marker.
    loop_marker_key: str = field(default="", repr=False)
    #: MIME nesting deeper than this is treated as one opaque part.
    max_mime_depth: int = 20
    #: After this many MIME parts the rest of the body is one opaque part.
    max_mime_parts: int = 10000


@dataclass(frozen=True, slots=True)
class ReplyOverride:
    code: str | None = None
    xcode: str | None = None
    text: Mapping[str, str] = field(default_factory=dict)
    hint: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RepliesConfig:
    table: Path
    languages: tuple[str, ...] = ("en", "zh")
    form: ReplyForm = "one_line"
    utf8: UTF8Policy = "always"
    hint: bool = False
    help_url: str = ""
    overrides: Mapping[str, ReplyOverride] = field(default_factory=dict)
    #: Languages only [domain."X"] tables use: overrides may give texts in them too.
    domain_languages: tuple[str, ...] = ()


# --- exemptions and local IP lists (issue 14) ----------------------------------------

#: Checks no exemption may skip: they decide who may relay and who a sender is. An
#: exemption is never a way to relay (that is ``site.trusted_networks``).
NEVER_EXEMPT: Final = frozenset(
    {"relay", "relay_local", "auth_mechanism", "auth_login", "sender_login"}
)
#: Checks a ``[domain]`` table may set a mode for that decide at RCPT alone, for that
#: recipient under its own domain's table: nothing of the message depends on them.
DECIDED_PER_RECIPIENT: Final = frozenset({"mailbox"})
#: ``skip = ["all-content"]``: the checks that judge the message itself. Size, line
#: syntax and loop checks are not in it: they protect the MTA and the mailboxes.
CONTENT_GROUP: Final = frozenset({"antispam", "virus", "attachment_size", "received", "bulk"})
#: postmaster_skip's default: the content checks but the virus scan. RFC 5321 §4.5.1
#: lets a breach of security block mail to postmaster, and malware addressed there
#: reached the admin unscanned (review rev188 F1); amavis exempts it from spam only.
POSTMASTER_SKIP: Final = CONTENT_GROUP - {"virus"}


@dataclass(frozen=True, slots=True)
class Exemption:
    """One ``[[policy.exempt]]`` entry: who it matches and which checks it skips.

    Every kind of criterion given must match: the client (an IP list entry or a
    forward-confirmed host name under one of ``host_suffixes``; either is enough), the
    sender, the recipient. A sender alone is forgeable, so it only counts together with
    a client match or an SPF ``pass`` (``spf_pass = true``).
    """

    name: str
    skip: frozenset[str]
    networks: IpSet = field(default_factory=IpSet)
    host_suffixes: tuple[str, ...] = ()
    #: "user@example.net" (exact), "example.net" (and subdomains), "@example.net".
    senders: tuple[str, ...] = ()
    spf_pass: bool = False
    recipients: tuple[str, ...] = ()

    @property
    def matches_client(self) -> bool:
        """Whether it names clients: ``ips``, ``host_suffixes``, or ``ip_files`` (also
        while they hold no address: then it matches no client, never every one)."""
        return bool(self.networks) or bool(self.networks.sources) or bool(self.host_suffixes)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    sender_deny: tuple[str, ...] = ()
    # Mechanisms that send the password in clear and therefore need TLS.
    auth_tls_required: frozenset[str] = frozenset({"PLAIN", "LOGIN"})
    # Empty means any mechanism the MTA offers.
    auth_allowed: frozenset[str] = frozenset()
    default_login_domain: str = ""
    #: An authenticated login must also own every address of the From: header field
    #: (sender_mismatch at the end of the message).
    check_header_from: bool = False
    exempt: tuple[Exemption, ...] = ()
    #: Checks skipped for mail to postmaster@ of a local domain (RFC 5321 §4.5.1).
    postmaster_skip: frozenset[str] = POSTMASTER_SKIP


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    backend: Literal["sqlite", "none"] = "sqlite"
    path: Path = Path("/var/lib/smtpguard/directory.sqlite")
    timeout: float = 2.0
    #: Seconds a lookup result is reused (0: ask the file every time).
    cache_ttl: float = 1.0


@dataclass(frozen=True, slots=True)
class StateConfig:
    #: "embedded": blacklist in a SQLite file, counters in process (or, with several
    #: workers, in a SQLite file beside it). "redis": both in Redis, shared by every
    #: smtpguard host that uses the same server.
    backend: Literal["embedded", "redis"] = "embedded"
    path: Path = Path("/var/lib/smtpguard/state.sqlite")
    timeout: float = 2.0
    #: Seconds an embedded blacklist lookup is reused (0: ask the file every time).
    cache_ttl: float = 1.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "smtpguard"
    #: Redis unreachable: "error" answers database_temp_error (per the check's
    #: on_temp_error), "local" counts in process until Redis is back. The same-size
    #: counters only: blacklist lookups fail either way ([checks.blacklist]
    #: on_temp_error decides).
    on_redis_error: Literal["error", "local"] = "error"
    #: The Redis blacklist exists: a hash without its marker is a lost list on every
    #: host from the first lookup on, not an empty one (review rev100 F10).
    redis_blacklist_required: bool = False


@dataclass(frozen=True, slots=True)
class VirusConfig:
    #: "none", "clamd" (INSTREAM over clamd_socket) or "command" (a program reading the
    #: message on stdin: exit 0 clean, 1 infected with the name on stdout, else error).
    backend: Literal["none", "clamd", "command"] = "none"
    clamd_socket: Endpoint = Endpoint(path="/run/clamav/clamd.ctl")  # noqa: RUF009 - frozen
    command: tuple[str, ...] = ()
    timeout: float = 30.0
    #: Octets sent to the scanner at most; keep it at or below clamd's StreamMaxLength.
    max_bytes: int = 25 * 1024 * 1024
    #: A message too large to scan whole: "pass" (scan the first max_bytes, deliver if
    #: that is clean) or "tempfail".
    on_size_limit: Literal["pass", "tempfail"] = "pass"


@dataclass(frozen=True, slots=True)
class AntispamConfig:
    #: Built-in content rules (header and body regexes with scores).
    rules: Path = Path()
    add_header_score: float = 6.0
    reject_score: float = 15.0
    flag_header: str = "X-Spam-Flag"
    score_header: str = "X-Spam-Score"
    #: Add X-Spam-Status and X-Spam-Report (score, threshold, matched rules) to
    #: every accepted message the anti-spam check scored.
    status_headers: bool = True
    #: External engine: "none" or "rspamd" (HTTP /checkv2 at engine_socket).
    engine: Literal["none", "rspamd"] = "none"
    engine_socket: Endpoint = Endpoint(host="127.0.0.1", port=11333)  # noqa: RUF009 - frozen
    engine_timeout: float = 15.0
    #: Also reject when the engine's own action is "reject", whatever the score.
    engine_action: bool = True
    #: Octets of a message kept in memory for the engine before spooling to disk.
    spool_memory: int = 1024 * 1024
    #: A larger message is not sent to the engine (rspamd's max_message, 50 MiB by
    #: default, refuses it: an engine error for every such message).
    engine_max_bytes: int = 50 * 1024 * 1024
    #: Such a message: "pass" (scored by the built-in rules alone, logged) or
    #: "tempfail" (internal_error, also where on_temp_error = "pass"): a site that
    #: fails closed on the engine (review rev120 F3).
    on_size_limit: Literal["pass", "tempfail"] = "pass"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    #: Prometheus endpoint; off by default.
    enabled: bool = False
    listen: str = "127.0.0.1"
    port: int = 9357


@dataclass(frozen=True, slots=True)
class BulkConfig:
    #: What identifies a sender: any of "sender" (a logged-in client's login, else the
    #: MAIL FROM address), "mail_from" (the MAIL FROM address, logged in or not),
    #: "sender_domain", "client_ip", "login" (not alone).
    key: tuple[str, ...] = ("sender", "client_ip")
    window: int = 3600
    #: More than this many messages of similar size in the window are refused.
    threshold: int = 20
    #: Relative bucket width (0.02: sizes within 2% count together); or a fixed width
    #: in octets when bucket_bytes > 0.
    bucket_width: float = 0.02
    bucket_bytes: int = 0
    #: An IPv6 client counts as its network of this length for "client_ip": a host
    #: holds a whole /64 and its privacy addresses (RFC 4941) rotate through it.
    ipv6_prefix: int = 64
    #: Entries of the table the workers share (several workers, embedded state): a
    #: power of two, 160 octets each. Each sender and size takes one, each message
    #: with a Message-ID one more, for the window.
    shared_entries: int = 65536
    #: Count bounces too (a stranger's null sender to one recipient), per client IP.
    #: Off: a 552 to a bounce is lost (no bounce is sent for one), and one receiving MX
    #: returns a newsletter's bounces all of one size.
    count_bounces: bool = False


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """The resolver shared by every DNS check (see :mod:`smtpguard.dns`).

    No nameservers means no resolver: the DNS checks stay inactive, so a config that
    says nothing about DNS never sends a query (and a site that sets checks for them
    without a resolver is refused at load).
    """

    #: IP addresses, or the single word "system" for the nameservers of /etc/resolv.conf.
    nameservers: tuple[str, ...] = ()
    port: int = 53
    #: Seconds for one lookup, retries included.
    timeout: float = 2.0
    #: Seconds one milter callback may wait for DNS in all (shared by a stage's checks).
    stage_deadline: float = 3.0
    cache_size: int = 10000
    #: Caps on how long answers are cached: positive (record TTL) and negative
    #: (RFC 2308 §5: SOA minimum), seconds.
    max_ttl: int = 86400
    negative_ttl: int = 3600
    #: Seconds a SERVFAIL or timeout is remembered (RFC 9520 §3.2: at least 1 s,
    #: at most 5 min), so a dead server is not asked again by every session.
    failure_ttl: int = 5
    #: Seconds a verdict computed from DNS answers (SPF result, sender domain, reverse
    #: DNS) is reused for the same inputs; 0 recomputes for every message. Keep it
    #: below the TTLs of the records involved.
    verdict_ttl: int = 30

    @property
    def enabled(self) -> bool:
        return bool(self.nameservers)


DnsblKind = Literal["rbl", "openrelay"]
#: "reject": a listing refuses the client with the kind's reply. "score": a listing adds
#: the zone's ``weight`` to the message's anti-spam score instead (postscreen's
#: ``dnsbl_sites`` weights, rspamd's RBL symbols).
DnsblAction = Literal["reject", "score"]


@dataclass(frozen=True, slots=True)
class DnsblZone:
    """One DNS blocklist zone (RFC 5782)."""

    name: str
    kind: DnsblKind = "rbl"
    #: Accepted answers as inclusive ranges; empty: every answer in 127.0.0.0/8 except
    #: the operators' error codes (see :mod:`smtpguard.checks.dnsbl`).
    answers: tuple[tuple[ipaddress.IPv4Address, ipaddress.IPv4Address], ...] = ()
    #: Instead of ``answers``: listed when answer & bitmask != 0 (low 24 bits).
    bitmask: int | None = None
    action: DnsblAction = "reject"
    #: Added to the anti-spam score when listed (``action = "score"`` only).
    weight: float = 0.0
    #: Also query IPv6 clients (nibble form, RFC 5782 §2.4); not every list has them.
    ipv6: bool = True


@dataclass(frozen=True, slots=True)
class LocalList:
    """A ``[[dnsbl.local]]`` block list: a listing there is answered like one in a DNS
    zone of the same kind (``rbl_deny`` or ``openrelay_check``), without DNS."""

    file: Path
    kind: DnsblKind
    entries: IpSet


@dataclass(frozen=True, slots=True)
class DnsblConfig:
    zones: tuple[DnsblZone, ...] = ()
    local: tuple[LocalList, ...] = ()


@dataclass(frozen=True, slots=True)
class GenericPatterns:
    """``rules/generic_ptr.toml``: reverse names of dynamic/residential hosts."""

    file: Path
    #: (name, pattern) searched in the lower-cased PTR name.
    patterns: tuple[tuple[str, Pattern], ...] = ()
    #: A name matching one of these is never generic.
    allow: tuple[Pattern, ...] = ()
    #: Also generic: a name carrying the client's own IPv4 address (198-51-100-7...).
    embedded_ip: bool = True


@dataclass(frozen=True, slots=True)
class SmtpportConfig:
    """The ``smtpport`` check (reply ``smtpport_check``). Each reason has its own mode
    ("enforce", "report": log only, "off"), so a site can roll them out one at a time;
    the check's own ``[checks.smtpport] mode`` still applies on top."""

    #: No PTR record for the client IP.
    no_ptr: Mode = "enforce"
    #: The PTR name must resolve back to the client IP (FCrDNS).
    fcrdns: Mode = "enforce"
    #: The (confirmed) PTR name looks like a dynamic/residential host's.
    generic_mode: Mode = "enforce"
    #: None: no pattern check (``generic_patterns = ""``).
    generic: GenericPatterns | None = None
    #: TCP connect-back to the client's SMTP port; off by default (outbound-only
    #: relays of large providers legitimately refuse it).
    connect_back: Mode = "off"
    connect_back_port: int = 25
    connect_back_timeout: float = 3.0
    connect_back_cache_ttl: int = 3600


@dataclass(frozen=True, slots=True)
class SpfConfig:
    #: Reject on softfail ("~all") too, not only on fail.
    reject_softfail: bool = False


@dataclass(frozen=True, slots=True)
class LineSyntaxConfig:
    #: Refuse the long lines of trusted clients (site.trusted_networks, logged in) too.
    #: Off: they pass, as Postfix passes them (its SMTP client folds lines over 998
    #: octets on the way out); a NUL byte is refused from every client.
    check_trusted: bool = False


@dataclass(frozen=True, slots=True)
class CheckSettings:
    mode: Mode = "enforce"
    on_temp_error: TempPolicy = "tempfail"


@dataclass(frozen=True, slots=True)
class DomainPolicy:
    """A ``[domain."example.com"]`` table: what applies to mail for that domain, every
    value filled in (the global one where the table says nothing). Decided at RCPT
    from the recipient's domain; a stranger's transaction never mixes two content
    policies (everything here but ``max_rcpt``), one that is not split is judged under
    its tables combined (:func:`strictest`): see :mod:`smtpguard.policy`."""

    domain: str
    languages: tuple[str, ...]
    form: ReplyForm
    max_message_size: int
    max_attachment_size: int
    max_rcpt: int
    #: (check, mode) where the domain's mode differs from the global one, sorted.
    checks: tuple[tuple[str, Mode], ...] = ()
    add_header_score: float = 6.0
    reject_score: float = 15.0

    @property
    def content(self) -> tuple[object, ...]:
        """What decides how a message is handled: equal for every recipient of one
        transaction. Not the modes of checks answered at RCPT for their own recipient
        alone (review rev216 L2: a domain's mailbox check in report mode split every
        stranger's message to it and another domain, for nothing)."""
        return (
            self.languages,
            self.form,
            self.max_message_size,
            self.max_attachment_size,
            tuple(c for c in self.checks if c[0] not in DECIDED_PER_RECIPIENT),
            self.add_header_score,
            self.reject_score,
        )


#: How :func:`strictest` names the tables it combined (``big.example+(global)``): in
#: the summary line's ``policy=`` and ``simulate``.
COMBINED: Final = "+"
GLOBAL_TABLE: Final = "(global)"
#: Check modes from the laxest to the strictest.
_MODE_ORDER: Final[tuple[Mode, ...]] = ("off", "report", "enforce")


def strictest(
    tables: Sequence[DomainPolicy], check: Callable[[str], CheckSettings]
) -> DomainPolicy:
    """``tables`` (the first a transaction's first recipient's; ``domain`` empty for
    the global settings) combined so that no recipient's mail is judged more laxly
    than its own table says: every check at the strictest of its modes (``check``
    gives a check's global settings, the mode of a table that does not name it), the
    smallest limits and spam scores. Replies keep the first table's languages and
    form (review rev153 F5, rev154 F1: judged under the first table alone, a lax
    domain named first switched a strict domain's checks off for its copy)."""
    overrides = [dict(table.checks) for table in tables]
    modes: list[tuple[str, Mode]] = []
    for name in sorted({name for table in overrides for name in table}):
        default = check(name).mode
        mode = max((table.get(name, default) for table in overrides), key=_MODE_ORDER.index)
        if mode != default:
            modes.append((name, mode))
    return DomainPolicy(
        domain=COMBINED.join(table.domain or GLOBAL_TABLE for table in tables),
        languages=tables[0].languages,
        form=tables[0].form,
        max_message_size=min(t.max_message_size for t in tables),
        max_attachment_size=min(t.max_attachment_size for t in tables),
        max_rcpt=min(t.max_rcpt for t in tables),
        checks=tuple(modes),
        add_header_score=min(t.add_header_score for t in tables),
        reject_score=min(t.reject_score for t in tables),
    )


@dataclass(frozen=True, slots=True)
class Config:
    #: The file read, links followed: its directory anchors relative paths.
    file: Path
    milter: MilterConfig
    site: SiteConfig
    limits: LimitsConfig
    content: ContentConfig
    replies: RepliesConfig
    policy: PolicyConfig
    directory: DirectoryConfig
    state: StateConfig
    checks: Mapping[str, CheckSettings]
    dns: DnsConfig = field(default_factory=DnsConfig)
    dnsbl: DnsblConfig = field(default_factory=DnsblConfig)
    smtpport: SmtpportConfig = field(default_factory=SmtpportConfig)
    spf: SpfConfig = field(default_factory=SpfConfig)
    line_syntax: LineSyntaxConfig = field(default_factory=LineSyntaxConfig)
    virus: VirusConfig = field(default_factory=VirusConfig)
    antispam: AntispamConfig = field(default_factory=AntispamConfig)
    bulk: BulkConfig = field(default_factory=BulkConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    #: ``[domain."NAME"]`` tables by canonical domain name (``canonical_domain``); each
    #: table's ``domain`` is the name lower-cased as written, for messages.
    domains: Mapping[str, DomainPolicy] = field(default_factory=dict)
    #: The path the config was loaded by, made absolute, links not followed (None:
    #: ``file``): a reload reads it again, so a deploy that switches a link to
    #: another release is loaded (review rev51: the start's target was read again).
    source: Path | None = None

    @property
    def path(self) -> Path:
        """Where a reload reads the config."""
        return self.source if self.source is not None else self.file

    def check(self, name: str) -> CheckSettings:
        return self.checks.get(name) or CHECK_DEFAULTS.get(name, _DEFAULT_CHECK)

    def domain_policy(self, domain: str) -> DomainPolicy | None:
        """The table for mail to ``domain``, or None: the global settings apply."""
        if not self.domains:
            return None
        return self.domains.get(canonical_domain(domain))

    def combined_policy(self, domains: Sequence[str]) -> DomainPolicy | None:
        """The table a transaction to ``domains`` (its recipients' domains, in order)
        is judged under: the one table they share (None: the global settings), or,
        where they fall under several, those tables combined at their strictest
        (:func:`strictest`). A stranger's transaction has several only where they
        differ in what is decided per recipient (``rcpt_limit`` splits the others); a
        dry run's and the site's own submission's are not split."""
        if not self.domains or not domains:
            return None
        first = self.domain_policy(domains[0])
        tables: dict[str, DomainPolicy] = {}
        for domain in domains:
            table = self.domain_policy(domain) or self.global_policy()
            tables.setdefault(table.domain, table)
        if len(tables) == 1:
            return first
        # Tables that differ in what is decided per recipient only are still named
        # together: the first one alone hid the others' names from policy= (review
        # rev220 L3: in one order "policy=x.example", in the other none).
        return strictest(tuple(tables.values()), self.check)

    def global_policy(self) -> DomainPolicy:
        """The global settings as a :class:`DomainPolicy` (for domains without a table)."""
        return DomainPolicy(
            domain="",
            languages=self.replies.languages,
            form=self.replies.form,
            max_message_size=self.limits.max_message_size,
            max_attachment_size=self.limits.max_attachment_size,
            max_rcpt=self.limits.max_rcpt,
            add_header_score=self.antispam.add_header_score,
            reject_score=self.antispam.reject_score,
        )

    @property
    def loop_marker_value(self) -> str:
        if self.content.loop_marker_value:
            return self.content.loop_marker_value
        names = sorted(self.site.our_hostnames)
        return names[0] if names else self.milter.name


_DEFAULT_CHECK = CheckSettings()

#: Checks that need the resolver (``[dns] nameservers``), by ``[checks.NAME]`` table: the
#: loader refuses them when asked for without one, the pipeline does not build them.
DNS_CHECKS = frozenset({"rbl", "openrelay", "smtpport", "helo_dns", "sender_domain", "spf"})

#: Checks whose defaults differ from enforce/tempfail. A DNS failure is not the
#: client's fault: the DNS checks pass on SERVFAIL/timeout unless configured otherwise
#: (docs/replies.md, sender_unvalidated: a SERVFAIL or timeout passes unless
#: on_temp_error is "tempfail"), so an unreachable resolver can never reject mail.
#: helo_dns is optional (docs/replies.md, helo_error).
CHECK_DEFAULTS: Mapping[str, CheckSettings] = {
    "rbl": CheckSettings("enforce", "pass"),
    "openrelay": CheckSettings("enforce", "pass"),
    "smtpport": CheckSettings("enforce", "pass"),
    "helo_dns": CheckSettings("off", "pass"),
    "sender_domain": CheckSettings("enforce", "pass"),
    "spf": CheckSettings("enforce", "pass"),
    # A dead spam engine should not stop mail; a dead virus scanner should.
    "antispam": CheckSettings("enforce", "pass"),
}


def load_config(
    path: Path | str,
    *,
    known_checks: frozenset[str] | None = None,
    data: bytes | None = None,
    target: Path | None = None,
) -> Config:
    """Read and validate the operator config; raise :class:`ConfigError`.

    ``data``: the file's bytes as read before (a supervisor's reload validates them
    once and every worker applies those, whatever the file holds by then), from
    ``target`` (``path`` with its links followed then; by default now), which names
    the file and anchors its relative paths."""
    given = Path(path)
    # Resolved once, then read: a link switched meanwhile gives one file's text and
    # the same file's directory.
    file = target if target is not None else given.resolve()
    raw = read_toml(file) if data is None else parse_toml(file, data)
    config = _build(_Section(file, "", raw), known_checks)
    # absolute(), not abspath(): "current/../x.toml" through a link "current" is not
    # "x.toml" (review rev58).
    return replace(config, source=given.absolute())


def loader_keys() -> dict[str, frozenset[str]]:
    """Every key the loader reads, by section (dotted name), for a config that sets
    nothing: what the sample config must document (tests/test_sample_config.py)."""
    registry: list[_Section] = []
    _build(_Section(Path("/nonexistent/defaults.toml"), "", {}, registry), None)
    return {section.prefix: frozenset(section.seen) for section in registry}


class _Parts:
    """Each table's first problem, all of them at once (review rev113 F2: one problem a
    run of check-config, then a fix and a run again for the next). A table that fails
    stands in with its defaults, so the tables that read it still load; their own
    problems are then left out (they might only follow from the first)."""

    def __init__(self, root: _Section) -> None:
        self.root = root
        self.problems: list[ConfigError] = []
        self.failed: set[str] = set()

    def table(self, name: str, build: Callable[[_Section], _T], after: tuple[str, ...] = ()) -> _T:
        """``build`` of the root's table ``name``."""
        return self.call(
            name,
            lambda: build(self.root.table(name)),
            lambda: build(_Section(self.root.file, name, {}, self.root.registry)),
            after,
        )

    def call(
        self,
        name: str,
        build: Callable[[], _T],
        fallback: Callable[[], _T],
        after: tuple[str, ...] = (),
    ) -> _T:
        try:
            return build()
        except ConfigError as exc:
            if not self.failed.intersection(after):
                self.problems.append(exc)
            self.failed.add(name)
            return fallback()

    def check(self) -> None:
        if self.problems:
            raise ConfigErrors(self.problems)


def _build(root: _Section, known_checks: frozenset[str] | None) -> Config:
    parts = _Parts(root)
    milter = parts.table("milter", _milter)
    site = parts.table("site", _site)
    limits = parts.table("limits", _limits)
    content = parts.table("content", _content)
    replies = parts.table("replies", _replies)
    policy = parts.table("policy", lambda s: _policy(s, known_checks, site), ("site",))
    directory = parts.table("directory", _directory)
    state = parts.table("state", _state)
    checks, explicit = parts.call("checks", lambda: _checks(root, known_checks), lambda: ({}, {}))
    dns = parts.table("dns", _dns)
    dnsbl = parts.table("dnsbl", _dnsbl)
    smtpport = parts.table("smtpport", _smtpport)
    spf = parts.table("spf", _spf)
    line_syntax = parts.table("line_syntax", _line_syntax)
    virus = parts.table("virus", _virus)
    antispam = parts.table("antispam", _antispam)
    bulk = parts.table("bulk", _bulk)
    metrics = parts.table("metrics", lambda s: _metrics(s, milter), ("milter",))
    domains = parts.call(
        "domain",
        lambda: _domains(
            root,
            site=site,
            limits=limits,
            replies=replies,
            antispam=antispam,
            checks=checks,
            known=known_checks,
        ),
        dict[str, DomainPolicy],
        ("site", "limits", "replies", "antispam", "checks"),
    )
    parts.call("", root.done, lambda: None)
    parts.check()
    used = {lang for d in domains.values() for lang in d.languages} - set(replies.languages)
    replies = replace(replies, domain_languages=tuple(sorted(used)))
    _require_resolver(root, dns, dnsbl, explicit, policy)
    _require_backend(root, checks, virus)
    _require_scoring(root, dnsbl, checks)
    _require_relay_enforced(root, milter, site, checks)
    _require_one_policy_per_transaction(root, domains, checks, policy)
    _require_distinct_fields(root, milter, antispam, content)
    return Config(
        file=root.file,
        milter=milter,
        site=site,
        limits=limits,
        content=content,
        replies=replies,
        policy=policy,
        directory=directory,
        state=state,
        checks=checks,
        dns=dns,
        dnsbl=dnsbl,
        smtpport=smtpport,
        spf=spf,
        line_syntax=line_syntax,
        virus=virus,
        antispam=antispam,
        bulk=bulk,
        metrics=metrics,
        domains=domains,
    )


def _domains(
    root: _Section,
    *,
    site: SiteConfig,
    limits: LimitsConfig,
    replies: RepliesConfig,
    antispam: AntispamConfig,
    checks: Mapping[str, CheckSettings],
    known: frozenset[str] | None,
) -> dict[str, DomainPolicy]:
    out: dict[str, DomainPolicy] = {}
    outer = root.table("domain")
    for name in list(outer.data):
        # Keyed as written, quoted: a domain's dots are not table levels.
        outer.seen.add(name)
        if not isinstance(outer.data[name], dict):
            raise ConfigError(root.file, f'domain."{name}"', "expected a table")
        s = _Section(root.file, f'domain."{name}"', outer.data[name], root.registry)
        domain = _table_domain(s, name)
        key = canonical_domain(domain)
        if not site.is_local(domain) and not site.is_relay(domain):
            raise ConfigError(
                root.file,
                s.prefix,
                "not one of site.local_domains or site.relay_domains: per-domain policy"
                " is for mail we receive for our own domains",
            )
        if key in out:
            raise ConfigError(root.file, s.prefix, f"domain {domain} has two tables")
        languages = s.strings("languages", replies.languages)
        if not languages or len(set(languages)) != len(languages):
            raise s.error("languages", "must name each language once, at least one")
        overrides: dict[str, Mode] = {}
        modes = s.table("checks")
        for check in list(modes.data):
            t = modes.table(check)
            if known is not None and check not in known:
                raise t.error("mode", _unknown_check(check, known))
            if check in NEVER_EXEMPT:
                raise t.error("mode", f"{check!r} is the same for every domain")
            mode = cast(Mode, t.choice("mode", "enforce", ("enforce", "report", "off")))
            t.done()
            default = checks.get(check) or CHECK_DEFAULTS.get(check, _DEFAULT_CHECK)
            if default.mode == "off" and mode != "off":
                raise t.error(
                    "mode",
                    f"check {check!r} is off globally, so it does not run at all: turn it on"
                    " in [checks] and off in the tables of the domains that should not have it",
                )
            if check == "rcpt_limit":
                raise t.error("mode", "rcpt_limit keeps each transaction to one domain policy")
            if mode != default.mode:
                overrides[check] = mode
        modes.done()
        add_header, reject = _spam_thresholds(s, antispam)
        out[key] = DomainPolicy(
            domain=domain,
            languages=languages,
            form=cast(ReplyForm, s.choice("form", replies.form, ("one_line", "per_language"))),
            max_message_size=s.integer("max_message_size", limits.max_message_size, minimum=1),
            max_attachment_size=s.integer(
                "max_attachment_size", limits.max_attachment_size, minimum=1
            ),
            max_rcpt=s.integer("max_rcpt", limits.max_rcpt, minimum=1),
            checks=tuple(sorted(overrides.items())),
            add_header_score=add_header,
            reject_score=reject,
        )
        s.done()
    return out


def _metrics(s: _Section, milter: MilterConfig) -> MetricsConfig:
    d = MetricsConfig()
    out = MetricsConfig(
        enabled=s.boolean("enabled", d.enabled),
        listen=s.string("listen", d.listen),
        port=s.integer("port", d.port, minimum=1),
    )
    s.done()
    try:
        loopback = ipaddress.ip_address(out.listen).is_loopback
    except ValueError:
        raise s.error("listen", f"not an IP address: {out.listen!r}") from None
    if out.port > 65535:
        raise s.error("port", "must be at most 65535")
    if not loopback and not milter.allow_remote_socket:
        raise s.error(
            "listen", "not a loopback address; set milter.allow_remote_socket = true to expose it"
        )
    kind, _, rest = milter.socket.partition(":")
    port, _, host = rest.partition("@")
    # As libmilter reads it (atoi: "023291" is 23291); _check_socket_port has refused
    # what is no number.
    if out.enabled and kind in ("inet", "inet6") and port.isdigit() and int(port) == out.port:
        try:
            hosts = (ipaddress.ip_address(host.strip("[]")), ipaddress.ip_address(out.listen))
            apart = hosts[0] != hosts[1] and not any(h.is_unspecified for h in hosts)
        except ValueError:
            apart = False  # no host (every address) or a name: they may meet
        if not apart:
            # One of the two could not be bound at the start (review rev156).
            raise s.error("port", f"{out.port} is the milter socket's port too (milter.socket)")
    return out


def _endpoint(s: _Section, name: str, default: Endpoint) -> Endpoint:
    """A scanner socket, read by the parser the scanners use (:mod:`smtpguard.endpoint`)."""
    try:
        return parse_endpoint(s.string(name, str(default)))
    except EndpointError as exc:
        raise s.error(name, str(exc)) from None


def _virus(s: _Section) -> VirusConfig:
    d = VirusConfig()
    out = VirusConfig(
        backend=cast(
            Literal["none", "clamd", "command"],
            s.choice("backend", d.backend, ("none", "clamd", "command")),
        ),
        clamd_socket=_endpoint(s, "clamd_socket", d.clamd_socket),
        command=s.strings("command"),
        timeout=s.seconds("timeout", d.timeout, minimum=0.1, maximum=MAX_SCAN_WAIT),
        max_bytes=s.integer("max_bytes", d.max_bytes, minimum=1024),
        on_size_limit=cast(
            Literal["pass", "tempfail"],
            s.choice("on_size_limit", d.on_size_limit, ("pass", "tempfail")),
        ),
    )
    s.done()
    if out.backend == "command" and not out.command:
        raise s.error("command", 'backend = "command" needs the program and its arguments')
    if out.command and not out.command[0].strip():
        raise s.error("command[0]", "the program's name is empty")
    return out


def _spam_thresholds(s: _Section, d: AntispamConfig) -> tuple[float, float]:
    """``add_header_score`` and ``reject_score`` of ``s`` (``d``: the defaults).

    Above 0: a message no rule matched scores 0, so a threshold of 0 (which elsewhere
    here means "off") flagged or refused every clean message, for good (review rev156
    F1). Rules with negative scores lower a score; they do not make 0 a spam score."""
    add_header = s.number("add_header_score", d.add_header_score, minimum=-1e9)
    reject = s.number("reject_score", d.reject_score, minimum=-1e9)
    for key, value in (("add_header_score", add_header), ("reject_score", reject)):
        if value <= 0:
            raise s.error(
                key,
                f"must be above 0, got {_plain(value)}: a message no rule matched scores 0,"
                " and every such message would be "
                + ("flagged as spam" if key == "add_header_score" else "refused"),
            )
    if reject < add_header:
        raise s.error("reject_score", "must not be below add_header_score")
    return add_header, reject


def _antispam(s: _Section) -> AntispamConfig:
    d = AntispamConfig()
    add_header, reject = _spam_thresholds(s, d)
    out = AntispamConfig(
        rules=s.path("rules", str(default_rules_dir() / "antispam.toml")),
        add_header_score=add_header,
        reject_score=reject,
        flag_header=s.string("flag_header", d.flag_header),
        score_header=s.string("score_header", d.score_header),
        status_headers=s.boolean("status_headers", d.status_headers),
        engine=cast(Literal["none", "rspamd"], s.choice("engine", d.engine, ("none", "rspamd"))),
        engine_socket=_endpoint(s, "engine_socket", d.engine_socket),
        engine_timeout=s.seconds(
            "engine_timeout", d.engine_timeout, minimum=0.1, maximum=MAX_SCAN_WAIT
        ),
        engine_action=s.boolean("engine_action", d.engine_action),
        spool_memory=s.integer("spool_memory", d.spool_memory, minimum=0),
        engine_max_bytes=s.integer("engine_max_bytes", d.engine_max_bytes, minimum=1024),
        on_size_limit=cast(
            Literal["pass", "tempfail"],
            s.choice("on_size_limit", d.on_size_limit, ("pass", "tempfail")),
        ),
    )
    s.done()
    for key in ("flag_header", "score_header"):
        if not HEADER_NAME.match(getattr(out, key)):
            raise s.error(key, "not a header field name")
    return out


#: "login" is empty for every anonymous session: never alone in a key.
_BULK_KEYS = ("sender", "mail_from", "sender_domain", "client_ip", "login")


#: 640 MiB of shared table.
MAX_SHARED_ENTRIES: Final = 1 << 22


def _bulk(s: _Section) -> BulkConfig:
    d = BulkConfig()
    key = s.strings("key", d.key)
    for part in key:
        if part not in _BULK_KEYS:
            raise s.error("key", f"unknown key part {part!r}; use {', '.join(_BULK_KEYS)}")
    if not key:
        raise s.error("key", f"must name at least one of {', '.join(_BULK_KEYS)}")
    if set(key) == {"login"}:
        raise s.error(
            "key",
            "a login alone would count every unauthenticated sender as one; add sender,"
            " sender_domain or client_ip",
        )
    out = BulkConfig(
        key=key,
        window=s.integer("window", d.window, minimum=1, maximum=MAX_TTL),
        threshold=s.integer("threshold", d.threshold, minimum=1),
        bucket_width=s.number("bucket_width", d.bucket_width, minimum=0.0001),
        bucket_bytes=s.integer("bucket_bytes", d.bucket_bytes, minimum=0),
        ipv6_prefix=s.integer("ipv6_prefix", d.ipv6_prefix, minimum=32, maximum=128),
        shared_entries=s.integer(
            "shared_entries", d.shared_entries, minimum=1024, maximum=MAX_SHARED_ENTRIES
        ),
        count_bounces=s.boolean("count_bounces", d.count_bounces),
    )
    s.done()
    if out.shared_entries & (out.shared_entries - 1):
        raise s.error("shared_entries", "must be a power of two (65536, 131072, 262144 ...)")
    if not 0 < out.bucket_width < 1:
        raise s.error("bucket_width", "a relative width must be between 0 and 1 (e.g. 0.02)")
    return out


def _milter(s: _Section) -> MilterConfig:
    d = MilterConfig()
    socket = s.string("socket", d.socket)
    if not socket.startswith(("unix:", "local:", "inet:", "inet6:")):
        raise s.error("socket", "must start with unix:, inet: or inet6:")
    _check_socket_port(s, socket)
    out = MilterConfig(
        socket=socket,
        name=_milter_name(s, d.name),
        timeout=s.integer("timeout", d.timeout, minimum=1, maximum=int(MAX_SECONDS)),
        mta=cast(MTAChoice, s.choice("mta", d.mta, ("auto", "postfix", "sendmail"))),
        dry_run=s.boolean("dry_run", d.dry_run),
        log_level=_log_level(s, d.log_level),
        socket_mode=_mode(s, "socket_mode", d.socket_mode),
        socket_owner=s.string("socket_owner", d.socket_owner),
        socket_group=s.string("socket_group", d.socket_group),
        user=s.string("user", d.user),
        allow_remote_socket=s.boolean("allow_remote_socket", d.allow_remote_socket),
        report_header=s.string("report_header", d.report_header),
        summary_log=s.boolean("summary_log", d.summary_log),
        log=cast(Literal["stderr", "syslog"], s.choice("log", d.log, ("stderr", "syslog"))),
        log_facility=s.choice("log_facility", d.log_facility, _FACILITIES),
        log_socket=s.string("log_socket", d.log_socket),
        authserv_id=s.string("authserv_id", d.authserv_id),
        auth_results=s.boolean("auth_results", d.auth_results),
        workers=s.integer("workers", d.workers, minimum=1),
        cpu_affinity=_cpu_affinity(s, d.cpu_affinity),
        worker_heartbeat_timeout=s.seconds("worker_heartbeat_timeout", d.worker_heartbeat_timeout),
    )
    if out.workers > MAX_WORKERS:
        raise s.error("workers", f"must be at most {MAX_WORKERS}")
    heartbeat = out.worker_heartbeat_timeout
    if heartbeat != 0 and not MIN_HEARTBEAT_TIMEOUT <= heartbeat < float("inf"):
        # Shorter than two heartbeats, every worker would be killed again and again;
        # nan would compare false and kill them too.
        raise s.error(
            "worker_heartbeat_timeout",
            f"must be 0 (off) or at least {MIN_HEARTBEAT_TIMEOUT:g} s (a worker's heartbeat"
            " comes once a second)",
        )
    if out.report_header and not HEADER_NAME.match(out.report_header):
        raise s.error("report_header", "not a header field name")
    if not out.log_socket.startswith("/"):
        raise s.error("log_socket", f"must be an absolute path; got {out.log_socket!r}")
    if out.authserv_id and not AUTHSERV_ID.fullmatch(out.authserv_id):
        raise s.error(
            "authserv_id",
            f"must be a host name (letters, digits, '.', '-'); got {out.authserv_id!r}",
        )
    s.done()
    for key, name, db in (
        ("socket_owner", out.socket_owner, pwd.getpwnam),
        ("socket_group", "" if out.socket_group == "auto" else out.socket_group, grp.getgrnam),
    ):
        if name:
            try:
                db(name)
            except KeyError:
                raise s.error(key, f"no such user or group on this system: {name!r}") from None
    if not out.allow_remote_socket and not _loopback_socket(socket):
        raise s.error(
            "socket",
            "inet socket on a non-loopback address; set allow_remote_socket = true"
            " if the milter protocol must be reachable from other hosts",
        )
    return out


#: syslog facilities by name (Python's SysLogHandler.facility_names, in order).
_FACILITIES = (
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "security",
    "syslog", "user", "uucp", "local0", "local1", "local2", "local3", "local4", "local5",
    "local6", "local7",
)  # fmt: skip
#: RFC 8601 §2.2 allows any token; a host name is what receivers compare against.
AUTHSERV_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def _log_level(s: _Section, default: str) -> str:
    """Python's level names, in any case ("info" as syslog and most daemons write it)."""
    value = s.string("log_level", default).upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise s.error("log_level", f"must be one of DEBUG, INFO, WARNING, ERROR; got {value!r}")
    return value


def _mode(s: _Section, name: str, default: int) -> int:
    raw = s.string(name, f"{default:04o}")
    try:
        mode = int(raw, 8)
    except ValueError:
        raise s.error(name, f'expected an octal mode like "0660", got {raw!r}') from None
    if not 0 <= mode <= 0o777:
        raise s.error(name, "must be between 0000 and 0777")
    return mode


def _milter_name(s: _Section, default: str) -> str:
    # The name of Sendmail's INPUT_MAIL_FILTER line and of Postfix's log lines: an
    # empty one, or one with a quote or comma, breaks the generated .mc line.
    name = s.string("name", default)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise s.error("name", f"must be letters, digits, '.', '_' or '-'; got {name!r}")
    return name


def _check_socket_port(s: _Section, socket: str) -> None:
    """libmilter reads the port with ``atoi`` and ``htons``: 99999 would listen on
    34463 while the Postfix and Sendmail lines written from the config say 99999."""
    kind, _, rest = socket.partition(":")
    if kind in ("unix", "local"):
        _check_socket_path(s, rest)
        return
    port = rest.partition("@")[0]
    # isdigit() alone admits "²" and full-width digits, which int() refuses or reads.
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        # libmilter's form is PORT@HOST, not the HOST:PORT of the scanner sockets
        # (review rev121 F8: the error did not say which).
        raise s.error(
            "socket",
            f"the port must be a number from 1 to 65535, got {port!r}"
            f" ({kind}:PORT or {kind}:PORT@HOST, e.g. {kind}:8891@127.0.0.1)",
        )
    # libmilter resolves the host in the socket's family: an address of the other one
    # loaded and then could not be bound (review rev156 F9).
    host = rest.partition("@")[2]
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return  # a host name (or none): looked up when the socket is opened
    wanted = {"inet": 4, "inet6": 6}.get(kind)
    if wanted is not None and address.version != wanted:
        fixed = f"inet6:{port}@[{address}]" if wanted == 4 else f"inet:{port}@{address}"
        raise s.error(
            "socket",
            f"{host} is an IPv{address.version} address, and {kind}: listens on IPv{wanted}:"
            f" write {fixed}",
        )


def _dns_name(name: str, *, allow_utf8: bool = True) -> bool:
    """A host or domain name as DNS has them: with underscores (_dmarc, PTR names),
    which the SMTP grammar of :func:`is_valid_domain` refuses, checked as a letter."""
    return is_valid_domain(name.replace("_", "x"), allow_utf8=allow_utf8)


#: sun_path holds 108 bytes with the final NUL (Linux's struct sockaddr_un).
MAX_SOCKET_PATH: Final = 107


def _check_socket_path(s: _Section, path: str) -> None:
    # libmilter binds a relative path in the working directory (/ under systemd),
    # while Postfix reads one relative to its queue directory: they would never meet.
    if not path.startswith("/"):
        raise s.error(
            "socket",
            f"a unix socket needs an absolute path (unix:/run/...); got {path!r}",
        )
    if path.endswith("/"):
        raise s.error("socket", f"names a directory, not a socket: {path!r}")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise s.error(
            "socket", f"the path is longer than a unix socket allows ({MAX_SOCKET_PATH} bytes)"
        )


def _loopback_socket(socket: str) -> bool:
    kind, _, rest = socket.partition(":")
    if kind in ("unix", "local"):
        return True
    host = rest.partition("@")[2].strip("[]") or "127.0.0.1"
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: The shortest prefix of a site.trusted_networks entry, per IP version.
_SHORTEST_TRUSTED: Final = {4: 8, 6: 16}
#: All unique local IPv6 addresses (RFC 4193): a /7 a site may trust as its own.
_ULA: Final = ipaddress.IPv6Network("fc00::/7")
#: IPv6 ranges that embed IPv4 addresses (6to4, RFC 3056: a site's own is a /48 of
#: it; Teredo, RFC 4380): trusting more of one trusts IPv4 hosts anywhere (rev71).
#: Behind NAT64 (RFC 6052's well-known prefix, RFC 8215's local-use one) every IPv4
#: host arrives from the prefix, its address in the low bits: no more than a /104 (a
#: /8 of IPv4, as for IPv4 itself; review rev156 F10: 64:ff9b::/96 trusted IPv4).
_EMBEDS_IPV4: Final = (
    (ipaddress.IPv6Network("2002::/16"), 48),
    (ipaddress.IPv6Network("2001::/32"), 128),
    (NAT64, 104),
    (NAT64_LOCAL, 104),
)


def _too_wide(network: IPNetwork) -> str:
    """Why a ``site.trusted_networks`` entry trusts more than any site does, or "".

    Every address, or a typo for one (review rev65 F4; rev67: 0.0.0.0/1 and
    128.0.0.0/1 were all of IPv4): no site trusts more than a /8 (IPv4), a /16 of
    global IPv6 (rev70: 2000::/7 was accepted) or all unique local addresses
    (fc00::/7) to relay, nor more than its own part of a range that embeds IPv4
    addresses (rev71: 2002::/16 is every IPv4 host's 6to4 range)."""
    shortest = _SHORTEST_TRUSTED[network.version]
    if isinstance(network, ipaddress.IPv6Network):
        if network.subnet_of(_ULA):
            shortest = _ULA.prefixlen
        elif network.prefixlen >= shortest:
            for embedding, longest_prefix in _EMBEDS_IPV4:
                if network.overlaps(embedding) and network.prefixlen < longest_prefix:
                    return (
                        f"overlaps {embedding}, whose addresses embed IPv4 addresses:"
                        " clients anywhere could relay through it"
                    )
    if network.prefixlen < shortest:
        return (
            f"is larger than a /{shortest}: clients of trusted_networks may relay;"
            " list the networks you mean"
        )
    return ""


def _site(s: _Section) -> SiteConfig:
    d = SiteConfig()
    networks: list[IPNetwork] = []
    for item in s.strings("trusted_networks", ("127.0.0.0/8", "::1/128")):
        # Host bits are refused, not cleared: "192.0.2.0/2" (for /24) read as a quarter
        # of IPv4 that relays (review rev65 F4), where Postfix skips such an entry of
        # mynetworks with a warning.
        try:
            network = parse_network(item)
        except ValueError as exc:
            raise s.error("trusted_networks", str(exc)) from None
        problem = _too_wide(network)
        if problem:
            raise s.error("trusted_networks", f"{item!r} {problem}")
        networks.append(network)
    ips: set[IPAddress] = set()
    for item in s.strings("our_ips"):
        try:
            ip = ipaddress.ip_address(item)
        except ValueError:
            raise s.error("our_ips", f"not an IP address: {item!r}") from None
        ips.add(unmapped(ip))
    relay_control = cast(
        RelayControl, s.choice("relay_control", d.relay_control, ("postfix", "milter"))
    )
    out = SiteConfig(
        local_domains=s.domains("local_domains"),
        relay_domains=s.domains("relay_domains"),
        trusted_networks=tuple(networks),
        relay_control=relay_control,
        our_hostnames=s.domains("our_hostnames", parents=False),
        our_ips=frozenset(ips),
        recipient_delimiter=_delimiter(s, d.recipient_delimiter),
        idn_spellings=frozenset(
            spelling
            for name in ("local_domains", "relay_domains", "our_hostnames")
            for item in s.strings(name)
            if (
                spelling := _idn_spelling(
                    item.strip().removesuffix("."), derive=relay_control == "postfix"
                )
            )
        ),
    )
    s.done()
    return out


def _limits(s: _Section) -> LimitsConfig:
    d = LimitsConfig()
    out = LimitsConfig(
        max_sessions=s.integer("max_sessions", d.max_sessions, minimum=1),
        max_rcpt=s.integer("max_rcpt", d.max_rcpt, minimum=1),
        max_message_size=s.integer("max_message_size", d.max_message_size, minimum=1),
        max_attachment_size=s.integer("max_attachment_size", d.max_attachment_size, minimum=1),
        max_hops=s.integer("max_hops", d.max_hops, minimum=1),
        max_header_fields=s.integer("max_header_fields", d.max_header_fields, minimum=100),
    )
    s.done()
    return out


#: A header field name (RFC 5322 §3.6.8 ftext): loop marker, report header, rule parts.
HEADER_NAME: Final = re.compile(r"[!-9;-~]+\Z")


def _content(s: _Section) -> ContentConfig:
    d = ContentConfig()
    marker = s.string("loop_marker", d.loop_marker)
    if not HEADER_NAME.match(marker):
        raise s.error("loop_marker", f"not a header field name: {marker!r}")
    value = s.string("loop_marker_value", d.loop_marker_value)
    if not value.isascii() or not value.isprintable():
        raise s.error("loop_marker_value", "must be printable ASCII")
    key = s.string("loop_marker_key", d.loop_marker_key)
    if key and len(key) < 16:
        # 40-bit hashes of guessable addresses: a short key could be found offline.
        raise s.error("loop_marker_key", "too short: use at least 16 random characters")
    out = ContentConfig(
        loop_marker=marker,
        add_loop_marker=s.boolean("add_loop_marker", d.add_loop_marker),
        loop_marker_value=value,
        loop_marker_key=key,
        max_mime_depth=s.integer("max_mime_depth", d.max_mime_depth, minimum=1),
        max_mime_parts=s.integer("max_mime_parts", d.max_mime_parts, minimum=1),
    )
    s.done()
    return out


def _replies(s: _Section) -> RepliesConfig:
    d = RepliesConfig(table=Path())
    languages = s.strings("languages", d.languages)
    if not languages:
        raise s.error("languages", "must name at least one language")
    if len(set(languages)) != len(languages):
        raise s.error("languages", "lists a language twice")
    overrides: dict[str, ReplyOverride] = {}
    for reply_id, o in s.tables("override").items():
        code = o.string("code", "") or None
        xcode = o.string("xcode", "") or None
        for key in ("code", "xcode"):
            if o.data.get(key) == "":
                raise o.error(key, "must not be empty (leave the key out to keep the table's)")
        text = _lang_map(o, "text")
        hint = _lang_map(o, "hint")
        o.done()
        overrides[reply_id] = ReplyOverride(code=code, xcode=xcode, text=text, hint=hint)
    help_url = s.string("help_url", d.help_url)
    if help_url:
        try:
            # "{{id}}" contains "{id}" but formats to a literal "{id}" in every reply.
            substituted = "\0" in help_url.format(id="\0")
        except (KeyError, IndexError, ValueError) as exc:
            raise s.error("help_url", f"only {{id}} may be substituted ({exc!r})") from None
        if not substituted:
            raise s.error("help_url", "template must contain {id}")
        if not help_url.isascii() or not help_url.isprintable():
            raise s.error("help_url", "must be printable ASCII (use punycode and %%XX escapes)")
    out = RepliesConfig(
        table=s.data_file("table", str(default_rules_dir() / "replies.toml")),
        languages=languages,
        form=cast(ReplyForm, s.choice("form", d.form, ("one_line", "per_language"))),
        utf8=cast(UTF8Policy, s.choice("utf8", d.utf8, ("always", "smtputf8", "never"))),
        hint=s.boolean("hint", d.hint),
        help_url=help_url,
        overrides=overrides,
    )
    s.done()
    return out


def _lang_map(s: _Section, name: str) -> dict[str, str]:
    t = s.table(name)
    out = {lang: t.string(lang, "") for lang in list(t.data)}
    t.done()
    return out


def _policy(s: _Section, known: frozenset[str] | None, site: SiteConfig) -> PolicyConfig:
    d = PolicyConfig()
    sender_deny = []
    for index, entry in enumerate(s.strings("sender_deny")):
        key = f"sender_deny[{index}]"
        if is_deny_pattern(entry):
            _regex(s, key, entry[1:-1], ignore_case=True, probes=_UNRELATED_ADDRESSES)
            sender_deny.append(entry)
        else:
            # Stripped: " spam.example" would never equal a domain.
            sender_deny.append(_address_pattern(s, key, entry))
    out = PolicyConfig(
        sender_deny=tuple(sender_deny),
        auth_tls_required=_mechanisms(s, "auth_tls_required", d.auth_tls_required),
        auth_allowed=_mechanisms(s, "auth_allowed", frozenset()),
        default_login_domain=_login_domain(s, site),
        check_header_from=s.boolean("check_header_from", d.check_header_from),
        exempt=tuple(_exemption(e, i, known, site) for i, e in enumerate(s.table_list("exempt"))),
        postmaster_skip=_skip_list(s, "postmaster_skip", known, tuple(sorted(POSTMASTER_SKIP))),
    )
    if out.postmaster_skip & _DECIDED_AT_CONNECT:
        # Decided when the client connects, before any recipient is known: skipped for
        # postmaster@ it never is (review rev224 L7).
        raise s.error(
            "postmaster_skip",
            "session_limit is decided at connect, before any recipient is known: it"
            " cannot be skipped for postmaster@",
        )
    names: dict[str, int] = {}
    for index, ex in enumerate(out.exempt):
        if ex.name.lower() == "postmaster":
            # The built-in exemption's name (policy.postmaster_skip) in skipped= lines,
            # and the policy would read recipients = ["postmaster"] as its rule (review
            # rev129 F3).
            raise s.error(
                f"exempt[{index}].name",
                "'postmaster' is the name of the built-in exemption (policy.postmaster_skip)",
            )
        if ex.name in names:
            # The log's skipped=check:name says which exemption let a message pass.
            raise s.error(
                f"exempt[{index}].name",
                f"{ex.name!r} is already the name of policy.exempt[{names[ex.name]}]",
            )
        names[ex.name] = index
    s.done()
    return out


#: SASL mechanisms in IANA's registry (RFC 4422 section 5), which MTAs offer by these
#: names, and Cyrus SASL's plugins outside it (SRP, PASSDSS-3DES-1); GS2-* and 9798-*
#: are families, X-* private ones. SCRAM's members by name (RFC 5802, 7677; Cyrus
#: also offers SHA-224 and SHA-384): a misspelt one is refused (review rev151 F5).
SASL_MECHANISMS: Final = frozenset(
    {
        "ANONYMOUS",
        "CRAM-MD5",
        "DIGEST-MD5",
        "EAP-AES128",
        "EAP-AES128-PLUS",
        "ECDH-X25519-CHALLENGE",
        "ECDSA-NIST256P-CHALLENGE",
        "EXTERNAL",
        "GSS-SPNEGO",
        "GSSAPI",
        "KERBEROS_V4",
        "KERBEROS_V5",
        "LOGIN",
        "NMAS-SAMBA-AUTH",
        "NMAS_AUTHEN",
        "NMAS_LOGIN",
        "NTLM",
        "OAUTH10A",
        "OAUTHBEARER",
        "OPENID20",
        "OTP",
        "PASSDSS-3DES-1",
        "PLAIN",
        "SAML20",
        *(
            f"SCRAM-{hash_}{plus}"
            for hash_ in ("SHA-1", "SHA-224", "SHA-256", "SHA-384", "SHA-512", "SHA3-512")
            for plus in ("", "-PLUS")
        ),
        "SECURID",
        "SKEY",
        "SPNEGO",
        "SPNEGO-PLUS",
        "SRP",
        "SXOVER-PLUS",
        "XOAUTH",
        "XOAUTH2",
    }
)
_SASL_FAMILIES: Final = ("GS2-", "X-", "9798-")
#: RFC 4422 section 3.1: 1 to 20 upper-case letters, digits, hyphens and underscores.
_SASL_NAME: Final = re.compile(r"[A-Z0-9_-]{1,20}")


def _mechanisms(s: _Section, name: str, default: frozenset[str]) -> frozenset[str]:
    """SASL mechanism names, upper-cased: a misspelt one would never match, silently
    dropping a TLS requirement or deferring a mechanism's every login (review rev140
    F2)."""
    out = set()
    for index, item in enumerate(s.strings(name, tuple(sorted(default)))):
        mechanism = item.strip().upper()
        if not _SASL_NAME.fullmatch(mechanism):
            raise s.error(
                f"{name}[{index}]",
                f"{item!r} is no SASL mechanism name (RFC 4422: up to 20 letters, digits, - and _)",
            )
        if mechanism not in SASL_MECHANISMS and not mechanism.startswith(_SASL_FAMILIES):
            # Refused when it reads as a misspelling of a known one; another name may
            # be a plugin's (review rev142 F4), taken as written.
            near = difflib.get_close_matches(mechanism, sorted(SASL_MECHANISMS), n=1)
            if near:
                raise s.error(
                    f"{name}[{index}]",
                    f"unknown SASL mechanism {item!r} (did you mean {near[0]}?): not in"
                    " IANA's registry (a private one is named X-...)",
                )
        out.add(mechanism)
    return frozenset(out)


def _login_domain(s: _Section, site: SiteConfig) -> str:
    # Logins without "@" are taken to be in this domain, and a login's domain must be
    # one of ours: any other value would refuse every such login (domain_auth_error).
    text = s.string("default_login_domain", "").strip()
    if not text:
        return ""
    domain = canonical_domain(text)
    if not _dns_name(domain):
        raise s.error("default_login_domain", f"not a domain name: {text!r}")
    if not site.is_local(domain):
        raise s.error(
            "default_login_domain",
            f"{text!r} is not in site.local_domains: every login without @ would be refused",
        )
    return domain


def _skip_list(
    s: _Section, name: str, known: frozenset[str] | None, default: tuple[str, ...] = ()
) -> frozenset[str]:
    """Check names and groups ("all-content", "all-dns") expanded to check names."""
    out: set[str] = set()
    for item in s.strings(name, default):
        if item == "all-content":
            out |= CONTENT_GROUP
        elif item == "all-dns":
            out |= DNS_CHECKS
        elif item in NEVER_EXEMPT:
            raise s.error(
                name,
                f"{item!r} can never be skipped: exemptions never grant relay nor vouch for"
                " a sender's login (trusted_networks does that)",
            )
        elif known is not None and item not in known:
            raise s.error(name, f"{_unknown_check(item, known)} (or group all-content, all-dns)")
        else:
            out.add(item)
    return frozenset(out)


def _ip_list(s: _Section, ips: str, files: str) -> IpSet:
    """Networks written in the config (``ips``) and in list files (``files``). One
    written here wider than trusted_networks takes (:func:`_too_wide`: larger than a /8
    or a /16, all of fc00::/7 allowed, a range that embeds every IPv4 host) is refused,
    here or in a file: an exemption for much of the Internet, 0.0.0.0/0 for everyone
    (review rev224 L8, rev225 M2)."""
    written = [(item, f"{s.key(ips)}:0") for item in s.strings(ips)]
    paths = [s.path(f"{files}[{i}]", p) for i, p in enumerate(s.strings(files))]
    try:
        # In the files too (review rev225 L1): a partner list with 0.0.0.0/0 in it.
        return load_ip_lists(paths, written, _too_wide_here)
    except IpListError as exc:
        key = ips if exc.source == s.key(ips) else files
        where = "" if exc.source == s.key(ips) else f"{exc.source}:{exc.line}: "
        raise s.error(key, f"{where}{exc.problem}") from None


def _too_wide_here(network: IPNetwork) -> str:
    if not _too_wide(network):
        return ""
    return (
        "is wider than site.trusted_networks takes: an exemption for much of the Internet;"
        " list the networks you mean"
    )


def _table_domain(s: _Section, name: str) -> str:
    domain = name.strip().rstrip(".").lower()
    if domain.startswith(".") or "*" in domain:
        # Looked up by the recipient's exact domain: a Postfix-style ".example.com"
        # would load and never apply.
        raise ConfigError(
            s.file,
            s.prefix,
            "a table is for one exact domain name (no leading dot, no wildcard):"
            " write one table per domain",
        )
    return domain


def _host_suffixes(s: _Section, name: str) -> tuple[str, ...]:
    for item in s.strings(name):
        text = item.strip()
        if text.startswith("."):
            raise s.error(
                name,
                f"{item!r}: write {text.lstrip('.')!r}; a suffix matches the name itself"
                " and every name under it",
            )
        _check_pattern(s, name, item, "x", text)
    return tuple(sorted(s.domains(name)))


def _address_patterns(
    s: _Section, name: str, ours: Callable[[str], bool] = lambda _domain: False
) -> tuple[str, ...]:
    """An exemption's ``senders``/``recipients``: ``user@example.net``,
    ``@example.net`` or ``example.net``, each checked here: an entry that cannot be
    an address or a domain (a Postfix ``.example.net``, a wildcard, an empty part)
    would load and never match. ``ours``: whether a domain of one label is one of
    ours (a recipient's word that is not is meant as a local part)."""
    return tuple(_address_pattern(s, name, item, ours).lower() for item in s.strings(name))


def _address_pattern(
    s: _Section, name: str, item: str, ours: Callable[[str], bool] = lambda _domain: False
) -> str:
    """One ``user@example.net``, ``@example.net`` or ``example.net`` entry, stripped."""
    text = item.strip()
    local, at, domain = text.rpartition("@")
    if (at and local == "*") or text.startswith("*."):
        bare = text.rpartition("@")[2].removeprefix("*.")
        raise s.error(
            name,
            f"{item!r}: no wildcards; '@{bare}' is that domain,"
            f" {bare!r} the domain and its subdomains",
        )
    if not at and text.startswith("."):
        bare = text.lstrip(".")
        raise s.error(
            name,
            f"{item!r}: write {bare!r} (the domain and its subdomains) or"
            f" '@{bare}' (that domain only)",
        )
    if "*" in text:
        # Legal in a local part, but whoever writes bounce-*@ means a wildcard.
        hint = "; write a /pattern/" if name.startswith("sender_deny") else ""
        raise s.error(name, f"{item!r}: '*' is no wildcard here{hint}")
    _check_pattern(s, name, item, local if at and local else "x", domain if at else text)
    word = (text if not at else domain if not local else "").rstrip(".")
    if (
        word
        and "." not in word
        and not word.startswith("[")
        and (word.lower() in _ROLE_WORDS or (name == "recipients" and not at and not ours(word)))
    ):
        # A word without a dot is a domain here, of one label: a top-level domain,
        # which a sender's may be (sender_deny = ["top"] refuses every *.top sender,
        # review rev154 F2), but no recipient's unless one of ours. A role's name, or
        # a recipient's word, means a local part (review rev140 F6: recipients =
        # ["postmaster"] never matched; rev151 F6: nor did "alice" or "@postmaster").
        raise s.error(
            name,
            f"{item!r} is read as a domain of one label; write '{word}@example.com' for"
            " that address of a domain (the built-in exemption covers postmaster@ of"
            " every local domain: policy.postmaster_skip)",
        )
    return text


#: Local parts every site has (RFC 2142), which ``@word`` cannot mean as a domain.
_ROLE_WORDS: Final = frozenset(
    {"postmaster", "mailer-daemon", "abuse", "hostmaster", "webmaster", "noc", "root"}
)


def _check_pattern(s: _Section, name: str, item: str, local: str, domain: str) -> None:
    # As they are compared: canonical (full-width dots and letters, U-labels), and
    # with the underscores DNS names may hold (PTR names do) that the SMTP grammar's
    # check would refuse.
    if not domain.startswith("["):
        domain = canonical_domain(domain).replace("_", "x")
    try:
        parse_path(f"<{local}@{domain}>", smtputf8=True)
    except AddressError as exc:
        raise s.error(name, f"not an address, @domain or domain: {item!r} ({exc})") from None


#: Checks decided when the client connects (an exemption by sender or recipient never
#: applies to them).
_DECIDED_AT_CONNECT: Final = frozenset({"session_limit"})


def _exemption(
    s: _Section, index: int, known: frozenset[str] | None, site: SiteConfig
) -> Exemption:
    out = Exemption(
        name=s.string("name", "") or f"policy.exempt[{index}]",
        skip=_skip_list(s, "skip", known),
        networks=_ip_list(s, "ips", "ip_files"),
        host_suffixes=_host_suffixes(s, "host_suffixes"),
        senders=_address_patterns(s, "senders"),
        spf_pass=s.boolean("spf_pass", False),
        recipients=_address_patterns(s, "recipients", site.is_local),
    )
    s.done()
    if not out.skip:
        raise s.error("skip", "names no check: an exemption must skip something")
    at_connect = sorted(out.skip & _DECIDED_AT_CONNECT)
    if at_connect and (out.senders or out.recipients):
        # Decided before any sender or recipient is known (review rev110 F4).
        raise s.error(
            "skip",
            f"{', '.join(at_connect)} is decided at connect, before senders or"
            " recipients are known: only an exemption by ips, ip_files or host_suffixes"
            " alone can skip it",
        )
    if out.spf_pass and not out.senders:
        raise s.error("spf_pass", "only means something together with senders")
    if out.senders and not out.matches_client and not out.spf_pass:
        raise s.error(
            "senders",
            "a sender alone is forgeable (anyone can write any MAIL FROM): add ips,"
            " ip_files or host_suffixes, or spf_pass = true",
        )
    if not (out.matches_client or out.senders or out.recipients):
        raise s.error(
            "skip",
            "the exemption matches nothing: give ips, ip_files,"
            " host_suffixes, senders or recipients",
        )
    return out


def _directory(s: _Section) -> DirectoryConfig:
    d = DirectoryConfig()
    out = DirectoryConfig(
        backend=cast(Literal["sqlite", "none"], s.choice("backend", d.backend, ("sqlite", "none"))),
        path=s.path("path", str(d.path)),
        timeout=s.seconds("timeout", d.timeout, minimum=0.01, maximum=MAX_STEP_WAIT),
        cache_ttl=s.number("cache_ttl", d.cache_ttl, minimum=0, maximum=MAX_TTL),
    )
    s.done()
    return out


def _delimiter(s: _Section, default: str) -> str:
    value = s.string("recipient_delimiter", default)
    bad = sorted({c for c in value if not (c.isascii() and c.isprintable()) or c in ' @"\\'})
    if bad:
        raise s.error(
            "recipient_delimiter",
            f"{''.join(bad)!r} cannot delimit an extension (a space, @, quote, backslash,"
            " control or non-ASCII character)",
        )
    if len(set(value)) != len(value):
        raise s.error("recipient_delimiter", f"{value!r} names a character twice")
    return value


def _state(s: _Section) -> StateConfig:
    d = StateConfig()
    out = StateConfig(
        backend=cast(
            Literal["embedded", "redis"], s.choice("backend", d.backend, ("embedded", "redis"))
        ),
        path=s.path("path", str(d.path)),
        timeout=s.seconds("timeout", d.timeout, minimum=0.01, maximum=MAX_STEP_WAIT),
        cache_ttl=s.number("cache_ttl", d.cache_ttl, minimum=0, maximum=MAX_TTL),
        redis_url=_redis_url(s, "redis_url", d.redis_url),
        redis_prefix=s.string("redis_prefix", d.redis_prefix),
        on_redis_error=cast(
            Literal["error", "local"],
            s.choice("on_redis_error", d.on_redis_error, ("error", "local")),
        ),
        redis_blacklist_required=s.boolean("redis_blacklist_required", d.redis_blacklist_required),
    )
    s.done()
    if not _REDIS_PREFIX.fullmatch(out.redis_prefix):
        # It names keys (and an ACL's key pattern, where * ? [ are globs) and a file
        # beside state.path: a "/" in it was a traceback at the start (review rev156 F4).
        raise s.error(
            "redis_prefix",
            f"{out.redis_prefix!r}: 1 to 64 letters, digits and . _ : - (it names Redis keys"
            " and a file beside state.path)",
        )
    return out


_REDIS_PREFIX: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _redis_url(s: _Section, name: str, default: str) -> str:
    """Checked with redis-py's own URL parser and what it lets through (port 0, a
    database that is not a number), so a bad URL stops start-up, not the first message."""
    value = s.string(name, default)
    try:
        parse_redis_url(value)
    except EndpointError as exc:
        raise s.error(name, str(exc)) from None
    return value


def _unknown_check(name: str, known: frozenset[str]) -> str:
    """ "unknown check", with the likeliest one meant (review rev156: [checks.hleo]
    said no more, where a key's typo gets a suggestion)."""
    near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.7)
    return f"unknown check {name!r}" + (f" (did you mean {near[0]!r}?)" if near else "")


def _checks(
    root: _Section, known: frozenset[str] | None
) -> tuple[dict[str, CheckSettings], dict[str, _Section]]:
    """The ``[checks.NAME]`` tables, and the sections they came from (for errors)."""
    out: dict[str, CheckSettings] = {}
    sections = root.tables("checks")
    for name, s in sections.items():
        if known is not None and name not in known:
            raise ConfigError(root.file, f"checks.{name}", _unknown_check(name, known))
        d = CHECK_DEFAULTS.get(name, _DEFAULT_CHECK)
        out[name] = CheckSettings(
            mode=cast(Mode, s.choice("mode", d.mode, ("enforce", "report", "off"))),
            on_temp_error=cast(
                TempPolicy, s.choice("on_temp_error", d.on_temp_error, ("tempfail", "pass"))
            ),
        )
        s.done()
    return out, sections


def _dns(s: _Section) -> DnsConfig:
    d = DnsConfig()
    servers = s.strings("nameservers", d.nameservers)
    for item in servers:
        if item == "system" and len(servers) == 1:
            continue
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise s.error(
                "nameservers", f"not an IP address (or the single word 'system'): {item!r}"
            ) from None
    port = s.integer("port", d.port, minimum=1)
    if port > 65535:
        raise s.error("port", "must be at most 65535")
    timeout = s.seconds("timeout", d.timeout, minimum=0.01, maximum=MAX_STEP_WAIT)
    deadline = s.seconds("stage_deadline", d.stage_deadline, minimum=0.01, maximum=MAX_STEP_WAIT)
    failure_ttl = s.integer("failure_ttl", d.failure_ttl, minimum=1)
    if failure_ttl > 300:
        raise s.error("failure_ttl", "must be at most 300 (RFC 9520 §3.2)")
    out = DnsConfig(
        nameservers=servers,
        port=port,
        timeout=timeout,
        stage_deadline=deadline,
        cache_size=s.integer("cache_size", d.cache_size, minimum=1, maximum=MAX_CACHE_SIZE),
        max_ttl=s.integer("max_ttl", d.max_ttl, maximum=MAX_TTL),
        negative_ttl=s.integer("negative_ttl", d.negative_ttl, maximum=MAX_TTL),
        failure_ttl=failure_ttl,
        verdict_ttl=s.integer("verdict_ttl", d.verdict_ttl, minimum=0, maximum=MAX_TTL),
    )
    s.done()
    return out


_ANSWER_NET = ipaddress.IPv4Network("127.0.0.0/8")
#: Answers by which lists say they refused the query (Spamhaus: 127.255.255.252 a bad
#: key, .254 a public resolver, .255 too many queries), never a listing.
DNSBL_ERROR_CODES = (
    ipaddress.IPv4Network("127.0.0.1/32"),
    ipaddress.IPv4Network("127.255.255.0/24"),
)


def _dnsbl(s: _Section) -> DnsblConfig:
    zones: list[DnsblZone] = []
    seen: set[str] = set()
    for z in s.table_list("zones"):
        name = z.string("name", "").strip().rstrip(".").lower()
        if not _dns_name(name, allow_utf8=False):
            raise z.error("name", f"not a DNS zone name: {name!r}")
        if name in seen:
            raise z.error("name", f"zone {name} is listed twice")
        seen.add(name)
        answers = tuple(_answer_range(z, item) for item in z.strings("answers"))
        bitmask: int | None = None
        if "bitmask" in z.data:
            bitmask = z.integer("bitmask", 0, minimum=1)
            if bitmask > 0xFFFFFF:
                raise z.error("bitmask", "must fit in the low 24 bits of the answer")
            if answers:
                raise z.error("bitmask", "give either answers or bitmask, not both")
        action = cast(DnsblAction, z.choice("action", "reject", ("reject", "score")))
        weight = z.number("weight", 0.0, minimum=-1e9)
        if action == "score" and weight == 0:
            raise z.error("weight", 'action = "score" needs a non-zero weight')
        if action == "reject" and "weight" in z.data:
            raise z.error("weight", 'only a zone with action = "score" has a weight')
        zones.append(
            DnsblZone(
                name=name,
                kind=cast(DnsblKind, z.choice("kind", "rbl", ("rbl", "openrelay"))),
                answers=answers,
                bitmask=bitmask,
                action=action,
                weight=weight,
                ipv6=z.boolean("ipv6", True),
            )
        )
        z.done()
    local = []
    for item in s.table_list("local"):
        path = item.path("file", "")
        try:
            entries = load_ip_lists([path])
        except IpListError as exc:
            raise item.error("file", f"{exc.source}:{exc.line}: {exc.problem}") from None
        kind = cast(DnsblKind, item.choice("kind", "rbl", ("rbl", "openrelay")))
        local.append(LocalList(file=path, kind=kind, entries=entries))
        item.done()
    s.done()
    return DnsblConfig(zones=tuple(zones), local=tuple(local))


def _answer_range(s: _Section, item: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """``"127.0.0.2"``, ``"127.0.0.2-127.0.0.11"`` or ``"127.0.0.0/24"``."""
    try:
        if "/" in item:
            net = ipaddress.IPv4Network(item.strip(), strict=False)
            low, high = net.network_address, net.broadcast_address
        elif "-" in item:
            first, _, last = item.partition("-")
            low, high = ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address(last.strip())
        else:
            low = high = ipaddress.IPv4Address(item.strip())
    except ValueError:
        raise s.error("answers", f"not an IPv4 address, range or network: {item!r}") from None
    if low > high:
        raise s.error("answers", f"empty range: {item!r}")
    if low not in _ANSWER_NET or high not in _ANSWER_NET:
        raise s.error("answers", f"DNSBL answers lie in 127.0.0.0/8 (RFC 5782 §2.1): {item!r}")
    if any(low in net and high in net for net in DNSBL_ERROR_CODES):
        # Accepted here and then ignored by the check, the zone would never list anyone.
        raise s.error(
            "answers",
            f"{item!r}: 127.0.0.1 and 127.255.255.0/24 are the lists' 'query refused' codes,"
            " never a listing; smtpguard ignores them",
        )
    return low, high


def _smtpport(s: _Section) -> SmtpportConfig:
    d = SmtpportConfig()
    raw = s.string("generic_patterns", str(default_rules_dir() / "generic_ptr.toml"))
    generic = _generic_patterns(s.data_file("generic_patterns", raw)) if raw else None
    port = s.integer("connect_back_port", d.connect_back_port, minimum=1)
    if port > 65535:
        raise s.error("connect_back_port", "must be at most 65535")
    out = SmtpportConfig(
        no_ptr=_reason_mode(s, "no_ptr", d.no_ptr),
        fcrdns=_reason_mode(s, "fcrdns", d.fcrdns),
        generic_mode=_reason_mode(s, "generic", d.generic_mode),
        generic=generic,
        connect_back=_reason_mode(s, "connect_back", d.connect_back),
        connect_back_port=port,
        connect_back_timeout=s.seconds(
            "connect_back_timeout", d.connect_back_timeout, minimum=0.01, maximum=MAX_STEP_WAIT
        ),
        connect_back_cache_ttl=s.integer(
            "connect_back_cache_ttl", d.connect_back_cache_ttl, maximum=MAX_TTL
        ),
    )
    s.done()
    return out


def _reason_mode(s: _Section, name: str, default: Mode) -> Mode:
    """A mode; ``true``/``false`` still mean "enforce"/"off" (the keys were switches)."""
    s.seen.add(name)
    value = s.data.get(name, default)
    if isinstance(value, bool):
        return "enforce" if value else "off"
    if value not in ("enforce", "report", "off"):
        raise s.error(name, f"must be one of enforce, report, off (or true, false); got {value!r}")
    return cast(Mode, value)


def _generic_patterns(path: Path) -> GenericPatterns:
    """Load the generic-PTR pattern file; errors name that file and its key."""
    root = _Section(path, "", read_toml(path))
    patterns = []
    for p in root.table_list("pattern"):
        name = p.string("name", "")
        if not name:
            raise p.error("name", "must not be empty")
        patterns.append((name, _regex(p, "regex", p.string("regex", ""))))
        p.done()
    allow = tuple(_regex(root, f"allow[{i}]", item) for i, item in enumerate(root.strings("allow")))
    out = GenericPatterns(
        file=path,
        patterns=tuple(patterns),
        allow=allow,
        embedded_ip=root.boolean("embedded_ip", True),
    )
    root.done()
    return out


def is_deny_pattern(entry: str) -> bool:
    """A ``policy.sender_deny`` entry written ``/pattern/``."""
    return len(entry) > 2 and entry.startswith("/") and entry.endswith("/")


def _regex(
    s: _Section,
    key: str,
    text: str,
    *,
    ignore_case: bool = True,
    probes: tuple[str, ...] = (),
) -> Pattern:
    """An operator's pattern, compiled by the one matcher (RE2, :mod:`smtpguard.patterns`).
    One that matches every one of ``probes`` (unrelated texts of the kind it is
    matched against) matches about everything and is refused (review rev224 L1:
    ``/[0-9]*@/``, meant with ``+``, denied every sender)."""
    if not text:
        raise s.error(key, "must not be empty")
    try:
        compiled = compile_pattern(text, ignore_case=ignore_case)
    except PatternError as exc:
        raise s.error(key, f"not a valid RE2 pattern {text!r}: {exc} (docs/patterns.md)") from None
    if compiled.search("") and any(compiled.search(probe) for probe in _ORDINARY_TEXT):
        # /(spam)?/ is found in every text: it would deny every sender, or make every
        # PTR name generic (or, as an allow entry, none).
        raise s.error(
            key, f"{text!r} matches the empty string and ordinary names: so about everything"
        )
    if probes and all(compiled.search(probe) for probe in probes):
        raise s.error(key, f"{text!r} matches {', '.join(probes)}: so about everything of its kind")
    return compiled


#: A pattern that matches the empty string and one of these matches about everything
#: (/(spam)?/, /^[a-z0-9.@_-]*$/); one anchored to a narrow class (^[0-9.-]*$) does not.
_ORDINARY_TEXT: Final = ("mail.example.com", "alice@example.org")
#: Senders with nothing in common but being addresses: a sender_deny pattern found in
#: all of them denies every sender.
_UNRELATED_ADDRESSES: Final = ("alice@example.org", "zq7@xw9.invalid", "b@c.de")


def _spf(s: _Section) -> SpfConfig:
    out = SpfConfig(reject_softfail=s.boolean("reject_softfail", SpfConfig().reject_softfail))
    s.done()
    return out


def _line_syntax(s: _Section) -> LineSyntaxConfig:
    out = LineSyntaxConfig(
        check_trusted=s.boolean("check_trusted", LineSyntaxConfig().check_trusted)
    )
    s.done()
    return out


def _require_relay_enforced(
    root: _Section, milter: MilterConfig, site: SiteConfig, checks: Mapping[str, CheckSettings]
) -> None:
    """With ``relay_control = "milter"`` the MTA lets every recipient through to
    smtpguard: a relay check that only reports would make an open relay."""
    if site.relay_control != "milter":
        return
    # Review rev119 F1: the advice named Postfix alone; a Sendmail built with
    # FEATURE(promiscuous_relay) that followed it relayed for anyone.
    why = (
        'with site.relay_control = "milter" smtpguard alone refuses relaying, so it'
        " must enforce; once the MTA refuses relaying itself (Postfix: run `smtpguard"
        " postfix-config` and reload it, main.cf still passes every recipient;"
        " Sendmail: rebuild sendmail.cf without FEATURE(promiscuous_relay)), switch to"
        ' relay_control = "postfix" to'
    )
    if milter.dry_run:
        raise ConfigError(root.file, "milter.dry_run", f"{why} roll out in dry run")
    relay = checks.get("relay") or CHECK_DEFAULTS.get("relay", _DEFAULT_CHECK)
    if relay.mode != "enforce":
        raise ConfigError(
            root.file, "checks.relay.mode", f"{why} set the relay check to {relay.mode!r}"
        )


def _require_scoring(
    root: _Section, dnsbl: DnsblConfig, checks: Mapping[str, CheckSettings]
) -> None:
    """A scoring zone adds to the anti-spam score: without that check it would do nothing."""
    antispam = checks.get("antispam") or CHECK_DEFAULTS["antispam"]
    for index, zone in enumerate(dnsbl.zones):
        if zone.action != "score":
            continue
        if antispam.mode == "off":
            raise ConfigError(
                root.file,
                f"dnsbl.zones[{index}].action",
                'a "score" zone adds to the antispam score, but checks.antispam.mode is "off"',
            )
        # Its lookups are the zone's kind's check's (review rev129 F4: never asked).
        if (checks.get(zone.kind) or CHECK_DEFAULTS.get(zone.kind, _DEFAULT_CHECK)).mode == "off":
            raise ConfigError(
                root.file,
                f"dnsbl.zones[{index}].action",
                f'a "score" zone is looked up by the {zone.kind} check, but'
                f' checks.{zone.kind}.mode is "off": it would never be asked',
            )


def _require_one_policy_per_transaction(
    root: _Section,
    domains: Mapping[str, DomainPolicy],
    checks: Mapping[str, CheckSettings],
    policy: PolicyConfig,
) -> None:
    """With ``[domain."X"]`` tables, ``rcpt_limit`` is what keeps a stranger's
    transaction to one domain's content policy; off, report-only or exempted, a
    sender would choose the policy of the whole message by naming a lax domain's
    recipient first (in a dry run, where it only reports, and for the site's own
    submission, which it does not split, the tables are combined at their strictest
    instead: :meth:`Config.combined_policy`)."""
    if not domains:
        return
    why = "it keeps each transaction to one domain policy while [domain] tables exist"
    if (checks.get("rcpt_limit") or CHECK_DEFAULTS.get("rcpt_limit", _DEFAULT_CHECK)).mode != (
        "enforce"
    ):
        raise ConfigError(root.file, "checks.rcpt_limit.mode", f'must be "enforce": {why}')
    for index, ex in enumerate(policy.exempt):
        if "rcpt_limit" in ex.skip:
            raise ConfigError(
                root.file, f"policy.exempt[{index}].skip", f"must not skip rcpt_limit: {why}"
            )
    if "rcpt_limit" in policy.postmaster_skip:
        raise ConfigError(root.file, "policy.postmaster_skip", f"must not skip rcpt_limit: {why}")


#: Fields smtpguard writes under names of their own: none of the configurable ones may
#: take one of these names.
_WRITTEN_FIELDS: Final = (AUTH_RESULTS, STATUS_FIELD, REPORT_FIELD)


#: Fields a message has of its own (RFC 5322 §3.6, MIME's, the delivery's): no field
#: smtpguard adds may take one of their names.
_MESSAGE_FIELDS: Final = (
    "Date",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Subject",
    "Comments",
    "Keywords",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Bcc",
    "Resent-Message-ID",
    "Return-Path",
    "Received",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "Content-ID",
    "Content-Description",
    "Delivered-To",
    "DKIM-Signature",
    "ARC-Seal",
    "ARC-Message-Signature",
    "ARC-Authentication-Results",
)


def _require_distinct_fields(
    root: _Section, milter: MilterConfig, antispam: AntispamConfig, content: ContentConfig
) -> None:
    """The header fields smtpguard writes (and removes as forged) name different
    things: under one name the reader takes the first (review rev69 F4: a report
    header named X-Spam-Status made two of them; named Authentication-Results it
    wrote an invalid one)."""
    named = [
        ("milter.report_header", milter.report_header),
        ("antispam.flag_header", antispam.flag_header),
        ("antispam.score_header", antispam.score_header),
        ("content.loop_marker", content.loop_marker),
    ]
    taken = {name.lower(): f"a field smtpguard writes ({name})" for name in _WRITTEN_FIELDS}
    # Review rev156 F7: loop_marker = "From" gave every local message a second From:
    # (RFC 5322 §3.6 allows one), which breaks DKIM and DMARC.
    for name in _MESSAGE_FIELDS:
        taken.setdefault(name.lower(), f"a message field of RFC 5322 or MIME ({name})")
    for key, name in named:
        if not name:
            continue
        if name.lower() in taken:
            raise ConfigError(root.file, key, f"{name!r} is already {taken[name.lower()]}")
        taken[name.lower()] = f"the name of {key}"


def _require_backend(
    root: _Section, checks: Mapping[str, CheckSettings], virus: VirusConfig
) -> None:
    """A virus check written in ``[checks.virus]`` to enforce or report, with no
    scanner to ask, is an error rather than a check that passes every virus (review
    rev224 L3: EICAR accepted, the only trace an INFO line at start)."""
    written = checks.get("virus")
    if written is not None and written.mode != "off" and virus.backend == "none":
        raise ConfigError(
            root.file,
            "checks.virus.mode",
            '[virus] backend = "none": nothing scans; set [virus] backend (clamd or'
            ' command), or mode = "off"',
        )


def _require_resolver(
    root: _Section,
    dns: DnsConfig,
    dnsbl: DnsblConfig,
    explicit: Mapping[str, _Section],
    policy: PolicyConfig,
) -> None:
    """A DNS check the operator asked for, with no resolver to run it, is an error
    rather than a check that silently never runs; so is an exemption by SPF (review
    rev153 F3: spf_pass never held without one)."""
    if dns.enabled:
        return
    if dnsbl.zones:
        raise ConfigError(root.file, "dnsbl.zones", "DNSBL zones need [dns] nameservers")
    for index, ex in enumerate(policy.exempt):
        if ex.spf_pass:
            raise ConfigError(
                root.file,
                f"policy.exempt[{index}].spf_pass",
                "needs [dns] nameservers (the sender's SPF record is looked up)",
            )
    for name, section in explicit.items():
        settings = CHECK_DEFAULTS.get(name)
        mode = section.data.get("mode", settings.mode if settings else "off")
        if any(lst.kind == name for lst in dnsbl.local):
            continue
        if name in DNS_CHECKS and mode != "off":
            raise ConfigError(
                root.file, f"checks.{name}.mode", f"check {name} needs [dns] nameservers"
            )
