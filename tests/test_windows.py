"""The one percentile and the two latency windows (captcha_fleet.contract.windows)."""

from __future__ import annotations

import math

import pytest

from captcha_fleet.contract.windows import CounterWindow, FinishedTasksWindow, LastLatencies, percentile
from captcha_fleet.controller.sources.busy_window import BusyWindow


def test_percentile_is_nearest_rank_on_unsorted_values() -> None:
    values = [float(v) for v in range(20, 0, -1)]  # 20 .. 1, unsorted
    assert percentile(values, 0.5) == 10.0
    assert percentile(values, 0.95) == 19.0  # the 19th of 20
    assert percentile(values, 0.99) == 20.0
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 20.0
    assert percentile([3.5], 0.5) == 3.5


def test_percentile_of_no_values_raises() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_last_latencies_keeps_the_last_n_and_reports_none_when_empty() -> None:
    window = LastLatencies(3)
    assert window.summary() == {"count": 0, "p50": None, "p95": None, "p99": None}
    for seconds in (100.0, 1.0, 2.0, 3.0004):
        window.add(seconds)
    assert window.summary() == {"count": 3, "p50": 2.0, "p95": 3.0, "p99": 3.0}  # 100 fell out, ms rounding


def test_finished_tasks_window_forgets_tasks_before_the_window() -> None:
    window = FinishedTasksWindow(window_s=10.0)
    assert window.latency(0.95) is None and window.solve(0.5) is None and window.mean_solve() is None
    window.add(0.0, 50.0, 5.0)
    window.add(8.0, 20.0, 10.0)
    window.add(9.0, 30.0, 15.0)
    window.trim(now=12.0)  # the task finished at 0 is older than 10 s
    assert len(window) == 2
    assert window.latency(0.5) == 20.0 and window.solve(0.95) == 15.0
    assert window.mean_solve() == 12.5


def test_counter_window_rate_and_reset() -> None:
    window = CounterWindow(window_s=60.0)
    assert window.rate() is None
    window.add(0.0, 10.0)
    window.add(10.0, 30.0)
    assert window.rate() == 2.0
    window.add(20.0, 5.0)  # the counter restarted
    assert window.rate() is None
    assert not math.isnan(percentile([window.window_s], 0.5))


def test_the_arrivals_count_carries_an_epoch_that_a_restart_or_a_step_back_bumps() -> None:
    """A policy subtracts the arrivals count at its last evaluation from the one now; across a counter reset (a
    step back) or a restart of the counts (a jump) the two do not subtract, and the epoch tells it so."""
    from captcha_fleet.controller.settings import ControllerSettings
    from captcha_fleet.controller.sources.windows import SignalWindows

    windows = SignalWindows(ControllerSettings())

    def read(now: float) -> tuple[float | None, int]:
        got = windows.signals(now, pending=0, in_flight=0, slots=1, busy=0, services=1, ages={})
        return got.arrived_count, got.count_epoch

    assert read(0.0) == (None, 0)
    windows.count(1.0, 100.0, 90.0)
    windows.count(2.0, 130.0, 95.0)
    assert read(2.0) == (130.0, 0)
    windows.count(3.0, 20.0, 10.0)  # the counter went back: a reset
    assert read(3.0) == (20.0, 1)
    windows.restart_counts()  # the source saw a jump
    assert read(4.0) == (None, 2)
    windows.count(5.0, 5000.0, 10.0)
    assert read(5.0) == (5000.0, 2)


def cold_start(window: BusyWindow, until_s: float, rate: float = 0.5, hold_s: float = 18.0) -> CounterWindow:
    """A fleet from empty: ``rate`` tasks/s arrive from 0 s and each holds its slot ``hold_s``; busy readings and
    the completions counter every 10 s (the evaluation interval), as the controller takes them."""
    completions = CounterWindow(60.0)
    t = 0.0
    while t <= until_s:
        window.add(t, round(rate * min(t, hold_s)))
        completions.add(t, rate * max(0.0, t - hold_s))
        t += 10.0
    return completions


def test_little_s_law_waits_until_the_busy_window_has_slid_past_a_cold_start() -> None:
    """Mean busy / completion rate is the slot hold per task (queue_model.hold_ratio), but not from a cold start:
    the window holds busy time whose completions come a hold later."""
    unguarded = BusyWindow(60.0, warmup_s=0.0)
    completions = cold_start(unguarded, 50.0)
    mean, rate = unguarded.mean(), completions.rate()
    assert mean is not None and rate is not None and mean / rate / 18.0 > 1.15  # a hold 1.2x too long

    guarded = BusyWindow(60.0)
    cold_start(guarded, 110.0)
    assert guarded.mean() is None  # under two windows of readings: no Little's law yet
    warm = BusyWindow(60.0)
    completions = cold_start(warm, 130.0)
    mean, rate = warm.mean(), completions.rate()
    assert mean is not None and rate is not None and mean / rate / 18.0 == pytest.approx(1.0, abs=0.05)


def test_a_clock_that_went_back_starts_the_busy_window_s_warm_up_again() -> None:
    window = BusyWindow(60.0)
    cold_start(window, 130.0)
    assert window.mean() is not None
    window.add(5.0, 3)  # a new leader's clock, or a restarted one
    assert window.mean() is None
