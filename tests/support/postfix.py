"""A throwaway Postfix instance with smtpguard attached, for end-to-end tests.

Its main.cf starts as an admin's would: what a private instance on loopback needs (own
config, queue and data directories, smtpd on a free loopback port, XCLIENT for
loopback, every transport pointing at a pipe that writes each delivered message to a
file the tests read) plus the test's own settings. smtpguard is then attached the way
users do it: the script ``smtpguard postfix-config --config-directory DIR`` prints is
run with ``sh``, so its real ``postconf -e`` commands merge into that main.cf.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from smtpguard.app import load
from smtpguard.config import Config
from smtpguard.postfix import postfix_network

from .smtp import SmtpClient, wait_for_greeting

POLL_INTERVAL = 0.05

#: Every service a private instance runs, smtpd on ``{port}``.
MASTER_CF_SERVICES = """\
{port}    inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
#: Plus the pipe that writes each delivered message to a file the tests read.
MASTER_CF = (
    MASTER_CF_SERVICES
    + """capture   unix  -       n       n       -       -       pipe
  flags=R user=nobody argv={capture} ${{queue_id}}
"""
)

#: What a private instance needs; ``{transport}`` receives every message (the tests'
#: capture pipe, or "discard" in the benchmark).
LOCAL_MAIN_CF = """\
# --- private instance ---
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
myhostname = mx.example.com
mydomain = example.com
myorigin = example.com
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = {networks}
relay_domains = {domains}
# As smtpguard's site lists: each domain itself, not its subdomains (Postfix's default
# names relay_domains here too).
parent_domain_matches_subdomains = debug_peer_list, fast_flush_domains, mynetworks,
    permit_mx_backup_networks, qmqpd_authorized_clients, smtpd_access_maps
local_recipient_maps =
relay_recipient_maps =
alias_maps =
alias_database =
default_transport = {transport}
relay_transport = {transport}
local_transport = {transport}
virtual_transport = {transport}
smtpd_authorized_xclient_hosts = 127.0.0.0/8
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtpd_banner = $myhostname ESMTP
biff = no
"""


#: How far :func:`settle` puts a config file's modification time back.
SETTLED_AGE = 10.0


def settle(*paths: Path) -> None:
    """Date the files back :data:`SETTLED_AGE` seconds. Postfix reads a configuration
    file again, 300 ms later and up to six times, while it was changed within the last
    second or two (load_file.c, dict_load_file_xt: "reads it again when the file changed
    recently"), so every postconf, postfix start and reload right after a test wrote
    main.cf waits about 1.8 s. What the tests write is complete when they call Postfix."""
    when = time.time() - SETTLED_AGE
    for path in paths:
        if path.exists():
            os.utime(path, (when, when))


def settle_config(config_dir: Path | str) -> None:
    """:func:`settle` an instance's main.cf and master.cf."""
    settle(*(Path(config_dir) / name for name in ("main.cf", "master.cf")))


def write_settled(path: Path, text: str) -> None:
    """Write a configuration file Postfix reads at once (:func:`settle`)."""
    path.write_text(text)
    settle(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_maillog(root: Path) -> str:
    """The maillog of the instance under ``root`` (``maillog_file`` above)."""
    path = root / "maillog"
    return path.read_text(errors="replace") if path.exists() else ""


def local_main_cf(
    smtpguard_config: Config, root: Path, transport: str, networks: str | None = None
) -> str:
    """:data:`LOCAL_MAIN_CF` for the instance under ``root``: smtpguard's domains are
    Postfix's relay domains, and ``mynetworks`` is ``networks`` (by default smtpguard's
    trusted networks)."""
    site = smtpguard_config.site
    if networks is None:
        networks = " ".join(postfix_network(n) for n in site.trusted_networks)
    return LOCAL_MAIN_CF.format(
        queue=root / "queue",
        data=root / "data",
        domains=" ".join(sorted(site.local_domains | site.relay_domains)),
        networks=networks,
        root=root,
        transport=transport,
    )


@dataclass
class Postfix:
    root: Path
    port: int
    config_dir: Path
    delivered: Path
    main_cf: str

    def maillog(self) -> str:
        return read_maillog(self.root)

    def __enter__(self) -> Postfix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def delivered_messages(self) -> dict[str, bytes]:
        return {p.stem: p.read_bytes() for p in self.delivered.glob("*.eml")}

    def wait_delivered(self, queue_id: str, deadline: float = 20.0) -> bytes:
        path = self.delivered / f"{queue_id}.eml"
        end = time.monotonic() + deadline
        while not (path.exists() and path.with_suffix(".done").exists()):
            if time.monotonic() > end:
                raise AssertionError(f"{queue_id} not delivered; maillog:\n{self.maillog()}")
            time.sleep(POLL_INTERVAL)
        return path.read_bytes()

    def stop(self) -> None:
        postfix_cmd(self.config_dir, "stop", check=False)
        end = time.monotonic() + 20
        env = {**os.environ, "MAIL_CONFIG": str(self.config_dir)}
        # master -t exits non-zero while the instance still holds its lock.
        while (
            subprocess.run(
                ["/usr/lib/postfix/sbin/master", "-t"], env=env, capture_output=True, check=False
            ).returncode
            != 0
        ):
            if time.monotonic() > end:
                break
            time.sleep(POLL_INTERVAL)
        shutil.rmtree(self.root, ignore_errors=True)


def client(postfix: Postfix, ident: dict[str, str] | None = None, **extra: str) -> SmtpClient:
    """An SMTP client of ``postfix`` that says who it is with XCLIENT (``ident``: addr,
    name, helo, ...; the test client is in ``smtpd_authorized_xclient_hosts``) and says
    EHLO again with ``ident["helo"]`` when given."""
    c = SmtpClient("127.0.0.1", postfix.port)
    assert c.ehlo("test.client").code == 250
    if ident is not None:
        reply = c.xclient(**ident, **extra)
        assert reply.code == 220, reply
        if "helo" in ident:
            assert c.ehlo(ident["helo"]).code == 250
    return c


def postfix_cmd(config_dir: Path, *args: str, check: bool = True) -> str:
    settle_config(config_dir)
    # postfix prints its errors only to a terminal: run it under script(1) to see them.
    command = " ".join(["postfix", "-c", str(config_dir), *args])
    result = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def smtpguard_command() -> str:
    """The ``smtpguard`` console script of the Python running the tests."""
    return str(Path(sys.executable).parent / "smtpguard")


def attach_smtpguard(config_dir: Path, smtpguard_config: Path, *args: str) -> str:
    """Run what ``smtpguard postfix-config`` prints for this instance; return it."""
    settle_config(config_dir)
    script = subprocess.run(
        [
            smtpguard_command(),
            "-c",
            str(smtpguard_config),
            "postfix-config",
            "--config-directory",
            str(config_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    subprocess.run(["sh", "-e"], input=script, text=True, check=True, timeout=60)
    settle_config(config_dir)
    return script


def new_root() -> Path:
    # Postfix's unprivileged processes (pipe runs as nobody) must traverse the root.
    root = Path(tempfile.mkdtemp(prefix="smtpguard-postfix-"))
    root.chmod(0o755)
    return root


def start_postfix(
    smtpguard_config: Path,
    extra_main_cf: str = "",
    *,
    attach: bool = True,
    master_cf: str = MASTER_CF,
    networks: str | None = None,
    root: Path | None = None,
) -> Postfix:
    """Start an instance: the admin's main.cf (``extra_main_cf`` last; ``mynetworks``
    is ``networks``, by default smtpguard's trusted networks), then smtpguard attached
    with ``smtpguard postfix-config`` unless ``attach`` is false. ``root`` (from
    :func:`new_root`) lets a test put files in the queue directory first."""
    root = root or new_root()
    config_dir, queue, data, delivered = (root / n for n in ("etc", "queue", "data", "out"))
    for d in (config_dir, queue, data, delivered):
        d.mkdir(exist_ok=True)
    shutil.chown(data, "postfix", "postfix")
    delivered.chmod(0o1777)
    capture = root / "capture.sh"
    capture.write_text(
        "#!/bin/sh\n"
        "# pipe(8) delivery: keep the message as the test will read it.\n"
        f'cat > "{delivered}/$1.eml.tmp" && mv "{delivered}/$1.eml.tmp" "{delivered}/$1.eml"'
        f' && touch "{delivered}/$1.done"\n'
    )
    capture.chmod(capture.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    port = free_port()
    main_cf = local_main_cf(load(smtpguard_config), root, "capture", networks) + extra_main_cf
    write_settled(config_dir / "main.cf", main_cf)
    write_settled(config_dir / "master.cf", master_cf.format(port=port, capture=capture))
    if attach:
        attach_smtpguard(config_dir, smtpguard_config)
    main_cf = (config_dir / "main.cf").read_text()
    return start_instance(Postfix(root, port, config_dir, delivered, main_cf), "postfix")


def smtpd_pids(port: int) -> set[int]:
    """The smtpd processes master runs for the service on ``port``."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        service = argv[argv.index(b"-n") + 1] if b"-n" in argv[:-1] else b""
        if argv[0].endswith(b"smtpd") and service == str(port).encode():
            pids.add(int(proc.name))
    return pids


def reload_postfix(postfix: Postfix, deadline: float = 20.0) -> None:
    """``postfix reload``, then wait until every smtpd that read the old main.cf has
    exited, so the next connection gets one with the new settings."""
    old = smtpd_pids(postfix.port)
    postfix_cmd(postfix.config_dir, "reload")
    end = time.monotonic() + deadline
    while "reload -- version" not in postfix.maillog() or old & smtpd_pids(postfix.port):
        if time.monotonic() > end:
            raise AssertionError("postfix did not reload:\n" + postfix.maillog())
        time.sleep(POLL_INTERVAL)


class Instance(Protocol):
    config_dir: Path
    port: int

    def maillog(self) -> str: ...
    def stop(self) -> None: ...


_I = TypeVar("_I", bound=Instance)


def start_instance(instance: _I, what: str) -> _I:
    """Start a configured private Postfix and wait for its greeting; stop it and raise
    with its maillog if it does not come."""
    postfix_cmd(instance.config_dir, "start")
    try:
        wait_for_greeting(instance.port, "postfix", 30.0)
    except TimeoutError:
        log = instance.maillog()
        instance.stop()
        raise RuntimeError(f"{what} did not start; maillog:\n{log}") from None
    return instance
