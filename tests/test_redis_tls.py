"""TLS: a TLS-only redis-server (throwaway CA), reached over ``rediss://`` by a worker, a producer and doctor."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.redis_connect import RedisSettings, connect_url
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.local_servers.redis_server import RedisServer, ServerTls, free_port
from captcha_fleet.local_servers.sentinel_server import SentinelSet
from captcha_fleet.local_servers.throwaway_ca import make_ca_and_server_cert
from captcha_fleet.worker.producer import Producer
from tests.fleet_helpers import TIME_SCALE, fast_config, write_config
from tests.role_templates import render, role_vars
from tests.worker_unit import start_worker_unit

PASSWORD = "tls-" + secrets.token_hex(10)
RECAPTCHA = {"googlekey": "6Le-test", "pageurl": "https://example.test/login"}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> ServerTls:
    return make_ca_and_server_cert(tmp_path_factory.mktemp("ca"))


@pytest.fixture()
def tls_server(tls: ServerTls) -> Iterator[RedisServer]:
    with RedisServer(password=PASSWORD, tls=tls) as server:
        yield server


def test_plain_and_unverified_clients_are_refused(tls_server: RedisServer, tls: ServerTls) -> None:
    plain = f"redis://:{PASSWORD}@127.0.0.1:{tls_server.port}/0"
    with pytest.raises(redis.ConnectionError):
        connect_url(plain, RedisSettings(retries=0), socket_timeout=2).ping()
    # TLS without our CA: the server's certificate does not verify.
    untrusted = f"rediss://:{PASSWORD}@127.0.0.1:{tls_server.port}/0"
    with pytest.raises(redis.ConnectionError):
        connect_url(untrusted, RedisSettings(retries=0), socket_timeout=2).ping()
    # The CA from fleet.yml's redis.tls_ca_file, with the hostname checked against the certificate.
    trusted = RedisSettings(tls_ca_file=str(tls.ca_file), tls_check_hostname=True)
    assert connect_url(untrusted, trusted).ping()


def test_worker_and_producer_over_rediss(tls_server: RedisServer, tls: ServerTls, tmp_path: Path) -> None:
    keys = Keys("tls" + secrets.token_hex(3))
    url = tls_server.url  # rediss://...?ssl_ca_certs=<ca>
    assert url.startswith("rediss://")
    producer = Producer(connect_url(url), keys)
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=4)) as sandbox:
        config_path = write_config(tmp_path / "fleet.yml", fast_config(url, keys.prefix, sandbox.url))
        # The CA through fleet.yml too (the URL's query would win); the worker reads both like an operator's.
        data = yaml.safe_load(config_path.read_text())
        data["redis"] = {"tls_ca_file": str(tls.ca_file)}
        config_path.write_text(yaml.safe_dump(data))
        log_path = tmp_path / "worker.log"
        worker = start_worker_unit(config_path, url.split("?")[0], sandbox.url, log_path, "tls")
        try:
            ids = [producer.submit("userrecaptcha", RECAPTCHA) for _ in range(10)]
            results = [producer.wait(task_id, timeout_s=30) for task_id in ids]
        finally:
            worker.terminate()
            assert worker.wait(timeout=30) == 0
    assert all(r is not None and r["status"] == "success" for r in results)
    assert PASSWORD not in log_path.read_text(errors="replace")


def test_doctor_checks_redis_over_tls(tls_server: RedisServer) -> None:
    env = dict(os.environ, REDIS_URL=tls_server.url)
    args = [sys.executable, "-m", "captcha_fleet.apps.cli", "doctor", "--json"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["redis"]["status"] == "ok", checks["redis"]
    assert PASSWORD not in done.stdout + done.stderr


def test_sentinel_set_over_tls(tls: ServerTls) -> None:
    with SentinelSet(password=PASSWORD, replicas=1, tls=tls) as sentinels:
        assert sentinels.url.startswith("rediss+sentinel://")
        client = connect_url(sentinels.url)
        client.set("k", "v")
        assert client.get("k") == b"v"


def test_the_redis_roles_config_serves_tls_and_its_acl_users(tls: ServerTls, tmp_path: Path) -> None:
    """redis.conf.j2 + users.acl.j2 as the role renders them, run by a real redis-server."""
    port = free_port()
    worker_pw = "w-" + secrets.token_hex(8)
    settings = {
        "redis_root": str(tmp_path),
        "redis_port": port,
        "redis_password": PASSWORD,
        "redis_fleet_passwords": {"worker": worker_pw},
        "redis_tls_enabled": True,
        "redis_tls_cert_file": str(tls.cert_file),
        "redis_tls_key_file": str(tls.key_file),
        "redis_tls_ca_file": str(tls.ca_file),
        "redis_service_manager_effective": "supervisord",
        "redis_replica_of_effective": "",
        "redis_appendonly": False,
    }
    variables = role_vars("redis", **settings)
    for name in ("redis_config_dir", "redis_data_dir", "redis_run_dir"):
        Path(variables[name]).mkdir(parents=True)
    render("redis", "users.acl.j2", Path(variables["redis_acl_file"]), **settings)
    render("redis", "replication.conf.j2", Path(variables["redis_config_dir"]) / "replication.conf", **settings)
    conf = render("redis", "redis.conf.j2", Path(variables["redis_config_file"]), **settings)
    server = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"rediss://worker:{worker_pw}@127.0.0.1:{port}/0?ssl_ca_certs={tls.ca_file}"
        client = connect_url(url, RedisSettings(failover_s=15.0))  # rides out the server's start
        assert client.set("captcha:worker:h:1", "{}")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
        default = connect_url(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={tls.ca_file}")
        assert default.config_get("tls-port")["tls-port"] == str(port)
        assert default.config_get("port")["port"] == "0"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_worker_without_the_ca_says_so_at_once_and_stops_on_sigterm(tls_server: RedisServer, tmp_path: Path) -> None:
    """An untrusted certificate is no lost connection: no 16 s of retries before the error, no minute to stop."""
    keys = Keys("tls" + secrets.token_hex(3))
    url = tls_server.url.split("?")[0]  # rediss:// without the CA
    config_path = write_config(tmp_path / "fleet.yml", fast_config(url, keys.prefix, "http://127.0.0.1:1"))
    log_path = tmp_path / "worker.log"
    worker = start_worker_unit(config_path, url, "http://127.0.0.1:1", log_path, "tls", "noca")
    try:
        said = wait_until(lambda: "certificate does not verify" in log_path.read_text(errors="replace"), 10)
        assert said, log_path.read_text(errors="replace")
        worker.terminate()
        worker.wait(timeout=15)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    text = log_path.read_text(errors="replace")
    assert "ERROR" in text and "redis.tls_" in text
    assert text.count("certificate does not verify") == 1, text  # said once, not once per retry or step
    assert PASSWORD not in text
