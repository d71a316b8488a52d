"""retire_metrics: a dead worker's prometheus multiprocess files folded into one
retired set, and a torn file never stopping the supervisor."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from smtpguard.supervisor import retire_metrics
from support.files import fill_up, tmpfs

NAME = "smtpguard_test_total"


def write_counter(directory: Path, pid: int | str, value: float) -> Path:
    path = directory / f"counter_{pid}.db"
    values = MmapedDict(str(path))  # type: ignore[no-untyped-call]
    try:
        key = mmap_key(NAME, NAME, [], [], "")
        values.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        values.close()  # type: ignore[no-untyped-call]
    return path


def total(directory: Path) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory))  # type: ignore[no-untyped-call]
    value = registry.get_sample_value(NAME)
    assert value is not None
    return value


def test_dead_workers_counters_keep_counting_in_one_retired_file(tmp_path: Path) -> None:
    write_counter(tmp_path, 101, 3)
    write_counter(tmp_path, 102, 4)
    write_counter(tmp_path, 103, 5)  # still running
    assert total(tmp_path) == 12
    retire_metrics(101, str(tmp_path))
    retire_metrics(102, str(tmp_path))
    assert total(tmp_path) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_103.db", "counter_retired.db"]


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x08\x00\x00\x00garbage"])
def test_a_torn_file_is_dropped_and_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    """A worker SIGKILLed while prometheus_client set its file up leaves it empty; the
    supervisor (which restarts workers) must not die of it (found by review)."""
    write_counter(tmp_path, 101, 3)
    retire_metrics(101, str(tmp_path))
    (tmp_path / "counter_102.db").write_bytes(content)
    with caplog.at_level(logging.ERROR):
        retire_metrics(102, str(tmp_path))
    assert "counter_102.db of worker pid 102 unreadable, dropped" in caplog.text
    assert not (tmp_path / "counter_102.db").exists()
    assert total(tmp_path) == 3


def test_a_torn_retired_file_is_started_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "counter_retired.db").write_bytes(b"")
    write_counter(tmp_path, 101, 3)
    with caplog.at_level(logging.ERROR):
        retire_metrics(101, str(tmp_path))
    assert "counter_retired.db unreadable, started again" in caplog.text
    assert total(tmp_path) == 3


def test_a_retired_file_that_cannot_be_opened_leaves_both_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not the content but the file system: the dead worker's values must still count,
    not be dropped as torn (second review)."""
    (tmp_path / "counter_retired.db").mkdir()
    write_counter(tmp_path, 101, 3)
    with caplog.at_level(logging.ERROR):
        retire_metrics(101, str(tmp_path))
    assert "cannot retire counter_101.db of worker pid 101" in caplog.text
    assert (tmp_path / "counter_101.db").exists()


def test_a_full_file_system_is_an_error_not_sigbus(tmp_path: Path) -> None:
    """Review rev43: on a full tmpfs the retired file's sparse pages were SIGBUS at the
    first write, and the supervisor died without a line; now ENOSPC is logged and both
    files stay (run in a child, so that a regression cannot kill pytest)."""
    with tmpfs(tmp_path / "full", "256k") as full:
        write_counter(full, 101, 3)
        fill_up(full)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's result is its exit status
            code = 1
            try:
                logging.getLogger("smtpguard").addHandler(logging.FileHandler(tmp_path / "log"))
                retire_metrics(101, str(full))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status), f"the child died of signal {os.WTERMSIG(status)}"
        assert os.WEXITSTATUS(status) == 0
        assert "cannot retire counter_101.db of worker pid 101" in (tmp_path / "log").read_text()
        assert (full / "counter_101.db").exists()
        assert not (full / "counter_retired.db").exists()
