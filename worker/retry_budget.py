"""A budget of plan-full retries: a share of the submits the plan accepts, paced, not one retry per waiting slot.

At the plan's edge the fleet holds a few more slots than the plan has threads (``slots_over_plan``), and a
provider thread freed by a finished solve needs *one* resubmit to be taken again soon, not one from every slot
that waits. Retrying each refused slot within a back-off base or two made refusals run at about one per solved
task (1.6-2.1 HTTP requests per task, docs/scaling.md). Here each process spaces its plan-full retries at
``ratio`` x its own accepted-submit rate, so the fleet's retries are ``ratio`` x the fleet's accepted rate
whatever the process count or time scale. A floor (one retry per ``floor_interval_s``) keeps a process that has
had nothing accepted lately retrying, and no solve waits longer than ``max_wait_s`` for its turn: a process
started while the plan is full has all its slots refused at once and nothing accepted to earn turns with (at
2,000 threads, without this cap, 58 tasks waited out their deadlines).

The ratio is not a constant: what a retry buys depends on the plan's size and the provider. At 2,000 threads
most retries find a freed thread (ratio 0.15: 0.04 refusals per task and 97.1 % of the plan busy; 0.4: 0.11
and 98.2 %; 0.8: 0.24 and 98.6 %), at 100 threads on a congested provider polls alone cost 0.23 requests per
task. So each process counts its own HTTP cost over its life (polls and refusals per accepted submit: its share
of the fleet's requests per task, exactly) and raises the ratio while submits, refusals and polls together stay
within ``requests_per_task`` (up while refusals are below what the polls leave, back down to the starting ratio
while above). Over its life, not a recent window: a periodic burst's hundred submits at once made the window's
polls per submit look cheap, and the window's budget overspent the run's (periodic/congested 1.49 requests per
task). Never below the starting ratio: steered down to 0.02, refused solves waited out their longest wait and
retried together, so refusals went *up* (periodic on the congested profile: 175 -> 240 refusals, 1.37 -> 1.43
requests per task; bench/README.md, issue 24).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

# Plan-full retries per accepted submit to start from, and the least, and the most the requests budget may raise
# it to. 0.08 rather than 0.15: at 100 threads, where polls leave the budget little, 0.15 gave 1.33-1.34 requests
# per task on the congested profile and 0.08 1.26-1.31, P95 within 5 % of the simulator either way (bench/README.md).
RETRY_RATIO = 0.08
MAX_RATIO = 1.0
# Each refusal moves the ratio by this factor towards the budget: a few dozen refusals per process (one
# plan-bound spell) are enough to go from the start to either end's neighbourhood.
RATIO_STEP = 0.05
# Accepted submits counted before the ratio is steered by the counts.
MIN_ACCEPTED_TO_STEER = 20
# The accepted rate is averaged over this many back-off bases (exponential decay): long enough to count many
# submits, short enough to follow a plan-bound spell's start.
RATE_WINDOW_BASES = 10.0
# At least one plan-full retry per this many back-off bases per process, however little was accepted lately.
FLOOR_BASES = 4.0
# No refused solve waits longer than this many back-off bases for its retry (about one solve's time).
MAX_WAIT_BASES = 15.0


class RetryBudget:
    """Paces one process's plan-full retries at ``max(1 / floor_interval_s, ratio x accepted rate)``.

    With ``requests_per_task`` set, every refusal steers the ratio (between the ``ratio`` given and ``MAX_RATIO``)
    so that refusals per accepted submit approach what the budget leaves after the polls: ``requests_per_task -
    1 - polls per accepted submit``. Without it the ratio stays as given.
    """

    def __init__(
        self,
        ratio: float,
        window_s: float,
        floor_interval_s: float,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
        requests_per_task: float | None = None,
    ) -> None:
        if ratio <= 0 or window_s <= 0 or floor_interval_s <= 0 or max_wait_s <= 0:
            raise ValueError("ratio, window_s, floor_interval_s and max_wait_s must be positive")
        if requests_per_task is not None and requests_per_task <= 1:
            raise ValueError("requests_per_task must be above 1 (one submit per task at least)")
        self.ratio = self.least_ratio = ratio
        self.window_s = window_s
        self.floor_interval_s = floor_interval_s
        self.max_wait_s = max_wait_s
        self.requests_per_task = requests_per_task
        self._clock = clock
        self._lock = threading.Lock()
        self._accepted = 0.0  # accepted submits, each weighted exp(-age / window_s), as of _at (the pace)
        self._accepted_total = self._refused_total = self._polls_total = 0  # over the process's life (the budget)
        self._at = clock()
        self._last_slot = -math.inf  # when the latest retry handed out is due

    @classmethod
    def for_backoff(
        cls, backoff_base_s: float, ratio: float = RETRY_RATIO, requests_per_task: float | None = None
    ) -> RetryBudget:
        """The budget in the API's back-off base, so a time-compressed replay paces in its own time;
        ``requests_per_task`` (``api.requests_per_task``; 0 or None: a fixed ratio) steers the ratio."""
        base = max(backoff_base_s, 1e-3)
        return cls(
            ratio,
            RATE_WINDOW_BASES * base,
            FLOOR_BASES * base,
            MAX_WAIT_BASES * base,
            requests_per_task=requests_per_task or None,
        )

    def _decay_to(self, now: float) -> None:
        if now > self._at:
            self._accepted *= math.exp(-(now - self._at) / self.window_s)
            self._at = now

    def on_accepted(self) -> None:
        """Count one accepted submit (it earns ``ratio`` of a retry)."""
        with self._lock:
            self._decay_to(self._clock())
            self._accepted += 1.0
            self._accepted_total += 1

    def on_poll_request(self) -> None:
        """Count one ``res.php`` request (its share of the requests budget is not there for retries)."""
        with self._lock:
            self._polls_total += 1

    def accepted_rate(self) -> float:
        """Accepted submits per second, averaged over the window."""
        with self._lock:
            self._decay_to(self._clock())
            return self._accepted / self.window_s

    def refusal_allowance(self) -> float | None:
        """Refusals per accepted submit the requests budget leaves after the polls (None: not enough measured)."""
        with self._lock:
            return self._allowance()

    def _allowance(self) -> float | None:
        if self.requests_per_task is None or self._accepted_total < MIN_ACCEPTED_TO_STEER:
            return None
        return self.requests_per_task - 1.0 - self._polls_total / self._accepted_total

    def _steer(self) -> None:
        """One refusal was counted: move the ratio towards the budget (call with the lock held)."""
        allowance = self._allowance()
        if allowance is None:
            return
        if self._refused_total / self._accepted_total > allowance:
            self.ratio = max(self.least_ratio, self.ratio * (1.0 - RATIO_STEP))
        else:
            self.ratio = min(MAX_RATIO, self.ratio * (1.0 + RATIO_STEP))

    def retry_rate(self) -> float:
        """Plan-full retries per second this process may send now."""
        return max(1.0 / self.floor_interval_s, self.ratio * self.accepted_rate())

    def turn_spacing(self) -> float:
        """Seconds between two retry turns at the rate allowed now."""
        return 1.0 / self.retry_rate()

    def next_delay(self, refused: bool = True) -> float:
        """Count one plan-full refusal (unless ``refused`` is False: a solve that waits without having been
        sent) and give seconds until the next free retry turn, which this call takes (turns are ``1 /
        retry_rate`` apart), at most ``max_wait_s``."""
        if refused:
            with self._lock:
                self._refused_total += 1
                self._steer()
        gap = self.turn_spacing()
        with self._lock:
            now = self._clock()
            due = min(max(now, self._last_slot + gap), now + self.max_wait_s)
            self._last_slot = due
            return due - now
