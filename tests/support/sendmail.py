"""A throwaway live Sendmail 8.17 (Debian's build) for end-to-end tests.

Debian's ``sendmail-bin`` conflicts with ``postfix``, so nothing is installed: the
packages are fetched with ``apt-get download`` (once; kept in :data:`CACHE_DIR`),
unpacked with ``dpkg -x`` into a private root and run from there
(``docs/testing.md``, "Sendmail, unpacked privately"). Traps handled here:

* the binary is setgid ``mail``, and a setgid binary ignores
  ``LD_LIBRARY_PATH``: the private copy gets ``chmod g-s``;
* Sendmail looks up its own host name before it reads the config and sleeps 60 s when
  the name has no dot: it runs under ``unshare --uts --mount`` with a dotted host name
  and a private ``/etc/hosts`` bind-mounted over the real one;
* the cf's default MSA daemon would listen on port 587 of every interface:
  ``FEATURE(no_default_msa)``;
* there is no syslog here: Sendmail's own log is lost, so ``-X`` records the SMTP
  traffic (the ``traffic.log`` of an instance) for post-mortems;
* every recipient goes to a ``deliver`` mailer, a shell script that appends the message
  to one file, so nothing leaves the machine and tests can read what was delivered;
* SMTP AUTH (:func:`sasl_dir`, ``sendmail(..., sasl=...)``): Sendmail does not pass
  its environment on, so ``SASL_CONF_PATH`` given to it has no effect (tried: libsasl2
  then used its defaults, ``/etc/sasldb2``), and libsasl2's compiled-in search path
  for ``Sendmail.conf`` starts with ``/etc/sasl2``, which need not exist (a mount needs
  an existing target). The private ``Sendmail.conf``, sasldb and plugins are
  bind-mounted over libsasl2's plugin directory instead, which is also on that search
  path and always exists (``libsasl2-modules-db``, a dependency of ``libsasl2-2``).

The milter lines of the ``.mc`` are the Sendmail block of ``README.md`` (the output of
``smtpguard sendmail-config`` for the sample config, :func:`readme_snippet`), the lines
users copy, with the test's socket path put in (:func:`with_socket`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from smtpguard.config import load_config

from .smtp import Reply, SmtpClient, wait_for_greeting

#: The README whose Sendmail block the instances are built from.
README = Path(__file__).resolve().parents[2] / "README.md"
#: The milter socket of the sample config, as that block has it.
README_SOCKET = load_config(
    Path(__file__).resolve().parents[2] / "conf" / "smtpguard.toml"
).milter.socket.partition(":")[2]
#: Where the downloaded .debs are kept between test runs.
CACHE_DIR = Path("/var/cache/smtpguard-tests/debs")
PACKAGES = (
    "sendmail-bin",
    "sendmail-base",
    "sendmail-cf",
    "m4",
    "liblockfile1",
    "libwrap0",
    # SMTP AUTH: saslpasswd2 and the PLAIN, LOGIN and sasldb plugins.
    "sasl2-bin",
    "libsasl2-modules",
    "libsasl2-modules-db",
)
#: Sendmail's $j and the host name it finds for itself (must contain a dot).
HOSTNAME = "mx.example.com"
POLL_INTERVAL = 0.02
#: Loopback client addresses with a name in the instance's hosts file (forward and
#: reverse agree); any other 127.x address has no name.
CLIENT_NAMES = {"127.0.0.2": "other.client.test", "127.0.0.3": "trusted.client.test"}


# --- packages ---------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize test processes that share the cache (concurrent pytest runs)."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cached(cache: Path, package: str) -> Path | None:
    found = sorted(cache.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def fetch_debs(cache: Path = CACHE_DIR) -> list[Path]:
    """The .deb of every package in :data:`PACKAGES`, downloaded only when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        missing = [p for p in PACKAGES if _cached(cache, p) is None]
        if missing:
            # Download next to the cache and move in only complete files, so an
            # interrupted download never leaves a truncated .deb behind.
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                result = subprocess.run(
                    # apt's _apt sandbox user cannot write into a root-only directory.
                    ["apt-get", "download", "-o", "APT::Sandbox::User=root", *missing],
                    cwd=tmp,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                if result.returncode != 0:
                    raise RuntimeError(f"apt-get download {missing} failed:\n{result.stderr}")
                for deb in Path(tmp).glob("*.deb"):
                    deb.rename(cache / deb.name)
        debs = [_cached(cache, p) for p in PACKAGES]
    return [deb for deb in debs if deb is not None]


@dataclass(frozen=True)
class SendmailInstall:
    """The unpacked packages: binary, private libraries, m4 and the cf tree."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "usr/libexec/sendmail/sendmail"

    @property
    def m4(self) -> Path:
        return self.root / "usr/bin/m4"

    @property
    def cf_dir(self) -> Path:
        return self.root / "usr/share/sendmail/cf"

    @property
    def lib_dir(self) -> Path:
        return self.root / "usr/lib/x86_64-linux-gnu"

    @property
    def saslpasswd2(self) -> Path:
        return self.root / "usr/sbin/saslpasswd2"

    @property
    def sasl_plugin_dir(self) -> Path:
        return self.root / SASL_DIR.relative_to("/")

    def build_cf(self, mc: Path, cf: Path, *, check: bool = True) -> str:
        """Build ``cf`` from ``mc``; m4's warnings. CalledProcessError when m4 fails,
        unless ``check`` is false: then ``cf`` keeps what m4 wrote, as Debian's
        ``sendmailconfig`` and ``/etc/mail/Makefile`` install it."""
        with cf.open("w") as out:
            done = subprocess.run(
                [str(self.m4), f"-D_CF_DIR_={self.cf_dir}/", str(self.cf_dir / "m4/cf.m4"), mc],
                stdout=out,
                stderr=subprocess.PIPE,  # FEATURE(promiscuous_relay) warns here
                check=check,
                timeout=30,
            )
        return done.stderr.decode()


def install(debs: Sequence[Path], root: Path) -> SendmailInstall:
    root.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, timeout=60)
    inst = SendmailInstall(root)
    mode = inst.binary.stat().st_mode
    # A setgid binary ignores LD_LIBRARY_PATH (and would not find the private libwrap).
    inst.binary.chmod(mode & ~(stat.S_ISGID | stat.S_ISUID))
    return inst


class LoopbackClient(SmtpClient):
    """:class:`SmtpClient` from a chosen source address, keeping every reply byte.

    Sendmail has no XCLIENT, so the client address a milter sees is the real one; every
    address of 127.0.0.0/8 is local, which gives tests more than one client identity.
    ``received`` is every byte of every reply read (the greeting included); a session
    used as a context manager ends with :meth:`assert_printable` unless told not to.
    """

    def __init__(
        self, host: str, port: int, *, source: str, timeout: float = 30.0, printable: bool = True
    ) -> None:
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0)
        )
        self.buf = b""
        self.received = b""
        #: Check every reply of the session when the ``with`` block ends without error.
        self.printable = printable
        self.greeting = self.read()

    def __enter__(self) -> LoopbackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit()
        if self.printable and exc[0] is None:
            self.assert_printable()

    def read(self) -> Reply:
        reply = super().read()
        self.received += reply.raw
        return reply

    def assert_printable(self) -> None:
        """Every reply line so far was printable ASCII: no byte of 0x80 or more (UTF-8,
        or what Sendmail makes of it by clearing the 8th bit: control bytes, a bare CR
        or LF), and nothing left unread that would be the answer to a later command."""
        sent = self.received + self.buf
        bad = [line for line in sent.split(b"\r\n") if not _PRINTABLE.fullmatch(line)]
        assert bad == [], f"reply lines that are not printable ASCII: {bad!r}"


_PRINTABLE = re.compile(rb"[\x20-\x7e]*")


# --- the README's lines -------------------------------------------------------------


def readme_snippet(readme: Path = README) -> str:
    """The Sendmail block of the README's "Attaching it to the MTA": the first fenced
    block after the paragraph that starts with "Sendmail"."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("\n## Attaching it to the MTA\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"^Sendmail\b.*?^```[a-z0-9]*\n(.*?)^```$", section, re.M | re.S)
    assert found, f"no Sendmail block in {readme}"
    return found.group(1)


def with_socket(snippet: str, socket_path: Path) -> str:
    """``snippet`` with the sample config's socket replaced by ``socket_path``."""
    assert snippet.count(f"S=local:{README_SOCKET},") == 1, snippet
    return snippet.replace(f"S=local:{README_SOCKET},", f"S=local:{socket_path},")


def filter_line_only(snippet: str) -> str:
    """Only the ``INPUT_MAIL_FILTER`` line of ``snippet``: no macro defines (so no
    ``v``), no ``confMAX_HOP``; what the README showed before it had the whole output."""
    found = re.findall(r"\(`([\w.-]+)', `(S=[^']*)'\)", snippet)
    assert len(found) == 1, snippet
    name, equates = found[0]
    return f"INPUT_MAIL_FILTER(`{name}', `{equates}')dnl\n"


# --- SMTP AUTH (Cyrus SASL) --------------------------------------------------------

#: libsasl2's plugin directory, compiled in; also on its search path for an
#: application's config file (/etc/sasl2:/etc/sasl:<this>:/usr/lib/sasl2).
SASL_DIR = Path("/usr/lib/x86_64-linux-gnu/sasl2")
SASL_PLUGINS = ("libplain.so", "liblogin.so", "libsasldb.so")
#: Mechanisms offered, and trusted for relaying (TRUST_AUTH_MECH), as in production.
SASL_MECHANISMS = "PLAIN LOGIN"
#: Sendmail's application name is "Sendmail": libsasl2 reads Sendmail.conf.
SASL_CONF = """\
pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: {db}
mech_list: {mechanisms}
"""
SASL_MC = (
    "dnl SMTP AUTH: Cyrus SASL, sasldb (tests/support/sendmail.py, sasl_dir).\n"
    f"define(`confAUTH_MECHANISMS', `{SASL_MECHANISMS}')dnl\n"
    f"TRUST_AUTH_MECH(`{SASL_MECHANISMS}')dnl\n"
)

#: After the milter lines of an AUTH instance without STARTTLS: the AuthOptions p they
#: add (policy.auth_tls_required names PLAIN and LOGIN in the README's config) would
#: offer no mechanism at all here, where EXTRA's policy lets LOGIN go in clear.
CLEAR_LOGINS_MC = (
    "dnl No STARTTLS here: PLAIN and LOGIN offered in clear (the milter judges them).\n"
    "undefine(`confAUTH_OPTIONS')dnl\n"
)


def sasl_dir(inst: SendmailInstall, directory: Path, users: Mapping[str, str]) -> Path:
    """Fill ``directory`` as Sendmail's private SASL directory: ``Sendmail.conf``, a
    sasldb with ``users`` (``user@realm``: password) and copies of the plugins it needs.

    :func:`sendmail` bind-mounts it over :data:`SASL_DIR` inside the instance's mount
    namespace. Returns ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "sasldb2"
    for address, password in users.items():
        user, _, realm = address.rpartition("@")
        subprocess.run(
            [str(inst.saslpasswd2), "-p", "-c", "-f", str(db), "-u", realm, user],
            input=password.encode(),
            check=True,
            capture_output=True,
            timeout=30,
        )
    conf = SASL_CONF.format(db=db, mechanisms=SASL_MECHANISMS)
    (directory / "Sendmail.conf").write_text(conf)
    for plugin in SASL_PLUGINS:
        for source in inst.sasl_plugin_dir.glob(f"{plugin}*"):
            shutil.copy2(source, directory / source.name, follow_symlinks=False)
    return directory


@contextlib.contextmanager
def tls_dir() -> Iterator[Path]:
    """A CA and a server certificate for ``mx.example.com`` (openssl), below
    :data:`SOCKET_ROOT`: Sendmail will not start TLS with files below a world-writable
    directory such as /tmp ("454 4.3.3 TLS not available after start")."""
    SOCKET_ROOT.mkdir(mode=0o755, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=SOCKET_ROOT))
    try:

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=path, check=True, capture_output=True)

        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=smtpguard test CA",
        )  # fmt: skip
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", f"/CN={HOSTNAME}",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2",
        )  # fmt: skip
        for key in path.glob("*.key"):
            key.chmod(0o600)
        (path / "certs").mkdir()
        shutil.copy(path / "ca.pem", path / "certs" / "ca.pem")
        openssl("rehash", "certs")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def tls_mc(directory: Path) -> str:
    """The ``.mc`` lines for STARTTLS with the files of :func:`tls_dir`."""
    return (
        "dnl STARTTLS (tests/support/sendmail.py, tls_dir).\n"
        f"define(`confCACERT_PATH', `{directory}/certs')dnl\n"
        f"define(`confCACERT', `{directory}/ca.pem')dnl\n"
        f"define(`confSERVER_CERT', `{directory}/server.pem')dnl\n"
        f"define(`confSERVER_KEY', `{directory}/server.key')dnl\n"
    )


# --- one instance -----------------------------------------------------------------

#: Parent of the milter sockets (root-owned, 0755, like /run/smtpguard in production).
SOCKET_ROOT = Path("/run/smtpguard-tests")


@contextlib.contextmanager
def milter_socket_dir() -> Iterator[Path]:
    """A private directory for smtpguard's unix socket, outside of /tmp.

    Sendmail refuses a ``local:`` milter socket below a world-writable directory, sticky
    or not ("local socket name ... unsafe: World writable directory"), and then
    tempfails every session: pytest's tmp_path lives under /tmp.
    """
    SOCKET_ROOT.mkdir(mode=0o755, exist_ok=True)
    SOCKET_ROOT.chmod(0o755)
    path = Path(tempfile.mkdtemp(dir=SOCKET_ROOT))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


#: Frames one delivery in the delivery file: bytes that do not occur in test mail.
DELIVERY_START = b"\x1e"
DELIVERY_END = b"\x1f\n"

DELIVER_SCRIPT = """\
#!/bin/sh
# The test instance's only mailer: append the message, framed, to one file, under an
# exclusive flock (readers take a shared one). $1 is the recipient; Sendmail passes
# no PATH.
exec 9>>'{out}'
/usr/bin/flock 9
{{ printf '\\036%s\\n' "$1"; /bin/cat; printf '\\037\\n'; }} >&9
"""


def instance_mc(
    directory: Path,
    port: int,
    milter_snippet: str,
    *,
    relay: str = "",
    extra: str = "",
    after: str = "",
) -> str:
    """The test instance's ``.mc``.

    ``relay`` replaces the default relay policy (every client may relay, so that
    smtpguard decides ``host_denies_relay``) with the given lines; ``extra`` lines go
    before ``DAEMON_OPTIONS`` (the SMTP AUTH settings), ``after`` lines after the
    milter lines.
    """
    d = directory
    # Comments are dnl lines: m4 would expand macro names inside "#" comments.
    relay_lines = relay or (
        "dnl Relay is smtpguard's decision (host_denies_relay) in these tests:\n"
        "dnl Sendmail lets every client relay.\n"
        "FEATURE(`promiscuous_relay')dnl\n"
    )
    return (
        "divert(-1)\n"
        "dnl Throwaway Sendmail for smtpguard's end-to-end tests (tests/support/sendmail.py).\n"
        "divert(0)dnl\n"
        "OSTYPE(`bsd4.4')dnl\n"
        f"define(`confDOMAIN_NAME', `{HOSTNAME}')dnl\n"
        "define(`confDONT_PROBE_INTERFACES', `True')dnl\n"
        f"define(`confSERVICE_SWITCH_FILE', `{d}/service.switch')dnl\n"
        f"define(`confHOSTS_FILE', `{d}/hosts')dnl\n"
        f"define(`ALIAS_FILE', `{d}/aliases')dnl\n"
        f"define(`QUEUE_DIR', `{d}/queue')dnl\n"
        f"define(`STATUS_FILE', `{d}/sendmail.st')dnl\n"
        f"define(`confPID_FILE', `{d}/sendmail.pid')dnl\n"
        "define(`confDELIVERY_MODE', `interactive')dnl\n"
        "FEATURE(`nocanonify')dnl\n"
        "FEATURE(`accept_unresolvable_domains')dnl\n"
        "FEATURE(`no_default_msa')dnl\n"
        f"{relay_lines}"
        f"{extra}"
        f"DAEMON_OPTIONS(`Port={port}, Addr=127.0.0.1, Name=MTA')dnl\n"
        "dnl The milter lines: verbatim output of smtpguard sendmail-config.\n"
        f"{milter_snippet}"
        f"{after}"
        "MAILER(`local')dnl\n"
        "MAILER_DEFINITIONS\n"
        f"Mdeliver, P={d}/deliver, F=lsSn8, T=DNS/RFC822/X-Unix, A=deliver $u\n"
        "LOCAL_RULE_0\n"
        "R$* < @ $* > $*\t$#deliver $@ localhost $: $1 < @ $2 > $3\n"
        "R$+\t\t$#deliver $@ localhost $: $1\n"
    )


@dataclass(frozen=True)
class Delivery:
    recipient: str
    message: bytes  # as the mailer received it: LF line ends


@dataclass
class Sendmail:
    install: SendmailInstall
    dir: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def traffic_log(self) -> Path:
        return self.dir / "traffic.log"

    @property
    def delivered_file(self) -> Path:
        return self.dir / "delivered"

    def client(
        self, source: str = "127.0.0.1", timeout: float = 30.0, *, printable: bool = True
    ) -> LoopbackClient:
        """A client connecting from ``source``, any address of 127.0.0.0/8. With
        ``printable``, its ``with`` block ends by checking every reply it read."""
        return LoopbackClient(
            "127.0.0.1", self.port, source=source, timeout=timeout, printable=printable
        )

    def log(self) -> str:
        out = self.dir / "sendmail.out"
        parts = [p.read_text(errors="replace") for p in (out, self.traffic_log) if p.exists()]
        return "\n".join(parts)

    def deliveries(self) -> list[Delivery]:
        """Every message delivered so far, in order."""
        if not self.delivered_file.exists():
            return []
        with self.delivered_file.open("rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)  # never read a delivery half-written
            data = fh.read()
        out = []
        for chunk in data.split(DELIVERY_START)[1:]:
            head, _, rest = chunk.partition(b"\n")
            assert rest.endswith(DELIVERY_END), f"malformed delivery: {chunk[-80:]!r}"
            out.append(Delivery(head.decode(), rest[: -len(DELIVERY_END)]))
        return out

    def wait_for_deliveries(
        self, marker: bytes, count: int, deadline: float = 15.0
    ) -> list[Delivery]:
        """The ``count`` delivered messages that contain ``marker``; polls the file.

        Sendmail runs the mailer once per recipient, one after the other."""
        end = time.monotonic() + deadline
        while True:
            found = [d for d in self.deliveries() if marker in d.message]
            if len(found) >= count:
                assert len(found) == count, f"{len(found)} deliveries with {marker!r}"
                return found
            if time.monotonic() > end:
                raise AssertionError(
                    f"{len(found)} of {count} deliveries with {marker!r}\n{self.log()[-3000:]}"
                )
            time.sleep(POLL_INTERVAL)

    def wait_for_delivery(self, marker: bytes, deadline: float = 15.0) -> Delivery:
        """The one delivered message that contains ``marker``."""
        return self.wait_for_deliveries(marker, 1, deadline)[0]


@contextlib.contextmanager
def sendmail(
    inst: SendmailInstall,
    directory: Path,
    milter_snippet: str,
    *,
    relay: str = "",
    sasl: Path | None = None,
    tls: Path | None = None,
    m4_may_fail: bool = False,
) -> Iterator[Sendmail]:
    """Run ``sendmail -bD`` with the given milter lines until the block ends.

    ``sasl``: a :func:`sasl_dir`; the instance then offers SMTP AUTH (PLAIN, LOGIN).
    ``tls``: a :func:`tls_dir`; the instance then offers STARTTLS.
    ``m4_may_fail``: run the .cf m4 wrote even when m4 exits non-zero (Debian's way).
    """
    d = directory
    (d / "queue").mkdir(parents=True, exist_ok=True)
    (d / "queue").chmod(0o700)
    hosts = f"127.0.0.1\tlocalhost\n127.0.0.1\t{HOSTNAME} mx\n" + "".join(
        f"{ip}\t{name}\n" for ip, name in CLIENT_NAMES.items()
    )
    (d / "hosts").write_text(hosts)
    (d / "service.switch").write_text("hosts files\naliases files\n")
    (d / "aliases").write_text("")
    deliver = d / "deliver"
    deliver.write_text(DELIVER_SCRIPT.format(out=d / "delivered"))
    deliver.chmod(0o755)
    port = free_port()
    (d / "test.mc").write_text(
        instance_mc(
            d,
            port,
            milter_snippet,
            relay=relay,
            extra=(SASL_MC if sasl else "") + (tls_mc(tls) if tls else ""),
            after=CLEAR_LOGINS_MC if sasl and not tls else "",
        )
    )
    inst.build_cf(d / "test.mc", d / "test.cf", check=not m4_may_fail)

    # A dotted host name and a private /etc/hosts, in a UTS and mount namespace of its
    # own; then exec, so the pid we hold is Sendmail's.
    setup = (
        'hostname "$0" && while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 1; shift 2;'
        ' done && shift && exec "$@"'
    )
    mounts = [(d / "hosts", Path("/etc/hosts"))]
    if sasl is not None:
        mounts.append((sasl, SASL_DIR))
    argv = [
        "unshare",
        "--uts",
        "--mount",
        "sh",
        "-c",
        setup,
        HOSTNAME,
        *(str(p) for pair in mounts for p in pair),
        "--",
        str(inst.binary),
        "-C",
        str(d / "test.cf"),
        "-bD",
        "-X",
        str(d / "traffic.log"),
    ]
    env = {**os.environ, "LD_LIBRARY_PATH": str(inst.lib_dir)}
    with (d / "sendmail.out").open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    instance = Sendmail(inst, d, port, proc)
    try:
        try:
            wait_for_greeting(port, "sendmail", 20.0, banner="ESMTP Sendmail", process=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{instance.log()[-3000:]}") from None
        yield instance
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the daemon and the session children it forked (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
