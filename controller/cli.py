"""``captcha-fleet controller``: the fleet's brain, one leader at a time, acting through the local actuator."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any

from captcha_fleet.contract.common_cli import print_json
from captcha_fleet.contract.config import ConfigError, FleetConfig

if TYPE_CHECKING:
    from .actuators.local import LocalProcessActuator
    from .metrics import ControllerMetrics
    from .settings import ControllerSettings

log = logging.getLogger("controller")


HELP = "run the controller (scales the fleet; one leader, others stand by)"
DESCRIPTION = (
    "Read the fleet's signals from Redis every controller.interval_s, decide its "
    "concurrency (--policy), write thread targets and start/stop worker services with the "
    "local process actuator. Run two for failover: the standby takes over when the leader's lock "
    "expires. Every decision goes to the log and to {prefix}:controller:decisions. With --actuator ansible "
    "the inventory is re-read every ansible_actuator.inventory_refresh_s and on SIGHUP."
)


def register(subparsers: Any) -> None:
    """Add the ``controller`` subcommand."""
    from captcha_fleet.contract.common_cli import add_subcommand

    p = add_subcommand(subparsers, "controller", run, HELP, DESCRIPTION, common=True, api_base="getbalance")
    p.add_argument("--policy", default="queue-model", help="queue-model (default), seed, keda, static:N, ...")
    p.add_argument(
        "--actuator",
        choices=["local", "ansible", "none"],
        default="local",
        help="local: run worker services as processes here; ansible: across the inventory with ansible-runner "
        "(the ansible_actuator: section of fleet.yml); none: thread targets only",
    )
    p.add_argument("--inventory", metavar="PATH", help="Ansible inventory for --actuator ansible")
    p.add_argument("--host-name", metavar="NAME", help="host name for local services (default: hostname)")
    p.add_argument("--worker-log-dir", metavar="DIR", help="append each local service's output to DIR/H-N.log")
    p.add_argument(
        "--stop-workers-on-exit", action="store_true", help="SIGTERM the local services when the controller exits"
    )
    p.add_argument("--once", action="store_true", help="take the lock, evaluate once, print the decision, exit")


def _worker_env(config: FleetConfig) -> dict[str, str]:
    """The environment of a local service: ours, plus the Redis URL and API base (secrets stay off argv)."""
    env = dict(os.environ)
    env["REDIS_URL"] = config.redis_url
    env["CAPTCHAAI_BASE"] = config.api.base
    if config.api.key and not env.get("CAPTCHAAI_KEY"):
        env["CAPTCHAAI_KEY"] = config.api.key
    return env


def _require_controller_extra() -> None:
    """A worker-only install lacks Ansible: say so at start-up, not at the first scale run."""
    import importlib.util

    missing = [name for name in ("ansible_runner", "ansible") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"--actuator ansible needs {' and '.join(missing)}, which this install lacks: "
            "install the controller extra (pip install 'captcha-fleet[controller]')"
        )


def build(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The controller, its actuator and the inventory re-reader (or None), from the flags and fleet.yml."""
    import socket

    from captcha_fleet.contract.common_cli import config_from_args, redis_client

    from .leader import LeaderLock
    from .loop import Controller
    from .settings import settings_from_config
    from .sources.balance import BalanceTracker, http_balance_fetch
    from .sources.redis_signals import RedisSignalSource
    from .strategies.registry import UnknownPolicyError, make_policy

    config = config_from_args(args)
    settings = settings_from_config(config)
    if args.host_name:
        settings = replace(settings, host_name=args.host_name)
    host = settings.host_name or os.environ.get("CAPTCHA_FLEET_HOST") or socket.gethostname()
    try:
        policy = make_policy(args.policy, settings)
    except UnknownPolicyError as exc:
        raise ConfigError(f"--policy: {exc}") from None
    client = redis_client(config)
    fetch = http_balance_fetch(config.api.base, config.api.key) if config.api.key else None
    balance = BalanceTracker(fetch, cache_s=settings.balance_cache_s)
    source = RedisSignalSource(client, config.keys, settings, balance)
    actuator: Any = None  # a ServiceActuator (local or ansible), or none
    refresher: Any = None  # an InventoryRefresher with the ansible actuator
    if args.actuator == "local":
        actuator = _local_actuator(args, config, settings, host)
    elif args.actuator == "ansible":
        actuator, refresher = _ansible_actuator(args, config, client)
    lock = LeaderLock(client, config.keys.controller_leader, settings.leader_ttl_s)
    metrics = _metrics(settings)
    controller = Controller(client, config.keys, settings, policy, source, actuator, lock, metrics=metrics)
    return controller, actuator, refresher


def _local_actuator(
    args: argparse.Namespace, config: FleetConfig, settings: ControllerSettings, host: str
) -> LocalProcessActuator:
    """The local process actuator: worker services as processes on this host."""
    from .actuators.local import LocalProcessActuator, worker_command

    config_path = os.path.abspath(args.config) if args.config else None
    command = worker_command(config_path, config.key_prefix, args.log_level)
    return LocalProcessActuator(
        host,
        command,
        env=_worker_env(config),
        max_services=settings.instances_per_host,
        log_dir=args.worker_log_dir,
        stop_timeout_s=settings.drain_timeout_s + 30,
    )


def _ansible_actuator(args: argparse.Namespace, config: FleetConfig, client: Any) -> tuple[Any, Any]:
    """The ansible actuator across the inventory, and its inventory re-reader (None when it never re-reads)."""
    _require_controller_extra()
    from captcha_fleet.contract.inventory import InventoryError

    from .actuators.ansible import (
        AnsibleActuator,
        actuator_config_from_section,
        read_actuator_inventory,
    )
    from .hosts.lock import RedisHostLock
    from .inventory_refresh import InventoryRefresher

    section = ansible_actuator_section(config)
    refresh_s = _inventory_refresh_s(section)
    actuator_config = actuator_config_from_section(section, args.inventory)
    try:
        actuator = AnsibleActuator(actuator_config, host_lock=RedisHostLock(client, config.keys))
    except InventoryError as exc:
        raise ConfigError(f"ansible_actuator.inventory: {exc}") from None
    refresher = None
    if refresh_s > 0 and not actuator_config.hosts:
        refresher = InventoryRefresher(
            partial(read_actuator_inventory, actuator_config), actuator.follow_inventory, refresh_s
        )
    return actuator, refresher


def ansible_actuator_section(config: FleetConfig) -> dict[str, Any]:
    """The ``ansible_actuator:`` section as the actuator takes it.

    ``controller.instances_per_host`` is the per-host cap the operator documents once (docs/operations.md): the
    local actuator obeys it, so the ansible one takes it too unless ``ansible_actuator.max_services_per_host``
    says otherwise (an inventory setting it had no effect on the deployed controller).
    """
    section = dict(config.section("ansible_actuator"))
    # The control loop re-places the services of a lost host itself.
    section.setdefault("replace_failed", False)
    per_host = config.section("controller").get("instances_per_host")
    if per_host is not None:
        section.setdefault("max_services_per_host", per_host)
    return section


def _metrics(settings: ControllerSettings) -> ControllerMetrics | None:
    """The controller's Prometheus metrics, served when ``metrics_port`` is set (else None)."""
    if not settings.metrics_port:
        return None
    from .metrics import ControllerMetrics

    metrics = ControllerMetrics()
    port = metrics.serve(settings.metrics_host, settings.metrics_port)
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
    return metrics


def _inventory_refresh_s(section: dict[str, Any]) -> float:
    """``ansible_actuator.inventory_refresh_s`` (taken out of the section): seconds between re-reads, 0 = never."""
    value = section.pop("inventory_refresh_s", 60.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"ansible_actuator.inventory_refresh_s: expected seconds >= 0, got {value!r}")
    return float(value)


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT (or one evaluation with ``--once``)."""
    import redis

    controller, actuator, refresher = build(args)
    log.info(
        "controller %s: policy %s every %.1fs, actuator %s",
        controller.lock.token,
        controller.policy.name,
        controller.policy.interval_s,
        args.actuator,
    )
    if args.once:
        try:
            if not controller.hold_lock():
                print(
                    f"captcha-fleet controller: another controller leads ({controller.lock.current()})", file=sys.stderr
                )
                return 1
            decision = controller.step()
            controller.lock.release()
        except redis.RedisError as exc:
            print(f"captcha-fleet controller: Redis: {exc}", file=sys.stderr)
            return 1
        finally:
            if actuator is not None:
                actuator.close()
        out = decision.to_dict()
        if args.json:
            print_json(out)
        else:
            print(
                f"{decision.previous_slots} -> {decision.desired_slots} slots, "
                f"{decision.desired_services} services [{decision.rule}] {decision.reason}"
            )
        return 0

    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if refresher is not None:
        signal.signal(signal.SIGHUP, lambda signum, frame: refresher.request())
        refresher.start()
    try:
        controller.run(stop)
    finally:
        if refresher is not None:
            refresher.stop()  # a read in progress finishes first
    if args.stop_workers_on_exit and hasattr(actuator, "stop_all"):
        actuator.stop_all()  # only local services are ours to stop; remote ones outlive the controller
    return 0
