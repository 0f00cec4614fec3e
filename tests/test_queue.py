"""The Redis queue contract on a real redis-server: atomic claims, one result, reaping, retention."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import cast

import redis

from captcha_fleet.contract.config import FleetConfig, ResultsConfig
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Event, Heartbeat, Result, StoredCaptcha
from captcha_fleet.worker.producer import Producer
from captcha_fleet.worker.queue import Outcome, TaskQueue
from tests.fleet_helpers import read_events


def make_queue(r: redis.Redis, keys: Keys, worker_id: str = "h:1", **results: float) -> TaskQueue:
    config = FleetConfig(key_prefix=keys.prefix, results=ResultsConfig(**results))  # type: ignore[arg-type]
    return TaskQueue(r, config, worker_id)


def outcome(task_id: str, raw: bytes, token: str = "tok") -> Outcome:
    event = Event(id=task_id, status="success", latency_s=0.1)
    return Outcome(task_id, raw, Result(status="success", token=token), event)


def test_claim_moves_atomically_in_fifo_order(r: redis.Redis, keys: Keys) -> None:
    producer = Producer(r, keys)
    ids = [producer.submit("base64", {"body": "aGk="}, f"t{i}") for i in range(5)]
    queue = make_queue(r, keys)
    claimed = queue.claim(3, block_s=0.1)
    assert [json.loads(c.raw)["id"] for c in claimed] == ids[:3]
    assert r.llen(keys.tasks) == 2
    assert r.llen(keys.inflight("h:1")) == 3
    assert [json.loads(c.raw)["id"] for c in queue.claim(10, block_s=0.1)] == ids[3:]
    assert queue.claim(1, block_s=0.1) == []


def test_finish_writes_exactly_one_result_and_notifies(r: redis.Redis, keys: Keys) -> None:
    producer = Producer(r, keys)
    producer.submit("base64", {"body": "aGk="}, "t1")
    first, second = make_queue(r, keys, "h:1"), make_queue(r, keys, "h:2")
    (claimed,) = first.claim(1, 0.1)
    assert first.finish_many([outcome("t1", claimed.raw, "first")]) == [True]
    # A second worker finishing the same task (after a false death) cannot overwrite the result.
    assert second.finish_many([outcome("t1", claimed.raw, "second")]) == [False]
    assert producer.result("t1") == {"status": "success", "token": "first"}
    assert producer.wait("t1", timeout_s=1) == {"status": "success", "token": "first"}
    assert r.llen(keys.inflight("h:1")) == 0
    assert r.get(keys.completed_total) == b"1"
    (event,) = read_events(r, keys)
    assert event["id"] == "t1"


def test_wait_blocks_until_the_result_arrives(r: redis.Redis, keys: Keys) -> None:
    producer = Producer(r, keys)
    producer.submit("base64", {"body": "aGk="}, "slow")
    assert producer.wait("slow", timeout_s=0.2) is None
    queue = make_queue(r, keys)
    (claimed,) = queue.claim(1, 0.1)
    queue.finish_many([outcome("slow", claimed.raw)])
    assert producer.wait("slow", timeout_s=1) is not None


def test_reaper_requeues_a_dead_workers_tasks_at_the_head_in_order(r: redis.Redis, keys: Keys) -> None:
    producer = Producer(r, keys)
    for i in range(4):
        producer.submit("base64", {"body": "aGk="}, f"t{i}")
    dead = make_queue(r, keys, "dead:1")
    dead.heartbeat(Heartbeat(id="dead:1"), ttl_s=0.05)
    dead.claim(2, 0.1)
    time.sleep(0.1)  # the heartbeat expires: the worker is dead
    alive = make_queue(r, keys, "alive:1")
    alive.heartbeat(Heartbeat(id="alive:1"), ttl_s=10)
    assert alive.reap(lock_ttl_s=5) == {"dead:1": 2}
    assert [json.loads(x)["id"] for x in r.lrange(keys.tasks, 0, -1)] == ["t0", "t1", "t2", "t3"]
    assert r.hget(keys.attempts, "t0") == b"1"
    assert r.zscore(keys.workers, "dead:1") is None
    assert r.zscore(keys.workers, "alive:1") is not None


def test_reaper_runs_once_under_its_lock(r: redis.Redis, keys: Keys) -> None:
    a, b = make_queue(r, keys, "a:1"), make_queue(r, keys, "b:1")
    r.set(keys.reaper_lock, "someone-else", px=5000)
    assert a.reap(lock_ttl_s=5) == {}
    assert b.reap(lock_ttl_s=5) == {}
    assert r.get(keys.reaper_lock) == b"someone-else"


def test_requeue_counts_attempts_and_claim_reports_them(r: redis.Redis, keys: Keys) -> None:
    Producer(r, keys).submit("base64", {"body": "aGk="}, "killer")
    for attempt in range(1, 4):
        queue = make_queue(r, keys, f"w:{attempt}")
        (claimed,) = queue.claim(1, 0.1)
        assert claimed.requeues == attempt - 1
        queue.requeue_worker(f"w:{attempt}", count_attempt=True)
    assert make_queue(r, keys, "w:9").claim(1, 0.1)[0].requeues == 3


def test_graceful_release_keeps_attempts_and_captcha_id(r: redis.Redis, keys: Keys) -> None:
    Producer(r, keys).submit("base64", {"body": "aGk="}, "t")
    queue = make_queue(r, keys)
    queue.claim(1, 0.1)
    queue.remember_captcha("t", "cap-1", time.time())
    assert queue.release_all() == 1
    (claimed,) = make_queue(r, keys, "h:2").claim(1, 0.1)
    assert claimed.requeues == 0
    assert claimed.captcha is not None and claimed.captcha.captcha_id == "cap-1" and claimed.captcha.polls == 0


def test_poll_counts_are_stored_only_while_the_task_holds_that_captcha(r: redis.Redis, keys: Keys) -> None:
    producer = Producer(r, keys)
    for task_id in ("held", "paid-afresh", "finished"):
        producer.submit("base64", {"body": "aGk="}, task_id)
    queue = make_queue(r, keys)
    queue.claim(3, 0.1)
    for task_id in ("held", "paid-afresh", "finished"):
        queue.remember_captcha(task_id, f"cap-{task_id}", 1000.0)
    queue.remember_captcha("paid-afresh", "cap-new", 2000.0)  # another worker took it over and paid again
    r.hdel(keys.captcha_ids, "finished")  # what finish does
    written = queue.count_polls(
        (task_id, StoredCaptcha(f"cap-{task_id}", 1000.0, "h:1", polls=3))
        for task_id in ("held", "paid-afresh", "finished")
    )
    assert written == 1
    raw = cast("dict[bytes, bytes]", r.hgetall(keys.captcha_ids))
    stored = {k.decode(): StoredCaptcha.from_json(v) for k, v in raw.items()}
    assert stored == {
        "held": StoredCaptcha("cap-held", 1000.0, "h:1", polls=3),
        "paid-afresh": StoredCaptcha("cap-new", 2000.0, "h:1", polls=0),
    }
    assert queue.count_polls([]) == 0


def test_an_unreadable_stored_captcha_is_paid_afresh_not_fatal(r: redis.Redis, keys: Keys) -> None:
    Producer(r, keys).submit("base64", {"body": "aGk="}, "t")
    r.hset(keys.captcha_ids, "t", b'{"captcha_id": 7}')
    (claimed,) = make_queue(r, keys).claim(1, 0.1)
    assert claimed.captcha is None


def test_deadletter_moves_the_payload_with_a_reason(r: redis.Redis, keys: Keys) -> None:
    r.rpush(keys.tasks, b"garbage")
    queue = make_queue(r, keys)
    (claimed,) = queue.claim(1, 0.1)
    queue.deadletter(claimed.raw, "payload is not JSON")
    assert r.llen(keys.inflight("h:1")) == 0
    record = json.loads(r.lindex(keys.deadletter, 0) or b"{}")
    assert record["reason"] == "payload is not JSON"
    assert record["raw"] == "garbage"


def test_results_expire_after_retention_but_the_hash_stays_readable(r: redis.Redis, keys: Keys) -> None:
    producer = Producer(r, keys)
    producer.submit_many([])
    for name in ("old", "new"):
        producer.submit("base64", {"body": "aGk="}, name)
    short = make_queue(r, keys, "h:1", retention_s=0.05)
    (old,) = short.claim(1, 0.1)
    short.finish_many([outcome("old", old.raw)])
    long = make_queue(r, keys, "h:2", retention_s=3600)
    (new,) = long.claim(1, 0.1)
    long.finish_many([outcome("new", new.raw)])
    time.sleep(0.1)
    assert long.expire_results() == 1
    assert r.hkeys(keys.results) == [b"new"]
    assert r.zcard(keys.results_expiry) == 1


def test_target_and_host_draining_are_read_from_redis(r: redis.Redis, keys: Keys) -> None:
    queue = make_queue(r, keys, "hostA:1")
    assert queue.read_target("hostA") == (None, False)
    r.set(keys.default_target, 7)
    assert queue.read_target("hostA") == (7, False)
    r.set(keys.target("hostA:1"), 3)
    r.set(keys.host_draining("hostA"), 1)
    assert queue.read_target("hostA") == (3, True)


def test_config_prefix_changes_every_key(r: redis.Redis) -> None:
    config = dataclasses.replace(FleetConfig(), key_prefix="other")
    assert config.keys.tasks == "other:tasks"
    assert config.keys.results == "other:results"


def test_a_claim_whose_reply_was_lost_is_found_and_returned(r: redis.Redis, keys: Keys) -> None:
    producer = Producer(r, keys)
    producer.submit("base64", {"body": "aGk="}, "held")
    producer.submit("base64", {"body": "aGk="}, "lost")
    queue = make_queue(r, keys)
    (held,) = queue.claim(1, 0.1)
    # The server moved a second task, but the reply never reached the worker (Redis died in between).
    r.lmove(keys.tasks, keys.inflight("h:1"), "LEFT", "RIGHT")
    (orphan,) = queue.orphans([held.raw])
    assert json.loads(orphan)["id"] == "lost"
    assert queue.release(orphan) is True
    assert queue.release(orphan) is False  # only once: a task finished meanwhile is never queued again
    assert [json.loads(x)["id"] for x in r.lrange(keys.tasks, 0, -1)] == ["lost"]
    assert r.lrange(keys.inflight("h:1"), 0, -1) == [held.raw]
