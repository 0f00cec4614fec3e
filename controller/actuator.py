"""The actuator contract: how the controller changes the number of worker services.

The controller owns the decision (how many services, where, which one to drain); an actuator only
carries it out. A service is one ``captcha-fleet worker`` process, identified by ``(host, instance)``;
its worker id (heartbeat key, in-flight list, target key) is ``f"{host}:{instance}"``.

``apply`` must return quickly: an actuator that needs seconds (Ansible over SSH) starts the change in the
background and reports progress through ``observe``. The control loop never waits on a host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


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


@dataclass(frozen=True)
class ActuatorState:
    """A snapshot of every host, plus whether a change is still in progress."""

    hosts: Mapping[str, HostState] = field(default_factory=dict)
    busy: bool = False

    def running_count(self) -> int:
        """Services believed up across all hosts."""
        return sum(len(h.running) for h in self.hosts.values())


class ServiceActuator(Protocol):
    """Starts and stops worker services so each host runs exactly the desired instances."""

    def observe(self) -> ActuatorState:
        """The current view of the hosts (cheap; no remote calls)."""
        ...

    def apply(self, desired: Mapping[str, frozenset[str]]) -> None:
        """Make each host run exactly ``desired[host]`` instances; non-blocking, idempotent."""
        ...

    def close(self) -> None:
        """Stop background work; leave the services as they are."""
        ...
