"""What the running service says about each message, through real milter sessions
(PyPI miltertest): the summary line for every outcome, the Authentication-Results field
(RFC 8601) with the SPF and iprev results from the test DNS server, forged fields with
our authserv-id removed, and the X-Spam-Status/X-Spam-Report fields."""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import pytest
from miltertest import constants as C

from support.mtclient import MilterSession, assert_reply
from support.polling import poll_for, wait_until
from support.service import UNTRUSTED_IP, Running, make_site, running
from support.unbound import GOOD_IP, NO_PTR_IP, DnsServer

pytestmark = pytest.mark.integration

AUTHSERV_ID = "mx.example.com"
HEADERS = [
    ("From", "Friend <someone@good.test>"),
    ("To", "alice@example.com"),
    ("Subject", "hello"),
    ("Message-ID", "<obs1@good.test>"),
]
SPAMMY = [
    ("From", "promo@good.test"),
    ("To", "alice@example.com"),
    ("Subject", "Congratulations, you have won"),
    ("X-Mailer", "Mass Mail Pro 3"),
]
SPAMMY_BODY = "You are the winner of our lottery! Claim ten million dollars today.\r\n"
Mods = list[tuple[str, dict[str, str]]]


@pytest.fixture(scope="module")
def service(unbound: DnsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    extra = {
        "milter": {"authserv_id": AUTHSERV_ID},
        "dns": {"nameservers": ["127.0.0.1"], "port": unbound.port, "timeout": 1.0},
    }
    with running(make_site(tmp_path_factory.mktemp("observability"), extra)) as svc:
        yield svc


def summaries(service: Running) -> list[dict[str, str]]:
    out = []
    for line in service.log().splitlines():
        _, found, rest = line.partition(" summary ")
        if found:
            out.append(dict(item.split("=", 1) for item in shlex.split(rest)))
    return out


def summary_of(service: Running, qid: str) -> dict[str, str]:
    """The summary line of the transaction with queue id ``qid``, once it is written."""
    found = poll_for(
        lambda: [s for s in summaries(service) if s.get("qid") == qid] or None,
        what=lambda: f"no summary for {qid}:\n{service.log()}",
    )
    assert len(found) == 1, found
    return found[0]


def message(
    service: Running,
    qid: str,
    headers: list[tuple[str, str]] = HEADERS,
    body: str = "Lunch tomorrow?\r\n",
    ip: str = GOOD_IP,
) -> tuple[str, Mods, MilterSession]:
    s = service.session()
    s.connect(ip, "mx.good.test")
    s.helo("mx.good.test")
    assert s.mail("<someone@good.test>", macros={"i": qid}).kind == "continue"
    assert s.rcpt("<alice@example.com>").kind == "continue"
    # Postfix gives the queue id from DATA on: the macro packet precedes the command.
    s.conn.send_macro(C.SMFIC_DATA, i=qid)
    final, mods, _early = s.message(headers, body)
    return final.kind, mods, s


def test_accepted_mail_gets_authentication_results_and_a_summary(service: Running) -> None:
    kind, mods, s = message(service, "OBS1")
    s.close()
    assert kind == "continue"
    # CHGHDRS is negotiated (libmilter keeps every action the MTA offers).
    assert s.conn.action_flags & C.SMFIF_CHGHDRS
    inserted = [m[1] for m in mods if m[0] == C.SMFIR_INSHEADER]
    assert inserted == [
        {
            "index": 0,
            "name": "Authentication-Results",
            "value": f"{AUTHSERV_ID};\n\tspf=pass smtp.mailfrom=good.test;\n"
            f"\tiprev=pass policy.iprev={GOOD_IP}",
        }
    ]
    added = {m[1]["name"]: m[1]["value"] for m in mods if m[0] == C.SMFIR_ADDHEADER}
    assert added["X-Spam-Status"] == "No, score=0.0 required=6.0 tests=none"
    line = summary_of(service, "OBS1")
    assert line["outcome"] == "accept"
    assert (line["spf"], line["iprev"], line["nrcpt"], line["score"]) == (
        "pass",
        "pass",
        "1",
        "0.0",
    )
    assert int(line["size"]) > 0
    assert int(line["ms"]) >= 0
    assert "reply" not in line
    # Who sent it to whom (review rev113 F1: three accepted messages, one line each,
    # told apart by their client alone).
    assert (line["from"], line["rcpt"]) == ("<someone@good.test>", "<alice@example.com>")
    assert "login" not in line
    assert "trusted" not in line
    assert "would" not in line


def test_forged_authentication_results_with_our_id_are_removed(service: Running) -> None:
    headers = [
        ("Authentication-Results", "other.example; spf=pass smtp.mailfrom=good.test"),
        ("Authentication-Results", f"{AUTHSERV_ID}; spf=pass smtp.mailfrom=forged.example"),
        *HEADERS,
        ("Authentication-Results", f" (forged) {AUTHSERV_ID.upper()} 1; iprev=pass"),
    ]
    kind, mods, s = message(service, "OBS2", headers)
    s.close()
    assert kind == "continue"
    changed = [m[1] for m in mods if m[0] == C.SMFIR_CHGHEADER]
    # The second and third of the three, last first; other.example's stays.
    assert changed == [
        {"index": 3, "name": "Authentication-Results", "value": ""},
        {"index": 2, "name": "Authentication-Results", "value": ""},
    ]
    assert [m[0] for m in mods].index(C.SMFIR_CHGHEADER) < [m[0] for m in mods].index(
        C.SMFIR_INSHEADER
    )


def test_incoming_anti_spam_fields_are_removed(service: Running) -> None:
    """A sender's "X-Spam-Status: No" (or flag) above ours would be what a filter reads
    first: mail the anti-spam check judged keeps only our fields."""
    headers = [
        ("X-Spam-Status", "No, score=-100 required=6.0 tests=forged"),
        ("X-Spam-Flag", "NO"),
        *HEADERS,
        ("x-spam-status", "No"),
        ("X-Spam-Report", "* nothing to see"),
    ]
    kind, mods, s = message(service, "OBS-SPAM", headers)
    s.close()
    assert kind == "continue"
    changed = [m[1] for m in mods if m[0] == C.SMFIR_CHGHEADER]
    assert changed == [
        {"index": 1, "name": "X-Spam-Report", "value": ""},
        {"index": 2, "name": "X-Spam-Status", "value": ""},
        {"index": 1, "name": "X-Spam-Flag", "value": ""},
        {"index": 1, "name": "X-Spam-Status", "value": ""},
    ]
    added = {m[1]["name"]: m[1]["value"] for m in mods if m[0] == C.SMFIR_ADDHEADER}
    assert added["X-Spam-Status"] == "No, score=0.0 required=6.0 tests=none"


def test_tagged_mail_reports_its_rules(service: Running) -> None:
    kind, mods, s = message(service, "OBS3", SPAMMY, SPAMMY_BODY)
    s.close()
    assert kind == "continue"
    added = {m[1]["name"]: m[1]["value"] for m in mods if m[0] == C.SMFIR_ADDHEADER}
    status = added["X-Spam-Status"]
    assert status.startswith("Yes, score=")
    assert "required=6.0 tests=" in status
    assert "SUBJ_YOU_WON" in status
    report = added["X-Spam-Report"].split("\n\t")
    assert report[0].startswith("score=")
    assert "* SUBJ_YOU_WON" in report
    line = summary_of(service, "OBS3")
    assert line["outcome"] == "tag"
    assert "SUBJ_YOU_WON" in line["rules"].split(",")
    assert float(line["score"]) >= 6.0


def test_refused_at_mail_from_has_its_summary(service: Running) -> None:
    with service.session() as s:
        s.connect(NO_PTR_IP)
        s.helo("mx.good.test")
        answer = s.mail("<someone@good.test>", macros={"i": "OBS4"})
    assert_reply(answer, "smtpport_check")
    line = summary_of(service, "OBS4")
    assert (line["outcome"], line["reply"], line["check"]) == (
        "reject",
        "smtpport_check",
        "smtpport",
    )
    assert line["iprev"] == "permerror"  # no PTR published (RFC 8601 §2.7.3)
    assert line["nrcpt"] == "0"


def test_every_recipient_refused_then_quit(service: Running) -> None:
    with service.session() as s:
        s.connect(GOOD_IP, "mx.good.test")
        s.helo("mx.good.test")
        assert s.mail("<someone@good.test>", macros={"i": "OBS5"}).kind == "continue"
        assert_reply(s.rcpt("<nobody@example.com>"), "mailbox_unavailable")
    line = summary_of(service, "OBS5")
    assert (line["outcome"], line["reply"]) == ("reject", "mailbox_unavailable")


def test_aborted_transaction(service: Running) -> None:
    with service.session() as s:
        s.connect(GOOD_IP, "mx.good.test")
        s.helo("mx.good.test")
        assert s.mail("<someone@good.test>", macros={"i": "OBS6"}).kind == "continue"
        assert s.rcpt("<alice@example.com>").kind == "continue"
        assert_reply(s.rcpt("<nobody@example.com>"), "mailbox_unavailable")
        s.abort()
    line = summary_of(service, "OBS6")
    assert line["outcome"] == "abort"
    assert line["nrcpt"] == "1"


def test_empty_transactions_past_three_are_counted_in_one_line(service: Running) -> None:
    """Review rev212 F3: a MAIL/RSET loop wrote one summary line per loop (119 per
    connection through Postfix, 4 times the octets the client sent). The first three
    are logged, the rest counted in one line at the session's end; a transaction with
    a recipient is logged as ever."""
    with service.session() as s:
        s.connect(GOOD_IP, "mx.good.test")
        s.helo("mx.good.test")
        for i in range(10):
            assert s.mail("<loop@good.test>", macros={"i": f"OBSL{i}"}).kind == "continue"
            s.abort()
        assert s.mail("<loop@good.test>", macros={"i": "OBSL10"}).kind == "continue"
        assert s.rcpt("<alice@example.com>").kind == "continue"
        s.abort()
    last = summary_of(service, "OBSL10")
    assert (last["outcome"], last["nrcpt"]) == ("abort", "1")
    sid = last["sid"]
    repeated = poll_for(
        lambda: [x for x in summaries(service) if x["sid"] == sid and "repeated" in x] or None,
        what=service.log,
    )
    assert repeated == [
        {
            "sid": sid,
            "outcome": "abort",
            "nrcpt": "0",
            "repeated": "7",
            "client": GOOD_IP,
            "from": "<loop@good.test>",
        }
    ]
    each = [x.get("qid") for x in summaries(service) if x["sid"] == sid and "repeated" not in x]
    assert each == ["OBSL0", "OBSL1", "OBSL2", "OBSL10"]


def test_the_summary_names_login_recipients_and_what_a_dry_run_let_through(
    unbound: DnsServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Review rev113 F1: the login a message came with, its recipients (the first five,
    then how many more) and, in a dry run, the reply ids enforcing would have answered."""
    extra = {"milter": {"dry_run": True, "auth_results": False}}
    with running(make_site(tmp_path_factory.mktemp("dry"), extra)) as svc:
        s = svc.session()
        s.connect(UNTRUSTED_IP)
        s.helo("mail.sender.example")
        auth = {"i": "DRY1", "{auth_type}": "LOGIN", "{auth_authen}": "alice@example.com"}
        assert s.mail("<spammer@bad.example>", macros=auth).kind == "continue"
        rcpts = [f"<user{n}@example.com>" for n in range(6)] + ["<alice@example.com>"]
        for rcpt in rcpts:
            assert s.rcpt(rcpt).kind == "continue"
        s.conn.send_macro(C.SMFIC_DATA, i="DRY1")
        final, _mods, _early = s.message(HEADERS, "hi\r\n")
        s.close()
        assert final.kind == "continue"
        line = poll_for(
            lambda: [x for x in summaries(svc) if x.get("qid") == "DRY1"] or None,
            what=svc.log,
        )[0]
    assert line["outcome"] == "accept"
    assert line["login"] == "alice@example.com"
    assert line["from"] == "<spammer@bad.example>"
    assert line["rcpt"] == ",".join(rcpts[:5]) + ",+2"
    assert "host_denies_sender" in line["would"].split(",")


def test_summary_line_can_be_turned_off(
    unbound: DnsServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    extra = {"milter": {"summary_log": False, "auth_results": False}}
    with running(make_site(tmp_path_factory.mktemp("quiet"), extra)) as svc:
        with svc.session() as s:
            s.connect(UNTRUSTED_IP)
            s.helo("mail.sender.example")
            assert_reply(s.mail("<spammer@bad.example>"), "host_denies_sender")
        wait_until(lambda: "decision " in svc.log())
        assert " summary " not in svc.log()


def test_a_refused_recipient_and_an_abandoned_transaction_carry_postfixs_queue_id(
    service: Running,
) -> None:
    """Review rev133 F1: Postfix has a queue id once it accepted a first recipient and
    sends it with the RCPT TO after (its milter_rcpt_macros have "i"): a refusal there,
    and the summary of a transaction left with RSET, had no qid to join them with
    Postfix's own lines."""
    s = service.session()
    s.connect(GOOD_IP, "mx.good.test")
    s.helo("mx.good.test")
    assert s.mail("<someone@good.test>").kind == "continue"
    assert s.rcpt("<alice@example.com>").kind == "continue"  # no queue file yet
    refused = s.rcpt("<nobody@example.com>", macros={"i": "OBSRCPT1"})
    assert refused.code == "550", refused
    s.abort()
    s.close()
    decision = poll_for(
        lambda: next(
            (
                x
                for x in service.log().splitlines()
                if "reply=mailbox_unavailable" in x and "OBSRCPT1" in x
            ),
            None,
        ),
        what=service.log,
    )
    assert " qid=OBSRCPT1 " in decision
    assert summary_of(service, "OBSRCPT1")["outcome"] == "abort"


def test_a_logged_in_transaction_gets_no_iprev_of_the_one_before(service: Running) -> None:
    """smtpport judges a client that has not logged in; after AUTH in the same session
    it no longer runs, and its earlier result is not this message's (review rev201 F2:
    ``iprev=pass`` from the first transaction in the second's field)."""
    s = service.session()
    s.connect(GOOD_IP, "mx.good.test")
    s.helo("mx.good.test")
    assert s.mail("<someone@good.test>").kind == "continue"
    assert s.rcpt("<alice@example.com>").kind == "continue"
    _final, mods, _early = s.message(HEADERS, "first\r\n")
    inserted = [m[1]["value"] for m in mods if m[0] == C.SMFIR_INSHEADER]
    assert inserted == [
        f"{AUTHSERV_ID};\n\tspf=pass smtp.mailfrom=good.test;\n\tiprev=pass policy.iprev={GOOD_IP}"
    ]
    login = {"{auth_authen}": "alice@example.com", "{auth_type}": "PLAIN"}
    login["{tls_version}"] = "TLSv1.3"  # PLAIN in the clear is refused
    assert s.mail("<alice@example.com>", macros=login).kind == "continue"
    assert s.rcpt("<bob@good.test>").kind == "continue"
    final, mods, _early = s.message(HEADERS, "second\r\n")
    s.close()
    assert final.kind == "continue"
    # Neither SPF nor iprev ran for the logged-in message: no field of ours at all.
    assert [m for m in mods if m[0] == C.SMFIR_INSHEADER] == []
