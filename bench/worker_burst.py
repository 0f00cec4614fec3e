"""Benchmark 1: a burst of tasks at a fixed concurrency budget (the plan's threads), fleet worker vs the seed.

Each run gets its own sandbox (same config and seed, so the same solve-time draws in acceptance order), a
fresh Redis key prefix on one private redis-server, and one client process: the fleet worker
(``python -m captcha_fleet.apps.cli worker --slots 20``) or the seed's pool (``bench/seed_pool.py``). The burst is
pushed in one RPUSH once the client is idle and blocked on the queue; the makespan ends when the results
hash holds every task (read the same way for both clients).

- ideal = tasks x mean(solve times the sandbox actually drew) / concurrency
- list-scheduling bound = the makespan of those same draws on ``concurrency`` slots if each solve were
  seen the instant it ends (no poll delay, no overhead): the tail no client can avoid
- requests/task = (in.php + res.php requests the sandbox counted) / solved

Usage: ``.venv/bin/python bench/worker_burst.py [--quick] [--json] [--time-scale 0.02] [--polls 5:15,5:10,3:9,2:8,1:8]``
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from common import (
    API_KEY,
    REPO,
    CpuSampler,
    SolveTimeRecorder,
    WorkerProcess,
    bench_config,
    list_schedule_makespan,
    lognormal_mean,
    machine,
    percentile,
    read_results,
    scaled_api,
    task_payloads,
    time_scale_note,
    wait_results,
    workdir,
)
from helpers_worker_runs import bench_parser, emit_rows, poll_pairs

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.redis_connect import connect_url
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.local_servers.redis_server import RedisServer, terminate

SEED = 20240601


def blocked_clients(client: redis.Redis) -> int:
    """Clients blocked in BLPOP/BLMOVE right now (a client is idle and waiting for work)."""
    info: dict[str, Any] = client.info("clients")
    return int(info.get("blocked_clients", 0))


class Run:
    """One client against one sandbox: start, burst, wait for every result, count."""

    def __init__(self, label: str, redis_url: str, prefix: str, scale: float, tasks: int, concurrency: int):
        self.label = label
        self.redis_url = redis_url
        self.keys = Keys(prefix)
        self.scale = scale
        self.tasks = tasks
        self.concurrency = concurrency
        self.client = connect_url(redis_url, socket_timeout=None)
        self.sandbox = SandboxServer(
            SandboxConfig(time_scale=scale, threads=concurrency, seed=SEED, accept_keys=(API_KEY,))
        ).start()
        self.recorder = SolveTimeRecorder(self.sandbox)

    def burst(self, ready: int) -> dict[str, Any]:
        """Wait until ``ready`` clients block on the queue, push the burst, wait for every result."""
        if not wait_until(lambda: blocked_clients(self.client) >= ready, 30):
            raise RuntimeError(f"{self.label}: client not ready")
        time.sleep(0.2)  # let the worker's other threads settle
        payloads = task_payloads(self.keys.prefix, self.tasks)
        expected_ideal = self.tasks * lognormal_mean() * self.scale / self.concurrency
        cpu = CpuSampler()
        pushed_wall = time.time()
        start = time.monotonic()
        self.client.rpush(self.keys.tasks, *payloads)
        timeout_s = max(60.0, 10 * expected_ideal)
        done = wait_results(self.client, self.keys, self.tasks, timeout_s=timeout_s, interval_s=0.005)
        makespan = time.monotonic() - start
        busy = cpu.busy_percent()
        if not done:
            raise RuntimeError(f"{self.label}: only {self.client.hlen(self.keys.results)} results")
        stats = self.sandbox.stats()
        results = read_results(self.client, self.keys)
        mean_s = self.recorder.mean()
        ideal = self.tasks * mean_s / self.concurrency
        bound = list_schedule_makespan(self.recorder.samples[: self.tasks], self.concurrency)
        solved = int(stats["solved"])
        requests = int(stats["in_php"]) + int(stats["res_php"])
        finished = [float(r["finished_at"]) for r in results.values() if "finished_at" in r]
        # How long after the provider finished did the worker see it (api_seconds - drawn solve time)?
        seen_late = [
            (float(r["api_seconds"]) - self.recorder.by_id[str(r["captcha_id"])]) / self.scale
            for r in results.values()
            if "api_seconds" in r and str(r.get("captcha_id")) in self.recorder.by_id
        ]
        return {
            "label": self.label,
            "tasks": self.tasks,
            "succeeded": sum(1 for r in results.values() if r.get("status") == "success"),
            "makespan_s": makespan,
            "makespan_from_results_s": (max(finished) - pushed_wall) if finished else None,
            "mean_solve_s": mean_s,
            "ideal_s": ideal,
            "ratio": makespan / ideal,
            "list_schedule_ratio": bound / ideal,
            "requests_per_task": requests / max(1, solved),
            "in_per_task": int(stats["in_php"]) / max(1, solved),
            "res_per_task": int(stats["res_php"]) / max(1, solved),
            "sandbox": {k: stats[k] for k in ("in_php", "res_php", "res_ids_polled", "accepted", "solved")}
            | {k: stats[k] for k in ("refused_no_slot", "over_polled", "max_in_flight")},
            "cpu_busy_percent": busy,
            "seen_late_real_s": {
                "mean": sum(seen_late) / len(seen_late) if seen_late else None,
                "p50": percentile(seen_late, 0.5),
                "p90": percentile(seen_late, 0.9),
            },
        }

    def close(self) -> None:
        """Stop the sandbox."""
        self.sandbox.stop()
        self.client.close()


def run_worker(
    redis_url: str,
    scale: float,
    tasks: int,
    concurrency: int,
    poll_s: float,
    first_s: float,
    batch: int,
    tmp: Path,
) -> dict[str, Any]:
    """The fleet worker as a real process with ``--slots concurrency``."""
    prefix = f"bw{os.getpid()}p{poll_s:g}f{first_s:g}b{batch}".replace(".", "_")
    label = f"fleet worker: poll {poll_s:g} s, first poll {first_s:g} s"
    if batch != 100:
        label += f", batch {batch}"
    run = Run(label, redis_url, prefix, scale, tasks, concurrency)
    api = scaled_api(run.sandbox.url, scale, poll_interval_s=poll_s, first_poll_s=first_s, batch_size=batch)
    config = bench_config(redis_url, prefix, api, initial_slots=concurrency)
    worker = WorkerProcess(config, tmp, run.sandbox.url, instance=prefix, slots=concurrency)
    try:
        worker.wait_registered(run.client)
        row = run.burst(ready=1)
        row["heartbeat_http_requests"] = worker.heartbeat(run.client).get("http_requests")
        row.update(client="worker", poll_interval_s=poll_s, first_poll_s=first_s, batch_size=batch)
        return row
    finally:
        worker.stop_and_report()
        run.close()


def run_seed(redis_url: str, scale: float, tasks: int, concurrency: int, min_workers: int, tmp: Path) -> dict[str, Any]:
    """The seed's pool (``bench/seed_pool.py``) as a real process, ``max_workers = concurrency``."""
    prefix = f"bs{os.getpid()}m{min_workers}"
    label = "seed pool: 20 threads" if min_workers == concurrency else "seed pool as written: 2 threads, +2/10 s"
    run = Run(label, redis_url, prefix, scale, tasks, concurrency)
    env = dict(os.environ, CAPTCHAAI_KEY=API_KEY)
    args = [sys.executable, str(REPO / "bench" / "seed_pool.py"), "--redis-url", redis_url]
    args += ["--api-base", run.sandbox.url, "--prefix", prefix, "--time-scale", str(scale)]
    args += ["--min-workers", str(min_workers), "--max-workers", str(concurrency)]
    log_path = tmp / f"{prefix}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            row = run.burst(ready=min_workers)
            row.update(client="seed", poll_interval_s=5.0, first_poll_s=5.0, min_workers=min_workers)
            return row
        finally:
            terminate(process, timeout_s=30)
            run.close()


def main(argv: list[str] | None = None) -> int:
    """Run the seed baseline and the fleet worker's poll-interval sweep in one go; print the table."""
    parser = bench_parser(
        "Burst makespan and HTTP requests per task, worker vs seed.", "100 tasks, seed + default worker only", 0.02
    )
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20, help="plan threads = worker slots")
    parser.add_argument(
        "--polls",
        default="5:15,5:10,3:9,2:8,1:8",
        help="worker settings as poll_interval:first_poll pairs in real seconds, comma-separated",
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--no-seed", action="store_true", help="skip the seed baselines")
    parser.add_argument("--seed-ramp", action="store_true", help="also run the seed as written (2 -> 20)")
    args = parser.parse_args(argv)
    pairs = poll_pairs(args.polls)
    if args.quick:
        args.tasks, pairs = 100, [(5.0, 15.0)]
    info = machine()
    rows: list[dict[str, Any]] = []
    with RedisServer() as server, workdir("bench-burst-") as tmp:
        if not args.no_seed:
            rows.append(run_seed(server.url, args.time_scale, args.tasks, args.concurrency, args.concurrency, tmp))
            if args.seed_ramp:
                rows.append(run_seed(server.url, args.time_scale, args.tasks, args.concurrency, 2, tmp))
        for poll_s, first_s in pairs:
            rows.append(
                run_worker(
                    server.url, args.time_scale, args.tasks, args.concurrency, poll_s, first_s, args.batch_size, tmp
                )
            )
    seed_row = next((r for r in rows if r["client"] == "seed" and r.get("min_workers") == args.concurrency), None)
    table_rows = []
    for r in rows:
        vs_seed = ""
        if seed_row is not None and r is not seed_row:
            ratio_vs = r["ratio"] / seed_row["ratio"]
            requests_vs = r["requests_per_task"] / seed_row["requests_per_task"]
            vs_seed = f"{ratio_vs:.2f} / {requests_vs:.2f}"
        table_rows.append(
            [
                r["label"],
                f"{r['succeeded']}/{r['tasks']}",
                f"{r['makespan_s']:.2f}",
                f"{r['ideal_s']:.2f}",
                f"**{r['ratio']:.3f}**",
                f"{r['list_schedule_ratio']:.3f}",
                f"**{r['requests_per_task']:.2f}**",
                f"{r['in_per_task']:.2f} + {r['res_per_task']:.2f}",
                vs_seed,
                f"{r['seen_late_real_s']['mean']:.2f}" if r["seen_late_real_s"]["mean"] is not None else "",
                f"{r['cpu_busy_percent']:.0f} %",
            ]
        )
    headers = [
        "client (times in real seconds)",
        "ok",
        "makespan (wall s)",
        "ideal (wall s)",
        "makespan / ideal",
        "no-delay bound / ideal",
        "HTTP req / solved",
        "in + res per solved",
        "vs seed (ratio / req)",
        "seen late (real s, mean)",
        "CPU busy",
    ]
    title = (
        f"{args.tasks} tasks, concurrency {args.concurrency} (sandbox threads = worker slots), "
        f"{time_scale_note(args.time_scale)}, sigma 0.3"
    )
    return emit_rows(args, info, rows, title, headers, table_rows)


if __name__ == "__main__":
    sys.exit(main())
