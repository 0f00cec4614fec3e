"""Twenty times the plan, live (issue 24): a 2,000-thread plan replayed on this machine beside the simulator.

The trace is ``builtin:plan-bound``'s shape at ``--plan-threads / 100`` times its rates (a 2,000-thread plan:
20/s, then ``--burst-s`` at 160/s, above the ~133/s 2,000 threads serve at 15 s solves, then 20/s), written as a
CSV under ``--out`` with seeded Poisson arrivals. ``captcha-fleet replay`` runs it on the real local fleet (its
own redis-server, the sandbox acting out ``--provider`` with the plan's threads, the controller with its local
actuator starting ``captcha-fleet worker`` processes of ``--slots-per-service`` slots each) and reports the
simulator on the same trace, settings and profile. Meanwhile this script watches the process tree (CPU and RSS
per process: controller, workers, redis-server, and the replay process itself, which hosts the sandbox and the
producer) and the replay's Redis (INFO cpu and total_commands_processed every second; one MONITOR window of
``--monitor-s`` real seconds, counted only on the controller's own connections, gives its Redis commands per
decision; Redis figures per solve leave that window out). Prints one JSON object (``--json``) or a table: each
figure, the target where the issue sets one, and the simulator's figure with the ratio where it predicts one.

    .venv/bin/python bench/plan_2000.py                                  # the defaults (about 3 minutes here)
    .venv/bin/python bench/plan_2000.py --slots-per-service 100 --burst-s 60 --after-s 60   # a slots sweep point
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
import yaml
from host_cpu import CpuWatch  # bench/, the script's directory

BASE_PLAN = 100  # builtin:plan-bound is shaped for a 100-thread plan: 1/s, 8/s, 1/s
PLAN_SHARE_TARGET = 0.95
REQUESTS_PER_TASK_TARGET = 1.3


def plan_bound_csv(path: Path, plan_threads: int, before_s: int, burst_s: int, after_s: int, seed: int) -> int:
    """``builtin:plan-bound``'s rates times ``plan_threads / 100`` as a ``t,arrivals`` CSV; returns the task count."""
    factor = plan_threads / BASE_PLAN
    rng = random.Random(f"plan-2000:{seed}")
    rows, total = ["t,arrivals"], 0
    for t in range(before_s + burst_s + after_s):
        rate = factor * (8.0 if before_s <= t < before_s + burst_s else 1.0)
        n, clock = 0, rng.expovariate(rate)  # Poisson: exponential gaps within the second
        while clock < 1.0:
            n, clock = n + 1, clock + rng.expovariate(rate)
        rows.append(f"{t},{n}")
        total += n
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return total


def fleet_yml(path: Path, plan_threads: int, slots_per_service: int) -> dict[str, Any]:
    """The controller's section for the run: the plan's slots fit, and as many services on this host as it needs."""
    services = math.ceil(plan_threads * 1.2 * 1.2 / slots_per_service) + 2  # plan + over-plan + service headroom
    controller = {
        "plan_threads": plan_threads,
        "max_slots": 2 * plan_threads,
        "slots_per_service": slots_per_service,
        "max_services": services,
        "instances_per_host": services,
    }
    path.write_text(yaml.safe_dump({"controller": controller}, sort_keys=True), encoding="utf-8")
    return controller


@dataclass
class ProcessWatch:
    """Last-seen CPU seconds and peak RSS of every process under the replay, by role."""

    cpu: dict[int, float] = field(default_factory=dict)
    rss: dict[int, int] = field(default_factory=dict)
    role: dict[int, str] = field(default_factory=dict)
    controller_cpu_at: list[tuple[float, float]] = field(default_factory=list)  # (time, every controller's CPU s)

    def sample(self, root: psutil.Process) -> None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        now = time.monotonic()
        for p in procs:
            try:
                if p.pid not in self.role:
                    self.role[p.pid] = role_of(p, root)
                t = p.cpu_times()
                self.cpu[p.pid] = t.user + t.system
                self.rss[p.pid] = max(self.rss.get(p.pid, 0), p.memory_info().rss)
            except psutil.Error:
                continue
        # The role's total, the quantity figures() subtracts it from (one process's CPU beside a sum of several,
        # had the role more than one process, would not be a difference of one quantity).
        self.controller_cpu_at.append((now, self.total("controller")))

    def total(self, role: str) -> float:
        return sum(c for pid, c in self.cpu.items() if self.role.get(pid) == role)

    def pids(self, role: str) -> list[int]:
        return [pid for pid, r in self.role.items() if r == role]


def role_of(p: psutil.Process, root: psutil.Process) -> str:
    if p.pid == root.pid:
        return "replay"  # the feeder, the sampler and the sandbox (the provider) share this process
    line = " ".join(p.cmdline())
    if "redis-server" in line:
        return "redis"
    if " controller " in f" {line} ":
        return "controller"
    if " worker " in f" {line} ":
        return "worker"
    return "other"


@dataclass
class RedisWatch:
    """INFO every second: (time, Redis CPU s, commands processed, results, decisions, pending)."""

    rows: list[tuple[float, float, int, int, int]] = field(default_factory=list)
    monitor_window: tuple[float, float] | None = None
    controller_commands: int = 0
    controller_decisions: int = 0
    monitor_commands: dict[str, int] = field(default_factory=dict)

    def sample(self, client: redis.Redis, prefix: str) -> tuple[int, int]:
        info = client.info("all")
        results = int(client.hlen(f"{prefix}:results"))
        decisions = int(client.llen(f"{prefix}:controller:decisions"))
        cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        self.rows.append((time.monotonic(), cpu, int(info["total_commands_processed"]), results, decisions))
        return results, decisions

    def per_solve(self) -> dict[str, float | None]:
        """Redis CPU and commands per solved task, over the intervals outside the MONITOR window."""
        cpu = cmds = solved = 0.0
        for a, b in zip(self.rows, self.rows[1:], strict=False):
            if self.monitor_window and b[0] >= self.monitor_window[0] and a[0] <= self.monitor_window[1]:
                continue
            cpu, cmds, solved = cpu + b[1] - a[1], cmds + b[2] - a[2], solved + b[3] - a[3]
        if not solved:
            return {"redis_cpu_ms_per_solve": None, "redis_commands_per_solve": None}
        return {"redis_cpu_ms_per_solve": 1000 * cpu / solved, "redis_commands_per_solve": cmds / solved}


def redis_port(procs: ProcessWatch) -> int | None:
    """The port the replay's private redis-server listens on (no password: the replay starts it without one)."""
    for pid in procs.pids("redis"):
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                return int(c.laddr.port)
    return None


def controller_ports(controller_pid: int, redis_port: int) -> set[int]:
    """The local ports of the controller's connections to Redis (MONITOR names each command's client by them)."""
    try:
        conns = psutil.Process(controller_pid).net_connections(kind="tcp")
    except psutil.Error:
        return set()
    return {c.laddr.port for c in conns if c.raddr and c.raddr.port == redis_port}


def monitor_controller(client: redis.Redis, prefix: str, ports: set[int], seconds: float, watch: RedisWatch) -> None:
    """Count the commands the controller's connections send for ``seconds`` (MONITOR), and its decisions then."""
    before = int(client.llen(f"{prefix}:controller:decisions"))
    start = time.monotonic()
    counts: dict[str, int] = {}
    with client.monitor() as m:  # type: ignore[no-untyped-call]
        while time.monotonic() - start < seconds:
            cmd = m.next_command()
            if int(cmd.get("client_port") or 0) in ports:
                name = str(cmd["command"]).split(" ", 1)[0].upper()
                counts[name] = counts.get(name, 0) + 1
    end = time.monotonic()
    watch.monitor_window = (start, end)
    watch.controller_decisions = int(client.llen(f"{prefix}:controller:decisions")) - before
    watch.controller_commands = sum(counts.values())
    watch.monitor_commands = dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def watch_run(
    replay: subprocess.Popen[str], out: Path, total_tasks: int, args: argparse.Namespace
) -> tuple[ProcessWatch, RedisWatch]:
    """Sample the process tree every 0.5 s and Redis every second until the replay exits; one MONITOR window
    once ``--monitor-at`` of the tasks have results (the plan-bound part of the trace)."""
    procs, rwatch = ProcessWatch(), RedisWatch()
    root = psutil.Process(replay.pid)
    client: redis.Redis | None = None
    prefix = "replay"
    next_redis = 0.0
    monitored = args.monitor_s <= 0
    while replay.poll() is None:
        procs.sample(root)
        if client is None and (out / "fleet.yml").exists():
            port = redis_port(procs)
            if port is not None:
                prefix = yaml.safe_load((out / "fleet.yml").read_text(encoding="utf-8")).get("key_prefix", prefix)
                client = redis.Redis(host="127.0.0.1", port=port)
        if client is not None and time.monotonic() >= next_redis:
            next_redis = time.monotonic() + 1.0
            try:
                results, _ = rwatch.sample(client, prefix)
                if not monitored and results >= args.monitor_at * total_tasks:
                    monitored = True
                    ctrl = procs.pids("controller")
                    port = int(client.connection_pool.connection_kwargs["port"])
                    ports = controller_ports(ctrl[0], port) if ctrl else set()
                    if ports:
                        monitor_controller(client, prefix, ports, args.monitor_s, rwatch)
            except redis.RedisError:
                pass  # the replay is tearing Redis down
        time.sleep(0.5)
    return procs, rwatch


def ratio(live: float | None, sim: float | None) -> float | None:
    return round(live / sim, 3) if live is not None and sim else None


def figures(
    result: dict[str, Any], procs: ProcessWatch, rwatch: RedisWatch, args: argparse.Namespace, host: str
) -> dict[str, Any]:
    sim = result["sim"]
    plan = result["plan_threads"]
    solved = result["completed"]
    decisions = rwatch.rows[-1][4] if rwatch.rows else 0
    first = next((r for r in rwatch.rows if r[4] > 0), None)
    ctrl_cpu_per_decision = None
    if first is not None and procs.controller_cpu_at and decisions > first[4]:
        cpu_then = min(procs.controller_cpu_at, key=lambda tc: abs(tc[0] - first[0]))[1]
        ctrl_cpu_per_decision = 1000 * (procs.total("controller") - cpu_then) / (decisions - first[4])
    worker_rss = [procs.rss[p] / 2**20 for p in procs.pids("worker")]
    bound = result.get("provider_mean_while_plan_bound")
    waiting = result.get("provider_mean_while_waiting")
    out: dict[str, Any] = {
        "plan_threads": plan,
        "time_scale": result["time_scale"],
        "provider": result["provider"],
        "slots_per_service": args.slots_per_service,
        "tasks": result["tasks"],
        "lost": result["lost"],
        "failed": result["failed"],
        "provider_share_while_waiting": ratio(waiting, plan),
        "sim_provider_share_while_waiting": ratio(sim.get("provider_mean_while_waiting"), plan),
        "provider_share_while_plan_bound": ratio(bound, plan),
        "provider_plan_bound_s": result.get("provider_plan_bound_s"),
        "provider_peak": result.get("provider_peak"),
        "p95_latency_s": result["p95_latency_s"],
        "sim_p95_latency_s": sim["p95_latency_s"],
        "live_vs_sim_p95": ratio(result["p95_latency_s"], sim["p95_latency_s"]),
        "capped_oracle_p95_s": sim["oracle_capped_p95_latency_s"],
        "goal_p95_s": round(max(60.0, 1.1 * sim["oracle_capped_p95_latency_s"]), 1),
        "worker_seconds": result["worker_seconds"],
        "sim_worker_seconds": sim["worker_seconds"],
        "live_vs_sim_worker_seconds": ratio(result["worker_seconds"], sim["worker_seconds"]),
        "service_starts": result["service_starts"],
        "sim_service_starts": sim.get("service_starts"),
        "max_slots": result["max_slots"],
        "sim_max_slots": sim.get("max_slots"),
        "max_backlog": result["max_backlog"],
        "sim_max_backlog": sim.get("max_backlog"),
        "http_requests_per_task": result.get("http_requests_per_task"),
        "refused_no_slot": result.get("refused_no_slot"),
        "decisions": decisions,
        "controller_cpu_ms_per_decision": ctrl_cpu_per_decision,
        "controller_redis_commands_per_decision": (
            rwatch.controller_commands / rwatch.controller_decisions if rwatch.controller_decisions else None
        ),
        "controller_redis_commands_monitored": rwatch.monitor_commands,
        "worker_processes": len(worker_rss),
        "worker_cpu_ms_per_solve": 1000 * procs.total("worker") / solved if solved else None,
        "worker_rss_mib_max": round(max(worker_rss), 1) if worker_rss else None,
        "worker_rss_mib_mean": round(sum(worker_rss) / len(worker_rss), 1) if worker_rss else None,
        **rwatch.per_solve(),
        "replay_process_cpu_ms_per_solve": 1000 * procs.total("replay") / solved if solved else None,
        "controller_cpu_s": procs.total("controller"),
        "worker_cpu_s": procs.total("worker"),
        "redis_cpu_s": procs.total("redis"),
        "replay_cpu_s": procs.total("replay"),
        "host_cpu": host,
        "wall_s": None,
    }
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def print_table(f: dict[str, Any]) -> None:
    rows = [
        (
            "provider in flight / plan while tasks wait (sim)",
            f"{f['provider_share_while_waiting']} ({f['sim_provider_share_while_waiting']})",
            f">= {PLAN_SHARE_TARGET}",
        ),
        ("... while the fleet holds the plan's slots", f["provider_share_while_plan_bound"], f">= {PLAN_SHARE_TARGET}"),
        ("lost", f["lost"], "0"),
        (
            "P95 s (sim; live/sim)",
            f"{f['p95_latency_s']} ({f['sim_p95_latency_s']}; {f['live_vs_sim_p95']})",
            f"<= goal {f['goal_p95_s']}, live within 15 % of sim",
        ),
        (
            "slot-s (sim; live/sim)",
            f"{f['worker_seconds']} ({f['sim_worker_seconds']}; {f['live_vs_sim_worker_seconds']})",
            "-",
        ),
        (
            "HTTP requests per solved task (NO_SLOT refusals)",
            f"{f['http_requests_per_task']} ({f['refused_no_slot']})",
            f"<= {REQUESTS_PER_TASK_TARGET}",
        ),
        ("controller CPU ms per decision", f["controller_cpu_ms_per_decision"], "-"),
        ("controller Redis commands per decision", f["controller_redis_commands_per_decision"], "-"),
        ("worker CPU ms per solve", f["worker_cpu_ms_per_solve"], "-"),
        (
            "worker processes; RSS MiB max / mean",
            f"{f['worker_processes']}; {f['worker_rss_mib_max']} / {f['worker_rss_mib_mean']}",
            "-",
        ),
        (
            "Redis CPU ms per solve; commands per solve",
            f"{f['redis_cpu_ms_per_solve']}; {f['redis_commands_per_solve']}",
            "-",
        ),
        ("replay process (sandbox + producer) CPU ms per solve", f["replay_process_cpu_ms_per_solve"], "-"),
        ("host", f["host_cpu"], "-"),
    ]
    print(
        f"plan {f['plan_threads']} threads, time scale {f['time_scale']}, provider {f['provider']}, "
        f"{f['slots_per_service']} slots per service, {f['tasks']} tasks, {f['decisions']} decisions"
    )
    print("| figure | live | target |")
    print("|---|---:|---|")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan-threads", type=int, default=2000)
    p.add_argument("--time-scale", type=float, default=0.5, help="real seconds per trace second")
    p.add_argument("--slots-per-service", type=int, default=250)
    p.add_argument("--provider", default="sandbox")
    p.add_argument("--before-s", type=int, default=30, help="trace seconds at the base rate before the burst")
    p.add_argument("--burst-s", type=int, default=150, help="trace seconds at 8x the base rate (plan-bound)")
    p.add_argument("--after-s", type=int, default=90, help="trace seconds at the base rate after it")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--monitor-s", type=float, default=12.0, help="real seconds of MONITOR (0: none)")
    p.add_argument("--monitor-at", type=float, default=0.4, help="share of the tasks solved when MONITOR starts")
    p.add_argument("--max-s", type=float, default=570.0, help="real seconds before the replay is stopped")
    p.add_argument("--out", default="run/plan-2000")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = plan_bound_csv(out / "trace.csv", args.plan_threads, args.before_s, args.burst_s, args.after_s, args.seed)
    fleet_yml(out / "controller.yml", args.plan_threads, args.slots_per_service)
    argv = [sys.executable, "-m", "captcha_fleet.apps.cli", "replay", "--trace", str(out / "trace.csv"), "--json"]
    argv += ["--config", str(out / "controller.yml"), "--provider", args.provider, "--seed", str(args.seed)]
    argv += ["--time-scale", str(args.time_scale), "--out", str(out / "replay")]
    started, watch = time.monotonic(), CpuWatch()
    load_before = os.getloadavg()
    replay = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    timer = threading.Timer(args.max_s, lambda: os.killpg(replay.pid, signal.SIGTERM))
    timer.start()
    try:
        procs, rwatch = watch_run(replay, out / "replay", total, args)
        stdout, stderr = replay.communicate()
    finally:
        timer.cancel()
    if replay.returncode not in (0, 1) or not stdout.strip():
        print(f"replay failed ({replay.returncode}):\n{stderr[-3000:]}", file=sys.stderr)
        return 2
    result = json.loads(stdout.strip().splitlines()[-1])
    host = f"{watch.read()}, load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    f = figures(result, procs, rwatch, args, host)
    f["wall_s"] = round(time.monotonic() - started, 1)
    (out / "plan_2000.json").write_text(json.dumps(f, indent=2, sort_keys=True), encoding="utf-8")
    if args.json:
        print(json.dumps(f, sort_keys=True))
    else:
        print_table(f)
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
