"""Relay policy: who may use us to reach which domains."""

from __future__ import annotations

from typing import ClassVar

from smtpguard.address import implied_domains, raw_parts
from smtpguard.checks import Event, Services, Stage
from smtpguard.session import Connection
from smtpguard.verdict import Hit, Verdict


class RelayLocal:
    """``relay_local_fail``: our own domain in MAIL FROM from an untrusted client.

    Ours: a local domain or one of the host's own names (Postfix's ``myorigin`` is
    ``$myhostname`` by default: root@ the host is the host's own mail; review rev65 F5).
    A sender that does not parse is ours when the MTA may make it one of ours
    (:func:`~smtpguard.address.implied_domains`): the syntax check may be in report
    mode, off or exempted, and this check may never be (review rev65 F1)."""

    name: ClassVar[str] = "relay_local"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("relay_local_fail",)

    def __init__(self, services: Services) -> None:
        self.site = services.config.site

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is None or conn.trusted:
            return None
        sender = txn.sender
        if sender is None:
            if any(not d or self.site.is_ours(d) for d in implied_domains(txn.sender_raw)):
                return Hit(
                    "relay_local_fail",
                    f"sender {txn.sender_raw!r} (unparsable, the MTA may make it ours)"
                    " not authenticated",
                )
            return None
        if not sender.is_null and self.site.is_ours(sender.domain_lc):
            return Hit("relay_local_fail", f"local sender {sender.text} not authenticated")
        return None


#: Characters by which a local part names another destination (RFC 1123 5.2.16,
#: UUCP bang paths, a quoted "user@host").
_ROUTED = frozenset("%!@")


class Relay:
    """``host_denies_relay`` and ``relay_domain_fail`` at RCPT."""

    name: ClassVar[str] = "relay"
    stage: ClassVar[Stage] = Stage.RCPT
    reply_ids: ClassVar[tuple[str, ...]] = ("host_denies_relay", "relay_domain_fail")

    def __init__(self, services: Services) -> None:
        self.site = services.config.site

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        rcpt = event.rcpt
        txn = conn.txn
        if txn is None:
            return None
        # A recipient that does not parse is judged by the domain it names, so that
        # relay control never depends on the mailbox check refusing it (that check
        # may be in report mode or off).
        if rcpt is not None:
            local, domain, written = rcpt.local, rcpt.domain_lc, rcpt.domain
        else:
            local, domain = raw_parts(event.rcpt_raw)
            written = domain
        # Postfix routes by the local part too (allow_percent_hack, swap_bangpath,
        # resolve_dequoted_address): "victim%gmail.example@example.com" and a bare
        # "victim%gmail.example" are delivered to victim@gmail.example. Such a
        # recipient is relaying whatever its domain; only the mailbox check refused
        # it, and with that off or in report mode it relayed.
        # A domain with other characters than ASCII is ours only as the config writes
        # it: the MTA routes any other spelling as foreign mail (review rev116 F1).
        respelled = not self.site.routes_as_ours(written) and (
            self.site.is_ours(domain) or self.site.is_relay(domain)
        )
        routed = not _ROUTED.isdisjoint(local) or respelled
        if not routed and domain and self.site.is_host_only(domain):
            # The host's own name is the MTA's local mail too (Postfix's mydestination
            # has $myhostname, Sendmail's class w $j), for its own programs and users.
            # From outside: postmaster@ it (RFC 5321 §4.5.1) and bounces (a null
            # sender: the host's own mail may come back). No directory knows root@ the
            # host, and any other name would be accepted, then bounced. Decided before
            # a ".example.com" local or relay entry that covers the name.
            postmaster = rcpt.is_postmaster if rcpt is not None else local.lower() == "postmaster"
            bounce = txn.sender is not None and txn.sender.is_null
            if conn.trusted or postmaster or bounce:
                return None
        elif not routed and (
            # A bare <postmaster> (RFC 5321 §4.5.1) is always ours, and the MTA takes
            # any address without a domain for one of its own; not one whose "@" only
            # our reading of it lost (review rev71 R1: a quoted "(" read as a comment
            # left "\"(victim\"@gmail.example(x)" without a domain, and it relayed).
            (not domain and "@" not in event.rcpt_raw)
            or self.site.is_local(domain)
            or self.site.is_relay(domain)
        ):
            return None
        where = _where(event.rcpt_raw, domain, written, routed=routed, respelled=respelled)
        if not conn.trusted:
            return Hit("host_denies_relay", f"relay {where} from untrusted client")
        sender = txn.sender
        if sender is None:
            # As the MTA may make it (review rev65 F1: <victim%foreign.example> was
            # delivered as victim@foreign.example).
            implied = implied_domains(txn.sender_raw)
            foreign = sorted(d for d in implied if d and not self.site.is_ours(d))
            if foreign:
                raw = txn.sender_raw
                why = f"unparsable, may be of {foreign[0]}"
                return Hit("relay_domain_fail", f"relay {where} for sender {raw!r} ({why})")
        elif not sender.is_null and not self.site.is_ours(sender.domain_lc):
            return Hit("relay_domain_fail", f"relay {where} for foreign sender {sender.text}")
        return None


def _where(raw: str, domain: str, written: str, *, routed: bool, respelled: bool) -> str:
    """Where a refused relay goes, for the log."""
    if respelled:
        return f"to {written} (not spelled as site lists a domain of ours)"
    if routed:
        return f"through the local part of {raw!r}"
    return f"to {domain}"
