"""The queue-model policy: size the fleet from Little's law, use the seed's thresholds as guard rails.

Two terms, the larger wins:

* *keep up*: arrival rate x mean solve time (Little's law: the slots busy on average), times
  ``keep_up_fraction`` (0.8) so that a rising load is met before the queue has to grow;
* *backlog*: pending x mean solve time / W, the slots that start every queued task within W seconds, where
  W = ``drain_fraction`` x (P95 target - P95 solve time) is the queueing time a task can afford. At the loop's
  second look after a jump, the tasks slots took since the first count as pending (:func:`started_since_last`).

Sizing to the backlog term spends the latency budget instead of money: the fleet settles with a short
standing queue (about W seconds of arrivals) and every slot busy, rather than idle slots waiting for work.
Fixed +2/-1 steps are slow on the way up and thrash on the way down; a model jumps to the right size in one
evaluation and then holds.

Up is fast (any evaluation, once the model asks ``scale_up_tolerance`` above the current size, plus
``scale_up_headroom``), down is slow (the highest recommendation over a window, and only when that is
``scale_down_hysteresis`` below the current size). Every guard rail can only *withhold* a change, never
invent one, so a broken signal cannot shrink the fleet.

The window is long (``scale_down_window_s``) while load may come back, and short (``release_window_s``)
once a burst is over: the queue has stayed empty that long and bursts do not recur within the long window
(:func:`bursts_recur`, a memory of burst onsets). Holding slots is a bet that they are needed again before
the window ends; periodic bursts win that bet, a single burst loses it. Headroom that a whole long window
never used is trimmed (:func:`unused_headroom`).

Closed loop: whatever the model leaves out, the measured P95 shows. While it runs over the target and
tasks still wait, the backlog term's queueing budget shrinks by target / P95 (:func:`latency_correction`).
The ceiling is the plan's threads plus ``slots_over_plan``: a slot waiting for its answer to be seen holds
no provider thread (:attr:`ControllerSettings.slot_ceiling`).

A rising burst (the work in the system, pending + in flight, grew at two evaluations in a row with every slot busy,
by more than a queue's worth per solve time: :func:`rises_past_noise`) is met at the rate it arrives at, not the
rate window's lagging one: at least the slots that hold it level (:func:`holding_level`) at the slot hold Little's law
measures (:func:`rising_solve_s`). Without it, whether a burst's first evaluations caught its rise depended on where
they fell against its start: over five phases of the evaluation grid the simulator's P95 spread 58-69 s on
builtin:short with the congested profile (goal 60 s), over ten 25-55 s on short[120:300] with the sandbox, and a live
20x replay landed anywhere in that spread.
A load the plan cannot hold (holding it level would need the ceiling: :func:`outgrows_plan`) goes to the
ceiling at once: no standing queue can be drained there.

``decide`` is a short pipeline of named steps: :func:`ceiling_for`, :func:`queue_model`, :func:`outgrows_plan` or
:func:`holding_level`, :func:`guard_rails`, :func:`scale_down_window`, then :func:`scale_up_step` or
:func:`scale_down_step`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..settings import ControllerSettings
from ..signals import Signals
from .base import Decision, PolicyState, decided, starting_at

NAME = "queue-model"


@dataclass(frozen=True)
class Model:
    """The queue model's arithmetic, kept for the decision log."""

    arrival_rate: float
    solve_s: float
    drain_s: float
    base: float  # keep-up term: keep_up_fraction x rate x solve
    drain: float  # backlog term: slots that start every pending task within drain_s
    correction: float = 1.0  # closed loop: > 1 while the measured P95 runs over the target with tasks waiting
    started: int = 0  # tasks slots took since the last evaluation, counted with the pending ones (a second look)
    hold: float = 1.0  # Little's law's slot hold over the finished solves' mean (:func:`hold_ratio`), 1 if periodic

    @property
    def slots(self) -> int:
        """Slots the model asks for (before bounds)."""
        return math.ceil(max(self.base, self.drain) - 1e-9)


MAX_CORRECTION = 3.0


def latency_correction(signals: Signals, settings: ControllerSettings) -> float:
    """How much faster to drain the backlog: measured P95 / target while over it and tasks wait, else 1.

    The P95 describes tasks already finished, so it only acts while a queue remains (never after a burst
    has drained), and at most ``MAX_CORRECTION``.
    """
    p95, pending = signals.p95_latency_s, signals.pending or 0
    if p95 is None or p95 <= settings.p95_target_s or pending < settings.queue_down:
        return 1.0
    return min(MAX_CORRECTION, p95 / settings.p95_target_s)


def hold_ratio(signals: Signals) -> float:
    """How much longer a task holds its slot than the finished tasks' solve times say, in [1, MAX_CORRECTION].

    Little's law (mean busy slots / completion rate, over the rate window) measures the whole slot hold: the
    refill time from a claim to an accepted submit (back-offs while the plan is full) and the long solves still
    in flight, both of which a window of finished tasks leaves out (it sees a mixed stream's fast method and a
    congested provider's early, quicker solves first). Issue 24: short/mixed-methods read a P95 solve of 31 s
    while its mix holds 56 s. Scaling the mean as well paid for a burst's lag (short/sandbox slot-s 1.15 ->
    1.43 x the oracle), so only the queueing budget's P95 and a confirmed rise's level (:func:`rising_solve_s`) take
    it. 1 for the first two rate windows after a start, when mean busy is None
    (:class:`~captcha_fleet.controller.sources.busy_window.BusyWindow`: a cold start reads the hold long).
    """
    busy, rate, solve = signals.mean_busy, signals.completion_rate, signals.mean_solve_s
    if busy is None or not rate or not solve or rate <= 0 or solve <= 0:
        return 1.0
    ratio = busy / rate / solve
    return min(MAX_CORRECTION, max(1.0, ratio)) if math.isfinite(ratio) else 1.0


def held_tasks(signals: Signals) -> int:
    """Tasks the slots hold now: the in-flight lists' length (read with the queue's length), or the heartbeats'
    busy count if that is more.

    A heartbeat comes every few seconds, and a slot that claimed a task since its last one is counted neither in
    the queue nor as busy. At 1x (real time) the third look after a jump read 0 queued and 2 busy where 37 tasks
    were in flight, took the rise for over, and the fleet sat a tenth under the burst for its whole length
    (short[120:300]: P95 49.7 s against the simulator's 25.4; 26.5 s at 20x, where the looks fall later against
    the heartbeats).
    """
    return max(signals.busy, signals.in_flight or 0)


def second_look(signals: Signals, state: PolicyState, settings: ControllerSettings) -> bool:
    """Is this evaluation less than two queue checks after the last full one (the loop's second look after a jump)?

    A second is too short to tell a rise from a dump still arriving or from new slots not yet at work: measured
    there, a rise read as over one second after a scale-up (flash-crowd/sandbox live P95 50.8 s against the
    simulator's 34.3 when the second look replaced the first's reading). So a second look sizes the fleet and
    moves the counters on, and the run of growth stays as the full evaluations measured it; the loop's third look,
    two checks after the first, is a full one and confirms a rise from there (the growth since the second look).
    """
    last = state.last_full_eval
    return (
        last is not None and settings.quick_check_s > 0 and 0 < signals.now - last < 2 * settings.quick_check_s - 1e-6
    )


def started_since_last(signals: Signals, state: PolicyState, settings: ControllerSettings) -> int:
    """Slots that took a task since the last evaluation, at a second look (:func:`second_look`), else 0.

    A look one check after a dump's first evaluation finds part of the dump already in new slots: sized on the
    queue alone it saw less than the first look (builtin:periodic, simulator: 39 of 120 tasks claimed between the
    two), and the fleet kept the first look's size. Those slots are busy for a whole solve, so for the backlog
    term they are queued work. Ten seconds apart the count is ordinary churn and is left out.
    """
    if not second_look(signals, state, settings):
        return 0
    return max(0, held_tasks(signals) - state.last_busy)


def queue_model(signals: Signals, settings: ControllerSettings, periodic: bool = False, started: int = 0) -> Model:
    """Little's law on the measured arrival rate and solve time, and the backlog's queueing budget; ``started``
    tasks (:func:`started_since_last`) count with the pending ones.

    The solve figures are the mix of per-method windows (:mod:`captcha_fleet.controller.sources.method_solves`); the
    P95 that sets the budget is checked against the slot hold Little's law measures (:func:`hold_ratio`).
    """
    solve = signals.mean_solve_s or settings.solve_time_prior_s
    hold = 1.0 if periodic else hold_ratio(signals)
    p95_solve = (signals.p95_solve_s or 2.0 * solve) * hold
    budget = settings.p95_target_s - p95_solve  # queueing time a task may spend and still meet P95
    correction = latency_correction(signals, settings)
    drain_s = max(settings.interval_s, budget * settings.drain_fraction / correction)
    in_flight = signals.in_flight if signals.in_flight is not None else signals.busy
    rate = signals.arrival_rate
    if rate is None:  # no history yet: at least keep what is in flight
        rate, base = in_flight / solve, float(in_flight)
    else:
        base = max(rate * solve * settings.keep_up_fraction, 0.0)
    drain = ((signals.pending or 0) + started) * solve / drain_s
    return Model(
        arrival_rate=rate,
        solve_s=solve,
        drain_s=drain_s,
        base=base,
        drain=drain,
        correction=correction,
        started=started,
        hold=hold,
    )


def balance_ceiling(signals: Signals, settings: ControllerSettings) -> int | None:
    """Concurrent solves the balance above the floor can still pay for, if the burn rate is known."""
    if signals.balance is None or not signals.burn_rate or not signals.completion_rate:
        return None
    if signals.burn_rate <= 0 or signals.completion_rate <= 0:
        return None
    cost_per_task = signals.burn_rate / signals.completion_rate
    if cost_per_task <= 0:  # a burn too small to represent
        return None
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


@dataclass(frozen=True)
class Guards:
    """What the guard rails found: reasons to withhold a scale-up, alerts, and the state they carry."""

    up_blocks: tuple[tuple[str, str], ...]  # (rule, reason), the first one is reported
    alerts: tuple[str, ...]
    notes: tuple[str, ...]
    triggers: tuple[str, ...]  # the seed's up-thresholds that fire (reported with a scale-up)
    hold_triggers: tuple[str, ...]  # ... those that hold a scale-down
    replace_hosts: tuple[str, ...]
    stuck_since: float | None
    frozen: bool


def ceiling_for(signals: Signals, settings: ControllerSettings) -> tuple[int, str]:
    """The highest slot count allowed now, and what sets it (plan threads, max_slots, balance)."""
    ceiling = settings.slot_ceiling
    why = "plan_threads" if ceiling < settings.max_slots else "max_slots"
    b_ceiling = balance_ceiling(signals, settings)
    if b_ceiling is not None and b_ceiling < ceiling:
        return b_ceiling, "balance"
    return ceiling, why


def seed_triggers(signals: Signals, settings: ControllerSettings) -> tuple[list[str], list[str]]:
    """The seed's up-thresholds that fire, and those that hold a scale-down (P95 only while a queue remains)."""
    s, util, pending, p95 = settings, signals.utilization, signals.pending or 0, signals.p95_latency_s
    triggers = []
    if pending > s.queue_up:
        triggers.append(f"queue {pending} > {s.queue_up}")
    if util is not None and util * 100 > s.utilization_up_pct:
        triggers.append(f"utilization {util:.0%} > {s.utilization_up_pct:.0f}%")
    hold = list(triggers)
    if p95 is not None and p95 > s.p95_up_s:
        triggers.append(f"P95 {p95:.0f}s > {s.p95_up_s:.0f}s")
        if pending >= s.queue_down:
            hold.append(triggers[-1])
    return triggers, hold


def guard_rails(signals: Signals, state: PolicyState, settings: ControllerSettings) -> Guards:
    """Balance floor, a queue that does not drain, capacity and account errors, a host gone bad."""
    s, now = settings, signals.now
    util, pending = signals.utilization, signals.pending or 0
    alerts: list[str] = []
    notes: list[str] = []
    up_blocks: list[tuple[str, str]] = []
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
    triggers, hold = seed_triggers(signals, s)
    return Guards(
        tuple(up_blocks), tuple(alerts), tuple(notes), tuple(triggers), tuple(hold), replace_hosts, stuck_since, frozen
    )


def queue_growth(work: int, last_work: int, now: float, last_eval: float | None) -> float:
    """Tasks/s by which the work in the system (pending + :func:`held_tasks`) grew since the last evaluation (0 on
    the first).

    Arrivals less completions: a scale-up that moves queued tasks into new slots is not a change. The queue
    alone read that move as a slower growth, so whether a plan-bound load was seen at the second evaluation or
    only at the fourth depended on where the evaluations fell against its start (builtin:plan-bound, sandbox:
    P95 103.6-115.4 s over five phases of the evaluation grid, goal 112.1).
    """
    if last_eval is None or now <= last_eval:
        return 0.0
    return (work - last_work) / (now - last_eval)


def arrivals_since_last(signals: Signals, state: PolicyState) -> float | None:
    """Tasks/s that arrived since the last evaluation (the source's arrivals count), or None when it cannot be
    told: no count, a count of another epoch (the counters restarted between), or no time passed."""
    last, now, count = state.last_eval, signals.now, signals.arrived_count
    if last is None or now <= last or count is None or state.last_arrived is None:
        return None
    if signals.count_epoch != state.last_epoch or count < state.last_arrived:
        return None
    return (count - state.last_arrived) / (now - last)


def holding_level(
    signals: Signals, growth: float, prior_growth: float, solve_s: float, arrivals: float | None = None
) -> float:
    """Slots that would hold the work in the system level: the arrival rate since the last evaluation x solve
    time (without an arrivals count: the slower of the last two growths + the completion rate).

    Not the rate window's arrival rate, which lags a burst by half the window. Not growth + the window's completion
    rate either: completions lag while new slots fill, and the slower of two growths takes in the evaluation
    before the burst began, so a burst's first rising decision depended on where the evaluations fell against its
    onset (short/congested: 37 slots at one phase, 55 at another, for a load that needs 90). Not busy + growth x
    solve: completions lag the busy count and that overshot by a fifth (builtin:short went to the ceiling for a
    load that needs 70 slots).
    """
    if arrivals is not None:
        return arrivals * solve_s
    return (min(growth, prior_growth) + (signals.completion_rate or 0.0)) * solve_s


def rising_solve_s(model: Model) -> float:
    """The slot hold per task a rising burst is sized with: the finished solves' mean x :func:`hold_ratio`.

    While a burst rises, the finished solves are its early, quick ones: short/mixed-methods read a mean of 13.9 s
    where its tasks held their slots 18-19 s, so arrivals x solve held the fleet at 71 slots for a load needing ~85,
    and at one phase of five the queue grew for 50 s under the noise line (P95 62.6 s against the 61.3 s goal; 57.8
    with this). Only a confirmed rise takes it: the keep-up term scaled the same way paid for every burst's lag
    (short/sandbox slot-s 1.15 -> 1.43x the oracle).
    """
    return model.solve_s * model.hold


def outgrows_plan(
    signals: Signals,
    growth: float,
    prior_growth: float,
    solve_s: float,
    ceiling: int,
    settings: ControllerSettings,
    arrivals: float | None = None,
) -> bool:
    """The load is bound by the plan: go to the ceiling at once instead of climbing towards it.

    The work in the system grew at two evaluations in a row with every slot busy (a sustained rate, not a
    one-time dump, which the next evaluation sees level), and the slots that would only hold it level
    (:func:`holding_level`) reach the ceiling. The model's standing queue is then no budget being spent: it
    cannot be drained below the ceiling, and each slot short of the ceiling leaves a plan thread idle while
    the queue grows (issue 11: the measured rate lags a jump, so the model reached the plan only later).
    """
    if prior_growth <= 0 or not grows_with_every_slot_busy(signals, growth):
        return False
    return holding_level(signals, growth, prior_growth, solve_s, arrivals) >= ceiling


def rises_past_noise(growth: float, prior_growth: float, solve_s: float, settings: ControllerSettings) -> bool:
    """The work grew at two evaluations in a row by more than a queue's worth (``queue_up``) per solve time:
    a burst's rising rate, not the standing queue's arrival noise (which, let in, cost steady loads a fifth
    more slot-seconds and flaps)."""
    return prior_growth > 0 and min(growth, prior_growth) * solve_s > settings.queue_up


def grows_with_every_slot_busy(signals: Signals, growth: float) -> bool:
    """The queue grew since the last evaluation while every slot in effect held a task."""
    return growth > 0 and 0 < signals.slots <= held_tasks(signals)


def sustained(growing_since: float | None, now: float, settings: ControllerSettings) -> bool:
    """The queue has grown, every slot busy, over two queue checks at least: a rate, not a dump fed in over a
    moment. Two quick evaluations of one burst's arrival (one check apart in a live replay) both see growth;
    without this they made the plan-bound rule take a periodic load's fleet to the ceiling at every burst
    (live 1.20x the simulator's slot-seconds on builtin:periodic, where a burst arrives at one instant)."""
    return growing_since is not None and now - growing_since >= 2 * settings.quick_check_s


def wants_scale_up(rec: int, current: int, floor: int, ceiling: int, settings: ControllerSettings) -> bool:
    """The model asks ``scale_up_tolerance`` above now, or anything above a fleet at its floor, or the
    ceiling itself (the tolerance must not keep the last few paid threads idle while the queue grows)."""
    if rec > current * (1.0 + settings.scale_up_tolerance):
        return True
    return rec > current and (current <= floor or rec >= ceiling)


def scale_up_step(rec: int, floor: int, ceiling: int, settings: ControllerSettings) -> int:
    """The model's size plus ``scale_up_headroom``, so the next small rise needs no change."""
    return max(floor, min(ceiling, math.ceil(rec * (1.0 + settings.scale_up_headroom) - 1e-9)))


def burst_onset(pending: int, last_pending: int, settings: ControllerSettings) -> bool:
    """A queue out of nowhere: above ``queue_up`` now, below ``queue_down`` at the last evaluation."""
    return pending > settings.queue_up and last_pending < settings.queue_down


def remember_bursts(
    bursts: tuple[float, ...], now: float, onset: bool, settings: ControllerSettings
) -> tuple[float, ...]:
    """The last three onsets within three long windows: enough to see a period, short enough to forget."""
    kept = bursts + ((now,) if onset else ())
    return tuple(t for t in kept if t > now - 3 * settings.scale_down_window_s)[-3:]


def bursts_recur(bursts: tuple[float, ...], now: float, settings: ControllerSettings) -> bool:
    """The last two onsets came within the long window of each other and the next one is not overdue
    (half a period late): shrinking now would likely be reversed by the next burst."""
    if len(bursts) < 2:
        return False
    period = bursts[-1] - bursts[-2]
    return period <= settings.scale_down_window_s and now <= bursts[-1] + 1.5 * period


def drained_since(pending: int, since: float | None, now: float, settings: ControllerSettings) -> float | None:
    """Since when the queue has stayed below ``queue_down`` (None while it is not)."""
    if pending >= settings.queue_down:
        return None
    return now if since is None else since


def scale_down_window(
    now: float, since: float | None, bursts: tuple[float, ...], settings: ControllerSettings
) -> tuple[float, bool]:
    """(window seconds, released): the short window once the queue has stayed empty for it and bursts do
    not recur; otherwise the long one. Slot-seconds held idle after a lone burst are the price of the long
    window; a periodic load pays for the short one with a scale-up (and its queueing) every period."""
    short = min(settings.release_window_s, settings.scale_down_window_s)  # a config may shorten the long one
    drained = since is not None and now - since >= short
    if drained and not bursts_recur(bursts, now, settings):
        return short, True
    return settings.scale_down_window_s, False


def release_floor(model: Model, settings: ControllerSettings, arrivals: float | None = None, busy: int = 0) -> int:
    """The least a released fleet keeps: arrivals x solve time, or the slots busy now if more, plus the scale-up
    headroom, at the higher of the rate window's arrival rate and the arrivals since the last evaluation.

    The queue is empty but tasks still arrive; below that the queue builds again and the fleet scales
    back up (a flap). The keep-up term's ``keep_up_fraction`` is for a rising load, not for a release. The rate
    window lags a burst by half its length: a fleet sized to a burst's rate emptied the queue 30 s into it, and
    the window's rate (2.9/s of 4/s) released it to 56 slots mid-burst, where 66 hold it (make demo: P95 48.7 s,
    live/sim 1.6). The solve time lags too where methods differ: early in a burst the solves completed are the
    short ones (short/mixed-methods: 12.5 s read, 68 slots busy, released to 58; P95 61.7 s, 57.4 keeping the
    busy ones).
    """
    rate = max(model.arrival_rate, arrivals or 0.0)
    held = max(rate * model.solve_s, float(busy))
    return math.ceil(held * (1.0 + settings.scale_up_headroom) - 1e-9)


def worth_releasing(current: int, target: int, settings: ControllerSettings) -> bool:
    """A release frees at least ``release_min_slots``: a few idle slots cost little over what is left of the
    long window and absorb the next small rise; giving them back early risks a flap for little."""
    return current - target >= settings.release_min_slots


def scale_down_target(
    window: tuple[tuple[float, int], ...],
    current: int,
    ceiling: int,
    since: float | None,
    bursts: tuple[float, ...],
    model: Model,
    settings: ControllerSettings,
    arrivals: float | None = None,
    busy: int = 0,
) -> tuple[int, bool]:
    """(slots the window allows, released): the highest recommendation over the short window, kept at
    least at :func:`release_floor`, when :func:`scale_down_window` releases and that is
    :func:`worth_releasing`; otherwise the highest over the long window. ``window`` ends with now."""
    now = window[-1][0]
    window_s, released = scale_down_window(now, since, bursts, settings)
    if released:
        short_max = max(v for t, v in window if t >= now - window_s)  # now itself at least (a window of 0 s)
        target = min(ceiling, max(short_max, release_floor(model, settings, arrivals, busy)))
        if worth_releasing(current, target, settings):
            return target, True
    return max(v for _, v in window), False


def unused_headroom(current: int, window_max: int, held_s: float, settings: ControllerSettings) -> bool:
    """The fleet kept its size for a whole long window and no recommendation reached it: the headroom
    added on the way up (for the next small rise) was never used, so it is idle cost."""
    return held_s >= settings.scale_down_window_s and window_max < current


def scale_down_step(
    current: int,
    window_max: int,
    floor: int,
    signals: Signals,
    guards: Guards,
    settings: ControllerSettings,
    held_s: float = 0.0,
) -> tuple[int, str, str]:
    """(slots, rule, reason) for a fleet the window says is too big: shrink only when nothing holds it."""
    s, util, pending, p95 = settings, signals.utilization, signals.pending or 0, signals.p95_latency_s
    idle = (
        pending < s.queue_down
        and util is not None
        and util * 100 < s.utilization_down_pct
        and (p95 is None or p95 < s.p95_down_s)
    )
    limit = current if idle else math.floor(current * (1.0 - s.scale_down_hysteresis))
    stale = signals.stale_sources(s.stale_after_s)
    if stale:
        return current, "guard:stale-signals", f"stale or missing {', '.join(stale)}: scale-up only"
    if guards.hold_triggers:
        return current, "hold:triggers", f"model says {window_max} but {', '.join(guards.hold_triggers)}"
    if pending >= s.queue_down:
        return current, "hold:queue", f"queue {pending} >= {s.queue_down}: not scaling down"
    if window_max > limit and window_max > floor:
        if unused_headroom(current, window_max, held_s, s):
            return window_max, "scale-down:trim", f"no recommendation reached {current} in {held_s:.0f}s"
        return current, "hold:hysteresis", f"window max {window_max} within {s.scale_down_hysteresis:.0%} of {current}"
    rule = "scale-down:idle" if idle else "scale-down"
    return max(floor, window_max), rule, f"highest recommendation over {s.scale_down_window_s:.0f}s is {window_max}"


def describe(model: Model, rec: int, pending: int, settings: ControllerSettings) -> str:
    """The model's arithmetic in one phrase, for the decision log."""
    text = (
        f"model max(keep-up {model.base:.1f} = {settings.keep_up_fraction:g} x {model.arrival_rate:.2f}/s x "
        f"{model.solve_s:.1f}s, backlog {model.drain:.1f} = {pending} pending"
        + (f" + {model.started} started since" if model.started else "")
        + f" in {model.drain_s:.0f}s)"
        f" -> {rec}"
    )
    if model.correction > 1.0:
        text += f"; P95 over target: backlog budget / {model.correction:.2f}"
    return text


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
        return starting_at(s.min_slots, s)

    def decide(self, signals: Signals, state: PolicyState) -> tuple[Decision, PolicyState]:
        """One evaluation: bounds, model, guard rails, then a scale-up or a scale-down step."""
        s, now = self.settings, signals.now
        ev = _evaluate(signals, state, s)
        guards = ev.guards
        desired, rule, reason = _choose_step(ev, signals, state, s)
        remembered = replace(
            state,
            recommendations=ev.window,
            last_eval=now,
            stuck_since=guards.stuck_since,
            frozen=guards.frozen,
            last_pending=ev.pending,
            last_busy=held_tasks(signals),
            bursts=ev.bursts,
            drained_since=ev.since,
            last_arrived=signals.arrived_count,
            last_epoch=signals.count_epoch,
        )
        if not ev.second:  # a second look leaves the run of growth as the full evaluations measured it
            remembered = replace(remembered, queue_growth=ev.growth, growing_since=ev.growing_since, last_full_eval=now)
        return decided(
            NAME,
            s,
            signals,
            state,
            desired,
            rule,
            reason,
            recommendation=ev.rec,
            remembered=remembered,
            ceiling=ev.ceiling,
            alerts=guards.alerts,
            replace_hosts=guards.replace_hosts,
            notes=_notes(ev, rule),
        )


@dataclass(frozen=True)
class _Evaluation:
    """What one evaluation computed before it picks a step (the inputs of every rule)."""

    rec: int
    ceiling: int
    ceiling_why: str
    model: Model
    model_txt: str
    pending: int
    growth: float
    growing_since: float | None
    plan_bound: bool
    rising_level: int | None
    window: tuple[tuple[float, int], ...]
    window_max: int
    released: bool
    guards: Guards
    stale: tuple[str, ...]
    bursts: tuple[float, ...]
    since: float | None
    second: bool  # a second look (:func:`second_look`): sizing only, the growth as the last evaluation measured it


def _evaluate(signals: Signals, state: PolicyState, s: ControllerSettings) -> _Evaluation:
    """The bounds, the model's recommendation, the guard rails and the scale-down window of one evaluation."""
    now = signals.now
    ceiling, ceiling_why = ceiling_for(signals, s)
    pending = signals.pending if signals.pending is not None else 0
    bursts = remember_bursts(state.bursts, now, burst_onset(pending, state.last_pending, s), s)
    second = second_look(signals, state, s)
    started = started_since_last(signals, state, s)
    model = queue_model(signals, s, periodic=bursts_recur(bursts, now, s), started=started)
    rec = max(s.min_slots, min(ceiling, model.slots))
    if second:
        growth, growing_since, rising = state.queue_growth, state.growing_since, False
    else:
        growth = queue_growth(pending + held_tasks(signals), state.last_pending + state.last_busy, now, state.last_eval)
        growing = grows_with_every_slot_busy(signals, growth)
        growing_since = (now if state.growing_since is None else state.growing_since) if growing else None
        rising = sustained(growing_since, now, s)
    arrivals = arrivals_since_last(signals, state)
    plan_bound = rising and outgrows_plan(signals, growth, state.queue_growth, model.solve_s, ceiling, s, arrivals)
    level: int | None = None  # slots that hold a rising burst level, when that set the recommendation
    if plan_bound:
        rec = ceiling
    elif rising and rises_past_noise(growth, state.queue_growth, model.solve_s, s):
        holding = min(
            ceiling,
            math.ceil(holding_level(signals, growth, state.queue_growth, rising_solve_s(model), arrivals) - 1e-9),
        )
        if holding > rec:
            rec = level = holding
    window = tuple((t, v) for t, v in state.recommendations if t > now - s.scale_down_window_s)
    window += ((now, rec),)
    since = drained_since(pending, state.drained_since, now, s)
    window_max, released = scale_down_target(
        window, state.desired, ceiling, since, bursts, model, s, arrivals, held_tasks(signals)
    )
    return _Evaluation(
        rec=rec,
        ceiling=ceiling,
        ceiling_why=ceiling_why,
        model=model,
        model_txt=describe(model, rec, pending, s),
        pending=pending,
        growth=growth,
        growing_since=growing_since,
        plan_bound=plan_bound,
        rising_level=level,
        window=window,
        window_max=window_max,
        released=released,
        guards=guard_rails(signals, state, s),
        stale=tuple(signals.stale_sources(s.stale_after_s)),
        bursts=bursts,
        since=since,
        second=second,
    )


def _choose_step(ev: _Evaluation, signals: Signals, state: PolicyState, s: ControllerSettings) -> tuple[int, str, str]:
    """The rule that fires, first match wins: clamps, scale-up, a hold for recurring bursts, scale-down."""
    now, current, floor, ceiling = signals.now, state.desired, s.min_slots, ev.ceiling
    desired, rule, reason = current, "hold", ""
    if current > ceiling and not (ev.stale and ev.ceiling_why == "balance"):
        desired, rule = max(floor, ceiling), f"clamp:{ev.ceiling_why}"
        reason = f"ceiling {ceiling} ({ev.ceiling_why}) below current {current}"
    elif current < floor:
        desired, rule, reason = floor, "clamp:min", f"below the minimum {floor}"
    elif wants_scale_up(ev.rec, current, floor, ceiling, s):
        desired, rule, reason = _scale_up(ev, current, s)
    elif ev.window_max < current and bursts_recur(ev.bursts, now, s):
        period = ev.bursts[-1] - ev.bursts[-2]
        rule, reason = "hold:bursts-recur", f"bursts every {period:.0f}s, the next due by {ev.bursts[-1] + period:.0f}"
    elif ev.window_max < current:
        held_s = now - (state.last_change if state.last_change is not None else now)
        desired, rule, reason = scale_down_step(current, ev.window_max, floor, signals, ev.guards, s, held_s)
        if desired != current:
            if ev.released:
                rule, reason = f"{rule}:released", f"queue empty for {now - (ev.since or now):.0f}s, {reason}"
            reason = f"{reason}; {ev.model_txt}"
    return desired, rule, reason or ev.model_txt


def _scale_up(ev: _Evaluation, current: int, s: ControllerSettings) -> tuple[int, str, str]:
    """A scale-up step unless a guard rail blocks it (then that guard's rule and reason, the fleet held)."""
    if ev.guards.up_blocks:
        rule, reason = ev.guards.up_blocks[0]
        return current, rule, reason
    triggers = ev.guards.triggers
    reason = ev.model_txt + (f"; triggers: {', '.join(triggers)}" if triggers else "")
    if ev.plan_bound:
        reason += f"; plan-bound: work growing {ev.growth:.1f}/s with every slot busy, to the ceiling"
    elif ev.rising_level is not None:
        reason += f"; rising: work growing {ev.growth:.1f}/s with every slot busy, {ev.rising_level} hold it level"
        if ev.model.hold > 1.0:
            reason += f" (slot hold {ev.model.hold:.2f}x the solves' mean)"
    return scale_up_step(ev.rec, s.min_slots, ev.ceiling, s), "scale-up", reason


def _notes(ev: _Evaluation, rule: str) -> tuple[str, ...]:
    """The guard rails' notes, plus a blocked scale-up the fleet held on and a scale-down stale signals withheld."""
    notes = list(ev.guards.notes)
    if ev.guards.up_blocks and rule == "hold":
        notes.append(ev.guards.up_blocks[0][1])
    if ev.stale and rule != "guard:stale-signals":
        notes.append(f"stale or missing {', '.join(ev.stale)}: scale-down withheld")
    return tuple(notes)
