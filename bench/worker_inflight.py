"""Benchmark 2: one worker process holding 2,000 solves in flight: efficiency and peak RSS.

One real worker process (``python -m captcha_fleet.apps.cli worker --slots 2000``) against a sandbox with an
unlimited plan, a queue pre-filled with many more tasks than slots, and a sampler (every 0.1 s) reading
the results count, the queue length, the sandbox's in-flight count and the worker's RSS.

- ideal throughput = slots / mean(solve times the sandbox drew)
- efficiency = results written per second over the steady part (from two mean solve times after the
  burst, once the first synchronized wave is over, until the queue runs empty) / ideal throughput
- occupancy = mean of the sandbox's in-flight count over the same window / slots (the provider's view:
  slot-time spent solving rather than waiting to be seen, submitted or written)
- peak RSS = max of the samples and the kernel's high-water mark (VmHWM) just before the drain

Usage: ``.venv/bin/python bench/worker_inflight.py [--quick] [--json] [--time-scale 0.5] [--polls 5:15,2:10,1.5:8,1:8]``
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import redis
from common import (
    API_KEY,
    RssSampler,
    SolveTimeRecorder,
    WorkerProcess,
    bench_config,
    lognormal_mean,
    machine,
    percentile,
    scaled_api,
    task_payloads,
    time_scale_note,
    workdir,
)
from helpers_worker_runs import bench_parser, emit_rows, poll_pairs, read_out

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.redis_connect import connect_url
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.local_servers.redis_server import RedisServer

SEED = 20240602
MIB = 1024 * 1024


class Samples:
    """Time series of (t, results, queue length, sandbox in flight): a row each time the run looks whether its
    results are in, so the wait for them is the sampler (no thread of its own)."""

    def __init__(self, client: redis.Redis, keys: Keys, sandbox: SandboxServer):
        self.client = client
        self.keys = keys
        self.sandbox = sandbox
        self.rows: list[tuple[float, int, int, int]] = []

    def take(self) -> int:
        """Record a row now; the results count."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(self.keys.results)
        pipe.llen(self.keys.tasks)
        results, queued = pipe.execute()
        in_flight = int(self.sandbox.stats()["in_flight"])
        self.rows.append((time.monotonic(), int(results), int(queued), in_flight))
        return int(results)


def run_once(
    redis_url: str,
    scale: float,
    tasks: int,
    slots: int,
    poll_s: float,
    first_s: float,
    batch: int,
    tmp: Path,
) -> dict[str, Any]:
    """One worker process, one sandbox, one queue of ``tasks``."""
    prefix = f"bi{os.getpid()}p{poll_s:g}f{first_s:g}".replace(".", "_")
    keys = Keys(prefix)
    client = connect_url(redis_url, socket_timeout=None)
    sandbox = SandboxServer(
        SandboxConfig(time_scale=scale, threads=None, seed=SEED, accept_keys=(API_KEY,), balance=1e9)
    ).start()
    recorder = SolveTimeRecorder(sandbox)
    api = scaled_api(sandbox.url, scale, poll_interval_s=poll_s, first_poll_s=first_s, batch_size=batch)
    config = bench_config(redis_url, prefix, api, initial_slots=slots)
    worker = WorkerProcess(config, tmp, sandbox.url, instance=prefix, slots=slots)
    try:
        worker.wait_registered(client)
        rss = RssSampler(worker.pid, interval_s=0.1).start()
        worker_proc = psutil.Process(worker.pid)
        me = psutil.Process()
        cpu0 = (worker_proc.cpu_times(), me.cpu_times())
        time.sleep(0.2)
        for start in range(0, tasks, 2000):
            client.rpush(keys.tasks, *task_payloads(prefix, min(2000, tasks - start), start))
        t0 = time.monotonic()
        samples = Samples(client, keys, sandbox)
        expected = tasks / slots * lognormal_mean() * scale
        done = wait_until(lambda: samples.take() >= tasks, timeout_s=max(60.0, 4 * expected), interval_s=0.1)
        elapsed = time.monotonic() - t0
        hwm = rss.high_water_mark()
        rss.stop()
        cpu1 = (worker_proc.cpu_times(), me.cpu_times())
        readout = read_out(client, keys, worker, sandbox, tasks, done)
    finally:
        worker.stop_and_report()
        sandbox.stop()

    stats = readout.stats
    mean_s = recorder.mean()
    ideal_rate = slots / mean_s
    window = _steady_window(samples.rows, t0 + 2 * mean_s)
    (ta, ra, _, _), (tb, rb, _, _) = window[0], window[-1]
    achieved = (rb - ra) / (tb - ta)
    occupancy = sum(r[3] for r in window) / len(window) / slots
    seen_late = _seen_late(readout.results, recorder, scale)
    worker_cpu = sum(cpu1[0][:2]) - sum(cpu0[0][:2])
    bench_cpu = sum(cpu1[1][:2]) - sum(cpu0[1][:2])
    label = f"poll {poll_s:g} s, first poll {first_s:g} s"
    return {
        "label": label,
        "poll_interval_s": poll_s,
        "first_poll_s": first_s,
        "batch_size": batch,
        "tasks": tasks,
        "slots": slots,
        "succeeded": sum(1 for r in readout.results.values() if r.get("status") == "success"),
        "elapsed_s": elapsed,
        "mean_solve_s": mean_s,
        "ideal_per_s": ideal_rate,
        "window_s": [round(ta - t0, 2), round(tb - t0, 2)],
        "achieved_per_s": achieved,
        "efficiency": achieved / ideal_rate,
        "occupancy": occupancy,
        "max_in_flight": stats["max_in_flight"],
        "peak_rss_mib": rss.peak_bytes / MIB,
        "vm_hwm_mib": hwm / MIB if hwm is not None else None,
        "requests_per_task": (int(stats["in_php"]) + int(stats["res_php"])) / max(1, int(stats["solved"])),
        "res_per_task": int(stats["res_php"]) / max(1, int(stats["solved"])),
        "ids_per_res": int(stats["res_ids_polled"]) / max(1, int(stats["res_php"])),
        "over_polled": stats["over_polled"],
        "worker_cpu_percent": 100 * worker_cpu / elapsed,
        "bench_cpu_percent": 100 * bench_cpu / elapsed,
        "seen_late_real_s": {
            "mean": sum(seen_late) / len(seen_late) if seen_late else None,
            "p50": percentile(seen_late, 0.5),
            "p99": percentile(seen_late, 0.99),
        },
        "heartbeat_http_requests": readout.heartbeat.get("http_requests"),
    }


def _steady_window(rows: list[tuple[float, int, int, int]], start: float) -> list[tuple[float, int, int, int]]:
    """The samples from ``start`` (after the first synchronized wave) until the queue first runs empty."""
    empty_at = next((t for t, _, queued, _ in rows if queued == 0), rows[-1][0])
    window = [r for r in rows if start <= r[0] <= empty_at]
    if len(window) < 2:
        raise RuntimeError("no steady window: use more tasks")
    return window


def _seen_late(results: dict[str, dict[str, Any]], recorder: SolveTimeRecorder, scale: float) -> list[float]:
    """How much longer than the sandbox's drawn solve time each result took to be seen, in real seconds."""
    return [
        (float(r["api_seconds"]) - recorder.by_id[str(r["captcha_id"])]) / scale
        for r in results.values()
        if "api_seconds" in r and str(r.get("captcha_id")) in recorder.by_id
    ]


def main(argv: list[str] | None = None) -> int:
    """Run each poll setting once; print the table."""
    parser = bench_parser(
        "One worker, 2,000 solves in flight: efficiency and RSS.",
        "500 slots, 2,000 tasks, time scale 0.25, default poll only",
        0.5,
    )
    parser.add_argument("--slots", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=12000)
    parser.add_argument("--polls", default="5:15,2:10,1.5:8,1:8", help="poll_interval:first_poll pairs, real seconds")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    pairs = poll_pairs(args.polls)
    if args.quick:
        args.slots, args.tasks, args.time_scale, pairs = 500, 2000, 0.25, [(5.0, 15.0)]
    info = machine()
    rows: list[dict[str, Any]] = []
    with RedisServer() as server, workdir("bench-inflight-") as tmp:
        for poll_s, first_s in pairs:
            rows.append(
                run_once(server.url, args.time_scale, args.tasks, args.slots, poll_s, first_s, args.batch_size, tmp)
            )
    headers = [
        "worker setting (real seconds)",
        "ok",
        "ideal (tasks/s)",
        "achieved (tasks/s)",
        "efficiency",
        "occupancy",
        "peak RSS (MiB)",
        "HTTP req / solved",
        "res.php / solved (ids per res.php)",
        "seen late (real s, mean / p99)",
        "CPU worker / bench",
    ]
    table_rows = [
        [
            r["label"],
            f"{r['succeeded']}/{r['tasks']}",
            f"{r['ideal_per_s']:.1f}",
            f"{r['achieved_per_s']:.1f}",
            f"**{100 * r['efficiency']:.1f} %**",
            f"{100 * r['occupancy']:.1f} %",
            f"**{max(r['peak_rss_mib'], r['vm_hwm_mib'] or 0):.0f}**",
            f"{r['requests_per_task']:.2f}",
            f"{r['res_per_task']:.3f} ({r['ids_per_res']:.0f})",
            f"{r['seen_late_real_s']['mean']:.2f} / {r['seen_late_real_s']['p99']:.2f}",
            f"{r['worker_cpu_percent']:.0f} % / {r['bench_cpu_percent']:.0f} %",
        ]
        for r in rows
    ]
    title = (
        f"{args.slots} slots, {args.tasks} tasks, unlimited plan, {time_scale_note(args.time_scale)}, "
        f"batch {args.batch_size}"
    )
    return emit_rows(args, info, rows, title, headers, table_rows)


if __name__ == "__main__":
    sys.exit(main())
