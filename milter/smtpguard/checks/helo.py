"""``helo_first`` and ``helo_error``: the HELO/EHLO greeting.

Both are decided at MAIL FROM: Postfix answers EHLO itself and defers a milter's HELO
reject to MAIL anyway, and at MAIL the authentication state is known.

A trusted client (``site.trusted_networks``, or SASL-authenticated) is not judged by
its greeting, as Postfix sites put ``permit_mynetworks, permit_sasl_authenticated``
before ``reject_non_fqdn_helo_hostname``: Postfix's own pickup path presents mail
submitted with sendmail(1) as ``localhost [127.0.0.1]`` saying ``HELO localhost``
(non_smtpd_milters), and a mail client behind NAT greets with the address literal of
its private address. Refusing either bounces mail the site itself sends.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.address import (
    helo_spelling,
    is_fqdn,
    is_valid_domain,
    parse_address_literal,
    unmapped,
)
from smtpguard.checks import Event, Services, Stage
from smtpguard.session import Connection
from smtpguard.verdict import Hit, Verdict


class HeloFirst:
    name: ClassVar[str] = "helo_first"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("helo_first",)

    def __init__(self, services: Services) -> None:
        pass

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        if conn.helo is None:
            return Hit("helo_first", "MAIL before HELO/EHLO")
        return None


class HeloName:
    name: ClassVar[str] = "helo"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("helo_error",)

    def __init__(self, services: Services) -> None:
        self.site = services.config.site
        self.our_ips = self.site.our_ips

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        helo = conn.helo
        if helo is None or conn.trusted:
            return None
        problem = self._problem(conn, helo.strip())
        return Hit("helo_error", f"helo={helo!r}: {problem}") if problem else None

    def _problem(self, conn: Connection, helo: str) -> str | None:
        if not helo:
            return "empty"
        if helo.startswith("["):
            literal = parse_address_literal(helo)
            if literal is None:
                return "invalid address literal"
            # [IPv6:::ffff:192.0.2.1] is the IPv4 client 192.0.2.1.
            ip = unmapped(literal)
            if ip in self.our_ips:
                return "claims one of our IPs"
            if conn.client_ip is not None and ip != conn.client_ip:
                return f"address literal is not the client IP {conn.client_ip}"
            return None
        spelled = helo_spelling(helo)
        if not is_valid_domain(spelled, allow_utf8=False):
            return "invalid host name syntax"
        if not is_fqdn(spelled):
            return "not a fully qualified domain name"
        name = helo.rstrip(".").lower()
        # Local domains the way every other check reads them: ".example.org" makes
        # each subdomain ours.
        if name in self.site.our_hostnames or self.site.is_local(name):
            return "claims one of our names"
        return None
