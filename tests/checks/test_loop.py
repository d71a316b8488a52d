"""Loop: looping_message from Received counts, Delivered-To and our loop marker."""

from __future__ import annotations

from smtpguard import loopmark
from smtpguard.checks import Event, Stage
from smtpguard.checks.loop import Loop
from smtpguard.session import Connection
from smtpguard.verdict import Hit, Verdict
from support.checks import ServicesFactory, header, make_conn, with_message

RECEIVED = "from a.example (a.example [192.0.2.1]) by b.example; Tue, 1 Oct 2024 10:00:00 +0000"


def headers(check: Loop, conn: Connection, *fields: tuple[str, str]) -> Verdict | None:
    """Run the check on each header as the pipeline does; the first verdict."""
    for name, value in fields:
        verdict = check(conn, header(conn, name, value))
        if verdict is not None:
            return verdict
    return None


def conn_with_message(**kwargs: object) -> Connection:
    args: dict[str, object] = {"sender": "a@example.org", "recipients": ["bob@example.com"]}
    args.update(kwargs)
    return with_message(make_conn(**args))  # type: ignore[arg-type]  # kwargs of mixed types


def test_declaration() -> None:
    assert Loop.name == "loop"
    assert Loop.stage is Stage.HEADER
    assert Loop.reply_ids == ("looping_message",)


def test_received_up_to_max_hops_passes(make_services: ServicesFactory) -> None:
    check = Loop(make_services(limits={"max_hops": 3}))
    assert headers(check, conn_with_message(), *[("Received", RECEIVED)] * 3) is None


def test_one_received_too_many(make_services: ServicesFactory) -> None:
    check = Loop(make_services(limits={"max_hops": 3}))
    verdict = headers(check, conn_with_message(), *[("Received", RECEIVED)] * 4)
    assert verdict == Hit("looping_message", "4 Received headers")


def test_our_marker_with_our_value(make_services: ServicesFactory) -> None:
    # The marker's value defaults to the first of site.our_hostnames.
    check = Loop(make_services())
    marker = ("X-Smtpguard-Loop", " MX.Example.COM ")
    verdict = headers(check, conn_with_message(), ("Subject", "hi"), marker)
    assert verdict == Hit("looping_message", "our X-Smtpguard-Loop marker is present")


def test_a_logged_in_client_may_send_our_marker_on(make_services: ServicesFactory) -> None:
    """A user's redirect of a message we delivered carries our marker: no loop for a
    logged-in client (found by review through submission); the hop count still holds."""
    check = Loop(make_services(limits={"max_hops": 3}))
    conn = conn_with_message(auth_login="alice@example.com")
    assert headers(check, conn, ("X-Smtpguard-Loop", "mx.example.com")) is None
    verdict = headers(check, conn, *[("Received", RECEIVED)] * 4)
    assert verdict == Hit("looping_message", "4 Received headers")


def test_a_trusted_host_that_sends_our_marker_back_is_a_loop(
    make_services: ServicesFactory,
) -> None:
    """Review rev105: a loop between the MX and a mail store, a smarthost or a content
    filter's reinjection runs through a host in trusted_networks; only a logged-in
    client may send our marker on."""
    check = Loop(make_services())
    conn = conn_with_message(trusted_network=True)
    verdict = headers(check, conn, ("X-Smtpguard-Loop", "mx.example.com"))
    assert verdict == Hit("looping_message", "our X-Smtpguard-Loop marker is present")


def test_someone_elses_marker_value_passes(make_services: ServicesFactory) -> None:
    check = Loop(make_services(content={"loop_marker": "X-Loop", "loop_marker_value": "us"}))
    conn = conn_with_message()
    assert headers(check, conn, ("X-Loop", "them"), ("X-Smtpguard-Loop", "us")) is None
    assert headers(check, conn, ("x-loop", "US")) == Hit(
        "looping_message", "our x-loop marker is present"
    )


def test_delivered_to_a_recipient_of_this_transaction(make_services: ServicesFactory) -> None:
    check = Loop(make_services())
    verdict = headers(check, conn_with_message(), ("Delivered-To", " <Bob@Example.com>"))
    assert verdict == Hit("looping_message", "Delivered-To bob@example.com is a recipient")


def test_delivered_to_a_quoted_spelling_of_a_recipient(make_services: ServicesFactory) -> None:
    """RFC 5321 4.1.2: ``"bob"@`` is ``bob@``, in the header and in RCPT TO alike; the
    detail shows the header's spelling."""
    check = Loop(make_services())
    verdict = headers(check, conn_with_message(), ("Delivered-To", '"Bob"@Example.com'))
    assert verdict == Hit("looping_message", 'Delivered-To "bob"@example.com is a recipient')
    quoted_rcpt = conn_with_message(recipients=[r'<"b\ob"@example.com>'])
    verdict = headers(check, quoted_rcpt, ("Delivered-To", "bob@example.com"))
    assert verdict == Hit("looping_message", "Delivered-To bob@example.com is a recipient")
    # Quotes that are needed make another mailbox.
    assert headers(check, conn_with_message(), ("Delivered-To", '"bob "@example.com')) is None


def test_delivered_to_someone_else_or_unparsable_passes(make_services: ServicesFactory) -> None:
    check = Loop(make_services())
    conn = conn_with_message()
    assert headers(check, conn, ("Delivered-To", "carol@example.com")) is None
    assert headers(check, conn, ("Delivered-To", "not an address")) is None


def test_delivered_to_some_recipients_only_passes(make_services: ServicesFactory) -> None:
    """Review rev216 M2: a Delivered-To naming one of two recipients refused the
    message for both with a permanent 552; the other's copy is no loop."""
    check = Loop(make_services())
    two = ["<bob@example.com>", "<carol@example.com>"]
    assert (
        headers(check, conn_with_message(recipients=two), ("Delivered-To", "bob@example.com"))
        is None
    )
    # Named in fields of their own, every recipient: a loop for each.
    verdict = headers(
        check,
        conn_with_message(recipients=two),
        ("Delivered-To", "bob@example.com"),
        ("Delivered-To", "someone@elsewhere.example"),
        ("Delivered-To", "Carol@Example.com"),
    )
    assert verdict == Hit("looping_message", "Delivered-To names all 2 recipients")
    # The same recipient named twice is still one of two.
    twice = headers(
        check,
        conn_with_message(recipients=two),
        ("Delivered-To", "bob@example.com"),
        ("Delivered-To", '"bob"@example.com'),
    )
    assert twice is None


def test_without_message_or_header_nothing_is_decided(make_services: ServicesFactory) -> None:
    check = Loop(make_services(limits={"max_hops": 1}))
    assert check(make_conn(sender="a@example.org"), Event(header=("Received", "x"))) is None
    assert check(conn_with_message(), Event()) is None
    assert check(make_conn(), Event()) is None


KEYED = {"loop_marker_key": "sixteen or more characters"}


def keyed_marker(sender: str, *recipients: str) -> tuple[str, str]:
    key = loopmark.key_of(KEYED["loop_marker_key"])
    name = "X-Smtpguard-Loop"
    return (name, loopmark.render(name, "mx.example.com", key, sender, recipients))


NAMED = Hit("looping_message", "our X-Smtpguard-Loop marker names this sender and recipient")


def test_a_keyed_marker_is_a_loop_for_its_sender_and_a_recipient_it_names(
    make_services: ServicesFactory,
) -> None:
    """The mail store, smarthost or filter loop comes back for the same mailbox from
    the same envelope sender, whatever the address extension."""
    check = Loop(make_services(content=KEYED))
    marker = keyed_marker("a@example.org", "carol@example.com", "bob@example.com")
    assert headers(check, conn_with_message(trusted_network=True), marker) == NAMED
    conn = conn_with_message(recipients=["bob+tag@example.com"])
    assert headers(check, conn, marker) == NAMED


def test_a_keyed_marker_for_other_recipients_or_another_sender_passes(
    make_services: ServicesFactory,
) -> None:
    """Review rev105 and rev107 F1: a list or ticket host of ours sends its members the
    mail it got through us with its own envelope sender, even to a member who was among
    the first recipients; a forwarded copy comes back for another user: no loop."""
    check = Loop(make_services(content=KEYED))
    marker = keyed_marker("a@example.org", "news@example.com", "bob@example.com")
    conn = conn_with_message(trusted_network=True, recipients=["carol@example.com"])
    assert headers(check, conn, marker) is None
    conn = conn_with_message(
        trusted_network=True, sender="news-bounces@example.com", recipients=["bob@example.com"]
    )
    assert headers(check, conn, marker) is None


def test_a_keyed_marker_is_a_loop_only_when_it_names_every_recipient(
    make_services: ServicesFactory,
) -> None:
    """Review rev108 F2, rev114 F1: an alias host or a redirect that keeps the envelope
    sender sends the post back for alice, who had it, and dave, who did not; or the MX's
    own aliases or always_bcc send a looping message round with recipients it did not
    name. Refusing all lost dave's copy to a bounce, dropping alice could lose hers: all
    get it (alice once more) and the next pass, which names all, is the loop."""
    check = Loop(make_services(content=KEYED))
    marker = keyed_marker("a@example.org", "team@example.com", "alice@example.com")
    conn = conn_with_message(recipients=["dave@example.com", "alice+x@example.com"])
    assert headers(check, conn, marker) is None
    conn = conn_with_message(recipients=["alice@example.com", "team@example.com"])
    assert headers(check, conn, marker) == NAMED


def test_a_bare_marker_is_nobodys_with_a_key(make_services: ServicesFactory) -> None:
    """Review rev107: with a key we add no bare marker, and anyone can write one (in a
    post to a list elsewhere, to have the list's copies to our users refused)."""
    check = Loop(make_services(content=KEYED))
    assert headers(check, conn_with_message(), ("X-Smtpguard-Loop", "mx.example.com")) is None


def test_a_keyed_marker_without_the_key_is_a_loop(make_services: ServicesFactory) -> None:
    """The key removed: hashes nobody can check count as our bare marker."""
    check = Loop(make_services())
    verdict = headers(check, conn_with_message(), keyed_marker("x@y.org", "list@example.com"))
    assert verdict == Hit("looping_message", "our X-Smtpguard-Loop marker is present")


def test_a_forged_keyed_marker_is_nobodys_and_costs_little(make_services: ServicesFactory) -> None:
    """Review rev108: "a=é" made compare_digest raise (internal_error for anyone's
    message, F1); past max_hops keyed markers the rest are not hashed (F3)."""
    check = Loop(make_services(content=KEYED, limits={"max_hops": 3}))
    forged = ("X-Smtpguard-Loop", "mx.example.com; n=1; a=\u00e9")
    assert headers(check, conn_with_message(), forged) is None
    conn = conn_with_message()
    others = [keyed_marker("x@y.org", "carol@example.com")] * 3
    assert headers(check, conn, *others, keyed_marker("a@example.org", "bob@example.com")) is None
    conn = conn_with_message()
    assert headers(check, conn, *others[:2], keyed_marker("a@example.org", "bob@example.com"))
