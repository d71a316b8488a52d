"""MAIL FROM checks that need no backend: syntax and the static deny list."""

from __future__ import annotations

from typing import ClassVar

from smtpguard.address import (
    canonical_address,
    canonical_domain,
    domain_to_unicode,
    implied_mailboxes,
    strip_extension,
)
from smtpguard.checks import Event, Services, Stage
from smtpguard.config import is_deny_pattern
from smtpguard.patterns import compile_pattern
from smtpguard.session import Connection
from smtpguard.verdict import Hit, Verdict


class SenderSyntax:
    """``mail_from_invalid``: not an RFC 5321 / RFC 6531 path (``<>`` is valid)."""

    name: ClassVar[str] = "sender_syntax"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("mail_from_invalid",)

    def __init__(self, services: Services) -> None:
        pass

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is not None and txn.sender is None:
            return Hit("mail_from_invalid", f"{txn.sender_raw!r}: {txn.sender_error}")
        return None


class SenderDeny:
    """``host_denies_sender``: the site's static deny list.

    Entries: ``user@example.com`` (exact, case-insensitive), ``example.com`` (the domain
    and its subdomains), ``@example.com`` (the domain only), ``/pattern/`` (RE2,
    searched case-insensitively in the lower-cased address; the config loader has
    refused any that does not compile). Both sides are compared in their canonical form
    (:attr:`~smtpguard.address.Address.canonical`), so a quoted local part
    (``"user"@example.com``) is the same sender as the unquoted one, and a domain
    written with U-labels (``bücher.example``) the same as its A-labels
    (``xn--bcher-kva.example``), whichever form the entry or the client uses.
    Patterns see the canonical address, and for an internationalized domain also the
    same address with U-labels, so a pattern may be written in either form.
    An exact entry also lists the address with an extension (``site.recipient_delimiter``,
    as Postfix's access(5) lookups): ``user+1@example.com`` is ``user@example.com``.
    """

    name: ClassVar[str] = "sender_deny"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("host_denies_sender",)

    def __init__(self, services: Services) -> None:
        self.addresses: set[str] = set()
        self.delimiters = services.config.site.recipient_delimiter
        self.domains: set[str] = set()
        self.exact_domains: set[str] = set()
        patterns = []
        for entry in services.config.policy.sender_deny:
            if is_deny_pattern(entry):
                # Case-insensitive: the address is lower-cased, so /^Promo-/ written
                # case-sensitively loaded and never matched (review rev156 F8).
                patterns.append(compile_pattern(entry[1:-1], ignore_case=True))
            elif entry.startswith("@"):
                self.exact_domains.add(canonical_domain(entry[1:]))
            elif "@" in entry:
                self.addresses.add(canonical_address(entry).lower())
            else:
                self.domains.add(canonical_domain(entry))
        self.patterns = tuple(patterns)

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is None or (txn.sender is not None and txn.sender.is_null):
            return None
        if txn.sender is not None:
            sender = txn.sender
            shown = (sender.text.lower(), sender.domain_lc)
            return self._judge(sender.canonical_lc, sender.domain_canonical, shown)
        # A sender that does not parse, as the MTA may make it (review rev65 F1: with
        # sender_syntax not enforcing, <spammer%bad.example> was delivered as
        # spammer@bad.example).
        for _written, address in implied_mailboxes(txn.sender_raw):
            domain = address.rpartition("@")[2]
            verdict = self._judge(address, domain, (address, domain))
            if verdict is not None:
                return verdict
        return None

    def _judge(self, address: str, domain: str, shown: tuple[str, str]) -> Verdict | None:
        """``address`` and its ``domain`` in their canonical, lower-cased forms;
        ``shown``: the two as the log names them."""
        if address in self.addresses or (
            self.addresses and strip_extension(address, self.delimiters) in self.addresses
        ):
            return Hit("host_denies_sender", f"address {shown[0]} denied")
        if domain in self.exact_domains:
            return Hit("host_denies_sender", f"domain @{shown[1]} denied")
        labels = domain.split(".")
        for i in range(len(labels)):
            if ".".join(labels[i:]) in self.domains:
                return Hit("host_denies_sender", f"domain {'.'.join(labels[i:])} denied")
        texts: tuple[str, ...] = (address,)
        if "xn--" in domain:
            texts += (f"{address.rpartition('@')[0]}@{domain_to_unicode(domain)}",)
        for pattern in self.patterns:
            if any(pattern.search(text) for text in texts):
                return Hit("host_denies_sender", f"pattern /{pattern.source}/")
        return None
