"""A generated mail log for ``explain --log``: Postfix, Sendmail and Exim lines as those
MTAs write them, mostly deliveries and session noise, about one line in eight a bounce
or deferral with a real-world reply (addresses, IPs and queue ids varying per line).

Used by tests/test_explain_log.py (memory bound) and bench/explain_log.py (throughput).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

#: (status, dsn, reply with {rcpt} and {id} placeholders), as remote servers send them.
REPLIES: tuple[tuple[str, str, str], ...] = (
    (
        "bounced",
        "5.1.1",
        "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table",
    ),
    (
        "bounced",
        "5.1.1",
        "550-5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos or unnecessary spaces. "
        "https://support.google.com/mail/?p=NoSuchUser {id} - gsmtp",
    ),
    ("bounced", "5.5.0", "550 5.5.0 Requested action not taken: mailbox unavailable"),
    (
        "bounced",
        "5.7.1",
        "554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; "
        "https://www.spamhaus.org/query/ip/{ip}",
    ),
    ("bounced", "5.7.1", "550 5.7.1 <{rcpt}>: Relay access denied"),
    (
        "bounced",
        "5.7.26",
        "550-5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail "
        "requires all senders to authenticate with either SPF or DKIM. {id} - gsmtp",
    ),
    ("bounced", "5.2.2", "552 5.2.2 <{rcpt}>: Recipient address rejected: Mailbox full"),
    ("bounced", "5.3.4", "552 5.3.4 Message size exceeds fixed limit"),
    ("bounced", "5.7.1", "550 5.7.1 Message rejected as spam by Content Filtering."),
    ("bounced", "5.0.0", "550 Mailbox not found or access denied"),
    (
        "bounced",
        "5.7.1",
        "550 5.7.1 Unfortunately, messages from [{ip}] weren't sent. Please contact your "
        "Internet service provider since part of their network is on our block list (S3150). "
        "[{id}.eop-nam11.prod.protection.outlook.com]",
    ),
    (
        "bounced",
        "5.0.0",
        "554 DT:SPM 163 smtp10,DsCowADnJ{id} http://mail.163.com/help/help_spam_16.htm?ip={ip}",
    ),
    (
        "bounced",
        "5.0.0",
        "550 Mail content denied. "
        "http://service.exmail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000726",
    ),
    ("deferred", "4.7.1", "451 4.7.1 Greylisting in action, please come back later"),
    ("deferred", "4.2.2", "452 4.2.2 <{rcpt}>: Mailbox full"),
    (
        "deferred",
        "4.7.28",
        "421-4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from "
        "your IP address. {id} - gsmtp",
    ),
    (
        "deferred",
        "4.7.0",
        "421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume or "
        "user complaints",
    ),
    (
        "deferred",
        "4.3.0",
        "451 4.3.0 Temporary server error. Please try again later ATTR5 "
        "[{id}.namprd04.prod.outlook.com]",
    ),
    ("deferred", "4.4.1", "connect to mx.{domain}[{ip}]:25: Connection timed out"),
    (
        "deferred",
        "4.4.3",
        "Host or domain name not found. Name service error for name={domain} type=MX: Host not "
        "found, try again",
    ),
)
DOMAINS: tuple[str, ...] = (
    "gmail.com", "outlook.com", "hotmail.com", "yahoo.com", "qq.com", "163.com",
    "126.com", "example.com", "example.net", "example.org", "sina.com", "aliyun.com",
)  # fmt: skip
_USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")


def _recipient(rng: random.Random, domains: int) -> tuple[str, str]:
    """A recipient: mostly the common providers, the rest spread over ``domains``
    generated domains."""
    common = rng.random() < 0.7
    domain = rng.choice(DOMAINS) if common else f"d{rng.randrange(domains)}.example"
    return f"{rng.choice(_USERS)}{rng.randrange(10_000)}@{domain}", domain


def _qid(rng: random.Random) -> str:
    return f"{rng.getrandbits(40):010X}"


def _ip(rng: random.Random) -> str:
    return (
        f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    )


def lines(count: int, *, seed: int = 15, domains: int = 500) -> Iterator[str]:
    """``count`` log lines (without newlines)."""
    rng = random.Random(seed)
    for n in range(count):
        stamp = f"Dec  2 18:{(n // 60) % 60:02d}:{n % 60:02d}"
        roll = rng.random()
        qid = _qid(rng)
        if roll < 0.125:
            status, dsn, template = rng.choice(REPLIES)
            rcpt, domain = _recipient(rng, domains)
            ip = _ip(rng)
            reply = template.format(rcpt=rcpt, id=f"{rng.getrandbits(64):x}", ip=ip, domain=domain)
            # Sendmail and Exim log a reply only when there is one.
            mta = rng.random() if reply[:1].isdigit() else 0.0
            if mta < 0.7:
                if reply[:1].isdigit() and reply[3:4] in (" ", "-"):
                    detail = f"host mx.{domain}[{ip}] said: {reply} (in reply to RCPT TO command)"
                else:
                    detail = reply
                yield (
                    f"{stamp} mx postfix/smtp[{rng.randrange(1000, 60000)}]: {qid}: to=<{rcpt}>,"
                    f" relay=mx.{domain}[{ip}]:25, delay=1.4, delays=0.1/0/0.6/0.7, dsn={dsn},"
                    f" status={status} ({detail})"
                )
            elif mta < 0.85:
                stat = f"Deferred: {reply}" if status == "deferred" else reply
                yield (
                    f"{stamp} mx sm-mta[{rng.randrange(1000, 60000)}]: {qid}: to=<{rcpt}>,"
                    f" delay=00:00:02, xdelay=00:00:02, mailer=esmtp, pri=120000,"
                    f" relay=mx.{domain}. [{ip}], dsn={dsn}, stat={stat}"
                )
            else:
                flag = "**" if status == "bounced" else "=="
                defer = " defer (-44)" if status == "deferred" else ""
                yield (
                    f"2026-12-02 18:00:{n % 60:02d} 1tI9Xz-{qid[:6]}-{qid[6:8]} {flag} {rcpt}"
                    f" R=dnslookup T=remote_smtp{defer} H=mx.{domain} [{ip}]: SMTP error from"
                    f" remote mail server after RCPT TO:<{rcpt}>: {reply}"
                )
        elif roll < 0.45:
            rcpt, domain = _recipient(rng, domains)
            yield (
                f"{stamp} mx postfix/smtp[{rng.randrange(1000, 60000)}]: {qid}: to=<{rcpt}>,"
                f" relay=mx.{domain}[{_ip(rng)}]:25, delay=0.8, delays=0.1/0/0.3/0.4,"
                f" dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as {_qid(rng)})"
            )
        elif roll < 0.6:
            yield (
                f"{stamp} mx postfix/qmgr[812]: {qid}: from=<news@example.com>,"
                f" size={rng.randrange(2000, 90000)}, nrcpt=1 (queue active)"
            )
        elif roll < 0.75:
            pid = rng.randrange(1000, 60000)
            yield f"{stamp} mx postfix/cleanup[{pid}]: {qid}: message-id=<{qid}@example.com>"
        elif roll < 0.9:
            pid = rng.randrange(1000, 60000)
            yield f"{stamp} mx postfix/smtpd[{pid}]: connect from unknown[{_ip(rng)}]"
        else:
            yield f"{stamp} mx postfix/qmgr[812]: {qid}: removed"


def write(path: Path, count: int, *, seed: int = 15, domains: int = 500) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for line in lines(count, seed=seed, domains=domains):
            f.write(line + "\n")
    return path
