"""sendmail-config: the generated lines, and contrib/ and the README kept equal to the
generator."""

from __future__ import annotations

import re
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


#: Sendmail 8.17's defaults (cf/m4/cfhead.m4, the same in 8.18), written out here: a
#: ``define`` of ours replaces them, and other milters may need what they hold.
SENDMAIL_DEFAULTS = {
    "confMILTER_MACROS_CONNECT": "j, _, {daemon_name}, {if_name}, {if_addr}",
    "confMILTER_MACROS_HELO": "{tls_version}, {cipher}, {cipher_bits}, {cert_subject}, "
    "{cert_issuer}",
    "confMILTER_MACROS_ENVFROM": "i, {auth_type}, {auth_authen}, {auth_ssf}, {auth_author}, "
    "{mail_mailer}, {mail_host}, {mail_addr}",
    "confMILTER_MACROS_ENVRCPT": "{rcpt_mailer}, {rcpt_host}, {rcpt_addr}",
    "confMILTER_MACROS_EOM": "{msg_id}",
}


def test_every_macro_list_keeps_sendmails_defaults() -> None:
    mc = sendmail_mc(load(SAMPLE))
    defined = dict(re.findall(r"^define\(`(confMILTER_MACROS_\w+)', ``(.*)''\)dnl$", mc, re.M))
    assert defined.keys() == SENDMAIL_DEFAULTS.keys()
    for key, default in SENDMAIL_DEFAULTS.items():
        ours = defined[key].split(", ")
        assert len(ours) == len(set(ours)), key
        assert set(default.split(", ")) <= set(ours), key
    assert {"v", "{client_addr}", "{client_name}"} <= set(
        defined["confMILTER_MACROS_CONNECT"].split(", ")
    )


def test_sendmail_hop_limit_is_one_above_max_hops(tmp_path: Path) -> None:
    """Sendmail counts its own Received header (smtpguard does not see it) and bounces
    only after a 250: its limit must not fire before smtpguard's looping_message."""
    assert "define(`confMAX_HOP', `31')dnl\n" in sendmail_mc(load(SAMPLE))  # max_hops = 30
    site = make_site(tmp_path, {"limits": {"max_hops": 20}}, directory=False)
    assert "define(`confMAX_HOP', `21')dnl\n" in sendmail_mc(load(site.config))


def test_inet6_socket_keeps_an_ipv6_host(tmp_path: Path) -> None:
    site = make_site(tmp_path, {"milter": {"socket": "inet6:8899"}}, directory=False)
    assert "`S=inet6:8899@::1, F=T," in sendmail_mc(load(site.config))
