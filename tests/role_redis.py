"""The redis role's own deployment on loopback: rendered redis.conf, users.acl, replication.conf and sentinel.conf.

Each node gets its own loopback address (127.0.0.2, .3, .4) and every node the same ports, as the role deploys
one Redis and one Sentinel per host: ``replicaof <primary> <redis_port>`` and ``sentinel monitor`` read exactly as
rendered. Used by the failover tests and ``bench/failover.py``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis

from captcha_fleet.contract.start_stop import StartStop
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.local_servers.redis_server import terminate
from captcha_fleet.local_servers.sentinel_server import ask_for_primary, sentinels_ready
from tests.role_templates import render, role_vars

MASTER = "fleet"
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def common_free_port(addresses: tuple[str, ...]) -> int:
    """A port free on every one of ``addresses`` (bounded tries)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every loopback address")


@dataclass
class RoleNode:
    """One host of the role: a Redis and a Sentinel on ``address``, configs rendered under ``root``."""

    address: str
    root: Path
    redis: subprocess.Popen[bytes] | None = None
    sentinel: subprocess.Popen[bytes] | None = None
    sentinel_conf: Path | None = None
    paused: bool = field(default=False)

    def start_redis(self, conf: Path) -> None:
        self.redis = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        """kill -9 of this node's Redis."""
        if self.redis is not None and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait()

    def pause(self) -> None:
        """SIGSTOP of this node's Redis (a frozen host: connections stay open, nothing answers)."""
        assert self.redis is not None
        os.kill(self.redis.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT."""
        if self.redis is not None and self.paused:
            os.kill(self.redis.pid, signal.SIGCONT)
        self.paused = False


class RoleRedisSet(StartStop):
    """Three hosts (primary + 2 replicas, 3 Sentinels) from the role's templates, with the fleet's ACL users."""

    def __init__(self, down_after_ms: int = 1000, failover_timeout_ms: int = 4000, min_replicas: int = 1) -> None:
        self.key_prefix = "fo" + secrets.token_hex(3)  # the ACL users' keys live under it
        self.password = "admin-" + secrets.token_hex(8)
        self.users = {role: f"{role}-{secrets.token_hex(8)}" for role in ("producer", "worker", "controller", "admin")}
        self.port = common_free_port(ADDRESSES)
        self.sentinel_port = common_free_port(ADDRESSES)
        self.dir = Path(tempfile.mkdtemp(prefix="captcha-fleet-role-redis-"))
        self.nodes = [RoleNode(address, self.dir / f"host{i}") for i, address in enumerate(ADDRESSES)]
        self.settings: dict[str, Any] = {
            "redis_port": self.port,
            "redis_fleet_key_prefix": self.key_prefix,
            "redis_password": self.password,
            "redis_fleet_passwords": self.users,
            "redis_service_manager_effective": "supervisord",
            "redis_appendonly": False,
            "redis_save": '""',
            "redis_protected_mode": False,
            "redis_replication_primary": ADDRESSES[0],
            "redis_min_replicas_to_write": min_replicas,
            "redis_sentinel_enabled": True,
            "redis_sentinel_port": self.sentinel_port,
            "redis_sentinel_master_name": MASTER,
            "redis_sentinel_quorum": 2,
            "redis_sentinel_down_after_ms": down_after_ms,
            "redis_sentinel_failover_timeout_ms": failover_timeout_ms,
        }

    def url(self, role: str) -> str:
        """``redis+sentinel://`` as ``role``'s user (secret: environment only)."""
        sentinels = ",".join(f"{a}:{self.sentinel_port}" for a in ADDRESSES)
        return f"redis+sentinel://{role}:{self.users[role]}@{sentinels}/{MASTER}/0"

    def start(self, timeout_s: float = 30.0) -> RoleRedisSet:
        """Render and start every Redis, then every Sentinel; return once the Sentinels see the whole set."""
        try:
            for i, node in enumerate(self.nodes):
                values = dict(
                    self.settings,
                    redis_root=str(node.root),
                    redis_bind=[node.address],
                    redis_sentinel_bind=[node.address],  # Ansible keeps "{{ redis_bind }}" a list; role_vars would not
                    redis_replica_of_effective="" if i == 0 else ADDRESSES[0],
                )
                variables = role_vars("redis", **values)
                for name in ("redis_config_dir", "redis_data_dir", "redis_run_dir"):
                    Path(variables[name]).mkdir(parents=True, exist_ok=True)
                config_dir = Path(variables["redis_config_dir"])
                render("redis", "users.acl.j2", Path(variables["redis_acl_file"]), **values)
                render("redis", "replication.conf.j2", config_dir / "replication.conf", **values)
                node.start_redis(render("redis", "redis.conf.j2", Path(variables["redis_config_file"]), **values))
                node.sentinel_conf = render(
                    "redis", "sentinel.conf.j2", Path(variables["redis_sentinel_config_file"]), **values
                )
                # On one machine every Sentinel's links leave from 127.0.0.1: say which host it stands for, as
                # its own address does on a real host (the rendered text is otherwise unchanged).
                with node.sentinel_conf.open("a") as conf:
                    conf.write(f"sentinel announce-ip {node.address}\n")
                self._wait_redis(node, timeout_s)
            for node in self.nodes:
                node.sentinel = subprocess.Popen(
                    ["redis-server", str(node.sentinel_conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            self._wait_sentinels(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def admin(self, node: RoleNode) -> redis.Redis:
        """A direct client to one node, as the admin user (no retries: for checks)."""
        return redis.Redis(node.address, self.port, username="admin", password=self.users["admin"], socket_timeout=2)

    def _wait_redis(self, node: RoleNode, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with self.admin(node) as client:
                    client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis on {node.address} did not start")

    def sentinel_client(self, node: RoleNode) -> redis.Redis:
        """A client to one Sentinel."""
        return redis.Redis(node.address, self.sentinel_port, socket_timeout=2, decode_responses=True)

    def _wait_sentinels(self, timeout_s: float) -> None:
        clients = [partial(self.sentinel_client, node) for node in self.nodes]
        if not wait_until(lambda: sentinels_ready(clients, MASTER, len(self.nodes) - 1), timeout_s, 0.1):
            raise RuntimeError("the Sentinels did not discover the replicas and each other in time")

    def primary_address(self) -> str | None:
        """The address the Sentinels name as primary (the first that answers), or None."""
        answer = ask_for_primary([partial(self.sentinel_client, node) for node in self.nodes], MASTER)
        return None if answer is None else answer[0]

    def primary(self) -> RoleNode:
        """The node the Sentinels name as primary."""
        address = self.primary_address()
        return next(node for node in self.nodes if node.address == address)

    def stop(self) -> None:
        """Stop every process (resuming a paused one first) and remove the directories."""
        for node in self.nodes:
            node.resume()
            terminate(node.sentinel)
            terminate(node.redis)
        shutil.rmtree(self.dir, ignore_errors=True)
