"""The game day's history checker: hand-built histories with known breakage, and the readers on real Redis/HTTP."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import redis
import requests
from hypothesis import given
from hypothesis import strategies as st
from redis.typing import EncodableT, FieldT

from captcha_fleet.apps.sandbox import SandboxServer, parse_sandbox_config
from captcha_fleet.contract.config import FleetConfig
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Event, Result
from captcha_fleet.worker.producer import Producer
from captcha_fleet.worker.queue import Outcome, TaskQueue
from lab.history import (
    HOLD_S,
    PROCESS_TARGET_S,
    EndState,
    FaultWindow,
    History,
    HistoryError,
    Sample,
    check,
    read_payments,
    read_results,
    read_winning_writes,
    recovery_seconds,
)

T0 = 1_000_000.0  # wall time the histories start at
INTERVAL_S, SERVICE_START_S = 5.0, 3.0  # host faults: 8 s target
SERVICES = 3


def result_record(
    task_id: str, acked_at: float, latency_s: float, status: str = "success", **extra: str
) -> dict[str, Any]:
    return Result(
        status=status,
        token="tok" if status == "success" else None,
        id=task_id,
        enqueued_at=acked_at,
        claimed_at=acked_at,
        finished_at=acked_at + latency_s,
        latency_seconds=latency_s,
        **extra,  # type: ignore[arg-type]
    ).to_dict()


def healthy_samples(start: float, stop: float, period: float = 0.5) -> list[Sample]:
    """A fleet answering all along: results rise every sample, every desired service runs."""
    count = int((stop - start) / period) + 1
    return [Sample(start + i * period, 10 * i, 5, SERVICES, SERVICES) for i in range(count)]


def clean_history(latencies: list[float], spacing_s: float = 0.1, faults: Iterable[FaultWindow] = ()) -> History:
    """Every task acknowledged, answered once, paid once, written once; the fleet healthy and converged."""
    history = History(faults=list(faults))
    for i, latency in enumerate(latencies):
        task_id = f"t{i}"
        acked_at = T0 + i * spacing_s
        history.acks[task_id] = acked_at
        history.results[task_id] = result_record(task_id, acked_at, latency)
        history.payments[task_id] = 1
        history.winning_writes[task_id] = 1
    last = T0 + len(latencies) * spacing_s + max(latencies, default=0.0)
    history.samples = healthy_samples(T0, last + 30)
    history.end = EndState(
        desired_services=SERVICES,
        running_services=SERVICES,
        releases={"h1": {"current": "r2", "gated": "r2"}},
        expected_release={"h1": "r2"},
    )
    return history


latency_lists = st.lists(st.floats(0.1, 60, allow_nan=False), min_size=1, max_size=60)


@given(latency_lists)
def test_a_clean_history_is_ok_with_nothing_counted(latencies: list[float]) -> None:
    report = check(clean_history(latencies), INTERVAL_S, SERVICE_START_S)
    assert report.ok and report.converged and report.violations == []
    assert set(report.total.counts().values()) == {0}
    assert report.acknowledged == len(latencies) and report.p95_outside_tasks == len(latencies)
    p95 = report.p95_outside_s
    assert p95 is not None and any(math.isclose(p95, v) for v in latencies)
    # nearest rank: at least 95 % of the latencies are at or below it, fewer than 95 % strictly below
    assert sum(v <= p95 + 1e-9 for v in latencies) >= 0.95 * len(latencies)
    assert sum(v < p95 - 1e-9 for v in latencies) < 0.95 * len(latencies)


broken_sets = st.integers(1, 40).flatmap(
    lambda n: st.tuples(st.just(n), *(st.sets(st.integers(0, n - 1), max_size=n) for _ in range(4)))
)


@given(broken_sets)
def test_each_broken_promise_is_counted_exactly_and_named(
    case: tuple[int, set[int], set[int], set[int], set[int]],
) -> None:
    n, lost, paid, solved, failed = case
    history = clean_history([1.0] * n)
    for i in paid:
        history.payments[f"t{i}"] = 2 + i % 2
    for i in solved:
        history.winning_writes[f"t{i}"] = 2
    for i in failed:
        history.results[f"t{i}"] = result_record(f"t{i}", T0, 1.0, "error", error_class="deadline")
    for i in lost:  # a lost task has no result, so it cannot also have failed
        del history.results[f"t{i}"]
    report = check(history, INTERVAL_S, SERVICE_START_S)
    total = report.total
    assert set(total.lost) == {f"t{i}" for i in lost}
    assert set(total.paid_twice) == {f"t{i}" for i in paid}
    assert all(total.paid_twice[f"t{i}"] == 2 + i % 2 for i in paid)
    assert set(total.solved_twice) == {f"t{i}" for i in solved}
    assert set(total.failed) == {f"t{i}" for i in failed - lost}
    assert report.ok == (not (lost or paid or solved or failed - lost))
    text = "\n".join(report.violations)
    for i in lost | paid | solved | (failed - lost):
        if n <= 10:  # every id is named; beyond ten the rest are counted
            assert f"t{i}" in text


def test_violation_wording() -> None:
    history = clean_history([1.0] * 14)
    for i in (12, 2, 5):
        del history.results[f"t{i}"]
    for i in range(13):
        history.payments[f"t{i}"] = 2
    history.winning_writes["t7"] = 3
    history.results["t3"] = {"status": "duplicate"}  # non-final: the task's answer is missing
    history.results["t4"] = result_record("t4", T0, 1.0, "error", error_class="task")
    history.results["t6"] = {"status": 7}  # not a result record
    assert check(history, INTERVAL_S, SERVICE_START_S).violations == [
        "4 acknowledged tasks have no result: t2, t3, t5, t12 (outside any fault: 4)",
        "13 tasks were paid more than once: t0 (2 times), t1 (2 times), t2 (2 times), t3 (2 times), t4 (2 times), "
        "t5 (2 times), t6 (2 times), t7 (2 times), t8 (2 times), t9 (2 times) and 3 more (outside any fault: 13)",
        "1 task was solved more than once (winning result writes): t7 (3 writes) (outside any fault: 1)",
        "2 tasks failed: t4 (error/task), t6 (unreadable) (outside any fault: 2)",
    ]


def test_counts_that_cannot_be_trusted_are_reported() -> None:
    """A payments reader with the wrong page prefix, or a trimmed events stream, would make "paid twice" and
    "solved twice" zero whatever happened: the checker says so instead of passing."""
    history = clean_history([1.0] * 3)
    history.payments = {}
    del history.winning_writes["t1"]
    assert check(history, INTERVAL_S, SERVICE_START_S).violations == [
        "3 solved tasks have no payment recorded (is each task's pageurl its own?): t0, t1, t2",
        "1 result has no event (was the events stream trimmed? raise results.events_maxlen): t1",
    ]


def test_end_state_wording_and_convergence() -> None:
    history = clean_history([1.0])
    history.end = EndState(
        hosts_draining=["h2"],
        hosts_locked=["h3", "h2"],
        desired_services=4,
        running_services=1,
        releases={"h1": {"current": "bad", "gated": "bad"}, "h2": {"current": "r2", "gated": "r2"}},
        expected_release={"h1": "r1", "h2": "r2", "h3": "r2"},
    )
    report = check(history, INTERVAL_S, SERVICE_START_S)
    assert not report.converged and not report.ok
    assert report.violations == [
        "end: 1 service running, 4 desired",
        "end: 1 host left draining: h2",
        "end: 2 hosts left locked: h2, h3",
        "end: host h1 runs release bad, expected r1",
        "end: host h3 has no current release recorded, expected r2",
    ]
    history.end = EndState(desired_services=None, running_services=2)
    assert check(history, INTERVAL_S, SERVICE_START_S).violations == [
        "end: the controller's desired service count is unknown"
    ]


def test_hostile_payloads_need_a_refusal_not_a_solve() -> None:
    history = clean_history([1.0] * 5)
    history.hostile = {"h0", "h1", "h2", "h3"}
    for task_id in history.hostile:
        history.acks[task_id] = T0
    history.results["h0"] = result_record("h0", T0, 0.01, "error", error_class="malformed")
    history.results["h1"] = result_record("h1", T0, 0.01, "error", error_class="deadletter")
    history.results["h2"] = result_record("h2", T0, 500.0)  # solved: a hostile payload reached the provider
    history.winning_writes.update(h0=1, h1=1, h2=1)
    history.payments["h2"] = 1
    report = check(history, INTERVAL_S, SERVICE_START_S)
    assert report.total.lost == ["h3"]  # no result at all
    assert report.total.failed == {}  # hostile ones are judged apart
    assert report.total.hostile_not_refused == {"h2": "success"}
    assert "1 hostile payload was not refused as malformed or dead-lettered: h2 (success)" in report.violations
    history.results["h2"] = result_record("h2", T0, 1.0, "error", error_class="task")  # sent to the provider
    history.results["h3"] = {"status": "error", "error": "refused"}  # an error, but not the refusal promised
    history.winning_writes["h3"] = 1
    assert check(history, INTERVAL_S, SERVICE_START_S).total.hostile_not_refused == {"h2": "error/task", "h3": "error"}
    assert report.p95_outside_s == 1.0  # hostile answers are not latency
    del history.results["h2"], history.results["h3"]
    history.hostile = {"h0", "h1"}
    del history.acks["h2"], history.acks["h3"]
    assert check(history, INTERVAL_S, SERVICE_START_S).ok


# --- recovery ------------------------------------------------------------------------------------------------


def outage_samples(start: float, down_from: float, down_until: float, stop: float) -> list[Sample]:
    """Healthy, then services missing from ``down_from`` until ``down_until``, then healthy again."""
    samples = []
    total = 0
    for i in range(int((stop - start) / 0.5) + 1):
        t = start + i * 0.5
        down = down_from <= t < down_until
        total += 0 if down else 3
        samples.append(Sample(t, total, 4, SERVICES, SERVICES - 1 if down else SERVICES))
    return samples


@given(st.floats(0, 5), st.floats(0.5, 30), st.sampled_from(["process", "redis", "host"]))
def test_recovery_waits_for_the_replacement(stale_s: float, down_s: float, expect: str) -> None:
    """A killed service's heartbeat outlives it (``stale_s``): recovery is the end of the outage that follows."""
    start = T0 + 10
    history = clean_history([1.0] * 10, faults=[FaultWindow("kill", start, start, expect)])
    history.samples = outage_samples(T0, start + stale_s, start + stale_s + down_s, start + 120)
    window = check(history, INTERVAL_S, SERVICE_START_S).windows[0]
    back = min(s.t for s in history.samples if s.t >= start + stale_s + down_s)
    assert window.recovery_s == pytest.approx(back - start)
    target = INTERVAL_S + SERVICE_START_S if expect == "host" else PROCESS_TARGET_S
    assert window.target_s == target
    assert window.recovered_in_time == (back - start <= target)


def test_a_cut_host_recovers_when_its_services_are_replaced_not_when_the_cut_ends() -> None:
    """Cut for 30 s: its heartbeats expire at 2 s, replacements run at 7 s; when the link is back its old services
    beat again beside the replacements (one too many) until the controller stops them: not recovery from the cut."""
    start = T0 + 10
    history = clean_history([1.0] * 10, faults=[FaultWindow("cut h2", start, start + 30, "host")])
    history.samples = [
        Sample(t, 1000 + i, 5, SERVICES, SERVICES - 1 if 2 <= t - start < 7 else SERVICES + (34 <= t - start < 39))
        for i, t in enumerate(T0 + 0.5 * k for k in range(200))
    ]
    window = check(history, INTERVAL_S, SERVICE_START_S).windows[0]
    assert (window.recovery_s, window.recovered_in_time) == (7.0, True)
    history.samples = [s if s.t - start < 20 else dataclasses.replace(s, running_services=1) for s in history.samples]
    assert check(history, INTERVAL_S, SERVICE_START_S).windows[0].recovery_s is None  # lost again during the cut


def test_recovery_is_none_when_the_fleet_never_comes_back() -> None:
    start = T0 + 10
    history = clean_history([1.0], faults=[FaultWindow("cut h2", start, start + 30, "host")])
    history.samples = outage_samples(T0, start + 1, math.inf, start + 60)
    report = check(history, INTERVAL_S, SERVICE_START_S)
    assert report.windows[0].recovery_s is None
    assert report.violations == ["fault 'cut h2' (host): the fleet never recovered (target 8.0 s)"]


def test_recovery_counts_results_flowing_or_an_empty_queue() -> None:
    start = T0
    stalled = [Sample(start + i * 0.5, 100, 7, SERVICES, SERVICES) for i in range(20)]  # all running, none answering
    assert recovery_seconds(stalled, start, start + 1) is None
    drained = [*stalled, Sample(start + 10, 100, 0, SERVICES, SERVICES), Sample(start + 12.5, 100, 0, 3, 3)]
    assert recovery_seconds(drained, start, start + 1) == 10.0
    unknown = [Sample(s.t, s.results_total, 0, None, SERVICES) for s in drained]  # desired unknown: not healthy
    assert recovery_seconds(unknown, start, start + 1) is None
    blind = [Sample(start + i, None if i < 4 else i, 3, 2, 2) for i in range(10)]  # Redis unreadable at first
    assert recovery_seconds(blind, start, start) == 5.0
    # A blip after the next fault started is that fault's: the hold stops at it.
    blip = [Sample(start + i * 0.5, i, 3, 2, 1 if i == 6 else 2) for i in range(20)]
    assert recovery_seconds(blip, start, start + 4, stop=start + 2) == 0.5
    assert recovery_seconds(blip, start, start + 4) == 3.5  # the blip at 3.0 s falls before the window's horizon
    assert recovery_seconds(blip, start, start) == 0.5  # ... or after the 0.5 s sample's hold
    assert 0.5 + HOLD_S < 3.0
    # Past the horizon a sample must still stay healthy for HOLD_S: one healthy sample between blips is no recovery.
    flaky = [Sample(start + i, i, 0, 2, 1 if i in (1, 4) else 2) for i in range(10)]
    assert recovery_seconds(flaky, start, start) == 5.0


def test_a_scale_down_still_draining_is_healthy() -> None:
    """More services running than desired is the controller scaling down: the capacity is there."""
    start = T0
    draining = [Sample(start + i * 0.5, 100 + i, 2, SERVICES - 2, SERVICES) for i in range(20)]
    assert recovery_seconds(draining, start, start + 1) == 0.5  # the first sample that sees results flowing
    short = [dataclasses.replace(x, running_services=SERVICES - 3) for x in draining]
    assert recovery_seconds(short, start, start + 1) is None  # fewer than desired is not


@pytest.mark.parametrize("kind", ["operation", "provider"])
def test_an_operation_is_judged_from_its_end_a_fault_from_its_start(kind: str) -> None:
    """A 60 s rolling update (or API outage) that leaves a service missing 50-55 s in: it recovered when it ended
    (its own minutes are not the fleet's outage); the same samples as a process fault miss the 10 s target."""
    start = T0 + 10
    samples = outage_samples(T0, start + 50, start + 55, start + 120)
    roll = clean_history([1.0] * 10, faults=[FaultWindow("roll", start, start + 60, kind)])
    roll.samples = samples
    window = check(roll, INTERVAL_S, SERVICE_START_S).windows[0]
    assert (window.recovery_s, window.recovered_in_time) == (0.0, True)
    kill = clean_history([1.0] * 10, faults=[FaultWindow("kill", start, start + 60, "process")])
    kill.samples = samples
    window = check(kill, INTERVAL_S, SERVICE_START_S).windows[0]
    assert window.recovery_s == pytest.approx(55.0) and not window.recovered_in_time


# --- windows ---------------------------------------------------------------------------------------------------


@given(st.lists(st.booleans(), min_size=2, max_size=40))
def test_a_windows_p95_counts_only_the_tasks_acknowledged_in_it(inside: list[bool]) -> None:
    """Tasks acknowledged inside the window take 50 s, the others 1 s; a window of 1 s every 100 s."""
    history = History(end=EndState(desired_services=1, running_services=1))
    faults = []
    for i, in_window in enumerate(inside):
        base = T0 + 100 * i
        faults.append(FaultWindow(f"f{i}", base + 20, base + 21, "process"))  # settle: 10 s
        acked_at = base + (25 if in_window else 60)
        history.acks[f"t{i}"] = acked_at
        history.results[f"t{i}"] = result_record(f"t{i}", acked_at, 50.0 if in_window else 1.0)
    history.faults = faults
    report = check(history, INTERVAL_S, SERVICE_START_S)
    for window, in_window in zip(report.windows, inside, strict=True):
        assert (window.p95_s, window.p95_tasks) == ((50.0, 1) if in_window else (None, 0))
    outside = len(inside) - sum(inside)
    assert (report.p95_outside_s, report.p95_outside_tasks) == ((1.0 if outside else None), outside)


def test_a_task_counts_in_the_first_window_its_life_overlaps() -> None:
    faults = [
        FaultWindow("kill -9 primary", T0 + 10, T0 + 10, "redis"),
        FaultWindow("cut h2", T0 + 60, T0 + 90, "host"),
    ]
    history = clean_history([1.0] * 3, faults=faults)
    history.acks.update({"early": T0 + 5, "during": T0 + 70, "late": T0 + 200, "done": T0 + 1})
    history.results["done"] = result_record("done", T0 + 1, 2.0)
    history.payments.update({"early": 1, "during": 2, "done": 2})
    report = check(history, INTERVAL_S, SERVICE_START_S)
    first, second = report.windows
    assert first.tally.lost == ["early"]  # in flight when the primary died, never answered
    assert (second.tally.lost, second.tally.paid_twice) == (["during"], {"during": 2})
    assert (report.outside.lost, report.outside.paid_twice) == (["late"], {"done": 2})
    assert report.total.lost == ["during", "early", "late"]  # named in id order
    assert report.violations[0] == (
        "3 acknowledged tasks have no result: during, early, late (kill -9 primary: 1, cut h2: 1, outside any fault: 1)"
    )


def test_table_has_a_row_per_fault_and_an_overall_row() -> None:
    faults = [FaultWindow("kill | leader", T0 + 1, T0 + 1, "process"), FaultWindow("cut", T0 + 60, T0 + 90, "host")]
    history = clean_history([2.0] * 20, faults=faults)
    history.samples = outage_samples(T0, T0 + 61, math.inf, T0 + 120)
    report = check(history, INTERVAL_S, SERVICE_START_S)
    rows = report.table_markdown().splitlines()
    assert len(rows) == 2 + len(faults) + 1
    assert rows[2].startswith("| kill \\| leader | process | 0.0 (≤ 10.0) | 0 | 0 | 0 | 0 | 2.00 (10) |")
    assert rows[3].startswith("| cut | host | never (≤ 8.0) **missed** |")
    assert rows[4] == "| **overall** | converged | 1/2 in target | 0 | 0 | 0 | 0 | 2.00 (10) outside windows |"
    assert json.loads(json.dumps(report.to_dict()))["windows"][1]["recovery_s"] is None


# --- JSON ------------------------------------------------------------------------------------------------------

finite = st.floats(0, 2e9, allow_nan=False)
names = st.text(st.characters(codec="utf-8"), max_size=8)
samples = st.builds(
    Sample,
    finite,
    st.none() | st.integers(0, 10**9),
    st.none() | st.integers(0, 10**6),
    st.none() | st.integers(0, 100),
    st.integers(0, 100),
    st.lists(names, max_size=3),
    st.lists(names, max_size=3),
)
windows = st.builds(
    lambda name, start, length, expect, notes: FaultWindow(name, start, start + length, expect, notes),
    names,
    finite,
    st.floats(0, 100),
    st.sampled_from(["process", "redis", "host"]),
    names,
)
histories = st.builds(
    History,
    acks=st.dictionaries(names, finite, max_size=5),
    refused=st.lists(names, max_size=3),
    results=st.dictionaries(names, st.builds(result_record, names, finite, st.floats(0, 100)), max_size=5),
    payments=st.dictionaries(names, st.integers(0, 5), max_size=5),
    winning_writes=st.dictionaries(names, st.integers(0, 5), max_size=5),
    faults=st.lists(windows, max_size=3),
    samples=st.lists(samples, max_size=5),
    end=st.builds(
        EndState,
        st.lists(names, max_size=2),
        st.lists(names, max_size=2),
        st.none() | st.integers(0, 9),
        st.integers(0, 9),
        st.dictionaries(names, st.dictionaries(st.sampled_from(["current", "gated"]), names), max_size=2),
        st.dictionaries(names, names, max_size=2),
    ),
    hostile=st.sets(names, max_size=3),
)


@given(histories)
def test_json_round_trip(history: History) -> None:
    assert History.from_json(history.to_json()) == history
    check(history, INTERVAL_S, SERVICE_START_S)  # any well-formed history can be judged


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ("[]", "history: expected an object"),
        ('{"acks": {"t1": NaN}}', "not JSON"),
        ('{"acks": {"t1": "soon"}}', "acks.t1: expected a finite number"),
        ('{"payments": {"t1": 1.5}}', "payments.t1: expected an integer"),
        ('{"faults": [{"name": "x", "started_at": 1, "ended_at": 2, "expect": "disk"}]}', "expect must be one of"),
        ('{"faults": [{"name": "x", "started_at": 2, "ended_at": 1, "expect": "host"}]}', "ends (1.0) before"),
        ('{"samples": [{"t": 1, "results_total": 1, "queue_depth": 0}]}', "samples[0].running_services"),
        ('{"end": {"releases": {"h1": {"current": 3}}}}', "end.releases.h1.current: expected a string"),
    ],
)
def test_bad_history_is_refused_with_the_field_named(document: str, named: str) -> None:
    with pytest.raises(HistoryError) as info:
        History.from_json(document)
    assert named in str(info.value)


def test_a_non_finite_time_is_refused_on_the_way_out() -> None:
    with pytest.raises(HistoryError, match="non-finite"):
        History(acks={"t1": math.nan}).to_json()


# --- readers: real Redis (the finish script's writes), real HTTP to the sandbox --------------------------------


def finish(queue: TaskQueue, producer: Producer, task_ids: list[str]) -> list[bool]:
    for task_id in task_ids:
        producer.submit("base64", {"body": "aGk="}, task_id)
    claimed = queue.claim(len(task_ids), block_s=0.1)
    outcomes = []
    for c in claimed:
        task_id = json.loads(c.raw)["id"]
        result = Result(status="success", token="tok", id=task_id, finished_at=T0, latency_seconds=1.0)
        outcomes.append(Outcome(task_id, c.raw, result, Event(id=task_id, status="success", latency_s=1.0)))
    return queue.finish_many(outcomes)


def test_readers_see_each_winning_write_once(r: redis.Redis, keys: Keys) -> None:
    producer = Producer(r, keys)
    queue = TaskQueue(r, FleetConfig(key_prefix=keys.prefix), "h1:1")
    task_ids = [f"t{i}" for i in range(7)]
    assert finish(queue, producer, task_ids) == [True] * 7
    assert finish(queue, producer, ["t3"]) == [False]  # answered already: the finish script writes no event
    assert read_winning_writes(r, keys, page=3) == dict.fromkeys(task_ids, 1)  # 3 pages of 3, 3, 1
    forged: dict[FieldT, EncodableT] = {k: v for k, v in Event(id="t5", status="success").to_fields().items()}
    r.xadd(keys.events, forged)  # a second winning write for t5
    r.hset(keys.results, "junk", b"\xff not json")
    history = History(
        acks=dict.fromkeys(task_ids, T0 - 1),
        results=read_results(r, keys, page=2),
        winning_writes=read_winning_writes(r, keys, page=3),
        end=EndState(desired_services=1, running_services=1),
    )
    assert history.winning_writes["t5"] == 2
    assert history.results["t0"]["status"] == "success" and history.results["t0"]["token"] == "tok"
    assert history.results["junk"]["status"] == "unreadable"
    report = check(history, INTERVAL_S, SERVICE_START_S)
    assert (report.total.solved_twice, report.total.lost) == ({"t5": 2}, [])
    assert report.total.failed == {"junk": "unreadable"}
    assert (
        "1 result has no event (was the events stream trimmed? raise results.events_maxlen): junk" in report.violations
    )


def test_readers_of_an_empty_fleet(r: redis.Redis, keys: Keys) -> None:
    assert read_results(r, keys) == {}
    assert read_winning_writes(r, keys) == {}


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    config = parse_sandbox_config({"seed": 3, "time_scale": 0.01})
    with SandboxServer(config) as server:
        yield server


def test_read_payments_from_a_sandbox_over_http(sandbox: SandboxServer) -> None:
    pages = ["https://gameday.test/t1", "https://gameday.test/t2", "https://gameday.test/t2", "https://other/t3"]
    with requests.Session() as http:
        for page in pages:
            body = {"key": "k", "method": "userrecaptcha", "googlekey": "g", "pageurl": page, "json": 1}
            assert http.post(f"{sandbox.url}/in.php", data=body, timeout=5).json()["status"] == 1
    assert read_payments(sandbox.url, "https://gameday.test/") == {"t1": 1, "t2": 2}
