"""MTA configuration snippets generated from the smtpguard config.

``smtpguard postfix-config`` and ``smtpguard sendmail-config`` print these; the files in
``contrib/`` are their output for the sample config (a test keeps them in step), and
the end-to-end tests configure their throwaway Postfix from the same function.

Where Postfix decides before the milter is asked, the snippet makes the table's reply
reach the client (see ``contrib/postfix/README.md`` for the security trade-offs):

* relay (``host_denies_relay``, ``relay_domain_fail``): by default
  (``relay_control = "milter"``) Postfix passes every recipient to smtpguard, which
  answers with the table's exact reply; ``milter_default_action = tempfail`` makes a
  dead milter defer everything, so nothing is relayed. With ``"postfix"`` Postfix
  refuses unauthorized relaying itself from a ``static:`` access map holding the
  table's reply, which holds even without the milter, but Postfix then prefixes
  ``<rcpt>: Recipient address rejected:`` to the text.
* unknown recipients (``mailbox_unavailable``): ``smtpd_reject_unlisted_recipient = no``
  leaves the decision to smtpguard's directory; with the milter down,
  ``milter_default_action = tempfail`` defers the mail instead of accepting it.
* size (``message_too_long``): Postfix's ``message_size_limit`` is set above smtpguard's
  ``limits.max_message_size`` so that smtpguard answers first with the table's text,
  while Postfix keeps a hard limit.
* address syntax (``mail_from_invalid``): what Postfix can parse reaches smtpguard,
  which answers with the table's reply; what it cannot parse (``<a b@x>``, ``<@>``,
  ``<a@.example>``) Postfix refuses itself with ``501 5.1.7 Bad sender address
  syntax``, and the footer map appends the table's Chinese text.
* protocol rows (``mail_first``, ``rcpt_first``, ``sequence_error``, ``syntax_error``,
  ``stray_newline``): Postfix answers with its own code and text; a
  ``smtpd_reject_footer_maps`` table appends the table's Chinese text (``\\c`` keeps
  it on the same line).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from smtpguard.config import Config
from smtpguard.replies import ReplyTable

#: Macros smtpguard reads, per stage (Postfix defaults plus what is missing).
POSTFIX_MACROS = {
    "milter_connect_macros": "j {daemon_name} {daemon_addr} v _ {client_addr} {client_name}",
    "milter_helo_macros": "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host}"
    " {mail_mailer}",
    "milter_rcpt_macros": "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
    "milter_end_of_data_macros": "i",
}

#: Postfix's own replies for the MTA-level rows (regexp keys) and the table id whose
#: Chinese text the footer appends.
POSTFIX_FOOTERS = (
    (r"^503 5\.5\.1 Error: need MAIL command", "mail_first"),
    (r"^503 5\.5\.1 Error: need RCPT command", "rcpt_first"),
    # What Postfix says to DATA before RCPT when milters are configured.
    (r"^554 5\.5\.1 Error: no valid recipients", "rcpt_first"),
    (r"^503 5\.5\.1 Error: nested MAIL command", "sequence_error"),
    (r"^50[02] 5\.5\.2 Error: command not recognized", "syntax_error"),
    (r"^501 5\.5\.[24] Syntax", "syntax_error"),
    (r"^[45][0-9][0-9] [45]\.5\.2 .*bare <LF> received", "stray_newline"),
    # Addresses Postfix's own parser refuses never reach the milter.
    (r"^501 5\.1\.7 Bad sender address syntax", "mail_from_invalid"),
    (r"^501 5\.1\.3 Bad recipient address syntax", "mailbox_unavailable"),
)


def postfix_milter_address(socket: str, queue_directory: str = "/var/spool/postfix") -> str:
    """The ``smtpd_milters`` form of our socket.

    A unix socket under Postfix's queue directory is given relative to it, which
    works for a chrooted smtpd (the chroot is the queue directory) and an unchrooted
    one (smtpd runs with the queue directory as its working directory).
    """
    kind, _, rest = socket.partition(":")
    if kind in ("unix", "local"):
        path = PurePosixPath(rest)
        queue = PurePosixPath(queue_directory)
        if path.is_relative_to(queue):
            return f"unix:{path.relative_to(queue)}"
        return f"unix:{path}"
    port, _, host = rest.partition("@")
    if kind == "inet6":
        return f"inet:[{host or '::1'}]:{port}"
    return f"inet:{host or '127.0.0.1'}:{port}"


def _relay_reply(replies: ReplyTable, utf8: bool) -> str:
    reply = replies.render("host_denies_relay", utf8=utf8)
    # Postfix takes only the first line from an access map; %% is not special there.
    return f"{reply.code} {reply.xcode} {reply.lines[0].replace('%%', '%')}"


def postfix_main_cf(
    config: Config,
    replies: ReplyTable,
    *,
    queue_directory: str = "/var/spool/postfix",
    config_directory: str = "/etc/postfix",
    relay_control: str = "milter",
) -> str:
    site = config.site
    limits = config.limits
    utf8 = config.replies.utf8 == "always"
    networks = " ".join(str(n) for n in site.trusted_networks) or "127.0.0.0/8"
    domains = " ".join(sorted(site.local_domains | site.relay_domains))
    footer_file = f"{config_directory}/smtpguard_footers.regexp"
    lines = [
        "# smtpguard: main.cf settings (generated by `smtpguard postfix-config`).",
        "# Attach the milter; if it is down or times out, mail is deferred, never accepted.",
        f"smtpd_milters = {postfix_milter_address(config.milter.socket, queue_directory)}",
        "non_smtpd_milters =",
        "milter_protocol = 6",
        "milter_default_action = tempfail",
        "milter_connect_timeout = 10s",
        "milter_command_timeout = 30s",
        "milter_content_timeout = 300s",
        "# Macros smtpguard reads.",
        *(f"{key} = {value}" for key, value in POSTFIX_MACROS.items()),
        "",
        "# Clients smtpguard trusts (site.trusted_networks) may relay.",
        f"mynetworks = {networks}",
        "# smtpguard's local and relay domains must be Postfix destinations too",
        "# (mydestination, virtual_mailbox_domains or relay_domains):",
        f"#   {domains or '(none configured)'}",
        *_relay_lines(replies, utf8, relay_control),
        "# Unknown local recipients are answered by smtpguard's directory (mailbox_unavailable).",
        "smtpd_reject_unlisted_recipient = no",
        "# Postfix's hard size limit stays above limits.max_message_size, so smtpguard",
        "# answers message_too_long with the table's text first.",
        f"message_size_limit = {limits.max_message_size * 2}",
        "# smtpguard answers MAIL before HELO with helo_first; Postfix must let it through.",
        "smtpd_helo_required = no",
        "# stray_newline: refuse bare LF in DATA (Postfix 3.7.10+). Postfix only takes",
        "# a 5xx reject code here, so the table's 451 cannot be reproduced.",
        "smtpd_forbid_bare_newline = yes",
        "# Replies may carry UTF-8 (the table's Chinese text) at end of message too.",
        "smtputf8_enable = yes",
        "# Postfix's own protocol replies get the table's Chinese text appended.",
        f"smtpd_reject_footer_maps = regexp:{footer_file}",
        "",
        f"# {footer_file}:",
    ]
    lines += [f"#   {line}" for line in postfix_footer_regexp(replies, utf8).splitlines()]
    return "\n".join(lines) + "\n"


def _relay_lines(replies: ReplyTable, utf8: bool, relay_control: str) -> list[str]:
    if relay_control == "postfix":
        return [
            "# relay_control = postfix: Postfix refuses unauthorized relaying itself, so",
            "# relay control holds even if the milter is down or removed. Postfix puts",
            "# '<rcpt>: Recipient address rejected: ' before the table's text.",
            "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated,",
            "    permit_auth_destination,",
            f"    check_recipient_access static:{{{_relay_reply(replies, utf8)}}},",
            "    reject_unauth_destination",
        ]
    return [
        "# relay_control = milter: smtpguard decides relaying (host_denies_relay,",
        "# relay_domain_fail) so the client gets the table's exact reply. Safe only with",
        "# milter_default_action = tempfail: with the milter down every transaction is",
        "# deferred, nothing is relayed. The static:{OK} entry passes every recipient on",
        "# to the milter; reject_unauth_destination after it only satisfies Postfix's",
        "# start-up check. Use `--relay-control postfix` for defense in depth.",
        "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated,",
        "    permit_auth_destination, check_recipient_access static:{OK},",
        "    reject_unauth_destination",
    ]


def postfix_footer_regexp(replies: ReplyTable, utf8: bool) -> str:
    out = []
    for pattern, reply_id in POSTFIX_FOOTERS:
        row = replies.rows[reply_id]
        others = [row.text[lang] for lang in replies.policy.languages if lang != "en"]
        texts = [t for t in others if utf8 or t.isascii()]
        if texts:
            out.append(f"/{pattern}/ \\c ({'; '.join(texts)})")
    return "\n".join(out) + ("\n" if out else "")
