"""Restarts, drains and dying threads: a worker restarted under its own name, a drain longer than the
heartbeat's TTL and a thread that dies all leave every task with exactly one result, paid for once.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.config import FleetConfig
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.tasks import NewTask
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.worker.producer import Producer
from captcha_fleet.worker.service import EXIT_THREAD_DIED, WorkerService
from tests.fleet_helpers import TIME_SCALE, WorkerProcess, fast_config, read_results, write_config


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    # The provider keeps answers for a long while, as CaptchaAI does.
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=13, retention_s=100_000.0)) as server:
        yield server


def with_worker(config: FleetConfig, **changes: Any) -> FleetConfig:
    return dataclasses.replace(config, worker=dataclasses.replace(config.worker, **changes))


def page_tasks(prefix: str, n: int) -> list[NewTask]:
    """Tasks with a page each, so the sandbox can count what each one was paid for."""
    return [
        NewTask("userrecaptcha", {"googlekey": "6Le-x", "pageurl": f"https://{prefix}.test/{i}"}, f"{prefix}-{i}")
        for i in range(n)
    ]


def where_are(r: redis.Redis, keys: Keys, ids: list[str], names: list[str]) -> str:
    """Where the tasks without a result are: a failure message that shows a stranded task."""
    missing = set(ids) - set(read_results(r, keys))
    lists = {"queue": keys.tasks, "deadletter": keys.deadletter} | {n: keys.inflight(f"proc:{n}") for n in names}
    seen = {
        name: [raw for raw in r.lrange(key, 0, -1) if any(i.encode() in raw for i in missing)]
        for name, key in lists.items()
    }
    return f"{len(missing)} without a result: {sorted(missing)[:5]}; found in {seen}"


def test_kill_storm_with_replacements_reusing_the_name_strands_nothing(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    # As systemd (RestartSec=2) and supervisord do: the replacement starts well inside the heartbeat's
    # TTL, so the key never lapses and the reaper never acts; only the restarted worker itself can help.
    sandbox.update(solve_time={"default": {"median_s": 50.0, "sigma": 0.3}})  # ~0.5 s solves
    # Restarting a process takes real seconds, which time compression does not shorten: the deadline keeps
    # its production order of size to them (120 s against RestartSec=2), so no CAPTCHA is given up for age. The
    # kills are random, not caused by the tasks, so no task should reach the dead-letter list for them.
    api = fast_config(redis_url, keys.prefix, sandbox.url, task_deadline_s=120.0)
    config = with_worker(api, heartbeat_ttl_s=30.0, max_attempts=100)
    config_path = write_config(tmp_path / "fleet.yml", config)
    tasks = page_tasks("storm", 300)
    ids = Producer(r, keys).submit_many(tasks)
    names = ["a", "b", "c"]
    workers = {name: WorkerProcess(config_path, redis_url, sandbox.url, name) for name in names}
    rng = random.Random(4)
    kills = 0
    try:
        assert wait_until(lambda: int(r.hlen(keys.results)) >= 10, 20)
        storm_end = time.monotonic() + 8.0
        while time.monotonic() < storm_end and int(r.hlen(keys.results)) < len(ids) - 30:
            time.sleep(rng.uniform(0.2, 0.5))
            name = rng.choice(names)
            workers[name].process.kill()
            workers[name].process.wait(timeout=10)
            kills += 1
            workers[name] = WorkerProcess(config_path, redis_url, sandbox.url, name)
        assert kills >= 8
        # Nothing stranded: every task gets its result while the workers run on (no drain, no reaper).
        assert wait_until(lambda: int(r.hlen(keys.results)) == len(ids), 60), where_are(r, keys, ids, names)
        assert all(r.llen(keys.inflight(f"proc:{name}")) == 0 for name in names)

        def all_beating() -> bool:  # a replacement started last may still be importing: let it come up
            beats = [json.loads(r.get(keys.heartbeat(w.worker_id)) or b"{}") for w in workers.values()]
            return all(b.get("pid") == w.process.pid for b, w in zip(beats, workers.values(), strict=True))

        assert wait_until(all_beating, 20)
    finally:
        codes = [w.stop() for w in workers.values()]
    assert codes == [0, 0, 0]
    results = read_results(r, keys)
    assert set(results) == set(ids) and all(x["status"] == "success" for x in results.values())
    assert int(r.get(keys.completed_total) or 0) == len(ids) and int(r.llen(keys.tasks)) == 0
    # Tasks taken back from a killed predecessor resumed its CAPTCHA instead of paying again, on the poll
    # schedule it had (its poll count is stored): none waited for its last poll near the 120 s deadline.
    resumed = [float(x["api_seconds"]) for x in results.values() if x.get("resumed")]
    assert resumed and max(resumed) < 30.0, sorted(resumed)[-5:]
    assert sandbox.stats()["over_polled"] == 0
    payments = sandbox.model.polls_per_payment()
    assert len(payments) == len(ids)
    twice = {page: polls for page, polls in payments.items() if len(polls) > 1}
    # A CAPTCHA whose id reached Redis is never paid again: a task paid twice lost its first CAPTCHA's id
    # with the killed process (in.php answered, the id not yet written): none of them was ever polled,
    # and at most one per submit thread per kill.
    assert all(polls[:-1] == [0] * (len(polls) - 1) for polls in twice.values()), twice
    assert len(twice) <= kills * config.worker.submit_threads
    print(
        f"kill storm: {kills} kills, {len(twice)} of {len(ids)} tasks paid twice (in.php cut by a kill), "
        f"{len(resumed)} resumed, the slowest {max(resumed):.1f} s from submit"
    )


def test_a_drain_longer_than_the_heartbeat_ttl_is_never_reaped(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    # ~2.5 s solves, polled every 0.05 s (a budget large enough for that, on both sides).
    sandbox.update(solve_time={"default": {"median_s": 250.0, "sigma": 0.05}}, max_polls_per_captcha=None)
    config = with_worker(
        fast_config(redis_url, keys.prefix, sandbox.url, task_deadline_s=60.0, max_polls_per_captcha=500),
        heartbeat_ttl_s=1.0,
        reaper_interval_s=0.2,
        drain_timeout_s=30.0,
    )
    config_path = write_config(tmp_path / "fleet.yml", config)
    r.set(keys.target("proc:peer"), 0)  # the peer claims nothing; its reaper watches the drainer
    peer = WorkerProcess(config_path, redis_url, sandbox.url, "peer")
    drainer = WorkerProcess(config_path, redis_url, sandbox.url, "drainer")
    try:
        assert wait_until(lambda: r.exists(keys.heartbeat(peer.worker_id), keys.heartbeat(drainer.worker_id)) == 2, 20)
        ids = Producer(r, keys).submit_many(page_tasks("drain", 10))
        assert wait_until(lambda: sandbox.stats()["accepted"] == 10, 20)
        drainer.process.terminate()
        seen: list[str] = []
        started = time.monotonic()
        while drainer.process.poll() is None and time.monotonic() - started < 20:
            beat = r.get(keys.heartbeat(drainer.worker_id))
            seen.append(json.loads(beat)["state"] if beat else "missing")
            time.sleep(0.05)
        assert drainer.process.wait(timeout=20) == 0
        drain_s = time.monotonic() - started
        peer_beat = json.loads(r.get(keys.heartbeat(peer.worker_id)) or b"{}")
    finally:
        for proc in (drainer, peer):
            proc.stop()
    assert drain_s > 2 * config.worker.heartbeat_ttl_s  # the drain outlived the TTL twice over
    # Its heartbeat never lapsed while it drained: running (before it read SIGTERM), draining, then gone
    # only once it unregistered at the end of the drain.
    states = [state for i, state in enumerate(seen) if i == 0 or seen[i - 1] != state]
    if states[-1] == "missing":
        states.pop()
    assert states in (["running", "draining"], ["draining"]), seen
    results = read_results(r, keys)
    assert set(results) == set(ids)
    for result in results.values():
        assert result["status"] == "success" and result["worker"] == drainer.worker_id, result
        assert result["attempts"] == 1 and not result.get("resumed")  # no attempt counted
    assert peer_beat["completed"] == 0 and peer_beat["duplicates"] == 0  # nothing solved twice
    assert r.llen(keys.tasks) == 0  # no copy of a drained task requeued behind its back
    assert sandbox.stats()["accepted"] == 10


class Boom(BaseException):
    """What no per-task guard catches (like SystemExit raised in a thread)."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("thread", ["claimer", "heartbeat", "batch-poller"])
def test_a_thread_that_dies_marks_the_heartbeat_and_exits_non_zero(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer, thread: str
) -> None:
    config = fast_config(redis_url, keys.prefix, sandbox.url)
    service = WorkerService(config, host="test", instance="dies")
    Producer(r, keys).submit_many(page_tasks("die", 5))
    calls = {"n": 0}

    def dies(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == (3 if thread == "heartbeat" else 1):  # the first heartbeat is run()'s own
            raise Boom()
        return original(*args, **kwargs)

    owner, name = {"claimer": (service.queue, "claim"), "heartbeat": (service.queue, "heartbeat")}.get(
        thread, (service.api, "poll_many")
    )
    original = getattr(owner, name)
    setattr(owner, name, dies)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(service.run()), daemon=True)
    runner.start()
    runner.join(timeout=20)
    assert not runner.is_alive() and codes == [EXIT_THREAD_DIED]
    beat = json.loads(r.get(keys.heartbeat(service.worker_id)) or b"{}")
    assert beat["state"] == "failed" and beat["dead_threads"] == [thread], beat
    # What it held went back to the queue, uncounted, for the restarted process or a peer.
    assert r.llen(keys.inflight(service.worker_id)) == 0
    assert int(r.llen(keys.tasks)) + int(r.hlen(keys.results)) == 5


def test_an_exception_in_one_step_never_ends_a_thread(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer
) -> None:
    config = fast_config(redis_url, keys.prefix, sandbox.url)
    service = WorkerService(config, host="test", instance="flaky")
    failures = {"claim": 0, "read_target": 0, "reap": 0, "poll_many": 0}

    def flaky(owner: object, name: str) -> None:
        original = getattr(owner, name)

        def once(*args: object, **kwargs: object) -> object:
            if failures[name] < 2:  # a bug that bites twice, then goes away
                failures[name] += 1
                raise RuntimeError(f"bug in {name}")
            return original(*args, **kwargs)

        setattr(owner, name, once)

    for owner, name in ((service.queue, "claim"), (service.queue, "read_target"), (service.queue, "reap")):
        flaky(owner, name)
    flaky(service.api, "poll_many")
    ids = Producer(r, keys).submit_many(page_tasks("flaky", 10))
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: int(r.hlen(keys.results)) == len(ids), 15), r.hlen(keys.results)
        assert all(failures[name] == 2 for name in failures), failures
        assert service.dead_threads == [] and service.state() == "running"
    finally:
        service.request_stop()
        runner.join(timeout=20)
    assert all(x["status"] == "success" for x in read_results(r, keys).values())
