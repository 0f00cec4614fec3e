"""Is it the compression we measure? The same trace window replayed live at 1x (real time) and compressed, in turns.

``captcha-fleet replay`` compresses trace time (0.05 = 20x) so that an hour of trace takes three minutes. What does
not compress (a process start, an HTTP round trip, a scheduling stall, Python's own work per task) weighs 20 times
more in trace seconds at 20x, so a compressed figure could be the compression's, not the policy's. This replays one
window at each time scale in turns (1x, 20x, 1x, 20x, ... so the host's load drifts over both alike), each beside the
simulator on the same window, and prints live / sim per run with the host's CPU over the run.

    .venv/bin/python bench/compression.py                                   # short[120:300], 2 rounds, ~7 min
    .venv/bin/python bench/compression.py --trace spike:1000:1400 --scales 1,0.2,0.05 --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from host_cpu import CpuWatch  # bench/, the script's directory
from replay_run import live_replay


def replay(trace: str, window: str, scale: float, provider: str, seed: int, out: Path) -> dict[str, Any]:
    """One live replay (its JSON), with the host's CPU over it under ``host``."""
    watch = CpuWatch()
    got = live_replay(f"builtin:{trace}", scale, seed, out, window, provider=provider)
    got["host"] = str(watch.read())
    return got


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default="short:120:300", help="NAME or NAME:START:END (a built-in trace)")
    p.add_argument("--scales", default="1,0.05", help="time scales to compare, in the order run each round")
    p.add_argument("--rounds", type=int, default=2, help="rounds of one run per scale (bounded: at most 10)")
    p.add_argument("--provider", default="sandbox")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="run/compression")
    args = p.parse_args()
    trace, _, window = args.trace.partition(":")
    scales = [float(s) for s in args.scales.split(",")]
    ratios: dict[float, list[float]] = {s: [] for s in scales}
    print(
        "| round | scale | live P95 s | sim P95 s | live/sim | live slot-s | sim slot-s | live/sim slot-s "
        "| live slot-s / held | req/task | lost | host |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for round_no in range(1, min(args.rounds, 10) + 1):
        for scale in scales:
            got = replay(trace, window, scale, args.provider, args.seed, Path(args.out) / f"{round_no}-{scale:g}")
            sim = got["sim"]
            ratio = got["p95_latency_s"] / sim["p95_latency_s"]
            ratios[scale].append(ratio)
            live_ws, sim_ws = got["worker_seconds"], sim["worker_seconds"]
            print(
                f"| {round_no} | {1 / scale:g}x | {got['p95_latency_s']:.1f} | {sim['p95_latency_s']:.1f} | "
                f"{ratio:.2f} | {live_ws:,.0f} | {sim_ws:,.0f} | {live_ws / sim_ws:.2f} | "
                f"{got['worker_seconds_vs_oracle']:.2f} | {got['http_requests_per_task']:.2f} | {got['lost']} | "
                f"{got['host']} |",
                flush=True,
            )
    print()
    for scale, values in ratios.items():
        print(f"{1 / scale:g}x: live/sim P95 median {statistics.median(values):.2f} over {len(values)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
