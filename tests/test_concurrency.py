"""The slot limiter: targets, AIMD on capacity errors, waiting for free slots."""

from __future__ import annotations

import threading
import time

from worker.concurrency import SlotLimiter


def test_target_applies_at_once_without_capacity_errors() -> None:
    limiter = SlotLimiter(0, min_decrease_gap_s=0.01)
    assert limiter.slots == 0
    limiter.set_target(40)
    assert limiter.slots == 40


def test_capacity_errors_cut_multiplicatively_and_recover_additively() -> None:
    limiter = SlotLimiter(20, decrease_factor=0.5, min_decrease_gap_s=0.0)
    limiter.on_capacity_error()
    assert limiter.slots == 10
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
    limiter.take(2)
    assert limiter.wait_free(0.05) == 0
    threading.Timer(0.05, limiter.release).start()
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
