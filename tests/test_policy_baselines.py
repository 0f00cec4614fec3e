"""The baseline policies implement the published rules exactly."""

from __future__ import annotations

from typing import Any

import pytest

from captcha_fleet.controller.baselines import KedaPolicy, SeedProcessPolicy, SeedThreadPolicy, StaticPolicy
from captcha_fleet.controller.bounds import BoundedPolicy
from captcha_fleet.controller.decision import PolicyState
from captcha_fleet.controller.policies import UnknownPolicyError, make_policy
from captcha_fleet.controller.policy import QueueModelPolicy
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.signals import Signals, fresh_ages

SETTINGS = ControllerSettings()


def sig(now: float = 0.0, pending: int = 0, busy: int = 0, slots: int = 10, **kw: Any) -> Signals:
    return Signals(now=now, pending=pending, in_flight=busy, slots=slots, busy=busy, ages=fresh_ages(), **kw)


def st(desired: int, **kw: Any) -> PolicyState:
    return PolicyState(desired=desired, **kw)


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


def test_seed_process_rule() -> None:
    p = SeedProcessPolicy(SETTINGS)
    assert p.interval_s == 15.0
    assert p.decide(sig(pending=21), st(4))[0].desired_slots == 6  # 21 > 20: + max(1, 2)
    assert p.decide(sig(pending=20), st(4))[0].desired_slots == 4
    assert p.decide(sig(pending=200), st(10))[0].desired_slots == 16  # capped at 16
    assert p.decide(sig(pending=2), st(10))[0].desired_slots == 8  # -2
    assert p.decide(sig(pending=2), st(3))[0].desired_slots == 2  # min 2


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


def test_static() -> None:
    p = StaticPolicy(SETTINGS, 7)
    assert p.initial_state().desired == 7
    assert p.decide(sig(pending=1000), st(7))[0].desired_slots == 7


def test_registry() -> None:
    bounded = make_policy("queue-model", SETTINGS)
    assert isinstance(bounded, BoundedPolicy) and isinstance(bounded.inner, QueueModelPolicy)
    assert make_policy("static:12", SETTINGS).name == "static:12"
    for name in ("seed", "seed-process", "keda"):
        assert make_policy(name, SETTINGS).name == name
    with pytest.raises(UnknownPolicyError, match="known: queue-model"):
        make_policy("hpa", SETTINGS)
    with pytest.raises(UnknownPolicyError, match="positive slot count"):
        make_policy("static:x", SETTINGS)
    assert make_policy("keda:2", SETTINGS).name == "keda:2"
    assert make_policy("seed:100", SETTINGS).name == "seed:100"
    with pytest.raises(UnknownPolicyError, match="at least 2"):
        make_policy("seed:1", SETTINGS)
    with pytest.raises(UnknownPolicyError, match="listLength"):
        make_policy("keda:0", SETTINGS)
