"""``captcha-fleet replay``: feed a load trace to the real fleet in compressed time and measure what ``sim``
predicts for the same trace, plus what only the live system shows (the provider's side).

Local (the default): a private redis-server, the sandbox API (CaptchaAI-compatible, the plan's threads, acting
out the ``--provider`` profile, time-compressed) and the controller with its local actuator, which starts worker
services as real processes. Beside the live figures, ``sim`` holds what the simulator predicts for the same trace,
settings and provider profile (and the capped oracle's P95), so calibration is checked on every run.
``--redis-url``: an existing fleet (its controller and workers already running) is fed and measured; provider
figures then need ``--sandbox-url`` (a sandbox's admin counters). Every figure is in trace seconds (real seconds /
``--time-scale``) under the names ``captcha-fleet sim --json`` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from captcha_fleet.contract.common_cli import (
    add_config_option,
    add_json_option,
    add_key_prefix_option,
    add_subcommand,
    print_json,
)
from captcha_fleet.contract.config import ConfigError, FleetConfig, load_config
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.provider_profiles import DEFAULT_PROFILE, PROFILES, ProviderProfile, provider_profile
from captcha_fleet.contract.records import Result
from captcha_fleet.controller.settings import ControllerSettings, settings_from_config
from captcha_fleet.controller.sim.traces import BUILTIN, Trace, TraceError, resolve

if TYPE_CHECKING:
    from captcha_fleet.apps.replay.measure import Sampler
    from captcha_fleet.worker.producer import Producer

PARAMS = {"googlekey": "6Le-replay", "pageurl": "https://replay.example/"}
# What each method of a profile's task mix is submitted with (a 1x1 PNG for images).
PARAMS_BY_METHOD: dict[str, dict[str, str]] = {
    "userrecaptcha": PARAMS,
    "hcaptcha": {"sitekey": "replay-site", "pageurl": "https://replay.example/"},
    "turnstile": {"sitekey": "replay-site", "pageurl": "https://replay.example/"},
    "base64": {
        "body": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    },
}
TAIL_S = 400.0  # trace seconds to wait after the last arrival for the last results
LOCAL_STARTUP_S = 1.5  # the local actuator: decision -> first claim, real seconds (bench/README.md); not compressed
# The simulator beside a replay runs at this many phases of the evaluation grid (evenly over one interval): where
# the live loop's evaluations fall against a burst moved its P95 (short[120:300], sandbox: 25-55 s over ten phases
# before the rising-load term; bench/README.md).
SIM_PHASES = 5


HELP = "replay a load trace on the real fleet in compressed time; same JSON as sim, plus the provider's side"
DESCRIPTION = __doc__


def register(subparsers: Any) -> None:
    """Add the ``replay`` subcommand."""
    p = add_subcommand(subparsers, "replay", run, HELP, DESCRIPTION, epilog="built-in traces: " + ", ".join(BUILTIN))
    p.add_argument("--trace", default="builtin:short", help="CSV (t,arrivals) or builtin:NAME")
    p.add_argument("--window", metavar="START:END", help="replay only these trace seconds")
    p.add_argument("--time-scale", type=float, default=0.05, help="real seconds per trace second (0.05 = 20x)")
    p.add_argument("--seed", type=int, default=1, help="arrivals of built-in traces, the sandbox's solve times")
    add_config_option(p, "fleet.yml whose controller: section to use")
    p.add_argument("--plan-threads", type=int, metavar="N", help="override controller.plan_threads")
    p.add_argument(
        "--provider",
        default=DEFAULT_PROFILE,
        metavar="NAME",
        help=f"the provider profile the sandbox acts out and the simulator beside it models ({', '.join(PROFILES)}; "
        f"default: {DEFAULT_PROFILE}); with --redis-url, the one that fleet's provider runs",
    )
    p.add_argument("--redis-url", help="feed an existing fleet at this Redis instead of starting one")
    add_key_prefix_option(p, "with --redis-url: the fleet's key prefix")
    p.add_argument("--sandbox-url", help="with --redis-url: a sandbox whose /admin/stats gives provider figures")
    p.add_argument("--out", metavar="DIR", help="logs and the result (default: run/replay-*)")
    add_json_option(p, "print one JSON object")


def window_of(trace: Trace, spec: str | None) -> Trace:
    """The trace cut to ``START:END`` trace seconds."""
    if not spec:
        return trace
    try:
        start_txt, end_txt = spec.split(":")
        start, end = int(start_txt or 0), int(end_txt or trace.duration_s)
    except ValueError:
        raise TraceError(f"--window: expected START:END in whole seconds, got {spec!r}") from None
    if not 0 <= start < end <= trace.duration_s:
        raise TraceError(f"--window {spec}: must lie within 0:{trace.duration_s}")
    return Trace(f"{trace.name}[{start}:{end}]", trace.arrivals[start:end])


def arrival_times(trace: Trace, seed: int) -> list[float]:
    """Each task's arrival, spread uniformly inside its second (as the simulator does)."""
    rng = random.Random(f"arrivals:{seed}")
    out: list[float] = []
    for second, n in enumerate(trace.arrivals):
        out.extend(sorted(second + rng.random() for _ in range(n)))
    return out


def verdict(result: Mapping[str, Any]) -> str:
    """One line: the P95 against the fleet's promise, and whether every task got a result."""
    p95, target = result["p95_latency_s"], result["p95_target_s"]
    met = "met" if p95 <= target else "MISSED"
    lost = "no task lost" if not result["lost"] else f"{result['lost']} TASKS LOST"
    return f"P95 {p95:.1f} s against the {target:.0f} s target (trace seconds): {met}; {lost}"


def beside_sim(result: Mapping[str, Any]) -> str:
    """One line: live against the simulator on the same provider profile."""
    sim = result["sim"]
    return (
        f"sim on provider {sim['provider']}: P95 {sim['p95_latency_s']:.1f} s (live/sim "
        f"{result.get('live_vs_sim_p95', '-')}), capped oracle P95 {sim['oracle_capped_p95_latency_s']:.1f} s, "
        f"slot-s {sim['worker_seconds']:,.0f} (live {result['worker_seconds']:,.0f}), flaps {sim['flaps']}"
    )


def run(args: argparse.Namespace) -> int:
    """Replay and print; exit 1 if a task was lost, 2 on bad input."""
    if not 0 < args.time_scale <= 1:
        print("captcha-fleet replay: --time-scale must be in (0, 1]", file=sys.stderr)
        return 2
    try:
        trace = window_of(resolve(args.trace, args.seed), args.window)
        settings = settings_from_config(load_config(args.config, env={})) if args.config else ControllerSettings()
        profile = provider_profile(args.provider)
        unsent = sorted(set(profile.task_mix) - set(PARAMS_BY_METHOD))
        if unsent:
            raise ConfigError(f"--provider {profile.name}: replay cannot submit method {unsent[0]!r}")
    except (TraceError, ConfigError) as exc:
        print(f"captcha-fleet replay: {exc}", file=sys.stderr)
        return 2
    if args.plan_threads:
        settings = replace(settings, plan_threads=args.plan_threads)
    if args.redis_url and args.config:  # a running fleet's settings are in real seconds
        from captcha_fleet.apps.replay.config import in_trace_seconds

        settings = in_trace_seconds(settings, args.time_scale)
    if args.redis_url:
        result = replay_existing(args, trace, settings, profile)
        startup_s = settings.service_startup_s
    else:
        result = replay_local(args, trace, settings, profile)
        startup_s = local_startup_s(args.time_scale)
    result["sim"] = simulated_beside(trace, replace(settings, service_startup_s=startup_s), profile, args.seed)
    if result["sim"]["p95_latency_s"]:
        result["live_vs_sim_p95"] = round(result["p95_latency_s"] / result["sim"]["p95_latency_s"], 3)
    if args.json:
        print_json(result)
    else:
        for key, value in result.items():
            if key not in ("provider_in_flight_series", "sim"):
                print(f"{key:<30}  {value}")
        print(beside_sim(result))
        print(verdict(result))
    return 1 if result["lost"] else 0


def local_startup_s(time_scale: float) -> float:
    """The local actuator's decision -> first claim in trace seconds: real seconds that do not compress."""
    return LOCAL_STARTUP_S / time_scale


def simulated_beside(trace: Trace, settings: ControllerSettings, profile: ProviderProfile, seed: int) -> dict[str, Any]:
    """What the simulator predicts for the replayed trace on the same provider profile: the controller's policy
    (queue-model, as the replay's controller runs) at ``SIM_PHASES`` phases of its evaluation grid (the run with
    the median P95, and every phase's P95), and the plan-capped oracle's P95 (the best the plan allows)."""
    from captcha_fleet.controller.sim.engine import SimConfig, simulate
    from captcha_fleet.controller.strategies.registry import make_policy

    config = SimConfig(seed=seed, provider=profile)
    phases = [settings.interval_s * k / SIM_PHASES for k in range(SIM_PHASES)]
    runs = [
        simulate(trace, make_policy("queue-model", settings), settings, replace(config, eval_phase_s=phase))
        for phase in phases
    ]
    # The live loop's evaluations fall anywhere against the trace: its figure is set beside the median phase's.
    median = sorted(runs, key=lambda r: r.p95_latency_s)[len(runs) // 2]
    sim = median.to_dict()
    sim["p95_by_eval_phase"] = {f"{phase:g}": round(r.p95_latency_s, 2) for phase, r in zip(phases, runs, strict=True)}
    capped = simulate(trace, None, settings, replace(config, oracle_capped=True))
    sim["oracle_capped_p95_latency_s"] = round(capped.p95_latency_s, 2)
    return sim


def replay_local(
    args: argparse.Namespace, trace: Trace, settings: ControllerSettings, profile: ProviderProfile
) -> dict[str, Any]:
    """Start redis-server, the sandbox and the controller (local actuator); feed; measure; stop."""
    from captcha_fleet.apps.demo import write_fleet_yml
    from captcha_fleet.apps.replay.config import replay_config
    from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
    from captcha_fleet.local_servers.redis_server import RedisServer, terminate

    out = Path(args.out or f"run/replay-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    sandbox_config = SandboxConfig.from_profile(
        profile.name, time_scale=args.time_scale, threads=settings.plan_threads, seed=args.seed
    )
    with RedisServer() as redis_server, SandboxServer(sandbox_config) as sandbox:
        config = replay_config(redis_server.url, sandbox.url, args.time_scale, settings)
        write_fleet_yml(out / "fleet.yml", config)
        log = (out / "controller.log").open("wb")
        env = dict(os.environ, REDIS_URL=config.redis_url, CAPTCHAAI_BASE=sandbox.url, CAPTCHAAI_KEY=config.api.key)
        argv = [sys.executable, "-m", "captcha_fleet.apps.cli", "controller", "--config", str(out / "fleet.yml")]
        argv += ["--actuator", "local", "--host-name", "replay", "--stop-workers-on-exit"]
        argv += ["--worker-log-dir", str(out / "workers"), "--log-level", "INFO"]
        controller = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            result = feed_and_measure(
                config, trace, settings, args, profile, sandbox.stats, lambda: controller.poll() is None
            )
        finally:
            terminate(controller, timeout_s=60)  # it drains and stops its worker services (--stop-workers-on-exit)
            log.close()
    (out / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True), encoding="utf-8")
    return result


def replay_existing(
    args: argparse.Namespace, trace: Trace, settings: ControllerSettings, profile: ProviderProfile
) -> dict[str, Any]:
    """Feed a running fleet; provider figures from ``--sandbox-url`` if given."""
    config = load_config(args.config, env=dict(os.environ, REDIS_URL=args.redis_url))
    if args.key_prefix:
        config = replace(config, key_prefix=args.key_prefix)
    stats: Callable[[], Mapping[str, Any]] | None = None
    if args.sandbox_url:
        url = args.sandbox_url.rstrip("/") + "/admin/stats"

        def stats() -> Mapping[str, Any]:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return cast("Mapping[str, Any]", json.loads(reply.read()))

    return feed_and_measure(config, trace, settings, args, profile, stats, lambda: True)


def _finished(client: Any, keys: Keys, ids: list[str], start_wall: float) -> tuple[list[Result], list[dict[str, Any]]]:
    """The tasks' results, and the controller's decisions since the trace started (oldest first)."""
    raw = cast("list[bytes | None]", client.hmget(keys.results, ids)) if ids else []
    results = [Result.from_json(r) for r in raw if r is not None]
    decisions = [json.loads(d) for d in reversed(cast("list[bytes]", client.lrange(keys.decisions, 0, -1)))]
    return results, [d for d in decisions if float(d["at"]) >= start_wall]


def feed_and_measure(
    config: FleetConfig,
    trace: Trace,
    settings: ControllerSettings,
    args: argparse.Namespace,
    profile: ProviderProfile,
    provider_stats: Callable[[], Mapping[str, Any]] | None,
    alive: Callable[[], bool],
) -> dict[str, Any]:
    """Push every task at its compressed arrival time, sample the fleet, then collect the figures."""
    from captcha_fleet.apps.replay.measure import Sampler, count_flaps, integrate, latency_figures, slo_violation_s
    from captcha_fleet.contract.redis_connect import connect
    from captcha_fleet.worker.producer import Producer

    scale = args.time_scale
    client = connect(config, socket_timeout=None)
    keys = config.keys
    producer = Producer(client, keys)
    sampler = Sampler(client, keys, scale, provider_stats)
    base_stats = dict(provider_stats()) if provider_stats is not None else {}
    _wait_for_fleet(sampler, alive)
    arrivals = arrival_times(trace, args.seed)
    methods = profile.methods(len(arrivals), args.seed)  # the simulator's very draws (same seed, same mix)
    ids: list[str] = []
    start, start_wall = time.monotonic(), time.time()
    give_up = start + (trace.duration_s + TAIL_S) * scale
    _feed(
        client, keys.results, producer, sampler, list(zip(arrivals, methods, strict=True)), ids, start, give_up, alive
    )
    sampler.sample(time.monotonic() - start)
    results, decisions = _finished(client, keys, ids, start_wall)
    lat = latency_figures(results, scale, start_wall)
    finished = lat.pop("finished")
    figures = integrate(sampler.samples, settings.plan_threads)
    out: dict[str, Any] = {
        "policy": decisions[-1]["policy"] if decisions else None,
        "trace": trace.name,
        "seed": args.seed,
        "provider": profile.name,
        "time_scale": scale,
        "tasks": len(ids),
        "completed": len(results),
        "lost": len(ids) - len(results),
        "failed": sum(1 for r in results if not r.ok),
        **lat,
        **figures,
        "scale_changes": sum(1 for d in decisions if d["desired_slots"] != d["previous_slots"]),
        "service_starts": sum(len(d.get("started") or ()) for d in decisions),
        "service_stops": sum(len(d.get("stopped") or ()) for d in decisions),
        "flaps": count_flaps(decisions, 120.0 * scale),
        "slo_violation_s": slo_violation_s(finished, settings.p95_target_s),
        "duration_s": (time.monotonic() - start) / scale,
        "plan_threads": settings.plan_threads,
        "p95_target_s": settings.p95_target_s,
    }
    if provider_stats is not None:
        out.update(_provider_figures(provider_stats(), base_stats, len(results)))
    held, spent = out["oracle_worker_seconds"], out["worker_seconds"]
    out["worker_seconds_vs_oracle"] = spent / held if held else None
    out["mean_utilization"] = held / spent if spent else None
    out["mean_detection_s"] = None  # the provider's own solve time is not visible from outside
    client.close()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def _wait_for_fleet(sampler: Sampler, alive: Callable[[], bool]) -> None:
    """The fleet is up (its first service claims) before the trace starts, as in the simulator."""
    ready_by = time.monotonic() + 60
    while alive() and time.monotonic() < ready_by and sampler.sample(0.0).services == 0:
        time.sleep(0.1)
    sampler.samples.clear()


def _feed(
    client: Any,
    results_key: str,
    producer: Producer,
    sampler: Sampler,
    arrivals: list[tuple[float, str]],
    ids: list[str],
    start: float,
    give_up: float,
    alive: Callable[[], bool],
) -> None:
    """Push each arrival when its compressed time comes (ids into ``ids``), sampling the fleet as it goes, until
    every task has a result or the tail is over."""
    from captcha_fleet.contract.tasks import NewTask

    scale = sampler.time_scale
    sample_s = min(0.5, max(0.05, 2.0 * scale))
    next_sample, i = start, 0
    while alive():
        now = time.monotonic()
        due = []
        while i < len(arrivals) and start + arrivals[i][0] * scale <= now:
            method = arrivals[i][1]
            due.append(NewTask(method, PARAMS_BY_METHOD[method]))
            i += 1
        if due:
            ids.extend(producer.submit_many(due))
        if now >= next_sample:
            sampler.sample(now - start)
            next_sample = now + sample_s
        if i == len(arrivals) and (now > give_up or int(client.hlen(results_key)) >= len(ids)):
            break
        time.sleep(0.01)


def _provider_figures(stats: Mapping[str, Any], base: Mapping[str, Any], completed: int) -> dict[str, Any]:
    """The provider's side over the replay (its counters less those before): requests per task, refusals."""
    requests = sum(int(stats[k]) - int(base.get(k, 0)) for k in ("in_php", "res_php"))
    return {
        "http_requests_per_task": requests / max(1, completed),
        "refused_no_slot": int(stats["refused_no_slot"]) - int(base.get("refused_no_slot", 0)),
    }
