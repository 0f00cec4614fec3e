"""The strategy contract: what a policy returns (a Decision), what it carries between evaluations (PolicyState),
its interface (what the loop and the simulator call), and the loop's quick check between evaluations.

The state is explicit and serialisable so the controller can keep it in Redis (a restart or a failover
loses nothing) and the simulator can run the very same policy object. Every strategy (``queue_model``, ``seed``,
``keda``, ``static``) implements :class:`Policy`; ``registry`` turns a ``--policy`` name into one, within the
operator's bounds (``bounds``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..settings import ControllerSettings
from ..signals import Signals


@dataclass(frozen=True)
class PolicyState:
    """A policy's memory between evaluations (identical shape for every policy)."""

    desired: int  # slots last asked for, including capacity still starting
    services: int = 1  # services last asked for
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, slots) inside the scale-down window
    last_eval: float | None = None
    last_change: float | None = None
    stuck_since: float | None = None  # since when busy workers complete nothing
    frozen: bool = False  # capacity errors everywhere: scale-up frozen until they settle
    changes: int = 0  # evaluations that changed the desired slots
    last_pending: int = 0  # pending at the last evaluation (a burst's onset is a queue out of nowhere)
    last_busy: int = 0  # tasks the slots held at the last evaluation (with last_pending: the work in the system)
    bursts: tuple[float, ...] = ()  # recent burst onsets: do bursts recur within the scale-down window?
    drained_since: float | None = None  # since when the queue stays below queue_down
    queue_growth: float = 0.0  # tasks/s the work in the system grew between the last two evaluations
    growing_since: float | None = None  # the first evaluation of the current run that saw it grow, every slot busy
    last_arrived: float | None = None  # the arrivals count at the last evaluation (Signals.arrived_count)
    last_epoch: int = 0  # that count's epoch (Signals.count_epoch)
    last_full_eval: float | None = None  # the last evaluation that measured growth (a second look does not)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the controller stores it in ``{p}:controller:state``)."""
        out = dataclasses.asdict(self)
        out["recommendations"] = [list(r) for r in self.recommendations]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyState:
        """The inverse of :meth:`to_dict`; unknown keys are ignored so old state still loads."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["recommendations"] = tuple((float(t), int(v)) for t, v in data.get("recommendations", ()))
        kwargs["bursts"] = tuple(float(t) for t in data.get("bursts", ()))
        return cls(**kwargs)


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation, with everything needed to explain it later."""

    at: float
    policy: str
    desired_slots: int
    desired_services: int
    previous_slots: int
    rule: str  # short machine-readable name of the rule that fired, e.g. "scale-up", "guard:balance-floor"
    reason: str  # one human sentence
    signals: Signals
    recommendation: int | None = None  # what the model asked for before guard rails and smoothing
    ceiling: int | None = None  # the ceiling in force (plan threads, max, balance)
    alerts: tuple[str, ...] = ()
    replace_hosts: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())  # guard rails that were consulted and did not bind
    bounds: tuple[str, ...] = ()  # hard bounds that cut what the policy asked for (strategies/bounds.py)

    @property
    def changed(self) -> bool:
        """Whether this decision changes the fleet's slot count."""
        return self.desired_slots != self.previous_slots

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, inputs included (the decision log entry)."""
        return {
            "at": round(self.at, 3),
            "policy": self.policy,
            "desired_slots": self.desired_slots,
            "desired_services": self.desired_services,
            "previous_slots": self.previous_slots,
            "rule": self.rule,
            "reason": self.reason,
            "recommendation": self.recommendation,
            "ceiling": self.ceiling,
            "alerts": list(self.alerts),
            "replace_hosts": list(self.replace_hosts),
            "notes": list(self.notes),
            "bounds": list(self.bounds),
            "inputs": self.signals.to_dict(),
        }


class Policy(Protocol):
    """Signals and state in, a decision and the next state out; no I/O, no clock."""

    @property
    def name(self) -> str:
        """The name ``--policy`` selects it by."""
        ...

    @property
    def interval_s(self) -> float:
        """Seconds between evaluations."""
        ...

    def initial_state(self) -> PolicyState:
        """The state before the first evaluation."""
        ...

    def decide(self, signals: Signals, state: PolicyState) -> tuple[Decision, PolicyState]:
        """One evaluation."""
        ...


# After an evaluation that saw a jump, the loop (and the simulator) evaluates at this many more queue checks: the
# second look sizes the rest of a dump, the third confirms a rise (controller/loop.py, ``_queue_news``).
LOOKS_AFTER_A_JUMP = 2


def queue_jumped(pending: int, pending_at_last_eval: int, settings: ControllerSettings) -> bool:
    """Worth an evaluation before the next tick: a queue that free slots did not absorb and that at least
    doubled since the last evaluation (a standing queue the policy already knows about is not news)."""
    return pending > settings.queue_up and pending > 2 * pending_at_last_eval


def starting_at(slots: int, settings: ControllerSettings) -> PolicyState:
    """The state before a strategy's first evaluation: ``slots`` in the services they need."""
    return PolicyState(desired=slots, services=settings.services_for(slots))


def resized(before: PolicyState, after: PolicyState, desired: int, services: int, at: float) -> PolicyState:
    """``after`` holding ``desired`` slots in ``services`` services; a change of size from ``before`` is counted and
    timed (``changes``, ``last_change``), as every strategy and the bounds that cut one must record it alike."""
    changed = desired != before.desired
    return dataclasses.replace(
        after,
        desired=desired,
        services=services,
        changes=before.changes + changed,
        last_change=at if changed else before.last_change,
    )


def decided(
    name: str,
    settings: ControllerSettings,
    signals: Signals,
    state: PolicyState,
    desired: int,
    rule: str,
    reason: str,
    window: tuple[tuple[float, int], ...] = (),
    recommendation: int | None = None,
    *,
    remembered: PolicyState | None = None,
    ceiling: int | None = None,
    alerts: tuple[str, ...] = (),
    replace_hosts: tuple[str, ...] = (),
    notes: tuple[str, ...] = (),
) -> tuple[Decision, PolicyState]:
    """A strategy's decision and the state it leaves, which every strategy records alike: ``desired`` slots in the
    services they need, the change from ``state`` counted. ``remembered`` is what the strategy carries on (by
    default ``state`` with its recommendation window and this evaluation's time: all a published rule keeps)."""
    services = settings.services_for(desired)
    decision = Decision(
        at=signals.now,
        policy=name,
        desired_slots=desired,
        desired_services=services,
        previous_slots=state.desired,
        rule=rule,
        reason=reason,
        signals=signals,
        recommendation=recommendation,
        ceiling=ceiling,
        alerts=alerts,
        replace_hosts=replace_hosts,
        notes=notes,
    )
    if remembered is None:
        remembered = dataclasses.replace(state, recommendations=window, last_eval=signals.now)
    return decision, resized(state, remembered, desired, services, signals.now)
