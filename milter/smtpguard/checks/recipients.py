"""Recipient checks: count limit and the directory's view of local mailboxes."""

from __future__ import annotations

from typing import ClassVar

from smtpguard.address import Address, AddressError, parse_path, raw_parts, strip_extension
from smtpguard.checks import Event, Services, Stage
from smtpguard.config import DomainPolicy
from smtpguard.directory import DirectoryError, Kind
from smtpguard.session import Connection
from smtpguard.verdict import Hit, TempError, Verdict

# States in which mail must wait rather than bounce (450 4.2.1).
_TEMPORARY_STATES = frozenset({"suspended", "moving", "overquota"})


class RcptLimit:
    """``rcpt_limit``: the transaction already has ``limits.max_rcpt`` recipients, or
    this recipient's domain falls under a different content policy
    (``[domain."X"]``: languages, size limits, check modes, spam thresholds) than the
    recipients already accepted. One message is handled one way, so the client sends
    the rest in another transaction, which is what 451 4.5.3 asks of it (RFC 5321
    §4.5.3.1.10 for the count; the same answer serves the policy split). The count
    limit is the smallest ``max_rcpt`` of the transaction's recipients' tables.

    Not split: the site's own submission (``site.trusted_networks``, logged-in
    clients), whose mail program takes a refused recipient for a failed send, so a
    user could not write to colleagues of two domains at once (review rev153 F5).
    Such a message is judged under its recipients' tables combined at their
    strictest (:meth:`smtpguard.config.Config.combined_policy`): the first one's
    alone let a lax domain named first switch a strict domain's checks off for its
    copy (review rev154 F1)."""

    name: ClassVar[str] = "rcpt_limit"
    stage: ClassVar[Stage] = Stage.RCPT
    reply_ids: ClassVar[tuple[str, ...]] = ("rcpt_limit",)

    def __init__(self, services: Services) -> None:
        self.config = services.config
        self.limit = services.config.limits.max_rcpt
        self.global_policy = services.config.global_policy()

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is None:
            return None
        limit = self.limit
        if self.config.domains:
            # An unparsable recipient falls under the domain it names, as relay sees it.
            domain = event.rcpt.domain_lc if event.rcpt else raw_parts(event.rcpt_raw)[1]
            new = self._policy(domain)
            first = txn.recipient_domains
            current = self._policy(first[0]) if first else new
            if new.content != current.content and not conn.trusted:
                return Hit(
                    "rcpt_limit",
                    f"{event.rcpt.domain_lc if event.rcpt else event.rcpt_raw} falls under"
                    f" {_named(new)}, this transaction under {_named(current)}:"
                    " send it in another transaction",
                )
            # Every table of the transaction's recipients holds: the first one's alone
            # let a recipient without a table, named first, lift a domain's max_rcpt
            # (review rev69 F1).
            limit = min([new.max_rcpt, *(self._policy(d).max_rcpt for d in set(first))])
        if len(txn.recipient_domains) >= limit:
            return Hit("rcpt_limit", f"already {len(txn.recipient_domains)} recipients")
        return None

    def _policy(self, domain: str) -> DomainPolicy:
        return self.config.domain_policy(domain) or self.global_policy


def _named(policy: DomainPolicy) -> str:
    return f'[domain."{policy.domain}"]' if policy.domain else "the global policy"


class Mailbox:
    """``mailbox_unavailable``, ``mailbox_unavailable_temp``, ``user_locked``,
    ``private_list_denied``, ``database_temp_error`` for recipients in local domains.

    A syntactically invalid recipient in a local domain (or in none, which the MTA
    completes with one of ours) is answered ``mailbox_unavailable`` (5.1.1 is RFC
    3463's "bad destination mailbox address"). Elsewhere it is the relay check's and
    the next hop's to judge: Postfix accepts and delivers addresses such as
    ``taro.@docomo.ne.jp`` that RFC 5321 calls invalid.
    """

    name: ClassVar[str] = "mailbox"
    stage: ClassVar[Stage] = Stage.RCPT
    reply_ids: ClassVar[tuple[str, ...]] = (
        "mailbox_unavailable",
        "mailbox_unavailable_temp",
        "user_locked",
        "private_list_denied",
        "database_temp_error",
    )

    def __init__(self, services: Services) -> None:
        self.site = services.config.site
        self.delimiters = services.config.site.recipient_delimiter
        self.directory = services.directory
        self.enabled = services.config.directory.backend != "none"

    def _unparsed(self, event: Event) -> Address | Verdict | None:
        """A recipient the MTA let through that does not parse in this transaction: a
        foreign one is not ours to judge; a UTF-8 local part without SMTPUTF8 is the
        mailbox it names, not "no such mailbox" for a user who has one (review rev181
        F3); anything else is no mailbox here."""
        domain = raw_parts(event.rcpt_raw)[1]
        if domain and not self.site.is_local(domain):
            return None
        invalid = Hit("mailbox_unavailable", f"invalid recipient {event.rcpt_raw!r}")
        if event.rcpt_raw.isascii():
            return invalid  # <>, alice@@example.com: no SMTPUTF8 would make it one
        try:
            return parse_path(event.rcpt_raw, smtputf8=True)
        except AddressError:
            return invalid

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        rcpt = event.rcpt if event.rcpt is not None else self._unparsed(event)
        if not isinstance(rcpt, Address):
            return rcpt
        # The host's own name, even under a ".example.com" local entry, is the MTA's
        # local delivery (root@, aliases), which no directory lists.
        domain = rcpt.domain_lc
        if (
            not self.enabled
            or not domain
            or not self.site.is_local(domain)
            or self.site.is_host_only(domain)
        ):
            return None
        if rcpt.is_postmaster:
            # RFC 5321 §4.5.1: postmaster@ every domain we receive for exists, listed
            # in the directory or not (the MTA's aliases deliver it).
            return None
        # Looked up canonical ("alice"@ is alice@), shown as the client wrote it.
        address = rcpt.lc
        try:
            found = self.directory.recipient(rcpt.canonical)
            if found.kind is Kind.NONE:
                if self._postmaster_extension(rcpt.canonical_lc):
                    # Only when the whole address is nothing here: postmaster-team@
                    # may be a list or a locked user of its own.
                    return None
                return Hit("mailbox_unavailable", f"{address} unknown")
            # Asked about each list itself: all@ may be an alias of a members-only list
            # (or fan out to one), whose policy must not fall away by that.
            direct = found.kind is Kind.LIST
            lists = (
                ((found.list_address or rcpt.canonical, found.list_policy),)
                if direct
                else found.lists_reached
            )
            sender = conn.txn.sender if conn.txn is not None else None
            for list_address, policy in lists:
                if not self.directory.may_post(list_address, sender.canonical if sender else ""):
                    via = "" if direct else f", which reaches {list_address}"
                    return Hit(
                        "private_list_denied",
                        f"{(sender.lc if sender else '') or '<>'} may not post to {address}{via}"
                        f" ({policy})",
                    )
            if direct:
                return None
        except DirectoryError as exc:
            return TempError("database_temp_error", str(exc))
        if found.state == "locked":
            return Hit("user_locked", f"{address} is locked")
        if found.state in _TEMPORARY_STATES:
            return Hit("mailbox_unavailable_temp", f"{address} is {found.state}")
        return None

    def _postmaster_extension(self, key: str) -> bool:
        """postmaster+x@ is delivered to postmaster@ (Postfix splits it)."""
        bare = strip_extension(key, self.delimiters)
        return bare is not None and bare.rpartition("@")[0] == "postmaster"
