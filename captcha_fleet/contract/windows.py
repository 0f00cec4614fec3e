"""The one percentile and the latency windows: the worker's summary and the controller's estimators.

The Redis signal source and the simulator compute rates and percentiles the same way, so the simulator exercises
the estimators the real controller uses, not an idealised version of them; the worker's heartbeat summary uses
the same percentile.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest-rank method; ``values`` need not be sorted.

    No values have no quantile: an empty sequence raises ``ValueError``, and a caller that shows "none" (None, NaN,
    0) says so where it calls.
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class CounterWindow:
    """The rate of a monotonic counter over the last ``window_s`` seconds, from sparse samples."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, value: float) -> None:
        """Record the counter's value at ``t``; a counter that went backwards restarts the window."""
        if self._samples and value < self._samples[-1][1]:
            self._samples.clear()
        self._samples.append((t, value))
        # Keep one sample at or before the window start so the rate spans the whole window.
        while len(self._samples) >= 2 and self._samples[1][0] <= t - self.window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Increase per second across the samples kept, or ``None`` before two samples exist."""
        if len(self._samples) < 2:
            return None
        (t0, v0), (t1, v1) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None
        return (v1 - v0) / (t1 - t0)


class LastLatencies:
    """The last ``size`` latencies of one worker, summarised as count and p50/p95/p99 for its heartbeat."""

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque(maxlen=max(1, size))

    def add(self, seconds: float) -> None:
        """Record one latency."""
        self.values.append(seconds)

    def summary(self) -> dict[str, float | int | None]:
        """Count and percentiles rounded to milliseconds; each percentile is None while the window is empty."""
        ordered = sorted(self.values)

        def rounded(q: float) -> float | None:
            return round(percentile(ordered, q), 3) if ordered else None

        return {"count": len(ordered), "p50": rounded(0.5), "p95": rounded(0.95), "p99": rounded(0.99)}


class FinishedTasksWindow:
    """Finished tasks of the last ``window_s`` seconds: (finish time, end-to-end latency, solve time)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float, float]] = deque()

    def add(self, t: float, latency_s: float, solve_s: float) -> None:
        """Record one finished task (``t`` non-decreasing)."""
        self._items.append((t, latency_s, solve_s))

    def trim(self, now: float) -> None:
        """Forget tasks that finished before the window."""
        while self._items and self._items[0][0] < now - self.window_s:
            self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def latency(self, q: float) -> float | None:
        """The ``q``-quantile of end-to-end latency in the window."""
        if not self._items:
            return None
        return percentile([lat for _, lat, _ in self._items], q)

    def solve(self, q: float) -> float | None:
        """The ``q``-quantile of solve time in the window."""
        if not self._items:
            return None
        return percentile([s for _, _, s in self._items], q)

    def mean_solve(self) -> float | None:
        """Mean solve time in the window (slot occupancy per task, for Little's law)."""
        if not self._items:
            return None
        return sum(s for _, _, s in self._items) / len(self._items)
