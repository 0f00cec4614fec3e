"""The poll pace: the provider's advice for a lone CAPTCHA, faster as one request covers more solves."""

from __future__ import annotations

from captcha_fleet.contract.config import ApiConfig
from captcha_fleet.contract.poll_pace import fastest_pace, poll_pace

API = ApiConfig()  # poll every 5 s, first poll after 15 s (token CAPTCHAs)


def test_a_lone_captcha_keeps_the_providers_advice() -> None:
    for held in (0, 1, API.fast_poll_from):
        pace = poll_pace(held, API)
        assert pace.interval_s == 5.0
        assert pace.first_poll_s(API, "userrecaptcha") == 15.0
        assert pace.first_poll_s(API, "base64") == 5.0


def test_polls_come_faster_as_a_process_holds_more_but_not_below_the_floor() -> None:
    intervals = [poll_pace(n, API).interval_s for n in (20, 50, 100, 2000)]
    assert intervals == sorted(intervals, reverse=True) and intervals[0] < 5.0
    assert intervals[-1] == 5.0 * API.fast_poll_min_share == fastest_pace(API).interval_s
    # The first poll moves up half as much: most token solves (median 15 s) still end before it.
    assert 9.0 <= poll_pace(2000, API).first_poll_s(API, "userrecaptcha") < 15.0


def test_requests_per_task_stay_near_a_fifth_where_the_interval_shrinks() -> None:
    mean_cycle_s = 16.5  # 15.7 s mean solve + under 1 s until it is seen
    for held in (20, 50, 56):
        pace = poll_pace(held, API)
        ticks_per_task = mean_cycle_s / (pace.interval_s * held)  # one res.php per tick covers all ids
        assert ticks_per_task <= 0.2


def test_fast_polling_can_be_switched_off() -> None:
    api = ApiConfig(fast_poll_from=0)
    assert poll_pace(5000, api).interval_s == 5.0
    assert fastest_pace(api).interval_s == 5.0
