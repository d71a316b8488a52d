"""Scanner endpoints and the Redis URL: one parser each, for the loader and the clients."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import redis
import redis.connection
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.endpoint import (
    Endpoint,
    EndpointError,
    RedisUrl,
    parse_endpoint,
    parse_redis_url,
)


@pytest.mark.parametrize(
    ("spec", "endpoint", "text"),
    [
        ("unix:/run/clamav/clamd.ctl", Endpoint(path="/run/clamav/clamd.ctl"), None),
        ("inet:127.0.0.1:3310", Endpoint(host="127.0.0.1", port=3310), None),
        ("inet:localhost:11333", Endpoint(host="localhost", port=11333), None),
        ("inet:clamd.example.net:65535", Endpoint(host="clamd.example.net", port=65535), None),
        ("inet:[::1]:3310", Endpoint(host="::1", port=3310), "inet:[::1]:3310"),
    ],
)
def test_parse_endpoint(spec: str, endpoint: Endpoint, text: str | None) -> None:
    assert parse_endpoint(spec) == endpoint
    assert str(endpoint) == (text or spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected unix:/PATH"),
        ("/run/clamd.sock", "expected unix:/PATH"),
        ("tcp:127.0.0.1:3310", "expected unix:/PATH"),
        ("unix:relative.sock", "must be absolute"),
        ("unix:/" + "x" * 107, "longer than 107"),
        ("unix:/a\0b", "NUL"),
        ("inet:127.0.0.1", "expected inet:HOST:PORT"),
        ("inet:127.0.0.1:0", "from 1 to 65535"),
        ("inet:127.0.0.1:70000", "from 1 to 65535"),
        ("inet:127.0.0.1:", "number from 1 to 65535"),
        ("inet:127.0.0.1:²", "number from 1 to 65535"),
        ("inet:127.0.0.1:\uff13\uff13\uff11\uff10", "number from 1 to 65535"),
        ("inet:127.0.0.1:-5", "number from 1 to 65535"),
        ("inet::3310", "host is missing"),
        ("inet:host:port", "number from 1 to 65535"),
        ("inet:bad host:3310", "not an IP address or host name"),
        ("inet:-bad.example:3310", "not an IP address or host name"),
        ("inet:::1:3310", "in brackets"),
        ("inet:[::1]3310", "expected inet:[ADDRESS]:PORT"),
        ("inet:[127.0.0.1]:3310", "IPv6 addresses only"),
    ],
)
def test_parse_endpoint_refuses(spec: str, message: str) -> None:
    with pytest.raises(EndpointError) as caught:
        parse_endpoint(spec)
    assert message in str(caught.value)


def test_an_endpoint_built_directly_is_checked_the_same_way() -> None:
    with pytest.raises(EndpointError, match="from 1 to 65535"):
        Endpoint(host="127.0.0.1", port=0)
    with pytest.raises(EndpointError, match="absolute"):
        Endpoint(path="clamd.sock")
    with pytest.raises(EndpointError, match="not a host and port"):
        Endpoint(path="/run/clamd.sock", port=3310)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_parse_endpoint_raises_only_endpoint_error(spec: str) -> None:
    """Whatever the operator writes, the answer is an endpoint or an EndpointError
    (a config error), never another exception escaping as a traceback."""
    try:
        endpoint = parse_endpoint(spec)
    except EndpointError:
        return
    assert parse_endpoint(str(endpoint)) == endpoint


# --- Redis ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", RedisUrl("redis://127.0.0.1:6379/0", "redis", "127.0.0.1")),
        ("redis://localhost", RedisUrl("redis://localhost", "redis", "localhost")),
        (
            "redis://r.example:7000/3",
            RedisUrl("redis://r.example:7000/3", "redis", "r.example", 7000, db=3),
        ),
        ("redis://r.example?db=2", RedisUrl("redis://r.example?db=2", "redis", "r.example", db=2)),
        (
            "rediss://u:pw@r.example:6380/1",
            RedisUrl("rediss://u:pw@r.example:6380/1", "rediss", "r.example", 6380, db=1),
        ),
        ("redis://[::1]:6379/", RedisUrl("redis://[::1]:6379/", "redis", "::1")),
        (
            "unix:///run/redis/redis.sock",
            RedisUrl("unix:///run/redis/redis.sock", "unix", path="/run/redis/redis.sock"),
        ),
        (
            "unix:///run/redis.sock?db=4",
            RedisUrl("unix:///run/redis.sock?db=4", "unix", path="/run/redis.sock", db=4),
        ),
    ],
)
def test_parse_redis_url(url: str, expected: RedisUrl) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379/0", "expected redis://"),
        ("127.0.0.1:6379", "expected redis://"),
        ("redis:/127.0.0.1", "expected redis://"),
        ("redis://127.0.0.1:abc/0", "port must be a number"),
        ("redis://127.0.0.1:\uff16\uff13\uff17\uff19/0", "port must be a number"),
        ("redis://127.0.0.1:70000/0", "port must be a number"),
        ("redis://127.0.0.1:0/0", "from 1 to 65535"),
        ("redis://127.0.0.1:6379/abc", "database must be a number"),
        ("redis://127.0.0.1:6379/-1", "database must be a number"),
        ("redis://127.0.0.1:6379?db=x", "database must be a number"),
        ("redis://127.0.0.1:6379/1?db=2", "either as the path or as db=N"),
        ("redis://127.0.0.1?db=1&db=2", "more than once"),
        ("redis://127.0.0.1?socket_timeout=30", "accepted: db=N (TLS settings: rediss://)"),
        ("redis://127.0.0.1?ssl_ca_certs=/etc/hostname", "TLS settings: rediss://"),
        ("rediss://127.0.0.1?socket_timeout=30", "accepted: db=N, ssl_ca_certs, ssl_certfile"),
        ("rediss://127.0.0.1?ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs: /nonexistent"),
        ("rediss://127.0.0.1?ssl_cert_reqs=maybe", "must be one of none, optional, required"),
        ("rediss://127.0.0.1?ssl_keyfile=/etc/hostname", "ssl_keyfile needs ssl_certfile"),
        ("rediss://127.0.0.1?ssl_ca_certs=ca.pem", "ssl_ca_certs: ca.pem: give an absolute path"),
        ("rediss://127.0.0.1?ssl_check_hostname=no", "ssl_check_hostname must be true or false"),
        ("redis://127.0.0.1/0#x", "fragment"),
        ("redis:///0", "host is missing"),
        ("redis://:secret@/0", "host is missing"),
        ("redis://bad_host/0", "not an IP address or host name"),
        ("unix://run/redis.sock", "no host or port"),
        ("unix://", "must be absolute"),
        ("unix:///run/redis.sock?db=zero", "database must be a number"),
    ],
)
def test_parse_redis_url_refuses(url: str, message: str) -> None:
    with pytest.raises(EndpointError) as caught:
        parse_redis_url(url)
    assert message in str(caught.value)


def test_redis_errors_never_repeat_the_password() -> None:
    with pytest.raises(EndpointError) as caught:
        parse_redis_url("redis://user:hunter2@127.0.0.1:99999/0")
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in str(parse_redis_url("redis://user:hunter2@127.0.0.1/0"))


DB = st.integers(0, 10_000)
PORT = st.integers(1, 65535)
HOST = st.sampled_from(["127.0.0.1", "localhost", "redis.example.net", "[::1]", "[2001:db8::5]"])


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(["redis", "rediss"]),
    host=HOST,
    port=st.none() | PORT,
    db=st.none() | DB,
    as_query=st.booleans(),
    password=st.none() | st.text(min_size=1, max_size=8),
)
def test_accepted_urls_mean_to_redis_py_what_they_mean_to_us(
    scheme: str, host: str, port: int | None, db: int | None, as_query: bool, password: str | None
) -> None:
    """Differential: redis-py's own URL reading agrees on host, port and database."""
    auth = f":{quote(password, safe='')}@" if password else ""
    url = f"{scheme}://{auth}{host}" + (f":{port}" if port is not None else "")
    if db is not None:
        url += f"?db={db}" if as_query else f"/{db}"
    ours = parse_redis_url(url)
    theirs = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]  # redis-py has no annotations there
    assert ours.host == theirs["host"]
    assert ours.port == theirs.get("port", 6379)
    assert ours.db == theirs.get("db", 0)
    pool = redis.ConnectionPool.from_url(url)
    assert pool.connection_kwargs.get("password") == (password or None)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.builds("redis://127.0.0.1:{}".format, st.text(max_size=12)))
def test_parse_redis_url_raises_only_endpoint_error(url: str) -> None:
    try:
        parse_redis_url(url)
    except EndpointError:
        return
    redis.ConnectionPool.from_url(url)  # what the client does with it: no error either
