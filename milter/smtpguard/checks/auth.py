"""Checks of the SASL-authenticated session: mechanism, login, sender ownership.

Postfix passes ``{auth_type}`` and ``{auth_authen}`` at MAIL FROM only when the client
authenticated, and the TLS macros at HELO; the adapter copies them into the session.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks import Event, Services, Stage
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
        if txn is None or not txn.auth_login or txn.sender is None or txn.sender.is_null:
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
