"""The slot limiter: targets, AIMD on capacity errors, waiting for free slots."""

from __future__ import annotations

import itertools
import random
import threading
import time

from captcha_fleet.worker.concurrency import (
    MIN_EDGE_STREAK,
    PLAN_FULL_MAX_BASES,
    SlotLimiter,
    is_plan_full,
    past_the_edge,
    retry_delay,
)


def test_target_applies_at_once_without_capacity_errors() -> None:
    limiter = SlotLimiter(0, min_decrease_gap_s=0.01)
    assert limiter.slots == 0
    limiter.set_target(40)
    assert limiter.slots == 40


def test_capacity_errors_cut_multiplicatively_and_recover_additively() -> None:
    limiter = SlotLimiter(20, decrease_factor=0.5, min_decrease_gap_s=0.0)
    limiter.on_capacity_error()
    assert limiter.slots == 10
    limiter.on_success()  # an accepted submit between the cuts: no outage, so no slow start after them
    limiter.on_capacity_error()
    assert limiter.slots == 5
    for _ in range(6):  # about +1 per window (5 or 6 accepted submits at this limit)
        limiter.on_success()
    assert limiter.slots == 6
    limiter.set_target(30)  # a recent capacity error: the new target does not lift the limit
    assert limiter.slots == 6


def test_one_burst_of_refusals_counts_once() -> None:
    limiter = SlotLimiter(20, decrease_factor=0.5, min_decrease_gap_s=10.0)
    for _ in range(10):
        limiter.on_capacity_error()
    assert limiter.slots == 10


def test_wait_free_blocks_until_a_slot_is_released() -> None:
    limiter = SlotLimiter(2)
    slots = limiter.take(2)
    assert limiter.wait_free(0.05) == 0
    threading.Timer(0.05, slots[0].release).start()
    started = time.monotonic()
    assert limiter.wait_free(5) == 1
    assert time.monotonic() - started < 2


def test_pause_and_zero_target_hand_out_nothing() -> None:
    limiter = SlotLimiter(5)
    limiter.set_paused(True)
    assert limiter.wait_free(0.01) == 0
    limiter.set_paused(False)
    limiter.set_target(0)
    assert limiter.wait_free(0.01) == 0
    assert limiter.wait_idle(0.01)


def test_poll_schedule_keeps_the_interval_then_stretches_within_the_budget() -> None:
    from captcha_fleet.contract.config import ApiConfig
    from captcha_fleet.worker.solver import poll_spacing, polls_spent

    api = ApiConfig(poll_interval_s=5.0, max_polls_per_captcha=20, task_deadline_s=180.0)
    times, at, n = [15.0], 15.0, 1
    while (gap := poll_spacing(n, 180.0 - at, api)) is not None and at + gap < 180.0:  # the deadline ends it
        at, n = at + gap, n + 1
        times.append(at)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:11] == [5.0] * 11  # polls 1..12 every 5 s
    assert gaps[11:-1] == sorted(gaps[11:-1]) and gaps[11] > 5.0  # then stretched
    assert len(times) <= 20  # within the budget
    assert times[-1] == 175.0  # a last look just before the deadline
    # A resumed solve counts the polls its previous worker made on this schedule.
    assert polls_spent(10.0, 15.0, api) == 0
    assert polls_spent(15.0, 15.0, api) == 1
    assert polls_spent(26.0, 15.0, api) == 3  # 15, 20, 25
    assert polls_spent(70.0, 15.0, api) == 12
    assert polls_spent(120.0, 15.0, api) == len([t for t in times if t <= 120.0])
    assert polls_spent(10_000.0, 15.0, api) == 19  # one poll is always left


def test_a_small_poll_budget_still_looks_once_before_the_deadline() -> None:
    from captcha_fleet.contract.config import ApiConfig
    from captcha_fleet.worker.solver import poll_spacing

    api = ApiConfig(poll_interval_s=0.05, max_polls_per_captcha=5, task_deadline_s=10.0)
    assert poll_spacing(4, 9.0, api) == 8.95
    assert poll_spacing(5, 1.0, api) is None


def test_plan_full_refusals_at_the_edge_hold_the_limit() -> None:
    limiter = SlotLimiter(44, decrease_factor=0.5, min_decrease_gap_s=0.0)
    for _ in range(3):  # a few refusals between accepted submits: slots just over the plan
        limiter.on_capacity_error("ERROR_NO_SLOT_AVAILABLE")
        limiter.on_capacity_error("ERROR_ZERO_BALANCE")
        limiter.on_success()
    assert limiter.slots == 44


def test_other_capacity_errors_still_cut() -> None:
    limiter = SlotLimiter(44, decrease_factor=0.5, min_decrease_gap_s=0.0)
    limiter.on_capacity_error("ERROR_TOO_MUCH_REQUESTS")
    assert limiter.slots == 22
    limiter.on_capacity_error()  # an HTTP 5xx or timeout carries no plan-full code
    assert limiter.slots == 11


def test_a_streak_of_plan_full_refusals_past_the_edge_cuts() -> None:
    limiter = SlotLimiter(40, decrease_factor=0.5, min_decrease_gap_s=0.0)
    assert not past_the_edge(8, 40.0) and past_the_edge(9, 40.0)  # 20 % of the limit
    assert not past_the_edge(MIN_EDGE_STREAK, 2.0)
    for _ in range(8):
        limiter.on_capacity_error("ERROR_NO_SLOT_AVAILABLE")
    assert limiter.slots == 40
    limiter.on_capacity_error("ERROR_NO_SLOT_AVAILABLE")
    assert limiter.slots == 20


def test_plan_full_retries_do_not_back_off_exponentially() -> None:
    rng = random.Random(1)
    plan_full = [retry_delay("ERROR_NO_SLOT_AVAILABLE", 10, 1.0, 60.0, rng) for _ in range(200)]
    other = [retry_delay("ERROR_TOO_MUCH_REQUESTS", 10, 1.0, 60.0, rng) for _ in range(200)]
    assert max(plan_full) <= PLAN_FULL_MAX_BASES * 1.0
    assert max(other) > 10.0
    assert is_plan_full("ERROR_NO_SLOT_AVAILABLE") and not is_plan_full("MAX_USER_TURN") and not is_plan_full(None)
