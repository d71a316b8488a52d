"""``fake_router``: forged or malformed ``Received:`` trace fields.

A field is refused when it does not parse as a trace field (see
:mod:`smtpguard.content.received` for exactly what is parsed), or when it claims to
be one of our hops, its ``from`` clause naming one of our host names or IPs
(``site.our_hostnames``, ``site.our_ips``) and its ``by`` clause one too or none
(:func:`~smtpguard.content.received.is_our_claim`), while the connecting client is
not one of our hosts (an IP in ``site.our_ips`` or ``site.trusted_networks``) and has
not logged in (a user's redirect of a message we delivered carries our own Received
fields). Claims are read from the top down to the first field another host wrote (its
``by`` is not ours): the fields below it are the message's history before that host,
where our own hops stand when a mailing list or a forwarder sends our user's message
back to our users (review rev93 F2: the list's copy was refused, 553). A forger gains
nothing there either: no filter trusts a hop below an untrusted one.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks import Event, Services, Stage
from smtpguard.content.received import (
    ReceivedParseError,
    claims_ours,
    parse_received,
    written_by_another,
)
from smtpguard.session import Connection
from smtpguard.verdict import Hit, Verdict


class ForgedReceived:
    name: ClassVar[str] = "received"
    stage: ClassVar[Stage] = Stage.HEADER
    reply_ids: ClassVar[tuple[str, ...]] = ("fake_router",)
    #: Called for these fields only (smtpguard.checks.header_names).
    header_names: ClassVar[frozenset[str]] = frozenset({"received"})

    def __init__(self, services: Services) -> None:
        site = services.config.site
        self.names = site.our_hostnames
        self.ips = site.our_ips

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        if event.header is None or event.header[0].lower() != "received":
            return None
        try:
            info = parse_received(event.header[1])
        except ReceivedParseError as exc:
            return Hit("fake_router", f"unparsable Received: {exc}")
        # A logged-in user's redirect of a message we delivered carries our Received
        # fields: for such a client they are no forged claim.
        ours = conn.trusted or (conn.client_ip is not None and conn.client_ip in self.ips)
        txn = conn.txn
        if ours or (txn is not None and _HISTORY in txn.scratch):
            return None
        if written_by_another(info, self.names, self.ips):
            if txn is not None:
                txn.scratch[_HISTORY] = True  # what came before it (module docstring)
            return None
        if claims_ours(info, self.names, self.ips):  # is_our_claim, its by ours or none
            return Hit("fake_router", f"Received claims our host: from {info.from_name}")
        return None


#: In a transaction's scratch: a field another host wrote was seen.
_HISTORY = "received.history"
