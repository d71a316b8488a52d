"""sendmail.mc lines generated from the smtpguard config (``smtpguard sendmail-config``).

``contrib/sendmail/smtpguard.mc`` is this output for the sample config; a test keeps
them in step.
"""

from __future__ import annotations

import math
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from smtpguard.bounds import answer_bounds
from smtpguard.config import Config
from smtpguard.sockets import host_addresses, libmilter_address

#: Macros smtpguard reads, per list; each is appended when the list lacks it, never
#: replacing the list. Sendmail's defaults (cf/m4/cfhead.m4, 8.17 and 8.18) hold
#: ``{tls_version}`` (HELO) and ``i``, ``{auth_type}``, ``{auth_authen}`` (MAIL), but
#: another milter's lines may have replaced a list without them (review rev68 F2: every
#: login was then unknown to smtpguard, and its mail refused as relay_local_fail).
#: ``i`` at DATA and end of message needs no list of its own: libmilter keeps a
#: stage's macros for the later stages of the transaction (``smfi_getsymval`` searches
#: them all), and Sendmail's queue id is fixed from MAIL on. ``{client_resolve}``
#: (Sendmail's verdict on the client's host name) is read at connect. ``{tls_version}``
#: at MAIL too: Sendmail takes AUTH right after STARTTLS without a new EHLO (RFC 3207
#: only says the client SHOULD send one), and then no HELO step carries it; the
#: mechanism rule refused such a TLS session's PLAIN login as without TLS (found by
#: review through Sendmail with STARTTLS).
SENDMAIL_MACROS: Final = {
    "confMILTER_MACROS_CONNECT": ("v", "{client_resolve}"),
    "confMILTER_MACROS_HELO": ("{tls_version}",),
    "confMILTER_MACROS_ENVFROM": ("i", "{auth_type}", "{auth_authen}", "{tls_version}"),
}

#: What smtpguard cannot do without each macro: the build warns when a line after
#: smtpguard's replaced a list without it (review rev70 N5: every login unknown).
MACRO_NEEDS: Final = {
    "v": "it cannot tell Sendmail from other MTAs (replies ASCII only, logins not decoded)",
    "{client_resolve}": "host_suffixes exemptions need a resolver",
    "{tls_version}": "logins that policy.auth_tls_required names are refused",
    "i": "log lines have no queue id",
    "{auth_type}": "logins are unknown to smtpguard: their mail is refused",
    "{auth_authen}": "logins are unknown to smtpguard: their mail is refused",
}

#: ``T=R:`` and ``T=E:`` never go below these (the fixed values they had before they
#: were derived from the config): a default config keeps Sendmail's usual timeouts.
MIN_READ_TIMEOUT: Final = 30
MIN_EOM_TIMEOUT: Final = 300
#: Seconds added to smtpguard's own worst case: scheduling, logging, a busy host.
ANSWER_MARGIN: Final = 10.0


def sendmail_timeouts(config: Config, *, floor: int = MIN_READ_TIMEOUT) -> str:
    """The ``T=`` value of the ``INPUT_MAIL_FILTER`` line.

    Sendmail's milter.c reads every reply, the one to end of message included, with
    ``R:``; ``E:`` only caps the whole end-of-message exchange. An ``R:`` below
    smtpguard's slowest answer makes Sendmail give up first and answer ``451`` itself
    (``F=T``), whatever smtpguard then decides (``on_temp_error = "pass"`` included),
    and the rest of the session goes without the filter. So ``R:`` is
    :func:`answer_bounds` plus :data:`ANSWER_MARGIN`, at least ``floor`` seconds;
    ``E:`` at least as long. ``floor`` is there for tests that scale time down.

    ``S:`` is as long as ``R:``: Sendmail writes the body chunks without waiting for
    replies, and once the socket's buffers are full (about 200 KB) its write waits
    for smtpguard's body callback, which may be waiting on a scanner for up to its
    timeout. Sendmail's usual 10 s tempfailed every large message while clamd was
    slow, whatever ``on_temp_error`` said.
    """
    read = max(floor, math.ceil(answer_bounds(config).longest + ANSWER_MARGIN))
    eom = max(MIN_EOM_TIMEOUT, read)
    return f"C:30s;S:{read}s;R:{read}s;E:{_duration(eom)}"


def _duration(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


#: m4 regexps (GNU Emacs syntax) of a character that cannot be part of a macro's name,
#: and of a filter's name (config.milter.name is letters, digits, "_", "." and "-").
_MACRO_EDGE: Final = "[^A-Za-z0-9_{}]"
_NAME_EDGE: Final = "[^A-Za-z0-9_.-]"


def _m4_lists(key: str, item: str, edge: str = _MACRO_EDGE) -> str:
    """An m4 expression: -1 when the list ``key`` does not hold ``item`` (an m4 regexp,
    between two characters ``edge`` matches: none that can be part of a macro's name),
    else its place."""
    return f"regexp(`,'defn(`{key}')`,', `{edge}{item}{edge}')"


def _m4_filter_listed(name: str) -> str:
    """:func:`_m4_lists` for the filter ``name`` in ``confINPUT_MAIL_FILTERS``."""
    return _m4_lists("confINPUT_MAIL_FILTERS", _m4_literal(name), _NAME_EDGE)


def _m4_literal(name: str) -> str:
    """A filter name as an m4 regexp (letters, digits, "_", "." and "-")."""
    return name.replace(".", "\\.")


def sendmail_macro_lines() -> list[str]:
    """``define`` lines that append to Sendmail's macro lists instead of replacing them,
    each macro only when the list lacks it.

    ``defn`` yields the list as it stands (Sendmail's default, or what the .mc set
    before), without expanding it inside the argument, where the commas of a list
    defined with single quotes would split it; ``regexp`` looks for the macro between
    two characters that cannot be part of a macro's name (the list may hold m4's
    quotes: Sendmail's defaults are defined quoted twice). The appended part is
    quoted three times: ``ifelse`` takes one level and the rescan of its result
    another, so that it stays quoted in the new definition and a milter after us
    that appends with ``define(`X', X`, ...')`` (milter-greylist's form) still gets
    a list its commas cannot split. Checked with
    Sendmail 8.17's cf files (tests/test_sendmail_config.py builds the .cf both ways
    round, and with lists that lack what smtpguard reads).
    """
    return [
        f"{_m4_append(key, macro)}dnl"
        for key, macros in SENDMAIL_MACROS.items()
        for macro in macros
    ]


def _m4_append(key: str, macro: str) -> str:
    """An m4 ``define`` that appends ``macro`` to the list ``key`` when it lacks it
    (see :func:`sendmail_macro_lines` for its quoting)."""
    found = _m4_lists(key, macro)
    return f"define(`{key}', defn(`{key}')ifelse({found}, -1, ```, {macro}'''))"


#: An m4 condition for the guards' ``m4wrap`` text: true once Sendmail's proto.m4 has
#: been read (it defines ``_OPTION``, which writes the .cf's ``O`` lines). cfhead.m4
#: wraps proto.m4's inclusion first, and GNU m4 1.4 rereads wrapped text last in,
#: first out: the guards run before proto.m4 writes the lists and may still change
#: them. An m4 that rereads in the order of the calls (POSIX) runs them after.
_PROTO_READ: Final = "`_OPTION'"


def sendmail_filter_guard(name: str) -> str:
    """An ``m4wrap`` line: at the end of the .mc, when ``name`` is not in
    ``confINPUT_MAIL_FILTERS`` the list gets it back first and the build fails; when it
    is not the first filter there, the build warns.

    Sendmail's cf/README also enlists filters with ``MAIL_FILTER`` and a
    ``define(`confINPUT_MAIL_FILTERS', ...)``: such a line after ours replaces the list,
    the .cf builds without a word and Sendmail runs without smtpguard (review rev68
    F1: deny lists off, forged result fields delivered, an open relay with
    ``relay_control = "milter"``). Stopping m4 there was not enough: Debian's
    ``sendmailconfig`` and ``/etc/mail/Makefile`` install whatever m4 wrote, and m4
    had written no rule sets yet (rev70 N4). So the list gets smtpguard back in front
    of the other filters, and m4 exits 1 only once proto.m4 has written the whole .cf
    (an ``m4wrap`` made while wrapped text is reread runs after all of it): a build
    that stops on the error keeps the old .cf, one that does not installs a complete
    .cf with smtpguard. Should proto.m4 already have been read (:data:`_PROTO_READ`),
    the list is written: m4 stops at once, as before.

    A filter before ours shows smtpguard the header as it left it, and smtpguard
    removes what it takes for a forgery of its own fields (rev68 F3: another milter's
    genuine Authentication-Results under the same authserv-id)."""
    key = "confINPUT_MAIL_FILTERS"
    listed = f"defn(`{key}')"
    problem = (
        f"smtpguard: {name} is not in {key} (a later define replaced the list:"
        f" put {name} first in it)"
    )
    late = f"errprint(`{problem}; this sendmail.cf would run without smtpguard\n')m4exit(1)"
    others = f"ifdef(`{key}', `ifelse({listed}, `', `', ``,'{listed}')')"
    put_back = (
        f"errprint(`{problem}; this sendmail.cf has it back, first\n')"
        f"define(`{key}', `{name}'{others})m4wrap(`m4exit(1)')"
    )
    missing = f"ifdef({_PROTO_READ}, `{late}', `{put_back}')"
    not_first = (
        f"errprint(`smtpguard: warning: {name} is not the first of {key}:"
        " it sees the header fields as the filters before it left them\n')"
    )
    pattern = _m4_literal(name)
    first = f"regexp(`,'{listed}, `^{_NAME_EDGE}*{pattern}\\({_NAME_EDGE}\\|$\\)')"
    anywhere = _m4_filter_listed(name)
    # Text wrapped before ours (an m4wrap above these lines) runs after ours and may
    # replace the list again (review rev75 F2): looked at once more after proto.m4.
    # What proto.m4 wrote cannot be read back, and text wrapped from wrapped text may
    # change the list after it (rev76 N2): hence the grep.
    replaced_after = (
        f"errprint(`smtpguard: {name} is not in {key} after all (a define wrapped with"
        " m4wrap above the smtpguard lines replaced the list); this sendmail.cf may run"
        f" without smtpguard: check grep InputMailFilters sendmail.cf\n')m4exit(1)"
    )
    after_proto = (
        f"ifdef({_PROTO_READ}, `', `m4wrap(`ifelse({anywhere}, -1, `{replaced_after}')')')"
    )
    # Named twice: Sendmail 8.17 answers every MAIL with 451 4.3.2 (a site's own
    # INPUT_MAIL_FILTER after these lines, rev76 N4); defined twice: it does not start
    # (an earlier line quoted oddly, rev76 N1). Neither can be mended here.
    # The second name's edge may be the first one's: "smtpguard,smtpguard".
    named = f"{_NAME_EDGE}{pattern}{_NAME_EDGE}"
    twice_listed = f"regexp(`,'{listed}`,', `{named}\\(.*{_NAME_EDGE}\\)?{pattern}{_NAME_EDGE}')"
    twice_defined = f"regexp(defn(`_MAIL_FILTERS_'), `^X{pattern} *,\\(.\\|\n\\)*\nX{pattern} *,')"
    broken = (
        f"ifelse({twice_listed}, -1, `', `errprint(`smtpguard: {key} names {name} twice:"
        " Sendmail would answer every MAIL with 451; keep one\n')m4wrap(`m4exit(1)')')"
        f"ifelse({twice_defined}, -1, `', `errprint(`smtpguard: {name} is defined twice:"
        " Sendmail would not start; keep one INPUT_MAIL_FILTER line\n')m4wrap(`m4exit(1)')')"
    )
    check = f"ifelse({anywhere}, -1, `{missing}', `ifelse({first}, -1, `{not_first}')')"
    return f"m4wrap(`{after_proto}{check}{broken}')dnl"


def sendmail_filter_line(name: str, equates: str) -> str:
    """The line that enlists the filter: ``INPUT_MAIL_FILTER``, or ``MAIL_FILTER`` (the
    ``X`` line alone) when ``confINPUT_MAIL_FILTERS`` already names it, or neither,
    with an error and m4 exiting 1 at the end, when its ``X`` line is already there.

    Sendmail's cf/README lets a .mc define the list first and the filters after; with
    ``INPUT_MAIL_FILTER`` the list then names smtpguard twice, and Sendmail 8.17
    answered every MAIL with ``451 4.3.2 Please try again later``. smtpguard's lines
    pasted twice (an upgrade beside the old ones) define the ``X`` line twice, and
    Sendmail does not start (``Xsmtpguard: duplicate filter definition``, exit 70): the
    first copy is kept. The exit waits for the end (an ``m4wrap`` made from wrapped
    text) so that the .cf is whole: Debian installs it even when m4 fails."""
    defined = f"regexp(defn(`_MAIL_FILTERS_'), `^X{_m4_literal(name)},')"
    listed = _m4_filter_listed(name)
    enlist = f"ifelse({listed}, -1, `INPUT_MAIL_FILTER', `MAIL_FILTER')(`{name}', `{equates}')"
    return f"ifelse({defined}, -1, `{enlist}', `{_defined_twice(name)}')dnl"


def _defined_twice(name: str) -> str:
    """m4: the error for a second definition of the filter, and m4 exiting 1 once the
    whole .cf is written."""
    return (
        f"errprint(`smtpguard: the {name} filter is defined twice (are the smtpguard lines in"
        " this .mc twice?): the later definition is left out; keep one copy\n')"
        "m4wrap(`m4wrap(`m4exit(1)')')"
    )


def sendmail_filter_once(name: str) -> str:
    """A line after the filter's own: a later ``MAIL_FILTER`` or ``INPUT_MAIL_FILTER``
    of the same name is left out, with :func:`_defined_twice`'s error.

    The lines of a release before this one, pasted below these, enlisted the filter a
    second time: Sendmail did not start (a duplicate ``X`` line) and m4 said nothing
    (review rev75 F1). Sendmail's two macros are wrapped once, under names of this
    filter's own, so that a second copy of these lines, or another instance of
    smtpguard with its own name, wraps them again without looping."""
    # One m4 name per filter name: "a.b" and "a_b" must not share one (rev76 N1).
    key = "_smtpguard_once_" + re.sub(r"[^A-Za-z0-9]", lambda m: f"_{ord(m[0]):02x}", name)
    wrap = []
    for macro in ("MAIL_FILTER", "INPUT_MAIL_FILTER"):
        saved = f"{key}_{macro}"
        wrap.append(
            f"define(`{saved}', defn(`{macro}'))"
            f"define(`{macro}', `ifelse(`$1', `{name}', `{_defined_twice(name)}', `{saved}($@)')')"
        )
    return f"ifdef(`{key}_MAIL_FILTER', `', `{''.join(wrap)}')dnl"


def sendmail_macro_guard() -> str:
    """An ``m4wrap`` line: at the end of the .mc, each macro smtpguard reads that its
    list lacks (a line after smtpguard's replaced the list, so the appends of
    :func:`sendmail_macro_lines` came too early; review rev70 N5) is appended again,
    with a warning. Should proto.m4 already have been read (see
    :func:`sendmail_filter_guard`), the warning says what is missing instead."""
    checks = []
    for key, macros in SENDMAIL_MACROS.items():
        for macro in macros:
            found = _m4_lists(key, macro)
            lacks = (
                f"smtpguard: warning: {key} lacks {macro} (a later define replaced it;"
                " put that define above the smtpguard lines)"
            )
            late = f"errprint(`{lacks}: {MACRO_NEEDS[macro]}\n')"
            put_back = f"errprint(`{lacks}: added back\n'){_m4_append(key, macro)}"
            checks.append(f"ifelse({found}, -1, `ifdef({_PROTO_READ}, `{late}', `{put_back}')')")
    return f"m4wrap(`{''.join(checks)}')dnl"


#: What the INPUT_MAIL_FILTER line's S= may hold. Sendmail splits the equates at a
#: comma, cuts the line at "#", expands "$x" as a macro, and m4's quotes end the
#: argument: the .cf then fails to load, runs without the filter, or tempfails every
#: session (each seen with Sendmail 8.17). Only characters tried live are let through.
SAFE_SOCKET: Final = re.compile(r"[A-Za-z0-9/._+%:@\[\] -]+\Z")


class SendmailConfigError(ValueError):
    """A config that no sendmail.mc line can express."""


def sendmail_socket_problem(socket: str) -> str | None:
    """Why the INPUT_MAIL_FILTER line cannot carry ``socket``, or None."""
    if SAFE_SOCKET.match(socket):
        return None
    odd = sorted({c for c in socket if not SAFE_SOCKET.match(c)})
    return (
        f"{socket!r}: Sendmail's INPUT_MAIL_FILTER line cannot carry"
        f" {' '.join(repr(c) for c in odd)} (the .cf fails to load, runs without the"
        " filter or tempfails every session); use letters, digits and / . _ - + % only"
    )


#: What a config that calls its MTA Postfix gets from the Sendmail commands (review
#: rev140 F1: UTF-8 replies towards a Sendmail without macro v put sessions out of step).
MTA_PROBLEM = (
    'milter.mta = "postfix": a Sendmail that sends no macro v would get UTF-8 replies,'
    ' which it mangles; set milter.mta = "auto" (or "sendmail")'
)


def sendmail_mc(config: Config) -> str:
    socket = config.milter.socket
    problem = sendmail_socket_problem(socket)
    if problem is not None:
        raise SendmailConfigError(f"milter.socket {problem}")
    if config.milter.mta == "postfix":
        raise SendmailConfigError(MTA_PROBLEM)
    address = _sendmail_address(socket)
    lines = [
        "dnl smtpguard: sendmail.mc lines (generated by `smtpguard sendmail-config`).",
        "dnl Before the other INPUT_MAIL_FILTER lines: smtpguard must see the header",
        "dnl fields as the client sent them, not those other filters add.",
        "dnl F=T: tempfail while the filter is down. T=: connect, send, each reply (R:,",
        "dnl also the one to end of message: above smtpguard's slowest answer), overall.",
        "dnl Only its X line when the list already names it; nothing when these lines",
        "dnl came before (Sendmail stops at a filter defined twice).",
        sendmail_filter_line(
            config.milter.name, f"S={address}, F=T, T={sendmail_timeouts(config)}"
        ),
        "dnl A later definition of the same filter (older lines below these) is left out.",
        sendmail_filter_once(config.milter.name),
        "dnl If a later line drops smtpguard from the filter list, the .cf gets it back",
        "dnl first and m4 exits 1.",
        sendmail_filter_guard(config.milter.name),
        "dnl Macros: added to the lists Sendmail (and other milters) already send;",
        "dnl if a later line drops one, the build puts it back and warns.",
        *sendmail_macro_lines(),
        sendmail_macro_guard(),
        "dnl Hops: Sendmail counts its own Received header, which smtpguard never sees,",
        'dnl and refuses a message only after accepting it (250, then "Too many hops"): one',
        "dnl above limits.max_hops leaves the refusal to smtpguard, during the SMTP session.",
        "dnl Raised to that, never lowered: a higher confMAX_HOP of yours above these lines",
        "dnl stays (lowered, a dry run's 250 was followed by a bounce).",
        _max_hop_line(sendmail_max_hop(config.limits.max_hops)),
    ]
    if config.policy.auth_tls_required >= _CLEAR_MECHANISMS:
        lines += [
            "dnl AUTH: PLAIN and LOGIN offered only after STARTTLS (AuthOptions p, added to",
            "dnl your flags): Sendmail keeps a login made in clear across STARTTLS, and",
            "dnl smtpguard sees the session's TLS at MAIL, not when the password was sent.",
            _AUTH_OPTIONS_LINE,
        ]
    return "\n".join(lines) + "\n"


#: The mechanisms AuthOptions' p flag holds back until STARTTLS (sendmail's cf/README:
#: "susceptible to simple passive attack (e.g., PLAIN, LOGIN)").
_CLEAR_MECHANISMS: Final = frozenset({"PLAIN", "LOGIN"})
#: ``confAUTH_OPTIONS`` with ``p`` put first, unless it is there already: Sendmail's
#: readcf.c reads the first character, then only the one right after each separator
#: that follows (review rev191 F2: a "p" appended to "A," or after "A, " was never
#: read). The value's leading separators go (Sendmail skipped its leading blanks: after
#: "p," they would hide its first flag; review rev192 F2), the rest stays quoted.
_AUTH_OPTIONS_LINE: Final = (
    "ifdef(`confAUTH_OPTIONS', `ifelse(substr(defn(`confAUTH_OPTIONS'), 0, 1), `p', `',"
    " `define(`confAUTH_OPTIONS', `p,'patsubst(defn(`confAUTH_OPTIONS'),"
    " `^[ \t,]*\\(.*\\)', ```\\1'''))')', `define(`confAUTH_OPTIONS', `p')')dnl"
)


_SEPARATOR: Final = re.compile(r"[, \t]")


def sendmail_option_flags(value: str) -> set[str]:
    """The flags of an option such as AuthOptions as readcf.c reads them: the first
    character, then the one right after each separator (comma, space, tab) that
    follows the one read; a second separator in a row hides the flag after it."""
    value = value.strip()
    flags: set[str] = set()
    at = 0
    while at < len(value):
        flags.add(value[at])
        found = _SEPARATOR.search(value, at + 1)
        if found is None:
            break
        at = found.end()
    return flags - {",", " ", "\t"}


def _clear_login_problems(config: Config, options: Mapping[str, str]) -> list[str]:
    """PLAIN or LOGIN that policy.auth_tls_required names, offered by a Sendmail with
    STARTTLS but without AuthOptions p (review rev187 F1): a client logs in in clear,
    then starts TLS; Sendmail keeps the login, and at MAIL smtpguard sees an encrypted
    session."""
    if not options.get("servercertfile", "").strip():
        return []  # no STARTTLS: {tls_version} stays empty, and smtpguard refuses
    offered = set(re.split(r"[,\s]+", options.get("authmechanisms", "").upper()))
    exposed = sorted(offered & _CLEAR_MECHANISMS & config.policy.auth_tls_required)
    if not exposed or "p" in sendmail_option_flags(options.get("authoptions", "")):
        return []
    return [
        f"AuthOptions lacks p, and AuthMechanisms offers {' and '.join(exposed)} before"
        " STARTTLS: a client may send its password in clear, then start TLS, and"
        " Sendmail keeps the login, so smtpguard (which sees TLS at MAIL) cannot refuse"
        " it as policy.auth_tls_required asks; define confAUTH_OPTIONS with p"
    ]


def _max_hop_line(hops: int) -> str:
    """``confMAX_HOP`` raised to ``hops`` when it is lower or not defined (review rev160
    F1: an admin's 60 became 31, and a message a dry run let pass with 31 Received
    fields bounced after its 250)."""
    return (
        f"ifelse(eval(ifdef(`confMAX_HOP', `confMAX_HOP', `0') < {hops}), `1',"
        f" `define(`confMAX_HOP', `{hops}')')dnl"
    )


def _sendmail_address(socket: str) -> str:
    # Sendmail's S= is libmilter's family:PORT@HOST (loopback host written out), but
    # local: for a unix socket.
    kind, _, rest = socket.partition(":")
    return f"local:{rest}" if kind in ("unix", "local") else libmilter_address(socket)


#: Sendmail's MaxHopCount without an O line (conf.c).
SENDMAIL_DEFAULT_MAX_HOP: Final = 25


def _hop_problems(config: Config, value: str | None) -> list[str]:
    """MaxHopCount below what the generated lines set (review rev152 F4: an admin's
    ``confMAX_HOP`` after them brought back the 250 and then "Too many hops")."""
    found = re.match(r'\s*"?(\d+)', value or "")
    count = int(found.group(1)) if found else SENDMAIL_DEFAULT_MAX_HOP
    wanted = sendmail_max_hop(config.limits.max_hops)
    if count >= wanted:
        return []
    return [
        f"MaxHopCount is {count}, below limits.max_hops + 1 ({wanted}): Sendmail accepts a"
        f" message with {count} to {config.limits.max_hops} Received fields (250) and then"
        f' holds it as "Too many hops" instead of smtpguard refusing it; define'
        f" confMAX_HOP as {wanted} after any define of yours, or lower limits.max_hops"
    ]


def sendmail_max_hop(max_hops: int) -> int:
    """Sendmail's ``MaxHopCount`` that never fires before smtpguard's hop check.

    Sendmail bounces a message whose trace fields outnumber ``MaxHopCount``, its own
    ``Received:`` included, and it checks when delivering, after the client got
    ``250``. smtpguard refuses more than ``max_hops`` ``Received:`` fields at end of
    data (``looping_message``) and never sees Sendmail's own. With ``max_hops + 1``
    both draw the line at the same message, and smtpguard answers it first.
    """
    return max_hops + 1


def sendmail_cf_problems(config: Config, cf_text: str) -> list[str]:
    """What a built sendmail.cf says against this config: smtpguard not in
    ``InputMailFilters`` (or a daemon's own list) exactly once, or not first; a listed
    filter without its ``X`` line, or one defined twice; smtpguard's on another socket,
    without ``F=T`` or with timeouts shorter than its slowest answer; a macro list
    without what smtpguard reads; ``FEATURE(promiscuous_relay)`` or another that lets
    strangers relay while Sendmail, not smtpguard, is to refuse relaying; a
    ``MaxHopCount`` that answers before smtpguard's hop check.

    The m4 guards of :func:`sendmail_mc` cannot see everything (a list given as the
    name of another macro, an m4 that rereads wrapped text in call order, text wrapped
    from wrapped text; reviews rev75, rev76): the .cf is what Sendmail will run. It is
    read as Sendmail 8.17's readcf.c and milter.c read it (review rev78): continuation
    lines, option names in any case with spaces around "=", filter names split at ","
    and ";" and looked up in any case, an equate's key by its first letter, quotes
    around a value, ``unix:`` for ``local:``."""
    text = re.sub(r"\r?\n[ \t]+", " ", cf_text.replace("\r\n", "\n"))
    options = {
        key.lower(): value.strip()
        for key, value in re.findall(r"^O[ \t]*([\w.]+)[ \t]*=(.*)$", text, re.M)
    }
    filters = _filter_list(options.get("inputmailfilters", ""))
    defined: dict[str, list[str]] = {}
    for x_name, rest in re.findall(r"^X([^\s,]+)[\s,]*(.*)$", text, re.M):
        defined.setdefault(x_name.lower(), []).append(rest)
    problems = _cf_filter_problems(config.milter.name, filters, defined)
    if config.milter.mta == "postfix":
        problems.append(MTA_PROBLEM)
    for index, daemon in enumerate(
        re.findall(r"^O[ \t]*DaemonPortOptions[ \t]*=(.*)$", text, re.M | re.I)
    ):
        # Review rev131 F1: a daemon's own list (its I= equate, daemon.c) replaces
        # InputMailFilters for the sessions it accepts.
        equates = _daemon_equates(daemon)
        if "I" in equates:
            where = f"DaemonPortOptions {equates.get('N', f'Daemon{index}')} (its own list)"
            problems += _listed_problems(
                config.milter.name, _filter_list(equates["I"]), defined, where
            )
    if config.site.relay_control != "milter":
        # Review rev119 F1: Sendmail then relays for strangers and nothing refuses it
        # while smtpguard only reports (a dry run, the relay check in report mode or
        # off), which relay_control = "milter" never loads (rev152 F2: not only
        # promiscuous_relay; m4 warns of the first three).
        problems += [
            f"built with FEATURE({feature}): Sendmail lets {whom} relay, so smtpguard"
            ' alone must refuse relaying; set site.relay_control = "milter" (the relay'
            " check then always enforces) or rebuild without it"
            for feature, whom in _OPEN_RELAY_FEATURES.items()
            if re.search(rf"^#+\s*\$Id: {feature}\.m4,", text, re.M)
        ]
    problems += _hop_problems(config, options.get("maxhopcount"))
    problems += _clear_login_problems(config, options)
    problems += sendmail_socket_dir_problems(
        config.milter.socket, options.get("dontblamesendmail", "")
    )
    ours = defined.get(config.milter.name.lower(), [])
    if len(ours) == 1:
        problems += _cf_equate_problems(config, ours[0])
    for key, macros in SENDMAIL_MACROS.items():
        stage = key.removeprefix("confMILTER_MACROS_").lower()
        # Split as milter.c splits: at commas and white space (review rev131 F3).
        listed = set(re.split(r"[,\s]+", options.get(f"milter.macros.{stage}", "")))
        problems += [
            f"Milter.macros.{stage} lacks {macro}: {MACRO_NEEDS[macro]}"
            for macro in macros
            if macro not in listed
        ]
    return problems


def sendmail_socket_dir_problems(socket: str, dont_blame: str = "") -> list[str]:
    """The directories above a unix socket that Sendmail holds unsafe: one writable by
    its group or by all (sticky or not: /tmp too) stops it at start with "local socket
    name ... unsafe" and nothing listens (review rev176 F1, Sendmail 8.17), unless
    ``DontBlameSendmail`` holds GroupWritableDirPathSafe / WorldWritableDirPathSafe.
    Directories that do not exist yet are smtpguard's to make (not so)."""
    kind, _, path = socket.partition(":")
    if kind not in ("unix", "local") or not path.startswith("/"):
        return []
    allowed = {flag.lower() for flag in re.split(r"[,\s]+", dont_blame) if flag}
    problems = []
    directory = Path(path).parent
    for above in (*reversed(directory.parents), directory):
        try:
            mode = above.stat().st_mode
        except OSError:
            break
        for bit, whom, flag in (
            (stat.S_IWOTH, "all", "worldwritabledirpathsafe"),
            (stat.S_IWGRP, "its group", "groupwritabledirpathsafe"),
        ):
            if mode & bit and flag not in allowed:
                problems.append(
                    f"milter.socket {path}: {above} is writable by {whom}"
                    f" ({stat.filemode(mode)}): Sendmail holds the socket unsafe and does"
                    " not start; put the socket in a directory only its owner can write"
                    " (as /run/smtpguard)"
                )
                break
    return problems


#: Sendmail's FEATUREs that let a client relay by what it says (found by the trace
#: comment m4 leaves in a .cf, "##### $Id: NAME.m4,v ..."), and whom.
_OPEN_RELAY_FEATURES: Final = {
    "promiscuous_relay": "every client",
    "relay_local_from": "any client with a local domain in MAIL FROM (forgeable)",
    "relay_mail_from": "any client with a MAIL FROM its access map lists RELAY (forgeable)",
    "relay_based_on_MX": "any client to a domain whose MX points here (whoever runs its DNS)",
    "loose_relay_check": "any client to user%host@ a local domain",
}


def _filter_list(value: str) -> list[str]:
    """Filter names as milter_config splits them: at "," and ";"."""
    return [f for f in (f.lstrip() for f in re.split(r"[,;]", value)) if f]


def _daemon_equates(options: str) -> dict[str, str]:
    """A DaemonPortOptions value as daemon.c's setsockaddroptions reads it: parts
    split at ",", each keyed by its first letter (either case), the value after "="
    without leading white space. A filter list in it is separated by ";"."""
    equates: dict[str, str] = {}
    for part in options.split(","):
        key, sep, value = part.lstrip().partition("=")
        if sep and key:
            equates[key[0].upper()] = value.lstrip()
    return equates


def _cf_filter_problems(name: str, filters: list[str], defined: dict[str, list[str]]) -> list[str]:
    problems = _listed_problems(name, filters, defined, "InputMailFilters")
    problems += [
        f"X{x_name} is defined {len(lines)} times (names in any case): Sendmail does not start"
        for x_name, lines in defined.items()
        if len(lines) > 1
    ]
    if name.lower() not in defined:
        problems.append(f"no X{name} line: Sendmail does not know the filter")
    return problems


def _listed_problems(
    name: str, filters: list[str], defined: dict[str, list[str]], where: str
) -> list[str]:
    """What is wrong with one list of filters (``where`` names it): smtpguard not
    in it exactly once and first, or a name no X line defines."""
    problems = []
    for listed in filters:
        if listed != listed.rstrip():
            problems.append(
                f"{where}: {listed!r} ends in a space, which Sendmail keeps:"
                " it looks for a filter of that name and does not start"
            )
        elif listed.lower() not in defined:
            problems.append(f"{where} names {listed}, which has no X line: Sendmail does not start")
    # A name with a trailing space is reported above; counted here as meant.
    count = [f.rstrip().lower() for f in filters].count(name.lower())
    if count == 0:
        problems.append(
            f"{where} ({', '.join(filters) or 'none'}) does not name {name}:"
            " Sendmail runs without smtpguard"
            + (" on that daemon" if where != "InputMailFilters" else "")
        )
    elif count > 1:
        problems.append(
            f"{where} names {name} {count} times: Sendmail answers every MAIL with 451 4.3.2"
        )
    elif filters[0].rstrip().lower() != name.lower():
        problems.append(
            f"{where}: {name} is not first ({', '.join(filters)}): it sees the"
            " header fields as the filters before it left them"
        )
    return problems


def _cf_equate_problems(config: Config, equates_text: str) -> list[str]:
    name = config.milter.name
    equates: dict[str, str] = {}
    for part in equates_text.split(","):
        key, _, value = part.partition("=")
        if key.strip():
            equates[key.strip()[0].upper()] = value.strip().strip('"')
    problems = []
    address = _sendmail_address(config.milter.socket)
    given = equates.get("S", "")
    if not _same_socket(given, address):
        problems.append(f"X{name}: S={given} is not this config's socket ({address})")
    # milter.c's MILTER_CHECK_ERROR tries T (tempfail), then 4 (421 and the session
    # closed: the client tries again later), then R (reject) (review rev160 F2: F=4 was
    # taken for mail accepted unchecked).
    flags = equates.get("F", "")
    if "T" not in flags and "4" not in flags:
        problems.append(
            f"X{name}: no F=T: while smtpguard is down or restarting Sendmail"
            + (" rejects mail for good" if "R" in flags else " accepts mail unchecked")
        )
    return problems + _timeout_problems(config, equates.get("T", ""))


def _same_socket(given: str, address: str) -> bool:
    """Whether Sendmail's ``S=`` reaches smtpguard's socket ``address``: a unix one by
    its path, an inet one by port (as libmilter reads it: atoi) and by any spelling of
    its host (review rev160 F3: S=inet:PORT@localhost was reported as another socket)."""
    kind, _, rest = re.sub(r"^unix:", "local:", given.strip()).partition(":")
    our_kind, _, our_rest = address.partition(":")
    if kind != our_kind:
        return False
    if kind == "local":
        return rest == our_rest
    port, _, host = rest.partition("@")
    our_port, _, our_host = our_rest.partition("@")
    same_port = port.strip().isdigit() and int(port) == int(our_port)
    return same_port and bool(host_addresses(host) & host_addresses(our_host))


#: milter.c's timeouts when T= does not give them, seconds (C:, S:, R:, E:).
_SENDMAIL_DEFAULT_TIMEOUTS: Final = {"C": 300, "S": 10, "R": 10, "E": 300}
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _timeout_problems(config: Config, given: str) -> list[str]:
    """T= against what smtpguard may take to answer (review rev131 F2: a .cf built
    before a scanner's timeout was raised deferred every slow scan, while smtpguard
    logged the message accepted). Read as milter.c's milter_parse_timeouts reads it
    (review rev132 F2, F3): ";"-separated parts keyed by their first character, C, S,
    R or E in capitals (another is ignored), each value a convtime duration (0, or
    nothing, for no limit)."""
    name = config.milter.name
    timeouts = dict(_SENDMAIL_DEFAULT_TIMEOUTS)
    written: set[str] = set()
    problems = []
    for written_part in given.split(";"):
        part = written_part.lstrip()
        key, sep, value = part.partition(":")
        if not part:
            continue
        if not sep or key[0] not in _SENDMAIL_DEFAULT_TIMEOUTS:
            problems.append(
                f"X{name}: T= part {part!r} is no filter timeout Sendmail reads (C:, S:, R:"
                " or E:, in capitals): it ignores it"
            )
            continue
        seconds, bad = _convtime(value)
        if bad:
            problems.append(
                f"X{name}: T={key[0]}:{value} has units Sendmail does not know"
                f" ({', '.join(bad)}; w, d, h, m and s, in lower case): it reads {seconds}s"
            )
        timeouts[key[0]] = seconds
        written.add(key[0])
    need = math.ceil(answer_bounds(config).longest)
    wanted = sendmail_timeouts(config)
    for key, what in (("R", "each reply"), ("S", "each write"), ("E", "end of message")):
        if 0 < timeouts[key] < need:
            problems.append(
                f"X{name}: T={key}:{timeouts[key]}s"
                f"{'' if key in written else ' (its default)'} for {what} is below"
                f" smtpguard's slowest answer ({need}s): Sendmail gives up first and answers"
                f" 451 whatever smtpguard decides; sendmail-config writes T={wanted}"
            )
    return problems


def _convtime(text: str) -> tuple[int, list[str]]:
    """Seconds as Sendmail's convtime reads ``text`` (units ``s``): digits, each run
    followed by a unit of w, d, h, m or s; any other character counts as seconds
    (Sendmail says "Invalid time unit"), and is returned in the list."""
    total, bad, number = 0, [], 0
    for char in text:
        if char.isascii() and char.isdigit():
            number = number * 10 + int(char)
            continue
        if char not in _UNITS:
            bad.append(repr(char))
        total += number * _UNITS.get(char, 1)
        number = 0
    return total + number, bad
