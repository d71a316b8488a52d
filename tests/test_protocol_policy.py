"""Operator policy through the real ``smtpguard run`` service and the PyPI miltertest
client: DNSBL scoring, exemptions, local IP lists, per-reason smtpport modes and
per-domain policy (issue 14). DNS answers come from the real unbound server
(support/unbound.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from support.mtclient import Answer, assert_pass, assert_reply
from support.service import Running, make_site, running
from support.unbound import GOOD_DOMAIN, SCORE_IP, SCORE_ONE_IP, DnsServer

pytestmark = pytest.mark.integration

HEADERS = [
    ("From", "Friend <friend@good.test>"),
    ("To", "alice@example.com"),
    ("Subject", "hello"),
    ("Message-ID", "<1@good.test>"),
]


def dns_site(
    tmp: Path, port: int, extra: Mapping[str, Any], zones: Sequence[Mapping[str, Any]] = ()
) -> Iterator[Running]:
    dns = {"nameservers": ["127.0.0.1"], "port": port, "timeout": 1.0, "stage_deadline": 2.0}
    with running(make_site(tmp, {"dns": dns, "dnsbl": {"zones": list(zones)}, **extra})) as svc:
        yield svc


def deliver(
    service: Running, ip: str, sender: str = f"<someone@{GOOD_DOMAIN}>"
) -> tuple[Answer, list[tuple[str, dict[str, str]]]]:
    with service.session() as s:
        assert_pass(s.connect(ip))
        assert_pass(s.helo("mx.good.test"))
        assert_pass(s.mail(sender))
        assert_pass(s.rcpt("<alice@example.com>"))
        final, mods, early = s.message(HEADERS, "Hello Alice.\r\n")
        assert early == []
        return final, mods


# --- DNSBL zones with action = "score" ---------------------------------------------------

SCORE_ZONES = (
    {"name": "score.test", "kind": "rbl", "action": "score", "weight": 8.0},
    {"name": "score2.test", "kind": "rbl", "action": "score", "weight": 8.0},
)


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory, unbound: DnsServer) -> Iterator[Running]:
    extra = {"antispam": {"add_header_score": 6.0, "reject_score": 15.0}}
    yield from dns_site(tmp_path_factory.mktemp("score"), unbound.port, extra, SCORE_ZONES)


def test_one_score_zone_flags_the_message(scoring: Running) -> None:
    final, mods = deliver(scoring, SCORE_ONE_IP)
    assert_pass(final)
    assert ("h", {"name": "X-Spam-Flag", "value": "YES"}) in mods
    assert ("h", {"name": "X-Spam-Score", "value": "8.0"}) in mods


def test_two_score_zones_together_reach_the_reject_threshold(scoring: Running) -> None:
    final, _mods = deliver(scoring, SCORE_IP)
    assert_reply(final, "antispam_reject")
    assert "dnsbl:score.test=8.0, dnsbl:score2.test=8.0" in scoring.log()
