"""How many solves a worker may hold in flight: the controller's target, cut back by capacity errors.

Capacity errors (no free thread on the plan, rate limits, 5xx) lower an AIMD limit multiplicatively;
accepted submits raise it by one per window's worth of them (``1/limit`` each, as TCP does per round
trip), up to the target, so the limit settles near what the provider accepts instead of bouncing off
it. Claiming waits here, so a busy provider slows claiming down instead of failing tasks.
"""

from __future__ import annotations

import threading
import time


class SlotLimiter:
    """Counts busy slots against ``min(target, aimd_limit)``; claimers wait for a free slot."""

    def __init__(
        self,
        target: int,
        # Gentle: with slots above the plan's threads (a slot waiting to see its answer holds no provider
        # thread), ERROR_NO_SLOT_AVAILABLE is expected at the plan's edge; 0.7 left ~25 % of a 40-thread
        # plan idle in a plan-bound replay, 0.9 11 %, 0.95 9 % (bench/README.md); a refusal costs a retry.
        decrease_factor: float = 0.95,
        min_decrease_gap_s: float = 1.0,
        recovery_s: float = 30.0,
    ) -> None:
        self._cond = threading.Condition()
        self.target = max(0, target)
        self.limit = float(max(1, target))
        self.busy = 0
        self.decrease_factor = decrease_factor
        self.min_decrease_gap_s = min_decrease_gap_s
        self._last_decrease: float | None = None
        self.recovery_s = recovery_s  # a capacity error this recent keeps a new target from lifting the limit
        self.paused = False

    @property
    def slots(self) -> int:
        """Slots in effect now."""
        if self.paused:
            return 0
        return min(self.target, max(1, int(self.limit)))

    def set_target(self, target: int) -> None:
        """Apply a new target from the controller (0 = take nothing new).

        Without a recent capacity error the limit follows the target at once (no slow start for a fleet
        the controller just sized); after one, the limit only creeps back up as submits are accepted.
        """
        with self._cond:
            self.target = max(0, target)
            last = self._last_decrease
            if last is not None and time.monotonic() - last < self.recovery_s:
                self.limit = min(max(self.limit, 1.0), float(max(1, self.target)))
            else:
                self.limit = float(max(1, self.target))
            self._cond.notify_all()

    def set_paused(self, paused: bool) -> None:
        """Stop (or resume) handing out slots, e.g. while draining or on a fatal account error."""
        with self._cond:
            self.paused = paused
            self._cond.notify_all()

    def wait_free(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for free slots; return how many are free (maybe 0)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.slots - self.busy <= 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return 0
                self._cond.wait(remaining)
            return self.slots - self.busy

    def take(self, n: int) -> None:
        """Mark ``n`` slots busy (after a successful claim)."""
        with self._cond:
            self.busy += n

    def release(self, n: int = 1) -> None:
        """Free ``n`` slots (a task got its result or went back to the queue)."""
        with self._cond:
            self.busy = max(0, self.busy - n)
            self._cond.notify_all()

    def on_capacity_error(self) -> None:
        """Multiplicative decrease, at most once per gap so one burst of refusals counts once."""
        with self._cond:
            now = time.monotonic()
            if self._last_decrease is None or now - self._last_decrease >= self.min_decrease_gap_s:
                self.limit = max(1.0, self.limit * self.decrease_factor)
                self._last_decrease = now

    def on_success(self) -> None:
        """Additive increase back toward the target: +1 per ``limit`` accepted submits."""
        with self._cond:
            if self.limit < self.target:
                self.limit = min(float(self.target), self.limit + 1.0 / max(1.0, self.limit))
                self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no slot is busy; True if that happened in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.busy > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True
