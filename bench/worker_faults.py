"""Recovery after an API outage: how long a worker takes to return to its pre-outage concurrency (issue 21).

One worker (in this process, 40 slots) against the sandbox at 1/100 of real time and a private redis-server.
It first runs at full concurrency on a steady supply of tasks; then every ``in.php`` and ``res.php`` answer is
an HTML page or a 5xx for ``--outage`` seconds; then the API is healthy again. Reported: the slots at the
outage's end, the seconds until the slots are back at 95 % of the pre-outage level, and the seconds to solve
the ``--after`` tasks pushed when the outage ends (with a no-outage run of the same tasks as the baseline).

Usage: ``.venv/bin/python bench/worker_faults.py [--outage 20] [--after 200] [--json]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
import time
import uuid
from typing import Any

import redis

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.config import ApiConfig, FleetConfig, ResultsConfig, WorkerConfig
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.tasks import NewTask
from captcha_fleet.local_servers.redis_server import RedisServer
from captcha_fleet.worker.producer import Producer
from captcha_fleet.worker.service import WorkerService

SCALE = 0.01
SLOTS = 40
MAX_WAIT_S = 300.0


def config_for(redis_url: str, api_base: str) -> FleetConfig:
    """A worker config at 1/100 of real time: back-off base 0.02 s (cuts at most every 0.02 s)."""
    api = ApiConfig(
        base=api_base,
        key="bench-key",
        connect_timeout_s=2.0,
        read_timeout_s=2.0,
        first_poll_delay_s={"default": 15 * SCALE},
        poll_interval_s=5 * SCALE,
        task_deadline_s=60.0,
        backoff_base_s=0.02,
        backoff_max_s=0.5,
    )
    worker = WorkerConfig(initial_slots=SLOTS, heartbeat_interval_s=0.2, heartbeat_ttl_s=2.0, claim_timeout_s=0.2)
    return FleetConfig(
        redis_url=redis_url, key_prefix=f"b{uuid.uuid4().hex[:6]}", api=api, worker=worker, results=ResultsConfig()
    )


def wait(predicate: Any, timeout_s: float = MAX_WAIT_S) -> float:
    """Seconds until ``predicate()`` holds (bounded)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError("gave up waiting")
        time.sleep(0.01)
    return time.monotonic() - started


def run(outage_s: float, after: int) -> dict[str, Any]:
    """One run; ``outage_s`` 0 is the baseline."""
    with RedisServer() as server, SandboxServer(SandboxConfig(time_scale=SCALE, seed=7)) as sandbox:
        client = redis.Redis.from_url(server.url)
        config = config_for(server.url, sandbox.url)
        keys = Keys(config.key_prefix)
        producer = Producer(client, keys)
        task = NewTask("userrecaptcha", {"googlekey": "k", "pageurl": "https://bench.test/"})
        service = WorkerService(config, host="bench", instance="1", slots=SLOTS)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        try:
            producer.submit_many(task for _ in range(2 * SLOTS))  # warm: the worker at full concurrency
            wait(lambda: int(client.hlen(keys.results)) == 2 * SLOTS)
            before = service.limiter.slots
            if outage_s:
                sandbox.update(faults={"html_200": 0.5, "http_500": 0.5})
                producer.submit_many(task for _ in range(SLOTS))  # tasks that meet the outage
                time.sleep(outage_s)
                sandbox.update(faults=None)
            at_end = service.limiter.slots
            started = time.monotonic()
            producer.submit_many(task for _ in range(after))
            back = wait(lambda: service.limiter.slots >= 0.95 * before)
            total = 2 * SLOTS + (SLOTS if outage_s else 0) + after
            wait(lambda: int(client.hlen(keys.results)) >= total)
            solved_s = time.monotonic() - started
        finally:
            service.request_stop()
            thread.join(timeout=60)
            client.close()
    return {
        "outage_s": outage_s,
        "slots_before": before,
        "slots_at_outage_end": at_end,
        "slots_back_s": round(back, 2),
        "after_tasks": after,
        "after_tasks_s": round(solved_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=20.0, help="seconds of HTML/5xx answers (scaled time x100)")
    parser.add_argument("--after", type=int, default=200, help="tasks pushed when the outage ends")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [run(0.0, args.after), run(args.outage, args.after)]
    if args.json:
        print(json.dumps(rows))
        return
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in dataclasses.asdict(_Row(**row)).items()))


@dataclasses.dataclass
class _Row:
    outage_s: float
    slots_before: int
    slots_at_outage_end: int
    slots_back_s: float
    after_tasks: int
    after_tasks_s: float


if __name__ == "__main__":
    main()
