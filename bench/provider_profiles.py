"""Every built-in trace x every provider profile in the simulator, and optionally live replays beside it (issue 24).

Sim (the default): for each trace and profile, ``queue-model`` with the default controller settings (what
``captcha-fleet sim --provider NAME`` runs), the plan-capped oracle (the best P95 the plan allows) and the
uncapped oracle (the slot-seconds floor), with the issue's goal P95 <= max(60 s, 1.1 x capped) checked, and
the baselines that beat the policy on P95, slot-seconds and flaps at once (``static:N`` over a sweep of N).

Live (``--live``): ``captcha-fleet replay --provider NAME`` of one trace per profile (the sandbox acting out the
profile, real workers and controller), each printed beside the simulator on the same profile, which the
replay itself reports.

    .venv/bin/python bench/provider_profiles.py                          # sim only (about a minute)
    .venv/bin/python bench/provider_profiles.py --live sandbox,congested --live-trace short
    .venv/bin/python bench/provider_profiles.py --traces short --profiles sandbox --no-baselines \
        --live sandbox,heavy-tail,mixed-methods,far-away,congested --live-trace all     # every trace x profile live
"""

from __future__ import annotations

import argparse
from pathlib import Path

from replay_run import live_replay  # bench/, the script's directory

from captcha_fleet.contract.provider_profiles import PROFILES, provider_profile
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.sim.engine import SimConfig, SimResult, simulate
from captcha_fleet.controller.sim.traces import BUILTIN, builtin
from captcha_fleet.controller.strategies.registry import make_policy

BASELINES = ("keda", "keda:2", "keda:1", "seed", "seed:100", *(f"static:{n}" for n in range(20, 161, 20)))


def dominated_by(ours: SimResult, others: dict[str, SimResult]) -> list[str]:
    """Baselines at least as good on P95, slot-seconds and flaps, and better on one of them."""
    out = []
    for name, r in others.items():
        mine = (ours.p95_latency_s, ours.worker_seconds, ours.flaps)
        theirs = (r.p95_latency_s, r.worker_seconds, r.flaps)
        if r.lost == 0 and all(t <= m for t, m in zip(theirs, mine, strict=True)) and theirs != mine:
            out.append(name)
    return out


def sim_row(trace_name: str, profile_name: str, seed: int, baselines: bool) -> str:
    settings = ControllerSettings()
    trace = builtin(trace_name, seed)
    config = SimConfig(seed=seed, provider=provider_profile(profile_name))
    ours = simulate(trace, make_policy("queue-model", settings), settings, config)
    oracle = simulate(trace, None, settings, config)
    capped = simulate(trace, None, settings, SimConfig(seed=seed, provider=config.provider, oracle_capped=True))
    goal = max(60.0, 1.1 * capped.p95_latency_s)
    others = {b: simulate(trace, make_policy(b, settings), settings, config) for b in BASELINES} if baselines else {}
    beaten = ", ".join(dominated_by(ours, others)) or "none" if baselines else "-"
    return (
        f"| {trace_name} | {profile_name} | {ours.p95_latency_s:.1f} | {capped.p95_latency_s:.1f} | {goal:.1f} | "
        f"{'yes' if ours.p95_latency_s <= goal else 'NO'} | {ours.worker_seconds / oracle.worker_seconds:.3f} | "
        f"{ours.flaps} | {ours.lost} | {beaten} |"
    )


def print_sim(traces: list[str], profiles: list[str], seed: int, baselines: bool) -> None:
    print(
        "| trace | provider | sim P95 s | capped-oracle P95 s | goal max(60, 1.1x capped) | met | slot-s / oracle run "
        "| flaps | lost | baselines better on P95, slot-s and flaps at once |"
    )
    print("|---|---|" + "---:|" * 7 + "---|")
    for trace_name in traces:
        for profile_name in profiles:
            print(sim_row(trace_name, profile_name, seed, baselines), flush=True)


def live_row(profile: str, trace: str, window: str, scale: float, seed: int, out: Path) -> str:
    got = live_replay(f"builtin:{trace}", scale, seed, out / profile, window, provider=profile)
    sim = got["sim"]
    ratio = got["p95_latency_s"] / sim["p95_latency_s"] if sim["p95_latency_s"] else float("nan")
    within = "yes" if abs(ratio - 1.0) <= LIVE_WITHIN else "NO"
    return (
        f"| {got['trace']} | {profile} | {got['p95_latency_s']:.1f} | {sim['p95_latency_s']:.1f} | "
        f"{got.get('live_vs_sim_p95', '-')} | {within} | {sim['oracle_capped_p95_latency_s']:.1f} | "
        f"{got['worker_seconds']:,.0f} | {sim['worker_seconds']:,.0f} | {got['worker_seconds_vs_oracle']:.2f} | "
        f"{got['flaps']}/{sim['flaps']} | {got['http_requests_per_task']:.2f} | {got['refused_no_slot']} | "
        f"{got['lost']} |"
    )


# One window of each built-in trace that holds what the trace is about, at most 1,800 trace seconds (90 s at 20x):
# every trace x profile live is then about 50 minutes instead of 7.3 hours of whole traces at 20x (26,400 trace
# seconds x 5 profiles / 20). The simulator beside each run replays the same window from the same cold start.
LIVE_WINDOWS = {
    "steady": "steady:600:1500",
    "diurnal": "diurnal:2700:4500",  # the peak (3/s at t=3600) and the slopes either side
    "spike": "spike:900:2100",  # the five-minute spike at t=1200 with 5 minutes before and 10 after
    "sawtooth": "sawtooth:0:1200",  # two teeth
    "flash-crowd": "flash-crowd:600:1800",  # the jump at t=900 and its decay
    "short": "short",
    "periodic": "periodic:0:900",  # ten bursts of 120
    "plan-bound": "plan-bound",
}
LIVE_WITHIN = 0.15  # the target: live P95 within 15 % of the simulator's


def print_live(profiles: list[str], specs: list[str], scale: float, seed: int, out: Path) -> None:
    print(
        "| trace | provider | live P95 s | sim P95 s | live/sim | within 15 % | capped-oracle P95 s | live slot-s "
        "| sim slot-s | live slot-s / held | flaps live/sim | req/task | NO_SLOT refusals | lost |"
    )
    print("|---|---|" + "---:|" * 12)
    for spec in specs:
        trace, _, window = spec.partition(":")
        for profile in profiles:
            print(live_row(profile, trace, window, scale, seed, out / trace), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traces", default=",".join(BUILTIN), help="built-in traces for the sim table")
    p.add_argument("--profiles", default=",".join(PROFILES), help="provider profiles for the sim table")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines (P95, slot-s, flaps) column")
    p.add_argument("--live", metavar="P1,P2", help="also replay live on these profiles (beside the sim)")
    p.add_argument(
        "--live-trace",
        default="short",
        help="NAME or NAME:START:END for the live replays, comma-separated; 'all' = a window of every built-in trace",
    )
    p.add_argument("--time-scale", type=float, default=0.05, help="the live replays' compression")
    p.add_argument("--out", default="run/provider-profiles")
    args = p.parse_args()
    for name in args.profiles.split(",") + (args.live.split(",") if args.live else []):
        provider_profile(name)  # an unknown name fails before an hour of runs
    print_sim(args.traces.split(","), args.profiles.split(","), args.seed, not args.no_baselines)
    if args.live:
        print()
        specs = list(LIVE_WINDOWS.values()) if args.live_trace == "all" else args.live_trace.split(",")
        print_live(args.live.split(","), specs, args.time_scale, args.seed, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
