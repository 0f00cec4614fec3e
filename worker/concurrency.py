"""How many solves a worker may hold in flight: the controller's target, cut back by capacity errors.

Capacity errors (rate limits, 5xx) lower an AIMD limit multiplicatively; accepted submits raise it by one
per window's worth of them (``1/limit`` each, as TCP does per round trip), up to the target, so the limit
settles near what the provider accepts instead of bouncing off it. Claiming waits here, so a busy
provider slows claiming down instead of failing tasks.

A *plan-full* refusal (``ERROR_NO_SLOT_AVAILABLE``; on CaptchaAI also ``ERROR_ZERO_BALANCE``) is different:
the controller sizes slots a little above the plan's threads on purpose (a slot waiting to see its answer
holds no provider thread), so refusals at the plan's edge are expected. Cutting on each left ~9 % of a
plan idle (bench/README.md); the limiter holds its level instead and only cuts when refusals come in a
streak with no accepted submit between them, or when more of its slots wait for a plan thread than slots over
the plan explain (:func:`past_the_edge`): that is a fleet far above its plan. The refused solve waits for
its turn in the process's retry budget (:mod:`captcha_fleet.worker.retry_budget`), not for a back-off of its own.

An *outage* (cuts in a row with no accepted submit between them: 5xx or HTML pages for minutes) takes the
limit down to 1, but says nothing about how much the provider takes once it is back. Like TCP's ssthresh,
the first cut of such a run remembers where it cut to; after the outage the limit slow-starts back there
(+1 per accepted submit, doubling per window) instead of creeping up by ``1/limit``.

A slot is a :class:`Slot` token: claiming takes tokens, each solve holds one, and a token frees its slot
at most once, so the busy count can never drift from the tasks held (a counter released twice did).
"""

from __future__ import annotations

import logging
import random
import threading
import time

from .backoff import backoff_delay

log = logging.getLogger(__name__)

# Refusals that mean "every thread the plan pays for is busy" (CaptchaAI's ZERO_BALANCE means that too).
PLAN_FULL_CODES = frozenset({"ERROR_NO_SLOT_AVAILABLE", "ERROR_ZERO_BALANCE"})
# Plan-full refusals in a row (no accepted submit between) that still count as the plan's edge: this
# fraction of the limit, and at least MIN_EDGE_STREAK. The controller's slots_over_plan is 0.1.
EDGE_STREAK_FRACTION = 0.2
MIN_EDGE_STREAK = 4
# A plan-full retry waits at most this many back-off bases (no exponential growth past it).
PLAN_FULL_MAX_BASES = 2.0


def is_plan_full(code: str | None) -> bool:
    """Whether a capacity error is the plan's thread limit (hold), not an overloaded provider (cut)."""
    return code in PLAN_FULL_CODES


def past_the_edge(streak: int, limit: float) -> bool:
    """Plan-full refusals in a row (or slots waiting for a plan thread) beyond what slots over the plan
    explain: the fleet is far above it."""
    return streak > max(MIN_EDGE_STREAK, EDGE_STREAK_FRACTION * limit)


def retry_delay(
    code: str | None, failures: int, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Seconds before resubmitting after a capacity error.

    Plan full: a thread frees at the provider every solve / plan seconds, so an exponential back-off
    leaves paid threads idle; retry within ``PLAN_FULL_MAX_BASES`` x base (jittered). Others: back off.
    """
    if is_plan_full(code):
        return backoff_delay(min(failures, 2), base_s, min(max_s, PLAN_FULL_MAX_BASES * base_s), rng)
    return backoff_delay(failures, base_s, max_s, rng)


class Slot:
    """One busy slot, held by one task; :meth:`release` frees it once, later calls are no-ops."""

    __slots__ = ("_limiter", "_released")

    def __init__(self, limiter: SlotLimiter) -> None:
        self._limiter = limiter
        self._released = False

    @property
    def held(self) -> bool:
        """Whether this slot still counts as busy."""
        return not self._released

    def release(self) -> bool:
        """Free the slot; True if this call freed it, False if it was already free (logged: a bug)."""
        return self._limiter._give_back(self)


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
        self.plan_full_streak = 0  # plan-full refusals since the last accepted submit
        # Where the limit slow-starts back to after an outage (the first cut of a run of cuts), or None.
        self.recover_to: float | None = None
        self._cut_since_success = False
        self.double_releases = 0  # slots released a second time (ignored): should stay 0

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

    def take(self, n: int) -> list[Slot]:
        """Mark ``n`` slots busy (after a successful claim); each claimed task holds one of the tokens."""
        with self._cond:
            self.busy += n
        return [Slot(self) for _ in range(n)]

    def _give_back(self, slot: Slot) -> bool:
        with self._cond:
            if slot._released:
                self.double_releases += 1
                log.error("a slot was released twice (a bug); ignored, busy stays %d", self.busy)
                return False
            slot._released = True
            self.busy -= 1
            self._cond.notify_all()
            return True

    def on_capacity_error(self, code: str | None = None, waiting: int = 0) -> None:
        """Multiplicative decrease, at most once per gap so one burst of refusals counts once.

        A plan-full refusal holds the limit (the plan's edge is where it should be), unless the refusals
        come in a streak past the edge, or ``waiting`` (this process's solves waiting for a plan-full retry,
        this one included) is past it (:func:`past_the_edge`): with retries paced by a budget, a fleet far
        above its plan shows as slots that wait, no longer as refusals in a row.
        """
        with self._cond:
            if is_plan_full(code):
                self.plan_full_streak += 1
                if not (past_the_edge(self.plan_full_streak, self.limit) or past_the_edge(waiting, self.limit)):
                    return
                self.plan_full_streak = 0
            now = time.monotonic()
            if self._last_decrease is None or now - self._last_decrease >= self.min_decrease_gap_s:
                self.limit = max(1.0, self.limit * self.decrease_factor)
                self._last_decrease = now
                if not self._cut_since_success:  # the first cut of a run: an outage would return here
                    self.recover_to = self.limit
                self._cut_since_success = True

    def on_success(self) -> None:
        """Slow start (+1) back to where an outage began, then additive increase: +1 per ``limit`` submits."""
        with self._cond:
            self.plan_full_streak = 0
            self._cut_since_success = False
            ceiling = float(self.target)
            if self.limit >= ceiling:
                return
            if self.recover_to is not None and self.limit < self.recover_to:
                self.limit = min(ceiling, self.recover_to, self.limit + 1.0)
            else:
                self.recover_to = None
                self.limit = min(ceiling, self.limit + 1.0 / max(1.0, self.limit))
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
