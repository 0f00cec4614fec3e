"""The one place that builds Redis clients: plain, TLS, or through Sentinel, with retries that ride out a failover.

Worker, controller, producer, ``status`` and ``doctor`` all call :func:`connect`, so every client of the fleet
accepts the same addresses:

- ``redis://[user:password@]host:port/db`` and ``rediss://...`` (TLS; CA and client certificate from the
  ``redis.tls_*`` settings of ``fleet.yml`` or the ``ssl_ca_certs``/``ssl_certfile``/``ssl_keyfile`` URL query);
- ``redis+sentinel://[user:password@]s1:26379,s2:26379,s3:26379/<master>[/db]`` (``rediss+sentinel://`` for TLS
  to the Sentinels and the data nodes). The client asks the Sentinels for the current primary on every
  reconnect and drops its connections when they announce ``+switch-master`` (``captcha_fleet.contract.redis_failover``),
  so after a failover the next retry lands on the promoted replica. The Sentinels' own password, if they have
  one, comes from ``REDIS_SENTINEL_PASSWORD``: secrets stay in the environment.

A lost connection, ``READONLY`` or ``NOREPLICAS`` is retried for up to ``redis.failover_s``; a wrong password or
an untrusted certificate fails at once.

Imports nothing from ``worker`` or ``controller`` (it is part of the contract layer).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.client import Pipeline
from redis.retry import Retry
from redis.sentinel import Sentinel

from captcha_fleet.contract.config import ConfigError, FleetConfig
from captcha_fleet.contract.redis_failover import (
    FailoverRetry,
    PlainConnection,
    PlainSSLConnection,
    SentinelPrimaryConnection,
    SentinelPrimarySSLConnection,
    SwitchFollower,
)
from captcha_fleet.contract.sections import parse_section

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
PLAIN_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_PASSWORD_ENV = "REDIS_SENTINEL_PASSWORD"


@dataclass(frozen=True)
class RedisSettings:
    """The ``redis:`` section of ``fleet.yml``: TLS files, retries, and which writes must reach a replica."""

    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_check_hostname: bool = False
    # How long one command waits for Redis to come back (a failover, a short network cut) before its caller
    # sees the error: longer than a Sentinel failover with the role's defaults (down-after 5 s, election,
    # promotion; a split first vote is retried after 2 x failover-timeout). The reaper waits up to this long
    # (at most one more heartbeat TTL) past a heartbeat's TTL before it requeues a silent worker's tasks.
    failover_s: float = 30.0
    # At most this many retries of one command, spaced by equal-jitter back-off from base to cap: each retry
    # asks the Sentinels again, so a short cap finds the promoted replica within about a second of the switch.
    retries: int = 120
    retry_base_s: float = 0.1
    retry_cap_s: float = 0.5
    # WAIT for this many replicas after a producer's submit, a stored CAPTCHA id and a result (0: off).
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000


@dataclass(frozen=True)
class SentinelAddress:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    query: Mapping[str, str] = field(default_factory=dict)


class NotReplicatedError(redis.RedisError):
    """A write reached the primary but not the required replicas in time; a failover could lose it."""


def redis_settings(config: FleetConfig) -> RedisSettings:
    """The ``redis:`` section, validated (unknown or mistyped fields are refused by name)."""
    return parse_section(RedisSettings, config.section("redis"), "redis")


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a Sentinel set rather than one server."""
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelAddress:
    """Split ``redis+sentinel://[user:pw@]h1:p1,h2:p2/master[/db][?query]``; errors never echo the password."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in SENTINEL_SCHEMES:
        raise ConfigError(f"redis_url: expected {' or '.join(s + '://' for s in SENTINEL_SCHEMES)}")
    rest, _, query_text = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        hostlist, userinfo = netloc, ""
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, colon, port_text = item.strip().rpartition(":")
        if not colon:
            host, port_text = item.strip(), str(DEFAULT_SENTINEL_PORT)
        if not host or not port_text.isdigit():
            raise ConfigError(f"redis_url: bad Sentinel address {item.strip()!r} (expected host:port)")
        sentinels.append((host.strip("[]"), int(port_text)))
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ConfigError("redis_url: name the Sentinel master after the addresses (redis+sentinel://h:p/mymaster)")
    db_text = parts[1] if len(parts) > 1 else "0"
    if not db_text.isdigit() or len(parts) > 2:
        raise ConfigError(f"redis_url: expected /<master>[/<db>] after the Sentinel addresses, got /{path}")
    query = {k: v[0] for k, v in parse_qs(query_text).items() if v}
    return SentinelAddress(
        tuple(sentinels),
        unquote(parts[0]),
        int(db_text),
        username,
        password,
        scheme.lower().startswith("rediss"),
        query,
    )


def _retry(settings: RedisSettings) -> Retry:
    backoff = EqualJitterBackoff(cap=settings.retry_cap_s, base=settings.retry_base_s)
    return FailoverRetry(backoff, settings.retries, settings.failover_s)


def _tls_kwargs(settings: RedisSettings, query: Mapping[str, str]) -> dict[str, Any]:
    """ssl_* arguments for redis-py: the URL query wins over fleet.yml."""
    out: dict[str, Any] = {"ssl_check_hostname": settings.tls_check_hostname}
    for arg, configured in (
        ("ssl_ca_certs", settings.tls_ca_file),
        ("ssl_certfile", settings.tls_cert_file),
        ("ssl_keyfile", settings.tls_key_file),
    ):
        value = query.get(arg, configured)
        if value:
            out[arg] = value
    if "ssl_check_hostname" in query:
        out["ssl_check_hostname"] = query["ssl_check_hostname"].lower() in ("1", "true", "yes")
    return out


def connect(
    config: FleetConfig,
    socket_timeout: float | None = 10.0,
    socket_connect_timeout: float = 5.0,
    env: Mapping[str, str] | None = None,
    retries: int | None = None,
    follow_switch: bool = True,
) -> redis.Redis:
    """A client for the fleet's Redis (bytes replies), whatever form ``config.redis_url`` takes.

    ``retries`` overrides ``redis.retries`` (``doctor`` wants a quick verdict, not a ride through a failover).
    ``follow_switch``: see :func:`connect_url`.
    """
    settings = redis_settings(config)
    if retries is not None:
        settings = dataclasses.replace(settings, retries=retries)
    return connect_url(config.redis_url, settings, socket_timeout, socket_connect_timeout, env, follow_switch)


def connect_url(
    url: str,
    settings: RedisSettings | None = None,
    socket_timeout: float | None = 10.0,
    socket_connect_timeout: float = 5.0,
    env: Mapping[str, str] | None = None,
    follow_switch: bool = True,
) -> redis.Redis:
    """Like :func:`connect`, for a bare URL (tests, benchmarks, tools).

    ``follow_switch``: for a Sentinel URL, a thread listens for ``+switch-master`` and cuts the connections to
    the old primary at once (a short-lived tool that wants no thread may turn it off).
    """
    settings = settings or RedisSettings()
    env = os.environ if env is None else env
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": _retry(settings),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }
    if is_sentinel_url(url):
        return _sentinel_client(parse_sentinel_url(url), settings, common, env, follow_switch)
    scheme = url.split("://", 1)[0].lower()
    if scheme not in PLAIN_SCHEMES:
        raise ConfigError(
            f"redis_url: unknown scheme {scheme + '://'!r} (use redis://, rediss://, unix:// or redis+sentinel://)"
        )
    if scheme == "rediss":
        query = {k: v[0] for k, v in parse_qs(url.partition("?")[2]).items() if v}
        common.update(_tls_kwargs(settings, query))
        common["connection_class"] = PlainSSLConnection
    elif scheme == "redis":
        common["connection_class"] = PlainConnection
    return redis.Redis.from_url(url, **common)


def _sentinel_client(
    address: SentinelAddress,
    settings: RedisSettings,
    common: dict[str, Any],
    env: Mapping[str, str],
    follow_switch: bool,
) -> redis.Redis:
    tls = _tls_kwargs(settings, address.query) if address.tls else {}
    if address.tls:
        tls["ssl"] = True
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": common["socket_connect_timeout"],
        "socket_connect_timeout": common["socket_connect_timeout"],
        # One Sentinel that fails is skipped for the next at once; the data connection's retry waits out failovers.
        "retry": Retry(NoBackoff(), 0),
        **tls,
    }
    if env.get(SENTINEL_PASSWORD_ENV):
        sentinel_kwargs["password"] = env[SENTINEL_PASSWORD_ENV]
        sentinel_kwargs["username"] = address.query.get("sentinel_username")
    sentinel = Sentinel(list(address.sentinels), sentinel_kwargs=sentinel_kwargs)
    tls.pop("ssl", None)  # the connection class below says TLS
    client: redis.Redis = sentinel.master_for(
        address.master,
        redis_class=redis.Redis,
        connection_class=SentinelPrimarySSLConnection if address.tls else SentinelPrimaryConnection,
        db=address.db,
        username=address.username,
        password=address.password,
        **common,
        **tls,
    )
    if follow_switch:
        SwitchFollower(sentinel, address.master, client.connection_pool).start()
    return client


@dataclass(frozen=True)
class Durability:
    """Which acknowledged writes must reach replicas first: ``WAIT`` on the same connection as the write."""

    replicas: int = 0
    timeout_ms: int = 1000

    @classmethod
    def of(cls, config: FleetConfig) -> Durability:
        """From the ``redis.wait_replicas`` / ``redis.wait_timeout_ms`` settings."""
        settings = redis_settings(config)
        return cls(settings.wait_replicas, settings.wait_timeout_ms)

    def execute(self, pipe: Pipeline) -> list[Any]:
        """Run ``pipe``, then (when on) WAIT in the same round trip; raise if too few replicas confirmed."""
        if self.replicas <= 0:
            return list(pipe.execute())
        pipe.execute_command("WAIT", self.replicas, self.timeout_ms)  # type: ignore[no-untyped-call]
        replies = list(pipe.execute())
        acked = int(replies.pop())
        if acked < self.replicas:
            raise NotReplicatedError(
                f"written on the primary but confirmed by {acked} of {self.replicas} replica(s) "
                f"within {self.timeout_ms} ms; a failover now could lose it"
            )
        return replies
