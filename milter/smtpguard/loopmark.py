"""The loop marker's value: our name and, with a key, whom we accepted the message for.

A bare marker (``mx.example.com``) says only that we accepted the message once, so any
return of it is a loop: a list or ticket host of ours that sends its members mail it got
through us, or a copy a user forwards elsewhere that comes back to another of our users,
is refused although it loops nowhere (review rev105). With ``content.loop_marker_key``
the marker also carries a keyed hash of each recipient we accepted it for
(``mx.example.com; r=3f9a0c11d2, 8be01d4c7a``), and a message that comes back is a loop
only when it comes back for one of them: the test Postfix's ``Delivered-To:`` makes at
final delivery, made here at the MX for mail that did not reach final delivery. The
hashes are keyed so that a recipient cannot test a guessed address against them: who
else got the message (a Bcc recipient) stays hidden. The recipients are those of RCPT
TO: a loop of an address the MTA rewrites after us (an alias) is found one pass later,
when the marker that pass adds names the rewritten address.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

from smtpguard.resultheaders import fold

#: Over this many recipients the marker is added bare (any return is a loop, as without
#: a key): the field stays under a few hundred octets.
MAX_TAGGED: Final = 50
_TAG_BYTES: Final = 5
_PERSON: Final = b"smtpguard-loop"


def key_of(secret: str) -> bytes:
    """The hash key for ``content.loop_marker_key`` (any length; b"" for none)."""
    return hashlib.sha256(secret.encode("utf-8")).digest() if secret else b""


def tag(key: bytes, recipient: str) -> str:
    """The recipient's hash (``recipient``: its canonical form, lower case)."""
    data = recipient.encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, digest_size=_TAG_BYTES, key=key, person=_PERSON).hexdigest()


def render(name: str, value: str, key: bytes, recipients: Iterable[str]) -> str:
    """The marker field's value for a message accepted for ``recipients``, folded."""
    tags = sorted({tag(key, r) for r in recipients}) if key else []
    if not tags or len(tags) > MAX_TAGGED:
        return value
    words = [f"{value};", *(f"{t}," for t in tags)]
    words[1] = f"r={words[1]}"
    words[-1] = words[-1].rstrip(",")
    return fold(name, words)


def parse(field: str, value: str) -> frozenset[str] | None:
    """The hashes of our marker ``field`` (its value as received, any case, folded or
    not), an empty set for a bare one, None when it is not ours (``value``: our marker
    value, lower case)."""
    text = field.replace("\r", "").replace("\n", "").strip().lower()
    if text == value:
        return frozenset()
    if not text.startswith(value):
        return None
    rest = "".join(text[len(value) :].split())
    if not rest.startswith(";r="):
        return None
    tags = frozenset(rest[3:].split(","))
    return tags if all(tags) else None
