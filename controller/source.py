"""The signal source: one Redis snapshot per evaluation, turned into :class:`Signals` and a worker list.

Reads the pending list, every worker's heartbeat and in-flight list, the completion counter and the
finished-task stream (incrementally, from the last entry seen). Rates and percentiles use the same
sliding-window estimators as the simulator (``captcha_fleet/windows.py``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

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
from captcha_fleet.keys import Keys
from captcha_fleet.windows import CounterWindow, FinishedTasksWindow

log = logging.getLogger(__name__)
EVENTS_BATCH = 10_000


@dataclass(frozen=True)
class WorkerInfo:
    """One live worker, from its heartbeat."""

    id: str
    host: str
    instance: str
    pid: int | None
    state: str  # running | draining | fatal | stopped
    target: int
    slots: int
    busy: int
    in_flight: int
    ts: float


@dataclass(frozen=True)
class Snapshot:
    """Signals plus the per-worker detail placement needs."""

    signals: Signals
    workers: Mapping[str, WorkerInfo] = field(default_factory=dict)


def _num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


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
            data = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
            ts = _num(data.get("ts"), int(self._last_event_id.split("-")[0]) / 1000)
            latency = _num(data.get("latency_s"), -1.0)
            if latency < 0:
                continue
            solve = _num(data.get("api_s"), latency)
            self.latency.add(ts, latency, min(solve, latency) if solve > 0 else latency)
        self.latency.trim(now)

    def _answers(
        self, now: float, workers: Mapping[str, Mapping[str, Any]]
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Error rates by class and by host: API errors / (API errors + results), over the rate window."""
        totals: dict[tuple[str, str], float] = {}
        for beat in workers.values():
            host = str(beat.get("host", ""))
            errors = beat.get("api_errors") or {}
            for cls in ERROR_CLASSES:
                value = _num(errors.get(cls) if isinstance(errors, dict) else 0)
                totals[(host, cls)] = totals.get((host, cls), 0.0) + value
            totals[(host, "ok")] = totals.get((host, "ok"), 0.0) + _num(beat.get("completed"))
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
        ids = [m.decode() for m in cast("list[bytes]", self.client.zrange(self.keys.workers, 0, -1))]
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(self.keys.tasks)
        pipe.get(self.keys.completed_total)
        for wid in ids:
            pipe.get(self.keys.heartbeat(wid))
            pipe.llen(self.keys.inflight(wid))
        replies = pipe.execute()
        pending, completed = int(replies[0]), int(replies[1] or 0)
        beats: dict[str, dict[str, Any]] = {}
        workers: dict[str, WorkerInfo] = {}
        in_flight = 0
        for i, wid in enumerate(ids):
            raw, inflight_len = replies[2 + 2 * i], int(replies[3 + 2 * i])
            in_flight += inflight_len
            if raw is None:
                continue  # heartbeat expired: the reaper returns its tasks
            try:
                beat = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(beat, dict):
                continue
            beats[wid] = beat
            pid = beat.get("pid")
            workers[wid] = WorkerInfo(
                id=wid,
                host=str(beat.get("host", wid.partition(":")[0])),
                instance=str(beat.get("instance", wid.partition(":")[2])),
                pid=int(pid) if isinstance(pid, int) else None,
                state=str(beat.get("state", "running")),
                target=int(_num(beat.get("target"))),
                slots=int(_num(beat.get("slots"))),
                busy=int(_num(beat.get("busy"))),
                in_flight=inflight_len,
                ts=_num(beat.get("ts"), now),
            )
        ages: dict[str, float] = {SOURCE_QUEUE: 0.0}
        try:
            self._read_events(now)
            ages[SOURCE_EVENTS] = 0.0
        except redis.RedisError as exc:
            log.warning("could not read the events stream: %s", exc)
        if workers:
            ages[SOURCE_HEARTBEATS] = max(0.0, now - max(w.ts for w in workers.values()))
        self.arrivals.add(now, completed + pending + in_flight)
        self.completions.add(now, completed)
        by_class, by_host = self._answers(now, beats)
        reading = self.balance.read() if self.balance is not None else None
        balance_age = reading.age(now) if reading is not None else None
        if balance_age is not None:
            ages[SOURCE_BALANCE] = balance_age
        serving = [w for w in workers.values() if w.state == "running"]
        signals = Signals(
            now=now,
            pending=pending,
            in_flight=in_flight,
            slots=sum(w.slots for w in serving),
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
