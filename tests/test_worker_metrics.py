"""The worker's Prometheus endpoint: every metric appears and moves as tasks flow (real scrape)."""

from __future__ import annotations

import dataclasses

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.tasks import NewTask
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.local_servers.redis_server import free_port
from captcha_fleet.worker.producer import Producer
from tests.fleet_helpers import TIME_SCALE, fast_config, running_worker

RECAPTCHA = {"googlekey": "6Le-test", "pageurl": "https://example.test/login"}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_appear_and_move_as_tasks_flow(r: redis.Redis, keys: Keys, redis_url: str) -> None:
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=9, unsolvable_rate={"hcaptcha": 1.0})) as sandbox:
        config = fast_config(redis_url, keys.prefix, sandbox.url)
        port = free_port()
        config = dataclasses.replace(config, worker=dataclasses.replace(config.worker, metrics_port=port))
        with running_worker(config, instance="m") as service:
            assert wait_until(lambda: service.metrics_port == port, 5)
            before = scrape(port)
            assert before[("captcha_fleet_worker_slots", ())] == 20
            assert before[("captcha_fleet_tasks_claimed_total", ())] == 0
            producer = Producer(r, keys)
            producer.submit_many(NewTask("userrecaptcha", RECAPTCHA) for _ in range(8))
            producer.submit_many(NewTask("hcaptcha", {"sitekey": "s", "pageurl": "https://e.test"}) for _ in range(2))
            assert wait_until(lambda: r.hlen(keys.results) == 10, 20)
            assert wait_until(lambda: scrape(port)[("captcha_fleet_tasks_in_flight", ())] == 0, 5)
            after = scrape(port)
    assert after[("captcha_fleet_tasks_claimed_total", ())] == 10
    assert after[("captcha_fleet_tasks_solved_total", (("method", "userrecaptcha"),))] == 8
    assert after[("captcha_fleet_tasks_failed_total", (("error_class", "task"), ("method", "hcaptcha")))] == 2
    assert after[("captcha_fleet_solve_duration_seconds_count", (("method", "userrecaptcha"),))] == 8
    assert after[("captcha_fleet_task_latency_seconds_count", (("method", "userrecaptcha"),))] == 8
    assert after[("captcha_fleet_api_requests_total", (("endpoint", "in"), ("outcome", "ok")))] == 10
    polls = sum(
        v
        for (name, labels), v in after.items()
        if name == "captcha_fleet_api_requests_total" and ("endpoint", "res") in labels
    )
    assert polls >= 1
    assert after[("captcha_fleet_worker_fatal", ())] == 0
    assert after[("captcha_fleet_worker_info", (("host", "test"), ("version", "0.1.0"), ("worker", "test:m")))] == 1


def test_invented_methods_do_not_grow_the_series(r: redis.Redis, keys: Keys, redis_url: str) -> None:
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=9)) as sandbox:
        config = fast_config(redis_url, keys.prefix, sandbox.url)
        producer = Producer(r, keys)
        # Producers' typos and garbage: each an unknown method the provider refuses (a task error).
        producer.submit_many(NewTask(f"made-up-{i}", {"x": "1"}) for i in range(60))
        producer.submit_many(NewTask("userrecaptcha", RECAPTCHA) for _ in range(3))
        with running_worker(config, instance="labels") as service:
            assert wait_until(lambda: r.hlen(keys.results) == 63, 20)
            labels = {
                sample.labels.get("method")
                for family in service.metrics.registry.collect()
                for sample in family.samples
                if "method" in sample.labels
            }
    assert labels == {"userrecaptcha", "other"}
