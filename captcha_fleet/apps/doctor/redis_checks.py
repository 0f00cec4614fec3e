"""Doctor's checks of how the fleet reaches Redis: the Sentinel set, the ACL user, TLS. Each never raises.

A Sentinel set that lost its quorum still serves until the next failure, and a worker running as the wrong ACL
user or over clear text still solves: neither shows up until it hurts, so doctor says it beforehand.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import redis

from captcha_fleet.apps.doctor.checks import CheckResult, Status, redis_secrets, scrub
from captcha_fleet.contract.config import FleetConfig
from captcha_fleet.contract.redis_connect import (
    SENTINEL_PASSWORD_ENV,
    SentinelAddress,
    connect,
    is_sentinel_url,
    parse_sentinel_url,
    redis_settings,
)

LOOPBACK = ("127.0.0.1", "::1", "localhost")
CERT_WARN_DAYS = 14


def check_sentinels(config: FleetConfig, timeout_s: float, env: Mapping[str, str] | None = None) -> CheckResult:
    """Every Sentinel asked: reachable count against the quorum, and whether they agree on one primary."""
    if not is_sentinel_url(config.redis_url):
        return CheckResult("sentinel", Status.SKIP, "REDIS_URL names one server, not a Sentinel set")
    env = os.environ if env is None else env
    address = parse_sentinel_url(config.redis_url)
    secrets = [*redis_secrets(config.redis_url), env.get(SENTINEL_PASSWORD_ENV, "")]
    primaries: dict[str, list[str]] = {}
    unreachable: list[str] = []
    quorum = 0
    for host, port in address.sentinels:
        where = f"{host}:{port}"
        try:
            with _sentinel_client(address, host, port, config, timeout_s, env) as client:
                info = client.sentinel_master(address.master)
        except redis.RedisError as exc:
            unreachable.append(f"{where} ({scrub(str(exc), secrets)})")
            continue
        fields = {str(k): str(v) for k, v in dict(info).items()}
        quorum = max(quorum, int(fields.get("quorum", "0")))
        primaries.setdefault(f"{fields.get('ip')}:{fields.get('port')}", []).append(where)
    reachable = len(address.sentinels) - len(unreachable)
    data: dict[str, Any] = {"reachable": reachable, "total": len(address.sentinels), "quorum": quorum,
                            "primaries": sorted(primaries), "unreachable": unreachable}  # fmt: skip
    if reachable == 0:
        return CheckResult("sentinel", Status.FAIL, f"no Sentinel answered: {'; '.join(unreachable)}", data)
    if len(primaries) > 1:
        views = "; ".join(f"{p} per {', '.join(w)}" for p, w in sorted(primaries.items()))
        return CheckResult("sentinel", Status.FAIL, f"the Sentinels disagree on the primary: {views}", data)
    primary = next(iter(primaries))
    # A failover needs a majority of all Sentinels to elect a leader, and `quorum` of them to agree it is down.
    needed = max(quorum, len(address.sentinels) // 2 + 1)
    if reachable < needed:
        detail = f"{reachable} of {len(address.sentinels)} Sentinels answer, {needed} needed for a failover"
        return CheckResult("sentinel", Status.FAIL, detail, data)
    detail = f"{address.master}: primary {primary}, {reachable}/{len(address.sentinels)} Sentinels, quorum {quorum}"
    if unreachable:
        return CheckResult("sentinel", Status.WARN, f"{detail}; unreachable: {'; '.join(unreachable)}", data)
    return CheckResult("sentinel", Status.OK, detail, data)


def _sentinel_client(
    address: SentinelAddress, host: str, port: int, config: FleetConfig, timeout_s: float, env: Mapping[str, str]
) -> redis.Redis:
    kwargs: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if env.get(SENTINEL_PASSWORD_ENV):
        kwargs.update(password=env[SENTINEL_PASSWORD_ENV], username=address.query.get("sentinel_username"))
    if address.tls:
        settings = redis_settings(config)
        kwargs.update(ssl=True, ssl_check_hostname=settings.tls_check_hostname)
        ca = address.query.get("ssl_ca_certs", settings.tls_ca_file)
        if ca:
            kwargs["ssl_ca_certs"] = ca
    return redis.Redis(host=host, port=port, **kwargs)  # one named Sentinel, not the fleet's data connection


def check_acl_user(config: FleetConfig, timeout_s: float) -> CheckResult:
    """The ACL user doctor (and so the component with the same REDIS_URL) runs as."""
    secrets = redis_secrets(config.redis_url)
    client = connect(config, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retries=0)
    try:
        raw = client.acl_whoami()
        user = raw.decode() if isinstance(raw, bytes) else str(raw)
    except redis.exceptions.NoPermissionError:
        named = _url_user(config.redis_url) or "default"
        return CheckResult("redis-user", Status.OK, f"runs as ACL user {named!r} (a role user: ACL WHOAMI refused)",
                           {"user": named})  # fmt: skip
    except redis.RedisError as exc:
        return CheckResult("redis-user", Status.SKIP, f"could not ask: {scrub(str(exc), secrets)}")
    finally:
        client.close()
    if user == "default":
        detail = "runs as the default user: every process with its password can read and delete everything"
        return CheckResult("redis-user", Status.WARN, f"{detail} (give each component its ACL user)", {"user": user})
    return CheckResult("redis-user", Status.OK, f"runs as ACL user {user!r}", {"user": user})


def _url_user(url: str) -> str | None:
    if is_sentinel_url(url):
        return parse_sentinel_url(url).username
    return urlsplit(url).username


def check_tls(config: FleetConfig, timeout_s: float) -> CheckResult:
    """rediss: the handshake with the configured CA and the certificate's remaining days; plain: is it local?"""
    url = config.redis_url
    scheme = url.split("://", 1)[0].lower()
    if scheme == "unix":
        return CheckResult("redis-tls", Status.SKIP, "a unix socket: no network to encrypt")
    hosts = _data_hosts(config, timeout_s)
    if not scheme.startswith("rediss"):
        remote = [f"{h}:{p}" for h, p in hosts if h not in LOOPBACK]
        if remote:
            detail = f"{', '.join(remote)}: the password and every task cross the network in clear text (rediss://)"
            return CheckResult("redis-tls", Status.WARN, detail)
        return CheckResult("redis-tls", Status.OK, "plain TCP on loopback only")
    settings = redis_settings(config)
    query = parse_sentinel_url(url).query if is_sentinel_url(url) else dict(_query(url))
    ca = query.get("ssl_ca_certs", settings.tls_ca_file) or None
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = settings.tls_check_hostname
    lines, worst = [], Status.OK
    for host, port in hosts:
        try:
            with (
                socket.create_connection((host, port), timeout=timeout_s) as raw,
                context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                cert = tls.getpeercert() or {}
                version = tls.version()
        except (OSError, ssl.SSLError) as exc:
            hint = " (set redis.tls_ca_file to the CA that signed it)" if "verify" in str(exc) else ""
            return CheckResult("redis-tls", Status.FAIL, f"{host}:{port}: TLS handshake failed: {exc}{hint}")
        expires = datetime.datetime.fromtimestamp(ssl.cert_time_to_seconds(str(cert["notAfter"])), datetime.UTC)
        days = (expires - datetime.datetime.now(datetime.UTC)).days
        if days < CERT_WARN_DAYS:
            worst = Status.WARN
        lines.append(f"{host}:{port} {version}, certificate valid {days} more day(s)")
    return CheckResult("redis-tls", worst, "; ".join(lines))


def _query(url: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(urlsplit(url).query)


def _data_hosts(config: FleetConfig, timeout_s: float) -> list[tuple[str, int]]:
    """Where the data lives: the URL's server, or the primary the Sentinels name now."""
    url = config.redis_url
    if not is_sentinel_url(url):
        parts = urlsplit(url)
        return [(parts.hostname or "127.0.0.1", parts.port or 6379)]
    client = connect(config, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retries=0)
    try:
        pool: Any = client.connection_pool
        host, port = pool.get_master_address()
        return [(str(host), int(port))]
    except redis.RedisError:
        return []
    finally:
        client.close()
