"""The redis and controller roles on a bare lab host: they converge, a second run changes nothing."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis
import yaml

from lab.env import REPO_ROOT, WHEELHOUSE, LabEnv
from tests.lab.helpers import controller_available

pytestmark = [pytest.mark.lab, pytest.mark.slow]
LAB_HOSTS = 1


def write_playbook(env: LabEnv, name: str, plays: list[dict[str, object]]) -> str:
    path = env.lab.dir / name
    path.write_text(yaml.safe_dump(plays, sort_keys=False), encoding="utf-8")
    return str(path)


def test_redis_role_binds_requires_the_password_and_persists_with_aof(lab: LabEnv) -> None:
    host = lab.lab.hosts[0]
    password = "lab-" + lab.secret_key[:12]
    playbook = write_playbook(
        lab,
        "redis.yml",
        [
            {
                "name": "Redis on a lab host",
                "hosts": host.name,
                "gather_facts": True,
                "roles": [{"role": "redis", "vars": {"redis_bind": [host.address], "redis_password": password}}],
            }
        ],
    )
    first = lab.run_playbook(playbook)
    assert first.status == "successful", first.stdout[-3000:]
    assert password not in first.stdout
    second = lab.run_playbook(playbook)
    assert second.total("changed") == 0
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=host.address, port=6379, socket_timeout=5).ping()
    client = redis.Redis(host=host.address, port=6379, password=password, socket_timeout=5)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    conf = Path(host.root) / "etc" / "captcha-redis" / "redis.conf"
    assert conf.stat().st_mode & 0o777 == 0o640


DISTRO_INIT = Path("/etc/init.d/redis-server")


def distro_redis_answers(netns: str) -> bool:
    """Whether the distribution's redis-server (127.0.0.1:6379, no password) answers inside the host."""
    proc = subprocess.run(["ip", "netns", "exec", netns, "redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"],
                          capture_output=True, text=True, check=False, timeout=10)  # fmt: skip
    return proc.stdout.strip() == "PONG"


def distro_redis_enabled() -> bool:
    return any(Path("/etc").glob("rc[2-5].d/S*redis-server"))


def test_redis_role_stops_and_disables_the_distributions_redis(lab: LabEnv) -> None:
    """The package starts its own redis-server on install; ours runs beside it, so the role stops and disables it."""
    if not DISTRO_INIT.exists():
        pytest.skip("the distribution's redis-server is not installed")
    host = lab.lab.hosts[0]
    was_enabled = distro_redis_enabled()
    subprocess.run(["ip", "netns", "exec", host.name, str(DISTRO_INIT), "start"], check=True, capture_output=True,
                   timeout=30)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not distro_redis_answers(host.name):
            assert time.monotonic() < deadline, "the distribution's redis-server did not start"
            time.sleep(0.2)
        role_vars = {"redis_bind": [host.address], "redis_password": "lab-" + lab.secret_key[:12],
                     "redis_distro_service": "redis-server"}  # fmt: skip
        playbook = write_playbook(
            lab,
            "redis-distro.yml",
            [
                {
                    "name": "Redis",
                    "hosts": host.name,
                    "gather_facts": True,
                    "roles": [{"role": "redis", "vars": role_vars}],
                }
            ],
        )
        first = lab.run_playbook(playbook)
        assert first.status == "successful", first.stdout[-3000:]
        assert not distro_redis_answers(host.name), "the distribution's redis-server still runs beside ours"
        assert not distro_redis_enabled(), "the distribution's redis-server still starts at boot"
        second = lab.run_playbook(playbook)
        assert second.status == "successful" and second.total("changed") == 0, second.stdout[-3000:]
    finally:
        subprocess.run(["ip", "netns", "exec", host.name, str(DISTRO_INIT), "stop"], check=False, capture_output=True,
                       timeout=30)  # fmt: skip
        if was_enabled and not distro_redis_enabled():
            subprocess.run(["update-rc.d", "redis-server", "enable"], check=False, capture_output=True, timeout=30)


def test_controller_role_runs_the_controller_service(lab: LabEnv) -> None:
    reason = controller_available()
    if reason:
        pytest.skip(reason)
    host = lab.lab.hosts[0]
    playbook = write_playbook(
        lab,
        "controller.yml",
        [
            {
                "name": "Controller on a lab host",
                "hosts": host.name,
                "gather_facts": False,
                "roles": [
                    {
                        "role": "controller",
                        "vars": {
                            "controller_redis_url": lab.redis.url,
                            "controller_key_prefix": lab.key_prefix,
                            "controller_extra_args": ["--actuator", "none"],
                            "controller_project_src": str(REPO_ROOT),
                            "worker_source_dir": str(lab.source),
                            "worker_wheelhouse_dir": str(WHEELHOUSE),
                            "controller_wheelhouse_transfer": "copy",  # the tar + unarchive path
                        },
                    }
                ],
            }
        ],
    )
    first = lab.run_playbook(playbook)
    assert first.status == "successful", first.stdout[-3000:]
    assert lab.redis.password not in first.stdout
    second = lab.run_playbook(playbook)
    assert second.total("changed") == 0
    client = lab.redis.client()
    deadline = time.monotonic() + 30
    while client.get(f"{lab.key_prefix}:controller:leader") is None:
        assert time.monotonic() < deadline, lab.supervisorctl(host.name, "status").stdout
        time.sleep(0.2)
    env_file = Path(host.root) / "etc" / "captcha-controller" / "controller.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
