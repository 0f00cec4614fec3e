"""The seed article's thread-pool auto-scaler, re-implemented faithfully as the benchmark baseline.

Source: ``shared/seed/auto-scaling-captcha-workers.txt`` ("Thread-Based Auto-Scaler"). Kept as written:
one thread per in-flight solve; ``BLPOP`` then solve (a task in flight is lost if the process dies);
``in.php`` with a new connection per request (module-level ``requests.post``); ``sleep(5)`` then
``res.php?id=`` every 5 s until ready or 120 s; a scaler every 10 s (up by 2 when the queue holds more than
20 tasks and utilization is above 70 %, down by 1 when the queue holds fewer than 5 and utilization is
below 20 %); results written with ``HSET`` to the results hash.

Changed, and only this:
- **the thread-start race is fixed**: a thread is appended to ``self.workers`` *before* ``start()``, so it
  no longer sees itself unregistered and exits at once (as written, the pool solves nothing);
- every sleep and timeout is multiplied by ``time_scale`` (the sandbox compresses time the same way);
- the base URL, key prefix, thread bounds and an exit signal are parameters; ``print`` goes to stderr.

Run it as a process: ``python bench/seed_pool.py --redis-url URL --api-base URL --prefix P
--time-scale 0.02 --min-workers 20 --max-workers 20`` (the API key comes from ``CAPTCHAAI_KEY``);
SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

import redis
import requests


class AutoScalingPool:
    """Dynamically scale CaptchaAI worker threads (the seed's class, start race fixed)."""

    def __init__(
        self,
        api_key: str,
        redis_url: str = "redis://localhost:6379",
        *,
        base: str = "https://ocr.captchaai.com",
        prefix: str = "captcha",
        time_scale: float = 1.0,
        min_workers: int = 2,
        max_workers: int = 20,
    ) -> None:
        self.api_key = api_key
        self.redis = redis.from_url(redis_url)  # the seed's own client, kept as the seed built it (a baseline)
        self.base = base
        self.queue_key = f"{prefix}:tasks"
        self.results_key = f"{prefix}:results"
        self.scale = time_scale

        self.min_workers = min_workers
        self.max_workers = max_workers
        self.workers: list[threading.Thread] = []
        self.active_count = 0
        self.lock = threading.Lock()
        self.running = True

    def start(self) -> None:
        """Start the pool with minimum workers."""
        for _ in range(self.min_workers):
            self._add_worker()

        # Start scaler in background
        scaler = threading.Thread(target=self._scaling_loop, daemon=True)
        scaler.start()
        log(f"Pool started with {self.min_workers} workers")

    def _add_worker(self) -> None:
        """Add a worker thread."""
        if len(self.workers) >= self.max_workers:
            return
        t = threading.Thread(target=self._worker_loop, daemon=True)
        self.workers.append(t)  # THE FIX: register before start (the seed appended after start())
        t.start()

    def _remove_worker(self) -> None:
        """Signal one worker to stop (lazy removal)."""
        if len(self.workers) <= self.min_workers:
            return
        self.workers.pop()  # Thread will exit on next idle cycle

    def _worker_loop(self) -> None:
        """Worker loop: fetch and process tasks."""
        while self.running and threading.current_thread() in self.workers:
            result = self.redis.blpop([self.queue_key], timeout=10 * self.scale)
            if result is None:
                continue

            _, raw = result
            task = json.loads(raw)
            task_id = task["id"]

            with self.lock:
                self.active_count += 1

            try:
                token = self._solve(task["method"], task["params"])
                self.redis.hset(
                    self.results_key,
                    task_id,
                    json.dumps({"status": "success", "token": token}),
                )
            except Exception as e:
                self.redis.hset(
                    self.results_key,
                    task_id,
                    json.dumps({"status": "error", "error": str(e)}),
                )
            finally:
                with self.lock:
                    self.active_count -= 1

    def _scaling_loop(self) -> None:
        """Periodically adjust worker count."""
        while self.running:
            time.sleep(10 * self.scale)

            queue_depth = int(self.redis.llen(self.queue_key))
            current = len(self.workers)
            utilization = self.active_count / current * 100 if current > 0 else 0

            # Scale up: queue growing and workers busy
            if queue_depth > 20 and utilization > 70:
                new_count = min(current + 2, self.max_workers)
                while len(self.workers) < new_count:
                    self._add_worker()
                log(f"Scaled up: {current} → {len(self.workers)} workers")

            # Scale down: queue empty and workers idle
            elif queue_depth < 5 and utilization < 20:
                target = max(current - 1, self.min_workers)
                while len(self.workers) > target:
                    self._remove_worker()
                if len(self.workers) < current:
                    log(f"Scaled down: {current} → {len(self.workers)} workers")

    def _solve(self, method: str, params: dict[str, Any], timeout: float = 120) -> str:
        data: dict[str, Any] = {"key": self.api_key, "method": method, "json": 1}
        data.update(params)

        resp = requests.post(f"{self.base}/in.php", data=data, timeout=30)
        result = resp.json()

        if result.get("status") != 1:
            raise RuntimeError(result.get("request"))

        captcha_id = result["request"]
        start = time.time()

        while time.time() - start < timeout * self.scale:
            time.sleep(5 * self.scale)
            resp = requests.get(
                f"{self.base}/res.php",
                params={"key": self.api_key, "action": "get", "id": captcha_id, "json": 1},
                timeout=15,
            )
            data = resp.json()
            if data["request"] != "CAPCHA_NOT_READY":
                if data.get("status") == 1:
                    return str(data["request"])
                raise RuntimeError(data["request"])

        raise TimeoutError("Solve timeout")

    def stats(self) -> dict[str, int]:
        """Workers, active solves and queue depth."""
        return {
            "workers": len(self.workers),
            "active": self.active_count,
            "queue": int(self.redis.llen(self.queue_key)),
        }


def log(message: str) -> None:
    """The seed prints; here it goes to stderr so stdout stays clean."""
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the pool until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--prefix", default="captcha")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--min-workers", type=int, default=2)
    parser.add_argument("--max-workers", type=int, default=20)
    args = parser.parse_args(argv)
    pool = AutoScalingPool(
        os.environ.get("CAPTCHAAI_KEY", ""),
        args.redis_url,
        base=args.api_base,
        prefix=args.prefix,
        time_scale=args.time_scale,
        min_workers=args.min_workers,
        max_workers=args.max_workers,
    )
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    pool.start()
    while not stop.wait(30 * args.time_scale):
        log(str(pool.stats()))
    pool.running = False
    return 0


if __name__ == "__main__":
    sys.exit(main())
