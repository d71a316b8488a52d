"""A real DNS server for the tests: unbound on loopback, serving local test zones.

Started once per test session (``unbound`` fixture in tests/conftest.py) on a free
port, with no upstream at all: ``local-zone: "." static`` answers every name it does
not hold with an instant NXDOMAIN instead of asking root servers. Readiness is polled
with a real query. SERVFAIL comes from zones delegated (``stub-zone``) to 127.0.0.1,
which unbound refuses to ask (``do-not-query-localhost`` stays at its default), so it
answers SERVFAIL at once.

The names below describe the data; tests use them instead of repeating literals.
Addresses are documentation ranges (RFC 5737, RFC 3849) and 127.0.0.0/8; the milter
protocol carries them as data, nothing is ever sent to them except the optional
connect-back to 127.0.0.x.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver

from .daemons import stop_process

UNBOUND = "/usr/sbin/unbound"
READY_TIMEOUT = 15.0
POLL_INTERVAL = 0.02

# --- clients (PTR, FCrDNS, DNSBL listings) -----------------------------------------

GOOD_IP = "198.51.100.10"  # PTR mx.good.test, confirmed; SPF pass for good.test
GOOD_IP6 = "2001:db8::10"  # PTR mx6.good.test, confirmed by AAAA
NO_PTR_IP = "198.51.100.20"
UNCONFIRMED_IP = "198.51.100.21"  # PTR mx.liar.test, whose A is another address
GENERIC_IP = "198.51.100.22"  # PTR 198-51-100-22.dyn.isp.test (confirmed)
GENERIC_DSL_IP = "198.51.100.23"  # PTR adsl-pool-23.isp.test (confirmed)
PTR_SERVFAIL_IP = "198.51.100.30"  # its reverse zone answers SERVFAIL
#: PTR mx40.good.test (confirmed) and mail.broken.test (its A answers SERVFAIL).
TWO_PTR_IP = "198.51.100.40"
RBL_SERVFAIL_IP = "198.51.100.31"  # its rbl.test name answers SERVFAIL
RBL_TEST_IP = "127.0.0.2"  # RFC 5782 §5: the test entry every list carries
RBL_IP = "198.51.100.66"  # rbl.test: 127.0.0.4 with a TXT reason
RBL_IP6 = "2001:db8::66"  # rbl.test in nibble form
RBL_OUT_OF_RANGE_IP = "198.51.100.67"  # rbl.test answers 127.0.0.20: not an accepted code
RBL_BLOCKED_IP = "198.51.100.68"  # rbl.test answers 127.255.255.254 ("open resolver")
RBL_WILDCARD_IP = "198.51.100.69"  # rbl.test answers 203.0.113.1 (outside 127/8)
RELAY_IP = "198.51.100.77"  # relays.test (kind openrelay)
SCORE_IP = "198.51.100.88"  # score.test and score2.test (for action score)
SCORE_ONE_IP = "198.51.100.89"  # score.test only
PROBE_OPEN_IP = "127.0.0.5"  # PTR mx5.good.test; connect-back tests listen here
PROBE_CLOSED_IP = "127.0.0.6"  # PTR mx6.probe.test; nothing listens

RBL_TXT = "listed for testing, see https://rbl.test/lookup"
RELAY_TXT = "open relay, see https://relays.test/"

#: The two lists above as ``[[dnsbl.zones]]`` entries of a config: rbl.test accepts the
#: codes its listings use (RBL_OUT_OF_RANGE_IP's answer is outside them).
RBL_ZONE: dict[str, Any] = {"name": "rbl.test", "kind": "rbl", "answers": ["127.0.0.2-127.0.0.11"]}
#: A dead list that answers 127.0.0.2 for every name, its test point 127.0.0.1 too
#: (RFC 5782 §5: it must not), as retired lists have done.
LISTS_ALL_ZONE: dict[str, Any] = {"name": "listsall.test", "kind": "rbl"}
RELAY_ZONE: dict[str, Any] = {"name": "relays.test", "kind": "openrelay"}
#: One list of each kind, for ``{"dnsbl": {"zones": DNSBL_ZONES}}``.
DNSBL_ZONES = (RBL_ZONE, RELAY_ZONE)

# --- domains (MX, SPF) --------------------------------------------------------------

GOOD_DOMAIN = "good.test"  # MX; SPF pass for 198.51.100.0/25 and 2001:db8::/64
A_ONLY_DOMAIN = "aonly.test"  # no MX, an A record (implicit MX)
AAAA_ONLY_DOMAIN = "aaaaonly.test"
NULL_MX_DOMAIN = "nullmx.test"  # MX 0 . (RFC 7505)
NO_MAIL_DOMAIN = "nomail.test"  # exists (TXT), no MX/A/AAAA
NX_DOMAIN = "nx.test"
SERVFAIL_DOMAIN = "sub.broken.test"
SPF_FAIL_DOMAIN = "spf-fail.test"  # -all for 192.0.2.0/24 only
#: Under an IDN top-level domain (the IANA test TLD испытание): "v=spf1 a -all" with its
#: A record 192.0.2.10, so every client here fails it, in either spelling.
IDN_SPF_DOMAIN = "пример.испытание"
IDN_SPF_A_LABELS = "xn--e1afmkfd.xn--80akhbyknj4f"
SPF_SOFTFAIL_DOMAIN = "spf-softfail.test"
SPF_PERMERROR_DOMAIN = "spf-permerror.test"  # unknown mechanism
SPF_TEMPERROR_DOMAIN = "spf-temperror.test"  # include: of a SERVFAIL zone
SPF_FAIL_HELO = "relay.spf-fail.test"  # HELO identity with "v=spf1 -all"
UNRESOLVABLE_HELO = "nohost.good.test"
#: A TXT record over 1232 octets: the UDP answer is truncated, TCP has it all.
BIG_TXT_NAME = "big.good.test"
BIG_TXT = tuple(f"{i}" + "x" * 249 for i in range(6))
SERVFAIL_HELO = "mail.broken.test"
#: Names with many A records: past dnswire.MAX_RECORDS (300, over TCP) and under it.
MANY_RECORDS_NAME = "many.good.test"
SOME_RECORDS_NAME = "some.good.test"
#: "v=spf1 a:many.good.test -all": an SPF term whose answer is too large to read.
SPF_OVERSIZED_DOMAIN = "spf-many.test"

SOA = "ns.test. hostmaster.test. 1 3600 600 86400 60"

LOCAL_DATA = [
    "40.100.51.198.in-addr.arpa. PTR mx40.good.test.",
    "40.100.51.198.in-addr.arpa. PTR mail.broken.test.",
    f"mx40.good.test. A {TWO_PTR_IP}",
    # clients
    "10.100.51.198.in-addr.arpa. PTR mx.good.test.",
    "mx.good.test. A 198.51.100.10",
    "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. PTR mx6.good.test.",
    "mx6.good.test. AAAA 2001:db8::10",
    "21.100.51.198.in-addr.arpa. PTR mx.liar.test.",
    "mx.liar.test. A 198.51.100.99",
    "22.100.51.198.in-addr.arpa. PTR 198-51-100-22.dyn.isp.test.",
    "198-51-100-22.dyn.isp.test. A 198.51.100.22",
    "23.100.51.198.in-addr.arpa. PTR adsl-pool-23.isp.test.",
    "adsl-pool-23.isp.test. A 198.51.100.23",
    "1.0.0.127.in-addr.arpa. PTR localhost.",
    "5.0.0.127.in-addr.arpa. PTR mx5.good.test.",
    "mx5.good.test. A 127.0.0.5",
    "6.0.0.127.in-addr.arpa. PTR mx6.probe.test.",
    "mx6.probe.test. A 127.0.0.6",
    # listed or scored clients that otherwise look like mail servers
    *(
        f"{n}.100.51.198.in-addr.arpa. PTR mx{n}.good.test."
        for n in (31, 66, 67, 68, 69, 77, 88, 89)
    ),
    *(f"mx{n}.good.test. A 198.51.100.{n}" for n in (31, 66, 67, 68, 69, 77, 88, 89)),
    # DNSBL zones
    "2.0.0.127.rbl.test. A 127.0.0.2",
    f'2.0.0.127.rbl.test. TXT "{RBL_TXT}"',
    "66.100.51.198.rbl.test. A 127.0.0.4",
    f'66.100.51.198.rbl.test. TXT "{RBL_TXT}"',
    "6.6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.rbl.test. A 127.0.0.2",
    f'6.6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.rbl.test. TXT "{RBL_TXT}"',
    "67.100.51.198.rbl.test. A 127.0.0.20",
    "68.100.51.198.rbl.test. A 127.255.255.254",
    "69.100.51.198.rbl.test. A 203.0.113.1",
    "2.0.0.127.relays.test. A 127.0.0.2",
    "77.100.51.198.relays.test. A 127.0.0.2",
    f'77.100.51.198.relays.test. TXT "{RELAY_TXT}"',
    "88.100.51.198.score.test. A 127.0.0.3",
    "88.100.51.198.score2.test. A 127.0.0.2",
    "89.100.51.198.score.test. A 127.0.0.3",
    # PTR_SERVFAIL_IP: scored to the reject threshold, and its own name unknowable
    "30.100.51.198.score.test. A 127.0.0.3",
    "30.100.51.198.score2.test. A 127.0.0.2",
    # sender domains
    "good.test. MX 10 mx.good.test.",
    'good.test. TXT "v=spf1 ip4:198.51.100.0/25 ip6:2001:db8::/64 -all"',
    'mx.good.test. TXT "v=spf1 a -all"',
    "aonly.test. A 198.51.100.11",
    "aaaaonly.test. AAAA 2001:db8::11",
    "nullmx.test. MX 0 .",
    'nomail.test. TXT "no mail here"',
    "spf-fail.test. MX 10 mx.good.test.",
    'spf-fail.test. TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    "relay.spf-fail.test. A 198.51.100.10",
    'relay.spf-fail.test. TXT "v=spf1 -all"',
    "spf-softfail.test. MX 10 mx.good.test.",
    'spf-softfail.test. TXT "v=spf1 ip4:192.0.2.0/24 ~all"',
    "spf-permerror.test. MX 10 mx.good.test.",
    'spf-permerror.test. TXT "v=spf1 frobnicate:x -all"',
    "spf-temperror.test. MX 10 mx.good.test.",
    'spf-temperror.test. TXT "v=spf1 include:spf.broken.test -all"',
    f'{IDN_SPF_A_LABELS}. TXT "v=spf1 a -all"',
    f"{IDN_SPF_A_LABELS}. A 192.0.2.10",
    f"{BIG_TXT_NAME}. TXT " + " ".join(f'"{part}"' for part in BIG_TXT),
    *(f"{MANY_RECORDS_NAME}. A 10.0.{i // 250}.{i % 250 + 1}" for i in range(300)),
    *(f"{SOME_RECORDS_NAME}. A 10.1.{i // 250}.{i % 250 + 1}" for i in range(150)),
    f'{SPF_OVERSIZED_DOMAIN}. TXT "v=spf1 a:{MANY_RECORDS_NAME} -all"',
]

#: Zones answered SERVFAIL: delegated to an address unbound will not ask.
SERVFAIL_ZONES = ["broken.test.", "30.100.51.198.in-addr.arpa.", "31.100.51.198.rbl.test."]
#: Zones served from LOCAL_DATA, each with an SOA so negative answers carry one.
STATIC_ZONES = [
    "test.",
    "xn--80akhbyknj4f.",
    "100.51.198.in-addr.arpa.",
    "8.b.d.0.1.0.0.2.ip6.arpa.",
    "127.in-addr.arpa.",
]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (unbound listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def config_text(directory: Path, port: int) -> str:
    lines = [
        "server:",
        "  interface: 127.0.0.1",
        f"  port: {port}",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{directory}"',
        '  pidfile: ""',
        "  do-daemonize: no",
        "  use-syslog: no",
        '  logfile: ""',
        "  verbosity: 0",
        '  module-config: "iterator"',
        "  do-ip6: no",
        "  access-control: 127.0.0.0/8 allow",
        # Everything we do not serve: instant NXDOMAIN, never a root server.
        '  local-zone: "." static',
    ]
    for zone in STATIC_ZONES:
        lines.append(f'  local-zone: "{zone}" static')
        lines.append(f'  local-data: "{zone} 300 IN SOA {SOA}"')
    # redirect: every name under it gets the zone's own records.
    lines.append('  local-zone: "listsall.test." redirect')
    lines.append('  local-data: "listsall.test. 300 IN A 127.0.0.2"')
    for zone in SERVFAIL_ZONES:
        # transparent: not answered locally, so the iterator tries the stub below.
        lines.append(f'  local-zone: "{zone}" transparent')
    for record in LOCAL_DATA:
        owner, _, rest = record.partition(" ")
        escaped = f"{owner} 300 IN {rest}".replace("'", "\\'")
        lines.append(f"  local-data: '{escaped}'")
    for zone in SERVFAIL_ZONES:
        lines += ["stub-zone:", f'  name: "{zone}"', "  stub-addr: 127.0.0.1@9"]
    lines += ["remote-control:", "  control-enable: no", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class DnsServer:
    host: str
    port: int
    log: Path

    def resolver(self, timeout: float = 1.0) -> dns.resolver.Resolver:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [self.host]
        r.port = self.port
        r.cache = None
        r.lifetime = timeout
        return r


def _ready(server: DnsServer) -> bool:
    try:
        answer = server.resolver(timeout=0.2).resolve(GOOD_DOMAIN, "MX")
    except dns.exception.DNSException:
        return False
    return answer.rrset is not None


@contextmanager
def unbound_server(directory: Path) -> Iterator[DnsServer]:
    """Run unbound until the block ends; stop exactly the process started here."""
    if shutil.which(UNBOUND) is None:
        raise RuntimeError(f"{UNBOUND} not found: apt-get install unbound")
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "unbound.conf"
    log = directory / "unbound.log"
    port = free_port()
    conf.write_text(config_text(directory, port), encoding="utf-8")
    with log.open("w") as out:
        proc = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)], stdout=out, stderr=out)
    server = DnsServer("127.0.0.1", port, log)
    try:
        end = time.monotonic() + READY_TIMEOUT
        while not _ready(server):
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("unbound did not start:\n" + log.read_text())
            time.sleep(POLL_INTERVAL)
        yield server
    finally:
        stop_process(proc)


@contextmanager
def silent_nameserver() -> Iterator[int]:
    """A UDP port where a socket is bound and never answers: every query times out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# --- loopback clients for the Sendmail end-to-end tests -----------------------------
# (Appended: tests/e2e/test_sendmail.py. Sendmail has no XCLIENT, so the milter sees
# the client's real address; these 127.0.0.x addresses are its DNS identities. Added
# to LOCAL_DATA here so that no record above changes.)

LOOP_DOMAIN = "loop.test"  # MX mx10.loop.test; SPF pass for LOOP_GOOD_IP, .7 and .8
LOOP_GOOD_IP = "127.0.0.10"  # PTR mx10.loop.test, confirmed; not listed anywhere
LOOP_RBL_IP = "127.0.0.7"  # PTR mx7.loop.test (confirmed); rbl.test: 127.0.0.4
LOOP_RELAY_IP = "127.0.0.8"  # PTR mx8.loop.test (confirmed); relays.test
LOOP_NO_PTR_IP = "127.0.0.9"  # no PTR record (NXDOMAIN); SPF pass for loop.test

LOCAL_DATA += [
    *(f"{n}.0.0.127.in-addr.arpa. PTR mx{n}.loop.test." for n in (7, 8, 10)),
    *(f"mx{n}.loop.test. A 127.0.0.{n}" for n in (7, 8, 10)),
    "7.0.0.127.rbl.test. A 127.0.0.4",
    f'7.0.0.127.rbl.test. TXT "{RBL_TXT}"',
    "8.0.0.127.relays.test. A 127.0.0.2",
    f'8.0.0.127.relays.test. TXT "{RELAY_TXT}"',
    "loop.test. MX 10 mx10.loop.test.",
    'loop.test. TXT "v=spf1 ip4:127.0.0.7 ip4:127.0.0.8 ip4:127.0.0.9 ip4:127.0.0.10 -all"',
]
