"""Reading the TOML data files: every failure is a ConfigError naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard.datafiles import ConfigError, read_toml
from smtpguard.scanners.rules import RuleError


def test_reads_utf8_toml(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text("name = '中文'\n", encoding="utf-8")
    assert read_toml(path) == {"name": "中文"}


def test_bytes_that_are_not_utf8_name_the_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("[milter]\nname = 'café'\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        read_toml(path)
    assert err.value.file == str(path)
    assert err.value.key == ""
    assert err.value.message == "not valid UTF-8: byte 0xe9 at offset 20 (line 2)"


def test_the_callers_error_class_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_bytes(b"\xff")
    with pytest.raises(RuleError, match=r"byte 0xff at offset 0 \(line 1\)"):
        read_toml(path, RuleError)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text("[a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(path)
    with pytest.raises(ConfigError, match="reply table not found"):
        read_toml(tmp_path / "none.toml", what="reply table")
