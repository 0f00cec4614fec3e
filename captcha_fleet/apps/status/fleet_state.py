"""A snapshot of the whole fleet read from Redis: queue, hosts, workers, signals, balance, decisions.

One reader for the status command, the demo's live view and the tests, so they all show the same truth.
The heartbeats and in-flight counts come from the fleet reader the controller uses
(:func:`captcha_fleet.contract.fleet_snapshot.read_snapshot`). The signals are those the controller last evaluated (its
decision log records every input), judged against the thresholds of the controller's own settings
(:class:`captcha_fleet.controller.settings.ControllerSettings`), so ``status`` and the controller cannot disagree.

Any worker host can register a heartbeat under any id, so the registry may hold thousands of entries (issue 21:
10,000 forged workers made ``status`` take 21.7 s and print 952 KB). The state therefore *summarises* every entry
(counts per state, totals, the workers the controller does not manage, by host) and *lists* one page of workers
and hosts (``limit``, ``page``); every grouping is one pass, never a scan per host.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import redis

from captcha_fleet.contract.fleet_snapshot import read_snapshot
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Heartbeat
from captcha_fleet.controller.hosts.state import worker_id_for
from captcha_fleet.controller.settings import ControllerSettings


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
    managed: bool | None = None  # started by the controller (None: no controller state to tell)


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
class Unmanaged:
    """Live workers the controller does not manage (started by hand, by another tool, or forged), summarised."""

    total: int
    hosts: int  # distinct hosts they claim
    by_host: dict[str, int]  # the hosts with the most, at most ``SUMMARY_HOSTS``
    first: list[str]  # the first ids (sorted), at most the page's limit


SUMMARY_HOSTS = 10  # hosts (and worker states) a summary names; the rest are counted


@dataclass(frozen=True)
class FleetState:
    """What the fleet looks like right now: every entry counted, one page of them listed."""

    ts: float
    pending: int
    in_flight: int
    results: int
    completed_total: int
    deadletter: int
    workers: list[WorkerView] = field(default_factory=list)  # one page: managed first, then by id
    dead_workers: list[str] = field(default_factory=list)  # at most the page's limit
    malformed_workers: list[str] = field(default_factory=list)  # heartbeat unreadable: skipped, listed here
    hosts: list[HostView] = field(default_factory=list)  # one page: most services first
    signals: list[SignalView] = field(default_factory=list)
    balance: float | None = None
    burn_rate: float | None = None
    leader: str | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    slots: int = 0  # across every live worker
    busy: int = 0
    workers_total: int = 0  # live workers, every one (``workers`` is a page of them)
    worker_states: dict[str, int] = field(default_factory=dict)  # running/draining/... -> live workers
    dead_total: int = 0
    malformed_total: int = 0
    hosts_total: int = 0
    unmanaged: Unmanaged | None = None  # None: no controller state says which workers it manages
    limit: int | None = None  # the page's size (None: everything listed)
    page: int = 1

    @property
    def seconds_to_zero(self) -> float | None:
        """Time until the balance runs out at the current burn rate (None when not burning)."""
        if self.balance is None or not self.burn_rate or self.burn_rate <= 0:
            return None
        return self.balance / self.burn_rate

    @property
    def truncated(self) -> bool:
        """Some workers, hosts, dead or unreadable entries are counted but not listed."""
        return (
            len(self.workers) < self.workers_total
            or len(self.hosts) < self.hosts_total
            or len(self.dead_workers) < self.dead_total
            or len(self.malformed_workers) < self.malformed_total
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        data = asdict(self)
        data.update(seconds_to_zero=self.seconds_to_zero, truncated=self.truncated)
        return data


def read_fleet_state(
    client: redis.Redis,
    keys: Keys,
    decisions: int = 10,
    settings: ControllerSettings | None = None,
    limit: int | None = None,
    page: int = 1,
) -> FleetState:
    """Read the fleet's state; the counts come from one MULTI/EXEC, so they are a consistent snapshot.

    ``settings`` are the controller's (``fleet.yml``'s ``controller:`` section): the signals are judged against the
    same thresholds the controller acts on (default: the controller's defaults). ``limit`` and ``page`` (from 1)
    choose which workers and hosts are listed (None: all); every one is counted either way.
    """
    now = time.time()

    def more(pipe: Any) -> None:
        pipe.hlen(keys.results)
        pipe.get(keys.completed_total)
        pipe.llen(keys.deadletter)
        pipe.lrange(keys.decisions, 0, max(0, decisions - 1))
        pipe.hgetall(keys.hosts)
        pipe.get(keys.controller_leader)
        pipe.hget(keys.controller_state, "managed")

    fleet = read_snapshot(client, keys, extra=more)
    results, completed, deadletter, raw_decisions, raw_hosts, leader, raw_managed = fleet.extra
    workers = [_worker_view(w.beat, now) for w in fleet.workers.values()]
    managed = _managed_ids(raw_managed)
    actuator_hosts = {k.decode(): _loads(v) for k, v in cast("dict[bytes, bytes]", raw_hosts).items()}
    by_host: dict[str, list[WorkerView]] = {name: [] for name in actuator_hosts}
    for w in workers:
        by_host.setdefault(w.host, []).append(w)
    host_names = _page(sorted(by_host, key=lambda h: (-len(by_host[h]), h)), limit, page)
    flags = client.mget([keys.host_draining(h) for h in host_names]) if host_names else []
    hosts = [
        _host_view(name, by_host[name], actuator_hosts.get(name), flag is not None)
        for name, flag in zip(host_names, flags, strict=True)
    ]
    listed = [
        replace(w, managed=None if managed is None else w.id in managed)
        for w in sorted(workers, key=lambda w: (managed is not None and w.id not in managed, w.id))
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
        workers=_page(listed, limit, page),
        dead_workers=sorted(fleet.dead)[: _first(limit)],
        malformed_workers=sorted(fleet.malformed)[: _first(limit)],
        hosts=hosts,
        signals=judge_signals(fleet.pending, fleet.in_flight, workers, inputs, settings or ControllerSettings()),
        balance=_number(inputs.get("balance")),
        burn_rate=_number(inputs.get("burn_rate")),
        leader=leader.decode() if isinstance(leader, bytes) else None,
        decisions=decoded,
        slots=sum(w.slots for w in workers),
        busy=sum(w.busy for w in workers),
        workers_total=len(workers),
        worker_states=_top(Counter(w.state for w in workers)),
        dead_total=len(fleet.dead),
        malformed_total=len(fleet.malformed),
        hosts_total=len(by_host),
        unmanaged=None if managed is None else _unmanaged(workers, managed, limit),
        limit=limit,
        page=page,
    )


def _first(limit: int | None) -> int | None:
    """How many of a list one page shows (a slice end; None: all)."""
    return None if limit is None else max(0, limit)


def _page(items: list[Any], limit: int | None, page: int) -> list[Any]:
    """Page ``page`` (from 1) of ``limit`` items, or all of them without a limit."""
    if limit is None:
        return items
    start = max(0, page - 1) * max(0, limit)
    return items[start : start + max(0, limit)]


def _top(counts: Counter[str]) -> dict[str, int]:
    """The ``SUMMARY_HOSTS`` most common, the rest as ``"other"`` (a heartbeat's state is any string it says)."""
    top = dict(counts.most_common(SUMMARY_HOSTS))
    rest = sum(counts.values()) - sum(top.values())
    return {**top, "other": rest} if rest else top


def _managed_ids(raw: bytes | None) -> set[str] | None:
    """The worker ids in the controller's saved ``managed`` (host -> instances), or None without one."""
    if raw is None:
        return None
    managed = _loads(raw)
    return {
        worker_id_for(str(host), str(instance))
        for host, instances in managed.items()
        if isinstance(instances, list)
        for instance in instances
    }


def _unmanaged(workers: Iterable[WorkerView], managed: set[str], limit: int | None) -> Unmanaged:
    """The live workers outside ``managed``: how many, on which hosts most, and the first ids."""
    ids = sorted(w.id for w in workers if w.id not in managed)
    hosts = Counter(w.host for w in workers if w.id not in managed)
    return Unmanaged(
        total=len(ids), hosts=len(hosts), by_host=dict(hosts.most_common(SUMMARY_HOSTS)), first=ids[: _first(limit)]
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
