"""KEDA's Redis list scaler through the HPA algorithm: only the pending list counts; tolerance, rate limit and the
300 s scale-down stabilization as Kubernetes applies them."""

from __future__ import annotations

from captcha_fleet.controller.strategies.keda import KedaPolicy
from tests.strategy_signals import SETTINGS, sig, st


def test_keda_counts_only_the_list() -> None:
    p = KedaPolicy(SETTINGS)
    # 30 tasks in flight, nothing pending: KEDA's list scaler sees 0 and wants the minimum.
    d, state = p.decide(sig(now=0.0, pending=0, busy=30, slots=30), st(30))
    assert d.recommendation == SETTINGS.min_slots
    assert d.desired_slots == 30  # ... but the 300 s stabilization holds the current size
    d, state = p.decide(sig(now=301.0, pending=0, busy=30, slots=30), state)
    assert d.desired_slots == SETTINGS.min_slots


def test_keda_tolerance_and_rate_limit() -> None:
    p = KedaPolicy(SETTINGS)
    assert p.interval_s == 15.0
    assert p.decide(sig(pending=52), st(10))[0].desired_slots == 10  # ratio 1.04 within 0.1
    assert p.decide(sig(pending=60), st(10))[0].desired_slots == 12
    assert p.decide(sig(pending=500), st(10))[0].desired_slots == 20  # +100 % per period
    assert p.decide(sig(pending=500), st(2))[0].desired_slots == 6  # ... or +4 pods


def test_keda_list_length_target() -> None:
    p = KedaPolicy(SETTINGS, target_per_replica=2.0)
    assert p.name == "keda:2"
    assert p.decide(sig(pending=24), st(10))[0].desired_slots == 12  # ceil(24 / 2)
