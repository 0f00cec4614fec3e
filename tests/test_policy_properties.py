"""Properties of the queue-model policy over arbitrary signals (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.signals import ESSENTIAL_SOURCES, Signals
from captcha_fleet.controller.strategies.base import PolicyState
from captcha_fleet.controller.strategies.queue_model import QueueModelPolicy, balance_ceiling

rates = st.none() | st.floats(min_value=0.0, max_value=50.0)
counts = st.integers(min_value=0, max_value=5000)
ages = st.dictionaries(st.sampled_from(ESSENTIAL_SOURCES), st.floats(min_value=0.0, max_value=600.0))


@st.composite
def signals(draw: st.DrawFn) -> Signals:
    slots = draw(st.integers(min_value=0, max_value=300))
    return Signals(
        now=draw(st.floats(min_value=0.0, max_value=1e6)),
        pending=draw(st.none() | counts),
        in_flight=draw(st.none() | counts),
        slots=slots,
        busy=draw(st.integers(min_value=0, max_value=300)),
        starting_slots=draw(st.integers(min_value=0, max_value=100)),
        arrival_rate=draw(rates),
        completion_rate=draw(rates),
        p95_latency_s=draw(st.none() | st.floats(min_value=0.1, max_value=1000.0)),
        mean_solve_s=draw(st.none() | st.floats(min_value=0.5, max_value=200.0)),
        p95_solve_s=draw(st.none() | st.floats(min_value=0.5, max_value=400.0)),
        error_rates=draw(st.dictionaries(st.sampled_from(["capacity", "fatal", "task"]), st.floats(0, 1))),
        host_error_rates=draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.floats(0, 1))),
        balance=draw(st.none() | st.floats(min_value=0.0, max_value=100.0)),
        burn_rate=draw(st.none() | st.floats(min_value=0.0, max_value=1.0)),
        ages=draw(ages),
    )


@st.composite
def policy_settings(draw: st.DrawFn) -> ControllerSettings:
    plan = draw(st.integers(min_value=1, max_value=200))
    return ControllerSettings(
        plan_threads=plan,
        min_slots=draw(st.integers(min_value=0, max_value=plan)),
        max_slots=draw(st.integers(min_value=plan, max_value=400)),
    )


states = st.builds(
    PolicyState,
    desired=st.integers(min_value=0, max_value=400),
    recommendations=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=1e6), st.integers(min_value=0, max_value=400)),
        max_size=8,
    ).map(tuple),
    frozen=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(policy_settings(), signals(), states)
def test_never_above_plan_or_balance_ceiling_never_below_min(
    s: ControllerSettings, sig: Signals, state: PolicyState
) -> None:
    state = replace(state, desired=min(state.desired, s.slot_ceiling))
    d, new = QueueModelPolicy(s).decide(sig, state)
    assert d.desired_slots >= s.min_slots
    # The plan's threads plus what waiting for answers holds (slots_over_plan), never above max_slots.
    assert d.desired_slots <= max(s.min_slots, s.slot_ceiling)
    assert s.slot_ceiling <= min(s.max_slots, 2 * s.plan_threads)
    b = balance_ceiling(sig, s)
    if b is not None and d.desired_slots > d.previous_slots:
        assert d.desired_slots <= max(s.min_slots, b)
    assert new.desired == d.desired_slots
    assert d.desired_services >= s.min_services


@settings(max_examples=150, deadline=None)
@given(policy_settings(), signals(), states, st.sampled_from(ESSENTIAL_SOURCES))
def test_stale_signals_never_scale_down(s: ControllerSettings, sig: Signals, state: PolicyState, source: str) -> None:
    state = replace(state, desired=min(max(state.desired, s.min_slots), s.max_effective_slots))
    ages = dict(sig.ages)
    ages[source] = s.stale_after_s + 1.0
    d, _ = QueueModelPolicy(s).decide(replace(sig, ages=ages), state)
    assert d.desired_slots >= d.previous_slots


@settings(max_examples=100, deadline=None)
@given(signals(), states)
def test_balance_below_floor_never_scales_up(sig: Signals, state: PolicyState) -> None:
    s = ControllerSettings()
    state = replace(state, desired=min(max(state.desired, s.min_slots), s.max_effective_slots))
    d, _ = QueueModelPolicy(s).decide(replace(sig, balance=0.5), state)
    assert d.desired_slots <= max(d.previous_slots, s.min_slots)


@settings(max_examples=100, deadline=None)
@given(signals(), states)
def test_decide_is_pure(sig: Signals, state: PolicyState) -> None:
    p = QueueModelPolicy(ControllerSettings())
    assert p.decide(sig, state) == p.decide(sig, state)
