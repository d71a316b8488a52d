"""What a check returns.

A check only detects; it never talks to the MTA and never builds reply text. It returns
``None`` (no objection), a :class:`Hit` (the policy says no, with the reply id of the
table) or a :class:`TempError` (the check could not decide because something it relies
on failed). The pipeline turns these into actions according to the check's mode and
temp-error policy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Hit:
    """The check found a policy violation answered with ``reply_id``.

    ``detail`` goes to the log only, never into the SMTP reply.
    """

    reply_id: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TempError:
    """The check could not decide (backend down, timeout, lock).

    ``reply_id`` is the tempfail row to answer with when the check's policy is
    fail-closed (for example ``database_temp_error`` or ``auth_error_temp``).
    ``firm``: answered as a temporary failure even where the check's
    ``on_temp_error`` is ``pass``: the check did refuse, and only whether an exemption
    spares the client is undecided (passing would accept what it refused); or the
    deferral is the operator's choice for what is no fault (``virus.on_size_limit =
    "tempfail"``).
    """

    reply_id: str
    detail: str = ""
    firm: bool = False
    #: Whether something failed (counted in ``smtpguard_backend_errors_total``); not
    #: for a deferral asked for (rspamd's soft reject, ``on_size_limit``).
    fault: bool = True
    #: The fault is in the log already, once for every message it fails (a scanner's
    #: outage under way): the message's decision line is INFO, not WARNING.
    logged: bool = False
    #: The same answer at every retry of this message (too large to scan, with
    #: on_size_limit = "tempfail"): a local submission, which Postfix's cleanup would keep
    #: in its maildrop for good on a 4xx, gets message_too_long instead (review rev232 M1).
    for_good: bool = False


Verdict = Hit | TempError
