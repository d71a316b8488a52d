"""Writing test configs and running the real ``smtpguard run`` service."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from .mtclient import MilterSession, wait_for_socket
from .polling import children, wait_until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"

#: Test networks (RFC 5737): the milter protocol carries these as data, no traffic.
TRUSTED_IP = "192.0.2.10"
UNTRUSTED_IP = "198.51.100.7"

#: HELO names the test site refuses (helo_error) from an untrusted client, whatever the
#: MTA in front.
REFUSED_HELOS = (
    "localhost",  # not a FQDN
    "-bad.example",  # not LDH (an underscore passes, as with Postfix's own check)
    "[198.51.100.99]",  # address literal that is not the client
    "[not-an-ip]",
    "mx.example.com",  # our own name from an untrusted client
    "example.com",  # our own domain
    "198.51.100.7",  # bare IP: not a FQDN, not a literal
)

#: MAIL FROM paths the test site's policy.sender_deny refuses (host_denies_sender).
DENIED_SENDERS = (
    "<spammer@bad.example>",
    "<x@junk.example>",
    "<x@deep.sub.junk.example>",
    "<promo-42@any.example>",
    "<SPAMMER@Bad.Example>",
)

BASE_CONFIG: dict[str, Any] = {
    # One process, whatever the host's CPU count: a test that counts log lines or
    # follows one session's state across reloads needs it. Tests of several workers
    # (test_workers.py, test_protocol.py) ask for them.
    "milter": {"name": "smtpguard-test", "log_level": "INFO", "workers": 1},
    "site": {
        "local_domains": ["example.com"],
        "relay_domains": ["relay.example"],
        "trusted_networks": ["192.0.2.0/24"],
        "our_hostnames": ["mx.example.com"],
        "our_ips": ["203.0.113.25"],
    },
    "limits": {"max_rcpt": 3, "max_message_size": 1_000_000},
    "replies": {"table": str(RULES / "replies.toml")},
    "policy": {"sender_deny": ["spammer@bad.example", "junk.example", "/^promo-[0-9]+@/"]},
    # Tests change the directory and the blacklist while the service runs and expect
    # the next session to see it; the result cache (default 1 s) has tests of its own.
    "directory": {"backend": "sqlite", "timeout": 0.3, "cache_ttl": 0},
    "state": {"backend": "embedded", "timeout": 0.3, "cache_ttl": 0},
}

DIRECTORY = """
[[user]]
address = "alice@example.com"
send_as = ["sales@example.com"]

[[user]]
address = "bob@example.com"
state = "locked"

[[user]]
address = "carol@example.com"
state = "suspended"

[[user]]
address = "dave@example.com"
login = "dave"

[[alias]]
address = "sales@example.com"
target = "alice@example.com"

[[list]]
address = "staff@example.com"
policy = "members"
members = ["alice@example.com"]

[[list]]
address = "news@example.com"
policy = "open"
"""


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Site:
    """A test installation: config file, directory, state, socket, all under tmp."""

    dir: Path
    config: Path
    socket: Path
    directory: Path
    state: Path


def make_site(tmp: Path, extra: Mapping[str, Any] | None = None, *, directory: bool = True) -> Site:
    tmp.mkdir(parents=True, exist_ok=True)
    sock = tmp / "smtpguard.sock"
    site = Site(tmp, tmp / "smtpguard.toml", sock, tmp / "directory.sqlite", tmp / "state.sqlite")
    data = merge(
        BASE_CONFIG,
        {
            "milter": {"socket": f"unix:{sock}"},
            "directory": {"path": str(site.directory)},
            "state": {"path": str(site.state)},
        },
    )
    data = merge(data, extra or {})
    site.config.write_text(tomli_w.dumps(data), encoding="utf-8")
    if directory:
        source = tmp / "directory.toml"
        source.write_text(DIRECTORY, encoding="utf-8")
        smtpguard(site, "directory", "import", str(source))
    return site


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``smtpguard ARGS`` with this interpreter, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "smtpguard", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def smtpguard(site: Site, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("-c", str(site.config), *args, check=check)


@dataclass
class Running:
    site: Site
    process: subprocess.Popen[str]
    log_path: Path

    def session(self) -> MilterSession:
        return MilterSession(str(self.site.socket))

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextmanager
def running(
    site: Site,
    command: list[str] | None = None,
    *,
    wait_for: str | tuple[str, int] | None = None,
) -> Iterator[Running]:
    """Run the service (``smtpguard run`` by default) until the block ends.

    ``wait_for`` is the address to poll for readiness (default: the site's unix socket).
    """
    log_path = site.dir / "service.log"
    argv = command or [sys.executable, "-m", "smtpguard", "-c", str(site.config), "run"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ}
        )
    try:
        try:
            wait_for_socket(wait_for or site.socket)
        except OSError:
            proc.kill()
            raise RuntimeError("service did not start:\n" + log_path.read_text()) from None
        yield Running(site, proc, log_path)
    finally:
        # libmilter notices SIGTERM only at its next listener poll (~5 s): collect the
        # exit at the end of the test session instead of waiting here each time.
        proc.send_signal(signal.SIGTERM)
        STOPPING.append(proc)


#: Services told to stop; conftest reaps them once, at the end of the session.
STOPPING: list[subprocess.Popen[str]] = []


def reap_stopping(timeout: float = 20.0) -> None:
    for proc in STOPPING:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    STOPPING.clear()


def metrics_on() -> dict[str, dict[str, object]]:
    """The [metrics] table of a site whose /metrics listens on a free port."""
    from .daemons import free_port  # noqa: PLC0415

    return {"metrics": {"enabled": True, "port": free_port()}}


def kill_supervisor_then_start_again(site: Site, run: Path, socket: str | None = None) -> None:
    """Start ``site`` (workers, metrics on, ``$RUNTIME_DIRECTORY`` = ``run``), kill its
    supervisor outright, start it again: both workers say their supervisor is gone,
    and the second start removes the first one's metrics directory (review rev113 F4)."""
    with running(site, wait_for=socket) as service:
        supervisor = service.process.pid
        wait_until(lambda: len(children(supervisor)) == 2)
        (left,) = run.glob("smtpguard-metrics-*")
        assert left.name.startswith(f"smtpguard-metrics-{supervisor}-")
        service.process.kill()
        service.process.wait()
        gone = f"the supervisor (pid {supervisor}) is gone: stopping"
        wait_until(lambda: service.log().count(gone) == 2)
    assert left.exists()
    with running(site, wait_for=socket) as again:
        wait_until(lambda: len(children(again.process.pid)) == 2)
        (made,) = run.glob("smtpguard-metrics-*")
        assert made.name.startswith(f"smtpguard-metrics-{again.process.pid}-")
        assert f"removed {left}, left by a supervisor (pid {supervisor})" in again.log()
