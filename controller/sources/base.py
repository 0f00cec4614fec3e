"""The source contract: what the loop and the simulator read their signals through (nomad-autoscaler's APM plugins).

A source takes one :class:`Snapshot` per evaluation (``read``), then counts the services the controller steers
into it (``steered``: the running ones, and the slots given to the ones still starting), which only the caller
knows. The Redis source (``redis_signals.py``) reads the live fleet; the simulator's (``controller/sim/source.py``)
reads the simulated one. Both build their :class:`Signals` through :class:`~.windows.SignalWindows`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from captcha_fleet.contract.fleet_snapshot import LiveWorker

from ..placement import ServiceView
from ..signals import Signals


@dataclass(frozen=True)
class Snapshot:
    """Signals plus the per-worker detail placement needs."""

    signals: Signals
    workers: Mapping[str, LiveWorker] = field(default_factory=dict)  # known and plausible: what counts
    unknown: Mapping[str, LiveWorker] = field(default_factory=dict)  # live, not ours: shown, never counted
    implausible: tuple[str, ...] = ()  # ours, but the heartbeat failed a check: not counted this read
    rejected: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (source, reason) -> values skipped


class SignalSource(Protocol):
    """One snapshot per evaluation, and the services the caller steers counted into its signals."""

    known: Callable[[str], bool] | None  # the worker ids that count as capacity (set before each read); None: all

    def read(self) -> Snapshot:
        """The fleet now."""
        ...

    def steered(self, signals: Signals, views: Sequence[ServiceView]) -> Signals:
        """``signals`` with ``services`` the running views and ``starting_slots`` the targets of the starting ones
        (capacity asked for that no heartbeat shows yet)."""
        ...


def running_services(views: Sequence[ServiceView]) -> int:
    """How many of the steered services run (and so count as services)."""
    return sum(1 for v in views if v.status == "running")


def starting_ids(views: Sequence[ServiceView]) -> list[str]:
    """The steered services still starting, whose targets are capacity on its way."""
    return [v.id for v in views if v.status == "starting"]
