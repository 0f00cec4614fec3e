"""``captcha-fleet status`` with thousands of registered workers: its wall time and output size.

Issue 21: any worker host holds the credentials to write heartbeats, and 10,000 forged workers made ``status``
take 21.7 s and print 952 KB. This registers N forged workers (each on its own host, the worst case for a
per-host table) beside a few real-looking managed ones, then times the real CLI, as text and as ``--json``.

    .venv/bin/python bench/status_scale.py --workers 10000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Heartbeat
from captcha_fleet.local_servers.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent
CLI = REPO / ".venv" / "bin" / "captcha-fleet"


def forge(client: redis.Redis, keys: Keys, count: int, managed: int = 3) -> None:
    """``managed`` workers the controller's saved state lists, and ``count`` forged ones on their own hosts."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    ids = [f"real:{i}" for i in range(1, managed + 1)] + [f"forged-{i}:1" for i in range(count)]
    for wid in ids:
        host, _, instance = wid.partition(":")
        beat = Heartbeat(id=wid, host=host, instance=instance, ts=now, slots=10, busy=10, version="x")
        pipe.set(keys.heartbeat(wid), beat.to_json(), ex=600)
        pipe.zadd(keys.workers, {wid: now})
    pipe.hset(keys.controller_state, "managed", json.dumps({"real": [str(i) for i in range(1, managed + 1)]}))
    pipe.execute()


def time_status(url: str, prefix: str, extra: list[str]) -> tuple[float, int, int]:
    """(seconds, bytes printed, exit code) of one ``captcha-fleet status`` run."""
    env = {**os.environ, "REDIS_URL": url, "NO_COLOR": "1", "COLUMNS": "160"}
    started = time.perf_counter()
    done = subprocess.run(
        [str(CLI), "status", "--key-prefix", prefix, *extra], env=env, capture_output=True, timeout=300, check=False
    )
    return time.perf_counter() - started, len(done.stdout), done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=10_000, help="forged workers to register")
    parser.add_argument("--runs", type=int, default=3, help="runs of each form (the median is printed)")
    args = parser.parse_args()
    keys = Keys("benchstatus")
    with RedisServer() as server:
        client = server.client()
        forge(client, keys, args.workers)
        print(f"{args.workers} forged workers + 3 managed; median of {args.runs} runs")
        for label, extra in (("text", []), ("json", ["--json"])):
            runs = [time_status(server.url, keys.prefix, extra) for _ in range(max(1, args.runs))]
            codes = {code for _, _, code in runs}
            seconds = statistics.median(t for t, _, _ in runs)
            size = statistics.median(n for _, n, _ in runs)
            print(f"status {label:4}: {seconds:6.2f} s  {size / 1024:8.1f} KiB printed  exit {sorted(codes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
