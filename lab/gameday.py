"""The game day: a trace replayed through the production-shaped lab while a schedule injects faults, one after
another with recovery between, and a checker that judges the whole history (``lab/history.py``).

Every fault is one an operator meets: the Redis primary killed or frozen, the leading controller killed, a worker
host cut off, a good and a bad rolling update, an API-key rotation through ``site.yml`` while the controller scales,
a worker stopped behind the controller's back, a burst of provider faults, hostile payloads. The producer submits
with ``WAIT 1`` as the producer user, each task with its own ``pageurl`` so the sandbox's payments can be counted per
task. ``python -m lab.gameday --schedule full`` runs the whole day and writes the report (bench/README.md carries
it); ``tests/lab/test_gameday_lab.py`` runs the short schedule in ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis

from captcha_fleet.apps.replay.cli import arrival_times
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.redis_connect import Durability
from captcha_fleet.contract.tasks import NewTask
from captcha_fleet.controller.sim.traces import resolve
from captcha_fleet.worker.producer import Producer
from lab.env import read_heartbeats, snapshot_source
from lab.history import (
    EndState,
    FaultWindow,
    History,
    Report,
    Sample,
    check,
    read_payments,
    read_results,
    read_winning_writes,
)
from lab.production import CONTROLLER_SETTINGS, ProductionLab, production_lab

PAGE = "https://gameday.test/"
SITEKEY = "6Le-gameday"
BATCH_S = 0.1  # the producer pushes what is due every 100 ms
HOSTILE: list[bytes] = [
    b'{"id": "hostile-notjson", "method": "userrecaptcha", "params": ',  # cut off mid-object
    b'{"id": "hostile-nomethod", "params": {"googlekey": "k", "pageurl": "https://gameday.test/x"}}',
    b'{"id": "hostile-types", "method": 12, "params": []}',
    b'{"id": "hostile-nan", "method": "userrecaptcha", "params": {"googlekey": NaN}}',
    b'{"method": "post", "params": {"file": "' + b"A" * 2_000_000 + b'"}, "id": "hostile-huge"}',
]
HOSTILE_IDS = ["hostile-notjson", "hostile-nomethod", "hostile-types", "hostile-nan", "hostile-huge"]


class Recorder(threading.Thread):
    """The producer: each arrival of the trace at its compressed time, acknowledged only when Redis said so."""

    def __init__(self, fleet: ProductionLab, arrivals: list[float], time_scale: float) -> None:
        super().__init__(name="gameday-producer", daemon=True)
        client = fleet.client("producer")
        self.producer = Producer(client, Keys(fleet.key_prefix), Durability(1, 2000))
        self.raw = client
        self.arrivals, self.time_scale = arrivals, time_scale
        self.acks: dict[str, float] = {}
        self.refused: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        """Until stopped, the trace again from its start when it ends (the schedule may outlast it)."""
        if not self.arrivals:
            return
        start, i, n = time.monotonic(), 0, len(self.arrivals)
        period = (self.arrivals[-1] + 1.0) * self.time_scale
        while not self.stop.is_set():
            now = time.monotonic() - start
            due: list[str] = []
            while (i // n) * period + self.arrivals[i % n] * self.time_scale <= now:
                due.append(f"g{i}")
                i += 1
            if due:
                tasks = [NewTask("userrecaptcha", {"googlekey": SITEKEY, "pageurl": PAGE + t}, t) for t in due]
                try:
                    ids = self.producer.submit_many(tasks)
                except redis.RedisError:
                    self.refused += due  # never told "queued": a real producer retries or reports it
                else:
                    at = time.time()
                    self.acks.update(dict.fromkeys(ids, at))
            self.stop.wait(BATCH_S)

    def push_hostile(self) -> None:
        """Hostile payloads straight onto the queue, as a buggy producer writes them."""
        self.raw.rpush(Keys(self.producer.keys.prefix).tasks, *HOSTILE)
        at = time.time()
        self.acks.update(dict.fromkeys(HOSTILE_IDS, at))


class Observer(threading.Thread):
    """Samples the fleet every ``every_s``: results, queue, desired and running services, hosts draining/locked."""

    def __init__(self, fleet: ProductionLab, every_s: float = 0.5) -> None:
        super().__init__(name="gameday-observer", daemon=True)
        self.fleet, self.every_s = fleet, every_s
        self.keys = Keys(fleet.key_prefix)
        self.client = fleet.client("admin")
        self.samples: list[Sample] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                self.samples.append(self.sample())
            except (redis.RedisError, OSError):
                continue  # Redis is moving: the gap in the samples is the outage

    def sample(self) -> Sample:
        c, k = self.client, self.keys
        pipe = c.pipeline(transaction=False)
        pipe.hlen(k.results)
        pipe.llen(k.tasks)
        pipe.lindex(k.decisions, 0)
        for host in self.fleet.worker_hosts:
            pipe.exists(k.host_draining(host))
            pipe.exists(k.host_lock(host))
        results, depth, decision, *flags = pipe.execute()
        hosts = self.fleet.worker_hosts
        desired = json.loads(decision).get("desired_services") if decision else None
        return Sample(
            t=time.time(),
            results_total=int(results),
            queue_depth=int(depth),
            desired_services=int(desired) if desired is not None else None,
            running_services=len(running_services(self.fleet, c)),
            hosts_draining=[h for h, f in zip(hosts, flags[0::2], strict=True) if f],
            hosts_locked=[h for h, f in zip(hosts, flags[1::2], strict=True) if f],
        )


def running_services(fleet: ProductionLab, client: redis.Redis) -> set[tuple[str, str]]:
    """(host, instance) of every worker service whose fresh heartbeat says running."""
    return {
        (beat.host, beat.instance)
        for beat in read_heartbeats(client, fleet.key_prefix)
        if beat.state == "running" and beat.host in fleet.worker_hosts
    }


@dataclass
class Fault:
    """One scheduled fault: ``inject`` returns when the fault itself is over (a freeze thawed, a link back)."""

    name: str
    expect: str  # process | redis | host: which recovery target applies
    inject: Callable[[GameDay], None]


@dataclass
class GameDay:
    """The running day: the fleet, the producer, the observer, the windows so far."""

    fleet: ProductionLab
    out: Path
    recorder: Recorder
    observer: Observer
    windows: list[FaultWindow] = field(default_factory=list)
    releases: dict[str, str] = field(default_factory=dict)  # host -> the release it should run at the end
    log: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.log.append(line)
        print(line, flush=True)

    # --- the faults ------------------------------------------------------------------------------------
    def program_pid(self, host: str, program: str) -> int:
        state, pid = self.fleet.env.programs(host).get(program, ("", 0))
        if state != "RUNNING" or not pid:
            raise RuntimeError(f"{program} is not running on {host} ({state})")
        return int(pid)

    def kill_primary(self, down_s: float = 15.0) -> None:
        """kill -9 of the primary's redis-server, kept down ``down_s`` as a dead machine's would be.

        Its supervisor restarts a killed server within a second (before the Sentinels' down-after: no failover to
        see), so it is frozen first, told to stop (the SIGTERM waits, pending, on the frozen process), and then
        killed with its process group: supervisord sees the stop it asked for end, and starts nothing.
        """
        host = self.fleet.primary()
        supervisor = self.fleet.env.supervisor(host)
        pid = self.program_pid(host, "captcha-redis")
        os.kill(pid, signal.SIGSTOP)
        supervisor.stopProcess("captcha-redis", False)
        group = os.getpgid(pid)
        if group == pid:
            os.killpg(group, signal.SIGKILL)  # with an AOF-rewrite child, as a dead machine takes it
        else:
            os.kill(pid, signal.SIGKILL)
        self.say(f"kill -9 of the Redis primary on {host}; kept down {down_s:.0f} s")
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and supervisor.getProcessInfo("captcha-redis")["statename"] != "STOPPED":
            time.sleep(0.05)
        time.sleep(down_s)
        supervisor.startProcess("captcha-redis")

    def freeze_primary(self, seconds: float = 10.0) -> None:
        host = self.fleet.primary()
        pid = self.program_pid(host, "captcha-redis")
        os.kill(pid, signal.SIGSTOP)
        self.say(f"SIGSTOP of the Redis primary on {host} for {seconds:.0f} s")
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    def leader_host(self) -> str:
        token = self.observer.client.get(Keys(self.fleet.key_prefix).controller_leader)
        if token is None:
            raise RuntimeError("no controller leads")
        pid = (token.decode() if isinstance(token, bytes) else str(token)).split(":")[1]
        for host in self.fleet.controller_hosts:
            if str(self.fleet.env.programs(host).get("captcha-controller", ("", 0))[1]) == pid:
                return host
        raise RuntimeError(f"the leader's process {pid} runs on no controller host")

    def kill_leader(self) -> None:
        host = self.leader_host()
        os.kill(self.program_pid(host, "captcha-controller"), signal.SIGKILL)
        self.say(f"kill -9 of the leading controller on {host}")

    def cut_worker_host(self, seconds: float = 30.0) -> None:
        host = self.busiest_worker_host()
        self.fleet.env.lab.cut(host)
        self.say(f"network cut of {host} for {seconds:.0f} s")
        try:
            time.sleep(seconds)
        finally:
            self.fleet.env.lab.restore(host)

    def busiest_worker_host(self) -> str:
        """A worker host that runs services: neither the Redis primary's nor the leading controller's if one such
        runs services (their own faults are scheduled apart), a host that runs workers only first; else any but
        the primary's (a cut of a host that runs nothing would test nothing)."""
        primary = self.fleet.primary()
        spared = {primary}
        with contextlib.suppress(RuntimeError):
            spared.add(self.leader_host())
        services = [h for h, _ in running_services(self.fleet, self.observer.client)]
        for excluded in (spared, {primary}):
            busy = [h for h in self.fleet.worker_hosts if h not in excluded and h in services]
            if busy:
                busy.sort(
                    key=lambda h: (-services.count(h), h in self.fleet.redis_hosts or h in self.fleet.controller_hosts)
                )
                return busy[0]
        return next(h for h in self.fleet.worker_hosts if h not in spared)

    def roll(self, version: str, broken: bool = False, idle_first: bool = False) -> str:
        """rolling_update.yml to ``version``; with ``idle_first`` the hosts running no worker go first (their own
        run: a play keeps the inventory's order), so only the gate's probe can catch a broken release there."""
        source = snapshot_source(self.fleet.env.lab.dir / f"source-{version}", version=version, broken=broken)
        hosts = list(self.fleet.worker_hosts)
        batches = [hosts]
        if idle_first:
            busy = {h for h, _ in running_services(self.fleet, self.observer.client)}
            batches = [b for b in ([h for h in hosts if h not in busy], [h for h in hosts if h in busy]) if b]
        status = "successful"
        for batch in batches:
            result = self.fleet.playbook(
                "rolling_update.yml", extravars={"worker_source_dir": str(source)}, limit=",".join(batch)
            )
            status = result.status
            self.say(f"rolling update of {','.join(batch)} to {version}{' (broken)' if broken else ''}: {status}")
            for host, task, said in result.failed_tasks():
                self.say(f"  {host}: {task}: {said.strip()[:300]}")
            if status != "successful":
                break
        return status

    def good_roll(self) -> None:
        if self.roll("9.0.1") != "successful":
            raise RuntimeError("the good roll failed")
        self.releases = {h: self.fleet.env.current_release(h) for h in self.fleet.worker_hosts}

    def bad_roll(self) -> None:
        if self.roll("9.0.2", broken=True, idle_first=True) == "successful":
            raise RuntimeError("a broken release passed the roll's gate")

    def rotate_key(self) -> None:
        sandbox = self.fleet.env.sandbox
        assert sandbox is not None
        old = self.fleet.api_key
        new = self.fleet.rotate_api_key()
        post_config(sandbox.url, {"accept_keys": [old, new]})
        result = self.fleet.site()
        self.say(f"API key rotated through site.yml while the controller scales: {result.status}")
        if result.status != "successful":
            raise RuntimeError(f"site.yml failed during the key rotation: {result.failed_tasks()}")
        post_config(sandbox.url, {"accept_keys": [new]})  # the old key is revoked: any use of it now fails tasks

    def stop_out_of_band(self) -> None:
        for host in self.fleet.worker_hosts:
            names = [p for p, (state, _) in self.fleet.env.programs(host).items() if p.startswith("captcha-worker")
                     and state == "RUNNING"]  # fmt: skip
            if names:
                done = self.fleet.env.supervisorctl(host, "stop", names[0])
                self.say(f"supervisorctl stop {names[0]} on {host}: {done.stdout.strip()}")
                return
        raise RuntimeError("no worker service runs to stop")

    def api_fault_burst(self, seconds: float = 10.0) -> None:
        sandbox = self.fleet.env.sandbox
        assert sandbox is not None
        post_config(sandbox.url, {"faults": {"slow": 0.1, "http_500": 0.1, "no_slot": 0.2}})
        self.say(f"API fault burst for {seconds:.0f} s (slow 10 %, 500 10 %, no slot 20 %)")
        try:
            time.sleep(seconds)
        finally:
            post_config(sandbox.url, {"faults": {"slow": 0.0, "http_500": 0.0, "no_slot": 0.0}})

    def hostile(self) -> None:
        self.recorder.push_hostile()
        self.say(f"{len(HOSTILE)} hostile payloads pushed")

    # --- the schedule ---------------------------------------------------------------------------------
    def run_fault(self, fault: Fault, recover_s: float) -> None:
        started = time.time()
        error = ""
        try:
            fault.inject(self)
        except Exception as exc:  # the day goes on; the report names the fault that could not be injected
            error = f"{type(exc).__name__}: {exc}"
            self.say(f"{fault.name}: {error}")
        self.windows.append(FaultWindow(fault.name, started, time.time(), fault.expect, error))
        deadline = time.monotonic() + recover_s
        while time.monotonic() < deadline and not (self.recovered_since(started) and self.whole()):
            time.sleep(0.5)
        if time.monotonic() >= deadline:
            last = self.observer.samples[-1] if self.observer.samples else None
            self.say(f"{fault.name}: not settled after {recover_s:.0f} s: {self.unsettled()}; last sample {last}")
        time.sleep(2.0)  # a quiet stretch between faults: the next window starts from a settled fleet

    def unsettled(self) -> str:
        """What keeps the fleet from being whole, in words (for the log)."""
        try:
            leader = self.leader_host()
        except (RuntimeError, redis.RedisError) as exc:
            leader = f"none ({exc})"
        return f"Redis roles {self.fleet.roles()}, leader {leader}"

    def whole(self) -> bool:
        """The Redis set has one primary and its replicas, a controller leads from a controller host, and no host
        is locked (a killed leader's host locks outlive it by their TTL: the next fault would meet them)."""
        if self.observer.samples and self.observer.samples[-1].hosts_locked:
            return False
        try:
            self.leader_host()
        except (RuntimeError, redis.RedisError):
            return False
        return self.fleet.settled()

    def recovered_since(self, started: float) -> bool:
        after = [s for s in self.observer.samples if s.t >= started]
        if len(after) < 2:
            return False
        last, before = after[-1], after[-2]
        if last.results_total is None or before.results_total is None:
            return False
        flowing = last.results_total > before.results_total or last.queue_depth == 0
        # more running than desired is a scale-down draining: the capacity is there (as the checker judges it)
        return flowing and last.desired_services is not None and last.running_services >= last.desired_services


SCHEDULES: dict[str, list[Fault]] = {
    # The faults that matter most, for make test: Redis dead and frozen (a failover each; the frozen one is where
    # CAPTCHAs were paid twice), a controller, a worker behind the controller's back, the bad roll on idle hosts
    # first, hostile payloads.
    "short": [
        Fault("kill -9 Redis primary", "redis", partial(GameDay.kill_primary, down_s=8.0)),
        Fault("SIGSTOP Redis primary 10 s", "redis", GameDay.freeze_primary),
        Fault("kill -9 leading controller", "process", GameDay.kill_leader),
        Fault("out-of-band supervisorctl stop", "process", GameDay.stop_out_of_band),
        Fault("bad roll, idle hosts first", "operation", GameDay.bad_roll),
        Fault("hostile payloads", "process", GameDay.hostile),
    ],
    "full": [
        Fault("kill -9 Redis primary", "redis", GameDay.kill_primary),
        Fault("SIGSTOP Redis primary 10 s", "redis", GameDay.freeze_primary),
        Fault("kill -9 leading controller", "process", GameDay.kill_leader),
        Fault("30 s network cut of a worker host", "host", GameDay.cut_worker_host),
        Fault("good roll", "operation", GameDay.good_roll),
        Fault("bad roll, idle hosts first", "operation", GameDay.bad_roll),
        Fault("API key rotation via site.yml", "operation", GameDay.rotate_key),
        Fault("out-of-band supervisorctl stop", "process", GameDay.stop_out_of_band),
        Fault("API fault burst", "provider", GameDay.api_fault_burst),
        Fault("hostile payloads", "process", GameDay.hostile),
    ],
}


def post_config(sandbox_url: str, changes: dict[str, Any]) -> None:
    request = urllib.request.Request(
        sandbox_url.rstrip("/") + "/admin/config", data=json.dumps(changes).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as reply:
        reply.read()


def play(
    fleet: ProductionLab,
    schedule: Sequence[Fault],
    out: Path,
    trace: str = "builtin:steady",
    tasks_per_s: float = 12.0,
    recover_s: float = 60.0,
    stable_s: float = 20.0,
) -> Report:
    """Replay ``trace`` at ``tasks_per_s`` on average through the fleet while ``schedule`` runs; the checked report."""
    out.mkdir(parents=True, exist_ok=True)
    assert fleet.env.sandbox is not None
    # The sandbox forgets an answer after retention_s of compressed time (3 s real at 1/100): a Redis outage is not
    # compressed, and a CAPTCHA polled after it would be ERROR_WRONG_CAPTCHA_ID. Real providers keep answers minutes.
    post_config(fleet.env.sandbox.url, {"retention_s": 100_000.0})
    the_trace = resolve(trace, 1)
    arrivals = arrival_times(the_trace, 1)
    time_scale = len(arrivals) / tasks_per_s / the_trace.duration_s if arrivals else 1.0
    recorder = Recorder(fleet, arrivals, time_scale)
    observer = Observer(fleet)
    day = GameDay(fleet, out, recorder, observer)
    day.releases = {h: fleet.env.current_release(h) for h in fleet.worker_hosts}
    observer.start()
    wait_until_serving(day)
    recorder.start()
    day.say(f"replaying {trace} ({len(arrivals)} tasks, {tasks_per_s:.0f}/s) under {len(schedule)} faults")
    time.sleep(3.0)  # a stretch with no fault: the P95 outside the windows
    for fault in schedule:
        day.run_fault(fault, recover_s)
    recorder.stop.set()
    recorder.join(timeout=30)
    day.say(f"producer stopped: {len(recorder.acks)} acknowledged, {len(recorder.refused)} refused")
    history = collect(day, stable_s=stable_s)
    report = check(history, interval_s=float(CONTROLLER_SETTINGS["interval_s"]), service_start_s=float(
        CONTROLLER_SETTINGS["service_startup_s"]))  # fmt: skip
    (out / "history.json").write_text(history.to_json(), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    (out / "report.md").write_text(report.table_markdown() + "\n", encoding="utf-8")
    (out / "gameday.log").write_text("\n".join(day.log) + "\n", encoding="utf-8")
    observer.stop.set()
    keep_evidence(fleet, day.observer.client, out)
    return report


def keep_evidence(fleet: ProductionLab, client: redis.Redis, out: Path) -> None:
    """The controller's decisions and every host's service logs, before the lab is torn down."""
    with contextlib.suppress(redis.RedisError):
        raw = client.lrange(Keys(fleet.key_prefix).decisions, 0, -1)
        decisions = [json.loads(d) for d in reversed(raw)]
        (out / "decisions.json").write_text(json.dumps(decisions, indent=1), encoding="utf-8")
    for host in fleet.env.hosts:
        logs = fleet.env.root(host) / "var" / "log"
        if logs.is_dir():
            shutil.copytree(logs, out / "logs" / host, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))


def wait_until_serving(day: GameDay, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = day.observer.samples
        if samples and samples[-1].running_services >= 1 and samples[-1].desired_services:
            return
        time.sleep(0.5)
    raise RuntimeError("the deployed fleet runs no worker service")


def collect(day: GameDay, settle_s: float = 180.0, stable_s: float = 20.0) -> History:
    """Wait (bounded) for every acknowledged task's result and for the fleet to settle and stay settled for
    ``stable_s`` (the load is gone: the scale-down that follows is part of converging); then read it all."""
    fleet, keys, client = day.fleet, Keys(day.fleet.key_prefix), day.observer.client
    acked = set(day.recorder.acks)
    deadline = time.monotonic() + settle_s
    settled_since: float | None = None
    while time.monotonic() < deadline:
        try:
            have = {k.decode() if isinstance(k, bytes) else str(k) for k in client.hkeys(keys.results)}
            last = day.observer.sample()
        except redis.RedisError:
            time.sleep(1.0)
            continue
        settled = last.desired_services == last.running_services and not last.hosts_draining and not last.hosts_locked
        if not (acked <= have and settled):
            settled_since = None
        elif settled_since is None:
            settled_since = time.monotonic()
        elif time.monotonic() - settled_since >= stable_s:
            break
        time.sleep(1.0)
    time.sleep(2.0)  # one more heartbeat and decision
    last = day.observer.sample()
    assert fleet.env.sandbox is not None
    end = EndState(
        hosts_draining=last.hosts_draining,
        hosts_locked=last.hosts_locked,
        desired_services=last.desired_services,
        running_services=last.running_services,
        releases={
            h: {"current": fleet.env.current_release(h), "gated": gated_release(fleet, h)} for h in fleet.worker_hosts
        },
        expected_release=dict(day.releases),
    )
    return History(
        acks=dict(day.recorder.acks),
        refused=list(day.recorder.refused),
        results=read_results(client, keys),
        payments=read_payments(fleet.env.sandbox.url, PAGE),
        winning_writes=read_winning_writes(client, keys),
        faults=list(day.windows),
        samples=list(day.observer.samples),
        end=end,
        hostile=set(HOSTILE_IDS) if any(w.name == "hostile payloads" for w in day.windows) else set(),
    )


def gated_release(fleet: ProductionLab, host: str) -> str:
    path = fleet.env.worker_base(host) / "gated-release"
    return Path(path.read_text(encoding="utf-8").strip()).name if path.exists() else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.gameday", description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="full")
    parser.add_argument("--trace", default="builtin:steady", help="the trace replayed (builtin:NAME or a CSV)")
    parser.add_argument("--rate", type=float, default=12.0, help="tasks per second on average")
    parser.add_argument("--out", type=Path, default=Path("run") / f"gameday-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with production_lab() as fleet:
        report = play(fleet, SCHEDULES[args.schedule], args.out, args.trace, args.rate)
    print(report.table_markdown())
    print(f"game day ({args.schedule}) in {time.monotonic() - started:.0f} s; history and report in {args.out}")
    for violation in report.violations:
        print(f"VIOLATION: {violation}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
