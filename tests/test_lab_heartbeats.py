"""The lab (and the benchmarks through it) read heartbeats with the contract's fleet reader: a real worker's beat
comes back typed, another host's is left out, and a malformed beat beside it is skipped instead of failing the
lab test that looks (lab.env.read_heartbeats; the lab fixture itself needs root and is tested under tests/lab)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.local_servers.polling import wait_until
from lab.env import read_heartbeats
from tests.fleet_helpers import TIME_SCALE, fast_config, running_worker


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE)) as server:
        yield server


def test_a_real_workers_beat_is_read_typed_and_a_malformed_one_is_skipped(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer
) -> None:
    r.zadd(keys.workers, {"h1:9": time.time()})
    r.set(keys.heartbeat("h1:9"), b'{"busy": "three"}', ex=60)  # a worker id any host may write under
    with running_worker(fast_config(redis_url, keys.prefix, sandbox.url), instance="1", host="h1"):
        assert wait_until(lambda: bool(read_heartbeats(r, keys.prefix, "h1")), 10), "no heartbeat of the worker"
        beats = read_heartbeats(r, keys.prefix, "h1")
        assert [(b.host, b.instance, b.state) for b in beats] == [("h1", "1", "running")]
        assert read_heartbeats(r, keys.prefix, "h2") == []
        assert [b.id for b in read_heartbeats(r, keys.prefix)] == ["h1:1"]
