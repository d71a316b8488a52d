"""``explain --log`` on what a real Postfix 3.7 writes when a message expires.

A message for an unreachable destination is deferred until ``maximal_queue_lifetime``;
Postfix then logs one ``status=expired, returned to sender`` line naming neither its
recipients nor a reason, and sends the sender a DSN whose blocks say ``Action: failed``
with the last 4xx ``Status``. Its log and its DSN must tell the same story: each
recipient bounced, permanently, with a fix that does not say "wait" (review rev98 F1,
F4), and qmgr's deferrals of a destination already known to be down (``delivery
temporarily suspended``), which attempted nothing, not counted (F5).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.polling import wait_until
from support.postfix import client, free_port, postfix_cmd, start_postfix
from support.service import ROOT

pytestmark = pytest.mark.integration


def _explain_log(source: Path) -> tuple[list[dict[str, object]], dict[str, object]]:
    """The events and the summary ``explain --log SOURCE --events --json`` prints."""
    done = subprocess.run(
        [sys.executable, "-m", "smtpguard", "explain", "--log", str(source), "--events", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    *events, summary = (json.loads(line) for line in done.stdout.splitlines())
    return events, summary


def test_an_expired_message_is_a_bounce_in_the_log_and_in_its_dsn(tmp_path: Path) -> None:
    refused = free_port()
    extra = f"""
transport_maps = inline:{{ down.test=smtp:[127.0.0.1]:{refused}, ours.test=capture: }}
smtp_tls_security_level = none
maximal_queue_lifetime = 6s
bounce_queue_lifetime = 6s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s
"""
    postfix = start_postfix(
        ROOT / "conf" / "smtpguard.toml", extra, attach=False, networks="127.0.0.0/8"
    )
    try:
        smtp = client(postfix)
        assert smtp.cmd("MAIL FROM:<sender@ours.test>").code == 250
        for rcpt in ("a@down.test", "b@down.test"):
            assert smtp.cmd(f"RCPT TO:<{rcpt}>").code == 250
        assert smtp.cmd("DATA").code == 354
        assert smtp.cmd("Subject: t\r\n\r\nhello\r\n.").code == 250
        smtp.cmd("QUIT")

        def returned() -> bool:
            postfix_cmd(postfix.config_dir, "flush", check=False)
            return "status=expired" in postfix.maillog() and bool(postfix.delivered_messages())

        wait_until(returned, deadline=60)
        log = tmp_path / "mail.log"
        log.write_text(postfix.maillog(), encoding="utf-8")
        dsn = tmp_path / "dsn"
        dsn.mkdir()
        for name, data in postfix.delivered_messages().items():
            (dsn / name).write_bytes(data)
    finally:
        postfix.stop()

    (log_events, from_log), (dsn_events, _) = _explain_log(log), _explain_log(dsn)
    assert from_log["expired"] == 1
    for events in (log_events, dsn_events):
        bounced = [e for e in events if e["status"] == "bounced"]
        assert sorted(str(e["recipient"]) for e in bounced) == ["a@down.test", "b@down.test"]
        assert {(e["category"], e["fix"], e["permanent"]) for e in bounced} == {
            ("network", "contact_postmaster", True)
        }
    deferrals = log.read_text(encoding="utf-8").count("status=deferred")
    suspended = log.read_text(encoding="utf-8").count("delivery temporarily suspended")
    assert from_log["suspended"] == suspended
    assert from_log["deferred"] == deferrals - suspended
