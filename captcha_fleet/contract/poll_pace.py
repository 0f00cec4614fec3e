"""How fast one worker process polls, given how many solves it holds.

One ``res.php?ids=`` request answers for every solve a process holds, so the HTTP cost of a tick is shared:
with ``n`` solves waiting, polling every ``I`` seconds costs ``mean cycle / (I x n)`` requests per task. A
lone CAPTCHA keeps the provider's advice (first poll after ~15 s, then every 5 s); from ``fast_poll_from``
solves on, the interval shrinks as ``poll_interval_s x fast_poll_from / n`` (so requests per task stay
about ``mean cycle / (poll_interval_s x fast_poll_from)`` ≈ 0.2), never below ``fast_poll_min_share`` of
it, where the 20-polls-per-CAPTCHA budget rather than HTTP cost becomes the limit. The first-poll delay
shrinks half as much, so most solves still finish before their first poll is spent.

Shared by the worker (``worker/solver.py``) and the simulator (``controller/sim``), so the simulator's
detection delay follows the schedule the worker really runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from captcha_fleet.contract.config import ApiConfig


@dataclass(frozen=True)
class PollPace:
    """The poll interval and the factor applied to every first-poll delay, for one process right now."""

    interval_s: float
    first_poll_factor: float

    def first_poll_s(self, api: ApiConfig, method: str) -> float:
        """The first-poll delay of ``method`` at this pace."""
        return api.first_poll_delay(method) * self.first_poll_factor


def poll_pace(held: int, api: ApiConfig) -> PollPace:
    """The pace for a process holding ``held`` solves that wait for an answer."""
    base = api.poll_interval_s
    if api.fast_poll_from <= 0 or held <= api.fast_poll_from:
        return PollPace(base, 1.0)
    share = max(api.fast_poll_min_share, api.fast_poll_from / held)
    return PollPace(base * share, 0.5 + 0.5 * share)


def fastest_pace(api: ApiConfig) -> PollPace:
    """The fastest pace any process may poll at (to count, conservatively, the polls a CAPTCHA has had)."""
    if api.fast_poll_from <= 0:
        return PollPace(api.poll_interval_s, 1.0)
    share = api.fast_poll_min_share
    return PollPace(api.poll_interval_s * share, 0.5 + 0.5 * share)
