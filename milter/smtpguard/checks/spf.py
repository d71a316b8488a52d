"""``remote_ip_mismatch``: SPF (RFC 7208) says the client may not send for the domain.

The identity is the MAIL FROM domain, or for the null sender ``<>`` the HELO name
(RFC 7208 §2.4: ``postmaster@<helo>``); a null sender with an address literal or no
HELO has no identity to check (§2.3) and passes. Results:

* ``fail``: a hit; ``softfail``: a hit only with ``[spf] reject_softfail = true``
  (§8.5: softfail is "probably not authorized", a weaker statement);
* ``temperror`` (a lookup failed, §8.6): a temporary error, which the check's
  ``on_temp_error`` (default ``pass``) decides; a result that would be refused
  (``fail``, or ``softfail`` with ``reject_softfail``) after a failed lookup for
  ``ptr`` or ``%{p}`` (which §5.5 takes for "no match") is deferred
  whatever ``on_temp_error`` says: a DNS fault on the client's reverse zone is no reason
  for a permanent refusal, and the client, who answers for that zone, must not pass
  by it;
* ``permerror`` (the domain's record is broken, §8.7), ``none``, ``neutral``, ``pass``:
  no objection; a permerror is logged for the operator.

Trusted clients (``trusted_networks`` or authenticated) are never checked: a submission
server relays for its users whatever their domains publish.

The evaluation is pyspf's, the Python reference implementation of RFC 7208 (it runs the
RFC 7208 test suite; so do our tests, through the subclass below). Its DNS goes through
the shared resolver and its cache: :class:`SpfQuery` overrides ``query.dns``, no library
global is touched. Each lookup waits at most until the deadline of the checks of the
sender's domain (:meth:`~smtpguard.checks.Event.sender_deadline`: the stage's, or a
whole stage from the first of them if that is later).
"""

from __future__ import annotations

import logging
import math
import re
import urllib.parse
from functools import reduce
from typing import Any, ClassVar

import spf  # type: ignore[import-untyped]  # pyspf ships no type information

from smtpguard.address import Address, canonical_local_part, is_helo_fqdn
from smtpguard.checks import Event, Services, Stage
from smtpguard.dns import Answer, Resolver, Status, client_address, share_network
from smtpguard.logsetup import kv
from smtpguard.memo import Memo
from smtpguard.resultheaders import record_spf
from smtpguard.session import Connection, Transaction
from smtpguard.verdict import Hit, TempError, Verdict

log = logging.getLogger("smtpguard")

#: Record types pyspf asks for and how its own dnspython driver shapes their values.
_SHAPES = {"A", "AAAA", "MX", "PTR", "TXT", "SPF"}
#: The macro letters of RFC 7208 §7.2, each an attribute of pyspf's query.
_MACRO_LETTERS = frozenset("slodiphcrtv")
#: §7.3: an expansion longer than this loses its left-hand labels.
MAX_NAME = 253
#: The longest explanation (exp=) kept; RFC 7208 §6.2 has it for an SMTP reply line.
MAX_EXPLANATION = 512


class SpfQuery(spf.query):  # type: ignore[misc]  # pyspf's classes are untyped
    """pyspf's evaluator, asking DNS through :class:`~smtpguard.dns.Resolver`."""

    def __init__(
        self,
        resolver: Resolver,
        deadline: float | None,
        *args: Any,
        network: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.resolver = resolver
        self.deadline = deadline
        #: The client's network, whose lookups hold a share of the resolver's slots.
        self.network = network
        #: A PTR or A/AAAA lookup for ``ptr`` or ``%{p}`` failed for the moment.
        self.ptr_temperror = False
        #: A lookup timed out because this host queued it or the lookups before it
        #: (Answer.busy, Resolver.missed).
        self.busy = False
        #: Seconds this evaluation's lookups waited for the resolver's slots, from
        #: ``taken_over`` (Event.sender_waits).
        self.taken_over = 0.0
        self.waited = 0.0
        #: When the first answer this evaluation read leaves the resolver's cache: its
        #: result may be remembered no longer (Answer.expires).
        self.expires = math.inf

    def add_waits_to(self, event: Event) -> None:
        """After :meth:`check`: count this evaluation's own waits in ``event``."""
        event.sender_waited += self.waited - self.taken_over

    def expand(self, s: str, stripdot: bool = True) -> str:
        """pyspf's macro expansion (§7.3), but for the joiner: "the parts are rejoined
        using "." and not the original splitting characters" for every macro letter,
        where pyspf does so for ``l`` and ``s`` only (review rev112 F2: ``%{h-}`` asked
        for the wrong name, and a domain's own mail was refused)."""
        end, out, size = 0, [], 0
        for found in spf.RE_CHAR.finditer(s):
            out.append(_literal(s[end : found.start()], s))
            macro = found.group()
            end = found.end()
            if macro == "%%":
                out.append("%")
            elif macro == "%_":
                out.append(" ")
            elif macro == "%-":
                out.append("%20")
            else:
                out.append(self._macro(macro, stripdot))
            size += len(out[-2]) + len(out[-1])
            if not stripdot and size > MAX_EXPLANATION:
                break  # the rest would be cut below
        else:
            out.append(_literal(s[end:], s))
        result = "".join(out)
        if not stripdot:
            # exp= text: no domain name, not cut as one; but the log's detail and the
            # verdict memo keep it (review rev117 F1: megabytes a message from
            # thousands of %{s} in a record its domain chooses).
            return result[:MAX_EXPLANATION]
        if result.endswith("."):
            result = result[:-1]
        if len(result) > MAX_NAME and "." in result:
            # §7.3: left-hand labels are dropped until the name fits (pyspf drops one),
            # in one cut (review rev115 F2: label by label was quadratic in a record's
            # size, which its domain chooses).
            cut = result.find(".", len(result) - MAX_NAME - 1)
            result = result[(cut if cut >= 0 else result.rindex(".")) + 1 :]
        return result

    def _macro(self, macro: str, stripdot: bool) -> str:
        if not _MACRO.fullmatch(macro):
            # §7.1: digits (not zero), "r", then delimiters only; pyspf skipped the
            # rest, and a domain with a broken record was refused (review rev183 F2).
            raise spf.PermError("invalid macro", macro)
        letter = macro[2].lower()
        if letter == "p":
            self.getp()
        elif letter in "crt" and stripdot:
            raise spf.PermError("c,r,t macros allowed in exp= text only", macro)
        if letter not in _MACRO_LETTERS:
            raise spf.PermError("Unknown Macro Encountered", macro)
        value = getattr(self, letter, None)
        if not value:
            return ""
        expanded: str = spf.expand_one(value, _transformers(macro[3:-1]), ".")
        # An upper-case letter: URL-escaped (§7.3).
        return urllib.parse.quote(expanded, "~") if letter != macro[2] else expanded

    def get_explanation(self, spec: str) -> Any:
        """The exp= text, whose %{p} may look up PTR records too: a failure there says
        nothing about the verdict (rev45)."""
        before = self.ptr_temperror
        try:
            return super().get_explanation(spec)
        finally:
            self.ptr_temperror = before

    def validated_ptrs(self) -> list[str]:
        """RFC 7208 §5.5 (the ``ptr`` mechanism, and the ``p`` macro of §7.3): a DNS
        error on the PTR lookup means no match, and a DNS error on the A/AAAA lookup of
        one name skips that name. pyspf's own driver never sees such errors (it turns
        a CNAME loop into "no data"), but a real resolver answers SERVFAIL."""
        if self.strict > 1:
            # Harsh mode's extra warnings are pyspf's own business.
            return list(super().validated_ptrs())
        limit = spf.MAX_PTR if self.strict else spf.MAX_PTR * 4
        try:
            names = self.dns_ptr(self.i)[:limit]
        except spf.TempError:
            self.ptr_temperror = True
            return []
        except _Unread:
            return []  # the client's reverse zone, not the domain's error: no match
        out = []
        for name in names:
            try:
                addresses = self._term_addresses(name)
            except spf.TempError:
                self.ptr_temperror = True
                continue
            except _Unread:
                continue
            if self.cidrmatch(addresses, self.cidrmax):
                out.append(name)
        return out

    def dns_mx(self, domainname: str) -> list[Any]:
        """pyspf's, but the exchanges' addresses are looked up as part of the ``mx``
        term (see :meth:`_term_addresses`)."""
        if self.strict > 1:
            return list(super().dns_mx(domainname))
        names = self.dns(domainname, "MX")
        limit = spf.MAX_MX if self.strict else spf.MAX_MX * 4
        if self.strict and len(names) > limit:
            raise spf.PermError(f"More than {limit} MX records returned")
        names.sort()
        return [a for mx in names[:limit] for a in self._term_addresses(mx[1])]

    def _term_addresses(self, name: str) -> list[Any]:
        """The addresses of an MX exchange or a PTR name: lookups of the term that
        found them, so no void lookups of their own (RFC 7208 §4.6.4 limits the terms
        whose queries come back empty; review rev183 F1: an IPv6 client against MX
        hosts with no AAAA used up the limit, and a forger got permerror, not fail)."""
        name = str(name).removesuffix(".")
        return self.dns(name, self.A, ignore_void=True) if name else []

    def dns(
        self,
        name: str,
        qtype: str,
        cnames: dict[str, str] | None = None,
        ignore_void: bool = False,
    ) -> list[Any]:
        """Same contract as ``spf.query.dns``: a list of values (addresses as text,
        MX as (preference, exchange), PTR targets, TXT as tuples of bytes), ``[]`` for
        no data; spf.TempError on SERVFAIL/timeout; the void-lookup limit of RFC 7208
        §4.6.4 counted here as the library does. CNAMEs are followed by the resolver.
        """
        if not name:
            raise spf.PermError("empty domain name in a DNS query")
        name = str(name).removesuffix(".").lower()
        # RFC 7208 §4.3: a malformed name gives no records (the library's own rule).
        if not reduce(lambda ok, label: ok and 0 < len(label) < 64, name.split("."), True):
            return []
        if qtype not in _SHAPES:
            raise spf.PermError(f"unsupported query type {qtype}")
        cached: list[Any] | None = self.cache.get((name, qtype))
        if cached:
            return cached
        # Waits each too short to be busy, one per include, can still use up the time:
        # the timeout that ends the chain is then this host's as well (review rev61).
        answer = self.resolver.lookup(name, qtype, self.deadline, self.network, self.waited)
        self.waited += answer.waited
        self.expires = min(self.expires, answer.expires)
        self.busy = self.busy or answer.busy
        if answer.oversized:
            # Published that way: asking again gets the same (RFC 7208 §2.6.7: a
            # domain's records that cannot be interpreted).
            raise _Unread(f"DNS answer for {name}/{qtype} not read: {answer.detail}")
        if answer.status.temporary:
            raise spf.TempError(f"DNS {answer.status.name} for {name}/{qtype}: {answer.detail}")
        result = _values(answer, qtype)
        if result:
            self.cache[(name, qtype)] = result
        elif not ignore_void:
            # §4.6.4: more than two lookups with no answer (NXDOMAIN or no data).
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result


class _Unread(spf.PermError):  # type: ignore[misc]  # pyspf's classes are untyped
    """An answer too large to read (:attr:`~smtpguard.dns.Answer.oversized`)."""


#: RFC 7208 §7.1's macro: a letter, a transformer (digits of a value not zero, "01"
#: too: review rev184 F6; "r") and delimiters.
_MACRO = re.compile(r"%\{[slodiphcrtv](?:0*[1-9][0-9]*)?r?[.\-+,/_=]*\}", re.IGNORECASE)


def _transformers(text: str) -> str:
    """A macro's transformers as pyspf reads them: "R" is "r" (RFC 5234's strings are
    case-insensitive; pyspf reversed only "r"), and digits without their leading zeros,
    999 for more than three (a name has at most 127 labels; pyspf's int() of over 4,300
    digits raised ValueError, a tempfail for a record its domain got wrong)."""
    text = text.lower()
    rest = text.lstrip("0123456789")
    number = text[: len(text) - len(rest)].lstrip("0")
    return (number if len(number) <= 3 else "999") + rest


def _literal(text: str, spec: str) -> str:
    """Text between macros, which may hold no "%" (§7.1: one not followed by "{", "%",
    "_" or "-" is a syntax error; pyspf's look-behind let "%%%a" through)."""
    if "%" in text:
        raise spf.PermError("invalid-macro-char ", spec)
    return text


def _values(answer: Answer, qtype: str) -> list[Any]:
    if answer.status is not Status.OK:
        return []
    if qtype in ("A", "AAAA"):
        return [str(ip) for ip in answer.addresses()]
    if qtype == "MX":
        return list(answer.mx())
    if qtype == "PTR":
        return list(answer.names())
    return list(answer.strings())


class Spf:
    name: ClassVar[str] = "spf"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("remote_ip_mismatch", "database_temp_error")

    def __init__(self, services: Services) -> None:
        self.dns = services.dns
        # (verdict, SPF result): the result also goes into Authentication-Results.
        self.memo: Memo[tuple[Verdict | None, str]] = Memo(services.config.dns.verdict_ttl)
        self.reject_softfail = services.config.spf.reject_softfail
        hostnames = sorted(services.config.site.our_hostnames)
        # The receiver's name, used in explanations (%{r}, RFC 7208 §7.3).
        self.receiver = hostnames[0] if hostnames else "unknown"

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if self.dns is None or txn is None or txn.sender is None or conn.client_ip is None:
            return None
        if conn.trusted:
            return None
        helo = spf_helo(conn)
        if txn.sender.is_null:
            # §2.3: no HELO identity without a host name.
            if not helo or helo.startswith("[") or not is_helo_fqdn(helo):
                return None
            sender, identity = "", "helo"
        else:
            sender, identity = mailfrom(txn.sender), "mailfrom"
        key = (conn.client_ip, sender.lower(), helo.lower())
        found, memoized = self.memo.get(key)
        if found and memoized is not None:
            record_spf(txn, memoized[1], helo=not sender, value=_identity_domain(txn, helo))
            return memoized[0]
        query = spf_query(
            self.dns,
            event,
            conn,
            txn.sender if sender else None,
            helo=helo,
            receiver=self.receiver,
        )
        result, _code, explanation = query.check()
        query.add_waits_to(event)
        refused = result == "fail" or (result == "softfail" and self.reject_softfail)
        if refused and query.ptr_temperror:
            # §5.5 makes a failed PTR lookup "no match", so a DNS fault on the
            # client's reverse zone ended in "fail": a permanent refusal for a
            # temporary fault (review rev42). It is the temporary error it is.
            result, explanation = "temperror", f"{result} after a failed ptr lookup"
        record_spf(txn, result, helo=not sender, value=_identity_domain(txn, helo))
        detail = f"spf={result} {identity} {query.o} from {conn.client_ip}: {explanation}"
        if result == "temperror":
            # After a failed ptr lookup the domain's "-all" did refuse: the client
            # answers for its own reverse DNS, so passing would let a SERVFAIL it
            # arranged through (review rev45). A lookup that never left this host
            # for want of a slot says nothing of the domain, and a flood of
            # connections can cause it (review rev52 N3). Both are deferred whatever
            # on_temp_error says.
            return TempError("database_temp_error", detail, firm=query.ptr_temperror or query.busy)
        verdict: Verdict | None = None
        if result == "fail" or (result == "softfail" and self.reject_softfail):
            verdict = Hit("remote_ip_mismatch", detail)
        elif result == "permerror":
            # The explanation quotes the sender's own DNS and local part: written as a
            # client's text is, so it can neither break the line nor pass for a field
            # or a line of its own (review rev133 F2: repr left a " key=" as it was).
            log.info("spf sid=%s %s", conn.session_id, kv("detail", detail))
        self.memo.put(key, (verdict, result), within=self.dns.left(expires=query.expires))
        return verdict


def mailfrom(sender: Address) -> str:
    """The MAIL FROM identity as SPF checks it: a trailing dot names the same domain
    (RFC 7208 §7.1 ignores it); pyspf reads the empty last label as a malformed domain
    and answers "none", which would let "forged@example.com." past "-all"."""
    return sender.text.removesuffix(".")


def spf_helo(conn: Connection) -> str:
    """The HELO identity as SPF checks it: without a trailing dot (:func:`mailfrom`)."""
    return (conn.helo or "").strip().removesuffix(".")


def spf_query(
    resolver: Resolver,
    event: Event,
    conn: Connection,
    sender: Address | None,
    *,
    helo: str,
    receiver: str,
) -> SpfQuery:
    """The query for ``sender`` (None: the null sender, the HELO identity) from
    ``conn``'s client, for the spf check and the spf_pass exemption alike: by the
    event's ``sender_deadline``, starting with its ``sender_waits`` as the
    evaluation's waits for slots (:meth:`SpfQuery.add_waits_to` after the check).

    It checks the sender's parsed parts: pyspf splits at the first "@", so a quoted
    local part holding one ("x@"@example.com) would have it check a malformed domain,
    answer "none" and pass mail that example.com's "-all" refuses. The parsed parts
    are the ones the MTA delivers by."""
    assert conn.client_ip is not None  # both callers return earlier without one
    query = SpfQuery(
        resolver,
        event.sender_deadline(),
        network=share_network(conn),
        i=str(client_address(conn.client_ip)),
        s=mailfrom(sender) if sender is not None else "",
        h=helo or "unknown",
        receiver=receiver,
    )
    query.waited = query.taken_over = event.sender_waits()
    if sender is not None and sender.domain:
        # %{l} of "alice"@ is alice's (review rev112 F4): the quotes are no part of it.
        query.l = canonical_local_part(sender.local) if sender.local else "postmaster"
        # RFC 8616 §3: the domain in A-labels, as DNS is asked (review rev112 F1:
        # U-labels failed pyspf's top-label rule under an IDN TLD, a forger's pass, and
        # never matched "ptr", a refusal of the domain's own mail).
        query.o = query.d = sender.domain_canonical
        # %{s} of the same parts, so it names what %{l} and %{d} do (rev115 F4).
        query.s = f"{query.l}@{query.d}"
    return query


def _identity_domain(txn: Transaction, helo: str) -> str:
    """The domain the result is about, for Authentication-Results: the sender's, or
    the HELO name for the null sender; as it was checked: without a trailing dot, an
    IDN in A-labels (review rev69 F3: quoted UTF-8 that RFC 8601 parsers refuse)."""
    return (txn.sender.domain_canonical if txn.sender else "") or helo
