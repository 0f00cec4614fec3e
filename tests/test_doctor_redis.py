"""doctor's Redis checks: the Sentinel set (quorum reachable, one primary), the ACL user, TLS."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from captcha_fleet.apps.doctor.checks import Status
from captcha_fleet.apps.doctor.redis_checks import check_acl_user, check_tls
from captcha_fleet.contract.config import FleetConfig
from captcha_fleet.local_servers.redis_server import RedisServer
from captcha_fleet.local_servers.sentinel_server import SentinelSet
from captcha_fleet.local_servers.throwaway_ca import make_ca_and_server_cert
from tests.role_templates import render

PASSWORD = "doc-" + secrets.token_hex(10)


def doctor(url: str) -> dict[str, dict[str, Any]]:
    """``captcha-fleet doctor --json`` with REDIS_URL in the environment; the checks by name."""
    env = dict(os.environ, REDIS_URL=url)
    args = [sys.executable, "-m", "captcha_fleet.apps.cli", "doctor", "--json", "--timeout", "2"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert PASSWORD not in done.stdout + done.stderr
    return {c["name"]: c for c in json.loads(done.stdout)["checks"]}


@pytest.fixture()
def sentinels() -> Iterator[SentinelSet]:
    with SentinelSet(password=PASSWORD, replicas=1) as the_set:
        yield the_set


def test_doctor_checks_the_sentinel_set_and_its_quorum(sentinels: SentinelSet) -> None:
    checks = doctor(sentinels.url)
    assert checks["redis"]["status"] == "ok", checks["redis"]
    assert checks["sentinel"]["status"] == "ok", checks["sentinel"]
    assert checks["sentinel"]["data"]["primaries"] == [f"127.0.0.1:{sentinels.primary.port}"]
    sentinels.sentinels[0].stop()
    checks = doctor(sentinels.url)
    assert checks["sentinel"]["status"] == "warn", checks["sentinel"]
    sentinels.sentinels[1].stop()
    checks = doctor(sentinels.url)
    assert checks["sentinel"]["status"] == "fail", checks["sentinel"]
    assert "2 needed for a failover" in checks["sentinel"]["detail"]


def test_doctor_skips_sentinel_for_one_server_and_warns_about_the_default_user(redis_url: str) -> None:
    checks = doctor(redis_url)
    assert checks["sentinel"]["status"] == "skip"
    assert checks["redis-user"]["status"] == "warn" and "default user" in checks["redis-user"]["detail"]
    assert checks["redis-tls"]["status"] == "ok"  # loopback only


def test_acl_user_is_reported(tmp_path: Path) -> None:
    passwords = {"worker": "w-" + secrets.token_hex(8), "admin": "a-" + secrets.token_hex(8)}
    acl = render("redis", "users.acl.j2", tmp_path / "users.acl", redis_fleet_passwords=passwords,
                 redis_password="", redis_default_user_enabled=False)  # fmt: skip
    with RedisServer(username="admin", password=passwords["admin"], extra_conf=f"aclfile {acl}") as server:
        for role, expected in (("worker", "'worker'"), ("admin", "'admin'")):  # the matrix allows ACL WHOAMI
            url = f"redis://{role}:{passwords[role]}@127.0.0.1:{server.port}/0"
            result = check_acl_user(FleetConfig(redis_url=url), 2.0)
            assert result.status is Status.OK and expected in result.detail and role in result.detail


def test_tls_check_reports_the_certificate_or_the_missing_ca(tmp_path: Path) -> None:
    tls = make_ca_and_server_cert(tmp_path / "ca")
    with RedisServer(password=PASSWORD, tls=tls) as server:
        ok = check_tls(FleetConfig(redis_url=server.url), 2.0)
        assert ok.status is Status.OK and "TLSv1.3" in ok.detail and "more day(s)" in ok.detail
        bare = server.url.split("?")[0]
        failed = check_tls(FleetConfig(redis_url=bare), 2.0)
        assert failed.status is Status.FAIL and "redis.tls_ca_file" in failed.detail
