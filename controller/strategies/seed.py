"""The seed's two rules (its thread pool's and its process scaler's), a baseline the simulator compares against.

Each baseline (this, ``keda``, ``static``) is the *rule* as published, with its capacity counted in slots (the
seed's "worker" = one thread or process = one in-flight solve). The seed's implementation bugs (the thread start
race, killing busy processes) are not reproduced: the simulator drains every removed slot, so only the rule is judged.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import ControllerSettings
from ..signals import Signals
from .base import Decision, PolicyState, decided, starting_at


@dataclass(frozen=True)
class SeedThreadPolicy:
    """The seed's AutoScalingPool rule: +2 when queue > 20 and utilization > 70 %, -1 when queue < 5 and
    utilization < 20 %, every 10 s, between 2 and 20 threads."""

    settings: ControllerSettings
    min_slots: int = 2
    max_slots: int = 20

    @property
    def name(self) -> str:
        """The ``--policy`` name: ``seed`` (2..20, as published) or ``seed:MAX``."""
        return "seed" if self.max_slots == 20 else f"seed:{self.max_slots}"

    @property
    def interval_s(self) -> float:
        """The seed's ``time.sleep(10)``."""
        return 10.0

    def initial_state(self) -> PolicyState:
        """The seed starts ``min_workers`` threads."""
        return starting_at(self.min_slots, self.settings)

    def decide(self, signals: Signals, state: PolicyState) -> tuple[Decision, PolicyState]:
        """The seed's two if-branches, with utilization measured across the fleet."""
        current = state.desired
        queue = signals.pending or 0
        utilization = 100.0 * signals.busy / current if current > 0 else 0.0
        if queue > 20 and utilization > 70:
            desired, rule = min(current + 2, self.max_slots), "scale-up"
        elif queue < 5 and utilization < 20:
            desired, rule = max(current - 1, self.min_slots), "scale-down"
        else:
            desired, rule = current, "hold"
        reason = f"queue {queue}, utilization {utilization:.0f}%"
        return decided(self.name, self.settings, signals, state, desired, rule, reason)


@dataclass(frozen=True)
class SeedProcessPolicy:
    """The seed's ProcessScaler rule: every 15 s, add max(1, queue // 10) when queue > 5 x processes,
    remove 2 when queue < 3, between 2 and 16 processes."""

    settings: ControllerSettings
    min_slots: int = 2
    max_slots: int = 16

    @property
    def name(self) -> str:
        """The ``--policy`` name."""
        return "seed-process"

    @property
    def interval_s(self) -> float:
        """The seed's ``check_interval=15``."""
        return 15.0

    def initial_state(self) -> PolicyState:
        """The seed spawns ``min_workers`` processes."""
        return starting_at(self.min_slots, self.settings)

    def decide(self, signals: Signals, state: PolicyState) -> tuple[Decision, PolicyState]:
        """The seed's rule (it terminates busy processes; here they drain instead)."""
        current = state.desired
        queue = signals.pending or 0
        if queue > current * 5 and current < self.max_slots:
            desired = current + min(max(1, queue // 10), self.max_slots - current)
            rule = "scale-up"
        elif queue < 3 and current > self.min_slots:
            desired, rule = current - min(2, current - self.min_slots), "scale-down"
        else:
            desired, rule = current, "hold"
        return decided(self.name, self.settings, signals, state, desired, rule, f"queue {queue}")
