"""``sender_unvalidated``: the MAIL FROM domain cannot receive mail.

A domain can receive mail when it has MX records (RFC 5321 §5.1), or, without MX, an
address record that serves as the implicit MX (A or AAAA). It cannot when:

* the name does not exist (NXDOMAIN): permanent, a hit;
* it exists with no MX, A or AAAA record (all NODATA): a hit;
* its only MX is the null MX ``0 .`` (RFC 7505 §3: "this domain accepts no mail"): a
  hit, and RFC 7505 §4.2 says a sender domain with a null MX may be refused.

SERVFAIL or timeout, where they leave the answer open, give a temporary error; the
check's ``on_temp_error`` decides, and it is ``pass`` unless configured
(docs/replies.md, sender_unvalidated). A timeout of a lookup that waited for one of the
resolver's own slots (a flood of connections can fill them) is deferred whatever
``on_temp_error`` says: it says nothing of the domain, and would pass a forged one.

MX, A and AAAA are asked at once, so a slow server costs one round trip, not two. The
null sender, address literals and our own local domains are not looked up.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from smtpguard.checks import Event, Services, Stage
from smtpguard.dns import Answer, Status, share_network
from smtpguard.memo import Memo
from smtpguard.session import Connection
from smtpguard.verdict import Hit, TempError, Verdict


class SenderDomain:
    name: ClassVar[str] = "sender_domain"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("sender_unvalidated", "database_temp_error")

    def __init__(self, services: Services) -> None:
        self.site = services.config.site
        self.dns = services.dns
        self.memo: Memo[Verdict | None] = Memo(services.config.dns.verdict_ttl)

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if self.dns is None or txn is None or txn.sender is None or txn.sender.is_null:
            return None
        # A-labels: what DNS is asked, and one memo entry for both spellings.
        domain = txn.sender.domain_canonical
        if not domain or domain.startswith("[") or self.site.is_local(domain):
            return None
        found, memoized = self.memo.get(domain)
        if found:
            return memoized
        deadline = event.sender_deadline()
        # The waits of the sender checks before it that cut its time count as its own
        # (Event.sender_waits; review rev81 F1: after an spf_pass exemption's SPF that
        # waited past the stage, its plain timeout passed a domain without MX).
        taken = event.sender_waits()
        until = self.dns.wanted_until(deadline, taken)
        network = share_network(conn)
        futures = {
            t: self.dns.submit(domain, t, deadline=until, network=network)
            for t in ("MX", "A", "AAAA")
        }
        answers = {t: self.dns.collect(f, deadline, domain, t, taken) for t, f in futures.items()}
        event.sender_waited += max(answer.waited for answer in answers.values())
        verdict = judge(domain, answers["MX"], answers["A"], answers["AAAA"])
        if not isinstance(verdict, TempError):
            self.memo.put(domain, verdict, within=self.dns.left(*answers.values()))
            return verdict
        # Firm (deferred whatever on_temp_error says) only when a lookup the verdict
        # rests on never left this host for want of a slot (review rev122 F3: a busy
        # A lookup made an MX timeout firm, which the A answer could not change).
        used = ("MX",) if answers["MX"].status.temporary else ("MX", "A", "AAAA")
        busy = [t for t in used if answers[t].busy]
        if busy:
            return replace(
                verdict, firm=True, detail=f"{verdict.detail} ({'/'.join(busy)}: no slot to ask)"
            )
        return verdict


def judge(domain: str, mx: Answer, a: Answer, aaaa: Answer) -> Verdict | None:
    """The decision from the three answers (RFC 5321 §5.1, RFC 7505)."""
    if mx.status is Status.NXDOMAIN:
        return Hit("sender_unvalidated", f"{domain}: NXDOMAIN")
    if mx.ok:
        records = mx.mx()
        if records and all(exchange == "" for _pref, exchange in records):
            return Hit("sender_unvalidated", f"{domain}: null MX (RFC 7505)")
        return None
    if mx.status.temporary:
        return TempError("database_temp_error", f"{domain} MX: {mx.describe()}")
    # No MX: an address record is the implicit MX.
    if a.ok or aaaa.ok:
        return None
    temporary = [x for x in (a, aaaa) if x.status.temporary]
    if temporary:
        text = ", ".join(f"{x.rdtype} {x.describe()}" for x in temporary)
        return TempError("database_temp_error", f"{domain}: no MX, {text}")
    return Hit(
        "sender_unvalidated",
        f"{domain}: no MX, A or AAAA (MX {mx.describe()}, A {a.describe()},"
        f" AAAA {aaaa.describe()})",
    )
