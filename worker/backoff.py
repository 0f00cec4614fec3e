"""Exponential back-off with full jitter, so many workers hit by the same outage do not retry in step."""

from __future__ import annotations

import random

# The jitter's own generator: the process-wide one is left to the application (and to tools that watch it, such
# as hypothesis, which warns when a strategy's draw sees it move under a worker thread).
_JITTER = random.Random()


def backoff_delay(failures: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``failures`` (1-based): uniform in ``[0, min(max, base * 2^(n-1))]``."""
    ceiling = min(max_s, base_s * (2 ** max(0, min(failures - 1, 30))))
    return (rng or _JITTER).uniform(0.0, ceiling) if ceiling > 0 else 0.0
