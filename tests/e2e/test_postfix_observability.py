"""Issue 13 through a real Postfix: smtpguard's syslog lines next to Postfix's mail log
(one accepted and one refused message, the summary line carrying Postfix's queue id),
the Authentication-Results field on the delivered message, a forged one with our
authserv-id gone, and /metrics after it (checked with promtool).

Run with ``-s`` to see the mail.log excerpt, the delivered headers and the scrape.
"""

from __future__ import annotations

import re
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from support.polling import poll_for, wait_until
from support.postfix import Postfix, client, free_port, start_postfix
from support.service import Running, make_site, running
from support.unbound import GOOD_IP, NO_PTR_IP, DnsServer

pytestmark = pytest.mark.integration

AUTHSERV_ID = "mx.example.com"
GOOD = {"addr": GOOD_IP, "name": "mx.good.test", "helo": "mx.good.test"}
NO_PTR = {"addr": NO_PTR_IP, "name": "[UNAVAILABLE]", "helo": "mx.good.test"}
MESSAGE = (
    f"Authentication-Results: {AUTHSERV_ID}; spf=pass smtp.mailfrom=forged.example\r\n"
    "Authentication-Results: upstream.example; spf=fail smtp.mailfrom=good.test\r\n"
    "From: Someone <someone@good.test>\r\n"
    "To: alice@example.com\r\n"
    "Subject: observability\r\n"
    "Message-ID: <obs-e2e-1@good.test>\r\n"
    "\r\n"
    "Lunch tomorrow?\r\n"
)


@dataclass
class SyslogSink:
    """A unix datagram socket standing in for /dev/log; lines kept with their arrival."""

    path: Path
    sock: socket.socket
    lines: list[tuple[float, str]] = field(default_factory=list)

    def run(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            self.lines.append((time.time(), data.decode(errors="replace")))

    def wait_for(self, pattern: str, deadline: float = 15.0) -> str:
        return poll_for(
            lambda: next((line for _t, line in list(self.lines) if re.search(pattern, line)), None),
            deadline,
            lambda: f"no {pattern!r} in {self.lines}",
        )

    def as_maillog(self, host: str = "mx") -> list[tuple[int, str]]:
        """The lines as syslogd writes them to mail.log (PRI dropped), by second."""
        out = []
        for when, line in self.lines:
            stamp = datetime.fromtimestamp(when).strftime("%b %d %H:%M:%S")
            out.append((int(when), f"{stamp} {host} {re.sub(r'^<[0-9]+>', '', line)}"))
        return out


@pytest.fixture(scope="module")
def stack(unbound: DnsServer) -> Iterator[tuple[Running, Postfix, SyslogSink, int]]:
    root = Path(tempfile.mkdtemp(prefix="smtpguard-obs-"))
    root.chmod(0o755)
    log_path = root / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(log_path))
    sink = SyslogSink(log_path, sock)
    threading.Thread(target=sink.run, daemon=True).start()
    port = free_port()
    site = make_site(
        root,
        {
            "milter": {
                "socket_group": "postfix",
                "socket_mode": "0660",
                "log": "syslog",
                "log_socket": str(log_path),
                "authserv_id": AUTHSERV_ID,
            },
            "dns": {"nameservers": ["127.0.0.1"], "port": unbound.port, "timeout": 1.0},
            "metrics": {"enabled": True, "port": port},
        },
    )
    try:
        with running(site) as service, start_postfix(site.config) as postfix:
            yield service, postfix, sink, port
    finally:
        sock.close()


def postfix_lines(postfix: Postfix) -> list[tuple[int, str]]:
    year = datetime.now().year
    out = []
    for line in postfix.maillog().splitlines():
        try:
            when = datetime.strptime(f"{year} {line[:15]}", "%Y %b %d %H:%M:%S").timestamp()
        except ValueError:
            continue
        out.append((int(when), line))
    return out


def test_mail_log_headers_and_metrics(
    stack: tuple[Running, Postfix, SyslogSink, int],
) -> None:
    _service, postfix, sink, port = stack
    with client(postfix, GOOD) as c:
        assert c.cmd("MAIL FROM:<someone@good.test>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        reply = c.data(MESSAGE.encode())
    assert reply.code == 250, reply
    queued = re.search(r"queued as (\w+)", reply.lines[-1])
    assert queued
    qid = queued.group(1)
    delivered = postfix.wait_delivered(qid).decode()
    with client(postfix, NO_PTR) as c:
        refused = c.cmd("MAIL FROM:<someone@good.test>")
    assert refused.code == 554, refused

    head = delivered.partition("\n\n")[0]
    fields = re.findall(r"^([\w-]+): (.*(?:\n[ \t].*)*)", head, re.MULTILINE)
    results = [value for name, value in fields if name == "Authentication-Results"]
    # Ours (folded, CRLF TAB as LF TAB in the delivered file), the upstream one kept,
    # the forged one with our authserv-id gone.
    assert results == [
        f"{AUTHSERV_ID};\n\tspf=pass smtp.mailfrom=good.test;\n\tiprev=pass policy.iprev={GOOD_IP}",
        "upstream.example; spf=fail smtp.mailfrom=good.test",
    ]
    assert "forged.example" not in delivered
    status = dict(fields)["X-Spam-Status"]
    assert status == "No, score=0.0 required=6.0 tests=none"
    assert all(len(line) <= 78 for line in head.splitlines() if "Authentication" in line)

    accepted = sink.wait_for(rf"summary sid=\S+ qid={qid} outcome=accept ")
    assert "spf=pass iprev=pass" in accepted
    rejected = sink.wait_for(r"summary sid=\S+ outcome=reject reply=smtpport_check ")
    assert re.match(r"<22>smtpguard\[\d+\]: ", accepted)  # mail.info
    assert re.match(r"<22>smtpguard\[\d+\]: ", rejected)
    wait_until(lambda: f"{qid}: removed" in postfix.maillog(), 15)

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    check = subprocess.run(
        ["/usr/bin/promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    assert 'smtpguard_transactions_total{outcome="accept",reply_id="none"} 1.0' in text
    assert 'smtpguard_transactions_total{outcome="reject",reply_id="smtpport_check"} 1.0' in text

    # The closing note's material: mail.log as syslogd would write it, both sources.
    # Postfix stamps whole seconds: within one, its lines first, in the file's order.
    merged = sorted(postfix_lines(postfix) + sink.as_maillog(), key=lambda item: item[0])
    print("\n--- mail.log ---")
    for _when, line in merged:
        print(line)
    print("--- delivered headers ---")
    print(head)
    print("--- /metrics (smtpguard_) ---")
    shown = ("smtpguard_transactions_total", "smtpguard_sessions", "smtpguard_dns_lookups_total")
    for line in text.splitlines():
        if line.startswith((*shown, "smtpguard_build", 'smtpguard_check_verdicts_total{check="s')):
            print(line)
    print("--- promtool check metrics: exit", check.returncode, repr(check.stdout + check.stderr))
