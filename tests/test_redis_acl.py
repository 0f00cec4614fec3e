"""ACL users per role: the redis role's real ACL template, rendered and loaded by a real redis-server.

Each role's allowed operations are exercised through the fleet's own code paths (a worker process solving, a
producer submitting and waiting, the controller's state reads and leader lock, ``status``); each forbidden one
is refused by Redis with NOPERM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest
import redis

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.apps.status.fleet_state import read_fleet_state
from captcha_fleet.apps.submit import NOT_REPLICATED
from captcha_fleet.contract.fleet_snapshot import read_snapshot
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Event, Result
from captcha_fleet.contract.results_retention import expire_results
from captcha_fleet.controller.hosts.lock import RedisHostLock
from captcha_fleet.controller.leader import LeaderLock
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.local_servers.redis_server import RedisServer
from captcha_fleet.worker.producer import Producer
from captcha_fleet.worker.queue import Outcome, TaskQueue
from tests.fleet_helpers import TIME_SCALE, fast_config, write_config
from tests.redis_acl_rig import (
    PASSWORDS,
    PREFIX,
    acl_refusals,
    client_for,
    reset_acl_log,
    run_helper,
    url_for,
)
from tests.worker_unit import start_worker_unit

RETENTION_LEFT = "result retention is the controller's under this Redis user"
RECAPTCHA = {"googlekey": "6Le-test", "pageurl": "https://example.test/login"}


def refused(call: Callable[[], object]) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_default_user_is_off_and_each_role_logs_in(acl_server: RedisServer, admin: redis.Redis) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=acl_server.host, port=acl_server.port).ping()
    for role in PASSWORDS:
        assert client_for(acl_server, role).ping()
    assert any(str(line).startswith("user admin on") for line in admin.acl_list())


def test_worker_solves_and_producer_waits_with_their_own_users(
    acl_server: RedisServer, admin: redis.Redis, tmp_path: Path
) -> None:
    keys = Keys(PREFIX)
    producer = Producer(client_for(acl_server, "producer"), keys)
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=3)) as sandbox:
        worker_url = url_for(acl_server, "worker")
        config_path = write_config(tmp_path / "fleet.yml", fast_config(worker_url, PREFIX, sandbox.url))
        ids = [producer.submit("userrecaptcha", RECAPTCHA) for _ in range(8)]
        # A dead worker's in-flight task (the reaper requeues it) and a result past its retention (issue 22: the
        # worker user may not delete it; the controller's does).
        admin.rpush(
            keys.inflight("dead:1"), json.dumps({"id": "orphan", "method": "userrecaptcha", "params": RECAPTCHA})
        )
        admin.zadd(keys.workers, {"dead:1": 1.0})
        admin.hset(keys.results, "old", '{"status":"success","token":"t"}')
        admin.zadd(keys.results_expiry, {"old": 1.0})
        reset_acl_log(admin)
        worker = start_worker_unit(config_path, worker_url, sandbox.url, tmp_path / "worker.log", "acl")
        try:
            results = [producer.wait(task_id, timeout_s=30) for task_id in [*ids, "orphan"]]
            # The worker's reaper, heartbeat and target reads all ran under its user as well; its reaper's
            # retention is refused quietly (said once) and the result stays for the controller.
            assert wait_until(lambda: admin.exists(keys.heartbeat("acl:1")) == 1, 10)
            log_path = tmp_path / "worker.log"
            assert wait_until(lambda: RETENTION_LEFT in log_path.read_text(errors="replace"), 10)
            assert admin.hexists(keys.results, "old")
            # The playbooks' canary runs with the worker's credentials too.
            rc, answer = run_helper(
                tmp_path, acl_server, "worker", "canary", "--host", "acl", "--timeout", "30",
                "--method", "userrecaptcha", "--params", json.dumps(RECAPTCHA),
            )  # fmt: skip
            assert rc == 0 and answer["canary"] is True, answer
        finally:
            worker.terminate()
            assert worker.wait(timeout=30) == 0
    assert all(r is not None and r["status"] == "success" for r in results), results
    # The one refusal: retention's first EVALSHA touching the expiry zset; never tried again.
    assert acl_refusals(admin) == [("worker", "evalsha", keys.results_expiry)]
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "NOPERM" not in log and "no permissions" not in log and "Traceback" not in log, log[-2000:]
    assert log.count(RETENTION_LEFT) == 1
    reset_acl_log(admin)
    assert expire_results(client_for(acl_server, "controller"), keys, time.time()) == 1
    assert not admin.hexists(keys.results, "old")
    assert all(admin.hexists(keys.results, task_id) for task_id in [*ids, "orphan"]), "fresh results stay"
    assert acl_refusals(admin) == []


def test_controller_reads_the_fleet_and_writes_only_its_keys(acl_server: RedisServer, admin: redis.Redis) -> None:
    keys = Keys(PREFIX)
    admin.set(keys.heartbeat("h:1"), "{}")
    controller = client_for(acl_server, "controller")
    state = read_fleet_state(controller, keys)
    assert state.pending == 0
    controller.set(keys.target("h:1"), 5)
    controller.set(keys.host_draining("h"), 1)
    lock = LeaderLock(controller, keys.controller_leader, ttl_s=5)
    assert lock.hold()
    controller.lpush(keys.decisions, "{}")
    controller.hset(keys.controller_state, "x", "1")
    forbidden: list[Callable[[], object]] = [
        lambda: controller.hset(keys.results, "t", "{}"),
        lambda: controller.rpush(keys.tasks, "{}"),
        lambda: controller.delete(keys.heartbeat("h:1")),
        controller.flushall,
        lambda: controller.config_get("*"),
        lambda: controller.keys("*"),
        lambda: controller.get("other:key"),
    ]
    assert all(refused(call) for call in forbidden)


def test_status_runs_as_the_controller_user(acl_server: RedisServer, admin: redis.Redis) -> None:
    env = dict(os.environ, REDIS_URL=url_for(acl_server, "controller"))
    args = [sys.executable, "-m", "captcha_fleet.apps.cli", "status", "--json", "--key-prefix", PREFIX]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert PASSWORDS["controller"] not in done.stdout + done.stderr


def test_worker_user_is_refused_everything_outside_its_keys_and_commands(
    acl_server: RedisServer, admin: redis.Redis
) -> None:
    keys = Keys(PREFIX)
    admin.set("other:secret", "x")
    worker = client_for(acl_server, "worker")
    forbidden: list[Callable[[], object]] = [
        worker.flushall,
        worker.flushdb,
        lambda: worker.config_get("*"),
        lambda: worker.config_set("appendonly", "no"),
        lambda: worker.keys("*"),
        lambda: worker.get("other:secret"),
        lambda: worker.set("other:key", "x"),
        lambda: worker.rpush("captcha:tasks", "{}"),  # another fleet's prefix
        lambda: worker.set(keys.target("h:1"), 9),  # targets are the controller's
        lambda: worker.set(keys.controller_leader, "me"),
        lambda: worker.execute_command("BGREWRITEAOF"),  # type: ignore[no-untyped-call]
        lambda: worker.execute_command("SHUTDOWN", "NOSAVE"),  # type: ignore[no-untyped-call]
    ]
    assert [refused(call) for call in forbidden] == [True] * len(forbidden)
    assert admin.get("other:secret") == b"x"


def test_producer_cannot_read_heartbeats_or_delete_results(acl_server: RedisServer, admin: redis.Redis) -> None:
    keys = Keys(PREFIX)
    admin.set(keys.heartbeat("h:1"), "{}")
    admin.hset(keys.results, "t1", '{"status":"success","token":"x"}')
    producer = client_for(acl_server, "producer")
    assert Producer(producer, keys).result("t1") == {"status": "success", "token": "x"}
    forbidden: list[Callable[[], object]] = [
        lambda: producer.get(keys.heartbeat("h:1")),
        lambda: producer.hdel(keys.results, "t1"),
        lambda: producer.delete(keys.results),
        lambda: producer.hset(keys.results, "t2", "{}"),
        lambda: producer.lrange(keys.tasks, 0, -1),
        lambda: producer.lrange(keys.inflight("h:1"), 0, -1),
        lambda: producer.hgetall(keys.captcha_ids),
        producer.flushall,
        lambda: producer.keys("*"),
    ]
    assert [refused(call) for call in forbidden] == [True] * len(forbidden)
    assert admin.hexists(keys.results, "t1")


def test_a_worker_with_the_wrong_user_logs_a_clear_error_and_keeps_the_task(
    acl_server: RedisServer, admin: redis.Redis, tmp_path: Path
) -> None:
    keys = Keys(PREFIX)
    Producer(client_for(acl_server, "producer"), keys).submit("userrecaptcha", RECAPTCHA, "kept")
    wrong_url = url_for(acl_server, "producer")  # a misconfigured host: the producer's credentials
    config_path = write_config(tmp_path / "fleet.yml", fast_config(wrong_url, PREFIX, "http://127.0.0.1:9"))
    log_path = tmp_path / "worker.log"
    worker = start_worker_unit(config_path, wrong_url, "http://127.0.0.1:9", log_path, "acl")
    try:
        assert wait_until(lambda: "no permissions" in log_path.read_text(errors="replace"), 20)
        time.sleep(2.0)
        assert worker.poll() is None, "the worker exited instead of waiting for its permissions"
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    log = log_path.read_text(errors="replace")
    assert PASSWORDS["producer"] not in log
    # Backing off, not spinning: a handful of lines in a few seconds, not thousands.
    assert log.count("no permissions") < 50, log.count("no permissions")
    assert admin.llen(keys.tasks) == 1


def test_the_fleet_helper_drains_and_locks_a_host_as_the_worker_user(
    acl_server: RedisServer, admin: redis.Redis, tmp_path: Path
) -> None:
    """What rolling_update.yml, scale.yml and decommission.yml run on a worker host, with the worker's env file."""
    keys = Keys(PREFIX)
    reset_acl_log(admin)
    lock = ["--host", "h1", "--token", "roll-1", "--ttl", "60"]
    assert run_helper(tmp_path, acl_server, "worker", "lock", "acquire", *lock, "--wait", "1")[0] == 0
    assert admin.get(keys.host_lock("h1")) == b"roll-1"
    assert run_helper(tmp_path, acl_server, "worker", "drain", "set", "--host", "h1")[0] == 0
    assert admin.exists(keys.host_draining("h1"))
    assert run_helper(tmp_path, acl_server, "worker", "wait-idle", "--host", "h1", "--timeout", "1")[0] == 0
    assert run_helper(tmp_path, acl_server, "worker", "drain", "clear", "--host", "h1")[0] == 0
    assert not admin.exists(keys.host_draining("h1"))
    assert run_helper(tmp_path, acl_server, "worker", "lock", "release", *lock)[1]["released"] is True
    rc, answer = run_helper(
        tmp_path, acl_server, "worker", "restart", "--host", "h2", "--lock-token", "cfg-1", "--timeout", "1",
        "--", sys.executable, "-c", "print('restarted')",
    )  # fmt: skip
    assert rc == 0 and answer["drained"] is True and answer["restarted"] is True, answer
    assert not admin.exists(keys.host_lock("h2")) and not admin.exists(keys.host_draining("h2"))
    rc, answer = run_helper(tmp_path, acl_server, "worker", "selfcheck", "--skip-api", "--timeout", "5")
    assert rc == 0 and answer["selfcheck"] is True, answer
    assert acl_refusals(admin) == []


def test_the_controller_takes_host_locks_and_writes_its_state_as_its_user(
    acl_server: RedisServer, admin: redis.Redis
) -> None:
    keys = Keys(PREFIX)
    admin.set(keys.heartbeat("h:1"), "{}")
    admin.zadd(keys.workers, {"h:1": time.time()})
    reset_acl_log(admin)
    controller = client_for(acl_server, "controller")
    host_lock = RedisHostLock(controller, keys, token="scale-1")
    assert host_lock.acquire(["h1", "h2"], ttl_s=30) == {"h1", "h2"}
    assert host_lock.renew(["h1", "h2"], ttl_s=30) == {"h1", "h2"}
    host_lock.release(["h1", "h2"])
    assert not admin.exists(keys.host_lock("h1"))
    # A roll holding a host (through the fleet helper) keeps the scale run off it.
    admin.set(keys.host_lock("h3"), "roll-1")
    assert host_lock.acquire(["h3"], ttl_s=30) == set()
    leader = LeaderLock(controller, keys.controller_leader, ttl_s=5)
    assert leader.hold()
    with leader.fenced() as pipe:
        pipe.set(keys.target("h:1"), 3)
        pipe.hset(keys.hosts, "h1", "{}")
    read_fleet_state(controller, keys)
    read_snapshot(controller, keys)
    controller.xrange(keys.events, count=10)
    assert acl_refusals(admin) == []


def test_monitoring_runs_status_and_doctor_and_writes_nothing_of_the_fleet(
    acl_server: RedisServer, admin: redis.Redis, tmp_path: Path
) -> None:
    keys = Keys(PREFIX)
    admin.rpush(keys.tasks, "{}")
    reset_acl_log(admin)
    env = dict(os.environ, REDIS_URL=url_for(acl_server, "monitoring"), CAPTCHAAI_KEY="k")
    env["CAPTCHAAI_BASE"] = "http://127.0.0.1:9"
    cli = [sys.executable, "-m", "captcha_fleet.apps.cli"]
    status = subprocess.run(
        [*cli, "status", "--json", "--key-prefix", PREFIX],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    doctor = subprocess.run(
        [*cli, "doctor", "--json", "--key-prefix", PREFIX, "--timeout", "2"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip
    checks = {c["name"]: c["status"] for c in json.loads(doctor.stdout)["checks"]}
    assert checks["redis"] == "ok", doctor.stdout
    for output in (status.stdout + status.stderr, doctor.stdout + doctor.stderr):
        assert PASSWORDS["monitoring"] not in output
    assert acl_refusals(admin) == []
    monitoring = client_for(acl_server, "monitoring")
    forbidden: list[Callable[[], object]] = [
        lambda: monitoring.rpush(keys.tasks, "{}"),
        lambda: monitoring.lpop(keys.tasks),
        lambda: monitoring.set(keys.target("h:1"), 9),
        lambda: monitoring.set(keys.host_draining("h1"), 1),
        lambda: monitoring.hset(keys.results, "t", "{}"),
        lambda: monitoring.delete(keys.tasks),
        lambda: monitoring.set(keys.host_lock("h1"), "me"),
        monitoring.flushall,
        lambda: monitoring.keys("*"),
    ]
    assert [refused(call) for call in forbidden] == [True] * len(forbidden)
    assert admin.llen(keys.tasks) == 1


def test_the_worker_user_cannot_destroy_or_overwrite_results_or_the_queue(
    acl_server: RedisServer, admin: redis.Redis
) -> None:
    keys = Keys(PREFIX)
    first = '{"status":"success","token":"first"}'
    admin.hset(keys.results, "t1", first)
    admin.rpush(keys.tasks, '{"id":"q1","method":"userrecaptcha","params":{}}')
    worker = client_for(acl_server, "worker")
    forbidden: list[Callable[[], object]] = [
        lambda: worker.delete(keys.results),
        lambda: worker.hdel(keys.results, "t1"),
        lambda: worker.hset(keys.results, "t1", '{"status":"error","error":"forged"}'),
        lambda: worker.delete(keys.tasks),
        lambda: worker.ltrim(keys.tasks, 1, 0),
        lambda: worker.lrem(keys.tasks, 0, "x"),
        lambda: worker.lpop(keys.tasks),
        lambda: worker.delete(keys.events),
        lambda: worker.delete(keys.deadletter),
        lambda: worker.execute_command("FUNCTION", "FLUSH"),  # type: ignore[no-untyped-call]
        lambda: worker.execute_command("SCRIPT", "FLUSH"),  # type: ignore[no-untyped-call]
        lambda: worker.eval("return redis.call('HSET', KEYS[1], 'a', 'b')", 1, keys.results),
        lambda: worker.eval("return redis.call('DEL', KEYS[1])", 1, keys.tasks),
    ]
    outcome = []
    for call in forbidden:
        try:
            call()
            outcome.append(False)
        except redis.exceptions.ResponseError as exc:  # NOPERM, or a script's "can't access" (also an ACL refusal)
            outcome.append("NOPERM" in str(exc) or "no permissions" in str(exc) or "can't access" in str(exc))
    assert outcome == [True] * len(forbidden)
    # The one raw write it has on results never overwrites one.
    assert worker.hsetnx(keys.results, "t1", '{"status":"error","error":"forged"}') == 0
    assert admin.hget(keys.results, "t1") == first.encode()
    assert admin.llen(keys.tasks) == 1


def test_a_result_is_written_only_for_a_task_the_worker_holds(acl_server: RedisServer, admin: redis.Redis) -> None:
    keys = Keys(PREFIX)
    config = fast_config(url_for(acl_server, "worker"), PREFIX, "http://127.0.0.1:9")
    queue = TaskQueue(client_for(acl_server, "worker"), config, "w:1")
    Producer(client_for(acl_server, "producer"), keys).submit("userrecaptcha", RECAPTCHA, "held")
    Producer(client_for(acl_server, "producer"), keys).submit("userrecaptcha", RECAPTCHA, "queued")
    [claimed] = queue.claim(1, 0.1)
    queued_raw = cast("bytes", admin.lindex(keys.tasks, 0))
    admin.set(keys.completed_total, "nan")  # issue 21: a counter that INCR refuses must not stop the events
    written = queue.finish_many([outcome_for("held", claimed.raw), outcome_for("queued", queued_raw)])
    assert written == [True, False]
    assert admin.hexists(keys.results, "held") and not admin.hexists(keys.results, "queued")
    assert admin.llen(keys.tasks) == 1, "the task it did not hold is still queued"
    assert admin.get(keys.completed_total) == b"1"
    assert admin.xlen(keys.events) == 1
    # A second finish of the same task (a reply lost, retried) writes nothing more.
    assert queue.finish_many([outcome_for("held", claimed.raw)]) == [False]


def outcome_for(task_id: str, raw: bytes) -> Outcome:
    result = Result(status="success", token="tok")
    event = Event(id=task_id, status="success", error_class="", latency_s=0.1, api_s=0.1, worker="w:1",
                  host="h", method="userrecaptcha", ts=time.time())  # fmt: skip
    return Outcome(task_id, raw, result, event)


def test_producers_share_a_wake_up_they_can_neither_steal_nor_forge(
    acl_server: RedisServer, admin: redis.Redis
) -> None:
    keys = Keys(PREFIX)
    producer = client_for(acl_server, "producer")
    waiters = [Producer(client_for(acl_server, "producer"), keys) for _ in range(2)]
    config = fast_config(url_for(acl_server, "worker"), PREFIX, "http://127.0.0.1:9")
    queue = TaskQueue(client_for(acl_server, "worker"), config, "w:1")
    waiters[0].submit("userrecaptcha", RECAPTCHA, "shared")
    [claimed] = queue.claim(1, 0.1)
    with ThreadPoolExecutor(max_workers=2) as pool:
        waits = [pool.submit(w.wait, "shared", 20.0) for w in waiters]
        time.sleep(0.3)  # both block on the stream
        reset_acl_log(admin)
        queue.finish_many([outcome_for("shared", claimed.raw)])
        answers = [f.result(timeout=30) for f in waits]
    assert [a and a["token"] for a in answers] == ["tok", "tok"], "each waiter sees the one wake-up"
    assert acl_refusals(admin) == []
    forbidden: list[Callable[[], object]] = [
        lambda: producer.blpop([keys.notify("shared")], timeout=1),
        lambda: producer.rpush(keys.notify("other"), '{"status":"success","token":"forged"}'),
        lambda: producer.xadd(keys.done("other"), {"result": '{"status":"success","token":"forged"}'}),
        lambda: producer.delete(keys.done("shared")),
        lambda: producer.xtrim(keys.done("shared"), maxlen=0),
        lambda: producer.lpop(keys.tasks),
    ]
    assert [refused(call) for call in forbidden] == [True] * len(forbidden)
    assert admin.xlen(keys.done("shared")) == 1


def test_submit_honours_wait_replicas(acl_server: RedisServer, admin: redis.Redis, tmp_path: Path) -> None:
    """No replica confirms: submit says so and fails (the task is on the primary; resubmitting its id is safe)."""
    config = tmp_path / "fleet.yml"
    config.write_text(f"key_prefix: {PREFIX}\nredis:\n  wait_replicas: 1\n  wait_timeout_ms: 100\n")
    env = dict(os.environ, REDIS_URL=url_for(acl_server, "producer"))
    args = [sys.executable, "-m", "captcha_fleet.apps.cli", "submit", "--config", str(config), "--json", "--id", "r1"]
    done = subprocess.run([*args, "userrecaptcha"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == NOT_REPLICATED, done.stdout + done.stderr
    assert json.loads(done.stdout)["status"] == "not-replicated"
    assert PASSWORDS["producer"] not in done.stdout + done.stderr
