"""The seed's two rules (thread pool, process scaler) as published, with utilization measured fleet-wide."""

from __future__ import annotations

from captcha_fleet.controller.strategies.seed import SeedProcessPolicy, SeedThreadPolicy
from tests.strategy_signals import SETTINGS, sig, st


def test_seed_thread_rule() -> None:
    p = SeedThreadPolicy(SETTINGS)
    assert p.interval_s == 10.0
    assert p.initial_state().desired == 2
    assert p.decide(sig(pending=21, busy=8), st(10))[0].desired_slots == 12  # 80 % > 70 %
    assert p.decide(sig(pending=21, busy=7), st(10))[0].desired_slots == 10  # 70 % is not > 70 %
    assert p.decide(sig(pending=20, busy=10), st(10))[0].desired_slots == 10  # 20 is not > 20
    assert p.decide(sig(pending=50, busy=20), st(20))[0].desired_slots == 20  # max 20
    assert p.decide(sig(pending=4, busy=1), st(10))[0].desired_slots == 9  # 10 % < 20 %
    assert p.decide(sig(pending=4, busy=0), st(2))[0].desired_slots == 2  # min 2


def test_seed_max_caps_the_thread_rule() -> None:
    p = SeedThreadPolicy(SETTINGS, max_slots=100)
    assert p.name == "seed:100"
    assert p.decide(sig(pending=50, busy=20), st(20))[0].desired_slots == 22  # 20 is no longer the cap


def test_seed_process_rule() -> None:
    p = SeedProcessPolicy(SETTINGS)
    assert p.interval_s == 15.0
    assert p.decide(sig(pending=21), st(4))[0].desired_slots == 6  # 21 > 20: + max(1, 2)
    assert p.decide(sig(pending=20), st(4))[0].desired_slots == 4
    assert p.decide(sig(pending=200), st(10))[0].desired_slots == 16  # capped at 16
    assert p.decide(sig(pending=2), st(10))[0].desired_slots == 8  # -2
    assert p.decide(sig(pending=2), st(3))[0].desired_slots == 2  # min 2
