"""A real redis-server loading the redis role's ACL template, one user per role, and the fleet helper run as the
playbooks run it: the rig of the ACL tests.

Its ``acl_server`` and ``admin`` fixtures reach every test through ``pytest_plugins`` in ``tests/conftest.py``, so
the tests that need the ACL users share one rig without importing fixtures by name.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from captcha_fleet.contract.redis_connect import connect_url
from captcha_fleet.local_servers.redis_server import RedisServer
from tests.role_templates import render

PREFIX = "aclfleet"
PASSWORDS = {
    role: f"{role}-{secrets.token_hex(10)}" for role in ("producer", "worker", "controller", "monitoring", "admin")
}
HELPER = Path(__file__).resolve().parent.parent / "captcha_fleet" / "apps" / "fleet_helper.py"


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


def reset_acl_log(admin: redis.Redis) -> None:
    admin.execute_command("ACL", "LOG", "RESET")  # type: ignore[no-untyped-call]


def acl_refusals(admin: redis.Redis) -> list[tuple[str, str, str]]:
    """What Redis refused since the last ``ACL LOG RESET``: (user, command, key or command refused)."""
    entries = admin.execute_command("ACL", "LOG")  # type: ignore[no-untyped-call]
    found = []
    for entry in entries:
        fields = dict(zip(entry[::2], entry[1::2], strict=True)) if isinstance(entry, list) else entry
        text = {str(k, "utf-8") if isinstance(k, bytes) else str(k): v for k, v in fields.items()}
        info = text.get("client-info", b"")
        info = info.decode() if isinstance(info, bytes) else str(info)
        command = next((part[4:] for part in info.split() if part.startswith("cmd=")), "?")
        found.append((_text(text.get("username")), command, _text(text.get("object"))))
    return found


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def run_helper(tmp_path: Path, server: RedisServer, role: str, *args: str) -> tuple[int, dict[str, Any]]:
    """The fleet helper as the playbooks run it, with ``role``'s credentials in its env file."""
    config = tmp_path / "helper-fleet.yml"
    config.write_text(f"key_prefix: {PREFIX}\n", encoding="utf-8")
    env_file = tmp_path / "helper.env"
    env_file.write_text(f"REDIS_URL='{url_for(server, role)}'\nCAPTCHAAI_KEY='k'\n", encoding="utf-8")
    env_file.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, str(HELPER), "--config", str(config), "--env-file", str(env_file), *args],
        capture_output=True, text=True, check=False, timeout=90,
    )  # fmt: skip
    assert PASSWORDS[role] not in proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])
