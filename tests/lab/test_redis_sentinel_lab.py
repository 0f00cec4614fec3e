"""End to end over real SSH: site.yml provisions a primary, two replicas and three Sentinels with per-role ACL
users; workers on the lab hosts reach Redis through Sentinel; every playbook and the ansible actuator run as their
role users. (Failover under load is the game day's: tests/lab/test_gameday_lab.py.)
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.redis_connect import connect_url
from lab.env import WORKER_SETTINGS, LabEnv, read_heartbeats
from tests.lab.helpers import worker_available

pytestmark = [pytest.mark.lab, pytest.mark.slow]
LAB_HOSTS = 3
LAB_SANDBOX = True
TASKS = 1200
WAIT: dict[str, int] = {"wait_replicas": 1, "wait_timeout_ms": 3000}
PASSWORDS = {role: f"{role}-{secrets.token_hex(10)}" for role in ("producer", "worker", "controller", "admin")}
DEFAULT_PASSWORD = "default-" + secrets.token_hex(10)


def sentinel_url(env: LabEnv, role: str) -> str:
    hosts = ",".join(f"{h.address}:26379" for h in env.lab.hosts)
    return f"redis+sentinel://{role}:{PASSWORDS[role]}@{hosts}/fleet/0"


def write_inventory(env: LabEnv) -> None:
    """The lab's inventory with every host in the redis group too (a data node and a Sentinel each)."""
    # A heartbeat outlives a failover (down-after 2 s + election): a live worker is not reaped while Redis moves.
    settings = {**WORKER_SETTINGS, "heartbeat_interval_s": 1.0, "heartbeat_ttl_s": 25.0}
    env.write_inventory(
        worker_redis_url=sentinel_url(env, "worker"), worker_redis_settings=WAIT, worker_settings=settings
    )
    inventory = yaml.safe_load(env.inventory.read_text())
    groups = inventory["all"]["children"]["lab"]["children"]
    groups["redis"] = {
        "hosts": {h.name: {} for h in env.lab.hosts},
        "vars": {
            "redis_bind": ["{{ ansible_host }}"],
            "redis_password": DEFAULT_PASSWORD,
            "redis_fleet_passwords": PASSWORDS,
            "redis_fleet_key_prefix": env.key_prefix,
            "redis_replication_primary": env.lab.hosts[0].address,
            "redis_min_replicas_to_write": 1,
            "redis_sentinel_enabled": True,
            "redis_sentinel_addresses": [h.address for h in env.lab.hosts],
            "redis_sentinel_down_after_ms": 2000,
            # A split vote between the two surviving Sentinels is retried after twice this.
            "redis_sentinel_failover_timeout_ms": 2000,
        },
    }
    env.inventory.write_text(yaml.safe_dump(inventory, sort_keys=False))


def admin_client(env: LabEnv) -> redis.Redis:
    return connect_url(sentinel_url(env, "admin"))


def roles_of(env: LabEnv) -> dict[str, str]:
    out = {}
    for host in env.lab.hosts:
        try:
            client = redis.Redis(host=host.address, username="admin", password=PASSWORDS["admin"], socket_timeout=2)
            out[host.name] = str(client.info("replication")["role"])
        except (redis.RedisError, OSError):
            out[host.name] = "down"
    return out


def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
        except redis.RedisError:  # the observer's own retries ran out while Redis moves: ask again
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def sentinel_set(lab: LabEnv) -> LabEnv:
    """site.yml provisions the Sentinel set with per-role users and workers on every host (the failover under load
    is the game day's: tests/lab/test_gameday_lab.py, on the production-shaped lab with TLS and the controllers)."""
    reason = worker_available()
    if reason:
        pytest.skip(reason)
    write_inventory(lab)
    first = lab.run_playbook("site.yml")
    assert first.status == "successful", first.stdout[-3000:]
    for secret in [*PASSWORDS.values(), DEFAULT_PASSWORD]:
        assert secret not in first.stdout
    primary, *replicas = lab.lab.hosts
    assert roles_of(lab) == {primary.name: "master", **{h.name: "slave" for h in replicas}}
    return lab


def instances_of(client: redis.Redis, env: LabEnv, host: str) -> set[str]:
    return {b.instance for b in read_heartbeats(client, env.key_prefix, host) if b.state == "running"}


def test_the_playbooks_and_the_actuator_run_as_their_role_users(sentinel_set: LabEnv, tmp_path: Path) -> None:
    """Per-role users on, the default user's password known to no tool: a hand-run scale.yml, a rolling update
    (host lock, drain flag, restart, gate) and decommission.yml go through the fleet helper as the worker user,
    and the ansible actuator takes its host lock as the controller user; Redis refuses none of it (ACL LOG)."""
    from captcha_fleet.controller.actuators.ansible import AnsibleActuator, AnsibleActuatorConfig
    from captcha_fleet.controller.hosts.lock import RedisHostLock

    lab = sentinel_set
    keys = Keys(lab.key_prefix)
    admin = admin_client(lab)
    wait_for(lambda: all(instances_of(admin, lab, h) for h in lab.hosts), 90, "a worker on every host")
    admin.acl_log_reset()
    h1, h2, h3 = lab.hosts

    scaled = lab.run_playbook("scale.yml", extravars={"captcha_worker_instances": {h1: ["1", "a1"]}}, limit=h1)
    assert scaled.status == "successful", scaled.stdout[-3000:]
    wait_for(lambda: instances_of(admin, lab, h1) == {"1", "a1"}, 90, "scale.yml's instances on the first host")

    controller = connect_url(sentinel_url(lab, "controller"))
    running = {h: frozenset(instances_of(admin, lab, h)) for h in lab.hosts}
    config = AnsibleActuatorConfig(
        inventory=lab.inventory, data_dir=tmp_path / "runner", max_services_per_host=4, timeout_s=180
    )
    actuator = AnsibleActuator(config, running=running, host_lock=RedisHostLock(controller, keys, token="ctl"))
    try:
        actuator.apply({**running, h2: running[h2] | {"b1"}})
        assert actuator.wait_idle(240), "the actuator's run did not end"
        assert [run.status for run in actuator.runs] == ["successful"], [vars(run) for run in actuator.runs]
    finally:
        actuator.close()
    wait_for(lambda: "b1" in instances_of(admin, lab, h2), 90, "the actuator's new service")
    assert not admin.exists(keys.host_lock(h2)), "the actuator gave the host lock back"

    # A rolling update that must take every host's lock and drain flag: each host's gated release is marked as
    # another one, so the roll drains, restarts and gates every host (with the release it already runs).
    for host in lab.hosts:
        (lab.worker_base(host) / "gated-release").write_text("/opt/an-earlier-release\n")
    rolled = lab.run_playbook("rolling_update.yml")
    assert rolled.status == "successful", rolled.stdout[-3000:]
    for host in lab.hosts:
        gated = (lab.worker_base(host) / "gated-release").read_text().strip()
        assert gated.endswith(lab.current_release(host)), (host, gated)
        assert not admin.exists(keys.host_draining(host)) and not admin.exists(keys.host_lock(host))

    retired = lab.run_playbook("decommission.yml", limit=h3)
    assert retired.status == "successful", retired.stdout[-3000:]
    wait_for(lambda: not instances_of(admin, lab, h3), 60, "no worker left on the decommissioned host")
    assert not admin.exists(keys.host_draining(h3))

    for result in (scaled, rolled, retired):
        for secret in [*PASSWORDS.values(), DEFAULT_PASSWORD]:
            assert secret not in result.stdout
    # The one refusal expected: a worker's result retention, tried once per process (the controller's leader runs it
    # under these users, and the worker says so once); nothing any playbook or the actuator sent was refused.
    refused = [
        e for e in admin.acl_log()
        if not (e.get("username") == "worker" and e.get("context") == "lua"
                and str(e.get("object", "")).endswith(":results:expiry"))
    ]  # fmt: skip
    assert refused == [], refused
