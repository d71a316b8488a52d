"""Replacing a watched SQLite file the way deployments do."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_by_rename(new: Path, path: Path) -> None:
    """``cp new tmp; mv tmp path``: what rsync and config management do."""
    staged = path.with_name(path.name + ".tmp")
    shutil.copyfile(new, staged)
    os.replace(staged, path)
