"""What the controller knows of one host, and how its services are named (shared by the loop and every actuator).

A service is one ``captcha-fleet worker`` process, identified by ``(host, instance)``; its worker id (heartbeat
key, in-flight list, target key) is ``f"{host}:{instance}"``.
"""

from __future__ import annotations

from dataclasses import dataclass


def worker_id_for(host: str, instance: str) -> str:
    """The worker id a service on ``host`` named ``instance`` registers under."""
    return f"{host}:{instance}"


def instance_order(instance: str) -> tuple[int, str]:
    """Sort key for instance names: numbered ones by number (2 before 10), then named ones by name."""
    return (int(instance), "") if instance.isdigit() else (1 << 30, instance)


@dataclass(frozen=True)
class HostState:
    """What the actuator knows about one host."""

    name: str
    max_services: int
    running: frozenset[str] = frozenset()  # instances the actuator believes are up
    pending: frozenset[str] = frozenset()  # instances being started or stopped right now
    reachable: bool = True
    draining: bool = False
    last_error: str | None = None
    retiring: bool = False  # gone from the inventory: its services are drained and stopped, then it is forgotten
