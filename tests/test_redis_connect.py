"""Parsing the Redis addresses every client accepts; mistakes are refused by name, never echoing a password."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import redis

from captcha_fleet.contract.config import ConfigError, FleetConfig
from captcha_fleet.contract.log_redaction import redact
from captcha_fleet.contract.redis_connect import (
    SENTINEL_PASSWORD_ENV,
    RedisSettings,
    connect_url,
    parse_sentinel_url,
    redis_settings,
)
from captcha_fleet.contract.redis_failover import failures_seen
from captcha_fleet.local_servers.redis_server import RedisServer
from captcha_fleet.local_servers.sentinel_server import SentinelSet

SECRET = "p@ss/w#rd"


def test_sentinel_url_names_the_sentinels_master_db_and_user() -> None:
    url = "rediss+sentinel://worker:p%40ss%2Fw%23rd@10.0.0.5:26380,[::1]:26379,redis-c/fleet/2?ssl_ca_certs=/ca.crt"
    address = parse_sentinel_url(url)
    assert address.sentinels == (("10.0.0.5", 26380), ("::1", 26379), ("redis-c", 26379))
    assert (address.master, address.db, address.username, address.password) == ("fleet", 2, "worker", SECRET)
    assert address.tls and address.query == {"ssl_ca_certs": "/ca.crt"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://:p%40ss%2Fw%23rd@h1:26379", "name the Sentinel master"),
        ("redis+sentinel://:p%40ss%2Fw%23rd@h1:x/fleet", "bad Sentinel address"),
        ("redis+sentinel://:p%40ss%2Fw%23rd@h1:1/fleet/db", "expected /<master>[/<db>]"),
    ],
)
def test_bad_sentinel_urls_are_refused_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="redis_url") as caught:
        parse_sentinel_url(url)
    assert message in str(caught.value)
    assert "p%40ss" not in str(caught.value) and SECRET not in str(caught.value)


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown scheme 'http://'"):
        connect_url("http://127.0.0.1:6379")


def test_redis_section_is_validated_by_name() -> None:
    assert redis_settings(FleetConfig(raw={"redis": {"wait_replicas": 1}})).wait_replicas == 1
    with pytest.raises(ConfigError, match=r"redis\.wait_replica: unknown setting"):
        redis_settings(FleetConfig(raw={"redis": {"wait_replica": 1}}))
    with pytest.raises(ConfigError, match=r"redis\.retries: expected an integer"):
        redis_settings(FleetConfig(raw={"redis": {"retries": "many"}}))


def test_sentinel_passwords_are_blanked_in_logs() -> None:
    line = "connecting to redis+sentinel://worker:hunter2@h1:26379,h2:26379/fleet/0 failed"
    assert "hunter2" not in redact(line)
    assert "rediss+sentinel://worker:***@h1" in redact(line.replace("redis+", "rediss+"))


def test_sentinels_with_a_password_take_it_from_the_environment() -> None:
    sentinel_password = "sp-" + "x" * 12
    with SentinelSet(password="data-pw", replicas=1, sentinel_password=sentinel_password) as sentinels:
        client = connect_url(sentinels.url, RedisSettings(retries=0), env={SENTINEL_PASSWORD_ENV: sentinel_password})
        client.set("k", "v")
        assert client.get("k") == b"v"
        # Refused by every Sentinel: said at once, not retried for redis.failover_s like a failover.
        refused = connect_url(sentinels.url, RedisSettings(failover_s=30.0), env={})
        started = time.monotonic()
        with pytest.raises(redis.RedisError) as caught:
            refused.ping()
        assert time.monotonic() - started < 5.0
        assert sentinel_password not in str(caught.value) and "data-pw" not in str(caught.value)


def test_a_wrong_password_fails_at_once_instead_of_riding_out_a_failover() -> None:
    """An auth error is no lost connection: retrying it only delays the message (issue 21: status took 16 s)."""
    with RedisServer(password="right-" + "x" * 8) as server:
        wrong = f"redis://:wrong-password@127.0.0.1:{server.port}/0"
        client = connect_url(wrong, RedisSettings(failover_s=30.0))  # the default budget of a lost connection
        started = time.monotonic()
        with pytest.raises(redis.AuthenticationError):
            client.ping()
        assert time.monotonic() - started < 5.0
        env = dict(os.environ, REDIS_URL=wrong)
        args = [sys.executable, "-m", "captcha_fleet.apps.cli", "status", "--json"]
        # Within the subprocess timeout only if nothing retries (30 s of retries would blow it).
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=15, check=False)
        assert done.returncode != 0
        assert "wrong-password" not in done.stdout + done.stderr


def test_a_dropped_connection_is_retried_within_the_time_budget() -> None:
    """A lost connection is retried (the server comes back) but not past redis.failover_s."""
    server = RedisServer().start()
    client = connect_url(server.url, RedisSettings(failover_s=1.0))
    assert client.ping()
    server.stop()
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert 0.5 < time.monotonic() - started < 5.0
    with RedisServer(port=server.port) as again:
        assert connect_url(again.url, RedisSettings(failover_s=10.0)).ping()


def test_a_retried_command_is_counted_so_callers_can_look_for_lost_replies() -> None:
    """Every connection's copy of the retry shares one count: the worker compares it around a claim."""
    server = RedisServer().start()
    client = connect_url(server.url, RedisSettings(failover_s=10.0))
    assert client.ping() and failures_seen(client) == 0
    port = server.port
    server.stop()
    comeback = threading.Timer(0.5, lambda: servers.append(RedisServer(port=port).start()))
    servers: list[RedisServer] = []
    comeback.start()
    try:
        assert client.ping()  # retried until the server is back
        assert failures_seen(client) > 0
    finally:
        comeback.join()
        for again in servers:
            again.stop()
