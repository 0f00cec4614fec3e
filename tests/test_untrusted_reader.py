"""The controller reads heartbeats, events and counters as untrusted input (DESIGN.md, trust boundaries).

Everything is written raw into a real redis-server, as any worker host could write it, and read by the real
signal source and one real ``Controller.step`` (targets only: the fast path is what a value could steer).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, cast

import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Event, Heartbeat, RecordError
from captcha_fleet.controller.leader import LeaderLock
from captcha_fleet.controller.loop import Controller
from captcha_fleet.controller.metrics import ControllerMetrics
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.sources.redis_signals import RedisSignalSource
from captcha_fleet.controller.sources.untrusted import heartbeat_problem
from captcha_fleet.controller.strategies.registry import make_policy

SETTINGS = ControllerSettings(min_slots=2, plan_threads=20, slots_per_service=8, max_services=5)

weird_numbers = (
    st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, -1, 10**15, 2**63, float("nan"), float("inf"), -float("inf"), 1e308])
)
weird_values = weird_numbers | st.none() | st.booleans() | st.text(max_size=8) | st.lists(weird_numbers, max_size=2)
counts = st.dictionaries(st.sampled_from(["capacity", "fatal", "task", "x"]), weird_numbers, max_size=3)
heartbeats = st.fixed_dictionaries(
    {},
    optional={
        "host": st.sampled_from(["a", "evil", ""]) | weird_values,
        "state": st.sampled_from(["running", "draining", "stopped", "?"]) | weird_values,
        "process": st.sampled_from(["p1", "p2"]),
        "ts": weird_numbers | st.just(time.time() + 10**6),
        "target": weird_numbers,
        "slots": weird_numbers,
        "busy": weird_numbers,
        "completed": weird_numbers,
        "api_errors": counts | weird_values,
        "latency": st.dictionaries(st.sampled_from(["p50", "p95"]), weird_values, max_size=2),
        "unknown_field": weird_values,
    },
)
raw_heartbeats = heartbeats.map(lambda d: json.dumps(d).encode()) | st.binary(max_size=40)
number_texts = st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "1e400", "-5", "abc", "", "1e308", "²"]
) | weird_numbers.map(str)
events = st.dictionaries(
    st.sampled_from(["id", "status", "latency_s", "api_s", "ts", "worker", "host", "extra"]),
    number_texts,
    min_size=1,
    max_size=6,
)
counters = number_texts | st.integers(min_value=-(10**30), max_value=10**30).map(str)


def controller(r: redis.Redis, keys: Keys, metrics: ControllerMetrics | None = None) -> Controller:
    source = RedisSignalSource(r, keys, SETTINGS)
    lock = LeaderLock(r, keys.controller_leader, SETTINGS.leader_ttl_s, token="t")
    ctl = Controller(r, keys, SETTINGS, make_policy("queue-model", SETTINGS), source, None, lock, metrics=metrics)
    assert ctl.hold_lock()
    return ctl


def write_round(r: redis.Redis, keys: Keys, beats: list[bytes], stream: list[dict[str, Any]], counter: str) -> None:
    for n, raw in enumerate(beats):
        wid = f"w{n}:1"
        r.zadd(keys.workers, {wid: time.time()})
        r.set(keys.heartbeat(wid), raw, ex=60)
    for fields in stream:
        r.xadd(keys.events, fields)  # type: ignore[arg-type]  # raw, as any host could write it
    r.set(keys.completed_total, counter)


def assert_within_bounds(r: redis.Redis, keys: Keys, ctl: Controller) -> None:
    decision = ctl.step()
    s = decision.signals
    assert SETTINGS.min_slots <= decision.desired_slots <= SETTINGS.slot_ceiling
    assert 0 <= s.busy <= s.slots <= s.services * SETTINGS.slot_ceiling
    numbers = [s.arrival_rate, s.completion_rate, s.p95_latency_s, s.p50_latency_s, s.mean_solve_s, s.p95_solve_s]
    assert all(v is None or (math.isfinite(v) and v >= 0) for v in numbers)
    assert all(0.0 <= v <= 1.0 for v in [*s.error_rates.values(), *s.host_error_rates.values()])
    for raw_key in cast("list[bytes]", r.keys(keys.target("*"))):
        assert 0 <= int(cast("bytes", r.get(raw_key))) <= SETTINGS.slots_per_service


def test_arbitrary_heartbeats_events_and_counters_never_raise_and_the_decision_stays_in_bounds(
    r: redis.Redis, keys: Keys
) -> None:
    @settings(max_examples=150)
    @given(
        rounds=st.lists(
            st.tuples(st.lists(raw_heartbeats, max_size=3), st.lists(events, max_size=3), counters),
            min_size=1,
            max_size=3,
        ),
    )
    def the_loop_never_raises(rounds: list[tuple[list[bytes], list[dict[str, Any]], str]]) -> None:
        r.flushdb()
        r.rpush(keys.tasks, *[json.dumps({"id": str(i)}) for i in range(30)])
        ctl = controller(r, keys)
        for beats, stream, counter in rounds:
            write_round(r, keys, beats, stream, counter)
            assert_within_bounds(r, keys, ctl)

    the_loop_never_raises()


def test_records_refuse_non_finite_numbers() -> None:
    for text in (b'{"ts": NaN}', b'{"started_at": Infinity}', b'{"latency": {"p95": -Infinity}}'):
        try:
            Heartbeat.from_json(text)
        except RecordError:
            continue
        raise AssertionError(f"accepted {text!r}")
    for value in ("nan", "inf", "-inf", "1e400"):
        try:
            Event.from_fields({"id": "x", "status": "success", "latency_s": value})
        except RecordError:
            continue
        raise AssertionError(f"accepted latency_s={value}")


def test_the_issues_forged_values_are_skipped_counted_and_leave_the_decision_alone(r: redis.Redis, keys: Keys) -> None:
    """Issue 21: a NaN or infinite latency and a NaN counter stopped every controller; busy 10**15 sent the
    fleet to its ceiling. Each is now skipped and counted, and the decision is the one without it."""
    r.rpush(keys.tasks, *[json.dumps({"id": str(i)}) for i in range(3)])
    honest = {"state": "running", "process": "p", "target": 4, "slots": 4, "busy": 1, "ts": time.time()}

    def decide(forge: bool) -> tuple[int, ControllerMetrics]:
        r.delete(keys.events, keys.completed_total, keys.decisions, keys.controller_state, keys.workers)
        metrics = ControllerMetrics()
        ctl = controller(r, keys, metrics)
        write_round(r, keys, [json.dumps(honest).encode()], [], "10")
        ctl.step()
        now = time.time()
        r.xadd(keys.events, {"id": "ok", "status": "success", "latency_s": "2", "api_s": "1", "ts": str(now)})
        if forge:
            r.xadd(keys.events, {"id": "n", "status": "success", "latency_s": "nan", "ts": str(now)})
            r.xadd(keys.events, {"id": "i", "status": "success", "latency_s": "inf", "ts": str(now)})
            r.xadd(keys.events, {"id": "f", "status": "success", "latency_s": "3", "ts": str(now + 10**6)})
            r.set(keys.heartbeat("w1:1"), json.dumps({**honest, "slots": 10**15, "busy": 10**15}), ex=60)
            r.zadd(keys.workers, {"w1:1": now})
        r.set(keys.completed_total, "nan" if forge else "10")
        return ctl.step().desired_slots, metrics

    honest_slots, _ = decide(forge=False)
    forged_slots, metrics = decide(forge=True)
    assert forged_slots == honest_slots

    def skipped(source: str, reason: str) -> float:
        labels = {"source": source, "reason": reason}
        return metrics.registry.get_sample_value("captcha_fleet_controller_untrusted_values_total", labels) or 0.0

    assert skipped("event", "malformed") == 2  # nan and inf
    assert skipped("event", "ts-in-future") == 1
    assert skipped("heartbeat", "slots-above-bound") == 1
    assert skipped("counter", "not-a-count") == 1
    record = json.loads(cast("bytes", r.lindex(keys.decisions, 0)))
    assert record["untrusted_values"]["heartbeat/slots-above-bound"] == 1
    assert record["targets"]["w0:1"] == sum(record["targets"].values()) == forged_slots  # none on the forged one


def test_a_counter_that_runs_backwards_or_races_ahead_does_not_make_a_host_look_broken(
    r: redis.Redis, keys: Keys
) -> None:
    source = RedisSignalSource(r, keys, ControllerSettings(rate_window_s=10.0))

    def beat(wid: str, completed: int, capacity: int, process: str = "p") -> None:
        data = {"state": "running", "process": process, "slots": 4, "busy": 0, "completed": completed,
                "api_errors": {"capacity": capacity}, "ts": time.time()}  # fmt: skip
        r.set(keys.heartbeat(wid), json.dumps(data), ex=60)
        r.zadd(keys.workers, {wid: time.time()})

    beat("a:1", 100, 0)
    source.read()
    beat("a:1", 110, 10**12)  # errors no process could have made since the last read
    assert source.read().signals.host_error_rates.get("a", 0.0) == 0.0
    beat("a:1", 120, 0)  # and back: a counter of one process never decreases
    assert source.read().signals.host_error_rates.get("a", 0.0) == 0.0
    beat("a:1", 5, 10**6, process="q")  # a restart: a new baseline, its old counts are not answers now
    assert source.read().signals.host_error_rates.get("a", 0.0) == 0.0
    beat("a:1", 15, 10**6 + 10, process="q")  # what it answers from there on counts
    assert source.read().signals.host_error_rates["a"] > 0.3


def test_a_completed_counter_that_jumps_or_goes_back_starts_a_new_baseline(r: redis.Redis, keys: Keys) -> None:
    source = RedisSignalSource(r, keys, ControllerSettings(rate_window_s=10.0))
    r.set(keys.completed_total, 1000)
    source.read()
    r.set(keys.completed_total, 1010)
    assert (source.read().signals.completion_rate or 0.0) > 0
    r.set(keys.completed_total, 10**18)  # more results than any fleet writes between two reads
    assert source.read().signals.completion_rate is None  # one sample of a new baseline is no rate
    r.set(keys.completed_total, 10**18 + 5)
    assert 0 < (source.read().signals.completion_rate or 0.0) < 10**6
    r.set(keys.completed_total, 3)  # the key was reset
    assert source.read().signals.completion_rate is None


def test_targets_only_steers_only_the_allowed_worker_ids(r: redis.Redis, keys: Keys) -> None:
    """``controller.worker_ids`` names the workers another system runs; any other heartbeat is unknown."""
    settings_ = ControllerSettings(min_slots=2, plan_threads=20, slots_per_service=8, worker_ids="a:*, b:*")
    for wid, busy in (("a:1", 0), ("evil:0", 10)):
        data = {"state": "running", "process": "p", "target": 10, "slots": 10, "busy": busy, "ts": time.time()}
        r.set(keys.heartbeat(wid), json.dumps(data), ex=60)
        r.zadd(keys.workers, {wid: time.time()})
    source = RedisSignalSource(r, keys, settings_)
    lock = LeaderLock(r, keys.controller_leader, settings_.leader_ttl_s, token="t")
    metrics = ControllerMetrics()
    ctl = Controller(r, keys, settings_, make_policy("queue-model", settings_), source, None, lock, metrics=metrics)
    assert ctl.hold_lock()
    decision = ctl.step()
    assert (decision.signals.slots, decision.signals.busy, decision.signals.services) == (10, 0, 1)
    record = json.loads(cast("bytes", r.lindex(keys.decisions, 0)))
    assert list(record["targets"]) == ["a:1"] and r.get(keys.target("evil:0")) is None
    assert record["unknown_workers"] == ["evil:0"] and record["unknown_workers_total"] == 1
    assert metrics.registry.get_sample_value("captcha_fleet_controller_unknown_workers") == 1


def test_a_worker_that_cut_its_limit_below_what_it_holds_is_still_plausible() -> None:
    """Under capacity errors a worker lowers its slots and keeps the solves it holds (busy > slots for a while):
    skipping that heartbeat made the controller count the service as starting and churn services each second of
    the game day's API fault burst. Only past the bound the controller could have given is it no worker's."""
    now = time.time()
    cut = Heartbeat(id="h:1", host="h", instance="1", process="p", ts=now, target=4, slots=2, busy=4)
    assert heartbeat_problem(cut, slot_bound=4, now=now) is None
    forged = Heartbeat(id="h:1", host="h", instance="1", process="p", ts=now, target=4, slots=2, busy=10**15)
    assert heartbeat_problem(forged, slot_bound=4, now=now) == "busy-above-bound"
