"""The loop marker's value: our name and, with a key, whom we accepted the message for.

A bare marker (``mx.example.com``) says only that we accepted the message once, so any
return of it is a loop: a list or ticket host of ours that sends its members mail it got
through us, or a copy a user forwards elsewhere that comes back to another of our users,
is refused although it loops nowhere (review rev105). With ``content.loop_marker_key``
the marker carries a random value of its own and a keyed hash of the envelope sender
with each recipient we accepted it for::

    X-Smtpguard-Loop: mx.example.com; n=5d1c0e7a93b2; r=3f9a0c11d2, 8be01d4c7a, ...

and a message that comes back is a loop when it comes back from the same envelope sender
for those recipients, every one of them (checks.loop: when some are new, all get it and
the marker this pass adds names them all). The loops the marker is for keep the sender:
a mail store, a smarthost or a content filter that sends the message back, a forward
between two of our mailboxes. A list or ticket host sends on with an envelope sender of
its own (its bounce address), so its members' copies pass even when a member was among
the recipients (a reply to the list with a member in Cc: review rev107 F1).

The hashes hide who received the message (review rev107 F2): without the key nobody can
compute one, the random value makes them differ in every message (no hash seen in one
message can be recognised in another), and random hashes are added up to 4, 8, 16 or 32,
so the count of recipients shows only within that step. What stays: someone who has a
copy and can send mail as its envelope sender may send it back to an address of ours, as
often as they like, and learn from a refusal that it was among the recipients (docs:
conf/smtpguard.toml). Over :data:`MAX_TAGGED` recipients the marker holds
one hash of the sender alone (``a=``): any return from that sender is a loop.

The recipients are those of RCPT TO without their address extension: a loop of an
address the MTA rewrites after us (an alias) is found one pass later, when the marker
that pass adds names the rewritten address.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

from smtpguard.address import Address, strip_extension
from smtpguard.resultheaders import fold

#: Over this many recipients the marker names the sender alone (``a=``).
MAX_TAGGED: Final = 32
#: The count of hashes is rounded up to one of these with random ones.
_STEPS: Final = (4, 8, 16, MAX_TAGGED)
_TAG_BYTES: Final = 5
_NONCE_BYTES: Final = 6
_PERSON: Final = b"smtpguard-loop"
#: Stands for "every recipient" in the hash of an ``a=`` marker (no address is empty).
_EVERY: Final = ""


#: What follows our value in a keyed marker, its folding whitespace removed.
_HASH: Final = rf"[0-9a-f]{{{2 * _TAG_BYTES}}}"
_KEYED: Final = re.compile(
    rf";n=(?P<nonce>[0-9a-f]{{{2 * _NONCE_BYTES}}});"
    rf"(?:a=(?P<every>{_HASH})|r=(?P<tags>{_HASH}(?:,{_HASH}){{0,{MAX_TAGGED - 1}}}))"
)


class Marker(NamedTuple):
    """Our marker as read back: ``nonce`` is empty for a bare one."""

    nonce: str
    #: The sender's hash of an ``a=`` marker, else empty.
    every: str
    tags: frozenset[str]


BARE: Final = Marker("", "", frozenset())


def key_of(secret: str) -> bytes:
    """The hash key for ``content.loop_marker_key`` (any length; b"" for none)."""
    return hashlib.sha256(secret.encode("utf-8")).digest() if secret else b""


def parties(
    sender: Address | None, recipients: Iterable[Address], delimiters: str
) -> tuple[str, list[str]]:
    """The sender and recipients as the hashes take them: canonical, lower case, the
    recipients without their extension (``site.recipient_delimiter``)."""
    bases = [r.canonical_lc for r in recipients]
    return (
        sender.canonical_lc if sender is not None else "",
        [strip_extension(b, delimiters) or b for b in bases],
    )


def tag(key: bytes, nonce: str, sender: str, recipient: str) -> str:
    """The hash of one (sender, recipient) pair in the marker with ``nonce``; both
    addresses in their canonical form, lower case, the recipient without extension."""
    data = "\0".join((nonce, sender, recipient)).encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, digest_size=_TAG_BYTES, key=key, person=_PERSON).hexdigest()


def render(
    name: str,
    value: str,
    key: bytes,
    sender: str,
    recipients: Iterable[str],
    *,
    nonce: str | None = None,
) -> str:
    """The marker field's value for a message from ``sender`` accepted for
    ``recipients``, folded; bare without a key."""
    if not key:
        return value
    nonce = nonce or secrets.token_hex(_NONCE_BYTES)
    tags = {tag(key, nonce, sender, r) for r in recipients}
    if not tags or len(tags) > MAX_TAGGED:
        last = f"a={tag(key, nonce, sender, _EVERY)}"
        return fold(name, [f"{value};", f"n={nonce};", last])
    step = next(s for s in _STEPS if s >= len(tags))
    while len(tags) < step:
        tags.add(secrets.token_hex(_TAG_BYTES))
    words = [f"{t}," for t in sorted(tags)]
    words[0] = f"r={words[0]}"
    words[-1] = words[-1].rstrip(",")
    return fold(name, [f"{value};", f"n={nonce};", *words])


def parse(field: str, value: str) -> Marker | None:
    """Our marker ``field`` (its value as received, any case, folded or not) read back,
    :data:`BARE` for a bare one; None when it is not ours (``value``: our marker value,
    lower case)."""
    text = field.replace("\r", "").replace("\n", "").strip().lower()
    if text == value:
        return BARE
    if not text.startswith(value):
        return None
    rest = _KEYED.fullmatch("".join(text[len(value) :].split()))
    if rest is None:
        # Only the forms render writes: anything else (a forged "a=é") is not ours.
        return None
    nonce, every, tags = rest.group("nonce", "every", "tags")
    if every:
        return Marker(nonce, every, frozenset())
    return Marker(nonce, "", frozenset(tags.split(",")))


def named(key: bytes, marker: Marker, sender: str, recipients: Sequence[str]) -> tuple[int, ...]:
    """The indexes of the ``recipients`` (canonical, lower case, without extension) a
    keyed ``marker`` names with this ``sender``; every index for a marker of the sender
    alone (``a=``)."""
    if marker.every:
        if secrets.compare_digest(tag(key, marker.nonce, sender, _EVERY), marker.every):
            return tuple(range(len(recipients)))
        return ()
    tags = marker.tags
    return tuple(i for i, r in enumerate(recipients) if tag(key, marker.nonce, sender, r) in tags)
