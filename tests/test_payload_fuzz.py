"""Hostile payloads mixed with valid tasks on live worker processes: nothing stalls, nothing is lost.

Every payload ends with exactly one result under its id, or, when no usable id can be read from it, with a
dead-letter record; every valid task succeeds; every worker thread is alive at the end.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.tasks import read_task_id
from captcha_fleet.local_servers.polling import wait_until
from tests.fleet_helpers import TIME_SCALE, WorkerProcess, fast_config, read_results, write_config

MAX_PAYLOAD = 20_000
SURROGATE = "\ud800"


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    # A third of the answers hold a "|" themselves, as text CAPTCHA answers can.
    config = SandboxConfig(time_scale=TIME_SCALE, seed=5, answer_separator_rate=0.3)
    with SandboxServer(config) as server:
        yield server


def dumps(payload: object) -> bytes:
    # ensure_ascii: a lone surrogate travels as the JSON escape \ud800, as a producer's json.dumps sends it.
    return json.dumps(payload).encode()


def valid(i: int) -> tuple[str, bytes]:
    task_id = f"ok-{i}"
    params = {"googlekey": "6Le-fuzz", "pageurl": f"https://example.test/{i}?a=1&b=2|3,4;5", "note": "x|y\n=&"}
    return task_id, dumps({"id": task_id, "method": "userrecaptcha", "params": params})


def hostile(n: int) -> list[bytes]:
    """Hand-made hostile payloads, ids ``bad-<k>`` (unique), then seeded random mutations of valid ones."""
    ids = (f"bad-{k}" for k in range(10_000))
    base = {"method": "userrecaptcha", "params": {"googlekey": "g", "pageurl": "https://p.test"}}

    def task(**fields: object) -> dict[str, object]:
        return {"id": next(ids), **base, **fields}

    payloads = [
        # lone surrogates in every field
        dumps({**task(), "id": f"sur{SURROGATE}"}),
        dumps(task(method=f"userrecaptcha{SURROGATE}")),
        dumps(task(params={"googlekey": f"g{SURROGATE}", "pageurl": "https://p.test"})),
        dumps(task(params={f"k{SURROGATE}": "v", "googlekey": "g", "pageurl": "https://p.test"})),
        dumps(task(extra={"deep": [f"x{SURROGATE}"]})),
        b'{"id": "' + next(ids).encode() + b'", "method": "base64", "params": {"body": "\\udfff"}}',
        b'{"id": "raw-surrogate-\xed\xa0\x80", "method": "base64", "params": {}}',  # not UTF-8 at all
        # deep nesting
        b"[" * 100_000,
        b'{"id": "deep-1", "method": "m", "params": {}, "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        dumps(task(extra=json.loads("[" * 40 + "]" * 40))),
        # huge and odd numbers
        b'{"id": "' + next(ids).encode() + b'", "method": "userrecaptcha", "params": {"n": ' + b"9" * 5000 + b"}}",
        b'{"id": "' + next(ids).encode() + b'", "method": "userrecaptcha", "enqueued_at": 1' + b"0" * 4400 + b"}",
        b'{"id": "' + next(ids).encode() + b'", "method": "userrecaptcha", "params": {"x": NaN}}',
        b'{"id": "' + next(ids).encode() + b'", "method": "userrecaptcha", "params": {"x": 1e999}}',
        b'{"id": ' + b"7" * 5000 + b', "method": "userrecaptcha"}',
        # wrong types
        b"null",
        b'"just a string"',
        b"[1, 2, 3]",
        dumps(task(params=[1, 2])),
        dumps(task(params={"googlekey": {"nested": 1}})),
        dumps(task(method=5)),
        dumps(task(method="")),
        dumps({**task(), "id": ["list"]}),
        dumps({**task(), "id": "x" * 300}),
        b"",
        b"\xff\xfe\x00garbage",
        # oversized bodies
        dumps(task(params={"body": "A" * (MAX_PAYLOAD * 2)})),
        dumps({"method": "base64", "params": {"body": "A" * (MAX_PAYLOAD * 2)}}),
        # separators where a method name goes
        dumps(task(method="user|recaptcha")),
        dumps(task(method="a,b")),
        dumps(task(method="x\ny")),
        dumps(task(method="a b")),
        # look-alike key fields: the provider (PHP) would read them as the account key
        dumps(task(params={"Key": "steal", "googlekey": "g", "pageurl": "https://p.test"})),
        dumps(task(params={" key": "steal", "googlekey": "g", "pageurl": "https://p.test"})),
        dumps(task(params={"key[]": "steal", "googlekey": "g", "pageurl": "https://p.test"})),
        dumps(task(params={"KEY ": "steal", "googlekey": "g", "pageurl": "https://p.test"})),
        dumps(task(params={"json": "0", "googlekey": "g", "pageurl": "https://p.test"})),
    ]
    rng = random.Random(8)
    alphabet = [b"[", b"{", b"}", b'"', b"\\", b"\\ud800", b"\xff", b"9" * 40, b"|", b",", b"\x00", b"NaN"]
    while len(payloads) < n:
        i = len(payloads)
        rest = dumps({"method": "userrecaptcha", "params": {"googlekey": "g", "pageurl": f"https://m.test/{i}"}})
        body = bytearray(rest[1:])
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(body))
            body[at : at + rng.randint(0, 2)] = rng.choice(alphabet)
        payloads.append(b'{"id": "mut-' + str(i).encode() + b'", ' + bytes(body))
    return payloads


def test_hostile_payloads_mixed_with_valid_tasks_on_live_workers(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    config = fast_config(redis_url, keys.prefix, sandbox.url)
    config = dataclasses.replace(config, worker=dataclasses.replace(config.worker, max_payload_bytes=MAX_PAYLOAD))
    config_path = write_config(tmp_path / "fleet.yml", config)
    valid_tasks = dict(valid(i) for i in range(80))
    bad = hostile(140)
    mixed = list(valid_tasks.values()) + bad
    random.Random(3).shuffle(mixed)
    readable = {raw: read_task_id(raw) for raw in mixed}
    expected_results = {task_id for task_id in readable.values() if task_id is not None}
    assert len(expected_results) == sum(1 for t in readable.values() if t is not None)  # ids are unique
    no_id = sum(1 for t in readable.values() if t is None)
    assert no_id >= 10 and len(expected_results) >= len(valid_tasks) + 30  # both kinds are well represented

    workers = [WorkerProcess(config_path, redis_url, sandbox.url, name) for name in ("f1", "f2")]
    try:
        r.rpush(keys.tasks, *mixed)

        def settled() -> bool:
            return int(r.hlen(keys.results)) >= len(expected_results) and int(r.llen(keys.tasks)) == 0

        assert wait_until(settled, 45), (r.hlen(keys.results), r.llen(keys.tasks), len(expected_results))
        assert wait_until(lambda: all(r.llen(keys.inflight(w.worker_id)) == 0 for w in workers), 10)
        # Every thread alive: the processes run, and their heartbeats (refreshed meanwhile) say so.
        for worker in workers:
            assert worker.process.poll() is None, worker.output()
            beat = json.loads(r.get(keys.heartbeat(worker.worker_id)) or b"{}")
            assert beat["state"] == "running" and beat["dead_threads"] == [], beat
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0]

    results = read_results(r, keys)
    assert set(results) == expected_results
    # Exactly one result each: every HSETNX that wrote counts once in the counter and the event stream.
    assert int(r.get(keys.completed_total) or 0) == len(results) == r.xlen(keys.events)
    for task_id in valid_tasks:
        assert results[task_id]["status"] == "success", results[task_id]
    piped = [x["token"] for i, x in results.items() if i in valid_tasks and "|" in str(x["token"])]
    assert piped, "some answers held a '|' and each still reached its own task"
    for task_id in valid_tasks:
        token = str(results[task_id]["token"])
        assert "|" not in token or token == f"sandbox|text|{results[task_id]['captcha_id']}"
    for raw, read_id in readable.items():
        if read_id is not None and raw not in valid_tasks.values() and not read_id.startswith("mut-"):
            assert results[read_id]["status"] == "error", (read_id, results[read_id])
            assert results[read_id]["error_class"] == "malformed", (read_id, results[read_id])
    records = [json.loads(x) for x in r.lrange(keys.deadletter, 0, -1)]
    assert sum(1 for x in records if x["task_id"] is None) == no_id
    assert all(x["task_id"] in results for x in records if x["task_id"] is not None)
    # An unparseable payload whose id opens it: kept in the dead-letter list, and its producer answered.
    assert [x["task_id"] for x in records].count("deep-1") == 1 and results["deep-1"]["error_class"] == "malformed"
    # Nothing paid for twice, and the look-alike keys never reached the provider.
    assert set(sandbox.model.accepted_per_page().values()) <= {1}
    assert sandbox.stats()["rejected_key"] == 0
