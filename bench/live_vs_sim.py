"""Live replay vs the calibrated simulator on the same traces: P95 and slot-seconds side by side.

For each trace (or window of one): ``captcha-fleet replay`` on the real fleet (private redis-server, the
sandbox with the plan's threads and median 15 s solves, the controller with its local actuator and real
worker processes) in compressed time, then ``simulate`` on the very same trace with the same settings
(sandbox solve sigma 0.3; a worker reads its target every heartbeat; the local actuator's start-up, which
does not compress, in trace seconds), plus both oracles. Prints one markdown row per trace and the issue's
targets checked.

    .venv/bin/python bench/live_vs_sim.py --quick                       # builtin:short (about 45 s)
    .venv/bin/python bench/live_vs_sim.py --traces flash-crowd:600:1800,spike:900:1800,short
    .venv/bin/python bench/live_vs_sim.py --sim-only --traces steady:0:900   # the simulated side alone (seconds)
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from host_cpu import CpuWatch  # bench/, the script's directory
from replay_run import live_replay

from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.sim.engine import SimConfig, simulate
from captcha_fleet.controller.sim.traces import Trace, builtin
from captcha_fleet.controller.strategies.registry import make_policy

REAL_STARTUP_S = 1.5  # the local actuator: decision -> first claim, real seconds (bench/README.md)


def trace_of(spec: str, seed: int) -> tuple[Trace, str]:
    """``NAME`` or ``NAME:START:END`` -> the trace and the replay's ``--window``."""
    name, _, window = spec.partition(":")
    trace = builtin(name, seed)
    if not window:
        return trace, ""
    start, end = (int(x) for x in window.split(":"))
    return Trace(f"{name}[{start}:{end}]", trace.arrivals[start:end]), window


def live(spec: str, scale: float, seed: int, out: Path) -> dict[str, Any]:
    name, _, window = spec.partition(":")
    return live_replay(f"builtin:{name}", scale, seed, out / spec.replace(":", "_"), window)


def simulated(trace: Trace, scale: float, seed: int) -> tuple[Any, Any, Any]:
    settings = replace(ControllerSettings(), service_startup_s=REAL_STARTUP_S / scale)
    config = SimConfig(seed=seed, solve_sigma=0.3, target_read_s=1.0)
    policy = simulate(trace, make_policy("queue-model", settings), settings, config)
    oracle = simulate(trace, None, settings, config)
    capped = simulate(trace, None, settings, replace(config, oracle_capped=True))
    return policy, oracle, capped


def print_sim_only(specs: list[str], scale: float, seed: int) -> int:
    """The simulated side of each row, to compare a simulator change with live figures already measured."""
    print("| trace | sim P95 s | capped-oracle P95 s | sim slot-s | oracle slot-s | sim / oracle slot-s | flaps |")
    print("|---|" + "---:|" * 6)
    for spec in specs:
        trace, _ = trace_of(spec, seed)
        sim, oracle, capped = simulated(trace, scale, seed)
        print(
            f"| {trace.name} | {sim.p95_latency_s:.1f} | {capped.p95_latency_s:.1f} | {sim.worker_seconds:,.0f} | "
            f"{oracle.worker_seconds:,.0f} | {sim.worker_seconds / oracle.worker_seconds:.3f} | {sim.flaps} |",
            flush=True,
        )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traces", default="short,flash-crowd:600:1800,spike:900:1800")
    p.add_argument("--time-scale", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="run/live-vs-sim")
    p.add_argument("--quick", action="store_true", help="builtin:short only")
    p.add_argument("--sim-only", action="store_true", help="no live run: the simulated side and both oracles")
    args = p.parse_args()
    specs = ["short"] if args.quick else args.traces.split(",")
    if args.sim_only:
        return print_sim_only(specs, args.time_scale, args.seed)
    out = Path(args.out)
    print(
        "| trace | live P95 s | sim P95 s | live/sim | capped-oracle P95 s | live slot-s | sim slot-s | live/sim "
        "| live / oracle slot-s | starts live/sim | flaps live/sim | provider mean while waiting (peak) / plan "
        "| provider mean while plan-bound / plan | req/task | NO_SLOT refusals | lost | host CPU during the live run |"
    )
    print("|---|" + "---:|" * 15 + "---|")
    for spec in specs:
        trace, _ = trace_of(spec, args.seed)
        watch = CpuWatch()
        got = live(spec, args.time_scale, args.seed, out)
        host = watch.read()
        sim, oracle, capped = simulated(trace, args.time_scale, args.seed)
        mean = got["provider_mean_while_waiting"]
        bound = got.get("provider_mean_while_plan_bound")
        bound_txt = "-" if bound is None else f"{bound:.1f} ({got.get('provider_plan_bound_s', 0):.0f} s)"
        print(
            f"| {trace.name} | {got['p95_latency_s']:.1f} | {sim.p95_latency_s:.1f} | "
            f"{got['p95_latency_s'] / sim.p95_latency_s:.2f} | {capped.p95_latency_s:.1f} | "
            f"{got['worker_seconds']:,.0f} | {sim.worker_seconds:,.0f} | "
            f"{got['worker_seconds'] / sim.worker_seconds:.2f} | "
            f"{got['worker_seconds'] / oracle.worker_seconds:.2f} | {got['service_starts']}/{sim.service_starts} | "
            f"{got['flaps']}/{sim.flaps} | {mean if mean is None else round(mean, 1)} ({got['provider_peak']}) / "
            f"{got['plan_threads']} | {bound_txt} | {got['http_requests_per_task']:.2f} | {got['refused_no_slot']} "
            f"| {got['lost']} | {host} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
