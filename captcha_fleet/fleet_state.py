"""A snapshot of the whole fleet read from Redis: queue, workers, results, decisions.

One reader for the status command, the demo's live view and the tests, so they all show the same truth.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from captcha_fleet.keys import Keys


@dataclass(frozen=True)
class WorkerView:
    """One worker's last heartbeat."""

    id: str
    host: str
    state: str
    slots: int
    busy: int
    completed: int
    failed: int
    p95_s: float | None
    version: str
    age_s: float


@dataclass(frozen=True)
class FleetState:
    """What the fleet looks like right now."""

    ts: float
    pending: int
    in_flight: int
    results: int
    completed_total: int
    deadletter: int
    workers: list[WorkerView] = field(default_factory=list)
    dead_workers: list[str] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def slots(self) -> int:
        """Slots across live workers."""
        return sum(w.slots for w in self.workers)

    @property
    def busy(self) -> int:
        """Busy slots across live workers."""
        return sum(w.busy for w in self.workers)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        data = asdict(self)
        data["slots"] = self.slots
        data["busy"] = self.busy
        return data


def read_fleet_state(client: redis.Redis, keys: Keys, decisions: int = 10) -> FleetState:
    """Read the fleet's state in two round trips."""
    now = time.time()
    members = [m.decode() for m in cast("list[bytes]", client.zrange(keys.workers, 0, -1))]
    pipe = client.pipeline(transaction=False)
    pipe.llen(keys.tasks)
    pipe.hlen(keys.results)
    pipe.get(keys.completed_total)
    pipe.llen(keys.deadletter)
    pipe.lrange(keys.decisions, 0, max(0, decisions - 1))
    for worker_id in members:
        pipe.get(keys.heartbeat(worker_id))
        pipe.llen(keys.inflight(worker_id))
    replies = pipe.execute()
    pending, results, completed, deadletter, raw_decisions = replies[:5]
    workers: list[WorkerView] = []
    dead: list[str] = []
    in_flight = 0
    for index, worker_id in enumerate(members):
        beat, inflight_len = replies[5 + 2 * index], replies[6 + 2 * index]
        in_flight += int(inflight_len)
        if beat is None:
            dead.append(worker_id)
            continue
        workers.append(_worker_view(worker_id, json.loads(beat), now))
    return FleetState(
        ts=now,
        pending=int(pending),
        in_flight=in_flight,
        results=int(results),
        completed_total=int(completed or 0),
        deadletter=int(deadletter),
        workers=workers,
        dead_workers=dead,
        decisions=[_loads(d) for d in raw_decisions],
    )


def _worker_view(worker_id: str, beat: dict[str, Any], now: float) -> WorkerView:
    failed = beat.get("failed") or {}
    latency = beat.get("latency") or {}
    return WorkerView(
        id=worker_id,
        host=str(beat.get("host", "")),
        state=str(beat.get("state", "?")),
        slots=int(beat.get("slots", 0)),
        busy=int(beat.get("busy", 0)),
        completed=int(beat.get("completed", 0)),
        failed=sum(int(v) for v in failed.values()) if isinstance(failed, dict) else 0,
        p95_s=latency.get("p95") if isinstance(latency, dict) else None,
        version=str(beat.get("version", "")),
        age_s=round(max(0.0, now - float(beat.get("ts", now))), 3),
    )


def _loads(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"raw": raw.decode(errors="replace")}
    return value if isinstance(value, dict) else {"value": value}
