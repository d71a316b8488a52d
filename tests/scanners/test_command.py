"""The command hook: real programs, the documented exit-status mapping, no shell."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpguard.scanners import MessageSpool, ScanResult, ScanStatus
from smtpguard.scanners.command import (
    CommandScan,
    _resetting_env,
    record_groups_in,
    run_command,
)
from support.daemons import EICAR, EICAR_SIGNATURE, Clamd, start_clamd
from support.polling import wait_until

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
#: The tests' directory, for a child process's imports of support.
TESTS = Path(__file__).resolve().parent.parent


def script(tmp_path: Path, body: str, name: str = "hook") -> list[str]:
    """An executable Python program; argv as the operator would configure it."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport sys, os, time, hashlib\n{body}\n")
    path.chmod(0o755)
    return [str(path)]


def with_child(tmp_path: Path, child: list[str], pidfile: Path, *, then: str) -> list[str]:
    """A hook that starts ``child`` (its pid written to ``pidfile``), then runs ``then``."""
    return script(
        tmp_path,
        "import subprocess\n"
        f"child = subprocess.Popen({child!r})\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        f"{then}",
    )


def test_exit_0_is_clean_and_the_message_arrives_on_stdin(tmp_path: Path) -> None:
    copy = tmp_path / "seen.eml"
    argv = script(tmp_path, f"open({str(copy)!r}, 'wb').write(sys.stdin.buffer.read())")
    result = run_command(argv, MESSAGE, timeout=10)
    assert result.status is ScanStatus.CLEAN
    assert result.scanned == len(MESSAGE)
    assert copy.read_bytes() == MESSAGE


@pytest.mark.parametrize(
    ("stdout", "name"),
    [
        ("Eicar-Test-Signature FOUND\n", "Eicar-Test-Signature"),
        ("stream: Win.Test.EICAR_HDB-1 FOUND\n\nsummary\n", "Win.Test.EICAR_HDB-1"),
        ("scanning\n  \n/tmp/x: Trojan.Generic FOUND  \nTwo FOUND\n", "Trojan.Generic"),
        # A location with spaces (review rev51), a name with a colon (Defender's form).
        ("/tmp/my mail.eml: Win.Test.EICAR_HDB-1 FOUND\n", "Win.Test.EICAR_HDB-1"),
        ("stream: Trojan:Win32/Wacatac.B!ml FOUND\r\n", "Trojan:Win32/Wacatac.B!ml"),
    ],
)
def test_exit_1_is_infected_with_the_first_found_line_as_name(
    tmp_path: Path, stdout: str, name: str
) -> None:
    argv = script(tmp_path, f"sys.stdin.buffer.read(); print({stdout!r}, end=''); sys.exit(1)")
    result = run_command(argv, MESSAGE, timeout=10)
    assert result.status is ScanStatus.INFECTED
    assert result.virus == name


@pytest.mark.parametrize("stdout", ["", "\n  \n", "scanning message from stdin\n", "FOUND\n"])
def test_exit_1_naming_nothing_is_an_error_not_a_virus(tmp_path: Path, stdout: str) -> None:
    """What a crashing hook looks like (Python's uncaught exception exits 1), also
    one that printed a progress line first (review rev49): a temporary fault, never a
    permanent virus_found."""
    program = f"sys.stdin.buffer.read(); print({stdout!r}, end=''); raise OSError('no db')"
    result = run_command(script(tmp_path, program), MESSAGE, timeout=10)
    assert result.status is ScanStatus.ERROR
    assert result.suspect  # exit 1 may still mean a virus: never passed
    assert "exit status 1 without a 'NAME FOUND' line on stdout" in result.detail
    assert "no db" in result.detail


def test_other_exit_status_is_an_error_with_stderr_in_the_detail(tmp_path: Path) -> None:
    argv = script(tmp_path, "sys.stderr.write('database missing\\n'); sys.exit(2)")
    result = run_command(argv, MESSAGE, timeout=10)
    assert result.status is ScanStatus.ERROR
    assert not result.suspect
    assert "exit status 2" in result.detail
    assert "database missing" in result.detail


def test_what_a_program_says_is_one_printable_line(tmp_path: Path) -> None:
    """Review rev188 F4: a hook that echoed a header put its CR and an ANSI escape
    into the outage's WARNING line."""
    echoed = "cannot parse X-Name: a\\rFAKE smtpguard[1]: INFO decision \\x1b[2J\\nnext"
    argv = script(tmp_path, f"sys.stderr.write('{echoed}'); sys.exit(2)")
    result = run_command(argv, MESSAGE, timeout=10)
    assert result.detail.endswith(
        "exit status 2: cannot parse X-Name: a\\rFAKE smtpguard[1]: INFO decision \\x1b[2J | next"
    )
    assert result.detail.isprintable()


def test_killed_by_a_signal_is_an_error(tmp_path: Path) -> None:
    argv = script(tmp_path, "import signal; os.kill(os.getpid(), signal.SIGSEGV)")
    result = run_command(argv, MESSAGE, timeout=10)
    assert result.status is ScanStatus.ERROR
    assert "killed by signal 11" in result.detail


def test_missing_program_is_an_error(tmp_path: Path) -> None:
    result = run_command([str(tmp_path / "no-such-scanner")], MESSAGE, timeout=10)
    assert result.status is ScanStatus.ERROR
    assert "cannot run" in result.detail
    assert run_command([], MESSAGE, timeout=1).status is ScanStatus.ERROR


@pytest.fixture
def ignoring_term() -> Iterator[None]:
    """This process ignores SIGTERM, as a worker does (its supervisor takes it)."""
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.usefixtures("ignoring_term")
def test_a_program_starts_with_what_its_runner_ignores_at_the_default(tmp_path: Path) -> None:
    """Review rev194 F3: an ignored disposition survives exec."""
    argv = script(
        tmp_path,
        "import signal\n"
        "sys.stdin.read()\n"
        "sys.exit(0 if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else 9)",
    )
    assert run_command(argv, MESSAGE, timeout=10).status is ScanStatus.CLEAN


def test_an_env_without_default_signal_leaves_the_hooks_as_they_were(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev200: coreutils before 8.31 (Debian 10, RHEL 8) and busybox have no
    --default-signal, and every hook run failed with env's exit 125. Such an env is
    not used, and the log says so once."""
    old_env = tmp_path / "env"
    old_env.write_text(
        "#!/bin/sh\necho \"env: unrecognized option '$1'\" >&2\nexit 125\n", encoding="utf-8"
    )
    old_env.chmod(0o755)
    with caplog.at_level(logging.WARNING):
        assert _resetting_env((str(old_env),)) is None
    assert f"{old_env} does not take --default-signal" in caplog.text
    assert _resetting_env() is not None  # this host's coreutils 9.1


@pytest.mark.usefixtures("ignoring_term")
def test_a_program_not_run_is_named_as_without_the_reset(tmp_path: Path) -> None:
    missing = run_command([str(tmp_path / "no-such-scanner")], MESSAGE, timeout=10)
    assert missing.detail == f"cannot run {tmp_path / 'no-such-scanner'}: No such file or directory"
    unrunnable = tmp_path / "not-executable"
    unrunnable.write_text("#!/bin/sh\nexit 0\n")
    refused = run_command([str(unrunnable)], MESSAGE, timeout=10)
    assert refused.detail == f"cannot run {unrunnable}: Permission denied"
    assert run_command(["no-such-scanner-on-the-path"], MESSAGE, timeout=10).detail == (
        "cannot run no-such-scanner-on-the-path: No such file or directory"
    )
    # Review rev200: a #! interpreter that is not there failed in env, with env's words.
    orphan = tmp_path / "orphan"
    orphan.write_text("#!/nonexistent/interpreter\nexit 0\n")
    orphan.chmod(0o755)
    gone = run_command([str(orphan)], MESSAGE, timeout=10)
    assert gone.detail == f"cannot run {orphan}: No such file or directory"
    # No "#!": the kernel does not run it, and no shell is started for it either (env's
    # execvp would have handed it to /bin/sh).
    bare = tmp_path / "bare"
    bare.write_text("exit 0\n")
    bare.chmod(0o755)
    refused = run_command([str(bare)], MESSAGE, timeout=10)
    assert refused.detail == f"cannot run {bare}: Exec format error"


def test_timeout_kills_the_program_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    argv = with_child(tmp_path, ["sleep", "60"], pidfile, then="time.sleep(60)")
    start = time.monotonic()
    result = run_command(argv, MESSAGE, timeout=1.0)
    assert time.monotonic() - start < 5
    assert result.status is ScanStatus.ERROR
    assert "timed out after 1 s" in result.detail
    child = int(pidfile.read_text())
    # The grandchild was in the hook's session and got SIGKILL with it; once its
    # parent is gone, init reaps it (or it lingers as a zombie, which is dead too).
    wait_until(lambda: not _alive(child), 5)


def test_a_program_that_keeps_writing_is_killed_before_it_fills_the_disk(
    tmp_path: Path,
) -> None:
    """Review rev80 F3: its output went to temporary files, whole, for as long as its
    timeout let it write (300 MB in the review). It is read and dropped beyond 4 KiB,
    and more than 16 MiB in all ends it."""
    argv = script(
        tmp_path,
        "line = b'x' * 65535 + b'\\n'\n"
        "while True:\n"
        "    sys.stdout.buffer.write(line)\n"
        "    sys.stderr.buffer.write(line)",
    )
    start = time.monotonic()
    result = run_command(argv, MESSAGE, timeout=60)
    assert time.monotonic() - start < 10
    assert result.status is ScanStatus.ERROR
    assert result.detail == f"{argv[0]} killed: it wrote more than 16 MiB of output"
    # Within the limit the output is no matter: the program's verdict stands.
    quiet = script(tmp_path, "sys.stdout.write('x' * 2**20); sys.exit(0)", name="quiet")
    assert run_command(quiet, MESSAGE, timeout=60).status is ScanStatus.CLEAN


@pytest.mark.parametrize("size", [200 * 1024, 900 * 1024])
def test_a_message_larger_than_the_pipe_reaches_a_program_slow_to_read(
    tmp_path: Path, size: int
) -> None:
    """Review rev82 F1: a message kept in memory went into the pipe only as far as its
    buffer when the program took more than 50 ms to start reading; the rest was never
    written, and it timed out. It arrives whole, as the program reads it."""
    copy = tmp_path / "seen.eml"
    body = f"time.sleep(0.3); open({str(copy)!r}, 'wb').write(sys.stdin.buffer.read())"
    argv = script(tmp_path, body)
    message = MESSAGE + b"x" * (size - len(MESSAGE))
    start = time.monotonic()
    result = run_command(argv, message, timeout=10)
    assert result.status is ScanStatus.CLEAN, result
    assert time.monotonic() - start < 5
    assert copy.read_bytes() == message


def test_what_the_program_left_running_is_killed_when_it_exits(tmp_path: Path) -> None:
    """Review rev82 F3: a child the hook left behind went on writing (2 GB in two
    seconds in the review). The hook's session goes with it; its verdict stands, and
    the child holding the output pipe does not hold the scan."""
    pidfile = tmp_path / "child.pid"
    writer = ["sh", "-c", "while :; do echo x; done"]
    argv = with_child(tmp_path, writer, pidfile, then="sys.exit(0)")
    start = time.monotonic()
    result = run_command(argv, MESSAGE, timeout=10)
    assert result.status is ScanStatus.CLEAN, result
    assert time.monotonic() - start < 5
    wait_until(lambda: not _alive(int(pidfile.read_text())), 5)


def test_a_worker_with_many_descriptors_open_runs_the_hook(tmp_path: Path) -> None:
    """Review rev84 F1: the program's exit was looked for with select(), which refuses
    descriptors from 1024 on; a busy worker has that many open (the unit allows
    16384), and every scanned message was deferred."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    held: list[int] = []
    try:
        with open(os.devnull, "rb") as null:
            while not held or held[-1] < 1100:
                held.append(os.dup(null.fileno()))
        argv = script(tmp_path, "print('Eicar-Test FOUND'); sys.exit(1)")
        result = run_command(argv, MESSAGE, timeout=10)
        assert result.status is ScanStatus.INFECTED, result
        assert result.virus == "Eicar-Test"
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_no_shell_arguments_arrive_verbatim(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    out = tmp_path / "argv.txt"
    argv = script(tmp_path, f"open({str(out)!r}, 'w').write(repr(sys.argv[1:]))")
    tricky = [f"$(touch {marker})", "; rm -rf /", "*", "'quoted'"]
    assert run_command([*argv, *tricky], MESSAGE, timeout=10).status is ScanStatus.CLEAN
    assert not marker.exists()
    assert out.read_text() == repr(tricky)


def test_program_that_ignores_stdin_is_fine(tmp_path: Path) -> None:
    argv = script(tmp_path, "sys.exit(0)")
    big = b"x" * (4 * 1024 * 1024)  # more than a pipe holds: writing it gets EPIPE
    assert run_command(argv, big, timeout=10).status is ScanStatus.CLEAN


def test_chatty_program_output_is_capped(tmp_path: Path) -> None:
    argv = script(tmp_path, "sys.stdout.write('Big.Name FOUND\\n' + 'x' * 10_000_000); sys.exit(1)")
    result = run_command(argv, MESSAGE, timeout=20)
    assert result.virus == "Big.Name"


def spooled(memory_cap: int, size: int) -> MessageSpool:
    spool = MessageSpool(memory_cap=memory_cap)
    spool.feed_header("From", "a@example.org")
    spool.feed_header("Subject", "big")
    spool.end_of_headers()
    line = b"0123456789" * 7 + b"\r\n"
    for _ in range(size // len(line)):
        spool.feed(line)
    return spool


@pytest.mark.parametrize("memory_cap", [64 * 1024, 16 * 1024 * 1024])
def test_spooled_message_in_memory_or_on_disk(tmp_path: Path, memory_cap: int) -> None:
    digest = tmp_path / "sha256"
    argv = script(
        tmp_path,
        f"open({str(digest)!r}, 'w').write(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
    )
    with spooled(memory_cap, 3 * 1024 * 1024) as spool:
        assert spool.in_memory is (memory_cap > spool.size)
        expected = hashlib.sha256(spool.getvalue()).hexdigest()
        result = run_command(argv, spool, timeout=20)
        assert result.status is ScanStatus.CLEAN
        assert result.scanned == spool.size
    assert digest.read_text() == expected


def test_binary_file_without_fileno(tmp_path: Path) -> None:
    copy = tmp_path / "seen.eml"
    argv = script(tmp_path, f"open({str(copy)!r}, 'wb').write(sys.stdin.buffer.read())")
    assert run_command(argv, io.BytesIO(MESSAGE), timeout=10).status is ScanStatus.CLEAN
    assert copy.read_bytes() == MESSAGE


def test_real_file_from_its_position(tmp_path: Path) -> None:
    copy = tmp_path / "seen.eml"
    source = tmp_path / "in.eml"
    source.write_bytes(b"IGNORED" + MESSAGE)
    argv = script(tmp_path, f"open({str(copy)!r}, 'wb').write(sys.stdin.buffer.read())")
    with source.open("rb") as fh:
        fh.seek(len(b"IGNORED"))
        result = run_command(argv, fh, timeout=10)
    assert result.scanned == len(MESSAGE)
    assert copy.read_bytes() == MESSAGE


def test_environment_can_be_replaced(tmp_path: Path) -> None:
    out = tmp_path / "env"
    argv = script(tmp_path, f"open({str(out)!r}, 'w').write(os.environ.get('HOOK', '-'))")
    run_command(argv, MESSAGE, timeout=10, env={"HOOK": "yes"})
    assert out.read_text() == "yes"


# --- clamdscan as the hook, against a real clamd ---------------------------------------


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    daemon = start_clamd(tmp_path_factory.mktemp("clamd-hook"))
    yield daemon
    daemon.stop()


@pytest.mark.integration
def test_clamdscan_works_as_a_hook(clamd: Clamd) -> None:
    clamdscan = shutil.which("clamdscan")
    assert clamdscan, "clamdscan ships with Debian's clamav-daemon / clamdscan packages"
    argv = [clamdscan, "--config-file", str(clamd.dir / "clamd.conf"), "--no-summary", "-"]
    infected = run_command(argv, MESSAGE + EICAR + b"\r\n", timeout=30)
    assert infected.status is ScanStatus.INFECTED, infected
    assert infected.virus == f"{EICAR_SIGNATURE}.UNOFFICIAL"
    assert run_command(argv, MESSAGE, timeout=30).status is ScanStatus.CLEAN
    missing = [clamdscan, "--config-file", os.devnull, "--no-summary", "-"]
    assert run_command(missing, MESSAGE, timeout=30).status is ScanStatus.ERROR


# --- CommandScan: the hook as a stream ------------------------------------------------


def feed(scan: CommandScan) -> None:
    scan.feed_header("From", "a@example.org")
    scan.feed_header("Subject", "hi")
    scan.end_of_headers()
    scan.feed(b"hello\r\n")


def test_command_scan_spools_the_message_and_runs_once(tmp_path: Path) -> None:
    copy = tmp_path / "seen.eml"
    runs = tmp_path / "runs"
    argv = script(
        tmp_path,
        f"open({str(runs)!r}, 'a').write('x')\n"
        f"open({str(copy)!r}, 'wb').write(sys.stdin.buffer.read())",
    )
    scan = CommandScan(argv, timeout=10, max_bytes=1000)
    feed(scan)
    result = scan.finish()
    assert result.status is ScanStatus.CLEAN
    assert scan.finish() is result
    assert copy.read_bytes() == MESSAGE
    assert runs.read_text() == "x"
    scan.close()


def test_command_scan_infected(tmp_path: Path) -> None:
    argv = script(tmp_path, "sys.stdin.buffer.read(); print('Eicar FOUND'); sys.exit(1)")
    scan = CommandScan(argv, timeout=10, max_bytes=1000)
    feed(scan)
    assert scan.finish().virus == "Eicar"


def test_command_scan_of_a_truncated_message_is_a_size_limit(tmp_path: Path) -> None:
    argv = script(tmp_path, "sys.stdin.buffer.read()")
    scan = CommandScan(argv, timeout=10, max_bytes=20)
    feed(scan)
    result = scan.finish()
    assert result.status is ScanStatus.SIZE_LIMIT
    assert result.scanned == 20
    assert "max_bytes=20" in result.detail


END_RUNNING = """
import os, sys, threading, time
sys.path.insert(0, sys.argv[3])
from smtpguard.scanners.command import end_running, run_command
from support.polling import wait_until
argv, started = sys.argv[1:2], sys.argv[2]
results = []
runner = threading.Thread(target=lambda: results.append(run_command(argv, b"x", 60)))
runner.start()
wait_until(lambda: os.path.exists(started))
begun = time.monotonic()
print(end_running())
runner.join(timeout=10)
print(round(time.monotonic() - begun))
print(results[0].status.value, results[0].detail, "suspect" if results[0].suspect else "")
print(run_command(argv, b"x", 60).detail)
"""


def test_end_running_kills_the_programs_under_way_and_starts_none(tmp_path: Path) -> None:
    """Review rev92 F2: a stop that gave up waiting for its sessions ended the process
    and left their hook programs running, with no one to wait for them; rev94 F4: a
    program started after that (a canary's) ran on too. In a process of its own: no
    program starts in it afterwards."""
    started = tmp_path / "started"
    (program,) = script(tmp_path, f"open({str(started)!r}, 'w').close(); time.sleep(3600)")
    done = subprocess.run(
        [sys.executable, "-c", END_RUNNING, program, str(started), str(TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    killed, seconds, result, after = done.stdout.splitlines()
    assert (killed, seconds) == ("1", "0")
    assert result.startswith("error ")
    # Not a scanner's failure: deferred even where outages pass (review rev95 F5).
    assert result.endswith("killed: the service is stopping suspect")
    assert after == f"{program} not run: the service is stopping"


def test_a_reason_on_stdout_is_kept_and_a_name_with_another_status_is_suspect(
    tmp_path: Path,
) -> None:
    """Review rev92 F4: for a status other than 0 and 1 only stderr was kept ("exit
    status 2", clamdscan prints clamd's errors on stdout), and a virus named with
    another scanner's status (savscan's 3) was a plain error, passed where outages pass,
    the name in no log."""
    said = "stream: Can't connect to clamd: No such file or directory ERROR"
    result = run_command(
        script(tmp_path, f"sys.stdin.buffer.read(); print({said!r}); sys.exit(2)"), MESSAGE, 10
    )
    assert result.status is ScanStatus.ERROR
    assert result.detail.endswith(f"exit status 2: {said}")
    assert not result.suspect
    found = "stream: Troj/Test-A FOUND"
    program = f"sys.stdin.buffer.read(); print({found!r}); sys.exit(3)"
    result = run_command(script(tmp_path, program, "savscan"), MESSAGE, 10)
    assert result.status is ScanStatus.ERROR
    assert "exit status 3 with 'Troj/Test-A' FOUND on stdout" in result.detail
    assert result.suspect


def test_a_hook_that_answers_exit_1_without_a_name_ends_an_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev95 F3: exit 1 without a name (deferred even where outages pass) was no
    answer, so a sender whose messages make the hook exit so, asking at each retry,
    kept an outage open, and every other message passed unscanned under "pass"."""
    caplog.set_level(logging.INFO, logger="smtpguard")
    state = tmp_path / "state"
    state.write_text("hang")
    argv = script(
        tmp_path,
        f"data = sys.stdin.buffer.read()\n"
        f"if open({str(state)!r}).read() == 'hang': time.sleep(3600)\n"
        "if b'EXIT1' in data: sys.exit(1)\n",
    )

    def scan(body: bytes) -> ScanResult:
        scan = CommandScan(argv, timeout=1.0, max_bytes=10_000)
        scan.feed_header("Subject", "x")
        scan.end_of_headers()
        scan.feed(body)
        try:
            return scan.finish()
        finally:
            scan.close()

    assert scan(b"hello\r\n").status is ScanStatus.ERROR  # timed out: a canary follows
    wait_until(lambda: "gave no answer" in caplog.text)
    state.write_text("ok")
    # Not asked until the interval has passed; then this one asks, and exits 1.
    wait_until(lambda: scan(b"EXIT1\r\n").suspect, deadline=15)
    assert "answering again after" in caplog.text
    assert scan(b"hello\r\n").status is ScanStatus.CLEAN


class Record:
    """A worker's row of process groups, as HookGroups keeps it."""

    def __init__(self) -> None:
        self.groups: set[int] = set()
        self.seen: list[int] = []

    def add(self, group: int) -> bool:
        self.groups.add(group)
        self.seen.append(group)
        return True

    def remove(self, group: int) -> None:
        # Dead and not reaped: its id cannot have been reused.
        assert os.waitid(os.P_PID, group, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        self.groups.discard(group)


def test_each_program_is_recorded_while_it_may_run(tmp_path: Path) -> None:
    """A worker records its programs' process groups for its supervisor (review rev95
    F4): from before the program reads its input to after it is killed, not after it
    is reaped (its id may be reused then)."""
    marker = tmp_path / "group"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nps -o pgid= -p $$ > {marker}\ncat >/dev/null\nexit 0\n")
    hook.chmod(0o755)
    record = Record()
    record_groups_in(record)
    try:
        result = run_command([str(hook)], b"Subject: x\r\n\r\nhi\r\n", 10)
    finally:
        record_groups_in(None)
    assert result.status is ScanStatus.CLEAN
    assert record.seen == [int(marker.read_text())]
    assert record.groups == set()


#: A minimal sudo: root entirely (the real uid too), then the program.
AS_ROOT_C = """
#include <unistd.h>
#include <stdio.h>
int main(int argc, char **argv) {
    if (setgid(0) || setuid(0)) { perror("setuid"); return 2; }
    execv(argv[1], argv + 1);
    perror("execv"); return 2;
}
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("gcc") is None, reason="needs root and gcc")
def test_a_program_the_service_user_may_not_signal_is_answered() -> None:
    """Review rev97 F1: a hook run through a sudo-like wrapper (root processes the
    service user may not signal, even its exited leader) made the end-of-run killpg
    raise: every message got internal_error, and its group stayed recorded. Run here as
    nobody, in a fork of this process, with a setuid-root wrapper built for the test."""
    work = Path(tempfile.mkdtemp(prefix="smtpguard-suid-"))
    try:
        work.chmod(0o755)
        (work / "asroot.c").write_text(AS_ROOT_C)
        subprocess.run(["gcc", "-o", str(work / "asroot"), str(work / "asroot.c")], check=True)
        (work / "asroot").chmod(0o4755)
        hook = work / "hook.sh"
        hook.write_text("#!/bin/sh\ncat >/dev/null\nexit 0\n")
        hook.chmod(0o755)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's result is what it writes
            code = 1
            try:
                os.close(read)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                record = Record()
                record_groups_in(record)
                result = run_command(
                    [str(work / "asroot"), str(hook)], b"Subject: x\r\n\r\nhi\r\n", 10
                )
                os.write(write, f"{result.status.value} {sorted(record.groups)}".encode())
                code = 0
            except BaseException as exc:
                os.write(write, f"raised {exc!r}".encode())
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            said = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert said == "clean []"
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
