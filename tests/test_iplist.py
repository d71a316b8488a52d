"""Local IP lists: parsing, prefix lookup, and agreement with the stdlib."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest

from smtpguard.iplist import IpListError, build, load, parse_network

LIST = """\
# partners
198.51.100.0/24
203.0.113.7        # one host
2001:db8:1::/48
10.0.0.0/8

::ffff:192.0.2.0/120
"""


def test_file_entries_comments_and_both_families(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text(LIST)
    found = load([path])
    assert found.size == 5
    assert found.find(ipaddress.ip_address("198.51.100.77")) == "198.51.100.0/24"
    assert found.find(ipaddress.ip_address("203.0.113.7")) == "203.0.113.7"
    assert found.find(ipaddress.ip_address("203.0.113.8")) is None
    assert found.find(ipaddress.ip_address("2001:db8:1:ffff::1")) == "2001:db8:1::/48"
    assert found.find(ipaddress.ip_address("2001:db8:2::1")) is None
    # An IPv4-mapped client address is looked up as the IPv4 address.
    assert found.find(ipaddress.ip_address("::ffff:198.51.100.1")) == "198.51.100.0/24"


def test_longest_prefix_wins() -> None:
    found = build([("10.0.0.0/8", "x:1"), ("10.1.0.0/16", "x:2")])
    assert found.find(ipaddress.ip_address("10.1.2.3")) == "10.1.0.0/16"
    assert found.find(ipaddress.ip_address("10.2.2.3")) == "10.0.0.0/8"


def test_ipv4_mapped_entries_match_the_ipv4_client() -> None:
    """Lookups read ::ffff:a.b.c.d as a.b.c.d, so entries written that way are stored
    as IPv4 (an IPv6 table entry would never match)."""
    found = build([("::ffff:192.0.2.1", "x:1"), ("::ffff:198.51.100.0/120", "x:2")])
    assert found.find(ipaddress.ip_address("192.0.2.1")) == "::ffff:192.0.2.1"
    assert found.find(ipaddress.ip_address("::ffff:198.51.100.77")) == "::ffff:198.51.100.0/120"
    assert found.find(ipaddress.ip_address("198.51.101.1")) is None


def test_postfix_s_bracketed_form_is_read_as_in_mynetworks() -> None:
    """Review rev167 F3: accepted in trusted_networks, refused in exemptions and
    [[dnsbl.local]] files."""
    found = build([("[2001:db8:bad::]/48", "x:1"), ("[2001:db8::7]", "x:2")])
    assert found.find(ipaddress.ip_address("2001:db8:bad::9")) == "[2001:db8:bad::]/48"
    assert found.find(ipaddress.ip_address("2001:db8::7")) == "[2001:db8::7]"
    with pytest.raises(ValueError, match="not an IP address or network"):
        parse_network("[2001:db8::]x")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("198.51.100.7/24", "host bits set in '198.51.100.7/24': did you mean 198.51.100.0/24?"),
        ("not-an-ip", "not an IP address or network (the line is not shown)"),
        ("10.0.0.0/33", "not an IP address or network"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(f"# ok\n10.0.0.1\n{line}\n")
    with pytest.raises(IpListError) as err:
        load([path])
    assert (err.value.source, err.value.line) == (str(path), 3)
    assert problem in err.value.problem


@pytest.mark.parametrize(("file_mode", "folder_mode"), [(0o640, 0o755), (0o644, 0o700)])
def test_a_line_that_is_no_network_is_not_shown(
    tmp_path: Path, file_mode: int, folder_mode: int
) -> None:
    """Review rev179 F5: root reads the lists before it drops privileges, and a link to
    /etc/shadow in place of a list put its first line in the error; rev191 F4: so did
    a readable file in a private folder."""
    private = tmp_path / "private"
    private.mkdir()
    secret = private / "shadow"
    secret.write_text("daemon:$6$pepper$hashvalue:19000:0:99999:7:::\n")
    secret.chmod(file_mode)
    private.chmod(folder_mode)
    link = tmp_path / "list.txt"
    link.symlink_to(secret)
    with pytest.raises(IpListError) as err:
        load([link])
    assert (err.value.source, err.value.line) == (str(link), 1)
    assert "not an IP address or network" in err.value.problem
    assert "pepper" not in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IpListError, match="cannot read"):
        load([tmp_path / "absent.txt"])


def test_agrees_with_a_linear_scan_of_ipaddress_networks() -> None:
    """Differential: the prefix lookup finds a network exactly when the stdlib's
    ``ip in network`` over every entry does."""
    rng = random.Random(14)
    nets = []
    for _ in range(300):
        if rng.random() < 0.5:
            plen = rng.randint(8, 32)
            net = ipaddress.ip_network((rng.getrandbits(32), plen), strict=False)
        else:
            plen = rng.randint(16, 128)
            net = ipaddress.ip_network((rng.getrandbits(128), plen), strict=False)
        nets.append(net)
    found = build([(str(n), f"x:{i}") for i, n in enumerate(nets)])
    probes = [n.network_address + rng.randint(0, min(n.num_addresses - 1, 9)) for n in nets]
    probes += [ipaddress.ip_address(rng.getrandbits(32)) for _ in range(300)]
    for ip in probes:
        expected = [n for n in nets if ip.version == n.version and ip in n]
        got = found.find(ip)
        if not expected:
            assert got is None
        else:
            assert got is not None
            assert ipaddress.ip_network(got).prefixlen == max(n.prefixlen for n in expected)
