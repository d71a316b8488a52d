"""Where smtpguard's clients connect: scanner sockets and the Redis URL.

One parser for each spelling, used by the config loader (which turns every error into
a :class:`~smtpguard.config.ConfigError` naming the key) and by every client that
takes an address, so a value the loader accepts is exactly one the client can use:

* :func:`parse_endpoint`: ``unix:/PATH``, ``inet:HOST:PORT`` or ``inet:[IPv6]:PORT``
  (clamd, rspamd; Postfix's spelling, not libmilter's ``inet:PORT@HOST``), as an
  :class:`Endpoint`;
* :func:`parse_redis_url`: ``redis://HOST[:PORT][/DB]``, ``rediss://...`` or
  ``unix:///PATH[?db=N]``, read with redis-py's own parser (the one
  ``redis.Redis.from_url`` uses) plus the checks it leaves out: redis-py ignores a
  database that is not a number and takes port 0 for "no port", so both would quietly
  connect somewhere else than configured.

Errors are :class:`EndpointError` (a :class:`ValueError`) with a message fit for a
config error; they never repeat a Redis URL, which may carry a password.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Endpoint", "EndpointError", "RedisUrl", "parse_endpoint", "parse_redis_url"]

#: ``sun_path`` holds 108 octets on Linux, the terminating NUL included.
MAX_UNIX_PATH: Final = 107
_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_ENDPOINT_FORMS: Final = "unix:/PATH, inet:HOST:PORT or inet:[IPv6]:PORT"


class EndpointError(ValueError):
    """A socket address or URL that no client could use."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A stream socket address: a unix ``path``, or a TCP ``host`` and ``port``.

    Built by :func:`parse_endpoint` or directly; both check the same rules.
    """

    path: str | None = None
    host: str = ""
    port: int = 0

    def __post_init__(self) -> None:
        if self.path is not None:
            if self.host or self.port:
                raise EndpointError("a unix socket has a path, not a host and port")
            _check_unix_path(self.path)
            return
        _check_host(self.host)
        _check_port(self.port)

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet:{host}:{self.port}"


def parse_endpoint(spec: str) -> Endpoint:
    """``unix:/path``, ``inet:host:port`` or ``inet:[v6addr]:port`` (module docstring)."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or kind not in ("unix", "inet"):
        raise EndpointError(f"expected {_ENDPOINT_FORMS}, got {spec!r}")
    if kind == "unix":
        return Endpoint(path=rest)
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]:")
        if not bracket:
            raise EndpointError(f"expected inet:[ADDRESS]:PORT, got {spec!r}")
        if ":" not in host:
            raise EndpointError(f"brackets are for IPv6 addresses only: {spec!r}")
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise EndpointError(f"expected inet:HOST:PORT, got {spec!r}")
        if ":" in host:
            raise EndpointError(f"write an IPv6 address in brackets, inet:[{host}]:PORT")
    return Endpoint(host=host, port=_port(port_text))


def _port(text: str) -> int:
    # isdigit() alone admits "²" and full-width digits, which int() refuses or reads.
    if not (text.isascii() and text.isdigit()):
        raise EndpointError(f"port must be a number from 1 to 65535, got {text!r}")
    return int(text)


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise EndpointError(f"port must be from 1 to 65535, got {port}")


def _check_host(host: str) -> None:
    if not host:
        raise EndpointError("the host is missing")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise EndpointError(f"not an IP address or host name: {host!r}")


def _check_unix_path(path: str) -> None:
    if not path.startswith("/"):
        raise EndpointError(f"a unix socket path must be absolute, got {path!r}")
    if "\0" in path:
        raise EndpointError("a unix socket path cannot contain NUL")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_UNIX_PATH:
        raise EndpointError(f"unix socket path longer than {MAX_UNIX_PATH} octets: {path!r}")


# --- Redis ---------------------------------------------------------------------------

RedisScheme = Literal["redis", "rediss", "unix"]


@dataclass(frozen=True, slots=True)
class RedisUrl:
    """A Redis URL that redis-py reads as written (see :func:`parse_redis_url`)."""

    #: The URL as configured, for ``redis.Redis.from_url``.
    url: str
    scheme: RedisScheme
    #: TCP (redis, rediss): host and port; unix: the socket path.
    host: str = ""
    port: int = 6379
    path: str = ""
    db: int = 0

    def __str__(self) -> str:
        """The server without credentials, for logs and messages."""
        if self.scheme == "unix":
            return f"unix://{self.path}?db={self.db}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisUrl:
    """``redis://HOST[:PORT][/DB]``, ``rediss://...`` or ``unix:///PATH[?db=N]``.

    User name and password (``redis://user:secret@host``) are allowed; the query
    parameters are ``db`` and, for ``rediss://``, redis-py's TLS settings
    :data:`TLS_PARAMETERS` (a private CA, a client certificate: review rev50 found a
    TLS Redis with either impossible to reach). Nothing else: redis-py would let a
    query override smtpguard's own timeouts, and pass any other name to the
    connection, which fails at the first command.
    """
    scheme = url.partition("://")[0]
    if scheme not in ("redis", "rediss", "unix") or "://" not in url:
        raise EndpointError("expected redis://HOST:PORT/DB, rediss://HOST:PORT/DB or unix:///PATH")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        # urllib's words: "Port could not be cast...", "Invalid IPv6 URL".
        what = "port must be a number from 1 to 65535" if "Port" in str(exc) else "not a URL"
        raise EndpointError(f"{what} ({exc})") from None
    if parts.fragment:
        raise EndpointError("a Redis URL has no #fragment")
    query_db = _query_db(parts.query, tls=scheme == "rediss")
    path = unquote(parts.path)
    if scheme == "unix":
        if parts.hostname or port is not None:
            raise EndpointError("a unix:// URL has no host or port: write unix:///PATH")
        _check_unix_path(path)
        out = RedisUrl(url, "unix", path=path, db=_db(query_db))
    else:
        if not parts.hostname:
            raise EndpointError(f"the host is missing: write {scheme}://HOST:PORT/DB")
        host = unquote(parts.hostname)
        _check_host(host)
        if port is not None:
            _check_port(port)
        path_db = path.strip("/")
        if path_db and query_db:
            raise EndpointError("give the database either as the path or as db=N")
        out = RedisUrl(
            url,
            "rediss" if scheme == "rediss" else "redis",
            host=host,
            port=port or 6379,
            db=_db(path_db or query_db),
        )
    # Imported here: redis-py costs ~60 ms to import, and commands that read the config
    # without a Redis URL (``explain``, ``replies``) should not pay for it.
    import redis.connection  # noqa: PLC0415

    try:
        # The parser redis.Redis.from_url runs: whatever it refuses fails here, not at
        # the first message.
        redis.connection.parse_url(url)  # type: ignore[no-untyped-call]  # redis-py: untyped
    except ValueError as exc:
        raise EndpointError(str(exc)) from None
    return out


#: The query parameters of a ``rediss://`` URL besides ``db``: files, and how strictly
#: the server's certificate is checked.
TLS_PARAMETERS: Final = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
_CERT_REQS: Final = ("none", "optional", "required")


def _query_db(query: str, *, tls: bool) -> str:
    """The ``db`` of the query ("" if none), its TLS parameters checked."""
    values = parse_qs(query, keep_blank_values=True)
    allowed = {"db", *TLS_PARAMETERS} if tls else {"db"}
    unknown = sorted(set(values) - allowed)
    if unknown:
        accepted = "db=N, " + ", ".join(TLS_PARAMETERS) if tls else "db=N (TLS settings: rediss://)"
        raise EndpointError(f"unknown query parameter {unknown[0]!r}; accepted: {accepted}")
    for name, given in values.items():
        if len(given) > 1:
            raise EndpointError(f"{name} is given more than once")
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name not in values:
            continue
        path = Path(values[name][0])
        if not path.is_absolute():
            # Read from the service's working directory ("/" under systemd), not the
            # config's like every other path (review rev53): refused.
            raise EndpointError(f"{name}: {path}: give an absolute path")
        if not path.is_file():
            raise EndpointError(f"{name}: {path}: no such file")
    if values.get("ssl_cert_reqs", ["required"])[0] not in _CERT_REQS:
        raise EndpointError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
    if values.get("ssl_check_hostname", ["true"])[0] not in ("true", "false"):
        raise EndpointError("ssl_check_hostname must be true or false")
    if "ssl_keyfile" in values and "ssl_certfile" not in values:
        raise EndpointError("ssl_keyfile needs ssl_certfile")
    db = values.get("db", [])
    return db[0] if db else ""


def _db(text: str) -> int:
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()):
        raise EndpointError(f"the database must be a number, got {text!r}")
    return int(text)
