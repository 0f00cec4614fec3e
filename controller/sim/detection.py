"""When the worker sees an answer: the poll schedule of ``worker/solver.py``, replayed for one solve.

A slot is held from claim until the solve is *seen*, not until the provider finishes it: the first poll
comes after the method's first-poll delay, then one every interval (the process's tick grid, which a solve
joins at the nearest tick), stretched after 60 % of the 20-poll budget. Interval and first-poll delay follow
:func:`captcha_fleet.contract.poll_pace.poll_pace` for the solves the process holds, as the worker does.
"""

from __future__ import annotations

import math

from captcha_fleet.contract.config import ApiConfig
from captcha_fleet.contract.poll_pace import poll_pace

EARLY_POLL_SHARE = 0.6  # as worker/solver.py
POLL_STRETCH = 1.5


def seen_after(
    solve_s: float,
    held: int,
    phase: float,
    api: ApiConfig,
    method: str = "userrecaptcha",
    round_trip_s: float = 0.0,
) -> float:
    """Seconds from the submit until the poller sees a solve that took ``solve_s`` at the provider.

    ``held`` is how many solves the process holds (its pace); ``phase`` in [0, 1) is where the process's tick
    grid stands, so the first poll lands within half an interval of its due time when others are polled too.
    A poll reaches the provider, and its answer the poller, ``round_trip_s`` after it is sent (the sandbox
    holds a request for the whole round trip before it answers).
    """
    pace = poll_pace(held, api)
    interval = pace.interval_s
    at = pace.first_poll_s(api, method)
    if held > 1:  # a running tick grid: the solve joins the nearest tick
        at += (phase - 0.5) * interval
    budget = max(1, api.max_polls_per_captcha)
    early = max(1, math.ceil(EARLY_POLL_SHARE * budget))
    polls = 1
    while at + round_trip_s < solve_s and polls < budget:
        gap = interval if polls < early else interval * POLL_STRETCH ** (polls - early + 1)
        at += gap
        polls += 1
    return max(at + round_trip_s, solve_s)
