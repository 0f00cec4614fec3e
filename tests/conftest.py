"""Shared fixtures: a real redis-server per session (flushed per test) and clean key prefixes.

The lab tests' fixture and their split between parallel runs are in ``tests/lab/conftest.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, settings

from captcha_fleet.contract.keys import Keys
from captcha_fleet.local_servers.redis_server import RedisServer

# Rigs that several test modules share, found by pytest without importing fixtures by name.
pytest_plugins = ["tests.controller_fleet", "tests.redis_acl_rig"]

# The machine is shared and small: judge properties, not generation speed.
settings.register_profile("fleet", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fleet")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server on a free port for the whole test session."""
    with RedisServer() as server:
        yield server


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The server's URL, with the database flushed before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture()
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the flushed test server."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture()
def keys() -> Keys:
    """A key prefix unique to the test."""
    return Keys(f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture(autouse=True)
def _no_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach a real CaptchaAI endpoint or key."""
    monkeypatch.delenv("CAPTCHAAI_KEY", raising=False)
    monkeypatch.delenv("CAPTCHAAI_BASE", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    os.environ.setdefault("NO_COLOR", "1")
