"""The redis and controller roles on a bare lab host: they converge, a second run changes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
import yaml

from tests.lab_fixtures import REPO_ROOT, WHEELHOUSE, LabEnv, controller_available, lab  # noqa: F401

pytestmark = [pytest.mark.lab, pytest.mark.slow]
LAB_HOSTS = 1


def write_playbook(env: LabEnv, name: str, plays: list[dict[str, object]]) -> str:
    path = env.lab.dir / name
    path.write_text(yaml.safe_dump(plays, sort_keys=False), encoding="utf-8")
    return str(path)


def test_redis_role_binds_requires_the_password_and_persists_with_aof(lab: LabEnv) -> None:  # noqa: F811
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


def test_controller_role_runs_the_controller_service(lab: LabEnv) -> None:  # noqa: F811
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
