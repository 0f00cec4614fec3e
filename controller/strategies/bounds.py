"""The bounds no decision passes, whichever policy made it: max_slots, the plan, max_services, the balance floor.

Each policy has its own rules and its own idea of a ceiling (the seed's 20 threads, KEDA's replicas, the queue
model's plan); an operator's limits must hold for all of them, so they are enforced once, after any policy
decides (:class:`BoundedPolicy`, which :func:`captcha_fleet.controller.strategies.registry.make_policy` wraps every
policy in). A bound that cuts a decision names itself in the decision log: its rule (``bound:<name>`` or
``guard:balance-floor``), its reason and :attr:`Decision.bounds`.

The signals are made finite first (:func:`finite_signals`): heartbeats and counters are untrusted, and a NaN,
an infinity, a negative count or an absurd magnitude must be skipped or clamped, never raised or scaled on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..settings import BELOW_FLOOR_STOP, ControllerSettings
from ..signals import MethodSolve, Signals
from .base import Decision, Policy, PolicyState, resized

# Larger than any real fleet's counts and rates, small enough that products of them stay finite floats.
MAX_COUNT = 10**9
MAX_VALUE = 1e9
MIN_DURATION_S = 1e-3  # a solve or latency below a millisecond is not a measurement


@dataclass(frozen=True)
class Bound:
    """One ceiling on the slots: its value, its name in the decision log, and why it is what it is."""

    limit: int
    name: str
    why: str


def below_floor(signals: Signals, settings: ControllerSettings) -> bool:
    """The last balance read is below ``balance_floor`` (an unknown balance is not below anything)."""
    return signals.balance is not None and signals.balance < settings.balance_floor


def slot_bounds(signals: Signals, settings: ControllerSettings) -> list[Bound]:
    """Every ceiling on the slots in force now."""
    s = settings
    bounds = [
        Bound(s.max_slots, "max_slots", f"max_slots {s.max_slots}"),
        Bound(s.plan_slots, "plan_threads", f"plan_threads {s.plan_threads} + slots_over_plan = {s.plan_slots}"),
        Bound(
            s.service_slots,
            "max_services",
            f"max_services {s.max_services} x slots_per_service {s.slots_per_service} = {s.service_slots}",
        ),
    ]
    if below_floor(signals, s):
        stop = s.below_balance_floor == BELOW_FLOOR_STOP
        limit = 0 if stop else s.min_slots
        action = "submitting stopped" if stop else f"kept at min_slots {s.min_slots}"
        why = (
            f"balance ${signals.balance:.2f} below the ${s.balance_floor:.2f} floor: {action} "
            f"(below_balance_floor: {s.below_balance_floor})"
        )
        bounds.append(Bound(limit, "balance-floor", why))
    return bounds


def services_within(services: int, slots: int, settings: ControllerSettings) -> int:
    """``services`` moved into [what ``slots`` need (at least min_services), max_services]."""
    needed = max(settings.min_services, -(-slots // max(1, settings.slots_per_service)))
    return max(needed, min(services, settings.max_services))


def enforce(
    decision: Decision, before: PolicyState, after: PolicyState, settings: ControllerSettings
) -> tuple[Decision, PolicyState]:
    """The decision and the policy's next state cut to the bounds, the cut named in the decision log."""
    bounds = slot_bounds(decision.signals, settings)
    asked = max(0, decision.desired_slots)
    cutting = sorted((b for b in bounds if b.limit < asked), key=lambda b: (b.limit, b.name))
    recommended = decision.recommendation if decision.recommendation is not None else asked
    binding = tuple(sorted({b.name for b in bounds if b.limit < max(asked, recommended)}))
    desired, rule, reason, alerts = asked, decision.rule, decision.reason, decision.alerts
    if cutting:
        tightest = cutting[0]
        desired = tightest.limit
        rule = "guard:balance-floor" if tightest.name == "balance-floor" else f"bound:{tightest.name}"
        reason = f"{tightest.why}: {asked} cut to {desired}; {decision.reason}"
        if tightest.name == "balance-floor":
            alerts = (*alerts, tightest.why)
    services = services_within(decision.desired_services, desired, settings)
    ceiling = min(b.limit for b in bounds)
    if decision.ceiling is not None:
        ceiling = min(ceiling, decision.ceiling)
    bounded = replace(
        decision,
        desired_slots=desired,
        desired_services=services,
        rule=rule,
        reason=reason,
        ceiling=ceiling,
        alerts=alerts,
        bounds=binding,
    )
    if desired == after.desired and services == after.services:
        return bounded, after
    return bounded, resized(before, after, desired, services, decision.at)


def _count(value: int | float | None) -> int:
    """A count: non-finite or negative -> 0, at most ``MAX_COUNT``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return 0
    return int(max(0, min(MAX_COUNT, value)))


def _opt_count(value: int | float | None) -> int | None:
    return None if value is None else _count(value)


def _rate(value: float | None) -> float | None:
    """A rate or an amount: not a finite number >= 0 -> unknown, at most ``MAX_VALUE``."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return min(MAX_VALUE, float(value))


def _duration(value: float | None) -> float | None:
    """A duration: below a millisecond, or not finite, is no measurement."""
    rate = _rate(value)
    return None if rate is None or rate < MIN_DURATION_S else rate


def _balance(value: float | None) -> float | None:
    """A balance may be negative (an overdrawn account), never NaN or infinite."""
    if value is None or not math.isfinite(value):
        return None
    return max(-MAX_VALUE, min(MAX_VALUE, float(value)))


def _fractions(rates: Mapping[str, float]) -> dict[str, float]:
    """Error rates in [0, 1]; a non-finite one is dropped."""
    return {k: min(1.0, max(0.0, float(v))) for k, v in rates.items() if math.isfinite(v)}


def _method_solves(by_method: Mapping[str, MethodSolve]) -> dict[str, MethodSolve]:
    """Per-method windows with a finite share in [0, 1], durations as :func:`_duration`; a method whose mean or
    P95 is no measurement is dropped (the policy then uses the fleet-wide figures for it)."""
    out = {}
    for method, m in by_method.items():
        mean_s, p95_s = _duration(m.mean_s), _duration(m.p95_s)
        if mean_s is None or p95_s is None or not math.isfinite(m.share):
            continue
        out[method] = MethodSolve(min(1.0, max(0.0, m.share)), mean_s, p95_s, _count(m.samples))
    return out


def finite_signals(signals: Signals) -> Signals:
    """The signals with every measured value finite and in range (``now`` is the controller's own clock).

    An age that is not a finite number >= 0 is dropped: the source then counts as missing (stale), which allows
    scale-up only.
    """
    return replace(
        signals,
        pending=_opt_count(signals.pending),
        in_flight=_opt_count(signals.in_flight),
        slots=_count(signals.slots),
        busy=_count(signals.busy),
        starting_slots=_count(signals.starting_slots),
        services=_count(signals.services),
        arrival_rate=_rate(signals.arrival_rate),
        completion_rate=_rate(signals.completion_rate),
        p95_latency_s=_duration(signals.p95_latency_s),
        p50_latency_s=_duration(signals.p50_latency_s),
        mean_solve_s=_duration(signals.mean_solve_s),
        p95_solve_s=_duration(signals.p95_solve_s),
        completed_in_window=_count(signals.completed_in_window),
        mean_busy=_rate(signals.mean_busy),
        solve_by_method=_method_solves(signals.solve_by_method),
        error_rates=_fractions(signals.error_rates),
        host_error_rates=_fractions(signals.host_error_rates),
        balance=_balance(signals.balance),
        burn_rate=_rate(signals.burn_rate),
        ages={k: float(v) for k, v in signals.ages.items() if math.isfinite(v) and v >= 0},
    )


class BoundedPolicy:
    """Any policy, its signals made finite and its decisions cut to the bounds (see the module docstring)."""

    def __init__(self, inner: Policy, settings: ControllerSettings) -> None:
        self.inner = inner
        self.settings = settings

    @property
    def name(self) -> str:
        """The wrapped policy's name."""
        return self.inner.name

    @property
    def interval_s(self) -> float:
        """The wrapped policy's interval."""
        return self.inner.interval_s

    def initial_state(self) -> PolicyState:
        """The wrapped policy's start, within the static bounds (no balance is known yet)."""
        state = self.inner.initial_state()
        s = self.settings
        desired = max(0, min(state.desired, s.max_slots, s.plan_slots, s.service_slots))
        return replace(state, desired=desired, services=services_within(state.services, desired, s))

    def decide(self, signals: Signals, state: PolicyState) -> tuple[Decision, PolicyState]:
        """The wrapped policy's decision on finite signals, cut to the bounds."""
        decision, after = self.inner.decide(finite_signals(signals), state)
        return enforce(decision, state, after, self.settings)
