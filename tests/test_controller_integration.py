"""The controller process against a real redis-server, the sandbox API and real worker processes.

Time runs 20 times faster than real: the sandbox solves in ~0.75 s, and every controller and worker timing
is scaled the same way (evaluation every 0.5 s, scale-down window 3 s, leader TTL 2 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import yaml

from captcha_fleet.apps import sandbox as sandbox_mod
from captcha_fleet.contract.keys import Keys
from tests.fleet_helpers import wait_until as wait_for

pytestmark = pytest.mark.slow
TIME_SCALE = 0.05
MIN_SLOTS = 2
PARAMS = {"googlekey": "6Le-test", "pageurl": "https://example.test/"}


def fleet_yml(path: Path, prefix: str) -> Path:
    data = {
        "key_prefix": prefix,
        "api": {
            "first_poll_delay_s": {"default": 15 * TIME_SCALE},
            "poll_interval_s": 5 * TIME_SCALE,
            "task_deadline_s": 30.0,
            "backoff_base_s": 0.05,
            "backoff_max_s": 0.5,
            "fatal_recheck_s": 1.0,
        },
        "worker": {
            "initial_slots": 4,
            "heartbeat_interval_s": 0.2,
            "heartbeat_ttl_s": 1.0,
            "reaper_interval_s": 0.3,
            "drain_timeout_s": 5.0,
            "claim_timeout_s": 0.2,
        },
        "controller": {
            "interval_s": 0.5,
            "scale_down_window_s": 3.0,
            "leader_ttl_s": 2.0,
            "slots_per_service": 8,
            "min_slots": MIN_SLOTS,
            "plan_threads": 16,
            "service_startup_s": 1.5,
            "p95_target_s": 4.0,
            "p95_up_s": 4.0,
            "p95_down_s": 1.5,
            "solve_time_prior_s": 0.75,
            "stale_after_s": 3.0,
            "stuck_after_s": 5.0,
            "rate_window_s": 3.0,
            "latency_window_s": 6.0,
            "balance_cache_s": 0.5,
            "drain_timeout_s": 5.0,
        },
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


class Fleet:
    """Controllers as real processes, and everything needed to watch them and clean up."""

    def __init__(self, tmp_path: Path, redis_url: str, api_base: str, keys: Keys) -> None:
        self.tmp_path = tmp_path
        self.keys = keys
        self.config = fleet_yml(tmp_path / "fleet.yml", keys.prefix)
        self.env = dict(os.environ, REDIS_URL=redis_url, CAPTCHAAI_BASE=api_base, CAPTCHAAI_KEY="test-key")
        self.r = redis.Redis.from_url(redis_url)
        self.controllers: list[subprocess.Popen[bytes]] = []

    def start_controller(self, name: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "captcha_fleet.apps.cli", "controller", "--config", str(self.config)]
        argv += ["--host-name", "itest", "--worker-log-dir", str(self.tmp_path / "workers")]
        argv += ["--stop-workers-on-exit", "--log-level", "INFO"]
        log = open(self.tmp_path / f"controller-{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.controllers.append(proc)
        return proc

    def submit(self, n: int) -> list[str]:
        from captcha_fleet.worker.producer import NewTask, Producer

        return Producer(self.r, self.keys).submit_many([NewTask("userrecaptcha", PARAMS) for _ in range(n)])

    def decisions(self) -> list[dict[str, Any]]:
        """Oldest first."""
        raw = cast("list[bytes]", self.r.lrange(self.keys.decisions, 0, -1))
        return [json.loads(d) for d in reversed(raw)]

    def leader(self) -> str | None:
        value = self.r.get(self.keys.controller_leader)
        return value.decode() if isinstance(value, bytes) else None

    def worker_ids(self) -> list[str]:
        return [w.decode() for w in cast("list[bytes]", self.r.zrange(self.keys.workers, 0, -1))]

    def live_workers(self) -> dict[str, dict[str, Any]]:
        out = {}
        for wid in self.worker_ids():
            beat = cast("bytes | None", self.r.get(self.keys.heartbeat(wid)))
            if beat is not None:
                out[wid] = json.loads(beat)
        return out

    def counts(self) -> tuple[int, int, int]:
        """(pending, in flight, results)."""
        inflight = sum(int(self.r.llen(self.keys.inflight(w))) for w in self.worker_ids())
        return int(self.r.llen(self.keys.tasks)), inflight, int(self.r.hlen(self.keys.results))

    def cleanup(self) -> None:
        pids = {int(b["pid"]) for b in self.live_workers().values() if isinstance(b.get("pid"), int)}
        for proc in self.controllers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.controllers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in pids:  # workers orphaned by a killed controller
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.r.close()


@pytest.fixture()
def sandbox() -> Iterator[Any]:
    server = sandbox_mod.SandboxServer(sandbox_mod.SandboxConfig(time_scale=TIME_SCALE, seed=3, threads=40))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def fleet(tmp_path: Path, redis_url: str, sandbox: Any, keys: Keys) -> Iterator[Fleet]:
    f = Fleet(tmp_path, redis_url, sandbox.url, keys)
    try:
        yield f
    finally:
        f.cleanup()


def test_burst_scales_up_within_two_evaluations_and_back_down(fleet: Fleet) -> None:
    fleet.start_controller("a")
    assert wait_for(lambda: len(fleet.live_workers()) == 1 and len(fleet.decisions()) >= 2, 20)
    t0 = time.time()
    ids = fleet.submit(60)

    def after() -> list[dict[str, Any]]:
        return [d for d in fleet.decisions() if d["at"] >= t0]

    assert wait_for(lambda: len(after()) >= 2, 5)
    first_two = after()[:2]
    assert any(d["rule"] == "scale-up" and d["desired_slots"] > MIN_SLOTS for d in first_two), first_two
    assert max(d["desired_services"] for d in first_two) > 1
    assert "pending" in first_two[0]["inputs"] and first_two[0]["reason"]

    assert wait_for(lambda: fleet.counts()[2] == len(ids), 40), fleet.counts()
    assert wait_for(lambda: len(fleet.live_workers()) >= 1, 5)
    assert max(d["desired_slots"] for d in after()) > MIN_SLOTS
    # Back down after the window: the minimum, one service, and no task lost.
    assert wait_for(lambda: fleet.decisions()[-1]["desired_slots"] == MIN_SLOTS, 20)
    assert wait_for(lambda: len(fleet.live_workers()) == 1, 20), fleet.live_workers()
    pending, inflight, results = fleet.counts()
    assert (pending, inflight, results) == (0, 0, len(ids))
    raw = cast("dict[bytes, bytes]", fleet.r.hgetall(fleet.keys.results))
    stored = {k.decode(): json.loads(v) for k, v in raw.items()}
    assert set(stored) == set(ids)
    assert all(v["status"] == "success" for v in stored.values())
    assert any(d["stopped"] for d in after())  # services were stopped only once drained


def test_killing_the_leader_hands_over_to_the_standby(fleet: Fleet) -> None:
    a = fleet.start_controller("a")
    assert wait_for(lambda: (fleet.leader() or "").split(":")[1:2] == [str(a.pid)], 20)
    b = fleet.start_controller("b")
    assert wait_for(lambda: len(fleet.live_workers()) == 1, 20)
    time.sleep(1.0)  # b is up and standing by
    assert (fleet.leader() or "").split(":")[1] == str(a.pid)

    ids = fleet.submit(40)
    assert wait_for(lambda: len(fleet.live_workers()) > 1, 10)
    a.send_signal(signal.SIGKILL)  # no clean step-down: the lock must expire
    a.wait()
    killed_at = time.time()
    assert wait_for(lambda: (fleet.leader() or "").split(":")[1:2] == [str(b.pid)], 10)
    took_over = time.time() - killed_at
    assert took_over < 2.0 + 1.5  # TTL + a renewal tick
    assert wait_for(lambda: any(d["leader"].split(":")[1] == str(b.pid) for d in fleet.decisions()), 5)

    assert wait_for(lambda: fleet.counts()[2] == len(ids), 40), fleet.counts()
    # The new leader adopted the dead leader's services and scales them back in.
    assert wait_for(lambda: len(fleet.live_workers()) == 1, 25), fleet.live_workers()
    assert fleet.counts() == (0, 0, len(ids))
    state = fleet.r.hgetall(fleet.keys.controller_state)
    assert b"policy" in state and b"managed" in state


def test_zero_balance_stops_scale_up_and_tasks_stay_queued(fleet: Fleet, sandbox: Any) -> None:
    sandbox.update(balance=0.0)
    fleet.start_controller("a")
    assert wait_for(lambda: len(fleet.live_workers()) == 1, 20)
    t0 = time.time()
    ids = fleet.submit(40)
    time.sleep(4.0)  # eight evaluations
    after = [d for d in fleet.decisions() if d["at"] >= t0]
    assert len(after) >= 4
    assert all(d["desired_slots"] <= MIN_SLOTS for d in after), [d["desired_slots"] for d in after]
    blocked = [d for d in after if d["rule"] == "guard:balance-floor"]
    assert blocked and "below the $1.00 floor" in blocked[-1]["reason"]
    assert blocked[-1]["inputs"]["balance"] == 0.0
    pending, inflight, results = fleet.counts()
    assert results == 0
    assert pending + inflight == len(ids)
    assert pending >= len(ids) - MIN_SLOTS * 2  # at most the minimum's slots hold a task
    assert len(fleet.live_workers()) == 1
