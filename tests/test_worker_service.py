"""The worker against a real redis-server and the sandbox over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.tasks import NewTask
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.worker.producer import Producer
from tests.fleet_helpers import TIME_SCALE, fast_config, read_events, read_results, running_worker

RECAPTCHA = {"googlekey": "6Le-test", "pageurl": "https://example.test/login"}


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=7)) as server:
        yield server


def test_round_trip_in_the_seed_wire_format(r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer) -> None:
    # A seed producer pushes bare JSON, without the producer client's extra keys.
    r.rpush(keys.tasks, json.dumps({"id": "seed-1", "method": "userrecaptcha", "params": RECAPTCHA}))
    producer = Producer(r, keys)
    config = fast_config(redis_url, keys.prefix, sandbox.url)
    with running_worker(config):
        result = producer.solve("hcaptcha", {"sitekey": "s", "pageurl": "https://example.test"}, timeout_s=10)
        assert producer.wait("seed-1", timeout_s=10) is not None
    assert result is not None and result["status"] == "success"
    assert str(result["token"]).startswith("sandbox")
    seed_result = read_results(r, keys)["seed-1"]
    assert seed_result["status"] == "success" and isinstance(seed_result["token"], str)
    assert r.llen(keys.tasks) == 0 and r.llen(keys.inflight("test:1")) == 0


def test_batch_polling_costs_few_requests_per_task(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer
) -> None:
    producer = Producer(r, keys)
    ids = producer.submit_many(NewTask("userrecaptcha", RECAPTCHA) for _ in range(60))
    config = fast_config(redis_url, keys.prefix, sandbox.url)
    with running_worker(config):
        assert wait_until(lambda: r.hlen(keys.results) == 60, 30)
    assert all(read_results(r, keys)[i]["status"] == "success" for i in ids)
    stats = sandbox.stats()
    assert stats["accepted"] == 60  # one paid submit per task
    assert stats["res_php"] < 60  # polls are shared: fewer poll requests than tasks
    assert stats["max_in_flight"] <= 20


def test_slot_target_from_redis_changes_concurrency(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer
) -> None:
    config = fast_config(redis_url, keys.prefix, sandbox.url)
    r.set(keys.target("test:1"), 3)
    Producer(r, keys).submit_many(NewTask("userrecaptcha", RECAPTCHA) for _ in range(30))
    with running_worker(config) as service:
        assert wait_until(lambda: service.limiter.target == 3, 5)
        assert wait_until(lambda: r.hlen(keys.results) >= 5, 20)
        assert sandbox.stats()["max_in_flight"] <= 3
        r.set(keys.target("test:1"), 0)  # drain: stop claiming, finish in flight

        def drained_heartbeat() -> bool:
            heartbeat = json.loads(r.get(keys.heartbeat("test:1")) or b"{}")
            return bool(heartbeat.get("state") == "draining" and heartbeat.get("busy") == 0)

        # A claim already waiting on Redis when the target dropped may still bring a task or three: those
        # are solved, not lost. Once drained, nothing more is claimed and every task is queued or answered.
        assert wait_until(drained_heartbeat, 10)
        assert wait_until(lambda: service.limiter.busy == 0 and r.llen(keys.tasks) + r.hlen(keys.results) == 30, 10)
        queued = r.llen(keys.tasks)
        time.sleep(1.5)  # several claim rounds of the fast config
        assert r.llen(keys.tasks) == queued > 0
        assert service.limiter.busy == 0


def test_heartbeat_publishes_the_stats_the_controller_reads(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer
) -> None:
    config = fast_config(redis_url, keys.prefix, sandbox.url)
    producer = Producer(r, keys)
    with running_worker(config, instance="7", host="hostX"):
        producer.submit_many(NewTask("userrecaptcha", RECAPTCHA) for _ in range(10))
        assert wait_until(lambda: r.hlen(keys.results) == 10, 20)

        def beat() -> dict[str, object]:
            return json.loads(r.get(keys.heartbeat("hostX:7")) or b"{}")

        assert wait_until(lambda: beat().get("completed") == 10, 5)
        hb = beat()
        assert hb["id"] == "hostX:7" and hb["host"] == "hostX" and hb["state"] == "running"
        assert hb["slots"] == 20 and hb["busy"] == 0
        latency = hb["latency"]
        assert isinstance(latency, dict) and latency["count"] == 10 and latency["p95"] > 0
        assert r.ttl(keys.heartbeat("hostX:7")) != -1
        assert r.zscore(keys.workers, "hostX:7") is not None
    assert r.get(keys.heartbeat("hostX:7")) is None  # a clean drain unregisters


def test_event_stream_carries_end_to_end_latency(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer
) -> None:
    config = fast_config(redis_url, keys.prefix, sandbox.url)
    with running_worker(config):
        Producer(r, keys).solve("userrecaptcha", RECAPTCHA, timeout_s=10)
    (event,) = read_events(r, keys)
    assert event["status"] == "success"
    assert float(event["latency_s"]) >= float(event["api_s"]) > 0


def test_a_lone_captcha_is_first_polled_after_its_delay_not_before(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer
) -> None:
    # First poll 2 s after submit, polls every 1 s: no res.php may come before the 2 s.
    config = fast_config(redis_url, keys.prefix, sandbox.url, first_poll_delay_s={"default": 2.0}, poll_interval_s=1.0)
    sandbox.update(solve_time={"default": {"median_s": 50.0, "sigma": 0.01}})  # ready after 0.5 s
    with running_worker(config):
        submitted = time.monotonic()  # the submit, and so the first-poll delay, starts after this
        Producer(r, keys).submit("userrecaptcha", RECAPTCHA, "lone")
        assert wait_until(lambda: sandbox.stats()["accepted"] == 1, 5)
        time.sleep(max(0.0, submitted + 1.6 - time.monotonic()))
        polled = sandbox.stats()["res_php"]
        if time.monotonic() - submitted < 2.0:  # a look in time (a loaded machine can make this one late)
            assert polled == 0  # nothing before the delay
        assert wait_until(lambda: r.hexists(keys.results, "lone"), 5)
    assert sandbox.stats()["res_php"] == 1  # one poll, at the delay, found the answer


def test_answers_holding_the_batch_separator_reach_their_own_tasks(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer
) -> None:
    sandbox.update(answer_separator_rate=0.5)  # text answers may hold "|", which also joins a batch's answers
    ids = Producer(r, keys).submit_many(NewTask("userrecaptcha", RECAPTCHA) for _ in range(40))
    with running_worker(fast_config(redis_url, keys.prefix, sandbox.url)):
        assert wait_until(lambda: r.hlen(keys.results) == 40, 10)
    results = read_results(r, keys)
    assert all(results[i]["status"] == "success" for i in ids)
    piped = [x for x in results.values() if "|" in str(x["token"])]
    assert piped and all(x["token"] == f"sandbox|text|{x['captcha_id']}" for x in piped)
    # A split batch is asked again id by id once, not retried until the deadline.
    assert sandbox.stats()["res_php"] < 3 * 40
