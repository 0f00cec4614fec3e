"""Placement: turn "N slots on M services" into per-worker targets, services to start, services to drain.

Pure, so the controller and the simulator share it. Scale-in never stops a busy service: it picks the
idlest one, sets its target to 0 (it stops claiming and finishes what it holds) and the caller stops it
once it reports ``busy == 0``. A service being drained is brought back before a new one is started, since
it is already up.

``desired_services`` is a ceiling: when those services cannot hold the slots, the slots are cut to what they
hold (:attr:`Placement.unplaced` says how many), never more services started (issue 21: ``max_services: 2`` ran
11 worker processes). The controller's bounds (:mod:`captcha_fleet.controller.strategies.bounds`) keep a decision within
``max_services`` x ``slots_per_service``, so a cut here means the caller asked for fewer services than its slots.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

ServiceStatus = Literal["starting", "running", "draining"]


@dataclass(frozen=True)
class ServiceView:
    """One worker service as placement sees it."""

    id: str
    status: ServiceStatus
    busy: int = 0
    host: str = ""


@dataclass(frozen=True)
class Placement:
    """What to do to the services so they hold the desired slots."""

    targets: dict[str, int] = field(default_factory=dict)  # worker id -> slots (0 for the drained)
    drain: tuple[str, ...] = ()  # services to stop claiming, newly chosen (idlest first)
    undrain: tuple[str, ...] = ()  # draining services taken back into service
    start: int = 0  # new services to start
    new_targets: tuple[int, ...] = ()  # slots for each service to start (written before it starts)
    unplaced: int = 0  # slots asked for that the allowed services cannot hold (cut, not placed)

    @property
    def total(self) -> int:
        """Slots placed on services that are not draining."""
        return sum(self.targets.values())


def _spread(total: int, ids: Sequence[str], cap: int) -> dict[str, int]:
    """``total`` slots over ``ids`` as evenly as possible, none above ``cap``."""
    out: dict[str, int] = {}
    if not ids:
        return out
    total = min(total, cap * len(ids))
    base, extra = divmod(total, len(ids))
    for i, wid in enumerate(ids):
        out[wid] = base + (1 if i < extra else 0)
    return out


def place(
    desired_slots: int,
    desired_services: int,
    slots_per_service: int,
    services: Sequence[ServiceView],
    replace_hosts: Collection[str] = (),
) -> Placement:
    """Targets for ``desired_slots`` on at most ``desired_services`` services, given the services there are.

    Services on ``replace_hosts`` are drained and made up for by new ones ("fresh workers").
    """
    cap = max(1, slots_per_service)
    desired_services = max(0, desired_services)
    asked = max(0, desired_slots)
    desired_slots = min(asked, desired_services * cap)
    active = [s for s in services if s.status != "draining" and s.host not in replace_hosts]
    retired = [s.id for s in services if s.status != "draining" and s.host in replace_hosts]
    draining = [s for s in services if s.status == "draining" and s.host not in replace_hosts]

    drain: list[str] = list(retired)
    undrain: list[str] = []
    start = 0
    if len(active) < desired_services:
        # The busiest draining services first: they are up and would otherwise run on for longest.
        for s in sorted(draining, key=lambda s: (-s.busy, s.id))[: desired_services - len(active)]:
            undrain.append(s.id)
            active.append(ServiceView(s.id, "running", s.busy, s.host))
        start = desired_services - len(active)
    elif len(active) > desired_services:
        # Cancel services still starting first (they hold nothing), then the idlest running ones.
        order = sorted(active, key=lambda s: (s.status != "starting", s.busy, s.id))
        for s in order[: len(active) - desired_services]:
            drain.append(s.id)
        active = [s for s in active if s.id not in drain]

    running = sorted(s.id for s in active if s.status == "running")
    starting = sorted(s.id for s in active if s.status == "starting")
    # Slots on running services take effect now; put them there first, the rest on starting ones.
    on_running = min(desired_slots, cap * len(running))
    targets = _spread(on_running, running, cap)
    on_starting = min(desired_slots - on_running, cap * len(starting))
    targets.update(_spread(on_starting, starting, cap))
    new_ids = [str(i) for i in range(start)]
    new = _spread(desired_slots - on_running - on_starting, new_ids, cap)
    for wid in drain:
        targets[wid] = 0
    return Placement(
        targets=targets,
        drain=tuple(drain),
        undrain=tuple(undrain),
        start=start,
        new_targets=tuple(new.get(i, 0) for i in new_ids),
        unplaced=asked - desired_slots,
    )
