"""``captcha-fleet sim``: run a policy over a load trace in the simulator and report what it cost."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from captcha_fleet.contract.common_cli import add_config_option, add_json_option, add_subcommand, print_json
from captcha_fleet.contract.config import ConfigError, load_config
from captcha_fleet.contract.provider_profiles import PROFILES, ProviderProfile, provider_profile

from ..settings import ControllerSettings, settings_from_config
from ..strategies.registry import POLICY_NAMES, UnknownPolicyError, make_policy
from .engine import SimConfig, SimResult, simulate
from .traces import BUILTIN, TraceError, resolve

EPILOG = "built-in traces (--trace builtin:NAME): " + "; ".join(
    f"{name}: {desc}" for name, (_, _, desc) in BUILTIN.items()
)


def register(subparsers: Any) -> None:
    """Add the ``sim`` subcommand."""
    p = add_subcommand(
        subparsers, "sim", run, help="simulate a scaling policy over a load trace", description=__doc__, epilog=EPILOG
    )
    p.add_argument(
        "--trace",
        default="builtin:steady",
        help="CSV file with header t,arrivals (t = second, arrivals in that second), or builtin:NAME",
    )
    p.add_argument(
        "--policy",
        default="queue-model",
        help=f"one of {', '.join(POLICY_NAMES)}, oracle (lower bound on worker-seconds), "
        "oracle-capped (the oracle with only plan_threads solves at the provider: the best P95 on the plan)",
    )
    add_config_option(p, "fleet.yml whose controller: section to use")
    p.add_argument("--seed", type=int, default=1, help="random seed (arrivals of built-in traces, solve times)")
    p.add_argument(
        "--provider",
        metavar="NAME",
        help=f"a provider profile, as the sandbox acts it out ({', '.join(PROFILES)}); "
        "default: one lognormal from --solve-median and --solve-sigma on loopback",
    )
    p.add_argument("--solve-median", type=float, metavar="S", help="median solve time (s; default 15)")
    p.add_argument("--solve-sigma", type=float, metavar="SIGMA", help="lognormal sigma (default 0.4)")
    p.add_argument("--slots-per-service", type=int, metavar="N", help="override controller.slots_per_service")
    p.add_argument("--startup", type=float, metavar="S", help="override controller.service_startup_s")
    p.add_argument("--plan-threads", type=int, metavar="N", help="override controller.plan_threads")
    p.add_argument("--balance", type=float, metavar="USD", help="starting balance (default: no balance signal)")
    p.add_argument("--price", type=float, default=0.001, metavar="USD", help="cost per solved task")
    p.add_argument(
        "--uncalibrated",
        action="store_true",
        help="the model before calibration: answers seen at once, targets read at once, slots capped at the plan",
    )
    add_json_option(p, "print one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="draw demand, backlog and capacity over time")
    p.add_argument("--decisions", action="store_true", help="print every decision that changed the size")


def settings_from_args(args: argparse.Namespace) -> ControllerSettings:
    """The controller section of --config, with the command-line overrides."""
    settings = settings_from_config(load_config(args.config, env={})) if args.config else ControllerSettings()
    overrides: dict[str, Any] = {}
    if args.slots_per_service is not None:
        overrides["slots_per_service"] = args.slots_per_service
    if args.startup is not None:
        overrides["service_startup_s"] = args.startup
    if args.plan_threads is not None:
        overrides["plan_threads"] = args.plan_threads
    return replace(settings, **overrides)


def provider_from_args(args: argparse.Namespace) -> ProviderProfile | None:
    """The ``--provider`` profile, which brings its own solve times (so it excludes the lognormal's flags)."""
    name = getattr(args, "provider", None)
    if name is None:
        return None
    if args.solve_median is not None or args.solve_sigma is not None:
        raise ConfigError(f"--provider {name} brings its own solve times: drop --solve-median and --solve-sigma")
    return provider_profile(name)


def run_one(args: argparse.Namespace) -> tuple[SimResult, ControllerSettings]:
    """Resolve the trace and policy, then simulate."""
    settings = settings_from_args(args)
    provider = provider_from_args(args)
    median = 15.0 if args.solve_median is None else args.solve_median
    sigma = 0.4 if args.solve_sigma is None else args.solve_sigma
    if median <= 0 or sigma < 0:
        raise ConfigError("--solve-median must be positive and --solve-sigma non-negative")
    trace = resolve(args.trace, args.seed)
    oracle = args.policy in ("oracle", "oracle-capped")
    policy = None if oracle else make_policy(args.policy, settings)
    config = SimConfig(
        calibrated=not args.uncalibrated,
        oracle_capped=args.policy == "oracle-capped",
        seed=args.seed,
        solve_median_s=median,
        solve_sigma=sigma,
        provider=provider,
        balance=args.balance,
        price_per_task=args.price,
    )
    return simulate(trace, policy, settings, config), settings


def run(args: argparse.Namespace) -> int:
    """Simulate and print the result; exit 1 if any task was lost, 2 on bad input."""
    try:
        result, settings = run_one(args)
    except (TraceError, UnknownPolicyError) as exc:
        print(f"captcha-fleet sim: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        from .plot import plot

        plot(result, args.plot, settings.p95_target_s)
    out = result.to_dict()
    if args.decisions:
        for d in result.decisions:
            if d.changed:
                print(f"t={d.at:7.0f}s {d.previous_slots:4d} -> {d.desired_slots:4d} [{d.rule}] {d.reason}")
    if args.json:
        print_json(out)
    else:
        width = max(len(k) for k in out)
        for key, value in out.items():
            print(f"{key:<{width}}  {value}")
    return 1 if result.lost else 0
