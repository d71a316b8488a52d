"""Where log lines go: stderr, or syslog read back from a unix datagram socket the test
owns (PRI = facility * 8 + severity, the smtpguard[PID] tag, the message)."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from smtpguard import logsetup
from smtpguard.config import ConfigError, MilterConfig, load_config
from smtpguard.logsetup import kv as _kv
from support.mtclient import assert_reply
from support.service import ROOT, UNTRUSTED_IP, make_site, running, smtpguard

#: RFC 3164 / RFC 5424 facility codes and severities.
MAIL, LOCAL3 = 2, 19
ERR, WARNING, INFO = 3, 4, 6
SYSLOG_LINE = re.compile(r"<(\d+)>smtpguard\[(\d+)\]: (.*)", re.DOTALL)


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    try:
        yield sock, path
    finally:
        sock.close()


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    logsetup.set_worker(None)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def receive(sock: socket.socket) -> tuple[int, int, int, str]:
    """(facility, severity, pid, message) of the next datagram."""
    data = sock.recv(65536).decode()
    match = SYSLOG_LINE.fullmatch(data)
    assert match, data
    pri = int(match.group(1))
    return pri // 8, pri % 8, int(match.group(2)), match.group(3)


def test_syslog_lines_carry_facility_severity_and_tag(
    syslog_socket: tuple[socket.socket, Path],
) -> None:
    sock, path = syslog_socket
    config = replace(MilterConfig(), log="syslog", log_socket=str(path), log_level="INFO")
    logsetup.configure(config)
    log = logging.getLogger("smtpguard")
    log.debug("not at INFO")
    log.info("summary sid=1.1 outcome=accept")
    log.warning("careful")
    log.error("broken")
    pid = os.getpid()
    assert receive(sock) == (MAIL, INFO, pid, "summary sid=1.1 outcome=accept")
    assert receive(sock) == (MAIL, WARNING, pid, "careful")
    assert receive(sock) == (MAIL, ERR, pid, "broken")


def test_another_facility_and_the_worker_mark(syslog_socket: tuple[socket.socket, Path]) -> None:
    sock, path = syslog_socket
    config = replace(MilterConfig(), log="syslog", log_socket=str(path), log_facility="local3")
    logsetup.configure(config)
    logsetup.set_worker(2)
    logging.getLogger("smtpguard").info("hello")
    assert receive(sock) == (LOCAL3, INFO, os.getpid(), "worker=2 hello")


def _documented_ban_pattern() -> re.Pattern[str]:
    text = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    (line,) = [x for x in text.splitlines() if x.startswith(r"^[^[]*smtpguard\[\d+\]: ")]
    return re.compile(line)


@pytest.mark.parametrize("worker", [None, 3])
def test_the_documented_ban_pattern_finds_the_real_client_only(
    syslog_socket: tuple[socket.socket, Path], worker: int | None
) -> None:
    """In both forms a line takes, with and without the worker mark, the pattern
    docs/observability.md gives a ban tool reads the client, never one a client wrote
    into a value."""
    forged = '<"q client=203.0.113.9 action=reject client=203.0.113.9 "@x.example>'
    fields = [("reply", "rbl_deny"), ("mode", "enforce"), ("action", "reject")]
    fields += [("client", "198.51.100.7"), ("helo", "'x"), ("from", forged)]
    message = "decision sid=1.1 stage=mail check=rbl " + " ".join(_kv(k, v) for k, v in fields)
    # Another line quoting what a client wrote (an SPF permerror names the sender's
    # local part), made to look like a decision line.
    spf = "spf=permerror mailfrom x from 1.2.3.4: included domain: "
    spf += '"smtpguard[1]: decision x action=reject client=6.6.6.6 "'
    sock, path = syslog_socket
    logsetup.configure(replace(MilterConfig(), log="syslog", log_socket=str(path)))
    logsetup.set_worker(worker)
    log = logging.getLogger("smtpguard")
    lines = []
    for text in (message, f"spf sid=1.1 detail={spf!r}"):
        log.info("%s", text)
        lines.append(f"Dec  2 18:40:01 mx smtpguard[{os.getpid()}]: {receive(sock)[3]}")
    stderr = io.StringIO()
    logsetup.configure(MilterConfig(), stderr)
    log.info("%s", message)
    log.info("spf sid=1.1 detail=%r", spf)
    lines += stderr.getvalue().splitlines()
    pattern = _documented_ban_pattern()
    found = [m["host"] for line in lines if (m := pattern.search(line))]
    assert found == ["198.51.100.7", "198.51.100.7"], lines


def test_lines_to_the_journal_carry_no_tag_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review rev43: under systemd, stderr is the journal, which adds its own time stamp
    and smtpguard[PID]: tag; ours twice made the documented ban pattern miss every
    line in journalctl's form. $JOURNAL_STREAM names the stream (systemd.exec(5))."""
    path = tmp_path / "journal"
    with path.open("w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        logsetup.configure(MilterConfig(), stream)
        logsetup.set_worker(2)
        fields = [("reply", "rbl_deny"), ("mode", "enforce"), ("action", "reject")]
        fields += [("client", "198.51.100.7"), ("helo", "x")]
        logging.getLogger("smtpguard").info(
            "%s", "decision sid=1.1 stage=mail check=rbl " + " ".join(_kv(k, v) for k, v in fields)
        )
        stream.flush()
    (written,) = path.read_text().splitlines()
    assert written.startswith("INFO worker=2 decision sid=1.1 ")
    shown = f"Dec 02 18:40:01 mx smtpguard[{os.getpid()}]: {written}"  # journalctl's form
    match = _documented_ban_pattern().search(shown)
    assert match is not None
    assert match["host"] == "198.51.100.7"
    # Another file with the variable set keeps the full form.
    other = io.StringIO()
    logsetup.configure(MilterConfig(), other)
    logging.getLogger("smtpguard").info("x")
    assert re.fullmatch(rf"\S+ \S+ smtpguard\[{os.getpid()}\]: INFO worker=2 x\n", other.getvalue())


def test_stderr_format_and_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    logsetup.configure(MilterConfig(), first)
    logsetup.configure(replace(MilterConfig(), log_level="WARNING"), second)
    logsetup.set_worker(1)
    log = logging.getLogger("smtpguard")
    log.info("dropped")
    log.warning("kept")
    assert first.getvalue() == ""
    assert re.fullmatch(
        rf"\S+ \S+ smtpguard\[{os.getpid()}\]: WARNING worker=1 kept\n", second.getvalue()
    )


def test_every_line_of_a_traceback_names_its_worker_and_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review rev87 F6: a traceback's continuation lines carried no ``worker=`` nor
    ``sid=``, so a grep for a worker or a session lost them (stderr, and the journal,
    which reads its stream line by line)."""
    out = io.StringIO()
    logsetup.configure(MilterConfig(), out)
    logsetup.set_worker(2)
    log = logging.getLogger("smtpguard")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("sid=%s stage=%s unexpected error", "7.3", "mail")
    lines = out.getvalue().splitlines()
    assert len(lines) >= 4  # the message, "Traceback ...", a frame, the exception
    head = rf"\S+ \S+ smtpguard\[{os.getpid()}\]: ERROR worker=2 sid=7\.3 "
    assert re.fullmatch(head + "stage=mail unexpected error", lines[0])
    assert all(re.match(head, line) for line in lines), lines
    assert lines[1].endswith("sid=7.3 Traceback (most recent call last):")
    assert lines[-1].endswith("sid=7.3 ValueError: boom")
    # The journal's form (no time stamp nor tag of ours), and a line without a session.
    path = tmp_path / "journal"
    with path.open("w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        logsetup.configure(MilterConfig(), stream)
        log.error("two\nlines")
    assert path.read_text().splitlines() == ["ERROR worker=2 two", "ERROR worker=2 lines"]


def test_set_level_keeps_the_destination() -> None:
    """A reload applies log_level; where the lines go stays as at start."""
    out = io.StringIO()
    logsetup.configure(replace(MilterConfig(), log_level="WARNING"), out)
    log = logging.getLogger("smtpguard")
    log.info("dropped")
    logsetup.set_level("INFO")
    log.info("kept")
    logsetup.set_level("ERROR")
    log.warning("dropped too")
    assert "dropped" not in out.getvalue()
    assert out.getvalue().count("INFO") == 1
    assert "kept" in out.getvalue()


def test_a_missing_syslog_socket_is_named(tmp_path: Path) -> None:
    config = replace(MilterConfig(), log="syslog", log_socket=str(tmp_path / "nothing"))
    with pytest.raises(
        logsetup.LogSetupError, match=r"cannot open the syslog socket .*nothing: No such file"
    ):
        logsetup.configure(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('log = "journal"', r"milter\.log: must be one of stderr, syslog"),
        ('log_facility = "mailx"', r"milter\.log_facility: must be one of .*mail"),
        ('log_socket = "dev/log"', r"milter\.log_socket: must be an absolute path"),
        ("summary_log = 1", r"milter\.summary_log: expected true or false"),
        ('authserv_id = "mx example"', r"milter\.authserv_id: must be a host name"),
    ],
)
def test_log_options_are_validated(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[milter]\n{text}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert caught.value.file == str(path)


@pytest.mark.integration
def test_the_service_logs_to_syslog(
    tmp_path: Path, syslog_socket: tuple[socket.socket, Path]
) -> None:
    sock, path = syslog_socket
    site = make_site(tmp_path / "site", {"milter": {"log": "syslog", "log_socket": str(path)}})
    with running(site) as service:
        with service.session() as s:
            s.connect(UNTRUSTED_IP)
            s.helo("mail.sender.example")
            assert_reply(s.mail("<spammer@bad.example>"), "host_denies_sender")
        lines: list[tuple[int, int, int, str]] = []
        end = time.monotonic() + 10
        while not any(is_summary(m) for *_, m in lines):
            assert time.monotonic() < end, lines
            lines.append(receive(sock))
    # Nothing of it goes to stderr once the log goes to syslog.
    assert "summary" not in service.log()
    summary = next(m for *_, m in lines if is_summary(m))
    assert re.search(r"summary sid=\S+ outcome=reject reply=host_denies_sender ", summary)
    assert all(f == MAIL for f, *_ in lines)
    assert any(s == INFO and "starting on" in m for _f, s, _p, m in lines)


def is_summary(message: str) -> bool:
    return re.match(r"(worker=\d+ )?summary ", message) is not None


def test_check_config_names_a_missing_syslog_socket(
    tmp_path: Path, syslog_socket: tuple[socket.socket, Path]
) -> None:
    _sock, path = syslog_socket
    good = make_site(tmp_path / "good", {"milter": {"log": "syslog", "log_socket": str(path)}})
    assert smtpguard(good, "check-config", "--offline", check=False).returncode == 0
    missing = tmp_path / "no-such-socket"
    site = make_site(tmp_path / "bad", {"milter": {"log": "syslog", "log_socket": str(missing)}})
    done = smtpguard(site, "check-config", "--offline", check=False)
    assert done.returncode == 1
    expected = f"{site.config}: milter.log_socket: cannot open the syslog socket {missing}"
    assert expected in done.stderr


@pytest.mark.parametrize(
    "created",
    [1700000000.0, 1700000000.0005, 1700000000.999, 1700000001.5, 1700000001.75, 1.0e9 + 0.25],
)
def test_stderr_time_stamps_are_loggings_own(created: float) -> None:
    # The time up to the second is formatted once per second; the line must not differ
    # from logging.Formatter's in any millisecond, also when the second changes.
    ours = logsetup.stream_handler(io.StringIO()).formatter
    plain = logging.Formatter(logsetup.STDERR_FORMAT)
    assert ours is not None
    for when in (created, created + 0.001, created + 1.0):
        record = logging.makeLogRecord({"msg": "summary sid=1", "created": when, "worker": ""})
        record.msecs = (when - int(when)) * 1000
        assert ours.format(record) == plain.format(record)
