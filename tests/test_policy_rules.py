"""The queue-model policy's named steps: ceiling, closed-loop correction, queue jump, scale-down step."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.signals import Signals, fresh_ages
from captcha_fleet.controller.strategies.base import Decision, PolicyState, queue_jumped
from captcha_fleet.controller.strategies.queue_model import (
    QueueModelPolicy,
    burst_onset,
    bursts_recur,
    ceiling_for,
    drained_since,
    guard_rails,
    held_tasks,
    latency_correction,
    outgrows_plan,
    queue_growth,
    queue_model,
    release_floor,
    remember_bursts,
    scale_down_step,
    scale_down_target,
    scale_down_window,
    started_since_last,
    unused_headroom,
    worth_releasing,
)

S = ControllerSettings()


def sig(**kw: Any) -> Signals:
    base: dict[str, Any] = {
        "now": 1000.0, "pending": 0, "in_flight": 15, "slots": 20, "busy": 15, "arrival_rate": 1.0,
        "completion_rate": 1.0, "p95_latency_s": 30.0, "mean_solve_s": 16.0, "p95_solve_s": 28.0,
        "ages": fresh_ages(),
    }  # fmt: skip
    base.update(kw)
    return Signals(**base)


def test_slots_may_exceed_the_plan_by_what_detection_holds() -> None:
    assert ceiling_for(sig(), S) == (110, "plan_threads")  # 100 threads + 10 %
    assert ceiling_for(sig(), ControllerSettings(max_slots=50)) == (50, "max_slots")
    d, _ = QueueModelPolicy(S).decide(sig(pending=5000, arrival_rate=20.0), PolicyState(desired=20))
    assert d.desired_slots == 110 and d.ceiling == 110


def test_p95_over_target_with_tasks_waiting_drains_the_backlog_faster() -> None:
    assert latency_correction(sig(p95_latency_s=90.0, pending=50), S) == pytest.approx(1.5)
    assert latency_correction(sig(p95_latency_s=900.0, pending=50), S) == 3.0  # bounded
    assert latency_correction(sig(p95_latency_s=90.0, pending=0), S) == 1.0  # the burst is over: no effect
    assert latency_correction(sig(p95_latency_s=50.0, pending=50), S) == 1.0
    plain = queue_model(sig(p95_latency_s=50.0, pending=100), S)
    late = queue_model(sig(p95_latency_s=120.0, pending=100), S)
    assert late.drain == pytest.approx(2 * plain.drain) and late.correction == 2.0


def test_a_queue_jump_is_news_a_standing_queue_is_not() -> None:
    assert queue_jumped(120, 0, S)
    assert not queue_jumped(15, 0, S)  # free slots absorb it
    assert not queue_jumped(60, 40, S)  # the last evaluation saw most of it
    assert queue_jumped(90, 40, S)


def test_scale_down_waits_for_the_window_and_the_queue() -> None:
    quiet = sig(pending=0, busy=2, slots=40, p95_latency_s=25.0)
    guards = guard_rails(quiet, PolicyState(desired=40), S)
    assert scale_down_step(40, 10, 2, quiet, guards, S)[:2] == (10, "scale-down")
    assert scale_down_step(40, 35, 2, quiet, guards, S)[1] == "hold:hysteresis"
    queued = sig(pending=8, busy=2, slots=40)
    assert scale_down_step(40, 10, 2, queued, guard_rails(queued, PolicyState(desired=40), S), S)[1] == "hold:queue"


def every_10_s(pending: list[int]) -> list[Decision]:
    """The queue model's decisions from 2 slots, one evaluation every 10 s with each ``pending`` in turn."""
    p = QueueModelPolicy(S)
    st = PolicyState(desired=2)
    decisions = []
    for k, queued in enumerate(pending):
        d, st = p.decide(sig(now=1000.0 + 10 * k, pending=queued, busy=10, slots=st.desired), st)
        decisions.append(d)
    return decisions


def test_no_shrink_before_the_next_periodic_burst() -> None:
    # Bursts every 90 s: the first one alone looks like a lone burst (released once the queue stays empty);
    # from the second on the burst memory holds the fleet between bursts, so no scale-up is needed again.
    decisions = every_10_s([120 if k % 9 == 0 else 0 for k in range(40)])
    burst_size = decisions[0].recommendation
    assert burst_size is not None
    after_second = decisions[9:]
    assert sum(d.rule == "scale-up" for d in after_second) == 1  # the second burst; never again
    assert min(d.desired_slots for d in after_second) >= burst_size
    assert {d.rule for d in after_second[1:]} == {"hold:bursts-recur"}


def test_a_lone_burst_is_released_once_the_queue_stays_empty() -> None:
    sizes = [(d.desired_slots, d.rule) for d in every_10_s([120] + [0] * 11)]
    assert sizes[0][1] == "scale-up"
    released = [i for i, (_, rule) in enumerate(sizes) if rule == "scale-down:released"]
    assert released and released[0] * 10 >= S.release_window_s  # not before the queue stayed empty that long
    assert released[0] * 10 < S.scale_down_window_s  # but well before the long window


def test_burst_memory_sees_a_period_and_forgets_it_when_overdue() -> None:
    assert burst_onset(120, 0, S) and not burst_onset(120, 60, S) and not burst_onset(10, 0, S)
    assert not bursts_recur((100.0,), 150.0, S)
    assert bursts_recur((100.0, 190.0), 250.0, S)
    assert not bursts_recur((100.0, 190.0), 190.0 + 1.5 * 90 + 1, S)  # the next burst is overdue
    assert not bursts_recur((100.0, 400.0), 450.0, S)  # further apart than the long window
    assert remember_bursts((1.0, 2.0, 3.0), 4.0, True, S) == (2.0, 3.0, 4.0)
    assert remember_bursts((1.0,), 1000.0, False, S) == ()


def test_the_short_window_needs_an_empty_queue_for_its_length() -> None:
    assert drained_since(3, None, 50.0, S) == 50.0 and drained_since(3, 20.0, 50.0, S) == 20.0
    assert drained_since(S.queue_down, 20.0, 50.0, S) is None
    assert scale_down_window(100.0, 20.0, (), S) == (S.release_window_s, True)
    assert scale_down_window(100.0, 110.0 - S.release_window_s, (), S) == (S.scale_down_window_s, False)
    assert scale_down_window(100.0, None, (), S) == (S.scale_down_window_s, False)
    assert scale_down_window(100.0, 20.0, (0.0, 90.0), S) == (S.scale_down_window_s, False)
    tight = ControllerSettings(scale_down_window_s=3.0)  # an existing config with a short long window
    assert scale_down_window(100.0, 90.0, (), tight) == (3.0, True)


def test_a_release_keeps_what_arrivals_need_and_frees_enough_to_matter() -> None:
    model = queue_model(sig(arrival_rate=1.0, mean_solve_s=16.0), S)
    assert release_floor(model, S) == 19  # 1/s x 16 s x 1.15
    assert worth_releasing(40, 30, S) and not worth_releasing(25, 19, S)
    window = ((900.0, 80), (990.0, 12), (1000.0, 10))  # a burst 100 s ago, quiet since
    assert scale_down_target(window, 90, 110, 930.0, (), model, S) == (19, True)
    not_yet = 1010.0 - S.release_window_s  # empty for 10 s less than the short window
    assert scale_down_target(window, 90, 110, not_yet, (), model, S) == (80, False)
    assert scale_down_target(window, 25, 110, 930.0, (), model, S) == (80, False)  # frees 6: not worth it
    assert scale_down_target(window, 90, 110, 930.0, (800.0, 890.0), model, S) == (80, False)  # recurring


def test_a_queue_emptied_mid_burst_keeps_what_the_arrivals_since_the_last_evaluation_need() -> None:
    """A fleet sized to a burst's rate empties the queue while the burst goes on; the rate window, half of it
    from before the burst, says 2.9/s of 4/s. Released to that, the fleet sat under the load with a growing queue
    for the rest of the burst (make demo: P95 48.7 s where the simulator said 30.4)."""
    model = queue_model(sig(arrival_rate=2.9, mean_solve_s=16.5), S)
    window = ((1000.0, 56),)
    assert scale_down_target(window, 102, 110, 970.0, (), model, S) == (56, True)  # 2.9 x 16.5 x 1.15 = 55.03
    assert scale_down_target(window, 102, 110, 970.0, (), model, S, arrivals=4.0) == (76, True)  # 4 x 16.5 x 1.15
    assert release_floor(model, S, arrivals=0.5) == release_floor(model, S)  # the burst over: the window's rate


def test_a_release_keeps_the_slots_busy_now_when_completed_solves_read_short() -> None:
    """With tokens (15-60 s) and images (~5 s) in one queue, the solves completed early in a burst are mostly the
    short ones. 30 s into short/mixed-methods the mean read 12.5 s, and a release kept 58 slots (4.0/s x 12.5 s x
    1.15) where 68 were busy: the queue came back at once and P95 was 61.7 s against a goal of 61.3 (simulator,
    phase 0). Busy slots are what the arrivals hold, measured directly, so a release keeps them and the headroom
    (57.4 s)."""
    model = queue_model(sig(arrival_rate=2.4, mean_solve_s=12.5), S)
    window = ((1000.0, 25),)
    assert scale_down_target(window, 110, 110, 970.0, (), model, S, arrivals=4.0) == (58, True)
    assert scale_down_target(window, 110, 110, 970.0, (), model, S, arrivals=4.0, busy=68) == (79, True)  # 78.2
    assert release_floor(model, S, arrivals=4.0, busy=10) == release_floor(model, S, arrivals=4.0)  # fewer busy


def test_headroom_unused_for_a_whole_window_is_trimmed() -> None:
    assert unused_headroom(69, 60, S.scale_down_window_s, S)
    assert not unused_headroom(69, 60, S.scale_down_window_s - 10, S)
    assert not unused_headroom(60, 60, 1000.0, S)
    quiet = sig(pending=0, busy=2, slots=69, p95_latency_s=25.0)
    guards = guard_rails(quiet, PolicyState(desired=69), S)
    assert scale_down_step(69, 60, 2, quiet, guards, S, held_s=200.0)[:2] == (60, "scale-down:trim")
    assert scale_down_step(69, 60, 2, quiet, guards, S, held_s=100.0)[1] == "hold:hysteresis"


def test_a_fleet_near_the_ceiling_still_goes_to_it_while_the_queue_grows() -> None:
    s = ControllerSettings(plan_threads=40, slots_over_plan=0.2)  # ceiling 48
    d, _ = QueueModelPolicy(s).decide(sig(pending=300, busy=45, slots=45), PolicyState(desired=45))
    assert d.rule == "scale-up" and d.desired_slots == 48  # within the 10 % tolerance, but the ceiling


def test_the_burst_memory_survives_a_restart() -> None:
    import json

    st = PolicyState(desired=60, last_pending=3, bursts=(100.0, 190.0), drained_since=200.0)
    back = PolicyState.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back == st


def test_queue_growth_is_per_second_since_the_last_evaluation() -> None:
    assert queue_growth(150, 100, 1010.0, 1000.0) == 5.0
    assert queue_growth(80, 100, 1010.0, 1000.0) == -2.0
    assert queue_growth(150, 0, 1000.0, None) == 0.0  # the first evaluation: nothing to compare with


def test_a_queue_that_keeps_growing_at_full_use_past_the_plan_is_plan_bound() -> None:
    full = sig(pending=120, busy=30, slots=30, completion_rate=1.875)
    # arrivals = the slower growth + completions: (5 + 1.875) x 16 = 110, holding the work level needs the plan
    assert outgrows_plan(full, 6.0, 5.0, 16.0, 110, S)
    assert not outgrows_plan(full, 6.0, 4.0, 16.0, 110, S)  # (4 + 1.875) x 16 = 94: the model can still drain it
    assert not outgrows_plan(full, 60.0, 0.0, 16.0, 110, S)  # a one-time dump: it did not grow before
    assert not outgrows_plan(full, 6.0, -1.0, 16.0, 110, S)
    assert not outgrows_plan(sig(pending=120, busy=25, slots=30), 6.0, 5.0, 16.0, 110, S)  # idle slots absorb


def test_the_work_in_the_system_not_the_queue_measures_growth() -> None:
    """A scale-up moves queued tasks into new slots: the queue shrinks, the work (pending + busy) does not. Read
    from the queue alone, a plan-bound load was seen two evaluations later at some phases of the grid."""
    policy = QueueModelPolicy(S)
    st = PolicyState(desired=30, last_pending=60, last_busy=10, last_eval=990.0)
    _, new = policy.decide(sig(pending=50, busy=30, slots=30), st)
    assert new.queue_growth == pytest.approx(1.0)  # (50 + 30 - 60 - 10) / 10 s, though the queue shrank by 10
    assert new.last_busy == 30


def test_a_rising_burst_is_met_at_the_rate_it_arrives_at_not_the_rate_window() -> None:
    """Two evaluations in a row saw the work grow by more than a queue's worth per solve: the fleet goes to the
    slots that hold it level (arrivals x solve), not to what the lagging rate window says."""
    policy = QueueModelPolicy(S)
    st = PolicyState(desired=20, last_pending=30, last_busy=20, last_eval=990.0, queue_growth=3.0, growing_since=988.0)
    rising = sig(pending=60, busy=20, slots=20, arrival_rate=1.0, completion_rate=1.0)
    d, _ = policy.decide(rising, st)
    # growth 3/s at both evaluations (3 x 16 = 48 > queue_up 20): (3 + 1) x 16 = 64 slots, plus the headroom
    assert d.recommendation == 64 and d.desired_slots == 74 and "rising" in d.reason and "64 hold it level" in d.reason
    # the same queue with a growth inside the noise (1 x 16 = 16 < 20): the model's own size
    d, _ = policy.decide(sig(pending=40, busy=20, slots=20), replace(st, last_pending=30, queue_growth=1.0))
    assert d.recommendation is not None and d.recommendation < 64


def test_a_rising_burst_is_sized_with_the_slot_hold_little_s_law_measures() -> None:
    """While a burst rises, the finished solves are its quick ones (short/mixed-methods read 13.9 s where tasks held
    their slots 18-19 s, and the fleet sat a sixth under the burst). The rising level takes mean busy / completion
    rate, the hold per task, where it is longer than the solves' mean."""
    policy = QueueModelPolicy(S)
    st = PolicyState(desired=20, last_pending=30, last_busy=20, last_eval=990.0, queue_growth=3.0, growing_since=988.0)
    rising = sig(pending=60, busy=20, slots=20, arrival_rate=1.0, completion_rate=1.0, mean_busy=20.0)
    # 20 slots busy on average for 1 completion/s: a 20 s hold, 1.25x the 16 s mean; (3 + 1)/s x 20 s = 80 slots
    d, _ = policy.decide(rising, st)
    assert "80 hold it level" in d.reason and "slot hold 1.25x" in d.reason and d.desired_slots == 92
    d, _ = policy.decide(replace(rising, mean_busy=None), st)  # no hold measured yet: the solves' mean
    assert "64 hold it level" in d.reason and "slot hold" not in d.reason
    assert queue_model(rising, S).hold == pytest.approx(1.25)
    assert queue_model(rising, S, periodic=True).hold == 1.0  # as the queueing budget of a periodic load


def test_a_rising_burst_is_sized_from_the_arrivals_since_the_last_evaluation() -> None:
    """The first growth of a burst spans the evaluation before its onset, so the slower of two growths halved the
    first rising decision at some phases of the grid (short/congested: 37 slots at one, 55 at another). The
    arrivals counted since the last evaluation are the rate it arrives at now."""
    policy = QueueModelPolicy(S)
    st = PolicyState(
        desired=20, last_pending=30, last_busy=20, last_eval=990.0, queue_growth=1.5, growing_since=988.0,
        last_arrived=500.0, last_epoch=2,
    )  # fmt: skip
    rising = sig(pending=60, busy=20, slots=20, arrival_rate=1.0, completion_rate=1.0, arrived_count=540.0)
    d, new = policy.decide(replace(rising, count_epoch=2), st)
    # 40 arrivals in 10 s, 4/s x 16 s = 64 slots hold it level (not (1.5 + 1) x 16 = 40), plus the headroom
    assert "64 hold it level" in d.reason and d.desired_slots == 74
    assert (new.last_arrived, new.last_epoch) == (540.0, 2)
    # The counters restarted between (another epoch): no count to subtract, the growths decide as before.
    d, _ = policy.decide(replace(rising, count_epoch=3), st)
    assert "40 hold it level" in d.reason
    d, _ = policy.decide(replace(rising, count_epoch=2, arrived_count=400.0), st)  # went back within an epoch
    assert "40 hold it level" in d.reason


def test_a_plan_bound_load_goes_to_the_ceiling_in_one_step() -> None:
    # the previous evaluation, a tick ago, saw the queue grow with every slot busy
    st = PolicyState(desired=30, last_pending=60, last_busy=30, last_eval=990.0, queue_growth=5.0, growing_since=990.0)
    policy = QueueModelPolicy(S)
    d, new = policy.decide(sig(pending=120, busy=30, slots=30, arrival_rate=2.5, completion_rate=1.875), st)
    assert d.rule == "scale-up" and "plan-bound" in d.reason and d.desired_slots == 110 and new.queue_growth == 6.0
    assert new.growing_since == 990.0
    # The same queue without a growth before it (a dump): the model's own size, below the ceiling.
    d, _ = policy.decide(
        sig(pending=120, busy=30, slots=30, arrival_rate=2.5, completion_rate=1.875), replace(st, queue_growth=0.0)
    )
    assert d.rule == "scale-up" and "plan-bound" not in d.reason and d.desired_slots < 110


def test_a_burst_fed_in_over_a_moment_is_not_a_plan_bound_rate() -> None:
    """Two quick evaluations of one burst's arrival, 50 ms apart, both see the queue grow with every slot busy:
    a dump, not a rate (the live replay of builtin:periodic went to the ceiling at every burst). The second is a
    second look: it measures no growth of its own, and the run of growth starts at the first."""
    policy = QueueModelPolicy(S)
    st = PolicyState(desired=30, last_pending=0, last_eval=990.0)
    first, st = policy.decide(sig(now=1001.0, pending=40, busy=30, slots=30, arrival_rate=2.5), st)
    assert st.growing_since == 1001.0 and "plan-bound" not in first.reason
    second, st = policy.decide(sig(now=1001.05, pending=130, busy=30, slots=30, arrival_rate=2.5), st)
    assert "plan-bound" not in second.reason and second.desired_slots < 110
    assert (st.last_full_eval, st.growing_since) == (1001.0, 1001.0)
    # the queue still growing two queue checks later, every slot still busy: now it is the plan that binds
    later, st = policy.decide(
        sig(now=1001.0 + 2 * S.quick_check_s, pending=200, busy=30, slots=30, arrival_rate=2.5), st
    )
    assert "plan-bound" in later.reason and later.desired_slots == 110
    # a queue that stops growing ends the run
    _, st = policy.decide(sig(now=1020.0, pending=100, busy=30, slots=30, arrival_rate=2.5), st)
    assert st.growing_since is None


def test_a_second_look_after_a_jump_counts_the_slots_that_took_part_of_it_since() -> None:
    """The loop looks again one check after an evaluation that saw a jump. By then new slots have taken part of the
    dump off the queue; counted with the pending tasks they size the fleet to the whole dump (sized on the queue
    alone, builtin:periodic's fleet kept the first look's size, and its P95 hung on where that look fell). Ten
    seconds on, the busy count's change is ordinary churn and is left out."""
    first = sig(now=1000.0, pending=50, busy=2, slots=2, in_flight=2)
    decision, state = QueueModelPolicy(S).decide(first, PolicyState(desired=2))
    assert started_since_last(first, PolicyState(desired=2), S) == 0  # no evaluation before
    second = sig(now=1000.0 + S.quick_check_s, pending=80, busy=40, slots=decision.desired_slots, in_flight=40)
    assert started_since_last(second, state, S) == 38
    model = queue_model(second, S, started=started_since_last(second, state, S))
    assert model.drain == pytest.approx((80 + 38) * model.solve_s / model.drain_s)
    assert "38 started since" in QueueModelPolicy(S).decide(second, state)[0].reason
    later = replace(second, now=1000.0 + S.interval_s)
    assert started_since_last(later, state, S) == 0


def test_a_second_look_sizes_the_fleet_but_leaves_the_run_of_growth_to_full_evaluations() -> None:
    """A second look comes a second after the last evaluation, when the slots it added may still be idle. Measured
    there, a rising load read as over and the rising rule started over at every jump (flash-crowd/sandbox live
    P95 50.8 s against the simulator's 34.3). The second look moves the counters on but leaves the growth and
    its run as the last full evaluation measured them; the next full evaluation measures from the second look."""
    policy = QueueModelPolicy(S)
    busy = {"in_flight": 20, "slots": 20, "busy": 20}
    _, st = policy.decide(sig(now=1000.0, pending=40, **busy), PolicyState(desired=20))
    _, st = policy.decide(sig(now=1010.0, pending=140, **busy), st)
    assert st.growing_since == 1010.0 and st.queue_growth == pytest.approx(10.0)
    before = st
    seen = sig(now=1011.0, pending=130, in_flight=31, slots=st.desired, busy=31)  # the new slots mostly idle
    look, st = policy.decide(seen, st)
    assert (st.growing_since, st.queue_growth, st.last_full_eval) == (1010.0, before.queue_growth, 1010.0)
    assert (st.last_eval, st.last_pending, st.last_busy) == (1011.0, 130, 31)
    assert look.recommendation == min(110, queue_model(seen, S, started=31 - 20).slots)  # 11 started since
    grown = sig(now=1012.0, pending=200, in_flight=st.desired, slots=st.desired, busy=st.desired)
    decision, after = policy.decide(grown, st)  # the third look, two checks after the first: a full evaluation
    assert after.last_full_eval == 1012.0 and after.growing_since == 1010.0, "the run goes on from the first look"
    assert after.queue_growth == pytest.approx((200 + st.desired - 161) / 1.0)
    assert "plan-bound" in decision.reason or "rising" in decision.reason, decision.reason


def test_tasks_claimed_since_the_last_heartbeat_count_as_held_work() -> None:
    """A heartbeat comes every few seconds; a slot that claimed since its last one is neither queued nor busy in
    it. At 1x the third look after a jump read 0 queued and 2 busy where 37 tasks were in flight, took the rise
    for over, and the fleet sat a tenth under the burst (short[120:300] 1x: P95 49.7 s against the simulator's
    25.4). The in-flight lists, read with the queue, say what the slots hold."""
    lagging = sig(now=1009.0, pending=0, busy=2, slots=2, in_flight=37)
    assert held_tasks(lagging) == 37 and held_tasks(replace(lagging, in_flight=None)) == 2
    st = PolicyState(
        desired=46, last_eval=1008.0, last_full_eval=1007.0, last_pending=27, last_busy=2, growing_since=1007.0,
        queue_growth=3.0,
    )  # fmt: skip
    _, after = QueueModelPolicy(S).decide(lagging, st)
    assert after.growing_since == 1007.0, "37 held and 0 queued is more work than 27 queued and 2 held"
    assert after.last_busy == 37 and after.queue_growth == pytest.approx(8.0)
