"""Leader fencing: a controller paused inside a step cannot write or act after its successor took over."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis

from captcha_fleet.contract.keys import Keys
from captcha_fleet.controller.leader import LeaderLock, LeadershipLostError
from captcha_fleet.controller.loop import Controller
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.sources.base import Snapshot
from captcha_fleet.controller.sources.redis_signals import RedisSignalSource
from captcha_fleet.controller.strategies.registry import make_policy
from tests.test_controller_parts import beat

TTL_S = 0.3


class PausingSource(RedisSignalSource):
    """The real source, except that one read stalls until released (a GC pause, a stopped VM)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paused = threading.Event()
        self.release = threading.Event()

    def read(self) -> Snapshot:
        snapshot = super().read()
        self.paused.set()
        assert self.release.wait(10)
        return snapshot


def controller(r: redis.Redis, keys: Keys, token: str, source: RedisSignalSource | None = None) -> Controller:
    settings = ControllerSettings(min_slots=2)
    lock = LeaderLock(r, keys.controller_leader, TTL_S, token=token)
    source = source or RedisSignalSource(r, keys, settings)
    return Controller(r, keys, settings, make_policy("queue-model", settings), source, None, lock)


def test_a_leader_paused_mid_step_writes_nothing_after_a_takeover(r: redis.Redis, keys: Keys) -> None:
    beat(r, keys, "a:1", slots=4, busy=4, target=4)
    r.rpush(keys.tasks, *[json.dumps({"id": str(i)}) for i in range(60)])
    old_source = PausingSource(r, keys, ControllerSettings(min_slots=2))
    old = controller(r, keys, "old", old_source)
    assert old.hold_lock()
    errors: list[BaseException] = []

    def step() -> None:
        try:
            old.step()
        except BaseException as exc:
            errors.append(exc)

    paused_step = threading.Thread(target=step)
    paused_step.start()
    assert old_source.paused.wait(10)
    time.sleep(TTL_S + 0.1)  # its lock expires while it is paused
    new = controller(r, keys, "new")
    assert new.hold_lock()
    new.step()
    r.set(keys.target("a:1"), 7)  # whatever the new leader's fast path says now
    state_before = r.hgetall(keys.controller_state)
    decisions_before = r.lrange(keys.decisions, 0, -1)
    old_source.release.set()  # the old leader wakes up and carries on with its step
    paused_step.join(timeout=10)
    assert len(errors) == 1 and isinstance(errors[0], LeadershipLostError)
    assert r.get(keys.target("a:1")) == b"7"  # no thread target from the old leader
    assert r.hgetall(keys.controller_state) == state_before  # no state saved over the successor's
    assert r.lrange(keys.decisions, 0, -1) == decisions_before  # no decision logged under its name
    assert all(json.loads(d)["leader"] == "new" for d in decisions_before)


def test_fenced_writes_and_actions_need_the_lock(r: redis.Redis, keys: Keys) -> None:
    old = LeaderLock(r, keys.controller_leader, TTL_S, token="old")
    assert old.hold()
    with old.fenced() as pipe:
        pipe.set("written", 1)
    assert r.get("written") == b"1"
    old.ensure()
    time.sleep(TTL_S + 0.1)
    assert LeaderLock(r, keys.controller_leader, TTL_S, token="new").hold()
    with pytest.raises(LeadershipLostError):
        old.ensure()  # checked right before the actuator starts or stops services
    with pytest.raises(LeadershipLostError), old.fenced() as pipe:
        pipe.set("written", 2)
    assert r.get("written") == b"1"
