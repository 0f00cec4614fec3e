"""The simulated fleet as a signal source: the same contract and the same windows as the Redis source.

The simulator's policy sees what the controller's would: :class:`~..sources.windows.SignalWindows` turns the
simulated counts into :class:`Signals` exactly as it turns Redis's, and ``steered`` counts the starting services'
targets as the loop does. Every source is always fresh here (no Redis to lose).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from captcha_fleet.contract.windows import CounterWindow

from ..placement import ServiceView
from ..settings import ControllerSettings
from ..signals import Signals, fresh_ages
from ..sources.base import Snapshot, running_services, starting_ids
from ..sources.windows import SignalWindows


@dataclass(frozen=True)
class FleetReading:
    """What the simulation knows at ``now``: the queue, the slots in effect and the counters."""

    now: float
    pending: int
    busy: int
    slots: int
    arrived: int
    completed: int
    balance: float | None = None  # None: no balance is simulated
    spent: float = 0.0  # $ spent so far (the balance's burn)


class SimSignalSource:
    """A :class:`~..sources.base.SignalSource` over the simulation: ``read`` asks it for a :class:`FleetReading`."""

    def __init__(
        self, settings: ControllerSettings, reading: Callable[[], FleetReading], target_of: Callable[[str], int]
    ) -> None:
        self.windows = SignalWindows(settings)
        self.spending = CounterWindow(settings.rate_window_s)
        self.reading = reading
        self.target_of = target_of  # worker id -> slots asked of it (the simulated target key)
        self.known: Callable[[str], bool] | None = None  # every simulated worker is ours

    def finished(self, at: float, method: str, latency_s: float, solve_s: float) -> None:
        """A simulated task finished (the Redis source learns it from the events stream)."""
        self.windows.finished(at, method, latency_s, solve_s)

    def read(self) -> Snapshot:
        """The simulated fleet now, every source fresh."""
        r = self.reading()
        self.windows.count(r.now, r.arrived, r.completed)
        burn = None
        if r.balance is not None:
            self.spending.add(r.now, r.spent)
            burn = self.spending.rate()
        signals = self.windows.signals(
            r.now,
            pending=r.pending,
            in_flight=r.busy,
            slots=r.slots,
            busy=r.busy,
            services=0,
            ages=fresh_ages("queue", "heartbeats", "events", "balance"),
            balance=r.balance,
            burn_rate=burn,
        )
        return Snapshot(signals=signals)

    def steered(self, signals: Signals, views: Sequence[ServiceView]) -> Signals:
        """``signals`` with the running services and the targets of the starting ones."""
        starting_slots = sum(self.target_of(w) for w in starting_ids(views))
        return replace(signals, starting_slots=starting_slots, services=running_services(views))
