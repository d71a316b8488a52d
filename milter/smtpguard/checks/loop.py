"""``looping_message``: too many hops, or our own loop marker already present.

Decided per header: more ``Received:`` fields than ``limits.max_hops``;
``Delivered-To:`` fields that name every recipient of this transaction (the message
has been delivered to each of those mailboxes before and came back; one that names
only some of them passes, and the delivery agent, Postfix's local(8) and virtual(8)
among them, bounces the looping copy alone: review rev216 M2); or our loop-marker
header with our value (we accepted this message before, for a domain of ours), unless the client
logged in: a user's redirect of a message we delivered carries our marker and is no
loop. A host in ``trusted_networks`` is not exempt: a loop between the MX and a mail
store, a smarthost or a content filter's reinjection runs through one (review rev105).
With ``content.loop_marker_key`` our marker names its envelope sender and recipients
(smtpguard.loopmark) and is a loop only when the message comes back from that sender for
recipients it names, every one of them; a bare one is then nobody's.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard import loopmark
from smtpguard.address import AddressError, parse_path
from smtpguard.checks import Event, Services, Stage
from smtpguard.session import Connection, Transaction
from smtpguard.verdict import Hit, Verdict

#: Keyed markers of ours judged so far in the transaction (Transaction.scratch).
_MARKERS = "loop.markers"
#: The recipients, and those Delivered-To fields named so far (Transaction.scratch).
_DELIVERED = "loop.delivered"


class Loop:
    name: ClassVar[str] = "loop"
    stage: ClassVar[Stage] = Stage.HEADER
    reply_ids: ClassVar[tuple[str, ...]] = ("looping_message",)

    def __init__(self, services: Services) -> None:
        config = services.config
        self.max_hops = config.limits.max_hops
        self.marker = config.content.loop_marker.lower()
        self.marker_value = config.loop_marker_value.lower()
        self.key = loopmark.key_of(config.content.loop_marker_key)
        self.delimiters = config.site.recipient_delimiter
        #: Called for these fields only (smtpguard.checks.header_names).
        self.header_names = frozenset({"received", "delivered-to", self.marker})

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is None or txn.message is None or event.header is None:
            return None
        name, value = event.header
        lowered = name.lower()
        if lowered == "received" and txn.message.received > self.max_hops:
            return Hit("looping_message", f"{txn.message.received} Received headers")
        # A logged-in user who sends a message on unchanged (a redirect) sends back what
        # we delivered, marker included: that is no loop (the hop count still holds).
        if lowered == self.marker and not conn.authenticated:
            marker = loopmark.parse(value, self.marker_value)
            if marker is None:
                return None
            if not self.key:
                # Bare, or hashes we cannot check (the key was removed): any return.
                return Hit("looping_message", f"our {name} marker is present")
            if not marker.nonce:
                # With a key we add no bare marker: anyone may have written this one (in
                # a post to a list elsewhere, to have its copies to our users refused).
                return None
            # A pass adds one marker: past max_hops of them the rest are not ours to
            # hash, one per recipient each (review rev108 F3: thousands of forged ones).
            seen = txn.scratch.get(_MARKERS, 0) + 1
            txn.scratch[_MARKERS] = seen
            if seen > self.max_hops:
                return None
            sender, recipients = loopmark.parties(txn.sender, txn.recipients, self.delimiters)
            named = loopmark.named(self.key, marker, sender, recipients)
            if not named or len(named) < len(recipients) or txn.unparsed_recipients:
                # Some recipients are new to this marker: all of them get the message
                # (a recipient it names has it once more), and the marker this pass adds
                # names them all, so a true loop is refused at the next pass, with a
                # bounce for every recipient. Dropping the named ones (review rev108 F2)
                # lost mail the MTA's aliases or always_bcc sent round the loop: the
                # marker says we accepted it for them, not that they got it (rev114 F1).
                return None
            return Hit("looping_message", f"our {name} marker names this sender and recipient")
        if lowered == "delivered-to":
            return self._delivered_to(txn, value)
        return None

    @staticmethod
    def _delivered_to(txn: Transaction, value: str) -> Verdict | None:
        try:
            delivered = parse_path(value.strip(), smtputf8=True)
        except AddressError:
            return None
        # Compared canonical: "alice"@example.com is alice@example.com's mailbox.
        seen = delivered.canonical_lc
        # The recipients are known by the header: their set is made once per message,
        # not once per field (thousands of Delivered-To fields cost a pass each).
        kept: tuple[frozenset[str], set[str]] | None = txn.scratch.get(_DELIVERED)
        if kept is None:
            kept = txn.scratch[_DELIVERED] = (
                frozenset(r.canonical_lc for r in txn.recipients),
                set(),
            )
        recipients, named = kept
        if seen not in recipients:
            return None
        named.add(seen)
        if len(named) < len(recipients) or txn.unparsed_recipients:
            # A loop for some recipients only: a 552 here would refuse the message for
            # the others too, whose copy is no loop (review rev216 M2). Their delivery
            # agent judges Delivered-To per recipient, and max_hops still ends a loop
            # that nobody breaks.
            return None
        if len(recipients) == 1:
            return Hit("looping_message", f"Delivered-To {delivered.lc.lower()} is a recipient")
        return Hit("looping_message", f"Delivered-To names all {len(recipients)} recipients")
