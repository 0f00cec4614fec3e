"""``captcha-fleet demo``: the whole fleet on one machine with nothing to configure.

It starts a private redis-server, the sandbox API (time-compressed 20x), and the controller with its local
actuator, which starts and stops worker services as real processes; it pushes two bursts of tasks, shows a
live status view, and ends with a summary checked against the fleet's promises (every task has exactly one
result) and a plot. No API key, no servers, no internet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from captcha_fleet.apps.replay.config import compressed_api
from captcha_fleet.apps.status.fleet_state import FleetState, read_fleet_state
from captcha_fleet.contract.common_cli import print_json
from captcha_fleet.contract.config import FleetConfig, WorkerConfig, write_fleet_config
from captcha_fleet.contract.records import Event, Result
from captcha_fleet.contract.tasks import NewTask
from captcha_fleet.contract.windows import percentile
from captcha_fleet.controller.settings import ControllerSettings, settings_from_config

if TYPE_CHECKING:
    from rich.console import Console

    from captcha_fleet.worker.producer import Producer

# A 1x1 PNG: the image CAPTCHA the demo sends.
TINY_PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


@dataclass(frozen=True)
class DemoPlan:
    """What the demo does: two bursts with a quiet spell between, so the fleet scales up, down and up."""

    time_scale: float = 0.05
    plan_threads: int = 80
    slots_per_service: int = 250  # one service holds the plan: bursts are thread-target writes (issue 11)
    bursts: tuple[int, ...] = (300, 200)
    pause_between_bursts_s: float = 15.0
    settle_s: float = 8.0  # after the last result, watch the fleet scale back in
    p95_window_s: float = 3.0  # 60 s of real time
    timeout_s: float = 150.0


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run the whole fleet locally on an embedded default (no API key, no servers)",
        description="Start a private redis-server, the sandbox API and local workers, push bursts of tasks, "
        "show live status, and print a summary. Ends by itself.",
    )
    parser.add_argument("--out", metavar="DIR", help="where to write the log and summary (default: run/demo-*)")
    parser.add_argument("--tasks", type=int, help="size of the first burst")
    parser.add_argument("--no-live", action="store_true", help="plain progress lines instead of a live view")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def demo_config(redis_url: str, api_base: str, plan: DemoPlan) -> FleetConfig:
    """Fleet settings scaled to the demo's compressed time."""
    scale = plan.time_scale
    api = compressed_api(api_base, "demo-key", scale)
    worker = WorkerConfig(
        initial_slots=0,  # services take nothing until the controller gives them a target
        heartbeat_interval_s=0.25,
        heartbeat_ttl_s=1.5,
        reaper_interval_s=0.5,
        drain_timeout_s=10.0,
        claim_timeout_s=0.25,
    )
    # The controller's timings, scaled like the API's (10 s evaluations become 0.5 s, and so on).
    controller = {
        "interval_s": 10 * scale,
        "scale_down_window_s": 60 * scale,
        "leader_ttl_s": 40 * scale,
        "slots_per_service": plan.slots_per_service,
        "min_slots": 2,
        "plan_threads": plan.plan_threads,
        "max_services": 10,
        "service_startup_s": 1.5,
        "p95_target_s": 60 * scale,
        "p95_up_s": 60 * scale,
        "p95_down_s": 20 * scale,
        "solve_time_prior_s": 15 * scale,
        "stale_after_s": 30 * scale,
        "stuck_after_s": 60 * scale,
        "rate_window_s": 60 * scale,
        "latency_window_s": 120 * scale,
        "balance_cache_s": 60 * scale,
        "drain_timeout_s": 10.0,
    }
    return FleetConfig(redis_url=redis_url, key_prefix="demo", api=api, worker=worker, raw={"controller": controller})


def write_fleet_yml(path: Path, config: FleetConfig) -> None:
    """The config as fleet.yml, secrets and the API base left out (they travel in the environment)."""
    write_fleet_config(path, config)


def run(args: argparse.Namespace) -> int:
    """Run the demo end to end; exit 0 only if every task got exactly one result."""
    from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
    from captcha_fleet.local_servers.redis_server import RedisServer

    plan = DemoPlan()
    if args.tasks:
        plan = dataclasses.replace(plan, bursts=(args.tasks, *plan.bursts[1:]))
    out = Path(args.out or f"run/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "demo.log").open("w", encoding="utf-8")
    print(f"demo: logs in {out}/", file=sys.stderr)
    sandbox_config = SandboxConfig(time_scale=plan.time_scale, threads=plan.plan_threads, seed=42)
    with RedisServer() as redis_server, SandboxServer(sandbox_config) as sandbox:
        config = demo_config(redis_server.url, sandbox.url, plan)
        write_fleet_yml(out / "fleet.yml", config)
        controller = _start_controller(out, config, sandbox.url, log_file)
        try:
            summary, samples = _drive(config, plan, sandbox, live=not args.no_live and sys.stderr.isatty())
        finally:
            controller.terminate()  # it drains and stops its worker services (--stop-workers-on-exit)
            try:
                controller.wait(timeout=60)
            except subprocess.TimeoutExpired:
                controller.kill()
            log_file.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    (out / "timeline.json").write_text(json.dumps(samples), encoding="utf-8")
    plot_path = _plot(samples, out / "timeline.png", plan)
    if plot_path is not None:
        summary["plot"] = str(plot_path)
    _print_summary(summary, args.json)
    return 0 if summary["lost"] == 0 and summary["duplicates"] == 0 else 1


def _start_controller(out: Path, config: FleetConfig, api_base: str, log: TextIO) -> subprocess.Popen[bytes]:
    """The controller with the local actuator: it starts and stops worker services as processes here."""
    env = dict(os.environ, REDIS_URL=config.redis_url, CAPTCHAAI_BASE=api_base, CAPTCHAAI_KEY=config.api.key)
    args = [sys.executable, "-m", "captcha_fleet.apps.cli", "controller", "--config", str(out / "fleet.yml")]
    args += ["--actuator", "local", "--host-name", "localhost", "--stop-workers-on-exit"]
    args += ["--worker-log-dir", str(out / "workers")]
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


# The CAPTCHA kinds the demo pushes, in turn (each gets its own id when submitted).
_DEMO_TASKS: tuple[NewTask, ...] = (
    NewTask("userrecaptcha", {"googlekey": "6Le-demo", "pageurl": "https://demo.example/login"}),
    NewTask("turnstile", {"sitekey": "0x4-demo", "pageurl": "https://demo.example/signup"}),
    NewTask("base64", {"body": TINY_PNG_BASE64}),
)


@dataclass
class _DemoRun:
    """The demo under way: bursts pushed, their task ids, samples, and when every task had its result."""

    client: Any
    config: FleetConfig
    plan: DemoPlan
    producer: Producer
    settings: ControllerSettings  # the thresholds the demo's controller acts on
    started: float
    ids: list[str] = field(default_factory=list)
    samples: list[dict[str, float]] = field(default_factory=list)
    next_burst: int = 0
    burst_at: float = 0.0
    all_done_at: float | None = None
    peak_slots: int = 0

    def step(self) -> None:
        """Push the next burst once the pause after the last one is over."""
        if self.next_burst < len(self.plan.bursts) and time.monotonic() >= self.burst_at:
            count = self.plan.bursts[self.next_burst]
            tasks = (_DEMO_TASKS[i % len(_DEMO_TASKS)] for i in range(count))
            self.ids.extend(self.producer.submit_many(tasks))
            self.next_burst += 1
            self.burst_at = time.monotonic() + self.plan.pause_between_bursts_s

    def sample(self) -> FleetState:
        """Read the fleet, record a sample, and note when the last burst's tasks all have results."""
        state = read_fleet_state(self.client, self.config.keys, settings=self.settings)
        self.peak_slots = max(self.peak_slots, state.slots)
        self.samples.append(
            {
                "t": round(time.monotonic() - self.started, 3),
                "pending": state.pending,
                "in_flight": state.in_flight,
                "slots": state.slots,
                "services": len(state.workers),
                "p95_s": recent_p95(self.client, self.config, self.plan.p95_window_s),
            }
        )
        if self.all_done_at is None and self.next_burst == len(self.plan.bursts) and state.results >= len(self.ids):
            self.all_done_at = time.monotonic()
        return state

    def finished(self) -> bool:
        """Every task has its result and the fleet has had ``settle_s`` to scale down."""
        return self.all_done_at is not None and time.monotonic() - self.all_done_at >= self.plan.settle_s


def _drive(
    config: FleetConfig, plan: DemoPlan, sandbox: Any, live: bool
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Push the bursts, show status until every task has a result and the fleet has settled, and measure."""
    from rich.console import Console

    from captcha_fleet.contract.redis_connect import connect
    from captcha_fleet.worker.producer import Producer

    client = connect(config, socket_timeout=None)
    producer = Producer(client, config.keys)
    settings = settings_from_config(config)
    console = Console(stderr=True)
    started = time.monotonic()
    run = _DemoRun(client, config, plan, producer, settings, started, burst_at=started)
    deadline = started + plan.timeout_s
    if live:
        _watch_live(run, console, deadline)
    else:
        _watch_plain(run, console, deadline)
    summary = _summary(run, sandbox)
    client.close()
    return summary, run.samples


def _watch_live(run: _DemoRun, console: Console, deadline: float) -> None:
    """Drive the demo with the status view redrawn in place (on a terminal)."""
    from rich.live import Live

    from captcha_fleet.apps.status.view import render

    with Live(console=console, refresh_per_second=4) as view:
        while not run.finished() and time.monotonic() < deadline:
            run.step()
            view.update(render(run.sample(), title="captcha-fleet demo"))
            time.sleep(0.25)


def _watch_plain(run: _DemoRun, console: Console, deadline: float) -> None:
    """Drive the demo with a progress line every two seconds (not a terminal)."""
    last_print = 0.0
    while not run.finished() and time.monotonic() < deadline:
        run.step()
        state = run.sample()
        if time.monotonic() - last_print >= 2:
            console.print(
                f"pending {state.pending:4d}  in flight {state.in_flight:3d}  busy {state.busy}/{state.slots}  "
                f"services {len(state.workers)}  results {state.results}/{len(run.ids)}"
            )
            last_print = time.monotonic()
        time.sleep(0.25)


def _summary(run: _DemoRun, sandbox: Any) -> dict[str, Any]:
    """What the demo measured: results against tasks, latency, requests per task, the fleet's size."""
    client, config, plan, ids = run.client, run.config, run.plan, run.ids
    elapsed = (run.all_done_at or time.monotonic()) - run.started
    final = read_fleet_state(client, config.keys, decisions=1000)
    raw_results = cast("list[bytes | None]", client.hmget(config.keys.results, ids)) if ids else []
    present = [Result.from_json(raw) for raw in raw_results if raw is not None]
    latencies = sorted(r.latency_seconds or 0.0 for r in present)
    stats = sandbox.stats()
    http_requests = int(stats["in_php"]) + int(stats["res_php"])
    return {
        "tasks": len(ids),
        "results": len(present),
        "succeeded": sum(1 for r in present if r.status == "success"),
        "failed": sum(1 for r in present if r.status == "error"),
        "lost": len(ids) - len(present),
        "duplicates": int(client.get(config.keys.completed_total) or 0) - len(present),
        "elapsed_s": round(elapsed, 2),
        "time_scale": plan.time_scale,
        "latency_p50_s": _quantile(latencies, 0.5),
        "latency_p95_s": _quantile(latencies, 0.95),
        "latency_p95_real_s": round((_quantile(latencies, 0.95) or 0) / plan.time_scale, 1),
        "http_requests_per_task": round(http_requests / max(1, len(present)), 3),
        "paid_solves": int(stats["accepted"]),
        "max_in_flight_at_provider": int(stats["max_in_flight"]),
        "plan_threads": plan.plan_threads,
        "peak_slots": run.peak_slots,
        "slots_at_end": final.slots,
        "decisions": len(final.decisions),
    }


def recent_p95(client: Any, config: FleetConfig, window_s: float) -> float:
    """End-to-end P95 of the tasks finished in the last ``window_s`` seconds (0 when none)."""
    since_ms = int((time.time() - window_s) * 1000)
    entries = client.xrange(config.keys.events, min=f"{since_ms}-0", max="+", count=5000)
    events = (Event.from_fields(fields) for _, fields in entries)
    latencies = sorted(e.latency_s for e in events if e.latency_s is not None)
    return _quantile(latencies, 0.95) or 0.0


def _plot(samples: list[dict[str, float]], path: Path, plan: DemoPlan) -> Path | None:
    """Queue, in-flight, capacity and P95 over time, as a PNG next to the log (if matplotlib is installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t = [s["t"] for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(t, [s["pending"] for s in samples], label="queue (pending)")
    top.plot(t, [s["in_flight"] for s in samples], label="in flight")
    top.plot(t, [s["slots"] for s in samples], label="capacity (slots)", linestyle="--")
    top.axhline(plan.plan_threads, color="grey", linewidth=0.8, label="plan threads")
    top.set_ylabel("tasks / slots")
    top.legend(loc="upper right")
    bottom.plot(t, [s["p95_s"] / plan.time_scale for s in samples], color="tab:red", label="P95, last 60 s (real s)")
    bottom.axhline(60, color="grey", linewidth=0.8, label="P95 target")
    bottom.set_ylabel("seconds (real time)")
    bottom.set_xlabel(f"demo seconds (time compressed x{1 / plan.time_scale:g})")
    bottom.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _quantile(ordered: list[float], q: float) -> float | None:
    """The percentile rounded to milliseconds, None (JSON null) when no task finished."""
    return round(percentile(ordered, q), 3) if ordered else None


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    print("\ncaptcha-fleet demo: summary")
    for key, value in summary.items():
        print(f"  {key:28s} {value}")
    verdict = "every task has exactly one result" if summary["lost"] == 0 else "TASKS WITHOUT A RESULT"
    print(f"  {'verdict':28s} {verdict}")
