"""Benchmark: kill -9 of the Redis primary under load, through Sentinel, then again after the old primary returned.

A primary, two replicas and three Sentinels on loopback (``captcha_fleet.local_servers.sentinel_server``); two real
worker processes and a paced producer reach Redis through ``redis+sentinel://`` with ``WAIT 1`` on every submit, stored
CAPTCHA id and result; the sandbox API keeps answers for minutes (as CaptchaAI does) so a requeued task resumes
its CAPTCHA. Each round kills the current primary (SIGKILL), measures the time until results flow again (10 more
results written), then restarts the killed node, which Sentinel turns into a replica of the new primary.

Figures: tasks acknowledged to the producer, refused (the producer was told the write is not durable), results,
lost (acknowledged without a result), duplicate result writes, CAPTCHAs paid twice (sandbox submits minus
results), seconds from each kill until results flow again.

Usage: ``.venv/bin/python bench/redis_failover.py [--rounds 2] [--tasks 2400] [--rate 100] [--json]``
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
from common import API_KEY, METHOD, PARAMS, WorkerProcess, bench_config, emit_table, machine, scaled_api

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.redis_connect import Durability, connect_url
from captcha_fleet.contract.tasks import NewTask
from captcha_fleet.local_servers.sentinel_server import SentinelSet
from captcha_fleet.worker.producer import Producer

TIME_SCALE = 0.01
WAIT = {"wait_replicas": 1, "wait_timeout_ms": 2000}


class PacedProducer(threading.Thread):
    """Batches of 10 at ``rate`` tasks/s; remembers which ids it was told are queued."""

    def __init__(self, client: redis.Redis, keys: Keys, tasks: int, rate: float) -> None:
        super().__init__(name="producer", daemon=True)
        self.producer = Producer(client, keys, Durability(WAIT["wait_replicas"], WAIT["wait_timeout_ms"]))
        self.tasks, self.rate = tasks, rate
        self.acked: list[str] = []
        self.refused: list[str] = []

    def run(self) -> None:
        started = time.monotonic()
        for b in range(self.tasks // 10):
            due = started + b * 10 / self.rate
            time.sleep(max(0.0, due - time.monotonic()))
            ids = [f"t{b}-{i}" for i in range(10)]
            try:
                self.acked += self.producer.submit_many(NewTask(METHOD, PARAMS, task_id) for task_id in ids)
            except redis.RedisError:
                self.refused += ids


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except redis.RedisError:
            pass
        time.sleep(interval_s)
    return False


def result_ids_of(client: redis.Redis, keys: Keys) -> set[str]:
    """Task ids that have a result."""
    return {k.decode() if isinstance(k, bytes) else str(k) for k in client.hkeys(keys.results)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One load with ``args.rounds`` kills; the figures."""
    keys = Keys(f"fo{secrets.token_hex(3)}")
    with (
        SentinelSet(password=secrets.token_hex(12), replicas=2, down_after_ms=args.down_after_ms) as sentinels,
        tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp,
    ):
        sandbox = SandboxServer(
            SandboxConfig(time_scale=TIME_SCALE, seed=12, retention_s=100_000.0, accept_keys=(API_KEY,), balance=1e9)
        ).start()
        api = scaled_api(sandbox.url, TIME_SCALE)
        config = bench_config(
            sentinels.url, keys.prefix, api, raw={"redis": WAIT},
            heartbeat_interval_s=0.5, heartbeat_ttl_s=3.0, reaper_interval_s=1.0, claim_timeout_s=0.5,
        )  # fmt: skip
        workers = [WorkerProcess(config, Path(tmp), sandbox.url, f"w{i}", slots=100) for i in range(2)]
        observer = connect_url(sentinels.url)
        producer = PacedProducer(connect_url(sentinels.url), keys, args.tasks, args.rate)
        rounds: list[dict[str, Any]] = []
        try:
            for worker in workers:
                worker.wait_registered(observer)
            producer.start()
            started = time.monotonic()
            for n in range(args.rounds):
                # Kills spread over the producer's run, so load continues through every failover.
                kill_at = started + (n + 1) * args.tasks / args.rate / (args.rounds + 1)
                time.sleep(max(0.0, kill_at - time.monotonic()))
                victim = sentinels.current_primary()
                before = int(observer.hlen(keys.results))
                killed_at = time.monotonic()
                victim.kill()
                wait_for(lambda b=before: observer.hlen(keys.results) >= b + 10, 60)
                resumed = time.monotonic() - killed_at
                promoted = sentinels.current_primary()
                rounds.append({"round": n + 1, "killed": victim.port, "promoted": promoted.port,
                               "resumed_after_s": round(resumed, 2)})  # fmt: skip
                victim.start()  # comes back empty; Sentinel makes it a replica of the new primary
            producer.join(timeout=300)
            acked = set(producer.acked)
            wait_for(lambda: acked <= result_ids_of(observer, keys), 120, 0.2)
            results = int(observer.hlen(keys.results))
            result_ids = result_ids_of(observer, keys)
            returned = [v.client().info("replication").get("role") for v in sentinels.nodes]
            completed = int(observer.get(keys.completed_total) or 0)
            accepted = int(sandbox.stats()["accepted"])
        finally:
            for worker in workers:
                worker.stop()
            sandbox.stop()
    return {
        "acknowledged": len(acked),
        "refused": len(producer.refused),
        "results": results,
        "lost": len(acked - result_ids),
        "duplicates": completed - results,
        "paid_twice": accepted - results,
        "rounds": rounds,
        "roles_at_end": returned,
    }


def main(argv: list[str] | None = None) -> int:
    """Run once; print the figures."""
    parser = argparse.ArgumentParser(description="Sentinel failover under load: lost, duplicates, paid twice, time.")
    parser.add_argument("--rounds", type=int, default=2, help="primaries killed (each returns as a replica)")
    parser.add_argument("--tasks", type=int, default=2400)
    parser.add_argument("--rate", type=float, default=100.0, help="tasks per second")
    parser.add_argument("--down-after-ms", type=int, default=1000, help="Sentinel down-after-milliseconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    info = machine()
    figures = run(args)
    payload = {"machine": info, "settings": vars(args), **figures}
    headers = ["acknowledged", "refused", "results", "lost", "duplicates", "paid twice", "results again after (s)"]
    row = [figures[k] for k in ("acknowledged", "refused", "results", "lost", "duplicates", "paid_twice")]
    row.append(" / ".join(f"{r['resumed_after_s']:.2f}" for r in figures["rounds"]))
    title = (
        f"{args.tasks} tasks at {args.rate:g}/s, 2 workers, primary + 2 replicas + 3 Sentinels (down-after "
        f"{args.down_after_ms} ms), WAIT 1; {args.rounds} kill -9 of the primary, the old one back as a replica"
    )
    emit_table(args.json, payload, title, headers, [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
