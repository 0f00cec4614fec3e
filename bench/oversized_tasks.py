"""Oversized tasks: a worker's memory under a burst of 20 MB payloads, and what one such claim costs Redis.

A real worker process (default ``worker.max_payload_bytes``, 1 MB) on its own redis-server and sandbox gets
``--tasks`` payloads of ``--mb`` MB each (a third with the id first, a third with it after the big value, a
third with it last) among as many normal tasks, in two ways:

- burst: everything queued before the worker looks (claims of many at once, ``claim_many``);
- trickle: one big and one normal task at a time while the worker is blocked on the empty queue (``BLMOVE``
  brings the big payload whole; it is swapped for its stub in Redis by ``claim_many``'s "tail" mode).

Its RSS is sampled every 20 ms (psutil) and its kernel high-water mark read at the end. Then, on an idle
Redis, the server-side time (SLOWLOG, microseconds) of one claim holding one 20 MB payload, per id position.

Usage: ``.venv/bin/python bench/oversized_tasks.py [--tasks 40] [--mb 20] [--json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import redis
from common import (
    REPO,
    RssSampler,
    WorkerProcess,
    bench_config,
    emit_table,
    machine,
    scaled_api,
    workdir,
)

sys.path.insert(0, str(REPO))  # the payload layouts live beside the test that uses them

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.local_servers.redis_server import RedisServer
from captcha_fleet.worker.queue import TaskQueue
from tests.oversized_payloads import big_post_task

SCALE = 0.01
# the table's name for each place of the id (tests/oversized_payloads.ID_PLACES)
SHAPES = {"id first": "first", "id after the big value": "middle", "id last": "last", "no id": "none"}
MIXED = ("id first", "id after the big value", "id last")  # what the worker runs get, in turn


def big_payload(task_id: str, shape: str, blob: bytes) -> bytes:
    """A ``post`` task whose image is ``blob``, its id placed as ``shape`` (a key of :data:`SHAPES`) says."""
    return big_post_task(task_id, SHAPES[shape], blob)


def normal_payload(task_id: str) -> bytes:
    """A small token task the sandbox solves."""
    params = {"googlekey": "6Le-oversized", "pageurl": f"https://example.test/{task_id}"}
    return json.dumps({"id": task_id, "method": "userrecaptcha", "params": params}).encode()


def blocked_clients(client: redis.Redis) -> int:
    """Clients blocked in BLMOVE right now (the worker waits on the empty queue)."""
    info: dict[str, Any] = client.info("clients")
    return int(info.get("blocked_clients", 0))


def run_worker(server: RedisServer, sandbox: SandboxServer, mode: str, tasks: int, blob: bytes) -> dict[str, Any]:
    """One worker process through ``tasks`` oversized and ``tasks`` normal payloads; its RSS and the outcome."""
    client = server.client()
    prefix = f"over-{mode}"
    keys = Keys(prefix)
    config = bench_config(server.url, prefix, scaled_api(sandbox.url, SCALE), claim_timeout_s=0.5)
    big = {f"big-{i}": big_payload(f"big-{i}", MIXED[i % len(MIXED)], blob) for i in range(tasks)}
    normal = {f"ok-{i}": normal_payload(f"ok-{i}") for i in range(tasks)}
    with workdir("oversized-") as tmp:
        worker = WorkerProcess(config, tmp, sandbox.url, instance=mode, slots=20)
        try:
            worker.wait_registered(client)
            wait_until(lambda: blocked_clients(client) >= 1, 10)
            time.sleep(0.5)  # let the imports' allocations settle before the baseline
            sampler = RssSampler(worker.pid, interval_s=0.02).start()
            idle = sampler.process.memory_info().rss
            started = time.monotonic()
            if mode == "burst":
                pipe = client.pipeline(transaction=False)
                for raw, ok_raw in zip(big.values(), normal.values(), strict=True):
                    pipe.rpush(keys.tasks, raw, ok_raw)
                pipe.execute()
            else:
                for raw, ok_raw in zip(big.values(), normal.values(), strict=True):
                    wait_until(lambda: blocked_clients(client) >= 1, 10, interval_s=0.002)
                    client.rpush(keys.tasks, raw, ok_raw)
            done = wait_until(lambda: int(client.hlen(keys.results)) >= 2 * tasks, 120, interval_s=0.05)
            elapsed = time.monotonic() - started
            sampler.stop()
            hwm = sampler.high_water_mark()
            final = sampler.process.memory_info().rss
        finally:
            worker.stop_and_report()
    results = {k.decode(): json.loads(v) for k, v in client.hgetall(keys.results).items()}  # type: ignore[union-attr]
    malformed = sum(1 for i in big if results.get(i, {}).get("error_class") == "malformed")
    solved = sum(1 for i in normal if results.get(i, {}).get("status") == "success")
    return {
        "mode": mode,
        "done": done,
        "seconds": round(elapsed, 2),
        "idle_mb": round(idle / 2**20, 1),
        "peak_mb": round(sampler.peak_bytes / 2**20, 1),
        "hwm_mb": round((hwm or 0) / 2**20, 1),
        "final_mb": round(final / 2**20, 1),
        "big_malformed": malformed,
        "normal_solved": solved,
        "deadletter": int(client.llen(keys.deadletter)),
        "left_in_flight": int(client.llen(keys.inflight(worker.worker_id))),
    }


def claim_cost(server: RedisServer, blob: bytes, repeats: int) -> list[dict[str, Any]]:
    """Server-side microseconds of one claim holding one oversized payload (median of ``repeats``), per shape;
    beside it a plain LMOVE of the same payload (what the claim cost before the length check)."""
    client = server.client()
    client.config_set("slowlog-log-slower-than", 0)
    config = bench_config(server.url, "cost", scaled_api("http://127.0.0.1:9", SCALE))
    queue = TaskQueue(client, config, "probe")
    rows = []
    shapes: list[tuple[str, bytes | None]] = [(s, big_payload("cost-1", s, blob)) for s in SHAPES]
    shapes += [("plain LMOVE", None)]
    for name, raw in shapes:
        micros = []
        for _ in range(repeats):
            client.delete(queue.inflight_key, queue.keys.deadletter, queue.keys.tasks)
            client.rpush(queue.keys.tasks, raw if raw is not None else big_payload("cost-1", MIXED[0], blob))
            client.slowlog_reset()
            if raw is None:
                client.lmove(queue.keys.tasks, queue.inflight_key, "LEFT", "RIGHT")
                command = b"LMOVE"
            else:
                queue.claim(4, 0.1)
                command = b"EVALSHA"
            entries = client.slowlog_get(16)
            micros += [int(e["duration"]) for e in entries if bytes(e["command"]).upper().startswith(command)]
        rows.append({"payload": name, "median_us": int(statistics.median(micros)), "max_us": max(micros)})
    client.config_set("slowlog-log-slower-than", 10000)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--mb", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = machine()
    blob = b"A" * int(args.mb * 2**20)
    with RedisServer() as server, SandboxServer(SandboxConfig(time_scale=SCALE, seed=21)) as sandbox:
        runs = [run_worker(server, sandbox, mode, args.tasks, blob) for mode in ("burst", "trickle")]
        costs = claim_cost(server, blob, args.repeats)
    title = f"{args.tasks} x {args.mb:g} MB tasks among {args.tasks} normal ones, one worker (20 slots)"
    payload = {"machine": info, "runs": runs, "claim_cost": costs}
    emit_table(args.json, payload, title, list(runs[0]), [list(r.values()) for r in runs])
    if not args.json:
        cost_title = f"one claim holding a {args.mb:g} MB payload, Redis time (SLOWLOG)"
        print()
        emit_table(False, payload, cost_title, list(costs[0]), [list(c.values()) for c in costs])
    ok = all(r["done"] and r["left_in_flight"] == 0 for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
