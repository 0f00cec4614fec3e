"""Result retention (issue 22): the controller's leader expires results each step; the contract function bounds it."""

from __future__ import annotations

import time

import redis

from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.results_retention import expire_results
from captcha_fleet.controller.leader import LeaderLock
from captcha_fleet.controller.loop import Controller
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.sources.redis_signals import RedisSignalSource
from captcha_fleet.controller.strategies.registry import make_policy

RESULT = '{"status":"success","token":"t"}'


def store_results(r: redis.Redis, keys: Keys, expiries: dict[str, float]) -> None:
    """Results as finish.lua leaves them: the result in the hash, its retention end in the expiry zset."""
    r.hset(keys.results, mapping=dict.fromkeys(expiries, RESULT))
    r.zadd(keys.results_expiry, expiries)


def test_the_leaders_step_expires_results_past_retention_and_keeps_the_rest(r: redis.Redis, keys: Keys) -> None:
    now = time.time()
    store_results(r, keys, {"old": now - 60, "older": 1.0, "fresh": now + 3600})
    settings = ControllerSettings(min_slots=1)
    lock = LeaderLock(r, keys.controller_leader, settings.leader_ttl_s, token="t")
    source = RedisSignalSource(r, keys, settings)
    ctl = Controller(r, keys, settings, make_policy("queue-model", settings), source, None, lock)
    assert ctl.hold_lock()
    ctl.step()
    assert r.hkeys(keys.results) == [b"fresh"]
    assert r.zrange(keys.results_expiry, 0, -1) == [b"fresh"]


def test_a_redis_error_in_retention_never_stops_the_step(r: redis.Redis, keys: Keys) -> None:
    r.set(keys.results_expiry, "not a zset")  # ZRANGEBYSCORE answers WRONGTYPE
    settings = ControllerSettings(min_slots=1)
    lock = LeaderLock(r, keys.controller_leader, settings.leader_ttl_s, token="t")
    source = RedisSignalSource(r, keys, settings)
    ctl = Controller(r, keys, settings, make_policy("queue-model", settings), source, None, lock)
    assert ctl.hold_lock()
    decision = ctl.step()
    assert r.lindex(keys.decisions, 0) is not None, "the decision was recorded"
    assert ctl.last_decision == decision


def test_retention_is_bounded_per_call(r: redis.Redis, keys: Keys) -> None:
    store_results(r, keys, {f"t{i}": 1.0 for i in range(7)})
    assert expire_results(r, keys, time.time(), batch=2, max_batches=2) == 4
    assert r.hlen(keys.results) == 3 and r.zcard(keys.results_expiry) == 3
    assert expire_results(r, keys, time.time(), batch=2, max_batches=5) == 3
    assert r.hlen(keys.results) == 0 and r.zcard(keys.results_expiry) == 0
