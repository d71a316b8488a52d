"""Building a runtime from a config: reply table, services, pipeline.

Everything the milter needs is built here, once, and then handed to each session; a
reload (SIGHUP) builds a new :class:`Runtime` and swaps the reference, so sessions in
flight finish on the one they started with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from smtpguard.checks import Services
from smtpguard.config import Config, ConfigError, load_config
from smtpguard.counters import (
    InProcessCounter,
    RedisCounter,
    ResilientCounter,
    SharedCounter,
    SizeBucketCounter,
    SizeBuckets,
    keep_at_least,
    redis_client,
)
from smtpguard.directory import Directory, NoDirectory, SqliteDirectory
from smtpguard.dns import NoNameserver, Resolver, make_resolver
from smtpguard.metrics import Metrics, NullMetrics
from smtpguard.pipeline import CHECK_NAMES, Pipeline
from smtpguard.replies import ReplyTable, load_replies
from smtpguard.state import Blacklist, RedisBlacklist, SessionGate, SqliteBlacklist

log = logging.getLogger(__name__)


@runtime_checkable
class _Closable(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    replies: ReplyTable
    services: Services
    pipeline: Pipeline
    #: Under a supervisor, the reload it validated that this was built from (0: the
    #: configuration the service started with): for the log and /metrics.
    generation: int = 0


def load(path: Path | str) -> Config:
    return load_config(path, known_checks=CHECK_NAMES)


def build_runtime(
    config: Config,
    *,
    directory: Directory | None = None,
    blacklist: Blacklist | None = None,
    counter: SizeBucketCounter | None = None,
    dns: Resolver | None = None,
    previous: Runtime | None = None,
    metrics: Metrics | None = None,
    announce: bool = True,
) -> Runtime:
    """Build every part; raise :class:`ConfigError` if any is unusable.

    ``directory``, ``blacklist``, ``counter`` and ``dns`` replace the configured backends (tests
    pass fakes here instead of patching anything). The resolver's event loop thread
    starts with the first lookup, so ``check-config`` starts none. On a reload, pass
    the running runtime as ``previous``: when ``[dns]`` did not change its resolver
    (event loop, sockets, cache) is kept instead of starting another one.
    ``announce=False``: the notes on what the configuration leaves inactive are not
    logged (a worker's reload: its supervisor logged them for the same text).
    """
    if (
        dns is None
        and previous is not None
        and previous.services.dns is not None
        and previous.config.dns == config.dns
    ):
        dns = previous.services.dns
    if metrics is None:
        metrics = previous.services.metrics if previous is not None else NullMetrics()
    if dns is None and config.dns.enabled:
        # Before the stores are opened: a refusal here leaves nothing open. The
        # resolver itself opens no socket before its first lookup.
        try:
            dns = make_resolver(config.dns, metrics)
        except NoNameserver as exc:
            raise ConfigError(config.file, "dns.nameservers", str(exc)) from None
    replies = load_replies(config.replies, config.file)
    if directory is None:
        directory = _directory(config)
    if blacklist is None:
        blacklist = _kept_blacklist(config, previous) or make_blacklist(config)
    if counter is None:
        counter = _kept_counter(config, previous) or make_counter(config)
    services = Services(
        config=config,
        directory=directory,
        blacklist=blacklist,
        dns=dns,
        counter=counter,
        metrics=metrics,
    )
    pipeline = Pipeline(services, replies, announce=announce)
    if dns is not None:
        # Once the build can no longer fail: a kept resolver serves the running runtime
        # too, whose zones a refused reload must leave reserved (review rev52).
        dns.reserve(zone.name for zone in config.dnsbl.zones)
    return Runtime(config, replies, services, pipeline)


def retire(old: Runtime, new: Runtime) -> None:
    """Close the stores of ``old`` that ``new`` does not use: the directory's and the
    state's SQLite or Redis connections and the counter file (the caller retires the
    resolver, whose lookups cannot be served once it is closed).

    Done at once, not left to the garbage collector: the stores hold reference cycles,
    and the runtime a worker inherits is frozen before the fork, so reloads used to
    pile up descriptors in every worker for good. A session still running on ``old``
    is served all the same: a query in flight finishes and its connection is closed
    after it, and a later one opens a connection (or maps the file) of its own, which
    goes when ``old`` does.
    """
    counter = old.services.counter
    successor = new.services.counter
    if isinstance(counter, SharedCounter) and successor not in (None, counter):
        # A session still on the old configuration counts where the others do now.
        counter.succeeded_by(successor)
    kept = (new.services.counter, new.services.directory, new.services.blacklist)
    for part in (old.services.counter, old.services.directory, old.services.blacklist):
        if not isinstance(part, _Closable) or any(part is k for k in kept):
            continue
        try:
            part.close()
        except Exception:
            # A failure to close costs a descriptor, never a message.
            log.exception("reload: closing the previous %s failed", type(part).__name__)


def _directory(config: Config) -> Directory:
    d = config.directory
    if d.backend == "none":
        return NoDirectory(config.site.recipient_delimiter, config.policy.default_login_domain)
    if not d.path.is_file():
        raise ConfigError(
            config.file,
            "directory.path",
            f"{d.path} does not exist; create it with 'smtpguard directory import FILE'",
        )
    return SqliteDirectory(
        d.path,
        d.timeout,
        cache_ttl=d.cache_ttl,
        recipient_delimiter=config.site.recipient_delimiter,
        login_domain=config.policy.default_login_domain,
    )


def _kept_blacklist(config: Config, previous: Runtime | None) -> RedisBlacklist | None:
    """The running Redis blacklist, when a reload leaves ``[state]`` as it was: with it
    its connections and its outage, which a new client started afresh, so a reload
    during a Redis outage logged the outage's start again and its end counted from the
    reload (review rev83). A SQLite blacklist is built anew, as every reload did."""
    if previous is None or previous.config.state != config.state:
        return None
    kept = previous.services.blacklist
    return kept if isinstance(kept, RedisBlacklist) else None


def make_blacklist(config: Config) -> SqliteBlacklist | RedisBlacklist:
    state = config.state
    if state.backend == "redis":
        return RedisBlacklist(
            redis_client(state.redis_url, timeout=state.timeout),
            state.redis_prefix,
            seen_file=redis_seen_file(config),
            required=state.redis_blacklist_required,
        )
    return SqliteBlacklist(state.path, state.timeout, cache_ttl=state.cache_ttl)


def redis_seen_file(config: Config) -> Path:
    """Where this host remembers that the Redis blacklist's marker was seen: beside the
    state file, one per key prefix."""
    path = config.state.path
    return path.with_name(f"{path.name}.redis-{config.state.redis_prefix}-blacklist-seen")


def counter_shape(config: Config) -> tuple[object, ...]:
    """What :func:`make_counter` builds from: a reload that keeps these keeps the
    counter and its counts. Not the threshold or the key (read at each message), nor
    [state] settings of the blacklist alone (cache_ttl, redis_blacklist_required)."""
    bulk, state = config.bulk, config.state
    where: tuple[object, ...]
    if state.backend == "redis":
        where = ("redis", state.redis_url, state.redis_prefix, state.on_redis_error, state.timeout)
    elif config.milter.workers > 1:
        where = ("file", counter_path(config), state.timeout, bulk.shared_entries)
    else:
        where = ("process",)
    return (where, bulk.window, bulk.bucket_width, bulk.bucket_bytes)


def _kept_counter(config: Config, previous: Runtime | None) -> SizeBucketCounter | None:
    """The running counter, when a reload leaves :func:`counter_shape` as it was. A
    threshold lowered during a flood must not give every sender a fresh allowance
    (review rev141 F1: any [bulk] or [state] change did, with one worker, silently)."""
    if previous is None:
        return None
    counter = previous.services.counter
    if counter_shape(previous.config) == counter_shape(config):
        # A new threshold may need more hits kept per bucket (rev142 F2: a threshold
        # of 1000 or more, lowered, rebuilt the counter and dropped the counts). Never
        # fewer: the running configuration shares this counter, and stays if the
        # reload is refused (rev147 F2: its threshold of 1500 over a cap of 1000
        # refused no flood again).
        if counter is not None:
            keep_at_least(counter, _per_bucket_cap(config.bulk.threshold))
        return counter
    if isinstance(counter, InProcessCounter):
        # The other backends keep their counts outside this object (the shared file
        # says itself when its geometry changes).
        log.warning(
            "same-size counts start again at zero: the reload changed [bulk] window,"
            " bucket_width or bucket_bytes, or [state] backend"
        )
    return None


def _per_bucket_cap(threshold: int) -> int:
    """Hits kept per (sender, bucket): counts saturate there, above the threshold."""
    return max(1000, threshold + 1)


def counter_path(config: Config) -> Path:
    """The embedded same-size counters of several workers: a file beside the state
    file (``state-counters.map`` for ``state.sqlite``)."""
    path = config.state.path
    return path.with_name(f"{path.stem}-counters.map")


def _buckets(config: Config) -> SizeBuckets:
    bulk = config.bulk
    if bulk.bucket_bytes:
        return SizeBuckets(bulk.bucket_bytes, relative=False)
    return SizeBuckets(bulk.bucket_width, relative=True)


def own_counter(config: Config) -> InProcessCounter:
    """Same-size counters of this process alone: one worker's, and ``simulate``'s, which
    must neither count in the service's nor make its file (review rev226: a simulated
    message counted for the real sender, and root made the file the workers share)."""
    bulk = config.bulk
    return InProcessCounter(
        bulk.window, _buckets(config), max_per_bucket=_per_bucket_cap(bulk.threshold)
    )


def make_counter(config: Config) -> SizeBucketCounter:
    """Same-size counters: in process (one worker), in a memory-mapped file beside the
    state file (several workers: every worker sees every message), or Redis with the
    configured outage behaviour (during an outage, ``local`` counts per worker).

    Kept across reloads while ``[state]`` and ``[bulk]`` do not change, so a SIGHUP does
    not reset the counts.
    """
    bulk, state = config.bulk, config.state
    buckets = (
        SizeBuckets(bulk.bucket_bytes, relative=False)
        if bulk.bucket_bytes
        else SizeBuckets(bulk.bucket_width, relative=True)
    )
    if state.backend != "redis" and config.milter.workers > 1:
        return SharedCounter(
            counter_path(config),
            bulk.window,
            buckets,
            capacity=bulk.shared_entries,
            timeout=state.timeout,
        )
    local = own_counter(config)
    if state.backend != "redis":
        return local
    shared = RedisCounter(
        redis_client(state.redis_url, timeout=state.timeout),
        bulk.window,
        buckets,
        prefix=f"{state.redis_prefix}:size",
        max_per_bucket=_per_bucket_cap(bulk.threshold),
        # With "local" a failed hit's message was counted here and delivered: a hit
        # Redis made after all is its count (review rev88 N3).
        take_back=state.on_redis_error == "error",
    )
    return ResilientCounter(shared, on_error=state.on_redis_error, local=local)


def new_gate(config: Config) -> SessionGate:
    return SessionGate(config.limits.max_sessions)
