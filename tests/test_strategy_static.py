"""A fixed size, and the bookkeeping every baseline shares: a change of size is counted and timed once."""

from __future__ import annotations

from captcha_fleet.controller.strategies.static import StaticPolicy
from tests.strategy_signals import SETTINGS, sig, st


def test_static() -> None:
    p = StaticPolicy(SETTINGS, 7)
    assert p.initial_state().desired == 7
    assert p.decide(sig(pending=1000), st(7))[0].desired_slots == 7


def test_a_change_of_size_is_counted_once_and_timed() -> None:
    p = StaticPolicy(SETTINGS, 7)
    decision, state = p.decide(sig(now=5.0), st(3))
    assert decision.changed and decision.previous_slots == 3
    assert (state.desired, state.changes, state.last_change, state.last_eval) == (7, 1, 5.0, 5.0)
    decision, state = p.decide(sig(now=65.0), state)
    assert not decision.changed
    assert (state.changes, state.last_change, state.last_eval) == (1, 5.0, 65.0)
