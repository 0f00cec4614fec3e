"""Sentinel failover under load: kill -9 the primary while a worker solves and a producer submits.

Real redis-server primary and replicas, three real Sentinels, a real worker process and the sandbox API over HTTP;
every client reaches Redis through ``redis+sentinel://`` in ``REDIS_URL`` as an operator would configure it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.redis_connect import Durability, RedisSettings, connect_url
from captcha_fleet.contract.tasks import NewTask
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.local_servers.sentinel_server import SentinelSet
from captcha_fleet.worker.producer import Producer
from tests.fleet_helpers import TIME_SCALE, fast_config, read_results, write_config
from tests.worker_unit import start_worker_unit

RECAPTCHA = {"googlekey": "6Le-test", "pageurl": "https://example.test/login"}
PASSWORD = "fo-" + secrets.token_hex(12)
WAIT: dict[str, int] = {"wait_replicas": 1, "wait_timeout_ms": 2000}


@pytest.fixture()
def sentinels() -> Iterator[SentinelSet]:
    # Two replicas: after the primary dies one is promoted and the other still confirms WAIT 1.
    with SentinelSet(password=PASSWORD, replicas=2, down_after_ms=1000) as the_set:
        yield the_set


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    # ~0.3 s solves, answers kept for minutes (as CaptchaAI does), so a requeued task resumes its CAPTCHA.
    config = SandboxConfig(time_scale=TIME_SCALE, seed=12, retention_s=100_000.0)
    with SandboxServer(config) as server:
        server.update(solve_time={"default": {"median_s": 30.0, "sigma": 0.3}})
        yield server


class LoadProducer(threading.Thread):
    """Submits ``batches`` of ``size`` tasks through Sentinel with WAIT; remembers what it was told was queued."""

    def __init__(self, url: str, keys: Keys, batches: int, size: int) -> None:
        super().__init__(daemon=True)
        client = connect_url(url, RedisSettings(wait_replicas=1, wait_timeout_ms=2000))
        self.producer = Producer(client, keys, Durability(WAIT["wait_replicas"], WAIT["wait_timeout_ms"]))
        self.batches, self.size = batches, size
        self.acked: list[str] = []
        self.refused: list[str] = []

    def run(self) -> None:
        for b in range(self.batches):
            ids = [f"t{b}-{i}" for i in range(self.size)]
            try:
                self.acked += self.producer.submit_many(NewTask("userrecaptcha", RECAPTCHA, i) for i in ids)
            except redis.RedisError:
                self.refused += ids  # never told "queued": the producer would retry or report it
            time.sleep(0.03)


def test_kill_9_of_the_primary_under_load_loses_nothing_and_pays_once(
    sentinels: SentinelSet, sandbox: SandboxServer, tmp_path: Path
) -> None:
    keys = Keys("fo" + secrets.token_hex(3))
    # The deadline is far above a failover on a loaded machine: a task that outlives it is not what this test is about.
    config_path = write_config(
        tmp_path / "fleet.yml", fast_config(sentinels.url, keys.prefix, sandbox.url, task_deadline_s=60.0)
    )
    data = yaml.safe_load(config_path.read_text())
    data["redis"] = WAIT
    config_path.write_text(yaml.safe_dump(data))
    log_path = tmp_path / "worker.log"
    worker = start_worker_unit(config_path, sentinels.url, sandbox.url, log_path, "fo")
    observer = connect_url(sentinels.url)
    producer = LoadProducer(sentinels.url, keys, batches=40, size=10)
    try:
        producer.start()
        assert wait_until(lambda: observer.hlen(keys.results) >= 80, 60), observer.hlen(keys.results)
        old_primary = sentinels.current_primary()
        before = observer.hlen(keys.results)
        killed_at = time.monotonic()
        old_primary.kill()
        # Results flow again once the worker has found the promoted replica.
        assert wait_until(lambda: observer.hlen(keys.results) > before + 10, 60)
        resumed_after_s = time.monotonic() - killed_at
        producer.join(timeout=120)
        assert not producer.is_alive()
        assert sentinels.current_primary() is not old_primary
        acked = set(producer.acked)
        assert len(acked) >= 300, (len(acked), len(producer.refused))
        assert wait_until(lambda: acked <= set(read_results(observer, keys)), 90)
        assert worker.poll() is None, "the worker exited during the failover"
    finally:
        if worker.poll() is None:
            worker.terminate()
        exit_code = worker.wait(timeout=60)
    results = read_results(observer, keys)
    lost = acked - set(results)
    assert not lost, f"{len(lost)} acknowledged task(s) lost"
    failed = {tid: r for tid, r in results.items() if r["status"] != "success"}
    assert not failed, f"{len(failed)} task(s) failed, e.g. {next(iter(failed.items()))}"
    # One result write per task: every HSETNX that won bumped the counter once on the surviving history.
    assert int(observer.get(keys.completed_total) or 0) == len(results)
    assert observer.llen(keys.tasks) == 0
    # Paid once: the provider accepted exactly one CAPTCHA per answered task.
    assert sandbox.stats()["accepted"] == len(results), (sandbox.stats()["accepted"], len(results))
    assert exit_code == 0
    log_text = log_path.read_text(errors="replace")
    assert PASSWORD not in log_text
    print(f"failover: acked={len(acked)} refused={len(producer.refused)} results={len(results)} "
          f"resumed_after={resumed_after_s:.2f}s")  # fmt: skip


def test_status_reads_the_fleet_through_sentinel_after_a_failover(sentinels: SentinelSet, tmp_path: Path) -> None:
    keys = Keys("st" + secrets.token_hex(3))
    client = connect_url(sentinels.url)
    Producer(client, keys).submit("userrecaptcha", RECAPTCHA, "before")
    assert wait_until(lambda: all(n.client().llen(keys.tasks) == 1 for n in sentinels.replicas), 10)
    sentinels.current_primary().kill()
    env = dict(os.environ, REDIS_URL=sentinels.url)
    args = [sys.executable, "-m", "captcha_fleet.apps.cli", "status", "--json", "--key-prefix", keys.prefix]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pending"] == 1
    assert PASSWORD not in done.stdout + done.stderr
