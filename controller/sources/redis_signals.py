"""The Redis signal source: one Redis snapshot per evaluation, turned into :class:`Signals` and a worker list.

Reads the pending list, every worker's heartbeat and in-flight list and the completion counter (one
transaction, through the fleet reader :func:`captcha_fleet.contract.fleet_snapshot.read_snapshot`), and the
finished-task stream (incrementally, from the last entry seen). Rates and percentiles use the same sliding-window
estimators as the simulator (:class:`~.windows.SignalWindows`). The services the controller steers are counted in
by :meth:`RedisSignalSource.steered` (the targets it wrote for the ones still starting).

All of it is untrusted input (DESIGN.md, trust boundaries): values go through the validating reader
:mod:`captcha_fleet.controller.sources.untrusted` (skipped and counted, never raised), and only the workers the caller
names as its own (``known``, set before each read) count as capacity; the others are reported as unknown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import redis

from captcha_fleet.contract.fleet_snapshot import LiveWorker, read_snapshot
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Event, RecordError
from captcha_fleet.contract.windows import CounterWindow

from ..placement import ServiceView
from ..settings import ControllerSettings
from ..signals import (
    ERROR_CLASSES,
    SOURCE_BALANCE,
    SOURCE_EVENTS,
    SOURCE_HEARTBEATS,
    SOURCE_QUEUE,
    Signals,
)
from .balance import BalanceTracker
from .base import Snapshot, running_services, starting_ids
from .untrusted import (
    EVENT,
    HEARTBEAT,
    AnswerCounters,
    CompletedCounter,
    Rejections,
    finished_task,
    heartbeat_problem,
)
from .windows import SignalWindows

log = logging.getLogger(__name__)
EVENTS_BATCH = 10_000


@dataclass(eq=False, repr=False)
class RedisSignalSource:
    """Keeps the windows between evaluations; ``read()`` takes one snapshot."""

    client: redis.Redis
    keys: Keys
    settings: ControllerSettings
    balance: BalanceTracker | None = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.windows = SignalWindows(self.settings)
        self.answers: dict[tuple[str, str], CounterWindow] = {}  # (host, class|"ok") -> window
        self.answer_totals: dict[tuple[str, str], int] = {}  # (host, class|"ok") -> plausible answers so far
        self.rejections = Rejections()
        self.counters = AnswerCounters(self.rejections)
        self.completed = CompletedCounter(self.rejections)
        self._last_event_id: str | None = None
        # The workers that count (the controller sets it to the services it manages before each read); None: all.
        self.known: Callable[[str], bool] | None = None

    # --- pieces ------------------------------------------------------------------------------------
    def _read_events(self, now: float) -> None:
        if self._last_event_id is None:
            start = f"{int((now - self.settings.latency_window_s) * 1000)}-0"
        else:
            start = f"({self._last_event_id}"
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            self.client.xrange(self.keys.events, min=start, max="+", count=EVENTS_BATCH),
        )
        for entry_id, fields in entries:
            self._last_event_id = entry_id.decode()
            try:
                event = Event.from_fields(fields)
            except RecordError as exc:
                self.rejections.reject(EVENT, "malformed", self._last_event_id, exc)
                continue
            task = finished_task(event, _entry_ms(self._last_event_id), now, self.rejections)
            if task is not None:
                self.windows.finished(task.ts, event.method, task.latency_s, task.solve_s)

    def _answers(self, now: float, workers: Mapping[str, LiveWorker]) -> tuple[dict[str, float], dict[str, float]]:
        """Error rates by class and by host: API errors / (API errors + results), over the rate window."""
        for worker_id, worker in workers.items():
            host = worker_id.partition(":")[0]  # the id the controller placed, not what the record claims
            for cls, value in self.counters.increments(worker_id, worker.beat, now).items():
                self.answer_totals[(host, cls)] = self.answer_totals.get((host, cls), 0) + value
        self.counters.forget_others(workers)
        deltas: dict[tuple[str, str], float] = {}
        for key, value in self.answer_totals.items():
            window = self.answers.setdefault(key, CounterWindow(self.settings.rate_window_s))
            window.add(now, value)
            deltas[key] = max(0.0, (window.rate() or 0.0) * self.settings.rate_window_s)
        hosts = {h for h, _ in self.answer_totals}
        by_class: dict[str, float] = {}
        by_host: dict[str, float] = {}
        all_answers = sum(deltas.values())
        for cls in ERROR_CLASSES:
            errors = sum(v for (h, c), v in deltas.items() if c == cls)
            if all_answers > 0:
                by_class[cls] = errors / all_answers
        for host in hosts:
            answers = sum(v for (h, _), v in deltas.items() if h == host)
            errors = sum(v for (h, c), v in deltas.items() if h == host and c != "ok")
            if answers > 0:
                by_host[host] = errors / answers
        return by_class, by_host

    # --- the snapshot ------------------------------------------------------------------------------
    def read(self) -> Snapshot:
        """One snapshot, counting only the workers ``self.known`` names; raises ``redis.RedisError`` when Redis
        cannot be read at all, never on a value in it."""
        now = self.clock()
        completed_key = self.keys.completed_total
        fleet = read_snapshot(self.client, self.keys, extra=lambda pipe: pipe.get(completed_key), known=self.known)
        pending, in_flight = fleet.pending, fleet.in_flight
        workers = self._plausible(fleet.workers, now)
        completed, restart = self.completed.read(fleet.extra[0], now)
        if restart:  # the counter went back (reset) or jumped: a new baseline, not a negative or absurd rate
            self.windows.restart_counts()
        ages: dict[str, float] = {SOURCE_QUEUE: 0.0}
        try:
            self._read_events(now)
            ages[SOURCE_EVENTS] = 0.0
        except redis.RedisError as exc:
            log.warning("could not read the events stream: %s", exc)
        if workers:
            newest = max(w.beat.ts if w.beat.ts is not None else now for w in workers.values())
            ages[SOURCE_HEARTBEATS] = max(0.0, now - newest)
        if completed is not None:
            self.windows.count(now, completed + pending + in_flight, completed)
        by_class, by_host = self._answers(now, workers)
        reading = self.balance.read() if self.balance is not None else None
        balance_age = reading.age(now) if reading is not None else None
        if balance_age is not None:
            ages[SOURCE_BALANCE] = balance_age
        serving = [w for w in workers.values() if w.state == "running"]
        # A worker whose limit was just lowered below what it holds is fully busy, not more: its extra solves end
        # and are not replaced (utilization stays within 0..1 for the policy).
        busy = sum(min(w.busy, w.beat.slots) for w in serving)
        signals = self.windows.signals(
            now,
            pending=pending,
            # the lists of the workers it manages: the policy counts them as work held (queue_model.held_tasks), and
            # a list under a forged id would otherwise hold the fleet at its ceiling
            in_flight=sum(w.in_flight for w in workers.values()),
            slots=sum(w.beat.slots for w in serving),
            busy=busy,
            services=len(serving),
            error_rates=by_class,
            host_error_rates=by_host,
            balance=reading.balance if reading is not None else None,
            burn_rate=reading.burn_rate if reading is not None else None,
            ages=ages,
        )
        return Snapshot(
            signals=signals,
            workers=workers,
            unknown=fleet.unknown,
            implausible=tuple(w for w in fleet.workers if w not in workers),
            rejected=self.rejections.take(),
        )

    def steered(self, signals: Signals, views: Sequence[ServiceView]) -> Signals:
        """``signals`` with the running services and the slots of the starting ones (the targets written for them
        before they start: their first claims obey them)."""
        starting = starting_ids(views)
        starting_slots = 0
        if starting:
            raw = cast("list[bytes | None]", self.client.mget([self.keys.target(w) for w in starting]))
            starting_slots = sum(int(v) for v in raw if v is not None)
        return replace(signals, starting_slots=starting_slots, services=running_services(views))

    def _plausible(self, workers: Mapping[str, LiveWorker], now: float) -> dict[str, LiveWorker]:
        """The workers whose heartbeat is plausible against the target the controller wrote and the plan."""
        if not workers:
            return {}
        ids = list(workers)
        written = cast("list[bytes | None]", self.client.mget([self.keys.target(w) for w in ids]))
        out: dict[str, LiveWorker] = {}
        for worker_id, raw in zip(ids, written, strict=True):
            bound = max(_target(raw), self.settings.slot_ceiling)
            problem = heartbeat_problem(workers[worker_id].beat, bound, now)
            if problem is None:
                out[worker_id] = workers[worker_id]
            else:
                self.rejections.reject(HEARTBEAT, problem, worker_id, _beat_summary(workers[worker_id]))
        return out


def _entry_ms(entry_id: str) -> int:
    """A stream entry id's milliseconds part."""
    return int(entry_id.split("-", maxsplit=1)[0])


def _target(raw: bytes | None) -> int:
    """A target key the controller wrote (0 when absent or unreadable)."""
    try:
        return max(0, int(raw)) if raw is not None else 0
    except ValueError:
        return 0


def _beat_summary(worker: LiveWorker) -> dict[str, Any]:
    """What a log line says of a skipped heartbeat (short, whatever the record holds)."""
    b = worker.beat
    return {"slots": b.slots, "busy": b.busy, "target": b.target, "process": b.process[:40], "ts": b.ts}
