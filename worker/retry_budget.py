"""A budget of plan-full retries: a share of the submits the plan accepts, paced, not one retry per waiting slot.

At the plan's edge the fleet holds a few more slots than the plan has threads (``slots_over_plan``), and a
provider thread freed by a finished solve needs *one* resubmit to be taken again soon, not one from every slot
that waits. Retrying each refused slot within a back-off base or two made refusals run at about one per solved
task (1.6-2.1 HTTP requests per task, docs/scaling.md). Here each process spaces its plan-full retries at
``ratio`` x its own accepted-submit rate, so the fleet's retries are ``ratio`` x the fleet's accepted rate
whatever the process count, plan size or time scale: refusals per solved task stay near ``ratio``. The price: a
freed thread waits for the next retry or for the fresh submit of the slot whose answer comes in, the poller's
detection delay later (measured: 95.5-96.5 % of the plan busy at 100 and 2,000 threads, 98-99.6 % with a retry
per slot). A floor (one retry per ``floor_interval_s``) keeps a process that has had nothing accepted lately
retrying, and no solve waits longer than ``max_wait_s`` for its turn: a process started while the plan is full
has all its slots refused at once and nothing accepted to earn turns with (at 2,000 threads, without this cap,
58 tasks waited out their deadlines).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

# Plan-full retries per accepted submit: about the refusals per solved task at the plan's edge (docs/scaling.md:
# 0.15 gave 1.27 HTTP requests per task at 100 threads, 0.25 gave 1.36 and no more of the plan busy).
RETRY_RATIO = 0.15
# The accepted rate is averaged over this many back-off bases (exponential decay): long enough to count many
# submits, short enough to follow a plan-bound spell's start.
RATE_WINDOW_BASES = 10.0
# At least one plan-full retry per this many back-off bases per process, however little was accepted lately.
FLOOR_BASES = 4.0
# No refused solve waits longer than this many back-off bases for its retry (about one solve's time).
MAX_WAIT_BASES = 15.0


class RetryBudget:
    """Paces one process's plan-full retries at ``max(1 / floor_interval_s, ratio x accepted rate)``."""

    def __init__(
        self,
        ratio: float,
        window_s: float,
        floor_interval_s: float,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio <= 0 or window_s <= 0 or floor_interval_s <= 0 or max_wait_s <= 0:
            raise ValueError("ratio, window_s, floor_interval_s and max_wait_s must be positive")
        self.ratio = ratio
        self.window_s = window_s
        self.floor_interval_s = floor_interval_s
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._decayed = 0.0  # accepted submits, each weighted exp(-age / window_s), as of _at
        self._at = clock()
        self._last_slot = -math.inf  # when the latest retry handed out is due

    @classmethod
    def for_backoff(cls, backoff_base_s: float, ratio: float = RETRY_RATIO) -> RetryBudget:
        """The budget in the API's back-off base, so a time-compressed replay paces in its own time."""
        base = max(backoff_base_s, 1e-3)
        return cls(ratio, RATE_WINDOW_BASES * base, FLOOR_BASES * base, MAX_WAIT_BASES * base)

    def _decay_to(self, now: float) -> None:
        if now > self._at:
            self._decayed *= math.exp(-(now - self._at) / self.window_s)
            self._at = now

    def on_accepted(self) -> None:
        """Count one accepted submit (it earns ``ratio`` of a retry)."""
        with self._lock:
            self._decay_to(self._clock())
            self._decayed += 1.0

    def accepted_rate(self) -> float:
        """Accepted submits per second, averaged over the window."""
        with self._lock:
            self._decay_to(self._clock())
            return self._decayed / self.window_s

    def retry_rate(self) -> float:
        """Plan-full retries per second this process may send now."""
        return max(1.0 / self.floor_interval_s, self.ratio * self.accepted_rate())

    def next_delay(self) -> float:
        """Seconds until the next free retry turn, which this call takes (turns are ``1 / retry_rate`` apart),
        at most ``max_wait_s``."""
        gap = 1.0 / self.retry_rate()
        with self._lock:
            now = self._clock()
            due = min(max(now, self._last_slot + gap), now + self.max_wait_s)
            self._last_slot = due
            return due - now
