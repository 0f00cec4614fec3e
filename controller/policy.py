"""The queue-model policy: size the fleet from Little's law, use the seed's thresholds as guard rails.

Two terms, the larger wins:

* *keep up*: arrival rate x mean solve time (Little's law: the slots busy on average), times
  ``keep_up_fraction`` (0.8) so that a rising load is met before the queue has to grow;
* *backlog*: pending x mean solve time / W, the slots that start every queued task within W seconds, where
  W = ``drain_fraction`` x (P95 target - P95 solve time) is the queueing time a task can afford.

Sizing to the backlog term spends the latency budget instead of money: the fleet settles with a short
standing queue (about W seconds of arrivals) and every slot busy, rather than idle slots waiting for work.
Fixed +2/-1 steps are slow on the way up and thrash on the way down; a model jumps to the right size in one
evaluation and then holds.

Up is fast (any evaluation, once the model asks ``scale_up_tolerance`` above the current size, plus
``scale_up_headroom``), down is slow (the highest recommendation over a window, and only when that is
``scale_down_hysteresis`` below the current size). Every guard rail can only *withhold* a change, never
invent one, so a broken signal cannot shrink the fleet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from controller.decision import Decision, PolicyState
from controller.settings import ControllerSettings
from controller.signals import Signals

NAME = "queue-model"


@dataclass(frozen=True)
class Model:
    """The queue model's arithmetic, kept for the decision log."""

    arrival_rate: float
    solve_s: float
    drain_s: float
    base: float  # keep-up term: keep_up_fraction x rate x solve
    drain: float  # backlog term: slots that start every pending task within drain_s

    @property
    def slots(self) -> int:
        """Slots the model asks for (before bounds)."""
        return math.ceil(max(self.base, self.drain) - 1e-9)


def queue_model(signals: Signals, settings: ControllerSettings) -> Model:
    """Little's law on the measured arrival rate and solve time, and the backlog's queueing budget."""
    solve = signals.mean_solve_s or settings.solve_time_prior_s
    p95_solve = signals.p95_solve_s or 2.0 * solve
    budget = settings.p95_target_s - p95_solve  # queueing time a task may spend and still meet P95
    drain_s = max(settings.interval_s, budget * settings.drain_fraction)
    in_flight = signals.in_flight if signals.in_flight is not None else signals.busy
    rate = signals.arrival_rate
    if rate is None:  # no history yet: at least keep what is in flight
        rate, base = in_flight / solve, float(in_flight)
    else:
        base = max(rate * solve * settings.keep_up_fraction, 0.0)
    drain = (signals.pending or 0) * solve / drain_s
    return Model(arrival_rate=rate, solve_s=solve, drain_s=drain_s, base=base, drain=drain)


def balance_ceiling(signals: Signals, settings: ControllerSettings) -> int | None:
    """Concurrent solves the balance above the floor can still pay for, if the burn rate is known."""
    if signals.balance is None or not signals.burn_rate or not signals.completion_rate:
        return None
    if signals.burn_rate <= 0 or signals.completion_rate <= 0:
        return None
    cost_per_task = signals.burn_rate / signals.completion_rate
    slots = (signals.balance - settings.balance_floor) / cost_per_task
    if not math.isfinite(slots) or slots > 1e9:
        return None  # too small a burn to bind
    return max(0, math.floor(slots))


def concentrated_hosts(signals: Signals, settings: ControllerSettings) -> tuple[str, ...]:
    """Hosts whose error rate is high while every other host is stable: their workers need replacing."""
    rates = signals.host_error_rates
    if len(rates) < 2:
        return ()
    act, stable = settings.error_act_pct / 100, settings.error_stable_pct / 100
    bad = sorted(h for h, r in rates.items() if r > act)
    others = [r for h, r in rates.items() if h not in bad]
    if not bad or not others or max(others) >= stable:
        return ()
    return tuple(bad)


class QueueModelPolicy:
    """This project's policy; see the module docstring."""

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings

    @property
    def name(self) -> str:
        """The ``--policy`` name."""
        return NAME

    @property
    def interval_s(self) -> float:
        """Evaluation interval."""
        return self.settings.interval_s

    def initial_state(self) -> PolicyState:
        """Start at the minimum."""
        s = self.settings
        return PolicyState(desired=s.min_slots, services=s.services_for(s.min_slots))

    def decide(self, signals: Signals, state: PolicyState) -> tuple[Decision, PolicyState]:
        """One evaluation: model, bounds, guard rails, smoothing, in that order."""
        s = self.settings
        now = signals.now
        current = state.desired
        alerts: list[str] = []
        notes: list[str] = []

        # --- bounds ---------------------------------------------------------------------------------
        ceiling = s.max_effective_slots
        ceiling_why = "plan_threads" if s.plan_threads <= s.max_slots else "max_slots"
        stale = signals.stale_sources(s.stale_after_s)
        b_ceiling = balance_ceiling(signals, s)
        if b_ceiling is not None and b_ceiling < ceiling:
            ceiling, ceiling_why = b_ceiling, "balance"
        floor = s.min_slots

        model = queue_model(signals, s)
        rec = max(floor, min(ceiling, model.slots))
        window = tuple((t, v) for t, v in state.recommendations if t > now - s.scale_down_window_s)
        window += ((now, rec),)
        window_max = max(v for _, v in window)

        # --- guard rails ----------------------------------------------------------------------------
        util = signals.utilization
        pending = signals.pending if signals.pending is not None else 0
        p95 = signals.p95_latency_s
        triggers = []
        if pending > s.queue_up:
            triggers.append(f"queue {pending} > {s.queue_up}")
        if util is not None and util * 100 > s.utilization_up_pct:
            triggers.append(f"utilization {util:.0%} > {s.utilization_up_pct:.0f}%")
        # P95 lags (it describes tasks already finished): it holds scale-down only while a queue remains.
        hold_triggers = list(triggers)
        if p95 is not None and p95 > s.p95_up_s:
            triggers.append(f"P95 {p95:.0f}s > {s.p95_up_s:.0f}s")
            if pending >= s.queue_down:
                hold_triggers.append(triggers[-1])

        up_blocks: list[tuple[str, str]] = []  # (rule, reason)
        if signals.balance is not None and signals.balance < s.balance_floor:
            msg = f"balance ${signals.balance:.2f} below the ${s.balance_floor:.2f} floor: scale-up stopped"
            up_blocks.append(("guard:balance-floor", msg))
        elif signals.balance is None:
            notes.append("balance unknown: no balance guard")

        stuck = (
            pending > s.queue_up
            and signals.busy > 0
            and util is not None
            and util * 100 >= s.utilization_up_pct
            and signals.completion_rate is not None
            and signals.completion_rate <= 0
        )
        stuck_since = (state.stuck_since if state.stuck_since is not None else now) if stuck else None
        if stuck_since is not None and now - stuck_since >= s.stuck_after_s:
            msg = (
                f"queue not draining: {pending} pending, {signals.busy} busy, no completion for "
                f"{now - stuck_since:.0f}s: check that workers are actually processing"
            )
            alerts.append(msg)
            up_blocks.append(("guard:not-draining", msg))

        replace_hosts = concentrated_hosts(signals, s)
        if replace_hosts:
            alerts.append(f"error rate concentrated on {', '.join(replace_hosts)}: replacing its workers")
        capacity_rate = signals.error_rates.get("capacity", 0.0)
        frozen = state.frozen
        if capacity_rate * 100 > s.error_act_pct and not replace_hosts:
            frozen = True
        elif capacity_rate * 100 < s.error_stable_pct:
            frozen = False
        if frozen:
            msg = f"capacity errors {capacity_rate:.1%} fleet-wide: the API refuses more, scale-up frozen"
            up_blocks.append(("guard:capacity-errors", msg))
        fatal_rate = signals.error_rates.get("fatal", 0.0)
        if fatal_rate > 0:
            msg = f"account errors ({fatal_rate:.1%} of answers): scale-up stopped, fix the key or balance"
            alerts.append(msg)
            up_blocks.append(("guard:fatal-errors", msg))

        # --- decide ---------------------------------------------------------------------------------
        desired, rule, reason = current, "hold", ""
        model_txt = (
            f"model max(keep-up {model.base:.1f} = {s.keep_up_fraction:g} x {model.arrival_rate:.2f}/s x "
            f"{model.solve_s:.1f}s, backlog {model.drain:.1f} = {pending} pending in {model.drain_s:.0f}s)"
            f" -> {rec}"
        )
        if current > ceiling and not (stale and ceiling_why == "balance"):
            desired, rule = max(floor, ceiling), f"clamp:{ceiling_why}"
            reason = f"ceiling {ceiling} ({ceiling_why}) below current {current}"
        elif current < floor:
            desired, rule, reason = floor, "clamp:min", f"below the minimum {floor}"
        elif rec > current * (1.0 + s.scale_up_tolerance) or (rec > current and current <= floor):
            if up_blocks:
                rule, reason = up_blocks[0]
            else:
                desired = max(floor, min(ceiling, math.ceil(rec * (1.0 + s.scale_up_headroom) - 1e-9)))
                rule = "scale-up"
                reason = model_txt + (f"; triggers: {', '.join(triggers)}" if triggers else "")
        elif window_max < current:
            idle = (
                pending < s.queue_down
                and util is not None
                and util * 100 < s.utilization_down_pct
                and (p95 is None or p95 < s.p95_down_s)
            )
            limit = current if idle else math.floor(current * (1.0 - s.scale_down_hysteresis))
            if stale:
                rule = "guard:stale-signals"
                reason = f"stale or missing {', '.join(stale)}: scale-up only"
            elif hold_triggers:
                rule, reason = "hold:triggers", f"model says {window_max} but {', '.join(hold_triggers)}"
            elif pending >= s.queue_down:
                rule, reason = "hold:queue", f"queue {pending} >= {s.queue_down}: not scaling down"
            elif window_max > limit and window_max > floor:
                rule = "hold:hysteresis"
                reason = f"window max {window_max} within {s.scale_down_hysteresis:.0%} of {current}"
            else:
                desired = max(floor, window_max)
                rule = "scale-down:idle" if idle else "scale-down"
                window_s = s.scale_down_window_s
                reason = f"highest recommendation over {window_s:.0f}s is {window_max}; {model_txt}"
        if not reason:
            reason = model_txt
        if up_blocks and rule == "hold":
            notes.append(up_blocks[0][1])
        if stale and rule not in ("guard:stale-signals",):
            notes.append(f"stale or missing {', '.join(stale)}: scale-down withheld")

        services = s.services_for(desired)
        decision = Decision(
            at=now,
            policy=NAME,
            desired_slots=desired,
            desired_services=services,
            previous_slots=current,
            rule=rule,
            reason=reason,
            signals=signals,
            recommendation=rec,
            ceiling=ceiling,
            alerts=tuple(alerts),
            replace_hosts=replace_hosts,
            notes=tuple(notes),
        )
        new_state = replace(
            state,
            desired=desired,
            services=services,
            recommendations=window,
            last_eval=now,
            last_change=now if desired != current else state.last_change,
            stuck_since=stuck_since,
            frozen=frozen,
            changes=state.changes + (desired != current),
        )
        return decision, new_state
