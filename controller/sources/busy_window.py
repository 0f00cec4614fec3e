"""Busy slots averaged over the rate window: with the completion rate, Little's law's slot hold per task.

The finished tasks' solve times (``api_s``: accepted submit -> answer seen) leave two things out: the refill
time from claiming a task to an accepted submit (back-offs while the plan is full) and the long solves that
have not finished yet (a window of completions sees the fast ones first). Mean busy / completion rate counts
both, so the queue model can check its sampled figures against it (:func:`..strategies.queue_model.hold_ratio`).
"""

from __future__ import annotations

from collections import deque


class BusyWindow:
    """The mean busy-slot reading of the last ``window_s`` seconds (one reading per evaluation).

    A mean of readings, not of time: quick evaluations come while a queue jumps, so a ramp's readings weigh
    more (time-weighted, short/mixed-methods went back to 68.5 s and short/congested to 67.0 s).

    No mean before ``warmup_s`` (two windows) of readings. From a cold start the window holds the busy time of
    tasks whose completions come a hold time later, so busy / completion rate reads the hold too long: 1.2x fifty
    seconds in for an even load, 1.5-2.1x in a live replay's logs (the quick evaluations weigh the ramp's readings).
    That cut the queueing budget to a third, and short/sandbox's quiet first minutes held 19-21 slots for a load of
    9 (live 0.79-0.84 of the simulator's P95, which met the transient at other moments). Two windows let the
    window slide past the start by a hold (a minute at most).
    """

    def __init__(self, window_s: float, warmup_s: float | None = None) -> None:
        self.window_s = window_s
        self.warmup_s = 2 * window_s if warmup_s is None else warmup_s
        self._readings: deque[tuple[float, int]] = deque()
        self._first: float | None = None  # the first reading since the start (or a clock that went back)

    def add(self, t: float, busy: int) -> None:
        """Record the busy slots read at ``t``; a clock that went back starts over."""
        if self._readings and t < self._readings[-1][0]:
            self._readings.clear()
            self._first = None
        if self._first is None:
            self._first = t
        self._readings.append((t, busy))
        while self._readings[0][0] < t - self.window_s:
            self._readings.popleft()

    def mean(self) -> float | None:
        """Mean of the busy readings over the window, or None before ``warmup_s`` of readings."""
        if not self._readings or self._first is None or self._readings[-1][0] - self._first < self.warmup_s:
            return None
        return sum(b for _, b in self._readings) / len(self._readings)
