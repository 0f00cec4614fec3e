"""Parsing the Redis addresses every client accepts; mistakes are refused by name, never echoing a password."""

from __future__ import annotations

import pytest
import redis

from captcha_fleet.config import ConfigError, FleetConfig
from captcha_fleet.log_redaction import redact
from captcha_fleet.redis_connect import (
    SENTINEL_PASSWORD_ENV,
    RedisSettings,
    connect_url,
    parse_sentinel_url,
    redis_settings,
)
from captcha_fleet.sentinel_server import SentinelSet

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
        refused = connect_url(sentinels.url, RedisSettings(retries=0), env={})
        with pytest.raises(redis.RedisError) as caught:
            refused.ping()
        assert sentinel_password not in str(caught.value) and "data-pw" not in str(caught.value)
