"""Operator policy around the checks: exemptions (``[[policy.exempt]]``, the postmaster
exemption, allow lists) decide which checks do not run for a session, a sender or a
recipient; per-domain policy (``[domain."X"]``) changes, for mail to a domain, the
modes of the checks that decide from RCPT on and the language of the replies (its
size limits, recipient limit and spam thresholds are read by those checks,
:func:`smtpguard.checks.domain_of`).

Per-domain policy is decided at RCPT from the recipient's domain. A stranger's
transaction keeps the policy of its first accepted recipient: a recipient whose domain
would be handled differently gets ``rcpt_limit`` (451 4.5.3, "send the rest in another
transaction"), see :class:`smtpguard.checks.recipients.RcptLimit`. The site's own
submission and a dry run are not split; their message is judged under its recipients'
tables combined at their strictest (:meth:`smtpguard.config.Config.combined_policy`).
Checks deciding at MAIL FROM or before cannot have per-domain modes (no recipient is
known yet): the loader refuses them.

What an exemption can never do (the loader refuses it): skip ``relay``,
``relay_local``, ``auth_*`` or ``sender_login``. An exemption is not trust: an exempted
client still cannot relay, and is still not authenticated.

When an exemption applies:

* client criteria (``ips``, ``ip_files``, ``host_suffixes``) from the connection on;
  a host name counts only forward-confirmed (FCrDNS by our own resolver, or the
  MTA's: Postfix's ``{client_name}``, which Postfix sets only when the name resolves
  back, Sendmail's with ``{client_resolve}`` OK);
* sender criteria from MAIL FROM on; a sender alone never counts (anyone can write any
  MAIL FROM): it needs a client match or an SPF ``pass`` for that sender;
* recipient criteria at RCPT for that recipient, and for the message (header, body,
  end of message) only when every accepted recipient is exempt from the check, by
  one exemption or by several together (postmaster@ by the built-in one, abuse@ by
  the site's: review rev216 M1, a complaint to both was refused for both).

A check that decides at MAIL FROM (DNSBL, PTR, SPF, ...) can only be skipped for a
recipient that is not known yet. When some exemption with recipient criteria would
skip such a check, its verdict is *held*: the MAIL FROM is accepted, and each RCPT
gets that verdict's reply unless the recipient is exempt from the check, as Postfix's
``smtpd_delay_reject`` does with its own restrictions.

Every skip is recorded, for the message's log line, in ``txn.scratch[SKIPPED]`` (or
``conn.scratch[SKIPPED]`` before MAIL FROM) as ``{"check": "exemption name"}``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from smtpguard.address import (
    Address,
    canonical_address,
    canonical_domain,
    raw_parts,
    strip_extension,
)
from smtpguard.checks import Event, Services, Stage, domain_of, settings_name
from smtpguard.checks.client_host import RDNS_KEY, ReverseDns, reverse_dns
from smtpguard.checks.spf import mailfrom, spf_helo, spf_query
from smtpguard.config import Config, ConfigError, DomainPolicy, Exemption
from smtpguard.dns import Pending, client_address, share_network
from smtpguard.memo import Memo
from smtpguard.replies import ReplyTable, load_replies
from smtpguard.session import Connection
from smtpguard.verdict import Verdict

log = logging.getLogger("smtpguard")

#: ``txn.scratch`` (or ``conn.scratch``) key: {check: exemption name} of skipped checks.
SKIPPED = "policy.skipped"
#: ``txn.scratch`` key: {check: recipients (canonical, lower case)} a skip at RCPT was
#: for, where an exemption by recipient spared some of them only.
SKIPPED_FOR = "policy.skipped_for"
#: ``txn.scratch`` key: [(check, verdict)] held at MAIL FROM until the recipients.
HELD = "policy.held"
HELD_REPORTS = "policy.held_reports"
_NAMES = "policy.confirmed_names"
#: The client's PTR names whose forward lookup failed temporarily (``conn.scratch``).
_UNKNOWN_NAMES = "policy.unknown_names"
_CONTENT_MODES = "policy.content_modes"
#: Whether each exemption (by index) applies to the transaction's content.
_CONTENT_APPLIES = "policy.content_applies"
#: Set when a lookup an exemption depends on failed temporarily (reverse DNS in
#: ``conn.scratch``, SPF in ``txn.scratch``): whether it applies is not known.
_UNSURE = "policy.unsure"
#: ``txn.scratch``: the SPF result an ``spf_pass`` exemption found.
_SPF_RESULT = "policy.spf_result"
_CONTENT = frozenset({Stage.HEADER, Stage.EOH, Stage.BODY, Stage.EOM})


def _lookup_failed(conn: Connection) -> bool:
    """Whether a lookup an exemption needs failed for now in this session or transaction."""
    return bool(conn.scratch.get(_UNSURE) or (conn.txn and conn.txn.scratch.get(_UNSURE)))


POSTMASTER = "postmaster"


def _under(name: str, suffixes: Iterable[str]) -> bool:
    """Whether host ``name`` is one of ``suffixes`` or below one."""
    return any(name == s or name.endswith("." + s) for s in suffixes)


def address_matches(address: Address, patterns: Sequence[str], delimiters: str = "") -> bool:
    """``user@example.net`` (exact), ``@example.net`` (that domain only),
    ``example.net`` (the domain and its subdomains). Both sides are compared
    canonical: ``"user"@example.net`` is ``user@example.net``, ``bücher.example`` is
    ``xn--bcher-kva.example``. With ``delimiters`` (``site.recipient_delimiter``),
    ``user+ext@example.net`` is also ``user@example.net``, as in Postfix's access(5)."""
    if address.is_null:
        return False
    text = address.canonical_lc
    domain = address.domain_canonical
    base: str | None = None
    for pattern in patterns:
        kind, value = canonical_pattern(pattern)
        if kind == "address":
            if text == value:
                return True
            if delimiters:
                if base is None:
                    base = strip_extension(text, delimiters) or ""
                if base == value:
                    return True
        elif kind == "domain":
            if domain == value:
                return True
        elif domain == value or domain.endswith("." + value):
            return True
    return False


@functools.lru_cache(maxsize=1024)
def canonical_pattern(pattern: str) -> tuple[str, str]:
    """An exemption's sender or recipient entry as ``address_matches`` compares it:
    (``address``, canonical lower-cased address), (``domain``, canonical domain) for
    ``@domain``, or (``subdomains``, canonical domain)."""
    if "@" in pattern and not pattern.startswith("@"):
        return "address", canonical_address(pattern).lower()
    if pattern.startswith("@"):
        return "domain", canonical_domain(pattern[1:])
    return "subdomains", canonical_domain(pattern)


#: Stages from which the recipient's domain is known.
DOMAIN_STAGES = frozenset({Stage.RCPT, *_CONTENT})


class Policy:
    def __init__(self, services: Services, checks: Sequence[tuple[str, Stage]] = ()) -> None:
        """``checks``: every check's name and stage (the pipeline's list)."""
        config: Config = services.config
        check_stages: dict[str, set[Stage]] = {}
        for check_name, check_stage in checks:
            check_stages.setdefault(settings_name(check_name), set()).add(check_stage)
        self.config = config
        self.domain_modes: dict[str, dict[str, str]] = {}
        # By each table's name as written (what the pipeline looks tables up by); the
        # config keys them canonical.
        for domain in config.domains.values():
            name = domain.domain
            self.domain_modes[name] = dict(domain.checks)
            for check, _mode in domain.checks:
                stages = check_stages.get(check, set())
                if stages and not stages <= DOMAIN_STAGES:
                    raise ConfigError(
                        config.file,
                        f'domain."{name}".checks.{check}.mode',
                        "decided at MAIL FROM or before, when no recipient is known:"
                        " per-domain modes apply to checks deciding from RCPT on",
                    )
        self.site = config.site
        self.dns = services.dns
        exemptions = list(config.policy.exempt)
        if config.policy.postmaster_skip and config.site.local_domains:
            # RFC 5321 §4.5.1: mail to postmaster must get through.
            exemptions.append(
                Exemption(
                    name=POSTMASTER,
                    skip=config.policy.postmaster_skip,
                    recipients=(POSTMASTER,),
                )
            )
        self.exemptions = tuple(exemptions)
        self.active = bool(self.exemptions) or bool(config.domains)
        #: Checks that some exemption with recipient criteria may skip (their MAIL FROM
        #: verdicts are held, see the module docstring).
        self.holdable = frozenset(
            name for ex in self.exemptions if ex.recipients for name in ex.skip
        )
        #: For the message: by check, the exemptions with recipient criteria that skip
        #: it, where there are several (together they may cover every recipient).
        by_check: dict[str, list[Exemption]] = {}
        for ex in self.exemptions:
            for name in ex.skip if ex.recipients else ():
                by_check.setdefault(name, []).append(ex)
        self.together = {name: tuple(exs) for name, exs in by_check.items() if len(exs) > 1}
        #: Checks any exemption may skip: the others never need the matching at all.
        self.skippable = frozenset(name for ex in self.exemptions for name in ex.skip)
        overridden = {name for modes in self.domain_modes.values() for name in modes}
        #: Full check names whose mode this policy may change (the pipeline asks
        #: :meth:`effective` for these only).
        self.relevant = frozenset(
            name for name, _stage in checks if settings_name(name) in self.skippable | overridden
        )
        #: Exemptions by client address alone (they also spare the connect-time lookups).
        self.client_only = tuple(
            ex
            for ex in self.exemptions
            if ex.networks and not (ex.senders or ex.recipients or ex.host_suffixes)
        )
        self.spf_memo: Memo[str] = Memo(config.dns.verdict_ttl)
        hostnames = sorted(config.site.our_hostnames)
        self.receiver = hostnames[0] if hostnames else "unknown"

    # --- matching ---------------------------------------------------------------

    def _client(self, ex: Exemption, conn: Connection, event: Event) -> bool:
        if not ex.matches_client:
            return True
        if (
            ex.networks
            and conn.client_ip is not None
            and client_address(conn.client_ip) in ex.networks
        ):
            return True
        if ex.host_suffixes:
            for name in self._confirmed_names(conn, event):
                if _under(name, ex.host_suffixes):
                    return True
            unknown: tuple[str, ...] = conn.scratch.get(_UNKNOWN_NAMES, ())
            if any(_under(name, ex.host_suffixes) for name in unknown):
                # One of the client's names is the exemption's but its forward lookup
                # failed: undecided, not "no" (review rev110 F2), whatever other name
                # of the client resolved.
                conn.scratch[_UNSURE] = True
        return False

    def _confirmed_names(self, conn: Connection, event: Event) -> tuple[str, ...]:
        known: tuple[str, ...] | None = conn.scratch.get(_NAMES)
        if known is not None:
            return known
        names: tuple[str, ...] = ()
        if self.dns is not None and conn.client_ip is not None:
            future: Pending[ReverseDns] | None = conn.scratch.get(RDNS_KEY)
            if future is None:
                ip = client_address(conn.client_ip)
                future = conn.scratch[RDNS_KEY] = conn.background(
                    self.dns.spawn(reverse_dns(self.dns, ip, share_network(conn)))
                )
            # The client's own names: half of MAIL FROM's stage at most, as the
            # client_host check's (they may never answer; review rev60).
            rdns = self.dns.wait(future, event.client_deadline())
            names = rdns.confirmed if rdns is not None else ()
            if not names and (rdns is None or rdns.temporary):
                # Undecided, not "no": a verdict this exemption could skip must not
                # be a permanent one (the pipeline makes it a temporary failure).
                conn.scratch[_UNSURE] = True
                return ()
            # A lookup that missed one stage's deadline may answer by the next:
            # decided now, for the rest of the connection.
            conn.scratch.pop(_UNSURE, None)
            if rdns is not None and rdns.unknown:
                conn.scratch[_UNKNOWN_NAMES] = tuple(canonical_domain(n) for n in rdns.unknown)
        elif conn.client_name_confirmed:
            names = (conn.client_name,)
        elif conn.client_name_unsure:
            # The MTA's lookup failed temporarily: undecided, as a failed one of ours.
            conn.scratch[_UNSURE] = True
        names = tuple(canonical_domain(n) for n in names)
        conn.scratch[_NAMES] = names
        return names

    def _sender(self, ex: Exemption, conn: Connection) -> bool:
        """Whether ``ex``'s senders (if it names any) include this transaction's."""
        if not ex.senders:
            return True
        txn = conn.txn
        if txn is None or txn.sender is None:
            return False
        return address_matches(txn.sender, ex.senders, self.site.recipient_delimiter)

    def _client_and_sender(self, ex: Exemption, conn: Connection, event: Event) -> bool:
        # The sender's address first: it costs no lookup, and a lookup that fails
        # temporarily marks the session undecided (_UNSURE) only for an exemption that
        # could otherwise apply.
        if not self._sender(ex, conn):
            return False
        if not self._client(ex, conn, event):
            return False
        return not (ex.senders and ex.spf_pass) or self._spf(conn, event) == "pass"

    def _spf(self, conn: Connection, event: Event) -> str:
        txn = conn.txn
        if self.dns is None or txn is None or txn.sender is None or conn.client_ip is None:
            return "none"
        # The sender as the spf check asks (review rev69 F5: "boss@good.test." got
        # "none", and the exemption's spf_pass never held for it).
        helo = spf_helo(conn)
        key = (conn.client_ip, mailfrom(txn.sender).lower(), helo.lower())
        found, known = self.spf_memo.get(key)
        if found and known is not None:
            return known
        # Asked once per transaction, whatever the memo may keep: each exemption and
        # check it may skip asks again, and with records of TTL 0 each evaluation took
        # the time of its lookups again (the spf check's own ran out).
        answered: str | None = txn.scratch.get(_SPF_RESULT)
        if answered is not None:
            return answered
        # As the spf check's deadline: the client's own names cannot shorten it (review
        # rev59).
        query = spf_query(self.dns, event, conn, txn.sender, helo=helo, receiver=self.receiver)
        result = str(query.check()[0])
        query.add_waits_to(event)
        if result != "temperror":
            txn.scratch[_SPF_RESULT] = result
            self.spf_memo.put(key, result, within=self.dns.left(expires=query.expires))
        else:
            txn.scratch[_UNSURE] = True
        return result

    def _recipient(self, ex: Exemption, rcpt: Address) -> bool:
        if rcpt.is_null:
            return False
        if ex.name == POSTMASTER and ex.recipients == (POSTMASTER,):
            # RCPT TO:<postmaster> without a domain is ours too (RFC 5321 §4.5.1), and
            # so is postmaster@ our host name, the one in the banner and in bounces
            # (review rev153 F2: refused there, exempt at the local domains).
            domain = rcpt.domain or ""
            return rcpt.is_postmaster and (not domain or self.site.is_ours(domain))
        return address_matches(rcpt, ex.recipients, self.site.recipient_delimiter)

    def _applies(self, ex: Exemption, conn: Connection, stage: Stage, event: Event) -> bool:
        if ex.senders and stage in (Stage.CONNECT, Stage.HELO):
            return False
        rcpt = event.rcpt if stage is Stage.RCPT else None
        if not self._covers(ex, conn, rcpt, stage):
            return False
        return self._client_and_sender(ex, conn, event)

    # --- what the pipeline asks -------------------------------------------------

    def exempt(self, conn: Connection, check: str, stage: Stage, event: Event) -> str | None:
        """The name of the exemption that skips ``check`` here, recorded; or None."""
        name = settings_name(check)
        if name not in self.skippable:
            return None
        found = self._first(conn, name, stage, event)
        if found is not None:
            self._record(conn, check, found)
            if stage is Stage.RCPT and event.rcpt is not None and conn.txn is not None:
                # The summary line says how many of the recipients it was (review
                # rev216 L3: in report mode the others are accepted too).
                spared = conn.txn.scratch.setdefault(SKIPPED_FOR, {})
                spared.setdefault(check, set()).add(event.rcpt.canonical_lc)
        return found

    def _first(self, conn: Connection, name: str, stage: Stage, event: Event) -> str | None:
        txn = conn.txn
        # From the headers on, whether an exemption applies no longer depends on the
        # stage or the check (the recipients are known): judged once per transaction
        # for all the content checks it skips.
        known: dict[int, bool] | None = None
        if stage in _CONTENT and txn is not None:
            known = txn.scratch.setdefault(_CONTENT_APPLIES, {})
        for index, ex in enumerate(self.exemptions):
            if name not in ex.skip:
                continue
            applies = known.get(index) if known is not None else None
            if applies is None:
                applies = self._applies(ex, conn, stage, event)
                if known is not None:
                    known[index] = applies
            if applies:
                return ex.name
        if known is not None and name in self.together:
            return self._together(conn, name, event)
        return None

    def _together(self, conn: Connection, name: str, event: Event) -> str | None:
        """For the message: the exemptions (joined by "+") that skip ``name`` for some
        recipients each and together for every one, or None."""
        txn = conn.txn
        if txn is None or not txn.recipients or txn.unparsed_recipients:
            return None
        used: list[str] = []
        left = list(txn.recipients)
        for ex in self.together[name]:
            rest = [r for r in left if not self._recipient(ex, r)]
            if len(rest) == len(left) or not self._client_and_sender(ex, conn, event):
                continue
            used.append(ex.name)
            left = rest
            if not left:
                return "+".join(used)
        return None

    def hold(
        self, conn: Connection, check: str, verdict: Verdict, event: Event, *, report: bool = False
    ) -> bool:
        """Keep a MAIL FROM verdict for the recipients, when one of them could be
        exempt from it; True when held. ``report``: a report-only verdict, kept to be
        reported for each recipient not exempt from it (:meth:`held_reports`)."""
        txn = conn.txn
        if txn is None or settings_name(check) not in self.holdable:
            return False
        name = settings_name(check)
        # Held also for an exemption whose client lookup failed (review rev201 F1):
        # each RCPT then answers for itself, a temporary failure for the exemption's
        # recipients and the refusal as it is for the others, instead of a 4xx to the
        # whole transaction.
        if not any(
            ex.recipients
            and name in ex.skip
            and (self._client_and_sender(ex, conn, event) or self._undecided(ex, conn))
            for ex in self.exemptions
        ):
            return False
        txn.scratch.setdefault(HELD_REPORTS if report else HELD, []).append((check, verdict))
        return True

    def held_reports(self, conn: Connection, event: Event) -> list[tuple[str, Verdict]]:
        """At RCPT: the held report-only verdicts this recipient is not exempt from."""
        return list(self._not_exempt(conn, event, HELD_REPORTS))

    def held(self, conn: Connection, event: Event) -> tuple[str, Verdict] | None:
        """At RCPT: the first held verdict this recipient is not exempt from."""
        return next(self._not_exempt(conn, event, HELD), None)

    def _not_exempt(
        self, conn: Connection, event: Event, key: str
    ) -> Iterator[tuple[str, Verdict]]:
        txn = conn.txn
        held: list[tuple[str, Verdict]] = txn.scratch.get(key, []) if txn else []
        for check, verdict in held:
            if self.exempt(conn, check, Stage.RCPT, event) is None:
                yield check, verdict

    def unsure(
        self,
        conn: Connection,
        check: str,
        rcpt: Address | None = None,
        *,
        stage: Stage | None = None,
    ) -> bool:
        """Whether an exemption that skips ``check`` could not be decided because a
        lookup it needs (forward-confirmed reverse DNS, SPF) failed temporarily: a
        verdict of ``check`` is then answered as a temporary failure, never a
        permanent refusal the exemption might have spared. ``rcpt``: the recipient the
        verdict is answered for (only its exemptions count); at a content ``stage``
        only exemptions that name every recipient of the message count, as they
        would if decided (review rev201 F1: one for another recipient made a 4xx of
        a refusal it could never have spared)."""
        if not _lookup_failed(conn):
            return False
        name = settings_name(check)
        if any(
            name in ex.skip and self._undecided(ex, conn) and self._covers(ex, conn, rcpt, stage)
            for ex in self.exemptions
        ):
            return True
        return rcpt is None and stage in _CONTENT and self._unsure_together(conn, name)

    def _unsure_together(self, conn: Connection, name: str) -> bool:
        """For the message: whether an undecided exemption for some recipients, with
        the others that skip ``name`` and may apply for the rest, may have covered
        every recipient (:meth:`_together`). One that cannot apply (a sender or
        client address it does not name, an SPF result that is no pass) counts for
        nobody: the refusal is then certain (review rev220 L1)."""
        txn = conn.txn
        if txn is None or not txn.recipients or txn.unparsed_recipients:
            return False
        candidates = [ex for ex in self.together.get(name, ()) if not self._ruled_out(ex, conn)]
        if not any(self._undecided(ex, conn) for ex in candidates):
            return False
        return all(any(self._recipient(ex, r) for ex in candidates) for r in txn.recipients)

    def _ruled_out(self, ex: Exemption, conn: Connection) -> bool:
        """Whether ``ex`` cannot apply to this transaction, by what is known without a
        lookup: its senders, its networks (where it names no host), an SPF result
        that is no pass."""
        txn = conn.txn
        if not self._sender(ex, conn):
            return True
        if ex.matches_client and not ex.host_suffixes:
            ip = conn.client_ip
            if ip is None or client_address(ip) not in ex.networks:
                return True
        spf = txn.scratch.get(_SPF_RESULT) if txn is not None else None
        return bool(ex.senders and ex.spf_pass and spf is not None and spf != "pass")

    def _undecided(self, ex: Exemption, conn: Connection) -> bool:
        """Whether a lookup ``ex`` needs failed for now. The failed lookup is the
        connection's; an exemption for other senders than this transaction's cannot
        apply whatever it would have said."""
        return (
            bool(ex.host_suffixes or ex.spf_pass)
            and _lookup_failed(conn)
            and self._sender(ex, conn)
        )

    def _covers(
        self, ex: Exemption, conn: Connection, rcpt: Address | None, stage: Stage | None
    ) -> bool:
        """Whether ``ex``'s recipients (if it names any) are the verdict's: ``rcpt``,
        the recipient it is answered for; at a content stage every recipient of the
        message; before the recipients are known, none. Such a verdict is held for
        each RCPT (:meth:`hold`), which answers for its own recipient (review rev208
        M1: after a lookup failed earlier in the session, the held verdict was a 4xx
        already, for every recipient)."""
        if not ex.recipients:
            return True
        if rcpt is not None:
            return self._recipient(ex, rcpt)
        if stage not in _CONTENT:
            return False
        txn = conn.txn
        return (
            txn is not None
            and bool(txn.recipients)
            and not txn.unparsed_recipients
            and all(self._recipient(ex, r) for r in txn.recipients)
        )

    def skips_client(self, conn: Connection, check: str) -> bool:
        """Whether an exemption by client IP alone skips ``check`` for the whole
        session (so its connect-time lookups need not start)."""
        ip = conn.client_ip
        if not self.client_only or ip is None:
            return False
        name = settings_name(check)
        return any(name in ex.skip and client_address(ip) in ex.networks for ex in self.client_only)

    def effective(self, conn: Connection, check: str, stage: Stage, event: Event, mode: str) -> str:
        """``check``'s mode here: "off" when an exemption skips it, else the domain's
        mode for it, else ``mode`` (the global one)."""
        txn = conn.txn
        if stage in _CONTENT and txn is not None:
            # The recipients no longer change: judge once per transaction, not for
            # every header and body chunk.
            known: dict[str, str] | None = txn.scratch.get(_CONTENT_MODES)
            if known is None:
                known = txn.scratch[_CONTENT_MODES] = {}
            found = known.get(check)
            if found is None:
                found = known[check] = self._effective(conn, check, stage, event, mode)
            return found
        return self._effective(conn, check, stage, event, mode)

    def _effective(
        self, conn: Connection, check: str, stage: Stage, event: Event, mode: str
    ) -> str:
        if self.exempt(conn, check, stage, event):
            return "off"
        if not self.config.domains:
            return mode  # what mode() answers without [domain."X"] tables, one call less
        return self.mode(conn, check, stage, event, mode)

    @staticmethod
    def why(conn: Connection, check: str) -> str:
        """Why ``check`` did not run (for ``simulate``'s trace)."""
        scratch = conn.txn.scratch if conn.txn is not None else conn.scratch
        exemption = scratch.get(SKIPPED, {}).get(check)
        return f"exempt: {exemption}" if exemption else "off for this domain"

    # --- per-domain policy -------------------------------------------------------

    def domain(self, conn: Connection, stage: Stage, event: Event) -> DomainPolicy | None:
        """The domain table that applies here: at RCPT the recipient's, later the
        transaction's (:func:`smtpguard.checks.domain_of`); None before RCPT or without
        a table."""
        if not self.config.domains or stage not in DOMAIN_STAGES:
            return None
        if stage is Stage.RCPT:
            # An unparsable recipient falls under the domain it names, as relay sees it.
            rcpt = event.rcpt
            return self.config.domain_policy(
                rcpt.domain_lc if rcpt else raw_parts(event.rcpt_raw)[1]
            )
        return domain_of(self.config, conn.txn)

    def mode(self, conn: Connection, check: str, stage: Stage, event: Event, mode: str) -> str:
        """``check``'s mode for this recipient or message (``mode``: the global one)."""
        domain = self.domain(conn, stage, event)
        if domain is None:
            return mode
        modes = self.domain_modes.get(domain.domain)
        if modes is None:
            # Tables combined for a transaction to several (Config.combined_policy).
            modes = dict(domain.checks)
        override = modes.get(settings_name(check))
        if override is None:
            return mode
        if self.config.milter.dry_run and override != "off":
            return "report"
        return override

    def reply_tables(self, table: ReplyTable) -> dict[tuple[tuple[str, ...], str], ReplyTable]:
        """The reply tables of the domains whose languages or form differ from the
        global ones, by (languages, form), each validated like the global one (every
        language in every row)."""
        out: dict[tuple[tuple[str, ...], str], ReplyTable] = {}
        replies = self.config.replies
        for domain in self.config.domains.values():
            key = (domain.languages, domain.form)
            if key == (replies.languages, replies.form) or key in out:
                continue
            policy = dataclasses.replace(replies, languages=domain.languages, form=domain.form)
            try:
                out[key] = load_replies(policy, self.config.file)
            except ConfigError as exc:
                # The config's own file and key (replies.languages) would read as if
                # that key were wrong (review rev156 F6); the table's are worth naming.
                ours = Path(exc.file) == Path(self.config.file)
                raise ConfigError(
                    self.config.file,
                    f'domain."{domain.domain}".languages',
                    exc.message if ours else f"{exc.file}: {exc.key}: {exc.message}",
                ) from None
        return out

    @staticmethod
    def _record(conn: Connection, check: str, exemption: str) -> None:
        scratch = conn.txn.scratch if conn.txn is not None else conn.scratch
        skipped: dict[str, str] = scratch.setdefault(SKIPPED, {})
        if check not in skipped:
            skipped[check] = exemption
            log.debug("policy sid=%s check=%s skipped by %s", conn.session_id, check, exemption)
