"""End of message slower than Postfix's milter_content_timeout, through a real Postfix:
Postfix answers the client itself (its default_action, 451 4.7.1) and closes the
milter connection; smtpguard's summary must say the transaction was cut, not the
verdict nobody received (review rev212 F1: it said accept, or reject for spam).

The slow part is an anti-spam engine that takes connections and never answers (a
listening socket nobody accepts on: the kernel completes the connection and buffers
what smtpguard sends), with ``[checks.antispam] on_temp_error = "pass"``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemons import GTUBE
from support.polling import poll_for
from support.postfix import Postfix, client, reload_postfix, start_postfix
from support.service import Running, make_site, running

pytestmark = pytest.mark.integration

UNTRUSTED = {"addr": "198.51.100.7", "name": "mail.sender.example", "helo": "mail.sender.example"}
HEADERS = (
    "From: <slow{n}@sender.example>\r\nTo: <alice@example.com>\r\n"
    "Subject: slow {n}\r\nMessage-ID: <slow{n}@sender.example>\r\n"
    "Date: Mon, 07 Dec 2026 10:00:00 +0000\r\n"
)


@pytest.fixture(scope="module")
def engine() -> Iterator[int]:
    """A TCP port that takes connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.fixture(scope="module")
def stack(engine: int) -> Iterator[tuple[Running, Postfix]]:
    root = Path(tempfile.mkdtemp(prefix="smtpguard-gaveup-"))
    root.chmod(0o755)
    site = make_site(
        root,
        {
            "milter": {"socket_group": "postfix", "socket_mode": "0660"},
            "antispam": {
                "engine": "rspamd",
                "engine_socket": f"inet:127.0.0.1:{engine}",
                "engine_timeout": 3.0,
            },
            "checks": {"antispam": {"on_temp_error": "pass"}},
        },
    )
    with running(site) as service, start_postfix(site.config) as postfix:
        yield service, postfix


def _content_timeout(postfix: Postfix, seconds: int) -> None:
    """smtpguard's smtpd_milters entry with another content_timeout."""
    postconf = ["postconf", "-c", str(postfix.config_dir)]
    milters = subprocess.run(
        [*postconf, "-h", "smtpd_milters"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    changed = re.sub(r"content_timeout=\d+s", f"content_timeout={seconds}s", milters)
    assert changed != milters or f"content_timeout={seconds}s" in milters, milters
    subprocess.run([*postconf, "-e", f"smtpd_milters={changed}"], check=True, timeout=30)
    reload_postfix(postfix)


def _send(postfix: Postfix, n: int, body: str) -> tuple[int, str]:
    with client(postfix, UNTRUSTED) as c:
        assert c.cmd(f"MAIL FROM:<slow{n}@sender.example>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        reply = c.data((HEADERS.format(n=n) + "\r\n" + body).encode())
    return reply.code, " ".join(reply.lines)


def _summary(service: Running, n: int) -> str:
    """The summary line of message ``n`` (its sender is slow{n}@)."""

    def found() -> str | None:
        lines = service.log().splitlines()
        mine = (line for line in lines if " summary " in line and f" from=<slow{n}@" in line)
        return next(mine, None)

    return poll_for(found, deadline=20.0, what=service.log)


def test_a_verdict_postfix_gave_up_on_is_logged_as_cut(
    stack: tuple[Running, Postfix],
) -> None:
    service, postfix = stack
    _content_timeout(postfix, 1)
    # Postfix waits one second, then answers by its default_action (tempfail).
    code, text = _send(postfix, 0, "hello\r\n")
    assert text == "451 4.7.1 Service unavailable - try again later", text
    summary = _summary(service, 0)
    assert "outcome=abort" in summary, summary
    assert "unanswered=accept" in summary, summary
    assert "the MTA gave up waiting for this message's verdict (accept)" in service.log()
    # Spam refused by the built-in rules: the client was deferred, not refused.
    code, text = _send(postfix, 1, GTUBE.decode() + "\r\n")
    assert code == 451, text
    summary = _summary(service, 1)
    assert "outcome=abort" in summary, summary
    assert "unanswered=reject/antispam_reject" in summary, summary
    assert "outcome=reject" not in summary
    # No traceback or header edit attempted past the MTA's timeout.
    assert "no longer takes this message's header fields" not in service.log()
    assert "Traceback" not in service.log()


def test_a_slow_verdict_postfix_still_waits_for_is_delivered(
    stack: tuple[Running, Postfix],
) -> None:
    """The probe (SMFIR_PROGRESS) is harmless to an MTA that still waits: Postfix reads
    it as "still working" and takes the answer that follows."""
    service, postfix = stack
    _content_timeout(postfix, 30)
    code, text = _send(postfix, 2, "hello again\r\n")
    assert code == 250, text
    summary = _summary(service, 2)
    assert "outcome=accept" in summary, summary
    assert "unanswered" not in summary, summary
    assert "rspamd=failed" in summary, summary
