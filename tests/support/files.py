"""Replacing a watched SQLite file the way deployments do; counting descriptors on one."""

from __future__ import annotations

import os
import shutil
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
