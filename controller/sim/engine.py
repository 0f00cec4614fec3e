"""A deterministic discrete-event simulation of the fleet, driven by the real policy and placement code.

What is modelled: Poisson-ish arrivals from a trace, lognormal solve times (drawn per task, so every policy
sees the very same tasks), worker services of ``slots_per_service`` slots that take ``service_startup_s`` to
come up, the policy's evaluation interval, and scale-in that drains (a removed slot finishes its solve first;
nothing is ever killed). Calibrated against the live fleet (``SimConfig.calibrated``, the default):

* a slot is held until the worker *sees* the answer: the poll schedule of ``worker/solver.py`` (first-poll
  delay, interval, the batch poller's tick grid, paced by the solves a process holds) adds a detection delay
  after each solve (``controller/sim/detection.py``);
* the plan limits solves *at the provider*: a thread is taken at submit and freed when the provider finishes,
  before the poller sees the answer; a claimed task that finds every thread taken waits (the worker's
  back-off on ERROR_NO_SLOT_AVAILABLE, ``provider_retry_s`` on average) instead of failing;
* a worker reads a new target ``target_read_s`` after the controller writes it (its heartbeat reads it);
* the loop's queue checks fall anywhere inside an arrival second, not after it, and drift against the trace (each
  cycle is ``quick_check_s`` plus the check's own time): the next check after a jump comes a uniform share of a
  check later, drawn per jump (``quick_check_phase`` pins it), so a quick evaluation can size the fleet to a burst
  still arriving, as the live loop does; and, as the loop, the two checks after an evaluation that saw a jump
  evaluate again (the rest of a dump and the slots that took part of it since, then whether the work still grows),
  reading no queue length between. A phase pinned at half a check caught every dump of builtin:periodic at the
  same point; its P95 then spread 35.5-49.0 s over the pinned phases, where a live run meets each dump at another
  phase;
* the evaluation grid is the loop's: its first evaluation is one interval before the trace (``eval_phase_s`` -
  interval: a live controller evaluates before a replay's first task), and a quick evaluation moves it (the next
  is an interval after it). A grid kept fixed re-evaluated a dump 0-10 s after its quick evaluation depending on
  the phase (builtin:periodic, sandbox: P95 40.6-51.8 s over five phases) where the live loop has one schedule;
* the solve time the policy reads is what the worker reports (``api_seconds``: submit -> answer *seen*, so
  the detection delay is in it), not the provider's bare solve time (:func:`reported_solve_s`).

The provider (``SimConfig.provider``, a named profile of ``captcha_fleet.contract.provider_profiles``, the very model
the sandbox acts out): each task's method from the profile's task mix and its solve time from that method's
distribution, stretched by the provider's load at submit; an HTTP round trip delays each accepted submit and the
poll that sees an answer; a poll that fails costs the next one, a stalled one its stall. Without a profile the
provider is one lognormal (``solve_median_s``, ``solve_sigma``) on loopback, as it always was.

Uncalibrated (``calibrated=False``): the model before calibration: slots capped at the plan's threads, an
answer seen the instant the solve ends, targets applied at once.

``worker_seconds`` are slot-seconds: for every live service, max(target, busy) integrated over time (a
draining slot still costs until its solve ends). ``service_seconds`` count services from the moment they
are asked for. The ``oracle`` gives each task a slot the instant it arrives (one process holds them all): its
slot-seconds are the sum of the slot hold times (solve + detection), a lower bound no policy can beat. The
plan-capped oracle (``SimConfig.oracle_capped``) also gives every task a slot at once but lets only
``plan_threads`` solves run at the provider: its P95 is the best any policy can reach on that plan.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from captcha_fleet.contract.config import ApiConfig
from captcha_fleet.contract.poll_pace import poll_pace
from captcha_fleet.contract.provider_model import ProviderModel, SolveTime
from captcha_fleet.contract.provider_profiles import ProviderProfile
from captcha_fleet.contract.windows import FinishedTasksWindow, percentile

from ..placement import ServiceStatus, ServiceView, place
from ..settings import ControllerSettings
from ..signals import Signals
from ..strategies.base import LOOKS_AFTER_A_JUMP, Decision, Policy, PolicyState, queue_jumped
from .detection import seen_after
from .source import FleetReading, SimSignalSource
from .traces import Trace

# Event kinds, in the order they are handled at equal times: free threads and slots before new work arrives.
_SOLVED, _FINISH, _READY, _APPLY, _ARRIVAL, _EVAL, _SAMPLE = range(7)
FLAP_WINDOW_S = 120.0  # a scale-down reversed within this long is a flap


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the simulated world (the controller's own knobs are in ControllerSettings)."""

    seed: int = 1
    solve_median_s: float = 15.0
    solve_sigma: float = 0.4
    slo_window_s: float = 60.0  # the rolling P95 that slo_violation_s checks against the target
    max_tail_s: float = 7200.0  # after the trace, give up draining after this long (then tasks are lost)
    balance: float | None = None  # starting balance in $, or None for no balance signal
    price_per_task: float = 0.001
    # --- calibration against the live fleet (see the module docstring) ---
    calibrated: bool = True
    api: ApiConfig = field(default_factory=ApiConfig)  # the poll settings the workers run
    method: str = "userrecaptcha"  # whose first-poll delay applies
    target_read_s: float = 1.0  # a worker reads its target with every heartbeat (2 s): 1 s on average
    provider_retry_s: float = 0.5  # mean wait of a submit refused with ERROR_NO_SLOT_AVAILABLE for a thread
    # where the queue checks fall inside a second, as a share of quick_check_s: the live loop's checks keep
    # their own rhythm, unrelated to when a trace second's arrivals come, and drift; None: drawn per jump
    quick_check_phase: float | None = None
    oracle_capped: bool = False  # the oracle (policy None) limited to plan_threads solves at the provider
    # where the first evaluation falls, in trace seconds: the live loop's grid is not aligned with a trace's
    # start, and a burst's P95 depends on where the evaluations fall against it (bench/provider_profiles.py
    # --phases runs several)
    eval_phase_s: float = 0.0
    provider: ProviderProfile | None = None  # None: one lognormal (solve_median_s, solve_sigma) on loopback

    def provider_profile(self) -> ProviderProfile:
        """The provider simulated: the named profile, or the plain lognormal the flags describe."""
        if self.provider is not None:
            return self.provider
        model = ProviderModel(solve_time={"default": SolveTime(self.solve_median_s, self.solve_sigma)})
        return ProviderProfile("lognormal", "solve_median_s and solve_sigma", model, {self.method: 1.0})

    def typical_solve_s(self) -> float:
        """The median solve of the task mix (what the demand series multiplies the arrival rate by)."""
        if self.provider is None:
            return self.solve_median_s
        mix, model = self.provider.task_mix, self.provider.model
        total = sum(mix.values())
        return sum(w * model.solve_time_for(m).quantile(0.5) for m, w in mix.items()) / total


@dataclass
class Series:
    """Once-a-second samples for plots."""

    t: list[float] = field(default_factory=list)
    demand: list[float] = field(default_factory=list)  # slots the arrivals need: rate x median solve
    backlog: list[int] = field(default_factory=list)  # pending
    busy: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)  # slots in effect
    capacity: list[int] = field(default_factory=list)  # slots asked for, starting ones included
    p95: list[float | None] = field(default_factory=list)


@dataclass
class SimResult:
    """The outcome of one run."""

    policy: str
    trace: str
    seed: int
    tasks: int
    completed: int
    lost: int
    p50_latency_s: float
    p95_latency_s: float
    p99_latency_s: float
    max_latency_s: float
    worker_seconds: float
    service_seconds: float
    oracle_worker_seconds: float
    scale_changes: int  # evaluations that changed the desired slots (fast path: a Redis write)
    service_starts: int  # services started (slow path: a process or an Ansible run)
    service_stops: int
    max_backlog: int
    max_slots: int
    slo_violation_s: float
    duration_s: float
    flaps: int = 0  # scale-downs reversed by a scale-up within FLAP_WINDOW_S
    mean_detection_s: float = 0.0  # provider finished -> the worker saw it, mean over tasks
    provider_peak: int = 0  # solves in flight at the provider, at most
    provider_mean_while_waiting: float | None = None  # ... on average while tasks wait (queue or no thread)
    provider_waiting_s: float = 0.0  # seconds during which tasks waited
    provider: str = "lognormal"  # the provider profile simulated (lognormal: --solve-median/--solve-sigma)
    series: Series = field(repr=False, default_factory=Series)
    decisions: list[Decision] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``captcha-fleet sim --json`` prints."""
        out: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k not in ("series", "decisions")}
        for k, v in out.items():
            if isinstance(v, float):
                out[k] = round(v, 2)
        out["worker_seconds_vs_oracle"] = (
            round(self.worker_seconds / self.oracle_worker_seconds, 3) if self.oracle_worker_seconds else None
        )
        out["mean_utilization"] = (
            round(self.oracle_worker_seconds / self.worker_seconds, 3) if self.worker_seconds else None
        )
        return out


@dataclass
class _Service:
    id: str
    status: ServiceStatus
    target: int = 0
    busy: int = 0


def make_tasks(trace: Trace, config: SimConfig) -> list[tuple[float, float]]:
    """(arrival time, solve time on an idle provider) for every task: spread uniformly inside each second, seeded."""
    return draw_tasks(trace, config)[0]


def draw_tasks(trace: Trace, config: SimConfig) -> tuple[list[tuple[float, float]], list[str]]:
    """Every task's (arrival, idle solve time) and its method, from the provider's task mix and distributions."""
    profile = config.provider_profile()
    methods = profile.methods(trace.total, config.seed)
    rng_t = random.Random(f"arrivals:{config.seed}")
    rng_s = random.Random(f"solve:{config.seed}")
    tasks: list[tuple[float, float]] = []
    for second, n in enumerate(trace.arrivals):
        for at in sorted(second + rng_t.random() for _ in range(n)):
            tasks.append((at, profile.model.solve_time_for(methods[len(tasks)]).draw(rng_s)))
    return tasks, methods


class _Sim:
    """One run; ``policy=None`` is the oracle."""

    def __init__(self, trace: Trace, policy: Policy | None, settings: ControllerSettings, config: SimConfig) -> None:
        self.trace, self.policy, self.s, self.cfg = trace, policy, settings, config
        self.tasks, self.methods = draw_tasks(trace, config)
        self.provider = config.provider_profile().model
        self.solve_s = [s for _, s in self.tasks]  # as solved: stretched by the provider's load at submit
        self.rng_rtt = random.Random(f"round-trips:{config.seed}")
        self.rng_polls = random.Random(f"poll-faults:{config.seed}")
        self.rng_checks = random.Random(f"queue-checks:{config.seed}:{config.eval_phase_s}")
        self.events: list[tuple[float, int, int, Any]] = []
        # Each event kind's handler, given the event's data.
        self.handlers: dict[int, Callable[[Any], None]] = {
            _SOLVED: self.on_solved,
            _FINISH: self.on_finish,
            _APPLY: self.apply,
            _READY: self.on_ready,
            _ARRIVAL: self.on_arrival,
            _EVAL: self.on_eval,
            _SAMPLE: lambda _: self.on_sample(),
        }
        self.seq = 0
        self.now = 0.0
        self.pending: deque[int] = deque()
        self.services: dict[str, _Service] = {}
        self.next_service = 0
        self.busy = 0
        self.arrived = 0
        self.completed = 0
        self.latencies: list[float] = []
        self.solve_total = 0.0
        self.slot_seconds = 0.0
        self.service_seconds = 0.0
        self.changes = 0
        self.starts = 0
        self.stops = 0
        self.max_backlog = 0
        self.max_slots = 0
        self.slo_violation = 0.0
        self.series = Series()
        self.decisions: list[Decision] = []
        self.source = SimSignalSource(settings, self.reading, self.target_of)  # the controller's windows
        self.slo_window = FinishedTasksWindow(config.slo_window_s)
        self.balance = config.balance
        self.state: PolicyState | None = None
        self.last_decision: Decision | None = None
        self.demand_rate = 0.0
        rng_p = random.Random(f"poll-phase:{config.seed}")
        self.phases = [rng_p.random() for _ in self.tasks]  # where each task's process tick grid stands
        self.calibrated = config.calibrated
        # Uncalibrated, the plan caps slots (see dispatch); calibrated, it caps solves at the provider.
        capped = config.oracle_capped if policy is None else config.calibrated
        self.provider_cap = settings.plan_threads if capped else None
        self.solving = 0  # solves at the provider (holding a plan thread)
        self.refused: deque[tuple[int, str | None]] = deque()  # claimed, waiting for a free plan thread
        self.detect_total = 0.0
        self.provider_peak = 0
        self.provider_wait_integral = 0.0
        self.provider_waiting_s = 0.0
        self.pending_at_eval = 0
        self.typical_solve = config.typical_solve_s()
        # a quick evaluation (the loop's queue check) is on its way; checks still to evaluate after a jump's
        self.quick_due, self.looks_again = False, 0
        self.next_tick_at = -math.inf  # the interval's next evaluation; a quick evaluation moves it, as the loop's does

    # --- plumbing ------------------------------------------------------------------------------
    def push(self, t: float, kind: int, data: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, data))

    def advance(self, t: float) -> None:
        dt = t - max(self.now, 0.0)  # nothing is paid before the trace starts (its first evaluation is before)
        if dt > 0:
            if self.policy is None:
                self.slot_seconds += dt * self.busy
                self.service_seconds += dt * math.ceil(self.busy / self.s.slots_per_service)
            else:
                held = sum(max(v.target, v.busy) for v in self.services.values() if v.status != "starting")
                self.slot_seconds += dt * held
                self.service_seconds += dt * len(self.services)
            if self.pending or self.refused:
                self.provider_waiting_s += dt
                self.provider_wait_integral += dt * self.solving
        self.now = t

    def slots_in_effect(self) -> int:
        if self.policy is None:
            return self.busy
        return sum(v.target for v in self.services.values() if v.status == "running")

    # --- fleet ---------------------------------------------------------------------------------
    def new_service(self, status: ServiceStatus, target: int) -> _Service:
        self.next_service += 1
        svc = _Service(id=f"sim:{self.next_service}", status=status, target=target)
        self.services[svc.id] = svc
        if status == "starting":
            self.starts += 1
            self.push(self.now + self.s.service_startup_s, _READY, svc.id)
        return svc

    def apply(self, decision: Decision) -> None:
        views = [ServiceView(v.id, v.status, v.busy) for v in self.services.values()]
        p = place(decision.desired_slots, decision.desired_services, self.s.slots_per_service, views)
        for wid in p.undrain:
            self.services[wid].status = "running"
        for wid in p.drain:
            svc = self.services[wid]
            svc.status, svc.target = "draining", 0
            if svc.busy == 0:
                del self.services[wid]
                self.stops += 1
        for wid, target in p.targets.items():
            if wid in self.services:
                self.services[wid].target = target
        for target in p.new_targets:
            self.new_service("starting", target)
        self.max_slots = max(self.max_slots, self.slots_in_effect())

    def dispatch(self) -> None:
        """Claim pending tasks into free slots, then submit them to the provider."""
        slot_cap = self.s.plan_threads if not self.calibrated else None  # uncalibrated: the plan caps slots
        while self.pending and (self.policy is None or slot_cap is None or self.busy < slot_cap):
            wid: str | None = None
            if self.policy is not None:
                best, free = None, 0
                for v in self.services.values():
                    if v.status == "running" and v.target - v.busy > free:
                        best, free = v, v.target - v.busy
                if best is None:
                    break
                best.busy += 1
                wid = best.id
            task = self.pending.popleft()
            self.busy += 1
            if self.provider_cap is not None and self.solving >= self.provider_cap:
                self.refused.append((task, wid))  # ERROR_NO_SLOT_AVAILABLE: the worker backs off and retries
            else:
                self.submit(task, wid, 0.0)

    def submit(self, task: int, wid: str | None, delay: float) -> None:
        """Take a plan thread one HTTP round trip later; the provider finishes after the solve time, longer
        when it is busy."""
        delay += self.provider.round_trip_s(self.rng_rtt)
        solve = self.tasks[task][1] * self.provider.load_factor(self.solving, self.s.plan_threads)
        self.solve_s[task] = solve
        self.solving += 1
        self.provider_peak = max(self.provider_peak, self.solving)
        self.push(self.now + delay + solve, _SOLVED, (task, wid, self.now + delay))

    def held_by(self, wid: str | None) -> int:
        """Solves the process holding this task holds (its poll pace)."""
        if wid is None:
            return self.busy
        svc = self.services.get(wid)
        return svc.busy if svc is not None else 1

    # --- events --------------------------------------------------------------------------------
    def on_solved(self, data: tuple[int, str | None, float]) -> None:
        """The provider finished: its thread is free at once; the worker sees the answer at its next poll."""
        task, wid, submitted = data
        self.solving -= 1
        solve = self.solve_s[task]
        delay = 0.0
        if self.calibrated:
            held, api, method = self.held_by(wid), self.cfg.api, self.methods[task]
            rtt = self.provider.round_trip_s(self.rng_rtt)
            seen = seen_after(solve, held, self.phases[task], api, method, rtt)
            seen += self.provider.poll_penalty_s(self.rng_polls, poll_pace(held, api).interval_s)
            delay = max(0.0, submitted + seen - self.now)
        self.detect_total += delay
        self.push(self.now + delay, _FINISH, (task, wid, submitted))
        if self.refused and (self.provider_cap is None or self.solving < self.provider_cap):
            nxt, nwid = self.refused.popleft()
            self.submit(nxt, nwid, self.cfg.provider_retry_s)

    def on_finish(self, data: tuple[int, str | None, float]) -> None:
        task, wid, submitted = data
        self.busy -= 1
        self.completed += 1
        arrival, solve = self.tasks[task][0], self.solve_s[task]
        latency = self.now - arrival
        self.latencies.append(latency)
        self.solve_total += solve
        reported = reported_solve_s(solve, self.now - submitted, latency, self.calibrated)
        self.source.finished(self.now, self.methods[task], latency, reported)
        self.slo_window.add(self.now, latency, reported)
        if self.balance is not None:
            self.balance -= self.cfg.price_per_task
        if wid is not None:
            svc = self.services[wid]
            svc.busy -= 1
            if svc.status == "draining" and svc.busy == 0:
                del self.services[wid]
                self.stops += 1

    def oracle_slot_seconds(self) -> float:
        """The sum of the slot hold times with nothing waiting: solve times, plus (calibrated) each answer's
        detection delay at the fastest poll pace, where one process holds every solve."""
        if not self.calibrated:
            return sum(self.solve_s)
        api, rtt = self.cfg.api, self.provider.http_latency_s
        return sum(
            seen_after(s, 1 << 30, self.phases[i], api, self.methods[i], rtt) + rtt for i, s in enumerate(self.solve_s)
        )

    def on_ready(self, wid: str) -> None:
        svc = self.services.get(wid)
        if svc is None or svc.status != "starting":
            return
        svc.status = "running"
        if self.last_decision is not None:
            self.apply(self.last_decision)

    def reading(self) -> FleetReading:
        """What the simulated Redis holds now, for the signal source."""
        spent = (self.cfg.balance or 0.0) - self.balance if self.balance is not None else 0.0
        return FleetReading(
            now=self.now,
            pending=len(self.pending),
            busy=self.busy,
            slots=self.slots_in_effect(),
            arrived=self.arrived,
            completed=self.completed,
            balance=self.balance,
            spent=spent,
        )

    def target_of(self, wid: str) -> int:
        """The slots asked of a simulated service (its target key)."""
        svc = self.services.get(wid)
        return svc.target if svc is not None else 0

    def signals(self) -> Signals:
        """The policy's input, read as the controller reads it: a snapshot, then the services it steers."""
        views = [ServiceView(v.id, v.status, v.busy) for v in self.services.values()]
        return self.source.steered(self.source.read().signals, views)

    def on_arrival(self, task: int) -> None:
        self.arrived += 1
        self.pending.append(task)
        self.max_backlog = max(self.max_backlog, len(self.pending))

    def check_queue(self) -> None:
        """The loop's quick check: a jump in the queue is evaluated within ``quick_check_s``, not on the tick."""
        quick = self.s.quick_check_s
        if self.policy is None or quick <= 0 or self.quick_due or self.looks_again > 0:
            return  # as the loop: a check due to look again evaluates without reading the queue
        if queue_jumped(len(self.pending), self.pending_at_eval, self.s):
            self.quick_due = True
            if not self.calibrated:
                at = math.floor(self.now / quick + 1) * quick
            elif self.cfg.quick_check_phase is None:
                at = self.now + quick * self.rng_checks.random()
            else:
                phase = quick * self.cfg.quick_check_phase
                at = math.floor((self.now - phase) / quick + 1) * quick + phase
            self.push(at, _EVAL, "quick")

    def on_eval(self, kind: str | None) -> None:
        assert self.policy is not None and self.state is not None
        if kind is None and self.now < self.next_tick_at - 1e-9:
            return  # a quick evaluation since has moved the interval's grid
        if kind == "quick":
            self.quick_due = False
            if not queue_jumped(len(self.pending), self.pending_at_eval, self.s):
                return  # free slots absorbed it after all
        if kind == "again":
            self.looks_again -= 1
        before, self.pending_at_eval = self.pending_at_eval, len(self.pending)
        decision, self.state = self.policy.decide(self.signals(), self.state)
        if decision.changed:
            self.changes += 1
        self.decisions.append(decision)
        self.last_decision = decision
        delay = self.cfg.target_read_s if self.calibrated else 0.0
        if delay > 0:
            self.push(self.now + delay, _APPLY, decision)
        else:
            self.apply(decision)
        # The loop's next evaluation is an interval after this one, quick or not (``next_step`` in loop.py)
        self.next_tick_at = self.now + self.policy.interval_s
        self.push(self.next_tick_at, _EVAL)
        if self.s.quick_check_s > 0 and queue_jumped(self.pending_at_eval, before, self.s):
            self.looks_again = LOOKS_AFTER_A_JUMP  # as the loop: a second and a third look
        if self.looks_again > 0:
            self.push(self.now + self.s.quick_check_s, _EVAL, "again")

    def on_sample(self) -> None:
        second = int(self.now)
        if second < self.trace.duration_s:
            window = self.trace.arrivals[max(0, second - 59) : second + 1]
            self.demand_rate = sum(window) / len(window)
        self.slo_window.trim(self.now)
        p95 = self.slo_window.latency(0.95)
        if p95 is not None and p95 > self.s.p95_target_s:
            self.slo_violation += 1.0
        sr = self.series
        sr.t.append(self.now)
        sr.demand.append(self.demand_rate * self.typical_solve)
        sr.backlog.append(len(self.pending))
        sr.busy.append(self.busy)
        sr.slots.append(self.slots_in_effect())
        sr.capacity.append(
            self.busy
            if self.policy is None
            else sum(v.target for v in self.services.values() if v.status != "draining")
        )
        sr.p95.append(p95)
        self.push(self.now + 1.0, _SAMPLE)

    # --- run -----------------------------------------------------------------------------------
    def run(self) -> SimResult:
        self.schedule_start()
        end_by = self.trace.duration_s + self.cfg.max_tail_s
        total = len(self.tasks)
        while self.events:
            t, kind, _, data = heapq.heappop(self.events)
            if t > end_by:
                break
            self.advance(t)
            self.handle(kind, data)
            self.dispatch()
            self.check_queue()
            if self.completed == total and t >= self.trace.duration_s:
                break
        return self.result(total)

    def schedule_start(self) -> None:
        """Queue every arrival, the fleet up before the trace starts, the first evaluation and sample."""
        for i, (at, _) in enumerate(self.tasks):
            self.push(at, _ARRIVAL, i)
        if self.policy is not None:
            self.state = self.policy.initial_state()
            boot = place(self.state.desired, self.state.services, self.s.slots_per_service, [])
            for target in boot.new_targets:  # the fleet is up before the trace starts
                self.new_service("running", target)
            self.push(self.cfg.eval_phase_s - self.policy.interval_s, _EVAL)
        self.push(1.0, _SAMPLE)

    def handle(self, kind: int, data: Any) -> None:
        """Run the handler of one event."""
        self.handlers[kind](data)

    def result(self, total: int) -> SimResult:
        """The run's summary, once the events are done (or the tail is cut off)."""
        lat = self.latencies or [0.0]
        return SimResult(
            policy=self.policy.name if self.policy else "oracle",
            trace=self.trace.name,
            seed=self.cfg.seed,
            tasks=total,
            completed=self.completed,
            lost=total - self.completed,
            p50_latency_s=percentile(lat, 0.5),
            p95_latency_s=percentile(lat, 0.95),
            p99_latency_s=percentile(lat, 0.99),
            max_latency_s=max(lat),
            worker_seconds=self.slot_seconds,
            service_seconds=self.service_seconds,
            oracle_worker_seconds=self.oracle_slot_seconds(),
            scale_changes=self.changes,
            service_starts=self.starts,
            service_stops=self.stops,
            max_backlog=self.max_backlog,
            max_slots=self.max_slots,
            slo_violation_s=self.slo_violation,
            duration_s=self.now,
            flaps=count_flaps(self.decisions),
            mean_detection_s=self.detect_total / max(1, self.completed),
            provider_peak=self.provider_peak,
            provider_mean_while_waiting=(
                self.provider_wait_integral / self.provider_waiting_s if self.provider_waiting_s > 0 else None
            ),
            provider_waiting_s=self.provider_waiting_s,
            provider=self.cfg.provider_profile().name,
            series=self.series,
            decisions=self.decisions,
        )


def reported_solve_s(solve_s: float, seen_s: float, latency_s: float, calibrated: bool) -> float:
    """The solve time the controller reads for a finished task.

    The worker reports ``api_seconds`` = answer seen - accepted submit, and the controller's source keeps
    min(that, latency): the detection delay is part of it, so Little's law sizes slots by how long a task
    really holds one. Uncalibrated, an answer is seen the instant the solve ends.
    """
    return min(seen_s, latency_s) if calibrated else solve_s


def count_flaps(decisions: list[Decision], window_s: float = FLAP_WINDOW_S) -> int:
    """Scale-downs followed by a scale-up within ``window_s``: the fleet shrank only to grow back."""
    flaps = 0
    last_down: float | None = None
    for d in decisions:
        if d.desired_slots < d.previous_slots:
            last_down = d.at
        elif d.desired_slots > d.previous_slots and last_down is not None:
            if d.at - last_down <= window_s:
                flaps += 1
            last_down = None
    return flaps


def simulate(
    trace: Trace,
    policy: Policy | None,
    settings: ControllerSettings | None = None,
    config: SimConfig | None = None,
) -> SimResult:
    """Run ``policy`` (``None`` = the oracle) over ``trace``; same inputs, same result."""
    return _Sim(trace, policy, settings or ControllerSettings(), config or SimConfig()).run()
