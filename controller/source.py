"""The signal source: one Redis snapshot per evaluation, turned into :class:`Signals` and a worker list.

Reads the pending list, every worker's heartbeat and in-flight list and the completion counter (one
transaction, through the fleet reader :func:`captcha_fleet.fleet_snapshot.read_snapshot`), and the finished-task
stream (incrementally, from the last entry seen). Rates and percentiles use the same sliding-window estimators
as the simulator (``captcha_fleet/windows.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import redis

from captcha_fleet.controller.balance import BalanceTracker
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.signals import (
    ERROR_CLASSES,
    SOURCE_BALANCE,
    SOURCE_EVENTS,
    SOURCE_HEARTBEATS,
    SOURCE_QUEUE,
    Signals,
)
from captcha_fleet.fleet_snapshot import LiveWorker, read_snapshot
from captcha_fleet.keys import Keys
from captcha_fleet.records import Event, RecordError
from captcha_fleet.windows import CounterWindow, FinishedTasksWindow

log = logging.getLogger(__name__)
EVENTS_BATCH = 10_000


@dataclass(frozen=True)
class Snapshot:
    """Signals plus the per-worker detail placement needs."""

    signals: Signals
    workers: Mapping[str, LiveWorker] = field(default_factory=dict)


class RedisSignalSource:
    """Keeps the windows between evaluations; ``read()`` takes one snapshot."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        settings: ControllerSettings,
        balance: BalanceTracker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.balance = balance
        self.clock = clock
        self.arrivals = CounterWindow(settings.rate_window_s)
        self.completions = CounterWindow(settings.rate_window_s)
        self.latency = FinishedTasksWindow(settings.latency_window_s)
        self.answers: dict[tuple[str, str], CounterWindow] = {}  # (host, class|"ok") -> window
        self._last_event_id: str | None = None

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
            except RecordError:
                continue
            latency = event.latency_s
            if latency is None:
                continue
            ts = event.ts if event.ts is not None else int(self._last_event_id.split("-")[0]) / 1000
            solve = event.api_s
            self.latency.add(ts, latency, min(solve, latency) if solve else latency)
        self.latency.trim(now)

    def _answers(self, now: float, workers: Mapping[str, LiveWorker]) -> tuple[dict[str, float], dict[str, float]]:
        """Error rates by class and by host: API errors / (API errors + results), over the rate window."""
        totals: dict[tuple[str, str], float] = {}
        for worker in workers.values():
            beat = worker.beat
            host = beat.host
            for cls in ERROR_CLASSES:
                value = float(beat.api_errors.get(cls, 0))
                totals[(host, cls)] = totals.get((host, cls), 0.0) + value
            totals[(host, "ok")] = totals.get((host, "ok"), 0.0) + beat.completed
        deltas: dict[tuple[str, str], float] = {}
        for key, value in totals.items():
            window = self.answers.setdefault(key, CounterWindow(self.settings.rate_window_s))
            window.add(now, value)
            deltas[key] = max(0.0, (window.rate() or 0.0) * self.settings.rate_window_s)
        hosts = {h for h, _ in totals}
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
        """One snapshot; raises ``redis.RedisError`` when Redis cannot be read at all."""
        now = self.clock()
        fleet = read_snapshot(self.client, self.keys, extra=lambda pipe: pipe.get(self.keys.completed_total))
        pending, in_flight, workers = fleet.pending, fleet.in_flight, fleet.workers
        completed = int(fleet.extra[0] or 0)
        ages: dict[str, float] = {SOURCE_QUEUE: 0.0}
        try:
            self._read_events(now)
            ages[SOURCE_EVENTS] = 0.0
        except redis.RedisError as exc:
            log.warning("could not read the events stream: %s", exc)
        if workers:
            newest = max(w.beat.ts if w.beat.ts is not None else now for w in workers.values())
            ages[SOURCE_HEARTBEATS] = max(0.0, now - newest)
        self.arrivals.add(now, completed + pending + in_flight)
        self.completions.add(now, completed)
        by_class, by_host = self._answers(now, workers)
        reading = self.balance.read() if self.balance is not None else None
        balance_age = reading.age(now) if reading is not None else None
        if balance_age is not None:
            ages[SOURCE_BALANCE] = balance_age
        serving = [w for w in workers.values() if w.state == "running"]
        signals = Signals(
            now=now,
            pending=pending,
            in_flight=in_flight,
            slots=sum(w.beat.slots for w in serving),
            busy=sum(w.busy for w in serving),
            services=len(serving),
            arrival_rate=self.arrivals.rate(),
            completion_rate=self.completions.rate(),
            p95_latency_s=self.latency.latency(0.95),
            p50_latency_s=self.latency.latency(0.5),
            mean_solve_s=self.latency.mean_solve(),
            p95_solve_s=self.latency.solve(0.95),
            completed_in_window=len(self.latency),
            error_rates=by_class,
            host_error_rates=by_host,
            balance=reading.balance if reading is not None else None,
            burn_rate=reading.burn_rate if reading is not None else None,
            ages=ages,
        )
        return Snapshot(signals=signals, workers=workers)
