"""The actuator contract: how the controller changes the number of worker services.

The controller owns the decision (how many services, where, which one to drain); an actuator only
carries it out (services and hosts: :mod:`captcha_fleet.controller.hosts.state`). What an actuator can do beyond
the base protocol it declares by the capability protocols below; the loop checks for each with ``isinstance``.

``apply`` must return quickly: an actuator that needs seconds (Ansible over SSH) starts the change in the
background and reports progress through ``observe``. The control loop never waits on a host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..hosts.state import HostState


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


@runtime_checkable
class AdoptingActuator(Protocol):
    """An actuator that can take over services another controller started (the local one can)."""

    def adopt(self, instance: str, pid: int) -> bool:
        """Manage the service ``instance`` running as ``pid``."""
        ...


@runtime_checkable
class DrainAwareActuator(Protocol):
    """An actuator that learns from Redis which hosts a rolling update or decommission is draining."""

    def refresh_draining(self, client: Any, keys: Any) -> None:
        """Read ``{prefix}:draining:<host>`` and stop placing services on those hosts."""
        ...


@runtime_checkable
class InventoryAwareActuator(Protocol):
    """An actuator whose hosts follow a re-read inventory (hosts join, retire, are forgotten)."""

    def take_inventory_changes(self) -> Any:
        """The roster changes since the last call (``to_dict()`` for the decision log; falsy when none)."""
        ...


@runtime_checkable
class VerifyingActuator(Protocol):
    """An actuator whose belief of what runs may be stale after a takeover (the ansible one)."""

    def verify_all(self) -> None:
        """Assert every host's services at the next run, whatever it believes runs there."""
        ...


@runtime_checkable
class StandDownActuator(Protocol):
    """An actuator that acts on its own between steps (the ansible one): a controller that lost the lock stops it."""

    def stand_down(self) -> None:
        """Forget the desired state and stop acting on it until the next ``apply``."""
        ...


@runtime_checkable
class LeasedActuator(Protocol):
    """An actuator that starts runs on its own: it starts none once the leader lease it was last given has run out."""

    def hold_lease(self, until: float) -> None:
        """Acting is allowed until ``until`` (``time.monotonic()``); each renewal of the lock extends it."""
        ...
