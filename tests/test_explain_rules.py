"""``smtpguard explain``: the misclassification classes of issue 15, one test each, and
the matcher's own rules (addresses and host names are no evidence, weak words only
when no rule matched, grouped provider codes explained one by one)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from smtpguard.config import ConfigError
from smtpguard.explain import (
    FALLBACK_RULE,
    KEYWORDS_RULE,
    UNFILTERED_REPLIES,
    Knowledge,
    clean_input,
    knowledge,
    load_knowledge,
    parse_reply,
    plain_text,
)
from support.service import RULES
from test_explain_corpus import UNREAD_SPLITS, Case, load_corpus

SHIPPED = (RULES / "explain.toml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def know() -> Knowledge:
    """The shipped rules without the word model: where no rule matches, the codes
    answer (the model's place is tested in tests/test_explain_words.py)."""
    return load_knowledge(RULES / "explain.toml")


#: The classes of the issue's misses.
ISSUE_CASES: list[tuple[str, str]] = [
    # No rule fired before, although the text says what happened.
    ("550 5.7.1 Bogus HELO name: localhost", "helo"),
    ("450 4.7.1 HELO mail.example.invalid cannot be resolved", "helo"),
    ("530 5.7.0 Authorization required", "auth_required"),
    ("550 Relaying not allowed for unauthenticated connection", "auth_required"),
    ("553 From and auth not the same", "sender_mismatch"),
    ("421 4.7.0 IP not in whitelist for RCPT domain, closing connection.", "policy"),
    (
        "450 4.2.1 The user you are trying to contact is receiving mail too quickly.",
        "rate_limit",
    ),
    ("450 4.2.1 Peak SMTP relay limit exceeded for customer.", "rate_limit"),
    ("550 Restricted characters in address", "syntax"),
    ("550 maximum allowed line length is 998 octets, got 2000", "message_format"),
    # A rule fired on the wrong word.
    ("530 5.5.1 Invalid command: Must issue an AUTH command first", "auth_required"),
    ("503 5.5.1 Invalid command: Command not allowed at this point.", "protocol_sequence"),
    ("451 4.7.1 Temporary failure: rate limit exceeded, slow down", "rate_limit"),
    ("554 5.7.1 Rejected: bit.example is listed in multi.uribl.com", "spam"),
    (
        "553 5.7.1 <news@spam-domain.example>: Sender address rejected: Access denied",
        "sender_rejected",
    ),
    # Server knowledge.
    ("550 I cannot deliver mail for <bob@example.org>", "relay_denied"),
    (
        "550 Envelope domain 'example.com' doesn't match AUTH domain 'example.net'",
        "sender_mismatch",
    ),
    ("503 5.7.1 Incorrect Authentication for Specified Email Address", "sender_mismatch"),
    ("550 Ip frequency limited [Blocked IP 192.0.2.22]", "rate_limit"),
    ("550 Connection denied", "dnsbl"),
    ("Requested action not taken: no smtp MX only", "auth_required"),
    # Enhanced codes mid-text decide the fallback.
    ("550 Message rejected, status 5.7.26 zzz", "unauthenticated"),
    ("552 Requested mail action aborted (5.2.2)", "mailbox_full"),
]


#: Sibling wordings, from the servers' sources and vendor pages, of the classes the misses
#: of heldout4 and heldout5 fell into (none of them is a corpus line).
HELDOUT45_CASES: list[tuple[str, str]] = [
    # The answering server's own back end failed (Postfix's delivery agents and
    # smtpd, qmail-smtpd's recipient checks, qmail-ldap): temp_failure, also when
    # the words are "timeout" or "lookup".
    ("unknown mail transport error", "temp_failure"),
    ("451 4.3.5 Server configuration problem", "temp_failure"),
    ("451 4.3.0 Error: queue file write error", "temp_failure"),
    ("421 unable to execute recipient check (#4.3.0)", "temp_failure"),
    ("451 4.3.0 Temporary failure: LDAP server unavailable", "temp_failure"),
    ("LDAP server timed out (#4.4.3)", "temp_failure"),
    ("451 4.3.0 Virtual user lookup failed", "temp_failure"),
    ("550 5.1.1 Recipient lookup failed: user unknown", "unknown_recipient"),
    # Postfix's dns_lookup.c: NXDOMAIN and NODATA are a domain that cannot receive,
    # TRY_AGAIN, NO_RECOVERY, CNAME loops and resolver start-up are the network.
    ("Name service error for example..com: invalid host or domain name", "unknown_recipient"),
    (
        "Host or domain name not found. Name service error for name=example.com "
        "type=MX: Non-recoverable error",
        "network",
    ),
    ("Name server loop for mx.example.com", "network"),
    (
        "connect to mx.example.com[2001:db8::25]:25: Address family not supported by protocol",
        "network",
    ),
    ("421 Lost input connection", "network"),
    # Malformed commands and addresses are syntax, not a malformed message or an
    # unknown recipient.
    ("501 5.5.2 Cannot decode response", "syntax"),
    ("501 NUL characters are not allowed in SMTP commands", "syntax"),
    ("501 5.5.2 Invalid base64 data in continued response", "syntax"),
    ("553 5.1.3 <.bob@example.com>... Local part must not start with a dot", "syntax"),
    ("550 5.1.3 Address must specify a domain", "syntax"),
    ("501 5.5.4 Syntax error: more than one BODY parameter", "syntax"),
    (
        "553 5.1.2 The recipient address <bob@example> is not a valid RFC 5321 address. "
        "Learn more at https://support.google.com/mail/answer/6596 - gsmtp",
        "syntax",
    ),
    (
        "553 5.1.7 The sender address <bob@example> is not a valid RFC 5321 address.",
        "sender_invalid",
    ),
    # Limits on bad recipients, sending quotas and rates are rate limits; counted
    # recipients per message are too_many_recipients.
    ("452 4.5.3 Too many invalid recipients", "rate_limit"),
    ("550 5.7.1 Too many unknown recipients, closing connection", "rate_limit"),
    ("421 4.7.0 You have exceeded the limit of 100 messages per hour", "rate_limit"),
    (
        "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; "
        "Failed to process message due to a permanent exception",
        "rate_limit",
    ),
    (
        "Domain example.com has exceeded the max emails per hour (100/100 (100%)) allowed.",
        "rate_limit",
    ),
    ("550 5.4.6 Organization queue quota exceeded", "rate_limit"),
    ("550 5.5.3 Number of recipients exceeds the limit", "too_many_recipients"),
    ("452 4.5.3 RCPT limit exceeded", "too_many_recipients"),
    # TLS: required before AUTH; a second STARTTLS or AUTH is a sequence error.
    (
        "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
        "tls_required",
    ),
    ("530 5.7.0 Authentication not available without TLS", "tls_required"),
    ("503 5.5.1 Error: already authenticated", "protocol_sequence"),
    ("550 5.5.0 Protocol violation: early talker", "protocol_sequence"),
    # The client's rDNS lookup failing is about its reverse DNS, not our network.
    ("450 client [192.0.2.1] rDNS lookup timeout", "reverse_dns"),
    ("451 4.7.1 PTR lookup failed for 192.0.2.1", "reverse_dns"),
    # Delivery texts of Postfix (dns_lookup.c, smtp_addr.c) and Exim (deliver.c,
    # transports/smtp.c): a relay host not found without a code, TLSA/DANE lookups
    # and retry times are the network; a client's rDNS error stays reverse_dns
    # whatever the DNS status.
    ("relay.example.com: host not found", "network"),
    ("Unable to run qmail-local.", "temp_failure"),
    ("Failure to reach any MX", "network"),
    ("TLS required but not supported by remote host", "network"),
    ("TLSA lookup error for mx.example.com:25", "network"),
    ("Retry time not yet reached", "network"),
    ("missing MX, or all MXs point to missing A records", "unknown_recipient"),
    ("recipient nesting limit exceeded", "loop"),
    ("450 client [192.0.2.1] rDNS lookup error (NXDOMAIN)", "reverse_dns"),
    ("authentication required but authentication attempt(s) failed", "auth_failed"),
    ("550 This mailbox has been blocked due to inactivity", "mailbox_disabled"),
    ("550 Invalid domain", "unknown_recipient"),
    # A specific reason after RFC 5321's generic words wins (Mail.ru, GMX, Web.de).
    (
        "550 Message was not accepted -- invalid mailbox. Local mailbox bob@example.com "
        "is unavailable: account is disabled",
        "mailbox_disabled",
    ),
    (
        "550 Requested action not taken: mailbox unavailable. Rejected due to policy reasons",
        "policy",
    ),
    ("550 <bob@example.com>: Invalid DNS MX or A resource record", "sender_invalid"),
    # Vendor wordings of known classes.
    ("delivery to file forbidden", "policy"),
    ("530 5.7.0 Not authenticated", "auth_required"),
    (
        "554 IP=192.0.2.1 - None/bad reputation. Ask your postmaster for help or to "
        "contact postmaster@rx.t-online.de for reset. (NOWL)",
        "dnsbl",
    ),
    (
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] on behalf of (example.com) "
        "could not be delivered due to domain owner policy restrictions.",
        "dmarc",
    ),
    (
        "554 5.7.1 <bob@example.com>: Sender address rejected: Blacklisted sender",
        "sender_rejected",
    ),
    ("550 Message refused", "rejected"),
    # ... but a bare refusal is weak: a specific enhanced code says more.
    ("550 5.7.23 Message rejected", "spf"),
    ("552 5.3.4 Message rejected", "size"),
]


#: Sibling wordings, from the servers' sources and vendor pages, of the classes the misses
#: of heldout6 fell into (none of them is a corpus line).
HELDOUT6_CASES: list[tuple[str, str]] = [
    # The receiving or relaying MTA's own delivery machinery failed for now:
    # qmail-local and qmail-rspawn, sendmail's .forward and :include: reads,
    # OpenSMTPD's mda/mta internals, Postfix's TLS set-up (temp_failure, not the
    # mailbox's subject X.2.1 nor a network "timeout").
    ("Unable to switch to /home/alice: file does not exist. (#4.3.0)", "temp_failure"),
    ("Uh-oh: home directory is writable. (#4.7.0)", "temp_failure"),
    ("Timeout on maildir delivery. (#4.3.0)", "temp_failure"),
    ("qmail-local crashed.", "temp_failure"),
    ("451 4.4.1 read timeout on /home/alice/.forward", "temp_failure"),
    ("Could not stat message fd", "temp_failure"),
    ("Cannot retrieve smarthost", "temp_failure"),
    ("4.7.5 server TLS configuration problem", "temp_failure"),
    # ... but a full disk behind the same words is still the mailbox.
    ("Unable to write /var/spool/mail/alice: Disk quota exceeded. (#4.3.0)", "mailbox_full"),
    # sendmail's restricted mailers: a local policy, not an unknown user.
    ("550 5.7.1 Cannot mail directly to programs", "policy"),
    ("550 UID 1001 is an unknown user: cannot mail to programs", "policy"),
    (
        "550 User alice@mx.example.org doesn't have a valid shell for mailing to programs",
        "policy",
    ),
    # TLS demanded of the client: a client certificate, AUTH over a plain channel.
    ("421 4.7.1 mx.example.org Error: Client certificate not trusted", "tls_required"),
    ("538 5.7.11 AUTH PLAIN not permitted over an unencrypted connection", "tls_required"),
    ("530 Error: A secure connection is required (SSL/TLS)", "tls_required"),
    # ... a failed TLS set-up or MTA-STS lookup on the way is the network.
    ("454 4.7.0 TLS connection setup failed", "network"),
    ("450 4.7.0 MTA-STS policy lookup temp fail for example.org", "network"),
    ("451 4.4.3 DNS query temporary failure", "network"),
    # Zoho's policy errors say more than their enhanced codes (5.1.1, 5.2.3).
    ("452 4.2.1 <bob@example.com> Mailbox delivery restricted by policy error", "policy"),
    ("550 5.1.1 <bob@example.com> delivery policy violation", "policy"),
    # Neither SPF nor DKIM passed, in Gmail's words, before the SPF detail.
    (
        "421 4.7.0 This message does not pass authentication checks (SPF and DKIM "
        "both do not pass). SPF check for [example.org] does not pass with ip",
        "unauthenticated",
    ),
    # Command parameters and BDAT chunks: syntax, also behind a 503 or a 551.
    ("503 5.5.4 Error: multiple RET= options", "syntax"),
    ("551 5.7.1 Invalid BDAT request", "syntax"),
    ("553 5.1.2 <carol@example..org>... Invalid host name", "syntax"),
    # MIME nesting is the message's format, not its content.
    ("554 5.6.0 Message rejected: MIME nesting level exceeded", "message_format"),
    # A null MX ("MX 0 .") after a colon, and an address that is no longer valid.
    ("556 5.1.10 Domain does not accept mail: MX 0 .", "unknown_recipient"),
    ("550 5.1.1 Recipient address no longer valid", "unknown_recipient"),
    # "Invalid address" is weak: a specific detail says which way it is invalid.
    ("553 5.1.3 Invalid address", "syntax"),
    # X.1.7 is the sender's address syntax (RFC 3463); Exchange's bare "5.1.7 Invalid
    # address" is documented as a syntax error in the sender's address (round 7).
    ("501 5.1.7 Invalid address", "syntax"),
    ("550 Invalid address", "unknown_recipient"),
    # qmail's "(#4.4.2)" is weak beside words of another category.
    ("451 queue is busy, try again later (#4.4.2)", "temp_failure"),
    ("451 timeout (#4.4.2)", "network"),
    # spamdyke's and qmail-smtpd's sibling wordings.
    ("550 Refused. Your recipient address has been blacklisted.", "policy"),
    ("421 Refused. The sender's domain has no mail exchanger.", "sender_invalid"),
    ("421 Refused. You sent SMTP commands before the greeting.", "protocol_sequence"),
    ("550 Refused. Sending to remote addresses (relaying) is not allowed.", "relay_denied"),
    ("451 qq write error (#4.3.0)", "temp_failure"),
    ("552 This message contains an attachment that is not allowed (#5.3.4)", "content"),
    # A refusal by reputation or a listed client is the IP, also after "refused".
    ("550 5.7.1 Connection refused - poor reputation", "dnsbl"),
    ("554 5.7.1 <mx.example.com[192.0.2.1]>: Client host rejected: Blacklisted", "dnsbl"),
    # "(SPF/DKIM)" without saying which failed.
    ("550 5.7.1 Message rejected: sender failed authentication (SPF/DKIM)", "unauthenticated"),
    # Rates and sending quotas per period.
    ("451 4.3.2 Max message rate reached for this sender", "rate_limit"),
    ("421 4.7.0 You have exceeded your message quota for this hour", "rate_limit"),
    ("550 5.2.122 RESOLVER.RST.RecipientRateLimitExceeded; rate exceeded", "rate_limit"),
    ("550 5.2.3 RESOLVER.RST.SendSizeLimit.Sender; too large for this sender", "size"),
    # Exim's appendfile file-count quota is a full mailbox.
    ("T=local_delivery: mailbox /var/mail/bob has too many messages", "mailbox_full"),
    # Postfix's local and pipe agents failing on the receiving host itself.
    ('Command died with status 75: "/usr/lib/dovecot/deliver"', "temp_failure"),
    ("cannot append message to file /var/mail/bob: Permission denied", "temp_failure"),
    ("cannot append message to file /var/mail/bob: Disk quota exceeded", "mailbox_full"),
    ("Unable to open /home/vpopmail/d/bob/Maildir: Permission denied (#4.3.0)", "temp_failure"),
    ("Could not open message fd", "temp_failure"),
    ("No auth table for relaying", "temp_failure"),
    ("553 sorry, this recipient is not allowed to receive mail from you (#5.7.1)", "policy"),
    ("421 Too many consecutive errors, closing connection", "syntax"),
    # "too long" is a size only for a message; an input or line is a command.
    ("Input too long", "syntax"),
    ("554 Mail too long", "size"),
    # qmail-remote's TLS patch: the server's certificate on the way is the
    # network, the sender's own TLS set-up a temporary failure.
    ("TLS unable to verify server mx.example.org: no certificate provided", "network"),
    ("No TLS achieved while /var/qmail/control/tlshosts/mx.pem exists", "network"),
    ("TLS error initializing ctx: no shared cipher", "temp_failure"),
    ("Connected to 192.0.2.1 but password expired.", "auth_failed"),
    # Haraka's headers plugin and milters failing on the receiving side.
    ("550 Date header is too far in the future", "message_format"),
    ("451 4.3.0 Milter (opendkim): timeout before data read", "temp_failure"),
    # Unknown users and blocked IPs in the languages of European providers.
    ("550 5.1.1 Destinatario sconosciuto", "unknown_recipient"),
    ("550 El usuario no existe", "unknown_recipient"),
    ("550 Unbekannter Empfänger", "unknown_recipient"),
    ("550 Почтовый ящик не существует", "unknown_recipient"),
    ("554 Ihre IP-Adresse 192.0.2.1 wurde gesperrt", "dnsbl"),
    # Postfix pipe's time limit and maildrop's quota wording.
    ('Command time limit exceeded: "/usr/bin/procmail"', "temp_failure"),
    (
        "maildir delivery failed: the user's maildir has overdrawn his diskspace quota",
        "mailbox_full",
    ),
    # Reverse DNS in other words: an IP without a (matching) host name.
    ("421 4.7.0 Your IP address does not resolve to a hostname", "reverse_dns"),
    ("554 5.7.1 Your hostname does not match your IP address", "reverse_dns"),
    ("554 Connection refused: generic hostname (dynamic IP)", "reverse_dns"),
    # ... but a HELO name that does not match is the HELO.
    ("550 5.7.1 HELO hostname does not match the reverse DNS of your IP", "helo"),
    # Postfix's "Sender address rejected: <reason>" and loops in other words.
    (
        "554 5.7.1 <a@example.org>: Sender address rejected: Banned by local policy",
        "sender_rejected",
    ),
    ("554 5.4.6 Message looped back to this server", "loop"),
    # QQ-style wordings: a sender address that does not exist, unsafe links, a
    # sender on the recipient's own block list.
    ("550 Mail from address not exist", "sender_invalid"),
    ("550 Message contains unsafe links", "spam"),
    ("550 Sender address is in the recipient's blacklist", "sender_rejected"),
    # Postfix's bare "Protocol error", as its "SMTP protocol error".
    ("521 5.5.1 Protocol error", "protocol_sequence"),
    # A recipient domain without mail hosts is an unknown recipient; the sender's a
    # sender that cannot be answered.
    ("554 5.4.4 Domain example.invalid has no MX or A record", "unknown_recipient"),
    ("550 5.4.4 Unable to route: no mail hosts for domain", "unknown_recipient"),
    ("550 5.1.8 Sender domain example.invalid has no MX record", "sender_invalid"),
    # A domain named between the subject and the verb.
    ("550 5.7.1 Your domain example.org is on our block list", "sender_rejected"),
    ("550 5.7.1 Domain example.org is not local", "relay_denied"),
    ("550 Recipient domain example.invalid is not reachable", "unknown_recipient"),
    # Reputation: a Sender Score is the IP's, a domain's reputation the message's.
    ("550 5.7.1 Rejected due to low sender score", "dnsbl"),
    ("550 5.7.1 Message rejected: domain reputation is too low", "spam"),
    # An explicit request to authenticate beats the vendor code it follows.
    ("553 Local user only, please use authenticated SMTP", "auth_required"),
    # A sender that requires TLS and cannot get it on the way: the network.
    ("451 4.4.0 Failed to establish a secure connection with the remote server", "network"),
]


#: The replies of the add-ons heldout7's misses came from, written from the add-ons' sources
#: (spamdyke, qmail-ldap, qmail-spp plugins, simscan, rblsmtpd, OpenSMTPD filters, Exim
#: ACLs): the whole family of texts, not only the missed line.
HELDOUT7_CASES: list[tuple[str, str]] = [
    # spamdyke: chrisboulton/spamdyke@5785cb3:spamdyke/spamdyke.h (ERROR_*, with
    # REJECT_SEVERITY_PERMANENT 554 / TEMPORARY 421 / TLS_FAILURE 454).
    ("554 Improper recipient address. Try supplying a domain name.", "syntax"),
    ("421 Your address has been graylisted. Try again later.", "greylisting"),
    ("554 Refused. You have no reverse DNS entry.", "reverse_dns"),
    (
        "554 Refused. Your reverse DNS entry contains your IP address and a banned keyword.",
        "reverse_dns",
    ),
    ("554 Refused. You are not following the SMTP protocol.", "protocol_sequence"),
    ("554 Refused. Your domain name is blacklisted.", "dnsbl"),
    ("554 Refused. Your IP address is blacklisted.", "dnsbl"),
    ("554 Refused. Your domain name is listed in the RHSBL at dbl.example", "dnsbl"),
    ("554 Refused. Your sender address has been blacklisted.", "sender_rejected"),
    ("554 Refused. Mail is not being accepted at this address.", "rejected"),
    ("554 Refused. Mail is not being accepted.", "rejected"),
    ("554 Refused. Access is denied.", "rejected"),
    (
        "421 Refused. The domain of your sender address has no mail exchanger (MX).",
        "sender_invalid",
    ),
    ("554 Refused. Sending to remote addresses (relaying) is not allowed.", "relay_denied"),
    ("554 Refused. You must specify at least one valid recipient.", "protocol_sequence"),
    ("554 Refused. Authentication is required to send mail.", "auth_required"),
    ("554 Refused. Identical sender and recipient addresses are not allowed.", "policy"),
    ("454 Failed to negotiate TLS connection.", "network"),
    # qmail-ldap: qmail-ldap/qmail-ldap@33d8d0d:qmail-smtpd.c (err_* and err_554msg).
    ("553 sorry, your mail was administratively denied. (#5.7.1)", "rejected"),
    ("553 sorry, mail to that recipient is not accepted (#5.7.1)", "rejected"),
    (
        "553 sorry, mail from your location [192.0.2.1] is administratively denied (#5.7.1)",
        "dnsbl",
    ),
    ("553 sorry, your mailserver [192.0.2.1] is rejected by zen.spamhaus.org", "dnsbl"),
    (
        "553 sorry, your mail from a host [192.0.2.1] without valid reverse DNS was"
        " administratively denied (#5.7.1)",
        "reverse_dns",
    ),
    ("553 sorry, relaying denied from your location [192.0.2.1] (#5.7.1)", "relay_denied"),
    ("554 mailfrom without @ is administratively denied", "sender_invalid"),
    ("554 RFC2821 bounces are administratively denied", "sender_rejected"),
    (
        "550 sorry, I don't accept bounce messages with more than one recipient."
        " Go read RFC2821. (#5.7.1)",
        "policy",
    ),
    ("552 we don't accept email with this MIME content (#5.3.4)", "content"),
    ("421 DNS temporary failure at return MX check, try again later (#4.3.0)", "network"),
    # qmail-spp plugins: sagredo-dev/qmail-stuff@6b6ae82:patches/qmail-spp/plugins/
    # (checkmx2.c, checkparanoid.c, mailfromhosts.c, maxbouncercpts.c,
    # smtp_ratelimit-0.2/smtp_ratelimit.c, authrequired.c).
    ("550 No SPF/MX record for sender's domain!", "sender_invalid"),
    ("550 Reverse DNS validation for mail.example.com failed (#5.7.25)", "reverse_dns"),
    ("553 5.1.7 Sender domain not allowed", "sender_rejected"),
    ("550 sorry, too many bounce recipients (#5.7.1)", "policy"),
    (
        "553 sorry, you've exceeded the number of recipients per period (#5.7.1)",
        "rate_limit",
    ),
    ("550 SMTP AUTH required", "auth_required"),
    # simscan: qmail/simscan@131f575:simscan.c (RejectMsg, shown by qmail-smtpd as 554).
    ("554 Your email was rejected because it matches a filter (X-Spam-Flag: YES)", "content"),
    ("554 Your email is considered spam (9.50 spam-hits)", "spam"),
    ("554 Your email was rejected because it contains a bad attachment: a.exe", "content"),
    ("554 Your email was rejected because it contains the Eicar-Test-Signature virus", "virus"),
    # chkuser 2.0 (chkuser_settings.h, CHKUSER_*_STRING, as quoted in public copies).
    ("511 sorry, recipient address has invalid format (#5.1.1 - chkuser)", "syntax"),
    ("571 sorry, sender address has invalid format (#5.7.1 - chkuser)", "syntax"),
    ("511 sorry, can't find a valid MX for sender domain (#5.1.1 - chkuser)", "sender_invalid"),
    (
        "511 sorry, can't find a valid MX for rcpt domain (#5.1.1 - chkuser)",
        "unknown_recipient",
    ),
    # Sent only over the invalid-recipient limit: rate_limit since round 15 (policy before).
    ("571 sorry, you are violating our security policies (#5.1.1 - chkuser)", "rate_limit"),
    ("511 sorry, no mailbox here by that name (#5.1.1 - chkuser)", "unknown_recipient"),
    # vpopmail's delivery agent: DerDakon/vpopmail@b0aaeda:vdelivermail.c (vexiterr).
    ("vdelivermail: deferred, database down", "temp_failure"),
    ("vdelivermail: invalid syntax in .qmail-default file", "temp_failure"),
    ("Unable to launch qmail-inject.", "temp_failure"),
    ("user is over quota", "mailbox_full"),
    ("vdelivermail: account is locked email bounced alice@example.org", "mailbox_disabled"),
    ("Sorry, no mailbox here by that name. (#5.1.1)", "unknown_recipient"),
    ("mail is looping", "loop"),
    # rblsmtpd: gurubert/ucspi-tcp@2d884a9:net/ucspi-tcp6-0.99a/src/rblsmtpd.c.
    ("451 temporary RBL lookup error", "network"),
    # OpenSMTPD filters: catap/opensmtpd-filter-dnsbl@96a4eae:main.c,
    # jdelic/opensmtpd-filter-dnsbl@85e0e76:main.go, Netsyms/opensmtpd-filters@0b69461:
    # src/opensmtpd_filters/spamhaus.py, poolpOrg/filter-checksenderdomain@8a766ff,
    # Al2Klimov/opensmtpd-filter-subjectstrings@8525ff9:src/main.rs,
    # marco-schm/opensmtpd-filter-mimetype@dc7df8a:internal/mail/checker.go.
    ("421 192.0.2.7 listed at zen.spamhaus.org", "dnsbl"),
    ("421 DNS error on zen.spamhaus.org", "network"),
    ("550 Your host is listed on blacklist zen.spamhaus.org", "dnsbl"),
    (
        "550 5.7.1 Blocked: listed: Your hostname is on a blocklist. Visit"
        " https://check.spamhaus.org/",
        "dnsbl",
    ),
    ("550 unknown sender domain", "sender_invalid"),
    ("550 Blacklisted keyphrase found", "content"),
    ("550 Policy violation: Forbidden MIME type: application/x-msdownload", "content"),
    ("550 Policy violation: Malformed mail headers", "message_format"),
    ("550 Policy violation: Empty mail", "message_format"),
    ("550 Policy violation: No valid headers", "message_format"),
    # Exim ACLs: Exim4U/src@2b95bca:etc/exim/ (exim.conf ACLs, exim-greylist.conf.inc).
    ("450 Number of sent emails has exceeded our IP limit. Come back later.", "rate_limit"),
    ("550 Number of failed recipients exceeded.  Come back in a few hours.", "rate_limit"),
    ("450 Host has been ratelimited.  You may try again at a later time.", "rate_limit"),
    ("451 Mail is suspicious. Please retry later.", "greylisting"),
    ("550 HELO error: Dropped spammer pretending to be us", "helo"),
    ("550 HELO error: Dropped IP-only or IP-starting helo", "helo"),
    ("550 HELO error: Polite folks say HELO first!", "protocol_sequence"),
    ("550 This message contains a MIME error (broken boundary)", "message_format"),
    ("550 This message contains malware (Eicar-Test-Signature)", "virus"),
    # HestiaCP's Exim template: hestiacp/hestiacp@0c1b86f:install/deb/exim/exim4.conf.template.
    ("554 Your host in blacklist on this server.", "dnsbl"),
    ("550 Blacklisted file extension detected", "content"),
    ("550 Access denied - Invalid HELO name (See RFC2821 4.1.3)", "helo"),
    ("550 Email account alice@example.org is sending too many emails", "rate_limit"),
    # Debian's exim4 ACLs: deb-store/exim4@d74e980:exim4_4.95-100.debian.tar.xz
    # (debian/debconf/conf.d/acl/30_exim4-config_check_rcpt and _check_data).
    (
        "550 sender envelope address alice@example.org is locally blacklisted here."
        " If you think this is wrong, get in touch with postmaster",
        "sender_rejected",
    ),
    (
        "550 sender IP address 192.0.2.1 is locally blacklisted here."
        " If you think this is wrong, get in touch with postmaster",
        "dnsbl",
    ),
    ("550 No verifiable sender address in message headers", "sender_invalid"),
    ("550 Rejected for too many bad recipients", "rate_limit"),
    ("550 header syntax", "message_format"),
    ("550 restricted characters in address", "syntax"),
    # ... the SPF check's DNS error is the network; a DMARC or SPF verdict stays theirs.
    ("451 Temporary DNS error while checking SPF record.  Try again later.", "network"),
    ("450 sender <alice@example.com> SPF Temporary Error", "spf"),
    # A scanner or signer of the receiver failing: sendmail milters, Apache James
    # (DKIMHook), Haraka's mongodb plugin (Helpmonks/haraka-plugin-mongodb@3d88329).
    ("451 4.3.0 Problem running virus-scanner", "temp_failure"),
    ("451 Failure computing DKIM signature.", "temp_failure"),
    ("451 storage error", "temp_failure"),
    # Haraka's domain-limit plugin: PartyPancakess/haraka-plugin-domain-limit@f5e98f0
    # (DENYSOFT for a recipient of a second domain in the transaction).
    (
        "450 Mail for this domain cannot be accepted right now; please retry.",
        "too_many_recipients",
    ),
    # Siblings of the other classes (wordings of the same refusals).
    (
        "550 5.7.703 Your message can't be delivered because messages to carol@example.net"
        " are blocked by the organization using the Tenant Allow/Block List.",
        "policy",
    ),
    ("553 Envelope sender mismatch with header From", "sender_mismatch"),
    ("553 Mail from 203.0.113.9 not allowed", "dnsbl"),
    (
        "450 4.7.1 <carol@example.net>: Recipient address rejected: you exceeded your daily limit",
        "rate_limit",
    ),
    ("550 sender address carol@example.net is locally blacklisted", "sender_rejected"),
    ("550 5.7.1 Sender or domain is blacklisted", "sender_rejected"),
    ("554 Your IP in blacklist on this server", "dnsbl"),
    ("550 198.51.100.4 is blacklisted", "dnsbl"),
    ("550 There is no valid sender in any header line", "sender_invalid"),
    ("550 203.0.113.5 is _my_ address", "helo"),
    ("554 5.6.0 MIME type message/partial not accepted here", "content"),
    # ... and the neighbours those words must not take.
    ("554 5.7.1 Rejected: bit.example is listed in multi.uribl.com", "spam"),
    ("550 5.7.1 Message contains a virus", "virus"),
]


#: The replies of the components heldout8's misses came from (indimail, iRedAPD,
#: policyd-weight, PolicyD v2, Haraka plugins, old OpenSMTPD, Exchange's codes), written
#: from their sources: the whole family of texts, not only the missed line.
HELDOUT8_CASES: list[tuple[str, str]] = [
    # indimail: indimail/indimail-mta@e95fb6c:indimail-mta-x/smtpd.c (smtp_relayreject,
    # err_badhelo, smtp_paranoid, smtp_ptr, err_mailbox, the BATV and CUGMAIL checks,
    # the masquerade check, err_nogateway's siblings).
    (
        "553 No mail accepted from an open relay (192.0.2.1); check your server configs (#5.7.1)",
        "dnsbl",
    ),
    ("553 sorry, helo domain must exist (#5.1.8)", "helo"),
    ("553 Bad sender's system address (#5.1.8)", "sender_invalid"),
    ("553 sorry, your HELO/EHLO greeting is in my badhelo list (#5.7.1)", "helo"),
    ("451 unable to accept non-FQDN HELO (#4.3.0)", "helo"),
    ("451 invalid HELO greeting for local (#4.3.0)", "helo"),
    (
        "553 sorry, this MTA does not accept masquerading/forging, auth <carol@example.net> #5.7.1",
        "sender_mismatch",
    ),
    ("553 sorry, this MTA is a closed user group system (#5.7.1)", "policy"),
    ("553 message format wrong (#5.7.1)", "message_format"),
    (
        "553 sorry, your IP address (192.0.2.1) PTR (reverse DNS) record points to wrong"
        " hostname (#5.7.1)",
        "reverse_dns",
    ),
    ("553 Sorry, no PTR (reverse DNS) record for (192.0.2.1) (#5.7.1)", "reverse_dns"),
    ("421 sorry, your IP (192.0.2.1) is temporarily denied (#4.7.1)", "dnsbl"),
    ("553 sorry, your envelope sender has been denied (#5.7.1)", "sender_rejected"),
    ("553 sorry, your envelope recipient has been denied (#5.7.1)", "policy"),
    ("553 sorry, badrcptto(no such user) (#5.7.1)", "unknown_recipient"),
    (
        "550 sorry, carol@example.net mailbox <dave@example.com> is absent on this domain (#5.1.1)",
        "unknown_recipient",
    ),
    (
        "550 sorry, carol@example.net mailbox <dave@example.com> is inactive on this domain"
        " (#5.2.1)",
        "mailbox_disabled",
    ),
    (
        "550 sorry, carol@example.net mailbox <dave@example.com> is overquota on this domain"
        " (#5.2.2)",
        "mailbox_full",
    ),
    ("557 sorry, too many recipients (#5.7.1)", "too_many_recipients"),
    ("451 greylist temporary failure - Timeout (#4.3.0)", "greylisting"),
    ("451 Sorry, there is a DNS temporary failure (#4.4.3)", "network"),
    ("553 sorry, bounce messages should have a single envelope recipient (#5.7.1)", "policy"),
    ("554 too many hops, this message is looping (#5.4.6)", "loop"),
    ("552 sorry, that message size exceeds my databytes limit (#5.3.4)", "size"),
    ("530 must issue STARTTLS first (#5.7.0)", "tls_required"),
    # iRedAPD: iredmail/iRedAPD@60b2eed:libs/__init__.py (SMTP_ACTIONS) and
    # libs/default_settings.py (GREYLISTING_MESSAGE, CHANGE_PASSWORD_MESSAGE), as Postfix
    # words a policy service's REJECT text.
    (
        "554 5.7.1 <dave@example.com>: Sender address rejected: Sender is not same as SMTP"
        " authenticate username",
        "sender_mismatch",
    ),
    (
        "554 5.7.1 <dave@example.com>: Sender address rejected: SMTP AUTH is required for"
        " users under this sender domain",
        "auth_required",
    ),
    (
        "554 5.7.1 <dave@example.com>: Recipient address rejected: Message size exceed"
        " (maybe caused by big attachment file)",
        "size",
    ),
    (
        "554 5.7.1 <dave@example.com>: Recipient address rejected: Message size is too large",
        "size",
    ),
    (
        "554 5.7.1 <dave@example.com>: Recipient address rejected: Too many recipients in"
        " single message",
        "too_many_recipients",
    ),
    (
        "554 5.7.1 <dave@example.com>: Recipient address rejected: Throttling quota exceeded",
        "rate_limit",
    ),
    (
        "451 4.7.1 <dave@example.com>: Recipient address rejected: Intentional policy"
        " rejection, please try again later",
        "greylisting",
    ),
    (
        "554 5.7.1 <dave@example.com>: Client host rejected: Blacklisted reverse DNS name of"
        " server IP address",
        "reverse_dns",
    ),
    (
        "554 5.7.1 <dave@example.com>: Sender address rejected: Password expired or never"
        " changed, please change your password in webmail before sending email",
        "auth_failed",
    ),
    # policyd-weight: policyd-weight/policyd-weight@18d2e97:policyd-weight ($DNSERRMSG,
    # $MAXDNSBLMSG).
    (
        "450 4.7.1 <dave@example.com>: Recipient address rejected: No DNS entries for your"
        " MTA, HELO and Domain. Contact YOUR administrator Your HELO: mail.example.com,"
        " IP: 192.0.2.1",
        "reverse_dns",
    ),
    (
        "550 5.7.1 <dave@example.com>: Recipient address rejected: Your MTA is listed in too"
        " many DNSBLs",
        "dnsbl",
    ),
    # PolicyD v2 (cluebringer): hummermania/policyd@820ca46:cbp/modules/Greylisting.pm,
    # CheckHelo.pm, CheckSPF.pm.
    (
        "554 5.7.1 <dave@example.com>: Recipient address rejected: Greylisting in effect,"
        " sending server blacklisted",
        "dnsbl",
    ),
    (
        "451 4.7.1 <dave@example.com>: Recipient address rejected: Greylisting in effect,"
        " please come back later",
        "greylisting",
    ),
    (
        "554 5.7.1 <dave@example.com>: Recipient address rejected: Invalid HELO/EHLO; No A"
        " or MX records found for 'mail.example.com'",
        "helo",
    ),
    (
        "554 5.7.1 <dave@example.com>: Recipient address rejected: Invalid HELO/EHLO; Must"
        " be a FQDN or an address literal, not 'localhost'",
        "helo",
    ),
    (
        "554 5.7.1 <dave@example.com>: Recipient address rejected: Invalid HELO/EHLO; Cannot"
        " resolve 'mail.example.com', no such domain",
        "helo",
    ),
    (
        "554 5.7.1 <dave@example.com>: Recipient address rejected: Invalid HELO/EHLO; HRP"
        " limit exceeded",
        "helo",
    ),
    # Haraka: haraka/Haraka@f47ba71:plugins/mail_from.blocklist.js;
    # haraka/haraka-plugin-limit@ef8189e:index.js (concurrency). "Connection concurrency
    # limit exceeded" is also Postfix anvil's word for the same limit.
    ("550 Mail from you is not allowed here", "sender_rejected"),
    ("421 Too many concurrent connections", "rate_limit"),
    ("421 connection concurrency limit exceeded", "rate_limit"),
    # sendmail's cf/README access map example (hrs-allbsd/sendmail@19036c0:cf/README).
    ("550 We don't accept mail from spammers", "sender_rejected"),
    # OpenSMTPD/OpenSMTPD smtpd/smtp_session.c of 2013 (the MFA era).
    ("553 No option supported on RCPT TO", "syntax"),
    ("530 Hello rejected", "helo"),
    # Exchange: Microsoft's NDR list and ASxxx page
    # (x13-me/OfficeDocs-Exchange@7d3f4a3, @e3a95b4: 4.7.500-699 and 4.7.850-899 are IP
    # throttling), on-premises transport texts (5.1.7, 5.1.20, 4.4.316-318, SChannel).
    ("451 4.7.500 Access denied, please try again later", "rate_limit"),
    ("451 4.7.850 Access denied, please try again later", "rate_limit"),
    (
        "451 4.7.651 The mail server [192.0.2.1] has been temporarily rate limited due to IP"
        " reputation.",
        "rate_limit",
    ),
    (
        "550 5.1.20 Multiple From addresses are not allowed without Sender address",
        "message_format",
    ),
    ("450 4.4.318 Connection was closed abruptly (SuspiciousRemoteServerError)", "network"),
    # learn.microsoft.com "Use Telnet to test SMTP communication" (x13-me/OfficeDocs-
    # Exchange@316f63a: test-smtp-with-telnet.md); MicrosoftDocs/SupportArticles-docs
    # @051c368: mapiexceptionnotfound-ndr.md.
    ("550 5.1.7 Invalid address", "syntax"),
    # Exchange 5.x IMS refusing connections by IP (KB Q173279, jeffpar/kbarchive
    # @2dc5fc5:kb/173/Q173279/README.md); a 5xx "Access denied" stays weak.
    ("521 access denied", "dnsbl"),
    # The NDR list's 5.7.504, worded as Directory-Based Edge Blocking's 5.4.1.
    (
        "550 5.7.504 <carol@example.com>: Recipient address rejected: Access denied",
        "unknown_recipient",
    ),
    # Bare, it names no rule and gives no reason: `rejected` since round 21.
    ("554 Access denied", "rejected"),
    (
        "554 5.2.0 STOREDRV.Deliver.Exception:ObjectNotFoundException.MapiExceptionNotFound;"
        " Failed to process message due to a permanent exception with message Cannot get"
        " ID from name",
        "rejected",
    ),
    (
        "554 5.2.0 STOREDRV.Deliver.Exception:StoragePermanentException."
        "MapiExceptionCorruptData; Failed to process message due to a permanent exception",
        "rejected",
    ),
    ("450 4.4.316 Connection refused [Message=Socket error code 10061]", "network"),
    ("554 Unable to initialize security subsystem", "network"),
    # ... and the neighbours those words must not take.
    ("451 4.4.317 STARTTLS is required to send mail", "tls_required"),
    ("550 5.7.1 Policy rejection", "policy"),
    ("451 SPF lookup failure (#4.3.0)", "spf"),
    ("553 5.1.0 Sender address syntax error", "sender_invalid"),
]


#: The replies of the components heldout9's misses came from (Haraka's bounce, attachment
#: and helo.checks plugins, old Postfix, James 2.x and OpenSMTPD, OpenDKIM, sendmail, Exim
#: 3, Yahoo, Coremail), written from their sources: the whole family of texts, not only the
#: missed line.
HELDOUT9_CASES: list[tuple[str, str]] = [
    # Haraka: haraka/Haraka@2eae407:plugins/bounce.js (2016), every refusal of a bounce.
    ("550 No bounces accepted here", "policy"),
    ("550 this bounce message does not have 1 recipient", "policy"),
    ("550 bounce with non-empty Return-Path (RFC 3834)", "policy"),
    ("550 bounce without Message-ID in headers, unable to  verify that I sent it", "policy"),
    ("550 bounce with invalid Message-ID, I didn't send it.", "policy"),
    ("550 bounce Message-ID without valid domain, I didn't send it.", "policy"),
    ("550 bounce with non-local Message-ID (RFC 3834)", "policy"),
    ("550 Invalid bounce (spoofed sender)", "policy"),
    # haraka/Haraka@a274753:plugins/attachment.js and @2eae407 (content types, files).
    ("552 Message rejected: contains application/x-msdownload message part", "content"),
    ("550 Message rejected: contains unacceptable attachment (setup.exe)", "content"),
    ("550 Message contains unacceptable content type (application/x-msdownload)", "content"),
    ("550 Message contains encrypted archive", "content"),
    # haraka/Haraka@a274753 and @2eae407:plugins/helo.checks.js.
    ("550 RAW IP HELOs must be correctly formatted", "helo"),
    ("550 Host names have more than one DNS label", "helo"),
    ("550 HELO must have a dot", "helo"),
    ("550 That HELO not allowed here", "helo"),
    # Postfix: vdukhovni/postfix@17830e5 smtpd.c and postscreen/postscreen_smtpd.c (501
    # address syntax), @14ffa91 (snapshot-20001027) smtpd/smtpd_sasl_glue.c.
    ("501 5.1.7 Bad sender address syntax", "syntax"),
    ("501 5.1.3 Bad recipient address syntax", "syntax"),
    ("553 5.1.7 address incomplete", "syntax"),
    ("501 Authentication failed: malformed initial response", "syntax"),
    ("501 Error: malformed authentication response", "syntax"),
    ("535 Error: authentication failed", "auth_failed"),
    (
        "550 <a@example.net>: Sender address rejected: Address uses MX in loopback"
        " address space (127.0.0.0/8)",
        "sender_invalid",
    ),
    # Apache James 2.x: imyousuf/james@09b866e AuthCmdHandler.java; a mechanism not offered
    # is "a login method that is not allowed" (auth_failed's cause).
    ("504 Unrecognized Authentication Type", "auth_failed"),
    ("504 5.5.4 Unsupported authentication mechanism", "auth_failed"),
    # OpenSMTPD 2009: OpenSMTPD/OpenSMTPD@6516263:smtp_session.c.
    ("503 Invalid BODY", "syntax"),
    ("503 Need MAIL before RCPT", "protocol_sequence"),
    ("553 Sender address syntax error", "sender_invalid"),
    # OpenDKIM: trusteddomainproject/OpenDKIM@5c53958:opendkim/opendkim.c, its own
    # faults against the sender's signature.
    ("451 4.7.0 DKIM signing error", "temp_failure"),
    ("451 4.7.0 internal DKIM error", "temp_failure"),
    ("550 5.7.0 bad DKIM signature data", "dkim"),
    ("451 4.7.5 DKIM key retrieval failed", "dkim"),
    ("550 5.7.0 DKIM signature syntax error", "dkim"),
    # Sendmail's MX loop (sendmail 8.12 domain.c "MX list for %s points back to %s"),
    # Exim 3's relay refusal, recipients the server no longer has or cannot verify, an
    # old Yahoo forgery/abuse refusal, Yahoo's TS03 (help SLN3436), Coremail's "Local
    # user only or Authentication mechanism" (voku/PHPMailer-BMH@679dbf7
    # phpmailer-bmh_rules.php sample bounces).
    ("554 5.0.0 MX list for example.net. points back to mail01.example.com", "loop"),
    ("550 relaying to <user@example.com> prohibited by administrator", "relay_denied"),
    ("553 5.3.0 <user@example.com>... Recipient address no longer exists", "unknown_recipient"),
    ("550 User account no longer exists", "unknown_recipient"),
    (
        '550 "The recipient cannot be verified. Please check all recipients"',
        "unknown_recipient",
    ),
    ("553 VS10-RT Possible forgery or deactivated due to abuse (#5.1.1)", "sender_rejected"),
    ("421 4.7.1 [TS03] All messages from 192.0.2.1 permanently deferred", "dnsbl"),
    (
        "421 4.7.0 [TS02] Messages from 192.0.2.1 temporarily deferred due to volume",
        "rate_limit",
    ),
    ("550 Local user only or Authentication mechanism", "auth_required"),
    ("553 Local user only", "sender_mismatch"),
    # The other sample bounces of voku/PHPMailer-BMH@679dbf7 phpmailer-bmh_rules.php
    # in the same rule classes (inactive, full, command_reject, antispam).
    ("550 <user@example.com>... User account not activated", "mailbox_disabled"),
    ("550 <user@example.com>: User status is locked.", "mailbox_disabled"),
    ("422 User has exhausted allowed storage space", "mailbox_full"),
    ("422 Benutzer hat zuviele Mails auf dem Server", "mailbox_full"),
    ("500 Unauthorized relay msg rejected", "relay_denied"),
    ("550 Verify mailfrom failed,blocked", "sender_invalid"),
    # hrs-allbsd/sendmail@2cccd1c sendmail/srvrsmtp.c (8.12): a mechanism not offered too.
    ("504 5.3.3 AUTH mechanism DIGEST-MD5 not available", "auth_failed"),
    ("504 5.5.4 Encryption required for requested authentication mechanism", "tls_required"),
    # haraka/Haraka@a274753 and @2eae407 plugins/lookup_rdns.strict.js: the client's
    # PTR name, not a recipient domain.
    ("550 Sorry we could not find address for mail.example.com. NXDOMAIN", "reverse_dns"),
    ("450 Sorry we encountered an error when looking up mail.example.com.", "reverse_dns"),
]


#: Round 9: the classes of heldout10's misses, from the components' own texts.
HELDOUT10_CASES: list[tuple[str, str]] = [
    # MailCleaner/MailCleaner@02b0a86 etc/exim/exim_stage1.conf_template: its ACL texts
    # (greylistd's defer text, host/sender/recipient lists, BATV, submission port, TLS).
    (
        "451 198.51.100.4 is not yet authorized to deliver mail from <carol@example.net>"
        " to <dave@example.org>. Please try later.",
        "greylisting",
    ),
    (
        "450 2001:db8::4 is not yet authorized to deliver mail from <> to <d@example.org>",
        "greylisting",
    ),
    ("550 blacklisted host: 198.51.100.4", "dnsbl"),
    ("550 blacklisted host: 2001:db8::4", "dnsbl"),
    ("550 blacklisted sender: carol@example.net", "sender_rejected"),
    ("550 blacklisted recipient: dave@example.org", "policy"),
    ("550 This domain does not accept unsigned bounces.", "policy"),
    ("550 Invalid reverse path signature.", "policy"),
    ("550 Blacklisted in bl.spamcop.net: Blocked - see https://www.spamcop.net/bl.shtml", "dnsbl"),
    ("550 backscatterer blacklisted: listed in ips.backscatterer.org", "dnsbl"),
    ("550 Encryption is required from your domain", "tls_required"),
    ("550 This message contains malware (Eicar-Test-Signature)", "virus"),
    ("550 Message from example.net failed sender's DMARC policy, rejecting.", "dmarc"),
    ("550 refused user due to massive abuse", "sender_rejected"),
    ("550 This domain does not accept mail from itself (spoofing)", "sender_rejected"),
    # BytemarkHosting/symbiosis@caee857 email/exim4/symbiosis.d/10-acl/50-acl-check-rcpt/
    # 65-deny-blacklisted-hosts (by IP and by host name; the sender list).
    ("550 The IP or hostname used when connecting is locally blacklisted", "dnsbl"),
    ("550 Your email address is locally blacklisted.", "sender_rejected"),
    # sendmail: hrs-allbsd/sendmail srvrsmtp.c STARTTLS (the server's own TLS set-up,
    # "XXX this is an internal error"); amery/qmail@621f957 qmail-smtpd.c.
    ("454 4.3.3 TLS not available: error setting options", "temp_failure"),
    ("454 4.3.3 TLS not available: error set fd", "temp_failure"),
    ("454 4.3.3 TLS not available: error generating RSA temp key", "temp_failure"),
    ("454 TLS not available: unable to initialize ssl (#4.3.0)", "temp_failure"),
    # sendmail's mailer exit statuses (sm_sysexmsg; deliver.c giveresponse's "unknown
    # mailer error %d"): the local delivery program's permanent failures.
    ("554 5.3.0 unknown mailer error 1", "rejected"),
    ("554 5.3.0 <bob@example.org>... unknown mailer error 127", "rejected"),
    ("554 5.3.5 System file missing", "rejected"),
    ("550 5.0.0 Can't create output", "rejected"),
    ("554 5.3.5 Local configuration error", "rejected"),
    ("500 5.0.0 Command line usage error", "rejected"),
    # proxmox/pmg-api@05466a9 src/PMG/SMTP.pm: its filter's own replies.
    ("451 4.4.0 detected undelivered mail", "temp_failure"),
    ("451 4.5.0 Local delivery failed: unfinished data", "temp_failure"),
    # milter-regex/milter-regex@88a4b43 rules and @24727b6 milter-regex.8's examples.
    ("554 5.7.1 Malformed MAIL FROM (not an email address or <>)", "syntax"),
    ("554 5.7.1 Swen worm (caps)", "virus"),
    ("554 5.7.1 HTML mail not accepted", "content"),
    ("554 5.7.1 executable attachment from non-friends", "content"),
    ("554 5.7.1 Business Corp spam, get lost", "spam"),
    ("451 4.7.1 Sender IP address not resolving", "reverse_dns"),
    ("554 5.7.1 Command rejected", "rejected"),
    # rspamd reject texts: NethServer/nethserver-mail@0242c1e external_services.conf
    # (oletools) and multimap.conf; Mailu/Mailu@3662318 core/rspamd/conf/force_actions.conf.
    ("554 5.7.1 Message contains VBA macros", "content"),
    ("554 5.7.1 Office macros are not allowed", "content"),
    ("451 4.7.1 Please retry later (antivirus not ready)", "temp_failure"),
    ("451 4.7.1 Try again later: virus scanner not ready", "temp_failure"),
    ("554 5.7.1 Rejected (anti-spoofing: auth-failed)", "unauthenticated"),
    # iav/sid-milter@08552d4 sid-filter/sid-filter.c: its reject texts.
    ("550 5.7.1 can't identify domain in `undisclosed-recipients:;'", "message_format"),
    ("550 5.7.1 Rejected due to Sender-ID policy for sender carol@example.net", "spf"),
    ("550 5.7.1 Rejected due to SPF policy for sender carol@example.net", "spf"),
    # Al2Klimov/opensmtpd-filter-xn@0de1347 src/main.rs: the EHLO name.
    ("550 Non-ASCII HELO hostname", "helo"),
    # indimail/indimail-mta@16d6a6c indimail-mta-x/ofmipd.c: its AUTH texts;
    # @283907f smtp_plugin.c: a plugin's refusal without a reason.
    ("503 authorize your messages before sending", "auth_required"),
    ("451 unable to read cdb (#4.3.0)", "temp_failure"),
    ("451 unable to read control file rcpthosts (#4.3.0)", "temp_failure"),
    ("530 authentication required (#5.7.1)", "auth_required"),
    ("504 auth type unimplemented (#5.5.1)", "auth_failed"),
    ("550 denied by plugin", "rejected"),
    ("554 rejected by plugin (#5.7.1)", "rejected"),
    # AuspeXeu/haraka-plugin-access-auth@09ee3e7 index.js: the logged-in user's MAIL FROM.
    ("550 You are not authorized to send as this address", "sender_mismatch"),
    ("550 not allowed to send mail from the given address", "sender_mismatch"),
]


#: Round 10: the components' own texts of the classes heldout11's misses fell into (none of
#: them is a corpus line).
HELDOUT11_CASES: list[tuple[str, str]] = [
    # Moniter123/build-cdn@06c9bc2 _posts/2010-03-22-the-big-exim-tutorial.md: its Exim
    # ACLs ("$found_extension files are not accepted here" for com:exe:vbs:bat:pif:scr).
    ("550 scr files are not accepted here", "content"),
    ("550 vbs files are not accepted here", "content"),
    ("550 Client host rejected: no or inconsistent reverse DNS set.", "reverse_dns"),
    # BernardQuatermass/exim-wiki@07edf9a ExiscanFilenameBlocking.md: MIME and demime ACLs.
    ("550 Unwanted file extension (scr)", "content"),
    (
        "550 Bad attachment filename (invoice.exe): executable files are dangerous in email",
        "content",
    ),
    ("550 Bad attachment filename (game.scr): screensavers are dangerous in email", "content"),
    ("550 This message contains an unwanted binary Attachment in .ZIP file.", "content"),
    # A Postfix header_checks guide (code index file 46469723517, the text bsdforen/wiki
    # @2b969bb source/howto/postfix_dspam.txt.rst quotes): REJECT Sorry, we do not
    # accept .${3} file types.
    ("550 5.7.1 Sorry, we do not accept .scr file types.", "content"),
    ("550 5.7.1 Sorry, we do not accept .pif file types.", "content"),
    # kunishi/qmail-hg@0cb4617 doc/qmail-badremotehost.patch: err_brh(), a remote host
    # name matching the dynamic-looking patterns of control/badremotehost.
    ("<<< 450 sorry, your remotehost looks suspiciously like spammer. (#5.7.1)", "dnsbl"),
    # thc2cat/go-policyd@01a055e main.go: the SASL user's daily recipient quota.
    ("554 5.7.1 <END-OF-MESSAGE>: End-of-data rejected: quota exceeded", "rate_limit"),
    ("554 5.7.1 <carol@example.net>: Sender address rejected: quota exceeded", "rate_limit"),
    # Cogeto/cogeto@219283c project/services/mail/haraka/plugins/cogeto_deliver.js: the
    # intake's HTTP verdicts as Haraka replies.
    ("451 temporary intake failure", "temp_failure"),
    ("451 inbound intake temporarily unavailable", "temp_failure"),
    ("552 message too large", "size"),
    # msimerson/haraka-plugin-recipient-routes-probe@0db5e1e index.js: its rcpt hook.
    ("451 Backend error: Target MX parsing failed.", "temp_failure"),
    ("451 Backend error: LMTP delivery not supported (yet)", "temp_failure"),
    # A Haraka rcpt_to_mongo plugin (code index file 52024907965, repository not
    # identified): its DNS check and back-end faults.
    ("450 Could not verify DNS records for mail.example.net. Try again later.", "network"),
    ("450 Backend service is temporarily unavailable.", "temp_failure"),
    ("450 Temporary backend error during address validation.", "temp_failure"),
    # A hosting panel's Exim configuration (code index file 70092294132, repository not
    # identified): its MAIL, RCPT and DATA ACLs and routers.
    ("550 This mailbox cannot send as <carol@example.net>", "sender_mismatch"),
    ("550 Sending limit reached: at most 100 recipients an hour for each mailbox", "rate_limit"),
    ("550 The From address is not one of your mail domains", "sender_mismatch"),
    ("550 No such mailbox here", "unknown_recipient"),
    ("550 This message was rejected as spam (score 15.3)", "spam"),
    ("450 Greylisted, please try again later", "greylisting"),
    # pirulug/pirulugcp@4803a13 engine/templates/exim4/exim4.conf.tpl: its RCPT ACL.
    ("550 Relevo no permitido", "relay_denied"),
    # TheFrozenFire/CallFire-SMS-MTA@69583f8 plugins/queue/callfire_api_send.js.
    ("450 Sending failed due to service error", "temp_failure"),
    # U-L-M-S/digital-garden@49726dd RBL.md's Exim dnslists deny ("Rejected -
    # $sender_host_address is blacklisted"), for other client addresses.
    ("550 Rejected - 2001:db8::33 is blacklisted", "dnsbl"),
    ("550 Rejected - 198.51.100.7 is blacklisted", "dnsbl"),
    # A sendmail.mc's FEATURE(dnsbl) lines (code index file 960426528; as OpenBSD's
    # courtesan.mc, lattera/openbsd@19b3695 gnu/usr.sbin/sendmail/cf/cf/courtesan.mc):
    # custom texts that name only the list's FAQ page.
    (
        "550 5.7.1 Email rejected due to sending server misconfiguration"
        " - see http://www.ordb.org/faq/#why_rejected",
        "dnsbl",
    ),
    ("550 5.7.1 Spam blocked - see: http://spamcop.net/bl.shtml?198.51.100.7", "dnsbl"),
    # chkuser 2.0's chkuser_settings.h (code index file 33142850434): CHKUSER_RCPTMX_STRING
    # and CHKUSER_SENDERMX_STRING, the recipient's domain against the sender's.
    ("511 sorry, can't find a valid MX for rcpt domain (#5.1.1 - chkuser)", "unknown_recipient"),
    ("511 sorry, can't find a valid MX for sender domain (#5.1.1 - chkuser)", "sender_invalid"),
]


#: Round 11: the components' own texts of the classes heldout12's misses fell into (none of
#: them is a corpus line).
HELDOUT12_CASES: list[tuple[str, str]] = [
    # Moniter123/build-cdn@06c9bc2 _posts/2013-01-07-filtering-spam-with-exim-only.md:
    # its DATA ACL.
    (
        "550 Content Policy Restriction: Messages without To and CC headers are not permitted.",
        "message_format",
    ),
    (
        "550 Content Policy Restriction: Mails to undisclosed recipients are not permitted.",
        "message_format",
    ),
    # mxroute/da_server_updates@12a874d exim/exim.acl_check_message.pre.conf.
    ("550 This message has been rejected as spam", "spam"),
    # mxroute/da_server_updates@0078348 exim/exim.acl_check_recipient.pre.conf: its
    # spam_senders list.
    (
        "550 Your sending address has been blocked by admins see mxroutedocs.com for explanation",
        "sender_rejected",
    ),
    # go-smtp relays' MAIL FROM checks (code index files 68988475489, 57155732210,
    # 5821437339, 59241183020): a domain the account may not use, and a domain refused.
    ("550 5.7.1 Sender domain not permitted for this account", "sender_mismatch"),
    ("550 5.7.1 sender domain not permitted for this credential", "sender_mismatch"),
    ("553 Sender domain not permitted", "sender_rejected"),
    ("550 5.7.1 Sender domain not permitted", "sender_rejected"),
    # An Exchange audit script's transport rule (code index file 30864305262).
    ("550 5.7.1 Message attachment size over 10MB - email rejected.", "size"),
    # jose-marcio/j-chkmail@c71a296 include/j-reply.h: MSG_CONN_RATE, MSG_MSG_RATE and
    # the MSG_SHORT_*_RATE texts.
    ("451 4.3.2 Connection Rate", "rate_limit"),
    ("451 4.3.2 Message Rate", "rate_limit"),
    ("451 4.3.2 Recipient Rate : too high", "rate_limit"),
    # mxroute/da_server_updates@12a874d exim/exim.acl_check_message.pre.conf: the other
    # subject refusals of its DATA ACL.
    ('550 Emails containing "~|" in the subject line are not allowed', "content"),
    (
        "550 Emails from doclist.bounces.google.com containing emoji in the subject are not"
        " allowed",
        "content",
    ),
    # smf-sav.c (code index file 36004198303): the callout's permanent failure stays the
    # sender's, its temporary one (round 11's rule) does not take it.
    ("550 5.1.8 Sender address verification failed, check your MX", "sender_invalid"),
    # A Haraka queue plugin (code index file 18997317256): its other queue-hook answers.
    ("451 Inbound processing is temporarily disabled", "temp_failure"),
    ("451 Temporary queueing failure, please retry", "temp_failure"),
    # leonamp/SPFBL@0179053 client/spfblpostfix.pl: its other sender answers.
    ("554 5.7.1 SPFBL sender has non-existent internet domain.", "sender_invalid"),
    ("554 5.7.1 SPFBL carol@example..net is not a valid e-mail address.", "sender_invalid"),
]


#: Round 12: the components' own texts of the classes heldout13's misses fell into (none of
#: them is a corpus line), each with the category and the fix it must get.
HELDOUT13_CASES: list[tuple[str, str, str]] = [
    # Google's "Gmail SMTP errors and codes" page (support.google.com/a/answer/3726730),
    # version of 2026-02-15 archived in azumakuniyuki/feb-2024-no-auth-no-entry@2558299
    # google-3726730-smtp-errors-and-codes/text/: its other 4.7.28 texts, whatever they
    # name (a DKIM or SPF domain, a URL domain, the IP).
    (
        "421 4.7.28 Gmail has detected an unusual rate of unsolicited email originating from"
        " your DKIM domain example.org. To protect our users from spam, email sent from your"
        " domain has been temporarily rate limited.",
        "rate_limit",
        "reduce_rate",
    ),
    (
        "421 4.7.28 Gmail has detected an unusual rate of unsolicited email originating from"
        " your SPF domain example.org. To protect our users from spam, email sent from your"
        " domain has been temporarily rate limited.",
        "rate_limit",
        "reduce_rate",
    ),
    (
        "421 4.7.28 Gmail has detected an unusual rate of unsolicited email containing one of"
        " your URL domains. To protect our users from spam, email with the URL has been"
        " temporarily rate limited.",
        "rate_limit",
        "reduce_rate",
    ),
    (
        "421 4.7.28 Gmail has detected an unusual rate of email originating from your IP"
        " address 192.0.2.1. To protect our users from spam, email sent from your IP address"
        " has been temporarily rate limited.",
        "rate_limit",
        "reduce_rate",
    ),
    # The same page: its other header-limit texts are the message's form; its message size
    # text stays a size.
    (
        "552 5.3.4 Your message exceeded Google's message header size limits. Messages must"
        " not exceed 1000 total header bytes or 100 header fields.",
        "message_format",
        "fix_client",
    ),
    (
        "552 5.3.4 The size of one of the header values (2000 bytes) exceeds Google's limit of"
        " 1000 bytes per individual header size.",
        "message_format",
        "fix_client",
    ),
    (
        "552 5.3.4 Your message has a Subject: header that exceeds Google's message header"
        " size limits.",
        "message_format",
        "fix_client",
    ),
    (
        "552 5.3.4 The size of your message (30000000 bytes) exceeded Google's message size"
        " limits of 25000000 bytes.",
        "size",
        "shrink_message",
    ),
    # SPFBL's other clients (code index files 44380291885, 44573969879: Postfix policy
    # clients in Perl; 44325855848: an Exim ACL): the transient SPF error with the sender.
    (
        "451 4.7.1 [SPF] A transient error occurred when checking SPF record from"
        " alice@example.org, preventing a result from being reached. Try again later.",
        "network",
        "retry_later",
    ),
    (
        "451 A transient error occurred when checking SPF record from alice@example.org,"
        " preventing a result from being reached. Try again later.",
        "network",
        "retry_later",
    ),
    # The Go submission policy service's tests (code index file 61968663367): a mailbox
    # suspended by hand.
    (
        "554 5.7.1 <bob@example.org>: Recipient address rejected: Sending from this mailbox is"
        " suspended: manual",
        "sender_rejected",
        "contact_postmaster",
    ),
    # go-milter's and NetGet's copies of the pymilter sample (code index files
    # 71572008007, 71325243909).
    ("550 5.7.1 go-milter refuses spammers", "sender_rejected", "contact_postmaster"),
    ("550 5.7.1 NetGet refuses spammers", "sender_rejected", "contact_postmaster"),
    # Servers' own answer to a second AUTH (a LumiSoft-style server, code index file
    # 22923682686), as the Exim guide's ACL text.
    ("503 already authenticated", "protocol_sequence", "fix_client"),
]


#: Round 13: the components' own texts of the classes heldout14's misses fell into (none of
#: them is a corpus line), each with the category and the fix it must get.
HELDOUT14_CASES: list[tuple[str, str, str]] = [
    # spamilter (nkhorman/spamilter@4acab0d src/hndlrs.c, mlfi_setreply): its no-reason
    # reply with another PolicyUrl, and its other texts with a reason.
    (
        "550 5.7.1 Rejecting due to security policy. Please see:"
        " https://mail.example.net/antispam.html#general",
        "rejected",
        "contact_postmaster",
    ),
    (
        "550 5.7.1 Rejecting due to security policy - Recipient undeliverable, Please see:"
        " http://www.example.com/policy.html#undeliverablerecipient",
        "unknown_recipient",
        "fix_recipient",
    ),
    (
        "550 5.7.1 Rejecting due to security policy - Invalid hostname 'mailhost', Please see:"
        " http://www.example.com/policy.html#invalidhostname",
        "helo",
        "fix_dns",
    ),
    # The pymilter milter bms (sdgathman/milter@fbe9650 bms.py): its header parse error
    # (as its boundary error) and its "No soliciting" for spam words in the From name.
    (
        "554 5.7.7 Header parse error in your message, are you a spammer?",
        "message_format",
        "fix_client",
    ),
    ("550 5.7.1 No soliciting", "spam", "clean_content"),
    # tpolicyd (caquino/tpolicyd@ba019f3 rules.py), in Postfix's reply form: its second
    # HELO check (the HELO is the recipient's domain) and its client block list.
    (
        "554 5.7.1 <bob@example.org>: Recipient address rejected: Rejeitado pelo sistema"
        " antispam (PLC-HLO-2)",
        "helo",
        "fix_dns",
    ),
    (
        "554 5.7.1 <bob@example.org>: Recipient address rejected: Rejeitado pelo sistema"
        " antispam (PLC-BLK)",
        "dnsbl",
        "delist_ip",
    ),
    # PolicyD v2's sample sender quota (eniltonangelim/cbpolicyd@f63829e, "Limit Sender
    # Quota", DEFER), in the sender restriction's reply form.
    (
        "450 4.7.1 <alice@example.com>: Sender address rejected: User has been deferred for"
        " five minutes",
        "rate_limit",
        "reduce_rate",
    ),
    # The Haraka profile plugin's active RCPT text (code index file 16075877493,
    # DENYDISCONNECT, answered 550).
    (
        "550 User alice not allowed to send to rcpt bob@example.org",
        "auth_failed",
        "fix_credentials",
    ),
    # relaydelay's other greylisting pretexts (eharris/greylisting@6166763
    # sendmail-milter/relaydelay/relaydelay.c, tfail_msg, answered 451 4.7.1).
    ("451 4.7.1 MTA slipped and fell. Retransmit message, please", "greylisting", "retry_later"),
    (
        "451 4.7.1 Mail system bogged down-- retransmit your message, please",
        "greylisting",
        "retry_later",
    ),
    # milter-ahead (SirWumpus/milter-ahead@7d27efa milter-ahead.c, HOP_INFO_FORMAT): an
    # internal server that is no SMTP server.
    (
        "554 server mx1.example.org for <bob@example.org> provides no SMTP service",
        "network",
        "retry_later",
    ),
    # Exchange Online's NDR table (x13-me/OfficeDocs-Exchange@316f63a): the 5.7.32x forms
    # of its DANE/TLS texts and 4.7.325.
    (
        "5.7.321 starttls-not-supported: Destination mail server must support TLS to receive mail.",
        "network",
        "retry_later",
    ),
    ("5.7.323 tlsa-invalid: The domain failed DANE validation.", "network", "retry_later"),
    (
        "4.7.325 certificate-host-mismatch: Remote certificate MUST have a common name or"
        " subject alternative name matching the hostname (DANE)",
        "network",
        "retry_later",
    ),
]


#: Round 14: the components' own texts of the classes heldout15's misses fell into (none of
#: them is a corpus line), each with the category and the fix it must get. A text that is
#: one fixed constant in its source is given in the form a sending MTA reports it
#: (qmail-remote's "does not like recipient" report, Exchange's "Remote Server returned").
HELDOUT15_CASES: list[tuple[str, str, str]] = [
    # mailfront (bruceg/mailfront@24d2b7d backend-qmail.c, parse_status): qmail-queue's
    # exit codes 73 and 74, the queue's own connection to a mail server.
    ("451 4.3.0 Connection to mail server rejected.", "network", "retry_later"),
    ("451 4.3.0 Communication with mail server failed.", "network", "retry_later"),
    # qmail-smtpd's text for the same exit 56 (netqmail qmail-smtpd.c, qq->flagerr
    # switch; Qsmtp's "451 4.3.0 qq trouble making network connection").
    ("451 qq trouble making network connection (#4.3.0)", "network", "retry_later"),
    # mailfront (plugin-clamav.c): the scanner's host name did not resolve.
    ("451 4.3.0 Could not resolve virus scanner hostname", "temp_failure", "retry_later"),
    # mailfront (protocol-smtp.c of earlier versions, without enhanced codes).
    (
        "503 Too many unimplemented commands.\nClosing connection.",
        "syntax",
        "fix_client",
    ),
    # mailfront (mailfront.c, resp_no_rcpt) as qmail-remote reports it.
    (
        "192.0.2.25 does not like recipient.\nRemote host said: 550 5.1.0 Mail system is not"
        " configured to accept that recipient\nGiving up on 192.0.2.25.",
        "relay_denied",
        "authenticate",
    ),
    # mailfront (plugin-rbl.c, resp_dnserror) as qmail-remote reports it.
    (
        "192.0.2.25 does not like sender.\nRemote host said: 451 4.3.0 DNS error doing RBL"
        " lookup\nI'm not going to try again; this message has been in the queue too long.",
        "network",
        "retry_later",
    ),
    # Mail::Qmail::Filter (fany/Mail-Qmail-Filter@886de56): RequireFrom's reject_text
    # with another address, ValidateFrom's with another bad address, CalloutVerify's
    # "no valid MX" and its callout answer for a From address (VerifyFrom) whose MX
    # quotes Postfix's unknown-user text.
    ("554 <info@example.org> not allowed as RFC5322.From", "sender_mismatch", "fix_sender"),
    (
        "554 Invalid e-mail address <a.@example.org> in From header line",
        "message_format",
        "fix_client",
    ),
    ("554 Domain example.org of sender has no valid MX.", "sender_invalid", "fix_sender"),
    (
        "554 According to mx.example.org, your From address <x@example.org> isn't a working"
        " e-mail address: 550 5.1.1 <x@example.org>: Recipient address rejected: User"
        " unknown in local recipient table",
        "sender_invalid",
        "fix_sender",
    ),
    # policyd-py (thiennl/policyd-py@f44fe1c policyd_py/validation/validator.py), in
    # Postfix's reply form: its recipient syntax check.
    (
        "554 5.7.1 <a@example.org>: Recipient address rejected: Invalid recipient email syntax",
        "syntax",
        "fix_client",
    ),
    # Qsmtp (DerDakon/Qsmtp@24fc93d): forcestarttls (filters/boolean.c), a bare CR/LF
    # (data.c) and the client write error (qsmtpd.c), as qmail-remote reports them; the
    # SPF temperror (filters/spf.c) over two lines of a report.
    (
        "192.0.2.25 does not like recipient.\nRemote host said: 501 5.7.1 recipient requires"
        " encrypted message transmission\nGiving up on 192.0.2.25.",
        "tls_required",
        "use_tls",
    ),
    (
        "192.0.2.25 failed after I sent the message.\nRemote host said: 500 5.5.2 bad <CRLF>"
        " sequence",
        "message_format",
        "fix_client",
    ),
    (
        "82.25.244.224 does not like recipient.\nRemote host said: 450 4.5.0 transmission"
        " error, please try again\nGiving up on 82.25.244.224.",
        "network",
        "retry_later",
    ),
    (
        "192.0.2.25 does not like sender.\nRemote host said: 451 4.4.3 temporary error when"
        " checking the SPF policy\nGiving up on 192.0.2.25.",
        "network",
        "retry_later",
    ),
    # sendmail (cf/cf/knecht.mc, CheckContentDisposition) as Exchange's report quotes it.
    (
        "Remote Server returned '553 Illegal Content-Disposition'",
        "message_format",
        "fix_client",
    ),
    # Exchange Server (SmtpResponse RequireEhloToSendMail; BucketedSmtpProbe's EOP
    # pattern "Client host .* rejected by recipient domain" with another IP; AckReason
    # STOREDRV and SMTPSEND texts) in its own report form.
    (
        "Remote Server returned '451 4.5.0 Require EHLO to send mail'",
        "protocol_sequence",
        "fix_client",
    ),
    (
        "550 5.7.1 Service unavailable; Client host [198.51.100.7] rejected by recipient domain",
        "dnsbl",
        "delist_ip",
    ),
    (
        "Remote Server returned '550 5.7.9 STOREDRV.Deliver; Recipient mailbox quarantined.'",
        "mailbox_disabled",
        "contact_recipient",
    ),
    (
        "Remote Server returned '430 4.2.0 STOREDRV; mailbox logon failure'",
        "temp_failure",
        "retry_later",
    ),
    (
        "Remote Server returned '554 5.4.4 SMTPSEND.DNS.InvalidData; DNS returned an invalid"
        " response for this domain'",
        "network",
        "retry_later",
    ),
    (
        "Remote Server returned '550 5.7.1 Client does not have permissions to send on behalf"
        " of the from address'",
        "sender_mismatch",
        "fix_sender",
    ),
    # mailman-milter (AGWA/mailman-milter@c307368 mailman-milter.cpp) and the Haraka
    # profile plugin (a4i/haraka-plugin-pg-profile@ebe081b index.js), as qmail-remote
    # reports them.
    (
        "192.0.2.25 does not like recipient.\nRemote host said: 550 5.7.1 Rejected by Mailman"
        " - please make sure you are sending from correct address\nGiving up on 192.0.2.25.",
        "policy",
        "contact_recipient",
    ),
    (
        "192.0.2.25 failed after I sent the message.\nRemote host said: 550 Envelope and body"
        " FROM mismatch",
        "sender_mismatch",
        "fix_sender",
    ),
]


#: Round 15: the components' own texts of the classes heldout16's misses fell into, and of
#: the lines only the regenerated word model had right (none of them is a corpus line),
#: each with the category and the fix it must get. A text that is one fixed constant in
#: its source is given in the form a sending MTA reports it (Postfix's "said: ... (in
#: reply to ...)").
HELDOUT16_CASES: list[tuple[str, str, str]] = [
    # The Exim wiki (BernardQuatermass/exim-wiki@c7cdb45): AclHeloTricks' other "(HELO was
    # $sender_helo_name ...)" texts.
    (
        "550 No you are not Me or OURS (HELO was mail.example.org and the subdomain is my"
        " domain example.org)",
        "helo",
        "fix_dns",
    ),
    (
        "550 Helo name contains a ip address (HELO was 192-0-2-7.example.net) and not is valid",
        "helo",
        "fix_dns",
    ),
    ("550 Invalid domain or IP given in HELO/EHLO (HELO was mailhost)", "helo", "fix_dns"),
    # BlackLists.md: a right-hand-side list looked up with $sender_address_domain.
    (
        "550 REJECTED - example.net is blacklisted at nomail.rhsbl.sorbs.net; Domain has no mail",
        "sender_rejected",
        "contact_postmaster",
    ),
    # BlockCracking.md: the connect ACL's text for an IP on its own list.
    (
        "550 192.0.2.25 locally blacklisted for a bruteforce auth (username+password) cracking"
        " attempt",
        "dnsbl",
        "delist_ip",
    ),
    # DbLessGreyListing.md (its second recipe) and DbLessGreyListingC.md's defer texts.
    ("450 Deferred RCPT: Temporary failure", "greylisting", "retry_later"),
    ("450 Deferred: Temporary error, please try again later", "greylisting", "retry_later"),
    # FAQ Q0738 with another count; Q0906 (its first sentence alone).
    ("550 Max 10 failed recipients allowed", "rate_limit", "reduce_rate"),
    (
        "550 RFC2822 says that all mail SHOULD have a Message-ID header.",
        "message_format",
        "fix_client",
    ),
    # chkuser (brdelphus/qmail@10fbe70aa chkuser_settings.h, CHKUSER_MAXWRONGRCPT_STRING of
    # another version) and qmail-spp's rcptchecks (policy(), over the invalid-recipient
    # limit).
    (
        "550 5.5.3 sorry, you are violating our security policies (#5.1.1 - chkuser)",
        "rate_limit",
        "reduce_rate",
    ),
    (
        "571 sorry, you are violating our security policies (#5.7.1 - rcptchecks)",
        "rate_limit",
        "reduce_rate",
    ),
    # rspamd (rspamd/rspamd@eaac8e914) as a Postfix milter: mx_check's
    # reject_null_mx_message with a 550 (a milter's own code), message.c's GTUBE action
    # message and aws_s3's soft reject, as Postfix reports them.
    ("550 5.7.1 Domain published RFC 7505 Null MX", "sender_invalid", "fix_sender"),
    (
        "host mx.example.org[192.0.2.25] said: 554 5.7.1 Gtube pattern (in reply to end of DATA"
        " command)",
        "spam",
        "clean_content",
    ),
    ("451 4.7.1 S3 save failed: connection refused", "temp_failure", "retry_later"),
    # amavisd-new's tempfail "Error in processing, id=..., <stage> FAILED: <reason>" for
    # other stages.
    (
        "451 4.5.0 Error in processing, id=12345-01, virus_scan FAILED: virus_scan: ALL VIRUS"
        " SCANNERS FAILED",
        "temp_failure",
        "retry_later",
    ),
    (
        "451 4.5.0 Error in processing, id=12345-02, spam_scan FAILED: SpamAssassin timed out",
        "temp_failure",
        "retry_later",
    ),
    # Zimbra's milter (Zimbra/zm-mailbox@2b7f9787c MilterHandler.java) with other lists.
    (
        "571 571 Sender is not allowed to email this distribution list: all@example.org",
        "policy",
        "contact_recipient",
    ),
    (
        "571 571 Recipient alice@example.org is not allowed to forward to this distribution"
        " list: all@example.org",
        "policy",
        "contact_recipient",
    ),
    # Ajenti V's Exim template (Eugeny/ajenti-v@d3b760865 vh-mail/templates.py) as
    # Postfix reports it.
    (
        "host mx.example.org[192.0.2.25] said: 550 Message headers fail syntax check (in reply"
        " to end of DATA command)",
        "message_format",
        "fix_client",
    ),
    # PyPolicyd (monemasrl/pypolicyd@028ee42 policy_daemon.py) in a sender restriction.
    (
        "554 5.7.1 <alice@example.org>: Sender address rejected: Unauthorized - user not found"
        " in policy rules",
        "auth_failed",
        "fix_credentials",
    ),
    # haraka-plugin-auth-etcd-config (PartyPancakess@baea0a3d3 index.js) as DENY.
    (
        "550 Authentication failed! This user does not have permission for this domain.",
        "sender_mismatch",
        "fix_sender",
    ),
    # The qmail-spp helodnscheck plugins (piwai/qmail-helo-check-plugin@39dba0169): another
    # gai_strerror text.
    ("553 sorry, No address associated with hostname (#5.7.1)", "helo", "fix_dns"),
    # pypolicyd-spf (mstraubAC/spf-engine-debian@bbb3b8c) with pyspf's TCP fallback
    # TempError, for a HELO check.
    (
        "450 4.7.24 <bob@example.org>: Recipient address rejected: Message deferred due to:"
        " SPF Temporary Error: DNS: TCP Fallback error: timeout. Please see"
        " http://www.openspf.net/Why?s=helo;id=mail.example.net;ip=192.0.2.25;r=<UNKNOWN>",
        "network",
        "retry_later",
    ),
    # The Exim wiki's Exiscan pages and FAQ, the texts beside the lines only the model had
    # right: ExiscanBugBlocking, ExiscanContentBlocking, Q0419 and Q0714.
    (
        "550 This message contains a broken MIME container (Long MIME Boundary). Length: 1500",
        "message_format",
        "fix_client",
    ),
    ("550 Boundary length too long: 2000 characters (max 1024)", "message_format", "fix_client"),
    (
        "host mx.example.org[192.0.2.25] said: 550 This message contains an unwanted"
        " Embedded-CGI mime (in reply to end of DATA command)",
        "content",
        "clean_content",
    ),
    (
        "host mx.example.org[192.0.2.25] said: 450 only one recipient at a time (in reply to"
        " RCPT TO command)",
        "too_many_recipients",
        "reduce_rate",
    ),
    ("550 The domain example.net is obsolete", "unknown_recipient", "fix_recipient"),
    ("550 that domain is deliberately rejected", "policy", "contact_recipient"),
    # Earlier tuning lines' components: spamilter (nkhorman/spamilter@4acab0d hndlrs.c)
    # with another PolicyUrl, Exim4U's exim_surbl.pl with other lists, and Alibaba Mail's
    # error list entry as Postfix reports it.
    (
        "550 5.7.1 Rejecting due to security policy - Blacklisted body host, Please see:"
        " http://mail.example.org/policy.html#bodyurldbl",
        "content",
        "clean_content",
    ),
    (
        "550 Blacklisted URL in message. (example.org) in [jp] [ws]. See"
        " http://www.surbl.org/lists.html.",
        "content",
        "clean_content",
    ),
    (
        'host mx.example.cn[192.0.2.25] said: 553 "RCPT TO" mailbox unavailable (in reply to'
        " RCPT TO command)",
        "mailbox_disabled",
        "contact_recipient",
    ),
]


#: Round 16: the classes of natural2's misses (a natural-frequency sample), written
#: from the components' own texts and variants of them, not the missed lines.
NATURAL2_CASES: list[tuple[str, str, str]] = [
    # Postfix smtpd_check.c: a REJECT in a check_client_access table ("Access denied"
    # is its default text); no list, no reason.
    (
        "554 5.7.1 <unknown[192.0.2.9]>: Client host rejected: Access denied",
        "rejected",
        "contact_postmaster",
    ),
    ("550 5.7.1 Client host rejected: Access denied", "rejected", "contact_postmaster"),
    # Postfix's reject_rbl_client reply where the list's name was cut from the log.
    (
        "554 5.7.1 Service unavailable; Client host [192.0.2.9] blocked using ; see site",
        "dnsbl",
        "delist_ip",
    ),
    # Comcast's BL codes (postmaster.comcast.net/smtp-error-codes.php).
    (
        "554 resimta-ch2-18v.sys.comcast.net comcast 192.0.2.9 Comcast block for spam. Please"
        " see http://postmaster.comcast.net/smtp-error-codes.php#BL000010",
        "dnsbl",
        "delist_ip",
    ),
    ("550 192.0.2.9 is blacklisted", "dnsbl", "delist_ip"),
    # A panel's access lists.
    ("550 No access from your IP address", "dnsbl", "delist_ip"),
    ("550 Sorry, no access for this sender", "sender_rejected", "contact_postmaster"),
    # Amazon SES's MessageRejected.
    (
        "554 Message rejected: Email address is not verified. The following identities failed"
        " the check in region US-EAST-1: sender@example.com",
        "sender_mismatch",
        "fix_sender",
    ),
    # sendmail: the host map (DNS) lookup deferred, an I/O error on the connection.
    ("host map: lookup (example.org): deferred", "network", "retry_later"),
    ("Deferred: IO error", "network", "retry_later"),
    # Exim deliver.c: a local transport's program failed.
    (
        "Child process of local_delivery transport returned 75 (could mean temporary error)"
        " from command: /usr/bin/procmail",
        "temp_failure",
        "retry_later",
    ),
    # Exchange's prose delivery reports.
    (
        "The recipient's e-mail system isn't accepting messages now. Please try resending"
        " this message later.",
        "temp_failure",
        "retry_later",
    ),
    (
        "The e-mail system was unable to deliver the message, but did not report a specific"
        " reason.",
        "rejected",
        "contact_postmaster",
    ),
    # sendmail rulesets, and mail programs' sender wording.
    ("553 Sender domain must resolve", "sender_invalid", "fix_sender"),
    ("Unrecognized sender address", "sender_invalid", "fix_sender"),
    # qmail-remote.c's report lines without a quoted reply; an ACL's "don't like".
    ("Failed on DATA command.", "rejected", "contact_postmaster"),
    ("The client has been rejected", "rejected", "contact_postmaster"),
    ("550 We do not like this sender", "sender_rejected", "contact_postmaster"),
    # Bare refusals with a permanent code.
    ("554 Service unavailable", "rejected", "contact_postmaster"),
    ("550 5.7.1 <bob@example.com>... Message blocked", "rejected", "contact_postmaster"),
    # ... which the specific texts still beat.
    ("421 Service unavailable - try again later", "temp_failure", "retry_later"),
    ("550 5.7.1 Message blocked as spam", "spam", "clean_content"),
]

#: Round 17: the classes of natural3's misses, as round 16 (variants, not the lines).
NATURAL3_CASES: list[tuple[str, str, str]] = [
    ("Host not found.", "unknown_recipient", "fix_recipient"),
    # ... and a resolver's temporary failure stays the network's.
    (
        "Host or domain name not found. Name service error for name=example.org type=MX:"
        " Host not found, try again",
        "network",
        "retry_later",
    ),
    ("550 Not delivering to previously bounced address", "unknown_recipient", "fix_recipient"),
    ("554 5.5.1 no valid recipients, bye", "unknown_recipient", "fix_recipient"),
    ("554 5.7.1 Spam violation, message refused", "spam", "clean_content"),
    ("553 Mail from refused: spam site", "sender_rejected", "contact_postmaster"),
    ("451 4.7.0 DMARC lookup failed, try again later", "dmarc", "fix_spf_dkim_dmarc"),
    ("554 Connection refused", "rejected", "contact_postmaster"),
    # A delivery report's connection failure (no reply code) stays the network's.
    ("connect to mx.example.org[192.0.2.1]:25: Connection refused", "network", "retry_later"),
    ("550 Unconfigured Sending Domain <example.org>", "sender_mismatch", "fix_sender"),
    ("553 Domain not allowed in From header", "sender_mismatch", "fix_sender"),
    ("452 4.7.1 The limits for your account have been exceeded", "rate_limit", "reduce_rate"),
    ("550 Sending quota exhausted", "rate_limit", "reduce_rate"),
    ("421 4.7.0 Messages from 192.0.2.1 temporarily deferred", "rate_limit", "reduce_rate"),
    ("554 message refused AUP#POL", "policy", "contact_recipient"),
    ("550 5.7.1 Relaying rejected", "relay_denied", "authenticate"),
    (
        "550 5.7.1 Message rejected: message contains a domain listed in the Spamhaus DBL",
        "content",
        "clean_content",
    ),
    # Review rev97: what those rules must leave to the others (F2 to F6).
    ("550 Mail from refused: SPF check failed", "spf", "fix_spf_dkim_dmarc"),
    ("550 5.7.1 MAIL FROM refused, authentication required", "auth_required", "authenticate"),
    (
        "530 5.7.0 MAIL FROM refused: must issue a STARTTLS command first",
        "tls_required",
        "use_tls",
    ),
    ("550 Sender domain listed in the Spamhaus DBL", "sender_rejected", "contact_postmaster"),
    ("451 4.4.0 Host not found", "network", "retry_later"),
    (
        "552 5.2.2 <bob@example.org>: account quota exceeded",
        "mailbox_full",
        "contact_recipient",
    ),
    ("550 5.1.1 Mailbox unavailable or access denied", "unknown_recipient", "fix_recipient"),
    ("550 Mailbox unavailable or access denied [MJxx]", "rate_limit", "reduce_rate"),
    ("501 5.1.8 Domain must resolve", "sender_invalid", "fix_sender"),
]

#: Round 18: the classes of natural5's misses (variants, not the lines).
NATURAL5_CASES: list[tuple[str, str, str]] = [
    ("550 Not accepting mail for this account", "mailbox_disabled", "contact_recipient"),
    ("550 5.1.1 Recipient not in the route list", "unknown_recipient", "fix_recipient"),
    ("451 Message could not be saved, try again later", "temp_failure", "retry_later"),
    ("501 Authentication cancelled", "auth_failed", "fix_credentials"),
    ("Error (terminated; signal 15)", "temp_failure", "retry_later"),
    ("553 Delivery is not allowed to this address.", "relay_denied", "authenticate"),
    (
        "550 5.7.1 [192.0.2.7] Connection refused due to abuse. Please see"
        " http://mailspike.org/iplookup.html",
        "dnsbl",
        "delist_ip",
    ),
    ("550 Incorrect sender header", "sender_mismatch", "fix_sender"),
    (
        "550 Sender Rejected - MAILFROM must be a valid domain",
        "sender_invalid",
        "fix_sender",
    ),
    (
        "554 Access denied: User `arn:aws:iam::123456789012:user/smtp' is not authorized to"
        " perform `ses:SendEmail' on resource `arn:aws:ses:eu-west-1:123456789012:identity/x'",
        "auth_failed",
        "fix_credentials",
    ),
    ("550 Connection rejected", "rejected", "contact_postmaster"),
    # ... which a list's name or a reason still beats.
    ("554 Connection rejected: listed at zen.spamhaus.org", "dnsbl", "delist_ip"),
]

#: Round 20: the classes of natural6's misses (variants, not the lines): Yandex's and the
#: Korean portals' own texts, Exchange 2003's reason-less refusal, Fastmail's header
#: address, Exim's "self" check and callouts, bounce tables' bare Postfix and list texts.
NATURAL6_CASES: list[tuple[str, str, str]] = [
    (
        "550 5.7.1 Blocked by spam statistics - see https://yandex.com/support/mail/",
        "dnsbl",
        "delist_ip",
    ),
    (
        "550 5.2.1 Policy rejection on the recipient address",
        "mailbox_disabled",
        "contact_recipient",
    ),
    (
        "550 5.1.1 Invalid arguments - possible version mismatch (user@example.org)",
        "unknown_recipient",
        "fix_recipient",
    ),
    ("421 4.4.5 CCRT 192.0.2.5: Connection refused. Server is busy(RT)", "dnsbl", "delist_ip"),
    (
        "550 Transaction failed (SPAM_SUSPECT:IP_CONTROL) see http://cleanip.paran.com/",
        "dnsbl",
        "delist_ip",
    ),
    (
        "550 5.7.1 Your access to submit messages to this email system has been rejected",
        "rejected",
        "contact_postmaster",
    ),
    (
        "550 5.7.1 You have sent too many messages, you are not allowed to send more messages"
        " within 24 hours",
        "rate_limit",
        "reduce_rate",
    ),
    ("550 Sender rejected (by recipient's block list)", "sender_rejected", "contact_postmaster"),
    (
        "Your message was blocked by the recipient's personal block list",
        "sender_rejected",
        "contact_postmaster",
    ),
    ("553 5.7.1 Not authorized to send as this header address", "sender_mismatch", "fix_sender"),
    ("550 Denied domain", "sender_rejected", "contact_postmaster"),
    (
        "R=dnslookup defer (-1): lowest numbered MX record points to local host",
        "loop",
        "contact_postmaster",
    ),
    ("remote host address is the local host", "loop", "contact_postmaster"),
    ("550 5.0.0 Host or domain name not found", "unknown_recipient", "fix_recipient"),
    ("Host or domain name not found. DNS: no such domain", "unknown_recipient", "fix_recipient"),
    # ... but a resolver that failed for now, or a 4xx, is the network's.
    (
        "Host or domain name not found. Name service error for name=example.org type=MX:"
        " Host not found, try again",
        "network",
        "retry_later",
    ),
    ("450 4.1.2 Host or domain name not found", "network", "retry_later"),
    ("Bad response from remote server", "network", "retry_later"),
    ("Malformed reply from SMTP server", "network", "retry_later"),
    ("451 Could not complete sender verify callout", "temp_failure", "retry_later"),
    ("550 Call-forward rejected for this recipient", "unknown_recipient", "fix_recipient"),
    ('554 5.4.0 Too many "Received:" headers', "loop", "contact_postmaster"),
    ("554 5.4.6 Too many Received: headers (31)", "loop", "contact_postmaster"),
    (
        "Delivery failed: the maximum number of retries has been exceeded",
        "network",
        "retry_later",
    ),
    ("550 5.2.1 Suspended account", "mailbox_disabled", "contact_recipient"),
    ("550 5.1.1 <bob@example.org> inactive mbox", "mailbox_disabled", "contact_recipient"),
    ("Spamhaus PBL", "dnsbl", "delist_ip"),
    ("SBL listed", "dnsbl", "delist_ip"),
    ("554 Rejected.", "rejected", "contact_postmaster"),
]

#: Round 21: the vendors' code tables read for vendors2.tsv, as families (other codes of
#: each table and other wordings, not the file's lines): Spectrum's AUP#I/AUP#O codes,
#: SFR's SFR_IN codes, Andrews & Arnold's CA codes, Qboxmail's err= codes, Postal's
#: SMTP server, Barricade MX, Baruwa, au/EZweb, Telstra BigPond, a bare "Access denied"
#: and Mail.ru's disabled sending (the label conflicts settled in round 21).
VENDORS2_CASES: list[tuple[str, str, str]] = [
    ("554 5.7.1 cmsmtp 192.0.2.1 blocked. AUP#I-1000", "dnsbl", "delist_ip"),
    ("554 cmsmtp Connection refused. AUP#In-1220", "dnsbl", "delist_ip"),
    ("550 5.7.1 cmsmtp sender blocked. AUP#O-1010", "sender_rejected", "contact_postmaster"),
    ("550 cmsmtp 192.0.2.1 no reverse DNS. AUP#I-1150", "reverse_dns", "fix_dns"),
    ("421 4.7.0 cmsmtp too many connections. AUP#In-1300", "rate_limit", "reduce_rate"),
    ("552 5.3.4 cmsmtp message too big. AUP#O-1530", "size", "shrink_message"),
    ("550 cmsmtp sender mismatch. AUP#O-1500", "sender_mismatch", "fix_sender"),
    ("452 cmsmtp AUP#O-1550", "too_many_recipients", "reduce_rate"),
    ("450 4.7.1 SFR_IN_102 Service refused due to bad behavior - Virus", "dnsbl", "delist_ip"),
    ("450 4.7.1 SFR_IN_104 Too many unknown users", "dnsbl", "delist_ip"),
    ("450 4.7.1 SFR_IN_105 Volume limit exceeded", "rate_limit", "reduce_rate"),
    (
        "Error CA1 see: http://wiki.aa.org.uk/Sending_Email_Errors account blocked",
        "sender_rejected",
        "contact_postmaster",
    ),
    ("550 5.7.1 err=usr_not_found", "auth_failed", "fix_credentials"),
    ("550 5.7.1 err=monthly_limit_reached", "rate_limit", "reduce_rate"),
    ("550 5.7.1 err=relay_domain_not_allowed", "relay_denied", "authenticate"),
    ("550 5.1.1 Invalid route token", "unknown_recipient", "fix_recipient"),
    ("530 5.7.1 From/Sender name is not valid", "sender_mismatch", "fix_sender"),
    ("550 5.7.1 host [192.0.2.7] black listed #120", "dnsbl", "delist_ip"),
    ("554 The sender 198.51.100.4 is banned", "dnsbl", "delist_ip"),
    ("554 The domain spam.example is banned", "sender_rejected", "contact_postmaster"),
    ("550 The user(s) account is disabled", "mailbox_disabled", "contact_recipient"),
    (
        "421 BigPond Outbound [OB104. Connection refused. 192.0.2.1 is listed on the "
        "Spamhaus Block List (SBL).",
        "dnsbl",
        "delist_ip",
    ),
    ("552 too much mail data for this user", "mailbox_full", "contact_recipient"),
    ("550 Recipient not authorized", "relay_denied", "authenticate"),
    ("554 Access denied.", "rejected", "contact_postmaster"),
    ("550 Access denied - policy violation", "policy", "contact_recipient"),
    (
        "550 Message sending for this account is blocked",
        "auth_failed",
        "fix_credentials",
    ),
]

#: The label review of the tuning files' conflicts (tests/data/explain/README.md): an
#: access map's REJECT names no reason whichever address it is about, except where the
#: object has a category of its own (the sender, the HELO name) or the server means an
#: unknown recipient (Exchange Online's DBEB).
#: Review rev103: texts of other servers that round 19-21's vendor rules caught.
REV103_CASES: list[tuple[str, str, str]] = [
    # LumiSoft's, aiosmtpd's and a 5.2.3 "too much mail data" is a size (docomo's bare
    # one, in vendors2, its full mailbox).
    ("552 Too much mail data.", "size", "shrink_message"),
    ("552 5.2.3 Too much mail data", "size", "shrink_message"),
    ("552 Error: Too much mail data", "size", "shrink_message"),
    # ZMailer's policy reply is not Yandex's blocked account.
    ("553 5.7.1 Policy rejection on the target address", "policy", "contact_recipient"),
    ("550 Policy rejection on the target address", "mailbox_disabled", "contact_recipient"),
    # Exchange's transient "version mismatch" says nothing of the address.
    ("401 4.5.4 Invalid arguments - possible version mismatch", "syntax", "fix_client"),
    ("550 Could not complete sender verify callout", "sender_invalid", "fix_sender"),
    # A client's wrapper does not hide the quoted reason.
    (
        "SMTP error: bad response from server: 550 5.7.1 Relaying denied",
        "relay_denied",
        "authenticate",
    ),
    ("550 5.7.0 Your message was blackholed by the spam filter", "spam", "clean_content"),
    ("450 4.7.1 SFR_IN_105 Service refused due to bad behavior", "rate_limit", "reduce_rate"),
]
#: Round 22: natural7's miss classes, from the servers' sources and the vendors' pages.
NATURAL7_CASES: list[tuple[str, str, str]] = [
    # Exim's sender callouts (smtp_in.c), the spam they mention aside; before another
    # ACL's final refusal they are not the reason (review rev104 F6).
    (
        "550-Callback setup failed while verifying <bounce@example.com> 550-The initial "
        "connection, or a HELO or MAIL FROM:<> command was 550-rejected. Refusing MAIL "
        "FROM:<> does not help fight spam, disregards 550-RFC requirements, and stops you "
        "from receiving standard bounce 550-messages. This host does not accept mail from "
        "domains whose servers 550 refuse bounces.",
        "sender_invalid",
        "fix_sender",
    ),
    (
        "550-Postmaster verification failed while checking <a@example.com> 550-Several "
        "RFCs state that you are required to have a postmaster 550-mailbox for each mail "
        "domain. This host does not accept mail 550 from domains whose servers reject the "
        "postmaster address.",
        "sender_invalid",
        "fix_sender",
    ),
    (
        "550-Callback setup failed while verifying <ok@example.com> 550-The initial "
        "connection, or a HELO or MAIL FROM:<> command was rejected. This host does not "
        "accept mail from domains whose servers refuse bounces. 550 rejected because "
        "192.0.2.1 is in a black list at zen.spamhaus.org",
        "dnsbl",
        "delist_ip",
    ),
    # subethasmtp's MAIL and RCPT answer to an address that does not parse; an X.1.1 or
    # X.1.8 detail says which address (rev104 F5).
    ("553 <bob@> Invalid email address.", "syntax", "fix_client"),
    ("553 <bob@example..com> Invalid email address.", "syntax", "fix_client"),
    ("553 5.1.8 <bob@example.com> Invalid address", "sender_invalid", "fix_sender"),
    # A filter that failed, with a 4xx; a verdict stays one (rev104 F2).
    ("451 4.3.0 Antivirus engine error, please try again later", "temp_failure", "retry_later"),
    ("451 4.0.0 Spam filter end data failed", "temp_failure", "retry_later"),
    (
        "451 4.7.1 Spam check temporarily unavailable, try again later",
        "temp_failure",
        "retry_later",
    ),
    ("550 5.7.1 Message rejected by spam filter", "spam", "clean_content"),
    ("451 4.7.1 Virus check failed: infected with Eicar-Test-Signature", "virus", "clean_content"),
    (
        "Your message was blocked by our spam filter. If you believe this is an error, "
        "please contact postmaster",
        "spam",
        "clean_content",
    ),
    # MXroute's suspicious ranges take mail only with SMTP AUTH: the IP is blocked
    # (docs.mxroute.com; rev104 F1); an AUTH wording stays one.
    ("550 5.7.1 Unauthenticated mail not allowed from this IP range", "dnsbl", "delist_ip"),
    (
        "530 Unauthenticated mail not allowed from your network, please log in",
        "auth_required",
        "authenticate",
    ),
    # Haraka's default DENY texts (connection.js): a recipient's names no reason, a
    # sender's names the sender.
    ("550 recipient <bob@example.org> denied", "rejected", "contact_postmaster"),
    ("550 [A1B2C3.1] recipient <bob@example.org> denied", "rejected", "contact_postmaster"),
    ("450 recipient <bob@example.org> denied", "temp_failure", "retry_later"),
    ("550 sender <bob@example.org> denied", "sender_rejected", "contact_postmaster"),
    # RFC 5321's words alone; with "mailbox unavailable" they are about the mailbox.
    ("554 Requested action not taken", "rejected", "contact_postmaster"),
    ("550 5.1.1 Requested action not taken", "unknown_recipient", "fix_recipient"),
    (
        "550 5.1.1 Requested action not taken: mailbox unavailable",
        "unknown_recipient",
        "fix_recipient",
    ),
    # Mimecast's greylisting text, whatever page quotes it (Mimecast's error code list).
    ("451 Internal resource temporarily unavailable", "greylisting", "retry_later"),
]
#: Round 23: natural9's miss classes.
NATURAL9_CASES: list[tuple[str, str, str]] = [
    # An IP in parentheses that is filtered: the server's own list, whatever mailbox
    # ("spammaster") the text names.
    ("550 Your IP (192.0.2.1) has been blocked", "dnsbl", "delist_ip"),
    (
        "421 Your IP(198.51.100.7) was filtered. Ask spammaster@example.com to register it",
        "dnsbl",
        "delist_ip",
    ),
    ("550 5.7.1 Message contains spam. Your IP (192.0.2.1) is fine", "spam", "clean_content"),
    # Baruwa's banned sender IP, masked as help pages write it.
    ("554 The sender 203.0.xxx.x is banned", "dnsbl", "delist_ip"),
    ("554 The domain example.com is banned", "sender_rejected", "contact_postmaster"),
]
LABEL_REVIEW_CASES: list[tuple[str, str, str]] = [
    (
        "554 5.7.1 <staff@example.net>: Recipient address rejected: Access denied",
        "rejected",
        "contact_postmaster",
    ),
    (
        "status=bounced (Recipient address rejected: Access denied)",
        "rejected",
        "contact_postmaster",
    ),
    (
        "554 5.7.1 <a@example.com>: Client host rejected: Access denied",
        "rejected",
        "contact_postmaster",
    ),
    (
        "554 5.7.1 <a@example.com>: Sender address rejected: Access denied",
        "sender_rejected",
        "contact_postmaster",
    ),
    ("454 4.7.1 <myhost>: Helo command rejected: Access denied", "helo", "fix_dns"),
    (
        "550 5.4.1 [ann@example.net]: Recipient address rejected: Access denied",
        "unknown_recipient",
        "fix_recipient",
    ),
    # A bare "Access denied" names no rule and gives no reason: `rejected` (round 21,
    # as natural2's and natural6's labels and Postfix's "Client host rejected").
    ("554 Access denied", "rejected", "contact_postmaster"),
    # Postfix's reject_unauthenticated_sender_login_mismatch: the address belongs to a
    # login and the client has none: log in (not "send from another address").
    (
        "553 5.7.1 <b@example.org>: Sender address rejected: not logged in",
        "auth_required",
        "authenticate",
    ),
]

#: Every table of source-written cases above, by the round that wrote it.
SOURCE_WRITTEN: dict[str, list[tuple[str, str]]] = {
    "issue": ISSUE_CASES,
    "heldout45": HELDOUT45_CASES,
    "heldout6": HELDOUT6_CASES,
    "heldout7": HELDOUT7_CASES,
    "heldout8": HELDOUT8_CASES,
    "heldout9": HELDOUT9_CASES,
    "heldout10": HELDOUT10_CASES,
    "heldout11": HELDOUT11_CASES,
    "heldout12": HELDOUT12_CASES,
}


@pytest.mark.parametrize(
    ("line", "category"),
    [
        pytest.param(line, category, id=f"{table}-{n}")
        for table, cases in SOURCE_WRITTEN.items()
        for n, (line, category) in enumerate(cases)
    ],
)
def test_source_written_classes(know: Knowledge, line: str, category: str) -> None:
    """Wordings from the servers' sources and vendor pages of the classes each round's
    misses fell into: the whole family of texts, not only the missed line."""
    exp = know.explain(line)
    assert exp.category == category, f"matched {exp.rule}"


#: The tables from round 12 on, which also name the fix the sender is told.
SOURCE_WRITTEN_WITH_FIX: dict[str, list[tuple[str, str, str]]] = {
    "heldout13": HELDOUT13_CASES,
    "heldout14": HELDOUT14_CASES,
    "heldout15": HELDOUT15_CASES,
    "heldout16": HELDOUT16_CASES,
    "natural2": NATURAL2_CASES,
    "natural3": NATURAL3_CASES,
    "natural5": NATURAL5_CASES,
    "natural6": NATURAL6_CASES,
    "vendors2": VENDORS2_CASES,
    "label-review": LABEL_REVIEW_CASES,
    "rev103": REV103_CASES,
    "natural7": NATURAL7_CASES,
    "natural9": NATURAL9_CASES,
}


@pytest.mark.parametrize(
    ("line", "category", "fix"),
    [
        pytest.param(line, category, fix, id=f"{table}-{n}")
        for table, cases in SOURCE_WRITTEN_WITH_FIX.items()
        for n, (line, category, fix) in enumerate(cases)
    ],
)
def test_source_written_classes_and_fixes(
    know: Knowledge, line: str, category: str, fix: str
) -> None:
    """Rounds 12 on: the category of each source-written text, and the fix the sender
    is told."""
    exp = know.explain(line)
    assert (exp.category, exp.fix) == (category, fix), f"matched {exp.rule}"


#: Every labelled part in the order it was added to tests/data/explain/.
ADDED = (
    "tune",
    "heldout",
    *(f"heldout{n}" for n in range(2, 18)),
    "natural1",
    "natural2",
    "natural3",
    "natural4",
    "natural5",
    "vendors1",
    "natural6",
    "natural7",
    "vendors2",
    "natural8",
    "natural9",
    "natural10",
    "natural11",
)
#: The round-16-on tables, and the last part there was when each was written.
LATER_TABLES = {
    "natural2": "natural2",
    "natural3": "natural3",
    "natural5": "natural5",
    "label-review": "natural5",
    "natural6": "natural6",
    "vendors2": "vendors2",
    "rev103": "vendors2",
    "natural7": "natural8",
    "natural9": "natural9",
}


def test_source_written_texts_are_not_corpus_lines() -> None:
    """From round 9 on, the rounds' cases test the rules on texts they were not written
    from: none is a line of the files there were when the table was written (corpus.tsv
    and heldout2 up to its own sample). The earlier tables also hold some of the missed
    lines themselves; a later blind sample may well meet one of these texts again."""
    corpus = load_corpus()
    assert set(ADDED) == {case.split for case in corpus}, "a new part goes into ADDED"
    tables: dict[str, list[str]] = {
        table: [line for line, _ in SOURCE_WRITTEN[table]]
        for table in ("heldout10", "heldout11", "heldout12")
    }
    tables.update(
        (table, [line for line, _, _ in cases]) for table, cases in SOURCE_WRITTEN_WITH_FIX.items()
    )
    found = []
    for table, lines in tables.items():
        if table in LATER_TABLES:
            # Round 16 on: the parts there were when the table was written (a blind
            # sample collected later may meet its texts: natural8 has "554 Service
            # unavailable", a NATURAL2_CASES text).
            then = set(ADDED[: ADDED.index(LATER_TABLES[table]) + 1])
        else:
            last = int(table.removeprefix("heldout"))
            then = {"tune", "heldout", *(f"heldout{n}" for n in range(2, last + 1))}
        replies = {case.reply for case in corpus if case.split in then}
        found += [(table, line) for line in lines if line in replies]
    assert not found


def test_a_rule_code_checks_the_class_of_an_enhanced_code_alone(know: Knowledge) -> None:
    """A line with only an enhanced code ("5.3.0 ...", qmail's "(#4.3.0)") is matched
    by its class against a rule's code; a line with no code at all by its text."""
    assert know.explain("5.3.0 service unavailable").category == "rejected"
    assert know.explain("4.3.0 service unavailable").category == "temp_failure"
    assert know.explain("service unavailable, try again later").rule == "temporary"


def test_a_name_between_a_rules_words_does_not_hide_them(know: Knowledge) -> None:
    """Once no rule matched, the text without its <address> and <host> words is tried:
    "Mailbox bob@example.org is full" is "Mailbox is full"."""
    exp = know.explain("552 Mailbox bob@example.org is full")
    assert (exp.category, exp.rule) == ("mailbox_full", "mailbox-full")
    exp = know.explain("550 Recipient <bob@example.org> is disabled")
    assert exp.category == "mailbox_disabled"
    # A rule about the name itself still sees it first.
    assert know.explain("550 <bob@example.org>... Access denied").category == "sender_rejected"
    assert know.explain("553 Sender address a@nowhere.example is invalid").category == (
        "sender_invalid"
    )


def test_a_delay_warning_gives_way_to_the_quoted_reason(know: Knowledge) -> None:
    """A report's delay warning alone is a temporary failure; with a quoted reply, the
    reply's reason (a full mailbox, greylisting) says more."""
    assert know.explain("Warning: could not send message for past 4 hours").category == (
        "temp_failure"
    )
    report = "Warning: could not send message for past 4 hours\n<<< 452 4.2.2 Mailbox full"
    assert know.explain(report).category == "mailbox_full"
    report = "It will be retried.\nRemote host said: 451 4.7.1 Greylisted, try again later"
    assert know.explain(report).category == "greylisting"
    # The reply's own specific words come first, also before an early report rule...
    report = "This message has been delayed\nRemote host said: 452 4.2.2 Mailbox full"
    assert know.explain(report).category == "mailbox_full"
    # ... but the report's stage beats the reply's generic words.
    report = "Connected to 192.0.2.1 but my name was rejected.\nRemote host said: 550 Denied"
    assert know.explain(report).category == "helo"


def test_a_sendmail_transcript_line_is_a_reply() -> None:
    """sendmail's session transcript marks the server's replies with "<<< "."""
    reply = parse_reply("<<< 552 5.2.2 <bob@example.org>... Mailbox full")
    assert (reply.code, reply.xcode) == ("552", "5.2.2")
    reply = parse_reply("<-- 451 Internal resource is temporarily unavailable")
    assert reply.code == "451"
    assert parse_reply("<bob@example.org>... User unknown").code is None


def test_a_code_in_a_url_is_no_reply_code(know: Knowledge) -> None:
    """Mimecast's help links end in "#550": an anchor, not the reply's code, so the
    block list named before it is still read."""
    line = (
        "zen.example.net https://www.spamhaus.org/query/ip/192.0.2.9 - "
        "https://help.example.com/docs/DOC-1369#550 [x.us1]"
    )
    reply = parse_reply(line)
    assert reply.code is None
    assert know.explain(line).category == "dnsbl"
    assert parse_reply("host mx.example.com said: 550 5.7.1 see #550").code == "550"


def test_addresses_and_host_names_are_no_evidence(know: Knowledge) -> None:
    plain = plain_text("<x@spamhost.example>: sender rejected by relay.spam.example.com")
    assert plain == "<address>: sender rejected by <host>"
    # Dotted words that are not host names stay.
    assert (
        plain_text("RESOLVER.ADR.RecipNotFound; not found")
        == "RESOLVER.ADR.RecipNotFound; not found"
    )
    assert plain_text("see https://spam.example/help?spam=1") == "see https://<host>/help?spam=1"
    exp = know.explain("550 5.7.1 <promo@antispam.example>... Relaying denied")
    assert exp.category == "relay_denied"


def test_grouped_provider_rule_explains_only_the_code_in_the_line(know: Knowledge) -> None:
    sfq = know.explain("451 MI:SFQ http://mail.163.com/help/help_spam_16.htm?ip=192.0.2.1")
    icc = know.explain("421 HL:ICC http://mail.163.com/help/help_spam_16.htm?ip=192.0.2.1")
    assert sfq.rule == icc.rule == "netease-rate"
    assert "MI:SFQ" in sfq.cause_en
    assert "HL:ICC" not in sfq.cause_en
    assert "HL:ICC" in icc.cause_zh
    assert "MI:SFQ" not in icc.cause_zh


def test_weak_words_only_when_one_category_is_named(know: Knowledge) -> None:
    exp = know.explain("550 check your login zzz")
    assert (exp.rule, exp.category) == (KEYWORDS_RULE, "auth_failed")
    # Words of two categories say nothing: the codes decide.
    assert know.explain("554 5.2.2 zzz login and attachment zzz").rule == "rfc3463-fallback"
    # "temporary" is weak evidence only for a temporary reply.
    assert know.explain("550 zzz temporarily zzz").category == "rejected"


def test_server_family(know: Knowledge) -> None:
    assert know.explain("554 DT:SPM 163 smtp10").server_family == "netease"
    gmail = know.explain(
        "550-5.1.1 The email account that you tried to reach does not exist. gsmtp"
    )
    assert gmail.server_family == "gmail"
    assert know.explain("550 5.1.1 zzz").server_family is None


def test_bad_meaning_table(tmp_path: Path) -> None:
    bad = tmp_path / "explain.toml"
    old = 'meaning."MI:SFQ" = { en = '
    assert old in SHIPPED
    bad.write_text(
        SHIPPED.replace(old, 'meaning."MI:SFQ" = { fr = "x", en = ', 1), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as err:
        load_knowledge(bad, replies=RULES / "replies.toml")
    assert err.value.key == "rule.netease-rate.meaning.MI:SFQ.fr"


def test_bad_keywords(tmp_path: Path) -> None:
    bad = tmp_path / "explain.toml"
    bad.write_text(SHIPPED.replace("\nvirus = '", "\nvirii = '", 1), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_knowledge(bad, replies=RULES / "replies.toml")
    assert err.value.key == "keywords.virii"
    assert "unknown category" in err.value.message


def _shown(case: Case) -> str:
    """What a failure may print of a corpus line: held-out texts stay unread by whoever
    tunes the rules."""
    return f"a {case.split} line" if case.split in UNREAD_SPLITS else case.reply


def test_prefiltered_rules_find_the_same_first_match(know: Knowledge) -> None:
    """Differential: the rule RE2's atom filter picks equals the first rule in file order
    that matches, on every corpus line and our own rules' edge cases."""
    lines = [(case.reply, _shown(case)) for case in load_corpus()]
    lines += [
        (line, line)
        for line in ("550 " + "relay " * 500, "zzz", "", "550 5.7.1 <a@b.example>... spam spam")
    ]
    checked = 0
    for line, shown in lines:
        reply = parse_reply(clean_input(line))
        if reply.code is not None and reply.code[0] not in "45":
            continue
        first = next((rule for rule in know.rules if rule.matches(reply)), None)
        if reply.own != reply.plain:
            # A quoted reply's own specific (not weak) words come before its report's.
            own = replace(reply, plain=reply.own)
            first = next(
                (rule for rule in know.rules if not rule.weak and rule.matches(own)), first
            )
        exp = know.explain(line)
        if exp.reply_id is None and first is not None:
            # A weak rule gives way to a specific RFC 3463 detail (the fallback).
            assert exp.rule == first.id or (first.weak and exp.rule == FALLBACK_RULE), shown
            checked += 1
    assert checked > 400


def test_the_first_replies_are_searched_without_the_atom_filter() -> None:
    """A fresh knowledge tries every rule on its first replies (no filter to build for
    one `explain "LINE"`), then builds the filter; both give the same answers."""
    fresh = load_knowledge(RULES / "explain.toml", replies=RULES / "replies.toml")
    lines = [case.reply for case in load_corpus()][: 2 * UNFILTERED_REPLIES]
    before = [fresh.explain(line).rule for line in lines]
    after = [fresh.explain(line).rule for line in lines]
    assert before == after
    assert before == [knowledge().explain(line).rule for line in lines]


def test_no_permanent_reply_is_told_it_will_be_retried(know: Knowledge) -> None:
    permanent = 0
    for case in load_corpus():
        exp = know.explain(case.reply)
        if exp.permanent:
            permanent += 1
            assert "retr" not in exp.action_en.lower(), (_shown(case), exp.rule)
            assert "自动重试" not in exp.action_zh, (_shown(case), exp.rule)
    assert permanent > 300
