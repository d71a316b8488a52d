"""Config-file helpers shared by the config tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard.app import load
from smtpguard.config import ConfigError


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "smtpguard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def assert_config_error(tmp_path: Path, text: str, key: str, message: str) -> ConfigError:
    """Loading ``text`` fails with an error naming the file, ``key`` and ``message``."""
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.file == str(path.resolve())
    assert err.value.key == key
    assert message in err.value.message
    return err.value
