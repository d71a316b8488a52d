"""Replacing a watched SQLite file the way deployments do; counting descriptors on one;
a full file system."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


def replace_by_rename(new: Path, path: Path) -> None:
    """``cp new tmp; mv tmp path``: what rsync and config management do."""
    staged = path.with_name(path.name + ".tmp")
    shutil.copyfile(new, staged)
    os.replace(staged, path)


def descriptors_on(*paths: Path) -> int:
    """How many of this process's descriptors are open on ``paths`` (or on files that
    were at those paths and have been replaced or removed since)."""
    wanted = {os.fspath(p) for p in paths}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used
        count += target.removesuffix(" (deleted)") in wanted
    return count


#: The interpreter's own library, which a service user must read for the modules
#: imported on first use.
STDLIB = Path(os.__file__).parent
#: check-config's line for an interpreter the service user cannot read.
STDLIB_PROBLEM = "modules of Python's own library imported on first use would fail"


def others_may_read(path: Path) -> bool:
    """Whether a user with no special rights (nobody) may read the directory ``path``:
    every directory above it searchable by others, itself readable and searchable."""
    for above in reversed(path.parents):
        if not os.stat(above).st_mode & 0o001:
            return False
    return os.stat(path).st_mode & 0o005 == 0o005


def without_stdlib_problem(lines: list[str]) -> list[str]:
    """check-config's lines for a service user, less the one about the interpreter:
    present where Python is private (pyenv under /root, mode 0700, as on the test
    machine), absent where it is the system's (tests/test_probes.py checks both)."""
    return [line for line in lines if STDLIB_PROBLEM not in line]


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, fill: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (made) until the block ends; with
    ``fill``, written full first (a file ``filler`` takes all it has left)."""
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        if fill:
            fill_up(path)
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill_up(path: Path) -> None:
    """Write ``path/filler`` until the file system is full."""
    with contextlib.suppress(OSError), (path / "filler").open("ab") as filler:
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()
