"""What the lab test modules share besides the ``lab`` fixture (``conftest.py``): whether the worker and the
controller can run yet, waiting, heartbeats, a steady load and a watch on the draining flags, and the controller
settings of the end-to-end scaling tests.

One copy here instead of one per module, so a fix to a wait or to the load reaches every lab test.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import redis

from captcha_fleet.contract.keys import Keys
from lab.env import REPO_ROOT, LabEnv

# The controller of the scale-out-and-back tests (the actuator's and the deployed one): one to three services of
# two slots, one per host, a short scale-down window so "back to one host" comes within the test's minutes.
CONTROLLER_SETTINGS: dict[str, Any] = {
    "interval_s": 1.0,
    "scale_down_window_s": 8.0,
    "plan_threads": 100,
    "min_slots": 2,
    "max_slots": 6,
    "slots_per_service": 2,
    "min_services": 1,
    "max_services": 3,
    "service_headroom": 0.0,
    "service_startup_s": 4.0,
    "solve_time_prior_s": 0.2,
    "p95_target_s": 2.0,
    "leader_ttl_s": 5.0,
    "drain_timeout_s": 15.0,
    "instances_per_host": 1,
    "stale_after_s": 10.0,
}


def worker_available() -> str | None:
    """Why the worker service cannot run yet (None when ``captcha-fleet worker`` exists)."""
    return _subcommand_unavailable("worker/service.py", "worker", "the worker service")


def controller_available() -> str | None:
    """Why the controller cannot run yet (None when ``captcha-fleet controller`` exists)."""
    return _subcommand_unavailable("controller/cli.py", "controller", "the controller")


def _subcommand_unavailable(source: str, subcommand: str, what: str) -> str | None:
    """Why ``captcha-fleet <subcommand>`` cannot run: its ``source`` file is missing or ``--help`` fails."""
    if not (REPO_ROOT / source).exists():
        return f"{source} does not exist yet ({what} is being written)"
    proc = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "captcha-fleet"), subcommand, "--help"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0:
        return f"`captcha-fleet {subcommand} --help` fails: {proc.stderr.strip()[-300:]}"
    return None


def wait_for(
    predicate: Any, timeout_s: float, what: str, seen: Callable[[], object] | None = None, interval_s: float = 0.2
) -> Any:
    """The predicate's first truthy value; an AssertionError naming ``what`` (and ``seen()``) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s:.0f}s waiting for {what}" + (f": {seen()}" if seen else "")
            )
        time.sleep(interval_s)


def heartbeat_instances(env: LabEnv, host: str, version: str | None = None) -> set[str]:
    """The instances of ``host`` whose heartbeat says running (of ``version``, if given)."""
    return {
        b.instance for b in env.heartbeats(host) if b.state == "running" and (version is None or b.version == version)
    }


class Background:
    """A daemon thread running :meth:`_run` from ``with`` entry to exit: the loads and watchers beside a test."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Load(Background):
    """A producer at a steady rate (a batch every ``tick_s``); at the end every task must have its result."""

    def __init__(self, client: redis.Redis, key_prefix: str, rate_per_s: float, tick_s: float) -> None:
        from captcha_fleet.contract.tasks import NewTask
        from captcha_fleet.worker.producer import Producer

        super().__init__()
        self.client = client
        self.keys = Keys(key_prefix)
        self.producer = Producer(self.client, self.keys)
        self.new_task = NewTask
        self.batch = max(1, round(rate_per_s * tick_s))
        self.tick_s = tick_s
        self.ids: list[str] = []

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            tasks = [self.new_task("base64", {"body": "aGVsbG8="}) for _ in range(self.batch)]
            self.ids += self.producer.submit_many(tasks)

    def finish(self, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Stop submitting, wait until every submitted task has a result; return the results."""
        self._stop.set()
        self._thread.join()

        def all_done() -> bool:
            return all(r is not None for r in self.client.hmget(self.keys.results, self.ids))

        wait_for(all_done, timeout_s, f"results for {len(self.ids)} tasks")
        raw = self.client.hmget(self.keys.results, self.ids)
        return [json.loads(r) if r is not None else {"status": "missing"} for r in raw]


class DrainWatch(Background):
    """Watches the draining flags during a roll: how many hosts at once, and the order they drained in."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        super().__init__()
        self.client = client
        self.prefix = f"{key_prefix}:draining:"
        self.max_at_once = 0
        self.order: list[str] = []

    @property
    def hosts(self) -> set[str]:
        return set(self.order)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            raw = self.client.keys(self.prefix + "*")
            names = [(k.decode() if isinstance(k, bytes) else str(k))[len(self.prefix) :] for k in raw]
            self.max_at_once = max(self.max_at_once, len(names))
            self.order += [name for name in names if name not in self.order]
