"""Benchmark 3: queue overhead at a steady submission rate (default 300 tasks/s for 20 s).

A producer thread submits tasks one by one with :class:`captcha_fleet.worker.producer.Producer` (which stamps
``enqueued_at``) on an absolute schedule; one real worker process (``--slots 2000``, more than the solves
in flight at this rate) solves them against a sandbox with an unlimited plan. From each result:

- queue overhead = ``latency_seconds - api_seconds`` = enqueue -> the provider accepted the submit
  (queue wait + claim + parse + the in.php round trip); the provider's solve time and the poll delay are
  excluded, and so is the result write (``finished_at`` is stamped before it)
- enqueue -> claim = ``claimed_at - enqueued_at``

Overheads are wall-clock milliseconds (not time-scaled): the time scale only shortens solves.

``--modes plain,tls,wait`` runs the same load against one redis-server, the same over TLS, and a primary whose
replica must confirm every submit, stored CAPTCHA id and result (``WAIT 1``), one after the other.

Usage: ``.venv/bin/python bench/worker_overhead.py [--quick] [--json] [--rate 300] [--seconds 20] [--modes ...]``
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import redis
from common import (
    API_KEY,
    METHOD,
    PARAMS,
    WorkerProcess,
    bench_config,
    emit_table,
    machine,
    percentile,
    scaled_api,
    wait_results,
    workdir,
)
from helpers_worker_runs import bench_parser, read_out

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.redis_connect import Durability, RedisSettings, connect_url
from captcha_fleet.local_servers.redis_server import RedisServer
from captcha_fleet.local_servers.throwaway_ca import make_ca_and_server_cert
from captcha_fleet.worker.producer import Producer

SEED = 20240603


class PacedProducer(threading.Thread):
    """Submits ``count`` tasks at ``rate`` per second on an absolute schedule (catching up if late)."""

    def __init__(self, client: redis.Redis, keys: Keys, rate: float, count: int, durability: Durability) -> None:
        super().__init__(name="producer", daemon=True)
        self.producer = Producer(client, keys, durability)
        self.submit_s: list[float] = []
        self.rate = rate
        self.count = count
        self.late_s: list[float] = []
        self.started = 0.0
        self.finished = 0.0

    def run(self) -> None:
        self.started = time.monotonic()
        for i in range(self.count):
            due = self.started + i / self.rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.late_s.append(max(0.0, time.monotonic() - due))
            t0 = time.perf_counter()
            self.producer.submit(METHOD, PARAMS, task_id=f"t{i}")
            self.submit_s.append(time.perf_counter() - t0)
        self.finished = time.monotonic()


@contextmanager
def redis_for(mode: str, tmp: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The Redis a mode measures: its URL and the fleet.yml ``redis`` section.

    plain: one redis-server; tls: the same over TLS (throwaway CA); wait: a primary and one replica, with every
    submit, stored CAPTCHA id and result confirmed by the replica (WAIT 1) before it counts.
    """
    if mode == "plain":
        with RedisServer() as server:
            yield server.url, {}
    elif mode == "tls":
        with RedisServer(tls=make_ca_and_server_cert(tmp / "ca")) as server:
            yield server.url, {}
    elif mode == "wait":
        with RedisServer() as primary, RedisServer(extra_conf=f"replicaof 127.0.0.1 {primary.port}") as replica:
            client = replica.client()
            while client.info("replication").get("master_link_status") != "up":
                time.sleep(0.05)
            yield primary.url, {"wait_replicas": 1, "wait_timeout_ms": 1000}
    else:
        raise ValueError(f"unknown mode {mode!r} (plain, tls, wait)")


def measure(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One paced run against the Redis of ``mode``; the payload of figures."""
    count = int(args.rate * args.seconds)
    prefix = f"bo{os.getpid()}{mode}"
    keys = Keys(prefix)
    with workdir("bench-overhead-") as tmp, redis_for(mode, tmp) as (url, redis_section):
        settings = RedisSettings(**redis_section)
        client = connect_url(url, settings)
        sandbox = SandboxServer(
            SandboxConfig(time_scale=args.time_scale, threads=None, seed=SEED, accept_keys=(API_KEY,), balance=1e9)
        ).start()
        api = scaled_api(sandbox.url, args.time_scale)
        config = bench_config(url, prefix, api, raw={"redis": redis_section}, initial_slots=args.slots)
        worker = WorkerProcess(config, tmp, sandbox.url, instance=prefix, slots=args.slots)
        try:
            worker.wait_registered(client)
            time.sleep(0.2)
            worker_proc = psutil.Process(worker.pid)
            cpu0 = sum(worker_proc.cpu_times()[:2])
            durability = Durability(settings.wait_replicas, settings.wait_timeout_ms)
            producer = PacedProducer(client, keys, args.rate, count, durability)
            producer.start()
            producer.join(timeout=args.seconds * 5 + 30)
            done = wait_results(client, keys, count, timeout_s=60, interval_s=0.05)
            elapsed = time.monotonic() - producer.started
            cpu_worker = 100 * (sum(worker_proc.cpu_times()[:2]) - cpu0) / elapsed
            readout = read_out(client, keys, worker, sandbox, count, done)
        finally:
            worker.stop_and_report()
            sandbox.stop()

    ordered = sorted(readout.results.values(), key=lambda r: float(r["enqueued_at"]))
    t_first = float(ordered[0]["enqueued_at"])
    steady = [r for r in ordered if float(r["enqueued_at"]) - t_first >= args.warmup]

    def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
        overhead = [1000 * (float(r["latency_seconds"]) - float(r["api_seconds"])) for r in rows]
        claim = [1000 * (float(r["claimed_at"]) - float(r["enqueued_at"])) for r in rows]
        return {
            "n": len(rows),
            "overhead_p50_ms": percentile(overhead, 0.5),
            "overhead_p99_ms": percentile(overhead, 0.99),
            "overhead_max_ms": max(overhead),
            "claim_p50_ms": percentile(claim, 0.5),
            "claim_p99_ms": percentile(claim, 0.99),
            "claim_max_ms": max(claim),
        }

    return {
        "mode": mode,
        "tasks": count,
        "succeeded": sum(1 for r in readout.results.values() if r.get("status") == "success"),
        "achieved_rate": count / (producer.finished - producer.started),
        "producer_late_p99_ms": 1000 * percentile(producer.late_s, 0.99),
        "submit_p50_ms": 1000 * percentile(producer.submit_s, 0.5),
        "submit_p99_ms": 1000 * percentile(producer.submit_s, 0.99),
        "max_in_flight": readout.stats["max_in_flight"],
        "worker_cpu_percent": cpu_worker,
        "all": summary(ordered),
        "steady": summary(steady),
        "heartbeat_latency": readout.heartbeat.get("latency"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the paced load once per mode, side by side; print the table."""
    parser = bench_parser("Queue overhead (enqueue -> submit, enqueue -> claim).", "5 s instead of 20 s", 0.1)
    parser.add_argument("--rate", type=float, default=300.0, help="tasks per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the producer submits")
    parser.add_argument("--slots", type=int, default=2000)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds excluded from the steady figures")
    parser.add_argument(
        "--modes", default="plain", help="comma-separated: plain, tls (rediss://), wait (a replica confirms writes)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 5.0
    info = machine()
    runs = [measure(args, mode.strip()) for mode in args.modes.split(",") if mode.strip()]
    payload = {"machine": info, "settings": vars(args), "runs": runs}
    headers = [
        "redis / tasks",
        "enqueue -> accepted by API, p50 / p99 (ms)",
        "enqueue -> claim, p50 / p99 (ms)",
        "producer submit p50 / p99 (ms)",
        "max (ms): overhead / claim",
    ]
    table_rows = []
    for run in runs:
        for name in ("steady", "all"):
            s: dict[str, float] = run[name]
            table_rows.append(
                [
                    f"{run['mode']} {name}: {int(s['n'])}",
                    f"**{s['overhead_p50_ms']:.1f} / {s['overhead_p99_ms']:.1f}**",
                    f"**{s['claim_p50_ms']:.1f} / {s['claim_p99_ms']:.1f}**",
                    f"{run['submit_p50_ms']:.2f} / {run['submit_p99_ms']:.2f}",
                    f"{s['overhead_max_ms']:.1f} / {s['claim_max_ms']:.1f}",
                ]
            )
    titles = [
        f"{run['mode']}: {run['tasks']} tasks at {args.rate:g}/s for {args.seconds:g} s (achieved "
        f"{run['achieved_rate']:.1f}/s, producer late p99 {run['producer_late_p99_ms']:.1f} ms), "
        f"{run['succeeded']} succeeded, max {run['max_in_flight']} in flight, worker CPU "
        f"{run['worker_cpu_percent']:.0f} %"
        for run in runs
    ]
    title = "\n".join(titles) + f"\ntime scale {args.time_scale:g}; steady = enqueued after the first {args.warmup:g} s"
    emit_table(args.json, payload, title, headers, table_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
