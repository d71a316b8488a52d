"""Fakes and builders for the unit tests of smtpguard.checks.

Everything a check needs is passed in: a :class:`FakeDirectory` and a
:class:`FakeBlacklist` (``support.fakes``, shared with the pipeline tests) stand in for
the backends, and :func:`make_conn` builds the session state the adapter would fill
in. pyproject.toml puts this directory on ``sys.path`` for pytest.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import tomli_w

from smtpguard.address import Address, AddressError, parse_path
from smtpguard.checks import Event, Observing, Services, Stage
from smtpguard.config import Config, load_config
from smtpguard.message import MessageState
from smtpguard.session import MTA, Connection, Transaction

#: The site every check test starts from; ``make_config(site={...})`` merges into it.
BASE_SECTIONS: dict[str, dict[str, Any]] = {
    "site": {
        "local_domains": ["example.com"],
        "our_hostnames": ["mx.example.com"],
        "our_ips": ["192.0.2.25"],
    },
}


class ConfigFactory(Protocol):
    def __call__(self, **sections: Mapping[str, Any]) -> Config: ...


class ServicesFactory(Protocol):
    def __call__(self, **sections: Mapping[str, Any]) -> Services: ...


# --- config -----------------------------------------------------------------------


def write_config(where: Path, /, **sections: Mapping[str, Any]) -> Config:
    """Load a config from TOML written to ``directory``; sections merge into the base."""
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in BASE_SECTIONS.items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    path = where / "smtpguard.toml"
    path.write_text(tomli_w.dumps(merged), encoding="utf-8")
    return load_config(path)


# --- fakes ------------------------------------------------------------------------


# --- session builders ---------------------------------------------------------------


def _path(raw: str) -> str:
    return raw if raw.startswith("<") else f"<{raw}>"


def make_conn(
    *,
    sender: str | None = None,
    helo: str | None = "mail.example.org",
    ip: str | None = "198.51.100.7",
    trusted_network: bool = False,
    admitted: bool = True,
    tls_version: str | None = None,
    mta: MTA = MTA.POSTFIX,
    smtputf8: bool = False,
    declared_size: int | None = None,
    auth_type: str | None = None,
    auth_login: str | None = None,
    recipients: Iterable[str] = (),
    client_name_confirmed: bool | None = None,
) -> Connection:
    """A session as the adapter leaves it; with ``sender`` it is inside a transaction.

    ``sender`` is the MAIL FROM path as the client sent it (brackets optional, ``"<>"``
    for the null sender); an unparsable one leaves ``txn.sender`` None like the adapter.
    """
    conn = Connection(
        session_id="test.1",
        client_ip=ipaddress.ip_address(ip) if ip is not None else None,
        client_port=40000 if ip is not None else None,
        client_name="client.example.org",
        mta=mta,
        # As the driver sets it: Postfix's {client_name} is confirmed, Sendmail's only
        # with {client_resolve} OK.
        client_name_confirmed=(
            mta is MTA.POSTFIX if client_name_confirmed is None else client_name_confirmed
        ),
        helo=helo,
        tls_version=tls_version,
        trusted_network=trusted_network,
        admitted=admitted,
    )
    if sender is not None:
        parsed: Address | None
        try:
            parsed, error = parse_path(_path(sender), smtputf8=smtputf8), ""
        except AddressError as exc:
            parsed, error = None, exc.reason
        conn.txn = Transaction(
            sender=parsed,
            sender_raw=_path(sender),
            esmtp={"SMTPUTF8": None} if smtputf8 else {},
            sender_error=error,
            smtputf8=smtputf8,
            declared_size=declared_size,
            auth_type=auth_type,
            auth_login=auth_login,
        )
        for r in recipients:
            conn.txn.accept(parse_path(_path(r)), _path(r))
        conn.transactions = 1
    return conn


def rcpt(raw: str, *, smtputf8: bool = False) -> Event:
    """The RCPT event the adapter builds: ``rcpt`` None when the path does not parse."""
    path = _path(raw)
    try:
        address: Address | None = parse_path(path, smtputf8=smtputf8, allow_postmaster=True)
    except AddressError:
        address = None
    return Event(rcpt=address, rcpt_raw=path)


# --- message content, as the pipeline hands it over ---------------------------------


def with_message(conn: Connection, *, track_mime: bool = True) -> Connection:
    """Give the transaction the message model the pipeline builds when content starts."""
    assert conn.txn is not None
    conn.txn.message = MessageState(track_mime=track_mime, max_mime_depth=20)
    return conn


def header(conn: Connection, name: str, value: str) -> Event:
    """The HEADER event, with the header counted into the message model first (the
    pipeline does that before the checks of the stage run)."""
    message = _message(conn)
    message.feed_header(name, value)
    return Event(header=(name, value))


def end_of_headers(conn: Connection) -> Event:
    _message(conn).end_of_headers()
    return Event()


def body(conn: Connection, chunk: bytes) -> Event:
    _message(conn).feed(chunk)
    return Event(chunk=chunk)


def end_of_message(conn: Connection) -> Event:
    _message(conn).close()
    return Event()


def _message(conn: Connection) -> MessageState:
    assert conn.txn is not None
    assert conn.txn.message is not None, "call with_message(conn) first"
    return conn.txn.message


def stream_message(
    check: Observing, conn: Connection, headers: Iterable[tuple[str, str]], chunks: Iterable[bytes]
) -> None:
    """Feed an observing check a message the way the pipeline does: every header, the
    end of the headers, every body chunk (and the message model alongside)."""
    with_message(conn)
    for name, value in headers:
        check.observe(Stage.HEADER, conn, header(conn, name, value))
    check.observe(Stage.EOH, conn, end_of_headers(conn))
    for chunk in chunks:
        check.observe(Stage.BODY, conn, body(conn, chunk))
    check.observe(Stage.EOM, conn, end_of_message(conn))
