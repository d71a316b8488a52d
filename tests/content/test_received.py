"""Tests for smtpguard.content.received: real MTA trace fields, invalid ones, fuzzing."""

from __future__ import annotations

import contextlib
import time
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard.address import IPAddress
from smtpguard.content.received import (
    _COMMON,  # the fast path's shape: the Postfix test checks it is taken
    MAX_LENGTH,
    ReceivedInfo,
    ReceivedParseError,
    is_our_claim,
    parse_received,
)

V4 = IPv4Address
V6 = IPv6Address

# (id, value, from_name, from_ips, from_rdns, by_name, date)
VALID: list[tuple[str, str, str | None, tuple[IPAddress, ...], str | None, str | None, str]] = [
    (
        "postfix-tls",
        "from mail-ed1-f54.google.com (mail-ed1-f54.google.com [209.85.208.54])\r\n"
        "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\r\n"
        "\t key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256)\r\n"
        "\t(No client certificate requested)\r\n"
        "\tby mx.example.org (Postfix) with ESMTPS id 4T1abc2DEFz9sQ\r\n"
        "\tfor <user@example.org>; Mon,  1 Jan 2024 10:00:00 +0000 (UTC)",
        "mail-ed1-f54.google.com",
        (V4("209.85.208.54"),),
        "mail-ed1-f54.google.com",
        "mx.example.org",
        "Mon,  1 Jan 2024 10:00:00 +0000 (UTC)",
    ),
    (
        "postfix-unknown-client",
        "from helo.example.net (unknown [198.51.100.7])\n"
        "\tby mx.example.org (Postfix) with ESMTP id 3F2A1C0123\n"
        "\tfor <u@example.org>; Tue,  2 Jan 2024 08:15:30 +0100 (CET)",
        "helo.example.net",
        (V4("198.51.100.7"),),
        "unknown",
        "mx.example.org",
        "Tue,  2 Jan 2024 08:15:30 +0100 (CET)",
    ),
    (
        "postfix-submission-ipv6",
        "from [IPv6:2001:db8::25] (unknown [IPv6:2001:db8::25])\r\n"
        "\t(Authenticated sender: alice)\r\n"
        "\tby smtp.example.org (Postfix) with ESMTPSA id 4T2xyz0QzBz1x\r\n"
        "\tfor <bob@example.net>; Wed,  3 Jan 2024 09:00:00 +0000 (UTC)",
        "[IPv6:2001:db8::25]",
        (V6("2001:db8::25"),),
        "unknown",
        "smtp.example.org",
        "Wed,  3 Jan 2024 09:00:00 +0000 (UTC)",
    ),
    (
        "postfix-client-port",
        "from mail.example.com (mail.example.com [192.0.2.5]:41872) by mx.example.org "
        "(Postfix) with ESMTP id 4T3; Thu, 4 Jan 2024 10:00:00 +0000",
        "mail.example.com",
        (V4("192.0.2.5"),),
        "mail.example.com",
        "mx.example.org",
        "Thu, 4 Jan 2024 10:00:00 +0000",
    ),
    (
        "postfix-local-pickup",
        "by mx.example.org (Postfix, from userid 0)\r\n"
        "\tid 9A8B7C6D5E; Wed,  3 Jan 2024 12:00:00 +0000 (UTC)",
        None,
        (),
        None,
        "mx.example.org",
        "Wed,  3 Jan 2024 12:00:00 +0000 (UTC)",
    ),
    (
        "sendmail-tls",
        "from mail.example.com (mail.example.com [192.0.2.10])\r\n"
        "\tby mx.example.org (8.17.1/8.17.1) with ESMTPS id 40A9x1Yb012345\r\n"
        "\t(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256 verify=NOT)\r\n"
        "\tfor <user@example.org>; Mon, 1 Jan 2024 10:00:00 +0100",
        "mail.example.com",
        (V4("192.0.2.10"),),
        "mail.example.com",
        "mx.example.org",
        "Mon, 1 Jan 2024 10:00:00 +0100",
    ),
    (
        "sendmail-forged-ident",
        "from helo.example.com (root@host.example.com [192.0.2.11] (may be forged))\n"
        "\tby mx.example.org (8.15.2/8.15.2) with ESMTP id x01AbC; "
        "Mon, 1 Jan 2024 10:00:00 -0500",
        "helo.example.com",
        (V4("192.0.2.11"),),
        "host.example.com",
        "mx.example.org",
        "Mon, 1 Jan 2024 10:00:00 -0500",
    ),
    (
        "sendmail-no-rdns",
        "from helo.example.com ([192.0.2.12]) by mx.example.org (8.15.2/8.15.2) "
        "with ESMTP id x02; Mon, 1 Jan 2024 10:00:00 -0500",
        "helo.example.com",
        (V4("192.0.2.12"),),
        None,
        "mx.example.org",
        "Mon, 1 Jan 2024 10:00:00 -0500",
    ),
    (
        "sendmail-submit",
        "(from alice@localhost)\r\n"
        "\tby host.example.org (8.15.2/8.15.2/Submit) id 40A9x1Yb012346;\r\n"
        "\tMon, 1 Jan 2024 10:00:01 +0100",
        None,
        (),
        None,
        "host.example.org",
        "Mon, 1 Jan 2024 10:00:01 +0100",
    ),
    (
        "exim-helo-differs",
        "from mail.example.com ([192.0.2.20] helo=smtp.example.com)\n"
        "\tby mx.example.org with esmtps  (TLS1.3) tls TLS_AES_256_GCM_SHA384\n"
        "\t(Exim 4.96)\n"
        "\t(envelope-from <bounce@example.com>)\n"
        "\tid 1rKqzZ-0003Ab-1x\n"
        "\tfor user@example.org; Mon, 01 Jan 2024 10:00:00 +0000",
        "mail.example.com",
        (V4("192.0.2.20"),),
        None,
        "mx.example.org",
        "Mon, 01 Jan 2024 10:00:00 +0000",
    ),
    (
        "exim-literal-port-helo",
        "from [192.0.2.21] (port=55221 helo=mail.example.com)\r\n"
        "\tby mx.example.org with esmtp (Exim 4.92)\r\n"
        "\t(envelope-from <a@example.com>)\r\n"
        "\tid 1rKqzZ-0003Ab-2y; Mon, 01 Jan 2024 10:00:00 +0000",
        "[192.0.2.21]",
        (V4("192.0.2.21"),),
        None,
        "mx.example.org",
        "Mon, 01 Jan 2024 10:00:00 +0000",
    ),
    (
        "exim-ip-port",
        "from host.example.com ([192.0.2.22]:41234 helo=host.example.com) "
        "by mx.example.org with esmtp (Exim 4.92) (envelope-from <a@example.com>) "
        "id 1rKq-0003; Mon, 01 Jan 2024 10:00:00 +0000",
        "host.example.com",
        (V4("192.0.2.22"),),
        None,
        "mx.example.org",
        "Mon, 01 Jan 2024 10:00:00 +0000",
    ),
    (
        "exim-local",
        "from alice by host.example.org with local (Exim 4.96)\n"
        "\t(envelope-from <alice@host.example.org>)\n"
        "\tid 1rKqzZ-0003Ab-3z\n"
        "\tfor bob@example.org; Mon, 01 Jan 2024 10:00:00 +0000",
        "alice",
        (),
        None,
        "host.example.org",
        "Mon, 01 Jan 2024 10:00:00 +0000",
    ),
    (
        "exchange-internal",
        "from AM6PR04MB1234.eurprd04.prod.outlook.com (2603:10a6:20b:1::12) by\r\n"
        " AM0PR04MB5678.eurprd04.prod.outlook.com (2603:10a6:208:2::34) with\r\n"
        " Microsoft SMTP Server (version=TLS1_2,\r\n"
        " cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.7181.19; Mon, 1 Jan\r\n"
        " 2024 10:00:00 +0000",
        "AM6PR04MB1234.eurprd04.prod.outlook.com",
        (V6("2603:10a6:20b:1::12"),),
        None,
        "AM0PR04MB5678.eurprd04.prod.outlook.com",
        "Mon, 1 Jan 2024 10:00:00 +0000",
    ),
    (
        "exchange-frontend",
        "from mail.example.com (192.0.2.30) by\r\n"
        " DB5PEPF00014B89.mail.protection.outlook.com (10.167.8.199) with Microsoft SMTP\r\n"
        " Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id\r\n"
        " 15.20.7181.13 via Frontend Transport; Mon, 1 Jan 2024 10:00:00 +0000",
        "mail.example.com",
        (V4("192.0.2.30"),),
        None,
        "DB5PEPF00014B89.mail.protection.outlook.com",
        "Mon, 1 Jan 2024 10:00:00 +0000",
    ),
    (
        "exchange-mapi",
        "from AM6PR04MB1234.eurprd04.prod.outlook.com\r\n"
        " ([fe80::1234:5678:9abc:def0]) by AM6PR04MB1234.eurprd04.prod.outlook.com\r\n"
        " ([fe80::1234:5678:9abc:def0%5]) with mapi id 15.20.7181.019; Mon, 1 Jan 2024\r\n"
        " 10:00:00 +0000",
        "AM6PR04MB1234.eurprd04.prod.outlook.com",
        (V6("fe80::1234:5678:9abc:def0"),),
        None,
        "AM6PR04MB1234.eurprd04.prod.outlook.com",
        "Mon, 1 Jan 2024 10:00:00 +0000",
    ),
    (
        "gmail-inbound",
        "from mail-sor-f41.google.com (mail-sor-f41.google.com. [209.85.220.41])\r\n"
        "        by mx.google.com with SMTPS id "
        "a640c23a62f3a-a2c7b5e6f1asor123456766b.12.2024.01.01.10.00.00\r\n"
        "        for <user@gmail.com>\r\n"
        "        (Google Transport Security);\r\n"
        "        Mon, 01 Jan 2024 10:00:00 -0800 (PST)",
        "mail-sor-f41.google.com",
        (V4("209.85.220.41"),),
        "mail-sor-f41.google.com.",
        "mx.google.com",
        "Mon, 01 Jan 2024 10:00:00 -0800 (PST)",
    ),
    (
        "gmail-internal",
        "by 2002:a05:6a10:b2c4:b0:4f2:1c3e:8a2d with SMTP id x4csp123456pxb;\r\n"
        "        Mon, 1 Jan 2024 10:00:00 -0800 (PST)",
        None,
        (),
        None,
        "2002:a05:6a10:b2c4:b0:4f2:1c3e:8a2d",
        "Mon, 1 Jan 2024 10:00:00 -0800 (PST)",
    ),
    (
        "gmail-submission",
        "from [192.168.1.10] ([203.0.113.50])\r\n"
        "        by smtp.gmail.com with ESMTPSA id b1-20020a170902ab1100b001d4\r\n"
        "        for <x@example.org>\r\n"
        "        (version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256);\r\n"
        "        Mon, 01 Jan 2024 10:00:00 -0800 (PST)",
        "[192.168.1.10]",
        (V4("192.168.1.10"), V4("203.0.113.50")),
        None,
        "smtp.gmail.com",
        "Mon, 01 Jan 2024 10:00:00 -0800 (PST)",
    ),
    (
        "qmail-network",
        "(qmail 12345 invoked from network); 1 Jan 2024 10:00:00 -0000",
        None,
        (),
        None,
        None,
        "1 Jan 2024 10:00:00 -0000",
    ),
    (
        "qmail-uid",
        "(qmail 1234 invoked by uid 89); 1 Jan 2024 10:00:00 -0000",
        None,
        (),
        None,
        None,
        "1 Jan 2024 10:00:00 -0000",
    ),
    (
        "qmail-smtp",
        "from unknown (HELO mail.example.com) (192.0.2.40)\n"
        "  by mx.example.org with SMTP; 1 Jan 2024 10:00:00 -0000",
        "unknown",
        (V4("192.0.2.40"),),
        None,
        "mx.example.org",
        "1 Jan 2024 10:00:00 -0000",
    ),
    (
        "qmail-ident",
        "from host.example.com (HELO mail.example.com) (alice@192.0.2.41)\n"
        "  by mx.example.org with ESMTPA; 1 Jan 2024 10:00:00 -0000",
        "host.example.com",
        (V4("192.0.2.41"),),
        None,
        "mx.example.org",
        "1 Jan 2024 10:00:00 -0000",
    ),
    (
        "dovecot-lmtp",
        "from mx.example.org\r\n"
        "\tby imap.example.org with LMTP\r\n"
        "\tid 8FJ2Lz6kkmV1AgAA0J78UA\r\n"
        "\t(envelope-from <a@example.com>)\r\n"
        "\tfor <b@example.org>; Mon, 01 Jan 2024 10:00:00 +0000",
        "mx.example.org",
        (),
        None,
        "imap.example.org",
        "Mon, 01 Jan 2024 10:00:00 +0000",
    ),
    (
        "cyrus-unix-socket",
        "from mx.example.org ([unix socket])\n"
        "\t by imap.example.org (Cyrus 3.4.3) with LMTPA;\n"
        "\t Mon, 01 Jan 2024 10:00:00 +0000",
        "mx.example.org",
        (),
        None,
        "imap.example.org",
        "Mon, 01 Jan 2024 10:00:00 +0000",
    ),
    (
        "upper-case-and-quoted-local-part",
        'FROM a.example.com BY b.example.com WITH SMTP FOR <"john doe; x"@example.org>;'
        " Mon, 1 Jan 2024 10:00:00 +0000",
        "a.example.com",
        (),
        None,
        "b.example.com",
        "Mon, 1 Jan 2024 10:00:00 +0000",
    ),
    (
        "clauses-any-order-and-escaped-paren",
        r"by b.example.com (comment with \) paren) from a.example.com id 1; Mon, 1 Jan 2024",
        "a.example.com",
        (),
        None,
        "b.example.com",
        "Mon, 1 Jan 2024",
    ),
    (
        "bare-ip-helo-and-ipv4-mapped",
        "from 192.0.2.60 (host.example.com [IPv6:::ffff:192.0.2.60]) by mx.example.org "
        "with ESMTP id q; Mon, 1 Jan 2024 10:00:00 +0000",
        "192.0.2.60",
        (V4("192.0.2.60"), V6("::ffff:192.0.2.60")),
        "host.example.com",
        "mx.example.org",
        "Mon, 1 Jan 2024 10:00:00 +0000",
    ),
]


@pytest.mark.parametrize(
    ("value", "from_name", "from_ips", "from_rdns", "by_name", "date"),
    [case[1:] for case in VALID],
    ids=[case[0] for case in VALID],
)
def test_real_trace_fields_parse(
    request: pytest.FixtureRequest,
    value: str,
    from_name: str | None,
    from_ips: tuple[IPAddress, ...],
    from_rdns: str | None,
    by_name: str | None,
    date: str,
) -> None:
    assert parse_received(value) == ReceivedInfo(
        from_name=from_name,
        from_ips=from_ips,
        from_rdns=from_rdns,
        by_name=by_name,
        date=date,
        from_helo=EXIM_HELO.get(request.node.callspec.id),
    )


#: The HELO Exim recorded in ``helo=`` for the examples above that have one.
EXIM_HELO = {
    "exim-helo-differs": "smtp.example.com",
    "exim-literal-port-helo": "mail.example.com",
    "exim-ip-port": "host.example.com",
}


INVALID = {
    "empty": "",
    "blank": "   \r\n\t",
    "empty-date": "from a.example.com by b.example.com;",
    "blank-date": "from a.example.com by b.example.com;  \r\n\t ",
    "date-only-comment": "from a.example.com by b.example.com; (UTC)",
    "two-semicolons": "by b.example.com; Mon, 1 Jan 2024; extra",
    "nothing-before-date": "; Mon, 1 Jan 2024 10:00:00 +0000",
    "unknown-leading-word": "hello from a.example.com; Mon, 1 Jan 2024",
    "leading-garbage": "X-Spam: yes; Mon, 1 Jan 2024",
    "semicolon-before-a-date-and-after": "from a (x); by b; Mon, 1 Jan 2024; extra",
    "keywords-only": "from by; Mon, 1 Jan 2024",
    "unclosed-paren": "from a.example.com (a [192.0.2.1] by b; Mon, 1 Jan 2024",
    "unclosed-nested": "from a ((x) by b; Mon, 1 Jan 2024",
    "stray-close-paren": "from a.example.com ) by b.example.com; Mon, 1 Jan 2024",
    "escaped-close-paren": r"from a (x\) by b; Mon, 1 Jan 2024",
    "backslash-at-end": "from a by b; Mon (x\\",
    "unterminated-quote": 'from a by b for <"x@example.org>; Mon, 1 Jan 2024',
    "nul": "from a.example.com\x00 by b.example.com; Mon, 1 Jan 2024",
    "too-long": "from " + "a" * MAX_LENGTH + " by b; Mon, 1 Jan 2024",
}


#: Real fields once refused as unparsable (found by review), each with its from name,
#: by name and date. RFC 5322 §3.6.7 makes a trace field any received-tokens (so a
#: keyword may come again), and §4.5.7's obs-received, which readers must honour, has
#: no date at all.
LENIENT = {
    # Mimecast (Red Hat's mail, for one): "with" twice.
    "mimecast-with-twice": (
        "from mx3-rdu2.redhat.com (mx3-rdu2.redhat.com [66.187.233.73]) by"
        " relay.mimecast.com with ESMTP with STARTTLS (version=TLSv1.3,"
        " cipher=TLS_AES_256_GCM_SHA384) id us-mta-1-abc; Tue, 29 Mar 2022 12:52:47 -0400",
        ("mx3-rdu2.redhat.com", "relay.mimecast.com", "Tue, 29 Mar 2022 12:52:47 -0400"),
    ),
    # IBM's gateway: a "for ... from ..." inside its with clause's text.
    "ibm-gateway-from-twice": (
        "from localhost by e06smtp.uk.ibm.com with IBM ESMTP SMTP Gateway: Authorized Use"
        " Only! Violators will be prosecuted for <x@example.com> from <y@ibm.com>;"
        " Tue, 29 Mar 2022 16:52:45 -0000",
        ("localhost", "e06smtp.uk.ibm.com", "Tue, 29 Mar 2022 16:52:45 -0000"),
    ),
    # SendGrid (GitHub's notifications): no ";" and no RFC 5322 date.
    "sendgrid-no-date": (
        "by filterdrecv-656998cfdd-9lsvt with SMTP id filterdrecv-656998cfdd-9lsvt-1-62433A2D-21"
        " 2022-03-29 16:52:45.466636327 +0000 UTC m=+1105.426781212",
        (None, "filterdrecv-656998cfdd-9lsvt", None),
    ),
    "repeated-from": (
        "from a.example.com from b.example.com; Mon, 1 Jan 2024",
        ("a.example.com", None, "Mon, 1 Jan 2024"),
    ),
    "repeated-by-case": (
        "by a.example.com BY b.example.com; Mon, 1 Jan 2024",
        (None, "a.example.com", "Mon, 1 Jan 2024"),
    ),
    "no-semicolon": (
        "from a.example.com by b.example.com with SMTP id 1",
        ("a.example.com", "b.example.com", None),
    ),
    # Review rev93 F1: a keyword with no value, or only a comment, is a trace field
    # (RFC 5322 §3.6.7); QQ Mail and China Telecom's mail were refused as forged.
    "keyword-without-value": (
        "from by b.example.com; Mon, 1 Jan 2024",
        (None, "b.example.com", "Mon, 1 Jan 2024"),
    ),
    "trailing-keyword": (
        "from a.example.com by; Mon, 1 Jan 2024",
        ("a.example.com", None, "Mon, 1 Jan 2024"),
    ),
    "keyword-only-comment": (
        "from (x) by b.example.com; Mon, 1 Jan 2024",
        (None, "b.example.com", "Mon, 1 Jan 2024"),
    ),
    "qq-webmail-empty-id": (
        "from qq.com (unknown [127.0.0.1])\r\n\tby smtp.qq.com (ESMTP) with SMTP\r\n\tid ;"
        " Mon, 05 Feb 2024 17:02:05 +0800 (CST)",
        ("qq.com", "smtp.qq.com", "Mon, 05 Feb 2024 17:02:05 +0800 (CST)"),
    ),
    "189cn-from-only-comment": (
        "from  ([114.242.206.180])\r\n        by gateway-151646-dep-75648544bd-2qvwx with"
        " ESMTP id bb5ef2c8a7554d65add99f78c2e17e1f for javierm@redhat.com;\r\n"
        "        Wed, 17 May 2023 16:48:22 CST",
        (None, "gateway-151646-dep-75648544bd-2qvwx", "Wed, 17 May 2023 16:48:22 CST"),
    ),
    "iis-empty-helo": (
        "from  ([172.16.1.78]) by email2.codeworksonline.com with Microsoft"
        " SMTPSVC(5.0.2195.6713); Wed, 6 Sep 2006 21:14:29 -0400",
        (None, "email2.codeworksonline.com", "Wed, 6 Sep 2006 21:14:29 -0400"),
    ),
    "ecelerity-from-comment": (
        "from ([67.91.233.27:53798] helo=eclectic.kluge.net) by idunn.apache.osuosl.org"
        " (ecelerity 2.1 r(10620)) with ESMTP id 5A/F0-04030-76FF6054 for"
        " <dev@spamassassin.apache.org>; Tue, 12 Sep 2006 11:41:44 -0700",
        (None, "idunn.apache.osuosl.org", "Tue, 12 Sep 2006 11:41:44 -0700"),
    ),
    # A ";" before a keyword is punctuation between clauses, not the date's.
    "squirrelmail-two-semicolons": (
        "from 153.90.199.141        (SquirrelMail authenticated user admin); by"
        " web1.cs.montana.edu with HTTP;        Thu, 23 Sep 2004 14:35:29 -0600 (MDT)",
        ("153.90.199.141", "web1.cs.montana.edu", "Thu, 23 Sep 2004 14:35:29 -0600 (MDT)"),
    ),
}


def test_a_clause_with_only_a_comment_still_gives_its_addresses() -> None:
    """China Telecom's ``from  ([IP])``: no name, but the address is read (a forger
    writing one of ours that way is still found)."""
    info = parse_received("from  ([192.0.2.1]) by mx.example.org with ESMTP id 1; Mon")
    assert info.from_ips == (V4("192.0.2.1"),)
    assert is_our_claim(info, OUR_NAMES, OUR_IPS)


@pytest.mark.parametrize(("value", "expected"), list(LENIENT.values()), ids=list(LENIENT))
def test_real_fields_beyond_the_common_grammar_are_read(
    value: str, expected: tuple[str | None, str | None, str | None]
) -> None:
    info = parse_received(value)
    assert (info.from_name, info.by_name, info.date) == expected
    assert parse_received(value, fast=False) == info


def test_a_second_from_clause_still_counts_for_the_claim() -> None:
    """A ``from`` that comes again starts a from clause of its own: what it claims is
    not hidden from the forged-claim test, wherever it stands."""
    info = parse_received("from a.example.com from [203.0.113.25]; Mon, 1 Jan 2024")
    assert ip_address("203.0.113.25") in info.from_ips
    info = parse_received("from a by b with ESMTP from c (d.example [203.0.113.26]); Mon")
    assert (info.from_name, info.other_from_names) == ("a", ("c", "d.example"))
    assert ip_address("203.0.113.26") in info.from_ips


@pytest.mark.parametrize("value", list(INVALID.values()), ids=list(INVALID))
def test_invalid_trace_fields_raise(value: str) -> None:
    with pytest.raises(ReceivedParseError):
        parse_received(value)


def test_parse_error_is_a_value_error() -> None:
    assert issubclass(ReceivedParseError, ValueError)


def test_exactly_max_length_is_accepted() -> None:
    prefix = "from a by b; "
    value = prefix + "x" * (MAX_LENGTH - len(prefix))
    assert len(value) == MAX_LENGTH
    assert parse_received(value).by_name == "b"


def test_helo_literal_in_exim_comment_is_not_tcp_info() -> None:
    info = parse_received(
        "from host.example.com ([192.0.2.70] helo=[192.0.2.99]) by mx.example.org; Mon, 1 Jan"
    )
    assert info.from_ips == (V4("192.0.2.70"),)


def test_ips_outside_from_clause_are_ignored() -> None:
    info = parse_received(
        "from a.example.com (a.example.com [192.0.2.1]) by mx.example.org ([192.0.2.2])"
        " for <x@[192.0.2.3]>; Mon, 1 Jan 2024"
    )
    assert info.from_ips == (V4("192.0.2.1"),)


def test_nested_comment_is_not_rdns() -> None:
    info = parse_received("from h ((nested [192.0.2.9]) [192.0.2.8]) by m; Mon")
    assert info.from_ips == (V4("192.0.2.8"),)
    assert info.from_rdns is None


OUR_NAMES = frozenset({"mx.example.org", "Mail.Example.Org.", "mx.xn--bcher-kva.example"})
OUR_IPS: frozenset[IPAddress] = frozenset({V4("192.0.2.1"), V6("2001:db8::1")})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("from MX.Example.ORG. by mx.example.org; Mon", True),
        ("from mail.example.org by mx.example.org; Mon", True),
        ("from helo.example.net (mx.example.org [198.51.100.1]) by mx.example.org; Mon", True),
        ("from helo.example.net (h.example.net. [192.0.2.1]) by mx.example.org; Mon", True),
        ("from [IPv6:2001:db8::1] by [IPv6:2001:db8::1]; Mon", True),
        ("from h (h [IPv6:::ffff:192.0.2.1]) by mx.example.org; Mon", True),
        ("from unknown (HELO x) (192.0.2.1) by mx.example.org; Mon", True),
        ("from helo.example.net (unknown [198.51.100.1]) by mx.example.org; Mon", False),
        ("from sub.mx.example.org (h [198.51.100.2]) by x; Mon", False),
        # U-labels and full-width letters name the same host.
        ("from mx.b\u00fccher.example by mx.example.org; Mon", True),
        ("from MX.B\u00dcCHER.example by mx.example.org; Mon", True),
        ("from h (mx.b\u00fccher.example [198.51.100.3]) by mx.example.org; Mon", True),
        ("from \uff4d\uff58.example.org by mx.example.org; Mon", True),
        ("from mx.bucher.example by x; Mon", False),
        ("(qmail 1 invoked from network); Mon", False),
        # A from clause that comes again is read for a claim too (found by review: the
        # lenient parser let these through, the strict one had refused them).
        ("from relay.example.net from mx.example.org; Mon", True),
        ("from a by mx.example.org with ESMTP from h (h [192.0.2.1]); Mon", True),
        ("from a by mail.example.org from h (mx.example.org [198.51.100.9]); Mon", True),
        ("from a by mx.example.org with X from h (helo=mx.example.org); Mon", True),
        ("from a by b with IBM ESMTP SMTP Gateway for <x@y> from <z@mx.example.org>; Mon", False),
        # No by clause: a claim all the same.
        ("from mx.example.org; Mon", True),
        # Another host's record of what it received from us (review rev93 F2: a mailing
        # list's copy of our user's post, sent back to our users) claims nothing; nor
        # does another site's LAN or loopback hop that happens to be one of our
        # addresses (F6).
        ("from mx.example.org (mx.example.org [192.0.2.1]) by lists.example.net; Mon", False),
        ("from [192.0.2.1] (helo=[192.0.2.1]) by smtp.sender.example; Mon", False),
        ("from mx.example.org by [198.51.100.7]; Mon", False),
    ],
)
def test_is_our_claim(value: str, expected: bool) -> None:
    assert is_our_claim(parse_received(value), OUR_NAMES, OUR_IPS) is expected


def test_is_our_claim_with_empty_sets() -> None:
    info = parse_received("from mx.example.org ([192.0.2.1]) by x; Mon")
    assert not is_our_claim(info, frozenset(), frozenset())


HOSTILE = [
    "(" * MAX_LENGTH,
    ")" * MAX_LENGTH,
    "(" * 4000 + ")" * 4000 + "; x",
    "from a (" + "\\(" * 4000 + ")",
    '"' * MAX_LENGTH,
    "from " + '"\\' * 4000,
    ";" * MAX_LENGTH,
    "from " + "a " * 4000 + "; x",
    "from a (" + "[1.2.3.4] " * 800 + ") by b; x",
    "from a (" + "x [" * 2700 + ") by b; x",
    "from a (" + "::::::: " * 1000 + ") by b; x",
    "from " + "[" * 8000 + " by b; x",
    "\r\n " * 2700,
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_is_fast(value: str) -> None:
    started = time.perf_counter()
    with contextlib.suppress(ReceivedParseError):
        parse_received(value)
    assert time.perf_counter() - started < 0.5


# -- property-based -------------------------------------------------------------------------

_ALPHABET = st.sampled_from(
    [*' \t\r\n()[];:"\\@<>.=-x1', "from ", "by ", "with ", "id ", "for ", "via ", "IPv6:"]
)
_HOSTILE_TEXT = st.lists(_ALPHABET, max_size=200).map("".join)


def _parse_or_none(value: str) -> ReceivedInfo | None:
    try:
        return parse_received(value)
    except ReceivedParseError:
        return None


@pytest.mark.parametrize("value", ["BY FROM BY", "from x by from"])
def test_a_keyword_seen_before_is_no_host_name(value: str) -> None:
    """Found by the fuzz test below: "BY FROM BY" gave the from clause the name "BY"."""
    info = parse_received(value)
    assert info.from_name is None or info.from_name.lower() not in {"from", "by"}
    assert info.by_name is None or info.by_name.lower() not in {"from", "by"}


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), _HOSTILE_TEXT))
def test_fuzz_only_parse_errors(value: str) -> None:
    info = _parse_or_none(value)
    if info is not None:
        assert info.date is None or info.date  # None: the obsolete form without a date
        assert info.from_name is None or info.from_name.lower() not in {"from", "by"}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_surrogate_escaped_bytes(raw: bytes) -> None:
    # pymilter hands over undecodable header bytes as surrogate escapes.
    _parse_or_none(raw.decode("utf-8", "surrogateescape"))


_LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
_HOST = st.lists(_LABEL, min_size=2, max_size=4).map(".".join)
_IP = st.one_of(
    st.integers(0, 2**32 - 1).map(IPv4Address),
    st.integers(0, 2**128 - 1).map(IPv6Address),
)


def _literal(ip: IPAddress) -> str:
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"


@settings(max_examples=200, deadline=None)
@given(helo=_HOST, rdns=_HOST, by=_HOST, ip=_IP, fold=st.sampled_from(["\r\n\t", "\n ", " "]))
def test_generated_postfix_fields_round_trip(
    helo: str, rdns: str, by: str, ip: IPAddress, fold: str
) -> None:
    value = (
        f"from {helo} ({rdns} {_literal(ip)}){fold}by {by} (Postfix) with ESMTP id 4T1"
        f"{fold}for <u@{by}>; Mon,  1 Jan 2024 10:00:00 +0000 (UTC)"
    )
    info = parse_received(value)
    assert info == ReceivedInfo(helo, (ip,), rdns, by, "Mon,  1 Jan 2024 10:00:00 +0000 (UTC)")
    # One of our hops when its by names us too (see is_our_claim).
    assert is_our_claim(info, frozenset({rdns.upper() + ".", by}), frozenset())
    assert is_our_claim(info, frozenset({by}), frozenset({ip_address(str(ip))}))
    assert not is_our_claim(info, frozenset(), frozenset({ip_address(str(ip))}))


def test_exim_helo_token_is_a_claim_too() -> None:
    info = parse_received(
        "from [198.51.100.7] (helo=mx.example.com) by mx.example.com with esmtp id 1;"
        " Sat, 28 Nov 2026 17:00:00 +0000"
    )
    assert info.from_helo == "mx.example.com"
    assert is_our_claim(info, frozenset({"mx.example.com"}), frozenset())
    plain = parse_received("from a.example (a.example [192.0.2.1]) by b.example; Sat, 1 Jan 2026")
    assert plain.from_helo is None


# -- the common-shape fast path agrees with the tokenizer ---------------------------------

_BLANK = st.sampled_from(["", " ", "\t", "  ", "\r\n\t", "\n "])
_KEYWORD = st.sampled_from(["from", "by", "with", "id", "for", "via", "FROM", "By", "x"])
_VALUE = st.one_of(
    _HOST,
    st.sampled_from(
        ["ESMTP", "ESMTPS", "4F1A2B3C", "<a@example.org>", "by", "with", "For", 'q"x', "a\\b"]
    ),
)
_COMMENT = st.one_of(
    st.builds(lambda h, ip: f"({h} {_literal(ip)})", _HOST, _IP),
    st.sampled_from(
        ["(Postfix)", "(unknown [192.0.2.1])", "(a (nested) b)", "(x; y)", "(", ")", '("q")']
    ),
    st.builds(lambda h: f"(helo={h})", _HOST),
)
_DATE = st.sampled_from(
    [
        "Sat, 28 Nov 2026 17:00:00 +0000 (UTC)",
        "1 Jan 2024 10:00:00 -0000",
        "(UTC)",
        "",
        "a; b",
        "x (a (b))",
        "\x0b",
        "Mon, 1 Jan (c) 2024",
    ]
)


@st.composite
def _trace_like(draw: st.DrawFn) -> str:
    """The common shape, each part sometimes left out, repeated or replaced."""
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 6))):
        parts.append(draw(_KEYWORD))
        parts.extend(draw(st.lists(_VALUE, min_size=0, max_size=2)))
        parts.extend(draw(st.lists(_COMMENT, max_size=1)))
    text = "".join(p + draw(_BLANK) for p in parts)
    return text + draw(st.sampled_from([";", ";;", ""])) + draw(_BLANK) + draw(_DATE)


def _outcome(value: str, *, fast: bool) -> ReceivedInfo | str:
    try:
        return parse_received(value, fast=fast)
    except ReceivedParseError as exc:
        return f"error: {exc}"


@settings(max_examples=500, deadline=None)
@given(st.one_of(_trace_like(), _HOSTILE_TEXT))
def test_fast_path_agrees_with_the_tokenizer(value: str) -> None:
    assert _outcome(value, fast=True) == _outcome(value, fast=False)


@settings(max_examples=200, deadline=None)
@given(helo=_HOST, rdns=_HOST, by=_HOST, ip=_IP)
def test_postfix_shape_takes_the_fast_path(helo: str, rdns: str, by: str, ip: IPAddress) -> None:
    value = (
        f"from {helo} ({rdns} {_literal(ip)})\r\n\tby {by} (Postfix) with ESMTP id 4F1A"
        "; Sat, 28 Nov 2026 17:00:00 +0000 (UTC)"
    )
    assert _COMMON.fullmatch(value.replace("\r\n", "")) is not None
    assert _outcome(value, fast=True) == _outcome(value, fast=False)
