"""sendmail-config: the generated lines, and contrib/ kept equal to the generator."""

from __future__ import annotations

from smtpguard.app import load
from smtpguard.sendmail import sendmail_mc
from support.service import ROOT

SAMPLE = ROOT / "conf" / "smtpguard.toml"


def test_contrib_file_is_the_generator_output_for_the_sample_config() -> None:
    assert (ROOT / "contrib/sendmail/smtpguard.mc").read_text() == sendmail_mc(load(SAMPLE))


def test_sendmail_snippet() -> None:
    mc = sendmail_mc(load(SAMPLE))
    assert "F=T" in mc
    assert "S=local:/run/smtpguard/smtpguard.sock" in mc
    assert "confMILTER_MACROS_CONNECT', ``j, _, v," in mc
