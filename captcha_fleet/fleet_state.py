"""A snapshot of the whole fleet read from Redis: queue, hosts, workers, signals, balance, decisions.

One reader for the status command, the demo's live view and the tests, so they all show the same truth.
The heartbeats and in-flight counts come from the fleet reader the controller uses
(:func:`captcha_fleet.fleet_snapshot.read_snapshot`). The signals are those the controller last evaluated (its
decision log records every input), judged against the thresholds of the controller's own settings
(:class:`captcha_fleet.controller.settings.ControllerSettings`), so ``status`` and the controller cannot disagree.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.fleet_snapshot import read_snapshot
from captcha_fleet.keys import Keys
from captcha_fleet.records import Heartbeat


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
class HostView:
    """One host: its live services and what the controller's actuator knows of it."""

    name: str
    services: int
    slots: int
    busy: int
    versions: list[str]
    draining: bool
    reachable: bool | None  # None: no actuator reports on this host
    last_error: str | None = None
    retiring: bool = False  # gone from the inventory: its services are being drained, then it is forgotten


@dataclass(frozen=True)
class SignalView:
    """One scaling signal against its thresholds: ``up`` (scale up), ``down`` (may scale down), ``ok``."""

    name: str
    value: float | None
    unit: str
    up_when: str
    down_when: str
    verdict: str


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
    malformed_workers: list[str] = field(default_factory=list)  # heartbeat unreadable: skipped, listed here
    hosts: list[HostView] = field(default_factory=list)
    signals: list[SignalView] = field(default_factory=list)
    balance: float | None = None
    burn_rate: float | None = None
    leader: str | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def slots(self) -> int:
        """Slots across live workers."""
        return sum(w.slots for w in self.workers)

    @property
    def busy(self) -> int:
        """Busy slots across live workers."""
        return sum(w.busy for w in self.workers)

    @property
    def seconds_to_zero(self) -> float | None:
        """Time until the balance runs out at the current burn rate (None when not burning)."""
        if self.balance is None or not self.burn_rate or self.burn_rate <= 0:
            return None
        return self.balance / self.burn_rate

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        data = asdict(self)
        data.update(slots=self.slots, busy=self.busy, seconds_to_zero=self.seconds_to_zero)
        return data


def read_fleet_state(
    client: redis.Redis, keys: Keys, decisions: int = 10, settings: ControllerSettings | None = None
) -> FleetState:
    """Read the fleet's state; the counts come from one MULTI/EXEC, so they are a consistent snapshot.

    ``settings`` are the controller's (``fleet.yml``'s ``controller:`` section): the signals are judged against the
    same thresholds the controller acts on (default: the controller's defaults).
    """
    now = time.time()

    def more(pipe: Any) -> None:
        pipe.hlen(keys.results)
        pipe.get(keys.completed_total)
        pipe.llen(keys.deadletter)
        pipe.lrange(keys.decisions, 0, max(0, decisions - 1))
        pipe.hgetall(keys.hosts)
        pipe.get(keys.controller_leader)

    fleet = read_snapshot(client, keys, extra=more)
    results, completed, deadletter, raw_decisions, raw_hosts, leader = fleet.extra
    workers = [_worker_view(w.beat, now) for w in fleet.workers.values()]
    actuator_hosts = {k.decode(): _loads(v) for k, v in cast("dict[bytes, bytes]", raw_hosts).items()}
    host_names = sorted({w.host for w in workers} | set(actuator_hosts))
    flags = client.mget([keys.host_draining(h) for h in host_names]) if host_names else []
    hosts = [
        _host_view(name, [w for w in workers if w.host == name], actuator_hosts.get(name), flag is not None)
        for name, flag in zip(host_names, flags, strict=True)
    ]
    decoded = [_loads(d) for d in raw_decisions]
    inputs: dict[str, Any] = decoded[0].get("inputs", {}) if decoded else {}
    return FleetState(
        ts=now,
        pending=fleet.pending,
        in_flight=fleet.in_flight,
        results=int(results),
        completed_total=int(completed or 0),
        deadletter=int(deadletter),
        workers=workers,
        dead_workers=fleet.dead,
        malformed_workers=fleet.malformed,
        hosts=hosts,
        signals=judge_signals(fleet.pending, fleet.in_flight, workers, inputs, settings or ControllerSettings()),
        balance=_number(inputs.get("balance")),
        burn_rate=_number(inputs.get("burn_rate")),
        leader=leader.decode() if isinstance(leader, bytes) else None,
        decisions=decoded,
    )


def judge_signals(
    pending: int, in_flight: int, workers: list[WorkerView], inputs: Mapping[str, Any], t: ControllerSettings
) -> list[SignalView]:
    """The five signals of the seed, each against its up and down thresholds."""
    slots = sum(w.slots for w in workers)
    util = 100.0 * sum(w.busy for w in workers) / slots if slots else None
    p95 = _number(inputs.get("p95_latency_s"))
    rates = inputs.get("error_rates") or {}
    error_pct = 100.0 * max((float(v) for v in rates.values()), default=0.0) if inputs else None
    balance = _number(inputs.get("balance"))

    def verdict(value: float | None, up: bool, down: bool) -> str:
        return "unknown" if value is None else "up" if up else "down" if down else "ok"

    return [
        SignalView(
            "queue depth",
            float(pending),
            "tasks",
            f"> {t.queue_up:g}",
            f"< {t.queue_down:g}",
            verdict(pending, pending > t.queue_up, pending < t.queue_down),
        ),
        SignalView(
            "utilization",
            util,
            "%",
            f"> {t.utilization_up_pct:g}",
            f"< {t.utilization_down_pct:g}",
            verdict(util, (util or 0) > t.utilization_up_pct, (util or 0) < t.utilization_down_pct),
        ),
        SignalView(
            "P95 latency",
            p95,
            "s",
            f"> {t.p95_up_s:g}",
            f"< {t.p95_down_s:g}",
            verdict(p95, (p95 or 0) > t.p95_up_s, (p95 or 0) < t.p95_down_s),
        ),
        SignalView(
            "error rate",
            error_pct,
            "%",
            f"> {t.error_act_pct:g} (act)",
            f"< {t.error_stable_pct:g} (stable)",
            verdict(error_pct, (error_pct or 0) > t.error_act_pct, (error_pct or 0) < t.error_stable_pct),
        ),
        SignalView(
            "balance",
            balance,
            "$",
            "n/a",
            f"< {t.balance_floor:g} (stop scaling up)",
            "floor" if balance is not None and balance < t.balance_floor else verdict(balance, False, False),
        ),
    ]


def _worker_view(beat: Heartbeat, now: float) -> WorkerView:
    return WorkerView(
        id=beat.id,
        host=beat.host,
        state=beat.state,
        slots=beat.slots,
        busy=beat.busy,
        completed=beat.completed,
        failed=sum(beat.failed.values()),
        p95_s=beat.latency.get("p95"),
        version=beat.version,
        age_s=round(max(0.0, now - (beat.ts if beat.ts is not None else now)), 3),
    )


def _host_view(name: str, workers: list[WorkerView], actuator: dict[str, Any] | None, flagged: bool) -> HostView:
    reachable = actuator.get("reachable") if actuator else None
    return HostView(
        name=name,
        services=len(workers),
        slots=sum(w.slots for w in workers),
        busy=sum(w.busy for w in workers),
        versions=sorted({w.version for w in workers}),
        draining=flagged or bool(actuator and actuator.get("draining")),
        reachable=bool(reachable) if reachable is not None else None,
        last_error=actuator.get("last_error") if actuator else None,
        retiring=bool(actuator and actuator.get("retiring")),
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _loads(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"raw": raw.decode(errors="replace")}
    return value if isinstance(value, dict) else {"value": value}
