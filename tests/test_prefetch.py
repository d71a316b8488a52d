"""The pipeline's prefetch hook and stage deadline, with the DNS checks on a fake
resolver: lookups start at connect/HELO without blocking, decisions come at MAIL."""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import tomli_w

from smtpguard.address import parse_path
from smtpguard.app import build_runtime, load
from smtpguard.checks import Event, Services, Stage
from smtpguard.config import load_config
from smtpguard.directory import NoDirectory
from smtpguard.dns import Resolver
from smtpguard.pipeline import CHECK_NAMES, Action, Decision, Pipeline
from smtpguard.replies import load_replies
from smtpguard.session import MTA, Connection, Transaction
from smtpguard.verdict import Verdict
from support.fake_dns import DNS_SECTION, FakeDns, NoBlacklist, fake_resolver
from support.polling import wait_until
from support.unbound import RBL_ZONE

SETTINGS: dict[str, Any] = {
    "dns": {**DNS_SECTION, "stage_deadline": 1.0},
    "site": {"local_domains": ["example.com"]},
    "dnsbl": {"zones": [RBL_ZONE]},
    "checks": {"helo_dns": {"mode": "enforce"}},
}
CONFIG = tomli_w.dumps(SETTINGS)
CLIENT = "198.51.100.66"


@pytest.fixture
def fake() -> FakeDns:
    f = FakeDns(delay=0.3)
    f.add("66.100.51.198.rbl.test", "A", "127.0.0.2")
    f.add("66.100.51.198.rbl.test", "TXT", '"listed"')
    return f


def build(tmp_path: Path, dns: Resolver | None, text: str = CONFIG) -> Pipeline:
    path = tmp_path / "smtpguard.toml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path, known_checks=CHECK_NAMES)
    services = Services(config, NoDirectory(), NoBlacklist(), dns)
    return Pipeline(services, load_replies(config.replies, config.file))


def connection(ip: str = CLIENT, admitted: bool = True) -> Connection:
    return Connection("t.1", ipaddress.ip_address(ip), 40000, "[x]", MTA.POSTFIX, admitted=admitted)


def mail(conn: Connection, sender: str = "a@sender.test") -> None:
    conn.txn = Transaction(sender=parse_path(f"<{sender}>"), sender_raw=f"<{sender}>", esmtp={})


def test_lookups_start_at_connect_and_the_verdict_comes_at_mail(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    pipeline = build(tmp_path, resolver)
    conn = connection()
    start = time.monotonic()
    assert pipeline.run(Stage.CONNECT, conn).action is Action.CONTINUE
    assert time.monotonic() - start < 0.1  # the connect callback did not wait
    assert "rbl.lookups" in conn.scratch
    assert "smtpport.rdns" in conn.scratch
    conn.helo = "mx.sender.test"
    assert pipeline.run(Stage.HELO, conn).action is Action.CONTINUE
    assert "helo_dns.mx.sender.test" in conn.scratch
    # While the client's EHLO round trips go on, the lookups finish in the background.
    lookups = [future for _zone, _name, future in conn.scratch["rbl.lookups"]]
    wait_until(lambda: all(f.done() for f in lookups), 5)
    mail(conn)
    decided = time.monotonic()
    decision = pipeline.run(Stage.MAIL, conn)
    assert decision.action is Action.REJECT
    assert decision.check == "rbl"
    assert decision.reply is not None
    assert decision.reply.code == "554"
    # The A answer was in and the TXT had been started when the listing came: less
    # than the two round trips (0.6 s) that asking both at MAIL would cost.
    assert time.monotonic() - decided < 0.55


def test_no_prefetch_for_sessions_over_the_limit(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    pipeline = build(tmp_path, resolver)
    conn = connection(admitted=False)
    pipeline.run(Stage.CONNECT, conn)
    assert conn.scratch == {}


def test_no_prefetch_for_trusted_networks(tmp_path: Path, resolver: Resolver) -> None:
    pipeline = build(tmp_path, resolver)
    conn = connection()
    conn.trusted_network = True
    pipeline.run(Stage.CONNECT, conn)
    assert conn.scratch == {}


@dataclass
class Recorder:
    """A connect check with a prefetch hook that records the order of events."""

    name: ClassVar[str] = "recorder"
    stage: ClassVar[Stage] = Stage.CONNECT
    reply_ids: ClassVar[tuple[str, ...]] = ()
    events: list[str] = field(default_factory=list)
    fail: bool = False

    def prefetch(self, conn: Connection) -> None:
        self.events.append("prefetch")
        if self.fail:
            raise RuntimeError("prefetch broke")

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        self.events.append(f"check deadline={event.deadline is not None}")
        return None


def test_prefetch_runs_before_the_stage_checks_and_errors_are_contained(
    tmp_path: Path, resolver: Resolver, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = build(tmp_path, resolver)
    recorder = Recorder(fail=True)
    pipeline.add_check(recorder, pipeline.config.check("recorder"))
    conn = connection()
    assert pipeline.run(Stage.CONNECT, conn).action is Action.CONTINUE
    assert recorder.events == ["prefetch", "check deadline=True"]
    assert "check=recorder prefetch failed" in caplog.text
    conn.helo = "mx.sender.test"
    pipeline.run(Stage.HELO, conn)
    assert recorder.events[-1] == "prefetch"  # again after HELO (idempotent by contract)


def test_without_a_resolver_the_dns_checks_are_not_built(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpguard")
    pipeline = build(tmp_path, None, "")
    names = {check.name for checks in pipeline.stages.values() for check, _ in checks}
    assert names.isdisjoint({"rbl", "openrelay", "smtpport", "sender_domain", "spf"})
    assert "DNS checks inactive: rbl, openrelay, smtpport, sender_domain, spf" in caplog.text
    conn = connection()
    pipeline.run(Stage.CONNECT, conn)
    conn.helo = "mx.sender.test"
    mail(conn)
    assert pipeline.run(Stage.MAIL, conn).action is Action.CONTINUE


def test_the_stage_deadline_bounds_a_mail_callback(
    tmp_path: Path, resolver: Resolver, fake: FakeDns
) -> None:
    fake.delay = 5.0
    pipeline = build(tmp_path, resolver)
    conn = connection()
    pipeline.run(Stage.CONNECT, conn)
    conn.helo = "mx.sender.test"
    pipeline.run(Stage.HELO, conn)
    mail(conn)
    start = time.monotonic()
    decision = pipeline.run(Stage.MAIL, conn)
    elapsed = time.monotonic() - start
    # Every DNS check timed out and passed (defaults): the DNSBL zones at the 1 s
    # stage's end, those of the sender's domain a whole stage after them.
    assert decision.action is Action.CONTINUE
    assert elapsed < 2.0 + 0.3


def session_to_mail(
    tmp_path: Path, fake: FakeDns, sender: str, text: str = CONFIG
) -> tuple[Decision, float]:
    """A whole session to MAIL FROM ``sender`` on a resolver over ``fake`` (the
    configuration ``text``): the MAIL decision and the seconds it took."""
    resolver = fake_resolver(fake)
    try:
        pipeline = build(tmp_path, resolver, text)
        conn = connection()
        pipeline.run(Stage.CONNECT, conn)
        conn.helo = "mx.sender.test"
        pipeline.run(Stage.HELO, conn)
        mail(conn, sender)
        started = time.monotonic()
        decision = pipeline.run(Stage.MAIL, conn)
        return decision, time.monotonic() - started
    finally:
        resolver.close()


def test_a_slow_dnsbl_zone_keeps_the_whole_stage(tmp_path: Path) -> None:
    """The zones are the operator's, not names the client chooses: a listing that
    comes late in the stage (0.8 s of 1) still refuses, as before the client checks
    were cut at half of it."""
    fake = FakeDns()
    fake.slow["rbl.test"] = 0.8
    fake.add("66.100.51.198.rbl.test", "A", "127.0.0.2")
    fake.add("66.100.51.198.rbl.test", "TXT", '"listed"')
    fake.add("66.100.51.198.in-addr.arpa", "PTR", "mx.sender.test.")
    fake.add("mx.sender.test", "A", CLIENT)
    decision, _took = session_to_mail(tmp_path, fake, "a@sender.test")
    assert decision.check == "rbl"
    assert decision.action is Action.REJECT


def slow_victim(ttl: float = 300.0) -> FakeDns:
    """A client whose PTR names never answer, and a sender domain whose "-all" takes
    three TXT lookups one after another, 0.2 s each (records of ``ttl`` seconds)."""
    fake = FakeDns()
    fake.slow["slow.test"] = 60.0
    fake.slow["victim.test"] = 0.2
    fake.add("66.100.51.198.in-addr.arpa", "PTR", *(f"n{i}.slow.test." for i in range(4)))
    fake.add("mx.sender.test", "A", CLIENT)
    fake.add("victim.test", "MX", "10 mx.victim.test.")
    fake.add("victim.test", "TXT", '"v=spf1 include:i1.victim.test -all"', ttl=ttl)
    fake.add("i1.victim.test", "TXT", '"v=spf1 include:i2.victim.test -all"', ttl=ttl)
    fake.add("i2.victim.test", "TXT", '"v=spf1 ip4:192.0.2.0/24 -all"', ttl=ttl)
    return fake


def test_a_client_whose_own_names_never_answer_leaves_spf_its_time(tmp_path: Path) -> None:
    """Review rev57: the client's PTR names never answered, the smtpport check waited
    out the stage deadline for them (and passed, as a timeout does), and SPF had no
    time left: the forged sender passed the domain's "-all" as after a DNS timeout.
    With a third of the stage for SPF a slow domain's includes still ran out of it
    (rev59). The checks of the sender's domain get a whole stage after the client's."""
    decision, took = session_to_mail(tmp_path, slow_victim(), "ceo@victim.test")
    assert decision.check == "spf"
    assert decision.reply is not None
    assert decision.reply.code == "556"
    assert took < 1.5 + 0.2  # half the stage for the client's checks, a whole one after


def test_an_exemptions_spf_asked_first_leaves_spf_its_time(tmp_path: Path) -> None:
    """Review rev61: an ``spf_pass`` exemption skipping smtpport is judged before the
    client checks; its SPF fixed the sender checks' window at the stage's deadline,
    and the spf check, after the PTR that never answered, had half a stage again (the
    records not cached: TTL 0): the forged sender passed. Each sender check's window
    starts when it asks."""
    exempt = {"senders": ["victim.test"], "spf_pass": True, "skip": ["rbl", "smtpport"]}
    text = tomli_w.dumps({**SETTINGS, "policy": {"exempt": [exempt]}})
    decision, took = session_to_mail(tmp_path, slow_victim(ttl=0), "ceo@victim.test", text)
    assert (decision.check, decision.reply and decision.reply.code) == ("spf", "556")
    assert took < 2.0 + 0.3  # two stages at most


def test_a_reload_keeps_the_resolver_while_dns_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "smtpguard.toml"
    path.write_text(CONFIG, encoding="utf-8")
    directory, blacklist = NoDirectory(), NoBlacklist()
    first = build_runtime(load(path), directory=directory, blacklist=blacklist)
    same = build_runtime(load(path), directory=directory, blacklist=blacklist, previous=first)
    path.write_text(tomli_w.dumps({**SETTINGS, "dns": {**DNS_SECTION, "stage_deadline": 1.5}}))
    changed = build_runtime(load(path), directory=directory, blacklist=blacklist, previous=first)
    assert first.services.dns is not None
    assert same.services.dns is first.services.dns
    assert changed.services.dns is not first.services.dns
