"""Parsing of SMTP paths (``MAIL FROM`` / ``RCPT TO``) as a milter receives them.

pymilter hands the path over as a ``str`` such as ``"<user@example.com>"`` or
``"<>"``; some MTAs leave out the angle brackets, and bytes that are not valid
UTF-8 arrive as surrogate escapes (``"\\udcff"``). The grammar is RFC 5321
section 4.1.2, extended for internationalized mail by RFC 6531 section 3.3.

Everything here is syntax only: whether a domain resolves, whether the null
path is acceptable in the current command (it is not for ``RCPT TO``), or
whether an address literal points somewhere sensible is for the checks to decide.

Every input is length-checked before anything else is done with it, and no
regex here can backtrack more than linearly, because this runs on every MAIL
and RCPT command and the input comes straight from the client.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "Address",
    "AddressError",
    "IPAddress",
    "IPNetwork",
    "canonical_address",
    "canonical_domain",
    "canonical_local_part",
    "domain_to_unicode",
    "esmtp_params",
    "helo_spelling",
    "is_fqdn",
    "is_helo_fqdn",
    "is_valid_domain",
    "parse_address_literal",
    "parse_path",
    "unmapped",
    "unmapped_network",
]

#: An IP address as :func:`ipaddress.ip_address` returns it (the one alias for both).
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: IPv4-mapped IPv6 addresses (RFC 4291 2.5.5.2).
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
#: NAT64's well-known prefix (RFC 6052): an IPv4 host's address in the last 32 bits.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: The local-use prefix for IPv4/IPv6 translation (RFC 8215): a site's own prefix of
#: /48 to /96 inside it, the IPv4 address where RFC 6052 puts it for that length.
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def unmapped(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, an IPv4 client on a
    dual-stack socket) as the IPv4 address it is; any other address unchanged."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def unmapped_network(net: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 network as the IPv4 network it is, so that it matches the
    unmapped client addresses (:func:`unmapped`); any other network unchanged."""
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        first = net.network_address.ipv4_mapped
        if first is not None:
            return ipaddress.IPv4Network((first, net.prefixlen - _MAPPED.prefixlen))
    return net


# RFC 5321 4.5.3.1: limits in octets (of the UTF-8 form once RFC 6531 is in play).
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_LABEL = 63
MAX_PATH = 256  # including the angle brackets and any source route

# Anything longer than this cannot become a valid path even after trimming
# whitespace; refusing it up front bounds the work done on hostile input.
_MAX_RAW = 1024
# "[IPv6:" + 45 characters of the longest IPv6 text form + "]".
_MAX_LITERAL = 52

# C0 and C1 controls, DEL, and lone surrogates (Python's surrogateescape
# representation of bytes that were not valid UTF-8).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")

_ATEXT = "A-Za-z0-9!#$%&'*+\\-/=?^_`{|}~"
# Any character outside atext (and the dot separating atoms) in an unquoted
# local part; the UTF-8 variant adds RFC 6531 UTF8-non-ascii. Controls and
# surrogates have already been refused by the time these run.
_BAD_DOT_ATOM = re.compile(f"[^{_ATEXT}.]")
_BAD_DOT_ATOM_UTF8 = re.compile(f"[^{_ATEXT}.\u0080-\U0010ffff]")

# RFC 5321 Quoted-string: qtextSMTP is %d32-33 / %d35-91 / %d93-126 and
# quoted-pairSMTP is "\" %d32-126. The two alternatives cannot both match at
# the same position (the first excludes the backslash), so matching is linear.
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')
# RFC 6531 3.3 adds UTF8-non-ascii to qtextSMTP (but not to quoted-pairSMTP).
_QUOTED_UTF8 = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')

# A quoted-pair inside a validated Quoted-string: the backslash always has a partner.
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)

_LDH = re.compile(r"[A-Za-z0-9-]+")
_LDH_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_IPV4_CHARS = re.compile(r"[0-9.]+")
# Restricting the characters keeps ipaddress from accepting an RFC 4007 zone
# index ("fe80::1%eth0"), which has no place in an SMTP address literal.
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")

_WSP = " \t"


class AddressError(ValueError):
    """A path that does not parse.

    ``reason`` is a short fixed English phrase meant for logs. It never quotes
    the offending input, so it is safe to log without escaping.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed mailbox, the null path, or the bare ``Postmaster`` recipient.

    ``local`` is the local part exactly as given; a quoted local part keeps its
    quotes and backslashes (``'"a b"'``) so that :attr:`text` reproduces it. Compare
    addresses by :attr:`canonical` instead, so that ``"alice"`` and ``alice`` agree.
    ``domain`` is the domain as given, including an address literal's brackets
    and a trailing dot if there was one. Both are ``""`` for the null path; only
    ``domain`` is ``""`` for ``<Postmaster>`` (RFC 5321 4.5.1).
    """

    local: str
    domain: str
    # Computed on first use and kept: parsed addresses are memoized and shared, and
    # several checks compare the same sender every session (see canonical).
    _canonical: str | None = field(default=None, init=False, repr=False, compare=False)
    _canonical_lc: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def is_null(self) -> bool:
        """True for the null reverse-path ``<>`` (RFC 5321 4.5.5)."""
        return not self.local and not self.domain

    @property
    def text(self) -> str:
        """``local@domain`` without angle brackets; ``""`` for the null path."""
        if not self.domain:
            return self.local
        return f"{self.local}@{self.domain}"

    @property
    def domain_lc(self) -> str:
        """The domain lower-cased and without a trailing dot, for display.

        U-labels stay U-labels; compare :attr:`domain_canonical` instead.
        """
        return self.domain.lower().removesuffix(".")

    @property
    def domain_canonical(self) -> str:
        """The domain in its one form for comparisons (:func:`canonical_domain`):
        ``bücher.example`` and ``XN--BCHER-KVA.example.`` give ``xn--bcher-kva.example``."""
        return canonical_domain(self.domain)

    @property
    def lc(self) -> str:
        """:attr:`text` with only the domain lower-cased.

        The local part keeps its case: RFC 5321 2.4 leaves its interpretation
        to the receiving host, so ``User`` and ``user`` may be different
        mailboxes.
        """
        if not self.domain:
            return self.local
        return f"{self.local}@{self.domain_lc}"

    @property
    def canonical_local(self) -> str:
        """The local part in its one form for comparisons (:func:`canonical_local_part`):
        ``"alice"`` and ``"al\\ice"`` give ``alice``, a UTF-8 one is in NFC; the case
        is kept, as in :attr:`lc`."""
        return canonical_local_part(self.local)

    @property
    def is_postmaster(self) -> bool:
        """``postmaster`` in any case or spelling, at any domain or none (the mailbox
        RFC 5321 §4.5.1 requires to exist); whose domain counts is the caller's call."""
        return self.canonical_local.lower() == "postmaster"

    @property
    def canonical(self) -> str:
        """:attr:`canonical_local` ``@`` :attr:`domain_canonical`: what every list,
        blacklist and directory lookup compares (lower-cased on top wherever :attr:`lc`
        was). :attr:`text` stays what the client sent, for logs."""
        found = self._canonical
        if found is None:
            found = self.canonical_local
            if self.domain:
                found = f"{found}@{self.domain_canonical}"
            # Frozen: the one write, of a value that only depends on the fields.
            object.__setattr__(self, "_canonical", found)
        return found

    @property
    def canonical_lc(self) -> str:
        """:attr:`canonical` lower-cased: the key of the deny list, the blacklist, the
        directory and the same-size counter (local parts compared without case)."""
        found = self._canonical_lc
        if found is None:
            found = self.canonical.lower()
            object.__setattr__(self, "_canonical_lc", found)
        return found

    @classmethod
    def null(cls) -> Address:
        """The null path ``<>``."""
        return cls("", "")


def parse_path(raw: str, *, smtputf8: bool = False, allow_postmaster: bool = False) -> Address:
    """Parse a reverse-path or forward-path as given to the milter (memoized: the same
    senders and recipients come back all day; see :func:`_parse_path`)."""
    if len(raw) > _MAX_RAW:
        # Refused before the memo, so hostile input cannot evict the useful entries.
        raise AddressError("path too long")
    outcome = _memo_parse(raw, smtputf8, allow_postmaster)
    if isinstance(outcome, str):
        raise AddressError(outcome)
    return outcome


@functools.lru_cache(maxsize=8192)
def _memo_parse(raw: str, smtputf8: bool, allow_postmaster: bool) -> Address | str:
    """The parsed address, or the reason it is invalid (errors are cached as text:
    caching the exception object would keep its traceback alive)."""
    try:
        return _parse_path(raw, smtputf8=smtputf8, allow_postmaster=allow_postmaster)
    except AddressError as exc:
        return exc.reason


def _parse_path(raw: str, *, smtputf8: bool = False, allow_postmaster: bool = False) -> Address:
    """Parse a reverse-path or forward-path as given to the milter.

    Surrounding spaces and tabs are trimmed and the angle brackets may be
    missing. ``<>`` gives :meth:`Address.null`; the caller must refuse it where
    it is not allowed (``RCPT TO``). A source route (``<@a,@b:user@d>``) is
    checked for syntax and dropped, as RFC 5321 4.1.2 and appendix C require.

    With ``allow_postmaster`` the bare ``<Postmaster>`` (any case, no domain) is
    accepted, as RFC 5321 4.5.1 requires for ``RCPT TO``.

    With ``smtputf8`` (the client gave the SMTPUTF8 parameter, RFC 6531) UTF-8
    is allowed in the local part and as U-labels in the domain; otherwise any
    non-ASCII character is an error.

    Deliberately stricter than the grammar: an empty quoted local part
    (``""@example.com``) is refused since it names no usable mailbox, and an
    IPv4 literal with leading zeros is refused since some software reads those
    as octal. CR and LF are not trimmed but refused like other controls.

    Raises :class:`AddressError`.
    """
    inner = _unwrap(raw, smtputf8)
    if not inner:
        return Address.null()
    if allow_postmaster and inner.isascii() and inner.lower() == "postmaster":
        return Address(inner, "")
    if inner.startswith("@"):
        inner = _strip_source_route(inner, smtputf8)

    local, at, domain = inner.rpartition("@")
    if not at or not domain:
        raise AddressError("missing domain")
    if not local:
        raise AddressError("empty local part")
    reason = _local_part_error(local, smtputf8)
    if reason is None:
        reason = _mailbox_domain_error(domain, smtputf8)
    if reason is not None:
        raise AddressError(reason)
    return Address(local, domain)


@functools.lru_cache(maxsize=4096)
def canonical_local_part(local: str) -> str:
    """One spelling per mailbox of a local part, case kept.

    RFC 5321 4.1.2: a Quoted-string stands for its content, a quoted-pair for the
    character after the backslash, so ``"alice"`` and ``"al\\ice"`` name the mailbox
    ``alice`` and give that. Content that is not a Dot-string (``"a b"``, ``"a..b"``)
    can only be written quoted: it is given quoted with the fewest backslashes
    (``"a\\ b"`` gives ``"a b"``), so it never equals an unquoted local part.
    Anything that is not quoted is returned unchanged, but for NFC.
    """
    if not local.isascii():
        # RFC 6532 3.1: UTF-8 text is to be in NFC; a client may still send the NFD
        # spelling of the same name (macOS file names, some input methods).
        local = unicodedata.normalize("NFC", local)
    if len(local) < 2 or not (local.startswith('"') and local.endswith('"')):
        return local
    content = _QUOTED_PAIR.sub(r"\1", local[1:-1])
    if _is_dot_string(content):
        return content
    return '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_dot_string(text: str) -> bool:
    # The UTF-8 variant: non-ASCII content got past parsing only with SMTPUTF8.
    return (
        bool(text)
        and not _BAD_DOT_ATOM_UTF8.search(text)
        and not text.startswith(".")
        and not text.endswith(".")
        and ".." not in text
    )


def strip_extension(key: str, delimiters: str) -> str | None:
    """``key`` (a canonical, lower-cased address, :func:`canonical_address`) without
    its address extension, or None when it has none: an MTA with ``recipient_delimiter
    = +`` delivers ``alice+lists@example.com`` to ``alice@example.com``.

    As Postfix's split_addr(): the extension starts at the first of the ``delimiters``
    characters; postmaster, MAILER-DAEMON and double-bounce are never split, nor (when
    ``-`` is a delimiter) ``owner-foo`` and ``foo-request``, the list conventions older
    than extensions; a local part that would be left empty is not split either. Postfix
    splits the local part unquoted: ``"alice+a b"@`` is ``alice@``."""
    if not delimiters:
        return None
    local, at, domain = key.rpartition("@")
    if not at:
        local, domain = key, ""
    quoted = len(local) >= 2 and local.startswith('"') and local.endswith('"')
    if quoted:
        local = _QUOTED_PAIR.sub(r"\1", local[1:-1])
    if local in ("postmaster", "mailer-daemon", "double-bounce"):
        return None
    if "-" in delimiters and (local.startswith("owner-") or local.endswith("-request")):
        return None
    cut = min((at_ for d in delimiters if (at_ := local.find(d)) >= 0), default=-1)
    if cut <= 0:
        return None
    base = local[:cut]
    if quoted:
        # In its canonical form again: unquoted where it can be, else quoted.
        base = canonical_local_part('"' + base.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return f"{base}{at}{domain}"


def canonical_address(text: str) -> str:
    """:attr:`Address.canonical` of an address written in a list, a blacklist entry or
    the directory (``local@domain``, no angle brackets; not validated here): the local
    part as :func:`canonical_local_part` gives it, the domain as
    :func:`canonical_domain` does. Text without ``@`` is returned unchanged."""
    local, at, domain = text.rpartition("@")
    if not at:
        return text
    return f"{canonical_local_part(local)}@{canonical_domain(domain)}"


#: UTS 46 section 2.3: these full stops separate labels as "." does.
_FULL_STOPS = str.maketrans(dict.fromkeys("\u3002\uff0e\uff61", "."))


def canonical_domain(name: str) -> str:
    """The one form of a domain that every comparison uses: lower-case, no trailing
    dot, U-labels as A-labels. ``Bücher.Example.``, ``bücher.example`` (in NFC or
    NFD) and ``XN--BCHER-KVA.example`` all give ``xn--bcher-kva.example``, so a list
    written in either form meets a client using either (RFC 6531 allows U-labels in
    an SMTPUTF8 session; a list may be written either way).

    The A-label is the one IDNA2008 gives (Postfix's ``enable_idna2003_compatibility
    = no``, its default), approximated with the standard library (UTS 46 mapping by
    NFKC and lower-casing, then RFC 3492 Punycode): for some characters ICU's UTS 46,
    Postfix's, maps otherwise (capital sharp s to "ss", Cherokee to upper case), so
    relaying is never decided by it alone (SiteConfig.routes_as_ours). Not
    :mod:`encodings.idna`: IDNA2003 maps ``ß`` to ``ss``, which would make
    ``straße.de`` (``xn--strae-oqa.de``) one of our local domains if ``strasse.de``
    were. A label that cannot be converted (not a U-label by :func:`is_valid_domain`'s
    rules, or too long) stays as its NFC lower-cased text, so it still equals
    itself. Never raises.

    ASCII text (which includes every A-label) is only lower-cased, without a call
    into the conversion; the rest is memoized.
    """
    if name.isascii():
        if name.startswith("["):
            return _canonical_literal(name)
        return name.lower().rstrip(".")
    return _canonical_idn(name)


def _canonical_literal(text: str) -> str:
    # One spelling per address: [IPv6:2001:0db8:0:0::1] is [ipv6:2001:db8::1], and an
    # IPv4-mapped one is the IPv4 literal, so a listed literal cannot be respelled.
    ip = parse_address_literal(text)
    if ip is None:
        return text.lower()
    ip = unmapped(ip)
    return f"[{ip}]" if ip.version == 4 else f"[ipv6:{ip}]"


@functools.lru_cache(maxsize=4096)
def _canonical_idn(name: str) -> str:
    labels = name.translate(_FULL_STOPS).rstrip(".").split(".")
    return ".".join(_a_label(label) for label in labels)


def _a_label(label: str) -> str:
    if label.isascii():
        return label.lower()
    # Character by character: str.lower() would make a word-final capital sigma a
    # final sigma, which UTS 46 does not.
    mapped = unicodedata.normalize(
        "NFC", "".join(ch.lower() for ch in unicodedata.normalize("NFKC", label))
    )
    if mapped.isascii() and "." not in mapped:
        return mapped  # compatibility forms of ASCII (full-width letters)
    if not _SURROGATE.search(mapped) and _ulabel_error(mapped) is None:
        a_label = "xn--" + mapped.encode("punycode").decode("ascii")
        if len(a_label) <= MAX_LABEL:
            return a_label
    return unicodedata.normalize("NFC", label.lower())


def domain_to_unicode(name: str) -> str:
    """``name`` (as :func:`canonical_domain` gives it) with its A-labels as U-labels:
    the form in which older versions stored an internationalized domain written
    that way, for looking such entries up. A label that does not decode is kept."""
    if "xn--" not in name:
        return name
    return ".".join(_u_label(label) for label in name.split("."))


def u_label_spelling(a_label: str) -> str | None:
    """The U-label spelling of a name written in A-labels (lower-case, as
    :func:`canonical_domain` gives it), when IDNA 2008 makes the A-labels of it again;
    None for a name with no such spelling (no xn-- label, or not IDNA 2008:
    xn--ls8h.la)."""
    unicode = domain_to_unicode(a_label)
    if unicode == a_label or canonical_domain(unicode) != a_label:
        return None
    return unicode


def _u_label(label: str) -> str:
    if not label.startswith("xn--"):
        return label
    try:
        return label[4:].encode("ascii").decode("punycode")
    except (UnicodeError, ValueError):
        return label


def _unwrap(raw: str, smtputf8: bool) -> str:
    """Check the path as a whole and return what is inside the angle brackets."""
    if len(raw) > _MAX_RAW:
        raise AddressError("path too long")
    path = raw.strip(_WSP)
    if not path:
        raise AddressError("empty path")
    # Characters are never more than octets, so this needs no encoding yet.
    if len(path) > MAX_PATH:
        raise AddressError("path too long")
    if _SURROGATE.search(path):
        raise AddressError("undecodable bytes in path")
    if _CONTROL.search(path):
        raise AddressError("control character in path")
    if path.isascii():
        size = len(path)
    elif smtputf8:
        size = len(path.encode("utf-8"))
    else:
        raise AddressError("non-ASCII characters without SMTPUTF8")

    bracketed = path.startswith("<")
    if bracketed != path.endswith(">"):
        raise AddressError("unbalanced angle brackets")
    if bracketed:
        inner = path[1:-1]
    else:
        # Count the brackets the MTA left out, so the limit means the same.
        inner = path
        size += 2
    if size > MAX_PATH:
        raise AddressError("path too long")
    return inner


def _strip_source_route(inner: str, smtputf8: bool) -> str:
    """Check an RFC 5321 A-d-l (``@a,@b:``) and return what follows it.

    At-domain allows no address literals, so the first colon ends the route.
    """
    route, colon, mailbox = inner.partition(":")
    if not colon:
        raise AddressError("malformed source route")
    for hop in route.split(","):
        if not hop.startswith("@") or not is_valid_domain(hop[1:], allow_utf8=smtputf8):
            raise AddressError("malformed source route")
    if not mailbox:
        raise AddressError("source route without mailbox")
    return mailbox


def _local_part_error(local: str, smtputf8: bool) -> str | None:
    octets = len(local.encode("utf-8")) if smtputf8 else len(local)
    if octets > MAX_LOCAL_PART:
        return "local part too long"
    if local.startswith('"'):
        pattern = _QUOTED_UTF8 if smtputf8 else _QUOTED
        if not pattern.fullmatch(local):
            return "invalid quoted local part"
        if local == '""':
            return "empty local part"
        return None
    bad = _BAD_DOT_ATOM_UTF8 if smtputf8 else _BAD_DOT_ATOM
    if bad.search(local):
        return "character not allowed in unquoted local part"
    if local.startswith(".") or local.endswith("."):
        return "local part starts or ends with a dot"
    if ".." in local:
        return "consecutive dots in local part"
    return None


def _mailbox_domain_error(domain: str, smtputf8: bool) -> str | None:
    if domain.startswith("["):
        if parse_address_literal(domain) is not None:
            return None
        # RFC 5321 4.1.3 General-address-literal: no tag has ever been
        # registered, so no MTA can deliver to one; refuse rather than guess.
        if domain.endswith("]") and ":" in domain and domain[1:6].lower() != "ipv6:":
            return "general address literal not supported"
        return "invalid address literal"
    return _domain_error(domain, smtputf8)


@functools.lru_cache(maxsize=4096)
def _domain_error(name: str, allow_utf8: bool) -> str | None:
    # Cached: the same HELO names and sender domains come back session after session,
    # and several checks validate the same name.
    if len(name) > MAX_DOMAIN + 1:
        return "domain too long"
    name = name.removesuffix(".")
    if not name:
        return "empty domain"
    if name.isascii():
        if len(name) > MAX_DOMAIN:
            return "domain too long"
        for label in name.split("."):
            reason = _ascii_label_error(label)
            if reason is not None:
                return reason
        return None
    if not allow_utf8:
        return "non-ASCII domain"
    if _SURROGATE.search(name) or _CONTROL.search(name):
        return "control character in domain"
    if len(name.encode("utf-8")) > MAX_DOMAIN:
        return "domain too long"
    for label in name.split("."):
        reason = _ascii_label_error(label) if label.isascii() else _ulabel_error(label)
        if reason is not None:
            return reason
    return None


def _ascii_label_error(label: str) -> str | None:
    if not label:
        return "empty domain label"
    if len(label) > MAX_LABEL:
        return "domain label too long"
    if not _LDH.fullmatch(label):
        return "domain label not letters, digits and hyphens"
    if label.startswith("-") or label.endswith("-"):
        return "domain label starts or ends with a hyphen"
    return None


def _ulabel_error(label: str) -> str | None:
    """A deliberately simple U-label check (RFC 6531 allows U-labels, RFC 5890).

    Letters, marks and digits of any script plus ASCII LDH; no spaces,
    punctuation or symbols, which keeps look-alike separators such as U+3002
    IDEOGRAPHIC FULL STOP out. Full IDNA2008 validation would need a new
    dependency, and the MTA (or DNS) has the final word anyway.
    """
    if len(label.encode("utf-8")) > MAX_LABEL:
        return "domain label too long"
    if label.startswith("-") or label.endswith("-"):
        return "domain label starts or ends with a hyphen"
    for ch in label:
        if ch in _LDH_CHARS:
            continue
        if ch.isascii() or unicodedata.category(ch)[0] not in "LMN":
            return "character not allowed in domain label"
    # RFC 5891 4.2.3.2: a label must not begin with a combining mark.
    if unicodedata.category(label[0]).startswith("M"):
        return "domain label starts with a combining mark"
    return None


def is_valid_domain(name: str, *, allow_utf8: bool = False) -> bool:
    """Whether ``name`` is a syntactically valid host name.

    LDH labels of 1 to 63 octets, at most 255 octets in all, one trailing dot
    allowed. A single label is fine here; :func:`is_fqdn` asks for more. With
    ``allow_utf8`` labels may be U-labels (see :func:`parse_path`). Address
    literals are not host names and give False.
    """
    return _domain_error(name, allow_utf8) is None


def is_fqdn(name: str, *, allow_utf8: bool = False) -> bool:
    """Whether ``name`` is a valid domain of at least two labels whose last
    label is not all digits (so a dotted IPv4 address is not an FQDN)."""
    if not is_valid_domain(name, allow_utf8=allow_utf8):
        return False
    labels = name.removesuffix(".").split(".")
    return len(labels) >= 2 and not labels[-1].isdigit()


def helo_spelling(name: str) -> str:
    """``name`` as a greeting's syntax is judged: an underscore taken as a letter, as
    Postfix's valid_hostname() takes it (Windows hosts greet with such names), so the
    helo, helo_dns and SPF checks judge one set of names (review rev112 F3, rev115 F1)."""
    return name.replace("_", "x")


@functools.lru_cache(maxsize=4096)
def is_helo_fqdn(name: str) -> bool:
    """:func:`is_fqdn` of a greeting (:func:`helo_spelling`). Cached: three checks ask
    it of the same name, and the same names greet session after session."""
    return is_fqdn(helo_spelling(name))


def parse_address_literal(text: str) -> IPAddress | None:
    """The address in an RFC 5321 4.1.3 address literal, else None.

    ``"[192.0.2.1]"`` gives an IPv4Address and ``"[IPv6:2001:db8::1]"`` (tag in
    any case) an IPv6Address. General literals (``"[tag:...]"``), zone indexes
    and IPv4 with leading zeros give None.
    """
    if len(text) > _MAX_LITERAL or not (text.startswith("[") and text.endswith("]")):
        return None
    body = text[1:-1]
    try:
        if body[:5].lower() == "ipv6:":
            body = body[5:]
            if not _IPV6_CHARS.fullmatch(body):
                return None
            return ipaddress.IPv6Address(body)
        if not _IPV4_CHARS.fullmatch(body):
            return None
        return ipaddress.IPv4Address(body)
    except ValueError:
        return None


def esmtp_params(args: Sequence[str]) -> dict[str, str | None]:
    """Map ESMTP parameters (RFC 5321 4.1.2 Mail-parameters) to a dict.

    ``["SIZE=100", "SMTPUTF8"]`` gives ``{"SIZE": "100", "SMTPUTF8": None}``.
    Keywords are upper-cased (they are case-insensitive); values are kept as
    given, still xtext-encoded where the extension says so (ENVID, ORCPT).
    ``"KEY="`` gives ``""``, distinct from a keyword without a value. Empty
    arguments are skipped and a repeated keyword keeps its last value, which is
    the one an MTA processing parameters in order would act on.
    """
    params: dict[str, str | None] = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if not key:
            continue
        params[key.upper()] = value if eq else None
    return params


_XTEXT_CHAR = re.compile(r"\+([0-9A-F]{2})")


def xtext_decode(text: str) -> str:
    """RFC 3461 §4 xtext: each ``+XX`` (two upper-case hex digits) is that octet.

    Octets that are not UTF-8 leave ``text`` as it was: no mailbox or login has that
    name, and the caller's lookup fails the usual way."""
    if "+" not in text:
        return text
    try:
        return (
            _XTEXT_CHAR.sub(lambda m: chr(int(m.group(1), 16)), text)
            .encode("latin-1")
            .decode("utf-8")
        )
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def raw_parts(raw: str) -> tuple[str, str]:
    """The local part and domain an unparsable path seems to name: split at its last
    "@" (no "@": all local part), the domain lower-cased; comments, white space,
    quotes and angle brackets removed first, as the MTA's tokenizer drops them
    (review rev70 N1: "<x@small.example>(c)" named the domain "small.example>")."""
    local, at, domain = _bare(raw).rpartition("@")
    return (local, domain.rstrip(".").lower()) if at else (domain, "")


def _bare(raw: str) -> str:
    """``raw`` without comments, white space, quotes, backslashes and angle brackets."""
    text = _without_comments(raw)
    for char in '"\\<>':
        text = text.replace(char, "")
    return "".join(text.split())


#: Source routes before an address: "@a,@b:" and "@a:@b:" (RFC 5321 §4.1.2, obsolete).
_ROUTE = re.compile(r"^(?:@[^,:;]*[,:])+")


def implied_domains(raw: str) -> frozenset[str]:
    """The domains of :func:`implied_addresses`; ``""`` for the MTA's own."""
    return frozenset(domain for _local, domain in implied_addresses(raw))


def implied_mailboxes(raw: str) -> list[tuple[str, str]]:
    """The addresses of :func:`implied_addresses` that name a domain, in a fixed order,
    each as written and in its canonical form (domain in A-labels), for lookups of
    who the sender is (deny lists, the blacklist)."""
    return [
        (f"{local}@{domain}", f"{local}@{canonical_domain(domain)}")
        for local, domain in sorted(implied_addresses(raw))
        if domain
    ]


def implied_addresses(raw: str) -> frozenset[tuple[str, str]]:
    """The (local part, domain) pairs an MTA may make an unparsable path into,
    lower-cased; a domain ``""`` stands for the MTA's own (appended to an address
    without one). None for a path of nothing but comments, white space and
    separators: the MTA reads it as the null sender.

    Postfix (and Sendmail's rulesets alike) accepts such a sender when nothing refuses
    it, and its cleanup makes an address of it: a source route is dropped
    (``<@relay:user@domain>``), quotes are removed (resolve_dequoted_address), an
    address without a domain gets ``@$myorigin`` (append_at_myorigin),
    ``user%domain`` is routed by the percent hack (allow_percent_hack) and
    ``domain!user`` by the bang path (swap_bangpath). Checks of who the sender is
    judge every address it may become (review rev65 F1: ``<alice%example.com>`` and
    ``<alice>`` from a stranger were delivered as alice@example.com, since no check
    but the syntax one looked at a sender that did not parse)."""
    # Postfix's tokenizer (tok822) drops comments and white space, and reads a list,
    # a group ("name: addr;") and source routes ("@a,@b:addr", "@a:@b:addr") down to
    # an address (review rev67 F1: "<alice@example.com(x)>", "<x:alice@example.com;>",
    # "<alice@example.com,>" and "<@a:@b:alice>" were each delivered as one of ours).
    # Dequoted: '"user@foreign"' is user@foreign to Postfix's resolver.
    # Angle brackets go wherever they are (rev70 N1: "<alice@example.com>(x)" and
    # "<alice@example.com>," kept a ">" in the domain).
    text = _bare(raw)
    # Each element of a list, after a group's name.
    pieces = {e.rpartition(":")[2] for e in re.split(r"[,;]", _ROUTE.sub("", text))} - {""}
    found: set[tuple[str, str]] = set()
    for piece in pieces:
        local, at, domain = piece.rpartition("@")
        if not at:
            local, domain = domain, ""
        found.add((local, domain))
        for mark in "%@":  # user%domain; user@domain, from a dequoted local part
            if mark in local:
                user, _, host = local.rpartition(mark)
                found.add((user, host))
        if "!" in local:
            host, _, user = local.partition("!")
            found.add((user, host))
    return frozenset(
        (user.strip().lower(), host.strip().rstrip(".").lower()) for user, host in found
    )


_NESTING = {"(": 1, ")": -1}
#: A quoted string and a domain literal ("[...]", review rev72 S1: "<@[(]:alice@...>"
#: opened a comment that Postfix does not see): a "(" inside either is a character.
_OPENS = {'"': '"', "[": "]"}


def _without_comments(text: str) -> str:
    """``text`` without RFC 5322 comments (nested parentheses), read as Postfix's
    tokenizer reads it: a ``(`` inside a quoted string, a domain literal or after a
    backslash is a character of the address, not a comment (review rev71 R1:
    "\"(victim\"@gmail.example" lost its domain). Linear; an unclosed comment, string
    or literal runs to the end."""
    if "(" not in text:
        return text
    out: list[str] = []
    depth = 0
    escaped = False
    closing = ""  # what ends the quoted string or domain literal we are in, if any
    for char in text:
        if depth:
            if not escaped:
                depth += _NESTING.get(char, 0)
        elif escaped or closing or char != "(":
            out.append(char)
            if not escaped:
                if char == closing:
                    closing = ""
                elif not closing and char in _OPENS:
                    closing = _OPENS[char]
        else:
            depth = 1
        escaped = not escaped and char == "\\"
    return "".join(out)
