"""A production-shaped lab: ``inventory/production.example``'s layout on lab hosts, every feature on, all by site.yml.

The inventory is a directory as the example's README asks for: its ``group_vars`` files as they are, a vault
encrypted with a password file, ``known_hosts.txt`` beside ``hosts.yml``, and host variables for the lab (paths under
each host's root, supervisord, fast timings, the sandbox). Redis runs as the redis role renders it for production: a
primary and two replicas, three Sentinels, one ACL user per component and TLS everywhere (a throwaway CA). A
controller and a standby run on different hosts; workers run on at least three hosts. Four hosts by default::

    h1  Redis primary, Sentinel
    h2  Redis replica, Sentinel, workers, controller
    h3  Redis replica, Sentinel, workers, controller (standby)
    h4  workers

``python -m lab.production up`` brings it up and holds it until Ctrl-C (docs/lab.md); the game day
(``lab/gameday.py``) and the lab tests use :func:`production_lab`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from captcha_fleet.contract.redis_connect import RedisSettings, connect_url
from captcha_fleet.local_servers.throwaway_ca import make_ca_and_server_cert
from lab.env import REPO_ROOT, LabEnv, PlaybookResult, fresh_lab

EXAMPLE = REPO_ROOT / "inventory" / "production.example"
ROLES = ("producer", "worker", "controller", "monitoring", "admin")
HOSTS = 4
# Lab settings the production inventory has no business with (they come from the lab's generated inventory).
NOT_FROM_LAB = {"worker_redis_url", "worker_api_key"}
SENTINEL_PORT = 26379
MASTER_NAME = "fleet"

# Fast timings for a lab whose sandbox runs at 1/100 of real time. The heartbeat outlives a Sentinel failover
# (down-after 2 s + election) but not a host cut for long: a cut host's services are replaced in seconds.
WORKER_SETTINGS: dict[str, Any] = {
    "heartbeat_interval_s": 0.5,
    "heartbeat_ttl_s": 6.0,
    "reaper_interval_s": 1.0,
    "drain_timeout_s": 10.0,
    "claim_timeout_s": 0.5,
    "initial_slots": 4,
}
REDIS_SETTINGS: dict[str, Any] = {"wait_replicas": 1, "wait_timeout_ms": 2000, "failover_s": 10.0}
CONTROLLER_SETTINGS: dict[str, Any] = {
    "interval_s": 1.0,
    "scale_down_window_s": 8.0,
    "plan_threads": 100,
    "min_slots": 4,
    "max_slots": 16,
    "slots_per_service": 4,
    "min_services": 1,
    "max_services": 4,
    "service_headroom": 0.0,
    "service_startup_s": 4.0,
    "solve_time_prior_s": 0.3,
    "p95_target_s": 3.0,
    "leader_ttl_s": 5.0,
    "drain_timeout_s": 15.0,
    "instances_per_host": 2,
    "stale_after_s": 10.0,
}
ACTUATOR_SETTINGS: dict[str, Any] = {"timeout_s": 90, "retry_unreachable_s": 5.0}


@dataclass
class ProductionLab:
    """A deployed production-shaped lab: where everything is, and its secrets (kept in files of mode 0600)."""

    env: LabEnv
    inventory: Path
    vault_password_file: Path
    passwords: dict[str, str]
    default_password: str
    api_key: str
    ca_file: Path
    redis_hosts: list[str]
    worker_hosts: list[str]
    controller_hosts: list[str]
    deployments: list[PlaybookResult] = field(default_factory=list)

    @property
    def key_prefix(self) -> str:
        return self.env.key_prefix

    def address(self, host: str) -> str:
        return next(h.address for h in self.env.lab.hosts if h.name == host)

    def sentinel_url(self, role: str) -> str:
        """The URL a component of ``role`` uses: TLS to the Sentinels and to the data nodes."""
        sentinels = ",".join(f"{self.address(h)}:{SENTINEL_PORT}" for h in self.redis_hosts)
        return f"rediss+sentinel://{role}:{self.passwords[role]}@{sentinels}/{MASTER_NAME}/0"

    def redis_settings(self, **changes: Any) -> RedisSettings:
        return RedisSettings(tls_ca_file=str(self.ca_file), **{**REDIS_SETTINGS, **changes})

    def client(self, role: str = "admin", **changes: Any) -> redis.Redis:
        """A client of the fleet's Redis as ``role``, through the Sentinels, over TLS."""
        return connect_url(self.sentinel_url(role), self.redis_settings(**changes))

    def node_client(self, host: str) -> redis.Redis:
        """The admin user on one data node (not through Sentinel): for roles and the ACL log."""
        return redis.Redis(
            host=self.address(host), port=6379, username="admin", password=self.passwords["admin"],
            ssl=True, ssl_ca_certs=str(self.ca_file), ssl_check_hostname=False, socket_timeout=3,
        )  # fmt: skip

    def roles(self) -> dict[str, str]:
        """Each Redis host's replication role (``master``, ``slave`` or ``down``)."""
        out = {}
        for host in self.redis_hosts:
            try:
                out[host] = str(self.node_client(host).info("replication")["role"])
            except (redis.RedisError, OSError):
                out[host] = "down"
        return out

    def primary(self) -> str:
        """The host whose Redis most Sentinels name as primary now (a returning old primary calls itself master
        until the Sentinels demote it: its own role is not the answer)."""
        named: list[str] = []
        for host in self.redis_hosts:
            sentinel = redis.Redis(
                host=self.address(host), port=SENTINEL_PORT, ssl=True, ssl_ca_certs=str(self.ca_file),
                ssl_check_hostname=False, socket_timeout=3,
            )  # fmt: skip
            try:
                address = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
            except (redis.RedisError, OSError):
                continue
            finally:
                sentinel.close()
            if isinstance(address, tuple):
                ip = address[0].decode() if isinstance(address[0], bytes) else address[0]
                named += [h for h in self.redis_hosts if self.address(h) == ip]
        if not named:
            raise RuntimeError("no Sentinel answers for the primary")
        return max(set(named), key=named.count)

    def settled(self) -> bool:
        """One master, every other data node its replica: the set is whole again after a fault."""
        roles = self.roles()
        return sorted(roles.values()) == ["master"] + ["slave"] * (len(roles) - 1)

    def playbook(self, playbook: str, timeout_s: int = 900, **kwargs: Any) -> PlaybookResult:
        """``playbooks/<playbook>`` from the directory inventory, the vault opened by its password file (kept in
        ``deployments``, whose output the secret checks read)."""
        result = self.env.run_playbook(
            playbook,
            inventory=self.inventory,
            envvars={"ANSIBLE_VAULT_PASSWORD_FILE": str(self.vault_password_file)},
            timeout_s=timeout_s,
            **kwargs,
        )
        self.deployments.append(result)
        return result

    def site(self, timeout_s: int = 900, **kwargs: Any) -> PlaybookResult:
        """``site.yml`` from the directory inventory, the vault opened by its password file."""
        return self.playbook("site.yml", timeout_s, **kwargs)

    def secrets(self) -> list[str]:
        """Every secret of the deployment (for 'never in logs, argv or artifacts' checks)."""
        return [*self.passwords.values(), self.default_password, self.api_key]

    def rotate_api_key(self) -> str:
        """A new API key in the vault (as an operator re-encrypts it); site.yml rolls it out."""
        self.api_key = secrets.token_hex(16)
        write_vault(self.inventory, self.vault_password_file, self._vault())
        return self.api_key

    def _vault(self) -> dict[str, str]:
        return {
            "vault_redis_password": self.default_password,
            "vault_captchaai_key": self.api_key,
            "vault_actuator_ssh_key": self.env.lab.key_path.read_text(encoding="utf-8"),
            **{f"vault_redis_{role}_password": pw for role, pw in self.passwords.items()},
        }


def topology(hosts: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(redis hosts, worker hosts, controller hosts) for ``hosts`` (at least four): see the module's table."""
    if len(hosts) < HOSTS:
        raise ValueError(f"a production-shaped lab needs at least {HOSTS} hosts, got {len(hosts)}")
    return list(hosts[:3]), list(hosts[1:]), [hosts[1], hosts[2]]


def write_vault(inventory: Path, password_file: Path, values: Mapping[str, str]) -> None:
    """Encrypt ``group_vars/all/vault.yml`` as an operator does (``ansible-vault``), plaintext only through a pipe."""
    subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "ansible-vault"), "encrypt", "--vault-password-file", str(password_file),
         "--output", str(inventory / "group_vars" / "all" / "vault.yml"), "-"],
        input=yaml.safe_dump(dict(values)), text=True, check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def write_secret(path: Path, text: str) -> None:
    """``text`` in a file only its owner reads (mode 0600 from the start, never readable in between)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _tls_files(env: LabEnv) -> tuple[Path, Path, Path]:
    """A throwaway CA and one server certificate for every lab address, readable by the redis user only."""
    directory = env.lab.dir / "tls"
    tls = make_ca_and_server_cert(directory, tuple(h.address for h in env.lab.hosts))
    ca, cert, key = Path(tls.ca_file), Path(tls.cert_file), Path(tls.key_file)
    ca.chmod(0o644)
    cert.chmod(0o644)
    directory.chmod(0o755)
    shutil.chown(key, "redis", "redis")
    return ca, cert, key


def lab_vars(env: LabEnv) -> dict[str, Any]:
    """The lab's own inventory variables (paths, supervisord, timings) that a production-shaped inventory keeps."""
    found = yaml.safe_load(env.inventory.read_text(encoding="utf-8"))["all"]["children"]["lab"]["vars"]
    return {k: v for k, v in found.items() if k not in NOT_FROM_LAB}


def write_example_inventory(
    env: LabEnv,
    inventory: Path,
    groups: Mapping[str, Sequence[str]],
    host_vars: Mapping[str, Any],
    vault_password_file: Path,
    vault: Mapping[str, str],
) -> None:
    """``inventory`` as inventory/production.example's layout with the lab's hosts in ``groups``: the example's
    ``group_vars`` files as they are, every host with ``host_vars`` (and its address and root) in ``hosts.yml``, the
    vault encrypted. No host variable of the example's own hosts survives; its groups must be ``groups``."""
    if inventory.exists():
        shutil.rmtree(inventory)
    shutil.copytree(EXAMPLE / "group_vars", inventory / "group_vars")
    hosts: dict[str, Any] = {"all": {"children": {}}}
    for group, members in groups.items():
        hosts["all"]["children"][group] = {
            "hosts": {
                h.name: {"ansible_host": h.address, "lab_root": h.root, **host_vars}
                for h in env.lab.hosts
                if h.name in members
            }
        }
    example_groups = set(yaml.safe_load((EXAMPLE / "hosts.yml").read_text(encoding="utf-8"))["all"]["children"])
    if set(groups) != example_groups:
        raise RuntimeError(
            f"inventory/production.example's groups changed ({example_groups}): update lab/production.py"
        )
    write_secret(inventory / "hosts.yml", yaml.safe_dump(hosts, sort_keys=False))
    write_vault(inventory, vault_password_file, vault)


def write_inventory(fleet: ProductionLab, cert: Path, key: Path) -> None:
    """inventory/production.example with the lab's hosts, Sentinels, ACL users and TLS (the example's commented
    block, turned on); lab settings as host variables so ``group_vars`` stay the example's own files."""
    env = fleet.env
    sandbox = env.sandbox.url if env.sandbox else ""
    primary = fleet.address(fleet.redis_hosts[0])
    sentinels = [fleet.address(h) for h in fleet.redis_hosts]
    redis_settings = {**REDIS_SETTINGS, "tls_ca_file": str(fleet.ca_file)}

    def url(role: str) -> str:
        hosts = ",".join(f"{a}:{SENTINEL_PORT}" for a in sentinels)
        return f"rediss+sentinel://{role}:{{{{ vault_redis_{role}_password }}}}@{hosts}/{MASTER_NAME}/0"

    common = {
        **lab_vars(env),
        "redis_bind": ["{{ ansible_host }}"],
        "redis_replication_primary": primary,
        "redis_min_replicas_to_write": 1,
        "redis_sentinel_enabled": True,
        "redis_sentinel_addresses": sentinels,
        "redis_sentinel_down_after_ms": 2000,
        "redis_sentinel_failover_timeout_ms": 2000,
        "redis_fleet_key_prefix": env.key_prefix,
        "redis_fleet_passwords": {role: f"{{{{ vault_redis_{role}_password }}}}" for role in ROLES},
        "redis_tls_enabled": True,
        "redis_tls_cert_file": str(cert),
        "redis_tls_key_file": str(key),
        "redis_tls_ca_file": str(fleet.ca_file),
        "worker_redis_url": url("worker"),
        "worker_redis_settings": redis_settings,
        "worker_api_base": sandbox,
        "worker_key_prefix": env.key_prefix,
        "worker_settings": WORKER_SETTINGS,
        "worker_instances": [],  # the controller decides how many run where
        "controller_redis_url": url("controller"),
        "controller_api_base": sandbox,
        "controller_key_prefix": env.key_prefix,
        "controller_settings": CONTROLLER_SETTINGS,
        "controller_actuator_settings": ACTUATOR_SETTINGS,
    }
    groups = {"redis": fleet.redis_hosts, "workers": fleet.worker_hosts, "controller": fleet.controller_hosts}
    write_example_inventory(env, fleet.inventory, groups, common, fleet.vault_password_file, fleet._vault())
    # The workers' host keys, as the example's README asks (checked once; the controller's actuator reads them).
    shutil.copy2(env.lab.known_hosts, fleet.inventory / "known_hosts.txt")


@contextmanager
def production_lab(
    hosts: int = HOSTS, key_prefix: str = "prod", deploy: bool = True, keep: bool = False
) -> Iterator[ProductionLab]:
    """A fresh lab of ``hosts`` hosts with the production-shaped inventory, deployed by ``site.yml`` (``deploy``)."""
    with fresh_lab(hosts, key_prefix=key_prefix, sandbox_time_scale=0.01, keep=keep) as env:
        names = env.hosts
        redis_hosts, worker_hosts, controller_hosts = topology(names)
        password_file = env.lab.dir / "vault-password"
        write_secret(password_file, secrets.token_hex(12) + "\n")
        ca, cert, key = _tls_files(env)
        fleet = ProductionLab(
            env=env,
            inventory=env.lab.dir / "production",
            vault_password_file=password_file,
            passwords={role: f"{role}-{secrets.token_hex(12)}" for role in ROLES},
            default_password=secrets.token_hex(16),
            api_key=secrets.token_hex(16),
            ca_file=ca,
            redis_hosts=redis_hosts,
            worker_hosts=worker_hosts,
            controller_hosts=controller_hosts,
        )
        write_inventory(fleet, cert, key)
        if deploy:
            result = fleet.site()
            if result.status != "successful":
                raise RuntimeError(f"site.yml failed ({result.status}):\n{result.stdout[-4000:]}")
        yield fleet


def _up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with production_lab(args.hosts) as fleet:
        print(f"production-shaped lab up in {time.monotonic() - started:.0f} s (site.yml)")
        print(f"  inventory:      {fleet.inventory}  (-i; vault password file {fleet.vault_password_file})")
        print(f"  redis:          {', '.join(fleet.redis_hosts)} (primary {fleet.primary()}; Sentinels, ACL, TLS)")
        print(f"  workers:        {', '.join(fleet.worker_hosts)}")
        print(f"  controllers:    {', '.join(fleet.controller_hosts)} (one leads, one stands by)")
        print(f"  key prefix:     {fleet.key_prefix}; sandbox {fleet.env.sandbox.url if fleet.env.sandbox else '-'}")
        print("  the monitoring user's URL is in the inventory's vault; Ctrl-C tears the lab down")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("tearing the lab down")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.production", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring the lab up, deploy it with site.yml, hold it until Ctrl-C")
    up.add_argument("--hosts", type=int, default=HOSTS, help=f"lab hosts (at least {HOSTS})")
    args = parser.parse_args(argv)
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
