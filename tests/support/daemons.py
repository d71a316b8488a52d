"""Real clamd, rspamd and redis-server on loopback, for the scanner and counter tests.

Each ``start_*`` writes a private configuration under the directory it is given, starts
the daemon in the foreground as a child of the test process, polls until it answers
(never a fixed sleep) and returns a handle whose ``stop()`` ends exactly that process.
Start-up times measured here (2 cores): clamd with a one-signature database ~0.1 s,
redis-server ~0.05 s, rspamd ~12-17 s cold (it compiles its regexes with Hyperscan) and
under 1 s warm, which is why its Hyperscan cache can be kept between test sessions
(``hs_cache``).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smtpguard.scanners import Endpoint
from smtpguard.scanners.clamd import ping

POLL_INTERVAL = 0.02
# Daemons are started in bytes mode, the smtpguard service in text mode.
AnyPopen = subprocess.Popen[bytes] | subprocess.Popen[str]

#: The EICAR anti-virus test file (68 octets); harmless, detected by design.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
#: The GTUBE anti-spam test string.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
#: clamd appends ".UNOFFICIAL" to signatures from a database it did not sign.
EICAR_SIGNATURE = "Smtpguard.Test.EICAR"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the daemon binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    ready: Callable[[], bool],
    process: AnyPopen,
    what: str,
    log: Path,
    deadline: float = 30.0,
) -> float:
    """Poll ``ready`` until true; fail early if ``process`` exits. Returns seconds waited."""
    start = time.monotonic()
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        if time.monotonic() - start > deadline:
            stop_process(process)
            raise RuntimeError(f"{what} not ready after {deadline} s:\n{_tail(log)}")
        time.sleep(POLL_INTERVAL)
    return time.monotonic() - start


def _program(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        raise RuntimeError(f"{name} not found: install the Debian package {package}")
    return path


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    except OSError:
        return "(no log)"


def stop_process(process: AnyPopen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal ``process`` (if it still runs) and reap it, killing it after ``timeout``."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- clamd -----------------------------------------------------------------------------


@dataclass
class Clamd:
    dir: Path
    process: subprocess.Popen[bytes]
    socket: Path
    port: int
    startup: float

    @property
    def unix(self) -> Endpoint:
        return Endpoint(path=str(self.socket))

    @property
    def tcp(self) -> Endpoint:
        return Endpoint(host="127.0.0.1", port=self.port)

    def log(self) -> str:
        return (self.dir / "clamd.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


def start_clamd(
    dir: Path,
    *,
    stream_max_length: int = 1024 * 1024,
    read_timeout: int = 120,
    max_threads: int = 4,
    temporary: Path | None = None,
) -> Clamd:
    """clamd with one signature: EICAR anywhere in the scanned data (an .ndb body rule).

    ``ScanMail yes`` (the default, set explicitly) makes clamd decode MIME when it is
    given a whole message. ``temporary``: its TemporaryDirectory (default ``dir``).
    """
    db = dir / "db"
    db.mkdir(parents=True, exist_ok=True)
    # .ndb: Name:TargetType:Offset:HexSignature; target 0 = any file type, * = anywhere.
    (db / "smtpguard-test.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{EICAR.hex()}\n")
    sock, port, log = dir / "clamd.sock", free_port(), dir / "clamd.log"
    conf = dir / "clamd.conf"
    conf.write_text(
        f"DatabaseDirectory {db}\n"
        f"LocalSocket {sock}\n"
        f"TCPSocket {port}\n"
        "TCPAddr 127.0.0.1\n"
        "Foreground yes\n"
        "Bytecode no\n"
        "ScanMail yes\n"
        f"StreamMaxLength {stream_max_length}\n"
        f"ReadTimeout {read_timeout}\n"
        f"MaxThreads {max_threads}\n"
        f"LogFile {log}\n"
        f"TemporaryDirectory {temporary or dir}\n"
        "SelfCheck 0\n"
    )
    with (dir / "clamd.out").open("wb") as out:
        process = subprocess.Popen(
            [_program("clamd", "clamav-daemon"), "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = Endpoint(path=str(sock))
    startup = wait_until(lambda: ping(endpoint, 0.5), process, "clamd", log)
    return Clamd(dir, process, sock, port, startup)


# --- redis-server ----------------------------------------------------------------------


#: The service's least-privilege Redis user's commands for the counters, as
#: conf/smtpguard.toml ([state]) lists them (the blacklist's +hmget aside).
REDIS_COUNTING = (
    "+ping +evalsha +script|load +time +zadd +zcard +zremrangebyscore +zremrangebyrank"
    " +pexpire +zrem +zrevrange"
)


@dataclass
class RedisServer:
    dir: Path
    port: int
    process: subprocess.Popen[bytes]
    startup: float = 0.0
    #: TLS only, client certificates required (Redis's own default with TLS): the
    #: certificate in ``dir`` is the CA, the server's and the client's.
    tls: bool = False

    @property
    def url(self) -> str:
        if self.tls:
            cert, key = self.dir / "cert.pem", self.dir / "key.pem"
            return (
                f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={cert}"
                f"&ssl_certfile={cert}&ssl_keyfile={key}"
            )
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        """SIGKILL: the abrupt outage (no shutdown, connections reset)."""
        stop_process(self.process, signal.SIGKILL)

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> None:
        """Start again on the same port (after :meth:`kill` or :meth:`stop`)."""
        self.stop()
        fresh = start_redis(self.dir, port=self.port, tls=self.tls)
        self.process, self.startup = fresh.process, fresh.startup


def _redis_ready(port: int, tls: ssl.SSLContext | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as plain:
            s = tls.wrap_socket(plain, server_hostname="127.0.0.1") if tls else plain
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(dir: Path, *, port: int | None = None, tls: bool = False) -> RedisServer:
    dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = dir / "redis.log"
    listen = ["--port", str(port)]
    context = None
    if tls:
        cert, key = dir / "cert.pem", dir / "key.pem"
        if not cert.exists():
            new_key = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
            subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
            files = ["-keyout", str(key), "-out", str(cert)]
            subprocess.run(["openssl", *new_key, *subject, *files], capture_output=True, check=True)
        listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert)]
        listen += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)]
        context = ssl.create_default_context(cafile=str(cert))
        context.load_cert_chain(str(cert), str(key))
    process = subprocess.Popen(
        [
            _program("redis-server", "redis-server"),
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(dir),
            "--logfile",
            str(log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    startup = wait_until(lambda: _redis_ready(port, context), process, "redis-server", log)
    return RedisServer(dir, port, process, startup, tls)


# --- rspamd ----------------------------------------------------------------------------

# Everything that would reach out (DNS lists, URL blacklists, map downloads, fuzzy
# storage) or needs Redis is switched off, so a scan never waits on the network.
#: Modules that need the network or Redis, off in every private rspamd.
RSPAMD_OFF = (
    "fuzzy_check",
    "dkim_signing",
    "arc",
    "asn",
    "bimi",
    "dkim",
    "dmarc",
    "emails",
    "greylist",
    "hfilter",
    "history_redis",
    "milter_headers",
    "multimap",
    "mx_check",
    "neural",
    "once_received",
    "phishing",
    "ratelimit",
    "rbl",
    "replies",
    "reputation",
    "rspamd_update",
    "spf",
    "surbl",
    "url_redirector",
    "whitelist",
)
HS_CACHE_GLOBS = ("*.hs", "*.hs.unser", "*.hsmp")


@dataclass
class Rspamd:
    dir: Path
    port: int
    process: subprocess.Popen[bytes]
    startup: float
    hs_cache: Path | None = None
    _seeded: set[str] = field(default_factory=set)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(host="127.0.0.1", port=self.port)

    @property
    def unix(self) -> Endpoint:
        return Endpoint(path=str(self.dir / "run" / "normal.sock"))

    def log(self) -> str:
        return (self.dir / "log" / "rspamd.log").read_text(errors="replace")

    def stop(self) -> None:
        self.resume()
        stop_process(self.process)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        keep_hs_cache(self.dir, self.hs_cache, self._seeded)

    def pause(self) -> None:
        """SIGSTOP every process of rspamd: it accepts nothing and answers nothing."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGCONT)


def _rspamd_ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().read().strip() == b"pong"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def prepare_rspamd(
    dir: Path,
    *,
    workers: Mapping[str, str],
    nameserver: str,
    dns_timeout: str,
    off: Sequence[str] = RSPAMD_OFF,
    hs_cache: Path | None = None,
) -> tuple[list[str], set[str]]:
    """A private rspamd under ``dir``: the argv to start it and the cache files seeded.

    ``workers`` maps a worker (normal, controller, proxy) to its override text; the
    others are disabled, since they would bind their fixed default ports. ``hs_cache``:
    a directory kept between runs; its compiled Hyperscan databases are copied in
    before start (rspamd checks they match its rules and platform).
    """
    local, db, run, logdir = dir / "local", dir / "db", dir / "run", dir / "log"
    for d in (local / "local.d", local / "override.d", db, run, logdir):
        d.mkdir(parents=True, exist_ok=True)
    for worker in ("normal", "controller", "proxy"):
        text = workers.get(worker, "enabled = false;\n")
        (local / "override.d" / f"worker-{worker}.inc").write_text(text)
    (local / "local.d" / "options.inc").write_text(
        f'dns {{\n  nameserver = ["{nameserver}"];\n  timeout = {dns_timeout};\n'
        "  retransmits = 1;\n}\n"
    )
    (local / "local.d" / "logging.inc").write_text(
        f'type = "file";\nfilename = "{logdir}/rspamd.log";\nlevel = "notice";\n'
    )
    for module in off:
        (local / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
    seeded: set[str] = set()
    if hs_cache is not None:
        hs_cache.mkdir(parents=True, exist_ok=True)
        for pattern in HS_CACHE_GLOBS:
            for path in hs_cache.glob(pattern):
                shutil.copy2(path, db / path.name)
                seeded.add(path.name)
    argv = [_program("rspamd", "rspamd"), "-f", "-c", "/etc/rspamd/rspamd.conf"]
    if os.geteuid() == 0:
        # Run as root without switching user, so it can use the private directories
        # (-u _rspamd could not enter pytest's 0700 temporary tree).
        argv.append("-i")
    for name, path in (
        ("LOCAL_CONFDIR", local),
        ("DBDIR", db),
        ("RUNDIR", run),
        ("LOGDIR", logdir),
    ):
        argv += ["--var", f"{name}={path}"]
    return argv, seeded


def keep_hs_cache(dir: Path, hs_cache: Path | None, seeded: set[str]) -> None:
    """Copy what this run compiled into ``hs_cache`` for the next run; copy, then
    rename, so a concurrent run never reads half a file."""
    if hs_cache is None:
        return
    with contextlib.suppress(OSError):
        for pattern in HS_CACHE_GLOBS:
            for path in (dir / "db").glob(pattern):
                if path.name not in seeded:
                    partial = hs_cache / f".{path.name}.{os.getpid()}"
                    shutil.copy2(path, partial)
                    partial.replace(hs_cache / path.name)


#: A subject containing this makes the test rspamd answer "soft reject", as its
#: ratelimit and greylist modules do (a prefilter of :func:`start_rspamd`'s).
SOFT_REJECT_SUBJECT = "smtpguard-test-soft-reject"
#: A subject containing this and an action's name ("discard", "quarantine") makes the
#: test rspamd answer that action, as its force_actions module would.
ACTION_SUBJECT = "smtpguard-test-action="


def start_rspamd(dir: Path, *, hs_cache: Path | None = None, deadline: float = 90.0) -> Rspamd:
    """rspamd 3.x with only its normal worker, on a free loopback port.

    ``hs_cache``: a directory kept between test sessions; its compiled Hyperscan
    databases are copied in before start (rspamd checks they match its rules and
    platform) and new ones copied back at :meth:`Rspamd.stop`. One Lua prefilter is
    added: :data:`SOFT_REJECT_SUBJECT`.
    """
    port = free_port()
    run = dir / "run"
    # Nothing listens on port 1: a stray lookup fails at once instead of timing out.
    argv, seeded = prepare_rspamd(
        dir,
        workers={
            "normal": f'bind_socket = ["127.0.0.1:{port}", "{run}/normal.sock mode=0666"];\n'
            "count = 1;\n"
        },
        nameserver="127.0.0.1:1",
        dns_timeout="0.1s",
        hs_cache=hs_cache,
    )
    # rspamd knows an action only with a threshold; far above any test's score.
    (dir / "local" / "local.d" / "actions.conf").write_text("quarantine = 900;\ndiscard = 1000;\n")
    (dir / "local" / "rspamd.local.lua").write_text(
        "rspamd_config:register_symbol({\n"
        "  name = 'SMTPGUARD_TEST_SOFT_REJECT', type = 'prefilter', priority = 10,\n"
        "  callback = function(task)\n"
        "    local subject = task:get_subject()\n"
        f"    if subject and subject:find('{SOFT_REJECT_SUBJECT}', 1, true) then\n"
        "      task:set_pre_result('soft reject', 'try again later', 'smtpguard-test')\n"
        "    end\n"
        "    local forced = subject and subject:match('smtpguard%-test%-action=(%a+)')\n"
        "    if forced then\n"
        "      task:set_pre_result(forced, 'forced by the test', 'smtpguard-test')\n"
        "    end\n"
        "  end,\n"
        "})\n"
    )
    with (dir / "rspamd.out").open("wb") as out:
        # A process group of its own: stop() ends its helpers too (review rev86: an
        # hs_helper outlived its main process), and a test can stop it as a whole.
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    startup = wait_until(
        lambda: _rspamd_ready(port), process, "rspamd", dir / "log" / "rspamd.log", deadline
    )
    return Rspamd(dir, port, process, startup, hs_cache, seeded)
