"""SessionDriver: which MTA a session talks to, and what that means for reply text.

Sendmail clears the 8th bit of a milter's reply text, so UTF-8 must never reach it.
A session without macro ``v`` is most likely a Sendmail whose ``.mc`` has only the
``INPUT_MAIL_FILTER`` line (Postfix sends ``v`` by default): it gets ASCII only too.
"""

from __future__ import annotations

import concurrent.futures
import logging
import socket
from pathlib import Path

import pytest

from smtpguard.app import Runtime, build_runtime, load
from smtpguard.driver import (
    HEADER_BATCH_CHARS,
    UNANNOUNCED_NOTICE,
    MacroLookup,
    Once,
    SessionDriver,
    UnresolvedNotice,
    client_ip,
)
from smtpguard.pipeline import Action, Decision
from smtpguard.session import MTA
from smtpguard.state import SessionGate
from support.fakes import FakeBlacklist
from support.service import make_site

POSTFIX = {"v": "Postfix 3.7.11", "j": "mx.example.com"}
SENDMAIL = {"v": "8.17.1.9", "j": "mx.example.com"}
#: What Sendmail sends at connect without smtpguard's confMILTER_MACROS_CONNECT.
SENDMAIL_DEFAULTS = {"j": "mx.example.com", "_": "localhost [127.0.0.1]", "{if_name}": "lo"}
RECEIVED = ("Received", "from a.example (a.example [198.51.100.1]) by b.example; 1 Jan 2026")
NO_V_WARNING = "the MTA sent no macro v"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    site = make_site(tmp_path_factory.mktemp("driver"), {"limits": {"max_hops": 2}})
    return build_runtime(load(site.config))


def driver(runtime: Runtime, macros: dict[str, str], notice: Once | None = None) -> SessionDriver:
    lookup: MacroLookup = macros.get
    return SessionDriver(runtime, SessionGate(10), lookup, notice or Once())


def refusals(d: SessionDriver) -> list[str]:
    """One session refused at MAIL, at RCPT (directory, relay, limit) and at end of
    message; every line a client would read."""
    decisions = [
        d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000)),
        d.helo("mail.sender.example"),
        d.mail("<spammer@bad.example>", ()),
        d.mail("<friend@sender.example>", ()),
        d.rcpt("<nobody@example.com>"),
        d.rcpt("<x@foreign.example>"),
        *(d.rcpt(rcpt) for rcpt in ("<alice@example.com>", "<sales@example.com>")),
        d.rcpt("<news@example.com>"),
        d.rcpt("<x@relay.example>"),
        d.data(),
        *(d.header(*RECEIVED) for _ in range(3)),
        d.eoh(),
        d.eom(),
    ]
    d.close()
    refused = [x for x in decisions if x.action in (Action.REJECT, Action.TEMPFAIL)]
    got = sorted(x.reply.reply_id for x in refused if x.reply is not None)
    assert got == sorted(
        [
            "host_denies_sender",
            "mailbox_unavailable",
            "host_denies_relay",
            "rcpt_limit",
            "looping_message",
        ]
    )
    return [line for x in refused if x.reply is not None for line in x.reply.wire_lines()]


def non_ascii(lines: list[str]) -> list[str]:
    return [line for line in lines if any(b >= 0x80 for b in line.encode())]


@pytest.mark.parametrize(
    ("macros", "hostname", "confirmed"),
    [
        (POSTFIX, "mail.sender.example", True),
        (POSTFIX, "unknown", False),
        ({**POSTFIX, "{client_resolve}": "FAIL"}, "unknown", False),
        (SENDMAIL, "mail.sender.example", False),  # FORGED and TEMP names arrive too
        ({**SENDMAIL, "{client_resolve}": "FORGED"}, "mail.sender.example", False),
        ({**SENDMAIL, "{client_resolve}": "OK"}, "mail.sender.example", True),
        ({**SENDMAIL, "{client_resolve}": "OK"}, "[198.51.100.7]", False),
        ({"{client_resolve}": "OK"}, "mail.sender.example", True),  # Sendmail without v
    ],
)
def test_which_client_names_are_confirmed(
    runtime: Runtime, macros: dict[str, str], hostname: str, confirmed: bool
) -> None:
    d = driver(runtime, macros)
    d.connect(hostname, socket.AF_INET, ("198.51.100.7", 40000))
    assert d.conn.client_name_confirmed is confirmed
    assert not d.conn.client_name_unsure
    d.close()


def test_a_host_name_exemption_sendmail_cannot_confirm_is_named_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev152 F1 (the related low one): with the INPUT_MAIL_FILTER line alone
    Sendmail sends no {client_resolve}, and without a resolver no client name is
    confirmed: an exemption by host name never applied, and nothing said so."""
    exempt = {"name": "partner", "host_suffixes": ["partner.example"], "skip": ["helo"]}
    runtime = build_runtime(load(make_site(tmp_path, {"policy": {"exempt": [exempt]}}).config))
    notice = UnresolvedNotice()
    for macros in (SENDMAIL, SENDMAIL, {**SENDMAIL, "{client_resolve}": "OK"}, POSTFIX):
        d = SessionDriver(runtime, SessionGate(10), macros.get, unresolved_notice=notice)
        d.connect("mx.partner.example", socket.AF_INET, ("198.51.100.7", 40000))
        d.close()
    said = [r for r in caplog.records if "no macro {client_resolve}" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.WARNING
    # Not for a configuration without such an exemption.
    quiet = UnresolvedNotice()
    assert not quiet.due(build_runtime(load(make_site(tmp_path / "q", {}).config)))


@pytest.mark.parametrize(("mta", "name"), [("sendmail", "[198.51.100.7]"), ("postfix", "unknown")])
def test_a_host_name_exemption_is_undecided_when_the_mtas_lookup_failed_for_now(
    tmp_path: Path, mta: str, name: str
) -> None:
    """Review rev152 F1, rev153 F1: the MTA's {client_resolve} TEMP (Sendmail's client
    name "[IP]", Postfix's "unknown") was read as no name at all: a HELO verdict the
    partner's exemption by host name spares was answered 555 for a DNS fault.
    Undecided: 4xx."""
    exempt = {"name": "partner", "host_suffixes": ["partner.example"], "skip": ["helo"]}
    site = make_site(tmp_path, {"policy": {"exempt": [exempt]}})
    macros = {**(SENDMAIL if mta == "sendmail" else POSTFIX), "{client_resolve}": "TEMP"}
    d = driver(build_runtime(load(site.config)), macros)
    d.connect(name, socket.AF_INET, ("198.51.100.7", 40000))
    assert d.conn.client_name_unsure
    assert not d.conn.client_name_confirmed
    d.helo("localhost")
    deferred = d.mail("<a@partner.example>", ())
    assert deferred.action is Action.TEMPFAIL
    assert deferred.reply is not None
    assert (deferred.reply.reply_id, deferred.reply.code) == ("database_temp_error", "450")
    d.close()
    # The lookup failed for good (FAIL): the exemption does not hold, the verdict stands.
    d = driver(build_runtime(load(site.config)), {**SENDMAIL, "{client_resolve}": "FAIL"})
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    d.helo("localhost")
    refused = d.mail("<a@partner.example>", ())
    assert refused.action is Action.REJECT
    d.close()


@pytest.mark.parametrize(
    ("macros", "expected"),
    [
        ({}, MTA.UNANNOUNCED),
        ({"v": ""}, MTA.UNANNOUNCED),
        (SENDMAIL_DEFAULTS, MTA.UNANNOUNCED),
        (SENDMAIL, MTA.SENDMAIL),
        (POSTFIX, MTA.POSTFIX),
        ({"v": "Exotic MTA 1.0"}, MTA.UNKNOWN),
    ],
)
def test_connect_detects_the_mta(runtime: Runtime, macros: dict[str, str], expected: MTA) -> None:
    """``milter.mta = "auto"`` (the default)."""
    d = driver(runtime, macros)
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    d.close()
    assert d.conn.mta is expected


@pytest.mark.parametrize(
    ("mta", "carries"),
    [
        (MTA.POSTFIX, True),
        (MTA.UNKNOWN, True),
        (MTA.SENDMAIL, False),
        (MTA.UNANNOUNCED, False),
    ],
)
def test_which_mtas_carry_utf8(mta: MTA, carries: bool) -> None:
    assert mta.carries_utf8 is carries


def test_without_v_every_reply_is_ascii(runtime: Runtime) -> None:
    """The site's policy is the default (English and Chinese, UTF-8 always)."""
    lines = refusals(driver(runtime, SENDMAIL_DEFAULTS))
    assert lines
    assert non_ascii(lines) == []
    assert "553 5.7.1 host denies the sender." in lines


def test_postfix_still_gets_utf8(runtime: Runtime) -> None:
    lines = refusals(driver(runtime, POSTFIX))
    assert len(non_ascii(lines)) == len(lines)
    assert "553 5.7.1 host denies the sender. (拒绝发件人地址)" in lines


def test_sendmail_with_v_gets_ascii(runtime: Runtime) -> None:
    assert non_ascii(refusals(driver(runtime, SENDMAIL))) == []


def test_missing_v_is_logged_once_per_process(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    notice = Once()  # what the process shares (UNANNOUNCED_NOTICE), fresh for this test
    caplog.set_level(logging.WARNING, logger="smtpguard")
    for macros in (POSTFIX, SENDMAIL_DEFAULTS, {}, SENDMAIL_DEFAULTS, SENDMAIL):
        refusals(driver(runtime, macros, notice))
    warnings = [r.getMessage() for r in caplog.records if NO_V_WARNING in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "sendmail-config" in warnings[0]


@pytest.mark.parametrize(
    ("configured", "expected"), [("sendmail", MTA.SENDMAIL), ("postfix", MTA.POSTFIX)]
)
def test_a_configured_mta_needs_no_v(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, configured: str, expected: MTA
) -> None:
    site = make_site(
        tmp_path, {"milter": {"mta": configured}, "directory": {"backend": "none"}}, directory=False
    )
    caplog.set_level(logging.WARNING, logger="smtpguard")
    notice = Once()
    d = driver(build_runtime(load(site.config)), SENDMAIL_DEFAULTS, notice)
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    d.close()
    assert d.conn.mta is expected
    assert not [r for r in caplog.records if NO_V_WARNING in r.getMessage()]
    assert notice() is True  # never used up


def test_sessions_share_one_notice_by_default(runtime: Runtime) -> None:
    macros: dict[str, str] = {}
    d = SessionDriver(runtime, SessionGate(10), macros.get)
    assert d.unannounced_notice is UNANNOUNCED_NOTICE


def test_once() -> None:
    once = Once()
    assert [once() for _ in range(3)] == [True, False, False]


def _looping_message(d: SessionDriver, *, with_body: bool) -> tuple[Action, Action, str, int]:
    """A message whose third Received field passes max_hops (2): the header verdict
    waits for end of message. Returns the body chunk's action, the end of message's,
    its reply id and the header count the message model saw."""
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    d.helo("mail.sender.example")
    d.mail("<friend@sender.example>", ())
    d.rcpt("<alice@example.com>")
    d.data()
    for field in (("Subject", "hi"), RECEIVED, RECEIVED, RECEIVED, ("X-After", "x")):
        assert d.header(*field).action is Action.CONTINUE
    body = d.body(b"text\r\n").action if with_body else Action.CONTINUE
    final = d.eom()
    txn = d.conn.txn
    assert txn is not None
    assert txn.message is not None
    headers = txn.message.headers
    d.close()
    assert final.reply is not None
    return body, final.action, final.reply.reply_id, headers


@pytest.mark.parametrize("with_body", [True, False])
def test_batched_header_fields_are_judged_as_fields_judged_on_arrival(
    runtime: Runtime, with_body: bool
) -> None:
    # The unix-socket adapter batches the fields (no reply per header is awaited);
    # the first body chunk, or the end of a message without one, judges them.
    batched = SessionDriver(runtime, SessionGate(10), POSTFIX.get, Once(), batch_headers=True)
    one_by_one = SessionDriver(runtime, SessionGate(10), POSTFIX.get, Once())
    expected = (
        Action.SKIP if with_body else Action.CONTINUE,
        Action.REJECT,
        "looping_message",
        4,  # the field after the verdict is not fed to the message model
    )
    assert _looping_message(one_by_one, with_body=with_body) == expected
    assert _looping_message(batched, with_body=with_body) == expected


def test_an_aborted_transaction_drops_its_collected_fields(runtime: Runtime) -> None:
    d = SessionDriver(runtime, SessionGate(10), POSTFIX.get, Once(), batch_headers=True)
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    d.helo("mail.sender.example")
    d.mail("<friend@sender.example>", ())
    d.rcpt("<alice@example.com>")
    for _ in range(3):
        d.header(*RECEIVED)
    d.abort()
    d.mail("<friend@sender.example>", ())
    d.rcpt("<alice@example.com>")
    d.header("Subject", "second")
    d.body(b"text\r\n")
    assert d.eom().action is Action.CONTINUE
    d.close()


def test_a_message_without_a_transaction_is_deferred(runtime: Runtime) -> None:
    """Review rev157 F1: a transaction reset by a lost step left a message that no
    check had seen, and end of message answered "continue" (an accept)."""
    d = SessionDriver(runtime, SessionGate(10), POSTFIX.get, Once(), batch_headers=True)
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    d.helo("mail.sender.example")
    d.mail("<friend@sender.example>", ())
    d.rcpt("<alice@example.com>")
    d.abort()
    d.header("Subject", "no transaction")
    d.body(b"text\r\n")
    decision = d.eom()
    assert decision.action is Action.TEMPFAIL
    assert decision.reply is not None
    assert decision.reply.reply_id == "internal_error"
    d.close()


@pytest.mark.parametrize("batch", [True, False])
def test_a_flood_of_header_fields_is_not_kept_nor_judged(tmp_path: Path, batch: bool) -> None:
    """Past limits.max_header_fields nothing is stored (800,000 fields took 10 s of CPU
    and 100 MB before): the message gets message_too_long, a 5xx, since a retry would
    have as many fields (review rev165 F1: internal_error had it retried for days); the
    session's next message starts counting again."""
    site = make_site(tmp_path, {"limits": {"max_header_fields": 100, "max_hops": 2}})
    flood_runtime = build_runtime(load(site.config))
    d = SessionDriver(flood_runtime, SessionGate(10), POSTFIX.get, Once(), batch_headers=batch)
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    d.helo("mail.sender.example")
    for verdict_first, expected in ((False, "message_too_long"), (True, "looping_message")):
        d.mail("<friend@sender.example>", ())
        d.rcpt("<alice@example.com>")
        if verdict_first:  # a field's own verdict before the limit stays the answer
            for _ in range(3):
                d.header(*RECEIVED)
        for n in range(1000):
            assert d.header("Subject", f"n{n}").action is Action.CONTINUE
            assert len(d._fields) <= 100
        final = d.eom()
        assert final.reply is not None
        assert final.reply.reply_id == expected
        assert final.action is Action.REJECT
        if expected == "message_too_long":
            assert (final.reply.code, final.reply.xcode) == ("552", "5.3.4")
    d.mail("<friend@sender.example>", ())
    d.rcpt("<alice@example.com>")
    for n in range(100):
        d.header("Subject", f"n{n}")
    assert d.eom().action is Action.CONTINUE
    d.close()


def _at_rcpt(runtime: Runtime, *, batch: bool) -> SessionDriver:
    """A stranger's session with one recipient accepted, ready for its header."""
    d = SessionDriver(runtime, SessionGate(10), POSTFIX.get, Once(), batch_headers=batch)
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    d.helo("mail.sender.example")
    d.mail("<friend@sender.example>", ())
    d.rcpt("<alice@example.com>")
    return d


def test_collected_header_fields_are_judged_once_they_pass_a_size(tmp_path: Path) -> None:
    """Review rev169 F2: over a unix socket a header block of 54 MB was held whole until
    its end; the fields collected are judged each time they pass HEADER_BATCH_CHARS,
    with the same verdict: a Received field past the limit still refuses at the end."""
    rt = build_runtime(load(make_site(tmp_path, {"limits": {"max_hops": 2}}).config))
    d = _at_rcpt(rt, batch=True)
    for n in range(2000):
        d.header("X-Filler", f"{n:04d} " + "x" * 500)
        assert sum(len(a) + len(b) for a, b in d._fields) <= HEADER_BATCH_CHARS + 520
    for _ in range(3):
        d.header(*RECEIVED)
    final = d.eom()
    assert final.reply is not None
    assert final.reply.reply_id == "looping_message"
    d.close()


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize(
    ("first", "extra", "expected"),
    [
        ([], 0, "accept"),
        ([RECEIVED] * 3, 0, "looping_message"),
        ([], 101, "message_too_long"),
    ],
)
def test_the_summary_size_is_the_whole_message_past_a_verdict(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    batch: bool,
    first: list[tuple[str, str]],
    extra: int,
    expected: str,
) -> None:
    """Review rev174 F1: a message refused at its 101st field was logged as
    ``size=1071`` (the octets before the verdict) where it had 51,513."""
    site = make_site(tmp_path, {"limits": {"max_header_fields": 100, "max_hops": 2}})
    d = _at_rcpt(build_runtime(load(site.config)), batch=batch)
    fields = [*first, *[("Subject", f"n{n}") for n in range(20 + extra)], ("X-Folded", "a\r\n b")]
    chunks = [b"x" * 998 + b"\r\n"] * 50
    caplog.set_level(logging.INFO, logger="smtpguard")
    for field in fields:
        d.header(*field)
    d.eoh()
    for chunk in chunks:
        d.body(chunk)
    final = d.eom()
    d.close()
    assert (final.reply.reply_id if final.reply else "accept") == expected
    size = sum(len(f"{name}: {value}\r\n") for name, value in fields) + 2 + 50 * 1000
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("summary ")]
    assert f" size={size} " in summary, summary


@pytest.mark.parametrize("batch", [True, False])
def test_a_flood_of_header_fields_passes_in_a_dry_run(tmp_path: Path, batch: bool) -> None:
    """Passed unjudged, keeping nothing per field but the fields that would pass for
    our verdict, which are removed as before the limit (review rev165 F1: such a field
    past the limit deferred the message at every retry). More of those than the limit
    itself are refused."""
    config = {"limits": {"max_header_fields": 100}, "milter": {"dry_run": True}}
    dry = build_runtime(load(make_site(tmp_path, config).config))
    forged = f"{dry.pipeline.authserv_id}; dkim=pass header.d=bank.example"
    other = "mx.bank.example; dkim=pass header.d=bank.example"

    def session(after_the_limit: list[tuple[str, str]]) -> Decision:
        d = _at_rcpt(dry, batch=batch)
        d.header("Authentication-Results", forged)
        for n in range(300):
            d.header("Subject", f"n{n}")
            assert len(d._fields) <= 100
        for field in after_the_limit:
            d.header(*field)
        final = d.eom()
        d.close()
        return final

    assert session([]).remove_headers == (("Authentication-Results", 1),)
    past = session(
        [
            ("X-Spam-Status", "No, score=-10"),
            ("Authentication-Results", other),
            ("authentication-results", forged),
            *[("Subject", "more")] * 300,
        ]
    )
    assert past.action is Action.CONTINUE
    # The other host's field (index 2) stays.
    assert sorted(past.remove_headers) == [
        ("Authentication-Results", 1),
        ("Authentication-Results", 3),
        ("X-Spam-Status", 1),
    ]
    flood = session([("X-Spam-Status", "No")] * 100)
    assert flood.action is Action.REJECT
    assert flood.reply is not None
    assert flood.reply.reply_id == "message_too_long"


@pytest.mark.parametrize("batch", [True, False])
def test_a_dry_run_says_what_a_flood_of_header_fields_would_get(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, batch: bool
) -> None:
    """Review rev175 F1: a dry run passed it with nothing but a warning, and an
    X-Spam-Status that read as a whole scan of fields it never searched."""
    config = {
        "limits": {"max_header_fields": 100},
        "milter": {"dry_run": True, "report_header": "X-Smtpguard-Report"},
    }
    dry = build_runtime(load(make_site(tmp_path, config).config))
    caplog.set_level(logging.INFO, logger="smtpguard")
    d = _at_rcpt(dry, batch=batch)
    for n in range(110):
        d.header("X-Filler", f"{n}")
    d.header("Subject", "Congratulations you won")
    final = d.eom()
    d.close()
    assert final.action is Action.CONTINUE
    fields = dict(final.headers)
    assert fields["X-Smtpguard-Report"] == "message_too_long"
    assert "rules=incomplete" in fields["X-Spam-Status"]
    lines = [r.getMessage() for r in caplog.records]
    (decision,) = [
        line for line in lines if "reply=message_too_long" in line and "decision" in line
    ]
    assert (
        "check=limits.max_header_fields reply=message_too_long mode=report action=pass"
        " would='552 5.3.4'" in decision
    )
    (summary,) = [line for line in lines if line.startswith("summary ")]
    assert " would=message_too_long" in summary, summary


def test_a_spam_field_past_the_limit_is_kept_where_nothing_would_remove_it(
    tmp_path: Path,
) -> None:
    # Anti-spam off: incoming X-Spam-* fields are delivered as they came, past the
    # limit too; no reason to make the message wait (found by review).
    config = {
        "limits": {"max_header_fields": 100},
        "milter": {"dry_run": True},
        "checks": {"antispam": {"mode": "off"}},
    }
    dry = build_runtime(load(make_site(tmp_path, config).config))
    d = SessionDriver(dry, SessionGate(10), POSTFIX.get, Once(), batch_headers=True)
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    d.helo("mail.sender.example")
    d.mail("<friend@sender.example>", ())
    d.rcpt("<alice@example.com>")
    for n in range(150):
        d.header("Subject", f"n{n}")
    d.header("X-Spam-Flag", "NO")
    assert d.eom().action is Action.CONTINUE
    d.close()


@pytest.mark.parametrize(
    ("family", "hostaddr", "expected"),
    [
        (socket.AF_INET, ("198.51.100.7", 40000), "198.51.100.7"),
        (socket.AF_INET6, ("2001:db8::7", 40000, 0, 0), "2001:db8::7"),
        # An IPv4 client on a dual-stack socket is judged as the IPv4 address it is.
        (socket.AF_INET6, ("::ffff:192.0.2.10", 40000, 0, 0), "192.0.2.10"),
        (socket.AF_INET6, ("fe80::1%eth0", 40000, 0, 2), "fe80::1"),
        (socket.AF_UNIX, "/run/x.sock", None),
        (socket.AF_INET, ("garbage", 1), None),
    ],
)
def test_client_ip(family: int, hostaddr: object, expected: str | None) -> None:
    ip = client_ip(family, hostaddr)
    assert (None if ip is None else str(ip)) == expected


def test_a_mapped_client_is_trusted_by_its_ipv4_network(runtime: Runtime) -> None:
    driver = SessionDriver(runtime, SessionGate(10), {"v": "Postfix 3.7.11"}.get)
    driver.connect("[::ffff:192.0.2.10]", socket.AF_INET6, ("::ffff:192.0.2.10", 40000, 0, 0))
    assert driver.conn.trusted_network  # site.trusted_networks has 192.0.2.0/24


@pytest.mark.parametrize(
    ("macros", "login"),
    [
        # Sendmail sends {auth_authen} xtext-encoded (measured with Sendmail 8.17).
        (SENDMAIL, "bob+x@example.com"),
        # No v: most likely a Sendmail with only INPUT_MAIL_FILTER, but a Postfix that
        # lost v from milter_connect_macros would have its logins mangled.
        ({"j": "mx.example.com"}, "bob+2Bx@example.com"),
        # Postfix sends the login as the client gave it: "+2B" is part of the name.
        (POSTFIX, "bob+2Bx@example.com"),
    ],
    ids=["sendmail", "unannounced", "postfix"],
)
def test_the_login_is_read_as_the_mta_writes_it(
    runtime: Runtime, macros: dict[str, str], login: str
) -> None:
    d = driver(runtime, {**macros, "{auth_authen}": "bob+2Bx@example.com", "{auth_type}": "LOGIN"})
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    d.helo("mail.sender.example")
    d.mail("<bob+x@example.com>", ())
    assert d.conn.txn is not None
    assert d.conn.txn.auth_login == login
    d.close()


def test_closing_a_session_cancels_its_own_work(runtime: Runtime) -> None:
    """Lookups started for the session alone (Connection.background) must not outlive
    it (review rev52 N3: a connect flood's lookups held the resolver's slots)."""
    d = driver(runtime, POSTFIX)
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    work: concurrent.futures.Future[None] = d.conn.background(concurrent.futures.Future())
    d.close()
    assert work.cancelled()


@pytest.mark.parametrize("version", ["3.7.11", "MailGate 3.7.11"])
def test_an_mta_that_names_neither_keeps_the_relay_guard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, version: str
) -> None:
    """Review rev151 F1: under milter.mta = "auto" a Postfix with milter_macro_v =
    $mail_version (or another mail_name) was taken for Sendmail, and in report mode
    with relay_control "milter"'s restrictions still in Postfix a stranger relayed
    through it. An MTA whose v names neither keeps the guard."""
    site = make_site(tmp_path, {"milter": {"mta": "auto"}, "checks": {"relay": {"mode": "report"}}})
    d = driver(build_runtime(load(site.config)), {"v": version, "j": "mx.example.com"})
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    d.helo("mail.sender.example")
    assert d.mail("<a@sender.example>", ()).action is Action.CONTINUE
    refused = d.rcpt("<victim@gmail.example>")
    assert refused.reply is not None
    assert (refused.reply.reply_id, refused.reply.code) == ("host_denies_relay", "553")
    assert d.conn.mta is MTA.UNKNOWN
    assert "the MTA (its macro v names no MTA we know) passed a relay" in caplog.text
    d.close()


def test_a_postfix_sending_its_bare_version_stays_postfix_as_configured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review rev142 F1: with milter_macro_v = $mail_version Postfix sends "3.7.11";
    taken for Sendmail over milter.mta = "postfix", the relay guard was off and a dry
    run passed a stranger's relay. The configured Postfix stays, guard and all."""
    site = make_site(tmp_path, {"milter": {"mta": "postfix", "dry_run": True}})
    d = driver(build_runtime(load(site.config)), {"v": "3.7.11", "j": "mx.example.com"})
    d.connect("[198.51.100.7]", socket.AF_INET, ("198.51.100.7", 40000))
    d.helo("mail.sender.example")
    assert d.mail("<a@sender.example>", ()).action is Action.CONTINUE
    refused = d.rcpt("<victim@gmail.example>")
    assert refused.reply is not None
    assert refused.reply.reply_id == "host_denies_relay"
    assert d.conn.mta is MTA.POSTFIX
    assert "answering as to" not in caplog.text
    d.close()


SMTPD = {**POSTFIX, "{client_resolve}": "OK"}


@pytest.mark.parametrize(
    ("macros", "client", "port", "local"),
    [
        (POSTFIX, "127.0.0.1", 0, True),
        (POSTFIX, "::1", 0, True),  # inet_protocols = ipv6 (review rev228 M1)
        (POSTFIX, "127.0.0.1", 40000, False),
        # smtpd sends {client_resolve}: an XCLIENT PORT=0 is no local submission (rev228 M4).
        (SMTPD, "127.0.0.1", 0, False),
        (SENDMAIL, "127.0.0.1", 0, False),
    ],
    ids=["postfix-cleanup", "postfix-cleanup-ipv6", "postfix-smtpd", "xclient-port-0", "sendmail"],
)
def test_a_local_submissions_recipients_are_not_refused_one_by_one(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    macros: dict[str, str],
    client: str,
    port: int,
    local: bool,
) -> None:
    """Review rev227: with non_smtpd_milters, a recipient refused at RCPT (one the
    directory lacks, one past max_rcpt) kept cron mail in Postfix's maildrop for good:
    cleanup cannot refuse one recipient ("can't reject recipient in non-smtpd(8)
    submission") and defers the whole message. What Postfix decides itself there passes;
    any other refusal of a recipient (a locked mailbox) refuses the message as a whole at
    its end (review rev228 M3: a report let local processes post to private lists)."""
    site = make_site(
        tmp_path,
        {
            "site": {"trusted_networks": ["192.0.2.0/24", "127.0.0.0/8", "::1/128"]},
            "limits": {"max_rcpt": 3},
        },
    )
    d = SessionDriver(build_runtime(load(site.config)), SessionGate(10), macros.get, Once())
    caplog.set_level(logging.INFO, logger="smtpguard")
    family = socket.AF_INET6 if ":" in client else socket.AF_INET
    assert d.connect("localhost", family, (client, port)).action is Action.CONTINUE
    assert d.conn.local_submission is local
    d.helo("localhost")
    assert d.mail("<root@example.com>", ()).action is Action.CONTINUE
    answers = [
        d.rcpt(f"<{r}>").action
        for r in ("www-data", "alice", "carol", "dave", "bob")
        for r in (f"{r}@example.com",)
    ]
    if not local:
        refused, ok, later = Action.REJECT, Action.CONTINUE, Action.TEMPFAIL
        assert answers == [refused, ok, later, ok, refused]
        d.close()
        return
    assert answers == [Action.CONTINUE] * 5
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decision")]
    assert [line.split(" action=")[1].split()[0] for line in lines] == [
        "pass",  # www-data: unknown here, Postfix's own to deliver or bounce
        "pass",  # carol, suspended for a while: Postfix's queue has a lifetime (rev230 M1)
        "pass",  # dave, past max_rcpt (three accepted)
        "pass",  # bob, past max_rcpt
        "deferred",  # bob is locked: the message is refused at its end
    ]
    assert all(line.endswith(" submission=local") for line in lines), lines
    assert d.data().action is Action.CONTINUE
    assert d.header("Subject", " cron").action is Action.CONTINUE
    assert d.eoh().action is Action.CONTINUE
    final = d.eom()
    assert final.action is Action.REJECT
    assert final.reply is not None
    assert final.reply.wire_lines() == ["550 5.2.1 user is locked. (邮箱被锁)"]
    d.close()


@pytest.mark.parametrize(
    ("recipients", "refused"),
    [(("alice@example.com",), False), (("alice@example.com", "dave@example.com"), True)],
    ids=["every-recipient-exempt", "one-not-exempt"],
)
def test_a_local_submissions_sender_verdict_spares_exempt_recipients(
    tmp_path: Path, recipients: tuple[str, ...], refused: bool
) -> None:
    """Review rev228 M2: a MAIL FROM verdict is held for the recipients not exempt from
    it, as over SMTP; in a local submission it is answered for the whole message at its
    end (cleanup cannot refuse a recipient), so mail to exempt recipients alone passes."""
    site = make_site(
        tmp_path,
        {
            "site": {"trusted_networks": ["192.0.2.0/24", "127.0.0.0/8"]},
            "policy": {
                "exempt": [
                    {"name": "helpdesk", "recipients": ["alice@example.com"], "skip": ["blacklist"]}
                ]
            },
        },
    )
    runtime = build_runtime(load(site.config), blacklist=FakeBlacklist({"cron@example.com"}))
    d = SessionDriver(runtime, SessionGate(10), POSTFIX.get, Once())
    d.connect("localhost", socket.AF_INET, ("127.0.0.1", 0))
    assert d.conn.local_submission
    d.helo("localhost")
    assert d.mail("<cron@example.com>", ()).action is Action.CONTINUE
    assert [d.rcpt(f"<{r}>").action for r in recipients] == [Action.CONTINUE] * len(recipients)
    d.data()
    d.eoh()
    final = d.eom()
    assert (final.action is Action.REJECT) is refused
    if refused:
        assert final.reply is not None
        assert final.reply.wire_lines()[0].startswith("554 5.7.1 Black mail address")
    d.close()


def test_a_local_submission_too_large_to_scan_is_refused_not_deferred(tmp_path: Path) -> None:
    """Review rev232 M1: with on_size_limit = "tempfail", a message too large to scan
    got 4xx at every pickup scan and sat in Postfix's maildrop for good (it has no
    lifetime); a local submission gets message_too_long, a bounce to its sender. Over
    SMTP the sender's queue gives up in time: the 4xx stays."""
    site = make_site(
        tmp_path,
        {
            "site": {"trusted_networks": ["192.0.2.0/24", "127.0.0.0/8"]},
            "virus": {
                "backend": "command",
                "command": ["sh", "-c", "cat >/dev/null; exit 0"],
                "max_bytes": 1024,
                "on_size_limit": "tempfail",
            },
        },
    )
    runtime = build_runtime(load(site.config))
    for port, expected in ((0, "552 5.3.4"), (40000, "450 4.3.0")):
        d = SessionDriver(runtime, SessionGate(10), POSTFIX.get, Once())
        d.connect("localhost", socket.AF_INET, ("127.0.0.1", port))
        d.helo("localhost")
        d.mail("<root@example.com>", ())
        d.rcpt("<alice@example.com>")
        d.data()
        d.header("Subject", " report")
        d.eoh()
        d.body(b"x" * 70 + b"\r\n" * 1 + (b"y" * 70 + b"\r\n") * 60)
        final = d.eom()
        assert final.reply is not None
        assert final.reply.wire_lines()[0].startswith(expected), final.reply.wire_lines()
        d.close()
