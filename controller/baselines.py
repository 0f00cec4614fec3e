"""The policies users would pick instead, behind the same interface, so the simulator can compare them.

Each one is the *rule* as published, with its capacity counted in slots (the seed's "worker" = one thread or
process = one in-flight solve). The seed's implementation bugs (the thread start race, killing busy
processes) are not reproduced: the simulator drains every removed slot, so only the rule is judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .decision import Decision, PolicyState
from .settings import ControllerSettings
from .signals import Signals


def _decision(
    name: str,
    settings: ControllerSettings,
    signals: Signals,
    state: PolicyState,
    desired: int,
    rule: str,
    reason: str,
    window: tuple[tuple[float, int], ...] = (),
    recommendation: int | None = None,
) -> tuple[Decision, PolicyState]:
    services = settings.services_for(desired)
    decision = Decision(
        at=signals.now,
        policy=name,
        desired_slots=desired,
        desired_services=services,
        previous_slots=state.desired,
        rule=rule,
        reason=reason,
        signals=signals,
        recommendation=recommendation,
    )
    changed = desired != state.desired
    return decision, replace(
        state,
        desired=desired,
        services=services,
        recommendations=window,
        last_eval=signals.now,
        last_change=signals.now if changed else state.last_change,
        changes=state.changes + changed,
    )


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
        return PolicyState(desired=self.min_slots, services=self.settings.services_for(self.min_slots))

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
        return _decision(self.name, self.settings, signals, state, desired, rule, reason)


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
        return PolicyState(desired=self.min_slots, services=self.settings.services_for(self.min_slots))

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
        return _decision(self.name, self.settings, signals, state, desired, rule, f"queue {queue}")


@dataclass(frozen=True)
class KedaPolicy:
    """KEDA's Redis list scaler (listLength, target 5 per replica) through the Kubernetes HPA algorithm.

    The list scaler sees only the pending list, not claimed tasks, so it shrinks while work is still in
    flight. HPA: 15 s sync, tolerance 0.1, scale-up limited to max(+100 %, +4 pods) per period, scale-down
    to the highest recommendation of the last 300 s. One replica = one slot.
    """

    settings: ControllerSettings
    target_per_replica: float = 5.0
    tolerance: float = 0.1
    sync_s: float = 15.0
    stabilization_s: float = 300.0

    @property
    def name(self) -> str:
        """The ``--policy`` name: ``keda`` (listLength 5, KEDA's default) or ``keda:L``."""
        if self.target_per_replica == 5.0:
            return "keda"
        return f"keda:{self.target_per_replica:g}"

    @property
    def interval_s(self) -> float:
        """HPA's ``--horizontal-pod-autoscaler-sync-period``."""
        return self.sync_s

    def _bounds(self) -> tuple[int, int]:
        return max(1, self.settings.min_slots), self.settings.max_effective_slots

    def initial_state(self) -> PolicyState:
        """minReplicaCount replicas."""
        low, _ = self._bounds()
        return PolicyState(desired=low, services=self.settings.services_for(low))

    def decide(self, signals: Signals, state: PolicyState) -> tuple[Decision, PolicyState]:
        """desired = ceil(listLength / 5), then tolerance, rate limit and stabilization."""
        low, high = self._bounds()
        current = max(1, state.desired)
        metric = float(signals.pending or 0)
        ratio = metric / (self.target_per_replica * current)
        raw = current if abs(ratio - 1.0) <= self.tolerance else math.ceil(metric / self.target_per_replica)
        raw = max(low, min(high, raw))
        now = signals.now
        # Like the HPA controller, the first sight of a target records its current size.
        history = state.recommendations or ((now, current),)
        window = tuple((t, v) for t, v in history if t > now - self.stabilization_s)
        window += ((now, raw),)
        if raw > current:
            desired = min(raw, max(2 * current, current + 4), high)
            rule = "scale-up"
        else:
            desired = max(v for _, v in window)
            desired = min(desired, current)
            rule = "scale-down" if desired < current else "hold"
        reason = f"listLength {metric:.0f} / {self.target_per_replica:.0f} -> {raw}"
        return _decision(self.name, self.settings, signals, state, desired, rule, reason, window, raw)


@dataclass(frozen=True)
class StaticPolicy:
    """A fixed number of slots: what most people run."""

    settings: ControllerSettings
    slots: int

    @property
    def name(self) -> str:
        """The ``--policy`` name."""
        return f"static:{self.slots}"

    @property
    def interval_s(self) -> float:
        """Irrelevant; it never changes."""
        return 60.0

    def initial_state(self) -> PolicyState:
        """The fixed size from the start."""
        return PolicyState(desired=self.slots, services=self.settings.services_for(self.slots))

    def decide(self, signals: Signals, state: PolicyState) -> tuple[Decision, PolicyState]:
        """Always the same."""
        return _decision(self.name, self.settings, signals, state, self.slots, "static", "fixed size")
