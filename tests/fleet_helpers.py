"""Test helpers: time-compressed fleet configs, workers in-process or as real processes, waiting."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import redis

from captcha_fleet.contract.config import ApiConfig, FleetConfig, ResultsConfig, WorkerConfig, write_fleet_config
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.methods import first_poll_delays
from captcha_fleet.worker.service import WorkerService

# The sandbox runs at 1/100 of real time in tests; worker timings are scaled the same way.
TIME_SCALE = 0.01


def fast_api(base: str, key: str = "test-key", **changes: Any) -> ApiConfig:
    """API settings at 1/100 of real time (first poll 0.15 s, then every 0.05 s)."""
    api = ApiConfig(
        base=base,
        key=key,
        connect_timeout_s=2.0,
        read_timeout_s=2.0,
        first_poll_delay_s=first_poll_delays(TIME_SCALE),
        poll_interval_s=5 * TIME_SCALE,
        task_deadline_s=10.0,
        backoff_base_s=0.01,
        backoff_max_s=0.2,
        fatal_recheck_s=0.3,
    )
    return dataclasses.replace(api, **changes)


def fast_worker(**changes: Any) -> WorkerConfig:
    """Worker settings with a short heartbeat, reaper and drain, for tests."""
    worker = WorkerConfig(
        initial_slots=20,
        heartbeat_interval_s=0.2,
        heartbeat_ttl_s=1.0,
        reaper_interval_s=0.3,
        drain_timeout_s=5.0,
        claim_timeout_s=0.2,
    )
    return dataclasses.replace(worker, **changes)


def fast_config(redis_url: str, prefix: str, api_base: str, **api_changes: Any) -> FleetConfig:
    """A whole fleet config for tests."""
    return FleetConfig(
        redis_url=redis_url,
        key_prefix=prefix,
        api=fast_api(api_base, **api_changes),
        worker=fast_worker(),
        results=ResultsConfig(),
    )


def write_config(path: Path, config: FleetConfig) -> Path:
    """Write ``config`` as fleet.yml (without secrets: the key goes through the environment)."""
    return write_fleet_config(path, config)


@contextmanager
def running_worker(config: FleetConfig, instance: str = "1", host: str = "test") -> Iterator[WorkerService]:
    """A worker service running in this process; drained on exit."""
    with serving(WorkerService(config, host=host, instance=instance)) as service:
        yield service


@contextmanager
def serving(service: WorkerService) -> Iterator[WorkerService]:
    """Run a worker service built by the caller (so it can watch its parts) in this process; drain it on exit."""
    thread = threading.Thread(target=service.run, name=f"worker-{service.worker_id}", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "worker did not drain"


class WorkerProcess:
    """A real ``captcha-fleet worker`` process (so it can be SIGKILLed)."""

    def __init__(
        self,
        config_path: Path,
        redis_url: str,
        api_base: str,
        instance: str,
        host: str = "proc",
        key: str = "k",
    ) -> None:
        env = dict(os.environ, REDIS_URL=redis_url, CAPTCHAAI_BASE=api_base, CAPTCHAAI_KEY=key)
        args = [sys.executable, "-m", "captcha_fleet.apps.cli", "worker", "--config", str(config_path)]
        args += ["--host-name", host, "--instance", instance, "--log-level", "WARNING"]
        self.worker_id = f"{host}:{instance}"
        self.process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM and wait for the drain; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=timeout_s)

    def output(self) -> str:
        """Everything the process printed (after it exited)."""
        assert self.process.stdout is not None
        return self.process.stdout.read().decode(errors="replace")


def read_results(r: redis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    """Every stored result, decoded."""
    raw = cast("dict[bytes, bytes]", r.hgetall(keys.results))
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def read_events(r: redis.Redis, keys: Keys) -> list[dict[str, str]]:
    """Every entry of the finished-task event stream, decoded."""
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", r.xrange(keys.events))
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
