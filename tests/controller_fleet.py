"""The controller's integration rig: controller processes against a real redis-server and the sandbox, with time
running 20 times faster than real (evaluation every 0.5 s, scale-down window 3 s, leader TTL 2 s).

Its ``sandbox`` and ``fleet`` fixtures reach every test through ``pytest_plugins`` in ``tests/conftest.py``, so the
controller's tests share one rig without importing fixtures by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import yaml

from captcha_fleet.apps import sandbox as sandbox_mod
from captcha_fleet.contract.keys import Keys

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
        from captcha_fleet.contract.tasks import NewTask
        from captcha_fleet.worker.producer import Producer

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
