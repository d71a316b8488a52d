"""Reading the TOML data files: every failure is a ConfigError naming the file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from smtpguard.config import load_config
from smtpguard.datafiles import (
    ConfigError,
    parse_toml,
    read_file,
    read_toml,
    recording,
    replaying,
)
from smtpguard.scanners.rules import RuleError
from support.service import ROOT


def test_reads_utf8_toml(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text("name = '中文'\n", encoding="utf-8")
    assert read_toml(path) == {"name": "中文"}


def test_a_byte_order_mark_is_read_past(tmp_path: Path) -> None:
    # What Windows editors save: refused as "line 1, column 1" before.
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[milter]\nname = 'x'\n".encode())
    assert read_toml(path) == {"milter": {"name": "x"}}


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


def test_parse_toml_names_the_file_it_came_from(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    assert parse_toml(path, b"a = 1\n") == {"a": 1}
    with pytest.raises(ConfigError) as err:
        parse_toml(path, b"a = \n")
    assert err.value.file == str(path)
    assert err.value.message.startswith("not valid TOML")


def test_a_config_loads_from_bytes_read_before(tmp_path: Path) -> None:
    """A worker's reload: the bytes the supervisor validated, not the file as it is now;
    the file's path still anchors relative paths and names it in errors."""
    path = tmp_path / "conf" / "smtpguard.toml"
    path.parent.mkdir()
    path.write_text("[milter]\nlog_level = 'nonsense'\n")
    config = load_config(path, data=b"[state]\npath = 'state.sqlite'\n")
    assert config.file == path.resolve()
    assert config.state.path == path.parent.resolve() / "state.sqlite"
    with pytest.raises(ConfigError, match=r"smtpguard\.toml: limits\.max_rcpt"):
        load_config(path, data=b"[limits]\nmax_rcpt = 'many'\n")


def test_a_file_read_twice_while_recording_gives_its_first_bytes(tmp_path: Path) -> None:
    """Review rev51: a file read twice by one load (the reply table again for a
    domain's languages) was recorded as its second read, and the supervisor and its
    workers built from different versions."""
    table, other = tmp_path / "replies.toml", tmp_path / "other.toml"
    table.write_bytes(b"one")
    with recording() as files:
        assert read_file(table) == b"one"
        table.write_bytes(b"two")
        assert read_file(table) == b"one"
    assert files == {str(table): b"one"}
    table.write_bytes(b"three")
    other.write_bytes(b"x")
    with replaying(files):
        assert read_file(table) == b"one"
        with pytest.raises(ConfigError, match="not among the files validated with the config"):
            read_file(other)
    assert read_file(table) == b"three"


def test_a_relative_path_through_a_link_is_read_as_the_kernel_reads_it(tmp_path: Path) -> None:
    """Review rev53: "lib/../data/x" was normalized as text to "data/x" beside the
    config, where the kernel takes ".." from the link's target (and resolve() did)."""
    (tmp_path / "opt" / "app" / "lib").mkdir(parents=True)
    (tmp_path / "opt" / "app" / "data").mkdir()
    shutil.copy(ROOT / "rules" / "replies.toml", tmp_path / "opt" / "app" / "data")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "lib").symlink_to(tmp_path / "opt" / "app" / "lib")
    config = tmp_path / "etc" / "smtpguard.toml"
    config.write_text("[replies]\ntable = 'lib/../data/replies.toml'\n", encoding="utf-8")
    table = load_config(config).replies.table
    assert str(table) == f"{tmp_path}/etc/lib/../data/replies.toml"
    with recording() as files:
        assert read_file(table) == (ROOT / "rules" / "replies.toml").read_bytes()
    assert list(files) == [str(table)]


def test_a_data_file_linked_to_dev_null_reads_empty(tmp_path: Path) -> None:
    """Review rev180 F5: an empty list kept as a link to /dev/null stopped the service
    once non-regular files were refused."""
    empty = tmp_path / "blocked.txt"
    empty.symlink_to(os.devnull)
    assert read_file(empty) == b""
