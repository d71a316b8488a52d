"""contrib/prometheus/ and contrib/grafana/: the alert rules pass ``promtool check rules``
and their own ``promtool test rules`` unit tests; the Grafana dashboard is valid JSON
whose every query parses as PromQL and names only series the service really exports
(read from a live scrape after real sessions)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support.mtclient import assert_reply
from support.polling import scrape
from support.postfix import free_port
from support.service import ROOT, UNTRUSTED_IP, make_site, running

PROMTOOL = "/usr/bin/promtool"
ALERTS = ROOT / "contrib" / "prometheus" / "smtpguard-alerts.yml"
ALERT_TESTS = ROOT / "contrib" / "prometheus" / "smtpguard-alerts.test.yml"
#: The tests over weeks, evaluated every 5 minutes (review rev223 M1: weekends).
WEEK_TESTS = ROOT / "contrib" / "prometheus" / "smtpguard-alerts-weeks.test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "smtpguard.json"
#: Series that come from Prometheus itself, not from the service.
PROMETHEUS_SERIES = frozenset({"up"})
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}
_NAME = re.compile(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=60
    )


def metric_names(expr: str) -> set[str]:
    """The series an expression selects (ours, process_* and Prometheus's up)."""
    return {
        name
        for name in _NAME.findall(re.sub(r'"[^"]*"', '""', expr))
        if name.startswith(("smtpguard_", "process_")) or name in PROMETHEUS_SERIES
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name the running service's /metrics offers (a labelled series that
    has no sample yet still has its HELP and TYPE lines, hence its family)."""
    names: set[str] = set()
    # One process, and two workers: the supervisor's own series (worker restarts) are
    # there only then, and labelled series without samples only in the first.
    for extra in ({}, {"milter": {"workers": 2}}):
        port = free_port()
        site = make_site(
            tmp_path_factory.mktemp("contrib"),
            {"metrics": {"enabled": True, "port": port}, **extra},
        )
        with running(site) as service:
            with service.session() as s:
                s.connect(UNTRUSTED_IP)
                s.helo("mail.sender.example")
                assert_reply(s.mail("<spammer@bad.example>"), "host_denies_sender")
            text = scrape(port)
        for family in text_string_to_metric_families(text):
            names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
            names.update(sample.name for sample in family.samples)
    return names


def alert_rules() -> Iterator[dict[str, Any]]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        yield from group["rules"]


def dashboard_queries() -> list[str]:
    """The PromQL of every panel."""
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert panel["targets"], panel["title"]
        queries += [target["expr"] for target in panel["targets"]]
    return queries


def variable_queries() -> list[str]:
    """Grafana's own queries of the template variables (``label_values(...)``)."""
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    return [v["definition"] for v in variables if v["type"] == "query"]


def test_promtool_checks_the_alert_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(list(alert_rules()))} rules found" in result.stdout


@pytest.mark.parametrize("tests", [ALERT_TESTS, WEEK_TESTS], ids=["minutes", "weeks"])
def test_the_alert_rules_pass_their_unit_tests(tests: Path) -> None:
    result = promtool("test", "rules", tests.name, cwd=tests.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_test() -> None:
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert tested == {rule["alert"] for rule in alert_rules()}


def test_alerts_and_dashboard_name_only_exported_series(exported: set[str]) -> None:
    queries = [rule["expr"] for rule in alert_rules()] + dashboard_queries() + variable_queries()
    for query in queries:
        names = metric_names(query)
        assert names, query
        assert names <= exported | PROMETHEUS_SERIES, (names - exported, query)


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule, Grafana's variables replaced by
    what they expand to."""
    rules = [
        {
            "record": f"dashboard:query_{index}",
            "expr": query.replace("$__rate_interval", "5m").replace("$instance", ".*"),
        }
        for index, query in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
    assert json.loads(DASHBOARD.read_text())["uid"] == "smtpguard"
