"""Payloads over the worker's size limit are refused from their length, in Redis, before anyone parses them.

Each gets exactly one ``malformed`` error result under its id when a top-level id can be read cheaply (a
dead-letter record keeps its first bytes), or only a dead-letter record when none can; the worker never holds
more than one of them whole, so its memory stays bounded; the tasks around them are solved; the in-flight list
is left empty.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.config import FleetConfig, WorkerConfig
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.tasks import Malformed, parse_task, read_task_id
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.worker.queue import TaskQueue
from tests.fleet_helpers import TIME_SCALE, WorkerProcess, fast_config, read_results, write_config
from tests.oversized_payloads import ID_PLACES, big_post_task

LIMIT = 2_000
MB = 2**20
RSS_BOUND = 200 * MB


def small_limit_queue(r: redis.Redis, keys: Keys, worker_id: str = "h:1") -> TaskQueue:
    config = FleetConfig(key_prefix=keys.prefix, worker=WorkerConfig(max_payload_bytes=LIMIT))
    return TaskQueue(r, config, worker_id)


def deadletters(r: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.lrange(keys.deadletter, 0, -1)]


# --- the claim script ---------------------------------------------------------------------------------
def test_an_oversized_payload_is_claimed_as_a_stub_that_parses_to_an_error_under_its_id(
    r: redis.Redis, keys: Keys
) -> None:
    queue = small_limit_queue(r, keys)
    raws = [big_post_task(f"big-{shape}", shape, b"A" * 5000) for shape in ID_PLACES]
    r.rpush(keys.tasks, b'{"id": "small", "method": "base64", "params": {}}', *raws)
    claimed = queue.claim(10, 0.1)
    assert claimed[0].raw == b'{"id": "small", "method": "base64", "params": {}}'
    stubs = [c.raw for c in claimed[1:]]
    assert all(len(stub) < 200 for stub in stubs), stubs
    for stub, shape in zip(stubs, ("first", "middle", "last"), strict=True):
        parsed = parse_task(stub, LIMIT)
        assert isinstance(parsed, Malformed) and parsed.task_id == f"big-{shape}", parsed
        assert "exceeds the limit of 2000 bytes" in parsed.reason, parsed.reason
    # The in-flight list holds exactly what the worker holds (the stubs, never the payloads): finishing each
    # claimed entry retires it.
    assert r.lrange(keys.inflight("h:1"), 0, -1) == [c.raw for c in claimed]
    records = deadletters(r, keys)
    assert sorted(x["task_id"] for x in records) == ["big-first", "big-last", "big-middle"]
    assert all(x["raw_bytes"] > LIMIT and len(x["raw"]) <= 1024 and "refused unread" in x["reason"] for x in records)


def test_an_oversized_payload_without_a_readable_id_is_only_dead_lettered(r: redis.Redis, keys: Keys) -> None:
    queue = small_limit_queue(r, keys)
    r.rpush(keys.tasks, big_post_task("", "none", b"A" * 5000), b"\xff" * 5000, b"[" * 5000)
    assert queue.claim(10, 0.1) == []
    assert r.llen(keys.inflight("h:1")) == 0 and r.llen(keys.tasks) == 0
    records = deadletters(r, keys)
    assert len(records) == 3 and all(x["task_id"] is None for x in records)
    assert all('no usable top-level "id"' in x["reason"] for x in records)
    assert all(x["worker"] == "h:1" and x["raw_bytes"] >= 5000 for x in records)
    assert "\ufffd" not in records[1]["raw"] and set(records[1]["raw"]) == {"?"}  # not UTF-8: kept as '?'


def test_a_blocking_claim_swaps_the_oversized_payload_it_brought_for_its_stub(r: redis.Redis, keys: Keys) -> None:
    queue = small_limit_queue(r, keys)
    got: list[list[bytes]] = []
    claimer = threading.Thread(target=lambda: got.append([c.raw for c in queue.claim(1, 3.0)]))
    claimer.start()
    assert wait_until(lambda: int(r.info("clients")["blocked_clients"]) >= 1, 5)
    r.rpush(keys.tasks, big_post_task("blocked-big", "last", b"B" * 5000))
    claimer.join(timeout=10)
    ((stub,),) = got
    parsed = parse_task(stub, LIMIT)
    assert isinstance(parsed, Malformed) and parsed.task_id == "blocked-big"
    assert r.lrange(keys.inflight("h:1"), 0, -1) == [stub]
    assert [x["task_id"] for x in deadletters(r, keys)] == ["blocked-big"]


def test_a_stub_requeued_after_its_worker_died_is_answered_without_a_second_dead_letter(
    r: redis.Redis, keys: Keys
) -> None:
    queue = small_limit_queue(r, keys)
    r.rpush(keys.tasks, big_post_task("orphan", "first", b"C" * 5000))
    (first,) = queue.claim(4, 0.1)
    assert queue.requeue_worker("h:1", count_attempt=True) == 1
    (again,) = small_limit_queue(r, keys, "h:2").claim(4, 0.1)
    assert again.raw == first.raw and again.requeues == 1
    parsed = parse_task(again.raw, LIMIT)
    assert isinstance(parsed, Malformed) and parsed.task_id == "orphan"
    assert len(deadletters(r, keys)) == 1


ids = st.text(min_size=1, max_size=20) | st.integers() | st.none()
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["id", "a", "b"]), children),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fields=st.dictionaries(st.sampled_from(["id", "method", "params", "x", "y"]), values),
    task_id=ids,
    pad_at=st.integers(0, 5),
    ensure_ascii=st.booleans(),
)
def test_the_id_read_in_redis_is_the_one_a_full_parse_reads(
    r: redis.Redis, keys: Keys, fields: dict[str, Any], task_id: object, pad_at: int, ensure_ascii: bool
) -> None:
    items = list(fields.items())
    items.insert(min(pad_at, len(items)), ("pad", "P" * (LIMIT + 10)))  # over the limit, wherever it sits
    if task_id is not None:
        items.insert(len(items) // 2, ("id", task_id))
    raw = json.dumps(dict(items), ensure_ascii=ensure_ascii).encode()
    r.delete(keys.tasks, keys.inflight("h:1"), keys.deadletter)
    r.rpush(keys.tasks, raw)
    claimed = small_limit_queue(r, keys).claim(1, 0.1)
    expected = read_task_id(raw)
    if expected is None:
        assert claimed == [] and deadletters(r, keys)[0]["task_id"] is None
    else:
        parsed = parse_task(claimed[0].raw, LIMIT)
        assert isinstance(parsed, Malformed) and parsed.task_id == expected


# --- a live worker ------------------------------------------------------------------------------------
@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    # Answers kept past the test (CaptchaAI keeps them minutes; 300 s of compressed time is 3 s here, less than a
    # poll can wait while 140 MB go through a loaded Redis: CI saw ERROR_WRONG_CAPTCHA_ID after 3.2 s).
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=21, retention_s=100_000.0)) as server:
        yield server


class RssPeak:
    """The highest RSS a process reaches while sampled every 10 ms (psutil), in a background thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, int(self.process.memory_info().rss))
            except psutil.Error:
                return
            time.sleep(0.01)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=2)
        return self.peak


def test_a_burst_of_20_mb_tasks_keeps_the_worker_small_and_answers_each_once(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    # A deadline far past the burst: on a loaded machine moving 140 MB through Redis takes seconds, and this test is
    # about memory and answers, not deadlines (a normal task timing out here said nothing about either).
    config = fast_config(redis_url, keys.prefix, sandbox.url, task_deadline_s=120.0)
    config = dataclasses.replace(config, worker=dataclasses.replace(config.worker, max_payload_bytes=1_000_000))
    worker = WorkerProcess(write_config(tmp_path / "fleet.yml", config), redis_url, sandbox.url, "big")
    body = b"A" * (20 * MB)
    shapes = ID_PLACES * 2
    big = {f"big-{i}": big_post_task(f"big-{i}", shape, body) for i, shape in enumerate(shapes)}
    normal = {
        f"ok-{i}": json.dumps({"id": f"ok-{i}", "method": "base64", "params": {"body": "aGk="}}).encode()
        for i in range(12)
    }
    try:
        assert wait_until(lambda: bool(r.exists(keys.heartbeat(worker.worker_id))), 20), worker.process.poll()
        rss = RssPeak(worker.process.pid)
        # While the burst is claimed, Redis itself stalls: one claim script screens every oversized payload it moves
        # (0.35 s for one call here, idle), and under CI load a push, then an HLEN, outlasted redis-py's 5 s read
        # timeout (2 CI runs of 5). This test is about the worker's memory and answers, so it pushes and watches
        # through a client that waits the stall out; the stall is an open problem (bench/README, top section).
        patient = redis.Redis.from_url(redis_url, socket_timeout=120)
        pipe = patient.pipeline(transaction=False)
        pipe.rpush(keys.tasks, *list(normal.values())[:4], big_post_task("", "none", body))
        for (_, raw), ok_raw in zip(big.items(), list(normal.values())[4:], strict=False):
            pipe.rpush(keys.tasks, raw, ok_raw)
        pipe.rpush(keys.tasks, *list(normal.values())[10:])
        pipe.execute()
        del pipe
        expected = set(big) | set(normal)
        assert wait_until(lambda: int(patient.hlen(keys.results)) >= len(expected), 60), patient.hlen(keys.results)
        assert wait_until(lambda: patient.llen(keys.inflight(worker.worker_id)) == 0, 10)
        patient.close()
        peak = rss.stop()
        assert worker.process.poll() is None
    finally:
        code = worker.stop()
    assert code == 0, worker.output()
    assert peak < RSS_BOUND, f"worker RSS peaked at {peak / MB:.0f} MB"
    results = read_results(r, keys)
    assert set(results) == expected
    assert int(r.get(keys.completed_total) or 0) == len(results) == r.xlen(keys.events)  # one result each
    for task_id in big:
        assert results[task_id]["status"] == "error" and results[task_id]["error_class"] == "malformed"
        assert "exceeds the limit of 1000000 bytes" in str(results[task_id]["error"])
    unsolved = {
        task_id: (results[task_id]["status"], results[task_id].get("error"), results[task_id].get("api_seconds"))
        for task_id in normal
        if results[task_id]["status"] != "success"
    }
    assert not unsolved, unsolved
    records = deadletters(r, keys)
    assert sorted(str(x["task_id"]) for x in records) == sorted([*big, "None"])
    assert r.llen(keys.tasks) == 0
