"""A fleet under a Redis fault: the role's Redis set, the sandbox, real worker processes and a paced producer.

One run submits ``tasks`` through Sentinel with ``WAIT 1``, applies a fault once ``fault_after`` results are in,
waits for every acknowledged task's result and returns the figures users rely on: lost (acknowledged, no result),
paid twice (the sandbox accepted more CAPTCHAs than there are results), solved twice (a worker's answer found the
result already written twice), reaped workers, and seconds from the fault to the Sentinel switch and to the first new
result. Shared by ``tests/test_failover_under_load.py`` (small) and ``bench/failover.py`` (>= 1,000 tasks).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from captcha_fleet.apps.sandbox import SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.redis_connect import Durability, RedisSettings, connect_url
from captcha_fleet.contract.tasks import NewTask
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.worker.producer import Producer
from tests.fleet_helpers import fast_config, read_results, write_config
from tests.role_redis import RoleRedisSet
from tests.worker_unit import start_worker_unit

GOOGLEKEY = "6Le-test"
PAGE = "https://example.test/login?task="  # each task its own page: the sandbox counts payments per page
WAIT_REPLICAS, WAIT_TIMEOUT_MS = 1, 2000
BATCH = 10


@dataclass
class Figures:
    """What one faulted run did."""

    fault: str
    acknowledged: int = 0
    refused: int = 0
    results: int = 0
    lost: int = 0
    failed: int = 0
    paid_twice: int = 0
    solved_twice: int = 0
    duplicate_answers: int = 0
    reaped: int = 0
    switch_after_s: float | None = None
    first_result_after_s: float | None = None
    worker_exit_codes: list[int] = field(default_factory=list)
    # The tasks paid for more than once, by id: a failing run names them, to be found in the workers' logs.
    paid_twice_ids: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """As a dict, seconds rounded."""
        out = dict(self.__dict__)
        for name in ("switch_after_s", "first_result_after_s"):
            out[name] = None if out[name] is None else round(out[name], 2)
        return out


class PacedProducer(threading.Thread):
    """Submits ``tasks`` in batches of 10 at ``rate`` per second; remembers what it was told was queued."""

    def __init__(self, url: str, keys: Keys, tasks: int, rate: float) -> None:
        super().__init__(name="producer", daemon=True)
        client = connect_url(url, RedisSettings(wait_replicas=WAIT_REPLICAS, wait_timeout_ms=WAIT_TIMEOUT_MS))
        self.producer = Producer(client, keys, Durability(WAIT_REPLICAS, WAIT_TIMEOUT_MS))
        self.tasks, self.rate = tasks, rate
        self.acked: list[str] = []
        self.refused: list[str] = []

    def run(self) -> None:
        started = time.monotonic()
        for b in range(self.tasks // BATCH):
            time.sleep(max(0.0, started + b * BATCH / self.rate - time.monotonic()))
            ids = [f"t{b}-{i}" for i in range(BATCH)]
            try:
                self.acked += self.producer.submit_many(
                    NewTask("userrecaptcha", {"googlekey": GOOGLEKEY, "pageurl": PAGE + i}, i) for i in ids
                )
            except redis.RedisError:
                self.refused += ids  # never told "queued": the producer would retry or report it


class SwitchListener(threading.Thread):
    """The moment one Sentinel announces ``+switch-master`` (bounded: 150 s)."""

    def __init__(self, sentinel: redis.Redis) -> None:
        super().__init__(name="switch-listener", daemon=True)
        self.pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
        self.subscribed = threading.Event()
        self.at: float | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 150
        try:
            self.pubsub.subscribe("+switch-master")
            self.subscribed.set()
            while self.at is None and time.monotonic() < deadline:
                if self.pubsub.get_message(timeout=0.5) is not None:
                    self.at = time.monotonic()
        except (redis.RedisError, OSError):
            return  # the Sentinel stopped with its deployment
        finally:
            self.pubsub.close()


class FailoverRig:
    """Workers reaching the role's Redis through Sentinel (or through ``links``, a plain URL per worker)."""

    def __init__(
        self,
        redis_set: RoleRedisSet,
        sandbox: SandboxServer,
        workdir: Path,
        heartbeat_ttl_s: float = 1.0,
        failover_s: float = 10.0,
        worker_user: str = "worker",
    ) -> None:
        self.set = redis_set
        self.worker_user = worker_user
        self.sandbox = sandbox
        self.workdir = workdir
        self.keys = Keys(redis_set.key_prefix)
        config = fast_config(redis_set.url(worker_user), self.keys.prefix, sandbox.url, task_deadline_s=120.0)
        path = write_config(workdir / "fleet.yml", config)
        data = yaml.safe_load(path.read_text())
        data["redis"] = {"wait_replicas": WAIT_REPLICAS, "wait_timeout_ms": WAIT_TIMEOUT_MS, "failover_s": failover_s}
        data["worker"].update(heartbeat_ttl_s=heartbeat_ttl_s, heartbeat_interval_s=min(0.25, heartbeat_ttl_s / 4))
        path.write_text(yaml.safe_dump(data))
        self.config_path = path
        self.observer = connect_url(redis_set.url("admin"))
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(self, name: str, url: str | None = None) -> subprocess.Popen[bytes]:
        """``captcha-fleet worker`` as its unit runs it: secrets in the environment, output to ``<name>.log``."""
        url = url or self.set.url(self.worker_user)
        process = start_worker_unit(self.config_path, url, self.sandbox.url, self.log_path(name), "fo", name)
        self.workers[name] = process
        if not wait_until(lambda: bool(self.observer.exists(self.keys.heartbeat(f"fo:{name}"))), 30):
            raise RuntimeError(f"worker {name} did not start:\n{self.log_text(name)}")
        return process

    def log_path(self, name: str) -> Path:
        return self.workdir / f"worker-{name}.log"

    def log_text(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    def run(
        self,
        fault_name: str,
        fault: Callable[[], None],
        tasks: int,
        rate: float,
        fault_after: int,
        expect_switch: bool = True,
    ) -> Figures:
        """Load, fault once ``fault_after`` results are in, wait for every acknowledged result; the figures."""
        figures = Figures(fault_name)
        producer = PacedProducer(self.set.url("producer"), self.keys, tasks, rate)
        producer.start()
        if not wait_until(lambda: self.observer.hlen(self.keys.results) >= fault_after, 60):
            raise RuntimeError(f"no results before the fault:\n{self.log_text(next(iter(self.workers)))}")
        listeners = self._switch_listeners()
        before = int(self.observer.hlen(self.keys.results))
        faulted_at = time.monotonic()
        watcher = threading.Thread(target=fault, name="fault", daemon=True)
        watcher.start()
        # Until results flow again (for a failover: on the new primary, which the old one's death implies).
        while time.monotonic() - faulted_at < 120 and figures.first_result_after_s is None:
            try:
                if int(self.observer.hlen(self.keys.results)) > before:
                    figures.first_result_after_s = time.monotonic() - faulted_at
            except redis.RedisError:
                pass
            time.sleep(0.02)
        watcher.join(timeout=120)
        for listener in listeners:
            listener.join(timeout=10 if expect_switch else 0)
        heard = [listener.at for listener in listeners if listener.at is not None]
        if heard:
            figures.switch_after_s = min(heard) - faulted_at
        watcher.join(timeout=120)
        producer.join(timeout=300)
        acked = set(producer.acked)
        wait_until(lambda: acked <= set(map(_text, self.observer.hkeys(self.keys.results))), 180)
        time.sleep(1.0)  # one more heartbeat: each worker's duplicate count is published
        results = read_results(self.observer, self.keys)
        figures.acknowledged, figures.refused, figures.results = len(acked), len(producer.refused), len(results)
        figures.lost = len(acked - set(results))
        figures.failed = sum(1 for r in results.values() if r["status"] != "success")
        figures.paid_twice = int(self.sandbox.stats()["accepted"]) - len(results)
        payments = self.sandbox.payments()
        figures.paid_twice_ids = sorted(page.removeprefix(PAGE) for page, paid in payments.items() if paid > 1)
        # Two winning result writes for one task (each HSETNX that wins counts once); a worker's answer that found
        # the result already written (a retried write whose reply was lost, a reaped worker's) is only counted.
        figures.solved_twice = int(self.observer.get(self.keys.completed_total) or 0) - len(results)
        figures.duplicate_answers = sum(self._heartbeat(name).get("duplicates", 0) for name in self.workers)
        for name, process in self.workers.items():
            process.terminate()
            figures.worker_exit_codes.append(process.wait(timeout=90))
            figures.reaped += self.log_text(name).count("is dead: requeued")
        return figures

    def _switch_listeners(self) -> list[SwitchListener]:
        """One per Sentinel: the leader announces the switch first, the others when they hear of it."""
        listeners = [SwitchListener(self.set.sentinel_client(node)) for node in self.set.nodes]
        for listener in listeners:
            listener.start()
        for listener in listeners:
            listener.subscribed.wait(5)
        return listeners

    def _heartbeat(self, name: str) -> dict[str, Any]:
        raw = self.observer.get(self.keys.heartbeat(f"fo:{name}"))
        return dict(json.loads(raw)) if isinstance(raw, bytes) else {}

    def stop(self) -> None:
        """Kill what is still running (a failed run)."""
        for process in self.workers.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
