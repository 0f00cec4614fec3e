"""Shared helpers for the worker benchmarks: time-compressed configs, a worker subprocess, measurements.

Every benchmark starts its own redis-server (:class:`RedisServer`) and its own sandbox on 127.0.0.1, and
scales every worker timing (first-poll delay, poll interval, deadline, back-off) by the same factor as the
sandbox's solve times, so a run at ``time_scale=0.02`` behaves like real time, 50 times faster.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import redis

from captcha_fleet.apps.sandbox import SandboxServer
from captcha_fleet.contract.config import ApiConfig, FleetConfig, ResultsConfig, WorkerConfig, write_fleet_config
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.methods import first_poll_delays
from captcha_fleet.contract.records import Heartbeat, Result
from captcha_fleet.contract.start_stop import DaemonLoop
from captcha_fleet.contract.tasks import NewTask
from captcha_fleet.contract.windows import percentile as quantile
from captcha_fleet.local_servers.polling import wait_until

REPO = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"
# The token method the benchmarks submit; the sandbox solves it with its "default" time (15 s median).
METHOD = "userrecaptcha"
PARAMS: dict[str, str] = {"googlekey": "6Le-bench-site-key", "pageurl": "https://example.test/login"}
MEDIAN_S = 15.0
SIGMA = 0.3


def time_scale_note(scale: float) -> str:
    """How a run's time scale reads in a table title: the sandbox's median solve in real and in wall seconds."""
    return f"time scale {scale:g} (solve median {MEDIAN_S:g} s real = {MEDIAN_S * scale:g} s wall)"


def lognormal_mean(median_s: float = MEDIAN_S, sigma: float = SIGMA) -> float:
    """The mean of a lognormal with this median and sigma: ``median * exp(sigma^2 / 2)``."""
    return median_s * math.exp(sigma * sigma / 2)


def scaled_api(
    base: str,
    scale: float,
    *,
    poll_interval_s: float = 5.0,
    first_poll_s: float = 15.0,
    batch_size: int = 100,
    pool_connections: int = 32,
) -> ApiConfig:
    """API settings in *real* seconds, multiplied by ``scale`` (connect/read timeouts stay wall-clock)."""
    return ApiConfig(
        base=base,
        key=API_KEY,
        connect_timeout_s=5.0,
        read_timeout_s=30.0,
        first_poll_delay_s=first_poll_delays(scale, default_s=first_poll_s),
        poll_interval_s=poll_interval_s * scale,
        batch_size=batch_size,
        task_deadline_s=180.0 * scale,
        backoff_base_s=1.0 * scale,
        backoff_max_s=60.0 * scale,
        fatal_recheck_s=60.0 * scale,
        pool_connections=pool_connections,
    )


def bench_config(
    redis_url: str, prefix: str, api: ApiConfig, raw: dict[str, Any] | None = None, **worker: Any
) -> FleetConfig:
    """A fleet config for one benchmark run (worker settings: defaults plus ``worker`` changes; ``raw``: more
    sections such as ``redis``)."""
    return FleetConfig(
        redis_url=redis_url,
        key_prefix=prefix,
        api=api,
        worker=dataclasses.replace(WorkerConfig(), **worker),
        results=ResultsConfig(),
        raw=raw or {},
    )


def write_config(path: Path, config: FleetConfig) -> Path:
    """Write ``config`` as a fleet.yml (the API key and base go through the environment)."""
    return write_fleet_config(path, config)


# --- the sandbox's sampled solve times ----------------------------------------------------------------
class SolveTimeRecorder:
    """Records every solve time the sandbox samples (wall seconds) and when it accepted the captcha.

    The sandbox keeps only ``ready_at``; wrapping its model's ``_new_captcha`` on this one instance reads
    ``ready_at - now`` exactly as it was drawn, without changing the sandbox.
    """

    def __init__(self, server: SandboxServer) -> None:
        self.samples: list[float] = []
        self.accepted_at: list[float] = []
        self.by_id: dict[str, float] = {}
        model = server.model
        original: Callable[..., Any] = model._new_captcha

        def recording(method: str, params: Mapping[str, str], now: float, price: float) -> Any:
            captcha = original(method, params, now, price)
            solve_s = float(captcha.ready_at) - now
            self.samples.append(solve_s)
            self.accepted_at.append(now)
            self.by_id[str(captcha.id)] = solve_s
            return captcha

        setattr(model, "_new_captcha", recording)  # noqa: B010  # an instance override, on purpose

    def mean(self) -> float:
        """Mean sampled solve time (wall seconds); NaN before any sample."""
        return sum(self.samples) / len(self.samples) if self.samples else math.nan


def list_schedule_makespan(samples: Sequence[float], slots: int) -> float:
    """Makespan of these solve times, in order, on ``slots`` slots with zero overhead (greedy list
    scheduling): what a client that learns of each solve the instant it ends would achieve."""
    free = [0.0] * slots
    for duration in samples:
        i = min(range(slots), key=free.__getitem__)
        free[i] += duration
    return max(free)


# --- processes --------------------------------------------------------------------------------------
class WorkerProcess:
    """A real ``python -m captcha_fleet.apps.cli worker`` process, with its log in a temporary file."""

    def __init__(
        self,
        config: FleetConfig,
        workdir: Path,
        api_base: str,
        instance: str,
        slots: int,
        host: str = "bench",
    ) -> None:
        self.workdir = workdir
        config_path = write_config(workdir / f"fleet-{instance}.yml", config)
        env = dict(os.environ, REDIS_URL=config.redis_url, CAPTCHAAI_BASE=api_base, CAPTCHAAI_KEY=API_KEY)
        args = [sys.executable, "-m", "captcha_fleet.apps.cli", "worker", "--config", str(config_path)]
        args += ["--host-name", host, "--instance", instance, "--slots", str(slots), "--log-level", "WARNING"]
        self.worker_id = f"{host}:{instance}"
        self.keys = config.keys
        self.log_path = workdir / f"worker-{instance}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def wait_registered(self, client: redis.Redis, timeout_s: float = 20.0) -> None:
        """Block until the worker published its first heartbeat (it claims only after that)."""
        if not wait_until(lambda: bool(client.exists(self.keys.heartbeat(self.worker_id))), timeout_s):
            raise RuntimeError(f"worker did not start; log:\n{self.log_text()}")

    def heartbeat(self, client: redis.Redis) -> dict[str, Any]:
        """The worker's last published heartbeat ({} if none)."""
        raw = client.get(self.keys.heartbeat(self.worker_id))
        return Heartbeat.from_json(raw).to_dict() if isinstance(raw, bytes | str) else {}

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (drain) and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code

    def stop_and_report(self) -> None:
        """:meth:`stop`, printing the worker's log to stderr when it exited non-zero (a failed drain shows)."""
        code = self.stop()
        if code != 0:
            print(f"worker exited {code}:\n{self.log_text()}", file=sys.stderr)

    def log_text(self) -> str:
        """What the worker logged so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")


class RssSampler(DaemonLoop):
    """Samples a process's resident set size every ``interval_s`` in a background thread."""

    join_timeout_s = 2.0

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.samples: list[tuple[float, int]] = []
        super().__init__("rss-sampler")

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                rss = int(self.process.memory_info().rss)
            except psutil.Error:
                return
            self.samples.append((time.monotonic(), rss))
            self.peak_bytes = max(self.peak_bytes, rss)
            self.stopping.wait(self.interval_s)

    def high_water_mark(self) -> int | None:
        """The kernel's own peak RSS (``VmHWM``) of the process, if it is still running."""
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None


class CpuSampler:
    """Whole-machine CPU use over a run (to show whether the box kept up)."""

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)
        self.started = time.monotonic()

    def busy_percent(self) -> float:
        """Average busy share of all cores since construction, in percent."""
        return float(psutil.cpu_percent(interval=None))


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary directory for configs and logs, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


# --- waiting and reading -----------------------------------------------------------------------------
def wait_results(client: redis.Redis, keys: Keys, count: int, timeout_s: float, interval_s: float) -> bool:
    """Until the results hash holds ``count`` results (or ``timeout_s`` passes): the end of every worker run."""
    return wait_until(lambda: int(client.hlen(keys.results)) >= count, timeout_s=timeout_s, interval_s=interval_s)


def read_results(client: redis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    """Every stored result, decoded."""
    raw: dict[bytes, bytes] = client.hgetall(keys.results)  # type: ignore[assignment]
    return {k.decode(): Result.from_json(v).to_dict() for k, v in raw.items()}


def task_payloads(prefix: str, count: int, start: int = 0) -> list[str]:
    """``count`` seed-format task payloads (no ``enqueued_at``: the seed's producers do not add it)."""
    return [NewTask(METHOD, PARAMS, f"{prefix}-{i}").to_json() for i in range(start, start + count)]


# --- statistics and output ----------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """:func:`captcha_fleet.contract.windows.percentile`, with NaN for no values (an empty cell of a bench table)."""
    return quantile(values, q) if values else math.nan


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Where and when a benchmark ran."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "commit": commit,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def emit(as_json: bool, payload: Mapping[str, Any], table: str) -> None:
    """Print the JSON payload under ``--json``, else the markdown table and the machine line."""
    if as_json:
        json.dump(payload, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
        return
    info = payload.get("machine", {})
    print(table)
    print()
    print(
        f"_{info.get('date')}, {info.get('cpus')} CPUs ({info.get('cpu_model')}), Python {info.get('python')}, "
        f"load {info.get('loadavg_1m')} at start, commit {info.get('commit')}_"
    )


def emit_table(
    as_json: bool, payload: Mapping[str, Any], title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]
) -> None:
    """:func:`emit` of a titled markdown table: the output of every worker benchmark."""
    emit(as_json, payload, f"{title}\n\n{markdown_table(headers, rows)}")
