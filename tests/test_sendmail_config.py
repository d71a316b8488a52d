"""sendmail-config: the generated lines, and contrib/ and the README kept equal to the
generator."""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtpguard.app import load
from smtpguard.bounds import AnswerBounds, answer_bounds
from smtpguard.config import Config
from smtpguard.sendmail import (
    sendmail_cf_problems,
    sendmail_mc,
    sendmail_option_flags,
    sendmail_socket_dir_problems,
    sendmail_socket_problem,
    sendmail_timeouts,
)
from support.sendmail import fetch_debs, install, readme_snippet
from support.service import ROOT, make_site, run_cli

SAMPLE = ROOT / "conf" / "smtpguard.toml"


def test_contrib_file_is_the_generator_output_for_the_sample_config() -> None:
    assert (ROOT / "contrib/sendmail/smtpguard.mc").read_text() == sendmail_mc(load(SAMPLE))


def test_readme_block_is_the_generator_output_for_the_sample_config() -> None:
    assert readme_snippet() == sendmail_mc(load(SAMPLE))


def test_contrib_readme_block_is_the_generator_output_for_the_sample_config() -> None:
    text = (ROOT / "contrib/sendmail/README.md").read_text(encoding="utf-8")
    block = re.search(r"^```m4\n(.*?)^```$", text, re.M | re.S)
    assert block is not None
    assert block.group(1) == sendmail_mc(load(SAMPLE))


def test_sendmail_snippet() -> None:
    mc = sendmail_mc(load(SAMPLE))
    assert "F=T" in mc
    assert "S=local:/var/spool/postfix/smtpguard/smtpguard.sock" in mc
    assert "define(`confMILTER_MACROS_CONNECT', defn(`confMILTER_MACROS_CONNECT')ifelse(" in mc
    assert "m4wrap(`ifelse(regexp(`,'defn(`confINPUT_MAIL_FILTERS')" in mc


#: Sendmail 8.17's defaults (cf/m4/cfhead.m4, the same in 8.18), as the .cf writes them.
SENDMAIL_DEFAULTS = {
    "connect": "j, _, {daemon_name}, {if_name}, {if_addr}",
    "helo": "{tls_version}, {cipher}, {cipher_bits}, {cert_subject}, {cert_issuer}",
    "envfrom": "i, {auth_type}, {auth_authen}, {auth_ssf}, {auth_author}, {mail_mailer}, "
    "{mail_host}, {mail_addr}",
    "envrcpt": "{rcpt_mailer}, {rcpt_host}, {rcpt_addr}",
    "eom": "{msg_id}",
}
#: What smtpguard reads (driver.py; ``{client_resolve}`` for the connect stage).
READS = {
    "connect": {"v", "{client_resolve}"},
    "helo": {"{tls_version}"},
    "envfrom": {"i", "{auth_type}", "{auth_authen}", "{tls_version}"},
}
#: Another milter's lines, as such packages document them: its own lists, replacing
#: Sendmail's (with single quotes the commas are unprotected in the definition; with
#: double quotes, as cfhead.m4 writes the defaults, they are not), or milter-greylist's
#: append.
OTHER_FILTER = "INPUT_MAIL_FILTER(`other', `S=local:/run/other/other.sock, F=T')dnl\n"
REPLACES_SINGLE = (
    "define(`confMILTER_MACROS_CONNECT',`t, b, j, _, {daemon_name}, {if_name}, {if_addr}')dnl\n"
    "define(`confMILTER_MACROS_ENVRCPT',`r, v, Z')dnl\n"
)
REPLACES_DOUBLE = REPLACES_SINGLE.replace(",`", ", ``").replace("')dnl", "'')dnl")
APPENDS = (
    "define(`confMILTER_MACROS_CONNECT', confMILTER_MACROS_CONNECT`, {greylist}')dnl\n"
    "define(`confMILTER_MACROS_HELO', confMILTER_MACROS_HELO`, {verify}')dnl\n"
)
OURS = "ours"


@dataclass(frozen=True)
class Built:
    """A .cf built from .mc lines: m4's exit status and warnings, and the .cf's
    ``O Milter.macros.*`` values and ``O InputMailFilters``."""

    returncode: int
    stderr: str
    macros: dict[str, str]
    filters: str
    mailers: list[str]
    filter_lines: list[str]
    text: str


@pytest.fixture(scope="module")
def build_cf(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Built]:
    """Builds a .cf from the given .mc lines with Sendmail's own m4 files (8.17, from
    the Debian packages the e2e tests use)."""
    inst = install(fetch_debs(), tmp_path_factory.mktemp("sendmail-root"))
    work = tmp_path_factory.mktemp("mc")

    def build(lines: str) -> Built:
        mc, cf = work / "test.mc", work / "test.cf"
        mc.write_text("OSTYPE(`bsd4.4')dnl\n" + lines + "MAILER(`local')dnl\n")
        try:
            returncode, stderr = 0, inst.build_cf(mc, cf)
        except subprocess.CalledProcessError as exc:
            returncode, stderr = exc.returncode, exc.stderr.decode()
        text = cf.read_text()
        filters = re.search(r"^O InputMailFilters=(.*)$", text, re.M)
        return Built(
            returncode,
            stderr,
            dict(re.findall(r"^O Milter\.macros\.(\w+)=(.*)$", text, re.M)),
            filters.group(1) if filters else "",
            re.findall(r"^M(\w+),", text, re.M),
            re.findall(r"^X([\w.-]+),", text, re.M),
            text,
        )

    return build


@pytest.fixture(scope="module")
def sendmail_cf(build_cf: Callable[[str], Built]) -> Callable[[str], dict[str, str]]:
    """The ``O Milter.macros.*`` values of a .cf built from the given .mc lines."""

    def build(lines: str) -> dict[str, str]:
        built = build_cf(lines)
        assert built.returncode == 0, built.stderr
        return built.macros

    return build


def items(value: str) -> list[str]:
    return value.split(", ")


@pytest.mark.integration
def test_macro_lines_keep_sendmails_default_lists(
    sendmail_cf: Callable[[str], dict[str, str]],
) -> None:
    """Built by Sendmail's m4: each default list stays, with only what smtpguard reads
    and the list lacks appended; the lists that lack nothing are left alone."""
    macros = sendmail_cf(sendmail_mc(load(SAMPLE)))
    assert macros == {
        **SENDMAIL_DEFAULTS,
        "connect": f"{SENDMAIL_DEFAULTS['connect']}, v, {{client_resolve}}",
        "envfrom": f"{SENDMAIL_DEFAULTS['envfrom']}, {{tls_version}}",
    }
    for stage, wanted in READS.items():
        assert wanted <= set(items(macros[stage])), stage


@pytest.mark.integration
@pytest.mark.parametrize(
    "lines",
    [
        pytest.param((OTHER_FILTER + REPLACES_SINGLE, OURS), id="replaced-before"),
        pytest.param((OTHER_FILTER + APPENDS, OURS), id="appended-before"),
        pytest.param((OURS, OTHER_FILTER + APPENDS), id="appended-after"),
        pytest.param((OTHER_FILTER + REPLACES_DOUBLE, OURS, APPENDS), id="before-and-after"),
    ],
)
def test_macro_lines_keep_another_milters_macros(
    sendmail_cf: Callable[[str], dict[str, str]], lines: tuple[str, ...]
) -> None:
    """Another milter's lines before ours, after ours, or both: every list holds what
    that milter's lines alone give, plus what smtpguard reads.

    (milter-greylist's append after a list replaced with single quotes fails without
    smtpguard too: the list's commas split its argument; so that case is not here.)"""
    ours = sendmail_mc(load(SAMPLE))
    theirs = sendmail_cf("".join(part for part in lines if part != OURS))
    both = sendmail_cf("".join(ours if part == OURS else part for part in lines))
    assert both.keys() == theirs.keys()
    for stage, listed in theirs.items():
        got = items(both[stage])
        assert set(items(listed)) | READS.get(stage, set()) <= set(got), (stage, both[stage])
        assert len(got) == len(set(got)), (stage, both[stage])


@pytest.mark.integration
@pytest.mark.parametrize(
    ("admins", "built"),
    [
        ("", 31),  # max_hops = 30
        ("define(`confMAX_HOP', `17')dnl\n", 31),
        # Review rev160 F1: lowered to 31, a dry run's 250 with 31 hops then bounced.
        ("define(`confMAX_HOP', `60')dnl\n", 60),
    ],
)
def test_sendmail_hop_limit_is_raised_to_one_above_max_hops(
    build_cf: Callable[[str], Built], admins: str, built: int
) -> None:
    """Sendmail counts its own Received header (smtpguard does not see it) and bounces
    only after a 250: its limit must not fire before smtpguard's looping_message, and a
    higher one of the admin's, above the generated lines, stays."""
    text = build_cf(admins + sendmail_mc(load(SAMPLE))).text
    assert f"O MaxHopCount={built}\n" in text


def test_sendmail_hop_limit_follows_max_hops(tmp_path: Path) -> None:
    site = make_site(tmp_path, {"limits": {"max_hops": 20}}, directory=False)
    assert "`define(`confMAX_HOP', `21')')dnl\n" in sendmail_mc(load(site.config))


def test_inet6_socket_keeps_an_ipv6_host(tmp_path: Path) -> None:
    site = make_site(tmp_path, {"milter": {"socket": "inet6:8899"}}, directory=False)
    assert "`S=inet6:8899@::1, F=T," in sendmail_mc(load(site.config))


def test_read_timeout_covers_smtpguards_slowest_answer(tmp_path: Path) -> None:
    """Sendmail reads the end-of-message reply with R:, not E:. The defaults keep
    R:30s and E:5m; a clamd (connect, then the verdict, each virus.timeout) or rspamd
    (connect, then the answer) raise R: above smtpguard's worst case, plus 10 s."""
    sample = load(SAMPLE)
    # MAIL: two dns.stage_deadline of 3 (the checks before the sender's one at most,
    # the sender's a whole one after them) and a quarter of dns.timeout 2 given back
    # to a lookup that waited for a slot + directory.timeout 2 + state.timeout 2
    # twice (the same-size counter, then the blacklist).
    assert answer_bounds(sample) == AnswerBounds(command=12.5, content=5.5)
    assert sendmail_timeouts(sample) == "C:30s;S:30s;R:30s;E:5m"
    assert "F=T, T=C:30s;S:30s;R:30s;E:5m')', `errprint" in sendmail_mc(sample)

    def cfg(name: str, extra: dict[str, object]) -> Config:
        return load(make_site(tmp_path / name, extra, directory=False).config)

    clamd = cfg("clamd", {"virus": {"backend": "clamd", "timeout": 30.0}})
    shared = clamd.dns.stage_deadline + clamd.dns.timeout / 4 + clamd.state.timeout
    assert answer_bounds(clamd).content == shared + 2 * 30.0
    slowest = math.ceil(shared + 70)
    assert sendmail_timeouts(clamd) == f"C:30s;S:{slowest}s;R:{slowest}s;E:5m"
    assert math.ceil(shared + 70) > 2 * 30 + 10

    both = cfg(
        "both",
        {
            "virus": {"backend": "clamd", "timeout": 120.0},
            "antispam": {"engine": "rspamd", "engine_timeout": 30.0},
        },
    )
    read = math.ceil(shared + 240 + 60 + 10)
    # E: is never shorter than R: (it caps the whole end-of-message exchange).
    assert sendmail_timeouts(both) == f"C:30s;S:{read}s;R:{read}s;E:{read}s"

    command = cfg(
        "command", {"virus": {"backend": "command", "command": ["/bin/true"], "timeout": 50.0}}
    )
    slowest = math.ceil(shared + 60)
    assert sendmail_timeouts(command) == f"C:30s;S:{slowest}s;R:{slowest}s;E:5m"

    # MAIL waits for DNS, the directory and the state store: the longest step here.
    dns = cfg("dns", {"dns": {"nameservers": ["127.0.0.1"], "stage_deadline": 40.0}})
    mail = 2 * 40.0 + dns.dns.timeout / 4 + dns.directory.timeout + 2 * dns.state.timeout
    assert answer_bounds(dns).longest == answer_bounds(dns).command == pytest.approx(mail)
    slowest = math.ceil(mail + 10)
    assert sendmail_timeouts(dns) == f"C:30s;S:{slowest}s;R:{slowest}s;E:5m"


@pytest.mark.parametrize(
    "path",
    [
        "/run/a,b/smtpguard.sock",  # the .cf does not load: "'=' expected"
        "/run/it's/smtpguard.sock",
        "/run/a#b/smtpguard.sock",  # the line is cut there: Sendmail runs without filter
        "/run/a$xb/smtpguard.sock",  # a macro: every session tempfails
    ],
)
def test_a_socket_path_sendmail_cannot_read_is_refused(tmp_path: Path, path: str) -> None:
    """Each seen with Sendmail 8.17; check-config says so for a Sendmail site too."""
    extra = {"milter": {"socket": f"unix:{path}", "mta": "sendmail"}}
    site = make_site(tmp_path, extra, directory=False)
    result = run_cli("-c", str(site.config), "sendmail-config")
    assert result.returncode == 2
    assert "cannot carry" in result.stderr
    assert result.stdout == ""
    checked = run_cli("-c", str(site.config), "check-config", "--offline")
    assert checked.returncode == 1
    assert "milter.socket: for Sendmail:" in checked.stderr


def test_a_config_that_calls_its_mta_postfix_gets_no_sendmail_lines(tmp_path: Path) -> None:
    """Review rev140 F1: with milter.mta = "postfix" a Sendmail that sends no macro v
    gets UTF-8 replies, which it mangles (its clients fall out of step); no Sendmail
    command passes such a config."""
    site = make_site(tmp_path, {"milter": {"mta": "postfix"}}, directory=False)
    result = run_cli("-c", str(site.config), "sendmail-config")
    assert (result.returncode, result.stdout) == (2, "")
    assert 'milter.mta = "postfix"' in result.stderr
    assert 'set milter.mta = "auto"' in result.stderr
    good = make_site(tmp_path / "auto", directory=False)
    lines = run_cli("-c", str(good.config), "sendmail-config")
    assert lines.returncode == 0
    cf = tmp_path / "sendmail.cf"
    cf.write_text(
        "O InputMailFilters=smtpguard\nXsmtpguard, S=local:/run/x.sock, F=T\n", encoding="utf-8"
    )
    checked = run_cli("-c", str(site.config), "sendmail-config", "--check", str(cf))
    assert checked.returncode == 1
    assert f'{cf}: milter.mta = "postfix": a Sendmail that sends no macro v' in checked.stdout
    other = run_cli("-c", str(good.config), "sendmail-config", "--check", str(cf))
    assert 'milter.mta = "postfix"' not in other.stdout


def test_socket_paths_sendmail_reads_are_accepted() -> None:
    for socket in ("unix:/run/a b%c/smtpguard.sock", "inet:10025@127.0.0.1", "inet6:10025@[::1]"):
        assert sendmail_socket_problem(socket) is None, socket


@pytest.mark.integration
def test_a_list_replaced_before_without_what_smtpguard_reads_gets_it_back(
    sendmail_cf: Callable[[str], dict[str, str]],
) -> None:
    """Review rev68 F2: another milter's lines replaced the MAIL list without the SASL
    macros, and every login was unknown to smtpguard (refused as relay_local_fail)."""
    replaced = (
        OTHER_FILTER
        + "define(`confMILTER_MACROS_ENVFROM',`{mail_addr}')dnl\n"
        + "define(`confMILTER_MACROS_HELO',`{cipher}')dnl\n"
    )
    macros = sendmail_cf(replaced + sendmail_mc(load(SAMPLE)))
    assert items(macros["envfrom"]) == [
        "{mail_addr}",
        "i",
        "{auth_type}",
        "{auth_authen}",
        "{tls_version}",
    ]
    assert items(macros["helo"]) == ["{cipher}", "{tls_version}"]


LATER_LIST = (
    "MAIL_FILTER(`other', `S=local:/run/other/other.sock, F=T')dnl\n"
    "define(`confINPUT_MAIL_FILTERS', `{listed}')dnl\n"
)


@pytest.mark.integration
@pytest.mark.parametrize("listed", ["other", "smtpguard2", "other , smtpguard2"])
def test_a_later_filter_list_without_smtpguard_fails_the_build(
    build_cf: Callable[[str], Built], listed: str
) -> None:
    """Review rev68 F1: a define of confINPUT_MAIL_FILTERS after smtpguard's lines
    replaced the list; the .cf built without a word and Sendmail ran without it.
    rev70 N4: stopping m4 at once left a .cf without rule sets or mailers, which
    Debian installs anyway; the .cf is now whole, with smtpguard back first."""
    built = build_cf(sendmail_mc(load(SAMPLE)) + LATER_LIST.replace("{listed}", listed))
    assert built.returncode == 1
    assert "smtpguard: smtpguard is not in confINPUT_MAIL_FILTERS" in built.stderr
    assert "this sendmail.cf has it back, first" in built.stderr
    assert built.filters == f"smtpguard,{listed}"
    assert built.mailers == ["local", "prog"]
    whole = build_cf(sendmail_mc(load(SAMPLE)))
    assert (built.mailers, built.macros) == (whole.mailers, whole.macros)
    assert whole.mailers == ["local", "prog"]


@pytest.mark.integration
def test_an_emptied_filter_list_gets_smtpguard_alone(build_cf: Callable[[str], Built]) -> None:
    """A list emptied or removed after smtpguard's lines: smtpguard alone, no stray
    comma (Sendmail reads the list at "," and would look for a filter without a name)."""
    for later in ("define(`confINPUT_MAIL_FILTERS', `')", "undefine(`confINPUT_MAIL_FILTERS')"):
        built = build_cf(sendmail_mc(load(SAMPLE)) + later + "dnl\n")
        assert built.returncode == 1, built.stderr
        assert built.filters == "smtpguard"
        assert built.mailers == ["local", "prog"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("lines", "filters", "warned"),
    [
        pytest.param((OURS,), "smtpguard", False, id="alone"),
        pytest.param((OURS, OTHER_FILTER), "smtpguard, other", False, id="first"),
        pytest.param((OTHER_FILTER, OURS), "other, smtpguard", True, id="second"),
        pytest.param(
            (OURS, LATER_LIST.replace("{listed}", "smtpguard,other")),
            "smtpguard,other",
            False,
            id="defined-first",
        ),
        pytest.param(
            (OURS, LATER_LIST.replace("{listed}", "other,smtpguard")),
            "other,smtpguard",
            True,
            id="defined-second",
        ),
    ],
)
def test_smtpguard_not_first_in_the_filter_list_is_a_warning(
    build_cf: Callable[[str], Built], lines: tuple[str, ...], filters: str, warned: bool
) -> None:
    """Review rev68 F3: after another filter smtpguard sees the header as that one
    left it, and removed its genuine Authentication-Results under our authserv-id."""
    ours = sendmail_mc(load(SAMPLE))
    built = build_cf("".join(ours if part == OURS else part for part in lines))
    assert built.returncode == 0, built.stderr
    assert built.filters == filters
    assert ("smtpguard: warning: smtpguard is not the first" in built.stderr) is warned


@pytest.mark.integration
def test_lines_pasted_twice_keep_one_filter_definition(build_cf: Callable[[str], Built]) -> None:
    """Sendmail 8.17 does not start with a filter defined twice ("Xsmtpguard:
    duplicate filter definition", exit 70): the second copy's filter line is left out,
    and m4 exits 1 once the whole .cf is written (Debian installs it anyway)."""
    ours = sendmail_mc(load(SAMPLE))
    built = build_cf(ours + ours)
    assert built.returncode == 1
    assert "smtpguard: the smtpguard filter is defined twice" in built.stderr
    assert built.filters == "smtpguard"
    assert built.filter_lines == ["smtpguard"]
    whole = build_cf(ours)
    assert (built.mailers, built.macros) == (whole.mailers, whole.macros)
    assert whole.filter_lines == ["smtpguard"]


#: The filter line of an earlier release (before the guard against a second copy).
OLD_LINE = "INPUT_MAIL_FILTER(`smtpguard', `S=local:/old/smtpguard.sock, F=T')dnl\n"


@pytest.mark.integration
@pytest.mark.parametrize("order", ["old-below", "old-above"])
def test_an_older_copy_beside_the_lines_keeps_one_filter_definition(
    build_cf: Callable[[str], Built], order: str
) -> None:
    """Review rev75 F1: an earlier release's line below these (an upgrade that added
    instead of replacing) defined the filter again; m4 exited 0 and Sendmail did not
    start. The first definition is kept either way, and m4 exits 1."""
    ours = sendmail_mc(load(SAMPLE))
    built = build_cf(ours + OLD_LINE if order == "old-below" else OLD_LINE + ours)
    assert built.returncode == 1
    assert "smtpguard: the smtpguard filter is defined twice" in built.stderr
    assert built.filters == "smtpguard"
    assert built.filter_lines == ["smtpguard"]
    assert built.mailers == ["local", "prog"]


@pytest.mark.integration
def test_two_instances_each_enlist_their_own_filter(
    build_cf: Callable[[str], Built], tmp_path: Path
) -> None:
    """Each instance's lines wrap Sendmail's filter macros under a name of their own."""
    site = make_site(tmp_path, {"milter": {"name": "smtpguard.b-2"}}, directory=False)
    built = build_cf(sendmail_mc(load(SAMPLE)) + sendmail_mc(load(site.config)))
    assert built.returncode == 0, built.stderr
    assert built.filters == "smtpguard, smtpguard.b-2"
    assert built.filter_lines == ["smtpguard", "smtpguard.b-2"]


@pytest.mark.integration
def test_a_wrapped_define_that_drops_smtpguard_fails_the_build(
    build_cf: Callable[[str], Built],
) -> None:
    """Review rev75 F2: text wrapped above smtpguard's lines runs after their guard
    (last in, first out) and replaced the list: m4 exited 0. It is looked at again
    once proto.m4 has written the .cf."""
    wrapped = (
        "m4wrap(`define(`confINPUT_MAIL_FILTERS', `other')')dnl\n"
        "MAIL_FILTER(`other', `S=local:/run/other/other.sock, F=T')dnl\n"
    )
    built = build_cf(wrapped + sendmail_mc(load(SAMPLE)))
    assert built.returncode == 1
    assert "replaced the list); this sendmail.cf may run without smtpguard" in built.stderr


@pytest.mark.integration
def test_names_that_differ_in_punctuation_each_enlist_their_filter(
    build_cf: Callable[[str], Built], tmp_path: Path
) -> None:
    """Review rev76 N1: "a.b" and "a_b" shared the m4 name of the wrapped macros, so
    the second instance's were not wrapped, and an older line of it left below defined
    it twice (Sendmail did not start, m4 exited 0)."""
    mcs = [
        sendmail_mc(load(make_site(tmp_path / n, {"milter": {"name": n}}, directory=False).config))
        for n in ("a.b", "a_b", "a-b")
    ]
    built = build_cf("".join(mcs))
    assert built.returncode == 0, built.stderr
    assert built.filters == "a.b, a_b, a-b"
    assert built.filter_lines == ["a.b", "a_b", "a-b"]
    built = build_cf("".join(mcs) + "INPUT_MAIL_FILTER(`a_b', `S=local:/old/a_b.sock')dnl\n")
    assert built.returncode == 1
    assert "smtpguard: the a_b filter is defined twice" in built.stderr
    assert built.filter_lines == ["a.b", "a_b", "a-b"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("later", "said"),
    [
        pytest.param(
            "INPUT_MAIL_FILTER(``smtpguard'', `S=local:/old/smtpguard.sock')dnl\n",
            "smtpguard is defined twice: Sendmail would not start",
            id="quoted-twice",
        ),
        pytest.param(
            "define(`INPUT_MAIL_FILTER', `MAIL_FILTER(`$1', `$2')define("
            "`confINPUT_MAIL_FILTERS', defn(`confINPUT_MAIL_FILTERS')`, '`$1')')dnl\n" + OLD_LINE,
            "confINPUT_MAIL_FILTERS names smtpguard twice: Sendmail would answer every MAIL",
            id="macro-redefined",
        ),
        pytest.param(
            "define(`confINPUT_MAIL_FILTERS', `smtpguard,smtpguard')dnl\n",
            "confINPUT_MAIL_FILTERS names smtpguard twice: Sendmail would answer every MAIL",
            id="listed-twice-adjacent",
        ),
    ],
)
def test_what_cannot_be_mended_fails_the_build(
    build_cf: Callable[[str], Built], later: str, said: str
) -> None:
    """Review rev76 N1, N4: an older line quoted oddly, or a site's own INPUT_MAIL_FILTER
    after smtpguard's lines, slips past the wrapped macros; the guard says what
    Sendmail would do and m4 exits 1."""
    built = build_cf(sendmail_mc(load(SAMPLE)) + later)
    assert built.returncode == 1
    assert f"smtpguard: {said}" in built.stderr


#: A .mc that lists its filters first and defines them after, as Sendmail's cf/README
#: allows.
LIST_FIRST = (
    "define(`confINPUT_MAIL_FILTERS', `smtpguard,other')dnl\n"
    "MAIL_FILTER(`other', `S=local:/run/other/other.sock, F=T')dnl\n"
)


@pytest.mark.integration
def test_a_list_defined_before_naming_smtpguard_names_it_once(
    build_cf: Callable[[str], Built],
) -> None:
    """INPUT_MAIL_FILTER appended smtpguard to a list that named it already
    ("smtpguard,other, smtpguard"), and Sendmail 8.17 then answered every MAIL with
    451 4.3.2: with the list naming it, only the X line is written."""
    built = build_cf(LIST_FIRST + sendmail_mc(load(SAMPLE)))
    assert built.returncode == 0, built.stderr
    assert built.filters == "smtpguard,other"
    assert sorted(built.filter_lines) == ["other", "smtpguard"]


@pytest.mark.integration
def test_a_list_replaced_after_smtpguards_lines_is_warned_about(
    build_cf: Callable[[str], Built],
) -> None:
    """Review rev70 N5: another milter's define after smtpguard's lines replaced the MAIL
    list without the SASL macros; the build was silent and every login was refused."""
    later = OTHER_FILTER + "define(`confMILTER_MACROS_ENVFROM',`{mail_addr}')dnl\n"
    built = build_cf(sendmail_mc(load(SAMPLE)) + later)
    assert built.returncode == 0
    for macro in ("i", "{auth_type}", "{auth_authen}", "{tls_version}"):
        assert f"smtpguard: warning: confMILTER_MACROS_ENVFROM lacks {macro} (" in built.stderr
    assert "confMILTER_MACROS_CONNECT lacks" not in built.stderr
    # ... and put back (review of the Debian install path: the .cf is used as built).
    assert items(built.macros["envfrom"]) == [
        "{mail_addr}",
        "i",
        "{auth_type}",
        "{auth_authen}",
        "{tls_version}",
    ]
    assert "lacks" not in build_cf(sendmail_mc(load(SAMPLE))).stderr


def test_the_guard_messages_hold_no_m4_quotes() -> None:
    """An apostrophe in a message ends m4's quoted argument: the .mc would not build."""
    text = sendmail_mc(load(SAMPLE))
    assert text.count("errprint(`") == len(re.findall(r"errprint\(`[^`']*'\)", text)) > 6


@pytest.mark.integration
def test_check_reads_what_a_built_cf_will_run(
    build_cf: Callable[[str], Built], tmp_path: Path
) -> None:
    """`sendmail-config --check CF`: the .cf is what Sendmail runs, whatever the m4
    guards could see (a list given as another macro's name: review rev75 F3)."""
    sample = load(SAMPLE)
    good = build_cf(sendmail_mc(sample))
    assert sendmail_cf_problems(sample, good.text) == []
    via_macro = build_cf(
        "define(`MYLIST', `smtpguard,other')dnl\n"
        "define(`confINPUT_MAIL_FILTERS', `MYLIST')dnl\n"
        "MAIL_FILTER(`other', `S=local:/run/other/other.sock, F=T')dnl\n" + sendmail_mc(sample)
    )
    assert sendmail_cf_problems(sample, via_macro.text) == [
        "InputMailFilters names smtpguard 2 times: Sendmail answers every MAIL with 451 4.3.2"
    ]
    edited = (
        good.text.replace("F=T, ", "")
        .replace(", {auth_authen}", "")
        .replace("O InputMailFilters=smtpguard", "O InputMailFilters=other, smtpguard")
    )
    assert sendmail_cf_problems(sample, edited) == [
        "InputMailFilters names other, which has no X line: Sendmail does not start",
        "InputMailFilters: smtpguard is not first (other, smtpguard): it sees the header"
        " fields as the filters before it left them",
        "Xsmtpguard: no F=T: while smtpguard is down or restarting Sendmail accepts mail unchecked",
        "Milter.macros.envfrom lacks {auth_authen}: logins are unknown to smtpguard: their"
        " mail is refused",
    ]
    other = load(
        make_site(
            tmp_path,
            {"milter": {"name": "smtpguard", "socket": "inet:8899@127.0.0.1"}},
            directory=False,
        ).config
    )
    assert sendmail_cf_problems(other, good.text) == [
        "Xsmtpguard: S=local:/var/spool/postfix/smtpguard/smtpguard.sock is not this"
        " config's socket (inet:8899@127.0.0.1)"
    ]
    cf = tmp_path / "sendmail.cf"
    cf.write_text(good.text)
    ok = run_cli("-c", str(SAMPLE), "sendmail-config", "--check", str(cf))
    assert (ok.returncode, ok.stdout) == (0, f"{cf}: OK\n")
    cf.write_text(via_macro.text)
    bad = run_cli("-c", str(SAMPLE), "sendmail-config", "--check", str(cf))
    assert bad.returncode == 1
    assert f"{cf}: InputMailFilters names smtpguard 2 times" in bad.stdout
    missing = run_cli("-c", str(SAMPLE), "sendmail-config", "--check", str(tmp_path / "none.cf"))
    assert missing.returncode == 2
    assert "No such file" in missing.stderr


def test_check_names_a_socket_below_a_directory_others_may_write(
    build_cf: Callable[[str], Built], tmp_path: Path
) -> None:
    """Review rev176 F1: Sendmail 8.17 stops at start ("local socket name ... unsafe:
    Group writable directory", /tmp's "World writable directory" too) and --check
    said OK."""
    shared = tmp_path / "gw"
    shared.mkdir()
    shared.chmod(0o775)
    socket = f"unix:{shared}/smtpguard.sock"
    found = sendmail_socket_dir_problems(socket)
    assert f"milter.socket {shared}/smtpguard.sock: {shared} is writable by its group" in "\n".join(
        found
    )
    assert sendmail_socket_dir_problems(socket, "GroupWritableDirPathSafe") == [
        p for p in found if "its group" not in p
    ]
    both = "groupwritabledirpathsafe, WorldWritableDirPathSafe"
    assert sendmail_socket_dir_problems(socket, both) == []
    shared.chmod(0o755)
    assert all(str(shared) not in p.split(": ")[1] for p in sendmail_socket_dir_problems(socket))
    shared.chmod(0o775)
    # Not made yet: smtpguard makes it; an inet socket has no directory.
    assert sendmail_socket_dir_problems(f"unix:{shared}/new/s.sock", both) == []
    assert sendmail_socket_dir_problems("inet:8899@127.0.0.1") == []
    site = make_site(tmp_path / "site", {"milter": {"socket": socket}}, directory=False)
    cf = tmp_path / "sendmail.cf"
    cf.write_text(build_cf(sendmail_mc(load(site.config))).text)
    checked = run_cli("-c", str(site.config), "sendmail-config", "--check", str(cf))
    assert checked.returncode == 1
    assert f"{shared} is writable by its group (drwxrwxr-x): Sendmail" in checked.stdout
    made = run_cli("-c", str(site.config), "sendmail-config")
    assert made.returncode == 0
    assert f"warning: milter.socket {shared}/smtpguard.sock: {shared}" in made.stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    ("old", "new", "found"),
    [
        # Read as Sendmail reads them (review rev78 F2): no problem.
        ("O InputMailFilters=smtpguard", "O InputMailFilters = smtpguard", []),
        ("O InputMailFilters=smtpguard", "O inputmailfilters=smtpguard", []),
        ("S=local:", "S=unix:", []),
        (
            "S=local:/var/spool/postfix/smtpguard/smtpguard.sock",
            'S="local:/var/spool/postfix/smtpguard/smtpguard.sock"',
            [],
        ),
        ("Xsmtpguard, S=", "Xsmtpguard Socket=", []),
        (", F=T,", ",\n\tFlags=T,", []),
        # What Sendmail refuses to load (rev78 F1).
        (
            "O InputMailFilters=smtpguard",
            "O InputMailFilters=smtpguard;other",
            ["InputMailFilters names other, which has no X line: Sendmail does not start"],
        ),
        (
            "O InputMailFilters=smtpguard",
            "O InputMailFilters=smtpguard ,other",
            [
                "InputMailFilters: 'smtpguard ' ends in a space, which Sendmail keeps: it"
                " looks for a filter of that name and does not start",
                "InputMailFilters names other, which has no X line: Sendmail does not start",
            ],
        ),
    ],
)
def test_check_reads_the_cf_as_sendmail_does(
    build_cf: Callable[[str], Built], old: str, new: str, found: list[str]
) -> None:
    sample = load(SAMPLE)
    text = build_cf(sendmail_mc(sample)).text
    assert old in text
    assert sendmail_cf_problems(sample, text.replace(old, new, 1)) == found


@pytest.mark.integration
@pytest.mark.integration
@pytest.mark.parametrize(
    ("written", "found"),
    [
        # Review rev160 F3: Sendmail reaches smtpguard there.
        ("S=inet:8899@localhost, F=T,", []),
        ("S=inet:08899@[127.0.0.1], F=T,", []),
        ("S=inet:8899@127.0.0.2, F=T,", ["is not this config's socket"]),
        # Review rev160 F2: 4 is a 421 and the session closed, before R is asked.
        ("S=inet:8899@127.0.0.1, F=4,", []),
        ("S=inet:8899@127.0.0.1, F=R4,", []),
        ("S=inet:8899@127.0.0.1, F=R,", ["rejects mail for good"]),
        ("S=inet:8899@127.0.0.1, F=,", ["accepts mail unchecked"]),
    ],
)
def test_check_reads_the_socket_and_flags_as_sendmail_does(
    build_cf: Callable[[str], Built], tmp_path: Path, written: str, found: list[str]
) -> None:
    config = load(
        make_site(tmp_path, {"milter": {"socket": "inet:8899@127.0.0.1"}}, directory=False).config
    )
    text = build_cf(sendmail_mc(config)).text
    generated = "S=inet:8899@127.0.0.1, F=T,"
    assert generated in text
    problems = sendmail_cf_problems(config, text.replace(generated, written, 1))
    assert len(problems) == len(found), problems
    for problem, part in zip(problems, found, strict=True):
        assert part in problem


@pytest.mark.integration
def test_check_counts_filter_definitions_in_any_case(build_cf: Callable[[str], Built]) -> None:
    """Review rev78 F1: Sendmail looks filter names up in any case; Xsmtpguard and
    XSMTPGUARD are one filter defined twice, and it does not start."""
    sample = load(SAMPLE)
    text = build_cf(sendmail_mc(sample)).text
    line = next(x for x in text.splitlines() if x.startswith("Xsmtpguard,"))
    doubled = text.replace(line, line + "\n" + line.replace("Xsmtpguard", "XSMTPGUARD"))
    assert sendmail_cf_problems(sample, doubled) == [
        "Xsmtpguard is defined 2 times (names in any case): Sendmail does not start"
    ]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("features", "whom"),
    [
        ("promiscuous_relay", "every client"),
        # Review rev152 F2: a forged local sender relayed in a dry run.
        ("relay_local_from", "any client with a local domain in MAIL FROM (forgeable)"),
        (
            "access_db relay_mail_from",
            "any client with a MAIL FROM its access map lists RELAY (forgeable)",
        ),
        ("relay_based_on_MX", "any client to a domain whose MX points here (whoever runs its DNS)"),
        ("loose_relay_check", "any client to user%host@ a local domain"),
    ],
)
def test_check_fails_an_open_relay_cf_unless_smtpguard_alone_refuses_relaying(
    build_cf: Callable[[str], Built], tmp_path: Path, features: str, whom: str
) -> None:
    """Review rev119 F1: a Sendmail built with FEATURE(promiscuous_relay) relays for
    anyone; with relay_control "postfix" (Sendmail's own relay control) and smtpguard
    in a dry run, nothing refused a stranger's relay and `--check` said OK."""
    sample = load(SAMPLE)
    lines = "".join(f"FEATURE(`{name}')dnl\n" for name in features.split())
    feature = features.rsplit(maxsplit=1)[-1]
    text = build_cf(lines + sendmail_mc(sample)).text
    assert sendmail_cf_problems(sample, text) == [
        f"built with FEATURE({feature}): Sendmail lets {whom} relay, so"
        ' smtpguard alone must refuse relaying; set site.relay_control = "milter" (the'
        " relay check then always enforces) or rebuild without it"
    ]
    milter_mode = load(
        make_site(tmp_path, {"site": {"relay_control": "milter"}}, directory=False).config
    )
    # (The test site's filter name and socket are not the sample's: other problems.)
    assert sendmail_cf_problems(milter_mode, text)
    assert not [p for p in sendmail_cf_problems(milter_mode, text) if "FEATURE(" in p]
    cf = tmp_path / "sendmail.cf"
    cf.write_text(text)
    bad = run_cli("-c", str(SAMPLE), "sendmail-config", "--check", str(cf))
    assert bad.returncode == 1
    assert f"{cf}: built with FEATURE({feature})" in bad.stdout


@pytest.mark.integration
def test_check_names_a_max_hop_count_below_smtpguards(build_cf: Callable[[str], Built]) -> None:
    """Review rev152 F4: an admin's confMAX_HOP after the generated lines is what the
    .cf gets: Sendmail then accepts a message with that many hops and holds it as "Too
    many hops" (250, then a bounce), where smtpguard would have refused it."""
    sample = load(SAMPLE)
    assert not [
        p for p in sendmail_cf_problems(sample, build_cf(sendmail_mc(sample)).text) if "Hop" in p
    ]
    text = build_cf(sendmail_mc(sample) + "define(`confMAX_HOP', `17')dnl\n").text
    assert "O MaxHopCount=17" in text
    assert [p for p in sendmail_cf_problems(sample, text) if "Hop" in p] == [
        "MaxHopCount is 17, below limits.max_hops + 1 (31): Sendmail accepts a message with"
        ' 17 to 30 Received fields (250) and then holds it as "Too many hops" instead of'
        " smtpguard refusing it; define confMAX_HOP as 31 after any define of yours, or"
        " lower limits.max_hops"
    ]


#: STARTTLS and PLAIN/LOGIN logins in a site's .mc, before smtpguard's lines.
TLS_AUTH_MC = (
    "define(`confSERVER_CERT', `/etc/mail/tls/server.pem')dnl\n"
    "define(`confAUTH_MECHANISMS', `PLAIN LOGIN CRAM-MD5')dnl\n"
)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("theirs", "built"),
    [
        ("", "p"),
        ("define(`confAUTH_OPTIONS', `A')dnl\n", "p,A"),
        ("define(`confAUTH_OPTIONS', `A,y')dnl\n", "p,A,y"),
        ("define(`confAUTH_OPTIONS', `p,y')dnl\n", "p,y"),
        # Review rev191 F2: Sendmail never read a "p" after two separators or with no
        # separator before it.
        ("define(`confAUTH_OPTIONS', `A,')dnl\n", "p,A,"),
        ("define(`confAUTH_OPTIONS', `A, p')dnl\n", "p,A, p"),
        ("define(`confAUTH_OPTIONS', `Ap')dnl\n", "p,Ap"),
        # Sendmail skipped leading blanks: after "p," they would hide the first flag
        # (review rev192 F2).
        ("define(`confAUTH_OPTIONS', ` A, y')dnl\n", "p,A, y"),
        ("define(`confAUTH_OPTIONS', `\t,A')dnl\n", "p,A"),
    ],
)
def test_logins_in_clear_wait_for_starttls(
    build_cf: Callable[[str], Built], theirs: str, built: str
) -> None:
    """Review rev187 F1: Sendmail keeps a login made in clear across STARTTLS, and
    smtpguard sees the session's TLS at MAIL: p (PLAIN and LOGIN only after STARTTLS)
    is added to the site's AuthOptions."""
    sample = load(SAMPLE)
    text = build_cf(TLS_AUTH_MC + theirs + sendmail_mc(sample)).text
    assert re.findall(r"^O AuthOptions=(.*)$", text, re.M) == [built]
    assert not [p for p in sendmail_cf_problems(sample, text) if "AuthOptions" in p]


@pytest.mark.parametrize(
    ("value", "flags"),
    [
        ("p", {"p"}),
        (" p", {"p"}),
        ("A p", {"A", "p"}),
        ("A,p", {"A", "p"}),
        ("A, p", {"A"}),
        ("A  p", {"A"}),
        ("A,,p", {"A"}),
        ("Ap", {"A"}),
        ("A,", {"A"}),
        ("", set()),
    ],
)
def test_option_flags_are_read_as_sendmail_reads_them(value: str, flags: set[str]) -> None:
    """readcf.c's O_SASLOPTS loop: a flag, then the character after the next separator
    (review rev191 F2, each measured with Sendmail 8.17)."""
    assert sendmail_option_flags(value) == flags


@pytest.mark.integration
def test_check_names_logins_in_clear_before_starttls(
    build_cf: Callable[[str], Built], tmp_path: Path
) -> None:
    sample = load(SAMPLE)
    later = "define(`confAUTH_OPTIONS', `A')dnl\n"
    text = build_cf(TLS_AUTH_MC + sendmail_mc(sample) + later).text
    assert [p for p in sendmail_cf_problems(sample, text) if "AuthOptions" in p] == [
        "AuthOptions lacks p, and AuthMechanisms offers LOGIN and PLAIN before STARTTLS: a"
        " client may send its password in clear, then start TLS, and Sendmail keeps the"
        " login, so smtpguard (which sees TLS at MAIL) cannot refuse it as"
        " policy.auth_tls_required asks; define confAUTH_OPTIONS with p"
    ]
    # Without STARTTLS {tls_version} stays empty and smtpguard refuses such logins.
    no_tls = text.replace("O ServerCertFile=", "#O ServerCertFile=")
    assert not [p for p in sendmail_cf_problems(sample, no_tls) if "AuthOptions" in p]
    # A policy that lets both go in clear gets no flag and no problem.
    site = make_site(tmp_path, {"policy": {"auth_tls_required": ["CRAM-MD5"]}})
    clear = load(site.config)
    assert "confAUTH_OPTIONS" not in sendmail_mc(clear)
    assert not [p for p in sendmail_cf_problems(clear, text) if "AuthOptions" in p]


@pytest.mark.integration
def test_check_reads_each_daemons_own_filter_list(build_cf: Callable[[str], Built]) -> None:
    """Review rev131 F1: a DAEMON_OPTIONS with InputMailFilters= replaces the global
    list for the sessions that daemon accepts: one without smtpguard accepted mail
    unchecked while --check said OK."""
    sample = load(SAMPLE)
    mc = sendmail_mc(sample)
    greylist = "MAIL_FILTER(`greylist', `S=local:/run/greylist.sock, F=T')dnl\n"
    v6 = "DAEMON_OPTIONS(`Port=smtp, Addr=::1, Name=MTA-v6, Family=inet6, {}')dnl\n"
    without = build_cf(greylist + v6.replace("{}", "InputMailFilters=greylist") + mc)
    assert sendmail_cf_problems(sample, without.text) == [
        "DaemonPortOptions MTA-v6 (its own list) (greylist) does not name smtpguard:"
        " Sendmail runs without smtpguard on that daemon"
    ]
    emptied = build_cf(greylist + v6.replace(", {}", ", I=") + mc)
    assert sendmail_cf_problems(sample, emptied.text) == [
        "DaemonPortOptions MTA-v6 (its own list) (none) does not name smtpguard:"
        " Sendmail runs without smtpguard on that daemon"
    ]
    # Filters of a daemon's list are separated by ";" (a "," ends the equate).
    both = build_cf(greylist + v6.replace("{}", "InputMailFilters=smtpguard;greylist") + mc)
    assert sendmail_cf_problems(sample, both.text) == []


@pytest.mark.integration
@pytest.mark.parametrize(
    ("timeouts", "found"),
    [
        ("C:30s;S:59s;R:59s;E:5m", []),
        ("C:30s;S:1m;R:1m30s;E:2m", []),
        ("C:30s;S:30s;R:30s;E:5m", ["R:30s", "S:30s"]),
        ("", ["R:10s (its default)", "S:10s (its default)"]),
        ("C:30s;S:59s;R:59s;E:40", ["E:40s"]),
        # Review rev132 F2, F3: as milter.c reads them. Keys in capitals only (the
        # others are ignored, S and R keep their 10 s); units in lower case (1M is
        # one second); nothing, or 0, is no limit.
        (
            "C:30s;s:1m;r:1m;E:10m",
            ["ignored", "ignored", "R:10s (its default)", "S:10s (its default)"],
        ),
        ("C:30s;S:1M;R:1M;E:10m", ["units", "units", "R:1s", "S:1s"]),
        ("C:30s;S:;R:0;E:10m", []),
    ],
)
def test_check_compares_the_filters_timeouts_with_smtpguards_slowest_answer(
    build_cf: Callable[[str], Built], tmp_path: Path, timeouts: str, found: list[str]
) -> None:
    """Review rev131 F2: with a scanner's timeout raised after the .cf was built,
    Sendmail gave up on every slow scan (451) while smtpguard logged it accepted."""
    slow = load(
        make_site(
            tmp_path,
            {
                "milter": {"socket": "unix:/var/spool/postfix/smtpguard/smtpguard.sock"},
                "virus": {"backend": "command", "command": ["/bin/true"], "timeout": 45.0},
            },
            directory=False,
        ).config
    )
    text = build_cf(sendmail_mc(slow)).text
    line = next(x for x in text.splitlines() if x.startswith(f"X{slow.milter.name},"))
    written = re.search(r"T=[^,]*", line)
    assert written is not None
    edited = line.replace(written[0], f"T={timeouts}" if timeouts else "").rstrip(", ")
    problems = sendmail_cf_problems(slow, text.replace(line, edited))
    need = math.ceil(answer_bounds(slow).longest)
    assert need > 45  # the scanner's timeout and more
    said = []
    for problem in problems:
        if "it ignores it" in problem:
            said.append("ignored")
        elif "units Sendmail does not know" in problem:
            said.append("units")
        else:
            assert f"below smtpguard's slowest answer ({need}s)" in problem, problem
            said.append(problem.split("T=", 1)[1].split(" for ", 1)[0])
    assert said == found, problems


@pytest.mark.integration
def test_check_reads_macro_lists_separated_by_spaces(build_cf: Callable[[str], Built]) -> None:
    """Review rev131 F3: Sendmail's milter.c splits a macro list at commas and white
    space; a list written with spaces was reported as lacking what it has."""
    sample = load(SAMPLE)
    spaced = "define(`confMILTER_MACROS_ENVFROM', `i {auth_type} {auth_authen} {mail_addr}')dnl\n"
    text = build_cf(spaced + sendmail_mc(sample)).text
    assert "i {auth_type} {auth_authen} {mail_addr}" in text
    assert sendmail_cf_problems(sample, text) == []
