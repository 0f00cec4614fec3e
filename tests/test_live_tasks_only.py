"""The worker pays only for live tasks: slot tokens, the deadline before every submit, expiry on its own timer,
no orphan release of a task still being written, and a quick return to the pre-outage limit (issues 21, 22)."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.config import FleetConfig
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.redis_connect import connect
from captcha_fleet.contract.tasks import NewTask, read_task_id
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.local_servers.redis_server import RedisServer
from captcha_fleet.worker.concurrency import Slot, SlotLimiter
from captcha_fleet.worker.producer import Producer
from captcha_fleet.worker.queue import Claimed
from captcha_fleet.worker.service import WorkerService
from tests.fleet_helpers import TIME_SCALE, fast_config, read_results, serving


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=21)) as server:
        yield server


def page_tasks(n: int) -> list[NewTask]:
    """Tasks each on its own page, so the sandbox counts each one's payments apart."""
    return [
        NewTask("userrecaptcha", {"googlekey": "k", "pageurl": f"https://live.test/{i}"}, f"t{i}") for i in range(n)
    ]


def with_worker(config: FleetConfig, **worker: Any) -> FleetConfig:
    return dataclasses.replace(config, worker=dataclasses.replace(config.worker, **worker))


# --- slot tokens ------------------------------------------------------------------------------------------
def test_a_slot_released_twice_frees_one_slot() -> None:
    limiter = SlotLimiter(3)
    slots = limiter.take(3)
    assert limiter.busy == 3 and limiter.wait_free(0.01) == 0
    assert slots[0].release()
    assert not slots[0].release()  # the second release of the same token is ignored (and counted as a bug)
    assert limiter.busy == 2 and limiter.double_releases == 1
    assert not slots[0].held and slots[1].held


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["take", "release"]), st.integers(0, 5)), max_size=60))
def test_busy_slots_always_equal_the_tokens_held(ops: list[tuple[str, int]]) -> None:
    limiter = SlotLimiter(10)
    tokens: list[Slot] = []
    for op, n in ops:
        if op == "take":
            tokens.extend(limiter.take(n))
        elif tokens:
            tokens[n % len(tokens)].release()  # maybe one released before: must change nothing
        assert limiter.busy == sum(t.held for t in tokens) >= 0


# --- recovery after an outage -----------------------------------------------------------------------------
def test_after_an_outage_the_limit_slow_starts_back_to_where_it_began() -> None:
    limiter = SlotLimiter(40, decrease_factor=0.95, min_decrease_gap_s=0.0)
    for _ in range(200):  # minutes of 5xx and HTML pages: cut after cut, nothing accepted
        limiter.on_capacity_error()
    assert limiter.slots == 1
    accepted = 0
    while limiter.limit < 0.95 * 40 and accepted < 1000:
        limiter.on_success()
        accepted += 1
    # Back at the first cut's level after one accepted submit per slot (additive increase needed ~700).
    assert accepted <= 40
    limiter.on_success()
    assert limiter.limit < 0.95 * 40 + 1  # then additive again: no overshoot past where the outage began


def test_slow_start_never_passes_a_lower_target() -> None:
    limiter = SlotLimiter(40, decrease_factor=0.5, min_decrease_gap_s=0.0)
    for _ in range(10):
        limiter.on_capacity_error()
    limiter.set_target(8)
    for _ in range(50):
        limiter.on_success()
    assert limiter.slots == 8


# --- with real processes: the sandbox over HTTP, a real redis-server ----------------------------------------
def test_in_php_that_never_answers_is_not_paid_after_the_result(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # in.php takes every request and never answers; two submit threads for four slots, so claimed tasks wait
    # for a thread much longer than their deadline.
    sandbox.update(faults={"slow": 1.0}, fault_endpoints=["in.php"], slow_delay_s=120.0)
    config = fast_config(redis_url, keys.prefix, sandbox.url, task_deadline_s=0.5, submit_read_timeout_s=1.5)
    config = with_worker(config, submit_threads=2)
    ids = Producer(r, keys).submit_many(page_tasks(12))
    service = WorkerService(config, host="test", instance="1", slots=4)
    sent: list[tuple[str, float]] = []
    real_submit = service.api.submit

    def recorded_submit(method: str, params: Any) -> str:
        sent.append((str(params["pageurl"]).rsplit("/", 1)[-1], time.time()))
        return real_submit(method, params)

    monkeypatch.setattr(service.api, "submit", recorded_submit)
    held_most = 0
    with serving(service):

        def all_answered() -> bool:
            nonlocal held_most
            held_most = max(held_most, int(r.llen(keys.inflight(service.worker_id))), service.limiter.busy)
            return int(r.hlen(keys.results)) == len(ids)

        assert wait_until(all_answered, 30, interval_s=0.01)
        time.sleep(1.7)  # past the submit read timeout: a submit queued behind the hung ones would be out now
        assert service.limiter.busy == 0 and service.engine.in_flight == 0
        assert r.llen(keys.inflight(service.worker_id)) == 0
    assert held_most <= 4  # never more tasks held than slots (a double release let 70 sit on 40)
    assert service.limiter.double_releases == 0
    results = read_results(r, keys)
    assert {results[i]["error"].split(":")[0] for i in ids} <= {"ERROR_TIMEOUT", "ERROR_SUBMIT_UNCONFIRMED"}
    assert sandbox.stats()["in_php"] == len(sent) and Counter(page for page, _ in sent).most_common(1)[0][1] == 1
    # Each submit went out before its task's result was written (a small allowance for the two threads' race).
    late = [(page, at - results[f"t{page}"]["finished_at"]) for page, at in sent]
    assert [x for x in late if x[1] > 0.1] == []
    assert len(sent) < len(ids)  # tasks whose deadline passed in the submit queue were never sent


def test_res_php_that_hangs_does_not_delay_deadlines(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer
) -> None:
    # Every poll hangs for the read timeout; one tick of five batches takes ten seconds, the deadline is one.
    sandbox.update(faults={"slow": 1.0}, fault_endpoints=["res.php"], slow_delay_s=120.0)
    deadline_s = 1.0
    config = fast_config(redis_url, keys.prefix, sandbox.url, task_deadline_s=deadline_s, read_timeout_s=2.0)
    config = dataclasses.replace(config, api=dataclasses.replace(config.api, batch_size=2))
    ids = Producer(r, keys).submit_many(page_tasks(10))
    service = WorkerService(config, host="test", instance="1", slots=10)
    with serving(service):
        assert wait_until(lambda: int(r.hlen(keys.results)) == len(ids), 20)
        assert wait_until(lambda: service.limiter.busy == 0, 5)
    results = read_results(r, keys)
    for task_id in ids:
        result = results[task_id]
        assert result["error"].startswith("ERROR_TIMEOUT"), result
        assert result["finished_at"] - result["claimed_at"] <= deadline_s + 1.0, result
    assert sandbox.stats()["accepted"] == len(ids)  # each paid once


def test_a_paused_redis_loses_nothing_and_pays_nothing_twice(
    keys: Keys, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Solves take ~0.3 s; Redis is stopped (SIGSTOP) for 2 s under load, longer than the worker's socket timeout,
    # so results, CAPTCHA ids, claims and heartbeats fail and are retried; the heartbeat TTL outlives the pause.
    sandbox.update(solve_time={"default": {"median_s": 30.0, "sigma": 0.3}})
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        config = with_worker(fast_config(server.url, keys.prefix, sandbox.url), heartbeat_ttl_s=6.0)
        ids = Producer(client, keys).submit_many(page_tasks(80))
        service = WorkerService(
            config, client=connect(config, socket_timeout=0.5, retries=0), host="test", instance="1", slots=20
        )
        accepted: Counter[str] = Counter()
        real_accept = service.engine.accept

        def counted_accept(claimed: Claimed, slot: Slot) -> None:
            accepted[read_task_id(claimed.raw) or ""] += 1
            real_accept(claimed, slot)

        monkeypatch.setattr(service.engine, "accept", counted_accept)
        assert server.process is not None
        with serving(service):
            assert wait_until(lambda: int(client.hlen(keys.results)) >= 15, 30)
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                time.sleep(2.0)
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert wait_until(lambda: int(client.hlen(keys.results)) == len(ids), 60), client.hlen(keys.results)
            assert wait_until(lambda: service.limiter.busy == 0, 10)
        results = read_results(client, keys)
        assert set(results) == set(ids) and all(x["status"] == "success" for x in results.values())
        assert int(client.get(keys.completed_total) or 0) == len(ids)  # one result write each
        assert int(client.llen(keys.tasks)) == 0
        assert set(sandbox.model.accepted_per_page().values()) == {1}  # paid once each
        assert set(accepted.values()) == {1} and len(accepted) == len(ids)  # none handed back and solved again
        assert service.limiter.double_releases == 0
        client.close()
