"""Secrets (the API key, the Redis password) never show in process arguments or logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.config import load_config
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.log_redaction import redact
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.local_servers.redis_server import RedisServer
from captcha_fleet.worker.producer import Producer
from tests.fleet_helpers import TIME_SCALE, WorkerProcess, fast_config, write_config

API_KEY = "api-key-7f3a9c"
REDIS_PASSWORD = "redis-pass-91b2"


def test_worker_keeps_secrets_out_of_argv_and_logs(tmp_path: Path) -> None:
    keys = Keys("secret")
    with (
        RedisServer(password=REDIS_PASSWORD) as server,
        SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=2, accept_keys=(API_KEY,))) as sandbox,
    ):
        client = redis.Redis.from_url(server.url)
        config_path = write_config(tmp_path / "fleet.yml", fast_config(server.url, keys.prefix, sandbox.url))
        assert REDIS_PASSWORD not in config_path.read_text() and API_KEY not in config_path.read_text()
        worker = WorkerProcess(config_path, server.url, sandbox.url, "1", key=API_KEY)
        try:
            task_id = Producer(client, keys).submit("turnstile", {"sitekey": "s", "pageurl": "https://e.test"})
            assert wait_until(lambda: bool(client.hexists(keys.results, task_id)), 20)
            cmdline = Path(f"/proc/{worker.process.pid}/cmdline").read_bytes().decode()
            heartbeat = client.get(keys.heartbeat(worker.worker_id)) or b""
        finally:
            worker.stop()
        output = worker.output()
        result = json.loads(client.hget(keys.results, task_id) or b"{}")
    assert result["status"] == "success"  # the key did reach the API, through the environment
    for secret in (API_KEY, REDIS_PASSWORD):
        assert secret not in cmdline
        assert secret not in output
        assert secret not in str(heartbeat)
        assert secret not in json.dumps(result)


def test_api_key_in_fleet_yml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yml"
    path.write_text("api:\n  key: oops\n")
    try:
        load_config(path, env={})
    except ValueError as exc:
        assert "CAPTCHAAI_KEY" in str(exc)
        assert "oops" not in str(exc)
    else:
        raise AssertionError("an API key in fleet.yml must be refused")


def test_config_repr_hides_secrets() -> None:
    config = load_config(None, env={"CAPTCHAAI_KEY": API_KEY, "REDIS_URL": f"redis://:{REDIS_PASSWORD}@h:1/0"})
    assert config.api.key == API_KEY
    assert API_KEY not in repr(config) and REDIS_PASSWORD not in repr(config)
    assert API_KEY not in json.dumps(config.api.redacted())


def test_log_redaction_blanks_keys_and_passwords() -> None:
    line = (
        "Retrying (Retry(total=1)) after connection broken: /res.php?key=abc123&action=get&id=5 "
        "redis://:hunter2@10.0.0.1:6379/0 and rediss://user:pw@h/0"
    )
    cleaned = redact(line)
    assert "abc123" not in cleaned and "hunter2" not in cleaned and ":pw@" not in cleaned
    assert "action=get" in cleaned and "10.0.0.1:6379" in cleaned


def test_worker_logs_stay_clean_while_the_api_is_unreachable(tmp_path: Path) -> None:
    keys = Keys("unreach")
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        sandbox = SandboxServer(SandboxConfig(time_scale=TIME_SCALE, accept_keys=(API_KEY,))).start()
        sandbox.update(solve_time={"default": {"median_s": 10_000.0, "sigma": 0.01}})
        config_path = write_config(tmp_path / "fleet.yml", fast_config(server.url, keys.prefix, sandbox.url))
        Producer(client, keys).submit("turnstile", {"sitekey": "s", "pageurl": "https://e.test"})
        worker = WorkerProcess(config_path, server.url, sandbox.url, "1", key=API_KEY)
        try:
            assert wait_until(lambda: sandbox.stats()["accepted"] == 1, 20)
            sandbox.stop()  # polls (GETs with the key in the query) now fail and are retried by urllib3
            time.sleep(1.5)
        finally:
            worker.stop()
            sandbox.stop()
        client.close()
    output = worker.output()
    assert API_KEY not in output


def test_credentials_in_the_api_base_are_never_logged(tmp_path: Path) -> None:
    keys = Keys("proxy")
    proxy_secret = "proxy-pass-5c1d"
    with RedisServer() as server, SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=4)) as sandbox:
        config_path = write_config(tmp_path / "fleet.yml", fast_config(server.url, keys.prefix, sandbox.url))
        base = sandbox.url.replace("http://", f"http://proxyuser:{proxy_secret}@")
        env = dict(os.environ, REDIS_URL=server.url, CAPTCHAAI_BASE=base, CAPTCHAAI_KEY=API_KEY)
        args = [sys.executable, "-m", "captcha_fleet.apps.cli", "worker", "--config", str(config_path)]
        args += ["--host-name", "p", "--instance", "1", "--log-level", "DEBUG"]
        process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(server.url)
        try:
            task_id = Producer(client, keys).submit("turnstile", {"sitekey": "s", "pageurl": "https://e.test"})
            assert wait_until(lambda: bool(client.hexists(keys.results, task_id)), 20)  # the base works
        finally:
            process.terminate()
            process.wait(timeout=30)
            client.close()
    assert process.stdout is not None
    output = process.stdout.read().decode(errors="replace")
    assert "starting" in output and "http://***@127.0.0.1" in output  # the start line names the base
    assert proxy_secret not in output and "proxyuser" not in output
