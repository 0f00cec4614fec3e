"""Per-method solve windows (issue 24): bounded, fed by each method's events, and a view of a mixed stream that
one window of the latest completions blurs; the queue model's P95 checked against Little's law."""

from __future__ import annotations

import time
from dataclasses import replace

import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.windows import FinishedTasksWindow
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.signals import Signals, fresh_ages
from captcha_fleet.controller.sources.method_solves import MAX_METHODS, OTHER, SAMPLES_PER_METHOD, MethodSolveTimes
from captcha_fleet.controller.sources.redis_signals import RedisSignalSource
from captcha_fleet.controller.strategies.queue_model import MAX_CORRECTION, QueueModelPolicy, hold_ratio, queue_model

S = ControllerSettings()


def test_the_source_keeps_one_bounded_window_per_method_fed_by_its_events(r: redis.Redis, keys: Keys) -> None:
    src = RedisSignalSource(r, keys, S)
    now = time.time()
    methods = [f"m{i}" for i in range(MAX_METHODS + 5)]  # more names than windows: the rest are grouped
    for i, method in enumerate(methods):
        solve = 2.0 + i
        for j in range(SAMPLES_PER_METHOD + 20):
            r.xadd(keys.events, {"id": f"{method}-{j}", "status": "success", "latency_s": str(solve + 1),
                                 "api_s": str(solve), "method": method, "ts": str(now)})  # fmt: skip
    r.xadd(keys.events, {"id": "x" * 200, "status": "success", "latency_s": "9", "api_s": "8",
                         "method": "y" * 200, "ts": str(now)})  # fmt: skip
    signals = src.read().signals
    by_method = signals.solve_by_method
    assert set(by_method) == {*methods[:MAX_METHODS], OTHER}
    for i, method in enumerate(methods[:MAX_METHODS]):  # each window holds its own method's solves only
        assert by_method[method].mean_s == 2.0 + i
        assert by_method[method].samples == SAMPLES_PER_METHOD
    assert by_method[OTHER].samples == SAMPLES_PER_METHOD
    assert abs(sum(m.share for m in by_method.values()) - 1.0) < 1e-9


def _mixed_stream(image_s: float, token_share: float) -> tuple[MethodSolveTimes, FinishedTasksWindow, float]:
    """Ten minutes of a steady mix (tokens 4x the images), then a burst of 100 s in which only images finished
    (its tokens are still being solved). Returns the per-method windows, one pooled window, and the end."""
    token_s = 4.0 * image_s
    per_method = MethodSolveTimes(mix_window_s=600.0, max_age_s=600.0)
    pooled = FinishedTasksWindow(S.latency_window_s)
    t, step = 0.0, 1.0
    tokens_due = 0.0
    while t < 500.0:
        tokens_due += token_share
        method, solve = ("userrecaptcha", token_s) if tokens_due >= 1.0 else ("base64", image_s)
        tokens_due -= 1.0 if method == "userrecaptcha" else 0.0
        per_method.add(t, method, solve)
        pooled.add(t, solve + 1.0, solve)
        t += step
        if int(t) % 10 == 0:
            per_method.observe(t)
    while t < 600.0:  # the burst: images finish five times a second, no token has yet
        per_method.add(t, "base64", image_s)
        pooled.add(t, image_s + 1.0, image_s)
        t += 0.2
    per_method.observe(t)
    pooled.trim(t)
    return per_method, pooled, t


@settings(max_examples=40, deadline=None)
@given(
    image_s=st.floats(min_value=3.0, max_value=10.0),
    token_share=st.floats(min_value=0.3, max_value=0.8),
    pending=st.integers(min_value=25, max_value=300),
)
def test_a_burst_of_fast_completions_does_not_hide_the_slow_method(
    image_s: float, token_share: float, pending: int
) -> None:
    per_method, pooled, now = _mixed_stream(image_s, token_share)
    base = Signals(now=now, pending=pending, in_flight=20, slots=20, busy=20, arrival_rate=2.0,
                   completion_rate=2.0, ages=fresh_ages())  # fmt: skip
    blurred = replace(base, mean_solve_s=pooled.mean_solve(), p95_solve_s=pooled.solve(0.95))
    seen = replace(base, mean_solve_s=per_method.mean(), p95_solve_s=per_method.quantile(0.95),
                   solve_by_method=per_method.by_method())  # fmt: skip
    # The per-method view still knows the tokens: its P95 is theirs, its mean between the two methods.
    assert seen.p95_solve_s == 4.0 * image_s
    assert pooled.solve(0.95) == image_s  # one window of completions saw only images
    assert seen.mean_solve_s is not None and image_s < seen.mean_solve_s < 4.0 * image_s
    # So the policy budgets less queueing time for the same queue and asks for more slots.
    policy = QueueModelPolicy(S)
    state = replace(policy.initial_state(), desired=20)
    d_seen, _ = policy.decide(seen, state)
    d_blurred, _ = policy.decide(blurred, state)
    assert queue_model(seen, S).drain_s < queue_model(blurred, S).drain_s
    assert d_seen.recommendation is not None and d_blurred.recommendation is not None
    assert d_seen.recommendation > d_blurred.recommendation
    assert d_seen.desired_slots >= d_blurred.desired_slots


@settings(max_examples=60, deadline=None)
@given(
    busy=st.floats(min_value=0.0, max_value=500.0),
    rate=st.floats(min_value=0.01, max_value=50.0),
    solve=st.floats(min_value=0.5, max_value=120.0),
)
def test_little_s_law_only_ever_shortens_the_queueing_budget(busy: float, rate: float, solve: float) -> None:
    signals = Signals(now=0.0, pending=50, in_flight=10, slots=10, busy=10, arrival_rate=rate,
                      completion_rate=rate, mean_solve_s=solve, p95_solve_s=2 * solve, mean_busy=busy)  # fmt: skip
    ratio = hold_ratio(signals)
    assert 1.0 <= ratio <= MAX_CORRECTION
    if busy / rate > solve * 1.01:  # tasks hold their slots longer than the finished ones say
        assert ratio > 1.0
    unmeasured = replace(signals, mean_busy=None)
    assert hold_ratio(unmeasured) == 1.0
    assert queue_model(signals, S).drain_s <= queue_model(unmeasured, S).drain_s
    assert queue_model(signals, S, periodic=True).drain_s == queue_model(unmeasured, S).drain_s
