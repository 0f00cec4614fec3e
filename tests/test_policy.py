"""The queue-model policy: every rule and guard rail, without Redis."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.signals import Signals, fresh_ages
from captcha_fleet.controller.strategies.base import PolicyState
from captcha_fleet.controller.strategies.queue_model import (
    QueueModelPolicy,
    balance_ceiling,
    concentrated_hosts,
    queue_model,
)

# The arithmetic below is written for these (the pre-calibration defaults); the rules do not depend on them.
SETTINGS = ControllerSettings(drain_fraction=1.0, scale_down_window_s=60.0, slots_per_service=10, slots_over_plan=0.0)


def sig(**kw: Any) -> Signals:
    """Fresh, healthy signals for a fleet of 20 slots serving 1 task/s at 15 s solves."""
    base: dict[str, Any] = {
        "now": 1000.0,
        "pending": 0,
        "in_flight": 15,
        "slots": 20,
        "busy": 15,
        "services": 3,
        "arrival_rate": 1.0,
        "completion_rate": 1.0,
        "p95_latency_s": 30.0,
        "mean_solve_s": 15.0,
        "p95_solve_s": 28.0,
        "ages": fresh_ages(),
    }
    base.update(kw)
    return Signals(**base)


def state(desired: int = 20, **kw: Any) -> PolicyState:
    return PolicyState(desired=desired, services=SETTINGS.services_for(desired), **kw)


def policy(**kw: Any) -> QueueModelPolicy:
    return QueueModelPolicy(replace(SETTINGS, **kw))


def test_model_is_littles_law_or_the_backlog_budget() -> None:
    m = queue_model(sig(arrival_rate=2.0, pending=32), SETTINGS)
    assert m.base == pytest.approx(24.0)  # 0.8 x 2/s x 15 s
    # budget = 60 - 28 = 32 s of queueing: 32 pending x 15 s / 32 s
    assert m.drain_s == pytest.approx(32.0)
    assert m.drain == pytest.approx(15.0)
    assert m.slots == 24  # keep-up wins
    assert queue_model(sig(arrival_rate=2.0, pending=80), SETTINGS).slots == 38  # backlog wins


def test_model_uses_prior_before_any_completion() -> None:
    m = queue_model(sig(mean_solve_s=None, p95_solve_s=None, arrival_rate=None, in_flight=4), SETTINGS)
    assert m.slots == 4
    assert m.solve_s == SETTINGS.solve_time_prior_s
    assert m.base == pytest.approx(4.0)  # keeps what is in flight


def test_scale_up_jumps_to_the_model_in_one_evaluation() -> None:
    d, st = policy().decide(sig(arrival_rate=3.0, pending=80), state(20))
    assert d.rule == "scale-up"
    assert d.recommendation == 38  # 80 pending x 15 s / 32 s
    assert d.desired_slots == 44  # + 15 % headroom
    assert st.desired == d.desired_slots
    assert d.desired_services == SETTINGS.services_for(d.desired_slots)
    assert "3.00/s x 15.0s" in d.reason


def test_steady_state_holds() -> None:
    d, _ = policy().decide(sig(slots=17, busy=15), state(17))
    assert d.rule == "hold:triggers"  # 88 % busy: never shrink a busy fleet
    assert not d.changed


def test_over_provisioned_fleet_scales_down() -> None:
    d, _ = policy().decide(sig(), state(20))  # 15 of 20 busy, the model asks for 12
    assert d.rule == "scale-down"
    assert d.desired_slots == 12


def test_never_above_plan_threads() -> None:
    d, _ = policy(plan_threads=50).decide(sig(arrival_rate=10.0, pending=500), state(20))
    assert d.desired_slots == 50
    assert d.ceiling == 50


def test_scale_down_waits_for_the_window() -> None:
    p = policy(release_window_s=60.0)  # no shorter release window: the long one alone acts
    st = state(60)
    quiet = sig(arrival_rate=1.0, busy=10, in_flight=10, slots=60)
    # A high recommendation 30 s ago is still inside the 60 s window: no scale-down yet.
    st = replace(st, recommendations=((970.0, 60),))
    d, st = p.decide(quiet, st)
    assert d.rule == "hold" and d.desired_slots == 60
    # 61 s later the high recommendation has left the window.
    d, st = p.decide(replace(quiet, now=1031.0), st)
    assert d.rule.startswith("scale-down")
    assert d.desired_slots == 12


def test_scale_down_hysteresis_ignores_small_drops() -> None:
    # The model asks for 18 at 1.5/s; 20 - 25 % = 15, so the current size stays.
    d, _ = policy().decide(sig(arrival_rate=1.5), state(20))
    assert d.rule == "hold:hysteresis"
    assert d.desired_slots == 20


def test_idle_fleet_skips_hysteresis() -> None:
    idle = sig(arrival_rate=0.0, busy=0, in_flight=0, slots=3, p95_latency_s=15.0)
    d, _ = policy().decide(idle, state(3))
    assert d.rule == "scale-down:idle"
    assert d.desired_slots == SETTINGS.min_slots


def test_never_below_min() -> None:
    d, _ = policy(min_slots=5).decide(sig(arrival_rate=0.0, busy=0, in_flight=0, slots=3), state(3))
    assert d.desired_slots == 5
    assert d.rule == "clamp:min"


def test_up_triggers_block_scale_down() -> None:
    s = sig(arrival_rate=0.2, busy=19, in_flight=19, slots=20, p95_latency_s=90.0)
    d, _ = policy().decide(s, state(40))
    assert d.rule == "hold:triggers"
    assert "utilization 95% > 80%" in d.reason


def test_high_p95_holds_scale_down_only_while_a_queue_remains() -> None:
    # P95 describes finished tasks: with a queue it means "still behind", without one it is history.
    behind = sig(arrival_rate=0.2, pending=8, busy=2, in_flight=2, slots=40, p95_latency_s=90.0)
    d, _ = policy(queue_up=10).decide(behind, state(40))
    assert d.rule == "hold:triggers" and "P95 90s > 60s" in d.reason
    caught_up = sig(arrival_rate=0.2, pending=0, busy=2, in_flight=2, slots=40, p95_latency_s=90.0)
    d, _ = policy().decide(caught_up, state(40))
    assert d.rule.startswith("scale-down")
    assert d.desired_slots < 40


def test_queue_above_down_threshold_blocks_scale_down() -> None:
    s = sig(arrival_rate=0.1, pending=6, busy=5, in_flight=5, slots=40)
    d, _ = policy().decide(s, state(40))
    assert d.rule == "hold:queue"


def test_counts_capacity_still_starting() -> None:
    # 40 slots were asked for, only 20 are up; the same signals must not ask again.
    p = policy()
    s = sig(arrival_rate=2.5, pending=5, slots=20, busy=20, in_flight=20, starting_slots=20)
    d1, st = p.decide(s, state(20))
    assert d1.rule == "scale-up"
    d2, st = p.decide(replace(s, now=1010.0), st)
    assert d2.desired_slots == d1.desired_slots
    assert d2.rule.startswith("hold")


@pytest.mark.parametrize("source", ["queue", "heartbeats", "events"])
def test_stale_signal_allows_scale_up_only(source: str) -> None:
    ages = fresh_ages()
    ages[source] = 300.0
    p = policy()
    d, _ = p.decide(sig(arrival_rate=0.0, busy=0, in_flight=0, slots=60, ages=ages), state(60))
    assert d.rule == "guard:stale-signals"
    assert d.desired_slots == 60
    d, _ = p.decide(sig(arrival_rate=4.0, pending=50, ages=ages), state(20))
    assert d.rule == "scale-up"


def test_missing_queue_signal_never_scales_down() -> None:
    d, _ = policy().decide(sig(pending=None, arrival_rate=0.0, busy=0, in_flight=0), state(60))
    assert d.rule == "guard:stale-signals"
    assert d.desired_slots == 60


def test_balance_below_floor_stops_scale_up_and_says_so() -> None:
    d, _ = policy().decide(sig(arrival_rate=3.0, pending=50, balance=0.5), state(20))
    assert d.rule == "guard:balance-floor"
    assert d.desired_slots == 20
    assert "$0.50 below the $1.00 floor" in d.reason


def test_unknown_balance_is_noted_not_blocking() -> None:
    d, _ = policy().decide(sig(arrival_rate=3.0, pending=50), state(20))
    assert d.rule == "scale-up"
    assert any("balance unknown" in n for n in d.notes)


def test_balance_ceiling() -> None:
    # $0.002 per task (burn $0.002/s at 1 task/s); $1.06 above the floor pays for 30 solves.
    s = sig(balance=1.06, burn_rate=0.002, completion_rate=1.0, arrival_rate=4.0, pending=100)
    assert balance_ceiling(s, SETTINGS) == 30
    d, _ = policy().decide(s, state(20))
    assert d.rule == "scale-up"
    assert d.desired_slots == 30
    d, _ = policy().decide(s, state(50))
    assert d.rule == "clamp:balance"
    assert d.desired_slots == 30


def test_queue_not_draining_stops_scale_up_and_alerts() -> None:
    p = policy()
    stuck = sig(pending=80, busy=20, in_flight=20, slots=20, completion_rate=0.0, arrival_rate=1.0)
    d, st = p.decide(stuck, state(20))
    assert d.rule == "scale-up"  # not yet: it has not lasted
    assert st.stuck_since == 1000.0
    d, st = p.decide(replace(stuck, now=1070.0), replace(st, desired=20))
    assert d.rule == "guard:not-draining"
    assert d.desired_slots == 20
    assert any("queue not draining" in a for a in d.alerts)
    # Completions resume: the guard lifts.
    d, st = p.decide(replace(stuck, now=1080.0, completion_rate=1.0), st)
    assert st.stuck_since is None
    assert d.rule == "scale-up"


def test_error_rate_concentrated_on_one_host_replaces_it() -> None:
    s = sig(host_error_rates={"a": 0.0, "b": 0.2, "c": 0.005}, error_rates={"capacity": 0.07})
    assert concentrated_hosts(s, SETTINGS) == ("b",)
    d, st = policy().decide(replace(s, arrival_rate=3.0, pending=30), state(20))
    assert d.replace_hosts == ("b",)
    assert d.rule == "scale-up"  # a sick host is replaced, the fleet is not frozen
    assert not st.frozen
    assert any("concentrated on b" in a for a in d.alerts)


def test_errors_everywhere_are_not_concentrated() -> None:
    s = sig(host_error_rates={"a": 0.08, "b": 0.09})
    assert concentrated_hosts(s, SETTINGS) == ()
    assert concentrated_hosts(sig(host_error_rates={"a": 0.5}), SETTINGS) == ()


def test_capacity_errors_everywhere_freeze_scale_up_until_stable() -> None:
    p = policy()
    busy = sig(arrival_rate=3.0, pending=50, error_rates={"capacity": 0.1}, host_error_rates={"a": 0.1})
    d, st = p.decide(busy, state(20))
    assert d.rule == "guard:capacity-errors"
    assert st.frozen and d.desired_slots == 20
    # 3 % is below "act" but not "stable": still frozen (hysteresis).
    d, st = p.decide(replace(busy, error_rates={"capacity": 0.03}), st)
    assert d.rule == "guard:capacity-errors"
    d, st = p.decide(replace(busy, error_rates={"capacity": 0.0}), st)
    assert d.rule == "scale-up" and not st.frozen


def test_failed_exchanges_do_not_freeze_scale_up() -> None:
    """A congested provider's 5xx polls are retried, not refusals of more work: a burst still scales up."""
    busy = sig(
        arrival_rate=3.0, pending=50, error_rates={"capacity": 0.0, "transport": 0.2}, host_error_rates={"a": 0.2}
    )
    d, st = policy().decide(busy, state(20))
    assert d.rule == "scale-up" and not st.frozen and d.desired_slots > 20


def test_fatal_errors_stop_scale_up() -> None:
    d, _ = policy().decide(sig(arrival_rate=3.0, pending=50, error_rates={"fatal": 0.5}), state(20))
    assert d.rule == "guard:fatal-errors"
    assert d.alerts


def test_decision_records_inputs() -> None:
    d, _ = policy().decide(sig(arrival_rate=3.0, pending=50), state(20))
    out = d.to_dict()
    assert out["inputs"]["pending"] == 50
    assert out["inputs"]["utilization"] == 0.75
    assert out["rule"] == "scale-up"
    assert out["recommendation"] is not None


def test_state_round_trips() -> None:
    st = PolicyState(desired=7, services=2, recommendations=((1.0, 7), (2.0, 9)), frozen=True, changes=3)
    assert PolicyState.from_dict(st.to_dict()) == st
