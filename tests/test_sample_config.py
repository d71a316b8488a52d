"""conf/smtpguard.toml documents every option the loader reads, with its default.

The loader itself says which keys it reads (``loader_keys``), so a new option that is
not added to the sample fails here, and so does a sample value that drifts from the
default.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from smtpguard.config import Config, GenericPatterns, load_config, loader_keys
from smtpguard.pipeline import CHECK_NAMES
from support.service import ROOT

SAMPLE = ROOT / "conf" / "smtpguard.toml"

#: Sections documented only as comments (their contents are operator data), each with
#: the text the sample must carry for it.
COMMENTED = {
    "dnsbl": "# [[dnsbl.zones]]",
    "replies.override": "# [replies.override.",
    "checks": "[checks.",
    # Its default is the host's CPU count: a value in the sample would pin one host's.
    "milter.workers": "# workers = ",
    "policy.exempt": "# [[policy.exempt]]",
    "domain": '# [domain."',
}

#: Where the sample deliberately shows a site's value rather than the default.
SITE_VALUES = {
    ("site", "local_domains"),
    ("site", "our_hostnames"),
    # The service user start.sh creates; the default "" stays as started.
    ("milter", "user"),
}


def sample() -> dict[str, Any]:
    with SAMPLE.open("rb") as fh:
        return tomllib.load(fh)


def table(data: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def test_every_section_and_key_of_the_loader_is_in_the_sample() -> None:
    data = sample()
    text = SAMPLE.read_text()
    missing = []
    for section, keys in loader_keys().items():
        if section == "":
            continue
        if section in COMMENTED:
            if COMMENTED[section] not in text:
                missing.append(f"{section} (documented as {COMMENTED[section]!r})")
            continue
        found = table(data, section)
        if found is None:
            missing.append(f"[{section}]")
            continue
        missing += [
            f"{section}.{key}"
            for key in sorted(keys - set(found))
            if f"{section}.{key}" not in COMMENTED
        ]
    assert missing == []


def comparable(value: Any) -> Any:
    """``value`` with its file paths resolved: the sample's "../rules/x" stays as
    written after its directory (config.py), the defaults are resolved paths."""
    if isinstance(value, Path):
        return value.resolve()
    if isinstance(value, GenericPatterns):
        return dataclasses.replace(value, file=value.file.resolve())
    return value


def test_sample_values_are_the_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    defaults = load_config(empty)
    documented = load_config(SAMPLE)
    differ = []
    for field in dataclasses.fields(Config):
        if field.name in ("file", "source"):  # where each was read
            continue
        if field.name == "checks":
            differ += [
                f"checks.{name}: sample {documented.check(name)}, default {defaults.check(name)}"
                for name in sorted(CHECK_NAMES)
                if documented.check(name) != defaults.check(name)
            ]
            continue
        ours, theirs = getattr(documented, field.name), getattr(defaults, field.name)
        if not dataclasses.is_dataclass(ours):
            if ours != theirs:
                differ.append(field.name)
            continue
        for sub in dataclasses.fields(ours):
            if (field.name, sub.name) in SITE_VALUES:
                continue
            if comparable(getattr(ours, sub.name)) != comparable(getattr(theirs, sub.name)):
                differ.append(
                    f"{field.name}.{sub.name}: sample {getattr(ours, sub.name)!r},"
                    f" default {getattr(theirs, sub.name)!r}"
                )
    assert differ == []


def test_site_values_really_differ_from_the_defaults(tmp_path: Path) -> None:
    """The allowance above stays honest: each listed key is a real site choice."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    defaults, documented = load_config(empty), load_config(SAMPLE)
    for section, key in SITE_VALUES:
        assert getattr(getattr(documented, section), key) != getattr(
            getattr(defaults, section), key
        ), f"{section}.{key} is the default: drop it from SITE_VALUES"
