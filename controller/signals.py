"""The signals a policy sees: one frozen snapshot per evaluation, from Redis or from the simulator.

A policy is a pure function of this snapshot and its own state, so everything it may look at is here,
including how old each reading is: a stale reading must never be mistaken for a quiet fleet.
``None`` means "not measured" (no worker has reported, the balance API did not answer, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from captcha_fleet.contract.api_errors import ERROR_KINDS

# Names of the signal sources, as keys of ``Signals.ages``.
SOURCE_QUEUE = "queue"  # LLEN of the pending list, in-flight lists
SOURCE_HEARTBEATS = "heartbeats"  # worker heartbeats (slots, busy, error counters)
SOURCE_EVENTS = "events"  # the finished-task stream (latency, completions)
SOURCE_BALANCE = "balance"  # getbalance
ESSENTIAL_SOURCES = (SOURCE_QUEUE, SOURCE_HEARTBEATS, SOURCE_EVENTS)

ERROR_CLASSES = ERROR_KINDS  # the heartbeat's API-error counters (the contract's list)


@dataclass(frozen=True)
class MethodSolve:
    """One CAPTCHA method's solves over its window: its share of completions, mean and P95 slot hold."""

    share: float
    mean_s: float
    p95_s: float
    samples: int


@dataclass(frozen=True)
class Signals:
    """Everything measured about the fleet at time ``now`` (unix or simulated seconds)."""

    now: float
    pending: int | None  # tasks queued, not yet claimed
    in_flight: int | None  # tasks claimed by a worker, no result yet (KEDA's list scaler misses these)
    slots: int  # slots in effect on live workers (what may be in flight now)
    busy: int  # slots holding a task
    starting_slots: int = 0  # slots on services asked for but not up yet (capacity still starting)
    services: int = 0  # live worker services
    arrival_rate: float | None = None  # tasks/s entering the queue, over the rate window
    completion_rate: float | None = None  # results/s written, over the rate window
    p95_latency_s: float | None = None  # end to end (enqueue -> result), over the latency window
    p50_latency_s: float | None = None
    # Slot occupancy per task (submit -> answer seen), the mix of per-method windows (sources/method_solves.py):
    mean_solve_s: float | None = None
    p95_solve_s: float | None = None
    solve_by_method: Mapping[str, MethodSolve] = field(default_factory=dict)  # method -> its own window
    completed_in_window: int = 0  # results behind the latency figures
    mean_busy: float | None = None  # busy slots over the rate window (Little's law with completion_rate); None at first
    error_rates: Mapping[str, float] = field(default_factory=dict)  # class -> errors / API answers
    host_error_rates: Mapping[str, float] = field(default_factory=dict)  # host -> errors / API answers
    balance: float | None = None  # account balance in $
    burn_rate: float | None = None  # $/s spent, over the balance history
    ages: Mapping[str, float] = field(default_factory=dict)  # source -> seconds since it was read
    # Tasks that ever arrived, as the source counts them; counts of different epochs (a reset, a jump) do not
    # subtract. With them a policy measures the arrivals since its own last evaluation, not over the rate window.
    arrived_count: float | None = None
    count_epoch: int = 0

    @property
    def utilization(self) -> float | None:
        """Busy slots / slots in effect, or ``None`` when no slot is in effect."""
        if self.slots <= 0:
            return None
        return self.busy / self.slots

    @property
    def backlog(self) -> int | None:
        """Pending plus in flight: the work the fleet still owes."""
        if self.pending is None or self.in_flight is None:
            return None
        return self.pending + self.in_flight

    def stale_sources(self, max_age_s: float) -> tuple[str, ...]:
        """Essential sources that are missing or older than ``max_age_s``."""
        out = []
        for name in ESSENTIAL_SOURCES:
            age = self.ages.get(name)
            if age is None or age > max_age_s:
                out.append(name)
        if self.pending is None and SOURCE_QUEUE not in out:
            out.append(SOURCE_QUEUE)
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for the decision log)."""
        out = dataclasses.asdict(self)
        out["utilization"] = self.utilization
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 4)
        out["error_rates"] = {k: round(v, 4) for k, v in self.error_rates.items()}
        out["host_error_rates"] = {k: round(v, 4) for k, v in self.host_error_rates.items()}
        out["ages"] = {k: round(v, 2) for k, v in self.ages.items()}
        out["solve_by_method"] = {
            k: {
                "share": round(m.share, 3),
                "mean_s": round(m.mean_s, 2),
                "p95_s": round(m.p95_s, 2),
                "samples": m.samples,
            }
            for k, m in self.solve_by_method.items()
        }
        return out


def fresh_ages(*sources: str) -> dict[str, float]:
    """Ages of 0 for the given sources (all essential ones by default): the simulator reads instantly."""
    return dict.fromkeys(sources or ESSENTIAL_SOURCES, 0.0)
