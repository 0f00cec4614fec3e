"""The real control step on a real Redis, driven by hand: a controller holding the lock with a stand-in actuator,
a clock the test moves, heartbeats written as a worker writes them, and the decision record of each step. For the
tests of what the controller does about services it cannot see (lost, drained), where the actuator's belief is
the thing under test and a real one would make no difference."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from captcha_fleet.contract.keys import Keys
from captcha_fleet.controller.leader import LeaderLock
from captcha_fleet.controller.loop import Controller
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.sources.redis_signals import RedisSignalSource
from captcha_fleet.controller.strategies.registry import make_policy


class OffsetClock:
    """Wall time plus an offset the test moves forward (heartbeats carry the real time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def leading_controller(
    r: redis.Redis, keys: Keys, settings: ControllerSettings, actuator: Any, clock: OffsetClock
) -> Controller:
    """The queue-model controller reading Redis on ``clock``, acting through ``actuator``, holding the lock."""
    source = RedisSignalSource(r, keys, settings, clock=clock)
    lock = LeaderLock(r, keys.controller_leader, settings.leader_ttl_s, token="t")
    ctl = Controller(r, keys, settings, make_policy("queue-model", settings), source, actuator, lock)
    assert ctl.hold_lock()
    return ctl


def step(ctl: Controller) -> dict[str, Any]:
    """One control step; the decision record it wrote."""
    ctl.step()
    record: dict[str, Any] = json.loads(ctl.client.lindex(ctl.keys.decisions, 0))  # type: ignore[arg-type]
    return record


def beat(r: redis.Redis, keys: Keys, wid: str, *, target: int = 2, process: str = "p", at: float | None = None) -> None:
    """A running worker's heartbeat and registration for ``wid`` at ``at`` (default now), holding ``target``
    slots, from process ``process`` (a restart writes under the same name from a new one)."""
    host, _, instance = wid.partition(":")
    now = time.time() if at is None else at
    data = {"id": wid, "host": host, "instance": instance, "pid": 1, "process": process, "state": "running",
            "target": target, "slots": target, "busy": 0, "completed": 0, "ts": now}  # fmt: skip
    r.set(keys.heartbeat(wid), json.dumps(data), ex=600)
    r.zadd(keys.workers, {wid: now})
