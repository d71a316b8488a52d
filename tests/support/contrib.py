"""What ``contrib/postfix/`` and the README show: the generator's output for the sample
config (``conf/smtpguard.toml``) against a stock Debian 12 Postfix.

``tests/data/postfix/debian12-main.cf`` is the main.cf ``apt install postfix`` writes
for "Internet Site"; it is read with the real ``postconf``, as on such a host. After a
change to the generator or the sample config, rewrite the files with::

    .venv/bin/python -c 'import sys; sys.path.insert(0, "tests"); \\
        from support.contrib import write; write()'
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path

from smtpguard.app import load
from smtpguard.postfix import (
    Settings,
    main_cf_fragment,
    plan,
    postfix_footer_regexp,
    read_postconf,
    shell_script,
)
from smtpguard.replies import load_replies

from .postfix import write_settled

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf" / "smtpguard.toml"
STOCK_MAIN_CF = ROOT / "tests" / "data" / "postfix" / "debian12-main.cf"
README = ROOT / "README.md"
#: The README's block between these markers is the script for a stock Debian 12.
BEGIN, END = "<!-- postfix-config: begin -->", "<!-- postfix-config: end -->"


def stock_settings() -> Settings:
    """The stock instance as ``postconf`` reads it, at the system paths."""
    with tempfile.TemporaryDirectory() as tmp:
        write_settled(Path(tmp) / "main.cf", STOCK_MAIN_CF.read_text())
        write_settled(Path(tmp) / "master.cf", "")
        read = read_postconf(tmp)
    system = {"config_directory": "/etc/postfix", "queue_directory": "/var/spool/postfix"}
    return dataclasses.replace(
        read, raw={**read.raw, **system}, expanded={**read.expanded, **system}
    )


def outputs() -> dict[Path, str]:
    config = load(SAMPLE)
    replies = load_replies(config.replies, config.file)
    result = plan(config, replies, stock_settings())
    script = shell_script(result)
    return {
        ROOT / "contrib/postfix/main.cf.snippet": main_cf_fragment(result),
        ROOT / "contrib/postfix/postconf.sh": script,
        ROOT / "contrib/postfix/smtpguard_footers.regexp": postfix_footer_regexp(
            replies, config.replies.utf8 == "always"
        ),
        README: readme_with(script),
    }


def readme_block(script: str) -> str:
    return f"{BEGIN}\n```sh\n{script}```\n{END}"


def readme_with(script: str) -> str:
    text = README.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise AssertionError(f"README.md has no {BEGIN} ... {END} block")
    return pattern.sub(lambda _m: readme_block(script), text)


def write() -> None:
    for path, text in outputs().items():
        path.write_text(text)
