"""KEDA's Redis list scaler through the Kubernetes HPA algorithm: the baseline most queue workers autoscale with."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..settings import ControllerSettings
from ..signals import Signals
from .base import Decision, PolicyState, decided, starting_at


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
        return starting_at(low, self.settings)

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
        return decided(self.name, self.settings, signals, state, desired, rule, reason, window, raw)
