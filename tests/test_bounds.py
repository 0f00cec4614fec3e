"""The operator's bounds hold whichever policy decides, whatever the signals say (hypothesis), and placement
never runs more services than it is allowed (issue 21: ``max_services: 2`` ran 11 worker processes)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captcha_fleet.contract.config import ConfigError
from captcha_fleet.controller.placement import ServiceView, place
from captcha_fleet.controller.settings import ControllerSettings, controller_settings
from captcha_fleet.controller.signals import ESSENTIAL_SOURCES, SOURCE_BALANCE, MethodSolve, Signals, fresh_ages
from captcha_fleet.controller.sim.engine import SimConfig, simulate
from captcha_fleet.controller.sim.traces import Trace
from captcha_fleet.controller.strategies.base import PolicyState
from captcha_fleet.controller.strategies.bounds import BoundedPolicy, finite_signals
from captcha_fleet.controller.strategies.registry import make_policy

POLICIES = ("queue-model", "seed", "seed:5000", "seed-process", "keda", "keda:0.5", "static:7", "static:100000")

# What an untrusted heartbeat or counter may carry: NaN, infinities, negatives, absurd magnitudes.
wild_floats = st.none() | st.floats(allow_nan=True, allow_infinity=True)
wild_counts = st.integers(min_value=-(10**6), max_value=10**30)
wild_rates = st.dictionaries(st.sampled_from(["capacity", "fatal", "task"]), st.floats(allow_nan=True))


# The Signals fields a count or a measured float reaches: each as wild as an untrusted source can make it.
WILD_COUNT_FIELDS = ("slots", "busy", "starting_slots", "services", "completed_in_window")
WILD_FLOAT_FIELDS = (
    "arrival_rate",
    "completion_rate",
    "p95_latency_s",
    "p50_latency_s",
    "mean_solve_s",
    "p95_solve_s",
    "balance",
    "burn_rate",
    "mean_busy",
)
wild_method_solves = st.dictionaries(
    st.sampled_from(["userrecaptcha", "base64", "post"]),
    st.builds(
        MethodSolve,
        share=wild_floats.filter(lambda v: v is not None),
        mean_s=st.floats(),
        p95_s=st.floats(),
        samples=wild_counts,
    ),
)


def wild_signals() -> st.SearchStrategy[Signals]:
    """Signals as an untrusted fleet could report them (the fields finite_signals must make finite)."""
    return st.builds(
        Signals,
        now=st.floats(min_value=0.0, max_value=1e7),  # the controller's own clock, not an input
        pending=st.none() | wild_counts,
        in_flight=st.none() | wild_counts,
        error_rates=wild_rates,
        host_error_rates=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.floats(allow_nan=True)),
        ages=st.dictionaries(st.sampled_from((*ESSENTIAL_SOURCES, SOURCE_BALANCE)), st.floats(allow_nan=True)),
        solve_by_method=wild_method_solves,
        **{name: wild_counts for name in WILD_COUNT_FIELDS},
        **{name: wild_floats for name in WILD_FLOAT_FIELDS},
    )


@st.composite
def bounded_settings(draw: st.DrawFn) -> ControllerSettings:
    plan = draw(st.integers(min_value=1, max_value=500))
    per = draw(st.integers(min_value=1, max_value=300))
    max_services = draw(st.integers(min_value=1, max_value=12))
    top = min(plan, per * max_services)
    return controller_settings(
        {
            "plan_threads": plan,
            "slots_over_plan": draw(st.sampled_from([0.0, 0.1, 0.5])),
            "max_slots": draw(st.integers(min_value=top, max_value=2000)),
            "min_slots": draw(st.integers(min_value=0, max_value=min(top, 5))),
            "slots_per_service": per,
            "max_services": max_services,
            "min_services": draw(st.integers(min_value=0, max_value=min(max_services, 2))),
            "balance_floor": draw(st.floats(min_value=0.0, max_value=50.0)),
            "below_balance_floor": draw(st.sampled_from(["stop", "keep_min"])),
        }
    )


states = st.builds(
    PolicyState,
    desired=st.integers(min_value=0, max_value=10**6),
    services=st.integers(min_value=0, max_value=1000),
    recommendations=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=1e7), st.integers(min_value=0, max_value=10**6)), max_size=6
    ).map(tuple),
    last_pending=st.integers(min_value=0, max_value=10**6),
    last_busy=st.integers(min_value=0, max_value=10**6),
    queue_growth=st.floats(min_value=-1e6, max_value=1e6),
    # a last evaluation and a growing run before or after now: the rising-burst and plan-bound terms get to act
    last_eval=st.none() | st.floats(min_value=0.0, max_value=1e7),
    growing_since=st.none() | st.floats(min_value=0.0, max_value=1e7),
    frozen=st.booleans(),
)


def slot_limit(s: ControllerSettings) -> int:
    return min(s.max_slots, s.plan_slots, s.max_services * s.slots_per_service)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(POLICIES), bounded_settings(), wild_signals(), states)
def test_every_policy_stays_within_the_bounds(
    name: str, s: ControllerSettings, sig: Signals, state: PolicyState
) -> None:
    policy = make_policy(name, s)
    d, new = policy.decide(sig, state)  # never raises, whatever the signals
    assert 0 <= d.desired_slots <= slot_limit(s)
    assert s.min_services <= d.desired_services <= s.max_services
    assert d.desired_services * s.slots_per_service >= d.desired_slots  # the services allowed hold the slots
    balance = finite_signals(sig).balance
    if balance is not None and balance < s.balance_floor:
        assert d.desired_slots <= (0 if s.below_balance_floor == "stop" else s.min_slots)
        assert "balance-floor" in d.bounds or d.desired_slots == 0 or d.desired_slots <= s.min_slots
    assert (new.desired, new.services) == (d.desired_slots, d.desired_services)
    assert d.previous_slots == state.desired
    # A cut is named in the decision log.
    assert isinstance(policy, BoundedPolicy)
    asked, _ = policy.inner.decide(finite_signals(sig), state)
    if asked.desired_slots > d.desired_slots:
        assert d.bounds and d.rule.startswith(("bound:", "guard:balance-floor")), d
        assert f"cut to {d.desired_slots}" in d.reason
    # Placement of the decision starts no service past the decision's count.
    views = [ServiceView(f"h:{i}", "running") for i in range(new.services % 5)]
    p = place(d.desired_slots, d.desired_services, s.slots_per_service, views)
    assert len(views) - len(p.drain) + len(p.undrain) + p.start <= s.max_services
    assert p.unplaced == 0


@settings(max_examples=200, deadline=None)
@given(wild_signals())
def test_finite_signals_leave_no_measured_value_nan_infinite_or_negative(sig: Signals) -> None:
    """Every measured number a strategy reads comes out finite and in range, per-method windows included."""
    clean = finite_signals(sig)
    for name in (*WILD_FLOAT_FIELDS, *WILD_COUNT_FIELDS):
        value = getattr(clean, name)
        assert value is None or math.isfinite(value), name
        if name != "balance":
            assert value is None or value >= 0, name
    for m in clean.solve_by_method.values():
        assert 0.0 <= m.share <= 1.0
        assert math.isfinite(m.mean_s) and m.mean_s > 0
        assert math.isfinite(m.p95_s) and m.p95_s > 0
        assert m.samples >= 0


service_views = st.lists(
    st.builds(
        ServiceView,
        id=st.text("abcdef0123456789", min_size=1, max_size=6),
        status=st.sampled_from(["starting", "running", "draining"]),
        busy=st.integers(min_value=0, max_value=500),
        host=st.sampled_from(["a", "b", "c"]),
    ),
    max_size=12,
    unique_by=lambda v: v.id,
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=5000),
    st.integers(min_value=0, max_value=12),
    st.integers(min_value=1, max_value=300),
    service_views,
    st.sets(st.sampled_from(["a", "b", "c"]), max_size=2),
)
def test_placement_never_runs_more_services_than_asked(
    slots: int, services: int, per: int, views: list[ServiceView], replace_hosts: set[str]
) -> None:
    p = place(slots, services, per, views, replace_hosts=replace_hosts)
    active = {v.id for v in views if v.status != "draining"} - set(p.drain)
    after = len(active) + len(p.undrain) + p.start
    assert after <= max(services, len(active))  # never starts or brings back past the count
    assert p.start == 0 or after <= services
    placed = p.total + sum(p.new_targets)
    assert placed + p.unplaced == slots
    assert placed <= services * per and all(t <= per for t in (*p.targets.values(), *p.new_targets))
    assert all(p.targets[w] == 0 for w in p.drain)


def test_max_services_cuts_the_slots_and_says_so() -> None:
    s = ControllerSettings(slots_per_service=10, max_services=2, plan_threads=100)
    sig = Signals(now=100.0, pending=500, in_flight=20, slots=20, busy=20, arrival_rate=5.0, ages=fresh_ages())
    d, _ = make_policy("queue-model", s).decide(sig, PolicyState(desired=20, services=2))
    assert (d.desired_slots, d.desired_services, d.rule) == (20, 2, "bound:max_services")
    assert "max_services" in d.bounds
    d, _ = make_policy("queue-model", s).decide(sig, PolicyState(desired=5, services=1))
    assert (d.desired_slots, d.desired_services, d.rule) == (20, 2, "bound:max_services")
    assert "max_services 2 x slots_per_service 10 = 20" in d.reason and d.to_dict()["bounds"] == ["max_services"]


@pytest.mark.parametrize(("mode", "expected"), [("stop", 0), ("keep_min", 2)])
def test_below_the_floor_stops_or_keeps_the_minimum(mode: str, expected: int) -> None:
    s = ControllerSettings(below_balance_floor=mode)
    sig = Signals(now=100.0, pending=50, in_flight=40, slots=40, busy=40, balance=0.4, ages=fresh_ages())
    d, state = make_policy("queue-model", s).decide(sig, PolicyState(desired=40, services=1))
    assert d.desired_slots == expected and state.desired == expected
    assert d.rule == "guard:balance-floor" and "below the $1.00 floor" in d.reason
    assert d.alerts and "below_balance_floor: " + mode in d.alerts[-1]
    assert d.desired_services == 1  # the process stays up at target 0: a top-up resumes it at once
    topped_up = replace(sig, now=110.0, balance=25.0)
    d, _ = make_policy("queue-model", s).decide(topped_up, state)
    assert d.desired_slots > expected and not d.bounds


def test_the_simulator_below_the_floor_solves_nothing_more_and_drops_nothing() -> None:
    trace = Trace("trickle", tuple([1] * 60))
    s = ControllerSettings()  # below_balance_floor: stop
    result = simulate(trace, make_policy("queue-model", s), s, SimConfig(balance=0.5, max_tail_s=60.0))
    assert s.below_balance_floor == "stop"
    assert all(d.desired_slots == 0 for d in result.decisions)
    assert result.completed <= s.min_slots  # only what the fleet held before the first evaluation
    assert result.completed + result.lost == result.tasks  # the rest waits in the queue


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"below_balance_floor": "pause"}, "expected stop or keep_min"),
        ({"max_services": 0, "min_services": 0}, "1 <= max_services"),
        ({"min_slots": 30, "slots_per_service": 10, "max_services": 2}, "max_services x slots_per_service"),
    ],
)
def test_settings_reject_bounds_that_cannot_hold(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        controller_settings(changes)
