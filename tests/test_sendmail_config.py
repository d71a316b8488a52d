"""sendmail-config: the generated lines, and contrib/ and the README kept equal to the
generator."""

from __future__ import annotations

from pathlib import Path

from smtpguard.app import load
from smtpguard.sendmail import sendmail_mc
from support.sendmail import readme_snippet
from support.service import ROOT, make_site

SAMPLE = ROOT / "conf" / "smtpguard.toml"


def test_contrib_file_is_the_generator_output_for_the_sample_config() -> None:
    assert (ROOT / "contrib/sendmail/smtpguard.mc").read_text() == sendmail_mc(load(SAMPLE))


def test_readme_block_is_the_generator_output_for_the_sample_config() -> None:
    assert readme_snippet() == sendmail_mc(load(SAMPLE))


def test_sendmail_snippet() -> None:
    mc = sendmail_mc(load(SAMPLE))
    assert "F=T" in mc
    assert "S=local:/var/spool/postfix/smtpguard/smtpguard.sock" in mc
    assert "confMILTER_MACROS_CONNECT', ``j, _, v," in mc


def test_sendmail_hop_limit_is_one_above_max_hops(tmp_path: Path) -> None:
    """Sendmail counts its own Received header (smtpguard does not see it) and bounces
    only after a 250: its limit must not fire before smtpguard's looping_message."""
    assert "define(`confMAX_HOP', `31')dnl\n" in sendmail_mc(load(SAMPLE))  # max_hops = 30
    site = make_site(tmp_path, {"limits": {"max_hops": 20}}, directory=False)
    assert "define(`confMAX_HOP', `21')dnl\n" in sendmail_mc(load(site.config))


def test_inet6_socket_keeps_an_ipv6_host(tmp_path: Path) -> None:
    site = make_site(tmp_path, {"milter": {"socket": "inet6:8899"}}, directory=False)
    assert "`S=inet6:8899@::1, F=T," in sendmail_mc(load(site.config))
