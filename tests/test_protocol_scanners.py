"""virus_found, antispam_reject and same_size_flood through real milter sessions, with
the real clamd, rspamd and Redis behind them, and their fault cases."""

from __future__ import annotations

import base64
import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from miltertest import constants as C

from smtpguard.pipeline import ASK_MTA_AFTER
from support.daemons import (
    ACTION_SUBJECT,
    EICAR,
    GTUBE,
    SOFT_REJECT_SUBJECT,
    Clamd,
    RedisServer,
    Rspamd,
    start_clamd,
    start_redis,
)
from support.mtclient import Answer, MilterSession, assert_reply
from support.polling import holds_for, wait_until
from support.service import (
    TRUSTED_IP,
    UNTRUSTED_IP,
    Running,
    Site,
    make_site,
    merge,
    running,
    smtpguard,
)

pytestmark = pytest.mark.integration

HEADERS = [
    ("From", "Friend <friend@sender.example>"),
    ("To", "alice@example.com"),
    ("Subject", "hello"),
    ("Message-ID", "<s000000@sender.example>"),
]
#: Each message delivered gets a Message-ID of its own, of the same length: one Message-ID
#: to the same recipients again is a retry to the same-size count (checks/bulk.py).
_MESSAGE_IDS = itertools.count(1)


def accepted(answer: Answer) -> bool:
    return answer.kind in ("continue", "accept")


def deliver(
    service: Running,
    body: str | bytes,
    headers: list[tuple[str, str]] = HEADERS,
    sender: str = "friend@sender.example",
    ip: str = UNTRUSTED_IP,
    esmtp: tuple[str, ...] = (),
    recipient: str = "alice@example.com",
) -> tuple[Answer, list[tuple[str, dict[str, str]]]]:
    fresh = f"<s{next(_MESSAGE_IDS):06d}@sender.example>"
    headers = [(n, fresh if n == "Message-ID" else v) for n, v in headers]
    with service.session() as s:
        s.connect(ip)
        s.helo("mail.sender.example")
        mail = s.mail(f"<{sender}>", *esmtp)
        if mail.kind != "continue":
            return mail, []
        assert s.rcpt(f"<{recipient}>").kind == "continue"
        final, mods, _early = s.message(headers, body)
        return final, mods


# --- virus ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    daemon = start_clamd(tmp_path_factory.mktemp("clamd"), stream_max_length=4 * 1024 * 1024)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def virus_service(clamd: Clamd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    extra = {"virus": {"backend": "clamd", "clamd_socket": f"unix:{clamd.socket}"}}
    with running(make_site(tmp_path_factory.mktemp("virus"), extra)) as svc:
        yield svc


def test_virus_found_in_body(virus_service: Running) -> None:
    final, _ = deliver(virus_service, b"here it comes:\r\n" + EICAR + b"\r\n")
    assert_reply(final, "virus_found")
    log = virus_service.log()
    assert "Smtpguard.Test.EICAR" in log  # the name is logged, never sent
    assert "EICAR" not in final.text


def test_a_virus_for_postmaster_is_refused_by_default(virus_service: Running) -> None:
    """Review rev188 F1: postmaster_skip's default ("all-content") skipped the scan,
    and malware addressed to postmaster@ reached the admin."""
    final, _ = deliver(virus_service, EICAR + b"\r\n", recipient="postmaster@example.com")
    assert_reply(final, "virus_found")


def test_virus_found_in_base64_attachment(virus_service: Running) -> None:
    data = base64.encodebytes(EICAR).decode().replace("\n", "\r\n")
    headers = [*HEADERS, ("MIME-Version", "1.0"), ("Content-Type", "multipart/mixed; boundary=b")]
    body = (
        "--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        "--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="x.com"\r\n\r\n{data}--b--\r\n'
    )
    final, _ = deliver(virus_service, body, headers)
    assert_reply(final, "virus_found")


def test_virus_after_the_first_chunk(virus_service: Running) -> None:
    body = b"".join(b"clean line %d\r\n" % i for i in range(20_000)) + EICAR + b"\r\n"
    assert len(body) > 3 * 65535
    final, _ = deliver(virus_service, body)
    assert_reply(final, "virus_found")


def test_clean_message_passes_the_scanner(virus_service: Running) -> None:
    final, _ = deliver(virus_service, "Hello Alice.\r\n" * 100)
    assert accepted(final)


def assert_outage_lines_are_info(log: str) -> None:
    """The message that found the scanner hung has its WARNING decision line; those
    failed without asking during the outage, which is logged once, are INFO (review
    rev88 N8: a WARNING each)."""
    decisions = [line for line in log.splitlines() if " decision " in line]
    unasked = [line for line in decisions if "not asked, gave no answer" in line]
    assert unasked
    assert all(" INFO " in line for line in unasked), unasked
    assert any(" WARNING " in line for line in decisions if line not in unasked)


def test_a_hung_clamd_is_not_waited_for_by_every_message(clamd: Clamd, tmp_path: Path) -> None:
    """The virus scanner's side of review rev86 F1: every message waited for a hung
    clamd (SIGSTOP) for its timeout, and the sessions piled up."""
    extra = {
        "virus": {"backend": "clamd", "clamd_socket": f"unix:{clamd.socket}", "timeout": 1.0},
        "checks": {"bulk": {"mode": "off"}},  # the same message, many times
    }
    with running(make_site(tmp_path / "site", extra)) as service:
        assert accepted(deliver(service, "Hello Alice.\r\n")[0])
        clamd.process.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            assert_reply(deliver(service, "Hello Alice.\r\n")[0], "internal_error")
            assert time.monotonic() - start >= 1.0  # this one asked, and waited
            # Its verdict timed out: a canary scan tells a hung clamd from a slow message.
            wait_until(lambda: "gave no answer (timed out" in service.log())
            for _ in range(3):
                start = time.monotonic()
                assert_reply(deliver(service, "Hello Alice.\r\n")[0], "internal_error")
                assert time.monotonic() - start < 0.5  # these did not
        finally:
            clamd.process.send_signal(signal.SIGCONT)
        engine = f"clamd at unix:{clamd.socket}"
        assert service.log().count(f"virus scanner {engine} gave no answer") == 1
        assert service.log().count(f"{engine}: not asked, gave no answer (timed out") == 3
        assert_outage_lines_are_info(service.log())

        def scanned() -> bool:
            return accepted(deliver(service, "Hello Alice.\r\n")[0])

        wait_until(scanned, deadline=15)
        assert f"virus scanner {engine} answering again after" in service.log()


@pytest.mark.parametrize(("policy", "expected"), [("tempfail", "internal_error"), ("pass", None)])
def test_scanner_down(tmp_path: Path, policy: str, expected: str | None) -> None:
    extra = {
        "virus": {"backend": "clamd", "clamd_socket": f"unix:{tmp_path}/no-clamd.sock"},
        "checks": {"virus": {"on_temp_error": policy}},
    }
    with running(make_site(tmp_path / "site", extra)) as service:
        final, _ = deliver(service, "Hello\r\n")
        log = service.log()
    if expected is None:
        assert accepted(final)
    else:
        assert_reply(final, expected)
    assert "scanner failed" in log


def hook_site(tmp_path: Path, script: str, timeout: float, **checks: Any) -> Site:
    """A site whose virus scanner is the shell ``script`` (after its #! line) as the
    command hook; ``checks``: [checks.NAME] tables."""
    hook = tmp_path / "scan.sh"
    hook.write_text("#!/bin/sh\n" + script)
    hook.chmod(0o755)
    extra: dict[str, Any] = {
        "virus": {"backend": "command", "command": [str(hook)], "timeout": timeout}
    }
    if checks:
        extra["checks"] = checks
    return make_site(tmp_path / "site", extra)


def test_command_hook(tmp_path: Path) -> None:
    # A progress line first; exit 1 and "NAME FOUND" when the marker is in the message;
    # a failing step under set -e exits 1 too, with the progress line on stdout.
    script = (
        'set -e\necho "checking $$"\ninput=$(cat)\n'
        'case "$input" in *BADSTUFF*) echo "stream: Test.Marker FOUND"; exit 1;; esac\n'
        'case "$input" in *BROKEN*) false;; esac\nexit 0\n'
    )
    with running(hook_site(tmp_path, script, 10)) as service:
        final, _ = deliver(service, "some BADSTUFF here\r\n")
        assert_reply(final, "virus_found")
        final, _ = deliver(service, "all fine\r\n")
        assert accepted(final)
        assert "Test.Marker" in service.log()
        # Review rev49: this was a permanent 552 Virus found.
        final, _ = deliver(service, "BROKEN hook\r\n")
        assert_reply(final, "internal_error")
        assert "exit status 1 without a 'NAME FOUND' line on stdout" in service.log()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hook_starts_with_the_signals_at_their_defaults(tmp_path: Path, workers: int) -> None:
    """Review rev194 F3: a worker ignores SIGHUP, SIGTERM and SIGINT (its supervisor
    takes them), and libmilter's threads block them; both survive exec, so a hook's
    ``trap ... TERM`` did nothing and a TERM to its own child was lost. The hook starts
    as from a shell: none of them ignored, none blocked."""
    status = tmp_path / "status"
    script = f"grep -E '^Sig(Blk|Ign):' /proc/self/status > {status}\ncat >/dev/null\nexit 0\n"
    site = hook_site(tmp_path, script, 10)
    config = site.config.read_text(encoding="utf-8")
    site.config.write_text(config.replace("workers = 1", f"workers = {workers}"), encoding="utf-8")
    with running(site) as service:
        final, _ = deliver(service, "all fine\r\n")
        assert accepted(final)
    masks = dict(line.split(":") for line in status.read_text().splitlines())
    assert set(masks) == {"SigBlk", "SigIgn"}
    operator = (1 << (signal.SIGHUP - 1)) | (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    for name, mask in masks.items():
        assert int(mask, 16) & operator == 0, f"{name} {mask.strip()}"


def test_a_hung_command_hook_is_not_waited_for_by_every_message(tmp_path: Path) -> None:
    """Review rev92 F1: a hook that hung (a clamdscan whose clamd stopped) held every
    message for its timeout, with no limit: the sessions and the hook processes piled
    up, and a third of the mail got 450 queue_unavailable under on_temp_error = "pass".
    Now a canary run tells a hung hook from a message slow to scan, and the hook is
    run again only every 5 s."""
    runs, works = tmp_path / "runs", tmp_path / "works"
    script = f"echo run >> {runs}\ncat >/dev/null\n[ -e {works} ] && exit 0\nexec sleep 3600\n"
    site = hook_site(tmp_path, script, 1.0, virus={"on_temp_error": "pass"}, bulk={"mode": "off"})
    hook = tmp_path / "scan.sh"
    with running(site) as service:
        start = time.monotonic()
        assert accepted(deliver(service, "Hello Alice.\r\n")[0])
        assert time.monotonic() - start >= 1.0  # this one ran the hook, and waited
        wait_until(lambda: "gave no answer (" in service.log())
        assert runs.read_text().count("run") == 2  # the message's run, the canary's
        for _ in range(3):
            start = time.monotonic()
            assert accepted(deliver(service, "Hello Alice.\r\n")[0])
            assert time.monotonic() - start < 0.5  # these did not
        assert runs.read_text().count("run") == 2
        log = service.log()
        where = f"command {hook}"
        assert log.count(f"virus scanner {where} gave no answer ({hook} timed out after 1 s") == 1
        assert "a canary scan: " in log
        assert log.count(f"{where}: not asked, gave no answer (") == 3
        assert_outage_lines_are_info(log)

        works.touch()  # the hook answers again: a message asks after the interval

        def scanned() -> bool:
            assert accepted(deliver(service, "Hello Alice.\r\n")[0])
            return f"virus scanner {where} answering again after" in service.log()

        wait_until(scanned, deadline=15)


def test_a_hook_slow_on_one_message_keeps_scanning_the_others(tmp_path: Path) -> None:
    """Review rev92 F1's other side: the canary finds the hook working, so one slow (or
    crafted) message opens no outage, and the next message is scanned."""
    script = (
        'input=$(cat)\ncase "$input" in *SLOW*) exec sleep 3600;; esac\n'
        'case "$input" in *BADSTUFF*) echo "stream: Test.Marker FOUND"; exit 1;; esac\n'
        "exit 0\n"
    )
    with running(hook_site(tmp_path, script, 1.0)) as service:
        assert_reply(deliver(service, "SLOW to scan\r\n")[0], "internal_error")
        # The canary, given at least 2 s, would have said so by then.
        holds_for(lambda: "gave no answer" not in service.log(), 3.0)
        assert_reply(deliver(service, "some BADSTUFF here\r\n")[0], "virus_found")


def test_a_hook_naming_a_virus_the_old_way_is_deferred_where_outages_pass(
    tmp_path: Path,
) -> None:
    """Review rev51: a hook printing a bare name with exit 1 (before 64bc7ca, a virus)
    became a scanner error, which on_temp_error = "pass" accepted."""
    script = 'cat >/dev/null\necho "Eicar-Test-Signature"\nexit 1\n'
    with running(hook_site(tmp_path, script, 10, virus={"on_temp_error": "pass"})) as service:
        # Every message, not the first alone (review rev94 F3: the canary failed the same
        # way, opened an outage, and the messages after it passed unscanned).
        for _ in range(3):
            final, _mods = deliver(service, "some text\r\n")
            assert_reply(final, "internal_error")
        assert "without a 'NAME FOUND' line on stdout" in service.log()
        assert "gave no answer" not in service.log()


@pytest.mark.parametrize(("choice", "expected"), [("pass", None), ("tempfail", "internal_error")])
def test_a_message_over_max_bytes(
    clamd: Clamd, tmp_path: Path, choice: str, expected: str | None
) -> None:
    """on_size_limit decides, also where a scanner outage passes; a pass is logged
    (review rev49: "tempfail" passed and "pass" left no trace)."""
    extra = {
        "virus": {
            "backend": "clamd",
            "clamd_socket": f"unix:{clamd.socket}",
            "max_bytes": 4096,
            "on_size_limit": choice,
        },
        "checks": {"virus": {"on_temp_error": "pass"}},
    }
    with running(make_site(tmp_path / "site", extra)) as service:
        final, _ = deliver(service, "Hello Alice.\r\n" * 1000)
        log = service.log()
    if expected is None:
        assert accepted(final)
        assert "partly scanned, passed (on_size_limit = pass): message over max_bytes=4096" in log
    else:
        assert_reply(final, expected)
        assert "too large to scan" in log


# --- anti-spam ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running(make_site(tmp_path_factory.mktemp("rules"), {})) as svc:
        yield svc


def test_builtin_rules_reject_gtube(rules_service: Running) -> None:
    final, _ = deliver(rules_service, b"test\r\n" + GTUBE + b"\r\n")
    assert_reply(final, "antispam_reject")


def test_builtin_rules_add_spam_headers_between_thresholds(rules_service: Running) -> None:
    headers = [
        ("From", "promo@sender.example"),
        ("To", "alice@example.com"),
        ("Subject", "Congratulations, you have won"),
        ("X-Mailer", "Mass Mail Pro 3"),
    ]
    body = "You are the winner of our lottery! Claim ten million dollars today.\r\n"
    final, mods = deliver(rules_service, body, headers)
    assert accepted(final)
    added = {m[1]["name"]: m[1]["value"] for m in mods if m[0] == "h"}
    assert added["X-Spam-Flag"] == "YES"
    assert 6.0 <= float(added["X-Spam-Score"]) < 15.0


@pytest.mark.parametrize(
    ("recipient", "scores"), [("bob@elsewhere.example", False), ("alice@example.com", True)]
)
def test_our_users_spam_that_leaves_is_flagged_without_its_scores(
    rules_service: Running, recipient: str, scores: bool
) -> None:
    """Review rev188 F5, rev192 F1: a trusted client's mail to other domains carried
    its score and rule names; to our own mailboxes they stay, for Sieve's spamtest."""
    headers = [
        ("From", "alice@example.com"),
        ("To", recipient),
        ("Subject", "Congratulations, you have won"),
        ("X-Mailer", "Mass Mail Pro 3"),
    ]
    body = "You are the winner of our lottery! Claim ten million dollars today.\r\n"
    final, mods = deliver(
        rules_service, body, headers, "alice@example.com", TRUSTED_IP, recipient=recipient
    )
    assert accepted(final)
    added = {m[1]["name"]: m[1]["value"] for m in mods if m[0] == "h"}
    assert added["X-Spam-Flag"] == "YES"
    for name in ("X-Spam-Score", "X-Spam-Status", "X-Spam-Report"):
        assert (name in added) is scores, name


@pytest.mark.parametrize(
    "subject", ["=?é?q?x?=", "=?中?b?eA==?= hello", "\r\n ".join(["=?a?b?c " * 100] * 20)]
)
def test_no_subject_switches_the_rules_off(rules_service: Running, subject: str) -> None:
    """Review rev66 F1 and F2: an encoded word of a charset Python cannot name made the
    rules raise, and with the check's on_temp_error = "pass" GTUBE was accepted; 16 kB of
    unclosed openings took a quarter of a second to decode (quadratic)."""
    headers = [(name, subject if name == "Subject" else value) for name, value in HEADERS]
    started = time.monotonic()
    final, _ = deliver(rules_service, b"test\r\n" + GTUBE + b"\r\n", headers)
    assert_reply(final, "antispam_reject")
    assert time.monotonic() - started < 5
    assert "Traceback" not in rules_service.log()


def test_clean_mail_gets_no_spam_header(rules_service: Running) -> None:
    final, mods = deliver(rules_service, "Lunch tomorrow?\r\n")
    assert accepted(final)
    added = {m[1]["name"]: m[1]["value"] for m in mods if m[0] == "h"}
    assert "X-Spam-Flag" not in added
    assert "X-Spam-Score" not in added
    # The status says what was found (nothing) and against which threshold.
    assert added["X-Spam-Status"] == "No, score=0.0 required=6.0 tests=none"
    assert "X-Spam-Report" not in added


@pytest.fixture(scope="module")
def rspamd_service(rspamd: Rspamd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    extra = {
        "antispam": {"engine": "rspamd", "engine_socket": f"inet:127.0.0.1:{rspamd.port}"},
        # The built-in rules alone would already refuse GTUBE; raise their weight out
        # of the way to prove rspamd's verdict is used.
        "checks": {"antispam": {"on_temp_error": "pass"}},
    }
    with running(make_site(tmp_path_factory.mktemp("rspamd-svc"), extra)) as svc:
        yield svc


def test_rspamd_rejects_gtube(rspamd_service: Running) -> None:
    final, _ = deliver(rspamd_service, b"Subject line\r\n" + GTUBE + b"\r\n")
    assert_reply(final, "antispam_reject")
    assert "rspamd" in rspamd_service.log()


def test_rspamd_passes_clean_mail(rspamd_service: Running) -> None:
    final, _ = deliver(rspamd_service, "Hi Alice, see you at lunch.\r\n" * 3)
    assert accepted(final)


def test_rspamd_soft_reject_defers_the_message(rspamd_service: Running) -> None:
    """rspamd's ratelimit and greylist modules answer "soft reject"; with engine_action
    (the default) the message is deferred, although this service lets an engine
    outage pass (review rev49: it was accepted)."""
    headers = [(k, SOFT_REJECT_SUBJECT if k == "Subject" else v) for k, v in HEADERS]
    final, _ = deliver(rspamd_service, "Hi Alice, see you at lunch.\r\n", headers)
    assert_reply(final, "database_temp_error")
    assert "rspamd action soft reject" in rspamd_service.log()


@pytest.mark.parametrize("action", ["discard", "quarantine"])
def test_rspamd_discard_refuses_and_quarantine_tags(rspamd_service: Running, action: str) -> None:
    """Review rev188 F2: rspamd's own milter discards or quarantines such a message; it
    was delivered as "X-Spam-Status: No". A discard is refused (never dropped unsaid),
    a quarantine delivered marked as spam."""
    subject = f"{ACTION_SUBJECT}{action}"
    headers = [(k, subject if k == "Subject" else v) for k, v in HEADERS]
    final, mods = deliver(rspamd_service, "Hi Alice, see you at lunch.\r\n", headers)
    if action == "discard":
        assert_reply(final, "antispam_reject")
        assert "rspamd action discard" in rspamd_service.log()
        return
    assert accepted(final)
    added = {args["name"]: args["value"] for _kind, args in mods if "name" in args}
    assert added["X-Spam-Flag"] == "YES"
    assert added["X-Spam-Status"].startswith("Yes,")
    assert "/quarantine" in added["X-Spam-Status"]


@pytest.mark.parametrize(("choice", "expected"), [("pass", None), ("tempfail", "internal_error")])
def test_a_message_over_engine_max_bytes(
    rspamd: Rspamd, tmp_path: Path, choice: str, expected: str | None
) -> None:
    """Review rev120 F3: a message too large for the engine skipped it even where the
    site fails closed on the engine. on_size_limit decides (also where on_temp_error
    passes an outage); a pass is logged; what the rules refuse is refused for good."""
    extra = {
        "antispam": {
            "engine": "rspamd",
            "engine_socket": f"inet:127.0.0.1:{rspamd.port}",
            "engine_max_bytes": 4096,
            "on_size_limit": choice,
        },
        "checks": {"antispam": {"on_temp_error": "pass"}},
    }
    with running(make_site(tmp_path / "site", extra)) as service:
        final, mods = deliver(service, "Hello Alice.\r\n" * 1000)
        if expected is None:
            assert accepted(final)
            assert "tests=rspamd=skipped/over_engine_max_bytes" in x_spam_status(mods)
            assert "(on_size_limit = pass): over engine_max_bytes=4096" in service.log()
        else:
            assert_reply(final, expected)
            assert "too large for the spam engine: over engine_max_bytes" in service.log()
        final, _ = deliver(service, b"x\r\n" + GTUBE + b"\r\n" + b"Hello Alice.\r\n" * 1000)
        assert_reply(final, "antispam_reject")


def test_engine_down_passes_by_default(tmp_path: Path) -> None:
    extra = {"antispam": {"engine": "rspamd", "engine_socket": "inet:127.0.0.1:9"}}
    with running(make_site(tmp_path / "site", extra)) as service:
        final, mods = deliver(service, "Hello\r\n")
        assert accepted(final)
        # Marked as scored without the engine (review rev73 F1: "tests=none" read like
        # a message rspamd had passed).
        status = [m[1]["value"] for m in mods if m[1].get("name") == "X-Spam-Status"]
        assert status == ["No, score=0.0 required=6.0 tests=rspamd=failed"]
        final, _ = deliver(service, b"x\r\n" + GTUBE + b"\r\n")  # built-in rules still work
        assert_reply(final, "antispam_reject")
        assert "spam engine" in service.log()


def x_spam_status(mods: list[tuple[str, dict[str, str]]]) -> str:
    (status,) = [m[1]["value"] for m in mods if m[1].get("name") == "X-Spam-Status"]
    return status


def test_a_hung_engine_is_not_waited_for_by_every_message(rspamd: Rspamd, tmp_path: Path) -> None:
    """Review rev86 F1: every message waited for a hung rspamd (SIGSTOP) up to twice
    engine_timeout, the sessions piled up and max_sessions deferred mail that
    on_temp_error = "pass" lets through."""
    extra = {
        "antispam": {
            "engine": "rspamd",
            "engine_socket": f"inet:127.0.0.1:{rspamd.port}",
            "engine_timeout": 1.0,
        },
        "checks": {"bulk": {"mode": "off"}},  # the same message, many times
    }
    with running(make_site(tmp_path / "site", extra)) as service:
        assert "rspamd=" in x_spam_status(deliver(service, "Hi Alice.\r\n")[1])
        rspamd.pause()
        try:
            start = time.monotonic()
            final, mods = deliver(service, "Hi Alice.\r\n")
            assert accepted(final)
            assert x_spam_status(mods).endswith("tests=rspamd=failed")
            assert time.monotonic() - start >= 1.0  # this one asked, and waited
            # Its answer timed out: a canary scan tells a hung engine from a slow message.
            wait_until(lambda: "gave no answer (timed out" in service.log())
            for _ in range(3):
                start = time.monotonic()
                final, mods = deliver(service, "Hi Alice.\r\n")
                assert accepted(final)
                assert x_spam_status(mods).endswith("tests=rspamd=failed")
                assert time.monotonic() - start < 0.5  # these did not
        finally:
            rspamd.resume()
        engine = f"rspamd at inet:127.0.0.1:{rspamd.port}"
        assert service.log().count(f"spam engine {engine} gave no answer (timed out") == 1
        assert service.log().count(f"{engine}: not asked, gave no answer (timed out") == 3
        assert_outage_lines_are_info(service.log())

        # Asked again after the retry interval (5 s) by one message, and scored.
        def scored() -> bool:
            return "rspamd=failed" not in x_spam_status(deliver(service, "Hi Alice.\r\n")[1])

        wait_until(scored, deadline=15)
        assert f"spam engine {engine} answering again after" in service.log()


# --- same-size bulk -------------------------------------------------------------------

BULK = {"bulk": {"threshold": 3, "window": 600}}


def test_same_size_flood_in_process(tmp_path: Path) -> None:
    with running(make_site(tmp_path / "site", BULK)) as service:
        for i in range(3):
            final, _ = deliver(service, f"Offer number {i:04d}\r\n" * 40)
            assert accepted(final), i
        final, _ = deliver(service, "Offer number 9999\r\n" * 40)
        assert_reply(final, "same_size_flood")
        # A different sender, or a very different size, is not affected.
        final, _ = deliver(service, "Offer number 9999\r\n" * 40, sender="other@sender.example")
        assert accepted(final)
        final, _ = deliver(service, "Offer number 9999\r\n" * 400)
        assert accepted(final)
        # Declared early: SIZE= near the flooded size is refused before DATA. The
        # default postmaster exemption skips "bulk", so the verdict found at MAIL FROM
        # is held and answered at each recipient that is not postmaster@.
        with service.session() as s:
            s.connect(UNTRUSTED_IP)
            s.helo("mail.sender.example")
            size = sum(len(n) + len(v) + 4 for n, v in HEADERS) + 2 + 19 * 40
            assert s.mail("<friend@sender.example>", f"SIZE={size}").kind == "continue"
            assert_reply(s.rcpt("<alice@example.com>"), "same_size_flood")
        # One IPv6 host rotating its privacy addresses is one sender (review rev167 F1).
        v6 = "v6@sender.example"
        for i in range(3):
            final, _ = deliver(
                service, "Offer number 1\r\n" * 40, sender=v6, ip=f"2001:db8:0:1::a{i}"
            )
            assert accepted(final), i
        final, _ = deliver(service, "Offer number 1\r\n" * 40, sender=v6, ip="2001:db8:0:1::bb")
        assert_reply(final, "same_size_flood")
        final, _ = deliver(service, "Offer number 1\r\n" * 40, sender=v6, ip="2001:db8:0:2::bb")
        assert accepted(final)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_retried_message_counts_once(tmp_path: Path, workers: int) -> None:
    """Review rev93 F3: a message that a later milter greylisted counted at each retry
    (Postfix tells an earlier milter nothing), and its next attempt was refused for
    good. The same Message-ID to the same recipients again is a retry, counted once,
    up to three times; on either counter (one process's, the workers' shared file)."""
    site = make_site(tmp_path / "site", merge(BULK, {"milter": {"workers": workers}}))
    retried = [(n, "<retried@sender.example>" if n == "Message-ID" else v) for n, v in HEADERS]

    def attempt() -> Answer:
        with service.session() as s:
            s.connect(UNTRUSTED_IP)
            s.helo("mail.sender.example")
            assert s.mail("<friend@sender.example>").kind == "continue"
            assert s.rcpt("<alice@example.com>").kind == "continue"
            final, _mods, _early = s.message(retried, "Offer 0000\r\n" * 40)
            return final

    with running(site) as service:
        for _ in range(4):  # the first attempt and three retries
            assert accepted(attempt())
        for i in range(2):  # two other messages: three in all
            assert accepted(deliver(service, f"Offer {i + 1:04d}\r\n" * 40)[0])
        assert_reply(deliver(service, "Offer 0009\r\n" * 40)[0], "same_size_flood")
        assert_reply(attempt(), "same_size_flood")  # a fifth attempt counts


@pytest.mark.parametrize("sender", ["<alice@example.com>", "<>", "<alice+{i}@example.com>"])
def test_same_size_flood_counts_an_authenticated_sender(tmp_path: Path, sender: str) -> None:
    """A stolen password is the classic same-size flood: logging in exempts nothing,
    with the null sender either (review rev211 F1: MAIL FROM:<> went uncounted), nor
    with a new address extension each time (review rev222 F1: each counted apart)."""
    alice = {"{auth_authen}": "alice@example.com", "{auth_type}": "PLAIN"}

    def submit(i: int) -> Answer:
        with service.session() as s:
            s.connect(UNTRUSTED_IP)
            s.helo("laptop.example.net", macros={"{tls_version}": "TLSv1.3"})
            assert s.mail(sender.format(i=i), macros=alice).kind == "continue"
            assert s.rcpt("<friend@elsewhere.example>").kind == "continue"
            headers = [(n, f"<i{i}@example.com>" if n == "Message-ID" else v) for n, v in HEADERS]
            final, _mods, _early = s.message(headers, f"Invoice {i:04d}\r\n" * 40)
            return final

    with running(make_site(tmp_path / "site", BULK)) as service:
        for i in range(3):
            assert accepted(submit(i)), i
        assert_reply(submit(9), "same_size_flood")


def test_bounces_are_not_counted_but_a_null_sender_to_several_recipients_is(
    tmp_path: Path,
) -> None:
    """Review rev209: one MX returning a newsletter's bounces got 552 from the 21st on;
    review rev211 F2: a null sender to several recipients is no bounce, and counts."""

    def send(recipients: list[str], i: int) -> Answer:
        with service.session() as s:
            s.connect(UNTRUSTED_IP)
            s.helo("mx.receiver.example")
            assert s.mail("<>").kind == "continue"
            for rcpt in recipients:
                assert s.rcpt(rcpt).kind == "continue"
            headers = [
                (n, f"<b{i}@receiver.example>" if n == "Message-ID" else v) for n, v in HEADERS
            ]
            final, _mods, _early = s.message(headers, f"Undeliverable {i:04d}\r\n" * 40)
            return final

    with running(make_site(tmp_path / "site", BULK)) as service:
        for i in range(6):
            assert accepted(send(["<alice@example.com>"], i)), i
        two = ["<alice@example.com>", "<sales@example.com>"]
        for i in range(3):
            assert accepted(send(two, 10 + i)), i
        assert_reply(send(two, 19), "same_size_flood")
        # A bounce from that client still passes.
        assert accepted(send(["<alice@example.com>"], 20))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def redis_site(tmp: Path, server: RedisServer, on_error: str = "error") -> dict[str, Any]:
    return {
        **BULK,
        "state": {
            "backend": "redis",
            "redis_url": server.url,
            "on_redis_error": on_error,
            "timeout": 0.5,
        },
    }


def test_two_instances_share_one_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    extra = redis_site(tmp_path, redis_server)
    with (
        running(make_site(tmp_path / "a", extra)) as a,
        running(make_site(tmp_path / "b", extra)) as b,
    ):
        for service, count in ((a, 2), (b, 1)):
            for i in range(count):
                final, _ = deliver(service, f"Offer number {i:04d}\r\n" * 40)
                assert accepted(final)
        # B has seen 2 messages (below the threshold of 3), but together with A's 2
        # the count is 4: the limit holds across hosts.
        final, _ = deliver(b, "Offer number 7777\r\n" * 40)
        assert_reply(final, "same_size_flood")


def test_redis_blacklist_is_shared(tmp_path: Path, redis_server: RedisServer) -> None:
    extra = redis_site(tmp_path, redis_server)
    site_a, site_b = make_site(tmp_path / "a", extra), make_site(tmp_path / "b", extra)
    smtpguard(site_a, "blacklist", "add", "pest@sender.example")
    with running(site_b) as b, b.session() as s:
        s.connect(UNTRUSTED_IP)
        s.helo("mail.sender.example")
        assert_reply(s.mail("<pest@sender.example>"), "black_mail_address")


@pytest.mark.parametrize(("on_error", "reply"), [("error", "database_temp_error"), ("local", None)])
def test_redis_killed_mid_run(
    tmp_path: Path, redis_server: RedisServer, on_error: str, reply: str | None
) -> None:
    extra = redis_site(tmp_path, redis_server, on_error)
    extra["checks"] = {"blacklist": {"on_temp_error": "pass"}}
    with running(make_site(tmp_path / "site", extra)) as service:
        final, _ = deliver(service, "before the outage\r\n" * 10)
        assert accepted(final)
        redis_server.kill()
        for i in range(3):
            final, _ = deliver(service, "during the outage\r\n" * 10)
            if reply is not None:
                assert_reply(final, reply)
            elif i < 2:
                assert accepted(final)
            else:
                # Counting went on locally, the hit before the outage included.
                assert_reply(final, "same_size_flood")
        assert service.process.poll() is None  # no crash
        log = service.log()
    # The outage is logged once, not per message.
    assert log.count("counter backend redis unreachable") == 1, log


def test_declared_size_uses_the_same_counter(tmp_path: Path) -> None:
    with (
        running(make_site(tmp_path / "site", BULK)) as service,
        MilterSession(str(service.site.socket)) as s,
    ):
        s.connect(UNTRUSTED_IP)
        s.helo("mail.sender.example")
        assert s.mail("<friend@sender.example>", "SIZE=5000").kind == "continue"


@pytest.mark.parametrize(
    ("scan", "macro_v"), [(2.0, "Postfix 3.7.11"), (0.5, "Postfix 3.7.11"), (2.0, "8.17.1")]
)
def test_an_mta_that_gave_up_waiting_is_one_clear_line(
    tmp_path: Path, scan: float, macro_v: str
) -> None:
    """Review rev131 F2: past the MTA's milter timeout (Sendmail's T=R: below a slow
    scan) the header fields could not be added any more, and each left a traceback
    after a summary line that said accept. One WARNING now says what the client got,
    and after an end of message of a second or more, which smtpguard asks the MTA
    about, the summary that the transaction was cut (review rev212 F1); a shorter one
    is not asked about, and its header fields find the MTA gone. Sendmail is never
    asked: the question would make it check T=E: and give up (review rev213 F1)."""
    started = tmp_path / "scan-started"
    script = f"cat >/dev/null\ntouch {started}\nsleep {scan}\nexit 0\n"
    with running(hook_site(tmp_path, script, 10)) as service:
        s = service.session()
        s.connect(UNTRUSTED_IP, macros={"v": macro_v})
        s.helo("mail.sender.example")
        assert s.mail("<friend@sender.example>").kind == "continue"
        assert s.rcpt("<alice@example.com>").kind == "continue"
        for answer in (s.data(), *(s.header(n, v) for n, v in HEADERS), s.eoh()):
            assert answer.kind == "continue"
        s.body_bytes(b"hello\r\n")
        s.conn._send(C.SMFIC_BODYEOB)
        # The MTA goes while the scan runs, as one past its timeout does (closed
        # before libmilter reads end of message, the session is aborted instead).
        wait_until(started.exists)
        s.conn.sock.close()
        if scan < ASK_MTA_AFTER or not macro_v.startswith("Postfix"):
            wait_until(lambda: "the MTA no longer takes this message's header" in service.log())
            assert "Traceback" not in service.log()
            return
        wait_until(
            lambda: "the MTA gave up waiting for this message's verdict (accept)" in service.log()
        )
        summary = next(line for line in service.log().splitlines() if " summary " in line)
        assert "outcome=abort" in summary, summary
        assert "unanswered=accept" in summary, summary
        assert "no longer takes this message's header" not in service.log()
        assert "Traceback" not in service.log()
