"""ACL users per role: the redis role's real ACL template, rendered and loaded by a real redis-server.

Each role's allowed operations are exercised through the fleet's own code paths (a worker process solving, a
producer submitting and waiting, the controller's state reads and leader lock, ``status``); each forbidden one
is refused by Redis with NOPERM.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from captcha_fleet.controller.leader import LeaderLock
from captcha_fleet.fleet_state import read_fleet_state
from captcha_fleet.keys import Keys
from captcha_fleet.redis_connect import connect_url
from captcha_fleet.redis_server import RedisServer
from captcha_fleet.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.worker.producer import Producer
from tests.fleet_helpers import TIME_SCALE, fast_config, wait_until, write_config
from tests.role_templates import render

PREFIX = "aclfleet"
PASSWORDS = {
    role: f"{role}-{secrets.token_hex(10)}" for role in ("producer", "worker", "controller", "monitoring", "admin")
}
RECAPTCHA = {"googlekey": "6Le-test", "pageurl": "https://example.test/login"}


def render_acl(path: Path, **overrides: Any) -> Path:
    """The role's users.acl.j2 with every per-role password set and the default user off."""
    settings: dict[str, Any] = {
        "redis_fleet_key_prefix": PREFIX,
        "redis_fleet_passwords": PASSWORDS,
        "redis_password": "",
        "redis_default_user_enabled": False,
    }
    return render("redis", "users.acl.j2", path, **{**settings, **overrides})


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    acl = render_acl(tmp_path_factory.mktemp("acl") / "users.acl")
    with RedisServer(username="admin", password=PASSWORDS["admin"], extra_conf=f"aclfile {acl}") as server:
        yield server


def url_for(server: RedisServer, role: str) -> str:
    return f"redis://{role}:{PASSWORDS[role]}@{server.host}:{server.port}/0"


def client_for(server: RedisServer, role: str) -> redis.Redis:
    return connect_url(url_for(server, role))


@pytest.fixture()
def admin(acl_server: RedisServer) -> Iterator[redis.Redis]:
    client = acl_server.client()
    client.flushall()
    yield client
    client.close()


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
        ids = [producer.submit("userrecaptcha", RECAPTCHA) for _ in range(20)]
        worker = start_worker(config_path, worker_url, sandbox.url, tmp_path / "worker.log")
        try:
            results = [producer.wait(task_id, timeout_s=30) for task_id in ids]
            # The worker's reaper, heartbeat and target reads all ran under its user as well.
            assert wait_until(lambda: admin.exists(keys.heartbeat("acl:1")) == 1, 10)
        finally:
            worker.terminate()
            assert worker.wait(timeout=30) == 0
    assert all(r is not None and r["status"] == "success" for r in results)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "NOPERM" not in log and "no permissions" not in log, log[-2000:]


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
    args = [sys.executable, "-m", "captcha_fleet.cli", "status", "--json", "--key-prefix", PREFIX]
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
    worker = start_worker(config_path, wrong_url, "http://127.0.0.1:9", log_path)
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


def start_worker(config_path: Path, url: str, api: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, REDIS_URL=url, CAPTCHAAI_BASE=api, CAPTCHAAI_KEY="k")
    args = [sys.executable, "-m", "captcha_fleet.cli", "worker", "--config", str(config_path)]
    args += ["--host-name", "acl", "--instance", "1", "--log-level", "INFO"]
    with log_path.open("wb") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
