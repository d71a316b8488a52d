"""Shared memory between the supervisor and its workers: the virus hook programs'
process groups, the configuration generation each worker runs."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
from pathlib import Path
from typing import Any

from smtpguard.workerwatch import (
    Generations,
    HookGroups,
    WorkersCollector,
    WorkerStats,
    flock_holders,
)
from support.polling import wait_until


def test_a_worker_records_its_groups_and_the_supervisor_takes_them() -> None:
    groups = HookGroups(3, slots=4)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result is its exit status
        code = 1
        try:
            groups.bind(1)
            ok = all(groups.add(group) for group in (101, 102, 103))
            groups.remove(102)
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert groups.take(0) == set()
    assert groups.take(1) == {101, 103}
    assert groups.take(1) == set()  # emptied for the next worker
    assert groups.take(2) == set()


def test_a_full_row_or_no_row_records_nothing() -> None:
    groups = HookGroups(2, slots=2)
    assert not groups.add(7)  # the supervisor has no row of its own
    groups.bind(0)
    assert groups.add(7)
    assert groups.add(8)
    assert not groups.add(9)  # full: found by its environment only
    groups.remove(7)
    assert groups.add(9)
    groups.remove(12345)  # not there: nothing changes
    assert groups.take(0) == {8, 9}
    assert groups.take(1) == set()


def test_a_workers_generation_is_read_by_the_supervisor() -> None:
    generations = Generations(2)
    generations.set(0, 3)  # the supervisor, forking worker 1 on generation 3
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result is its exit status
        try:
            generations.set(1, 4)  # worker 2 applied reload 4
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [generations.get(0), generations.get(1)] == [3, 4]


def test_the_generations_are_served_per_running_worker() -> None:
    collector = WorkersCollector(WorkerStats(), list, generations=lambda: (4, [(1, 4), (3, 2)]))
    found = {
        (sample.name, tuple(sample.labels.items())): sample.value
        for family in collector.collect()
        for sample in family.samples
    }
    assert found[("smtpguard_config_generation", ())] == 4
    assert found[("smtpguard_worker_config_generation", (("worker", "1"),))] == 4
    assert found[("smtpguard_worker_config_generation", (("worker", "3"),))] == 2
    assert ("smtpguard_worker_config_generation", (("worker", "2"),)) not in found


def _lock(path: str, held: Any, release: Any) -> None:
    with open(path, "r+b") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        held.set()
        release.wait(30)


def _wait_for_lock(path: str) -> None:
    with open(path, "r+b") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)


def test_the_holders_of_a_files_lock_are_read_from_the_kernel(tmp_path: Path) -> None:
    """The same-size counter's lock holder, as the supervisor finds it (review rev197:
    a stopped worker holding it made every worker's messages fail for 30 s)."""
    path = tmp_path / "counters.map"
    path.write_bytes(b"\0" * 64)
    other = tmp_path / "other.map"
    other.write_bytes(b"\0" * 64)
    fork = multiprocessing.get_context("fork")
    held, release = fork.Event(), fork.Event()
    holder = fork.Process(target=_lock, args=(str(path), held, release))
    holder.start()
    waiter = fork.Process(target=_wait_for_lock, args=(str(path),))
    try:
        assert held.wait(10)
        assert flock_holders(path) == {holder.pid}
        waiter.start()  # listed as "->": a waiter is no holder
        wait_until(lambda: "->" in Path("/proc/locks").read_text())
        assert flock_holders(path) == {holder.pid}
        assert flock_holders(other) == set()
        assert flock_holders(tmp_path / "missing") == set()
    finally:
        release.set()
        holder.join(10)
        waiter.join(10)
    assert flock_holders(path) == set()
