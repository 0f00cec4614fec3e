"""The control loop: signals -> policy -> placement -> thread targets (fast path) and actuator (slow path).

One ``step()`` per evaluation interval, only while this process holds the leader lock, and one at once when
the queue jumps between them (an LLEN every ``quick_check_s``:
:func:`captcha_fleet.controller.strategies.base.queue_jumped`), and at the two checks after an evaluation that saw a
jump (the rest of a dump that was still arriving, then whether the work still grows). Everything that must
survive a restart or a failover (the policy state, the services it manages, the drains in progress) is saved to
Redis after every step; a new leader loads it and adopts the running services.

It acts only on the services it manages (DESIGN.md, trust boundaries): with an actuator, the ones in its roster
and the ones its actuator runs; with none (targets only), the worker ids ``controller.worker_ids`` allows. Any
other heartbeat is *unknown*: recorded in the decision log and the metrics, never counted as capacity, given a
target or drained in place of a real service.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.results_retention import expire_results

from .actuators.base import (
    ActuatorState,
    AdoptingActuator,
    DrainAwareActuator,
    InventoryAwareActuator,
    LeasedActuator,
    ServiceActuator,
    StandDownActuator,
    VerifyingActuator,
)
from .hosts.placement import place_new
from .hosts.state import worker_id_for
from .leader import LeaderLock, LeadershipLostError
from .metrics import ControllerMetrics
from .placement import Placement, ServiceView, place
from .restart_watch import RestartWatch
from .settings import ControllerSettings
from .sources.base import SignalSource, Snapshot
from .store import ControllerState, StateStore
from .strategies.base import LOOKS_AFTER_A_JUMP, Decision, Policy, queue_jumped

log = logging.getLogger(__name__)
UNKNOWN_LISTED = 20  # unknown worker ids named in a decision record (all are counted): a flood stays small


@dataclass(eq=False, repr=False)
class Controller:
    """Holds the lock, runs ``step()`` every interval; see the module docstring."""

    client: redis.Redis
    keys: Keys
    settings: ControllerSettings
    policy: Policy
    source: SignalSource
    actuator: ServiceActuator | None
    lock: LeaderLock
    clock: Callable[[], float] = time.time
    metrics: ControllerMetrics | None = None

    def __post_init__(self) -> None:
        self.store = StateStore(self.client, self.keys, self.settings.decisions_max)
        self.state: ControllerState | None = None
        self.leading = False
        self.said_standby = False
        self.said_no_retention = False
        self.last_decision: Decision | None = None
        self.pending_at_step = 0
        self.looks_again = 0  # checks still to evaluate after one that saw a jump (a second and a third look)
        self.missing_since: dict[str, float] = {}  # managed worker id -> first step that saw no heartbeat
        # A crash loop: restarts within a dozen intervals (at least two minutes).
        self.restarts = RestartWatch(window_s=max(120.0, 12 * self.settings.interval_s))
        self.lost_why: dict[str, str] = {}  # the last step's lost services and why
        self.drained_since: dict[str, float] = {}  # host an operator drains -> first step that saw it
        self.silent_hosts: set[str] = set()  # hosts whose service was given up for a lapsed heartbeat

    # --- leadership ----------------------------------------------------------------------------------
    def hold_lock(self) -> bool:
        """Acquire or renew the lock; on becoming leader, load the state and adopt running services."""
        asked = time.monotonic()  # the lease runs from before the request: the reply may come late
        try:
            leading = self.lock.hold()
        except redis.RedisError as exc:
            log.warning("leader lock: %s", exc)
            leading = False
        if leading and isinstance(self.actuator, LeasedActuator):
            # A leader cut off from Redis cannot learn it lost the lock; its actuator stops when the lease runs out.
            self.actuator.hold_lease(asked + self.settings.leader_ttl_s)
        if leading and not self.leading:
            log.info("leader now: %s", self.lock.token)
            self.state = self.store.load(self.policy.initial_state())
            self._adopt()
            if isinstance(self.actuator, VerifyingActuator):
                # a dead leader's last run may have been cut off: what runs on each host is asserted once
                self.actuator.verify_all()
        elif not leading and self.leading:
            log.warning("lost the leader lock; standing by")
            self.state = None
            if isinstance(self.actuator, StandDownActuator):
                self.actuator.stand_down()  # the new leader acts now, not our stale desired state
        elif not leading and not self.said_standby:
            log.info("standing by: %s leads", self.lock.current())
            self.said_standby = True
        self.leading = leading
        if self.metrics is not None:
            self.metrics.leader.set(1 if leading else 0)
        return leading

    def _adopt(self) -> None:
        """After a failover the services run on, children of the dead leader: take them over by pid."""
        if self.state is None or not isinstance(self.actuator, AdoptingActuator):
            return
        try:
            snapshot = self.source.read()
        except redis.RedisError:
            return
        for host, instances in self.state.managed.items():
            for instance in instances:
                worker = snapshot.workers.get(worker_id_for(host, instance))
                if worker is not None and worker.pid is not None:
                    self.actuator.adopt(instance, worker.pid)

    def run(self, stop: threading.Event) -> None:
        """Evaluate every interval while leading; renew the lock more often than its TTL."""
        next_step = 0.0
        tick = min(self.policy.interval_s, self.settings.leader_ttl_s / 3)
        quick = self.settings.quick_check_s
        if quick > 0:
            tick = min(tick, quick)
        try:
            while not stop.is_set():
                if self.hold_lock() and (time.monotonic() >= next_step or self._queue_news()):
                    next_step = time.monotonic() + self.policy.interval_s
                    try:
                        self.step()
                    except redis.RedisError as exc:
                        log.warning("evaluation skipped: Redis: %s", exc)
                    except LeadershipLostError as exc:
                        log.warning("evaluation dropped: %s; standing by", exc)
                        self.leading, self.state = False, None
                stop.wait(max(0.05, min(tick, next_step - time.monotonic()) if self.leading else tick))
        finally:
            if self.leading:
                with contextlib.suppress(redis.RedisError, LeadershipLostError):
                    if self.state is not None:
                        with self.lock.fenced() as pipe:
                            self.store.save(self.state, pipe)
                    self.lock.release()  # step down now: the standby need not wait for the TTL
            if self.actuator is not None:
                self.actuator.close()

    def _queue_news(self) -> bool:
        """Between evaluations: has the queue jumped past what free slots absorb (one LLEN), or is this one of the
        two checks after an evaluation that saw a jump?

        An evaluation, quick or on the tick, often falls while a dump is still arriving. Sized there and never
        again, a periodic load's fleet held the size of the part that had come, and its P95 was a draw
        (builtin:periodic live/sim 0.94-1.31 between runs of one build). One check later the policy sees the rest,
        and the slots that took part of it since (:func:`~captcha_fleet.controller.strategies.queue_model.
        started_since_last`); that second look only sizes the fleet
        (:func:`~captcha_fleet.controller.strategies.queue_model.second_look`). Two checks later a full evaluation
        sees whether the work still grows, so a rise is confirmed then and not when the queue next doubles: at
        2,000 threads the ceiling came 31-37 trace seconds after the first scale-up, where it took 38-42.

        Tried before: waiting a check before the first evaluation (every scale-up a check late: the 2,000-thread
        plan-bound burst's P95 64.7 and 64.9 s against a 63.9 s line), and a second look that measured the growth
        a second after a scale-up, while the new slots were idle (a rise read as over: flash-crowd/sandbox live
        P95 50.8 s against the simulator's 34.3).
        """
        if self.settings.quick_check_s <= 0:
            return False
        if self.looks_again > 0:
            self.looks_again -= 1
            return True
        try:
            pending = int(self.client.llen(self.keys.tasks))
        except redis.RedisError:
            return False
        return queue_jumped(pending, self.pending_at_step, self.settings)

    # --- one evaluation ------------------------------------------------------------------------------
    def step(self) -> Decision:
        """Read, decide, place, act, record."""
        assert self.state is not None, "step() needs the leader lock"
        st = self.state
        if isinstance(self.actuator, DrainAwareActuator):
            self.actuator.refresh_draining(self.client, self.keys)  # rolling updates mark hosts in Redis
        act = self.actuator.observe() if self.actuator is not None else None
        roster = self.actuator.take_inventory_changes() if isinstance(self.actuator, InventoryAwareActuator) else None
        self.source.known = self._known(st, act)
        snapshot = self.source.read()
        now = snapshot.signals.now
        self._forget_gone(st, snapshot, act)
        lost = self._replace_lost(st, snapshot, act, now)
        views, held = self._serving_views(st, snapshot, act)
        signals = self.source.steered(snapshot.signals, views)

        before, self.pending_at_step = self.pending_at_step, signals.pending or 0
        if queue_jumped(self.pending_at_step, before, self.settings):
            self.looks_again = LOOKS_AFTER_A_JUMP  # the rest of a dump, then a rise confirmed
        decision, st.policy = self.policy.decide(signals, st.policy)
        if self.actuator is None:  # targets only: the services are someone else's business
            desired_services = sum(1 for v in views if v.status != "draining")
        else:
            desired_services = min(decision.desired_services, max(0, self.settings.max_services - held))
        placement = place(
            decision.desired_slots,
            desired_services,
            self.settings.slots_per_service,
            views,
            replace_hosts=set(decision.replace_hosts) | retiring_hosts(act),
        )
        # Fencing: every write below commits only while the lock holds our token, and the actuator acts
        # only right after the lock was renewed, so a leader paused mid-step cannot act after a takeover.
        started = self._apply(st, placement, act, now)
        stopped = self._finish_drains(st, snapshot, now)
        if self.actuator is not None:
            self.lock.ensure()
            self.actuator.apply({h: frozenset(i) for h, i in st.managed.items()})
        extra: dict[str, Any] = {
            "targets": placement.targets,
            "started": started,
            "draining": sorted(st.draining),
            "stopped": stopped,
        }
        if lost:
            extra.update(lost=lost, lost_why=dict(self.lost_why))
        if roster:
            extra["inventory"] = roster.to_dict()
        extra.update(untrusted_record(snapshot))
        with self.lock.fenced() as pipe:
            if self.actuator is not None and stopped:  # SIGTERM is on its way; the target key has no reader
                pipe.delete(*[self.keys.target(w) for w in stopped])
            self.store.save(st, pipe)
            self.store.record(decision, self.lock.token, extra, pipe)
        self._expire_results()
        if act is not None:
            self._publish_hosts(act, now)
        if self.metrics is not None:
            self.metrics.observe(decision)
            self.metrics.observe_untrusted(len(snapshot.unknown), snapshot.rejected)
        self.last_decision = decision
        return decision

    def _expire_results(self) -> None:
        """Result retention, once a step: under the per-role ACL users only the controller may delete a result."""
        try:
            deleted = expire_results(self.client, self.keys, time.time())  # the workers' wall-clock expiry scores
        except redis.exceptions.NoPermissionError as exc:
            if not self.said_no_retention:
                log.warning("result retention refused to the controller's Redis user (ACL out of date?): %s", exc)
                self.said_no_retention = True
            return
        except redis.RedisError as exc:
            log.warning("result retention skipped: Redis: %s", exc)
            return
        if deleted:
            log.debug("result retention: %d result(s) past their retention deleted", deleted)

    def _publish_hosts(self, act: ActuatorState, now: float) -> None:
        """What the actuator knows of each host, for ``captcha-fleet status`` (replaced every step)."""
        fields = {
            name: json.dumps(
                {
                    "reachable": hs.reachable,
                    "draining": hs.draining,
                    "running": len(hs.running),
                    "pending": len(hs.pending),
                    "max_services": hs.max_services,
                    "last_error": hs.last_error,
                    "retiring": hs.retiring,
                    "ts": round(now, 3),
                },
                sort_keys=True,
            )
            for name, hs in act.hosts.items()
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.hosts)
        if fields:
            pipe.hset(self.keys.hosts, mapping=fields)  # type: ignore[arg-type]
        pipe.execute()

    def _forget_gone(self, st: ControllerState, snapshot: Snapshot, act: ActuatorState | None) -> None:
        """Managed services with neither a process nor a heartbeat are gone: forget them (and replace)."""
        if act is None:
            return
        for host, instances in list(st.managed.items()):
            hs = act.hosts.get(host)
            if hs is None:
                continue
            alive = hs.running | hs.pending
            for instance in list(instances):
                wid = worker_id_for(host, instance)
                if instance in alive or wid in snapshot.workers:
                    continue
                if wid not in st.draining:
                    log.warning("service %s is gone (died?); its tasks return via the reaper", wid)
                instances.remove(instance)
                st.draining.pop(wid, None)
                st.started.pop(wid, None)
                with self.lock.fenced() as pipe:
                    pipe.delete(self.keys.target(wid))
            if not instances:
                del st.managed[host]

    def _replace_lost(
        self, st: ControllerState, snapshot: Snapshot, act: ActuatorState | None, now: float
    ) -> list[str]:
        """Managed services the actuator believes up but that send no heartbeat are lost: forget them, so placement
        starts others and the actuator stops what is left of them (an out-of-band ``supervisorctl stop``, a
        crash loop or a hung process otherwise counted as "starting" for ever and held ``min_services`` unmet).

        A service still being started (within ``start_timeout_s`` of its placement, or pending at the actuator)
        is not lost; nor one whose heartbeat went missing less than ``missing_after_s`` ago, unless the worker left
        a note that it stopped (its drain ended: ``supervisorctl stop``, a host's shutdown), seen one interval
        on (an out-of-band restart takes its note back). Hosts a roll or decommission drains are the operator's.
        """
        if act is None:
            return []
        lost: list[str] = []
        present = set(snapshot.workers) | set(snapshot.implausible)  # a bad heartbeat is still a live process
        managed = {worker_id_for(h, i) for h, instances in st.managed.items() for i in instances}
        for wid in list(self.missing_since):
            if wid in present or wid not in managed:
                self.missing_since.pop(wid, None)
        held = operator_drained_hosts(act)
        stopped = self._stop_notes([w for w in managed if w not in present and w.partition(":")[0] not in held])
        self.restarts.observe(snapshot.workers, managed, now)
        beating_hosts = {w.partition(":")[0] for w in managed & set(snapshot.workers)}
        self.silent_hosts -= {w.partition(":")[0] for w in snapshot.workers}  # beating again: trusted again
        self.lost_why = {}
        for host, instances in list(st.managed.items()):
            hs = act.hosts.get(host)
            for instance in list(instances):
                wid = worker_id_for(host, instance)
                if wid in st.draining or (hs is not None and instance in hs.pending):
                    continue
                peers_beat = bool(beating_hosts - {host})
                why = self._why_lost(wid, st, (wid in present, host in held, peers_beat), stopped.get(wid), now)
                if why is None:
                    continue
                log.warning(
                    "service %s %s (%.0f s after its start): replacing it", wid, why, now - st.started.get(wid, now)
                )
                instances.remove(instance)
                st.started.pop(wid, None)
                self.missing_since.pop(wid, None)
                self.restarts.forget(wid)
                self.lost_why[wid] = why
                if why.startswith("sends no heartbeat"):
                    self.silent_hosts.add(host)
                lost.append(wid)
                with self.lock.fenced() as pipe:
                    pipe.delete(self.keys.target(wid))
            if not instances:
                del st.managed[host]
        return lost

    def _known(self, st: ControllerState, act: ActuatorState | None) -> Callable[[str], bool]:
        """Which worker ids are ours to count and steer (see the module docstring)."""
        if self.actuator is None:
            return allowed_worker_ids(self.settings.worker_ids)
        ids = {worker_id_for(h, i) for h, instances in st.managed.items() for i in instances}
        for name, hs in (act.hosts if act is not None else {}).items():
            ids.update(worker_id_for(name, i) for i in hs.running | hs.pending)
        return ids.__contains__

    def _why_lost(
        self, wid: str, st: ControllerState, seen: tuple[bool, bool, bool], stopped_at: float | None, now: float
    ) -> str | None:
        """Why a managed service counts as lost now (None: it does not): a crash loop, a clean stop outside the
        controller seen one interval on, or a heartbeat missing past the start timeout and the failover grace.

        ``seen``: (its heartbeat is there, an operator holds its host, services on other hosts beat). The grace is
        for a Redis failover, which silences every host alike: while other hosts' services beat, Redis is fine and
        a heartbeat past its TTL means the host is cut off or the process is gone.
        """
        present, held, peers_beat = seen
        if not held and self.restarts.looping(wid, now):
            return f"crash-looping: {self.restarts.restarts(wid, now)} restarts in {self.restarts.window_s:.0f} s"
        if present:
            return None
        started = st.started.get(wid, 0.0)
        if stopped_at is not None and stopped_at > started:
            noticed = now - stopped_at >= self.settings.interval_s
            return f"stopped outside the controller {now - stopped_at:.0f} s ago" if noticed else None
        if now - started < self.settings.start_timeout_s:
            return None
        since = self.missing_since.setdefault(wid, now)
        missing = peers_beat or now - since >= self.settings.missing_after_s
        return "sends no heartbeat: stopped outside the controller, crash-looping or hung" if missing else None

    def _stop_notes(self, worker_ids: list[str]) -> dict[str, float]:
        """When each of these workers said it stopped cleanly (``{prefix}:stopped:<id>``), for those that did."""
        if not worker_ids:
            return {}
        try:
            raw = self.client.mget([self.keys.stopped(w) for w in worker_ids])
        except redis.RedisError:
            return {}
        notes: dict[str, float] = {}
        for wid, value in zip(worker_ids, raw, strict=True):
            try:
                at = float(json.loads(value)["at"]) if value is not None else math.nan
            except (ValueError, TypeError, KeyError):
                continue  # untrusted: a note that is not one is no note
            if math.isfinite(at):
                notes[wid] = at
        return notes

    def _serving_views(
        self, st: ControllerState, snapshot: Snapshot, act: ActuatorState | None
    ) -> tuple[list[ServiceView], int]:
        """The services the controller steers, and how many more an operator holds.

        Services on a host a rolling update or decommission drains hold no slots until the operator is done: they
        count as no capacity, so the controller makes them up elsewhere, within max_services counted with them (a
        surge only where the ceiling leaves room). Only once the host has been drained for longer than a service
        takes to start: a site.yml restart drains each host for seconds, and a surge then is churn.
        """
        now = snapshot.signals.now
        drained = operator_drained_hosts(act)
        for host in [h for h in self.drained_since if h not in drained]:
            del self.drained_since[host]
        hold_after_s = max(self.settings.service_startup_s, 2 * self.settings.interval_s)
        held_hosts = {h for h in drained if now - self.drained_since.setdefault(h, now) >= hold_after_s}
        every_view = self._views(st, snapshot)
        views = [v for v in every_view if v.host not in held_hosts]
        return views, len(every_view) - len(views)

    def _views(self, st: ControllerState, snapshot: Snapshot) -> list[ServiceView]:
        views: list[ServiceView] = []
        seen: set[str] = set()
        for host, instances in st.managed.items():
            for instance in instances:
                wid = worker_id_for(host, instance)
                seen.add(wid)
                worker = snapshot.workers.get(wid)
                if wid in st.draining:
                    status = "draining"
                elif worker is None:
                    status = "starting"
                else:
                    status = "running"
                views.append(ServiceView(wid, status, worker.busy if worker else 0, host))  # type: ignore[arg-type]
        # Ours but not in the roster: run by the actuator outside it, or (targets only) allowed by worker_ids.
        for wid, worker in snapshot.workers.items():
            if wid in self.lost_why:  # given up this step (a crash loop still beats): its stop follows
                continue
            if wid not in seen and worker.state != "stopped":
                status = "draining" if wid in st.draining else "running"
                views.append(ServiceView(wid, status, worker.busy, worker.host))  # type: ignore[arg-type]
                seen.add(wid)
        if self.actuator is None:
            # Allowed, but its heartbeat is implausible (slots before its first target): it gets a target and
            # counts no capacity until it reports one that fits.
            for wid in snapshot.implausible:
                if wid not in seen:
                    views.append(ServiceView(wid, "starting", 0, wid.partition(":")[0]))
        return views

    def _apply(self, st: ControllerState, placement: Placement, act: ActuatorState | None, now: float) -> list[str]:
        """Write the thread targets (fast path) and allot new services to hosts (slow path follows)."""
        for wid in placement.drain:
            st.draining.setdefault(wid, now)
        for wid in placement.undrain:
            st.draining.pop(wid, None)
        targets = dict(placement.targets)
        started: list[str] = []
        if act is not None and placement.new_targets:
            placed = {name: len(instances) for name, instances in st.managed.items()}
            # A host whose service went silent is suspect until one of its services beats again: its replacement
            # goes elsewhere (game day: a cut host got its own service's replacement, and the run hung on it).
            hosts = {n: h for n, h in act.hosts.items() if n not in self.silent_hosts} or dict(act.hosts)
            new = place_new(len(placement.new_targets), hosts, placed, st.next_instance)
            if len(new) < len(placement.new_targets):
                log.warning("no host has room for another service")
            for (host, instance), target in zip(new, placement.new_targets, strict=False):
                st.next_instance = int(instance) + 1
                st.managed.setdefault(host, []).append(instance)
                wid = worker_id_for(host, instance)
                st.started[wid] = now
                targets[wid] = target  # written before it starts: its first claim already obeys it
                started.append(wid)
        if targets:
            with self.lock.fenced() as pipe:
                for wid, target in targets.items():
                    pipe.set(self.keys.target(wid), target)
        return started

    def _finish_drains(self, st: ControllerState, snapshot: Snapshot, now: float) -> list[str]:
        """Drained services (busy == 0, or past the drain timeout) leave the managed set: they get stopped."""
        stopped: list[str] = []
        managed_ids = {worker_id_for(h, i): (h, i) for h, insts in st.managed.items() for i in insts}
        for wid, since in list(st.draining.items()):
            worker = snapshot.workers.get(wid)
            idle = worker is None or (worker.busy == 0 and worker.in_flight == 0)
            if not idle and now - since < self.settings.drain_timeout_s:
                continue
            if wid in managed_ids:
                host, instance = managed_ids[wid]
                st.managed[host].remove(instance)
                if not st.managed[host]:
                    del st.managed[host]
                st.started.pop(wid, None)
                stopped.append(wid)
                del st.draining[wid]
            elif worker is None:
                del st.draining[wid]  # an unmanaged worker that went away by itself
        return stopped


def operator_drained_hosts(act: ActuatorState | None) -> set[str]:
    """Hosts a rolling update or decommission.yml has marked draining (``{prefix}:draining:<host>``)."""
    return {name for name, hs in (act.hosts if act is not None else {}).items() if hs.draining and not hs.retiring}


def retiring_hosts(act: ActuatorState | None) -> set[str]:
    """Hosts gone from the inventory: their services are drained (and made up for elsewhere), then stopped."""
    return {name for name, hs in (act.hosts if act is not None else {}).items() if hs.retiring}


def allowed_worker_ids(patterns: str) -> Callable[[str], bool]:
    """``controller.worker_ids`` as a predicate: comma-separated fnmatch patterns; none allows every id."""
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    if not wanted:
        return lambda _wid: True
    return lambda wid: any(fnmatch.fnmatchcase(wid, p) for p in wanted)


def untrusted_record(snapshot: Snapshot) -> dict[str, Any]:
    """What a decision record says of the input it did not trust (nothing when all was plausible and ours)."""
    out: dict[str, Any] = {}
    if snapshot.unknown:
        out["unknown_workers"] = sorted(snapshot.unknown)[:UNKNOWN_LISTED]
        out["unknown_workers_total"] = len(snapshot.unknown)
    if snapshot.rejected:
        out["untrusted_values"] = {f"{src}/{reason}": n for (src, reason), n in sorted(snapshot.rejected.items())}
    return out
