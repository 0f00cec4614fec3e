"""A task in the queue twice is paid for once.

A producer's ``RPUSH`` retried after its reply was lost puts the same bytes in the queue twice: the primary froze
after replicating the push, Sentinel promoted a replica that had it, and the client's retry pushed it again there
(CI, test_sigstop_of_the_primary_past_down_after: a batch of ten paid twice). The same id submitted again does the
same. Two copies claimed within a submit's time of each other were both paid for; now a copy of a task someone
holds is dropped at its claim (``worker/lua/hold.lua``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import cast

import pytest
import redis

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.config import FleetConfig
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.tasks import NewTask
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.worker.producer import Producer
from captcha_fleet.worker.queue import TaskQueue
from captcha_fleet.worker.service import WorkerService
from tests.fleet_helpers import TIME_SCALE, fast_config, read_results, serving
from tests.test_queue import outcome


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=23)) as server:
        yield server


def queue_of(r: redis.Redis, keys: Keys, worker_id: str) -> TaskQueue:
    return TaskQueue(r, FleetConfig(key_prefix=keys.prefix), worker_id)


def push_twice(r: redis.Redis, keys: Keys, task_id: str) -> bytes:
    """Submit a task, then push its very bytes again, as a retried RPUSH does; the payload."""
    Producer(r, keys).submit("base64", {"body": "aGk="}, task_id)
    (raw,) = cast("list[bytes]", r.lrange(keys.tasks, -1, -1))
    r.rpush(keys.tasks, raw)
    return raw


def test_a_copy_of_a_task_another_worker_holds_is_dropped_at_its_claim(r: redis.Redis, keys: Keys) -> None:
    raw = push_twice(r, keys, "t1")
    a, b = queue_of(r, keys, "h:a"), queue_of(r, keys, "h:b")
    assert [c.raw for c in a.claim(1, 0.1)] == [raw]
    assert b.claim(1, 0.1) == []  # the copy: taken from the queue, not handed to b, not left in b's list
    assert (r.llen(keys.tasks), r.llen(keys.inflight("h:b")), r.llen(keys.inflight("h:a"))) == (0, 0, 1)
    assert r.hget(keys.holders, "t1") == b"h:a"
    assert a.finish_many([outcome("t1", raw)]) == [True]
    assert r.hexists(keys.holders, "t1") == 0  # no one holds it: the entry goes with the task


def test_both_copies_in_one_claim_are_one_task(r: redis.Redis, keys: Keys) -> None:
    raw = push_twice(r, keys, "t1")
    claimed = queue_of(r, keys, "h:a").claim(10, 0.1)
    assert [c.raw for c in claimed] == [raw]
    assert r.lrange(keys.inflight("h:a"), 0, -1) == [raw]


def test_a_copy_claimed_after_the_result_is_answered_from_it_unpaid(r: redis.Redis, keys: Keys) -> None:
    raw = push_twice(r, keys, "t1")
    a, b = queue_of(r, keys, "h:a"), queue_of(r, keys, "h:b")
    a.claim(1, 0.1)
    assert a.finish_many([outcome("t1", raw)]) == [True]
    (late,) = b.claim(1, 0.1)
    assert late.has_result  # the solver writes it off as a duplicate without a submit


def test_a_task_its_holder_no_longer_has_is_taken_over(r: redis.Redis, keys: Keys) -> None:
    """The holder died (the reaper requeued its list) or handed the task back: the next claimer holds it."""
    Producer(r, keys).submit("base64", {"body": "aGk="}, "t1")
    a, b = queue_of(r, keys, "h:a"), queue_of(r, keys, "h:b")
    a.claim(1, 0.1)
    assert a.requeue_worker("h:a", count_attempt=True) == 1
    (taken,) = b.claim(1, 0.1)
    assert (json.loads(taken.raw)["id"], taken.requeues) == ("t1", 1)
    assert r.hget(keys.holders, "t1") == b"h:b"


def test_batches_pushed_twice_under_two_workers_are_paid_once_each(
    r: redis.Redis, redis_url: str, keys: Keys, sandbox: SandboxServer
) -> None:
    """Forty tasks, each batch of ten pushed again at once (a retried submit), two workers: one payment each."""
    config = fast_config(redis_url, keys.prefix, sandbox.url)
    producer = Producer(r, keys)
    ids: list[str] = []
    for batch in range(4):
        tasks = [
            NewTask("userrecaptcha", {"googlekey": "k", "pageurl": f"https://copies.test/{batch}-{i}"}, f"t{batch}-{i}")
            for i in range(10)
        ]
        ids += producer.submit_many(tasks)
        r.rpush(keys.tasks, *r.lrange(keys.tasks, -10, -1))
    workers = [WorkerService(config, host="test", instance=name, slots=20) for name in ("a", "b")]
    with serving(workers[0]), serving(workers[1]):
        assert wait_until(lambda: int(r.hlen(keys.results)) == len(ids), 30)
        assert wait_until(lambda: r.llen(keys.tasks) == 0 and all(w.limiter.busy == 0 for w in workers), 10)
    results = read_results(r, keys)
    assert set(results) == set(ids) and all(x["status"] == "success" for x in results.values())
    assert set(sandbox.model.accepted_per_page().values()) == {1}  # paid once each
    assert int(r.get(keys.completed_total) or 0) == len(ids)  # one result write each
    assert sum(w.stats.snapshot()["duplicates"] for w in workers) == 0  # no copy was solved at all
    assert r.hlen(keys.holders) == 0
