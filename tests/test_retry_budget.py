"""Plan-full retries are a budget (a share of accepted submits), not one retry per waiting slot.

The live test runs two real worker processes with three times the plan's threads in slots against the sandbox:
refusals stay within what the two budgets allow, and every task is answered once and paid for once.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.config import FleetConfig
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.methods import first_poll_delays
from captcha_fleet.contract.tasks import NewTask
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.worker.concurrency import SlotLimiter
from captcha_fleet.worker.producer import Producer
from captcha_fleet.worker.retry_budget import FLOOR_BASES, MAX_RATIO, MAX_WAIT_BASES, RETRY_RATIO, RetryBudget
from tests.fleet_helpers import (
    TIME_SCALE,
    WorkerProcess,
    fast_config,
    fast_worker,
    read_results,
    write_config,
)

RECAPTCHA = {"googlekey": "6Le-test", "pageurl": "https://example.test/login"}
PLAN_THREADS = 4
SLOTS_PER_PROCESS = 6  # two processes: 12 slots against a 4-thread plan, 8 waiting at any time
TASKS = 60
BACKOFF_BASE_S = 0.05  # the old retry (within 2 bases) would send ~20 refused submits per waiting slot per second


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=0.5),  # time passing before the step
            st.integers(min_value=0, max_value=20),  # accepted submits in it
            st.integers(min_value=0, max_value=20),  # refusals asking for a retry turn in it
        ),
        max_size=40,
    )
)
def test_retry_turns_stay_within_the_budget(steps: list[tuple[float, int, int]]) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.25, window_s=1.0, floor_interval_s=0.2, max_wait_s=2.0, clock=clock)
    accepted, due = 0, []
    for elapsed, accepts, refusals in steps:
        clock.now += elapsed
        for _ in range(accepts):
            budget.on_accepted()
        accepted += accepts
        delays = [budget.next_delay() for _ in range(refusals)]
        assert all(0 <= d <= 2.0 for d in delays)  # never before it is asked for, never past the longest wait
        due += [clock.now + d for d in delays if d < 2.0]
    if not due:
        return
    # Turns go out in order, at most at the highest rate the budget allowed: the floor's, or the ratio of every
    # submit accepted so far counted in one window (those cut short by the longest wait aside).
    assert all(earlier <= later for earlier, later in itertools.pairwise(due))
    most_per_s = max(1 / 0.2, 0.25 * accepted / 1.0)
    assert len(due) <= 1 + (due[-1] - due[0]) * most_per_s + 1e-6


def test_retry_turns_follow_the_accepted_rate() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.25, window_s=1.0, floor_interval_s=1.0, max_wait_s=60.0, clock=clock)
    assert budget.retry_rate() == 1.0  # nothing accepted: the floor
    for _ in range(400):  # 200 accepted per second for 2 s
        clock.now += 0.005
        budget.on_accepted()
    assert 40 < budget.retry_rate() <= 50  # 0.25 x ~200/s (the average still filling up)
    delays = [budget.next_delay() for _ in range(10)]
    assert delays[0] == 0.0 and all(0.02 <= b - a <= 0.025 for a, b in itertools.pairwise(delays))
    clock.now += 10.0  # a quiet spell: back to the floor
    assert budget.retry_rate() == pytest.approx(1.0)


def test_the_ratio_is_steered_to_what_the_requests_budget_leaves_after_the_polls() -> None:
    """Where polls are cheap (a big process at 2,000 threads) refusals may buy more of the plan; where polls
    alone use the budget (a congested provider at 100 threads) the ratio stays at the one it started from."""
    for polls_per_submit, expect_up in ((0.05, True), (0.3, False)):
        clock = FakeClock()
        budget = RetryBudget(
            0.15, window_s=10.0, floor_interval_s=1.0, max_wait_s=60.0, clock=clock, requests_per_task=1.25
        )
        polls_owed = 0.0
        for step in range(400):  # 40 accepted per second; a refusal every tenth (0.1 per accepted submit)
            clock.now += 0.025
            budget.on_accepted()
            polls_owed += polls_per_submit
            while polls_owed >= 1:
                budget.on_poll_request()
                polls_owed -= 1
            if step % 10 == 0:
                budget.next_delay()
        allowance = budget.refusal_allowance()
        assert allowance == pytest.approx(0.25 - polls_per_submit, abs=0.02)
        if expect_up:  # 0.1 refusals per accepted submit < 0.2 allowed: more retries buy more of the plan
            assert budget.ratio > 0.15 * 1.5
            assert budget.ratio <= MAX_RATIO
        else:  # the polls leave nothing: back down to the starting ratio, never below it
            assert budget.ratio == 0.15


def test_without_a_requests_budget_the_ratio_stays_fixed() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.15, window_s=1.0, floor_interval_s=1.0, max_wait_s=60.0, clock=clock)
    for _ in range(100):
        clock.now += 0.01
        budget.on_accepted()
        budget.next_delay()
    assert budget.ratio == 0.15 and budget.refusal_allowance() is None
    with pytest.raises(ValueError, match="above 1"):
        RetryBudget(0.15, 1.0, 1.0, 60.0, requests_per_task=1.0)


def test_no_refused_solve_waits_past_the_longest_wait() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.25, window_s=1.0, floor_interval_s=1.0, max_wait_s=5.0, clock=clock)
    # A process started while the plan is full: 250 slots refused at once, nothing accepted to earn turns.
    delays = [budget.next_delay() for _ in range(250)]
    assert delays[:5] == [0.0, 1.0, 2.0, 3.0, 4.0] and max(delays) == 5.0
    clock.now += 5.0
    assert budget.next_delay() <= 5.0


def test_slots_waiting_for_the_plan_past_the_edge_cut_the_limit() -> None:
    limiter = SlotLimiter(40, decrease_factor=0.5, min_decrease_gap_s=0.0)
    limiter.on_capacity_error("ERROR_NO_SLOT_AVAILABLE", waiting=8)  # 20 % of the limit: slots over the plan
    limiter.on_success()
    assert limiter.slots == 40
    limiter.on_capacity_error("ERROR_NO_SLOT_AVAILABLE", waiting=9)
    assert limiter.slots == 20


@pytest.fixture()
def plan_sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=11, threads=PLAN_THREADS)) as server:
        yield server


def plan_bound_config(redis_url: str, keys: Keys, sandbox: SandboxServer) -> FleetConfig:
    config = fast_config(redis_url, keys.prefix, sandbox.url, backoff_base_s=BACKOFF_BASE_S, backoff_max_s=1.0)
    worker = fast_worker(initial_slots=SLOTS_PER_PROCESS, min_slots=1, max_slots=SLOTS_PER_PROCESS)
    return dataclasses.replace(config, worker=worker)


def test_refusals_across_two_processes_stay_within_the_retry_budget(
    tmp_path: Path, r: redis.Redis, keys: Keys, redis_url: str, plan_sandbox: SandboxServer
) -> None:
    config_path = write_config(tmp_path / "fleet.yml", plan_bound_config(redis_url, keys, plan_sandbox))
    ids = Producer(r, keys).submit_many(NewTask("userrecaptcha", RECAPTCHA) for _ in range(TASKS))
    started = time.monotonic()
    workers = [WorkerProcess(config_path, redis_url, plan_sandbox.url, name) for name in ("a", "b")]
    try:
        assert wait_until(lambda: r.hlen(keys.results) == TASKS, 60), r.hlen(keys.results)
        elapsed = time.monotonic() - started
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0], [w.output() for w in workers]
    stats = plan_sandbox.stats()
    results = read_results(r, keys)
    assert sorted(results) == sorted(ids) and all(res["status"] == "success" for res in results.values())
    assert stats["accepted"] == TASKS, stats  # each task paid for once
    assert stats["refused_no_slot"] > 0, stats  # the plan was the bound
    # Each refused solve leaves by a paced retry, so refusals are at most the retry turns the two budgets
    # hand out (the floor's, one per interval per process, plus the ratio of what was accepted), plus the
    # slots that may wait at the end of the run; a quarter on top for the rate's averaging.
    floor_interval_s = FLOOR_BASES * BACKOFF_BASE_S
    turns = 2 * (1 + elapsed / floor_interval_s) + RETRY_RATIO * stats["accepted"]
    assert stats["refused_no_slot"] <= 1.25 * turns + 2 * SLOTS_PER_PROCESS, (stats, elapsed)


def test_bursts_past_the_plan_retry_nothing_until_a_solve_ends_and_the_second_is_refused_once(
    tmp_path: Path, r: redis.Redis, keys: Keys, redis_url: str
) -> None:
    """Two bursts of twice the plan's threads, one after the other. The first: the overshoot's first submits are
    refused together, and no retry follows until one of the process's own solves ends (before that no plan
    thread can be free; the budget's floor alone spent a refused retry every four back-off bases). The second,
    once the first is over: the process knows the plan's edge, so past it one submit goes at a time and one is
    refused, not the whole overshoot again."""
    burst = 2 * PLAN_THREADS
    overshoot = burst - PLAN_THREADS
    base_s = 0.25  # the back-off base
    # Token solves of ~3 s: several floor turns (one per second at this base) pass before the first answer.
    with SandboxServer(SandboxConfig(time_scale=0.2, seed=5, threads=PLAN_THREADS)) as sandbox:
        config = fast_config(
            redis_url, keys.prefix, sandbox.url, backoff_base_s=base_s, backoff_max_s=2.0,
            first_poll_delay_s=first_poll_delays(0.2), poll_interval_s=1.0, task_deadline_s=60.0,
        )  # fmt: skip
        config = dataclasses.replace(config, worker=fast_worker(initial_slots=burst, min_slots=1, max_slots=burst))
        config_path = write_config(tmp_path / "fleet.yml", config)
        producer = Producer(r, keys)
        ids = producer.submit_many(NewTask("userrecaptcha", RECAPTCHA) for _ in range(burst))
        worker = WorkerProcess(config_path, redis_url, sandbox.url, "a")
        refused: list[int] = []
        try:
            for wave in (1, 2):
                if wave == 2:
                    time.sleep(MAX_WAIT_BASES * base_s)  # past the first burst's refusals: the plan looks free again
                    before = sandbox.stats()["refused_no_slot"]
                    ids += producer.submit_many(NewTask("userrecaptcha", RECAPTCHA) for _ in range(burst))
                else:
                    before = 0
                first, last = (wave - 1) * burst + 1, wave * burst
                assert wait_until(lambda: r.hlen(keys.results) >= first, 30), "no answer"  # noqa: B023
                refused.append(sandbox.stats()["refused_no_slot"] - before)
                assert wait_until(lambda: r.hlen(keys.results) == last, 60), r.hlen(keys.results)  # noqa: B023
        finally:
            code = worker.stop()
        stats = sandbox.stats()
    assert code == 0, worker.output()
    results = read_results(r, keys)
    assert sorted(results) == sorted(ids) and all(res["status"] == "success" for res in results.values())
    assert stats["accepted"] == 2 * burst, stats  # each paid once
    # Before each burst's first answer: the first burst's overshoot (refused together: nothing was known), and at
    # most one retry as the answer comes (its thread is handed to the oldest waiting solve, one more may bet on a
    # thread freed unseen); the second burst's one submit past the edge, and that one retry.
    assert 0 < refused[0] <= overshoot + 1, (refused, stats)
    assert 0 < refused[1] <= 2 < overshoot, (refused, stats)
