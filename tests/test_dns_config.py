"""The DNS parts of the config: [dns], [[dnsbl.zones]], [smtpport], [spf], the DNS
checks' defaults, and errors that name the file and the dotted key."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from smtpguard.app import load
from smtpguard.config import CHECK_DEFAULTS, ConfigError, DnsConfig
from support.configs import assert_config_error, write_config
from support.service import ROOT

SAMPLE = ROOT / "conf" / "smtpguard.toml"
NS = "[dns]\nnameservers = ['127.0.0.1']\n"


def test_defaults_send_no_query(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, ""))
    assert config.dns == DnsConfig()
    assert not config.dns.enabled
    assert config.dnsbl.zones == ()
    assert (config.smtpport.no_ptr, config.smtpport.fcrdns) == ("enforce", "enforce")
    assert (config.smtpport.generic_mode, config.smtpport.connect_back) == ("enforce", "off")
    assert config.smtpport.generic is not None
    assert config.smtpport.generic.file == ROOT / "rules" / "generic_ptr.toml"
    assert not config.spf.reject_softfail


def test_dns_checks_pass_on_temporary_errors_by_default(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, NS))
    for name in ("rbl", "openrelay", "smtpport", "sender_domain", "spf"):
        assert config.check(name).mode == "enforce"
        assert config.check(name).on_temp_error == "pass"
    assert config.check("helo_dns").mode == "off"
    # The other checks keep the general defaults.
    assert config.check("blacklist").on_temp_error == "tempfail"
    # Besides the DNS checks, only antispam (a dead engine must not stop mail) has a
    # default of its own.
    assert set(CHECK_DEFAULTS) <= {
        "rbl",
        "openrelay",
        "smtpport",
        "helo_dns",
        "sender_domain",
        "spf",
        "antispam",
    }


def test_a_partial_check_section_keeps_the_check_defaults(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, NS + "[checks.spf]\nmode = 'report'\n[checks.helo_dns]\n"))
    assert config.check("spf").mode == "report"
    assert config.check("spf").on_temp_error == "pass"
    assert config.check("helo_dns").mode == "off"


def test_full_sections(tmp_path: Path) -> None:
    config = load(
        write_config(
            tmp_path,
            """
[dns]
nameservers = ["127.0.0.1", "::1"]
port = 5353
timeout = 0.5
stage_deadline = 1.5
cache_size = 100
max_ttl = 600
negative_ttl = 60
failure_ttl = 2

[[dnsbl.zones]]
name = "Zen.Example."
answers = ["127.0.0.2-127.0.0.11", "127.0.1.0/24", "127.0.0.20"]

[[dnsbl.zones]]
name = "bits.example"
kind = "openrelay"
bitmask = 6
action = "reject"
ipv6 = false

[smtpport]
fcrdns = false
generic_patterns = ""
connect_back = true
connect_back_port = 2525
connect_back_timeout = 1.5
connect_back_cache_ttl = 60

[spf]
reject_softfail = true
""",
        )
    )
    assert config.dns == DnsConfig(("127.0.0.1", "::1"), 5353, 0.5, 1.5, 100, 600, 60, 2)
    first, second = config.dnsbl.zones
    v4 = ipaddress.IPv4Address
    assert first.name == "zen.example"
    assert first.answers == (
        (v4("127.0.0.2"), v4("127.0.0.11")),
        (v4("127.0.1.0"), v4("127.0.1.255")),
        (v4("127.0.0.20"), v4("127.0.0.20")),
    )
    assert (first.kind, first.action, first.bitmask, first.ipv6) == ("rbl", "reject", None, True)
    assert (second.kind, second.bitmask, second.action, second.ipv6) == (
        "openrelay",
        6,
        "reject",
        False,
    )
    assert config.smtpport.generic is None
    assert config.smtpport.fcrdns == "off"
    assert config.smtpport.connect_back_port == 2525
    assert config.spf.reject_softfail


def zone(body: str) -> str:
    return NS + "[[dnsbl.zones]]\n" + body


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("[dns]\nnameservers = ['ns1']\n", "dns.nameservers", "not an IP address"),
        ("[dns]\nnameservers = ['system', '::1']\n", "dns.nameservers", "not an IP"),
        ("[dns]\nport = 70000\n", "dns.port", "at most 65535"),
        ("[dns]\ntimeout = 0\n", "dns.timeout", "at least"),
        ("[dns]\nfailure_ttl = 600\n", "dns.failure_ttl", "RFC 9520"),
        ("[dns]\nmax_ttl = '1h'\n", "dns.max_ttl", "expected an integer"),
        ("[dns]\nnameserver = ['::1']\n", "dns.nameserver", "unknown key"),
        (zone("kind = 'rbl'\n"), "dnsbl.zones[0].name", "not a DNS zone name"),
        (zone("name = 'z.test'\nkind = 'dnswl'\n"), "dnsbl.zones[0].kind", "must be one of"),
        (
            zone("name = 'z.test'\nanswers = ['10.0.0.1']\n"),
            "dnsbl.zones[0].answers",
            "127.0.0.0/8",
        ),
        (zone("name = 'z.test'\nanswers = ['x']\n"), "dnsbl.zones[0].answers", "not an IPv4"),
        # The lists' "query refused" codes: accepted, the zone would never list anyone.
        (zone("name = 'z.test'\nanswers = ['127.0.0.1']\n"), "dnsbl.zones[0].answers", "refused"),
        (
            zone("name = 'z.test'\nanswers = ['127.255.255.252-127.255.255.255']\n"),
            "dnsbl.zones[0].answers",
            "never a listing",
        ),
        (
            zone("name = 'z.test'\nanswers = ['127.0.0.9-127.0.0.2']\n"),
            "dnsbl.zones[0].answers",
            "empty range",
        ),
        (
            zone("name = 'z.test'\nanswers = ['127.0.0.2']\nbitmask = 2\n"),
            "dnsbl.zones[0].bitmask",
            "not both",
        ),
        (zone("name = 'z.test'\nbitmask = 0\n"), "dnsbl.zones[0].bitmask", "at least 1"),
        (zone("name = 'z.test'\naction = 'drop'\n"), "dnsbl.zones[0].action", "must be one of"),
        (zone("name = 'z.test'\ncolour = 1\n"), "dnsbl.zones[0].colour", "unknown key"),
        (
            zone("name = 'z.test'\n[[dnsbl.zones]]\nname = 'Z.test.'\n"),
            "dnsbl.zones[1].name",
            "listed twice",
        ),
        (NS + "[dnsbl]\nzones = 1\n", "dnsbl.zones", "an array of tables"),
        ("[[dnsbl.zones]]\nname = 'z.test'\n", "dnsbl.zones", "need [dns] nameservers"),
        ("[checks.spf]\nmode = 'enforce'\n", "checks.spf.mode", "needs [dns] nameservers"),
        ("[checks.rbl]\non_temp_error = 'tempfail'\n", "checks.rbl.mode", "needs [dns]"),
        ("[smtpport]\nconnect_back = 'yes'\n", "smtpport.connect_back", "enforce, report, off"),
        ("[smtpport]\nno_ptr = 1\n", "smtpport.no_ptr", "must be one of enforce, report, off"),
        ("[smtpport]\nconnect_back_port = 0\n", "smtpport.connect_back_port", "at least 1"),
        ("[spf]\nreject_softfail = 1\n", "spf.reject_softfail", "true or false"),
        ("[spf]\nreject_fail = true\n", "spf.reject_fail", "unknown key"),
    ],
)
def test_errors_name_file_and_dotted_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    assert_config_error(tmp_path, text, key, message)


def test_a_dns_check_turned_off_needs_no_resolver(tmp_path: Path) -> None:
    assert (
        load(
            write_config(tmp_path, "[checks.spf]\nmode = 'off'\n[checks.helo_dns]\n")
        ).dns.nameservers
        == ()
    )


def test_missing_pattern_file_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[smtpport]\ngeneric_patterns = 'nope.toml'\n")
    with pytest.raises(ConfigError) as err:
        load(config)
    assert err.value.file == str(config.resolve())
    assert err.value.key == "smtpport.generic_patterns"
    assert err.value.message == (
        f"{tmp_path.resolve() / 'nope.toml'}: no such file (a relative path is read"
        f" from {config.resolve().parent}, the config file's directory)"
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[[pattern]]\nname = 'oops'\nregex = '(dyn|dsl)?'\n", "pattern[0].regex"),
        ("allow = ['^mail\\\\.', '(x)*']\n", "allow[1]"),
    ],
)
def test_a_pattern_that_matches_everything_is_refused(tmp_path: Path, text: str, key: str) -> None:
    # A regex found in every name would make every client generic, or (allow) none.
    (tmp_path / "generic.toml").write_text(text, encoding="utf-8")
    config = write_config(tmp_path, "[smtpport]\ngeneric_patterns = 'generic.toml'\n")
    with pytest.raises(ConfigError) as err:
        load(config)
    assert err.value.file == str((tmp_path / "generic.toml").resolve())
    assert err.value.key == key
    assert "matches the empty string and ordinary names" in err.value.message


def test_a_pattern_that_matches_the_empty_string_only_when_anchored_loads(tmp_path: Path) -> None:
    (tmp_path / "generic.toml").write_text(
        "[[pattern]]\nname = 'digits'\nregex = '^[0-9.-]*$'\n", encoding="utf-8"
    )
    config = write_config(tmp_path, "[smtpport]\ngeneric_patterns = 'generic.toml'\n")
    generic = load(config).smtpport.generic
    assert generic is not None
    assert generic.patterns[0][0] == "digits"


def test_sample_config_documents_the_dns_defaults() -> None:
    config = load(SAMPLE)
    assert config.dns == DnsConfig()
    assert config.dnsbl.zones == ()
    text = SAMPLE.read_text(encoding="utf-8")
    for key in (
        "[dns]",
        "stage_deadline",
        "[[dnsbl.zones]]",
        "[smtpport]",
        "connect_back",
        "[spf]",
    ):
        assert key in text


def test_system_nameservers_without_any_is_a_config_error(tmp_path: Path) -> None:
    """Review rev156 F3: ``nameservers = ["system"]`` with a resolv.conf that lists no
    nameserver was dnspython's traceback at check-config and at the start. Played in a
    mount namespace of its own, where an empty file stands in for /etc/resolv.conf."""
    empty = tmp_path / "resolv.conf"
    empty.write_text("# no nameserver\nsearch example.com\n")
    config = write_config(tmp_path, "[dns]\nnameservers = ['system']\n")
    script = (
        f"mount --bind {empty} /etc/resolv.conf && "
        f"{sys.executable} -m smtpguard check-config {config}"
    )
    try:
        result = subprocess.run(
            ["unshare", "--mount", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no unshare(1) here")
    if "mount" in result.stderr and result.returncode != 1:
        pytest.skip(f"no mount namespace here: {result.stderr.strip()}")
    assert "Traceback" not in result.stderr
    assert f'{config}: dns.nameservers: "system": no nameserver in /etc/resolv.conf' in (
        result.stdout + result.stderr
    )
    # Said once (review rev158 F2: the online probe said it again).
    assert result.stderr.count("dns.nameservers") == 1, result.stderr
    assert result.returncode == 1
