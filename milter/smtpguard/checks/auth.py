"""Checks of the SASL-authenticated session: mechanism, login, sender ownership.

Postfix passes ``{auth_type}`` and ``{auth_authen}`` at MAIL FROM only when the client
authenticated, and the TLS macros at HELO; the adapter copies them into the session.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from email.utils import getaddresses
from typing import ClassVar, Final

from smtpguard.address import Address, AddressError, parse_path
from smtpguard.checks import Event, Services, Stage
from smtpguard.content.encoded_words import readings
from smtpguard.directory import Directory, DirectoryError, Login
from smtpguard.session import Connection, Transaction
from smtpguard.verdict import Hit, TempError, Verdict

_LOGIN_KEY = "auth.login"
#: Account states that may not send (docs/replies.md, auth_error_perm). "moving" and
#: "overquota" concern delivery to the mailbox, not sending from it.
_LOGIN_REFUSED = frozenset({"locked", "suspended"})


def resolve_login(directory: Directory, txn: Transaction) -> Login | None:
    """The directory entry of the session's login, looked up once per transaction."""
    if _LOGIN_KEY not in txn.scratch:
        txn.scratch[_LOGIN_KEY] = directory.login(txn.auth_login or "")
    login: Login | None = txn.scratch[_LOGIN_KEY]
    return login


class AuthMechanism:
    """``auth_mode_unsupported``: a mechanism the policy does not allow here."""

    name: ClassVar[str] = "auth_mechanism"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("auth_mode_unsupported",)

    def __init__(self, services: Services) -> None:
        self.allowed = services.config.policy.auth_allowed
        self.tls_required = services.config.policy.auth_tls_required

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is None or not txn.auth_login:
            return None
        mech = (txn.auth_type or "").upper()
        if self.allowed and mech not in self.allowed:
            return Hit("auth_mode_unsupported", f"mechanism {mech or '?'} not allowed")
        if mech in self.tls_required and not conn.tls_version:
            return Hit("auth_mode_unsupported", f"mechanism {mech} without TLS")
        return None


class AuthLogin:
    """``domain_auth_error``, ``auth_error_perm``, ``auth_error_temp``."""

    name: ClassVar[str] = "auth_login"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = (
        "domain_auth_error",
        "auth_error_perm",
        "auth_error_temp",
    )

    def __init__(self, services: Services) -> None:
        self.site = services.config.site
        self.default_domain = services.config.policy.default_login_domain
        self.directory = services.directory

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is None or not txn.auth_login:
            return None
        login_name = txn.auth_login
        domain = login_name.rpartition("@")[2] if "@" in login_name else self.default_domain
        if domain and not self.site.is_local(domain):
            return Hit("domain_auth_error", f"login {login_name!r}: domain {domain} not hosted")
        try:
            login = resolve_login(self.directory, txn)
        except DirectoryError as exc:
            return TempError("auth_error_temp", str(exc))
        if login is None:
            return Hit("auth_error_perm", f"login {login_name!r} unknown")
        if login.state in _LOGIN_REFUSED:
            return Hit("auth_error_perm", f"login {login_name!r} is {login.state}")
        return None


class SenderLogin:
    """``sender_mismatch``: an authenticated login uses a MAIL FROM it does not own."""

    name: ClassVar[str] = "sender_login"
    stage: ClassVar[Stage] = Stage.MAIL
    reply_ids: ClassVar[tuple[str, ...]] = ("sender_mismatch", "auth_error_temp")

    def __init__(self, services: Services) -> None:
        self.directory = services.directory

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is None or not txn.auth_login:
            return None
        if txn.sender is None:
            # No login owns what does not parse, and the MTA may still make one of our
            # addresses of it (implied_domains; review rev65 F1: <carol%example.com>
            # from alice was delivered as carol@example.com).
            return Hit("sender_mismatch", f"login may not send as unparsable {txn.sender_raw!r}")
        if txn.sender.is_null:
            return None
        try:
            login = resolve_login(self.directory, txn)
            if login is None:
                # Unknown logins are auth_login's verdict; nothing is owned either way.
                return Hit("sender_mismatch", f"login {txn.auth_login!r} unknown")
            # Canonical: "alice"@example.com is alice@example.com's address too.
            if self.directory.may_send_as(login, txn.sender.canonical):
                return None
        except DirectoryError as exc:
            return TempError("auth_error_temp", str(exc))
        return Hit("sender_mismatch", f"login {login.login!r} may not send as {txn.sender.text}")


class SenderLoginFrom:
    """``sender_mismatch`` for the From: header field (``policy.check_header_from``):
    what the recipient reads as the author must also be an address the login may send
    as. Off by default: a submission client may put any From: on a message, and only
    the site knows whether its users may (Postfix's ``reject_sender_login_mismatch``
    looks at the envelope only)."""

    name: ClassVar[str] = "sender_login.header"
    stage: ClassVar[Stage] = Stage.HEADER
    reply_ids: ClassVar[tuple[str, ...]] = ("sender_mismatch", "auth_error_temp")
    header_names: ClassVar[tuple[str, ...]] = ("from",)

    def __init__(self, services: Services) -> None:
        self.directory = services.directory
        self.inert = not services.config.policy.check_header_from

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        if txn is None or not txn.auth_login or event.header is None:
            return None
        value = event.header[1]
        addresses = _authors(value, txn.smtputf8)
        if addresses is None:
            return Hit("sender_mismatch", f"From: {value[:200]!r} names no valid address")
        try:
            login = resolve_login(self.directory, txn)
            if login is None:
                return Hit("sender_mismatch", f"login {txn.auth_login!r} unknown")
            for address, shown in addresses:
                if not self.directory.may_send_as(login, address.canonical):
                    where = "From: (its display name)" if shown else "From:"
                    return Hit(
                        "sender_mismatch",
                        f"login {login.login!r} may not write {where} {address.text}",
                    )
        except DirectoryError as exc:
            return TempError("auth_error_temp", str(exc))
        return None


def _authors(value: str, smtputf8: bool) -> list[tuple[Address, bool]] | None:
    """The mailboxes of a From: field (RFC 5322 §3.6.2: one or more), each with
    whether a display name showed it, or None when it names none or one that does not
    parse: nothing the login could be shown to own."""
    found: list[tuple[Address, bool]] = []
    try:
        pairs = getaddresses([value])
    except RecursionError:
        # The standard parser recurses once per nested comment: a few hundred "("
        # (review rev66 F4) raised, and the message was deferred on every retry.
        return None
    for name, text in pairs:
        if not text:
            return None
        try:
            address = parse_path(text, smtputf8=smtputf8)
        except AddressError:
            return None
        if address.is_null:
            return None
        found.append((address, False))
        found += [(shown, True) for shown in _shown_addresses(name)]
    return found or None


def _shown_addresses(name: str) -> list[Address]:
    """The address a display name is, as a mail program that shows the name alone
    shows it (``"bob@example.com" <alice@example.com>``; review rev222 F3): an author
    too. Read in every decoding of its encoded words, NFKC-normalised (a fullwidth or
    small commercial at is an at), invisible format characters dropped (a zero-width
    space hides nothing), and taken whole, less quotes, ``mailto:`` and trailing
    punctuation (review rev223 M2). A name that only holds an address among other words
    (``'alice@partner.example' via dev-list``, a list's rewrite; a Fediverse handle;
    ``Dinner@8.30pm``) is no address, nor one whose domain ends in no word (``Jobs@Acme``,
    ``8.30pm``: review rev223 L5, rev225 M1)."""
    if not name:
        return []
    found: list[Address] = []
    for reading in readings(name)[0]:
        text = unicodedata.normalize("NFKC", reading)
        if "@" not in text:
            continue
        text = "".join(c for c in text if unicodedata.category(c) != "Cf")
        text = text.strip().strip("\"'").strip()
        if text.lower().startswith("mailto:"):
            text = text[len("mailto:") :]
        text = text.rstrip(",;.").strip("\"'<>").strip()
        if _SHOWN.fullmatch(text) is None:
            continue
        with contextlib.suppress(AddressError):
            shown = parse_path(text, smtputf8=True)
            if not shown.is_null:
                found.append(shown)
    return found


#: A display name that is one address: no white space, quotes, brackets or list
#: punctuation in it, a dotted domain whose last label is a word (letters, or an IDN's
#: ``xn--`` form).
_SHOWN: Final = re.compile(
    r"[^\s\"'<>()\[\],;:@]+@(?:[^\s\"'<>()\[\],;:@.]+\.)+(?:[^\W\d_]{2,}|xn--[a-z0-9-]+)",
    re.IGNORECASE,
)
