"""Per-session state: one :class:`Connection` per SMTP session, one
:class:`Transaction` per MAIL FROM.

These are plain data filled in by the adapter (or by ``simulate``) and read by the
checks. Nothing here talks to the MTA.
"""

from __future__ import annotations

import itertools
import os
import re
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, TypeVar

from smtpguard.address import Address, IPAddress, raw_parts
from smtpguard.message import MessageState
from smtpguard.verdict import Hit, TempError

_F = TypeVar("_F", bound=Future[Any])

_counter = itertools.count(1)
_prefix = f"{os.getpid():x}"


def new_session_id() -> str:
    """A short id unique within this process run, for log correlation."""
    return f"{_prefix}.{next(_counter):x}"


def _renumber() -> None:
    """A forked worker numbers its sessions under its own pid, not its parent's."""
    global _counter, _prefix  # noqa: PLW0603 - the process-wide sequence, reset once per fork
    _counter = itertools.count(1)
    _prefix = f"{os.getpid():x}"


os.register_at_fork(after_in_child=_renumber)


class MTA(Enum):
    #: Sent macro ``v``, but neither Postfix's nor Sendmail's.
    UNKNOWN = "unknown"
    POSTFIX = "postfix"
    SENDMAIL = "sendmail"
    #: Sent no macro ``v`` at all. Postfix sends it by default, so this is most likely a
    #: Sendmail whose ``.mc`` has only the ``INPUT_MAIL_FILTER`` line.
    UNANNOUNCED = "unannounced"

    @property
    def likely_sendmail(self) -> bool:
        """Sendmail, announced or most likely (no macro v: a Sendmail .mc sends none
        unless asked). Every other MTA is answered as Postfix is: one whose v names
        neither is most likely a Postfix with another ``mail_name`` or
        ``milter_macro_v`` (review rev151 F1)."""
        return self in (MTA.SENDMAIL, MTA.UNANNOUNCED)

    @property
    def carries_utf8(self) -> bool:
        """Whether UTF-8 reply text reaches the client intact. Sendmail clears the 8th
        bit of a milter's reply text: UTF-8 becomes control bytes, and 0x8A/0x8D a bare
        LF/CR that puts the client one reply behind for the rest of the session."""
        return not self.likely_sendmail

    @property
    def guards_relay(self) -> bool:
        """Whether a stranger's relay that reaches us is refused whatever the relay
        check's mode (Pipeline._mode_here): not behind Sendmail, whose relay rules are
        its own (its access database; review rev118 F1), everywhere else."""
        return not self.likely_sendmail


#: Sendmail's own version in macro v: 8.x since 1993 ("8.17.1.9"). A bare version of
#: another number may be Postfix's (``milter_macro_v = $mail_version`` sends "3.7.11").
_SENDMAIL_VERSION: Final = re.compile(r"8\.\d+\.")


def announced_mta(version_macro: str | None) -> MTA:
    """The MTA its macro ``v`` names: "Postfix ..." is Postfix, Sendmail's own bare
    8.x version Sendmail, any other value an MTA neither (a bare "3.7.11" is a Postfix
    with ``milter_macro_v = $mail_version``, "MailGate 3.7.11" one with another
    ``mail_name``: taken for Sendmail, its relay guard was off, review rev151 F1)."""
    if not version_macro:
        # Postfix sends v by default; Sendmail only when the .mc asks for it.
        return MTA.UNANNOUNCED
    if version_macro.lower().startswith("postfix"):
        return MTA.POSTFIX
    return MTA.SENDMAIL if _SENDMAIL_VERSION.match(version_macro) else MTA.UNKNOWN


def detect_mta(version_macro: str | None, configured: str) -> MTA:
    """With ``milter.mta = "auto"``, what macro ``v`` says (:func:`announced_mta`).
    Otherwise the configured MTA, unless ``v`` names the other one beyond doubt
    ("Postfix ..." or Sendmail's 8.x version): UTF-8 replies towards a Sendmail the
    config calls Postfix put its clients' sessions out of step (it clears the 8th bit;
    review rev140 F1). A bare version of another number does not override it: a
    Postfix with ``milter_macro_v = $mail_version`` sends "3.7.11", and taking it for
    Sendmail turned off Postfix's relay guard (rev142 F1)."""
    announced = announced_mta(version_macro)
    if configured == "auto" or announced in (MTA.POSTFIX, MTA.SENDMAIL):
        return announced
    return MTA.POSTFIX if configured == "postfix" else MTA.SENDMAIL


@dataclass(slots=True)
class Transaction:
    """One MAIL FROM ... (RCPT TO ...)* [DATA ...] exchange."""

    sender: Address | None
    sender_raw: str
    esmtp: dict[str, str | None]
    #: Why ``sender`` is None (syntax error), for the log.
    sender_error: str = ""
    smtputf8: bool = False
    declared_size: int | None = None
    auth_type: str | None = None
    auth_login: str | None = None
    #: The accepted recipients that parse.
    recipients: list[Address] = field(default_factory=list)
    #: Accepted recipients that do not (Postfix accepts and delivers taro.@docomo.ne.jp):
    #: no exemption by recipient can vouch for them.
    unparsed_recipients: list[str] = field(default_factory=list)
    #: Every accepted recipient's domain, lower-cased, in order (an unparsable one's as
    #: it seems to name it): how many recipients, and which [domain] policy applies.
    recipient_domains: list[str] = field(default_factory=list)
    queue_id: str | None = None
    #: Created when the message content starts (first header, DATA end of headers).
    message: MessageState | None = None
    #: Headers checks want added if the message is accepted (e.g. X-Spam-Flag).
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    #: A header/body verdict waiting for end of message.
    pending: Hit | TempError | None = None
    pending_check: str = ""
    #: The end of the headers has been seen, or stood in for (see the pipeline).
    headers_ended: bool = False
    # Per-check scratch space for stateful content checks (MIME walker, counters).
    scratch: dict[str, Any] = field(default_factory=dict)

    def accept(self, rcpt: Address | None, raw: str) -> None:
        """Record an accepted recipient: ``rcpt``, or ``raw`` when it does not parse."""
        if rcpt is not None:
            self.recipients.append(rcpt)
            self.recipient_domains.append(rcpt.domain_lc)
        else:
            self.unparsed_recipients.append(raw)
            self.recipient_domains.append(raw_parts(raw)[1])

    def defer(self, verdict: Hit | TempError, check: str) -> None:
        """Keep a header/body verdict for end of message; the first one stays."""
        if self.pending is None:
            self.pending, self.pending_check = verdict, check


@dataclass(slots=True)
class Connection:
    """One SMTP session as the MTA describes it to the milter."""

    session_id: str
    client_ip: IPAddress | None
    client_port: int | None
    client_name: str
    mta: MTA = MTA.UNKNOWN
    #: The MTA resolved ``client_name`` back to the client address: Postfix's
    #: ``{client_name}`` (``unknown`` otherwise), Sendmail's with ``{client_resolve}``
    #: ``OK`` (it passes FORGED and TEMP names too).
    client_name_confirmed: bool = False
    #: The MTA's own lookup of the client's name failed temporarily (Sendmail's
    #: ``{client_resolve}`` ``TEMP``): an exemption by host name is undecided, not "no".
    client_name_unsure: bool = False
    helo: str | None = None
    tls_version: str | None = None
    trusted_network: bool = False
    #: Postfix's cleanup emulating a session for mail submitted with sendmail(1) (or
    #: queued again by pickup): non_smtpd_milters. It cannot refuse one recipient, and
    #: keeps the whole message in its maildrop for good if asked to (review rev227).
    local_submission: bool = False
    #: False when the session was over ``limits.max_sessions`` or we are draining.
    admitted: bool = True
    # Verdicts decided at connect/HELO wait here until MAIL FROM, where the MTA
    # delivers their text (Postfix defers connect/HELO rejects to MAIL anyway).
    pending: Hit | TempError | None = None
    pending_check: str = ""
    txn: Transaction | None = None
    transactions: int = 0
    #: Decision lines logged for this session (capped: pipeline.DECISION_LINES).
    decision_lines: int = 0
    #: Transactions of this session that ended empty (no recipient, nothing refused):
    #: their summary lines are capped (pipeline.EMPTY_SUMMARIES).
    empty_transactions: int = 0
    #: The sender of the last of them not logged alone (the session's repeated= line).
    empty_from: str | None = None
    # Connect-time lookups started early (the checks' prefetch hook) keep their futures here.
    scratch: dict[str, Any] = field(default_factory=dict)
    #: Work started for this session alone (its reverse DNS, the connect-back probe),
    #: cancelled when it closes (:meth:`abandon`).
    _background: list[Future[Any]] = field(default_factory=list, init=False, repr=False)

    def background(self, future: _F) -> _F:
        """``future`` is this session's alone: cancelled when the session closes."""
        self._background.append(future)
        return future

    def abandon(self) -> None:
        """Cancel the session's own work: a flood of connections that hang up at once
        must leave no lookups behind them, waiting for the resolver's slots that later
        sessions need (review rev52 N3)."""
        if self._background:
            work, self._background = self._background, []
            for future in work:
                future.cancel()

    def defer(self, verdict: Hit | TempError, check: str) -> None:
        """Keep a connect/HELO verdict for MAIL FROM; the first one stays, and is
        delivered at every MAIL FROM of the session."""
        if self.pending is None:
            self.pending, self.pending_check = verdict, check

    @property
    def authenticated(self) -> bool:
        return self.txn is not None and bool(self.txn.auth_login)

    @property
    def trusted(self) -> bool:
        """Client in ``trusted_networks`` or SASL-authenticated (spec: "trusted")."""
        return self.trusted_network or self.authenticated
