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
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._readings: deque[tuple[float, int]] = deque()

    def add(self, t: float, busy: int) -> None:
        """Record the busy slots read at ``t``; a clock that went back starts over."""
        if self._readings and t < self._readings[-1][0]:
            self._readings.clear()
        self._readings.append((t, busy))
        while self._readings[0][0] < t - self.window_s:
            self._readings.popleft()

    def mean(self) -> float | None:
        """Mean of the busy readings over the window, or None before any reading."""
        if not self._readings:
            return None
        return sum(b for _, b in self._readings) / len(self._readings)
